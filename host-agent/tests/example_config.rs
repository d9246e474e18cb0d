//! The example configuration `contrib/vmdedup.toml` and its reference
//! `docs/config.md`: the example is read by the agent's own parser and
//! passes `serve --check` (with its paths moved into a test directory),
//! also with every optional line turned on, and both name every key the
//! parser knows.

use std::path::{Path, PathBuf};
use std::process::Command;

use vmdedup_host_agent::config::AgentConfig;

mod common;
use common::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_vmdedup");

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

fn example() -> String {
    std::fs::read_to_string(repo_file("host-agent/contrib/vmdedup.toml")).unwrap()
}

/// The example with its optional lines ("#key = ..." and "#[table]")
/// turned on.
fn everything_on(text: &str) -> String {
    text.lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest)
                if rest.starts_with('[')
                    || rest.split_once(" = ").is_some_and(|(k, _)| {
                        !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                    }) =>
            {
                rest
            }
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The keys the parser knows in the table `header` opens (`""`: the top
/// level), as its refusal of an unknown key lists them.
fn known_keys(header: &str) -> Vec<String> {
    let text = format!("{header}\nno_such_key_here = 1\n");
    let err = AgentConfig::from_toml_unchecked(&text)
        .unwrap_err()
        .to_string();
    let list = err
        .split_once("`, expected ")
        .unwrap_or_else(|| panic!("the parser no longer lists its keys: {err}"))
        .1;
    let keys: Vec<String> = list
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    assert!(!keys.is_empty(), "{err}");
    keys
}

#[test]
fn the_example_parses_and_validates_as_shipped_and_with_every_option() {
    let text = example();
    let cfg = AgentConfig::from_toml(&text).unwrap();
    assert!(cfg.problems().is_empty(), "{:?}", cfg.problems());
    assert_eq!(cfg.control_group.as_deref(), Some("vmdedup"));
    assert_eq!(cfg.pool_size, 1 << 30);
    assert_eq!(cfg.vms.len(), 1);
    assert_eq!(cfg.namespaces.len(), 1);
    // The defaults the example spells out are the parser's defaults.
    let d = AgentConfig::default();
    assert_eq!(cfg.service, d.service);
    assert_eq!((cfg.workers, cfg.ring_dir.clone()), (d.workers, d.ring_dir));

    let all = everything_on(&text);
    assert_ne!(all, text, "no optional lines found");
    let cfg = AgentConfig::from_toml(&all).unwrap_or_else(|e| panic!("{e}\n{all}"));
    assert!(cfg.problems().is_empty(), "{:?}", cfg.problems());
    assert_eq!(cfg.file_owner.as_deref(), Some("libvirt-qemu"));
    assert_eq!(cfg.vms[0].cid, Some(3));
    assert_eq!(cfg.domain_pool_size("tenant-a"), 256 << 20);
    // The commented defaults are the defaults.
    assert_eq!(
        (cfg.budget, cfg.vm_max_held, cfg.ack_timeout_ms),
        (d.budget, d.vm_max_held, d.ack_timeout_ms)
    );
}

#[test]
fn the_example_passes_serve_check() {
    let dir = TempDir::new("example-check");
    let d = dir.0.to_str().unwrap();
    std::fs::create_dir_all(dir.0.join("tree")).unwrap();
    // Only what names this host is moved: paths into the test directory,
    // the control group to one every host has.
    let text: String = example()
        .lines()
        .map(|l| {
            let (key, _) = l.split_once(" = ").unwrap_or(("", ""));
            match key {
                "pool" => format!("pool = \"{d}/pool\""),
                "ring_dir" => format!("ring_dir = \"{d}\""),
                "control_socket" => format!("control_socket = \"{d}/run/control.sock\""),
                "control_group" => "control_group = \"root\"".to_string(),
                "dir" => format!("dir = \"{d}/tree\""),
                _ => l.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let file = dir.0.join("vmdedup.toml");
    std::fs::write(&file, text).unwrap();
    let o = Command::new(BIN)
        .args(["serve", "--check", "--config"])
        .arg(&file)
        .env("VMDEDUP_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("ok\n"));
}

#[test]
fn the_example_and_the_reference_name_every_key() {
    let text = everything_on(&example());
    let doc = std::fs::read_to_string(repo_file("docs/config.md")).unwrap();
    for (header, doc_prefix) in [
        ("", ""),
        ("[service]", "service."),
        ("[domain.x]", "domain.NAME."),
        ("[[namespace]]", "namespace."),
        ("[[vm]]", "vm."),
    ] {
        for key in known_keys(header) {
            if header.is_empty() && ["service", "domain", "namespace", "vm"].contains(&key.as_str())
            {
                continue;
            }
            assert!(
                text.lines().any(|l| l.starts_with(&format!("{key} = "))),
                "contrib/vmdedup.toml lacks {header} {key}"
            );
            let documented = format!("`{doc_prefix}{key}`");
            assert!(
                doc.contains(&documented),
                "docs/config.md lacks {documented}"
            );
        }
    }
}
