// SPDX-License-Identifier: GPL-2.0
//! The imports: every C function this crate calls, the structs and
//! enumerations it shares with C, and thin safe wrappers around them. The
//! bottom layer: it uses nothing else of this crate.
//!
//! 6.12 has no Rust abstractions for PCI drivers, sysfs, module parameters or
//! file systems, so the C glue (`glue.c`: PCI driver, sysfs, module
//! parameters, event timer; `fs.c`: vmdedupfs operation tables) registers
//! those and calls back into the `vmdedup_rs_*` entry points in
//! `entry.rs`. Both directions are declared for C in `glue.h`; the
//! structs and the parameter enumeration below mirror it, and their sizes,
//! offsets and values are asserted on both sides.

use core::ffi::c_void;
use core::mem::{offset_of, size_of};
use core::ptr::NonNull;

use kernel::bindings;
use kernel::ffi::{c_int, c_uint, c_ulong};
use kernel::prelude::*;

extern "C" {
    /// Writes `value` to the Doorbell register at `reg` (`writel`).
    ///
    /// # Safety
    /// `reg` must be the Doorbell register the glue passed to
    /// `vmdedup_rs_region_attach`, and that region not detached yet.
    fn vmdedup_glue_doorbell(reg: *mut c_void, value: u32);

    /// Schedules the event work in `event_poll_ms` (also when it is pending
    /// later: the safety run of a wait).
    ///
    /// # Safety
    /// Only between [`vmdedup_glue_init`] and [`vmdedup_glue_exit`].
    fn vmdedup_glue_tick_soon();

    /// Runs the event work within `event_poll_ms` if it sleeps waiting for
    /// the interrupt. Takes no lock: callable from memory reclaim.
    ///
    /// # Safety
    /// Only between [`vmdedup_glue_init`] and [`vmdedup_glue_exit`].
    fn vmdedup_glue_sweep_soon();

    /// Registers the ivshmem PCI driver, `/sys/kernel/vmdedup`, the event
    /// timer and the vmdedupfs file system type. Returns 0 or a negative
    /// errno; on error nothing stays registered.
    ///
    /// # Safety
    /// `ctx` must stay valid until [`vmdedup_glue_exit`] has returned; the
    /// entry points receive it back.
    fn vmdedup_glue_init(ctx: *const c_void) -> c_int;

    /// Unregisters everything [`vmdedup_glue_init`] registered. PCI remove runs
    /// for every bound device and the timer is stopped before it returns.
    ///
    /// # Safety
    /// Only after a successful [`vmdedup_glue_init`], and only once.
    fn vmdedup_glue_exit();

    /// Reads up to `len` bytes of the lower file at `pos` into the read's
    /// destination iterator. Returns bytes read or a negative errno.
    ///
    /// # Safety
    /// `io` must be the live `struct vmdedup_io` of the read in progress.
    fn vmdedup_glue_read_lower(io: *mut c_void, pos: i64, len: usize) -> isize;

    /// Reads up to `len` bytes of the lower file at `pos` into `buf`.
    ///
    /// # Safety
    /// `io` as above; `buf` valid for writes of `len` bytes.
    fn vmdedup_glue_read_lower_buf(
        io: *mut c_void,
        pos: i64,
        buf: *mut c_void,
        len: usize,
    ) -> isize;

    /// Copies `len` bytes from a pool frame at `src` to the read's
    /// destination with page faults disabled; returns how many were copied
    /// (fewer when the user buffer needs a fault: see [`vmdedup_glue_fault_in`]).
    ///
    /// # Safety
    /// `io` as above; `src` valid for reads of `len` bytes for the whole call.
    fn vmdedup_glue_copy_pool(io: *mut c_void, src: *const c_void, len: usize) -> usize;

    /// `memcmp(pool, buf, len) == 0`.
    ///
    /// # Safety
    /// `pool` and `buf` valid for reads of `len` bytes.
    fn vmdedup_glue_pool_equal(pool: *const c_void, buf: *const c_void, len: usize) -> bool;

    /// Takes back the last `len` bytes copied to the read's destination.
    ///
    /// # Safety
    /// `io` as above; `len` at most what was copied to it by this read.
    fn vmdedup_glue_revert(io: *mut c_void, len: usize);

    /// Faults in the next `len` bytes of the read's destination; returns how
    /// many could not be.
    ///
    /// # Safety
    /// `io` as above.
    fn vmdedup_glue_fault_in(io: *mut c_void, len: usize) -> usize;

    /// `srcu_read_lock()` of the pool readers' SRCU domain (see glue.c).
    ///
    /// # Safety
    /// The index must be passed to [`vmdedup_glue_pool_read_unlock`] once.
    fn vmdedup_glue_pool_read_lock() -> c_int;

    /// `srcu_read_unlock()` of the pool readers' SRCU domain.
    ///
    /// # Safety
    /// `idx` from [`vmdedup_glue_pool_read_lock`], not yet unlocked.
    fn vmdedup_glue_pool_read_unlock(idx: c_int);

    /// `synchronize_srcu()` of the pool readers' SRCU domain: every read
    /// section that began before it has ended when it returns.
    ///
    /// # Safety
    /// None; it sleeps, so not in atomic context.
    fn vmdedup_glue_pool_sync();

    /// Drops the lower file's clean, unmapped page cache pages in
    /// `[start, end)`; returns how many were dropped.
    ///
    /// # Safety
    /// `io` as above (a read's or an mmap's).
    fn vmdedup_glue_drop_lower_pages(io: *mut c_void, start: i64, end: i64) -> c_ulong;

    /// A random number below `ceil` (`get_random_u32_below`), 0 for 0.
    ///
    /// # Safety
    /// None.
    fn vmdedup_glue_random_below(ceil: u32) -> u32;

    /// The current value of a module parameter (see [`Param`]).
    ///
    /// # Safety
    /// None beyond calling it while the module is loaded.
    fn vmdedup_glue_param(which: c_int) -> c_uint;

    /// `unmap_mapping_range(mapping, 0, 0, 0)`: zaps every PTE mapping the file's
    /// pages (pool frames and lower pages); pages a private mapping copied on
    /// write stay.
    ///
    /// # Safety
    /// `mapping` must be a live `struct address_space`.
    fn vmdedup_glue_unmap_all(mapping: *mut c_void);

    /// Drops the clean, unmapped page cache pages of the lower file behind
    /// the vmdedup inode of `mapping`; returns how many went.
    ///
    /// # Safety
    /// `mapping` must be the live `struct address_space` of a vmdedup inode.
    fn vmdedup_glue_drop_lower_cache(mapping: *mut c_void) -> c_ulong;

    /// `vmf_insert_mixed()` of `pfn` at the faulting address; returns its
    /// `vm_fault_t`.
    ///
    /// # Safety
    /// `vmf` must be the `struct vm_fault` of a fault in progress on a
    /// `VM_MIXEDMAP` mapping; `pfn` a frame that may be mapped read-only
    /// into user space until the mapping's PTEs are zapped.
    fn vmdedup_glue_insert_pfn(vmf: *mut c_void, pfn: c_ulong) -> c_uint;

    /// `vmf_insert_mixed()` of `pfn` at file page `pgoff` of the faulting
    /// VMA (fault-around); `VM_FAULT_SIGBUS` if the page is outside it. A
    /// present PTE is left alone.
    ///
    /// # Safety
    /// As [`vmdedup_glue_insert_pfn`].
    fn vmdedup_glue_insert_pfn_at(vmf: *mut c_void, pgoff: c_ulong, pfn: c_ulong) -> c_uint;
}

