#!/bin/sh
# Selftest: a file map is revoked while one process holds a shared mmap of it
# and another a private one with some pages written. Both
# keep reading correct bytes (faults after the revocation are served with the
# lower file's pages, no SIGBUS; the written private pages keep the process's
# own bytes), the guest
# acknowledges (OP_ACK_REVOKE), the host sees the acknowledgement (nothing
# pending, not cut off), and the file is served from the pool again later.
#
# Needs: a /shared/NAME mount served by the agent (nsid=), the mmapwatch
# helper (tests/guest/tools/mmapwatch.c, built static, at /tests/tools/mmapwatch
# or in PATH), and a host that evicts on request: FS_REVOKE_HOST=1 says the
# run has `--host-cmd tests/host/evict-on-marker`, which evicts the
# file this test names in a "# fs_revoke: evict TOKEN NS PATH" line. Without
# them the test points are skipped with the reason.
# shellcheck source=lib/ktap.sh
. /tests/lib/ktap.sh
# shellcheck source=lib/fs.sh
. /tests/lib/fs.sh
ktap_header 10

T1="a pool-served file is mapped from the pool (a shared and a private mapping)"
T2="the mapping reads the lower file's bytes"
T3="the revocation is applied (revocations counter rises)"
T4="the revocation is acknowledged (acks_sent rises)"
T5="the process keeps reading correct bytes after the revocation (no SIGBUS)"
T6="faults after the revocation are served from lower pages"
T7="read(2) after the revocation is identical to lower"
T8="the host got the acknowledgement (revocations_pending 0, not cut off)"
T9="the file is served from the pool again after the revocation"
T10="a private mapping keeps its written pages and reads lower's bytes elsewhere across the revocation"

