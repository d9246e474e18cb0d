//! The host end of the ring driven in-process: answers, malformed input,
//! corrupt indices, back-pressure, fairness, events, and the pollers'
//! park/doorbell behaviour.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use vmdedup_host_agent::ring::*;
use vmdedup_protocol::abi::*;
use vmdedup_protocol::guest::StageError;

fn word(m: &SharedMapping, off: usize) -> &AtomicU32 {
    m.word(off).unwrap()
}

#[test]
fn hints_are_answered_inline_in_slots_and_refused_when_bad() {
    // Indices start just below u32::MAX, so they wrap during the test.
    let (mut host, mut guest) = ring_pair(1 << 20, None, u32::MAX - 2, 3);
    let id = host.id();
    let short = path_of(40, 1);
    let long = path_of(3000, 2);
    let max = path_of(MAX_PATH_LEN as usize, 3);
    let too_long = path_of(MAX_PATH_LEN as usize + 1, 4);
    guest.stage(hint(1, 0, 11, 100), &short).unwrap();
    guest.stage(hint(2, 0, 12, 200), &long).unwrap();
    guest.stage(hint(3, 0, 13, 300), &max).unwrap();
    guest.stage(hint(4, 0, 14, 400), &too_long).unwrap();
    guest
        .stage(hint(5, 0, 15, 500), b"usr/../../etc/shadow")
        .unwrap();
    guest.stage(hint(6, FORBIDDEN_NS, 16, 600), &short).unwrap();
    guest.stage(hint(7, 0, 17, 700), b"/etc/passwd").unwrap();
    assert!(
        !guest.publish(),
        "no doorbell while the poller is not parked"
    );
    assert_eq!(host.poll_round(&echo, 64), 7);
    let mut got = Vec::new();
    assert_eq!(guest.reap(|c| got.push(c)), 7);
    check_echo(id, &got[0], 1, &short, 11, 100);
    check_echo(id, &got[1], 2, &long, 12, 200);
    check_echo(id, &got[2], 3, &max, 13, 300);
    let status = |i: usize| AnswerStatus::from_u16(got[i].status);
    assert_eq!(status(3), Some(AnswerStatus::PathTooLong));
    assert_eq!(status(4), Some(AnswerStatus::BadRequest));
    assert_eq!(status(5), Some(AnswerStatus::NamespaceNotAllowed));
    assert_eq!(status(6), Some(AnswerStatus::BadRequest));
    assert_eq!(
        got.iter().map(|c| c.request_id).collect::<Vec<_>>(),
        (1..=7).collect::<Vec<_>>()
    );
    let st = host.shared().stats.snapshot();
    assert_eq!((st.hints, st.hits, st.bad_entries), (7, 3, 3));
    // The slots were given back: many more long paths fit.
    for i in 0..200u64 {
        guest
            .stage(hint(100 + i, 0, 1, 1), &long)
            .or_else(|_| {
                host.poll_round(&echo, 64);
                guest.reap(|c| assert_eq!(c.status, 0));
                guest.stage(hint(100 + i, 0, 1, 1), &long)
            })
            .unwrap();
        guest.publish();
    }
}

#[test]
fn malformed_entries_get_error_answers_and_are_counted() {
    let (mut host, mut guest) = ring_pair(64 << 10, None, 0, 1);
    let m = Arc::clone(host.mapping());
    let l = *host.layout();
    let good = hint(1, 0, 0, 0);
    let mut entries = Vec::new();
    let mut e = good;
    e.opcode = 99;
    entries.push((e, AnswerStatus::Unsupported));
    let mut e = good;
    e.opcode = OP_HINT;
    e.path_len = 3;
    e.reserved0 = 1;
    entries.push((e, AnswerStatus::BadRequest));
    let mut e = good;
    e.opcode = OP_HINT;
    e.path_len = 300;
    e.flags = HINT_FLAG_PATH_IN_SLOT;
    e.path_slot = l.slots.count;
    entries.push((e, AnswerStatus::BadRequest));
    let mut e = good;
    e.opcode = OP_HINT;
    e.path_len = 0;
    entries.push((e, AnswerStatus::BadRequest));
    let mut e = good;
    e.opcode = OP_HINT;
    e.path_len = 4; // inline bytes are zero: a NUL in the path
    entries.push((e, AnswerStatus::BadRequest));
    for (i, (e, _)) in entries.iter().enumerate() {
        let mut e = *e;
        e.request_id = 1000 + i as u64;
        let off = l.sqe_offset(i as u32) as usize;
        m.zero(off, SQE_SIZE as usize);
        assert!(m.write_bytes(off, &e.to_le_bytes()));
    }
    word(&m, ring_off::SQ_TAIL).store(entries.len() as u32, Ordering::Release);
    assert_eq!(host.poll_round(&echo, 64), entries.len() as u32);
    let mut got = Vec::new();
    guest.reap(|c| got.push(c));
    assert_eq!(got.len(), entries.len());
    for (i, (c, (_, want))) in got.iter().zip(&entries).enumerate() {
        assert_eq!(c.request_id, 1000 + i as u64);
        assert_eq!(AnswerStatus::from_u16(c.status), Some(*want), "entry {i}");
    }
    assert_eq!(
        host.shared().stats.snapshot().bad_entries,
        entries.len() as u64
    );
}

