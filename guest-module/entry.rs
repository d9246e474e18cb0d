// SPDX-License-Identifier: GPL-2.0
//! The entry points: every `vmdedup_rs_*` function the C glue calls
//! (prototypes in `glue.h`). The top layer: each one checks its pointers,
//! turns them into references with the contract it was called under, calls
//! into the layers below and turns errors into errnos, which happens only
//! here.

use core::ffi::c_void;
use core::ptr::NonNull;

use kernel::ffi::{c_char, c_int, c_long, c_uint, c_ulong};
use kernel::prelude::*;
use kernel::sync::{Arc, ArcBorrow};
use kernel::types::ForeignOwnable;

use crate::ffi::{self, IdentC, Io, MmapPlan, VmFault, VmFlags};
use crate::file::InodeState;
use crate::fs::Mount;
use crate::link::Shared;
use crate::mapping::Mapping;
use crate::regions::{DevName, Slot};
use crate::stats::{self, Counter};
use crate::text::SliceWriter;

/// # Safety
/// `ctx` must be the pointer the module gave to [`ffi::glue_init`], still
/// registered. The returned reference is `'static` in the sense that it
/// outlives every registration (mounts pin the module, so the module's `Drop`
/// runs after).
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

/// # Safety
/// `m` must be a pointer [`vmdedup_rs_mount_new`] stored, not yet freed.
unsafe fn mount<'a>(m: *mut c_void) -> &'a Mount {
    // SAFETY: by the caller's contract `m` came from `KBox::into_foreign` and
    // `from_foreign` was not called for it yet.
    unsafe { <KBox<Mount> as ForeignOwnable>::borrow(m) }
}

