//! Trust domains: the boundary of sharing.
//!
//! Each trust domain has a pool memory file of its own, with its own frame
//! tables, its own page store and its own [`HintService`] (path cache, load
//! queues, loader threads, revocation ticker). A VM attaches only its own
//! domain's pool, so nothing a VM can map or be answered depends on what a
//! VM of another domain did: identical pages are shared within a domain and
//! never across, and a namespace that several domains may use is loaded into
//! each of their pools. Only the counters ([`Stats`]) are kept in one place,
//! keyed by VM, so that the host's totals cover every domain; a VM reads its
//! own.
//!
//! [`Domains`] is the set of open domains and the VM-to-domain routing: the
//! pollers' [`Handler`] (a hint goes to its VM's domain) and what the control
//! channel and CLI report (a VM sees its own domain's service only, the host
//! sees every domain). The agent opens and closes domains
//! ([`crate::agent::Agent`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use vmdedup_protocol::abi::AnswerStatus;
use vmdedup_protocol::control::{
    bounded_str, DomainReport, FileReport, NamespaceReport, StatusReport, VmReport, MAX_DOMAINS,
    MAX_VMS,
};

use crate::ring::handler::{Answer, Handler, Hint, RingId};
use crate::service::{HintService, ServiceError, WarmProgress};
use crate::stats::Stats;
use crate::store::VmId;

/// One open trust domain.
pub struct Domain {
    name: String,
    pool_path: PathBuf,
    service: HintService,
    /// Its pool was served by a previous agent and taken over in place (its
    /// VMs' rings are adopted too, and they re-announce their maps).
    adopted: bool,
}

impl std::fmt::Debug for Domain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Domain")
            .field("name", &self.name)
            .field("pool", &self.pool_path)
            .finish_non_exhaustive()
    }
}

impl Domain {
    /// A domain over its pool file and the service that owns its store.
    pub fn new(name: &str, pool_path: &Path, service: HintService, adopted: bool) -> Self {
        Domain {
            name: name.to_string(),
            pool_path: pool_path.to_path_buf(),
            service,
            adopted,
        }
    }

    /// The domain's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its pool memory file.
    pub fn pool_path(&self) -> &Path {
        &self.pool_path
    }

    /// Its hint service (and, through it, its page store).
    pub fn service(&self) -> &HintService {
        &self.service
    }

    /// Whether its pool was taken over from a previous agent.
    pub fn adopted(&self) -> bool {
        self.adopted
    }
}

#[derive(Default)]
struct State {
    by_name: BTreeMap<String, Arc<Domain>>,
    by_vm: BTreeMap<VmId, Arc<Domain>>,
}

/// The open trust domains and which VM is in which. Cheap to clone.
#[derive(Clone)]
pub struct Domains {
    state: Arc<RwLock<State>>,
    /// Every configured namespace, in configuration order: the host lists
    /// them all, even those no open domain may use.
    namespaces: Arc<[String]>,
    stats: Arc<Stats>,
}

impl std::fmt::Debug for Domains {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Domains")
            .field("domains", &self.names())
            .finish_non_exhaustive()
    }
}

impl Domains {
    /// No domain open yet; `namespaces` are every configured namespace's
    /// names, `stats` the counters every domain's service counts into.
    pub fn new(namespaces: Vec<String>, stats: Arc<Stats>) -> Self {
        Domains {
            state: Arc::default(),
            namespaces: namespaces.into(),
            stats,
        }
    }

    /// One open domain, `name`, over `service` (and its pool file
    /// `pool_path`), with every VM the service knows routed to it and its
    /// namespaces as the configured ones: a single-domain set for tools and
    /// tests that build a service themselves.
    pub fn single(name: &str, pool_path: &Path, service: HintService) -> Self {
        let namespaces = service
            .namespaces(None)
            .iter()
            .map(|n| n.name.as_str().to_string())
            .collect();
        let domains = Domains::new(namespaces, service.stats());
        let vms: Vec<VmId> = service
            .vms(None)
            .iter()
            .filter_map(|v| service.vm_id(v.name.as_str()))
            .collect();
        let d = Arc::new(Domain::new(name, pool_path, service, false));
        domains.insert(Arc::clone(&d));
        for vm in vms {
            domains.bind_vm(vm, &d);
        }
        domains
    }

    /// The counters every domain's service counts into.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds an open domain (replacing none: the caller checked).
    pub fn insert(&self, d: Arc<Domain>) {
        self.write().by_name.insert(d.name.clone(), d);
    }