#[test]
fn corrupt_indices_are_counted_once_and_ignored_until_sane() {
    let sizes = RingSizes {
        sq_entries: 8,
        cq_entries: 8,
        eq_entries: 4,
        path_slots: 1,
    };
    let (mut host, mut guest) = ring_pair(64 << 10, Some(sizes), 5, 1);
    let m = Arc::clone(host.mapping());
    let cap = host.layout().sq.entries;
    for bogus in [5 + cap + 1, 4, u32::MAX, 5 + (1 << 31)] {
        word(&m, ring_off::SQ_TAIL).store(bogus, Ordering::Release);
        for _ in 0..10 {
            assert_eq!(host.poll_round(&echo, 64), 0);
        }
        assert!(!host.has_work());
    }
    assert_eq!(host.shared().stats.snapshot().corrupt_indices, 1);
    // A sane tail again: served as usual.
    word(&m, ring_off::SQ_TAIL).store(5, Ordering::Release);
    guest.stage(hint(1, 0, 0, 0), b"a").unwrap();
    guest.publish();
    assert_eq!(host.poll_round(&echo, 64), 1);
    // A corrupt completion head (guest-written): once the host needs to look
    // at it (its cached copy shows too little room), it answers nothing.
    word(&m, ring_off::CQ_HEAD).store(12345, Ordering::Release);
    for i in 0..cap as u64 {
        guest.stage(hint(2 + i, 0, 0, 0), b"b").unwrap();
    }
    guest.publish();
    for _ in 0..10 {
        assert_eq!(host.poll_round(&echo, 64), 0);
    }
    assert_eq!(host.shared().stats.snapshot().corrupt_indices, 2);
    assert_eq!(host.shared().stats.snapshot().hints, 1);
}

#[test]
fn a_full_completion_ring_holds_hints_back() {
    let sizes = RingSizes {
        sq_entries: 8,
        cq_entries: 8,
        eq_entries: 4,
        path_slots: 1,
    };
    let (mut host, mut guest) = ring_pair(64 << 10, Some(sizes), u32::MAX - 5, 1);
    for i in 0..8 {
        guest.stage(hint(i, 0, 0, 0), b"x").unwrap();
    }
    assert_eq!(guest.stage(hint(8, 0, 0, 0), b"x"), Err(StageError::Full));
    guest.publish();
    assert_eq!(host.poll_round(&echo, 64), 8);
    for i in 8..16 {
        guest.stage(hint(i, 0, 0, 0), b"x").unwrap();
    }
    guest.publish();
    assert_eq!(host.poll_round(&echo, 64), 0, "no room for answers");
    assert!(!host.has_work());
    assert!(host.shared().stats.snapshot().completion_full >= 1);
    let mut ids = Vec::new();
    guest.reap(|c| ids.push(c.request_id));
    assert!(host.has_work());
    assert_eq!(host.poll_round(&echo, 3), 3, "batch bound");
    assert_eq!(host.poll_round(&echo, 64), 5);
    guest.reap(|c| ids.push(c.request_id));
    assert_eq!(ids, (0..16).collect::<Vec<_>>());
}

