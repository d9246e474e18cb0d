//! The hint service: namespaces + resolver + page store + loader threads +
//! stats, behind one object that pollers call ([`HintService::answer`], and
//! the ring [`Handler`](crate::ring::handler::Handler) impl) and the control
//! channel and CLI drive (status, files, warm, evict, VMs).
//!
//! A poller never does I/O here: a hint is answered from the path cache and
//! the store index; an unknown path is queued for a loader thread and
//! answered "loading" ([`MissReason::Loading`]); the next hint for it hits.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmdedup_protocol::control::{
    bounded_str, FileReport, MissReason, NamespaceReport, StatusReport, VmReport, MAX_VMS,
};
use vmdedup_protocol::pool::FRAME_SIZE;

use super::{
    page_hash, FileKey, MapId, MapLabel, PageStore, StoreError, StoreEvent, TableLocation, VmId,
};
use crate::namespace::{GuestIdentity, HostIdentity, Namespace, ResolveError};
use crate::stats::{bytes_saved, Stats};

/// Receives what VMs must be told; the ring layer implements it by writing
/// event-ring entries. Called without any service lock held.
pub trait EventSink: Send + Sync {
    /// Ask `vm` to stop using `map` and acknowledge ([`HintService::ack`]).
    fn revoke(&self, vm: VmId, map: &TableLocation);
    /// `vm` was cut off from the pool (it did not acknowledge in time).
    fn cut_off(&self, vm: VmId);
}

/// A hint, as the service needs it.
#[derive(Clone, Copy, Debug)]
pub struct HintRequest<'a> {
    /// Namespace id.
    pub namespace_id: u32,
    /// Namespace-relative path (untrusted).
    pub path: &'a [u8],
    /// The guest's identity of its copy.
    pub identity: GuestIdentity,
}

/// The service's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HintResult {
    /// Served from the pool; the VM now holds the map.
    Hit(TableLocation),
    /// Not served.
    Miss(MissReason),
}

/// Tunables.
#[derive(Clone, Copy, Debug)]
pub struct ServiceConfig {
    /// Loader threads (0: loads happen only through [`HintService::load_pending`]).
    pub workers: usize,
    /// Pages read, hashed and stored per store-lock acquisition.
    pub chunk_pages: usize,
    /// After an I/O error, how long before a hint triggers another load (a
    /// full pool is retried as soon as a file map was dropped).
    pub retry_after_ms: u64,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            workers: 2,
            chunk_pages: 256,
            retry_after_ms: 100,
        }
    }
}

#[derive(Clone, Debug)]
enum CacheEntry {
    Loading,
    Ready {
        host: HostIdentity,
        map: MapId,
    },
    /// `retry_at_ms`: I/O errors are retried after a delay; `drops_seen`: a
    /// full pool is retried once a map was dropped since.
    Missing {
        reason: MissReason,
        retry_at_ms: Option<u64>,
        drops_seen: Option<u64>,
    },
}

#[derive(Clone, Debug)]
struct VmInfo {
    name: String,
    domain: String,
}

type CacheKey = (u32, Box<[u8]>);

struct Shared {
    store: Mutex<PageStore>,
    namespaces: RwLock<BTreeMap<u32, Arc<Namespace>>>,
    vms: RwLock<BTreeMap<VmId, VmInfo>>,
    cache: Mutex<HashMap<CacheKey, CacheEntry>>,
    jobs: Mutex<VecDeque<CacheKey>>,
    jobs_cv: Condvar,
    sink: RwLock<Option<Arc<dyn EventSink>>>,
    stats: Stats,
    cfg: ServiceConfig,
    start: Instant,
    stop: AtomicBool,
}

/// Progress of a warm-up, for a progress bar.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WarmProgress {
    /// Files to do.
    pub files_total: u64,
    /// Files done (loaded, present or skipped).
    pub files_done: u64,
    /// Pages loaded or found present so far.
    pub pages: u64,
    /// Files skipped (unreadable, not regular, pool full).
    pub skipped: u64,
}

/// Errors of control operations (not of hints: those are misses).
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// No such namespace, or the caller may not use it.
    #[error("no namespace {0:?} for this caller")]
    NoNamespace(String),
    /// The path is invalid or not found.
    #[error("{0}")]
    Resolve(#[from] ResolveError),
    /// VM name or id in use.
    #[error("VM {0:?} exists")]
    VmExists(String),
    /// Invalid VM or domain name.
    #[error("invalid name {0:?}")]
    BadName(String),
}

