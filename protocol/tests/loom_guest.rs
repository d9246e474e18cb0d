//! loom model tests of the guest end in `guest.rs`, the code the guest module
//! runs: hints (inline and in a path slot) handed to a host consumer and
//! answered back, across an index wrap, with no data race on entries or path
//! slots (loom tracks every byte of the model region), and no lost wake-up
//! around NEED_WAKEUP, neither when the poller waits for hints nor when it
//! waits for completion room. They run under plain `cargo test`, with a
//! bounded number of preemptions.

use loom::cell::UnsafeCell;
use loom::sync::atomic::AtomicU32;
use loom::sync::Arc;
use loom::thread;
use vmdedup_protocol::abi::{
    prefix_off, ring_off, AnswerStatus, CompletionEntry, RingLayout, RingSizes, SubmissionEntry,
    GUEST_FLAG_CUT_OFF_ACK, HINT_FLAG_PATH_IN_SLOT, HOST_FLAG_CUT_OFF, HOST_FLAG_NEED_WAKEUP,
    RING_HEADER_SIZE, RING_MAGIC, RING_VERSION, SQE_INLINE_PATH_MAX, SQE_INLINE_PATH_OFF,
};
use vmdedup_protocol::guest::{GuestEnd, SharedRegion, StageError};
use vmdedup_protocol::spsc::{self, Consumer, Producer};

mod common;
use common::{Bell, LoomU32};

const CHUNK: usize = 64;
/// Header, then each ring and the path slots on their own 4 KiB page.
const REGION: usize = 5 * 4096;

/// A ring region in model memory: bytes in 64-byte cells (loom reports any
/// access to a cell that the ring protocol does not order), the index and
/// flag words as model atomics, and a doorbell.
struct LoomRegion {
    cells: Vec<UnsafeCell<[u8; CHUNK]>>,
    words: Vec<(usize, LoomU32)>,
    bell: Bell,
}

impl LoomRegion {
    /// A region laid out the way the host does it, every index at `start`.
    fn new(sizes: RingSizes, start: u32) -> (Arc<LoomRegion>, RingLayout) {
        let layout = RingLayout::compute(REGION as u64, &sizes).unwrap();
        let mut bytes = vec![0u8; REGION];
        let mut put = |off: usize, b: &[u8]| bytes[off..off + b.len()].copy_from_slice(b);
        put(prefix_off::MAGIC, &RING_MAGIC.to_le_bytes());
        put(prefix_off::VERSION, &RING_VERSION.to_le_bytes());
        put(prefix_off::HEADER_SIZE, &RING_HEADER_SIZE.to_le_bytes());
        put(prefix_off::REGION_SIZE, &(REGION as u64).to_le_bytes());
        put(prefix_off::GENERATION, &3u64.to_le_bytes());
        put(ring_off::HOST_FEATURES, &layout.to_le_bytes());
        let words = [
            ring_off::SQ_HEAD,
            ring_off::SQ_TAIL,
            ring_off::CQ_HEAD,
            ring_off::CQ_TAIL,
            ring_off::EQ_HEAD,
            ring_off::EQ_TAIL,
        ]
        .into_iter()
        .map(|o| (o, LoomU32(AtomicU32::new(start))))
        .chain([
            (ring_off::HOST_FLAGS, LoomU32(AtomicU32::new(0))),
            (ring_off::GUEST_FLAGS, LoomU32(AtomicU32::new(0))),
        ])
        .collect();
        let cells = bytes
            .chunks_exact(CHUNK)
            .map(|c| UnsafeCell::new(c.try_into().unwrap()))
            .collect();
        let r = LoomRegion {
            cells,
            words,
            bell: Bell::new(),
        };
        (Arc::new(r), layout)
    }

    fn w(&self, off: usize) -> &LoomU32 {
        self.word(off).unwrap()
    }
}

impl SharedRegion for LoomRegion {
    type Word = LoomU32;

    fn size(&self) -> usize {
        REGION
    }

