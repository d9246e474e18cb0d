//! What a VM can learn within its trust domain: a warm-up walks strictly
//! beneath its namespace and answers alike for everything outside it.

use std::os::unix::fs::symlink;
use std::path::Path;

use vmdedup_host_agent::control::{handle_request, Caller, ControlContext};
use vmdedup_host_agent::namespace::{Namespace, NamespaceConfig, ResolveMode};
use vmdedup_host_agent::pool::{PoolBacking, PoolMemory, PoolSpec};
use vmdedup_host_agent::service::{HintService, ServiceConfig};
use vmdedup_host_agent::store::{PageStore, StoreConfig, VmId};
use vmdedup_protocol::control::{bounded_str, Request, Response};

mod common;
use common::TempDir;

fn ns_config(name: &str, id: u32, dir: &Path) -> NamespaceConfig {
    NamespaceConfig {
        name: name.into(),
        id,
        dir: dir.to_path_buf(),
        domains: vec!["default".into()],
        mtime_granularity_ns: 1,
        require_fingerprint: false,
    }
}

/// A service (no loader threads: tests run loads) over `namespaces`, with
/// VMs 1 and 2 in domain default and a budget of `budget_frames` (0: all).
fn service(namespaces: Vec<NamespaceConfig>, mode: ResolveMode, budget_frames: u64) -> HintService {
    let pool = PoolMemory::create(&PoolSpec {
        backing: PoolBacking::Memfd,
        size: 4 << 20,
        table_area: 64 << 10,
        generation: 5,
    })
    .unwrap();
    let store = PageStore::new(
        pool,
        StoreConfig {
            budget_frames,
            ..StoreConfig::default()
        },
    );
    let namespaces = namespaces
        .into_iter()
        .map(|c| Namespace::open_with(c, mode).unwrap())
        .collect();
    let svc = HintService::new(
        store,
        namespaces,
        ServiceConfig {
            workers: 0,
            retry_after_ms: 0,
            recheck_ms: 0,
            ..ServiceConfig::default()
        },
    );
    svc.add_vm(1, "vm1", "default").unwrap();
    svc.add_vm(2, "vm2", "default").unwrap();
    svc
}

/// Paths of the files the pool holds, in namespace `ns`.
fn loaded(svc: &HintService, ns: &str) -> Vec<String> {
    let (_, files) = svc.files(ns, None, 0, 1000);
    let mut v: Vec<String> = files.iter().map(|f| f.path.to_string()).collect();
    v.sort();
    v
}

/// A namespace tree with symlinks out of it, into it and between its
/// directories, next to an outside directory full of files.
///
/// ```text
/// ns/t/a                  regular
/// ns/t/sub/b              regular
/// ns/t/dirlink  -> OUT    a directory outside, with files
/// ns/t/filelink -> OUT/secret1
/// ns/t/inner    -> a      a symlink to a file inside
/// ns/t/up       -> ..     a symlinked directory inside
/// ns/via        -> t      a symlinked intermediate directory
/// OUT/secret1, OUT/secret2, OUT/deeper/secret3
/// ```
struct Tree {
    ns: TempDir,
    _out: TempDir,
}

fn tree() -> Tree {
    let ns = TempDir::new("sc-ns");
    let out = TempDir::new("sc-out");
    let r = &ns.0;
    std::fs::create_dir_all(r.join("t/sub")).unwrap();
    std::fs::write(r.join("t/a"), vec![1u8; 5000]).unwrap();
    std::fs::write(r.join("t/sub/b"), vec![2u8; 9000]).unwrap();
    std::fs::create_dir_all(out.0.join("deeper")).unwrap();
    for (name, fill) in [("secret1", 7u8), ("secret2", 8), ("deeper/secret3", 9)] {
        std::fs::write(out.0.join(name), vec![fill; 4096 * 3]).unwrap();
    }
    symlink(&out.0, r.join("t/dirlink")).unwrap();
    symlink(out.0.join("secret1"), r.join("t/filelink")).unwrap();
    symlink("a", r.join("t/inner")).unwrap();
    symlink("..", r.join("t/up")).unwrap();
    symlink("t", r.join("via")).unwrap();
    Tree { ns, _out: out }
}

