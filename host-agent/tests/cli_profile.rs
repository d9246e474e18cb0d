//! A warm profile: `vmdedup files NS --paths` lists what the pool holds of
//! a namespace, one path per line, and `vmdedup warm NS --from FILE`
//! preloads exactly those paths into another agent's pool.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

mod common;
use common::process::{s, serve_two_domains, vmdedup, AgentProcess};
use common::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_vmdedup");

/// An agent serving `tree` as namespace "img" to VMs in two domains, its
/// state under `dir`.
fn agent(dir: &Path, tree: &Path) -> AgentProcess {
    serve_two_domains(BIN, dir, "img", tree)
}

fn ok(args: &[&str]) -> String {
    let o = vmdedup(args);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn paths(control: &str) -> String {
    ok(&["files", "img", "--paths", "--control", control])
}

#[test]
fn a_profile_written_by_one_agent_warms_exactly_those_paths_in_another() {
    let d = TempDir::new("cli-profile");
    let tree = d.0.join("tree");
    std::fs::create_dir_all(tree.join("usr/lib")).unwrap();
    std::fs::create_dir_all(tree.join("usr/share/doc")).unwrap();
    // More files than one page of `files` (16), most of which no guest reads.
    for i in 0..20 {
        std::fs::write(
            tree.join(format!("usr/lib/l{i:02}.so")),
            vec![i as u8; 5000],
        )
        .unwrap();
    }
    for i in 0..5 {
        std::fs::write(tree.join(format!("usr/share/doc/d{i}")), vec![9u8; 100]).unwrap();
    }
    std::fs::write(tree.join("usr/bin-tool"), b"#!/bin/sh\n").unwrap();

    let first = d.0.join("first");
    let a = agent(&first, &tree);
    let c1 = s(&first.join("control.sock")).to_string();
    assert_eq!(paths(&c1), "", "an empty pool: an empty profile");
    // What the guests read: the libraries and one more file.
    ok(&["warm", "img", "usr/lib", "--control", &c1]);
    ok(&["warm", "img", "usr/bin-tool", "--control", &c1]);
    let profile = paths(&c1);
    let mut want: Vec<String> = (0..20).map(|i| format!("usr/lib/l{i:02}.so")).collect();
    want.insert(0, "usr/bin-tool".into());
    want.sort();
    assert_eq!(
        profile.lines().collect::<Vec<_>>(),
        want,
        "each path once, sorted, though it is in two domains' pools"
    );
    drop(a);

    // A new agent, a new pool: warm from the profile, which also names a
    // file deleted meanwhile and has a comment and an empty line.
    let second = d.0.join("second");
    let _b = agent(&second, &tree);
    let c2 = s(&second.join("control.sock")).to_string();
    std::fs::remove_file(tree.join("usr/lib/l07.so")).unwrap();
    let file = d.0.join("img.profile");
    std::fs::write(&file, format!("# written by files --paths\n\n{profile}")).unwrap();
    let o = vmdedup(&["warm", "img", "--from", s(&file), "--control", &c2]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        // (The agent counts a file once per domain's pool: 2 x 20.)
        out.contains("21 paths (1 not in the namespace), 40 files"),
        "{out}"
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("usr/lib/l07.so"),
        "the missing path is named: {err}"
    );
    want.retain(|p| p != "usr/lib/l07.so");
    assert_eq!(paths(&c2).lines().collect::<Vec<_>>(), want, "nothing else");

    // From standard input, warming what is there already changes nothing.
    let mut child = Command::new(BIN)
        .args(["warm", "img", "--from", "-", "--control", &c2])
        .env("VMDEDUP_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"usr/share/doc\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        paths(&c2).lines().count(),
        want.len() + 5,
        "a directory warms its files"
    );
}

#[test]
fn a_bad_profile_is_refused_before_anything_is_warmed() {
    let d = TempDir::new("cli-profile-bad");
    let tree = d.0.join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("f"), b"x").unwrap();
    let dir = d.0.join("a");
    let _a = agent(&dir, &tree);
    let c = s(&dir.join("control.sock")).to_string();
    let file = d.0.join("bad.profile");
    std::fs::write(&file, "f\n/etc/passwd\n").unwrap();
    let o = vmdedup(&["warm", "img", "--from", s(&file), "--control", &c]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("line 2") && err.contains("absolute"), "{err}");
    assert_eq!(paths(&c), "", "nothing was warmed");
    // A namespace the agent does not have, a profile that is not there,
    // and a path with a profile at once.
    std::fs::write(&file, "f\n").unwrap();
    let o = vmdedup(&["warm", "nope", "--from", s(&file), "--control", &c]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("no namespace \"nope\" (known: img)"));
    let o = vmdedup(&[
        "warm",
        "img",
        "--from",
        s(&d.0.join("none")),
        "--control",
        &c,
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("reading the profile"));
    let o = vmdedup(&["warm", "img", "f", "--from", s(&file), "--control", &c]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot be used with"));
    let o = vmdedup(&["files", "img", "--paths", "--json", "--control", &c]);
    assert!(!o.status.success());
    assert_eq!(paths(&c), "");
    ok(&["warm", "img", "--from", s(&file), "--control", &c]);
    assert_eq!(paths(&c), "f\n");
}
