//! Polling threads: each serves a set of rings, round-robin with a bounded
//! batch per ring, spins while there is work, backs off, then parks with
//! NEED_WAKEUP set until a doorbell (or a new ring, an event, shutdown).

use super::epoll::Epoll;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmdedup_protocol::spsc;

use super::eventfd::EventFd;
use super::handler::Handler;
use super::host::{HostRing, RingShared};
use super::stats::{PollerState, PollerStats};
use super::RingError;

/// Tunables of the poller threads.
#[derive(Clone, Copy, Debug)]
pub struct PollerConfig {
    /// Number of poller threads (at least 1).
    pub threads: usize,
    /// Most hints taken from one ring per round, so that one flooding guest
    /// cannot starve the others a poller serves.
    pub batch: u32,
    /// Busy-poll this long after the last work.
    pub spin: Duration,
    /// Then poll with `sched_yield` between rounds for this long.
    pub yield_for: Duration,
    /// Then poll with short sleeps (`sleep_step`) for this long.
    pub sleep_for: Duration,
    /// Sleep between polls while backing off.
    pub sleep_step: Duration,
    /// Longest park while a ring the poller serves has no doorbell that
    /// reaches it (an `ivshmem-plain` ring, or an ivshmem client not
    /// connected); `None` parks until woken. A park that times out and then
    /// finds work is counted as a lost wake-up ([`PollerStats::lost_wakeups`]).
    pub park_timeout: Option<Duration>,
    /// Longest park while every ring has a delivered doorbell
    /// ([`HostRing::doorbell_delivers`]): only a safety net.
    pub doorbell_park_timeout: Option<Duration>,
}

impl Default for PollerConfig {
    fn default() -> Self {
        PollerConfig {
            threads: 1,
            batch: 64,
            spin: Duration::from_micros(200),
            yield_for: Duration::from_micros(800),
            sleep_for: Duration::from_millis(10),
            sleep_step: Duration::from_micros(200),
            park_timeout: Some(Duration::from_secs(1)),
            doorbell_park_timeout: Some(Duration::from_secs(10)),
        }
    }
}

/// A ring handed to a poller: its shared state (counters, doorbell, events).
#[derive(Debug, Clone)]
pub struct RingHandle {
    shared: Arc<RingShared>,
    poller: usize,
}

impl RingHandle {
    /// Counters, doorbell and event queue of the ring.
    pub fn shared(&self) -> &Arc<RingShared> {
        &self.shared
    }

    /// Index of the poller thread serving the ring.
    pub fn poller(&self) -> usize {
        self.poller
    }
}

struct PollerCtl {
    wake: Arc<EventFd>,
    incoming: Mutex<Vec<HostRing>>,
    has_incoming: AtomicBool,
    stop: AtomicBool,
    stats: Arc<PollerStats>,
}

/// The running poller threads.
pub struct PollerPool {
    ctls: Vec<Arc<PollerCtl>>,
    joins: Vec<JoinHandle<()>>,
    next_key: AtomicU64,
    assigned: Vec<AtomicU32>,
}

impl std::fmt::Debug for PollerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PollerPool")
            .field("threads", &self.ctls.len())
            .finish()
    }
}

const WAKE_TOKEN: u64 = u64::MAX;

impl PollerPool {
    /// Starts `config.threads` pollers that answer hints with `handler`.
    pub fn start<H: Handler + 'static>(
        config: PollerConfig,
        handler: H,
    ) -> Result<PollerPool, RingError> {
        let handler = Arc::new(handler);
        let mut pool = PollerPool {
            ctls: Vec::new(),
            joins: Vec::new(),
            next_key: AtomicU64::new(1),
            assigned: Vec::new(),
        };
        for i in 0..config.threads.max(1) {
            let ctl = Arc::new(PollerCtl {
                wake: Arc::new(EventFd::new()?),
                incoming: Mutex::new(Vec::new()),
                has_incoming: AtomicBool::new(false),
                stop: AtomicBool::new(false),
                stats: Arc::new(PollerStats::default()),
            });
            let epoll = Epoll::new()?;
            epoll.add(ctl.wake.as_raw_fd(), WAKE_TOKEN)?;
            let mut poller = Poller {
                ctl: Arc::clone(&ctl),
                handler: Arc::clone(&handler),
                config,
                set: PollSet::new(),
                epoll,
            };
            let join = std::thread::Builder::new()
                .name(format!("vmdedup-poll{i}"))
                .spawn(move || poller.run())
                .map_err(|source| RingError::Os {
                    what: "spawn poller",
                    cause: source,
                })?;
            pool.ctls.push(ctl);
            pool.joins.push(join);
            pool.assigned.push(AtomicU32::new(0));
        }
        Ok(pool)
    }

    /// Hands a ring to the poller with the fewest rings.
    pub fn add_ring(&self, ring: HostRing) -> RingHandle {
        let idx = self
            .assigned
            .iter()
            .enumerate()
            .min_by_key(|(_, n)| n.load(Ordering::Relaxed))
            .map_or(0, |(i, _)| i);
        self.add_ring_to(idx, ring)
    }

    /// Hands a ring to poller `idx` (modulo the number of pollers).
    pub fn add_ring_to(&self, idx: usize, ring: HostRing) -> RingHandle {
        let idx = idx % self.ctls.len();
        let ctl = &self.ctls[idx];
        let shared = Arc::clone(ring.shared());
        shared.key.store(
            self.next_key.fetch_add(1, Ordering::Relaxed),
            Ordering::Relaxed,
        );
        shared.set_waker(Arc::clone(&ctl.wake));
        self.assigned[idx].fetch_add(1, Ordering::Relaxed);
        ctl.incoming
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(ring);
        ctl.has_incoming.store(true, Ordering::Release);
        ctl.wake.notify();
        RingHandle {
            shared,
            poller: idx,
        }
    }

    /// Counters of every poller thread.
    pub fn stats(&self) -> Vec<Arc<PollerStats>> {
        self.ctls.iter().map(|c| Arc::clone(&c.stats)).collect()
    }

    /// Stops and joins every poller (also done on drop).
    pub fn shutdown(mut self) {
        self.stop_all();
    }

    fn stop_all(&mut self) {
        for c in &self.ctls {
            c.stop.store(true, Ordering::Release);
            c.wake.notify();
        }
        for j in self.joins.drain(..) {
            let _ = j.join();
        }
    }
}

