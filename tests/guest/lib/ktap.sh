# shellcheck shell=sh
# KTAP output helpers for the in-guest selftests (busybox sh). Source it.
#   ktap_header N          print the header and the plan
#   ktap_pass DESC         ok
#   ktap_fail DESC [WHY]   not ok (WHY goes in a diagnostic line first)
#   ktap_skip DESC WHY     ok ... # SKIP WHY
#   ktap_check DESC CMD..  ok if CMD succeeds, else not ok
#   ktap_run DESC CMD..    ktap_check that keeps CMD's "# " lines as diagnostics
#   ktap_skip_from N WHY   skip test points N..plan (described by $T<n>), finish, exit
#   ktap_finish            exit 0 if nothing failed and the plan was met
KTAP_N=0
KTAP_PLAN=0
KTAP_FAILED=0
ktap_header() { KTAP_PLAN=$1; echo "KTAP version 1"; echo "1..$1"; }
ktap_diag() { echo "# $*"; }
ktap_pass() { KTAP_N=$((KTAP_N + 1)); echo "ok $KTAP_N $1"; }
ktap_fail() {
    KTAP_N=$((KTAP_N + 1)); KTAP_FAILED=$((KTAP_FAILED + 1))
    [ -n "${2:-}" ] && echo "# $1: $2"
    echo "not ok $KTAP_N $1"
}
ktap_skip() { KTAP_N=$((KTAP_N + 1)); echo "ok $KTAP_N $1 # SKIP $2"; }
ktap_check() {
    desc=$1; shift
    if out=$("$@" 2>&1); then ktap_pass "$desc"; else ktap_fail "$desc" "$(echo "$out" | tail -n 3 | tr '\n' ' ')"; fi
}
ktap_run() {
    desc=$1; shift
    if out=$("$@" 2>&1); then echo "$out" | grep '^# ' || true; ktap_pass "$desc"
    else ktap_fail "$desc" "$(echo "$out" | tail -n 3 | tr '\n' ' ')"; fi
}
ktap_skip_from() {
    _n=$1 _t=""
    while [ "$_n" -le "$KTAP_PLAN" ]; do eval "_t=\$T$_n"; ktap_skip "$_t" "$2"; _n=$((_n + 1)); done
    ktap_finish; exit $?
}
ktap_finish() {
    if [ "$KTAP_N" -ne "$KTAP_PLAN" ]; then
        echo "# planned $KTAP_PLAN tests but ran $KTAP_N"
        exit 1
    fi
    echo "# totals: $((KTAP_N - KTAP_FAILED)) ok, $KTAP_FAILED not ok"
    [ "$KTAP_FAILED" -eq 0 ]
}
# Reads one sysfs value (empty if absent).
sysval() { cat "/sys/kernel/vmdedup/$1" 2>/dev/null || true; }
# True if $1 equals $2, with a diagnostic otherwise.
expect_eq() {
    if [ "$1" = "$2" ]; then return 0; fi
    echo "expected '$2', got '$1'" >&2
    return 1
}
