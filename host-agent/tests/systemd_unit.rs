//! The shipped systemd unit, `contrib/vmdedup.service`: hardened enough
//! (`systemd-analyze security` at most 3.0), valid (`systemd-analyze
//! verify`), and its system call filter lets `vmdedup serve` do its work.
//!
//! The build machine's PID 1 is not systemd, so the unit cannot be started
//! for real here. What is checked instead: the agent, run under strace
//! through start-up, a guest's hints over its ring, a load, the control
//! socket, a guest socket, the metrics port and shutdown, makes only system
//! calls the unit's `SystemCallFilter=` lines allow (evaluated as systemd
//! does, with the groups of the installed `systemd-analyze`); and the
//! agent runs as an unprivileged user with only the unit's capabilities,
//! umask and no-new-privileges (through `setpriv`).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

mod common;
use common::agent::Guest;
use common::process::s;
use common::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_vmdedup");

fn unit_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/vmdedup.service")
}

fn systemd_analyze(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut c = Command::new("systemd-analyze");
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output()
        .expect("systemd-analyze (Debian package systemd, installed by scripts/setup)")
}

/// The unit's values of `key`, in order.
fn values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_unit_scores_at_most_3_and_verifies() {
    let unit = std::fs::read_to_string(unit_path()).unwrap();
    assert_eq!(values(&unit, "Type"), ["notify"]);
    assert!(values(&unit, "LimitMEMLOCK").is_empty(), "no LimitMEMLOCK");
    // The pools outlive the agent: systemd must not remove its /dev/shm files.
    assert!(
        values(&unit, "RemoveIPC").iter().all(|v| v == "no"),
        "RemoveIPC would delete the pools"
    );
    let families = values(&unit, "RestrictAddressFamilies").join(" ");
    for f in ["AF_UNIX", "AF_VSOCK", "AF_INET", "AF_INET6"] {
        assert!(families.split(' ').any(|x| x == f), "{f} not allowed");
    }
    let o = systemd_analyze(&["security", "--offline=yes", s(&unit_path())], &[]);
    let out = String::from_utf8_lossy(&o.stdout);
    let line = out
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no overall level: {out}"));
    let level: f64 = line
        .split(':')
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("unreadable: {line}"));
    assert!(level <= 3.0, "exposure {level} above 3.0:\n{out}");

    // verify checks that ExecStart= is executable and the man pages in
    // Documentation= exist: point it at this build and its man pages.
    let d = TempDir::new("unit-verify");
    let man = d.0.join("man");
    let o = Command::new(BIN)
        .args(["generate", "man"])
        .arg(man.join("man1"))
        .output()
        .unwrap();
    assert!(o.status.success());
    let copy = d.0.join("vmdedup.service");
    std::fs::write(&copy, unit.replace("/usr/bin/vmdedup", BIN)).unwrap();
    let o = systemd_analyze(&["verify", s(&copy)], &[("MANPATH", &man)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && err.is_empty(), "verify: {err}");
}

/// The system calls each `@group` of this systemd names (nested groups
/// as they are).
fn syscall_groups() -> BTreeMap<String, Vec<String>> {
    let o = systemd_analyze(&["syscall-filter"], &[]);
    assert!(o.status.success());
    let mut groups = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in String::from_utf8_lossy(&o.stdout).lines() {
        if line.starts_with('@') {
            let name = line.split_whitespace().next().unwrap().to_string();
            groups.insert(name.clone(), Vec::new());
            current = Some(name);
        } else if let Some(g) = &current {
            let item = line.trim();
            if !item.is_empty() && !item.starts_with('#') {
                let name = item.split_whitespace().next().unwrap().to_string();
                groups.get_mut(g).unwrap().push(name);
            }
        }
    }
    assert!(
        groups.contains_key("@system-service"),
        "no groups: {groups:?}"
    );
    groups
}

fn expand(groups: &BTreeMap<String, Vec<String>>, item: &str, out: &mut BTreeSet<String>) {
    match groups.get(item) {
        Some(members) => members.iter().for_each(|m| expand(groups, m, out)),
        None => {
            assert!(!item.starts_with('@'), "unknown group {item}");
            out.insert(item.to_string());
        }
    }
}

