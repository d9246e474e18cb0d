//! The agent as an ivshmem server: a fake QEMU speaks the protocol over the
//! VM's socket (gets the version, its id, the ring memory and both peers'
//! eventfds), rings the agent's doorbell and receives its interrupts; hostile
//! clients (garbage, a second connection, one that never reads) never keep
//! the server from serving the other VMs.

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use vmdedup_host_agent::ivshmem::{self, DoorbellServer, VmDoorbell, AGENT_PEER_ID, VM_PEER_ID};
use vmdedup_host_agent::ring::{
    EventFd, GuestRing, HostRing, PollerConfig, PollerPool, RingConfig, RingId, SharedMapping,
};

mod common;
use common::agent::{agent_config, vm};
use common::{echo, hint, wait_for, TempDir};

/// One message of the server: its value and the descriptor it carried.
fn recv_msg(sock: &UnixStream) -> Option<(i64, Option<OwnedFd>)> {
    let mut bytes = [0u8; 8];
    let mut iov = libc::iovec {
        iov_base: bytes.as_mut_ptr().cast(),
        iov_len: 8,
    };
    let mut cbuf = [0u64; 8];
    // SAFETY: plain data; zero is an empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf);
    // SAFETY: `msg` points at live locals for the call.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n != 8 {
        return None;
    }
    let mut fd = None;
    // SAFETY: the kernel filled `msg`'s control buffer; the CMSG macros walk
    // it within `msg_controllen`.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        if !c.is_null() && (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS
        {
            let raw: RawFd = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
            fd = Some(OwnedFd::from_raw_fd(raw));
        }
    }
    Some((i64::from_le_bytes(bytes), fd))
}

/// What a client got from the server.
struct Greeting {
    id: i64,
    shm: OwnedFd,
    agent: Vec<EventFd>,
    own: Vec<EventFd>,
}

/// Connects to `path` and reads the whole greeting, checking its order.
fn connect(path: &Path) -> (UnixStream, Greeting) {
    let sock = UnixStream::connect(path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let (v, fd) = recv_msg(&sock).expect("version");
    assert_eq!((v, fd.is_none()), (ivshmem::PROTOCOL_VERSION, true));
    let (id, fd) = recv_msg(&sock).expect("id");
    assert!(fd.is_none());
    let (m, shm) = recv_msg(&sock).expect("shared memory");
    assert_eq!(m, -1);
    let shm = shm.expect("the shared memory message carries a descriptor");
    let mut agent = Vec::new();
    let mut own = Vec::new();
    for _ in 0..2 * ivshmem::VECTORS {
        let (peer, fd) = recv_msg(&sock).expect("a peer's eventfd");
        let fd = EventFd::from_owned(fd.expect("an eventfd"));
        if peer == i64::from(AGENT_PEER_ID) {
            agent.push(fd);
        } else {
            assert_eq!(peer, id, "a peer other than the agent and the VM");
            own.push(fd);
        }
    }
    assert_eq!(
        (agent.len(), own.len()),
        (ivshmem::VECTORS, ivshmem::VECTORS)
    );
    (
        sock,
        Greeting {
            id,
            shm,
            agent,
            own,
        },
    )
}

fn ring_file(dir: &Path, name: &str) -> std::path::PathBuf {
    let p = dir.join(format!("vmdedup-{name}.ring"));
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(64 << 10).unwrap();
    p
}

fn serve(server: &DoorbellServer, dir: &Path, name: &str) -> (Arc<VmDoorbell>, std::path::PathBuf) {
    let ring = ring_file(dir, name);
    let shm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&ring)
        .unwrap();
    let bell = VmDoorbell::new(name, shm).unwrap();
    let sock = ivshmem::socket_path(dir, name);
    server
        .add(Arc::clone(&bell), UnixListener::bind(&sock).unwrap())
        .unwrap();
    (bell, sock)
}

