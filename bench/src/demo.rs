//! `vmdedup-bench demo-monitor`: the live table of `scripts/demo`.
//!
//! Guest-side numbers come from the module's counters, which each demo guest
//! prints every second (`DEMO-STATS k=v ...` on its output port, which
//! `scripts/guest-run` writes to `WORKDIR/vmN.out.log`); host-side numbers
//! come from the agent (`vmdedup status --json`). Host memory is measured
//! from outside: the `Pss` of each QEMU's guest-RAM mapping in
//! `/proc/PID/smaps` (pids from `WORKDIR/vmN.pid`) plus the pages allocated
//! to the pool files (`st_blocks`), before the workload (when a guest says
//! `DEMO-PHASE ready`) and after it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::agent;
use crate::procfs;
use crate::tree_pages;

/// Options of `demo-monitor`.
#[derive(clap::Args)]
pub struct Args {
    /// The guest-run work directory (control.sock, vmN.out.log).
    #[arg(long)]
    workdir: PathBuf,
    /// Number of guests.
    #[arg(long)]
    vms: usize,
    /// The vmdedup binary.
    #[arg(long)]
    vmdedup: PathBuf,
    /// Keep running while this process (scripts/guest-run) lives.
    #[arg(long)]
    pid: u32,
    /// First line of the table.
    #[arg(long, default_value = "vmdedup demo")]
    title: String,
    /// Status document written once every guest is done (by the demo's
    /// --host-cmd, while the agent still runs); used for the summary.
    #[arg(long)]
    final_status: Option<PathBuf>,
    /// Whether the guests stay up after the workload (--keep).
    #[arg(long)]
    keep: bool,
    /// Each guest's RAM in MiB (to find the guest-RAM mapping in smaps).
    #[arg(long)]
    mem_mib: Option<u64>,
    /// The directory holding the pool file(s) (`vmdedup.pool*`).
    #[arg(long)]
    regions: Option<PathBuf>,
    /// A tree the guests read (repeatable): one copy of the data is the sum
    /// of their pages.
    #[arg(long)]
    tree: Vec<PathBuf>,
    /// Write the host memory measured before and after the workload to this
    /// file as JSON (bytes: guests_before, guests_after, pool_before,
    /// pool_after; null where not measured), for `scripts/demo --distro`'s
    /// comparison with a boot without vmdedup.
    #[arg(long)]
    result: Option<PathBuf>,
}

/// Host memory measured from outside, in bytes.
#[derive(Default)]
struct Memory {
    /// Per guest: guest-RAM `Pss` when it was ready to start its workload.
    before: Vec<Option<u64>>,
    /// Per guest: the latest guest-RAM `Pss` (kept once its QEMU is gone).
    now: Vec<Option<u64>>,
    /// Pool pages when the first guest was ready.
    pool_before: Option<u64>,
    /// The latest pool pages (kept once the files are gone).
    pool_now: Option<u64>,
}

impl Memory {
    fn new(vms: usize) -> Memory {
        Memory {
            before: vec![None; vms],
            now: vec![None; vms],
            ..Memory::default()
        }
    }

    /// Takes one sample of every guest's RAM and of the pool.
    fn sample(&mut self, a: &Args, guests: &[Guest]) {
        let Some(mem) = a.mem_mib else { return };
        for (i, g) in guests.iter().enumerate() {
            let pid = std::fs::read_to_string(a.workdir.join(format!("vm{}.pid", i + 1)))
                .ok()
                .and_then(|p| p.trim().parse::<u32>().ok());
            let pss = pid
                .and_then(|p| procfs::guest_ram(p, mem << 20))
                .map(|r| r.pss);
            if let Some(pss) = pss {
                self.now[i] = Some(pss);
                if self.before[i].is_none() && g.phase == "ready" {
                    self.before[i] = Some(pss);
                }
            }
        }
        if let Some(p) = a.regions.as_deref().and_then(pool_bytes) {
            self.pool_now = Some(p);
            if self.pool_before.is_none() && guests.iter().any(|g| g.phase == "ready") {
                self.pool_before = Some(p);
            }
        }
    }

    fn guests_now(&self) -> Option<u64> {
        self.now.iter().copied().sum()
    }

    fn guests_before(&self) -> Option<u64> {
        self.before.iter().copied().sum()
    }
}

