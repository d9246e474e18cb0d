// SPDX-License-Identifier: GPL-2.0
//! The boundary with the C glue (`glue.c`: PCI driver, sysfs, module
//! parameters, event timer; `fs.c`: vmdedupfs operation tables), in one place.
//!
//! 6.12 has no Rust abstractions for PCI drivers, sysfs, module parameters or
//! file systems, so the C files register those and call back into the
//! functions below. Errors become errnos only here.

use core::ffi::c_void;
use core::ptr::NonNull;

use kernel::ffi::{c_char, c_int, c_long, c_uint, c_ulong};
use kernel::prelude::*;
use kernel::sync::Arc;

use crate::fs::{Ident, InodeState, Mount};
use crate::regions::{DevName, Mapping, SliceWriter, Slot};
use crate::Shared;

extern "C" {
    /// Registers the ivshmem PCI driver, `/sys/kernel/vmdedup`, the event
    /// timer and the vmdedupfs file system type. Returns 0 or a negative
    /// errno; on error nothing stays registered.
    ///
    /// # Safety
    /// `ctx` must point to the module's [`Shared`] and stay valid until
    /// [`vmdedup_glue_exit`] has returned. The callbacks below receive it back.
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
    fn vmdedup_glue_read_lower_buf(io: *mut c_void, pos: i64, buf: *mut c_void, len: usize) -> isize;

    /// Copies `len` bytes from `src` to the read's destination; returns how
    /// many were copied (fewer on a fault in the user buffer).
    ///
    /// # Safety
    /// `io` as above; `src` valid for reads of `len` bytes.
    fn vmdedup_glue_copy_out(io: *mut c_void, src: *const c_void, len: usize) -> usize;

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

    /// `vmf_insert_mixed()` of `pfn` at the faulting address; returns its
    /// `vm_fault_t`.
    ///
    /// # Safety
    /// `vmf` must be the `struct vm_fault` of a fault in progress on a
    /// `VM_MIXEDMAP` mapping; `pfn` a frame that may be mapped read-only
    /// into user space until the mapping's PTEs are zapped.
    fn vmdedup_glue_insert_pfn(vmf: *mut c_void, pfn: c_ulong) -> c_uint;
}

/// Module parameters (defined with `MODULE_PARM_DESC` in `glue.c`).
#[derive(Clone, Copy)]
pub(crate) enum Param {
    /// `poll_us`: how long an open polls for the answer.
    PollUs = 0,
    /// `rehint_ms`: least time between two hints for a file the host is loading.
    RehintMs = 1,
    /// `default_verify`: verify mode of mounts without `verify=` (0 off, 1 sample, 2 full).
    DefaultVerify = 2,
    /// `fault_no_ack`: fault injection, revocations are never acknowledged.
    FaultNoAck = 3,
}

/// Reads a module parameter.
pub(crate) fn param(p: Param) -> u32 {
    // SAFETY: a plain read of a parameter of this (loaded) module.
    unsafe { vmdedup_glue_param(p as c_int) }
}

/// Zaps every PTE of `mapping`.
///
/// # Safety
/// `mapping` must be a live `struct address_space`.
pub(crate) unsafe fn unmap_all(mapping: *mut c_void) {
    // SAFETY: forwarded caller contract.
    unsafe { vmdedup_glue_unmap_all(mapping) }
}

/// Inserts pool frame `pfn` at the faulting address of `vmf`.
///
/// # Safety
/// As [`vmdedup_glue_insert_pfn`].
pub(crate) unsafe fn insert_pfn(vmf: *mut c_void, pfn: u64) -> u32 {
    // SAFETY: forwarded caller contract.
    unsafe { vmdedup_glue_insert_pfn(vmf, pfn as c_ulong) }
}

/// One read in progress (`struct vmdedup_io` in `glue.h`).
///
/// # Invariants
/// `0` is the live `struct vmdedup_io` of the read that called into Rust; an
/// `Io` exists only for the duration of that call.
pub(crate) struct Io(NonNull<c_void>);

impl Io {
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
                vmdedup_glue_read_lower_buf(self.0.as_ptr(), pos + done as i64, rest.as_mut_ptr().cast(), rest.len())
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

    /// Copies `src` to the destination; returns how many bytes went.
    pub(crate) fn copy_out(&mut self, src: &[u8]) -> usize {
        // SAFETY: live by the type invariant; `src` valid for its length.
        unsafe { vmdedup_glue_copy_out(self.0.as_ptr(), src.as_ptr().cast(), src.len()) }
    }
}