impl Drop for PollerPool {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// The rings one poller serves, polled round-robin with a bounded batch per
/// ring per round: a ring with a full submission ring gets `batch` hints per
/// round like every other ring with work, never more.
#[derive(Debug, Default)]
pub struct PollSet {
    rings: Vec<HostRing>,
    start: usize,
}

impl PollSet {
    /// An empty set.
    pub fn new() -> PollSet {
        PollSet::default()
    }

    /// Adds a ring (it is polled last in the current order).
    pub fn push(&mut self, ring: HostRing) {
        self.rings.push(ring);
    }

    /// Number of rings.
    pub fn len(&self) -> usize {
        self.rings.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.rings.is_empty()
    }

    /// The rings.
    pub fn rings(&self) -> &[HostRing] {
        &self.rings
    }

    /// One round: at most `batch` hints from every ring, starting one ring
    /// further than the previous round. Closed rings get their pending
    /// events written, then are dropped (their doorbells passed to `on_drop`
    /// first). Returns the hints answered.
    pub fn round<H: Handler + ?Sized>(
        &mut self,
        handler: &H,
        batch: u32,
        mut on_drop: impl FnMut(&HostRing),
    ) -> u64 {
        let n = self.rings.len();
        if n == 0 {
            return 0;
        }
        let mut work = 0u64;
        let mut closed = false;
        for k in 0..n {
            let i = (self.start + k) % n;
            let Some(r) = self.rings.get_mut(i) else {
                continue;
            };
            if r.shared().is_closed() {
                // Its last events (a "host restarting" or "revoke
                // everything" notice posted just before the close) still
                // go out; then it is dropped.
                r.flush_final();
                closed = true;
                continue;
            }
            work += r.poll_round(handler, batch) as u64;
        }
        self.start = (self.start + 1) % n;
        if closed {
            self.rings.retain(|r| {
                if r.shared().is_closed() {
                    on_drop(r);
                    false
                } else {
                    true
                }
            });
            self.start = 0;
        }
        work
    }
}

struct Poller<H: Handler + 'static> {
    ctl: Arc<PollerCtl>,
    handler: Arc<H>,
    config: PollerConfig,
    set: PollSet,
    epoll: Epoll,
}

