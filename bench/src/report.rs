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

const CONFIGS: [&str; 5] = [
    "none",
    "ksm_default",
    "ksm_aggressive",
    "vmdedup_cold",
    "vmdedup_warm",
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

/// Bytes saved at one sample.
fn saved(cfg: &str, s: &Value) -> u64 {
    if is_vmdedup(cfg) {
        s.get("agent").map(|a| uu(a, "bytes_saved")).unwrap_or(0)
    } else {
        uu(s, "guest_ram_rss").saturating_sub(uu(s, "guest_ram_pss"))
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

/// Doorbells and hints of the workload, summed over guests (start/end deltas).
fn doorbells(dir: &Path) -> (f64, f64) {
    let (mut bells, mut hints) = (0.0, 0.0);
    for i in 1..=16 {
        let Ok(log) = fs::read_to_string(dir.join(format!("vm{i}.out.log"))) else {
            continue;
        };
        let st = tagged(&log, "BENCH-STATS ");
        let (Some(a), Some(b)) = (
            st.iter().find(|s| get(s, "label") == Some("start")),
            st.iter().find(|s| get(s, "label") == Some("end")),
        ) else {
            continue;
        };
        bells += getn(b, "doorbells_needed") - getn(a, "doorbells_needed");
        hints += getn(b, "hints_sent") - getn(a, "hints_sent");
    }
    (bells, hints)
}

fn config_result(run: &Path, cfg: &str, ideal: u64) -> Option<Value> {
    let dir = run.join(cfg);
    let ev: Value = serde_json::from_slice(&fs::read(dir.join("events.json")).ok()?).ok()?;
    let samples = read_samples(&dir.join("samples.jsonl"));
    let last = samples.last()?;
    let first = samples.first()?;
    let reads_done = f(&ev, "reads_done_unix");
    let t90 = time_to_90(cfg, &samples, reads_done, ideal);
    let saved_final = saved(cfg, last);
    let dedup_cpu = if is_vmdedup(cfg) {
        f(last, "agent_cpu_s")
    } else if cfg.starts_with("ksm") {
        f(last, "ksmd_cpu_s") - f(first, "ksmd_cpu_s")
    } else {
        0.0
    };
    let gib = saved_final as f64 / (1u64 << 30) as f64;
    let mut r = json!({
        "host_mem_bytes_final": host_mem(cfg, last),
        "saved_bytes_final": saved_final,
        "ideal_saved_bytes": ideal,
        "saved_pct_of_ideal": if ideal > 0 { saved_final as f64 * 100.0 / ideal as f64 } else { 0.0 },
        "time_to_90pct_s": t90,
        "time_limit_s": f(&ev, "limit_s"),
        "dedup_cpu_s": dedup_cpu,
        "dedup_cpu_s_per_gib_saved": if gib > 0.0 { Value::from(dedup_cpu / gib) } else { Value::Null },
        "reads_s": reads_done - f(&ev, "boot_unix"),
        "guest_ram_rss_final": uu(last, "guest_ram_rss"),
        "guest_ram_pss_final": uu(last, "guest_ram_pss"),
        "ksm_pages_sharing_final": last.get("ksm").map(|k| uu(k, "pages_sharing")).unwrap_or(0),
        "ksm_general_profit_final": last.get("ksm").and_then(|k| k.get("general_profit")).and_then(Value::as_i64).unwrap_or(0),
        "ksm_full_scans": last.get("ksm").map(|k| uu(k, "full_scans")).unwrap_or(0) as i64
            - first.get("ksm").map(|k| uu(k, "full_scans")).unwrap_or(0) as i64,
    });
    if is_vmdedup(cfg) {
        if let Some(a) = last.get("agent") {
            r["agent"] = a.clone();
        }
        r["pool_allocated_bytes_final"] =
            last.get("pool_allocated").cloned().unwrap_or(Value::Null);
        if let Some(w) = ev.get("warm_done_unix").and_then(Value::as_f64) {
            r["warm_s"] = json!(w - f(&ev, "start_unix"));
        }
        let (bells, hints) = doorbells(&dir);
        r["doorbells"] = json!(bells);
        r["hints_sent"] = json!(hints);
        r["doorbells_per_hint"] = if hints > 0.0 {
            json!(bells / hints)
        } else {
            Value::Null
        };
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
    let _ = writeln!(
        m,
        "{} guests (TCG, 1 vCPU, {} MiB RAM each, `memory-backend-ram,merge=on`), the same image for all, {} pass(es) of the workload: run Python 3.11 from the tree (imports ~80 modules), then read every file ({} files, {} MiB of file pages per guest). Ideal saving = (N-1) copies of that data = **{} MiB**. Host: {}, {} CPUs shared with other engineers' builds and QEMUs (load average {} at the start, {} at the end): numbers are noisy. {}. Date: {}.\n",
        uu(run_info, "vms"),
        uu(run_info, "mem_mib"),
        uu(run_info, "passes"),
        uu(run_info, "tree_files"),
        mib(f(run_info, "data_bytes_per_guest")),
        mib(ideal),
        run_info.get("host").and_then(Value::as_str).unwrap_or("?"),
        uu(run_info, "cpus"),
        run_info.get("loadavg_start").and_then(Value::as_str).unwrap_or("?"),
        load_end.trim(),
        run_info.get("qemu").and_then(Value::as_str).unwrap_or("QEMU"),
        run_info.get("date").and_then(Value::as_str).unwrap_or("?"),
    );
    let _ = writeln!(m, "## Host memory, saving, time to share, CPU\n");
    let _ = writeln!(m, "| configuration | host memory (MiB) | vs none | vs KSM default | saved (MiB) | % of ideal | time to 90% after reads (s) | dedup CPU (s) | CPU s per GiB saved | reads took (s) |");
    let _ = writeln!(
        m,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for c in CONFIGS {
        let Some(r) = get_r(c) else { continue };
        let mem = f(r, "host_mem_bytes_final");
        let t90 = match r.get("time_to_90pct_s").and_then(Value::as_f64) {
            Some(t) => format!("{t:.1}"),
            None => format!("never (limit {:.0})", f(r, "time_limit_s")),
        };
        let _ = writeln!(
            m,
            "| {c} | {} | {} | {} | {} | {:.1}% | {t90} | {:.2} | {} | {:.0} |",
            mib(mem),
            none_mem.map(|n| ratio(mem, n)).unwrap_or("-".into()),
            ksm_mem.map(|k| ratio(mem, k)).unwrap_or("-".into()),
            mib(f(r, "saved_bytes_final")),
            f(r, "saved_pct_of_ideal"),
            f(r, "dedup_cpu_s"),
            r.get("dedup_cpu_s_per_gib_saved")
                .and_then(Value::as_f64)
                .map(|v| format!("{v:.2}"))
                .unwrap_or("-".into()),
            f(r, "reads_s"),
        );
    }
    let _ = writeln!(
        m,
        "\nHost memory: the sum over QEMUs of the `Pss` of the guest-RAM mapping in `/proc/PID/smaps` (a page KSM merged across k mappings counts 1/k in each, so the sum is physical memory; guest RAM is private anonymous memory, so `RssShmem` is 0), plus for vmdedup the pool, counted once: the pages allocated to the pool's memory file (its frames and frame tables; `st_blocks`). QEMU madvises guest RAM MADV_HUGEPAGE and the host's THP mode is `madvise`, so guest RAM becomes resident in 2 MiB steps. Saved: KSM and none: the guests' `Rss - Pss` of guest RAM; vmdedup: the agent's `bytes_saved` = (`pages_mapped` - `frames_used`) x 4 KiB. Dedup CPU: ksmd's CPU time during the configuration (`/proc/PID/stat` utime+stime); for vmdedup the agent's whole CPU time since it started, **poller threads included** (and loader threads, and the warm-up for vmdedup_warm). Time to 90%: from the moment the last guest finished its reads until the saving reached 90% of the ideal (0 when it already had), sampled every second.\n"
    );
    let _ = writeln!(m, "## KSM and vmdedup counters\n");
    let _ = writeln!(m, "| configuration | KSM pages_sharing | KSM general_profit (MiB) | KSM full scans | pool frames_used (MiB) | pages_mapped (MiB) | hints | hits | loading misses | doorbells per hint |");
    let _ = writeln!(
        m,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for c in CONFIGS {
        let Some(r) = get_r(c) else { continue };
        let a = r.get("agent");
        let ag = |k: &str| a.map(|a| uu(a, k).to_string()).unwrap_or("-".into());
        let _ = writeln!(
            m,
            "| {c} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
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
            r.get("doorbells_per_hint")
                .and_then(Value::as_f64)
                .map(|v| format!("{v:.4}"))
                .unwrap_or("-".into()),
        );
    }
    let _ = writeln!(m, "\nKSM counters are host-wide (`/sys/kernel/mm/ksm`); nothing else on the host marks memory mergeable unless another process does. Doorbells per hint: the guests' `doorbells_needed` / `hints_sent` during the workload (ivshmem-plain has no doorbell: a guest that sees NEED_WAKEUP counts it and the poller's park timeout picks the hint up).\n");

    // Idle poller.
    let idle: Vec<(&str, &Value)> = CONFIGS
        .iter()
        .filter_map(|c| get_r(c).map(|r| (*c, r)))
        .filter(|(_, r)| r.get("idle_agent_cpu_pct").is_some())
        .collect();
    if !idle.is_empty() {
        let _ = writeln!(m, "## Idle agent\n");
        let _ = writeln!(m, "| configuration | window (s) | agent CPU (% of a core) | poller threads (% of a core) |");
        let _ = writeln!(m, "| --- | ---: | ---: | ---: |");
        for (c, r) in idle {
            let _ = writeln!(
                m,
                "| {c} | {:.0} | {:.3} | {:.3} |",
                f(r, "idle_window_s"),
                f(r, "idle_agent_cpu_pct"),
                f(r, "idle_poller_cpu_pct")
            );
        }
        let _ = writeln!(m, "\nGuests up and idle after their reads; `/proc/PID/task/*/stat` of the agent, threads named `vmdedup-poll*` for the pollers.\n");
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

    // Targets.
    let _ = writeln!(m, "## Targets\n");
    let best_v = ["vmdedup_warm", "vmdedup_cold"]
        .iter()
        .filter_map(|c| get_r(c).map(|r| (*c, r)))
        .collect::<Vec<_>>();
    for (c, r) in &best_v {
        let pct = f(r, "saved_pct_of_ideal");
        let _ = writeln!(
            m,
            "- at least 95% of the ideal saving, {c}: {pct:.1}% — **{}**",
            if pct >= 95.0 { "met" } else { "missed" }
        );
    }
    if let Some(k) = get_r("ksm_default") {
        let kt = k.get("time_to_90pct_s").and_then(Value::as_f64);
        for (c, r) in &best_v {
            let vt = r.get("time_to_90pct_s").and_then(Value::as_f64);
            let line = match (kt, vt) {
                (_, None) => format!("{c} never reached 90% — **missed**"),
                (Some(k), Some(v)) => {
                    // One-second sampling: a time of 0 means "within a second".
                    let v_eff = v.max(1.0);
                    let r = k / v_eff;
                    format!("KSM default {k:.0} s vs {c} {v:.1} s (counted as {v_eff:.0} s, the sampling interval): {r:.0}x — **{}**", if r >= 1000.0 { "met" } else { "missed" })
                }
                (None, Some(v)) => {
                    let v_eff = v.max(1.0);
                    let lim = f(k, "time_limit_s");
                    let r = lim / v_eff;
                    format!("KSM default never within {lim:.0} s vs {c} {v:.1} s: more than {r:.0}x — **{}**", if r >= 1000.0 { "met" } else { "not shown (the KSM limit is too short to show 1000x)" })
                }
            };
            let _ = writeln!(
                m,
                "- time to share at least 1000x shorter than KSM default: {line}"
            );
        }
        let kc = k.get("dedup_cpu_s_per_gib_saved").and_then(Value::as_f64);
        for (c, r) in &best_v {
            let vc = r.get("dedup_cpu_s_per_gib_saved").and_then(Value::as_f64);
            let line = match (kc, vc) {
                (Some(k), Some(v)) if v > 0.0 => format!(
                    "ksmd {k:.2} s/GiB vs agent ({c}) {v:.2} s/GiB: 1/{:.0} — **{}**",
                    k / v,
                    if k / v >= 100.0 { "met" } else { "missed" }
                ),
                (Some(k), Some(_)) => format!("ksmd {k:.2} s/GiB vs agent ({c}) 0 s/GiB — **met**"),
                (None, _) => "KSM saved nothing, no per-GiB figure".to_string(),
                (_, None) => format!("{c} saved nothing — **missed**"),
            };
            let _ = writeln!(
                m,
                "- agent CPU per GiB saved at most 1/100 of ksmd's: {line}"
            );
        }
    }
    let _ = writeln!(m, "\n![host memory over time](memory.png)\n");
    m
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
        if let Some(r) = config_result(&a.run, c, ideal) {
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
}
