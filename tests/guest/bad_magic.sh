#!/bin/sh
# Selftest: an ivshmem device with an unknown magic is refused with a clear log
# line, and does not disturb the good regions. The host runner attaches such a
# device (--extra-region) and says so in BAD_REGION=1.
. /tests/lib/ktap.sh
ktap_header 5
if [ "${BAD_REGION:-0}" != 1 ]; then
    for t in "bad device refused" "refusal counted" "refusal logged" "good regions still mapped" "rmmod"; do
        ktap_skip "$t" "no bad region attached (run with --extra-region)"
    done
    ktap_finish; exit $?
fi
if lsmod | grep -q '^vmdedup '; then rmmod vmdedup; fi
dmesg -c > /dev/null
ktap_check "bad device refused, module still loads" insmod /lib/modules/vmdedup.ko
ktap_check "refusal counted" expect_eq "$(sysval refused)" 1
logged() { dmesg | grep -q 'vmdedup: .*refusing ivshmem device: unknown magic 0xa5a5a5a5a5a5a5a5'; }
ktap_check "refusal logged with the magic" logged
ktap_check "good regions still mapped" expect_eq "$(sysval ring/state) $(sysval pool/state)" "mapped mapped"
ktap_check "rmmod" rmmod vmdedup
ktap_finish
