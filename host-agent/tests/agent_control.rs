//! The control channel over Unix sockets (host-side AF_VSOCK loopback is not
//! available on the build machine; a guest's per-VM listener is a Unix
//! socket, as with vhost-user-vsock's `<uds>_<port>`).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;

use vmdedup_host_agent::control::{self, Caller, ControlContext};
use vmdedup_host_agent::domain::{Domain, Domains};
use vmdedup_host_agent::namespace::Namespace;
use vmdedup_host_agent::service::{HintService, ServiceConfig};
use vmdedup_host_agent::store::{PageStore, StoreConfig};
use vmdedup_protocol::control::*;

mod common;
use common::service::{memfd_pool, ns_config};
use common::TempDir;

struct Agent {
    _dir: TempDir,
    host: PathBuf,
    vm1: PathBuf,
    _rt: std::thread::JoinHandle<()>,
}

fn start(tag: &str) -> Agent {
    let tmp = TempDir::new(&format!("ctl-{tag}"));
    let dir = tmp.0.clone();
    std::fs::create_dir_all(dir.join("a/sub")).unwrap();
    std::fs::create_dir_all(dir.join("b")).unwrap();
    std::fs::write(dir.join("a/sub/f"), vec![7u8; 10_000]).unwrap();
    std::fs::write(dir.join("b/g"), vec![8u8; 5_000]).unwrap();
    let ns = |name: &str, id, dom: &str| {
        Namespace::open(ns_config(name, id, &dir.join(name), &[dom])).unwrap()
    };
    let pool = memfd_pool(1 << 20, 0, 5);
    let domains = Domains::new(vec!["a".into(), "b".into()], Arc::default());
    let svc = HintService::with_stats(
        PageStore::new(pool, StoreConfig::default()),
        vec![ns("a", 1, "default"), ns("b", 2, "other")],
        ServiceConfig {
            workers: 0,
            ..ServiceConfig::default()
        },
        Arc::clone(domains.stats()),
    );
    // One domain's service; the agent's own domain handling is in
    // tests/agent_domains.rs.
    let dom = Arc::new(Domain::new(
        "default",
        std::path::Path::new("/nonexistent"),
        svc.clone(),
        false,
    ));
    domains.insert(Arc::clone(&dom));
    svc.add_vm(1, "vm1", "default").unwrap();
    domains.bind_vm(1, &dom);
    let (domains2, dom2) = (domains.clone(), Arc::clone(&dom));
    let svc2 = svc.clone();
    let svc3 = svc.clone();
    let svc4 = svc.clone();
    let ctx = Arc::new(ControlContext {
        domains,
        vm_add: Some(Box::new(move |name: &str, domain: &str| {
            svc2.add_vm(100, name, domain).map_err(|e| e.to_string())?;
            domains2.bind_vm(100, &dom2);
            Ok(PathBuf::from(format!("/dev/shm/vmdedup-{name}.ring")))
        })),
        // The ring part is the agent's (tests/agent_reinstate.rs); here the
        // request's way through the control channel.
        vm_reinstate: Some(Box::new(move |name: &str| {
            let id = svc3
                .vm_id(name)
                .ok_or_else(|| format!("no VM called {name:?}"))?;
            let was = svc3.is_cut_off(id);
            svc3.reinstate_vm(id);
            Ok(was)
        })),
        vm_remove: Some(Box::new(move |name: &str| {
            let id = svc4
                .vm_id(name)
                .ok_or_else(|| format!("no VM called {name:?}"))?;
            let held = svc4.vms(Some(id)).first().map_or(0, |v| v.maps_held);
            svc4.remove_vm(id);
            Ok(held)
        })),
        // The paths are the agent's (tests/qemu_args.rs); here only that
        // guests may not ask.
        vm_attachment: Some(Box::new(|name: &str| Err(format!("no VM called {name:?}")))),
        vm_rings: None,
    });
    let host = dir.join("control.sock");
    let vm1 = dir.join("vm1.vsock_5555");
    let (h, v) = (host.clone(), vm1.clone());
    let (tx, rx) = std::sync::mpsc::channel();
    let rt = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let hl = control::bind(&h, None).unwrap();
            let vl = control::bind(&v, None).unwrap();
            tx.send(()).unwrap();
            tokio::join!(
                control::serve(hl, ctx.clone(), Caller::Host, None),
                control::serve(vl, ctx, Caller::Vm(1), None)
            );
        });
    });
    rx.recv().unwrap();
    Agent {
        _dir: tmp,
        host,
        vm1,
        _rt: rt,
    }
}

