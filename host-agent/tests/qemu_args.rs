//! `vmdedup qemu-args` in every format, from a running agent (asked over
//! its control socket) and from a configuration without one: the paths and
//! sizes are the agent's, the source is said on standard error, names are
//! validated, commas in paths are doubled for QEMU, the JSON parses and the
//! libvirt XML validates against libvirt's schema (`virt-xml-validate`,
//! Debian's `libvirt-clients`, installed by `scripts/setup`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::process::s;
use common::process::{spawn_agent, AgentProcess};
use common::TempDir;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_vmdedup");

fn vmdedup(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("VMDEDUP_CONTROL")
        .output()
        .unwrap()
}

/// Standard output and standard error of a command that must succeed.
fn ok(args: &[&str]) -> (String, String) {
    let o = vmdedup(args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "vmdedup {args:?}: {err}");
    (String::from_utf8(o.stdout).unwrap(), err)
}

/// Removes a file when the test ends, however it ends.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// An agent whose ring_dir is the real /dev/shm: once it has stopped, its
/// ring-directory lock file there (`/dev/shm/vmdedup.lock`, holding its
/// pid) goes too, unless it names another process by then (a real agent's
/// lock is left alone).
struct ShmAgent(Option<AgentProcess>);

impl Drop for ShmAgent {
    fn drop(&mut self) {
        let Some(agent) = self.0.take() else { return };
        let pid = agent.0.id().to_string();
        drop(agent);
        let lock = Path::new("/dev/shm/vmdedup.lock");
        if std::fs::read_to_string(lock).is_ok_and(|p| p.trim() == pid) {
            let _ = std::fs::remove_file(lock);
        }
    }
}

