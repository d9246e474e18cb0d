// SPDX-License-Identifier: GPL-2.0
//! The guest end of the ring region: hints out, answers and events in.
//!
//! The ring protocol itself (attach and validation, staging hints and map
//! operations, reaping answers and events, the doorbell decision) is
//! [`guest`](crate::guest), the very code the host's tests and benchmark run;
//! this file keeps the policy: requests in flight, held maps, the queue of
//! map operations, what falls back and what is counted.
//!
//! Everything in the ring and the pool is written by the host and treated as
//! hostile: indices go through the [`spsc`](crate::spsc) algorithm (loaded
//! once, range-checked), entries and table bytes are copied out with volatile
//! loads before they are decoded and validated, and anything doubtful makes the
//! file fall back to the lower file.
//!
//! Doorbells: when the host poller advertises
//! [`HOST_FLAG_NEED_WAKEUP`](crate::abi::HOST_FLAG_NEED_WAKEUP) after a
//! publish (the fence-and-check of [`guest`](crate::guest)) the client counts
//! a "doorbell needed" and, when the ring is an `ivshmem-doorbell` device,
//! writes its Doorbell register (the host's peer, the ring vector): the write
//! reaches the agent's eventfd and wakes the parked poller. It says so to the
//! host with [`GUEST_FLAG_DOORBELL`](crate::abi::GUEST_FLAG_DOORBELL) before
//! it announces its attachment, and rings once after the announcement so a
//! parked poller sees it. With `ivshmem-plain` there is nothing to ring: the
//! host poller's timed re-check picks the work up.
//!
//! Map operations: after a revocation has been applied (every pool PTE of
//! the file zapped, the answer dropped) the client sends
//! [`OP_ACK_REVOKE`]; when a file lets go of a map on its own (inode
//! evicted, verify mismatch, identity change, an answer nobody wants any
//! more) it sends [`OP_RELEASE`]. Both wait in a bounded queue while the
//! submission ring is full and are retried on the timer; an overflow is
//! counted and left to the host's acknowledgement timeout. Their answers
//! ([`ANSWER_FLAG_MAP_OP`]) are dropped.
//!
//! Cut-off: a VM that did not acknowledge a revocation in time is told with
//! [`HOST_FLAG_CUT_OFF`](crate::abi::HOST_FLAG_CUT_OFF) in the ring header,
//! checked at every events poll whatever the event ring holds. The client
//! zaps every held map without releasing it (the host keeps the frames
//! charged to this VM until it sees the acknowledgement), acknowledges with
//! [`GUEST_FLAG_CUT_OFF_ACK`](crate::abi::GUEST_FLAG_CUT_OFF_ACK), and
//! sends no hints and installs no answer until the host writes a new ring.
//!
//! Re-announce: a host that restarted and took the pool and this ring over
//! in place sends [`NOTICE_REANNOUNCE`]; the maps stay valid, and at the next
//! timer tick (after reaping every answer already published, so a hit the
//! old host sent is not missed) the client queues one [`OP_HOLD`] per held
//! map and then [`OP_HOLDS_DONE`] with the notice's token, over as many ticks
//! as the map-op queue needs. The host rewrites none of the adopted frames
//! before that.
//!
//! Lock order: the lock around this client and the region table
//! before any [`InodeState`] lock. Nothing that can run from memory
//! reclaim (inode eviction) takes the region table lock: eviction only marks
//! the file state and sets [`SWEEP_NEEDED`]; the timer does the rest.
//!
//! Readers and faults do not take the lock around this client: they copy
//! from (or map) pool frames under the file's lock or inside a pool read
//! section (SRCU, see glue.c), and every path here that lets the host reuse
//! frames first drops the map from its file and then waits for the readers
//! ([`Client::sync_readers`], with this lock held and no file lock).

use core::sync::atomic::Ordering;

use kernel::prelude::*;
use kernel::sync::Arc;
use kernel::time::Ktime;

use crate::abi::{
    AnswerStatus, CompletionEntry, EventEntry, SubmissionEntry, ANSWER_FLAG_MAP_OP,
    ANSWER_FLAG_NOTICE_COMING, DOORBELL_HOST_PEER, DOORBELL_RING_VECTOR, EVENT_NOTICE,
    EVENT_REVOKE, FEATURES_KNOWN, HINT_FLAG_NOTIFY_LOADED, HINT_FLAG_POOL_ONLY, MAX_PATH_LEN,
    NOTICE_EVENTS_LOST, NOTICE_HOST_RESTARTING, NOTICE_LOADED, NOTICE_REANNOUNCE, OP_ACK_REVOKE,
    OP_HINT, OP_HOLD, OP_HOLDS_DONE, OP_RELEASE,
};
use crate::ffi;
use crate::file::{FileMap, Ident, InodeState, MissKind, TableKey, SWEEP_NEEDED};
use crate::guest::{self, GuestEnd, StageError};
use crate::mapping::Mapping;
use crate::pool::{PoolGeometry, TableHeader, TableRef, POOL_HEADER_SIZE, TABLE_HEADER_SIZE};
use crate::stats::{self, Counter};

/// Most requests in flight at once (answers still expected).
const PENDING_MAX: usize = 64;
/// A request without an answer after this long is forgotten (its id stays
/// unknown, so a very late answer is dropped and counted).
const PENDING_TIMEOUT_MS: i64 = 2000;
/// Most map operations waiting for room in the submission ring. Beyond that
/// they are dropped (counted): the host cuts off a VM whose acknowledgement
/// does not arrive in time, and frees what a lost release held when the VM
/// is cut off or removed.
const OPS_MAX: usize = 512;

/// Most files answered "loading" waiting for the host's [`NOTICE_LOADED`]
/// at once (the host keeps as many per VM); a newer one takes the oldest
/// one's place.
const LOADING_MAX: usize = 256;
/// A file answered "loading" is forgotten this long after its first hint
/// if its notice did not come (the load failed, or the notice was
/// dropped): a later open hints again as before.
const LOADING_TIMEOUT_MS: i64 = 60_000;

