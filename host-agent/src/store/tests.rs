//! State-machine tests of the page store: no VM, no clock, no files.

use super::*;
use crate::pool::{PoolBacking, PoolSpec};

fn store(frames_budget: u64, ack_timeout_ms: u64) -> PageStore {
    let pool = PoolMemory::create(&PoolSpec {
        backing: PoolBacking::Memfd,
        size: 1 << 20,
        table_area: 8192,
        generation: 3,
    })
    .unwrap();
    PageStore::new(
        pool,
        StoreConfig {
            budget_frames: frames_budget,
            ack_timeout_ms,
        },
    )
}

fn key(ino: u64, size: u64) -> FileKey {
    FileKey {
        dev: 1,
        ino,
        size,
        mtime_ns: 0,
    }
}

fn label(p: &str) -> MapLabel {
    MapLabel {
        ns: 1,
        path: p.into(),
    }
}

fn file(seed: u8, pages: usize) -> Vec<u8> {
    (0..pages * 4096)
        .map(|i| seed.wrapping_add((i / 4096) as u8).wrapping_mul(31) ^ (i as u8))
        .collect()
}

fn check_served(s: &PageStore, loc: &TableRef, data: &[u8]) {
    for (i, &f) in s.frames_of(loc.file_map_id).unwrap().iter().enumerate() {
        let want = &data[i * 4096..((i + 1) * 4096).min(data.len())];
        assert_eq!(&s.pool().frame(f)[..want.len()], want, "page {i}");
    }
}

#[test]
fn identical_pages_share_one_frame_and_tails_are_zero_padded() {
    let mut s = store(0, 1000);
    let a = file(1, 3);
    let mut b = a.clone();
    b[4096 * 2..].fill(0xEE); // pages 0 and 1 equal, page 2 differs
    let la = s
        .load_bytes(key(1, a.len() as u64), label("a"), &a, 0)
        .unwrap();
    let lb = s
        .load_bytes(key(2, b.len() as u64), label("b"), &b, 0)
        .unwrap();
    assert_eq!(s.counts().frames_used, 4);
    assert_eq!(s.counts().pages_deduplicated, 2);
    let fa = s.frames_of(la.file_map_id).unwrap().to_vec();
    let fb = s.frames_of(lb.file_map_id).unwrap().to_vec();
    assert_eq!(fa[..2], fb[..2]);
    assert_ne!(fa[2], fb[2]);
    check_served(&s, &la, &a);
    check_served(&s, &lb, &b);
    // a short file: the tail of its frame is zero
    let c = b"short".to_vec();
    let lc = s.load_bytes(key(3, 5), label("c"), &c, 0).unwrap();
    let f = s.frames_of(lc.file_map_id).unwrap()[0];
    assert!(s.pool().frame(f)[5..].iter().all(|&x| x == 0));
    // same version loaded twice: same map
    assert_eq!(
        s.load_bytes(key(1, a.len() as u64), label("a"), &a, 0)
            .unwrap(),
        la
    );
}

#[test]
fn unreferenced_maps_are_evicted_lru_first() {
    let mut s = store(4, 1000);
    let l1 = s
        .load_bytes(key(1, 8192), label("1"), &file(1, 2), 0)
        .unwrap();
    let l2 = s
        .load_bytes(key(2, 8192), label("2"), &file(50, 2), 0)
        .unwrap();
    s.add_vm(7);
    s.hold(7, l1.file_map_id).unwrap();
    s.release(7, l1.file_map_id, 0); // touched more recently than 2
    let _l3 = s
        .load_bytes(key(3, 8192), label("3"), &file(100, 2), 0)
        .unwrap();
    assert!(
        s.lookup(&key(2, 8192)).is_none(),
        "2 was least recently used"
    );
    assert_eq!(s.lookup(&key(1, 8192)), Some(l1.file_map_id));
    assert_eq!(s.counts().evictions, 1);
    assert!(s.take_events().is_empty(), "nobody held 2: no revocation");
    let _ = l2;
}

