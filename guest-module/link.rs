// SPDX-License-Identifier: GPL-2.0
//! The link to the host: the region table and the ring client that talks
//! over its regions, under one lock, and the module state every entry point
//! reaches through the glue's context pointer. Above the ring client; the
//! file system's decisions and the entry points use it.

use kernel::prelude::*;
use kernel::sync::Mutex;

use crate::abi::DOORBELL_GUEST_PEER;
use crate::client::Client;
use crate::ffi::Doorbell;
use crate::mapping::Mapping;
use crate::regions::{DevName, Regions, Slot};

/// The region table and the ring client. One lock covers both: the client
/// reads and writes the regions' memory, and a region must not be detached
/// while the client uses it.
pub(crate) struct Link {
    /// The mapped regions.
    pub(crate) regions: Regions,
    client: Client,
}

impl Link {
    /// No region, a client that never connected.
    pub(crate) const fn new() -> Self {
        Link {
            regions: Regions::new(),
            client: Client::new(),
        }
    }

    /// The ring mapping, the pool mapping and the ring client, borrowed apart.
    pub(crate) fn parts(&mut self) -> (Option<&Mapping>, Option<&Mapping>, &mut Client) {
        let (ring, pool) = self.regions.maps();
        (ring, pool, &mut self.client)
    }

    /// Validates a freshly mapped device and takes it as the ring or the
    /// pool region (see [`Regions::attach`]). A ring device's `doorbell`
    /// goes to the client, which rings it when the host poller asks, if the
    /// device's IVPosition register read `ivposition` as the guest's peer id
    /// ([`DOORBELL_GUEST_PEER`], what the agent's greeting gives QEMU).
    /// Anything else means the register BAR does not reach the device
    /// (a kernel that moved BAR0 onto another device's MMIO, as
    /// `pci=noacpi` can) or that its server is not a vmdedup agent: the
    /// doorbells would go nowhere, so the ring is polled instead.
    pub(crate) fn attach(
        &mut self,
        map: Mapping,
        dev: DevName,
        doorbell: Option<Doorbell>,
        ivposition: i64,
        irq: bool,
    ) -> Result<Slot> {
        let slot = self.regions.attach(map, dev)?;
        if slot == Slot::Ring {
            let doorbell = match doorbell {
                Some(_) if ivposition != i64::from(DOORBELL_GUEST_PEER) => {
                    pr_warn!(
                        "{}: ivshmem-doorbell registers read IVPosition {}, not {}: they do not reach the device or its server is no vmdedup agent; ring polled, no doorbell\n",
                        dev.as_str(),
                        ivposition,
                        DOORBELL_GUEST_PEER
                    );
                    crate::stats::inc(crate::stats::Counter::doorbell_refused);
                    None
                }
                d => d,
            };
            let refused = doorbell.is_none() && ivposition >= 0;
            if doorbell.is_some() {
                pr_info!(
                    "{}: ring on ivshmem-doorbell: doorbells rung when the host parks\n",
                    dev.as_str()
                );
            } else if !refused {
                pr_info!(
                    "{}: ring on ivshmem-plain: polled, no doorbell\n",
                    dev.as_str()
                );
            }
            self.client.set_doorbell(doorbell, irq);
        }
        Ok(slot)
    }

    /// Forgets the region in `slot`; afterwards the glue unmaps it.
    pub(crate) fn detach(&mut self, slot: Slot) {
        if let Some(dev) = self.regions.detach(slot) {
            // Nothing may point into the region any more: every pool PTE is
            // zapped (held maps dropped) and every read section that could
            // still copy from their frames has ended before the glue unmaps it.
            self.client.reset();
            crate::ffi::pool_sync();
            // The ring's doorbell stays with the ring: it goes only when the
            // ring itself is detached (its register is unmapped after this).
            let (doorbell, irq) = self.client.take_doorbell();
            self.client = Client::new();
            if slot == Slot::Pool {
                self.client.set_doorbell(doorbell, irq);
            }
            pr_info!("{}: region detached\n", dev.as_str());
        }
    }
}

/// State shared by every C callback: the link to the host.
#[pin_data]
pub(crate) struct Shared {
    /// The region table and the ring client.
    #[pin]
    pub(crate) link: Mutex<Link>,
}

impl Shared {
    /// An initialiser for the module's state.
    pub(crate) fn new() -> impl PinInit<Self> {
        pin_init!(Shared { link <- kernel::new_mutex!(Link::new(), "vmdedup::link") })
    }
}
