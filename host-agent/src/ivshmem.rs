//! The agent as the ivshmem server of each VM's ring region, so that the ring
//! can be an `ivshmem-doorbell` device: each side wakes the other only when
//! it sleeps.
//!
//! # The protocol (QEMU's ivshmem server protocol, version 0)
//! Over a Unix stream socket per VM, the server sends 8-byte little-endian
//! signed integers, some with one file descriptor (`SCM_RIGHTS`):
//! 1. the protocol version, [`PROTOCOL_VERSION`], no descriptor;
//! 2. the client's peer id ([`VM_PEER_ID`]), no descriptor;
//! 3. `-1` with the shared memory (the ring region file);
//! 4. for every peer, its id once per interrupt vector, each time with that
//!    vector's eventfd: first the agent ([`AGENT_PEER_ID`]: the eventfds a
//!    guest's Doorbell register write reaches, which the poller waits on),
//!    then the VM itself (the eventfds the agent writes to raise the guest's
//!    MSI-X vectors).
//!
//! The client never sends anything. There are exactly two peers per socket:
//! the agent and one VM.
//!
//! # Hostile clients
//! Whoever may open the socket file (its mode is the ring region's, see
//! [`crate::hostfile`]) may connect, so a client is untrusted input:
//! - nothing blocks the server thread: the listener and every connection are
//!   non-blocking, the greeting (a few dozen bytes) is sent with
//!   `MSG_DONTWAIT` into a fresh socket buffer and a client that cannot take
//!   it is dropped;
//! - a client that sends a byte is dropped (QEMU sends none), so a client
//!   cannot make the server buffer anything;
//! - **one client per VM**: a second connection *replaces* the first, which
//!   is closed. A QEMU that reconnects (`reconnect=N`), or a new QEMU of the
//!   same VM, must win over a stale connection; a local user who may open
//!   the socket may open the ring region itself anyway, so replacing gives
//!   them nothing they did not have.
//! - one thread serves every VM; a VM's misbehaving client only ever costs a
//!   bounded amount of work per event.
//!
//! # What QEMU keeps, and agent restarts
//! QEMU keeps the memory and the eventfds it received when the connection
//! closes. `vmdedup qemu-args` gives the chardev no `reconnect=`: QEMU 7.2
//! would then connect in the background while the device waits for the
//! memory in the foreground, and never start. So after an agent restart the
//! VM's QEMU stays disconnected: its Doorbell writes go to the old agent's
//! eventfd and the new agent's interrupts reach nobody. The new agent sees
//! no client ([`VmDoorbell::connected`] false), so its poller parks that
//! ring with the short park timeout, as for `ivshmem-plain`, and the guest
//! never waits for an interrupt without a bounded timeout: the ring keeps
//! working, polled, until the VM's QEMU restarts. (Were a QEMU to reconnect
//! to the same socket, it would refuse the second memory message and a
//! second set of its own eventfds, logging an error, and read the version
//! message as "peer 0 left" before taking the agent's new eventfds, which
//! is why [`AGENT_PEER_ID`] is 0.)

use crate::ring::epoll::Epoll;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::ring::{EventFd, RingError};

/// The protocol version the server speaks (QEMU's `IVSHMEM_PROTOCOL_VERSION`).
pub const PROTOCOL_VERSION: i64 = 0;
/// The agent's peer id: the VM rings it with `(AGENT_PEER_ID << 16) | vector`
/// in its Doorbell register. It must be 0 (see the module doc).
pub const AGENT_PEER_ID: u16 = vmdedup_protocol::abi::DOORBELL_HOST_PEER;
/// The VM's peer id (what its IVPosition register reads).
pub const VM_PEER_ID: u16 = vmdedup_protocol::abi::DOORBELL_GUEST_PEER;
/// Interrupt vectors per peer (`vectors=` of the QEMU device).
pub const VECTORS: usize = vmdedup_protocol::abi::DOORBELL_VECTORS as usize;
/// The vector of the ring: a guest rings the agent's with new work or room
/// while the poller is parked; the agent raises the guest's when the guest
/// said it waits.
pub const RING_VECTOR: usize = vmdedup_protocol::abi::DOORBELL_RING_VECTOR as usize;
/// Largest number of connections taken per listener wake-up.
const ACCEPT_BATCH: usize = 8;

