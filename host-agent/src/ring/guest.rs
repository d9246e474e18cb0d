//! A guest end of a ring region in userspace: the "fake guest" the tests and
//! the benchmark drive. It follows the same protocol the guest module must:
//! validate the header, produce hints, consume answers and events, and ring
//! the doorbell only when the poller asked for it (NEED_WAKEUP).

use std::collections::HashMap;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use vmdedup_protocol::abi::{
    CompletionEntry, EventEntry, RegionKind, RegionPrefix, RingLayout, SubmissionEntry, CQE_SIZE,
    EQE_SIZE, HINT_FLAG_PATH_IN_SLOT, HOST_FLAG_NEED_WAKEUP, OP_HINT, SQE_INLINE_PATH_MAX,
    SQE_INLINE_PATH_OFF,
};
use vmdedup_protocol::spsc::{self, Consumer, Producer};

use super::eventfd::EventFd;
use super::mapping::SharedMapping;
use super::words::{word, Words};
use super::RingError;

/// Why a hint could not be queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The submission ring is full (reap answers first).
    #[error("submission ring full")]
    Full,
    /// Every path slot is busy (reap answers first).
    #[error("no free path slot")]
    NoSlot,
    /// The path does not even fit the `u16` length field.
    #[error("path longer than 65535 bytes")]
    PathTooLong,
    /// The host's indices are corrupt.
    #[error("ring indices corrupt")]
    Corrupt,
}

/// The guest end of a ring region.
#[derive(Debug)]
pub struct GuestRing {
    map: Arc<SharedMapping>,
    layout: RingLayout,
    generation: u64,
    words: Words,
    sq: Producer,
    cq: Consumer,
    eq: Consumer,
    staged: u32,
    doorbell: Option<EventFd>,
    always_doorbell: bool,
    free_slots: Vec<u32>,
    slot_of: HashMap<u64, u32>,
    doorbells_rung: u64,
}

// SAFETY: the pointers in `words` point into `map`, owned via Arc by the ring.
unsafe impl Send for GuestRing {}

impl GuestRing {
    /// Attaches to an initialised ring region: copies the prefix and layout
    /// out, validates them, and starts from the indices as found.
    pub fn attach(
        map: Arc<SharedMapping>,
        doorbell: Option<EventFd>,
    ) -> Result<GuestRing, RingError> {
        let mut p = [0u8; 32];
        let mut l = [0u8; 96];
        if !map.read_bytes(0, &mut p) || !map.read_bytes(32, &mut l) {
            return Err(RingError::BadSize(map.len() as u64));
        }
        let prefix = RegionPrefix::from_le_bytes(&p);
        match prefix.validate(map.len() as u64) {
            Ok(RegionKind::Ring) => {}
            Ok(RegionKind::Pool) => return Err(RingError::BadSize(map.len() as u64)),
            Err(e) => return Err(RingError::Prefix(e)),
        }
        let layout = RingLayout::from_le_bytes(&l);
        layout
            .validate(prefix.region_size)
            .map_err(RingError::Layout)?;
        let words = Words::new(&map)?;
        let ld = |p: NonNull<AtomicU32>| {
            // SAFETY: `p` was made from `map.word` and `map` is alive here.
            unsafe { p.as_ref() }.load(Ordering::Acquire)
        };
        let sq = Producer::new(layout.sq.entries, ld(words.sq_head), ld(words.sq_tail))
            .ok_or(RingError::Corrupt)?;
        let cq = Consumer::new(layout.cq.entries, ld(words.cq_head)).ok_or(RingError::Corrupt)?;
        let eq = Consumer::new(layout.eq.entries, ld(words.eq_head)).ok_or(RingError::Corrupt)?;
        Ok(GuestRing {
            layout,
            generation: prefix.generation,
            words,
            sq,
            cq,
            eq,
            staged: 0,
            doorbell,
            always_doorbell: false,
            free_slots: (0..layout.slots.count).rev().collect(),
            slot_of: HashMap::new(),
            doorbells_rung: 0,
            map,
        })
    }

    /// The validated layout.
    pub fn layout(&self) -> &RingLayout {
        &self.layout
    }

    /// Generation found at attach.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Ring the doorbell after every publish, NEED_WAKEUP or not (the
    /// benchmark's non-polled baseline).
    pub fn set_always_doorbell(&mut self, on: bool) {
        self.always_doorbell = on;
    }

    /// Doorbells this guest has rung.
    pub fn doorbells_rung(&self) -> u64 {
        self.doorbells_rung
    }

    /// Hints staged but not yet published.
    pub fn staged(&self) -> u32 {
        self.staged
    }

