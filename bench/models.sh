#!/usr/bin/env bash
# builtin:hello under each model, one worker pinned to CPU 1, `wrk -t1 -c50` pinned to
# CPU 0, nginx (1 worker, return 200 "Hello world") measured before and after in the
# same run; then `ab -n 100000 -c 8` (a connection per request) per model and nginx.
# Needs: apt-get install -y nginx-light wrk apache2-utils; cargo build --release.
# Loopback only; every run is bounded.
set -u
cd "$(dirname "$0")/.."
BIN=${BIN:-$PWD/target/release/forklift}
DUR=${DUR:-5}
PORT=${PORT:-18091}
NGINX_PORT=${NGINX_PORT:-18090}
AB_N=${AB_N:-100000}
tmp=$(mktemp -d)
cat > "$tmp/nginx.conf" <<CONF
worker_processes 1;
daemon off;
error_log $tmp/error.log;
pid $tmp/nginx.pid;
events { worker_connections 20000; }
http {
    access_log off;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / { return 200 "Hello world"; }
    }
}
CONF
taskset -c 1 nginx -c "$tmp/nginx.conf" & NGINX=$!
sleep 0.5
wrk_rps() { taskset -c 0 wrk -t1 -c50 -d"${DUR}s" "$1" | awk '/Requests\/sec/ {print $2}'; }
ab_time() { taskset -c 0 ab -q -n "$AB_N" -c 8 "$1" 2>&1 | awk '/Time taken/ {print $5}'; }
start() {
    taskset -c 1 "$BIN" serve builtin:hello --model "$1" ${2:-} --http 127.0.0.1:$PORT --disable-logging 2>/dev/null &
    SRV=$!
    for _ in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:$PORT/ && break; sleep 0.1; done
}
echo "# wrk -t1 -c50 -d${DUR}s, keep-alive (req/s)"
n1=$(wrk_rps http://127.0.0.1:$NGINX_PORT/)
echo "nginx $n1"
for m in epoll async threads linear; do
    extra=""; [ "$m" = threads ] && extra="--threads 4"
    start "$m" "$extra"
    echo "$m $(wrk_rps http://127.0.0.1:$PORT/)"
    kill $SRV; wait $SRV 2>/dev/null
done
n2=$(wrk_rps http://127.0.0.1:$NGINX_PORT/)
echo "nginx $n2"
echo "# ab -n $AB_N -c 8, Connection: close (seconds)"
echo "nginx $(ab_time http://127.0.0.1:$NGINX_PORT/)"
for m in linear threads epoll async; do
    extra=""; [ "$m" = threads ] && extra="--threads 8"
    start "$m" "$extra"
    echo "$m $(ab_time http://127.0.0.1:$PORT/)"
    kill $SRV; wait $SRV 2>/dev/null
done
start linear "--processes 8"
echo "prefork-8xlinear $(ab_time http://127.0.0.1:$PORT/)"
kill $SRV; wait $SRV 2>/dev/null
kill $NGINX; wait $NGINX 2>/dev/null
rm -rf "$tmp"