/// The socket of VM `vm` in the ring directory `ring_dir`.
pub fn socket_path(ring_dir: &Path, vm: &str) -> PathBuf {
    ring_dir.join(format!("vmdedup-{vm}.doorbell"))
}

/// Counters of one VM's doorbell socket. Relaxed: for humans and tests.
#[derive(Debug, Default)]
pub struct DoorbellStats {
    /// Clients that got the whole greeting.
    pub connects: AtomicU64,
    /// Clients that replaced an earlier one.
    pub replaced: AtomicU64,
    /// Clients dropped: they sent bytes, or could not take the greeting.
    pub dropped: AtomicU64,
    /// Interrupts raised in the guest (writes to its eventfd).
    pub interrupts: AtomicU64,
}

/// One VM's side of the protocol: the ring memory and both peers' eventfds.
/// They live as long as the VM is in this agent, so every connection of the
/// VM (a reconnect, a restarted QEMU) gets the same ones.
#[derive(Debug)]
pub struct VmDoorbell {
    vm: String,
    shm: File,
    /// The agent's eventfds: QEMU writes them on a Doorbell register write.
    to_agent: Vec<EventFd>,
    /// The VM's eventfds: the agent writes them, QEMU raises the vector.
    to_vm: Vec<EventFd>,
    /// A client that got the greeting is connected now.
    live: Arc<AtomicBool>,
    /// Counters.
    pub stats: DoorbellStats,
}

impl VmDoorbell {
    /// The doorbell of VM `vm` whose ring region is `shm` (open read-write).
    pub fn new(vm: &str, shm: File) -> Result<Arc<VmDoorbell>, RingError> {
        let mut to_agent = Vec::with_capacity(VECTORS);
        let mut to_vm = Vec::with_capacity(VECTORS);
        for _ in 0..VECTORS {
            to_agent.push(EventFd::new()?);
            to_vm.push(EventFd::new()?);
        }
        Ok(Arc::new(VmDoorbell {
            vm: vm.to_string(),
            shm,
            to_agent,
            to_vm,
            live: Arc::new(AtomicBool::new(false)),
            stats: DoorbellStats::default(),
        }))
    }

    /// The VM's name.
    pub fn vm(&self) -> &str {
        &self.vm
    }

    /// Another handle to the agent's eventfd of the ring vector: what the
    /// ring's poller waits on.
    pub fn ring_doorbell(&self) -> Result<EventFd, RingError> {
        self.to_agent
            .get(RING_VECTOR)
            .ok_or(RingError::BadSize(0))?
            .try_clone()
    }

    /// Another handle to the VM's eventfd of the ring vector: writing it
    /// raises the guest's ring interrupt (while a client is connected).
    pub fn guest_interrupt(&self) -> Result<EventFd, RingError> {
        self.to_vm
            .get(RING_VECTOR)
            .ok_or(RingError::BadSize(0))?
            .try_clone()
    }

