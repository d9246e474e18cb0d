//! The files the agent shares with QEMU and clients, through the real
//! `vmdedup serve`: what it creates is private (0600, or 0660 of the
//! configured group), what it finds in place is adopted only if it is the
//! agent's own regular file of the right size and magic, and a second agent
//! on the same paths is refused while the first keeps serving.
//!
//! Checks that need another user's file (a pool owned by `nobody`) run only
//! as root, as CI does; elsewhere they say so and pass.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use vmdedup_host_agent::hostfile::group_id;
use vmdedup_host_agent::region;

mod common;
use common::process::s;
use common::process::{spawn_agent, AgentProcess};
use common::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_vmdedup");
const POOL_SIZE: u64 = 1 << 20;
const NOBODY: u32 = 65534;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The paths of one agent, all in a directory of their own.
struct Paths {
    dir: TempDir,
    pool: PathBuf,
    control: PathBuf,
}

impl Paths {
    fn new(tag: &str) -> Paths {
        let dir = TempDir::new(tag);
        Paths {
            pool: dir.0.join("vmdedup.pool"),
            control: dir.0.join("control.sock"),
            dir,
        }
    }

    fn ring(&self, vm: &str) -> PathBuf {
        self.dir.0.join(format!("vmdedup-{vm}.ring"))
    }

    fn guest_socket(&self, vm: &str) -> PathBuf {
        self.dir.0.join(format!("{vm}.vsock_5555"))
    }

    /// `vmdedup serve` on these paths with VM vm1 and a guest socket for it.
    fn serve(&self, extra: &[&str]) -> Command {
        self.serve_with_pool(&self.pool, extra)
    }

    /// [`Paths::serve`] with another pool file.
    fn serve_with_pool(&self, pool: &Path, extra: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args([
            "serve",
            "--pool",
            s(pool),
            "--pool-size",
            "1M",
            "--ring-dir",
            s(&self.dir.0),
            "--ring-size",
            "64K",
            "--control",
            s(&self.control),
            "--guest-socket-dir",
            s(&self.dir.0),
            "--vm",
            "vm1",
        ])
        .args(extra)
        .env("VMDEDUP_LOG", "warn");
        c
    }

    /// Runs an agent that must refuse to start; returns its error output.
    fn refused(&self, extra: &[&str]) -> String {
        self.refused_cmd(self.serve(extra))
    }

