#!/bin/sh
# Selftest: nothing leaks over many load/mount/read/unmount/unload cycles
# (module hygiene, and a file map's life repeated at scale). Each cycle: insmod,
# mount vmdedupfs, read a few files (read(2) and, with the mmapwatch helper, a
# shared mmap), umount, rmmod. Memory is compared before and after, with the
# page cache and reclaimable slab dropped both times:
#   - Slab: at most FS_CYCLES_SLAB_KB (default 128 KiB) more, i.e. about
#     1.3 KiB per cycle over 100 cycles. A cycle creates a dozen inodes
#     (~1 KiB each with the lower inode's wrapper), their dentries, a super
#     block and the mount's Rust state: leaking any one of those per cycle
#     exceeds the limit, while the noise seen after drop_caches on these
#     1-CPU guests is a few KiB either way (slab pages partly filled by the
#     shell's own objects).
#   - VmallocUsed: at most 256 KiB more. The module's text and data are
#     vmalloc'ed (hundreds of KiB): one leaked module image exceeds it.
#   - MemAvailable: at most FS_CYCLES_AVAIL_KB (default 4096 KiB) less:
#     catches page leaks of more than 10 pages (40 KiB) per cycle, e.g. a
#     module image or per-mount buffers kept. It is coarse on purpose: in
#     leak-free runs it moved by up to 2.2 MiB either way over 300 cycles
#     (free pages parked on the per-CPU lists, direct-map splits from module
#     text protection: nothing drop_caches returns). Small objects are the
#     Slab check's job.
#   - kmemleak, when the kernel has it (/sys/kernel/debug/kmemleak).
# With an agent serving /shared/NAME, the cycles mount that namespace with
# its nsid (hints, hits, releases) and at the end the agent must hold no map
# for this VM (every one released). Mounts made by scripts/guest-run are
# unmounted for the cycles and mounted again afterwards.
# shellcheck source=lib/ktap.sh
. /tests/lib/ktap.sh
# shellcheck source=lib/fs.sh
. /tests/lib/fs.sh
N=${FS_CYCLES_N:-100}
WARM=5
SLAB_KB=${FS_CYCLES_SLAB_KB:-128}
VMALLOC_KB=256
AVAIL_KB=${FS_CYCLES_AVAIL_KB:-4096}
ktap_header 7

T1="$WARM warm-up cycles"
T2="$N insmod/mount/read/umount/rmmod cycles"
T3="Slab back to where it started (within $SLAB_KB KiB)"
T4="VmallocUsed back to where it started (within $VMALLOC_KB KiB)"
T5="MemAvailable back to where it started (within $AVAIL_KB KiB)"
T6="kmemleak finds nothing"
T7="the agent holds no map of this VM after the cycles"

meminfo() { awk -v k="$1:" '$1 == k { print $2 }' /proc/meminfo; }
settle() { sync; echo 3 > /proc/sys/vm/drop_caches; sleep 1; echo 3 > /proc/sys/vm/drop_caches; }

# The mounts scripts/guest-run made: remember them, unmount them for now.
saved=$(awk '$3 == "vmdedupfs" { print $2 " " $4 }' /proc/mounts)
restore() {
    echo "$saved" | while read -r dir opts; do
        [ -n "$dir" ] || continue
        lsmod | grep -q '^vmdedup ' || insmod /lib/modules/vmdedup.ko
        grep -q " $dir vmdedupfs " /proc/mounts || mount -t vmdedupfs -o "$opts" none "$dir"
    done
}
ns_opts=""
if [ -n "$saved" ]; then
    first=$(echo "$saved" | head -n 1)
    opts=${first#* }
    case "$opts" in *nsid=*) ns_opts=$(echo "$opts" | sed 's/^ro,//; s/,verify=[a-z]*//') ;; esac
    echo "$saved" | while read -r dir _; do umount "$dir" || echo "# cannot unmount $dir"; done
fi
if awk '$3 == "vmdedupfs"' /proc/mounts | grep -q . || { lsmod | grep -q '^vmdedup ' && ! rmmod vmdedup; }; then
    why="vmdedupfs still mounted or the module busy: $(awk '$3 == "vmdedupfs" { print $2 }' /proc/mounts | tr '\n' ' ')"
    for t in "$T1" "$T2" "$T3" "$T4" "$T5" "$T6" "$T7"; do ktap_skip "$t" "$why"; done
    restore; ktap_finish; exit $?
fi

M=/tmp/fs_cycles.mnt
mkdir -p "$M"
if [ -n "$ns_opts" ]; then
    OPTS=$ns_opts
    LOWER=$(echo "$OPTS" | sed -n 's/.*lower=\([^,]*\).*/\1/p')
