//! Counters of rings and pollers. All relaxed: they are for humans and tests.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one ring. Updated once per poll round, not per entry.
#[derive(Debug, Default)]
pub struct RingStats {
    /// Submission entries consumed (every one is answered).
    pub hints: AtomicU64,
    /// Answers that were hits.
    pub hits: AtomicU64,
    /// Entries refused as malformed (answered with an error status).
    pub bad_entries: AtomicU64,
    /// Times an index of this ring was found corrupt (`tail - head` beyond the
    /// capacity); counted once per episode, the ring is ignored meanwhile.
    pub corrupt_indices: AtomicU64,
    /// Poll rounds in which hints waited but the completion ring was full.
    pub completion_full: AtomicU64,
    /// Doorbells received (eventfd counts drained by the poller).
    pub doorbells: AtomicU64,
    /// Interrupts raised in the guest (it said it waits: `GUEST_FLAG_WAITING`).
    pub interrupts: AtomicU64,
    /// Events written to the event ring.
    pub events_sent: AtomicU64,
    /// Events dropped because the pending queue overflowed.
    pub events_dropped: AtomicU64,
    /// Cut-offs the guest acknowledged (`GUEST_FLAG_CUT_OFF_ACK` seen).
    pub cut_off_acks: AtomicU64,
    /// Times the guest was seen attached to this ring (`guest_attached`).
    pub attaches: AtomicU64,
}

/// A plain copy of [`RingStats`].
#[allow(missing_docs)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingStatsSnapshot {
    pub hints: u64,
    pub hits: u64,
    pub bad_entries: u64,
    pub corrupt_indices: u64,
    pub completion_full: u64,
    pub doorbells: u64,
    pub interrupts: u64,
    pub events_sent: u64,
    pub events_dropped: u64,
    pub cut_off_acks: u64,
    pub attaches: u64,
}

impl RingStats {
    /// Copies every counter.
    pub fn snapshot(&self) -> RingStatsSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RingStatsSnapshot {
            hints: l(&self.hints),
            hits: l(&self.hits),
            bad_entries: l(&self.bad_entries),
            corrupt_indices: l(&self.corrupt_indices),
            completion_full: l(&self.completion_full),
            doorbells: l(&self.doorbells),
            interrupts: l(&self.interrupts),
            events_sent: l(&self.events_sent),
            events_dropped: l(&self.events_dropped),
            cut_off_acks: l(&self.cut_off_acks),
            attaches: l(&self.attaches),
        }
    }
}

/// What a poller thread is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum PollerState {
    /// Polling (work found recently, or spinning).
    Running = 0,
    /// Backing off: yielding or sleeping briefly between polls.
    BackingOff = 1,
    /// Parked with NEED_WAKEUP set, waiting for a doorbell.
    Parked = 2,
    /// The thread has exited.
    Stopped = 3,
}

/// Counters of one poller thread.
#[derive(Debug, Default)]
pub struct PollerStats {
    /// Linux thread id of the poller (for `/proc/self/task/<tid>/schedstat`).
    pub tid: AtomicU64,
    /// Current [`PollerState`] as `u64`.
    pub state: AtomicU64,
    /// Poll rounds over all rings.
    pub rounds: AtomicU64,
    /// Times the poller parked.
    pub parks: AtomicU64,
    /// Parks aborted because the re-check after setting NEED_WAKEUP found work.
    pub park_aborts: AtomicU64,
    /// Park timeouts after which a ring had work: a lost wake-up the timeout
    /// rescued. Must stay zero.
    pub lost_wakeups: AtomicU64,
    /// Rings currently served.
    pub rings: AtomicU64,
}

impl PollerStats {
    /// The current state.
    pub fn state(&self) -> PollerState {
        match self.state.load(Ordering::Relaxed) {
            0 => PollerState::Running,
            1 => PollerState::BackingOff,
            2 => PollerState::Parked,
            _ => PollerState::Stopped,
        }
    }
}