/// Pages allocated to the pool files in `dir` (`vmdedup.pool`, and
/// `vmdedup.pool.DOMAIN` for other trust domains); `None` if there are none.
fn pool_bytes(dir: &std::path::Path) -> Option<u64> {
    let mut total = None;
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name == "vmdedup.pool" || name.starts_with("vmdedup.pool.") {
            if let Some(b) = procfs::allocated_bytes(&e.path()) {
                total = Some(total.unwrap_or(0) + b);
            }
        }
    }
    total
}

/// What one guest's output says so far.
#[derive(Default)]
struct Guest {
    stats: BTreeMap<String, u64>,
    phase: String,
    python: Vec<String>,
    reads: Vec<String>,
    errors: Vec<String>,
    done_rc: Option<String>,
    exit: Option<String>,
    /// `/proc/meminfo` fields (kB) and `lower_pages_dropped` at the end.
    meminfo: BTreeMap<String, u64>,
}

impl Guest {
    fn read(path: &std::path::Path) -> Guest {
        let mut g = Guest::default();
        let Ok(bytes) = std::fs::read(path) else {
            return g;
        };
        for line in String::from_utf8_lossy(&bytes).lines() {
            let line = line.trim_end_matches('\r');
            if let Some(rest) = line.strip_prefix("DEMO-STATS ") {
                g.stats = rest
                    .split_whitespace()
                    .filter_map(|kv| kv.split_once('='))
                    .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
                    .collect();
            } else if let Some(rest) = line.strip_prefix("DEMO-MEMINFO ") {
                g.meminfo = rest
                    .split_whitespace()
                    .filter_map(|kv| kv.split_once('='))
                    .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
                    .collect();
            } else if let Some(rest) = line.strip_prefix("DEMO-PHASE ") {
                g.phase = rest.to_string();
            } else if let Some(rest) = line.strip_prefix("DEMO-READ ") {
                g.reads.push(rest.to_string());
            } else if let Some(rest) = line.strip_prefix("DEMO-ERROR ") {
                g.errors.push(rest.to_string());
            } else if let Some(rest) = line.strip_prefix("DEMO-DONE ") {
                g.done_rc = Some(rest.trim_start_matches("rc=").to_string());
                g.phase = "done".into();
            } else if let Some(rest) = line.strip_prefix("VMDEDUP-EXIT ") {
                g.exit = Some(rest.to_string());
            } else if line.starts_with("python: ") {
                g.python.push(line.to_string());
            } else if line.starts_with("guest-run: ") {
                g.errors.push(line.to_string());
            }
        }
        g
    }

    fn s(&self, k: &str) -> u64 {
        self.stats.get(k).copied().unwrap_or(0)
    }

    fn finished(&self) -> bool {
        self.done_rc.is_some() || self.exit.is_some()
    }

    fn state(&self) -> String {
        if let Some(rc) = &self.done_rc {
            return if rc == "0" {
                "done".into()
            } else {
                format!("done, FAILED (rc {rc})")
            };
        }
        if let Some(rc) = &self.exit {
            return format!("exited ({rc})");
        }
        if self.stats.is_empty() && self.phase.is_empty() {
            return "booting".into();
        }
        let p = self.phase.as_str();
        // "NS pass P: what" -> "pass P: what", short enough for the column.
        let p = p.split_once(' ').map(|(_, r)| r).unwrap_or(p);
        let p = p
            .replace("reading every file under", "reading all of")
            .replace("python from", "python in");
        p.chars().take(32).collect()
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1048576.0)
}

fn pages_mib(pages: u64) -> String {
    mib(pages * 4096)
}

fn fmt_us(us: u64) -> String {
    if us >= 1000 {
        format!("{:.1} ms", us as f64 / 1000.0)
    } else {
        format!("{us} us")
    }
}

