//! The hint service: the agent's application layer over the page store.
//!
//! [`HintService`] puts namespaces, the path cache, the
//! [page store](crate::store) and the loader threads behind one object that
//! pollers call ([`HintService::answer`], and the ring
//! [`Handler`](crate::ring::handler::Handler) impl) and the control channel
//! and CLI drive (status, files, warm, evict, VMs). One concern a file:
//!
//! | file | what |
//! | --- | --- |
//! | `mod.rs` | the shared state, start and stop, event delivery |
//! | [`vms`] | the VM registry and which namespaces a VM may use |
//! | [`hints`] | answering a hint from the path cache and the store index |
//! | [`always_loading`] | what each VM was answered "loading" for, where first opens are masked |
//! | [`cache`] | the path cache, bounded and aged |
//! | [`queue`] | per-VM load queues, bounded, served in turn |
//! | [`loader`] | loader threads: a file read, hashed and stored |
//! | [`notify`] | hints waiting to hear that their file is loaded |
//! | [`warm`] | preloading and evicting namespace trees |
//! | [`reports`] | status, VM, namespace and file listings |
//! | [`ticker`] | revocation deadlines |
//! | [`ring`] | the ring [`Handler`](crate::ring::handler::Handler) adapter |
//!
//! A poller never does I/O here: a hint is answered from the path cache and
//! the store index; an unknown path is queued for a loader thread and
//! answered "loading" ([`MissReason::Loading`]); the next hint for it hits.
//!
//! # Bounds
//! Nothing a guest sends grows the agent without limit: the path cache is
//! capped in entries and bytes and ages ([`CacheLimits`]); each VM has its
//! own load queue, bounded in loads queued plus running
//! ([`ServiceConfig::vm_max_loads`]) and in paths waiting behind them
//! ([`ServiceConfig::vm_load_backlog`]; past both a hint is answered
//! "loading" without anything kept) and served in turn with the other
//! VMs'; a VM warms one
//! tree at a time, of at most [`ServiceConfig::warm_max_files`] files. The
//! other per-VM state (counters, holdings) is keyed by VMs the operator
//! registered, not by anything a guest names.
//!
//! # Locks
//! Each lock is held briefly. Where two are held at once they are taken in
//! this order: `cache`, `vms`, `store`, and `cache`, `jobs` (a path is
//! queued and marked loading at once), and `jobs`, `waiters` (a waiter is
//! recorded and taken with its load's state); `jobs` is never held with
//! `vms` or `store`; `sink`, `warming` and `told` are taken alone;
//! `namespaces` is written only at construction. Events the store queued are
//! delivered to the [`EventSink`] after the store lock was released, and the
//! memory of frames it freed is returned to the OS then too
//! ([`PageStore::take_discards`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::Instant;

use vmdedup_protocol::control::MissReason;
use vmdedup_protocol::pool::TableRef;

use crate::namespace::{HostIdentity, Namespace, ResolveError};
use crate::pool::FrameAccess;
use crate::stats::Stats;
use crate::store::{FileKey, MapId, PageStore, StoreEvent, VmId};

pub mod always_loading;
pub mod cache;
pub mod hints;
pub mod loader;
pub mod notify;
pub mod queue;
pub mod reports;
pub mod ring;
pub mod ticker;
pub mod vms;
pub mod warm;

pub use cache::CacheLimits;
pub use hints::HintResult;
pub use queue::Requester;
pub use ring::answer_status;
pub use warm::WarmProgress;

/// Receives what VMs must be told; the ring layer implements it by writing
/// event-ring entries. Called without any service lock held.
pub trait EventSink: Send + Sync {
    /// Ask `vm` to stop using `map` and acknowledge ([`HintService::ack`]).
    fn revoke(&self, vm: VmId, map: &TableRef);
    /// `vm` was cut off from the pool (it did not acknowledge in time).
    fn cut_off(&self, vm: VmId);
    /// The file `vm`'s hint `request_id` was answered "loading" for is in
    /// the pool now (the hint asked to be told). Advisory: a sink may drop
    /// it.
    fn loaded(&self, vm: VmId, request_id: u64) {
        let _ = (vm, request_id);
    }
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
    /// Bounds of the path cache.
    pub cache: CacheLimits,
    /// Most loads one VM may have queued and running; past it the paths
    /// its hints ask for wait in its backlog.
    pub vm_max_loads: usize,
    /// Most paths waiting in one VM's backlog, to be queued as its loads
    /// finish; past it its hints for paths not loaded are answered
    /// "loading" without anything kept. 0, the default: no backlog. A
    /// backlog tells every hint past the bound when its file is loaded,
    /// but under a pool far smaller than what the guests read, its loads
    /// run after the guest moved on and evict each other (the `restart`
    /// suite's 2 MiB pool: the notices and hints again it brings filled
    /// the guest's ring).
    pub vm_load_backlog: usize,
    /// A guest whose copy of a loaded file differs from the cached host
    /// version has the path resolved again, at most this often per path
    /// (the host file may have changed too).
    pub recheck_ms: u64,
    /// Most files one `warm` request of a guest loads (the operator's are
    /// not limited).
    pub warm_max_files: usize,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            workers: 2,
            chunk_pages: 256,
            retry_after_ms: 100,
            cache: CacheLimits::default(),
            vm_max_loads: 16,
            vm_load_backlog: 0,
            recheck_ms: 1_000,
            warm_max_files: 4_096,
        }
    }
}

