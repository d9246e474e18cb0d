//! The running agent: the pool, the page store and hint service, one ring
//! region per VM served by the poller threads, and the event sink that turns
//! revocations into event-ring entries. `vmdedup serve` is a thin shell around
//! [`Agent`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use vmdedup_protocol::abi::{
    EventEntry, EVENT_NOTICE, EVENT_REVOKE, NOTICE_HOST_RESTARTING, NOTICE_LOADED,
    NOTICE_REANNOUNCE,
};
use vmdedup_protocol::pool::TableRef;

use crate::config::AgentConfig;
use crate::domain::{Domain, Domains};
use crate::hostfile::{FileAccess, HostFileError};
use crate::ivshmem::{DoorbellServer, VmDoorbell};
use crate::namespace::{Namespace, NamespaceError};
use crate::pool::{PoolBacking, PoolMemory, PoolMemoryError, PoolSpec};
use crate::ring::handler::RingId;
use crate::ring::host::{HostRing, RingConfig, RingShared};
use crate::ring::mapping::SharedMapping;
use crate::ring::poller::{PollerConfig, PollerPool};
use crate::ring::RingError;
use crate::service::{EventSink, HintService, ServiceConfig, ServiceError};
use crate::store::{PageStore, StoreConfig, VmId};

/// Errors while starting or changing the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The configuration is not usable.
    #[error("{0}")]
    Config(String),
    /// The pool could not be created.
    #[error(transparent)]
    Pool(#[from] PoolMemoryError),
    /// A namespace could not be opened.
    #[error(transparent)]
    Namespace(#[from] NamespaceError),
    /// A ring region could not be created or mapped.
    #[error("ring region {path}: {cause}")]
    Ring {
        /// The ring region file.
        path: PathBuf,
        /// Why.
        cause: RingError,
    },
    /// A ring region file could not be created.
    #[error("ring region {path}: {cause}")]
    RingFile {
        /// The ring region file.
        path: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
    /// The service refused (e.g. a VM name in use).
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// A host file could not be created, or an existing one is not one to
    /// adopt.
    #[error(transparent)]
    HostFile(#[from] HostFileError),
}

/// How to run the agent, beyond [`AgentConfig`].
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// Size of each VM's ring region (a power of two).
    pub ring_size: u64,
    /// Poller threads and their back-off.
    pub pollers: PollerConfig,
    /// Generation written into a new pool and every ring region this agent
    /// initialises (a pool or ring taken over in place keeps its own). It
    /// must differ from every earlier agent's; it is also the token of the
    /// re-announce notice after a take-over.
    pub generation: u64,
}

/// Ring regions by VM, shared with the event sink.
type RingMap = Arc<Mutex<BTreeMap<VmId, Arc<RingShared>>>>;

/// Writes revocations and notices into the VMs' event rings.
struct RingEvents {
    rings: RingMap,
}

impl RingEvents {
    fn post(&self, vm: VmId, ev: EventEntry) {
        let ring = self.rings.lock().ok().and_then(|m| m.get(&vm).cloned());
        match ring {
            Some(r) => {
                if !r.post_event(ev) {
                    tracing::warn!(
                        vm,
                        "event ring full: event dropped, the guest is told to drop every map"
                    );
                }
            }
            None => tracing::warn!(vm, "event for a VM without a ring"),
        }
    }
}

impl EventSink for RingEvents {
    fn loaded(&self, vm: VmId, request_id: u64) {
        let ring = self.rings.lock().ok().and_then(|m| m.get(&vm).cloned());
        let posted = ring.is_some_and(|r| {
            r.post_advisory(EventEntry {
                kind: EVENT_NOTICE,
                notice: NOTICE_LOADED,
                request_id,
                ..EventEntry::default()
            })
        });
        tracing::debug!(vm, request_id, posted, "file loaded: guest told");
    }

    fn revoke(&self, vm: VmId, map: &TableRef) {
        tracing::info!(vm, map = map.file_map_id, "revoking file map");
        self.post(
            vm,
            EventEntry {
                kind: EVENT_REVOKE,
                file_map_id: map.file_map_id,
                table_offset: map.offset,
                map_generation: map.map_generation,
                ..EventEntry::default()
            },
        );
    }

    fn cut_off(&self, vm: VmId) {
        tracing::warn!(
            vm,
            "VM did not acknowledge a revocation in time: cut off from the pool"
        );
        if let Some(r) = self.rings.lock().ok().and_then(|m| m.get(&vm).cloned()) {
            // Told with a flag in the ring header, not an event: a stuck
            // guest's event ring is full. The guest zaps every pool mapping
            // at its next events poll and acknowledges; the ring stays
            // served so the acknowledgement is seen (the service answers
            // the VM's hints with misses until it is reinstated).
            r.cut_off();
        }
    }
}

struct Inner {
    config: AgentConfig,
    opts: AgentOptions,
    /// The open trust domains and which VM is in which.
    domains: Domains,
    /// Where every domain's service sends revocations and cut-offs.
    events: Arc<RingEvents>,
    /// Who besides the agent may open its pool and ring files.
    files: FileAccess,
    pollers: Mutex<Option<PollerPool>>,
    rings: RingMap,
    ring_paths: Mutex<BTreeMap<VmId, PathBuf>>,
    /// Rings created while no poller runs yet.
    pending: Mutex<Vec<HostRing>>,
    /// The ivshmem server of the rings (`doorbell = true`).
    doorbells: Mutex<Option<DoorbellServer>>,
    /// Each VM's doorbells, kept for the VM's life in this agent (a
    /// reinstated ring gets the same ones: QEMU holds them).
    bells: Mutex<BTreeMap<VmId, Arc<VmDoorbell>>>,
    /// Rings started over by [`Agent::reinstate_vm`] (for their generations).
    reinstated: std::sync::atomic::AtomicU64,
    /// Serialises adding, removing and reinstating VMs (ids, domains).
    admin: Mutex<()>,
    /// VMs added at run time (name, domain), as written to
    /// `vmdedup-added-vms` in `ring_dir`.
    added: Mutex<Vec<(String, String)>>,
}

/// The running agent. Cheap to clone.
#[derive(Clone)]
pub struct Agent {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("pool", &self.inner.config.pool)
            .finish_non_exhaustive()
    }
}

/// Maps the ring region file at `path` and writes a new ring for VM `id`
/// into it with `generation`.
fn create_ring(path: &Path, id: VmId, generation: u64) -> Result<HostRing, AgentError> {
    let ring_err = |source| AgentError::Ring {
        path: path.to_path_buf(),
        cause: source,
    };
    let map = SharedMapping::open(path).map_err(ring_err)?;
    HostRing::create(map, RingConfig::new(RingId(id), generation)).map_err(ring_err)
}

/// Creates the ring region file of `size` bytes with `access`, or reuses an
/// existing one of that size (a VM may still have it mapped: it is never
/// truncated) if [`FileAccess::open_existing`] accepts it: a regular file of
/// the agent's, no symlink, one link. Returns whether it existed with that
/// size. (Its magic is checked when the ring is adopted.)
fn ensure_ring_file(path: &Path, size: u64, access: &FileAccess) -> Result<bool, AgentError> {
    let io = |source| AgentError::RingFile {
        path: path.to_path_buf(),
        cause: source,
    };
    let Some(f) = access.open_existing(path, "ring region", None)? else {
        let f = access.create_new(path, "ring region")?;
        f.set_len(size).map_err(io)?;
        reserve_ring_file(&f, path, size)?;
        return Ok(false);
    };
    let len = f.metadata().map_err(io)?.len();
    if len == 0 {
        // Made but never sized (an agent stopped in between): nothing maps it.
        access.adopted(&f, path, "ring region")?;
        f.set_len(size).map_err(io)?;
        reserve_ring_file(&f, path, size)?;
        return Ok(false);
    } else if len != size {
        return Err(AgentError::Config(format!(
            "ring region {} exists with {len} bytes, not {size}: a VM may still map it; remove it or use --ring-size {len}",
            path.display()
        )));
    }
    access.adopted(&f, path, "ring region")?;
    reserve_ring_file(&f, path, size)?;
    Ok(true)
}

/// Backs the whole ring region file with memory before the agent writes
/// into its mapping: on a full tmpfs a store into a page it cannot back
/// would kill the agent with SIGBUS. A filesystem without `fallocate` is
/// left as it is.
fn reserve_ring_file(f: &std::fs::File, path: &Path, size: u64) -> Result<(), AgentError> {
    use std::os::fd::AsRawFd;
    // SAFETY: fallocate(2) mode 0 on a file we opened, inside its size: it
    // only allocates blocks, never changes bytes or the size.
    let r = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, size as libc::off_t) };
    if r == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => Ok(()),
        Some(libc::ENOSPC) => Err(AgentError::Config(format!(
            "ring region {}: its filesystem has no room for {size} bytes; free some or use another ring_dir",
            path.display()
        ))),
        _ => Err(AgentError::RingFile {
            path: path.to_path_buf(),
            cause: e,
        }),
    }
}

