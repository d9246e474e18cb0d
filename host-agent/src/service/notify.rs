//! Who waits to hear that a file is loaded: hints answered "loading" that
//! asked for a [`NOTICE_LOADED`](vmdedup_protocol::abi::NOTICE_LOADED)
//! ([`HINT_FLAG_NOTIFY_LOADED`](vmdedup_protocol::abi::HINT_FLAG_NOTIFY_LOADED)).
//!
//! A waiter is recorded with the push that queues its path's load, finds
//! it queued or running, or puts it in the VM's backlog, under the `jobs`
//! lock, so before any loader can take that load (a small file loads
//! faster than a poller that woke a loader may get its core back); it is
//! taken when a load of the path is done, under the same lock. So every
//! waiter is either taken by the load it waited for or never recorded. The notice is advisory and holds nothing: the guest hints
//! again and only that hint's answer makes it a holder. What a guest can
//! make the agent keep here is bounded by [`WAITERS_PER_VM`].

use std::collections::{BTreeMap, HashMap};

use super::CacheKey;
use crate::store::VmId;

/// Most hints one VM may have waiting for a notice; past it a hint is
/// answered "loading" without one (the guest asks again on a later open).
pub const WAITERS_PER_VM: usize = 256;

/// The waiting hints, by path.
#[derive(Debug, Default)]
pub(super) struct LoadWaiters {
    by_key: HashMap<CacheKey, Vec<(VmId, u64)>>,
    per_vm: BTreeMap<VmId, usize>,
    refused: u64,
}

impl LoadWaiters {
    /// Records that hint `request_id` of `vm` waits for `key`'s load.
    /// Returns false (and records nothing) past the VM's bound.
    pub(super) fn add(&mut self, key: &CacheKey, vm: VmId, request_id: u64) -> bool {
        let n = self.per_vm.entry(vm).or_insert(0);
        if *n >= WAITERS_PER_VM {
            self.refused += 1;
            return false;
        }
        *n += 1;
        self.by_key
            .entry(key.clone())
            .or_default()
            .push((vm, request_id));
        true
    }

    /// Takes every hint waiting for `key`.
    pub(super) fn take(&mut self, key: &CacheKey) -> Vec<(VmId, u64)> {
        let w = self.by_key.remove(key).unwrap_or_default();
        for (vm, _) in &w {
            self.uncount(*vm, 1);
        }
        w
    }

    /// Forgets every hint of `vm` (it went away, or its guest started over
    /// and its request ids mean nothing any more).
    pub(super) fn remove_vm(&mut self, vm: VmId) {
        if self.per_vm.remove(&vm).is_none() {
            return;
        }
        self.by_key.retain(|_, w| {
            w.retain(|(v, _)| *v != vm);
            !w.is_empty()
        });
    }

    fn uncount(&mut self, vm: VmId, n: usize) {
        if let Some(c) = self.per_vm.get_mut(&vm) {
            *c = c.saturating_sub(n);
            if *c == 0 {
                self.per_vm.remove(&vm);
            }
        }
    }

    /// Hints of `vm` waiting.
    pub(super) fn len(&self, vm: VmId) -> usize {
        self.per_vm.get(&vm).copied().unwrap_or(0)
    }

    /// Hints that asked for a notice past their VM's bound so far.
    pub(super) fn refused(&self) -> u64 {
        self.refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(p: &str) -> CacheKey {
        (1, p.as_bytes().into())
    }

    #[test]
    fn a_load_takes_its_waiters_once_and_only_its_own() {
        let mut w = LoadWaiters::default();
        assert!(w.add(&key("a"), 1, 10));
        assert!(w.add(&key("a"), 2, 20));
        assert!(w.add(&key("b"), 1, 11));
        assert_eq!(w.len(1), 2);
        let mut a = w.take(&key("a"));
        a.sort();
        assert_eq!(a, vec![(1, 10), (2, 20)]);
        assert!(w.take(&key("a")).is_empty());
        assert_eq!((w.len(1), w.len(2)), (1, 0));
        assert_eq!(w.take(&key("b")), vec![(1, 11)]);
        assert_eq!(w.len(1), 0);
    }

    #[test]
    fn a_vm_waits_for_at_most_its_bound() {
        let mut w = LoadWaiters::default();
        for i in 0..WAITERS_PER_VM {
            assert!(w.add(&key(&format!("f{i}")), 7, i as u64));
        }
        assert!(!w.add(&key("one-more"), 7, 9999));
        assert_eq!(w.refused(), 1);
        // Another VM is not affected.
        assert!(w.add(&key("one-more"), 8, 1));
        assert!(w.take(&key("one-more")) == vec![(8, 1)]);
        // Room again once a load took some.
        w.take(&key("f0"));
        assert!(w.add(&key("one-more"), 7, 9999));
    }

    #[test]
    fn a_removed_vm_leaves_nothing_behind() {
        let mut w = LoadWaiters::default();
        w.add(&key("a"), 1, 10);
        w.add(&key("a"), 2, 20);
        w.add(&key("b"), 1, 11);
        w.remove_vm(1);
        assert_eq!(w.len(1), 0);
        assert_eq!(w.take(&key("a")), vec![(2, 20)]);
        assert!(w.take(&key("b")).is_empty());
    }
}
