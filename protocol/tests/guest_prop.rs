//! Property tests of the guest end (`guest.rs`) against hostile host bytes:
//! whatever the region holds (prefix, layout, indices, answers, events), the
//! guest end never panics, refuses what does not validate, and reports
//! indices that cannot be as corrupt instead of reading through them.

use std::sync::atomic::{AtomicU32, Ordering};

use proptest::prelude::*;
use vmdedup_protocol::abi::{
    prefix_off, ring_off, RingLayout, RingSizes, SubmissionEntry, OP_RELEASE, RING_HEADER_SIZE,
    RING_MAGIC, RING_VERSION,
};
use vmdedup_protocol::guest::{GuestEnd, SharedRegion, StageError};

/// A region in ordinary memory, kept as atomic words so that index words can
/// be handed out as `&AtomicU32` like the real mappings do.
struct MemRegion(Vec<AtomicU32>);

impl MemRegion {
    fn new(bytes: &[u8]) -> MemRegion {
        MemRegion(
            bytes
                .chunks(4)
                .map(|c| {
                    let mut w = [0u8; 4];
                    w[..c.len()].copy_from_slice(c);
                    AtomicU32::new(u32::from_le_bytes(w))
                })
                .collect(),
        )
    }

    fn set(&self, off: usize, v: u32) {
        self.0[off / 4].store(v, Ordering::Relaxed);
    }
}

impl SharedRegion for MemRegion {
    type Word = AtomicU32;

    fn size(&self) -> usize {
        self.0.len() * 4
    }

    fn read_bytes(&self, off: usize, out: &mut [u8]) -> bool {
        if off.checked_add(out.len()).is_none_or(|e| e > self.size()) {
            return false;
        }
        for (i, b) in out.iter_mut().enumerate() {
            let at = off + i;
            *b = self.0[at / 4].load(Ordering::Relaxed).to_le_bytes()[at % 4];
        }
        true
    }

    fn write_bytes(&self, off: usize, data: &[u8]) -> bool {
        if off.checked_add(data.len()).is_none_or(|e| e > self.size()) {
            return false;
        }
        for (i, &b) in data.iter().enumerate() {
            let at = off + i;
            let w = &self.0[at / 4];
            let mut v = w.load(Ordering::Relaxed).to_le_bytes();
            v[at % 4] = b;
            w.store(u32::from_le_bytes(v), Ordering::Relaxed);
        }
        true
    }

    fn word(&self, off: usize) -> Option<&AtomicU32> {
        if !off.is_multiple_of(4) {
            return None;
        }
        self.0.get(off / 4)
    }
}

const REGION: usize = 5 * 4096 + 2 * 4096;

/// A ring region as a host lays it out.
fn valid_region(sizes: &RingSizes, generation: u64) -> Vec<u8> {
    let layout = RingLayout::compute(REGION as u64, sizes).unwrap();
    let mut b = vec![0u8; REGION];
    let mut put = |off: usize, v: &[u8]| b[off..off + v.len()].copy_from_slice(v);
    put(prefix_off::MAGIC, &RING_MAGIC.to_le_bytes());
    put(prefix_off::VERSION, &RING_VERSION.to_le_bytes());
    put(prefix_off::HEADER_SIZE, &RING_HEADER_SIZE.to_le_bytes());
    put(prefix_off::REGION_SIZE, &(REGION as u64).to_le_bytes());
    put(prefix_off::GENERATION, &generation.to_le_bytes());
    put(ring_off::HOST_FEATURES, &layout.to_le_bytes());
    b
}

fn sizes() -> impl Strategy<Value = RingSizes> {
    (0u32..4, 0u32..2, 0u32..3, 0u32..3).prop_map(|(sq, extra, eq, slots)| RingSizes {
        sq_entries: 1 << sq,
        cq_entries: 1 << (sq + extra),
        eq_entries: 1 << eq,
        path_slots: slots,
    })
}