/// Registers the C glue with the shared state as its context.
pub(crate) fn glue_init(shared: &Pin<KBox<Shared>>) -> Result {
    let ctx: *const Shared = &**shared;
    // SAFETY: `ctx` points into the box the module keeps (pinned, never moved)
    // until its `Drop` calls `glue_exit`, so it outlives every callback.
    let ret = unsafe { vmdedup_glue_init(ctx.cast()) };
    if ret < 0 {
        return Err(Error::from_errno(ret));
    }
    Ok(())
}

/// Unregisters the C glue.
pub(crate) fn glue_exit() {
    // SAFETY: called once, from the module's `Drop`, which only exists after
    // `glue_init` succeeded.
    unsafe { vmdedup_glue_exit() }
}

/// # Safety
/// `ctx` must be the pointer given to `vmdedup_glue_init`, still registered.
/// The returned reference is `'static` in the sense that it outlives every
/// registration (mounts pin the module, so the module's `Drop` runs after).
unsafe fn shared(ctx: *const c_void) -> &'static Shared {
    // SAFETY: by the caller's contract `ctx` is the live `Shared`.
    unsafe { &*ctx.cast::<Shared>() }
}

/// # Safety
/// `name` must be NULL or a NUL-terminated string valid for the call.
unsafe fn name_bytes<'a>(name: *const c_char) -> &'a [u8] {
    if name.is_null() {
        return b"?";
    }
    // SAFETY: non-NULL and NUL-terminated by the caller's contract.
    unsafe { CStr::from_char_ptr(name) }.as_bytes()
}

/// Called by the PCI probe after BAR2 was mapped. Returns the slot (>= 0) the
/// region took, or a negative errno if the device is refused (the glue then
/// unmaps it).
///
/// # Safety
/// `ctx` is the registered context; `base` points to `len` mapped bytes at
/// physical address `phys` that stay mapped until [`vmdedup_rs_region_detach`]
/// is called for the returned slot; `dev_name` is NULL or a NUL-terminated string.
#[no_mangle]
unsafe extern "C" fn vmdedup_rs_region_attach(
    ctx: *const c_void,
    base: *mut c_void,
    len: u64,
    phys: u64,
    dev_name: *const c_char,
) -> c_int {
    // SAFETY: forwarded caller contract.
    let (sh, name) = unsafe { (shared(ctx), name_bytes(dev_name)) };
    let dev = DevName::new(name);
    let (Some(base), Ok(len)) = (NonNull::new(base.cast::<u8>()), usize::try_from(len)) else {
        return EINVAL.to_errno();
    };
    // SAFETY: `base` maps `len` bytes until detach, by the caller's contract.
    let map = unsafe { Mapping::new(base, len, phys) };
    match sh.regions.lock().attach(map, dev) {
        Ok(slot) => slot as c_int,
        Err(e) => e.to_errno(),
    }
}

/// Called by the PCI remove callback before the glue unmaps the region.
///
/// # Safety
/// `ctx` is the registered context and `slot` a value returned by
/// [`vmdedup_rs_region_attach`] that was not detached yet.
#[no_mangle]
unsafe extern "C" fn vmdedup_rs_region_detach(ctx: *const c_void, slot: c_int) {
    // SAFETY: forwarded caller contract.
    let sh = unsafe { shared(ctx) };
    if let Some(slot) = Slot::from_raw(slot) {
        sh.regions.lock().detach(slot);
    }
}

/// Formats sysfs attribute `attr` of directory `dir` into `buf` (`len` bytes).
/// Returns the number of bytes written or a negative errno.
///
/// # Safety
/// `ctx` is the registered context, `dir` and `attr` are NUL-terminated strings,
/// and `buf` is valid for writes of `len` bytes for the duration of the call.
#[no_mangle]
unsafe extern "C" fn vmdedup_rs_sysfs_show(
    ctx: *const c_void,
    dir: *const c_char,
    attr: *const c_char,
    buf: *mut c_char,
    len: usize,
) -> c_long {
    if buf.is_null() {
        return EINVAL.to_errno() as c_long;
    }
    // SAFETY: forwarded caller contract.
    let (sh, dir, attr) = unsafe { (shared(ctx), name_bytes(dir), name_bytes(attr)) };
    // SAFETY: `buf` is valid for `len` bytes of writes (caller contract) and no
    // other reference to it exists during this call.
    let out = unsafe { core::slice::from_raw_parts_mut(buf.cast::<u8>(), len) };
    let mut w = SliceWriter::new(out);
    match sh.regions.lock().show(dir, attr, &mut w) {
        Ok(()) => w.len() as c_long,
        Err(e) => e.to_errno() as c_long,
    }
}

