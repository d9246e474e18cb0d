//! The hint service end to end with fake guests: real files in temporary
//! namespaces, answers read back out of the pool the way a guest reads them
//! (header, table, checksum, bounds), and compared byte for byte with the
//! host file.

use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vmdedup_host_agent::namespace::{GuestIdentity, Namespace, NamespaceConfig, ResolveMode};
use vmdedup_host_agent::service::{
    answer_status, EventSink, HintResult, HintService, ServiceConfig,
};
use vmdedup_host_agent::store::{PageStore, StoreConfig, VmId};
use vmdedup_protocol::abi::AnswerStatus;
use vmdedup_protocol::control::MissReason;
use vmdedup_protocol::pool::TableRef;

mod common;
use common::service::{
    content, expect_hit, guest_read, hint_until_done, ident, memfd_pool, ns_config, req,
    service_over,
};
use common::TempDir;

#[derive(Default)]
struct Events(Mutex<Vec<(char, VmId, u64)>>);
impl EventSink for Events {
    fn revoke(&self, vm: VmId, map: &TableRef) {
        self.0.lock().unwrap().push(('r', vm, map.file_map_id));
    }
    fn cut_off(&self, vm: VmId) {
        self.0.lock().unwrap().push(('c', vm, 0));
    }
    fn loaded(&self, vm: VmId, request_id: u64) {
        self.0.lock().unwrap().push(('l', vm, request_id));
    }
}

struct Setup {
    svc: HintService,
    dirs: Vec<TempDir>,
    events: Arc<Events>,
}

/// Namespace 1 "a" (domain default), namespace 2 "b" (domain other); VMs 1 and 2 in
/// domain default, VM 3 in domain other.
fn setup(budget_frames: u64, mode: ResolveMode) -> Setup {
    let a = TempDir::new("ns-a");
    let b = TempDir::new("ns-b");
    let ns = |name: &str, id, dir: &Path, dom: &str| {
        Namespace::open_with(ns_config(name, id, dir, &[dom]), mode).unwrap()
    };
    let namespaces = vec![ns("a", 1, &a.0, "default"), ns("b", 2, &b.0, "other")];
    let store = StoreConfig {
        budget_frames,
        ack_timeout_ms: 1_000_000,
        ..StoreConfig::default()
    };
    let cfg = ServiceConfig {
        workers: 0,
        chunk_pages: 3,
        retry_after_ms: 0,
        vm_load_backlog: 256,
        ..ServiceConfig::default()
    };
    let svc = service_over(namespaces, 77, store, cfg);
    svc.add_vm(3, "vm3", "other").unwrap();
    let events = Arc::new(Events::default());
    svc.set_event_sink(events.clone());
    Setup {
        svc,
        dirs: vec![a, b],
        events,
    }
}

/// Hints until the answer is no longer "loading" (running the loader in between).
fn hint(svc: &HintService, vm: VmId, ns: u32, path: &[u8], id: GuestIdentity) -> HintResult {
    *hint_until_done(svc, vm, ns, path, id, 3).last().unwrap()
}

#[test]
fn agent_two_guests_share_frames_byte_for_byte() {
    let s = setup(0, ResolveMode::Openat2);
    let dir = &s.dirs[0].0;
    std::fs::create_dir_all(dir.join("usr/lib")).unwrap();
    let data = content(1, 5 * 4096 + 123);
    std::fs::write(dir.join("usr/lib/libx.so"), &data).unwrap();
    let p = dir.join("usr/lib/libx.so");
    let first = s.svc.answer(1, &req(1, b"usr/lib/libx.so", ident(&p)));
    assert_eq!(
        first,
        HintResult::Miss(MissReason::Loading),
        "the poller never loads"
    );
    let l1 = expect_hit(hint(&s.svc, 1, 1, b"usr/lib/libx.so", ident(&p)));
    // The second VM is answered from the index: no load runs.
    let l2 = expect_hit(s.svc.answer(2, &req(1, b"usr/lib/libx.so", ident(&p))));
    assert_eq!(s.svc.load_pending(), 0);
    assert_eq!(l1, l2);
    let (bytes1, frames1) = guest_read(&s.svc, &l1);
    let (bytes2, frames2) = guest_read(&s.svc, &l2);
    assert_eq!(bytes1, data);
    assert_eq!(bytes2, data);
    assert_eq!(frames1, frames2);
    let st = s.svc.status(None);
    assert_eq!(st.pool.frames_used, 6);
    assert_eq!(st.counters.pages_mapped, 12);
    assert_eq!(st.pool.bytes_saved, 6 * 4096);
    assert_eq!(st.counters.hits, 2);
    assert_eq!(st.counters.misses.loading, 2);
    assert_eq!(st.vms.len(), 3);
    let json = vmdedup_host_agent::stats::status_json(&st);
    for k in [
        "frames_total",
        "frames_used",
        "pages_mapped",
        "bytes_saved",
        "hints",
        "hits",
        "misses",
        "hint_latency_us",
        "vms",
    ] {
        assert!(json.get(k).is_some(), "{k}");
    }
    assert_eq!(json["vms"][0]["pages_mapped"], 6);
    // A VM's own status shows only itself.
    let mine = s.svc.status(Some(2));
    assert_eq!(mine.vms.len(), 1);
    assert_eq!(mine.counters.hits, 1);
}

