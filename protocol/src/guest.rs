// SPDX-License-Identifier: GPL-2.0
//! The guest end of a ring region: attach, stage hints and map operations,
//! reap answers and events, and decide when a doorbell is needed.
//!
//! Like [`spsc`](crate::spsc) this file depends on `core` only, allocates
//! nothing and may be compiled into the guest module (`#[path =
//! "../protocol/src/guest.rs"] mod guest;`, next to `abi` and `spsc`). The
//! kernel module runs it over its BAR mapping, the host's tests and benchmark
//! over a `SharedMapping` (the fake guest), the loom model over model memory:
//! all through [`SharedRegion`].
//!
//! What stays with the caller is policy: which requests are in flight, which
//! maps are held, what to retry, what to count. In particular the caller
//! remembers which request took which path slot and gives the slot back with
//! [`GuestEnd::free_slot`] when that request's answer has been read, or with
//! [`GuestEnd::abandon_slot`] when it gives up waiting: the slot is then
//! reclaimed by [`GuestEnd::reclaim_slots`] once the host's `sq_head` shows
//! it can no longer read it.
//!
//! # Contract with the host (see `abi.rs` for the layout)
//! - The guest writes submission entries, path slots, `sq_tail`, `cq_head`
//!   and `eq_head`; the host writes everything else. Every byte the host
//!   writes is copied out with [`SharedRegion::read_bytes`] before it is
//!   decoded, and every index the host writes is loaded once and checked
//!   against the capacity by [`spsc`](crate::spsc) (a bad one is
//!   [`Corrupt`]).
//! - Release/acquire: entries and path bytes are written before the Release
//!   store of `sq_tail` ([`GuestEnd::publish`]); answers and events are read
//!   after the Acquire load of `cq_tail`/`eq_tail` and before the Release
//!   store of `cq_head`/`eq_head`.
//! - NEED_WAKEUP: after moving an index the guest issues a full fence and
//!   then reads [`HOST_FLAG_NEED_WAKEUP`] ([`spsc::needs_doorbell`]). The
//!   poller sets the flag, fences, and re-checks the indices before it
//!   parks; with both fences one of the two sides sees the other's write, so
//!   a wake-up is never lost.

use core::sync::atomic::Ordering;

use crate::abi::{
    ring_off, CompletionEntry, EventEntry, LayoutError, PrefixError, RegionKind, RegionPrefix,
    RingLayout, SubmissionEntry, CQE_SIZE, EQE_SIZE, GUEST_FLAG_CUT_OFF_ACK, GUEST_FLAG_DOORBELL,
    GUEST_FLAG_WAITING, HINT_FLAG_FINGERPRINT, HINT_FLAG_NOTIFY_LOADED, HINT_FLAG_PATH_IN_SLOT,
    HINT_FLAG_POOL_ONLY, HOST_FLAG_CUT_OFF, HOST_FLAG_EVENTS_LOST, HOST_FLAG_INTERRUPTS,
    HOST_FLAG_NEED_WAKEUP, MAX_PATH_LEN, MAX_PATH_SLOTS, OPTION_LOADED_NOTICE, OPTION_POOL_ONLY,
    OP_HINT, SQE_INLINE_PATH_MAX, SQE_INLINE_PATH_OFF,
};
use crate::spsc::{self, Consumer, Corrupt, Producer, SharedU32};

/// Memory shared with the host, reached only through bounds-checked copies
/// and aligned atomic words.
///
/// The other side may write any byte at any time, so an implementation must
/// never hand out a reference to plain bytes: copies use volatile accesses,
/// and words are only touched atomically (by both sides).
pub trait SharedRegion {
    /// An index or flag word of the region.
    type Word: SharedU32;

    /// Size of the region in bytes.
    fn size(&self) -> usize;

    /// Copies `out.len()` bytes at `off` out of the region. Returns `false`,
    /// copying nothing, if the range is not inside the region.
    fn read_bytes(&self, off: usize, out: &mut [u8]) -> bool;

