//! Taking over the pool of a previous agent in place, without rewriting any
//! frame a VM may still map.
//!
//! The pool holds every frame table a previous agent published, and a table
//! slot is only reused after the map it described was dropped (every holder
//! acknowledged, or was cut off). So the tables that are still intact name
//! every frame a running or paused VM may map:
//! - a *live* table (magic set) is a map VMs may hold and new answers may
//!   name; it is adopted as a live map, table untouched;
//! - a *dead* table (magic 0, rest intact) is a map being revoked, or dropped
//!   with its slot not reused yet; a VM that missed the revocation (the old
//!   agent died with the event still queued) may still map its frames.
//!
//! [`scan_tables`] finds both kinds (treating every byte as possibly corrupt)
//! and [`PageStore::adopt`] rebuilds the store from them: frames and their
//! reference counts, the content index (by hashing the frames), the table
//! space, and the next map id (above the largest found, so no id is reused in
//! this pool generation).
//!
//! The host does not know which VM holds which adopted map. Every frame named
//! by any found table is *pinned* (one extra reference) until every VM that
//! existed at the restart has re-announced its holds ([`OP_HOLD`] per map,
//! then [`OP_HOLDS_DONE`]) or was removed: a re-announced live map becomes an
//! ordinary hold; a re-announced map that is not live any more is revoked
//! for that VM, and the pins stay until it acknowledged. Adopted maps stay
//! out of the LRU while pinned (pressure neither evicts nor revokes them);
//! once the pins go, adopted maps nobody re-announced are dropped (no hint
//! can find them: the agent does not know their file key).
//!
//! [`OP_HOLD`]: vmdedup_protocol::abi::OP_HOLD
//! [`OP_HOLDS_DONE`]: vmdedup_protocol::abi::OP_HOLDS_DONE

use std::collections::{BTreeMap, BTreeSet};

use vmdedup_protocol::pool::{
    pages_for_size, table_bytes, PoolGeometry, TableHeader, TableRef, FRAME_ENTRY_SIZE,
    MAX_TABLE_PAGES, TABLE_ALIGN, TABLE_HEADER_SIZE, TABLE_MAGIC,
};

use super::{
    page_hash, FileKey, FileMap, MapId, MapLabel, MapState, PageStore, StoreConfig, StoreEvent,
    TableSpace, VmId,
};
use crate::pool::PoolMemory;

/// A frame table found in the pool's table area.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoundTable {
    /// Byte offset of the table in the pool.
    pub offset: u64,
    /// Its header as found (magic included).
    pub header: TableHeader,
    /// Its frame numbers (all inside the frame area).
    pub frames: Vec<u32>,
}

impl FoundTable {
    /// Whether the table was live (magic set) rather than revoked.
    pub fn live(&self) -> bool {
        self.header.magic == TABLE_MAGIC
    }

    fn span(&self) -> u64 {
        table_bytes(self.header.page_count)
    }
}

/// Finds every intact frame table of `geom`'s generation in `pool` (the whole
/// region, as mapped): live or revoked, with a sane header, lying wholly in
/// the table area, with every frame number in range and a matching checksum.
/// Tables that overlap another one are left out (a live table wins over a
/// dead one, then the larger map id). Never panics, whatever `pool` holds.
pub fn scan_tables(geom: &PoolGeometry, pool: &[u8]) -> Vec<FoundTable> {
    let start = geom.table_area_offset;
    let end = start
        .saturating_add(geom.table_area_size)
        .min(pool.len() as u64);
    let mut found = Vec::new();
    let mut off = start;
    while off.saturating_add(TABLE_HEADER_SIZE as u64) <= end {
        if let Some(t) = table_at(geom, pool, off, end) {
            found.push(t);
        }
        off = off.saturating_add(TABLE_ALIGN);
    }
    // Overlaps: keep the best candidates first.
    found.sort_by(|a, b| {
        b.live()
            .cmp(&a.live())
            .then(b.header.file_map_id.cmp(&a.header.file_map_id))
    });
    let mut space = TableSpace::new(start, end.saturating_sub(start));
    let mut ids = BTreeSet::new();
    found.retain(|t| ids.insert(t.header.file_map_id) && space.reserve(t.offset, t.span()));
    found.sort_by_key(|t| t.offset);
    found
}

