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
            ..StoreConfig::default()
        },
    )
}

pub(super) fn key(ino: u64, size: u64) -> FileKey {
    FileKey {
        dev: 1,
        ino,
        size,
        mtime_ns: 0,
    }
}

pub(super) fn label(p: &str) -> MapLabel {
    MapLabel {
        ns: 1,
        path: p.into(),
    }
}

pub(super) fn file(seed: u8, pages: usize) -> Vec<u8> {
    (0..pages * 4096)
        .map(|i| seed.wrapping_add((i / 4096) as u8).wrapping_mul(31) ^ (i as u8))
        .collect()
}

/// Loads `pages` pages of `file(seed, pages)` as file `ino` called `name`,
/// at time 0.
pub(super) fn load(s: &mut PageStore, ino: u64, name: &str, seed: u8, pages: usize) -> TableRef {
    s.load_bytes(
        key(ino, (pages * 4096) as u64),
        label(name),
        &file(seed, pages),
        0,
    )
    .unwrap()
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
    let l1 = load(&mut s, 1, "1", 1, 2);
    let l2 = load(&mut s, 2, "2", 50, 2);
    s.add_vm(7);
    s.hold(7, l1.file_map_id).unwrap();
    s.release(7, l1.file_map_id, 0); // touched more recently than 2
    let _l3 = load(&mut s, 3, "3", 100, 2);
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
    // Full, and the map is shared: nobody's load may revoke it.
    for who in [None, Some(1), Some(2)] {
        assert_eq!(
            s.load_bytes_for(who, key(2, 4096), label("new"), &file(9, 1), 10),
            Err(StoreError::PoolFull)
        );
        assert!(s.take_events().is_empty(), "{who:?} revoked a shared map");
    }
    // The operator revokes it.
    assert_eq!(s.evict_where(|_| true, 10), (0, 1));
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
fn pressure_revokes_only_the_requesters_own_maps() {
    let mut s = store(6, 1000);
    s.add_vm(1);
    s.add_vm(2);
    let a = load(&mut s, 1, "a", 1, 2);
    let b = load(&mut s, 2, "b", 60, 2);
    let c = load(&mut s, 3, "c", 120, 2);
    s.hold(1, a.file_map_id).unwrap(); // 1's own
    s.hold(2, b.file_map_id).unwrap(); // 2's own
    s.hold(1, c.file_map_id).unwrap(); // shared
    s.hold(2, c.file_map_id).unwrap();
    // VM 2 asks for a huge file: only b (its own, not shared) is revoked.
    assert_eq!(
        s.load_bytes_for(Some(2), key(9, 6 * 4096), label("huge"), &file(7, 6), 5),
        Err(StoreError::PoolFull)
    );
    let ev = s.take_events();
    assert_eq!(
        ev,
        vec![StoreEvent::Revoke {
            vm: 2,
            map: TableRef {
                file_map_id: b.file_map_id,
                ..b
            }
        }]
    );
    assert_eq!(s.lookup(&key(1, 2 * 4096)), Some(a.file_map_id));
    assert_eq!(s.lookup(&key(3, 2 * 4096)), Some(c.file_map_id));
    // The operator's load revokes nothing at all.
    assert_eq!(
        s.load_bytes(key(10, 4096), label("op"), &file(8, 1), 6),
        Err(StoreError::PoolFull)
    );
    assert!(s.take_events().is_empty());
    // VM 2 acknowledges: its load now fits in b's frames.
    assert!(s.ack(2, b.file_map_id, 7));
    assert!(s
        .load_bytes_for(Some(2), key(10, 2 * 4096), label("d"), &file(9, 2), 8)
        .is_ok());
    assert_eq!(s.vm_holdings(1).unwrap().maps_held, 2);
}

/// The revocations among `ev`, as (VM, map id), sorted.
fn revoked(ev: &[StoreEvent]) -> Vec<(VmId, MapId)> {
    let mut v: Vec<_> = ev
        .iter()
        .filter_map(|e| match e {
            StoreEvent::Revoke { vm, map } => Some((*vm, map.file_map_id)),
            StoreEvent::CutOff { .. } => None,
        })
        .collect();
    v.sort();
    v
}

#[test]
fn a_vm_within_its_fair_share_takes_room_from_one_above_it() {
    let mut s = store(8, 1000);
    s.add_vm(1);
    s.add_vm(2);
    // VM 1 alone fills the pool: nobody else wanted room.
    let held: Vec<TableRef> = (0..4)
        .map(|i| load(&mut s, 10 + i, "mine", 10 * i as u8, 2))
        .collect();
    for l in &held {
        s.hold(1, l.file_map_id).unwrap();
    }
    assert_eq!(s.vm_holdings(1).unwrap().pages_mapped, 8);
    // VM 2 wants 3 pages; its fair share is 8 / 2 = 4. VM 1's least recently
    // used maps go until they cover the 3 pages: two of them.
    let want = file(99, 3);
    assert_eq!(
        s.load_bytes_for(Some(2), key(20, 3 * 4096), label("theirs"), &want, 5),
        Err(StoreError::PoolFull)
    );
    assert_eq!(
        revoked(&s.take_events()),
        vec![(1, held[0].file_map_id), (1, held[1].file_map_id)]
    );
    assert_eq!(s.counts().share_revocations, 2);
    // Asking again before VM 1 acknowledged takes nothing more: VM 1 will be
    // at its share once they are gone.
    assert_eq!(
        s.load_bytes_for(Some(2), key(20, 3 * 4096), label("theirs"), &want, 6),
        Err(StoreError::PoolFull)
    );
    assert!(revoked(&s.take_events()).is_empty());
    // No deadline: a VM asked to give back for another's share (it may be
    // paused) is never cut off for it.
    assert!(s.tick(5 + 2 * 1000), "VM 2 still waits for room");
    assert!(!s.is_cut_off(1));
    assert_eq!(s.vm_holdings(1).unwrap().revocations_pending, 2);
    assert!(s.ack(1, held[0].file_map_id, 2_001));
    assert!(s.ack(1, held[1].file_map_id, 2_001));
    // While VM 2 waits, VM 1 gets no hit that would take it above its share
    // again (the room is VM 2's).
    let op = load(&mut s, 30, "op", 77, 1);
    assert_eq!(s.hold(1, op.file_map_id), Err(StoreError::OverQuota(1)));
    assert_eq!(s.counts().over_share, 1);
    // VM 2 gets its room, and VM 1 its hit once VM 2 waits no more.
    let l = s
        .load_bytes_for(Some(2), key(20, 3 * 4096), label("theirs"), &want, 2_002)
        .unwrap();
    s.hold(2, l.file_map_id).unwrap();
    check_served(&s, &l, &want);
    s.hold(1, op.file_map_id).unwrap();
    assert_eq!(s.vm_holdings(1).unwrap().pages_mapped, 5);
    for (i, l) in held.iter().enumerate().skip(2) {
        check_served(&s, l, &file(10 * i as u8, 2));
    }
}

#[test]
fn fair_share_spares_vms_within_it_and_the_requesters_maps() {
    let mut s = store(9, 1000);
    for vm in 1..=3 {
        s.add_vm(vm);
    }
    // Shares: 9 / 3 = 3. VM 1 will hold 9 (above), VMs 2 and 3 hold 2 each
    // (within), each sharing a map with VM 1.
    let shared_with_3 = load(&mut s, 1, "s3", 1, 2);
    let own = load(&mut s, 2, "own", 30, 2);
    let shared_with_2 = load(&mut s, 3, "s2", 60, 2);
    s.hold(1, shared_with_3.file_map_id).unwrap();
    s.hold(3, shared_with_3.file_map_id).unwrap();
    s.hold(1, own.file_map_id).unwrap();
    s.hold(1, shared_with_2.file_map_id).unwrap();
    s.hold(2, shared_with_2.file_map_id).unwrap();
    let filler = load(&mut s, 4, "f", 90, 3);
    s.hold(1, filler.file_map_id).unwrap();
    // VM 1: 9 pages. VM 2 (2 pages) wants 1 more: within its share. Only
    // VM 1's maps that no VM within its share and not VM 2 holds may go.
    assert_eq!(
        s.load_bytes_for(Some(2), key(9, 4096), label("new"), &file(5, 1), 5),
        Err(StoreError::PoolFull)
    );
    assert_eq!(revoked(&s.take_events()), vec![(1, own.file_map_id)]);
    // A VM above its share asks for room: only its own maps go, with a
    // deadline.
    assert_eq!(
        s.load_bytes_for(Some(1), key(10, 4096), label("more"), &file(6, 1), 6),
        Err(StoreError::PoolFull)
    );
    assert_eq!(revoked(&s.take_events()), vec![(1, filler.file_map_id)]);
    s.tick(6 + 1000);
    assert!(s.is_cut_off(1), "its own revocation has a deadline");
}

#[test]
fn waiting_for_room_ends_after_its_window() {
    let mut s = store(4, 1000);
    s.add_vm(1);
    s.add_vm(2);
    let a = load(&mut s, 1, "a", 1, 4);
    s.hold(1, a.file_map_id).unwrap();
    assert_eq!(
        s.load_bytes_for(Some(2), key(2, 4096), label("b"), &file(200, 1), 100),
        Err(StoreError::PoolFull)
    );
    assert_eq!(revoked(&s.take_events()), vec![(1, a.file_map_id)]);
    assert!(s.ack(1, a.file_map_id, 101));
    let op = load(&mut s, 3, "op", 150, 3);
    assert_eq!(s.hold(1, op.file_map_id), Err(StoreError::OverQuota(1)));
    assert!(s.tick(100 + FAIR_SHARE_WINDOW_MS - 1), "still waiting");
    assert!(!s.tick(100 + FAIR_SHARE_WINDOW_MS), "nothing left to time");
    s.hold(1, op.file_map_id).unwrap();
}

#[test]
fn a_vm_that_never_acks_is_cut_off_and_keeps_its_frames_charged() {
    let mut s = store(6, 100);
    s.add_vm(1);
    s.add_vm(2);
    let da = file(1, 3);
    let a = s.load_bytes(key(1, 3 * 4096), label("a"), &da, 0).unwrap();
    let b = load(&mut s, 2, "b", 60, 3);
    s.hold(1, a.file_map_id).unwrap();
    s.hold(2, a.file_map_id).unwrap();
    s.hold(2, b.file_map_id).unwrap();
    s.hold(1, b.file_map_id).unwrap();
    assert!(!s.tick(900), "no deadline runs before a revocation");
    assert_eq!(s.evict_where(|l| l.path == "a", 1000), (0, 1));
    let _ = s.take_events();
    assert!(s.ack(2, a.file_map_id, 1050));
    assert!(s.tick(1099), "the revocation's deadline runs");
    assert_eq!(
        s.counts().frames_used,
        6,
        "before the deadline nothing is freed"
    );
    assert!(s.take_events().is_empty());
    assert!(
        !s.tick(1100),
        "a revocation waiting only for a VM cut off has no deadline left"
    );
    assert_eq!(s.take_events(), vec![StoreEvent::CutOff { vm: 1 }]);
    s.tick(1200);
    assert!(s.take_events().is_empty(), "cut off once");
    let h1 = s.vm_holdings(1).unwrap();
    assert!(h1.cut_off);
    assert_eq!((h1.maps_held, h1.pages_mapped), (2, 6), "still charged");
    assert_eq!(h1.revocations_pending, 1);
    assert_eq!(s.hold(1, b.file_map_id), Err(StoreError::CutOff(1)));
    // a's frames are not freed: VM 1 may still map them.
    assert_eq!(s.counts().frames_used, 6);
    check_served(&s, &a, &da);
    assert_eq!(
        s.load_bytes(key(3, 4096), label("c"), &file(200, 1), 1200),
        Err(StoreError::PoolFull)
    );
    // A late ack still counts; an acknowledged cut-off releases the rest.
    assert!(s.release_all(1));
    assert!(!s.release_all(1));
    let h1 = s.vm_holdings(1).unwrap();
    assert_eq!((h1.maps_held, h1.pages_mapped, h1.cut_off), (0, 0, true));
    // VM 2 keeps b, and a's frames are free.
    let h2 = s.vm_holdings(2).unwrap();
    assert_eq!((h2.maps_held, h2.cut_off), (1, false));
    assert_eq!(s.lookup(&key(2, 3 * 4096)), Some(b.file_map_id));
    assert_eq!(s.counts().frames_used, 3);
    assert!(s
        .load_bytes(key(3, 4096), label("c"), &file(200, 1), 1300)
        .is_ok());
    s.reinstate_vm(1);
    assert!(s.hold(1, b.file_map_id).is_ok());
}

#[test]
fn a_reinstated_vm_keeps_old_holdings_until_it_reconnects() {
    let mut s = store(0, 100);
    s.add_vm(1);
    let a = load(&mut s, 1, "a", 1, 1);
    let b = load(&mut s, 2, "b", 2, 1);
    s.hold(1, a.file_map_id).unwrap();
    s.hold(1, a.file_map_id).unwrap();
    s.cut_off(1, 0);
    s.reinstate_vm(1);
    assert!(!s.is_cut_off(1));
    // Taken after the reinstatement: survives the reconnection.
    s.hold(1, a.file_map_id).unwrap();
    s.hold(1, b.file_map_id).unwrap();
    assert_eq!(s.vm_holdings(1).unwrap().maps_held, 2);
    assert!(s.vm_reconnected(1));
    assert!(!s.vm_reconnected(1), "nothing stale is left");
    assert_eq!(s.vm_holdings(1).unwrap().maps_held, 2);
    s.release(1, a.file_map_id, 0);
    s.release(1, b.file_map_id, 0);
    assert_eq!(s.vm_holdings(1).unwrap().maps_held, 0);
    // An acknowledged cut-off after reinstatement drops only the old ones.
    s.hold(1, a.file_map_id).unwrap();
    s.cut_off(1, 0);
    s.reinstate_vm(1);
    s.hold(1, b.file_map_id).unwrap();
    assert!(s.release_all(1));
    assert_eq!(s.vm_holdings(1).unwrap().maps_held, 1);
    assert_eq!(
        s.maps()
            .iter()
            .find(|m| m.id == b.file_map_id)
            .unwrap()
            .holders,
        1
    );
    // Removing the VM drops everything.
    s.remove_vm(1, 0);
    assert_eq!(s.counts().pages_mapped, 0);
    assert!(s.maps().iter().all(|m| m.holders == 0));
}

#[test]
fn a_reinstated_vm_owes_no_old_acknowledgement() {
    let mut s = store(0, 100);
    s.add_vm(1);
    let a = load(&mut s, 1, "a", 1, 1);
    let b = load(&mut s, 2, "b", 2, 1);
    s.hold(1, a.file_map_id).unwrap();
    s.hold(1, b.file_map_id).unwrap();
    s.revoke(a.file_map_id, 0);
    s.tick(100);
    assert!(s.is_cut_off(1));
    s.reinstate_vm(1);
    let _ = s.take_events();
    // The old revocation's deadline is long past: not cut off again.
    s.tick(1000);
    assert!(!s.is_cut_off(1));
    assert!(s.take_events().is_empty());
    assert_eq!(s.vm_holdings(1).unwrap().revocations_pending, 0);
    // Revoking what it holds only from before: nothing to wait for on the
    // new ring, but the frames stay until it reconnects.
    assert!(!s.revoke(b.file_map_id, 1000));
    assert!(s.take_events().is_empty());
    s.tick(5000);
    assert!(!s.is_cut_off(1));
    assert_eq!(s.counts().frames_used, 2);
    assert!(s.vm_reconnected(1));
    assert_eq!(s.counts().frames_used, 0);
    assert_eq!(s.counts().file_maps, 0);
}

#[test]
fn holds_are_counted_per_answer() {
    let mut s = store(0, 100);
    s.add_vm(1);
    s.add_vm(2);
    let a = load(&mut s, 1, "a", 1, 2);
    let id = a.file_map_id;
    // Two inodes (two mounts, two hardlinks, a late answer) of one map.
    s.hold(1, id).unwrap();
    s.hold(1, id).unwrap();
    s.hold(2, id).unwrap();
    assert_eq!(s.counts().pages_mapped, 4, "a map counts once per VM");
    s.release(1, id, 0);
    assert_eq!(
        s.vm_holdings(1).unwrap().maps_held,
        1,
        "one inode still uses it"
    );
    assert_eq!(s.evict_where(|_| true, 0), (0, 1));
    let _ = s.take_events();
    // An ack ends all of VM 1's references at once.
    s.hold(1, id).unwrap_err();
    assert!(s.ack(1, id, 0));
    assert_eq!(s.vm_holdings(1).unwrap().maps_held, 0);
    assert_eq!(s.counts().frames_used, 2, "VM 2 still holds it");
    s.release(2, id, 0);
    assert_eq!(s.counts().frames_used, 0);
}

#[test]
fn a_pinned_count_is_never_lowered_by_releases() {
    let mut s = store(0, 100);
    s.add_vm(1);
    let a = load(&mut s, 1, "a", 1, 1);
    let id = a.file_map_id;
    s.hold(1, id).unwrap();
    // As if 2^32 - 2 more answers had been given.
    s.vms.get_mut(&1).unwrap().holds.get_mut(&id).unwrap().refs = u32::MAX - 1;
    s.hold(1, id).unwrap();
    s.hold(1, id).unwrap(); // saturates
    assert_eq!(s.vms[&1].holds[&id].refs, u32::MAX);
    for _ in 0..10 {
        s.release(1, id, 0);
    }
    assert_eq!(s.vm_holdings(1).unwrap().maps_held, 1);
    assert_eq!(s.evict_where(|_| true, 0), (0, 1));
    assert!(s.ack(1, id, 0), "an ack still ends it");
    assert_eq!(s.counts().frames_used, 0);
}

#[test]
fn quotas_refuse_hits_beyond_a_vms_limit() {
    let mut s = store(0, 100);
    s.add_vm(1);
    s.add_vm(2);
    s.set_vm_quota(1, Some(3));
    let a = load(&mut s, 1, "a", 1, 2);
    let b = load(&mut s, 2, "b", 2, 2);
    let big = load(&mut s, 3, "big", 3, 4);
    s.hold(1, a.file_map_id).unwrap();
    s.hold(1, a.file_map_id).unwrap(); // already charged: no more pages
    assert_eq!(s.hold(1, b.file_map_id), Err(StoreError::OverQuota(1)));
    assert_eq!(s.hold(1, big.file_map_id), Err(StoreError::TooLarge(4)));
    let h = s.vm_holdings(1).unwrap();
    assert_eq!((h.maps_held, h.pages_mapped, h.max_pages), (1, 2, 3));
    assert_eq!(s.counts().over_quota, 2);
    // Others are not limited by VM 1's quota.
    s.hold(2, b.file_map_id).unwrap();
    s.hold(2, big.file_map_id).unwrap();
    // Released: fits again.
    s.release(1, a.file_map_id, 0);
    s.release(1, a.file_map_id, 0);
    s.hold(1, b.file_map_id).unwrap();
    // Charged while cut off too.
    s.cut_off(1, 0);
    s.reinstate_vm(1);
    assert_eq!(s.hold(1, a.file_map_id), Err(StoreError::OverQuota(1)));
    assert!(s.vm_reconnected(1));
    s.hold(1, a.file_map_id).unwrap();
}

#[test]
fn too_large_and_table_space_pressure() {
    let mut s = store(4, 1000);
    assert_eq!(
        s.begin_load(key(1, 5 * 4096), label("x"), None, 0),
        Err(StoreError::TooLarge(5))
    );
    // Table area of 8 KiB: files of 250 pages take 1088 bytes of table each.
    let mut s = store(0, 1000);
    let mut n = 0;
    loop {
        match s.begin_load(key(100 + n, 250 * 4096), label("t"), None, 0) {
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
    let l = load(&mut s, 1, "a", 1, 1);
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

#[test]
fn staged_pages_are_written_outside_and_shared_only_when_equal() {
    let mut s = store(0, 100);
    let a = file(1, 2);
    let la = s
        .load_bytes(key(1, a.len() as u64), label("a"), &a, 0)
        .unwrap();
    // A batch of 4: a copy of a's page 0, two zero pages, and a page whose
    // (false) hash is a's page 1's: it must not be shared.
    let zero = [0u8; 4096];
    let other = [7u8; 4096];
    let mut chunk = Vec::new();
    chunk.extend_from_slice(&a[..4096]);
    chunk.extend_from_slice(&zero);
    chunk.extend_from_slice(&zero);
    chunk.extend_from_slice(&other);
    let hashes = [
        page_hash(&a[..4096]),
        page_hash(&zero),
        page_hash(&zero),
        page_hash(&a[4096..]),
    ];
    let id = s.begin_load(key(2, 4 * 4096), label("b"), None, 0).unwrap();
    let mut staged = s.stage_pages(id, &hashes, 0).unwrap();
    assert!(
        s.stage_pages(id, &hashes[..1], 0).is_err(),
        "one batch at a time"
    );
    staged.fill(&chunk); // no store borrow: this runs without the lock
    s.commit_pages(staged, &chunk, 0).unwrap();
    let lb = s.finish_load(id).unwrap();
    let fa = s.frames_of(la.file_map_id).unwrap().to_vec();
    let fb = s.frames_of(lb.file_map_id).unwrap().to_vec();
    assert_eq!(fb[0], fa[0], "equal bytes shared");
    assert_eq!(fb[1], fb[2], "equal pages of one batch shared");
    assert_ne!(fb[3], fa[1], "equal hash, other bytes: not shared");
    check_served(&s, &lb, &chunk);
    check_served(&s, &la, &a);
    assert_eq!(s.counts().pages_deduplicated, 2);
    assert_eq!(s.counts().frames_used, 4);
    // A same-hash pair inside a batch with different bytes is not shared
    // either.
    let id = s.begin_load(key(3, 2 * 4096), label("c"), None, 0).unwrap();
    let mut pair = other.to_vec();
    pair.extend_from_slice(&[9u8; 4096]);
    let h = page_hash(&[42u8; 4096]);
    let mut staged = s.stage_pages(id, &[h, h], 0).unwrap();
    staged.fill(&pair);
    s.commit_pages(staged, &pair, 0).unwrap();
    let lc = s.finish_load(id).unwrap();
    check_served(&s, &lc, &pair);
}

#[test]
fn an_unfilled_or_foreign_batch_is_refused_and_released() {
    let mut s = store(2, 100);
    let id = s.begin_load(key(1, 8192), label("a"), None, 0).unwrap();
    let d = file(3, 2);
    let hashes: Vec<_> = d.chunks(4096).map(page_hash).collect();
    let staged = s.stage_pages(id, &hashes, 0).unwrap();
    assert_eq!(s.counts().frames_used, 2);
    assert!(s.commit_pages(staged, &d, 0).is_err(), "not filled");
    assert_eq!(s.counts().frames_used, 0, "its frames came back");
    let mut staged = s.stage_pages(id, &hashes, 0).unwrap();
    staged.fill(&d[..4096]); // wrong length: fills nothing
    assert_eq!(
        s.commit_pages(staged, &d[..4096], 0),
        Err(StoreError::BadPage(4096))
    );
    // A batch of another store is refused without touching this one.
    let mut other = store(2, 100);
    let oid = other.begin_load(key(1, 8192), label("a"), None, 0).unwrap();
    let mut foreign = other.stage_pages(oid, &hashes, 0).unwrap();
    foreign.fill(&d);
    assert!(s.commit_pages(foreign, &d, 0).is_err());
    let mut staged = s.stage_pages(id, &hashes, 0).unwrap();
    staged.fill(&d);
    s.commit_pages(staged, &d, 0).unwrap();
    let l = s.finish_load(id).unwrap();
    check_served(&s, &l, &d);
}

#[test]
fn freed_frames_are_not_reused_while_being_discarded() {
    let mut s = store(2, 100);
    let l = load(&mut s, 1, "a", 1, 2);
    let old: BTreeSet<u32> = s
        .frames_of(l.file_map_id)
        .unwrap()
        .iter()
        .copied()
        .collect();
    assert_eq!(s.evict_where(|_| true, 0), (1, 0));
    let taken = s.take_discards();
    assert_eq!(taken.iter().copied().collect::<BTreeSet<_>>(), old);
    assert_eq!(s.counts().frames_used, 0);
    // Being discarded: not handed out (the budget is 2 frames).
    assert_eq!(
        s.load_bytes(key(2, 4096), label("b"), &file(2, 1), 0),
        Err(StoreError::PoolFull)
    );
    let access = s.frame_access();
    for &f in &taken {
        // SAFETY: handed to us by take_discards.
        unsafe { access.discard_frame(f) };
        assert!(s.pool().frame(f).iter().all(|&b| b == 0));
    }
    s.finish_discards(taken);
    // The same bytes load again: no stale index entry survived the free.
    let l2 = load(&mut s, 3, "c", 1, 2);
    check_served(&s, &l2, &file(1, 2));
    assert_eq!(s.counts().frames_used, 2);
}

mod props {
    use proptest::prelude::*;

    use super::*;

    /// One step of a random history. VM and map numbers are taken modulo
    /// what exists, so every step means something.
    #[derive(Clone, Debug)]
    enum Op {
        Load {
            who: Option<u8>,
            seed: u8,
            pages: u8,
        },
        Hold {
            vm: u8,
            map: u8,
        },
        Release {
            vm: u8,
            map: u8,
        },
        Ack {
            vm: u8,
            map: u8,
        },
        Revoke {
            map: u8,
        },
        Tick {
            ms: u16,
        },
        ReleaseAll {
            vm: u8,
        },
        Reinstate {
            vm: u8,
        },
        Reconnect {
            vm: u8,
        },
        Quota {
            vm: u8,
            pages: u8,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        let vm = 0u8..3;
        prop_oneof![
            (prop::option::of(0u8..3), any::<u8>(), 1u8..5)
                .prop_map(|(who, seed, pages)| Op::Load { who, seed, pages }),
            (vm.clone(), any::<u8>()).prop_map(|(vm, map)| Op::Hold { vm, map }),
            (vm.clone(), any::<u8>()).prop_map(|(vm, map)| Op::Hold { vm, map }),
            (vm.clone(), any::<u8>()).prop_map(|(vm, map)| Op::Release { vm, map }),
            (vm.clone(), any::<u8>()).prop_map(|(vm, map)| Op::Ack { vm, map }),
            any::<u8>().prop_map(|map| Op::Revoke { map }),
            (0u16..300).prop_map(|ms| Op::Tick { ms }),
            vm.clone().prop_map(|vm| Op::ReleaseAll { vm }),
            vm.clone().prop_map(|vm| Op::Reinstate { vm }),
            vm.clone().prop_map(|vm| Op::Reconnect { vm }),
            (vm, 0u8..12).prop_map(|(vm, pages)| Op::Quota { vm, pages }),
        ]
    }

    /// Everything the rules promise, checked against the store's own books
    /// and the pool's bytes.
    fn check(s: &PageStore, data: &HashMap<MapId, Vec<u8>>) {
        let mut pages_mapped = 0;
        for (&vm, v) in &s.vms {
            let mut mine = 0;
            for (&id, h) in &v.holds {
                assert!(h.refs > 0, "an empty hold is kept");
                assert!(h.stale <= h.refs);
                let m = s.maps.get(&id).expect("a held map was dropped");
                assert!(m.holders.contains(&vm));
                mine += m.page_count as u64;
                // Its frames were not reused: they still hold its bytes.
                let want = &data[&id];
                for (i, &f) in m.frames.iter().enumerate() {
                    let w = &want[i * 4096..((i + 1) * 4096).min(want.len())];
                    assert_eq!(&s.pool.frame(f)[..w.len()], w, "map {id} page {i}");
                }
            }
            assert_eq!(v.pages_mapped, mine);
            pages_mapped += mine;
        }
        assert_eq!(s.counts.pages_mapped, pages_mapped);
        for (id, m) in &s.maps {
            for vm in &m.holders {
                assert!(s.vms[vm].holds.contains_key(id), "stray holder");
            }
            if let MapState::Revoking { waiting, .. } = &m.state {
                assert!(!m.holders.is_empty(), "a revoked map nobody holds");
                assert!(waiting.is_subset(&m.holders));
            }
        }
        let live_frames: BTreeSet<u32> = s.maps.values().flat_map(|m| m.frames.clone()).collect();
        assert_eq!(s.used, live_frames.len() as u64);
        for f in live_frames {
            let n = s
                .maps
                .values()
                .flat_map(|m| &m.frames)
                .filter(|&&g| g == f)
                .count();
            assert_eq!(s.refs[f as usize] as usize, n, "frame {f}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Guests that hold what they loaded (as the hint after a load
        /// does) and acknowledge revocations now or later: a load revokes
        /// another VM's maps only while that VM is above its fair share,
        /// and such a VM is never cut off for it.
        #[test]
        fn loads_revoke_others_only_above_their_fair_share(
            ops in prop::collection::vec((0u32..3, any::<u8>(), 1u8..5, any::<bool>()), 1..150)
        ) {
            let mut s = store(12, 100);
            for vm in 0..3 {
                s.add_vm(vm);
            }
            // Revocations not acknowledged yet: for another VM's load, and
            // for the VM's own.
            let mut for_others: Vec<(VmId, MapId)> = Vec::new();
            let mut own: Vec<(VmId, MapId)> = Vec::new();
            let mut now = 0u64;
            for (n, (vm, seed, pages, ack)) in ops.into_iter().enumerate() {
                let share = s.fair_share(vm);
                let before: BTreeMap<VmId, u64> =
                    s.vms.iter().map(|(&v, e)| (v, e.pages_mapped)).collect();
                let d = file(seed, pages as usize);
                let k = key(n as u64, d.len() as u64);
                if let Ok(l) = s.load_bytes_for(Some(vm), k, label("f"), &d, now) {
                    let _ = s.hold(vm, l.file_map_id);
                }
                for e in s.take_events() {
                    if let StoreEvent::Revoke { vm: v, map } = e {
                        if v == vm {
                            own.push((v, map.file_map_id));
                        } else {
                            prop_assert!(before[&v] > share,
                                "VM {} ({} pages) within its share of {} lost a map to VM {}'s load",
                                v, before[&v], share, vm);
                            for_others.push((v, map.file_map_id));
                        }
                    }
                }
                if ack {
                    for (v, m) in for_others.drain(..).chain(own.drain(..)) {
                        s.ack(v, m, now);
                    }
                }
                now += 30;
                s.tick(now);
                for e in s.take_events() {
                    if let StoreEvent::CutOff { vm: v } = e {
                        prop_assert!(own.iter().any(|(o, _)| *o == v),
                            "VM {} cut off with only revocations for others' loads owed", v);
                    }
                }
            }
        }

        /// However VMs (honest or not) and the operator interleave holds,
        /// releases, acks, revocations, cut-offs and reinstatements, a map a
        /// VM holds is never dropped and its frames keep its bytes; counts
        /// never underflow (debug builds would panic).
        #[test]
        fn held_maps_are_never_dropped(ops in prop::collection::vec(op(), 1..80)) {
            let mut s = store(12, 100);
            for vm in 0..3 {
                s.add_vm(vm);
            }
            let mut data: HashMap<MapId, Vec<u8>> = HashMap::new();
            let mut ids: Vec<MapId> = Vec::new();
            let mut now = 0u64;
            let mut n = 0u64;
            // What an honest guest holds, per (VM, map): (refs, stale), by
            // the rules in the module documentation.
            let mut model: BTreeMap<(VmId, MapId), (u32, u32)> = BTreeMap::new();
            for op in ops {
                let pick = |m: u8| ids.get(m as usize % ids.len().max(1)).copied().unwrap_or(999);
                match op {
                    Op::Load { who, seed, pages } => {
                        n += 1;
                        let d = file(seed, pages as usize);
                        let k = key(n, d.len() as u64);
                        let who = who.map(u32::from);
                        let share = who.map(|w| s.fair_share(w));
                        let before: BTreeMap<VmId, u64> =
                            s.vms.iter().map(|(&v, e)| (v, e.pages_mapped)).collect();
                        if let Ok(l) = s.load_bytes_for(who, k, label("f"), &d, now) {
                            data.insert(l.file_map_id, d);
                            ids.push(l.file_map_id);
                        }
                        // A load revokes another VM's maps only if that VM
                        // was above its fair share; the operator's, nothing.
                        for e in s.take_events() {
                            if let StoreEvent::Revoke { vm, .. } = e {
                                prop_assert!(who.is_some(), "the operator's load revoked");
                                if Some(vm) != who {
                                    prop_assert!(before[&vm] > share.unwrap_or(0),
                                        "VM {} within its share lost a map to VM {:?}'s load", vm, who);
                                }
                            }
                        }
                    }
                    Op::Hold { vm, map } => {
                        if s.hold(vm.into(), pick(map)).is_ok() {
                            let e = model.entry((vm.into(), pick(map))).or_default();
                            e.0 = e.0.saturating_add(1);
                        }
                    }
                    Op::Release { vm, map } => {
                        s.release(vm.into(), pick(map), now);
                        if let Some(e) = model.get_mut(&(vm.into(), pick(map))) {
                            if e.0 != u32::MAX {
                                e.0 -= 1;
                                e.1 = e.1.saturating_sub(1);
                            }
                        }
                    }
                    Op::Ack { vm, map } => {
                        if s.ack(vm.into(), pick(map), now) {
                            model.remove(&(vm.into(), pick(map)));
                        }
                    }
                    Op::Revoke { map } => {
                        s.revoke(pick(map), now);
                    }
                    Op::Tick { ms } => {
                        now += ms as u64;
                        s.tick(now);
                        // Discard what was freed, as the service does after
                        // releasing the lock.
                        let taken = s.take_discards();
                        let access = s.frame_access();
                        for &f in &taken {
                            // SAFETY: handed to us by take_discards.
                            unsafe { access.discard_frame(f) };
                        }
                        s.finish_discards(taken);
                    }
                    Op::ReleaseAll { vm } => {
                        let all = s.is_cut_off(vm.into());
                        s.release_all(vm.into());
                        for ((v, _), e) in model.iter_mut() {
                            if *v == VmId::from(vm) {
                                e.0 = if all { 0 } else { e.0 - e.1 };
                                e.1 = 0;
                            }
                        }
                    }
                    Op::Reinstate { vm } => {
                        // A new ring, cut off or not: all it holds is stale.
                        for ((v, _), e) in model.iter_mut() {
                            if *v == VmId::from(vm) {
                                e.1 = e.0;
                            }
                        }
                        s.reinstate_vm(vm.into());
                    }
                    Op::Reconnect { vm } => {
                        if !s.is_cut_off(vm.into()) {
                            for ((v, _), e) in model.iter_mut() {
                                if *v == VmId::from(vm) {
                                    e.0 -= e.1;
                                    e.1 = 0;
                                }
                            }
                        }
                        s.vm_reconnected(vm.into());
                    }
                    Op::Quota { vm, pages } => s.set_vm_quota(vm.into(), Some(pages.into())),
                }
                let _ = s.take_events();
                model.retain(|_, e| e.0 > 0);
                check(&s, &data);
                // The store's counts are exactly the honest guest's: a map
                // it still uses is never dropped (`check` saw its bytes).
                let books: BTreeMap<(VmId, MapId), (u32, u32)> = s
                    .vms
                    .iter()
                    .flat_map(|(&vm, v)| v.holds.iter().map(move |(&id, h)| ((vm, id), (h.refs, h.stale))))
                    .collect();
                prop_assert_eq!(&books, &model);
            }
            // Everyone lets go: every frame comes back.
            for vm in 0..3 {
                s.remove_vm(vm, now);
            }
            s.evict_where(|_| true, now);
            prop_assert_eq!(s.counts().frames_used, 0);
            prop_assert_eq!(s.counts().pages_mapped, 0);
        }
    }
}
