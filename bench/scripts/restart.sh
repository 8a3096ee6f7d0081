#!/usr/bin/env bash
# Start-up time after kill -9 and after a clean SIGTERM, with a cold page
# cache (BENCHMARKS.md, "Start-up"). Fills a fresh data directory with
# GB gigabytes over 16 partitions through a running broker (default flush
# policy), waits for the partitions' recovery checkpoints, then restarts the
# broker twice and reports the time from exec to its ready line.
#
# Usage (from the repository root, as root for drop_caches):
#   bench/scripts/restart.sh SERVER_BIN BENCH_BIN GB [DATA_DIR]
# e.g.
#   cargo build --release --bin shardlog-server --bin shardlog-bench
#   bench/scripts/restart.sh target/release/shardlog-server target/release/shardlog-bench 8
# RESTART_ONLY=1 skips the fill and reuses DATA_DIR as it is.
set -euo pipefail
SERVER=$1 BENCH=$2 GB=$3 DATA=${4:-target/restart-data}
PORT=${PORT:-17070} METRICS=${METRICS:-127.0.0.1:19644}
LOG=$(mktemp)

start() {  # sets $PID and $READY_S, the seconds from exec to the ready line
    : >"$LOG"
    local t0
    t0=$(date +%s.%N)
    "$SERVER" --data-dir "$DATA" --listen "127.0.0.1:$PORT" --metrics-listen "$METRICS" \
        --shards 2 >"$LOG" 2>&1 &
    PID=$!
    until grep -q "listening on" "$LOG"; do
        if ! kill -0 "$PID" 2>/dev/null; then
            cat "$LOG" >&2
            echo "the broker exited before it was ready" >&2
            exit 1
        fi
        sleep 0.005
    done
    READY_S=$(echo "$(date +%s.%N) - $t0" | bc)
}

cold() { sync; echo 3 >/proc/sys/vm/drop_caches; }

echo "# restart sitting $(date -u '+%Y-%m-%d %H:%M UTC'), $GB GB over 16 partitions, $(nproc) CPUs, $(uname -r)"
if [[ -z ${RESTART_ONLY:-} ]]; then
    rm -rf "$DATA"
    start
    records=$((GB * 1000 * 1000))
    "$BENCH" produce --broker "127.0.0.1:$PORT" --partitions 16 --producers 4 \
        --record-size 1000 --records "$records" --quiet >/dev/null
    # Longer than the default --recovery-checkpoint-interval-ms (10 s): the
    # checkpoints cover everything synced.
    sleep 12
else
    start
fi
echo "data: $(du -sh "$DATA" | cut -f1)"

kill -9 "$PID"; wait "$PID" 2>/dev/null || true
cold
start
echo "after kill -9, cold cache: $READY_S s"
kill -TERM "$PID"; wait "$PID" 2>/dev/null || true
cold
start
echo "after SIGTERM, cold cache: $READY_S s"
kill -TERM "$PID"; wait "$PID" 2>/dev/null || true
rm -f "$LOG"
