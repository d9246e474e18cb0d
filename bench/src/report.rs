//! `vmdedup-bench report`: from the samples and logs of a `scripts/bench ksm`
//! run, writes `report.md`, `report.json` and `memory.png`.
//!
//! Per sample, for a configuration:
//! - host memory = sum over QEMUs of the guest-RAM `Pss`, plus for vmdedup
//!   the pool's used frames (`frames_used * 4096`);
//! - saved: KSM: sum of guest-RAM `Rss - Pss` (what merging removed from
//!   these guests; `pages_sharing` and `general_profit`, host-wide, are
//!   reported too); vmdedup: the agent's `bytes_saved`; none: `Rss - Pss`
//!   (no sharing: about 0).

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::{json, Value};

use crate::plot;

/// Options of `report`.
#[derive(clap::Args)]
pub struct Args {
    /// The bench run directory (target/bench/ksm-run).
    #[arg(long)]
    run: PathBuf,
    /// Where report.md, report.json and memory.png go.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Only check whether configuration CFG's last sample reached 90% of
    /// --ideal: exit status 0 if so, 1 if not (used while the bench runs).
    #[arg(long)]
    check_90: Option<String>,
    /// The ideal saving in bytes, for --check-90.
    #[arg(long)]
    ideal: Option<u64>,
}

const CONFIGS: [&str; 6] = [
    "none",
    "ksm_default",
    "ksm_aggressive",
    "vmdedup_cold",
    "vmdedup_warm",
    "vmdedup_ksm",
];

fn f(v: &Value, k: &str) -> f64 {
    v.get(k).and_then(Value::as_f64).unwrap_or(0.0)
}
fn uu(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or(0)
}

fn is_vmdedup(cfg: &str) -> bool {
    cfg.starts_with("vmdedup")
}

/// Whether ksmd runs in this configuration.
fn has_ksm(cfg: &str) -> bool {
    cfg.starts_with("ksm") || cfg == "vmdedup_ksm"
}

/// Host memory the guests use at one sample.
fn host_mem(cfg: &str, s: &Value) -> u64 {
    let mut m = uu(s, "guest_ram_pss");
    if is_vmdedup(cfg) {
        // The pool file's allocated pages (frames and frame tables), else
        // the used frames.
        m += s
            .get("pool_allocated")
            .and_then(Value::as_u64)
            .or_else(|| s.get("agent").map(|a| uu(a, "frames_used") * 4096))
            .unwrap_or(0);
    }
    m
}

/// Bytes saved at one sample: the agent's accounting for vmdedup, what KSM
/// merged out of the guests' RAM for KSM; both with vmdedup_ksm.
fn saved(cfg: &str, s: &Value) -> u64 {
    let merged = uu(s, "guest_ram_rss").saturating_sub(uu(s, "guest_ram_pss"));
    let agent = s.get("agent").map(|a| uu(a, "bytes_saved")).unwrap_or(0);
    match cfg {
        "vmdedup_ksm" => agent + merged,
        c if is_vmdedup(c) => agent,
        _ => merged,
    }
}

fn read_samples(path: &Path) -> Vec<Value> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Seconds from the reads being done to 90% of `ideal` (0 when it was there
/// already), or `None` when never within the samples.
fn time_to_90(cfg: &str, samples: &[Value], reads_done: f64, ideal: u64) -> Option<f64> {
    let goal = ideal as f64 * 0.9;
    let before = samples.iter().rfind(|s| f(s, "unix") <= reads_done);
    if before
        .map(|s| saved(cfg, s) as f64 >= goal)
        .unwrap_or(false)
    {
        return Some(0.0);
    }
    samples
        .iter()
        .filter(|s| f(s, "unix") > reads_done)
        .find(|s| saved(cfg, s) as f64 >= goal)
        .map(|s| f(s, "unix") - reads_done)
}

/// Parses the `KEY k=v ...` lines of a guest log with the given tag.
fn tagged(log: &str, tag: &str) -> Vec<Vec<(String, String)>> {
    log.lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter_map(|l| l.strip_prefix(tag))
        .map(|rest| {
            rest.split_whitespace()
                .map(|kv| match kv.split_once('=') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => ("label".to_string(), kv.to_string()),
                })
                .collect()
        })
        .collect()
}

fn get<'a>(kv: &'a [(String, String)], k: &str) -> Option<&'a str> {
    kv.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str())
}

fn getn(kv: &[(String, String)], k: &str) -> f64 {
    get(kv, k).and_then(|v| v.parse().ok()).unwrap_or(0.0)
}

/// The guests' logs of a configuration directory, vm1, vm2, ...
fn guest_logs(dir: &Path) -> Vec<String> {
    (1..=16)
        .filter_map(|i| fs::read_to_string(dir.join(format!("vm{i}.out.log"))).ok())
        .collect()
}

/// The module's counters during the workload, summed over guests
/// (BENCH-STATS end minus start), for the names asked.
fn workload_counters(logs: &[String], names: &[&str]) -> Vec<f64> {
    counters_between(logs, names, &["end"])
}

/// The module's counters from the workload's start to the first of the
/// `until` labels a guest printed, summed over guests (a guest with
/// neither counts nothing).
fn counters_between(logs: &[String], names: &[&str], until: &[&str]) -> Vec<f64> {
    let mut out = vec![0.0; names.len()];
    for log in logs {
        let st = tagged(log, "BENCH-STATS ");
        let a = st.iter().find(|s| get(s, "label") == Some("start"));
        let b = until
            .iter()
            .find_map(|u| st.iter().find(|s| get(s, "label") == Some(*u)));
        let (Some(a), Some(b)) = (a, b) else {
            continue;
        };
        for (o, n) in out.iter_mut().zip(names) {
            *o += getn(b, n) - getn(a, n);
        }
    }
    out
}

/// Whether the module of any guest has counter `name` (older modules, and
/// guests without doorbell support, lack some).
fn has_counter(logs: &[String], name: &str) -> bool {
    logs.iter()
        .flat_map(|l| tagged(l, "BENCH-STATS "))
        .any(|s| get(&s, name).is_some())
}

/// The module's count of its event work's runs (its timer, an interrupt or
/// a hint): what wakes an idle guest because of the module.
const WAKEUP_COUNTER: &str = "ticks";

/// Upper bounds (us) of the module's hint round-trip buckets, in order;
/// the last bucket (`hint_rtt_us_over`) has none.
const RTT_BUCKETS: [u64; 15] = [
    64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072, 262144, 524288, 1048576,
];

/// Hint round trips as the guests saw them, from the module's histogram at
/// the end of the workload (every hint since the module loaded, boot
/// included), summed over guests: (count, p50, p90, p99) in milliseconds,
/// each the upper bound of its bucket (`None` past the last bound).
fn hint_rtt(logs: &[String]) -> Option<(f64, Percentiles)> {
    histogram(logs, "hint_rtt_us", &RTT_BUCKETS, 1000.0)
}

/// Upper bounds (ms) of the module's buckets of the time to share of a
/// file answered "loading" (first hint to the hit of the hint its loaded
/// notice brought), in order; the last bucket (`..._over`) has none.
const LOADED_SHARE_BUCKETS: [u64; 11] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];

/// Files answered "loading" and shared after the host's notice, from the
/// module's `loaded_share_ms_*` histogram once the workload settled,
/// summed over guests: (count, p50, p90, p99) in milliseconds, as
/// [`hint_rtt`].
fn loaded_share(logs: &[String]) -> Option<(f64, Percentiles)> {
    histogram(logs, "loaded_share_ms", &LOADED_SHARE_BUCKETS, 1.0)
}

/// A histogram of the module's counters `{name}_le_{bound}` and
/// `{name}_over` once the workload settled (or at its end), summed over
/// guests: its count and p50, p90, p99, each the upper bound of its bucket
/// over `per_ms` (`None` past the last bound). `None` when it is empty.
fn histogram(
    logs: &[String],
    name: &str,
    bounds: &[u64],
    per_ms: f64,
) -> Option<(f64, Percentiles)> {
    let mut counts = vec![0.0f64; bounds.len() + 1];
    for log in logs {
        let st = tagged(log, "BENCH-STATS ");
        // The settled stats (5 s after the reads) hold the hits that the
        // last loads' notices brought.
        let Some(end) = ["settled", "end"]
            .iter()
            .find_map(|l| st.iter().rfind(|s| get(s, "label") == Some(*l)))
        else {
            continue;
        };
        for (i, b) in bounds.iter().enumerate() {
            counts[i] += getn(end, &format!("{name}_le_{b}"));
        }
        counts[bounds.len()] += getn(end, &format!("{name}_over"));
    }
    let total: f64 = counts.iter().sum();
    if total <= 0.0 {
        return None;
    }
    let pct = |q: f64| {
        let mut acc = 0.0;
        for (i, c) in counts.iter().enumerate() {
            acc += c;
            if acc >= q * total {
                return bounds.get(i).map(|b| *b as f64 / per_ms);
            }
        }
        None
    };
    Some((total, (pct(0.5), pct(0.9), pct(0.99))))
}

/// p50, p90 and p99 in milliseconds (`None`: past the last bucket bound).
type Percentiles = (Option<f64>, Option<f64>, Option<f64>);

/// Boot times the guests reported (BENCH-BOOTED secs=), in seconds.
fn boot_times(logs: &[String]) -> Vec<f64> {
    logs.iter()
        .filter_map(|l| tagged(l, "BENCH-BOOTED ").first().map(|b| getn(b, "secs")))
        .collect()
}

/// Per guest, its idle window (BENCH-IDLE): interrupts per second (all, the
/// local timer's, the module's) and the module's counters that moved, per
/// second. Averaged over the guests that reported one.
fn idle_guests(logs: &[String]) -> Option<Value> {
    let rows: Vec<Vec<(String, String)>> = logs
        .iter()
        .filter_map(|l| tagged(l, "BENCH-IDLE ").into_iter().next())
        .filter(|r| getn(r, "secs") > 0.0)
        .collect();
    if rows.is_empty() {
        return None;
    }
    let n = rows.len() as f64;
    let mut m = serde_json::Map::new();
    m.insert("guests".into(), json!(rows.len()));
    m.insert("window_s".into(), json!(getn(&rows[0], "secs")));
    for k in ["irqs", "loc", "module_irqs"] {
        let v: f64 = rows
            .iter()
            .map(|r| getn(r, k) / getn(r, "secs"))
            .sum::<f64>()
            / n;
        m.insert(format!("{k}_per_s"), json!(v));
    }
    let mut moved: Vec<String> = rows
        .iter()
        .flat_map(|r| {
            r.iter()
                .filter(|(k, _)| k.starts_with("d_"))
                .map(|(k, _)| k.clone())
        })
        .collect();
    moved.sort();
    moved.dedup();
    let mut counters = serde_json::Map::new();
    for k in moved {
        let v: f64 = rows
            .iter()
            .map(|r| getn(r, &k) / getn(r, "secs"))
            .sum::<f64>()
            / n;
        counters.insert(k.trim_start_matches("d_").to_string(), json!(v));
    }
    m.insert("module_counters_per_s".into(), Value::Object(counters));
    Some(Value::Object(m))
}

