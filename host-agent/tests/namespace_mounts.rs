//! A namespace is one mount: an overlayfs root whose layers are different
//! filesystems is one namespace (its non-directories report their layer's
//! device, not the overlay's), and a filesystem mounted inside the
//! namespace's tree is not part of it, in both resolve modes. Mounting needs
//! root, as the selftest machines have; without it the test says so and
//! checks nothing.

mod common;

use std::process::Command;

use common::{SmallTmpfs, TempDir};
use vmdedup_host_agent::namespace::{Namespace, NamespaceConfig, ResolveError, ResolveMode};

struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn config(dir: &std::path::Path) -> NamespaceConfig {
    NamespaceConfig {
        name: "layers".into(),
        id: 1,
        dir: dir.to_path_buf(),
        domains: vec!["default".into()],
        mtime_granularity_ns: 1,
        require_fingerprint: false,
        warm_at_start: false,
        always_loading: false,
    }
}

#[test]
fn overlay_of_two_filesystems_is_one_namespace_and_inner_mounts_are_not() {
    let (Some(upper_layer), Some(lower_layer), Some(inner)) = (
        SmallTmpfs::mount("ns-layer-a", "4m"),
        SmallTmpfs::mount("ns-layer-b", "4m"),
        SmallTmpfs::mount("ns-inner", "4m"),
    ) else {
        return;
    };
    std::fs::create_dir_all(upper_layer.0.join("usr/lib")).unwrap();
    std::fs::write(upper_layer.0.join("usr/lib/a.so"), b"from layer a").unwrap();
    std::fs::create_dir_all(lower_layer.0.join("usr/bin")).unwrap();
    std::fs::write(lower_layer.0.join("usr/bin/b"), b"from layer b").unwrap();
    std::fs::write(lower_layer.0.join("top"), b"top of layer b").unwrap();
    std::fs::write(inner.0.join("secret"), b"another filesystem").unwrap();

    let d = TempDir::new("ns-overlay");
    let root = d.0.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "overlay", "-o"])
        .arg(format!(
            "lowerdir={}:{}",
            upper_layer.0.display(),
            lower_layer.0.display()
        ))
        .arg("vmdedup-test-overlay")
        .arg(&root)
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "mounting a read-only overlay of two tmpfs failed (root, overlayfs)"
    );
    let _overlay = Mounted(root.clone());
    // A tmpfs mounted on a directory of the overlay: not the namespace.
    let mnt = d.0.join("root/usr/lib");
    let ok = Command::new("mount")
        .args(["--bind"])
        .arg(&inner.0)
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "bind-mounting a tmpfs inside the overlay failed");
    let _inner_mount = Mounted(mnt);

    for mode in [ResolveMode::Openat2, ResolveMode::Walk] {
        let ns = Namespace::open_with(config(&root), mode).unwrap();
        for (rel, want) in [
            (&b"usr/bin/b"[..], &b"from layer b"[..]),
            (b"top", b"top of layer b"),
        ] {
            let mut f = ns.resolve(rel).unwrap_or_else(|e| {
                panic!("{mode:?}: {} refused: {e}", String::from_utf8_lossy(rel))
            });
            let mut got = Vec::new();
            std::io::Read::read_to_end(&mut f.file, &mut got).unwrap();
            assert_eq!(got, want, "{mode:?}");
        }
        // usr/lib is now the inner tmpfs: its file is refused, and nothing
        // of it is listed.
        assert!(
            matches!(ns.resolve(b"usr/lib/secret"), Err(ResolveError::Escape)),
            "{mode:?}: a file on a filesystem mounted inside the namespace was not refused"
        );
        let listed = ns.list_files(b"").unwrap();
        let listed: Vec<String> = listed
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect();
        assert_eq!(listed, ["top", "usr/bin/b"], "{mode:?}");
    }
}
