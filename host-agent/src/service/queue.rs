//! Load queues: one per requester (a VM, or the operator), served round
//! robin by the loader threads, each bounded in loads queued plus running.
//!
//! A VM that hints a million paths fills its own queue and no other: past
//! its bound its hints are answered "loading" without queueing (the guest
//! asks again later), and a loader takes the next job from the next VM in
//! turn, so an honest VM's load waits for at most one job of each other VM.

use std::collections::{BTreeMap, HashSet, VecDeque};

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
    /// The requester has its bound of loads queued and running.
    Full,
}

#[derive(Debug, Default)]
struct Lane {
    queued: VecDeque<CacheKey>,
    running: usize,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub(super) struct LoadQueues {
    /// Requesters with loads queued or running (an idle one has no lane).
    lanes: BTreeMap<Requester, Lane>,
    /// Requesters with loads queued, next to serve first.
    turn: VecDeque<Requester>,
    /// Paths queued or running, to load each once.
    keys: HashSet<CacheKey>,
    queued: usize,
    running: usize,
    /// Pushes refused by a bound, ever.
    refused: u64,
}

impl LoadQueues {
    /// Queues `job` unless its path is queued or running already, or its
    /// requester has `limit` loads queued and running.
    pub(super) fn push(&mut self, job: LoadJob, limit: usize) -> Push {
        if self.keys.contains(&job.key) {
            return Push::Duplicate;
        }
        let lane = self.lanes.entry(job.by).or_default();
        if lane.queued.len() + lane.running >= limit.max(1) {
            self.refused += 1;
            if lane.queued.is_empty() && lane.running == 0 {
                self.lanes.remove(&job.by);
            }
            return Push::Full;
        }
        if lane.queued.is_empty() {
            self.turn.push_back(job.by);
        }
        lane.queued.push_back(job.key.clone());
        self.keys.insert(job.key);
        self.queued += 1;
        Push::Queued
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

    /// A job [`LoadQueues::pop`] returned has finished.
    pub(super) fn done(&mut self, job: &LoadJob) {
        self.keys.remove(&job.key);
        if let Some(lane) = self.lanes.get_mut(&job.by) {
            lane.running = lane.running.saturating_sub(1);
            if lane.running == 0 && lane.queued.is_empty() {
                self.lanes.remove(&job.by);
            }
        }
        self.running = self.running.saturating_sub(1);
    }

    /// Whether `key` is queued or running.
    pub(super) fn contains(&self, key: &CacheKey) -> bool {
        self.keys.contains(key)
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

    /// No load queued or running.
    pub(super) fn is_idle(&self) -> bool {
        self.queued == 0 && self.running == 0
    }

    /// Pushes refused by a bound so far.
    pub(super) fn refused(&self) -> u64 {
        self.refused
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
        let mut q = LoadQueues::default();
        for i in 0..10 {
            assert_eq!(q.push(job(Some(1), i), 100), Push::Queued);
        }
        assert_eq!(q.push(job(Some(2), 100), 100), Push::Queued);
        assert_eq!(q.push(job(Some(2), 101), 100), Push::Queued);
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
        let mut q = LoadQueues::default();
        assert_eq!(q.push(job(Some(1), 0), 2), Push::Queued);
        assert_eq!(q.push(job(Some(1), 0), 2), Push::Duplicate);
        assert_eq!(q.push(job(Some(3), 0), 2), Push::Duplicate);
        assert_eq!(q.push(job(Some(1), 1), 2), Push::Queued);
        assert_eq!(q.push(job(Some(1), 2), 2), Push::Full);
        assert_eq!(
            q.push(job(Some(2), 2), 2),
            Push::Queued,
            "others unaffected"
        );
        let a = q.pop().unwrap();
        assert_eq!(q.in_flight(Some(1)), 2, "running counts");
        assert_eq!(q.push(job(Some(1), 3), 2), Push::Full);
        q.done(&a);
        assert_eq!(q.push(job(Some(1), 3), 2), Push::Queued);
        assert_eq!(q.refused(), 2);
        while let Some(j) = q.pop() {
            q.done(&j);
        }
        assert!(q.is_idle());
        assert!(q.lanes.is_empty() && q.keys.is_empty() && q.turn.is_empty());
        // A load run outside the queues counts while it runs.
        assert!(q.begin(&job(Some(1), 7)));
        assert!(!q.begin(&job(Some(2), 7)));
        assert_eq!(q.push(job(Some(2), 7), 2), Push::Duplicate);
        assert_eq!(q.in_flight(Some(1)), 1);
        q.done(&job(Some(1), 7));
        assert!(q.is_idle() && q.lanes.is_empty() && q.keys.is_empty());
    }
}
