//! Answering a hint: from the path cache and the store index only, never
//! with I/O (a path the service does not know yet is queued for a loader
//! and answered "loading"). In an `always_loading` namespace a VM's first
//! hint for a file version is "loading" whatever the pool holds (see
//! [`always_loading`](super::always_loading)). Releases and
//! acknowledgements from guests.

use std::sync::atomic::Ordering;
use std::time::Instant;

use vmdedup_protocol::control::MissReason;
use vmdedup_protocol::pool::TableRef;

use super::always_loading::Told;
use super::queue::{LoadJob, Push, Requester};
use super::{lock, CacheEntry, CacheKey, HintService};
use crate::namespace::{check_rel_path, GuestIdentity, Namespace};
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

/// What a hint asks of a load: to be told when it is done
/// ([`HINT_FLAG_NOTIFY_LOADED`](vmdedup_protocol::abi::HINT_FLAG_NOTIFY_LOADED)),
/// or that none be queued for it
/// ([`HINT_FLAG_POOL_ONLY`](vmdedup_protocol::abi::HINT_FLAG_POOL_ONLY));
/// and what became of that.
struct Notify {
    /// The VM and its request id, if the hint asked to be told.
    asks: Option<(VmId, u64)>,
    /// Recorded as a waiter of a load (see [`notify`](super::notify)).
    noted: bool,
    /// A pool-only hint: a miss queues no load.
    pool_only: bool,
    /// A load this hint would have queued (or joined) was not, because it
    /// is pool-only.
    declined: bool,
}

impl Notify {
    /// Records the hint as waiting for the load of `key` the caller holds
    /// the `jobs` lock over (queued, running or backlogged for its VM).
    fn record(&mut self, waiters: &std::sync::Mutex<super::notify::LoadWaiters>, key: &CacheKey) {
        if let Some((vm, request_id)) = self.asks.take() {
            self.noted = lock(waiters).add(key, vm, request_id);
        }
    }
}

impl HintService {
    /// Answers one hint of VM `vm`. Never blocks on I/O, never panics on input.
    pub fn answer(&self, vm: VmId, hint: &Hint<'_>) -> HintResult {
        self.answer_noting(vm, hint).0
    }

    /// [`HintService::answer`], and whether the VM will be told when the
    /// file is loaded: a "loading" answer to a hint that asked, with a load
    /// of the file queued, running or in the VM's backlog (see
    /// [`notify`](super::notify)).
    pub fn answer_noting(&self, vm: VmId, hint: &Hint<'_>) -> (HintResult, bool) {
        let t0 = Instant::now();
        let mut notify = Notify {
            asks: hint.notify_loaded.then_some((vm, hint.request_id)),
            noted: false,
            pool_only: hint.pool_only,
            declined: false,
        };
        let mut r = self.answer_inner(vm, hint, &mut notify);
        if notify.declined && r == HintResult::Miss(MissReason::Loading) {
            // Nothing loads it: the pool had no room to keep it.
            r = HintResult::Miss(MissReason::PoolFull);
        }
        // A waiter is recorded only with the load that makes the answer
        // "loading"; the answer says so only then.
        let noted = notify.noted && r == HintResult::Miss(MissReason::Loading);
        let us = t0.elapsed().as_micros() as u64;
        let miss = match r {
            HintResult::Hit(_) => None,
            HintResult::Miss(m) => Some(m),
        };
        self.shared.stats.record(vm, miss, us);
        (r, noted)
    }

    fn answer_inner(&self, vm: VmId, hint: &Hint<'_>, notify: &mut Notify) -> HintResult {
        let Some(ns) = self.namespace_for(vm, hint.namespace_id) else {
            return HintResult::Miss(MissReason::NoNamespace);
        };
        if let Err(e) = check_rel_path(hint.path) {
            return HintResult::Miss(e.miss_reason());
        }
        let now = self.now_ms();
        let key: CacheKey = (hint.namespace_id, hint.path.into());
        let entry = lock(&self.shared.cache).get(&key, now);
        let masked = ns.config().always_loading;
        if masked {
            if let Some(r) = self.mask_first_hint(vm, &key, entry.as_ref(), notify) {
                return r;
            }
        }
        let r = self.answer_entry(vm, hint, &ns, key, entry, now, notify);
        if masked && r == HintResult::Miss(MissReason::Loading) {
            // Told "loading" for real: the version loaded next is answered
            // normally, as it is after a masked "loading".
            lock(&self.shared.told).set(vm, hint.namespace_id, hint.path, Told::Pending);
        }
        r
    }

