// SPDX-License-Identifier: GPL-2.0
//! The single-producer single-consumer ring algorithm, generic over how the
//! shared index words are reached.
//!
//! Like [`abi`](crate::abi) this file depends on `core` only and may be
//! compiled into the guest module (`#[path = "../protocol/src/spsc.rs"] mod
//! spsc;`); it uses nothing from the rest of the crate. It holds the index
//! arithmetic and the orderings of the ring protocol described in `abi.rs`, and
//! the NEED_WAKEUP handshake, so that the host, the guest and the loom model
//! tests all run the very same code. Entry contents are copied by the caller
//! between [`Producer::free`]/[`Producer::publish`] and
//! [`Consumer::available`]/[`Consumer::release`].

use core::sync::atomic::{AtomicU32, Ordering};

/// A `u32` in memory shared with the other side, accessed only atomically.
///
/// The host implements it over raw mappings, the guest over its BAR mapping,
/// the loom tests over loom's model atomics.
pub trait SharedU32 {
    /// Atomic load.
    fn load(&self, order: Ordering) -> u32;
    /// Atomic store.
    fn store(&self, val: u32, order: Ordering);
    /// Atomic bitwise or; returns the previous value.
    fn fetch_or(&self, val: u32, order: Ordering) -> u32;
    /// Atomic bitwise and; returns the previous value.
    fn fetch_and(&self, val: u32, order: Ordering) -> u32;
    /// A full (SeqCst) fence of the same memory model as the accesses.
    fn full_fence();
}

impl SharedU32 for AtomicU32 {
    #[inline]
    fn load(&self, order: Ordering) -> u32 {
        AtomicU32::load(self, order)
    }
    #[inline]
    fn store(&self, val: u32, order: Ordering) {
        AtomicU32::store(self, val, order)
    }
    #[inline]
    fn fetch_or(&self, val: u32, order: Ordering) -> u32 {
        AtomicU32::fetch_or(self, val, order)
    }
    #[inline]
    fn fetch_and(&self, val: u32, order: Ordering) -> u32 {
        AtomicU32::fetch_and(self, val, order)
    }
    #[inline]
    fn full_fence() {
        core::sync::atomic::fence(Ordering::SeqCst)
    }
}

/// The other side left an index that cannot be: `tail - head` (wrapping) is
/// larger than the capacity. Nothing may be read or written until it is sane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Corrupt {
    /// Head as seen (ours or theirs).
    pub head: u32,
    /// Tail as seen (ours or theirs).
    pub tail: u32,
}

/// The producer's private state for one ring: it owns `tail`.
///
/// # Invariants
/// `capacity` is a non-zero power of two; `tail - cached_head <= capacity`;
/// `free <= capacity - (tail - cached_head)`.
#[derive(Clone, Copy, Debug)]
pub struct Producer {
    tail: u32,
    cached_head: u32,
    capacity: u32,
    free: u32,
}

impl Producer {
    /// A producer starting at index `tail`, with the consumer assumed at `head`.
    /// Returns `None` if `capacity` is not a non-zero power of two or the
    /// indices are inconsistent.
    pub fn new(capacity: u32, head: u32, tail: u32) -> Option<Producer> {
        if capacity == 0 || !capacity.is_power_of_two() || tail.wrapping_sub(head) > capacity {
            return None;
        }
        // INVARIANT: checked just above.
        Some(Producer {
            tail,
            cached_head: head,
            capacity,
            free: 0,
        })
    }

    /// Our tail (the next index we will write).
    pub fn tail(&self) -> u32 {
        self.tail
    }

    /// Capacity in entries.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// How many slots may be written now. Loads the consumer's `head` (once,
    /// Acquire) only when the cached value shows fewer than `want` free slots.
    pub fn free<C: SharedU32>(&mut self, head: &C, want: u32) -> Result<u32, Corrupt> {
        let used = self.tail.wrapping_sub(self.cached_head);
        let cached_free = self.capacity - used;
        if cached_free >= want && cached_free > 0 {
            self.free = cached_free;
            return Ok(cached_free);
        }
        // Acquire: the consumer's reads of the slots it released happen before
        // our writes into them.
        let h = head.load(Ordering::Acquire);
        let used = self.tail.wrapping_sub(h);
        if used > self.capacity {
            self.free = 0;
            return Err(Corrupt {
                head: h,
                tail: self.tail,
            });
        }
        self.cached_head = h;
        self.free = self.capacity - used;
        Ok(self.free)
    }

