#!/bin/sh
# Selftest: private mappings from pool frames. Programs, their
# loader and their libraries run from the mount with their code mapped from
# pool frames (the module's mmap_pool_exec and faults_pool_exec counters rise),
# and MAP_PRIVATE keeps its meaning: writes copy the page first and stay
# private (cow, cow-cold, fork), MADV_DONTNEED drops them, /proc/PID/mem reads
# a pool-backed page, mprotect(PROT_EXEC) works. Every check compares bytes
# with the lower file.
#
# Needs a /shared/NAME mount served by the agent (run with --ns NAME=DIR, a
# tree from scripts/make-test-tree) and the privmap helper
# (tests/guest/tools/privmap.c, at /tests/tools/privmap or in PATH).
# shellcheck source=lib/ktap.sh
. /tests/lib/ktap.sh
# shellcheck source=lib/fs.sh
. /tests/lib/fs.sh
ktap_header 9

T1="a dynamically linked program runs from the mount with its code, loader and libraries mapped from pool frames"
T2="an interpreter runs from the mount with its code and libraries mapped from pool frames"
CHECKS="read cow cow-cold fork dontneed procmem exec"
skip_all() {
    ktap_skip "$T1" "$1"; ktap_skip "$T2" "$1"
    for c in $CHECKS; do ktap_skip "private mapping from pool frames: $c" "$1"; done
    ktap_finish; exit $?
}

fs_load 2>/dev/null
served_mount || skip_all "no /shared/NAME mount served by an agent (run with --ns NAME=DIR)"
ld=$M/lib64/ld-linux-x86-64.so.2
libs=$M/lib/x86_64-linux-gnu
{ [ -x "$ld" ] && [ -d "$libs" ]; } || skip_all "the tree under $M has no loader and libraries (scripts/make-test-tree builds one)"
ktap_diag "mount $M, lower $L"

# run_from_pool NAME CMD...: CMD (a program started through the tree's loader)
# prints what it should, and its code came from pool frames: every mmap of a
# file under the mount during the run was served from the pool (none went to
# lower), some of them executable, with page faults on pool frames in
# executable mappings. Its files are read first so their answers are kept;
# the run is retried a few times while answers are still arriving.
run_from_pool() {
    name=$1; want=$2; shift 2
    files=$("$ld" --library-path "$libs" --list "$1" 2>/dev/null | grep -o "$M/[^ ]*" | sort -u)
    for _ in 1 2 3 4 5 6; do
        # shellcheck disable=SC2086 # $files is a list of paths without spaces, one word each
        pool_served "$ld" "$1" $files > /dev/null 2>&1 || true
        lo=$(stat_of mmap_lower); me=$(stat_of mmap_pool_exec); fe=$(stat_of faults_pool_exec); mp=$(stat_of mmap_pool_private)
        got=$("$ld" --library-path "$libs" "$@" 2>&1) || { echo "$name failed: $got"; return 1; }
        [ "$got" = "$want" ] || { echo "$name printed '$got', expected '$want'"; return 1; }
        dl=$(( $(stat_of mmap_lower) - lo )); de=$(( $(stat_of mmap_pool_exec) - me ))
        df=$(( $(stat_of faults_pool_exec) - fe )); dp=$(( $(stat_of mmap_pool_private) - mp ))
        if [ "$dl" = 0 ] && [ "$de" -gt 0 ] && [ "$df" -gt 0 ]; then
            echo "# $name: $dp private mappings from pool frames, $de executable, $df faults on pool code pages, none from lower"
            return 0
        fi
        sleep 1
    done
    echo "$name: mmaps from lower $dl, executable mappings from pool $de, pool faults in code $df (answers: $(cd /sys/kernel/vmdedup/stats && grep . answers_* | tr '\n' ' '))"
    return 1
}

f=edge/pages-16.bin
sum=$(sha256sum "$L/$f" | cut -d' ' -f1)
if [ -x "$M/usr/bin/sha256sum" ]; then
    ktap_run "$T1" run_from_pool sha256sum "$sum  $M/$f" "$M/usr/bin/sha256sum" "$M/$f"
else
    ktap_skip "$T1" "no usr/bin/sha256sum in the tree"
fi
if [ -x "$M/usr/bin/python3.11" ] && [ -f "$M/usr/lib/python3.11/os.py" ]; then
    export PYTHONHOME="$M/usr"
    ktap_run "$T2" run_from_pool python3.11 42 "$M/usr/bin/python3.11" -c 'print(6 * 7)'
    unset PYTHONHOME
else
    ktap_skip "$T2" "no usr/bin/python3.11 with its standard library in the tree"
fi

PRIV=$(command -v privmap || true)
[ -x /tests/tools/privmap ] && PRIV=/tests/tools/privmap
if [ -z "$PRIV" ] || ! pool_served "$M/$f" > /dev/null 2>&1; then
    why="no privmap helper in the guest (build tests/guest/tools/privmap.c static, --add it)"
    [ -n "$PRIV" ] && why="the agent never served $f from the pool"
    for c in $CHECKS; do ktap_skip "private mapping from pool frames: $c" "$why"; done
else
    # Each check must have mapped from the pool, or it proves nothing.
    priv() {
        p0=$(stat_of mmap_pool_private); v0=$(stat_of verify_mismatches)
        "$PRIV" "$1" "$M/$f" "$L/$f" || return 1
        [ "$(stat_of mmap_pool_private)" -gt "$p0" ] || { echo "the mapping did not come from pool frames"; return 1; }
        [ "$(stat_of verify_mismatches)" = "$v0" ] || { echo "verify mismatches rose"; return 1; }
    }
    for c in $CHECKS; do ktap_check "private mapping from pool frames: $c" priv "$c"; done
fi
ktap_diag "counters: $(cd /sys/kernel/vmdedup/stats && grep -- . * | tr '\n' ' ')"
ktap_finish
