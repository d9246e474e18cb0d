// SPDX-License-Identifier: GPL-2.0
//! vmdedupfs decisions: mount options, per-file state (the host's answer kept
//! with the inode), and where each read and fault is served from.
//!
//! The VFS plumbing is in `fs.c`; it calls the entry points in [`crate::ffi`],
//! which land here.

use core::fmt::Write;
use core::sync::atomic::{AtomicBool, Ordering};

use kernel::prelude::*;
use kernel::sync::{Arc, Mutex};
use kernel::time::Ktime;

use crate::client::SWEEP_NEEDED;
use crate::ffi::{self, Io, MapKind};
use crate::pool::{FRAME_SIZE, TABLE_MAGIC};
use crate::stats::{self, Counter};
use crate::Shared;

/// How much of what the pool serves is compared with the lower file.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verify {
    /// Nothing.
    Off,
    /// The first page served and one page in [`SAMPLE_EVERY`] after it.
    Sample,
    /// Every page.
    Full,
}

/// With `verify=sample`, one page in this many is compared.
const SAMPLE_EVERY: u64 = 16;
/// Longest mount option string we look at.
const MAX_NAME: usize = 64;

impl Verify {
    fn name(self) -> &'static str {
        match self {
            Verify::Off => "off",
            Verify::Sample => "sample",
            Verify::Full => "full",
        }
    }
}

/// One mount.
pub(crate) struct Mount {
    pub(crate) shared: &'static Shared,
    ns_name: KVec<u8>,
    ns_id: Option<u32>,
    lower: KVec<u8>,
    verify: Verify,
}

impl Mount {
    /// Parses `ns=NAME,nsid=N,lower=PATH[,verify=off|sample|full]`.
    pub(crate) fn parse(shared: &'static Shared, data: &[u8]) -> Result<Mount> {
        let mut m = Mount { shared, ns_name: KVec::new(), ns_id: None, lower: KVec::new(), verify: Verify::Full };
        let mut verify_given = false;
        for opt in data.split(|&c| c == b',').filter(|o| !o.is_empty()) {
            let (key, val) = match opt.iter().position(|&c| c == b'=') {
                Some(i) => (&opt[..i], &opt[i + 1..]),
                None => (opt, &b""[..]),
            };
            match key {
                b"ns" if !val.is_empty() && val.len() <= MAX_NAME => {
                    m.ns_name = KVec::new();
                    m.ns_name.extend_from_slice(val, GFP_KERNEL)?;
                }
                b"nsid" => m.ns_id = Some(parse_u32(val).ok_or(EINVAL)?),
                b"lower" if !val.is_empty() => {
                    m.lower = KVec::new();
                    m.lower.extend_from_slice(val, GFP_KERNEL)?;
                }
                b"verify" => {
                    verify_given = true;
                    m.verify = match val {
                        b"off" => Verify::Off,
                        b"sample" => Verify::Sample,
                        b"full" => Verify::Full,
                        _ => return Err(EINVAL),
                    }
                }
                // The VFS passes these through to us with the legacy API.
                b"ro" | b"rw" => {}
                _ => {
                    pr_err!("vmdedupfs: unknown or bad mount option '{}'\n", Bytes(opt));
                    return Err(EINVAL);
                }
            }
        }
        if m.ns_name.is_empty() || m.lower.is_empty() {
            pr_err!("vmdedupfs: mount needs ns=NAME and lower=PATH\n");
            return Err(EINVAL);
        }
        if !verify_given {
            m.verify = Verify::from_param(ffi::param(ffi::Param::DefaultVerify));
        }
        if m.ns_id.is_none() {
            pr_info!("vmdedupfs: ns={} without nsid=: no hints, every file from lower\n", Bytes(&m.ns_name));
        }
        Ok(m)
    }

    /// The lower directory to resolve.
    pub(crate) fn lower(&self) -> &[u8] {
        &self.lower
    }