    /// The open domain called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Domain>> {
        self.read().by_name.get(name).cloned()
    }

    /// The service of the open domain called `name`.
    pub fn service(&self, name: &str) -> Option<HintService> {
        self.get(name).map(|d| d.service.clone())
    }

    /// Every open domain, by name.
    pub fn all(&self) -> Vec<Arc<Domain>> {
        self.read().by_name.values().cloned().collect()
    }

    /// The names of the open domains.
    pub fn names(&self) -> Vec<String> {
        self.read().by_name.keys().cloned().collect()
    }

    /// Routes VM `vm` to domain `d`.
    pub fn bind_vm(&self, vm: VmId, d: &Arc<Domain>) {
        self.write().by_vm.insert(vm, Arc::clone(d));
    }

    /// Stops routing VM `vm`; returns its domain.
    pub fn unbind_vm(&self, vm: VmId) -> Option<Arc<Domain>> {
        self.write().by_vm.remove(&vm)
    }

    /// Whether any VM is routed to domain `name`.
    pub fn has_vms(&self, name: &str) -> bool {
        self.read().by_vm.values().any(|d| d.name == name)
    }

    /// Closes domain `name` (it must have no VM left); returns it.
    pub fn remove(&self, name: &str) -> Option<Arc<Domain>> {
        let mut s = self.write();
        if s.by_vm.values().any(|d| d.name == name) {
            return None;
        }
        s.by_name.remove(name)
    }

    /// The domain of VM `vm`.
    pub fn of_vm(&self, vm: VmId) -> Option<Arc<Domain>> {
        self.read().by_vm.get(&vm).cloned()
    }

    /// The service of VM `vm`'s domain.
    pub fn service_of_vm(&self, vm: VmId) -> Option<HintService> {
        self.read().by_vm.get(&vm).map(|d| d.service.clone())
    }

    /// The id of the VM called `name`, in whichever domain.
    pub fn vm_id(&self, name: &str) -> Option<VmId> {
        self.all().iter().find_map(|d| d.service.vm_id(name))
    }

    /// Whether VM `vm` is cut off from its domain's pool.
    pub fn is_cut_off(&self, vm: VmId) -> bool {
        self.service_of_vm(vm).is_some_and(|s| s.is_cut_off(vm))
    }

    /// Status for the host (`None`: every domain, with each domain's pool
    /// figures and the sums) or for one VM (its own domain's pool geometry
    /// and its own counters, nothing that depends on another VM).
    pub fn status(&self, only: Option<VmId>) -> StatusReport {
        if let Some(vm) = only {
            return match self.service_of_vm(vm) {
                Some(s) => s.status(Some(vm)),
                None => StatusReport::default(),
            };
        }
        let mut report = StatusReport {
            counters: self.stats.total.snapshot(),
            ..StatusReport::default()
        };
        let mut pages_mapped = 0u64;
        for d in self.all() {
            let r = d.service.status(None);
            report.pool.add(&r.pool);
            pages_mapped += r.counters.pages_mapped;
            let _ = report.domains.push(DomainReport {
                name: bounded_str(&d.name),
                pool: r.pool,
                vms: r.vms.len() as u32,
                filesystem_full: d.service.filesystem_full(),
            });
            for v in r.vms {
                if report.vms.len() < MAX_VMS {
                    let _ = report.vms.push(v);
                }
            }
            if report.domains.len() == MAX_DOMAINS {
                break;
            }
        }
        report.counters.pages_mapped = pages_mapped;
        // Saved bytes are counted within each domain (pages mapped beyond
        // the frames its pool uses); the host saves their sum.
        report
    }

    /// The VMs (`only`: just that one).
    pub fn vms(&self, only: Option<VmId>) -> Vec<VmReport> {
        self.status(only).vms.into_iter().collect()
    }

    /// Namespaces visible to `vm` (`None`: every configured namespace, with
    /// its file maps summed over the domains' pools).
    pub fn namespaces(&self, only: Option<VmId>) -> Vec<NamespaceReport> {
        if let Some(vm) = only {
            return self
                .service_of_vm(vm)
                .map(|s| s.namespaces(Some(vm)))
                .unwrap_or_default();
        }
        let per_domain: Vec<Vec<NamespaceReport>> = self
            .all()
            .iter()
            .map(|d| d.service.namespaces(None))
            .collect();
        self.namespaces
            .iter()
            .map(|name| NamespaceReport {
                name: bounded_str(name),
                file_maps: per_domain
                    .iter()
                    .flatten()
                    .filter(|n| n.name.as_str() == name)
                    .map(|n| n.file_maps)
                    .sum(),
            })
            .collect()
    }

    /// File maps of namespace `ns` (every namespace if empty) in the pools
    /// `vm` may see (`None`: every domain's, in domain order; a VM: those it
    /// holds), each with its domain; `(total, page)`.
    pub fn files(
        &self,
        ns: &str,
        only: Option<VmId>,
        offset: usize,
        limit: usize,
    ) -> (u64, Vec<FileReport>) {
        let domains = match only {
            Some(vm) => self.of_vm(vm).into_iter().collect(),
            None => self.all(),
        };
        let (mut total, mut skip, mut page) = (0u64, offset, Vec::new());
        for d in domains {
            let (n, _) = d.service.files(ns, only, 0, 0);
            total += n;
            let here = usize::try_from(n).unwrap_or(usize::MAX);
            if skip >= here {
                skip -= here;
                continue;
            }
            let want = limit.saturating_sub(page.len());
            if want > 0 {
                let (_, files) = d.service.files(ns, only, skip, want);
                page.extend(files.into_iter().map(|mut f| {
                    f.domain = bounded_str(&d.name);
                    f
                }));
            }
            skip = 0;
        }
        (total, page)
    }

    /// Loads `rel` of namespace `ns` into the pool of `vm`'s domain, or
    /// (`None`, the host) into the pool of every open domain that may use
    /// `ns`, one after the other; the progress is summed.
    pub fn warm(
        &self,
        ns: &str,
        rel: &[u8],
        only: Option<VmId>,
        progress: &mut dyn FnMut(&WarmProgress),
    ) -> Result<WarmProgress, ServiceError> {
        if let Some(vm) = only {
            let svc = self
                .service_of_vm(vm)
                .ok_or_else(|| ServiceError::NoNamespace(ns.to_string()))?;
            return svc.warm(ns, rel, Some(vm), progress);
        }
        let mut sum = WarmProgress::default();
        let mut any = false;
        for d in self.all() {
            if d.service.namespace_named(ns, None).is_none() {
                continue;
            }
            any = true;
            let base = sum;
            let p = d.service.warm(ns, rel, None, &mut |p| {
                let mut now = base;
                now.add(p);
                progress(&now)
            })?;
            tracing::info!(
                domain = d.name,
                ns,
                files = p.files_done - p.skipped,
                pages = p.pages,
                skipped = p.skipped,
                "warmed into the domain's pool"
            );
            sum.add(&p);
        }
        if !any {
            return Err(ServiceError::NoNamespace(ns.to_string()));
        }
        Ok(sum)
    }

    /// Evicts or revokes what is stored for `rel` of `ns` (every namespace
    /// if empty) in every domain's pool; (dropped, revocations started),
    /// summed.
    pub fn evict(&self, ns: &str, rel: &str) -> Result<(u64, u64), ServiceError> {
        let (mut dropped, mut revoking, mut any) = (0, 0, ns.is_empty());
        for d in self.all() {
            if !ns.is_empty() && d.service.namespace_named(ns, None).is_none() {
                continue;
            }
            any = true;
            let (a, b) = d.service.evict(ns, rel)?;
            dropped += a;
            revoking += b;
        }
        if !any {
            if self.namespaces.iter().any(|n| n == ns) {
                // Configured, but no open domain may use it: nothing stored.
                return Ok((0, 0));
            }
            return Err(ServiceError::NoNamespace(ns.to_string()));
        }
        Ok((dropped, revoking))
    }
}

