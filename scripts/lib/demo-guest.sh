#!/bin/sh
# Runs inside every scripts/demo guest (busybox sh). For each namespace mounted
# at /shared/NAME: runs the tree's Python workload when the tree has one (see
# scripts/lib/tree.sh), then reads every regular file, PASSES times. The first
# pass of the first guest to open a file is served from the lower disk while
# the host loads it into the pool; later opens are served from the pool.
# Prints DEMO-STATS lines (the module's counters) every second for the host's
# live table, DEMO-PHASE lines as it goes, and DEMO-DONE at the end.
passes=${1:-2}
# shellcheck source=demo-report.sh
. "$(dirname "$0")/demo-report.sh"
demo_ticker_start
# The host's monitor samples each guest's RAM (smaps) once this line is out:
# that is the "before the workload" figure the summary's increment starts at.
echo "DEMO-PHASE ready"
sleep 3
rc=0
# One name a line, none with spaces (scripts/guest-run checks them).
namespaces=$(cat /etc/vmdedup/namespaces)
for ns in $namespaces; do
    m=/shared/$ns
    [ -d "$m" ] || { echo "DEMO-ERROR $m is not mounted"; rc=1; continue; }
    p=1
    while [ "$p" -le "$passes" ]; do
        if [ -x "$m/bin/python3.11" ] && [ -f "$m/workload.py" ]; then
            echo "DEMO-PHASE $ns pass $p: python from $m"
            PYTHONHOME=$m PYTHONDONTWRITEBYTECODE=1 "$m/lib/ld-linux-x86-64.so.2" --library-path "$m/lib" \
                "$m/bin/python3.11" "$m/workload.py" || { echo "DEMO-ERROR python failed"; rc=1; }
        fi
        echo "DEMO-PHASE $ns pass $p: reading every file under $m"
        n=$(find "$m" -type f | wc -l)
        find "$m" -type f -print0 | xargs -0 cat > /dev/null || { echo "DEMO-ERROR reading $m failed"; rc=1; }
        echo "DEMO-READ $ns pass $p: $n files"
        p=$((p + 1))
    done
done
demo_finish "$rc"
