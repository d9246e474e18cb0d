//! `--json` on every listing command (`status`, `vms`, `files`): each
//! prints one JSON document that says what the human table says.

mod common;
use common::process::serve_two_domains;
use common::process::{s, vmdedup};
use common::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_vmdedup");

fn json(args: &[&str]) -> serde_json::Value {
    let o = vmdedup(args);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&o.stdout)
        )
    })
}

#[test]
fn listings_print_json() {
    let d = TempDir::new("cli-json");
    let tree = d.0.join("tree");
    std::fs::create_dir_all(tree.join("lib")).unwrap();
    // 3 pages and 1 byte: 4 pages in the pool.
    std::fs::write(tree.join("lib/a.so"), vec![7u8; 3 * 4096 + 1]).unwrap();
    let control = d.0.join("control.sock");
    let _agent = serve_two_domains(BIN, &d.0, "sys", &tree);
    let c = s(&control);
    let o = vmdedup(&["warm", "sys", "--control", c]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let vms = json(&["vms", "--json", "--control", c]);
    let list = vms.as_array().expect("vms --json is an array");
    let mut names: Vec<(&str, &str)> = list
        .iter()
        .map(|v| (v["name"].as_str().unwrap(), v["domain"].as_str().unwrap()))
        .collect();
    names.sort();
    assert_eq!(names, [("vm1", "default"), ("vm2", "blue")]);
    for v in list {
        assert_eq!(v["cut_off"], false);
        assert_eq!(v["maps_held"], 0);
        assert_eq!(v["hints"], 0, "no guest hinted yet");
    }
    // The same objects as status --json lists.
    let status = json(&["status", "--json", "--control", c]);
    assert_eq!(status["vms"], vms);
    // Each with its ring device and wake-ups.
    for v in list {
        assert!(v["ring"]["device"].is_string(), "{v}");
        assert_eq!(v["ring"]["doorbells"], 0, "{v}");
    }

    // Warmed into both domains' pools: one entry per domain.
    let files = json(&["files", "sys", "--json", "--control", c]);
    assert_eq!(files["namespace"], "sys");
    assert_eq!(files["offset"], 0);
    assert_eq!(files["total"], 2, "{files}");
    let mut domains: Vec<&str> = files["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            assert_eq!(f["path"], "lib/a.so");
            assert_eq!(f["size"], 3 * 4096 + 1);
            assert_eq!(f["pages"], 4);
            f["domain"].as_str().unwrap()
        })
        .collect();
    domains.sort();
    assert_eq!(domains, ["blue", "default"]);
    // --offset past the end: the total stays, the list is empty.
    let rest = json(&["files", "sys", "--json", "--offset", "2", "--control", c]);
    assert_eq!(rest["total"], 2);
    assert_eq!(rest["files"].as_array().unwrap().len(), 0);
}
