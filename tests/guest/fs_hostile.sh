#!/bin/sh
# Selftest, hostile guest: writes over the read-only pool and scribbles over
# its own ring region (random bytes, absurd indices, crafted hints with path
# escapes) for HOSTILE_SECONDS. Writes to the pool must change nothing, and
# even this guest keeps reading right bytes through its mount. The host side
# (tests/host/check-hostile) checks that the agent survived, counted the bad
# hints against this VM, and kept serving the honest guest.
# shellcheck source=lib/ktap.sh
. /tests/lib/ktap.sh
# shellcheck source=lib/fs.sh
. /tests/lib/fs.sh
ktap_header 4
tool=$(command -v hostile || true)
pair=""
for m in /shared/*; do grep -q " $m vmdedupfs " /proc/mounts && pair="$m" && break; done
if [ -z "$tool" ] || [ -z "$pair" ]; then
    for t in "pool writes have no effect" "ring attack ran" "own reads still right after the attack" "verify never found a difference"; do
        ktap_skip "$t" "needs the hostile tool and a vmdedupfs mount (tests/run --suite hostile)"
    done
    ktap_finish; exit $?
fi
lower=/lower/${pair#/shared/}
# Make the host load something first, so the pool has frames to attack.
(cd "$pair" && find . -type f -exec cat {} + > /dev/null)
sleep 1
(cd "$pair" && find . -type f -exec cat {} + > /dev/null)
pw=$("$tool" pool-write)
ktap_diag "$pw"
ktap_check "pool writes have no effect (read back unchanged)" sh -c "echo '$pw' | grep -q 'changed 0$'"
ra=$("$tool" ring "${HOSTILE_SECONDS:-20}" 2>&1)
ktap_diag "$ra"
ktap_check "ring attack ran" sh -c "echo '$ra' | grep -q '^ring: [1-9]'"
ktap_check "own reads still right after the attack" same_tree "$pair" "$lower"
ktap_check "verify never found a difference" test "$(stat_of verify_mismatches)" = 0
ktap_diag "counters: $(cd /sys/kernel/vmdedup/stats && grep -- . * | tr '\n' ' ')"
ktap_finish
