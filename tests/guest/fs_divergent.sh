#!/bin/sh
# Selftest: the guest's lower files differ from the host's namespace (same
# paths), and what verify=sample checks. DIVERGENT_SAME is a file of the
# same size and mtime but other bytes, with its content fingerprint in the
# guest's image: the fingerprint makes it a miss, with verify=off too.
# DIVERGENT_MTIME has the same size and another mtime (the identity check
# refuses it). DIVERGENT_LAST has the same size and mtime, other bytes in its
# last page and no fingerprint: only verify can tell, and verify=sample
# (first, last and a random page of every file, when the answer is first
# used) does. verify=sample also leaves none of a served file's lower pages
# in the page cache. The guest must read its own bytes, always.
# shellcheck source=lib/ktap.sh
. /tests/lib/ktap.sh
# shellcheck source=lib/fs.sh
. /tests/lib/fs.sh
names="own bytes;fingerprint miss with verify=off;sample checks first, last and a random page;sample leaves no lower page cache;sample checks an mmap before its faults;sample catches a different last page;own bytes again;tree identical to lower;identity mismatch answered"
ktap_header 9
if ! served_mount || [ -z "${DIVERGENT_SAME:-}" ] || [ -z "${DIVERGENT_LAST:-}" ]; then
    IFS=';'
    for t in $names; do
        ktap_skip "$t" "needs the divergent suite (tests/run --suite divergent)"
    done
    unset IFS
    ktap_finish; exit $?
fi
pair=$M lower=$L
opts=$(awk -v m="$M" '$2 == m { print $4 }' /proc/mounts)
ns=$(echo "$opts" | tr ',' '\n' | sed -n 's/^ns=//p')
nsid=$(echo "$opts" | tr ',' '\n' | sed -n 's/^nsid=//p')
mkdir -p /mnt/off /mnt/sample
mount -t vmdedupfs -o "ns=$ns,nsid=$nsid,lower=$lower,verify=off" none /mnt/off
mount -t vmdedupfs -o "ns=$ns,nsid=$nsid,lower=$lower,verify=sample" none /mnt/sample

own() {
    for f in $DIVERGENT_SAME $DIVERGENT_MTIME $DIVERGENT_LAST; do
        cmp -s "$pair/$f" "$lower/$f" || { echo "$f: not the guest's own bytes"; return 1; }
    done
}
ktap_check "divergent files read as the guest's own bytes" own

# wait_for COUNTER BASE CMD...: runs CMD (which must succeed) until COUNTER
# exceeds BASE, for at most about 60 s.
wait_for() {
    _c=$1 _b=$2; shift 2
    for _ in $(seq 1 200); do
        "$@" || { echo "failed: $* ($_c at $(stat_of "$_c"))"; return 1; }
        [ "$(stat_of "$_c")" -gt "$_b" ] && return 0
        sleep 0.3
    done
    echo "$_c stayed at $(stat_of "$_c") (answers: $(cd /sys/kernel/vmdedup/stats && grep . answers_* | tr '\n' ' '))"
    return 1
}

# verify=off: the same-size-and-mtime file is answered with an identity
# miss because of its fingerprint, and nothing was compared.
fp_miss() {
    i0=$(stat_of answers_miss_identity) v0=$(stat_of verify_pages) p0=$(stat_of pages_pool)
    wait_for answers_miss_identity "$i0" cmp -s "/mnt/off/$DIVERGENT_SAME" "$lower/$DIVERGENT_SAME" || return 1
    cmp -s "/mnt/off/$DIVERGENT_SAME" "$lower/$DIVERGENT_SAME" || { echo "not the guest's bytes"; return 1; }
    [ "$(stat_of verify_pages)" = "$v0" ] || { echo "verify_pages moved with verify=off"; return 1; }
    [ "$(stat_of pages_pool)" = "$p0" ] || { echo "pool pages served for the file"; return 1; }
}
ktap_check "fingerprint miss with verify=off" fp_miss

# verify=sample on a file the guest has not read yet: the first reads go to
# lower while the host loads it, then the answer's check compares 2 or 3
# pages (the random one may be the first or the last) and drops the lower
# pages; from then on reads take pool pages.
f=edge/pages-16.bin
sample_read() { cat "/mnt/sample/$f" > /dev/null; }
vf0=$(stat_of verify_files) vp0=$(stat_of verify_pages) d0=$(stat_of lower_pages_dropped)
sample_ok() {
    wait_for verify_files "$vf0" sample_read || return 1
    p0=$(stat_of pages_pool)
    sample_read
    n=$(( $(stat_of verify_pages) - vp0 ))
    if [ "$n" -lt 2 ] || [ "$n" -gt 3 ]; then echo "compared $n pages, not 2 or 3"; return 1; fi
    [ "$(stat_of pages_pool)" -ge $((p0 + 16)) ] || { echo "reads after the check did not take pool pages"; return 1; }
}
ktap_check "sample checks first, last and a random page" sample_ok
no_cache() {
    n=$(incore "$lower/$f") || return 1
    [ "$n" = 0 ] || { echo "$n lower pages still cached"; return 1; }
    [ "$(stat_of lower_pages_dropped)" -gt "$d0" ] || { echo "no lower pages dropped"; return 1; }
    cmp -s "/mnt/sample/$f" "$lower/$f" || { echo "bytes differ"; return 1; }
}
ktap_check "sample leaves no lower page cache" no_cache

# An mmap is checked before any fault can map a pool frame.
g=edge/duplicate-of-pages-16.bin
mmap_ok() { mmapcat "/mnt/sample/$g" | cmp -s - "$lower/$g"; }
sample_mmap() {
    vf=$(stat_of verify_files) fp0=$(stat_of faults_pool)
    wait_for verify_files "$vf" mmap_ok || return 1
    wait_for faults_pool "$fp0" mmap_ok || return 1
}
ktap_check "sample checks an mmap before its faults" sample_mmap

# No fingerprint, other bytes in the last page only: the sample's last page
# catches it, the file goes to lower for good, and every read is the
# guest's own bytes.
last_ok() { cmp -s "/mnt/sample/$DIVERGENT_LAST" "$lower/$DIVERGENT_LAST"; }
sample_mismatch() {
    m0=$(stat_of verify_mismatches) fb0=$(stat_of fallbacks)
    wait_for verify_mismatches "$m0" last_ok || return 1
    last_ok || { echo "not the guest's bytes after the mismatch"; return 1; }
    [ "$(stat_of fallbacks)" -gt "$fb0" ] || { echo "no fallback counted"; return 1; }
}
ktap_check "sample catches a different last page" sample_mismatch

ktap_check "own bytes again, after the host answered" own
ktap_check "tree identical to lower" same_tree "$pair" "$lower"
# The other-mtime file: the host first looks at its file again (it may have
# changed to the guest's version; the guest is told "loading" meanwhile),
# then answers the mismatch. Opened until that answer came (about 60 s at
# most), with the fingerprint miss above that makes two.
both_misses() {
    for _ in $(seq 1 200); do
        [ "$(stat_of answers_miss_identity)" -ge 2 ] && return 0
        cat "$pair/$DIVERGENT_MTIME" > /dev/null || return 1
        sleep 0.3
    done
    echo "answers_miss_identity $(stat_of answers_miss_identity), not 2"
    return 1
}
ktap_check "identity mismatch answered" both_misses
ktap_diag "counters: $(cd /sys/kernel/vmdedup/stats && grep -- . * | tr '\n' ' ')"
umount /mnt/off /mnt/sample
ktap_finish
