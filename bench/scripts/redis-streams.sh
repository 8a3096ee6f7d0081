#!/usr/bin/env bash
# Redis Streams comparison for BENCHMARKS.md (run 6 of issue 6).
#
# Measures the produce workload against Redis Streams, a broker a user might
# pick instead of shardlog: XADD of 1 KiB values from several connections,
# pipelined, into one stream on a private, freshly started Debian
# `redis-server` with the append-only file on (`appendfsync always` or
# `everysec`), no RDB snapshots and no automatic AOF rewrite.
#
# Usage:
#   bench/scripts/redis-streams.sh POLICY [RECORDS] [CLIENTS] [PIPELINE]
#
#   POLICY    always | everysec            (appendfsync policy)
#   RECORDS   XADDs in total               (default 4000000)
#   CLIENTS   connections (-c)             (default 4, like --producers 4)
#   PIPELINE  requests in flight per conn  (default 64, see below)
#
# Environment:
#   REDIS_PORT       first port to try (default 6390; the next free one is used)
#   REDIS_BENCH_DIR  parent of the temporary data dir (default /work, the data
#                    disk; it must not be a tmpfs or the fsyncs are free)
#   REDIS_KEEP=1     keep the data dir (and the AOF) instead of deleting it
#
# Each record is `XADD bench * v <1024-byte value>`. redis-benchmark 7.0 has no
# __data__ placeholder for custom commands (-d only applies to its built-in
# SET/GET tests), so the value is a fixed 1024-byte random base64 string passed
# with -x (redis-benchmark appends stdin as the last argument). The script
# checks afterwards that the stream holds RECORDS entries of 1024-byte values
# and that the AOF grew by about RECORDS x 1.1 KiB (RESP framing + stream IDs).
#
# Pipeline depth: -P 64 sends 64 XADDs x 1 KiB = 64 KiB per round trip, the
# same bytes per request as the shardlog bench's default --batch-size 65536.
# redis-benchmark keeps one pipeline per connection in flight (it sends P
# commands, waits for all P replies, then sends the next P), so 4 clients have
# at most 256 KiB outstanding. A short sweep (100,000 records, 2026-11-23) gave
# -P 16: 75k (always) / 253k (everysec) XADD/s, -P 64: 108-112k / 274k,
# -P 256: 113k / 273k: throughput saturates at 64, deeper only adds latency.
#
# Timing: redis-benchmark is count-based and has no warmup; the default
# 4,000,000 records last ~15 s at everysec on the reference 2-vCPU machine
# (~275k XADD/s when quiet) and ~35 s at always (~110k XADD/s).
# Note that with -P the latency it reports for every request is the round trip
# of the whole pipeline it was sent in.
#
# appendfsync always: Redis appends every command's AOF record to a buffer and,
# once per event-loop iteration and before any reply of that iteration is
# written, does one write() + fdatasync() for all of them (flushAppendOnlyFile
# in beforeSleep). Pipelined commands from all clients that arrived in the same
# iteration therefore share one fsync. strace -c of a 100,000-record run with
# 4 clients and -P 64 counted 1,707 fdatasync calls (~59 XADDs, ~64 KiB each)
# against 1,719 epoll_wait calls: about one fsync per iteration, probably
# capped by Redis reading at most 16 KiB per client per iteration.
#
# Redis keeps the whole stream in memory: 4,000,000 records need ~4.6 GB RAM,
# and the AOF needs ~4.4 GB (1088 B per record) on the data disk.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2; }

[[ $# -ge 1 && $# -le 4 ]] || usage
POLICY=$1
RECORDS=${2:-4000000}
CLIENTS=${3:-4}
PIPELINE=${4:-64}
VALUE_SIZE=1024
case $POLICY in always|everysec) ;; *) usage ;; esac
for n in "$RECORDS" "$CLIENTS" "$PIPELINE"; do
    [[ $n =~ ^[1-9][0-9]*$ ]] || usage
done
for tool in redis-server redis-cli redis-benchmark; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y redis-server redis-tools)" >&2; exit 1; }
done

PARENT=${REDIS_BENCH_DIR:-/work}
if [[ $(stat -f -c %T "$PARENT") == tmpfs ]]; then
    echo "$PARENT is a tmpfs; set REDIS_BENCH_DIR to a directory on the data disk" >&2
    exit 1
fi

