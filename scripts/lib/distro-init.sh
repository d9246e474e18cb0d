#!/bin/busybox sh
# shellcheck shell=sh
# SPDX-License-Identifier: GPL-2.0
# /init of the distribution guests (scripts/guest-run --distro): the vmdedup
# boot hook. It assembles the root and hands over to systemd:
#   1. mounts the shared image (the virtio-blk disk whose serial is ns-root)
#      read-only;
#   2. loads vmdedup.ko from that image (/lib/modules/KERNEL/extra);
#   3. mounts vmdedupfs over the image (namespace root, id 1);
#   4. puts an overlay on top, with a tmpfs as its upper layer, as the root;
#   5. switch_root to /sbin/init (systemd).
# If the module does not load or vmdedupfs does not mount (no host agent, no
# ring device), the overlay goes straight over the image: the guest boots as
# it would without vmdedup. The layers stay visible under /run/vmdedupfs
# (lower, shared, rw) in the booted system.
#
# What guest-run decided is in /etc/vmdedup/ of the initramfs and is copied
# into the new root's /etc/vmdedup/: command, keep, verify, insmod, guest
# (see scripts/lib/distro-command.sh for the unit that runs the command).
# docs/distro.md shows how to add the same hook to an image of your own.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
say() { echo "vmdedup-boot: $*" > /dev/kmsg; echo "vmdedup-boot: $*"; }
# Nothing to fall back to without the image: report and stop.
fatal() {
    say "$*"
    stty -F /dev/ttyS1 raw -echo 2>/dev/null
    echo "vmdedup-boot: $*" > /dev/ttyS1
    echo "VMDEDUP-EXIT 1" > /dev/ttyS1
    sync
    poweroff -f
}
conf() { cat "/etc/vmdedup/$1" 2>/dev/null; }

dev=""
for b in /sys/block/vd*; do
    [ -e "$b/serial" ] && [ "$(cat "$b/serial")" = ns-root ] && dev=/dev/${b##*/}
done
[ -n "$dev" ] || fatal "no disk with serial ns-root (the shared image)"
mkdir -p /run/vmdedupfs/lower /run/vmdedupfs/shared /run/vmdedupfs/rw /newroot
mount -t ext4 -o ro,noload "$dev" /run/vmdedupfs/lower || fatal "cannot mount $dev (the shared image) read-only"

stack=/run/vmdedupfs/lower
if [ "$(conf insmod)" = 1 ]; then
    ko=/run/vmdedupfs/lower/lib/modules/$(uname -r)/extra/vmdedup.ko
    if ! insmod "$ko"; then
        say "cannot load $ko: booting from the image alone"
    elif ! mount -t vmdedupfs -o "ns=root,nsid=1,lower=/run/vmdedupfs/lower,verify=$(conf verify)" none /run/vmdedupfs/shared; then
        say "cannot mount vmdedupfs: booting from the image alone"
    else
        stack=/run/vmdedupfs/shared
    fi
fi
mount -t tmpfs -o mode=0755 tmpfs /run/vmdedupfs/rw || fatal "cannot mount the tmpfs upper layer"
mkdir -p /run/vmdedupfs/rw/upper /run/vmdedupfs/rw/work
mount -t overlay -o "lowerdir=$stack,upperdir=/run/vmdedupfs/rw/upper,workdir=/run/vmdedupfs/rw/work" overlay /newroot \
    || fatal "cannot mount the overlay root over $stack"
say "root: overlay over ${stack#/run/vmdedupfs/}"

mkdir -p /newroot/etc/vmdedup
cp /etc/vmdedup/* /newroot/etc/vmdedup/
# The guest's name (VMDEDUP_GUEST= on the kernel command line) as its host name.
# Its machine id, derived from the name: one per guest, the same at every
# boot (the image's is empty, which systemd would take for a first boot).
if [ -n "${VMDEDUP_GUEST:-}" ]; then
    echo "$VMDEDUP_GUEST" > /newroot/etc/vmdedup/guest
    echo "$VMDEDUP_GUEST" > /newroot/etc/hostname
    echo "vmdedup-guest-$VMDEDUP_GUEST" | md5sum | cut -c1-32 > /newroot/etc/machine-id
fi
# The selftests and the programs --add put in /usr/bin of the initramfs.
[ -d /tests ] && cp -r /tests /newroot/tests
[ -d /usr/bin ] && mkdir -p /newroot/usr/local/bin && cp -a /usr/bin/. /newroot/usr/local/bin/
# The layers are mounted at /run/vmdedupfs/* from the start, so the paths in
# the overlay's options stay true in the booted system: its /run is a tmpfs
# of our own, which systemd keeps (it mounts one only where none is), and
# the layers move there.
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /newroot/run
for d in lower shared rw; do
    mkdir -p "/newroot/run/vmdedupfs/$d"
    if grep -q " /run/vmdedupfs/$d " /proc/mounts; then
        mount --move "/run/vmdedupfs/$d" "/newroot/run/vmdedupfs/$d" || say "cannot move /run/vmdedupfs/$d into the new root"
    fi
done
mount --move /dev /newroot/dev
umount /sys /proc
exec switch_root /newroot /sbin/init
