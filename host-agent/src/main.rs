//! `vmdedup`: the vmdedup host agent and its command-line interface.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};
use vmdedup_host_agent::agent::{Agent, AgentOptions};
use vmdedup_host_agent::config::{parse_size, AgentConfig, ConfigError};
use vmdedup_host_agent::control::{self, Caller, ControlContext};
use vmdedup_host_agent::hostfile::{AgentLock, FileAccess};
use vmdedup_host_agent::preflight;
use vmdedup_host_agent::region;
use vmdedup_host_agent::ring::poller::PollerConfig;
use vmdedup_host_agent::sd_notify::Notifier;
use vmdedup_host_agent::stats;
use vmdedup_protocol::abi::RegionKind;
use vmdedup_protocol::control::{Request, Response, StatusReport};

mod qemu_args_cmd;
mod warm_cmd;
use qemu_args_cmd::{cmd_qemu_args, QemuFormat};
#[path = "cli/exit.rs"]
mod exit;
#[path = "cli/generate.rs"]
mod generate;

/// vmdedup host agent: serves file pages shared by all VMs from one pool.
///
/// Guests tell the agent which file they open, by name, over a shared-memory
/// ring; the agent answers with references to frames in one pool that every
/// VM maps read-only, so identical file pages are kept once on the host.
#[derive(Parser)]
#[command(name = "vmdedup", version, about, long_about = None, after_help = exit::HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the configuration comes from (shared by `serve`, `qemu-args` and
/// `config new`): a TOML file, then these options on top of it.
#[derive(Args, Clone)]
struct ConfigArgs {
    /// TOML configuration file (namespaces, trust domains, VMs, pool).
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// A namespace NAME=HOSTDIR: an immutable tree guests also have as their
    /// read-only lower directory (repeatable; adds to the config file's).
    #[arg(long = "ns", value_name = "NAME=HOSTDIR")]
    ns: Vec<String>,
    /// The trust domains whose VMs may use namespace NAME, comma-separated
    /// ("*": every VM; default: "default") (repeatable).
    #[arg(long = "ns-domains", value_name = "NAME=DOMAIN[,DOMAIN...]")]
    ns_domains: Vec<String>,
    /// How coarsely namespace NAME's mtimes are compared with the guest's, in
    /// ns: 1 (the default) is exact, 1000000000 for guest copies that keep
    /// whole seconds only (repeatable).
    #[arg(long = "ns-mtime-granularity", value_name = "NAME=NS")]
    ns_mtime_granularity: Vec<String>,
    /// Hints for namespace NAME must carry a content fingerprint (the
    /// guest's image stamped with `vmdedup stamp`); others are misses
    /// (repeatable).
    #[arg(long = "ns-require-fingerprint", value_name = "NAME")]
    ns_require_fingerprint: Vec<String>,
    /// Load namespace NAME into the pool when the agent starts, before it
    /// serves, so that every answer for its files is a hit (repeatable).
    #[arg(long = "ns-warm-at-start", value_name = "NAME")]
    ns_warm_at_start: Vec<String>,
    /// Answer each VM's first hint for a file of namespace NAME "loading",
    /// even when the file is loaded, so that a first open says nothing
    /// about what other VMs read (repeatable).
    #[arg(long = "ns-always-loading", value_name = "NAME")]
    ns_always_loading: Vec<String>,
    /// Register a VM at start, in trust domain DOMAIN (default: "default")
    /// (repeatable; adds to the config file's).
    #[arg(long = "vm", value_name = "NAME[:DOMAIN]")]
    vm: Vec<String>,
    /// Pool memory file (default /dev/shm/vmdedup.pool).
    #[arg(long)]
    pool: Option<PathBuf>,
    /// Pool size, a power of two (e.g. 256M, 1G).
    #[arg(long, value_parser = size_arg)]
    pool_size: Option<u64>,
    /// Most memory used for frames (default: the whole pool).
    #[arg(long, value_parser = size_arg)]
    budget: Option<u64>,
    /// Directory of the VMs' ring region files (default /dev/shm).
    #[arg(long)]
    ring_dir: Option<PathBuf>,
    /// Rings are ivshmem-doorbell devices with the agent as their ivshmem
    /// server (a socket per VM in the ring directory): each side wakes the
    /// other only when it sleeps (configuration key `doorbell`).
    #[arg(long, conflicts_with = "no_doorbell")]
    doorbell: bool,
    /// Rings are ivshmem-plain devices, polled (`doorbell = false`); for
    /// `qemu-args`, print the ring as ivshmem-plain whatever the agent does.
    #[arg(long)]
    no_doorbell: bool,
    /// Control socket path (default /run/vmdedup/control.sock).
    #[arg(long)]
    control: Option<PathBuf>,
    /// Group whose members may use the control socket (besides root and the
    /// agent's user).
    #[arg(long, value_name = "GROUP")]
    control_group: Option<String>,
    /// User the pool, ring region and guest socket files are chowned to
    /// (mode 0660), e.g. the user QEMU runs as (default: the agent's user,
    /// mode 0600).
    #[arg(long, value_name = "USER")]
    file_owner: Option<String>,
    /// Group the pool, ring region and guest socket files are chowned to
    /// (mode 0660).
    #[arg(long, value_name = "GROUP")]
    file_group: Option<String>,
    /// Loader threads (default 2).
    #[arg(long)]
    workers: Option<usize>,
    /// How long a VM may take to acknowledge a revocation before it is cut
    /// off, in milliseconds (default 5000).
    #[arg(long, value_name = "MS")]
    ack_timeout_ms: Option<u64>,
}

impl ConfigArgs {
    /// The configuration, checked by itself: every problem is reported
    /// (see [`Problems`]).
    fn load(&self) -> anyhow::Result<AgentConfig> {
        let cfg = self.load_unchecked()?;
        Problems::check(cfg.problems())?;
        Ok(cfg)
    }

    /// The configuration the file and options describe, not checked yet.
    /// A file that cannot be read or parsed, or an option that does not
    /// parse, is a [`Problems`] too.
    fn load_unchecked(&self) -> anyhow::Result<AgentConfig> {
        self.build()
            .map_err(|e| Problems(vec![e.to_string()]).into())
    }

