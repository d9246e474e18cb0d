//! `vmdedup qemu-args`: part of the `vmdedup` binary (a module of
//! `main.rs`), not of the library; what it prints is built by
//! [`vmdedup_host_agent::qemu`].

use anyhow::bail;
use clap::ValueEnum;
use vmdedup_host_agent::qemu;

use crate::{ConfigArgs, ControlArg};

/// `serve --ring-size` when not given.
const DEFAULT_RING_SIZE: u64 = 1 << 20;

/// `qemu-args --format`.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum QemuFormat {
    /// One QEMU argument per line.
    Lines,
    /// The QEMU arguments on one line, quoted for a POSIX shell.
    Shell,
    /// A JSON document: the arguments, and the paths and sizes.
    Json,
    /// libvirt domain XML: `<shmem>`, `<memballoon>`, `<qemu:commandline>`.
    Libvirt,
}

/// `vmdedup qemu-args`.
pub(crate) fn cmd_qemu_args(
    name: &str,
    domain: Option<&str>,
    balloon: bool,
    config: &ConfigArgs,
    ring_size: Option<u64>,
    format: QemuFormat,
    qemu_user: &str,
) -> anyhow::Result<()> {
    // The name becomes part of a file path: the same rule as `vm add`.
    if !vmdedup_host_agent::config::valid_vm_name(name) {
        bail!("VM name {name:?}: use 1-32 of [A-Za-z0-9_.-], not \".\" or \"..\"");
    }
    if let Some(d) = domain {
        if !vmdedup_host_agent::config::valid_domain(d) {
            bail!("--domain {d:?}: use 1-32 of [A-Za-z0-9_.-], not \"lock\"");
        }
    }
    let (a, from_agent, source) = qemu_attachment(name, domain, config, ring_size)?;
    let a = if config.no_doorbell {
        a.without_doorbell()
    } else {
        a
    };
    match format {
        QemuFormat::Lines => {
            for arg in a.qemu_args(balloon) {
                println!("{arg}");
            }
        }
        QemuFormat::Shell => {
            let line: Vec<String> = a
                .qemu_args(balloon)
                .iter()
                .map(|s| qemu::shell_quote(s))
                .collect();
            println!("{}", line.join(" "));
        }
        QemuFormat::Json => {
            let kind = if from_agent { "agent" } else { "config" };
            println!("{}", serde_json::to_string_pretty(&a.json(balloon, kind))?);
        }
        QemuFormat::Libvirt => {
            let parts = a.libvirt(balloon);
            print!("{}", parts.text());
            for n in &parts.notes {
                eprintln!("vmdedup: qemu-args: {n}");
            }
            eprintln!(
                "vmdedup: qemu-args: QEMU runs as {qemu_user} under libvirt: give it the ring (read-write) and the pool (read-only) before the VM starts, with\n  {}\nor set file_owner = \"{qemu_user}\" in the agent's configuration; AppArmor and SELinux need rules too (docs/libvirt.md)",
                a.ownership_commands(qemu_user).join("\n  ")
            );
        }
    }
    eprintln!("vmdedup: qemu-args: {name}'s paths and sizes from {source}");
    match &a.doorbell {
        Some(sock) => eprintln!(
            "vmdedup: qemu-args: {name}'s ring is an ivshmem-doorbell device served by the agent at {} (--no-doorbell: ivshmem-plain)",
            sock.display()
        ),
        None => eprintln!(
            "vmdedup: qemu-args: {name}'s ring is an ivshmem-plain device, polled (no doorbell)"
        ),
    }
    Ok(())
}

/// Where VM `name` attaches, whether the running agent said so (else the
/// configuration and options did: see `qemu-args --help`), and a sentence
/// that says which.
fn qemu_attachment(
    name: &str,
    domain: Option<&str>,
    config: &ConfigArgs,
    ring_size: Option<u64>,
) -> anyhow::Result<(qemu::Attachment, bool, String)> {
    let socket = ControlArg {
        control: config.control.clone(),
        config: config.config.clone(),
    }
    .socket()?;
    let described = config.config.is_some()
        || config.pool.is_some()
        || config.pool_size.is_some()
        || config.ring_dir.is_some()
        || ring_size.is_some();
    let why_not = match qemu::ask_agent(&socket, name) {
        Ok(a) => {
            // Options may only repeat what the agent serves: a VM attached
            // to other files than the agent's would not be served.
            let mut differ = Vec::new();
            if let Some(d) = domain.filter(|d| *d != a.domain) {
                differ.push(format!(
                    "--domain {d}: the agent has {name} in {}",
                    a.domain
                ));
            }
            if let Some(r) = ring_size.filter(|r| *r != a.ring_size) {
                differ.push(format!(
                    "--ring-size {r}: the agent's ring is {} bytes",
                    a.ring_size
                ));
            }
            if let Some(s) = config.pool_size.filter(|s| *s != a.pool_size) {
                differ.push(format!(
                    "--pool-size {s}: the agent's pool is {} bytes",
                    a.pool_size
                ));
            }
            if let Some(p) = &config.pool {
                let want = vmdedup_host_agent::config::domain_pool_path(p, &a.domain);
                if want != a.pool_path {
                    differ.push(format!(
                        "--pool {}: the agent's pool is {}",
                        p.display(),
                        a.pool_path.display()
                    ));
                }
            }
            if let Some(dir) = &config.ring_dir {
                if dir.join(format!("vmdedup-{name}.ring")) != a.ring_path {
                    differ.push(format!(
                        "--ring-dir {}: the agent's ring is {}",
                        dir.display(),
                        a.ring_path.display()
                    ));
                }
            }
            if !differ.is_empty() {
                bail!(
                    "the running agent at {} serves {name} otherwise ({}); drop those options",
                    socket.display(),
                    differ.join("; ")
                );
            }
            return Ok((
                a,
                true,
                format!("the running agent at {}", socket.display()),
            ));
        }
        Err(e @ qemu::AskError::NoSuchVm { .. }) => {
            bail!("{e}: add it with `vmdedup vm add {name}`, or attach a VM it serves")
        }
        Err(e @ qemu::AskError::Refused { .. }) => return Err(e.into()),
        Err(e) => e,
    };
    if !described {
        bail!(
            "{why_not}; start `vmdedup serve`, point --control at it, or give --config FILE to take the paths from the configuration"
        );
    }
    let cfg = config.load()?;
    if let Some(d) = domain {
        let configured = cfg.vm_domain(name);
        if cfg.vms.iter().any(|v| v.name == name) && configured != d {
            bail!("VM {name:?} is in domain {configured:?} in the configuration, not {d:?}");
        }
    }
    let ring_path = cfg.ring_path(name);
    let (ring, ring_from) = match ring_size {
        Some(r) => (r, "--ring-size".to_string()),
        None => match std::fs::metadata(&ring_path) {
            Ok(m) if m.len() > 0 => (m.len(), format!("the size of {}", ring_path.display())),
            _ => (DEFAULT_RING_SIZE, "serve's default ring size".to_string()),
        },
    };
    let a = qemu::Attachment::from_config(&cfg, name, domain, ring);
    let what = match &config.config {
        Some(f) => format!("the configuration {}", f.display()),
        None => "the options".to_string(),
    };
    Ok((
        a,
        false,
        format!("{what}, the ring's size from {ring_from} ({why_not})"),
    ))
}
