//! `scripts/install --destdir`: the files it puts in place, the unit
//! pointing at the installed binary, an operator's configuration kept,
//! and the system user its sysusers file creates.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_vmdedup");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs the install script into `destdir`; returns the lines it printed.
fn install(destdir: &Path, prefix: &str) -> Vec<String> {
    let o = Command::new(repo().join("scripts/install"))
        .args(["--prefix", prefix, "--bin", BIN, "--destdir"])
        .arg(destdir)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "scripts/install: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn install_puts_every_file_in_place_and_keeps_a_configuration() {
    let d = TempDir::new("install");
    let dest = d.0.join("root");
    let listed = install(&dest, "/usr");
    let rel: BTreeSet<String> = listed
        .iter()
        .map(|l| {
            let p = Path::new(l);
            assert!(p.is_file(), "listed but missing: {l}");
            p.strip_prefix(&dest).unwrap().to_str().unwrap().to_string()
        })
        .collect();
    let mut expected: BTreeSet<String> = [
        "usr/bin/vmdedup",
        "usr/lib/systemd/system/vmdedup.service",
        "usr/lib/sysusers.d/vmdedup.conf",
        "usr/share/bash-completion/completions/vmdedup",
        "usr/share/zsh/vendor-completions/_vmdedup",
        "usr/share/fish/vendor_completions.d/vmdedup.fish",
        "usr/share/doc/vmdedup/README.md",
        "usr/share/doc/vmdedup/install.md",
        "usr/share/doc/vmdedup/config.md",
        "usr/share/doc/vmdedup/vmdedup.toml",
        "usr/share/man/man1/vmdedup.1",
        "usr/share/man/man1/vmdedup-serve.1",
        "usr/share/man/man1/vmdedup-vm-add.1",
        "etc/vmdedup/vmdedup.toml",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    let pages = rel
        .iter()
        .filter(|p| p.starts_with("usr/share/man/man1/"))
        .count();
    assert!(pages >= 15, "{pages} man pages");
    expected.extend(
        rel.iter()
            .filter(|p| p.starts_with("usr/share/man/man1/"))
            .cloned(),
    );
    assert_eq!(rel, expected);

    let unit =
        std::fs::read_to_string(dest.join("usr/lib/systemd/system/vmdedup.service")).unwrap();
    assert!(
        unit.contains("\nExecStart=/usr/bin/vmdedup serve --config /etc/vmdedup/vmdedup.toml\n")
    );
    let mode = |p: &str| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(dest.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("usr/bin/vmdedup"), 0o755);
    assert_eq!(mode("etc/vmdedup/vmdedup.toml"), 0o644);

    // An operator's configuration survives a second install.
    let conf = dest.join("etc/vmdedup/vmdedup.toml");
    std::fs::write(&conf, "workers = 3\n").unwrap();
    let again = install(&dest, "/usr");
    assert!(
        again.contains(&format!("kept {}", conf.display())),
        "{again:?}"
    );
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), "workers = 3\n");

    // The sysusers file makes the user and group the unit runs as.
    let sysroot = d.0.join("sysroot");
    std::fs::create_dir_all(sysroot.join("etc")).unwrap();
    let o = Command::new("systemd-sysusers")
        .arg(format!("--root={}", sysroot.display()))
        .arg(dest.join("usr/lib/sysusers.d/vmdedup.conf"))
        .output()
        .expect("systemd-sysusers (Debian package systemd, installed by scripts/setup)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let passwd = std::fs::read_to_string(sysroot.join("etc/passwd")).unwrap();
    let group = std::fs::read_to_string(sysroot.join("etc/group")).unwrap();
    assert!(
        passwd.lines().any(|l| l.starts_with("vmdedup:")),
        "{passwd}"
    );
    assert!(group.lines().any(|l| l.starts_with("vmdedup:")), "{group}");
    assert!(unit.contains("\nUser=vmdedup\n") && unit.contains("\nGroup=vmdedup\n"));
}

#[test]
fn a_prefix_reaches_the_unit() {
    let d = TempDir::new("install-prefix");
    let listed = install(&d.0, "/opt/vmdedup");
    assert!(listed
        .iter()
        .any(|l| l.ends_with("/opt/vmdedup/bin/vmdedup")));
    let unit = std::fs::read_to_string(d.0.join("opt/vmdedup/lib/systemd/system/vmdedup.service"))
        .unwrap();
    assert!(unit.contains("\nExecStart=/opt/vmdedup/bin/vmdedup serve "));
    assert!(!unit.contains("/usr/bin/vmdedup"));
    let o = Command::new(repo().join("scripts/install"))
        .args(["--prefix", "relative"])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(2),
        "a relative prefix is a usage error"
    );
}
