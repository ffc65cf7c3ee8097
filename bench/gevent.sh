#!/usr/bin/env bash
# gevent mode against the gevent servers people run, on a WSGI hello world
# (examples/hello.py), one process: forklift `--gevent 100`, uWSGI `--gevent 100`,
# gunicorn `-k gevent`, and forklift's own default (the epoll model with a Python
# thread). Server pinned to CPU 1, `wrk -t1 -c50 -d${DUR}s` pinned to CPU 0, the servers
# alternated for ROUNDS rounds (quote the medians).
# Needs: apt-get install -y wrk; cargo build --release; a throwaway venv with the
# reference servers and gevent (never the test venv):
#   python3 -m venv /tmp/gevent-bench-venv
#   /tmp/gevent-bench-venv/bin/pip install gevent gunicorn packaging uwsgi
#   REF=/tmp/gevent-bench-venv bench/gevent.sh
# forklift serves with the same venv (--virtualenv) for gevent. Loopback only; every
# run is bounded.
set -u
cd "$(dirname "$0")/.."
BIN=${BIN:-$PWD/target/release/forklift}
REF=${REF:?set REF to a venv with gevent, gunicorn and uwsgi}
DUR=${DUR:-4}
ROUNDS=${ROUNDS:-3}
PORT=${PORT:-18099}
app=$(mktemp -d)
cp examples/hello.py "$app/hello.py"
rps() { taskset -c 0 wrk -t1 -c50 -d"${DUR}s" "http://127.0.0.1:$PORT/" | awk '/Requests\/sec/ {print $2} /Non-2xx|Socket errors/ {printf "(%s) ", $0}'; }
run() { # label, command...
    local label=$1; shift
    ( cd "$app" && exec taskset -c 1 "$@" >/dev/null 2>&1 ) &
    local pid=$!
    for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break; sleep 0.1; done
    echo "$label $(rps)"
    kill $pid; wait $pid 2>/dev/null; sleep 0.5
}
for round in $(seq "$ROUNDS"); do
    run "forklift-gevent" "$BIN" serve --wsgi-file hello.py --gevent 100 --virtualenv "$REF" --http 127.0.0.1:$PORT --disable-logging
    # uWSGI's --http-socket closes each connection (wrk reports those as read errors
    # and reconnects); its --http11-socket died on the second keep-alive request here.
    run "uwsgi-gevent" "$REF/bin/uwsgi" --http-socket 127.0.0.1:$PORT --gevent 100 --wsgi-file hello.py --disable-logging --processes 1
    run "gunicorn-gevent" "$REF/bin/gunicorn" -k gevent -w 1 -b 127.0.0.1:$PORT --log-level warning hello:application
    run "forklift-epoll" "$BIN" serve --wsgi-file hello.py --http 127.0.0.1:$PORT --disable-logging
done
rm -rf "$app"
