//! `vmdedup serve` as an operator meets it: everything is checked before
//! anything is touched (`--check` touches nothing at all), and signals.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

mod common;
use common::process::{s, vmdedup};
use common::{SmallTmpfs, TempDir};

const BIN: &str = env!("CARGO_BIN_EXE_vmdedup");

/// The exit status of a configuration (or host) that is not fit to serve.
const EXIT_CONFIG: i32 = 78;

/// Every file under `dir` with its kind, size and modification time.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (bool, u64, SystemTime)> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                todo.push(e.path());
            }
            out.insert(e.path(), (m.is_dir(), m.len(), m.modified().unwrap()));
        }
    }
    out
}

/// A configuration for one VM and one namespace, everything inside `dir`.
fn good_config(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir.join("tree")).unwrap();
    std::fs::write(dir.join("tree/f"), b"x").unwrap();
    let file = dir.join("agent.toml");
    std::fs::write(
        &file,
        format!(
            "pool = \"{d}/pool\"\npool_size = \"1M\"\nring_dir = \"{d}\"\n\
             control_socket = \"{d}/run/control.sock\"\n\
             [[namespace]]\nname = \"sys\"\ndir = \"{d}/tree\"\n\
             [[vm]]\nname = \"vm1\"\n",
            d = s(dir)
        ),
    )
    .unwrap();
    file
}

#[test]
fn check_says_ok_and_what_would_run_and_touches_nothing() {
    let d = TempDir::new("serve-check-ok");
    let file = good_config(&d.0);
    // A pool left by a previous agent, and a stale socket: neither is
    // adopted, locked, replaced or removed.
    std::fs::write(d.0.join("pool"), vec![0u8; 4096]).unwrap();
    let before = snapshot(&d.0);
    let o = vmdedup(&["serve", "--check", "--config", s(&file)]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(lines[0], "ok");
    for says in ["1 pool(s)", "default 1M", "1 VM(s)", "1 namespace(s): sys"] {
        assert!(lines[1].contains(says), "{says}: {out}");
    }
    assert_eq!(snapshot(&d.0), before, "--check changed the directory");
}

#[test]
fn every_problem_is_printed_at_once_and_nothing_is_created() {
    let d = TempDir::new("serve-check-bad");
    let dir = &d.0;
    let file = dir.join("bad.toml");
    std::fs::write(
        &file,
        format!(
            "pool = \"{d}/pool\"\npool_size = \"1M\"\nbudget = \"2M\"\nworkers = 0\n\
             ring_dir = \"{d}/no-rings\"\ncontrol_group = \"no-such-group-vmdedup\"\n\
             file_owner = \"no-such-user-vmdedup\"\n\
             control_socket = \"{d}/control.sock\"\n\
             [[namespace]]\nname = \"gone\"\ndir = \"{d}/gone\"\n\
             [[namespace]]\nname = \"file\"\ndir = \"{d}/bad.toml\"\n\
             [[vm]]\nname = \"vm1\"\ncid = 2\n\
             [[vm]]\nname = \"vm2\"\ncid = 9\n\
             [[vm]]\nname = \"vm3\"\ncid = 9\n\
             [[vm]]\nname = \"vm1\"\n",
            d = s(dir)
        ),
    )
    .unwrap();
    // A port that is taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let metrics = taken.local_addr().unwrap().to_string();
    let before = snapshot(dir);
    for check in [true, false] {
        let mut args = vec!["serve", "--config", s(&file), "--metrics", &metrics];
        if check {
            args.push("--check");
        }
        let o = vmdedup(&args);
        assert_eq!(o.status.code(), Some(EXIT_CONFIG), "check {check}");
        assert!(o.stdout.is_empty());
        let err = String::from_utf8_lossy(&o.stderr);
        let lines: Vec<&str> = err.lines().collect();
        for says in [
            "budget 2M is above pool_size 1M",
            "workers = 0",
            "\"vm1\": cid 2 is reserved",
            "\"vm3\": cid 9 is VM \"vm2\"'s already",
            "VM \"vm1\" declared twice",
            "namespace \"gone\": directory",
            "namespace \"file\":",
            "control_group \"no-such-group-vmdedup\": no such group",
            "file_owner \"no-such-user-vmdedup\": no such user",
            "ring_dir",
            &format!("--metrics {metrics}: cannot listen there (address in use)"),
        ] {
            let n = lines.iter().filter(|l| l.contains(says)).count();
            assert_eq!(n, 1, "{says:?} {n} times in:\n{err}");
        }
        for l in &lines {
            assert!(l.starts_with("vmdedup: error: "), "{l}");
            assert!(!l.contains("os error"), "{l}");
        }
        assert_eq!(snapshot(dir), before, "check {check} touched the directory");
    }
}

#[test]
fn a_pool_its_filesystem_cannot_hold_is_refused_before_it_is_made() {
    let d = TempDir::new("serve-check-space");
    let file = good_config(&d.0);
    let mnt = d.0.join("small");
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m", "vmdedup-test"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("cannot mount a tmpfs (not root?): this test checks nothing here");
        return;
    }
    let pool = mnt.join("pool");
    let o = vmdedup(&[
        "serve",
        "--config",
        s(&file),
        "--pool",
        s(&pool),
        "--pool-size",
        "64M",
    ]);
    let ok = vmdedup(&[
        "serve",
        "--check",
        "--config",
        s(&file),
        "--pool",
        s(&pool),
        "--pool-size",
        "64M",
        "--budget",
        "4M",
    ]);
    let _ = Command::new("umount").arg(&mnt).status();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(EXIT_CONFIG), "{err}");
    assert!(err.contains("pool of domain \"default\""), "{err}");
    assert!(err.contains("8.0 MiB free"), "{err}");
    assert!(!pool.exists());
    // A budget that fits is fine, whatever the pool's size.
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

