//! What the control channel and metrics show: status, VMs, namespaces and
//! file listings, for the host or for one VM (which sees only itself and the
//! namespaces it may use).

use std::collections::BTreeMap;
use std::sync::Arc;

use vmdedup_protocol::control::{
    bounded_str, FileReport, NamespaceReport, PoolFigures, StatusReport, VmReport, MAX_VMS,
};

use super::{lock, read, HintService};
use crate::namespace::Namespace;
use crate::stats::bytes_saved;
use crate::store::VmId;

impl HintService {
    /// Status for the host (`None`: every VM) or for one VM (itself only).
    pub fn status(&self, only: Option<VmId>) -> StatusReport {
        // The registry before the store: `add_vm` holds it while it takes the store.
        let vms = read(&self.shared.vms).clone();
        let store = lock(&self.shared.store);
        let c = store.counts();
        let generation = store.pool().geometry().generation;
        let mut report = StatusReport {
            pool: PoolFigures {
                generation,
                frames_total: c.frames_total,
                frames_budget: c.frames_budget,
                frames_used: c.frames_used,
                file_maps: c.file_maps,
                bytes_saved: bytes_saved(c.pages_mapped, c.frames_used),
            },
            counters: self.shared.stats.total.snapshot(),
            vms: heapless::Vec::new(),
            domains: heapless::Vec::new(),
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
        if only.is_some() {
            // A VM sees its own counters as the totals, and nothing that
            // other VMs change: the pool's use, its file maps and the bytes
            // saved depend on what they loaded. Only the pool's fixed
            // geometry stays.
            let mine = report.vms.first().map(|v| v.counters).unwrap_or_default();
            report.counters = mine;
            report.pool = report.pool.geometry();
        }
        report
    }

    /// Allocations of this service's pool refused because its filesystem
    /// was full (host only: it depends on what every VM loaded).
    pub fn filesystem_full(&self) -> u64 {
        lock(&self.shared.store).counts().filesystem_full
    }

    /// The VMs (`only`: just that one).
    pub fn vms(&self, only: Option<VmId>) -> Vec<VmReport> {
        self.status(only).vms.into_iter().collect()
    }

    /// Namespaces visible to `vm` (`None`: all), with their map counts
    /// (for a VM: the maps it holds, nothing about what others loaded).
    pub fn namespaces(&self, vm: Option<VmId>) -> Vec<NamespaceReport> {
        let maps = self.maps_seen_by(vm);
        let all: Vec<Arc<Namespace>> = read(&self.shared.namespaces).values().cloned().collect();
        all.into_iter()
            .filter(|n| vm.is_none_or(|vm| self.namespace_for(vm, n.id()).is_some()))
            .map(|n| NamespaceReport {
                name: bounded_str(n.name()),
                file_maps: maps.iter().filter(|m| m.label.ns == n.id()).count() as u32,
            })
            .collect()
    }

    /// File maps in namespaces visible to `vm` (`None`: all; a VM sees only
    /// the maps it holds), optionally of one namespace; `(total, page)`.
    pub fn files(
        &self,
        ns_name: &str,
        vm: Option<VmId>,
        offset: usize,
        limit: usize,
    ) -> (u64, Vec<FileReport>) {
        let visible: BTreeMap<u32, String> = read(&self.shared.namespaces)
            .values()
            .filter(|n| ns_name.is_empty() || n.name() == ns_name)
            .filter(|n| vm.is_none_or(|vm| self.namespace_for(vm, n.id()).is_some()))
            .map(|n| (n.id(), n.name().to_string()))
            .collect();
        let maps: Vec<_> = self
            .maps_seen_by(vm)
            .into_iter()
            .filter(|m| visible.contains_key(&m.label.ns))
            .collect();
        let page = maps
            .iter()
            .skip(offset)
            .take(limit)
            .map(|m| FileReport {
                // The agent's domain layer names the domain.
                domain: Default::default(),
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

    /// Every file map (`None`: the host) or those `vm` holds: a VM must not
    /// learn which files other VMs loaded.
    fn maps_seen_by(&self, vm: Option<VmId>) -> Vec<crate::store::MapSummary> {
        let store = lock(&self.shared.store);
        let maps = store.maps();
        match vm {
            None => maps,
            Some(vm) => {
                let mine = store.held_by(vm);
                maps.into_iter().filter(|m| mine.contains(&m.id)).collect()
            }
        }
    }
}
