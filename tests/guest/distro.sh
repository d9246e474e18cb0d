#!/bin/sh
# Selftest: a Debian guest booted by systemd from the shared image, with the
# root an overlay over vmdedupfs over that image (scripts/guest-run --distro).
# Runs from vmdedup-command.service once multi-user.target is reached.
#   DISTRO_ABSENT=1: the guest was booted with no host agent; it must still
#   reach multi-user.target, from the image alone (or through vmdedupfs with
#   every file read from the lower: the module may load and mount with no
#   agent serving the ring). This guest also runs the host agent's systemd
#   unit (staged in /tests/install by tests/run).
# shellcheck source=lib/ktap.sh
. /tests/lib/ktap.sh
# shellcheck source=lib/fs.sh
. /tests/lib/fs.sh

# Every unit that failed, by name; an empty list when none did.
failed_units() { systemctl list-units --state=failed --no-legend --plain | awk '{ print $1 }' | tr '\n' ' '; }

booted() {
    # --wait: until the boot transaction is done (this unit is Type=exec,
    # so it does not hold the boot up).
    st=$(timeout 300 systemctl is-system-running --wait 2>&1)
    [ "$st" = running ] && return 0
    echo "system is '$st'; failed units: $(failed_units)"
    return 1
}
multi_user() {
    systemctl is-active --quiet multi-user.target || { echo "multi-user.target is $(systemctl is-active multi-user.target)"; return 1; }
    for u in nginx.service cron.service; do
        systemctl is-active --quiet "$u" || { echo "$u is $(systemctl is-active "$u")"; return 1; }
    done
    [ "$(cat /proc/1/comm)" = systemd ] || { echo "PID 1 is $(cat /proc/1/comm)"; return 1; }
}

lower_only() {
    n=$(stat_of pages_pool)
    [ "$n" = 0 ] || { echo "$n pages came from a pool with no agent"; return 1; }
}

# The host agent's own systemd unit, run by this guest's systemd (a real
# systemd 252 as PID 1, which the build machine has not): the files
# `scripts/install --destdir` staged are in /tests/install. It must start
# under its whole sandbox (Type=notify: READY=1 once it serves), run as the
# vmdedup user with its files private and its control socket open to the
# group, score at most 3.0 in systemd-analyze security, and stop cleanly.
agent_unit() {
    [ -d /tests/install ] || { echo "no staged install in /tests/install"; return 1; }
    cp -a /tests/install/. / || return 1
    systemd-sysusers || { echo "systemd-sysusers failed"; return 1; }
    getent passwd vmdedup > /dev/null || { echo "no vmdedup user"; return 1; }
    mkdir -p /srv/ns && cp /etc/os-release /srv/ns/
    vmdedup config new --ns "etc=/srv/ns" --vm vm1 --pool-size 16M -o /etc/vmdedup/vmdedup.toml || return 1
    sed -i '1i control_group = "vmdedup"' /etc/vmdedup/vmdedup.toml
    systemctl daemon-reload
    systemctl start vmdedup || { journalctl -u vmdedup --no-pager | tail -n 3; return 1; }
    [ "$(systemctl is-active vmdedup)" = active ] || { echo "vmdedup is $(systemctl is-active vmdedup)"; return 1; }
    systemctl show -p StatusText vmdedup | grep -q 'StatusText=serving 1 VM' \
        || { echo "no READY status: $(systemctl show -p StatusText vmdedup)"; return 1; }
    for f in /dev/shm/vmdedup.pool /dev/shm/vmdedup-vm1.ring; do
        [ "$(stat -c '%U %a' "$f")" = "vmdedup 600" ] || { echo "$f: $(stat -c '%U %a' "$f")"; return 1; }
    done
    [ "$(stat -c '%G %a' /run/vmdedup/control.sock)" = "vmdedup 660" ] \
        || { echo "control socket: $(stat -c '%G %a' /run/vmdedup/control.sock)"; return 1; }
    vmdedup vms --json --control /run/vmdedup/control.sock | grep -q '"name": "vm1"' \
        || { echo "vmdedup vms does not list vm1"; return 1; }
    score=$(systemd-analyze security vmdedup.service --no-pager | sed -n 's/.*Overall exposure level for vmdedup.service: \([0-9.]*\).*/\1/p')
    echo "# systemd-analyze security vmdedup.service: $score"
    awk -v s="$score" 'BEGIN { exit !(s != "" && s <= 3.0) }' || { echo "exposure $score, above 3.0"; return 1; }
    systemctl stop vmdedup
    [ "$(systemctl is-active vmdedup)" = inactive ] || { echo "after stop: $(systemctl is-active vmdedup)"; return 1; }
    journalctl -u vmdedup --no-pager | grep -q 'agent stopped' || { echo "no 'agent stopped' in the journal"; return 1; }
}