/// `vm_flags_t`: the flags of a mapping (`vma->vm_flags`).
pub(crate) type VmFlags = c_ulong;
/// `vm_fault_t`: the result of a fault handler.
pub(crate) type VmFault = c_uint;

/// `VM_WRITE`: the mapping is writable now.
pub(crate) const VM_WRITE: VmFlags = bindings::VM_WRITE as VmFlags;
/// `VM_EXEC`: the mapping is executable.
pub(crate) const VM_EXEC: VmFlags = bindings::VM_EXEC as VmFlags;
/// `VM_MAYWRITE`: `mprotect()` may make the mapping writable.
pub(crate) const VM_MAYWRITE: VmFlags = bindings::VM_MAYWRITE as VmFlags;
/// `VM_MAYSHARE`: a `MAP_SHARED` mapping (`VM_SHARED` is cleared for files
/// not open for writing; this one stays).
pub(crate) const VM_MAYSHARE: VmFlags = bindings::VM_MAYSHARE as VmFlags;
/// `VM_IO`: nothing may pin the mapping's pages.
pub(crate) const VM_IO: VmFlags = bindings::VM_IO as VmFlags;
/// `VM_DONTEXPAND`: `mremap()` may not grow the mapping.
pub(crate) const VM_DONTEXPAND: VmFlags = bindings::VM_DONTEXPAND as VmFlags;
/// `VM_DONTDUMP`: left out of core dumps.
pub(crate) const VM_DONTDUMP: VmFlags = bindings::VM_DONTDUMP as VmFlags;
/// `VM_MIXEDMAP`: may hold PFNs without a `struct page` and normal pages.
pub(crate) const VM_MIXEDMAP: VmFlags = bindings::VM_MIXEDMAP as VmFlags;