#[test]
fn agent_identical_pages_in_different_files_and_namespaces_share_frames() {
    let s = setup(0, ResolveMode::Openat2);
    let common = content(7, 3 * 4096);
    let mut x = common.clone();
    x.extend_from_slice(&content(8, 4096));
    let mut y = content(9, 4096);
    y.extend_from_slice(&common);
    std::fs::write(s.dirs[0].0.join("x"), &x).unwrap();
    std::fs::write(s.dirs[0].0.join("y"), &y).unwrap();
    std::fs::write(s.dirs[1].0.join("z"), &common).unwrap();
    let lx = expect_hit(hint(&s.svc, 1, 1, b"x", ident(&s.dirs[0].0.join("x"))));
    let ly = expect_hit(hint(&s.svc, 2, 1, b"y", ident(&s.dirs[0].0.join("y"))));
    let lz = expect_hit(hint(&s.svc, 3, 2, b"z", ident(&s.dirs[1].0.join("z"))));
    let (bx, fx) = guest_read(&s.svc, &lx);
    let (by, fy) = guest_read(&s.svc, &ly);
    let (bz, fz) = guest_read(&s.svc, &lz);
    assert_eq!((bx, by, bz), (x, y, common));
    assert_eq!(fx[..3], fy[1..]);
    assert_eq!(fx[..3], fz[..]);
    assert_eq!(s.svc.status(None).pool.frames_used, 5);
}

#[test]
fn agent_identity_mismatch_is_a_miss() {
    let s = setup(0, ResolveMode::Openat2);
    let p = s.dirs[0].0.join("f");
    std::fs::write(&p, content(3, 10_000)).unwrap();
    let good = ident(&p);
    let _ = hint(&s.svc, 1, 1, b"f", good);
    for bad in [
        GuestIdentity {
            size: good.size + 1,
            ..good
        },
        GuestIdentity {
            mtime_ns: good.mtime_ns + 1,
            ..good
        },
        GuestIdentity {
            size: 0,
            mtime_ns: 0,
            fingerprint: None,
        },
    ] {
        assert_eq!(
            hint(&s.svc, 2, 1, b"f", bad),
            HintResult::Miss(MissReason::IdentityMismatch)
        );
    }
    assert!(matches!(hint(&s.svc, 2, 1, b"f", good), HintResult::Hit(_)));
    assert_eq!(s.svc.status(Some(2)).counters.misses.identity_mismatch, 3);
}

fn escapes(mode: ResolveMode) {
    let s = setup(0, mode);
    let root = &s.dirs[0].0;
    let outside = TempDir::new("outside");
    std::fs::write(outside.0.join("secret"), b"secret").unwrap();
    std::fs::write(s.dirs[1].0.join("other-ns"), b"other namespace").unwrap();
    std::fs::create_dir_all(root.join("d/e")).unwrap();
    std::fs::write(root.join("d/ok"), b"ok").unwrap();
    symlink(outside.0.join("secret"), root.join("abs-link")).unwrap();
    symlink("../../etc/passwd", root.join("d/rel-link")).unwrap();
    symlink("ok", root.join("d/inner-link")).unwrap();
    symlink(&outside.0, root.join("dir-link")).unwrap();
    symlink("loop2", root.join("loop1")).unwrap();
    symlink("loop1", root.join("loop2")).unwrap();
    symlink("/proc/self/root/etc/passwd", root.join("proc-link")).unwrap();
    symlink("/proc/self/cwd", root.join("proc-cwd")).unwrap();
    let nulldev = root.join("null");
    // A device node and a FIFO (mknod needs root; skip the device if refused).
    let c = std::ffi::CString::new(nulldev.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid path; creates a char device 1:3 like /dev/null.
    let dev_ok =
        unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) } == 0;
    let f = std::ffi::CString::new(root.join("fifo").as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid path.
    assert_eq!(unsafe { libc::mkfifo(f.as_ptr(), 0o600) }, 0);
    let any = GuestIdentity {
        size: 0,
        mtime_ns: 0,
        fingerprint: None,
    };
    let cases: Vec<(&[u8], MissReason)> = vec![
        (b"../b/other-ns", MissReason::BadPath),
        (b"d/../../secret", MissReason::BadPath),
        (b"..", MissReason::BadPath),
        (b"/etc/passwd", MissReason::BadPath),
        (b"d/ok\0/../x", MissReason::BadPath),
        (b"d//ok", MissReason::BadPath),
        (b"./d/ok", MissReason::BadPath),
        (b"d/ok/", MissReason::BadPath),
        (b"", MissReason::BadPath),
        (b"abs-link", MissReason::BadPath),
        (b"d/rel-link", MissReason::BadPath),
        (b"d/inner-link", MissReason::BadPath),
        (b"dir-link/secret", MissReason::BadPath),
        (b"loop1", MissReason::BadPath),
        (b"proc-link", MissReason::BadPath),
        (b"proc-cwd/Cargo.toml", MissReason::BadPath),
        (b"d", MissReason::NotRegular),
        (b"d/e", MissReason::NotRegular),
        (b"fifo", MissReason::NotRegular),
        (b"nope", MissReason::NotFound),
        (b"d/ok/x", MissReason::NotFound),
    ];
    for (path, want) in cases {
        assert_eq!(
            hint(&s.svc, 1, 1, path, any),
            HintResult::Miss(want),
            "{}",
            String::from_utf8_lossy(path)
        );
    }
    if dev_ok {
        assert_eq!(
            hint(&s.svc, 1, 1, b"null", any),
            HintResult::Miss(MissReason::NotRegular)
        );
    }
    let long = vec![b'a'; 5000];
    assert_eq!(
        hint(&s.svc, 1, 1, &long, any),
        HintResult::Miss(MissReason::BadPath)
    );
    // The inside file still works.
    let l = expect_hit(hint(&s.svc, 1, 1, b"d/ok", ident(&root.join("d/ok"))));
    assert_eq!(guest_read(&s.svc, &l).0, b"ok");
    assert_eq!(
        s.svc.status(None).pool.frames_used,
        1,
        "nothing from outside was loaded"
    );
}

