// SPDX-License-Identifier: GPL-2.0
//! Per-file state: what the guest knows of one regular file of a vmdedupfs
//! mount (its identity, the host's answer as a validated [`FileMap`], a
//! pending request or a recent miss), kept with the inode behind its own
//! lock. Below the ring client, which installs answers here and drops them
//! on revocation; it uses only the imports and the pool mapping (to check
//! that a kept answer's table is still live).

use core::sync::atomic::{AtomicBool, Ordering};

use kernel::prelude::*;
use kernel::sync::{Arc, Mutex};
use kernel::time::Ktime;

use core::marker::PhantomData;

use crate::abi::{parse_fingerprint_text, Fingerprint};
use crate::ffi::{self, Io, PoolReadSection, VmFault};
use crate::mapping::{Mapping, PoolWindow};
use crate::pool::{table_off, PoolGeometry, TableHeader, FRAME_SIZE, TABLE_HEADER_SIZE};

/// Set when a file state let go of a map outside the client (eviction,
/// verify mismatch, identity change, a dead table found by a read): the
/// next timer tick releases the maps no file holds any more.
pub(crate) static SWEEP_NEEDED: AtomicBool = AtomicBool::new(false);

/// The lower inode's identity, as sent in a hint.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Ident {
    pub(crate) size: u64,
    pub(crate) mtime_ns: i64,
    pub(crate) ctime_ns: i64,
    pub(crate) ino: u64,
    /// The content fingerprint from the lower file's attribute, if it has a
    /// valid one.
    pub(crate) fingerprint: Option<Fingerprint>,
}

/// A validated answer: the frame numbers of one file, copied out of the pool
/// and checked (each below the pool's frame count, checksum right).
pub(crate) struct FileMap {
    pub(crate) file_map_id: u64,
    pub(crate) table_offset: u64,
    /// The pool generation the table was written in (from its header).
    pub(crate) pool_generation: u64,
    pub(crate) file_size: u64,
    pub(crate) frames: KVVec<u32>,
    /// The pool the table was read from, and its geometry: what a read or
    /// a fault needs to reach a frame without the link's lock.
    pub(crate) window: PoolWindow,
    pub(crate) geom: PoolGeometry,
}

impl FileMap {
    fn key(&self) -> TableKey {
        TableKey {
            offset: self.table_offset,
            file_map_id: self.file_map_id,
            pool_generation: self.pool_generation,
        }
    }

    /// The run of consecutive frames serving pages `page..`, at most
    /// `max_pages` (at least one) of them, if the map covers `page`. Called
    /// under the lock of the file that keeps the map, inside the pool read
    /// section `'s`.
    fn run<'s>(&self, page: u64, max_pages: u64) -> Option<Run<'s>> {
        let i = usize::try_from(page).ok()?;
        let first = *self.frames.get(i)?;
        let mut pages = 1u64;
        while pages < max_pages {
            let next = self.frames.get(i + pages as usize).copied();
            if next.is_none() || next != first.checked_add(pages as u32) {
                break;
            }
            pages += 1;
        }
        // Every frame of the run is in the pool: the first and the last are.
        let off = self.geom.frame_offset(first).ok()?;
        self.geom.frame_offset(first + (pages - 1) as u32).ok()?;
        let off = usize::try_from(off).ok()?;
        self.window.range(off, (pages * FRAME_SIZE) as usize)?;
        Some(Run {
            window: self.window,
            off,
            pages,
            key: self.key(),
            _section: PhantomData,
        })
    }
}

/// The bytes of a table header that say whether it is live: magic, file map
/// id and, last, the pool generation.
const LIVE_BYTES: usize = table_off::POOL_GENERATION + 8;
const _: () = assert!(
    table_off::MAGIC < LIVE_BYTES
        && table_off::FILE_MAP_ID < LIVE_BYTES
        && LIVE_BYTES <= TABLE_HEADER_SIZE
);

/// Which pool table a kept answer was copied from: enough to check, around a
/// copy or a fault, that the table is still live and still this file map's.
#[derive(Clone, Copy)]
pub(crate) struct TableKey {
    pub(crate) offset: u64,
    pub(crate) file_map_id: u64,
    pub(crate) pool_generation: u64,
}

impl TableKey {
    /// Copies the table header out of `pool` and checks its magic, file map
    /// id and pool generation ([`TableHeader::describes`]).
    pub(crate) fn live(&self, pool: &Mapping) -> bool {
        self.live_with(|off, b| pool.read_bytes(off, b))
    }

