//! The path cache: what the service knows about the paths guests hinted,
//! bounded in entries and in bytes, least recently used first out, and aged
//! (an entry not used for a while is dropped, whatever its kind).
//!
//! Every key is a path a guest chose, so nothing here may grow with guest
//! input: an insert beyond a cap drops the least recently used entries, and
//! aging drops idle ones. `Ready` entries go last: only a file that exists
//! on the host makes one, so their number is bounded by the host's trees,
//! whereas any string makes a `Missing` or `Loading` entry. A guest flooding
//! made-up paths thus pushes out its own junk (and other negative entries),
//! not the loaded files the other VMs hit.
//!
//! Dropping an entry is always safe: a `Ready` entry is found again from the
//! store index by the next load (no I/O besides the `open`), a `Missing` one
//! is found missing again, and a `Loading` one whose load is still queued is
//! written back when the load finishes (through an insert, so under the caps
//! again).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::{CacheEntry, CacheKey};

/// Bytes charged per entry besides its path: the hash table slot, the key's
/// `Arc` allocation, the order index node and allocator overhead, rounded up.
pub const ENTRY_OVERHEAD: usize = 192;

// The entry itself (value and key) fits with room for the table slot and the
// order index node; a bigger entry needs a bigger charge.
const _: () = assert!(
    std::mem::size_of::<CacheEntry>() + 2 * std::mem::size_of::<CacheKey>() + 48 <= ENTRY_OVERHEAD
);

/// Limits of the path cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheLimits {
    /// Most entries.
    pub entries: usize,
    /// Most bytes (paths plus [`ENTRY_OVERHEAD`] per entry).
    pub bytes: usize,
    /// An entry not used for this long is dropped (0: never).
    pub idle_ms: u64,
}

impl Default for CacheLimits {
    fn default() -> Self {
        CacheLimits {
            entries: 65_536,
            bytes: 16 << 20,
            idle_ms: 600_000,
        }
    }
}

#[derive(Debug)]
struct Slot {
    entry: CacheEntry,
    /// Position in `order` (larger: used more recently).
    stamp: u64,
    /// When it was last used, in the service's milliseconds.
    used_ms: u64,
}

/// See the module documentation.
#[derive(Debug)]
pub(super) struct PathCache {
    map: HashMap<Arc<CacheKey>, Slot>,
    /// The `Ready` entries, least recently used first.
    ready: BTreeMap<u64, Arc<CacheKey>>,
    /// The other entries, least recently used first.
    other: BTreeMap<u64, Arc<CacheKey>>,
    next_stamp: u64,
    bytes: usize,
    limits: CacheLimits,
    /// Entries dropped by the caps or by age, ever.
    dropped: u64,
}

fn cost(key: &CacheKey) -> usize {
    key.1.len() + ENTRY_OVERHEAD
}

fn is_ready(e: &CacheEntry) -> bool {
    matches!(e, CacheEntry::Ready { .. })
}

impl PathCache {
    pub(super) fn new(limits: CacheLimits) -> Self {
        PathCache {
            map: HashMap::new(),
            ready: BTreeMap::new(),
            other: BTreeMap::new(),
            next_stamp: 0,
            bytes: 0,
            limits: CacheLimits {
                entries: limits.entries.max(1),
                bytes: limits.bytes.max(ENTRY_OVERHEAD),
                idle_ms: limits.idle_ms,
            },
            dropped: 0,
        }
    }

    fn stamp(&mut self) -> u64 {
        self.next_stamp += 1;
        self.next_stamp
    }

    /// The entry of `key`, marked as used now.
    pub(super) fn get(&mut self, key: &CacheKey, now_ms: u64) -> Option<CacheEntry> {
        let stamp = self.stamp();
        let slot = self.map.get_mut(key)?;
        let (old, ready) = (slot.stamp, is_ready(&slot.entry));
        slot.stamp = stamp;
        slot.used_ms = now_ms;
        let entry = slot.entry.clone();
        self.reorder(old, ready, stamp, ready);
        Some(entry)
    }

    /// The order index of `Ready` entries or of the others.
    fn order(&mut self, ready: bool) -> &mut BTreeMap<u64, Arc<CacheKey>> {
        if ready {
            &mut self.ready
        } else {
            &mut self.other
        }
    }

    /// Moves an entry from stamp `old` in its index to stamp `new` in the
    /// index of its (maybe new) kind.
    fn reorder(&mut self, old: u64, was_ready: bool, new: u64, now_ready: bool) {
        if let Some(k) = self.order(was_ready).remove(&old) {
            self.order(now_ready).insert(new, k);
        }
    }

