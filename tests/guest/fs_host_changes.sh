#!/bin/sh
# Selftest: the host agent changes under a guest that keeps reading: it starts
# after the guest booted (suite "late": --agent-delay), or it is killed with
# SIGKILL and restarted in the middle of the reads (suite "restart", driven by
# tests/host/restart-paused). Reads never fail or hang, every byte stays right
# (verify=full), the guest sees the change (the new ring generation when the
# agent starts late; the re-announce notice of a restarted agent, which adopts
# the ring in place), and sharing goes on afterwards: pool hits rise after a
# late start, pages keep being read from pool frames after a restart.
# shellcheck source=lib/ktap.sh
. /tests/lib/ktap.sh
# shellcheck source=lib/fs.sh
. /tests/lib/fs.sh
ktap_header 7
pair=""
for m in /shared/*; do grep -q " $m vmdedupfs " /proc/mounts && pair="$m" && break; done
if [ -z "$pair" ] || [ "${HOST_CHANGE:-}" = "" ]; then
    for t in "reads never fail" "the host change was seen" "sharing after the change" "tree identical to lower" "no verify mismatch" "no failed fault" "no map dropped across a restart"; do
        ktap_skip "$t" "needs a vmdedupfs mount and a host change (tests/run suites late and restart)"
    done
    ktap_finish; exit $?
fi
ktap_diag "host change: $HOST_CHANGE; tree $pair"
# One read first: the module attaches its ring at its first hint, so the
# generation a change is counted against is the one before the host's.
first=$(find "$pair" -type f | head -n 1)
[ -n "$first" ] && cat "$first" > /dev/null
gen0=$(stat_of generation_changes); ra0=$(stat_of reannounce_requests); fb0=$(stat_of fallbacks)
rv0=$(( $(stat_of revocations) + $(stat_of events_unknown) ))
# The late suite starts the agent only after this line (guest-run
# --agent-after): the counters above predate the host's arrival.
ktap_diag "fs_host_changes: baseline taken"
metric=answers_hit
[ "$HOST_CHANGE" = restart ] && metric=pages_pool
changed() { [ "$(stat_of generation_changes)" -gt "$gen0" ] || [ "$(stat_of reannounce_requests)" -gt "$ra0" ]; }
errors=0; seen=""; hits_at=""; answered_at=""; passes=0
deadline=$(( $(date +%s) + ${CHANGE_DEADLINE:-240} ))
while [ "$(date +%s)" -lt "$deadline" ]; do
    (cd "$pair" && find . -type f -exec cat {} + > /dev/null) || errors=$((errors + 1))
    passes=$((passes + 1))
    if [ -z "$seen" ] && changed; then
        seen=$passes; hits_at=$(stat_of $metric); answered_at=$(stat_of answers_hit)
    fi
    # Done once pool use rose after the change (and one more pass was read).
    if [ -n "$seen" ] && [ "$(stat_of $metric)" -gt "$hits_at" ] && [ "$passes" -gt $((seen + 1)) ]; then break; fi
    sleep 1
done
ktap_diag "passes $passes, change seen at pass ${seen:-never}, $metric at change ${hits_at:-?}, now $(stat_of $metric)"
ktap_check "reads never fail ($passes passes over the tree)" test "$errors" = 0
ktap_check "the host change was seen (ring generation or re-announce notice)" test -n "$seen"
ktap_check "sharing after the change ($metric rose)" sh -c "[ -n '$hits_at' ] && [ $(stat_of $metric) -gt ${hits_at:-0} ]"
ktap_check "tree identical to lower" same_tree "$pair" "/lower/${pair#/shared/}"
ktap_check "no verify mismatch" test "$(stat_of verify_mismatches)" = 0
ktap_check "no failed fault" test "$(stat_of faults_failed)" = 0
if [ "$HOST_CHANGE" = restart ]; then
    # The restarted agent adopted the ring (no generation change), and a
    # guest that held maps (it had hits before the change) re-announced
    # them. The 2 MB budget makes this guest's reads churn frames, so maps
    # are revoked before and after the restart: every fallback must be one
    # of those revocations (counted as such, or as an event for a map the
    # guest had already let go of), none a map the restart dropped.
    # vm2 (fs_restart), which does not churn, checks that no revocation at
    # all happened across the restart.
    fb=$(( $(stat_of fallbacks) - fb0 )); rv=$(( $(stat_of revocations) + $(stat_of events_unknown) - rv0 ))
    ktap_check "no map dropped across a restart (ring generation changes $gen0 -> $(stat_of generation_changes), fallbacks +$fb, revocations +$rv, hits before ${answered_at:-?}, holds re-announced $(stat_of holds_reannounced))" \
        sh -c "[ $(stat_of generation_changes) = $gen0 ] && [ $fb -le $rv ] && { [ ${answered_at:-0} = 0 ] || [ $(stat_of holds_reannounced) -gt 0 ]; }"
else
    ktap_skip "no map dropped across a restart" "the agent started late: there was nothing to keep"
fi
ktap_diag "counters: $(cd /sys/kernel/vmdedup/stats && grep -- . * | tr '\n' ' ')"
ktap_finish