/// A spawned `vmdedup serve` whose log lines arrive on a channel.
struct Served {
    child: std::process::Child,
    log: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Served {
    fn start(config: &Path, control: &Path) -> Served {
        use std::io::BufRead;
        let mut child = Command::new(BIN)
            .args(["serve", "--config", s(config)])
            .env("VMDEDUP_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let err = child.stderr.take().unwrap();
        let (tx, log) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        let mut me = Served {
            child,
            log,
            seen: Vec::new(),
        };
        me.wait_log("control socket ready");
        assert!(control.exists());
        me
    }

    /// Waits (generously: the machine may be busy) for a log line with
    /// `what`; fails if the agent's log ends first.
    fn wait_log(&mut self, what: &str) {
        loop {
            match self.log.recv_timeout(std::time::Duration::from_secs(120)) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(what) {
                        return;
                    }
                }
                Err(_) => panic!("no log line {what:?}; the log:\n{}", self.seen.join("\n")),
            }
        }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the pid of a child this test started and has not
        // reaped yet, so the pid cannot name another process.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

#[test]
fn sighup_is_harmless_and_sigterm_and_sigint_stop_cleanly() {
    for stop in [libc::SIGTERM, libc::SIGINT] {
        let d = TempDir::new(&format!("serve-signals-{stop}"));
        let file = good_config(&d.0);
        let control = d.0.join("run/control.sock");
        let mut agent = Served::start(&file, &control);
        for _ in 0..2 {
            agent.signal(libc::SIGHUP);
            agent.wait_log("SIGHUP: configuration reload is not supported; restart the agent");
        }
        assert!(
            agent.child.try_wait().unwrap().is_none(),
            "SIGHUP killed it"
        );
        let o = vmdedup(&["vms", "--control", s(&control)]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(String::from_utf8_lossy(&o.stdout).contains("vm1"));
        agent.signal(stop);
        agent.wait_log("agent stopped");
        let status = agent.child.wait().unwrap();
        assert!(status.success(), "signal {stop}: {status:?}");
        assert!(!control.exists(), "the control socket is left behind");
    }
}

#[test]
fn a_running_agent_whose_pool_filesystem_fills_up_answers_pool_full() {
    let d = TempDir::new("serve-fs-full");
    let Some(fs) = SmallTmpfs::mount("serve-small", "8m") else {
        return;
    };
    let mnt = fs.0.clone();
    // 6 MiB of pages no two of which are equal.
    let tree = d.0.join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    for f in 0u64..6 {
        let bytes: Vec<u8> = (0..(1u64 << 20) / 8)
            .flat_map(|i| {
                (f << 40 | i)
                    .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                    .to_le_bytes()
            })
            .collect();
        std::fs::write(tree.join(format!("f{f}")), bytes).unwrap();
    }
    let file = d.0.join("agent.toml");
    let control = d.0.join("control.sock");
    // The budget fits the filesystem when the agent starts...
    std::fs::write(
        &file,
        format!(
            "pool = \"{m}/pool\"\npool_size = \"64M\"\nbudget = \"6M\"\nring_dir = \"{d}\"\n\
             control_socket = \"{c}\"\n\
             [[namespace]]\nname = \"sys\"\ndir = \"{t}\"\n\
             [[vm]]\nname = \"vm1\"\n",
            m = s(&mnt),
            d = s(&d.0),
            c = s(&control),
            t = s(&tree)
        ),
    )
    .unwrap();
    let mut agent = Served::start(&file, &control);
    // ... then something else takes all of it.
    let hog = mnt.join("hog");
    let mut w = std::fs::File::create(&hog).unwrap();
    let chunk = vec![1u8; 64 << 10];
    while std::io::Write::write_all(&mut w, &chunk).is_ok() {}
    drop(w);
    let o = vmdedup(&["warm", "sys", "--control", s(&control)]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!out.contains(" 0 skipped"), "everything fit? {out}");
    agent.wait_log("no room for more of the pool");
    assert!(agent.child.try_wait().unwrap().is_none(), "the agent died");
    let o = vmdedup(&["status", "--json", "--control", s(&control)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn a_vm_added_when_the_ring_filesystem_is_full_is_refused_not_fatal() {
    let d = TempDir::new("serve-ring-full");
    let Some(fs) = SmallTmpfs::mount("serve-small-ring", "4m") else {
        return;
    };
    let mnt = fs.0.clone();
    let file = good_config(&d.0);
    let text = std::fs::read_to_string(&file).unwrap().replace(
        &format!("ring_dir = \"{}\"", s(&d.0)),
        &format!("ring_dir = \"{}\"", s(&mnt)),
    );
    std::fs::write(&file, text).unwrap();
    let control = d.0.join("run/control.sock");
    let mut agent = Served::start(&file, &control);
    let hog = mnt.join("hog");
    let mut w = std::fs::File::create(&hog).unwrap();
    let chunk = vec![1u8; 64 << 10];
    while std::io::Write::write_all(&mut w, &chunk).is_ok() {}
    drop(w);
    let o = vmdedup(&["vm", "add", "vm2", "--control", s(&control)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "vm2 was added on a full filesystem");
    assert!(err.contains("has no room"), "{err}");
    assert!(agent.child.try_wait().unwrap().is_none(), "the agent died");
    // Once there is room again, the VM is added.
    std::fs::remove_file(&hog).unwrap();
    let o = vmdedup(&["vm", "add", "vm2", "--control", s(&control)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    agent.signal(libc::SIGTERM);
    agent.wait_log("agent stopped");
}