/// See the module documentation. Cheap to clone (an `Arc`).
#[derive(Clone)]
pub struct HintService {
    shared: Arc<Shared>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl std::fmt::Debug for HintService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HintService").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl HintService {
    /// Builds the service over a store and namespaces, and starts the loader
    /// threads.
    pub fn new(store: PageStore, namespaces: Vec<Namespace>, cfg: ServiceConfig) -> Self {
        let ns = namespaces
            .into_iter()
            .map(|n| (n.id(), Arc::new(n)))
            .collect();
        let shared = Arc::new(Shared {
            store: Mutex::new(store),
            namespaces: RwLock::new(ns),
            vms: RwLock::new(BTreeMap::new()),
            cache: Mutex::new(HashMap::new()),
            jobs: Mutex::new(VecDeque::new()),
            jobs_cv: Condvar::new(),
            sink: RwLock::new(None),
            stats: Stats::default(),
            cfg,
            start: Instant::now(),
            stop: AtomicBool::new(false),
        });
        let mut threads = Vec::new();
        for i in 0..cfg.workers {
            let s = shared.clone();
            let t = std::thread::Builder::new()
                .name(format!("vmdedup-load{i}"))
                .spawn(move || worker(&s))
                .expect("spawning a loader thread");
            threads.push(t);
        }
        HintService {
            shared,
            threads: Arc::new(Mutex::new(threads)),
        }
    }

    /// Milliseconds since the service started (the store's clock).
    pub fn now_ms(&self) -> u64 {
        self.shared.start.elapsed().as_millis() as u64
    }

    /// Sets where revocations and cut-offs go.
    pub fn set_event_sink(&self, sink: Arc<dyn EventSink>) {
        *self.shared.sink.write().unwrap_or_else(|e| e.into_inner()) = Some(sink);
    }

    /// Registers VM `id` (the ring id) with its name and trust domain.
    pub fn add_vm(&self, id: VmId, name: &str, domain: &str) -> Result<(), ServiceError> {
        if !crate::namespace::valid_name(name) || !crate::namespace::valid_name(domain) {
            return Err(ServiceError::BadName(format!("{name}/{domain}")));
        }
        let mut vms = self.shared.vms.write().unwrap_or_else(|e| e.into_inner());
        if vms.contains_key(&id) || vms.values().any(|v| v.name == name) {
            return Err(ServiceError::VmExists(name.to_string()));
        }
        vms.insert(
            id,
            VmInfo {
                name: name.to_string(),
                domain: domain.to_string(),
            },
        );
        lock(&self.shared.store).add_vm(id);
        Ok(())
    }

