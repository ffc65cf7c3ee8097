#!/usr/bin/env bash
# ASGI hello world (examples/asgi_hello.py: a raw ASGI callable, a FastAPI `def` route
# and a FastAPI `async def` route) under forklift (epoll, one process, one loop) and
# under Granian (--interface asgi) and uvicorn (--loop uvloop --http httptools), one
# worker each, server pinned to CPU 1, `wrk -t1 -c50 -d4s` pinned to CPU 0, two rounds.
# Needs: apt-get install -y wrk; cargo build --release; a throwaway venv with the
# reference servers (forklift uses it too, so both get the same FastAPI and uvloop):
#   python3 -m venv /tmp/ref && /tmp/ref/bin/pip install granian uvicorn uvloop httptools fastapi
#   REF=/tmp/ref bench/asgi.sh
# Loopback only; every run is bounded.
set -u
cd "$(dirname "$0")/.."
BIN=${BIN:-$PWD/target/release/forklift}
REF=${REF:?set REF to a venv with granian, uvicorn, uvloop, httptools and fastapi}
DUR=${DUR:-4}
PORT=${PORT:-18098}
app=$(mktemp -d)
cp examples/asgi_hello.py "$app/asgi_hello.py"
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
for target in app fastapi_app fastapi_async; do
run "$target forklift" "$BIN" serve --asgi "asgi_hello:$target" --virtualenv "$REF" --pythonpath . --http 127.0.0.1:$PORT --disable-logging
run "$target granian" "$REF/bin/granian" --interface asgi --workers 1 --host 127.0.0.1 --port $PORT --no-ws "asgi_hello:$target"
run "$target uvicorn" "$REF/bin/uvicorn" --loop uvloop --http httptools --workers 1 --host 127.0.0.1 --port $PORT --no-access-log --log-level warning "asgi_hello:$target"
done
done
rm -rf "$app"
