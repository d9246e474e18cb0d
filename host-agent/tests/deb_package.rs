//! The Debian package `scripts/build-deb` makes holds what
//! `scripts/install --prefix /usr` installs, the configuration as a
//! conffile, and a postinst that creates the vmdedup user.
//!
//! It needs cargo-deb, which scripts/setup does not install (it takes
//! minutes to build), and a release build: ignored by default, so
//! `scripts/test` counts it as skipped. Run it with
//! `cargo test -p vmdedup-host-agent --test deb_package -- --ignored`
//! after `cargo install --locked cargo-deb`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::TempDir;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

#[test]
#[ignore = "needs cargo-deb (cargo install --locked cargo-deb) and a release build"]
fn the_package_holds_what_install_installs() {
    let out = run(&mut Command::new(repo().join("scripts/build-deb")));
    let deb = PathBuf::from(out.lines().last().expect("no package path").trim());
    assert!(deb.is_file(), "{}", deb.display());

    let listing = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
    let in_deb: BTreeSet<String> = listing
        .lines()
        .filter(|l| !l.starts_with('d'))
        .filter_map(|l| l.split_whitespace().last())
        .map(|p| p.trim_start_matches("./").to_string())
        .filter(|p| p != "usr/share/doc/vmdedup/copyright")
        .collect();
    let d = TempDir::new("deb-vs-install");
    let bin = repo().join("target/release/vmdedup");
    let installed = run(Command::new(repo().join("scripts/install"))
        .args(["--prefix", "/usr", "--destdir"])
        .arg(&d.0)
        .arg("--bin")
        .arg(&bin));
    let installed: BTreeSet<String> = installed
        .lines()
        .map(|l| {
            Path::new(l)
                .strip_prefix(&d.0)
                .unwrap()
                .to_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(in_deb, installed);

    let ctl = d.0.join("control");
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&ctl));
    let conffiles = std::fs::read_to_string(ctl.join("conffiles")).unwrap();
    assert_eq!(conffiles.trim(), "/etc/vmdedup/vmdedup.toml");
    let postinst = std::fs::read_to_string(ctl.join("postinst")).unwrap();
    assert!(postinst.contains("systemd-sysusers"), "{postinst}");
    assert!(!postinst.contains("#DEBHELPER#"), "{postinst}");
    run(Command::new("sh").arg("-n").arg(ctl.join("postinst")));
    let control = std::fs::read_to_string(ctl.join("control")).unwrap();
    assert!(control.contains("Package: vmdedup\n"), "{control}");
}
