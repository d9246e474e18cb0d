//! Property tests of the guest end (`guest.rs`) against hostile host bytes:
//! whatever the region holds (prefix, layout, indices, answers, events), the
//! guest end never panics, refuses what does not validate, and reports
//! indices that cannot be as corrupt instead of reading through them.

use std::sync::atomic::{AtomicU32, Ordering};

use proptest::prelude::*;
use vmdedup_protocol::abi::{
    prefix_off, ring_off, RingLayout, RingSizes, SubmissionEntry, FEATURES_KNOWN,
    GUEST_FLAG_CUT_OFF_ACK, GUEST_FLAG_WAITING, HINT_FLAG_FINGERPRINT, HINT_FLAG_NOTIFY_LOADED,
    HINT_FLAG_PATH_IN_SLOT, HINT_FLAG_POOL_ONLY, HOST_FLAG_CUT_OFF, HOST_FLAG_INTERRUPTS,
    HOST_FLAG_NEED_WAKEUP, OPTION_LOADED_NOTICE, OPTION_POOL_ONLY, OP_RELEASE, RING_HEADER_SIZE,
    RING_MAGIC, RING_VERSION, SQE_INLINE_PATH_OFF,
};
use vmdedup_protocol::guest::{ring_generation, GuestEnd, SharedRegion, StageError};

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

/// What the model host and guest know about one published hint.
#[derive(Clone, Debug)]
struct Sent {
    id: u64,
    slot: Option<u32>,
    path: Vec<u8>,
}

/// One step of the path slot model.
#[derive(Clone, Debug)]
enum SlotStep {
    /// The guest sends a hint with a long (slot) or short (inline) path.
    Hint { long: bool },
    /// The host consumes up to `n` entries, reading their paths.
    Consume { n: u8 },
    /// The guest gives up on its `i`th oldest unanswered request.
    Expire { i: u8 },
    /// The `i`th oldest consumed, unanswered request gets its answer.
    Answer { i: u8 },
    /// The guest reclaims abandoned slots.
    Reclaim,
}

