//! The hint service's bounds against hostile guests: a million distinct
//! paths through a guest ring leave the path cache and the load queues
//! under their caps while another VM is served; a host file that changed
//! is noticed; a guest's warm is one at a time and bounded.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use vmdedup_host_agent::namespace::{GuestIdentity, Namespace};
use vmdedup_host_agent::ring::{GuestRing, HostRing, RingConfig, RingId, SharedMapping};
use vmdedup_host_agent::service::{
    CacheLimits, HintResult, HintService, ServiceConfig, ServiceError,
};
use vmdedup_host_agent::store::{StoreConfig, VmId};
use vmdedup_protocol::abi::{AnswerStatus, SubmissionEntry};
use vmdedup_protocol::control::MissReason;

mod common;
use common::service::{
    expect_hit, guest_read, hint_until_done, ident, ns_config, req, service_over,
};
use common::TempDir;

/// A service over one namespace "a" (id 1) in `dir`, VMs 1 and 2.
fn service(dir: &Path, cfg: ServiceConfig) -> HintService {
    let ns = Namespace::open(ns_config("a", 1, dir, &["default"])).unwrap();
    let store = StoreConfig {
        budget_frames: 0,
        ack_timeout_ms: 1_000_000,
        ..StoreConfig::default()
    };
    service_over(vec![ns], 9, store, cfg)
}

/// Hints `path` of namespace 1 until the answer is not "loading".
fn hint(svc: &HintService, vm: VmId, path: &[u8], id: GuestIdentity) -> HintResult {
    *hint_until_done(svc, vm, 1, path, id, 4).last().unwrap()
}

/// Sets a file's mtime (so a rewrite is a new version even within a tick).
fn set_mtime(p: &Path, secs: i64) {
    let f = std::fs::File::options().write(true).open(p).unwrap();
    f.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(secs as u64))
        .unwrap();
}

#[test]
fn a_changed_host_file_is_noticed_and_its_new_version_served() {
    let dir = TempDir::new("bounds-change");
    let svc = service(
        &dir.0,
        ServiceConfig {
            workers: 0,
            recheck_ms: 0,
            ..ServiceConfig::default()
        },
    );
    let p = dir.0.join("lib.so");
    let old: Vec<u8> = (0..3 * 4096 + 7).map(|i| (i % 251) as u8).collect();
    std::fs::write(&p, &old).unwrap();
    set_mtime(&p, 1_000_000);
    let old_id = ident(&p);
    let l1 = expect_hit(hint(&svc, 1, b"lib.so", old_id));
    assert_eq!(guest_read(&svc, &l1).0, old);

    // The host file and the second guest's copy change together.
    let new: Vec<u8> = (0..5 * 4096 + 1).map(|i| (i % 239) as u8 ^ 0x5a).collect();
    std::fs::write(&p, &new).unwrap();
    set_mtime(&p, 2_000_000);
    let new_id = ident(&p);
    assert_eq!(
        svc.answer(2, &req(1, b"lib.so", new_id)),
        HintResult::Miss(MissReason::Loading),
        "a mismatch against a cached version looks again"
    );
    assert_eq!(svc.load_pending(), 1);
    let l2 = expect_hit(svc.answer(2, &req(1, b"lib.so", new_id)));
    assert_ne!(l2.file_map_id, l1.file_map_id);
    assert_eq!(guest_read(&svc, &l2).0, new, "the new version is served");
    // The first guest's map stays valid, with the old bytes.
    assert_eq!(guest_read(&svc, &l1).0, old);
    // A guest that still has the old copy is now the one that differs: its
    // look again finds the current version stored, and loads nothing.
    let maps = svc.inspect_store(|s| s.counts().file_maps);
    assert_eq!(
        svc.answer(1, &req(1, b"lib.so", old_id)),
        HintResult::Miss(MissReason::Loading)
    );
    assert_eq!(svc.load_pending(), 1);
    assert_eq!(svc.inspect_store(|s| s.counts().file_maps), maps);
    assert_eq!(
        expect_hit(svc.answer(2, &req(1, b"lib.so", new_id))).file_map_id,
        l2.file_map_id
    );
}

