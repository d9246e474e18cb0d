//! The host end of one ring region: consumer of the submission ring, producer
//! of the completion and event rings.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use vmdedup_protocol::abi::{
    check_path, prefix_off, ring_off, AnswerStatus, CompletionEntry, EventEntry, RingLayout,
    RingSizes, SubmissionEntry, ANSWER_FLAG_MAP_OP, CQE_SIZE, EQE_SIZE, EVENT_NOTICE,
    GUEST_FLAG_CUT_OFF_ACK, GUEST_FLAG_DOORBELL, GUEST_FLAG_WAITING, HOST_FLAG_CUT_OFF,
    HOST_FLAG_EVENTS_LOST, HOST_FLAG_INTERRUPTS, HOST_FLAG_NEED_WAKEUP, MAX_PATH_LEN,
    NOTICE_EVENTS_LOST, OP_ACK_REVOKE, OP_HOLD, OP_HOLDS_DONE, OP_RELEASE, RING_HEADER_SIZE,
    RING_MAGIC, RING_VERSION, SQE_INLINE_PATH_OFF,
};
use vmdedup_protocol::spsc::{self, Consumer, Producer};

use super::eventfd::EventFd;
use super::handler::{Answer, Handler, Hint, RingId};
use super::mapping::SharedMapping;
use super::stats::RingStats;
use super::words::{word, Words};
use super::RingError;

/// Most events queued on the host while the event ring is full; beyond that
/// events are dropped and the guest is told ([`HOST_FLAG_EVENTS_LOST`]).
pub const MAX_PENDING_EVENTS: usize = 4096;

/// Writes a complete ring header (prefix, layout with default sizes, zeroed
/// indices) into an existing region file, e.g. for `vmdedup region init
/// --kind ring`. Returns the layout written.
pub fn init_ring_file(path: &std::path::Path, generation: u64) -> Result<RingLayout, RingError> {
    let ring = HostRing::create(
        SharedMapping::open(path)?,
        RingConfig::new(RingId(0), generation),
    )?;
    Ok(*ring.layout())
}

/// How to lay out and initialise a ring region.
#[derive(Clone, Copy, Debug)]
pub struct RingConfig {
    /// The ring's identity, passed to the handler.
    pub id: RingId,
    /// Capacities; `None` picks [`RingSizes::for_region`].
    pub sizes: Option<RingSizes>,
    /// Region generation written to the prefix (must change on every re-init).
    pub generation: u64,
    /// Start value of every index (0 normally; tests start near `u32::MAX`).
    pub initial_index: u32,
}

impl RingConfig {
    /// Default sizes, indices starting at 0.
    pub fn new(id: RingId, generation: u64) -> RingConfig {
        RingConfig {
            id,
            sizes: None,
            generation,
            initial_index: 0,
        }
    }
}

/// State shared between a ring's poller and the rest of the host: counters,
/// the doorbell and the queue of events to send.
#[derive(Debug)]
pub struct RingShared {
    /// Counters.
    pub stats: RingStats,
    /// The doorbell the guest rings when it sees NEED_WAKEUP.
    pub doorbell: EventFd,
    /// Whether something delivers the guest's doorbell to [`Self::doorbell`]
    /// now (an ivshmem client is connected; see [`HostRing::with_doorbell`]).
    doorbell_live: Arc<AtomicBool>,
    /// The guest's [`GUEST_FLAG_DOORBELL`] as the poller last saw it.
    guest_rings: AtomicBool,
    /// What raises the guest's ring interrupt (the VM's ivshmem eventfd),
    /// delivered while `doorbell_live`.
    guest_irq: Option<EventFd>,
    events: Mutex<VecDeque<EventEntry>>,
    events_pending: AtomicBool,
    events_lost: AtomicBool,
    closed: AtomicBool,
    cut_off: AtomicBool,
    cut_off_acked: AtomicBool,
    attached: AtomicBool,
    corrupt: AtomicBool,
    dropped: AtomicBool,
    /// Poller wake-up, set when the ring is added to a poller.
    waker: Mutex<Option<Arc<EventFd>>>,
    /// Identifies the ring inside its poller (epoll token).
    pub(crate) key: AtomicU64,
}