    /// Copies `data` into the region at `off`. Returns `false`, writing
    /// nothing, if the range is not inside the region.
    fn write_bytes(&self, off: usize, data: &[u8]) -> bool;

    /// The `u32` at `off`, or `None` if it is out of range or not 4-aligned.
    fn word(&self, off: usize) -> Option<&Self::Word>;
}

/// Why a region could not be attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachError {
    /// The region is too small for its header or index words.
    TooSmall,
    /// The prefix does not validate.
    Prefix(PrefixError),
    /// The prefix is a pool's, not a ring's.
    NotRing,
    /// The layout does not validate.
    Layout(LayoutError),
    /// The indices found are inconsistent.
    Indices,
}

/// Why an entry could not be staged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StageError {
    /// The submission ring is full (reap answers first).
    Full,
    /// Every path slot is busy (reap answers first).
    NoSlot,
    /// The path does not fit the `u16` length field.
    PathTooLong,
    /// The host's `sq_head` is corrupt: stop using the ring.
    Corrupt(Corrupt),
    /// A write fell outside the region (cannot happen with a validated
    /// layout, but a region may be smaller than it claims).
    Unmapped,
}

const SLOT_WORDS: usize = (MAX_PATH_SLOTS as usize).div_ceil(64);

/// The path slots this guest has handed out: fixed bitmaps, one bit per
/// slot the ABI allows, so taking and freeing never allocate.
///
/// Abandoned slots (their request timed out, the host may still read them)
/// go through two batches: `collecting` gathers them; when `waiting` is
/// empty, `collecting` becomes `waiting` with `waiting_until` set to the
/// published `sq_tail` of that moment. Every abandoned slot's entry was
/// published before, so its index is below `waiting_until`; once the host's
/// `sq_head` reaches `waiting_until` it has copied every one of those paths
/// out, and the whole batch is free. The barrier of a batch never moves, so
/// a host that keeps consuming frees every batch.
///
/// # Invariants
/// `waiting` and `collecting` are subsets of `busy`, disjoint.
#[derive(Clone, Copy, Debug)]
struct PathSlots {
    busy: [u64; SLOT_WORDS],
    collecting: [u64; SLOT_WORDS],
    waiting: [u64; SLOT_WORDS],
    waiting_until: u32,
    count: u32,
}

impl PathSlots {
    fn new(count: u32) -> PathSlots {
        // INVARIANT: all empty.
        PathSlots {
            busy: [0; SLOT_WORDS],
            collecting: [0; SLOT_WORDS],
            waiting: [0; SLOT_WORDS],
            waiting_until: 0,
            count: count.min(MAX_PATH_SLOTS),
        }
    }

    /// Marks busy slot `slot` abandoned (reclaimed by [`PathSlots::reclaim`]).
    fn abandon(&mut self, slot: u32) {
        let (i, bit) = ((slot / 64) as usize, 1u64 << (slot % 64));
        if let (Some(b), Some(c), Some(w)) = (
            self.busy.get(i),
            self.collecting.get_mut(i),
            self.waiting.get(i),
        ) {
            // INVARIANT: only busy slots, never one already waiting.
            if *b & bit != 0 && *w & bit == 0 {
                *c |= bit;
            }
        }
    }

    /// Frees the waiting batch if `consumed(waiting_until)` says the host
    /// is past its barrier, then starts the next batch at `tail`.
    fn reclaim(&mut self, tail: u32, consumed: impl Fn(u32) -> bool) -> u32 {
        let mut freed = 0;
        let waiting = self.waiting.iter().any(|&w| w != 0);
        if waiting && consumed(self.waiting_until) {
            for (b, w) in self.busy.iter_mut().zip(self.waiting.iter_mut()) {
                freed += w.count_ones();
                *b &= !*w;
                *w = 0;
            }
        }
        if self.waiting.iter().all(|&w| w == 0) && self.collecting.iter().any(|&c| c != 0) {
            // INVARIANT: the batch moves whole; `collecting` is emptied.
            core::mem::swap(&mut self.waiting, &mut self.collecting);
            self.waiting_until = tail;
        }
        freed
    }