#[test]
fn a_divergent_guest_rechecks_a_path_at_most_once_per_interval() {
    let dir = TempDir::new("bounds-recheck");
    let svc = service(
        &dir.0,
        ServiceConfig {
            workers: 0,
            recheck_ms: 3_600_000,
            ..ServiceConfig::default()
        },
    );
    let p = dir.0.join("f");
    std::fs::write(&p, b"host bytes").unwrap();
    let id = ident(&p);
    expect_hit(hint(&svc, 1, b"f", id));
    let other = GuestIdentity {
        size: id.size + 1,
        ..id
    };
    for _ in 0..1000 {
        assert_eq!(
            svc.answer(2, &req(1, b"f", other)),
            HintResult::Miss(MissReason::IdentityMismatch)
        );
    }
    assert_eq!(svc.load_pending(), 0, "no load before the interval passed");
    // Other guests keep hitting the cached version meanwhile.
    expect_hit(svc.answer(1, &req(1, b"f", id)));
}

#[test]
fn a_vm_past_its_load_bound_waits_in_its_backlog_then_is_told_loading_without_queueing() {
    let dir = TempDir::new("bounds-queue");
    let svc = service(
        &dir.0,
        ServiceConfig {
            workers: 0,
            vm_max_loads: 4,
            vm_load_backlog: 8,
            ..ServiceConfig::default()
        },
    );
    std::fs::write(dir.0.join("honest"), b"honest bytes").unwrap();
    let none = GuestIdentity {
        size: 1,
        mtime_ns: 1,
        fingerprint: None,
    };
    for i in 0..100 {
        let path = format!("nope/{i}");
        assert_eq!(
            svc.answer(1, &req(1, path.as_bytes(), none)),
            HintResult::Miss(MissReason::Loading)
        );
    }
    assert_eq!(svc.loads_in_flight(Some(1)), 4);
    assert_eq!(svc.load_backlog(Some(1)), (8, 8));
    assert_eq!(svc.load_queue_size(), (4, 88));
    // The other VM has a queue of its own, and waits behind none of VM 1's
    // backlog.
    let id = ident(&dir.0.join("honest"));
    assert_eq!(
        svc.answer(2, &req(1, b"honest", id)),
        HintResult::Miss(MissReason::Loading)
    );
    assert_eq!(svc.loads_in_flight(Some(2)), 1);
    assert_eq!(svc.load_pending(), 4 + 8 + 1, "the backlog followed");
    assert_eq!(svc.load_backlog(Some(1)).0, 0);
    expect_hit(svc.answer(2, &req(1, b"honest", id)));
    // What waited in the backlog was loaded: known now, with no new load.
    assert_eq!(
        svc.answer(1, &req(1, b"nope/11", none)),
        HintResult::Miss(MissReason::NotFound)
    );
    // What was refused is asked for again and loaded then.
    assert_eq!(
        svc.answer(1, &req(1, b"nope/99", none)),
        HintResult::Miss(MissReason::Loading)
    );
    assert_eq!(svc.load_pending(), 1);
    assert_eq!(
        svc.answer(1, &req(1, b"nope/99", none)),
        HintResult::Miss(MissReason::NotFound)
    );
}

#[test]
fn a_guest_warms_one_tree_at_a_time_and_at_most_its_file_bound() {
    let dir = TempDir::new("bounds-warm");
    let svc = service(
        &dir.0,
        ServiceConfig {
            workers: 0,
            warm_max_files: 3,
            ..ServiceConfig::default()
        },
    );
    std::fs::create_dir_all(dir.0.join("t")).unwrap();
    for i in 0..10 {
        std::fs::write(dir.0.join(format!("t/{i}")), vec![i as u8; 5000]).unwrap();
    }
    let p = svc.warm("a", b"t", Some(1), &mut |_| {}).unwrap();
    assert_eq!((p.files_total, p.files_done, p.skipped), (10, 10, 7));
    assert_eq!(p.pages, 3 * 2);
    // The operator is not bounded.
    let p = svc.warm("a", b"t", None, &mut |_| {}).unwrap();
    assert_eq!((p.files_done, p.skipped), (10, 0));
    // A second warm of the same VM while one runs is refused; another VM's is not.
    let svc2 = svc.clone();
    let mut inner = None;
    svc.warm("a", b"t/0", Some(1), &mut |_| {
        if inner.is_none() {
            inner = Some((
                svc2.warm("a", b"t/1", Some(1), &mut |_| {}).map(|_| ()),
                svc2.warm("a", b"t/1", Some(2), &mut |_| {}).map(|_| ()),
            ));
        }
    })
    .unwrap();
    let (same, other) = inner.unwrap();
    assert!(matches!(same, Err(ServiceError::Busy)));
    assert!(other.is_ok());
    assert!(!svc.is_warming(1));
    svc.warm("a", b"t/1", Some(1), &mut |_| {}).unwrap();
}

