//! Writing an [`AgentConfig`] as TOML that [`AgentConfig::from_toml`] reads
//! back as the same configuration.
//!
//! The schema is small and flat, so it is written directly rather than
//! through a serializer: every key is written (defaults included, so the file
//! says what the agent will do), strings are TOML basic strings with every
//! character TOML requires escaped, and sizes use the largest exact binary
//! unit ([`format_size`]), which [`parse_size`](super::parse_size) reads.

use std::fmt::Write as _;
use std::path::Path;

use super::{AgentConfig, ConfigError};

/// Writes `n` bytes with the largest binary unit that divides it exactly
/// (`1G`, `64K`, `4097`), as [`parse_size`](super::parse_size) reads it.
pub fn format_size(n: u64) -> String {
    for (suffix, shift) in [('T', 40), ('G', 30), ('M', 20), ('K', 10)] {
        if n != 0 && n.trailing_zeros() >= shift {
            return format!("{}{suffix}", n >> shift);
        }
    }
    n.to_string()
}

/// `s` as a TOML basic string (quotes included).
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            // TOML allows no other control character in a basic string.
            c if c.is_control() && (c as u32) < 0x80 => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A path as a TOML string; TOML strings are Unicode, so a path that is not
/// valid UTF-8 cannot be written.
fn path(key: &str, p: &Path) -> Result<String, ConfigError> {
    p.to_str().map(quoted).ok_or_else(|| {
        ConfigError::Invalid(format!(
            "{key} {p:?} is not valid UTF-8: a TOML configuration cannot name it"
        ))
    })
}

/// A non-negative integer as TOML (whose integers are `i64`).
fn int(key: &str, v: u64) -> Result<String, ConfigError> {
    i64::try_from(v)
        .map(|v| v.to_string())
        .map_err(|_| ConfigError::Invalid(format!("{key} = {v} is too large for TOML")))
}