/// Writes the name of counter `index` (NUL-terminated) into `buf`. Returns 0,
/// or `-ENOENT` past the last counter.
///
/// # Safety
/// `buf` must be valid for writes of `len` bytes.
#[no_mangle]
unsafe extern "C" fn vmdedup_rs_stat_name(index: c_int, buf: *mut c_char, len: usize) -> c_int {
    let Some(name) = usize::try_from(index).ok().and_then(crate::stats::name) else {
        return ENOENT.to_errno();
    };
    if buf.is_null() || name.len() >= len {
        return EINVAL.to_errno();
    }
    // SAFETY: `buf` has room for `len > name.len()` bytes (caller contract).
    let out = unsafe { core::slice::from_raw_parts_mut(buf.cast::<u8>(), len) };
    out[..name.len()].copy_from_slice(name.as_bytes());
    out[name.len()] = 0;
    0
}

/// Timer callback (`event_poll_ms`): events, late answers, expiry.
///
/// # Safety
/// `ctx` is the registered context.
#[no_mangle]
unsafe extern "C" fn vmdedup_rs_tick(ctx: *const c_void) {
    // SAFETY: forwarded caller contract.
    let sh = unsafe { shared(ctx) };
    let mut regions = sh.regions.lock();
    let (ring, pool, client) = regions.parts();
    client.tick(ring, pool);
}

/// # Safety
/// `m` must be a pointer returned by [`vmdedup_rs_mount_new`], not yet freed.
unsafe fn mount<'a>(m: *mut c_void) -> &'a Mount {
    // SAFETY: by the caller's contract `m` is a live boxed `Mount`.
    unsafe { &*m.cast::<Mount>() }
}

/// # Safety
/// `ist` must be NULL or a pointer returned by [`vmdedup_rs_inode_new`], not
/// yet freed.
unsafe fn inode_state<'a>(ist: *mut c_void) -> Option<&'a InodeState> {
    // SAFETY: by the caller's contract, NULL or a live `Arc<InodeState>` raw pointer.
    unsafe { ist.cast::<InodeState>().cast_const().as_ref() }
}

/// Parses the mount options in `data` and creates the mount's state in `*out`.
/// Copies the lower directory (NUL-terminated) into `lower`. Returns 0 or a
/// negative errno.
///
/// # Safety
/// `ctx` is the registered context; `data` NULL or a NUL-terminated string;
/// `lower` valid for writes of `lower_len` bytes; `out` valid for a write.
#[no_mangle]
unsafe extern "C" fn vmdedup_rs_mount_new(
    ctx: *const c_void,
    data: *const c_char,
    lower: *mut c_char,
    lower_len: usize,
    out: *mut *mut c_void,
) -> c_int {
    // SAFETY: forwarded caller contract.
    let sh = unsafe { shared(ctx) };
    let opts = if data.is_null() {
        &b""[..]
    } else {
        // SAFETY: non-NULL and NUL-terminated by the caller's contract.
        unsafe { CStr::from_char_ptr(data) }.as_bytes()
    };
    let m = match Mount::parse(sh, opts) {
        Ok(m) => m,
        Err(e) => return e.to_errno(),
    };
    let dir = m.lower();
    if lower.is_null() || out.is_null() || dir.len() >= lower_len || dir.contains(&0) {
        return EINVAL.to_errno();
    }
    // SAFETY: `lower` is valid for `lower_len > dir.len()` bytes (caller contract).
    let dst = unsafe { core::slice::from_raw_parts_mut(lower.cast::<u8>(), lower_len) };
    dst[..dir.len()].copy_from_slice(dir);
    dst[dir.len()] = 0;
    match KBox::new(m, GFP_KERNEL) {
        Ok(b) => {
            // SAFETY: `out` is valid for a write (caller contract).
            unsafe { *out = KBox::into_raw(b).cast() };
            0
        }
        Err(_) => ENOMEM.to_errno(),
    }
}

