#!/bin/sh
# Selftest: this guest's VM is in a trust domain that may not use the
# namespace mounted at /shared (suite "denied"). Its hints are refused, so it
# gets nothing from the pool and reads its own lower files; over vsock the
# namespace is not listed for it and a warm-up request for it is refused.
# shellcheck source=lib/ktap.sh
. /tests/lib/ktap.sh
# shellcheck source=lib/fs.sh
. /tests/lib/fs.sh
ktap_header 5
pair=""
for m in /shared/*; do grep -q " $m vmdedupfs " /proc/mounts && pair="$m" && break; done
if [ -z "$pair" ] || [ "${DENIED:-}" != 1 ]; then
    for t in "reads right" "hints refused" "nothing from the pool" "namespace not listed" "warm refused"; do
        ktap_skip "$t" "needs the denied suite (tests/run --suite denied)"
    done
    ktap_finish; exit $?
fi
ns=${pair#/shared/}
ktap_check "reads right (tree identical to lower)" same_tree "$pair" "/lower/$ns"
sleep 1
ktap_check "second pass right too" same_tree "$pair" "/lower/$ns"
ktap_diag "counters: $(cd /sys/kernel/vmdedup/stats && grep -- . * | tr '\n' ' ')"
refused() { [ "$(stat_of answers_miss_other)" -gt 0 ] && [ "$(stat_of answers_hit)" = 0 ] && [ "$(stat_of pages_pool)" = 0 ]; }
ktap_check "hints refused, nothing from the pool" refused
if command -v vmdedup-guest > /dev/null && [ -e /dev/vsock ]; then
    listed() { ! vmdedup-guest namespaces | grep -qx "$ns"; }
    ktap_check "namespace not listed for this VM" listed
    warm() { ! vmdedup-guest warm "$pair" > /tmp/warm.out 2>&1 && cat /tmp/warm.out; }
    ktap_check "warm-up of the namespace refused" warm
else
    ktap_skip "namespace not listed for this VM" "no vsock channel"
    ktap_skip "warm-up of the namespace refused" "no vsock channel"
fi
ktap_finish