impl RingShared {
    /// The shared state of a ring a host end starts (or takes over): no
    /// event queued, no lifecycle edge seen yet.
    fn new() -> Result<Arc<RingShared>, RingError> {
        Ok(Arc::new(RingShared {
            stats: RingStats::default(),
            doorbell: EventFd::new()?,
            doorbell_live: Arc::new(AtomicBool::new(false)),
            guest_rings: AtomicBool::new(false),
            guest_irq: None,
            events: Mutex::new(VecDeque::new()),
            events_pending: AtomicBool::new(false),
            events_lost: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            cut_off: AtomicBool::new(false),
            cut_off_acked: AtomicBool::new(false),
            attached: AtomicBool::new(false),
            corrupt: AtomicBool::new(false),
            dropped: AtomicBool::new(false),
            waker: Mutex::new(None),
            key: AtomicU64::new(0),
        }))
    }

    /// Queues an event for the guest. The poller writes it to the event ring
    /// at its next round. Returns `false` (and makes the guest revoke
    /// everything) if too many events are already waiting.
    pub fn post_event(&self, ev: EventEntry) -> bool {
        self.queue_event(ev, false)
    }

    /// Queues an advisory event (a [`NOTICE_LOADED`]) if fewer than half of
    /// [`MAX_PENDING_EVENTS`] are waiting: it never crowds out a revocation
    /// and is never the reason a guest is told events were lost. Returns
    /// whether it was queued.
    ///
    /// [`NOTICE_LOADED`]: vmdedup_protocol::abi::NOTICE_LOADED
    pub fn post_advisory(&self, ev: EventEntry) -> bool {
        self.queue_event(ev, true)
    }

    fn queue_event(&self, ev: EventEntry, advisory: bool) -> bool {
        let limit = if advisory {
            MAX_PENDING_EVENTS / 2
        } else {
            MAX_PENDING_EVENTS
        };
        let queued = {
            let mut q = self.events.lock().unwrap_or_else(|e| e.into_inner());
            if q.len() < limit {
                q.push_back(ev);
                true
            } else if advisory {
                return false;
            } else {
                self.events_lost.store(true, Ordering::Relaxed);
                self.stats.events_dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        };
        self.events_pending.store(true, Ordering::Release);
        self.wake_poller();
        queued
    }

    /// Asks the poller to drop the ring (and unmap it) at its next round.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.wake_poller();
    }

    /// Whether something delivers the guest's doorbell now (see
    /// [`HostRing::with_doorbell`]).
    pub fn doorbell_live(&self) -> bool {
        self.doorbell_live.load(Ordering::Acquire)
    }

    /// Whether the guest says it rings its doorbell ([`GUEST_FLAG_DOORBELL`]
    /// as the poller last saw it).
    pub fn guest_rings_doorbell(&self) -> bool {
        self.guest_rings.load(Ordering::Relaxed)
    }

    /// Whether [`RingShared::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Cuts the VM off: the poller sets [`HOST_FLAG_CUT_OFF`] in the ring
    /// at its next round (it cannot be lost like an event), keeps serving
    /// the ring and watches for the guest's acknowledgement
    /// ([`Handler::cut_off_acknowledged`]).
    pub fn cut_off(&self) {
        self.cut_off.store(true, Ordering::Release);
        self.wake_poller();
    }

    /// Whether [`RingShared::cut_off`] was called.
    pub fn is_cut_off(&self) -> bool {
        self.cut_off.load(Ordering::Acquire)
    }

    /// Whether the guest acknowledged the cut-off.
    pub fn cut_off_acknowledged(&self) -> bool {
        self.cut_off_acked.load(Ordering::Acquire)
    }

    /// Whether the guest was seen attached to this ring.
    pub fn guest_attached(&self) -> bool {
        self.attached.load(Ordering::Acquire)
    }

    /// Whether the ring's host end is gone (the poller dropped it after
    /// [`RingShared::close`]): nothing of the host touches the region
    /// through it any more.
    pub fn is_dropped(&self) -> bool {
        self.dropped.load(Ordering::Acquire)
    }

    /// Whether the ring's indices were corrupt at the last poll round (the
    /// ring is ignored until the guest fixes them or the host writes a new
    /// ring, e.g. `vmdedup vm reinstate`).
    pub fn is_corrupt(&self) -> bool {
        self.corrupt.load(Ordering::Acquire)
    }

    fn wake_poller(&self) {
        if let Some(w) = self
            .waker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            w.notify();
        }
    }

    pub(crate) fn set_waker(&self, w: Arc<EventFd>) {
        *self.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(w);
    }
}

