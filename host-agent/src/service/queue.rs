//! Load queues: one per requester (a VM, or the operator), served round
//! robin by the loader threads, each bounded in loads queued plus running.
//!
//! A VM that hints a million paths fills its own queue and no other: a
//! loader takes the next job from the next VM in turn, so an honest VM's
//! load waits for at most one job of each other VM. Past its bound a VM's
//! paths wait in its own backlog, bounded too, and enter its queue one by
//! one as its own loads finish; past the backlog its hints are answered
//! "loading" without anything kept (the guest asks again on a later open).
//! A path in one VM's backlog is not "queued" for any other VM: another
//! VM's hint for it queues it in that VM's lane as usual, and whichever
//! load of it finishes first takes it out of every backlog.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use super::CacheKey;
use crate::store::VmId;

/// Who caused a load: a VM, or `None` for the operator.
pub type Requester = Option<VmId>;

/// A load: what to load and for whom.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct LoadJob {
    /// Namespace id and path.
    pub(super) key: CacheKey,
    /// Who caused it (the store charges frames to it).
    pub(super) by: Requester,
}

/// What [`LoadQueues::push`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Push {
    /// Queued.
    Queued,
    /// That path is queued or being loaded already.
    Duplicate,
    /// The requester has its bound of loads queued and running: the path
    /// waits in its backlog (or was waiting there already).
    Backlogged,
    /// The requester's loads and its backlog are both full: nothing kept.
    Full,
}

#[derive(Debug, Default)]
struct Lane {
    queued: VecDeque<CacheKey>,
    running: usize,
    backlog: VecDeque<CacheKey>,
}

impl Lane {
    fn is_empty(&self) -> bool {
        self.queued.is_empty() && self.running == 0 && self.backlog.is_empty()
    }
}

/// See the module documentation.
#[derive(Debug)]
pub(super) struct LoadQueues {
    /// Most loads one requester may have queued plus running.
    limit: usize,
    /// Most paths one requester may have waiting in its backlog.
    backlog_limit: usize,
    /// Requesters with loads queued, running or backlogged (an idle one
    /// has no lane).
    lanes: BTreeMap<Requester, Lane>,
    /// Requesters with loads queued, next to serve first.
    turn: VecDeque<Requester>,
    /// Paths queued or running, to load each once.
    keys: HashSet<CacheKey>,
    /// Paths in some backlog, with how many backlogs hold each.
    backlogged: HashMap<CacheKey, usize>,
    queued: usize,
    running: usize,
    /// Pushes refused by both bounds, ever.
    refused: u64,
    /// Pushes that went to a backlog, ever.
    deferred: u64,
}

impl LoadQueues {
    /// Queues with at most `limit` loads queued plus running per requester
    /// (at least 1) and `backlog_limit` more waiting behind them.
    pub(super) fn new(limit: usize, backlog_limit: usize) -> Self {
        LoadQueues {
            limit: limit.max(1),
            backlog_limit,
            lanes: BTreeMap::new(),
            turn: VecDeque::new(),
            keys: HashSet::new(),
            backlogged: HashMap::new(),
            queued: 0,
            running: 0,
            refused: 0,
            deferred: 0,
        }
    }

    /// Queues `job` unless its path is queued or running already; past its
    /// requester's bound it goes to the requester's backlog, past that it
    /// is refused.
    pub(super) fn push(&mut self, job: LoadJob) -> Push {
        if self.keys.contains(&job.key) {
            return Push::Duplicate;
        }
        let lane = self.lanes.entry(job.by).or_default();
        if lane.queued.len() + lane.running < self.limit {
            self.enqueue(job.by, job.key);
            return Push::Queued;
        }
        if lane.backlog.contains(&job.key) {
            return Push::Backlogged;
        }
        if lane.backlog.len() < self.backlog_limit {
            lane.backlog.push_back(job.key.clone());
            *self.backlogged.entry(job.key).or_insert(0) += 1;
            self.deferred += 1;
            return Push::Backlogged;
        }
        // The lane is not empty: it has `limit` (at least 1) loads.
        self.refused += 1;
        Push::Full
    }

