//! The content-addressed page store: which frame holds which page, which
//! file maps exist, who holds them, and when a frame may be reused.
//!
//! [`PageStore`] is a plain state machine: it never reads the clock (callers
//! pass `now_ms`), never blocks and never talks to a VM. What VMs must be told
//! (revoke this map, you are cut off) is queued as [`StoreEvent`]s for the
//! caller to deliver through the event ring after it released the store.
//!
//! # Rules
//! - A page is shared only after a hash match *and* a byte compare.
//! - A frame is reused only when no file map references it; a file map is
//!   dropped only when no VM holds it.
//! - A VM holds a map by reference count: every hit answer it was given
//!   ([`PageStore::hold`]) counts one, every release ([`PageStore::release`])
//!   takes one back, and an acknowledged revocation ([`PageStore::ack`])
//!   takes back all of them (the guest drops every entry of that map at
//!   once). A count that reached `u32::MAX` is pinned: releases no longer
//!   lower it, only an acknowledgement, [`PageStore::release_all`] or
//!   [`PageStore::remove_vm`] end it.
//! - A map being revoked is dropped once every VM that held it let go of it.
//!   A VM that lets the deadline (`ack_timeout_ms`) pass is cut off: it gets
//!   no more hits, but what it held stays held and charged to it (it may
//!   still have those frames in its page tables) until it acknowledges the
//!   cut-off ([`PageStore::release_all`]), reconnects to its reinstated ring
//!   ([`PageStore::vm_reconnected`]) or is removed ([`PageStore::remove_vm`]).
//!   Once reinstated it owes no acknowledgement of a revocation sent on its
//!   old ring (no deadline cuts it off again for one).
//! - Each VM may hold at most its quota of pages (`vm_max_held_pages`, or
//!   its own limit); a hit beyond it is a miss ([`StoreError::OverQuota`]).
//! - Under pressure: unreferenced maps go first (least recently used first).
//!   Then, if the VM whose load needs the room stays within its fair share
//!   with it (the budget divided among the VMs that hold pages or wait for
//!   room), maps held only by VMs above their fair share are revoked (LRU),
//!   without a deadline: such a VM is asked to give back, never cut off for
//!   it (it may be paused). While such a VM waits for room
//!   ([`FAIR_SHARE_WINDOW_MS`] since its last failed load, or until a load of
//!   its own succeeds), a hit that would take another VM above its fair
//!   share is refused ([`StoreError::OverQuota`]), so that the room made is
//!   not taken again. Last, the maps held by the requesting VM and by no
//!   other VM are revoked (LRU too). A VM within its share never loses a map
//!   to someone else's load, a map shared with a VM within its share is never
//!   revoked for pressure, and an operator's load (no requesting VM) revokes
//!   nothing. The allocation that needed room fails with
//!   [`StoreError::PoolFull`] meanwhile.
//! - Nothing slow happens inside the store: a loader stages pages
//!   ([`PageStore::stage_pages`]), writes and compares them with the caller's
//!   lock released ([`StagedPages::fill`], which says why that is sound) and
//!   commits them ([`PageStore::commit_pages`]); freeing a frame never
//!   re-hashes it (each frame keeps its index hash), and its memory is
//!   returned to the OS by the caller after releasing the lock
//!   ([`PageStore::take_discards`]), before the frame may be reused.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use vmdedup_protocol::pool::{
    pages_for_size, table_bytes, TableHeader, TableRef, FRAME_SIZE, MAX_TABLE_PAGES,
};

use crate::pool::{FrameAccess, PoolMemory};

/// How long a VM whose load found no room within its fair share keeps the
/// other VMs at theirs, counted from its last such load: long enough for the
/// VMs asked to give back to acknowledge and for its guest to ask again.
pub const FAIR_SHARE_WINDOW_MS: u64 = 10_000;

/// One page of a [`StagedPages`] batch.
#[derive(Clone, Copy, Debug)]
enum Staged {
    /// An indexed frame with the page's hash, referenced by the batch.
    Share { frame: u32 },
    /// An earlier page of the batch with the same hash.
    SameAs { page: usize },
    /// A frame reserved for this page alone, to be indexed under `hash`.
    Fresh { frame: u32, hash: PageHash },
}

/// Pages of a loading map between [`PageStore::stage_pages`] and
/// [`PageStore::commit_pages`]: filled without the store lock.
#[derive(Debug)]
pub struct StagedPages {
    map: MapId,
    access: FrameAccess,
    pages: Vec<Staged>,
    mismatch: Vec<bool>,
    filled: bool,
}

impl StagedPages {
    /// Writes the fresh frames and byte-compares the shared ones, without
    /// the store lock. `pages` is the batch's pages, one whole frame each,
    /// in order; a wrong length fills nothing (the commit then fails).
    ///
    /// Why this is sound without the lock: a fresh frame came off the free
    /// lists with no reference, no table and no index entry, and gets an
    /// index entry only at the commit, so nobody else reads, writes or
    /// discards it meanwhile. A shared frame carries the batch's reference,
    /// so it is not freed, hence not reallocated, rewritten or discarded
    /// (only unreferenced frames are); its bytes were complete before it was
    /// indexed (a commit under the lock, which orders that write before this
    /// read). So the compare reads the bytes the frame keeps, and a page is
    /// shared only after a hash match and that compare.
    pub fn fill(&mut self, pages: &[u8]) {
        let frame = FRAME_SIZE as usize;
        if pages.len() != self.pages.len() * frame {
            return;
        }
        for (i, st) in self.pages.iter().enumerate() {
            let page = &pages[i * frame..(i + 1) * frame];
            self.mismatch[i] = match *st {
                // SAFETY: the batch references the frame (see above).
                Staged::Share { frame: f } => !unsafe { self.access.frame_equals(f, page) },
                Staged::SameAs { page: j } => page != &pages[j * frame..(j + 1) * frame],
                Staged::Fresh { frame: f, .. } => {
                    // SAFETY: reserved for this batch alone (see above).
                    unsafe { self.access.write_frame(f, page) };
                    false
                }
            };
        }
        self.filled = true;
    }
}

mod adopt;
pub use adopt::{scan_tables, AdoptReport, FoundTable};

/// Host id of a file map (never 0, never reused within a pool generation).
pub type MapId = u64;
/// A VM, as the ring layer numbers it (`RingId.0`).
pub type VmId = u32;
/// A strong content hash of one page (BLAKE3).
pub type PageHash = [u8; 32];

/// Hashes one page for the content index.
pub fn page_hash(page: &[u8]) -> PageHash {
    *blake3::hash(page).as_bytes()
}

