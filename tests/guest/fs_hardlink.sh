#!/bin/sh
# Selftest: host-side hardlinks. On the host HOLDS_A and HOLDS_B (paths in the
# namespace) are two names of one file, so the agent answers both with one
# file map; in the guest's lower they are two files with the same bytes (an
# image built before the host deduplicated its files with ostree, Nix's store
# optimisation or `hardlink`), so the guest has two inodes holding that one
# map. The inode of A holds a shared and a private mapping; B is read from the
# pool and its inode dropped (drop_caches), which releases B's reference. The
# host must still count the map as held by this VM, and under frame pressure
# (budget 2 MB) may revoke it but must not reuse its frames under A's
# mappings: every byte equals lower. See lib/holds.sh.
#
# Needs the holds suite (tests/run --suite holds: PRESSURE=1, HOLDS_A and
# HOLDS_B, an agent budget of 2 MB, mmapwatch, treecheck, vmdedup-guest).
# shellcheck source=lib/ktap.sh
. /tests/lib/ktap.sh
# shellcheck source=lib/fs.sh
. /tests/lib/fs.sh
# shellcheck source=lib/holds.sh
. /tests/lib/holds.sh

HOLDS_WHAT="two names that are two inodes in the guest (one file on the host)"
holds_setup() {
    { [ -n "${HOLDS_A:-}" ] && [ -n "${HOLDS_B:-}" ]; } || { echo "no hardlinked pair named (HOLDS_A, HOLDS_B)"; return 1; }
    { [ -f "$M/$HOLDS_A" ] && [ -f "$M/$HOLDS_B" ]; } || { echo "no $HOLDS_A and $HOLDS_B under $M"; return 1; }
    HOLDS_F1=$M/$HOLDS_A
    HOLDS_F2=$M/$HOLDS_B
    HOLDS_LOWER=$L/$HOLDS_A
}
holds_check1() {
    cmp "$L/$HOLDS_A" "$L/$HOLDS_B" || return 1
    [ "$(stat -c %i "$L/$HOLDS_A")" != "$(stat -c %i "$L/$HOLDS_B")" ] ||
        { echo "the guest's lower has them as one inode ($(stat -c %i "$L/$HOLDS_A")): nothing to test"; return 1; }
    [ "$(stat -c %i "$HOLDS_F1")" != "$(stat -c %i "$HOLDS_F2")" ] ||
        { echo "vmdedupfs made them one inode"; return 1; }
}
# Drops B's inode: nothing has it open, so reclaiming dentries and inodes
# evicts it (A's is pinned by its mappings); the timer then releases its map.
holds_drop() {
    echo 2 > /proc/sys/vm/drop_caches
}
holds_run
