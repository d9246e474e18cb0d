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

// ---------------------------------------------------------------------------
// Little-endian field helpers. They never panic: an offset outside the buffer
// reads as zero and writes nothing (all callers use constant, asserted offsets).
// ---------------------------------------------------------------------------

fn get_u16(b: &[u8], o: usize) -> u16 {
    let mut a = [0u8; 2];
    if let Some(s) = b.get(o..o.saturating_add(2)) {
        a.copy_from_slice(s);
    }
    u16::from_le_bytes(a)
}

fn get_u32(b: &[u8], o: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(o..o.saturating_add(4)) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}

fn get_u64(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(o..o.saturating_add(8)) {
        a.copy_from_slice(s);
    }
    u64::from_le_bytes(a)
}

fn put(b: &mut [u8], o: usize, v: &[u8]) {
    if let Some(d) = b.get_mut(o..o.saturating_add(v.len())) {
        d.copy_from_slice(v);
    }
}

// ---------------------------------------------------------------------------
// Ring region (RING_VERSION 2)
// ---------------------------------------------------------------------------
//
// A ring region is laid out as
//
//   [0, RING_HEADER_SIZE)      RingHeader: prefix, config, one cache line per index
//   [sq.offset, ..)            submission ring: sq.entries * SQE_SIZE bytes
//   [cq.offset, ..)            completion ring: cq.entries * CQE_SIZE bytes
//   [eq.offset, ..)            event ring:      eq.entries * EQE_SIZE bytes
//   [slots.offset, ..)         path slots:      slots.count * PATH_SLOT_SIZE bytes
//
// The host chooses the offsets and capacities when it creates the region and
// writes them into the header; the guest validates them with
// [`RingLayout::validate`] before it uses them. The host never reads them back:
// it keeps its own copy, because the guest can write the header.
//
// # The three rings
// Every ring is single-producer single-consumer with free-running `u32` indices:
// `head` is written only by the consumer, `tail` only by the producer, entry `i`
// lives in slot `i & (entries - 1)`, the ring is empty when `head == tail` and
// full when `tail - head == entries` (wrapping arithmetic). Each index sits alone
// on its own 64-byte cache line.
//
// | ring       | producer (writes tail, entries) | consumer (writes head) |
// |------------|---------------------------------|------------------------|
// | submission | guest                           | host poller            |
// | completion | host poller                     | guest                  |
// | event      | host                            | guest                  |
//
// # Memory ordering
// - Producer: write the entries, then store `tail` with Release.
// - Consumer: load `tail` with Acquire, copy the entries out, then store `head`
//   with Release (so the producer cannot overwrite a slot still being read).
// - Producer, before writing slots: load `head` with Acquire.
// - A reader checks `tail - head <= entries` on every index it loads; a value
//   outside that range means a corrupt ring and nothing is read.
//
// # Poller wake-up (NEED_WAKEUP)
// Host poller, before it parks:
//   1. set [`HOST_FLAG_NEED_WAKEUP`] in `host_flags` (SeqCst RMW),
//   2. full fence (SeqCst),
//   3. re-load `sq_tail` (and `cq_head`/`eq_head` if it was blocked on them);
//      if there is work, clear the flag and go on polling, else sleep until a
//      doorbell. After waking it clears the flag.
// Guest, after every store to `sq_tail`, `cq_head` or `eq_head`:
//   1. full fence (SeqCst) (`smp_mb()` in the kernel),
//   2. load `host_flags`; if NEED_WAKEUP is set, ring the doorbell.
//   After a `cq_head` store the guest may skip the doorbell when `sq_head`
//   (loaded after the fence) equals its own `sq_tail`: the poller can only be
//   waiting for completion room while hints wait in the submission ring.
// The two fences order "store index; load flag" against "store flag; load
// index", so at least one side sees the other: no lost wake-up. While the
// poller is awake the flag is clear and the guest rings no doorbell at all.
//
// # Host-side flow control
// The host consumes a submission only when the completion ring has room for its
// answer, so it never overwrites an answer the guest has not consumed. A guest
// that keeps `cq.entries >= sq.entries` answers outstanding never stalls.
//
// # Path slots
// A hint whose path does not fit in the entry's inline area sets
// [`HINT_FLAG_PATH_IN_SLOT`] and names a slot in `path_slot`. The guest owns
// slot allocation: a slot is busy from the submission until the guest has read
// the answer for that request; the host copies the path out before it answers.
// A path longer than [`MAX_PATH_LEN`] is answered with
// [`AnswerStatus::PathTooLong`], never truncated.
//
// # Attaching and restarting
// The host writes every header field and the indices first, then the prefix
// (magic last). The guest validates prefix and layout, then starts from the
// current index values (`tail = sq_tail`, `cq_head`, `eq_head` as found) and
// ignores answers whose request id it does not know. The host bumps the prefix
// `generation` whenever it re-initialises the region; a guest that sees it
// change drops every file map it got from the old generation.

/// Size in bytes of the ring region header ([`RingHeader`]).
pub const RING_HEADER_SIZE: u32 = 1024;
/// Cache line size the layout is built around.
pub const CACHE_LINE: u32 = 64;
/// Largest number of entries in one ring.
pub const MAX_RING_ENTRIES: u32 = 1 << 15;
/// Largest number of path slots.
pub const MAX_PATH_SLOTS: u32 = 1 << 12;
/// Size in bytes of one path slot.
pub const PATH_SLOT_SIZE: u32 = 4096;
/// Longest path (in bytes, without terminator) a hint may carry.
pub const MAX_PATH_LEN: u32 = PATH_SLOT_SIZE;

/// Feature bit: the host answers hints ([`OP_HINT`]). Always offered.
pub const FEATURE_HINTS: u64 = 1 << 0;
/// Feature bit: the region has path slots for long paths.
pub const FEATURE_PATH_SLOTS: u64 = 1 << 1;
/// Feature bit: the host sends events (revocations, notices) on the event ring.
pub const FEATURE_EVENTS: u64 = 1 << 2;
/// Feature bit: the poller parks and honours [`HOST_FLAG_NEED_WAKEUP`].
pub const FEATURE_NEED_WAKEUP: u64 = 1 << 3;
/// Every feature bit this version of the ABI knows.
pub const FEATURES_KNOWN: u64 =
    FEATURE_HINTS | FEATURE_PATH_SLOTS | FEATURE_EVENTS | FEATURE_NEED_WAKEUP;