    /// As [`TableKey::live`], reading the header with `read`: only its
    /// words up to the pool generation, all that [`TableHeader::describes`]
    /// looks at (the rest stays zero in the copy).
    fn live_with(&self, read: impl FnOnce(usize, &mut [u8]) -> bool) -> bool {
        let mut b = [0u8; TABLE_HEADER_SIZE];
        usize::try_from(self.offset)
            .is_ok_and(|off| b.get_mut(..LIVE_BYTES).is_some_and(|w| read(off, w)))
            && TableHeader::from_le_bytes(&b).describes(self.file_map_id, self.pool_generation)
    }
}

/// Pages of a file served from consecutive pool frames, looked up under the
/// file's lock inside a pool read section and usable only within it (the
/// lifetime `'s`): a revocation, release or cut-off that drops the map
/// waits for the section to end before it tells the host (see glue.c).
pub(crate) struct Run<'s> {
    window: PoolWindow,
    /// Byte offset in the pool of the first page's frame.
    off: usize,
    /// How many pages (consecutive frames).
    pages: u64,
    key: TableKey,
    _section: PhantomData<&'s PoolReadSection>,
}

impl Run<'_> {
    /// Bytes the run covers.
    pub(crate) fn bytes(&self) -> usize {
        (self.pages * FRAME_SIZE) as usize
    }

    /// The file map the frames belong to.
    pub(crate) fn map_id(&self) -> u64 {
        self.key.file_map_id
    }

    /// The kernel address of `len` bytes at byte `from` of the run.
    fn src(&self, from: usize, len: usize) -> Option<*const u8> {
        if from.checked_add(len)? > self.bytes() {
            return None;
        }
        self.window.range(self.off.checked_add(from)?, len)
    }

    /// Whether the table is still live: its magic, file map id and pool
    /// generation ([`TableKey::live`]).
    pub(crate) fn live(&self) -> bool {
        self.key.live_with(|off, b| {
            // SAFETY: the run was looked up from a kept map inside the
            // section that `'s` borrows, which has not ended (window
            // invariant).
            unsafe { self.window.read_bytes(off, b) }
        })
    }

    /// Copies `len` bytes at byte `from` of the run to the read's
    /// destination; `None` if the range is not in the run, else how many
    /// bytes went (fewer if the destination needs a fault).
    pub(crate) fn copy_out(&self, io: &mut Io, from: usize, len: usize) -> Option<usize> {
        let src = self.src(from, len)?;
        // SAFETY: `src` is `len` bytes inside the window (checked by `src`),
        // mapped while the section `'s` lasts (as in `live`).
        Some(unsafe { io.copy_pool(src, len) })
    }

    /// Whether the `buf.len()` bytes at byte `from` of the run equal `buf`.
    pub(crate) fn equals(&self, from: usize, buf: &[u8]) -> bool {
        let Some(src) = self.src(from, buf.len()) else {
            return false;
        };
        // SAFETY: as in `copy_out`.
        unsafe { ffi::pool_equal(src, buf) }
    }
}

/// What [`InodeState::fast_run`] found for a read.
pub(crate) enum Fast<'s> {
    /// The run of pool frames serving the read's first byte, the byte of
    /// the run that is, how many bytes of the read the run serves (at most
    /// those asked, none past the end of the file; fewer where the frames
    /// stop being consecutive), and whether that is all the read can get
    /// (all bytes asked, or all up to the end of the file).
    Run(Run<'s>, usize, usize, bool),
    /// The read starts at or past the end of the file the kept answer
    /// describes: nothing to read. The answer was kept for the lower
    /// file's identity (size included) as of the last open, and every byte
    /// before the end is served from it; the end is its end too.
    End,
}

/// What a miss means for the next open.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum MissKind {
    /// Ask again on a later open (the host is loading it, restarting, ...),
    /// at most once per `rehint_ms`.
    Retry,
    /// The host will not serve this file (not found, identity, too large...).
    Final,
}

/// Per-file state behind the lock.
struct FileState {
    ident: Option<Ident>,
    map: Option<FileMap>,
    /// The kept answer whose install check (the verify sample, the lower
    /// page cache dropped) is done: no read or fault uses another map's
    /// frames before its check.
    checked_map: Option<u64>,
    pending: bool,
    miss: Option<(MissKind, Ktime)>,
    lower_only: bool,
    /// The inode's `address_space`, to zap pool PTEs on revocation; NULL once
    /// the inode is evicted.
    mapping: *mut core::ffi::c_void,
}

