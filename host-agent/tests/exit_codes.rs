//! The exit status of each kind of failure, as `vmdedup --help` and the
//! man page document it.

use std::process::{Command, Output};

mod common;
use common::process::spawn_ready;
use common::process::{s, vmdedup};
use common::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_vmdedup");

fn code(o: &Output) -> Option<i32> {
    o.status.code()
}

#[test]
fn usage_unreachable_refused_config_and_other_failures() {
    let d = TempDir::new("exit-codes");
    // Help and version are not failures; a bad command line is usage.
    assert_eq!(code(&vmdedup(&["--help"])), Some(0));
    assert_eq!(code(&vmdedup(&["--version"])), Some(0));
    assert_eq!(code(&vmdedup(&["--no-such-option"])), Some(2));
    assert_eq!(code(&vmdedup(&["status", "extra-argument"])), Some(2));
    assert_eq!(code(&vmdedup(&[])), Some(2));
    // No agent behind the socket.
    let absent = d.0.join("absent.sock");
    let o = vmdedup(&["vms", "--control", s(&absent)]);
    assert_eq!(code(&o), Some(4), "{}", String::from_utf8_lossy(&o.stderr));
    // A configuration that cannot serve.
    let bad = d.0.join("bad.toml");
    std::fs::write(&bad, "workers = 0\n").unwrap();
    assert_eq!(
        code(&vmdedup(&["serve", "--check", "--config", s(&bad)])),
        Some(78)
    );
    // So is one that cannot be read or parsed, for serve and the clients,
    // and a bad option.
    std::fs::write(&bad, "pool_size = [\n").unwrap();
    for args in [
        &["serve", "--check", "--config", s(&bad)][..],
        &["serve", "--config", s(&bad)][..],
        &["status", "--config", s(&bad)][..],
        &["qemu-args", "vm1", "--config", s(&d.0.join("missing.toml"))][..],
        &["serve", "--check", "--ns", "no-equals-sign"][..],
    ] {
        let o = vmdedup(args);
        assert_eq!(
            code(&o),
            Some(78),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    // Any other failure.
    let o = vmdedup(&["region", "show", s(&d.0.join("no-such-region"))]);
    assert_eq!(code(&o), Some(1), "{}", String::from_utf8_lossy(&o.stderr));

    // A running agent refuses what it cannot do.
    let tree = d.0.join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    let control = d.0.join("control.sock");
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--pool-size", "1M", "--vm", "vm1"])
        .args(["--ns", &format!("sys={}", s(&tree))])
        .args(["--pool", s(&d.0.join("pool")), "--ring-dir", s(&d.0)])
        .args(["--control", s(&control)])
        .env("VMDEDUP_LOG", "warn");
    let _agent = spawn_ready(cmd, &d.0, "the agent exited");
    let o = vmdedup(&["vms", "--control", s(&control)]);
    assert_eq!(code(&o), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    for args in [
        &["vm", "reinstate", "no-such-vm"][..],
        &["vm", "remove", "no-such-vm"][..],
        &["warm", "no-such-ns"][..],
    ] {
        let mut all = args.to_vec();
        all.extend(["--control", s(&control)]);
        let o = vmdedup(&all);
        assert_eq!(
            code(&o),
            Some(3),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}