/// CPU seconds of the agent and of ksmd between two moments (the samples
/// nearest inside the window), and the window's length.
fn window_cpu(samples: &[Value], from: f64, to: f64) -> Option<(f64, f64, f64)> {
    let w: Vec<&Value> = samples
        .iter()
        .filter(|s| f(s, "unix") >= from && f(s, "unix") <= to)
        .collect();
    let (a, b) = (w.first()?, w.last()?);
    let dt = f(b, "unix") - f(a, "unix");
    if dt < 3.0 {
        return None;
    }
    Some((
        f(b, "agent_cpu_s") - f(a, "agent_cpu_s"),
        f(b, "ksmd_cpu_s") - f(a, "ksmd_cpu_s"),
        dt,
    ))
}

/// Host memory the workload added: from the last sample before every guest
/// started it to the last sample of the sharing phase (before the steady
/// window), in bytes.
fn workload_increment(cfg: &str, samples: &[Value], ev: &Value) -> Option<f64> {
    let from = ev.get("work_start_unix").and_then(Value::as_f64)?;
    let to = ev
        .get("steady_unix")
        .and_then(Value::as_f64)
        .unwrap_or(f(ev, "end_unix"));
    let a = samples.iter().rfind(|s| f(s, "unix") <= from)?;
    let b = samples.iter().rfind(|s| f(s, "unix") <= to)?;
    Some(host_mem(cfg, b) as f64 - host_mem(cfg, a) as f64)
}

/// The columns of a guest's memory as its kernel counts it, in MiB: JSON
/// key and table heading, in table order. `not_in_memtotal` is the only one
/// that needs the guest's RAM size besides its BENCH-MEMINFO line.
const GUEST_COLS: [(&str, &str); 9] = [
    ("used_mib", "used"),
    ("page_cache_mib", "page cache"),
    ("buffers_mib", "Buffers"),
    ("shmem_mib", "Shmem"),
    ("anon_mib", "AnonPages"),
    ("slab_mib", "Slab"),
    ("kernel_other_mib", "kernel other"),
    ("rest_mib", "rest of used"),
    ("not_in_memtotal_mib", "not in MemTotal"),
];
/// Indices in [`GUEST_COLS`]: `used` is the sum of the columns after it up
/// to `rest`.
const COL_USED: usize = 0;
const COL_REST: usize = 7;
const COL_NOT_IN_TOTAL: usize = 8;

/// A meminfo field of a BENCH-MEMINFO line (kB) in MiB, `None` when the
/// line lacks it or it is no number.
fn meminfo_mib(kv: &[(String, String)], k: &str) -> Option<f64> {
    get(kv, k)
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite())
        .map(|v| v / 1024.0)
}

/// One guest's memory from one BENCH-MEMINFO line, in the order of
/// [`GUEST_COLS`], and its KernelStack; `boot_mib` is the RAM the guest was
/// given (`not_in_memtotal` is NaN without it). `None` without MemTotal or
/// MemFree.
///
/// - used = MemTotal - MemFree;
/// - page cache = Cached - Shmem (Cached counts shmem and tmpfs pages);
/// - Slab = SReclaimable + SUnreclaim (or Slab);
/// - kernel other = PageTables + SecPageTables + Percpu + VmallocUsed, plus
///   KernelStack only when VmallocUsed cannot hold it: with vmapped stacks
///   (CONFIG_VMAP_STACK, the x86_64 default and the guest kernel's setting)
///   the stacks' pages are counted in both;
/// - rest = used minus the columns before it.
fn guest_cols(kv: &[(String, String)], boot_mib: Option<f64>) -> Option<([f64; 9], f64)> {
    let total = meminfo_mib(kv, "MemTotal").filter(|t| *t > 0.0)?;
    let free = meminfo_mib(kv, "MemFree")?;
    let z = |k: &str| meminfo_mib(kv, k).unwrap_or(0.0);
    let used = total - free;
    let shmem = z("Shmem");
    let page_cache = z("Cached") - shmem;
    let buffers = z("Buffers");
    let anon = z("AnonPages");
    let slab = match (
        meminfo_mib(kv, "SReclaimable"),
        meminfo_mib(kv, "SUnreclaim"),
    ) {
        (None, None) => z("Slab"),
        (r, u) => r.unwrap_or(0.0) + u.unwrap_or(0.0),
    };
    let stack = z("KernelStack");
    let vmalloc = meminfo_mib(kv, "VmallocUsed");
    let stacks_apart = match vmalloc {
        Some(v) => v < stack,
        None => true,
    };
    let kernel_other = z("PageTables")
        + z("SecPageTables")
        + z("Percpu")
        + vmalloc.unwrap_or(0.0)
        + if stacks_apart { stack } else { 0.0 };
    let rest = used - page_cache - buffers - shmem - anon - slab - kernel_other;
    let outside = boot_mib.map(|b| b - total).unwrap_or(f64::NAN);
    Some((
        [
            used,
            page_cache,
            buffers,
            shmem,
            anon,
            slab,
            kernel_other,
            rest,
            outside,
        ],
        stack,
    ))
}

/// The BENCH-MEMINFO line a guest's memory is read from: the last `idle`
/// one (printed when the host takes its last samples), else the last `end`
/// one (after the workload). Lines without a label (older Debian guests
/// printed six fields) are not used.
fn guest_meminfo(log: &str) -> Option<(&'static str, Vec<(String, String)>)> {
    let lines = tagged(log, "BENCH-MEMINFO ");
    for label in ["idle", "end"] {
        if let Some(l) = lines.iter().rfind(|l| get(l, "label") == Some(label)) {
            return Some((label, l.clone()));
        }
    }
    None
}

/// Per guest, mean over the guests: what its memory is made of (from its
/// BENCH-MEMINFO lines) next to what the host holds for it (the last
/// sample's guest-RAM Pss and Rss over the number of QEMUs, and the pool's
/// share for vmdedup). `ram_mib` is the `-m` size (0: unknown, then each
/// guest's BENCH-KERNELMEM total). `None` when no guest printed an end or
/// idle BENCH-MEMINFO line (logs of older runs).
fn guest_memory(cfg: &str, logs: &[String], last: &Value, ram_mib: u64) -> Option<Value> {
    let mut sum = [0.0f64; 9];
    let mut stack = 0.0;
    let mut total = 0.0;
    let mut free = 0.0;
    let mut start_sum = [0.0f64; 9];
    let mut starts = 0usize;
    let mut n = 0usize;
    let mut labels: Vec<&str> = Vec::new();
    let mut kernel = [0.0f64; 4];
    let mut kernels = 0usize;
    for log in logs {
        let Some((label, mi)) = guest_meminfo(log) else {
            continue;
        };
        let km = tagged(log, "BENCH-KERNELMEM ").into_iter().next();
        let boot = if ram_mib > 0 {
            Some(ram_mib as f64)
        } else {
            km.as_ref()
                .and_then(|k| meminfo_mib(k, "total"))
                .filter(|t| *t > 0.0)
        };
        let Some((cols, st)) = guest_cols(&mi, boot) else {
            continue;
        };
        for (s, c) in sum.iter_mut().zip(cols) {
            *s += c;
        }
        stack += st;
        total += meminfo_mib(&mi, "MemTotal").unwrap_or(0.0);
        free += meminfo_mib(&mi, "MemFree").unwrap_or(0.0);
        labels.push(label);
        n += 1;
        if let Some((c, _)) = tagged(log, "BENCH-MEMINFO ")
            .iter()
            .find(|l| get(l, "label") == Some("start"))
            .and_then(|l| guest_cols(l, boot))
        {
            for (s, c) in start_sum.iter_mut().zip(c) {
                *s += c;
            }
            starts += 1;
        }
        if let Some(k) = km.as_ref().filter(|k| get(k, "total").is_some()) {
            let z = |key: &str| meminfo_mib(k, key).unwrap_or(0.0);
            kernel[0] += z("total");
            kernel[1] += z("available");
            kernel[2] += z("reserved");
            kernel[3] += z("kernel_code") + z("rwdata") + z("rodata") + z("bss");
            kernels += 1;
        }
    }
    if n == 0 {
        return None;
    }
    let nf = n as f64;
    let mut m = serde_json::Map::new();
    let num = |v: f64| {
        if v.is_finite() {
            json!(v)
        } else {
            Value::Null
        }
    };
    m.insert("guests".into(), json!(n));
    labels.dedup();
    m.insert(
        "meminfo_at".into(),
        json!(if labels.len() == 1 {
            labels[0]
        } else {
            "idle or end"
        }),
    );
    m.insert(
        "boot_ram_from".into(),
        json!(if ram_mib > 0 { "qemu -m" } else { "kernel log" }),
    );
    if ram_mib > 0 {
        m.insert("boot_ram_mib".into(), json!(ram_mib));
    }
    m.insert("mem_total_mib".into(), json!(total / nf));
    m.insert("mem_free_mib".into(), json!(free / nf));
    m.insert("kernel_stack_mib".into(), json!(stack / nf));
    for ((k, _), s) in GUEST_COLS.iter().zip(sum) {
        m.insert((*k).into(), num(s / nf));
    }
    // The host's side, per QEMU.
    let qemus = last
        .get("qemu")
        .and_then(Value::as_object)
        .map(|o| o.len())
        .filter(|q| *q > 0)
        .unwrap_or(n);
    let qf = qemus as f64;
    let pss = uu(last, "guest_ram_pss") as f64 / 1048576.0 / qf;
    let rss = uu(last, "guest_ram_rss") as f64 / 1048576.0 / qf;
    m.insert("qemus".into(), json!(qemus));
    m.insert("host_pss_mib".into(), json!(pss));
    m.insert("host_rss_mib".into(), json!(rss));
    // Older samples lack it.
    m.insert(
        "host_anon_huge_mib".into(),
        last.get("guest_ram_anon_huge")
            .and_then(Value::as_u64)
            .map(|h| json!(h as f64 / 1048576.0 / qf))
            .unwrap_or(Value::Null),
    );
    m.insert(
        "pool_per_guest_mib".into(),
        if is_vmdedup(cfg) {
            json!(
                host_mem(cfg, last).saturating_sub(uu(last, "guest_ram_pss")) as f64
                    / 1048576.0
                    / qf
            )
        } else {
            Value::Null
        },
    );
    m.insert(
        "host_mem_per_guest_mib".into(),
        json!(host_mem(cfg, last) as f64 / 1048576.0 / qf),
    );
    // Pss = used + (Rss - used) - (Rss - Pss): what the guest uses, what
    // the host holds for it beyond that, and what KSM merged away.
    m.insert("pss_minus_used_mib".into(), json!(pss - sum[COL_USED] / nf));
    m.insert("rss_minus_used_mib".into(), json!(rss - sum[COL_USED] / nf));
    m.insert("rss_minus_pss_mib".into(), json!(rss - pss));
    if kernels > 0 {
        let kf = kernels as f64;
        m.insert(
            "kernel_boot".into(),
            json!({
                "guests": kernels,
                "total_mib": kernel[0] / kf,
                "available_mib": kernel[1] / kf,
                "reserved_mib": kernel[2] / kf,
                "image_mib": kernel[3] / kf,
            }),
        );
    }
    if starts > 0 {
        let sf = starts as f64;
        let mut s = serde_json::Map::new();
        s.insert("guests".into(), json!(starts));
        for ((k, _), v) in GUEST_COLS.iter().zip(start_sum) {
            s.insert((*k).into(), num(v / sf));
        }
        m.insert("start".into(), Value::Object(s));
    }
    Some(Value::Object(m))
}

