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
//!   dropped only when no VM holds it. A map being revoked is dropped once
//!   every VM that held it acknowledged, or was cut off because it did not
//!   within `ack_timeout_ms`.
//! - Under pressure: unreferenced maps go first (least recently used first),
//!   then referenced maps are revoked (LRU too); the allocation that needed
//!   room fails with [`StoreError::PoolFull`] meanwhile.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use vmdedup_protocol::pool::{
    pages_for_size, table_bytes, TableHeader, TableRef, FRAME_SIZE, MAX_TABLE_PAGES,
};

use crate::pool::PoolMemory;

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
    /// `vm` did not acknowledge in time; its references were dropped and it
    /// gets no more hits until [`PageStore::reinstate_vm`].
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
}

/// Tunables.
#[derive(Clone, Copy, Debug)]
pub struct StoreConfig {
    /// Most frames in use at once (0: every frame of the pool).
    pub budget_frames: u64,
    /// How long a VM may take to acknowledge a revocation.
    pub ack_timeout_ms: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            budget_frames: 0,
            ack_timeout_ms: 5_000,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum MapState {
    Loading,
    Live,
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
    holders: BTreeSet<VmId>,
    lru_tick: u64,
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

#[derive(Debug, Default)]
struct VmEntry {
    holds: BTreeSet<MapId>,
    pages_mapped: u64,
    cut_off: bool,
}

/// Per-VM view, for stats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmHoldings {
    /// Maps held.
    pub maps_held: u32,
    /// Pages of those maps.
    pub pages_mapped: u64,
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
    /// File maps dropped (evicted, revoked and acknowledged, aborted).
    pub maps_dropped: u64,
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
    free: Vec<u32>,
    refs: Vec<u32>,
    indexed: Vec<bool>,
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
            refs: Vec::new(),
            indexed: Vec::new(),
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
    pub fn remove_vm(&mut self, vm: VmId, now_ms: u64) {
        self.drop_holdings(vm, now_ms);
        self.vms.remove(&vm);
        self.pins_forget(vm, None);
    }

    /// Lets a cut-off VM be served again (after its ring was reset).
    pub fn reinstate_vm(&mut self, vm: VmId) {
        if let Some(v) = self.vms.get_mut(&vm) {
            v.cut_off = false;
        }
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

    /// `vm` starts holding live map `id` (it was answered with it).
    pub fn hold(&mut self, vm: VmId, id: MapId) -> Result<TableRef, StoreError> {
        let v = self.vms.get(&vm).ok_or(StoreError::UnknownVm(vm))?;
        if v.cut_off {
            return Err(StoreError::CutOff(vm));
        }
        let m = self.maps.get_mut(&id).ok_or(StoreError::NoMap(id))?;
        if m.state != MapState::Live {
            return Err(StoreError::NoMap(id));
        }
        let pages = m.page_count as u64;
        if m.holders.insert(vm) {
            let v = self.vms.get_mut(&vm).ok_or(StoreError::UnknownVm(vm))?;
            v.holds.insert(id);
            v.pages_mapped += pages;
            self.counts.pages_mapped += pages;
        }
        self.touch(id);
        let m = &self.maps[&id];
        Ok(self.location(id, m))
    }

    /// `vm` no longer uses map `id` (it closed the file). Unknown pairs are ignored.
    pub fn release(&mut self, vm: VmId, id: MapId, now_ms: u64) {
        self.unhold(vm, id, now_ms);
    }

    fn unhold(&mut self, vm: VmId, id: MapId, _now_ms: u64) -> bool {
        let Some(m) = self.maps.get_mut(&id) else {
            return false;
        };
        if !m.holders.remove(&vm) {
            return false;
        }
        let pages = m.page_count as u64;
        let mut done = false;
        if let MapState::Revoking { waiting, .. } = &mut m.state {
            waiting.remove(&vm);
            done = waiting.is_empty();
        }
        if let Some(v) = self.vms.get_mut(&vm) {
            v.holds.remove(&id);
            v.pages_mapped -= pages;
        }
        self.counts.pages_mapped -= pages;
        if done {
            self.drop_map(id);
        }
        true
    }

    /// `vm` acknowledged the revocation of `id`. Returns whether that was a
    /// revocation it owed (anything else is ignored: guests are untrusted).
    pub fn ack(&mut self, vm: VmId, id: MapId, now_ms: u64) -> bool {
        match self.maps.get(&id) {
            Some(FileMap {
                state: MapState::Revoking { waiting, .. },
                ..
            }) if waiting.contains(&vm) => self.unhold(vm, id, now_ms),
            _ => self.pins_forget(vm, Some(id)),
        }
    }

    /// Cuts off every VM that let a revocation deadline pass.
    pub fn tick(&mut self, now_ms: u64) {
        let late: BTreeSet<VmId> = self
            .maps
            .values()
            .filter_map(|m| match &m.state {
                MapState::Revoking {
                    waiting,
                    deadline_ms,
                } if *deadline_ms <= now_ms => Some(waiting.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        for vm in late {
            self.cut_off(vm, now_ms);
        }
    }

    /// Cuts `vm` off: drops all it holds (from the host's side) and refuses
    /// it further maps. Other VMs are not affected.
    pub fn cut_off(&mut self, vm: VmId, now_ms: u64) {
        let Some(v) = self.vms.get_mut(&vm) else {
            return;
        };
        if !v.cut_off {
            v.cut_off = true;
            self.counts.cut_offs += 1;
            self.events.push(StoreEvent::CutOff { vm });
        }
        self.drop_holdings(vm, now_ms);
    }

    fn drop_holdings(&mut self, vm: VmId, now_ms: u64) {
        let held: Vec<MapId> = self
            .vms
            .get(&vm)
            .map(|v| v.holds.iter().copied().collect())
            .unwrap_or_default();
        for id in held {
            self.unhold(vm, id, now_ms);
        }
    }

    /// Events queued for VMs since the last call.
    pub fn take_events(&mut self) -> Vec<StoreEvent> {
        std::mem::take(&mut self.events)
    }

    /// Starts loading a file version of `size` bytes: reserves its table.
    pub fn begin_load(
        &mut self,
        key: FileKey,
        label: MapLabel,
        now_ms: u64,
    ) -> Result<MapId, StoreError> {
        let pages = pages_for_size(key.size);
        if pages > MAX_TABLE_PAGES as u64 || pages > self.budget {
            return Err(StoreError::TooLarge(pages));
        }
        let page_count = pages as u32;
        let len = table_bytes(page_count);
        let table_offset = loop {
            if let Some(off) = self.tables.alloc(len) {
                break off;
            }
            if !self.evict_one_unreferenced() {
                self.revoke_for_pressure(pages, now_ms);
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
            },
        );
        Ok(id)
    }

    /// Adds the next page of a loading map. `page` is exactly one frame (the
    /// file's tail zero-padded) and `hash` its [`page_hash`], computed by the
    /// caller outside any lock.
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
        let m = self.maps.get(&id).ok_or(StoreError::NoMap(id))?;
        if m.state != MapState::Loading || m.frames.len() >= m.page_count as usize {
            return Err(StoreError::NoMap(id));
        }
        let remaining = m.page_count as u64 - m.frames.len() as u64;
        let shared = match self.index.get(hash) {
            Some(&f) if self.pool.frame(f) == page => Some(f),
            _ => None,
        };
        let frame = match shared {
            Some(f) => {
                self.refs[f as usize] += 1;
                self.counts.pages_deduplicated += 1;
                f
            }
            None => {
                let f = self.alloc_frame(remaining, now_ms)?;
                self.pool.write_frame(f, page);
                self.refs[f as usize] = 1;
                if !self.index.contains_key(hash) {
                    self.index.insert(*hash, f);
                    self.indexed[f as usize] = true;
                }
                f
            }
        };
        if let Some(m) = self.maps.get_mut(&id) {
            m.frames.push(frame);
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

    fn alloc_frame(&mut self, pages_wanted: u64, now_ms: u64) -> Result<u32, StoreError> {
        loop {
            if let Some(f) = self.free.pop() {
                self.used += 1;
                self.pool.set_frames_used(self.used);
                return Ok(f);
            }
            if (self.fresh as u64) < self.budget {
                let f = self.fresh;
                self.fresh += 1;
                self.refs.push(0);
                self.indexed.push(false);
                self.used += 1;
                self.pool.set_frames_used(self.used);
                return Ok(f);
            }
            if !self.evict_one_unreferenced() {
                self.revoke_for_pressure(pages_wanted, now_ms);
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

    /// Starts revoking held maps, least recently used first, until their
    /// pages cover `pages` (or nothing is left to revoke).
    fn revoke_for_pressure(&mut self, pages: u64, now_ms: u64) {
        let mut covered = 0;
        while covered < pages.max(1) {
            let Some(id) = self.lru.values().copied().next() else {
                break;
            };
            covered += self.maps.get(&id).map_or(0, |m| m.page_count as u64).max(1);
            self.revoke(id, now_ms);
        }
    }

    /// Starts revoking live map `id`: new hints no longer find it, its table
    /// is marked dead, and every holder is asked to let go. Returns whether
    /// it was dropped at once (nobody held it).
    pub fn revoke(&mut self, id: MapId, now_ms: u64) -> bool {
        let Some(m) = self.maps.get_mut(&id) else {
            return false;
        };
        if m.state != MapState::Live {
            return false;
        }
        let waiting = m.holders.clone();
        m.state = MapState::Revoking {
            waiting: waiting.clone(),
            deadline_ms: now_ms.saturating_add(self.cfg.ack_timeout_ms),
        };
        let (offset, key, tick) = (m.table_offset, m.key, m.lru_tick);
        self.lru.remove(&tick);
        if self.by_key.get(&key) == Some(&id) {
            self.by_key.remove(&key);
        }
        self.pool.revoke_table(offset);
        if waiting.is_empty() {
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
                v.holds.remove(&id);
                v.pages_mapped -= m.page_count as u64;
                self.counts.pages_mapped -= m.page_count as u64;
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
        if self.indexed[f as usize] {
            let h = page_hash(self.pool.frame(f));
            if self.index.get(&h) == Some(&f) {
                self.index.remove(&h);
            }
            self.indexed[f as usize] = false;
        }
        self.pool.discard_frame(f);
        self.free.push(f);
        self.used -= 1;
        self.pool.set_frames_used(self.used);
    }

    /// Pool-wide numbers.
    pub fn counts(&self) -> StoreCounts {
        StoreCounts {
            frames_used: self.used,
            file_maps: self.maps.len() as u64,
            ..self.counts
        }
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

    /// Loads a whole in-memory file in one go (tests, small files).
    pub fn load_bytes(
        &mut self,
        key: FileKey,
        label: MapLabel,
        data: &[u8],
        now_ms: u64,
    ) -> Result<TableRef, StoreError> {
        if let Some(id) = self.lookup(&key) {
            let m = &self.maps[&id];
            return Ok(self.location(id, m));
        }
        let id = self.begin_load(key, label, now_ms)?;
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
