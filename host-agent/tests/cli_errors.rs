//! Every error `vmdedup` prints, as an operator meets it: a table of bad
//! inputs run through the real binary. Each must end with the documented
//! exit status and print one message in words on standard error that names
//! what it is about (the file, key, VM or namespace), with no panic, no
//! Rust `Debug` rendering and no clause said twice.
//!
//! The exit statuses (docs/install.md): 2 for a command line clap refuses,
//! [`EXIT_REFUSED`] (3) when the agent refused, [`EXIT_UNREACHABLE`] (4)
//! when it could not be reached, [`EXIT_CONFIG`] (78, `EX_CONFIG`) for a
//! configuration or host not fit to serve, 1 for anything else.
//!
//! Rows that need root (a tmpfs of their own, another user) are skipped
//! without it, and the skips are counted and printed.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::process::spawn_agent;
use common::SmallTmpfs;

const BIN: &str = env!("CARGO_BIN_EXE_vmdedup");

/// A command line clap refuses.
const EXIT_USAGE: i32 = 2;
/// A configuration, or the host it would run on, not fit to serve.
const EXIT_CONFIG: i32 = 78;
/// Anything else: the agent unreachable or refusing, a file unusable.
const EXIT_FAILURE: i32 = 1;
/// The agent refused the request.
const EXIT_REFUSED: i32 = 3;
/// The agent could not be reached.
const EXIT_UNREACHABLE: i32 = 4;

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// One bad input.
struct Case {
    /// What the row is about (printed on failure).
    what: &'static str,
    args: Vec<String>,
    /// Extra environment.
    env: Vec<(&'static str, String)>,
    /// Run as this uid (root only).
    uid: Option<u32>,
    code: i32,
    /// Each must appear in the message: the thing it is about and, where
    /// the operator has something to do, a word of what.
    names: Vec<String>,
}

fn case(what: &'static str, code: i32, args: &[&str], names: &[&str]) -> Case {
    Case {
        what,
        args: args.iter().map(|a| a.to_string()).collect(),
        env: Vec::new(),
        uid: None,
        code,
        names: names.iter().map(|n| n.to_string()).collect(),
    }
}

fn run(c: &Case) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(&c.args)
        .env("VMDEDUP_LOG", "warn")
        .env_remove("VMDEDUP_CONTROL");
    for (k, v) in &c.env {
        cmd.env(k, v);
    }
    if let Some(uid) = c.uid {
        cmd.uid(uid).gid(uid);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A hang guard, not a timing assertion: a row that should fail at
    // once but serves instead is stopped and reported.
    let give_up = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > give_up {
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// A Rust `Debug` rendering in `line`: `Name(123)`, `{ `, `Os {`, `kind:`.
fn debug_shape(line: &str) -> Option<String> {
    for bad in ["{ ", "Os {", "kind:", "Some(", "None", "\\\""] {
        if line.contains(bad) {
            return Some(bad.to_string());
        }
    }
    // \w+\(\d+\)
    let b = line.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        if c != b'(' || i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_') {
            continue;
        }
        let digits = b[i + 1..].iter().take_while(|d| d.is_ascii_digit()).count();
        if digits > 0 && b.get(i + 1 + digits) == Some(&b')') {
            return Some(line[i.saturating_sub(16)..(i + 2 + digits)].to_string());
        }
    }
    None
}

/// A clause said twice in one line: the segments between `": "`, or a
/// path named twice.
fn repeated_clause(line: &str) -> Option<String> {
    let body = line.strip_prefix("vmdedup: error: ").unwrap_or(line);
    let segs: Vec<&str> = body.split(": ").map(str::trim).collect();
    for (i, a) in segs.iter().enumerate() {
        if a.len() > 2 && segs[i + 1..].contains(a) {
            return Some(a.to_string());
        }
    }
    let paths: Vec<&str> = body
        .split_whitespace()
        .map(|t| t.trim_matches(|c: char| ":,;()\"'`".contains(c)))
        .filter(|t| t.len() > 1 && t.starts_with('/'))
        .collect();
    for (i, p) in paths.iter().enumerate() {
        if paths[i + 1..].contains(p) {
            return Some(p.to_string());
        }
    }
    None
}

/// `text` with every path among `names` replaced by a placeholder of its
/// own, so that the shape checks judge the message's words, not the
/// directory names the test happened to get.
fn placeholders(text: &str, names: &[String]) -> String {
    let mut out = text.to_string();
    let mut paths: Vec<&String> = names.iter().filter(|n| n.starts_with('/')).collect();
    // Longest first: a path that extends another is replaced whole.
    paths.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for (i, p) in paths.iter().enumerate() {
        out = out.replace(p.as_str(), &format!("/named{i}"));
    }
    out
}

/// Everything wrong with what `c` printed.
fn judge(c: &Case, o: &Output) -> Vec<String> {
    let err = String::from_utf8_lossy(&o.stderr);
    let mut bad = Vec::new();
    if o.status.code() != Some(c.code) {
        bad.push(format!("exit {:?}, expected {}", o.status.code(), c.code));
    }
    if err.trim().is_empty() {
        bad.push("nothing on standard error".into());
    }
    if err.contains("panicked") || err.contains("RUST_BACKTRACE") {
        bad.push("panicked".into());
    }
    for line in placeholders(&err, &c.names).lines() {
        if let Some(d) = debug_shape(line) {
            bad.push(format!("Debug rendering {d:?} in {line:?}"));
        }
        if let Some(r) = repeated_clause(line) {
            bad.push(format!("{r:?} said twice in {line:?}"));
        }
    }
    for n in &c.names {
        if !err.contains(n.as_str()) {
            bad.push(format!("does not name {n:?}"));
        }
    }
    bad
}

/// Runs every row, then fails once with every row that went wrong.
fn check_all(cases: &[Case], skipped: &[&str]) {
    let mut failures = Vec::new();
    for c in cases {
        let o = run(c);
        let bad = judge(c, &o);
        let err = String::from_utf8_lossy(&o.stderr);
        eprintln!("--- {}: {:?}\n{err}", c.what, c.args);
        if !bad.is_empty() {
            failures.push(format!(
                "{} (vmdedup {}):\n  {}\n  stderr: {err}",
                c.what,
                c.args.join(" "),
                bad.join("\n  ")
            ));
        }
    }
    eprintln!(
        "{} rows run, {} failed, {} skipped",
        cases.len(),
        failures.len(),
        skipped.len()
    );
    for s in skipped {
        eprintln!("skipped: {s}");
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// A directory removed when dropped, named without characters the checks
/// look for (`common::TempDir` names hold a `ThreadId(N)`).
struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A directory with what the rows need: a tree, good and bad config
/// files, files that are not what they are called.
struct Fixture {
    d: Dir,
}

impl Fixture {
    fn new(tag: &str) -> Self {
        let d = Dir(std::env::temp_dir().join(format!("vmdedup-{tag}-{}", std::process::id())));
        let _ = std::fs::remove_dir_all(&d.0);
        std::fs::create_dir_all(d.0.join("tree/sub")).unwrap();
        std::fs::write(d.0.join("tree/f"), b"x").unwrap();
        Fixture { d }
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.d.0.join(rel)
    }

    fn ps(&self, rel: &str) -> String {
        s(&self.p(rel))
    }

    fn write(&self, rel: &str, text: &str) -> String {
        std::fs::write(self.p(rel), text).unwrap();
        self.ps(rel)
    }

    /// Options that keep `serve` inside the fixture.
    fn serve_args(&self) -> Vec<String> {
        [
            "--pool",
            &self.ps("pool"),
            "--pool-size",
            "1M",
            "--ring-dir",
            &self.ps(""),
            "--control",
            &self.ps("control.sock"),
        ]
        .iter()
        .map(|a| a.to_string())
        .collect()
    }

    /// A TOML configuration inside the fixture, with `extra` appended.
    fn config(&self, rel: &str, extra: &str) -> String {
        let d = s(&self.d.0);
        self.write(
            rel,
            &format!(
                "pool = \"{d}/pool\"\npool_size = \"1M\"\nring_dir = \"{d}\"\n\
                 control_socket = \"{d}/control.sock\"\n{extra}"
            ),
        )
    }
}

/// `serve --check` with `args` and the fixture's paths for the options
/// `args` does not give.
fn check_case(f: &Fixture, what: &'static str, code: i32, args: &[&str], names: &[&str]) -> Case {
    let mut all = vec!["serve".to_string(), "--check".to_string()];
    for pair in f.serve_args().chunks(2) {
        if !args.contains(&pair[0].as_str()) {
            all.extend(pair.iter().cloned());
        }
    }
    all.extend(args.iter().map(|a| a.to_string()));
    Case {
        args: all,
        ..case(what, code, &[], names)
    }
}

/// Inputs that need no running agent.
#[test]
fn bad_inputs_without_an_agent() {
    let f = Fixture::new("cli-errors");
    let tree = f.ps("tree");
    let ns = format!("sys={tree}");
    let mut skipped = Vec::new();
    let missing = f.ps("missing.toml");
    let bad_toml = f.write("bad.toml", "pool_size = \n");
    let unknown_key = f.config("unknown.toml", "bogus_key = 1\n");
    let wrong_type = f.config("type.toml", "workers = \"two\"\n");
    let bad_size = f.write("size.toml", "pool_size = \"lots\"\n");
    let dup_cid = f.config(
        "cid.toml",
        "[[vm]]\nname = \"vm1\"\ncid = 9\n[[vm]]\nname = \"vm2\"\ncid = 9\n",
    );
    let no_ns_dir = f.config(
        "nsdir.toml",
        &format!(
            "[[namespace]]\nname = \"gone\"\ndir = \"{}\"\n",
            f.ps("gone")
        ),
    );
    let junk = f.write("junk.region", &"not a region at all ".repeat(400));
    let tiny = f.write("tiny.region", "x");
    let notsock = f.write("notsock", "x");
    // A socket nobody listens on any more.
    let dead = f.p("dead.sock");
    drop(std::os::unix::net::UnixListener::bind(&dead).unwrap());
    let dead = s(&dead);
    // A pool file of the right size but not a pool.
    std::fs::write(f.p("pool"), vec![0x5au8; 1 << 20]).unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let _keep_taken = std::net::TcpListener::bind(&taken);

    let mut cases = vec![
        // From the review.
        case(
            "qemu-args with a path for a VM name",
            EXIT_FAILURE,
            &["qemu-args", "../../etc/evil"],
            &["../../etc/evil", "A-Za-z0-9"],
        ),
        case(
            "a region file of the wrong magic",
            EXIT_FAILURE,
            &["region", "show", &junk],
            &[&junk, "magic"],
        ),
        check_case(
            &f,
            "a missing namespace directory",
            EXIT_CONFIG,
            &["--ns", &format!("sys={}", f.ps("gone"))],
            &[&f.ps("gone"), "sys"],
        ),
        check_case(
            &f,
            "a missing namespace directory in the file",
            EXIT_CONFIG,
            &["--config", &no_ns_dir],
            &[&f.ps("gone"), "gone"],
        ),
        case(
            "a config file that is not TOML",
            EXIT_CONFIG,
            &["serve", "--check", "--config", &bad_toml],
            &[&bad_toml, "line 1"],
        ),
        case(
            "an unknown key",
            EXIT_CONFIG,
            &["serve", "--check", "--config", &unknown_key],
            &[&unknown_key, "bogus_key"],
        ),
        case(
            "a missing config file",
            EXIT_CONFIG,
            &["serve", "--check", "--config", &missing],
            &[&missing, "No such file"],
        ),
        check_case(
            &f,
            "a budget above the pool",
            EXIT_CONFIG,
            &["--ns", &ns, "--budget", "4M"],
            &["budget", "pool_size"],
        ),
        check_case(
            &f,
            "workers = 0",
            EXIT_CONFIG,
            &["--ns", &ns, "--workers", "0"],
            &["workers"],
        ),
        case(
            "a dead control socket",
            EXIT_UNREACHABLE,
            &["status", "--control", &dead],
            &[&dead, "vmdedup serve"],
        ),
        // Our own.
        case(
            "no control socket",
            EXIT_UNREACHABLE,
            &["vms", "--control", &f.ps("nope.sock")],
            &[&f.ps("nope.sock"), "vmdedup serve"],
        ),
        case(
            "a control socket that is a regular file",
            EXIT_UNREACHABLE,
            &["status", "--control", &notsock],
            &[&notsock],
        ),
        Case {
            env: vec![("VMDEDUP_CONTROL", f.ps("env.sock"))],
            ..case(
                "VMDEDUP_CONTROL naming no socket",
                EXIT_UNREACHABLE,
                &["status"],
                &[&f.ps("env.sock"), "VMDEDUP_CONTROL"],
            )
        },
        case(
            "status --config of a missing file",
            EXIT_CONFIG,
            &["status", "--config", &missing],
            &[&missing],
        ),
        case(
            "a missing region file",
            EXIT_FAILURE,
            &["region", "show", &f.ps("none.region")],
            &[&f.ps("none.region"), "No such file"],
        ),
        case(
            "a region file too small for a header",
            EXIT_FAILURE,
            &["region", "show", &tiny],
            &[&tiny, "small"],
        ),
        case(
            "a region size that is not a power of two",
            EXIT_FAILURE,
            &[
                "region",
                "init",
                "--kind",
                "ring",
                "--size",
                "5000",
                &f.ps("r"),
            ],
            &["5000", "power of two"],
        ),
        case(
            "a region in a missing directory",
            EXIT_FAILURE,
            &["region", "init", "--kind", "ring", &f.ps("no/dir/r")],
            &[&f.ps("no/dir/r")],
        ),
        case(
            "region init --domain for a ring",
            EXIT_FAILURE,
            &[
                "region",
                "init",
                "--kind",
                "ring",
                "--domain",
                "a",
                &f.ps("r"),
            ],
            &["--domain", "pool"],
        ),
        case(
            "region init --domain with a path in it",
            EXIT_FAILURE,
            &[
                "region",
                "init",
                "--kind",
                "pool",
                "--domain",
                "a/b",
                &f.ps("r"),
            ],
            &["a/b", "--domain"],
        ),
        case(
            "stamp of a missing directory",
            EXIT_FAILURE,
            &["stamp", &f.ps("gone")],
            &[&f.ps("gone"), "No such file"],
        ),
        case(
            "--ns without a directory",
            EXIT_CONFIG,
            &["config", "new", "--ns", "lonely"],
            &["--ns", "lonely", "NAME=HOSTDIR"],
        ),
        case(
            "config new into a missing directory",
            EXIT_FAILURE,
            &["config", "new", "--ns", &ns, "-o", &f.ps("no/dir/out.toml")],
            &[&f.ps("no/dir/out.toml")],
        ),
        check_case(
            &f,
            "a pool size that is not a power of two",
            EXIT_CONFIG,
            &["--ns", &ns, "--pool-size", "3M"],
            &["pool_size", "power of two"],
        ),
        case(
            "a size that is not a size",
            EXIT_USAGE,
            &["serve", "--check", "--pool-size", "lots"],
            &["--pool-size", "lots"],
        ),
        case(
            "a size that is not a size in the file",
            EXIT_CONFIG,
            &["serve", "--check", "--config", &bad_size],
            &[&bad_size, "pool_size", "lots"],
        ),
        case(
            "a value of the wrong type",
            EXIT_CONFIG,
            &["serve", "--check", "--config", &wrong_type],
            &[&wrong_type, "workers"],
        ),
        check_case(
            &f,
            "a VM name with a slash",
            EXIT_CONFIG,
            &["--ns", &ns, "--vm", "a/b"],
            &["a/b"],
        ),
        check_case(
            &f,
            "the same VM in two domains",
            EXIT_CONFIG,
            &["--ns", &ns, "--vm", "vm1:a", "--vm", "vm1:b"],
            &["vm1"],
        ),
        check_case(
            &f,
            "--ns-domains for an unknown namespace",
            EXIT_CONFIG,
            &["--ns", &ns, "--ns-domains", "other=default"],
            &["other", "--ns-domains"],
        ),
        check_case(
            &f,
            "a granularity that is not a number",
            EXIT_CONFIG,
            &["--ns", &ns, "--ns-mtime-granularity", "sys=abc"],
            &["abc", "--ns-mtime-granularity"],
        ),
        case(
            "the same CID for two VMs",
            EXIT_CONFIG,
            &["serve", "--check", "--config", &dup_cid],
            &["cid", "9", "vm2"],
        ),
        check_case(
            &f,
            "an unknown control group",
            EXIT_CONFIG,
            &["--ns", &ns, "--control-group", "no-such-group-vmdedup"],
            &["control_group", "no-such-group-vmdedup"],
        ),
        check_case(
            &f,
            "an unknown file owner",
            EXIT_CONFIG,
            &["--ns", &ns, "--file-owner", "no-such-user-vmdedup"],
            &["file_owner", "no-such-user-vmdedup"],
        ),
        check_case(
            &f,
            "metrics on a non-loopback address",
            EXIT_CONFIG,
            &["--ns", &ns, "--metrics", "0.0.0.0:9464"],
            &["0.0.0.0:9464", "loopback"],
        ),
        check_case(
            &f,
            "metrics on a port in use",
            EXIT_CONFIG,
            &["--ns", &ns, "--metrics", &taken],
            &[&taken],
        ),
        check_case(
            &f,
            "a missing ring directory",
            EXIT_CONFIG,
            &["--ns", &ns, "--ring-dir", &f.ps("no-rings")],
            &[&f.ps("no-rings")],
        ),
        case(
            "a config file that is a directory",
            EXIT_CONFIG,
            &["serve", "--check", "--config", &tree],
            &[&tree],
        ),
        check_case(
            &f,
            "a namespace directory that is a file",
            EXIT_CONFIG,
            &["--ns", &format!("sys={}", f.ps("tree/f"))],
            &[&f.ps("tree/f")],
        ),
        check_case(
            &f,
            "a pool in a missing directory",
            EXIT_CONFIG,
            &["--ns", &ns, "--vm", "vm1", "--pool", &f.ps("no/dir/pool")],
            &[&f.ps("no/dir")],
        ),
        case(
            "an unknown subcommand",
            EXIT_USAGE,
            &["frobnicate"],
            &["frobnicate"],
        ),
        case(
            "qemu-args with a bad domain",
            EXIT_FAILURE,
            &["qemu-args", "vm1", "--domain", "x/y"],
            &["x/y", "--domain"],
        ),
        case(
            "qemu-args with another domain than configured",
            EXIT_FAILURE,
            // --pool-size: the files are described, so no agent is needed.
            &[
                "qemu-args",
                "vm1",
                "--vm",
                "vm1:a",
                "--domain",
                "b",
                "--pool-size",
                "1M",
            ],
            &["vm1", "\"a\"", "\"b\""],
        ),
    ];
    // A pool file that is not a pool: serve refuses to adopt it.
    let mut adopt = vec!["serve".to_string()];
    adopt.extend(f.serve_args());
    adopt.extend(["--ns".to_string(), ns.clone(), "--vm".into(), "vm1".into()]);
    cases.push(Case {
        args: adopt,
        ..case(
            "a pool file that is not a pool",
            EXIT_FAILURE,
            &[],
            &[&f.ps("pool"), "remove it"],
        )
    });
    // A pool on a filesystem far too small for it.
    let small = SmallTmpfs::mount("cli-errors-tmpfs", "8m");
    match &small {
        Some(fs) => {
            let pool = s(&fs.0.join("pool"));
            cases.push(check_case(
                &f,
                "a pool on a tiny tmpfs",
                EXIT_CONFIG,
                &[
                    "--ns",
                    &ns,
                    "--vm",
                    "vm1",
                    "--pool",
                    &pool,
                    "--pool-size",
                    "64M",
                ],
                &[&pool, &s(&fs.0), "64.0 MiB", "make that filesystem larger"],
            ));
        }
        None => skipped.push("a pool on a tiny tmpfs (needs root to mount one)"),
    }
    check_all(&cases, &skipped);
}

/// Inputs that need a running agent: a second agent, refusals, and a user
/// who may not use the socket.
#[test]
fn bad_inputs_with_an_agent() {
    let f = Fixture::new("cli-errors-agent");
    let ns = format!("sys={}", f.ps("tree"));
    let mut serve = Command::new(BIN);
    serve
        .arg("serve")
        .args(f.serve_args())
        .args(["--ns", &ns, "--vm", "vm1"])
        .env("VMDEDUP_LOG", "warn");
    let control = f.p("control.sock");
    let _agent = spawn_agent(serve, &control, "the agent exited");
    let c = s(&control);
    let mut skipped = Vec::new();
    let mut second = vec!["serve".to_string()];
    second.extend(f.serve_args());
    second.extend(["--ns".to_string(), ns.clone(), "--vm".into(), "vm1".into()]);
    let mut cases = vec![
        Case {
            args: second,
            ..case(
                "a second serve on the same paths",
                EXIT_FAILURE,
                &[],
                &[&f.ps("pool"), "another vmdedup agent", "stop it"],
            )
        },
        case(
            "vm remove of an unknown VM",
            EXIT_REFUSED,
            &["vm", "remove", "ghost", "--control", &c],
            &["ghost", "vmdedup vms"],
        ),
        case(
            "vm reinstate of an unknown VM",
            EXIT_REFUSED,
            &["vm", "reinstate", "ghost", "--control", &c],
            &["ghost", "vmdedup vms"],
        ),
        case(
            "vm add of a name with a slash",
            EXIT_REFUSED,
            &["vm", "add", "../x", "--control", &c],
            &["../x", "A-Za-z0-9"],
        ),
        case(
            "vm add of a VM that exists",
            EXIT_REFUSED,
            &["vm", "add", "vm1", "--control", &c],
            &["vm1", "exists"],
        ),
        case(
            "vm add into a bad domain",
            EXIT_REFUSED,
            &["vm", "add", "vm9", "--domain", "a/b", "--control", &c],
            &["a/b"],
        ),
        case(
            "files of an unknown namespace",
            EXIT_FAILURE,
            &["files", "nope", "--control", &c],
            &["nope", "sys"],
        ),
        case(
            "warm of an unknown namespace",
            EXIT_REFUSED,
            &["warm", "nope", "--control", &c],
            &["nope"],
        ),
        case(
            "evict of an unknown namespace",
            EXIT_REFUSED,
            &["evict", "nope", "f", "--control", &c],
            &["nope"],
        ),
        case(
            "warm of a path that leaves the namespace",
            EXIT_REFUSED,
            &["warm", "sys", "../..", "--control", &c],
            &["../.."],
        ),
        case(
            "warm of a missing path",
            EXIT_REFUSED,
            &["warm", "sys", "no/such/file", "--control", &c],
            &["no/such/file"],
        ),
    ];
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } == 0 {
        // "nobody" may not use the root agent's socket (mode 0600).
        cases.push(Case {
            uid: Some(65534),
            ..case(
                "a user who may not use the control socket",
                EXIT_UNREACHABLE,
                &["status", "--control", &c],
                &[&c, "control_group"],
            )
        });
        // Its directory lets everyone reach the socket file: the socket's
        // own mode is what keeps nobody out.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&f.d.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    } else {
        skipped.push("a user who may not use the control socket (needs root)");
    }
    check_all(&cases, &skipped);
}
