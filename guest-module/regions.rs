// SPDX-License-Identifier: GPL-2.0
//! The table of shared regions this guest has found, and their validation:
//! which [`Mapping`] is the ring, which the pool, and which devices were
//! refused. Above the mappings; knows nothing of the ring client.

use core::fmt::Write;

use kernel::prelude::*;

use crate::abi::{PrefixError, RegionKind, RegionPrefix};
use crate::mapping::Mapping;
use crate::text::LineBuf;

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

    pub(crate) fn as_str(&self) -> &str {
        core::str::from_utf8(&self.bytes[..self.len]).unwrap_or("?")
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
}

impl Regions {
    pub(crate) const fn new() -> Self {
        Regions {
            ring: None,
            pool: None,
            refused_total: 0,
            refusals: [None; REFUSALS_KEPT],
        }
    }

    /// The ring mapping and the pool mapping, if mapped.
    pub(crate) fn maps(&self) -> (Option<&Mapping>, Option<&Mapping>) {
        (
            self.ring.as_ref().map(|r| &r.map),
            self.pool.as_ref().map(|r| &r.map),
        )
    }

    fn refuse(&mut self, dev: DevName, reason: PrefixError) -> Error {
        self.refused_total += 1;
        let idx = ((self.refused_total - 1) % REFUSALS_KEPT as u64) as usize;
        if let Some(slot) = self.refusals.get_mut(idx) {
            *slot = Some(Refusal { dev, reason });
        }
        let mut line = LineBuf::new();
        let _ = write_reason(&mut line, reason);
        pr_err!(
            "{}: refusing ivshmem device: {}\n",
            dev.as_str(),
            line.as_str()
        );
        match reason {
            PrefixError::TooSmall
            | PrefixError::BadRegionSize(_)
            | PrefixError::BadHeaderSize(_) => EINVAL,
            _ => ENODEV,
        }
    }

    /// Validates the prefix of a freshly mapped device and takes it as the ring
    /// or the pool region. On refusal the caller unmaps the device.
    pub(crate) fn attach(&mut self, map: Mapping, dev: DevName) -> Result<Slot> {
        let Some(prefix) = map.read_prefix() else {
            return Err(self.refuse(dev, PrefixError::TooSmall));
        };
        let kind = match prefix.validate(map.len() as u64) {
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
            map.len(),
            prefix.generation
        );
        *place = Some(Region { map, dev, prefix });
        Ok(slot)
    }

    /// Forgets the region in `slot`; afterwards the glue unmaps it. Returns
    /// the device of the region that was there, if any: then the caller must
    /// first drop whatever points into it (the ring client's held maps).
    pub(crate) fn detach(&mut self, slot: Slot) -> Option<DevName> {
        let place = match slot {
            Slot::Ring => &mut self.ring,
            Slot::Pool => &mut self.pool,
        };
        place.take().map(|region| region.dev)
    }

    /// Formats one sysfs attribute. `dir` is the sysfs directory (`vmdedup`,
    /// `ring` or `pool`) and `attr` the file name.
    pub(crate) fn show(&self, dir: &[u8], attr: &[u8], out: &mut impl Write) -> Result {
        let region = match dir {
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
            (b"bar_size", Some(r)) => writeln!(out, "{}", r.map.len()),
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
        PrefixError::UnknownVersion(k, v) => {
            write!(out, "{} region with unknown version {}", kind_name(k), v)
        }
        PrefixError::BadHeaderSize(s) => write!(out, "bad header size {}", s),
        PrefixError::BadRegionSize(s) => write!(out, "region size {} does not fit the BAR", s),
    }
}