fn raw(path: &PathBuf, bytes: &[u8]) -> (Option<Response>, bool) {
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    s.write_all(bytes).unwrap();
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let resp = Response::decode(&out).ok();
    (resp, true)
}

/// The class of error `r` is, if it is one.
fn refused(r: &Response) -> Option<ErrorCode> {
    match r {
        Response::Error { code, .. } => Some(*code),
        _ => None,
    }
}

fn name(s: &str) -> Name {
    bounded_str(s)
}

#[test]
fn agent_control_host_and_vm_views() {
    let a = start("views");
    let st = match control::request(&a.host, &Request::Status).unwrap() {
        Response::Status(s) => s,
        r => panic!("{r:?}"),
    };
    assert_eq!(st.pool.generation, 5);
    // warm over the host socket, then list
    let w = control::request(
        &a.host,
        &Request::Warm {
            ns: name("a"),
            path: bounded_str(""),
        },
    )
    .unwrap();
    assert_eq!(
        w,
        Response::Warmed {
            files: 1,
            pages: 3,
            skipped: 0
        }
    );
    match control::request(
        &a.host,
        &Request::Files {
            ns: name(""),
            offset: 0,
            limit: 100,
        },
    )
    .unwrap()
    {
        Response::Files { total, files } => {
            assert_eq!(total, 1);
            assert_eq!(files[0].path.as_str(), "sub/f");
        }
        r => panic!("{r:?}"),
    }
    // VM add from the host
    let r = control::request(
        &a.host,
        &Request::VmAdd {
            name: name("vm9"),
            domain: name(""),
        },
    )
    .unwrap();
    assert!(matches!(r, Response::VmAdded { .. }), "{r:?}");
    let r = control::request(
        &a.host,
        &Request::VmAdd {
            name: name("vm9"),
            domain: name(""),
        },
    )
    .unwrap();
    assert_eq!(refused(&r), Some(ErrorCode::Exists), "{r:?}");
    // VM reinstate from the host: a VM that is not cut off, an unknown one.
    let r = control::request(&a.host, &Request::VmReinstate { name: name("vm1") }).unwrap();
    assert!(
        matches!(r, Response::VmReinstated { ref name, was_cut_off: false } if name.as_str() == "vm1"),
        "{r:?}"
    );
    let r = control::request(
        &a.host,
        &Request::VmReinstate {
            name: name("nobody"),
        },
    )
    .unwrap();
    assert_eq!(refused(&r), Some(ErrorCode::NotFound), "{r:?}");
    // The VM sees itself only, its namespaces only, and may not evict, add or reinstate VMs.
    match control::request(&a.vm1, &Request::Vms).unwrap() {
        Response::Vms(v) => {
            assert_eq!(v.len(), 1);
            assert_eq!(v[0].name.as_str(), "vm1");
        }
        r => panic!("{r:?}"),
    }
    match control::request(&a.vm1, &Request::Namespaces).unwrap() {
        Response::Namespaces(n) => assert_eq!(
            n.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
            vec!["a"]
        ),
        r => panic!("{r:?}"),
    }
    for denied in [
        Request::Evict {
            ns: name(""),
            path: bounded_str(""),
        },
        Request::VmAdd {
            name: name("evil"),
            domain: name("other"),
        },
        Request::VmReinstate { name: name("vm1") },
        Request::VmRemove { name: name("vm1") },
        Request::VmAttachment { name: name("vm1") },
    ] {
        let r = control::request(&a.vm1, &denied).unwrap();
        assert_eq!(refused(&r), Some(ErrorCode::Denied), "{r:?}");
    }
    let r = control::request(
        &a.vm1,
        &Request::Warm {
            ns: name("b"),
            path: bounded_str(""),
        },
    )
    .unwrap();
    assert_eq!(
        refused(&r),
        Some(ErrorCode::NotFound),
        "foreign namespace: {r:?}"
    );
    let r = control::request(
        &a.vm1,
        &Request::Warm {
            ns: name("a"),
            path: bounded_str("../b"),
        },
    )
    .unwrap();
    assert!(matches!(r, Response::Error { .. }), "escape: {r:?}");
    // evict from the host
    let r = control::request(
        &a.host,
        &Request::Evict {
            ns: name("a"),
            path: bounded_str("sub"),
        },
    )
    .unwrap();
    assert_eq!(
        r,
        Response::Evicted {
            dropped: 1,
            revoking: 0
        }
    );
    // VM remove from the host: vm9 (added above) is forgotten, then unknown.
    let r = control::request(&a.host, &Request::VmRemove { name: name("vm9") }).unwrap();
    assert!(
        matches!(r, Response::VmRemoved { ref name, maps_released: 0 } if name.as_str() == "vm9"),
        "{r:?}"
    );
    let r = control::request(&a.host, &Request::VmRemove { name: name("vm9") }).unwrap();
    assert_eq!(refused(&r), Some(ErrorCode::NotFound), "{r:?}");
}