/// `host_flags` bit: the poller is (about to be) asleep; the guest must ring
/// the doorbell after publishing work.
pub const HOST_FLAG_NEED_WAKEUP: u32 = 1 << 0;
/// `host_flags` bit: the host had to drop events because the event ring stayed
/// full; the guest must treat every file map as revoked. Sticky (never
/// cleared while the ring lives), so every loss, the first included, is also
/// told with a [`NOTICE_EVENTS_LOST`] event ahead of the queued ones.
pub const HOST_FLAG_EVENTS_LOST: u32 = 1 << 1;
/// `host_flags` bit: the host is shutting down; new hints are answered with
/// [`AnswerStatus::HostRestarting`].
pub const HOST_FLAG_STOPPING: u32 = 1 << 2;

/// Where one ring lives in the region, as written in the header.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingArea {
    /// Byte offset of slot 0 from the start of the region (64-byte aligned).
    pub offset: u32,
    /// Capacity in entries: a power of two in `1..=MAX_RING_ENTRIES`.
    pub entries: u32,
    /// Size of one entry in bytes (must equal the ABI constant for that ring).
    pub entry_size: u32,
    /// Zero.
    pub reserved: u32,
}

/// Where the path slots live, as written in the header.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotArea {
    /// Byte offset of slot 0 from the start of the region (64-byte aligned).
    pub offset: u32,
    /// Number of slots (may be zero: then [`FEATURE_PATH_SLOTS`] is off).
    pub count: u32,
    /// Size of one slot in bytes ([`PATH_SLOT_SIZE`]).
    pub slot_size: u32,
    /// Zero.
    pub reserved: u32,
}

/// One free-running ring index alone on its cache line.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug)]
pub struct IndexLine {
    /// The index; accessed only atomically (see the module comment).
    pub value: u32,
    /// Padding up to the cache line.
    pub pad: [u8; 60],
}

/// A flags word alone on its cache line, with room for issue 4/5 state.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug)]
pub struct FlagsLine {
    /// The flags; accessed only atomically.
    pub flags: u32,
    /// Zero; reserved.
    pub reserved: [u8; 60],
}

/// The header at offset 0 of a ring region.
///
/// Documentation of the layout only: neither side makes a reference to it in
/// shared memory. They access the fields at the offsets in [`ring_off`], the
/// indices and flags atomically, the rest by copying bytes out.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug)]
pub struct RingHeader {
    /// Writer: host at init. `header_size` is [`RING_HEADER_SIZE`].
    pub prefix: RegionPrefix,
    /// Writer: host at init. Feature bits the host offers (`FEATURE_*`).
    pub host_features: u64,
    /// Writer: guest after attach. Feature bits the guest uses (informational).
    pub guest_features: u64,
    /// Writer: host at init. The submission ring (guest -> host hints).
    pub sq: RingArea,
    /// Writer: host at init. The completion ring (host -> guest answers).
    pub cq: RingArea,
    /// Writer: host at init. The event ring (host -> guest events).
    pub eq: RingArea,
    /// Writer: host at init. The path slot area.
    pub slots: SlotArea,
    /// Zero; reserved for configuration of later versions.
    pub reserved_config: [u8; 16],
    /// Writer: host (consumer). Submission ring head.
    pub sq_head: IndexLine,
    /// Writer: guest (producer). Submission ring tail.
    pub sq_tail: IndexLine,
    /// Writer: guest (consumer). Completion ring head.
    pub cq_head: IndexLine,
    /// Writer: host (producer). Completion ring tail.
    pub cq_tail: IndexLine,
    /// Writer: guest (consumer). Event ring head.
    pub eq_head: IndexLine,
    /// Writer: host (producer). Event ring tail.
    pub eq_tail: IndexLine,
    /// Writer: host. Poller state (`HOST_FLAG_*`).
    pub host_flags: FlagsLine,
    /// Writer: guest. Zero for now; reserved for guest-side notification
    /// suppression (completion interrupts, issue 5).
    pub guest_flags: FlagsLine,
    /// Zero; reserved.
    pub reserved: [u8; 384],
}

/// Byte offsets of the [`RingHeader`] fields, for volatile/atomic access.
pub mod ring_off {
    /// `host_features` (u64).
    pub const HOST_FEATURES: usize = 32;
    /// `guest_features` (u64).
    pub const GUEST_FEATURES: usize = 40;
    /// `sq` ([`super::RingArea`], 16 bytes).
    pub const SQ_AREA: usize = 48;
    /// `cq` ([`super::RingArea`], 16 bytes).
    pub const CQ_AREA: usize = 64;
    /// `eq` ([`super::RingArea`], 16 bytes).
    pub const EQ_AREA: usize = 80;
    /// `slots` ([`super::SlotArea`], 16 bytes).
    pub const SLOT_AREA: usize = 96;
    /// End of the configuration bytes (`[32, CONFIG_END)` is [`super::RingLayout`]).
    pub const CONFIG_END: usize = 128;
    /// Submission ring head (u32, host writes).
    pub const SQ_HEAD: usize = 128;
    /// Submission ring tail (u32, guest writes).
    pub const SQ_TAIL: usize = 192;
    /// Completion ring head (u32, guest writes).
    pub const CQ_HEAD: usize = 256;
    /// Completion ring tail (u32, host writes).
    pub const CQ_TAIL: usize = 320;
    /// Event ring head (u32, guest writes).
    pub const EQ_HEAD: usize = 384;
    /// Event ring tail (u32, host writes).
    pub const EQ_TAIL: usize = 448;
    /// Host flags (u32, host writes).
    pub const HOST_FLAGS: usize = 512;
    /// Guest flags (u32, guest writes).
    pub const GUEST_FLAGS: usize = 576;
}