fs_load 2>/dev/null
served_mount || ktap_skip_from 1 "no /shared/NAME mount served by an agent (run with --ns NAME=DIR)"
MNT=$M LOWER=$L
NS=${MNT##*/}
WATCH=$(command -v mmapwatch || true)
[ -x /tests/tools/mmapwatch ] && WATCH=/tests/tools/mmapwatch
[ -n "$WATCH" ] || ktap_skip_from 1 "no mmapwatch helper in the guest (build tests/guest/tools/mmapwatch.c static, --add it as /tests/tools/mmapwatch)"

# A file of 64 KiB to 1 MiB that the host serves: re-open it until it hits
# (the first hint is answered "loading").
REL=$(cd "$MNT" && find . -type f -size +64k -size -1024k 2>/dev/null | grep -v '[^A-Za-z0-9._/+-]' | head -n 1)
REL=${REL#./}
[ -n "$REL" ] || ktap_skip_from 1 "no file of 64 KiB to 1 MiB under $MNT"
F=$MNT/$REL
L=$LOWER/$REL
ktap_diag "file: $F ($(stat -c %s "$F") bytes), lower $L"
pool_served "$F" >/dev/null 2>&1 || ktap_skip_from 1 "the agent never served $NS/$REL from the pool (answers: $(cd /sys/kernel/vmdedup/stats && grep . answers_* | tr '\n' ' '))"

mm0=$(stat_of mmap_pool); mp0=$(stat_of mmap_pool_private); fp0=$(stat_of faults_pool); fl0=$(stat_of faults_lower)
rv0=$(stat_of revocations); ack0=$(stat_of acks_sent); ff0=$(stat_of faults_failed)
rm -f /tmp/fs_revoke.stop
watch_both "$F" "$L" /tmp/fs_revoke.stop /tmp/fs_revoke 300
# Both mappings (the shared one and the private one) from pool frames.
pooled() { { [ "$(stat_of mmap_pool)" -ge $((mm0 + 2)) ] && [ "$(stat_of mmap_pool_private)" -gt "$mp0" ] && [ "$(stat_of faults_pool)" -gt "$fp0" ]; } || { echo "mmap_pool $mm0 -> $(stat_of mmap_pool), mmap_pool_private $mp0 -> $(stat_of mmap_pool_private), faults_pool $fp0 -> $(stat_of faults_pool)" >&2; return 1; }; }
ktap_check "$T1" pooled
mapped() { { grep -q 'mmapwatch: mapped' /tmp/fs_revoke.shared && grep -q 'mmapwatch: mapped' /tmp/fs_revoke.private; } || { cat /tmp/fs_revoke.shared /tmp/fs_revoke.private >&2; return 1; }; }
ktap_check "$T2" mapped

if [ "${FS_REVOKE_HOST:-0}" != 1 ]; then
    touch /tmp/fs_revoke.stop; wait "$W1" "$W2" 2>/dev/null
    ktap_skip_from 3 "no host evicting on request (run with FS_REVOKE_HOST=1 and --host-cmd tests/host/evict-on-marker)"
fi

echo "# fs_revoke: evict ${VMDEDUP_GUEST:-vm}-$$ $NS $REL"
stat_above revocations "$rv0" 600 || true
revoked() { [ "$(stat_of revocations)" -gt "$rv0" ] || { echo "no revocation within 60 s (events_unknown $(stat_of events_unknown))" >&2; return 1; }; }
ktap_check "$T3" revoked
stat_above acks_sent "$ack0" 50 || true
acked() { [ "$(stat_of acks_sent)" -gt "$ack0" ] || { echo "acks_sent $ack0 -> $(stat_of acks_sent), map_ops_deferred $(stat_of map_ops_deferred), map_ops_dropped $(stat_of map_ops_dropped)" >&2; return 1; }; }
ktap_check "$T4" acked

# Let the process go over the whole mapping again (every page faults anew).
sleep 2
touch /tmp/fs_revoke.stop
wait "$W1"; wrc=$?
wait "$W2"; prc=$?
ktap_diag "mmapwatch (status $wrc): $(tr '\n' ' ' < /tmp/fs_revoke.shared)"
ktap_diag "mmapwatch private (status $prc): $(tr '\n' ' ' < /tmp/fs_revoke.private)"
kept() { [ "$wrc" = 0 ] && grep -q 'all equal' /tmp/fs_revoke.shared && [ "$(stat_of faults_failed)" = "$ff0" ]; }
ktap_check "$T5" kept
lowered() { [ "$(stat_of faults_lower)" -gt "$fl0" ] || { echo "faults_lower $fl0 -> $(stat_of faults_lower)" >&2; return 1; }; }
ktap_check "$T6" lowered
same() { [ "$(sha256sum < "$F")" = "$(sha256sum < "$L")" ]; }
ktap_check "$T7" same

if command -v vmdedup-guest > /dev/null 2>&1 && vmdedup-guest status > /tmp/fs_revoke.status 2>&1; then
    ktap_check "$T8" host_settled
else
    ktap_skip "$T8" "no agent reachable through vmdedup-guest over vsock: $(tail -n 1 /tmp/fs_revoke.status 2>/dev/null)"
fi

# The next opens hint again; the host loads the file anew and answers.
again() {
    pool_served "$F" || return 1
    m0=$(stat_of mmap_pool)
    rm -f /tmp/fs_revoke.stop2
    "$WATCH" "$F" "$L" /tmp/fs_revoke.stop2 0 > /tmp/fs_revoke.out2 2>&1 || { cat /tmp/fs_revoke.out2 >&2; return 1; }
    [ "$(stat_of mmap_pool)" -gt "$m0" ] || { echo "mapped from lower: answers $(cd /sys/kernel/vmdedup/stats && grep . answers_* | tr '\n' ' ')" >&2; return 1; }
}
ktap_check "$T9" again
kept_private() { [ "$prc" = 0 ] && grep -q 'all equal' /tmp/fs_revoke.private; }
ktap_check "$T10" kept_private
ktap_diag "counters: $(cd /sys/kernel/vmdedup/stats && grep -- . * | tr '\n' ' ')"
ktap_finish
