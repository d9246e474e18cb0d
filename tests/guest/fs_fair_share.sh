#!/bin/sh
# Selftest for the fairshare suite: two guests share a pool whose frame budget
# is 2 MB (512 frames) and no VM has a quota. vm1 fills the pool with maps it
# holds (the documentation files and edge cases, then libc, about 470
# frames) and stays idle, holding them. vm2 then reads libm (223 frames): it
# is within vm2's fair share (half the budget with two VMs wanting room), but
# only if vm1 gives frames back. Before fair shares a load could revoke only
# maps its own VM held, and libm never came from the pool while vm1 held the
# rest. Now the agent asks vm1 for its least recently used maps, with no
# deadline; vm1 acknowledges; libm is served to vm2 from the pool. Every byte
# equals lower, and vm1 is not cut off.
#
# Order between the guests: vm2 first holds a small file (the sentinel).
# vm1, once it filled the pool, prints "# fs_revoke: evict fairshare NS
# SENTINEL"; tests/host/evict-on-marker evicts the sentinel, and vm2 starts
# when it sees that revocation. vm1 stays up (FAIRSHARE_HOLD seconds) while
# vm2 works: a VM that exits gives everything back.
#
# Needs FAIRSHARE=1 (tests/run --suite fairshare: the 2 MB budget, the small
# tree, the host side) and vmdedup-guest. Skipped otherwise.
# shellcheck source=lib/ktap.sh
. /tests/lib/ktap.sh
# shellcheck source=lib/fs.sh
. /tests/lib/fs.sh

SENTINEL=lib/x86_64-linux-gnu/libz.so.1
WANT=lib/x86_64-linux-gnu/libm.so.6
BIG=lib/x86_64-linux-gnu/libc.so.6
# The budget less libm's pages: vm1 must hold more than this for the test to
# mean anything (otherwise libm would fit in what vm1 left free).
BUDGET_PAGES=512
WANT_PAGES=223
scale=${VMDEDUP_TIME_SCALE:-1}

if [ "${VMDEDUP_GUEST:-vm1}" = vm1 ]; then
    ktap_header 4
    T1="vm1 fills the pool with maps it holds (more than the budget less libm's $WANT_PAGES pages)"
    T2="vm1 is asked to give maps back for vm2's load, and acknowledges every one"
    T3="vm1 is not cut off and owes the host nothing"
    T4="every byte vm1 read equals lower (no verify mismatch, no failed fault)"
else
    ktap_header 5
    T1="vm2 holds the sentinel, served from the pool"
    T2="vm2 starts once vm1 filled the pool (the host evicted the sentinel)"
    T3="libm, within vm2's fair share, is served from the pool while vm1 held the rest"
    T4="libm read from the pool equals lower"
    T5="no verify mismatch, no failed fault"
fi
[ "${FAIRSHARE:-0}" = 1 ] || ktap_skip_from 1 "no fair-share setup (tests/run --suite fairshare)"
fs_load 2>/dev/null
served_mount || ktap_skip_from 1 "no /shared/NAME mount served by an agent"
command -v vmdedup-guest > /dev/null 2>&1 || ktap_skip_from 1 "no vmdedup-guest in the guest"
NS=${M#/shared/}
for f in "$SENTINEL" "$WANT" "$BIG"; do
    [ -f "$M/$f" ] || ktap_skip_from 1 "no $f under $M (the small test tree)"
done
vm0=$(stat_of verify_mismatches); ff0=$(stat_of faults_failed)

clean() {
    [ "$(stat_of verify_mismatches)" = "$vm0" ] && [ "$(stat_of faults_failed)" = "$ff0" ] && return 0
    echo "verify_mismatches $vm0 -> $(stat_of verify_mismatches), faults_failed $ff0 -> $(stat_of faults_failed)"
    return 1
}

if [ "$VMDEDUP_GUEST" = vm1 ]; then
    # Fill: read the small files until they hit (held), then libc, which
    # makes room from vm1's own maps only (vm1 is above its share).
    h0=$(stat_of answers_hit)
    for _ in 1 2 3 4 5 6 7 8; do
        (cd "$M" && find usr/share edge -type f -exec cat {} + > /dev/null 2>&1)
        [ $(( $(stat_of answers_hit) - h0 )) -ge 150 ] && break
        sleep 1
    done
    pool_served "$M/$BIG" > /dev/null 2>&1
    held=$(host_count pages_mapped)
    ktap_diag "vm1 holds ${held:-?} pages after filling"
    full() {
        [ -n "$held" ] && [ "$held" -gt $((BUDGET_PAGES - WANT_PAGES)) ] && return 0
        echo "vm1 holds ${held:-?} pages: libm fits without taking any"
        return 1
    }
    ktap_check "$T1" full
    rv0=$(stat_of revocations); ack0=$(stat_of acks_sent)
    echo "# fs_revoke: evict fairshare $NS $SENTINEL"
    # Stay up, idle, while vm2 works.
    sleep $(( ${FAIRSHARE_HOLD:-90} * scale ))
    gave() {
        rv=$(( $(stat_of revocations) - rv0 )); ak=$(( $(stat_of acks_sent) - ack0 ))
        [ "$rv" -gt 0 ] && [ "$ak" -ge "$rv" ] && return 0
        echo "revocations +$rv, acknowledgements +$ak"
        return 1
    }
    ktap_check "$T2" gave
    settled() {
        [ "$(stat_of cut_offs)" = 0 ] || { echo "cut_offs $(stat_of cut_offs)"; return 1; }
        host_settled
    }
    ktap_check "$T3" settled
    ktap_check "$T4" clean
else
    ktap_check "$T1" pool_served "$M/$SENTINEL"
    rv0=$(stat_of revocations)
    # vm1 takes a while to fill the pool under TCG.
    ktap_check "$T2" stat_above revocations "$rv0" $((3000 * scale))
    p0=$(stat_of pages_pool)
    served() {
        for _ in $(seq 1 $((200 * scale))); do
            _p=$(stat_of pages_pool)
            cat "$M/$WANT" > /dev/null
            [ $(( $(stat_of pages_pool) - _p )) -ge "$WANT_PAGES" ] && return 0
            sleep 0.3
        done
        echo "libm never came whole from the pool: pages_pool $p0 -> $(stat_of pages_pool) (answers: $(cd /sys/kernel/vmdedup/stats && grep . answers_* | tr '\n' ' '))"
        return 1
    }
    ktap_check "$T3" served
    ktap_check "$T4" cmp "$M/$WANT" "$L/$WANT"
    ktap_check "$T5" clean
fi
ktap_diag "counters: $(cd /sys/kernel/vmdedup/stats && grep -- . * | tr '\n' ' ')"
ktap_finish
