//! The control channel: request/response frames
//! ([`vmdedup_protocol::control`]) over stream sockets.
//!
//! - The host socket (CLI): mode 0600, or 0660 group-owned by a configured
//!   group; a peer must be root, the agent's own user, or in that group
//!   as its primary group or a supplementary one (checked again with
//!   `SO_PEERCRED` and the user database's `getgrouplist`); another peer is
//!   answered with [`ErrorCode::Denied`] saying why. It may do everything.
//! - Guest sockets: one listener per VM (hybrid vsock: the Unix socket
//!   `<uds>_<port>` that vhost-user-vsock / Firecracker connect for that VM).
//!   The VM is the one the listener belongs to, never what a message says;
//!   it sees its own stats and the namespaces it may use, may warm those,
//!   and nothing else. Mode 0600, or 0660 owned by the configured
//!   `file_owner`/`file_group` ([`crate::hostfile::FileAccess`]).
//! - AF_VSOCK ([`serve_vsock`], tokio-vsock) for hosts with vhost-vsock: the
//!   VM is the one whose configured CID the kernel reports for the peer.
//!
//! Each listener serves at most [`MAX_CONNECTIONS_PER_LISTENER`] connections
//! at once, so a VM that opens connections in a loop only slows itself.
//!
//! A frame that is oversized, truncated, of another version or malformed is
//! answered with [`ErrorCode::BadRequest`] and the connection is closed.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use vmdedup_protocol::control::{
    bounded_str, frame_body_len, ControlError, ErrorCode, Request, Response, CONTROL_VERSION,
    MAX_FILES, MAX_FRAME_LEN, MAX_VMS,
};

use crate::domain::Domains;
use crate::store::VmId;

/// Who sent a request, as told by the transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    /// The host CLI (control socket).
    Host,
    /// A guest, by the listener it connected to.
    Vm(VmId),
}

/// Creates a VM's ring region and registers it; returns the ring path. Given
/// by the binary (the ring layout is the ring layer's).
pub type VmAddHook = dyn Fn(&str, &str) -> Result<PathBuf, String> + Send + Sync;

/// Starts a cut-off VM's ring over and serves it again; returns whether it
/// was cut off. Given by the binary (it owns the rings).
pub type VmReinstateHook = dyn Fn(&str) -> Result<bool, String> + Send + Sync;

/// Forgets a VM that is gone and frees what it held; returns how many file
/// maps it still held. Given by the binary (it owns the rings).
pub type VmRemoveHook = dyn Fn(&str) -> Result<u32, String> + Send + Sync;

/// Where a VM attaches (`qemu-args`). Given by the binary (it owns the
/// rings).
pub type VmAttachmentHook = dyn Fn(&str) -> Result<crate::qemu::Attachment, String> + Send + Sync;

/// Every VM's ring device and wake-ups. Given by the binary (it owns the
/// rings).
pub type VmRingsHook = dyn Fn() -> Vec<vmdedup_protocol::control::RingReport> + Send + Sync;

/// What requests act on.
pub struct ControlContext {
    /// The trust domains: a VM's requests go to its own domain's service,
    /// the host's to all of them.
    pub domains: Domains,
    /// `vm add`; `None`: refused.
    pub vm_add: Option<Box<VmAddHook>>,
    /// `vm reinstate`; `None`: refused.
    pub vm_reinstate: Option<Box<VmReinstateHook>>,
    /// `vm remove`; `None`: refused.
    pub vm_remove: Option<Box<VmRemoveHook>>,
    /// `qemu-args`; `None`: refused.
    pub vm_attachment: Option<Box<VmAttachmentHook>>,
    /// Every VM's ring device and wake-ups (`status`); `None`: refused.
    pub vm_rings: Option<Box<VmRingsHook>>,
}

impl std::fmt::Debug for ControlContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlContext").finish_non_exhaustive()
    }
}

