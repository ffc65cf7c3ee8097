#!/usr/bin/env bash
# Seed 002's whole table, uWSGI and forklift in the same run, with the seed's own gevent
# backend (tests/apps/seed002/wait_server/app.py: gevent.sleep(duration), from its
# uwsgi.ini: gevent = 100, master, 2 processes) served by BACKEND (forklift by default,
# or uwsgi for reference). Each row is one uWSGI ini file as in the talk (sync: 1
# process, 4 processes, 4 threads, 2 x 2; asyncio: 2 processes, 2 x 2; gevent = 50,
# 2 processes) run under real uWSGI 2.0 and under `forklift --ini`, alternated for
# ROUNDS rounds (default 3): one request (the app's own timer), then `forklift hammer
# --nb_requests 20` (at most 50 in flight). Prints every round and the medians.
# Both servers load the apps from the same virtualenv (VENV, default .venv: requests,
# aiohttp, gevent); REF is a throwaway venv with uwsgi (never a CI requirement):
#   REF=/tmp/gevent-bench-venv bench/seed002_table.sh
#   BACKEND=uwsgi REF=/tmp/gevent-bench-venv bench/seed002_table.sh
#   ONLY="sync_4p gevent" ROUNDS=5 REF=... bench/seed002_table.sh
# Ports: backend 17001, apps 15000-15200 (the talk's ports + 10000), loopback only.
# Unpinned: the figures are the backend's waiting. About 6 minutes at ROUNDS=3.
set -u
cd "$(dirname "$0")/.."
BIN=${BIN:-$PWD/target/release/forklift}
VENV=${VENV:-$PWD/.venv}
REF=${REF:?set REF to a venv with uwsgi (e.g. /tmp/gevent-bench-venv)}
BACKEND=${BACKEND:-forklift}
ROUNDS=${ROUNDS:-3}
APPS=$PWD/tests/apps/seed002
BPORT=17001
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT

# The backend's own ini, with its port moved off the talk's 7001 and the app's path made absolute.
sed "s/^http *=.*/http = 127.0.0.1:$BPORT/; s|^wsgi-file *= *|wsgi-file = $APPS/wait_server/|" \
    "$APPS/wait_server/uwsgi.ini" > "$t/backend.ini"

ini() { # name port app extra-lines...
    local name=$1 port=$2 app=$3; shift 3
    { echo "[uwsgi]"; echo "http = 127.0.0.1:$port"; echo "wsgi-file = $APPS/$app"
      echo "master = 1"; for l in "$@"; do echo "$l"; done
      echo "disable-logging = true"; } > "$t/$name.ini"
}
ini sync_1p 15000 app_sync.py
ini sync_4p 15001 app_sync.py "processes = 4"
ini sync_4t 15002 app_sync.py "threads = 4"
ini sync_2px2t 15003 app_sync.py "processes = 2" "threads = 2"
ini asyncio_2p 15100 app_asyncio.py "processes = 2"
# With threads, uWSGI's serving threads have no event loop, so the seed's
# asyncio.get_event_loop() fails there (the talk's caveat); the talk's fix is its
# get_loop(), which makes a loop when the thread has none. This row runs that variant
# under both servers (forklift also runs app_asyncio.py unchanged: every serving thread
# has a loop).
python3 - "$APPS/app_asyncio.py" "$t/app_asyncio_get_loop.py" <<'PY'
import sys
src = open(sys.argv[1]).read()
fix = ("    try:\n        loop = asyncio.get_event_loop()\n    except RuntimeError:\n"
       "        loop = asyncio.new_event_loop()\n        asyncio.set_event_loop(loop)\n")
assert "    loop = asyncio.get_event_loop()\n" in src
open(sys.argv[2], "w").write(src.replace("    loop = asyncio.get_event_loop()\n", fix))
PY
ini asyncio_2px2t 15101 app_asyncio.py "processes = 2" "threads = 2"
sed -i "s|^wsgi-file = .*|wsgi-file = $t/app_asyncio_get_loop.py|" "$t/asyncio_2px2t.ini"
# The talk's gevent ini as shipped (gevent = 50, processes = 2), port moved.
sed "s/^http *=.*/http = 127.0.0.1:15200/; s|^wsgi-file *=.*|wsgi-file = $APPS/app_gevent.py|" \
    "$APPS/app_gevent.ini" > "$t/gevent.ini"