# First free port from REDIS_PORT on (nothing answers a TCP connect there).
PORT=${REDIS_PORT:-6390}
while (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; do
    PORT=$((PORT + 1))
done

DIR=$(mktemp -d "$PARENT/redis-streams.XXXXXX")
CLI=(redis-cli -p "$PORT")

cleanup() {
    if [[ -f $DIR/redis.pid ]]; then
        "${CLI[@]}" shutdown nosave >/dev/null 2>&1 || true
        local pid i
        pid=$(cat "$DIR/redis.pid" 2>/dev/null || true)
        for i in $(seq 50); do
            [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
    fi
    if [[ ${REDIS_KEEP:-0} == 1 ]]; then
        echo "kept $DIR"
    else
        rm -rf "$DIR"
    fi
}
trap cleanup EXIT

redis-server --port "$PORT" --bind 127.0.0.1 --dir "$DIR" \
    --daemonize yes --pidfile "$DIR/redis.pid" --logfile "$DIR/redis.log" \
    --save '' --appendonly yes --appendfsync "$POLICY" \
    --auto-aof-rewrite-percentage 0 >/dev/null

for i in $(seq 100); do
    [[ $("${CLI[@]}" ping 2>/dev/null) == PONG ]] && break
    [[ $i == 100 ]] && { echo "redis-server did not answer on port $PORT:" >&2; cat "$DIR/redis.log" >&2; exit 1; }
    sleep 0.1
done
# Wait until the AOF is open (the server may still be loading).
until [[ $("${CLI[@]}" info persistence | tr -d '\r' | awk -F: '$1=="loading"{print $2}') == 0 ]]; do sleep 0.1; done

aof_bytes() { du -sb "$DIR/appendonlydir" | cut -f1; }
AOF_BEFORE=$(aof_bytes)

# 768 random bytes -> exactly 1024 base64 characters, no newline.
VALUE=$(head -c $((VALUE_SIZE * 3 / 4)) /dev/urandom | base64 -w0)
[[ ${#VALUE} == "$VALUE_SIZE" ]]

echo "redis-streams: $(redis-server --version | awk '{sub(/^v=/, "", $3); print "redis-server " $3}'), appendfsync $POLICY," \
     "$RECORDS x XADD of $VALUE_SIZE B, $CLIENTS clients, pipeline $PIPELINE," \
     "port $PORT, dir $DIR ($(df --output=source "$DIR" | tail -1))"

START=$(date +%s.%N)
CSV=$(printf %s "$VALUE" | redis-benchmark -p "$PORT" -c "$CLIENTS" -P "$PIPELINE" \
        -n "$RECORDS" --csv -x XADD bench '*' v)
END=$(date +%s.%N)

# --csv: header, then one line:
# "title","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
read -r RPS AVG MIN P50 P95 P99 MAX < <(printf '%s\n' "$CSV" | tail -1 | tr -d '"' |
    awk -F, '{print $(NF-6), $(NF-5), $(NF-4), $(NF-3), $(NF-2), $(NF-1), $NF}')

# Verify what was written.
XLEN=$("${CLI[@]}" xlen bench)
# --raw prints ID, field, value on separate lines; base64 has no newlines.
FIRST_LEN=$("${CLI[@]}" --raw xrange bench - + COUNT 1 | sed -n 3p | tr -d '\n' | wc -c)
LAST_LEN=$("${CLI[@]}" --raw xrevrange bench + - COUNT 1 | sed -n 3p | tr -d '\n' | wc -c)
INFO=$("${CLI[@]}" info all | tr -d '\r')
info() { printf '%s\n' "$INFO" | awk -F: -v k="$1" '$1==k{print $2}'; }
AOF_AFTER=$(aof_bytes)
AOF_GROWTH=$((AOF_AFTER - AOF_BEFORE))

awk -v rps="$RPS" -v n="$RECORDS" -v sz="$VALUE_SIZE" -v s="$START" -v e="$END" \
    -v avg="$AVG" -v min="$MIN" -v p50="$P50" -v p95="$P95" -v p99="$P99" -v max="$MAX" \
    -v xlen="$XLEN" -v f="$FIRST_LEN" -v l="$LAST_LEN" -v aof="$AOF_AFTER" -v g="$AOF_GROWTH" \
    -v mem="$(info used_memory_human)" -v dfs="$(info aof_delayed_fsync)" 'BEGIN {
    wall = e - s
    printf "throughput:  %.0f XADD/s  =  %.1f MB/s of values (rps x %d B / 1e6)\n", rps, rps * sz / 1e6, sz
    printf "wall clock:  %.2f s for %d records (%.0f rec/s incl. connection setup)\n", wall, n, n / wall
    printf "latency ms:  avg %s  min %s  p50 %s  p95 %s  p99 %s  max %s  (per request = per pipeline round trip)\n", avg, min, p50, p95, p99, max
    printf "XLEN:        %d (expected %d)%s\n", xlen, n, (xlen == n ? "" : "  MISMATCH")
    printf "value size:  first %d B, last %d B (expected %d)%s\n", f, l, sz, (f == sz && l == sz ? "" : "  MISMATCH")
    printf "AOF:         %.0f B total, +%.0f B = %.1f B/record (%.2f x value size)\n", aof, g, g / n, g / n / sz
    printf "server:      used_memory %s, aof_delayed_fsync %s\n", mem, dfs
}'
[[ $XLEN == "$RECORDS" && $FIRST_LEN == "$VALUE_SIZE" && $LAST_LEN == "$VALUE_SIZE" ]] || exit 1
