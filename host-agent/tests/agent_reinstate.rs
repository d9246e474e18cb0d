//! The whole agent with an in-process fake guest: a VM that does not
//! acknowledge a revocation is cut off (told with the ring header's cut-off
//! flag, which it acknowledges), and `Agent::reinstate_vm` starts its ring
//! over with a new generation, after which it is served again; a ring whose
//! indices the guest corrupted is started over the same way.

use vmdedup_host_agent::config::AgentConfig;
use vmdedup_host_agent::ring::SharedMapping;
use vmdedup_protocol::abi::{ring_off, EVENT_REVOKE};

mod common;
use common::agent::{agent_config, start_agent, vm, Guest};
use common::service::ns_config;
use common::{wait_for, TempDir};

#[test]
fn a_cut_off_vm_is_told_and_can_be_reinstated() {
    let tmp = TempDir::new("reinstate");
    let dir = tmp.0.clone();
    std::fs::create_dir_all(dir.join("a")).unwrap();
    let file = dir.join("a/f");
    std::fs::write(&file, vec![3u8; 3 * 4096 + 5]).unwrap();
    let config = AgentConfig {
        ack_timeout_ms: 200,
        ..agent_config(
            &dir,
            4 << 20,
            vec![ns_config("a", 1, &dir.join("a"), &["default"])],
            vec![vm("vm1", "default")],
        )
    };
    let ring_path = config.ring_path("vm1");
    let agent = start_agent(config, 1000);
    // Request ids go on across re-attachments, as one guest's would.
    let attach = |req| Guest {
        req,
        ..Guest::attach(&ring_path)
    };
    let mut guest = attach(0);
    let first_generation = guest.ring.generation();
    let map = guest.hit(1, "f", &file, 1).file_map_id;

    // Not cut off: nothing to reinstate.
    assert!(!agent.reinstate_vm("vm1").unwrap());
    assert!(agent.reinstate_vm("nobody").is_err());

    // Evicted while held; the guest never acknowledges.
    let (dropped, revoking) = agent.domains().evict("a", "f").unwrap();
    assert_eq!((dropped, revoking), (0, 1));
    let mut events = Vec::new();
    wait_for("the revocation", || {
        guest
            .ring
            .reap_events(|e| events.push((e.kind, e.notice, e.file_map_id)));
        (!events.is_empty()).then_some(())
    });
    assert_eq!(events[0], (EVENT_REVOKE, 0, map), "{events:?}");
    wait_for("the cut-off flag", || {
        guest.ring.cut_off_news().then_some(())
    });
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
    assert_eq!(agent.domains().status(None).pool.file_maps, 1);
    guest.ring.acknowledge_cut_off();
    let ring = agent.ring_shared(1).unwrap();
    wait_for("the acknowledgement seen", || {
        ring.cut_off_acknowledged().then_some(())
    });
    // Acknowledged: what it held is released, and the revoked map dropped.
    wait_for("the charged map released", || {
        let held = agent.domains().vms(Some(1)).pop().unwrap().maps_held;
        (held == 0 && agent.domains().status(None).pool.file_maps == 0).then_some(())
    });

    // Reinstated: the ring starts over with another generation and the VM
    // is served again (the poller may still hold the closed ring a moment).
    let was = agent.reinstate_vm("vm1").unwrap();
    assert!(was);
    assert!(!agent.domains().is_cut_off(1));
    let mut guest = attach(guest.req);
    assert_ne!(guest.ring.generation(), first_generation);
    let ring = agent.ring_shared(1).unwrap();
    wait_for("the guest seen attached", || {
        ring.guest_attached().then_some(())
    });
    let again = guest.hit(1, "f", &file, 1).file_map_id;
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
    let generation = guest.ring.generation();
    let map = SharedMapping::open(&ring_path).unwrap();
    map.word(ring_off::SQ_TAIL)
        .unwrap()
        .store(0x8000_0000, std::sync::atomic::Ordering::Release);
    wait_for("the corruption seen", || ring.is_corrupt().then_some(()));
    assert!(agent.reinstate_vm("vm1").unwrap());
    let mut guest = attach(guest.req);
    assert_ne!(guest.ring.generation(), generation);
    let ring = agent.ring_shared(1).unwrap();
    assert!(!ring.is_corrupt());
    guest.hit(1, "f", &file, 1);

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
