#!/usr/bin/env bash
# The load generator against wrk and ab: each one, pinned to CPU 0 with one thread,
# loads the same nginx (`return 200 "Hello world"`), in alternating rounds. Prints per
# round and tool: requests per second, p50 (wrk and forklift; ab reports whole ms) and
# the tool's own CPU time per request (user + system).
#
#   bench/loadgen.sh                    # nginx 1 worker pinned to CPU 1: the server is the limit
#   NGINX_WORKERS=2 bench/loadgen.sh    # nginx 2 workers unpinned: the generator's own cost decides
#
# Needs: apt-get install -y nginx-light wrk apache2-utils; cargo build --release.
# Loopback only; every run is bounded (-n requests or -d/-t seconds).
set -u
cd "$(dirname "$0")/.."
BIN=${BIN:-$PWD/target/release/forklift}
ROUNDS=${ROUNDS:-5}
PORT=${PORT:-18090}
NGINX_WORKERS=${NGINX_WORKERS:-1}
KA_N=${KA_N:-250000}      # keep-alive requests for ab and forklift (wrk runs DUR seconds)
CLOSE_N=${CLOSE_N:-30000} # connection-per-request requests for ab and forklift
DUR=${DUR:-2}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat > "$tmp/nginx.conf" <<CONF
worker_processes $NGINX_WORKERS;
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
if [ "$NGINX_WORKERS" = 1 ]; then
    taskset -c 1 nginx -c "$tmp/nginx.conf" & NGINX=$!
else
    nginx -c "$tmp/nginx.conf" & NGINX=$!
fi
sleep 0.5
U=http://127.0.0.1:$PORT/

# measure LABEL CMD...: runs CMD pinned to CPU 0, prints req/s, p50 and CPU per request.
measure() {
    local label=$1; shift
    local TIMEFORMAT='%U %S'
    { time taskset -c 0 "$@" > "$tmp/out" 2>&1; } 2> "$tmp/time"
    awk -v label="$label" -v cpu="$(awk '{print $1 + $2}' "$tmp/time")" '
        /Requests\/sec/ {rps = $2}                 # wrk
        /requests in/ {n = $1}                      # wrk
        /Requests per second/ {rps = $4}            # ab, forklift
        /Complete requests/ {n = $3}                # ab, forklift
        /^ *50%/ {p50 = $2}                         # wrk (with unit), ab/forklift (ms)
        END {
            printf "  %-26s %10s req/s  p50 %-9s  CPU %.2f us/request\n",
                label, rps, p50, (n > 0 ? cpu * 1e6 / n : 0)
        }' "$tmp/out"
}

for r in $(seq "$ROUNDS"); do
    echo "round $r"
    measure "wrk keep-alive -c50"      wrk -t1 -c50 -d"${DUR}s" --latency "$U"
    measure "forklift keep-alive -c50" "$BIN" bench -q --threads 1 -c 50 -n "$KA_N" "$U"
    measure "ab -k -c50"               ab -q -k -n "$KA_N" -c 50 "$U"
    measure "wrk close -c8"            wrk -t1 -c8 -d"${DUR}s" --latency -H 'Connection: close' "$U"
    measure "forklift close -c8"       "$BIN" bench -q --threads 1 -c 8 -n "$CLOSE_N" --no-keepalive "$U"
    measure "ab close -c8"             ab -q -n "$CLOSE_N" -c 8 "$U"
done
kill $NGINX; wait $NGINX 2>/dev/null
