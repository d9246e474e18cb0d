//! What a VM's QEMU needs to attach to the agent (`vmdedup qemu-args`): its
//! ring region (read-write) and its trust domain's pool (read-only), as
//! the running agent serves them ([`Attachment`], asked over the control
//! socket with [`ask_agent`]) or as a configuration describes them, printed
//! as QEMU arguments, JSON, or the parts of a libvirt domain XML.

use std::path::{Path, PathBuf};

use vmdedup_protocol::control::{bounded_str, AttachmentReport, ErrorCode, Request, Response};

use crate::config::{AgentConfig, BALLOON_QEMU_ARGS};

/// The files one VM attaches and their sizes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    /// The VM.
    pub vm: String,
    /// Its trust domain.
    pub domain: String,
    /// Its ring region file.
    pub ring_path: PathBuf,
    /// The ring region's size in bytes.
    pub ring_size: u64,
    /// Its trust domain's pool file.
    pub pool_path: PathBuf,
    /// The pool's size in bytes.
    pub pool_size: u64,
    /// The agent's ivshmem server socket for the ring when the ring is an
    /// `ivshmem-doorbell` device; `None`: `ivshmem-plain`.
    pub doorbell: Option<PathBuf>,
}

/// Interrupt vectors of the ring's `ivshmem-doorbell` device.
pub const DOORBELL_VECTORS: usize = crate::ivshmem::VECTORS;

/// The directory whose files libvirt's `<shmem>` names (`/dev/shm/NAME`).
pub const LIBVIRT_SHMEM_DIR: &str = "/dev/shm";
/// The smallest `<shmem>` size libvirt accepts.
pub const LIBVIRT_SHMEM_MIN: u64 = 1 << 20;
/// The namespace of libvirt's QEMU-specific elements.
pub const LIBVIRT_QEMU_NS: &str = "http://libvirt.org/schemas/domain/qemu/1.0";

