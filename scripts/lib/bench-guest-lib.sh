# shellcheck shell=sh
# What every scripts/bench ksm guest reports, sourced by bench-guest.sh
# (busybox guests) and bench-distro-guest.sh (Debian guests) from the
# directory they run in. Output lines, read by `vmdedup-bench report`:
#   BENCH-STATS LABEL k=v ...   every counter of the module
#                               (/sys/kernel/vmdedup/stats), at LABEL
#   BENCH-MEMINFO LABEL k=v ... every /proc/meminfo field at LABEL (start:
#                               before the workload, end: after it, idle:
#                               after the idle window), in kB; names as in
#                               meminfo, Active(anon) as Active_anon
#   BENCH-KERNELMEM k=v ...     the boot's "Memory:" line of the kernel log
#                               (kB): available, total (usable RAM), then
#                               kernel_code, rwdata, rodata, init, bss,
#                               reserved, cma_reserved
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
# bench_meminfo LABEL: one BENCH-MEMINFO line with every /proc/meminfo field.
# Shell built-ins only, as bench_counters: it also runs right after the idle
# window. "Active(anon):  12 kB" becomes Active_anon=12; a field without a
# unit (HugePages_Total) keeps its plain count.
bench_meminfo() {
    _line="BENCH-MEMINFO $1"
    while IFS=: read -r _n _r; do
        case $_n in
            *\(*\)) _i=${_n#*\(}; _n=${_n%%\(*}_${_i%\)} ;;
        esac
        _r=${_r#"${_r%%[! ]*}"}
        _r=${_r%% *}
        case $_n$_r in *[!A-Za-z0-9_]*) continue ;; esac
        [ -n "$_n" ] && [ -n "$_r" ] && _line="$_line $_n=$_r"
    done < /proc/meminfo
    echo "$_line"
}
# bench_kernelmem: one BENCH-KERNELMEM line from the kernel's boot message
# "Memory: 429076K/523768K available (14336K kernel code, ..., 0K
# cma-reserved)", or nothing when the log no longer has it. Starts dmesg:
# only before the workload, never in an idle window.
bench_kernelmem() {
    dmesg 2>/dev/null | awk '
        {
            i = index($0, "Memory: ")
            if (i == 0) next
            s = substr($0, i + 8)
            if (s !~ /^[0-9]+K\/[0-9]+K available/) next
            avail = s; sub(/K.*/, "", avail)
            total = s; sub(/^[0-9]+K\//, "", total); sub(/K.*/, "", total)
            out = "available=" avail " total=" total
            if (match(s, /\(.*\)/)) {
                n = split(substr(s, RSTART + 1, RLENGTH - 2), part, /, */)
                for (j = 1; j <= n; j++) {
                    v = part[j]; sub(/K.*/, "", v)
                    k = part[j]; sub(/^[0-9]+K /, "", k); gsub(/[^A-Za-z0-9]+/, "_", k)
                    if (v ~ /^[0-9]+$/ && k ~ /^[A-Za-z]/) out = out " " k "=" v
                }
            }
            print "BENCH-KERNELMEM " out
            exit
        }'
}
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
    # What the guest holds when the host takes its last samples (the bench
    # stops once every guest printed BENCH-IDLE, so this line comes first).
    bench_meminfo idle
    echo "BENCH-IDLE secs=$1 $(echo "$2 $_after_irqs" | awk '{ printf "irqs=%d loc=%d module_irqs=%d", $4 - $1, $5 - $2, $6 - $3 }') $(
        echo "$3" | tr ' ' '\n' > /tmp/idle.a
        echo "$_after" | tr ' ' '\n' > /tmp/idle.b
        awk -F= 'NR == FNR { a[$1] = $2; next } $1 != "" && ($2 - a[$1]) != 0 { printf "d_%s=%d ", $1, $2 - a[$1] }' /tmp/idle.a /tmp/idle.b
    )"
}