    fn abandoned(&self) -> u32 {
        self.collecting
            .iter()
            .chain(self.waiting.iter())
            .map(|w| w.count_ones())
            .sum()
    }

    /// Takes the lowest free slot.
    fn take(&mut self) -> Option<u32> {
        for (i, w) in self.busy.iter_mut().enumerate() {
            if *w != u64::MAX {
                let bit = w.trailing_ones();
                let slot = i as u32 * 64 + bit;
                if slot >= self.count {
                    return None;
                }
                *w |= 1 << bit;
                return Some(slot);
            }
        }
        None
    }

    fn free(&mut self, slot: u32) {
        let (i, bit) = ((slot / 64) as usize, 1u64 << (slot % 64));
        // An abandoned slot is freed only by `reclaim`: the host may still
        // read it.
        let abandoned = self.collecting.get(i).is_some_and(|c| c & bit != 0)
            || self.waiting.get(i).is_some_and(|w| w & bit != 0);
        if let (Some(w), false) = (self.busy.get_mut(i), abandoned) {
            *w &= !bit;
        }
    }

    fn in_use(&self) -> u32 {
        self.busy.iter().map(|w| w.count_ones()).sum()
    }
}

/// Reads and validates the prefix of `region`; returns its generation if it
/// is a ring region this guest understands.
pub fn ring_generation<R: SharedRegion + ?Sized>(region: &R) -> Option<u64> {
    read_prefix(region).ok().map(|p| p.generation)
}

fn read_prefix<R: SharedRegion + ?Sized>(region: &R) -> Result<RegionPrefix, AttachError> {
    let mut p = [0u8; 32];
    if !region.read_bytes(0, &mut p) {
        return Err(AttachError::TooSmall);
    }
    // A private copy: the host cannot change what is validated.
    let prefix = RegionPrefix::from_le_bytes(&p);
    match prefix.validate(region.size() as u64) {
        Ok(RegionKind::Ring) => Ok(prefix),
        Ok(RegionKind::Pool) => Err(AttachError::NotRing),
        Err(e) => Err(AttachError::Prefix(e)),
    }
}

fn word<R: SharedRegion + ?Sized>(region: &R, off: usize) -> Result<&R::Word, Corrupt> {
    // Every word was found at attach, so this only fails on a region that
    // shrank: treat it like bad indices.
    region.word(off).ok_or(Corrupt { head: 0, tail: 0 })
}

/// The guest's private state for one attached ring region: it owns
/// `sq_tail`, `cq_head` and `eq_head`.
///
/// # Invariants
/// `layout` validated against the region it was attached to; the three
/// index words exist in that region; `staged <= sq.capacity()`.
#[derive(Clone, Copy, Debug)]
pub struct GuestEnd {
    layout: RingLayout,
    generation: u64,
    sq: Producer,
    cq: Consumer,
    eq: Consumer,
    staged: u32,
    slots: PathSlots,
    events_lost_seen: bool,
    cut_off_seen: bool,
}