#[test]
fn agent_control_malformed_frames_are_rejected_and_the_agent_survives() {
    let a = start("bad");
    let mut good = vec![0u8; MAX_FRAME_LEN];
    let n = Request::Status.encode(&mut good).unwrap();
    good.truncate(n);
    let mut wrong_version = good.clone();
    wrong_version[4] = 99;
    let mut trailing = good.clone();
    trailing[0] += 1;
    trailing.push(0);
    let mut bad_variant = good.clone();
    bad_variant[6] = 200;
    let cases: Vec<Vec<u8>> = vec![
        u32::MAX.to_le_bytes().to_vec(), // oversized length
        ((MAX_FRAME_LEN as u32) + 1).to_le_bytes().to_vec(), // just over
        vec![1, 0, 0, 0, 1],             // too short for a version
        wrong_version,
        trailing,
        bad_variant,
        vec![0xff; 64],
    ];
    for c in cases {
        let (resp, _) = raw(&a.host, &c);
        assert_eq!(
            resp.as_ref().and_then(refused),
            Some(ErrorCode::BadRequest),
            "{c:?} -> {resp:?}"
        );
    }
    // A truncated frame (the peer goes away) gets no answer, and the agent lives on.
    let (resp, _) = raw(&a.host, &good[..n - 1]);
    assert!(resp.is_none() || matches!(resp, Some(Response::Error { .. })));
    assert!(matches!(
        control::request(&a.host, &Request::Status).unwrap(),
        Response::Status(_)
    ));
    assert!(matches!(
        control::request(&a.vm1, &Request::Status).unwrap(),
        Response::Status(_)
    ));
}

/// A peer of the previous control version (3) is answered in its own
/// version, with a status it can decode; a current peer in the current one.
#[test]
fn agent_control_answers_each_peer_in_its_version() {
    let a = start("versions");
    let mut frame = vec![0u8; MAX_FRAME_LEN];
    let n = Request::Status.encode(&mut frame).unwrap();
    frame.truncate(n);
    let answer = |version: u16| {
        let mut f = frame.clone();
        f[4..6].copy_from_slice(&version.to_le_bytes());
        let mut s = UnixStream::connect(&a.host).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .unwrap();
        s.write_all(&f).unwrap();
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        out
    };
    let now = answer(CONTROL_VERSION);
    let old = answer(CONTROL_VERSION_MIN);
    assert_eq!(u16::from_le_bytes([now[4], now[5]]), CONTROL_VERSION);
    assert_eq!(u16::from_le_bytes([old[4], old[5]]), CONTROL_VERSION_MIN);
    let (Ok(Response::Status(now)), Ok(Response::Status(old))) =
        (Response::decode(&now), Response::decode(&old))
    else {
        panic!("not two status answers");
    };
    assert!(!now.domains.is_empty());
    // The same report, but for what version 3 cannot carry.
    assert_eq!(old.domains.len(), now.domains.len());
    for (o, n) in old.domains.iter().zip(&now.domains) {
        assert_eq!(o.filesystem_full, 0);
        assert_eq!(o.name, n.name);
        assert_eq!(o.pool.frames_total, n.pool.frames_total);
        assert_eq!(o.pool.frames_budget, n.pool.frames_budget);
    }
    assert_eq!(old.pool.frames_total, now.pool.frames_total);
}