impl<H: Handler + 'static> Poller<H> {
    fn run(&mut self) {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        self.ctl.stats.tid.store(tid as u64, Ordering::Relaxed);
        let mut idle_since: Option<Instant> = None;
        // When work last arrived after an idle spell, and the mean time
        // between such arrivals (exponentially weighted): the poller spins
        // and backs off only about as long as work is expected to take to
        // come, then parks.
        let mut last_arrival: Option<Instant> = None;
        let mut gap: Option<Duration> = None;
        let mut rounds = 0u64;
        let spin = self.config.spin;
        let yield_end = spin + self.config.yield_for;
        let sleep_end = yield_end + self.config.sleep_for;
        loop {
            if self.ctl.stop.load(Ordering::Acquire) {
                break;
            }
            if self.ctl.has_incoming.load(Ordering::Acquire) {
                self.take_incoming();
            }
            let epoll = &self.epoll;
            let work = self.set.round(&*self.handler, self.config.batch, |r| {
                epoll.del(r.shared().doorbell.as_raw_fd());
            });
            self.ctl
                .stats
                .rings
                .store(self.set.len() as u64, Ordering::Relaxed);
            rounds += 1;
            if rounds.is_multiple_of(1024) {
                self.ctl.stats.rounds.fetch_add(1024, Ordering::Relaxed);
            }
            if work > 0 {
                if idle_since.is_some() {
                    idle_since = None;
                    let now = Instant::now();
                    if let Some(prev) = last_arrival {
                        gap = Some(next_gap(gap, now - prev));
                    }
                    last_arrival = Some(now);
                    self.set_state(PollerState::Running);
                }
                continue;
            }
            let now = Instant::now();
            let idle = now - *idle_since.get_or_insert(now);
            let window = idle_window(gap, spin, sleep_end);
            if idle < spin.min(window) {
                std::hint::spin_loop();
            } else if idle < yield_end.min(window) {
                self.set_state(PollerState::BackingOff);
                std::thread::yield_now();
            } else if idle < sleep_end.min(window) {
                std::thread::sleep(self.config.sleep_step);
            } else if self.park() {
                idle_since = None;
                self.set_state(PollerState::Running);
            }
            // else: a park timeout with nothing to do; park again at once
            // instead of spinning (keeps an idle poller near 0 % CPU).
        }
        self.ctl
            .stats
            .rounds
            .fetch_add(rounds % 1024, Ordering::Relaxed);
        self.set_state(PollerState::Stopped);
    }

    fn set_state(&self, s: PollerState) {
        self.ctl.stats.state.store(s as u64, Ordering::Relaxed);
    }

    fn take_incoming(&mut self) {
        let new: Vec<HostRing> = {
            let mut q = self.ctl.incoming.lock().unwrap_or_else(|e| e.into_inner());
            self.ctl.has_incoming.store(false, Ordering::Relaxed);
            std::mem::take(&mut *q)
        };
        for r in new {
            let key = r.shared().key.load(Ordering::Relaxed);
            // A ring whose doorbell cannot be watched is still polled; it just
            // never wakes a parked poller by itself (the park timeout does).
            let _ = self.epoll.add(r.shared().doorbell.as_raw_fd(), key);
            self.set.push(r);
        }
        self.ctl
            .stats
            .rings
            .store(self.set.len() as u64, Ordering::Relaxed);
    }

    /// Sets NEED_WAKEUP on every ring, fences, re-checks, and sleeps in
    /// `epoll_wait` only if nothing arrived meanwhile. Returns `false` only if
    /// the park timed out and there is still nothing to do.
    fn park(&mut self) -> bool {
        for r in &self.set.rings {
            r.announce_park();
        }
        spsc::park_fence::<std::sync::atomic::AtomicU32>();
        let pending = self.ctl.has_incoming.load(Ordering::Acquire)
            || self.ctl.stop.load(Ordering::Acquire)
            || self.set.rings.iter_mut().any(|r| r.has_work());
        if pending {
            self.ctl.stats.park_aborts.fetch_add(1, Ordering::Relaxed);
            for r in &self.set.rings {
                r.cancel_park();
            }
            return true;
        }
        self.ctl.stats.parks.fetch_add(1, Ordering::Relaxed);
        self.set_state(PollerState::Parked);
        // The long safety timeout only when every ring's guest will ring.
        let all_ring = self.set.rings.iter().all(|r| r.doorbell_delivers());
        let timeout = if all_ring {
            self.config.doorbell_park_timeout
        } else {
            self.config.park_timeout
        }
        .map_or(-1, |d| d.as_millis().min(i32::MAX as u128) as i32);
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 16];
        let n = self.epoll.wait(&mut events, timeout);
        for r in &self.set.rings {
            r.cancel_park();
        }
        if n == 0 {
            // A guest's cut-off acknowledgement or attachment rings no
            // doorbell of its own when there is no doorbell hardware: look
            // for them at every timeout.
            for r in self.set.rings.iter_mut() {
                r.lifecycle(&*self.handler);
            }
            if self.set.rings.iter_mut().any(|r| r.has_work()) {
                self.ctl.stats.lost_wakeups.fetch_add(1, Ordering::Relaxed);
                return true;
            }
            return false;
        }
        for ev in events.iter().take(n) {
            let token = ev.u64;
            if token == WAKE_TOKEN {
                self.ctl.wake.drain();
            } else if let Some(r) = self
                .set
                .rings
                .iter()
                .find(|r| r.shared().key.load(Ordering::Relaxed) == token)
            {
                r.drain_doorbell();
            }
        }
        // Doorbells rung while we were awake are counted too, so that a stale
        // count cannot make the next park return at once.
        for r in &self.set.rings {
            r.drain_doorbell();
        }
        true
    }
}

/// The mean time between arrivals of work after `sample`: weight 1/4 on
/// the newest.
fn next_gap(gap: Option<Duration>, sample: Duration) -> Duration {
    match gap {
        None => sample,
        Some(g) => (g * 3 + sample) / 4,
    }
}

/// How long an idle poller keeps polling (spinning, yielding, sleeping
/// briefly) before it parks: all of `sleep_end` while nothing is known, about
/// twice the mean arrival gap when work comes that often, and only the
/// `spin` phase when work comes more rarely than `sleep_end` (polling longer
/// would only burn CPU before the park anyway).
fn idle_window(gap: Option<Duration>, spin: Duration, sleep_end: Duration) -> Duration {
    match gap {
        None => sleep_end,
        Some(g) if g.saturating_mul(2) <= sleep_end => g.saturating_mul(2).max(spin),
        Some(_) => spin,
    }
}
