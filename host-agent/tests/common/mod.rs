//! Helpers shared by the host-agent integration tests.
#![allow(dead_code)]

pub mod agent;
pub mod process;
pub mod service;

use std::sync::Arc;

use vmdedup_host_agent::ring::{
    Answer, EventFd, GuestRing, Hint, HostRing, RingConfig, RingId, SharedMapping,
};
use vmdedup_protocol::abi::{AnswerStatus, CompletionEntry, RingSizes, SubmissionEntry};
use vmdedup_protocol::pool::TableRef;

/// Namespace the echo handler refuses.
pub const FORBIDDEN_NS: u32 = 9;

/// FNV-1a, to make answers depend on every path byte.
pub fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &c| {
        (h ^ c as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// A handler whose hits are a checkable function of the hint.
pub fn echo(ring: RingId, h: &Hint<'_>) -> Answer {
    if h.namespace_id == FORBIDDEN_NS {
        return Answer::Miss(AnswerStatus::NamespaceNotAllowed);
    }
    Answer::Hit(TableRef {
        offset: fnv(h.path),
        page_count: h.path.len() as u32,
        file_map_id: h.request_id ^ ring.0 as u64,
        map_generation: h.mtime_ns as u64,
        file_size: h.file_size,
    })
}

/// The hit `echo` gives for this hint.
pub fn check_echo(ring: RingId, c: &CompletionEntry, req: u64, path: &[u8], mtime: i64, size: u64) {
    assert_eq!(c.request_id, req);
    assert_eq!(c.status, AnswerStatus::Hit as u16, "request {req}");
    assert_eq!(c.table_offset, fnv(path));
    assert_eq!(c.page_count, path.len() as u32);
    assert_eq!(c.file_map_id, req ^ ring.0 as u64);
    assert_eq!(c.map_generation, mtime as u64);
    assert_eq!(c.file_size, size);
}

/// A hint entry (path fields are filled in by `GuestRing::stage`).
pub fn hint(req: u64, ns: u32, mtime: i64, size: u64) -> SubmissionEntry {
    SubmissionEntry {
        request_id: req,
        namespace_id: ns,
        mtime_ns: mtime,
        file_size: size,
        page_count: 1,
        ..Default::default()
    }
}

/// A path of exactly `len` bytes, varied by `seed`.
pub fn path_of(len: usize, seed: u64) -> Vec<u8> {
    let mut p = format!("usr/lib/f{seed}/").into_bytes();
    while p.len() < len {
        p.push(b'a' + (p.len() as u8 % 26));
    }
    p.truncate(len);
    p
}

/// A ring region on a memfd with the host end initialised, and a fake guest
/// attached to the same mapping.
pub fn ring_pair(
    size: usize,
    sizes: Option<RingSizes>,
    start: u32,
    id: u32,
) -> (HostRing, GuestRing) {
    let (map, _fd) = SharedMapping::memfd("vmdedup-test", size).unwrap();
    let mut cfg = RingConfig::new(RingId(id), 77);
    cfg.sizes = sizes;
    cfg.initial_index = start;
    let host = HostRing::create(map, cfg).unwrap();
    let bell = host.shared().doorbell.try_clone().unwrap();
    let guest = GuestRing::attach(Arc::clone(host.mapping()), Some(bell)).unwrap();
    (host, guest)
}

/// Unused doorbell type re-export for tests that build their own.
pub type Bell = EventFd;

/// A directory under the system temp dir, unique to this process and
/// thread, removed (with what is in it) when dropped.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    /// Creates it afresh, removing what a crashed earlier run left.
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "vmdedup-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A small tmpfs mounted for a test, unmounted when dropped. Mounting needs
/// root, as the selftest machines have; without it `mount` says so and
/// returns `None`, and the caller checks nothing.
pub struct SmallTmpfs(pub std::path::PathBuf, TempDir);

impl SmallTmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it, e.g. "8m").
    pub fn mount(tag: &str, size: &str) -> Option<SmallTmpfs> {
        let d = TempDir::new(tag);
        let dir = d.0.join("mnt");
        std::fs::create_dir_all(&dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "vmdedup-test"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("cannot mount a tmpfs (not root?): this test checks nothing here");
            return None;
        }
        Some(SmallTmpfs(dir, d))
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        // Before the directory it is mounted on goes (the field's drop).
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// Polls `f` until it returns something, for at most a minute: a hang
/// guard, not a timing assertion.
pub fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "gave up waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}
