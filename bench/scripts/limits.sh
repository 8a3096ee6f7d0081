# Sourced by the sitting scripts: prints the sitting's header and the
# machine's own limits, measured now: fio O_DIRECT 1 MiB writes (QD4, and
# QD1 with fdatasync) and iperf3 over loopback.
limits() {
    echo "# sitting $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, $(uname -r)"
    echo "# load before: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "## limits"
    local scratch=${TMPDIR:-/tmp}/fio-scratch
    mkdir -p "$scratch"
    for args in "--bs=1m --iodepth=4" "--bs=1m --iodepth=1 --fdatasync=1"; do
        # shellcheck disable=SC2086
        fio --name=w --filename="$scratch/f" --size=1G --direct=1 --ioengine=io_uring \
            --group_reporting --rw=write --runtime=5 --time_based $args | grep -E "WRITE:" | sed "s|^|fio $args: |"
    done
    rm -rf "$scratch"
    iperf3 -s -p 5299 -D --one-off >/dev/null
    sleep 1
    iperf3 -c 127.0.0.1 -p 5299 -t 5 -f g | grep -E "receiver" | sed 's/^/iperf3 loopback: /'
    sleep 1
}
