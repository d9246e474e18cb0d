//! Agent configuration: namespaces, trust domains, VMs, pool and control
//! settings, from a TOML file and/or command-line arguments, and the QEMU
//! arguments that attach a VM to the agent.
//!
//! [`AgentConfig::to_toml`] writes a configuration back as TOML that
//! [`AgentConfig::from_toml`] reads as the same configuration (`vmdedup
//! config new` uses it, so scripts need not write TOML by hand).
//!
//! ```toml
//! pool = "/dev/shm/vmdedup.pool"     # pool memory file (hugetlbfs path works too)
//! pool_size = "1G"                   # power of two
//! budget = "512M"                    # most memory used by frames (default: all)
//! ack_timeout_ms = 5000              # revocation acknowledgement deadline
//! vm_max_held = "256M"               # most pool memory one VM may hold (default 0: no limit)
//! workers = 2                        # loader threads
//! control_socket = "/run/vmdedup/control.sock"
//! control_group = "kvm"              # may use the control socket (mode 0660)
//! ring_dir = "/dev/shm"              # where `vm add` creates ring regions
//! doorbell = true                    # true: rings are ivshmem-doorbell devices whose
//!                                    # ivshmem server is the agent (a socket per VM
//!                                    # in ring_dir); false: ivshmem-plain, polled
//! file_owner = "libvirt-qemu"        # pools, rings and guest sockets are chowned
//! file_group = "kvm"                 # to these and 0660, pools 0640 (default: 0600)
//!
//! [service]                          # bounds on what guests make the agent keep
//! path_cache_entries = 65536         # paths remembered (least recently used go first)
//! path_cache_size = "16M"            # bytes of paths remembered (+192 per entry)
//! path_cache_idle_ms = 600000        # a path not hinted for this long is forgotten
//! vm_max_loads = 16                  # loads one VM may have queued and running
//! vm_load_backlog = 0                # paths waiting behind those, queued as they end
//! warm_max_files = 4096              # files one `warm` of a guest loads at most
//! recheck_ms = 1000                  # how often a path is re-resolved for a guest
//!                                    # whose copy differs from the cached version
//!
//! [[namespace]]
//! name = "debian12"
//! id = 1                             # what hints carry; default: position (1-based)
//! dir = "/srv/images/debian12"
//! domains = ["tenant-a"]             # default ["default"]; "*" = every VM
//! mtime_granularity_ns = 1           # 1_000_000_000 if the guest keeps seconds only
//! require_fingerprint = false        # true: hints without a content fingerprint miss
//! warm_at_start = false              # true: load the whole tree before serving, so
//!                                    # every answer for it is a hit
//! always_loading = false             # true: a VM's first hint for a file is "loading"
//!                                    # even when the file is loaded (its next one hits)
//!
//! [domain.tenant-a]                 # per trust domain; every key optional
//! pool_size = "256M"                 # this domain's pool (default: pool_size)
//! budget = "128M"                    # this domain's budget (default: budget)
//!
//! [[vm]]
//! name = "vm1"
//! domain = "tenant-a"                # default "default"
//! guest_socket = "/run/vmdedup/vm1.vsock_5555"   # hybrid vsock listener for this VM
//! cid = 3                            # AF_VSOCK CID (hosts with vhost-vsock)
//! max_held = "64M"                   # this VM's own vm_max_held (0: no limit)
//! ```
//!
//! Each trust domain has a pool of its own: the memory file `pool` for the
//! domain `default`, and `pool` with `.DOMAIN` appended for any other (see
//! [`domain_pool_path`]). A VM attaches only its own domain's pool; files
//! and identical pages are shared within a domain, never across.
//!
//! `vm_max_held` bounds what one VM may hold of the pool: the pages of the
//! file maps it was answered with and did not release yet (each map once).
//! A hint that would exceed it is a miss (`over_quota`, retried by the
//! guest); a file larger than the quota by itself is a `too_large` miss.
//! The default is no limit, which suits a host whose VMs are one tenant; with
//! several tenants set it so that the VMs' quotas add up to about the
//! budget, so that no VM can keep the pool full for the others (under
//! pressure a VM's loads may revoke only its own maps).
//!
//! `warm_at_start` and `always_loading` close, within a trust domain, the
//! channel of the first open: without them, whether a VM's first hint for a
//! file hits or is answered "loading" tells it whether another VM of its
//! domain loaded that file (see `docs/threat-model.md`). With
//! `warm_at_start` the agent loads the namespace before it opens its
//! control socket (what does not fit is logged and left out); with
//! `always_loading` every VM is told "loading" once per file version
//! whatever the pool holds, at the cost of one more round trip per file.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::namespace::{valid_name, NamespaceConfig, DEFAULT_DOMAIN};

mod write;

pub use write::format_size;

/// Configuration errors.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read {path}: {cause}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("{0}")]
    Parse(String),
    /// A value is not acceptable.
    #[error("{0}")]
    Invalid(String),
}

