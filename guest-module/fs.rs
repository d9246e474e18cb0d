// SPDX-License-Identifier: GPL-2.0
//! The file system's decisions: mount options, when to hint, where each read,
//! mapping and fault is served from (pool frames or the lower file), and
//! which mappings may map pool frames at all.
//!
//! The VFS plumbing is in `fs.c`; it calls the entry points in
//! [`crate::entry`], which land here. Above the link and the per-file state.

use core::fmt::Write;

use kernel::prelude::*;
use kernel::sync::{Arc, ArcBorrow};
use kernel::time::Ktime;

use crate::ffi::{self, Io, MmapPlan, VmFault, VmFlags};
use crate::file::{Ident, InodeState};
use crate::link::Shared;
use crate::pool::FRAME_SIZE;
use crate::stats::{self, Counter};

/// How much of what the pool serves is compared with the lower file.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verify {
    /// Nothing.
    Off,
    /// Every file the pool serves: its first page, its last page and one
    /// page chosen at random, compared when a kept answer is first used,
    /// before any read or fault can use one of its frames. Catches a wrong
    /// image or a wrong answer for the file without reading it all.
    Sample,
    /// Every page served (which reads, and caches, the whole lower file).
    Full,
}
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
        let mut m = Mount {
            shared,
            ns_name: KVec::new(),
            ns_id: None,
            lower: KVec::new(),
            verify: Verify::Full,
        };
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
            pr_info!(
                "vmdedupfs: ns={} without nsid=: no hints, every file from lower\n",
                Bytes(&m.ns_name)
            );
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
        write!(
            out,
            ",lower={},verify={}",
            Bytes(&self.lower),
            self.verify.name()
        )
    }

    /// A regular file was opened: hint the host unless its answer is already
    /// kept (or known to be a miss), then poll briefly for the answer.
    pub(crate) fn open(&self, file: ArcBorrow<'_, InodeState>, ident: Ident, path: &[u8]) {
        let Some(ns_id) = self.ns_id else { return };
        let path = path.strip_prefix(b"/").unwrap_or(path);
        if !file.want_hint(ident) {
            return;
        }
        let deadline_ns = i64::from(ffi::param(ffi::Param::PollUs)).saturating_mul(1000);
        // The pending request keeps a reference of its own.
        let file = Arc::from(file);
        let mut link = self.shared.link.lock();
        let (ring, pool, client) = link.parts();
        if !client.submit(ring, &file, ns_id, &ident, path) {
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
    pub(crate) fn read(
        &self,
        file: Option<&InodeState>,
        io: &mut Io,
        pos: i64,
        count: usize,
    ) -> Result<isize> {
        let Some(file) = file else {
            return io.read_lower(pos, count);
        };
        // Take an answer that arrived after the open stopped polling.
        if file.is_pending() {
            let mut link = self.shared.link.lock();
            let (ring, pool, client) = link.parts();
            client.reap(ring, pool, true);
        }
        let Ok(upos) = u64::try_from(pos) else {
            return Err(EINVAL);
        };
        let map_id = self.ready_map(file, io);
        let size = file.size();
        let Some(map_id) = map_id.filter(|_| upos < size) else {
            stats::inc(Counter::pages_lower);
            return io.read_lower(pos, count);
        };
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
            let served = match self.pool_page(file, page, Some(map_id), &mut frame_buf) {
                Some(()) if self.verify == Verify::Full => {
                    self.checked(file, io, page, page_len, &mut frame_buf, &mut lower_buf)?
                }
                Some(()) => true,
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

    /// The kept answer a read or a new mapping may use, once its install
    /// check is done (`None`: serve the lower file). With `verify=sample`
    /// the check compares the file's first page, last page and a random
    /// page with the lower file; a difference sends the file to lower for
    /// good. With `off` and `sample` it then drops the lower file's cached
    /// pages (those read while the host was loading the file and those just
    /// compared): the pool serves the file from now on, so keeping them
    /// would only double the guest's memory for it. `full` compares every
    /// page as it is served instead.
    fn ready_map(&self, file: &InodeState, io: &mut Io) -> Option<u64> {
        let (id, checked) = file.current_map()?;
        if checked || self.verify == Verify::Full {
            return Some(id);
        }
        if self.verify == Verify::Sample && !self.sample(file, io, id) {
            return None;
        }
        let dropped = io.drop_lower_pages(0, i64::MAX as u64);
        stats::add(Counter::lower_pages_dropped, dropped);
        file.mark_checked(id).then_some(id)
    }

    /// Compares the first, the last and a random page of file map `id`
    /// with the lower file.
    fn sample(&self, file: &InodeState, io: &mut Io, id: u64) -> bool {
        let size = file.size();
        let pages = size.div_ceil(FRAME_SIZE);
        let Some(last) = pages.checked_sub(1) else {
            return true;
        };
        let random = u64::from(ffi::random_below(u32::try_from(pages).unwrap_or(u32::MAX)));
        let (Ok(mut frame), mut lower) = (
            KVec::from_elem(0u8, FRAME_SIZE as usize, GFP_KERNEL),
            KVec::new(),
        ) else {
            return false;
        };
        for (i, page) in [0, last, random].into_iter().enumerate() {
            if (i == 1 && page == 0) || (i == 2 && (page == 0 || page == last)) {
                continue;
            }
            let page_len = (size - page * FRAME_SIZE).min(FRAME_SIZE) as usize;
            if self.pool_page(file, page, Some(id), &mut frame).is_none() {
                return false;
            }
            match self.checked(file, io, page, page_len, &mut frame, &mut lower) {
                Ok(true) => {}
                _ => return false,
            }
        }
        stats::inc(Counter::verify_files);
        true
    }

    /// Copies page `page` of `file` out of its pool frame into `buf`, if the
    /// kept answer covers it (and is file map `want`, when given) and the
    /// table is still live around the copy.
    fn pool_page(
        &self,
        file: &InodeState,
        page: u64,
        want: Option<u64>,
        buf: &mut [u8],
    ) -> Option<()> {
        let mut link = self.shared.link.lock();
        // Looked up under the link's lock, which revocations hold.
        let (frame, key) = file.frame(page)?;
        if want.is_some_and(|w| w != key.file_map_id) {
            // Replaced since it was checked: this read goes to lower.
            return None;
        }
        let (_, pool_map, client) = link.parts();
        let pool = pool_map?;
        let view = client.pool_view(Some(pool))?;
        let off = usize::try_from(view.geom.frame_offset(frame).ok()?).ok()?;
        if key.live(pool) && pool.read_bytes(off, buf) && key.live(pool) {
            return Some(());
        }
        drop(link);
        if file.drop_map(key.file_map_id) {
            stats::inc(Counter::fallbacks);
        }
        None
    }

    /// Compares a pool page in `frame` with the lower file. Returns whether
    /// the pool bytes may be served; on a mismatch the file goes to lower
    /// for good.
    fn checked(
        &self,
        file: &InodeState,
        io: &mut Io,
        page: u64,
        page_len: usize,
        frame: &mut [u8],
        lower: &mut KVec<u8>,
    ) -> Result<bool> {
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

    /// Whether a mapping of `npages` at `pgoff` with flags `vm_flags` may map
    /// pool frames: shared never-writable mappings and private ones (whose
    /// PTEs stay read-only: a write copies the page first, see
    /// [`MapKind`]), when the kept answer covers the mapping's start. A mapping may reach past the end of the file (ld.so
    /// maps a library's whole span); those pages fault to the lower file,
    /// which answers SIGBUS as any file mapping does.
    /// The verify mode is applied here, to every page the mapping may fault
    /// in (`full`) or to the file's sample ([`Mount::ready_map`]), so faults
    /// never serve frames of a map whose check did not pass.
    ///
    /// Returns what fs.c makes of a pool mapping: the id of the file map
    /// it was checked against (the mapping then serves that map's frames
    /// and nothing else) and the flags to set; `None` for the lower file.
    pub(crate) fn mmap_from_pool(
        &self,
        file: Option<&InodeState>,
        io: &mut Io,
        vm_flags: VmFlags,
        pgoff: u64,
        npages: u64,
    ) -> Option<MmapPlan> {
        let kind = MapKind::of(vm_flags);
        let id = match file {
            Some(file) if kind.pool_ok() => self.ready_map(file, io).filter(|&id| {
                file.covering_map(pgoff) == Some(id)
                    && (self.verify != Verify::Full
                        || self.verify_range(file, io, pgoff, npages, id))
                    && file.uses_map(id)
            }),
            _ => None,
        };
        stats::inc(if id.is_some() {
            Counter::mmap_pool
        } else {
            Counter::mmap_lower
        });
        if id.is_some() && kind.private() {
            stats::inc(Counter::mmap_pool_private);
        }
        if id.is_some() && kind.exec() {
            stats::inc(Counter::mmap_pool_exec);
        }
        id.map(|map_id| MmapPlan {
            map_id,
            set_flags: kind.pool_flags(),
        })
    }

    /// Compares every page of `[pgoff, pgoff + npages)` of file map `id`
    /// with the lower file (`verify=full`).
    fn verify_range(
        &self,
        file: &InodeState,
        io: &mut Io,
        pgoff: u64,
        npages: u64,
        id: u64,
    ) -> bool {
        let size = file.size();
        let (Ok(mut frame), mut lower) = (
            KVec::from_elem(0u8, FRAME_SIZE as usize, GFP_KERNEL),
            KVec::new(),
        ) else {
            return false;
        };
        for page in pgoff..pgoff.saturating_add(npages) {
            if page.saturating_mul(FRAME_SIZE) >= size {
                break;
            }
            let page_len = (size - page * FRAME_SIZE).min(FRAME_SIZE) as usize;
            if self.pool_page(file, page, Some(id), &mut frame).is_none() {
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
    /// The frame is chosen under the link's lock and inserted under the
    /// file's lock after checking that the file still uses `map_id`. A
    /// revocation drops the map and zaps the file's PTEs under that same
    /// lock before it is acknowledged, so an insertion either happens before
    /// the zap (and is zapped) or sees the map gone: no pool PTE survives an
    /// acknowledged revocation.
    ///
    /// # Safety
    /// `vmf` must be the `struct vm_fault` of the fault in progress on a
    /// `VM_MIXEDMAP` mapping of this file with flags `vm_flags`.
    pub(crate) unsafe fn fault(
        &self,
        file: Option<&InodeState>,
        vmf: *mut core::ffi::c_void,
        map_id: u64,
        pgoff: u64,
        vm_flags: VmFlags,
    ) -> Option<VmFault> {
        let file = file?;
        let pfn = {
            let mut link = self.shared.link.lock();
            let (frame, key) = file.frame(pgoff)?;
            if key.file_map_id != map_id {
                return None;
            }
            let (_, pool_map, client) = link.parts();
            let pool = pool_map?;
            let view = client.pool_view(Some(pool))?;
            let off = view.geom.frame_offset(frame).ok()?;
            if !key.live(pool) {
                // Being revoked (or its slot already reused): the event that
                // follows drops the map.
                return None;
            }
            (pool.phys() + off) >> kernel::page::PAGE_SHIFT
        };
        let ret = file.insert_if_uses(map_id, || {
            // SAFETY: `vmf` is the fault in progress on a VM_MIXEDMAP mapping
            // (caller contract); `pfn` is a frame of the pool BAR, inside the
            // pool (`frame_offset` checked it against the geometry), of a map
            // the file still uses, and the file lock held across the
            // insertion orders it before any revocation's zap.
            unsafe { ffi::insert_pfn(vmf, pfn) }
        })?;
        stats::inc(Counter::faults_pool);
        if MapKind::of(vm_flags).exec() {
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
            f.write_char(if (0x20..0x7f).contains(&c) {
                c as char
            } else {
                '?'
            })?;
        }
        Ok(())
    }
}

/// What the flags of a new mapping say about serving it from pool frames.
#[derive(Clone, Copy)]
pub(crate) struct MapKind {
    /// `MAP_SHARED` (`VM_MAYSHARE`): the file's own pages, never copied.
    shared: bool,
    /// `VM_WRITE` or `VM_MAYWRITE`: writable now or after `mprotect()`.
    writable: bool,
    /// `VM_EXEC`: code.
    exec: bool,
}

impl MapKind {
    /// Reads the facts from `vm_flags` (`vma->vm_flags` at mmap time; do_mmap()
    /// clears `VM_SHARED` for files not open for writing, `VM_MAYSHARE` stays).
    pub(crate) fn of(vm_flags: VmFlags) -> MapKind {
        MapKind {
            shared: vm_flags & ffi::VM_MAYSHARE != 0,
            writable: vm_flags & (ffi::VM_WRITE | ffi::VM_MAYWRITE) != 0,
            exec: vm_flags & ffi::VM_EXEC != 0,
        }
    }

    /// Whether the mapping may map pool frames: shared ones that can never
    /// become writable, and every private one (code, ld.so's segments): its
    /// PTEs are read-only and a write copies the page first (see the fault
    /// path in fs.c). A pool frame is never written through a user mapping.
    pub(crate) fn pool_ok(self) -> bool {
        !self.shared || !self.writable
    }

    /// `MAP_PRIVATE`: writes copy the page first.
    pub(crate) fn private(self) -> bool {
        !self.shared
    }

    /// An executable mapping.
    pub(crate) fn exec(self) -> bool {
        self.exec
    }

    /// The flags a pool mapping gets. `VM_MIXEDMAP`: pool frames go in as
    /// special PTEs, and after a revocation the lower file's pages as normal
    /// ones. A shared one is also `VM_IO` (nothing may pin it) and
    /// `VM_DONTDUMP`; a private one is not, so ptrace can still break its
    /// copy-on-write (a debugger's breakpoints) and a core dump still holds
    /// its written pages.
    pub(crate) fn pool_flags(self) -> VmFlags {
        if self.shared {
            ffi::VM_MIXEDMAP | ffi::VM_IO | ffi::VM_DONTEXPAND | ffi::VM_DONTDUMP
        } else {
            ffi::VM_MIXEDMAP | ffi::VM_DONTEXPAND
        }
    }
}