/// Errors of control operations (not of hints: those are misses).
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// No such namespace, or the caller may not use it.
    #[error("no namespace {0:?} for this caller")]
    NoNamespace(String),
    /// The path is invalid or not found.
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// VM name or id in use.
    #[error("VM {0:?} exists")]
    VmExists(String),
    /// Invalid VM or domain name.
    #[error("invalid name {0:?}")]
    BadName(String),
    /// The VM has a `warm` running already.
    #[error("a warm of this VM is running")]
    Busy,
}

/// What the service knows about a path of a namespace.
#[derive(Clone, Debug)]
enum CacheEntry {
    /// Queued for, or being read by, a loader.
    Loading,
    /// Loaded: the host file's identity and its live map. A guest whose
    /// copy differs has the path resolved again, not before `recheck_at_ms`.
    Ready {
        host: HostIdentity,
        map: MapId,
        recheck_at_ms: u64,
    },
    /// `retry_at_ms`: I/O errors are retried after a delay; `drops_seen`: a
    /// full pool is retried once a map was dropped since.
    Missing {
        reason: MissReason,
        retry_at_ms: Option<u64>,
        drops_seen: Option<u64>,
    },
}

/// A namespace id and a namespace-relative path: the path cache's key and a
/// loader's job.
type CacheKey = (u32, Box<[u8]>);

/// The page store's key of the file version a namespace resolved.
fn file_key(host: &HostIdentity) -> FileKey {
    FileKey {
        dev: host.dev,
        ino: host.ino,
        size: host.size,
        mtime_ns: host.mtime_ns,
    }
}

/// Everything the service's threads share.
struct Shared {
    store: Mutex<PageStore>,
    /// The store's frames, written and discarded outside its lock.
    frames: FrameAccess,
    namespaces: RwLock<BTreeMap<u32, Arc<Namespace>>>,
    vms: RwLock<BTreeMap<VmId, vms::VmInfo>>,
    cache: Mutex<cache::PathCache>,
    jobs: Mutex<queue::LoadQueues>,
    jobs_cv: Condvar,
    /// VMs with a `warm` running.
    warming: Mutex<BTreeSet<VmId>>,
    /// What each VM was answered "loading" for (`always_loading` namespaces).
    told: Mutex<always_loading::ToldLoading>,
    /// Hints answered "loading" that wait to be told it is done.
    waiters: Mutex<notify::LoadWaiters>,
    /// Hints of loaded files answered "loading" by `always_loading`.
    masked_hits: AtomicU64,
    sink: RwLock<Option<Arc<dyn EventSink>>>,
    /// Counters; shared by the services of every trust domain, so that the
    /// host's totals cover them all (a VM sees only its own).
    stats: Arc<Stats>,
    cfg: ServiceConfig,
    start: Instant,
    stop: AtomicBool,
}

impl Shared {
    /// Milliseconds since the service started (the store's clock).
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Runs `f` on the store, then delivers the events it queued and
    /// discards the frames it freed, with the store lock released.
    fn store_op<R>(&self, f: impl FnOnce(&mut PageStore) -> R) -> R {
        let (r, events, discards) = {
            let mut s = lock(&self.store);
            let r = f(&mut s);
            (r, s.take_events(), s.take_discards())
        };
        self.deliver(events);
        if !discards.is_empty() {
            for &f in &discards {
                // SAFETY: `take_discards` handed these free frames to us
                // alone: the store neither reuses nor reads them until
                // `finish_discards`.
                unsafe { self.frames.discard_frame(f) };
            }
            lock(&self.store).finish_discards(discards);
        }
        r
    }

    fn deliver(&self, events: Vec<StoreEvent>) {
        if events.is_empty() {
            return;
        }
        let sink = read(&self.sink).clone();
        if let Some(sink) = sink {
            for e in events {
                match e {
                    StoreEvent::Revoke { vm, map } => sink.revoke(vm, &map),
                    StoreEvent::CutOff { vm } => sink.cut_off(vm),
                }
            }
        }
    }
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

/// Locks `m`; a poisoned lock is used anyway (every critical section leaves
/// the state consistent before anything in it may panic).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// [`lock`] for readers of an `RwLock`.
fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

/// [`lock`] for writers of an `RwLock`.
fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

impl HintService {
    /// Builds the service over a store and namespaces, and starts the loader
    /// threads.
    pub fn new(store: PageStore, namespaces: Vec<Namespace>, cfg: ServiceConfig) -> Self {
        Self::with_stats(store, namespaces, cfg, Arc::default())
    }

