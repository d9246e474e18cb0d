// SPDX-License-Identifier: GPL-2.0
//! Layout of the pool region: the frames every VM maps read-only, and the
//! per-file frame tables that answers point into.
//!
//! Like [`abi`](super::abi), this file is compiled twice: by cargo into
//! `vmdedup-protocol`, and by Kbuild into the guest module as a sibling of `abi`
//! (`#[path = "../protocol/src/pool.rs"] mod pool;`). It uses `core` only, no
//! floats, and no decode path in it can panic: every function that looks at
//! bytes a region holds takes a private copy (an array or slice the caller has
//! already copied out of the shared mapping) and returns a `Result`.
//!
//! # Layout (all fields little-endian)
//! ```text
//! 0                  PoolHeader (128 bytes; RegionPrefix first), rest of page 0 zero
//! table_area_offset  frame tables, each TABLE_ALIGN-aligned:
//!                      TableHeader (64 bytes) + page_count x u32 frame numbers
//! frame_area_offset  frame_count frames of FRAME_SIZE bytes (frame n at
//!                      frame_area_offset + n * FRAME_SIZE)
//! region_size        end
//! ```
//! The pool's generation is [`RegionPrefix::generation`]: a new agent never
//! rewrites a pool file that VMs may still map; it creates a new file with a new
//! generation, and tables carry that generation so a stale answer is refused.
//!
//! # Protocol for one table
//! Writer of every byte in the pool: the host agent. Guests only read.
//! 1. The host writes the frames, the frame numbers and the table header with
//!    `magic == 0`, then stores [`TABLE_MAGIC`] into `magic` with release
//!    ordering, and only then publishes an answer that names the table.
//! 2. The guest copies the header out, checks it against the answer
//!    ([`PoolGeometry::check_table_header`]), copies the frame numbers out and
//!    checks every one of them and the checksum ([`TableVerifier`]). Anything
//!    wrong means: fall back to the lower file.
//! 3. To revoke, the host stores 0 into `magic` first, then sends a revocation
//!    event to every VM that holds the table, and reuses neither the table nor
//!    its frames until each of those VMs acknowledged (or was cut off).

use crate::abi::{PrefixError, RegionKind, RegionPrefix, POOL_MAGIC, POOL_VERSION};
use crate::wire::{wire_struct, Wire};

/// Size in bytes of one frame (one guest page).
pub const FRAME_SIZE: u64 = 4096;
/// `log2(FRAME_SIZE)`.
pub const FRAME_SHIFT: u32 = 12;
/// Size in bytes of one frame number in a table.
pub const FRAME_ENTRY_SIZE: u64 = 4;
/// The header area: the first page of the region holds only the [`PoolHeader`].
pub const HEADER_AREA_SIZE: u64 = FRAME_SIZE;
/// Alignment in bytes of every frame table inside the table area.
pub const TABLE_ALIGN: u64 = 64;
/// Magic of a live frame table: the ASCII bytes `VMDDFTAB`. Zero means revoked
/// or being written.
pub const TABLE_MAGIC: u64 = u64::from_le_bytes(*b"VMDDFTAB");
/// Largest file, in pages, that one table may describe (64 GiB).
pub const MAX_TABLE_PAGES: u32 = 1 << 24;

wire_struct! {
    /// The pool header, at offset 0 of the pool region.
    ///
    /// Writer: the host, when it creates the pool (all fields), and later only
    /// `revocation_epoch` and `frames_used`. Guests read it once at probe time
    /// (plus, optionally, the two counters).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct PoolHeader: POOL_HEADER_SIZE, offsets header_off {
        /// Magic [`POOL_MAGIC`], version [`POOL_VERSION`], `header_size` =
        /// [`POOL_HEADER_SIZE`], the region size and the pool generation.
        pub prefix: RegionPrefix = PREFIX @ 0,
        /// Size of one frame: always [`FRAME_SIZE`].
        pub frame_size: u32 = FRAME_SIZE @ 32,
        /// Size of one frame number in a table: always [`FRAME_ENTRY_SIZE`].
        pub entry_size: u32 = ENTRY_SIZE @ 36,
        /// Number of frames in the frame area.
        pub frame_count: u64 = FRAME_COUNT @ 40,
        /// Byte offset of frame 0 (a multiple of [`FRAME_SIZE`]).
        pub frame_area_offset: u64 = FRAME_AREA_OFFSET @ 48,
        /// Byte offset of the table area (a multiple of [`TABLE_ALIGN`]).
        pub table_area_offset: u64 = TABLE_AREA_OFFSET @ 56,
        /// Size in bytes of the table area.
        pub table_area_size: u64 = TABLE_AREA_SIZE @ 64,
        /// Host: incremented every time a table is revoked (atomic store).
        /// Informational only.
        pub revocation_epoch: u64 = REVOCATION_EPOCH @ 72,
        /// Host: frames currently holding data (atomic store). Informational only.
        pub frames_used: u64 = FRAMES_USED @ 80,
        /// Zero.
        pub reserved: [u64; 5] = RESERVED @ 88,
    }
}

