# shellcheck shell=sh
# The checks are functions inside holds_run, called through ktap_check:
# shellcheck disable=SC2317
# The body of fs_two_mounts and fs_hardlink (busybox sh). Source after ktap.sh
# and fs.sh, set the variables below, then call holds_run.
#
# One host file map reaches the guest through two guest inodes: the same file
# through two vmdedupfs mounts of one namespace, or two names that are one
# file (a hardlink) on the host but two files in the guest's lower. Through
# the first inode a shared and a private mapping are held; through the second
# the file is read from the pool, then that inode is dropped, which releases
# its reference to the map. The host must keep the map held for this VM (the
# first inode still maps its frames), and when frames then run short (the
# agent's budget is 2 MB, suite holds) it may revoke the map but never evict
# it silently and reuse its frames under the mapping.
#
#   HOLDS_WHAT     what the two inodes are (for the test descriptions)
#   HOLDS_F1       the file through the first inode (mapped)
#   HOLDS_F2       the same file through the second inode
#   HOLDS_LOWER    its lower file
#   holds_setup    a function: prepares both (returns non-zero to skip, with
#                  the reason on stdout)
#   holds_drop     a function: drops the second inode (unmount, drop_caches)
#   holds_check1   a function: true if the two inodes are what HOLDS_WHAT says
# Needs PRESSURE=1 (an agent with a small budget), mmapwatch, and
# vmdedup-guest for the host's view.

# The host's count of maps this VM holds (vmdedup-guest status over vsock).
host_maps_held() {
    vmdedup-guest status 2>/dev/null | sed -n 's/.*maps_held \([0-9]*\).*/\1/p' | head -n 1
}

