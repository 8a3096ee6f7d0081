#!/usr/bin/env bash
# One BENCHMARKS.md sitting: the machine's limits, then runs 1–6 of issue 6,
# one after another, each command printed before its output.
#
# Usage (from the repository root, after
#   cargo build --release --bin shardlog-server --bin shardlog-bench):
#   bench/scripts/sitting.sh [OUT_DIR]        (default: target/sitting)
#
# Needs fio, iperf3, redis-server and redis-tools (Debian packages) and a
# TrueType font for the PNG plots (fonts-dejavu-core). Writes every run's
# JSON into OUT_DIR and the plots of runs 1 and 3 into docs/. Takes about
# 15 minutes and ~10 GB of disk in $TMPDIR (the embedded brokers' data,
# deleted after each run) and under /work (Redis' AOF).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-target/sitting}
B=target/release/shardlog-bench
mkdir -p "$OUT" docs
for tool in fio iperf3 redis-server "$B"; do
    command -v "$tool" >/dev/null || [[ -x $tool ]] || { echo "missing $tool" >&2; exit 1; }
done

run() {
    echo "\$ $*"
    "$@"
    echo
}

echo "# sitting $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, $(uname -r)"
echo "# load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo

echo "## limits"
SCRATCH=${TMPDIR:-/tmp}/fio-scratch
mkdir -p "$SCRATCH"
FIO=(fio --name=w --filename="$SCRATCH/f" --size=2G --direct=1 --ioengine=io_uring
     --group_reporting --rw=write --runtime=10 --time_based)
for args in "--bs=1m --iodepth=1" "--bs=1m --iodepth=4" "--bs=64k --iodepth=1" \
            "--bs=1m --iodepth=1 --fdatasync=1"; do
    # shellcheck disable=SC2086
    echo "\$ ${FIO[*]} $args"
    # shellcheck disable=SC2086
    "${FIO[@]}" $args | grep -E "WRITE:|^ +clat \(usec\)"
done
rm -rf "$SCRATCH"
iperf3 -s -p 5299 -D --one-off >/dev/null
sleep 1
run iperf3 -c 127.0.0.1 -p 5299 -t 8 -f g
sleep 1
echo

common=(--embedded --shards 2 --partitions 16 --producers 4 --record-size 1024 --quiet)

echo "## 1. max produce throughput"
run $B produce "${common[@]}" --flush always --duration 15 --warmup 3 \
    --json "$OUT/1a.json" --plot docs/produce-always.png
run $B produce "${common[@]}" --flush never --duration 15 --warmup 3 --json "$OUT/1b.json"

echo "## 2. consume"
run $B consume "${common[@]}" --flush never --consumers 2 --records 2000000 --json "$OUT/2a.json"
run $B consume "${common[@]}" --flush never --consumers 2 --records 2000000 \
    --segment-bytes 16777216 --cache-bytes 0 --json "$OUT/2c.json"
run $B consume-tail "${common[@]}" --flush never --consumers 2 --duration 10 --warmup 2 \
    --json "$OUT/2b.json"

echo "## 3. e2e latency at 50% of run 1a"
rate=$(python3 -c "import json; print(int(json.load(open('$OUT/1a.json'))['records_per_sec'] / 2))")
run $B e2e "${common[@]}" --flush always --consumers 2 --rate "$rate" --duration 15 --warmup 3 \
    --json "$OUT/3.json" --plot docs/e2e-always.png
run $B e2e "${common[@]}" --flush always --consumers 2 --rate "$rate" --duration 15 --warmup 3 \
    --linger-ms 1 --json "$OUT/3-linger1.json"

echo "## 4. partition scaling (flush always)"
for partitions in 16 1000 10000; do
    run $B produce --embedded --shards 2 --partitions "$partitions" --producers 4 \
        --record-size 1024 --quiet --flush always --duration 15 --warmup 3 \
        --topic "scale-$partitions" --json "$OUT/4-$partitions.json"
done

echo "## 4n. partition scaling (flush never)"
for partitions in 16 10000; do
    run $B produce --embedded --shards 2 --partitions "$partitions" --producers 4 \
        --record-size 1024 --quiet --flush never --duration 10 --warmup 2 \
        --topic "scale-$partitions" --json "$OUT/4n-$partitions.json"
done

echo "## 5. shards (flush always)"
for shards in 1 2; do
    run $B produce --embedded --shards "$shards" --partitions 16 --producers 4 \
        --record-size 1024 --quiet --flush always --duration 15 --warmup 3 \
        --json "$OUT/5-$shards.json"
done

echo "## 6. Redis Streams, same machine"
run bench/scripts/redis-streams.sh always 2000000 4 64
run bench/scripts/redis-streams.sh everysec 4000000 4 64

echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"
