#!/bin/sh
# Selftest: a tree read through vmdedupfs is byte-identical to its lower tree,
# every file through read(2) (whole files, odd-sized pieces), pread(2) at odd
# offsets, a shared mmap and a private mmap; with a host agent serving the namespace, pages come from the pool
# (verify=full compares every one of them with the lower file).
# Trees: every /shared/NAME that scripts/guest-run mounted, else a tree built
# from the initramfs under /tmp (no namespace on the host: all from lower).
# shellcheck source=lib/ktap.sh
. /tests/lib/ktap.sh
# shellcheck source=lib/fs.sh
. /tests/lib/fs.sh
ktap_header 9

fs_load
own=""
if ! grep -q ' /shared/[^ ]* vmdedupfs ' /proc/mounts; then
    own=/tmp/fs_read
    mkdir -p "$own.lower" "$own.mnt"
    fs_make_tree "$own.lower"
    mount -t vmdedupfs -o "ns=fs_read,lower=$own.lower,verify=full" none "$own.mnt"
fi
pairs=$(awk '$3 == "vmdedupfs" { split($4, o, ","); for (i in o) if (o[i] ~ /^lower=/) print $2 ":" substr(o[i], 7) }' /proc/mounts)
ktap_check "a vmdedupfs mount to test" test -n "$pairs"
ktap_diag "trees: $pairs"

each() { for p in $pairs; do "$@" "${p%%:*}" "${p#*:}" || return 1; done; }
listing() { (cd "$1" && find . | sort | while read -r f; do stat -c '%n %F %s %a %u %g %Y %i' "$f"; done); }
same_listing() { [ "$(listing "$1")" = "$(listing "$2")" ] && [ -n "$(listing "$1")" ]; }
ktap_check "directory listings and attributes identical" each same_listing
ktap_check "every file byte-identical through read (first pass)" each same_tree
# A later open re-hints files the host was still loading: now they hit.
sleep 1
hits0=$(stat_of answers_hit); pool0=$(stat_of pages_pool)
ktap_check "every file byte-identical through read (second pass)" each same_tree
links() {
    (cd "$1" && find . -type l) > /tmp/links.list
    while IFS= read -r l; do [ "$(readlink "$1/$l")" = "$(readlink "$2/$l")" ] || { echo "$l differs"; return 1; }; done < /tmp/links.list
}
ktap_check "symlinks read identical" each links

# Every file again through read(2) in odd-sized pieces, pread(2) at odd
# offsets, a shared and a private mmap, each compared byte for byte with the
# lower file (one treecheck process per tree).
TREECHECK=$(command -v treecheck || true)
[ -x /tests/tools/treecheck ] && TREECHECK=/tests/tools/treecheck
if [ -n "$TREECHECK" ]; then
    mp0=$(stat_of mmap_pool_private)
    fa0=$(stat_of faults_around_pages)
    ktap_run "every file byte-identical through odd-sized reads, pread at odd offsets, shared and private mmap" each treecheck_tree
    if [ "$(stat_of answers_hit)" -gt 0 ]; then
        ktap_check "private mappings were served from pool frames" test "$(stat_of mmap_pool_private)" -gt "$mp0"
        # The trees have files of many pages: a read fault maps the
        # neighbouring pool frames too (and treecheck then compares them).
        ktap_check "pool mapping faults mapped neighbouring frames (fault-around)" test "$(stat_of faults_around_pages)" -gt "$fa0"
    else
        ktap_skip "private mappings were served from pool frames" "no host agent serving these namespaces"
        ktap_skip "pool mapping faults mapped neighbouring frames (fault-around)" "no host agent serving these namespaces"
    fi
else
    ktap_skip "every file byte-identical through odd-sized reads, pread at odd offsets, shared and private mmap" "no treecheck helper in the guest (tests/guest/tools/treecheck.c, built static)"
    ktap_skip "private mappings were served from pool frames" "no treecheck helper in the guest"
    ktap_skip "pool mapping faults mapped neighbouring frames (fault-around)" "no treecheck helper in the guest"
fi
ktap_diag "counters: $(cd /sys/kernel/vmdedup/stats && grep -- . * | tr '\n' ' ')"
if [ "$(stat_of answers_hit)" -gt 0 ] && [ "$(stat_of pages_pool)" -gt "$pool0" ]; then
    ktap_check "pool pages served and verified, no mismatch" sh -c "[ $(stat_of verify_mismatches) = 0 ] && [ $(stat_of verify_pages) -gt 0 ]"
else
    ktap_skip "pool pages served and verified, no mismatch" "no host agent serving these namespaces (answers_hit=$(stat_of answers_hit), was $hits0)"
fi
if [ -n "$own" ]; then umount "$own.mnt"; rm -rf "$own.lower"; fi
ktap_finish