/// The state of one regular file, kept with its inode (`struct vmdedup_inode`
/// in fs.c holds a reference).
#[pin_data]
pub(crate) struct InodeState {
    #[pin]
    inner: Mutex<FileState>,
}

// SAFETY: `mapping` is only dereferenced (by C, in `unmap`) under the lock
// while the inode is alive (it is cleared before the inode goes away).
unsafe impl Send for FileState {}

impl InodeState {
    pub(crate) fn new(mapping: *mut core::ffi::c_void) -> Result<Arc<InodeState>> {
        let st = FileState {
            ident: None,
            map: None,
            checked_map: None,
            pending: false,
            miss: None,
            lower_only: false,
            mapping,
        };
        Arc::pin_init(
            pin_init!(InodeState { inner <- kernel::new_mutex!(st, "vmdedup::file") }),
            GFP_KERNEL,
        )
    }

    /// Records the identity and says whether to send a hint (and marks the
    /// request pending if so).
    pub(crate) fn want_hint(&self, ident: Ident) -> bool {
        let mut s = self.inner.lock();
        if s.ident.is_some_and(|i| i != ident) {
            if s.map.take().is_some() {
                zap(&s);
                SWEEP_NEEDED.store(true, Ordering::Release);
            }
            s.miss = None;
        }
        s.ident = Some(ident);
        if !hint_due(&s) {
            return false;
        }
        s.pending = true;
        true
    }

    /// An open's fast path: whether the file needs nothing from this open,
    /// so that it may skip what a hint needs (the path, the fingerprint
    /// attribute). True when the recorded identity has `ident`'s size,
    /// times and inode number and [`InodeState::want_hint`] would send no
    /// hint: an answer kept, a request pending, a final miss, a recent one,
    /// the file on lower for good. The fingerprint is not compared: it is
    /// an attribute of the lower file, and setting one moves the file's
    /// ctime (every Linux filesystem's setxattr does), which is compared.
    pub(crate) fn open_settled(&self, ident: &Ident) -> bool {
        let s = self.inner.lock();
        let same = s.ident.is_some_and(|i| {
            i.size == ident.size
                && i.mtime_ns == ident.mtime_ns
                && i.ctime_ns == ident.ctime_ns
                && i.ino == ident.ino
        });
        same && !hint_due(&s)
    }

    pub(crate) fn is_pending(&self) -> bool {
        self.inner.lock().pending
    }

    pub(crate) fn clear_pending(&self) {
        self.inner.lock().pending = false;
    }

    pub(crate) fn size(&self) -> u64 {
        let s = self.inner.lock();
        s.map
            .as_ref()
            .map_or_else(|| s.ident.map_or(0, |i| i.size), |m| m.file_size)
    }

    pub(crate) fn ino(&self) -> u64 {
        self.inner.lock().ident.map_or(0, |i| i.ino)
    }

    /// The id of the kept answer if it covers page `pgoff` (where a mapping
    /// starts; it may reach past the end of the file).
    pub(crate) fn covering_map(&self, pgoff: u64) -> Option<u64> {
        let s = self.inner.lock();
        s.map
            .as_ref()
            .filter(|m| pgoff < m.frames.len() as u64)
            .map(|m| m.file_map_id)
    }

    /// The kept answer's id, and whether its install check is done.
    pub(crate) fn current_map(&self) -> Option<(u64, bool)> {
        let s = self.inner.lock();
        current(&s)
    }

    /// What a read looks at first, under one lock: whether a request is
    /// pending, the kept answer as [`InodeState::current_map`] says, and
    /// the file's size.
    pub(crate) fn read_state(&self) -> (bool, Option<(u64, bool)>, u64) {
        let s = self.inner.lock();
        let size = s
            .map
            .as_ref()
            .map_or_else(|| s.ident.map_or(0, |i| i.size), |m| m.file_size);
        (s.pending, current(&s), size)
    }

    /// Records that file map `id` passed its install check; false if the
    /// file no longer uses it.
    pub(crate) fn mark_checked(&self, id: u64) -> bool {
        let mut s = self.inner.lock();
        if s.map.as_ref().map(|m| m.file_map_id) != Some(id) {
            return false;
        }
        s.checked_map = Some(id);
        true
    }

