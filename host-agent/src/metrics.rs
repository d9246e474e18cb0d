//! Prometheus text exposition of the agent's counters, on a loopback-only
//! HTTP endpoint (`vmdedup serve --metrics 127.0.0.1:9464`).

use std::fmt::Write;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vmdedup_protocol::control::{DomainReport, HintCounters, StatusReport};

use crate::domain::Domains;

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// Only loopback addresses are allowed: the counters say what VMs read.
    #[error("{0}: the metrics endpoint binds to loopback addresses only (127.0.0.0/8 or ::1)")]
    NotLoopback(SocketAddr),
    /// Binding failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn counters(out: &mut String, labels: &str, c: &HintCounters) {
    let sep = if labels.is_empty() { "" } else { "," };
    let _ = writeln!(out, "vmdedup_hints_total{{{labels}}} {}", c.hints);
    let _ = writeln!(out, "vmdedup_hits_total{{{labels}}} {}", c.hits);
    let _ = writeln!(out, "vmdedup_pages_mapped{{{labels}}} {}", c.pages_mapped);
    let m = &c.misses;
    for (reason, n) in [
        ("identity_mismatch", m.identity_mismatch),
        ("not_found", m.not_found),
        ("not_regular", m.not_regular),
        ("bad_path", m.bad_path),
        ("no_namespace", m.no_namespace),
        ("loading", m.loading),
        ("pool_full", m.pool_full),
        ("too_large", m.too_large),
        ("cut_off", m.cut_off),
        ("io_error", m.io_error),
        ("over_quota", m.over_quota),
    ] {
        let _ = writeln!(
            out,
            "vmdedup_misses_total{{{labels}{sep}reason=\"{reason}\"}} {n}"
        );
    }
    let _ = writeln!(
        out,
        "vmdedup_hint_latency_us{{{labels}{sep}quantile=\"0.5\"}} {}",
        c.hint_latency_us_p50
    );
    let _ = writeln!(
        out,
        "vmdedup_hint_latency_us{{{labels}{sep}quantile=\"0.99\"}} {}",
        c.hint_latency_us_p99
    );
}

/// Renders a status report in the Prometheus text format (version 0.0.4).
pub fn render(r: &StatusReport) -> String {
    let mut out = String::new();
    for (name, help, kind, v) in [
        (
            "vmdedup_frames_total",
            "Frames in the pool.",
            "gauge",
            r.frames_total,
        ),
        (
            "vmdedup_frames_budget",
            "Frames the agent may use.",
            "gauge",
            r.frames_budget,
        ),
        (
            "vmdedup_frames_used",
            "Frames holding file pages.",
            "gauge",
            r.frames_used,
        ),
        (
            "vmdedup_file_maps",
            "Files in the pool.",
            "gauge",
            r.file_maps,
        ),
        (
            "vmdedup_bytes_saved",
            "(pages mapped by VMs - frames used) * 4096, at least 0.",
            "gauge",
            r.bytes_saved,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
        );
    }
    for (name, help, get) in [
        (
            "vmdedup_domain_frames_total",
            "Frames in the trust domain's pool.",
            (|d| d.frames_total) as fn(&DomainReport) -> u64,
        ),
        (
            "vmdedup_domain_frames_budget",
            "Frames the agent may use in the trust domain's pool.",
            |d| d.frames_budget,
        ),
        (
            "vmdedup_domain_frames_used",
            "Frames holding file pages in the trust domain's pool.",
            |d| d.frames_used,
        ),
        (
            "vmdedup_domain_file_maps",
            "Files in the trust domain's pool.",
            |d| d.file_maps,
        ),
        (
            "vmdedup_domain_bytes_saved",
            "Bytes saved within the trust domain.",
            |d| d.bytes_saved,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for d in &r.domains {
            let _ = writeln!(
                out,
                "{name}{{domain=\"{}\"}} {}",
                escape(d.name.as_str()),
                get(d)
            );
        }
    }
    for (name, help, kind) in [
        ("vmdedup_hints_total", "Hints answered.", "counter"),
        (
            "vmdedup_hits_total",
            "Hints answered from the pool.",
            "counter",
        ),
        (
            "vmdedup_pages_mapped",
            "File pages served from the pool.",
            "gauge",
        ),
        (
            "vmdedup_misses_total",
            "Hints not served, by reason.",
            "counter",
        ),
        (
            "vmdedup_hint_latency_us",
            "Hint latency quantiles in microseconds.",
            "gauge",
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }
    counters(&mut out, "", &r.counters);
    for v in &r.vms {
        counters(
            &mut out,
            &format!("vm=\"{}\"", escape(v.name.as_str())),
            &v.counters,
        );
    }
    out
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
pub async fn serve(listener: tokio::net::TcpListener, domains: Domains) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "metrics endpoint ready");
    }
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let svc = domains.clone();
        tokio::spawn(async move {
            // Read (and ignore) the request head, bounded in size and time.
            let mut buf = [0u8; 2048];
            let _ = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await;
            let body = match tokio::task::spawn_blocking(move || render(&svc.status(None))).await {
                Ok(b) => b,
                Err(_) => return,
            };
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
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
    use vmdedup_protocol::control::{bounded_str, VmReport};

    #[test]
    fn renders_pool_and_per_vm_counters() {
        let mut r = StatusReport {
            frames_total: 100,
            frames_used: 10,
            bytes_saved: 8192,
            ..StatusReport::default()
        };
        r.counters.hints = 5;
        r.counters.misses.loading = 2;
        let mut vm = VmReport {
            name: bounded_str("vm\"1"),
            ..VmReport::default()
        };
        vm.counters.hits = 3;
        r.vms.push(vm).unwrap();
        let text = render(&r);
        assert!(text.contains("\nvmdedup_frames_used 10\n"));
        assert!(text.contains("\nvmdedup_bytes_saved 8192\n"));
        assert!(text.contains("\nvmdedup_hints_total{} 5\n"));
        assert!(text.contains("\nvmdedup_misses_total{reason=\"loading\"} 2\n"));
        assert!(
            text.contains("\nvmdedup_hits_total{vm=\"vm\\\"1\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE vmdedup_hints_total counter"));
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
