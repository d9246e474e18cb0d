// SPDX-License-Identifier: GPL-2.0
//! Mappings: one BAR of an ivshmem device, mapped by the glue's PCI probe,
//! and the only way this crate touches shared memory (volatile loads and
//! stores, bounds-checked, and `u32` words handed out as atomics for the
//! ring indices). Uses nothing of this crate but the ABI.

use core::ptr::NonNull;

use crate::abi::{prefix_off, RegionPrefix};

/// A BAR mapped by the glue with `memremap(MEMREMAP_WB)`.
///
/// # Invariants
/// `base` points to `len` bytes that stay mapped until the glue's PCI remove
/// callback has detached the region (`vmdedup_rs_region_detach`).
pub(crate) struct Mapping {
    base: NonNull<u8>,
    len: usize,
    phys: u64,
}

impl Mapping {
    /// # Safety
    /// `base` must point to `len` mapped bytes that stay mapped until the region
    /// is detached (see the type invariant). `phys` is their physical address.
    pub(crate) unsafe fn new(base: NonNull<u8>, len: usize, phys: u64) -> Self {
        // INVARIANT: guaranteed by the caller.
        Mapping { base, len, phys }
    }

    /// Size of the mapping in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The mapping as a pool window for file maps taken from it (see
    /// [`PoolWindow`] for how long it may be used).
    pub(crate) fn window(&self) -> PoolWindow {
        PoolWindow {
            base: self.base,
            len: self.len,
            phys: self.phys,
        }
    }

    /// Copies `out.len()` bytes at `off` out of the shared memory with volatile
    /// loads. Returns false (copying nothing) if the range is not mapped.
    pub(crate) fn read_bytes(&self, off: usize, out: &mut [u8]) -> bool {
        // SAFETY: `base` points to `len` mapped bytes (type invariant).
        unsafe { read_volatile_bytes(self.base, self.len, off, out) }
    }

    /// Writes `data` at `off` with volatile stores (ring region only: the pool
    /// is mapped read-only by the host). Returns false if out of range.
    pub(crate) fn write_bytes(&self, off: usize, data: &[u8]) -> bool {
        let Some(end) = off.checked_add(data.len()) else {
            return false;
        };
        if end > self.len {
            return false;
        }
        for (i, b) in data.iter().enumerate() {
            // SAFETY: `off + i < end <= self.len`, mapped by the type invariant.
            unsafe { core::ptr::write_volatile(self.base.as_ptr().add(off + i), *b) };
        }
        true
    }

    /// The `u32` at `off` as an atomic, if it is in range and 4-aligned.
    pub(crate) fn word(&self, off: usize) -> Option<NonNull<core::sync::atomic::AtomicU32>> {
        let end = off.checked_add(4)?;
        if end > self.len || (self.base.as_ptr() as usize + off) % 4 != 0 {
            return None;
        }
        // SAFETY: in bounds of the mapping (checked above).
        let p = unsafe { self.base.as_ptr().add(off) };
        NonNull::new(p.cast())
    }

    /// Copies the region prefix out of shared memory with volatile loads, so the
    /// host (or anyone else) changing it meanwhile cannot change what we validate.
    pub(crate) fn read_prefix(&self) -> Option<RegionPrefix> {
        let mut bytes = [0u8; 32];
        if self.len < bytes.len() {
            return None;
        }
        for (i, b) in bytes.iter_mut().enumerate() {
            // SAFETY: `i < 32 <= self.len`, and by the type invariant the first
            // `self.len` bytes at `base` are mapped. A volatile byte load of
            // device memory has no alignment requirement.
            *b = unsafe { core::ptr::read_volatile(self.base.as_ptr().add(i)) };
        }
        Some(RegionPrefix::from_le_bytes(&bytes))
    }

    /// Reads the generation field again (the host bumps it when it restarts).
    pub(crate) fn generation(&self) -> Option<u64> {
        let mut bytes = [0u8; 8];
        if self.len < prefix_off::GENERATION + bytes.len() {
            return None;
        }
        for (i, b) in bytes.iter_mut().enumerate() {
            // SAFETY: in bounds by the check above; mapped by the type invariant.
            *b = unsafe {
                core::ptr::read_volatile(self.base.as_ptr().add(prefix_off::GENERATION + i))
            };
        }
        Some(u64::from_le_bytes(bytes))
    }
}

