//! What the host must provide before `vmdedup serve` creates or adopts
//! anything: namespace directories, users and groups, sockets that can be
//! bound, and memory on each pool's filesystem for its budget.
//!
//! [`check`] only looks: it creates, adopts, locks and deletes nothing (a
//! metrics port is bound and let go at once), so `vmdedup serve --check` may
//! run beside a running agent. Each problem is one line that names the key,
//! file or VM it is about; the caller prints them all at once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::config::{format_size, AgentConfig};
use crate::hostfile::{group_id, user_id};

/// What `serve` would use beyond the configuration.
#[derive(Clone, Debug, Default)]
pub struct ServeOptions {
    /// Size of each VM's ring region.
    pub ring_size: u64,
    /// The Prometheus endpoint, if any.
    pub metrics: Option<SocketAddr>,
    /// Where VMs' hybrid-vsock guest sockets go, if anywhere.
    pub guest_socket_dir: Option<PathBuf>,
}

/// The trust domains whose pools the agent opens at start: those of the
/// configured VMs, in order.
pub fn start_domains(cfg: &AgentConfig) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for v in &cfg.vms {
        if !out.contains(&v.domain) {
            out.push(v.domain.clone());
        }
    }
    out
}

/// The memory a domain's pool may come to hold: its budget (the whole pool
/// if none) and its table area, at most the pool.
fn pool_need(cfg: &AgentConfig, domain: &str) -> u64 {
    let size = cfg.domain_pool_size(domain);
    match cfg.domain_budget(domain) {
        0 => size,
        b => b.saturating_add(size / 32).min(size),
    }
}