/// The file that lists the VMs added at run time (`vmdedup vm add`), one
/// `NAME DOMAIN` per line, in `ring_dir`: a restarted agent must know every
/// VM that may still map the pool, not only the configured ones.
fn added_vms_path(config: &AgentConfig) -> PathBuf {
    config.ring_dir.join("vmdedup-added-vms")
}

/// The VMs added at run time by a previous agent (see [`added_vms_path`]),
/// in the order they were added, without those the configuration names.
/// A line that does not parse is skipped with a warning (the file is the
/// agent's own, but a bad line must not stop the agent).
fn read_added_vms(config: &AgentConfig) -> Vec<(String, String)> {
    let path = added_vms_path(config);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot read the VMs added at run time");
            return Vec::new();
        }
    };
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut f = line.split_whitespace();
        match (f.next(), f.next(), f.next()) {
            (Some(n), Some(d), None)
                if crate::namespace::valid_name(n) && crate::config::valid_domain(d) =>
            {
                if !config.vms.iter().any(|v| v.name == n) && !out.iter().any(|(o, _)| o == n) {
                    out.push((n.to_string(), d.to_string()));
                }
            }
            _ => tracing::warn!(file = %path.display(), line, "skipped a malformed line"),
        }
    }
    out
}

/// Writes the list of VMs added at run time (atomically: a new file renamed
/// over the old one).
fn write_added_vms(config: &AgentConfig, vms: &[(String, String)]) -> std::io::Result<()> {
    let path = added_vms_path(config);
    if vms.is_empty() {
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    let tmp = path.with_extension("tmp");
    let text: String = vms.iter().map(|(n, d)| format!("{n} {d}\n")).collect();
    // Private, and never through a symlink someone put in the ring
    // directory (a stale temporary file is replaced, not followed).
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut f = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?
    };
    std::io::Write::write_all(&mut f, text.as_bytes())?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, &path)
}

