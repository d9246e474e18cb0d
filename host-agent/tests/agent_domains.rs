//! Trust domains as a boundary, through the whole agent with in-process fake
//! guests: each domain has a pool file of its own; a file two domains use is
//! loaded into each pool; nothing a VM of one domain can read or be answered
//! (its pool's bytes, the hit / "loading" answer, its status, revocations)
//! depends on what a VM of another domain did; a domain's pool is created
//! with its first VM and deleted with its last.

use std::path::Path;
use std::time::Duration;

use vmdedup_host_agent::config::{AgentConfig, DomainConfig};
use vmdedup_protocol::abi::{AnswerStatus, EVENT_REVOKE, OP_HOLD, OP_HOLDS_DONE};
use vmdedup_protocol::pool::header_off::{FRAMES_USED, REVOCATION_EPOCH};

mod common;
use common::agent::{agent_config, start_agent, vm, Guest};
use common::service::ns_config;
use common::{wait_for, TempDir};

/// Whether `needle` occurs in the file at `path`.
fn file_contains(path: &Path, needle: &[u8]) -> bool {
    std::fs::read(path)
        .unwrap()
        .windows(needle.len())
        .any(|w| w == needle)
}

/// A live counter of the pool header of the pool file at `path`.
fn header_word(path: &Path, off: usize) -> u64 {
    let b = std::fs::read(path).unwrap();
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

/// Bytes no other file has: a counter-mode pseudo-random stream from `seed`.
fn unique_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed ^ 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn each_domain_has_its_own_pool_and_sees_nothing_of_the_others() {
    let tmp = TempDir::new("domains");
    let dir = tmp.0.clone();
    for d in ["common", "secret"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    let common = dir.join("common/lib.so");
    let secret = dir.join("secret/key");
    let (common_bytes, secret_bytes) = (unique_bytes(1, 5 * 4096 + 7), unique_bytes(2, 3 * 4096));
    std::fs::write(&common, &common_bytes).unwrap();
    std::fs::write(&secret, &secret_bytes).unwrap();
    let config = AgentConfig {
        // Room for the files, not for much more: domain A's pressure below.
        budget: 0,
        ack_timeout_ms: 60_000,
        domains: [(
            "tenant-a".to_string(),
            DomainConfig {
                pool_size: Some(2 << 20),
                budget: Some(64 << 10),
            },
        )]
        .into(),
        ..agent_config(
            &dir,
            4 << 20,
            vec![
                ns_config("common", 1, &dir.join("common"), &["tenant-a", "tenant-b"]),
                ns_config("secret", 2, &dir.join("secret"), &["tenant-a"]),
            ],
            vec![vm("vm1", "tenant-a"), vm("vm2", "tenant-b")],
        )
    };
    let (pool_a, pool_b) = (dir.join("pool.tenant-a"), dir.join("pool.tenant-b"));
    let agent = start_agent(config.clone(), 4000);

    // One pool file per domain in use, of the domain's size; none for the
    // unused default domain.
    assert_eq!(std::fs::metadata(&pool_a).unwrap().len(), 2 << 20);
    assert_eq!(std::fs::metadata(&pool_b).unwrap().len(), 4 << 20);
    assert!(!dir.join("pool").exists());
    let attach_args = config.qemu_args("vm1", None, 64 << 10).join(" ");
    assert!(
        attach_args.contains(&format!("mem-path={},", pool_a.display())),
        "{attach_args}"
    );

    let mut g1 = Guest::attach(&config.ring_path("vm1"));
    let mut g2 = Guest::attach(&config.ring_path("vm2"));

    // VM 1 loads both files into A's pool.
    let c1 = g1.hit(1, "lib.so", &common, 1);
    g1.hit(2, "key", &secret, 1);
    assert!(file_contains(&pool_a, &secret_bytes[..64]));
    assert!(file_contains(&pool_a, &common_bytes[4096..4160]));
    // Nothing of it is in B's pool: not the secret, not the common file,
    // and B's pool header's live counters did not move.
    assert!(!file_contains(&pool_b, &secret_bytes[..64]));
    assert!(!file_contains(&pool_b, &common_bytes[4096..4160]));
    assert_eq!(header_word(&pool_a, FRAMES_USED), 9);
    assert_eq!(header_word(&pool_b, FRAMES_USED), 0);

    // VM 2's view does not depend on what VM 1 did: its first hint for the
    // file VM 1 loaded is "loading", as if nobody had, and its status
    // shows nothing of VM 1.
    let before = agent.domains().status(Some(2));
    assert_eq!(
        g2.ask(1, "lib.so", &common, 1).status,
        AnswerStatus::Loading as u16,
        "the hit / loading answer must not tell VM 2 that VM 1 loaded the file"
    );
    assert_eq!(
        before.pool.frames_used + before.pool.file_maps + before.pool.bytes_saved,
        0,
        "{before:?}"
    );
    assert!(before.domains.is_empty(), "a VM sees no domain list");
    assert_eq!(before.vms.len(), 1);
    // Its namespace may not be used from B.
    assert_eq!(
        g2.ask(2, "key", &secret, 1).status,
        AnswerStatus::NamespaceNotAllowed as u16
    );
    let c2 = g2.hit(1, "lib.so", &common, 1);
    // The common file is loaded into B's pool too, as a map of B's pool.
    assert!(file_contains(&pool_b, &common_bytes[4096..4160]));
    assert!(!file_contains(&pool_b, &secret_bytes[..64]));
    let _ = (c1, c2);

    // The host sees both domains' pools.
    let st = agent.domains().status(None);
    let names: Vec<&str> = st.domains.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["tenant-a", "tenant-b"]);
    let (a, b) = (&st.domains[0], &st.domains[1]);
    assert_eq!((a.pool.file_maps, b.pool.file_maps), (2, 1));
    assert_eq!(
        a.pool.frames_used,
        5 + 1 + 3,
        "common (6 pages) + secret (3)"
    );
    assert_eq!(b.pool.frames_used, 6);
    assert_eq!(st.pool.frames_used, a.pool.frames_used + b.pool.frames_used);
    let (total, files) = agent.domains().files("common", None, 0, 10);
    assert_eq!(total, 2, "one map per domain's pool");
    let doms: Vec<&str> = files.iter().map(|f| f.domain.as_str()).collect();
    assert_eq!(doms, ["tenant-a", "tenant-b"]);
    // Paging crosses domains.
    let (_, second) = agent.domains().files("common", None, 1, 10);
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].domain.as_str(), "tenant-b");

    // Pressure in A (budget 16 frames) revokes only A's maps, never B's:
    // a new file in A's pool that does not fit evicts what VM 1 holds.
    let before_b = agent.domains().status(Some(2));
    let big = dir.join("common/big");
    std::fs::write(&big, unique_bytes(3, 10 * 4096)).unwrap();
    let _ = g1.ask(1, "big", &big, 1);
    let mut revoked = Vec::new();
    wait_for("a revocation in A", || {
        g1.ring.reap_events(|e| {
            if e.kind == EVENT_REVOKE {
                revoked.push(e.file_map_id)
            }
        });
        (!revoked.is_empty()).then_some(())
    });
    std::thread::sleep(Duration::from_millis(50));
    let mut b_events = 0;
    g2.ring.reap_events(|_| b_events += 1);
    assert_eq!(
        b_events, 0,
        "VM 2 (domain B) is not revoked for A's pressure"
    );
    let after_b = agent.domains().status(Some(2));
    assert_eq!(before_b.vms[0].maps_held, after_b.vms[0].maps_held);
    assert_eq!(after_b.vms[0].revocations_pending, 0);
    assert_ne!(header_word(&pool_a, REVOCATION_EPOCH), 0);
    assert_eq!(header_word(&pool_b, REVOCATION_EPOCH), 0);

    // A domain opened at run time gets its pool; removing a domain's last
    // VM deletes it.
    let pool_c = dir.join("pool.tenant-c");
    agent.add_vm("vm3", "tenant-c").unwrap();
    assert!(pool_c.exists());
    assert!(agent.add_vm("vm3", "tenant-a").is_err(), "names are unique");
    agent.remove_vm("vm3").unwrap();
    assert!(!pool_c.exists(), "the last VM of tenant-c is gone");
    agent.remove_vm("vm2").unwrap();
    assert!(!pool_b.exists());
    assert!(pool_a.exists(), "tenant-a still has vm1");
    let names: Vec<String> = agent.domains().names();
    assert_eq!(names, ["tenant-a"]);
    agent.shutdown();
}