/// `--format libvirt`'s output put into a minimal domain and checked
/// against libvirt's domain schema.
fn assert_libvirt_validates(xml: &str, dir: &Path) {
    let (devices, commandline) = xml
        .split_once("<!-- The last child of <domain>: -->\n")
        .expect("the output says where its parts go");
    let domain = format!(
        "<domain type='kvm'>\n<name>qemu-args-test</name>\n<memory unit='MiB'>256</memory>\n\
         <os><type arch='x86_64' machine='pc'>hvm</type></os>\n\
         <devices>\n{devices}</devices>\n{commandline}</domain>\n"
    );
    let file = dir.join("domain.xml");
    std::fs::write(&file, &domain).unwrap();
    let o = Command::new("virt-xml-validate")
        .args([s(&file), "domain"])
        .output()
        .unwrap_or_else(|e| {
            panic!("virt-xml-validate: {e} (scripts/setup installs libvirt-clients)")
        });
    assert!(
        o.status.success(),
        "libvirt's schema refuses:\n{domain}\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The one-per-line arguments of an attachment, as QEMU takes them.
fn expected_args(ring: &Path, ring_size: u64, pool: &Path, pool_size: u64) -> Vec<String> {
    let q = |p: &Path| s(p).replace(',', ",,");
    vec![
        "-object".into(),
        format!(
            "memory-backend-file,id=vmdedup-ring,mem-path={},size={ring_size},share=on",
            q(ring)
        ),
        "-device".into(),
        "ivshmem-plain,memdev=vmdedup-ring".into(),
        "-object".into(),
        format!(
            "memory-backend-file,id=vmdedup-pool,mem-path={},size={pool_size},share=on,readonly=on",
            q(pool)
        ),
        "-device".into(),
        "ivshmem-plain,memdev=vmdedup-pool".into(),
        "-device".into(),
        "virtio-balloon-pci,id=vmdedup-balloon,free-page-reporting=on".into(),
    ]
}

#[test]
fn from_a_running_agent_in_every_format() {
    let dir = TempDir::new("qemu-args-agent");
    // The ring in /dev/shm, where libvirt's <shmem> names files; a VM name
    // of this test's own, since /dev/shm is shared.
    let vm = format!("qa{}", std::process::id());
    let ring = Path::new("/dev/shm").join(format!("vmdedup-{vm}.ring"));
    let _ring = RemoveOnDrop(ring.clone());
    // The pool in a directory with a comma: QEMU needs it doubled.
    let pools = dir.0.join("p,q");
    std::fs::create_dir_all(&pools).unwrap();
    let control = dir.0.join("control.sock");
    let file = dir.0.join("agent.toml");
    std::fs::write(
        &file,
        format!(
            "pool = \"{p}/pool\"\npool_size = \"2M\"\nring_dir = \"/dev/shm\"\ndoorbell = false\nworkers = 1\n\
             control_socket = \"{c}\"\n[[vm]]\nname = \"{vm}\"\ndomain = \"tenant-a\"\n",
            p = s(&pools),
            c = s(&control)
        ),
    )
    .unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--config", s(&file), "--ring-size", "1M"])
        .env("VMDEDUP_LOG", "warn");
    let _agent = ShmAgent(Some(spawn_agent(cmd, &control, "the agent exited")));
    let pool = pools.join("pool.tenant-a");
    let want = expected_args(&ring, 1 << 20, &pool, 2 << 20);

    // Only the control socket given: everything else is the agent's.
    let c = s(&control);
    let (out, err) = ok(&["qemu-args", &vm, "--control", c]);
    assert_eq!(out.lines().collect::<Vec<_>>(), want);
    assert!(
        err.contains(&format!("from the running agent at {c}")),
        "{err}"
    );
    // The config file names the socket too.
    let (out, _) = ok(&["qemu-args", &vm, "--config", s(&file)]);
    assert_eq!(out.lines().collect::<Vec<_>>(), want);

    let (out, _) = ok(&["qemu-args", &vm, "--control", c, "--format", "shell"]);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(
        out.contains(" -device ivshmem-plain,memdev=vmdedup-pool "),
        "{out}"
    );
    assert!(out.contains(&format!(
        "mem-path={},size=2097152",
        s(&pool).replace(',', ",,")
    )));

    let (out, _) = ok(&["qemu-args", &vm, "--control", c, "--format", "json"]);
    let j: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["source"], "agent");
    assert_eq!(j["vm"], vm.as_str());
    assert_eq!(j["domain"], "tenant-a");
    assert_eq!(j["ring"]["path"], s(&ring));
    assert_eq!(j["ring"]["size"], 1 << 20);
    assert_eq!(j["pool"]["path"], s(&pool));
    assert_eq!(j["pool"]["size"], 2 << 20);
    assert_eq!(j["args"], serde_json::json!(want));

    let (out, err) = ok(&["qemu-args", &vm, "--control", c, "--format", "libvirt"]);
    assert!(
        out.contains(&format!("<shmem name='vmdedup-{vm}.ring'>")),
        "{out}"
    );
    assert!(out.contains("<memballoon model='virtio' freePageReporting='on'/>"));
    assert!(
        out.contains("p,,q/pool.tenant-a,size=2097152,share=on,readonly=on"),
        "{out}"
    );
    assert!(
        !out.contains("id=vmdedup-ring"),
        "the ring is a <shmem>: {out}"
    );
    assert!(
        err.contains(&format!("chown libvirt-qemu {} ", s(&ring))),
        "{err}"
    );
    assert_libvirt_validates(&out, &dir.0);

    // Options must agree with the agent.
    let o = vmdedup(&["qemu-args", &vm, "--control", c, "--ring-size", "64K"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && o.stdout.is_empty());
    assert!(
        err.contains("--ring-size 65536: the agent's ring is 1048576 bytes"),
        "{err}"
    );
    let o = vmdedup(&["qemu-args", &vm, "--control", c, "--domain", "default"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("the agent has"));
    // A VM the agent does not serve is not attached from the config either.
    let o = vmdedup(&["qemu-args", "vm9", "--config", s(&file)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && o.stdout.is_empty());
    assert!(err.contains("has no VM \"vm9\""), "{err}");
}

#[test]
fn from_a_configuration_without_an_agent_in_every_format() {
    let dir = TempDir::new("qemu-args-config");
    let rings = dir.0.join("r,s");
    std::fs::create_dir_all(&rings).unwrap();
    let file = dir.0.join("agent.toml");
    let control = dir.0.join("control.sock");
    std::fs::write(
        &file,
        format!(
            "pool = \"{d}/pool\"\npool_size = \"4M\"\nring_dir = \"{r}\"\ndoorbell = false\n\
             control_socket = \"{c}\"\n[[vm]]\nname = \"vm1\"\n",
            d = s(&dir.0),
            r = s(&rings),
            c = s(&control)
        ),
    )
    .unwrap();
    let ring = rings.join("vmdedup-vm1.ring");
    let pool = dir.0.join("pool");
    let f = s(&file);

    let (out, err) = ok(&["qemu-args", "vm1", "--config", f]);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        expected_args(&ring, 1 << 20, &pool, 4 << 20)
    );
    assert!(out.contains("r,,s/vmdedup-vm1.ring,size="), "{out}");
    assert!(
        err.contains(&format!("from the configuration {f}")),
        "{err}"
    );
    assert!(err.contains("no agent answers at"), "{err}");
    assert!(err.contains("serve's default ring size"), "{err}");

    // The ring's size: --ring-size, else the ring file's.
    let (out, err) = ok(&["qemu-args", "vm1", "--config", f, "--ring-size", "256K"]);
    assert!(out.contains("vmdedup-vm1.ring,size=262144,"), "{out}");
    assert!(err.contains("from --ring-size"), "{err}");
    std::fs::write(&ring, vec![0u8; 128 << 10]).unwrap();
    let (out, _) = ok(&["qemu-args", "vm1", "--config", f]);
    assert!(out.contains("vmdedup-vm1.ring,size=131072,"), "{out}");

    let (out, _) = ok(&[
        "qemu-args",
        "vm1",
        "--config",
        f,
        "--format",
        "shell",
        "--no-balloon",
    ]);
    assert_eq!(out.lines().count(), 1);
    assert!(!out.contains("balloon"), "{out}");

    let (out, _) = ok(&["qemu-args", "vm1", "--config", f, "--format", "json"]);
    let j: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["source"], "config");
    assert_eq!(j["ring"]["path"], s(&ring));
    assert_eq!(j["ring"]["size"], 128 << 10);
    assert_eq!(j["pool"]["size"], 4 << 20);
    assert_eq!(j["args"].as_array().unwrap().len(), 10);

    // Outside /dev/shm the ring goes through <qemu:commandline> too.
    let (out, err) = ok(&["qemu-args", "vm1", "--config", f, "--format", "libvirt"]);
    assert!(!out.contains("<shmem"), "{out}");
    assert!(
        out.contains("r,,s/vmdedup-vm1.ring,size=131072,share=on'/>"),
        "{out}"
    );
    assert!(err.contains("which <shmem> requires"), "{err}");
    assert_libvirt_validates(&out, &dir.0);

    // Without an agent and without a configuration, it says so.
    let o = vmdedup(&["qemu-args", "vm1", "--control", s(&control)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && o.stdout.is_empty());
    assert!(err.contains("no agent answers at"), "{err}");
    assert!(err.contains("give --config FILE"), "{err}");
}

/// With doorbells (`doorbell = true`) the ring is an ivshmem-doorbell device on
/// the agent's socket, in every format; libvirt's schema takes its
/// `<shmem>` with `<server>`; `--no-doorbell` prints the plain ring.
#[test]
fn a_doorbell_ring_in_every_format() {
    let dir = TempDir::new("qemu-args-doorbell");
    let file = dir.0.join("agent.toml");
    std::fs::write(
        &file,
        format!(
            "pool = \"{d}/pool\"\npool_size = \"4M\"\nring_dir = \"{d}\"\n\
             doorbell = true\ncontrol_socket = \"{d}/no-agent.sock\"\n[[vm]]\nname = \"vm1\"\n",
            d = s(&dir.0)
        ),
    )
    .unwrap();
    let f = s(&file);
    let sock = dir.0.join("vmdedup-vm1.doorbell");
    let (out, err) = ok(&["qemu-args", "vm1", "--config", f]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "-chardev");
    assert_eq!(
        lines[1],
        format!("socket,id=vmdedup-ring,path={}", s(&sock))
    );
    assert_eq!(lines[3], "ivshmem-doorbell,chardev=vmdedup-ring,vectors=1");
    assert!(
        lines.contains(&"ivshmem-plain,memdev=vmdedup-pool"),
        "{out}"
    );
    assert!(
        err.contains("ivshmem-doorbell device served by the agent"),
        "{err}"
    );
    let (json, _) = ok(&["qemu-args", "vm1", "--config", f, "--format", "json"]);
    let v: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["ring"]["device"], "ivshmem-doorbell");
    assert_eq!(v["ring"]["doorbell_socket"], s(&sock));
    let (xml, _) = ok(&["qemu-args", "vm1", "--config", f, "--format", "libvirt"]);
    assert!(xml.contains("<model type='ivshmem-doorbell'/>"), "{xml}");
    assert_libvirt_validates(&xml, &dir.0);
    let (out, err) = ok(&["qemu-args", "vm1", "--config", f, "--no-doorbell"]);
    assert!(out.contains("ivshmem-plain,memdev=vmdedup-ring"), "{out}");
    assert!(!out.contains("chardev"), "{out}");
    assert!(err.contains("ivshmem-plain device, polled"), "{err}");
}

#[test]
fn names_that_are_not_vm_names_are_refused_in_every_format() {
    let dir = TempDir::new("qemu-args-names");
    let file = dir.0.join("agent.toml");
    std::fs::write(&file, format!("ring_dir = \"{}\"\n", s(&dir.0))).unwrap();
    for format in ["lines", "shell", "json", "libvirt"] {
        for name in ["../../etc/evil", "a/b", "a,b", "", "vm 1", &"x".repeat(33)] {
            let o = vmdedup(&["qemu-args", name, "--config", s(&file), "--format", format]);
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(!o.status.success(), "{name:?} accepted ({format})");
            assert!(err.contains("VM name"), "{name:?}: {err}");
            assert!(o.stdout.is_empty(), "{name:?}: nothing printed");
        }
    }
}
