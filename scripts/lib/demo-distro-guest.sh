#!/bin/sh
# Runs inside every `scripts/demo --distro` guest (Debian, systemd, root =
# overlay over vmdedupfs over the shared image; see docs/distro.md), as the
# boot's command unit. PASSES times, a server's and a developer's programs
# from the image: Python with imports, Perl, gcc compiling a small program,
# apt-cache queries and an HTTP fetch from the local nginx. Prints the same
# DEMO-STATS / DEMO-PHASE / DEMO-MEMINFO / DEMO-DONE lines as the busybox
# demo guests (scripts/lib/demo-guest.sh), for the host's live table.
passes=${1:-2}
# shellcheck source=demo-report.sh
. "$(dirname "$0")/demo-report.sh"
demo_ticker_start
# Boot done (this unit starts once multi-user.target is reached); the
# host's monitor samples each guest's RAM when this line is out.
systemctl is-system-running --wait > /dev/null 2>&1
echo "booted: $(systemctl is-system-running 2>&1), root $(findmnt -n -o FSTYPE /) over $(findmnt -n -o FSTYPE /run/vmdedupfs/shared 2>/dev/null || echo 'the image alone')"
echo "DEMO-PHASE ready"
sleep 3
rc=0
step() {
    what=$1; shift
    "$@" > /tmp/demo-step.out 2>&1 || { echo "DEMO-ERROR $what failed: $(tail -n 2 /tmp/demo-step.out | tr '\n' ' ')"; rc=1; }
}
p=1
while [ "$p" -le "$passes" ]; do
    echo "DEMO-PHASE pass $p: python3 with imports"
    step python3 python3 -c '
import json, email.parser, http.client, xml.dom.minidom, sqlite3, decimal, argparse, unittest, asyncio
import urllib.request, csv, logging, zipfile, tarfile, hashlib, statistics, difflib, textwrap
print(json.dumps({"sqlite": sqlite3.sqlite_version, "sum": str(sum(decimal.Decimal(i) / 7 for i in range(1000)))}))'
    echo "DEMO-PHASE pass $p: perl"
    # shellcheck disable=SC2016 # Perl code, for perl to expand
    step perl perl -MPOSIX -MData::Dumper -MFile::Find -MGetopt::Long -MTime::Local -e 'my $n = 0; find(sub { $n++ }, "/usr/share/perl"); print Dumper($n);'
    echo "DEMO-PHASE pass $p: gcc"
    printf '#include <stdio.h>\n#include <math.h>\nint main(void){double s=0;for(int i=1;i<100000;i++)s+=1.0/i;printf("%%f\\n",s);return 0;}\n' > /tmp/demo.c
    step gcc gcc -O2 -o /tmp/demo /tmp/demo.c -lm
    step "the program gcc built" /tmp/demo
    echo "DEMO-PHASE pass $p: apt-cache"
    step apt-cache sh -c 'apt-cache show python3 perl gcc > /dev/null && apt-cache depends systemd > /dev/null && apt-cache policy nginx-light > /dev/null'
    echo "DEMO-PHASE pass $p: curl to the local nginx"
    step "curl to nginx" curl -fsS -o /dev/null http://127.0.0.1/
    echo "DEMO-READ pass $p: python3, perl, gcc, apt-cache, curl"
    p=$((p + 1))
done
demo_finish "$rc"
