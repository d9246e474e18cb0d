//! Taking a ring over in place (`HostRing::adopt`, after an agent restart):
//! a ring as the previous host left it is continued from its indices with
//! its generation kept; arbitrary header and index bytes (a property test)
//! never make it panic, and whatever it accepts is served safely.

mod common;

use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use common::*;
use proptest::prelude::*;
use vmdedup_host_agent::ring::*;
use vmdedup_protocol::abi::*;

const REGION: usize = 64 << 10;

/// A ring created by a first host on a memfd, and a second mapping of the
/// same memory for the host that takes it over.
fn first_host() -> (HostRing, SharedMapping) {
    let (map, fd) = SharedMapping::memfd("vmdedup-adopt", REGION).unwrap();
    let host = HostRing::create(map, RingConfig::new(RingId(1), 55)).unwrap();
    let again = SharedMapping::map_fd(fd.as_fd(), REGION).unwrap();
    (host, again)
}

#[test]
fn an_adopted_ring_continues_where_the_old_host_stopped() {
    let (mut old, again) = first_host();
    let mut guest = GuestRing::attach(Arc::clone(old.mapping()), None).unwrap();
    // Two hints answered by the old host, the second answer not reaped yet;
    // a third hint submitted but never consumed (the old host died).
    for req in 1..=2 {
        guest.stage(hint(req, 1, 7, 9), b"usr/a").unwrap();
        guest.publish();
        assert_eq!(old.poll_round(&echo, 8), 1);
    }
    let mut seen = Vec::new();
    guest.reap(|c| seen.push(c.request_id));
    guest.stage(hint(3, 1, 7, 9), b"usr/b").unwrap();
    guest.publish();
    drop(old);

    let mut new = HostRing::adopt(again, RingId(1), None).unwrap();
    assert_eq!(new.generation(), 55, "the generation is kept");
    assert_eq!(new.poll_round(&echo, 8), 1, "the pending hint is answered");
    guest.reap(|c| seen.push(c.request_id));
    assert_eq!(seen, vec![1, 2, 3]);
    assert!(new.shared().post_event(EventEntry {
        kind: EVENT_NOTICE,
        notice: NOTICE_REANNOUNCE,
        file_map_id: 9,
        ..EventEntry::default()
    }));
    new.poll_round(&echo, 8);
    let mut events = Vec::new();
    guest.reap_events(|e| events.push((e.notice, e.file_map_id)));
    assert_eq!(events, vec![(NOTICE_REANNOUNCE, 9)]);
    assert_eq!(guest.generation(), 55);
}

#[test]
fn inconsistent_indices_or_another_layout_are_refused() {
    let (old, again) = first_host();
    old.mapping()
        .word(ring_off::CQ_TAIL)
        .unwrap()
        .fetch_add(1 << 20, Ordering::Relaxed);
    assert!(HostRing::adopt(again, RingId(1), None).is_err());
    let (_old, again) = first_host();
    let other = RingSizes {
        sq_entries: 8,
        cq_entries: 8,
        eq_entries: 8,
        path_slots: 1,
    };
    assert!(HostRing::adopt(again, RingId(1), Some(other)).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_header_bytes_never_break_adoption(
        edits in proptest::collection::vec((0usize..RING_HEADER_SIZE as usize, any::<u8>()), 0..12),
        indices in proptest::collection::vec((0usize..6, any::<u32>()), 0..4),
        submitted in 0u64..6,
    ) {
        let (old, again) = first_host();
        let mut guest = GuestRing::attach(Arc::clone(old.mapping()), None).unwrap();
        for req in 0..submitted {
            guest.stage(hint(req + 1, 1, 7, 9), b"usr/x").unwrap();
        }
        guest.publish();
        let m = Arc::clone(old.mapping());
        drop(old);
        for (off, b) in &edits {
            prop_assert!(m.write_bytes(*off, &[*b]));
        }
        let words = [
            ring_off::SQ_HEAD,
            ring_off::SQ_TAIL,
            ring_off::CQ_HEAD,
            ring_off::CQ_TAIL,
            ring_off::EQ_HEAD,
            ring_off::EQ_TAIL,
        ];
        for (w, v) in &indices {
            m.word(words[*w]).unwrap().store(*v, Ordering::Relaxed);
        }
        let untouched = edits.is_empty() && indices.is_empty();
        match HostRing::adopt(again, RingId(1), None) {
            Ok(mut r) => {
                // Whatever was accepted is served within the budget.
                prop_assert!(r.poll_round(&echo, 4) <= 4);
                r.poll_round(&echo, 4);
                if untouched {
                    prop_assert_eq!(r.generation(), 55);
                }
            }
            Err(e) => prop_assert!(!untouched, "a clean ring was refused: {e}"),
        }
    }
}
