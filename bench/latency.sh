#!/usr/bin/env bash
# p50 latency of forklift bench against wrk's, at -c 1, 4, 10 and 50, against the same
# nginx (1 worker, pinned to CPU 1), each generator pinned to CPU 0 with one thread,
# alternating rounds of DUR seconds.
# Needs: apt-get install -y nginx-light wrk; cargo build --release. Loopback only.
set -u
cd "$(dirname "$0")/.."
BIN=${BIN:-$PWD/target/release/forklift}
ROUNDS=${ROUNDS:-3}
PORT=${PORT:-18093}
DUR=${DUR:-2}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat > "$tmp/nginx.conf" <<CONF
worker_processes 1;
daemon off;
error_log $tmp/error.log;
pid $tmp/nginx.pid;
events { worker_connections 20000; }
http {
    access_log off;
    keepalive_requests 100000000;
    server { listen 127.0.0.1:$PORT; location / { return 200 "Hello world"; } }
}
CONF
taskset -c 1 nginx -c "$tmp/nginx.conf" & NGINX=$!
sleep 0.5
U=http://127.0.0.1:$PORT/
printf '%-4s %-6s %-14s %-14s\n' c round "wrk p50" "forklift p50"
for c in 1 4 10 50; do
    for r in $(seq "$ROUNDS"); do
        w=$(taskset -c 0 wrk -t1 -c"$c" -d"${DUR}s" --latency "$U" | awk '/^ *50%/ {print $2}')
        f=$(taskset -c 0 "$BIN" bench -q --threads 1 -c "$c" -t "$DUR" "$U" 2>&1 | awk '/^ *50%/ {print $2 "ms"}')
        printf '%-4s %-6s %-14s %-14s\n' "$c" "$r" "$w" "$f"
    done
done
kill $NGINX; wait $NGINX 2>/dev/null