    /// The text `/proc/mounts` shows after the `ro`.
    pub(crate) fn show(&self, out: &mut impl Write) -> core::fmt::Result {
        write!(out, "ns={}", Bytes(&self.ns_name))?;
        if let Some(id) = self.ns_id {
            write!(out, ",nsid={}", id)?;
        }
        write!(out, ",lower={},verify={}", Bytes(&self.lower), self.verify.name())
    }

    /// A regular file was opened: hint the host unless its answer is already
    /// kept (or known to be a miss), then poll briefly for the answer.
    pub(crate) fn open(&self, file: &Arc<InodeState>, ident: Ident, path: &[u8]) {
        let Some(ns_id) = self.ns_id else { return };
        let path = path.strip_prefix(b"/").unwrap_or(path);
        if !file.want_hint(ident) {
            return;
        }
        let deadline_ns = i64::from(ffi::param(ffi::Param::PollUs)).saturating_mul(1000);
        let mut regions = self.shared.regions.lock();
        let (ring, pool, client) = regions.parts();
        if !client.submit(ring, file, ns_id, &ident, path) {
            file.clear_pending();
            return;
        }
        let start = Ktime::ktime_get();
        loop {
            client.reap(ring, pool, false);
            if !file.is_pending() {
                break;
            }
            if Ktime::ktime_get().to_ns().saturating_sub(start.to_ns()) >= deadline_ns {
                break;
            }
            core::hint::spin_loop();
        }
    }

    /// Serves `count` bytes at `pos`. Pool frames where the kept answer covers
    /// the page, the lower file elsewhere.
    pub(crate) fn read(&self, file: Option<&InodeState>, io: &mut Io, pos: i64, count: usize) -> Result<isize> {
        let Some(file) = file else { return io.read_lower(pos, count) };
        // Take an answer that arrived after the open stopped polling.
        if file.is_pending() {
            let mut regions = self.shared.regions.lock();
            let (ring, pool, client) = regions.parts();
            client.reap(ring, pool, true);
        }
        let size = file.size();
        let Ok(upos) = u64::try_from(pos) else { return Err(EINVAL) };
        if !file.has_map() || upos >= size {
            stats::inc(Counter::pages_lower);
            return io.read_lower(pos, count);
        }
        let count = count.min(usize::try_from(size - upos).unwrap_or(usize::MAX));
        let mut frame_buf = KVec::from_elem(0u8, FRAME_SIZE as usize, GFP_KERNEL)?;
        let mut lower_buf = KVec::new();
        let mut done = 0usize;
        while done < count {
            let p = upos + done as u64;
            let page = p / FRAME_SIZE;
            let in_page = (p % FRAME_SIZE) as usize;
            let page_len = (size - page * FRAME_SIZE).min(FRAME_SIZE) as usize;
            let chunk = (page_len - in_page).min(count - done);
            let served = match self.pool_page(file, page, &mut frame_buf) {
                Some(()) => self.checked(file, io, page, page_len, &mut frame_buf, &mut lower_buf)?,
                None => false,
            };
            let n = if served {
                let src = frame_buf.get(in_page..in_page + chunk).ok_or(EINVAL)?;
                let n = io.copy_out(src);
                stats::inc(Counter::pages_pool);
                stats::add(Counter::bytes_pool, n as u64);
                n
            } else {
                let n = io.read_lower(p as i64, chunk)?;
                stats::inc(Counter::pages_lower);
                n as usize
            };
            done += n;
            if n < chunk {
                break;
            }
        }
        if done == 0 && count > 0 {
            return Err(EFAULT);
        }
        Ok(done as isize)
    }

    /// Copies page `page` of `file` out of its pool frame into `buf`, if the
    /// kept answer covers it and the table is still live around the copy.
    fn pool_page(&self, file: &InodeState, page: u64, buf: &mut [u8]) -> Option<()> {
        let mut regions = self.shared.regions.lock();
        // Looked up under the region lock, which revocations hold.
        let (frame, table_offset, map_id) = file.frame(page)?;
        let (_, pool_map, client) = regions.parts();
        let pool = pool_map?;
        let view = client.pool_view(Some(pool))?;
        let off = usize::try_from(view.geom.frame_offset(frame).ok()?).ok()?;
        let toff = usize::try_from(table_offset).ok()?;
        let live = |pool: &crate::regions::Mapping| pool.read_u64(toff) == Some(TABLE_MAGIC);
        if live(pool) && pool.read_bytes(off, buf) && live(pool) {
            return Some(());
        }
        drop(regions);
        if file.drop_map(map_id) {
            stats::inc(Counter::fallbacks);
        }
        None
    }

