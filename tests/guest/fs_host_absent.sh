#!/bin/sh
# Selftest: with no host answering (a namespace id nobody serves, or no ring
# at all), opens do not hang and every byte still comes from the lower tree.
# shellcheck source=lib/ktap.sh
. /tests/lib/ktap.sh
# shellcheck source=lib/fs.sh
. /tests/lib/fs.sh
ktap_header 4

fs_load
L=/tmp/fs_absent.lower M=/tmp/fs_absent.mnt
mkdir -p "$L" "$M"
fs_make_tree "$L"
pool0=$(stat_of pages_pool)
# 4000000000 is a namespace id no agent configures: hints go out (if there is
# a ring) and come back as misses, or never come back.
ktap_check "mount with a namespace no host serves" mount -t vmdedupfs -o "ns=nobody,nsid=4000000000,lower=$L,verify=full" none "$M"
ktap_check "tree byte-identical through read" same_tree "$M" "$L"
sleep 1
ktap_check "tree byte-identical on a second pass" same_tree "$M" "$L"
ktap_check "nothing served from the pool" sh -c "[ $(stat_of pages_pool) = $pool0 ]"
ktap_diag "hints_sent=$(stat_of hints_sent) answers_miss_other=$(stat_of answers_miss_other) hints_skipped_no_host=$(stat_of hints_skipped_no_host) requests_timed_out=$(stat_of requests_timed_out)"
umount "$M"
rm -rf "$L"
ktap_finish
