//! What the loom model tests share: a ring index or flag word as a loom model
//! atomic, so that loom explores every interleaving of its accesses, and a
//! doorbell.

use std::sync::atomic::Ordering;

use loom::sync::atomic::AtomicU32;
use loom::sync::{Condvar, Mutex};
use vmdedup_protocol::spsc::SharedU32;

/// A shared `u32` in loom's model memory.
pub struct LoomU32(pub AtomicU32);

impl SharedU32 for LoomU32 {
    fn load(&self, order: Ordering) -> u32 {
        self.0.load(order)
    }
    fn store(&self, val: u32, order: Ordering) {
        self.0.store(val, order)
    }
    fn fetch_or(&self, val: u32, order: Ordering) -> u32 {
        self.0.fetch_or(val, order)
    }
    fn fetch_and(&self, val: u32, order: Ordering) -> u32 {
        self.0.fetch_and(val, order)
    }
    fn full_fence() {
        loom::sync::atomic::fence(Ordering::SeqCst)
    }
}

/// A doorbell: `ring` sets it, `wait` sleeps until it is set and clears it.
/// A wake-up the protocol loses leaves `wait` asleep forever, which loom
/// reports as a deadlock.
pub struct Bell {
    rung: Mutex<bool>,
    cv: Condvar,
}

impl Bell {
    /// Not rung.
    pub fn new() -> Self {
        Bell {
            rung: Mutex::new(false),
            cv: Condvar::new(),
        }
    }

    /// Rings it.
    pub fn ring(&self) {
        *self.rung.lock().unwrap() = true;
        self.cv.notify_one();
    }

    /// Sleeps until it was rung, then clears it.
    pub fn wait(&self) {
        let mut rung = self.rung.lock().unwrap();
        while !*rung {
            rung = self.cv.wait(rung).unwrap();
        }
        *rung = false;
    }
}