/// # Safety
/// `ist` must be NULL or a pointer returned by [`vmdedup_rs_inode_new`], not
/// yet freed, and the returned borrow must not outlive the inode's reference.
unsafe fn inode_state<'a>(ist: *mut c_void) -> Option<ArcBorrow<'a, InodeState>> {
    if ist.is_null() {
        return None;
    }
    // SAFETY: by the caller's contract `ist` came from `Arc::into_foreign` and
    // the inode's reference is not taken back while the borrow lives.
    Some(unsafe { <Arc<InodeState> as ForeignOwnable>::borrow(ist) })
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
    doorbell: *mut c_void,
    ivposition: i64,
    irq: bool,
) -> c_int {
    // SAFETY: forwarded caller contract.
    let (sh, name) = unsafe { (shared(ctx), name_bytes(dev_name)) };
    // SAFETY: `doorbell` is NULL or the device's Doorbell register, mapped
    // until detach (caller contract); the link drops it at the ring's detach.
    let doorbell = unsafe { crate::ffi::Doorbell::new(doorbell) };
    let dev = DevName::new(name);
    let (Some(base), Ok(len)) = (NonNull::new(base.cast::<u8>()), usize::try_from(len)) else {
        return EINVAL.to_errno();
    };
    // SAFETY: `base` maps `len` bytes until detach, by the caller's contract.
    let map = unsafe { Mapping::new(base, len, phys) };
    match sh.link.lock().attach(map, dev, doorbell, ivposition, irq) {
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
        sh.link.lock().detach(slot);
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
    let shown = match dir {
        b"stats" => stats::show(attr, &mut w),
        _ => sh.link.lock().regions.show(dir, attr, &mut w),
    };
    match shown {
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
    let Some(name) = usize::try_from(index).ok().and_then(stats::name) else {
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

/// The event work (its timer, `event_poll_ms`, or the ring's interrupt):
/// events, late answers, expiry. Returns whether to run again after
/// `event_poll_ms` (false: the client waits for the host's interrupt).
///
/// # Safety
/// `ctx` is the registered context.
#[no_mangle]
unsafe extern "C" fn vmdedup_rs_tick(ctx: *const c_void) -> bool {
    // SAFETY: forwarded caller contract.
    let sh = unsafe { shared(ctx) };
    let mut link = sh.link.lock();
    let (ring, pool, client) = link.parts();
    client.tick(ring, pool)
}

/// The ring device's interrupt (hard IRQ context: counts only; the glue
/// queues the event work).
#[no_mangle]
extern "C" fn vmdedup_rs_irq() {
    stats::inc(stats::Counter::irqs_received);
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
            unsafe { *out = b.into_foreign().cast_mut() };
            0
        }
        Err(_) => ENOMEM.to_errno(),
    }
}

/// Frees a mount's state.
///
/// # Safety
/// `m` was stored by [`vmdedup_rs_mount_new`] and is not used afterwards.
#[no_mangle]
unsafe extern "C" fn vmdedup_rs_mount_free(m: *mut c_void) {
    // SAFETY: made by `KBox::into_foreign` in `vmdedup_rs_mount_new` (or
    // NULL), taken back once; no borrow of it outlives the entry point that
    // made it.
    drop(unsafe { <KBox<Mount> as ForeignOwnable>::try_from_foreign(m) });
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
        Ok(a) => a.into_foreign().cast_mut(),
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
    // SAFETY: made by `Arc::into_foreign` in `vmdedup_rs_inode_new` (or
    // NULL); this takes back the reference the inode owned, once, and no
    // borrow of it outlives the entry point that made it.
    if let Some(file) = unsafe { <Arc<InodeState> as ForeignOwnable>::try_from_foreign(ist) } {
        file.evicted();
        // Its map is released by the event work, which may be asleep.
        if crate::file::SWEEP_NEEDED.load(core::sync::atomic::Ordering::Acquire) {
            ffi::sweep_soon();
        }
    }
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
    // SAFETY: forwarded caller contract; the borrow ends with this call,
    // while the inode still holds its reference.
    let (m, file) = unsafe { (mount(m), inode_state(ist)) };
    let Some(file) = file else { return };
    // SAFETY: `id` points to a valid identity (caller contract).
    let id = unsafe { *id };
    // SAFETY: `path` points to `len` readable bytes (caller contract).
    let path = unsafe { core::slice::from_raw_parts(path.cast::<u8>(), len) };
    m.open(file, id.into(), path);
}

/// An open's fast path: 1 if the file needs nothing from this open (see
/// [`Mount::open_settled`]), so the caller skips the path and the
/// fingerprint and does not call [`vmdedup_rs_open`]; 0 otherwise.
///
/// # Safety
/// `m` and `ist` are live (as above, `ist` may be NULL); `id` points to a
/// valid identity (its fingerprint is not read).
#[no_mangle]
unsafe extern "C" fn vmdedup_rs_open_settled(
    m: *mut c_void,
    ist: *mut c_void,
    id: *const IdentC,
) -> c_int {
    if ist.is_null() || id.is_null() {
        return 0;
    }
    // SAFETY: forwarded caller contract; the borrow ends with this call,
    // while the inode still holds its reference.
    let (m, file) = unsafe { (mount(m), inode_state(ist)) };
    let Some(file) = file else { return 0 };
    // SAFETY: `id` points to a valid identity (caller contract).
    let id = unsafe { *id };
    c_int::from(m.open_settled(&file, &id.into()))
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
    let Some(io) = NonNull::new(io) else {
        return EINVAL.to_errno() as isize;
    };
    // SAFETY: `io` is live for this call (caller contract), and so is the
    // `Io` made of it.
    let mut io = unsafe { Io::new(io) };
    // SAFETY: forwarded caller contract.
    let (m, file) = unsafe { (mount(m), inode_state(ist)) };
    match m.read(file.as_deref(), &mut io, pos, count) {
        Ok(n) => n,
        Err(e) => e.to_errno() as isize,
    }
}

/// Whether a mapping with flags `vm_flags` may map pool frames (1, and
/// `*plan` says which file map it was checked against and which flags fs.c
/// sets) or must be delegated to the lower file (0).
///
/// # Safety
/// `m` and `ist` are live (`ist` may be NULL); `io` is a live
/// `struct vmdedup_io` whose lower file is open (its iterator is unused);
/// `plan` is valid for a write.
#[no_mangle]
unsafe extern "C" fn vmdedup_rs_mmap(
    m: *mut c_void,
    ist: *mut c_void,
    io: *mut c_void,
    vm_flags: VmFlags,
    pgoff: c_ulong,
    npages: c_ulong,
    plan: *mut MmapPlan,
) -> c_int {
    let (Some(io), false) = (NonNull::new(io), plan.is_null()) else {
        return 0;
    };
    // SAFETY: `io` is live for this call (caller contract), and so is the
    // `Io` made of it; only its lower file is used (`read_lower_buf`).
    let mut io = unsafe { Io::new(io) };
    // SAFETY: forwarded caller contract.
    let (m, file) = unsafe { (mount(m), inode_state(ist)) };
    match m.mmap_from_pool(
        file.as_deref(),
        &mut io,
        vm_flags,
        pgoff as u64,
        npages as u64,
    ) {
        Some(p) => {
            // SAFETY: `plan` is valid for a write (caller contract).
            unsafe { *plan = p };
            1
        }
        None => 0,
    }
}

/// A fault on a pool mapping was served from the lower file with result
/// `ret` (a `vm_fault_t`): counts it.
#[no_mangle]
extern "C" fn vmdedup_rs_fault_lower_done(ret: VmFault) {
    // VM_FAULT_NOPAGE is the only success the lower path returns.
    stats::inc(if ret == ffi::VM_FAULT_NOPAGE {
        Counter::faults_lower
    } else {
        Counter::faults_failed
    });
}

/// Serves a fault on a pool mapping (flags `vm_flags`) checked against file
/// map `map_id`: inserts the pool frame (and, fault-around, those of the
/// pages `around_first..around_end` of the faulting VMA) and returns 1 with the insertion's
/// `vm_fault_t` in `*ret`, or returns 0 when the fault must be served from
/// the lower file (the map was revoked or replaced).
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
    around_first: c_ulong,
    around_end: c_ulong,
    vm_flags: VmFlags,
    ret: *mut c_uint,
) -> c_int {
    if vmf.is_null() || ret.is_null() {
        return 0;
    }
    // SAFETY: forwarded caller contract.
    let (m, file) = unsafe { (mount(m), inode_state(ist)) };
    let around = around_first as u64..around_end as u64;
    // SAFETY: `vmf` is the fault in progress on a VM_MIXEDMAP mapping of this
    // file with these flags (caller contract).
    match unsafe { m.fault(file.as_deref(), vmf, map_id, pgoff as u64, around, vm_flags) } {
        Some(r) => {
            // SAFETY: `ret` is valid for a write (caller contract).
            unsafe { *ret = r };
            1
        }
        None => 0,
    }
}
