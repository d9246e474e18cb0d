// SPDX-License-Identifier: GPL-2.0
//! The table of shared regions this guest has found, and their validation.

use core::fmt::Write;
use core::ptr::NonNull;

use kernel::prelude::*;

use crate::abi::{prefix_off, PrefixError, RegionKind, RegionPrefix};
use crate::client::Client;

/// Maximum length kept of a PCI device name (`0000:00:04.0` is 12 bytes).
const NAME_LEN: usize = 24;
/// How many refusals are remembered for sysfs (the count is kept beyond that).
const REFUSALS_KEPT: usize = 4;

/// A short, NUL-free device name copied from the PCI core.
#[derive(Clone, Copy)]
pub(crate) struct DevName {
    bytes: [u8; NAME_LEN],
    len: usize,
}

impl DevName {
    pub(crate) fn new(name: &[u8]) -> Self {
        let mut bytes = [0u8; NAME_LEN];
        let len = name.len().min(NAME_LEN);
        bytes[..len].copy_from_slice(&name[..len]);
        DevName { bytes, len }
    }

    fn as_str(&self) -> &str {
        core::str::from_utf8(&self.bytes[..self.len]).unwrap_or("?")
    }
}

/// A BAR mapped by the glue with `memremap(MEMREMAP_WB)`.
///
/// # Invariants
/// `base` points to `len` bytes that stay mapped until the glue's PCI remove
/// callback has called [`Regions::detach`] for this mapping.
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

    /// Physical address of byte 0 (for PFN mappings of pool frames).
    pub(crate) fn phys(&self) -> u64 {
        self.phys
    }

    /// Copies `out.len()` bytes at `off` out of the shared memory with volatile
    /// loads. Returns false (copying nothing) if the range is not mapped.
    pub(crate) fn read_bytes(&self, off: usize, out: &mut [u8]) -> bool {
        let Some(end) = off.checked_add(out.len()) else { return false };
        if end > self.len {
            return false;
        }
        // Word-sized loads where both sides are aligned: frames are copied
        // on every read, byte loads would be needlessly slow.
        let mut i = 0;
        if (self.base.as_ptr() as usize + off) % 8 == 0 && out.as_ptr() as usize % 8 == 0 {
            while i + 8 <= out.len() {
                // SAFETY: `off + i + 8 <= end <= self.len`, mapped by the type
                // invariant, and 8-aligned (checked above, `i` steps by 8).
                let v = unsafe { core::ptr::read_volatile(self.base.as_ptr().add(off + i).cast::<u64>()) };
                if let Some(d) = out.get_mut(i..i + 8) {
                    d.copy_from_slice(&v.to_ne_bytes());
                }
                i += 8;
            }
        }
        while i < out.len() {
            // SAFETY: `off + i < end <= self.len`, mapped by the type invariant.
            let v = unsafe { core::ptr::read_volatile(self.base.as_ptr().add(off + i)) };
            if let Some(d) = out.get_mut(i) {
                *d = v;
            }
            i += 1;
        }
        true
    }

    /// Reads a little-endian `u64` at `off` (volatile).
    pub(crate) fn read_u64(&self, off: usize) -> Option<u64> {
        let mut b = [0u8; 8];
        self.read_bytes(off, &mut b).then(|| u64::from_le_bytes(b))
    }

    /// Writes `data` at `off` with volatile stores (ring region only: the pool
    /// is mapped read-only by the host). Returns false if out of range.
    pub(crate) fn write_bytes(&self, off: usize, data: &[u8]) -> bool {
        let Some(end) = off.checked_add(data.len()) else { return false };
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
    fn read_prefix(&self) -> Option<RegionPrefix> {
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
    fn generation(&self) -> Option<u64> {
        let mut bytes = [0u8; 8];
        if self.len < prefix_off::GENERATION + bytes.len() {
            return None;
        }
        for (i, b) in bytes.iter_mut().enumerate() {
            // SAFETY: in bounds by the check above; mapped by the type invariant.
            *b = unsafe { core::ptr::read_volatile(self.base.as_ptr().add(prefix_off::GENERATION + i)) };
        }
        Some(u64::from_le_bytes(bytes))
    }
}

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

/// A region that was recognised and is in use.
pub(crate) struct Region {
    map: Mapping,
    dev: DevName,
    prefix: RegionPrefix,
}

/// A device that was refused, kept for sysfs.
#[derive(Clone, Copy)]
struct Refusal {
    dev: DevName,
    reason: PrefixError,
}

/// Which slot a successfully attached device took.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    Ring = 0,
    Pool = 1,
}