    /// Applies the verify mode to a pool page in `frame`. Returns whether the
    /// pool bytes may be served; on a mismatch the file goes to lower for good.
    fn checked(
        &self,
        file: &InodeState,
        io: &mut Io,
        page: u64,
        page_len: usize,
        frame: &mut [u8],
        lower: &mut KVec<u8>,
    ) -> Result<bool> {
        let check = match self.verify {
            Verify::Off => false,
            Verify::Full => true,
            Verify::Sample => page % SAMPLE_EVERY == 0 || !file.sampled.swap(true, Ordering::Relaxed),
        };
        if !check {
            return Ok(true);
        }
        if lower.is_empty() {
            lower.extend_with(FRAME_SIZE as usize, 0, GFP_KERNEL)?;
        }
        let want = lower.get_mut(..page_len).ok_or(EINVAL)?;
        let got = io.read_lower_buf((page * FRAME_SIZE) as i64, want)?;
        stats::inc(Counter::verify_pages);
        if got == page_len && frame.get(..page_len) == lower.get(..page_len) {
            return Ok(true);
        }
        stats::inc(Counter::verify_mismatches);
        pr_err!(
            "vmdedupfs: ns={}: pool page {} of ino {} differs from lower: file falls back to lower for good\n",
            Bytes(&self.ns_name),
            page,
            file.ino()
        );
        file.lower_for_good();
        stats::inc(Counter::fallbacks);
        Ok(false)
    }

    /// Whether a mapping of `npages` at `pgoff` may map pool frames: shared
    /// never-writable mappings and private ones (whose PTEs stay read-only:
    /// a write copies the page first), when the kept answer covers the
    /// mapping's start. A mapping may reach past the end of the file (ld.so
    /// maps a library's whole span); those pages fault to the lower file,
    /// which answers SIGBUS as any file mapping does.
    /// The verify mode is applied here, to every page (or the sample) the
    /// mapping may fault in, so faults never serve unverified frames.
    ///
    /// Returns the id of the file map the mapping was checked against (the
    /// mapping then serves that map's frames and nothing else), or `None`.
    pub(crate) fn mmap_from_pool(
        &self,
        file: Option<&InodeState>,
        io: &mut Io,
        kind: MapKind,
        pgoff: u64,
        npages: u64,
    ) -> Option<u64> {
        let id = match file {
            Some(file) if kind.pool_ok() => file
                .covering_map(pgoff)
                .filter(|&id| self.verify_range(file, io, pgoff, npages) && file.uses_map(id)),
            _ => None,
        };
        stats::inc(if id.is_some() { Counter::mmap_pool } else { Counter::mmap_lower });
        if id.is_some() && kind.private() {
            stats::inc(Counter::mmap_pool_private);
        }
        if id.is_some() && kind.exec() {
            stats::inc(Counter::mmap_pool_exec);
        }
        id
    }

    fn verify_range(&self, file: &InodeState, io: &mut Io, pgoff: u64, npages: u64) -> bool {
        if self.verify == Verify::Off {
            return true;
        }
        let size = file.size();
        let (Ok(mut frame), mut lower) = (KVec::from_elem(0u8, FRAME_SIZE as usize, GFP_KERNEL), KVec::new()) else {
            return false;
        };
        for page in pgoff..pgoff.saturating_add(npages) {
            if page.saturating_mul(FRAME_SIZE) >= size {
                break;
            }
            let page_len = (size - page * FRAME_SIZE).min(FRAME_SIZE) as usize;
            if self.pool_page(file, page, &mut frame).is_none() {
                return false;
            }
            match self.checked(file, io, page, page_len, &mut frame, &mut lower) {
                Ok(true) => {}
                _ => return false,
            }
        }
        true
    }