    /// Ring slot (already masked) for the `i`-th entry after our tail.
    pub fn slot(&self, i: u32) -> u32 {
        self.tail.wrapping_add(i) & (self.capacity - 1)
    }

    /// Makes `n` written entries visible (Release store of `tail`). `n` is
    /// clamped to what the last [`Producer::free`] allowed. Returns the
    /// number published.
    pub fn publish<C: SharedU32>(&mut self, tail: &C, n: u32) -> u32 {
        let n = n.min(self.free);
        self.free -= n;
        self.tail = self.tail.wrapping_add(n);
        // Release: the entry writes happen before the consumer sees the tail.
        tail.store(self.tail, Ordering::Release);
        n
    }
}

/// The consumer's private state for one ring: it owns `head`.
///
/// # Invariants
/// `capacity` is a non-zero power of two; `avail <= capacity`.
#[derive(Clone, Copy, Debug)]
pub struct Consumer {
    head: u32,
    capacity: u32,
    avail: u32,
}

impl Consumer {
    /// A consumer starting at index `head`. Returns `None` if `capacity` is
    /// not a non-zero power of two.
    pub fn new(capacity: u32, head: u32) -> Option<Consumer> {
        if capacity == 0 || !capacity.is_power_of_two() {
            return None;
        }
        // INVARIANT: checked just above.
        Some(Consumer {
            head,
            capacity,
            avail: 0,
        })
    }

    /// Our head (the next index we will read).
    pub fn head(&self) -> u32 {
        self.head
    }

    /// Capacity in entries.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// How many entries may be read now. Loads the producer's `tail` exactly
    /// once (Acquire) and checks it against the capacity.
    pub fn available<C: SharedU32>(&mut self, tail: &C) -> Result<u32, Corrupt> {
        // Acquire: the producer's entry writes happen before our reads.
        let t = tail.load(Ordering::Acquire);
        let n = t.wrapping_sub(self.head);
        if n > self.capacity {
            self.avail = 0;
            return Err(Corrupt {
                head: self.head,
                tail: t,
            });
        }
        self.avail = n;
        Ok(n)
    }

    /// Whether [`Consumer::available`] would report entries, without
    /// changing what [`Consumer::release`] may release. A corrupt tail counts
    /// as no work.
    pub fn has_work<C: SharedU32>(&self, tail: &C) -> bool {
        let n = tail.load(Ordering::Acquire).wrapping_sub(self.head);
        n != 0 && n <= self.capacity
    }

    /// Ring slot (already masked) for the `i`-th entry after our head.
    pub fn slot(&self, i: u32) -> u32 {
        self.head.wrapping_add(i) & (self.capacity - 1)
    }

    /// Frees `n` entries that have been copied out (Release store of `head`).
    /// `n` is clamped to what the last [`Consumer::available`] reported.
    /// Returns the number released.
    pub fn release<C: SharedU32>(&mut self, head: &C, n: u32) -> u32 {
        let n = n.min(self.avail);
        self.avail -= n;
        self.head = self.head.wrapping_add(n);
        // Release: our reads of the slots happen before the producer reuses them.
        head.store(self.head, Ordering::Release);
        n
    }
}

/// Poller side, step 1 of parking: sets `bit` (NEED_WAKEUP) in `flags`.
/// Call it for every ring the poller serves, then [`park_fence`], then re-check
/// every ring; park only if none has work, else [`cancel_park`].
pub fn announce_park<C: SharedU32>(flags: &C, bit: u32) {
    flags.fetch_or(bit, Ordering::SeqCst);
}

/// Poller side, step 2 of parking: the full fence between setting
/// NEED_WAKEUP and re-reading the producer's index.
pub fn park_fence<C: SharedU32>() {
    C::full_fence();
}

/// Poller side: clears `bit` (NEED_WAKEUP) after waking up or when the
/// re-check found work.
pub fn cancel_park<C: SharedU32>(flags: &C, bit: u32) {
    flags.fetch_and(!bit, Ordering::Relaxed);
}

/// Producer side (the guest), after publishing work or freeing space: a full
/// fence, then whether the poller asked for a doorbell.
pub fn needs_doorbell<C: SharedU32>(flags: &C, bit: u32) -> bool {
    C::full_fence();
    flags.load(Ordering::Relaxed) & bit != 0
}
