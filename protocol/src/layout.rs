// SPDX-License-Identifier: GPL-2.0
//! Where a ring region puts its rings and path slots: the host computes a
//! [`RingLayout`] when it creates the region, the guest validates the one it
//! finds in the header before it trusts any offset.
//!
//! Part of the ABI (the types are re-exported from [`abi`](crate::abi)) and,
//! like it, compiled twice: by cargo and by Kbuild into the guest module
//! (`#[path = "../protocol/src/layout.rs"] mod layout;`). `core` only.

use crate::abi::{
    ring_off, RingArea, SlotArea, CACHE_LINE, CQE_SIZE, EQE_SIZE, FEATURES_KNOWN, FEATURE_EVENTS,
    FEATURE_HINTS, FEATURE_NEED_WAKEUP, FEATURE_PATH_SLOTS, MAX_PATH_SLOTS, MAX_RING_ENTRIES,
    OPTIONS_KNOWN, PATH_SLOT_SIZE, RING_HEADER_SIZE, SQE_SIZE,
};
use crate::wire::Wire;

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

impl core::fmt::Display for LayoutError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            LayoutError::BadEntries(n) => write!(
                f,
                "ring capacity {n} is not a power of two from 1 to {MAX_RING_ENTRIES}"
            ),
            LayoutError::BadEntrySize(n) => {
                write!(f, "entry size {n} is not this ABI's")
            }
            LayoutError::BadArea(n) => write!(
                f,
                "an area at offset {n} is misaligned, overlaps another or ends beyond the region"
            ),
            LayoutError::CompletionTooSmall => {
                f.write_str("the completion ring is smaller than the submission ring")
            }
            LayoutError::BadSlotCount(n) => {
                write!(f, "{n} path slots, more than {MAX_PATH_SLOTS}")
            }
            LayoutError::BadFeatures(b) => write!(f, "unknown or inconsistent feature bits {b:#x}"),
            LayoutError::RegionTooSmall => f.write_str("the region is too small for the rings"),
        }
    }
}

/// The configuration part of a ring header: features and where everything is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingLayout {
    /// Feature bits the host offers.
    pub features: u64,
    /// Option bits the host offers (`OPTION_*`; unknown ones are ignored,
    /// not refused).
    pub options: u64,
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
            options: OPTIONS_KNOWN,
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
    pub fn from_le_bytes(b: &[u8; LAYOUT_BYTES]) -> RingLayout {
        let at = |o: usize| o - ring_off::HOST_FEATURES;
        RingLayout {
            features: u64::get(b, at(ring_off::HOST_FEATURES)),
            options: u64::get(b, at(ring_off::HOST_OPTIONS)),
            sq: RingArea::get(b, at(ring_off::SQ_AREA)),
            cq: RingArea::get(b, at(ring_off::CQ_AREA)),
            eq: RingArea::get(b, at(ring_off::EQ_AREA)),
            slots: SlotArea::get(b, at(ring_off::SLOT_AREA)),
        }
    }

    /// Encodes header bytes `[32, 128)`; `guest_features` and the reserved
    /// bytes are written as zero.
    #[allow(clippy::wrong_self_convention)] // by reference, like the wire structs
    pub fn to_le_bytes(&self) -> [u8; LAYOUT_BYTES] {
        let mut b = [0u8; LAYOUT_BYTES];
        let at = |o: usize| o - ring_off::HOST_FEATURES;
        self.features.put(&mut b, at(ring_off::HOST_FEATURES));
        self.options.put(&mut b, at(ring_off::HOST_OPTIONS));
        self.sq.put(&mut b, at(ring_off::SQ_AREA));
        self.cq.put(&mut b, at(ring_off::CQ_AREA));
        self.eq.put(&mut b, at(ring_off::EQ_AREA));
        self.slots.put(&mut b, at(ring_off::SLOT_AREA));
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

/// Size of the configuration bytes [`RingLayout::from_le_bytes`] decodes.
const LAYOUT_BYTES: usize = 96;

const _: () = assert!(ring_off::CONFIG_END - ring_off::HOST_FEATURES == LAYOUT_BYTES);