/// `VM_FAULT_NOPAGE`: the fault handler installed the PTE itself.
pub(crate) const VM_FAULT_NOPAGE: VmFault = bindings::vm_fault_reason_VM_FAULT_NOPAGE as VmFault;

/// Module parameters: `enum vmdedup_param` in `glue.h`, the values defined
/// with `module_param()` in `glue.c`.
#[derive(Clone, Copy)]
#[repr(i32)]
pub(crate) enum Param {
    /// `poll_us`: how long an open polls for the answer.
    PollUs = 0,
    /// `rehint_ms`: least time between two hints for a file the host is loading.
    RehintMs = 1,
    /// `default_verify`: verify mode of mounts without `verify=` (0 off, 1 sample, 2 full).
    DefaultVerify = 2,
    /// `fault_no_ack`: fault injection, revocations are never acknowledged.
    FaultNoAck = 3,
    /// `fault_hold_answers`: fault injection, answers are left unread.
    FaultHoldAnswers = 4,
}

impl Param {
    /// `VMDEDUP_PARAM_COUNT`: how many parameters `glue.c` serves.
    const COUNT: c_int = 5;
}

// The values of `enum vmdedup_param` (glue.h asserts the same numbers).
static_assert!(Param::PollUs as c_int == 0);
static_assert!(Param::RehintMs as c_int == 1);
static_assert!(Param::DefaultVerify as c_int == 2);
static_assert!(Param::FaultNoAck as c_int == 3);
static_assert!(Param::FaultHoldAnswers as c_int == 4);
static_assert!(Param::COUNT == 5);

/// Reads a module parameter.
pub(crate) fn param(p: Param) -> u32 {
    // SAFETY: a plain read of a parameter of this (loaded) module.
    unsafe { vmdedup_glue_param(p as c_int) }
}

/// `struct vmdedup_ident` in `glue.h`: the lower inode's identity, as fs.c
/// reads it on open.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct IdentC {
    /// `i_size` of the lower inode.
    pub(crate) size: u64,
    /// Its mtime in nanoseconds.
    pub(crate) mtime_ns: i64,
    /// Its ctime in nanoseconds.
    pub(crate) ctime_ns: i64,
    /// Its inode number.
    pub(crate) ino: u64,
    /// The fingerprint attribute's value (hex text), when `fp_len` says so.
    pub(crate) fp_text: [u8; crate::abi::FINGERPRINT_TEXT_LEN],
    /// `FINGERPRINT_TEXT_LEN` if the lower file had the attribute, else 0.
    pub(crate) fp_len: u32,
    /// Zero.
    pub(crate) reserved: u32,
}