    fn build(&self) -> Result<AgentConfig, ConfigError> {
        let mut cfg = match &self.config {
            Some(p) => AgentConfig::load_unchecked(p)?,
            None => AgentConfig::default(),
        };
        for ns in &self.ns {
            cfg.add_ns_arg(ns)?;
        }
        for arg in &self.ns_domains {
            cfg.set_ns_domains_arg(arg)?;
        }
        for arg in &self.ns_mtime_granularity {
            cfg.set_ns_mtime_granularity_arg(arg)?;
        }
        for name in &self.ns_require_fingerprint {
            cfg.set_ns_require_fingerprint_arg(name)?;
        }
        for name in &self.ns_warm_at_start {
            cfg.set_ns_warm_at_start_arg(name)?;
        }
        for name in &self.ns_always_loading {
            cfg.set_ns_always_loading_arg(name)?;
        }
        for vm in &self.vm {
            cfg.add_vm_arg(vm)?;
        }
        if let Some(p) = &self.pool {
            cfg.pool = p.clone();
        }
        if let Some(s) = self.pool_size {
            cfg.pool_size = s;
        }
        if let Some(b) = self.budget {
            cfg.budget = b;
        }
        if let Some(d) = &self.ring_dir {
            cfg.ring_dir = d.clone();
        }
        if self.doorbell {
            cfg.doorbell = true;
        }
        if self.no_doorbell {
            cfg.doorbell = false;
        }
        if let Some(c) = &self.control {
            cfg.control_socket = c.clone();
        }
        if let Some(g) = &self.control_group {
            cfg.control_group = Some(g.clone());
        }
        if let Some(u) = &self.file_owner {
            cfg.file_owner = Some(u.clone());
        }
        if let Some(g) = &self.file_group {
            cfg.file_group = Some(g.clone());
        }
        if let Some(w) = self.workers {
            cfg.workers = w;
        }
        if let Some(t) = self.ack_timeout_ms {
            cfg.ack_timeout_ms = t;
        }
        Ok(cfg)
    }
}

/// Exit status when the configuration, or the host it would run on, is not
/// fit to serve (`EX_CONFIG` of sysexits.h); every problem was printed.
const EXIT_CONFIG: u8 = exit::CONFIG;

/// Every problem of a configuration (or of the host for it), one line each:
/// printed all at once, exit status [`EXIT_CONFIG`].
#[derive(Debug)]
struct Problems(Vec<String>);

impl Problems {
    fn check(problems: Vec<String>) -> anyhow::Result<()> {
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Problems(problems).into())
        }
    }
}

impl std::fmt::Display for Problems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join("\n"))
    }
}

impl std::error::Error for Problems {}

/// The size of the VMs' ring regions (not part of the configuration file).
#[derive(Args, Clone)]
struct RingSizeArg {
    /// Size of each VM's ring region, a power of two of at least 64K.
    #[arg(long, value_parser = size_arg, default_value = "1M")]
    ring_size: u64,
}

/// How guest tools (`vmdedup-guest`) reach the agent.
#[derive(Args, Clone)]
struct GuestChannelArgs {
    /// Listen for each VM's guest tools on the hybrid-vsock Unix socket
    /// DIR/NAME.vsock_PORT: what vhost-device-vsock (QEMU vhost-user-vsock),
    /// Firecracker and cloud-hypervisor connect when the guest dials the host
    /// (CID 2) on PORT. (A VM's `guest_socket` in the config file wins.)
    #[arg(long, value_name = "DIR")]
    guest_socket_dir: Option<PathBuf>,
    /// The vsock port guest tools dial.
    #[arg(long, default_value_t = VSOCK_PORT)]
    vsock_port: u32,
    /// Also listen on AF_VSOCK (hosts with vhost-vsock); a peer is known by
    /// the `cid` its VM has in the config file.
    #[arg(long)]
    af_vsock: bool,
}

/// The vsock port `vmdedup-guest` dials by default.
const VSOCK_PORT: u32 = 5555;

/// Where the running agent is.
#[derive(Args, Clone)]
struct ControlArg {
    /// Control socket of the running agent (default: the --config file's
    /// `control_socket`, else $VMDEDUP_CONTROL, else
    /// /run/vmdedup/control.sock).
    #[arg(long)]
    control: Option<PathBuf>,
    /// The agent's configuration file, for its `control_socket`.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
}

/// The control socket when nothing says otherwise.
const DEFAULT_CONTROL: &str = "/run/vmdedup/control.sock";