/// Frees a mount's state.
///
/// # Safety
/// `m` was returned by [`vmdedup_rs_mount_new`] and is not used afterwards.
#[no_mangle]
unsafe extern "C" fn vmdedup_rs_mount_free(m: *mut c_void) {
    if !m.is_null() {
        // SAFETY: made by `KBox::into_raw` in `vmdedup_rs_mount_new`, freed once.
        drop(unsafe { KBox::from_raw(m.cast::<Mount>()) });
    }
}

/// Formats the mount options for `/proc/mounts`. Returns the length or a
/// negative errno.
///
/// # Safety
/// `m` is a live mount state; `buf` valid for writes of `len` bytes.
#[no_mangle]
unsafe extern "C" fn vmdedup_rs_mount_show(m: *mut c_void, buf: *mut c_char, len: usize) -> c_long {
    if buf.is_null() {
        return EINVAL.to_errno() as c_long;
    }
    // SAFETY: forwarded caller contract.
    let m = unsafe { mount(m) };
    // SAFETY: `buf` valid for `len` bytes of writes, not aliased during the call.
    let out = unsafe { core::slice::from_raw_parts_mut(buf.cast::<u8>(), len) };
    let mut w = SliceWriter::new(out);
    match m.show(&mut w) {
        Ok(()) => w.len() as c_long,
        Err(_) => EINVAL.to_errno() as c_long,
    }
}

/// Creates the state of a new regular-file inode. NULL on allocation failure
/// (the file is then served from lower only).
///
/// # Safety
/// `mapping` is the inode's `address_space`, live until
/// [`vmdedup_rs_inode_free`] is called for the returned pointer.
#[no_mangle]
unsafe extern "C" fn vmdedup_rs_inode_new(mapping: *mut c_void) -> *mut c_void {
    match InodeState::new(mapping) {
        Ok(a) => Arc::into_raw(a).cast_mut().cast(),
        Err(_) => core::ptr::null_mut(),
    }
}

/// The inode is being evicted: drop its state. This runs from memory
/// reclaim too, so it takes no global lock: the client keeps its own
/// references to the state until the timer has released what it held.
///
/// # Safety
/// `ist` was returned by [`vmdedup_rs_inode_new`] and is not used afterwards.
#[no_mangle]
unsafe extern "C" fn vmdedup_rs_inode_free(ist: *mut c_void) {
    if ist.is_null() {
        return;
    }
    // SAFETY: made by `Arc::into_raw` in `vmdedup_rs_inode_new`; this takes
    // back the reference the inode owned.
    let file = unsafe { Arc::from_raw(ist.cast::<InodeState>().cast_const()) };
    file.evicted();
}

/// A regular file was opened: hint (and briefly poll for the answer).
///
/// # Safety
/// `m` and `ist` are live (as above, `ist` may be NULL); `id` points to a
/// valid identity; `path` to `len` bytes.
#[no_mangle]
unsafe extern "C" fn vmdedup_rs_open(
    m: *mut c_void,
    ist: *mut c_void,
    id: *const IdentC,
    path: *const c_char,
    len: usize,
) {
    if ist.is_null() || id.is_null() || path.is_null() {
        return;
    }
    // SAFETY: forwarded caller contract.
    let m = unsafe { mount(m) };
    // SAFETY: `ist` is a live `Arc<InodeState>` raw pointer: borrow it as an
    // `Arc` without taking over the inode's reference.
    let file = core::mem::ManuallyDrop::new(unsafe { Arc::from_raw(ist.cast::<InodeState>().cast_const()) });
    // SAFETY: `id` points to a valid identity (caller contract).
    let id = unsafe { *id };
    // SAFETY: `path` points to `len` readable bytes (caller contract).
    let path = unsafe { core::slice::from_raw_parts(path.cast::<u8>(), len) };
    let ident = Ident { size: id.size, mtime_ns: id.mtime_ns, ctime_ns: id.ctime_ns, ino: id.ino };
    m.open(&file, ident, path);
}

/// `struct vmdedup_ident` in `glue.h`.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct IdentC {
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    ino: u64,
}

/// Serves a read. Returns bytes read or a negative errno.
///
/// # Safety
/// `m` and `ist` are live (`ist` may be NULL); `io` is the live
/// `struct vmdedup_io` of this read.
#[no_mangle]
unsafe extern "C" fn vmdedup_rs_read_iter(
    m: *mut c_void,
    ist: *mut c_void,
    io: *mut c_void,
    pos: i64,
    count: usize,
) -> isize {
    let Some(io) = NonNull::new(io) else { return EINVAL.to_errno() as isize };
    // INVARIANT: `io` is live for this call (caller contract).
    let mut io = Io(io);
    // SAFETY: forwarded caller contract.
    let (m, file) = unsafe { (mount(m), inode_state(ist)) };
    match m.read(file, &mut io, pos, count) {
        Ok(n) => n,
        Err(e) => e.to_errno() as isize,
    }
}