impl GuestEnd {
    /// Attaches to an initialised ring region: copies the prefix and layout
    /// out, validates them and starts from the indices as found, except the
    /// guest's own where they cannot belong with the host's (then from the
    /// host's, written back).
    pub fn attach<R: SharedRegion + ?Sized>(region: &R) -> Result<GuestEnd, AttachError> {
        let prefix = read_prefix(region)?;
        let mut l = [0u8; 96];
        if !region.read_bytes(ring_off::HOST_FEATURES, &mut l) {
            return Err(AttachError::TooSmall);
        }
        let layout = RingLayout::from_le_bytes(&l);
        layout
            .validate(prefix.region_size.min(region.size() as u64))
            .map_err(AttachError::Layout)?;
        let w = |off| region.word(off).ok_or(AttachError::TooSmall);
        let (sq_head, sq_tail, cq_head, eq_head) = (
            w(ring_off::SQ_HEAD)?,
            w(ring_off::SQ_TAIL)?,
            w(ring_off::CQ_HEAD)?,
            w(ring_off::EQ_HEAD)?,
        );
        let (cq_tail, eq_tail) = (w(ring_off::CQ_TAIL)?, w(ring_off::EQ_TAIL)?);
        w(ring_off::HOST_FLAGS)?;
        // The guest's own indices are taken as found, unless they cannot
        // belong with the host's: a store this guest made to the ring of
        // the previous generation can land after the host re-created the
        // region (the host cannot stop it). Such an index starts again from
        // the host's (Release: the host reads it with Acquire), which drops
        // nothing: the guest staged nothing in this generation, and an
        // answer or event cannot be past a tail the guest never saw.
        // Acquire: what the host wrote before these indices is visible.
        let sq_h = sq_head.load(Ordering::Acquire);
        let mut sq_t = sq_tail.load(Ordering::Acquire);
        if sq_t.wrapping_sub(sq_h) > layout.sq.entries {
            sq_t = sq_h;
            sq_tail.store(sq_t, Ordering::Release);
        }
        let sq = Producer::new(layout.sq.entries, sq_h, sq_t).ok_or(AttachError::Indices)?;
        let own_head = |head: &R::Word, tail: &R::Word, entries: u32| {
            let (h, t) = (head.load(Ordering::Acquire), tail.load(Ordering::Acquire));
            if t.wrapping_sub(h) > entries {
                head.store(t, Ordering::Release);
                t
            } else {
                h
            }
        };
        let cq = Consumer::new(
            layout.cq.entries,
            own_head(cq_head, cq_tail, layout.cq.entries),
        )
        .ok_or(AttachError::Indices)?;
        let eq = Consumer::new(
            layout.eq.entries,
            own_head(eq_head, eq_tail, layout.eq.entries),
        )
        .ok_or(AttachError::Indices)?;
        // INVARIANT: layout validated, words checked, nothing staged.
        Ok(GuestEnd {
            layout,
            generation: prefix.generation,
            sq,
            cq,
            eq,
            staged: 0,
            slots: PathSlots::new(layout.slots.count),
            events_lost_seen: false,
            cut_off_seen: false,
        })
    }

    /// Tells the host this guest uses the ring: writes `guest_features`,
    /// then stores the low 32 bits of the attached generation in
    /// `guest_attached` with Release. Call it once after attach, after every
    /// map of an older generation was dropped: the host releases what the
    /// VM held before when it sees this.
    pub fn announce<R: SharedRegion + ?Sized>(&self, region: &R, features: u64) -> bool {
        let f = features & self.layout.features;
        let (Some(lo), Some(hi), Some(att)) = (
            region.word(ring_off::GUEST_FEATURES),
            region.word(ring_off::GUEST_FEATURES + 4),
            region.word(ring_off::GUEST_ATTACHED),
        ) else {
            return false;
        };
        lo.store(f as u32, Ordering::Relaxed);
        hi.store((f >> 32) as u32, Ordering::Relaxed);
        att.store(self.generation as u32, Ordering::Release);
        true
    }

    /// Sets (or clears) [`GUEST_FLAG_DOORBELL`]: whether this guest rings a
    /// doorbell whenever [`HOST_FLAG_NEED_WAKEUP`] asks for one. Set it
    /// before [`GuestEnd::announce`], so a host that sees the attachment
    /// sees the bit too (Release on both sides of the word's users).
    pub fn set_rings_doorbell<R: SharedRegion + ?Sized>(&self, region: &R, on: bool) -> bool {
        let Ok(f) = word(region, ring_off::GUEST_FLAGS) else {
            return false;
        };
        if on {
            f.fetch_or(GUEST_FLAG_DOORBELL, Ordering::Release);
        } else {
            f.fetch_and(!GUEST_FLAG_DOORBELL, Ordering::Release);
        }
        true
    }

