#!/usr/bin/env bash
# Memory of one worker holding CONNS idle keep-alive connections: forklift `epoll` and
# `async` serving builtin:hello, and nginx (1 worker, no master) as the reference.
# bench/idle_conns.py opens the connections, sends one request on each, reads the answer,
# keeps them open, and prints the server's extra RSS.
# Needs: apt-get install -y nginx-light; cargo build --release; python3. Loopback only.
set -u
cd "$(dirname "$0")/.."
BIN=${BIN:-$PWD/target/release/forklift}
CONNS=${CONNS:-10000}
PORT=${PORT:-18094}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
ready() { for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$PORT/" && return; sleep 0.1; done; }
for m in epoll async; do
    "$BIN" serve builtin:hello --model "$m" --http 127.0.0.1:$PORT --disable-logging 2>/dev/null &
    SRV=$!
    ready
    echo "forklift $m: $(python3 bench/idle_conns.py --pid $SRV --port $PORT --connections "$CONNS")"
    kill $SRV; wait $SRV 2>/dev/null
done
if command -v nginx >/dev/null; then
    cat > "$tmp/nginx.conf" <<CONF
worker_processes 1;
master_process off;
daemon off;
error_log $tmp/error.log;
pid $tmp/nginx.pid;
worker_rlimit_nofile $((CONNS + 1000));
events { worker_connections $((CONNS + 1000)); }
http {
    access_log off;
    server { listen 127.0.0.1:$PORT; location / { return 200 "Hello world"; } }
}
CONF
    nginx -c "$tmp/nginx.conf" & NGINX=$!
    ready
    echo "nginx: $(python3 bench/idle_conns.py --pid $NGINX --port $PORT --connections "$CONNS")"
    kill $NGINX; wait $NGINX 2>/dev/null
fi
