#!/bin/sh
# Selftest: the guest's lower files differ from the host's namespace (same
# paths). DIVERGENT_SAME lists files of the same size and mtime but other
# bytes (the identity check cannot tell: verify must), DIVERGENT_MTIME files
# of the same size with another mtime (the identity check refuses them). The
# guest must read its own bytes, always.
# shellcheck source=lib/ktap.sh
. /tests/lib/ktap.sh
# shellcheck source=lib/fs.sh
. /tests/lib/fs.sh
ktap_header 5
pair=""
for m in /shared/*; do grep -q " $m vmdedupfs " /proc/mounts && pair="$m" && break; done
if [ -z "$pair" ] || [ -z "${DIVERGENT_SAME:-}" ]; then
    for t in "own bytes" "own bytes again" "tree identical to lower" "verify caught the same-identity file" "identity mismatch answered"; do
        ktap_skip "$t" "needs the divergent suite (tests/run --suite divergent)"
    done
    ktap_finish; exit $?
fi
lower=/lower/${pair#/shared/}
own() {
    for f in $DIVERGENT_SAME $DIVERGENT_MTIME; do
        cmp -s "$pair/$f" "$lower/$f" || { echo "$f: not the guest's own bytes"; return 1; }
    done
}
ktap_check "divergent files read as the guest's own bytes" own
sleep 1   # the host has loaded its versions by now: a second open is answered
ktap_check "own bytes again, after the host answered" own
ktap_check "tree identical to lower" same_tree "$pair" "$lower"
ktap_check "verify caught the same-identity file" test "$(stat_of verify_mismatches)" -ge 1
ktap_check "identity mismatch answered for the other" test "$(stat_of answers_miss_identity)" -ge 1
ktap_diag "counters: $(cd /sys/kernel/vmdedup/stats && grep -- . * | tr '\n' ' ')"
ktap_finish