#[test]
fn a_client_gets_the_ring_and_both_peers_eventfds() {
    let d = TempDir::new("ivshmem-greeting");
    let server = DoorbellServer::start().unwrap();
    let (bell, sock) = serve(&server, &d.0, "vm1");
    let (_c, g) = connect(&sock);
    assert_eq!(g.id, i64::from(VM_PEER_ID));
    // The memory is the ring region file itself.
    let shm = std::fs::File::from(g.shm);
    let ring = std::fs::metadata(d.0.join("vmdedup-vm1.ring")).unwrap();
    assert_eq!(shm.metadata().unwrap().ino(), ring.ino());
    wait_for("the client counted connected", || {
        bell.connected().then_some(())
    });
    // A Doorbell register write reaches the poller's eventfd.
    let polled = bell.ring_doorbell().unwrap();
    g.agent[0].notify();
    assert_eq!(polled.wait(30_000), 1);
    // An interrupt reaches the VM's eventfd (QEMU raises the vector).
    assert!(bell.interrupt(ivshmem::RING_VECTOR));
    assert_eq!(g.own[0].wait(30_000), 1);
    assert_eq!(
        bell.stats
            .interrupts
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[test]
fn hostile_clients_never_stop_the_server() {
    use std::sync::atomic::Ordering::Relaxed;
    let d = TempDir::new("ivshmem-hostile");
    let server = DoorbellServer::start().unwrap();
    let (bad, bad_sock) = serve(&server, &d.0, "bad");
    let (good, good_sock) = serve(&server, &d.0, "good");

    // One that never reads: the server does not wait for it.
    let _silent = UnixStream::connect(&bad_sock).unwrap();
    // Others that connect and leave at once.
    for _ in 0..20 {
        drop(UnixStream::connect(&bad_sock).unwrap());
    }
    // One that sends garbage is dropped: it sees the end of its stream.
    let (mut noisy, _) = connect(&bad_sock);
    noisy.write_all(&[0xff; 4096]).unwrap();
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut noisy, &mut rest);
    wait_for("the garbage client dropped", || {
        (bad.stats.dropped.load(Relaxed) >= 1).then_some(())
    });

    // The other VM is served meanwhile.
    let (first, g) = connect(&good_sock);
    assert_eq!(g.id, i64::from(VM_PEER_ID));
    // A second connection replaces the first, which is closed.
    let (_second, g2) = connect(&good_sock);
    first
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(std::io::Read::read(&mut &first, &mut buf).unwrap(), 0);
    assert!(good.stats.replaced.load(Relaxed) >= 1);
    // Both connections got the same eventfds: a reconnecting QEMU keeps
    // working.
    g2.agent[0].notify();
    assert_eq!(good.ring_doorbell().unwrap().wait(30_000), 1);
    wait_for("connected", || good.connected().then_some(()));
    // Removing a VM closes its socket's client: the ring falls back.
    server.remove("good");
    wait_for("the removed VM disconnected", || {
        (!good.connected()).then_some(())
    });
    assert!(!good.interrupt(0));
}

/// A guest whose ring is an ivshmem-doorbell device: the poller parks with
/// no timeout at all here, so every answer after a park proves the doorbell
/// delivered by the server's eventfd woke it.
#[test]
fn a_parked_poller_wakes_on_the_doorbell_it_served() {
    let d = TempDir::new("ivshmem-park");
    let server = DoorbellServer::start().unwrap();
    let (bell, sock) = serve(&server, &d.0, "vm1");
    let map = SharedMapping::open(&d.0.join("vmdedup-vm1.ring")).unwrap();
    let ring = HostRing::create(map, RingConfig::new(RingId(1), 7))
        .unwrap()
        .with_doorbell(
            bell.ring_doorbell().unwrap(),
            bell.live(),
            Some(bell.guest_interrupt().unwrap()),
        );
    let pcfg = PollerConfig {
        spin: Duration::ZERO,
        yield_for: Duration::ZERO,
        sleep_for: Duration::ZERO,
        park_timeout: None,
        doorbell_park_timeout: None,
        ..PollerConfig::default()
    };
    let pool = PollerPool::start(pcfg, echo).unwrap();
    let (_qemu, g) = connect(&sock);
    let guest_map = Arc::new(SharedMapping::open(&d.0.join("vmdedup-vm1.ring")).unwrap());
    let mut guest = GuestRing::attach(guest_map, Some(g.agent[0].try_clone().unwrap())).unwrap();
    assert!(guest.set_rings_doorbell(true));
    let handle = pool.add_ring(ring);
    let stats = pool.stats();
    for req in 1..=20u64 {
        // Wait until the poller is parked, then hint.
        wait_for("the poller parked", || {
            (stats[0].state() == vmdedup_host_agent::ring::PollerState::Parked).then_some(())
        });
        guest.stage(hint(req, 1, 0, 0), b"a/b").unwrap();
        guest.publish();
        wait_for("the answer", || {
            let mut got = false;
            guest.reap(|c| got |= c.request_id == req);
            got.then_some(())
        });
    }
    assert!(guest.doorbells_rung() > 0);

    // The other way: a guest that says it waits gets the ring's interrupt
    // with the answer; one that does not, none.
    wait_for("the host says it raises interrupts", || {
        guest.announce_wait().then_some(())
    });
    guest.stage(hint(100, 1, 0, 0), b"c/d").unwrap();
    guest.publish();
    assert!(g.own[0].wait(30_000) >= 1, "no interrupt");
    guest.cancel_wait();
    wait_for("the answer", || {
        let mut got = false;
        guest.reap(|c| got |= c.request_id == 100);
        got.then_some(())
    });
    g.own[0].drain();
    guest.stage(hint(101, 1, 0, 0), b"e/f").unwrap();
    guest.publish();
    wait_for("the answer", || {
        let mut got = false;
        guest.reap(|c| got |= c.request_id == 101);
        got.then_some(())
    });
    assert_eq!(
        g.own[0].drain(),
        0,
        "an interrupt for a guest that did not wait"
    );
    assert!(
        handle
            .shared()
            .stats
            .interrupts
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    let received = handle
        .shared()
        .stats
        .doorbells
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(received > 0, "no doorbell counted by the agent");
    assert_eq!(
        stats[0]
            .lost_wakeups
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    drop(pool);
}

/// A guest asleep until interrupted loses its `GUEST_FLAG_WAITING` when the
/// host writes a new ring over the old one (a reinstated VM). The agent wakes
/// it once anyway, so that it finds the new ring without sending a hint, and
/// not again once it attached; the cut-off flag interrupts a guest that does
/// not wait too.
#[test]
fn a_ring_written_over_a_sleeping_guest_wakes_it_once() {
    let d = TempDir::new("ivshmem-kick");
    let server = DoorbellServer::start().unwrap();
    let (bell, sock) = serve(&server, &d.0, "vm1");
    let ring_path = d.0.join("vmdedup-vm1.ring");
    let host_ring = |generation: u64| {
        HostRing::create(
            SharedMapping::open(&ring_path).unwrap(),
            RingConfig::new(RingId(1), generation),
        )
        .unwrap()
        .with_doorbell(
            bell.ring_doorbell().unwrap(),
            bell.live(),
            Some(bell.guest_interrupt().unwrap()),
        )
    };
    let first = host_ring(7);
    let pool = PollerPool::start(PollerConfig::default(), echo).unwrap();
    let (_qemu, g) = connect(&sock);
    let guest_map = Arc::new(SharedMapping::open(&ring_path).unwrap());
    let mut guest = GuestRing::attach(Arc::clone(&guest_map), None).unwrap();
    let handle = pool.add_ring(first);
    wait_for("the guest may sleep", || {
        guest.announce_wait().then_some(())
    });
    // Nothing was published and the guest attached before the poller saw
    // the ring: no interrupt so far.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(g.own[0].drain(), 0, "an interrupt with nothing to say");

    // Reinstate: the old ring is dropped, a new one is written over it.
    handle.shared().close();
    wait_for("the old ring dropped", || {
        handle.shared().is_dropped().then_some(())
    });
    let second = pool.add_ring(host_ring(8));
    assert!(
        g.own[0].wait(30_000) >= 1,
        "the sleeping guest was not woken for the new ring"
    );
    let mut guest = GuestRing::attach(Arc::clone(&guest_map), None).unwrap();
    assert_eq!(guest.generation(), 8);
    wait_for("the host saw the attach", || {
        second.shared().guest_attached().then_some(())
    });
    g.own[0].drain();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(g.own[0].drain(), 0, "woken again after it attached");

    // The cut-off reaches a guest that does not say it waits.
    guest.cancel_wait();
    second.shared().cut_off();
    assert!(
        g.own[0].wait(30_000) >= 1,
        "no interrupt with the cut-off flag"
    );
    wait_for("the cut-off flag", || guest.cut_off_news().then_some(()));
    drop(pool);
}

/// With `doorbell = true` the agent makes a socket beside each ring, with
/// the ring's mode, serves the ring over it, and `qemu-args` says so; with
/// `doorbell = false` there is none.
#[test]
fn the_agent_serves_each_vms_ring_over_its_socket() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let d = TempDir::new("ivshmem-agent");
    let mut cfg = agent_config(&d.0, 16 << 20, Vec::new(), vec![vm("vm1", "default")]);
    cfg.doorbell = true;
    let agent = common::agent::start_agent(cfg.clone(), 3);
    let sock = cfg.doorbell_path("vm1");
    let m = std::fs::symlink_metadata(&sock).unwrap();
    assert!(m.file_type().is_socket());
    assert_eq!(m.permissions().mode() & 0o777, 0o600);
    let a = agent.attachment("vm1").unwrap();
    assert_eq!(a.doorbell.as_deref(), Some(sock.as_path()));
    assert_eq!(a.ring_device(), "ivshmem-doorbell");
    let (_c, g) = connect(&sock);
    let shm = std::fs::File::from(g.shm);
    assert_eq!(
        shm.metadata().unwrap().ino(),
        std::fs::metadata(cfg.ring_path("vm1")).unwrap().ino()
    );
    let bell = agent.doorbell("vm1").unwrap();
    wait_for("connected", || bell.connected().then_some(()));
    agent.shutdown();
    drop(agent);

    // The same VM without doorbells: the stale socket goes.
    cfg.doorbell = false;
    let agent = common::agent::start_agent(cfg.clone(), 4);
    assert!(std::fs::symlink_metadata(&sock).is_err());
    assert!(agent.attachment("vm1").unwrap().doorbell.is_none());
    agent.shutdown();
}