#[test]
fn a_flooding_ring_gets_one_batch_per_round_like_the_others() {
    let sizes = RingSizes {
        sq_entries: 64,
        cq_entries: 64,
        eq_entries: 4,
        path_slots: 0,
    };
    let (flood, mut fg) = ring_pair(64 << 10, Some(sizes), 0, 1);
    let (quiet, mut qg) = ring_pair(64 << 10, Some(sizes), 0, 2);
    for i in 0..64 {
        fg.stage(hint(i, 0, 0, 0), b"f").unwrap();
    }
    fg.publish();
    for i in 0..4 {
        qg.stage(hint(i, 0, 0, 0), b"q").unwrap();
    }
    qg.publish();
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = Arc::clone(&log);
    let handler = move |r: RingId, h: &Hint<'_>| {
        log2.lock().unwrap().push(r.0);
        echo(r, h)
    };
    let mut set = PollSet::new();
    set.push(flood);
    set.push(quiet);
    assert_eq!(set.round(&handler, 4, |_| {}), 8);
    {
        let log = log.lock().unwrap();
        assert_eq!(log.iter().filter(|&&r| r == 1).count(), 4);
        assert_eq!(
            log.iter().filter(|&&r| r == 2).count(),
            4,
            "the quiet ring was served in round 1"
        );
    }
    let mut rounds = 1;
    while set.round(&handler, 4, |_| {}) > 0 {
        rounds += 1;
    }
    assert_eq!(rounds, 16);
    assert_eq!(log.lock().unwrap().len(), 68);
}

#[test]
fn events_reach_the_guest_in_order_and_overflow_is_flagged() {
    let (mut host, mut guest) = ring_pair(1 << 20, None, u32::MAX - 100, 1);
    let cap = host.layout().eq.entries as u64;
    let shared = Arc::clone(host.shared());
    let n = cap * 2 + 10;
    for i in 0..n {
        let ev = EventEntry {
            kind: EVENT_REVOKE,
            file_map_id: i,
            map_generation: 7,
            ..Default::default()
        };
        assert!(shared.post_event(ev));
    }
    let mut got = Vec::new();
    for _ in 0..10 {
        host.poll_round(&echo, 64);
        guest.reap_events(|e| got.push(e.file_map_id));
    }
    assert_eq!(got, (0..n).collect::<Vec<_>>());
    assert_eq!(shared.stats.snapshot().events_sent, n);
    assert_eq!(guest.host_flags() & HOST_FLAG_EVENTS_LOST, 0);
    // Nobody reaps: the host queues, then drops and tells the guest.
    let mut refused = 0;
    for i in 0..(vmdedup_host_agent::ring::host::MAX_PENDING_EVENTS as u64 + cap + 5) {
        host.poll_round(&echo, 64);
        if !shared.post_event(EventEntry {
            kind: EVENT_NOTICE,
            notice: 3,
            file_map_id: i,
            ..Default::default()
        }) {
            refused += 1;
        }
    }
    host.poll_round(&echo, 64);
    assert!(refused > 0);
    assert_eq!(shared.stats.snapshot().events_dropped, refused);
    assert_ne!(guest.host_flags() & HOST_FLAG_EVENTS_LOST, 0);
}

#[test]
fn every_loss_of_events_is_told_with_a_notice_not_only_the_sticky_flag() {
    let sizes = RingSizes {
        sq_entries: 16,
        cq_entries: 16,
        eq_entries: 8,
        path_slots: 0,
    };
    let (mut host, mut guest) = ring_pair(64 << 10, Some(sizes), 0, 1);
    let shared = Arc::clone(host.shared());
    let max = vmdedup_host_agent::ring::host::MAX_PENDING_EVENTS as u64;
    for round in 0..2u64 {
        // The guest reaps nothing meanwhile: the queue fills, events are lost.
        let mut refused = 0;
        for i in 0..max + u64::from(sizes.eq_entries) + 5 {
            let ev = EventEntry {
                kind: EVENT_REVOKE,
                file_map_id: round * 100_000 + i,
                ..Default::default()
            };
            if !shared.post_event(ev) {
                refused += 1;
            }
            host.poll_round(&echo, 4);
        }
        assert!(refused > 0, "round {round}: nothing was lost");
        // Draining: the notice comes first, once, then the queued events.
        let mut notices = 0;
        let mut first = None;
        for _ in 0..(max as usize + 64) {
            host.poll_round(&echo, 4);
            guest.reap_events(|e| {
                first.get_or_insert((e.kind, e.notice));
                if e.kind == EVENT_NOTICE && e.notice == NOTICE_EVENTS_LOST {
                    notices += 1;
                }
            });
        }
        assert_eq!(notices, 1, "round {round}: one notice per loss");
        assert!(
            matches!(first, Some((k, _)) if k == EVENT_REVOKE),
            "round {round}: events already in the ring come before the notice"
        );
    }
    assert_ne!(guest.host_flags() & HOST_FLAG_EVENTS_LOST, 0);
}