impl AgentConfig {
    /// The configuration as TOML: [`from_toml`](Self::from_toml) of the
    /// result is `self`. Fails for values TOML cannot carry (a path that is
    /// not UTF-8, an integer above `i64::MAX`) and for a configuration that
    /// [`validate`](Self::validate) refuses.
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        self.validate()?;
        let mut t = String::new();
        // `writeln!` into a String cannot fail.
        let _ = writeln!(t, "pool = {}", path("pool", &self.pool)?);
        let _ = writeln!(t, "pool_size = {}", quoted(&format_size(self.pool_size)));
        if self.budget != 0 {
            let _ = writeln!(t, "budget = {}", quoted(&format_size(self.budget)));
        }
        let _ = writeln!(
            t,
            "ack_timeout_ms = {}",
            int("ack_timeout_ms", self.ack_timeout_ms)?
        );
        if self.vm_max_held != 0 {
            let _ = writeln!(
                t,
                "vm_max_held = {}",
                quoted(&format_size(self.vm_max_held))
            );
        }
        let _ = writeln!(t, "workers = {}", int("workers", self.workers as u64)?);
        let _ = writeln!(
            t,
            "control_socket = {}",
            path("control_socket", &self.control_socket)?
        );
        if let Some(g) = &self.control_group {
            let _ = writeln!(t, "control_group = {}", quoted(g));
        }
        let _ = writeln!(t, "ring_dir = {}", path("ring_dir", &self.ring_dir)?);
        let _ = writeln!(t, "doorbell = {}", self.doorbell);
        if let Some(u) = &self.file_owner {
            let _ = writeln!(t, "file_owner = {}", quoted(u));
        }
        if let Some(g) = &self.file_group {
            let _ = writeln!(t, "file_group = {}", quoted(g));
        }
        let l = &self.service;
        let _ = writeln!(t, "\n[service]");
        for (key, v) in [
            ("path_cache_entries", l.path_cache_entries),
            ("path_cache_idle_ms", l.path_cache_idle_ms),
            ("vm_max_loads", l.vm_max_loads),
            ("vm_load_backlog", l.vm_load_backlog),
            ("warm_max_files", l.warm_max_files),
            ("recheck_ms", l.recheck_ms),
        ] {
            let _ = writeln!(t, "{key} = {}", int(key, v)?);
        }
        let _ = writeln!(
            t,
            "path_cache_size = {}",
            quoted(&format_size(l.path_cache_size))
        );
        for (name, d) in &self.domains {
            let _ = writeln!(t, "\n[domain.{}]", quoted(name));
            if let Some(v) = d.pool_size {
                let _ = writeln!(t, "pool_size = {}", quoted(&format_size(v)));
            }
            if let Some(v) = d.budget {
                let _ = writeln!(t, "budget = {}", quoted(&format_size(v)));
            }
        }
        for n in &self.namespaces {
            let domains: Vec<String> = n.domains.iter().map(|d| quoted(d)).collect();
            let _ = writeln!(t, "\n[[namespace]]");
            let _ = writeln!(t, "name = {}", quoted(&n.name));
            let _ = writeln!(t, "id = {}", n.id);
            let _ = writeln!(t, "dir = {}", path("dir", &n.dir)?);
            let _ = writeln!(t, "domains = [{}]", domains.join(", "));
            let _ = writeln!(
                t,
                "mtime_granularity_ns = {}",
                int("mtime_granularity_ns", n.mtime_granularity_ns)?
            );
            if n.require_fingerprint {
                let _ = writeln!(t, "require_fingerprint = true");
            }
            if n.warm_at_start {
                let _ = writeln!(t, "warm_at_start = true");
            }
            if n.always_loading {
                let _ = writeln!(t, "always_loading = true");
            }
        }
        for v in &self.vms {
            let _ = writeln!(t, "\n[[vm]]");
            let _ = writeln!(t, "name = {}", quoted(&v.name));
            let _ = writeln!(t, "domain = {}", quoted(&v.domain));
            if let Some(p) = &v.guest_socket {
                let _ = writeln!(t, "guest_socket = {}", path("guest_socket", p)?);
            }
            if let Some(cid) = v.cid {
                let _ = writeln!(t, "cid = {cid}");
            }
            if let Some(n) = v.max_held {
                let _ = writeln!(t, "max_held = {}", quoted(&format_size(n)));
            }
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use proptest::prelude::*;

    use super::super::{parse_size, ServiceLimits, VmConfig};
    use super::*;
    use crate::namespace::NamespaceConfig;

    #[test]
    fn sizes_use_the_largest_exact_unit() {
        for (n, s) in [
            (0, "0"),
            (4097, "4097"),
            (64 << 10, "64K"),
            (3 << 20, "3M"),
            (1 << 30, "1G"),
            (1536 << 20, "1536M"),
            (2 << 40, "2T"),
            (u64::MAX, "18446744073709551615"),
        ] {
            assert_eq!(format_size(n), s);
            assert_eq!(parse_size(s).unwrap(), n);
        }
    }

    #[test]
    fn what_toml_cannot_carry_is_an_error() {
        use std::os::unix::ffi::OsStrExt;
        let mut c = AgentConfig {
            pool: PathBuf::from(std::ffi::OsStr::from_bytes(b"/dev/shm/\xff")),
            ..AgentConfig::default()
        };
        let e = c.to_toml().unwrap_err().to_string();
        assert!(e.contains("pool") && e.contains("UTF-8"), "{e}");
        c.pool = AgentConfig::default().pool;
        c.ack_timeout_ms = u64::MAX;
        assert!(c.to_toml().unwrap_err().to_string().contains("too large"));
        c.ack_timeout_ms = 1;
        c.pool_size = 3 << 20;
        assert!(
            c.to_toml().is_err(),
            "an invalid configuration is not written"
        );
    }

    #[test]
    fn the_documented_example_round_trips() {
        let mut c = AgentConfig::default();
        c.add_ns_arg("debian12=/srv/images/debian12").unwrap();
        c.set_ns_domains_arg("debian12=tenant-a,*").unwrap();
        c.set_ns_mtime_granularity_arg("debian12=1000000000")
            .unwrap();
        c.set_ns_warm_at_start_arg("debian12").unwrap();
        c.set_ns_always_loading_arg("debian12").unwrap();
        c.add_vm_arg("vm1:tenant-a").unwrap();
        c.add_vm_arg("vm2").unwrap();
        c.budget = 512 << 20;
        c.control_group = Some("kvm".into());
        c.file_owner = Some("libvirt-qemu".into());
        c.file_group = Some("kvm".into());
        c.vms[0].guest_socket = Some("/run/vmdedup/vm1.vsock_5555".into());
        c.vms[0].cid = Some(3);
        c.add_ns_arg("odd=/srv/x").unwrap();
        c.namespaces[1].dir = "/srv/\"odd\" \\dir\u{1}\u{7f}\t\né".into();
        let text = c.to_toml().unwrap();
        assert!(text.contains("pool_size = \"1G\""), "{text}");
        assert!(text.contains("domains = [\"tenant-a\", \"*\"]"), "{text}");
        assert!(text.contains("warm_at_start = true"), "{text}");
        assert!(text.contains("always_loading = true"), "{text}");
        assert_eq!(AgentConfig::from_toml(&text).unwrap(), c);
    }

    fn name() -> impl Strategy<Value = String> {
        "[A-Za-z0-9_.-]{1,32}".prop_filter("valid", |n| crate::namespace::valid_name(n))
    }

    /// Any Unicode text but NUL (which no path holds).
    fn text() -> impl Strategy<Value = String> {
        "[^\u{0}]{0,40}"
    }

    fn namespace() -> impl Strategy<Value = NamespaceConfig> {
        (
            name(),
            any::<u32>(),
            text(),
            prop::collection::vec(text(), 0..4),
            0..=i64::MAX as u64,
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(
                |(name, id, dir, domains, gran, fp, warm, always)| NamespaceConfig {
                    name,
                    id,
                    dir: dir.into(),
                    domains,
                    mtime_granularity_ns: gran,
                    require_fingerprint: fp,
                    warm_at_start: warm,
                    always_loading: always,
                },
            )
    }

    fn vm() -> impl Strategy<Value = VmConfig> {
        (
            name(),
            name(),
            prop::option::of(text()),
            prop::option::of(any::<u32>()),
            prop::option::of(any::<u64>()),
        )
            .prop_map(|(name, domain, sock, cid, max_held)| VmConfig {
                name,
                domain,
                guest_socket: sock.map(PathBuf::from),
                cid,
                max_held,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever valid configuration is written, it is read back the same.
        #[test]
        fn written_configs_read_back_the_same(
            pool in text(),
            pool_shift in 16u32..50,
            budget in any::<u64>(),
            ack in 0..=i64::MAX as u64,
            vm_max_held in any::<u64>(),
            workers in 1usize..64,
            control in text(),
            group in prop::option::of(text()),
            ring_dir in text(),
            doorbell in any::<bool>(),
            files in (prop::option::of(text()), prop::option::of(text())),
            limits in (1..=i64::MAX as u64, 4096..=i64::MAX as u64, 0..=i64::MAX as u64,
                       1..=i64::MAX as u64, 1..=i64::MAX as u64, 0..=i64::MAX as u64,
                       0..=i64::MAX as u64),
            namespaces in prop::collection::vec(namespace(), 0..4),
            vms in prop::collection::vec(vm(), 0..4),
            domains in prop::collection::btree_map(
                "[A-Za-z0-9_.-]{1,32}",
                (prop::option::of(16u32..40), prop::option::of(0u64..(1 << 16))),
                0..3,
            ),
        ) {
            let c = AgentConfig {
                pool: pool.into(),
                pool_size: 1 << pool_shift,
                // At most the pool (a budget above it is refused).
                budget: budget % ((1u64 << pool_shift) + 1),
                ack_timeout_ms: ack,
                vm_max_held,
                workers,
                control_socket: control.into(),
                control_group: group,
                ring_dir: ring_dir.into(),
                doorbell,
                file_owner: files.0,
                file_group: files.1,
                service: ServiceLimits {
                    path_cache_entries: limits.0,
                    path_cache_size: limits.1,
                    path_cache_idle_ms: limits.2,
                    vm_max_loads: limits.3,
                    warm_max_files: limits.4,
                    recheck_ms: limits.5,
                    vm_load_backlog: limits.6,
                },
                domains: domains
                    .into_iter()
                    .map(|(n, (shift, budget))| {
                        (n, crate::config::DomainConfig { pool_size: shift.map(|s| 1u64 << s), budget })
                    })
                    .collect(),
                namespaces,
                vms,
            };
            // Duplicate names or ids are refused on both sides.
            prop_assume!(c.validate().is_ok());
            let text = c.to_toml().unwrap();
            prop_assert_eq!(AgentConfig::from_toml(&text).unwrap(), c);
        }
    }
}