/// Size in bytes of [`PoolHeader`].
pub const POOL_HEADER_SIZE: usize = 128;

const _: () = assert!(POOL_HEADER_SIZE as u64 <= HEADER_AREA_SIZE);

wire_struct! {
    /// The header of one frame table, followed by `page_count` little-endian `u32`
    /// frame numbers (page `i` of the file is in frame `frames[i]`).
    ///
    /// Writer: the host. `magic` is written last (release) when the table is
    /// published and zeroed first when it is revoked; the other fields never
    /// change while `magic` is [`TABLE_MAGIC`]. The guest copies the header out
    /// and checks it ([`PoolGeometry::check_table_header`]) before it trusts
    /// any frame number.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct TableHeader: TABLE_HEADER_SIZE, offsets table_off {
        /// [`TABLE_MAGIC`] while the table is live, 0 otherwise.
        pub magic: u64 = MAGIC @ 0,
        /// Host-chosen id of the file map, never 0, never reused within one pool
        /// generation.
        pub file_map_id: u64 = FILE_MAP_ID @ 8,
        /// Size in bytes of the file; the tail of the last frame is zero.
        pub file_size: u64 = FILE_SIZE @ 16,
        /// Number of frame numbers behind the header: `ceil(file_size / FRAME_SIZE)`.
        pub page_count: u32 = PAGE_COUNT @ 24,
        /// Zero (no flags defined yet).
        pub flags: u32 = FLAGS @ 28,
        /// The pool generation ([`RegionPrefix::generation`]) the table was written in.
        pub pool_generation: u64 = POOL_GENERATION @ 32,
        /// [`TableChecksum`] over the header fields `file_map_id..=pool_generation`
        /// and the frame numbers.
        pub checksum: u64 = CHECKSUM @ 40,
        /// Zero.
        pub reserved: [u64; 2] = RESERVED @ 48,
    }
}

/// Size in bytes of [`TableHeader`].
pub const TABLE_HEADER_SIZE: usize = 64;

const _: () = assert!(is_aligned(TABLE_HEADER_SIZE as u64, TABLE_ALIGN));

/// What an answer tells the guest about a table: where it is and what it
/// must describe. The guest fills this from the answer it received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableRef {
    /// Byte offset of the [`TableHeader`] from the start of the pool region.
    pub offset: u64,
    /// Number of pages the answer announced.
    pub page_count: u32,
    /// The file map id the answer announced.
    pub file_map_id: u64,
    /// The file size the answer announced.
    pub file_size: u64,
    /// The answer's `map_generation`: the pool generation the table was
    /// written in. Must equal the mapped pool's generation and the table's.
    pub map_generation: u64,
}

/// Why a pool header, table or frame reference was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolError {
    /// The prefix is not a valid prefix.
    Prefix(PrefixError),
    /// The prefix is valid but names a ring region.
    NotAPool,
    /// `header_size` is smaller than [`POOL_HEADER_SIZE`].
    BadHeaderSize(u32),
    /// `frame_size` is not [`FRAME_SIZE`].
    BadFrameSize(u32),
    /// `entry_size` is not [`FRAME_ENTRY_SIZE`].
    BadEntrySize(u32),
    /// The table area is misaligned, overlaps the header or the frames, or
    /// lies outside the region.
    BadTableArea,
    /// The frame area is misaligned or lies outside the region.
    BadFrameArea,
    /// A region too small for a header page, a table area and one frame.
    RegionTooSmall,
    /// A frame number at or beyond `frame_count`.
    FrameOutOfRange(u32),
    /// A table offset that is misaligned or outside the table area, or a
    /// table that does not fit in it.
    BadTableOffset(u64),
    /// `page_count` does not match the file size, or is over [`MAX_TABLE_PAGES`].
    BadPageCount(u32),
    /// The table's magic is not [`TABLE_MAGIC`]: revoked or never published.
    TableNotLive,
    /// The table header describes another file map, size, page count or pool
    /// generation than the answer did.
    TableMismatch,
    /// The checksum over the table does not match: torn or corrupt.
    BadChecksum,
    /// Fewer frame bytes than announced were given to the verifier, or a
    /// slice whose length is not a multiple of [`FRAME_ENTRY_SIZE`].
    ShortTable,
}