impl Slot {
    pub(crate) fn from_raw(raw: i32) -> Option<Slot> {
        match raw {
            0 => Some(Slot::Ring),
            1 => Some(Slot::Pool),
            _ => None,
        }
    }
}

/// Every shared region of this guest. At most one ring and one pool are used.
pub(crate) struct Regions {
    ring: Option<Region>,
    pool: Option<Region>,
    refused_total: u64,
    refusals: [Option<Refusal>; REFUSALS_KEPT],
    client: Client,
}

// SAFETY: `Regions` holds raw pointers only inside `Mapping`, which refers to
// memory mapped for the module as a whole (not tied to any thread); every access
// goes through the `Mutex` that wraps the table.
unsafe impl Send for Regions {}

impl Regions {
    pub(crate) const fn new() -> Self {
        Regions { ring: None, pool: None, refused_total: 0, refusals: [None; REFUSALS_KEPT], client: Client::new() }
    }

    /// The ring mapping, the pool mapping and the ring client, borrowed apart.
    pub(crate) fn parts(&mut self) -> (Option<&Mapping>, Option<&Mapping>, &mut Client) {
        (self.ring.as_ref().map(|r| &r.map), self.pool.as_ref().map(|r| &r.map), &mut self.client)
    }

    fn refuse(&mut self, dev: DevName, reason: PrefixError) -> Error {
        self.refused_total += 1;
        let idx = ((self.refused_total - 1) % REFUSALS_KEPT as u64) as usize;
        if let Some(slot) = self.refusals.get_mut(idx) {
            *slot = Some(Refusal { dev, reason });
        }
        let mut line = LineBuf::new();
        let _ = write_reason(&mut line, reason);
        pr_err!("{}: refusing ivshmem device: {}\n", dev.as_str(), line.as_str());
        match reason {
            PrefixError::TooSmall | PrefixError::BadRegionSize(_) | PrefixError::BadHeaderSize(_) => EINVAL,
            _ => ENODEV,
        }
    }

    /// Validates the prefix of a freshly mapped device and takes it as the ring
    /// or the pool region. On refusal the caller unmaps the device.
    pub(crate) fn attach(&mut self, map: Mapping, dev: DevName) -> Result<Slot> {
        let Some(prefix) = map.read_prefix() else {
            return Err(self.refuse(dev, PrefixError::TooSmall));
        };
        let kind = match prefix.validate(map.len as u64) {
            Ok(kind) => kind,
            Err(reason) => return Err(self.refuse(dev, reason)),
        };
        let (slot, place) = match kind {
            RegionKind::Ring => (Slot::Ring, &mut self.ring),
            RegionKind::Pool => (Slot::Pool, &mut self.pool),
        };
        if let Some(existing) = place {
            pr_err!(
                "{}: refusing ivshmem device: a {} region is already mapped from {}\n",
                dev.as_str(),
                kind_name(kind),
                existing.dev.as_str()
            );
            self.refused_total += 1;
            return Err(EBUSY);
        }
        pr_info!(
            "{}: {} region v{} mapped: {} bytes (BAR {} bytes), generation {}\n",
            dev.as_str(),
            kind_name(kind),
            prefix.version,
            prefix.region_size,
            map.len,
            prefix.generation
        );
        *place = Some(Region { map, dev, prefix });
        Ok(slot)
    }