    /// The id of the VM called `name`.
    pub fn vm_id(&self, name: &str) -> Option<VmId> {
        self.shared
            .vms
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(_, v)| v.name == name)
            .map(|(&id, _)| id)
    }

    /// The VM is gone (its QEMU exited): drops everything it held.
    pub fn remove_vm(&self, id: VmId) {
        self.shared
            .vms
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        let now = self.now_ms();
        self.with_store(|s| s.remove_vm(id, now));
    }

    /// Serves a cut-off VM again (after its ring was reset).
    pub fn reinstate_vm(&self, id: VmId) {
        self.with_store(|s| s.reinstate_vm(id));
    }

    /// Whether VM `id` is cut off.
    pub fn is_cut_off(&self, id: VmId) -> bool {
        lock(&self.shared.store).is_cut_off(id)
    }

    fn with_store<R>(&self, f: impl FnOnce(&mut PageStore) -> R) -> R {
        let (r, events) = {
            let mut s = lock(&self.shared.store);
            let r = f(&mut s);
            (r, s.take_events())
        };
        deliver(&self.shared, events);
        r
    }

    /// Answers one hint of VM `vm`. Never blocks on I/O, never panics on input.
    pub fn answer(&self, vm: VmId, hint: &HintRequest<'_>) -> HintResult {
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

    fn namespace_for(&self, vm: VmId, ns: u32) -> Option<Arc<Namespace>> {
        let domain = self
            .shared
            .vms
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&vm)?
            .domain
            .clone();
        let n = self
            .shared
            .namespaces
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&ns)?
            .clone();
        n.allows(&domain).then_some(n)
    }

    fn answer_inner(&self, vm: VmId, hint: &HintRequest<'_>) -> HintResult {
        let Some(ns) = self.namespace_for(vm, hint.namespace_id) else {
            return HintResult::Miss(MissReason::NoNamespace);
        };
        if let Err(e) = crate::namespace::check_rel_path(hint.path) {
            return HintResult::Miss(e.miss_reason());
        }
        let now = self.now_ms();
        let key: CacheKey = (hint.namespace_id, hint.path.into());
        let entry = lock(&self.shared.cache).get(&key).cloned();
        match entry {
            Some(CacheEntry::Ready { host, map }) => {
                if !host.matches(&hint.identity, ns.config().mtime_granularity_ns) {
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

    fn enqueue(&self, key: CacheKey) {
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

    /// Runs queued loads on the calling thread until the queue is empty
    /// (services built with `workers: 0`, tests). Returns how many ran.
    pub fn load_pending(&self) -> usize {
        let mut n = 0;
        loop {
            let Some(job) = lock(&self.shared.jobs).pop_front() else {
                break;
            };
            run_job(&self.shared, job);
            n += 1;
        }
        n
    }

    /// Waits until no load is queued or running (tests, `warm`). Gives up
    /// after `limit`; returns whether it is idle.
    pub fn wait_idle(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let queued = !lock(&self.shared.jobs).is_empty();
            let busy = queued
                || lock(&self.shared.cache)
                    .values()
                    .any(|e| matches!(e, CacheEntry::Loading));
            if !busy {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
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

    /// Enforces revocation deadlines (call a few times per `ack_timeout`).
    pub fn tick(&self) {
        let now = self.now_ms();
        self.tick_at(now);
    }

    /// [`tick`](Self::tick) with an explicit clock (tests).
    pub fn tick_at(&self, now_ms: u64) {
        self.with_store(|s| s.tick(now_ms));
    }

    /// Starts a thread that calls [`tick`](Self::tick) every `period`.
    pub fn spawn_ticker(&self, period: Duration) {
        let me = self.clone();
        let t = std::thread::Builder::new()
            .name("vmdedup-tick".into())
            .spawn(move || {
                while !me.shared.stop.load(Ordering::Relaxed) {
                    std::thread::sleep(period);
                    me.tick();
                }
            })
            .expect("spawning the tick thread");
        lock(&self.threads).push(t);
    }

    /// Stops the loader and tick threads and waits for them.
    pub fn shutdown(&self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.jobs_cv.notify_all();
        let threads = std::mem::take(&mut *lock(&self.threads));
        for t in threads {
            let _ = t.join();
        }
    }

    /// Namespace by name, if `vm` (or the host, `None`) may use it.
    pub fn namespace_named(&self, name: &str, vm: Option<VmId>) -> Option<Arc<Namespace>> {
        let n = self
            .shared
            .namespaces
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .find(|n| n.name() == name)?
            .clone();
        match vm {
            None => Some(n),
            Some(vm) => self.namespace_for(vm, n.id()),
        }
    }

    /// Loads one file of a namespace now, on the calling thread. Returns its
    /// page count.
    pub fn load_now(&self, ns: &Namespace, rel: &[u8]) -> Result<u32, MissReason> {
        let key: CacheKey = (ns.id(), rel.into());
        lock(&self.shared.cache).insert(key.clone(), CacheEntry::Loading);
        run_job(&self.shared, key.clone());
        match lock(&self.shared.cache).get(&key) {
            Some(CacheEntry::Ready { host, .. }) => {
                Ok(vmdedup_protocol::pool::pages_for_size(host.size) as u32)
            }
            Some(CacheEntry::Missing { reason, .. }) => Err(*reason),
            _ => Err(MissReason::IoError),
        }
    }

    /// Preloads `rel` (a file or a directory; empty: the whole namespace) of
    /// namespace `ns_name`, on the calling thread, reporting progress after
    /// every file. `vm` restricts to the namespaces that VM may use.
    pub fn warm(
        &self,
        ns_name: &str,
        rel: &[u8],
        vm: Option<VmId>,
        progress: &mut dyn FnMut(&WarmProgress),
    ) -> Result<WarmProgress, ServiceError> {
        let ns = self
            .namespace_named(ns_name, vm)
            .ok_or_else(|| ServiceError::NoNamespace(ns_name.to_string()))?;
        let files = ns.list_files(rel)?;
        let mut p = WarmProgress {
            files_total: files.len() as u64,
            ..WarmProgress::default()
        };
        progress(&p);
        for f in files {
            match self.load_now(&ns, &f) {
                Ok(pages) => p.pages += pages as u64,
                Err(_) => p.skipped += 1,
            }
            p.files_done += 1;
            progress(&p);
        }
        Ok(p)
    }

    /// Evicts (unreferenced) or revokes (referenced) the maps of namespace
    /// `ns_name` (all namespaces if empty) whose path is `rel` or beneath it
    /// (all if empty). Returns (dropped, revocations started).
    pub fn evict(&self, ns_name: &str, rel: &str) -> Result<(u64, u64), ServiceError> {
        let ns_id = if ns_name.is_empty() {
            None
        } else {
            Some(
                self.namespace_named(ns_name, None)
                    .ok_or_else(|| ServiceError::NoNamespace(ns_name.to_string()))?
                    .id(),
            )
        };
        let prefix = rel.trim_end_matches('/').to_string();
        let now = self.now_ms();
        let r = self.with_store(|s| {
            s.evict_where(
                |l| {
                    ns_id.is_none_or(|id| id == l.ns)
                        && (prefix.is_empty()
                            || l.path == prefix
                            || (l.path.starts_with(&prefix)
                                && l.path.as_bytes().get(prefix.len()) == Some(&b'/')))
                },
                now,
            )
        });
        // Forget cached answers for what was dropped; the next hint reloads.
        lock(&self.shared.cache)
            .retain(|_, e| !matches!(e, CacheEntry::Ready { .. }) || self.map_is_live(e));
        Ok(r)
    }

    fn map_is_live(&self, e: &CacheEntry) -> bool {
        match e {
            CacheEntry::Ready { host, map } => {
                let key = FileKey {
                    dev: host.dev,
                    ino: host.ino,
                    size: host.size,
                    mtime_ns: host.mtime_ns,
                };
                lock(&self.shared.store).lookup(&key) == Some(*map)
            }
            _ => true,
        }
    }

    /// Status for the host (`None`: every VM) or for one VM (itself only).
    pub fn status(&self, only: Option<VmId>) -> StatusReport {
        let store = lock(&self.shared.store);
        let c = store.counts();
        let generation = store.pool().geometry().generation;
        let vms = self
            .shared
            .vms
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut report = StatusReport {
            pool_generation: generation,
            frames_total: c.frames_total,
            frames_budget: c.frames_budget,
            frames_used: c.frames_used,
            file_maps: c.file_maps,
            bytes_saved: bytes_saved(c.pages_mapped, c.frames_used),
            counters: self.shared.stats.total.snapshot(),
            vms: heapless::Vec::new(),
        };
        report.counters.pages_mapped = c.pages_mapped;
        for (&id, info) in vms
            .iter()
            .filter(|(id, _)| only.is_none_or(|o| o == **id))
            .take(MAX_VMS)
        {
            let h = store.vm_holdings(id).unwrap_or_default();
            let mut counters = self.shared.stats.vm(id).snapshot();
            counters.pages_mapped = h.pages_mapped;
            let _ = report.vms.push(VmReport {
                name: bounded_str(&info.name),
                domain: bounded_str(&info.domain),
                cut_off: h.cut_off,
                maps_held: h.maps_held,
                revocations_pending: h.revocations_pending,
                counters,
            });
        }
        if let Some(vm) = only {
            // A VM sees its own counters as the totals, nothing pool-wide about others.
            let mine = report.vms.first().map(|v| v.counters).unwrap_or_default();
            report.counters = mine;
            report.bytes_saved = 0;
            let _ = vm;
        }
        report
    }

    /// The VMs (`only`: just that one).
    pub fn vms(&self, only: Option<VmId>) -> Vec<VmReport> {
        self.status(only).vms.into_iter().collect()
    }

    /// Namespaces visible to `vm` (`None`: all), with their map counts.
    pub fn namespaces(&self, vm: Option<VmId>) -> Vec<NamespaceReport> {
        let maps = lock(&self.shared.store).maps();
        let all: Vec<Arc<Namespace>> = self
            .shared
            .namespaces
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        all.into_iter()
            .filter(|n| vm.is_none_or(|vm| self.namespace_for(vm, n.id()).is_some()))
            .map(|n| NamespaceReport {
                name: bounded_str(n.name()),
                file_maps: maps.iter().filter(|m| m.label.ns == n.id()).count() as u32,
            })
            .collect()
    }

    /// File maps in namespaces visible to `vm` (`None`: all), optionally of
    /// one namespace; `(total, page)`.
    pub fn files(
        &self,
        ns_name: &str,
        vm: Option<VmId>,
        offset: usize,
        limit: usize,
    ) -> (u64, Vec<FileReport>) {
        let visible: BTreeMap<u32, String> = self
            .shared
            .namespaces
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|n| ns_name.is_empty() || n.name() == ns_name)
            .filter(|n| vm.is_none_or(|vm| self.namespace_for(vm, n.id()).is_some()))
            .map(|n| (n.id(), n.name().to_string()))
            .collect();
        let maps: Vec<_> = lock(&self.shared.store)
            .maps()
            .into_iter()
            .filter(|m| visible.contains_key(&m.label.ns))
            .collect();
        let page = maps
            .iter()
            .skip(offset)
            .take(limit)
            .map(|m| FileReport {
                ns: bounded_str(&visible[&m.label.ns]),
                path: bounded_str(&m.label.path),
                size: m.size,
                pages: m.pages,
                // A VM does not learn how many others hold a file.
                holders: if vm.is_some() { 0 } else { m.holders },
                revoking: m.revoking,
            })
            .collect();
        (maps.len() as u64, page)
    }

    /// Runs `f` on the store (tests, fake guests reading the pool).
    pub fn inspect_store<R>(&self, f: impl FnOnce(&PageStore) -> R) -> R {
        f(&lock(&self.shared.store))
    }
}

fn deliver(shared: &Shared, events: Vec<StoreEvent>) {
    if events.is_empty() {
        return;
    }
    let sink = shared
        .sink
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if let Some(sink) = sink {
        for e in events {
            match e {
                StoreEvent::Revoke { vm, map } => sink.revoke(vm, &map),
                StoreEvent::CutOff { vm } => sink.cut_off(vm),
            }
        }
    }
}

fn worker(shared: &Shared) {
    loop {
        let job = {
            let mut q = lock(&shared.jobs);
            loop {
                if shared.stop.load(Ordering::Relaxed) {
                    return;
                }
                if let Some(j) = q.pop_front() {
                    break j;
                }
                q = shared
                    .jobs_cv
                    .wait_timeout(q, Duration::from_millis(200))
                    .map(|r| r.0)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
        };
        run_job(shared, job);
    }
}

fn run_job(shared: &Shared, key: CacheKey) {
    let now = shared.start.elapsed().as_millis() as u64;
    let entry = match load(shared, &key, now) {
        Ok((host, map)) => CacheEntry::Ready { host, map },
        Err(reason) => {
            let retry_at_ms = (reason == MissReason::IoError)
                .then(|| shared.start.elapsed().as_millis() as u64 + shared.cfg.retry_after_ms);
            let drops_seen =
                (reason == MissReason::PoolFull).then(|| lock(&shared.store).counts().maps_dropped);
            CacheEntry::Missing {
                reason,
                retry_at_ms,
                drops_seen,
            }
        }
    };
    lock(&shared.cache).insert(key, entry);
}

fn store_op<R>(shared: &Shared, f: impl FnOnce(&mut PageStore) -> R) -> R {
    let (r, events) = {
        let mut s = lock(&shared.store);
        let r = f(&mut s);
        (r, s.take_events())
    };
    deliver(shared, events);
    r
}

fn load(shared: &Shared, key: &CacheKey, now: u64) -> Result<(HostIdentity, MapId), MissReason> {
    let ns = shared
        .namespaces
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&key.0)
        .cloned()
        .ok_or(MissReason::NoNamespace)?;
    let mut rf = ns.resolve(&key.1).map_err(|e| e.miss_reason())?;
    let host = rf.identity;
    let fkey = FileKey {
        dev: host.dev,
        ino: host.ino,
        size: host.size,
        mtime_ns: host.mtime_ns,
    };
    if let Some(map) = lock(&shared.store).lookup(&fkey) {
        return Ok((host, map));
    }
    let label = MapLabel {
        ns: ns.id(),
        path: String::from_utf8_lossy(&key.1).into_owned(),
    };
    let id = store_op(shared, |s| s.begin_load(fkey, label, now)).map_err(store_miss)?;
    let frame = FRAME_SIZE as usize;
    let chunk_pages = shared.cfg.chunk_pages.max(1);
    let mut buf = vec![0u8; chunk_pages * frame];
    let mut remaining = host.size;
    let result = (|| {
        while remaining > 0 {
            let want = (remaining.min(buf.len() as u64)) as usize;
            read_full(&mut rf.file, &mut buf[..want])?;
            remaining -= want as u64;
            let pages = want.div_ceil(frame);
            buf[want..pages * frame].fill(0);
            let hashes: Vec<_> = buf[..pages * frame].chunks(frame).map(page_hash).collect();
            store_op(shared, |s| {
                for (i, h) in hashes.iter().enumerate() {
                    s.add_page(id, h, &buf[i * frame..(i + 1) * frame], now)?;
                }
                Ok::<(), StoreError>(())
            })
            .map_err(store_miss)?;
        }
        // The tree must not have changed under us.
        let st = rf.file.metadata().map_err(|_| MissReason::IoError)?;
        use std::os::unix::fs::MetadataExt;
        if st.size() != host.size
            || st
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(st.mtime_nsec())
                != host.mtime_ns
        {
            return Err(MissReason::IoError);
        }
        store_op(shared, |s| s.finish_load(id)).map_err(store_miss)
    })();
    match result {
        Ok(loc) => Ok((host, loc.file_map_id)),
        Err(e) => {
            store_op(shared, |s| s.abort_load(id));
            Err(e)
        }
    }
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> Result<(), MissReason> {
    let mut off = 0;
    while off < buf.len() {
        match f.read(&mut buf[off..]) {
            Ok(0) => return Err(MissReason::IoError), // shrank
            Ok(n) => off += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Err(MissReason::IoError),
        }
    }
    Ok(())
}

fn store_miss(e: StoreError) -> MissReason {
    match e {
        StoreError::PoolFull => MissReason::PoolFull,
        StoreError::TooLarge(_) => MissReason::TooLarge,
        StoreError::CutOff(_) => MissReason::CutOff,
        _ => MissReason::IoError,
    }
}

impl crate::ring::handler::Handler for HintService {
    fn handle(
        &self,
        ring: crate::ring::handler::RingId,
        hint: &crate::ring::handler::Hint<'_>,
    ) -> crate::ring::handler::Answer {
        use crate::ring::handler::{Answer, FileMapRef};
        let req = HintRequest {
            namespace_id: hint.namespace_id,
            path: hint.path,
            identity: GuestIdentity {
                size: hint.file_size,
                mtime_ns: hint.mtime_ns,
            },
        };
        match self.answer(ring.0, &req) {
            HintResult::Hit(loc) => Answer::Hit(FileMapRef {
                table_offset: loc.table_offset,
                page_count: loc.page_count,
                file_map_id: loc.file_map_id,
                map_generation: loc.map_generation,
                file_size: loc.file_size,
            }),
            HintResult::Miss(m) => Answer::Miss(answer_status(m)),
        }
    }

    fn ack_revoke(&self, ring: crate::ring::handler::RingId, file_map_id: u64) {
        if !self.ack(ring.0, file_map_id) {
            tracing::debug!(
                vm = ring.0,
                map = file_map_id,
                "acknowledgement for a map that was not being revoked"
            );
        }
    }

    fn release(&self, ring: crate::ring::handler::RingId, file_map_id: u64) {
        HintService::release(self, ring.0, file_map_id);
    }
}

/// The ring status a miss is reported with.
pub fn answer_status(m: MissReason) -> vmdedup_protocol::abi::AnswerStatus {
    use vmdedup_protocol::abi::AnswerStatus as S;
    match m {
        MissReason::IdentityMismatch => S::IdentityMismatch,
        MissReason::NotFound | MissReason::NotRegular => S::NotFound,
        MissReason::BadPath => S::BadRequest,
        MissReason::NoNamespace => S::NamespaceNotAllowed,
        // Both mean "ask again later" to the guest.
        MissReason::Loading | MissReason::PoolFull => S::Loading,
        MissReason::TooLarge => S::TooLarge,
        MissReason::CutOff | MissReason::IoError => S::HostError,
    }
}
