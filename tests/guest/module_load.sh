#!/bin/sh
# Selftest: insmod finds both regions, reads their headers correctly, rmmod is clean.
# Environment from the host runner: RING_SIZE, POOL_SIZE (bytes), RING_VERSION,
# POOL_VERSION (the host ABI's layout versions), LOAD_CYCLES.
# shellcheck source=lib/ktap.sh
. /tests/lib/ktap.sh
RING_MAGIC=0x474e495244444d56   # "VMDDRING" little-endian
POOL_MAGIC=0x4c4f4f5044444d56   # "VMDDPOOL" little-endian
cycles=${LOAD_CYCLES:-3}
ktap_header $((11 + cycles))

if lsmod | grep -q '^vmdedup '; then rmmod vmdedup; fi
ktap_check "insmod vmdedup.ko" insmod /lib/modules/vmdedup.ko
ktap_check "sysfs directory exists" test -d /sys/kernel/vmdedup
ktap_check "ring region mapped" expect_eq "$(sysval ring/state)" mapped
ktap_check "pool region mapped" expect_eq "$(sysval pool/state)" mapped
ktap_check "ring magic and version" expect_eq "$(sysval ring/magic) $(sysval ring/version)" "$RING_MAGIC ${RING_VERSION:-?}"
ktap_check "pool magic and version" expect_eq "$(sysval pool/magic) $(sysval pool/version)" "$POOL_MAGIC ${POOL_VERSION:-?}"
ktap_check "ring region size matches the host file" expect_eq "$(sysval ring/region_size) $(sysval ring/bar_size)" "${RING_SIZE:-?} ${RING_SIZE:-?}"
ktap_check "pool region size matches the host file" expect_eq "$(sysval pool/region_size) $(sysval pool/bar_size)" "${POOL_SIZE:-?} ${POOL_SIZE:-?}"
gen_ok() { g=$(sysval ring/generation); [ -n "$g" ] && [ "$g" != 0 ]; }
ktap_check "ring generation is set" gen_ok
ktap_check "rmmod vmdedup" rmmod vmdedup
ktap_check "sysfs directory removed after rmmod" test ! -e /sys/kernel/vmdedup

i=1
while [ "$i" -le "$cycles" ]; do
    cycle() { insmod /lib/modules/vmdedup.ko && [ "$(sysval ring/state)" = mapped ] && [ "$(sysval pool/state)" = mapped ] && rmmod vmdedup; }
    ktap_check "load/unload cycle $i" cycle
    i=$((i + 1))
done
ktap_finish
