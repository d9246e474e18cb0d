// SPDX-License-Identifier: GPL-2.0
//! The shared-memory ABI of vmdedup.
//!
//! This file is compiled twice: by cargo into the `vmdedup-protocol` crate, and by
//! Kbuild into the guest module (`#[path = "../protocol/src/abi.rs"] mod abi;`).
//! It must therefore use `core` only: no external crates, no floats, no `std`, and
//! it must be clean under the kernel's lint set.
//!
//! All multi-byte fields are little-endian. Every struct is `#[repr(C)]` with its
//! size and field offsets asserted at compile time, so both sides agree or fail to
//! build.
//!
//! # Regions
//! A guest sees two shared regions, each an `ivshmem-plain` PCI device (BAR2):
//! - the *ring region*, read-write, private to one VM and the host agent;
//! - the *pool region*, one host file shared by all VMs, attached read-only.
//!
//! Both start with a [`RegionPrefix`]. The guest tells them apart by its `magic`
//! and refuses any device whose magic or version it does not know.

use core::mem::{offset_of, size_of};

/// Builds a little-endian `u64` magic from eight ASCII bytes.
const fn magic(bytes: &[u8; 8]) -> u64 {
    u64::from_le_bytes(*bytes)
}

/// Magic of a ring region: the ASCII bytes `VMDDRING` at offset 0.
pub const RING_MAGIC: u64 = magic(b"VMDDRING");
/// Magic of a pool region: the ASCII bytes `VMDDPOOL` at offset 0.
pub const POOL_MAGIC: u64 = magic(b"VMDDPOOL");
/// Version of the ring region layout this file describes.
///
/// Version 2 is the first with the full ring header ([`RingHeader`]) and the
/// submission, completion and event rings behind it.
pub const RING_VERSION: u32 = 2;
/// Version of the pool region layout this file describes.
pub const POOL_VERSION: u32 = 1;

/// The first 32 bytes of every shared region.
///
/// Writer: the host, once, when it creates the region (`generation` again when the
/// host side restarts). The guest only reads it. The host must treat these bytes
/// in a ring region as guest-writable, i.e. never trust what it reads back.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionPrefix {
    /// [`RING_MAGIC`] or [`POOL_MAGIC`].
    pub magic: u64,
    /// Layout version of the region kind ([`RING_VERSION`] or [`POOL_VERSION`]).
    pub version: u32,
    /// Size in bytes of the full header of this region kind (prefix included).
    pub header_size: u32,
    /// Size in bytes of the whole region as the host created it.
    pub region_size: u64,
    /// Changes every time the host side (re)initialises the region.
    pub generation: u64,
}

const _: () = {
    assert!(size_of::<RegionPrefix>() == 32);
    assert!(offset_of!(RegionPrefix, magic) == 0);
    assert!(offset_of!(RegionPrefix, version) == 8);
    assert!(offset_of!(RegionPrefix, header_size) == 12);
    assert!(offset_of!(RegionPrefix, region_size) == 16);
    assert!(offset_of!(RegionPrefix, generation) == 24);
};

/// Byte offsets of the [`RegionPrefix`] fields, for readers that access the
/// region through volatile loads instead of references.
pub mod prefix_off {
    /// Offset of [`super::RegionPrefix::magic`].
    pub const MAGIC: usize = 0;
    /// Offset of [`super::RegionPrefix::version`].
    pub const VERSION: usize = 8;
    /// Offset of [`super::RegionPrefix::header_size`].
    pub const HEADER_SIZE: usize = 12;
    /// Offset of [`super::RegionPrefix::region_size`].
    pub const REGION_SIZE: usize = 16;
    /// Offset of [`super::RegionPrefix::generation`].
    pub const GENERATION: usize = 24;
}

/// What a region is, as told by its prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionKind {
    /// A per-VM ring region.
    Ring,
    /// The shared, read-only pool region.
    Pool,
}

/// Why a region prefix was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrefixError {
    /// The device is smaller than a prefix.
    TooSmall,
    /// The magic is neither [`RING_MAGIC`] nor [`POOL_MAGIC`].
    UnknownMagic(u64),
    /// The magic is known but the version is not.
    UnknownVersion(RegionKind, u32),
    /// `header_size` is smaller than a prefix or larger than the region.
    BadHeaderSize(u32),
    /// `region_size` is zero or larger than the device.
    BadRegionSize(u64),
}

impl RegionPrefix {
    /// Classifies and validates a prefix copied out of a device of `device_len`
    /// bytes. The prefix must already be a private copy: validation of shared
    /// memory in place would be open to a concurrent writer.
    pub fn validate(&self, device_len: u64) -> Result<RegionKind, PrefixError> {
        if device_len < size_of::<RegionPrefix>() as u64 {
            return Err(PrefixError::TooSmall);
        }
        let kind = match self.magic {
            RING_MAGIC => RegionKind::Ring,
            POOL_MAGIC => RegionKind::Pool,
            other => return Err(PrefixError::UnknownMagic(other)),
        };
        let known = match kind {
            RegionKind::Ring => RING_VERSION,
            RegionKind::Pool => POOL_VERSION,
        };
        if self.version != known {
            return Err(PrefixError::UnknownVersion(kind, self.version));
        }
        if self.region_size == 0 || self.region_size > device_len {
            return Err(PrefixError::BadRegionSize(self.region_size));
        }
        if (self.header_size as usize) < size_of::<RegionPrefix>()
            || self.header_size as u64 > self.region_size
        {
            return Err(PrefixError::BadHeaderSize(self.header_size));
        }
        Ok(kind)
    }

    /// Decodes a prefix from its 32 little-endian bytes.
    pub fn from_le_bytes(b: &[u8; 32]) -> Self {
        let u64_at = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(a)
        };
        let u32_at = |o: usize| {
            let mut a = [0u8; 4];
            a.copy_from_slice(&b[o..o + 4]);
            u32::from_le_bytes(a)
        };
        RegionPrefix {
            magic: u64_at(prefix_off::MAGIC),
            version: u32_at(prefix_off::VERSION),
            header_size: u32_at(prefix_off::HEADER_SIZE),
            region_size: u64_at(prefix_off::REGION_SIZE),
            generation: u64_at(prefix_off::GENERATION),
        }
    }

    /// Encodes the prefix as its 32 little-endian bytes.
    pub fn to_le_bytes(&self) -> [u8; 32] {
        let mut b = [0u8; 32];
        b[0..8].copy_from_slice(&self.magic.to_le_bytes());
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&self.header_size.to_le_bytes());
        b[16..24].copy_from_slice(&self.region_size.to_le_bytes());
        b[24..32].copy_from_slice(&self.generation.to_le_bytes());
        b
    }
}