    /// Runs `cmd`, an agent that must refuse to start, and returns its error
    /// output. One that is still running after a generous bound started:
    /// it is stopped and the test fails.
    fn refused_cmd(&self, mut cmd: Command) -> String {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut agent = AgentProcess(child);
        let give_up = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(st) = agent.0.try_wait().unwrap() {
                break st;
            }
            assert!(
                Instant::now() < give_up,
                "the agent started (still running after 60s)"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(&mut agent.0.stderr.take().unwrap(), &mut err).unwrap();
        assert!(!status.success(), "the agent started: {err}");
        err
    }

    /// Starts an agent and waits until its control socket answers.
    fn start(&self, extra: &[&str]) -> AgentProcess {
        let mut cmd = self.serve(extra);
        cmd.stdin(Stdio::null());
        spawn_agent(
            cmd,
            &self.control,
            "the agent exited before it opened its control socket",
        )
    }

    fn status(&self) -> Output {
        Command::new(BIN)
            .args(["status", "--control", s(&self.control)])
            .output()
            .unwrap()
    }
}

/// `vmdedup region init` of a valid region file.
fn region_init(kind: &str, size: &str, path: &Path) {
    let o = Command::new(BIN)
        .args(["region", "init", "--kind", kind, "--size", size, s(path)])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// What a file is: its length and a hash of its bytes (or of a symlink's
/// target), mode, owner and inode (none followed).
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    len: usize,
    hash: u64,
    mode: u32,
    uid: u32,
    ino: u64,
}

fn snapshot(p: &Path) -> Snapshot {
    let m = std::fs::symlink_metadata(p).unwrap();
    let bytes = if m.file_type().is_symlink() {
        std::fs::read_link(p)
            .unwrap()
            .into_os_string()
            .into_encoded_bytes()
    } else if m.file_type().is_file() {
        std::fs::read(p).unwrap()
    } else {
        Vec::new() // a socket: nothing to read
    };
    Snapshot {
        len: bytes.len(),
        hash: common::fnv(&bytes),
        mode: m.mode(),
        uid: m.uid(),
        ino: m.ino(),
    }
}

fn mode_of(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

fn assert_says(err: &str, what: &[&str]) {
    for w in what {
        assert!(err.contains(w), "error lacks {w:?}: {err}");
    }
}

#[test]
fn a_pool_that_is_not_the_agents_own_is_refused_and_left_alone() {
    let p = Paths::new("hf-pool");
    let pool = s(&p.pool).to_string();

    // A symlink to a valid pool.
    let target = p.dir.0.join("target.pool");
    region_init("pool", "1M", &target);
    std::os::unix::fs::symlink(&target, &p.pool).unwrap();
    let (before, link_before) = (snapshot(&target), snapshot(&p.pool));
    let err = p.refused(&[]);
    assert_says(
        &err,
        &[&pool, "is a symlink: refusing to adopt it; remove it"],
    );
    assert_eq!(
        snapshot(&target),
        before,
        "the symlink's target is unchanged"
    );
    assert_eq!(snapshot(&p.pool), link_before, "the symlink is still there");
    std::fs::remove_file(&p.pool).unwrap();

    // Two links.
    region_init("pool", "1M", &p.pool);
    let other = p.dir.0.join("other-name");
    std::fs::hard_link(&p.pool, &other).unwrap();
    let before = snapshot(&p.pool);
    let err = p.refused(&[]);
    assert_says(&err, &[&pool, "has 2 links", "remove every link"]);
    assert_eq!(snapshot(&p.pool), before);
    std::fs::remove_file(&other).unwrap();
    std::fs::remove_file(&p.pool).unwrap();

    // A wrong size.
    region_init("pool", "2M", &p.pool);
    let before = snapshot(&p.pool);
    let err = p.refused(&[]);
    assert_says(&err, &[&pool, "is 2097152 bytes, not 1048576", "remove it"]);
    assert_eq!(snapshot(&p.pool), before);
    std::fs::remove_file(&p.pool).unwrap();

    // A wrong magic: the right size, garbage in the header.
    std::fs::write(&p.pool, vec![0x5a; POOL_SIZE as usize]).unwrap();
    std::fs::set_permissions(&p.pool, std::fs::Permissions::from_mode(0o640)).unwrap();
    let before = snapshot(&p.pool);
    let err = p.refused(&[]);
    assert_says(
        &err,
        &[
            &pool,
            "no valid vmdedup pool header",
            "refusing to adopt it",
        ],
    );
    assert_eq!(snapshot(&p.pool), before);
    std::fs::remove_file(&p.pool).unwrap();

    // Another user's.
    if is_root() {
        region_init("pool", "1M", &p.pool);
        std::os::unix::fs::chown(&p.pool, Some(NOBODY), Some(NOBODY)).unwrap();
        std::fs::set_permissions(&p.pool, std::fs::Permissions::from_mode(0o644)).unwrap();
        let before = snapshot(&p.pool);
        let err = p.refused(&[]);
        assert_says(
            &err,
            &[
                &pool,
                "is owned by uid 65534",
                "refusing to adopt it; remove it",
            ],
        );
        assert_eq!(snapshot(&p.pool), before);
        std::fs::remove_file(&p.pool).unwrap();
    } else {
        eprintln!("not root: the check of a pool owned by another user is skipped");
    }

    // Nothing the refusals left behind stops an agent once the path is free,
    // and a valid pool of the agent's own is adopted in place.
    region_init("pool", "1M", &p.pool);
    let ino = snapshot(&p.pool).ino;
    let _agent = p.start(&[]);
    assert_eq!(snapshot(&p.pool).ino, ino, "the pool was adopted in place");
}

#[test]
fn a_ring_that_is_not_the_agents_own_is_refused_and_left_alone() {
    let p = Paths::new("hf-ring");
    let ring = p.ring("vm1");
    let ring_s = s(&ring).to_string();

    let target = p.dir.0.join("target.ring");
    region_init("ring", "64K", &target);
    std::os::unix::fs::symlink(&target, &ring).unwrap();
    let before = snapshot(&target);
    let err = p.refused(&[]);
    assert_says(
        &err,
        &[&ring_s, "is a symlink: refusing to adopt it; remove it"],
    );
    assert_eq!(snapshot(&target), before);
    assert!(std::fs::symlink_metadata(&ring)
        .unwrap()
        .file_type()
        .is_symlink());
    std::fs::remove_file(&ring).unwrap();

    region_init("ring", "64K", &ring);
    let other = p.dir.0.join("other-name");
    std::fs::hard_link(&ring, &other).unwrap();
    let before = snapshot(&ring);
    let err = p.refused(&[]);
    assert_says(&err, &[&ring_s, "has 2 links"]);
    assert_eq!(snapshot(&ring), before);
    std::fs::remove_file(&other).unwrap();
    std::fs::remove_file(&ring).unwrap();

    if is_root() {
        region_init("ring", "64K", &ring);
        std::os::unix::fs::chown(&ring, Some(NOBODY), None).unwrap();
        let before = snapshot(&ring);
        let err = p.refused(&[]);
        assert_says(
            &err,
            &[&ring_s, "is owned by uid 65534", "refusing to adopt it"],
        );
        assert_eq!(snapshot(&ring), before);
    } else {
        eprintln!("not root: the check of a ring owned by another user is skipped");
    }
}

#[test]
fn a_second_agent_is_refused_while_the_first_keeps_serving() {
    let p = Paths::new("hf-second");
    let first = p.start(&[]);
    // The first agent writes its ring's header as it serves; a second one
    // would have written a new ring with another generation.
    let ring_generation = || region::inspect(&p.ring("vm1")).unwrap().1.generation;
    let ring_before = (snapshot(&p.ring("vm1")).ino, ring_generation());
    let pool_before = (snapshot(&p.pool).ino, region::inspect(&p.pool).unwrap().1);
    let control_ino = snapshot(&p.control).ino;
    let err = p.refused(&[]);
    assert_says(
        &err,
        &[
            &format!("another vmdedup agent (pid {})", first.0.id()),
            "stop it first",
        ],
    );
    // The first agent's files are as they were, and it still answers.
    assert_eq!(snapshot(&p.control).ino, control_ino, "control socket kept");
    assert!(p.guest_socket("vm1").exists(), "guest socket kept");
    assert_eq!(
        (snapshot(&p.ring("vm1")).ino, ring_generation()),
        ring_before,
        "the ring was not started over"
    );
    assert_eq!(
        (snapshot(&p.pool).ino, region::inspect(&p.pool).unwrap().1),
        pool_before,
        "the pool was not replaced"
    );
    let o = p.status();
    assert!(
        o.status.success(),
        "the first agent stopped answering: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("vm1"));
    // Another pool path but the same control socket is refused as well.
    let err = p.refused_cmd(p.serve_with_pool(&p.dir.0.join("other.pool"), &[]));
    assert_says(&err, &["another vmdedup agent", "stop it first"]);
    assert!(!p.dir.0.join("other.pool").exists(), "nothing was created");
    assert!(p.status().status.success());
    // Once the first is gone, its locks are free again.
    drop(first);
    let _again = p.start(&[]);
    assert!(p.status().status.success());
}

#[test]
fn created_files_are_private_or_of_the_configured_group() {
    let p = Paths::new("hf-modes");
    {
        let _agent = p.start(&[]);
        for f in [
            p.pool.clone(),
            p.ring("vm1"),
            p.guest_socket("vm1"),
            p.control.clone(),
        ] {
            assert_eq!(mode_of(&f), 0o600, "{}", f.display());
        }
        for lock in ["vmdedup.pool.lock", "vmdedup.lock", "control.sock.lock"] {
            assert_eq!(mode_of(&p.dir.0.join(lock)), 0o600, "{lock}");
        }
    }
    if !is_root() {
        eprintln!("not root: the check of files chowned to a group is skipped");
        return;
    }
    // With a group, new files are 0660 of it (pools 0640); an agent restarted with it
    // narrows or widens nothing it adopts beyond that.
    let p = Paths::new("hf-group");
    let daemon = group_id("file_group", "daemon").unwrap();
    let nogroup = group_id("file_group", "nogroup").unwrap_or(NOBODY);
    let _agent = p.start(&[
        "--file-group",
        "daemon",
        "--control-group",
        &nogroup.to_string(),
    ]);
    // QEMU attaches the pool readonly=on: its group reads only.
    for (f, mode) in [
        (p.pool.clone(), 0o640),
        (p.ring("vm1"), 0o660),
        (p.guest_socket("vm1"), 0o660),
    ] {
        let m = std::fs::symlink_metadata(&f).unwrap();
        assert_eq!(
            (m.mode() & 0o777, m.gid()),
            (mode, daemon),
            "{}",
            f.display()
        );
    }
    let m = std::fs::symlink_metadata(&p.control).unwrap();
    assert_eq!(
        (m.mode() & 0o777, m.gid()),
        (0o660, nogroup),
        "the control socket is control_group's"
    );
}
