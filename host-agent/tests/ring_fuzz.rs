//! Arbitrary ring-region bytes fed to the host end (a property test with a
//! fixed case budget, run by `cargo test`): no panic, no out-of-bounds access,
//! bounded work, and every consumed entry is either handed to the handler or
//! answered with an error and counted.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use common::*;
use proptest::prelude::*;
use vmdedup_host_agent::ring::*;
use vmdedup_protocol::abi::*;

const SIZES: RingSizes = RingSizes {
    sq_entries: 8,
    cq_entries: 8,
    eq_entries: 4,
    path_slots: 2,
};
const REGION: usize = 32 << 10;

/// One submission slot's bytes: raw noise, or a plausible entry with fields
/// drawn near the edges the decoder checks.
fn slot_bytes() -> impl Strategy<Value = Vec<u8>> {
    let raw = proptest::collection::vec(any::<u8>(), SQE_SIZE as usize);
    let structured = (
        any::<u64>(),
        prop_oneof![Just(OP_HINT), any::<u16>()],
        prop_oneof![0u16..=200, 4090u16..=4100, any::<u16>()],
        prop_oneof![Just(0u32), Just(HINT_FLAG_PATH_IN_SLOT), any::<u32>()],
        prop_oneof![0u32..3, any::<u32>()],
        prop_oneof![Just(0u32), any::<u32>()],
        proptest::collection::vec(
            prop_oneof![Just(b'a'), Just(b'/'), Just(b'.'), Just(0u8), any::<u8>()],
            160,
        ),
    )
        .prop_map(|(req, op, len, flags, slot, res, path)| {
            let e = SubmissionEntry {
                request_id: req,
                opcode: op,
                path_len: len,
                flags,
                path_slot: slot,
                reserved0: res,
                ..Default::default()
            };
            let mut b = e.to_le_bytes().to_vec();
            b.extend_from_slice(&path);
            b
        });
    prop_oneof![raw, structured]
}

/// What the guest did to the header: nothing but move its tail, or noise.
#[derive(Clone, Debug)]
enum HeaderMut {
    Tail(u32),
    Noise(Vec<u8>),
}

fn header_mut() -> impl Strategy<Value = HeaderMut> {
    prop_oneof![
        4 => (0u32..=10).prop_map(HeaderMut::Tail),
        1 => any::<u32>().prop_map(HeaderMut::Tail),
        1 => proptest::collection::vec(any::<u8>(), RING_HEADER_SIZE as usize).prop_map(HeaderMut::Noise),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_region_bytes_never_break_the_host(
        start in prop_oneof![Just(0u32), Just(u32::MAX - 3), any::<u32>()],
        slots in proptest::collection::vec(slot_bytes(), 8),
        path_slots in proptest::collection::vec(any::<u8>(), 0..300),
        header in header_mut(),
        budget in 1u32..10,
    ) {
        let (map, _fd) = SharedMapping::memfd("vmdedup-fuzz", REGION).unwrap();
        let cfg = RingConfig { id: RingId(1), sizes: Some(SIZES), generation: 1, initial_index: start };
        let mut host = HostRing::create(map, cfg).unwrap();
        let m = Arc::clone(host.mapping());
        let l = *host.layout();
        for (i, b) in slots.iter().enumerate() {
            prop_assert!(m.write_bytes(l.sqe_offset(i as u32) as usize, b));
        }
        for s in 0..l.slots.count {
            prop_assert!(m.write_bytes(l.path_slot_offset(s).unwrap() as usize, &path_slots));
        }
        let tail = match &header {
            HeaderMut::Tail(k) => {
                let t = start.wrapping_add(*k);
                m.word(ring_off::SQ_TAIL).unwrap().store(t, Ordering::Release);
                t
            }
            HeaderMut::Noise(b) => {
                prop_assert!(m.write_bytes(0, b));
                m.word(ring_off::SQ_TAIL).unwrap().load(Ordering::Relaxed)
            }
        };
        let calls = AtomicU64::new(0);
        let handler = |r: RingId, h: &Hint<'_>| {
            calls.fetch_add(1, Ordering::Relaxed);
            assert!(!h.path.is_empty() && h.path.len() <= MAX_PATH_LEN as usize);
            assert!(check_path(h.path).is_ok());
            echo(r, h)
        };
        let mut total = 0u64;
        // Enough rounds to drain a sane ring (at most 10 queued, budget >= 1).
        for _ in 0..12 {
            let n = host.poll_round(&handler, budget);
            prop_assert!(n <= budget);
            total += n as u64;
        }
        let st = host.shared().stats.snapshot();
        prop_assert_eq!(st.hints, total);
        prop_assert_eq!(calls.load(Ordering::Relaxed) + st.bad_entries, total);
        let queued = tail.wrapping_sub(start);
        if queued > SIZES.sq_entries {
            prop_assert_eq!(total, 0);
            prop_assert_eq!(st.corrupt_indices, 1);
        } else if matches!(header, HeaderMut::Tail(_)) {
            // Sane indices: everything queued was answered, in order, with
            // the request id of its entry and a known status.
            prop_assert_eq!(total, queued as u64);
            for i in 0..queued {
                let mut sqe = [0u8; 8];
                m.read_bytes(l.sqe_offset(start.wrapping_add(i)) as usize, &mut sqe);
                let mut cqe = [0u8; CQE_SIZE as usize];
                m.read_bytes(l.cqe_offset(start.wrapping_add(i)) as usize, &mut cqe);
                let c = CompletionEntry::from_le_bytes(&cqe);
                prop_assert_eq!(c.request_id, u64::from_le_bytes(sqe));
                prop_assert!(AnswerStatus::from_u16(c.status).is_some());
            }
            prop_assert_eq!(
                m.word(ring_off::CQ_TAIL).unwrap().load(Ordering::Relaxed),
                start.wrapping_add(queued)
            );
        }
    }
}