    /// Forgets the region in `slot`; afterwards the glue unmaps it.
    pub(crate) fn detach(&mut self, slot: Slot) {
        let place = match slot {
            Slot::Ring => &mut self.ring,
            Slot::Pool => &mut self.pool,
        };
        if let Some(region) = place.take() {
            // Nothing may point into the region any more: every pool PTE is
            // zapped (held maps dropped) before the glue unmaps it.
            self.client.reset();
            self.client = Client::new();
            pr_info!("{}: region detached\n", region.dev.as_str());
        }
    }

    /// Formats one sysfs attribute. `dir` is the sysfs directory (`vmdedup`,
    /// `ring` or `pool`) and `attr` the file name.
    pub(crate) fn show(&self, dir: &[u8], attr: &[u8], out: &mut impl Write) -> Result {
        let region = match dir {
            b"stats" => return crate::stats::show(attr, out),
            b"ring" => &self.ring,
            b"pool" => &self.pool,
            b"vmdedup" => {
                return match attr {
                    b"refused" => writeln!(out, "{}", self.refused_total).map_err(|_| EINVAL),
                    b"refusals" => {
                        for r in self.refusals.iter().flatten() {
                            write!(out, "{} ", r.dev.as_str()).map_err(|_| EINVAL)?;
                            write_reason(out, r.reason).map_err(|_| EINVAL)?;
                            writeln!(out).map_err(|_| EINVAL)?;
                        }
                        Ok(())
                    }
                    _ => Err(ENOENT),
                };
            }
            _ => return Err(ENOENT),
        };
        let r = match (attr, region) {
            (b"state", None) => writeln!(out, "absent"),
            (b"state", Some(_)) => writeln!(out, "mapped"),
            (_, None) => writeln!(out),
            (b"device", Some(r)) => writeln!(out, "{}", r.dev.as_str()),
            (b"magic", Some(r)) => writeln!(out, "{:#018x}", r.prefix.magic),
            (b"version", Some(r)) => writeln!(out, "{}", r.prefix.version),
            (b"header_size", Some(r)) => writeln!(out, "{}", r.prefix.header_size),
            (b"region_size", Some(r)) => writeln!(out, "{}", r.prefix.region_size),
            (b"bar_size", Some(r)) => writeln!(out, "{}", r.map.len),
            (b"generation", Some(r)) => writeln!(out, "{}", r.map.generation().unwrap_or(0)),
            _ => return Err(ENOENT),
        };
        r.map_err(|_| EINVAL)
    }
}

fn kind_name(kind: RegionKind) -> &'static str {
    match kind {
        RegionKind::Ring => "ring",
        RegionKind::Pool => "pool",
    }
}

fn write_reason(out: &mut impl Write, reason: PrefixError) -> core::fmt::Result {
    match reason {
        PrefixError::TooSmall => write!(out, "BAR2 smaller than a region header"),
        PrefixError::UnknownMagic(m) => write!(out, "unknown magic {:#018x}", m),
        PrefixError::UnknownVersion(k, v) => write!(out, "{} region with unknown version {}", kind_name(k), v),
        PrefixError::BadHeaderSize(s) => write!(out, "bad header size {}", s),
        PrefixError::BadRegionSize(s) => write!(out, "region size {} does not fit the BAR", s),
    }
}

/// A fixed buffer for composing one log line.
struct LineBuf {
    buf: [u8; 96],
    len: usize,
}

impl LineBuf {
    fn new() -> Self {
        LineBuf { buf: [0; 96], len: 0 }
    }

    fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("?")
    }
}

impl Write for LineBuf {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        SliceWriter::append(&mut self.buf, &mut self.len, s)
    }
}

/// Writes formatted text into a caller-provided byte buffer (a sysfs page).
pub(crate) struct SliceWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> SliceWriter<'a> {
    pub(crate) fn new(buf: &'a mut [u8]) -> Self {
        SliceWriter { buf, len: 0 }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn append(buf: &mut [u8], len: &mut usize, s: &str) -> core::fmt::Result {
        let end = len.checked_add(s.len()).ok_or(core::fmt::Error)?;
        let dst = buf.get_mut(*len..end).ok_or(core::fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        *len = end;
        Ok(())
    }
}

impl Write for SliceWriter<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        Self::append(self.buf, &mut self.len, s)
    }
}