/// The problems that stop `serve` from starting with `cfg` on this host,
/// one line each (empty: fit to serve).
pub fn check(cfg: &AgentConfig, opts: &ServeOptions) -> Vec<String> {
    let mut out = Vec::new();
    if !opts.ring_size.is_power_of_two() || opts.ring_size < 64 * 1024 {
        out.push(format!(
            "--ring-size {}: use a power of two of at least 64K",
            opts.ring_size
        ));
    }
    for ns in &cfg.namespaces {
        match std::fs::metadata(&ns.dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => out.push(format!(
                "namespace {:?}: {} is not a directory",
                ns.name,
                ns.dir.display()
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => out.push(format!(
                "namespace {:?}: directory {} does not exist",
                ns.name,
                ns.dir.display()
            )),
            Err(e) => out.push(format!(
                "namespace {:?}: cannot look at {} ({})",
                ns.name,
                ns.dir.display(),
                e.kind()
            )),
        }
    }
    if let Some(u) = &cfg.file_owner {
        if let Err(e) = user_id(u) {
            out.push(e.to_string());
        }
    }
    if let Some(g) = &cfg.file_group {
        if let Err(e) = group_id("file_group", g) {
            out.push(e.to_string());
        }
    }
    if let Some(g) = &cfg.control_group {
        if let Err(e) = group_id("control_group", g) {
            out.push(e.to_string());
        }
    }
    need_dir(&mut out, "ring_dir", &cfg.ring_dir);
    if let Some(d) = &opts.guest_socket_dir {
        need_dir(&mut out, "--guest-socket-dir", d);
    }
    socket_free(&mut out, "control_socket", &cfg.control_socket, true);
    for v in &cfg.vms {
        if let Some(p) = &v.guest_socket {
            socket_free(
                &mut out,
                &format!("[[vm]] {:?} guest_socket", v.name),
                p,
                false,
            );
        }
    }
    if let Some(addr) = opts.metrics {
        if !addr.ip().is_loopback() {
            out.push(format!(
                "--metrics {addr}: not a loopback address (the endpoint has no authentication)"
            ));
        } else if let Err(e) = std::net::TcpListener::bind(addr) {
            out.push(format!(
                "--metrics {addr}: cannot listen there ({})",
                e.kind()
            ));
        }
    }
    memory(&mut out, cfg, opts);
    out
}

/// `dir` (the value of `key`) must be an existing directory.
fn need_dir(out: &mut Vec<String>, key: &str, dir: &Path) {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => out.push(format!("{key} {}: not a directory", dir.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            out.push(format!("{key} {}: no such directory", dir.display()))
        }
        Err(e) => out.push(format!("{key} {}: {}", dir.display(), e.kind())),
    }
}

/// Whether a socket can be bound at `path` (the value of `key`): nothing but
/// a socket there, and a directory the agent may write (with
/// `create_parent`, the nearest existing ancestor, as `serve` creates the
/// rest).
fn socket_free(out: &mut Vec<String>, key: &str, path: &Path, create_parent: bool) {
    // A socket there is stale or another agent's: the agent's lock, taken
    // right after these checks, tells which (and names that agent).
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {}
        Ok(_) => out.push(format!(
            "{key} {}: something other than a socket is there; remove it",
            path.display()
        )),
        Err(_) => {}
    }
    let Some(mut dir) = path.parent().map(Path::to_path_buf) else {
        return;
    };
    if dir.as_os_str().is_empty() {
        dir = PathBuf::from(".");
    }
    if create_parent {
        while !dir.exists() {
            match dir.parent() {
                Some(p) if !p.as_os_str().is_empty() => dir = p.to_path_buf(),
                _ => return,
            }
        }
    }
    match std::fs::metadata(&dir) {
        Ok(m) if m.is_dir() => {
            if !writable(&dir) {
                out.push(format!(
                    "{key} {}: the agent may not create files in {}",
                    path.display(),
                    dir.display()
                ));
            }
        }
        Ok(_) => out.push(format!(
            "{key} {}: {} is not a directory",
            path.display(),
            dir.display()
        )),
        Err(_) => out.push(format!(
            "{key} {}: directory {} does not exist",
            path.display(),
            dir.display()
        )),
    }
}

fn writable(dir: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a NUL-terminated path; access(2) only reads it.
    unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}

/// Free bytes (for an unprivileged writer) on the filesystem of `dir`, and
/// its device number.
fn fs_free(dir: &Path) -> Option<(u64, u64)> {
    let dev = std::fs::metadata(dir).ok()?.dev();
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: an all-zero statvfs is a valid value to be overwritten.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `st` valid for writes.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some((dev, st.f_bavail as u64 * st.f_frsize as u64))
}

/// One filesystem's demand: what the agent's files there may come to hold.
#[derive(Default)]
struct Demand {
    dir: PathBuf,
    free: u64,
    need: u64,
    /// Memory the files to be adopted there hold already.
    held: u64,
    what: Vec<String>,
}

/// Each pool's filesystem (and the ring regions') has room for what the
/// files there may hold.
fn memory(out: &mut Vec<String>, cfg: &AgentConfig, opts: &ServeOptions) {
    let mut by_fs: BTreeMap<u64, Demand> = BTreeMap::new();
    let mut add = |out: &mut Vec<String>, file: &Path, need: u64, what: String, report_missing| {
        let dir = match file.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let Some((dev, free)) = fs_free(&dir) else {
            // A missing ring_dir is reported by itself.
            if report_missing {
                out.push(format!(
                    "{what}: directory {} does not exist",
                    dir.display()
                ));
            }
            return;
        };
        let d = by_fs.entry(dev).or_insert_with(|| Demand {
            dir: dir.clone(),
            free,
            ..Demand::default()
        });
        d.need = d.need.saturating_add(need);
        if let Ok(m) = std::fs::symlink_metadata(file) {
            if m.is_file() {
                d.held = d.held.saturating_add(m.blocks() * 512);
            }
        }
        d.what.push(what);
    };
    for domain in start_domains(cfg) {
        let path = cfg.pool_path(&domain);
        let what = format!("pool of domain {domain:?} ({})", path.display());
        add(out, &path, pool_need(cfg, &domain), what, true);
    }
    let mut seen = std::collections::BTreeSet::new();
    for v in cfg.vms.iter().filter(|v| seen.insert(v.name.as_str())) {
        add(
            out,
            &cfg.ring_path(&v.name),
            opts.ring_size,
            format!(
                "ring region of VM {:?} ({})",
                v.name,
                cfg.ring_path(&v.name).display()
            ),
            false,
        );
    }
    for d in by_fs.values() {
        let have = d.free.saturating_add(d.held);
        if d.need > have {
            out.push(format!(
                "{} {} up to {} on the filesystem of {}, which has {} free: lower budget or pool_size, or make that filesystem larger",
                d.what.join(", "),
                if d.what.len() == 1 { "needs" } else { "together need" },
                mib(d.need),
                d.dir.display(),
                mib(have)
            ));
        }
    }
}

/// Where the kernel keeps the transparent huge page settings.
const THP_DIR: &str = "/sys/kernel/mm/transparent_hugepage";

/// Advice on this host's transparent huge page settings, for the start-up
/// log: khugepaged refills the pages guests report free when it may fill
/// many empty pages of a 2 MiB region (docs/install.md). `None` when the
/// settings cannot be read or need nothing.
pub fn thp_note() -> Option<String> {
    let read = |f: &str| std::fs::read_to_string(Path::new(THP_DIR).join(f)).ok();
    thp_advice(&read("enabled")?, &read("khugepaged/max_ptes_none")?)
}

/// [`thp_note`] on the contents of `enabled` and `khugepaged/max_ptes_none`.
fn thp_advice(enabled: &str, max_ptes_none: &str) -> Option<String> {
    let mode = enabled
        .split_whitespace()
        .find(|w| w.starts_with('['))?
        .trim_matches(|c| c == '[' || c == ']');
    let n: u32 = max_ptes_none.trim().parse().ok()?;
    (mode != "never" && n > 64).then(|| {
        format!(
            "khugepaged may fill {n} empty pages to collapse 2 MiB of guest RAM (THP {mode}): \
             pages the guests reported free become resident again; \
             write 0 to {THP_DIR}/khugepaged/max_ptes_none (docs/install.md)"
        )
    })
}

fn mib(n: u64) -> String {
    format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64)
}

