#!/bin/sh
# Selftest for the sharing suite: every guest reads the same whole tree through
# vmdedupfs (verify=full). The first pass makes the host load the files into
# the pool; the second is served from the pool and must be byte-identical to
# the lower tree. The host side (tests/host/check-sharing) then checks that the
# pool holds one copy while every guest maps it.
# shellcheck source=lib/ktap.sh
. /tests/lib/ktap.sh
# shellcheck source=lib/fs.sh
. /tests/lib/fs.sh
ktap_header 8
pair=""
for m in /shared/*; do
    grep -q " $m vmdedupfs " /proc/mounts && pair="$m" && break
done
if [ -z "$pair" ]; then
    for t in "first pass" "files answered loading were installed after the host's notice" "second pass identical to lower" "odd reads and mmaps identical to lower" "interpreter runs from the mount" "pool pages served" "no verify mismatch" "no fallback"; do
        ktap_skip "$t" "no vmdedupfs mount (run with scripts/guest-run --ns)"
    done
    ktap_finish; exit $?
fi
ns=${pair#/shared/}
lower=/lower/$ns
ktap_diag "tree: $pair ($(find "$lower" -type f | wc -l) files)"
first() { (cd "$pair" && find . -type f -exec cat {} + > /dev/null); }
ktap_check "first pass over every file" first
# A file answered "loading" in the first pass is read from lower then. Once
# the host has loaded it, its notice makes the module hint again without an
# open, install the answer and drop the lower pages it read meanwhile
# (verify=full drops none by itself: these are the notice's).
notified() {
    n=$(stat_of answers_miss_loading)
    ktap_diag "first pass: $n answered loading"
    [ "$n" -gt 0 ] || return 0
    stat_above refetch_hits 0 100 || { echo "no hint sent again after a notice hit (notices $(stat_of loaded_notices), refetches $(stat_of refetches))"; return 1; }
    ktap_diag "notices $(stat_of loaded_notices), hinted again $(stat_of refetches), hits $(stat_of refetch_hits), lower pages dropped $(stat_of lower_pages_dropped)"
    [ "$(stat_of lower_pages_dropped)" -gt 0 ] || { echo "no lower page dropped"; return 1; }
    # Each such hit is timed once, from the first hint (loaded_share_ms_*).
    timed=$(cat /sys/kernel/vmdedup/stats/loaded_share_ms_* | awk '{ s += $1 } END { print s + 0 }')
    [ "$timed" = "$(stat_of refetch_hits)" ] || { echo "$timed hits after a notice timed, $(stat_of refetch_hits) counted"; return 1; }
}
if [ "$(stat_of answers_miss_loading)" -gt 0 ]; then
    ktap_check "files answered loading were installed after the host's notice, their lower pages dropped" notified
else
    ktap_skip "files answered loading were installed after the host's notice, their lower pages dropped" "no file was answered loading (the tree was loaded already)"
fi
# Give the host's loader a moment: a file still loading is a miss, not an error.
sleep 2
ktap_check "second pass identical to lower (sha256 of every file)" same_tree "$pair" "$lower"
# The whole tree once more through odd-sized reads, pread(2) at odd offsets
# and shared and private mmaps of every file, byte for byte against lower.
TREECHECK=$(command -v treecheck || true)
[ -x /tests/tools/treecheck ] && TREECHECK=/tests/tools/treecheck
if [ -n "$TREECHECK" ]; then
    ktap_run "every file identical to lower through odd-sized reads, pread at odd offsets, shared and private mmap" treecheck_tree "$pair" "$lower"
else
    ktap_skip "every file identical to lower through odd-sized reads, pread at odd offsets, shared and private mmap" "no treecheck helper in the guest (tests/guest/tools/treecheck.c, built static)"
fi
# The tree's own Python, started from the mount through the tree's loader and
# libraries, imports its standard library from the mount and hashes a file;
# its code, loader and libraries are mapped from pool frames (the files were
# all read above, so their answers are kept).
py() {
    t=$pair
    ld=$t/lib64/ld-linux-x86-64.so.2
    { [ -x "$ld" ] && [ -f "$t/usr/bin/python3.11" ]; } || { echo "no interpreter in the tree"; return 1; }
    f=edge/pages-16.bin
    want=$(sha256sum "$lower/$f" | cut -d' ' -f1)
    me=$(stat_of mmap_pool_exec); fe=$(stat_of faults_pool_exec)
    got=$(cd "$t" && PYTHONHOME=$t/usr "$ld" --library-path "$t/lib/x86_64-linux-gnu" "$t/usr/bin/python3.11" \
        -c 'import hashlib, json, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' "$f") || return 1
    [ "$got" = "$want" ] || { echo "python says $got, sha256sum says $want"; return 1; }
    de=$(( $(stat_of mmap_pool_exec) - me )); df=$(( $(stat_of faults_pool_exec) - fe ))
    echo "# python: $de executable mappings and $df code page faults served from pool frames"
    { [ "$de" -gt 0 ] && [ "$df" -gt 0 ]; } || { echo "python's code did not come from pool frames"; return 1; }
}
if [ -f "$pair/usr/lib/python3.11/os.py" ] && [ -f "$pair/usr/lib/python3.11/json/__init__.py" ]; then
    ktap_run "interpreter runs from the mount, its code from pool frames" py
else
    ktap_skip "interpreter runs from the mount, its code from pool frames" "the tree has no Python standard library (full tree only)"
fi
ktap_diag "counters: $(cd /sys/kernel/vmdedup/stats && grep -- . * | tr '\n' ' ')"
ktap_check "pool pages served" test "$(stat_of pages_pool)" -gt 0
ktap_check "no verify mismatch" test "$(stat_of verify_mismatches)" = 0
ktap_check "no fallback" test "$(stat_of fallbacks)" = 0
ktap_finish
