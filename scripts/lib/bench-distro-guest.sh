#!/bin/sh
# Runs inside every `scripts/bench ksm --distro` guest (Debian, systemd, root
# = overlay over vmdedupfs over the shared image, or over the image alone
# without vmdedup), as the boot's command unit, from /usr/local/bin. Reads
# bench.passes, bench.ballast and bench.idle from the kernel command line
# (see bench-guest.sh) and prints, on the output port:
#   BENCH-BOOTED secs=S        uptime when systemd reached its target
#   BENCH-STATS start|end ...  around the workload (distro-workload.sh)
#   BENCH-MEMINFO start|end .. /proc/meminfo around it (kB; end after a sync)
#   BENCH-KERNELMEM, BENCH-READS-DONE, BENCH-IDLE (bench-guest-lib.sh)
dir=$(dirname "$0")
# shellcheck source=bench-guest-lib.sh
. "$dir/bench-guest-lib.sh"
# shellcheck source=distro-workload.sh
. "$dir/distro-workload.sh"
passes=$(bench_arg passes)
[ -n "$passes" ] || passes=2
systemctl is-system-running --wait > /dev/null 2>&1
echo "BENCH-BOOTED secs=$(cut -d' ' -f1 /proc/uptime) state=$(systemctl is-system-running 2>&1) root=$(findmnt -n -o FSTYPE /run/vmdedupfs/shared 2>/dev/null || echo image)"
bench_kernelmem
bench_ballast "$(bench_arg ballast)" "$dir"
bench_stats start
bench_meminfo start
distro_workload "$passes" || echo "BENCH-ERROR the workload failed"
bench_stats end
sync
bench_meminfo end
echo "BENCH-READS-DONE"
sleep 5
bench_stats settled
bench_idle "$(bench_arg idle)"
while :; do sleep 3600; done
