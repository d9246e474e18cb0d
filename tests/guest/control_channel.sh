#!/bin/sh
# Selftest: the guest control channel. vmdedup-guest reaches the host agent over
# vsock, sees this VM's own counters and nobody else's, and malformed frames on
# the same channel are refused while the agent keeps answering.
# shellcheck source=lib/ktap.sh
. /tests/lib/ktap.sh
ktap_header 4
if ! command -v vmdedup-guest > /dev/null 2>&1; then
    for t in "status over vsock" "only this VM is shown" "malformed frames refused, agent survives" "module counters shown"; do
        ktap_skip "$t" "vmdedup-guest is not in this guest"
    done
    ktap_finish; exit $?
fi
if [ ! -e /dev/vsock ] || ! vmdedup-guest status > /tmp/status.out 2>&1; then
    reason="no vsock channel to an agent (run with the agent and vsock)"
    [ -e /dev/vsock ] && reason="vmdedup-guest status failed: $(tail -n 1 /tmp/status.out)"
    for t in "status over vsock" "only this VM is shown" "malformed frames refused, agent survives" "module counters shown"; do
        ktap_skip "$t" "$reason"
    done
    ktap_finish; exit $?
fi
ktap_pass "status over vsock"
own() {
    vms=$(grep -c '^  vm ' /tmp/status.out)
    { grep -q "^  vm ${VMDEDUP_GUEST:-?} " /tmp/status.out && [ "$vms" = 1 ]; } || { cat /tmp/status.out >&2; return 1; }
}
ktap_check "only this VM is shown" own
ktap_check "malformed frames refused, agent survives" vmdedup-guest check-malformed
if lsmod | grep -q '^vmdedup '; then
    counters() { grep -q 'ring.state *mapped' /tmp/status.out || { cat /tmp/status.out >&2; return 1; }; }
    ktap_check "module counters shown" counters
else
    ktap_skip "module counters shown" "the module is not loaded"
fi
ktap_finish
