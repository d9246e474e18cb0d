//! `scripts/bench ring`: hint -> answer round trips between two processes over
//! a real shared mapping, against a Unix socket, a pipe, and the same ring
//! with an eventfd doorbell on every message; ring throughput through one
//! poller; CPU use of a parked poller.
//!
//! The parent is the host (pollers, echo servers); it re-executes itself as
//! the guest (`VMDEDUP_BENCH_CHILD`), which measures and reports `key value`
//! lines on stdout. Results: a table on stdout and JSON at `--out PATH`
//! (default `<workspace>/target/bench/ring.json`).

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmdedup_host_agent::ring::mapping::clear_cloexec;
use vmdedup_host_agent::ring::*;
use vmdedup_protocol::abi::{AnswerStatus, SubmissionEntry};
use vmdedup_protocol::pool::TableRef;

const ENV: &str = "VMDEDUP_BENCH_CHILD";
const REGION: usize = 1 << 20;
const REQ_BYTES: usize = 128;
const RESP_BYTES: usize = 64;
const PATH: &[u8] = b"usr/lib/x86_64-linux-gnu/libc.so.6";

fn handler(_r: RingId, h: &Hint<'_>) -> Answer {
    Answer::Hit(TableRef {
        offset: h.request_id,
        page_count: 1,
        file_map_id: 0,
        file_size: 0,
        map_generation: 0,
    })
}