#[test]
fn agent_path_escapes_are_refused_openat2() {
    escapes(ResolveMode::Openat2);
}

#[test]
fn agent_path_escapes_are_refused_walk() {
    escapes(ResolveMode::Walk);
}

#[test]
fn agent_vm_may_not_use_foreign_namespace() {
    let s = setup(0, ResolveMode::Openat2);
    std::fs::write(s.dirs[1].0.join("f"), b"tenant b").unwrap();
    let id = ident(&s.dirs[1].0.join("f"));
    // VM 1 (domain default) asks for namespace 2 (domain other): same answer as a
    // namespace that does not exist, and nothing is loaded.
    assert_eq!(
        hint(&s.svc, 1, 2, b"f", id),
        HintResult::Miss(MissReason::NoNamespace)
    );
    assert_eq!(
        hint(&s.svc, 1, 99, b"f", id),
        HintResult::Miss(MissReason::NoNamespace)
    );
    assert_eq!(
        hint(&s.svc, 42, 1, b"f", id),
        HintResult::Miss(MissReason::NoNamespace),
        "unknown VM"
    );
    assert_eq!(s.svc.status(None).pool.file_maps, 0);
    assert!(matches!(hint(&s.svc, 3, 2, b"f", id), HintResult::Hit(_)));
    // Listings are filtered the same way.
    assert_eq!(s.svc.files("", Some(1), 0, 64).0, 0);
    assert_eq!(s.svc.files("", Some(3), 0, 64).0, 1);
    assert_eq!(s.svc.namespaces(Some(1)).len(), 1);
    assert!(s.svc.warm("b", b"", Some(1), &mut |_| {}).is_err());
}

#[test]
fn agent_pool_exhaustion_revokes_and_reuses_only_after_acks() {
    // 8 frames of budget.
    let s = setup(8, ResolveMode::Openat2);
    let d = &s.dirs[0].0;
    std::fs::write(d.join("big"), content(1, 6 * 4096)).unwrap();
    std::fs::write(d.join("other"), content(2, 4 * 4096)).unwrap();
    let lb = expect_hit(hint(&s.svc, 1, 1, b"big", ident(&d.join("big"))));
    let _ = expect_hit(hint(&s.svc, 2, 1, b"big", ident(&d.join("big"))));
    // "big" is shared: VM 1's load may not revoke it.
    assert_eq!(
        hint(&s.svc, 1, 1, b"other", ident(&d.join("other"))),
        HintResult::Miss(MissReason::PoolFull)
    );
    assert!(s.events.0.lock().unwrap().is_empty());
    // The operator revokes it.
    assert_eq!(s.svc.evict("a", "big").unwrap(), (0, 1));
    let ev = s.events.0.lock().unwrap().clone();
    assert_eq!(ev, vec![('r', 1, lb.file_map_id), ('r', 2, lb.file_map_id)]);
    // Still revoking: the frames of "big" keep their bytes for the VM that has not acked.
    assert!(s.svc.ack(1, lb.file_map_id));
    assert_eq!(
        hint(&s.svc, 1, 1, b"other", ident(&d.join("other"))),
        HintResult::Miss(MissReason::PoolFull)
    );
    let still = s
        .svc
        .inspect_store(|st| st.frames_of(lb.file_map_id).map(|f| f.to_vec()))
        .unwrap();
    let intact = || {
        s.svc.inspect_store(|st| {
            let data = content(1, 6 * 4096);
            for (i, f) in still.iter().enumerate() {
                assert_eq!(st.pool().frame(*f), &data[i * 4096..(i + 1) * 4096]);
            }
        })
    };
    intact();
    // VM 2 never acks: cut off after the deadline, but what it may still map
    // stays charged to it.
    s.svc.tick_at(u64::MAX / 2);
    assert!(s.events.0.lock().unwrap().contains(&('c', 2, 0)));
    let vm2 = |svc: &HintService| svc.vms(Some(2)).pop().unwrap();
    assert!(vm2(&s.svc).cut_off);
    assert_eq!(vm2(&s.svc).maps_held, 1);
    assert_eq!(
        hint(&s.svc, 1, 1, b"other", ident(&d.join("other"))),
        HintResult::Miss(MissReason::PoolFull)
    );
    intact();
    // Its guest acknowledges the cut-off: now the load succeeds.
    assert!(s.svc.cut_off_acknowledged(2));
    assert_eq!(vm2(&s.svc).maps_held, 0);
    let lo = expect_hit(hint(&s.svc, 1, 1, b"other", ident(&d.join("other"))));
    assert_eq!(guest_read(&s.svc, &lo).0, content(2, 4 * 4096));
    assert_eq!(
        hint(&s.svc, 2, 1, b"other", ident(&d.join("other"))),
        HintResult::Miss(MissReason::CutOff)
    );
    let st = s.svc.status(None);
    assert!(st.vms.iter().any(|v| v.name == "vm2" && v.cut_off));
}