/// Control-channel errors.
#[derive(Debug, thiserror::Error)]
pub enum ControlChannelError {
    /// Socket I/O (shown as the OS error alone: it is its own source, so
    /// a chain printed with `{:#}` names it once).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A frame could not be encoded or decoded.
    #[error("{0}")]
    Frame(ControlError),
    /// The socket could not be made (something else is at its path, an
    /// unknown group, ...).
    #[error(transparent)]
    HostFile(#[from] crate::hostfile::HostFileError),
}

/// Answers one request. Pure dispatch: no I/O besides what the service does.
pub fn handle_request(ctx: &ControlContext, caller: Caller, req: Request) -> Response {
    let svc = &ctx.domains;
    let vm = match caller {
        Caller::Host => None,
        Caller::Vm(v) => Some(v),
    };
    match req {
        Request::Status => Response::Status(svc.status(vm)),
        Request::Vms => Response::Vms(svc.vms(vm).into_iter().collect()),
        Request::Namespaces => Response::Namespaces(svc.namespaces(vm).into_iter().collect()),
        Request::Files { ns, offset, limit } => {
            let (total, files) =
                svc.files(&ns, vm, offset as usize, (limit as usize).min(MAX_FILES));
            Response::Files {
                total,
                files: files.into_iter().collect(),
            }
        }
        Request::Warm { ns, path } => match svc.warm(&ns, path.as_bytes(), vm, &mut |_| {}) {
            Ok(p) => Response::Warmed {
                files: p.files_done - p.skipped,
                pages: p.pages,
                skipped: p.skipped,
            },
            Err(e @ crate::service::ServiceError::Busy) => {
                Response::error(ErrorCode::Denied, &e.to_string())
            }
            Err(e) => Response::error(ErrorCode::NotFound, &e.to_string()),
        },
        Request::Evict { ns, path } => {
            if vm.is_some() {
                return Response::error(ErrorCode::Denied, "evict is for the host only");
            }
            match svc.evict(&ns, &path) {
                Ok((dropped, revoking)) => Response::Evicted { dropped, revoking },
                Err(e) => Response::error(ErrorCode::NotFound, &e.to_string()),
            }
        }
        Request::VmAdd { name, domain } => {
            if vm.is_some() {
                return Response::error(ErrorCode::Denied, "vm add is for the host only");
            }
            let Some(hook) = &ctx.vm_add else {
                return Response::error(ErrorCode::Denied, "vm add is not enabled");
            };
            let domain = if domain.is_empty() {
                crate::namespace::DEFAULT_DOMAIN
            } else {
                domain.as_str()
            };
            match hook(&name, domain) {
                Ok(ring) => Response::VmAdded {
                    name,
                    ring_path: bounded_str(&ring.display().to_string()),
                },
                Err(e) => Response::error(ErrorCode::Exists, &e),
            }
        }
        Request::VmReinstate { name } => {
            if vm.is_some() {
                return Response::error(ErrorCode::Denied, "vm reinstate is for the host only");
            }
            let Some(hook) = &ctx.vm_reinstate else {
                return Response::error(ErrorCode::Denied, "vm reinstate is not enabled");
            };
            match hook(&name) {
                Ok(was_cut_off) => Response::VmReinstated { name, was_cut_off },
                Err(e) => Response::error(ErrorCode::NotFound, &e),
            }
        }
        Request::VmRemove { name } => {
            if vm.is_some() {
                return Response::error(ErrorCode::Denied, "vm remove is for the host only");
            }
            let Some(hook) = &ctx.vm_remove else {
                return Response::error(ErrorCode::Denied, "vm remove is not enabled");
            };
            match hook(&name) {
                Ok(maps_released) => Response::VmRemoved {
                    name,
                    maps_released,
                },
                Err(e) => Response::error(ErrorCode::NotFound, &e),
            }
        }
        Request::VmAttachment { name } => {
            if vm.is_some() {
                return Response::error(ErrorCode::Denied, "qemu-args is for the host only");
            }
            let Some(hook) = &ctx.vm_attachment else {
                return Response::error(ErrorCode::Denied, "qemu-args is not enabled");
            };
            match hook(&name) {
                Ok(a) => match a.to_report() {
                    Ok(r) => Response::VmAttachment(r),
                    Err(e) => Response::error(ErrorCode::Internal, &e),
                },
                Err(e) => Response::error(ErrorCode::NotFound, &e),
            }
        }
        Request::VmRings => {
            if vm.is_some() {
                return Response::error(ErrorCode::Denied, "ring reports are for the host only");
            }
            let Some(hook) = &ctx.vm_rings else {
                return Response::error(ErrorCode::Denied, "ring reports are not enabled");
            };
            Response::VmRings(hook().into_iter().take(MAX_VMS).collect())
        }
    }
}

/// `resp` as a frame of `version`, the version its request came in.
fn encode(resp: &Response, version: u16) -> Vec<u8> {
    let mut buf = vec![0u8; MAX_FRAME_LEN];
    match resp.encode_version(version, &mut buf) {
        Ok(n) => buf.truncate(n),
        Err(e) => {
            let n = Response::error(ErrorCode::Internal, &e.to_string())
                .encode_version(version, &mut buf)
                .unwrap_or(0);
            buf.truncate(n);
        }
    }
    buf
}

/// Most connections one listener (one VM, or the host CLI) serves at once.
pub const MAX_CONNECTIONS_PER_LISTENER: usize = 8;

/// Serves one connection: requests until EOF or a bad frame.
pub async fn serve_connection<S>(ctx: Arc<ControlContext>, caller: Caller, mut s: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let mut len = [0u8; 4];
        if s.read_exact(&mut len).await.is_err() {
            return;
        }
        let req = match frame_body_len(len) {
            Err(e) => Err(e),
            Ok(n) => {
                let mut body = vec![0u8; n];
                let read =
                    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut body)).await;
                match read {
                    Ok(Ok(_)) => Request::decode_body_version(&body),
                    _ => Err(ControlError::Truncated),
                }
            }
        };
        // Answered in the request's version; a frame that could not be
        // read, in this build's.
        let version = req.as_ref().map_or(CONTROL_VERSION, |(_, v)| *v);
        let (resp, close) = match req {
            Ok((r, _)) => {
                let c = ctx.clone();
                // Warm and friends do file I/O: keep them off the reactor.
                let resp = tokio::task::spawn_blocking(move || handle_request(&c, caller, r))
                    .await
                    .unwrap_or_else(|_| Response::error(ErrorCode::Internal, "request failed"));
                (resp, false)
            }
            Err(e) => (Response::error(ErrorCode::BadRequest, &e.to_string()), true),
        };
        if s.write_all(&encode(&resp, version)).await.is_err() || close {
            return;
        }
    }
}