#[test]
fn held_maps_are_revoked_and_frames_wait_for_every_ack() {
    let mut s = store(4, 1000);
    s.add_vm(1);
    s.add_vm(2);
    let data = file(1, 4);
    let l = s
        .load_bytes(key(1, data.len() as u64), label("big"), &data, 0)
        .unwrap();
    s.hold(1, l.file_map_id).unwrap();
    s.hold(2, l.file_map_id).unwrap();
    assert_eq!(s.counts().pages_mapped, 8);
    // Full: loading another file revokes the held one and fails for now.
    assert_eq!(
        s.load_bytes(key(2, 4096), label("new"), &file(9, 1), 10),
        Err(StoreError::PoolFull)
    );
    let ev = s.take_events();
    assert_eq!(ev.len(), 2);
    assert!(ev
        .iter()
        .all(|e| matches!(e, StoreEvent::Revoke { map, .. } if map.file_map_id == l.file_map_id)));
    assert!(
        s.lookup(&key(1, data.len() as u64)).is_none(),
        "a revoked map is not handed out again"
    );
    assert!(s.hold(1, l.file_map_id).is_err());
    // One ack is not enough: frames are still in use, and still hold the data.
    assert!(s.ack(1, l.file_map_id, 20));
    assert!(!s.ack(1, l.file_map_id, 20), "a second ack is ignored");
    assert_eq!(s.counts().frames_used, 4);
    assert_eq!(
        s.load_bytes(key(2, 4096), label("new"), &file(9, 1), 20),
        Err(StoreError::PoolFull)
    );
    check_served(&s, &l, &data);
    // The last holder acks: frames are free and reused.
    assert!(s.ack(2, l.file_map_id, 30));
    assert_eq!(s.counts().frames_used, 0);
    assert!(s
        .load_bytes(key(2, 4096), label("new"), &file(9, 1), 30)
        .is_ok());
    assert_eq!(s.counts().pages_mapped, 0);
}

#[test]
fn a_vm_that_never_acks_is_cut_off_and_others_are_unaffected() {
    let mut s = store(6, 100);
    s.add_vm(1);
    s.add_vm(2);
    let a = s
        .load_bytes(key(1, 3 * 4096), label("a"), &file(1, 3), 0)
        .unwrap();
    let b = s
        .load_bytes(key(2, 3 * 4096), label("b"), &file(60, 3), 0)
        .unwrap();
    s.hold(1, a.file_map_id).unwrap();
    s.hold(2, a.file_map_id).unwrap();
    s.hold(2, b.file_map_id).unwrap();
    s.hold(1, b.file_map_id).unwrap(); // b more recent: a is revoked first
    assert_eq!(
        s.load_bytes(key(3, 4096), label("c"), &file(200, 1), 1000),
        Err(StoreError::PoolFull)
    );
    let _ = s.take_events();
    assert!(s.ack(2, a.file_map_id, 1050));
    s.tick(1099);
    assert_eq!(
        s.counts().frames_used,
        6,
        "before the deadline nothing is freed"
    );
    assert!(s.take_events().is_empty());
    s.tick(1100);
    assert_eq!(s.take_events(), vec![StoreEvent::CutOff { vm: 1 }]);
    let h1 = s.vm_holdings(1).unwrap();
    assert!(h1.cut_off);
    assert_eq!(h1.maps_held, 0);
    assert_eq!(s.hold(1, b.file_map_id), Err(StoreError::CutOff(1)));
    // VM 2 keeps b, and a's frames are free.
    let h2 = s.vm_holdings(2).unwrap();
    assert_eq!((h2.maps_held, h2.cut_off), (1, false));
    assert_eq!(s.lookup(&key(2, 3 * 4096)), Some(b.file_map_id));
    assert_eq!(s.counts().frames_used, 3);
    assert!(s
        .load_bytes(key(3, 4096), label("c"), &file(200, 1), 1100)
        .is_ok());
    s.reinstate_vm(1);
    assert!(s.hold(1, b.file_map_id).is_ok());
}

#[test]
fn too_large_and_table_space_pressure() {
    let mut s = store(4, 1000);
    assert_eq!(
        s.begin_load(key(1, 5 * 4096), label("x"), 0),
        Err(StoreError::TooLarge(5))
    );
    // Table area of 8 KiB: files of 250 pages take 1088 bytes of table each.
    let mut s = store(0, 1000);
    let mut n = 0;
    loop {
        match s.begin_load(key(100 + n, 250 * 4096), label("t"), 0) {
            Ok(_) => n += 1,
            Err(e) => {
                assert_eq!(e, StoreError::PoolFull);
                break;
            }
        }
        assert!(n < 10);
    }
    assert_eq!(n, 7);
}

#[test]
fn hostile_acks_and_releases_are_ignored() {
    let mut s = store(0, 1000);
    s.add_vm(1);
    s.add_vm(2);
    let l = s
        .load_bytes(key(1, 4096), label("a"), &file(1, 1), 0)
        .unwrap();
    s.hold(1, l.file_map_id).unwrap();
    assert!(!s.ack(2, l.file_map_id, 0));
    assert!(!s.ack(1, l.file_map_id, 0), "no revocation pending");
    assert!(!s.ack(1, 999, 0));
    s.release(2, l.file_map_id, 0);
    s.release(9, 999, 0);
    assert_eq!(s.vm_holdings(1).unwrap().maps_held, 1);
    assert!(s.hold(9, l.file_map_id).is_err());
    assert_eq!(
        s.add_page(l.file_map_id, &[0; 32], &[0; 4096], 0),
        Err(StoreError::NoMap(l.file_map_id))
    );
}