#[test]
fn agent_a_vms_huge_file_revokes_only_its_own_maps() {
    let s = setup(8, ResolveMode::Openat2);
    let d = &s.dirs[0].0;
    std::fs::write(d.join("mine"), content(1, 3 * 4096)).unwrap();
    std::fs::write(d.join("theirs"), content(2, 3 * 4096)).unwrap();
    std::fs::write(d.join("huge"), content(3, 6 * 4096)).unwrap();
    let lm = expect_hit(hint(&s.svc, 1, 1, b"mine", ident(&d.join("mine"))));
    let lt = expect_hit(hint(&s.svc, 2, 1, b"theirs", ident(&d.join("theirs"))));
    assert_eq!(
        hint(&s.svc, 1, 1, b"huge", ident(&d.join("huge"))),
        HintResult::Miss(MissReason::PoolFull)
    );
    assert_eq!(
        s.events.0.lock().unwrap().clone(),
        vec![('r', 1, lm.file_map_id)],
        "only VM 1's own map is revoked"
    );
    assert!(s.svc.ack(1, lm.file_map_id));
    assert_eq!(
        hint(&s.svc, 2, 1, b"theirs", ident(&d.join("theirs"))),
        HintResult::Hit(lt)
    );
    // Still too big while VM 2's map stays: VM 1 gets no more room.
    assert_eq!(
        hint(&s.svc, 1, 1, b"huge", ident(&d.join("huge"))),
        HintResult::Miss(MissReason::PoolFull)
    );
    assert_eq!(s.events.0.lock().unwrap().len(), 1);
}

#[test]
fn agent_a_vm_within_its_share_gets_room_from_one_above_it() {
    // 8 frames of budget and two VMs in the domain: under pressure, a fair
    // share of 4 pages each.
    let s = setup(8, ResolveMode::Openat2);
    let d = &s.dirs[0].0;
    let names: Vec<String> = (0..5).map(|i| format!("f{i}")).collect();
    for (i, n) in names.iter().enumerate() {
        std::fs::write(d.join(n), content(10 + i as u32, 2 * 4096)).unwrap();
    }
    std::fs::write(d.join("big"), content(20, 3 * 4096)).unwrap();
    let h = |vm, n: &str| hint(&s.svc, vm, 1, n.as_bytes(), ident(&d.join(n)));
    // VM 1 fills the pool while nobody else wants room.
    let held: Vec<TableRef> = names[..4].iter().map(|n| expect_hit(h(1, n))).collect();
    // VM 2's file needs 3 frames: VM 1's two least recently used maps are
    // asked back (its share is 4 pages).
    assert_eq!(h(2, "big"), HintResult::Miss(MissReason::PoolFull));
    assert_eq!(
        s.events.0.lock().unwrap().clone(),
        vec![('r', 1, held[0].file_map_id), ('r', 1, held[1].file_map_id)]
    );
    assert!(s.svc.ack(1, held[0].file_map_id));
    assert!(s.svc.ack(1, held[1].file_map_id));
    // While VM 2 waits, VM 1 is held to its share: its new file loads into
    // the room but is not handed to it, so the room stays VM 2's.
    assert_eq!(h(1, &names[4]), HintResult::Miss(MissReason::OverQuota));
    let lb = expect_hit(h(2, "big"));
    assert_eq!(guest_read(&s.svc, &lb).0, content(20, 3 * 4096));
    // VM 1, at its share now, makes room only from its own maps again.
    s.events.0.lock().unwrap().clear();
    assert_eq!(h(1, &names[4]), HintResult::Miss(MissReason::PoolFull));
    assert_eq!(
        s.events.0.lock().unwrap().clone(),
        vec![('r', 1, held[2].file_map_id)]
    );
    assert_eq!(guest_read(&s.svc, &held[3]).0, content(13, 2 * 4096));
}

