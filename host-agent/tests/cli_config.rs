//! `vmdedup config new` and `vmdedup qemu-args` as scripts use them: the
//! written file is the configuration the options describe, `serve --config`
//! runs with it, and `qemu-args --config` prints the devices a VM needs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use vmdedup_host_agent::config::AgentConfig;
use vmdedup_host_agent::namespace::NamespaceConfig;

mod common;
use common::agent::vm;
use common::process::s;
use common::process::spawn_agent;
use common::service::ns_config;
use common::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_vmdedup");

fn vmdedup(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn ok_stdout(args: &[&str]) -> String {
    let o = vmdedup(args);
    assert!(
        o.status.success(),
        "vmdedup {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// What `scripts/guest-run` describes: two namespaces compared at whole
/// seconds, one of them for two domains, and VMs in domains.
fn write_guest_run_config(dir: &Path) -> (PathBuf, AgentConfig) {
    let (a, b) = (dir.join("tree a"), dir.join("tree=b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let file = dir.join("agent.toml");
    let pool = dir.join("vmdedup.pool");
    let control = dir.join("control.sock");
    let out = ok_stdout(&[
        "config",
        "new",
        "--ns",
        &format!("sys={}", s(&a)),
        "--ns-domains",
        "sys=default,tenant-b",
        "--ns-mtime-granularity",
        "sys=1000000000",
        "--ns",
        &format!("data={}", s(&b)),
        "--ns-domains",
        "data=tenant-b",
        "--ns-mtime-granularity",
        "data=1000000000",
        "--vm",
        "vm1:default",
        "--vm",
        "vm2:tenant-b",
        "--pool",
        s(&pool),
        "--pool-size",
        "1M",
        "--ring-dir",
        s(dir),
        "--control",
        s(&control),
        "-o",
        s(&file),
    ]);
    assert_eq!(out, "", "with -o nothing goes to standard output");
    let ns = |name: &str, id, dir: &Path, domains: &[&str]| NamespaceConfig {
        mtime_granularity_ns: 1_000_000_000,
        ..ns_config(name, id, dir, domains)
    };
    let want = AgentConfig {
        pool,
        pool_size: 1 << 20,
        control_socket: control,
        ring_dir: dir.to_path_buf(),
        namespaces: vec![
            ns("sys", 1, &a, &["default", "tenant-b"]),
            ns("data", 2, &b, &["tenant-b"]),
        ],
        vms: vec![vm("vm1", "default"), vm("vm2", "tenant-b")],
        ..AgentConfig::default()
    };
    (file, want)
}

#[test]
fn config_new_writes_what_the_options_say_and_reads_back_the_same() {
    let d = TempDir::new("cli-config");
    let (file, want) = write_guest_run_config(&d.0);
    assert_eq!(AgentConfig::load(&file).unwrap(), want);
    // The written form is a fixed point: rewriting it changes nothing.
    let again = ok_stdout(&["config", "new", "--config", s(&file)]);
    assert_eq!(again, std::fs::read_to_string(&file).unwrap());
}

#[test]
fn qemu_args_prints_one_argument_per_line_for_the_ring_the_pool_and_the_balloon() {
    let d = TempDir::new("cli-qemu");
    let (file, _) = write_guest_run_config(&d.0);
    let out = ok_stdout(&[
        "qemu-args",
        "vm2",
        "--config",
        s(&file),
        "--ring-size",
        "256K",
        "--no-doorbell",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    let ring = d.0.join("vmdedup-vm2.ring");
    // vm2 is in trust domain tenant-b: it attaches that domain's pool.
    let pool = d.0.join("vmdedup.pool.tenant-b");
    assert_eq!(
        lines,
        [
            "-object".to_string(),
            format!(
                "memory-backend-file,id=vmdedup-ring,mem-path={},size=262144,share=on",
                s(&ring)
            ),
            "-device".to_string(),
            "ivshmem-plain,memdev=vmdedup-ring".to_string(),
            "-object".to_string(),
            format!(
                "memory-backend-file,id=vmdedup-pool,mem-path={},size=1048576,share=on,readonly=on",
                s(&pool)
            ),
            "-device".to_string(),
            "ivshmem-plain,memdev=vmdedup-pool".to_string(),
            "-device".to_string(),
            "virtio-balloon-pci,id=vmdedup-balloon,free-page-reporting=on".to_string(),
        ]
    );
    // A VM with a balloon of its own gets the regions only.
    let out = ok_stdout(&["qemu-args", "vm2", "--config", s(&file), "--no-balloon"]);
    assert_eq!(out.lines().count(), 8, "{out}");
    assert!(!out.contains("balloon"), "{out}");
}

#[test]
fn config_new_says_what_is_wrong() {
    for (args, says) in [
        (vec!["--ns-domains", "nope=a"], "no namespace \"nope\""),
        (vec!["--vm", "a b"], "--vm \"a b\""),
        (vec!["--ns", "x=/x", "--ns", "x=/y"], "declared twice"),
        (
            vec!["--ns", "x=/x", "--ns-mtime-granularity", "x=soon"],
            "not a number",
        ),
        (vec!["--pool-size", "3M"], "power of two"),
    ] {
        let mut all = vec!["config", "new"];
        all.extend(&args);
        let o = vmdedup(&all);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} was accepted");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(o.stdout.is_empty(), "{args:?}: no configuration on errors");
    }
}

#[test]
fn serve_runs_with_the_written_config() {
    let d = TempDir::new("cli-serve");
    let (file, want) = write_guest_run_config(&d.0);
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--config", s(&file), "--ring-size", "64K"])
        .env("VMDEDUP_LOG", "warn");
    let _agent = spawn_agent(
        cmd,
        &want.control_socket,
        "the agent exited with the written configuration",
    );
    let vms = ok_stdout(&["vms", "--control", s(&want.control_socket)]);
    let rows: Vec<Vec<&str>> = vms
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().take(2).collect())
        .collect();
    assert_eq!(rows, [["vm1", "default"], ["vm2", "tenant-b"]]);
    for vm in ["vm1", "vm2"] {
        assert_eq!(
            std::fs::metadata(want.ring_path(vm)).unwrap().len(),
            64 << 10
        );
    }
}

#[test]
fn qemu_args_refuses_names_that_are_not_vm_names() {
    let d = TempDir::new("cli-qemu-names");
    let (file, _) = write_guest_run_config(&d.0);
    let long = "x".repeat(33);
    for name in ["../../etc/evil", "..", ".", "a/b", "", "a,b", "vm 1", &long] {
        let o = vmdedup(&["qemu-args", name, "--config", s(&file)]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{name:?} was accepted");
        assert!(err.contains("VM name"), "{name:?}: {err}");
        assert!(o.stdout.is_empty(), "{name:?}: no arguments on errors");
    }
    // A valid name whose paths hold a comma still gets it doubled.
    let dir = d.0.join("a,b");
    std::fs::create_dir_all(&dir).unwrap();
    let out = ok_stdout(&[
        "qemu-args",
        "vm-1.x_y",
        "--control",
        s(&d.0.join("no-agent.sock")),
        "--ring-dir",
        s(&dir),
        "--pool",
        s(&dir.join("p")),
        "--no-doorbell",
    ]);
    assert!(out.contains("a,,b/vmdedup-vm-1.x_y.ring"), "{out}");
    assert!(out.contains("a,,b/p,"), "{out}");
}
