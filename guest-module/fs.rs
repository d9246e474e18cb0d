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

use crate::ffi::{self, Io, MmapPlan, PoolReadSection, VmFault, VmFlags};
use crate::file::{Fast, Ident, InodeState};
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
/// The largest lower buffer a read allocates for `verify=full` (one per
/// read call): pool bytes are compared with the lower file this many bytes
/// at a time.
const VERIFY_CHUNK: usize = 64 * 1024;

/// What one step of a read did.
enum Step {
    /// Bytes copied from pool frames (0: retry, the destination was faulted in).
    Pool(usize),
    /// The page goes to the lower file.
    Lower,
    /// The destination cannot be written: stop.
    Fault,
}

/// Pages spanned by `len` bytes from byte `in_page` of a page.
fn run_pages(in_page: usize, len: usize) -> u64 {
    if len == 0 {
        return 0;
    }
    (in_page + len).div_ceil(FRAME_SIZE as usize) as u64
}

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

    /// Whether an open of `file`, whose lower inode has identity `ident`
    /// (its fingerprint not read), needs nothing more: no hint can be sent
    /// from this mount, or the file's state needs none
    /// ([`InodeState::open_settled`]). Then fs.c skips [`Mount::open`] and
    /// what it needs (the path, the fingerprint attribute).
    pub(crate) fn open_settled(&self, file: &InodeState, ident: &Ident) -> bool {
        if self.ns_id.is_none() {
            return true;
        }
        let settled = file.open_settled(ident);
        if settled {
            stats::inc(Counter::opens_settled);
        }
        settled
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
        {
            let mut link = self.shared.link.lock();
            let (ring, pool, client) = link.parts();
            if !client.submit(ring, &file, ns_id, &ident, path) {
                file.clear_pending();
                return;
            }
            client.reap(ring, pool, false);
        }
        // Poll for the answer, taking the link's lock only to reap: reads,
        // faults and the timer of other files must not wait for this spin.
        let start = Ktime::ktime_get();
        while file.is_pending()
            && Ktime::ktime_get().to_ns().saturating_sub(start.to_ns()) < deadline_ns
        {
            core::hint::spin_loop();
            let mut link = self.shared.link.lock();
            let (ring, pool, client) = link.parts();
            client.reap(ring, pool, false);
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
        let Ok(upos) = u64::try_from(pos) else {
            return Err(EINVAL);
        };
        let mut done = 0usize;
        if self.verify != Verify::Full {
            match self.read_fast(file, io, upos, count) {
                Some((n, true)) => return Ok(n as isize),
                Some((n, false)) => done = n,
                None => {}
            }
        }
        // Take an answer that arrived after the open stopped polling.
        let (pending, mut current, mut size) = file.read_state();
        if pending {
            {
                let mut link = self.shared.link.lock();
                let (ring, pool, client) = link.parts();
                client.reap(ring, pool, true);
            }
            (_, current, size) = file.read_state();
        }
        let map_id = self.ready_map_of(file, io, current);
        let at = upos + done as u64;
        let Some(map_id) = map_id.filter(|_| at < size) else {
            if done > 0 {
                // The fast path served the start; the file ends (or its
                // map went) since: the next call reads on.
                return Ok(done as isize);
            }
            stats::inc(Counter::pages_lower);
            return io.read_lower(pos, count);
        };
        let count = count.min(usize::try_from(size - upos).unwrap_or(usize::MAX));
        // verify=full: one lower buffer for the whole call. KVVec: 64 KiB
        // of contiguous memory may not be there under pressure, and a read
        // must not fail for it (kvmalloc falls back to vmalloc, silently).
        let mut lower = KVVec::new();
        while done < count {
            let p = upos + done as u64;
            let left = count - done;
            let n = match self.read_run(file, io, map_id, p, left, &mut lower)? {
                Step::Pool(n) => n,
                Step::Fault => break,
                Step::Lower => {
                    let chunk = (FRAME_SIZE - p % FRAME_SIZE).min(left as u64) as usize;
                    let n = io.read_lower(p as i64, chunk)? as usize;
                    stats::inc(Counter::pages_lower);
                    if n < chunk {
                        done += n;
                        break;
                    }
                    n
                }
            };
            done += n;
        }
        if done == 0 && count > 0 {
            return Err(EFAULT);
        }
        Ok(done as isize)
    }

    /// The fast path of a read with `verify=off` or `sample` (where the
    /// install check is done once per kept answer, not per read): one lock
    /// inside a pool read section finds the run of frames serving `pos..`
    /// ([`InodeState::fast_run`]), one `copy_to_iter()` copies it, and one
    /// check of the table after the copy decides whether the bytes stand.
    /// Returns how many bytes it served (a prefix of the read) and whether
    /// that is the whole read (all bytes asked, or the end of the file:
    /// then no lower read, and no lower file opened, for the call that
    /// finds the end); `None` when the read must take the general path
    /// from `pos`: no checked answer, a request pending, the table dead
    /// after the copy (reverted), or a destination to fault in.
    ///
    /// One check, after the copy, is what the general path's two checks
    /// guarantee: the host zeroes a table's magic before it reuses any of
    /// its frames, and never gives a file map id twice within one pool
    /// generation, so a table that describes the map after the copy
    /// described it, and its frames held the map's bytes, for the whole
    /// copy. (A check before the copy only spares the copy of a table that
    /// is already dead; the one after would revert it.)
    fn read_fast(
        &self,
        file: &InodeState,
        io: &mut Io,
        pos: u64,
        count: usize,
    ) -> Option<(usize, bool)> {
        let section = PoolReadSection::enter();
        let (run, in_page, len, all) = match file.fast_run(&section, pos, count)? {
            Fast::Run(run, in_page, len, all) => (run, in_page, len, all),
            Fast::End => {
                stats::inc(Counter::reads_fast);
                return Some((0, true));
            }
        };
        let copied = run.copy_out(io, in_page, len)?;
        let (live, id) = (run.live(), run.map_id());
        drop(section);
        if !live {
            // Revoked (or its slot reused) by the end of the copy: take it
            // back; the general path reads lower.
            io.revert(copied);
            self.table_dead(file, id);
            return None;
        }
        if copied == 0 {
            return None;
        }
        stats::inc(Counter::reads_fast);
        stats::add(Counter::pages_pool, run_pages(in_page, copied));
        stats::add(Counter::bytes_pool, copied as u64);
        Some((copied, all && copied == len))
    }

    /// Serves bytes `p..p + left` of `file` from the run of consecutive
    /// pool frames of file map `map_id` that starts at `p`'s page: the run
    /// is looked up under the file's lock inside a pool read section
    /// (glue.c: a revocation waits for the section before it is
    /// acknowledged), copied straight to the destination in one call, and
    /// the table is checked live before and after the copy. A copy followed
    /// by a failed check is taken back and the page read from lower.
    /// With `verify=full` the lower bytes are read first (outside the
    /// section) and compared with the pool's; when they are equal, the
    /// compared lower bytes are what the destination gets, so that no
    /// change of the frame between the comparison and a second copy from
    /// it could put unchecked bytes in its place.
    fn read_run(
        &self,
        file: &InodeState,
        io: &mut Io,
        map_id: u64,
        p: u64,
        left: usize,
        lower: &mut KVVec<u8>,
    ) -> Result<Step> {
        let page = p / FRAME_SIZE;
        let in_page = (p % FRAME_SIZE) as usize;
        let mut want = left;
        let mut got_lower = 0;
        if self.verify == Verify::Full {
            if lower.is_empty() {
                let cap = VERIFY_CHUNK.min((in_page + left).next_multiple_of(FRAME_SIZE as usize));
                lower.extend_with(cap, 0, GFP_KERNEL)?;
            }
            // Compared (and served) at most a buffer at a time.
            want = left.min(lower.len());
            let buf = lower.get_mut(..want).ok_or(EINVAL)?;
            got_lower = io.read_lower_buf(p as i64, buf)?;
        }
        let max_pages = (in_page + want).div_ceil(FRAME_SIZE as usize) as u64;
        let section = PoolReadSection::enter();
        let Some(run) = file.run(&section, page, map_id, max_pages) else {
            return Ok(Step::Lower);
        };
        let id = run.map_id();
        let len = want.min(run.bytes() - in_page);
        if !run.live() {
            drop(section);
            self.table_dead(file, id);
            return Ok(Step::Lower);
        }
        let copied = if self.verify == Verify::Full {
            stats::add(Counter::verify_pages, run_pages(in_page, len));
            let same = got_lower >= len && lower.get(..len).is_some_and(|b| run.equals(in_page, b));
            let Some(checked) = lower.get(..len).filter(|_| same) else {
                drop(section);
                self.mismatch(file, page);
                return Ok(Step::Lower);
            };
            io.copy_buf(checked)
        } else {
            let Some(copied) = run.copy_out(io, in_page, len) else {
                return Ok(Step::Lower);
            };
            copied
        };
        let live = run.live();
        drop(section);
        if !live {
            // Revoked (or its slot reused) during the copy: what was copied
            // may be wrong; take it back and read lower.
            io.revert(copied);
            self.table_dead(file, id);
            return Ok(Step::Lower);
        }
        if copied > 0 {
            stats::add(Counter::pages_pool, run_pages(in_page, copied));
            stats::add(Counter::bytes_pool, copied as u64);
        }
        if copied < len {
            // The destination needs a fault, made outside the section; the
            // next step looks the frames up again.
            let faulted = io.fault_in(len - copied);
            if copied == 0 && !faulted {
                return Ok(Step::Fault);
            }
        }
        Ok(Step::Pool(copied))
    }

    /// The table of file map `id` is no longer live: the file goes back to
    /// lower (the revocation event that follows, or the timer's sweep,
    /// tells the host).
    fn table_dead(&self, file: &InodeState, id: u64) {
        if file.drop_map(id) {
            stats::inc(Counter::fallbacks);
        }
    }

    /// Pool bytes from `page` on differ from the lower file's: the file
    /// goes to lower for good.
    fn mismatch(&self, file: &InodeState, page: u64) {
        stats::inc(Counter::verify_mismatches);
        pr_err!(
            "vmdedupfs: ns={}: pool page {} of ino {} differs from lower: file falls back to lower for good\n",
            Bytes(&self.ns_name),
            page,
            file.ino()
        );
        file.lower_for_good();
        stats::inc(Counter::fallbacks);
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
        self.ready_map_of(file, io, file.current_map())
    }

    /// [`Mount::ready_map`] for the kept answer `current` (as
    /// [`InodeState::current_map`] said it a moment ago).
    fn ready_map_of(
        &self,
        file: &InodeState,
        io: &mut Io,
        current: Option<(u64, bool)>,
    ) -> Option<u64> {
        let (id, checked) = current?;
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
        for (i, page) in [0, last, random].into_iter().enumerate() {
            if (i == 1 && page == 0) || (i == 2 && (page == 0 || page == last)) {
                continue;
            }
            if !self.compare_pages(file, io, page, 1, id) {
                return false;
            }
        }
        stats::inc(Counter::verify_files);
        true
    }

    /// Compares pages `first..first + npages` of file map `id` (those
    /// inside the file) with the lower file, a run of frames at a time
    /// inside a pool read section. False if a page differs (the file then
    /// goes to lower for good) or the map no longer serves one.
    fn compare_pages(
        &self,
        file: &InodeState,
        io: &mut Io,
        first: u64,
        npages: u64,
        id: u64,
    ) -> bool {
        let size = file.size();
        let end = first.saturating_add(npages).min(size.div_ceil(FRAME_SIZE));
        if first >= end {
            return true;
        }
        let cap = VERIFY_CHUNK.min(((end - first) * FRAME_SIZE) as usize);
        // KVVec, as in a verify=full read: no order-4 allocation failure.
        let mut lower = KVVec::new();
        if lower.extend_with(cap, 0u8, GFP_KERNEL).is_err() {
            return false;
        }
        let mut page = first;
        while page < end {
            let chunk_pages = (end - page).min((cap as u64) / FRAME_SIZE);
            let bytes = (size - page * FRAME_SIZE).min(chunk_pages * FRAME_SIZE) as usize;
            let Some(buf) = lower.get_mut(..bytes) else {
                return false;
            };
            let Ok(got) = io.read_lower_buf((page * FRAME_SIZE) as i64, buf) else {
                return false;
            };
            let section = PoolReadSection::enter();
            let Some(run) = file.run(&section, page, id, chunk_pages) else {
                return false;
            };
            let len = bytes.min(run.bytes());
            if !run.live() {
                drop(section);
                self.table_dead(file, id);
                return false;
            }
            let same = got >= len && lower.get(..len).is_some_and(|b| run.equals(0, b));
            drop(section);
            stats::add(Counter::verify_pages, run_pages(0, len));
            if !same {
                self.mismatch(file, page);
                return false;
            }
            page += run_pages(0, len).max(1);
        }
        true
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
        self.compare_pages(file, io, pgoff, npages, id)
    }

    /// Serves a fault at page `pgoff` of a pool mapping that was checked
    /// against file map `map_id`: inserts the pool frame (and those of the
    /// pages of `around` the map covers: fault-around; every page of the
    /// mapping passed the map's check when it was made) and returns the
    /// `vm_fault_t` of the insertion, or `None` when the mapping must fall
    /// back to the lower file's page (the map was revoked, dropped or
    /// replaced since, or its table is dead).
    ///
    /// The frame is looked up and inserted under the file's lock after
    /// checking that the file still uses `map_id` (no link lock: a fault may
    /// come from a copy to user memory inside a pool read section). A
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
        around: core::ops::Range<u64>,
        vm_flags: VmFlags,
    ) -> Option<VmFault> {
        let file = file?;
        let (ret, around) =
            file.insert_frames(map_id, pgoff, around, ffi::VM_FAULT_NOPAGE, |page, pfn| {
                // SAFETY: `vmf` is the fault in progress on a VM_MIXEDMAP
                // mapping (caller contract); `pfn` is a frame of the pool BAR,
                // inside the pool (`frame_offset` checked it against the
                // geometry), of a map the file still uses and the mapping
                // was checked against, and the file lock held across the
                // insertion orders it before any revocation's zap.
                unsafe {
                    if page == pgoff {
                        ffi::insert_pfn(vmf, pfn)
                    } else {
                        ffi::insert_pfn_at(vmf, page, pfn)
                    }
                }
            })?;
        stats::add(Counter::faults_around_pages, around);
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
