//! A guest end of a ring region in userspace: the "fake guest" the tests and
//! the benchmark drive. It is a thin wrapper over
//! [`vmdedup_protocol::guest::GuestEnd`], the code the guest module runs, so
//! what the tests exercise is the kernel's protocol; only the policy here
//! (which request holds which path slot, the eventfd doorbell) is its own.
//! Built for tests and with the `test-utils` feature.

use std::collections::HashMap;
use std::sync::Arc;

use vmdedup_protocol::abi::{
    CompletionEntry, EventEntry, RingLayout, SubmissionEntry, FEATURES_KNOWN,
};
use vmdedup_protocol::guest::{AttachError, GuestEnd, StageError};

use super::eventfd::EventFd;
use super::mapping::SharedMapping;
use super::RingError;

/// The guest end of a ring region.
#[derive(Debug)]
pub struct GuestRing {
    map: Arc<SharedMapping>,
    end: GuestEnd,
    doorbell: Option<EventFd>,
    always_doorbell: bool,
    slot_of: HashMap<u64, u32>,
    doorbells_rung: u64,
}

impl GuestRing {
    /// Attaches to an initialised ring region (see [`GuestEnd::attach`])
    /// and announces it to the host ([`GuestEnd::announce`]), as the guest
    /// module does.
    pub fn attach(
        map: Arc<SharedMapping>,
        doorbell: Option<EventFd>,
    ) -> Result<GuestRing, RingError> {
        let end = GuestEnd::attach(&*map).map_err(|e| match e {
            AttachError::TooSmall | AttachError::NotRing => RingError::BadSize(map.len() as u64),
            AttachError::Prefix(e) => RingError::Prefix(e),
            AttachError::Layout(e) => RingError::Layout(e),
            AttachError::Indices => RingError::Corrupt,
        })?;
        end.announce(&*map, FEATURES_KNOWN);
        Ok(GuestRing {
            map,
            end,
            doorbell,
            always_doorbell: false,
            slot_of: HashMap::new(),
            doorbells_rung: 0,
        })
    }

    /// The validated layout.
    pub fn layout(&self) -> &RingLayout {
        self.end.layout()
    }

    /// Generation found at attach.
    pub fn generation(&self) -> u64 {
        self.end.generation()
    }

    /// Ring the doorbell after every publish, NEED_WAKEUP or not (the
    /// benchmark's non-polled baseline).
    pub fn set_always_doorbell(&mut self, on: bool) {
        self.always_doorbell = on;
    }

    /// Says in the ring whether this guest rings its doorbell whenever the
    /// poller asks ([`GuestEnd::set_rings_doorbell`]), as the module does
    /// when its ring is an ivshmem-doorbell device.
    pub fn set_rings_doorbell(&self, on: bool) -> bool {
        self.end.set_rings_doorbell(&*self.map, on)
    }

    /// Says it goes to sleep until the host's interrupt
    /// ([`GuestEnd::announce_wait`]): `true` if it may (the host raises
    /// interrupts and nothing arrived meanwhile).
    pub fn announce_wait(&mut self) -> bool {
        self.end.announce_wait(&*self.map)
    }

    /// Woke up ([`GuestEnd::cancel_wait`]).
    pub fn cancel_wait(&self) {
        self.end.cancel_wait(&*self.map)
    }

    /// Doorbells this guest has rung.
    pub fn doorbells_rung(&self) -> u64 {
        self.doorbells_rung
    }

    /// Hints staged but not yet published.
    pub fn staged(&self) -> u32 {
        self.end.staged()
    }

    /// Stages one hint (see [`GuestEnd::stage_hint`]); its path slot, if
    /// any, is freed when its answer is reaped.
    pub fn stage(&mut self, entry: SubmissionEntry, path: &[u8]) -> Result<(), StageError> {
        if let Some(slot) = self.end.stage_hint(&*self.map, entry, path)? {
            self.slot_of.insert(entry.request_id, slot);
        }
        Ok(())
    }

    /// Stages one map operation ([`SubmissionEntry::map_op`]).
    pub fn stage_map_op(&mut self, id: u64, opcode: u16, map_id: u64) -> Result<(), StageError> {
        self.end.stage_map_op(&*self.map, id, opcode, map_id)
    }

    /// Makes the staged hints visible to the host, then rings the doorbell if
    /// the poller set NEED_WAKEUP. Returns whether it rang.
    pub fn publish(&mut self) -> bool {
        let (n, need) = self.end.publish(&*self.map);
        n > 0 && (need || self.always_doorbell) && self.ring()
    }

    fn ring(&mut self) -> bool {
        let Some(d) = &self.doorbell else {
            return false;
        };
        d.notify();
        self.doorbells_rung += 1;
        true
    }

    /// Consumes every available answer, calling `f` on each; frees the path
    /// slots of answered requests. Returns how many were consumed.
    pub fn reap(&mut self, mut f: impl FnMut(CompletionEntry)) -> u32 {
        let n = self.end.answers(&*self.map).unwrap_or(0);
        for i in 0..n {
            let Some(c) = self.end.answer(&*self.map, i) else {
                continue;
            };
            // Most hints carry their path inline: skip the lookup then.
            if !self.slot_of.is_empty() {
                if let Some(slot) = self.slot_of.remove(&c.request_id) {
                    self.end.free_slot(slot);
                }
            }
            f(c);
        }
        if self.end.release_answers(&*self.map, n) {
            self.ring();
        }
        n
    }

    /// Consumes every available event.
    pub fn reap_events(&mut self, mut f: impl FnMut(EventEntry)) -> u32 {
        let n = self.end.events(&*self.map).unwrap_or(0);
        (0..n)
            .filter_map(|i| self.end.event(&*self.map, i))
            .for_each(&mut f);
        if self.end.release_events(&*self.map, n) || (n > 0 && self.always_doorbell) {
            self.ring();
        }
        n
    }

    /// The host flags word as it is now.
    pub fn host_flags(&self) -> u32 {
        self.end.host_flags(&*self.map)
    }

    /// Whether the host cut this VM off, first time seen (see
    /// [`GuestEnd::cut_off_news`]).
    pub fn cut_off_news(&mut self) -> bool {
        self.end.cut_off_news(&*self.map)
    }

    /// Acknowledges the cut-off (the fake guest maps nothing).
    pub fn acknowledge_cut_off(&mut self) {
        if self.end.acknowledge_cut_off(&*self.map) {
            self.ring();
        }
    }

    /// Gives up on request `id` without its answer: its path slot, if any,
    /// is reclaimed once the host consumed the entry ([`GuestRing::reclaim`]).
    pub fn abandon(&mut self, id: u64) {
        if let Some(slot) = self.slot_of.remove(&id) {
            self.end.abandon_slot(slot);
        }
    }

    /// Frees abandoned path slots the host can no longer read; returns how
    /// many (0 on corrupt indices).
    pub fn reclaim(&mut self) -> u32 {
        self.end.reclaim_slots(&*self.map).unwrap_or(0)
    }

    /// Path slots taken and not yet freed.
    pub fn slots_in_use(&self) -> u32 {
        self.end.slots_in_use()
    }
}