#[test]
fn agent_warm_then_first_hint_hits_and_evict() {
    let s = setup(0, ResolveMode::Openat2);
    let d = &s.dirs[0].0;
    std::fs::create_dir_all(d.join("t/u")).unwrap();
    for (i, name) in ["t/a", "t/u/b", "c"].iter().enumerate() {
        std::fs::write(d.join(name), content(i as u32 + 10, 5000 * (i + 1))).unwrap();
    }
    symlink("c", d.join("t/link")).unwrap();
    let mut seen = Vec::new();
    let p = s.svc.warm("a", b"t", None, &mut |p| seen.push(*p)).unwrap();
    assert_eq!((p.files_total, p.files_done, p.skipped), (2, 2, 0));
    assert_eq!(seen.len(), 3);
    let l = expect_hit(s.svc.answer(1, &req(1, b"t/u/b", ident(&d.join("t/u/b")))));
    assert_eq!(
        guest_read(&s.svc, &l).0,
        std::fs::read(d.join("t/u/b")).unwrap()
    );
    let (total, files) = s.svc.files("a", None, 0, 10);
    assert_eq!(total, 2);
    assert_eq!(files[0].path.as_str(), "t/a");
    // t/a is unreferenced: dropped; t/u/b is held: revocation started.
    assert_eq!(s.svc.evict("a", "t").unwrap(), (1, 1));
    assert_eq!(s.svc.load_pending(), 0);
    assert!(s.svc.wait_idle(Duration::from_secs(1)));
}

/// What `events` has been told about loads, sorted.
fn loaded(events: &Events) -> Vec<(VmId, u64)> {
    let mut v: Vec<_> = events
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.0 == 'l')
        .map(|e| (e.1, e.2))
        .collect();
    v.sort();
    v
}

#[test]
fn agent_hints_answered_loading_that_asked_are_told_when_their_file_is_in() {
    let s = setup(0, ResolveMode::Openat2);
    let dir = &s.dirs[0].0;
    std::fs::write(dir.join("f"), content(3, 3 * 4096)).unwrap();
    std::fs::write(dir.join("g"), content(4, 4096)).unwrap();
    let asking = |path: &'static [u8], request_id: u64| {
        let mut h = req(
            1,
            path,
            ident(&dir.join(std::str::from_utf8(path).unwrap())),
        );
        h.request_id = request_id;
        h.notify_loaded = true;
        h
    };
    let loading = HintResult::Miss(MissReason::Loading);
    // Two VMs ask about the same load; a third hint does not ask; a hint
    // for a file that is not there asks about a load that will fail.
    assert_eq!(s.svc.answer_noting(1, &asking(b"f", 41)), (loading, true));
    assert_eq!(s.svc.answer_noting(2, &asking(b"f", 7)), (loading, true));
    let mut quiet = req(1, b"g", ident(&dir.join("g")));
    quiet.request_id = 42;
    assert_eq!(s.svc.answer_noting(1, &quiet), (loading, false));
    let mut gone = asking(b"f", 43);
    gone.path = b"not-there";
    assert_eq!(s.svc.answer(1, &gone), loading);
    assert_eq!(s.svc.load_waiters(1).0, 2);
    assert_eq!(loaded(&s.events), vec![], "told before the load ran");
    assert_eq!(s.svc.load_pending(), 3);
    assert_eq!(loaded(&s.events), vec![(1, 41), (2, 7)]);
    assert_eq!((s.svc.load_waiters(1).0, s.svc.load_waiters(2).0), (0, 0));
    // Told, and nothing is held for them until they hint again.
    assert_eq!(s.svc.status(Some(1)).vms[0].maps_held, 0);
    let l = expect_hit(s.svc.answer(1, &asking(b"f", 44)));
    assert_eq!(guest_read(&s.svc, &l).0, content(3, 3 * 4096));
    // A hit, or a miss with nothing loading (a file not there, known now),
    // leaves no waiter behind.
    assert_eq!(
        s.svc.answer(1, &gone),
        HintResult::Miss(MissReason::NotFound)
    );
    assert_eq!(s.svc.load_waiters(1).0, 0);
    assert_eq!(s.svc.load_pending(), 0);
    assert_eq!(loaded(&s.events), vec![(1, 41), (2, 7)]);
}