    fn read_bytes(&self, off: usize, out: &mut [u8]) -> bool {
        if off.checked_add(out.len()).is_none_or(|e| e > REGION) {
            return false;
        }
        let mut done = 0;
        while done < out.len() {
            let (cell, at) = ((off + done) / CHUNK, (off + done) % CHUNK);
            let n = (CHUNK - at).min(out.len() - done);
            // SAFETY: the pointer is to a live cell; loom checks that no
            // write to this cell races with the read.
            self.cells[cell]
                .with(|c| out[done..done + n].copy_from_slice(unsafe { &(&*c)[at..at + n] }));
            done += n;
        }
        true
    }

    fn write_bytes(&self, off: usize, data: &[u8]) -> bool {
        if off.checked_add(data.len()).is_none_or(|e| e > REGION) {
            return false;
        }
        let mut done = 0;
        while done < data.len() {
            let (cell, at) = ((off + done) / CHUNK, (off + done) % CHUNK);
            let n = (CHUNK - at).min(data.len() - done);
            // SAFETY: the pointer is to a live cell; loom checks that this
            // write races with no other access to the cell.
            self.cells[cell].with_mut(|c| unsafe {
                (&mut *c)[at..at + n].copy_from_slice(&data[done..done + n])
            });
            done += n;
        }
        true
    }

    fn word(&self, off: usize) -> Option<&LoomU32> {
        self.words.iter().find(|(o, _)| *o == off).map(|(_, w)| w)
    }
}

fn builder() -> loom::model::Builder {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(2);
    b
}

fn path_of(id: u64) -> Vec<u8> {
    // Hint 1 is long enough for a path slot, the others are inline.
    let len = if id == 1 {
        SQE_INLINE_PATH_MAX as usize + 8
    } else {
        8
    };
    vec![b'a' + id as u8; len]
}

/// The host's part: serves `n` hints from the submission ring, checks each
/// hint's path, answers it with its id. With `park`, parks like the host
/// poller (announce, fence, re-check, wait for the doorbell) when there is no
/// work or no completion room; otherwise it yields.
fn host(r: &LoomRegion, l: &RingLayout, start: u32, n: usize, park: bool) {
    let mut sq = Consumer::new(l.sq.entries, start).unwrap();
    let mut cq = Producer::new(l.cq.entries, start, start).unwrap();
    let flags = r.w(ring_off::HOST_FLAGS);
    let mut served = 0;
    while served < n {
        let avail = sq.available(r.w(ring_off::SQ_TAIL)).unwrap();
        if avail == 0 {
            if !park {
                thread::yield_now();
                continue;
            }
            spsc::announce_park(flags, HOST_FLAG_NEED_WAKEUP);
            spsc::park_fence::<LoomU32>();
            if !sq.has_work(r.w(ring_off::SQ_TAIL)) {
                r.bell.wait();
            }
            spsc::cancel_park(flags, HOST_FLAG_NEED_WAKEUP);
            continue;
        }
        for i in 0..avail {
            let sqe = l.sqe_offset(sq.slot(i)) as usize;
            let mut b = [0u8; SQE_INLINE_PATH_OFF as usize];
            assert!(r.read_bytes(sqe, &mut b));
            let e = SubmissionEntry::from_le_bytes(&b);
            let at = if e.flags & HINT_FLAG_PATH_IN_SLOT != 0 {
                l.path_slot_offset(e.path_slot).unwrap() as usize
            } else {
                sqe + SQE_INLINE_PATH_OFF as usize
            };
            let mut path = vec![0u8; e.path_len as usize];
            assert!(r.read_bytes(at, &mut path));
            assert_eq!(path, path_of(e.request_id));
            loop {
                if cq.free(r.w(ring_off::CQ_HEAD), 1).unwrap() > 0 {
                    break;
                }
                if !park {
                    thread::yield_now();
                    continue;
                }
                spsc::announce_park(flags, HOST_FLAG_NEED_WAKEUP);
                spsc::park_fence::<LoomU32>();
                if cq.free(r.w(ring_off::CQ_HEAD), 1).unwrap() == 0 {
                    r.bell.wait();
                }
                spsc::cancel_park(flags, HOST_FLAG_NEED_WAKEUP);
            }
            let answer = CompletionEntry::miss(e.request_id, AnswerStatus::Hit);
            let cqe = l.cqe_offset(cq.slot(0)) as usize;
            assert!(r.write_bytes(cqe, &answer.to_le_bytes()));
            cq.publish(r.w(ring_off::CQ_TAIL), 1);
            served += 1;
        }
        sq.release(r.w(ring_off::SQ_HEAD), avail);
    }
}

