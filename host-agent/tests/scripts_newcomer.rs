//! The newcomer path's shell pieces that can run without root or network:
//! the progress lines of long builds (`scripts/lib/progress.sh`) and what
//! `scripts/setup --check` says when APT lacks the bookworm-security suite.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::TempDir;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs `script` in bash with `scripts/lib/progress.sh` sourced.
fn with_progress(script: &str, dir: &Path) -> std::process::Output {
    let lib = repo().join("scripts/lib/progress.sh");
    Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -euo pipefail; source '{}'; {script}",
            lib.display()
        ))
        .env("PROGRESS_INTERVAL", "1")
        .current_dir(dir)
        .output()
        .unwrap()
}

/// A fake build that compiles a file, then waits until `want` progress
/// lines were printed (so the test depends on no timing), then ends with
/// `status`. Its progress goes to `progress.txt`.
fn fake_build(want: usize, status: i32) -> String {
    format!(
        "fake() {{ echo '  CC      fs/a.o'; echo '  RUSTC   rust/core.o'; \
           for _ in $(seq 1 600); do \
             [ \"$(grep -c 'fake step' progress.txt || true)\" -ge {want} ] && break; \
             sleep 0.1; done; echo '  LD      vmlinux'; return {status}; }}; \
         rc=0; run_with_progress build.log 'fake step' fake 2> progress.txt || rc=$?; \
         echo \"rc=$rc\""
    )
}

#[test]
fn a_long_command_prints_progress_at_intervals_and_keeps_its_status() {
    let d = TempDir::new("progress");
    let o = with_progress(&fake_build(3, 0), &d.0);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(out.trim(), "rc=0");
    let progress = std::fs::read_to_string(d.0.join("progress.txt")).unwrap();
    let lines: Vec<&str> = progress.lines().collect();
    assert!(lines.len() >= 3, "{progress}");
    for l in &lines {
        // The step, the time so far, what was compiled, the log's last line.
        assert!(l.starts_with("fake step: "), "{l}");
        assert!(l.contains("m") && l.contains("s, "), "{l}");
        assert!(l.contains("2 files compiled"), "{l}");
        assert!(l.contains("now: RUSTC rust/core.o"), "{l}");
    }
    // The command's own output went to the log only.
    let log = std::fs::read_to_string(d.0.join("build.log")).unwrap();
    assert!(log.contains("LD      vmlinux"), "{log}");
    assert!(!progress.contains("vmlinux"), "{progress}");
}

#[test]
fn a_failing_command_keeps_its_exit_status() {
    let d = TempDir::new("progress-fail");
    let o = with_progress(&fake_build(1, 3), &d.0);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "rc=3");
    let progress = std::fs::read_to_string(d.0.join("progress.txt")).unwrap();
    assert!(progress.lines().count() >= 1, "{progress}");
}

#[test]
fn a_short_command_prints_no_progress() {
    let d = TempDir::new("progress-short");
    let o = with_progress(
        "PROGRESS_INTERVAL=600 run_with_progress build.log quick true 2> progress.txt; echo done",
        &d.0,
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "done");
    assert_eq!(
        std::fs::read_to_string(d.0.join("progress.txt")).unwrap(),
        ""
    );
}

/// `scripts/setup --check` on a machine whose APT has no
/// bookworm-security: fake `dpkg-query` (nothing installed) and
/// `apt-cache` (no candidate) first on PATH.
#[test]
fn setup_explains_a_missing_security_suite() {
    let d = TempDir::new("setup-suite");
    let bin = d.0.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let fake = |name: &str, body: &str| {
        use std::os::unix::fs::PermissionsExt;
        let p = bin.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    fake("dpkg-query", "exit 1");
    fake(
        "apt-cache",
        "echo 'linux-source-6.12:'; echo '  Installed: (none)'; echo '  Candidate: (none)'",
    );
    // Root, or a sudo that is never used by --check.
    fake("sudo", "exec \"$@\"");
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let o = Command::new(repo().join("scripts/setup"))
        .arg("--check")
        .env("PATH", path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("missing packages: "), "{err}");
    assert!(err.contains("bookworm-security suite is missing"), "{err}");
    assert!(
        err.lines().any(
            |l| l.trim() == "deb http://deb.debian.org/debian-security bookworm-security main"
        ),
        "{err}"
    );
}
