//! The memory behind `always_loading` namespaces: for each VM, which paths
//! it was already answered "loading" for, and for which file version.
//!
//! Without it, whether a VM's first hint for a file hits or is answered
//! "loading" tells that VM whether another VM loaded the file before. In a
//! namespace with `always_loading` every VM's first contact with a path is
//! "loading" whatever the path cache says, and a load is queued for it as
//! for a real miss; its later hints get the ordinary answer. The sequence a
//! VM sees is then the same whether or not the file was loaded already:
//!
//! | the path is | a real first hint | masked first hint | then |
//! | --- | --- | --- | --- |
//! | not known, loading | "loading" | - | "loading" while the load runs, then the ordinary answer |
//! | loaded (map M) | - | "loading" | "loading" while the load queued for it runs, then the ordinary answer for M |
//! | known missing | - | "loading" | the same |
//!
//! A VM's entry for a path is `Pending` after a "loading" answer
//! while the path was not loaded (its next hint for the version that gets
//! loaded is answered normally), `Masked` after a masked one (it is
//! told "loading" while a load of the path is queued or running, as it
//! would be after a real miss, so that how long it waits says nothing
//! either) and `Map` once it was answered normally for a map: a
//! later version (another map) is masked again, since it may have been
//! loaded by another VM.
//!
//! Bounded: at most [`TOLD_PER_VM`] paths per VM, the oldest forgotten
//! first. Forgetting a path only costs that VM one more "loading" answer,
//! which reveals nothing. Paths are kept as 64-bit hashes under a key drawn
//! at random when the service starts, so a guest can neither choose paths
//! that collide nor make the memory larger than the bound. A VM's memory
//! goes with the VM.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, RandomState};

use crate::store::{MapId, VmId};

/// Most paths remembered per VM.
pub const TOLD_PER_VM: usize = 8192;

/// What a VM was last answered "loading" for, for one path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Told {
    /// While the path was not loaded (a real miss): the version loaded
    /// next is answered normally.
    Pending,
    /// Masked for this loaded map (or, with `MapId::MAX`, a known miss);
    /// "loading" until no load of the path is queued or running.
    Masked(MapId),
    /// Answered normally for this map since.
    Map(MapId),
}

/// One VM's memory: path hash -> (what it was told, insertion number),
/// and insertion number -> path hash, oldest first.
#[derive(Debug, Default)]
struct VmTold {
    by_path: HashMap<u64, (Told, u64)>,
    order: BTreeMap<u64, u64>,
    next: u64,
}

impl VmTold {
    fn set(&mut self, path: u64, told: Told, cap: usize) {
        let seq = self.next;
        self.next += 1;
        if let Some((_, old)) = self.by_path.insert(path, (told, seq)) {
            self.order.remove(&old);
        }
        self.order.insert(seq, path);
        while self.by_path.len() > cap {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.by_path.remove(&oldest);
        }
    }
}

/// Every VM's memory. Kept behind one lock, taken alone.
#[derive(Debug)]
pub(super) struct ToldLoading {
    key: RandomState,
    cap: usize,
    vms: HashMap<VmId, VmTold>,
}

impl ToldLoading {
    /// An empty memory of at most `cap` paths per VM.
    pub(super) fn new(cap: usize) -> Self {
        ToldLoading {
            key: RandomState::new(),
            cap: cap.max(1),
            vms: HashMap::new(),
        }
    }

    fn path(&self, ns: u32, path: &[u8]) -> u64 {
        self.key.hash_one((ns, path))
    }

    /// What `vm` was told for `path` of `ns`, if it is remembered.
    pub(super) fn get(&self, vm: VmId, ns: u32, path: &[u8]) -> Option<Told> {
        let h = self.path(ns, path);
        self.vms.get(&vm)?.by_path.get(&h).map(|&(t, _)| t)
    }

    /// Remembers that `vm` was told "loading" for `path` of `ns`.
    pub(super) fn set(&mut self, vm: VmId, ns: u32, path: &[u8], told: Told) {
        let h = self.path(ns, path);
        let cap = self.cap;
        self.vms.entry(vm).or_default().set(h, told, cap);
    }

    /// Forgets VM `vm`.
    pub(super) fn remove_vm(&mut self, vm: VmId) {
        self.vms.remove(&vm);
    }

    /// Paths remembered for `vm`.
    pub(super) fn len(&self, vm: VmId) -> usize {
        self.vms.get(&vm).map_or(0, |v| v.by_path.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_vm_and_per_namespace() {
        let mut t = ToldLoading::new(16);
        assert_eq!(t.get(1, 1, b"a"), None);
        t.set(1, 1, b"a", Told::Masked(7));
        assert_eq!(t.get(1, 1, b"a"), Some(Told::Masked(7)));
        assert_eq!(t.get(2, 1, b"a"), None, "another VM");
        assert_eq!(t.get(1, 2, b"a"), None, "another namespace");
        assert_eq!(t.get(1, 1, b"b"), None, "another path");
        t.set(1, 1, b"a", Told::Map(7));
        assert_eq!(t.get(1, 1, b"a"), Some(Told::Map(7)));
        assert_eq!(t.len(1), 1);
        t.remove_vm(1);
        assert_eq!(t.len(1), 0);
        assert_eq!(t.get(1, 1, b"a"), None);
    }

    #[test]
    fn bounded_oldest_forgotten_first() {
        let mut t = ToldLoading::new(4);
        for i in 0..4u64 {
            t.set(1, 1, format!("p{i}").as_bytes(), Told::Map(i));
        }
        // Setting p0 again makes p1 the oldest.
        t.set(1, 1, b"p0", Told::Pending);
        t.set(1, 1, b"p4", Told::Map(4));
        assert_eq!(t.len(1), 4);
        assert_eq!(t.get(1, 1, b"p1"), None, "oldest forgotten");
        assert_eq!(t.get(1, 1, b"p0"), Some(Told::Pending));
        for i in 0..10_000u64 {
            t.set(1, 1, &i.to_le_bytes(), Told::Pending);
        }
        assert_eq!(t.len(1), 4);
        assert_eq!(t.vms[&1].order.len(), 4);
    }
}
