#!/bin/sh
# Selftest: two vmdedupfs mounts of one namespace in one guest. The same file
# through each mount is its own inode with the same host file map. One mount's
# inode holds a shared and a private mapping of the file; the other mount
# reads the file from the pool and is unmounted, which releases its inode's
# reference to the map. The host must still count the map as held by this
# VM, and when frames run short (budget 2 MB) it may revoke the map but must
# not reuse its frames under the mapping: every byte of both mappings, and of
# the whole tree afterwards, equals lower. See lib/holds.sh.
#
# Needs the holds suite (tests/run --suite holds: PRESSURE=1, an agent budget
# of 2 MB, mmapwatch, treecheck, vmdedup-guest). Skipped otherwise.
# shellcheck source=lib/ktap.sh
. /tests/lib/ktap.sh
# shellcheck source=lib/fs.sh
. /tests/lib/fs.sh
# shellcheck source=lib/holds.sh
. /tests/lib/holds.sh

M2=/tmp/second-mount
HOLDS_WHAT="one inode in each of two mounts of its namespace"
holds_setup() {
    REL=$(cd "$M" && find . -type f -size +64k -size -1024k 2>/dev/null | grep -v '[^A-Za-z0-9._/+-]' | sort | head -n 1)
    REL=${REL#./}
    [ -n "$REL" ] || { echo "no file of 64 KiB to 1 MiB under $M"; return 1; }
    NS=${M##*/}
    id=$(fs_nsid "$NS")
    verify=$(cat /etc/vmdedup/verify 2>/dev/null || echo full)
    mkdir -p "$M2"
    mount -t vmdedupfs -o "ns=$NS,nsid=$id,lower=$L,verify=$verify" none "$M2" ||
        { echo "cannot mount a second vmdedupfs of $NS at $M2"; return 1; }
    HOLDS_F1=$M/$REL
    HOLDS_F2=$M2/$REL
    HOLDS_LOWER=$L/$REL
}
holds_check1() {
    [ "$(awk -v m="$M2" '$2 == m { print $3 }' /proc/mounts)" = vmdedupfs ] || { echo "$M2 is not a vmdedupfs mount"; return 1; }
    # Two super blocks: the VFS makes each mount its own inode of the file.
    cmp "$HOLDS_F1" "$HOLDS_F2"
}
# Unmounting evicts every inode of the second mount (the timer then releases
# the maps they held).
holds_drop() {
    if awk -v m="$M2" '$2 == m { f = 1 } END { exit !f }' /proc/mounts; then
        umount "$M2" 2>/dev/null || true
    fi
}
holds_run