    /// In an `always_loading` namespace: "loading" if this is `vm`'s first
    /// hint for the loaded version (or known miss) of `key`, with a load
    /// queued for it as for a real miss but without touching the path
    /// cache, which other VMs' answers come from; "loading" again while a
    /// load of the path is queued or running. `None`: answer normally.
    fn mask_first_hint(
        &self,
        vm: VmId,
        key: &CacheKey,
        entry: Option<&CacheEntry>,
        notify: &mut Notify,
    ) -> Option<HintResult> {
        let loading = Some(HintResult::Miss(MissReason::Loading));
        let version = match entry {
            Some(CacheEntry::Ready { map, .. }) => *map,
            Some(CacheEntry::Missing { .. }) => MapId::MAX,
            // Answered "loading" anyway.
            Some(CacheEntry::Loading) | None => return None,
        };
        let told = lock(&self.shared.told).get(vm, key.0, &key.1);
        match told {
            Some(Told::Map(m)) if m == version => return None,
            Some(Told::Masked(m)) if m == version => {
                let jobs = lock(&self.shared.jobs);
                if jobs.will_load(key, Some(vm)) {
                    notify.record(&self.shared.waiters, key);
                    return loading;
                }
                drop(jobs);
                lock(&self.shared.told).set(vm, key.0, &key.1, Told::Map(version));
                return None;
            }
            // Told "loading" for real: the version loaded since is answered
            // as after a real miss. A known miss is answered normally too.
            Some(Told::Pending) => {
                lock(&self.shared.told).set(vm, key.0, &key.1, Told::Map(version));
                return None;
            }
            Some(Told::Map(_)) | Some(Told::Masked(_)) if version == MapId::MAX => return None,
            _ => {}
        }
        self.shared.masked_hits.fetch_add(1, Ordering::Relaxed);
        let push = self.push_job(key, Some(vm), notify);
        match push {
            Push::Queued => self.shared.jobs_cv.notify_one(),
            // Past its bounds a real miss keeps nothing either and is
            // masked again next time, until a load can be queued.
            Push::Full => return loading,
            Push::Duplicate | Push::Backlogged => {}
        }
        lock(&self.shared.told).set(vm, key.0, &key.1, Told::Masked(version));
        loading
    }