holds_run() {
    ktap_header 9
    T1="the file reaches the guest as $HOLDS_WHAT"
    T2="the file is served from the pool through the first and mapped there (shared and private)"
    T3="the same file is served from the pool through the second"
    T4="dropping the second inode releases its reference (releases_sent rises)"
    T5="the host still holds the file's map for this VM after that release"
    T6="under frame pressure the agent revokes held maps and the guest acknowledges"
    T7="both mappings read correct bytes throughout, with pool-served faults"
    T8="every file through the mount is identical to lower (read, pread, mmap)"
    T9="no verify mismatch, no failed fault, the VM is not cut off"
    [ "${PRESSURE:-0}" = 1 ] || ktap_skip_from 1 "no agent with a small budget (tests/run --suite holds)"
    fs_load 2>/dev/null
    served_mount || ktap_skip_from 1 "no /shared/NAME mount served by an agent (run with --ns NAME=DIR)"
    WATCH=$(command -v mmapwatch || true)
    [ -n "$WATCH" ] || ktap_skip_from 1 "no mmapwatch helper in the guest"
    TREECHECK=$(command -v treecheck || true)
    command -v vmdedup-guest > /dev/null 2>&1 || ktap_skip_from 1 "no vmdedup-guest in the guest (the host's view)"
    [ -n "$(host_maps_held)" ] || ktap_skip_from 1 "the agent is not reachable through vmdedup-guest"
    # Not in $(...): holds_setup sets the HOLDS_ variables.
    holds_setup > /tmp/holds.why || ktap_skip_from 1 "$(cat /tmp/holds.why)"
    ktap_diag "first: $HOLDS_F1; second: $HOLDS_F2 ($(stat -c %s "$HOLDS_F1") bytes)"
    ktap_check "$T1" holds_check1

    mm0=$(stat_of mmap_pool); fp0=$(stat_of faults_pool); ff0=$(stat_of faults_failed)
    rv0=$(stat_of revocations); ack0=$(stat_of acks_sent); vm0=$(stat_of verify_mismatches)
    pool_served "$HOLDS_F1" > /dev/null 2>&1 || ktap_skip_from 2 "the agent never served $HOLDS_F1 from the pool"
    rm -f /tmp/holds.stop
    BIG=""
    watch_both "$HOLDS_F1" "$HOLDS_LOWER" /tmp/holds.stop /tmp/holds 900
    mapped() {
        { [ "$(stat_of mmap_pool)" -ge $((mm0 + 2)) ] && [ "$(stat_of faults_pool)" -gt "$fp0" ]; } ||
            { echo "mmap_pool $mm0 -> $(stat_of mmap_pool), faults_pool $fp0 -> $(stat_of faults_pool)"; cat /tmp/holds.shared /tmp/holds.private; return 1; }
    }
    ktap_check "$T2" mapped
    held0=$(host_maps_held)
    ktap_run "$T3" pool_served "$HOLDS_F2"
    rs0=$(stat_of releases_sent) mo0=$(stat_of map_op_answers)
    holds_drop
    released() {
        for _ in $(seq 1 100); do
            [ "$(stat_of releases_sent)" -gt "$rs0" ] && return 0
            holds_drop
            sleep 0.2
        done
        echo "releases_sent $rs0 -> $(stat_of releases_sent)"
        return 1
    }
    ktap_check "$T4" released
    # The host answers every map operation: once the answers to the releases
    # are in (map_op_answers has risen by at least the releases sent since
    # before the drop), the host has handled them. Nothing was loaded since
    # held0 was read (the second name found the same map), so nothing was
    # revoked for room. Each release but the second inode's may have let go
    # of another map (drop_caches evicts every unused inode); the second
    # inode's must not drop the mapped file's map, so the host must count at
    # most releases - 1 maps fewer than before.
    # More releases can follow at any time (the timer's sweep lets go of
    # maps of inodes drop_caches evicted), so each decision uses counts
    # read together: answers read after releases, and the releases that
    # can be in maps_held read after it.
    still_held() {
        rel=0 ans=0 answered=0
        for _ in $(seq 1 600); do
            rel=$(( $(stat_of releases_sent) - rs0 ))
            ans=$(( $(stat_of map_op_answers) - mo0 ))
            [ "$ans" -ge "$rel" ] && answered=1 && break
            sleep 0.2
        done
        [ "$answered" = 1 ] || { echo "releases not all answered ($rel sent, $ans answers)"; return 1; }
        held1=$(host_maps_held)
        rel=$(( $(stat_of releases_sent) - rs0 ))
        { [ -n "$held1" ] && [ "$held1" -ge $((held0 - rel + 1)) ]; } ||
            { echo "host maps_held $held0 -> $held1 after $rel release(s): the mapped file's map was dropped"; return 1; }
    }
    ktap_check "$T5" still_held

    # Frames run short: fill the budget with maps this guest holds (as
    # fs_pressure does), then ask for large files one after the other until
    # the agent has to revoke held maps to load one. A map no inode holds
    # would be evicted first, and its frames reused at once.
    h0=$(stat_of answers_hit)
    for _ in 1 2 3 4 5; do
        (cd "$M" && find usr/share edge -type f -exec cat {} + > /dev/null 2>&1)
        [ $(( $(stat_of answers_hit) - h0 )) -ge 150 ] && break
        sleep 1
    done
    for big in $(cd "$M" && find . -type f -size +256k -size -3072k | grep -v '[^A-Za-z0-9._/+-]' | sort -r); do
        [ "$(stat_of revocations)" -gt "$rv0" ] && break
        pool_served "$M/${big#./}" > /dev/null 2>&1 && BIG="$BIG ${big#./}"
    done
    ktap_diag "large files served: ${BIG:-none}"
    stat_above acks_sent "$ack0" 50 || true
    revoked() {
        { [ "$(stat_of revocations)" -gt "$rv0" ] && [ "$(stat_of acks_sent)" -gt "$ack0" ]; } ||
            { echo "revocations $rv0 -> $(stat_of revocations), acks_sent $ack0 -> $(stat_of acks_sent) (large file: $BIG)"; return 1; }
    }
    ktap_check "$T6" revoked
    # Let the watchers go over their mappings a few more times.
    sleep 2
    watch_end /tmp/holds.stop /tmp/holds; watched=$?
    kept() { [ "$watched" = 0 ] && [ "$(stat_of faults_pool)" -gt "$fp0" ]; }
    ktap_check "$T7" kept
    if [ -n "${TREECHECK:-}" ]; then
        ktap_run "$T8" treecheck_tree "$M" "$L"
    else
        ktap_check "$T8" same_tree "$M" "$L"
    fi
    clean() {
        { [ "$(stat_of verify_mismatches)" = "$vm0" ] && [ "$(stat_of faults_failed)" = "$ff0" ]; } ||
            { echo "verify_mismatches $vm0 -> $(stat_of verify_mismatches), faults_failed $ff0 -> $(stat_of faults_failed)"; return 1; }
        vmdedup-guest status > /tmp/holds.status 2>&1 || { tail -n 2 /tmp/holds.status; return 1; }
        ! grep -q 'CUT OFF' /tmp/holds.status || { echo "cut off"; return 1; }
    }
    ktap_check "$T9" clean
    ktap_diag "counters: $(cd /sys/kernel/vmdedup/stats && grep -- . * | tr '\n' ' ')"
    ktap_finish
}