/// A path as the value of a QEMU `key=value,...` option: a comma is doubled,
/// or QEMU would read the rest as another option.
pub fn qemu_opt_path(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

/// `s` quoted for a POSIX shell (as is when nothing in it is special).
pub fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"@%+=:,./_-".contains(&b));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// `s` as an XML attribute value between single quotes.
fn xml_attr(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

impl Attachment {
    /// VM `vm` as `cfg` describes it: its domain is `domain`, else the
    /// configured one; the ring is `ring_size` bytes (the ring size is an
    /// option of `vmdedup serve`, not part of the configuration).
    pub fn from_config(cfg: &AgentConfig, vm: &str, domain: Option<&str>, ring_size: u64) -> Self {
        let domain = domain.unwrap_or_else(|| cfg.vm_domain(vm)).to_string();
        Attachment {
            vm: vm.to_string(),
            ring_path: cfg.ring_path(vm),
            ring_size,
            pool_path: cfg.pool_path(&domain),
            pool_size: cfg.domain_pool_size(&domain),
            doorbell: cfg.doorbell.then(|| cfg.doorbell_path(vm)),
            domain,
        }
    }

    /// The same attachment with the ring as `ivshmem-plain` (`qemu-args
    /// --no-doorbell`): the agent still serves it, polled with its short
    /// park timeout.
    pub fn without_doorbell(mut self) -> Self {
        self.doorbell = None;
        self
    }

    /// Which device the ring is, for humans.
    pub fn ring_device(&self) -> &'static str {
        if self.doorbell.is_some() {
            "ivshmem-doorbell"
        } else {
            "ivshmem-plain"
        }
    }

    /// As the agent reported it. The ring is an `ivshmem-doorbell` device
    /// when the agent's ivshmem socket for the VM is beside the ring region
    /// (the agent makes it only with `doorbell = true`, and removes it
    /// otherwise).
    pub fn from_report(r: &AttachmentReport) -> Self {
        let ring_path = PathBuf::from(r.ring_path.as_str());
        let doorbell = ring_path
            .parent()
            .map(|d| crate::ivshmem::socket_path(d, r.name.as_str()))
            .filter(|p| {
                use std::os::unix::fs::FileTypeExt;
                std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket())
            });
        Attachment {
            doorbell,
            vm: r.name.to_string(),
            domain: r.domain.to_string(),
            ring_path,
            ring_size: r.ring_size,
            pool_path: PathBuf::from(r.pool_path.as_str()),
            pool_size: r.pool_size,
        }
    }

    /// As the agent reports it; a path too long for the message is an
    /// error, never cut.
    pub fn to_report(&self) -> Result<AttachmentReport, String> {
        let path = |p: &Path| -> Result<_, String> {
            let s = p.display().to_string();
            let b = bounded_str(&s);
            if b.len() == s.len() {
                Ok(b)
            } else {
                Err(format!(
                    "{s}: longer than a control message may carry ({} bytes)",
                    vmdedup_protocol::control::MAX_PATH
                ))
            }
        };
        Ok(AttachmentReport {
            name: bounded_str(&self.vm),
            domain: bounded_str(&self.domain),
            ring_path: path(&self.ring_path)?,
            ring_size: self.ring_size,
            pool_path: path(&self.pool_path)?,
            pool_size: self.pool_size,
        })
    }

    /// The ring's QEMU arguments: with a doorbell, the agent's socket as a
    /// chardev and the ivshmem-doorbell device over it (no `reconnect=`:
    /// QEMU 7.2 then connects in the background while the device waits for
    /// the memory in the foreground, and never starts; after an agent
    /// restart the ring works on, polled, until the VM's QEMU restarts); else a file memory backend shared
    /// read-write and the ivshmem-plain device over it.
    fn ring_args(&self) -> [String; 4] {
        if let Some(sock) = &self.doorbell {
            return [
                "-chardev".into(),
                format!("socket,id=vmdedup-ring,path={}", qemu_opt_path(sock)),
                "-device".into(),
                format!("ivshmem-doorbell,chardev=vmdedup-ring,vectors={DOORBELL_VECTORS}"),
            ];
        }
        [
            "-object".into(),
            format!(
                "memory-backend-file,id=vmdedup-ring,mem-path={},size={},share=on",
                qemu_opt_path(&self.ring_path),
                self.ring_size
            ),
            "-device".into(),
            "ivshmem-plain,memdev=vmdedup-ring".into(),
        ]
    }

    /// The pool's QEMU arguments: the same, read-only.
    fn pool_args(&self) -> [String; 4] {
        [
            "-object".into(),
            format!(
                "memory-backend-file,id=vmdedup-pool,mem-path={},size={},share=on,readonly=on",
                qemu_opt_path(&self.pool_path),
                self.pool_size
            ),
            "-device".into(),
            "ivshmem-plain,memdev=vmdedup-pool".into(),
        ]
    }

    /// The QEMU arguments of the ring and the pool, one per element.
    pub fn region_args(&self) -> Vec<String> {
        let mut a = self.ring_args().to_vec();
        a.extend(self.pool_args());
        a
    }

    /// [`region_args`](Self::region_args), and with `balloon` the
    /// virtio-balloon device with free page reporting.
    pub fn qemu_args(&self, balloon: bool) -> Vec<String> {
        let mut a = self.region_args();
        if balloon {
            a.extend(BALLOON_QEMU_ARGS.map(String::from));
        }
        a
    }

    /// The JSON document of `--format json`; `source` says where the
    /// figures come from (`agent` or `config`).
    pub fn json(&self, balloon: bool, source: &str) -> serde_json::Value {
        serde_json::json!({
            "vm": self.vm,
            "domain": self.domain,
            "source": source,
            "ring": {
                "path": self.ring_path.display().to_string(),
                "size": self.ring_size,
                "device": self.ring_device(),
                "doorbell_socket": self.doorbell.as_ref().map(|p| p.display().to_string()),
            },
            "pool": {
                "path": self.pool_path.display().to_string(),
                "size": self.pool_size,
                "readonly": true,
            },
            "balloon": balloon,
            "args": self.qemu_args(balloon),
        })
    }

    /// Whether libvirt's `<shmem>` can attach the ring: it names a file
    /// `/dev/shm/NAME` and takes sizes from 1 MiB (a power of two).
    pub fn ring_fits_shmem(&self) -> bool {
        self.ring_path.parent() == Some(Path::new(LIBVIRT_SHMEM_DIR))
            && self.ring_path.file_name().is_some()
            && self.ring_size >= LIBVIRT_SHMEM_MIN
            && self.ring_size.is_power_of_two()
    }

    /// The parts of a libvirt domain XML (`--format libvirt`): the devices
    /// (the ring's `<shmem>` when it fits, the balloon) and the
    /// `<qemu:commandline>` that attaches the pool (`<shmem>` has no
    /// read-only option) and a ring `<shmem>` cannot name.
    pub fn libvirt(&self, balloon: bool) -> LibvirtParts {
        let mut devices = String::new();
        let mut args: Vec<String> = Vec::new();
        let mut notes = Vec::new();
        if let Some(sock) = &self.doorbell {
            // The agent is the ivshmem server: libvirt's <shmem> names its
            // socket; QEMU gets the ring memory from it.
            devices.push_str(&format!(
                "<shmem name='{}'>\n  <model type='ivshmem-doorbell'/>\n  <server path='{}'/>\n  <msi vectors='{DOORBELL_VECTORS}'/>\n</shmem>\n",
                xml_attr(&format!("vmdedup-{}", self.vm)),
                xml_attr(&sock.display().to_string()),
            ));
        } else if self.ring_fits_shmem() {
            let name = self
                .ring_path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            devices.push_str(&format!(
                "<shmem name='{}'>\n  <model type='ivshmem-plain'/>\n  <size unit='B'>{}</size>\n</shmem>\n",
                xml_attr(&name),
                self.ring_size
            ));
        } else {
            devices.push_str(
                "<!-- The ring region is attached in qemu:commandline: libvirt's shmem only names files in /dev/shm of at least 1 MiB. -->\n",
            );
            notes.push(format!(
                "the ring region {} ({} bytes) is not a file of {LIBVIRT_SHMEM_DIR} of at least 1 MiB, which <shmem> requires: it is attached through <qemu:commandline> too",
                self.ring_path.display(),
                self.ring_size
            ));
            args.extend(self.ring_args());
        }
        if balloon {
            devices.push_str("<memballoon model='virtio' freePageReporting='on'/>\n");
        }
        args.extend(self.pool_args());
        let mut commandline = format!("<qemu:commandline xmlns:qemu='{LIBVIRT_QEMU_NS}'>\n");
        for a in &args {
            commandline.push_str(&format!("  <qemu:arg value='{}'/>\n", xml_attr(a)));
        }
        commandline.push_str("</qemu:commandline>\n");
        LibvirtParts {
            devices,
            commandline,
            notes,
        }
    }

    /// The commands that give the ring (read-write) and the pool
    /// (read-only) to `user`, the user QEMU runs as.
    pub fn ownership_commands(&self, user: &str) -> Vec<String> {
        let ring = shell_quote(&self.ring_path.display().to_string());
        let pool = shell_quote(&self.pool_path.display().to_string());
        let user = shell_quote(user);
        let mut c = vec![
            format!("chown {user} {ring} {pool}"),
            format!("chmod 0600 {ring}"),
            format!("chmod 0400 {pool}"),
        ];
        if let Some(sock) = &self.doorbell {
            let sock = shell_quote(&sock.display().to_string());
            c.push(format!("chown {user} {sock}"));
            c.push(format!("chmod 0600 {sock}"));
        }
        c
    }
}

