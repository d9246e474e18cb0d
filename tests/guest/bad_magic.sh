#!/bin/sh
# Selftest: ivshmem devices with an unknown magic, or a known magic but an
# unknown version, are refused with a clear log line and do not disturb the good
# regions. The host runner attaches two such devices (--extra-region) and says
# so with BAD_REGION=1.
# shellcheck source=lib/ktap.sh
. /tests/lib/ktap.sh
ktap_header 6
if [ "${BAD_REGION:-0}" != 1 ]; then
    for t in "bad devices refused" "refusals counted" "unknown magic logged" "unknown version logged" "good regions still mapped" "rmmod"; do
        ktap_skip "$t" "no bad regions attached (run through tests/run)"
    done
    ktap_finish; exit $?
fi
if lsmod | grep -q '^vmdedup '; then rmmod vmdedup; fi
dmesg -c > /dev/null
ktap_check "bad devices refused, module still loads" insmod /lib/modules/vmdedup.ko
ktap_check "refusals counted" expect_eq "$(sysval refused)" 2
magic_logged() { dmesg | grep -q 'vmdedup: .*refusing ivshmem device: unknown magic 0xa5a5a5a5a5a5a5a5'; }
ktap_check "unknown magic logged with the magic" magic_logged
version_logged() { dmesg | grep -q 'vmdedup: .*refusing ivshmem device: ring region with unknown version 99'; }
ktap_check "unknown version logged with the version" version_logged
ktap_check "good regions still mapped" expect_eq "$(sysval ring/state) $(sysval pool/state)" "mapped mapped"
ktap_check "rmmod" rmmod vmdedup
ktap_finish