const _: () = {
    assert!(size_of::<RingArea>() == 16);
    assert!(size_of::<SlotArea>() == 16);
    assert!(size_of::<IndexLine>() == 64);
    assert!(size_of::<FlagsLine>() == 64);
    assert!(size_of::<RingHeader>() == RING_HEADER_SIZE as usize);
    assert!(offset_of!(RingHeader, prefix) == 0);
    assert!(offset_of!(RingHeader, host_features) == ring_off::HOST_FEATURES);
    assert!(offset_of!(RingHeader, guest_features) == ring_off::GUEST_FEATURES);
    assert!(offset_of!(RingHeader, sq) == ring_off::SQ_AREA);
    assert!(offset_of!(RingHeader, cq) == ring_off::CQ_AREA);
    assert!(offset_of!(RingHeader, eq) == ring_off::EQ_AREA);
    assert!(offset_of!(RingHeader, slots) == ring_off::SLOT_AREA);
    assert!(offset_of!(RingHeader, sq_head) == ring_off::SQ_HEAD);
    assert!(offset_of!(RingHeader, sq_tail) == ring_off::SQ_TAIL);
    assert!(offset_of!(RingHeader, cq_head) == ring_off::CQ_HEAD);
    assert!(offset_of!(RingHeader, cq_tail) == ring_off::CQ_TAIL);
    assert!(offset_of!(RingHeader, eq_head) == ring_off::EQ_HEAD);
    assert!(offset_of!(RingHeader, eq_tail) == ring_off::EQ_TAIL);
    assert!(offset_of!(RingHeader, host_flags) == ring_off::HOST_FLAGS);
    assert!(offset_of!(RingHeader, guest_flags) == ring_off::GUEST_FLAGS);
    assert!(ring_off::SQ_HEAD & (CACHE_LINE as usize - 1) == 0);
    assert!(ring_off::SQ_TAIL - ring_off::SQ_HEAD >= CACHE_LINE as usize);
};

/// Why a ring layout was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutError {
    /// A ring capacity is zero, not a power of two or above [`MAX_RING_ENTRIES`].
    BadEntries(u32),
    /// An entry or slot size differs from the ABI constant.
    BadEntrySize(u32),
    /// An area is not 64-byte aligned, overlaps the header or another area, or
    /// ends beyond the region.
    BadArea(u32),
    /// The completion ring is smaller than the submission ring.
    CompletionTooSmall,
    /// Too many path slots.
    BadSlotCount(u32),
    /// Feature bits this ABI does not know, or an inconsistent feature set.
    BadFeatures(u64),
    /// The region is too small for the requested layout.
    RegionTooSmall,
}

/// The configuration part of a ring header: features and where everything is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingLayout {
    /// Feature bits the host offers.
    pub features: u64,
    /// The submission ring.
    pub sq: RingArea,
    /// The completion ring.
    pub cq: RingArea,
    /// The event ring.
    pub eq: RingArea,
    /// The path slots.
    pub slots: SlotArea,
}

/// Capacities a host asks for when it lays out a ring region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingSizes {
    /// Submission ring entries (power of two).
    pub sq_entries: u32,
    /// Completion ring entries (power of two, at least `sq_entries`).
    pub cq_entries: u32,
    /// Event ring entries (power of two).
    pub eq_entries: u32,
    /// Number of path slots (zero disables long paths).
    pub path_slots: u32,
}

const fn align_up(v: u64, a: u64) -> u64 {
    (v + a - 1) & !(a - 1)
}

impl RingSizes {
    /// The default sizes for a region of `region_size` bytes: the largest
    /// submission ring up to 1024 entries that fits beside a completion ring of
    /// the same size, 256 events and 32 path slots (fewer in tiny regions).
    pub fn for_region(region_size: u64) -> Option<RingSizes> {
        let mut sq = 1024u32;
        while sq >= 1 {
            let mut slots = 32u32;
            loop {
                let s = RingSizes {
                    sq_entries: sq,
                    cq_entries: sq,
                    eq_entries: if sq < 256 { sq } else { 256 },
                    path_slots: slots,
                };
                if RingLayout::compute(region_size, &s).is_ok() {
                    return Some(s);
                }
                if slots == 0 {
                    break;
                }
                slots /= 2;
            }
            sq /= 2;
        }
        None
    }
}

impl RingLayout {
    /// Lays out rings of the given sizes in a region of `region_size` bytes.
    /// Every ring starts on a 4 KiB boundary.
    pub fn compute(region_size: u64, s: &RingSizes) -> Result<RingLayout, LayoutError> {
        for e in [s.sq_entries, s.cq_entries, s.eq_entries] {
            if e == 0 || !e.is_power_of_two() || e > MAX_RING_ENTRIES {
                return Err(LayoutError::BadEntries(e));
            }
        }
        if s.cq_entries < s.sq_entries {
            return Err(LayoutError::CompletionTooSmall);
        }
        if s.path_slots > MAX_PATH_SLOTS {
            return Err(LayoutError::BadSlotCount(s.path_slots));
        }
        let page = 4096u64;
        let sq_off = align_up(RING_HEADER_SIZE as u64, page);
        let cq_off = align_up(sq_off + s.sq_entries as u64 * SQE_SIZE as u64, page);
        let eq_off = align_up(cq_off + s.cq_entries as u64 * CQE_SIZE as u64, page);
        let slot_off = align_up(eq_off + s.eq_entries as u64 * EQE_SIZE as u64, page);
        let end = slot_off + s.path_slots as u64 * PATH_SLOT_SIZE as u64;
        if end > region_size || end > u32::MAX as u64 {
            return Err(LayoutError::RegionTooSmall);
        }
        let mut features = FEATURE_HINTS | FEATURE_EVENTS | FEATURE_NEED_WAKEUP;
        if s.path_slots > 0 {
            features |= FEATURE_PATH_SLOTS;
        }
        let area = |offset: u64, entries: u32, entry_size: u32| RingArea {
            offset: offset as u32,
            entries,
            entry_size,
            reserved: 0,
        };
        let layout = RingLayout {
            features,
            sq: area(sq_off, s.sq_entries, SQE_SIZE),
            cq: area(cq_off, s.cq_entries, CQE_SIZE),
            eq: area(eq_off, s.eq_entries, EQE_SIZE),
            slots: SlotArea {
                offset: slot_off as u32,
                count: s.path_slots,
                slot_size: PATH_SLOT_SIZE,
                reserved: 0,
            },
        };
        layout.validate(region_size)?;
        Ok(layout)
    }