/// Copies `out.len()` bytes at `off` of the `len` bytes at `base` with
/// volatile loads (the host may write them meanwhile). Returns false
/// (copying nothing) if the range is out of bounds.
///
/// # Safety
/// `base` must point to `len` mapped bytes for the whole call.
unsafe fn read_volatile_bytes(base: NonNull<u8>, len: usize, off: usize, out: &mut [u8]) -> bool {
    let Some(end) = off.checked_add(out.len()) else {
        return false;
    };
    if end > len {
        return false;
    }
    // Word-sized loads where both sides are aligned (table headers, ring
    // entries); byte loads for the rest.
    let mut i = 0;
    if (base.as_ptr() as usize + off) % 8 == 0 && out.as_ptr() as usize % 8 == 0 {
        while i + 8 <= out.len() {
            // SAFETY: `off + i + 8 <= end <= len`, mapped by the caller
            // contract, and 8-aligned (checked above, `i` steps by 8).
            let v = unsafe { core::ptr::read_volatile(base.as_ptr().add(off + i).cast::<u64>()) };
            if let Some(d) = out.get_mut(i..i + 8) {
                d.copy_from_slice(&v.to_ne_bytes());
            }
            i += 8;
        }
    }
    while i < out.len() {
        // SAFETY: `off + i < end <= len`, mapped by the caller contract.
        let v = unsafe { core::ptr::read_volatile(base.as_ptr().add(off + i)) };
        if let Some(d) = out.get_mut(i) {
            *d = v;
        }
        i += 1;
    }
    true
}

/// The pool mapping as a file map keeps it, to copy from its frames without
/// the link's lock.
///
/// # Invariants
/// `base` points to `len` bytes mapped from physical address `phys`. They
/// stay mapped while a file map holding this window is kept by its file
/// and, after it is dropped, until every pool read section that began
/// before the drop has ended: the region is unmapped only after every map
/// is dropped and [`crate::ffi::pool_sync`] has returned
/// ([`crate::link::Link::detach`]). So a window may be used under the lock
/// of a file that keeps the map, or inside a pool read section entered
/// before the window was looked up from a kept map.
#[derive(Clone, Copy)]
pub(crate) struct PoolWindow {
    base: NonNull<u8>,
    len: usize,
    phys: u64,
}

impl PoolWindow {
    /// The kernel address of `len` bytes at `off`, if they are in the
    /// mapping.
    pub(crate) fn range(&self, off: usize, len: usize) -> Option<*const u8> {
        let end = off.checked_add(len)?;
        if end > self.len {
            return None;
        }
        // SAFETY: `off <= end <= self.len`: inside (or one past) the mapping.
        Some(unsafe { self.base.as_ptr().add(off) }.cast_const())
    }

    /// Physical address of byte 0 (for PFN mappings of pool frames).
    pub(crate) fn phys(&self) -> u64 {
        self.phys
    }

    /// As [`Mapping::read_bytes`].
    ///
    /// # Safety
    /// The window must be usable (see the type invariant): under the lock of
    /// a file that keeps the map, or in a read section entered before the
    /// window was looked up from a kept map.
    pub(crate) unsafe fn read_bytes(&self, off: usize, out: &mut [u8]) -> bool {
        // SAFETY: mapped for the whole call by the caller contract.
        unsafe { read_volatile_bytes(self.base, self.len, off, out) }
    }
}

// SAFETY: a window refers to memory mapped for the module as a whole; the
// type invariant, not the thread, says when it may be used.
unsafe impl Send for PoolWindow {}

impl crate::guest::SharedRegion for Mapping {
    type Word = core::sync::atomic::AtomicU32;

    fn size(&self) -> usize {
        self.len
    }

    fn read_bytes(&self, off: usize, out: &mut [u8]) -> bool {
        Mapping::read_bytes(self, off, out)
    }

    fn write_bytes(&self, off: usize, data: &[u8]) -> bool {
        Mapping::write_bytes(self, off, data)
    }

    fn word(&self, off: usize) -> Option<&core::sync::atomic::AtomicU32> {
        let p = Mapping::word(self, off)?;
        // SAFETY: `Mapping::word` checked that the word is in bounds and
        // 4-aligned; by the type invariant it stays mapped for as long as
        // this `Mapping` exists, which bounds the returned lifetime. Both
        // sides access index and flag words only atomically.
        Some(unsafe { p.as_ref() })
    }
}

// SAFETY: a `Mapping` refers to memory mapped for the module as a whole, not
// to anything tied to the thread that made it; every user reaches it through
// the lock around the region table.
unsafe impl Send for Mapping {}