    /// The entry of `key`, not marking it used.
    pub(super) fn peek(&self, key: &CacheKey) -> Option<&CacheEntry> {
        self.map.get(key).map(|s| &s.entry)
    }

    /// Replaces the entry of `key` in place if there is one (not marking it
    /// used); returns whether there was.
    pub(super) fn update(&mut self, key: &CacheKey, entry: CacheEntry) -> bool {
        let Some(s) = self.map.get_mut(key) else {
            return false;
        };
        let (stamp, was, now) = (s.stamp, is_ready(&s.entry), is_ready(&entry));
        s.entry = entry;
        self.reorder(stamp, was, stamp, now);
        true
    }

    /// Sets the entry of `key`, as used now, then drops the least recently
    /// used entries while a cap is exceeded (never the one just set).
    pub(super) fn insert(&mut self, key: CacheKey, entry: CacheEntry, now_ms: u64) {
        let stamp = self.stamp();
        let now_ready = is_ready(&entry);
        if let Some(slot) = self.map.get_mut(&key) {
            let (old, was) = (slot.stamp, is_ready(&slot.entry));
            slot.entry = entry;
            slot.stamp = stamp;
            slot.used_ms = now_ms;
            self.reorder(old, was, stamp, now_ready);
        } else {
            self.bytes += cost(&key);
            let k = Arc::new(key);
            self.order(now_ready).insert(stamp, Arc::clone(&k));
            self.map.insert(
                k,
                Slot {
                    entry,
                    stamp,
                    used_ms: now_ms,
                },
            );
        }
        while self.map.len() > 1
            && (self.map.len() > self.limits.entries || self.bytes > self.limits.bytes)
        {
            self.drop_oldest();
        }
        self.age(now_ms);
    }

    /// Drops the least recently used entry that is not `Ready`, or if all
    /// are, the least recently used one.
    fn drop_oldest(&mut self) -> bool {
        let Some((_, k)) = self.other.pop_first().or_else(|| self.ready.pop_first()) else {
            return false;
        };
        self.bytes -= cost(&k);
        self.map.remove(&*k);
        self.dropped += 1;
        true
    }

    /// Drops the entries not used for the idle time. Cheap when none is.
    pub(super) fn age(&mut self, now_ms: u64) {
        if self.limits.idle_ms == 0 {
            return;
        }
        let cutoff = now_ms.saturating_sub(self.limits.idle_ms);
        for ready in [false, true] {
            loop {
                let order = if ready { &self.ready } else { &self.other };
                let Some((&stamp, k)) = order.first_key_value() else {
                    break;
                };
                let idle = self.map.get(&**k).is_none_or(|s| s.used_ms < cutoff);
                if !idle {
                    break;
                }
                if let Some(k) = self.order(ready).remove(&stamp) {
                    self.bytes -= cost(&k);
                    self.map.remove(&*k);
                    self.dropped += 1;
                }
            }
        }
    }

    /// Drops `key`'s entry.
    pub(super) fn remove(&mut self, key: &CacheKey) {
        if let Some((k, slot)) = self.map.remove_entry(key) {
            self.order(is_ready(&slot.entry)).remove(&slot.stamp);
            self.bytes -= cost(&k);
        }
    }

    /// Keeps only the entries for which `f` is true.
    pub(super) fn retain(&mut self, mut f: impl FnMut(&CacheKey, &CacheEntry) -> bool) {
        let doomed: Vec<Arc<CacheKey>> = self
            .map
            .iter()
            .filter(|(k, s)| !f(k, &s.entry))
            .map(|(k, _)| Arc::clone(k))
            .collect();
        for k in doomed {
            self.remove(&k);
        }
    }

    /// Entries.
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    /// Bytes charged (see [`ENTRY_OVERHEAD`]).
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Entries dropped by the caps or by age so far.
    pub(super) fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmdedup_protocol::control::MissReason;

    fn key(i: u32, len: usize) -> CacheKey {
        let mut p = format!("d/{i}/").into_bytes();
        p.resize(len.max(p.len()), b'x');
        (1, p.into())
    }

    fn missing() -> CacheEntry {
        CacheEntry::Missing {
            reason: MissReason::NotFound,
            retry_at_ms: None,
            drops_seen: None,
        }
    }

    fn check(c: &PathCache) {
        assert_eq!(c.map.len(), c.ready.len() + c.other.len());
        let bytes: usize = c.map.keys().map(|k| cost(k)).sum();
        assert_eq!(bytes, c.bytes);
        for (k, s) in &c.map {
            let order = if is_ready(&s.entry) {
                &c.ready
            } else {
                &c.other
            };
            assert!(Arc::ptr_eq(&order[&s.stamp], k));
        }
        assert!(c.map.len() <= c.limits.entries);
        assert!(c.map.len() <= 1 || c.bytes <= c.limits.bytes);
    }