/// One VM in the configuration.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Name.
    pub name: String,
    /// Trust domain.
    #[serde(default = "default_domain")]
    pub domain: String,
    /// Unix socket on which this VM's guest tools reach the agent (hybrid vsock).
    #[serde(default)]
    pub guest_socket: Option<PathBuf>,
    /// AF_VSOCK context id.
    #[serde(default)]
    pub cid: Option<u32>,
    /// Its own limit on the pool memory it may hold, in bytes (0: no limit;
    /// `None`: [`AgentConfig::vm_max_held`]).
    #[serde(default, deserialize_with = "de_opt_size")]
    pub max_held: Option<u64>,
}

/// A size as [`parse_size`] reads it, in a TOML string (or a plain integer).
fn de_opt_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Text(String),
        Bytes(u64),
    }
    match Size::deserialize(d)? {
        Size::Text(s) => parse_size(&s)
            .map(Some)
            .map_err(|e| serde::de::Error::custom(e.to_string())),
        Size::Bytes(n) => Ok(Some(n)),
    }
}

fn default_domain() -> String {
    DEFAULT_DOMAIN.to_string()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNamespace {
    name: String,
    id: Option<u32>,
    dir: PathBuf,
    #[serde(default)]
    domains: Option<Vec<String>>,
    #[serde(default)]
    mtime_granularity_ns: Option<u64>,
    #[serde(default)]
    require_fingerprint: bool,
    #[serde(default)]
    warm_at_start: bool,
    #[serde(default)]
    always_loading: bool,
}

/// Bounds of the hint service on what guests make the agent keep and do
/// (the `[service]` table; see [`crate::service::ServiceConfig`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceLimits {
    /// Most path cache entries.
    pub path_cache_entries: u64,
    /// Most path cache bytes.
    pub path_cache_size: u64,
    /// A path cache entry not used for this long is dropped (0: never).
    pub path_cache_idle_ms: u64,
    /// Most loads one VM may have queued and running.
    pub vm_max_loads: u64,
    /// Most paths waiting in one VM's backlog behind those.
    pub vm_load_backlog: u64,
    /// Most files one `warm` of a guest loads.
    pub warm_max_files: u64,
    /// Least time between two re-resolutions of a path for guests whose
    /// copy differs from the cached version.
    pub recheck_ms: u64,
}

impl Default for ServiceLimits {
    fn default() -> Self {
        let d = crate::service::ServiceConfig::default();
        ServiceLimits {
            path_cache_entries: d.cache.entries as u64,
            path_cache_size: d.cache.bytes as u64,
            path_cache_idle_ms: d.cache.idle_ms,
            vm_max_loads: d.vm_max_loads as u64,
            vm_load_backlog: d.vm_load_backlog as u64,
            warm_max_files: d.warm_max_files as u64,
            recheck_ms: d.recheck_ms,
        }
    }
}

impl ServiceLimits {
    /// Sets these bounds in a service configuration.
    pub fn apply(&self, c: &mut crate::service::ServiceConfig) {
        let us = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        c.cache.entries = us(self.path_cache_entries);
        c.cache.bytes = us(self.path_cache_size);
        c.cache.idle_ms = self.path_cache_idle_ms;
        c.vm_max_loads = us(self.vm_max_loads);
        c.vm_load_backlog = us(self.vm_load_backlog);
        c.warm_max_files = us(self.warm_max_files);
        c.recheck_ms = self.recheck_ms;
    }

