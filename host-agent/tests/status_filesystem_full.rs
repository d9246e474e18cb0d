//! `vmdedup status` tells the operator when a pool's filesystem ran out of
//! memory: per trust domain, in the human table (with what to do) and in
//! `--json`. The filesystem is a real small tmpfs that something else fills
//! while the agent runs (needs root to mount; without it the test says so
//! and checks nothing).

use std::io::Write;
use std::process::Command;

mod common;
use common::process::spawn_agent;
use common::process::{s, vmdedup};
use common::{SmallTmpfs, TempDir};

const BIN: &str = env!("CARGO_BIN_EXE_vmdedup");

#[test]
fn status_shows_a_full_pool_filesystem_per_domain() {
    let Some(fs) = SmallTmpfs::mount("status-fs-full", "16m") else {
        return;
    };
    let d = TempDir::new("status-fs-full");
    let tree = d.0.join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    // 5 MiB: more than the 2 MiB chunks the pool had reserved before
    // the filesystem filled up.
    for i in 0..20u64 {
        // Distinct pages: nothing deduplicates.
        let bytes: Vec<u8> = (0..64 * 512u64)
            .flat_map(|w| ((i << 40) | w).to_le_bytes())
            .collect();
        std::fs::write(tree.join(format!("f{i}")), bytes).unwrap();
    }
    let control = d.0.join("control.sock");
    let mut serve = Command::new(BIN);
    serve
        .args([
            "serve",
            "--pool",
            s(&fs.0.join("pool")),
            "--pool-size",
            "8M",
        ])
        .args(["--ring-dir", s(&d.0), "--control", s(&control)])
        .args(["--ns", &format!("sys={}", s(&tree)), "--vm", "vm1"])
        .env("VMDEDUP_LOG", "warn");
    let _agent = spawn_agent(serve, &control, "the agent exited");

    // Nothing is full yet.
    let o = vmdedup(&["status", "--json", "--control", s(&control)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["domains"][0]["filesystem_full"], 0, "{j}");

    // Something else takes the rest of the filesystem.
    let mut filler = std::fs::File::create(fs.0.join("filler")).unwrap();
    let chunk = vec![0xa5u8; 64 << 10];
    while filler.write_all(&chunk).is_ok() {}
    drop(filler);

    let o = vmdedup(&["warm", "sys", "--control", s(&control)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let o = vmdedup(&["status", "--json", "--control", s(&control)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let dom = &j["domains"][0];
    assert_eq!(dom["name"], "default", "{j}");
    let full = dom["filesystem_full"].as_u64().unwrap();
    assert!(full > 0, "{j}");
    assert!(j["misses"].is_object(), "{j}");

    let o = vmdedup(&["status", "--control", s(&control)]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let header = text.lines().find(|l| l.starts_with("DOMAIN")).unwrap();
    assert!(header.ends_with("FS_FULL"), "{text}");
    let row = text.lines().find(|l| l.starts_with("default ")).unwrap();
    assert!(row.ends_with(&format!(" {full}")), "{text}");
    let advice = text
        .lines()
        .find(|l| l.starts_with("domain default: its pool's filesystem was full"))
        .unwrap_or_else(|| panic!("no advice line: {text}"));
    assert!(advice.contains("/dev/shm"), "{advice}");
}