    #[test]
    fn entries_cap_drops_least_recently_used() {
        let mut c = PathCache::new(CacheLimits {
            entries: 3,
            bytes: 1 << 20,
            idle_ms: 0,
        });
        for i in 0..3 {
            c.insert(key(i, 8), missing(), 0);
        }
        // Use 0, so 1 is the oldest.
        assert!(c.get(&key(0, 8), 1).is_some());
        c.insert(key(3, 8), CacheEntry::Loading, 2);
        check(&c);
        assert!(c.peek(&key(1, 8)).is_none());
        assert!(c.peek(&key(0, 8)).is_some());
        assert!(c.peek(&key(3, 8)).is_some());
        assert_eq!(c.dropped(), 1);
    }

    fn ready() -> CacheEntry {
        CacheEntry::Ready {
            host: crate::namespace::HostIdentity {
                dev: 1,
                ino: 2,
                size: 3,
                mtime_ns: 4,
                fingerprint: None,
            },
            map: 5,
            recheck_at_ms: 0,
        }
    }

    #[test]
    fn a_flood_of_made_up_paths_pushes_out_no_loaded_file() {
        let mut c = PathCache::new(CacheLimits {
            entries: 100,
            bytes: 1 << 20,
            idle_ms: 0,
        });
        for i in 0..10 {
            c.insert(key(i, 8), ready(), 0);
        }
        // A path first loading, then loaded, moves to the protected side.
        c.insert(key(10, 8), CacheEntry::Loading, 0);
        assert!(c.update(&key(10, 8), ready()));
        for i in 1000..100_000 {
            c.insert(key(i, 30), missing(), i as u64);
            check(&c);
        }
        for i in 0..=10 {
            assert!(
                matches!(c.peek(&key(i, 8)), Some(CacheEntry::Ready { .. })),
                "{i}"
            );
        }
        // When everything is Ready, the least recently used Ready goes.
        let mut c = PathCache::new(CacheLimits {
            entries: 2,
            bytes: 1 << 20,
            idle_ms: 0,
        });
        c.insert(key(0, 8), ready(), 0);
        c.insert(key(1, 8), ready(), 0);
        c.get(&key(0, 8), 1);
        c.insert(key(2, 8), ready(), 2);
        check(&c);
        assert!(c.peek(&key(1, 8)).is_none());
    }

    #[test]
    fn bytes_cap_counts_long_paths() {
        let mut c = PathCache::new(CacheLimits {
            entries: 1000,
            bytes: 4 * (4096 + ENTRY_OVERHEAD),
            idle_ms: 0,
        });
        for i in 0..100 {
            c.insert(key(i, 4096), missing(), i as u64);
            check(&c);
        }
        assert_eq!(c.len(), 4);
        // A short path still fits beside them once the oldest went.
        c.insert(key(1000, 8), missing(), 200);
        check(&c);
        assert!(c.peek(&key(1000, 8)).is_some());
    }

    #[test]
    fn idle_entries_age_out_of_every_kind() {
        let mut c = PathCache::new(CacheLimits {
            entries: 100,
            bytes: 1 << 20,
            idle_ms: 1000,
        });
        c.insert(key(0, 8), missing(), 0);
        c.insert(key(1, 8), CacheEntry::Loading, 10);
        c.insert(key(2, 8), missing(), 500);
        c.get(&key(0, 8), 900);
        c.age(1400);
        check(&c);
        assert!(c.peek(&key(1, 8)).is_none(), "idle since 10");
        assert!(c.peek(&key(0, 8)).is_some(), "used at 900");
        assert!(c.peek(&key(2, 8)).is_some(), "used at 500");
        c.age(5000);
        assert_eq!(c.len(), 0);
        assert_eq!(c.bytes(), 0);
    }

    #[test]
    fn update_remove_and_retain_keep_the_books() {
        let mut c = PathCache::new(CacheLimits::default());
        for i in 0..50 {
            c.insert(key(i, 10 + i as usize), missing(), 0);
        }
        assert!(c.update(&key(7, 17), CacheEntry::Loading));
        assert!(!c.update(&key(99, 8), CacheEntry::Loading));
        c.remove(&key(8, 18));
        c.retain(|k, _| k.1.len() % 2 == 0);
        check(&c);
        assert_eq!(c.len(), 24);
        assert!(matches!(
            c.peek(&key(10, 20)),
            Some(CacheEntry::Missing { .. })
        ));
    }
}
