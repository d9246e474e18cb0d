//! Property tests of the SPSC index logic against a model queue, with indices
//! starting anywhere (notably just below `u32::MAX`, so they wrap).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};

use proptest::prelude::*;
use vmdedup_protocol::spsc::{Consumer, Corrupt, Producer, SharedU32};

#[derive(Clone, Debug)]
enum Op {
    Produce(u32),
    Consume(u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u32..40).prop_map(Op::Produce),
        (0u32..40).prop_map(Op::Consume)
    ]
}

fn start_index() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        (0u32..64).prop_map(|d| u32::MAX - d),
        any::<u32>()
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn interleavings_match_a_model_queue(
        log2_cap in 0u32..6,
        start in start_index(),
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        let cap = 1u32 << log2_cap;
        let head = AtomicU32::new(start);
        let tail = AtomicU32::new(start);
        let mut slots = vec![0u64; cap as usize];
        let mut p = Producer::new(cap, start, start).unwrap();
        let mut c = Consumer::new(cap, start).unwrap();
        let mut model: VecDeque<u64> = VecDeque::new();
        let mut next = 1u64;
        for op in ops {
            match op {
                Op::Produce(n) => {
                    // The producer may answer from its cached head: a lower
                    // bound that still satisfies the request when possible.
                    let free = p.free(&head, n).unwrap();
                    let real = cap - model.len() as u32;
                    prop_assert!(free <= real);
                    prop_assert!(free >= n.min(real));
                    let k = n.min(free);
                    for i in 0..k {
                        slots[p.slot(i) as usize] = next;
                        model.push_back(next);
                        next += 1;
                    }
                    // Publishing more than was free is clamped.
                    prop_assert_eq!(p.publish(&tail, n), k);
                }
                Op::Consume(n) => {
                    let avail = c.available(&tail).unwrap();
                    prop_assert_eq!(avail as usize, model.len());
                    let k = n.min(avail);
                    for i in 0..k {
                        prop_assert_eq!(Some(slots[c.slot(i) as usize]), model.pop_front());
                    }
                    prop_assert_eq!(c.release(&head, n), k);
                }
            }
            let h = head.load(Ordering::Relaxed);
            let t = tail.load(Ordering::Relaxed);
            prop_assert_eq!(t.wrapping_sub(h) as usize, model.len());
            prop_assert!(t.wrapping_sub(h) <= cap);
            prop_assert_eq!(p.tail(), t);
            prop_assert_eq!(c.head(), h);
        }
    }

    #[test]
    fn a_foreign_index_beyond_capacity_is_refused(
        log2_cap in 0u32..16,  // cap + 1 must not overflow
        start in start_index(),
        foreign in any::<u32>(),
    ) {
        let cap = 1u32 << log2_cap;
        let word = AtomicU32::new(foreign);
        let mut c = Consumer::new(cap, start).unwrap();
        let expect_ok = foreign.wrapping_sub(start) <= cap;
        match c.available(&word) {
            Ok(n) => {
                prop_assert!(expect_ok);
                prop_assert_eq!(n, foreign.wrapping_sub(start));
                prop_assert_eq!(c.has_work(&word), n > 0);
            }
            Err(Corrupt { head, tail }) => {
                prop_assert!(!expect_ok);
                prop_assert_eq!((head, tail), (start, foreign));
                prop_assert!(!c.has_work(&word));
                // Nothing may be released after a refused index.
                prop_assert_eq!(c.release(&AtomicU32::new(0), 5), 0);
            }
        }
        let mut p = Producer::new(cap, start, start).unwrap();
        let expect_ok = start.wrapping_sub(foreign) <= cap;
        // Ask for more than the capacity so the cached head cannot answer.
        match p.free(&word, cap + 1) {
            Ok(free) => {
                prop_assert!(expect_ok);
                prop_assert_eq!(free, cap - start.wrapping_sub(foreign));
            }
            Err(_) => {
                prop_assert!(!expect_ok);
                prop_assert_eq!(p.publish(&AtomicU32::new(0), 3), 0);
            }
        }
    }
}

#[test]
fn constructors_refuse_bad_capacities() {
    assert!(Producer::new(0, 0, 0).is_none());
    assert!(Producer::new(3, 0, 0).is_none());
    assert!(Producer::new(4, 0, 5).is_none());
    assert!(Producer::new(4, u32::MAX, 3).is_some());
    assert!(Consumer::new(6, 0).is_none());
    assert!(Consumer::new(1 << 31, 0).is_some());
}

#[test]
fn the_doorbell_check_reads_the_flag() {
    let flags = AtomicU32::new(0);
    assert!(!vmdedup_protocol::spsc::needs_doorbell(&flags, 1));
    vmdedup_protocol::spsc::announce_park(&flags, 1);
    assert!(vmdedup_protocol::spsc::needs_doorbell(&flags, 1));
    assert_eq!(SharedU32::load(&flags, Ordering::Relaxed), 1);
    vmdedup_protocol::spsc::cancel_park(&flags, 1);
    assert!(!vmdedup_protocol::spsc::needs_doorbell(&flags, 1));
}
