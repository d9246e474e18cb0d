#!/bin/sh
# Selftest: a tree read through vmdedupfs is byte-identical to its lower tree,
# through read(2) (whole files and odd offsets), a shared mmap and a private
# mmap; with a host agent serving the namespace, pages come from the pool
# (verify=full compares every one of them with the lower file).
# Trees: every /shared/NAME that scripts/guest-run mounted, else a tree built
# from the initramfs under /tmp (no namespace on the host: all from lower).
. /tests/lib/ktap.sh
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
# (Loops read whole lines: names may hold spaces and quotes. Sorted, so the
# sample is the same whatever order the directory lists its entries in.)
odd() {
    (cd "$1" && find . -type f -size +1 | sort | head -n 40) > /tmp/odd.list
    while IFS= read -r f; do
        for off in 1 4095 4097 12289; do
            a=$(dd if="$1/$f" bs=1 skip=$off count=5000 2>/dev/null | sha256sum)
            b=$(dd if="$2/$f" bs=1 skip=$off count=5000 2>/dev/null | sha256sum)
            [ "$a" = "$b" ] || { echo "$f at $off differs"; return 1; }
        done
    done < /tmp/odd.list
}
ktap_check "reads at odd offsets identical" each odd
links() {
    (cd "$1" && find . -type l) > /tmp/links.list
    while IFS= read -r l; do [ "$(readlink "$1/$l")" = "$(readlink "$2/$l")" ] || { echo "$l differs"; return 1; }; done < /tmp/links.list
}
ktap_check "symlinks read identical" each links

MMAPCAT=$(command -v mmapcat || true)
[ -x /tests/tools/mmapcat ] && MMAPCAT=/tests/tools/mmapcat
mm() {
    # Every edge case, and a sorted sample of the rest (one process per file
    # is slow under TCG).
    (cd "$1" && { find . -type f -path './edge/*'; find . -type f | sort | head -n 60; }) > /tmp/mm.list
    while IFS= read -r f; do
        a=$("$MMAPCAT" "$1/$f" $3 | sha256sum); b=$(sha256sum < "$2/$f")
        [ "$a" = "$b" ] || { echo "$f differs through mmap $3"; return 1; }
    done < /tmp/mm.list
}
if [ -n "$MMAPCAT" ]; then
    mm_private() { mm "$1" "$2" private; }
    ktap_check "every file byte-identical through a shared mmap" each mm
    ktap_check "every file byte-identical through a private mmap" each mm_private
else
    ktap_skip "every file byte-identical through a shared mmap" "no mmapcat helper in the guest (tests/guest/tools/mmapcat.c, built static)"
    ktap_skip "every file byte-identical through a private mmap" "no mmapcat helper in the guest"
fi
ktap_diag "counters: $(cd /sys/kernel/vmdedup/stats && grep . * | tr '\n' ' ')"
if [ "$(stat_of answers_hit)" -gt 0 ] && [ "$(stat_of pages_pool)" -gt "$pool0" ]; then
    ktap_check "pool pages served and verified, no mismatch" sh -c "[ $(stat_of verify_mismatches) = 0 ] && [ $(stat_of verify_pages) -gt 0 ]"
else
    ktap_skip "pool pages served and verified, no mismatch" "no host agent serving these namespaces (answers_hit=$(stat_of answers_hit), was $hits0)"
fi
if [ -n "$own" ]; then umount "$own.mnt"; rm -rf "$own.lower"; fi
ktap_finish