fn table(
    a: &Args,
    guests: &[Guest],
    status: Option<&Value>,
    mem: &Memory,
    elapsed: Duration,
) -> String {
    let mut t = String::new();
    let secs = elapsed.as_secs();
    let _ = writeln!(t, "{}   (elapsed {}:{:02})", a.title, secs / 60, secs % 60);
    let _ = writeln!(t);
    let _ = writeln!(
        t,
        "{:<4} {:<32} | {:>7} {:>6} {:>7} {:>10} {:>10} {:>9} | {:>11} | {:>11}",
        "", "", "files", "", "host", "pages from", "pages from", "", "agent: pool", "host: guest"
    );
    let _ = writeln!(
        t,
        "{:<4} {:<32} | {:>7} {:>6} {:>7} {:>10} {:>10} {:>9} | {:>11} | {:>11}",
        "VM",
        "state",
        "hinted",
        "hits",
        "loading",
        "pool",
        "lower",
        "fallbacks",
        "mapped",
        "RAM (Pss)"
    );
    let _ = writeln!(t, "{}", "-".repeat(127));
    for (i, g) in guests.iter().enumerate() {
        let name = format!("vm{}", i + 1);
        let mapped = status
            .and_then(|s| agent::vm(s, &name))
            .map(|v| agent::u(v, "pages_mapped"));
        let _ = writeln!(
            t,
            "{:<4} {:<32} | {:>7} {:>6} {:>7} {:>10} {:>10} {:>9} | {:>11} | {:>11}",
            name,
            g.state(),
            g.s("hints_sent"),
            g.s("answers_hit"),
            g.s("answers_miss_loading"),
            g.s("pages_pool") + g.s("faults_pool"),
            g.s("pages_lower"),
            g.s("fallbacks"),
            mapped.map(pages_mib).unwrap_or_else(|| "-".into()),
            mem.now
                .get(i)
                .copied()
                .flatten()
                .map(mib)
                .unwrap_or_else(|| "-".into()),
        );
    }
    let _ = writeln!(t, "{}", "-".repeat(127));
    match status {
        Some(s) => {
            let lat = s.get("hint_latency_us");
            let _ = writeln!(
                t,
                "host: pool holds {} ({} frames) | mapped into VMs {} | saved vs no dedup {} | hints {} hits {} | hint latency p50 {} p99 {}",
                pages_mib(agent::u(s, "frames_used")),
                agent::u(s, "frames_used"),
                pages_mib(agent::u(s, "pages_mapped")),
                mib(agent::u(s, "bytes_saved")),
                agent::u(s, "hints"),
                agent::u(s, "hits"),
                fmt_us(lat.map(|l| agent::u(l, "p50")).unwrap_or(0)),
                fmt_us(lat.map(|l| agent::u(l, "p99")).unwrap_or(0)),
            );
        }
        None => {
            let _ = writeln!(t, "host: agent not answering yet");
        }
    }
    if let (Some(g), Some(p)) = (mem.guests_now(), mem.pool_now) {
        let _ = writeln!(
            t,
            "host memory, measured: guests' RAM {} + pool {} = {}",
            mib(g),
            mib(p),
            mib(g + p)
        );
    }
    let _ = writeln!(
        t,
        "(files hinted / hits / loading / pages: the guest module's counters; mapped: the agent's pages_mapped for that VM;\n RAM: the Pss of the guest's RAM in its QEMU's smaps)"
    );
    t
}

/// The summary's measured part: host memory before and after the workload
/// against one copy of the data the guests read.
fn memory_summary(t: &mut String, mem: &Memory, vms: usize, one_copy: Option<u64>) {
    let (Some(gb), Some(ga), Some(pb), Some(pa)) = (
        mem.guests_before(),
        mem.guests_now(),
        mem.pool_before,
        mem.pool_now,
    ) else {
        let _ = writeln!(
            t,
            "host memory: not measured (no smaps of every guest's RAM, or no pool file, before and after the workload)"
        );
        return;
    };
    let _ = writeln!(
        t,
        "host memory, measured from outside (Pss of each guest's RAM in /proc/PID/smaps, plus the pages allocated to the pool):"
    );
    let _ = writeln!(
        t,
        "      before the workload: guests {}, pool {}",
        mib(gb),
        mib(pb)
    );
    let _ = writeln!(
        t,
        "      after it:            guests {}, pool {}",
        mib(ga),
        mib(pa)
    );
    // Signed: the guests may give back more (boot memory they freed and
    // reported) than the pool took.
    let inc = (ga + pa) as i64 - (gb + pb) as i64;
    let added = if inc < 0 {
        format!("-{}", mib(inc.unsigned_abs()))
    } else {
        mib(inc as u64)
    };
    match one_copy.filter(|&c| c > 0) {
        Some(c) => {
            let _ = writeln!(
                t,
                "      the workload added {added}: {:.2}x one copy of the files the guests read ({}); without sharing each of the {} guests caches its own copy (up to {:.0}x).",
                inc as f64 / c as f64,
                mib(c),
                vms,
                vms as f64
            );
        }
        None => {
            let _ = writeln!(t, "      the workload added {added}");
        }
    }
    let _ = writeln!(
        t,
        "      (guest RAM a guest frees goes back to the host through free page reporting, a moment later; a page counted in the pool is counted once, however many guests map it)"
    );
}

