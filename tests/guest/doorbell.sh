#!/bin/sh
# Selftest: the ring as an ivshmem-doorbell device whose ivshmem server is the
# agent. Hints sent while the host poller is parked ring its doorbell and are
# answered; an idle guest sleeps without the module's timer (no event work,
# no interrupt, no doorbell for 10 s); a revocation then reaches it by the
# ring's interrupt and is acknowledged. The host side (tests/host/
# check-doorbell) evicts on this test's marker and checks the agent's own
# counters: doorbells received, interrupts raised. Last, the module unloads
# and takes back its "I ring" flag, which the host side checks too (a ring
# nobody rings any more is polled on the short park timeout again).
#
# Run it with scripts/guest-run --doorbell --ns NAME=DIR and
# DOORBELL_HOST=1 --host-cmd tests/host/check-doorbell.
# shellcheck source=lib/ktap.sh
. /tests/lib/ktap.sh
# shellcheck source=lib/fs.sh
. /tests/lib/fs.sh
ktap_header 6

T1="the ring is an ivshmem-doorbell device with its interrupt"
T2="hints sent while the host poller is parked ring its doorbell and are answered"
T3="an idle guest gets no wake-up from the module for 10 s"
T4="a revocation reaches the idle guest by the ring's interrupt and is acknowledged"
T5="the revoked file still reads the same bytes as lower"
T6="the module unloads (the host then sees that nobody rings this ring)"
fs_load 2>/dev/null
served_mount || ktap_skip_from 1 "no /shared/NAME mount served by an agent (run with --ns NAME=DIR)"
NS=$(awk -v m="$M" '$2 == m { n = split($4, o, ","); for (i = 1; i <= n; i++) if (o[i] ~ /^ns=/) print substr(o[i], 4) }' /proc/mounts)
irq_count() { awk '/vmdedup/ { s = 0; for (i = 2; i <= NF; i++) if ($i ~ /^[0-9]+$/) s += $i; else break; print s; exit }' /proc/interrupts; }

device() {
    dmesg | grep -q 'ring on ivshmem-doorbell' || { dmesg | grep -i 'ring on ivshmem' >&2; echo "the module found no doorbell device" >&2; return 1; }
    [ -n "$(irq_count)" ] || { echo "no vmdedup line in /proc/interrupts" >&2; return 1; }
}
ktap_diag "module: $(dmesg | grep -a 'vmdedup\|ring on' | grep -a 'ring' | tail -n 3 | tr '\n' ' ')"
ktap_diag "interrupts: $(grep -a vmdedup /proc/interrupts | tr -s ' ')"
ktap_check "$T1" device
if ! dmesg | grep -q 'ring on ivshmem-doorbell'; then
    ktap_skip_from 2 "the ring is not an ivshmem-doorbell device (run with scripts/guest-run --doorbell)"
fi

# Files to hint, each once: the poller has time to park before each.
FILES=$(cd "$M" && find . -type f -size +4k 2>/dev/null | grep -v '[^A-Za-z0-9._/+-]' | sort | head -n 20)
answers() { cat /sys/kernel/vmdedup/stats/answers_hit /sys/kernel/vmdedup/stats/answers_miss_* | awk '{ s += $1 } END { print s + 0 }'; }
h0=$(stat_of hints_sent); a0=$(answers); r0=$(stat_of doorbells_rung); n0=$(stat_of doorbells_needed)
for f in $FILES; do
    sleep 0.3
    cat "$M/$f" > /dev/null
done
# Every hint counted has its answer, and the event work (a file's second
# hint after the host's loaded notice) is not between ringing and counting:
# the counters are read together once they agree (about 10 s at most; the
# check below then says what is off).
for _ in $(seq 1 100); do
    h1=$(stat_of hints_sent); n1=$(stat_of doorbells_needed); r1=$(stat_of doorbells_rung); a1=$(answers)
    [ $((r1 - r0)) -eq $((n1 - n0)) ] && [ "$a1" -ge $((a0 + h1 - h0)) ] && break
    sleep 0.1