    /// Puts `key` at the end of `by`'s queue (its lane exists).
    fn enqueue(&mut self, by: Requester, key: CacheKey) {
        let Some(lane) = self.lanes.get_mut(&by) else {
            return;
        };
        if lane.queued.is_empty() {
            self.turn.push_back(by);
        }
        lane.queued.push_back(key.clone());
        self.keys.insert(key);
        self.queued += 1;
    }

    /// The next job, taking requesters in turn; it counts as running until
    /// [`LoadQueues::done`].
    pub(super) fn pop(&mut self) -> Option<LoadJob> {
        while let Some(by) = self.turn.pop_front() {
            let Some(lane) = self.lanes.get_mut(&by) else {
                continue;
            };
            let Some(key) = lane.queued.pop_front() else {
                continue;
            };
            lane.running += 1;
            if !lane.queued.is_empty() {
                self.turn.push_back(by);
            }
            self.queued -= 1;
            self.running += 1;
            return Some(LoadJob { key, by });
        }
        None
    }

    /// Counts `job`, run by its caller outside the queues (a warm), as
    /// running. Returns false, counting nothing, if its path is queued or
    /// running already; otherwise [`LoadQueues::done`] must follow.
    pub(super) fn begin(&mut self, job: &LoadJob) -> bool {
        if !self.keys.insert(job.key.clone()) {
            return false;
        }
        self.lanes.entry(job.by).or_default().running += 1;
        self.running += 1;
        true
    }

    /// A job [`LoadQueues::pop`] returned (or [`LoadQueues::begin`]
    /// counted) has finished: its path leaves every backlog, and the next
    /// paths of its requester's backlog take its place in the queue.
    /// Returns whether one was queued (a loader should be woken).
    pub(super) fn done(&mut self, job: &LoadJob) -> bool {
        self.keys.remove(&job.key);
        self.running = self.running.saturating_sub(1);
        if self.backlogged.remove(&job.key).is_some() {
            for lane in self.lanes.values_mut() {
                lane.backlog.retain(|k| *k != job.key);
            }
        }
        let Some(lane) = self.lanes.get_mut(&job.by) else {
            return false;
        };
        lane.running = lane.running.saturating_sub(1);
        // A backlog is kept only behind a full lane (this refills it from
        // the backlog whenever one of its loads ends), so a lane with a
        // backlog is never empty.
        let mut promoted = false;
        while let Some(key) = self.lanes.get_mut(&job.by).and_then(|lane| {
            let room = lane.queued.len() + lane.running < self.limit;
            room.then(|| lane.backlog.pop_front()).flatten()
        }) {
            self.unbacklog(&key);
            // Queued or running for another requester meanwhile: that load
            // takes it out of the backlogs and tells its waiters.
            if !self.keys.contains(&key) {
                self.enqueue(job.by, key);
                promoted = true;
            }
        }
        if self.lanes.get(&job.by).is_some_and(Lane::is_empty) {
            self.lanes.remove(&job.by);
        }
        promoted
    }