if [ "${DISTRO_ABSENT:-0}" = 1 ]; then
    ktap_header 4
    ktap_check "multi-user.target reached with nginx and cron, systemd as PID 1" multi_user
    ktap_check "system running, no failed unit" booted
    ktap_check "no page came from the pool" lower_only
    ktap_run "the agent's unit starts, serves and stops under systemd" agent_unit
    ktap_finish; exit $?
fi

ktap_header 8
ktap_check "multi-user.target reached with nginx and cron, systemd as PID 1" multi_user
ktap_check "system running, no failed unit" booted

stack() {
    fs=$(findmnt -n -o FSTYPE /)
    [ "$fs" = overlay ] || { echo "/ is $fs, not overlay"; return 1; }
    opts=$(findmnt -n -o OPTIONS /)
    case ",$opts," in
        *,lowerdir=/run/vmdedupfs/shared,*) ;;
        *) echo "the root overlay's lower is not /run/vmdedupfs/shared: $opts"; return 1 ;;
    esac
    fs=$(findmnt -n -o FSTYPE /run/vmdedupfs/shared)
    [ "$fs" = vmdedupfs ] || { echo "/run/vmdedupfs/shared is '$fs', not vmdedupfs"; return 1; }
    case ",$(findmnt -n -o OPTIONS /run/vmdedupfs/shared)," in
        *,lower=/run/vmdedupfs/lower,*) ;;
        *) echo "vmdedupfs's lower is not /run/vmdedupfs/lower"; return 1 ;;
    esac
    fs=$(findmnt -n -o FSTYPE /run/vmdedupfs/lower)
    [ "$fs" = ext4 ] || { echo "/run/vmdedupfs/lower is '$fs', not the ext4 image"; return 1; }
}
ktap_check "root is an overlay over vmdedupfs over the image" stack

# exec_from_pool PID FILE: the process maps FILE's code from pool frames:
# its executable mapping of FILE is a mixed map (VmFlags "mm"), which only
# pool mappings are (lower file mappings are ordinary page cache).
exec_from_pool() {
    awk -v f="$2" '
        /^[0-9a-f]+-[0-9a-f]+ / { cur = ($2 ~ /x/ && $6 == f) }
        cur && /^VmFlags:/ { for (i = 2; i <= NF; i++) if ($i == "mm") found = 1 }
        END { exit !found }' "/proc/$1/smaps"
}
# run_from_pool NAME FILE CMD...: starts CMD (a program that stays up a few
# seconds) until its mapping of FILE comes from the pool; the first runs
# may map the lower file while the host loads it.
run_from_pool() {
    _name=$1 _file=$2; shift 2
    for _ in $(seq 1 20); do
        "$@" > /dev/null 2>&1 &
        _pid=$!
        sleep 1
        if exec_from_pool "$_pid" "$_file"; then kill "$_pid" 2>/dev/null; wait "$_pid" 2>/dev/null; return 0; fi
        kill "$_pid" 2>/dev/null; wait "$_pid" 2>/dev/null
    done
    echo "$_name never mapped $_file from the pool (mmap_pool_exec $(stat_of mmap_pool_exec), mmap_lower $(stat_of mmap_lower))"
    return 1
}
# systemd_from_pool: PID 1 mapped systemd before any answer could come, so
# it re-executes itself (systemctl daemon-reexec) until its code comes from
# pool frames.
systemd_from_pool() {
    for _ in $(seq 1 10); do
        exec_from_pool 1 /usr/lib/systemd/systemd && return 0
        systemctl daemon-reexec || { echo "systemctl daemon-reexec failed"; return 1; }
        sleep 1
    done
    echo "PID 1 never mapped /usr/lib/systemd/systemd from the pool (mmap_pool_exec $(stat_of mmap_pool_exec))"
    return 1
}
pool_exec() {
    e0=$(stat_of mmap_pool_exec)
    [ "$e0" -gt 0 ] || { echo "no executable mapping from the pool since boot"; return 1; }
    systemd_from_pool || return 1
    run_from_pool python3 /usr/bin/python3.11 python3 -c 'import json, email.parser, http.client, time; time.sleep(3)' || return 1
    run_from_pool perl /usr/bin/perl perl -MPOSIX -e 'sleep 3' || return 1
    [ "$(stat_of mmap_pool_exec)" -gt "$e0" ] || { echo "mmap_pool_exec did not move"; return 1; }
}
ktap_check "systemd, python3 and perl run code from pool frames" pool_exec

