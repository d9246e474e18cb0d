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
        let now = self.now_ms();
        self.with_store(|s| s.remove_vm(id, now));
    }

    /// Serves a cut-off VM again (after its ring was reset).
    pub fn reinstate_vm(&self, id: VmId) {
        self.with_store(|s| s.reinstate_vm(id));
    }

    /// The cut-off VM `id` acknowledged its cut-off: no page table of it
    /// maps a pool frame any more. (The store drops a cut-off VM's
    /// holdings at the cut-off already; this records the edge.)
    pub fn cut_off_acknowledged(&self, id: VmId) {
        tracing::info!(vm = id, "cut-off acknowledged by the guest");
    }

    /// VM `id`'s guest attached its (new) ring after dropping every map it
    /// had through an older one.
    pub fn vm_reconnected(&self, id: VmId) {
        tracing::debug!(vm = id, "guest attached its ring");
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
