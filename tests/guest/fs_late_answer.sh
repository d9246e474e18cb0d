#!/bin/sh
# Selftest: a late answer for a file that was hinted again must not drop the
# map the second answer installed. The file is warmed into the pool; with the
# fault_hold_answers knob the guest leaves answers unread, so its hint times
# out and the file is hinted again; then both answers are read at once: the
# first, late, is released (nobody waits for it), the second is installed and
# held. The host must still count the map held by this VM (it holds nothing
# else). Then two processes map the file while the whole tree is read under a
# small frame budget (frames churn, held maps are revoked): every byte equals
# lower, faults were served from the pool, nothing failed verification.
#
# Run it first in a fresh guest (it counts on holding nothing else) with a
# small agent budget (--budget 2M) and mmapwatch.
# shellcheck source=lib/ktap.sh
. /tests/lib/ktap.sh
# shellcheck source=lib/fs.sh
. /tests/lib/fs.sh
ktap_header 6

T1="with answers held back the hint times out and the file is hinted again"
T2="read at once, the late hit is released and the second one installed"
T3="the host still counts the map held by this VM"
T4="processes mapping the file read correct bytes while frames churn (shared and private)"
T5="the mapping was served from pool frames and no pool page failed verification"
T6="every file of the tree is identical to lower"
fs_load 2>/dev/null
KNOB=/sys/module/vmdedup/parameters/fault_hold_answers
[ -w "$KNOB" ] || ktap_skip_from 1 "the module has no fault_hold_answers parameter"
command -v vmdedup-guest > /dev/null 2>&1 || ktap_skip_from 1 "no vmdedup-guest in the guest"
served_mount || ktap_skip_from 1 "no /shared/NAME mount served by an agent (run with --ns NAME=DIR)"
WATCH=$(command -v mmapwatch || true)
[ -n "$WATCH" ] || ktap_skip_from 1 "no mmapwatch helper in the guest"
REL=$(cd "$M" && find . -type f -size +64k -size -512k 2>/dev/null | grep -v '[^A-Za-z0-9._/+-]' | sort | sed -n 1p)
REL=${REL#./}
[ -n "$REL" ] || ktap_skip_from 1 "no file of 64 KiB to 512 KiB under $M"

# Up to a few rounds: the late answer must be a hit (the file loaded).
late_ok=0
for round in 1 2 3 4 5; do
    vmdedup-guest warm "$M/$REL" > /dev/null 2>&1
    sleep 1
    echo 1 > "$KNOB"
    t0=$(stat_of requests_timed_out); s0=$(stat_of hints_sent)
    cat "$M/$REL" > /dev/null
    stat_above requests_timed_out "$t0" 100 || true
    cat "$M/$REL" > /dev/null
    s1=$(stat_of hints_sent); t1=$(stat_of requests_timed_out)
    u0=$(stat_of answers_unknown); r0=$(stat_of releases_sent); h0=$(stat_of answers_hit)
    echo 0 > "$KNOB"
    for _ in $(seq 1 50); do
        [ "$(stat_of answers_unknown)" -gt "$u0" ] && [ "$(stat_of answers_hit)" -gt "$h0" ] && break
        sleep 0.1
    done
    ktap_diag "round $round: hints $s0 -> $s1, timed out $t0 -> $t1, unknown $u0 -> $(stat_of answers_unknown), releases $r0 -> $(stat_of releases_sent), hits $h0 -> $(stat_of answers_hit)"
    if [ "$(stat_of answers_unknown)" -gt "$u0" ] && [ "$(stat_of releases_sent)" -gt "$r0" ] && [ "$(stat_of answers_hit)" -gt "$h0" ]; then
        late_ok=1
        break
    fi
    sleep 1
done
again() { { [ "$t1" -gt "$t0" ] && [ "$s1" -ge $((s0 + 2)) ]; } || { echo "hints $s0 -> $s1, timed out $t0 -> $t1"; return 1; }; }
ktap_check "$T1" again
late() { [ "$late_ok" = 1 ] || { echo "no late hit released next to an installed one in 5 rounds"; return 1; }; }
ktap_check "$T2" late
sleep 1
H=$(host_count maps_held)
held() { [ "${H:-0}" -ge 1 ] || { echo "the host counts ${H:-?} maps held by this VM"; return 1; }; }
ktap_check "$T3" held

rm -f /tmp/late.stop
f0=$(stat_of faults_pool); v0=$(stat_of verify_mismatches)
watch_both "$M/$REL" "$L/$REL" /tmp/late.stop /tmp/late 300
# Churn: the whole tree, twice, through a budget far smaller than it.
for _ in 1 2; do
    (cd "$M" && find . -type f -exec cat {} + > /dev/null 2>&1)
done
watch_end /tmp/late.stop /tmp/late; watched=$?
kept() { [ "$watched" = 0 ]; }
ktap_check "$T4" kept
served() {
    { [ "$(stat_of faults_pool)" -gt "$f0" ] && [ "$(stat_of verify_mismatches)" = "$v0" ]; } ||
        { echo "faults_pool $f0 -> $(stat_of faults_pool), verify_mismatches $v0 -> $(stat_of verify_mismatches)"; return 1; }
}
ktap_check "$T5" served
ktap_check "$T6" same_tree "$M" "$L"
ktap_diag "counters: $(cd /sys/kernel/vmdedup/stats && grep -- . * | tr '\n' ' ')"
ktap_finish