else
    LOWER=/tmp/fs_cycles.lower
    mkdir -p "$LOWER"
    fs_make_tree "$LOWER"
    OPTS="ns=fs_cycles,lower=$LOWER"
fi
ktap_diag "mount options: $OPTS"
FILES=$(cd "$LOWER" && find . -type f -size +0 | grep -v '[^A-Za-z0-9._/+-]' | head -n 6 | tr '\n' ' ')
BIG=$(cd "$LOWER" && find . -type f -size +16k -size -2048k | grep -v '[^A-Za-z0-9._/+-]' | head -n 1)
WATCH=$(command -v mmapwatch || true)
[ -x /tests/tools/mmapwatch ] && WATCH=/tests/tools/mmapwatch

cycle() {
    insmod /lib/modules/vmdedup.ko || { echo "insmod failed"; return 1; }
    mount -t vmdedupfs -o "$OPTS" none "$M" || { echo "mount failed"; rmmod vmdedup; return 1; }
    for f in $FILES; do
        cmp "$M/$f" "$LOWER/$f" || { umount "$M"; rmmod vmdedup; return 1; }
    done
    if [ -n "$WATCH" ] && [ -n "$BIG" ]; then
        "$WATCH" "$M/$BIG" "$LOWER/$BIG" /nonexistent 0 > /dev/null || { echo "mmap of $BIG differs"; umount "$M"; rmmod vmdedup; return 1; }
    fi
    rmmod vmdedup 2>/dev/null && { echo "rmmod succeeded while mounted"; return 1; }
    umount "$M" || { echo "umount failed"; return 1; }
    rmmod vmdedup || { echo "rmmod failed"; return 1; }
}
cycles() {
    i=1
    while [ "$i" -le "$1" ]; do
        out=$(cycle 2>&1) || { echo "cycle $i: $out"; return 1; }
        i=$((i + 1))
    done
}
ktap_check "$T1" cycles "$WARM"
settle
slab0=$(meminfo Slab); vm0=$(meminfo VmallocUsed); av0=$(meminfo MemAvailable); fr0=$(meminfo MemFree)
kml=/sys/kernel/debug/kmemleak
[ -w "$kml" ] && echo clear > "$kml"
ktap_check "$T2" cycles "$N"
settle
slab1=$(meminfo Slab); vm1=$(meminfo VmallocUsed); av1=$(meminfo MemAvailable)
ktap_diag "Slab $slab0 -> $slab1 KiB, VmallocUsed $vm0 -> $vm1 KiB, MemAvailable $av0 -> $av1 KiB, MemFree $fr0 -> $(meminfo MemFree) KiB"
within() { [ "$1" -le "$2" ] || { echo "moved the wrong way by $1 KiB (limit $2 KiB)" >&2; return 1; }; }
ktap_check "$T3" within $((slab1 - slab0)) "$SLAB_KB"
ktap_check "$T4" within $((vm1 - vm0)) "$VMALLOC_KB"
# MemAvailable also moves with transient kernel state (deferred frees, RCU):
# a leak stays, noise drains, so settle and measure again before failing.
for _ in 1 2 3; do
    [ $((av0 - av1)) -le "$AVAIL_KB" ] && break
    settle; sleep 2; av1=$(meminfo MemAvailable)
done
ktap_check "$T5" within $((av0 - av1)) "$AVAIL_KB"
if [ -w "$kml" ]; then
    echo scan > "$kml"; sleep 6; echo scan > "$kml"
    leaks() { ! grep -q . "$kml" || { head -n 40 "$kml" >&2; return 1; }; }
    ktap_check "$T6" leaks
else
    ktap_skip "$T6" "kernel without CONFIG_DEBUG_KMEMLEAK (no $kml)"
fi

if [ -z "$ns_opts" ]; then
    ktap_skip "$T7" "no namespace served by an agent (run with --ns NAME=DIR)"
elif ! command -v vmdedup-guest > /dev/null 2>&1 || ! vmdedup-guest status > /tmp/fs_cycles.status 2>&1; then
    ktap_skip "$T7" "no agent reachable through vmdedup-guest over vsock: $(tail -n 1 /tmp/fs_cycles.status 2>/dev/null)"
else
    # The module is unloaded: only the agent's view is left to ask.
    released() {
        for _ in $(seq 1 50); do
            vmdedup-guest status > /tmp/fs_cycles.status 2>&1 || { tail -n 2 /tmp/fs_cycles.status >&2; return 1; }
            grep -q ' maps_held 0 ' /tmp/fs_cycles.status && return 0
            sleep 0.2
        done
        grep -A1 '^  vm ' /tmp/fs_cycles.status >&2
        return 1
    }
    ktap_check "$T7" released
fi
[ -z "$ns_opts" ] && rm -rf "$LOWER"
restore
ktap_finish