/// One line saying what `serve` would run: pools, sizes, VMs, namespaces.
pub fn summary(cfg: &AgentConfig) -> String {
    let pools: Vec<String> = start_domains(cfg)
        .iter()
        .map(|d| {
            let budget = match cfg.domain_budget(d) {
                0 => "all".to_string(),
                b => format_size(b),
            };
            format!(
                "{d} {} (budget {budget}) at {}",
                format_size(cfg.domain_pool_size(d)),
                cfg.pool_path(d).display()
            )
        })
        .collect();
    let ns: Vec<&str> = cfg.namespaces.iter().map(|n| n.name.as_str()).collect();
    format!(
        "{} pool(s): {}; {} VM(s); {} namespace(s): {}; control socket {}",
        pools.len(),
        if pools.is_empty() {
            "none until `vm add`".to_string()
        } else {
            pools.join(", ")
        },
        cfg.vms.len(),
        ns.len(),
        if ns.is_empty() {
            "none".to_string()
        } else {
            ns.join(", ")
        },
        cfg.control_socket.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thp_advice_only_when_khugepaged_may_refill_reported_pages() {
        let note = thp_advice("always [madvise] never\n", "511\n").unwrap();
        assert!(note.contains("fill 511 empty pages") && note.contains("THP madvise"));
        assert!(thp_advice("always madvise [never]\n", "511\n").is_none());
        assert!(thp_advice("[always] madvise never\n", "0\n").is_none());
        assert!(thp_advice("[always] madvise never\n", "64\n").is_none());
        assert!(thp_advice("garbage", "511").is_none());
        assert!(thp_advice("[always]", "lots").is_none());
    }
}
