# shellcheck shell=sh
# What every scripts/demo guest reports to the host's live table, sourced by
# scripts/lib/demo-guest.sh (busybox guests) and demo-distro-guest.sh (Debian
# guests), from the directory they run in:
#   demo_ticker_start   a DEMO-STATS line (the module's counters) every second
#   demo_finish RC      stops the ticker, a last DEMO-STATS line, DEMO-MEMINFO
#                       (what the guest's memory holds, and the lower pages
#                       the module dropped), DEMO-DONE; exits with RC, or 1
#                       on a verify mismatch
S=/sys/kernel/vmdedup/stats
demo_stats() {
    line=DEMO-STATS
    for c in hints_sent answers_hit answers_miss_loading pages_pool pages_lower faults_pool mmap_pool \
             fallbacks verify_pages verify_mismatches bytes_pool; do
        line="$line $c=$(cat "$S/$c" 2>/dev/null || echo 0)"
    done
    echo "$line"
}
demo_ticker_start() {
    (while :; do demo_stats; sleep 1; done) &
    demo_ticker=$!
}
demo_finish() {
    _rc=$1
    kill "$demo_ticker" 2>/dev/null
    wait "$demo_ticker" 2>/dev/null
    demo_stats
    # What this guest's memory holds now (kB), for the summary's account of
    # the host memory the workload added; and the lower pages the module
    # dropped.
    sync; sleep 3
    echo "DEMO-MEMINFO $(grep -E '^(MemTotal|MemFree|Cached|Buffers|AnonPages|Shmem|Slab):' /proc/meminfo \
        | tr -d ' ' | sed 's/kB$//' | tr ':' '=' | tr '\n' ' ')lower_pages_dropped=$(cat $S/lower_pages_dropped 2>/dev/null || echo 0)"
    [ "$(cat $S/verify_mismatches 2>/dev/null || echo 0)" = 0 ] || { echo "DEMO-ERROR verify mismatches"; _rc=1; }
    echo "DEMO-DONE rc=$_rc"
    exit "$_rc"
}