#[test]
fn a_closed_ring_sends_its_last_events_before_it_is_dropped() {
    // What the agent does on shutdown and on a cut-off: post a notice, close.
    let (host, mut guest) = ring_pair(64 << 10, None, 0, 1);
    let shared = Arc::clone(host.shared());
    let mut set = PollSet::new();
    set.push(host);
    assert!(shared.post_event(EventEntry {
        kind: EVENT_NOTICE,
        notice: NOTICE_EVENTS_LOST,
        ..Default::default()
    }));
    shared.close();
    let mut dropped = 0;
    set.round(&echo, 4, |_| dropped += 1);
    assert_eq!(dropped, 1);
    assert!(set.is_empty());
    let mut got = Vec::new();
    guest.reap_events(|e| got.push((e.kind, e.notice)));
    assert_eq!(got, vec![(EVENT_NOTICE, NOTICE_EVENTS_LOST)]);
    // Closed without anything queued: dropped, nothing written.
    let (host, mut guest) = ring_pair(64 << 10, None, 0, 2);
    let shared = Arc::clone(host.shared());
    set.push(host);
    shared.close();
    set.round(&echo, 4, |_| {});
    assert!(set.is_empty());
    let mut n = 0;
    guest.reap_events(|_| n += 1);
    assert_eq!(n, 0);
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    // A hang guard, not a timing assertion.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn park_fast() -> PollerConfig {
    PollerConfig {
        threads: 1,
        spin: Duration::ZERO,
        yield_for: Duration::ZERO,
        sleep_for: Duration::ZERO,
        park_timeout: None,
        ..PollerConfig::default()
    }
}

#[test]
fn a_parked_poller_is_woken_by_the_doorbell() {
    let pool = PollerPool::start(park_fast(), echo).unwrap();
    let (host, mut guest) = ring_pair(64 << 10, None, 0, 4);
    let id = host.id();
    let handle = pool.add_ring(host);
    let stats = pool.stats().remove(0);
    for round in 0..20u64 {
        wait_until("the poller to park", || {
            stats.state() == PollerState::Parked && guest.host_flags() & HOST_FLAG_NEED_WAKEUP != 0
        });
        let path = path_of(10 + round as usize, round);
        guest.stage(hint(round, 0, 5, 6), &path).unwrap();
        assert!(guest.publish(), "NEED_WAKEUP was set, so the guest rings");
        let mut got = None;
        wait_until("the answer", || {
            guest.reap(|c| got = Some(c));
            got.is_some()
        });
        check_echo(id, &got.unwrap(), round, &path, 5, 6);
    }
    assert_eq!(guest.doorbells_rung(), 20);
    wait_until("doorbells to be counted", || {
        handle.shared().stats.snapshot().doorbells == 20
    });
    assert_eq!(stats.lost_wakeups.load(Ordering::Relaxed), 0);
    assert!(stats.parks.load(Ordering::Relaxed) >= 20);
}

#[test]
fn racing_submissions_against_parking_lose_nothing() {
    // The poller parks as soon as it is idle, the guest submits at random
    // moments: every hint must be answered without any park timeout.
    let pool = PollerPool::start(park_fast(), echo).unwrap();
    let (host, mut guest) = ring_pair(64 << 10, None, u32::MAX - 1000, 5);
    let _handle = pool.add_ring(host);
    let mut answered = 0u64;
    let mut seed = 0x1234_5678u64;
    for i in 0..3000u64 {
        guest.stage(hint(i, 0, 0, 0), b"p").unwrap();
        guest.publish();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        for _ in 0..(seed % 3000) {
            std::hint::spin_loop();
        }
        let mut done = false;
        wait_until("an answer", || {
            answered += guest.reap(|c| assert_eq!(c.request_id, i)) as u64;
            done = answered == i + 1;
            done
        });
    }
    assert_eq!(pool.stats()[0].lost_wakeups.load(Ordering::Relaxed), 0);
    assert!(guest.doorbells_rung() > 0);
}