    fn validate(&self) -> Result<(), ConfigError> {
        for (key, v, min) in [
            ("path_cache_entries", self.path_cache_entries, 1),
            ("path_cache_size", self.path_cache_size, 4096),
            ("vm_max_loads", self.vm_max_loads, 1),
            ("warm_max_files", self.warm_max_files, 1),
        ] {
            if v < min {
                return Err(ConfigError::Invalid(format!(
                    "[service] {key} = {v} is below {min}"
                )));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    path_cache_entries: Option<u64>,
    path_cache_size: Option<String>,
    path_cache_idle_ms: Option<u64>,
    vm_max_loads: Option<u64>,
    vm_load_backlog: Option<u64>,
    warm_max_files: Option<u64>,
    recheck_ms: Option<u64>,
}

impl RawService {
    fn cook(self) -> Result<ServiceLimits, ConfigError> {
        let d = ServiceLimits::default();
        Ok(ServiceLimits {
            path_cache_entries: self.path_cache_entries.unwrap_or(d.path_cache_entries),
            path_cache_size: self
                .path_cache_size
                .as_deref()
                .map(|s| key_size("[service] path_cache_size", s))
                .transpose()?
                .unwrap_or(d.path_cache_size),
            path_cache_idle_ms: self.path_cache_idle_ms.unwrap_or(d.path_cache_idle_ms),
            vm_max_loads: self.vm_max_loads.unwrap_or(d.vm_max_loads),
            vm_load_backlog: self.vm_load_backlog.unwrap_or(d.vm_load_backlog),
            warm_max_files: self.warm_max_files.unwrap_or(d.warm_max_files),
            recheck_ms: self.recheck_ms.unwrap_or(d.recheck_ms),
        })
    }
}

/// A `[domain.NAME]` table: what differs for one trust domain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DomainConfig {
    /// Its pool's size in bytes (`None`: [`AgentConfig::pool_size`]).
    pub pool_size: Option<u64>,
    /// Its frame budget in bytes (`None`: [`AgentConfig::budget`]).
    pub budget: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDomain {
    pool_size: Option<String>,
    budget: Option<String>,
}

/// Whether `name` may name a trust domain: a [`valid_name`] other than
/// `lock` (the pool of a domain `lock` would be the agent's lock file
/// `pool.lock`).
pub fn valid_domain(name: &str) -> bool {
    valid_name(name) && name != "lock"
}

/// Whether `name` may name a VM: 1-32 of `[A-Za-z0-9_.-]`, not `.` or
/// `..`. The one rule for `vm add`, `--vm`, `[[vm]]` and `qemu-args`: the
/// name becomes part of a ring region's file name.
pub fn valid_vm_name(name: &str) -> bool {
    valid_name(name) && name.len() <= 32
}

/// The pool memory file of trust domain `domain`, given the configured
/// `pool` path: `pool` itself for the domain `default`, `pool.DOMAIN` for
/// any other. The one place that names a domain's pool.
pub fn domain_pool_path(pool: &Path, domain: &str) -> PathBuf {
    if domain == DEFAULT_DOMAIN {
        return pool.to_path_buf();
    }
    let mut name = pool.as_os_str().to_os_string();
    name.push(".");
    name.push(domain);
    PathBuf::from(name)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    pool: Option<PathBuf>,
    pool_size: Option<String>,
    budget: Option<String>,
    ack_timeout_ms: Option<u64>,
    vm_max_held: Option<String>,
    workers: Option<usize>,
    control_socket: Option<PathBuf>,
    control_group: Option<String>,
    ring_dir: Option<PathBuf>,
    doorbell: Option<bool>,
    file_owner: Option<String>,
    file_group: Option<String>,
    #[serde(default)]
    service: RawService,
    #[serde(default)]
    domain: std::collections::BTreeMap<String, RawDomain>,
    #[serde(default)]
    namespace: Vec<RawNamespace>,
    #[serde(default)]
    vm: Vec<VmConfig>,
}

/// The whole agent configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentConfig {
    /// Pool memory file.
    pub pool: PathBuf,
    /// Pool size in bytes (power of two).
    pub pool_size: u64,
    /// Frame memory budget in bytes (0: the whole pool).
    pub budget: u64,
    /// Revocation acknowledgement deadline.
    pub ack_timeout_ms: u64,
    /// Most pool memory, in bytes, one VM may hold unless its [`VmConfig`]
    /// says otherwise (0: no limit).
    pub vm_max_held: u64,
    /// Loader threads.
    pub workers: usize,
    /// Host control socket.
    pub control_socket: PathBuf,
    /// Group allowed on the control socket (besides root and the agent's user).
    pub control_group: Option<String>,
    /// Directory of ring region files.
    pub ring_dir: PathBuf,
    /// Whether each VM's ring is an `ivshmem-doorbell` device served by the
    /// agent (its socket `vmdedup-VM.doorbell` in `ring_dir`), so that each
    /// side wakes the other only when it sleeps; else `ivshmem-plain`.
    pub doorbell: bool,
    /// User that pools, ring regions and guest sockets are chowned to (mode
    /// 0660), e.g. the user QEMU runs as; `None`: the agent's (mode 0600
    /// unless `file_group` is set). A number is taken as a uid.
    pub file_owner: Option<String>,
    /// Group that pools, ring regions and guest sockets are chowned to (mode
    /// 0660); `None`: the agent's. A number is taken as a gid.
    pub file_group: Option<String>,
    /// Bounds of the hint service.
    pub service: ServiceLimits,
    /// Per trust domain settings (`[domain.NAME]`); a domain not listed
    /// uses the defaults.
    pub domains: std::collections::BTreeMap<String, DomainConfig>,
    /// Namespaces.
    pub namespaces: Vec<NamespaceConfig>,
    /// VMs.
    pub vms: Vec<VmConfig>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            pool: PathBuf::from("/dev/shm/vmdedup.pool"),
            pool_size: 1 << 30,
            budget: 0,
            ack_timeout_ms: 5_000,
            vm_max_held: 0,
            workers: 2,
            control_socket: PathBuf::from("/run/vmdedup/control.sock"),
            control_group: None,
            ring_dir: PathBuf::from("/dev/shm"),
            doorbell: DEFAULT_DOORBELL,
            file_owner: None,
            file_group: None,
            service: ServiceLimits::default(),
            domains: std::collections::BTreeMap::new(),
            namespaces: Vec::new(),
            vms: Vec::new(),
        }
    }
}

/// Parses `4096`, `64K`, `16M`, `1G`, `1T` (binary units).
pub fn parse_size(s: &str) -> Result<u64, ConfigError> {
    let s = s.trim();
    let (num, shift) = match s.as_bytes().last().map(|c| c.to_ascii_uppercase()) {
        Some(b'K') => (&s[..s.len() - 1], 10),
        Some(b'M') => (&s[..s.len() - 1], 20),
        Some(b'G') => (&s[..s.len() - 1], 30),
        Some(b'T') => (&s[..s.len() - 1], 40),
        _ => (s, 0),
    };
    let n: u64 = num.trim().parse().map_err(|_| {
        ConfigError::Invalid(format!(
            "{s:?} is not a size (a number of bytes, or with K, M, G or T)"
        ))
    })?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| ConfigError::Invalid(format!("{s:?} is too large")))
}