fn main() {
    if let Ok(v) = std::env::var(ENV) {
        child(&v);
        return;
    }
    let args: Vec<String> = std::env::args().collect();
    let secs: f64 = arg(&args, "--secs")
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.5);
    let out = arg(&args, "--out")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench/ring.json")
        });
    parent(secs, &out);
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn parent(secs: f64, out: &std::path::Path) {
    // The polled ring.
    let (map_a, memfd_a) = SharedMapping::memfd("bench-ring", REGION).unwrap();
    let ring_a = HostRing::create(map_a, RingConfig::new(RingId(1), 1)).unwrap();
    let bell_a = ring_a.shared().doorbell.try_clone().unwrap();
    let pcfg = PollerConfig {
        spin: Duration::from_millis(2),
        batch: 256,
        ..PollerConfig::default()
    };
    let pool = PollerPool::start(pcfg, handler).unwrap();
    let handle_a = pool.add_ring(ring_a);
    let poller = pool.stats().remove(0);

    // The same ring, driven by doorbells only: a thread blocks on the eventfd,
    // answers, and signals a reply eventfd.
    let (map_b, memfd_b) = SharedMapping::memfd("bench-ring-bell", REGION).unwrap();
    let mut ring_b = HostRing::create(map_b, RingConfig::new(RingId(2), 1)).unwrap();
    let bell_b = ring_b.shared().doorbell.try_clone().unwrap();
    let reply_b = EventFd::new().unwrap();
    let reply_b2 = reply_b.try_clone().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = Arc::clone(&stop);
    let bell_b2 = bell_b.try_clone().unwrap();
    let bell_thread = std::thread::spawn(move || {
        while !stop2.load(Ordering::Relaxed) {
            if bell_b2.wait(200) == 0 {
                continue;
            }
            while ring_b.poll_round(&handler, 64) > 0 {}
            reply_b2.notify();
        }
    });

    // Unix socket and pipe echo servers.
    let (us_host, us_guest) = UnixStream::pair().unwrap();
    std::thread::spawn(move || echo_server(us_host.try_clone().unwrap(), us_host));
    let (req_r, req_w) = pipe();
    let (resp_r, resp_w) = pipe();
    std::thread::spawn(move || {
        echo_server(std::fs::File::from(req_r), std::fs::File::from(resp_w))
    });

    let fds: Vec<RawFd> = vec![
        memfd_a.as_raw_fd(),
        bell_a.as_raw_fd(),
        memfd_b.as_raw_fd(),
        bell_b.as_raw_fd(),
        reply_b.as_raw_fd(),
        us_guest.as_raw_fd(),
        req_w.as_raw_fd(),
        resp_r.as_raw_fd(),
    ];
    let list = fds
        .iter()
        .map(|f| f.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env(ENV, format!("{secs};{list}"))
        .stdout(Stdio::piped());
    let keep = fds.clone();
    // SAFETY: the closure only calls fcntl, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &keep {
                clear_cloexec(fd)?;
            }
            Ok(())
        });
    }
    eprintln!("ring bench: measuring (about {:.0} s)...", secs * 5.0 + 5.0);
    let output = cmd.spawn().unwrap().wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "bench guest failed: {}",
        output.status
    );
    let text = String::from_utf8_lossy(&output.stdout);
    let get = |k: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(f64::NAN)
    };
    let hints_before_idle = handle_a.shared().stats.snapshot();

    // Idle poller CPU: wait for the park, then measure its thread's CPU time.
    let t0 = Instant::now();
    while poller.state() != PollerState::Parked && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let tid = poller.tid.load(Ordering::Relaxed);
    let cpu0 = thread_cpu_ns(tid);
    let w0 = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let idle_pct = (thread_cpu_ns(tid) - cpu0) as f64 / w0.elapsed().as_nanos() as f64 * 100.0;
    stop.store(true, Ordering::Relaxed);
    let _ = bell_thread.join();
    pool.shutdown();

    let ring50 = get("ring_rtt_p50_ns");
    let rows = [
        ("ring, polled (exitless)", "ring"),
        ("ring + eventfd per message", "doorbell"),
        ("unix socket ping-pong", "unix"),
        ("pipe ping-pong", "pipe"),
    ];
    println!();
    println!(
        "{:<30} {:>10} {:>10} {:>14}",
        "hint -> answer round trip", "p50 ns", "p99 ns", "p50 / ring p50"
    );
    for (name, k) in rows {
        let p50 = get(&format!("{k}_rtt_p50_ns"));
        let p99 = get(&format!("{k}_rtt_p99_ns"));
        println!("{name:<30} {p50:>10.0} {p99:>10.0} {:>13.1}x", p50 / ring50);
    }
    let tput = get("ring_hints_per_s");
    let bells = get("ring_doorbells_per_hint");
    println!();
    println!(
        "ring throughput, one poller:    {:.2} M hints/s (doorbells per hint {bells:.6})",
        tput / 1e6
    );
    println!("parked poller CPU:              {idle_pct:.3} % of a core over 3 s");
    println!(
        "targets: ring >= 20x below unix socket: {:.1}x; >= 10 M hints/s: {:.2} M; idle <= 2 %: {idle_pct:.3} %",
        get("unix_rtt_p50_ns") / ring50,
        tput / 1e6
    );
    eprintln!(
        "host counters: {} hints, {} doorbells, poller parks {}",
        hints_before_idle.hints,
        hints_before_idle.doorbells,
        poller.parks.load(Ordering::Relaxed)
    );

    let keys = [
        "ring_rtt_p50_ns",
        "ring_rtt_p99_ns",
        "doorbell_rtt_p50_ns",
        "doorbell_rtt_p99_ns",
        "unix_rtt_p50_ns",
        "unix_rtt_p99_ns",
        "pipe_rtt_p50_ns",
        "pipe_rtt_p99_ns",
        "ring_hints_per_s",
        "ring_doorbells_per_hint",
    ];
    let mut json = String::from("{\n");
    for k in keys {
        let v = get(k);
        json += &format!(
            "  \"{k}\": {},\n",
            if v.is_finite() {
                format!("{v}")
            } else {
                "null".into()
            }
        );
    }
    json += &format!(
        "  \"unix_over_ring_p50\": {:.3},\n",
        get("unix_rtt_p50_ns") / ring50
    );
    json += &format!("  \"poller_idle_cpu_pct\": {idle_pct:.4},\n");
    json += &format!(
        "  \"cpus\": {}\n}}\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(out, json).unwrap();
    println!("wrote {}", out.display());
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` has room for the two fds pipe2 writes.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(r, 0, "pipe2");
    // SAFETY: both fds were just created and are owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

fn echo_server(mut r: impl Read, mut w: impl Write) {
    let mut req = [0u8; REQ_BYTES];
    let resp = [7u8; RESP_BYTES];
    while r.read_exact(&mut req).is_ok() {
        if w.write_all(&resp).is_err() {
            break;
        }
    }
}

/// CPU time of thread `tid` of this process, from schedstat (ns).
fn thread_cpu_ns(tid: u64) -> u64 {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// The guest process.
// ---------------------------------------------------------------------------

fn percentiles(mut v: Vec<u64>) -> (u64, u64) {
    v.sort_unstable();
    let at = |q: f64| {
        v.get(((v.len() as f64 * q) as usize).min(v.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    (at(0.50), at(0.99))
}

/// Runs `one` repeatedly (after a warm-up) for about `secs`, returning the
/// round-trip times in ns.
fn measure(secs: f64, mut one: impl FnMut()) -> Vec<u64> {
    for _ in 0..2000 {
        one();
    }
    let mut v = Vec::with_capacity(1 << 20);
    let end = Instant::now() + Duration::from_secs_f64(secs);
    while v.len() < 2_000_000 {
        let t = Instant::now();
        one();
        v.push(t.elapsed().as_nanos() as u64);
        if v.len() % 256 == 0 && Instant::now() > end {
            break;
        }
    }
    v
}

fn report(name: &str, v: Vec<u64>) {
    let n = v.len();
    let (p50, p99) = percentiles(v);
    println!("{name}_rtt_p50_ns {p50}");
    println!("{name}_rtt_p99_ns {p99}");
    println!("{name}_samples {n}");
}

fn child(arg: &str) {
    let (secs, list) = arg.split_once(';').unwrap();
    let secs: f64 = secs.parse().unwrap();
    // SAFETY: every fd in the list was handed to us by the parent and is
    // owned by exactly one of the values made here.
    let fds: Vec<OwnedFd> = list
        .split(',')
        .map(|f| unsafe { OwnedFd::from_raw_fd(f.parse().unwrap()) })
        .collect();
    let mut it = fds.into_iter();
    let mut next = || it.next().unwrap();
    let (memfd_a, bell_a, memfd_b, bell_b, reply_b) = (next(), next(), next(), next(), next());
    let (sock, req_w, resp_r) = (next(), next(), next());

    let map_a = Arc::new(SharedMapping::map_fd(memfd_a.as_fd(), REGION).unwrap());
    let mut g = GuestRing::attach(map_a, Some(EventFd::from_owned(bell_a))).unwrap();
    let entry = SubmissionEntry {
        namespace_id: 1,
        file_size: 4096,
        mtime_ns: 1,
        page_count: 1,
        ..Default::default()
    };
    let mut req = 0u64;

    // 1. Polled ring round trip: one hint in flight.
    let v = measure(secs, || {
        g.stage(
            SubmissionEntry {
                request_id: req,
                ..entry
            },
            PATH,
        )
        .unwrap();
        g.publish();
        let mut got = 0;
        while got == 0 {
            got = g.reap(|c| debug_assert_eq!(c.table_offset, req));
            if got == 0 {
                std::hint::spin_loop();
            }
        }
        req += 1;
    });
    report("ring", v);

    // 2. Ring throughput: keep the submission ring full, answers batched.
    let bells0 = g.doorbells_rung();
    let (mut sent, mut done) = (0u64, 0u64);
    let t = Instant::now();
    let end = t + Duration::from_secs_f64(secs);
    loop {
        while g
            .stage(
                SubmissionEntry {
                    request_id: sent,
                    ..entry
                },
                PATH,
            )
            .is_ok()
        {
            sent += 1;
        }
        g.publish();
        done += g.reap(|c| debug_assert_eq!(c.status, AnswerStatus::Hit as u16)) as u64;
        if done % 4096 < 1024 && Instant::now() > end {
            break;
        }
    }
    while done < sent {
        done += g.reap(|_| {}) as u64;
    }
    let el = t.elapsed().as_secs_f64();
    println!("ring_hints_per_s {:.0}", done as f64 / el);
    println!(
        "ring_doorbells_per_hint {:.9}",
        (g.doorbells_rung() - bells0) as f64 / done as f64
    );

    // 3. The same ring, eventfd doorbell per message, blocking reply.
    let map_b = Arc::new(SharedMapping::map_fd(memfd_b.as_fd(), REGION).unwrap());
    let mut gb = GuestRing::attach(map_b, Some(EventFd::from_owned(bell_b))).unwrap();
    gb.set_always_doorbell(true);
    let reply = EventFd::from_owned(reply_b);
    let mut rb = 0u64;
    let v = measure(secs, || {
        gb.stage(
            SubmissionEntry {
                request_id: rb,
                ..entry
            },
            PATH,
        )
        .unwrap();
        gb.publish();
        let mut got = 0;
        while got == 0 {
            reply.wait(-1);
            got = gb.reap(|_| {});
        }
        rb += 1;
    });
    report("doorbell", v);

    // 4. Unix socket ping-pong (128-byte request, 64-byte answer).
    let mut s = UnixStream::from(sock);
    let msg = [1u8; REQ_BYTES];
    let mut resp = [0u8; RESP_BYTES];
    let v = measure(secs, || {
        s.write_all(&msg).unwrap();
        s.read_exact(&mut resp).unwrap();
    });
    report("unix", v);

    // 5. Pipe ping-pong.
    let (mut w, mut r) = (std::fs::File::from(req_w), std::fs::File::from(resp_r));
    let v = measure(secs, || {
        w.write_all(&msg).unwrap();
        r.read_exact(&mut resp).unwrap();
    });
    report("pipe", v);
}
