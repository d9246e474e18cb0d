#!/bin/sh
# /usr/lib/vmdedup/run-command in the distribution image: runs
# /etc/vmdedup/command under `sh -c` as root in /root, its output on the
# second serial port (/dev/ttyS1), then `VMDEDUP-EXIT STATUS` as the last
# line there (scripts/guest-run reads the status from it) and powers the
# guest off, unless /etc/vmdedup/keep holds 1.
out=/dev/ttyS1
stty -F "$out" raw -echo 2>/dev/null || true
cd /root || cd /
export VMDEDUP_GUEST
VMDEDUP_GUEST=$(cat /etc/vmdedup/guest 2>/dev/null || hostname)
sh -c "$(cat /etc/vmdedup/command)" > "$out" 2>&1 < /dev/null
rc=$?
sync
echo "VMDEDUP-EXIT $rc" > "$out"
if [ "$(cat /etc/vmdedup/keep 2>/dev/null)" != 1 ]; then
    systemctl --no-block poweroff
fi
