# shellcheck shell=sh
# Helpers for the vmdedupfs selftests (busybox sh). Source after ktap.sh.
#   fs_load                 insmod vmdedup.ko unless it is loaded
#   fs_make_tree DIR        fill DIR with a test tree from the initramfs
#   fs_nsid NAME            the agent's id of namespace NAME (empty if none)
#   stat_of NAME            one counter from /sys/kernel/vmdedup/stats
#   stat_above NAME BASE T  wait until counter NAME is above BASE, T tenths of a second at most
#   same_tree A B           sha256 of every file under A equals the one under B
#   pool_served FILE...     read each FILE until a read takes pool pages
#   watch_both, watch_end   mmapwatch a file through a shared and a private mapping
#   host_settled            the agent's view: this VM owes no acknowledgement, not cut off
#   host_count NAME         the agent's view: this VM's pages_mapped, maps_held, ...
fs_load() {
    lsmod | grep -q '^vmdedup ' || insmod /lib/modules/vmdedup.ko
}
fs_make_tree() {
    d=$1
    mkdir -p "$d/sub/deep" "$d/bin"
    cp /bin/busybox "$d/bin/busybox"
    cp -r /tests "$d/tests"
    cp /lib/modules/vmdedup.ko "$d/sub/vmdedup.ko"
    # Sizes around page boundaries, and an empty file.
    : > "$d/empty"
    for n in 1 4095 4096 4097 12288 65537; do
        dd if=/bin/busybox of="$d/sub/deep/f$n" bs=1 count=$n 2>/dev/null
    done
    echo hello > "$d/sub/deep/hello.txt"
    ln -s sub/deep/hello.txt "$d/link"
    ln -s /etc/vmdedup "$d/abs-link"
    mkfifo "$d/fifo" 2>/dev/null || true
}
fs_nsid() {
    sed -n "s/^$1 \([0-9]*\)$/\1/p" /etc/vmdedup/namespace-ids 2>/dev/null
}
stat_of() { cat "/sys/kernel/vmdedup/stats/$1" 2>/dev/null || echo 0; }
# stat_above NAME BASE TENTHS: polls counter NAME every 0.1 s until it is
# above BASE; fails if it is not within TENTHS tenths of a second (the
# caller's check that follows says what it expected).
stat_above() {
    for _ in $(seq 1 "$3"); do
        [ "$(stat_of "$1")" -gt "$2" ] && return 0
        sleep 0.1
    done
    return 1
}
same_tree() {
    # -exec, not xargs: names may hold spaces and quotes.
    (cd "$1" && find . -type f -exec sha256sum {} + | sort -k 2) > /tmp/same.a 2>&1 || { tail -n 3 /tmp/same.a; return 1; }
    (cd "$2" && find . -type f -exec sha256sum {} + | sort -k 2) > /tmp/same.b 2>&1 || { tail -n 3 /tmp/same.b; return 1; }
    [ -s /tmp/same.a ] || { echo "no files under $1"; return 1; }
    cmp -s /tmp/same.a /tmp/same.b || { diff /tmp/same.a /tmp/same.b | head -n 5; return 1; }
}
# pool_served FILE...: reads every FILE until each read takes pages from pool
# frames (the first hint is answered "loading"; the answer may come on the
# timer). Fails after about 12 s with the files that never were.
pool_served() {
    for _pf in "$@"; do
        _ok=0
        for _ in $(seq 1 40); do
            _p0=$(stat_of pages_pool)
            cat "$_pf" > /dev/null
            [ "$(stat_of pages_pool)" -gt "$_p0" ] && { _ok=1; break; }
            sleep 0.3
        done
        [ "$_ok" = 1 ] || { echo "never served from the pool: $_pf (answers: $(cd /sys/kernel/vmdedup/stats && grep . answers_* | tr '\n' ' '))" >&2; return 1; }
    done
}
# host_settled: polls the agent's view of this VM (vmdedup-guest status) for
# about 10 s until it owes no acknowledgement (revocations_pending 0) and is
# not cut off; fails with the VM's lines otherwise.
host_settled() {
    for _ in $(seq 1 50); do
        vmdedup-guest status > /tmp/host_settled.status 2>&1 || { tail -n 2 /tmp/host_settled.status; return 1; }
        if grep -q 'revocations_pending 0$' /tmp/host_settled.status && ! grep -q 'CUT OFF' /tmp/host_settled.status; then
            return 0
        fi
        sleep 0.2
    done
    grep -A1 '^  vm ' /tmp/host_settled.status
    return 1
}
# host_count NAME: this VM's NAME (pages_mapped, maps_held,
# revocations_pending) as the agent reports it through vmdedup-guest status;
# empty when the agent cannot be asked.
host_count() {
    vmdedup-guest status 2> /dev/null | sed -n "s/.*  $1 \([0-9]*\).*/\1/p" | head -n 1
}
# served_mount: sets M to the first vmdedupfs mount an agent serves (nsid=)
# and L to its lower directory; fails (M empty) when there is none.
served_mount() {
    M=$(awk '$3 == "vmdedupfs" && $4 ~ /nsid=/ { print $2; exit }' /proc/mounts)
    # shellcheck disable=SC2034 # L is for the caller, like M
    L=$(awk -v m="$M" '$2 == m { n = split($4, o, ","); for (i = 1; i <= n; i++) if (o[i] ~ /^lower=/) print substr(o[i], 7) }' /proc/mounts)
    [ -n "$M" ]
}
# watch_both FILE LOWER STOPFILE OUT TIMEOUT: two mmapwatch processes on FILE
# until STOPFILE exists, a shared mapping (output in OUT.shared) and a private
# one with pages written (OUT.private); returns once both mapped (or one
# died). Sets W1 and W2 to their pids. Needs $WATCH (the mmapwatch path).
watch_both() {
    "$WATCH" "$1" "$2" "$3" "$5" > "$4.shared" 2>&1 &
    W1=$!
    "$WATCH" "$1" "$2" "$3" "$5" private > "$4.private" 2>&1 &
    W2=$!
    for _ in $(seq 1 300); do
        grep -q 'mmapwatch: mapped' "$4.shared" 2>/dev/null && grep -q 'mmapwatch: mapped' "$4.private" 2>/dev/null && return 0
        kill -0 "$W1" 2>/dev/null && kill -0 "$W2" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}
# watch_end STOPFILE OUT: stops the watch_both processes (creates STOPFILE),
# waits for both and shows what they printed; succeeds if both exited 0 and
# read lower's bytes at every page throughout ("all equal").
watch_end() {
    touch "$1"
    wait "$W1"; _r1=$?
    wait "$W2"; _r2=$?
    ktap_diag "mmapwatch shared (status $_r1): $(tr '\n' ' ' < "$2.shared")"
    ktap_diag "mmapwatch private (status $_r2): $(tr '\n' ' ' < "$2.private")"
    [ "$_r1" = 0 ] && [ "$_r2" = 0 ] && grep -q 'all equal' "$2.shared" && grep -q 'all equal' "$2.private"
}
# treecheck_tree MOUNT LOWER: every file under MOUNT through odd-sized reads,
# pread at odd offsets, a shared and a private mmap, against LOWER
# (tests/guest/tools/treecheck.c); its summary as "# " lines. Needs $TREECHECK.
treecheck_tree() {
    "$TREECHECK" "$1" "$2" > /tmp/treecheck.out 2>/dev/null; _rc=$?
    tail -n 5 /tmp/treecheck.out | sed 's/^/# /'
    return $_rc
}