/// Who may use the host control socket: root, the agent's own user, or a
/// user whose primary group (`gid`, from `SO_PEERCRED`) or supplementary
/// groups (`groups_of(uid)`, asked only then) include `group`.
fn peer_allowed(
    uid: u32,
    gid: u32,
    me: u32,
    group: Option<u32>,
    groups_of: impl FnOnce(u32, u32) -> Vec<u32>,
) -> bool {
    uid == 0 || uid == me || group.is_some_and(|g| g == gid || groups_of(uid, gid).contains(&g))
}

/// The groups of the user `uid` (primary `gid`) in the user database
/// (`getgrouplist`): how a login would start. Empty if `uid` has no name.
pub fn user_groups(uid: u32, gid: u32) -> Vec<u32> {
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: an all-zero passwd is a valid value to be overwritten.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: `pw`, `buf` and `out` are valid for writes of their sizes for
    // the call; `pw`'s strings point into `buf`, read below while it lives.
    let r = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr().cast(), buf.len(), &mut out) };
    if r != 0 || out.is_null() || pw.pw_name.is_null() {
        return Vec::new();
    }
    let mut n: libc::c_int = 64;
    loop {
        let mut groups: Vec<libc::gid_t> = vec![0; n as usize];
        let asked = n;
        // SAFETY: `pw_name` is a NUL-terminated string in `buf`; `groups`
        // has room for `n` entries, and getgrouplist writes at most that
        // many (it sets `n` to the number needed when they do not fit).
        let r = unsafe { libc::getgrouplist(pw.pw_name, gid, groups.as_mut_ptr(), &mut n) };
        if r >= 0 {
            groups.truncate(n.max(0) as usize);
            return groups;
        }
        if n <= asked || n > 65536 {
            return Vec::new();
        }
    }
}