/// What makes two host files the same file version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileKey {
    /// Host device.
    pub dev: u64,
    /// Host inode.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, ns since the epoch.
    pub mtime_ns: i64,
}

/// Something the store needs a VM to be told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreEvent {
    /// Ask `vm` to stop using `map` and acknowledge ([`PageStore::ack`]).
    Revoke {
        /// The VM.
        vm: VmId,
        /// What it must stop using.
        map: TableRef,
    },
    /// `vm` did not acknowledge in time; it gets no more hits until
    /// [`PageStore::reinstate_vm`]. What it held stays held (and charged to
    /// it) until it acknowledges ([`PageStore::release_all`]).
    CutOff {
        /// The VM.
        vm: VmId,
    },
}

/// Page-store errors (all are misses for the guest, none is fatal).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// No room now; revocations may have been started.
    #[error("pool full")]
    PoolFull,
    /// The file has more pages than a table may describe, or than the pool has.
    #[error("file too large: {0} pages")]
    TooLarge(u64),
    /// No such file map (or not in the state the call needs).
    #[error("no such file map {0}")]
    NoMap(MapId),
    /// The VM is unknown.
    #[error("unknown VM {0}")]
    UnknownVm(VmId),
    /// The VM is cut off from the pool.
    #[error("VM {0} is cut off")]
    CutOff(VmId),
    /// Page data of the wrong size.
    #[error("page of {0} bytes")]
    BadPage(usize),
    /// The VM holds its quota of pages already; it may hit again once it
    /// released some.
    #[error("VM {0} holds its quota of pages")]
    OverQuota(VmId),
}

/// Tunables.
#[derive(Clone, Copy, Debug)]
pub struct StoreConfig {
    /// Most frames in use at once (0: every frame of the pool).
    pub budget_frames: u64,
    /// How long a VM may take to acknowledge a revocation.
    pub ack_timeout_ms: u64,
    /// Most pages a VM may hold at once (the pages of the maps it holds,
    /// each map once), unless [`PageStore::set_vm_quota`] gave it its own
    /// limit. 0: no limit.
    pub vm_max_held_pages: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            budget_frames: 0,
            ack_timeout_ms: 5_000,
            vm_max_held_pages: 0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum MapState {
    Loading,
    Live,
    /// Dead to new hints; dropped once no VM holds it. `waiting`: the
    /// holders that owe an acknowledgement by `deadline_ms` (not a holder
    /// whose every reference predates its reinstatement: its new ring knows
    /// nothing of them). `u64::MAX`: no deadline (a revocation for another
    /// VM's fair share, a dead table of an adopted pool).
    Revoking {
        waiting: BTreeSet<VmId>,
        deadline_ms: u64,
    },
}

#[derive(Debug)]
struct FileMap {
    key: FileKey,
    label: MapLabel,
    size: u64,
    page_count: u32,
    frames: Vec<u32>,
    table_offset: u64,
    state: MapState,
    /// The VMs with a positive count in their [`VmEntry::holds`] for this map.
    holders: BTreeSet<VmId>,
    lru_tick: u64,
    /// A batch of pages is staged and not committed yet.
    staging: bool,
    /// The VM whose hint made this load (`None`: the operator); pressure of
    /// this load may revoke only maps that VM alone holds.
    requester: Option<VmId>,
}

/// What a file map is, for listings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapLabel {
    /// Namespace id.
    pub ns: u32,
    /// Path inside the namespace.
    pub path: String,
}

/// A file map, as listings show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapSummary {
    /// The map.
    pub id: MapId,
    /// What file it is.
    pub label: MapLabel,
    /// File size.
    pub size: u64,
    /// Pages.
    pub pages: u32,
    /// VMs holding it.
    pub holders: u32,
    /// Still loading.
    pub loading: bool,
    /// Being revoked.
    pub revoking: bool,
}

/// One VM's references to one map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Hold {
    /// Hit answers not released yet (`u32::MAX`: pinned, see the rules).
    refs: u32,
    /// How many of `refs` were taken before the VM's last reinstatement:
    /// [`PageStore::vm_reconnected`] drops them. A release lowers this part
    /// first, so `refs - stale` never falls below what the VM took since.
    stale: u32,
}

#[derive(Debug, Default)]
struct VmEntry {
    holds: BTreeMap<MapId, Hold>,
    pages_mapped: u64,
    cut_off: bool,
    /// Its own quota in pages (`None`: the store's default; 0: none).
    max_pages: Option<u64>,
}

/// Per-VM view, for stats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmHoldings {
    /// Maps held (while cut off: the maps still charged to it).
    pub maps_held: u32,
    /// Pages of those maps: what is charged against its quota.
    pub pages_mapped: u64,
    /// Its quota in pages (0: no limit).
    pub max_pages: u64,
    /// Revocations it has not acknowledged.
    pub revocations_pending: u32,
    /// Cut off.
    pub cut_off: bool,
}

/// Pool-wide numbers, for stats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreCounts {
    /// Frames in the pool.
    pub frames_total: u64,
    /// Frames allowed by the budget.
    pub frames_budget: u64,
    /// Frames holding data.
    pub frames_used: u64,
    /// File maps (any state).
    pub file_maps: u64,
    /// Sum over VMs of the pages of the maps they hold.
    pub pages_mapped: u64,
    /// Pages shared at load time instead of taking a new frame.
    pub pages_deduplicated: u64,
    /// Maps evicted unreferenced.
    pub evictions: u64,
    /// Revocations started.
    pub revocations: u64,
    /// VMs cut off.
    pub cut_offs: u64,
    /// Hits refused because the VM held its quota.
    pub over_quota: u64,
    /// Hits refused because they would have taken the VM above its fair
    /// share while another VM waited for room.
    pub over_share: u64,
    /// Revocations started for another VM's fair share.
    pub share_revocations: u64,
    /// File maps dropped (evicted, revoked and acknowledged, aborted).
    pub maps_dropped: u64,
    /// Allocations answered "pool full" because the pool's filesystem had
    /// no memory left for the frame or table (see
    /// [`PoolMemory::reserve_range`]).
    pub filesystem_full: u64,
}

/// First-fit allocator of table space, in [`vmdedup_protocol::pool::TABLE_ALIGN`] units.
#[derive(Debug)]
struct TableSpace {
    free: BTreeMap<u64, u64>,
}

impl TableSpace {
    fn new(offset: u64, len: u64) -> Self {
        TableSpace {
            free: BTreeMap::from([(offset, len)]),
        }
    }

