//! Revocation deadlines: a VM that does not acknowledge a revocation within
//! the store's `ack_timeout_ms` is cut off at the next tick.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{lock, HintService};

impl HintService {
    /// Enforces revocation deadlines (call a few times per `ack_timeout`).
    pub fn tick(&self) {
        let now = self.now_ms();
        self.tick_at(now);
    }

    /// [`tick`](Self::tick) with an explicit clock (tests).
    pub fn tick_at(&self, now_ms: u64) {
        self.with_store(|s| s.tick(now_ms));
    }

    /// Starts a thread that calls [`tick`](Self::tick) every `period` until
    /// [`shutdown`](Self::shutdown).
    pub fn spawn_ticker(&self, period: Duration) {
        let me = self.clone();
        let t = std::thread::Builder::new()
            .name("vmdedup-tick".into())
            .spawn(move || {
                while !me.shared.stop.load(Ordering::Relaxed) {
                    std::thread::sleep(period);
                    me.tick();
                }
            })
            .expect("spawning the tick thread");
        lock(&self.threads).push(t);
    }
}
