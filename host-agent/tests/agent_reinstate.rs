//! The whole agent with an in-process fake guest: a VM that does not
//! acknowledge a revocation is cut off (told with the ring header's cut-off
//! flag, which it acknowledges), and `Agent::reinstate_vm` starts its ring
//! over with a new generation, after which it is served again; a ring whose
//! indices the guest corrupted is started over the same way.

use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::Duration;

use vmdedup_host_agent::agent::{Agent, AgentOptions};
use vmdedup_host_agent::config::{AgentConfig, VmConfig};
use vmdedup_host_agent::namespace::NamespaceConfig;
use vmdedup_host_agent::ring::{GuestRing, PollerConfig, SharedMapping};
use vmdedup_protocol::abi::{ring_off, AnswerStatus, SubmissionEntry, EVENT_REVOKE};

mod common;
use common::{wait_for, TempDir};

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
            warm_at_start: false,
            always_loading: false,
        }],
        vms: vec![VmConfig {
            name: "vm1".into(),
            domain: "default".into(),
            guest_socket: None,
            cid: None,
            max_held: None,
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
    let (dropped, revoking) = agent.domains().evict("a", "f").unwrap();
    assert_eq!((dropped, revoking), (0, 1));
    let mut events = Vec::new();
    wait_for("the revocation", || {
        guest.reap_events(|e| events.push((e.kind, e.notice, e.file_map_id)));
        (!events.is_empty()).then_some(())
    });
    assert_eq!(events[0], (EVENT_REVOKE, 0, map), "{events:?}");
    wait_for("the cut-off flag", || guest.cut_off_news().then_some(()));
    let vms = agent.domains().vms(None);
    assert!(
        vms.iter().any(|v| v.name.as_str() == "vm1" && v.cut_off),
        "{vms:?}"
    );
    assert!(agent.domains().is_cut_off(1));
    // Cut off but not acknowledged, it keeps what it held charged: its page
    // tables may map it.
    let vm1 = agent.domains().vms(Some(1)).pop().unwrap();
    assert_eq!(vm1.maps_held, 1, "{vm1:?}");
    assert_eq!(agent.domains().status(None).file_maps, 1);
    guest.acknowledge_cut_off();
    let ring = agent.ring_shared(1).unwrap();
    wait_for("the acknowledgement seen", || {
        ring.cut_off_acknowledged().then_some(())
    });
    // Acknowledged: what it held is released, and the revoked map dropped.
    wait_for("the charged map released", || {
        let held = agent.domains().vms(Some(1)).pop().unwrap().maps_held;
        (held == 0 && agent.domains().status(None).file_maps == 0).then_some(())
    });

    // Reinstated: the ring starts over with another generation and the VM
    // is served again (the poller may still hold the closed ring a moment).
    let was = agent.reinstate_vm("vm1").unwrap();
    assert!(was);
    assert!(!agent.domains().is_cut_off(1));
    let mut guest = attach();
    assert_ne!(guest.generation(), first_generation);
    let ring = agent.ring_shared(1).unwrap();
    wait_for("the guest seen attached", || {
        ring.guest_attached().then_some(())
    });
    let again = hit(&mut guest, &file, &mut req);
    assert_ne!(
        again, map,
        "the evicted map was dropped; a new one serves the file"
    );
    assert!(
        !agent.reinstate_vm("vm1").unwrap(),
        "served again: nothing to do"
    );

    // The guest corrupts its submission tail: the ring is ignored until the
    // host writes a new one, which `reinstate_vm` does.
    let generation = guest.generation();
    let map = SharedMapping::open(&ring_path).unwrap();
    map.word(ring_off::SQ_TAIL)
        .unwrap()
        .store(0x8000_0000, std::sync::atomic::Ordering::Release);
    wait_for("the corruption seen", || ring.is_corrupt().then_some(()));
    assert!(agent.reinstate_vm("vm1").unwrap());
    let mut guest = attach();
    assert_ne!(guest.generation(), generation);
    let ring = agent.ring_shared(1).unwrap();
    assert!(!ring.is_corrupt());
    hit(&mut guest, &file, &mut req);

    // The VM is gone: removing it frees what it held (the hit after the
    // corrupt ring restarted; the one before was released at reconnection).
    assert_eq!(agent.domains().vms(Some(1)).pop().unwrap().maps_held, 1);
    assert_eq!(agent.remove_vm("vm1").unwrap(), 1);
    assert!(agent.remove_vm("vm1").is_err(), "gone");
    let st = agent.domains().status(None);
    assert_eq!(st.counters.pages_mapped, 0);
    // It was its trust domain's last VM: the domain is closed and its pool
    // file deleted.
    assert!(st.domains.is_empty(), "{:?}", st.domains);
    assert!(
        !dir.join("pool").exists(),
        "the closed domain's pool is deleted"
    );
    agent.shutdown();
}
