#!/bin/sh
# Selftest: programs run from vmdedupfs: a static one, and a dynamically linked
# one whose loader and libraries all live under the mount (the loader's
# private, writable data segments included).
# shellcheck source=lib/ktap.sh
. /tests/lib/ktap.sh
# shellcheck source=lib/fs.sh
. /tests/lib/fs.sh
ktap_header 3

fs_load
L=/tmp/fs_exec.lower M=/tmp/fs_exec.mnt
mkdir -p "$L/bin" "$L/lib" "$M"
cp /bin/busybox "$L/bin/"
# A dynamically linked program from the initramfs (scripts/guest-run --add
# brings its libraries), copied with its loader and libraries into the tree.
ld=""; prog=""
for cand in /lib64/ld-linux-x86-64.so.2 /lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 /lib/ld-linux-x86-64.so.2; do
    [ -e "$cand" ] && { ld=$cand; break; }
done
if [ -n "$ld" ]; then
    for p in /usr/bin/* /bin/* /usr/local/bin/*; do
        { [ -f "$p" ] && [ ! -L "$p" ]; } || continue
        "$ld" --list "$p" > /tmp/fs_exec.libs 2>/dev/null || continue
        grep -q 'libc.so' /tmp/fs_exec.libs && { prog=$p; break; }
    done
fi
if [ -n "$prog" ]; then
    cp "$prog" "$L/bin/prog"
    cp -L "$ld" "$L/lib/ld.so"
    grep -o '/[^ ]*\.so[^ ]*' /tmp/fs_exec.libs | while read -r lib; do cp -L "$lib" "$L/lib/"; done
fi
mount -t vmdedupfs -o "ns=fs_exec,lower=$L,verify=full" none "$M"

ktap_check "a static program runs from the mount" sh -c "[ \"\$($M/bin/busybox echo hi)\" = hi ]"
if [ -n "$prog" ]; then
    ktap_diag "dynamic program: $prog ($(grep -c '=>' /tmp/fs_exec.libs) libraries)"
    run_dyn() { "$M/lib/ld.so" --library-path "$M/lib" "$M/bin/prog" --help > /tmp/fs_exec.out 2>&1 || "$M/lib/ld.so" --library-path "$M/lib" "$M/bin/prog" --version > /tmp/fs_exec.out 2>&1; }
    ktap_check "a dynamically linked program runs with its loader and libraries from the mount" run_dyn
    maps_ok() { "$M/lib/ld.so" --library-path "$M/lib" "$M/bin/prog" --version >/dev/null 2>&1; [ -s /tmp/fs_exec.out ]; }
    ktap_check "the same program runs a second time (answers kept with the inodes)" maps_ok
else
    ktap_skip "a dynamically linked program runs with its loader and libraries from the mount" "no dynamically linked program in the guest (scripts/guest-run --add one)"
    ktap_skip "the same program runs a second time (answers kept with the inodes)" "no dynamically linked program in the guest"
fi
umount "$M"
rm -rf "$L"
ktap_finish
