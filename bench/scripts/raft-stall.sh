#!/usr/bin/env bash
# What the metadata group's Raft thread costs the shards (BENCHMARKS.md,
# "Control plane: the Raft thread and the shards"). In one sitting, each
# window SECONDS long:
#   1. a 3-broker cluster, idle: CPU of each thread of each broker;
#   3. a fixed-rate produce to a 3-broker cluster (the partitions' leaders
#      spread over the brokers): publish latency and per-thread CPU, the
#      Raft threads' among them;
#   2. the same workload against one broker process, three times each way,
#      alternating: without --peers, and as the only voter of a cluster
#      (Raft, registration and heartbeats running, nothing else different).
# Per-thread CPU comes from /proc/<pid>/task/*/stat (utime + stime), read at
# the start and the end of each window.
#
# Usage (from the repository root):
#   cargo build --release --bin shardlog-server --bin shardlog-bench --bin shardlog
#   bench/scripts/raft-stall.sh target/release [SECONDS] [RATE]
# RATE is records per second of 1,000 bytes (default 50000, about 50 MB/s).
set -euo pipefail
BIN=$1 SECS=${2:-20} RATE=${3:-50000}
WORK=$(mktemp -d)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT
TICKS=$(getconf CLK_TCK)

# thread_ticks PID: one "name ticks" line per thread.
thread_ticks() {
    for task in /proc/"$1"/task/*; do
        local name stat
        name=$(cat "$task/comm" 2>/dev/null) || continue
        stat=$(cat "$task/stat" 2>/dev/null) || continue
        # Fields after the ")" that closes the name: utime is the 12th, stime the 13th.
        echo "$name $(echo "${stat##*) }" | awk '{print $12 + $13}')"
    done | sort
}

# report LABEL BEFORE AFTER: CPU seconds per thread name (summed over
# threads of one name) in the window, and per second of the window.
report() {
    join -a2 -e0 -o 0,1.2,2.2 <(awk '{a[$1]+=$2} END {for (n in a) print n, a[n]}' "$2" | sort) \
        <(awk '{a[$1]+=$2} END {for (n in a) print n, a[n]}' "$3" | sort) |
        awk -v label="$1" -v t="$TICKS" -v s="$SECS" \
            '{d = ($3 - $2) / t; if (d > 0) printf "%s %-16s %7.2f core-s  %6.1f %% of a core\n", label, $1, d, 100 * d / s}'
}

wait_ready() {
    until grep -q "listening on" "$1"; do sleep 0.05; done
}

start_cluster() {
    local peers=1@127.0.0.1:27070,2@127.0.0.1:27080,3@127.0.0.1:27090
    for n in 1 2 3; do
        "$BIN/shardlog-server" --node-id $n --peers $peers --data-dir "$WORK/c$n" \
            --listen 127.0.0.1:270$((n + 6))0 --metrics-listen 127.0.0.1:2964$n --shards 2 \
            >"$WORK/c$n.log" 2>&1 &
        PIDS+=($!)
        eval "C$n=$!"
    done
    for n in 1 2 3; do wait_ready "$WORK/c$n.log"; done
    until "$BIN/shardlog" --broker 127.0.0.1:27070 cluster describe --format json 2>/dev/null |
        grep -q '"controller"'; do sleep 0.2; done
}

produce() { # BROKERS METRICS OUT
    "$BIN/shardlog-bench" produce --broker "$1" --broker-metrics "$2" --topic stall \
        --partitions 8 --record-size 1000 --producers 2 --rate "$RATE" \
        --warmup 3 --duration "$SECS" --json "$3" --quiet >/dev/null
}

echo "# raft-stall sitting $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, ${SECS}s windows, $RATE records/s of 1000 B"

echo "## 1. idle 3-broker cluster"
start_cluster
sleep 3
for n in 1 2 3; do eval "thread_ticks \$C$n" >"$WORK/idle$n.before"; done
sleep "$SECS"
for n in 1 2 3; do
    eval "thread_ticks \$C$n" >"$WORK/idle$n.after"
    report "broker$n" "$WORK/idle$n.before" "$WORK/idle$n.after"
done

echo "## 3. produce to the 3-broker cluster"
"$BIN/shardlog" --broker 127.0.0.1:27070 topic create stall --partitions 8 >/dev/null
"$BIN/shardlog" --broker 127.0.0.1:27070 topic describe stall --format json >"$WORK/placement.json"
produce 127.0.0.1:27070,127.0.0.1:27080,127.0.0.1:27090 127.0.0.1:29641 "$WORK/cluster.json" &
BENCH=$!
sleep 3 # the warm-up
for n in 1 2 3; do eval "thread_ticks \$C$n" >"$WORK/load$n.before"; done
wait $BENCH
for n in 1 2 3; do
    eval "thread_ticks \$C$n" >"$WORK/load$n.after"
    report "broker$n" "$WORK/load$n.before" "$WORK/load$n.after"
done
echo "leaders: $(grep -o '"leader":[0-9]*' "$WORK/placement.json" | sort | uniq -c | tr -s ' ' | tr '\n' ' ')"
echo "cluster: $(jq -c "{mb_per_sec, publish_latency_us, broker_cpu_s_per_gb}" "$WORK/cluster.json" 2>/dev/null || cat "$WORK/cluster.json")"
kill "$C1" "$C2" "$C3"
wait "$C1" "$C2" "$C3" 2>/dev/null || true

# one_broker LABEL [--peers ...]: the workload against one broker process,
# without --peers (a one-node broker) or as the only voter of a cluster.
one_broker() {
    local label=$1
    shift
    rm -rf "$WORK/one"
    "$BIN/shardlog-server" --data-dir "$WORK/one" --listen 127.0.0.1:27170 \
        --metrics-listen 127.0.0.1:29651 --shards 2 "$@" >"$WORK/one.log" 2>&1 &
    local pid=$!
    PIDS+=($pid)
    wait_ready "$WORK/one.log"
    if [[ $# -gt 0 ]]; then
        until "$BIN/shardlog" --broker 127.0.0.1:27170 topic create stall --partitions 8 \
            >/dev/null 2>&1; do sleep 0.2; done
    fi
    produce 127.0.0.1:27170 127.0.0.1:29651 "$WORK/one.json" &
    local bench=$!
    sleep 3
    thread_ticks $pid >"$WORK/one.before"
    wait $bench
    thread_ticks $pid >"$WORK/one.after"
    report "$label" "$WORK/one.before" "$WORK/one.after"
    echo "$label: $(jq -c "{mb_per_sec, publish_latency_us, broker_cpu_s_per_gb}" "$WORK/one.json")"
    kill $pid
    wait $pid 2>/dev/null || true
}

echo "## 2. produce to one broker: without --peers, then as a one-voter cluster, alternating"
for round in 1 2 3; do
    one_broker "single$round"
    one_broker "voter1-$round" --node-id 1 --peers 1@127.0.0.1:27170
done