impl core::fmt::Display for PoolError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            PoolError::Prefix(e) => e.fmt(f),
            PoolError::NotAPool => f.write_str("a ring region, not a pool"),
            PoolError::BadHeaderSize(n) => write!(f, "pool header size {n} is too small"),
            PoolError::BadFrameSize(n) => write!(f, "frame size {n}, not {FRAME_SIZE}"),
            PoolError::BadEntrySize(n) => {
                write!(f, "frame entry size {n}, not {FRAME_ENTRY_SIZE}")
            }
            PoolError::BadTableArea => {
                f.write_str("the table area is misaligned, overlaps or lies outside the pool")
            }
            PoolError::BadFrameArea => {
                f.write_str("the frame area is misaligned or lies outside the pool")
            }
            PoolError::RegionTooSmall => {
                f.write_str("too small for a header page, a table area and one frame")
            }
            PoolError::FrameOutOfRange(n) => write!(f, "frame {n} is beyond the pool"),
            PoolError::BadTableOffset(n) => write!(f, "table offset {n} is outside the table area"),
            PoolError::BadPageCount(n) => write!(f, "page count {n} does not fit the file"),
            PoolError::TableNotLive => f.write_str("the table is revoked or was never published"),
            PoolError::TableMismatch => f.write_str("the table describes another file map"),
            PoolError::BadChecksum => f.write_str("the table's checksum does not match"),
            PoolError::ShortTable => f.write_str("the table is shorter than announced"),
        }
    }
}

impl From<PrefixError> for PoolError {
    fn from(e: PrefixError) -> Self {
        PoolError::Prefix(e)
    }
}

/// Whether `v` is a multiple of `align`, a power of two. (`is_multiple_of`
/// is newer than the kernel's minimum Rust version.)
const fn is_aligned(v: u64, align: u64) -> bool {
    v & (align - 1) == 0
}

const _: () = assert!(
    TABLE_ALIGN.is_power_of_two()
        && FRAME_SIZE.is_power_of_two()
        && FRAME_ENTRY_SIZE.is_power_of_two()
);

/// Number of frames a file of `file_size` bytes needs.
pub const fn pages_for_size(file_size: u64) -> u64 {
    file_size.div_ceil(FRAME_SIZE)
}

/// Bytes one table of `page_count` pages takes in the table area, rounded up
/// to [`TABLE_ALIGN`].
pub const fn table_bytes(page_count: u32) -> u64 {
    let raw = TABLE_HEADER_SIZE as u64 + page_count as u64 * FRAME_ENTRY_SIZE;
    raw.div_ceil(TABLE_ALIGN) * TABLE_ALIGN
}

impl TableHeader {
    /// Whether this header, copied out of the pool, is live and still the
    /// table of file map `file_map_id` written in pool generation
    /// `pool_generation`.
    ///
    /// A guest checks this before and after every copy from a frame and
    /// before every fault inserts one. The magic alone is not enough: the
    /// host may revoke a table and, once every holder acknowledged (or was
    /// cut off), give its slot to another file, whose table is live again
    /// with the same magic. File map ids are never reused within one pool
    /// generation, so the id and the generation tell the two apart.
    pub fn describes(&self, file_map_id: u64, pool_generation: u64) -> bool {
        self.magic == TABLE_MAGIC
            && self.file_map_id == file_map_id
            && self.pool_generation == pool_generation
    }

    /// Starts a [`TableChecksum`] with this header's checksummed fields.
    pub fn checksum_start(&self) -> TableChecksum {
        let mut c = TableChecksum::new();
        c.update_u64(self.file_map_id);
        c.update_u64(self.file_size);
        c.update_u32(self.page_count);
        c.update_u32(self.flags);
        c.update_u64(self.pool_generation);
        c
    }
}