    fn alloc(&mut self, len: u64) -> Option<u64> {
        let (&off, &have) = self.free.iter().find(|(_, &l)| l >= len)?;
        self.free.remove(&off);
        if have > len {
            self.free.insert(off + len, have - len);
        }
        Some(off)
    }

    fn release(&mut self, off: u64, len: u64) {
        let (mut start, mut size) = (off, len);
        if let Some((&p, &pl)) = self.free.range(..off).next_back() {
            if p + pl == off {
                self.free.remove(&p);
                start = p;
                size += pl;
            }
        }
        if let Some(&nl) = self.free.get(&(off + len)) {
            self.free.remove(&(off + len));
            size += nl;
        }
        self.free.insert(start, size);
    }
}

/// The page store. See the module documentation.
#[derive(Debug)]
pub struct PageStore {
    pool: PoolMemory,
    cfg: StoreConfig,
    budget: u64,
    fresh: u32,
    /// Free frames whose memory was returned to the OS (or never used).
    free: Vec<u32>,
    /// Free frames not yet discarded: reused first, else handed out by
    /// [`take_discards`](PageStore::take_discards).
    dirty: Vec<u32>,
    /// Frames being discarded outside the lock: neither used nor allocatable
    /// until [`finish_discards`](PageStore::finish_discards).
    discarding: u64,
    refs: Vec<u32>,
    /// The hash under which each frame is in `index` (kept so that freeing a
    /// frame never re-hashes it).
    frame_hash: Vec<Option<PageHash>>,
    index: HashMap<PageHash, u32>,
    used: u64,
    tables: TableSpace,
    maps: HashMap<MapId, FileMap>,
    by_key: HashMap<FileKey, MapId>,
    lru: BTreeMap<u64, MapId>,
    tick: u64,
    next_id: MapId,
    vms: BTreeMap<VmId, VmEntry>,
    events: Vec<StoreEvent>,
    counts: StoreCounts,
    /// Frames pinned after taking over a served pool ([`PageStore::adopt`]).
    pins: Option<adopt::Pins>,
    /// VMs whose load found no room within their fair share, and until when
    /// the others are held to theirs.
    pressed: BTreeMap<VmId, u64>,
    /// The latest time a caller passed in: when a hit (which carries no
    /// time) checks `pressed`.
    clock_ms: u64,
}

impl PageStore {
    /// A store over a freshly created pool.
    pub fn new(pool: PoolMemory, cfg: StoreConfig) -> Self {
        let g = *pool.geometry();
        let budget = if cfg.budget_frames == 0 {
            g.frame_count
        } else {
            cfg.budget_frames.min(g.frame_count)
        };
        PageStore {
            tables: TableSpace::new(g.table_area_offset, g.table_area_size),
            pool,
            cfg,
            budget,
            fresh: 0,
            free: Vec::new(),
            dirty: Vec::new(),
            discarding: 0,
            refs: Vec::new(),
            frame_hash: Vec::new(),
            index: HashMap::new(),
            used: 0,
            maps: HashMap::new(),
            by_key: HashMap::new(),
            lru: BTreeMap::new(),
            tick: 0,
            next_id: 1,
            vms: BTreeMap::new(),
            events: Vec::new(),
            counts: StoreCounts {
                frames_total: g.frame_count,
                frames_budget: budget,
                ..StoreCounts::default()
            },
            pins: None,
            pressed: BTreeMap::new(),
            clock_ms: 0,
        }
    }

    /// The pool (read-only).
    pub fn pool(&self) -> &PoolMemory {
        &self.pool
    }

    /// Registers a VM (idempotent).
    pub fn add_vm(&mut self, vm: VmId) {
        self.vms.entry(vm).or_default();
    }

    /// The VM is gone for good (its QEMU exited): drops everything it held.
    pub fn remove_vm(&mut self, vm: VmId, _now_ms: u64) {
        self.drop_holdings(vm, false);
        self.vms.remove(&vm);
        self.pressed.remove(&vm);
        self.pins_forget(vm, None);
    }

    /// Sets `vm`'s own quota in pages (`None`: the store's default; 0: no
    /// limit). Maps it holds already stay held.
    pub fn set_vm_quota(&mut self, vm: VmId, max_pages: Option<u64>) {
        if let Some(v) = self.vms.get_mut(&vm) {
            v.max_pages = max_pages;
        }
    }

    fn quota_of(&self, v: &VmEntry) -> u64 {
        v.max_pages.unwrap_or(self.cfg.vm_max_held_pages)
    }

    /// The fair share of the budget, in pages, for `vm` and the other VMs
    /// that hold pages or wait for room: the budget divided among them.
    fn fair_share(&self, vm: VmId) -> u64 {
        let n = self
            .vms
            .iter()
            .filter(|(id, v)| **id == vm || v.pages_mapped > 0 || self.pressed.contains_key(id))
            .count()
            .max(1) as u64;
        self.budget / n
    }

    /// Whether a VM other than `vm` waits for room within its fair share.
    fn others_pressed(&self, vm: VmId) -> bool {
        self.pressed
            .iter()
            .any(|(id, until)| *id != vm && *until > self.clock_ms)
    }

    fn advance_clock(&mut self, now_ms: u64) {
        self.clock_ms = self.clock_ms.max(now_ms);
    }

    /// A new ring was written for `vm` (it was cut off, or its ring
    /// corrupt): it may be served again. What it
    /// held before stays held and charged until it reconnects
    /// ([`vm_reconnected`](Self::vm_reconnected)) or acknowledges the cut-off
    /// ([`release_all`](Self::release_all)).
    pub fn reinstate_vm(&mut self, vm: VmId) {
        let Some(v) = self.vms.get_mut(&vm) else {
            return;
        };
        // Whatever the new ring is for (a cut-off, a corrupt ring), the guest
        // drops every map when it sees the new generation: all it holds now
        // is stale from then on.
        for h in v.holds.values_mut() {
            h.stale = h.refs;
        }
        v.cut_off = false;
        self.pins_reinstated(vm);
        // Its new ring carries no acknowledgement of a revocation sent on
        // the old one: it owes none (no deadline cuts it off again), and the
        // maps stay revoking, its holds on them stale, until it reconnects.
        for m in self.maps.values_mut() {
            if let MapState::Revoking { waiting, .. } = &mut m.state {
                waiting.remove(&vm);
            }
        }
    }