/// Why a peer of the host control socket is refused, as it is told.
fn refusal(uid: u32, me: u32, group: Option<u32>) -> String {
    match group {
        Some(g) => format!(
            "uid {uid} may not use this agent: only root, the agent's user (uid {me}) and members of control_group (gid {g}) may"
        ),
        None => format!(
            "uid {uid} may not use this agent: only root and the agent's user (uid {me}) may (set control_group to let a group in)"
        ),
    }
}

/// Tells a refused peer why, after reading its request (so that it is not
/// met with a broken pipe), and closes.
async fn refuse(mut s: UnixStream, message: String) {
    let mut len = [0u8; 4];
    let read = async {
        s.read_exact(&mut len).await.ok()?;
        let n = frame_body_len(len).ok()?;
        let mut body = vec![0u8; n];
        s.read_exact(&mut body).await.ok()?;
        Request::decode_body_version(&body).ok().map(|(_, v)| v)
    };
    let version = tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .ok()
        .flatten()
        .unwrap_or(CONTROL_VERSION);
    let _ = s
        .write_all(&encode(
            &Response::error(ErrorCode::Denied, &message),
            version,
        ))
        .await;
}

/// Accepts connections on `listener` for `caller` until the task is dropped.
/// For [`Caller::Host`], peers other than root, the agent's user or
/// members of `group` (primary or supplementary) are told so and refused.
pub async fn serve(
    listener: UnixListener,
    ctx: Arc<ControlContext>,
    caller: Caller,
    group: Option<u32>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS_PER_LISTENER));
    // Refused peers are told why a few at a time, apart from the served
    // ones: one that connects in a loop takes no slot of theirs.
    let refusals = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS_PER_LISTENER));
    loop {
        let s = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of file descriptors and the like: do not spin.
                tracing::warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if caller == Caller::Host {
            // SAFETY: geteuid has no preconditions.
            let me = unsafe { libc::geteuid() };
            let cred = s.peer_cred().ok().map(|c| (c.uid(), c.gid()));
            let allowed =
                cred.is_some_and(|(uid, gid)| peer_allowed(uid, gid, me, group, user_groups));
            if !allowed {
                let uid = cred.map_or(u32::MAX, |(u, _)| u);
                tracing::warn!(
                    uid,
                    "control connection refused: not root, the agent's user or in control_group"
                );
                if let Ok(permit) = Arc::clone(&refusals).try_acquire_owned() {
                    let message = refusal(uid, me, group);
                    tokio::spawn(async move {
                        refuse(s, message).await;
                        drop(permit);
                    });
                }
                continue;
            }
        }
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::warn!(?caller, "too many control connections: refused one");
            continue;
        };
        tokio::spawn(serve_one(ctx.clone(), caller, s, permit));
    }
}

async fn serve_one<S>(
    ctx: Arc<ControlContext>,
    caller: Caller,
    s: S,
    _permit: tokio::sync::OwnedSemaphorePermit,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    serve_connection(ctx, caller, s).await;
}

/// Accepts AF_VSOCK connections on `port` (any CID). A peer is served as the
/// VM whose configured CID it has (`cids`); other peers are closed at once.
pub async fn serve_vsock(
    port: u32,
    ctx: Arc<ControlContext>,
    cids: std::collections::HashMap<u32, VmId>,
) -> std::io::Result<()> {
    serve_vsock_on(bind_vsock(port)?, ctx, cids).await
}

/// Listens on AF_VSOCK `port` (any CID), for [`serve_vsock_on`]: binding
/// apart from serving lets `serve` report readiness only once it listens.
/// Must be called within a tokio runtime.
pub fn bind_vsock(port: u32) -> std::io::Result<tokio_vsock::VsockListener> {
    tokio_vsock::VsockListener::bind(tokio_vsock::VsockAddr::new(
        tokio_vsock::VMADDR_CID_ANY,
        port,
    ))
}