/// [`parse_size`] for configuration key `key`, which its error names.
fn key_size(key: &str, s: &str) -> Result<u64, ConfigError> {
    parse_size(s).map_err(|e| ConfigError::Invalid(format!("{key}: {e}")))
}

/// A TOML error as one line: where it is and what is wrong.
fn toml_message(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim().replace('\n', "; ");
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let start = before.rfind('\n').map_or(0, |i| i + 1);
            let column = before.len() - start + 1;
            // The line itself, for the key it sets.
            let text: String = text[start..]
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .chars()
                .take(60)
                .collect();
            format!("line {line}, column {column}, `{text}`: {msg}")
        }
        None => msg,
    }
}

/// Parses a `--ns NAME=HOSTDIR` argument.
pub fn parse_ns_arg(arg: &str) -> Result<(String, PathBuf), ConfigError> {
    let (name, dir) = arg
        .split_once('=')
        .ok_or_else(|| ConfigError::Invalid(format!("--ns {arg:?}: expected NAME=HOSTDIR")))?;
    if !valid_name(name) {
        return Err(ConfigError::Invalid(format!("--ns {arg:?}: invalid name")));
    }
    if dir.is_empty() {
        return Err(ConfigError::Invalid(format!(
            "--ns {arg:?}: empty directory"
        )));
    }
    Ok((name.to_string(), PathBuf::from(dir)))
}

/// Parses a `--vm NAME[:DOMAIN]` argument (domain `default` if not given).
pub fn parse_vm_arg(arg: &str) -> Result<VmConfig, ConfigError> {
    let (name, domain) = arg.split_once(':').unwrap_or((arg, DEFAULT_DOMAIN));
    if !valid_vm_name(name) || !valid_domain(domain) {
        return Err(ConfigError::Invalid(format!(
            "--vm {arg:?}: expected NAME or NAME:DOMAIN, each 1-32 of [A-Za-z0-9_.-]"
        )));
    }
    Ok(VmConfig {
        name: name.to_string(),
        domain: domain.to_string(),
        guest_socket: None,
        cid: None,
        max_held: None,
    })
}

/// Parses a `NAME=VALUE` argument of option `opt` into the namespace name
/// and the value.
fn split_ns_value<'a>(opt: &str, arg: &'a str) -> Result<(&'a str, &'a str), ConfigError> {
    arg.split_once('=')
        .ok_or_else(|| ConfigError::Invalid(format!("{opt} {arg:?}: expected NAME=VALUE")))
}