    /// `vm` acknowledged its cut-off: it dropped every map it held then. If it
    /// is still cut off, all it holds is released; if it was reinstated
    /// meanwhile, only what it held before the reinstatement. Returns whether
    /// anything was released.
    pub fn release_all(&mut self, vm: VmId) -> bool {
        let Some(v) = self.vms.get(&vm) else {
            return false;
        };
        let stale_only = !v.cut_off;
        // A cut-off guest that acknowledged maps no pool frame: it owes no
        // acknowledgement of a re-announced map and has nothing left to
        // re-announce after a restart.
        let forgot = !stale_only && self.pins_forget(vm, None);
        self.drop_holdings(vm, stale_only) | forgot
    }

    /// `vm` reconnected to its reinstated ring: a new guest connection holds
    /// nothing it was answered on the old one, so what it held before the
    /// reinstatement is released. Returns whether anything was released.
    pub fn vm_reconnected(&mut self, vm: VmId) -> bool {
        if self.vms.get(&vm).is_none_or(|v| v.cut_off) {
            return false;
        }
        // The guest dropped every map of its old ring before it attached
        // the new one: nothing it owed through it pins frames any more.
        let forgot = self.pins_reconnected(vm);
        self.drop_holdings(vm, true) | forgot
    }

    /// Whether `vm` is cut off.
    pub fn is_cut_off(&self, vm: VmId) -> bool {
        self.vms.get(&vm).is_some_and(|v| v.cut_off)
    }

    /// The live map of a file version, if loaded.
    pub fn lookup(&self, key: &FileKey) -> Option<MapId> {
        self.by_key.get(key).copied()
    }

    /// Where map `id`'s table is: what an answer carries.
    fn location(&self, id: MapId, m: &FileMap) -> TableRef {
        TableRef {
            file_map_id: id,
            offset: m.table_offset,
            page_count: m.page_count,
            file_size: m.size,
            map_generation: self.pool.geometry().generation,
        }
    }

    fn touch(&mut self, id: MapId) {
        self.tick += 1;
        let tick = self.tick;
        if let Some(m) = self.maps.get_mut(&id) {
            self.lru.remove(&m.lru_tick);
            m.lru_tick = tick;
            if m.state == MapState::Live {
                self.lru.insert(tick, id);
            }
        }
    }

    /// `vm` was answered with live map `id`: one more reference. The first
    /// reference charges the map's pages to `vm`'s quota; past the quota the
    /// hit is refused ([`StoreError::OverQuota`], or
    /// [`StoreError::TooLarge`] if the map alone exceeds it).
    pub fn hold(&mut self, vm: VmId, id: MapId) -> Result<TableRef, StoreError> {
        let v = self.vms.get(&vm).ok_or(StoreError::UnknownVm(vm))?;
        if v.cut_off {
            return Err(StoreError::CutOff(vm));
        }
        let m = self.maps.get(&id).ok_or(StoreError::NoMap(id))?;
        if m.state != MapState::Live {
            return Err(StoreError::NoMap(id));
        }
        let pages = m.page_count as u64;
        if !v.holds.contains_key(&id) {
            let limit = self.quota_of(v);
            if limit != 0 && pages > limit {
                self.counts.over_quota += 1;
                return Err(StoreError::TooLarge(pages));
            }
            if limit != 0 && v.pages_mapped.saturating_add(pages) > limit {
                self.counts.over_quota += 1;
                return Err(StoreError::OverQuota(vm));
            }
            if self.others_pressed(vm) && v.pages_mapped.saturating_add(pages) > self.fair_share(vm)
            {
                self.counts.over_share += 1;
                return Err(StoreError::OverQuota(vm));
            }
        }
        let v = self.vms.get_mut(&vm).ok_or(StoreError::UnknownVm(vm))?;
        let h = v.holds.entry(id).or_default();
        h.refs = h.refs.saturating_add(1);
        if h.refs == 1 {
            v.pages_mapped += pages;
            self.counts.pages_mapped += pages;
            if let Some(m) = self.maps.get_mut(&id) {
                m.holders.insert(vm);
            }
        }
        self.touch(id);
        let m = &self.maps[&id];
        Ok(self.location(id, m))
    }

    /// `vm` let go of one reference to map `id` (one hit answer: its inode
    /// dropped the map, or it did not want the answer). Releases of maps it
    /// does not hold are ignored; a pinned count is not lowered.
    pub fn release(&mut self, vm: VmId, id: MapId, _now_ms: u64) {
        let Some(h) = self.vms.get_mut(&vm).and_then(|v| v.holds.get_mut(&id)) else {
            return;
        };
        if h.refs == u32::MAX {
            return;
        }
        h.refs -= 1;
        h.stale = h.stale.saturating_sub(1);
        if h.refs == 0 {
            self.unhold(vm, id);
        }
    }

    /// Ends every reference of `vm` to `id`: uncharges it, and drops a
    /// revoked map that nobody else waits on. Returns whether `vm` held it.
    fn unhold(&mut self, vm: VmId, id: MapId) -> bool {
        let Some(v) = self.vms.get_mut(&vm) else {
            return false;
        };
        if v.holds.remove(&id).is_none() {
            return false;
        }
        let Some(m) = self.maps.get_mut(&id) else {
            return true;
        };
        m.holders.remove(&vm);
        let pages = m.page_count as u64;
        v.pages_mapped -= pages;
        self.counts.pages_mapped -= pages;
        let mut done = false;
        if let MapState::Revoking { waiting, .. } = &mut m.state {
            waiting.remove(&vm);
            done = m.holders.is_empty();
        }
        if done {
            self.drop_map(id);
        }
        true
    }

    /// `vm` acknowledged the revocation of `id`: it dropped every entry of
    /// that map, so all its references end. Returns whether that was a
    /// revocation it owed (anything else is ignored: guests are untrusted).
    pub fn ack(&mut self, vm: VmId, id: MapId, _now_ms: u64) -> bool {
        match self.maps.get(&id) {
            Some(FileMap {
                state: MapState::Revoking { waiting, .. },
                ..
            }) if waiting.contains(&vm) => self.unhold(vm, id),
            _ => self.pins_forget(vm, Some(id)),
        }
    }