static_assert!(size_of::<IdentC>() == 88);
static_assert!(offset_of!(IdentC, fp_text) == 32);
static_assert!(offset_of!(IdentC, fp_len) == 80);
static_assert!(offset_of!(IdentC, size) == 0);
static_assert!(offset_of!(IdentC, mtime_ns) == 8);
static_assert!(offset_of!(IdentC, ctime_ns) == 16);
static_assert!(offset_of!(IdentC, ino) == 24);

/// `struct vmdedup_mmap_plan` in `glue.h`: what `vmdedup_mmap()` in fs.c
/// does to a mapping Rust let map pool frames.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct MmapPlan {
    /// The file map the mapping was checked against (its `vm_private_data`).
    pub(crate) map_id: u64,
    /// The `VM_*` flags to set on it.
    pub(crate) set_flags: VmFlags,
}

static_assert!(size_of::<MmapPlan>() == 16);
static_assert!(offset_of!(MmapPlan, map_id) == 0);
static_assert!(offset_of!(MmapPlan, set_flags) == 8);

/// A read-side section of the pool readers' SRCU domain (glue.c documents
/// the ordering argument): whatever a reader looked up from a kept file map
/// after entering it stays mapped until it is dropped. Not `Send`: it ends
/// in the task that began it.
pub(crate) struct PoolReadSection {
    idx: c_int,
    _not_send: core::marker::PhantomData<*mut ()>,
}

impl PoolReadSection {
    /// Enters a section.
    pub(crate) fn enter() -> Self {
        // SAFETY: the index is kept and passed to the unlock exactly once, in
        // `drop`.
        let idx = unsafe { vmdedup_glue_pool_read_lock() };
        PoolReadSection {
            idx,
            _not_send: core::marker::PhantomData,
        }
    }
}

impl Drop for PoolReadSection {
    fn drop(&mut self) {
        // SAFETY: `idx` came from the lock in `enter` and is unlocked once.
        unsafe { vmdedup_glue_pool_read_unlock(self.idx) }
    }
}

/// Waits until every pool read section that began before this call has
/// ended. Sleeps; call it holding no lock a reader takes inside a section
/// (readers take only file locks there).
pub(crate) fn pool_sync() {
    // SAFETY: called from process context (every caller holds a mutex).
    unsafe { vmdedup_glue_pool_sync() }
}

/// The Doorbell register of the ring's ivshmem-doorbell device.
///
/// # Invariants
/// `reg` is the register the glue mapped for the ring region, valid until
/// that region is detached; [`crate::link::Link`] drops the doorbell when
/// it detaches the ring.
pub(crate) struct Doorbell {
    reg: NonNull<c_void>,
}

// SAFETY: the register is MMIO, written with single `writel`s from any
// thread; nothing in `Doorbell` is tied to a thread.
unsafe impl Send for Doorbell {}

impl Doorbell {
    /// The doorbell at `reg`, if any.
    ///
    /// # Safety
    /// `reg` is NULL or the Doorbell register of a region the glue is
    /// attaching, mapped until that region is detached; the caller drops the
    /// value no later than that.
    pub(crate) unsafe fn new(reg: *mut c_void) -> Option<Doorbell> {
        // INVARIANT: the caller's contract.
        NonNull::new(reg).map(|reg| Doorbell { reg })
    }

    /// Rings `vector` of ivshmem peer `peer`.
    pub(crate) fn ring(&self, peer: u16, vector: u16) {
        // SAFETY: by the type invariant the register is mapped.
        unsafe {
            vmdedup_glue_doorbell(
                self.reg.as_ptr(),
                (u32::from(peer) << 16) | u32::from(vector),
            )
        }
    }
}

