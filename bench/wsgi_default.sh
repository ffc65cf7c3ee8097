#!/usr/bin/env bash
# A hello-world WSGI app (examples/hello.py) served with each server's defaults, one
# process: Granian (`--interface wsgi`), forklift with no model flag, and forklift
# `--model threads`; server pinned to CPU 1, `wrk -t1 -c50 -d${DUR}s` pinned to CPU 0,
# the servers alternated for ROUNDS rounds (the medians are what to quote).
# Needs: apt-get install -y wrk; cargo build --release; a throwaway venv with Granian:
#   python3 -m venv /tmp/ref && /tmp/ref/bin/pip install granian
#   REF=/tmp/ref/bin bench/wsgi_default.sh
# Loopback only; every run is bounded.
set -u
cd "$(dirname "$0")/.."
BIN=${BIN:-$PWD/target/release/forklift}
REF=${REF:?set REF to the bin directory of a venv with granian}
DUR=${DUR:-4}
ROUNDS=${ROUNDS:-3}
PORT=${PORT:-18098}
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
for round in $(seq "$ROUNDS"); do
    run "granian" "$REF/granian" --interface wsgi --workers 1 --host 127.0.0.1 --port $PORT hello:application
    run "forklift-default" "$BIN" serve --wsgi-file hello.py --http 127.0.0.1:$PORT --disable-logging
    run "forklift-threads" "$BIN" serve --wsgi-file hello.py --model threads --http 127.0.0.1:$PORT --disable-logging
done
rm -rf "$app"