/// The parts of a libvirt domain XML a VM needs ([`Attachment::libvirt`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LibvirtParts {
    /// Elements for `<devices>`: the ring's `<shmem>` and the balloon.
    pub devices: String,
    /// The `<qemu:commandline>` element (last child of `<domain>`), with
    /// its namespace declared on itself.
    pub commandline: String,
    /// What the operator should know (printed on standard error).
    pub notes: Vec<String>,
}

impl LibvirtParts {
    /// Everything to print, with a comment that says where each part goes.
    pub fn text(&self) -> String {
        format!(
            "<!-- Inside <devices>: -->\n{}<!-- The last child of <domain>: -->\n{}",
            self.devices, self.commandline
        )
    }
}

/// Why the running agent did not say where a VM attaches.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    /// No agent answers on the socket.
    #[error("no agent answers at {path}: {source}")]
    Unreachable {
        /// The control socket.
        path: PathBuf,
        /// Why.
        source: crate::control::ControlChannelError,
    },
    /// The agent has no such VM.
    #[error("the agent at {path} has no VM {vm:?}")]
    NoSuchVm {
        /// The control socket.
        path: PathBuf,
        /// The VM.
        vm: String,
    },
    /// The agent does not know the request (an older agent).
    #[error("the agent at {path} does not answer this request (an older version?)")]
    TooOld {
        /// The control socket.
        path: PathBuf,
    },
    /// The agent refused for another reason.
    #[error("the agent at {path} refused: {message}")]
    Refused {
        /// The control socket.
        path: PathBuf,
        /// What it said.
        message: String,
    },
}