fn guest_warm(ctx: &ControlContext, vm: VmId, path: &str) -> Response {
    handle_request(
        ctx,
        Caller::Vm(vm),
        Request::Warm {
            ns: bounded_str("a"),
            path: bounded_str(path),
        },
    )
}

fn warm_stays_beneath(mode: ResolveMode) {
    let t = tree();
    let svc = service(vec![ns_config("a", 1, &t.ns.0)], mode, 0);
    let ctx = ControlContext {
        service: svc.clone(),
        vm_add: None,
        vm_reinstate: None,
        vm_remove: None,
    };
    // The whole namespace and a directory: the two regular files, nothing
    // through or of a symlink.
    let whole = guest_warm(&ctx, 1, "");
    assert_eq!(
        whole,
        Response::Warmed {
            files: 2,
            pages: 2 + 3,
            skipped: 0
        }
    );
    assert_eq!(loaded(&svc, "a"), ["t/a", "t/sub/b"]);
    assert_eq!(guest_warm(&ctx, 1, "t"), whole);
    assert_eq!(svc.status(None).file_maps, 2);
    // Everything that is not a file or directory beneath the namespace gets
    // the reply of a path that does not exist, word for word.
    let missing = guest_warm(&ctx, 1, "t/missing");
    assert!(matches!(missing, Response::Error { .. }), "{missing:?}");
    for path in [
        "missing",
        "t/dirlink",
        "t/dirlink/secret1",
        "t/dirlink/deeper",
        "t/filelink",
        "t/inner",
        "t/up",
        "t/up/t/a",
        "via",
        "via/a",
        "via/sub",
        "..",
        "t/..",
        "../sc-out",
        "/etc",
        "/",
        "t/a/x",
        "t//a",
        "./t",
    ] {
        assert_eq!(guest_warm(&ctx, 1, path), missing, "{path:?}");
        assert_eq!(guest_warm(&ctx, 2, path), missing, "{path:?}");
    }
    // Nothing outside was loaded, and nothing else was.
    assert_eq!(loaded(&svc, "a"), ["t/a", "t/sub/b"]);
    svc.inspect_store(|s| {
        let pool = s.pool().bytes();
        for fill in [7u8, 8, 9] {
            let page = vec![fill; 4096];
            assert!(
                !pool.chunks(4096).any(|f| f == &page[..]),
                "a page of an outside file is in the pool"
            );
        }
    });
    // The operator's warm walks by the same rule (its errors may say more).
    for path in ["t/dirlink", "t/filelink", "via", "via/a", "..", "/etc"] {
        assert!(
            svc.warm("a", path.as_bytes(), None, &mut |_| {}).is_err(),
            "{path:?}"
        );
    }
    let p = svc.warm("a", b"", None, &mut |_| {}).unwrap();
    assert_eq!((p.files_total, p.skipped), (2, 0));
    assert_eq!(loaded(&svc, "a"), ["t/a", "t/sub/b"]);
}

#[test]
fn warm_walks_strictly_beneath_the_namespace_openat2() {
    warm_stays_beneath(ResolveMode::Openat2);
}

#[test]
fn warm_walks_strictly_beneath_the_namespace_walk() {
    warm_stays_beneath(ResolveMode::Walk);
}

#[test]
fn warm_skips_a_directory_replaced_by_a_symlink() {
    // A directory listed, then swapped for a symlink out before it is
    // walked, is opened through the resolver and so left out.
    let t = tree();
    let svc = service(vec![ns_config("a", 1, &t.ns.0)], ResolveMode::Openat2, 0);
    let r = &t.ns.0;
    std::fs::rename(r.join("t/sub"), r.join("t/sub.old")).unwrap();
    symlink(t._out.0.join("deeper"), r.join("t/sub")).unwrap();
    let p = svc.warm("a", b"t", Some(1), &mut |_| {}).unwrap();
    assert_eq!((p.files_total, p.skipped), (2, 0), "t/a and t/sub.old/b");
    assert_eq!(loaded(&svc, "a"), ["t/a", "t/sub.old/b"]);
}
