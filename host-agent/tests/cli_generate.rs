//! `vmdedup generate`: the man pages are valid roff that groff renders
//! without a warning and cover every subcommand; the completion scripts
//! load.

use std::path::Path;
use std::process::{Command, Output};

mod common;
use common::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_vmdedup");

fn run(cmd: &mut Command) -> Output {
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// The subcommands `vmdedup --help` lists (`help` aside), with their
/// own subcommands as "vm add".
fn subcommands(prefix: &[&str]) -> Vec<Vec<String>> {
    let o = run(Command::new(BIN).args(prefix).arg("--help"));
    let help = String::from_utf8(o.stdout).unwrap();
    let mut out = Vec::new();
    let mut in_list = false;
    for line in help.lines() {
        if line == "Commands:" {
            in_list = true;
            continue;
        }
        if in_list && !line.starts_with("  ") {
            break;
        }
        if in_list {
            let name = line.split_whitespace().next().unwrap();
            if name != "help" {
                let mut path: Vec<String> = prefix.iter().map(|s| s.to_string()).collect();
                path.push(name.to_string());
                out.push(path.clone());
                let refs: Vec<&str> = path.iter().map(String::as_str).collect();
                out.extend(subcommands(&refs));
            }
        }
    }
    out
}

/// groff's warnings (all of them: -ww) and errors for one page.
fn groff_complaints(page: &Path) -> String {
    let o = Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-z"])
        .arg(page)
        .output()
        .expect("groff (Debian package groff-base, installed by scripts/setup)");
    assert!(o.status.success(), "groff failed on {}", page.display());
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn man_pages_are_clean_roff_and_cover_every_subcommand() {
    let d = TempDir::new("gen-man");
    let dir = d.0.join("man1");
    run(Command::new(BIN).args(["generate", "man"]).arg(&dir));
    let all = subcommands(&[]);
    assert!(all.len() >= 12, "too few subcommands in --help: {all:?}");
    let main = std::fs::read_to_string(dir.join("vmdedup.1")).unwrap();
    assert!(
        main.starts_with(".ie \\n(.g .ds Aq"),
        "not roff: {main:.80}"
    );
    for path in &all {
        let page = dir.join(format!("vmdedup-{}.1", path.join("-")));
        assert!(page.exists(), "no page {}", page.display());
        let top = &path[0];
        assert!(
            main.contains(&format!("vmdedup\\-{}", top.replace('-', "\\-"))),
            "vmdedup.1 does not mention {top}"
        );
    }
    // The hidden packaging command has no page.
    assert!(!dir.join("vmdedup-generate.1").exists());
    assert!(
        main.contains("Exit status:"),
        "no exit status table in vmdedup.1"
    );
    let mut pages = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let page = e.unwrap().path();
        let complaints = groff_complaints(&page);
        assert!(complaints.is_empty(), "{}:\n{complaints}", page.display());
        pages += 1;
    }
    assert_eq!(
        pages,
        all.len() + 1,
        "one page per subcommand plus vmdedup.1"
    );
}

#[test]
fn completion_scripts_load() {
    let o = run(Command::new(BIN).args(["generate", "completions", "bash"]));
    let script = String::from_utf8(o.stdout).unwrap();
    for word in ["serve", "qemu-args", "--config", "reinstate"] {
        assert!(script.contains(word), "bash completion lacks {word}");
    }
    let d = TempDir::new("gen-compl");
    let file = d.0.join("vmdedup.bash");
    std::fs::write(&file, &script).unwrap();
    run(Command::new("bash").arg("-n").arg(&file));
    // Loaded for real, it registers a completion for vmdedup.
    let o = run(Command::new("bash")
        .args(["-c", "source \"$1\" && complete -p vmdedup", "bash"])
        .arg(&file));
    assert!(String::from_utf8_lossy(&o.stdout).contains("vmdedup"));
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let o = run(Command::new(BIN).args(["generate", "completions", shell]));
        assert!(!o.stdout.is_empty(), "{shell}");
    }
    let o = Command::new(BIN)
        .args(["generate", "completions", "csh"])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}