#[test]
fn a_restarted_agent_adopts_each_domains_pool_and_waits_for_its_own_vms() {
    let tmp = TempDir::new("domains-restart");
    let dir = tmp.0.clone();
    std::fs::create_dir_all(dir.join("common")).unwrap();
    let f = dir.join("common/f");
    std::fs::write(&f, unique_bytes(7, 2 * 4096)).unwrap();
    let config = agent_config(
        &dir,
        2 << 20,
        vec![ns_config("common", 1, &dir.join("common"), &["*"])],
        vec![vm("vm1", "tenant-a"), vm("vm2", "tenant-b")],
    );
    let old = start_agent(config.clone(), 1000);
    let mut g1 = Guest::attach(&config.ring_path("vm1"));
    let mut g2 = Guest::attach(&config.ring_path("vm2"));
    let m1 = g1.hit(1, "f", &f, 1).file_map_id;
    let m2 = g2.hit(1, "f", &f, 1).file_map_id;
    let before = (
        std::fs::read(dir.join("pool.tenant-a")).unwrap(),
        std::fs::read(dir.join("pool.tenant-b")).unwrap(),
    );
    old.abandon();
    drop(old);

    let agent = start_agent(config.clone(), 2000);
    let pinned = |d: &str| {
        agent
            .domains()
            .service(d)
            .unwrap()
            .inspect_store(|s| s.pinned())
    };
    for d in ["tenant-a", "tenant-b"] {
        assert!(agent.domains().get(d).unwrap().adopted(), "{d}");
    }
    // Each domain's pool waits for its own VM only.
    assert_eq!(pinned("tenant-a").map(|p| p.1), Some(vec![1]));
    assert_eq!(pinned("tenant-b").map(|p| p.1), Some(vec![2]));
    assert_eq!(
        std::fs::read(dir.join("pool.tenant-a")).unwrap()[4096..],
        before.0[4096..]
    );
    assert_eq!(
        std::fs::read(dir.join("pool.tenant-b")).unwrap()[4096..],
        before.1[4096..]
    );
    g1.map_ops(&[(OP_HOLD, m1), (OP_HOLDS_DONE, 2000)]);
    wait_for("tenant-a's pins to go", || {
        pinned("tenant-a").is_none().then_some(())
    });
    assert_eq!(
        pinned("tenant-b").map(|p| p.1),
        Some(vec![2]),
        "tenant-b still waits for vm2"
    );
    g2.map_ops(&[(OP_HOLD, m2), (OP_HOLDS_DONE, 2000)]);
    wait_for("tenant-b's pins to go", || {
        pinned("tenant-b").is_none().then_some(())
    });
    let held: Vec<u32> = agent
        .domains()
        .vms(None)
        .iter()
        .map(|v| v.maps_held)
        .collect();
    assert_eq!(
        held,
        [1, 1],
        "each VM's re-announced hold counts in its own domain"
    );
    agent.shutdown();
}
