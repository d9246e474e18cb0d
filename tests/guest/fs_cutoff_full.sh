#!/bin/sh
# Selftest: the cut-off notice arrives although the guest's event ring is
# full, and what a cut-off guest held stays charged to it until it
# acknowledges. The guest holds more file maps than its event ring has
# entries and maps one of them in two processes; then it plays a frozen guest
# (fault_no_ack=3: it consumes no event and ignores the cut-off flag) while
# the host evicts every file of the namespace, so more revocations are sent
# than the event ring holds. The acknowledgement deadline passes and the agent
# cuts the VM off; the VM's maps must stay charged to it (the host's status)
# while it has not acknowledged. Thawed only half-way (fault_no_ack=2: still
# no event consumed, the ring stays full) the guest must still see the
# cut-off, drop every pool mapping and acknowledge; only then does the host
# drop what it had charged. Every byte read meanwhile equals lower. Finally
# the host reinstates the VM and the guest is served again.
#
# Needs a served /shared/NAME mount, mmapwatch, vmdedup-guest and a host
# evicting on request (FS_REVOKE_HOST=1, tests/host/evict-on-marker).
# shellcheck source=lib/ktap.sh
. /tests/lib/ktap.sh
# shellcheck source=lib/fs.sh
. /tests/lib/fs.sh
ktap_header 8

