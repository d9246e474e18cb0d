#!/bin/sh
# Runs inside every scripts/demo guest (busybox sh). For each namespace mounted
# at /shared/NAME: runs the tree's Python workload when the tree has one (see
# scripts/lib/tree.sh), then reads every regular file, PASSES times. The first
# pass of the first guest to open a file is served from the lower disk while
# the host loads it into the pool; later opens are served from the pool.
# Prints DEMO-STATS lines (the module's counters) every second for the host's
# live table, DEMO-PHASE lines as it goes, and DEMO-DONE at the end.
passes=${1:-2}
S=/sys/kernel/vmdedup/stats
stats() {
    line=DEMO-STATS
    for c in hints_sent answers_hit answers_miss_loading pages_pool pages_lower faults_pool mmap_pool \
             fallbacks verify_pages verify_mismatches bytes_pool; do
        line="$line $c=$(cat "$S/$c" 2>/dev/null || echo 0)"
    done
    echo "$line"
}
(while :; do stats; sleep 1; done) &
ticker=$!
# The host's monitor samples each guest's RAM (smaps) once this line is out:
# that is the "before the workload" figure the summary's increment starts at.
echo "DEMO-PHASE ready"
sleep 3
rc=0
# One name a line, none with spaces (scripts/guest-run checks them).
namespaces=$(cat /etc/vmdedup/namespaces)
for ns in $namespaces; do
    m=/shared/$ns
    [ -d "$m" ] || { echo "DEMO-ERROR $m is not mounted"; rc=1; continue; }
    p=1
    while [ "$p" -le "$passes" ]; do
        if [ -x "$m/bin/python3.11" ] && [ -f "$m/workload.py" ]; then
            echo "DEMO-PHASE $ns pass $p: python from $m"
            PYTHONHOME=$m PYTHONDONTWRITEBYTECODE=1 "$m/lib/ld-linux-x86-64.so.2" --library-path "$m/lib" \
                "$m/bin/python3.11" "$m/workload.py" || { echo "DEMO-ERROR python failed"; rc=1; }
        fi
        echo "DEMO-PHASE $ns pass $p: reading every file under $m"
        n=$(find "$m" -type f | wc -l)
        find "$m" -type f -print0 | xargs -0 cat > /dev/null || { echo "DEMO-ERROR reading $m failed"; rc=1; }
        echo "DEMO-READ $ns pass $p: $n files"
        p=$((p + 1))
    done
done
kill "$ticker" 2>/dev/null
wait "$ticker" 2>/dev/null
stats
# What this guest's memory holds now (kB), for the summary's account of the
# host memory the workload added; and the lower pages the module dropped.
sync; sleep 3
echo "DEMO-MEMINFO $(grep -E '^(MemTotal|MemFree|Cached|Buffers|AnonPages|Shmem|Slab):' /proc/meminfo \
    | tr -d ' ' | sed 's/kB$//' | tr ':' '=' | tr '\n' ' ')lower_pages_dropped=$(cat $S/lower_pages_dropped 2>/dev/null || echo 0)"
[ "$(cat $S/verify_mismatches 2>/dev/null || echo 0)" = 0 ] || { echo "DEMO-ERROR verify mismatches"; rc=1; }
echo "DEMO-DONE rc=$rc"
exit "$rc"