    /// Checks a layout copied out of a header against a region of
    /// `region_size` bytes: known features, power-of-two capacities, ABI entry
    /// sizes, aligned areas inside the region that overlap neither the header
    /// nor each other. A guest must call this before it trusts any offset.
    pub fn validate(&self, region_size: u64) -> Result<(), LayoutError> {
        if self.features & !FEATURES_KNOWN != 0 || self.features & FEATURE_HINTS == 0 {
            return Err(LayoutError::BadFeatures(self.features));
        }
        if (self.features & FEATURE_PATH_SLOTS != 0) != (self.slots.count > 0) {
            return Err(LayoutError::BadFeatures(self.features));
        }
        let rings = [
            (self.sq, SQE_SIZE),
            (self.cq, CQE_SIZE),
            (self.eq, EQE_SIZE),
        ];
        // (start, end) of every area, to check bounds and overlaps.
        let mut spans = [(0u64, 0u64); 4];
        for (i, (r, size)) in rings.iter().enumerate() {
            if r.entries == 0 || !r.entries.is_power_of_two() || r.entries > MAX_RING_ENTRIES {
                return Err(LayoutError::BadEntries(r.entries));
            }
            if r.entry_size != *size || r.reserved != 0 {
                return Err(LayoutError::BadEntrySize(r.entry_size));
            }
            let start = r.offset as u64;
            let end = start + r.entries as u64 * r.entry_size as u64;
            if let Some(s) = spans.get_mut(i) {
                *s = (start, end);
            }
        }
        if self.cq.entries < self.sq.entries {
            return Err(LayoutError::CompletionTooSmall);
        }
        if self.slots.count > MAX_PATH_SLOTS {
            return Err(LayoutError::BadSlotCount(self.slots.count));
        }
        if self.slots.slot_size != PATH_SLOT_SIZE || self.slots.reserved != 0 {
            return Err(LayoutError::BadEntrySize(self.slots.slot_size));
        }
        let slot_start = self.slots.offset as u64;
        spans[3] = (
            slot_start,
            slot_start + self.slots.count as u64 * PATH_SLOT_SIZE as u64,
        );
        for (i, &(start, end)) in spans.iter().enumerate() {
            if start % CACHE_LINE as u64 != 0
                || start < RING_HEADER_SIZE as u64
                || end > region_size
            {
                return Err(LayoutError::BadArea(start as u32));
            }
            for &(s2, e2) in spans.iter().skip(i + 1) {
                // Empty areas (zero path slots) overlap nothing.
                if start < e2 && s2 < end && start != end && s2 != e2 {
                    return Err(LayoutError::BadArea(start as u32));
                }
            }
        }
        Ok(())
    }

    /// Decodes header bytes `[32, 128)` (everything after the prefix up to the
    /// first index line), given as `b[0..96]`.
    pub fn from_le_bytes(b: &[u8; 96]) -> RingLayout {
        let base = ring_off::HOST_FEATURES;
        let area = |o: usize| RingArea {
            offset: get_u32(b, o - base),
            entries: get_u32(b, o - base + 4),
            entry_size: get_u32(b, o - base + 8),
            reserved: get_u32(b, o - base + 12),
        };
        let slots = ring_off::SLOT_AREA - base;
        RingLayout {
            features: get_u64(b, 0),
            sq: area(ring_off::SQ_AREA),
            cq: area(ring_off::CQ_AREA),
            eq: area(ring_off::EQ_AREA),
            slots: SlotArea {
                offset: get_u32(b, slots),
                count: get_u32(b, slots + 4),
                slot_size: get_u32(b, slots + 8),
                reserved: get_u32(b, slots + 12),
            },
        }
    }

    /// Encodes header bytes `[32, 128)`; `guest_features` and the reserved
    /// bytes are written as zero.
    pub fn to_le_bytes(&self) -> [u8; 96] {
        let mut b = [0u8; 96];
        let base = ring_off::HOST_FEATURES;
        put(&mut b, 0, &self.features.to_le_bytes());
        for (o, r) in [
            (ring_off::SQ_AREA, self.sq),
            (ring_off::CQ_AREA, self.cq),
            (ring_off::EQ_AREA, self.eq),
        ] {
            put(&mut b, o - base, &r.offset.to_le_bytes());
            put(&mut b, o - base + 4, &r.entries.to_le_bytes());
            put(&mut b, o - base + 8, &r.entry_size.to_le_bytes());
            put(&mut b, o - base + 12, &r.reserved.to_le_bytes());
        }
        let s = ring_off::SLOT_AREA - base;
        put(&mut b, s, &self.slots.offset.to_le_bytes());
        put(&mut b, s + 4, &self.slots.count.to_le_bytes());
        put(&mut b, s + 8, &self.slots.slot_size.to_le_bytes());
        put(&mut b, s + 12, &self.slots.reserved.to_le_bytes());
        b
    }

    /// Byte offset of submission slot `slot` (already masked).
    pub fn sqe_offset(&self, slot: u32) -> u64 {
        self.sq.offset as u64 + (slot & (self.sq.entries.wrapping_sub(1))) as u64 * SQE_SIZE as u64
    }

    /// Byte offset of completion slot `slot` (masked here).
    pub fn cqe_offset(&self, slot: u32) -> u64 {
        self.cq.offset as u64 + (slot & (self.cq.entries.wrapping_sub(1))) as u64 * CQE_SIZE as u64
    }

    /// Byte offset of event slot `slot` (masked here).
    pub fn eqe_offset(&self, slot: u32) -> u64 {
        self.eq.offset as u64 + (slot & (self.eq.entries.wrapping_sub(1))) as u64 * EQE_SIZE as u64
    }

    /// Byte offset of path slot `index`, or `None` if there is no such slot.
    pub fn path_slot_offset(&self, index: u32) -> Option<u64> {
        if index < self.slots.count {
            Some(self.slots.offset as u64 + index as u64 * PATH_SLOT_SIZE as u64)
        } else {
            None
        }
    }
}

// ---------------------------------------------------------------------------
// Submission entries (guest -> host)
// ---------------------------------------------------------------------------

/// Answer flag: this answers a map operation ([`OP_ACK_REVOKE`],
/// [`OP_RELEASE`]); `status` is [`AnswerStatus::Hit`] when it was taken,
/// `file_map_id` echoes the map. Nothing else in the answer is meaningful.
pub const ANSWER_FLAG_MAP_OP: u16 = 1 << 0;

/// Size of one submission ring slot: a [`SubmissionEntry`] followed by
/// [`SQE_INLINE_PATH_MAX`] bytes of inline path.
pub const SQE_SIZE: u32 = 256;
/// Offset of the inline path inside a submission slot.
pub const SQE_INLINE_PATH_OFF: u32 = 96;
/// Longest path stored inline in a submission slot.
pub const SQE_INLINE_PATH_MAX: u32 = SQE_SIZE - SQE_INLINE_PATH_OFF;

/// Opcode: a hint (the guest opened a file; answer with a file map or a miss).
pub const OP_HINT: u16 = 1;
/// Opcode: the guest has stopped using file map `reserved[0]` after an
/// [`EVENT_REVOKE`] for it (every mapping of its frames is gone). Only after
/// every holder acknowledged does the host reuse the map's frames.
pub const OP_ACK_REVOKE: u16 = 2;
/// Opcode: the guest no longer holds file map `reserved[0]` (the inode went
/// away, or the file fell back to the lower file for good).
pub const OP_RELEASE: u16 = 3;
// Opcodes 4.. are reserved.
//
// Map operations ([`OP_ACK_REVOKE`], [`OP_RELEASE`]) carry no path: path_len,
// flags, path_slot and the identity fields are zero, `reserved[0]` is the file
// map id (never 0) and `reserved[1..]` are zero. Like a hint, each gets exactly
// one answer, with [`ANSWER_FLAG_MAP_OP`] set, so ring accounting stays one
// answer per entry and a guest can drop these answers without a lookup.

