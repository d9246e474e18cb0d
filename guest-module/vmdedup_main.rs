// SPDX-License-Identifier: GPL-2.0
//! vmdedup guest module.
//!
//! Finds the two vmdedup shared regions (ivshmem-plain PCI devices): the per-VM
//! ring region and the pool region that every VM maps read-only. Each region is
//! told apart by the magic and version the host writes at offset 0; a device with
//! anything else is refused and never dereferenced beyond its prefix.
//!
//! Layout of this crate:
//! - `abi`: the shared-memory ABI, the very file the host compiles
//!   (`protocol/src/abi.rs`);
//! - [`regions`]: the table of mapped regions and their validation;
//! - [`client`]: the ring client (hints, answers, events);
//! - [`fs`]: vmdedupfs decisions (options, per-file answers, reads, faults);
//! - [`stats`]: the counters in `/sys/kernel/vmdedup/stats/`;
//! - [`ffi`]: every C function this crate calls and every Rust entry point the
//!   C glue (`glue.c`: PCI driver, sysfs, parameters, timer; `fs.c`: the
//!   vmdedupfs operation tables) calls, in one place.

use kernel::prelude::*;
use kernel::sync::Mutex;

// The shared-memory ABI: the very files the host agent compiles with cargo.
// Items the module does not use yet are allowed to be dead.
#[allow(dead_code, unreachable_pub)]
#[path = "../protocol/src/abi.rs"]
mod abi;
#[allow(dead_code, unreachable_pub)]
#[path = "../protocol/src/pool.rs"]
mod pool;
#[allow(dead_code, unreachable_pub)]
#[path = "../protocol/src/spsc.rs"]
mod spsc;
#[allow(dead_code, unreachable_pub)]
#[path = "../protocol/src/guest.rs"]
mod guest;
#[allow(dead_code, unreachable_pub)]
#[path = "../protocol/src/wire.rs"]
mod wire;
#[allow(dead_code, unreachable_pub)]
#[path = "../protocol/src/layout.rs"]
mod layout;
mod client;
mod ffi;
mod fs;
mod regions;
mod stats;

// The layout the module is built against, checked again in kernel terms: a
// change to the ABI that breaks these fails the module build, not a guest.
static_assert!(core::mem::size_of::<abi::RegionPrefix>() == 32);
static_assert!(core::mem::size_of::<abi::RingHeader>() == abi::RING_HEADER_SIZE as usize);
static_assert!(core::mem::size_of::<abi::SubmissionEntry>() == abi::SQE_INLINE_PATH_OFF as usize);
static_assert!(core::mem::size_of::<abi::CompletionEntry>() == abi::CQE_SIZE as usize);
static_assert!(core::mem::size_of::<abi::EventEntry>() == abi::EQE_SIZE as usize);
static_assert!(core::mem::size_of::<pool::PoolHeader>() == pool::POOL_HEADER_SIZE);
static_assert!(core::mem::size_of::<pool::TableHeader>() == pool::TABLE_HEADER_SIZE);

module! {
    type: Vmdedup,
    name: "vmdedup",
    author: "vmdedup developers",
    description: "vmdedup: serve files from host frames shared by all VMs (guest side)",
    license: "GPL",
}

/// State shared by every C callback: the region table, which also owns the
/// ring client.
#[pin_data]
pub(crate) struct Shared {
    #[pin]
    pub(crate) regions: Mutex<regions::Regions>,
}

/// The module: owns the shared state; the glue registrations borrow it and are
/// torn down in [`Drop`] before it goes away.
struct Vmdedup {
    shared: Pin<KBox<Shared>>,
}

impl kernel::Module for Vmdedup {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        stats::reset();
        let shared = KBox::pin_init(
            pin_init!(Shared { regions <- kernel::new_mutex!(regions::Regions::new(), "vmdedup::regions") }),
            GFP_KERNEL,
        )?;
        ffi::glue_init(&shared)?;
        pr_info!("loaded; ivshmem driver and vmdedupfs registered\n");
        Ok(Vmdedup { shared })
    }
}

impl Drop for Vmdedup {
    fn drop(&mut self) {
        // Unregisters vmdedupfs (no mount exists: each pins the module), the
        // timer, the PCI driver (detaching every region) and the sysfs tree;
        // nothing calls into the shared state after this returns. First the
        // host hears about every map this guest let go of.
        {
            let mut regions = self.shared.regions.lock();
            let (ring, pool, client) = regions.parts();
            client.shutdown(ring, pool);
        }
        ffi::glue_exit();
        pr_info!("unloaded\n");
    }
}