/// Brings the periodic event work back (the client stopped waiting for
/// the host's interrupt).
pub(crate) fn tick_soon() {
    // SAFETY: Rust runs only while the glue is initialised (module init to
    // exit).
    unsafe { vmdedup_glue_tick_soon() }
}

/// A map waits to be released (`SWEEP_NEEDED`): the event work runs soon
/// even if it sleeps waiting for the host's interrupt. No lock taken.
pub(crate) fn sweep_soon() {
    // SAFETY: Rust runs only while the glue is initialised.
    unsafe { vmdedup_glue_sweep_soon() }
}

/// Whether `len` bytes at `pool` equal `buf`.
///
/// # Safety
/// `pool` must be valid for reads of `buf.len()` bytes.
pub(crate) unsafe fn pool_equal(pool: *const u8, buf: &[u8]) -> bool {
    // SAFETY: `pool` by the caller contract; `buf` is a slice.
    unsafe { vmdedup_glue_pool_equal(pool.cast(), buf.as_ptr().cast(), buf.len()) }
}

/// A random number below `ceil` (0 for 0).
pub(crate) fn random_below(ceil: u32) -> u32 {
    // SAFETY: no preconditions.
    unsafe { vmdedup_glue_random_below(ceil) }
}

/// Zaps every PTE of `mapping`.
///
/// # Safety
/// `mapping` must be a live `struct address_space`.
pub(crate) unsafe fn unmap_all(mapping: *mut c_void) {
    // SAFETY: forwarded caller contract.
    unsafe { vmdedup_glue_unmap_all(mapping) }
}

/// Drops the lower file's cached pages behind the vmdedup inode of
/// `mapping` (see [`vmdedup_glue_drop_lower_cache`]); returns how many went.
///
/// # Safety
/// `mapping` must be the live `struct address_space` of a vmdedup inode.
pub(crate) unsafe fn drop_lower_cache(mapping: *mut c_void) -> u64 {
    // SAFETY: forwarded caller contract.
    unsafe { vmdedup_glue_drop_lower_cache(mapping) as u64 }
}

/// Inserts pool frame `pfn` at the faulting address of `vmf`.
///
/// # Safety
/// As [`vmdedup_glue_insert_pfn`].
pub(crate) unsafe fn insert_pfn(vmf: *mut c_void, pfn: u64) -> VmFault {
    // SAFETY: forwarded caller contract.
    unsafe { vmdedup_glue_insert_pfn(vmf, pfn as c_ulong) }
}

/// Inserts pool frame `pfn` at file page `pgoff` of the faulting VMA of
/// `vmf` (fault-around).
///
/// # Safety
/// As [`vmdedup_glue_insert_pfn`].
pub(crate) unsafe fn insert_pfn_at(vmf: *mut c_void, pgoff: u64, pfn: u64) -> VmFault {
    // SAFETY: forwarded caller contract.
    unsafe { vmdedup_glue_insert_pfn_at(vmf, pgoff as c_ulong, pfn as c_ulong) }
}

/// One read in progress (`struct vmdedup_io` in `glue.h`, opaque here).
///
/// # Invariants
/// `0` is the live `struct vmdedup_io` of the read that called into Rust; an
/// `Io` exists only for the duration of that call.
pub(crate) struct Io(NonNull<c_void>);

impl Io {
    /// Wraps the `struct vmdedup_io` C handed to an entry point.
    ///
    /// # Safety
    /// `io` must be a live `struct vmdedup_io` for as long as the returned
    /// value exists.
    pub(crate) unsafe fn new(io: NonNull<c_void>) -> Io {
        // INVARIANT: guaranteed by the caller.
        Io(io)
    }