/// The checksum of a frame table: FNV-1a (64 bit) over 32-bit little-endian
/// words. Not cryptographic: the pool is written by the host only, so this
/// detects torn or stale tables, not forgeries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableChecksum(u64);

impl Default for TableChecksum {
    fn default() -> Self {
        Self::new()
    }
}

impl TableChecksum {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    /// An empty checksum.
    pub const fn new() -> Self {
        TableChecksum(Self::OFFSET)
    }

    /// Adds one 32-bit word.
    pub fn update_u32(&mut self, w: u32) {
        self.0 = (self.0 ^ w as u64).wrapping_mul(Self::PRIME);
    }

    /// Adds a 64-bit value as two words, low word first.
    pub fn update_u64(&mut self, v: u64) {
        self.update_u32(v as u32);
        self.update_u32((v >> 32) as u32);
    }

    /// The checksum value.
    pub const fn finish(&self) -> u64 {
        self.0
    }
}

/// The validated geometry of a pool, as both sides use it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolGeometry {
    /// Size in bytes of the region.
    pub region_size: u64,
    /// The pool generation.
    pub generation: u64,
    /// Number of frames.
    pub frame_count: u64,
    /// Byte offset of frame 0.
    pub frame_area_offset: u64,
    /// Byte offset of the table area.
    pub table_area_offset: u64,
    /// Size in bytes of the table area.
    pub table_area_size: u64,
}

impl PoolGeometry {
    /// Lays out a new pool of `region_size` bytes with a table area of at least
    /// `table_area_size` bytes (rounded up to whole frames). Host side.
    pub fn plan(
        region_size: u64,
        table_area_size: u64,
        generation: u64,
    ) -> Result<Self, PoolError> {
        let tables = table_area_size
            .checked_add(FRAME_SIZE - 1)
            .ok_or(PoolError::RegionTooSmall)?
            / FRAME_SIZE
            * FRAME_SIZE;
        if tables == 0 {
            return Err(PoolError::BadTableArea);
        }
        let frame_area_offset = HEADER_AREA_SIZE
            .checked_add(tables)
            .ok_or(PoolError::RegionTooSmall)?;
        if region_size < frame_area_offset.saturating_add(FRAME_SIZE) {
            return Err(PoolError::RegionTooSmall);
        }
        let frame_count = (region_size - frame_area_offset) / FRAME_SIZE;
        // Frame numbers are u32 in tables.
        let frame_count = if frame_count > u32::MAX as u64 {
            u32::MAX as u64
        } else {
            frame_count
        };
        Ok(PoolGeometry {
            region_size,
            generation,
            frame_count,
            frame_area_offset,
            table_area_offset: HEADER_AREA_SIZE,
            table_area_size: tables,
        })
    }

    /// The header that describes this geometry. Host side.
    pub fn header(&self) -> PoolHeader {
        PoolHeader {
            prefix: RegionPrefix {
                magic: POOL_MAGIC,
                version: POOL_VERSION,
                header_size: POOL_HEADER_SIZE as u32,
                region_size: self.region_size,
                generation: self.generation,
            },
            frame_size: FRAME_SIZE as u32,
            entry_size: FRAME_ENTRY_SIZE as u32,
            frame_count: self.frame_count,
            frame_area_offset: self.frame_area_offset,
            table_area_offset: self.table_area_offset,
            table_area_size: self.table_area_size,
            revocation_epoch: 0,
            frames_used: 0,
            reserved: [0; 5],
        }
    }