/// The host end of one ring region.
///
/// It keeps its own copy of the layout it wrote and never reads offsets or
/// sizes back from the region. It is driven by one thread at a time (a
/// poller, or a test).
#[derive(Debug)]
pub struct HostRing {
    id: RingId,
    map: Arc<SharedMapping>,
    layout: RingLayout,
    words: Words,
    sq: Consumer,
    cq: Producer,
    eq: Producer,
    corrupt: bool,
    generation: u64,
    /// [`HOST_FLAG_CUT_OFF`] is set in the ring.
    cut_off_flagged: bool,
    /// The guest's acknowledgement was seen (and passed to the handler).
    cut_off_acked: bool,
    /// The guest's attachment was seen (and passed to the handler).
    attached: bool,
    /// The guest's interrupt was raised once for this ring before it
    /// attached (see [`HostRing::lifecycle`]).
    kicked: bool,
    path_buf: Box<[u8]>,
    shared: Arc<RingShared>,
    /// See [`HostRing::set_done_on_first_entry`].
    done_on_first_entry: bool,
}

// SAFETY: the raw pointers in `words` point into `map`, which is Send + Sync
// and owned (via Arc) by the ring itself; nothing in HostRing is tied to a thread.
unsafe impl Send for HostRing {}

impl HostRing {
    /// Lays out and initialises a ring region in `map` (everything the guest
    /// can see: prefix, layout, indices, flags), then returns its host end.
    pub fn create(map: SharedMapping, cfg: RingConfig) -> Result<HostRing, RingError> {
        let region_size = map.len() as u64;
        let sizes = match cfg.sizes {
            Some(s) => s,
            None => RingSizes::for_region(region_size).ok_or(RingError::BadSize(region_size))?,
        };
        let layout = RingLayout::compute(region_size, &sizes).map_err(RingError::Layout)?;
        let map = Arc::new(map);
        // Magic last: a reader that sees the magic sees a complete header.
        if !map.zero(0, RING_HEADER_SIZE as usize)
            || !map.write_bytes(32, &layout.to_le_bytes())
            || !map.write_bytes(prefix_off::VERSION, &RING_VERSION.to_le_bytes())
            || !map.write_bytes(prefix_off::HEADER_SIZE, &RING_HEADER_SIZE.to_le_bytes())
            || !map.write_bytes(prefix_off::REGION_SIZE, &region_size.to_le_bytes())
            || !map.write_bytes(prefix_off::GENERATION, &cfg.generation.to_le_bytes())
        {
            return Err(RingError::BadSize(region_size));
        }
        let words = Words::new(&map)?;
        for off in [
            ring_off::SQ_HEAD,
            ring_off::SQ_TAIL,
            ring_off::CQ_HEAD,
            ring_off::CQ_TAIL,
            ring_off::EQ_HEAD,
            ring_off::EQ_TAIL,
        ] {
            if let Some(w) = map.word(off) {
                w.store(cfg.initial_index, Ordering::Relaxed);
            }
        }
        std::sync::atomic::fence(Ordering::Release);
        map.write_bytes(prefix_off::MAGIC, &RING_MAGIC.to_le_bytes());
        let i = cfg.initial_index;
        let bad = || RingError::Layout(vmdedup_protocol::abi::LayoutError::BadEntries(0));
        Ok(HostRing {
            id: cfg.id,
            layout,
            words,
            sq: Consumer::new(layout.sq.entries, i).ok_or_else(bad)?,
            cq: Producer::new(layout.cq.entries, i, i).ok_or_else(bad)?,
            eq: Producer::new(layout.eq.entries, i, i).ok_or_else(bad)?,
            corrupt: false,
            generation: cfg.generation,
            cut_off_flagged: false,
            cut_off_acked: false,
            attached: false,
            kicked: false,
            path_buf: vec![0u8; MAX_PATH_LEN as usize].into_boxed_slice(),
            shared: RingShared::new()?,
            done_on_first_entry: false,
            map,
        })
    }

