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

use crate::abi::{parse_fingerprint_text, Fingerprint};
use crate::ffi::{self, VmFault};
use crate::mapping::Mapping;
use crate::pool::{TableHeader, TABLE_HEADER_SIZE};

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
}

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
        let mut b = [0u8; TABLE_HEADER_SIZE];
        usize::try_from(self.offset).is_ok_and(|off| pool.read_bytes(off, &mut b))
            && TableHeader::from_le_bytes(&b).describes(self.file_map_id, self.pool_generation)
    }
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
        let id = s.map.as_ref()?.file_map_id;
        Some((id, s.checked_map == Some(id)))
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

    /// The frame of `page` and the table it came from, if the kept answer
    /// covers the page.
    pub(crate) fn frame(&self, page: u64) -> Option<(u32, TableKey)> {
        let s = self.inner.lock();
        let m = s.map.as_ref()?;
        let f = *m.frames.get(usize::try_from(page).ok()?)?;
        let key = TableKey {
            offset: m.table_offset,
            file_map_id: m.file_map_id,
            pool_generation: m.pool_generation,
        };
        Some((f, key))
    }

    /// Runs `insert` under the file's lock if the kept answer is still file
    /// map `id`, and returns its result; `None` if the map is gone. A
    /// revocation drops the map and zaps the file's PTEs under this same
    /// lock, so whatever `insert` maps is either zapped by it or never made.
    pub(crate) fn insert_if_uses(
        &self,
        id: u64,
        insert: impl FnOnce() -> VmFault,
    ) -> Option<VmFault> {
        let s = self.inner.lock();
        if s.map.as_ref().map(|m| m.file_map_id) != Some(id) {
            return None;
        }
        let ret = insert();
        drop(s);
        Some(ret)
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