/// How long module unload waits for answers to hints still in flight.
const SHUTDOWN_WAIT_MS: i64 = 50;

/// A request waiting for its answer.
struct Pending {
    id: u64,
    file: Arc<InodeState>,
    sent: Ktime,
    size: u64,
    slot: Option<u32>,
    /// What a new hint needs, kept if the hint asked for a
    /// [`NOTICE_LOADED`] (see [`Loading`]).
    again: Option<Again>,
    /// The hint a [`NOTICE_LOADED`] asked for, with when the first hint
    /// for the file (answered "loading") was sent: its hit drops the lower
    /// pages read meanwhile.
    refetch: Option<Ktime>,
    /// The host's [`NOTICE_LOADED`] for this hint came before its answer
    /// was taken (a small file loads in less time than the answer takes to
    /// be reaped): the answer is followed by the new hint at once.
    noticed: bool,
}

/// What a new hint for a file needs, where no open gives it.
struct Again {
    ns_id: u32,
    ident: Ident,
    path: KVec<u8>,
}

/// A file answered "loading" whose hint asked to be told once the host has
/// it in the pool. When [`NOTICE_LOADED`] names it, the next tick hints
/// again; that hit drops the lower pages the guest read meanwhile, so the
/// file is not kept twice. Nothing is held for it until that hint is
/// answered: a notice that never comes costs an entry until it times out.
struct Loading {
    id: u64,
    file: Arc<InodeState>,
    again: Again,
    /// When the first hint for the file was sent (the refetch keeps it):
    /// what its time to share and its timeout count from.
    sent: Ktime,
    /// The notice came: hint again at the next tick.
    due: bool,
}

/// A file map this guest holds (so a revocation can find its file).
struct Held {
    file_map_id: u64,
    file: Arc<InodeState>,
}

/// A validated connection to the host's ring.
struct Conn {
    end: GuestEnd,
}

/// Map operations ([`OP_ACK_REVOKE`], [`OP_RELEASE`]) not yet published: a
/// FIFO ring over storage allocated once (at the first connection), so
/// queueing never allocates.
///
/// # Invariants
/// `len <= buf.len()` and `head < buf.len()` whenever `buf` is not empty.
struct OpQueue {
    buf: KVec<(u16, u64)>,
    head: usize,
    len: usize,
}

impl OpQueue {
    const fn new() -> Self {
        // INVARIANT: empty.
        OpQueue {
            buf: KVec::new(),
            head: 0,
            len: 0,
        }
    }

    /// Allocates the storage (idempotent).
    fn reserve(&mut self) -> bool {
        !self.buf.is_empty() || self.buf.extend_with(OPS_MAX, (0, 0), GFP_KERNEL).is_ok()
    }

    /// Queues `opcode` for `file_map_id` (0 is no map: ignored).
    fn push(&mut self, opcode: u16, file_map_id: u64) {
        if file_map_id == 0 {
            return;
        }
        let cap = self.buf.len();
        if self.len >= cap {
            stats::inc(Counter::map_ops_dropped);
            return;
        }
        // INVARIANT: `len < cap` here, so one more fits.
        let at = (self.head + self.len).checked_rem(cap).unwrap_or(0);
        if let Some(e) = self.buf.get_mut(at) {
            *e = (opcode, file_map_id);
            self.len += 1;
        }
    }

    /// The `i`th queued operation (0 is the oldest).
    fn get(&self, i: usize) -> Option<(u16, u64)> {
        if i >= self.len {
            return None;
        }
        self.buf
            .get((self.head + i).checked_rem(self.buf.len())?)
            .copied()
    }

    /// Forgets the `n` oldest operations.
    fn pop(&mut self, n: usize) {
        let n = n.min(self.len);
        if n > 0 {
            // INVARIANT: `buf` is not empty when `len > 0`.
            self.head = (self.head + n).checked_rem(self.buf.len()).unwrap_or(0);
            self.len -= n;
        }
    }

    fn clear(&mut self) {
        self.head = 0;
        self.len = 0;
    }
}

/// The guest's view of the pool.
#[derive(Clone, Copy)]
pub(crate) struct PoolView {
    pub(crate) geom: PoolGeometry,
}

/// The ring client state (kept next to the region table, under one lock).
pub(crate) struct Client {
    conn: Option<Conn>,
    next_id: u64,
    pending: KVec<Option<Pending>>,
    /// Files answered "loading" that wait for their notice.
    loading: KVec<Option<Loading>>,
    held: KVec<Option<Held>>,
    pool: Option<PoolView>,
    pool_checked: bool,
    ring_corrupt: bool,
    /// The generation whose indices were found corrupt: the ring is used
    /// again once the host writes another.
    corrupt_generation: Option<u64>,
    ops: OpQueue,
    /// The token of a re-announce notice not answered yet (0: none).
    reannounce: u64,
    /// The next index of `held` to re-announce.
    reannounce_next: usize,
    /// A map was dropped from its file (or a map operation queued) since
    /// the last [`Client::sync_readers`]: readers may still copy from its
    /// frames, so nothing that lets the host reuse frames goes out before
    /// the next one.
    unsynced: bool,
    /// The ring device's Doorbell register (`ivshmem-doorbell`), if any.
    doorbell: Option<ffi::Doorbell>,
    /// The ring device's interrupt reaches the event work.
    irq: bool,
    /// The event work went to sleep without a timer, with
    /// [`GUEST_FLAG_WAITING`](crate::abi::GUEST_FLAG_WAITING) set.
    waiting: bool,
}

/// A copy of `path` (`None` if there is no memory for it: the hint then asks
/// for no notice).
fn copy_path(path: &[u8]) -> Option<KVec<u8>> {
    let mut v = KVec::with_capacity(path.len(), GFP_KERNEL).ok()?;
    v.extend_from_slice(path, GFP_KERNEL).ok()?;
    Some(v)
}

