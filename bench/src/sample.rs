//! `vmdedup-bench sample`: one JSON line per interval with what the host
//! spends on the guests.
//!
//! Method (also stated in the report): the memory the guests use on the host
//! is, for each QEMU, the proportional set size (`Pss` in `/proc/PID/smaps`)
//! of its guest-RAM mapping: resident pages, with a page that KSM merged
//! across k mappings counted 1/k in each, so the sum is physical memory. For
//! vmdedup the pool is added once, as the agent's `frames_used` pages (the
//! guests map it read-only; its pages are not in their RAM mappings).

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use crate::{agent, procfs};

/// Options of `sample`.
#[derive(clap::Args)]
pub struct Args {
    /// Append samples here (JSON lines).
    #[arg(long)]
    out: PathBuf,
    /// File of "NAME PID" lines, one per QEMU (re-read every sample, so
    /// guests may start after the sampler).
    #[arg(long)]
    pids_file: PathBuf,
    /// Guest RAM size in MiB (identifies the RAM mapping in smaps).
    #[arg(long)]
    ram_mib: u64,
    /// The agent's pid, for its CPU time (vmdedup configurations).
    #[arg(long)]
    agent_pid: Option<u32>,
    /// The agent's control socket (vmdedup configurations).
    #[arg(long)]
    control: Option<PathBuf>,
    /// The vmdedup binary.
    #[arg(long, default_value = "vmdedup")]
    vmdedup: PathBuf,
    /// The pool memory file (its allocated size is recorded too).
    #[arg(long)]
    pool: Option<PathBuf>,
    /// Stop once this file exists.
    #[arg(long)]
    stop_file: PathBuf,
    /// Milliseconds between samples.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn one(a: &Args, ksmd: Option<u32>) -> Value {
    let t = now();
    let mut qemu = Map::new();
    let (mut rss, mut pss, mut shmem, mut huge) = (0u64, 0u64, 0u64, 0u64);
    let pids = std::fs::read_to_string(&a.pids_file).unwrap_or_default();
    for line in pids.lines() {
        let mut it = line.split_whitespace();
        let (Some(name), Some(pid)) = (it.next(), it.next().and_then(|p| p.parse::<u32>().ok()))
        else {
            continue;
        };
        if let Some(u) = procfs::guest_ram(pid, a.ram_mib << 20) {
            rss += u.rss;
            pss += u.pss;
            shmem += u.rss_shmem;
            huge += u.anon_huge;
            qemu.insert(
                name.into(),
                json!({"pid": pid, "rss": u.rss, "pss": u.pss, "rss_shmem": u.rss_shmem, "anon_huge": u.anon_huge}),
            );
        }
    }
    let ksm: Map<String, Value> = [
        "run",
        "pages_sharing",
        "pages_shared",
        "pages_unshared",
        "general_profit",
        "full_scans",
        "pages_scanned",
    ]
    .iter()
    .filter_map(|k| procfs::ksm(k).map(|v| (k.to_string(), json!(v))))
    .collect();
    let mut v = json!({
        "unix": t,
        "qemu": qemu,
        "guest_ram_rss": rss,
        "guest_ram_pss": pss,
        "guest_ram_rss_shmem": shmem,
        "guest_ram_anon_huge": huge,
        "ksm": ksm,
        "ksmd_cpu_s": ksmd.and_then(procfs::cpu_seconds),
    });
    if let Some(pid) = a.agent_pid {
        v["agent_cpu_s"] = json!(procfs::cpu_seconds(pid));
        let threads: BTreeMap<String, f64> = procfs::thread_cpu(pid).into_iter().collect();
        v["agent_threads_cpu_s"] = json!(threads);
    }
    if let Some(control) = &a.control {
        if let Some(s) = agent::status(&a.vmdedup, control) {
            v["agent"] = json!({
                "frames_used": agent::u(&s, "frames_used"),
                "pages_mapped": agent::u(&s, "pages_mapped"),
                "bytes_saved": agent::u(&s, "bytes_saved"),
                "hints": agent::u(&s, "hints"),
                "hits": agent::u(&s, "hits"),
                "loading": agent::misses(&s, "loading"),
                "file_maps": agent::u(&s, "file_maps"),
                "hint_latency_us": s.get("hint_latency_us").cloned().unwrap_or(Value::Null),
            });
        }
    }
    if let Some(p) = &a.pool {
        v["pool_allocated"] = json!(procfs::allocated_bytes(p));
    }
    v
}

/// Samples until the stop file appears.
pub fn run(a: Args) -> anyhow::Result<()> {
    let ksmd = procfs::ksmd_pid();
    let mut f = OpenOptions::new().create(true).append(true).open(&a.out)?;
    loop {
        let line = serde_json::to_string(&one(&a, ksmd))?;
        writeln!(f, "{line}")?;
        f.flush()?;
        if a.stop_file.exists() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(a.interval_ms));
    }
}
