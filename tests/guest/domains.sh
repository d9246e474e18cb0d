#!/bin/sh
# Selftest of the domains suite: trust domains are a boundary a hostile guest
# cannot see through. vm1 (domain tenant-a) may use namespace "secret", which
# the host warmed into tenant-a's pool before the guests booted; vm2 (domain
# tenant-b) may not. Both may use "small".
#   vm1  reads every secret file through /shared/secret (byte-checked against
#        lower), served from pool frames; then maps every PCI BAR it has
#        (vmdedup-guest scan-bars) and must find every content needle in
#        them: the files are in its pool and the scanner finds what is there.
#   vm2  reads a few files of "small" from its own pool (its pool BAR is live),
#        then, as root, maps every PCI BAR it has and searches it for the
#        secret files' bytes and names: it must find none.
# The needles (tests/host/make-secret-tree) are at /etc/vmdedup/needles:
# `content:FILE@OFFSET HEX` (64 random bytes of a secret file) and
# `name:NAME HEX` (a random file or directory name).
# Names are not in any pool by design (the pool holds pages and their
# tables); vm1's own ring carries its hints' paths, so vm1 finding names in
# its own BARs is reported, never a failure. For vm2 a name found is a leak.
# Reading every BAR reads virtio registers too, and a virtio ISR register is
# cleared by a read: this guest kernel has no MSI, so virtio devices interrupt
# through INTx and a scan could swallow an interrupt. The suite therefore runs
# without vsock (guest-run --no-vsock) and scans when no disk I/O is in flight.
# shellcheck source=lib/ktap.sh
. /tests/lib/ktap.sh
# shellcheck source=lib/fs.sh
. /tests/lib/fs.sh
needles=/etc/vmdedup/needles
if [ "$VMDEDUP_GUEST" = vm1 ]; then
    ktap_header 6
    T1="secret files identical to lower"; T2="every secret file a hit at its first open (warmed before boot)"
    T3="secret files served from pool frames"; T4="second pass identical to lower"
    T5="every PCI BAR scanned, the pool BAR among them"; T6="every secret content needle found in this guest's BARs"
else
    ktap_header 4
    T1="shared namespace served from this VM's pool"; T2="every PCI BAR scanned, the pool BAR among them"
    T3="no byte of the secret files in any BAR"; T4="no name of the secret files in any BAR"
fi
if [ "${DOMAINS:-}" != 1 ] || [ ! -f "$needles" ] || ! command -v vmdedup-guest > /dev/null; then
    ktap_skip_from 1 "needs the domains suite (tests/run --suite domains)"
fi
ktap_diag "$VMDEDUP_GUEST: $(grep -c '^content:' "$needles") content and $(grep -c '^name:' "$needles") name needles"

# scan_bars: every BAR into /tmp/scan.out; prints the BAR lines as diagnostics.
scan_bars() {
    vmdedup-guest scan-bars "$needles" > /tmp/scan.out 2>&1 || { tail -n 3 /tmp/scan.out; return 1; }
    grep -E '^(bar|scanned:|needles:)' /tmp/scan.out | sed 's/^/# /'
}
# bars_ok: the scan mapped at least two ivshmem memory BARs (ring and pool)
# and one of POOL_SIZE bytes (the pool).
bars_ok() {
    # scanned: N memory BARs, B bytes; ivshmem (1af4:1110): K memory BARs, KB bytes
    k=$(sed -n 's/^scanned: .*; ivshmem ([0-9a-f:]*): \([0-9]*\) memory BARs.*/\1/p' /tmp/scan.out)
    [ "${k:-0}" -ge 2 ] || { echo "only ${k:-0} ivshmem memory BARs scanned"; return 1; }
    grep -q "\[1af4:1110\]: memory, ${POOL_SIZE:-none} bytes, scanned" /tmp/scan.out \
        || { echo "no ivshmem BAR of ${POOL_SIZE:-?} bytes (the pool) scanned"; return 1; }
}
# check_none DESC KIND: a test point: no needle of KIND (content, name) was
# found; otherwise every place found is a diagnostic line before "not ok".
check_none() {
    if grep -q "^found $2:" /tmp/scan.out; then
        echo "# $(grep -c "^found $2:" /tmp/scan.out) $2 needle(s) of another domain's files found:"
        grep "^found $2:" /tmp/scan.out | head -n 20 | sed 's/^/# LEAK: /'
        ktap_fail "$1"
    else
        ktap_pass "$1"
    fi
}

if [ "$VMDEDUP_GUEST" = vm1 ]; then
    m=/shared/secret
    grep -q " $m vmdedupfs " /proc/mounts || ktap_skip_from 1 "no vmdedupfs mount at $m"
    ktap_check "$T1" same_tree "$m" /lower/secret
    # The host warmed the namespace before this guest booted (guest-run
    # --warm): the first hint of each file is a hit, none is "loading".
    nfiles=$(find /lower/secret -type f | wc -l)
    warm_hits() {
        h=$(stat_of answers_hit); l=$(stat_of answers_miss_loading)
        echo "# $nfiles files: $h hits, $l loading"
        [ "$h" -ge "$nfiles" ] && [ "$l" = 0 ]
    }
    ktap_run "$T2" warm_hits
    files=$(cd /lower/secret && find . -type f | sed "s|^\.|$m|")
    # shellcheck disable=SC2086 # file names are random hex, no spaces
    ktap_check "$T3" pool_served $files
    ktap_check "$T4" same_tree "$m" /lower/secret
    ktap_diag "counters: $(cd /sys/kernel/vmdedup/stats && grep -- . answers_* pages_pool verify_* 2>/dev/null | tr '\n' ' ')"
    if scan_bars > /tmp/scan.diag 2>&1; then
        cat /tmp/scan.diag
        ktap_check "$T5" bars_ok
    else
        ktap_fail "$T5" "$(tail -n 3 /tmp/scan.diag | tr '\n' ' ')"
    fi
    n=$(grep -c '^content:' "$needles"); f=$(grep -c '^found content:' /tmp/scan.out || true)
    ktap_diag "$f of $n content needles found"
    grep '^found content:' /tmp/scan.out | head -n 3 | sed 's/^/# /'
    if [ "$f" = "$n" ]; then
        ktap_pass "$T6"
    else
        grep '^missing content:' /tmp/scan.out | head -n 10 | sed 's/^/# /'
        ktap_fail "$T6"
    fi
    names=$(grep -c '^found name:' /tmp/scan.out || true)
    ktap_diag "names of the secret files found in this guest's own BARs: $names of $(grep -c '^name:' "$needles") (informative: its ring carries its hints' paths)"
    grep '^found name:' /tmp/scan.out | head -n 3 | sed 's/^/# /'
else
    m=/shared/small
    served() {
        grep -q " $m vmdedupfs " /proc/mounts || { echo "no vmdedupfs mount at $m"; return 1; }
        f=$(cd /lower/small && find . -type f -size +8k | sort | head -n 3 | sed "s|^\.|$m|")
        [ -n "$f" ] || { echo "no files to read in $m"; return 1; }
        # shellcheck disable=SC2086 # the small tree's names have no spaces
        pool_served $f && for x in $f; do cmp "$x" "/lower/small/${x#"$m"/}" || return 1; done
    }
    ktap_check "$T1" served
    if scan_bars > /tmp/scan.diag 2>&1; then
        cat /tmp/scan.diag
        ktap_check "$T2" bars_ok
    else
        ktap_fail "$T2" "$(tail -n 3 /tmp/scan.diag | tr '\n' ' ')"
    fi
    check_none "$T3" content
    check_none "$T4" name
fi
ktap_finish
