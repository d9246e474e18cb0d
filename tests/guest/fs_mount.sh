#!/bin/sh
# Selftest: vmdedupfs mounts and unmounts; rmmod is refused while mounted and
# clean afterwards; bad options are refused; the mount is read-only (EROFS).
# shellcheck source=lib/ktap.sh
. /tests/lib/ktap.sh
# shellcheck source=lib/fs.sh
. /tests/lib/fs.sh
cycles=${FS_CYCLES:-3}
ktap_header $((16 + cycles))

L=/tmp/fs_mount.lower M=/tmp/fs_mount.mnt
mkdir -p "$L" "$M"
fs_make_tree "$L"
ktap_check "module loaded" fs_load
ktap_check "vmdedupfs registered" grep -qw vmdedupfs /proc/filesystems
ktap_check "mount without lower= is refused" sh -c "! mount -t vmdedupfs -o ns=t none $M 2>/dev/null"
ktap_check "mount with verify=bogus is refused" sh -c "! mount -t vmdedupfs -o ns=t,lower=$L,verify=bogus none $M 2>/dev/null"
ktap_check "mount with a missing lower is refused" sh -c "! mount -t vmdedupfs -o ns=t,lower=/nonexistent none $M 2>/dev/null"
ktap_check "mount" mount -t vmdedupfs -o "ns=t,lower=$L,verify=full" none "$M"
ktap_check "mount is listed read-only with its options" sh -c "grep ' $M vmdedupfs ro,' /proc/mounts | grep -q 'ns=t,lower=$L,verify=full'"
ktap_check "rmmod refused while mounted" sh -c "! rmmod vmdedup 2>/dev/null && lsmod | grep -q '^vmdedup '"

# Writes of every kind fail with EROFS.
erofs() { out=$("$@" 2>&1); st=$?; [ $st -ne 0 ] && echo "$out" | grep -q 'Read-only file system'; }
ktap_check "create fails with EROFS" erofs sh -c "echo x > $M/new"
ktap_check "write to an existing file fails with EROFS" erofs sh -c "echo x >> $M/sub/deep/hello.txt"
ktap_check "mkdir fails with EROFS" erofs mkdir "$M/newdir"
ktap_check "unlink fails with EROFS" erofs rm -f "$M/sub/deep/hello.txt"
ktap_check "chmod fails with EROFS" erofs chmod 600 "$M/empty"
ktap_check "remount read-write stays read-only" sh -c "mount -o remount,rw $M 2>/dev/null; grep ' $M vmdedupfs ro,' /proc/mounts"

ktap_check "umount" umount "$M"
# Mounts this test did not make (scripts/guest-run's /shared/NAME) pin the module.
others=$(awk '$3 == "vmdedupfs" { print $2 }' /proc/mounts | tr '\n' ' ')
if [ -n "$others" ]; then
    ktap_skip "rmmod after umount" "other vmdedupfs mounts keep the module: $others"
else
    ktap_check "rmmod after umount" rmmod vmdedup
fi

i=1
while [ "$i" -le "$cycles" ]; do
    cycle() {
        insmod /lib/modules/vmdedup.ko && mount -t vmdedupfs -o "ns=t,lower=$L" none "$M" &&
            cat "$M/sub/deep/f4097" > /dev/null && ! rmmod vmdedup 2>/dev/null && umount "$M" && rmmod vmdedup
    }
    if [ -n "$others" ]; then
        ktap_skip "insmod/mount/read/umount/rmmod cycle $i" "other vmdedupfs mounts keep the module"
    else
        ktap_check "insmod/mount/read/umount/rmmod cycle $i" cycle
    fi
    i=$((i + 1))
done
rm -rf "$L"
ktap_finish