fn summary(
    guests: &[Guest],
    status: Option<&Value>,
    mem: &Memory,
    one_copy: Option<u64>,
) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "\n== summary ==");
    for (i, g) in guests.iter().enumerate() {
        let pool = g.s("pages_pool") + g.s("faults_pool");
        let lower = g.s("pages_lower");
        let pct = if pool + lower > 0 {
            pool as f64 * 100.0 / (pool + lower) as f64
        } else {
            0.0
        };
        let _ = writeln!(
            t,
            "vm{}: {}; {} hints, {} hits; pages read from the pool {} ({:.0}%), from the lower disk {}; {} fallbacks; {} pages verified, {} mismatches",
            i + 1,
            g.state(),
            g.s("hints_sent"),
            g.s("answers_hit"),
            pool,
            pct,
            lower,
            g.s("fallbacks"),
            g.s("verify_pages"),
            g.s("verify_mismatches"),
        );
        if !g.meminfo.is_empty() {
            let kb = |k: &str| mib(g.meminfo.get(k).copied().unwrap_or(0) * 1024);
            let _ = writeln!(
                t,
                "     memory at the end: page cache {} (shmem {}), anonymous {}, slab {}, free {} of {}; lower pages dropped {}",
                kb("Cached"),
                kb("Shmem"),
                kb("AnonPages"),
                kb("Slab"),
                kb("MemFree"),
                kb("MemTotal"),
                g.meminfo.get("lower_pages_dropped").copied().unwrap_or(0),
            );
        }
        for p in g.python.iter().chain(g.reads.iter()) {
            let _ = writeln!(t, "     {p}");
        }
        for e in &g.errors {
            let _ = writeln!(t, "     ERROR: {e}");
        }
    }
    if let Some(s) = status {
        let mapped = agent::u(s, "pages_mapped");
        let used = agent::u(s, "frames_used");
        let _ = writeln!(
            t,
            "host: the guests mapped {} of file pages from the pool; without deduplication each guest would\n      cache its own copy ({}), with vmdedup the host holds one copy: {} in {} frames.\n      Saved {} (bytes_saved){}.",
            pages_mib(mapped),
            pages_mib(mapped),
            pages_mib(used),
            used,
            mib(agent::u(s, "bytes_saved")),
            if used > 0 { format!(", {:.1}x less memory for that data", mapped as f64 / used as f64) } else { String::new() },
        );
        let _ = writeln!(
            t,
            "      {} hints, {} hits, {} answered \"loading\" (first open of a file while the host loads it: read from the lower disk, then, once the host said it was loaded, served from the pool and those lower pages dropped)",
            agent::u(s, "hints"),
            agent::u(s, "hits"),
            agent::misses(s, "loading"),
        );
    } else {
        let _ = writeln!(t, "host: no status from the agent");
    }
    memory_summary(&mut t, mem, guests.len(), one_copy);
    t
}