#[test]
fn steady_load_rings_no_doorbell() {
    let cfg = PollerConfig {
        spin: Duration::from_secs(3600),
        ..PollerConfig::default()
    };
    let pool = PollerPool::start(cfg, echo).unwrap();
    let (host, mut guest) = ring_pair(1 << 20, None, 0, 6);
    let handle = pool.add_ring(host);
    let mut sent = 0u64;
    let mut answered = 0u64;
    while answered < 20_000 {
        while sent < 20_000 && guest.stage(hint(sent, 0, 0, 0), b"lib/x.so").is_ok() {
            sent += 1;
        }
        guest.publish();
        answered += guest.reap(|c| assert_eq!(c.status, 0)) as u64;
    }
    assert_eq!(guest.doorbells_rung(), 0);
    assert_eq!(handle.shared().stats.snapshot().doorbells, 0);
    assert_eq!(handle.shared().stats.snapshot().hints, 20_000);
}

#[test]
fn rings_can_be_added_to_a_parked_poller_and_closed() {
    let pool = PollerPool::start(
        PollerConfig {
            threads: 2,
            ..park_fast()
        },
        echo,
    )
    .unwrap();
    let stats = pool.stats();
    wait_until("both pollers to park", || {
        stats.iter().all(|s| s.state() == PollerState::Parked)
    });
    let mut handles = Vec::new();
    let mut guests = Vec::new();
    for id in 0..4 {
        let (host, guest) = ring_pair(64 << 10, None, 0, id);
        handles.push(pool.add_ring(host));
        guests.push(guest);
    }
    assert_eq!(handles.iter().filter(|h| h.poller() == 0).count(), 2);
    for (i, g) in guests.iter_mut().enumerate() {
        g.stage(hint(i as u64, 0, 0, 0), b"z").unwrap();
        g.publish();
    }
    for g in guests.iter_mut() {
        let mut n = 0;
        wait_until("answers on every ring", || {
            n += g.reap(|_| {});
            n == 1
        });
    }
    for h in &handles {
        h.shared().close();
    }
    wait_until("rings to be dropped", || {
        stats.iter().all(|s| s.rings.load(Ordering::Relaxed) == 0)
    });
    pool.shutdown();
    assert!(stats.iter().all(|s| s.state() == PollerState::Stopped));
}

