//! One real shared mapping (a memfd mapped in two processes) carries hints and
//! answers between a host process (pollers) and a guest process (the fake
//! guest), including parks and doorbells across the process boundary.
//!
//! `harness = false`: the test binary re-executes itself as the guest when
//! `VMDEDUP_XPROC_CHILD` is set.

mod common;

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use vmdedup_host_agent::ring::mapping::clear_cloexec;
use vmdedup_host_agent::ring::*;
use vmdedup_protocol::abi::{AnswerStatus, HOST_FLAG_NEED_WAKEUP, MAX_PATH_LEN};

const ENV: &str = "VMDEDUP_XPROC_CHILD";
const REGION: usize = 1 << 20;
const GENERATION: u64 = 0xfeed_beef;
const BURSTS: u64 = 12;
const PER_BURST: u64 = 400;

fn main() {
    match std::env::var(ENV) {
        Ok(v) => guest(&v),
        Err(_) => {
            host();
            println!("cross_process: 1 passed, 0 failed");
        }
    }
}

fn host() {
    let (map, memfd) = SharedMapping::memfd("vmdedup-xproc", REGION).unwrap();
    let mut cfg = RingConfig::new(RingId(42), GENERATION);
    cfg.initial_index = u32::MAX - 50;
    let ring = HostRing::create(map, cfg).unwrap();
    let bell = ring.shared().doorbell.try_clone().unwrap();
    let pcfg = PollerConfig {
        spin: Duration::from_micros(50),
        yield_for: Duration::from_micros(100),
        sleep_for: Duration::from_millis(1),
        park_timeout: None,
        ..PollerConfig::default()
    };
    let pool = PollerPool::start(pcfg, echo).unwrap();
    let handle = pool.add_ring(ring);
    let (mfd, bfd) = (memfd.as_raw_fd(), bell.as_raw_fd());
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env(ENV, format!("{mfd},{bfd}")).stdout(Stdio::piped());
    // SAFETY: the closure only calls fcntl, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            clear_cloexec(mfd)?;
            clear_cloexec(bfd)
        });
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("guest process hung");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let out = std::io::read_to_string(child.stdout.take().unwrap()).unwrap();
    assert!(
        status.success(),
        "guest process failed: {status}; said {out}"
    );
    let rung: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("doorbells="))
        .and_then(|v| v.trim().parse().ok())
        .expect("guest reports its doorbells");
    let stats = handle.shared().stats.snapshot();
    assert_eq!(stats.hints, BURSTS * PER_BURST);
    assert_eq!(stats.bad_entries, BURSTS); // one over-long path per burst
    assert!(
        rung >= 1,
        "the guest paused, so the poller parked and needed doorbells"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while handle.shared().stats.snapshot().doorbells != rung {
        // The poller counts a doorbell when it wakes or next parks.
        assert!(Instant::now() < deadline, "host never saw {rung} doorbells");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(pool.stats()[0].lost_wakeups.load(Ordering::Relaxed), 0);
    pool.shutdown();
    eprintln!(
        "cross_process: {} hints, {rung} doorbells, {} hits",
        stats.hints, stats.hits
    );
}

fn guest(arg: &str) {
    let mut it = arg.split(',').map(|v| v.parse::<i32>().unwrap());
    let (mfd, bfd) = (it.next().unwrap(), it.next().unwrap());
    // SAFETY: both fds were handed to us by the parent and are used only here.
    let (memfd, bell) = unsafe { (OwnedFd::from_raw_fd(mfd), OwnedFd::from_raw_fd(bfd)) };
    let map = SharedMapping::map_fd(memfd.as_fd(), REGION).unwrap();
    let mut g = GuestRing::attach(Arc::new(map), Some(EventFd::from_owned(bell))).unwrap();
    assert_eq!(g.generation(), GENERATION);
    let id = RingId(42);
    let mut req = 0u64;
    for burst in 0..BURSTS {
        // Wait until the idle poller has parked and asks for a doorbell (it
        // says so in the header), so the first publish must ring. Waiting on
        // the flag, not on a fixed pause, keeps this independent of timing.
        let park_deadline = Instant::now() + Duration::from_secs(30);
        while g.host_flags() & HOST_FLAG_NEED_WAKEUP == 0 {
            assert!(
                Instant::now() < park_deadline,
                "the idle poller never parked"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut expect = std::collections::HashMap::new();
        let mut sent = 0;
        let mut answered = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        while answered < PER_BURST {
            while sent < PER_BURST {
                let len = match sent % 7 {
                    0 => 300 + (sent as usize * 13) % 3000,
                    _ => 1 + (sent as usize * 31) % 150,
                };
                let len = if sent == 5 {
                    MAX_PATH_LEN as usize + 10
                } else {
                    len
                };
                let path = path_of(len, burst * 1000 + sent);
                let mtime = (req * 3) as i64;
                if g.stage(hint(req, 0, mtime, req + 1), &path).is_err() {
                    break;
                }
                expect.insert(req, (path, mtime));
                req += 1;
                sent += 1;
            }
            g.publish();
            answered += g.reap(|c| {
                let (path, mtime) = expect
                    .remove(&c.request_id)
                    .expect("answer to a known request");
                if path.len() > MAX_PATH_LEN as usize {
                    assert_eq!(c.status, AnswerStatus::PathTooLong as u16);
                } else {
                    check_echo(id, &c, c.request_id, &path, mtime, c.request_id + 1);
                }
            }) as u64;
            assert!(Instant::now() < deadline, "answers stopped coming");
        }
        assert!(expect.is_empty());
    }
    println!("doorbells={}", g.doorbells_rung());
}