    /// The ordinary answer for a hint whose path cache entry is `entry`.
    #[allow(clippy::too_many_arguments)]
    fn answer_entry(
        &self,
        vm: VmId,
        hint: &Hint<'_>,
        ns: &Namespace,
        key: CacheKey,
        entry: Option<CacheEntry>,
        now: u64,
        notify: &mut Notify,
    ) -> HintResult {
        match entry {
            Some(CacheEntry::Ready {
                host,
                map,
                recheck_at_ms,
            }) => {
                let cfg = ns.config();
                if !host.matches(
                    &guest_identity(hint),
                    cfg.mtime_granularity_ns,
                    cfg.require_fingerprint,
                ) {
                    // The host file may have changed to the guest's version
                    // since it was resolved: look again (in a loader, at
                    // most every `recheck_ms` for this path). Until then
                    // the cached version stands.
                    if recheck_at_ms <= now && self.recheck(key, vm, now, notify) {
                        return HintResult::Miss(MissReason::Loading);
                    }
                    return HintResult::Miss(MissReason::IdentityMismatch);
                }
                match self.with_store(|s| s.hold(vm, map)) {
                    Ok(loc) => HintResult::Hit(loc),
                    Err(StoreError::CutOff(_)) | Err(StoreError::UnknownVm(_)) => {
                        HintResult::Miss(MissReason::CutOff)
                    }
                    Err(StoreError::OverQuota(_)) => HintResult::Miss(MissReason::OverQuota),
                    Err(StoreError::TooLarge(_)) => HintResult::Miss(MissReason::TooLarge),
                    Err(_) => {
                        // Evicted or revoked since: load it again.
                        self.enqueue(key, Some(vm), notify);
                        HintResult::Miss(MissReason::Loading)
                    }
                }
            }
            Some(CacheEntry::Loading) => {
                // Normally queued or running (found so, and waited for); if
                // its job was lost (the entry outlived a bound), queued again.
                self.enqueue(key, Some(vm), notify);
                HintResult::Miss(MissReason::Loading)
            }
            Some(CacheEntry::Missing {
                reason,
                retry_at_ms,
                drops_seen,
            }) => {
                let room =
                    drops_seen.is_some_and(|d| lock(&self.shared.store).counts().maps_dropped != d);
                if room || retry_at_ms.is_some_and(|t| t <= now) {
                    self.enqueue(key, Some(vm), notify);
                    HintResult::Miss(MissReason::Loading)
                } else {
                    HintResult::Miss(reason)
                }
            }
            None => {
                self.enqueue(key, Some(vm), notify);
                HintResult::Miss(MissReason::Loading)
            }
        }
    }

    /// Puts a load of `key` for `by` on the queues, within `by`'s bound of
    /// loads, or in its backlog; the caller wakes a loader if it was
    /// queued. The one place a load job is made: misses, rechecks and
    /// masked first hints. A hint that asked to be told when its file is
    /// loaded waits for this load, or the one found queued or running:
    /// recorded under the same lock, before a loader can run it (a small
    /// file loads faster than a descheduled poller gets back). A pool-only
    /// hint queues nothing: it is answered as past its VM's bounds.
    fn push_job(&self, key: &CacheKey, by: Requester, notify: &mut Notify) -> Push {
        if notify.pool_only {
            notify.declined = true;
            return Push::Full;
        }
        let mut jobs = lock(&self.shared.jobs);
        let push = jobs.push(LoadJob {
            key: key.clone(),
            by,
        });
        if push != Push::Full {
            notify.record(&self.shared.waiters, key);
        }
        push
    }

    /// Queues a load of `key` for `by` unless one is queued or running, and
    /// marks it loading. Past `by`'s bound of loads it waits in `by`'s
    /// backlog, not marked (another VM's hint queues it at once); past the
    /// backlog nothing is kept: the guest is answered "loading" and asks
    /// again later.
    fn enqueue(&self, key: CacheKey, by: Requester, notify: &mut Notify) -> Push {
        let now = self.now_ms();
        let push = {
            let mut c = lock(&self.shared.cache);
            let push = self.push_job(&key, by, notify);
            if push == Push::Queued {
                c.insert(key, CacheEntry::Loading, now);
            }
            push
        };
        if push == Push::Queued {
            self.shared.jobs_cv.notify_one();
        }
        push
    }

    /// Queues a second look at a `Ready` path whose host file may have
    /// changed, keeping the entry (other guests still hit it) but pushing
    /// its next recheck out. Returns whether a look is queued or running.
    fn recheck(&self, key: CacheKey, vm: VmId, now: u64, notify: &mut Notify) -> bool {
        let mut c = lock(&self.shared.cache);
        let push = self.push_job(&key, Some(vm), notify);
        match push {
            Push::Queued => {
                if let Some(CacheEntry::Ready { host, map, .. }) = c.peek(&key).cloned() {
                    c.update(
                        &key,
                        CacheEntry::Ready {
                            host,
                            map,
                            recheck_at_ms: now.saturating_add(self.shared.cfg.recheck_ms),
                        },
                    );
                }
                drop(c);
                self.shared.jobs_cv.notify_one();
                true
            }
            Push::Duplicate | Push::Backlogged => true,
            // This VM is at its bounds: it asks again later.
            Push::Full => true,
        }
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
