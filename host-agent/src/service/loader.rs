//! Loaders: a queued path is resolved in its namespace, read in chunks,
//! hashed outside the store lock and stored page by page; the path cache
//! then says where it is, or why it is not. Jobs come from the per-VM
//! [load queues](super::queue), taken in turn.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmdedup_protocol::control::MissReason;
use vmdedup_protocol::pool::{pages_for_size, FRAME_SIZE};

use super::queue::{LoadJob, Requester};
use super::{file_key, lock, read, CacheEntry, HintService, Shared};
use crate::namespace::fingerprint::{fingerprint_reader, Fingerprinter};
use crate::namespace::{HostIdentity, Namespace};
use crate::store::{page_hash, MapId, MapLabel, StoreError};

/// Starts loader thread number `i`.
pub(super) fn spawn_worker(shared: &Arc<Shared>, i: usize) -> JoinHandle<()> {
    let s = Arc::clone(shared);
    std::thread::Builder::new()
        .name(format!("vmdedup-load{i}"))
        .spawn(move || worker(&s))
        .expect("spawning a loader thread")
}

impl HintService {
    /// Runs queued loads on the calling thread until the queue is empty
    /// (services built with `workers: 0`, tests). Returns how many ran.
    pub fn load_pending(&self) -> usize {
        let mut n = 0;
        loop {
            let Some(job) = lock(&self.shared.jobs).pop() else {
                break;
            };
            let entry = run_job(&self.shared, &job);
            finish_job(&self.shared, &job, &entry);
            n += 1;
        }
        n
    }