/// A ring region with the host end initialised, and a fake guest on it.
fn ring(id: u32) -> (HostRing, GuestRing) {
    let (map, _fd) = SharedMapping::memfd("vmdedup-flood", 1 << 20).unwrap();
    let host = HostRing::create(map, RingConfig::new(RingId(id), 9)).unwrap();
    let bell = host.shared().doorbell.try_clone().unwrap();
    let guest = GuestRing::attach(Arc::clone(host.mapping()), Some(bell)).unwrap();
    (host, guest)
}

/// `VmRSS` and `VmHWM` of this process, in KiB.
fn rss_kib() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Distinct paths of various lengths, some inline in the entry and some in
/// path slots (the longest a slot takes).
fn flood_path(i: u64, buf: &mut Vec<u8>) {
    buf.clear();
    buf.extend_from_slice(format!("flood/{i:x}/").as_bytes());
    let len = match i % 8 {
        0 => 4000,
        1 | 2 => 300,
        _ => 40,
    };
    while buf.len() < len {
        // Components stay under NAME_MAX.
        buf.push(if buf.len().is_multiple_of(200) {
            b'/'
        } else {
            b'a' + (buf.len() % 26) as u8
        });
    }
}

#[test]
fn a_million_distinct_paths_leave_the_service_within_its_bounds() {
    const N: u64 = 1_000_000;
    let dir = TempDir::new("bounds-flood");
    std::fs::write(dir.0.join("honest"), vec![7u8; 9000]).unwrap();
    let limits = CacheLimits::default();
    let cfg = ServiceConfig {
        workers: 0,
        vm_max_loads: 64,
        ..ServiceConfig::default()
    };
    let svc = service(&dir.0, cfg);
    let (mut host, mut guest) = ring(1);
    let (rss0, _) = rss_kib();
    let mut path = Vec::new();
    let (mut sent, mut answered, mut not_found, mut loading) = (0u64, 0u64, 0u64, 0u64);
    let mut max_queued = 0;
    let mut rounds = 0u64;
    let honest = ident(&dir.0.join("honest"));
    while answered < N {
        // As fast as the ring takes them.
        while sent < N {
            flood_path(sent, &mut path);
            let e = SubmissionEntry {
                request_id: sent,
                namespace_id: 1,
                mtime_ns: 1,
                file_size: 1,
                page_count: 1,
                ..Default::default()
            };
            if guest.stage(e, &path).is_err() {
                break;
            }
            sent += 1;
        }
        guest.publish();
        host.poll_round(&svc, 256);
        guest.reap(|c| {
            answered += 1;
            match AnswerStatus::from_u16(c.status) {
                Some(AnswerStatus::NotFound) => not_found += 1,
                Some(AnswerStatus::Loading) => loading += 1,
                other => panic!("flood hint answered {other:?}"),
            }
        });
        max_queued = max_queued.max(svc.load_queue_size().0);
        // The loaders keep up with some of it; the rest is refused.
        rounds += 1;
        if rounds.is_multiple_of(4) {
            svc.load_pending();
        }
        if answered % 100_000 < 256 {
            // Meanwhile another VM is served.
            assert!(matches!(
                hint(&svc, 2, b"honest", honest),
                HintResult::Hit(_)
            ));
        }
        let (entries, bytes) = svc.path_cache_size();
        assert!(entries <= limits.entries, "{entries} entries");
        assert!(bytes <= limits.bytes, "{bytes} bytes");
    }
    svc.load_pending();
    let (entries, bytes) = svc.path_cache_size();
    let (queued, refused) = svc.load_queue_size();
    let (rss1, hwm) = rss_kib();
    eprintln!(
        "flood: {N} hints, {not_found} not found, {loading} loading, {refused} not queued; \
         cache {entries} entries {bytes} bytes, {} dropped; queue max {max_queued}; \
         RSS {rss0} -> {rss1} KiB (HWM {hwm} KiB)",
        svc.path_cache_dropped()
    );
    assert_eq!(answered, N);
    assert!(max_queued <= cfg.vm_max_loads, "queue {max_queued}");
    assert_eq!(queued, 0);
    assert!(refused > 0, "the load bound was reached");
    assert!(
        svc.path_cache_dropped() > 0,
        "the cache was full and dropped"
    );
    // Far below what keeping a million paths would take (> 250 MB).
    assert!(
        rss1.saturating_sub(rss0) < 64 * 1024,
        "RSS grew from {rss0} to {rss1} KiB"
    );
}
