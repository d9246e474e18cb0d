//! A `vmdedup serve` run as a child process of the test.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child agent, stopped (SIGTERM) and reaped when the test ends, however it ends.
pub struct AgentProcess(pub Child);

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            // SAFETY: kill(2) on the pid of a child this test started and
            // has not reaped yet, so the pid cannot name another process.
            unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        }
        let _ = self.0.wait();
    }
}

/// Spawns the agent `cmd` (its output to /dev/null, its log to the test's)
/// and waits until `control` exists; fails with `exited` if it exits first.
pub fn spawn_agent(mut cmd: Command, control: &Path, exited: &str) -> AgentProcess {
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut agent = AgentProcess(child);
    // Generous: the machine may be busy; this only bounds a broken agent.
    let give_up = Instant::now() + Duration::from_secs(120);
    while !control.exists() {
        assert!(agent.0.try_wait().unwrap().is_none(), "{exited}");
        assert!(
            Instant::now() < give_up,
            "the agent never opened its socket"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    agent
}

/// Spawns the agent `cmd` with `NOTIFY_SOCKET` set to a datagram socket in
/// `dir`, and waits for its `READY=1`: from then on every pool, ring and
/// socket exists. Fails with `exited` if it exits first.
pub fn spawn_ready(mut cmd: Command, dir: &Path, exited: &str) -> AgentProcess {
    let path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&path);
    let notify = UnixDatagram::bind(&path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let child = cmd
        .env("NOTIFY_SOCKET", &path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut agent = AgentProcess(child);
    // Generous: the machine may be busy; this only bounds a broken agent.
    let give_up = Instant::now() + Duration::from_secs(120);
    let mut buf = [0u8; 1024];
    loop {
        if let Ok(n) = notify.recv(&mut buf) {
            if String::from_utf8_lossy(&buf[..n]).contains("READY=1") {
                // The agent notifies again when it stops (STOPPING=1): keep
                // the socket open for the rest of the test process.
                std::mem::forget(notify);
                return agent;
            }
        }
        assert!(agent.0.try_wait().unwrap().is_none(), "{exited}");
        assert!(Instant::now() < give_up, "the agent never sent READY=1");
    }
}

/// The `vmdedup` binary Cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_vmdedup");

/// Runs `vmdedup ARGS` to completion: logs at warn, and no control socket
/// taken from the test's environment.
pub fn vmdedup(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env("VMDEDUP_LOG", "warn")
        .env_remove("VMDEDUP_CONTROL")
        .output()
        .unwrap()
}

/// A path as a command-line argument (the tests' paths are UTF-8).
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Starts `vmdedup serve` (the binary `bin`) on a 4 MiB pool with VMs
/// "vm1" (domain default) and "vm2" (domain blue), serving `tree` as
/// namespace `ns` to both domains (so a file can be in two pools), with
/// its pool, rings and `control.sock` in `dir`; returns once it is ready.
pub fn serve_two_domains(bin: &str, dir: &Path, ns: &str, tree: &Path) -> AgentProcess {
    std::fs::create_dir_all(dir).unwrap();
    let mut cmd = Command::new(bin);
    cmd.args([
        "serve",
        "--pool-size",
        "4M",
        "--vm",
        "vm1",
        "--vm",
        "vm2:blue",
    ])
    .args(["--ns", &format!("{ns}={}", s(tree))])
    .args(["--ns-domains", &format!("{ns}=default,blue")])
    .args(["--pool", s(&dir.join("pool")), "--ring-dir", s(dir)])
    .args(["--control", s(&dir.join("control.sock"))])
    .env("VMDEDUP_LOG", "warn");
    spawn_ready(cmd, dir, "the agent exited")
}
