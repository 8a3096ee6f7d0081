#!/usr/bin/env bash
# The before/after sitting of the Kafka RecordBatch v2 change (BENCHMARKS.md,
# "Kafka RecordBatch v2"): the machine's limits, then each benchmark with the
# old build and the new one, alternating, so that both meet the same machine.
#
# Usage (from the repository root):
#   bench/scripts/format-sitting.sh OLD_DIR NEW_DIR [OUT_DIR]
# where each *_DIR holds shardlog-server, shardlog-bench and the criterion
# bench executables wire-bench and engine-bench of one build, e.g. for the
# new one:
#   cargo build --release --bin shardlog-server --bin shardlog-bench
#   cargo bench -p shardlog-wire --bench batch --no-run     # prints the executable's path
#   cargo bench -p shardlog-engine --bench engine --no-run
# and the same in a worktree of the old commit. Needs fio and iperf3.
# Takes about 12 minutes with the defaults. ROUNDS, ORDER and ENGINE_FILTER
# (environment) change what runs; the second part of the sitting used
# ORDER="new old" ENGINE_FILTER=append/1024KiB/never.
set -euo pipefail
OLD=$1 NEW=$2 OUT=${3:-target/format-sitting}
mkdir -p "$OUT"
ROUNDS=${ROUNDS:-2}
# Which build runs first in each round ("new old" checks for an order effect),
# and which engine benchmarks run.
ORDER=${ORDER:-old new}
ENGINE_FILTER=${ENGINE_FILTER:-batch/|append/1024KiB/never|read/}

# shellcheck source=bench/scripts/limits.sh
source "$(dirname "$0")/limits.sh"
limits

criterion() {  # label dir bench-exe filter
    echo "### $1 $3"
    "$2/$3" --bench --noplot --warm-up-time 1 --measurement-time 3 "$4" 2>&1 \
        | grep -E "^[a-z].*/|time:|thrpt:" | tee "$OUT/$1-$3-$ROUND.txt"
}

common=(--embedded --shards 2 --partitions 16 --producers 4 --record-size 1024 --quiet)
broker() {  # label dir
    echo "### $1 produce, flush never"
    "$2/shardlog-bench" produce "${common[@]}" --flush never --duration 8 --warmup 2 \
        --json "$OUT/$1-produce-$ROUND.json" | grep -E "records/s|MB/s|publish" || true
    echo "### $1 consume (catch-up)"
    "$2/shardlog-bench" consume "${common[@]}" --flush never --consumers 2 --records 1000000 \
        --json "$OUT/$1-consume-$ROUND.json" | grep -E "records/s|MB/s" || true
}

for ROUND in $(seq 1 "$ROUNDS"); do
    echo "## round $ROUND"
    for side in $ORDER; do
        dir=$OLD; [[ $side == new ]] && dir=$NEW
        criterion "$side" "$dir" wire-bench "wire/"
        criterion "$side" "$dir" engine-bench "$ENGINE_FILTER"
        broker "$side" "$dir"
    done
done
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"
