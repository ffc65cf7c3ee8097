#!/usr/bin/env bash
# Reloads under load: `forklift serve --processes 4` answers `forklift bench -c 20 -t 10`
# while the master gets four SIGHUPs (or another reload kind); prints bench's failed
# requests and connection errors for each model and connection mode.
#
#   bench/reload.sh [KIND] [MODELS...]
#     KIND: sighup (default), chain (SIGHUP with --lazy-apps), touch, usr2
#     MODELS: default "epoll async"
#   FORKLIFT=path/to/forklift  APP="builtin:hello" (or a --wsgi-file) override.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${FORKLIFT:-$here/target/release/forklift}
kind=${1:-sighup}
shift || true
models=${*:-epoll async}
app=${APP:-builtin:hello}
port=${PORT:-18431}
tmp=$(mktemp -d)
trap 'kill $(cat "$tmp/pid" 2>/dev/null) 2>/dev/null || true; rm -rf "$tmp"' EXIT

extra=()
case $kind in
  chain) extra=(--lazy-apps) ;;
  touch) touch "$tmp/reload"; extra=(--touch-reload "$tmp/reload") ;;
esac

for model in $models; do
  for mode in keepalive no-keepalive; do
    # shellcheck disable=SC2086
    "$bin" serve $app --model "$model" --processes 4 --http "127.0.0.1:$port" \
      --disable-logging "${extra[@]}" 2>"$tmp/log" &
    echo $! >"$tmp/pid"
    for _ in $(seq 100); do
      grep -q "listening on" "$tmp/log" 2>/dev/null && break
      sleep 0.1
    done
    sleep 1
    "$bin" bench -q -c 20 -t 10 "--$mode" "http://127.0.0.1:$port/" >"$tmp/bench" &
    b=$!
    master=$(cat "$tmp/pid")
    for i in 1 2 3 4; do
      sleep 2
      case $kind in
        sighup | chain) kill -HUP "$master" ;;
        touch) touch -d "+$i seconds" "$tmp/reload" ;;
        usr2)
          kill -USR2 "$master"
          # The new master stops this one once its workers are ready.
          while kill -0 "$master" 2>/dev/null; do sleep 0.1; done
          master=$(grep -o 'started a new master (pid [0-9]*' "$tmp/log" | tail -1 | grep -o '[0-9]*$')
          ;;
      esac
    done
    wait $b
    failed=$(awk -F: '/^Failed requests/ {gsub(/ /,"",$2); print $2}' "$tmp/bench")
    complete=$(awk -F: '/^Complete requests/ {gsub(/ /,"",$2); print $2}' "$tmp/bench")
    split=$(grep -E '^\s+\(Connect' "$tmp/bench" || true)
    reloads=$(grep -c -e ": reloading (" -e "started a new master" -e "replacing workers gracefully" "$tmp/log" || true)
    printf '%-6s %-13s %-7s reloads %s complete %-8s failed %s %s\n' "$model" "$mode" \
      "$kind" "$reloads" "$complete" "$failed" "$split"
    kill "$master" 2>/dev/null || true
    while kill -0 "$master" 2>/dev/null; do sleep 0.1; done
  done
done