/// Hint flag: the path is in path slot `path_slot`, not inline.
pub const HINT_FLAG_PATH_IN_SLOT: u32 = 1 << 0;
/// Every hint flag this version knows; others must be zero.
pub const HINT_FLAGS_KNOWN: u32 = HINT_FLAG_PATH_IN_SLOT;

/// The fixed part of a submission slot: one hint.
///
/// Writer: guest (producer). The host copies it out with volatile loads and
/// then validates the copy ([`SubmissionEntry::check`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SubmissionEntry {
    /// Guest-chosen id, echoed in the answer.
    pub request_id: u64,
    /// [`OP_HINT`].
    pub opcode: u16,
    /// Length of the path in bytes, no terminator.
    pub path_len: u16,
    /// Which namespace the path is relative to.
    pub namespace_id: u32,
    /// `HINT_FLAG_*`.
    pub flags: u32,
    /// Path slot index when [`HINT_FLAG_PATH_IN_SLOT`] is set, else zero.
    pub path_slot: u32,
    /// Identity of the guest's copy: size in bytes.
    pub file_size: u64,
    /// Identity: modification time, ns since the epoch.
    pub mtime_ns: i64,
    /// Identity: inode change time, ns since the epoch (0 if unknown).
    pub ctime_ns: i64,
    /// Identity: inode number in the guest's lower file system (0 if unknown).
    pub inode: u64,
    /// First page wanted (page size 4096).
    pub first_page: u64,
    /// Number of pages wanted; 0 means to the end of the file.
    pub page_count: u32,
    /// Zero; reserved.
    pub reserved0: u32,
    /// Zero; reserved (issue 4/5: content hash hint, device id).
    pub reserved: [u64; 3],
}

/// Byte offsets of [`SubmissionEntry`] fields.
pub mod sqe_off {
    /// `request_id`.
    pub const REQUEST_ID: usize = 0;
    /// `opcode`.
    pub const OPCODE: usize = 8;
    /// `path_len`.
    pub const PATH_LEN: usize = 10;
    /// `namespace_id`.
    pub const NAMESPACE_ID: usize = 12;
    /// `flags`.
    pub const FLAGS: usize = 16;
    /// `path_slot`.
    pub const PATH_SLOT: usize = 20;
    /// `file_size`.
    pub const FILE_SIZE: usize = 24;
    /// `mtime_ns`.
    pub const MTIME_NS: usize = 32;
    /// `ctime_ns`.
    pub const CTIME_NS: usize = 40;
    /// `inode`.
    pub const INODE: usize = 48;
    /// `first_page`.
    pub const FIRST_PAGE: usize = 56;
    /// `page_count`.
    pub const PAGE_COUNT: usize = 64;
    /// `reserved0`.
    pub const RESERVED0: usize = 68;
    /// `reserved`.
    pub const RESERVED: usize = 72;
}

const _: () = {
    assert!(size_of::<SubmissionEntry>() == SQE_INLINE_PATH_OFF as usize);
    assert!(offset_of!(SubmissionEntry, request_id) == sqe_off::REQUEST_ID);
    assert!(offset_of!(SubmissionEntry, opcode) == sqe_off::OPCODE);
    assert!(offset_of!(SubmissionEntry, path_len) == sqe_off::PATH_LEN);
    assert!(offset_of!(SubmissionEntry, namespace_id) == sqe_off::NAMESPACE_ID);
    assert!(offset_of!(SubmissionEntry, flags) == sqe_off::FLAGS);
    assert!(offset_of!(SubmissionEntry, path_slot) == sqe_off::PATH_SLOT);
    assert!(offset_of!(SubmissionEntry, file_size) == sqe_off::FILE_SIZE);
    assert!(offset_of!(SubmissionEntry, mtime_ns) == sqe_off::MTIME_NS);
    assert!(offset_of!(SubmissionEntry, ctime_ns) == sqe_off::CTIME_NS);
    assert!(offset_of!(SubmissionEntry, inode) == sqe_off::INODE);
    assert!(offset_of!(SubmissionEntry, first_page) == sqe_off::FIRST_PAGE);
    assert!(offset_of!(SubmissionEntry, page_count) == sqe_off::PAGE_COUNT);
    assert!(offset_of!(SubmissionEntry, reserved0) == sqe_off::RESERVED0);
    assert!(offset_of!(SubmissionEntry, reserved) == sqe_off::RESERVED);
    assert!(SQE_SIZE.is_power_of_two());
    assert!(SQE_INLINE_PATH_OFF & 7 == 0 && SQE_INLINE_PATH_MAX & 7 == 0);
};

/// Where a checked hint's path is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathLocation {
    /// In the entry's inline area, `len` bytes.
    Inline {
        /// Path length.
        len: u32,
    },
    /// In path slot `index`, `len` bytes.
    Slot {
        /// Slot index (checked against the slot count).
        index: u32,
        /// Path length.
        len: u32,
    },
}

impl PathLocation {
    /// Length of the path in bytes.
    pub fn len(&self) -> u32 {
        match *self {
            PathLocation::Inline { len } | PathLocation::Slot { len, .. } => len,
        }
    }

    /// Whether the path is empty (never true for a checked entry).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a submission entry was refused before its path was looked at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryError {
    /// The opcode is unknown.
    UnknownOpcode(u16),
    /// Unknown flag bits or non-zero reserved fields.
    Reserved,
    /// The path is empty.
    EmptyPath,
    /// The path is longer than [`MAX_PATH_LEN`].
    PathTooLong(u32),
    /// The path does not fit inline and names no valid slot.
    BadPathSlot(u32),
}

impl EntryError {
    /// The answer status for this error.
    pub fn status(&self) -> AnswerStatus {
        match self {
            EntryError::UnknownOpcode(_) => AnswerStatus::Unsupported,
            EntryError::PathTooLong(_) => AnswerStatus::PathTooLong,
            EntryError::Reserved | EntryError::EmptyPath | EntryError::BadPathSlot(_) => {
                AnswerStatus::BadRequest
            }
        }
    }
}

