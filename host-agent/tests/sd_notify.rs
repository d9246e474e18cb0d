//! `vmdedup serve` under a `Type=notify` service manager: READY=1 arrives
//! only once the pool, the rings and every listening socket exist, and
//! STOPPING=1 on shutdown.

use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

mod common;
use common::process::s;
use common::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_vmdedup");

/// A free loopback TCP port (free when this returns; nothing else here
/// binds loopback ports).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Kills the agent if a check failed before it was stopped.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// The next notification (a generous bound: the machine may be busy).
fn next(sock: &UnixDatagram, seen: &[String]) -> String {
    let mut buf = [0u8; 4096];
    match sock.recv(&mut buf) {
        Ok(n) => String::from_utf8(buf[..n].to_vec()).unwrap(),
        Err(e) => panic!("no notification ({e}); before: {seen:?}"),
    }
}

/// Starts `serve` with `$NOTIFY_SOCKET` = `notify_name` (the socket `sock`
/// is bound to), then checks what each notification may promise.
fn serve_and_check(tag: &str, notify_name: &str, sock: &UnixDatagram) {
    let d = TempDir::new(tag);
    let tree = d.0.join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("f"), b"x").unwrap();
    let guest_dir = d.0.join("guest");
    std::fs::create_dir_all(&guest_dir).unwrap();
    let control = d.0.join("run/control.sock");
    let config = d.0.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "pool = \"{d}/pool\"\npool_size = \"1M\"\nring_dir = \"{d}\"\n\
             control_socket = \"{c}\"\n\
             [[namespace]]\nname = \"sys\"\ndir = \"{d}/tree\"\n\
             [[vm]]\nname = \"vm1\"\n",
            d = s(&d.0),
            c = s(&control)
        ),
    )
    .unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    sock.set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let mut agent = Agent(
        Command::new(BIN)
            .args(["serve", "--config", s(&config), "--metrics", &metrics])
            .args(["--guest-socket-dir", s(&guest_dir)])
            .env("NOTIFY_SOCKET", notify_name)
            .env("VMDEDUP_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut seen = Vec::new();
    loop {
        let msg = next(sock, &seen);
        if msg.lines().any(|l| l == "READY=1") {
            // Everything the unit promises to what starts after it exists
            // now: checked before the agent could create any of it later.
            let ring = d.0.join("vmdedup-vm1.ring");
            assert!(d.0.join("pool").exists(), "READY=1 before the pool");
            assert!(ring.exists(), "READY=1 before the ring region");
            assert!(
                guest_dir.join("vm1.vsock_5555").exists(),
                "READY=1 before the guest socket"
            );
            std::net::TcpStream::connect(&metrics).expect("READY=1 before the metrics port");
            let o = Command::new(BIN)
                .args(["vms", "--control", s(&control)])
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "READY=1 before the control socket answers: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            assert!(String::from_utf8_lossy(&o.stdout).contains("vm1"));
            assert!(
                msg.lines()
                    .any(|l| l.starts_with("STATUS=serving 1 VM(s), 1 namespace(s)")),
                "{msg}"
            );
            seen.push(msg);
            break;
        }
        assert!(
            !msg.contains("STOPPING=1"),
            "stopped before READY: {seen:?}"
        );
        seen.push(msg);
    }
    assert!(
        seen[0].starts_with("STATUS="),
        "a STATUS= line first: {seen:?}"
    );
    // SAFETY: kill(2) on the pid of a child this test started and has not
    // reaped yet, so the pid cannot name another process.
    assert_eq!(unsafe { libc::kill(agent.0.id() as i32, libc::SIGTERM) }, 0);
    let msg = next(sock, &seen);
    assert!(msg.lines().any(|l| l == "STOPPING=1"), "{msg}");
    let status = agent.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn ready_comes_after_every_socket_and_stopping_on_sigterm() {
    let d = TempDir::new("notify-path");
    let path = d.0.join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    serve_and_check("notify-path-agent", s(&path), &sock);
}

#[test]
fn an_abstract_notify_socket_works_too() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("vmdedup-test-notify-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let sock = UnixDatagram::bind_addr(&addr).unwrap();
    serve_and_check("notify-abstract-agent", &format!("@{name}"), &sock);
}