    /// [`HintService::new`], counting into `stats` (shared with the
    /// services of the other trust domains).
    pub fn with_stats(
        store: PageStore,
        namespaces: Vec<Namespace>,
        cfg: ServiceConfig,
        stats: Arc<Stats>,
    ) -> Self {
        let ns = namespaces
            .into_iter()
            .map(|n| (n.id(), Arc::new(n)))
            .collect();
        let frames = store.frame_access();
        let shared = Arc::new(Shared {
            store: Mutex::new(store),
            frames,
            namespaces: RwLock::new(ns),
            vms: RwLock::new(BTreeMap::new()),
            cache: Mutex::new(cache::PathCache::new(cfg.cache)),
            jobs: Mutex::new(queue::LoadQueues::new(
                cfg.vm_max_loads,
                cfg.vm_load_backlog,
            )),
            jobs_cv: Condvar::new(),
            warming: Mutex::new(BTreeSet::new()),
            told: Mutex::new(always_loading::ToldLoading::new(
                always_loading::TOLD_PER_VM,
            )),
            waiters: Mutex::new(notify::LoadWaiters::default()),
            masked_hits: AtomicU64::new(0),
            sink: RwLock::new(None),
            stats,
            cfg,
            start: Instant::now(),
            stop: AtomicBool::new(false),
        });
        let threads = (0..cfg.workers)
            .map(|i| loader::spawn_worker(&shared, i))
            .collect();
        HintService {
            shared,
            threads: Arc::new(Mutex::new(threads)),
        }
    }

    /// Milliseconds since the service started (the store's clock).
    pub fn now_ms(&self) -> u64 {
        self.shared.now_ms()
    }

    /// The counters this service counts into.
    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.shared.stats)
    }

    /// Sets where revocations and cut-offs go.
    pub fn set_event_sink(&self, sink: Arc<dyn EventSink>) {
        *write(&self.shared.sink) = Some(sink);
    }

    /// Runs `f` on the store and delivers the events it queued.
    fn with_store<R>(&self, f: impl FnOnce(&mut PageStore) -> R) -> R {
        self.shared.store_op(f)
    }

    /// Stops the loader and tick threads and waits for them.
    pub fn shutdown(&self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.jobs_cv.notify_all();
        let threads = std::mem::take(&mut *lock(&self.threads));
        for t in threads {
            // The tick thread waits parked, up to a second.
            t.thread().unpark();
            let _ = t.join();
        }
    }

    /// Path cache entries and bytes charged (see [`cache::ENTRY_OVERHEAD`]).
    pub fn path_cache_size(&self) -> (usize, usize) {
        let c = lock(&self.shared.cache);
        (c.len(), c.bytes())
    }

    /// Path cache entries dropped by its caps or by age so far.
    pub fn path_cache_dropped(&self) -> u64 {
        lock(&self.shared.cache).dropped()
    }

    /// Loads queued (not running), and hints neither queued nor backlogged
    /// because their VM had its bounds of both so far.
    pub fn load_queue_size(&self) -> (usize, u64) {
        let q = lock(&self.shared.jobs);
        (q.queued(), q.refused())
    }

    /// Paths waiting in `by`'s backlog, and paths that waited in any
    /// backlog so far.
    pub fn load_backlog(&self, by: Requester) -> (usize, u64) {
        let q = lock(&self.shared.jobs);
        (q.backlog_len(by), q.deferred())
    }

    /// Loads queued or running for `by`.
    pub fn loads_in_flight(&self, by: Requester) -> usize {
        lock(&self.shared.jobs).in_flight(by)
    }

    /// Hints answered "loading" although their file was loaded (or known
    /// missing), because the namespace is `always_loading` and it was the
    /// VM's first hint for that version.
    pub fn masked_hits(&self) -> u64 {
        self.shared.masked_hits.load(Ordering::Relaxed)
    }

    /// Paths VM `vm` is remembered to have been answered "loading" for
    /// (`always_loading` namespaces; at most
    /// [`always_loading::TOLD_PER_VM`]).
    pub fn told_loading_len(&self, vm: VmId) -> usize {
        lock(&self.shared.told).len(vm)
    }

    /// Hints of `vm` waiting to be told their file is loaded, and hints of
    /// every VM refused a wait past their VM's bound so far.
    pub fn load_waiters(&self, vm: VmId) -> (usize, u64) {
        let w = lock(&self.shared.waiters);
        (w.len(vm), w.refused())
    }

    /// Runs `f` on the store (tests, fake guests reading the pool).
    pub fn inspect_store<R>(&self, f: impl FnOnce(&PageStore) -> R) -> R {
        f(&lock(&self.shared.store))
    }
}