/// Records the map operations a ring delivers.
#[derive(Default)]
struct MapOps(std::sync::Mutex<Vec<(u32, &'static str, u64)>>);

impl Handler for MapOps {
    fn handle(&self, ring: RingId, h: &Hint<'_>) -> Answer {
        echo(ring, h)
    }
    fn ack_revoke(&self, ring: RingId, id: u64) {
        self.0.lock().unwrap().push((ring.0, "ack", id));
    }
    fn release(&self, ring: RingId, id: u64) {
        self.0.lock().unwrap().push((ring.0, "release", id));
    }
}

#[test]
fn acknowledgements_and_releases_reach_the_handler_and_bad_ones_are_refused() {
    let (mut host, mut guest) = ring_pair(64 << 10, None, 0, 1);
    let ops = MapOps::default();
    guest.stage_map_op(1, OP_ACK_REVOKE, 77).unwrap();
    guest.stage_map_op(2, OP_RELEASE, 78).unwrap();
    guest.stage(hint(3, 0, 5, 6), b"a/b").unwrap();
    guest.stage_map_op(4, OP_RELEASE, 0).unwrap(); // map id 0 is not a map
    guest.publish();
    // A map operation with a path is malformed too.
    let m = Arc::clone(host.mapping());
    let l = *host.layout();
    let mut bad = SubmissionEntry::map_op(5, OP_ACK_REVOKE, 9);
    bad.path_len = 3;
    assert!(m.write_bytes(l.sqe_offset(4) as usize, &bad.to_le_bytes()));
    word(&m, ring_off::SQ_TAIL).store(5, Ordering::Release);
    assert_eq!(host.poll_round(&ops, 64), 5);
    let mut got = Vec::new();
    guest.reap(|c| got.push(c));
    assert_eq!(got.len(), 5);
    let by_id = |id: u64| got.iter().find(|c| c.request_id == id).copied().unwrap();
    for (id, map) in [(1, 77), (2, 78)] {
        let c = by_id(id);
        assert_eq!(c.flags, ANSWER_FLAG_MAP_OP);
        assert_eq!(AnswerStatus::from_u16(c.status), Some(AnswerStatus::Hit));
        assert_eq!(c.file_map_id, map);
    }
    assert_eq!(by_id(3).flags, 0, "a hint's answer is not flagged");
    check_echo(RingId(1), &by_id(3), 3, b"a/b", 5, 6);
    for id in [4, 5] {
        let c = by_id(id);
        assert_eq!(c.flags, ANSWER_FLAG_MAP_OP);
        assert_eq!(
            AnswerStatus::from_u16(c.status),
            Some(AnswerStatus::BadRequest),
            "entry {id}"
        );
    }
    assert_eq!(
        *ops.0.lock().unwrap(),
        vec![(1, "ack", 77), (1, "release", 78)]
    );
    assert_eq!(host.shared().stats.snapshot().bad_entries, 2);
}

/// Counts the lifecycle edges the ring reports.
#[derive(Default)]
struct Edges {
    cut_off_acks: Mutex<Vec<u32>>,
    reconnects: Mutex<Vec<u32>>,
}

impl Handler for Edges {
    fn handle(&self, ring: RingId, h: &Hint<'_>) -> Answer {
        echo(ring, h)
    }

    fn cut_off_acknowledged(&self, ring: RingId) {
        self.cut_off_acks.lock().unwrap().push(ring.0);
    }

    fn reconnected(&self, ring: RingId) {
        self.reconnects.lock().unwrap().push(ring.0);
    }
}

#[test]
fn the_cut_off_arrives_through_a_full_event_ring_and_its_ack_is_seen_once() {
    let sizes = RingSizes {
        sq_entries: 8,
        cq_entries: 8,
        eq_entries: 4,
        path_slots: 1,
    };
    let (mut host, mut guest) = ring_pair(64 << 10, Some(sizes), 0, 9);
    let edges = Edges::default();
    // The guest attached (GuestRing::attach announces, as the module does).
    host.poll_round(&edges, 64);
    assert_eq!(*edges.reconnects.lock().unwrap(), vec![9]);
    assert!(host.shared().guest_attached());
    // A stuck guest: it reads no event, so the event ring fills up and more
    // events wait on the host.
    for i in 0..20u64 {
        host.shared().post_event(EventEntry {
            kind: EVENT_REVOKE,
            file_map_id: 100 + i,
            ..EventEntry::default()
        });
    }
    host.poll_round(&edges, 64);
    assert!(!guest.cut_off_news());
    host.shared().cut_off();
    assert!(host.has_work(), "a cut-off not yet flagged is work");
    host.poll_round(&edges, 64);
    assert!(!host.has_work());
    assert_ne!(guest.host_flags() & HOST_FLAG_CUT_OFF, 0);
    assert!(guest.cut_off_news(), "seen although the event ring is full");
    assert!(!guest.cut_off_news(), "news once per attachment");
    for _ in 0..3 {
        host.poll_round(&edges, 64);
    }
    assert!(
        edges.cut_off_acks.lock().unwrap().is_empty(),
        "not acked yet"
    );
    assert!(!host.shared().cut_off_acknowledged());
    guest.acknowledge_cut_off();
    for _ in 0..3 {
        host.poll_round(&edges, 64);
    }
    assert_eq!(*edges.cut_off_acks.lock().unwrap(), vec![9]);
    assert!(host.shared().cut_off_acknowledged());
    assert_eq!(*edges.reconnects.lock().unwrap(), vec![9]);
    let st = host.shared().stats.snapshot();
    assert_eq!((st.cut_off_acks, st.attaches), (1, 1));
    // The ring is still served (answers drain the guest's requests).
    guest.stage(hint(1, 0, 0, 0), b"a").unwrap();
    guest.publish();
    assert_eq!(host.poll_round(&edges, 64), 1);
}

#[test]
fn a_stale_guest_on_an_older_generation_is_no_reconnection() {
    let tmp = TempDir::new("stale-guest");
    let path = tmp.0.join("ring");
    std::fs::write(&path, vec![0u8; 64 << 10]).unwrap();
    let open = || SharedMapping::open(&path).unwrap();
    let map = Arc::new(open());
    // The guest attached generation 5 and is slow to say so.
    let h1 = HostRing::create(open(), RingConfig::new(RingId(3), 5)).unwrap();
    let end = vmdedup_protocol::guest::GuestEnd::attach(&*map).unwrap();
    drop(h1);
    // The host writes generation 6; the stale guest's announcement lands.
    let mut h2 = HostRing::create(open(), RingConfig::new(RingId(3), 6)).unwrap();
    assert!(end.announce(&*map, FEATURES_KNOWN));
    let edges = Edges::default();
    h2.poll_round(&edges, 64);
    assert!(edges.reconnects.lock().unwrap().is_empty());
    // The guest notices the new generation and attaches it.
    let _g = GuestRing::attach(Arc::clone(&map), None).unwrap();
    h2.poll_round(&edges, 64);
    assert_eq!(*edges.reconnects.lock().unwrap(), vec![3]);
}

#[test]
fn an_expired_requests_path_slot_is_reused_only_after_the_host_read_it() {
    let sizes = RingSizes {
        sq_entries: 8,
        cq_entries: 8,
        eq_entries: 4,
        path_slots: 2,
    };
    let (mut host, mut guest) = ring_pair(64 << 10, Some(sizes), u32::MAX - 1, 1);
    let long = path_of(1000, 7);
    guest.stage(hint(1, 0, 1, 1), &long).unwrap();
    guest.stage(hint(2, 0, 2, 2), &long).unwrap();
    guest.publish();
    assert_eq!(guest.slots_in_use(), 2);
    // Both requests time out before the host looked at them.
    guest.abandon(1);
    guest.abandon(2);
    for _ in 0..3 {
        assert_eq!(guest.reclaim(), 0, "the host has not read the slots");
    }
    assert!(matches!(
        guest.stage(hint(3, 0, 3, 3), &long),
        Err(StageError::NoSlot)
    ));
    // The host consumes them (and reads the paths intact).
    assert_eq!(host.poll_round(&echo, 64), 2);
    assert_eq!(guest.reclaim(), 2);
    assert_eq!(guest.slots_in_use(), 0);
    // The late answers change nothing; both slots serve new hints.
    let mut got = Vec::new();
    guest.reap(|c| got.push(c));
    check_echo(RingId(1), &got[0], 1, &long, 1, 1);
    check_echo(RingId(1), &got[1], 2, &long, 2, 2);
    guest.stage(hint(3, 0, 3, 3), &long).unwrap();
    guest.stage(hint(4, 0, 4, 4), &long).unwrap();
    guest.publish();
    assert_eq!(host.poll_round(&echo, 64), 2);
    got.clear();
    guest.reap(|c| got.push(c));
    check_echo(RingId(1), &got[0], 3, &long, 3, 3);
    assert_eq!(guest.slots_in_use(), 0);
}

#[test]
fn fingerprints_reach_the_handler_inline_and_from_slots() {
    let (mut host, mut guest) = ring_pair(1 << 20, None, 0, 1);
    let fp = |n: u8| -> Fingerprint { core::array::from_fn(|i| n.wrapping_mul(31) ^ i as u8) };
    let short = path_of(40, 1);
    let long = path_of(3000, 2);
    for (i, path) in [&short, &long].into_iter().enumerate() {
        let mut e = hint(i as u64 + 1, 0, 1, 1);
        e.set_fingerprint(&fp(i as u8 + 1));
        guest.stage(e, path).unwrap();
    }
    guest.stage(hint(3, 0, 1, 1), &short).unwrap();
    guest.publish();
    let seen = Mutex::new(Vec::new());
    let record = |ring: RingId, h: &Hint<'_>| {
        seen.lock().unwrap().push((h.request_id, h.fingerprint));
        echo(ring, h)
    };
    assert_eq!(host.poll_round(&record, 64), 3);
    assert_eq!(
        *seen.lock().unwrap(),
        vec![(1, Some(fp(1))), (2, Some(fp(2))), (3, None)]
    );
    let mut got = Vec::new();
    guest.reap(|c| got.push(c.status));
    assert_eq!(got, vec![0, 0, 0]);
}