/// Asks the agent on `socket` where VM `vm` attaches.
pub fn ask_agent(socket: &Path, vm: &str) -> Result<Attachment, AskError> {
    let req = Request::VmAttachment {
        name: bounded_str(vm),
    };
    let path = socket.to_path_buf();
    match crate::control::request(socket, &req) {
        Err(source) => Err(AskError::Unreachable { path, source }),
        Ok(Response::VmAttachment(r)) => Ok(Attachment::from_report(&r)),
        Ok(Response::Error {
            code: ErrorCode::NotFound,
            ..
        }) => Err(AskError::NoSuchVm {
            path,
            vm: vm.to_string(),
        }),
        Ok(Response::Error {
            code: ErrorCode::BadRequest,
            ..
        }) => Err(AskError::TooOld { path }),
        Ok(Response::Error { message, .. }) => Err(AskError::Refused {
            path,
            message: message.to_string(),
        }),
        Ok(_) => Err(AskError::TooOld { path }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attachment(ring_dir: &str, ring_size: u64) -> Attachment {
        Attachment {
            vm: "vm1".into(),
            domain: "default".into(),
            ring_path: Path::new(ring_dir).join("vmdedup-vm1.ring"),
            ring_size,
            pool_path: "/dev/shm/a,b'<&>.pool".into(),
            pool_size: 64 << 20,
            doorbell: None,
        }
    }

    #[test]
    fn a_doorbell_ring_is_an_ivshmem_doorbell_device_on_the_agents_socket() {
        let mut a = attachment("/run/x", 1 << 20);
        a.doorbell = Some(PathBuf::from("/run/x/vmdedup-vm1.doorbell"));
        let args = a.qemu_args(false);
        assert_eq!(
            &args[..4],
            [
                "-chardev",
                "socket,id=vmdedup-ring,path=/run/x/vmdedup-vm1.doorbell",
                "-device",
                "ivshmem-doorbell,chardev=vmdedup-ring,vectors=1",
            ]
        );
        assert!(!args.iter().any(|x| x.contains("vmdedup-vm1.ring")));
        // The pool stays ivshmem-plain, read-only.
        assert!(args
            .iter()
            .any(|x| x == "ivshmem-plain,memdev=vmdedup-pool"));
        let x = a.libvirt(false);
        assert!(
            x.devices.contains("<model type='ivshmem-doorbell'/>"),
            "{x:?}"
        );
        assert!(x
            .devices
            .contains("<server path='/run/x/vmdedup-vm1.doorbell'/>"));
        assert!(!x.commandline.contains("vmdedup-ring"));
        assert_eq!(
            a.json(false, "config")["ring"]["device"],
            "ivshmem-doorbell"
        );
        let plain = a.without_doorbell();
        assert_eq!(
            plain.qemu_args(false)[3],
            "ivshmem-plain,memdev=vmdedup-ring"
        );
    }

    #[test]
    fn shell_quoting_keeps_plain_words_and_quotes_the_rest() {
        assert_eq!(
            shell_quote("ivshmem-plain,memdev=x"),
            "ivshmem-plain,memdev=x"
        );
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn libvirt_names_a_ring_in_dev_shm_with_shmem() {
        let a = attachment("/dev/shm", 1 << 20);
        let x = a.libvirt(true);
        assert!(
            x.devices.contains("<shmem name='vmdedup-vm1.ring'>"),
            "{x:?}"
        );
        assert!(x.devices.contains("<size unit='B'>1048576</size>"));
        assert!(x.devices.contains("freePageReporting='on'"));
        assert!(!x.commandline.contains("vmdedup-ring"));
        // Commas doubled for QEMU, then the XML escapes.
        assert!(
            x.commandline
                .contains("mem-path=/dev/shm/a,,b&apos;&lt;&amp;&gt;.pool,"),
            "{}",
            x.commandline
        );
        assert!(x.notes.is_empty());
    }

    #[test]
    fn libvirt_attaches_other_rings_on_the_command_line() {
        for (dir, size) in [("/run/vmdedup", 1 << 20), ("/dev/shm", 64 << 10)] {
            let x = attachment(dir, size).libvirt(false);
            assert!(!x.devices.contains("<shmem"), "{dir} {size}");
            assert!(!x.devices.contains("memballoon"));
            assert!(x.commandline.contains("id=vmdedup-ring"), "{dir} {size}");
            assert_eq!(x.notes.len(), 1);
        }
    }

    #[test]
    fn paths_too_long_for_a_message_are_refused() {
        let mut a = attachment("/dev/shm", 1 << 20);
        assert!(a.to_report().is_ok());
        a.pool_path = PathBuf::from(format!("/{}", "p".repeat(600)));
        assert!(a.to_report().is_err());
    }
}
