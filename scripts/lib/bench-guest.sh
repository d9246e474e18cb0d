#!/bin/sh
# Runs inside every scripts/bench ksm guest (busybox sh), started by the
# bench's own init. The configuration comes from the kernel command line:
#   bench.mode=lower|shared   read /lower/bench (no dedup, KSM) or /shared/bench
#   bench.passes=N            times the workload goes through the tree
#   bench.micro=none|cold|warm  in-guest read timing instead of the workload
#   bench.ballast=MIB         private random memory held during the run
#   bench.idle=SECS           an idle window after the reads (BENCH-IDLE)
# Output lines (on the output port): BENCH-STATS (module counters) and
# BENCH-MEMINFO (/proc/meminfo) before and after the workload,
# BENCH-KERNELMEM, BENCH-READS-DONE once the workload has read everything,
# MICRO lines, and those of bench-guest-lib.sh.
# shellcheck source=bench-guest-lib.sh
. "$(dirname "$0")/bench-guest-lib.sh"
mode=$(bench_arg mode); passes=$(bench_arg passes); micro=$(bench_arg micro)
[ -n "$passes" ] || passes=2
L=/lower/bench
M=/lower/bench
[ "$mode" = shared ] && M=/shared/bench
echo "BENCH-START mode=$mode passes=$passes micro=$micro"
bench_kernelmem
bench_ballast "$(bench_arg ballast)" /bench
bench_stats start
bench_meminfo start
if [ "$micro" = cold ] || [ "$micro" = warm ]; then
    # Time with a fine clock: right after boot the guest may still count in
    # jiffies (4 ms steps) until it switches to the TSC.
    cs=/sys/devices/system/clocksource/clocksource0/current_clocksource
    i=0
    while [ "$i" -lt 40 ] && grep -q jiffies "$cs" 2>/dev/null; do sleep 0.5; i=$((i + 1)); done
    echo "BENCH-CLOCK $(cat "$cs" 2>/dev/null)"
fi
case "$micro" in
cold)
    # The first guest: the files are in nobody's pool yet (answers "loading",
    # served from the lower disk), and the lower page cache is cold.
    /bench/readbench pool_cold_4k 4096 /bench/set-4k.list "$M"
    /bench/readbench pool_cold_1m 1048576 /bench/set-1m.list "$M"
    /bench/readbench lower_cold_4k 4096 /bench/setl-4k.list "$L"
    /bench/readbench lower_cold_1m 1048576 /bench/setl-1m.list "$L"
    /bench/readbench lower_warm_4k 4096 /bench/setl-4k.list "$L"
    /bench/readbench lower_warm_1m 1048576 /bench/setl-1m.list "$L"
    ;;
warm)
    # Another guest, after the first one read the same files: pool hits.
    /bench/readbench pool_warm_4k 4096 /bench/set-4k.list "$M"
    /bench/readbench pool_warm_1m 1048576 /bench/set-1m.list "$M"
    # And once more in this guest (answers kept with the inodes).
    /bench/readbench pool_again_4k 4096 /bench/set-4k.list "$M"
    ;;
*)
    p=1
    while [ "$p" -le "$passes" ]; do
        PYTHONHOME=$M PYTHONDONTWRITEBYTECODE=1 "$M/lib/ld-linux-x86-64.so.2" --library-path "$M/lib" \
            "$M/bin/python3.11" "$M/workload.py" || echo "BENCH-ERROR python failed"
        find "$M" -type f -print0 | xargs -0 cat > /dev/null || echo "BENCH-ERROR reading $M failed"
        echo "BENCH-PASS $p"
        p=$((p + 1))
    done
    ;;
esac
bench_stats end
bench_meminfo end
echo "BENCH-READS-DONE"
# Idle: a few seconds for the last answers and revocations, then the window.
sleep 5
bench_stats settled
bench_idle "$(bench_arg idle)"
# Stay up (idle) until the host stops this guest.
while :; do sleep 3600; done
