#!/bin/sh
# Selftest for the pressure suite: the agent's frame budget
# (--budget) is far smaller than the tree. While one process holds a shared
# mapping of a pool-served file and another a private one with pages written,
# the guest reads the whole tree twice. The files that do not fit are served
# from lower (the host answers "pool full"); to make room the agent revokes
# maps this guest holds, the guest acknowledges, and the mapped file's pages
# fault from lower from then on. Every byte read, through read(2) and both
# mappings, equals the lower file; nothing fails; the VM is not cut off.
# (While the guest only streams through the tree the agent evicts maps no VM
# holds yet, the files it loaded ahead, and revokes nothing: this test first
# makes every map in the pool one the guest holds.)
#
# Needs a /shared/NAME mount served by an agent started with a small budget
# (PRESSURE=1 says so: tests/run --suite pressure gives the agent a 2 MB
# budget and the small tree, 18 MB) and the mmapwatch helper. Skipped
# otherwise.
# shellcheck source=lib/ktap.sh
. /tests/lib/ktap.sh
# shellcheck source=lib/fs.sh
. /tests/lib/fs.sh
ktap_header 8

T1="a file is mapped from the pool (a shared and a private mapping)"
T2="a large file is served from the pool once held maps made room"
T3="the whole tree read twice is identical to lower; what does not fit comes from lower"
T4="the agent revoked maps this guest held, and the guest acknowledged them"
T5="the mapped file's pages fault from lower after its revocation"
T6="both mappings read correct bytes throughout (no SIGBUS, written private pages kept)"
T7="no verify mismatch, no failed fault"
T8="the host got every acknowledgement (revocations_pending 0, not cut off)"
[ "${PRESSURE:-0}" = 1 ] || ktap_skip_from 1 "no agent with a small budget (tests/run --suite pressure)"
fs_load 2>/dev/null
served_mount || ktap_skip_from 1 "no /shared/NAME mount served by an agent (run with --ns NAME=DIR)"
WATCH=$(command -v mmapwatch || true)
[ -n "$WATCH" ] || ktap_skip_from 1 "no mmapwatch helper in the guest (tests/guest/tools/mmapwatch.c, built static)"
REL=$(cd "$M" && find . -type f -size +64k -size -1024k 2>/dev/null | grep -v '[^A-Za-z0-9._/+-]' | sort | head -n 1)
REL=${REL#./}
[ -n "$REL" ] || ktap_skip_from 1 "no file of 64 KiB to 1 MiB under $M"
F=$M/$REL
pool_served "$F" > /dev/null 2>&1 || ktap_skip_from 1 "the agent never served $REL from the pool"
ktap_diag "mapped file: $F ($(stat -c %s "$F") bytes)"

mm0=$(stat_of mmap_pool); mp0=$(stat_of mmap_pool_private); fl0=$(stat_of faults_lower); ff0=$(stat_of faults_failed)
rv0=$(stat_of revocations); ack0=$(stat_of acks_sent); ml0=$(stat_of answers_miss_loading); pl0=$(stat_of pages_lower)
vm0=$(stat_of verify_mismatches)
rm -f /tmp/pressure.stop
watch_both "$F" "$L/$REL" /tmp/pressure.stop /tmp/pressure 900
pooled() {
    { [ "$(stat_of mmap_pool)" -ge $((mm0 + 2)) ] && [ "$(stat_of mmap_pool_private)" -gt "$mp0" ] &&
        grep -q 'mmapwatch: mapped' /tmp/pressure.shared && grep -q 'mmapwatch: mapped' /tmp/pressure.private; } ||
        { echo "mmap_pool $mm0 -> $(stat_of mmap_pool), mmap_pool_private $mp0 -> $(stat_of mmap_pool_private)"; cat /tmp/pressure.shared /tmp/pressure.private; return 1; }
}
ktap_check "$T1" pooled

# Fill the budget with maps this guest holds: the small documentation files
# and the edge cases (about 350 of the 512 frames, next to the mapped file)
# are read until they hit. Then the largest file that fits the budget at all
# (libc, about 450 frames, few of them shared with what is held): there is no room and
# nothing unheld to evict, so the agent must revoke held maps, least recently
# used first (the mapped file was answered before any of them), and load it
# once they are acknowledged. Then the whole tree, twice.
fill() {
    h0=$(stat_of answers_hit)
    for _ in 1 2 3 4 5; do
        (cd "$M" && find usr/share edge -type f -exec cat {} + > /dev/null 2>&1)
        [ $(( $(stat_of answers_hit) - h0 )) -ge 150 ] && return 0
        sleep 1
    done
}
fill
ktap_diag "held after filling: $(( $(stat_of answers_hit) - 1 )) answers hit"
BIG=$(cd "$M" && find . -type f -size +1024k -size -3072k | sort | head -n 1)
BIG=${BIG#./}
ktap_diag "large file: $BIG ($(stat -c %s "$M/$BIG" 2>/dev/null) bytes)"
big() { [ -n "$BIG" ] && pool_served "$M/$BIG"; }
ktap_check "$T2" big

twice() {
    same_tree "$M" "$L" || return 1
    sleep 1
    same_tree "$M" "$L"
}

lowered() {
    { [ "$(stat_of answers_miss_loading)" -gt "$ml0" ] && [ "$(stat_of pages_lower)" -gt "$pl0" ]; } ||
        { echo "answers_miss_loading $ml0 -> $(stat_of answers_miss_loading), pages_lower $pl0 -> $(stat_of pages_lower)"; return 1; }
}
ktap_check "$T3" lowered
# Acknowledgements go out on the next submission or the 50 ms timer.
stat_above acks_sent "$ack0" 50 || true
revoked() {
    { [ "$(stat_of revocations)" -gt "$rv0" ] && [ "$(stat_of acks_sent)" -gt "$ack0" ]; } ||
        { echo "revocations $rv0 -> $(stat_of revocations), acks_sent $ack0 -> $(stat_of acks_sent)"; return 1; }
}
ktap_check "$T4" revoked
# Let the watchers go over their mappings a few more times.
sleep 2
faulted() { [ "$(stat_of faults_lower)" -gt "$fl0" ] || { echo "faults_lower $fl0 -> $(stat_of faults_lower): $REL was not revoked while mapped"; return 1; }; }
ktap_check "$T5" faulted
watch_end /tmp/pressure.stop /tmp/pressure; watched=$?
kept() { [ "$watched" = 0 ]; }
ktap_check "$T6" kept
clean() { [ "$(stat_of verify_mismatches)" = "$vm0" ] && [ "$(stat_of faults_failed)" = "$ff0" ]; }
ktap_check "$T7" clean
if command -v vmdedup-guest > /dev/null 2>&1 && vmdedup-guest status > /tmp/pressure.status 2>&1; then
    ktap_check "$T8" host_settled
else
    ktap_skip "$T8" "no agent reachable through vmdedup-guest over vsock: $(tail -n 1 /tmp/pressure.status 2>/dev/null)"
fi
ktap_diag "counters: $(cd /sys/kernel/vmdedup/stats && grep -- . * | tr '\n' ' ')"
ktap_finish