    /// Validates a header copied out of a device of `device_len` bytes and
    /// returns its geometry. Guest side (the host uses it on its own files too).
    pub fn from_header(h: &PoolHeader, device_len: u64) -> Result<Self, PoolError> {
        match h.prefix.validate(device_len)? {
            RegionKind::Pool => {}
            RegionKind::Ring => return Err(PoolError::NotAPool),
        }
        if (h.prefix.header_size as usize) < POOL_HEADER_SIZE {
            return Err(PoolError::BadHeaderSize(h.prefix.header_size));
        }
        if h.frame_size as u64 != FRAME_SIZE {
            return Err(PoolError::BadFrameSize(h.frame_size));
        }
        if h.entry_size as u64 != FRAME_ENTRY_SIZE {
            return Err(PoolError::BadEntrySize(h.entry_size));
        }
        let region = h.prefix.region_size;
        let table_end = h
            .table_area_offset
            .checked_add(h.table_area_size)
            .ok_or(PoolError::BadTableArea)?;
        if !is_aligned(h.table_area_offset, TABLE_ALIGN)
            || h.table_area_offset < HEADER_AREA_SIZE
            || h.table_area_size == 0
            || table_end > h.frame_area_offset
        {
            return Err(PoolError::BadTableArea);
        }
        let frames_len = h
            .frame_count
            .checked_mul(FRAME_SIZE)
            .ok_or(PoolError::BadFrameArea)?;
        let frame_end = h
            .frame_area_offset
            .checked_add(frames_len)
            .ok_or(PoolError::BadFrameArea)?;
        if !is_aligned(h.frame_area_offset, FRAME_SIZE)
            || h.frame_count == 0
            || h.frame_count > u32::MAX as u64
            || frame_end > region
        {
            return Err(PoolError::BadFrameArea);
        }
        Ok(PoolGeometry {
            region_size: region,
            generation: h.prefix.generation,
            frame_count: h.frame_count,
            frame_area_offset: h.frame_area_offset,
            table_area_offset: h.table_area_offset,
            table_area_size: h.table_area_size,
        })
    }

    /// Decodes and validates header bytes copied out of a device of
    /// `device_len` bytes.
    pub fn from_header_bytes(
        b: &[u8; POOL_HEADER_SIZE],
        device_len: u64,
    ) -> Result<Self, PoolError> {
        Self::from_header(&PoolHeader::from_le_bytes(b), device_len)
    }

    /// Byte offset of frame `frame` in the region, if it exists.
    pub fn frame_offset(&self, frame: u32) -> Result<u64, PoolError> {
        if frame as u64 >= self.frame_count {
            return Err(PoolError::FrameOutOfRange(frame));
        }
        Ok(self.frame_area_offset + frame as u64 * FRAME_SIZE)
    }

    /// Checks that the table an answer names lies wholly inside the table area
    /// and announces a sane page count. Returns the byte offset of its first
    /// frame number and the number of bytes of frame numbers.
    pub fn table_span(&self, r: &TableRef) -> Result<(u64, u64), PoolError> {
        if r.page_count > MAX_TABLE_PAGES || r.page_count as u64 != pages_for_size(r.file_size) {
            return Err(PoolError::BadPageCount(r.page_count));
        }
        let area_end = self.table_area_offset + self.table_area_size;
        if !is_aligned(r.offset, TABLE_ALIGN)
            || r.offset < self.table_area_offset
            || r.offset >= area_end
        {
            return Err(PoolError::BadTableOffset(r.offset));
        }
        let end = r
            .offset
            .checked_add(table_bytes(r.page_count))
            .ok_or(PoolError::BadTableOffset(r.offset))?;
        if end > area_end {
            return Err(PoolError::BadTableOffset(r.offset));
        }
        Ok((
            r.offset + TABLE_HEADER_SIZE as u64,
            r.page_count as u64 * FRAME_ENTRY_SIZE,
        ))
    }

    /// Checks a table header copied out of the pool against the answer that
    /// named it. On success, returns a verifier for the frame numbers.
    pub fn check_table_header(
        &self,
        r: &TableRef,
        h: &TableHeader,
    ) -> Result<TableVerifier, PoolError> {
        self.table_span(r)?;
        if h.magic != TABLE_MAGIC {
            return Err(PoolError::TableNotLive);
        }
        if h.file_map_id != r.file_map_id
            || h.file_map_id == 0
            || h.file_size != r.file_size
            || h.page_count != r.page_count
            || h.pool_generation != self.generation
            || r.map_generation != self.generation
        {
            return Err(PoolError::TableMismatch);
        }
        Ok(TableVerifier {
            frame_count: self.frame_count,
            remaining: h.page_count,
            expected: h.checksum,
            sum: h.checksum_start(),
        })
    }
}

/// Checks the frame numbers of one table, in as many pieces as the reader
/// likes (the guest may copy them out of I/O memory a chunk at a time).
#[derive(Clone, Copy, Debug)]
pub struct TableVerifier {
    frame_count: u64,
    remaining: u32,
    expected: u64,
    sum: TableChecksum,
}

