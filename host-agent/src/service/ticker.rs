//! Revocation deadlines: a VM that does not acknowledge a revocation within
//! the store's `ack_timeout_ms` is cut off at the next tick.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{lock, HintService};

impl HintService {
    /// Enforces revocation deadlines (call a few times per `ack_timeout`).
    /// Returns whether a deadline is still running (see
    /// [`PageStore::tick`](crate::store::PageStore::tick)).
    pub fn tick(&self) -> bool {
        let now = self.now_ms();
        self.tick_at(now)
    }

    /// [`tick`](Self::tick) with an explicit clock (tests).
    pub fn tick_at(&self, now_ms: u64) -> bool {
        self.with_store(|s| s.tick(now_ms))
    }

    /// Starts a thread that calls [`tick`](Self::tick) every `period` while
    /// a deadline runs, and every `idle` otherwise, until
    /// [`shutdown`](Self::shutdown) (which wakes it). A revocation that
    /// starts while it waits idle keeps its deadline, and is enforced at
    /// most `idle` after it: an idle agent wakes `1 / idle` times a second
    /// for this, not `1 / period`.
    pub fn spawn_ticker(&self, period: Duration, idle: Duration) {
        let me = self.clone();
        let t = std::thread::Builder::new()
            .name("vmdedup-tick".into())
            .spawn(move || {
                let mut wait = period;
                while !me.shared.stop.load(Ordering::Relaxed) {
                    std::thread::park_timeout(wait);
                    if me.shared.stop.load(Ordering::Relaxed) {
                        break;
                    }
                    wait = if me.tick() { period } else { idle.max(period) };
                }
            })
            .expect("spawning the tick thread");
        lock(&self.threads).push(t);
    }
}