#[test]
fn agent_hints_past_the_load_bound_wait_in_the_backlog_and_are_told_too() {
    let s = setup(0, ResolveMode::Openat2);
    let dir = &s.dirs[0].0;
    let bound = ServiceConfig::default().vm_max_loads;
    let names: Vec<String> = (0..bound + 3).map(|i| format!("b{i}")).collect();
    for (i, n) in names.iter().enumerate() {
        std::fs::write(dir.join(n), content(i as u32, 4096)).unwrap();
    }
    let loading = HintResult::Miss(MissReason::Loading);
    for (i, n) in names.iter().enumerate() {
        let mut h = req(1, n.as_bytes(), ident(&dir.join(n)));
        h.request_id = 100 + i as u64;
        h.notify_loaded = true;
        assert_eq!(s.svc.answer_noting(1, &h), (loading, true), "{n}");
    }
    assert_eq!(s.svc.loads_in_flight(Some(1)), bound);
    assert_eq!(s.svc.load_backlog(Some(1)).0, 3);
    assert_eq!(s.svc.load_waiters(1).0, bound + 3);
    assert_eq!(s.svc.load_pending(), bound + 3);
    let want: Vec<_> = (0..bound + 3).map(|i| (1, 100 + i as u64)).collect();
    assert_eq!(loaded(&s.events), want, "every hint that asked was told");
    assert_eq!(s.svc.load_waiters(1).0, 0);
    // And each is in the pool with its own bytes.
    for (i, n) in names.iter().enumerate().skip(bound) {
        let l = expect_hit(s.svc.answer(1, &req(1, n.as_bytes(), ident(&dir.join(n)))));
        assert_eq!(guest_read(&s.svc, &l).0, content(i as u32, 4096));
    }
}