/// [`serve_vsock`] on a listener [`bind_vsock`] made.
pub async fn serve_vsock_on(
    listener: tokio_vsock::VsockListener,
    ctx: Arc<ControlContext>,
    cids: std::collections::HashMap<u32, VmId>,
) -> std::io::Result<()> {
    let mut slots = std::collections::HashMap::new();
    loop {
        let (s, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "vsock accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(&vm) = cids.get(&peer.cid()) else {
            tracing::warn!(
                cid = peer.cid(),
                "vsock connection from an unknown CID: closed"
            );
            continue;
        };
        let sem = slots
            .entry(vm)
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS_PER_LISTENER)));
        let Ok(permit) = Arc::clone(sem).try_acquire_owned() else {
            tracing::warn!(vm, "too many vsock connections from this VM: refused one");
            continue;
        };
        tokio::spawn(serve_one(ctx.clone(), Caller::Vm(vm), s, permit));
    }
}

/// Binds a control socket at `path`: mode 0600, or 0660 of group `group`
/// if given (the host socket with `control_group`). A stale socket file is
/// replaced; any other file is an error. Must be called inside a tokio
/// runtime.
pub fn bind(path: &Path, group: Option<u32>) -> Result<UnixListener, ControlChannelError> {
    bind_as(
        path,
        &crate::hostfile::FileAccess {
            owner: None,
            group,
            group_read_only: false,
        },
        "control socket",
    )
}

/// Binds a socket at `path` with `access` (see
/// [`FileAccess::bind_socket`](crate::hostfile::FileAccess::bind_socket));
/// `what` names it in errors. Must be called inside a tokio runtime.
pub fn bind_as(
    path: &Path,
    access: &crate::hostfile::FileAccess,
    what: &'static str,
) -> Result<UnixListener, ControlChannelError> {
    let l = access.bind_socket(path, what)?;
    l.set_nonblocking(true)?;
    Ok(UnixListener::from_std(l)?)
}

/// Looks a group name (or number) up (for `control_group`).
pub fn group_id(name: &str) -> Option<u32> {
    crate::hostfile::group_id("control_group", name).ok()
}

/// Blocking client: sends one request and reads one response (the CLI).
pub fn request(path: &Path, req: &Request) -> Result<Response, ControlChannelError> {
    let mut s = std::os::unix::net::UnixStream::connect(path)?;
    s.set_read_timeout(Some(Duration::from_secs(600)))?;
    let mut buf = vec![0u8; MAX_FRAME_LEN];
    let n = req.encode(&mut buf).map_err(ControlChannelError::Frame)?;
    s.write_all(&buf[..n])?;
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let body_len = frame_body_len(len).map_err(ControlChannelError::Frame)?;
    let mut body = vec![0u8; body_len];
    s.read_exact(&mut body)?;
    Response::decode_body(&body).map_err(ControlChannelError::Frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_are_root_the_agent_or_in_the_group_primary_or_supplementary() {
        let none = |_, _| Vec::new();
        let supplementary = |_, _| vec![100, 7];
        let unasked = |_, _| -> Vec<u32> { panic!("groups looked up for no reason") };
        assert!(peer_allowed(0, 5, 1000, None, unasked));
        assert!(peer_allowed(1000, 5, 1000, None, unasked));
        assert!(!peer_allowed(1001, 5, 1000, None, unasked));
        assert!(peer_allowed(1001, 7, 1000, Some(7), unasked));
        assert!(peer_allowed(1001, 5, 1000, Some(7), supplementary));
        assert!(!peer_allowed(1001, 5, 1000, Some(7), none));
        assert!(!peer_allowed(1001, 5, 1000, Some(8), supplementary));
    }

    #[test]
    fn the_user_database_gives_root_its_groups() {
        assert!(user_groups(0, 0).contains(&0));
        assert!(user_groups(u32::MAX - 7, 0).is_empty());
    }
}