/// The intact table at `off`, if there is one (`end`: end of the table area).
fn table_at(geom: &PoolGeometry, pool: &[u8], off: u64, end: u64) -> Option<FoundTable> {
    let o = usize::try_from(off).ok()?;
    let hb: &[u8; TABLE_HEADER_SIZE] = pool
        .get(o..o.checked_add(TABLE_HEADER_SIZE)?)?
        .try_into()
        .ok()?;
    let h = TableHeader::from_le_bytes(hb);
    if (h.magic != TABLE_MAGIC && h.magic != 0)
        || h.file_map_id == 0
        || h.pool_generation != geom.generation
        || h.flags != 0
        || h.reserved != [0; 2]
        || h.page_count > MAX_TABLE_PAGES
        || pages_for_size(h.file_size) != h.page_count as u64
        || h.page_count as u64 > geom.frame_count
    {
        return None;
    }
    if off.checked_add(table_bytes(h.page_count))? > end {
        return None;
    }
    let fo = o.checked_add(TABLE_HEADER_SIZE)?;
    let len = usize::try_from(h.page_count as u64 * FRAME_ENTRY_SIZE).ok()?;
    let bytes = pool.get(fo..fo.checked_add(len)?)?;
    let mut sum = h.checksum_start();
    let mut frames = Vec::with_capacity(h.page_count as usize);
    for w in bytes.chunks_exact(FRAME_ENTRY_SIZE as usize) {
        let f = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
        if f as u64 >= geom.frame_count {
            return None;
        }
        sum.update_u32(f);
        frames.push(f);
    }
    if sum.finish() != h.checksum {
        return None;
    }
    Some(FoundTable {
        offset: off,
        header: h,
        frames,
    })
}

impl TableSpace {
    /// Takes `[off, off + len)` out of the free space if all of it is free.
    pub(super) fn reserve(&mut self, off: u64, len: u64) -> bool {
        let Some(end) = off.checked_add(len) else {
            return false;
        };
        let Some((&start, &have)) = self.free.range(..=off).next_back() else {
            return false;
        };
        let have_end = start.saturating_add(have);
        if have_end < end || len == 0 {
            return false;
        }
        self.free.remove(&start);
        if off > start {
            self.free.insert(start, off - start);
        }
        if have_end > end {
            self.free.insert(end, have_end - end);
        }
        true
    }
}

/// What [`PageStore::adopt`] found and kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AdoptReport {
    /// Live tables adopted as live maps.
    pub live_maps: u64,
    /// Revoked but intact tables whose frames stay pinned.
    pub dead_tables: u64,
    /// Distinct frames pinned until the VMs re-announced.
    pub frames_pinned: u64,
    /// Frames of live maps hashed into the content index.
    pub frames_indexed: u64,
    /// The first map id the new agent hands out.
    pub next_map_id: MapId,
}

/// Frames pinned after an adoption, and what releases them.
#[derive(Debug)]
pub(super) struct Pins {
    /// The token the re-announce notice carries ([`PageStore::holds_done`]).
    token: u64,
    /// VMs that existed at the restart and have not re-announced yet.
    waiting: BTreeSet<VmId>,
    /// Re-announced maps that are not live: revoked for that VM, pinned
    /// until it acknowledges, by the deadline of that acknowledgement (set
    /// at the first tick after the revocation: the store has no clock of
    /// its own). A VM that lets it pass is cut off, as for any revocation.
    owed: BTreeMap<(VmId, MapId), Option<u64>>,
    /// VMs whose ring was started over while they owed or were awaited:
    /// pinned until they attach the new ring (having dropped every map).
    reinstated: BTreeSet<VmId>,
    /// Where dead tables were, by map id (for the revocation event).
    dead: BTreeMap<MapId, TableRef>,
    /// Every pinned frame, once each.
    frames: Vec<u32>,
    /// The first map id of the new agent: maps below it are the previous
    /// agent's.
    first_new_id: MapId,
    /// The adopted live maps.
    maps: Vec<MapId>,
}

