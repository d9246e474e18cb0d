#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
# Runs inside the scripts/bench read guest (busybox sh): times reads of the
# lower file's page cache against reads served from pool frames, in the same
# boot. Files: /bench/lower.list (read through /lower/bench only) and
# /bench/pool.list (read through the vmdedupfs mounts only), disjoint sets of
# the same sizes; likewise /bench/{lower,pool}-small.list (small files) and
# {lower,pool}/call.bin (callbench); /bench/{lower,pool}-warm.list name all
# of a set. Prints MICRO lines (readbench, mapbench, callbench) and BENCH-STATS
# lines with the module's counters around each pool measurement.
set -u
L=/lower/bench
OFF=/shared/bench          # mounted by guest-run with verify=off
SAMPLE=/mnt/sample         # the same namespace again, verify=sample
S=/sys/kernel/vmdedup/stats
stat_of() { cat "$S/$1" 2>/dev/null || echo 0; }
nsid=$(sed -n 's/^bench \([0-9]*\)$/\1/p' /etc/vmdedup/namespace-ids)
mkdir -p "$SAMPLE"
mount -t vmdedupfs -o "ns=bench,nsid=$nsid,lower=$L,verify=sample" none "$SAMPLE" \
    || { echo "BENCH-ERROR mount verify=sample failed"; exit 1; }
# A fine clock (the guest may count in jiffies right after boot).
cs=/sys/devices/system/clocksource/clocksource0/current_clocksource
i=0
while [ "$i" -lt 60 ] && grep -q jiffies "$cs" 2>/dev/null; do sleep 0.5; i=$((i + 1)); done
echo "BENCH-CLOCK $(cat "$cs")"
readall() {  # readall LIST PREFIX
    while read -r f; do cat "$2/$f"; done < "$1" > /dev/null
}
# Warm: the lower set into the page cache; the pool set through both mounts
# until a whole pass takes no page from lower (the first opens may be
# answered late; the agent warmed the namespace before boot). The read that
# finds the end of a file counts one lower page: at most two per file (cat).
readall /bench/lower-warm.list "$L"
readall /bench/lower-warm.list "$L"
nfiles=$(wc -l < /bench/pool-warm.list)
for m in "$OFF" "$SAMPLE"; do
    n=0
    while [ "$n" -lt 20 ]; do
        before=$(stat_of pages_lower)
        readall /bench/pool-warm.list "$m"
        [ $(( $(stat_of pages_lower) - before )) -le $(( nfiles * 2 )) ] && break
        n=$((n + 1))
        sleep 0.3
    done
    echo "BENCH-WARM $m passes=$((n + 1)) pages_lower_last=$(( $(stat_of pages_lower) - before ))"
done
# measure LABEL PROGRAM ARGS...: prints a warm run with the module's pool
# and lower page counters over it. Rounds (/bench/rounds, default three) of
# every measurement, interleaved: the host keeps the best of each (the
# machine may be busy).
measure() {
    label=$1; shift
    p0=$(stat_of pages_pool); l0=$(stat_of pages_lower); f0=$(stat_of faults_pool); a0=$(stat_of faults_around_pages)
    out=$("$@") || echo "BENCH-ERROR $label failed"
    echo "$out"
    echo "BENCH-STATS $label pages_pool=$(( $(stat_of pages_pool) - p0 )) pages_lower=$(( $(stat_of pages_lower) - l0 )) faults_pool=$(( $(stat_of faults_pool) - f0 )) faults_around_pages=$(( $(stat_of faults_around_pages) - a0 ))"
}
rounds=$(cat /bench/rounds 2>/dev/null || echo 3)
round=0
while [ "$round" -lt "$rounds" ]; do
    round=$((round + 1))
    echo "BENCH-ROUND $round"
    measure lower_warm_4k /bench/readbench lower_warm_4k 4096 /bench/lower.list "$L"
    measure pool_off_4k /bench/readbench pool_off_4k 4096 /bench/pool.list "$OFF"
    measure pool_sample_4k /bench/readbench pool_sample_4k 4096 /bench/pool.list "$SAMPLE"
    measure lower_warm_1m /bench/readbench lower_warm_1m 1048576 /bench/lower.list "$L"
    measure pool_off_1m /bench/readbench pool_off_1m 1048576 /bench/pool.list "$OFF"
    measure pool_sample_1m /bench/readbench pool_sample_1m 1048576 /bench/pool.list "$SAMPLE"
    measure lower_mmap /bench/mapbench lower_mmap /bench/lower.list "$L"
    measure pool_off_mmap /bench/mapbench pool_off_mmap /bench/pool.list "$OFF"
    measure lower_small_4k /bench/readbench lower_small_4k 4096 /bench/lower-small.list "$L"
    measure pool_off_small_4k /bench/readbench pool_off_small_4k 4096 /bench/pool-small.list "$OFF"
    measure pool_sample_small_4k /bench/readbench pool_sample_small_4k 4096 /bench/pool-small.list "$SAMPLE"
    measure lower_call_4k /bench/callbench lower_call_4k 4096 20000 "$L/lower/call.bin"
    measure pool_off_call_4k /bench/callbench pool_off_call_4k 4096 20000 "$OFF/pool/call.bin"
done
umount "$SAMPLE"
echo "BENCH-DONE"
