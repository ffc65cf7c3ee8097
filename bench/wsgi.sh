#!/usr/bin/env bash
# The same hello-world WSGI app (examples/hello.py) under forklift (each model, one
# process) and under Granian, uWSGI and gunicorn (one worker each), server pinned to
# CPU 1, `wrk -t1 -c50 -d5s` pinned to CPU 0, two rounds.
# Needs: apt-get install -y wrk; cargo build --release; a throwaway venv with the
# reference servers, given as REF (its bin directory):
#   python3 -m venv /tmp/ref && /tmp/ref/bin/pip install granian uwsgi gunicorn
#   REF=/tmp/ref/bin bench/wsgi.sh
# Loopback only; every run is bounded.
set -u
cd "$(dirname "$0")/.."
BIN=${BIN:-$PWD/target/release/forklift}
REF=${REF:?set REF to the bin directory of a venv with granian, uwsgi and gunicorn}
DUR=${DUR:-5}
PORT=${PORT:-18097}
app=$(mktemp -d)
cp examples/hello.py "$app/hello.py"
rps() { taskset -c 0 wrk -t1 -c50 -d"${DUR}s" "http://127.0.0.1:$PORT/" | awk '/Requests\/sec/ {print $2} /Non-2xx|Socket errors/ {printf "(%s) ", $0}'; }
run() { # label, command...
    local label=$1; shift
    ( cd "$app" && exec taskset -c 1 "$@" >/dev/null 2>&1 ) &
    local pid=$!
    for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break; sleep 0.1; done
    echo "$label $(rps)"
    kill $pid; wait $pid 2>/dev/null; sleep 0.3
}
for round in 1 2; do
run "granian" "$REF/granian" --interface wsgi --workers 1 --host 127.0.0.1 --port $PORT --no-ws hello:application
run "forklift-threads" "$BIN" serve --wsgi-file hello.py --model threads --http 127.0.0.1:$PORT --disable-logging
run "forklift-epoll" "$BIN" serve --wsgi-file hello.py --model epoll --http 127.0.0.1:$PORT --disable-logging
run "forklift-async" "$BIN" serve --wsgi-file hello.py --model async --http 127.0.0.1:$PORT --disable-logging
run "forklift-linear" "$BIN" serve --wsgi-file hello.py --model linear --http 127.0.0.1:$PORT --disable-logging
run "uwsgi" "$REF/uwsgi" --http-socket 127.0.0.1:$PORT --processes 1 --threads 1 --wsgi-file hello.py --disable-logging --http-keepalive
run "gunicorn" "$REF/gunicorn" -w 1 -b 127.0.0.1:$PORT hello:application
done
rm -rf "$app"