impl PageStore {
    /// A store over a pool a previous agent served from, rebuilt from the
    /// tables in it (see the module documentation). `expect` are the VMs that
    /// existed at the restart: the pins stay until each of them called
    /// [`holds_done`](Self::holds_done) or was removed. `token` is what the
    /// re-announce notice carries (never 0). No frame and no table is written.
    pub fn adopt(
        pool: PoolMemory,
        cfg: StoreConfig,
        expect: impl IntoIterator<Item = VmId>,
        token: u64,
    ) -> (PageStore, AdoptReport) {
        let geom = *pool.geometry();
        let found = scan_tables(&geom, pool.bytes());
        let mut s = PageStore::new(pool, cfg);
        let mut report = AdoptReport::default();
        let mut pins = Pins {
            token: token.max(1),
            waiting: expect.into_iter().collect(),
            owed: BTreeMap::new(),
            reinstated: BTreeSet::new(),
            dead: BTreeMap::new(),
            frames: Vec::new(),
            maps: Vec::new(),
            first_new_id: MapId::MAX,
        };
        let top = found
            .iter()
            .flat_map(|t| t.frames.iter().copied())
            .max()
            .map_or(0, |f| f + 1);
        s.fresh = top;
        s.refs = vec![0; top as usize];
        s.frame_hash = vec![None; top as usize];
        let mut max_id = 0;
        for t in found {
            let id = t.header.file_map_id;
            max_id = max_id.max(id);
            let reserved = s.tables.reserve(t.offset, t.span());
            debug_assert!(reserved, "scan_tables leaves no overlaps");
            for &f in &t.frames {
                let r = &mut s.refs[f as usize];
                if *r == 0 {
                    // The pin: one reference until the VMs re-announced.
                    *r = 1;
                    pins.frames.push(f);
                }
                // The map's own reference.
                *r += 1;
            }
            if !t.live() {
                report.dead_tables += 1;
                pins.dead.insert(
                    id,
                    TableRef {
                        file_map_id: id,
                        offset: t.offset,
                        page_count: t.header.page_count,
                        file_size: t.header.file_size,
                        map_generation: geom.generation,
                    },
                );
                // Its slot stays taken until the pins go.
                pins.maps.push(id);
                s.maps.insert(
                    id,
                    adopted_map(
                        id,
                        &t,
                        MapState::Revoking {
                            waiting: BTreeSet::new(),
                            deadline_ms: u64::MAX,
                        },
                    ),
                );
                continue;
            }
            report.live_maps += 1;
            pins.maps.push(id);
            s.maps.insert(id, adopted_map(id, &t, MapState::Live));
        }
        // The content index, over the frames live maps use.
        let live_frames: BTreeSet<u32> = s
            .maps
            .values()
            .filter(|m| m.state == MapState::Live)
            .flat_map(|m| m.frames.iter().copied())
            .collect();
        for f in live_frames {
            let h = page_hash(s.pool.frame(f));
            if let std::collections::hash_map::Entry::Vacant(e) = s.index.entry(h) {
                e.insert(f);
                s.frame_hash[f as usize] = Some(h);
                report.frames_indexed += 1;
            }
        }
        // Frames below the highest used one that no table names are free;
        // they are not punched (nothing maps them, and reuse rewrites them).
        s.free = (0..top)
            .rev()
            .filter(|&f| s.refs[f as usize] == 0)
            .collect();
        s.used = u64::from(top) - s.free.len() as u64;
        s.pool.set_frames_used(s.used);
        s.next_id = max_id + 1;
        report.frames_pinned = pins.frames.len() as u64;
        report.next_map_id = s.next_id;
        pins.first_new_id = s.next_id;
        s.pins = Some(pins);
        s.release_pins_if_done();
        (s, report)
    }