    /// Takes over, in place, a ring a previous agent initialised in `map`
    /// (the agent restarted; the guest keeps its connection and its maps).
    /// Nothing is written: the prefix must be a ring's with this region's
    /// size and the generation it carries is kept, the layout must be exactly
    /// the one [`HostRing::create`] would write for `sizes` (or the default
    /// sizes), and every ring's indices must be consistent (`tail - head`
    /// within its capacity). The host continues from the indices as found:
    /// submissions not consumed yet are answered, answers and events already
    /// published stay for the guest. Any doubt is an error; the caller then
    /// re-initialises the ring with [`HostRing::create`].
    pub fn adopt(
        map: SharedMapping,
        id: RingId,
        sizes: Option<RingSizes>,
    ) -> Result<HostRing, RingError> {
        let region_size = map.len() as u64;
        let mut pb = [0u8; 32];
        if !map.read_bytes(0, &mut pb) {
            return Err(RingError::BadSize(region_size));
        }
        let prefix = vmdedup_protocol::abi::RegionPrefix::from_le_bytes(&pb);
        match prefix.validate(region_size) {
            Ok(vmdedup_protocol::abi::RegionKind::Ring) => {}
            Ok(_) => return Err(RingError::Corrupt),
            Err(e) => return Err(RingError::Prefix(e)),
        }
        if prefix.header_size != RING_HEADER_SIZE
            || prefix.version != RING_VERSION
            || prefix.region_size != region_size
        {
            return Err(RingError::Corrupt);
        }
        let sizes = match sizes {
            Some(s) => s,
            None => RingSizes::for_region(region_size).ok_or(RingError::BadSize(region_size))?,
        };
        let layout = RingLayout::compute(region_size, &sizes).map_err(RingError::Layout)?;
        let want = layout.to_le_bytes();
        let mut have = vec![0u8; want.len()];
        if !map.read_bytes(32, &mut have) {
            return Err(RingError::Corrupt);
        }
        // `guest_features` is the guest's to write (at attach): not part of
        // the layout the host wrote.
        let gf = ring_off::GUEST_FEATURES - ring_off::HOST_FEATURES;
        if let Some(b) = have.get_mut(gf..gf + 8) {
            b.fill(0);
        }
        if have != want {
            return Err(RingError::Corrupt);
        }
        let map = Arc::new(map);
        let words = Words::new(&map)?;
        // Acquire: the guest's entries before its indices are visible.
        let load = |off| {
            map.word(off)
                .map(|w| w.load(Ordering::Acquire))
                .ok_or(RingError::BadSize(region_size))
        };
        let (sq_head, sq_tail) = (load(ring_off::SQ_HEAD)?, load(ring_off::SQ_TAIL)?);
        let (cq_head, cq_tail) = (load(ring_off::CQ_HEAD)?, load(ring_off::CQ_TAIL)?);
        let (eq_head, eq_tail) = (load(ring_off::EQ_HEAD)?, load(ring_off::EQ_TAIL)?);
        if sq_tail.wrapping_sub(sq_head) > layout.sq.entries {
            return Err(RingError::Corrupt);
        }
        // A ring whose VM was cut off stays cut off for its guest until a
        // new generation: the new agent does not know that state, so such a
        // ring is started over rather than taken over.
        if load(ring_off::HOST_FLAGS)? & HOST_FLAG_CUT_OFF != 0 {
            return Err(RingError::Corrupt);
        }
        Ok(HostRing {
            id,
            layout,
            words,
            sq: Consumer::new(layout.sq.entries, sq_head).ok_or(RingError::Corrupt)?,
            cq: Producer::new(layout.cq.entries, cq_head, cq_tail).ok_or(RingError::Corrupt)?,
            eq: Producer::new(layout.eq.entries, eq_head, eq_tail).ok_or(RingError::Corrupt)?,
            corrupt: false,
            generation: prefix.generation,
            cut_off_flagged: false,
            cut_off_acked: false,
            attached: false,
            kicked: false,
            path_buf: vec![0u8; MAX_PATH_LEN as usize].into_boxed_slice(),
            shared: RingShared::new()?,
            done_on_first_entry: false,
            map,
        })
    }

    /// Makes `doorbell` the eventfd the poller waits on for this ring, and
    /// `live` the flag that says whether a guest's doorbell can reach it now
    /// (the ivshmem server sets it while QEMU is connected). Call it before
    /// the ring is handed to a poller; later it changes nothing.
    /// `guest_irq`, if given, is what raises the guest's ring interrupt
    /// (the VM's ivshmem eventfd): the poller writes it after publishing
    /// answers or events while the guest says it waits
    /// ([`GUEST_FLAG_WAITING`]), and tells the guest it does so with
    /// [`HOST_FLAG_INTERRUPTS`] while `live`.
    pub fn with_doorbell(
        mut self,
        doorbell: EventFd,
        live: Arc<AtomicBool>,
        guest_irq: Option<EventFd>,
    ) -> HostRing {
        if let Some(s) = Arc::get_mut(&mut self.shared) {
            s.doorbell = doorbell;
            s.doorbell_live = live;
            s.guest_irq = guest_irq;
        }
        self
    }