    /// The flag that says a client is connected (shared with the ring).
    pub fn live(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.live)
    }

    /// Whether a client is connected.
    pub fn connected(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// Raises the guest's `vector` if a client is connected; returns whether
    /// it wrote the eventfd. (After an agent restart a reconnected QEMU still
    /// holds the previous agent's eventfds: the write reaches nobody, which
    /// is why a guest never waits for an interrupt without a bounded
    /// timeout.)
    pub fn interrupt(&self, vector: usize) -> bool {
        if !self.connected() {
            return false;
        }
        match self.to_vm.get(vector) {
            Some(e) => {
                e.notify();
                self.stats.interrupts.fetch_add(1, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// The greeting of a new client, in order: the messages and the
    /// descriptor each carries.
    fn greeting(&self) -> Vec<(i64, Option<RawFd>)> {
        let mut m = vec![
            (PROTOCOL_VERSION, None),
            (i64::from(VM_PEER_ID), None),
            (-1, Some(self.shm.as_raw_fd())),
        ];
        m.extend(
            self.to_agent
                .iter()
                .map(|e| (i64::from(AGENT_PEER_ID), Some(e.as_raw_fd()))),
        );
        m.extend(
            self.to_vm
                .iter()
                .map(|e| (i64::from(VM_PEER_ID), Some(e.as_raw_fd()))),
        );
        m
    }
}

/// Sends one message: `value` as 8 little-endian bytes, with `fd` if any.
/// Non-blocking; a short send is an error (the client is dropped).
fn send_msg(sock: &UnixStream, value: i64, fd: Option<RawFd>) -> std::io::Result<()> {
    let bytes = value.to_le_bytes();
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // Room for one cmsghdr with one int, aligned as cmsghdr wants.
    let mut cbuf = [0u64; 4];
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = fd {
        // SAFETY: CMSG_SPACE only computes a size.
        let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
        debug_assert!(space <= std::mem::size_of_val(&cbuf));
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space.min(std::mem::size_of_val(&cbuf));
        // SAFETY: msg_control points at `cbuf`, which is at least `space`
        // bytes and aligned for cmsghdr (u64), so CMSG_FIRSTHDR returns a
        // header inside it and CMSG_DATA points at room for one int.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            if c.is_null() {
                return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
            }
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<RawFd>(), fd);
        }
    }
    // SAFETY: `msg` points at live locals (`iov`, `bytes`, `cbuf`) for the
    // duration of the call.
    let n = unsafe {
        libc::sendmsg(
            sock.as_raw_fd(),
            &msg,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if n as usize != bytes.len() {
        return Err(std::io::Error::from(std::io::ErrorKind::WriteZero));
    }
    Ok(())
}

/// Sends `bell`'s whole greeting to a new client.
fn greet(sock: &UnixStream, bell: &VmDoorbell) -> std::io::Result<()> {
    for (v, fd) in bell.greeting() {
        send_msg(sock, v, fd)?;
    }
    Ok(())
}

enum Command {
    Add(Arc<VmDoorbell>, UnixListener),
    Remove(String),
}

struct Ctl {
    wake: EventFd,
    commands: Mutex<Vec<Command>>,
    stop: AtomicBool,
}

/// The server thread of every VM's doorbell socket.
pub struct DoorbellServer {
    ctl: Arc<Ctl>,
    join: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for DoorbellServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DoorbellServer").finish_non_exhaustive()
    }
}

impl DoorbellServer {
    /// Starts the server thread (it serves no VM yet).
    pub fn start() -> Result<DoorbellServer, RingError> {
        let ctl = Arc::new(Ctl {
            wake: EventFd::new()?,
            commands: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let epoll = Epoll::new()?;
        epoll.add(ctl.wake.as_raw_fd(), WAKE_TOKEN)?;
        let mut server = Server {
            ctl: Arc::clone(&ctl),
            epoll,
            vms: BTreeMap::new(),
            next: 0,
        };
        let join = std::thread::Builder::new()
            .name("vmdedup-ivshmem".into())
            .spawn(move || server.run())
            .map_err(|cause| RingError::Os {
                what: "spawn ivshmem server",
                cause,
            })?;
        Ok(DoorbellServer {
            ctl,
            join: Some(join),
        })
    }

    fn command(&self, c: Command) {
        self.ctl
            .commands
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(c);
        self.ctl.wake.notify();
    }

    /// Serves `bell` on `listener` (replacing an earlier registration of the
    /// same VM).
    pub fn add(&self, bell: Arc<VmDoorbell>, listener: UnixListener) -> Result<(), RingError> {
        listener
            .set_nonblocking(true)
            .map_err(|cause| RingError::Os {
                what: "doorbell socket non-blocking",
                cause,
            })?;
        self.command(Command::Add(bell, listener));
        Ok(())
    }

    /// Stops serving VM `vm`: its listener and client are closed.
    pub fn remove(&self, vm: &str) {
        self.command(Command::Remove(vm.to_string()));
    }

    /// Stops the thread (also done on drop).
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.ctl.stop.store(true, Ordering::Release);
        self.ctl.wake.notify();
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

impl Drop for DoorbellServer {
    fn drop(&mut self) {
        self.stop();
    }
}

const WAKE_TOKEN: u64 = u64::MAX;

struct Served {
    bell: Arc<VmDoorbell>,
    listener: UnixListener,
    client: Option<UnixStream>,
    /// Epoll tokens: `key << 1` the listener, `key << 1 | 1` the client.
    key: u64,
}

struct Server {
    ctl: Arc<Ctl>,
    epoll: Epoll,
    vms: BTreeMap<String, Served>,
    next: u64,
}

impl Server {
    fn run(&mut self) {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 32];
        while !self.ctl.stop.load(Ordering::Acquire) {
            let n = self.epoll.wait(&mut events, -1);
            for ev in events.iter().take(n) {
                let token = ev.u64;
                if token == WAKE_TOKEN {
                    self.ctl.wake.drain();
                    self.take_commands();
                } else if token & 1 == 0 {
                    self.accept(token >> 1);
                } else {
                    self.client_event(token >> 1);
                }
            }
        }
        for (_, s) in std::mem::take(&mut self.vms) {
            s.bell.live.store(false, Ordering::Release);
        }
    }

    fn take_commands(&mut self) {
        let cmds =
            std::mem::take(&mut *self.ctl.commands.lock().unwrap_or_else(|e| e.into_inner()));
        for c in cmds {
            match c {
                Command::Add(bell, listener) => {
                    self.drop_vm(bell.vm());
                    let key = self.next;
                    self.next += 1;
                    if let Err(e) = self.epoll.add(listener.as_raw_fd(), key << 1) {
                        tracing::error!(vm = bell.vm(), error = %e, "cannot watch the doorbell socket: the VM's QEMU cannot attach the ring");
                        continue;
                    }
                    self.vms.insert(
                        bell.vm().to_string(),
                        Served {
                            bell,
                            listener,
                            client: None,
                            key,
                        },
                    );
                }
                Command::Remove(vm) => self.drop_vm(&vm),
            }
        }
    }

    fn drop_vm(&mut self, vm: &str) {
        if let Some(s) = self.vms.remove(vm) {
            self.epoll.del(s.listener.as_raw_fd());
            if let Some(c) = &s.client {
                self.epoll.del(c.as_raw_fd());
            }
            s.bell.live.store(false, Ordering::Release);
        }
    }

    fn by_key(&mut self, key: u64) -> Option<&mut Served> {
        self.vms.values_mut().find(|s| s.key == key)
    }

    fn accept(&mut self, key: u64) {
        let epoll = &self.epoll;
        let Some(s) = self.vms.values_mut().find(|s| s.key == key) else {
            return;
        };
        for _ in 0..ACCEPT_BATCH {
            let sock = match s.listener.accept() {
                Ok((sock, _)) => sock,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!(vm = s.bell.vm(), error = %e, "doorbell socket accept failed");
                    return;
                }
            };
            if let Some(old) = s.client.take() {
                epoll.del(old.as_raw_fd());
                s.bell.live.store(false, Ordering::Release);
                s.bell.stats.replaced.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    vm = s.bell.vm(),
                    "a new doorbell client replaces the connected one"
                );
            }
            let ok = sock.set_nonblocking(true).is_ok()
                && greet(&sock, &s.bell).is_ok()
                && epoll
                    .add_flags(
                        sock.as_raw_fd(),
                        (key << 1) | 1,
                        (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
                    )
                    .is_ok();
            if !ok {
                s.bell.stats.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    vm = s.bell.vm(),
                    "doorbell client dropped: it could not take the greeting"
                );
                continue;
            }
            s.bell.stats.connects.fetch_add(1, Ordering::Relaxed);
            s.bell.live.store(true, Ordering::Release);
            tracing::info!(
                vm = s.bell.vm(),
                "doorbell client connected: ring on ivshmem-doorbell"
            );
            s.client = Some(sock);
        }
    }

    fn client_event(&mut self, key: u64) {
        let epoll_fd = self.epoll.as_raw_fd();
        let Some(s) = self.by_key(key) else {
            return;
        };
        let Some(c) = s.client.as_mut() else {
            return;
        };
        let mut buf = [0u8; 64];
        let garbage = match c.read(&mut buf) {
            Ok(0) => false,
            Ok(_) => true,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(_) => false,
        };
        if let Some(c) = s.client.take() {
            Epoll::del_raw(epoll_fd, c.as_raw_fd());
        }
        s.bell.live.store(false, Ordering::Release);
        if garbage {
            s.bell.stats.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                vm = s.bell.vm(),
                "doorbell client dropped: it sent bytes (QEMU sends none)"
            );
        } else {
            tracing::info!(
                vm = s.bell.vm(),
                "doorbell client gone: the ring falls back to timeouts"
            );
        }
    }
}