    /// Whether the kept answer is file map `id`.
    pub(crate) fn uses_map(&self, id: u64) -> bool {
        self.inner
            .lock()
            .map
            .as_ref()
            .is_some_and(|m| m.file_map_id == id)
    }

    /// The run of pool frames serving pages `page..` of file map `want`,
    /// at most `max_pages` of them, if the file keeps that map and it
    /// covers `page`. Looked up under the file's lock inside `section`, so a
    /// drop of the map either comes first (no run) or waits for the section
    /// to end before the host hears of it.
    pub(crate) fn run<'s>(
        &self,
        _section: &'s PoolReadSection,
        page: u64,
        want: u64,
        max_pages: u64,
    ) -> Option<Run<'s>> {
        let s = self.inner.lock();
        let m = s.map.as_ref().filter(|m| m.file_map_id == want)?;
        m.run(page, max_pages)
    }

    /// A read's fast path, if no request is pending and the kept answer
    /// passed its install check: [`Fast::Run`] when the answer covers byte
    /// `pos`, [`Fast::End`] when `pos` is at or past the end of the file it
    /// describes. Everything the read needs under one lock, taken inside
    /// `section` as in [`InodeState::run`]; `None` when the read must take
    /// the general path.
    pub(crate) fn fast_run<'s>(
        &self,
        _section: &'s PoolReadSection,
        pos: u64,
        count: usize,
    ) -> Option<Fast<'s>> {
        let s = self.inner.lock();
        if s.pending {
            return None;
        }
        let m = s.map.as_ref()?;
        if s.checked_map != Some(m.file_map_id) {
            return None;
        }
        if pos >= m.file_size {
            return Some(Fast::End);
        }
        let want = count.min(usize::try_from(m.file_size - pos).unwrap_or(usize::MAX));
        let in_page = (pos % FRAME_SIZE) as usize;
        let max_pages = (in_page.checked_add(want)?).div_ceil(FRAME_SIZE as usize) as u64;
        let run = m.run(pos / FRAME_SIZE, max_pages)?;
        let len = want.min(run.bytes() - in_page);
        Some(Fast::Run(run, in_page, len, len == want))
    }

    /// Maps the pool frame of page `pgoff` of file map `id` with `insert`
    /// (given the page and the frame's PFN) under the file's lock, if the
    /// file keeps that map, it covers the page and its table is live; then,
    /// if that succeeded with `ok`, the frames of the other pages of
    /// `around` the map covers (fault-around). Returns `insert`'s result for
    /// `pgoff` and how many neighbours it mapped with `ok`; `None` for
    /// lower. A revocation drops the map and zaps the file's PTEs under this
    /// same lock, so whatever `insert` maps is either zapped by it or never
    /// made.
    pub(crate) fn insert_frames(
        &self,
        id: u64,
        pgoff: u64,
        around: core::ops::Range<u64>,
        ok: VmFault,
        mut insert: impl FnMut(u64, u64) -> VmFault,
    ) -> Option<(VmFault, u64)> {
        let s = self.inner.lock();
        let m = s.map.as_ref().filter(|m| m.file_map_id == id)?;
        let pfn = |page: u64| -> Option<u64> {
            let frame = *m.frames.get(usize::try_from(page).ok()?)?;
            let off = m.geom.frame_offset(frame).ok()?;
            m.window
                .range(usize::try_from(off).ok()?, FRAME_SIZE as usize)?;
            Some((m.window.phys() + off) >> kernel::page::PAGE_SHIFT)
        };
        let first = pfn(pgoff)?;
        let live = m.key().live_with(|o, b| {
            // SAFETY: under the lock of the file that keeps the map (window
            // invariant).
            unsafe { m.window.read_bytes(o, b) }
        });
        if !live {
            // Being revoked (or its slot already reused): the event that
            // follows drops the map.
            return None;
        }
        let ret = insert(pgoff, first);
        let mut mapped = 0;
        if ret == ok {
            for page in around.filter(|&p| p != pgoff) {
                if let Some(f) = pfn(page) {
                    if insert(page, f) == ok {
                        mapped += 1;
                    }
                }
            }
        }
        drop(s);
        Some((ret, mapped))
    }

    /// A notice said the host loaded this file, which was answered
    /// "loading" for `ident`: whether to hint again now (and marks the
    /// request pending if so), without the `rehint_ms` wait of an open.
    /// No if the identity changed, the file is on lower for good, has an
    /// answer or a request, or its inode is going.
    pub(crate) fn want_refetch(&self, ident: &Ident) -> bool {
        let mut s = self.inner.lock();
        let wanted = s.ident.as_ref() == Some(ident)
            && !s.lower_only
            && s.map.is_none()
            && !s.pending
            && !s.mapping.is_null()
            && !matches!(s.miss, Some((MissKind::Final, _)));
        if wanted {
            s.pending = true;
        }
        wanted
    }

    /// Drops the lower file's clean, unmapped cached pages if the file has
    /// an answer now (what was read from lower while the host loaded it).
    /// Returns how many went.
    pub(crate) fn drop_lower_cache(&self) -> u64 {
        let s = self.inner.lock();
        if s.map.is_none() || s.mapping.is_null() {
            return 0;
        }
        // SAFETY: non-NULL `mapping` is the live vmdedup inode's
        // address_space (cleared under this lock before the inode is
        // evicted).
        unsafe { ffi::drop_lower_cache(s.mapping) }
    }

    /// Keeps a validated answer. Returns false if the file no longer wants one.
    pub(crate) fn install(&self, map: FileMap) -> bool {
        let mut s = self.inner.lock();
        s.pending = false;
        if s.lower_only || s.mapping.is_null() || s.ident.map_or(true, |i| i.size != map.file_size)
        {
            return false;
        }
        s.miss = None;
        s.map = Some(map);
        true
    }

    pub(crate) fn set_miss(&self, kind: MissKind) {
        let mut s = self.inner.lock();
        s.pending = false;
        s.miss = Some((kind, Ktime::ktime_get()));
    }

    /// Drops the kept answer if it is file map `id`, zapping every pool PTE
    /// first. Returns whether something was dropped.
    pub(crate) fn drop_map(&self, id: u64) -> bool {
        let mut s = self.inner.lock();
        if s.map.as_ref().map(|m| m.file_map_id) != Some(id) {
            return false;
        }
        s.map = None;
        // Allow a new hint later (the host may have the file again).
        s.miss = Some((MissKind::Retry, Ktime::ktime_get()));
        zap(&s);
        // If the client still lists it as held (a read found the table
        // dead), the timer releases it.
        SWEEP_NEEDED.store(true, Ordering::Release);
        true
    }

    pub(crate) fn lower_for_good(&self) {
        let mut s = self.inner.lock();
        s.lower_only = true;
        if s.map.take().is_some() {
            zap(&s);
            SWEEP_NEEDED.store(true, Ordering::Release);
        }
    }

    /// The inode is being evicted: never touch its mapping again. Runs from
    /// memory reclaim too, so it takes no lock but this file's; the map it
    /// held is released by the timer ([`SWEEP_NEEDED`]).
    pub(crate) fn evicted(&self) {
        let mut s = self.inner.lock();
        s.mapping = core::ptr::null_mut();
        if s.map.take().is_some() {
            SWEEP_NEEDED.store(true, Ordering::Release);
        }
    }
}

