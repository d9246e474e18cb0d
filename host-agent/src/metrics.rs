//! The agent's metrics for Prometheus, on a loopback-only HTTP endpoint
//! (`vmdedup serve --metrics 127.0.0.1:9464`). Every family is documented in
//! `docs/metrics.md`.
//!
//! The exposition is OpenMetrics 1.0 text when the scraper asks for it
//! (Prometheus does, in its `Accept` header), else the Prometheus text
//! format 0.0.4. Both come from the same [`Exposition`] writer, which
//! writes each family's header once and then all its samples, so families
//! never interleave. Per-VM series carry `vm` and `domain` labels and
//! per-pool ones `domain`; there are no separate total series (sum them).
//!
//! The counts come from guest behaviour, the names from the operator (and
//! are validated when a VM or domain is added); the output is bounded by
//! the status report's own bounds ([`MAX_VMS`], [`MAX_DOMAINS`]) and a
//! fixed number of families and buckets.

use std::fmt::{Display, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vmdedup_protocol::control::{RingReport, StatusReport, VmReport, MAX_DOMAINS, MAX_VMS};
use vmdedup_protocol::pool::FRAME_SIZE;

use crate::domain::Domains;
use crate::stats::{LatencyBuckets, EXPORTED_BOUNDS_US};

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// Only loopback addresses are allowed: the counters say what VMs read.
    #[error("{0}: the metrics endpoint binds to loopback addresses only (127.0.0.0/8 or ::1)")]
    NotLoopback(SocketAddr),
    /// Binding failed (shown as the OS error alone, once).
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The two text formats the endpoint speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 (`application/openmetrics-text; version=1.0.0`).
    OpenMetrics,
    /// The Prometheus text format 0.0.4 (`text/plain; version=0.0.4`).
    Text,
}