    /// One backlog let go of `key`.
    fn unbacklog(&mut self, key: &CacheKey) {
        if let Some(n) = self.backlogged.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                self.backlogged.remove(key);
            }
        }
    }

    /// Forgets `by`'s backlog (a VM that went away); what it has queued
    /// or running still runs.
    pub(super) fn forget_backlog(&mut self, by: Requester) {
        let Some(lane) = self.lanes.get_mut(&by) else {
            return;
        };
        let keys: Vec<_> = lane.backlog.drain(..).collect();
        if lane.is_empty() {
            self.lanes.remove(&by);
        }
        for k in &keys {
            self.unbacklog(k);
        }
    }

    /// Whether a load of `key` is queued or running, or waits in `by`'s
    /// backlog: one that will end, and tell those waiting for it.
    pub(super) fn will_load(&self, key: &CacheKey, by: Requester) -> bool {
        self.keys.contains(key)
            || (self.backlogged.contains_key(key)
                && self.lanes.get(&by).is_some_and(|l| l.backlog.contains(key)))
    }

    /// Loads queued (not yet running).
    pub(super) fn queued(&self) -> usize {
        self.queued
    }

    /// Loads queued or running for `by`.
    pub(super) fn in_flight(&self, by: Requester) -> usize {
        self.lanes
            .get(&by)
            .map_or(0, |l| l.queued.len() + l.running)
    }

    /// Paths waiting in `by`'s backlog.
    pub(super) fn backlog_len(&self, by: Requester) -> usize {
        self.lanes.get(&by).map_or(0, |l| l.backlog.len())
    }

    /// No load queued, running or backlogged.
    pub(super) fn is_idle(&self) -> bool {
        self.queued == 0 && self.running == 0 && self.backlogged.is_empty()
    }

    /// Pushes refused by both bounds so far.
    pub(super) fn refused(&self) -> u64 {
        self.refused
    }

    /// Pushes that waited in a backlog so far.
    pub(super) fn deferred(&self) -> u64 {
        self.deferred
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(by: Requester, i: u32) -> LoadJob {
        LoadJob {
            key: (1, format!("p{i}").into_bytes().into()),
            by,
        }
    }

    #[test]
    fn requesters_are_served_in_turn() {
        let mut q = LoadQueues::new(100, 0);
        for i in 0..10 {
            assert_eq!(q.push(job(Some(1), i)), Push::Queued);
        }
        assert_eq!(q.push(job(Some(2), 100)), Push::Queued);
        assert_eq!(q.push(job(Some(2), 101)), Push::Queued);
        let order: Vec<_> = std::iter::from_fn(|| q.pop()).map(|j| j.by).collect();
        assert_eq!(
            &order[..5],
            &[Some(1), Some(2), Some(1), Some(2), Some(1)],
            "VM 2 waits behind one job of VM 1, not ten"
        );
        assert_eq!(order.len(), 12);
    }

    #[test]
    fn bound_counts_queued_and_running_and_dedups() {
        let mut q = LoadQueues::new(2, 0);
        assert_eq!(q.push(job(Some(1), 0)), Push::Queued);
        assert_eq!(q.push(job(Some(1), 0)), Push::Duplicate);
        assert_eq!(q.push(job(Some(3), 0)), Push::Duplicate);
        assert_eq!(q.push(job(Some(1), 1)), Push::Queued);
        assert_eq!(q.push(job(Some(1), 2)), Push::Full);
        assert_eq!(q.push(job(Some(2), 2)), Push::Queued, "others unaffected");
        let a = q.pop().unwrap();
        assert_eq!(q.in_flight(Some(1)), 2, "running counts");
        assert_eq!(q.push(job(Some(1), 3)), Push::Full);
        q.done(&a);
        assert_eq!(q.push(job(Some(1), 3)), Push::Queued);
        assert_eq!(q.refused(), 2);
        while let Some(j) = q.pop() {
            q.done(&j);
        }
        assert!(q.is_idle());
        assert!(q.lanes.is_empty() && q.keys.is_empty() && q.turn.is_empty());
        // A load run outside the queues counts while it runs.
        assert!(q.begin(&job(Some(1), 7)));
        assert!(!q.begin(&job(Some(2), 7)));
        assert_eq!(q.push(job(Some(2), 7)), Push::Duplicate);
        assert_eq!(q.in_flight(Some(1)), 1);
        q.done(&job(Some(1), 7));
        assert!(q.is_idle() && q.lanes.is_empty() && q.keys.is_empty());
    }

    #[test]
    fn past_the_bound_paths_wait_in_a_backlog_and_follow_in_order() {
        let mut q = LoadQueues::new(2, 3);
        assert_eq!(q.push(job(Some(1), 0)), Push::Queued);
        assert_eq!(q.push(job(Some(1), 1)), Push::Queued);
        for i in 2..5 {
            assert_eq!(q.push(job(Some(1), i)), Push::Backlogged);
        }
        assert_eq!(q.push(job(Some(1), 3)), Push::Backlogged, "once");
        assert_eq!(q.push(job(Some(1), 5)), Push::Full);
        assert_eq!(
            (q.backlog_len(Some(1)), q.deferred(), q.refused()),
            (3, 3, 1)
        );
        assert!(q.will_load(&job(None, 3).key, Some(1)));
        assert!(!q.will_load(&job(None, 3).key, Some(2)), "not for others");
        // Another VM's hint for a backlogged path queues it in its own
        // lane: nothing of VM 1's holds it back.
        assert_eq!(q.push(job(Some(2), 3)), Push::Queued);
        let mut order = Vec::new();
        while let Some(j) = q.pop() {
            order.push((j.by, j.key.1.clone()));
            q.done(&j);
        }
        let names: Vec<_> = order
            .iter()
            .map(|(b, k)| (*b, String::from_utf8_lossy(k).into_owned()))
            .collect();
        assert_eq!(
            names,
            [
                (Some(1), "p0"),
                (Some(2), "p3"),
                (Some(1), "p1"),
                (Some(1), "p2"),
                (Some(1), "p4")
            ]
            .map(|(b, k)| (b, k.to_string()))
            .to_vec(),
            "p3 was loaded for VM 2 and left VM 1's backlog"
        );
        assert!(q.is_idle() && q.lanes.is_empty() && q.backlogged.is_empty());
    }

    #[test]
    fn a_forgotten_backlog_leaves_nothing_behind() {
        let mut q = LoadQueues::new(1, 4);
        assert_eq!(q.push(job(Some(1), 0)), Push::Queued);
        assert_eq!(q.push(job(Some(1), 1)), Push::Backlogged);
        assert_eq!(q.push(job(Some(2), 0)), Push::Duplicate);
        assert_eq!(q.push(job(Some(2), 1)), Push::Queued);
        assert_eq!(q.push(job(Some(2), 9)), Push::Backlogged);
        q.forget_backlog(Some(1));
        q.forget_backlog(Some(2));
        assert!(!q.will_load(&job(None, 9).key, Some(2)));
        while let Some(j) = q.pop() {
            assert!(!q.done(&j), "nothing left to follow");
        }
        assert!(q.is_idle() && q.lanes.is_empty() && q.backlogged.is_empty());
    }

    proptest::proptest! {
        /// Whatever VMs push and loaders finish, in any order: a lane never
        /// has more than its bound queued plus running, nor more than its
        /// backlog bound waiting; every path queued or backlogged is loaded
        /// after that before the queues are idle, each path
        /// at most once at a time; and nothing is left behind.
        #[test]
        fn backlogs_drain_within_bounds(
            ops in proptest::collection::vec((0u8..4, 1u32..4, 0u32..12), 1..200),
            limit in 1usize..4,
            backlog in 0usize..4,
        ) {
            let mut q = LoadQueues::new(limit, backlog);
            let mut running: Vec<LoadJob> = Vec::new();
            // Paths queued or backlogged and not loaded since.
            let mut owed: HashSet<CacheKey> = HashSet::new();
            let check = |q: &LoadQueues| {
                for (by, l) in &q.lanes {
                    proptest::prop_assert!(l.queued.len() + l.running <= limit, "{by:?}");
                    proptest::prop_assert!(l.backlog.len() <= backlog);
                    proptest::prop_assert!(l.backlog.is_empty() || l.queued.len() + l.running == limit);
                }
                Ok(())
            };
            for (op, vm, path) in ops {
                match op {
                    0 | 1 => {
                        let j = job(Some(vm), path);
                        match q.push(j.clone()) {
                            Push::Queued | Push::Backlogged => {
                                owed.insert(j.key);
                            }
                            Push::Duplicate | Push::Full => {}
                        }
                    }
                    2 => {
                        if let Some(j) = q.pop() {
                            proptest::prop_assert!(!running.iter().any(|r| r.key == j.key));
                            running.push(j);
                        }
                    }
                    _ => {
                        if !running.is_empty() {
                            let j = running.remove(path as usize % running.len());
                            owed.remove(&j.key);
                            q.done(&j);
                        }
                    }
                }
                check(&q)?;
            }
            for j in running.drain(..) {
                owed.remove(&j.key);
                q.done(&j);
            }
            while let Some(j) = q.pop() {
                owed.remove(&j.key);
                q.done(&j);
                check(&q)?;
            }
            proptest::prop_assert!(q.is_idle());
            proptest::prop_assert!(q.lanes.is_empty() && q.keys.is_empty() && q.turn.is_empty());
            proptest::prop_assert!(q.backlogged.is_empty());
            proptest::prop_assert!(owed.is_empty(), "never loaded: {owed:?}");
        }
    }
}