    /// Serves a fault at page `pgoff` of a pool mapping that was checked
    /// against file map `map_id`: inserts the pool frame and returns the
    /// `vm_fault_t` of the insertion, or `None` when the mapping must fall
    /// back to the lower file's page (the map was revoked, dropped or
    /// replaced since, or its table is dead).
    ///
    /// The frame is chosen under the region lock and inserted under the
    /// file's lock after checking that the file still uses `map_id`. A
    /// revocation drops the map and zaps the file's PTEs under that same
    /// lock before it is acknowledged, so an insertion either happens before
    /// the zap (and is zapped) or sees the map gone: no pool PTE survives an
    /// acknowledged revocation.
    ///
    /// # Safety
    /// `vmf` must be the `struct vm_fault` of the fault in progress on a
    /// `VM_MIXEDMAP` mapping of this file.
    pub(crate) unsafe fn fault(
        &self,
        file: Option<&InodeState>,
        vmf: *mut core::ffi::c_void,
        map_id: u64,
        pgoff: u64,
        exec: bool,
    ) -> Option<u32> {
        let file = file?;
        let pfn = {
            let mut regions = self.shared.regions.lock();
            let (frame, table_offset, id) = file.frame(pgoff)?;
            if id != map_id {
                return None;
            }
            let (_, pool_map, client) = regions.parts();
            let pool = pool_map?;
            let view = client.pool_view(Some(pool))?;
            let off = view.geom.frame_offset(frame).ok()?;
            if pool.read_u64(usize::try_from(table_offset).ok()?) != Some(TABLE_MAGIC) {
                // Being revoked: the event that follows drops the map.
                return None;
            }
            (pool.phys() + off) >> kernel::page::PAGE_SHIFT
        };
        let s = file.inner.lock();
        if s.map.as_ref().map(|m| m.file_map_id) != Some(map_id) {
            return None;
        }
        // SAFETY: `vmf` is the fault in progress on a VM_MIXEDMAP mapping
        // (caller contract); `pfn` is a frame of the pool BAR, inside the pool
        // (`frame_offset` checked it against the geometry), of a map the file
        // still uses, and the file lock held across the insertion orders it
        // before any revocation's zap.
        let ret = unsafe { ffi::insert_pfn(vmf, pfn) };
        drop(s);
        stats::inc(Counter::faults_pool);
        if exec {
            stats::inc(Counter::faults_pool_exec);
        }
        Some(ret)
    }
}

impl Verify {
    fn from_param(v: u32) -> Verify {
        match v {
            0 => Verify::Off,
            1 => Verify::Sample,
            _ => Verify::Full,
        }
    }
}

fn parse_u32(s: &[u8]) -> Option<u32> {
    if s.is_empty() || s.len() > 10 {
        return None;
    }
    let mut v: u32 = 0;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u32::from(c - b'0'))?;
    }
    Some(v)
}

/// Bytes shown as text, non-printable bytes as `?`.
pub(crate) struct Bytes<'a>(pub(crate) &'a [u8]);

impl core::fmt::Display for Bytes<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for &c in self.0 {
            f.write_char(if (0x20..0x7f).contains(&c) { c as char } else { '?' })?;
        }
        Ok(())
    }
}

/// The lower inode's identity, as sent in a hint.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Ident {
    pub(crate) size: u64,
    pub(crate) mtime_ns: i64,
    pub(crate) ctime_ns: i64,
    pub(crate) ino: u64,
}

/// A validated answer: the frame numbers of one file, copied out of the pool
/// and checked (each below the pool's frame count, checksum right).
pub(crate) struct FileMap {
    pub(crate) file_map_id: u64,
    pub(crate) table_offset: u64,
    pub(crate) file_size: u64,
    pub(crate) frames: KVVec<u32>,
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
    pending: bool,
    miss: Option<(MissKind, Ktime)>,
    lower_only: bool,
    /// The inode's `address_space`, to zap pool PTEs on revocation; NULL once
    /// the inode is evicted.
    mapping: *mut core::ffi::c_void,
}