#[test]
fn a_guest_scribbling_while_the_host_polls_breaks_nothing() {
    let (map, _fd) = SharedMapping::memfd("vmdedup-scribble", REGION).unwrap();
    let cfg = RingConfig {
        id: RingId(2),
        sizes: Some(SIZES),
        generation: 1,
        initial_index: 0,
    };
    let mut host = HostRing::create(map, cfg).unwrap();
    let m = Arc::clone(host.mapping());
    let done = Arc::new(AtomicBool::new(false));
    let done2 = Arc::clone(&done);
    let scribbler = std::thread::spawn(move || {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Mostly the header and submission ring, sometimes anywhere.
            let span = if x & 3 == 0 { REGION } else { 8192 };
            let off = ((x >> 8) as usize % span) & !7;
            m.write_words(off, &[x.rotate_left(17)]);
            if x & 15 == 1 {
                // A tail that is sometimes sane.
                m.word(ring_off::SQ_TAIL)
                    .unwrap()
                    .store((x >> 32) as u32 & 15, Ordering::Release);
            }
        }
        done2.store(true, Ordering::Release);
    });
    /// Counts every entry the host hands on: hints and map operations (a
    /// scribbled word may make a well-formed acknowledgement or release).
    #[derive(Default)]
    struct Counting {
        calls: AtomicU64,
    }
    impl Handler for Counting {
        fn handle(&self, r: RingId, h: &Hint<'_>) -> Answer {
            self.calls.fetch_add(1, Ordering::Relaxed);
            echo(r, h)
        }
        fn ack_revoke(&self, _: RingId, _: u64) {
            self.calls.fetch_add(1, Ordering::Relaxed);
        }
        fn release(&self, _: RingId, _: u64) {
            self.calls.fetch_add(1, Ordering::Relaxed);
        }
    }
    let handler = Counting::default();
    let calls = &handler.calls;
    let mut total = 0u64;
    let mut rounds = 0u64;
    while !done.load(Ordering::Acquire) || rounds < 1000 {
        let n = host.poll_round(&handler, 4);
        assert!(n <= 4);
        total += n as u64;
        rounds += 1;
    }
    scribbler.join().unwrap();
    let st = host.shared().stats.snapshot();
    assert_eq!(st.hints, total);
    assert_eq!(calls.load(Ordering::Relaxed) + st.bad_entries, total);
    assert!(
        st.corrupt_indices > 0 || total > 0,
        "the scribbler reached the host"
    );
}
