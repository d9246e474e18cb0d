#!/bin/sh
# Selftest: several processes on every vCPU open, read(2), pread(2) and map
# (shared and private) the same files of a vmdedupfs mount, and fault them,
# while underneath them
#   - the host evicts files they have open and mapped (revocations),
#   - the guest drops unused inodes (drop_caches), so maps are released while
#     other processes open the same files again,
#   - the host cuts the VM off (a withheld acknowledgement) and reinstates it,
#     so the ring starts over with a new generation.
# Every byte any of them reads is compared with lower: treecheck workers go
# over the whole tree again and again (read, pread, shared and private mmap),
# mmapwatch workers keep a shared and a private mapping of the evicted files
# and compare every page on each pass. The test also checks that the churn
# really happened: revocations, releases, a generation change, pool-served
# reads and faults, and workers seen on every CPU. One more treecheck worker
# reads a second mount of the namespace with verify=off, whose reads are
# copied straight from pool frames with nothing compared in the kernel.
#
# Needs the concurrency suite (tests/run --suite concurrency: a guest with
# 2 vCPUs, FS_REVOKE_HOST=1 and tests/host/evict-on-marker on the host,
# mmapwatch, treecheck, vmdedup-guest, the fault_no_ack parameter).
# shellcheck source=lib/ktap.sh
. /tests/lib/ktap.sh
# shellcheck source=lib/fs.sh
. /tests/lib/fs.sh
ktap_header 11

