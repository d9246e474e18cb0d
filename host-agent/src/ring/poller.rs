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
        // When work last arrived after an idle spell; the back-off keeps the
        // mean time between such arrivals. An arrival found only when a park
        // timed out (a ring nobody rings) came at an unknown time: the
        // estimate starts over, with the whole back-off, so that the poller
        // goes on catching such a guest's work while backing off instead of
        // once per park timeout.
        let mut last_arrival: Option<Instant> = None;
        let mut arrival_unknown = false;
        let mut backoff = Backoff::new(&self.config);
        let mut rounds = 0u64;
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
                // Every arrival after an idle spell counts, those that woke
                // a parked poller included: leaving them out kept the mean
                // from the last arrival caught while backing off, and a
                // poller that only spun (work rarer than its back-off) then
                // never saw another one.
                if idle_since.take().is_some() {
                    let now = Instant::now();
                    if std::mem::take(&mut arrival_unknown) {
                        backoff.forget();
                    } else if let Some(prev) = last_arrival {
                        backoff.arrival(now.saturating_duration_since(prev));
                    }
                    last_arrival = Some(now);
                    self.set_state(PollerState::Running);
                }
                continue;
            }
            let now = Instant::now();
            let idle = now.saturating_duration_since(*idle_since.get_or_insert(now));
            match backoff.step(idle) {
                IdleStep::Spin => std::hint::spin_loop(),
                IdleStep::Yield => {
                    self.set_state(PollerState::BackingOff);
                    std::thread::yield_now();
                }
                IdleStep::Sleep => std::thread::sleep(self.config.sleep_step),
                // A park that timed out with nothing to do leaves the
                // poller idle: it parks again at once instead of spinning
                // (keeps an idle poller near 0 % CPU).
                IdleStep::Park => match self.park() {
                    Parked::Idle => {}
                    Parked::Woken => self.set_state(PollerState::Running),
                    Parked::Late => {
                        arrival_unknown = true;
                        self.set_state(PollerState::Running);
                    }
                },
            }
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
    /// `epoll_wait` only if nothing arrived meanwhile. Says how it ended.
    fn park(&mut self) -> Parked {
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
            return Parked::Woken;
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
                return Parked::Late;
            }
            return Parked::Idle;
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
        Parked::Woken
    }
}

/// How a park ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Parked {
    /// It timed out and there is still nothing to do.
    Idle,
    /// Work or a wake-up came (a doorbell, a new ring, stop), or was there
    /// before it slept: the poller looks at once.
    Woken,
    /// It timed out and found work that rang nothing: it arrived at some
    /// time during the park.
    Late,
}

/// What an idle poller does next, in the order it comes to them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum IdleStep {
    /// Poll again at once.
    Spin,
    /// Poll again after `sched_yield`.
    Yield,
    /// Poll again after a short sleep.
    Sleep,
    /// Park until a doorbell (or a timeout).
    Park,
}

/// How long an idle poller keeps polling before it parks: the ends of its
/// spin, yield and sleep phases (from [`PollerConfig`], measured from the
/// last work), cut short by the window that the mean time between arrivals
/// of work allows ([`idle_window`]).
#[derive(Clone, Copy, Debug)]
struct Backoff {
    spin: Duration,
    yield_end: Duration,
    sleep_end: Duration,
    /// The mean time between arrivals of work after an idle spell
    /// (exponentially weighted); `None` until two have been seen.
    gap: Option<Duration>,
}

impl Backoff {
    fn new(config: &PollerConfig) -> Backoff {
        let yield_end = config.spin.saturating_add(config.yield_for);
        Backoff {
            spin: config.spin,
            yield_end,
            sleep_end: yield_end.saturating_add(config.sleep_for),
            gap: None,
        }
    }

    /// Work arrived after an idle spell, `since_last` after the previous
    /// such arrival.
    fn arrival(&mut self, since_last: Duration) {
        self.gap = Some(next_gap(self.gap, since_last));
    }

    /// Work arrived at a time not known (found when a park timed out):
    /// what was learnt no longer says when the next comes, so the poller
    /// backs off in full again until two arrivals are seen.
    fn forget(&mut self) {
        self.gap = None;
    }

    /// How long the poller polls, idle, before it parks.
    fn window(&self) -> Duration {
        idle_window(self.gap, self.spin, self.sleep_end)
    }

    /// What the poller does after `idle` without work.
    fn step(&self, idle: Duration) -> IdleStep {
        let window = self.window();
        if idle < self.spin.min(window) {
            IdleStep::Spin
        } else if idle < self.yield_end.min(window) {
            IdleStep::Yield
        } else if idle < self.sleep_end.min(window) {
            IdleStep::Sleep
        } else {
            IdleStep::Park
        }
    }
}

