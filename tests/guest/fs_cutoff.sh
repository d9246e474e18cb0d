#!/bin/sh
# Selftest: a guest that never acknowledges a revocation is cut off (the other
# half of fs_revoke). The fault_no_ack module parameter plays a stuck
# guest: revocations are applied (PTEs zapped, lower from then on) but not
# acknowledged. The host evicts a file this guest maps; when the
# acknowledgement deadline (ack_timeout_ms, 5 s by default) passes the agent
# cuts the VM off and says so with the cut-off flag of the ring header. The
# guest drops every pool mapping and acknowledges, the processes that
# map the file keep reading correct bytes, and every read is right and comes
# from lower from then on. Then the host reinstates the VM: its ring starts
# over with a new generation, the guest reconnects and is served again.
#
# Needs what fs_revoke needs (a served /shared/NAME mount, mmapwatch, a host
# evicting on request: FS_REVOKE_HOST=1) and vmdedup-guest to see the host's
# view. Run it last in its boot.
# shellcheck source=lib/ktap.sh
. /tests/lib/ktap.sh
# shellcheck source=lib/fs.sh
. /tests/lib/fs.sh
ktap_header 8

T1="the revocation is applied and its acknowledgement withheld (fault_no_ack)"
T2="the host cuts the VM off once the acknowledgement deadline passed"
T3="told so by the ring header's flag, the guest drops every pool mapping and acknowledges (cut_offs)"
T4="processes mapping the revoked file keep reading correct bytes (shared and private)"
T5="every file read after the cut-off is identical to lower"
T6="nothing comes from the pool after the cut-off"
T7="reinstated by the host (vmdedup vm reinstate), the guest sees its ring start over"
T8="after the reinstatement files are served from the pool again, every byte right"
fs_load 2>/dev/null
KNOB=/sys/module/vmdedup/parameters/fault_no_ack
[ -w "$KNOB" ] || ktap_skip_from 1 "the module has no fault_no_ack parameter"
[ "${FS_REVOKE_HOST:-0}" = 1 ] || ktap_skip_from 1 "no host evicting on request (run with FS_REVOKE_HOST=1 and --host-cmd tests/host/evict-on-marker)"
command -v vmdedup-guest > /dev/null 2>&1 || ktap_skip_from 1 "no vmdedup-guest in the guest"
served_mount || ktap_skip_from 1 "no /shared/NAME mount served by an agent (run with --ns NAME=DIR)"
NS=${M##*/}
WATCH=$(command -v mmapwatch || true)
[ -n "$WATCH" ] || ktap_skip_from 1 "no mmapwatch helper in the guest"
REL=$(cd "$M" && find . -type f -size +64k -size -1024k 2>/dev/null | grep -v '[^A-Za-z0-9._/+-]' | sort | sed -n 2p)
REL=${REL#./}
[ -n "$REL" ] || ktap_skip_from 1 "no second file of 64 KiB to 1 MiB under $M"
pool_served "$M/$REL" > /dev/null 2>&1 || ktap_skip_from 1 "the agent never served $REL from the pool"
# A few more files held, so the cut-off has more than one map to drop.
(cd "$M" && find usr/share -type f | sort | head -n 20 | while IFS= read -r f; do cat "$f"; done) > /dev/null 2>&1
sleep 1
(cd "$M" && find usr/share -type f | sort | head -n 20 | while IFS= read -r f; do cat "$f"; done) > /dev/null 2>&1
ktap_diag "file: $REL; held now: $(vmdedup-guest status 2>/dev/null | grep -o 'maps_held [0-9]*')"

rm -f /tmp/cutoff.stop
watch_both "$M/$REL" "$L/$REL" /tmp/cutoff.stop /tmp/cutoff 300
rv0=$(stat_of revocations); ack0=$(stat_of acks_sent); wh0=$(stat_of acks_withheld); ff0=$(stat_of faults_failed)
echo 1 > "$KNOB"
echo "# fs_revoke: evict cutoff-${VMDEDUP_GUEST:-vm}-$$ $NS $REL"
stat_above acks_withheld "$wh0" 300 || true
withheld() {
    { [ "$(stat_of revocations)" -gt "$rv0" ] && [ "$(stat_of acks_withheld)" -gt "$wh0" ] && [ "$(stat_of acks_sent)" = "$ack0" ]; } ||
        { echo "revocations $rv0 -> $(stat_of revocations), acks_withheld $wh0 -> $(stat_of acks_withheld), acks_sent $ack0 -> $(stat_of acks_sent)"; return 1; }
}
ktap_check "$T1" withheld
co1=$(stat_of cut_offs)
cut() {
    for _ in $(seq 1 150); do
        vmdedup-guest status > /tmp/cutoff.status 2>&1 && grep -q 'CUT OFF' /tmp/cutoff.status && return 0
        sleep 0.2
    done
    grep -A1 '^  vm ' /tmp/cutoff.status
    return 1
}
ktap_check "$T2" cut
stat_above cut_offs "$co1" 50 || true
told() { [ "$(stat_of cut_offs)" -gt "$co1" ] || { echo "cut_offs $co1 -> $(stat_of cut_offs)"; return 1; }; }
ktap_check "$T3" told
sleep 1
watch_end /tmp/cutoff.stop /tmp/cutoff; watched=$?
kept() { [ "$watched" = 0 ] && [ "$(stat_of faults_failed)" = "$ff0" ]; }
ktap_check "$T4" kept
p0=$(stat_of pages_pool); f0=$(stat_of faults_pool)
ktap_check "$T5" same_tree "$M" "$L"
nopool() { { [ "$(stat_of pages_pool)" = "$p0" ] && [ "$(stat_of faults_pool)" = "$f0" ]; } || { echo "pages_pool $p0 -> $(stat_of pages_pool), faults_pool $f0 -> $(stat_of faults_pool)"; return 1; }; }
ktap_check "$T6" nopool
echo 0 > "$KNOB"
g0=$(stat_of generation_changes)
echo "# fs_revoke: reinstate reinstate-${VMDEDUP_GUEST:-vm}-$$ ${VMDEDUP_GUEST:-vm1}"
restarted() {
    for _ in $(seq 1 150); do
        [ "$(stat_of generation_changes)" -gt "$g0" ] && vmdedup-guest status > /tmp/cutoff.status 2>&1 &&
            ! grep -q 'CUT OFF' /tmp/cutoff.status && return 0
        sleep 0.2
    done
    echo "generation_changes $g0 -> $(stat_of generation_changes)"; grep -A1 '^  vm ' /tmp/cutoff.status
    return 1
}
ktap_check "$T7" restarted
served_again() {
    pool_served "$M/$REL" || return 1
    same_tree "$M" "$L"
}
ktap_check "$T8" served_again
ktap_diag "counters: $(cd /sys/kernel/vmdedup/stats && grep -- . * | tr '\n' ' ')"
ktap_finish