/// The guest's part: reaps every available answer, frees the path slot of
/// hint 1, rings when the guest end says so. Returns the ids read.
fn reap(g: &mut GuestEnd, r: &LoomRegion, slot_of_1: &mut Option<u32>, bell: bool) -> Vec<u64> {
    let n = g.answers(r).unwrap();
    let ids: Vec<u64> = (0..n).map(|i| g.answer(r, i).unwrap().request_id).collect();
    if ids.contains(&1) {
        if let Some(s) = slot_of_1.take() {
            g.free_slot(s);
        }
    }
    if g.release_answers(r, n) && bell {
        r.bell.ring();
    }
    ids
}

/// Sends hints `ids`, `batch` staged per publish, ringing when told (after
/// freeing answers only with `bell_on_reap`); then reaps until every answer
/// is in. Returns the answered ids in order.
fn guest(r: &LoomRegion, ids: &[u64], batch: usize, bell_on_reap: bool) -> Vec<u64> {
    let mut g = GuestEnd::attach(r).unwrap();
    assert_eq!(g.generation(), 3);
    let mut got = Vec::new();
    let mut slot_of_1 = None;
    for chunk in ids.chunks(batch) {
        for &id in chunk {
            let e = SubmissionEntry {
                request_id: id,
                ..Default::default()
            };
            loop {
                match g.stage_hint(r, e, &path_of(id)) {
                    Ok(slot) => {
                        if id == 1 {
                            slot_of_1 = slot;
                            assert!(slot.is_some());
                        }
                        break;
                    }
                    Err(StageError::Full | StageError::NoSlot) => {
                        got.extend(reap(&mut g, r, &mut slot_of_1, bell_on_reap));
                        thread::yield_now();
                    }
                    Err(e) => panic!("stage: {e:?}"),
                }
            }
        }
        let (n, doorbell) = g.publish(r);
        assert_eq!(n as usize, chunk.len());
        if doorbell {
            r.bell.ring();
        }
    }
    while got.len() < ids.len() {
        got.extend(reap(&mut g, r, &mut slot_of_1, bell_on_reap));
        thread::yield_now();
    }
    assert_eq!(g.slots_in_use(), 0);
    got
}

/// Submission and completion rings of `entries` each, one event entry,
/// `path_slots` path slots: as small as each model can be.
fn sizes(entries: u32, path_slots: u32) -> RingSizes {
    RingSizes {
        sq_entries: entries,
        cq_entries: entries,
        eq_entries: 1,
        path_slots,
    }
}

/// One run of the model: a host thread answers `ids.len()` hints (parking
/// when idle if `park`) while the guest sends `ids` one at a time (ringing
/// after reaping if `bell_on_reap`), on rings whose indices start at
/// `start`; returns what the guest reaped.
fn exchange(sizes: RingSizes, start: u32, ids: &[u64], park: bool, bell_on_reap: bool) -> Vec<u64> {
    let (r, l) = LoomRegion::new(sizes, start);
    let r2 = r.clone();
    let n = ids.len();
    let h = thread::spawn(move || host(&r2, &l, start, n, park));
    let got = guest(&r, ids, 1, bell_on_reap);
    h.join().unwrap();
    got
}

#[test]
fn hints_and_answers_wrap_without_races() {
    builder().check(|| {
        let start = u32::MAX - 1;
        assert_eq!(
            exchange(sizes(2, 1), start, &[1, 2, 3], false, true),
            [1, 2, 3]
        );
    });
}

