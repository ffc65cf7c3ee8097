#!/usr/bin/env bash
# Issue 3's benchmark: forklift bench vs wrk vs ab against the same nginx (1 worker,
# pinned to CPU 1), each generator pinned to CPU 0 with one thread, alternating rounds.
set -u
cd "$(dirname "$0")/.."
BIN=${BIN:-$PWD/target/release/forklift}
ROUNDS=${ROUNDS:-3}
PORT=${PORT:-18090}
tmp=$(mktemp -d)
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
for r in $(seq "$ROUNDS"); do
  echo "round $r"
  echo "  wrk keep-alive c50:      $(taskset -c 0 wrk -t1 -c50 -d3s --latency $U | awk '/Requests\/sec/ {r=$2} / 50%/ {p=$2} END {print r, "p50", p}')"
  echo "  forklift keep-alive c50: $(taskset -c 0 "$BIN" bench -q --threads 1 -c 50 -t 3 $U 2>&1 | awk '/Requests per second/ {r=$4} /^ *50%/ {p=$2} END {print r, "p50", p "ms"}')"
  echo "  ab -k c50:               $(taskset -c 0 ab -q -k -n 200000 -c 50 $U 2>&1 | awk '/Requests per second/ {print $4}')"
  echo "  forklift close c8:       $(taskset -c 0 "$BIN" bench -q --threads 1 -c 8 -n 30000 --no-keepalive $U 2>&1 | awk '/Requests per second/ {print $4}')"
  echo "  ab close c8:             $(taskset -c 0 ab -q -n 30000 -c 8 $U 2>&1 | awk '/Requests per second/ {print $4}')"
  echo "  wrk close c8:            $(taskset -c 0 wrk -t1 -c8 -d3s -H 'Connection: close' $U | awk '/Requests\/sec/ {print $2}')"
done
kill $NGINX; wait $NGINX 2>/dev/null
rm -rf "$tmp"