impl SubmissionEntry {
    /// A map operation ([`OP_ACK_REVOKE`] or [`OP_RELEASE`]) for `file_map_id`.
    pub fn map_op(request_id: u64, opcode: u16, file_map_id: u64) -> SubmissionEntry {
        SubmissionEntry {
            request_id,
            opcode,
            reserved: [file_map_id, 0, 0],
            ..SubmissionEntry::default()
        }
    }

    /// Validates a copied-out map operation; returns its file map id.
    pub fn check_map_op(&self) -> Result<u64, EntryError> {
        if self.opcode != OP_ACK_REVOKE && self.opcode != OP_RELEASE {
            return Err(EntryError::UnknownOpcode(self.opcode));
        }
        let [map_id, r1, r2] = self.reserved;
        if self.path_len != 0
            || self.flags != 0
            || self.path_slot != 0
            || self.namespace_id != 0
            || self.file_size != 0
            || self.mtime_ns != 0
            || self.ctime_ns != 0
            || self.inode != 0
            || self.first_page != 0
            || self.page_count != 0
            || self.reserved0 != 0
            || r1 != 0
            || r2 != 0
            || map_id == 0
        {
            return Err(EntryError::Reserved);
        }
        Ok(map_id)
    }

    /// Decodes the fixed part of a submission slot.
    pub fn from_le_bytes(b: &[u8; SQE_INLINE_PATH_OFF as usize]) -> SubmissionEntry {
        SubmissionEntry {
            request_id: get_u64(b, sqe_off::REQUEST_ID),
            opcode: get_u16(b, sqe_off::OPCODE),
            path_len: get_u16(b, sqe_off::PATH_LEN),
            namespace_id: get_u32(b, sqe_off::NAMESPACE_ID),
            flags: get_u32(b, sqe_off::FLAGS),
            path_slot: get_u32(b, sqe_off::PATH_SLOT),
            file_size: get_u64(b, sqe_off::FILE_SIZE),
            mtime_ns: get_u64(b, sqe_off::MTIME_NS) as i64,
            ctime_ns: get_u64(b, sqe_off::CTIME_NS) as i64,
            inode: get_u64(b, sqe_off::INODE),
            first_page: get_u64(b, sqe_off::FIRST_PAGE),
            page_count: get_u32(b, sqe_off::PAGE_COUNT),
            reserved0: get_u32(b, sqe_off::RESERVED0),
            reserved: [
                get_u64(b, sqe_off::RESERVED),
                get_u64(b, sqe_off::RESERVED + 8),
                get_u64(b, sqe_off::RESERVED + 16),
            ],
        }
    }

    /// Encodes the fixed part of a submission slot.
    pub fn to_le_bytes(&self) -> [u8; SQE_INLINE_PATH_OFF as usize] {
        let mut b = [0u8; SQE_INLINE_PATH_OFF as usize];
        put(&mut b, sqe_off::REQUEST_ID, &self.request_id.to_le_bytes());
        put(&mut b, sqe_off::OPCODE, &self.opcode.to_le_bytes());
        put(&mut b, sqe_off::PATH_LEN, &self.path_len.to_le_bytes());
        put(
            &mut b,
            sqe_off::NAMESPACE_ID,
            &self.namespace_id.to_le_bytes(),
        );
        put(&mut b, sqe_off::FLAGS, &self.flags.to_le_bytes());
        put(&mut b, sqe_off::PATH_SLOT, &self.path_slot.to_le_bytes());
        put(&mut b, sqe_off::FILE_SIZE, &self.file_size.to_le_bytes());
        put(&mut b, sqe_off::MTIME_NS, &self.mtime_ns.to_le_bytes());
        put(&mut b, sqe_off::CTIME_NS, &self.ctime_ns.to_le_bytes());
        put(&mut b, sqe_off::INODE, &self.inode.to_le_bytes());
        put(&mut b, sqe_off::FIRST_PAGE, &self.first_page.to_le_bytes());
        put(&mut b, sqe_off::PAGE_COUNT, &self.page_count.to_le_bytes());
        put(&mut b, sqe_off::RESERVED0, &self.reserved0.to_le_bytes());
        for (i, r) in self.reserved.iter().enumerate() {
            put(&mut b, sqe_off::RESERVED + 8 * i, &r.to_le_bytes());
        }
        b
    }

    /// Checks the structure of a copied-out entry in a region with
    /// `slot_count` path slots and says where its path is. The path bytes
    /// themselves are checked by [`check_path`] once copied out.
    pub fn check(&self, slot_count: u32) -> Result<PathLocation, EntryError> {
        if self.opcode != OP_HINT {
            return Err(EntryError::UnknownOpcode(self.opcode));
        }
        if self.flags & !HINT_FLAGS_KNOWN != 0
            || self.reserved0 != 0
            || self.reserved != [0; 3]
            || (self.flags & HINT_FLAG_PATH_IN_SLOT == 0 && self.path_slot != 0)
        {
            return Err(EntryError::Reserved);
        }
        let len = self.path_len as u32;
        if len == 0 {
            return Err(EntryError::EmptyPath);
        }
        if len > MAX_PATH_LEN {
            return Err(EntryError::PathTooLong(len));
        }
        if self.flags & HINT_FLAG_PATH_IN_SLOT != 0 {
            if self.path_slot >= slot_count {
                return Err(EntryError::BadPathSlot(self.path_slot));
            }
            Ok(PathLocation::Slot {
                index: self.path_slot,
                len,
            })
        } else if len > SQE_INLINE_PATH_MAX {
            Err(EntryError::BadPathSlot(self.path_slot))
        } else {
            Ok(PathLocation::Inline { len })
        }
    }
}

/// Why a path was refused (copied out, before any file system lookup).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathError {
    /// Empty, or longer than [`MAX_PATH_LEN`].
    Length,
    /// Contains a NUL byte.
    Nul,
    /// Starts with `/`: paths are relative to their namespace.
    Absolute,
    /// Has a `..` component.
    DotDot,
}

