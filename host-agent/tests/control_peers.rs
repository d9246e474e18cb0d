//! Who reaches the agent's control socket, and how clients find it: a
//! member of `control_group` through a supplementary group is served, any
//! other user is told why not, and every client command finds the socket
//! through `VMDEDUP_CONTROL` or `--config`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::process::s;
use common::process::spawn_agent;
use common::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_vmdedup");

/// A configuration for one VM and one namespace, everything inside `dir`.
fn config(dir: &Path, control_group: Option<&str>) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(dir.join("tree")).unwrap();
    std::fs::write(dir.join("tree/f"), b"x").unwrap();
    let file = dir.join("agent.toml");
    let control = dir.join("run/control.sock");
    let group = control_group.map_or(String::new(), |g| format!("control_group = \"{g}\"\n"));
    std::fs::write(
        &file,
        format!(
            "pool = \"{d}/pool\"\npool_size = \"1M\"\nring_dir = \"{d}\"\n\
             control_socket = \"{c}\"\n{group}\
             [[namespace]]\nname = \"sys\"\ndir = \"{d}/tree\"\n\
             [[vm]]\nname = \"vm1\"\n",
            d = s(dir),
            c = s(&control)
        ),
    )
    .unwrap();
    (file, control)
}

fn serve(file: &Path, control: &Path) -> common::process::AgentProcess {
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--config", s(file)])
        .env("VMDEDUP_LOG", "warn");
    spawn_agent(cmd, control, "the agent exited")
}

fn client(args: &[&str], env: Option<&Path>) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove("VMDEDUP_CONTROL");
    if let Some(p) = env {
        cmd.env("VMDEDUP_CONTROL", p);
    }
    cmd.output().unwrap()
}

fn assert_ok(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn every_client_command_finds_the_agent_through_the_environment_or_the_config() {
    let d = TempDir::new("peers-env");
    let (file, control) = config(&d.0, None);
    let _agent = serve(&file, &control);
    let commands: [&[&str]; 8] = [
        &["status"],
        &["status", "--json"],
        &["vms"],
        &["files", "sys"],
        &["warm", "sys"],
        &["evict", "sys", "f"],
        &["vm", "reinstate", "vm1"],
        &["vm", "add", "vm2"],
    ];
    for (i, args) in commands.iter().enumerate() {
        assert_ok(
            &client(args, Some(&control)),
            &format!("VMDEDUP_CONTROL {args:?}"),
        );
        let mut with_config = args.to_vec();
        with_config.extend(["--config", s(&file)]);
        if i == commands.len() - 1 {
            // Added once already.
            with_config[2] = "vm3";
        }
        assert_ok(&client(&with_config, None), &format!("{with_config:?}"));
    }
    assert_ok(
        &client(&["vm", "remove", "vm3"], Some(&control)),
        "vm remove",
    );
    // --control wins over both.
    let o = client(
        &[
            "vms",
            "--control",
            s(&d.0.join("nothing.sock")),
            "--config",
            s(&file),
        ],
        Some(&control),
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("nothing.sock"), "{err}");
}

/// A user of the user database who is a member of a group that is not its
/// primary group (listed in /etc/group), if there is one.
fn supplementary_member() -> Option<(String, String)> {
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    for line in groups.lines() {
        let f: Vec<&str> = line.split(':').collect();
        let [name, _, gid, members] = f[..] else {
            continue;
        };
        for user in members.split(',').filter(|u| !u.is_empty()) {
            let primary = Command::new("id").args(["-g", user]).output().ok()?;
            if primary.status.success() && String::from_utf8_lossy(&primary.stdout).trim() != gid {
                return Some((user.to_string(), name.to_string()));
            }
        }
    }
    None
}

/// Runs the client `bin` as `user` with the groups a login gives it.
fn client_as(user: &str, bin: &Path, args: &[&str]) -> Output {
    Command::new("runuser")
        .args(["-u", user, "--", s(bin)])
        .args(args)
        .env_remove("VMDEDUP_CONTROL")
        .output()
        .unwrap()
}

fn can_switch_users() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    root && Command::new("runuser")
        .args(["-u", "nobody", "--", "true"])
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn a_member_through_a_supplementary_group_is_served_and_others_are_told_why_not() {
    if !can_switch_users() {
        eprintln!("not root or no runuser: this test checks nothing here");
        return;
    }
    let Some((user, group)) = supplementary_member() else {
        eprintln!(
            "no user with a supplementary group in /etc/group: this test checks nothing here"
        );
        return;
    };
    let d = TempDir::new("peers-groups");
    std::fs::set_permissions(&d.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = Path::new(BIN);
    if !client_as("nobody", bin, &["--version"]).status.success() {
        eprintln!("other users may not run {BIN}: this test checks nothing here");
        return;
    }
    let (file, control) = config(&d.0, Some(&group));
    let _agent = serve(&file, &control);
    let o = client_as(&user, bin, &["vms", "--control", s(&control)]);
    assert_ok(&o, &format!("{user} in {group} (supplementary)"));
    assert!(String::from_utf8_lossy(&o.stdout).contains("vm1"));
    // Someone the socket file's mode lets in but the agent must not serve.
    std::fs::set_permissions(&control, std::fs::Permissions::from_mode(0o666)).unwrap();
    let o = client_as("nobody", bin, &["vms", "--control", s(&control)]);
    assert!(!o.status.success(), "nobody was served");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("may not use this agent"), "{err}");
    assert!(err.contains("control_group"), "{err}");
    assert!(!err.contains("Broken pipe"), "{err}");
}
