//! What a VM can learn within its trust domain, and the options that close
//! it: a warm-up walks strictly beneath its namespace and answers alike for
//! everything outside it; `warm_at_start` makes every first hint a hit;
//! `always_loading` makes every first hint "loading".

use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::Duration;

use vmdedup_host_agent::config::AgentConfig;
use vmdedup_host_agent::control::{handle_request, Caller, ControlContext};
use vmdedup_host_agent::domain::Domains;
use vmdedup_host_agent::namespace::{GuestIdentity, Namespace, NamespaceConfig, ResolveMode};
use vmdedup_host_agent::service::{HintResult, HintService, ServiceConfig};
use vmdedup_host_agent::store::{StoreConfig, VmId};
use vmdedup_protocol::control::{bounded_str, MissReason, Request, Response};

mod common;
use common::agent::{agent_config, start_agent, vm};
use common::service::{content, hint_until_done, ident, is_hit, ns_config, req, service_over};
use common::TempDir;

/// A service (no loader threads: tests run loads) over `namespaces`, with
/// VMs 1 and 2 in domain default and a budget of `budget_frames` (0: all).
/// Paths one VM's backlog holds in these services.
const BACKLOG: usize = 8;

fn service(namespaces: Vec<NamespaceConfig>, mode: ResolveMode, budget_frames: u64) -> HintService {
    let namespaces = namespaces
        .into_iter()
        .map(|c| Namespace::open_with(c, mode).unwrap())
        .collect();
    let store = StoreConfig {
        budget_frames,
        ..StoreConfig::default()
    };
    let cfg = ServiceConfig {
        workers: 0,
        retry_after_ms: 0,
        recheck_ms: 0,
        vm_load_backlog: BACKLOG,
        ..ServiceConfig::default()
    };
    service_over(namespaces, 5, store, cfg)
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
    let svc = service(vec![ns_config("a", 1, &t.ns.0, &["default"])], mode, 0);
    let ctx = ControlContext {
        domains: Domains::single("default", Path::new("/nonexistent"), svc.clone()),
        vm_add: None,
        vm_reinstate: None,
        vm_remove: None,
        vm_attachment: None,
        vm_rings: None,
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
    assert_eq!(svc.status(None).pool.file_maps, 2);
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
    let svc = service(
        vec![ns_config("a", 1, &t.ns.0, &["default"])],
        ResolveMode::Openat2,
        0,
    );
    let r = &t.ns.0;
    std::fs::rename(r.join("t/sub"), r.join("t/sub.old")).unwrap();
    symlink(t._out.0.join("deeper"), r.join("t/sub")).unwrap();
    let p = svc.warm("a", b"t", Some(1), &mut |_| {}).unwrap();
    assert_eq!((p.files_total, p.skipped), (2, 0), "t/a and t/sub.old/b");
    assert_eq!(loaded(&svc, "a"), ["t/a", "t/sub.old/b"]);
}

#[test]
fn always_loading_masks_whether_another_vm_loaded_a_file() {
    let t = tree();
    let masked = TempDir::new("sc-masked");
    std::fs::write(masked.0.join("f"), vec![3u8; 10_000]).unwrap();
    std::fs::write(t.ns.0.join("g"), vec![4u8; 10_000]).unwrap();
    let mut paranoid = ns_config("m", 2, &masked.0, &["default"]);
    paranoid.always_loading = true;
    let svc = service(
        vec![ns_config("a", 1, &t.ns.0, &["default"]), paranoid],
        ResolveMode::Openat2,
        0,
    );
    let f = ident(&masked.0.join("f"));
    let loading = HintResult::Miss(MissReason::Loading);
    // VM 1 loads the file: one "loading", then a hit (a real miss is not
    // masked a second time).
    let vm1 = hint_until_done(&svc, 1, 2, b"f", f, 4);
    assert_eq!(vm1.len(), 2, "{vm1:?}");
    assert_eq!(vm1[0], loading);
    assert!(is_hit(&vm1[1]));
    assert_eq!(svc.masked_hits(), 0);
    // VM 2's first hint: "loading" although the file is in the pool, and a
    // load is queued for it as for a real miss; "loading" while that load
    // has not run, then a hit.
    assert_eq!(svc.answer(2, &req(2, b"f", f)), loading);
    assert_eq!(svc.masked_hits(), 1);
    assert_eq!(svc.load_queue_size().0, 1, "a load queued for VM 2");
    assert_eq!(svc.loads_in_flight(Some(2)), 1);
    assert_eq!(svc.answer(2, &req(2, b"f", f)), loading);
    // Meanwhile VM 1 is answered from the path cache as before.
    assert_eq!(svc.answer(1, &req(2, b"f", f)), vm1[1]);
    // The queued load finds the file stored: still the same map.
    assert_eq!(svc.load_pending(), 1);
    assert_eq!(svc.answer(2, &req(2, b"f", f)), vm1[1]);
    assert_eq!(svc.answer(2, &req(2, b"f", f)), vm1[1]);
    assert_eq!(svc.masked_hits(), 1);
    // So VM 2 sees what VM 1 saw: "loading" until a load ran, then hits.
    let h = content(11, 20_000);
    std::fs::write(masked.0.join("h"), &h).unwrap();
    let hid = ident(&masked.0.join("h"));
    let first = hint_until_done(&svc, 1, 2, b"h", hid, 4);
    let second = hint_until_done(&svc, 2, 2, b"h", hid, 4);
    assert_eq!(first, second, "the same answers, loaded or not");
    assert_eq!(svc.masked_hits(), 2);
    // A path known to be missing is masked the same way.
    let none = GuestIdentity {
        size: 1,
        mtime_ns: 0,
        fingerprint: None,
    };
    let vm1_missing = hint_until_done(&svc, 1, 2, b"nope", none, 4);
    assert_eq!(
        vm1_missing,
        [loading, HintResult::Miss(MissReason::NotFound)]
    );
    assert_eq!(hint_until_done(&svc, 2, 2, b"nope", none, 4), vm1_missing);
    assert_eq!(svc.masked_hits(), 3);
    // Without the option, VM 2's first hint of a file VM 1 loaded hits.
    let g = ident(&t.ns.0.join("g"));
    assert!(is_hit(
        hint_until_done(&svc, 1, 1, b"g", g, 4).last().unwrap()
    ));
    assert!(is_hit(&svc.answer(2, &req(1, b"g", g))));
    assert_eq!(svc.masked_hits(), 3);
    // The memory goes with the VM: a VM added again under the id is
    // masked again.
    assert!(svc.told_loading_len(2) >= 2);
    svc.remove_vm(2);
    assert_eq!(svc.told_loading_len(2), 0);
    svc.add_vm(2, "vm2", "default").unwrap();
    assert_eq!(svc.answer(2, &req(2, b"f", f)), loading);
    assert_eq!(svc.masked_hits(), 4);
}

#[test]
fn always_loading_answers_a_pool_only_hint_alike_loaded_or_not() {
    let masked = TempDir::new("sc-pool-only");
    std::fs::write(masked.0.join("f"), vec![3u8; 10_000]).unwrap();
    std::fs::write(masked.0.join("h"), vec![5u8; 10_000]).unwrap();
    let mut paranoid = ns_config("m", 2, &masked.0, &["default"]);
    paranoid.always_loading = true;
    let svc = service(vec![paranoid], ResolveMode::Openat2, 0);
    let (f, h) = (ident(&masked.0.join("f")), ident(&masked.0.join("h")));
    let pool_only = |path: &'static [u8], id| {
        let mut r = req(2, path, id);
        r.pool_only = true;
        r
    };
    let pool_full = HintResult::Miss(MissReason::PoolFull);
    // VM 1 loads f; h is loaded by nobody.
    let vm1 = hint_until_done(&svc, 1, 2, b"f", f, 4);
    assert!(is_hit(vm1.last().unwrap()));
    // VM 2's pool-only hints cannot tell them apart, and load nothing.
    for _ in 0..2 {
        assert_eq!(svc.answer(2, &pool_only(b"f", f)), pool_full);
        assert_eq!(svc.answer(2, &pool_only(b"h", h)), pool_full);
    }
    assert_eq!(svc.load_queue_size().0, 0);
    assert_eq!(svc.loads_in_flight(Some(2)), 0);
    // Once VM 2's own hint was masked and its load ran, the pool-only
    // hint takes the file, as its hint after the notice does.
    assert_eq!(
        svc.answer(2, &req(2, b"f", f)),
        HintResult::Miss(MissReason::Loading)
    );
    assert_eq!(svc.load_pending(), 1);
    assert_eq!(svc.answer(2, &pool_only(b"f", f)), *vm1.last().unwrap());
}