    /// Whether frames are still pinned after an adoption, and the VMs that
    /// have not re-announced yet.
    pub fn pinned(&self) -> Option<(u64, Vec<VmId>)> {
        self.pins
            .as_ref()
            .map(|p| (p.frames.len() as u64, p.waiting.iter().copied().collect()))
    }

    /// `vm` re-announced that it holds map `id` ([`OP_HOLD`]). A live map
    /// becomes an ordinary hold; anything else is revoked for `vm` (and the
    /// pins stay until it acknowledged). Ignored from a VM that is not
    /// re-announcing.
    ///
    /// [`OP_HOLD`]: vmdedup_protocol::abi::OP_HOLD
    pub fn reannounced(&mut self, vm: VmId, id: MapId) {
        let Some(p) = self.pins.as_ref() else {
            return;
        };
        if !p.waiting.contains(&vm) {
            return;
        }
        if id >= p.first_new_id {
            // A map of this agent: its answer was counted as a hold already
            // (the guest announces every map it holds, including ones it got
            // after the restart).
            return;
        }
        if matches!(self.maps.get(&id), Some(m) if m.state == MapState::Live)
            && self.hold(vm, id).is_ok()
        {
            // Out of the LRU while pinned: revoking it under pressure would
            // free nothing (its frames are pinned) and only make the VM drop it.
            if let Some(m) = self.maps.get(&id) {
                self.lru.remove(&m.lru_tick);
            }
            return;
        }
        let generation = self.pool.geometry().generation;
        let Some(p) = self.pins.as_mut() else {
            return;
        };
        let map = p.dead.get(&id).copied().unwrap_or(TableRef {
            file_map_id: id,
            offset: 0,
            page_count: 0,
            file_size: 0,
            map_generation: generation,
        });
        if p.owed.insert((vm, id), None).is_none() {
            self.events.push(StoreEvent::Revoke { vm, map });
        }
    }

    /// `vm` has re-announced every map it holds ([`OP_HOLDS_DONE`] with the
    /// notice's `token`, or 0 when the host saw it start over on a new ring).
    /// Returns whether that was awaited.
    ///
    /// [`OP_HOLDS_DONE`]: vmdedup_protocol::abi::OP_HOLDS_DONE
    pub fn holds_done(&mut self, vm: VmId, token: u64) -> bool {
        let Some(p) = self.pins.as_mut() else {
            return false;
        };
        if token != 0 && token != p.token {
            return false;
        }
        let was = p.waiting.remove(&vm);
        self.release_pins_if_done();
        was
    }

    /// `vm` acknowledged the revocation of `id` it owed after re-announcing
    /// (`Some`), or is gone for good (`None`: it owes nothing and is no
    /// longer awaited). Returns whether that changed anything.
    pub(super) fn pins_forget(&mut self, vm: VmId, id: Option<MapId>) -> bool {
        let Some(p) = self.pins.as_mut() else {
            return false;
        };
        let hit = match id {
            Some(id) => p.owed.remove(&(vm, id)).is_some(),
            None => {
                let owed = p.owed.len();
                p.owed.retain(|&(v, _), _| v != vm);
                p.waiting.remove(&vm) | (p.owed.len() != owed) | p.reinstated.remove(&vm)
            }
        };
        self.release_pins_if_done();
        hit
    }

