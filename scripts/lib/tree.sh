# shellcheck shell=bash
# Builds the trees `scripts/demo` and `scripts/bench ksm` serve to their guests,
# from this host's own files. Source it (after common.sh); do not run it.
#
# Layout of a tree (self-contained: no absolute symlink leaves it, so a guest
# runs it from /shared/NAME or /lower/NAME alike):
#   bin/python3.11                 Debian's interpreter
#   lib/ld-linux-x86-64.so.2       the dynamic loader, and every library the
#   lib/*.so*                      interpreter and its extension modules load
#   lib/python3.11/...             the standard library (PYTHONHOME=<tree>)
#   lib/extra/*.so*                (bench only) more ELF libraries, up to a size
#   workload.py                    what every guest runs: imports modules,
#                                  executes code from the tree
#   files.list                     every regular file, for the readers

# build_tree OUT EXTRA_MB: builds OUT unless its stamp says it is up to date.
# Progress goes to stderr.
build_tree() {
    local out=$1 extra_mb=$2
    local stamp
    stamp="$out/.vmdedup-tree-$( { cat "${BASH_SOURCE[0]}"; echo "$extra_mb"; } | sha256sum | cut -c1-16)"
    if [ -f "$stamp" ]; then
        log "tree up to date: $out ($(du -sm "$out" | cut -f1) MB)"
        return 0
    fi
    local py=/usr/bin/python3.11 stdlib=/usr/lib/python3.11
    { [ -x "$py" ] && [ -d "$stdlib" ]; } || die "Debian's python3.11 is needed for the workload tree (apt-get install python3.11)"
    log "building the workload tree in $out (python3.11, its libraries and standard library$([ "$extra_mb" -gt 0 ] && echo ", $extra_mb MB of ELF libraries"))"
    rm -rf "$out"
    mkdir -p "$out/bin" "$out/lib"
    cp -L "$py" "$out/bin/python3.11"
    log "  copying the standard library ($(du -sm "$stdlib" | cut -f1) MB)"
    # Without site-packages links that point out of the tree.
    cp -rL "$stdlib" "$out/lib/python3.11" 2>/dev/null || cp -r "$stdlib" "$out/lib/python3.11"
    find "$out/lib/python3.11" -type l -delete
    rm -rf "$out/lib/python3.11/site-packages" "$out/lib/python3.11/dist-packages"
    # Libraries of the interpreter and of every extension module.
    local lib
    {
        ldd "$py"
        for lib in "$out"/lib/python3.11/lib-dynload/*.so; do ldd "$lib" 2>/dev/null || true; done
    } | grep -o '/[^ ]*\.so[^ ]*' | sort -u | while read -r lib; do
        [ -e "$lib" ] && cp -L "$lib" "$out/lib/${lib##*/}"
    done
    [ -e "$out/lib/ld-linux-x86-64.so.2" ] || cp -L /lib64/ld-linux-x86-64.so.2 "$out/lib/"
    if [ "$extra_mb" -gt 0 ]; then
        log "  copying $extra_mb MB of ELF libraries from /usr/lib/x86_64-linux-gnu"
        mkdir -p "$out/lib/extra"
        local total=0 size f budget=$(( extra_mb << 20 ))
        while read -r size f; do
            [ $(( total + size )) -le "$budget" ] || continue
            cp -L "$f" "$out/lib/extra/" && total=$(( total + size ))
        done < <(find /usr/lib/x86_64-linux-gnu -maxdepth 1 -type f -name '*.so*' -size +64k -size -16M \
                    -printf '%s %p\n' | sort -k2)
    fi
    cat > "$out/workload.py" <<'PY'
# Executes code from the tree: imports a broad set of standard modules (each
# import opens and maps files under the mount) and uses a few of them.
import importlib, sys, time
t0 = time.monotonic()
names = """abc argparse ast asyncio base64 bisect bz2 calendar collections concurrent.futures
configparser contextlib copy csv ctypes dataclasses datetime decimal difflib email.message
email.parser enum fractions functools gettext glob gzip hashlib heapq hmac html.parser
http.client http.server inspect io ipaddress json logging lzma mailbox mimetypes
multiprocessing numbers operator optparse pathlib pickle pkgutil plistlib pprint queue random
re selectors shlex shutil socket sqlite3 statistics string struct subprocess tarfile tempfile
textwrap threading tokenize traceback typing unittest urllib.parse urllib.request uuid
warnings xml.dom.minidom xml.etree.ElementTree zipfile zoneinfo""".split()
ok = 0
for n in names:
    try:
        importlib.import_module(n)
        ok += 1
    except Exception as e:  # report, keep going
        print("import %s failed: %s" % (n, e))
import json, hashlib, sqlite3, decimal
db = sqlite3.connect(":memory:")
db.execute("create table t(x)")
db.executemany("insert into t values (?)", [(i,) for i in range(1000)])
s = db.execute("select sum(x) from t").fetchone()[0]
h = hashlib.sha256(json.dumps({"sum": s, "d": str(decimal.Decimal(1) / 7)}).encode()).hexdigest()[:12]
print("python: %d/%d modules imported, sqlite sum %d, digest %s, %.1fs" % (ok, len(names), s, h, time.monotonic() - t0))
sys.exit(0 if ok == len(names) else 1)
PY
    (cd "$out" && find . -type f ! -name 'files.list' ! -name '.vmdedup-tree-*' -printf '%P\n' | sort > files.list)
    touch "$stamp"
    log "tree: $(wc -l < "$out/files.list") files, $(du -sm "$out" | cut -f1) MB"
}

# The guest-side command that runs the tree's interpreter from DIR (a path
# inside the guest), with its own loader and libraries.
tree_python() {
    local dir=$1
    printf 'PYTHONHOME=%s PYTHONDONTWRITEBYTECODE=1 %s/lib/ld-linux-x86-64.so.2 --library-path %s/lib %s/bin/python3.11' \
        "$dir" "$dir" "$dir" "$dir"
}