/// What the unit's `SystemCallFilter=` lines allow, as systemd reads them:
/// the first line, an allow list, sets what is allowed; a later `~` line
/// takes away, a later plain line adds.
fn allowed_by_unit(unit: &str) -> BTreeSet<String> {
    let groups = syscall_groups();
    let lines = values(unit, "SystemCallFilter");
    assert!(
        lines.first().is_some_and(|l| !l.starts_with('~')),
        "the filter must start with an allow list: {lines:?}"
    );
    let mut allowed = BTreeSet::new();
    for line in &lines {
        let (deny, items) = match line.strip_prefix('~') {
            Some(rest) => (true, rest),
            None => (false, line.as_str()),
        };
        let mut set = BTreeSet::new();
        for item in items.split_whitespace() {
            expand(&groups, item, &mut set);
        }
        if deny {
            allowed.retain(|c| !set.contains(c));
        } else {
            allowed.extend(set);
        }
    }
    allowed
}

/// The names of the system calls in an `strace -f` log.
fn syscalls_in(trace: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in trace.lines() {
        // "PID name(args..." or "PID <... name resumed>..."
        let rest = line.split_once(' ').map_or("", |(_, r)| r.trim_start());
        let name = if let Some(r) = rest.strip_prefix("<... ") {
            r.split_whitespace().next()
        } else if rest.starts_with("---") || rest.starts_with("+++") {
            None
        } else {
            rest.split('(').next()
        };
        if let Some(n) = name {
            if !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                out.insert(n.to_string());
            }
        }
    }
    out
}

/// Waits for READY=1 on `notify` (generously: the machine may be busy),
/// failing at once if `child` exits first.
fn wait_ready(notify: &UnixDatagram, child: &mut Child) {
    notify
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 1024];
    for _ in 0..240 {
        if let Ok(n) = notify.recv(&mut buf) {
            if String::from_utf8_lossy(&buf[..n]).contains("READY=1") {
                return;
            }
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the agent exited before READY=1: {status:?}");
        }
    }
    panic!("no READY=1 in 2 minutes");
}

/// Stops strace's child (the agent) and strace if a check failed first.
struct Traced(Child);

impl Traced {
    /// The agent's pid: strace's only child.
    fn agent_pid(&self) -> i32 {
        let pid = self.0.id();
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
        children.split_whitespace().next().unwrap().parse().unwrap()
    }
}