impl Agent {
    /// Opens every namespace, starts the poller threads, and for every
    /// configured VM (and every VM a previous agent added at run time) its
    /// trust domain (pool, store, service; see [`crate::domain`]) and a ring
    /// region.
    pub fn start(config: AgentConfig, opts: AgentOptions) -> Result<Agent, AgentError> {
        config
            .validate()
            .map_err(|e| AgentError::Config(e.to_string()))?;
        if !opts.ring_size.is_power_of_two() || opts.ring_size < 64 * 1024 {
            return Err(AgentError::Config(format!(
                "ring size {} must be a power of two of at least 64K",
                opts.ring_size
            )));
        }
        let files = FileAccess::from_config(&config)?;
        if let Some(note) = crate::preflight::thp_note() {
            tracing::info!("{note}");
        }
        // Every namespace directory must open before anything is created.
        for ns in &config.namespaces {
            Namespace::open(ns.clone())?;
        }
        let stats = Arc::new(crate::stats::Stats::default());
        let domains = Domains::new(
            config.namespaces.iter().map(|n| n.name.clone()).collect(),
            Arc::clone(&stats),
        );
        let rings: RingMap = Arc::new(Mutex::new(BTreeMap::new()));
        let events = Arc::new(RingEvents {
            rings: Arc::clone(&rings),
        });
        let pollers = Some(
            PollerPool::start(opts.pollers, domains.clone()).map_err(|source| {
                AgentError::Ring {
                    path: PathBuf::from("(pollers)"),
                    cause: source,
                }
            })?,
        );
        let doorbells = if config.doorbell {
            Some(DoorbellServer::start().map_err(|cause| AgentError::Ring {
                path: PathBuf::from("(ivshmem server)"),
                cause,
            })?)
        } else {
            None
        };
        let agent = Agent {
            inner: Arc::new(Inner {
                config: config.clone(),
                opts,
                domains,
                events,
                files,
                pollers: Mutex::new(pollers),
                rings,
                ring_paths: Mutex::new(BTreeMap::new()),
                pending: Mutex::new(Vec::new()),
                doorbells: Mutex::new(doorbells),
                bells: Mutex::new(BTreeMap::new()),
                reinstated: std::sync::atomic::AtomicU64::new(0),
                admin: Mutex::new(()),
                added: Mutex::new(Vec::new()),
            }),
        };
        // The VMs that existed before a restart get ids 1..=n again: the
        // configured ones in order, then those added at run time in the
        // order they were added (see `read_added_vms`). A domain whose pool
        // a previous agent served waits for each of its VMs to re-announce
        // what it holds before any frame its tables name is rewritten.
        let added = read_added_vms(&config);
        let all: Vec<(String, String)> = config
            .vms
            .iter()
            .map(|v| (v.name.clone(), v.domain.clone()))
            .chain(added.iter().cloned())
            .collect();
        for (_, domain) in &all {
            if agent.inner.domains.get(domain).is_none() {
                let expect: Vec<VmId> = (1..)
                    .zip(&all)
                    .filter(|(_, (_, d))| d == domain)
                    .map(|(id, _)| id)
                    .collect();
                agent.open_domain(domain, &expect)?;
            }
        }
        for vm in &config.vms {
            agent.add_vm_inner(&vm.name, &vm.domain, true)?;
            if let (Some(bytes), Some(id)) = (vm.max_held, agent.inner.domains.vm_id(&vm.name)) {
                if let Some(s) = agent.inner.domains.service_of_vm(id) {
                    s.set_vm_quota(id, Some(bytes.div_ceil(4096)));
                }
            }
        }
        for (name, domain) in &added {
            agent.add_vm_inner(name, domain, true)?;
        }
        if !added.is_empty() {
            tracing::info!(
                vms = added.len(),
                "VMs added at run time by the previous agent registered again"
            );
        }
        *agent
            .inner
            .added
            .lock()
            .map_err(|_| AgentError::Config("lock poisoned".into()))? = added;
        tracing::info!(
            domains = ?agent.inner.domains.names(),
            namespaces = config.namespaces.len(),
            pollers = agent.inner.opts.pollers.threads,
            generation = agent.inner.opts.generation,
            ring_device = if config.doorbell { "ivshmem-doorbell" } else { "ivshmem-plain" },
            "agent started"
        );
        Ok(agent)
    }

