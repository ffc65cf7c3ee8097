#!/usr/bin/env bash
# The fan-out scenario for WSGI apps (tests/apps/seed002: each request calls a slow
# backend four times, 0.125/0.25/0.375/0.5 s, one after another or with asyncio),
# started from uWSGI ini files: one request, then `forklift hammer --nb_requests 20`
# (at most 50 in flight), against `forklift serve builtin:wait` on port 7001 as the
# backend; the gevent row runs seed 002's app_gevent.py with gevent = 50. Needs cargo
# build --release and a venv with requests, aiohttp and gevent (scripts/test makes
# .venv). ONLY="uwsgi_gevent" runs some rows. Loopback only; about a minute in all.
set -u
cd "$(dirname "$0")/.."
BIN=${BIN:-$PWD/target/release/forklift}
VENV=${VENV:-$PWD/.venv}
APPS=$PWD/tests/apps/seed002
tmp=$(mktemp -d)
"$BIN" serve builtin:wait --model async --http 127.0.0.1:7001 --disable-logging 2>/dev/null &
BACKEND=$!
sleep 0.5
ini() { # name port app extra-lines...
    local name=$1 port=$2 app=$3; shift 3
    { echo "[uwsgi]"; echo "http = :$port"; echo "wsgi-file=$APPS/$app"; echo "master = 1"
      for l in "$@"; do echo "$l"; done; echo "disable-logging = true"; } > "$tmp/$name.ini"
}
ini uwsgi_basic 5000 app_sync.py
ini uwsgi_process 5001 app_sync.py "processes = 4"
ini uwsgi_thread 5002 app_sync.py "threads = 4"
ini uwsgi_mix 5003 app_sync.py "processes = 2" "threads = 2"
ini uwsgi_asyncio 5100 app_asyncio.py "processes = 2"
ini uwsgi_asyncio_mix 5101 app_asyncio.py "processes = 2" "threads = 2"
ini uwsgi_gevent 5200 app_gevent.py "processes = 2" "gevent = 50"
printf '%-20s %-10s %-10s\n' ini "one" "20 requests"
for name in ${ONLY:-uwsgi_basic uwsgi_process uwsgi_thread uwsgi_mix uwsgi_asyncio uwsgi_asyncio_mix uwsgi_gevent}; do
    port=$(awk -F: '/^http/ {print $2}' "$tmp/$name.ini")
    "$BIN" --ini "$tmp/$name.ini" --virtualenv "$VENV" >/dev/null 2>"$tmp/$name.log" &
    SRV=$!
    for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/?backend=7001" && break; sleep 0.1; done
    one=$(curl -s "http://127.0.0.1:$port/" | grep -o '[0-9.]* seconds' | head -1)
    twenty=$("$BIN" hammer --port "$port" --nb_requests 20 | awk '/We did/ {print $NF}')
    printf '%-20s %-10s %-10s\n' "$name" "$one" "$twenty"
    kill $SRV; wait $SRV 2>/dev/null
done
kill $BACKEND; wait $BACKEND 2>/dev/null
rm -rf "$tmp"