    /// Guest wake-up, steps 1-3 (see the ring region comment in
    /// [`crate::abi`]): sets [`GUEST_FLAG_WAITING`], fences, and re-checks.
    /// Returns `true` when the guest may sleep until the ring's interrupt:
    /// the host says it raises it ([`HOST_FLAG_INTERRUPTS`]), no answer,
    /// event or news of a cut-off arrived meanwhile, and the region still
    /// holds the ring this end attached (a host that writes a new ring over
    /// it zeroes the flag just set, so the guest must not count on it). On
    /// `false` the flag is cleared again and the caller keeps polling (its
    /// timer).
    pub fn announce_wait<R: SharedRegion + ?Sized>(&mut self, region: &R) -> bool {
        let Ok(f) = word(region, ring_off::GUEST_FLAGS) else {
            return false;
        };
        spsc::announce_park(f, GUEST_FLAG_WAITING);
        spsc::park_fence::<R::Word>();
        let host = self.host_flags(region);
        let news = host & HOST_FLAG_CUT_OFF != 0 && !self.cut_off_seen;
        let sleep = host & HOST_FLAG_INTERRUPTS != 0
            && !news
            && self.answers(region) == Ok(0)
            && self.events(region) == Ok(0)
            && ring_generation(region) == Some(self.generation);
        if !sleep {
            spsc::cancel_park(f, GUEST_FLAG_WAITING);
        }
        sleep
    }

    /// Clears [`GUEST_FLAG_WAITING`] (the guest woke up).
    pub fn cancel_wait<R: SharedRegion + ?Sized>(&self, region: &R) {
        if let Ok(f) = word(region, ring_off::GUEST_FLAGS) {
            spsc::cancel_park(f, GUEST_FLAG_WAITING);
        }
    }

    /// Whether the host offers [`OPTION_LOADED_NOTICE`]: hints may ask with
    /// [`HINT_FLAG_NOTIFY_LOADED`] to be told when a file answered
    /// "loading" is in the pool.
    pub fn loaded_notices(&self) -> bool {
        self.layout.options & OPTION_LOADED_NOTICE != 0
    }

    /// Whether the host offers [`OPTION_POOL_ONLY`]: a hint may ask with
    /// [`HINT_FLAG_POOL_ONLY`] to be answered from the pool alone.
    pub fn pool_only_hints(&self) -> bool {
        self.layout.options & OPTION_POOL_ONLY != 0
    }

    /// The layout the host wrote (validated at attach).
    pub fn layout(&self) -> &RingLayout {
        &self.layout
    }

    /// The generation found at attach.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Entries staged but not yet published.
    pub fn staged(&self) -> u32 {
        self.staged
    }

    /// Path slots taken and not yet freed.
    pub fn slots_in_use(&self) -> u32 {
        self.slots.in_use()
    }

    /// Whether one more entry fits behind the staged ones; returns its
    /// ring slot. Counted from our published tail, so it includes what is
    /// staged. Loads `sq_head` (Acquire) only when the cached value is short.
    fn room<R: SharedRegion + ?Sized>(&mut self, region: &R) -> Result<u32, StageError> {
        let head = word(region, ring_off::SQ_HEAD).map_err(StageError::Corrupt)?;
        let free = self
            .sq
            .free(head, self.staged + 1)
            .map_err(StageError::Corrupt)?;
        if free <= self.staged {
            return Err(StageError::Full);
        }
        Ok(self.sq.slot(self.staged))
    }