    /// Opens trust domain `name`: takes its pool file over in place or
    /// creates it, and starts its store and service over the namespaces the
    /// domain may use. `expect`: the VMs that a previous agent served from
    /// this pool, which re-announce their maps before frames are rewritten.
    fn open_domain(&self, name: &str, expect: &[VmId]) -> Result<Arc<Domain>, AgentError> {
        let config = &self.inner.config;
        let path = config.pool_path(name);
        let size = config.domain_pool_size(name);
        let budget = config.domain_budget(name);
        let spec = PoolSpec {
            backing: PoolBacking::File {
                path: path.clone(),
                // QEMU attaches a pool readonly=on: its group reads only.
                access: self.inner.files.read_only_group(),
            },
            size,
            table_area: 0,
            generation: self.inner.opts.generation,
        };
        let store_cfg = StoreConfig {
            budget_frames: budget / 4096,
            ack_timeout_ms: config.ack_timeout_ms,
            vm_max_held_pages: config.vm_max_held.div_ceil(4096),
        };
        // VMs booted before the agent map the pool file already: take it over
        // if it never served. A pool a previous agent served from is taken
        // over untouched and the store is rebuilt from its tables; otherwise
        // start a new one (see PoolMemory).
        let (store, how, adopted) = if let Some(p) = PoolMemory::adopt_unused(&spec)? {
            (
                PageStore::new(p, store_cfg),
                "unused pool taken over",
                false,
            )
        } else if let Some(p) = PoolMemory::adopt_served(&spec)? {
            let generation = p.geometry().generation;
            let token = self.inner.opts.generation.max(1);
            let (store, report) = PageStore::adopt(p, store_cfg, expect.iter().copied(), token);
            tracing::warn!(
                domain = name,
                pool = %path.display(),
                generation,
                live_maps = report.live_maps,
                dead_tables = report.dead_tables,
                frames_pinned = report.frames_pinned,
                frames_indexed = report.frames_indexed,
                next_map_id = report.next_map_id,
                "adopted the pool of a previous agent in place: tables kept live, frames pinned until every VM re-announced its maps"
            );
            (store, "served pool adopted", true)
        } else {
            (
                PageStore::new(PoolMemory::create(&spec)?, store_cfg),
                "new pool",
                false,
            )
        };
        let frames_total = store.pool().geometry().frame_count;
        let mut namespaces = Vec::new();
        for ns in config
            .namespaces
            .iter()
            .filter(|n| n.domains.iter().any(|d| d == "*" || d == name))
        {
            namespaces.push(Namespace::open(ns.clone())?);
        }
        let ns_names: Vec<String> = namespaces.iter().map(|n| n.name().to_string()).collect();
        let mut service_cfg = ServiceConfig {
            workers: config.workers,
            ..ServiceConfig::default()
        };
        config.service.apply(&mut service_cfg);
        let service = HintService::with_stats(
            store,
            namespaces,
            service_cfg,
            Arc::clone(self.inner.domains.stats()),
        );
        service.set_event_sink(Arc::clone(&self.inner.events) as Arc<dyn EventSink>);
        // Deadlines are enforced within 100 ms while one runs; with none,
        // a new one waits at most a fifth of the acknowledgement timeout
        // (up to a second) for its first tick.
        let idle_tick =
            std::time::Duration::from_millis((config.ack_timeout_ms / 5).clamp(100, 1000));
        service.spawn_ticker(std::time::Duration::from_millis(100), idle_tick);
        // Namespaces marked warm_at_start are loaded into this domain's pool
        // before any VM of the domain is served: at start, before the
        // control socket exists; for a domain opened by `vm add`, before the
        // request returns.
        service.warm_at_start();
        let domain = Arc::new(Domain::new(name, &path, service, adopted));
        self.inner.domains.insert(Arc::clone(&domain));
        tracing::info!(
            domain = name,
            pool = %path.display(),
            pool_size = size,
            budget,
            frames_total,
            namespaces = ?ns_names,
            how,
            "trust domain opened"
        );
        Ok(domain)
    }

