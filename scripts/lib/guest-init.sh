#!/bin/busybox sh
# shellcheck shell=sh
# SPDX-License-Identifier: GPL-2.0
# /init of the guests scripts/guest-run boots (busybox sh, PID 1).
#
# scripts/guest-run copies this file into the initramfs as /init and leaves
# what it decided in /etc/vmdedup/:
#   namespaces     one namespace name a line: the virtio-blk disk whose serial
#                  is ns-NAME is mounted read-only at /lower/NAME
#   namespace-ids  "NAME ID" lines: each namespace through vmdedupfs at
#                  /shared/NAME (only when insmod is 1)
#   insmod         1: load /lib/modules/vmdedup.ko and mount /shared; 0: do not
#   verify         the verify= option of the /shared mounts
#   command        run under `sh -c` in /root, its output on the second serial
#                  port (/dev/ttyS1)
#   keep           1: stay up after the command instead of powering off
# The last line on /dev/ttyS1 is `VMDEDUP-EXIT STATUS`; guest-run reads the
# command's status from it.
/bin/busybox --install -s /bin
/bin/busybox --install -s /sbin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null || true
mount -t tmpfs tmpfs /tmp
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null || true
out=/dev/ttyS1
stty -F "$out" raw -echo 2>/dev/null || true
say() { echo "$*" > "$out"; }
fail=0
# Lower namespaces: the virtio-blk disk whose serial is ns-NAME.
while read -r ns; do
    [ -n "$ns" ] || continue
    dev=""
    for b in /sys/block/vd*; do
        [ -e "$b/serial" ] || continue
        if [ "$(cat "$b/serial")" = "ns-$ns" ]; then dev=/dev/${b##*/}; fi
    done
    mkdir -p "/lower/$ns"
    if [ -z "$dev" ] || ! mount -t ext4 -o ro,noload "$dev" "/lower/$ns"; then
        say "guest-run: cannot mount namespace $ns (disk ${dev:-missing})"; fail=1
    fi
done < /etc/vmdedup/namespaces
if [ "$(cat /etc/vmdedup/insmod)" = 1 ] && [ "$fail" = 0 ]; then
    if ! insmod /lib/modules/vmdedup.ko; then say "guest-run: insmod vmdedup.ko failed"; fail=1; fi
    # Every namespace through vmdedupfs at /shared/NAME.
    while [ "$fail" = 0 ] && read -r ns id; do
        mkdir -p "/shared/$ns"
        mount -t vmdedupfs -o "ns=$ns,nsid=$id,lower=/lower/$ns,verify=$(cat /etc/vmdedup/verify)" none "/shared/$ns" \
            || { say "guest-run: cannot mount vmdedupfs at /shared/$ns"; fail=1; }
    done < /etc/vmdedup/namespace-ids
fi
rc=1
if [ "$fail" = 0 ]; then
    cd /root || say "guest-run: no /root, the command runs in $(pwd)"
    sh -c "$(cat /etc/vmdedup/command)" > "$out" 2>&1 < /dev/null
    rc=$?
fi
sync
say "VMDEDUP-EXIT $rc"
if [ "$(cat /etc/vmdedup/keep)" = 1 ]; then
    while :; do sleep 3600; done
fi
reboot -f