fn config_result(run: &Path, cfg: &str, ideal: u64, one_copy: u64, ram_mib: u64) -> Option<Value> {
    let dir = run.join(cfg);
    let ev: Value = serde_json::from_slice(&fs::read(dir.join("events.json")).ok()?).ok()?;
    let samples = read_samples(&dir.join("samples.jsonl"));
    let last = samples.last()?;
    let first = samples.first()?;
    let reads_done = f(&ev, "reads_done_unix");
    let t90 = time_to_90(cfg, &samples, reads_done, ideal);
    let saved_final = saved(cfg, last);
    let ksmd_cpu = if has_ksm(cfg) {
        f(last, "ksmd_cpu_s") - f(first, "ksmd_cpu_s")
    } else {
        0.0
    };
    let agent_cpu = if is_vmdedup(cfg) {
        f(last, "agent_cpu_s")
    } else {
        0.0
    };
    let dedup_cpu = ksmd_cpu + agent_cpu;
    let logs = guest_logs(&dir);
    let gib = saved_final as f64 / (1u64 << 30) as f64;
    let mut r = json!({
        "host_mem_bytes_final": host_mem(cfg, last),
        "saved_bytes_final": saved_final,
        "ideal_saved_bytes": ideal,
        "saved_pct_of_ideal": if ideal > 0 { saved_final as f64 * 100.0 / ideal as f64 } else { 0.0 },
        "time_to_90pct_s": t90,
        "time_limit_s": f(&ev, "limit_s"),
        "dedup_cpu_s": dedup_cpu,
        "agent_cpu_s": agent_cpu,
        "ksmd_cpu_s": ksmd_cpu,
        "dedup_cpu_s_per_gib_saved": if gib > 0.0 { Value::from(dedup_cpu / gib) } else { Value::Null },
        "reads_s": reads_done - f(&ev, "boot_unix"),
        "guest_ram_rss_final": uu(last, "guest_ram_rss"),
        "guest_ram_pss_final": uu(last, "guest_ram_pss"),
        "ksm_pages_sharing_final": last.get("ksm").map(|k| uu(k, "pages_sharing")).unwrap_or(0),
        "ksm_general_profit_final": last.get("ksm").and_then(|k| k.get("general_profit")).and_then(Value::as_i64).unwrap_or(0),
        "ksm_full_scans": last.get("ksm").map(|k| uu(k, "full_scans")).unwrap_or(0) as i64
            - first.get("ksm").map(|k| uu(k, "full_scans")).unwrap_or(0) as i64,
    });
    if let Some(inc) = workload_increment(cfg, &samples, &ev) {
        r["workload_added_bytes"] = json!(inc);
        if one_copy > 0 {
            r["workload_added_x_one_copy"] = json!(inc / one_copy as f64);
        }
    }
    let boots = boot_times(&logs);
    if !boots.is_empty() {
        r["boot_s_mean"] = json!(boots.iter().sum::<f64>() / boots.len() as f64);
        r["boot_s_max"] = json!(boots.iter().cloned().fold(0.0, f64::max));
    }
    if let Some(steady) = ev.get("steady_unix").and_then(Value::as_f64) {
        if let Some((agent, ksmd, dt)) = window_cpu(&samples, steady, f(&ev, "end_unix")) {
            r["steady_window_s"] = json!(dt);
            r["steady_agent_cpu_pct"] = json!(agent * 100.0 / dt);
            r["steady_ksmd_cpu_pct"] = json!(ksmd * 100.0 / dt);
        }
    }
    if let Some(gm) = guest_memory(cfg, &logs, last, ram_mib) {
        r["guest_memory"] = gm;
    }
    if let Some(idle) = idle_guests(&logs) {
        r["idle_guest"] = idle;
        // Without a count of its timer's runs the module's own idle
        // wake-ups cannot be told from the tick's.
        r["module_counts_timer_wakeups"] = json!(has_counter(&logs, WAKEUP_COUNTER));
    }
    if is_vmdedup(cfg) {
        if let Some((n, (p50, p90, p99))) = hint_rtt(&logs) {
            r["share_hints"] = json!(n);
            r["share_ms_p50"] = json!(p50);
            r["share_ms_p90"] = json!(p90);
            r["share_ms_p99"] = json!(p99);
        }
        if let Some((n, (p50, p90, p99))) = loaded_share(&logs) {
            r["loaded_share_files"] = json!(n);
            r["loaded_share_ms_p50"] = json!(p50);
            r["loaded_share_ms_p90"] = json!(p90);
            r["loaded_share_ms_p99"] = json!(p99);
        }
        if let Some(a) = last.get("agent") {
            r["agent"] = a.clone();
        }
        r["pool_allocated_bytes_final"] =
            last.get("pool_allocated").cloned().unwrap_or(Value::Null);
        if let Some(w) = ev.get("warm_done_unix").and_then(Value::as_f64) {
            r["warm_s"] = json!(w - f(&ev, "start_unix"));
        }
        let names = [
            "hints_sent",
            "doorbells_needed",
            "doorbells_rung",
            "irqs_received",
        ];
        let c = workload_counters(&logs, &names);
        let (hints, needed, rung, irqs) = (c[0], c[1], c[2], c[3]);
        r["hints_sent"] = json!(hints);
        r["doorbells_needed"] = json!(needed);
        r["doorbells"] = json!(rung);
        r["interrupts"] = json!(irqs);
        let per_hint = |v: f64, name: &str| {
            if hints > 0.0 && has_counter(&logs, name) {
                json!(v / hints)
            } else {
                Value::Null
            }
        };
        if has_counter(&logs, "loaded_notices") {
            // Until the guests' settled stats (5 s after their reads): the
            // last loads' notices come after the reads.
            let names = [
                "answers_miss_loading",
                "loaded_notices",
                "refetch_hits",
                "loading_forgotten",
            ];
            let c = counters_between(&logs, &names, &["settled", "end"]);
            r["notices"] = json!({
                "loading_answers": c[0],
                "notices": c[1],
                "hits_after_notice": c[2],
                "forgotten": c[3],
            });
        }
        r["doorbells_needed_per_hint"] = per_hint(needed, "doorbells_needed");
        r["doorbells_per_hint"] = per_hint(rung, "doorbells_rung");
        r["interrupts_per_hint"] = per_hint(irqs, "irqs_received");
        // Idle: from 3 s after the reads to the end, guests up but quiet.
        let idle: Vec<&Value> = samples
            .iter()
            .filter(|s| f(s, "unix") >= reads_done + 3.0)
            .collect();
        if let (Some(a), Some(b)) = (idle.first(), idle.last()) {
            let dt = f(b, "unix") - f(a, "unix");
            if dt >= 3.0 {
                let poll = |s: &Value| -> f64 {
                    s.get("agent_threads_cpu_s")
                        .and_then(Value::as_object)
                        .map(|m| {
                            m.iter()
                                .filter(|(k, _)| k.starts_with("vmdedup-poll"))
                                .filter_map(|(_, v)| v.as_f64())
                                .sum()
                        })
                        .unwrap_or(0.0)
                };
                r["idle_window_s"] = json!(dt);
                r["idle_agent_cpu_pct"] =
                    json!((f(b, "agent_cpu_s") - f(a, "agent_cpu_s")) * 100.0 / dt);
                r["idle_poller_cpu_pct"] = json!((poll(b) - poll(a)) * 100.0 / dt);
            }
        }
    }
    Some(r)
}

fn series(run: &Path, cfg: &str) -> Option<plot::Series> {
    let dir = run.join(cfg);
    let ev: Value = serde_json::from_slice(&fs::read(dir.join("events.json")).ok()?).ok()?;
    let t0 = f(&ev, "boot_unix");
    let points = read_samples(&dir.join("samples.jsonl"))
        .iter()
        .filter(|s| f(s, "unix") >= t0)
        .map(|s| (f(s, "unix") - t0, host_mem(cfg, s) as f64 / 1048576.0))
        .collect();
    Some(plot::Series {
        label: cfg.to_string(),
        points,
    })
}

fn micro(run: &Path) -> Vec<Vec<(String, String)>> {
    let mut out = Vec::new();
    for vm in ["vm1", "vm2"] {
        if let Ok(log) = fs::read_to_string(run.join("micro").join(format!("{vm}.out.log"))) {
            // The guest's clocksource, for every row it timed.
            let clock = log
                .lines()
                .find_map(|l| l.trim_end_matches('\r').strip_prefix("BENCH-CLOCK "))
                .unwrap_or("?")
                .to_string();
            for mut row in tagged(&log, "MICRO ") {
                row.push(("clock".into(), clock.clone()));
                out.push(row);
            }
        }
    }
    out
}

fn mib(b: f64) -> String {
    format!("{:.1}", b / 1048576.0)
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a.is_finite() {
        format!("{:.2}x", a / b)
    } else {
        "-".into()
    }
}

/// A value in MiB with one decimal, "-" when it is missing.
fn mib1(v: Option<f64>) -> String {
    v.filter(|x| x.is_finite())
        .map(|x| format!("{x:.1}"))
        .unwrap_or("-".into())
}

/// A difference in MiB with its sign, "?" when a side is missing.
fn mib_diff(v: Option<f64>) -> String {
    v.filter(|x| x.is_finite())
        .map(|x| format!("{x:+.1}"))
        .unwrap_or("?".into())
}

/// What became of the files answered "loading": the host's loaded
/// notices, and the second hints they brought.
fn notices_section(rows: &[(&str, &Value)]) -> String {
    let mut m = String::new();
    let _ = writeln!(m, "\nFiles answered \"loading\", summed over the guests from the workload's start to 5 s after its reads (module counters): the answers, the host's loaded notices, the second hints that then hit (the file's lower pages dropped), and the files forgotten without a notice (60 s, or more than 256 waiting).\n");
    let _ = writeln!(
        m,
        "| configuration | \"loading\" answers | notices | hits after a notice | notices per \"loading\" answer | forgotten |"
    );
    let _ = writeln!(m, "| --- | ---: | ---: | ---: | ---: | ---: |");
    for (c, n) in rows {
        let v = |k: &str| n.get(k).and_then(Value::as_f64).unwrap_or(0.0);
        let per = if v("loading_answers") > 0.0 {
            format!("{:.2}", v("notices") / v("loading_answers"))
        } else {
            "-".into()
        };
        let _ = writeln!(
            m,
            "| {c} | {:.0} | {:.0} | {:.0} | {per} | {:.0} |",
            v("loading_answers"),
            v("notices"),
            v("hits_after_notice"),
            v("forgotten"),
        );
    }
    m
}