impl TableVerifier {
    /// Checks the next frame numbers (`chunk.len()` a multiple of 4, copied
    /// out of the table in order). Every frame number must exist.
    pub fn update(&mut self, chunk: &[u8]) -> Result<(), PoolError> {
        if !is_aligned(chunk.len() as u64, FRAME_ENTRY_SIZE) {
            return Err(PoolError::ShortTable);
        }
        let words = chunk.len() / FRAME_ENTRY_SIZE as usize;
        if words as u64 > self.remaining as u64 {
            return Err(PoolError::ShortTable);
        }
        for w in chunk.chunks_exact(FRAME_ENTRY_SIZE as usize) {
            let frame = u32::get(w, 0);
            if frame as u64 >= self.frame_count {
                return Err(PoolError::FrameOutOfRange(frame));
            }
            self.sum.update_u32(frame);
        }
        self.remaining -= words as u32;
        Ok(())
    }

    /// Checks that every frame number was seen and the checksum matches.
    pub fn finish(self) -> Result<(), PoolError> {
        if self.remaining != 0 {
            return Err(PoolError::ShortTable);
        }
        if self.sum.finish() != self.expected {
            return Err(PoolError::BadChecksum);
        }
        Ok(())
    }
}

/// Checks a whole table at once: its header bytes and all its frame-number
/// bytes, as copied out of the pool.
pub fn verify_table(
    geom: &PoolGeometry,
    r: &TableRef,
    header: &[u8; TABLE_HEADER_SIZE],
    frames: &[u8],
) -> Result<(), PoolError> {
    let mut v = geom.check_table_header(r, &TableHeader::from_le_bytes(header))?;
    v.update(frames)?;
    v.finish()
}