impl AgentConfig {
    /// Parses a TOML configuration and [`validate`](Self::validate)s it.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let cfg = Self::from_toml_unchecked(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses a TOML configuration without checking its values (the caller
    /// reports every [`problem`](Self::problems) at once).
    pub fn from_toml_unchecked(text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| ConfigError::Parse(toml_message(text, &e)))?;
        let d = AgentConfig::default();
        let mut cfg = AgentConfig {
            pool: raw.pool.unwrap_or(d.pool),
            pool_size: raw
                .pool_size
                .as_deref()
                .map(|s| key_size("pool_size", s))
                .transpose()?
                .unwrap_or(d.pool_size),
            budget: raw
                .budget
                .as_deref()
                .map(|s| key_size("budget", s))
                .transpose()?
                .unwrap_or(0),
            ack_timeout_ms: raw.ack_timeout_ms.unwrap_or(d.ack_timeout_ms),
            vm_max_held: raw
                .vm_max_held
                .as_deref()
                .map(|s| key_size("vm_max_held", s))
                .transpose()?
                .unwrap_or(0),
            workers: raw.workers.unwrap_or(d.workers),
            control_socket: raw.control_socket.unwrap_or(d.control_socket),
            control_group: raw.control_group,
            ring_dir: raw.ring_dir.unwrap_or(d.ring_dir),
            doorbell: raw.doorbell.unwrap_or(d.doorbell),
            file_owner: raw.file_owner,
            file_group: raw.file_group,
            service: raw.service.cook()?,
            domains: std::collections::BTreeMap::new(),
            namespaces: Vec::new(),
            vms: raw.vm,
        };
        for (name, d) in raw.domain {
            let size = |key: &str, v: Option<String>| {
                v.as_deref()
                    .map(|s| key_size(&format!("[domain.{name}] {key}"), s))
                    .transpose()
            };
            let (pool_size, budget) = (size("pool_size", d.pool_size)?, size("budget", d.budget)?);
            cfg.domains.insert(name, DomainConfig { pool_size, budget });
        }
        for (i, n) in raw.namespace.into_iter().enumerate() {
            cfg.namespaces.push(NamespaceConfig {
                id: n.id.unwrap_or(i as u32 + 1),
                name: n.name,
                dir: n.dir,
                domains: n
                    .domains
                    .unwrap_or_else(|| vec![DEFAULT_DOMAIN.to_string()]),
                mtime_granularity_ns: n.mtime_granularity_ns.unwrap_or(1),
                require_fingerprint: n.require_fingerprint,
                warm_at_start: n.warm_at_start,
                always_loading: n.always_loading,
            });
        }
        Ok(cfg)
    }

    /// Reads, parses and [`validate`](Self::validate)s a TOML configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let cfg = Self::load_unchecked(path)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads and parses a TOML configuration file without checking its
    /// values (see [`from_toml_unchecked`](Self::from_toml_unchecked)).
    pub fn load_unchecked(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            cause: source,
        })?;
        // Every message names the file; a parse error says how to get a
        // valid one.
        Self::from_toml_unchecked(&text).map_err(|e| match e {
            ConfigError::Parse(m) => ConfigError::Parse(format!(
                "{}: {m} (`vmdedup config new` writes a valid file)",
                path.display()
            )),
            ConfigError::Invalid(m) => ConfigError::Invalid(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Adds a `--ns NAME=HOSTDIR` namespace (domain `default`, next free id).
    pub fn add_ns_arg(&mut self, arg: &str) -> Result<(), ConfigError> {
        let (name, dir) = parse_ns_arg(arg)?;
        let id = self.namespaces.iter().map(|n| n.id).max().unwrap_or(0) + 1;
        // Only this option's own problem: the rest of the configuration is
        // checked, all at once, by its reader.
        if self.namespaces.iter().any(|n| n.name == name) {
            return Err(ConfigError::Invalid(format!(
                "--ns {arg:?}: namespace {name:?} declared twice"
            )));
        }
        self.namespaces.push(NamespaceConfig {
            name,
            id,
            dir,
            domains: vec![DEFAULT_DOMAIN.to_string()],
            mtime_granularity_ns: 1,
            require_fingerprint: false,
            warm_at_start: false,
            always_loading: false,
        });
        Ok(())
    }

    /// Adds a `--vm NAME[:DOMAIN]` VM. A VM the configuration has already is
    /// kept as it is if no domain is given or the domain is the same; another
    /// domain is an error.
    pub fn add_vm_arg(&mut self, arg: &str) -> Result<(), ConfigError> {
        let vm = parse_vm_arg(arg)?;
        match self.vms.iter().find(|v| v.name == vm.name) {
            Some(v) if !arg.contains(':') || v.domain == vm.domain => Ok(()),
            Some(v) => Err(ConfigError::Invalid(format!(
                "--vm {arg:?}: VM {:?} is in domain {:?} already",
                v.name, v.domain
            ))),
            None => {
                self.vms.push(vm);
                Ok(())
            }
        }
    }

    /// The namespace called `name`, for option `opt`.
    fn namespace_mut(
        &mut self,
        opt: &str,
        name: &str,
    ) -> Result<&mut NamespaceConfig, ConfigError> {
        self.namespaces
            .iter_mut()
            .find(|n| n.name == name)
            .ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "{opt}: no namespace {name:?} (declare it with --ns or in the config file)"
                ))
            })
    }

    /// Applies a `--ns-domains NAME=DOMAIN[,DOMAIN...]` argument: the trust
    /// domains whose VMs may use namespace NAME (`*`: every VM).
    pub fn set_ns_domains_arg(&mut self, arg: &str) -> Result<(), ConfigError> {
        const OPT: &str = "--ns-domains";
        let (name, list) = split_ns_value(OPT, arg)?;
        let domains: Vec<String> = list.split(',').map(|d| d.trim().to_string()).collect();
        if let Some(bad) = domains.iter().find(|d| *d != "*" && !valid_domain(d)) {
            return Err(ConfigError::Invalid(format!(
                "{OPT} {arg:?}: invalid domain {bad:?} (1-32 of [A-Za-z0-9_.-], or *)"
            )));
        }
        self.namespace_mut(OPT, name)?.domains = domains;
        Ok(())
    }

    /// Applies a `--ns-mtime-granularity NAME=NS` argument: how coarsely
    /// namespace NAME's mtimes are compared (1: exact; 1000000000: the
    /// guest's copy keeps whole seconds only).
    pub fn set_ns_mtime_granularity_arg(&mut self, arg: &str) -> Result<(), ConfigError> {
        const OPT: &str = "--ns-mtime-granularity";
        let (name, value) = split_ns_value(OPT, arg)?;
        let ns: u64 = value
            .trim()
            .parse()
            .ok()
            .filter(|&v| v >= 1)
            .ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "{OPT} {arg:?}: {value:?} is not a number of nanoseconds >= 1"
                ))
            })?;
        self.namespace_mut(OPT, name)?.mtime_granularity_ns = ns;
        Ok(())
    }

    /// Applies a `--ns-require-fingerprint NAME` argument: hints for
    /// namespace NAME must carry a content fingerprint (see `vmdedup stamp`).
    pub fn set_ns_require_fingerprint_arg(&mut self, name: &str) -> Result<(), ConfigError> {
        self.namespace_mut("--ns-require-fingerprint", name)?
            .require_fingerprint = true;
        Ok(())
    }

    /// Applies a `--ns-warm-at-start NAME` argument: namespace NAME is
    /// loaded into the pool when the agent starts, before it serves.
    pub fn set_ns_warm_at_start_arg(&mut self, name: &str) -> Result<(), ConfigError> {
        self.namespace_mut("--ns-warm-at-start", name)?
            .warm_at_start = true;
        Ok(())
    }

    /// Applies a `--ns-always-loading NAME` argument: each VM's first hint
    /// for a file of namespace NAME is answered "loading", loaded or not.
    pub fn set_ns_always_loading_arg(&mut self, name: &str) -> Result<(), ConfigError> {
        self.namespace_mut("--ns-always-loading", name)?
            .always_loading = true;
        Ok(())
    }

    /// Checks names, ids, sizes and values; the first problem
    /// [`problems`](Self::problems) finds is the error.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.problems().into_iter().next() {
            Some(p) => Err(ConfigError::Invalid(p)),
            None => Ok(()),
        }
    }

    /// Every problem of the configuration by itself (names, ids, sizes,
    /// values), one line each, naming the key: `vmdedup serve` prints them
    /// all at once. What the host must provide (directories, groups, free
    /// memory, sockets) is [`crate::preflight`]'s.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.pool_size.is_power_of_two() || self.pool_size < (64 << 10) {
            out.push(format!(
                "pool_size {} is not a power of two >= 64K",
                self.pool_size
            ));
        }
        if self.budget > self.pool_size {
            out.push(format!(
                "budget {} is above pool_size {}: the pool cannot hold it",
                format_size(self.budget),
                format_size(self.pool_size)
            ));
        }
        if self.workers == 0 {
            out.push("workers = 0: at least one loader thread is needed".to_string());
        }
        if let Err(e) = self.service.validate() {
            out.push(e.to_string());
        }
        for (name, d) in &self.domains {
            if !valid_domain(name) {
                out.push(format!(
                    "[domain.{name}]: invalid domain name (1-32 of [A-Za-z0-9_.-], not \"lock\")"
                ));
            }
            let size = self.domain_pool_size(name);
            if !size.is_power_of_two() || size < (64 << 10) {
                out.push(format!(
                    "[domain.{name}] pool_size {size} is not a power of two >= 64K"
                ));
            }
            if d.budget.is_some_and(|b| b > size) {
                out.push(format!(
                    "[domain.{name}] budget is above its pool_size {size}"
                ));
            }
        }
        let mut names = std::collections::BTreeSet::new();
        let mut ids = std::collections::BTreeSet::new();
        for n in &self.namespaces {
            if !valid_name(&n.name) {
                out.push(format!("namespace name {:?}", n.name));
            }
            if !names.insert(n.name.as_str()) || !ids.insert(n.id) {
                out.push(format!(
                    "namespace {:?} (id {}) declared twice",
                    n.name, n.id
                ));
            }
        }
        let mut vms = std::collections::BTreeSet::new();
        let mut cids: std::collections::BTreeMap<u32, &str> = std::collections::BTreeMap::new();
        for v in &self.vms {
            if !valid_vm_name(&v.name) || !valid_domain(&v.domain) {
                out.push(format!(
                    "VM {:?} / domain {:?}: use 1-32 of [A-Za-z0-9_.-] (a domain not \"lock\")",
                    v.name, v.domain
                ));
            }
            if !vms.insert(v.name.as_str()) {
                out.push(format!("VM {:?} declared twice", v.name));
            }
            match v.cid {
                Some(c @ (0 | 1 | 2 | u32::MAX)) => out.push(format!(
                    "[[vm]] {:?}: cid {c} is reserved (0: hypervisor, 1: local, 2: host, 4294967295: any); guests use 3 and up",
                    v.name
                )),
                Some(c) => {
                    if let Some(other) = cids.insert(c, v.name.as_str()) {
                        out.push(format!(
                            "[[vm]] {:?}: cid {c} is VM {other:?}'s already",
                            v.name
                        ));
                    }
                }
                None => {}
            }
        }
        out
    }

    /// The pool memory file of trust domain `domain` ([`domain_pool_path`]).
    pub fn pool_path(&self, domain: &str) -> PathBuf {
        domain_pool_path(&self.pool, domain)
    }

    /// The pool size of trust domain `domain`.
    pub fn domain_pool_size(&self, domain: &str) -> u64 {
        self.domains
            .get(domain)
            .and_then(|d| d.pool_size)
            .unwrap_or(self.pool_size)
    }

    /// The frame budget of trust domain `domain`, in bytes (0: its whole pool).
    pub fn domain_budget(&self, domain: &str) -> u64 {
        self.domains
            .get(domain)
            .and_then(|d| d.budget)
            .unwrap_or(self.budget)
    }

    /// The trust domain of VM `vm` as configured (`default` for a VM the
    /// configuration does not name).
    pub fn vm_domain(&self, vm: &str) -> &str {
        self.vms
            .iter()
            .find(|v| v.name == vm)
            .map_or(DEFAULT_DOMAIN, |v| v.domain.as_str())
    }

    /// The ivshmem server socket of VM `vm` (with [`doorbell`](Self::doorbell)).
    pub fn doorbell_path(&self, vm: &str) -> PathBuf {
        crate::ivshmem::socket_path(&self.ring_dir, vm)
    }

    /// The ring region file of VM `vm`.
    pub fn ring_path(&self, vm: &str) -> PathBuf {
        self.ring_dir.join(format!("vmdedup-{vm}.ring"))
    }

    /// The QEMU arguments that attach a VM to its ring region (read-write)
    /// and to its trust domain's pool (read-only), one argument per element.
    /// `domain`: the VM's domain (`None`: as configured, see [`vm_domain`](Self::vm_domain)).
    pub fn qemu_args(&self, vm: &str, domain: Option<&str>, ring_size: u64) -> Vec<String> {
        crate::qemu::Attachment::from_config(self, vm, domain, ring_size).region_args()
    }
}

