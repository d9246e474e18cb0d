//! The whole agent with an in-process fake guest: a VM that does not
//! acknowledge a revocation is cut off (told to revoke everything, its ring
//! closed), and `Agent::reinstate_vm` starts its ring over with a new
//! generation, after which it is served again.

use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmdedup_host_agent::agent::{Agent, AgentOptions};
use vmdedup_host_agent::config::{AgentConfig, VmConfig};
use vmdedup_host_agent::namespace::NamespaceConfig;
use vmdedup_host_agent::ring::{GuestRing, PollerConfig, SharedMapping};
use vmdedup_protocol::abi::{
    AnswerStatus, SubmissionEntry, EVENT_NOTICE, EVENT_REVOKE, NOTICE_EVENTS_LOST,
};

mod common;
use common::TempDir;

/// A hang guard, not a timing assertion.
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Hints `f` until the answer is a hit; returns its file map id.
fn hit(guest: &mut GuestRing, file: &std::path::Path, next_req: &mut u64) -> u64 {
    let md = std::fs::metadata(file).unwrap();
    wait_for("a hit", || {
        *next_req += 1;
        let e = SubmissionEntry {
            request_id: *next_req,
            namespace_id: 1,
            file_size: md.size(),
            mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
            page_count: 1,
            ..Default::default()
        };
        guest.stage(e, b"f").unwrap();
        guest.publish();
        let want = *next_req;
        let answer = wait_for("an answer", || {
            let mut got = None;
            guest.reap(|c| {
                if c.request_id == want {
                    got = Some(c);
                }
            });
            got
        });
        (answer.status == AnswerStatus::Hit as u16).then_some(answer.file_map_id)
    })
}

#[test]
fn a_cut_off_vm_is_told_and_can_be_reinstated() {
    let tmp = TempDir::new("reinstate");
    let dir = tmp.0.clone();
    std::fs::create_dir_all(dir.join("a")).unwrap();
    let file = dir.join("a/f");
    std::fs::write(&file, vec![3u8; 3 * 4096 + 5]).unwrap();
    let config = AgentConfig {
        pool: dir.join("pool"),
        pool_size: 4 << 20,
        ack_timeout_ms: 200,
        workers: 1,
        control_socket: dir.join("control.sock"),
        ring_dir: dir.clone(),
        namespaces: vec![NamespaceConfig {
            name: "a".into(),
            id: 1,
            dir: dir.join("a"),
            domains: vec!["default".into()],
            mtime_granularity_ns: 1,
            require_fingerprint: false,
        }],
        vms: vec![VmConfig {
            name: "vm1".into(),
            domain: "default".into(),
            guest_socket: None,
            cid: None,
        }],
        ..AgentConfig::default()
    };
    let ring_path = config.ring_path("vm1");
    let agent = Agent::start(
        config,
        AgentOptions {
            ring_size: 64 << 10,
            pollers: PollerConfig {
                threads: 1,
                park_timeout: Some(Duration::from_millis(5)),
                ..PollerConfig::default()
            },
            generation: 1000,
        },
    )
    .unwrap();
    let attach =
        || GuestRing::attach(Arc::new(SharedMapping::open(&ring_path).unwrap()), None).unwrap();
    let mut guest = attach();
    let first_generation = guest.generation();
    let mut req = 0;
    let map = hit(&mut guest, &file, &mut req);

    // Not cut off: nothing to reinstate.
    assert!(!agent.reinstate_vm("vm1").unwrap());
    assert!(agent.reinstate_vm("nobody").is_err());

    // Evicted while held; the guest never acknowledges.
    let (dropped, revoking) = agent.service().evict("a", "f").unwrap();
    assert_eq!((dropped, revoking), (0, 1));
    let mut events = Vec::new();
    wait_for("the revocation, then the cut-off notice", || {
        guest.reap_events(|e| events.push((e.kind, e.notice, e.file_map_id)));
        events
            .iter()
            .any(|&(k, n, _)| k == EVENT_NOTICE && n == NOTICE_EVENTS_LOST)
            .then_some(())
    });
    assert_eq!(events[0], (EVENT_REVOKE, 0, map), "{events:?}");
    let vms = agent.service().vms(None);
    assert!(
        vms.iter().any(|v| v.name.as_str() == "vm1" && v.cut_off),
        "{vms:?}"
    );
    assert!(agent.service().is_cut_off(1));

    // Reinstated: the ring starts over with another generation and the VM
    // is served again (the poller may still hold the closed ring a moment).
    let was = wait_for("the reinstatement", || agent.reinstate_vm("vm1").ok());
    assert!(was);
    assert!(!agent.service().is_cut_off(1));
    let mut guest = attach();
    assert_ne!(guest.generation(), first_generation);
    let again = hit(&mut guest, &file, &mut req);
    assert_ne!(
        again, map,
        "the evicted map was dropped; a new one serves the file"
    );
    assert!(
        !agent.reinstate_vm("vm1").unwrap(),
        "served again: nothing to do"
    );
    agent.shutdown();
}