#[test]
fn always_loading_masks_a_new_version_loaded_by_another_vm() {
    let d = TempDir::new("sc-version");
    let p = d.0.join("f");
    std::fs::write(&p, vec![1u8; 6000]).unwrap();
    let mut c = ns_config("m", 1, &d.0, &["default"]);
    c.always_loading = true;
    let svc = service(vec![c], ResolveMode::Openat2, 0);
    let v1 = ident(&p);
    assert!(is_hit(
        hint_until_done(&svc, 1, 1, b"f", v1, 4).last().unwrap()
    ));
    let r2 = hint_until_done(&svc, 2, 1, b"f", v1, 4);
    assert_eq!(r2.len(), 2, "masked once: {r2:?}");
    assert_eq!(svc.masked_hits(), 1);
    // The host file changes; VM 1 has the new version loaded.
    std::thread::sleep(Duration::from_millis(10));
    std::fs::write(&p, vec![2u8; 7000]).unwrap();
    let v2 = ident(&p);
    let r1 = hint_until_done(&svc, 1, 1, b"f", v2, 4);
    assert!(is_hit(r1.last().unwrap()), "{r1:?}");
    // VM 2, told "loading" only for the old version, is masked again.
    assert_eq!(hint_until_done(&svc, 2, 1, b"f", v2, 4).len(), 2);
    assert_eq!(svc.masked_hits(), 2);
    assert_eq!(svc.answer(2, &req(1, b"f", v2)), *r1.last().unwrap());
}