    /// Writes one hint into the next free submission slot (not yet visible to
    /// the host: see [`GuestRing::publish`]). `entry`'s opcode, path length,
    /// flags and slot are filled in here. A path longer than a path slot is
    /// still sent (with no bytes), so the host answers `PathTooLong`.
    pub fn stage(&mut self, mut entry: SubmissionEntry, path: &[u8]) -> Result<(), SubmitError> {
        self.check_room()?;
        let len = u16::try_from(path.len()).map_err(|_| SubmitError::PathTooLong)?;
        entry.opcode = OP_HINT;
        entry.path_len = len;
        entry.flags = 0;
        entry.path_slot = 0;
        let sqe = self.layout.sqe_offset(self.sq.slot(self.staged)) as usize;
        if path.len() > SQE_INLINE_PATH_MAX as usize {
            entry.flags = HINT_FLAG_PATH_IN_SLOT;
            if path.len() <= vmdedup_protocol::abi::MAX_PATH_LEN as usize {
                let slot = self.free_slots.pop().ok_or(SubmitError::NoSlot)?;
                entry.path_slot = slot;
                if let Some(off) = self.layout.path_slot_offset(slot) {
                    self.map.write_bytes(off as usize, path);
                }
                self.slot_of.insert(entry.request_id, slot);
            }
        } else {
            self.map
                .write_bytes(sqe + SQE_INLINE_PATH_OFF as usize, path);
        }
        self.map.write_bytes(sqe, &entry.to_le_bytes());
        self.staged += 1;
        Ok(())
    }

    /// Whether one more entry fits behind the staged ones. Counted from our
    /// published tail, so it includes what is staged.
    fn check_room(&mut self) -> Result<(), SubmitError> {
        let free = self
            .sq
            .free(word!(self.sq_head), self.staged + 1)
            .map_err(|_| SubmitError::Corrupt)?;
        if free <= self.staged {
            return Err(SubmitError::Full);
        }
        Ok(())
    }

    /// Writes one map operation ([`SubmissionEntry::map_op`]) into the next
    /// free submission slot (published with [`GuestRing::publish`]).
    pub fn stage_map_op(
        &mut self,
        request_id: u64,
        opcode: u16,
        file_map_id: u64,
    ) -> Result<(), SubmitError> {
        self.check_room()?;
        let sqe = self.layout.sqe_offset(self.sq.slot(self.staged)) as usize;
        let entry = SubmissionEntry::map_op(request_id, opcode, file_map_id);
        self.map.write_bytes(sqe, &entry.to_le_bytes());
        self.staged += 1;
        Ok(())
    }

    /// Makes the staged hints visible to the host, then rings the doorbell if
    /// the poller set NEED_WAKEUP. Returns whether it rang.
    pub fn publish(&mut self) -> bool {
        if self.staged == 0 {
            return false;
        }
        self.sq.free(word!(self.sq_head), self.staged).ok();
        self.sq.publish(word!(self.sq_tail), self.staged);
        self.staged = 0;
        self.kick()
    }

    /// After moving an index: fence, look at NEED_WAKEUP, ring if set.
    fn kick(&mut self) -> bool {
        let need = spsc::needs_doorbell(word!(self.host_flags), HOST_FLAG_NEED_WAKEUP);
        (need || self.always_doorbell) && self.ring()
    }

    fn ring(&mut self) -> bool {
        match &self.doorbell {
            Some(d) => {
                d.notify();
                self.doorbells_rung += 1;
                true
            }
            None => false,
        }
    }

    /// Consumes every available answer, calling `f` on each; frees the path
    /// slots of answered requests. Returns how many were consumed.
    pub fn reap(&mut self, mut f: impl FnMut(CompletionEntry)) -> u32 {
        let n = match self.cq.available(word!(self.cq_tail)) {
            Ok(n) => n,
            Err(_) => return 0,
        };
        if n == 0 {
            return 0;
        }
        for i in 0..n {
            let off = self.layout.cqe_offset(self.cq.slot(i)) as usize;
            let mut b = [0u8; CQE_SIZE as usize];
            self.map.read_bytes(off, &mut b);
            let c = CompletionEntry::from_le_bytes(&b);
            if !self.slot_of.is_empty() {
                if let Some(slot) = self.slot_of.remove(&c.request_id) {
                    self.free_slots.push(slot);
                }
            }
            f(c);
        }
        self.cq.release(word!(self.cq_head), n);
        // The poller may be parked waiting for completion-ring room, which can
        // only be the case while hints are waiting in the submission ring.
        if spsc::needs_doorbell(word!(self.host_flags), HOST_FLAG_NEED_WAKEUP)
            && word!(self.sq_head).load(Ordering::Acquire) != self.sq.tail()
        {
            self.ring();
        }
        n
    }

    /// Consumes every available event.
    pub fn reap_events(&mut self, mut f: impl FnMut(EventEntry)) -> u32 {
        let n = match self.eq.available(word!(self.eq_tail)) {
            Ok(n) => n,
            Err(_) => return 0,
        };
        for i in 0..n {
            let off = self.layout.eqe_offset(self.eq.slot(i)) as usize;
            let mut b = [0u8; EQE_SIZE as usize];
            self.map.read_bytes(off, &mut b);
            f(EventEntry::from_le_bytes(&b));
        }
        if n > 0 {
            self.eq.release(word!(self.eq_head), n);
            self.kick();
        }
        n
    }

    /// The host flags word as it is now.
    pub fn host_flags(&self) -> u32 {
        word!(self.host_flags).load(Ordering::Acquire)
    }
}