/// The report's "Guest memory, per guest" section, from the configurations'
/// `guest_memory` objects, in table order.
fn guest_memory_section(mems: &[(&str, &Value)]) -> String {
    let mut m = String::new();
    let g = |v: &Value, k: &str| v.get(k).and_then(Value::as_f64);
    // The host's columns after the guest's.
    let host_cols = [
        ("pss_minus_used_mib", "Pss - used"),
        ("rss_minus_used_mib", "Rss - used"),
        ("rss_minus_pss_mib", "Rss - Pss"),
    ];
    let _ = writeln!(m, "## Guest memory, per guest\n");
    let _ = write!(
        m,
        "| configuration | host memory | guest-RAM Pss | guest-RAM Rss | of it in 2 MiB pages | pool share |"
    );
    for (_, title) in GUEST_COLS.iter().chain(&host_cols) {
        let _ = write!(m, " {title} |");
    }
    let _ = writeln!(
        m,
        "\n| --- |{}",
        " ---: |".repeat(5 + GUEST_COLS.len() + host_cols.len())
    );
    for (c, v) in mems {
        let _ = write!(
            m,
            "| {c} | {} | {} | {} | {} | {} |",
            mib1(g(v, "host_mem_per_guest_mib")),
            mib1(g(v, "host_pss_mib")),
            mib1(g(v, "host_rss_mib")),
            mib1(g(v, "host_anon_huge_mib")),
            mib1(g(v, "pool_per_guest_mib")),
        );
        for (k, _) in GUEST_COLS.iter().chain(&host_cols) {
            let _ = write!(m, " {} |", mib1(g(v, k)));
        }
        let _ = writeln!(m);
    }
    let at = mems
        .iter()
        .filter_map(|(_, v)| v.get("meminfo_at").and_then(Value::as_str))
        .fold(String::new(), |a, l| {
            if a.is_empty() || a == l {
                l.to_string()
            } else {
                "idle or end".to_string()
            }
        });
    let when = match at.as_str() {
        "idle" => "at the end of its idle window, when the host took its last samples (`BENCH-MEMINFO idle`)",
        "end" => "right after its workload (`BENCH-MEMINFO end`: these guests had no idle window, so the host's last sample is later)",
        _ => "at the end of its idle window (`BENCH-MEMINFO idle`), or right after its workload (`end`) for a guest without one",
    };
    let _ = writeln!(
        m,
        "\nIn MiB per guest, each a mean over the guests. The guest's side is its `/proc/meminfo` {when}: **used** = MemTotal - MemFree, every page the guest's kernel does not count free; **page cache** = Cached - Shmem, file pages (what the guest read from the lower disk; a file that vmdedup serves is read from pool frames, which are not guest RAM, and its lower pages are dropped); **Buffers**: the block device's cache (file system metadata); **Shmem**: tmpfs (the busybox guests' root is their initramfs unpacked into tmpfs, as the kernel does when no `root=` is given: busybox, the bench's programs, `/tmp`; the Debian guests' `/run` and `/dev/shm`); **AnonPages**: processes' private memory (Python's heap, the ballast); **Slab**: SReclaimable + SUnreclaim (inodes, dentries, the module's per-file state); **kernel other**: PageTables + SecPageTables + Percpu + VmallocUsed (module code and the kernel stacks, which this kernel maps with vmalloc, so KernelStack is not added a second time); **rest of used**: used minus the columns before it, pages the kernel hands out without a meminfo counter (per-CPU free page lists, driver buffers; slightly negative when Percpu's first chunk, allocated at boot outside MemTotal, outweighs them); **not in MemTotal**: the guest's RAM (`-m`) minus MemTotal, what the kernel keeps from boot on (its image, the `struct page` array, other boot allocations, firmware areas), touched at boot and never freed. The host's side, from the last sample: **guest-RAM Pss / Rss**: the QEMU guest-RAM mapping's, over the guests (a page that KSM merged across k mappings counts 1/k in Pss and 1 in Rss); **of it in 2 MiB pages**: the mapping's `AnonHugePages`, Rss in transparent huge pages, each resident whole once the guest touched any of it (KSM splits the pages it merges, and free page reporting the pages a guest reports); **pool share**: vmdedup's pool over the guests; **host memory** = Pss + pool share, the first table's host memory over the guests. Pss = used + (Rss - used) - (Rss - Pss): **Rss - used** is what the host holds for a guest beyond what the guest counts as used: the touched part of *not in MemTotal*, free pages the guest touched and has not reported back yet (free page reporting returns a freed page after a delay), and the untouched rest of 2 MiB pages; **Rss - Pss** is what KSM merged away (0 without KSM); **Pss - used** is both together.\n"
    );
    let _ = writeln!(
        m,
        "How to read it: KSM merges every identical page of guest RAM: the page cache's copies of the same files, and also what vmdedup never sees: the guests' kernels (text, read-only data and identical boot allocations, in *not in MemTotal*), zero-filled pages, the same initramfs in Shmem, identical heaps. vmdedup removes only file data read through vmdedupfs: that page cache moves out of guest RAM into the pool, counted once. Everything else stays private to each guest: used minus that page cache, *not in MemTotal*, touched free pages. Between a vmdedup row and ksm_default: a difference in **page cache** is file data that vmdedup did not move (read from the lower disk: \"loading\" answers, verification, files outside vmdedupfs); one in the other columns of **used** is memory that the vmdedup guests use and the KSM guests do not (the module, its state); **Rss - used** compares what each keeps beyond its use; and ksm_default's **Rss - Pss** is what KSM took off, page cache included.\n"
    );
    for (c, v) in mems {
        let (n, q) = (uu(v, "guests"), uu(v, "qemus"));
        if n != q {
            let _ = writeln!(
                m,
                "{c}: {n} of its {q} guests printed their `/proc/meminfo`; the guest's columns are their mean, the host's are over all {q}.\n"
            );
        }
    }
    if let Some(k) = mems.iter().find_map(|(_, v)| v.get("kernel_boot")) {
        let _ = writeln!(
            m,
            "The guest kernel's boot message (`Memory: ...K/...K available`, BENCH-KERNELMEM): {} MiB of usable RAM, {} MiB of it reserved at boot, of which the kernel's image (code, rwdata, rodata, bss) is {} MiB; the init sections and the initramfs archive are given to MemTotal after boot.\n",
            mib1(g(k, "total_mib")),
            mib1(g(k, "reserved_mib")),
            mib1(g(k, "image_mib")),
        );
    }
    let find = |c: &str| mems.iter().find(|(n, _)| *n == c).map(|(_, v)| *v);
    if let (Some(v), Some(k)) = (find("vmdedup_warm"), find("ksm_default")) {
        let d = |key: &str| match (g(v, key), g(k, key)) {
            (Some(a), Some(b)) => Some(a - b),
            _ => None,
        };
        let used_cols = &GUEST_COLS[COL_USED + 1..=COL_REST];
        let parts: Vec<String> = used_cols
            .iter()
            .map(|(key, title)| format!("{title} {}", mib_diff(d(key))))
            .collect();
        let largest = used_cols
            .iter()
            .filter_map(|(key, title)| d(key).filter(|x| x.is_finite()).map(|x| (title, x)))
            .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
            .map(|(t, _)| format!("; largest: {t}"))
            .unwrap_or_default();
        let _ = writeln!(
            m,
            "Per guest, vmdedup_warm minus ksm_default: host memory {} MiB = guest-RAM Pss {} + the pool's share {}. The Pss difference is {} MiB in what the guests count as used ({}{}), {} MiB in what the host holds beyond that (Rss - used; not in MemTotal differs by {}, Rss in 2 MiB pages by {}), and {} MiB that KSM merged in ksm_default's guests and not in vmdedup_warm's (Rss - Pss: {} vs {} MiB); Pss - used differs by {} MiB.\n",
            mib_diff(d("host_mem_per_guest_mib")),
            mib_diff(d("host_pss_mib")),
            mib_diff(g(v, "pool_per_guest_mib")),
            mib_diff(d(GUEST_COLS[COL_USED].0)),
            parts.join(", "),
            largest,
            mib_diff(d("rss_minus_used_mib")),
            mib_diff(d(GUEST_COLS[COL_NOT_IN_TOTAL].0)),
            mib_diff(d("host_anon_huge_mib")),
            mib_diff(d("rss_minus_pss_mib").map(|x| -x)),
            mib1(g(k, "rss_minus_pss_mib")),
            mib1(g(v, "rss_minus_pss_mib")),
            mib_diff(d("pss_minus_used_mib")),
        );
    }
    m
}

/// The host's THP settings as the run recorded them (`host_thp` in
/// run.json), for the report's prose.
fn host_thp(run_info: &Value) -> String {
    match run_info.get("host_thp").and_then(Value::as_str) {
        Some(t) if !t.is_empty() => {
            let parts: Vec<String> = t.split_whitespace().map(|kv| format!("`{kv}`")).collect();
            parts.join(", ")
        }
        _ => "not recorded (runs before 2026-12-01: `enabled=madvise`, `max_ptes_none=511`)".into(),
    }
}