/// Frame number `index` of a table's frame-number bytes, if present.
pub fn frame_at(frames: &[u8], index: u32) -> Option<u32> {
    let start = (index as usize).checked_mul(FRAME_ENTRY_SIZE as usize)?;
    let s = frames.get(start..start.checked_add(FRAME_ENTRY_SIZE as usize)?)?;
    Some(u32::get(s, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geom() -> PoolGeometry {
        PoolGeometry::plan(1 << 20, 16 << 10, 42).unwrap()
    }

    fn table(
        g: &PoolGeometry,
        frames: &[u32],
        size: u64,
    ) -> (TableRef, [u8; TABLE_HEADER_SIZE], [u8; 64]) {
        let mut h = TableHeader {
            magic: TABLE_MAGIC,
            file_map_id: 7,
            file_size: size,
            page_count: frames.len() as u32,
            flags: 0,
            pool_generation: g.generation,
            checksum: 0,
            reserved: [0; 2],
        };
        let mut c = h.checksum_start();
        let mut fb = [0u8; 64];
        for (i, f) in frames.iter().enumerate() {
            c.update_u32(*f);
            fb[i * 4..i * 4 + 4].copy_from_slice(&f.to_le_bytes());
        }
        h.checksum = c.finish();
        let r = TableRef {
            offset: g.table_area_offset,
            page_count: h.page_count,
            file_map_id: 7,
            file_size: size,
            map_generation: g.generation,
        };
        (r, h.to_le_bytes(), fb)
    }

    #[test]
    fn plan_round_trips_through_header() {
        let g = geom();
        assert_eq!(g.table_area_offset, 4096);
        assert_eq!(g.frame_area_offset, 4096 + 16384);
        assert_eq!(g.frame_count, ((1 << 20) - 4096 - 16384) / 4096);
        let b = g.header().to_le_bytes();
        assert_eq!(&b[..8], b"VMDDPOOL");
        assert_eq!(PoolGeometry::from_header_bytes(&b, 1 << 20), Ok(g));
        assert!(PoolGeometry::from_header_bytes(&b, 1 << 19).is_err());
    }

    #[test]
    fn bad_headers_are_refused() {
        let g = geom();
        let mut h = g.header();
        h.frame_count += 1;
        assert_eq!(
            PoolGeometry::from_header(&h, 1 << 20),
            Err(PoolError::BadFrameArea)
        );
        let mut h = g.header();
        h.table_area_size += 4096;
        assert_eq!(
            PoolGeometry::from_header(&h, 1 << 20),
            Err(PoolError::BadTableArea)
        );
        let mut h = g.header();
        h.table_area_offset = u64::MAX - 1;
        assert!(PoolGeometry::from_header(&h, 1 << 20).is_err());
        let mut h = g.header();
        h.frame_size = 8192;
        assert_eq!(
            PoolGeometry::from_header(&h, 1 << 20),
            Err(PoolError::BadFrameSize(8192))
        );
        let mut h = g.header();
        h.frame_count = u64::MAX;
        assert_eq!(
            PoolGeometry::from_header(&h, 1 << 20),
            Err(PoolError::BadFrameArea)
        );
    }

    #[test]
    fn tables_verify_and_detect_tampering() {
        let g = geom();
        let (r, hb, fb) = table(&g, &[0, 1, 1, 5], 3 * 4096 + 1);
        assert_eq!(verify_table(&g, &r, &hb, &fb[..16]), Ok(()));
        assert_eq!(frame_at(&fb[..16], 3), Some(5));
        assert_eq!(frame_at(&fb[..16], 4), None);
        // torn: a frame number changed after the checksum
        let mut bad = fb;
        bad[0] = 2;
        assert_eq!(
            verify_table(&g, &r, &hb, &bad[..16]),
            Err(PoolError::BadChecksum)
        );
        // revoked
        let mut revoked = hb;
        revoked[..8].fill(0);
        assert_eq!(
            verify_table(&g, &r, &revoked, &fb[..16]),
            Err(PoolError::TableNotLive)
        );
        // answer and table disagree
        let r2 = TableRef {
            file_map_id: 8,
            ..r
        };
        assert_eq!(
            verify_table(&g, &r2, &hb, &fb[..16]),
            Err(PoolError::TableMismatch)
        );
        // an answer from another pool generation
        let r3 = TableRef {
            map_generation: 41,
            ..r
        };
        assert_eq!(
            verify_table(&g, &r3, &hb, &fb[..16]),
            Err(PoolError::TableMismatch)
        );
        // short
        assert_eq!(
            verify_table(&g, &r, &hb, &fb[..12]),
            Err(PoolError::ShortTable)
        );
        assert_eq!(
            verify_table(&g, &r, &hb, &fb[..15]),
            Err(PoolError::ShortTable)
        );
    }

    #[test]
    fn out_of_range_frames_and_offsets_are_refused() {
        let g = geom();
        let big = g.frame_count as u32;
        let (r, hb, fb) = table(&g, &[0, big], 4097);
        assert_eq!(
            verify_table(&g, &r, &hb, &fb[..8]),
            Err(PoolError::FrameOutOfRange(big))
        );
        assert!(g.frame_offset(big).is_err());
        assert_eq!(g.frame_offset(1), Ok(g.frame_area_offset + 4096));
        let end = g.table_area_offset + g.table_area_size;
        for off in [0, 8, g.table_area_offset + 1, end, end - 64, u64::MAX - 63] {
            let r = TableRef {
                offset: off,
                page_count: 1,
                file_map_id: 1,
                file_size: 1,
                map_generation: 42,
            };
            if off == end - 64 {
                // the header fits but the frame number does not
                assert_eq!(g.table_span(&r), Err(PoolError::BadTableOffset(off)));
            } else {
                assert!(g.table_span(&r).is_err(), "{off}");
            }
        }
        let r = TableRef {
            offset: g.table_area_offset,
            page_count: 2,
            file_map_id: 1,
            file_size: 4096,
            map_generation: 42,
        };
        assert_eq!(g.table_span(&r), Err(PoolError::BadPageCount(2)));
        let r = TableRef {
            offset: g.table_area_offset,
            page_count: 0,
            file_map_id: 1,
            file_size: 0,
            map_generation: 42,
        };
        assert!(g.table_span(&r).is_ok());
    }

    #[test]
    fn sizes_round_as_documented() {
        assert_eq!(pages_for_size(0), 0);
        assert_eq!(pages_for_size(1), 1);
        assert_eq!(pages_for_size(4096), 1);
        assert_eq!(pages_for_size(4097), 2);
        assert_eq!(table_bytes(0), 64);
        assert_eq!(table_bytes(1), 128);
        assert_eq!(table_bytes(16), 128);
        assert_eq!(table_bytes(17), 192);
    }
}