T1="the guest holds more file maps than its event ring has entries"
T2="frozen (fault_no_ack=3) while every map is revoked: more revocations than ring entries, none consumed"
T3="the host cuts the VM off and keeps its maps charged while it has not acknowledged"
T4="with its event ring still full (fault_no_ack=2) the guest sees the cut-off flag, drops every pool mapping and acknowledges"
T5="once acknowledged, the host drops what the VM had charged"
T6="processes mapping a file throughout read correct bytes (shared and private) after pool-served faults"
T7="every file read after the cut-off is identical to lower and none comes from the pool"
T8="reinstated, the guest attaches its new ring and is served from the pool again, every byte right"
fs_load 2>/dev/null
KNOB=/sys/module/vmdedup/parameters/fault_no_ack
[ -w "$KNOB" ] || ktap_skip_from 1 "the module has no fault_no_ack parameter"
[ "${FS_REVOKE_HOST:-0}" = 1 ] || ktap_skip_from 1 "no host evicting on request (run with FS_REVOKE_HOST=1 and --host-cmd tests/host/evict-on-marker)"
command -v vmdedup-guest > /dev/null 2>&1 || ktap_skip_from 1 "no vmdedup-guest in the guest"
served_mount || ktap_skip_from 1 "no /shared/NAME mount served by an agent (run with --ns NAME=DIR)"
NS=${M##*/}
WATCH=$(command -v mmapwatch || true)
[ -n "$WATCH" ] || ktap_skip_from 1 "no mmapwatch helper in the guest"
REL=$(cd "$M" && find . -type f -size +64k -size -1024k 2>/dev/null | grep -v '[^A-Za-z0-9._/+-]' | sort | sed -n 3p)
REL=${REL#./}
[ -n "$REL" ] || ktap_skip_from 1 "no third file of 64 KiB to 1 MiB under $M"

# The host's view of this VM: "maps_held N", "revocations_pending N", "CUT OFF".
host_status() { vmdedup-guest status > /tmp/cutfull.status 2>&1; }
host_field() { sed -n "s/.*  $1 \([0-9]*\).*/\1/p" /tmp/cutfull.status | head -n 1; }
# The guest connects at its first hint; the kernel log says the ring sizes.
cat "$M/$REL" > /dev/null
EQ=$(dmesg | sed -n 's/.*ring connected: generation [0-9]*, .* \([0-9]*\) event entries.*/\1/p' | tail -n 1)
[ -n "$EQ" ] || ktap_skip_from 1 "no 'ring connected' line in the kernel log"

held=0
for _ in $(seq 1 12); do
    (cd "$M" && find . -type f -exec cat {} + > /dev/null 2>&1)
    host_status && held=$(host_field maps_held)
    [ "${held:-0}" -gt "$EQ" ] && break
    sleep 1
done
ktap_diag "event ring: $EQ entries; maps held: $held; watched file: $REL"
many() { [ "${held:-0}" -gt "$EQ" ] || { echo "maps_held $held, event ring $EQ"; return 1; }; }
ktap_check "$T1" many || ktap_skip_from 2 "not enough maps held to fill the event ring"

pool_served "$M/$REL" > /dev/null 2>&1
rm -f /tmp/cutfull.stop
f0=$(stat_of faults_pool)
watch_both "$M/$REL" "$L/$REL" /tmp/cutfull.stop /tmp/cutfull 300
rv0=$(stat_of revocations); ew0=$(stat_of events_withheld); co0=$(stat_of cut_offs)
echo 3 > "$KNOB"
sleep 0.5
for d in $(cd "$M" && ls); do
    echo "# fs_revoke: evict cutfull-$d-${VMDEDUP_GUEST:-vm}-$$ $NS $d"
done
# Until the agent says "cut off": the most revocations it had pending.
pend=0; cut=0
for _ in $(seq 1 200); do
    if host_status; then
        p=$(host_field revocations_pending)
        [ "${p:-0}" -gt "$pend" ] && pend=$p
        grep -q 'CUT OFF' /tmp/cutfull.status && { cut=1; break; }
    fi
    sleep 0.1
done
held_cut=$(host_field maps_held)
ktap_diag "revocations pending at most: $pend; at the cut-off: maps_held $held_cut"
frozen() {
    { [ "$pend" -gt "$EQ" ] && [ "$(stat_of revocations)" = "$rv0" ] && [ "$(stat_of events_withheld)" -gt "$ew0" ]; } ||
        { echo "pending $pend (ring $EQ), revocations $rv0 -> $(stat_of revocations), events_withheld $ew0 -> $(stat_of events_withheld)"; return 1; }
}
ktap_check "$T2" frozen
charged() {
    [ "$cut" = 1 ] || { echo "never cut off"; return 1; }
    # Still frozen: nothing acknowledged, so everything stays charged.
    for _ in 1 2 3 4 5; do
        host_status || return 1
        h=$(host_field maps_held)
        [ "${h:-0}" -gt 0 ] || { echo "maps_held $h while cut off and not acknowledged"; return 1; }
        sleep 0.2
    done
    [ "$(stat_of cut_offs)" = "$co0" ] || { echo "acknowledged while frozen"; return 1; }
}
ktap_check "$T3" charged
echo 2 > "$KNOB"
stat_above cut_offs "$co0" 100 || true
acked() {
    { [ "$(stat_of cut_offs)" -gt "$co0" ] && [ "$(stat_of revocations)" = "$rv0" ]; } ||
        { echo "cut_offs $co0 -> $(stat_of cut_offs), revocations $rv0 -> $(stat_of revocations)"; return 1; }
}
ktap_check "$T4" acked
dropped() {
    for _ in $(seq 1 100); do
        host_status && [ "$(host_field maps_held)" = 0 ] && return 0
        sleep 0.1
    done
    echo "maps_held $(host_field maps_held) after the acknowledgement"
    return 1
}
ktap_check "$T5" dropped
sleep 1
watch_end /tmp/cutfull.stop /tmp/cutfull; watched=$?
kept() {
    [ "$watched" = 0 ] || { echo "mmapwatch failed"; return 1; }
    [ "$(stat_of faults_pool)" -gt "$f0" ] || { echo "no pool-served fault (faults_pool $f0)"; return 1; }
}
ktap_check "$T6" kept
p0=$(stat_of pages_pool); fp0=$(stat_of faults_pool)
lower_only() {
    same_tree "$M" "$L" || return 1
    { [ "$(stat_of pages_pool)" = "$p0" ] && [ "$(stat_of faults_pool)" = "$fp0" ]; } ||
        { echo "pages_pool $p0 -> $(stat_of pages_pool), faults_pool $fp0 -> $(stat_of faults_pool)"; return 1; }
}
ktap_check "$T7" lower_only
echo 0 > "$KNOB"
g0=$(stat_of generation_changes)
echo "# fs_revoke: reinstate cutfull-reinstate-${VMDEDUP_GUEST:-vm}-$$ ${VMDEDUP_GUEST:-vm1}"
again() {
    for _ in $(seq 1 150); do
        [ "$(stat_of generation_changes)" -gt "$g0" ] && host_status && ! grep -q 'CUT OFF' /tmp/cutfull.status && break
        sleep 0.2
    done
    [ "$(stat_of generation_changes)" -gt "$g0" ] || { echo "no new ring (generation_changes $g0)"; return 1; }
    pool_served "$M/$REL" || return 1
    same_tree "$M" "$L"
}
ktap_check "$T8" again
ktap_diag "counters: $(cd /sys/kernel/vmdedup/stats && grep -- . * | tr '\n' ' ')"
ktap_finish