/// Cheap structural check of a namespace-relative path: non-empty, at most
/// [`MAX_PATH_LEN`] bytes, no NUL, not absolute, no `..` component. The host's
/// resolver still confines the lookup to the namespace root; this only
/// refuses what can never be valid.
pub fn check_path(path: &[u8]) -> Result<(), PathError> {
    if path.is_empty() || path.len() > MAX_PATH_LEN as usize {
        return Err(PathError::Length);
    }
    if path.first() == Some(&b'/') {
        return Err(PathError::Absolute);
    }
    // Fast path (this runs for every hint): branch-free scans for a NUL and
    // for two adjacent dots; almost every real path has neither.
    let nul = path.iter().fold(false, |a, &c| a | (c == 0));
    let dot_dot = path
        .iter()
        .zip(path.iter().skip(1))
        .fold(false, |a, (&x, &y)| a | ((x == b'.') & (y == b'.')));
    if !nul && !dot_dot {
        return Ok(());
    }
    // Exact pass: length of the current component and how many of its bytes
    // are dots.
    let (mut len, mut dots) = (0usize, 0usize);
    for &c in path {
        match c {
            0 => return Err(PathError::Nul),
            b'/' => {
                if len == 2 && dots == 2 {
                    return Err(PathError::DotDot);
                }
                len = 0;
                dots = 0;
            }
            b'.' => {
                len += 1;
                dots += 1;
            }
            _ => len += 1,
        }
    }
    if len == 2 && dots == 2 {
        return Err(PathError::DotDot);
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Completion entries (host -> guest)
// ---------------------------------------------------------------------------

/// Size of one completion entry.
pub const CQE_SIZE: u32 = 64;

/// What the host answers to a hint. Everything but [`AnswerStatus::Hit`] is a
/// miss: the guest reads the lower file as usual.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AnswerStatus {
    /// The file is in the pool: `table_offset` and `page_count` are valid.
    Hit = 0,
    /// Miss: no such file in the namespace.
    NotFound = 1,
    /// Miss: the host's file differs from the guest's copy (size, mtime, ...).
    IdentityMismatch = 2,
    /// Miss: the file is larger than the host serves.
    TooLarge = 3,
    /// Miss: the pool has no room.
    PoolFull = 4,
    /// Miss: the entry was malformed (reserved bits, bad slot, bad path).
    BadRequest = 5,
    /// Miss: this VM may not use that namespace (or it does not exist).
    NamespaceNotAllowed = 6,
    /// Miss: the path is longer than [`MAX_PATH_LEN`].
    PathTooLong = 7,
    /// Miss: the host is restarting or shutting down.
    HostRestarting = 8,
    /// Miss: unknown opcode.
    Unsupported = 9,
    /// Miss: the host failed for a reason of its own (I/O error, ...).
    HostError = 10,
}

impl AnswerStatus {
    /// Decodes a status; unknown values are `None` (a guest treats them as a miss).
    pub fn from_u16(v: u16) -> Option<AnswerStatus> {
        Some(match v {
            0 => AnswerStatus::Hit,
            1 => AnswerStatus::NotFound,
            2 => AnswerStatus::IdentityMismatch,
            3 => AnswerStatus::TooLarge,
            4 => AnswerStatus::PoolFull,
            5 => AnswerStatus::BadRequest,
            6 => AnswerStatus::NamespaceNotAllowed,
            7 => AnswerStatus::PathTooLong,
            8 => AnswerStatus::HostRestarting,
            9 => AnswerStatus::Unsupported,
            10 => AnswerStatus::HostError,
            _ => return None,
        })
    }
}

/// One answer.
///
/// Writer: host (producer). The guest copies it out and validates
/// `table_offset`/`page_count` against the pool before it uses them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompletionEntry {
    /// The hint's `request_id`.
    pub request_id: u64,
    /// An [`AnswerStatus`] as `u16`.
    pub status: u16,
    /// `ANSWER_FLAG_*`; other bits zero.
    pub flags: u16,
    /// On a hit: pages in the file's frame table.
    pub page_count: u32,
    /// On a hit: byte offset of the file's frame table in the pool region.
    pub table_offset: u64,
    /// On a hit: the host's id of this file map (events name it).
    pub file_map_id: u64,
    /// On a hit: generation of the file map (a revocation carries it too).
    pub map_generation: u64,
    /// On a hit: the file size the host serves.
    pub file_size: u64,
    /// Zero; reserved.
    pub reserved: [u64; 2],
}

/// Byte offsets of [`CompletionEntry`] fields.
pub mod cqe_off {
    /// `request_id`.
    pub const REQUEST_ID: usize = 0;
    /// `status`.
    pub const STATUS: usize = 8;
    /// `flags`.
    pub const FLAGS: usize = 10;
    /// `page_count`.
    pub const PAGE_COUNT: usize = 12;
    /// `table_offset`.
    pub const TABLE_OFFSET: usize = 16;
    /// `file_map_id`.
    pub const FILE_MAP_ID: usize = 24;
    /// `map_generation`.
    pub const MAP_GENERATION: usize = 32;
    /// `file_size`.
    pub const FILE_SIZE: usize = 40;
    /// `reserved`.
    pub const RESERVED: usize = 48;
}

const _: () = {
    assert!(size_of::<CompletionEntry>() == CQE_SIZE as usize);
    assert!(offset_of!(CompletionEntry, request_id) == cqe_off::REQUEST_ID);
    assert!(offset_of!(CompletionEntry, status) == cqe_off::STATUS);
    assert!(offset_of!(CompletionEntry, flags) == cqe_off::FLAGS);
    assert!(offset_of!(CompletionEntry, page_count) == cqe_off::PAGE_COUNT);
    assert!(offset_of!(CompletionEntry, table_offset) == cqe_off::TABLE_OFFSET);
    assert!(offset_of!(CompletionEntry, file_map_id) == cqe_off::FILE_MAP_ID);
    assert!(offset_of!(CompletionEntry, map_generation) == cqe_off::MAP_GENERATION);
    assert!(offset_of!(CompletionEntry, file_size) == cqe_off::FILE_SIZE);
    assert!(offset_of!(CompletionEntry, reserved) == cqe_off::RESERVED);
};

impl CompletionEntry {
    /// A miss answer for `request_id`.
    pub const fn miss(request_id: u64, status: AnswerStatus) -> CompletionEntry {
        CompletionEntry {
            request_id,
            status: status as u16,
            flags: 0,
            page_count: 0,
            table_offset: 0,
            file_map_id: 0,
            map_generation: 0,
            file_size: 0,
            reserved: [0; 2],
        }
    }

    /// Decodes a completion entry.
    pub fn from_le_bytes(b: &[u8; CQE_SIZE as usize]) -> CompletionEntry {
        CompletionEntry {
            request_id: get_u64(b, cqe_off::REQUEST_ID),
            status: get_u16(b, cqe_off::STATUS),
            flags: get_u16(b, cqe_off::FLAGS),
            page_count: get_u32(b, cqe_off::PAGE_COUNT),
            table_offset: get_u64(b, cqe_off::TABLE_OFFSET),
            file_map_id: get_u64(b, cqe_off::FILE_MAP_ID),
            map_generation: get_u64(b, cqe_off::MAP_GENERATION),
            file_size: get_u64(b, cqe_off::FILE_SIZE),
            reserved: [
                get_u64(b, cqe_off::RESERVED),
                get_u64(b, cqe_off::RESERVED + 8),
            ],
        }
    }