impl ControlArg {
    /// The control socket: --control, the --config file's, $VMDEDUP_CONTROL
    /// or the default, the first that is given.
    fn socket(&self) -> anyhow::Result<PathBuf> {
        if let Some(p) = &self.control {
            return Ok(p.clone());
        }
        if let Some(file) = &self.config {
            // Only the socket is wanted: the rest is the agent's to check.
            return Ok(AgentConfig::load_unchecked(file)?.control_socket);
        }
        match std::env::var_os("VMDEDUP_CONTROL") {
            Some(p) if !p.is_empty() => Ok(PathBuf::from(p)),
            _ => Ok(PathBuf::from(DEFAULT_CONTROL)),
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: create the pool and the VMs' ring regions, poll the
    /// rings, answer hints, and serve the control socket until SIGINT/SIGTERM.
    ///
    /// Example: vmdedup serve --ns debian=/srv/images/debian12 --vm vm1 --vm vm2 --pool-size 1G
    Serve {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(flatten)]
        ring: RingSizeArg,
        /// Poller threads.
        #[arg(long, default_value_t = 1)]
        pollers: usize,
        /// Longest time an idle poller sleeps before it looks at its rings
        /// again, in milliseconds. Guests attached with ivshmem-plain have no
        /// doorbell to wake it, so this bounds their hint latency when idle.
        #[arg(long, default_value_t = 20)]
        park_timeout_ms: u64,
        #[command(flatten)]
        guest: GuestChannelArgs,
        /// Serve Prometheus metrics on this loopback address (e.g. 127.0.0.1:9464).
        #[arg(long, value_name = "ADDR")]
        metrics: Option<std::net::SocketAddr>,
        /// Only check the configuration and what the host must provide for it
        /// (directories, users and groups, sockets, free memory for the
        /// pools), print "ok" and what would run, and exit; nothing is
        /// created, adopted, locked or deleted.
        #[arg(long)]
        check: bool,
    },
    /// Show pool use, savings and hint counters of the running agent.
    ///
    /// Example: vmdedup status --json
    Status {
        #[command(flatten)]
        control: ControlArg,
        /// Print the stable JSON document (keys documented in README).
        #[arg(long)]
        json: bool,
    },
    /// List the registered VMs with their counters.
    ///
    /// Example: vmdedup vms
    Vms {
        #[command(flatten)]
        control: ControlArg,
        /// Print a JSON array, one object per VM with the keys of
        /// `status --json`'s `vms`.
        #[arg(long)]
        json: bool,
    },
    /// List the files of a namespace that are in the pool.
    ///
    /// Example: vmdedup files debian --limit 16
    Files {
        #[command(flatten)]
        control: ControlArg,
        /// Namespace name.
        ns: String,
        /// Skip this many files.
        #[arg(long, default_value_t = 0)]
        offset: u32,
        /// Show at most this many files.
        #[arg(long, default_value_t = 16)]
        limit: u16,
        /// Print JSON: `namespace`, `total`, `offset` and `files`, a list of
        /// `domain`, `size`, `pages` and `path`.
        #[arg(long)]
        json: bool,
        /// Print every path of the namespace in the pool, one per line,
        /// sorted: a profile of what guests read, for `vmdedup warm NS
        /// --from`.
        #[arg(long, conflicts_with_all = ["json", "offset", "limit"])]
        paths: bool,
    },
    /// Preload a namespace tree (or a subtree, or the paths of a profile)
    /// into the pool, so the first VM hits as well and hit/miss timing
    /// reveals nothing about other VMs.
    ///
    /// Example: vmdedup warm debian usr/lib
    ///
    /// A whole distribution image is mostly files no guest reads: warm what
    /// guests read instead, from a profile that `vmdedup files NS --paths`
    /// wrote after they ran:
    ///
    /// vmdedup files debian --paths > debian.profile;
    /// vmdedup warm debian --from debian.profile
    Warm {
        #[command(flatten)]
        control: ControlArg,
        /// Namespace name.
        ns: String,
        /// Namespace-relative path (default: the whole tree).
        #[arg(default_value = "", conflicts_with = "from")]
        path: String,
        /// Warm the paths FILE lists instead ("-": standard input): one
        /// namespace-relative path per line, as `vmdedup files NS --paths`
        /// prints them; empty lines and lines starting with # are skipped. A
        /// path no longer in the namespace is counted and skipped.
        #[arg(long, value_name = "FILE")]
        from: Option<PathBuf>,
    },
    /// Drop a file (or a subtree) from the pool; VMs holding it are told to
    /// let go first.
    ///
    /// Example: vmdedup evict debian usr/lib/x86_64-linux-gnu/libc.so.6
    Evict {
        #[command(flatten)]
        control: ControlArg,
        /// Namespace name.
        ns: String,
        /// Namespace-relative path.
        path: String,
    },
    /// Manage VMs of the running agent.
    #[command(subcommand)]
    Vm(VmCommand),
    /// Print what attaches a VM to its ring region and its trust domain's
    /// pool: QEMU arguments (one per line, for `mapfile` or `xargs`), a
    /// shell line, JSON, or the parts of a libvirt domain XML.
    ///
    /// The paths and sizes come from the running agent (its control socket:
    /// --control, the --config file's `control_socket`, $VMDEDUP_CONTROL or
    /// /run/vmdedup/control.sock). Without an agent they come from the
    /// configuration (--config FILE and the options on top of it), the
    /// ring's size from --ring-size, else the ring file's, else serve's
    /// default; standard error says which source was used. Options that
    /// describe the files must agree with a running agent.
    ///
    /// A virtio-balloon device with free page reporting comes with them:
    /// the guest hands the memory it frees back to the host (the lower
    /// pages it drops once the pool serves a file among them). The guest
    /// kernel needs CONFIG_VIRTIO_BALLOON and CONFIG_PAGE_REPORTING. A VM
    /// that has a balloon already takes --no-balloon and turns reporting on
    /// in its own (libvirt: `--format libvirt` prints `<memballoon
    /// model='virtio' freePageReporting='on'/>`).
    ///
    /// Example: vmdedup qemu-args vm1 --format libvirt --config /etc/vmdedup/vmdedup.toml
    QemuArgs {
        /// The VM.
        name: String,
        /// The VM's trust domain (default: the agent's, else as configured,
        /// else "default").
        #[arg(long, value_name = "DOMAIN")]
        domain: Option<String>,
        /// Leave out the virtio-balloon device (the VM has its own).
        #[arg(long)]
        no_balloon: bool,
        /// What to print: QEMU arguments one per line, one shell-quoted
        /// line, a JSON document (the arguments and the paths and sizes),
        /// or libvirt domain XML.
        #[arg(long, value_enum, default_value = "lines")]
        format: QemuFormat,
        /// The user QEMU runs as, for the ownership commands printed with
        /// --format libvirt.
        #[arg(long, value_name = "USER", default_value = "libvirt-qemu")]
        qemu_user: String,
        /// Size of the VM's ring region when there is no agent to ask (the
        /// agent's `serve --ring-size`).
        #[arg(long, value_parser = size_arg)]
        ring_size: Option<u64>,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Write an agent configuration file for `vmdedup serve --config`.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Create or inspect shared region files (developer tool).
    #[command(subcommand)]
    Region(RegionCommand),
    /// Write each file's content fingerprint into a guest image's tree.
    ///
    /// Run it on the staging tree before the image is made (`mke2fs -d DIR`
    /// copies the `user.vmdedup.b3` attributes into the image); guests send
    /// the fingerprint in their hints and the agent serves a file only if
    /// the bytes it loaded have the same one. With `--debugfs` the tree is
    /// left alone and a `debugfs` script is printed instead, for an image
    /// made already.
    ///
    /// Example: `vmdedup stamp /srv/staging/debian12 && mke2fs -d
    /// /srv/staging/debian12 ...`, or `vmdedup stamp --debugfs DIR |
    /// debugfs -w -f - IMAGE`.
    Stamp {
        /// Print `debugfs` commands instead of setting the attributes.
        #[arg(long)]
        debugfs: bool,
        /// The tree (its regular files are read, symlinks not followed).
        dir: PathBuf,
    },
    /// Write the man pages or a shell completion script (for packaging).
    #[command(subcommand, hide = true)]
    Generate(generate::GenerateCommand),
}

#[derive(Subcommand)]
enum VmCommand {
    /// Register a VM with the running agent and create its ring region.
    ///
    /// Example: vmdedup vm add vm3 --domain tenant-a
    Add {
        #[command(flatten)]
        control: ControlArg,
        /// VM name: 1-32 of [A-Za-z0-9_.-].
        name: String,
        /// Trust domain: which namespaces it may use and which pool it
        /// attaches (a new domain's pool is created with its first VM).
        #[arg(long, default_value = "default")]
        domain: String,
    },
    /// Serve a VM that was cut off again.
    ///
    /// A VM is cut off when it does not acknowledge a revocation in time. Its
    /// ring starts over with a new generation: the guest drops whatever it
    /// still mapped from the pool and reconnects. Does nothing for a VM that
    /// is not cut off.
    ///
    /// Example: vmdedup vm reinstate vm3
    Reinstate {
        #[command(flatten)]
        control: ControlArg,
        /// VM name.
        name: String,
    },
    /// Forget a VM that is gone (its QEMU exited) and free what it held.
    ///
    /// A cut-off VM keeps what it held charged to it, because its page
    /// tables may still map those frames, until its guest acknowledges or
    /// reconnects; when the VM is gone for good, this frees them. Its ring is
    /// closed; its ring region file stays.
    ///
    /// Example: vmdedup vm remove vm3
    Remove {
        #[command(flatten)]
        control: ControlArg,
        /// VM name.
        name: String,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print (or write to --out) a TOML configuration made of a config file
    /// (optional) and the options, with every default spelled out. `vmdedup
    /// serve --config FILE` and `vmdedup qemu-args VM --config FILE` read it
    /// as the same configuration.
    ///
    /// Example: vmdedup config new --ns debian=/srv/debian12 --ns-domains debian=tenant-a
    /// --ns-mtime-granularity debian=1000000000 --vm vm1:tenant-a --pool-size 1G -o agent.toml
    New {
        #[command(flatten)]
        config: ConfigArgs,
        /// Write the configuration to this file instead of standard output.
        #[arg(long, short = 'o', value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum KindArg {
    /// A per-VM ring region (read-write for that VM).
    Ring,
    /// The pool region shared read-only by all VMs.
    Pool,
}

#[derive(Subcommand)]
enum RegionCommand {
    /// Create (or re-initialise) a region file with a complete header and
    /// empty rings or an empty pool. Never use it on a region a VM maps.
    ///
    /// Example: vmdedup region init --kind ring --size 1M /dev/shm/vm1.ring
    Init {
        /// Which kind of region to create.
        #[arg(long, value_enum)]
        kind: KindArg,
        /// Size of the region: a power of two (suffixes K, M, G).
        #[arg(long, default_value = "1M", value_parser = size_arg)]
        size: u64,
        /// Generation number to write (default: derived from the current time).
        #[arg(long)]
        generation: Option<u64>,
        /// With --kind pool: the pool of this trust domain, PATH being the
        /// configured `pool` (the file is PATH for "default", PATH.DOMAIN
        /// for any other, as `vmdedup serve` names them).
        #[arg(long, value_name = "DOMAIN")]
        domain: Option<String>,
        /// The region file to create.
        path: PathBuf,
    },
    /// Print what a region file's header says.
    ///
    /// Example: vmdedup region show /dev/shm/vmdedup.pool
    Show {
        /// The region file.
        path: PathBuf,
    },
}

fn size_arg(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

fn time_generation() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        .max(1)
}

/// Copies user input into a bounded protocol string; too long is an error,
/// never a silent cut.
fn bounded<const N: usize>(s: &str, what: &str) -> anyhow::Result<heapless::String<N>> {
    let mut out = heapless::String::new();
    out.push_str(s)
        .map_err(|_| anyhow::anyhow!("{what}: at most {N} bytes"))?;
    Ok(out)
}

/// The name of an enum value's variant, for messages (`Status` of `Status(..)`).
fn variant_name(v: &impl std::fmt::Debug) -> String {
    let d = format!("{v:?}");
    d.split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Sends `req` to the agent listening on `control` and returns what `take`
/// finds in the answer. An unreachable agent, a refusal and an answer of
/// another kind (`take` finds nothing) are errors that say which.
fn rpc<T>(
    control: &Path,
    req: &Request,
    take: impl FnOnce(Response) -> Option<T>,
) -> anyhow::Result<T> {
    let resp = control::request(control, req).map_err(|e| unreachable(control, &e))?;
    take_answer(req, resp, take)
}

/// [`rpc`]'s reading of the answer `resp` to `req`.
fn take_answer<T>(
    req: &Request,
    resp: Response,
    take: impl FnOnce(Response) -> Option<T>,
) -> anyhow::Result<T> {
    match resp {
        Response::Error { code, message } => Err(exit::Refused(format!(
            "the agent refused{}: {}",
            code.refusal_kind(),
            message.as_str()
        ))
        .into()),
        other => {
            let kind = variant_name(&other);
            take(other).with_context(|| {
                format!(
                    "the agent answered a {} request with {kind}: is it another version?",
                    variant_name(req)
                )
            })
        }
    }
}

/// Why the agent at `control` could not be asked, and what to do about it.
fn unreachable(control: &Path, e: &control::ControlChannelError) -> anyhow::Error {
    use std::io::ErrorKind;
    let io = match e {
        control::ControlChannelError::Io(io) => Some(io.kind()),
        _ => None,
    };
    let todo = match io {
        Some(ErrorKind::PermissionDenied) => {
            "run as root (sudo), as the agent's user, or as a member of its control_group"
        }
        Some(ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {
            "is `vmdedup serve` running? Name its socket with --control, --config or VMDEDUP_CONTROL"
        }
        _ => "is it a vmdedup agent of the same version?",
    };
    exit::Unreachable(format!(
        "cannot reach the agent at {}: {e} ({todo})",
        control.display()
    ))
    .into()
}

/// [`rpc`] with the expected answer written as a pattern:
/// `rpc!(control, Request::Vms, Response::Vms(v) => v)`.
macro_rules! rpc {
    ($control:expr, $req:expr, $pat:pat => $out:expr) => {
        rpc($control, &$req, |r| match r {
            $pat => Some($out),
            _ => None,
        })
    };
}

fn print_status(r: &StatusReport) {
    let c = &r.counters;
    let p = &r.pool;
    let used = format!(
        "{} of {} frames used (budget {}), {} file maps",
        p.frames_used, p.frames_total, p.frames_budget, p.file_maps
    );
    if r.domains.is_empty() {
        println!("pool: {used}, generation {}", p.generation);
    } else {
        println!("pools: {used}, in {} trust domain(s)", r.domains.len());
        println!(
            "{:<16} {:>10} {:>10} {:>10} {:>8} {:>10} {:>4} {:>8}",
            "DOMAIN", "FRAMES", "BUDGET", "USED", "MAPS", "SAVED_MIB", "VMS", "FS_FULL"
        );
        for d in &r.domains {
            println!(
                "{:<16} {:>10} {:>10} {:>10} {:>8} {:>10} {:>4} {:>8}",
                d.name.as_str(),
                d.pool.frames_total,
                d.pool.frames_budget,
                d.pool.frames_used,
                d.pool.file_maps,
                d.pool.bytes_saved >> 20,
                d.vms,
                d.filesystem_full
            );
        }
        for d in r.domains.iter().filter(|d| d.filesystem_full > 0) {
            println!(
                "domain {}: its pool's filesystem was full {} times while the pool had room: give the filesystem more memory (e.g. a larger /dev/shm) or lower pool_size/budget",
                d.name.as_str(),
                d.filesystem_full
            );
        }
    }
    println!(
        "saved: {} MiB ({} pages mapped by VMs, {} frames held)",
        p.bytes_saved >> 20,
        c.pages_mapped,
        p.frames_used
    );
    println!(
        "hints: {}  hits: {}  misses: {}  latency p50/p99: {}/{} us",
        c.hints,
        c.hits,
        c.hints.saturating_sub(c.hits),
        c.hint_latency_us_p50,
        c.hint_latency_us_p99
    );
    let m = &c.misses;
    println!(
        "misses by reason: loading {} identity {} not-found {} not-regular {} bad-path {} no-namespace {} pool-full {} too-large {} cut-off {} io {} over-quota {}",
        m.loading, m.identity_mismatch, m.not_found, m.not_regular, m.bad_path, m.no_namespace, m.pool_full, m.too_large, m.cut_off, m.io_error, m.over_quota
    );
    if !r.vms.is_empty() {
        println!(
            "{:<16} {:<12} {:>8} {:>8} {:>8} {:>10} {:>6}",
            "VM", "DOMAIN", "HINTS", "HITS", "MAPS", "PAGES", "STATE"
        );
        for v in &r.vms {
            println!(
                "{:<16} {:<12} {:>8} {:>8} {:>8} {:>10} {:>6}",
                v.name.as_str(),
                v.domain.as_str(),
                v.counters.hints,
                v.counters.hits,
                v.maps_held,
                v.counters.pages_mapped,
                if v.cut_off { "cut" } else { "ok" }
            );
        }
    }
}

/// `vmdedup serve`.
fn cmd_serve(
    config: ConfigArgs,
    ring: RingSizeArg,
    pollers: usize,
    park_timeout_ms: u64,
    guest: GuestChannelArgs,
    metrics: Option<std::net::SocketAddr>,
    check: bool,
) -> anyhow::Result<()> {
    // Everything is checked, and every problem reported at once, before
    // any file is created, adopted, locked or removed.
    let cfg = config.load_unchecked()?;
    let mut problems = cfg.problems();
    problems.extend(preflight::check(
        &cfg,
        &preflight::ServeOptions {
            ring_size: ring.ring_size,
            metrics,
            guest_socket_dir: guest.guest_socket_dir.clone(),
        },
    ));
    Problems::check(problems)?;
    if check {
        println!("ok");
        println!("{}", preflight::summary(&cfg));
        return Ok(());
    }
    if let Some(dir) = cfg.control_socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // One agent per set of paths: before anything is created, adopted or
    // removed (a stale control socket included). Held until the end.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Before anything is created: SIGHUP's default action would kill the
    // agent (a closed terminal, a `systemctl reload`); from here on it only
    // logs. SIGTERM is caught as early, so that it too stops cleanly.
    let (mut hup, mut term) = {
        let _rt = rt.enter();
        use tokio::signal::unix::{signal, SignalKind};
        (
            signal(SignalKind::hangup()).context("catching SIGHUP")?,
            signal(SignalKind::terminate()).context("catching SIGTERM")?,
        )
    };
    // systemd (`Type=notify`) hears READY=1 once everything listens.
    let notifier = Notifier::from_env().context("$NOTIFY_SOCKET")?;
    notifier.tell("STATUS=creating pools and ring regions");
    let lock = AgentLock::acquire(&cfg)?;
    let files = FileAccess::from_config(&cfg)?;
    let control_access = FileAccess::control(&cfg)?;
    let agent = Agent::start(
        cfg.clone(),
        AgentOptions {
            ring_size: ring.ring_size,
            pollers: PollerConfig {
                threads: pollers.max(1),
                park_timeout: Some(Duration::from_millis(park_timeout_ms.max(1))),
                ..PollerConfig::default()
            },
            generation: time_generation(),
        },
    )?;
    let group = control_access.group;
    let hook_agent = agent.clone();
    let reinstate_agent = agent.clone();
    let remove_agent = agent.clone();
    let attachment_agent = agent.clone();
    let rings_agent = agent.clone();
    let ctx = Arc::new(ControlContext {
        domains: agent.domains().clone(),
        vm_add: Some(Box::new(move |name: &str, domain: &str| {
            hook_agent.add_vm(name, domain).map_err(|e| e.to_string())
        })),
        vm_reinstate: Some(Box::new(move |name: &str| {
            reinstate_agent
                .reinstate_vm(name)
                .map_err(|e| e.to_string())
        })),
        vm_remove: Some(Box::new(move |name: &str| {
            remove_agent.remove_vm(name).map_err(|e| e.to_string())
        })),
        vm_attachment: Some(Box::new(move |name: &str| {
            attachment_agent.attachment(name).map_err(|e| e.to_string())
        })),
        vm_rings: Some(Box::new(move || rings_agent.ring_reports())),
    });
    let socket = cfg.control_socket.clone();
    let mut guest_sockets = Vec::new();
    let result = rt.block_on(async {
        // Guest channels first: once the host socket exists, everything is up.
        let mut cids = std::collections::HashMap::new();
        for vm in &cfg.vms {
            let Some(id) = agent.domains().vm_id(&vm.name) else { continue };
            if let Some(cid) = vm.cid {
                cids.insert(cid, id);
            }
            let path = match (&vm.guest_socket, &guest.guest_socket_dir) {
                (Some(p), _) => p.clone(),
                (None, Some(dir)) => dir.join(format!("{}.vsock_{}", vm.name, guest.vsock_port)),
                (None, None) => continue,
            };
            let l = control::bind_as(&path, &files, "guest socket").with_context(|| format!("binding {}", path.display()))?;
            tracing::info!(vm = vm.name, socket = %path.display(), "guest channel (hybrid vsock) ready");
            guest_sockets.push(path);
            tokio::spawn(control::serve(l, Arc::clone(&ctx), Caller::Vm(id), None));
        }
        if let Some(addr) = metrics {
            let l = vmdedup_host_agent::metrics::bind(addr).await.map_err(|e| anyhow::anyhow!("--metrics {addr}: cannot listen there: {e}"))?;
            let metrics_agent = agent.clone();
            let rings: vmdedup_host_agent::metrics::RingsSource = Arc::new(move || metrics_agent.ring_reports());
            tokio::spawn(vmdedup_host_agent::metrics::serve(l, agent.domains().clone(), rings));
        }
        if guest.af_vsock {
            // Bound here, so that READY=1 comes after it listens.
            let (port, c) = (guest.vsock_port, Arc::clone(&ctx));
            let bound = control::bind_vsock(port);
            tokio::spawn(async move {
                if let Err(e) = async { control::serve_vsock_on(bound?, c, cids).await }.await {
                    tracing::error!(error = %e, port, "AF_VSOCK listener failed (is vhost-vsock loaded?)");
                }
            });
        }
        let listener = control::bind_as(&socket, &control_access, "control socket").with_context(|| format!("binding {}", socket.display()))?;
        tracing::info!(socket = %socket.display(), "control socket ready");
        notifier.tell(&ready_message(&cfg, &socket));
        let serve = control::serve(listener, ctx, Caller::Host, group);
        tokio::pin!(serve);
        loop {
            tokio::select! {
                _ = &mut serve => break,
                _ = tokio::signal::ctrl_c() => {
                    tracing::info!("SIGINT: stopping");
                    break;
                }
                _ = term.recv() => {
                    tracing::info!("SIGTERM: stopping");
                    break;
                }
                _ = hup.recv() => tracing::warn!(
                    "SIGHUP: configuration reload is not supported; restart the agent"
                ),
            }
        }
        anyhow::Ok(())
    });
    notifier.tell("STOPPING=1\nSTATUS=stopping");
    agent.shutdown();
    let _ = std::fs::remove_file(&socket);
    for p in guest_sockets {
        let _ = std::fs::remove_file(p);
    }
    drop(lock);
    result
}

/// What `serve` tells the service manager once it serves: READY=1 and a
/// STATUS= line an operator sees in `systemctl status`.
fn ready_message(cfg: &AgentConfig, socket: &Path) -> String {
    format!(
        "READY=1\nSTATUS=serving {} VM(s), {} namespace(s); control socket {}",
        cfg.vms.len(),
        cfg.namespaces.len(),
        socket.display()
    )
}

/// `vmdedup status`.
fn cmd_status(control: &Path, json: bool) -> anyhow::Result<()> {
    let r = rpc!(control, Request::Status, Response::Status(r) => r)?;
    // An older agent does not know the request: its VMs get no "ring".
    let rings = rpc!(control, Request::VmRings, Response::VmRings(v) => v).unwrap_or_default();
    if json {
        let mut doc = stats::status_json(&r);
        stats::add_rings_json(&mut doc, &rings);
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print_status(&r);
        for g in &rings {
            println!(
                "ring {}: {}{}, {} doorbells received, {} interrupts sent",
                g.name.as_str(),
                if g.doorbell {
                    "ivshmem-doorbell"
                } else {
                    "ivshmem-plain (polled)"
                },
                match (g.doorbell, g.connected, g.guest_rings) {
                    (false, _, _) => "",
                    (true, false, _) => " (QEMU not connected: polled)",
                    (true, true, false) => " (the guest does not ring: polled)",
                    (true, true, true) => "",
                },
                g.doorbells,
                g.interrupts
            );
        }
    }
    Ok(())
}

/// `vmdedup vms`.
fn cmd_vms(control: &Path, json: bool) -> anyhow::Result<()> {
    let vms = rpc!(control, Request::Vms, Response::Vms(v) => v)?;
    if json {
        let list: Vec<serde_json::Value> = vms.iter().map(stats::vm_json).collect();
        // The same objects as status --json lists, ring included.
        let rings = rpc!(control, Request::VmRings, Response::VmRings(v) => v).unwrap_or_default();
        let mut doc = serde_json::json!({ "vms": list });
        stats::add_rings_json(&mut doc, &rings);
        println!("{}", serde_json::to_string_pretty(&doc["vms"])?);
        return Ok(());
    }
    println!(
        "{:<16} {:<12} {:>8} {:>8} {:>8} {:>6}",
        "VM", "DOMAIN", "HINTS", "HITS", "MAPS", "STATE"
    );
    for v in &vms {
        println!(
            "{:<16} {:<12} {:>8} {:>8} {:>8} {:>6}",
            v.name.as_str(),
            v.domain.as_str(),
            v.counters.hints,
            v.counters.hits,
            v.maps_held,
            if v.cut_off { "cut" } else { "ok" }
        );
    }
    Ok(())
}

/// `vmdedup files`.
fn cmd_files(control: &Path, ns: &str, offset: u32, limit: u16, json: bool) -> anyhow::Result<()> {
    warm_cmd::check_namespace(control, ns)?;
    let req = Request::Files {
        ns: bounded(ns, "namespace name too long")?,
        offset,
        limit,
    };
    let (total, files) = rpc!(control, req, Response::Files { total, files } => (total, files))?;
    if json {
        let list: Vec<serde_json::Value> = files
            .iter()
            .map(|f| {
                serde_json::json!({
                    "domain": f.domain.as_str(),
                    "size": f.size,
                    "pages": f.pages,
                    "path": f.path.as_str(),
                })
            })
            .collect();
        let doc =
            serde_json::json!({ "namespace": ns, "total": total, "offset": offset, "files": list });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!(
        "{total} files of {ns} in the trust domains' pools (showing {} from {offset}; a file several domains use is in each of their pools)",
        files.len()
    );
    for f in &files {
        println!(
            "{:<12} {:>10} {:>7}p  {}",
            f.domain.as_str(),
            f.size,
            f.pages,
            f.path.as_str()
        );
    }
    Ok(())
}

/// `vmdedup evict`.
fn cmd_evict(control: &Path, ns: &str, path: &str) -> anyhow::Result<()> {
    let req = Request::Evict {
        ns: bounded(ns, "namespace name too long")?,
        path: bounded(path, "path too long")?,
    };
    let (dropped, revoking) = rpc!(
        control,
        req,
        Response::Evicted { dropped, revoking } => (dropped, revoking)
    )
    .with_context(|| format!("evict {ns} {path}"))?;
    println!("evicted {ns}/{path}: {dropped} file maps dropped, {revoking} being revoked from VMs");
    Ok(())
}

/// `vmdedup vm add`.
fn cmd_vm_add(control: &Path, name: &str, domain: &str) -> anyhow::Result<()> {
    let req = Request::VmAdd {
        name: bounded(name, "VM name too long")?,
        domain: bounded(domain, "domain name too long")?,
    };
    let (name, ring_path) = rpc!(
        control,
        req,
        Response::VmAdded { name, ring_path } => (name, ring_path)
    )?;
    println!("{}: ring region {}", name.as_str(), ring_path.as_str());
    println!(
        "attach it with: vmdedup qemu-args {} --domain {domain} --config FILE",
        name.as_str()
    );
    Ok(())
}

/// `vmdedup vm reinstate`.
fn cmd_vm_reinstate(control: &Path, name: &str) -> anyhow::Result<()> {
    let req = Request::VmReinstate {
        name: bounded(name, "VM name too long")?,
    };
    let (name, was_cut_off) = rpc!(
        control,
        req,
        Response::VmReinstated { name, was_cut_off } => (name, was_cut_off)
    )?;
    if was_cut_off {
        println!("{}: reinstated; its ring starts over", name.as_str());
    } else {
        println!("{}: not cut off; nothing to do", name.as_str());
    }
    Ok(())
}

/// `vmdedup vm remove`.
fn cmd_vm_remove(control: &Path, name: &str) -> anyhow::Result<()> {
    let req = Request::VmRemove {
        name: bounded(name, "VM name too long")?,
    };
    let (name, maps) = rpc!(
        control,
        req,
        Response::VmRemoved { name, maps_released } => (name, maps_released)
    )?;
    println!(
        "{}: removed; {maps} file maps it held released",
        name.as_str()
    );
    Ok(())
}

/// `vmdedup config new`.
fn cmd_config_new(config: &ConfigArgs, out: Option<&Path>) -> anyhow::Result<()> {
    let text = config.load()?.to_toml()?;
    match out {
        Some(p) => std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))?,
        None => print!("{text}"),
    }
    Ok(())
}

/// `vmdedup region init`.
fn cmd_region_init(
    kind: KindArg,
    size: u64,
    generation: Option<u64>,
    path: &Path,
) -> anyhow::Result<()> {
    let kind = match kind {
        KindArg::Ring => RegionKind::Ring,
        KindArg::Pool => RegionKind::Pool,
    };
    let generation = generation.unwrap_or_else(time_generation);
    // Its errors name the file.
    region::init(path, kind, size, generation)?;
    let (kind, p) = region::inspect(path)?;
    println!(
        "{}: {:?} region, version {}, {} bytes, generation {}",
        path.display(),
        kind,
        p.version,
        p.region_size,
        p.generation
    );
    Ok(())
}

/// `vmdedup region show`.
fn cmd_stamp(dir: &Path, debugfs: bool) -> anyhow::Result<()> {
    use std::io::Write;
    use vmdedup_host_agent::namespace::fingerprint::{stamp_tree, StampOutput};
    let how = if debugfs {
        StampOutput::Debugfs
    } else {
        StampOutput::Xattr
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let report =
        stamp_tree(dir, how, &mut out).with_context(|| format!("stamping {}", dir.display()))?;
    out.flush()?;
    for p in &report.skipped {
        eprintln!("vmdedup stamp: not stamped: {}", p.display());
    }
    eprintln!(
        "vmdedup stamp: {} files, {} MiB fingerprinted, {} skipped",
        report.files,
        report.bytes >> 20,
        report.skipped.len()
    );
    Ok(())
}

fn cmd_region_show(path: &Path) -> anyhow::Result<()> {
    let (kind, p) = region::inspect(path)?;
    println!(
        "{}: {:?} region, version {}, header {} bytes, {} bytes, generation {}",
        path.display(),
        kind,
        p.version,
        p.header_size,
        p.region_size,
        p.generation
    );
    Ok(())
}

fn run() -> anyhow::Result<()> {
    match exit::parse_or_exit::<Cli>().command {
        Command::Serve {
            config,
            ring,
            pollers,
            park_timeout_ms,
            guest,
            metrics,
            check,
        } => cmd_serve(
            config,
            ring,
            pollers,
            park_timeout_ms,
            guest,
            metrics,
            check,
        ),
        Command::Status { control, json } => cmd_status(&control.socket()?, json),
        Command::Vms { control, json } => cmd_vms(&control.socket()?, json),
        Command::Files {
            control, ns, paths, ..
        } if paths => warm_cmd::cmd_files_paths(&control.socket()?, &ns),
        Command::Files {
            control,
            ns,
            offset,
            limit,
            json,
            ..
        } => cmd_files(&control.socket()?, &ns, offset, limit, json),
        Command::Warm {
            control,
            ns,
            from: Some(from),
            ..
        } => warm_cmd::cmd_warm_from(&control.socket()?, &ns, &from),
        Command::Warm {
            control, ns, path, ..
        } => warm_cmd::cmd_warm(&control.socket()?, &ns, &path),
        Command::Evict { control, ns, path } => cmd_evict(&control.socket()?, &ns, &path),
        Command::Vm(VmCommand::Add {
            control,
            name,
            domain,
        }) => cmd_vm_add(&control.socket()?, &name, &domain),
        Command::Vm(VmCommand::Reinstate { control, name }) => {
            cmd_vm_reinstate(&control.socket()?, &name)
        }
        Command::Vm(VmCommand::Remove { control, name }) => {
            cmd_vm_remove(&control.socket()?, &name)
        }
        Command::QemuArgs {
            name,
            domain,
            no_balloon,
            format,
            qemu_user,
            ring_size,
            config,
        } => cmd_qemu_args(
            &name,
            domain.as_deref(),
            !no_balloon,
            &config,
            ring_size,
            format,
            &qemu_user,
        ),
        Command::Config(ConfigCommand::New { config, out }) => {
            cmd_config_new(&config, out.as_deref())
        }
        Command::Region(RegionCommand::Init {
            kind,
            size,
            generation,
            domain,
            path,
        }) => {
            let path = match (&domain, kind) {
                (None, _) => path,
                (Some(d), KindArg::Pool) if vmdedup_host_agent::config::valid_domain(d) => {
                    vmdedup_host_agent::config::domain_pool_path(&path, d)
                }
                (Some(d), KindArg::Pool) => {
                    bail!("--domain {d:?}: use 1-32 of [A-Za-z0-9_.-], not \"lock\"")
                }
                (Some(_), KindArg::Ring) => bail!("--domain is for --kind pool"),
            };
            cmd_region_init(kind, size, generation, &path)
        }
        Command::Region(RegionCommand::Show { path }) => cmd_region_show(&path),
        Command::Stamp { debugfs, dir } => cmd_stamp(&dir, debugfs),
        Command::Generate(what) => generate::run(<Cli as clap::CommandFactory>::command(), what),
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VMDEDUP_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // How errors are reported, one convention for every crate here: an
    // error type's `Display` says all there is to say about it, its cause's
    // text included, and such a type exposes no `source()` (its cause field
    // is not called `source` and has no `#[source]`), so that the `{:#}`
    // chain below cannot print the cause twice; a variant that only wraps
    // another error is `#[error(transparent)]` (the only place for
    // `#[from]`). An error of a type that
    // breaks the rule is turned into text with `map_err(|e| anyhow!(..{e}))`,
    // never given `.context()`. The binary adds only what the library cannot
    // know (which option, which socket, what to do) as `context`. Every
    // message names the file, key, VM or namespace it is about, in words
    // (never a `Debug` rendering), and says what to do where there is
    // something to do; `host-agent/tests/cli_errors.rs` checks it.
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<Problems>().is_some() => {
            if let Some(Problems(all)) = e.downcast_ref::<Problems>() {
                for p in all {
                    eprintln!("vmdedup: error: {p}");
                }
            }
            ExitCode::from(EXIT_CONFIG)
        }
        Err(e) => {
            eprintln!("vmdedup: error: {e:#}");
            ExitCode::from(exit::code(&e))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;

    use vmdedup_protocol::control::{ErrorCode, MAX_FRAME_LEN};

    use super::*;

    /// An agent that answers one request with `resp`, on a socket in a
    /// directory of its own.
    fn one_answer(tag: &str, resp: Response) -> (PathBuf, std::thread::JoinHandle<()>) {
        let dir = std::env::temp_dir().join(format!("vmdedup-rpc-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("control.sock");
        let l = UnixListener::bind(&path).unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut len = [0u8; 4];
            s.read_exact(&mut len).unwrap();
            let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
            s.read_exact(&mut body).unwrap();
            let mut buf = vec![0u8; MAX_FRAME_LEN];
            let n = resp.encode(&mut buf).unwrap();
            s.write_all(&buf[..n]).unwrap();
        });
        (path, t)
    }

    #[test]
    fn rpc_returns_the_expected_answer() {
        let (path, t) = one_answer("ok", Response::Vms(heapless::Vec::new()));
        let vms = rpc!(&path, Request::Vms, Response::Vms(v) => v).unwrap();
        assert!(vms.is_empty());
        t.join().unwrap();
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn rpc_says_when_the_answer_is_of_another_kind() {
        let (path, t) = one_answer("kind", Response::Vms(heapless::Vec::new()));
        let e = rpc!(&path, Request::Status, Response::Status(r) => r).unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("answered a Status request with Vms"), "{msg}");
        t.join().unwrap();
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn rpc_passes_on_a_refusal_and_an_absent_agent() {
        let refusal = Response::Error {
            code: ErrorCode::NotFound,
            message: heapless::String::try_from("no VM called \"x\"").unwrap(),
        };
        let (path, t) = one_answer("refused", refusal);
        let req = Request::VmReinstate {
            name: heapless::String::try_from("x").unwrap(),
        };
        let msg = format!(
            "{:#}",
            rpc!(&path, req, Response::VmReinstated { was_cut_off, .. } => was_cut_off)
                .unwrap_err()
        );
        assert!(msg.starts_with("the agent refused: no VM called"), "{msg}");
        t.join().unwrap();
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
        let msg = format!(
            "{:#}",
            rpc!(&path, Request::Vms, Response::Vms(v) => v).unwrap_err()
        );
        assert!(msg.contains("cannot reach the agent at"), "{msg}");
        // The OS error once, not once per layer.
        assert_eq!(msg.matches("os error").count(), 1, "{msg}");
    }
}