impl Format {
    /// The format a request's `Accept` header asks for (OpenMetrics if it
    /// names it at all: a scraper that names it parses it).
    pub fn from_request(head: &[u8]) -> Format {
        let head = String::from_utf8_lossy(head).to_ascii_lowercase();
        let accepts_om = head.lines().any(|l| {
            l.split_once(':').is_some_and(|(k, v)| {
                k.trim() == "accept" && v.contains("application/openmetrics-text")
            })
        });
        if accepts_om {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }

    /// The `Content-Type` of a response in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// The type of a metric family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Writes families one after the other: [`Exposition::family`] starts one
/// (its `# HELP`, `# TYPE` and, in OpenMetrics, `# UNIT` lines) and the
/// samples written until the next call belong to it.
struct Exposition {
    out: String,
    format: Format,
    /// The family being written: its name and type.
    current: Option<(&'static str, Kind)>,
}

/// A label value as both formats quote it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Exposition {
    fn new(format: Format) -> Self {
        Exposition {
            out: String::new(),
            format,
            current: None,
        }
    }

    /// Starts family `name` (for a counter: without `_total`; its samples
    /// are `name_total`). `unit`: the suffix the name ends with
    /// (`seconds`, `bytes`), if any.
    fn family(&mut self, name: &'static str, kind: Kind, unit: Option<&str>, help: &str) {
        debug_assert!(!name.ends_with("_total"));
        debug_assert!(unit.is_none_or(|u| name.ends_with(&format!("_{u}"))));
        // Prometheus 0.0.4 names a counter family by its sample name.
        let header = match (self.format, kind) {
            (Format::Text, Kind::Counter) => format!("{name}_total"),
            _ => name.to_string(),
        };
        let _ = writeln!(self.out, "# HELP {header} {help}");
        let _ = writeln!(self.out, "# TYPE {header} {}", kind.as_str());
        if let (Format::OpenMetrics, Some(u)) = (self.format, unit) {
            let _ = writeln!(self.out, "# UNIT {header} {u}");
        }
        self.current = Some((name, kind));
    }

    /// One sample of the current family: `suffix` is `_total` for a
    /// counter, `_bucket`/`_sum`/`_count` for a histogram, empty for a gauge.
    fn sample(&mut self, suffix: &str, labels: &[(&str, &str)], value: impl Display) {
        let Some((name, _)) = self.current else {
            return;
        };
        self.out.push_str(name);
        self.out.push_str(suffix);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    fn finish(mut self) -> String {
        if self.format == Format::OpenMetrics {
            self.out.push_str("# EOF\n");
        }
        self.out
    }
}

/// What [`render`] reports: the status and, per VM of `status.vms` (same
/// order, same length), its hint latency histogram; and each VM's ring
/// device with its wake-ups, by VM name.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The host's status report (every domain and VM).
    pub status: StatusReport,
    /// The hint latency of each VM of `status.vms`, in the same order.
    pub latency: Vec<LatencyBuckets>,
    /// Each VM's ring device and its wake-ups (doorbells, interrupts).
    pub rings: Vec<RingReport>,
}

/// Where the endpoint reads the rings' wake-ups from (the agent's
/// [`ring_reports`](crate::agent::Agent::ring_reports)).
pub type RingsSource = Arc<dyn Fn() -> Vec<RingReport> + Send + Sync>;

impl Snapshot {
    /// Reads the agent's state once, with its rings' wake-ups from `rings`.
    pub fn take_with_rings(domains: &Domains, rings: &RingsSource) -> Snapshot {
        let mut s = Snapshot::take(domains);
        s.rings = rings();
        s
    }

    /// Reads the agent's state once.
    pub fn take(domains: &Domains) -> Snapshot {
        let status = domains.status(None);
        let latency = status
            .vms
            .iter()
            .map(|v| {
                domains
                    .vm_id(v.name.as_str())
                    .map(|id| domains.stats().vm(id).latency().exported())
                    .unwrap_or_default()
            })
            .collect();
        Snapshot {
            status,
            latency,
            rings: Vec::new(),
        }
    }
}

/// Microseconds as seconds, exactly as a decimal.
fn seconds(us: u64) -> String {
    format!("{}.{:06}", us / 1_000_000, us % 1_000_000)
}

/// Build information: the crate version and the git commit built from.
pub const BUILD_VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit the agent was built from (`unknown` outside a checkout).
pub const BUILD_COMMIT: &str = env!("VMDEDUP_GIT_COMMIT");

/// Renders a snapshot in `format`.
pub fn render(snap: &Snapshot, format: Format) -> String {
    let r = &snap.status;
    let mut e = Exposition::new(format);
    e.family(
        "vmdedup_build_info",
        Kind::Gauge,
        None,
        "Always 1; the labels say which agent runs.",
    );
    e.sample(
        "",
        &[("version", BUILD_VERSION), ("git_commit", BUILD_COMMIT)],
        1,
    );

    // Per trust domain: its pool.
    type DomainGet = fn(&vmdedup_protocol::control::DomainReport) -> u64;
    let pools: [(&'static str, Option<&str>, &str, DomainGet); 6] = [
        (
            "vmdedup_pool_size_bytes",
            Some("bytes"),
            "Frame memory in the trust domain's pool.",
            |d| d.pool.frames_total.saturating_mul(FRAME_SIZE),
        ),
        (
            "vmdedup_pool_budget_bytes",
            Some("bytes"),
            "Frame memory the agent may use in the trust domain's pool.",
            |d| d.pool.frames_budget.saturating_mul(FRAME_SIZE),
        ),
        (
            "vmdedup_pool_used_bytes",
            Some("bytes"),
            "Frame memory holding file pages in the trust domain's pool.",
            |d| d.pool.frames_used.saturating_mul(FRAME_SIZE),
        ),
        (
            "vmdedup_pool_file_maps",
            None,
            "Files in the trust domain's pool (loading, live or being revoked).",
            |d| d.pool.file_maps,
        ),
        (
            "vmdedup_saved_bytes",
            Some("bytes"),
            "Memory saved in the trust domain: (pages its VMs map - frames used) * 4096, at least 0.",
            |d| d.pool.bytes_saved,
        ),
        (
            "vmdedup_pool_generation",
            None,
            "Generation of the trust domain's pool (changes when a new pool is made).",
            |d| d.pool.generation,
        ),
    ];
    for (name, unit, help, get) in pools {
        e.family(name, Kind::Gauge, unit, help);
        for d in r.domains.iter().take(MAX_DOMAINS) {
            e.sample("", &[("domain", d.name.as_str())], get(d));
        }
    }

    // Per VM.
    let vms: Vec<&VmReport> = r.vms.iter().take(MAX_VMS).collect();
    let labels = |v: &VmReport| [("vm", v.name.to_string()), ("domain", v.domain.to_string())];
    type VmGet = fn(&VmReport) -> u64;
    let counters: [(&'static str, &str, VmGet); 2] = [
        ("vmdedup_hints", "Hints answered.", |v| v.counters.hints),
        ("vmdedup_hits", "Hints answered from the pool.", |v| {
            v.counters.hits
        }),
    ];
    for (name, help, get) in counters {
        e.family(name, Kind::Counter, None, help);
        for v in &vms {
            let l = labels(v);
            e.sample("_total", &pairs(&l), get(v));
        }
    }
    e.family(
        "vmdedup_misses",
        Kind::Counter,
        None,
        "Hints not answered from the pool, by reason.",
    );
    for v in &vms {
        let l = labels(v);
        for (reason, n) in v.counters.misses.by_reason() {
            let mut p = pairs(&l).to_vec();
            p.push(("reason", reason.key()));
            e.sample("_total", &p, n);
        }
    }
    let gauges: [(&'static str, Option<&str>, &str, VmGet); 4] = [
        (
            "vmdedup_mapped_bytes",
            Some("bytes"),
            "File memory the VM maps from the pool (the pages of the file maps it holds).",
            |v| v.counters.pages_mapped.saturating_mul(FRAME_SIZE),
        ),
        (
            "vmdedup_maps_held",
            None,
            "File maps the VM holds.",
            |v| u64::from(v.maps_held),
        ),
        (
            "vmdedup_revocations_pending",
            None,
            "Revocations sent to the VM and not acknowledged yet.",
            |v| u64::from(v.revocations_pending),
        ),
        (
            "vmdedup_cut_off",
            None,
            "1 if the VM is cut off from the pool (it did not acknowledge a revocation in time), else 0.",
            |v| u64::from(v.cut_off),
        ),
    ];
    for (name, unit, help, get) in gauges {
        e.family(name, Kind::Gauge, unit, help);
        for v in &vms {
            let l = labels(v);
            e.sample("", &pairs(&l), get(v));
        }
    }
    // Per VM: its ring device's wake-ups.
    type RingGet = fn(&RingReport) -> u64;
    let ring_counters: [(&'static str, &str, RingGet); 2] = [
        (
            "vmdedup_ring_doorbells",
            "Doorbells the VM rang (a parked poller woken through ivshmem-doorbell).",
            |r| r.doorbells,
        ),
        (
            "vmdedup_ring_interrupts",
            "Interrupts the agent raised in the VM (it said it waited).",
            |r| r.interrupts,
        ),
    ];
    let ring_of = |v: &VmReport| snap.rings.iter().find(|r| r.name == v.name);
    for (name, help, get) in ring_counters {
        e.family(name, Kind::Counter, None, help);
        for v in &vms {
            let l = labels(v);
            e.sample("_total", &pairs(&l), ring_of(v).map(get).unwrap_or(0));
        }
    }
    e.family(
        "vmdedup_ring_doorbell_connected",
        Kind::Gauge,
        None,
        "1 if the VM's ring is an ivshmem-doorbell device whose QEMU is connected to the agent now, else 0 (ivshmem-plain, or not connected: polled on the park timeout).",
    );
    for v in &vms {
        let l = labels(v);
        let up = ring_of(v).is_some_and(|r| r.doorbell && r.connected);
        e.sample("", &pairs(&l), u64::from(up));
    }
    e.family(
        "vmdedup_hint_latency_seconds",
        Kind::Histogram,
        Some("seconds"),
        "Time the agent took to answer a hint.",
    );
    let none = LatencyBuckets::default();
    for (i, v) in vms.iter().enumerate() {
        let l = labels(v);
        let h = snap.latency.get(i).unwrap_or(&none);
        for (bound, below) in EXPORTED_BOUNDS_US.iter().zip(h.below) {
            let le = seconds(*bound);
            let mut p = pairs(&l).to_vec();
            p.push(("le", &le));
            e.sample("_bucket", &p, below);
        }
        let mut p = pairs(&l).to_vec();
        p.push(("le", "+Inf"));
        e.sample("_bucket", &p, h.count);
        e.sample("_sum", &pairs(&l), seconds(h.sum_us));
        e.sample("_count", &pairs(&l), h.count);
    }
    e.finish()
}

/// Borrows owned label pairs.
fn pairs<'a>(l: &'a [(&'a str, String); 2]) -> [(&'a str, &'a str); 2] {
    [(l[0].0, l[0].1.as_str()), (l[1].0, l[1].1.as_str())]
}

/// The endpoint is for the host only: refuse anything but loopback.
pub fn require_loopback(addr: SocketAddr) -> Result<(), MetricsError> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(MetricsError::NotLoopback(addr))
    }
}

/// Listens on `addr`, which must be a loopback address. The agent binds
/// before it reports itself started, so that a port it cannot have is an
/// error at start, not a line in the log.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, MetricsError> {
    require_loopback(addr)?;
    Ok(tokio::net::TcpListener::bind(addr).await?)
}

/// Serves `GET /metrics` (any path, in fact) on `listener` until the task
/// is dropped.
pub async fn serve(listener: tokio::net::TcpListener, domains: Domains, rings: RingsSource) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "metrics endpoint ready");
    }
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let svc = domains.clone();
        let rings = Arc::clone(&rings);
        tokio::spawn(async move {
            // Read the request head (for its Accept header), bounded in
            // size and time; what is left unread when the connection
            // closes would make the kernel reset it before the client has
            // read the answer.
            let mut buf = [0u8; 4096];
            let mut n = 0;
            let head = async {
                while n < buf.len() && !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf[n..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => n += k,
                    }
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(2), head).await;
            let format = Format::from_request(&buf[..n]);
            let body = match tokio::task::spawn_blocking(move || {
                render(&Snapshot::take_with_rings(&svc, &rings), format)
            })
            .await
            {
                Ok(b) => b,
                Err(_) => return,
            };
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                format.content_type(),
                body.len()
            );
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(body.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmdedup_protocol::control::{bounded_str, DomainReport, PoolFigures};

    fn snapshot() -> Snapshot {
        let mut r = StatusReport::default();
        for (name, generation) in [("default", 7), ("tenant-a", 9)] {
            r.domains
                .push(DomainReport {
                    name: bounded_str(name),
                    pool: PoolFigures {
                        generation,
                        frames_total: 100,
                        frames_used: 10,
                        bytes_saved: 8192,
                        ..PoolFigures::default()
                    },
                    ..DomainReport::default()
                })
                .unwrap();
        }
        let mut latency = Vec::new();
        for (name, domain) in [("vm\"1", "default"), ("vm2", "tenant-a")] {
            let mut vm = VmReport {
                name: bounded_str(name),
                domain: bounded_str(domain),
                cut_off: name == "vm2",
                maps_held: 2,
                ..VmReport::default()
            };
            vm.counters.hints = 5;
            vm.counters.hits = 3;
            vm.counters.misses.loading = 2;
            r.vms.push(vm).unwrap();
            let h = crate::stats::LatencyHistogram::default();
            for us in [3, 50, 70, 5000, 5000] {
                h.record(us);
            }
            latency.push(h.exported());
        }
        let rings = vec![RingReport {
            name: bounded_str("vm2"),
            doorbell: true,
            connected: true,
            guest_rings: true,
            doorbells: 4,
            interrupts: 1,
        }];
        Snapshot {
            status: r,
            latency,
            rings,
        }
    }

    /// The family each sample line belongs to, in order; every family's
    /// header once, and its samples right after it.
    fn families(text: &str, format: Format) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(seen.insert(name.to_string()), "{name} declared twice");
                out.push((name.to_string(), kind.to_string()));
            } else if !line.starts_with('#') {
                let sample = line.split(['{', ' ']).next().unwrap();
                let (family, kind) = out.last().expect("a sample before any TYPE");
                let ok = match (kind.as_str(), format) {
                    ("counter", Format::OpenMetrics) => sample == format!("{family}_total"),
                    ("histogram", _) => ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|s| sample == format!("{family}{s}")),
                    _ => sample == family,
                };
                assert!(ok, "{sample} under family {family} ({kind})");
            }
        }
        out
    }

    #[test]
    fn families_are_grouped_typed_and_named_by_convention() {
        for format in [Format::OpenMetrics, Format::Text] {
            let text = render(&snapshot(), format);
            let fams = families(&text, format);
            for (name, kind) in &fams {
                assert!(name.starts_with("vmdedup_"), "{name}");
                match (kind.as_str(), format) {
                    ("counter", Format::Text) => assert!(name.ends_with("_total"), "{name}"),
                    _ => assert!(!name.ends_with("_total"), "{name} ({kind})"),
                }
                assert!(!name.ends_with("_us"), "{name}");
            }
            assert!(
                text.contains("\nvmdedup_hits_total{vm=\"vm\\\"1\",domain=\"default\"} 3\n"),
                "{text}"
            );
            assert!(text.contains(
                "\nvmdedup_misses_total{vm=\"vm2\",domain=\"tenant-a\",reason=\"loading\"} 2\n"
            ));
            assert!(text.contains("\nvmdedup_cut_off{vm=\"vm2\",domain=\"tenant-a\"} 1\n"));
            assert!(
                text.contains("\nvmdedup_ring_doorbells_total{vm=\"vm2\",domain=\"tenant-a\"} 4\n")
            );
            assert!(text.contains(
                "\nvmdedup_ring_interrupts_total{vm=\"vm\\\"1\",domain=\"default\"} 0\n"
            ));
            assert!(text
                .contains("\nvmdedup_ring_doorbell_connected{vm=\"vm2\",domain=\"tenant-a\"} 1\n"));
            assert!(text.contains("\nvmdedup_pool_generation{domain=\"tenant-a\"} 9\n"));
            assert!(text.contains("\nvmdedup_pool_used_bytes{domain=\"default\"} 40960\n"));
            // The histogram: 3 µs is below 4 µs, 50 and 70 below 128 µs,
            // the two 5 ms ones below 8.192 ms.
            for (le, n) in [
                ("0.000004", 1),
                ("0.000064", 2),
                ("0.000128", 3),
                ("0.008192", 5),
            ] {
                let line = format!(
                    "\nvmdedup_hint_latency_seconds_bucket{{vm=\"vm2\",domain=\"tenant-a\",le=\"{le}\"}} {n}\n"
                );
                assert!(text.contains(&line), "{line} in {text}");
            }
            assert!(text.contains(
                "\nvmdedup_hint_latency_seconds_count{vm=\"vm2\",domain=\"tenant-a\"} 5\n"
            ));
            assert!(text.contains(
                "\nvmdedup_hint_latency_seconds_sum{vm=\"vm2\",domain=\"tenant-a\"} 0.010123\n"
            ));
            assert!(text.contains("vmdedup_build_info{version=\""));
            assert_eq!(text.ends_with("# EOF\n"), format == Format::OpenMetrics);
            // No totals beside the labelled series.
            assert!(!text.lines().any(|l| l.starts_with("vmdedup_hints_total ")));
        }
    }

    #[test]
    fn an_empty_agent_still_renders_every_family() {
        let text = render(&Snapshot::default(), Format::OpenMetrics);
        assert_eq!(families(&text, Format::OpenMetrics).len(), 18, "{text}");
    }

    #[test]
    fn the_accept_header_picks_the_format() {
        let om = b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n\r\n";
        assert_eq!(Format::from_request(om), Format::OpenMetrics);
        let plain = b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n";
        assert_eq!(Format::from_request(plain), Format::Text);
        assert_eq!(Format::from_request(b"\xff\xfe"), Format::Text);
    }

    #[test]
    fn refuses_non_loopback() {
        for bad in [
            "0.0.0.0:9464",
            "192.168.1.1:9464",
            "[::]:9464",
            "10.0.0.1:1",
        ] {
            assert!(
                matches!(
                    require_loopback(bad.parse().unwrap()),
                    Err(MetricsError::NotLoopback(_))
                ),
                "{bad}"
            );
        }
        for good in ["127.0.0.1:9464", "127.1.2.3:1", "[::1]:9464"] {
            assert!(require_loopback(good.parse().unwrap()).is_ok(), "{good}");
        }
    }
}
