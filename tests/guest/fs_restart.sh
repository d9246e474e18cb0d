#!/bin/sh
# Selftest: a guest that holds a pool mapping is paused (QEMU `stop`) while
# the host agent is killed with SIGKILL and restarted, then resumed (suite
# "restart": tests/host/restart-paused drives it from the host). The new agent
# adopts the pool and this ring in place, so nothing is dropped: the mapping
# keeps reading the lower file's bytes (a process compares every page all
# along), read(2) and new faults keep being served from pool frames, the ring
# generation does not change, no revocation or fallback happens, and the
# guest re-announces what it holds when asked.
#
# Needs: a /shared/NAME mount served by the agent (nsid=), the mmapwatch and
# mmapcat helpers, and RESTART_HOST=1 (the run has the host side). Without
# them the test points are skipped with the reason.
# shellcheck source=lib/ktap.sh
. /tests/lib/ktap.sh
# shellcheck source=lib/fs.sh
. /tests/lib/fs.sh
ktap_header 9

T1="a pool-served file is mapped from the pool before the pause"
T2="the re-announce notice came after the resume (the agent restarted)"
T3="every held map was re-announced"
T4="the ring generation did not change (the ring was adopted in place)"
T5="no revocation and no fallback across the restart"
T6="the held mapping read the lower file's bytes throughout (every page, every pass)"
T7="read(2) kept being served from pool frames after the resume, identical to lower"
T8="a new mapping after the resume faults in pool frames, identical to lower"
T9="no verify mismatch and no failed fault"

# Skips: the host side waits for "mapped" or this line, so it does not
# wait out its timeout for a guest that will never be mapped.
restart_skip() { echo "# fs_restart: skipped"; ktap_skip_from "$@"; }
fs_load 2>/dev/null
[ "${RESTART_HOST:-}" = 1 ] || restart_skip 1 "needs the host side (tests/run suite restart: tests/host/restart-paused)"
served_mount || restart_skip 1 "no /shared/NAME mount served by an agent (run with --ns NAME=DIR)"
MNT=$M LOWER=$L
WATCH=$(command -v mmapwatch || true)
[ -x /tests/tools/mmapwatch ] && WATCH=/tests/tools/mmapwatch
CAT=$(command -v mmapcat || true)
{ [ -n "$WATCH" ] && [ -n "$CAT" ]; } || restart_skip 1 "no mmapwatch or mmapcat helper in the guest"

REL=$(cd "$MNT" && find . -type f -size +64k -size -1024k 2>/dev/null | grep -v '[^A-Za-z0-9._/+-]' | head -n 1)
REL=${REL#./}
[ -n "$REL" ] || restart_skip 1 "no file of 64 KiB to 1 MiB under $MNT"
F=$MNT/$REL
L=$LOWER/$REL
# More files read with read(2) across the restart.
OTHERS=$(cd "$MNT" && find . -type f -size +8k 2>/dev/null | grep -v '[^A-Za-z0-9._/+-]' | head -n 8)
ktap_diag "file: $F ($(stat -c %s "$F") bytes)"
pool_served "$F" >/dev/null 2>&1 || restart_skip 1 "the agent never served $REL from the pool"
for o in $OTHERS; do pool_served "$MNT/$o" >/dev/null 2>&1 || true; done

# The other guest churns frames under a small budget, so the map may be
# revoked between the read above and the mapping (which then maps the lower
# file): stop that watcher and try again, a few times.
mapped() { grep -q 'mmapwatch: mapped' /tmp/fs_restart.watch && [ "$(stat_of mmap_pool)" -gt "$mm0" ] && [ "$(stat_of faults_pool)" -gt "$fp0" ]; }
for attempt in 1 2 3 4 5 6 7 8; do
    pool_served "$F" >/dev/null 2>&1 || true
    mm0=$(stat_of mmap_pool); fp0=$(stat_of faults_pool)
    rm -f /tmp/fs_restart.stop
    "$WATCH" "$F" "$L" /tmp/fs_restart.stop 900 > /tmp/fs_restart.watch 2>&1 &
    W=$!
    for _ in $(seq 1 300); do
        grep -q 'mmapwatch: mapped' /tmp/fs_restart.watch 2>/dev/null && break
        kill -0 "$W" 2>/dev/null || break
        sleep 0.1
    done
    mapped && break
    ktap_diag "attempt $attempt: the mapping did not come from the pool; again"
    touch /tmp/fs_restart.stop
    wait "$W" 2>/dev/null
done
if ! mapped; then
    cat /tmp/fs_restart.watch
    touch /tmp/fs_restart.stop
    restart_skip 1 "the file was never mapped from the pool"
fi
ktap_pass "$T1"

gc0=$(stat_of generation_changes); rv0=$(stat_of revocations); fb0=$(stat_of fallbacks)
ra0=$(stat_of reannounce_requests); ho0=$(stat_of holds_reannounced)
# From here on the host may pause this guest at any moment.
echo "# fs_restart: mapped"
errors=0; passes=0
deadline=$(( $(date +%s) + ${RESTART_DEADLINE:-600} ))
while [ "$(date +%s)" -lt "$deadline" ]; do
    cmp -s "$F" "$L" || errors=$((errors + 1))
    passes=$((passes + 1))
    [ "$(stat_of reannounce_requests)" -gt "$ra0" ] && break
    sleep 0.5
done
ktap_diag "passes before the notice: $passes, read errors $errors"
ktap_check "$T2" test "$(stat_of reannounce_requests)" -gt "$ra0"
# The holds go out at the tick after the notice.
for _ in $(seq 1 100); do [ "$(stat_of holds_reannounced)" -gt "$ho0" ] && break; sleep 0.1; done
ktap_check "$T3" test "$(stat_of holds_reannounced)" -gt "$ho0"
ktap_check "$T4" test "$(stat_of generation_changes)" = "$gc0"

# After the resume: read(2) from pool frames, a new mapping faults from them.
pp0=$(stat_of pages_pool); fp1=$(stat_of faults_pool)
for _ in 1 2 3; do
    cmp -s "$F" "$L" || errors=$((errors + 1))
    for o in $OTHERS; do cmp -s "$MNT/$o" "$LOWER/$o" || errors=$((errors + 1)); done
done
ktap_check "$T7" sh -c "[ $errors = 0 ] && [ $(stat_of pages_pool) -gt $pp0 ]"
fresh() { "$CAT" "$F" > /tmp/fs_restart.cat && cmp -s /tmp/fs_restart.cat "$L" && [ "$(stat_of faults_pool)" -gt "$fp1" ]; }
ktap_check "$T8" fresh
touch /tmp/fs_restart.stop
wait "$W"; wrc=$?
ktap_diag "$(tail -n 2 /tmp/fs_restart.watch | tr '\n' ' ')"
ktap_check "$T5" sh -c "[ $(stat_of revocations) = $rv0 ] && [ $(stat_of fallbacks) = $fb0 ]"
ktap_check "$T6" sh -c "[ $wrc = 0 ] && grep -q 'all equal' /tmp/fs_restart.watch"
ktap_check "$T9" sh -c "[ $(stat_of verify_mismatches) = 0 ] && [ $(stat_of faults_failed) = 0 ]"
ktap_diag "counters: $(cd /sys/kernel/vmdedup/stats && grep -- . * | tr '\n' ' ')"
ktap_finish