    /// Writes a hint into the next free submission slot, not yet visible to
    /// the host (see [`GuestEnd::publish`]). Fills in `entry`'s opcode, path
    /// length, path flag and path slot (a fingerprint set with
    /// [`SubmissionEntry::set_fingerprint`] stays, and so does
    /// [`HINT_FLAG_NOTIFY_LOADED`] and [`HINT_FLAG_POOL_ONLY`] if the host
    /// offers [`OPTION_LOADED_NOTICE`] and [`OPTION_POOL_ONLY`]; see
    /// [`GuestEnd::loaded_notices`] and [`GuestEnd::pool_only_hints`]). A path longer than
    /// [`SQE_INLINE_PATH_MAX`] goes to a path slot, which is returned: the
    /// caller gives it back with [`GuestEnd::free_slot`] once the answer is
    /// read. A path longer than [`MAX_PATH_LEN`] is still sent, with no
    /// bytes and no slot, so the host answers `PathTooLong`.
    pub fn stage_hint<R: SharedRegion + ?Sized>(
        &mut self,
        region: &R,
        mut entry: SubmissionEntry,
        path: &[u8],
    ) -> Result<Option<u32>, StageError> {
        let at = self.room(region)?;
        let len = u16::try_from(path.len()).map_err(|_| StageError::PathTooLong)?;
        entry.opcode = OP_HINT;
        entry.path_len = len;
        // The caller's fingerprint, notice and pool-only flags stay (the
        // last two only if the host offers them); the path flag is ours.
        let mut keep = HINT_FLAG_FINGERPRINT;
        if self.loaded_notices() {
            keep |= HINT_FLAG_NOTIFY_LOADED;
        }
        if self.pool_only_hints() {
            keep |= HINT_FLAG_POOL_ONLY;
        }
        entry.flags &= keep;
        entry.path_slot = 0;
        let sqe = self.layout.sqe_offset(at) as usize;
        let mut slot = None;
        if path.len() > SQE_INLINE_PATH_MAX as usize {
            entry.flags |= HINT_FLAG_PATH_IN_SLOT;
            if path.len() <= MAX_PATH_LEN as usize {
                let s = self.slots.take().ok_or(StageError::NoSlot)?;
                let written = self
                    .layout
                    .path_slot_offset(s)
                    .is_some_and(|off| region.write_bytes(off as usize, path));
                if !written {
                    self.slots.free(s);
                    return Err(StageError::Unmapped);
                }
                entry.path_slot = s;
                slot = Some(s);
            }
        } else if !region.write_bytes(sqe + SQE_INLINE_PATH_OFF as usize, path) {
            return Err(StageError::Unmapped);
        }
        if !region.write_bytes(sqe, &entry.to_le_bytes()) {
            if let Some(s) = slot {
                self.slots.free(s);
            }
            return Err(StageError::Unmapped);
        }
        self.staged += 1;
        Ok(slot)
    }

    /// Writes a map operation ([`SubmissionEntry::map_op`]) into the next
    /// free submission slot (published with [`GuestEnd::publish`]).
    pub fn stage_map_op<R: SharedRegion + ?Sized>(
        &mut self,
        region: &R,
        request_id: u64,
        opcode: u16,
        file_map_id: u64,
    ) -> Result<(), StageError> {
        let at = self.room(region)?;
        let sqe = self.layout.sqe_offset(at) as usize;
        let entry = SubmissionEntry::map_op(request_id, opcode, file_map_id);
        if !region.write_bytes(sqe, &entry.to_le_bytes()) {
            return Err(StageError::Unmapped);
        }
        self.staged += 1;
        Ok(())
    }

    /// Gives back a path slot returned by [`GuestEnd::stage_hint`] whose
    /// answer has been read (the host copied the path before it answered).
    pub fn free_slot(&mut self, slot: u32) {
        self.slots.free(slot);
    }