fn markdown(
    run_info: &Value,
    results: &serde_json::Map<String, Value>,
    micro: &[Vec<(String, String)>],
    load_end: &str,
) -> String {
    let mut m = String::new();
    let ideal = uu(run_info, "ideal_saved_bytes") as f64;
    let get_r = |c: &str| results.get(c);
    let none_mem = get_r("none").map(|r| f(r, "host_mem_bytes_final"));
    let ksm_mem = get_r("ksm_default").map(|r| f(r, "host_mem_bytes_final"));
    let _ = writeln!(m, "# vmdedup vs KSM vs no deduplication\n");
    let distro = run_info
        .get("distro")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let ballast = uu(run_info, "ballast_mib");
    let workload = if distro {
        format!(
            "the Debian image of `scripts/build-distro-image` ({} files), booted with systemd (nginx and cron start), then {} pass(es) of Python with imports, Perl, gcc compiling a small program, apt-cache queries and curl to the local nginx. One guest reads {} MiB of it (the page cache of a `none` guest after the workload, `Cached - Shmem`)",
            uu(run_info, "tree_files"),
            uu(run_info, "passes"),
            mib(f(run_info, "data_bytes_per_guest")),
        )
    } else {
        format!(
            "a tree of real files, {} pass(es) of the workload: run Python 3.11 from the tree (imports ~80 modules), then read every file ({} files, {} MiB of file pages per guest)",
            uu(run_info, "passes"),
            uu(run_info, "tree_files"),
            mib(f(run_info, "data_bytes_per_guest")),
        )
    };
    let ballast_text = if ballast > 0 {
        format!(" Each guest also holds a **ballast of {ballast} MiB** of private random memory (written before the workload, held to the end), as services hold heaps: KSM must scan it, vmdedup never sees it.")
    } else {
        String::new()
    };
    let _ = writeln!(
        m,
        "{} guests (TCG, 1 vCPU, {} MiB RAM each, `memory-backend-ram,merge=on`, virtio-balloon with free page reporting), the same image for all: {}. Ideal saving = (N-1) copies of that data = **{} MiB**.{} Host: {}, {} CPUs shared with other engineers' builds and QEMUs (load average {} at the start, {} at the end): numbers are noisy. {}. Date: {}.\n",
        uu(run_info, "vms"),
        uu(run_info, "ram_mib").max(uu(run_info, "mem_mib")),
        workload,
        mib(ideal),
        ballast_text,
        run_info.get("host").and_then(Value::as_str).unwrap_or("?"),
        uu(run_info, "cpus"),
        run_info.get("loadavg_start").and_then(Value::as_str).unwrap_or("?"),
        load_end.trim(),
        run_info.get("qemu").and_then(Value::as_str).unwrap_or("QEMU"),
        run_info.get("date").and_then(Value::as_str).unwrap_or("?"),
    );
    let _ = writeln!(m, "## Host memory, saving, time to share, CPU\n");
    let _ = writeln!(m, "| configuration | host memory (MiB) | vs none | vs KSM default | saved (MiB) | % of ideal | time to 90% after reads (s) | ksmd CPU (s) | agent CPU (s) | CPU s per GiB saved | reads took (s) | workload added (x one copy) | boot (s, mean / max) |");
    let _ = writeln!(
        m,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for c in CONFIGS {
        let Some(r) = get_r(c) else { continue };
        let mem = f(r, "host_mem_bytes_final");
        let added = r
            .get("workload_added_x_one_copy")
            .and_then(Value::as_f64)
            .map(|x| format!("{x:.2}"))
            .unwrap_or("-".into());
        let t90 = match r.get("time_to_90pct_s").and_then(Value::as_f64) {
            Some(t) => format!("{t:.1}"),
            None => format!("never (limit {:.0})", f(r, "time_limit_s")),
        };
        let boot = match (
            r.get("boot_s_mean").and_then(Value::as_f64),
            r.get("boot_s_max").and_then(Value::as_f64),
        ) {
            (Some(a), Some(b)) => format!("{a:.0} / {b:.0}"),
            _ => "-".into(),
        };
        let _ = writeln!(
            m,
            "| {c} | {} | {} | {} | {} | {:.1}% | {t90} | {:.2} | {:.2} | {} | {:.0} | {added} | {boot} |",
            mib(mem),
            none_mem.map(|n| ratio(mem, n)).unwrap_or("-".into()),
            ksm_mem.map(|k| ratio(mem, k)).unwrap_or("-".into()),
            mib(f(r, "saved_bytes_final")),
            f(r, "saved_pct_of_ideal"),
            f(r, "ksmd_cpu_s"),
            f(r, "agent_cpu_s"),
            r.get("dedup_cpu_s_per_gib_saved")
                .and_then(Value::as_f64)
                .map(|v| format!("{v:.2}"))
                .unwrap_or("-".into()),
            f(r, "reads_s"),
        );
    }
    let _ = writeln!(
        m,
        "\nHost memory: the sum over QEMUs of the `Pss` of the guest-RAM mapping in `/proc/PID/smaps` (a page KSM merged across k mappings counts 1/k in each, so the sum is physical memory; guest RAM is private anonymous memory, so `RssShmem` is 0), plus for vmdedup the pool, counted once: the pages allocated to the pool's memory file (its frames and frame tables; `st_blocks`). QEMU madvises guest RAM MADV_HUGEPAGE and the host's THP settings were {thp}, so guest RAM becomes resident in 2 MiB steps (`max_ptes_none`: how many empty 4 KiB pages khugepaged fills to collapse a 2 MiB region, pages a guest reported free included). Saved: KSM and none: the guests' `Rss - Pss` of guest RAM; vmdedup: the agent's `bytes_saved` = (`pages_mapped` - `frames_used`) x 4 KiB; vmdedup_ksm: both. ksmd CPU: ksmd's CPU time during the configuration (`/proc/PID/stat` utime+stime); agent CPU: the agent's whole CPU time since it started, **poller threads included** (and loader threads, and the warm-up for vmdedup_warm). CPU per GiB saved: both together. Time to 90%: from the moment the last guest finished its reads until the saving reached 90% of the ideal (0 when it already had), sampled every second; the time to share of single files, in milliseconds, is in the next section. Workload added: host memory at the end of the sharing phase minus host memory just before every guest started its workload (booted, ballast written), over one copy of the data one guest reads. Boot: the guest's uptime when systemd reported the system running (`--distro` only).\n",
        thp = host_thp(run_info)
    );
    let _ = writeln!(m, "## KSM and vmdedup counters\n");
    let _ = writeln!(m, "| configuration | KSM pages_sharing | KSM general_profit (MiB) | KSM full scans | pool frames_used (MiB) | pages_mapped (MiB) | hints | hits | loading misses | NEED_WAKEUP seen per hint | doorbells per hint | interrupts per hint |");
    let _ = writeln!(
        m,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for c in CONFIGS {
        let Some(r) = get_r(c) else { continue };
        let a = r.get("agent");
        let ag = |k: &str| a.map(|a| uu(a, k).to_string()).unwrap_or("-".into());
        let ph = |k: &str| {
            r.get(k)
                .and_then(Value::as_f64)
                .map(|v| format!("{v:.4}"))
                .unwrap_or("-".into())
        };
        let _ = writeln!(
            m,
            "| {c} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            uu(r, "ksm_pages_sharing_final"),
            mib(f(r, "ksm_general_profit_final")),
            r.get("ksm_full_scans").and_then(Value::as_i64).unwrap_or(0),
            a.map(|a| mib(uu(a, "frames_used") as f64 * 4096.0))
                .unwrap_or("-".into()),
            a.map(|a| mib(uu(a, "pages_mapped") as f64 * 4096.0))
                .unwrap_or("-".into()),
            ag("hints"),
            ag("hits"),
            ag("loading"),
            ph("doorbells_needed_per_hint"),
            ph("doorbells_per_hint"),
            ph("interrupts_per_hint"),
        );
    }
    let _ = writeln!(m, "\nKSM counters are host-wide (`/sys/kernel/mm/ksm`); nothing else on the host marks memory mergeable unless another process does. Per hint, during the workload, summed over the guests' module counters: `doorbells_needed` (the guest found the poller parked, NEED_WAKEUP set), `doorbells_rung` (it wrote the ivshmem-doorbell register: a VM exit), `irqs_received` (interrupts from the agent) over `hints_sent`. With an ivshmem-plain ring there is no doorbell: the poller's park timeout picks the hint up.\n");
    let notices: Vec<(&str, &Value)> = CONFIGS
        .iter()
        .filter_map(|c| get_r(c).and_then(|r| r.get("notices")).map(|n| (*c, n)))
        .collect();
    if !notices.is_empty() {
        let _ = write!(m, "{}", notices_section(&notices));
    }

    // What each guest's host memory is made of.
    let mems: Vec<(&str, &Value)> = CONFIGS
        .iter()
        .filter_map(|c| {
            get_r(c)
                .and_then(|r| r.get("guest_memory"))
                .map(|g| (*c, g))
        })
        .collect();
    if !mems.is_empty() {
        let _ = write!(m, "{}", guest_memory_section(&mems));
    }

    // Time to share.
    let shares: Vec<(&str, &Value)> = CONFIGS
        .iter()
        .filter_map(|c| get_r(c).map(|r| (*c, r)))
        .filter(|(_, r)| r.get("share_hints").is_some())
        .collect();
    if !shares.is_empty() {
        let _ = writeln!(m, "## Time to share, per file\n");
        percentile_table(&mut m, &shares, "hints", "share", "> 1048");
        let after_notice: Vec<(&str, &Value)> = shares
            .iter()
            .filter(|(_, r)| r.get("loaded_share_files").is_some())
            .copied()
            .collect();
        if !after_notice.is_empty() {
            let _ = writeln!(
                m,
                "\nFiles answered \"loading\", shared once the host's notice brought a second hint (first hint to that hit, `loaded_share_ms_le_*`, powers of two from 1 ms):\n"
            );
            percentile_table(&mut m, &after_notice, "files", "loaded_share", "> 1024");
        }
        let _ = writeln!(m, "\nvmdedup shares a file's pages when the guest gets its answer: a hit maps pool frames that the other guests map too. This is the round trip from a guest's hint (sent at open) to its answer, as the guest's module measured it (`hint_rtt_us_le_*`, powers of two from 64 us: each figure is its bucket's upper bound), over every hint of the run, boot included. A file answered \"loading\" is shared later, when the host's notice that it is loaded makes the guest hint again (its round trip is in the histogram too, from that second hint), or at a later open: vmdedup_warm answers every hint from a preloaded pool. KSM has no per-file moment: its figure is the time to 90% of the ideal in the table above, sampled every second.\n");
    }

    // Steady state: the CPU the deduplication spends once nothing changes,
    // and what the guests do while idle.
    let steady: Vec<(&str, &Value)> = CONFIGS
        .iter()
        .filter_map(|c| get_r(c).map(|r| (*c, r)))
        .filter(|(_, r)| r.get("steady_window_s").is_some() || r.get("idle_guest").is_some())
        .collect();
    if !steady.is_empty() {
        let _ = writeln!(m, "## Steady state and idle guests\n");
        let _ = writeln!(m, "| configuration | window (s) | ksmd CPU (% of a core) | agent CPU (% of a core) | guest idle window (s) | guest interrupts/s | of them timer/s | from the module/s | module counters that moved (per s) |");
        let _ = writeln!(
            m,
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
        );
        for (c, r) in steady {
            let ig = r.get("idle_guest");
            let g = |k: &str| ig.map(|i| format!("{:.1}", f(i, k))).unwrap_or("-".into());
            let moved = ig
                .and_then(|i| i.get("module_counters_per_s"))
                .and_then(Value::as_object)
                .map(|o| {
                    o.iter()
                        .map(|(k, v)| format!("{k} {:.2}", v.as_f64().unwrap_or(0.0)))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .filter(|t| !t.is_empty())
                .unwrap_or("none".into());
            let _ = writeln!(
                m,
                "| {c} | {:.0} | {:.3} | {:.3} | {} | {} | {} | {} | {moved} |",
                f(r, "steady_window_s"),
                f(r, "steady_ksmd_cpu_pct"),
                f(r, "steady_agent_cpu_pct"),
                ig.map(|i| format!("{:.0}", f(i, "window_s")))
                    .unwrap_or("-".into()),
                g("irqs_per_s"),
                g("loc_per_s"),
                g("module_irqs_per_s"),
            );
        }
        let _ = writeln!(m, "\nThe window: after the sharing phase (90% of the ideal, or the limit), the guests idle; CPU from the samples' `/proc/PID/stat` at its ends. The guests' idle window starts 5 s after each guest's own reads: `/proc/interrupts` summed over lines (timer: `LOC`; the module's: lines named vmdedup) and the module's counters, each a mean over the guests. The guest kernel has a periodic tick (no `NO_HZ`), so the timer line counts the tick as well as the module's timers.\n");
    }

    if !micro.is_empty() {
        let _ = writeln!(m, "## In-guest reads: pool vs lower, cold vs warm\n");
        let coarse_row = |r: &[(String, String)]| {
            get(r, "clock")
                .map(|c| c.contains("jiffies"))
                .unwrap_or(false)
        };
        let coarse = micro.iter().any(|r| coarse_row(r));
        let tick = micro
            .iter()
            .filter(|r| coarse_row(r))
            .map(|r| getn(r, "tick_ns"))
            .fold(0.0, f64::max);
        let _ = writeln!(m, "| case | block | files | MiB | MiB/s | mean per read (us) | p50 per read (us) | p99 per read (us) | MiB/s vs lower warm |");
        let _ = writeln!(
            m,
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        let lw = |bs: f64| {
            micro
                .iter()
                .find(|r| {
                    get(r, "label")
                        .map(|l| l.starts_with("lower_warm"))
                        .unwrap_or(false)
                        && getn(r, "bs") == bs
                })
                .map(|r| getn(r, "mib_s"))
        };
        for r in micro {
            let bs = getn(r, "bs");
            let coarse = coarse_row(r);
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} | {:.1} | {:.1} | {} | {} | {} |",
                get(r, "label").unwrap_or("?"),
                if bs >= 1048576.0 {
                    "1 MiB".into()
                } else {
                    format!("{} KiB", bs / 1024.0)
                },
                getn(r, "files"),
                mib(getn(r, "bytes")),
                getn(r, "mib_s"),
                getn(r, "mean_ns") / 1000.0,
                if coarse {
                    "-".to_string()
                } else {
                    format!("{:.1}", getn(r, "p50_ns") / 1000.0)
                },
                if coarse {
                    "-".to_string()
                } else {
                    format!("{:.1}", getn(r, "p99_ns") / 1000.0)
                },
                lw(bs)
                    .map(|l| ratio(getn(r, "mib_s"), l))
                    .unwrap_or("-".into()),
            );
        }
        let _ = writeln!(m, "\nOne guest reads files nobody read yet through /shared (pool_cold: the first open is answered \"loading\" and served from the lower disk), then other files through /lower, twice (lower_cold: page cache empty; lower_warm: from the guest's page cache). A second guest then reads the first set through /shared (pool_warm: copied from pool frames), and once more (pool_again). Timed with CLOCK_MONOTONIC inside the TCG guest, per read(2) call; verify=off.\n");
        if coarse {
            let _ = writeln!(m, "In some rows the guest's clock advanced in steps of up to {:.1} ms (that guest's clocksource was jiffies: it did not switch to the TSC within 20 s of boot), so their per-read percentiles are left out (\"-\"); MiB/s and the mean are totals over many reads.\n", tick / 1e6);
        }
    }

    // Targets: ratios in this run (a benchmark: nothing is asserted).
    let _ = writeln!(m, "## Targets\n");
    let verdict = |ok: bool| if ok { "met" } else { "missed" };
    let mem_of = |c: &str| get_r(c).map(|r| f(r, "host_mem_bytes_final"));
    if let (Some(v), Some(k)) = (mem_of("vmdedup_warm"), ksm_mem) {
        let _ = writeln!(
            m,
            "- host memory, vmdedup_warm at or below KSM default: {} vs {} MiB ({}) — **{}**",
            mib(v),
            mib(k),
            ratio(v, k),
            verdict(v <= k)
        );
    }
    if let (Some(v), Some(k), Some(kr), Some(vr)) = (
        mem_of("vmdedup_ksm"),
        ksm_mem,
        get_r("ksm_default"),
        get_r("vmdedup_ksm"),
    ) {
        let (kc, vc) = (f(kr, "ksmd_cpu_s"), f(vr, "ksmd_cpu_s"));
        let _ = writeln!(
            m,
            "- vmdedup together with KSM at or below KSM alone, with less ksmd CPU: {} vs {} MiB, ksmd {vc:.1} s vs {kc:.1} s — **{}**",
            mib(v),
            mib(k),
            verdict(v <= k && vc < kc)
        );
    }
    for c in ["vmdedup_cold", "vmdedup_warm"] {
        let Some(x) = get_r(c)
            .and_then(|r| r.get("workload_added_x_one_copy"))
            .and_then(Value::as_f64)
        else {
            continue;
        };
        let _ = writeln!(
            m,
            "- the workload adds at most 1.1x one copy of the shared data, {c}: {x:.2}x — **{}**",
            verdict(x <= 1.1)
        );
    }
    for c in ["vmdedup_cold", "vmdedup_warm"] {
        let Some(r) = get_r(c) else { continue };
        let pct = f(r, "saved_pct_of_ideal");
        let _ = writeln!(
            m,
            "- at least 95% of the ideal saving, {c}: {pct:.1}% — **{}**",
            verdict(pct >= 95.0)
        );
    }
    if let Some(k) = get_r("ksm_default") {
        let kt = k.get("time_to_90pct_s").and_then(Value::as_f64);
        for c in ["vmdedup_warm", "vmdedup_cold"] {
            let Some(r) = get_r(c) else { continue };
            let agent = r.get("agent");
            let loading = agent.map(|a| uu(a, "loading")).unwrap_or(0);
            let after_notice = r.get("loaded_share_ms_p90").and_then(Value::as_f64);
            if let (true, Some(k), Some(v)) = (loading > 0, kt, after_notice) {
                // Its files answered "loading" are shared after their
                // notice; the others at their first hint.
                let hit = r.get("share_ms_p90").and_then(Value::as_f64).unwrap_or(v);
                let worst = v.max(hit);
                let x = k * 1000.0 / worst;
                let _ = writeln!(
                    m,
                    "- time to share at least 1000x shorter than KSM default: KSM default {k:.0} s to 90% vs {c} p90 <= {worst} ms per file (hits p90 <= {hit} ms; files answered \"loading\", first hint to the hit after their notice, p90 <= {v} ms): {x:.0}x — **{}**",
                    verdict(x >= 1000.0)
                );
                continue;
            }
            if loading > 0 {
                let hints = agent.map(|a| uu(a, "hints")).unwrap_or(0).max(1);
                let _ = writeln!(
                    m,
                    "- time to share at least 1000x shorter than KSM default: {c} answered {loading} of {hints} hints \"loading\"; those files are shared when the host's notice that they are loaded makes the guest hint again, and the time from the first hint to that one is not measured — not measured per file"
                );
                continue;
            }
            let p90 = r.get("share_ms_p90").and_then(Value::as_f64);
            let line = match (kt, p90) {
                (_, None) => format!(
                    "{c} has no per-file time to share (no hint histogram, or its p90 is past 1 s)"
                ),
                (Some(k), Some(v)) => {
                    let x = k * 1000.0 / v;
                    format!("KSM default {k:.0} s to 90% vs {c} p90 <= {v} ms per file: {x:.0}x — **{}**", verdict(x >= 1000.0))
                }
                (None, Some(v)) => {
                    let lim = f(k, "time_limit_s");
                    let x = lim * 1000.0 / v;
                    format!("KSM default not at 90% within {lim:.0} s vs {c} p90 <= {v} ms: more than {x:.0}x — **{}**", if x >= 1000.0 { "met" } else { "not shown (the KSM limit is too short)" })
                }
            };
            let _ = writeln!(
                m,
                "- time to share at least 1000x shorter than KSM default: {line}"
            );
        }
        let kc = f(k, "ksmd_cpu_s");
        for c in ["vmdedup_warm", "vmdedup_cold"] {
            let Some(r) = get_r(c) else { continue };
            let ac = f(r, "agent_cpu_s");
            let _ = writeln!(
                m,
                "- agent CPU over the run at most 1/10 of ksmd's (KSM default): agent ({c}) {ac:.2} s vs ksmd {kc:.2} s: {} — **{}**",
                if ac > 0.0 { format!("1/{:.1}", kc / ac) } else { "0".into() },
                verdict(ac * 10.0 <= kc)
            );
        }
    }
    for c in ["vmdedup_warm", "vmdedup_cold"] {
        let Some(r) = get_r(c) else { continue };
        if let Some(p) = r.get("steady_agent_cpu_pct").and_then(Value::as_f64) {
            let _ = writeln!(
                m,
                "- agent CPU in the steady-state window at most 0.1% of a core, {c}: {p:.3}% — **{}**",
                verdict(p <= 0.1)
            );
        }
        if let Some(d) = r.get("doorbells_per_hint").and_then(Value::as_f64) {
            let irq = r
                .get("interrupts_per_hint")
                .and_then(Value::as_f64)
                .unwrap_or(0.0);
            let _ = writeln!(
                m,
                "- at most 0.01 doorbells per hint under load, {c}: {d:.4} doorbells and {irq:.4} interrupts per hint — **{}**",
                verdict(d <= 0.01)
            );
        } else if let Some(n) = r.get("doorbells_needed_per_hint").and_then(Value::as_f64) {
            let _ = writeln!(
                m,
                "- at most 0.01 doorbells per hint under load, {c}: no doorbell device (ivshmem-plain ring); the guests found the poller parked at {n:.4} per hint, and those hints waited for its park timeout — **missed**"
            );
        }
        let counted = r
            .get("module_counts_timer_wakeups")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if r.get("idle_guest").is_some() && !counted {
            let _ = writeln!(
                m,
                "- no idle wake-ups from the module, {c}: not measured — this module does not count its event work's runs (`{WAKEUP_COUNTER}`), and the guest's timer interrupts include the tick"
            );
        } else if let Some(ig) = r.get("idle_guest") {
            let mod_irqs = f(ig, "module_irqs_per_s");
            let counters = ig
                .get("module_counters_per_s")
                .and_then(Value::as_object)
                .map(|o| {
                    [WAKEUP_COUNTER, "doorbells_rung", "irqs_received"]
                        .iter()
                        .map(|k| o.get(*k).and_then(Value::as_f64).unwrap_or(0.0))
                        .sum::<f64>()
                })
                .unwrap_or(0.0);
            let _ = writeln!(
                m,
                "- no idle wake-ups from the module, {c}: {mod_irqs:.2} interrupts/s on its lines, {counters:.2}/s runs of its event work (`ticks`), doorbells and interrupts in its counters — **{}**",
                verdict(mod_irqs == 0.0 && counters == 0.0)
            );
        }
    }
    let _ = writeln!(m, "\n![host memory over time](memory.png)\n");
    m
}

/// A table of per-configuration percentiles: `{key}_ms_p50/p90/p99` (each a
/// bucket's upper bound, `past` when beyond the last) and the count in
/// `{key}_{count}` (`share_hints`, `loaded_share_files`).
fn percentile_table(m: &mut String, rows: &[(&str, &Value)], count: &str, key: &str, past: &str) {
    let _ = writeln!(
        m,
        "| configuration | {count} | p50 (ms) | p90 (ms) | p99 (ms) |"
    );
    let _ = writeln!(m, "| --- | ---: | ---: | ---: | ---: |");
    let ms = |r: &Value, p: &str| match r.get(format!("{key}_ms_{p}")).and_then(Value::as_f64) {
        Some(x) => format!("<= {x}"),
        None => past.to_string(),
    };
    for (c, r) in rows {
        let _ = writeln!(
            m,
            "| {c} | {:.0} | {} | {} | {} |",
            f(r, &format!("{key}_{count}")),
            ms(r, "p50"),
            ms(r, "p90"),
            ms(r, "p99"),
        );
    }
}

/// Runs `report`.
pub fn run(a: Args) -> anyhow::Result<()> {
    if let Some(cfg) = &a.check_90 {
        let samples = read_samples(&a.run.join(cfg).join("samples.jsonl"));
        let ideal = a.ideal.unwrap_or(u64::MAX) as f64;
        let ok = samples
            .last()
            .map(|s| saved(cfg, s) as f64 >= 0.9 * ideal)
            .unwrap_or(false);
        std::process::exit(if ok { 0 } else { 1 });
    }
    let out = a.out.clone().context("--out is needed")?;
    fs::create_dir_all(&out)?;
    let info: Value =
        serde_json::from_slice(&fs::read(a.run.join("run.json")).context("run.json")?)?;
    let ideal = uu(&info, "ideal_saved_bytes");
    let mut results = serde_json::Map::new();
    for c in CONFIGS {
        // The guests' RAM (`-m`): older run.json files lack ram_mib.
        let ram_mib = match uu(&info, "ram_mib") {
            0 => uu(&info, "mem_mib"),
            r => r,
        };
        if let Some(r) = config_result(&a.run, c, ideal, uu(&info, "data_bytes_per_guest"), ram_mib)
        {
            results.insert(c.to_string(), r);
        }
    }
    let micro = micro(&a.run);
    let micro_json: Vec<Value> = micro
        .iter()
        .map(|kv| {
            Value::Object(
                kv.iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            v.parse::<f64>()
                                .map(Value::from)
                                .unwrap_or(Value::from(v.clone())),
                        )
                    })
                    .collect(),
            )
        })
        .collect();
    let load_end = fs::read_to_string(a.run.join("loadavg-end")).unwrap_or_default();
    let mut doc = json!({ "run": info, "micro": micro_json });
    for (k, v) in &results {
        doc[k] = v.clone();
    }
    fs::write(out.join("report.json"), serde_json::to_string_pretty(&doc)?)?;
    fs::write(
        out.join("report.md"),
        markdown(&info, &results, &micro, &load_end),
    )?;
    let series: Vec<plot::Series> = CONFIGS.iter().filter_map(|c| series(&a.run, c)).collect();
    plot::line_chart(
        &out.join("memory.png"),
        &format!(
            "Host memory used by {} guests (TCG), per configuration",
            uu(&info, "vms")
        ),
        "seconds since the guests were started",
        "host memory used by the guests (MiB)",
        &series,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hosts_thp_settings_are_quoted_from_the_run() {
        let run = json!({"host_thp": "enabled=madvise defrag=madvise max_ptes_none=0"});
        assert_eq!(
            host_thp(&run),
            "`enabled=madvise`, `defrag=madvise`, `max_ptes_none=0`"
        );
        assert!(host_thp(&json!({})).starts_with("not recorded"));
    }

    #[test]
    fn time_to_90_is_zero_when_already_there_and_none_when_never() {
        let s = |t: f64, saved: u64| json!({"unix": t, "agent": {"bytes_saved": saved, "frames_used": 0}});
        let v = vec![s(1.0, 50), s(2.0, 95), s(3.0, 95)];
        assert_eq!(time_to_90("vmdedup_cold", &v, 2.5, 100), Some(0.0));
        assert_eq!(time_to_90("vmdedup_cold", &v, 1.5, 100), Some(0.5));
        assert_eq!(time_to_90("vmdedup_cold", &v, 1.5, 1000), None);
        let k = |t: f64, rss: u64, pss: u64| json!({"unix": t, "guest_ram_rss": rss, "guest_ram_pss": pss});
        let v = vec![k(1.0, 100, 100), k(5.0, 200, 100)];
        assert_eq!(time_to_90("ksm_default", &v, 1.0, 100), Some(4.0));
    }

    #[test]
    fn tagged_lines_parse() {
        let t = tagged("x\nMICRO pool_warm_4k bs=4096 mib_s=12.5\r\n", "MICRO ");
        assert_eq!(get(&t[0], "label"), Some("pool_warm_4k"));
        assert_eq!(getn(&t[0], "mib_s"), 12.5);
    }

    #[test]
    fn hint_rtt_percentiles_come_from_bucket_bounds_summed_over_guests() {
        let g1 = "BENCH-STATS start hint_rtt_us_le_64=0\nBENCH-STATS end hint_rtt_us_le_64=5 hint_rtt_us_le_1024=4 hint_rtt_us_over=1\n".to_string();
        let g2 = "BENCH-STATS end hint_rtt_us_le_64=5 hint_rtt_us_le_2048=5\n".to_string();
        let (n, (p50, p90, p99)) = hint_rtt(&[g1, g2]).unwrap();
        assert_eq!(n, 20.0);
        assert_eq!(p50, Some(0.064));
        assert_eq!(p90, Some(2.048));
        // The last hint is past the last bound.
        assert_eq!(p99, None);
        assert!(hint_rtt(&["BENCH-STATS end hints_sent=3\n".to_string()]).is_none());
    }

    #[test]
    fn loaded_share_percentiles_are_in_milliseconds_of_their_own_buckets() {
        let g1 =
            "BENCH-STATS end loaded_share_ms_le_1=1 loaded_share_ms_le_8=7 hint_rtt_us_le_64=100\n"
                .to_string();
        let g2 = "BENCH-STATS end loaded_share_ms_le_1024=1 loaded_share_ms_over=1\n".to_string();
        let (n, (p50, p90, p99)) = loaded_share(&[g1, g2]).unwrap();
        assert_eq!(n, 10.0);
        assert_eq!(p50, Some(8.0));
        assert_eq!(p90, Some(1024.0));
        assert_eq!(p99, None);
        // No such counters (an older module): nothing to report.
        assert!(loaded_share(&["BENCH-STATS end hint_rtt_us_le_64=3\n".to_string()]).is_none());
    }

    #[test]
    fn settled_stats_count_the_late_notices_and_end_stays_the_workload() {
        let g = "BENCH-STATS start hints_sent=1 answers_miss_loading=0 loaded_notices=0 refetch_hits=0 loading_forgotten=0\n\
                 BENCH-STATS end hints_sent=11 answers_miss_loading=4 loaded_notices=1 refetch_hits=1 loaded_share_ms_le_8=1\n\
                 BENCH-STATS settled hints_sent=14 answers_miss_loading=4 loaded_notices=3 refetch_hits=3 loading_forgotten=1 loaded_share_ms_le_8=3\n"
            .to_string();
        let old = "BENCH-STATS start answers_miss_loading=0 loaded_notices=0\nBENCH-STATS end answers_miss_loading=2 loaded_notices=2\n".to_string();
        assert_eq!(
            workload_counters(std::slice::from_ref(&g), &["hints_sent"]),
            vec![10.0]
        );
        let names = [
            "answers_miss_loading",
            "loaded_notices",
            "refetch_hits",
            "loading_forgotten",
        ];
        assert_eq!(
            counters_between(&[g.clone(), old], &names, &["settled", "end"]),
            vec![6.0, 5.0, 3.0, 1.0],
            "a guest without settled stats counts to its end"
        );
        assert_eq!(loaded_share(&[g]).unwrap().0, 3.0);
        let n = json!({"loading_answers": 6.0, "notices": 5.0, "hits_after_notice": 3.0, "forgotten": 1.0});
        let md = notices_section(&[("vmdedup_cold", &n)]);
        assert!(
            md.contains("| vmdedup_cold | 6 | 5 | 3 | 0.83 | 1 |"),
            "{md}"
        );
    }

    #[test]
    fn workload_counters_are_end_minus_start_and_idle_is_per_second() {
        let g = "BENCH-STATS start hints_sent=10 doorbells_rung=1\nBENCH-STATS end hints_sent=110 doorbells_rung=2\nBENCH-IDLE secs=10 irqs=1000 loc=900 module_irqs=0 d_timer_wakeups=200\n".to_string();
        let c = workload_counters(
            &[g.clone(), g.clone()],
            &["hints_sent", "doorbells_rung", "irqs_received"],
        );
        assert_eq!(c, vec![200.0, 2.0, 0.0]);
        let idle = idle_guests(&[g]).unwrap();
        assert_eq!(f(&idle, "irqs_per_s"), 100.0);
        assert_eq!(f(&idle, "loc_per_s"), 90.0);
        assert_eq!(f(&idle, "module_irqs_per_s"), 0.0);
        assert_eq!(f(&idle["module_counters_per_s"], "timer_wakeups"), 20.0);
        assert!(idle_guests(&["BENCH-IDLE secs=0\n".to_string()]).is_none());
    }

    #[test]
    fn vmdedup_with_ksm_saves_both() {
        let s = json!({"guest_ram_rss": 300, "guest_ram_pss": 200, "agent": {"bytes_saved": 50}});
        assert_eq!(saved("vmdedup_ksm", &s), 150);
        assert_eq!(saved("vmdedup_warm", &s), 50);
        assert_eq!(saved("ksm_default", &s), 100);
    }

    /// /proc/meminfo of a 512 MiB busybox guest (6.12) after the workload,
    /// as bench_meminfo prints it.
    const MEMINFO_END: &str = "BENCH-MEMINFO end MemTotal=434888 MemFree=221424 MemAvailable=344532 Buffers=2116 Cached=160828 SwapCached=0 Active=24680 Inactive=146404 Active_anon=13376 Inactive_anon=9624 Active_file=11304 Inactive_file=136780 Unevictable=0 Mlocked=0 SwapTotal=0 SwapFree=0 Zswap=0 Zswapped=0 Dirty=0 Writeback=0 AnonPages=9620 Mapped=7060 Shmem=13380 KReclaimable=6156 Slab=14880 SReclaimable=6156 SUnreclaim=8724 KernelStack=448 PageTables=388 SecPageTables=0 NFS_Unstable=0 Bounce=0 WritebackTmp=0 CommitLimit=217444 Committed_AS=34300 VmallocTotal=34359738367 VmallocUsed=2168 VmallocChunk=0 Percpu=216 AnonHugePages=0 ShmemHugePages=0 ShmemPmdMapped=0 FileHugePages=0 FilePmdMapped=0 HugePages_Total=0 HugePages_Free=0 HugePages_Rsvd=0 HugePages_Surp=0 Hugepagesize=2048 Hugetlb=0 DirectMap4k=14208 DirectMap2M=510976 DirectMap1G=0";
    const KERNELMEM: &str = "BENCH-KERNELMEM available=429076 total=523768 kernel_code=14336 rwdata=2468 rodata=5260 init=2800 bss=3076 reserved=94436 cma_reserved=0";

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn guest_columns_come_from_meminfo() {
        let kv = tagged(MEMINFO_END, "BENCH-MEMINFO ").remove(0);
        assert_eq!(get(&kv, "label"), Some("end"));
        assert_eq!(get(&kv, "Active_anon"), Some("13376"));
        let (c, stack) = guest_cols(&kv, Some(512.0)).unwrap();
        let kb = |v: f64| v / 1024.0;
        // used = MemTotal - MemFree.
        assert!(close(c[COL_USED], kb(434888.0 - 221424.0)));
        // page cache = Cached - Shmem; Buffers; Shmem; AnonPages.
        assert!(close(c[1], kb(160828.0 - 13380.0)));
        assert!(close(c[2], kb(2116.0)));
        assert!(close(c[3], kb(13380.0)));
        assert!(close(c[4], kb(9620.0)));
        // Slab = SReclaimable + SUnreclaim.
        assert!(close(c[5], kb(6156.0 + 8724.0)));
        // The stacks are inside VmallocUsed: not added again.
        assert!(close(c[6], kb(388.0 + 216.0 + 2168.0)));
        assert!(close(stack, kb(448.0)));
        // The columns add up to used.
        assert!(close(c[1..=COL_REST].iter().sum::<f64>(), c[COL_USED]));
        assert!(close(c[COL_REST], kb(213464.0 - 190216.0)));
        assert!(close(c[COL_NOT_IN_TOTAL], 512.0 - kb(434888.0)));
        // No RAM size: that column alone is unknown.
        let (c, _) = guest_cols(&kv, None).unwrap();
        assert!(c[COL_NOT_IN_TOTAL].is_nan() && c[COL_USED] > 0.0);
    }

    #[test]
    fn kernel_stacks_count_once_and_partial_lines_do_not_panic() {
        let line = |s: &str| tagged(s, "BENCH-MEMINFO ").remove(0);
        // No VmallocUsed (or less than the stacks): the stacks are apart.
        let (c, _) = guest_cols(
            &line(
                "BENCH-MEMINFO end MemTotal=1024 MemFree=0 KernelStack=100 PageTables=24 Slab=200",
            ),
            None,
        )
        .unwrap();
        assert!(close(c[6], 124.0 / 1024.0));
        // Without SReclaimable and SUnreclaim, Slab itself.
        assert!(close(c[5], 200.0 / 1024.0));
        let (c, _) = guest_cols(
            &line("BENCH-MEMINFO end MemTotal=1024 MemFree=0 KernelStack=100 VmallocUsed=50"),
            None,
        )
        .unwrap();
        assert!(close(c[6], 150.0 / 1024.0));
        // No MemTotal, MemTotal 0, no MemFree, or no numbers: no columns.
        for bad in [
            "BENCH-MEMINFO end MemFree=5 Cached=3",
            "BENCH-MEMINFO end MemTotal=0 MemFree=0",
            "BENCH-MEMINFO end MemTotal=100",
            "BENCH-MEMINFO end MemTotal=x MemFree=y",
            "BENCH-MEMINFO end MemTotal=NaN MemFree=1",
            "BENCH-MEMINFO end",
        ] {
            assert!(guest_cols(&line(bad), Some(512.0)).is_none(), "{bad}");
        }
        // Garbage in a field is 0, not a panic.
        let (c, _) = guest_cols(
            &line("BENCH-MEMINFO end MemTotal=2048 MemFree=1024 Cached=abc Shmem= x"),
            None,
        )
        .unwrap();
        assert!(close(c[COL_USED], 1.0) && close(c[1], 0.0));
    }

    #[test]
    fn the_idle_line_wins_over_end_and_older_lines_are_not_used() {
        let log = format!(
            "BENCH-MEMINFO start MemTotal=1 MemFree=1\n{MEMINFO_END}\r\nBENCH-IDLE secs=30 irqs=1\nBENCH-MEMINFO idle MemTotal=434888 MemFree=1\n"
        );
        let (label, kv) = guest_meminfo(&log).unwrap();
        assert_eq!((label, get(&kv, "MemFree")), ("idle", Some("1")));
        let (label, _) = guest_meminfo(&format!("{MEMINFO_END}\n")).unwrap();
        assert_eq!(label, "end");
        // Only a start line, or the Debian guests' older line without a
        // label: nothing.
        assert!(guest_meminfo("BENCH-MEMINFO start MemTotal=1 MemFree=1\n").is_none());
        assert!(guest_meminfo("BENCH-MEMINFO MemTotal=655360 MemFree=1 Cached=5\n").is_none());
    }

    #[test]
    fn guest_memory_is_a_mean_per_guest_next_to_the_host_view() {
        // Two guests, the second with less page cache and no kernel line.
        let g1 = format!(
            "BENCH-START mode=shared\n{KERNELMEM}\nBENCH-MEMINFO start MemTotal=434888 MemFree=400000 Cached=13380 Shmem=13380\n{MEMINFO_END}\n"
        );
        let g2 = MEMINFO_END
            .replace("MemFree=221424", "MemFree=323824")
            .replace("Cached=160828", "Cached=58428")
            + "\n";
        let mib = 1048576u64;
        let last = json!({
            "guest_ram_pss": 200 * mib, "guest_ram_rss": 300 * mib,
            "pool_allocated": 90 * mib,
            "qemu": {"vm1": {"pss": 100 * mib}, "vm2": {"pss": 100 * mib}},
        });
        let logs = [g1.clone(), g2.clone()];
        let gm = guest_memory("vmdedup_warm", &logs, &last, 512).unwrap();
        assert_eq!(gm["guests"], json!(2));
        assert_eq!(gm["qemus"], json!(2));
        assert_eq!(gm["meminfo_at"], json!("end"));
        assert_eq!(gm["boot_ram_from"], json!("qemu -m"));
        // Page cache: (147448 + 45048) / 2 kB.
        assert!(close(
            f(&gm, "page_cache_mib"),
            (147448.0 + 45048.0) / 2.0 / 1024.0
        ));
        let used = f(&gm, "used_mib");
        assert!(close(used, (213464.0 - 51200.0) / 1024.0));
        assert!(close(f(&gm, "host_pss_mib"), 100.0));
        assert!(close(f(&gm, "host_rss_mib"), 150.0));
        assert!(close(f(&gm, "pool_per_guest_mib"), 45.0));
        assert!(close(f(&gm, "host_mem_per_guest_mib"), 145.0));
        assert!(close(f(&gm, "pss_minus_used_mib"), 100.0 - used));
        assert!(close(f(&gm, "rss_minus_used_mib"), 150.0 - used));
        assert!(close(f(&gm, "rss_minus_pss_mib"), 50.0));
        assert!(close(
            f(&gm, "not_in_memtotal_mib"),
            512.0 - 434888.0 / 1024.0
        ));
        // The kernel's boot line, from the guest that printed it.
        let kb = &gm["kernel_boot"];
        assert_eq!(kb["guests"], json!(1));
        assert!(close(f(kb, "total_mib"), 523768.0 / 1024.0));
        assert!(close(f(kb, "reserved_mib"), 94436.0 / 1024.0));
        assert!(close(
            f(kb, "image_mib"),
            (14336.0 + 2468.0 + 5260.0 + 3076.0) / 1024.0
        ));
        // Start: only the first guest had that line.
        assert_eq!(gm["start"]["guests"], json!(1));
        assert!(close(f(&gm["start"], "page_cache_mib"), 0.0));
        // Without KSM or vmdedup: no pool share.
        let gm = guest_memory("ksm_default", &logs, &last, 512).unwrap();
        assert_eq!(gm["pool_per_guest_mib"], Value::Null);
        assert!(close(f(&gm, "host_mem_per_guest_mib"), 100.0));
        // No -m size: the kernel's usable RAM, for the guests that said it.
        let gm = guest_memory("none", &[g1], &json!({}), 0).unwrap();
        assert_eq!(gm["boot_ram_from"], json!("kernel log"));
        assert!(close(
            f(&gm, "not_in_memtotal_mib"),
            (523768.0 - 434888.0) / 1024.0
        ));
        assert!(close(f(&gm, "host_pss_mib"), 0.0));
        let gm = guest_memory("none", &[g2], &json!({}), 0).unwrap();
        assert_eq!(gm["not_in_memtotal_mib"], Value::Null);
        // One guest of three printed it: the section says so.
        let three = json!({"guest_ram_pss": 3 * mib, "qemu": {"vm1": {}, "vm2": {}, "vm3": {}}});
        let gm = guest_memory("none", &logs[..1], &three, 512).unwrap();
        assert_eq!(
            (gm["guests"].clone(), gm["qemus"].clone()),
            (json!(1), json!(3))
        );
        assert!(close(f(&gm, "host_pss_mib"), 1.0));
        assert!(guest_memory_section(&[("none", &gm)])
            .contains("none: 1 of its 3 guests printed their `/proc/meminfo`"));
    }

    #[test]
    fn older_logs_leave_the_section_out() {
        let old = "BENCH-START mode=lower passes=1 micro=none\nBENCH-STATS start \nBENCH-STATS end \nBENCH-MEMINFO MemTotal=655360 MemFree=1000 Cached=5000 Shmem=10\nBENCH-READS-DONE\n".to_string();
        let last = json!({"guest_ram_pss": 1, "guest_ram_rss": 1});
        assert!(guest_memory("none", &[old], &last, 512).is_none());
        assert!(guest_memory("none", &[], &last, 512).is_none());
        let mut results = serde_json::Map::new();
        results.insert("ksm_default".into(), json!({"host_mem_bytes_final": 1.0}));
        results.insert("vmdedup_warm".into(), json!({"host_mem_bytes_final": 2.0}));
        let md = markdown(&json!({}), &results, &[], "");
        assert!(!md.contains("Guest memory"));
    }

    #[test]
    fn the_section_compares_vmdedup_warm_with_ksm_default() {
        let mib = 1048576u64;
        let log = format!("{KERNELMEM}\n{MEMINFO_END}\n");
        let warm_log = MEMINFO_END
            .replace("MemFree=221424", "MemFree=323824")
            .replace("Cached=160828", "Cached=58428")
            + "\n";
        let ksm_last =
            json!({"guest_ram_pss": 60 * mib, "guest_ram_rss": 170 * mib, "qemu": {"vm1": {}}});
        let warm_last = json!({"guest_ram_pss": 80 * mib, "guest_ram_rss": 80 * mib, "guest_ram_anon_huge": 64 * mib, "pool_allocated": 40 * mib, "qemu": {"vm1": {}}});
        let mut results = serde_json::Map::new();
        for (c, l, s) in [
            ("ksm_default", &log, &ksm_last),
            ("vmdedup_warm", &warm_log, &warm_last),
        ] {
            let gm = guest_memory(c, std::slice::from_ref(l), s, 512).unwrap();
            results.insert(
                c.into(),
                json!({ "host_mem_bytes_final": 1.0, "guest_memory": gm }),
            );
        }
        let md = markdown(&json!({}), &results, &[], "");
        let sec = &md[md.find("## Guest memory, per guest").unwrap()..];
        assert!(sec.contains("| ksm_default | 60.0 | 60.0 | 170.0 | - | - |"));
        assert!(sec.contains("| vmdedup_warm | 120.0 | 80.0 | 80.0 | 64.0 | 40.0 |"));
        // The page cache differs by 102400 kB, nothing else the guest uses.
        let diff = sec
            .lines()
            .find(|l| l.starts_with("Per guest, vmdedup_warm minus ksm_default"))
            .unwrap();
        assert!(
            diff.contains("host memory +60.0 MiB = guest-RAM Pss +20.0 + the pool's share +40.0")
        );
        assert!(diff.contains(
            "-100.0 MiB in what the guests count as used (page cache -100.0, Buffers +0.0"
        ));
        assert!(diff.contains("; largest: page cache)"));
        // Rss - used: 80 - (used - 100) against 170 - used.
        assert!(diff.contains("+10.0 MiB in what the host holds beyond that (Rss - used; not in MemTotal differs by +0.0, Rss in 2 MiB pages by ?)"));
        // KSM took 110 MiB off its guests' Rss.
        assert!(diff.contains("+110.0 MiB that KSM merged in ksm_default's guests and not in vmdedup_warm's (Rss - Pss: 110.0 vs 0.0 MiB)"));
        assert!(sec.contains("of which the kernel's image (code, rwdata, rodata, bss) is 24.6 MiB"));
    }

    /// The guest helpers, run by a POSIX shell on this machine, print lines
    /// that the report parses: every field of this host's /proc/meminfo,
    /// and the 6.12 boot message from a stand-in dmesg.
    #[test]
    fn the_guest_helpers_print_what_the_report_reads() {
        let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/lib/bench-guest-lib.sh");
        let script = r#". "$0"
dmesg() { echo '[    0.000000] BIOS-provided physical RAM map:'; echo '[    0.021341] Memory: 429076K/523768K available (14336K kernel code, 2468K rwdata, 5260K rodata, 2800K init, 3076K bss, 94436K reserved, 0K cma-reserved)'; }
bench_kernelmem
bench_meminfo end"#;
        let Ok(out) = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(&lib)
            .output()
        else {
            // No shell to run it with: nothing to check here.
            return;
        };
        let text = String::from_utf8_lossy(&out.stdout);
        let km = tagged(&text, "BENCH-KERNELMEM ");
        assert_eq!(km.len(), 1, "{text}");
        for (k, v) in [
            ("available", 429076.0),
            ("total", 523768.0),
            ("kernel_code", 14336.0),
            ("init", 2800.0),
            ("reserved", 94436.0),
            ("cma_reserved", 0.0),
        ] {
            assert_eq!(getn(&km[0], k), v, "{k}");
        }
        let Ok(meminfo) = fs::read_to_string("/proc/meminfo") else {
            return;
        };
        let (label, kv) = guest_meminfo(&text).unwrap();
        assert_eq!(label, "end");
        // One k=v per meminfo line, named as meminfo names it.
        assert_eq!(kv.len() - 1, meminfo.lines().count(), "{text}");
        assert!(get(&kv, "MemTotal").is_some() && get(&kv, "Active_anon").is_some());
        assert!(guest_cols(&kv, None).is_some());
    }
}