fn alive(pid: u32) -> bool {
    // SAFETY: kill with signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

/// Runs the live table until the guest-run process is gone.
pub fn run(a: Args) -> anyhow::Result<()> {
    let start = Instant::now();
    let tty = std::io::stdout().is_terminal();
    let control = a.workdir.join("control.sock");
    let mut last_status: Option<Value> = None;
    let mut summarized = false;
    let mut last_plain = Instant::now() - Duration::from_secs(60);
    let mut mem = Memory::new(a.vms);
    // One copy of the data: every page of every tree, counted as the pool
    // stores it (the last page of a file whole).
    let mut one_copy = None;
    for dir in &a.tree {
        match tree_pages::count(dir) {
            Ok(p) => one_copy = Some(one_copy.unwrap_or(0) + p.pages * 4096),
            Err(e) => eprintln!("demo-monitor: cannot count {}: {e:#}", dir.display()),
        }
    }
    loop {
        let running = alive(a.pid);
        let guests: Vec<Guest> = (1..=a.vms)
            .map(|i| Guest::read(&a.workdir.join(format!("vm{i}.out.log"))))
            .collect();
        if let Some(s) = agent::status(&a.vmdedup, &control) {
            last_status = Some(s);
        }
        mem.sample(&a, &guests);
        let all_done = guests.iter().all(Guest::finished);
        if !summarized {
            let t = table(&a, &guests, last_status.as_ref(), &mem, start.elapsed());
            let mut out = std::io::stdout().lock();
            if tty {
                // Home, clear, redraw.
                let _ = write!(out, "\x1b[H\x1b[2J{t}");
            } else if all_done || !running || last_plain.elapsed() >= Duration::from_secs(10) {
                let _ = writeln!(out, "{t}");
                last_plain = Instant::now();
            }
            let _ = out.flush();
        }
        if (all_done || !running) && !summarized {
            // The demo's --host-cmd writes the final status once every guest
            // is done, before guest-run stops the agent.
            let mut fin = None;
            if let Some(f) = &a.final_status {
                for _ in 0..50 {
                    if let Some(v) = std::fs::read(f)
                        .ok()
                        .and_then(|b| serde_json::from_slice(&b).ok())
                    {
                        fin = Some(v);
                        break;
                    }
                    if !alive(a.pid) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            let st = fin.or(last_status.clone());
            print!("{}", summary(&guests, st.as_ref(), &mem, one_copy));
            if let Some(f) = &a.result {
                let doc = serde_json::json!({
                    "guests_before": mem.guests_before(),
                    "guests_after": mem.guests_now(),
                    "pool_before": mem.pool_before,
                    "pool_after": mem.pool_now,
                });
                if let Err(e) = std::fs::write(f, format!("{doc}\n")) {
                    eprintln!("demo-monitor: cannot write {}: {e}", f.display());
                }
            }
            if a.keep && running {
                println!(
                    "--keep: the guests stay up (logs in {}); press Ctrl-C to stop them",
                    a.workdir.display()
                );
            }
            let _ = std::io::stdout().flush();
            summarized = true;
        }
        if !running {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Options of `demo-compare`.
#[derive(clap::Args)]
pub struct CompareArgs {
    /// The run without vmdedup (`demo-monitor --result`).
    baseline: PathBuf,
    /// The run with vmdedup.
    vmdedup: PathBuf,
}

/// Host memory of one run, from its `demo-monitor --result` file.
struct RunMemory {
    guests_before: u64,
    guests_after: u64,
    pool_after: u64,
}

fn run_memory(path: &std::path::Path) -> anyhow::Result<RunMemory> {
    use anyhow::Context;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let get = |k: &str| {
        v.get(k)
            .and_then(Value::as_u64)
            .with_context(|| format!("{}: {k} was not measured", path.display()))
    };
    Ok(RunMemory {
        guests_before: get("guests_before")?,
        guests_after: get("guests_after")?,
        pool_after: get("pool_after").unwrap_or(0),
    })
}

/// Prints how much host memory the guests and the pool held at the end of
/// each run, and what the workload added to it in each.
pub fn compare(a: CompareArgs) -> anyhow::Result<()> {
    let base = run_memory(&a.baseline)?;
    let with = run_memory(&a.vmdedup)?;
    let base_total = base.guests_after + base.pool_after;
    let with_total = with.guests_after + with.pool_after;
    println!("\n== host memory: the same boot and workload, without and with vmdedup ==");
    println!(
        "without vmdedup: guests and pool {} at the end ({} once booted, before the workload)",
        mib(base_total),
        mib(base.guests_before)
    );
    println!(
        "with vmdedup:    guests {} + pool {} = {} at the end ({} once booted)",
        mib(with.guests_after),
        mib(with.pool_after),
        mib(with_total),
        mib(with.guests_before)
    );
    if base_total > 0 {
        let diff = base_total as i64 - with_total as i64;
        println!(
            "vmdedup {} {} of host memory ({:.0}% of the run without it), measured from outside (smaps Pss of each guest's RAM, the pool file's allocated pages)",
            if diff >= 0 { "saved" } else { "cost" },
            mib(diff.unsigned_abs()),
            diff.unsigned_abs() as f64 * 100.0 / base_total as f64
        );
    }
    Ok(())
}