    /// Closes trust domain `name` once its last VM is gone: stops its
    /// service and deletes its pool file (the memory goes back to the host
    /// once no QEMU maps it).
    fn close_domain_if_empty(&self, name: &str) {
        let Some(d) = self.inner.domains.remove(name) else {
            return;
        };
        d.service().shutdown();
        let deleted = match std::fs::remove_file(d.pool_path()) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(domain = name, pool = %d.pool_path().display(), error = %e, "cannot delete the pool file of a closed domain");
                false
            }
        };
        tracing::warn!(domain = name, pool = %d.pool_path().display(), deleted, "trust domain closed: its last VM was removed");
    }

    /// The open trust domains: routing, status, files, warm, evict.
    pub fn domains(&self) -> &Domains {
        &self.inner.domains
    }

    /// The shared state of VM `id`'s current ring (counters, cut-off and
    /// attachment state).
    pub fn ring_shared(&self, id: VmId) -> Option<Arc<RingShared>> {
        self.inner.rings.lock().ok()?.get(&id).cloned()
    }

    /// The configuration the agent runs with.
    pub fn config(&self) -> &AgentConfig {
        &self.inner.config
    }

    /// Registers a VM: creates (or re-initialises) its ring region and hands
    /// it to a poller. Returns the ring region's path.
    /// A VM added this way is written to a file in `ring_dir`, so that an
    /// agent restarted over the same pool waits for it too before it frees
    /// any frame the VM may map.
    pub fn add_vm(&self, name: &str, domain: &str) -> Result<PathBuf, AgentError> {
        let path = self.add_vm_inner(name, domain, false)?;
        let mut added = self
            .inner
            .added
            .lock()
            .map_err(|_| AgentError::Config("lock poisoned".into()))?;
        added.push((name.to_string(), domain.to_string()));
        if let Err(e) = write_added_vms(&self.inner.config, &added) {
            // Serving goes on; only a restart would not know this VM.
            tracing::error!(vm = name, file = %added_vms_path(&self.inner.config).display(), error = %e,
                "cannot record the VM added at run time: an agent restart would not wait for it");
        }
        Ok(path)
    }

    /// [`Agent::add_vm`]; with `adopt` (a VM that existed before the agent
    /// took the pool over) its ring is taken over in place if it validates,
    /// and the guest is asked to re-announce its maps.
    fn add_vm_inner(&self, name: &str, domain: &str, adopt: bool) -> Result<PathBuf, AgentError> {
        let _admin = self.admin()?;
        if !crate::config::valid_vm_name(name) {
            return Err(AgentError::Config(format!(
                "VM name {name:?}: use 1-32 of [A-Za-z0-9_.-], not \".\" or \"..\""
            )));
        }
        let id: VmId = {
            let paths = self
                .inner
                .ring_paths
                .lock()
                .map_err(|_| AgentError::Config("lock poisoned".into()))?;
            paths.keys().next_back().map_or(1, |k| k + 1)
        };
        if !crate::config::valid_domain(domain) {
            return Err(AgentError::Config(format!(
                "domain name {domain:?}: use 1-32 of [A-Za-z0-9_.-], not \"lock\""
            )));
        }
        if self.inner.domains.vm_id(name).is_some() {
            return Err(ServiceError::VmExists(name.to_string()).into());
        }
        let dom = match self.inner.domains.get(domain) {
            Some(d) => d,
            None => self.open_domain(domain, &[])?,
        };
        // A ring is taken over only where the pool it answers about was.
        let adopt = adopt && dom.adopted();
        let svc = dom.service().clone();
        if let Err(e) = svc.add_vm(id, name, domain) {
            self.close_domain_if_empty(domain);
            return Err(e.into());
        }
        self.inner.domains.bind_vm(id, &dom);
        let path = self.inner.config.ring_path(name);
        let token = self.inner.opts.generation.max(1);
        let setup = || -> Result<(HostRing, &'static str), AgentError> {
            let existed = ensure_ring_file(&path, self.inner.opts.ring_size, &self.inner.files)?;
            if !adopt {
                return Ok((create_ring(&path, id, self.inner.opts.generation)?, "new"));
            }
            if !existed {
                // No guest can have mapped anything through a ring that did
                // not exist.
                svc.holds_done(id, 0);
                return Ok((create_ring(&path, id, self.inner.opts.generation)?, "new"));
            }
            let adopted =
                SharedMapping::open(&path).and_then(|m| HostRing::adopt(m, RingId(id), None));
            match adopted {
                Ok(r) => {
                    let _ = r.shared().post_event(EventEntry {
                        kind: EVENT_NOTICE,
                        notice: NOTICE_REANNOUNCE,
                        file_map_id: token,
                        ..EventEntry::default()
                    });
                    Ok((r, "adopted"))
                }
                Err(e) => {
                    tracing::warn!(vm = name, error = %e, "ring does not validate: re-initialised (the guest drops its maps when it sees the new generation)");
                    let mut r = create_ring(&path, id, self.inner.opts.generation)?;
                    r.set_done_on_first_entry();
                    Ok((r, "re-initialised"))
                }
            }
        };
        let (ring, how) =
            match setup().and_then(|(r, how)| Ok((self.doorbell_for(id, name, &path, r)?, how))) {
                Ok(r) => r,
                Err(e) => {
                    svc.remove_vm(id);
                    self.inner.domains.unbind_vm(id);
                    self.close_domain_if_empty(domain);
                    return Err(e);
                }
            };
        let poller = self.install_ring(id, ring)?;
        if let Ok(mut p) = self.inner.ring_paths.lock() {
            p.insert(id, path.clone());
        }
        tracing::info!(vm = name, id, domain, ring = %path.display(), ?poller, how, "VM added");
        Ok(path)
    }

    /// With `doorbell = true`: the ring of VM `id` with its doorbell, made
    /// (with its socket beside the ring region at `ring_path`) the first
    /// time. Without: the ring as it is, and a doorbell socket an earlier
    /// agent left for the VM is removed (`qemu-args` reads its presence as
    /// "doorbell on").
    fn doorbell_for(
        &self,
        id: VmId,
        name: &str,
        ring_path: &Path,
        ring: HostRing,
    ) -> Result<HostRing, AgentError> {
        let sock = self.inner.config.doorbell_path(name);
        let server = self
            .inner
            .doorbells
            .lock()
            .map_err(|_| AgentError::Config("lock poisoned".into()))?;
        let Some(server) = server.as_ref() else {
            use std::os::unix::fs::FileTypeExt;
            if std::fs::symlink_metadata(&sock).is_ok_and(|m| m.file_type().is_socket()) {
                let _ = std::fs::remove_file(&sock);
            }
            return Ok(ring);
        };
        let mut bells = self
            .inner
            .bells
            .lock()
            .map_err(|_| AgentError::Config("lock poisoned".into()))?;
        let ring_err = |cause| AgentError::Ring {
            path: ring_path.to_path_buf(),
            cause,
        };
        let bell = match bells.get(&id) {
            Some(b) => Arc::clone(b),
            None => {
                // The memory QEMU gets from the server: the ring region
                // file, which ensure_ring_file checked (regular, ours, one
                // link); never through a symlink.
                let shm = {
                    use std::os::unix::fs::OpenOptionsExt;
                    std::fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                        .open(ring_path)
                        .map_err(|cause| AgentError::RingFile {
                            path: ring_path.to_path_buf(),
                            cause,
                        })?
                };
                let bell = VmDoorbell::new(name, shm).map_err(ring_err)?;
                let listener = self.inner.files.bind_socket(&sock, "doorbell socket")?;
                server.add(Arc::clone(&bell), listener).map_err(ring_err)?;
                tracing::info!(vm = name, socket = %sock.display(), "ring doorbell socket ready (ivshmem-doorbell)");
                bells.insert(id, Arc::clone(&bell));
                bell
            }
        };
        Ok(ring.with_doorbell(
            bell.ring_doorbell().map_err(ring_err)?,
            bell.live(),
            Some(bell.guest_interrupt().map_err(ring_err)?),
        ))
    }

    /// Every VM's ring device and the wake-ups over it, in VM id order.
    pub fn ring_reports(&self) -> Vec<vmdedup_protocol::control::RingReport> {
        let rings: Vec<(VmId, Arc<RingShared>)> = self
            .inner
            .rings
            .lock()
            .map(|m| m.iter().map(|(k, v)| (*k, Arc::clone(v))).collect())
            .unwrap_or_default();
        let bells = self
            .inner
            .bells
            .lock()
            .map(|b| b.clone())
            .unwrap_or_default();
        rings
            .into_iter()
            .filter_map(|(id, r)| {
                let name = self.inner.domains.vms(Some(id)).first()?.name.clone();
                let bell = bells.get(&id);
                Some(vmdedup_protocol::control::RingReport {
                    name: vmdedup_protocol::control::bounded_str(&name),
                    doorbell: bell.is_some(),
                    connected: bell.is_some_and(|b| b.connected()),
                    guest_rings: r.guest_rings_doorbell(),
                    doorbells: r.stats.doorbells.load(std::sync::atomic::Ordering::Relaxed),
                    interrupts: r
                        .stats
                        .interrupts
                        .load(std::sync::atomic::Ordering::Relaxed),
                })
            })
            .collect()
    }

    /// VM `vm`'s doorbell (`doorbell = true`), for its counters.
    pub fn doorbell(&self, vm: &str) -> Option<Arc<VmDoorbell>> {
        let id = self.inner.domains.vm_id(vm)?;
        self.inner.bells.lock().ok()?.get(&id).cloned()
    }

    /// Hands a new ring to a poller (or keeps it until the pollers start)
    /// and makes it the one events for VM `id` go to. Returns the poller.
    fn install_ring(&self, id: VmId, ring: HostRing) -> Result<Option<usize>, AgentError> {
        let shared = Arc::clone(ring.shared());
        let pollers = self
            .inner
            .pollers
            .lock()
            .map_err(|_| AgentError::Config("lock poisoned".into()))?;
        let poller = match pollers.as_ref() {
            Some(p) => Some(p.add_ring(ring).poller()),
            None => {
                self.inner
                    .pending
                    .lock()
                    .map_err(|_| AgentError::Config("lock poisoned".into()))?
                    .push(ring);
                None
            }
        };
        if let Ok(mut m) = self.inner.rings.lock() {
            m.insert(id, shared);
        }
        Ok(poller)
    }

    /// Takes the lock that serialises adding, removing and reinstating VMs.
    fn admin(&self) -> Result<std::sync::MutexGuard<'_, ()>, AgentError> {
        self.inner
            .admin
            .lock()
            .map_err(|_| AgentError::Config("lock poisoned".into()))
    }

    /// VM `name`'s id and trust domain; an error names what is missing.
    fn vm_named(&self, name: &str) -> Result<(VmId, Arc<Domain>), AgentError> {
        let id = self.inner.domains.vm_id(name).ok_or_else(|| {
            AgentError::Config(format!("no VM called {name:?} (`vmdedup vms` lists them)"))
        })?;
        let dom = self
            .inner
            .domains
            .of_vm(id)
            .ok_or_else(|| AgentError::Config(format!("VM {name:?} has no domain")))?;
        Ok((id, dom))
    }

    /// The ring region file of VM `id` (called `name`).
    fn ring_path(&self, id: VmId, name: &str) -> Result<PathBuf, AgentError> {
        self.inner
            .ring_paths
            .lock()
            .ok()
            .and_then(|p| p.get(&id).cloned())
            .ok_or_else(|| AgentError::Config(format!("VM {name:?} has no ring region")))
    }

    /// The VM is gone for good (its QEMU exited, or the operator says so):
    /// its ring is closed and forgotten, and everything it held is released,
    /// including what a cut-off VM kept charged because its page tables might
    /// still map it. Its ring region file stays; its id is not reused.
    /// Returns how many file maps it still held.
    pub fn remove_vm(&self, name: &str) -> Result<u32, AgentError> {
        let _admin = self.admin()?;
        let (id, dom) = self.vm_named(name)?;
        let svc = dom.service();
        let held = svc.vms(Some(id)).first().map_or(0, |v| v.maps_held);
        if let Some(r) = self.inner.rings.lock().ok().and_then(|mut m| m.remove(&id)) {
            // Should a guest still be there, it falls back to lower.
            let _ = r.post_event(EventEntry {
                kind: EVENT_NOTICE,
                notice: NOTICE_HOST_RESTARTING,
                ..EventEntry::default()
            });
            r.close();
        }
        svc.remove_vm(id);
        self.inner.domains.unbind_vm(id);
        if let Some(bell) = self.inner.bells.lock().ok().and_then(|mut b| b.remove(&id)) {
            if let Some(server) = self
                .inner
                .doorbells
                .lock()
                .ok()
                .as_ref()
                .and_then(|s| s.as_ref())
            {
                server.remove(bell.vm());
            }
            let _ = std::fs::remove_file(self.inner.config.doorbell_path(name));
        }
        if let Ok(mut added) = self.inner.added.lock() {
            if added.iter().any(|(n, _)| n == name) {
                added.retain(|(n, _)| n != name);
                if let Err(e) = write_added_vms(&self.inner.config, &added) {
                    tracing::error!(vm = name, error = %e, "cannot update the VMs added at run time");
                }
            }
        }
        tracing::warn!(
            vm = name,
            id,
            domain = dom.name(),
            maps_released = held,
            "VM removed"
        );
        self.close_domain_if_empty(dom.name());
        Ok(held)
    }

    /// Where VM `name` attaches: its ring region and its trust domain's
    /// pool, with the sizes of the files as they are (what QEMU maps), or
    /// as configured if a file cannot be read.
    pub fn attachment(&self, name: &str) -> Result<crate::qemu::Attachment, AgentError> {
        let (id, dom) = self.vm_named(name)?;
        let ring_path = self.ring_path(id, name)?;
        let size = |p: &Path, configured: u64| std::fs::metadata(p).map_or(configured, |m| m.len());
        Ok(crate::qemu::Attachment {
            vm: name.to_string(),
            domain: dom.name().to_string(),
            ring_size: size(&ring_path, self.inner.opts.ring_size),
            ring_path,
            pool_size: size(
                dom.pool_path(),
                self.inner.config.domain_pool_size(dom.name()),
            ),
            pool_path: dom.pool_path().to_path_buf(),
            doorbell: self
                .inner
                .config
                .doorbell
                .then(|| self.inner.config.doorbell_path(name)),
        })
    }

    /// Serves a cut-off VM again, or restarts a ring whose indices the
    /// guest corrupted. Its ring region starts over: a new ring is written
    /// into it with a new generation, so the guest drops what it still had
    /// and reconnects (the service releases what the VM held through the
    /// old ring when it sees the guest attach the new one), then the VM may
    /// hold maps again. Returns whether there was something to do (false:
    /// neither cut off nor corrupt). Fails if the poller does not let go of
    /// the old ring within a few seconds (try again).
    pub fn reinstate_vm(&self, name: &str) -> Result<bool, AgentError> {
        let _admin = self.admin()?;
        let (id, dom) = self.vm_named(name)?;
        let svc = dom.service();
        let old = self
            .inner
            .rings
            .lock()
            .ok()
            .and_then(|m| m.get(&id).cloned());
        let corrupt = old.as_ref().is_some_and(|r| r.is_corrupt());
        if !svc.is_cut_off(id) && !corrupt {
            return Ok(false);
        }
        if let Some(r) = &old {
            // The poller drops a closed ring at its next round; it must
            // stop touching the region before a new ring is written there.
            r.close();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while !r.is_dropped() {
                if std::time::Instant::now() > deadline {
                    return Err(AgentError::Config(format!(
                        "VM {name:?}: its old ring is still being closed; try again"
                    )));
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        }
        drop(old);
        let path = self.ring_path(id, name)?;
        let generation = self.next_ring_generation();
        let ring = self.doorbell_for(id, name, &path, create_ring(&path, id, generation)?)?;
        // Before a poller has the ring: the guest's attachment, which makes
        // the service release what the VM held through the old ring, must
        // find the VM reinstated.
        svc.reinstate_vm(id);
        let poller = self.install_ring(id, ring)?;
        tracing::info!(
            corrupt,
            vm = name,
            id,
            generation,
            ?poller,
            "VM reinstated: its ring starts over"
        );
        Ok(true)
    }

    /// A ring generation no ring of this agent had: the agent's own plus the
    /// number of rings restarted so far (restarts of the agent take a new
    /// base from the clock, far from these).
    fn next_ring_generation(&self) -> u64 {
        let n = self
            .inner
            .reinstated
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        self.inner.opts.generation.wrapping_add(n)
    }

    /// Stops every thread without a word to the guests and without touching
    /// the pool or the rings again, as a crash (SIGKILL) would; restart tests
    /// start another agent over the same files afterwards.
    #[cfg(any(test, feature = "test-utils"))]
    pub fn abandon(&self) {
        self.stop_threads();
    }

    /// Stops the pollers, the ivshmem server and every domain's service
    /// threads (loaders, ticker).
    fn stop_threads(&self) {
        if let Some(p) = self.inner.pollers.lock().ok().and_then(|mut p| p.take()) {
            p.shutdown();
        }
        // The sockets stay: a QEMU keeps reconnecting until the next agent
        // binds them again.
        if let Some(s) = self.inner.doorbells.lock().ok().and_then(|mut s| s.take()) {
            s.shutdown();
        }
        for d in self.inner.domains.all() {
            d.service().shutdown();
        }
    }

    /// Stops the pollers and loader threads. Ring region files and the pool
    /// stay as they are (the VMs still map them): guests keep their maps,
    /// whose frames nothing rewrites, and the next agent adopts pool and
    /// rings in place. (`NOTICE_HOST_RESTARTING`, which made every guest drop
    /// every map, is no longer sent.)
    pub fn shutdown(&self) {
        if let Ok(rings) = self.inner.rings.lock() {
            for r in rings.values() {
                r.close();
            }
        }
        self.stop_threads();
        tracing::info!("agent stopped");
    }
}