    /// Cuts off every VM that let a revocation deadline pass.
    ///
    /// Returns whether a deadline is still running afterwards (a map being
    /// revoked from a VM not cut off, or acknowledgements owed to an adopted
    /// pool): the caller ticks again soon only then.
    pub fn tick(&mut self, now_ms: u64) -> bool {
        self.advance_clock(now_ms);
        self.pressed.retain(|_, until| *until > now_ms);
        let owed_late = self.pins_late(now_ms);
        let mut revoking = false;
        let late: BTreeSet<VmId> = self
            .maps
            .values()
            .filter_map(|m| match &m.state {
                MapState::Revoking {
                    waiting,
                    deadline_ms,
                } => {
                    revoking = true;
                    (*deadline_ms <= now_ms).then(|| waiting.clone())
                }
                _ => None,
            })
            .flatten()
            .chain(owed_late)
            .filter(|vm| !self.is_cut_off(*vm))
            .collect();
        for vm in late {
            self.cut_off(vm, now_ms);
        }
        // A revocation waiting only for VMs already cut off has nothing
        // left to enforce.
        // One without a deadline has nothing to enforce either.
        let waits = revoking
            && self.maps.values().any(|m| {
                matches!(&m.state, MapState::Revoking { waiting, deadline_ms }
                    if *deadline_ms != u64::MAX
                        && waiting.iter().any(|vm| !self.is_cut_off(*vm)))
            });
        // A VM waiting for room holds the others to their shares until its
        // window ends: tick to end it on time.
        waits || self.pins.is_some() || !self.pressed.is_empty()
    }

    /// Cuts `vm` off: refuses it further maps. What it holds stays held and
    /// charged to it (its page tables may still map those frames), and maps
    /// being revoked keep waiting for it, until it acknowledges
    /// ([`release_all`](Self::release_all)), reconnects after reinstatement
    /// or is removed. Other VMs are not affected.
    pub fn cut_off(&mut self, vm: VmId, _now_ms: u64) {
        let Some(v) = self.vms.get_mut(&vm) else {
            return;
        };
        if !v.cut_off {
            v.cut_off = true;
            self.counts.cut_offs += 1;
            self.events.push(StoreEvent::CutOff { vm });
        }
        self.pressed.remove(&vm);
    }

    /// Ends `vm`'s references: all of them, or (`stale_only`) those taken
    /// before its last reinstatement. Returns whether any ended.
    fn drop_holdings(&mut self, vm: VmId, stale_only: bool) -> bool {
        let Some(v) = self.vms.get_mut(&vm) else {
            return false;
        };
        let mut gone = Vec::new();
        let mut any = false;
        for (&id, h) in v.holds.iter_mut() {
            if !stale_only {
                gone.push(id);
            } else if h.stale > 0 {
                any = true;
                h.refs -= h.stale.min(h.refs);
                h.stale = 0;
                if h.refs == 0 {
                    gone.push(id);
                }
            }
        }
        any |= !gone.is_empty();
        for id in gone {
            self.unhold(vm, id);
        }
        any
    }

    /// Events queued for VMs since the last call.
    pub fn take_events(&mut self) -> Vec<StoreEvent> {
        std::mem::take(&mut self.events)
    }

    /// Starts loading a file version of `size` bytes: reserves its table.
    /// `requester` is the VM whose hint asked for it (`None`: the operator);
    /// the room this load (and its [`add_page`](Self::add_page)s) needs may
    /// be made by revoking only maps that VM alone holds.
    pub fn begin_load(
        &mut self,
        key: FileKey,
        label: MapLabel,
        requester: Option<VmId>,
        now_ms: u64,
    ) -> Result<MapId, StoreError> {
        self.advance_clock(now_ms);
        let pages = pages_for_size(key.size);
        if pages > MAX_TABLE_PAGES as u64 || pages > self.budget {
            return Err(StoreError::TooLarge(pages));
        }
        let page_count = pages as u32;
        let len = table_bytes(page_count);
        let table_offset = loop {
            if let Some(off) = self.tables.alloc(len) {
                // The table is written at `finish_load`: back it now, so that
                // a full filesystem is a full pool, not a SIGBUS.
                if self.pool.reserve_range(off, len).is_ok() {
                    break off;
                }
                self.tables.release(off, len);
                self.counts.filesystem_full += 1;
            }
            if !self.evict_one_unreferenced() {
                self.make_room(requester, pages, now_ms);
                return Err(StoreError::PoolFull);
            }
        };
        let id = self.next_id;
        self.next_id += 1;
        self.maps.insert(
            id,
            FileMap {
                key,
                label,
                size: key.size,
                page_count,
                frames: Vec::with_capacity(page_count as usize),
                table_offset,
                state: MapState::Loading,
                holders: BTreeSet::new(),
                lru_tick: 0,
                staging: false,
                requester,
            },
        );
        Ok(id)
    }

    /// Adds the next page of a loading map. `page` is exactly one frame (the
    /// file's tail zero-padded) and `hash` its [`page_hash`], computed by the
    /// caller outside any lock. This does the whole of
    /// [`stage_pages`](Self::stage_pages), [`StagedPages::fill`] and
    /// [`commit_pages`](Self::commit_pages) at once (tests, small files); the
    /// loader does the middle step without the store lock.
    pub fn add_page(
        &mut self,
        id: MapId,
        hash: &PageHash,
        page: &[u8],
        now_ms: u64,
    ) -> Result<(), StoreError> {
        if page.len() != FRAME_SIZE as usize {
            return Err(StoreError::BadPage(page.len()));
        }
        let mut staged = self.stage_pages(id, std::slice::from_ref(hash), now_ms)?;
        staged.fill(page);
        self.commit_pages(staged, page, now_ms)
    }

    /// Reserves what the next `hashes.len()` pages of loading map `id` need:
    /// for a page whose hash is indexed, that frame, kept referenced so it
    /// can be neither freed nor rewritten; for a page whose hash another
    /// page of this batch has, that page; otherwise a frame of its own, which
    /// nothing else may read or write until it is committed. The caller then
    /// writes and compares outside the store lock ([`StagedPages::fill`]) and
    /// commits ([`commit_pages`](Self::commit_pages)); one batch per map at
    /// a time. A batch dropped without a commit leaks what it reserved until
    /// the agent restarts (the loader always commits).
    pub fn stage_pages(
        &mut self,
        id: MapId,
        hashes: &[PageHash],
        now_ms: u64,
    ) -> Result<StagedPages, StoreError> {
        let m = self.maps.get(&id).ok_or(StoreError::NoMap(id))?;
        if m.state != MapState::Loading
            || m.staging
            || m.frames.len() + hashes.len() > m.page_count as usize
        {
            return Err(StoreError::NoMap(id));
        }
        let requester = m.requester;
        let mut remaining = m.page_count as u64 - m.frames.len() as u64;
        let mut pages: Vec<Staged> = Vec::with_capacity(hashes.len());
        let mut fresh_here: HashMap<PageHash, usize> = HashMap::new();
        for (i, h) in hashes.iter().enumerate() {
            let st = if let Some(&f) = self.index.get(h) {
                // Pinned: while we hold this reference it is not freed, so
                // not reused, written or discarded.
                self.refs[f as usize] += 1;
                Staged::Share { frame: f }
            } else if let Some(&j) = fresh_here.get(h) {
                Staged::SameAs { page: j }
            } else {
                match self.alloc_frame(requester, remaining, now_ms) {
                    Ok(f) => {
                        self.refs[f as usize] = 1;
                        fresh_here.insert(*h, i);
                        Staged::Fresh { frame: f, hash: *h }
                    }
                    Err(e) => {
                        self.unstage(&pages);
                        return Err(e);
                    }
                }
            };
            pages.push(st);
            remaining = remaining.saturating_sub(1);
        }
        if let Some(m) = self.maps.get_mut(&id) {
            m.staging = true;
        }
        Ok(StagedPages {
            map: id,
            access: self.pool.frame_access(),
            mismatch: vec![false; pages.len()],
            pages,
            filled: false,
        })
    }