impl Handler for Domains {
    fn handle(&self, ring: RingId, hint: &Hint<'_>) -> Answer {
        match self.service_of_vm(ring.0) {
            Some(s) => s.handle(ring, hint),
            // A ring is bound to its domain before it is served, and unbound
            // only after it was closed: a hint here is a race with
            // `vm remove`, answered as the host's error (the guest falls
            // back to lower).
            None => Answer::Miss(AnswerStatus::HostError),
        }
    }

    fn ack_revoke(&self, ring: RingId, file_map_id: u64) {
        if let Some(s) = self.service_of_vm(ring.0) {
            s.ack_revoke(ring, file_map_id);
        }
    }

    fn release(&self, ring: RingId, file_map_id: u64) {
        if let Some(s) = self.service_of_vm(ring.0) {
            Handler::release(&s, ring, file_map_id);
        }
    }

    fn cut_off_acknowledged(&self, ring: RingId) {
        if let Some(s) = self.service_of_vm(ring.0) {
            Handler::cut_off_acknowledged(&s, ring);
        }
    }

    fn reconnected(&self, ring: RingId) {
        if let Some(s) = self.service_of_vm(ring.0) {
            Handler::reconnected(&s, ring);
        }
    }

    fn hold(&self, ring: RingId, file_map_id: u64) {
        if let Some(s) = self.service_of_vm(ring.0) {
            Handler::hold(&s, ring, file_map_id);
        }
    }

    fn holds_done(&self, ring: RingId, token: u64) {
        if let Some(s) = self.service_of_vm(ring.0) {
            Handler::holds_done(&s, ring, token);
        }
    }
}
