# shellcheck shell=sh
# The distribution guests' workload, sourced by demo-distro-guest.sh (the
# demo) and bench-distro-guest.sh (scripts/bench ksm --distro), from the
# directory they run in: a server's and a developer's programs from the
# image, run as root:
#   distro_workload PASSES   PASSES times: Python with imports, Perl, gcc
#                            compiling and running a small program,
#                            apt-cache queries, an HTTP fetch from the local
#                            nginx. Prints "DEMO-PHASE pass P: WHAT" before
#                            each program and "DEMO-ERROR WHAT failed: ..."
#                            for one that failed; returns 1 if any did.
distro_step() {
    _what=$1; shift
    "$@" > /tmp/distro-step.out 2>&1 || {
        echo "DEMO-ERROR $_what failed: $(tail -n 2 /tmp/distro-step.out | tr '\n' ' ')"
        _distro_rc=1
    }
}
distro_workload() {
    _distro_rc=0
    _p=1
    while [ "$_p" -le "$1" ]; do
        echo "DEMO-PHASE pass $_p: python3 with imports"
        distro_step python3 python3 -c '
import json, email.parser, http.client, xml.dom.minidom, sqlite3, decimal, argparse, unittest, asyncio
import urllib.request, csv, logging, zipfile, tarfile, hashlib, statistics, difflib, textwrap
print(json.dumps({"sqlite": sqlite3.sqlite_version, "sum": str(sum(decimal.Decimal(i) / 7 for i in range(1000)))}))'
        echo "DEMO-PHASE pass $_p: perl"
        # shellcheck disable=SC2016 # Perl code, for perl to expand
        distro_step perl perl -MPOSIX -MData::Dumper -MFile::Find -MGetopt::Long -MTime::Local -e 'my $n = 0; find(sub { $n++ }, "/usr/share/perl"); print Dumper($n);'
        echo "DEMO-PHASE pass $_p: gcc"
        printf '#include <stdio.h>\n#include <math.h>\nint main(void){double s=0;for(int i=1;i<100000;i++)s+=1.0/i;printf("%%f\\n",s);return 0;}\n' > /tmp/distro-demo.c
        distro_step gcc gcc -O2 -o /tmp/distro-demo /tmp/distro-demo.c -lm
        distro_step "the program gcc built" /tmp/distro-demo
        echo "DEMO-PHASE pass $_p: apt-cache"
        distro_step apt-cache sh -c 'apt-cache show python3 perl gcc > /dev/null && apt-cache depends systemd > /dev/null && apt-cache policy nginx-light > /dev/null'
        echo "DEMO-PHASE pass $_p: curl to the local nginx"
        distro_step "curl to nginx" curl -fsS -o /dev/null http://127.0.0.1/
        echo "DEMO-READ pass $_p: python3, perl, gcc, apt-cache, curl"
        _p=$((_p + 1))
    done
    return "$_distro_rc"
}