    /// Lets go of what a batch reserved.
    fn unstage(&mut self, pages: &[Staged]) {
        for st in pages {
            match *st {
                Staged::Share { frame } | Staged::Fresh { frame, .. } => self.unref_frame(frame),
                Staged::SameAs { .. } => {}
            }
        }
    }

    /// Adds a filled batch to its map, in order: a shared frame whose bytes
    /// matched, a fresh frame (now written, so now indexed under its hash),
    /// or, for a page whose compare failed (a hash collision), a new frame
    /// written here under the lock. `pages` are the batch's pages, as given
    /// to [`StagedPages::fill`].
    pub fn commit_pages(
        &mut self,
        staged: StagedPages,
        pages: &[u8],
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let id = staged.map;
        let frame = FRAME_SIZE as usize;
        let ok = staged.filled
            && staged.access.same_pool(&self.pool.frame_access())
            && pages.len() == staged.pages.len() * frame
            && matches!(self.maps.get(&id), Some(m) if m.state == MapState::Loading && m.staging);
        if !ok {
            if staged.access.same_pool(&self.pool.frame_access()) {
                self.unstage(&staged.pages);
                if let Some(m) = self.maps.get_mut(&id) {
                    m.staging = false;
                }
            }
            return Err(if pages.len() != staged.pages.len() * frame {
                StoreError::BadPage(pages.len())
            } else {
                StoreError::NoMap(id)
            });
        }
        if let Some(m) = self.maps.get_mut(&id) {
            m.staging = false;
        }
        let requester = self.maps.get(&id).and_then(|m| m.requester);
        let mut committed: Vec<u32> = Vec::with_capacity(staged.pages.len());
        for (i, st) in staged.pages.iter().enumerate() {
            let page = &pages[i * frame..(i + 1) * frame];
            let f = match *st {
                Staged::Share { frame: f } if !staged.mismatch[i] => {
                    self.counts.pages_deduplicated += 1;
                    Some(f)
                }
                Staged::Share { frame: f } => {
                    self.unref_frame(f);
                    None
                }
                Staged::Fresh { frame: f, hash } => {
                    if let std::collections::hash_map::Entry::Vacant(e) = self.index.entry(hash) {
                        e.insert(f);
                        self.frame_hash[f as usize] = Some(hash);
                    }
                    Some(f)
                }
                Staged::SameAs { page: j } if !staged.mismatch[i] => {
                    let f = committed[j];
                    self.refs[f as usize] += 1;
                    self.counts.pages_deduplicated += 1;
                    Some(f)
                }
                Staged::SameAs { .. } => None,
            };
            let f = match f {
                Some(f) => f,
                None => {
                    // Equal hashes, different bytes: never shared. Rare
                    // enough to write under the lock.
                    match self.alloc_frame(requester, 1, now_ms) {
                        Ok(f) => {
                            self.pool.write_frame(f, page);
                            self.refs[f as usize] = 1;
                            f
                        }
                        Err(e) => {
                            self.unstage(&staged.pages[i + 1..]);
                            if let Some(m) = self.maps.get_mut(&id) {
                                m.frames.extend_from_slice(&committed);
                            }
                            return Err(e);
                        }
                    }
                }
            };
            committed.push(f);
        }
        if let Some(m) = self.maps.get_mut(&id) {
            m.frames.extend_from_slice(&committed);
        }
        Ok(())
    }

    /// Writes and publishes the table of a fully loaded map; from now on
    /// [`lookup`](Self::lookup) finds it.
    pub fn finish_load(&mut self, id: MapId) -> Result<TableRef, StoreError> {
        let generation = self.pool.geometry().generation;
        let m = self.maps.get(&id).ok_or(StoreError::NoMap(id))?;
        if m.state != MapState::Loading || m.frames.len() != m.page_count as usize {
            return Err(StoreError::NoMap(id));
        }
        if let Some(&other) = self.by_key.get(&m.key) {
            // Someone else loaded the same version meanwhile: keep theirs.
            self.drop_map(id);
            let o = self.maps.get(&other).ok_or(StoreError::NoMap(other))?;
            return Ok(self.location(other, o));
        }
        let header = TableHeader {
            magic: 0,
            file_map_id: id,
            file_size: m.size,
            page_count: m.page_count,
            flags: 0,
            pool_generation: generation,
            checksum: 0,
            reserved: [0; 2],
        };
        let (offset, key, frames) = (m.table_offset, m.key, m.frames.clone());
        if let Some(vm) = m.requester {
            // It found room: it no longer holds the others to their shares.
            self.pressed.remove(&vm);
        }
        self.pool.publish_table(offset, header, &frames);
        if let Some(m) = self.maps.get_mut(&id) {
            m.state = MapState::Live;
        }
        self.by_key.insert(key, id);
        self.touch(id);
        let m = &self.maps[&id];
        Ok(self.location(id, m))
    }

    /// Gives up a loading map (I/O error, pool full): frees what it took.
    pub fn abort_load(&mut self, id: MapId) {
        if matches!(self.maps.get(&id), Some(m) if m.state == MapState::Loading) {
            self.drop_map(id);
        }
    }