/// The state of one regular file, kept with its inode (`vmdedup_inode.rs`).
#[pin_data]
pub(crate) struct InodeState {
    #[pin]
    inner: Mutex<FileState>,
    sampled: AtomicBool,
}

// SAFETY: `mapping` is only dereferenced (by C, in `unmap`) under the lock
// while the inode is alive (it is cleared before the inode goes away).
unsafe impl Send for FileState {}

impl InodeState {
    pub(crate) fn new(mapping: *mut core::ffi::c_void) -> Result<Arc<InodeState>> {
        let st = FileState { ident: None, map: None, pending: false, miss: None, lower_only: false, mapping };
        Arc::pin_init(
            pin_init!(InodeState { inner <- kernel::new_mutex!(st, "vmdedup::file"), sampled: AtomicBool::new(false) }),
            GFP_KERNEL,
        )
    }

    /// Records the identity and says whether to send a hint (and marks the
    /// request pending if so).
    fn want_hint(&self, ident: Ident) -> bool {
        let mut s = self.inner.lock();
        if s.ident.is_some_and(|i| i != ident) {
            if s.map.take().is_some() {
                zap(&s);
                SWEEP_NEEDED.store(true, Ordering::Release);
            }
            s.miss = None;
        }
        s.ident = Some(ident);
        if s.lower_only || s.map.is_some() || s.pending {
            return false;
        }
        match s.miss {
            Some((MissKind::Final, _)) => return false,
            Some((MissKind::Retry, at)) => {
                let wait = i64::from(ffi::param(ffi::Param::RehintMs));
                if kernel::time::ktime_ms_delta(Ktime::ktime_get(), at) < wait {
                    return false;
                }
            }
            None => {}
        }
        s.pending = true;
        true
    }

    fn is_pending(&self) -> bool {
        self.inner.lock().pending
    }

    pub(crate) fn clear_pending(&self) {
        self.inner.lock().pending = false;
    }

    fn size(&self) -> u64 {
        let s = self.inner.lock();
        s.map.as_ref().map_or_else(|| s.ident.map_or(0, |i| i.size), |m| m.file_size)
    }

    fn ino(&self) -> u64 {
        self.inner.lock().ident.map_or(0, |i| i.ino)
    }

    fn has_map(&self) -> bool {
        self.inner.lock().map.is_some()
    }

    /// The id of the kept answer if it covers page `pgoff` (where a mapping
    /// starts; it may reach past the end of the file).
    fn covering_map(&self, pgoff: u64) -> Option<u64> {
        let s = self.inner.lock();
        s.map.as_ref().filter(|m| pgoff < m.frames.len() as u64).map(|m| m.file_map_id)
    }

    /// Whether the kept answer is file map `id`.
    pub(crate) fn uses_map(&self, id: u64) -> bool {
        self.inner.lock().map.as_ref().is_some_and(|m| m.file_map_id == id)
    }

    /// (frame, table offset, file map id) for `page`, if the kept answer covers it.
    fn frame(&self, page: u64) -> Option<(u32, u64, u64)> {
        let s = self.inner.lock();
        let m = s.map.as_ref()?;
        let f = *m.frames.get(usize::try_from(page).ok()?)?;
        Some((f, m.table_offset, m.file_map_id))
    }

    /// Keeps a validated answer. Returns false if the file no longer wants one.
    pub(crate) fn install(&self, map: FileMap) -> bool {
        let mut s = self.inner.lock();
        s.pending = false;
        if s.lower_only || s.mapping.is_null() || s.ident.map_or(true, |i| i.size != map.file_size) {
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

    fn lower_for_good(&self) {
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

/// Zaps every PTE mapping the file (pool frames and lower pages alike), if
/// the inode is still there. Called with the file's lock held (`s`).
fn zap(s: &FileState) {
    if !s.mapping.is_null() {
        // SAFETY: non-NULL `mapping` is the live inode's address_space
        // (cleared under this lock before the inode is evicted).
        unsafe { ffi::unmap_all(s.mapping) };
    }
}