    /// Reads up to `len` bytes of lower at `pos` into the destination.
    pub(crate) fn read_lower(&mut self, pos: i64, len: usize) -> Result<isize> {
        // SAFETY: live by the type invariant.
        let r = unsafe { vmdedup_glue_read_lower(self.0.as_ptr(), pos, len) };
        if r < 0 {
            return Err(Error::from_errno(r as c_int));
        }
        Ok(r)
    }

    /// Reads lower bytes at `pos` into `buf`; returns how many.
    pub(crate) fn read_lower_buf(&mut self, pos: i64, buf: &mut [u8]) -> Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            let rest = buf.get_mut(done..).ok_or(EINVAL)?;
            // SAFETY: live by the type invariant; `rest` is valid for writes
            // of its length.
            let r = unsafe {
                vmdedup_glue_read_lower_buf(
                    self.0.as_ptr(),
                    pos + done as i64,
                    rest.as_mut_ptr().cast(),
                    rest.len(),
                )
            };
            if r < 0 {
                return Err(Error::from_errno(r as c_int));
            }
            if r == 0 {
                break;
            }
            done += r as usize;
        }
        Ok(done)
    }

    /// Drops the lower file's clean, unmapped cached pages in `[start, end)`;
    /// returns how many went.
    pub(crate) fn drop_lower_pages(&mut self, start: u64, end: u64) -> u64 {
        let (Ok(s), Ok(e)) = (i64::try_from(start), i64::try_from(end)) else {
            return 0;
        };
        // SAFETY: live by the type invariant.
        unsafe { vmdedup_glue_drop_lower_pages(self.0.as_ptr(), s, e) as u64 }
    }

    /// Copies `len` bytes of a pool frame at `src` to the destination with
    /// page faults disabled; returns how many bytes went (fewer when the
    /// destination needs a fault: [`Io::fault_in`] it outside the section).
    ///
    /// # Safety
    /// `src` must be valid for reads of `len` bytes for the whole call.
    pub(crate) unsafe fn copy_pool(&mut self, src: *const u8, len: usize) -> usize {
        // SAFETY: live by the type invariant; `src` by the caller contract.
        unsafe { vmdedup_glue_copy_pool(self.0.as_ptr(), src.cast(), len) }
    }

    /// Copies `buf` to the destination with page faults disabled; returns
    /// how many bytes went (fewer when the destination needs a fault).
    pub(crate) fn copy_buf(&mut self, buf: &[u8]) -> usize {
        // SAFETY: a slice is valid for reads of its length for the whole
        // call; `copy_pool` asks no more of its source.
        unsafe { self.copy_pool(buf.as_ptr(), buf.len()) }
    }

    /// Takes back the last `len` bytes copied to the destination (at most
    /// what this read copied with [`Io::copy_pool`] since).
    pub(crate) fn revert(&mut self, len: usize) {
        // SAFETY: live by the type invariant; callers revert only bytes they
        // just copied.
        unsafe { vmdedup_glue_revert(self.0.as_ptr(), len) }
    }

    /// Faults in the next `len` bytes of the destination; returns whether
    /// any of them could be.
    pub(crate) fn fault_in(&mut self, len: usize) -> bool {
        // SAFETY: live by the type invariant.
        unsafe { vmdedup_glue_fault_in(self.0.as_ptr(), len) < len }
    }
}

/// Registers the C glue with `ctx` as the context it hands back to every
/// entry point.
///
/// # Safety
/// `ctx` must stay valid, and not move, until [`glue_exit`] has returned.
pub(crate) unsafe fn glue_init(ctx: *const c_void) -> Result {
    // SAFETY: forwarded caller contract.
    let ret = unsafe { vmdedup_glue_init(ctx) };
    if ret < 0 {
        return Err(Error::from_errno(ret));
    }
    Ok(())
}

/// Unregisters the C glue.
///
/// # Safety
/// Only after a successful [`glue_init`], and only once.
pub(crate) unsafe fn glue_exit() {
    // SAFETY: forwarded caller contract.
    unsafe { vmdedup_glue_exit() }
}