/// The mean time between arrivals of work after `sample`: weight 1/4 on
/// the newest.
///
/// Computed in nanoseconds as `u128`, so that no gap, however long, can
/// overflow (the mean is at most the larger of the two, which fits).
fn next_gap(gap: Option<Duration>, sample: Duration) -> Duration {
    const NANOS: u128 = 1_000_000_000;
    match gap {
        None => sample,
        Some(g) => {
            let mean = (g.as_nanos() * 3 + sample.as_nanos()) / 4;
            Duration::new(
                u64::try_from(mean / NANOS).unwrap_or(u64::MAX),
                (mean % NANOS) as u32,
            )
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const US: Duration = Duration::from_micros(1);
    const MS: Duration = Duration::from_millis(1);

    /// The default tunables: spin to 200 us, yield to 1 ms, sleep to 11 ms.
    fn backoff() -> Backoff {
        let b = Backoff::new(&PollerConfig::default());
        assert_eq!((b.spin, b.yield_end, b.sleep_end), (200 * US, MS, 11 * MS));
        b
    }

    /// `b` after `n` arrivals, each `gap` after the one before.
    fn arrivals(mut b: Backoff, gap: Duration, n: usize) -> Backoff {
        for _ in 0..n {
            b.arrival(gap);
        }
        b
    }

    #[test]
    fn with_nothing_known_the_whole_back_off_runs() {
        let b = backoff();
        assert_eq!(b.window(), b.sleep_end);
        assert_eq!(b.step(Duration::ZERO), IdleStep::Spin);
        assert_eq!(b.step(b.spin - US), IdleStep::Spin);
        assert_eq!(b.step(b.spin), IdleStep::Yield);
        assert_eq!(b.step(b.yield_end), IdleStep::Sleep);
        assert_eq!(b.step(b.sleep_end - US), IdleStep::Sleep);
        assert_eq!(b.step(b.sleep_end), IdleStep::Park);
        assert!(b.gap.is_none());
    }

    #[test]
    fn steady_arrivals_poll_for_twice_the_gap() {
        let b = arrivals(backoff(), 2 * MS, 5);
        assert_eq!(b.gap, Some(2 * MS));
        assert_eq!(b.window(), 4 * MS);
        assert_eq!(b.step(4 * MS - US), IdleStep::Sleep);
        assert_eq!(b.step(4 * MS), IdleStep::Park);
    }

    #[test]
    fn the_mean_weighs_the_newest_gap_a_quarter() {
        let mut b = arrivals(backoff(), 4 * MS, 1);
        b.arrival(8 * MS);
        assert_eq!(b.gap, Some(5 * MS));
        b.arrival(Duration::ZERO);
        assert_eq!(b.gap, Some(3750 * US));
    }

    #[test]
    fn a_burst_of_close_arrivals_shortens_the_window() {
        let mut b = arrivals(backoff(), 5 * MS, 3);
        assert_eq!(b.window(), 10 * MS);
        let mut last = b.window();
        for _ in 0..60 {
            b.arrival(300 * US);
            assert!(b.window() <= last, "{:?} after {last:?}", b.window());
            last = b.window();
        }
        assert_eq!(b.window(), 600 * US);
        // Polled for 600 us: spun, yielded, parked; never slept.
        assert_eq!(b.step(199 * US), IdleStep::Spin);
        assert_eq!(b.step(599 * US), IdleStep::Yield);
        assert_eq!(b.step(600 * US), IdleStep::Park);
    }

    #[test]
    fn the_window_never_drops_below_the_spin() {
        let b = arrivals(backoff(), 10 * US, 40);
        assert_eq!(b.gap, Some(10 * US));
        assert_eq!(b.window(), b.spin);
        assert_eq!(b.step(b.spin - US), IdleStep::Spin);
        assert_eq!(b.step(b.spin), IdleStep::Park);
    }

    #[test]
    fn longer_gaps_lengthen_the_window_up_to_the_bound() {
        let mut b = arrivals(backoff(), 300 * US, 10);
        let mut last = b.window();
        for _ in 0..60 {
            b.arrival(5 * MS);
            assert!(b.window() >= last, "{:?} after {last:?}", b.window());
            assert!(b.window() <= b.sleep_end);
            last = b.window();
        }
        // Converged from below (the mean rounds down): within nanoseconds.
        assert!(10 * MS - b.window() < US, "{:?}", b.window());
        // A mean of exactly half the back-off still polls all of it.
        let b = arrivals(backoff(), b.sleep_end / 2, 3);
        assert_eq!(b.window(), b.sleep_end);
    }

    #[test]
    fn work_rarer_than_the_back_off_only_gets_the_spin() {
        // Polling for longer than the back-off lasts would only burn CPU
        // before the park anyway.
        let b = arrivals(backoff(), b_half_plus(), 3);
        assert_eq!(b.window(), b.spin);
        let b = arrivals(backoff(), Duration::from_secs(1), 3);
        assert_eq!(b.window(), b.spin);
        assert_eq!(b.step(b.spin), IdleStep::Park);
    }

    #[test]
    fn an_arrival_at_an_unknown_time_brings_the_whole_back_off_back() {
        // A guest that never rings, whose work the poller found only when a
        // park timed out: its gaps looked as long as the park timeout, and
        // the poller only spun. Forgetting them lets it back off in full
        // again, and catch such work while it does.
        let mut b = arrivals(backoff(), Duration::from_millis(20), 5);
        assert_eq!(b.window(), b.spin);
        b.forget();
        assert_eq!(b.window(), b.sleep_end);
        assert_eq!(b.step(b.spin), IdleStep::Yield);
        assert_eq!(b.step(b.yield_end), IdleStep::Sleep);
        // Then the close arrivals it catches are learnt as usual.
        let b = arrivals(b, Duration::from_millis(1), 2);
        assert_eq!(b.window(), Duration::from_millis(2));
    }

    /// Just over half the default back-off.
    fn b_half_plus() -> Duration {
        backoff().sleep_end / 2 + Duration::from_nanos(1)
    }

    #[test]
    fn zero_and_huge_gaps_neither_overflow_nor_panic() {
        assert_eq!(next_gap(Some(Duration::MAX), Duration::MAX), Duration::MAX);
        assert_eq!(next_gap(None, Duration::MAX), Duration::MAX);
        assert_eq!(
            next_gap(Some(Duration::MAX), Duration::ZERO).as_nanos(),
            Duration::MAX.as_nanos() * 3 / 4
        );
        let mut b = arrivals(backoff(), Duration::ZERO, 3);
        assert_eq!(b.gap, Some(Duration::ZERO));
        assert_eq!(b.window(), b.spin);
        b = arrivals(b, Duration::MAX, 3);
        assert_eq!(b.window(), b.spin);
        assert_eq!(b.step(Duration::MAX), IdleStep::Park);
        // Close arrivals bring the window back even from there.
        b = arrivals(b, 300 * US, 400);
        assert_eq!(b.window(), 600 * US);
        // Tunables at their largest: the phase ends saturate.
        let max = PollerConfig {
            spin: Duration::MAX,
            yield_for: Duration::MAX,
            sleep_for: Duration::MAX,
            ..PollerConfig::default()
        };
        let b = Backoff::new(&max);
        assert_eq!(b.sleep_end, Duration::MAX);
        assert_eq!(b.step(Duration::ZERO), IdleStep::Spin);
        assert_eq!(b.step(Duration::MAX), IdleStep::Park);
        let b = arrivals(b, Duration::MAX, 2);
        assert_eq!(b.window(), Duration::MAX);
    }

    fn duration() -> impl Strategy<Value = Duration> {
        prop_oneof![
            Just(Duration::ZERO),
            Just(Duration::MAX),
            (0u64..50_000_000).prop_map(Duration::from_nanos),
            any::<u64>().prop_map(Duration::from_nanos),
            (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
        ]
    }

    fn config() -> impl Strategy<Value = PollerConfig> {
        (duration(), duration(), duration()).prop_map(|(spin, yield_for, sleep_for)| PollerConfig {
            spin,
            yield_for,
            sleep_for,
            ..PollerConfig::default()
        })
    }

    proptest! {
        /// Whatever the tunables and the gaps, the poller polls at least
        /// its spin and at most its whole back-off before it parks, and
        /// goes through the phases in order.
        #[test]
        fn the_window_stays_within_the_tunables(
            config in config(),
            gaps in proptest::collection::vec(duration(), 0..40),
            idle in proptest::collection::vec(duration(), 1..8),
        ) {
            let mut b = Backoff::new(&config);
            for g in gaps {
                b.arrival(g);
                let w = b.window();
                prop_assert!(b.spin <= w && w <= b.sleep_end, "{w:?} {b:?}");
                prop_assert_eq!(b.step(w), IdleStep::Park);
                prop_assert_eq!(b.step(b.sleep_end), IdleStep::Park);
                let mut idle = idle.clone();
                idle.sort();
                let steps: Vec<IdleStep> = idle.iter().map(|&i| b.step(i)).collect();
                prop_assert!(steps.windows(2).all(|p| p[0] <= p[1]), "{steps:?}");
            }
        }

        /// The mean lies between the previous mean and the new gap, and
        /// steady gaps keep it.
        #[test]
        fn the_mean_lies_between_old_and_new(g in duration(), s in duration()) {
            let m = next_gap(Some(g), s);
            prop_assert!(g.min(s) <= m && m <= g.max(s), "{m:?} from {g:?} and {s:?}");
            prop_assert_eq!(next_gap(Some(s), s), s);
        }

        /// While the mean gap fits twice in the back-off, the poller polls
        /// at least twice that long; otherwise only its spin.
        #[test]
        fn the_window_follows_the_mean(config in config(), gap in duration()) {
            let b = Backoff { gap: Some(gap), ..Backoff::new(&config) };
            let w = b.window();
            if gap.saturating_mul(2) <= b.sleep_end {
                prop_assert!(w >= gap.saturating_mul(2));
            } else {
                prop_assert_eq!(w, b.spin);
            }
        }
    }
}