    /// Gives up on the request that holds path slot `slot` (published, no
    /// answer yet): the host may still read the slot, so it stays busy until
    /// [`GuestEnd::reclaim_slots`] sees `sq_head` past the entry. A later
    /// [`GuestEnd::free_slot`] for it (the late answer) changes nothing.
    pub fn abandon_slot(&mut self, slot: u32) {
        self.slots.abandon(slot);
    }

    /// Frees abandoned path slots the host can no longer read: loads
    /// `sq_head` (Acquire, checked against the capacity) and frees the batch
    /// whose entries are all below it. Returns how many were freed.
    pub fn reclaim_slots<R: SharedRegion + ?Sized>(&mut self, region: &R) -> Result<u32, Corrupt> {
        if self.slots.abandoned() == 0 {
            return Ok(0);
        }
        let head_word = word(region, ring_off::SQ_HEAD)?;
        let tail = self.sq.tail();
        let head = head_word.load(Ordering::Acquire);
        let in_flight = tail.wrapping_sub(head);
        if in_flight > self.layout.sq.entries {
            return Err(Corrupt { head, tail });
        }
        // Every entry below `until` is consumed iff `head` is at or past
        // it: `until` is then at least as far from `tail` as `head` is.
        Ok(self
            .slots
            .reclaim(tail, |until| in_flight <= tail.wrapping_sub(until)))
    }

    /// Abandoned path slots not reclaimed yet.
    pub fn slots_abandoned(&self) -> u32 {
        self.slots.abandoned()
    }

    /// The free-running index the next staged entry gets (our published
    /// tail plus what is staged).
    pub fn next_index(&self) -> u32 {
        self.sq.tail().wrapping_add(self.staged)
    }

    /// Makes the staged entries visible to the host (Release store of
    /// `sq_tail`), then says whether the poller asked for a doorbell
    /// (NEED_WAKEUP, read after a full fence). Returns `(published,
    /// doorbell)`.
    pub fn publish<R: SharedRegion + ?Sized>(&mut self, region: &R) -> (u32, bool) {
        if self.staged == 0 {
            return (0, false);
        }
        let (Ok(head), Ok(tail)) = (
            word(region, ring_off::SQ_HEAD),
            word(region, ring_off::SQ_TAIL),
        ) else {
            return (0, false);
        };
        // Every staged entry passed `room`, so this finds them all free
        // (from the cache, without a load).
        let _ = self.sq.free(head, self.staged);
        let n = self.sq.publish(tail, self.staged);
        self.staged = 0;
        (n, self.needs_doorbell(region))
    }

    /// NEED_WAKEUP after a full fence (the guest's half of the handshake).
    fn needs_doorbell<R: SharedRegion + ?Sized>(&self, region: &R) -> bool {
        word(region, ring_off::HOST_FLAGS)
            .is_ok_and(|f| spsc::needs_doorbell(f, HOST_FLAG_NEED_WAKEUP))
    }

    /// How many answers may be read now (one Acquire load of `cq_tail`,
    /// checked against the capacity). Read them with [`GuestEnd::answer`],
    /// then free them with [`GuestEnd::release_answers`].
    pub fn answers<R: SharedRegion + ?Sized>(&mut self, region: &R) -> Result<u32, Corrupt> {
        self.cq.available(word(region, ring_off::CQ_TAIL)?)
    }

    /// Copies out and decodes the `i`-th available answer.
    pub fn answer<R: SharedRegion + ?Sized>(&self, region: &R, i: u32) -> Option<CompletionEntry> {
        let off = self.layout.cqe_offset(self.cq.slot(i)) as usize;
        let mut b = [0u8; CQE_SIZE as usize];
        region
            .read_bytes(off, &mut b)
            .then(|| CompletionEntry::from_le_bytes(&b))
    }

