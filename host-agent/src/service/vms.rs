//! The VM registry: which VMs the service knows, their trust domains, and
//! which namespaces each may use.

use std::sync::Arc;

use super::{lock, read, write, HintService, ServiceError};
use crate::namespace::{valid_name, Namespace};
use crate::store::VmId;

/// A registered VM.
#[derive(Clone, Debug)]
pub(super) struct VmInfo {
    /// Its unique name.
    pub(super) name: String,
    /// Its trust domain: which namespaces it may use.
    pub(super) domain: String,
}

impl HintService {
    /// Registers VM `id` (the ring id) with its name and trust domain.
    pub fn add_vm(&self, id: VmId, name: &str, domain: &str) -> Result<(), ServiceError> {
        if !valid_name(name) || !valid_name(domain) {
            return Err(ServiceError::BadName(format!("{name}/{domain}")));
        }
        let mut vms = write(&self.shared.vms);
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
        read(&self.shared.vms)
            .iter()
            .find(|(_, v)| v.name == name)
            .map(|(&id, _)| id)
    }

    /// The VM is gone (its QEMU exited): drops everything it held.
    pub fn remove_vm(&self, id: VmId) {
        write(&self.shared.vms).remove(&id);
        lock(&self.shared.told).remove_vm(id);
        lock(&self.shared.waiters).remove_vm(id);
        lock(&self.shared.jobs).forget_backlog(Some(id));
        let now = self.now_ms();
        self.with_store(|s| s.remove_vm(id, now));
    }

    /// Sets VM `id`'s own limit on the pool pages it may hold (`None`: the
    /// store's default; 0: no limit).
    pub fn set_vm_quota(&self, id: VmId, max_pages: Option<u64>) {
        self.with_store(|s| s.set_vm_quota(id, max_pages));
    }

    /// Serves a cut-off VM again (after its ring was reset). What it held
    /// before stays charged to it until [`vm_reconnected`](Self::vm_reconnected)
    /// or [`cut_off_acknowledged`](Self::cut_off_acknowledged).
    pub fn reinstate_vm(&self, id: VmId) {
        self.with_store(|s| s.reinstate_vm(id));
    }

    /// The guest of VM `id` acknowledged its cut-off: it dropped every map it
    /// held, so the frames charged to it may be freed. Returns whether
    /// anything was released.
    pub fn cut_off_acknowledged(&self, id: VmId) -> bool {
        self.with_store(|s| s.release_all(id))
    }

    /// The guest of VM `id` connected to its reinstated ring: what it held on
    /// the old ring is released. Returns whether anything was released.
    pub fn vm_reconnected(&self, id: VmId) -> bool {
        // Its request ids belong to the guest that went away.
        lock(&self.shared.waiters).remove_vm(id);
        self.with_store(|s| s.vm_reconnected(id))
    }

    /// Whether VM `id` is cut off.
    pub fn is_cut_off(&self, id: VmId) -> bool {
        lock(&self.shared.store).is_cut_off(id)
    }

    /// Namespace `ns` if VM `vm` is registered and its domain may use it.
    pub(super) fn namespace_for(&self, vm: VmId, ns: u32) -> Option<Arc<Namespace>> {
        let domain = read(&self.shared.vms).get(&vm)?.domain.clone();
        let n = read(&self.shared.namespaces).get(&ns)?.clone();
        n.allows(&domain).then_some(n)
    }

    /// Namespace by name, if `vm` (or the host, `None`) may use it.
    pub fn namespace_named(&self, name: &str, vm: Option<VmId>) -> Option<Arc<Namespace>> {
        let n = read(&self.shared.namespaces)
            .values()
            .find(|n| n.name() == name)?
            .clone();
        match vm {
            None => Some(n),
            Some(vm) => self.namespace_for(vm, n.id()),
        }
    }
}