/// Whether an open should send a hint for the file, given its state `s`
/// (its identity already recorded).
fn hint_due(s: &FileState) -> bool {
    if s.lower_only || s.map.is_some() || s.pending {
        return false;
    }
    match s.miss {
        Some((MissKind::Final, _)) => false,
        Some((MissKind::Retry, at)) => {
            let wait = i64::from(ffi::param(ffi::Param::RehintMs));
            kernel::time::ktime_ms_delta(Ktime::ktime_get(), at) >= wait
        }
        None => true,
    }
}

/// The kept answer's id and whether its install check is done.
fn current(s: &FileState) -> Option<(u64, bool)> {
    let id = s.map.as_ref()?.file_map_id;
    Some((id, s.checked_map == Some(id)))
}

/// Zaps every PTE mapping the file (pool frames and lower pages alike), if
/// the inode is still there. Called with the file's lock held (`s`).
fn zap(s: &FileState) {
    if !s.mapping.is_null() {
        // SAFETY: non-NULL `mapping` is the live inode's address_space
        // (cleared under this lock before the inode is evicted).
        unsafe { ffi::unmap_all(s.mapping) };
    }
}

impl From<ffi::IdentC> for Ident {
    fn from(id: ffi::IdentC) -> Ident {
        Ident {
            size: id.size,
            mtime_ns: id.mtime_ns,
            ctime_ns: id.ctime_ns,
            ino: id.ino,
            fingerprint: if id.fp_len as usize == id.fp_text.len() {
                parse_fingerprint_text(&id.fp_text)
            } else {
                None
            },
        }
    }
}
