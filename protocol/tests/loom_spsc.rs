//! loom model tests of the ring protocol in `spsc.rs`: entry hand-over under
//! acquire/release (loom flags a data race on the slot cells otherwise) and no
//! lost wake-up around NEED_WAKEUP and park (loom flags a deadlock otherwise).
//! They run under plain `cargo test`, with a bounded number of preemptions.

use std::sync::atomic::Ordering;

use loom::cell::UnsafeCell;
use loom::sync::atomic::AtomicU32;
use loom::sync::Arc;
use loom::thread;
use vmdedup_protocol::spsc::{self, Consumer, Producer, SharedU32};

mod common;
use common::{Bell, LoomU32};

const NEED_WAKEUP: u32 = 1;

/// The shared part of one ring plus the poller's flags word and a doorbell.
struct Shared {
    head: LoomU32,
    tail: LoomU32,
    flags: LoomU32,
    slots: Vec<UnsafeCell<u64>>,
    bell: Bell,
}

impl Shared {
    fn new(capacity: u32, start: u32) -> Arc<Shared> {
        Arc::new(Shared {
            head: LoomU32(AtomicU32::new(start)),
            tail: LoomU32(AtomicU32::new(start)),
            flags: LoomU32(AtomicU32::new(0)),
            slots: (0..capacity).map(|_| UnsafeCell::new(0)).collect(),
            bell: Bell::new(),
        })
    }
}

/// Writes a slot. loom tracks the cell and reports any access that is not
/// ordered by the ring protocol as a data race.
fn write_slot(cell: &UnsafeCell<u64>, v: u64) {
    // SAFETY: the ring protocol gives the producer exclusive access to a slot
    // between `free` and `publish`; loom checks that it does.
    cell.with_mut(|c| unsafe { *c = v })
}

/// Reads a slot (see [`write_slot`]).
fn read_slot(cell: &UnsafeCell<u64>) -> u64 {
    // SAFETY: the consumer owns a slot between `available` and `release`;
    // loom checks that it does.
    cell.with(|p| unsafe { *p })
}

fn builder() -> loom::model::Builder {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b
}

/// Produces `values` into the ring, yielding while it is full, and rings the
/// doorbell when the consumer asked for it (if `doorbell`).
fn produce(s: &Shared, values: &[u64], start: u32, doorbell: bool) {
    produce_bit(s, values, start, doorbell, NEED_WAKEUP)
}

/// [`produce`] with the consumer's flag `bit`.
fn produce_bit(s: &Shared, values: &[u64], start: u32, doorbell: bool, bit: u32) {
    let cap = s.slots.len() as u32;
    let mut p = Producer::new(cap, start, start).unwrap();
    for &v in values {
        while p.free(&s.head, 1).unwrap() == 0 {
            thread::yield_now();
        }
        let slot = p.slot(0) as usize;
        write_slot(&s.slots[slot], v);
        assert_eq!(p.publish(&s.tail, 1), 1);
        if doorbell && spsc::needs_doorbell(&s.flags, bit) {
            s.bell.ring();
        }
    }
}

#[test]
fn entries_are_handed_over_in_order_without_races() {
    builder().check(|| {
        // Start just below the wrap so the indices wrap inside the model.
        let start = u32::MAX;
        let s = Shared::new(2, start);
        let s2 = s.clone();
        let t = thread::spawn(move || produce(&s2, &[11, 22, 33], start, false));
        let mut c = Consumer::new(2, start).unwrap();
        let mut got = Vec::new();
        while got.len() < 3 {
            let n = c.available(&s.tail).unwrap();
            if n == 0 {
                thread::yield_now();
                continue;
            }
            for i in 0..n {
                let slot = c.slot(i) as usize;
                got.push(read_slot(&s.slots[slot]));
            }
            assert_eq!(c.release(&s.head, n), n);
        }
        t.join().unwrap();
        assert_eq!(got, vec![11, 22, 33]);
    });
}

/// The poller: consume `n` entries; when the ring is empty, park the way the
/// host poller does (announce, fence, re-check, sleep until the doorbell).
fn poll_and_park(s: &Shared, n: usize, start: u32) -> Vec<u64> {
    poll_and_park_bit(s, n, start, NEED_WAKEUP)
}

/// [`poll_and_park`] announcing `bit`.
fn poll_and_park_bit(s: &Shared, n: usize, start: u32, bit: u32) -> Vec<u64> {
    let mut c = Consumer::new(s.slots.len() as u32, start).unwrap();
    let mut got = Vec::new();
    while got.len() < n {
        let avail = c.available(&s.tail).unwrap();
        if avail > 0 {
            for i in 0..avail {
                got.push(read_slot(&s.slots[c.slot(i) as usize]));
            }
            c.release(&s.head, avail);
            continue;
        }
        spsc::announce_park(&s.flags, bit);
        spsc::park_fence::<LoomU32>();
        if c.has_work(&s.tail) {
            spsc::cancel_park(&s.flags, bit);
            continue;
        }
        s.bell.wait();
        spsc::cancel_park(&s.flags, bit);
    }
    got
}