    /// Frees `n` read answers (Release store of `cq_head`). Returns whether
    /// a doorbell is needed: the poller may be parked waiting for completion
    /// room, which can only matter while submissions wait, so only then.
    pub fn release_answers<R: SharedRegion + ?Sized>(&mut self, region: &R, n: u32) -> bool {
        let Ok(head) = word(region, ring_off::CQ_HEAD) else {
            return false;
        };
        self.cq.release(head, n);
        if n == 0 || !self.needs_doorbell(region) {
            return false;
        }
        word(region, ring_off::SQ_HEAD).is_ok_and(|h| h.load(Ordering::Acquire) != self.sq.tail())
    }

    /// How many events may be read now (one Acquire load of `eq_tail`).
    /// Read them with [`GuestEnd::event`], free them with
    /// [`GuestEnd::release_events`].
    pub fn events<R: SharedRegion + ?Sized>(&mut self, region: &R) -> Result<u32, Corrupt> {
        self.eq.available(word(region, ring_off::EQ_TAIL)?)
    }

    /// Copies out and decodes the `i`-th available event.
    pub fn event<R: SharedRegion + ?Sized>(&self, region: &R, i: u32) -> Option<EventEntry> {
        let off = self.layout.eqe_offset(self.eq.slot(i)) as usize;
        let mut b = [0u8; EQE_SIZE as usize];
        region
            .read_bytes(off, &mut b)
            .then(|| EventEntry::from_le_bytes(&b))
    }

    /// Frees `n` read events (Release store of `eq_head`). Returns whether a
    /// doorbell is needed (the poller may be parked waiting for event room).
    pub fn release_events<R: SharedRegion + ?Sized>(&mut self, region: &R, n: u32) -> bool {
        let Ok(head) = word(region, ring_off::EQ_HEAD) else {
            return false;
        };
        self.eq.release(head, n);
        n > 0 && self.needs_doorbell(region)
    }

    /// The host flags word as it is now (Acquire), 0 if unreachable.
    pub fn host_flags<R: SharedRegion + ?Sized>(&self, region: &R) -> u32 {
        word(region, ring_off::HOST_FLAGS).map_or(0, |f| f.load(Ordering::Acquire))
    }

    /// Whether [`HOST_FLAG_EVENTS_LOST`] is set and this is the first time
    /// it is seen on this attachment (the host never clears it, so the
    /// caller applies it once: everything it holds may have been revoked).
    pub fn events_lost_news<R: SharedRegion + ?Sized>(&mut self, region: &R) -> bool {
        if self.host_flags(region) & HOST_FLAG_EVENTS_LOST == 0 || self.events_lost_seen {
            return false;
        }
        self.events_lost_seen = true;
        true
    }

    /// Whether [`HOST_FLAG_CUT_OFF`] is set and this is the first time it
    /// is seen on this attachment. Checks the flags word only, whatever the
    /// event ring holds. The caller then zaps every map it holds and calls
    /// [`GuestEnd::acknowledge_cut_off`].
    pub fn cut_off_news<R: SharedRegion + ?Sized>(&mut self, region: &R) -> bool {
        if self.cut_off_seen || self.host_flags(region) & HOST_FLAG_CUT_OFF == 0 {
            return false;
        }
        self.cut_off_seen = true;
        true
    }

    /// Whether the host cut this VM off (seen by [`GuestEnd::cut_off_news`]).
    pub fn is_cut_off(&self) -> bool {
        self.cut_off_seen
    }

    /// Sets [`GUEST_FLAG_CUT_OFF_ACK`] (Release `fetch_or`: the zap that
    /// came before is ordered before it). Returns whether a doorbell is
    /// needed (NEED_WAKEUP after a full fence). Call it only after every
    /// pool mapping is gone.
    pub fn acknowledge_cut_off<R: SharedRegion + ?Sized>(&self, region: &R) -> bool {
        let Ok(f) = word(region, ring_off::GUEST_FLAGS) else {
            return false;
        };
        f.fetch_or(GUEST_FLAG_CUT_OFF_ACK, Ordering::Release);
        self.needs_doorbell(region)
    }
}