# A workload of real programs works on this root.
workload() {
    python3 -c 'import json, sqlite3; print(json.dumps({"ok": sqlite3.sqlite_version}))' | grep -q '"ok"' \
        || { echo "python3 failed"; return 1; }
    perl -MData::Dumper -e 'print Dumper([1]);' | grep -q VAR1 || { echo "perl failed"; return 1; }
    printf '#include <stdio.h>\nint main(void){puts("built");return 0;}\n' > /tmp/t.c
    gcc -O1 -o /tmp/t /tmp/t.c || { echo "gcc failed"; return 1; }
    [ "$(/tmp/t)" = built ] || { echo "the program gcc built did not run"; return 1; }
    apt-cache show coreutils | grep -q '^Package: coreutils' || { echo "apt-cache failed"; return 1; }
    curl -fsS http://127.0.0.1/ | grep -qi nginx || { echo "nginx did not answer on 127.0.0.1"; return 1; }
}
ktap_check "python3, perl, gcc, apt-cache and curl to nginx work" workload

# Every file under /usr (but /usr/local, where this test's programs are),
# read through the root (overlay, vmdedupfs), holds
# the image's bytes by read, pread, and shared and private mmap; the guest
# runs with verify=full, which compares every pool page as it is served.
usr_same() {
    [ "$(awk '$2 == "/run/vmdedupfs/shared" { print $4 }' /proc/mounts | tr ',' '\n' | grep '^verify=')" = verify=full ] \
        || { echo "the mount is not verify=full"; return 1; }
    p0=$(stat_of pages_pool)
    # /usr/local/bin holds this test's own programs, in the upper layer.
    for d in /usr/*; do
        [ "$d" = /usr/local ] || [ -L "$d" ] && continue
        # treecheck wants at least one file (/usr/games and /usr/src are empty).
        [ -n "$(find "$d" -type f -print -quit)" ] || continue
        treecheck "$d" "/run/vmdedupfs/lower$d" > /tmp/treecheck.out 2>&1 || { tail -n 3 /tmp/treecheck.out; return 1; }
        echo "# $d: $(tail -n 1 /tmp/treecheck.out)"
    done
    [ "$(stat_of verify_mismatches)" = 0 ] || { echo "verify_mismatches $(stat_of verify_mismatches)"; return 1; }
    [ "$(stat_of pages_pool)" -gt "$p0" ] || { echo "no page of /usr came from the pool"; return 1; }
}
ktap_run "every file under /usr equals the image" usr_same

upper() {
    echo "written by $VMDEDUP_GUEST" > /etc/vmdedup-selftest
    [ "$(cat /run/vmdedupfs/rw/upper/etc/vmdedup-selftest 2>/dev/null)" = "written by $VMDEDUP_GUEST" ] \
        || { echo "/etc/vmdedup-selftest is not in the upper layer"; return 1; }
    [ ! -e /run/vmdedupfs/lower/etc/vmdedup-selftest ] || { echo "the write reached the image"; return 1; }
    [ ! -e /run/vmdedupfs/shared/etc/vmdedup-selftest ] || { echo "the write shows in vmdedupfs"; return 1; }
}
ktap_check "a file written under /etc lands in the upper layer" upper

no_fallback() {
    n=$(stat_of fallbacks)
    [ "$n" = 0 ] || { echo "$n fallbacks"; return 1; }
}
ktap_check "no fallback" no_fallback
ktap_finish
