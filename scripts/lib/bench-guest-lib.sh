# shellcheck shell=sh
# What every scripts/bench ksm guest reports, sourced by bench-guest.sh
# (busybox guests) and bench-distro-guest.sh (Debian guests) from the
# directory they run in. Output lines, read by `vmdedup-bench report`:
#   BENCH-STATS LABEL k=v ...   every counter of the module
#                               (/sys/kernel/vmdedup/stats), at LABEL
#   BALLAST-READY mib=N ms=T    the ballast is written (bench_ballast)
#   BENCH-IDLE secs=W k=v ...   what an idle guest did in W seconds: its
#                               interrupts (all, the local timer's, the
#                               module's) and the module's counters' deltas
S=/sys/kernel/vmdedup/stats
# bench_arg NAME: bench.NAME=VALUE of the kernel command line.
bench_arg() { sed -n "s/.*bench\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
# bench_counters: "name=value ..." of every module counter.
# Shell built-ins only: a process started here would move the counters it
# reads (mmap_pool, faults_pool) in the middle of an idle window.
bench_counters() {
    [ -d "$S" ] || return 0
    for f in "$S"/*; do
        [ -f "$f" ] || continue
        _v=0
        read -r _v < "$f" 2>/dev/null || _v=0
        printf '%s=%s ' "${f##*/}" "$_v"
    done
}
bench_stats() { echo "BENCH-STATS $1 $(bench_counters)"; }
# bench_irqs: "all LOC module" interrupt counts, summed over CPUs. The
# module's are the lines whose name has "vmdedup" in it.
bench_irqs() {
    awk '{
        n = 0
        for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) n += $i
        all += n
        if ($1 == "LOC:") loc += n
        if ($0 ~ /vmdedup/) mod += n
    } END { printf "%d %d %d\n", all, loc, mod }' /proc/interrupts
}
# bench_ballast MIB DIR: runs DIR/ballast MIB in the background (it holds its
# memory until the guest stops) and waits until it has written all of it.
bench_ballast() {
    [ "${1:-0}" -gt 0 ] 2>/dev/null || return 0
    "$2/ballast" "$1" > /tmp/ballast.out 2>&1 &
    while ! grep -q '^BALLAST-READY' /tmp/ballast.out 2>/dev/null; do
        kill -0 $! 2>/dev/null || { echo "BENCH-ERROR ballast: $(cat /tmp/ballast.out)"; return 1; }
        sleep 1
    done
    cat /tmp/ballast.out
}
# bench_idle SECS: one idle window; prints BENCH-IDLE with the deltas.
bench_idle() {
    [ "${1:-0}" -gt 0 ] 2>/dev/null || return 0
    set -- "$1" "$(bench_irqs)" "$(bench_counters)"
    sleep "$1"
    _after_irqs=$(bench_irqs)
    _after=$(bench_counters)
    echo "BENCH-IDLE secs=$1 $(echo "$2 $_after_irqs" | awk '{ printf "irqs=%d loc=%d module_irqs=%d", $4 - $1, $5 - $2, $6 - $3 }') $(
        echo "$3" | tr ' ' '\n' > /tmp/idle.a
        echo "$_after" | tr ' ' '\n' > /tmp/idle.b
        awk -F= 'NR == FNR { a[$1] = $2; next } $1 != "" && ($2 - a[$1]) != 0 { printf "d_%s=%d ", $1, $2 - a[$1] }' /tmp/idle.a /tmp/idle.b
    )"
}