#[test]
fn warm_at_start_loads_marked_namespaces_so_first_hints_hit() {
    let t = tree();
    let other = TempDir::new("sc-cold");
    std::fs::write(other.0.join("c"), vec![5u8; 3000]).unwrap();
    let mut warm = ns_config("a", 1, &t.ns.0, &["default"]);
    warm.warm_at_start = true;
    let svc = service(
        vec![warm, ns_config("cold", 2, &other.0, &["default"])],
        ResolveMode::Openat2,
        0,
    );
    let p = svc.warm_at_start();
    assert_eq!((p.files_total, p.files_done, p.skipped), (2, 2, 0));
    assert_eq!(p.pages, 5);
    assert_eq!(loaded(&svc, "a"), ["t/a", "t/sub/b"]);
    assert!(loaded(&svc, "cold").is_empty());
    for path in ["t/a", "t/sub/b"] {
        let id = ident(&t.ns.0.join(path));
        assert!(is_hit(&svc.answer(1, &req(1, path.as_bytes(), id))));
        assert!(is_hit(&svc.answer(2, &req(1, path.as_bytes(), id))));
    }
    // Not marked: the first hint is "loading".
    assert_eq!(
        svc.answer(1, &req(2, b"c", ident(&other.0.join("c")))),
        HintResult::Miss(MissReason::Loading)
    );
}

#[test]
fn warm_at_start_with_a_full_pool_logs_and_goes_on() {
    let d = TempDir::new("sc-full");
    for i in 0..3u32 {
        std::fs::write(d.0.join(format!("f{i}")), content(i, 4096)).unwrap();
    }
    std::fs::write(d.0.join("huge"), content(9, 8 * 4096)).unwrap();
    let mut c = ns_config("a", 1, &d.0, &["default"]);
    c.warm_at_start = true;
    // Room for the small files, not for the huge one.
    let svc = service(vec![c], ResolveMode::Openat2, 6);
    let p = svc.warm_at_start();
    assert_eq!((p.files_total, p.files_done), (4, 4));
    assert_eq!((p.skipped, p.pool_full), (1, 1));
    assert_eq!(loaded(&svc, "a"), ["f0", "f1", "f2"]);
}

