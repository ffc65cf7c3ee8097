#!/usr/bin/env bash
# Seed 002's gevent row, uWSGI and forklift in the same run: the published app
# (tests/apps/seed002/app_gevent.py: four monkey-patched `requests` calls at once per
# request) from one ini file (gevent = 50, master, 2 processes) under real uWSGI and
# under `forklift --ini`, alternated for ROUNDS rounds (default 3): one request (the
# app's own timer), then `forklift hammer` of 20 and 100 requests (at most 50 in
# flight), against `forklift serve builtin:wait` as the backend (port 17001).
# Needs cargo build --release, a throwaway venv with uwsgi, gevent and requests (REF),
# and the test venv with gevent and requests (VENV, default .venv):
#   REF=/tmp/gevent-bench-venv VENV=.venv bench/gevent_fanout.sh
# Loopback only, unpinned (the figures are waiting, not CPU); about a minute.
set -u
cd "$(dirname "$0")/.."
BIN=${BIN:-$PWD/target/release/forklift}
APPS=$PWD/tests/apps/seed002
REF=${REF:?set REF to a venv with uwsgi, gevent and requests}
VENV=${VENV:-$PWD/.venv}
t=$(mktemp -d)
"$BIN" serve builtin:wait --model async --http 127.0.0.1:17001 --disable-logging 2>/dev/null &
B=$!
sleep 0.5
printf '[uwsgi]\nhttp = 127.0.0.1:15200\ngevent = 50\nwsgi-file = %s/app_gevent.py\nmaster = 1\nprocesses = 2\ndisable-logging = true\n' "$APPS" > $t/g.ini
one() { # label cmd...
  local label=$1; shift
  "$@" >/dev/null 2>$t/log &
  local p=$!
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:15200/?backend=17001" && break; sleep 0.1; done
  local o=$(curl -s "http://127.0.0.1:15200/?backend=17001" | grep -o '[0-9.]* seconds')
  local h20=$("$BIN" hammer --url "http://127.0.0.1:15200/?backend=17001" --nb_requests 20 | awk '/We did/ {print $NF}')
  local h100=$("$BIN" hammer --url "http://127.0.0.1:15200/?backend=17001" --nb_requests 100 | awk '/We did/ {print $NF}')
  echo "$label one=$o 20=$h20 100=$h100"
  kill -INT $p; wait $p 2>/dev/null; sleep 1
}
for r in $(seq "${ROUNDS:-3}"); do
  one uwsgi "$REF/bin/uwsgi" --ini $t/g.ini
  one forklift "$BIN" --ini $t/g.ini --virtualenv "$VENV"
done
kill $B; wait $B 2>/dev/null
rm -rf $t
