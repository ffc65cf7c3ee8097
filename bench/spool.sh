#!/usr/bin/env bash
# Durable submissions per second of the `spool` strategy (examples/spool_bench.rs): each
# submit returns once its task is on disk; a no-op task runs them meanwhile. With group
# commit at 10, 64 and 256 submitting threads, and without it (one sync per task: the
# reference, measured in the same run). Each run stops submitting after 20 s at most.
# The journal goes to $TMPDIR (default /tmp): put it on the disk you mean to measure.
set -u
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-2}
cargo build --release --example spool_bench >/dev/null 2>&1 || { echo "build failed" >&2; exit 1; }
B=target/release/examples/spool_bench
echo "spool directory under ${TMPDIR:-/tmp}: $(df -T "${TMPDIR:-/tmp}" | awk 'NR == 2 {print $2, $1}')"
for r in $(seq "$ROUNDS"); do
    echo "round $r"
    for t in 10 64 256; do echo "  group commit, $t threads: $($B 20000 $t | tail -1)"; done
    echo "  no group commit, 64 threads: $($B 2000 64 --no-group-commit | tail -1)"
done