echo "disable-logging = true" >> "$t/gevent.ini"

start() { # server ini log -> pid in $PID
    case $1 in
    uwsgi) "$REF/bin/uwsgi" --ini "$2" --virtualenv "$VENV" >"$3" 2>&1 & ;;
    forklift) "$BIN" --ini "$2" --virtualenv "$VENV" >"$3" 2>&1 & ;;
    esac
    PID=$!
}
stop() { kill -INT "$1" 2>/dev/null; wait "$1" 2>/dev/null; sleep 0.5; }
wait_port() { # port: until a request answers (a full request: also the warm-up)
    for _ in $(seq 150); do
        curl -s -o /dev/null -m 5 "http://127.0.0.1:$1/?backend=$BPORT" && return 0; sleep 0.1
    done
    echo "nothing answers on port $1" >&2; return 1
}

start "$BACKEND" "$t/backend.ini" "$t/backend.log"
BPID=$PID
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$BPORT/?duration=0" && break; sleep 0.1; done
curl -s "http://127.0.0.1:$BPORT/?duration=0.01" >/dev/null || { echo "backend did not start:"; cat "$t/backend.log"; exit 1; }

echo "# backend: $BACKEND serving wait_server/app.py (gevent = 100, 2 processes); $(date -u '+%F %H:%M UTC'); load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-14s %-9s %-6s %-8s %-8s %s\n' row server round one 20-reqs "failed+non-2xx"
ROWS=${ONLY:-sync_1p sync_4p sync_4t sync_2px2t asyncio_2p asyncio_2px2t gevent}
for row in $ROWS; do
    port=$(awk -F: '/^http/ {print $2}' "$t/$row.ini" | tr -d ' ')
    for r in $(seq "$ROUNDS"); do
        for server in uwsgi forklift; do
            start "$server" "$t/$row.ini" "$t/$row.$server.log"
            p=$PID
            wait_port "$port" || { tail -5 "$t/$row.$server.log"; stop "$p"; continue; }
            one=$(curl -s "http://127.0.0.1:$port/?backend=$BPORT" | grep -o '[0-9.]* seconds' | cut -d' ' -f1)
            out=$("$BIN" hammer --url "http://127.0.0.1:$port/?backend=$BPORT" --nb_requests 20)
            h20=$(echo "$out" | awk '/We did/ {print $NF}')
            bad=$(echo "$out" | sed -n 's/.*failed \([0-9]*\), non-2xx \([0-9]*\).*/\1+\2/p')
            printf '%-14s %-9s %-6s %-8s %-8s %s\n' "$row" "$server" "$r" "${one:--}" "$h20" "$bad" | tee -a "$t/results"
            stop "$p"
        done
    done
done
stop "$BPID"
echo "# medians ($ROUNDS rounds); load at end $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-14s %-10s %-10s %-10s %-10s %s\n' row "uwsgi one" "fl one" "uwsgi 20" "fl 20" "fl/uwsgi"
for row in $ROWS; do
    awk -v row="$row" '
        function med(a, n,   i, j, x) { for (i = 2; i <= n; i++) { x = a[i]; for (j = i - 1; j >= 1 && a[j] > x; j--) a[j+1] = a[j]; a[j+1] = x }
                                       return n % 2 ? a[(n+1)/2] : (a[n/2] + a[n/2+1]) / 2 }
        $1 == row && $2 == "uwsgi" { uo[++nu] = $4; uh[nu] = $5 }
        $1 == row && $2 == "forklift" { fo[++nf] = $4; fh[nf] = $5 }
        END { if (nu && nf) { a = med(uh, nu); b = med(fh, nf)
              printf "%-14s %-10.3f %-10.3f %-10.3f %-10.3f %.3f\n", row, med(uo, nu), med(fo, nf), a, b, b / a } }' "$t/results"
done
