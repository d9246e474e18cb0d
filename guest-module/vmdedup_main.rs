// SPDX-License-Identifier: GPL-2.0
//! vmdedup guest module.
//!
//! Finds the two vmdedup shared regions (ivshmem-plain PCI devices): the per-VM
//! ring region and the pool region that every VM maps read-only. Each region is
//! told apart by the magic and version the host writes at offset 0; a device with
//! anything else is refused and never dereferenced beyond its prefix. Then
//! serves vmdedupfs: hints on open, reads, mappings and faults from pool frames.
//!
//! The crate is built bottom-up: a module only imports modules below it.
//! 1. The imports, leaves that use nothing of this crate: [`ffi`] (every C
//!    function this crate calls, the structs and the parameter enumeration
//!    it shares with C, thin safe wrappers), [`stats`] (the counters in
//!    `/sys/kernel/vmdedup/stats/`), [`text`] (text into fixed buffers), and
//!    the shared-memory ABI and the ring's guest end, the very files the
//!    host compiles: `wire`, `abi`, `layout`, `pool`, `spsc`, `guest`
//!    (`protocol/src/`).
//! 2. Mappings: [`mapping`] (one mapped BAR, volatile access only) and
//!    [`regions`] (which mapping is the ring, which the pool, refusals).
//! 3. Per-file state: [`file`] (a file's identity and the host's answer,
//!    kept with its inode). It sits under the ring client because the
//!    client's pending requests and held maps refer to it.
//! 4. The ring client: [`client`] (hints out, answers and events in).
//! 5. The link to the host: [`link`] (regions and client under one lock, the
//!    state every entry point reaches).
//! 6. The file system's decisions: [`fs`] (mount options, reads, mappings,
//!    faults, which mappings may use the pool).
//! 7. The entry points: [`entry`] (every `vmdedup_rs_*` function the C glue
//!    calls), and this crate root (the module itself).
//!
//! The C glue registers what 6.12 has no Rust abstraction for: `glue.c` (PCI
//! driver, sysfs, module parameters, timer) and `fs.c` (the vmdedupfs VFS
//! operation tables and mmap fault plumbing); `glue.h` declares everything
//! the two sides share.

use kernel::prelude::*;

// The shared-memory ABI and the ring's guest end: the very files the host
// agent compiles with cargo, where the workspace's clippy lints them. Items
// the module does not use yet are allowed to be dead.
#[allow(dead_code, unreachable_pub)]
#[path = "../protocol/src/abi.rs"]
mod abi;
#[allow(dead_code, unreachable_pub)]
#[path = "../protocol/src/guest.rs"]
mod guest;
#[allow(dead_code, unreachable_pub)]
#[path = "../protocol/src/layout.rs"]
mod layout;
#[allow(dead_code, unreachable_pub)]
#[path = "../protocol/src/pool.rs"]
mod pool;
#[allow(dead_code, unreachable_pub)]
#[path = "../protocol/src/spsc.rs"]
mod spsc;
#[allow(dead_code, unreachable_pub)]
#[path = "../protocol/src/wire.rs"]
mod wire;

mod ffi;
mod stats;
mod text;

mod mapping;
mod regions;

mod file;

mod client;

mod link;

mod fs;

mod entry;

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

/// The module: owns the shared state; the glue registrations borrow it and are
/// torn down in [`Drop`] before it goes away.
struct Vmdedup {
    shared: Pin<KBox<link::Shared>>,
}

impl kernel::Module for Vmdedup {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        stats::reset();
        let shared = KBox::pin_init(link::Shared::new(), GFP_KERNEL)?;
        let ctx: *const link::Shared = &*shared;
        // SAFETY: `ctx` points into the box the module keeps (pinned, never
        // moved) until its `Drop` calls `glue_exit`, so it outlives every
        // callback.
        unsafe { ffi::glue_init(ctx.cast()) }?;
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
            let mut link = self.shared.link.lock();
            let (ring, pool, client) = link.parts();
            client.shutdown(ring, pool);
        }
        // SAFETY: called once, here; a `Vmdedup` exists only after
        // `glue_init` succeeded.
        unsafe { ffi::glue_exit() };
        pr_info!("unloaded\n");
    }
}