T1="the guest has at least two CPUs online"
T2="the workers ran on every CPU"
T3="the host revoked files while workers had them open and mapped"
T4="maps were released while other processes kept using the same files"
T5="the ring generation changed under the workers (cut off, then reinstated)"
T6="reads and faults were served from the pool during the churn, and after it"
T7="every treecheck pass saw only lower's bytes (read, pread, shared and private mmap)"
T8="every mapping read lower's bytes throughout (shared and private, written pages kept)"
T9="no verify mismatch, no failed fault; the tree is identical to lower afterwards"
T10="reads copied straight from pool frames (verify=off) raced the revocations and saw only lower's bytes"
T11="those reads took the fast path (one lock, one check after the copy) and opens of kept files sent nothing"
[ "${FS_REVOKE_HOST:-0}" = 1 ] || ktap_skip_from 1 "no host evicting on request (tests/run --suite concurrency)"
fs_load 2>/dev/null
KNOB=/sys/module/vmdedup/parameters/fault_no_ack
[ -w "$KNOB" ] || ktap_skip_from 1 "the module has no fault_no_ack parameter"
command -v vmdedup-guest > /dev/null 2>&1 || ktap_skip_from 1 "no vmdedup-guest in the guest"
served_mount || ktap_skip_from 1 "no /shared/NAME mount served by an agent (run with --ns NAME=DIR)"
NS=${M##*/}
WATCH=$(command -v mmapwatch || true)
TREECHECK=$(command -v treecheck || true)
{ [ -n "$WATCH" ] && [ -n "$TREECHECK" ]; } || ktap_skip_from 1 "no mmapwatch or treecheck in the guest"
NCPU=$(grep -c '^processor' /proc/cpuinfo)
cpus() { [ "$NCPU" -ge 2 ] || { echo "$NCPU CPU(s): boot with scripts/guest-run --smp 2"; return 1; }; }
ktap_check "$T1" cpus
ktap_diag "$NCPU CPUs"

# The files the host evicts while they are mapped: two of 64 KiB to 1 MiB.
FILES=$(cd "$M" && find . -type f -size +64k -size -1024k 2>/dev/null | grep -v '[^A-Za-z0-9._/+-]' | sort | head -n 2 | sed 's|^\./||')
[ "$(echo "$FILES" | wc -w)" = 2 ] || ktap_skip_from 2 "fewer than two files of 64 KiB to 1 MiB under $M"
for f in $FILES; do
    pool_served "$M/$f" > /dev/null 2>&1 || ktap_skip_from 2 "the agent never served $f from the pool"
done
ktap_diag "mapped and evicted: $(echo "$FILES" | tr '\n' ' ')"

rv0=$(stat_of revocations); rs0=$(stat_of releases_sent); g0=$(stat_of generation_changes)
fp0=$(stat_of faults_pool); pp0=$(stat_of pages_pool); vm0=$(stat_of verify_mismatches); ff0=$(stat_of faults_failed)
rf0=$(stat_of reads_fast); os0=$(stat_of opens_settled)
STOP=/tmp/conc.stop
rm -f "$STOP" /tmp/conc.*
# Mappers: a shared and a private mapping of each evicted file.
WPIDS=""
n=0
for f in $FILES; do
    n=$((n + 1))
    watch_both "$M/$f" "$L/$f" "$STOP" "/tmp/conc.watch$n" 1500 || ktap_diag "mmapwatch on $f did not map: $(cat /tmp/conc.watch$n.* | tr '\n' ' ')"
    WPIDS="$WPIDS $W1 $W2"
done
# Readers: treecheck in a loop, one per CPU and one more, over the parts of
# the tree that hold the evicted files (edge/ and lib/, 4 MB: a pass over all
# 18 MB takes minutes under TCG). Each pass appends "pass STATUS" to its log.
TPIDS=""
for i in $(seq 1 $((NCPU + 1))); do
    (
        while [ ! -e "$STOP" ]; do
            rc=0
            for d in $(echo "$FILES" | cut -d/ -f1 | sort -u); do
                "$TREECHECK" "$M/$d" "$L/$d" > "/tmp/conc.tree$i.last" 2>&1 || { rc=1; break; }
            done
            echo "pass $rc" >> "/tmp/conc.tree$i"
            [ "$rc" = 0 ] || cp "/tmp/conc.tree$i.last" "/tmp/conc.tree$i.failed"
        done
    ) &
    TPIDS="$TPIDS $!"
done
# The verify=off reader: the same files through a second mount of the
# namespace (the host's map reaches both mounts' inodes, so a revocation
# drops it from both), compared by treecheck with lower; only the table
# checks around each copy and the wait for readers before each
# acknowledgement keep it from reading a revoked frame. Its reads take the
# fast path (one file lock, one copy, the table checked after it: T11), and
# its opens of files whose answer is kept skip the hint's path and attribute.
OFF=/tmp/conc.offmnt
mkdir -p "$OFF"
offmounted=0
mount -t vmdedupfs -o "ns=$NS,nsid=$(fs_nsid "$NS"),lower=$L,verify=off" none "$OFF" && offmounted=1
if [ "$offmounted" = 1 ]; then
    (
        while [ ! -e "$STOP" ]; do
            rc=0
            for d in $(echo "$FILES" | cut -d/ -f1 | sort -u); do
                "$TREECHECK" "$OFF/$d" "$L/$d" > /tmp/conc.offtree.last 2>&1 || { rc=1; break; }
            done
            echo "pass $rc" >> /tmp/conc.offtree
            [ "$rc" = 0 ] || cp /tmp/conc.offtree.last /tmp/conc.offtree.failed
        done
    ) &
    TPIDS="$TPIDS $!"
fi
# Releases: unused inodes dropped every second while the readers reopen them.
(
    while [ ! -e "$STOP" ]; do
        echo 2 > /proc/sys/vm/drop_caches
        sleep 1
    done
) &
DPID=$!
# Which CPU each worker last ran on, sampled until the end.
(
    while [ ! -e "$STOP" ]; do
        for p in $(pidof treecheck mmapwatch); do
            awk '{ print $39 }' "/proc/$p/stat" 2>/dev/null
        done
        sleep 0.3
    done | sort -u > /tmp/conc.cpus
) &
SPID=$!

passes_of() { _n=$(grep -c '^pass' "/tmp/conc.tree$1" 2>/dev/null); echo "${_n:-0}"; }
# snapshot_passes: records each reader's count of finished passes (in
# /tmp/conc.mark); more_passes: every reader finished one more since.
snapshot_passes() {
    for i in $(seq 1 $((NCPU + 1))); do echo "$i $(passes_of "$i")"; done > /tmp/conc.mark
}
more_passes() {
    while read -r i n; do
        [ "$(passes_of "$i")" -gt "$n" ] || return 1
    done < /tmp/conc.mark
}
wait_more_passes() {
    for _ in $(seq 1 3000); do
        more_passes && return 0
        sleep 0.2
    done
    return 1
}
# evict_round TAG: each mapped file read until the pool serves it again (so
# this VM holds it), then evicted by the host.
evict_round() {
    for f in $FILES; do
        pool_served "$M/$f" > /dev/null 2>&1
        echo "# fs_revoke: evict conc-${VMDEDUP_GUEST:-vm}-$$-$1-${f##*/} $NS $f"
    done
}

# Round 1: evictions while everything runs.
sleep 3
snapshot_passes
evict_round 1
sleep 3
evict_round 2
wait_more_passes || ktap_diag "the readers had not finished a pass in 10 minutes"

# The generation change: withhold the next acknowledgement, have the host
# evict a mapped file, wait for the cut-off, then reinstate the VM.
echo 1 > "$KNOB"
wh0=$(stat_of acks_withheld)
# The evicted files must be held again for the eviction to be a revocation:
# read them until the pool serves them, evict, and retry if nothing was
# withheld.
for r in 1 2 3; do
    for f in $FILES; do pool_served "$M/$f" > /dev/null 2>&1; done
    evict_round "3.$r"
    stat_above acks_withheld "$wh0" 300 || true
    [ "$(stat_of acks_withheld)" -gt "$wh0" ] && break
done
cutoff_seen=0
for _ in $(seq 1 600); do
    vmdedup-guest status > /tmp/conc.status 2>&1 && grep -q 'CUT OFF' /tmp/conc.status && { cutoff_seen=1; break; }
    sleep 0.2
done
echo 0 > "$KNOB"
ktap_diag "acknowledgements withheld: $wh0 -> $(stat_of acks_withheld); cut off seen: $cutoff_seen"
echo "# fs_revoke: reinstate conc-reinstate-${VMDEDUP_GUEST:-vm}-$$ ${VMDEDUP_GUEST:-vm1}"
for _ in $(seq 1 600); do
    [ "$(stat_of generation_changes)" -gt "$g0" ] && vmdedup-guest status > /tmp/conc.status 2>&1 &&
        ! grep -q 'CUT OFF' /tmp/conc.status && break
    sleep 0.2
done
# After the reinstatement: more evictions, and every reader goes over the
# tree at least twice more while the pool serves it again.
sleep 3
evict_round 4
pp1=$(stat_of pages_pool)
# Every reader finishes at least one pass started after this point.
snapshot_passes
wait_more_passes || ktap_diag "the readers did not finish another pass in 10 minutes"
snapshot_passes
wait_more_passes || ktap_diag "the readers did not finish another pass in 10 minutes"
evict_round 5
sleep 2
touch "$STOP"
rw=0
for p in $WPIDS; do wait "$p" || rw=1; done
for p in $TPIDS; do wait "$p"; done
wait "$DPID"; wait "$SPID"

ktap_diag "CPUs seen: $(tr '\n' ' ' < /tmp/conc.cpus)"
everycpu() { [ "$(wc -l < /tmp/conc.cpus)" -ge "$NCPU" ] || { echo "workers seen on CPUs $(tr '\n' ' ' < /tmp/conc.cpus) of $NCPU"; return 1; }; }
ktap_check "$T2" everycpu
revoked() { [ "$(stat_of revocations)" -ge $((rv0 + 3)) ] || { echo "revocations $rv0 -> $(stat_of revocations)"; return 1; }; }
ktap_check "$T3" revoked
released() { [ "$(stat_of releases_sent)" -gt "$rs0" ] || { echo "releases_sent $rs0 -> $(stat_of releases_sent)"; return 1; }; }
ktap_check "$T4" released
regen() {
    { [ "$cutoff_seen" = 1 ] && [ "$(stat_of generation_changes)" -gt "$g0" ]; } ||
        { echo "cut off seen: $cutoff_seen, generation_changes $g0 -> $(stat_of generation_changes)"; return 1; }
}
ktap_check "$T5" regen
pooled() {
    { [ "$(stat_of faults_pool)" -gt "$fp0" ] && [ "$(stat_of pages_pool)" -gt "$pp0" ] && [ "$(stat_of pages_pool)" -gt "$pp1" ]; } ||
        { echo "faults_pool $fp0 -> $(stat_of faults_pool), pages_pool $pp0 -> $pp1 (reinstated) -> $(stat_of pages_pool)"; return 1; }
}
ktap_check "$T6" pooled
passes=$(cat /tmp/conc.tree* 2>/dev/null | grep -c '^pass')
ktap_diag "treecheck passes: $passes; failed: $(cat /tmp/conc.tree* 2>/dev/null | grep -c '^pass [1-9]')"
trees() {
    [ "$passes" -gt 0 ] || { echo "no treecheck pass finished"; return 1; }
    ! grep -q '^pass [1-9]' /tmp/conc.tree[0-9] 2>/dev/null || { cat /tmp/conc.tree*.failed | head -n 5; return 1; }
}
ktap_check "$T7" trees
for w in /tmp/conc.watch*; do ktap_diag "${w##*/}: $(tr '\n' ' ' < "$w")"; done
maps() {
    [ "$rw" = 0 ] || { echo "an mmapwatch failed"; return 1; }
    for w in /tmp/conc.watch*; do grep -q 'all equal' "$w" || { echo "${w##*/}: $(tail -n 1 "$w")"; return 1; }; done
}
ktap_check "$T8" maps
clean() {
    { [ "$(stat_of verify_mismatches)" = "$vm0" ] && [ "$(stat_of faults_failed)" = "$ff0" ]; } ||
        { echo "verify_mismatches $vm0 -> $(stat_of verify_mismatches), faults_failed $ff0 -> $(stat_of faults_failed)"; return 1; }
    same_tree "$M" "$L"
}
ktap_check "$T9" clean
offpasses=$(grep -c '^pass' /tmp/conc.offtree 2>/dev/null)
ktap_diag "verify=off treecheck passes: ${offpasses:-0}; failed: $(grep -c '^pass [1-9]' /tmp/conc.offtree 2>/dev/null)"
offreads() {
    [ "$offmounted" = 1 ] || { echo "could not mount $NS again with verify=off"; return 1; }
    [ "${offpasses:-0}" -gt 0 ] || { echo "no verify=off treecheck pass finished"; return 1; }
    ! grep -q '^pass [1-9]' /tmp/conc.offtree || { head -n 5 /tmp/conc.offtree.failed; return 1; }
}
ktap_check "$T10" offreads
ktap_diag "reads_fast $rf0 -> $(stat_of reads_fast), opens_settled $os0 -> $(stat_of opens_settled)"
fastpath() {
    [ "$offmounted" = 1 ] || { echo "could not mount $NS again with verify=off"; return 1; }
    { [ "$(stat_of reads_fast)" -gt "$rf0" ] && [ "$(stat_of opens_settled)" -gt "$os0" ]; } ||
        { echo "reads_fast $rf0 -> $(stat_of reads_fast), opens_settled $os0 -> $(stat_of opens_settled)"; return 1; }
}
ktap_check "$T11" fastpath
[ "$offmounted" = 1 ] && umount "$OFF"
ktap_diag "counters: $(cd /sys/kernel/vmdedup/stats && grep -- . * | tr '\n' ' ')"
ktap_finish