    /// `vm`'s ring was started over: no acknowledgement of what it owed can
    /// come (no deadline may cut it off again) and it will not re-announce
    /// on the old ring; if it owed or was awaited, the pins stay until it
    /// attaches the new ring ([`pins_reconnected`](Self::pins_reconnected)).
    pub(super) fn pins_reinstated(&mut self, vm: VmId) {
        let Some(p) = self.pins.as_mut() else {
            return;
        };
        let owed = p.owed.len();
        p.owed.retain(|&(v, _), _| v != vm);
        if p.waiting.remove(&vm) | (p.owed.len() != owed) {
            p.reinstated.insert(vm);
        }
    }

    /// `vm` attached its reinstated ring: it maps nothing from before.
    /// Returns whether the pins waited for that.
    pub(super) fn pins_reconnected(&mut self, vm: VmId) -> bool {
        let Some(p) = self.pins.as_mut() else {
            return false;
        };
        let was = p.reinstated.remove(&vm);
        self.release_pins_if_done();
        was
    }

    /// Starts the deadline of every owed acknowledgement that has none yet
    /// and returns the VMs that let one pass (the caller cuts them off).
    pub(super) fn pins_late(&mut self, now_ms: u64) -> BTreeSet<VmId> {
        let timeout = self.cfg.ack_timeout_ms;
        let Some(p) = self.pins.as_mut() else {
            return BTreeSet::new();
        };
        let mut late = BTreeSet::new();
        for (&(vm, _), deadline) in p.owed.iter_mut() {
            match *deadline {
                None => *deadline = Some(now_ms.saturating_add(timeout)),
                Some(d) if d <= now_ms => {
                    late.insert(vm);
                }
                Some(_) => {}
            }
        }
        late
    }

    fn release_pins_if_done(&mut self) {
        if !self
            .pins
            .as_ref()
            .is_some_and(|p| p.waiting.is_empty() && p.owed.is_empty() && p.reinstated.is_empty())
        {
            return;
        }
        let Some(p) = self.pins.take() else { return };
        for id in p.maps {
            let unheld = self.maps.get(&id).map(|m| {
                (
                    m.holders.is_empty(),
                    matches!(&m.state, MapState::Revoking { waiting, .. } if waiting.is_empty()),
                )
            });
            match unheld {
                // Nobody re-announced it: no hint can find it either.
                Some((true, _)) | Some((_, true)) => self.drop_map(id),
                Some((false, _)) => self.touch(id),
                None => {}
            }
        }
        for f in p.frames {
            self.unref_frame(f);
        }
        tracing::info!("adopted frames unpinned: every VM re-announced its maps");
    }
}