fn slot_step() -> impl Strategy<Value = SlotStep> {
    prop_oneof![
        4 => any::<bool>().prop_map(|long| SlotStep::Hint { long }),
        2 => (0u8..5).prop_map(|n| SlotStep::Consume { n }),
        2 => any::<u8>().prop_map(|i| SlotStep::Expire { i }),
        2 => any::<u8>().prop_map(|i| SlotStep::Answer { i }),
        2 => Just(SlotStep::Reclaim),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Path slots of requests that expired are reclaimed once the host
    /// consumed their entry: a slot is never handed out again while an
    /// unconsumed entry names it (the host could still read it), the host
    /// always reads the path the guest wrote for that request, and once the
    /// host has consumed everything and every answer arrived no slot stays
    /// busy.
    #[test]
    fn expired_path_slots_are_reclaimed_never_reused_early(
        sq in 0u32..4,
        slots in 1u32..4,
        start in any::<u32>(),
        steps in proptest::collection::vec(slot_step(), 1..80),
    ) {
        let sizes = RingSizes {
            sq_entries: 1 << sq,
            cq_entries: 1 << sq,
            eq_entries: 1,
            path_slots: slots,
        };
        let layout = RingLayout::compute(REGION as u64, &sizes).unwrap();
        let r = MemRegion::new(&valid_region(&sizes, 1));
        for off in [ring_off::SQ_HEAD, ring_off::SQ_TAIL, ring_off::CQ_HEAD,
                    ring_off::CQ_TAIL, ring_off::EQ_HEAD, ring_off::EQ_TAIL] {
            r.set(off, start);
        }
        let mut g = GuestEnd::attach(&r).unwrap();
        let mut head = start;
        // Published, not consumed by the host: it may still read their slots.
        let mut unconsumed: std::collections::VecDeque<Sent> = Default::default();
        // Consumed, answer not delivered yet.
        let mut consumed: Vec<Sent> = Vec::new();
        // Requests the guest still waits for (their slots are its to free).
        let mut waiting: Vec<u64> = Vec::new();
        let mut next = 1u64;
        for step in steps {
            match step {
                SlotStep::Hint { long } => {
                    let len = if long { 1000 } else { 20 };
                    let path: Vec<u8> = (0..len).map(|k| b'a' + ((next as usize + k) % 26) as u8).collect();
                    let e = SubmissionEntry { request_id: next, ..SubmissionEntry::default() };
                    match g.stage_hint(&r, e, &path) {
                        Ok(slot) => {
                            if let Some(s) = slot {
                                prop_assert!(
                                    !unconsumed.iter().any(|u| u.slot == Some(s)),
                                    "slot {} reused while the host may read it", s
                                );
                                prop_assert!(long);
                            }
                            let (n, _) = g.publish(&r);
                            prop_assert_eq!(n, 1);
                            unconsumed.push_back(Sent { id: next, slot, path });
                            waiting.push(next);
                            next += 1;
                        }
                        Err(StageError::Full) | Err(StageError::NoSlot) => {}
                        Err(e) => prop_assert!(false, "stage failed: {:?}", e),
                    }
                }
                SlotStep::Consume { n } => {
                    for _ in 0..n {
                        let Some(s) = unconsumed.pop_front() else { break };
                        // The host reads the path where the entry says it is.
                        let off = match s.slot {
                            Some(slot) => layout.path_slot_offset(slot).unwrap() as usize,
                            None => layout.sqe_offset(head & (layout.sq.entries - 1)) as usize
                                + SQE_INLINE_PATH_OFF as usize,
                        };
                        let mut got = vec![0u8; s.path.len()];
                        prop_assert!(r.read_bytes(off, &mut got));
                        prop_assert_eq!(&got, &s.path, "request {} path overwritten", s.id);
                        head = head.wrapping_add(1);
                        r.set(ring_off::SQ_HEAD, head);
                        consumed.push(s);
                    }
                }
                SlotStep::Expire { i } => {
                    if !waiting.is_empty() {
                        let id = waiting.remove(i as usize % waiting.len());
                        let slot = unconsumed.iter().chain(consumed.iter())
                            .find(|s| s.id == id).and_then(|s| s.slot);
                        if let Some(s) = slot {
                            g.abandon_slot(s);
                        }
                    }
                }
                SlotStep::Answer { i } => {
                    if !consumed.is_empty() {
                        let s = consumed.remove(i as usize % consumed.len());
                        if let Some(k) = waiting.iter().position(|&w| w == s.id) {
                            waiting.remove(k);
                            if let Some(slot) = s.slot {
                                g.free_slot(slot);
                            }
                        }
                        // else: a late answer, dropped as unknown.
                    }
                }
                SlotStep::Reclaim => {
                    prop_assert!(g.reclaim_slots(&r).is_ok());
                }
            }
            // Busy slots are those of requests still waited for, plus the
            // abandoned ones not reclaimed yet.
            let held = unconsumed.iter().chain(consumed.iter())
                .filter(|s| s.slot.is_some() && waiting.contains(&s.id)).count() as u32;
            prop_assert_eq!(g.slots_in_use(), held + g.slots_abandoned());
        }
        // The host consumes everything, every answer arrives: nothing leaks.
        while let Some(s) = unconsumed.pop_front() {
            head = head.wrapping_add(1);
            r.set(ring_off::SQ_HEAD, head);
            consumed.push(s);
        }
        for s in consumed.drain(..) {
            if waiting.contains(&s.id) {
                if let Some(slot) = s.slot {
                    g.free_slot(slot);
                }
            }
        }
        // Two rounds: the batch collected last waits for a barrier first.
        g.reclaim_slots(&r).unwrap();
        g.reclaim_slots(&r).unwrap();
        prop_assert_eq!(g.slots_abandoned(), 0);
        prop_assert_eq!(g.slots_in_use(), 0);
    }

    /// A guest that found its ring's indices corrupt attaches again once the
    /// host wrote a new ring (new generation) over the region, and works.
    #[test]
    fn a_corrupt_ring_is_attached_again_after_the_host_rewrites_it(
        start in any::<u32>(),
        bogus in any::<u32>(),
        which in 0usize..3,
    ) {
        let sizes = RingSizes { sq_entries: 4, cq_entries: 4, eq_entries: 2, path_slots: 1 };
        let r = MemRegion::new(&valid_region(&sizes, 7));
        for off in [ring_off::SQ_HEAD, ring_off::SQ_TAIL, ring_off::CQ_HEAD,
                    ring_off::CQ_TAIL, ring_off::EQ_HEAD, ring_off::EQ_TAIL] {
            r.set(off, start);
        }
        let mut g = GuestEnd::attach(&r).unwrap();
        let off = [ring_off::CQ_TAIL, ring_off::EQ_TAIL, ring_off::SQ_HEAD][which];
        let bad = start.wrapping_add(5 + (bogus % (u32::MAX - 10)));
        r.set(off, bad);
        let corrupt = match which {
            0 => g.answers(&r).is_err(),
            1 => g.events(&r).is_err(),
            _ => {
                let mut e = false;
                for _ in 0..6 {
                    match g.stage_map_op(&r, 1, OP_RELEASE, 3) {
                        Err(StageError::Corrupt(_)) => { e = true; break; }
                        Ok(()) => { g.publish(&r); }
                        Err(_) => break,
                    }
                }
                e
            }
        };
        prop_assert!(corrupt);
        // Until the host rewrites it, the generation is the corrupt one's.
        prop_assert_eq!(ring_generation(&r), Some(7));
        // The host writes a new ring: header zeroed, indices reset, new
        // generation (magic last, as HostRing::create does).
        let fresh = valid_region(&sizes, 8);
        for (i, w) in r.0.iter().enumerate().take(RING_HEADER_SIZE as usize / 4) {
            w.store(u32::from_le_bytes(fresh[i * 4..i * 4 + 4].try_into().unwrap()), Ordering::Relaxed);
        }
        prop_assert_eq!(ring_generation(&r), Some(8));
        let mut g = GuestEnd::attach(&r).unwrap();
        prop_assert!(g.announce(&r, FEATURES_KNOWN));
        prop_assert_eq!(r.0[ring_off::GUEST_ATTACHED / 4].load(Ordering::Relaxed), 8);
        g.stage_hint(&r, SubmissionEntry { request_id: 1, ..Default::default() }, b"a/b").unwrap();
        prop_assert_eq!(g.publish(&r).0, 1);
        prop_assert_eq!(g.answers(&r), Ok(0));
        prop_assert_eq!(g.events(&r), Ok(0));
    }

    /// The cut-off flag is news once per attachment whatever else the flags
    /// word holds, and the acknowledgement touches only its own bit of the
    /// guest's word (NEED_WAKEUP and the host's bits are left alone).
    #[test]
    fn the_cut_off_flag_is_news_once_and_acked_in_the_guests_word(
        host_flags in any::<u32>(),
        guest_flags in any::<u32>(),
    ) {
        let sizes = RingSizes { sq_entries: 4, cq_entries: 4, eq_entries: 2, path_slots: 1 };
        let r = MemRegion::new(&valid_region(&sizes, 3));
        r.set(ring_off::HOST_FLAGS, host_flags & !HOST_FLAG_CUT_OFF);
        r.set(ring_off::GUEST_FLAGS, guest_flags & !GUEST_FLAG_CUT_OFF_ACK);
        let mut g = GuestEnd::attach(&r).unwrap();
        prop_assert!(!g.cut_off_news(&r));
        prop_assert!(!g.is_cut_off());
        r.set(ring_off::HOST_FLAGS, host_flags | HOST_FLAG_CUT_OFF);
        prop_assert!(g.cut_off_news(&r));
        prop_assert!(g.is_cut_off());
        prop_assert!(!g.cut_off_news(&r));
        let bell = g.acknowledge_cut_off(&r);
        prop_assert_eq!(bell, host_flags & HOST_FLAG_NEED_WAKEUP != 0);
        prop_assert_eq!(r.0[ring_off::HOST_FLAGS / 4].load(Ordering::Relaxed), host_flags | HOST_FLAG_CUT_OFF);
        prop_assert_eq!(
            r.0[ring_off::GUEST_FLAGS / 4].load(Ordering::Relaxed),
            (guest_flags & !GUEST_FLAG_CUT_OFF_ACK) | GUEST_FLAG_CUT_OFF_ACK
        );
    }

    /// A hint asks for a loaded notice only where the host offers them, and
    /// keeps no other flag of the caller's but the fingerprint's; options a
    /// guest does not know are ignored, not refused.
    #[test]
    fn a_hint_asks_for_a_notice_or_the_pool_alone_only_where_the_host_offers_it(
        options in any::<u64>(),
        flags in any::<u32>(),
        long in any::<bool>(),
    ) {
        let sizes = RingSizes { sq_entries: 4, cq_entries: 4, eq_entries: 2, path_slots: 1 };
        let r = MemRegion::new(&valid_region(&sizes, 3));
        r.write_bytes(ring_off::HOST_OPTIONS, &options.to_le_bytes());
        let mut g = GuestEnd::attach(&r).unwrap();
        prop_assert_eq!(g.layout().options, options);
        prop_assert_eq!(g.loaded_notices(), options & OPTION_LOADED_NOTICE != 0);
        prop_assert_eq!(g.pool_only_hints(), options & OPTION_POOL_ONLY != 0);
        let path = vec![b'p'; if long { 300 } else { 10 }];
        let entry = SubmissionEntry { flags, ..SubmissionEntry::default() };
        g.stage_hint(&r, entry, &path).unwrap();
        let mut b = [0u8; SQE_INLINE_PATH_OFF as usize];
        r.read_bytes(g.layout().sqe_offset(0) as usize, &mut b);
        let sent = SubmissionEntry::from_le_bytes(&b).flags;
        let mut want = flags & HINT_FLAG_FINGERPRINT;
        if options & OPTION_LOADED_NOTICE != 0 {
            want |= flags & HINT_FLAG_NOTIFY_LOADED;
        }
        if options & OPTION_POOL_ONLY != 0 {
            want |= flags & HINT_FLAG_POOL_ONLY;
        }
        if long {
            want |= HINT_FLAG_PATH_IN_SLOT;
        }
        prop_assert_eq!(sent, want);
    }
}

proptest! {
    /// A guest's own indices left by a store of the previous generation
    /// (they cannot belong with the host's fresh ones) start again from the
    /// host's at attach, and are written back; indices that fit are kept.
    #[test]
    fn attach_restarts_own_indices_that_cannot_fit(
        sizes in sizes(),
        start in any::<u32>(),
        sq_off in prop_oneof![0u32..12, any::<u32>()],
        cq_off in prop_oneof![0u32..12, any::<u32>()],
        eq_off in prop_oneof![0u32..12, any::<u32>()],
    ) {
        let b = valid_region(&sizes, 3);
        let r = MemRegion::new(&b);
        for off in [ring_off::SQ_HEAD, ring_off::CQ_TAIL, ring_off::EQ_TAIL] {
            r.set(off, start);
        }
        // The guest's own: tail ahead of the host's head by sq_off, heads
        // behind the host's tails by cq_off / eq_off.
        r.set(ring_off::SQ_TAIL, start.wrapping_add(sq_off));
        r.set(ring_off::CQ_HEAD, start.wrapping_sub(cq_off));
        r.set(ring_off::EQ_HEAD, start.wrapping_sub(eq_off));
        let mut g = GuestEnd::attach(&r).unwrap();
        let word = |off: usize| r.word(off).unwrap().load(Ordering::Relaxed);
        let want = |off: u32, cap: u32, found: u32| if off > cap { start } else { found };
        prop_assert_eq!(word(ring_off::SQ_TAIL), want(sq_off, sizes.sq_entries, start.wrapping_add(sq_off)));
        prop_assert_eq!(word(ring_off::CQ_HEAD), want(cq_off, sizes.cq_entries, start.wrapping_sub(cq_off)));
        prop_assert_eq!(word(ring_off::EQ_HEAD), want(eq_off, sizes.eq_entries, start.wrapping_sub(eq_off)));
        // What was kept is consistent: the answers and events counted are
        // those between the (kept or restarted) head and the host's tail.
        let n = g.answers(&r);
        prop_assert_eq!(n, Ok(if cq_off > sizes.cq_entries { 0 } else { cq_off }));
        let e = g.events(&r);
        prop_assert_eq!(e, Ok(if eq_off > sizes.eq_entries { 0 } else { eq_off }));
    }
}

proptest! {
    /// A guest may sleep until interrupted only while the region holds the
    /// ring it attached, the host raises interrupts and nothing is waiting
    /// for it. A host that wrote a new ring (another generation) over it,
    /// or a prefix that no longer validates, keeps it polling with its flag
    /// cleared.
    #[test]
    fn a_guest_sleeps_only_on_the_ring_it_attached(
        sizes in sizes(),
        other in any::<u64>(),
        interrupts in any::<bool>(),
        answers in 0u32..3,
        rewrite in 0u8..3,
    ) {
        let r = MemRegion::new(&valid_region(&sizes, 5));
        let mut g = GuestEnd::attach(&r).unwrap();
        if interrupts {
            r.set(ring_off::HOST_FLAGS, HOST_FLAG_INTERRUPTS);
        }
        let answers = answers.min(sizes.cq_entries);
        r.set(ring_off::CQ_TAIL, answers);
        match rewrite {
            // A new ring of another generation written over this one.
            1 => {
                let generation = if other == 5 { 6 } else { other };
                r.set(prefix_off::GENERATION, generation as u32);
                r.set(prefix_off::GENERATION + 4, (generation >> 32) as u32);
            }
            // Torn or zeroed by a host in the middle of writing one.
            2 => r.set(prefix_off::MAGIC, 0),
            _ => {}
        }
        let may = interrupts && answers == 0 && rewrite == 0;
        prop_assert_eq!(g.announce_wait(&r), may);
        let waiting = r.0[ring_off::GUEST_FLAGS / 4].load(Ordering::Relaxed) & GUEST_FLAG_WAITING != 0;
        prop_assert_eq!(waiting, may);
    }
}
