#!/usr/bin/env bash
# Acknowledged submissions per second from one `forklift serve` process to a local
# Redis: builtin:slowlog with `--offload redis --no-run-tasks` (each request is one
# XADD acknowledged before the answer), loaded by `forklift bench`, pipelined (the
# default) and with --redis-no-pipeline (one XADD per round trip).
#
#   bench/redis-submit.sh [REQUESTS] [CONCURRENCY]
#
# Needs redis-server and a release build (cargo build --release). Pins the server to
# CPU 1 and the load generator to CPU 0 (Redis too) when taskset is there.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-200000}
C=${2:-128}
BIN=target/release/forklift
REDIS=$(command -v redis-server || echo /usr/bin/redis-server)
DIR=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
# Runs a command on CPU $1 in place of the calling (sub)shell, so `pin … &` leaves
# the command's own pid in $!.
pin() { if command -v taskset >/dev/null; then exec taskset -c "$1" "${@:2}"; else exec "${@:2}"; fi; }
pin 0 "$REDIS" --port "$PORT" --bind 127.0.0.1 --dir "$DIR" --save "" --appendonly no \
    --daemonize no --logfile "$DIR/redis.log" >/dev/null 2>&1 </dev/null &
RPID=$!
cleanup() { kill "$RPID" 2>/dev/null || true; [ -n "${SPID:-}" ] && kill "$SPID" 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT
sleep 0.3
for mode in pipelined one-per-round-trip; do
    extra=()
    [ "$mode" = one-per-round-trip ] && extra=(--redis-no-pipeline)
    HTTP=$(free_port)
    pin 1 "$BIN" serve builtin:slowlog --offload redis --no-run-tasks --disable-logging \
        --redis-url "redis://127.0.0.1:$PORT/0" --offload-queue 65536 --spool-max 100000000 \
        --http "127.0.0.1:$HTTP" --slowlog-file "$DIR/slow.log" "${extra[@]}" >/dev/null 2>"$DIR/serve.log" </dev/null &
    SPID=$!
    for _ in $(seq 100); do
        grep -q "listening on" "$DIR/serve.log" 2>/dev/null && break
        kill -0 "$SPID" 2>/dev/null || { cat "$DIR/serve.log"; exit 1; }
        sleep 0.1
    done
    n=$N
    [ "$mode" = one-per-round-trip ] && n=$((N / 4))
    (pin 0 "$BIN" bench -n "$n" -c "$C" "http://127.0.0.1:$HTTP/") >"$DIR/bench.txt"
    rps=$(grep -m1 'Requests per second' "$DIR/bench.txt" | awk '{print $4}')
    non2xx=$(grep -m1 -i 'Non-2xx' "$DIR/bench.txt" | awk '{print $3}' || true)
    echo "$mode: $rps acknowledged submissions/s (-n $n -c $C; non-2xx: ${non2xx:-0})"
    kill "$SPID"; wait "$SPID" 2>/dev/null || true; SPID=
    redis-cli -p "$PORT" DEL 'forklift:{default}:stream' >/dev/null 2>&1 || true
done