    /// Waits until no load is queued or running (tests, `warm`). Gives up
    /// after `limit`; returns whether it is idle.
    pub fn wait_idle(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if lock(&self.shared.jobs).is_idle() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Loads one file of a namespace now, on the calling thread, for `by`
    /// (`None`: the operator). Returns its page count.
    pub fn load_now(&self, ns: &Namespace, rel: &[u8], by: Requester) -> Result<u32, MissReason> {
        let job = LoadJob {
            key: (ns.id(), rel.into()),
            by,
        };
        // Counted as this requester's load; a hint for the path meanwhile
        // is not queued again.
        let counted = lock(&self.shared.jobs).begin(&job);
        let entry = run_job(&self.shared, &job);
        if counted {
            finish_job(&self.shared, &job, &entry);
        }
        match entry {
            CacheEntry::Ready { host, .. } => Ok(pages_for_size(host.size) as u32),
            CacheEntry::Missing { reason, .. } => Err(reason),
            CacheEntry::Loading => Err(MissReason::IoError),
        }
    }
}

/// A loader thread: runs jobs until the service stops.
fn worker(shared: &Shared) {
    loop {
        let job = {
            let mut q = lock(&shared.jobs);
            loop {
                if shared.stop.load(Ordering::Relaxed) {
                    return;
                }
                if let Some(j) = q.pop() {
                    break j;
                }
                q = shared
                    .jobs_cv
                    .wait_timeout(q, Duration::from_millis(200))
                    .map(|r| r.0)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
        };
        let entry = run_job(shared, &job);
        finish_job(shared, &job, &entry);
    }
}

/// Marks `job` done, and tells the hints that waited for it (see
/// [`notify`](super::notify)) if it left its file in the pool (`entry`).
fn finish_job(shared: &Shared, job: &LoadJob, entry: &CacheEntry) {
    let (waiters, promoted) = {
        let mut q = lock(&shared.jobs);
        let promoted = q.done(job);
        (lock(&shared.waiters).take(&job.key), promoted)
    };
    if promoted {
        shared.jobs_cv.notify_one();
    }
    if waiters.is_empty() || !matches!(entry, CacheEntry::Ready { .. }) {
        return;
    }
    let Some(sink) = read(&shared.sink).clone() else {
        return;
    };
    for (vm, request_id) in waiters {
        sink.loaded(vm, request_id);
    }
}

/// Loads `job` and records the outcome in the path cache; returns it.
fn run_job(shared: &Shared, job: &LoadJob) -> CacheEntry {
    let now = shared.now_ms();
    let entry = match load(shared, job, now) {
        Ok((host, map)) => CacheEntry::Ready {
            host,
            map,
            recheck_at_ms: shared.now_ms().saturating_add(shared.cfg.recheck_ms),
        },
        Err(reason) => {
            let retry_at_ms = (reason == MissReason::IoError)
                .then(|| shared.now_ms() + shared.cfg.retry_after_ms);
            let drops_seen =
                (reason == MissReason::PoolFull).then(|| lock(&shared.store).counts().maps_dropped);
            tracing::trace!(ns = job.key.0, by = ?job.by, ?reason, "load failed");
            CacheEntry::Missing {
                reason,
                retry_at_ms,
                drops_seen,
            }
        }
    };
    lock(&shared.cache).insert(job.key.clone(), entry.clone(), shared.now_ms());
    entry
}

/// Resolves, reads and stores one file (or finds its version stored) for
/// `job.by`.
fn load(shared: &Shared, job: &LoadJob, now: u64) -> Result<(HostIdentity, MapId), MissReason> {
    let key = &job.key;
    let ns = read(&shared.namespaces)
        .get(&key.0)
        .cloned()
        .ok_or(MissReason::NoNamespace)?;
    let mut rf = ns.resolve(&key.1).map_err(|e| e.miss_reason())?;
    let mut host = rf.identity;
    let fkey = file_key(&host);
    if let Some(map) = lock(&shared.store).lookup(&fkey) {
        // Stored already (another path, or the cache forgot it): its
        // fingerprint still has to come from the bytes.
        let fp = fingerprint_reader(&mut rf.file).map_err(|_| MissReason::IoError)?;
        host.fingerprint = Some(fp);
        return Ok((host, map));
    }
    let label = MapLabel {
        ns: ns.id(),
        path: String::from_utf8_lossy(&key.1).into_owned(),
    };
    let id = shared
        .store_op(|s| s.begin_load(fkey, label, job.by, now))
        .map_err(store_miss)?;
    let frame = FRAME_SIZE as usize;
    let chunk_pages = shared.cfg.chunk_pages.max(1);
    let mut buf = vec![0u8; chunk_pages * frame];
    let mut remaining = host.size;
    let mut fp = Fingerprinter::default();
    let result = (|| {
        while remaining > 0 {
            let want = (remaining.min(buf.len() as u64)) as usize;
            read_full(&mut rf.file, &mut buf[..want])?;
            fp.update(&buf[..want]);
            remaining -= want as u64;
            let pages = want.div_ceil(frame);
            buf[want..pages * frame].fill(0);
            let chunk = &buf[..pages * frame];
            let hashes: Vec<_> = chunk.chunks(frame).map(page_hash).collect();
            // Frames are reserved under the store lock, written and compared
            // without it, and added to the map under it again.
            let mut staged = shared
                .store_op(|s| s.stage_pages(id, &hashes, now))
                .map_err(store_miss)?;
            staged.fill(chunk);
            shared
                .store_op(|s| s.commit_pages(staged, chunk, now))
                .map_err(store_miss)?;
        }
        // The tree must not have changed under us.
        let st = rf.file.metadata().map_err(|_| MissReason::IoError)?;
        if st.size() != host.size
            || st
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(st.mtime_nsec())
                != host.mtime_ns
        {
            return Err(MissReason::IoError);
        }
        shared.store_op(|s| s.finish_load(id)).map_err(store_miss)
    })();
    match result {
        Ok(loc) => {
            host.fingerprint = Some(fp.finish());
            Ok((host, loc.file_map_id))
        }
        Err(e) => {
            shared.store_op(|s| s.abort_load(id));
            Err(e)
        }
    }
}

/// Fills `buf` from `f`; a file that ends early has shrunk: an I/O error.
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

/// The miss a store error is reported as.
fn store_miss(e: StoreError) -> MissReason {
    match e {
        StoreError::PoolFull => MissReason::PoolFull,
        StoreError::TooLarge(_) => MissReason::TooLarge,
        StoreError::CutOff(_) => MissReason::CutOff,
        StoreError::OverQuota(_) => MissReason::OverQuota,
        _ => MissReason::IoError,
    }
}
