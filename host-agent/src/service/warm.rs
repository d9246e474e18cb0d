//! Warm and evict: preloading a namespace tree on the caller's thread, and
//! dropping (or revoking from the VMs) what is stored for a tree.
//!
//! A warm-up walks the tree strictly beneath the namespace, with the lookup
//! hints use ([`Namespace::list_files`]): no symlink in any component of
//! the start path or of anything walked, no mount crossing. A guest's warm
//! of a start path that is not a file or directory beneath the namespace
//! (missing, `..`, absolute, through a symlink, a symlink itself) gets one
//! and the same error, so its reply says nothing about what lies outside.

use std::time::{Duration, Instant};

use vmdedup_protocol::control::MissReason;

use super::{file_key, lock, read, CacheEntry, HintService, ServiceError};
use crate::namespace::{Namespace, ResolveError};
use crate::store::VmId;

/// How often a warm-up at start logs its progress.
const START_LOG_EVERY: Duration = Duration::from_secs(3);

/// A VM's one running warm; ends when dropped.
struct WarmTurn<'a> {
    svc: &'a HintService,
    vm: VmId,
}

impl<'a> WarmTurn<'a> {
    fn take(svc: &'a HintService, vm: VmId) -> Result<Self, ServiceError> {
        if !lock(&svc.shared.warming).insert(vm) {
            return Err(ServiceError::Busy);
        }
        Ok(WarmTurn { svc, vm })
    }
}

impl Drop for WarmTurn<'_> {
    fn drop(&mut self) {
        lock(&self.svc.shared.warming).remove(&self.vm);
    }
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
    /// Of the files skipped, those for which the pool had no room.
    pub pool_full: u64,
}

impl WarmProgress {
    /// Adds `o`'s counts to these.
    pub fn add(&mut self, o: &WarmProgress) {
        self.files_total += o.files_total;
        self.files_done += o.files_done;
        self.pages += o.pages;
        self.skipped += o.skipped;
        self.pool_full += o.pool_full;
    }
}

impl HintService {
    /// Preloads `rel` (a file or a directory; empty: the whole namespace) of
    /// namespace `ns_name`, on the calling thread, reporting progress after
    /// every file. `vm` restricts to the namespaces that VM may use, and
    /// bounds the work: one warm of a VM at a time ([`ServiceError::Busy`]
    /// otherwise), loading at most [`ServiceConfig::warm_max_files`] files
    /// (the rest are counted skipped), charged to that VM. The tree is
    /// walked strictly beneath the namespace (see the module documentation);
    /// for a VM every start path that is not there is the same
    /// [`ResolveError::NotFound`].
    ///
    /// [`ServiceConfig::warm_max_files`]: super::ServiceConfig::warm_max_files
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
        let _turn = match vm {
            Some(v) => Some(WarmTurn::take(self, v)?),
            None => None,
        };
        let files = match ns.list_files(rel) {
            Ok(f) => f,
            // One reply for whatever is not a tree beneath the namespace:
            // which it was would tell a guest about the host outside.
            Err(_) if vm.is_some() => return Err(ResolveError::NotFound.into()),
            Err(e) => return Err(e.into()),
        };
        let mut p = WarmProgress {
            files_total: files.len() as u64,
            ..WarmProgress::default()
        };
        progress(&p);
        let limit = match vm {
            Some(_) => self.shared.cfg.warm_max_files,
            None => usize::MAX,
        };
        for (i, f) in files.into_iter().enumerate() {
            if i >= limit {
                p.skipped += 1;
                p.files_done += 1;
                continue;
            }
            match self.load_now(&ns, &f, vm) {
                Ok(pages) => p.pages += pages as u64,
                Err(reason) => {
                    p.skipped += 1;
                    if matches!(reason, MissReason::PoolFull | MissReason::TooLarge) {
                        p.pool_full += 1;
                    }
                }
            }
            p.files_done += 1;
            progress(&p);
        }
        Ok(p)
    }

    /// Loads every namespace of this service marked `warm_at_start`, whole,
    /// on the calling thread, as the operator's warm does (it revokes
    /// nothing). Meant to run before the agent serves anyone, so that every
    /// answer for those files is a hit. Progress is logged every few
    /// seconds and at the end; files that do not fit the pool or cannot be
    /// read are logged and left out, never an error. Returns the totals.
    pub fn warm_at_start(&self) -> WarmProgress {
        let marked: Vec<std::sync::Arc<Namespace>> = read(&self.shared.namespaces)
            .values()
            .filter(|n| n.config().warm_at_start)
            .cloned()
            .collect();
        let mut total = WarmProgress::default();
        for ns in marked {
            let name = ns.name();
            let t0 = Instant::now();
            let mut last = t0;
            tracing::info!(ns = name, dir = %ns.dir().display(), "warming at start");
            let r = self.warm(name, b"", None, &mut |p| {
                if last.elapsed() >= START_LOG_EVERY {
                    last = Instant::now();
                    tracing::info!(
                        ns = name,
                        files = p.files_done,
                        of = p.files_total,
                        pages = p.pages,
                        skipped = p.skipped,
                        "warming at start"
                    );
                }
            });
            match r {
                Ok(p) => {
                    tracing::info!(
                        ns = name,
                        files = p.files_done - p.skipped,
                        pages = p.pages,
                        skipped = p.skipped,
                        ms = t0.elapsed().as_millis() as u64,
                        "warmed at start"
                    );
                    if p.pool_full > 0 {
                        tracing::warn!(
                            ns = name,
                            files = p.pool_full,
                            "warm at start: the pool had no room for some files; their first opens are not all hits"
                        );
                    }
                    if p.skipped > p.pool_full {
                        tracing::warn!(
                            ns = name,
                            files = p.skipped - p.pool_full,
                            "warm at start: some files could not be read"
                        );
                    }
                    total.add(&p);
                }
                Err(e) => {
                    tracing::error!(ns = name, error = %e, "warm at start failed");
                }
            }
        }
        total
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

    /// Whether VM `vm` has a warm running.
    pub fn is_warming(&self, vm: VmId) -> bool {
        lock(&self.shared.warming).contains(&vm)
    }

    /// Whether a cached answer still names the live map of its file version.
    fn map_is_live(&self, e: &CacheEntry) -> bool {
        match e {
            CacheEntry::Ready { host, map, .. } => {
                lock(&self.shared.store).lookup(&file_key(host)) == Some(*map)
            }
            _ => true,
        }
    }
}
