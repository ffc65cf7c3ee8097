#!/usr/bin/env bash
# Throughput and p99 of `forklift bench -c 10` against builtin:hello under each model,
# alone and beside 1,000 and 5,000 slow clients (bench/slowloris.py: a partial request
# head, then a byte a second). The server runs on CPU 1, the load and the slow clients
# on CPU 0. Needs: cargo build --release. Loopback only; every run is bounded.
set -u
cd "$(dirname "$0")/.."
BIN=${BIN:-$PWD/target/release/forklift}
DUR=${DUR:-5}
PORT=${PORT:-18191}
SLOW=${SLOW:-"1000 5000"}
ulimit -n 20000 2>/dev/null || true
run() { # model, slow clients
    taskset -c 1 "$BIN" serve builtin:hello --model "$1" --threads 1 --http 127.0.0.1:$PORT \
        --disable-logging --listen 8192 2>/dev/null &
    local srv=$!
    for _ in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:$PORT/ && break; sleep 0.1; done
    local lor=""
    if [ "$2" -gt 0 ]; then
        taskset -c 0 python3 bench/slowloris.py 127.0.0.1 $PORT "$2" $((DUR + 8)) &
        lor=$!
        sleep 4
    fi
    local out
    out=$(taskset -c 0 "$BIN" bench -q -c 10 -t "$DUR" --json - http://127.0.0.1:$PORT/ 2>/dev/null)
    python3 - "$1" "$2" "$out" <<'PY'
import json, sys
model, slow, out = sys.argv[1], sys.argv[2], sys.argv[3]
r = json.loads(out[out.index("{"):])
rps = r["requests_per_second"]
p99 = next(p["ms"] for p in r["percentiles"] if p["percent"] == 99.0)
print(f"{model:8} slow={slow:5} req/s={rps:.0f} p99_ms={p99} failed={r['failed_requests']}")
PY
    [ -n "$lor" ] && { kill $lor; wait $lor 2>/dev/null; }
    kill $srv; wait $srv 2>/dev/null
}
for m in ${MODELS:-epoll async threads}; do
    run $m 0
    for n in $SLOW; do run $m $n; done
done