/// Whether rings are `ivshmem-doorbell` devices when the configuration
/// does not say (`doorbell`).
pub const DEFAULT_DOORBELL: bool = true;

/// The QEMU arguments of the virtio-balloon device a VM gets for free page
/// reporting (`vmdedup qemu-args`, `scripts/guest-run`): it never inflates,
/// it only takes the free memory the guest reports and gives it back to the
/// host.
pub const BALLOON_QEMU_ARGS: [&str; 2] = [
    "-device",
    "virtio-balloon-pci,id=vmdedup-balloon,free-page-reporting=on",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_example_parses() {
        let cfg = AgentConfig::from_toml(
            r#"
pool = "/dev/shm/p"
pool_size = "64M"
budget = "16M"
vm_max_held = "4M"
control_group = "kvm"
file_owner = "libvirt-qemu"
file_group = "kvm"
[[namespace]]
name = "deb"
dir = "/srv/deb"
domains = ["a", "b"]
[[namespace]]
name = "alpine"
id = 7
dir = "/srv/alpine"
warm_at_start = true
always_loading = true
[[vm]]
name = "vm1"
domain = "a"
cid = 3
max_held = "1M"
"#,
        )
        .unwrap();
        assert_eq!(cfg.pool_size, 64 << 20);
        assert_eq!(cfg.budget, 16 << 20);
        assert_eq!(cfg.namespaces[0].id, 1);
        assert_eq!(cfg.namespaces[1].id, 7);
        assert_eq!(cfg.namespaces[1].domains, vec!["default"]);
        assert!(!cfg.namespaces[0].warm_at_start && !cfg.namespaces[0].always_loading);
        assert!(cfg.namespaces[1].warm_at_start && cfg.namespaces[1].always_loading);
        assert_eq!(cfg.vms[0].cid, Some(3));
        assert_eq!(cfg.vm_max_held, 4 << 20);
        assert_eq!(cfg.vms[0].max_held, Some(1 << 20));
        assert_eq!(cfg.file_owner.as_deref(), Some("libvirt-qemu"));
        assert_eq!(cfg.file_group.as_deref(), Some("kvm"));
        assert!(cfg
            .qemu_args("vm1", None, 1 << 20)
            .iter()
            .any(|a| a.contains("readonly=on")));
    }

    #[test]
    fn qemu_args_attach_the_ring_and_the_pool() {
        let cfg = AgentConfig {
            pool: "/dev/shm/a,b.pool".into(),
            pool_size: 64 << 20,
            ring_dir: "/run/x".into(),
            doorbell: false,
            ..AgentConfig::default()
        };
        assert_eq!(
            cfg.qemu_args("vm2", None, 256 << 10),
            [
                "-object",
                "memory-backend-file,id=vmdedup-ring,mem-path=/run/x/vmdedup-vm2.ring,size=262144,share=on",
                "-device",
                "ivshmem-plain,memdev=vmdedup-ring",
                "-object",
                "memory-backend-file,id=vmdedup-pool,mem-path=/dev/shm/a,,b.pool,size=67108864,share=on,readonly=on",
                "-device",
                "ivshmem-plain,memdev=vmdedup-pool",
            ]
        );
    }

    #[test]
    fn each_domain_has_its_own_pool() {
        let cfg = AgentConfig::from_toml(
            r#"
pool = "/dev/shm/p"
pool_size = "64M"
budget = "32M"
[domain.tenant-a]
pool_size = "16M"
[domain.tenant-b]
budget = "8M"
[[vm]]
name = "vm1"
domain = "tenant-a"
[[vm]]
name = "vm2"
"#,
        )
        .unwrap();
        assert_eq!(cfg.pool_path("default"), Path::new("/dev/shm/p"));
        assert_eq!(cfg.pool_path("tenant-a"), Path::new("/dev/shm/p.tenant-a"));
        assert_eq!(
            (
                cfg.domain_pool_size("tenant-a"),
                cfg.domain_budget("tenant-a")
            ),
            (16 << 20, 32 << 20)
        );
        assert_eq!(
            (
                cfg.domain_pool_size("tenant-b"),
                cfg.domain_budget("tenant-b")
            ),
            (64 << 20, 8 << 20)
        );
        assert_eq!(cfg.domain_pool_size("other"), 64 << 20);
        let a = cfg.qemu_args("vm1", None, 1 << 20).join(" ");
        assert!(
            a.contains("mem-path=/dev/shm/p.tenant-a,size=16777216"),
            "{a}"
        );
        let b = cfg.qemu_args("vm2", None, 1 << 20).join(" ");
        assert!(b.contains("mem-path=/dev/shm/p,size=67108864"), "{b}");
        let c = cfg.qemu_args("vm2", Some("tenant-b"), 1 << 20).join(" ");
        assert!(c.contains("mem-path=/dev/shm/p.tenant-b,"), "{c}");
        let back = AgentConfig::from_toml(&cfg.to_toml().unwrap()).unwrap();
        assert_eq!(back, cfg);
        for bad in [
            "[domain.\"a b\"]\npool_size = \"1M\"",
            "[domain.a]\npool_size = \"3M\"",
            "[domain.a]\npool_size = \"1M\"\nbudget = \"2M\"",
            "[domain.a]\nsize = \"1M\"",
            "[domain.lock]\npool_size = \"1M\"",
            "[[vm]]\nname = \"a\"\ndomain = \"lock\"",
        ] {
            assert!(AgentConfig::from_toml(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn service_bounds_parse_and_reach_the_service() {
        let c = AgentConfig::from_toml(
            "[service]\npath_cache_entries = 10\npath_cache_size = \"1M\"\n\
             vm_max_loads = 3\nrecheck_ms = 0",
        )
        .unwrap();
        let mut s = crate::service::ServiceConfig::default();
        c.service.apply(&mut s);
        assert_eq!((s.cache.entries, s.cache.bytes), (10, 1 << 20));
        assert_eq!((s.vm_max_loads, s.recheck_ms), (3, 0));
        let d = crate::service::ServiceConfig::default();
        assert_eq!(s.warm_max_files, d.warm_max_files, "defaults kept");
        assert_eq!(s.cache.idle_ms, d.cache.idle_ms);
    }

    #[test]
    fn bad_configs_are_errors() {
        for bad in [
            "pool_size = \"3M\"",
            "unknown = 1",
            "[[namespace]]\nname = \"../x\"\ndir = \"/\"",
            "[[namespace]]\nname = \"a\"\ndir = \"/\"\n[[namespace]]\nname = \"a\"\ndir = \"/tmp\"",
            "[[vm]]\nname = \"a b\"",
            "budget = \"lots\"",
            "vm_max_held = \"lots\"",
            "[[vm]]\nname = \"a\"\nmax_held = \"x\"",
            "[service]\nvm_max_loads = 0",
            "[service]\npath_cache_size = \"1K\"",
            "[service]\nqueue = 3",
        ] {
            assert!(AgentConfig::from_toml(bad).is_err(), "{bad}");
        }
        let mut c = AgentConfig::default();
        c.add_ns_arg("deb=/srv/deb").unwrap();
        c.add_ns_arg("alp=/srv/alp").unwrap();
        assert_eq!(c.namespaces[1].id, 2);
        assert!(c.add_ns_arg("deb=/x").is_err());
        assert!(c.add_ns_arg("nodir").is_err());
        assert!(c.add_ns_arg("x=").is_err());
    }

    #[test]
    fn vm_and_namespace_options_apply_or_say_why_not() {
        let mut c = AgentConfig::default();
        c.add_ns_arg("deb=/srv/deb").unwrap();
        c.add_vm_arg("vm1").unwrap();
        c.add_vm_arg("vm2:tenant-a").unwrap();
        c.add_vm_arg("vm2").unwrap(); // already there: kept as it is
        c.add_vm_arg("vm2:tenant-a").unwrap();
        assert_eq!(c.vms.len(), 2);
        assert_eq!(
            (c.vms[0].domain.as_str(), c.vms[1].domain.as_str()),
            ("default", "tenant-a")
        );
        for bad in ["vm2:other", "a b", "vm3:", ":d", "vm3:a:b", ""] {
            assert!(c.add_vm_arg(bad).is_err(), "{bad}");
        }
        c.set_ns_domains_arg("deb=tenant-a,*").unwrap();
        assert_eq!(c.namespaces[0].domains, ["tenant-a", "*"]);
        c.set_ns_mtime_granularity_arg("deb=1000000000").unwrap();
        assert_eq!(c.namespaces[0].mtime_granularity_ns, 1_000_000_000);
        assert!(!c.namespaces[0].warm_at_start && !c.namespaces[0].always_loading);
        c.set_ns_warm_at_start_arg("deb").unwrap();
        c.set_ns_always_loading_arg("deb").unwrap();
        assert!(c.namespaces[0].warm_at_start && c.namespaces[0].always_loading);
        assert!(c.set_ns_warm_at_start_arg("other").is_err());
        assert!(c.set_ns_always_loading_arg("other").is_err());
        for bad in ["deb", "other=a", "deb=a b", "deb=", "deb=a,,b"] {
            assert!(c.set_ns_domains_arg(bad).is_err(), "{bad}");
        }
        for bad in ["deb", "other=1", "deb=0", "deb=-1", "deb=1s"] {
            assert!(c.set_ns_mtime_granularity_arg(bad).is_err(), "{bad}");
        }
        let e = c.set_ns_domains_arg("other=a").unwrap_err().to_string();
        assert!(e.contains("no namespace \"other\""), "{e}");
        assert_eq!(
            c.namespaces[0].domains,
            ["tenant-a", "*"],
            "unchanged by errors"
        );
    }
}