/// Drives every guest end operation once; must not panic whatever the bytes.
fn exercise(r: &MemRegion, g: &mut GuestEnd) {
    if let Ok(n) = g.answers(r) {
        for i in 0..n {
            if let Some(a) = g.answer(r, i) {
                let _ = (a.request_id, a.status);
            }
        }
        g.release_answers(r, n);
    }
    if let Ok(n) = g.events(r) {
        for i in 0..n {
            let _ = g.event(r, i);
        }
        g.release_events(r, n);
    }
    g.events_lost_news(r);
    for len in [1usize, 300, 5000, 70_000] {
        let path = vec![b'p'; len];
        if let Ok(Some(s)) = g.stage_hint(r, SubmissionEntry::default(), &path) {
            g.free_slot(s);
        }
    }
    let _ = g.stage_map_op(r, 9, OP_RELEASE, 4);
    g.publish(r);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Arbitrary bytes written over a valid region anywhere (header
    /// included) and arbitrary index words: attach refuses or the guest end
    /// works on, without a panic.
    #[test]
    fn arbitrary_bytes_never_panic(
        sizes in sizes(),
        pokes in proptest::collection::vec((0usize..REGION, any::<u8>()), 0..64),
        start in any::<u32>(),
        near in proptest::collection::vec(0u32..40, 6),
        flags in any::<u32>(),
        far in any::<bool>(),
    ) {
        // Indices near a common start (mostly sane), or anything at all.
        let words: Vec<u32> = near
            .iter()
            .map(|&d| if far { d.wrapping_mul(0x9e37_79b9) } else { start.wrapping_add(d) })
            .chain([flags])
            .collect();
        let mut b = valid_region(&sizes, 1);
        for (off, v) in pokes {
            b[off] = v;
        }
        let r = MemRegion::new(&b);
        for (off, v) in [
            ring_off::SQ_HEAD, ring_off::SQ_TAIL, ring_off::CQ_HEAD, ring_off::CQ_TAIL,
            ring_off::EQ_HEAD, ring_off::EQ_TAIL, ring_off::HOST_FLAGS,
        ].into_iter().zip(words) {
            r.set(off, v);
        }
        if let Ok(mut g) = GuestEnd::attach(&r) {
            exercise(&r, &mut g);
            // The host moves its indices to anything at all meanwhile.
            r.set(ring_off::CQ_TAIL, r.0[ring_off::CQ_TAIL / 4].load(Ordering::Relaxed) ^ 0x8000_0000);
            r.set(ring_off::SQ_HEAD, 0x4000_0000);
            exercise(&r, &mut g);
        }
    }

    /// A small region or pure noise is refused, never read out of range.
    #[test]
    fn noise_is_refused_or_survived(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let r = MemRegion::new(&bytes);
        if let Ok(mut g) = GuestEnd::attach(&r) {
            exercise(&r, &mut g);
        }
    }

    /// Host-written indices: the guest end reads answers and events only
    /// when `tail - head` fits the capacity, and reports corruption
    /// otherwise; a corrupt `sq_head` stops staging.
    #[test]
    fn corrupt_indices_are_reported(
        sizes in sizes(),
        start in any::<u32>(),
        cq_ahead in any::<u32>(),
        eq_ahead in any::<u32>(),
        sq_behind in any::<u32>(),
    ) {
        let b = valid_region(&sizes, 2);
        let r = MemRegion::new(&b);
        for off in [
            ring_off::SQ_HEAD, ring_off::SQ_TAIL, ring_off::CQ_HEAD, ring_off::CQ_TAIL,
            ring_off::EQ_HEAD, ring_off::EQ_TAIL,
        ] {
            r.set(off, start);
        }
        let mut g = GuestEnd::attach(&r).unwrap();
        prop_assert_eq!(g.generation(), 2);
        r.set(ring_off::CQ_TAIL, start.wrapping_add(cq_ahead));
        r.set(ring_off::EQ_TAIL, start.wrapping_add(eq_ahead));
        let answers = g.answers(&r);
        prop_assert_eq!(answers.is_err(), cq_ahead > sizes.cq_entries);
        if let Ok(n) = answers {
            prop_assert_eq!(n, cq_ahead);
        }
        let events = g.events(&r);
        prop_assert_eq!(events.is_err(), eq_ahead > sizes.eq_entries);
        // Fill the submission ring from the cache, then the guest must load
        // the host's head: a head behind our tail by more than the
        // capacity (or ahead of it) is corrupt.
        for _ in 0..sizes.sq_entries {
            prop_assert!(g.stage_map_op(&r, 1, OP_RELEASE, 1).is_ok());
        }
        g.publish(&r);
        let tail = start.wrapping_add(sizes.sq_entries);
        r.set(ring_off::SQ_HEAD, tail.wrapping_sub(sq_behind));
        let staged = g.stage_map_op(&r, 1, OP_RELEASE, 1);
        if sq_behind > sizes.sq_entries {
            prop_assert!(matches!(staged, Err(StageError::Corrupt(_))));
        } else if sq_behind == sizes.sq_entries {
            prop_assert_eq!(staged, Err(StageError::Full));
        } else {
            prop_assert_eq!(staged, Ok(()));
        }
    }
}
