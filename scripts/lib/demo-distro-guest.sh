#!/bin/sh
# Runs inside every `scripts/demo --distro` guest (Debian, systemd, root =
# overlay over vmdedupfs over the shared image; see docs/distro.md), as the
# boot's command unit. PASSES times, the workload of distro-workload.sh (a
# server's and a developer's programs from the image). Prints the same
# DEMO-STATS / DEMO-PHASE / DEMO-MEMINFO / DEMO-DONE lines as the busybox
# demo guests (scripts/lib/demo-guest.sh), for the host's live table.
passes=${1:-2}
# shellcheck source=demo-report.sh
. "$(dirname "$0")/demo-report.sh"
# shellcheck source=distro-workload.sh
. "$(dirname "$0")/distro-workload.sh"
demo_ticker_start
# Boot done (this unit starts once multi-user.target is reached); the
# host's monitor samples each guest's RAM when this line is out.
systemctl is-system-running --wait > /dev/null 2>&1
echo "booted: $(systemctl is-system-running 2>&1), root $(findmnt -n -o FSTYPE /) over $(findmnt -n -o FSTYPE /run/vmdedupfs/shared 2>/dev/null || echo 'the image alone')"
echo "DEMO-PHASE ready"
sleep 3
rc=0
distro_workload "$passes" || rc=1
demo_finish "$rc"