    /// Encodes a completion entry.
    pub fn to_le_bytes(&self) -> [u8; CQE_SIZE as usize] {
        let mut b = [0u8; CQE_SIZE as usize];
        put(&mut b, cqe_off::REQUEST_ID, &self.request_id.to_le_bytes());
        put(&mut b, cqe_off::STATUS, &self.status.to_le_bytes());
        put(&mut b, cqe_off::FLAGS, &self.flags.to_le_bytes());
        put(&mut b, cqe_off::PAGE_COUNT, &self.page_count.to_le_bytes());
        put(
            &mut b,
            cqe_off::TABLE_OFFSET,
            &self.table_offset.to_le_bytes(),
        );
        put(
            &mut b,
            cqe_off::FILE_MAP_ID,
            &self.file_map_id.to_le_bytes(),
        );
        put(
            &mut b,
            cqe_off::MAP_GENERATION,
            &self.map_generation.to_le_bytes(),
        );
        put(&mut b, cqe_off::FILE_SIZE, &self.file_size.to_le_bytes());
        put(&mut b, cqe_off::RESERVED, &self.reserved[0].to_le_bytes());
        put(
            &mut b,
            cqe_off::RESERVED + 8,
            &self.reserved[1].to_le_bytes(),
        );
        b
    }
}

// ---------------------------------------------------------------------------
// Event entries (host -> guest)
// ---------------------------------------------------------------------------

/// Size of one event entry.
pub const EQE_SIZE: u32 = 64;

/// Event kind: a file map is revoked; the guest must stop using its frames
/// and unmap them (issue 5 defines the acknowledgement).
pub const EVENT_REVOKE: u16 = 1;
/// Event kind: a notice (`notice` says which).
pub const EVENT_NOTICE: u16 = 2;

/// Notice: the host is restarting; the generation will change.
pub const NOTICE_HOST_RESTARTING: u32 = 1;
/// Notice: events were lost (see [`HOST_FLAG_EVENTS_LOST`]), or this VM was
/// cut off; revoke everything.
pub const NOTICE_EVENTS_LOST: u32 = 2;
/// Notice: the pool is under pressure; the guest should release what it can.
pub const NOTICE_POOL_PRESSURE: u32 = 3;

/// One event.
///
/// Writer: host (producer).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventEntry {
    /// `EVENT_*`.
    pub kind: u16,
    /// Zero; reserved.
    pub flags: u16,
    /// For [`EVENT_NOTICE`]: a `NOTICE_*` code; else zero.
    pub notice: u32,
    /// For [`EVENT_REVOKE`]: the revoked file map.
    pub file_map_id: u64,
    /// For [`EVENT_REVOKE`]: where its frame table was in the pool.
    pub table_offset: u64,
    /// For [`EVENT_REVOKE`]: the revoked generation of that file map.
    pub map_generation: u64,
    /// Zero; reserved (issue 5: revocation sequence numbers, acks).
    pub reserved: [u64; 4],
}

/// Byte offsets of [`EventEntry`] fields.
pub mod eqe_off {
    /// `kind`.
    pub const KIND: usize = 0;
    /// `flags`.
    pub const FLAGS: usize = 2;
    /// `notice`.
    pub const NOTICE: usize = 4;
    /// `file_map_id`.
    pub const FILE_MAP_ID: usize = 8;
    /// `table_offset`.
    pub const TABLE_OFFSET: usize = 16;
    /// `map_generation`.
    pub const MAP_GENERATION: usize = 24;
    /// `reserved`.
    pub const RESERVED: usize = 32;
}

const _: () = {
    assert!(size_of::<EventEntry>() == EQE_SIZE as usize);
    assert!(offset_of!(EventEntry, kind) == eqe_off::KIND);
    assert!(offset_of!(EventEntry, flags) == eqe_off::FLAGS);
    assert!(offset_of!(EventEntry, notice) == eqe_off::NOTICE);
    assert!(offset_of!(EventEntry, file_map_id) == eqe_off::FILE_MAP_ID);
    assert!(offset_of!(EventEntry, table_offset) == eqe_off::TABLE_OFFSET);
    assert!(offset_of!(EventEntry, map_generation) == eqe_off::MAP_GENERATION);
    assert!(offset_of!(EventEntry, reserved) == eqe_off::RESERVED);
};

impl EventEntry {
    /// Decodes an event entry.
    pub fn from_le_bytes(b: &[u8; EQE_SIZE as usize]) -> EventEntry {
        EventEntry {
            kind: get_u16(b, eqe_off::KIND),
            flags: get_u16(b, eqe_off::FLAGS),
            notice: get_u32(b, eqe_off::NOTICE),
            file_map_id: get_u64(b, eqe_off::FILE_MAP_ID),
            table_offset: get_u64(b, eqe_off::TABLE_OFFSET),
            map_generation: get_u64(b, eqe_off::MAP_GENERATION),
            reserved: [
                get_u64(b, eqe_off::RESERVED),
                get_u64(b, eqe_off::RESERVED + 8),
                get_u64(b, eqe_off::RESERVED + 16),
                get_u64(b, eqe_off::RESERVED + 24),
            ],
        }
    }

    /// Encodes an event entry.
    pub fn to_le_bytes(&self) -> [u8; EQE_SIZE as usize] {
        let mut b = [0u8; EQE_SIZE as usize];
        put(&mut b, eqe_off::KIND, &self.kind.to_le_bytes());
        put(&mut b, eqe_off::FLAGS, &self.flags.to_le_bytes());
        put(&mut b, eqe_off::NOTICE, &self.notice.to_le_bytes());
        put(
            &mut b,
            eqe_off::FILE_MAP_ID,
            &self.file_map_id.to_le_bytes(),
        );
        put(
            &mut b,
            eqe_off::TABLE_OFFSET,
            &self.table_offset.to_le_bytes(),
        );
        put(
            &mut b,
            eqe_off::MAP_GENERATION,
            &self.map_generation.to_le_bytes(),
        );
        for (i, r) in self.reserved.iter().enumerate() {
            put(&mut b, eqe_off::RESERVED + 8 * i, &r.to_le_bytes());
        }
        b
    }
}