    /// After an answer or an event was published: a full
    /// fence, then the guest's interrupt if it said it waits (the host half
    /// of the "Guest wake-up" handshake in [`vmdedup_protocol::abi`]).
    fn interrupt_if_waiting(&self) {
        if self.shared.guest_irq.is_some()
            && self.shared.doorbell_live()
            && spsc::needs_doorbell(word!(self.guest_flags), GUEST_FLAG_WAITING)
        {
            self.interrupt();
        }
    }

    /// Raises the guest's interrupt whatever its flags say, for the edges a
    /// sleeping guest must see although its `GUEST_FLAG_WAITING` may be gone:
    /// a ring written over its old one (re-creating a ring zeroes the guest's
    /// flags with the rest) and the cut-off flag. Returns whether it could
    /// (an interrupt line and a connected QEMU).
    fn interrupt(&self) -> bool {
        let Some(irq) = &self.shared.guest_irq else {
            return false;
        };
        if !self.shared.doorbell_live() {
            return false;
        }
        irq.notify();
        self.shared.stats.interrupts.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Keeps [`HOST_FLAG_INTERRUPTS`] equal to whether the guest's interrupt
    /// can be raised now. The bit is read back (only hosts write
    /// `host_flags`): a taken-over ring may still carry an older agent's,
    /// which is cleared unless this agent's peer is connected.
    fn update_interrupts_flag(&mut self) {
        let live = self.shared.guest_irq.is_some() && self.shared.doorbell_live();
        let flags = word!(self.host_flags);
        if live == (flags.load(Ordering::Relaxed) & HOST_FLAG_INTERRUPTS != 0) {
            return;
        }
        if live {
            flags.fetch_or(HOST_FLAG_INTERRUPTS, Ordering::Release);
        } else {
            flags.fetch_and(!HOST_FLAG_INTERRUPTS, Ordering::Release);
        }
    }

    /// Whether a parked poller will be woken by this ring's doorbell: the
    /// guest says it rings ([`GUEST_FLAG_DOORBELL`], Relaxed: it only picks
    /// a timeout) and the doorbell is delivered now.
    pub fn doorbell_delivers(&self) -> bool {
        let rings = word!(self.guest_flags).load(Ordering::Relaxed) & GUEST_FLAG_DOORBELL != 0;
        self.shared.guest_rings.store(rings, Ordering::Relaxed);
        self.shared.doorbell_live() && rings
    }

    /// The generation in the ring's prefix (kept by [`HostRing::adopt`]).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Makes the first entry the guest submits on this ring count as its
    /// [`Handler::holds_done`] (token 0): for a ring re-initialised after a
    /// restart, a guest submits only after it saw the new generation, and by
    /// then it has dropped every map of the old connection.
    pub fn set_done_on_first_entry(&mut self) {
        self.done_on_first_entry = true;
    }

    /// The ring's identity.
    pub fn id(&self) -> RingId {
        self.id
    }

    /// The layout the host wrote (its trusted copy).
    pub fn layout(&self) -> &RingLayout {
        &self.layout
    }

    /// The mapping (shared, e.g. with an in-process fake guest in tests).
    pub fn mapping(&self) -> &Arc<SharedMapping> {
        &self.map
    }

    /// Counters, doorbell and event queue, shared with the rest of the host.
    pub fn shared(&self) -> &Arc<RingShared> {
        &self.shared
    }

    /// Writes the events still queued (the ring is being closed): a notice
    /// posted just before [`RingShared::close`] reaches the guest.
    pub fn flush_final(&mut self) {
        if self.shared.events_pending.load(Ordering::Acquire) {
            self.flush_events();
        }
    }

    /// One poll round: writes pending events, then answers up to `budget`
    /// hints (fewer if the completion ring lacks room). Returns the number of
    /// hints answered. Never panics and never loops beyond `budget`, whatever
    /// the region holds.
    pub fn poll_round<H: Handler + ?Sized>(&mut self, handler: &H, budget: u32) -> u32 {
        self.lifecycle(handler);
        if self.shared.events_pending.load(Ordering::Acquire) {
            self.flush_events();
        }
        let avail = match self.sq.available(word!(self.sq_tail)) {
            Ok(n) => n,
            Err(_) => {
                self.mark_corrupt();
                return 0;
            }
        };
        if avail == 0 {
            self.clear_corrupt();
            return 0;
        }
        let want = avail.min(budget);
        let free = match self.cq.free(word!(self.cq_head), want) {
            Ok(n) => n,
            Err(_) => {
                self.mark_corrupt();
                return 0;
            }
        };
        self.clear_corrupt();
        let n = want.min(free);
        if n == 0 {
            self.shared
                .stats
                .completion_full
                .fetch_add(1, Ordering::Relaxed);
            return 0;
        }
        if std::mem::take(&mut self.done_on_first_entry) {
            handler.holds_done(self.id, 0);
        }
        let (mut hits, mut bad) = (0u64, 0u64);
        for i in 0..n {
            let sqe_off = self.layout.sqe_offset(self.sq.slot(i)) as usize;
            let mut words = [0u64; SQE_INLINE_PATH_OFF as usize / 8];
            let cqe = if self.map.read_words(sqe_off, &mut words) {
                let mut bytes = [0u8; SQE_INLINE_PATH_OFF as usize];
                for (d, w) in bytes.chunks_exact_mut(8).zip(words.iter()) {
                    d.copy_from_slice(&w.to_le_bytes());
                }
                let entry = SubmissionEntry::from_le_bytes(&bytes);
                match entry.opcode {
                    OP_ACK_REVOKE | OP_RELEASE | OP_HOLD | OP_HOLDS_DONE => {
                        self.map_op(&entry, handler, &mut bad)
                    }
                    _ => self.answer(&entry, sqe_off, handler, &mut bad),
                }
            } else {
                // Unreachable with a validated layout; answered anyway.
                CompletionEntry::miss(0, AnswerStatus::HostError)
            };
            if cqe.status == AnswerStatus::Hit as u16 {
                hits += 1;
            }
            let cqe_off = self.layout.cqe_offset(self.cq.slot(i)) as usize;
            let b = cqe.to_le_bytes();
            let mut out = [0u64; CQE_SIZE as usize / 8];
            for (w, s) in out.iter_mut().zip(b.chunks_exact(8)) {
                let mut a = [0u8; 8];
                a.copy_from_slice(s);
                *w = u64::from_le_bytes(a);
            }
            self.map.write_words(cqe_off, &out);
        }
        // Answers first, so the guest sees them as early as possible; the
        // submission slots (and their path slots' contents) were copied out.
        // The Release store of `sq_head` below orders those copies before
        // it: a guest that sees the head past an entry (Acquire) may reuse
        // the entry and its path slot, even one whose request it gave up on
        // (`GuestEnd::reclaim_slots`). No path slot is read after this.
        self.cq.publish(word!(self.cq_tail), n);
        self.sq.release(word!(self.sq_head), n);
        if n > 0 {
            self.interrupt_if_waiting();
        }
        let st = &self.shared.stats;
        st.hints.fetch_add(n as u64, Ordering::Relaxed);
        if hits > 0 {
            st.hits.fetch_add(hits, Ordering::Relaxed);
        }
        if bad > 0 {
            st.bad_entries.fetch_add(bad, Ordering::Relaxed);
        }
        n
    }

    fn mark_corrupt(&mut self) {
        if !self.corrupt {
            self.corrupt = true;
            self.shared.corrupt.store(true, Ordering::Release);
            self.shared
                .stats
                .corrupt_indices
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    fn clear_corrupt(&mut self) {
        if self.corrupt {
            self.corrupt = false;
            self.shared.corrupt.store(false, Ordering::Release);
        }
    }

    /// The lifecycle edges that do not go through the rings: sets
    /// [`HOST_FLAG_CUT_OFF`] once the VM is cut off, then watches for the
    /// guest's [`GUEST_FLAG_CUT_OFF_ACK`]; and notices the guest attaching
    /// this ring (`guest_attached` equal to the ring's generation). Each
    /// edge reaches the handler once. Cheap (two loads) once settled; also
    /// run by a parked poller at every park timeout.
    pub fn lifecycle<H: Handler + ?Sized>(&mut self, handler: &H) {
        self.update_interrupts_flag();
        if !self.attached {
            // Acquire: pairs with the guest's Release store after it dropped
            // what it held through an older ring.
            let g = word!(self.guest_attached).load(Ordering::Acquire);
            if g == self.generation as u32 {
                self.attached = true;
                self.shared.attached.store(true, Ordering::Release);
                self.shared.stats.attaches.fetch_add(1, Ordering::Relaxed);
                handler.reconnected(self.id);
            }
        }
        if !self.attached && !self.kicked {
            // A guest that slept until interrupted over the ring this one
            // replaced (a reinstated VM, a ring restarted after corrupt
            // indices) lost its `GUEST_FLAG_WAITING` with the old contents,
            // and may send no hint for a long time: wake it once, after the
            // ring is written (create ends with a Release of the magic; the
            // eventfd write is a syscall after it), so that its event work
            // finds the new generation and attaches. Retried each round
            // until QEMU is connected; a guest that is not asleep only runs
            // its event work once more.
            self.kicked = self.interrupt();
        }
        if !self.cut_off_flagged {
            if !self.shared.cut_off.load(Ordering::Acquire) {
                return;
            }
            // Release: what the host wrote before (events, answers) is
            // visible to a guest that sees the flag with Acquire.
            word!(self.host_flags).fetch_or(HOST_FLAG_CUT_OFF, Ordering::Release);
            self.cut_off_flagged = true;
            // Whatever the guest's flags say: its event work must run to zap
            // its mappings and acknowledge, and a ring re-created under it
            // may have cleared the flag that says it sleeps.
            self.interrupt();
        }
        if !self.cut_off_acked
            && word!(self.guest_flags).load(Ordering::Acquire) & GUEST_FLAG_CUT_OFF_ACK != 0
        {
            // Acquire: pairs with the guest's Release after its zap.
            self.cut_off_acked = true;
            self.shared.cut_off_acked.store(true, Ordering::Release);
            self.shared
                .stats
                .cut_off_acks
                .fetch_add(1, Ordering::Relaxed);
            handler.cut_off_acknowledged(self.id);
        }
    }

    /// Answers a map operation (acknowledgement or release of a file map).
    fn map_op<H: Handler + ?Sized>(
        &mut self,
        e: &SubmissionEntry,
        handler: &H,
        bad: &mut u64,
    ) -> CompletionEntry {
        let mut cqe = match e.check_map_op() {
            Ok(map_id) => {
                match e.opcode {
                    OP_ACK_REVOKE => handler.ack_revoke(self.id, map_id),
                    OP_HOLD => handler.hold(self.id, map_id),
                    OP_HOLDS_DONE => handler.holds_done(self.id, map_id),
                    _ => handler.release(self.id, map_id),
                }
                // `miss` builds an otherwise empty answer; Hit = "taken".
                let mut c = CompletionEntry::miss(e.request_id, AnswerStatus::Hit);
                c.file_map_id = map_id;
                c
            }
            Err(err) => {
                *bad += 1;
                CompletionEntry::miss(e.request_id, err.status())
            }
        };
        cqe.flags = ANSWER_FLAG_MAP_OP;
        cqe
    }

    fn answer<H: Handler + ?Sized>(
        &mut self,
        e: &SubmissionEntry,
        sqe_off: usize,
        handler: &H,
        bad: &mut u64,
    ) -> CompletionEntry {
        let loc = match e.check(self.layout.slots.count) {
            Ok(l) => l,
            Err(err) => {
                *bad += 1;
                return CompletionEntry::miss(e.request_id, err.status());
            }
        };
        let src = match loc {
            vmdedup_protocol::abi::PathLocation::Inline { .. } => {
                Some((sqe_off + SQE_INLINE_PATH_OFF as usize) as u64)
            }
            vmdedup_protocol::abi::PathLocation::Slot { index, .. } => {
                self.layout.path_slot_offset(index)
            }
        };
        let len = loc.len() as usize;
        let Some(path) = self.path_buf.get_mut(..len) else {
            *bad += 1;
            return CompletionEntry::miss(e.request_id, AnswerStatus::PathTooLong);
        };
        let copied = src.is_some_and(|off| self.map.read_bytes(off as usize, path));
        if !copied || check_path(path).is_err() {
            *bad += 1;
            return CompletionEntry::miss(e.request_id, AnswerStatus::BadRequest);
        }
        let hint = Hint {
            request_id: e.request_id,
            namespace_id: e.namespace_id,
            path,
            file_size: e.file_size,
            mtime_ns: e.mtime_ns,
            ctime_ns: e.ctime_ns,
            inode: e.inode,
            first_page: e.first_page,
            notify_loaded: e.flags & vmdedup_protocol::abi::HINT_FLAG_NOTIFY_LOADED != 0,
            pool_only: e.flags & vmdedup_protocol::abi::HINT_FLAG_POOL_ONLY != 0,
            page_count: e.page_count,
            fingerprint: e.fingerprint(),
        };
        match handler.handle(self.id, &hint) {
            Answer::Hit(r) => CompletionEntry {
                request_id: e.request_id,
                status: AnswerStatus::Hit as u16,
                flags: 0,
                page_count: r.page_count,
                table_offset: r.offset,
                file_map_id: r.file_map_id,
                map_generation: r.map_generation,
                file_size: r.file_size,
                reserved: [0; 2],
            },
            Answer::Miss(AnswerStatus::Hit) => {
                CompletionEntry::miss(e.request_id, AnswerStatus::HostError)
            }
            Answer::Miss(s) => CompletionEntry::miss(e.request_id, s),
            Answer::LoadingNotice => CompletionEntry {
                flags: vmdedup_protocol::abi::ANSWER_FLAG_NOTICE_COMING,
                ..CompletionEntry::miss(e.request_id, AnswerStatus::Loading)
            },
        }
    }

    fn flush_events(&mut self) {
        let shared = Arc::clone(&self.shared);
        let mut q = shared.events.lock().unwrap_or_else(|e| e.into_inner());
        if shared.events_lost.swap(false, Ordering::Relaxed) {
            // The flag is sticky: a guest applies it once per connection. So
            // every loss is also said with a notice, first in line (one at
            // most: the queue stays within MAX_PENDING_EVENTS + 1), which the
            // guest applies each time it reads one.
            word!(self.host_flags).fetch_or(HOST_FLAG_EVENTS_LOST, Ordering::Release);
            let lost = |e: &EventEntry| e.kind == EVENT_NOTICE && e.notice == NOTICE_EVENTS_LOST;
            if !q.front().is_some_and(lost) {
                q.push_front(EventEntry {
                    kind: EVENT_NOTICE,
                    notice: NOTICE_EVENTS_LOST,
                    ..EventEntry::default()
                });
            }
        }
        let want = q.len().min(self.layout.eq.entries as usize) as u32;
        let free = match self.eq.free(word!(self.eq_head), want) {
            Ok(n) => n,
            Err(_) => {
                self.mark_corrupt();
                return;
            }
        };
        let n = free.min(want);
        for i in 0..n {
            let Some(ev) = q.pop_front() else { break };
            let off = self.layout.eqe_offset(self.eq.slot(i)) as usize;
            self.map.write_bytes(off, &ev.to_le_bytes());
        }
        self.eq.publish(word!(self.eq_tail), n);
        if n > 0 {
            self.interrupt_if_waiting();
        }
        shared
            .stats
            .events_sent
            .fetch_add(n as u64, Ordering::Relaxed);
        if q.is_empty() {
            shared.events_pending.store(false, Ordering::Relaxed);
        }
    }

    /// Whether a poll round would do something: hints waiting with room for
    /// their answers, or events waiting with room in the event ring. Corrupt
    /// indices count as no work. Used for the re-check before parking.
    pub fn has_work(&mut self) -> bool {
        if self.shared.cut_off.load(Ordering::Acquire) && !self.cut_off_flagged {
            return true;
        }
        if self.sq.has_work(word!(self.sq_tail))
            && self.cq.free(word!(self.cq_head), 1).unwrap_or(0) > 0
        {
            return true;
        }
        self.shared.events_pending.load(Ordering::Acquire)
            && self.eq.free(word!(self.eq_head), 1).unwrap_or(0) > 0
    }

    /// Parking step 1 for this ring: set NEED_WAKEUP (see
    /// [`spsc::announce_park`]); the caller then fences and re-checks.
    pub fn announce_park(&self) {
        spsc::announce_park(word!(self.host_flags), HOST_FLAG_NEED_WAKEUP);
    }

    /// Clears NEED_WAKEUP.
    pub fn cancel_park(&self) {
        spsc::cancel_park(word!(self.host_flags), HOST_FLAG_NEED_WAKEUP);
    }

    /// Drains the doorbell and counts what it held.
    pub fn drain_doorbell(&self) -> u64 {
        let n = self.shared.doorbell.drain();
        if n > 0 {
            self.shared.stats.doorbells.fetch_add(n, Ordering::Relaxed);
        }
        n
    }
}

impl Drop for HostRing {
    fn drop(&mut self) {
        // Release: every access of the region through this ring came first.
        self.shared.dropped.store(true, Ordering::Release);
    }
}

const _: () = assert!(EQE_SIZE.is_multiple_of(8) && CQE_SIZE.is_multiple_of(8));
