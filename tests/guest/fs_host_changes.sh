#!/bin/sh
# Selftest: the host agent changes under a guest that keeps reading: it starts
# after the guest booted (suite "late": --agent-delay), or it is killed with
# SIGKILL and restarted in the middle of the reads (suite "restart":
# --agent-restart). Reads never fail or hang, every byte stays right
# (verify=full), the guest sees the new ring generation, and sharing (re)starts
# afterwards: pool hits rise again after the change.
# shellcheck source=lib/ktap.sh
. /tests/lib/ktap.sh
# shellcheck source=lib/fs.sh
. /tests/lib/fs.sh
ktap_header 6
pair=""
for m in /shared/*; do grep -q " $m vmdedupfs " /proc/mounts && pair="$m" && break; done
if [ -z "$pair" ] || [ "${HOST_CHANGE:-}" = "" ]; then
    for t in "reads never fail" "the host change was seen" "sharing after the change" "tree identical to lower" "no verify mismatch" "no failed fault"; do
        ktap_skip "$t" "needs a vmdedupfs mount and a host change (tests/run suites late and restart)"
    done
    ktap_finish; exit $?
fi
ktap_diag "host change: $HOST_CHANGE; tree $pair"
gen0=$(stat_of generation_changes)
errors=0; seen=""; hits_at=""; passes=0
deadline=$(( $(date +%s) + ${CHANGE_DEADLINE:-240} ))
while [ "$(date +%s)" -lt "$deadline" ]; do
    (cd "$pair" && find . -type f -exec cat {} + > /dev/null) || errors=$((errors + 1))
    passes=$((passes + 1))
    if [ -z "$seen" ] && [ "$(stat_of generation_changes)" -gt "$gen0" ]; then
        seen=$passes; hits_at=$(stat_of answers_hit)
    fi
    # Done once hits rose after the change (and one more pass was read).
    if [ -n "$seen" ] && [ "$(stat_of answers_hit)" -gt "$hits_at" ] && [ "$passes" -gt $((seen + 1)) ]; then break; fi
    sleep 1
done
ktap_diag "passes $passes, change seen at pass ${seen:-never}, hits at change ${hits_at:-?}, hits now $(stat_of answers_hit)"
ktap_check "reads never fail ($passes passes over the tree)" test "$errors" = 0
ktap_check "the host change was seen (ring generation)" test -n "$seen"
ktap_check "sharing after the change (pool hits rose)" sh -c "[ -n '$hits_at' ] && [ $(stat_of answers_hit) -gt ${hits_at:-0} ]"
ktap_check "tree identical to lower" same_tree "$pair" "/lower/${pair#/shared/}"
ktap_check "no verify mismatch" test "$(stat_of verify_mismatches)" = 0
ktap_check "no failed fault" test "$(stat_of faults_failed)" = 0
ktap_diag "counters: $(cd /sys/kernel/vmdedup/stats && grep -- . * | tr '\n' ' ')"
ktap_finish
