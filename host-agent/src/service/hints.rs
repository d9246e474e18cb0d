//! Answering a hint: from the path cache and the store index only, never
//! with I/O (a path the service does not know yet is queued for a loader
//! and answered "loading"). Releases and acknowledgements from guests.

use std::time::Instant;

use vmdedup_protocol::control::MissReason;
use vmdedup_protocol::pool::TableRef;

use super::{lock, CacheEntry, CacheKey, HintService};
use crate::namespace::{check_rel_path, GuestIdentity};
use crate::ring::handler::Hint;
use crate::store::{MapId, StoreError, VmId};

/// The service's answer to a hint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HintResult {
    /// Served from the pool; the VM now holds the map.
    Hit(TableRef),
    /// Not served.
    Miss(MissReason),
}

/// The guest's identity of its copy of the hinted file.
fn guest_identity(hint: &Hint<'_>) -> GuestIdentity {
    GuestIdentity {
        size: hint.file_size,
        mtime_ns: hint.mtime_ns,
        fingerprint: hint.fingerprint,
    }
}

impl HintService {
    /// Answers one hint of VM `vm`. Never blocks on I/O, never panics on input.
    pub fn answer(&self, vm: VmId, hint: &Hint<'_>) -> HintResult {
        let t0 = Instant::now();
        let r = self.answer_inner(vm, hint);
        let us = t0.elapsed().as_micros() as u64;
        let miss = match r {
            HintResult::Hit(_) => None,
            HintResult::Miss(m) => Some(m),
        };
        self.shared.stats.record(vm, miss, us);
        r
    }

    fn answer_inner(&self, vm: VmId, hint: &Hint<'_>) -> HintResult {
        let Some(ns) = self.namespace_for(vm, hint.namespace_id) else {
            return HintResult::Miss(MissReason::NoNamespace);
        };
        if let Err(e) = check_rel_path(hint.path) {
            return HintResult::Miss(e.miss_reason());
        }
        let now = self.now_ms();
        let key: CacheKey = (hint.namespace_id, hint.path.into());
        let entry = lock(&self.shared.cache).get(&key).cloned();
        match entry {
            Some(CacheEntry::Ready { host, map }) => {
                let cfg = ns.config();
                if !host.matches(
                    &guest_identity(hint),
                    cfg.mtime_granularity_ns,
                    cfg.require_fingerprint,
                ) {
                    return HintResult::Miss(MissReason::IdentityMismatch);
                }
                match self.with_store(|s| s.hold(vm, map)) {
                    Ok(loc) => HintResult::Hit(loc),
                    Err(StoreError::CutOff(_)) | Err(StoreError::UnknownVm(_)) => {
                        HintResult::Miss(MissReason::CutOff)
                    }
                    Err(_) => {
                        // Evicted or revoked since: load it again.
                        self.enqueue(key);
                        HintResult::Miss(MissReason::Loading)
                    }
                }
            }
            Some(CacheEntry::Loading) => HintResult::Miss(MissReason::Loading),
            Some(CacheEntry::Missing {
                reason,
                retry_at_ms,
                drops_seen,
            }) => {
                let room =
                    drops_seen.is_some_and(|d| lock(&self.shared.store).counts().maps_dropped != d);
                if room || retry_at_ms.is_some_and(|t| t <= now) {
                    self.enqueue(key);
                    HintResult::Miss(MissReason::Loading)
                } else {
                    HintResult::Miss(reason)
                }
            }
            None => {
                self.enqueue(key);
                HintResult::Miss(MissReason::Loading)
            }
        }
    }

    /// Queues a load of `key` unless one is queued or running.
    pub(super) fn enqueue(&self, key: CacheKey) {
        {
            let mut c = lock(&self.shared.cache);
            if matches!(c.get(&key), Some(CacheEntry::Loading)) {
                return;
            }
            c.insert(key.clone(), CacheEntry::Loading);
        }
        lock(&self.shared.jobs).push_back(key);
        self.shared.jobs_cv.notify_one();
    }

    /// The VM let go of a map (it closed the file).
    pub fn release(&self, vm: VmId, map: MapId) {
        let now = self.now_ms();
        self.with_store(|s| s.release(vm, map, now));
    }

    /// The VM acknowledged a revocation. Returns whether it owed one.
    pub fn ack(&self, vm: VmId, map: MapId) -> bool {
        let now = self.now_ms();
        self.with_store(|s| s.ack(vm, map, now))
    }
}