    fn alloc_frame(
        &mut self,
        requester: Option<VmId>,
        pages_wanted: u64,
        now_ms: u64,
    ) -> Result<u32, StoreError> {
        loop {
            // A frame not discarded yet is reused as it is: it is about to be
            // overwritten whole, and its memory was never given back.
            if let Some(f) = self.dirty.pop() {
                self.used += 1;
                self.pool.set_frames_used(self.used);
                return Ok(f);
            }
            // A discarded or new frame is backed with memory before anyone
            // writes it; a full filesystem is a full pool (an unreferenced map
            // evicted below leaves frames on `dirty` that need no memory).
            if let Some(f) = self.free.pop() {
                if self.pool.reserve_frame(f).is_ok() {
                    self.used += 1;
                    self.pool.set_frames_used(self.used);
                    return Ok(f);
                }
                self.free.push(f);
                self.counts.filesystem_full += 1;
            } else if (self.fresh as u64) < self.budget
                && self.pool.reserve_frame(self.fresh).is_err()
            {
                self.counts.filesystem_full += 1;
            } else if (self.fresh as u64) < self.budget {
                let f = self.fresh;
                self.fresh += 1;
                self.refs.push(0);
                self.frame_hash.push(None);
                self.used += 1;
                self.pool.set_frames_used(self.used);
                return Ok(f);
            }
            if !self.evict_one_unreferenced() {
                self.make_room(requester, pages_wanted, now_ms);
                return Err(StoreError::PoolFull);
            }
        }
    }

    /// Drops the least recently used live map that no VM holds.
    fn evict_one_unreferenced(&mut self) -> bool {
        let victim = self
            .lru
            .values()
            .copied()
            .find(|id| self.maps.get(id).is_some_and(|m| m.holders.is_empty()));
        match victim {
            Some(id) => {
                self.counts.evictions += 1;
                self.drop_map(id);
                true
            }
            None => false,
        }
    }

    /// A load for `requester` found no room (unreferenced maps are gone):
    /// starts the revocations that make room for `pages` pages. A VM that
    /// stays within its fair share with them takes the room from VMs above
    /// theirs first ([`revoke_above_share`](Self::revoke_above_share)) and is
    /// recorded as waiting; then, and for any other VM, its own unshared maps
    /// are revoked ([`revoke_own`](Self::revoke_own)). An operator's load
    /// (`None`) revokes nothing: it waits for room.
    fn make_room(&mut self, requester: Option<VmId>, pages: u64, now_ms: u64) {
        self.advance_clock(now_ms);
        let Some(vm) = requester else {
            return;
        };
        let Some(v) = self.vms.get(&vm) else {
            return;
        };
        let wanted = pages.max(1);
        let entitled = !v.cut_off && v.pages_mapped.saturating_add(wanted) <= self.fair_share(vm);
        let mut covered = 0;
        if entitled {
            self.pressed
                .insert(vm, now_ms.saturating_add(FAIR_SHARE_WINDOW_MS));
            covered = self.revoke_above_share(vm, wanted, now_ms);
            if covered > 0 {
                tracing::info!(
                    vm,
                    share_pages = self.fair_share(vm),
                    pages = covered,
                    "pool full for a VM within its fair share: maps of VMs above theirs asked back"
                );
            }
        }
        if covered < wanted {
            self.revoke_own(vm, wanted - covered, now_ms);
        }
    }

    /// Starts revoking, least recently used first, live maps whose every
    /// holder is above its fair share (as it will stand once its maps
    /// already being revoked are gone) and which `vm` does not hold, until
    /// their pages cover `pages`. No deadline: a holder is asked to give
    /// back, and is never cut off for it. Returns the pages covered.
    fn revoke_above_share(&mut self, vm: VmId, pages: u64, now_ms: u64) -> u64 {
        let share = self.fair_share(vm);
        // What each VM will hold once what it is asked to give back is gone.
        let mut left: BTreeMap<VmId, u64> = self
            .vms
            .iter()
            .map(|(&id, v)| (id, v.pages_mapped))
            .collect();
        for m in self.maps.values() {
            if matches!(m.state, MapState::Revoking { .. }) {
                for h in &m.holders {
                    if let Some(l) = left.get_mut(h) {
                        *l = l.saturating_sub(m.page_count as u64);
                    }
                }
            }
        }
        let candidates: Vec<MapId> = self.lru.values().copied().collect();
        let mut covered = 0;
        for id in candidates {
            if covered >= pages {
                break;
            }
            let Some(m) = self.maps.get(&id) else {
                continue;
            };
            let above = !m.holders.is_empty()
                && !m.holders.contains(&vm)
                && m.holders
                    .iter()
                    .all(|h| left.get(h).is_some_and(|&l| l > share));
            if !above {
                continue;
            }
            let n = m.page_count as u64;
            for h in &m.holders {
                if let Some(l) = left.get_mut(h) {
                    *l = l.saturating_sub(n);
                }
            }
            covered += n.max(1);
            self.counts.share_revocations += 1;
            self.revoke_until(id, now_ms, u64::MAX);
        }
        covered
    }

    /// Starts revoking live maps that `vm` alone holds, least recently used
    /// first, until their pages cover `pages` (or none is left), each with
    /// the usual deadline.
    fn revoke_own(&mut self, vm: VmId, pages: u64, now_ms: u64) {
        let own: Vec<MapId> = self
            .lru
            .values()
            .copied()
            .filter(|id| {
                self.maps
                    .get(id)
                    .is_some_and(|m| m.holders.len() == 1 && m.holders.contains(&vm))
            })
            .collect();
        let mut covered = 0;
        for id in own {
            if covered >= pages.max(1) {
                break;
            }
            covered += self.maps.get(&id).map_or(0, |m| m.page_count as u64).max(1);
            self.revoke(id, now_ms);
        }
    }

    /// Starts revoking live map `id`: new hints no longer find it, its table
    /// is marked dead, and every holder is asked to let go within
    /// `ack_timeout_ms`. Returns whether it was dropped at once (nobody held
    /// it).
    pub fn revoke(&mut self, id: MapId, now_ms: u64) -> bool {
        let deadline = now_ms.saturating_add(self.cfg.ack_timeout_ms);
        self.revoke_until(id, now_ms, deadline)
    }

    /// [`revoke`](Self::revoke) with the holders' deadline (`u64::MAX`:
    /// none).
    fn revoke_until(&mut self, id: MapId, now_ms: u64, deadline_ms: u64) -> bool {
        self.advance_clock(now_ms);
        let Some(m) = self.maps.get_mut(&id) else {
            return false;
        };
        if m.state != MapState::Live {
            return false;
        }
        let vms = &self.vms;
        let waiting: BTreeSet<VmId> = m
            .holders
            .iter()
            .copied()
            .filter(|vm| {
                vms.get(vm)
                    .and_then(|v| v.holds.get(&id))
                    .is_some_and(|h| h.refs > h.stale)
            })
            .collect();
        let held = !m.holders.is_empty();
        m.state = MapState::Revoking {
            waiting: waiting.clone(),
            deadline_ms,
        };
        let (offset, key, tick) = (m.table_offset, m.key, m.lru_tick);
        self.lru.remove(&tick);
        if self.by_key.get(&key) == Some(&id) {
            self.by_key.remove(&key);
        }
        self.pool.revoke_table(offset);
        if !held {
            self.drop_map(id);
            return true;
        }
        self.counts.revocations += 1;
        let loc = self.location(id, &self.maps[&id]);
        for vm in waiting {
            self.events.push(StoreEvent::Revoke { vm, map: loc });
        }
        false
    }