impl Drop for Traced {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

#[test]
fn the_syscall_filter_allows_every_call_serve_makes() {
    let unit = std::fs::read_to_string(unit_path()).unwrap();
    let allowed = allowed_by_unit(&unit);
    for must in [
        "memfd_create",
        "fallocate",
        "eventfd2",
        "mmap",
        "openat2",
        "fchown",
    ] {
        assert!(allowed.contains(must), "the unit's filter denies {must}");
    }

    let d = TempDir::new("unit-strace");
    let tree = d.0.join("tree");
    std::fs::create_dir_all(tree.join("lib")).unwrap();
    let file = tree.join("lib/libfoo.so");
    std::fs::write(&file, vec![7u8; 3 * 4096 + 5]).unwrap();
    std::fs::write(tree.join("lib/other"), vec![9u8; 4096]).unwrap();
    let guest_dir = d.0.join("guest");
    std::fs::create_dir_all(&guest_dir).unwrap();
    let control = d.0.join("run/control.sock");
    let config = d.0.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "pool = \"{d}/pool\"\npool_size = \"1M\"\nring_dir = \"{d}\"\n\
             control_socket = \"{c}\"\nworkers = 1\n\
             [[namespace]]\nname = \"sys\"\ndir = \"{d}/tree\"\n\
             [[vm]]\nname = \"vm1\"\n",
            d = s(&d.0),
            c = s(&control)
        ),
    )
    .unwrap();
    let metrics = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let notify_path = d.0.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let trace = d.0.join("trace");
    let mut traced = Traced(
        Command::new("strace")
            .args([
                "-f",
                "-qq",
                "-o",
                s(&trace),
                BIN,
                "serve",
                "--config",
                s(&config),
            ])
            .args(["--metrics", &metrics, "--guest-socket-dir", s(&guest_dir)])
            // AF_VSOCK is tried even where the host has no vsock transport.
            .arg("--af-vsock")
            .env("NOTIFY_SOCKET", &notify_path)
            .env("VMDEDUP_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("strace (Debian package strace, installed by scripts/setup)"),
    );
    wait_ready(&notify, &mut traced.0);
    // A guest hints over its ring until the file is loaded and served.
    let mut guest = Guest::attach(&d.0.join("vmdedup-vm1.ring"));
    guest.hit(1, "lib/libfoo.so", &file, 4);
    // The operator's side: status, warm, a scrape, a guest tool connecting.
    for args in [&["status", "--json"][..], &["warm", "sys"][..]] {
        let o = Command::new(BIN)
            .args(args)
            .args(["--control", s(&control)])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let mut scrape = std::net::TcpStream::connect(&metrics).unwrap();
    scrape
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut page = String::new();
    scrape.read_to_string(&mut page).unwrap();
    assert!(page.contains("vmdedup"), "{page}");
    drop(UnixStream::connect(guest_dir.join("vm1.vsock_5555")).unwrap());
    // SAFETY: kill(2) on the agent, strace's child, which strace has not
    // reaped (it waits for it), so the pid cannot name another process.
    assert_eq!(unsafe { libc::kill(traced.agent_pid(), libc::SIGTERM) }, 0);
    let status = traced.0.wait().unwrap();
    assert!(status.success(), "the agent under strace: {status:?}");

    let calls = syscalls_in(&std::fs::read_to_string(&trace).unwrap());
    // The trace is read right: what the agent surely does is in it.
    for expected in ["fallocate", "socket", "bind", "mmap", "sendto"] {
        assert!(calls.contains(expected), "{expected} not traced: {calls:?}");
    }
    let denied: Vec<&String> = calls.iter().filter(|c| !allowed.contains(*c)).collect();
    assert!(
        denied.is_empty(),
        "the unit's SystemCallFilter denies {denied:?} (traced: {calls:?})"
    );
}

/// The capabilities a unit line names, as setpriv takes them
/// (`+dac_read_search,+chown`).
fn setpriv_caps(unit: &str, key: &str) -> String {
    let caps: Vec<String> = values(unit, key)
        .join(" ")
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    assert!(!caps.is_empty(), "no {key}");
    caps.join(",")
}

#[test]
fn serve_works_as_an_unprivileged_user_with_the_units_capabilities() {
    let unit = std::fs::read_to_string(unit_path()).unwrap();
    assert_eq!(
        values(&unit, "CapabilityBoundingSet"),
        values(&unit, "AmbientCapabilities")
    );
    let caps = setpriv_caps(&unit, "AmbientCapabilities");
    let umask = values(&unit, "UMask").pop().expect("UMask=");
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test switches to an unprivileged user: run it as root (CI does)"
    );
    let d = TempDir::new("unit-creds");
    let (nobody, daemon) = (65534u32, 1u32);
    // A tree only root may read (CAP_DAC_READ_SEARCH reads it), files
    // handed to another user (CAP_CHOWN, then CAP_FOWNER for their mode).
    let tree = d.0.join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("f"), vec![5u8; 8192]).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tree, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(&d.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let state = d.0.join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::os::unix::fs::chown(&state, Some(nobody), Some(65534)).unwrap();
    let control = state.join("control.sock");
    let config = d.0.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "pool = \"{st}/pool\"\npool_size = \"1M\"\nring_dir = \"{st}\"\n\
             control_socket = \"{c}\"\nfile_owner = \"{daemon}\"\n\
             [[namespace]]\nname = \"sys\"\ndir = \"{t}\"\n\
             [[vm]]\nname = \"vm1\"\n",
            st = s(&state),
            c = s(&control),
            t = s(&tree)
        ),
    )
    .unwrap();
    let notify_path = d.0.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    std::os::unix::fs::chown(&notify_path, Some(nobody), None).unwrap();
    let mut agent = Traced(
        Command::new("setpriv")
            .args([
                "--reuid",
                &nobody.to_string(),
                "--regid",
                "65534",
                "--clear-groups",
            ])
            .args(["--no-new-privs", "--inh-caps", &format!("-all,{caps}")])
            .args(["--ambient-caps", &format!("-all,{caps}")])
            .args(["--bounding-set", &format!("-all,{caps}")])
            .args(["sh", "-c", &format!("umask {umask} && exec \"$0\" \"$@\"")])
            .args([BIN, "serve", "--config", s(&config)])
            .env("NOTIFY_SOCKET", &notify_path)
            .env("VMDEDUP_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("setpriv (Debian package util-linux)"),
    );
    wait_ready(&notify, &mut agent.0);
    use std::os::unix::fs::MetadataExt;
    for (file, mode) in [("pool", 0o640), ("vmdedup-vm1.ring", 0o660)] {
        let m = std::fs::metadata(state.join(file)).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o777), (daemon, mode), "{file}");
    }
    let o = Command::new(BIN)
        .args(["warm", "sys", "--control", s(&control)])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && out.contains("1 files, 2 pages"),
        "warm as nobody: {out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let mut guest = Guest::attach(&state.join("vmdedup-vm1.ring"));
    guest.hit(1, "f", &tree.join("f"), 2);
    // SAFETY: kill(2) on a child this test started and has not reaped
    // (setpriv and sh exec the agent, so the child is the agent).
    assert_eq!(unsafe { libc::kill(agent.0.id() as i32, libc::SIGTERM) }, 0);
    let status = agent.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
}