/// A doorbell is due (NEED_WAKEUP was seen after a fence): counted, and rung
/// if the ring has a Doorbell register.
fn doorbell_due(doorbell: &Option<ffi::Doorbell>) {
    stats::inc(Counter::doorbells_needed);
    if let Some(d) = doorbell {
        d.ring(DOORBELL_HOST_PEER, DOORBELL_RING_VECTOR);
        stats::inc(Counter::doorbells_rung);
    }
}

impl Client {
    pub(crate) const fn new() -> Self {
        Client {
            conn: None,
            next_id: 1,
            pending: KVec::new(),
            loading: KVec::new(),
            held: KVec::new(),
            pool: None,
            pool_checked: false,
            ring_corrupt: false,
            corrupt_generation: None,
            ops: OpQueue::new(),
            reannounce: 0,
            reannounce_next: 0,
            unsynced: false,
            doorbell: None,
            irq: false,
            waiting: false,
        }
    }

    /// Uses `doorbell` (the ring device's register, or none) from now on;
    /// `irq`: the device's interrupt reaches the event work.
    pub(crate) fn set_doorbell(&mut self, doorbell: Option<ffi::Doorbell>, irq: bool) {
        self.irq = irq && doorbell.is_some();
        self.doorbell = doorbell;
    }

    /// Gives the doorbell and the interrupt up (the ring is going away, or
    /// the client is being replaced).
    pub(crate) fn take_doorbell(&mut self) -> (Option<ffi::Doorbell>, bool) {
        let irq = core::mem::replace(&mut self.irq, false);
        (self.doorbell.take(), irq)
    }

    /// The client is active again (a hint): it stops waiting for the host's
    /// interrupt and the event work runs on its timer until it is idle.
    fn stop_waiting(&mut self, ring: &Mapping) {
        if !self.waiting {
            return;
        }
        self.waiting = false;
        if let Some(conn) = self.conn.as_ref() {
            conn.end.cancel_wait(ring);
        }
        ffi::tick_soon();
    }

    /// Whether the event work may sleep without its timer: only with the
    /// ring's interrupt, while the host says it raises it, and with nothing
    /// only a timer would retry (queued map operations, a sweep or a
    /// re-announce to finish, test knobs that play a stuck guest). Sets
    /// [`GUEST_FLAG_WAITING`](crate::abi::GUEST_FLAG_WAITING) (the guest half
    /// of the handshake) when it says yes.
    fn may_wait(&mut self, ring: Option<&Mapping>) -> bool {
        if !self.irq
            || self.ops.len > 0
            || self.reannounce != 0
            || self.ring_corrupt
            || SWEEP_NEEDED.load(Ordering::Relaxed)
            || self.loading.iter().flatten().any(|l| l.due)
            || ffi::param(ffi::Param::FaultNoAck) != 0
            || ffi::param(ffi::Param::FaultHoldAnswers) != 0
        {
            return false;
        }
        let (Some(conn), Some(ring)) = (self.conn.as_mut(), ring) else {
            return false;
        };
        if !conn.end.announce_wait(ring) {
            return false;
        }
        self.waiting = true;
        stats::inc(Counter::waits);
        true
    }

    /// Waits for every pool read section that may still copy from a frame
    /// of a map dropped since the last call (one wait for the whole batch).
    /// Called, with the link's lock held and no file lock, before the host
    /// is told anything that lets it reuse frames: acknowledgements and
    /// releases ([`Client::flush_ops`]), the cut-off acknowledgement, the
    /// announce of a new ring; [`crate::link::Link::detach`] waits before
    /// the region is unmapped. Every drop happens under the file's lock
    /// before this is called, and a reader looks a map up under that lock
    /// inside its section: see glue.c for the whole argument.
    pub(crate) fn sync_readers(&mut self) {
        if core::mem::take(&mut self.unsynced) {
            ffi::pool_sync();
        }
    }

    /// The validated pool geometry, read once from the pool header.
    pub(crate) fn pool_view(&mut self, pool: Option<&Mapping>) -> Option<PoolView> {
        if !self.pool_checked {
            let pool = pool?;
            self.pool_checked = true;
            let mut b = [0u8; POOL_HEADER_SIZE];
            if !pool.read_bytes(0, &mut b) {
                return None;
            }
            match PoolGeometry::from_header_bytes(&b, pool.len() as u64) {
                Ok(geom) => self.pool = Some(PoolView { geom }),
                Err(_) => {
                    pr_info!("pool header does not validate: serving every file from lower\n")
                }
            }
        }
        self.pool
    }

    /// Connects (or reconnects after a host restart). Returns whether a ring is usable.
    fn connect(&mut self, ring: Option<&Mapping>) -> bool {
        let Some(ring) = ring else {
            self.disconnect();
            return false;
        };
        if ring.len() < core::mem::size_of::<crate::abi::RegionPrefix>() {
            self.disconnect();
            return false;
        }
        let generation = guest::ring_generation(ring);
        if let Some(c) = &self.conn {
            if generation == Some(c.end.generation()) && !self.ring_corrupt {
                return true;
            }
            stats::inc(Counter::generation_changes);
            self.disconnect();
        }
        if self.ring_corrupt && generation.is_some() && generation != self.corrupt_generation {
            // The host wrote a new ring over the corrupt one.
            pr_info!("ring re-initialised by the host: attaching again\n");
            self.ring_corrupt = false;
            self.corrupt_generation = None;
        }
        if generation.is_none() || self.ring_corrupt {
            return false;
        }
        let Ok(end) = GuestEnd::attach(ring) else {
            return false;
        };
        if !self.ops.reserve() {
            return false;
        }
        while self.pending.len() < PENDING_MAX {
            if self.pending.push(None, GFP_KERNEL).is_err() {
                return false;
            }
        }
        while self.loading.len() < LOADING_MAX {
            if self.loading.push(None, GFP_KERNEL).is_err() {
                return false;
            }
        }
        let layout = end.layout();
        pr_info!(
            "ring connected: generation {}, {} submission / {} completion / {} event entries\n",
            end.generation(),
            layout.sq.entries,
            layout.cq.entries,
            layout.eq.entries
        );
        // Every map of an older ring was dropped (`disconnect` above, or
        // before the ring went away): the host may release what this VM held
        // through it once it sees this, so no reader may still copy from it.
        self.sync_readers();
        end.set_rings_doorbell(ring, self.doorbell.is_some());
        end.announce(ring, FEATURES_KNOWN);
        if self.doorbell.is_some() {
            // A parked poller learns of the attachment now, not at its
            // safety timeout.
            doorbell_due(&self.doorbell);
        }
        self.conn = Some(Conn { end });
        true
    }