    /// Evicts or revokes every live map `pick` selects. Returns (dropped at
    /// once, revocations started).
    pub fn evict_where(
        &mut self,
        mut pick: impl FnMut(&MapLabel) -> bool,
        now_ms: u64,
    ) -> (u64, u64) {
        let ids: Vec<MapId> = self
            .maps
            .iter()
            .filter(|(_, m)| m.state == MapState::Live && pick(&m.label))
            .map(|(&id, _)| id)
            .collect();
        let (mut dropped, mut revoking) = (0, 0);
        for id in ids {
            if self.revoke(id, now_ms) {
                dropped += 1;
            } else {
                revoking += 1;
            }
        }
        (dropped, revoking)
    }

    fn drop_map(&mut self, id: MapId) {
        let Some(m) = self.maps.remove(&id) else {
            return;
        };
        self.counts.maps_dropped += 1;
        self.lru.remove(&m.lru_tick);
        if self.by_key.get(&m.key) == Some(&id) {
            self.by_key.remove(&m.key);
        }
        if m.state == MapState::Live {
            self.pool.revoke_table(m.table_offset);
        }
        for vm in &m.holders {
            if let Some(v) = self.vms.get_mut(vm) {
                if v.holds.remove(&id).is_some() {
                    v.pages_mapped -= m.page_count as u64;
                    self.counts.pages_mapped -= m.page_count as u64;
                }
            }
        }
        for f in m.frames {
            self.unref_frame(f);
        }
        self.tables
            .release(m.table_offset, table_bytes(m.page_count));
    }

    fn unref_frame(&mut self, f: u32) {
        let r = &mut self.refs[f as usize];
        *r -= 1;
        if *r > 0 {
            return;
        }
        if let Some(h) = self.frame_hash[f as usize].take() {
            if self.index.get(&h) == Some(&f) {
                self.index.remove(&h);
            }
        }
        // Its memory goes back to the OS outside the lock (take_discards),
        // unless it is reused first.
        self.dirty.push(f);
        self.used -= 1;
        self.pool.set_frames_used(self.used);
    }

    /// Frames freed since the last call, for the caller to discard
    /// ([`FrameAccess::discard_frame`]) after releasing the store lock, then
    /// to give back with [`finish_discards`](Self::finish_discards). Until
    /// then they are not reused.
    pub fn take_discards(&mut self) -> Vec<u32> {
        let v = std::mem::take(&mut self.dirty);
        self.discarding += v.len() as u64;
        v
    }

    /// Frames from [`take_discards`](Self::take_discards) were discarded:
    /// they may be reused.
    pub fn finish_discards(&mut self, frames: Vec<u32>) {
        self.discarding = self.discarding.saturating_sub(frames.len() as u64);
        self.free.extend(frames);
    }

    /// A handle that writes, compares and discards frames of this store's
    /// pool outside the store lock (see [`FrameAccess`]'s contract).
    pub fn frame_access(&self) -> FrameAccess {
        self.pool.frame_access()
    }

    /// Pool-wide numbers.
    pub fn counts(&self) -> StoreCounts {
        StoreCounts {
            frames_used: self.used,
            file_maps: self.maps.len() as u64,
            ..self.counts
        }
    }

    /// The maps `vm` holds (while cut off: those still charged to it).
    pub fn held_by(&self, vm: VmId) -> std::collections::BTreeSet<MapId> {
        self.vms
            .get(&vm)
            .map(|v| v.holds.keys().copied().collect())
            .unwrap_or_default()
    }

    /// What `vm` holds.
    pub fn vm_holdings(&self, vm: VmId) -> Option<VmHoldings> {
        let v = self.vms.get(&vm)?;
        let pending = self
            .maps
            .values()
            .filter(
                |m| matches!(&m.state, MapState::Revoking { waiting, .. } if waiting.contains(&vm)),
            )
            .count() as u32;
        Some(VmHoldings {
            maps_held: v.holds.len() as u32,
            pages_mapped: v.pages_mapped,
            max_pages: self.quota_of(v),
            revocations_pending: pending,
            cut_off: v.cut_off,
        })
    }

    /// Every file map, ordered by id.
    pub fn maps(&self) -> Vec<MapSummary> {
        let mut v: Vec<MapSummary> = self
            .maps
            .iter()
            .map(|(&id, m)| MapSummary {
                id,
                label: m.label.clone(),
                size: m.size,
                pages: m.page_count,
                holders: m.holders.len() as u32,
                loading: m.state == MapState::Loading,
                revoking: matches!(m.state, MapState::Revoking { .. }),
            })
            .collect();
        v.sort_by_key(|s| s.id);
        v
    }

    /// The frame numbers of a map (tests and fake guests read the table instead).
    pub fn frames_of(&self, id: MapId) -> Option<&[u32]> {
        self.maps.get(&id).map(|m| m.frames.as_slice())
    }

    /// Loads a whole in-memory file in one go (tests, small files), as the
    /// operator (no VM asked for it).
    pub fn load_bytes(
        &mut self,
        key: FileKey,
        label: MapLabel,
        data: &[u8],
        now_ms: u64,
    ) -> Result<TableRef, StoreError> {
        self.load_bytes_for(None, key, label, data, now_ms)
    }

    /// [`load_bytes`](Self::load_bytes) on behalf of `requester`.
    pub fn load_bytes_for(
        &mut self,
        requester: Option<VmId>,
        key: FileKey,
        label: MapLabel,
        data: &[u8],
        now_ms: u64,
    ) -> Result<TableRef, StoreError> {
        if let Some(id) = self.lookup(&key) {
            let m = &self.maps[&id];
            return Ok(self.location(id, m));
        }
        let id = self.begin_load(key, label, requester, now_ms)?;
        let mut page = [0u8; FRAME_SIZE as usize];
        for chunk in data.chunks(FRAME_SIZE as usize) {
            page[..chunk.len()].copy_from_slice(chunk);
            page[chunk.len()..].fill(0);
            if let Err(e) = self.add_page(id, &page_hash(&page), &page, now_ms) {
                self.abort_load(id);
                return Err(e);
            }
        }
        self.finish_load(id)
    }
}

#[cfg(test)]
mod tests;