fn adopted_map(id: MapId, t: &FoundTable, state: MapState) -> FileMap {
    FileMap {
        // A key no file resolves to: adopted maps are found by id only.
        key: FileKey {
            dev: u64::MAX,
            ino: id,
            size: t.header.file_size,
            mtime_ns: i64::MIN,
        },
        label: MapLabel {
            ns: u32::MAX,
            path: format!("(adopted map {id})"),
        },
        size: t.header.file_size,
        page_count: t.header.page_count,
        frames: t.frames.clone(),
        table_offset: t.offset,
        staging: false,
        requester: None,
        state,
        holders: BTreeSet::new(),
        lru_tick: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::{PoolBacking, PoolSpec};
    use crate::store::tests::{file, key, label, load};
    use crate::store::StoreError;
    use proptest::prelude::*;

    const SIZE: u64 = 1 << 20;

    struct Tmp(std::path::PathBuf);
    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn tmp(tag: &str) -> Tmp {
        let d = std::env::temp_dir().join(format!("vmdedup-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Tmp(d)
    }

    fn spec(t: &Tmp, generation: u64) -> PoolSpec {
        PoolSpec {
            backing: PoolBacking::File {
                path: t.0.join("pool"),
                access: crate::hostfile::FileAccess::PRIVATE,
            },
            size: SIZE,
            table_area: 8192,
            generation,
        }
    }

    fn cfg(budget_frames: u64) -> StoreConfig {
        StoreConfig {
            budget_frames,
            ack_timeout_ms: 1000,
            ..StoreConfig::default()
        }
    }

    fn frames_bytes(s: &PageStore, frames: &[u32]) -> Vec<u8> {
        frames
            .iter()
            .flat_map(|&f| s.pool().frame(f).to_vec())
            .collect()
    }

    /// A previous agent's store: `a` held by VM 1, `b` revoked while VM 1
    /// held it (not acknowledged), `c` loaded and held by nobody.
    fn previous(t: &Tmp) -> (TableRef, TableRef, TableRef) {
        let mut s = PageStore::new(PoolMemory::create(&spec(t, 7)).unwrap(), cfg(0));
        s.add_vm(1);
        let a = load(&mut s, 1, "a", 1, 3);
        let b = load(&mut s, 2, "b", 10, 2);
        let c = s
            .load_bytes(key(3, 4096 + 9), label("c"), &file(20, 2)[..4096 + 9], 0)
            .unwrap();
        s.hold(1, a.file_map_id).unwrap();
        s.hold(1, b.file_map_id).unwrap();
        assert!(!s.revoke(b.file_map_id, 0));
        // An empty file has a table too (no frames); it comes last.
        let e = s.load_bytes(key(4, 0), label("empty"), &[], 0).unwrap();
        s.hold(1, e.file_map_id).unwrap();
        (a, b, c)
    }

    #[test]
    fn the_scanner_finds_live_and_revoked_tables_and_nothing_else() {
        let t = tmp("scan");
        let (a, b, c) = previous(&t);
        let p = PoolMemory::adopt_served(&spec(&t, 99)).unwrap().unwrap();
        let found = scan_tables(p.geometry(), p.bytes());
        let ids: Vec<(u64, bool)> = found
            .iter()
            .map(|f| (f.header.file_map_id, f.live()))
            .collect();
        assert_eq!(
            ids,
            vec![
                (a.file_map_id, true),
                (b.file_map_id, false),
                (c.file_map_id, true),
                (c.file_map_id + 1, true)
            ]
        );
        assert!(found[3].frames.is_empty(), "the empty file's table");
        assert_eq!(found[0].offset, a.offset);
        // Another generation's tables are not this pool's.
        let mut g = *p.geometry();
        g.generation += 1;
        assert!(scan_tables(&g, p.bytes()).is_empty());
        // A flipped frame number fails the checksum.
        let mut bytes = p.bytes().to_vec();
        bytes[a.offset as usize + TABLE_HEADER_SIZE] ^= 1;
        let ids: Vec<u64> = scan_tables(p.geometry(), &bytes)
            .iter()
            .map(|f| f.header.file_map_id)
            .collect();
        assert_eq!(ids, vec![b.file_map_id, c.file_map_id, c.file_map_id + 1]);
    }

    #[test]
    fn adoption_rebuilds_the_store_without_writing_and_pins_until_reannounced() {
        let t = tmp("adopt");
        let (a, b, c) = previous(&t);
        let before = std::fs::read(t.0.join("pool")).unwrap();
        let p = PoolMemory::adopt_served(&spec(&t, 99)).unwrap().unwrap();
        // A budget of 8 frames: 7 are taken by the four maps (the empty
        // file has none).
        let (mut s, report) = PageStore::adopt(p, cfg(8), [1, 2], 5);
        assert_eq!(report.live_maps, 3);
        assert_eq!(report.dead_tables, 1);
        assert_eq!(report.frames_pinned, 7);
        assert_eq!(report.next_map_id, c.file_map_id + 2);
        let geom = *s.pool().geometry();
        let frames_at = geom.frame_area_offset as usize;
        assert_eq!(
            &s.pool().bytes()[geom.table_area_offset as usize..],
            &before[geom.table_area_offset as usize..],
            "no table and no frame written"
        );
        assert_eq!(&s.pool().bytes()[..frames_at][..64], &before[..64]);
        let fa = s.frames_of(a.file_map_id).unwrap().to_vec();
        let fb = s.frames_of(b.file_map_id).unwrap().to_vec();
        let (bytes_a, bytes_b) = (frames_bytes(&s, &fa), frames_bytes(&s, &fb));
        assert_eq!(bytes_a, file(1, 3));

        // The same content loaded again dedups against the adopted frames,
        // under a new map id.
        let a2 = load(&mut s, 1, "a", 1, 3);
        assert!(a2.file_map_id > c.file_map_id + 1);
        assert_eq!(s.frames_of(a2.file_map_id).unwrap(), &fa[..]);
        assert_eq!(s.counts().pages_deduplicated, 3);
        // Pinned: a new file finds no room (one frame left), and nothing
        // adopted is evicted or overwritten to make some.
        assert_eq!(
            s.load_bytes(key(9, 3 * 4096), label("new"), &file(30, 3), 0),
            Err(StoreError::PoolFull)
        );
        assert_eq!(frames_bytes(&s, &fa), bytes_a);
        assert_eq!(frames_bytes(&s, &fb), bytes_b);
        assert!(s.frames_of(c.file_map_id).is_some());
        s.take_events();

        s.add_vm(1);
        s.add_vm(2);
        // Re-announces: a live map becomes a hold, the revoked one is
        // revoked again for this VM; a wrong token does not count.
        s.reannounced(1, a.file_map_id);
        s.reannounced(1, b.file_map_id);
        assert_eq!(
            s.take_events(),
            vec![StoreEvent::Revoke {
                vm: 1,
                map: TableRef {
                    map_generation: 7,
                    ..b
                }
            }]
        );
        assert!(!s.holds_done(1, 6));
        assert!(s.holds_done(1, 5));
        assert!(
            s.lru.values().all(|id| *id != a.file_map_id),
            "a re-announced adopted map stays out of the LRU while pinned"
        );
        assert!(s.pinned().is_some(), "VM 2 has not re-announced");
        s.remove_vm(2, 0);
        assert!(s.pinned().is_some(), "VM 1 owes the acknowledgement of b");
        // A hold announced once done does not count.
        s.reannounced(1, c.file_map_id);
        assert!(s.ack(1, b.file_map_id, 0));
        assert!(s.pinned().is_none());
        assert!(
            s.lru.values().any(|id| *id == a.file_map_id),
            "in the LRU again"
        );
        // The dead table and the unclaimed map are gone; `a` is held.
        assert!(s.frames_of(b.file_map_id).is_none());
        assert!(s.frames_of(c.file_map_id).is_none());
        assert_eq!(s.vm_holdings(1).unwrap().maps_held, 1);
        assert_eq!(frames_bytes(&s, &fa), bytes_a);
        // Now there is room.
        load(&mut s, 9, "new", 30, 3);
        assert_eq!(frames_bytes(&s, &fa), bytes_a, "held frames never reused");
    }

    #[test]
    fn an_owed_acknowledgement_has_a_deadline_like_any_revocation() {
        let t = tmp("adopt-owed");
        let (a, b, _) = previous(&t);
        let p = PoolMemory::adopt_served(&spec(&t, 99)).unwrap().unwrap();
        let timeout = cfg(0).ack_timeout_ms;
        let (mut s, _) = PageStore::adopt(p, cfg(0), [1], 5);
        s.add_vm(1);
        s.reannounced(1, a.file_map_id);
        s.reannounced(1, b.file_map_id);
        assert!(s.holds_done(1, 5));
        s.take_events();
        // The deadline starts at the first tick after the revocation.
        s.tick(1_000);
        s.tick(1_000 + timeout - 1);
        assert!(!s.is_cut_off(1), "not late yet");
        assert!(s.pinned().is_some(), "b is owed");
        s.tick(1_000 + timeout);
        assert!(s.is_cut_off(1), "late: cut off, as for any revocation");
        assert_eq!(s.take_events(), vec![StoreEvent::CutOff { vm: 1 }]);
        // Still pinned: the cut-off guest may map the frames until it
        // acknowledges the cut-off, after which it owes nothing.
        assert!(s.pinned().is_some());
        let fa = s.frames_of(a.file_map_id).unwrap().to_vec();
        assert!(s.release_all(1));
        assert!(s.pinned().is_none());
        assert_eq!(s.vm_holdings(1).unwrap().maps_held, 0);
        assert!(!fa.is_empty());
    }

    #[test]
    fn a_reconnected_vm_owes_nothing_it_owed_through_its_old_ring() {
        let t = tmp("adopt-reconnect");
        let (_, b, _) = previous(&t);
        let p = PoolMemory::adopt_served(&spec(&t, 99)).unwrap().unwrap();
        let (mut s, _) = PageStore::adopt(p, cfg(0), [1], 5);
        s.add_vm(1);
        s.reannounced(1, b.file_map_id);
        assert!(s.pinned().is_some());
        s.reinstate_vm(1);
        assert!(
            s.pinned().is_some(),
            "until the guest attaches the new ring"
        );
        for t in [0, 10_000, 20_000] {
            s.tick(t);
        }
        assert!(!s.is_cut_off(1), "no deadline for what the old ring owed");
        assert!(s.vm_reconnected(1), "what it owed and awaited ends");
        assert!(s.pinned().is_none());
    }

    #[test]
    fn with_nobody_to_wait_for_the_pins_go_at_once() {
        let t = tmp("adopt-none");
        let (a, _, _) = previous(&t);
        let p = PoolMemory::adopt_served(&spec(&t, 99)).unwrap().unwrap();
        let (s, _) = PageStore::adopt(p, cfg(0), [], 5);
        assert!(s.pinned().is_none());
        // Nobody can hold the adopted maps: dropped, tables revoked.
        assert!(s.frames_of(a.file_map_id).is_none());
        assert_eq!(s.counts().frames_used, 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Whatever the table area holds, the scanner does not panic, finds
        /// only tables that validate and do not overlap, and adoption keeps
        /// every named frame out of the free list.
        #[test]
        fn a_corrupt_table_area_is_scanned_safely(
            edits in prop::collection::vec((0usize..8192, any::<u8>()), 0..64),
            garbage in prop::collection::vec(any::<u8>(), 0..512),
            at in 0usize..8192,
        ) {
            let t = tmp(&format!("fuzz-{at}"));
            previous(&t);
            let mut p = PoolMemory::adopt_served(&spec(&t, 99)).unwrap().unwrap();
            let base = p.geometry().table_area_offset as usize;
            let mut bytes = p.bytes()[base..base + 8192].to_vec();
            for (i, v) in &edits {
                bytes[*i] = *v;
            }
            let n = garbage.len().min(8192 - at);
            bytes[at..at + n].copy_from_slice(&garbage[..n]);
            p.write_for_test(base as u64, &bytes);
            let geom = *p.geometry();
            let found = scan_tables(&geom, p.bytes());
            let mut last_end = 0;
            for f in &found {
                prop_assert!(f.offset >= last_end, "overlap");
                last_end = f.offset + table_bytes(f.header.page_count);
                prop_assert!(last_end <= geom.table_area_offset + geom.table_area_size);
                prop_assert!(f.frames.iter().all(|&x| (x as u64) < geom.frame_count));
                prop_assert_eq!(f.frames.len() as u32, f.header.page_count);
            }
            let (s, report) = PageStore::adopt(p, cfg(0), [1], 5);
            prop_assert_eq!(report.live_maps + report.dead_tables, found.len() as u64);
            for f in &found {
                for x in &f.frames {
                    prop_assert!(!s.free.contains(x));
                    prop_assert!(s.refs[*x as usize] >= 2);
                }
            }
        }
    }
}
