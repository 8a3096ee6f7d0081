#!/usr/bin/env bash
# The RF 1 vs RF 3 sitting of BENCHMARKS.md ("Replication"): a local
# 3-broker cluster (every broker on this machine, one shard each), the same
# topic shape at replication factor 1 and 3, rounds alternating so that
# drift hits both alike. Needs a release build, fio and iperf3.
#
#   cargo build --release -p shardlog-server -p shardlog-bench
#   bench/scripts/replication-sitting.sh [OUT_DIR]
#
# ROUNDS (default 3) rounds of: max produce at RF 1 and RF 3, then e2e at
# 50 % of that round's max for each. The summary prints medians and the
# RF 3 / RF 1 ratios of one sitting.
set -euo pipefail
OUT=${1:-target/replication-sitting}
ROUNDS=${ROUNDS:-3}
B=${BENCH:-target/release/shardlog-bench}
mkdir -p "$OUT"

# shellcheck source=bench/scripts/limits.sh
source "$(dirname "$0")/limits.sh"
limits

common=(--embedded --brokers 3 --shards 1 --partitions 16 --producers 4 --record-size 1024 --flush always --quiet)
for ROUND in $(seq 1 "$ROUNDS"); do
    for RF in 1 3; do
        echo "### round $ROUND RF $RF produce (max)"
        "$B" produce "${common[@]}" --replication-factor "$RF" --duration 12 --warmup 3 \
            --json "$OUT/rf$RF-produce-$ROUND.json" | grep -E "MB/s|publish  |  brokers" || true
    done
    for RF in 1 3; do
        RATE=$(python3 -c "import json;print(int(json.load(open('$OUT/rf$RF-produce-$ROUND.json'))['records_per_sec']/2))")
        echo "### round $ROUND RF $RF e2e at $RATE records/s (50 % of max)"
        "$B" e2e "${common[@]}" --replication-factor "$RF" --rate "$RATE" --duration 20 --warmup 4 \
            --json "$OUT/rf$RF-e2e-$ROUND.json" | grep -E "MB/s|publish  |end-to-end|  brokers" || true
    done
    # The same offered load for both: RF 1 at RF 3's 50 % rate, so the CPU
    # ratio compares equal work (at its own 50 % RF 1 moves three times the
    # bytes per second and spreads its fixed costs thinner).
    RATE=$(python3 -c "import json;print(int(json.load(open('$OUT/rf3-produce-$ROUND.json'))['records_per_sec']/2))")
    echo "### round $ROUND RF 1 e2e at $RATE records/s (RF 3's 50 %)"
    "$B" e2e "${common[@]}" --replication-factor 1 --rate "$RATE" --duration 20 --warmup 4 \
        --json "$OUT/rf1-e2e-same-$ROUND.json" | grep -E "MB/s|publish  |end-to-end|  brokers" || true
done

python3 - "$OUT" "$ROUNDS" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def load(rf, kind):
    return [json.load(open(f"{out}/rf{rf}-{kind}-{r}.json")) for r in range(1, rounds + 1)]
def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")
def pct(run, name, p):
    lat = run.get(name) or {}
    return lat[p] / 1000 if p in lat else None
rows = {}
for rf in (1, 3):
    produce, e2e = load(rf, "produce"), load(rf, "e2e")
    rows[rf] = {
        "produce MB/s": med([r.get("mb_per_sec") for r in produce]),
        "cluster core-s/GB (produce)": med([r.get("broker_cpu_s_per_gb") for r in produce]),
        "cluster core-s/GB (e2e 50 %)": med([r.get("broker_cpu_s_per_gb") for r in e2e]),
        # RF 3's own 50 % run; RF 1 at that same rate.
        "cluster core-s/GB (e2e at RF 3's 50 %)": med([r.get("broker_cpu_s_per_gb") for r in (load(1, "e2e-same") if rf == 1 else e2e)]),
        "publish p50 ms (50 %)": med([pct(r, "publish_latency_us", "p50") for r in e2e]),
        "publish p99 ms (50 %)": med([pct(r, "publish_latency_us", "p99") for r in e2e]),
        "e2e p50 ms (50 %)": med([pct(r, "e2e_latency_us", "p50") for r in e2e]),
        "e2e p99 ms (50 %)": med([pct(r, "e2e_latency_us", "p99") for r in e2e]),
    }
print(f"\n## medians of {rounds} rounds")
print(f"| figure | RF 1 | RF 3 | RF 3 / RF 1 |")
print(f"|---|---|---|---|")
for key in rows[1]:
    a, b = rows[1][key], rows[3][key]
    ratio = b / a if a else float("nan")
    print(f"| {key} | {a:.3f} | {b:.3f} | {ratio:.2f}× |")
PY
