#!/bin/sh
# Selftest of the reporting suite: memory a guest frees goes back to the host
# through virtio-balloon free page reporting (the device `vmdedup qemu-args`
# adds and scripts/guest-run attaches). It is what makes the lower pages the
# module drops, once the pool serves a file, a saving on the host too.
# The guest says it is about to fill, waits, fills FILL_MB of tmpfs and
# says so, waits, frees it and says so,
# then waits while tests/host/check-reporting measures its QEMU's guest RAM
# (smaps) at each step and checks that the freed memory left the host.
# shellcheck source=lib/ktap.sh
. /tests/lib/ktap.sh
ktap_header 3
T1="a virtio-balloon device is bound to its driver"
T2="free page reporting is negotiated (feature bit 5)"
T3="tmpfs filled and freed again"
if [ "${REPORTING:-}" != 1 ]; then
    ktap_skip_from 1 "needs the reporting suite (tests/run --suite reporting)"
fi
dev=""
for d in /sys/bus/virtio/drivers/virtio_balloon/virtio*; do [ -e "$d" ] && dev=$d && break; done
ktap_check "$T1" test -n "$dev"
# One character per feature bit, bit 0 first: VIRTIO_BALLOON_F_REPORTING is
# bit 5, the sixth character.
feat=$(cat "$dev/features" 2>/dev/null || true)
ktap_diag "balloon device: ${dev:-none}; features $feat"
ktap_check "$T2" test "$(echo "$feat" | cut -c6)" = 1
fill=${FILL_MB:-96}
mkdir -p /tmp/fill && mount -t tmpfs -o size=$((fill + 8))m tmpfs /tmp/fill
ok=1
ktap_diag "free_pages: filling"
sleep "${FILL_HOLD:-8}"
dd if=/dev/zero of=/tmp/fill/f bs=1M count="$fill" 2>/dev/null || ok=0
ktap_diag "free_pages: filled $fill MiB"
sleep "${FILL_HOLD:-8}"
rm -f /tmp/fill/f && umount /tmp/fill || ok=0
ktap_diag "free_pages: freed"
# The host measures meanwhile; the guest stays up until it has had time to.
sleep "${FREED_HOLD:-30}"
ktap_check "$T3" test "$ok" = 1
ktap_finish