#[test]
fn no_lost_wakeup_for_a_parked_poller() {
    builder().check(|| {
        // A lost wake-up leaves the poller in `Bell::wait` forever: loom
        // reports that as a deadlock and fails the test.
        assert_eq!(exchange(sizes(2, 0), 0, &[2, 3], true, true), [2, 3]);
    });
}

#[test]
fn no_lost_wakeup_when_the_poller_waits_for_completion_room() {
    builder().check(|| {
        // The poller answers the first hint, then may park for completion
        // room with the second one taken, until the guest frees the room and
        // rings.
        assert_eq!(exchange(sizes(1, 0), 5, &[2, 3], true, true), [2, 3]);
    });
}

#[test]
fn the_model_catches_a_missing_doorbell_after_reaping() {
    // Negative control: a guest that ignores what `release_answers` says
    // leaves the poller parked for completion room and itself waiting for
    // the last answer forever (loom reports the endless wait as too many
    // branches). loom must find that, or the test above proves nothing
    // about that doorbell decision.
    let r = std::panic::catch_unwind(|| {
        builder().check(|| {
            exchange(sizes(1, 0), 5, &[2, 3], true, false);
        });
    });
    assert!(
        r.is_err(),
        "loom did not find the lost wake-up of a guest that never rings after reaping"
    );
}

#[test]
fn an_abandoned_path_slot_is_written_again_only_after_the_host_read_it() {
    // One path slot: the request that took it times out unanswered; the
    // guest reclaims the slot and writes the next long path into it. Loom
    // reports a race if that write is not ordered after the host's read.
    builder().check(|| {
        let (r, l) = LoomRegion::new(sizes(2, 1), u32::MAX);
        let h = {
            let r = Arc::clone(&r);
            thread::spawn(move || host(&r, &l, u32::MAX, 2, false))
        };
        let mut g = GuestEnd::attach(&*r).unwrap();
        for round in 0..2 {
            let e = SubmissionEntry {
                request_id: 1,
                ..Default::default()
            };
            let slot = g.stage_hint(&*r, e, &path_of(1)).unwrap();
            assert_eq!(slot, Some(0));
            g.publish(&*r);
            if round == 0 {
                // No answer in time: given up on, the slot still busy.
                g.abandon_slot(0);
                while g.slots_in_use() > 0 {
                    g.reclaim_slots(&*r).unwrap();
                    thread::yield_now();
                }
            }
        }
        h.join().unwrap();
    });
}

#[test]
fn a_cut_off_acknowledgement_orders_the_guests_last_use_before_reuse() {
    // The guest reads a "frame" (a pool page it maps) until it sees the
    // cut-off flag, then acknowledges; the host reuses the frame once it
    // sees the acknowledgement. Loom reports a race if the acknowledgement
    // does not order the guest's last read before the host's write.
    builder().check(|| {
        let (r, l) = LoomRegion::new(sizes(2, 1), 0);
        let frame = l.path_slot_offset(0).unwrap() as usize;
        let h = {
            let r = Arc::clone(&r);
            thread::spawn(move || {
                r.w(ring_off::HOST_FLAGS)
                    .0
                    .fetch_or(HOST_FLAG_CUT_OFF, std::sync::atomic::Ordering::Release);
                while r
                    .w(ring_off::GUEST_FLAGS)
                    .0
                    .load(std::sync::atomic::Ordering::Acquire)
                    & GUEST_FLAG_CUT_OFF_ACK
                    == 0
                {
                    thread::yield_now();
                }
                assert!(r.write_bytes(frame, &[0xa5; 16]));
            })
        };
        let mut g = GuestEnd::attach(&*r).unwrap();
        let mut page = [0u8; 16];
        loop {
            assert!(r.read_bytes(frame, &mut page));
            if g.cut_off_news(&*r) {
                break;
            }
            thread::yield_now();
        }
        assert!(g.is_cut_off());
        g.acknowledge_cut_off(&*r);
        h.join().unwrap();
    });
}