done
ktap_diag "hints $h0 -> $h1, answers $a0 -> $a1, doorbells rung $r0 -> $r1 (needed $n0 -> $n1)"
rung() {
    [ "$h1" -gt "$h0" ] || { echo "no hint sent" >&2; return 1; }
    [ "$r1" -gt "$r0" ] || { echo "no doorbell rung" >&2; return 1; }
    [ $((r1 - r0)) -eq $((n1 - n0)) ] || { echo "doorbells needed $((n1 - n0)), rung $((r1 - r0))" >&2; return 1; }
    [ "$a1" -ge $((a0 + h1 - h0)) ] || { echo "$((h1 - h0)) hints, $((a1 - a0)) answers" >&2; return 1; }
}
ktap_check "$T2" rung

# A file the pool serves, held by this guest (its answer stays with the inode).
REL=$(cd "$M" && find . -type f -size +16k -size -1024k 2>/dev/null | grep -v '[^A-Za-z0-9._/+-]' | sort | head -n 1)
REL=${REL#./}
pool_served "$M/$REL" > /dev/null 2>&1 || ktap_skip_from 4 "the agent never served $NS/$REL from the pool"

# Idle: once the event work has gone to sleep, nothing of the module wakes.
for _ in $(seq 1 50); do
    w0=$(stat_of waits); sleep 0.5
    [ "$(stat_of waits)" -gt 0 ] && [ "$(stat_of waits)" = "$w0" ] && break
done
t0=$(stat_of ticks); i0=$(stat_of irqs_received); d0=$(stat_of doorbells_needed); q0=$(irq_count)
sleep 10
t1=$(stat_of ticks); i1=$(stat_of irqs_received); d1=$(stat_of doorbells_needed); q1=$(irq_count)
ktap_diag "idle 10 s: event work runs $t0 -> $t1, interrupts $i0 -> $i1 (/proc/interrupts $q0 -> $q1), doorbells $d0 -> $d1, waits $(stat_of waits)"
idle() { [ "$t1" = "$t0" ] && [ "$i1" = "$i0" ] && [ "$q1" = "$q0" ] && [ "$d1" = "$d0" ]; }
ktap_check "$T3" idle

if [ "${DOORBELL_HOST:-0}" != 1 ]; then
    ktap_skip_from 4 "no host evicting on request (run with DOORBELL_HOST=1 and --host-cmd tests/host/check-doorbell)"
fi
rv0=$(stat_of revocations); ack0=$(stat_of acks_sent); i0=$(stat_of irqs_received)
echo "# fs_revoke: evict ${VMDEDUP_GUEST:-vm}-$$ $NS $REL"
for _ in $(seq 1 600); do
    [ "$(stat_of acks_sent)" -gt "$ack0" ] && break
    sleep 0.1
done
ktap_diag "revocations $rv0 -> $(stat_of revocations), acks $ack0 -> $(stat_of acks_sent), interrupts $i0 -> $(stat_of irqs_received)"
by_irq() {
    [ "$(stat_of revocations)" -gt "$rv0" ] || { echo "no revocation within 60 s" >&2; return 1; }
    [ "$(stat_of acks_sent)" -gt "$ack0" ] || { echo "not acknowledged" >&2; return 1; }
    [ "$(stat_of irqs_received)" -gt "$i0" ] || { echo "no interrupt: the revocation came another way" >&2; return 1; }
}
ktap_check "$T4" by_irq
same() { [ "$(sha256sum < "$M/$REL")" = "$(sha256sum < "$L/$REL")" ]; }
ktap_check "$T5" same
unload() {
    # shellcheck disable=SC2013 # mount points made by guest-run have no spaces
    for m in $(awk '$3 == "vmdedupfs" { print $2 }' /proc/mounts); do
        umount "$m" || return 1
    done
    rmmod vmdedup
}
ktap_check "$T6" unload
ktap_finish
