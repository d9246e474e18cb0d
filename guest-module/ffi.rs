// SPDX-License-Identifier: GPL-2.0
//! The boundary with the C glue (`glue.c`), in one place.
//!
//! 6.12 has no Rust abstractions for PCI drivers or sysfs, so `glue.c` registers
//! those and calls back into the functions below. Errors become errnos only here.

use core::ffi::c_void;
use core::ptr::NonNull;

use kernel::ffi::{c_char, c_int, c_long};
use kernel::prelude::*;
use kernel::sync::{Arc, Mutex};

use crate::regions::{DevName, Mapping, Regions, SliceWriter, Slot};

extern "C" {
    /// Registers the ivshmem PCI driver and creates `/sys/kernel/vmdedup`.
    /// Returns 0 or a negative errno; on error nothing stays registered.
    ///
    /// # Safety
    /// `ctx` must point to the module's `Mutex<Regions>` and stay valid until
    /// [`vmdedup_glue_exit`] has returned. The callbacks below receive it back.
    fn vmdedup_glue_init(ctx: *const c_void) -> c_int;

    /// Unregisters everything [`vmdedup_glue_init`] registered. PCI remove runs
    /// for every bound device before it returns.
    ///
    /// # Safety
    /// Only after a successful [`vmdedup_glue_init`], and only once.
    fn vmdedup_glue_exit();
}

/// Registers the C glue with the region table as its context.
pub(crate) fn glue_init(table: &Arc<Mutex<Regions>>) -> Result {
    let ctx: *const Mutex<Regions> = &**table;
    // SAFETY: `ctx` points into the `Arc` the module keeps until its `Drop`
    // calls `glue_exit`, so it outlives every callback.
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
unsafe fn table<'a>(ctx: *const c_void) -> &'a Mutex<Regions> {
    // SAFETY: by the caller's contract `ctx` is the live `Mutex<Regions>`.
    unsafe { &*ctx.cast::<Mutex<Regions>>() }
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
/// `ctx` is the registered context; `base` points to `len` mapped bytes that stay
/// mapped until [`vmdedup_rs_region_detach`] is called for the returned slot;
/// `dev_name` is NULL or a NUL-terminated string.
#[no_mangle]
unsafe extern "C" fn vmdedup_rs_region_attach(
    ctx: *const c_void,
    base: *mut c_void,
    len: u64,
    dev_name: *const c_char,
) -> c_int {
    // SAFETY: forwarded caller contract.
    let (table, name) = unsafe { (table(ctx), name_bytes(dev_name)) };
    let dev = DevName::new(name);
    let (Some(base), Ok(len)) = (NonNull::new(base.cast::<u8>()), usize::try_from(len)) else {
        return EINVAL.to_errno();
    };
    // SAFETY: `base` maps `len` bytes until detach, by the caller's contract.
    let map = unsafe { Mapping::new(base, len) };
    match table.lock().attach(map, dev) {
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
    let table = unsafe { table(ctx) };
    if let Some(slot) = Slot::from_raw(slot) {
        table.lock().detach(slot);
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
    let (table, dir, attr) = unsafe { (table(ctx), name_bytes(dir), name_bytes(attr)) };
    // SAFETY: `buf` is valid for `len` bytes of writes (caller contract) and no
    // other reference to it exists during this call.
    let out = unsafe { core::slice::from_raw_parts_mut(buf.cast::<u8>(), len) };
    let mut w = SliceWriter::new(out);
    match table.lock().show(dir, attr, &mut w) {
        Ok(()) => w.len() as c_long,
        Err(e) => e.to_errno() as c_long,
    }
}
