//! A `vmdedup serve` run as a child process of the test.

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