/// The kind of a mapping, as `vmdedup_mmap()` in fs.c sees it (the
/// `VMDEDUP_MAP_*` bits of glue.h).
#[derive(Clone, Copy)]
pub(crate) struct MapKind(u32);

impl MapKind {
    /// `VMDEDUP_MAP_POOL_OK`: private, or shared and never writable.
    pub(crate) fn pool_ok(self) -> bool {
        self.0 & 1 != 0
    }
    /// `VMDEDUP_MAP_PRIVATE`: `MAP_PRIVATE`, written copy-on-write.
    pub(crate) fn private(self) -> bool {
        self.0 & 2 != 0
    }
    /// `VMDEDUP_MAP_EXEC`: an executable mapping (code).
    pub(crate) fn exec(self) -> bool {
        self.0 & 4 != 0
    }
}

/// Whether a mapping may map pool frames (1, and `*map_id` says which file
/// map it was checked against) or must be delegated to the lower file (0).
/// `kind`: the `VMDEDUP_MAP_*` bits of the mapping (glue.h).
///
/// # Safety
/// `m` and `ist` are live (`ist` may be NULL); `io` is a live
/// `struct vmdedup_io` whose lower file is open (its iterator is unused);
/// `map_id` is valid for a write.
#[no_mangle]
unsafe extern "C" fn vmdedup_rs_mmap(
    m: *mut c_void,
    ist: *mut c_void,
    io: *mut c_void,
    kind: c_uint,
    pgoff: c_ulong,
    npages: c_ulong,
    map_id: *mut u64,
) -> c_int {
    let (Some(io), false) = (NonNull::new(io), map_id.is_null()) else { return 0 };
    // INVARIANT: `io` is live for this call (caller contract); only its lower
    // file is used (`read_lower_buf`).
    let mut io = Io(io);
    // SAFETY: forwarded caller contract.
    let (m, file) = unsafe { (mount(m), inode_state(ist)) };
    match m.mmap_from_pool(file, &mut io, MapKind(kind), pgoff as u64, npages as u64) {
        Some(id) => {
            // SAFETY: `map_id` is valid for a write (caller contract).
            unsafe { *map_id = id };
            1
        }
        None => 0,
    }
}

/// A fault on a pool mapping was served from the lower file with result
/// `ret` (a `vm_fault_t`): counts it.
#[no_mangle]
extern "C" fn vmdedup_rs_fault_lower_done(ret: c_uint) {
    // VM_FAULT_NOPAGE (0x100) is the only success the lower path returns.
    crate::stats::inc(if ret == 0x100 { crate::stats::Counter::faults_lower } else { crate::stats::Counter::faults_failed });
}

/// Serves a fault on a pool mapping checked against file map `map_id`:
/// inserts the pool frame and returns 1 with the insertion's `vm_fault_t` in
/// `*ret`, or returns 0 when the fault must be served from the lower file
/// (the map was revoked or replaced). `exec`: the mapping is executable.
///
/// # Safety
/// `m` and `ist` are live (`ist` may be NULL); `vmf` is the fault in progress
/// on a `VM_MIXEDMAP` pool mapping of `ist`'s file; `ret` valid for a write.
#[no_mangle]
unsafe extern "C" fn vmdedup_rs_fault(
    m: *mut c_void,
    ist: *mut c_void,
    vmf: *mut c_void,
    map_id: u64,
    pgoff: c_ulong,
    exec: bool,
    ret: *mut c_uint,
) -> c_int {
    if vmf.is_null() || ret.is_null() {
        return 0;
    }
    // SAFETY: forwarded caller contract.
    let (m, file) = unsafe { (mount(m), inode_state(ist)) };
    // SAFETY: `vmf` is the fault in progress on a VM_MIXEDMAP mapping of this
    // file (caller contract).
    match unsafe { m.fault(file, vmf, map_id, pgoff as u64, exec) } {
        Some(r) => {
            // SAFETY: `ret` is valid for a write (caller contract).
            unsafe { *ret = r };
            1
        }
        None => 0,
    }
}