    /// Whether the host cut this VM off on the current ring.
    fn cut_off(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| c.end.is_cut_off())
    }

    /// Applies [`HOST_FLAG_CUT_OFF`](crate::abi::HOST_FLAG_CUT_OFF) the first
    /// time it is seen on this ring: zaps every held map (no release: the
    /// host keeps them charged until it sees the acknowledgement), forgets
    /// queued map operations, then acknowledges.
    fn check_cut_off(&mut self, ring: &Mapping) {
        let news = self.conn.as_mut().is_some_and(|c| c.end.cut_off_news(ring));
        if !news {
            return;
        }
        pr_warn!(
            "cut off by the host: every file is read from lower until the ring is reinstated\n"
        );
        stats::inc(Counter::cut_offs);
        // `drop_map` zaps every PTE of the file under its lock and the fault
        // path re-checks the map under that lock: after this no page table
        // maps a frame of these maps.
        self.revoke_all(false);
        self.ops.clear();
        // The host drops every map of this VM when it sees the
        // acknowledgement: no reader may still copy from their frames.
        self.sync_readers();
        if let Some(conn) = self.conn.as_ref() {
            if conn.end.acknowledge_cut_off(ring) {
                doorbell_due(&self.doorbell);
            }
        }
    }

    /// Forgets the connection: every request is dropped and every file map
    /// falls back to lower (its frames belonged to the old host, which
    /// forgets what this VM held: nothing is acknowledged or released).
    fn disconnect(&mut self) {
        if self.conn.take().is_some() {
            pr_info!(
                "ring disconnected: every file falls back to lower until the host answers again\n"
            );
        }
        for p in self.pending.iter_mut() {
            if let Some(p) = p.take() {
                p.file.clear_pending();
            }
        }
        // Their notices would name requests of the old ring.
        for l in self.loading.iter_mut() {
            *l = None;
        }
        self.revoke_all(false);
        self.ops.clear();
        self.reannounce = 0;
        self.reannounce_next = 0;
        // The pool may have changed under the same device (a new pool file
        // with a new generation, or one initialised after a late start):
        // read its header again before trusting any answer.
        self.pool_checked = false;
        self.pool = None;
    }

    /// A region goes away: drops every request and held map (zapping their
    /// PTEs) without telling the host.
    pub(crate) fn reset(&mut self) {
        self.disconnect();
    }

    /// Drops every held map (zapping its PTEs). With `release`, tells the
    /// host each one is let go (events were lost: the revocations this VM
    /// owes are unknown, and a release settles them as an acknowledgement
    /// would).
    fn revoke_all(&mut self, release: bool) {
        for h in self.held.iter_mut() {
            if let Some(h) = h.take() {
                if h.file.drop_map(h.file_map_id) {
                    stats::inc(Counter::fallbacks);
                }
                self.unsynced = true;
                if release {
                    self.ops.push(OP_RELEASE, h.file_map_id);
                }
            }
        }
    }

    /// Publishes queued map operations while the submission ring has room.
    fn flush_ops(&mut self, ring: Option<&Mapping>) {
        if self.ops.len == 0 {
            return;
        }
        if self.cut_off() {
            // The host dropped everything this VM held when it saw the
            // acknowledgement: nothing to release or acknowledge.
            self.ops.clear();
            return;
        }
        let Some(ring) = ring else { return };
        if self.conn.is_none() {
            return;
        }
        // The maps these operations name were dropped from their files
        // before they were queued.
        self.sync_readers();
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let mut written = 0u32;
        for (opcode, map_id) in (0..self.ops.len).map_while(|i| self.ops.get(i)) {
            match conn.end.stage_map_op(ring, self.next_id, opcode, map_id) {
                Ok(()) => {}
                Err(StageError::Corrupt(_)) => {
                    self.corrupt();
                    return;
                }
                Err(_) => break,
            }
            self.next_id = self.next_id.wrapping_add(1).max(1);
            match opcode {
                OP_ACK_REVOKE => stats::inc(Counter::acks_sent),
                OP_RELEASE => stats::inc(Counter::releases_sent),
                _ => {}
            }
            written += 1;
        }
        if written == 0 {
            stats::inc(Counter::map_ops_deferred);
            return;
        }
        let (_, doorbell) = conn.end.publish(ring);
        self.ops.pop(written as usize);
        if self.ops.len > 0 {
            stats::inc(Counter::map_ops_deferred);
        }
        if doorbell {
            doorbell_due(&self.doorbell);
        }
    }

    /// Releases every held map its file no longer uses (see [`SWEEP_NEEDED`]).
    fn sweep(&mut self) {
        if !SWEEP_NEEDED.swap(false, Ordering::AcqRel) {
            return;
        }
        for h in self.held.iter_mut() {
            if h.as_ref().is_some_and(|h| !h.file.uses_map(h.file_map_id)) {
                if let Some(h) = h.take() {
                    // Dropped from its file already; readers may still copy.
                    self.unsynced = true;
                    self.ops.push(OP_RELEASE, h.file_map_id);
                }
            }
        }
    }

    /// Sends a hint for `file`. Returns whether it was published.
    pub(crate) fn submit(
        &mut self,
        ring: Option<&Mapping>,
        file: &Arc<InodeState>,
        ns_id: u32,
        ident: &Ident,
        path: &[u8],
    ) -> bool {
        self.send_hint(ring, file, ns_id, ident, path, None)
    }

    /// [`Client::submit`]; `refetch`: the hint a [`NOTICE_LOADED`] asked
    /// for, with when the first one was sent (it asks for no notice
    /// itself, and is answered from the pool alone:
    /// [`HINT_FLAG_POOL_ONLY`]).
    fn send_hint(
        &mut self,
        ring: Option<&Mapping>,
        file: &Arc<InodeState>,
        ns_id: u32,
        ident: &Ident,
        path: &[u8],
        refetch: Option<Ktime>,
    ) -> bool {
        self.expire();
        if !self.connect(ring) {
            stats::inc(Counter::hints_skipped_no_host);
            return false;
        }
        let Some(ring) = ring else { return false };
        self.stop_waiting(ring);
        self.poll_events(Some(ring));
        self.sweep();
        self.flush_ops(Some(ring));
        self.reclaim_slots(ring);
        if self.cut_off() {
            stats::inc(Counter::hints_skipped_cut_off);
            return false;
        }
        let Some(idx) = self.pending.iter().position(|p| p.is_none()) else {
            stats::inc(Counter::hints_skipped_ring_full);
            return false;
        };
        let Ok(path_len) = u16::try_from(path.len()) else {
            stats::inc(Counter::hints_skipped_path);
            return false;
        };
        if path.is_empty() || path.len() > MAX_PATH_LEN as usize {
            stats::inc(Counter::hints_skipped_path);
            return false;
        }
        let Some(conn) = self.conn.as_mut() else {
            return false;
        };
        let id = self.next_id;
        let mut entry = SubmissionEntry {
            request_id: id,
            opcode: OP_HINT,
            path_len,
            namespace_id: ns_id,
            file_size: ident.size,
            mtime_ns: ident.mtime_ns,
            ctime_ns: ident.ctime_ns,
            inode: ident.ino,
            ..SubmissionEntry::default()
        };
        if let Some(fp) = &ident.fingerprint {
            entry.set_fingerprint(fp);
        }
        // If the host offers it, a "loading" answer is followed by a notice
        // once the file is in the pool; a new hint then needs the path,
        // which no open will give again.
        let again = if refetch.is_none() && conn.end.loaded_notices() {
            copy_path(path).map(|path| Again {
                ns_id,
                ident: *ident,
                path,
            })
        } else {
            None
        };
        if again.is_some() {
            entry.flags |= HINT_FLAG_NOTIFY_LOADED;
        }
        if refetch.is_some() {
            // Only to take what was just loaded: if it is gone again, the
            // pool has no room for it, and another load would only evict
            // another file (the host drops the flag if it does not offer
            // it).
            entry.flags |= HINT_FLAG_POOL_ONLY;
        }
        let slot = match conn.end.stage_hint(ring, entry, path) {
            Ok(slot) => slot,
            Err(StageError::Full) => {
                stats::inc(Counter::hints_skipped_ring_full);
                return false;
            }
            Err(StageError::Corrupt(_)) => {
                self.corrupt();
                return false;
            }
            Err(StageError::NoSlot | StageError::PathTooLong) => {
                stats::inc(Counter::hints_skipped_path);
                return false;
            }
            Err(StageError::Unmapped) => return false,
        };
        let (_, doorbell) = conn.end.publish(ring);
        if doorbell {
            doorbell_due(&self.doorbell);
        }
        self.next_id = self.next_id.wrapping_add(1).max(1);
        if let Some(p) = self.pending.get_mut(idx) {
            *p = Some(Pending {
                id,
                file: file.clone(),
                sent: Ktime::ktime_get(),
                size: ident.size,
                slot,
                again,
                refetch,
                noticed: false,
            });
        }
        stats::inc(Counter::hints_sent);
        true
    }

    /// Keeps `l` until its notice comes, in a free entry or in place of the
    /// one whose first hint is oldest.
    fn await_load(&mut self, l: Loading) {
        let i = match self.loading.iter().position(|e| e.is_none()) {
            Some(i) => i,
            None => {
                let mut oldest = 0;
                for (i, e) in self.loading.iter().enumerate() {
                    let o = self.loading.get(oldest).and_then(|o| o.as_ref());
                    if let (Some(e), Some(o)) = (e, o) {
                        if kernel::time::ktime_ms_delta(o.sent, e.sent) > 0 {
                            oldest = i;
                        }
                    }
                }
                stats::inc(Counter::loading_forgotten);
                oldest
            }
        };
        if let Some(e) = self.loading.get_mut(i) {
            *e = Some(l);
        }
    }

    /// Hints again for every file whose [`NOTICE_LOADED`] came.
    fn refetch(&mut self, ring: Option<&Mapping>) {
        for i in 0..self.loading.len() {
            let due = self
                .loading
                .get(i)
                .is_some_and(|l| l.as_ref().is_some_and(|l| l.due));
            if !due {
                continue;
            }
            let Some(l) = self.loading.get_mut(i).and_then(|l| l.take()) else {
                continue;
            };
            if !l.file.want_refetch(&l.again.ident) {
                // Opened again meanwhile (and hinted), gone, or changed.
                continue;
            }
            let a = &l.again;
            if self.send_hint(ring, &l.file, a.ns_id, &a.ident, &a.path, Some(l.sent)) {
                stats::inc(Counter::refetches);
            } else {
                l.file.clear_pending();
            }
        }
    }

    fn corrupt(&mut self) {
        stats::inc(Counter::ring_corrupt);
        pr_err!("ring indices corrupt: ring disabled until the host re-initialises it\n");
        self.ring_corrupt = true;
        self.corrupt_generation = self.conn.as_ref().map(|c| c.end.generation());
        self.disconnect();
    }

    /// Forgets requests that waited too long.
    fn expire(&mut self) {
        let now = Ktime::ktime_get();
        for p in self.pending.iter_mut() {
            let old = p
                .as_ref()
                .is_some_and(|q| kernel::time::ktime_ms_delta(now, q.sent) > PENDING_TIMEOUT_MS);
            if old {
                if let Some(q) = p.take() {
                    // The host may still read its path slot: it is freed
                    // once `sq_head` has passed the entry.
                    if let (Some(s), Some(conn)) = (q.slot, self.conn.as_mut()) {
                        conn.end.abandon_slot(s);
                    }
                    q.file.clear_pending();
                    stats::inc(Counter::requests_timed_out);
                }
            }
        }
        for l in self.loading.iter_mut() {
            let old = l
                .as_ref()
                .is_some_and(|l| kernel::time::ktime_ms_delta(now, l.sent) > LOADING_TIMEOUT_MS);
            if old {
                *l = None;
                stats::inc(Counter::loading_forgotten);
            }
        }
    }

    /// Frees the path slots of expired requests the host has consumed.
    fn reclaim_slots(&mut self, ring: &Mapping) {
        match self.conn.as_mut().map(|c| c.end.reclaim_slots(ring)) {
            Some(Ok(n)) => stats::add(Counter::slots_reclaimed, n as u64),
            Some(Err(_)) => self.corrupt(),
            None => {}
        }
    }

    /// Whether any request is still waiting.
    pub(crate) fn has_pending(&self) -> bool {
        self.pending.iter().any(|p| p.is_some())
    }

    /// Consumes every available answer and applies it. `late` says whether
    /// the caller is not the open that sent the hint (for the counters).
    pub(crate) fn reap(&mut self, ring: Option<&Mapping>, pool: Option<&Mapping>, late: bool) {
        if !self.connect(ring) {
            return;
        }
        if ffi::param(ffi::Param::FaultHoldAnswers) != 0 {
            // The fault_hold_answers test knob: answers wait in the ring,
            // their requests expire, and they arrive late.
            stats::inc(Counter::answers_held_back);
            return;
        }
        let Some(ring) = ring else { return };
        let n = match self.conn.as_mut().map(|c| c.end.answers(ring)) {
            Some(Ok(n)) => n,
            Some(Err(_)) => {
                self.corrupt();
                return;
            }
            None => return,
        };
        for i in 0..n {
            let Some(conn) = self.conn.as_ref() else {
                return;
            };
            let Some(answer) = conn.end.answer(ring, i) else {
                break;
            };
            self.apply(answer, pool, late);
        }
        if let Some(conn) = self.conn.as_mut() {
            if conn.end.release_answers(ring, n) {
                doorbell_due(&self.doorbell);
            }
        }
    }

    fn apply(&mut self, a: CompletionEntry, pool: Option<&Mapping>, late: bool) {
        if a.flags & ANSWER_FLAG_MAP_OP != 0 {
            // The answer to an acknowledgement or a release: nothing to do.
            stats::inc(Counter::map_op_answers);
            if AnswerStatus::from_u16(a.status) != Some(AnswerStatus::Hit) {
                stats::inc(Counter::map_ops_refused);
            }
            return;
        }
        let Some(p) = self
            .pending
            .iter_mut()
            .find(|p| p.as_ref().is_some_and(|q| q.id == a.request_id))
        else {
            stats::inc(Counter::answers_unknown);
            // A hit nobody waits for any more (the request timed out): the
            // host counts this VM as a holder, so let go of it.
            if AnswerStatus::from_u16(a.status) == Some(AnswerStatus::Hit) {
                self.ops.push(OP_RELEASE, a.file_map_id);
            }
            return;
        };
        let Some(p) = p.take() else { return };
        let rtt_ns = (Ktime::ktime_get() - p.sent).to_ns();
        stats::record_hint_rtt(u64::try_from(rtt_ns / 1000).unwrap_or(0));
        if let (Some(s), Some(conn)) = (p.slot, self.conn.as_mut()) {
            conn.end.free_slot(s);
        }
        if late && p.refetch.is_none() {
            stats::inc(Counter::answers_late);
        }
        if self.cut_off() {
            // Cut off: nothing is installed (a hit answered before the
            // cut-off is charged to this VM until the acknowledgement,
            // which has been given: no release).
            stats::inc(Counter::answers_cut_off);
            p.file.set_miss(MissKind::Retry);
            return;
        }
        let kind = match AnswerStatus::from_u16(a.status) {
            Some(AnswerStatus::Hit) => {
                match self.validate_hit(&a, p.size, pool) {
                    Some(map) => {
                        let id = map.file_map_id;
                        if p.file.install(map) {
                            self.hold(id, &p.file);
                            stats::inc(Counter::answers_hit);
                            if let Some(first) = p.refetch {
                                // What was read from lower while the host
                                // loaded it: the pool serves it now.
                                stats::inc(Counter::refetch_hits);
                                let ms = (Ktime::ktime_get() - first).to_ms();
                                stats::record_loaded_share(u64::try_from(ms).unwrap_or(0));
                                let dropped = p.file.drop_lower_cache();
                                stats::add(Counter::lower_pages_dropped, dropped);
                            }
                        } else {
                            // The file no longer wants it (evicted, lower
                            // for good, identity changed).
                            self.ops.push(OP_RELEASE, id);
                        }
                    }
                    None => {
                        stats::inc(Counter::answers_malformed);
                        p.file.set_miss(MissKind::Retry);
                        // The host may count this VM as a holder: let go.
                        self.ops.push(OP_RELEASE, a.file_map_id);
                    }
                }
                return;
            }
            Some(AnswerStatus::Loading) => {
                stats::inc(Counter::answers_miss_loading);
                // Kept only if the host says a notice will come (it
                // queued a load it will tell us about).
                let coming = a.flags & ANSWER_FLAG_NOTICE_COMING != 0;
                if let Some(again) = p.again.filter(|_| coming) {
                    self.await_load(Loading {
                        id: p.id,
                        file: p.file.clone(),
                        again,
                        sent: p.refetch.unwrap_or(p.sent),
                        due: p.noticed,
                    });
                }
                MissKind::Retry
            }
            Some(AnswerStatus::NotFound) => {
                stats::inc(Counter::answers_miss_not_found);
                MissKind::Final
            }
            Some(AnswerStatus::IdentityMismatch) => {
                stats::inc(Counter::answers_miss_identity);
                MissKind::Final
            }
            Some(AnswerStatus::HostRestarting) | Some(AnswerStatus::HostError) => {
                stats::inc(Counter::answers_miss_other);
                MissKind::Retry
            }
            _ => {
                stats::inc(Counter::answers_miss_other);
                MissKind::Final
            }
        };
        p.file.set_miss(kind);
    }

    fn hold(&mut self, file_map_id: u64, file: &Arc<InodeState>) {
        let entry = Held {
            file_map_id,
            file: file.clone(),
        };
        if let Some(free) = self.held.iter_mut().find(|h| h.is_none()) {
            *free = Some(entry);
        } else if self.held.push(Some(entry), GFP_KERNEL).is_err() {
            // Untracked maps could not be revoked: refuse to use it.
            file.drop_map(file_map_id);
            stats::inc(Counter::fallbacks);
            self.unsynced = true;
            self.ops.push(OP_RELEASE, file_map_id);
        }
    }

    /// Checks a hit against the pool and copies its frame table out.
    fn validate_hit(
        &mut self,
        a: &CompletionEntry,
        size: u64,
        pool: Option<&Mapping>,
    ) -> Option<FileMap> {
        let view = self.pool_view(pool)?;
        let pool = pool?;
        if a.flags != 0 || a.reserved != [0; 2] || a.file_size != size {
            return None;
        }
        let r = TableRef {
            offset: a.table_offset,
            page_count: a.page_count,
            file_map_id: a.file_map_id,
            file_size: a.file_size,
            map_generation: a.map_generation,
        };
        let (frames_off, _) = view.geom.table_span(&r).ok()?;
        let mut hb = [0u8; TABLE_HEADER_SIZE];
        if !pool.read_bytes(usize::try_from(a.table_offset).ok()?, &mut hb) {
            return None;
        }
        let header = TableHeader::from_le_bytes(&hb);
        let mut verifier = view.geom.check_table_header(&r, &header).ok()?;
        let mut frames = KVVec::with_capacity(a.page_count as usize, GFP_KERNEL).ok()?;
        let mut chunk = [0u8; 256];
        let mut off = usize::try_from(frames_off).ok()?;
        let mut left = a.page_count as usize * 4;
        while left > 0 {
            let n = left.min(chunk.len());
            let buf = chunk.get_mut(..n)?;
            if !pool.read_bytes(off, buf) {
                return None;
            }
            verifier.update(buf).ok()?;
            for w in buf.chunks_exact(4) {
                frames
                    .push(u32::from_le_bytes([w[0], w[1], w[2], w[3]]), GFP_KERNEL)
                    .ok()?;
            }
            off += n;
            left -= n;
        }
        verifier.finish().ok()?;
        // The table may have been revoked, and its slot even reused, while
        // we copied it.
        let key = TableKey {
            offset: a.table_offset,
            file_map_id: a.file_map_id,
            pool_generation: header.pool_generation,
        };
        if !key.live(pool) {
            return None;
        }
        Some(FileMap {
            file_map_id: a.file_map_id,
            table_offset: a.table_offset,
            pool_generation: header.pool_generation,
            file_size: a.file_size,
            frames,
            window: pool.window(),
            geom: view.geom,
        })
    }

    /// Applies every pending event (revocations, notices).
    pub(crate) fn poll_events(&mut self, ring: Option<&Mapping>) {
        let Some(ring) = ring else { return };
        if self.conn.is_none() {
            return;
        }
        let knob = ffi::param(ffi::Param::FaultNoAck);
        if knob >= 3 {
            // The fault_no_ack=3 test knob plays a frozen guest: it looks
            // at nothing the host says, the cut-off flag included.
            stats::inc(Counter::events_withheld);
            return;
        }
        // First and whatever the event ring holds: the cut-off flag.
        self.check_cut_off(ring);
        if knob == 2 {
            // The fault_no_ack=2 test knob plays a guest stuck for good: it
            // consumes no event, so the host's event ring fills up.
            stats::inc(Counter::events_withheld);
            return;
        }
        let lost_new = self
            .conn
            .as_mut()
            .is_some_and(|c| c.end.events_lost_news(ring));
        if lost_new {
            stats::inc(Counter::revocations);
            self.revoke_all(true);
        }
        let n = match self.conn.as_mut().map(|c| c.end.events(ring)) {
            Some(Ok(n)) => n,
            Some(Err(_)) => {
                self.corrupt();
                return;
            }
            None => return,
        };
        for i in 0..n {
            let Some(conn) = self.conn.as_ref() else {
                return;
            };
            let Some(event) = conn.end.event(ring, i) else {
                break;
            };
            self.event(event);
        }
        if let Some(conn) = self.conn.as_mut() {
            if conn.end.release_events(ring, n) {
                doorbell_due(&self.doorbell);
            }
        }
        // Acknowledgements go out as soon as there is room.
        self.flush_ops(Some(ring));
    }

    fn event(&mut self, e: EventEntry) {
        match (e.kind, e.notice) {
            (EVENT_REVOKE, _) => {
                let mut found = false;
                for h in self.held.iter_mut() {
                    if h.as_ref().is_some_and(|h| h.file_map_id == e.file_map_id) {
                        if let Some(h) = h.take() {
                            // Zaps every PTE of the file under its lock; the
                            // fault path re-checks the map under that lock
                            // before it inserts a pool PFN, so after this
                            // returns no mapping of the map's frames is left.
                            if h.file.drop_map(h.file_map_id) {
                                stats::inc(Counter::fallbacks);
                            }
                            found = true;
                        }
                    }
                }
                stats::inc(if found {
                    Counter::revocations
                } else {
                    Counter::events_unknown
                });
                // Acknowledged even when not held (released already, or an
                // answer that never validated): nothing here maps it, and the
                // host ignores acknowledgements it is not waiting for.
                // Unless the fault_no_ack test knob plays a stuck guest.
                if ffi::param(ffi::Param::FaultNoAck) != 0 {
                    stats::inc(Counter::acks_withheld);
                } else {
                    // Sent after the readers of the dropped map are done.
                    self.unsynced = true;
                    self.ops.push(OP_ACK_REVOKE, e.file_map_id);
                }
            }
            (EVENT_NOTICE, NOTICE_EVENTS_LOST) => {
                stats::inc(Counter::revocations);
                self.revoke_all(true);
            }
            (EVENT_NOTICE, NOTICE_REANNOUNCE) => {
                // Answered at the next tick, after the answers are reaped.
                stats::inc(Counter::reannounce_requests);
                if e.file_map_id != 0 {
                    // A newer notice starts over (a second restart).
                    self.reannounce = e.file_map_id;
                    self.reannounce_next = 0;
                }
            }
            (EVENT_NOTICE, NOTICE_LOADED) => {
                let l = self
                    .loading
                    .iter_mut()
                    .flatten()
                    .find(|l| l.id == e.request_id && !l.due);
                match l {
                    Some(l) => {
                        // Hinted again at the end of this tick.
                        l.due = true;
                        stats::inc(Counter::loaded_notices);
                    }
                    None => {
                        // The answer may not be taken yet: the host
                        // published it before the notice, and the tick
                        // reaps again after the events.
                        let p = self
                            .pending
                            .iter_mut()
                            .flatten()
                            .find(|p| p.id == e.request_id && p.again.is_some());
                        match p {
                            Some(p) => {
                                p.noticed = true;
                                stats::inc(Counter::loaded_notices);
                            }
                            None => stats::inc(Counter::loaded_notices_unknown),
                        }
                    }
                }
            }
            (EVENT_NOTICE, NOTICE_HOST_RESTARTING) => {
                // The generation changes: the new host knows none of these maps.
                stats::inc(Counter::revocations);
                self.revoke_all(false);
                self.ops.clear();
            }
            (EVENT_NOTICE, _) => {}
            _ => stats::inc(Counter::events_unknown),
        }
    }

    /// Timer work: events, late answers, expiry, releases, queued map
    /// operations.
    pub(crate) fn tick(&mut self, ring: Option<&Mapping>, pool: Option<&Mapping>) -> bool {
        stats::inc(Counter::ticks);
        if self.waiting {
            // Woken (the interrupt, or a hint): the host need not raise it
            // again until we sleep once more.
            self.waiting = false;
            if let (Some(conn), Some(ring)) = (self.conn.as_ref(), ring) {
                conn.end.cancel_wait(ring);
            }
        }
        // A corrupt ring is looked at again: the host may have written a new one.
        if self.conn.is_none() && !self.has_pending() && !self.ring_corrupt {
            return true;
        }
        self.expire();
        self.reap(ring, pool, true);
        self.poll_events(ring);
        // Every answer the host published before the events just read is in
        // the completion ring by now: a notice that came before its hint's
        // answer was taken finds the answer here, and a re-announce applies
        // the old host's answers first.
        self.reap(ring, pool, true);
        if self.reannounce != 0 {
            self.send_holds();
        }
        self.refetch(ring);
        self.sweep();
        self.flush_ops(ring);
        if let Some(ring) = ring {
            self.reclaim_slots(ring);
        }
        !self.may_wait(ring)
    }

    /// Queues one [`OP_HOLD`] per held map, then [`OP_HOLDS_DONE`] (see the
    /// module documentation), as many as the map-op queue has room for; the
    /// next ticks go on from [`Client::reannounce_next`]. A map released
    /// meanwhile is skipped (its slot is empty); a slot taken meanwhile by a
    /// new answer may be announced too, which the host takes as the hold it
    /// already counts.
    fn send_holds(&mut self) {
        let token = self.reannounce;
        if token == 0 {
            return;
        }
        // One place is kept for the done.
        let mut room = self.ops.buf.len().saturating_sub(self.ops.len);
        while room > 1 && self.reannounce_next < self.held.len() {
            if let Some(Some(h)) = self.held.get(self.reannounce_next) {
                self.ops.push(OP_HOLD, h.file_map_id);
                stats::inc(Counter::holds_reannounced);
                room -= 1;
            }
            self.reannounce_next += 1;
        }
        if self.reannounce_next >= self.held.len() && room > 0 {
            self.ops.push(OP_HOLDS_DONE, token);
            self.reannounce = 0;
            self.reannounce_next = 0;
        }
    }

    /// Module unload: releases what evicted files held and publishes every
    /// queued map operation that fits (the host answers them after we are
    /// gone; a later load drops those answers by their flag).
    pub(crate) fn shutdown(&mut self, ring: Option<&Mapping>, pool: Option<&Mapping>) {
        if self.connect(ring) {
            // Hints still in flight may be answered with maps the host would
            // then count as held by nobody's file: wait a bounded moment for
            // them (each such hit is released).
            let start = Ktime::ktime_get();
            while self.has_pending()
                && kernel::time::ktime_ms_delta(Ktime::ktime_get(), start) < SHUTDOWN_WAIT_MS
            {
                self.reap(ring, pool, true);
                core::hint::spin_loop();
            }
            self.poll_events(ring);
            SWEEP_NEEDED.store(true, Ordering::Release);
            self.sweep();
            self.flush_ops(ring);
            if let (Some(c), Some(ring)) = (self.conn.as_ref(), ring) {
                // Nobody answers NEED_WAKEUP once the module is gone: say
                // so, and ring once so that a parked poller sees it now.
                // The host then polls this ring on its short park timeout,
                // whoever writes it next (a later load says it rings again).
                c.end.cancel_wait(ring);
                c.end.set_rings_doorbell(ring, false);
                if let Some(d) = &self.doorbell {
                    d.ring(DOORBELL_HOST_PEER, DOORBELL_RING_VECTOR);
                    stats::inc(Counter::doorbells_rung);
                }
            }
        }
        if self.ops.len > 0 {
            stats::add(Counter::map_ops_dropped, self.ops.len as u64);
            self.ops.clear();
        }
    }
}