#[test]
fn no_lost_interrupt_around_guest_waiting() {
    // The other direction (the "Guest wake-up" handshake of the ABI): the
    // guest consumes answers and sleeps with GUEST_FLAG_WAITING in its own
    // flags word; the host publishes answers, fences and raises the guest's
    // interrupt when the bit is set. The guest waits on the interrupt
    // only, never on a timer: a lost interrupt is a deadlock loom reports.
    use vmdedup_protocol::abi::GUEST_FLAG_WAITING;
    builder().check(|| {
        let s = Shared::new(2, 3);
        let s2 = s.clone();
        let host = thread::spawn(move || produce_bit(&s2, &[8, 9], 3, true, GUEST_FLAG_WAITING));
        let got = poll_and_park_bit(&s, 2, 3, GUEST_FLAG_WAITING);
        host.join().unwrap();
        assert_eq!(got, vec![8, 9]);
    });
}

#[test]
fn no_lost_wakeup_around_need_wakeup_and_park() {
    builder().check(|| {
        let s = Shared::new(2, 0);
        let s2 = s.clone();
        let guest = thread::spawn(move || produce(&s2, &[5, 6], 0, true));
        // A lost wake-up leaves the poller in `Bell::wait` forever: loom
        // reports that as a deadlock and fails the test.
        let got = poll_and_park(&s, 2, 0);
        guest.join().unwrap();
        assert_eq!(got, vec![5, 6]);
    });
}

#[test]
fn no_lost_wakeup_when_the_poller_waits_for_room() {
    // The host poller also parks when its output ring is full; the guest then
    // frees room and must ring if NEED_WAKEUP is set. Model: the "poller" is
    // the producer of a 1-entry ring waiting for room, the "guest" consumes.
    builder().check(|| {
        let s = Shared::new(1, 7);
        let s2 = s.clone();
        let guest = thread::spawn(move || {
            let mut c = Consumer::new(1, 7).unwrap();
            let mut got = Vec::new();
            while got.len() < 2 {
                let n = c.available(&s2.tail).unwrap();
                if n == 0 {
                    thread::yield_now();
                    continue;
                }
                got.push(read_slot(&s2.slots[c.slot(0) as usize]));
                c.release(&s2.head, 1);
                if spsc::needs_doorbell(&s2.flags, NEED_WAKEUP) {
                    s2.bell.ring();
                }
            }
            got
        });
        let mut p = Producer::new(1, 7, 7).unwrap();
        for v in [1u64, 2] {
            loop {
                if p.free(&s.head, 1).unwrap() > 0 {
                    break;
                }
                spsc::announce_park(&s.flags, NEED_WAKEUP);
                spsc::park_fence::<LoomU32>();
                if p.free(&s.head, 1).unwrap() > 0 {
                    spsc::cancel_park(&s.flags, NEED_WAKEUP);
                    break;
                }
                s.bell.wait();
                spsc::cancel_park(&s.flags, NEED_WAKEUP);
            }
            write_slot(&s.slots[p.slot(0) as usize], v);
            p.publish(&s.tail, 1);
        }
        assert_eq!(guest.join().unwrap(), vec![1, 2]);
    });
}

#[test]
fn the_model_catches_a_missing_fence() {
    // Negative control: the same handshake without the full fences (flag set
    // with a plain Release store, guest reads it without fencing) can lose a
    // wake-up. loom must find that, or the tests above prove nothing.
    let r = std::panic::catch_unwind(|| {
        builder().check(|| {
            let s = Shared::new(2, 0);
            let s2 = s.clone();
            let guest = thread::spawn(move || {
                let mut p = Producer::new(2, 0, 0).unwrap();
                p.free(&s2.head, 1).unwrap();
                write_slot(&s2.slots[p.slot(0) as usize], 9);
                p.publish(&s2.tail, 1);
                if s2.flags.load(Ordering::Acquire) & NEED_WAKEUP != 0 {
                    s2.bell.ring();
                }
            });
            let mut c = Consumer::new(2, 0).unwrap();
            loop {
                let n = c.available(&s.tail).unwrap();
                if n > 0 {
                    c.release(&s.head, n);
                    break;
                }
                s.flags.store(NEED_WAKEUP, Ordering::Release);
                if c.has_work(&s.tail) {
                    continue;
                }
                s.bell.wait();
            }
            guest.join().unwrap();
        });
    });
    assert!(
        r.is_err(),
        "loom did not find the lost wake-up of the unfenced handshake"
    );
}