#[test]
fn agent_is_warm_when_start_returns() {
    let dir = TempDir::new("sc-agent");
    let ns = dir.0.join("ns");
    std::fs::create_dir_all(ns.join("lib")).unwrap();
    for i in 0..5u32 {
        std::fs::write(ns.join(format!("lib/f{i}")), content(i, 4096 * 2 + 1)).unwrap();
    }
    let mut n = ns_config("a", 1, &ns, &["default"]);
    n.warm_at_start = true;
    // The domain's pool opens with its first VM, and is warmed then.
    let config = agent_config(&dir.0, 4 << 20, vec![n], vec![vm("vm1", "default")]);
    let agent = start_agent(config, 1);
    let svc = agent.domains().service("default").unwrap();
    assert_eq!(svc.status(None).pool.file_maps, 5);
    assert_eq!(svc.status(None).pool.frames_used, 15);
    let id = svc.vm_id("vm1").unwrap();
    for i in 0..5 {
        let path = format!("lib/f{i}");
        let r = svc.answer(id, &req(1, path.as_bytes(), ident(&ns.join(&path))));
        assert!(is_hit(&r), "{path}: {r:?}");
    }
    agent.shutdown();
}

#[test]
fn config_new_writes_the_side_channel_options() {
    let d = TempDir::new("sc-cli");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vmdedup"))
        .args(["config", "new", "--ns"])
        .arg(format!("a={}", d.0.display()))
        .args(["--ns", "b=/srv/b", "--ns-warm-at-start", "a"])
        .args(["--ns-always-loading", "a", "--ns-always-loading", "b"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let c = AgentConfig::from_toml(&text).unwrap();
    let flags: Vec<(bool, bool)> = c
        .namespaces
        .iter()
        .map(|n| (n.warm_at_start, n.always_loading))
        .collect();
    assert_eq!(flags, [(true, true), (false, true)], "{text}");
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_vmdedup"))
        .args(["config", "new", "--ns-warm-at-start", "nope"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no namespace \"nope\""));
}

#[test]
fn always_loading_past_the_load_bound_stays_loading() {
    let d = TempDir::new("sc-bound");
    std::fs::write(d.0.join("f"), content(1, 9000)).unwrap();
    let mut c = ns_config("m", 1, &d.0, &["default"]);
    c.always_loading = true;
    let svc = service(vec![c], ResolveMode::Openat2, 0);
    let f = ident(&d.0.join("f"));
    assert!(is_hit(
        hint_until_done(&svc, 1, 1, b"f", f, 4).last().unwrap()
    ));
    // VM 2 fills its load queue and its backlog with misses of its own.
    let (bound, backlog) = (ServiceConfig::default().vm_max_loads, BACKLOG);
    for i in 0..bound + backlog {
        let p = format!("missing{i}");
        let r = svc.answer(2, &req(1, p.as_bytes(), f));
        assert_eq!(r, HintResult::Miss(MissReason::Loading));
    }
    assert_eq!(svc.loads_in_flight(Some(2)), bound);
    assert_eq!(svc.load_backlog(Some(2)).0, backlog);
    // Nothing can be queued for it: "loading", as a real miss would be,
    // and again on the next hint, until a load can be queued and has run.
    for _ in 0..3 {
        assert_eq!(
            svc.answer(2, &req(1, b"f", f)),
            HintResult::Miss(MissReason::Loading)
        );
    }
    svc.load_pending();
    let after = hint_until_done(&svc, 2, 1, b"f", f, 4);
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(is_hit(&after[1]));

    // VM 3 fills its load queue only: its masked load waits in its
    // backlog, and it is "loading" until that load ran, as a real miss's.
    svc.add_vm(3, "vm3", "default").unwrap();
    for i in 0..bound {
        let p = format!("absent{i}");
        let r = svc.answer(3, &req(1, p.as_bytes(), f));
        assert_eq!(r, HintResult::Miss(MissReason::Loading));
    }
    for _ in 0..3 {
        assert_eq!(
            svc.answer(3, &req(1, b"f", f)),
            HintResult::Miss(MissReason::Loading)
        );
    }
    assert_eq!(svc.load_backlog(Some(3)).0, 1);
    assert_eq!(
        svc.load_pending(),
        bound + 1,
        "its backlog followed its loads"
    );
    let after = hint_until_done(&svc, 3, 1, b"f", f, 4);
    assert_eq!(after.len(), 1, "{after:?}");
    assert!(is_hit(&after[0]));
}