#[test]
fn agent_every_hint_answered_loading_that_asked_is_told_with_loaders_running() {
    // Loader threads run the loads while hints come: a small file may be
    // loaded before the poller that queued it gets back (on a busy host it
    // is descheduled when it wakes a loader). The hint waits for its load
    // all the same, and is told.
    let d = TempDir::new("notice-race");
    let files = 600usize;
    for i in 0..files {
        std::fs::write(d.0.join(format!("f{i}")), content(i as u32, 100)).unwrap();
    }
    let ns =
        Namespace::open_with(ns_config("a", 1, &d.0, &["default"]), ResolveMode::Openat2).unwrap();
    let cfg = ServiceConfig {
        workers: 2,
        ..ServiceConfig::default()
    };
    let svc = service_over(vec![ns], 5, StoreConfig::default(), cfg);
    let events = Arc::new(Events::default());
    svc.set_event_sink(events.clone());
    let loading = HintResult::Miss(MissReason::Loading);
    let mut noted = 0;
    for i in 0..files {
        let p = format!("f{i}");
        let mut h = req(1, p.as_bytes(), ident(&d.0.join(&p)));
        h.request_id = i as u64;
        h.notify_loaded = true;
        let (r, n) = svc.answer_noting(1, &h);
        assert_eq!(r, loading, "{p}: a file nobody loaded yet");
        noted += n as usize;
        // Within the VM's bounds of waiters and loads (past them a hint is
        // not told, by design): the loaders catch up, as with a guest's reads.
        while svc.loads_in_flight(Some(1)) >= 12 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    assert_eq!(noted, files, "every hint that asked waits for its load");
    // The last notices are sent just after their loads count as done.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while loaded(&events).len() < files && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(svc.wait_idle(Duration::from_secs(60)));
    let told = loaded(&events);
    assert_eq!(told.len(), files, "and is told once");
    assert_eq!(told, (0..files as u64).map(|i| (1, i)).collect::<Vec<_>>());
}

#[test]
fn agent_a_removed_vm_waits_for_no_load() {
    let s = setup(0, ResolveMode::Openat2);
    let dir = &s.dirs[0].0;
    std::fs::write(dir.join("f"), content(3, 4096)).unwrap();
    let mut h = req(1, b"f", ident(&dir.join("f")));
    h.notify_loaded = true;
    h.request_id = 5;
    assert_eq!(s.svc.answer(2, &h), HintResult::Miss(MissReason::Loading));
    assert_eq!(s.svc.load_waiters(2).0, 1);
    // Past its bound of loads, more wait in its backlog.
    let bound = ServiceConfig::default().vm_max_loads;
    for i in 0..bound {
        let p = format!("missing{i}");
        assert_eq!(
            s.svc
                .answer(2, &req(1, p.as_bytes(), ident(&dir.join("f")))),
            HintResult::Miss(MissReason::Loading)
        );
    }
    assert_eq!(s.svc.load_backlog(Some(2)).0, 1);
    s.svc.remove_vm(2);
    assert_eq!(s.svc.load_waiters(2).0, 0);
    assert_eq!(s.svc.load_backlog(Some(2)).0, 0, "its backlog is dropped");
    assert_eq!(s.svc.load_pending(), bound, "what was queued still runs");
    assert_eq!(loaded(&s.events), vec![]);
}

#[test]
fn agent_loader_threads_serve_hints() {
    let a = TempDir::new("threads");
    std::fs::write(a.0.join("f"), content(5, 70_000)).unwrap();
    let ns = Namespace::open(ns_config("a", 1, &a.0, &["*"])).unwrap();
    let pool = memfd_pool(1 << 20, 0, 1);
    let svc = HintService::new(
        PageStore::new(pool, StoreConfig::default()),
        vec![ns],
        ServiceConfig::default(),
    );
    svc.add_vm(1, "vm1", "anything").unwrap();
    let id = ident(&a.0.join("f"));
    let h = req(1, b"f", id);
    assert_eq!(svc.answer(1, &h), HintResult::Miss(MissReason::Loading));
    assert!(svc.wait_idle(Duration::from_secs(30)));
    let l = expect_hit(svc.answer(1, &h));
    assert_eq!(guest_read(&svc, &l).0, content(5, 70_000));
    svc.shutdown();
}

#[test]
fn agent_quota_misses_are_retryable_and_per_vm() {
    let s = setup(0, ResolveMode::Openat2);
    let d = &s.dirs[0].0;
    std::fs::write(d.join("two"), content(1, 2 * 4096)).unwrap();
    std::fs::write(d.join("one"), content(2, 4096)).unwrap();
    std::fs::write(d.join("four"), content(3, 4 * 4096)).unwrap();
    s.svc.set_vm_quota(1, Some(2));
    let l2 = expect_hit(hint(&s.svc, 1, 1, b"two", ident(&d.join("two"))));
    let over = hint(&s.svc, 1, 1, b"one", ident(&d.join("one")));
    assert_eq!(over, HintResult::Miss(MissReason::OverQuota));
    assert_eq!(
        answer_status(MissReason::OverQuota),
        AnswerStatus::Loading,
        "the guest asks again later"
    );
    assert_eq!(
        hint(&s.svc, 1, 1, b"four", ident(&d.join("four"))),
        HintResult::Miss(MissReason::TooLarge)
    );
    // VM 2 is not limited by VM 1's quota.
    let _ = expect_hit(hint(&s.svc, 2, 1, b"one", ident(&d.join("one"))));
    let _ = expect_hit(hint(&s.svc, 2, 1, b"four", ident(&d.join("four"))));
    // Released: VM 1 fits again.
    s.svc.release(1, l2.file_map_id);
    let _ = expect_hit(hint(&s.svc, 1, 1, b"one", ident(&d.join("one"))));
    let st = s.svc.status(Some(1));
    assert_eq!(st.counters.misses.over_quota, 1);
    assert_eq!(st.counters.misses.too_large, 1);
}

#[test]
fn agent_fingerprint_tells_equal_size_and_mtime_apart() {
    use vmdedup_host_agent::namespace::fingerprint::fingerprint_of;
    let s = setup(0, ResolveMode::Openat2);
    let dir = &s.dirs[0].0;
    let data = content(7, 3 * 4096 + 5);
    std::fs::write(dir.join("f"), &data).unwrap();
    // The guest's copy: same size and mtime (a reproducible build), one
    // byte different.
    let mut theirs = data.clone();
    theirs[5000] ^= 0xff;
    let id = ident(&dir.join("f"));
    let wrong = GuestIdentity {
        fingerprint: Some(fingerprint_of(&theirs)),
        ..id
    };
    let right = GuestIdentity {
        fingerprint: Some(fingerprint_of(&data)),
        ..id
    };
    assert_eq!(
        hint(&s.svc, 1, 1, b"f", wrong),
        HintResult::Miss(MissReason::IdentityMismatch)
    );
    let l = expect_hit(hint(&s.svc, 1, 1, b"f", right));
    assert_eq!(guest_read(&s.svc, &l).0, data);
    // Without a fingerprint size and mtime still decide (the namespace does
    // not require one).
    expect_hit(hint(&s.svc, 2, 1, b"f", id));
    // A second name of the same stored file (a hardlink) is answered from
    // the store index, and its fingerprint still comes from the bytes.
    std::fs::hard_link(dir.join("f"), dir.join("g")).unwrap();
    assert_eq!(
        hint(&s.svc, 1, 1, b"g", wrong),
        HintResult::Miss(MissReason::IdentityMismatch)
    );
    assert_eq!(expect_hit(hint(&s.svc, 1, 1, b"g", right)), l);
}

#[test]
fn agent_require_fingerprint_misses_hints_without_one() {
    use vmdedup_host_agent::namespace::fingerprint::fingerprint_of;
    let a = TempDir::new("require-fp");
    let data = content(9, 10_000);
    std::fs::write(a.0.join("f"), &data).unwrap();
    let ns = Namespace::open(NamespaceConfig {
        require_fingerprint: true,
        ..ns_config("a", 1, &a.0, &["*"])
    })
    .unwrap();
    let pool = memfd_pool(1 << 20, 0, 1);
    let svc = HintService::new(
        PageStore::new(pool, StoreConfig::default()),
        vec![ns],
        ServiceConfig {
            workers: 0,
            chunk_pages: 3,
            retry_after_ms: 0,
            ..ServiceConfig::default()
        },
    );
    svc.add_vm(1, "vm1", "default").unwrap();
    let id = ident(&a.0.join("f"));
    assert_eq!(
        hint(&svc, 1, 1, b"f", id),
        HintResult::Miss(MissReason::IdentityMismatch)
    );
    let with = GuestIdentity {
        fingerprint: Some(fingerprint_of(&data)),
        ..id
    };
    let l = expect_hit(hint(&svc, 1, 1, b"f", with));
    assert_eq!(guest_read(&svc, &l).0, data);
}

#[test]
fn agent_a_vm_sees_nothing_other_vms_did() {
    let s = setup(0, ResolveMode::Openat2);
    let d = &s.dirs[0].0;
    std::fs::write(d.join("mine"), content(11, 3 * 4096)).unwrap();
    std::fs::write(d.join("theirs"), content(12, 5 * 4096)).unwrap();
    let mine = expect_hit(hint(&s.svc, 1, 1, b"mine", ident(&d.join("mine"))));
    let seen = |vm| {
        let st = s.svc.status(Some(vm));
        let ns = s.svc.namespaces(Some(vm));
        let files: Vec<String> = s
            .svc
            .files("", Some(vm), 0, 64)
            .1
            .iter()
            .map(|f| f.path.as_str().to_string())
            .collect();
        (
            st.pool.frames_used,
            st.pool.file_maps,
            st.pool.bytes_saved,
            st.counters,
            ns.iter().map(|n| n.file_maps).collect::<Vec<_>>(),
            files,
        )
    };
    let before = seen(1);
    assert_eq!(before.5, vec!["mine".to_string()], "its own map listed");
    // VM 2 (same domain) loads another file and shares VM 1's.
    expect_hit(hint(&s.svc, 2, 1, b"theirs", ident(&d.join("theirs"))));
    let shared = expect_hit(hint(&s.svc, 2, 1, b"mine", ident(&d.join("mine"))));
    assert_eq!(shared, mine);
    // VM 3 (another domain) loads in its own namespace.
    std::fs::write(s.dirs[1].0.join("f"), content(13, 4096)).unwrap();
    expect_hit(hint(&s.svc, 3, 2, b"f", ident(&s.dirs[1].0.join("f"))));
    assert!(
        s.svc.status(None).pool.file_maps >= 3,
        "the host sees them all"
    );
    assert_eq!(seen(1), before, "VM 1's view did not move");
    // The same for the other way round: VM 2 does not see VM 1 let go.
    let vm2 = seen(2);
    s.svc.release(1, mine.file_map_id);
    assert_eq!(seen(2), vm2);
}

#[test]
fn agent_a_pool_only_hint_takes_what_the_pool_holds_and_queues_no_load() {
    // Room for one of the two files at a time: loading one evicts the other.
    let s = setup(4, ResolveMode::Openat2);
    let dir = &s.dirs[0].0;
    std::fs::write(dir.join("f"), content(3, 3 * 4096)).unwrap();
    std::fs::write(dir.join("g"), content(4, 3 * 4096)).unwrap();
    let pool_only = |path: &'static [u8], request_id: u64| {
        let mut h = req(
            1,
            path,
            ident(&dir.join(std::str::from_utf8(path).unwrap())),
        );
        h.request_id = request_id;
        h.pool_only = true;
        // Asking for a notice as well changes nothing: no load, no waiter.
        h.notify_loaded = true;
        h
    };
    let pool_full = HintResult::Miss(MissReason::PoolFull);
    // Never loaded: a miss, and nothing is queued.
    assert_eq!(
        s.svc.answer_noting(1, &pool_only(b"f", 1)),
        (pool_full, false)
    );
    assert_eq!(s.svc.load_waiters(1).0, 0);
    assert_eq!(s.svc.load_pending(), 0, "a pool-only miss queues no load");
    // Loaded by an ordinary hint: the pool-only hint takes it.
    let mine = expect_hit(hint(&s.svc, 1, 1, b"f", ident(&dir.join("f"))));
    let l = expect_hit(s.svc.answer(2, &pool_only(b"f", 2)));
    assert_eq!(guest_read(&s.svc, &l).0, content(3, 3 * 4096));
    // Another VM's load of g evicts f once nobody holds it; f's cached
    // answer still names the map that is gone. A pool-only hint does not
    // load f again (which would evict g).
    s.svc.release(1, mine.file_map_id);
    s.svc.release(2, l.file_map_id);
    let g = expect_hit(hint(&s.svc, 2, 1, b"g", ident(&dir.join("g"))));
    assert_eq!(
        s.svc.answer_noting(1, &pool_only(b"f", 3)),
        (pool_full, false)
    );
    assert_eq!(s.svc.load_pending(), 0, "f is not loaded again");
    assert_eq!(
        expect_hit(s.svc.answer(1, &pool_only(b"g", 4))),
        g,
        "g stayed"
    );
    // An ordinary hint still loads it, once g is let go.
    s.svc.release(1, g.file_map_id);
    s.svc.release(2, g.file_map_id);
    expect_hit(hint(&s.svc, 1, 1, b"f", ident(&dir.join("f"))));
}
