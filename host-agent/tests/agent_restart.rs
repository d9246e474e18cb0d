//! The whole agent restarted over its own pool and ring files, with
//! in-process fake guests: the new agent rewrites no frame a guest may map,
//! keeps every table live and every ring connected, and frees what the old
//! agent's tables named only after every VM re-announced its maps.

use std::path::{Path, PathBuf};

use vmdedup_host_agent::agent::Agent;
use vmdedup_host_agent::config::AgentConfig;
use vmdedup_host_agent::ring::SharedMapping;
use vmdedup_host_agent::store::PageStore;
use vmdedup_protocol::abi::{
    AnswerStatus, CompletionEntry, ANSWER_FLAG_MAP_OP, EVENT_NOTICE, EVENT_REVOKE,
    NOTICE_REANNOUNCE, OP_ACK_REVOKE, OP_HOLD, OP_HOLDS_DONE,
};
use vmdedup_protocol::pool::{
    verify_table, PoolGeometry, TableRef, FRAME_SIZE, POOL_HEADER_SIZE, TABLE_HEADER_SIZE,
};

mod common;
use common::agent::{agent_config, start_agent, vm, Guest};
use common::service::ns_config;
use common::{wait_for, TempDir};

/// Sends map operations and checks that the last one was answered as a
/// map operation, successfully.
fn map_ops(guest: &mut Guest, ops: &[(u16, u64)]) {
    let last = guest.map_ops(ops);
    assert_eq!(last.flags, ANSWER_FLAG_MAP_OP);
    assert_eq!(last.status, AnswerStatus::Hit as u16);
}

fn config(dir: &Path) -> AgentConfig {
    AgentConfig {
        ack_timeout_ms: 60_000,
        ..agent_config(
            dir,
            4 << 20,
            vec![ns_config("a", 1, &dir.join("a"), &["default"])],
            vec![vm("vm1", "default"), vm("vm2", "default")],
        )
    }
}

fn content(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(seed) ^ (i / 4096) as u8 ^ seed)
        .collect()
}

/// What a guest reads through the table of answer `c`: checks the table
/// as the guest does, then copies every page from its frames.
fn read_through(pool: &Path, c: &CompletionEntry) -> Vec<u8> {
    let bytes = std::fs::read(pool).unwrap();
    let head: [u8; POOL_HEADER_SIZE] = bytes[..POOL_HEADER_SIZE].try_into().unwrap();
    let g = PoolGeometry::from_header_bytes(&head, bytes.len() as u64).unwrap();
    let r = TableRef {
        offset: c.table_offset,
        page_count: c.page_count,
        file_map_id: c.file_map_id,
        file_size: c.file_size,
        map_generation: c.map_generation,
    };
    let (frames_off, frames_len) = g.table_span(&r).unwrap();
    let off = c.table_offset as usize;
    let header: [u8; TABLE_HEADER_SIZE] = bytes[off..off + TABLE_HEADER_SIZE].try_into().unwrap();
    let frames = &bytes[frames_off as usize..(frames_off + frames_len) as usize];
    verify_table(&g, &r, &header, frames).expect("the table is still live and intact");
    let mut out = Vec::new();
    for w in frames.chunks_exact(4) {
        let f = u32::from_le_bytes(w.try_into().unwrap());
        let o = g.frame_offset(f).unwrap() as usize;
        out.extend_from_slice(&bytes[o..o + FRAME_SIZE as usize]);
    }
    out.truncate(c.file_size as usize);
    out
}

/// A scratch directory with namespace "a" created in it, and the config over it.
fn scratch(tag: &str) -> (TempDir, PathBuf, AgentConfig) {
    let tmp = TempDir::new(tag);
    let dir = tmp.0.clone();
    std::fs::create_dir_all(dir.join("a")).unwrap();
    let cfg = config(&dir);
    (tmp, dir, cfg)
}

/// `f` run on the page store of `agent`'s default domain.
fn in_store<R>(agent: &Agent, f: impl FnOnce(&PageStore) -> R) -> R {
    agent.domains().service("default").unwrap().inspect_store(f)
}

fn frames_of(agent: &Agent, id: u64) -> Vec<u32> {
    in_store(agent, |s| s.frames_of(id).map(<[u32]>::to_vec)).unwrap()
}

#[test]
fn a_restarted_agent_adopts_the_pool_and_guests_keep_their_maps() {
    let (_tmp, dir, cfg) = scratch("restart");
    let (f, g, h) = (
        content(3, 5 * 4096 + 77),
        content(5, 2 * 4096),
        content(7, 3 * 4096),
    );
    std::fs::write(dir.join("a/f"), &f).unwrap();
    std::fs::write(dir.join("a/g"), &g).unwrap();
    std::fs::write(dir.join("a/h"), &h).unwrap();
    let pool = cfg.pool.clone();

    let old = start_agent(cfg.clone(), 1000);
    let mut vm1 = Guest::attach(&cfg.ring_path("vm1"));
    let mut vm2 = Guest::attach(&cfg.ring_path("vm2"));
    let generations = (vm1.ring.generation(), vm2.ring.generation());
    let a = vm1.hit(1, "f", &dir.join("a/f"), 0);
    let b = vm1.hit(1, "g", &dir.join("a/g"), 0);
    assert_eq!(read_through(&pool, &a), f);
    // `g` is being revoked when the agent dies: vm1 got the event but has
    // not acknowledged (it still maps the frames).
    assert_eq!(old.domains().evict("a", "g").unwrap(), (0, 1));
    vm1.event("the revocation of g", |e| {
        *e == (EVENT_REVOKE, 0, b.file_map_id)
    });
    let old_frames_a = frames_of(&old, a.file_map_id);
    let before = std::fs::read(&pool).unwrap();

    // The crash, and a new agent over the same files.
    old.abandon();
    drop(old);
    let agent = start_agent(cfg.clone(), 2000);
    let after = std::fs::read(&pool).unwrap();
    assert_eq!(
        after[4096..],
        before[4096..],
        "no table and no frame was written"
    );
    // Rings adopted in place: same generation, both guests still attached,
    // each asked to re-announce with the new agent's token.
    for (vm, gen) in [(&mut vm1, generations.0), (&mut vm2, generations.1)] {
        assert_eq!(
            Guest::attach(&cfg.ring_path(if gen == generations.0 { "vm1" } else { "vm2" }))
                .ring
                .generation(),
            gen
        );
        vm.event("the re-announce notice", |e| {
            *e == (EVENT_NOTICE, NOTICE_REANNOUNCE, 2000)
        });
    }
    assert_eq!(in_store(&agent, |s| s.pinned()), Some((8, vec![1, 2])));
    // The held map still reads right through its table.
    assert_eq!(read_through(&pool, &a), f);
    assert_eq!(frames_of(&agent, a.file_map_id), old_frames_a);

    // New hints work at once: `f` again gets a new map on the same frames
    // (content index), `h` takes new frames and overwrites nothing.
    let a2 = vm2.hit(1, "f", &dir.join("a/f"), 0);
    assert!(a2.file_map_id > b.file_map_id, "ids are not reused");
    assert_eq!(frames_of(&agent, a2.file_map_id), old_frames_a);
    let c = vm2.hit(1, "h", &dir.join("a/h"), 0);
    assert_eq!(read_through(&pool, &c), h);
    assert_eq!(read_through(&pool, &a), f);

    // vm1 re-announces both; `g` is not live any more, so it is revoked
    // for vm1 again and the pins wait for the acknowledgement.
    map_ops(
        &mut vm1,
        &[
            (OP_HOLD, a.file_map_id),
            (OP_HOLD, b.file_map_id),
            (OP_HOLDS_DONE, 1999),
            (OP_HOLDS_DONE, 2000),
        ],
    );
    vm1.events.clear();
    vm1.event("g revoked again", |e| {
        *e == (EVENT_REVOKE, 0, b.file_map_id)
    });
    map_ops(&mut vm2, &[(OP_HOLDS_DONE, 2000)]);
    assert_eq!(in_store(&agent, |s| s.pinned()), Some((8, vec![])));
    map_ops(&mut vm1, &[(OP_ACK_REVOKE, b.file_map_id)]);
    wait_for("the pins to go", || {
        in_store(&agent, |s| s.pinned()).is_none().then_some(())
    });
    assert_eq!(read_through(&pool, &a), f);
    assert!(in_store(&agent, |s| s.frames_of(b.file_map_id).is_none()));

    // vm1's hold of the adopted map is a real one: evicting everything
    // revokes it for vm1 (adopted maps have no path: the agent does not
    // know their file), with the new maps of `f` and `h` for vm2.
    assert_eq!(agent.domains().evict("", "").unwrap(), (0, 3));
    vm1.events.clear();
    vm1.event("the revocation of the adopted map", |e| {
        *e == (EVENT_REVOKE, 0, a.file_map_id)
    });
    agent.shutdown();
}

#[test]
fn a_ring_that_does_not_validate_starts_over_and_its_first_entry_counts() {
    let (_tmp, dir, cfg) = scratch("restart-reinit");
    let f = content(9, 2 * 4096 + 1);
    std::fs::write(dir.join("a/f"), &f).unwrap();
    let old = start_agent(cfg.clone(), 1000);
    let mut vm1 = Guest::attach(&cfg.ring_path("vm1"));
    let mut vm2 = Guest::attach(&cfg.ring_path("vm2"));
    let a = vm2.hit(1, "f", &dir.join("a/f"), 0);
    let first = vm2.ring.generation();
    old.abandon();
    drop(old);
    // vm2's submission tail is garbage: its ring cannot be adopted.
    let m = SharedMapping::open(&cfg.ring_path("vm2")).unwrap();
    m.word(vmdedup_protocol::abi::ring_off::SQ_TAIL)
        .unwrap()
        .fetch_add(1 << 30, std::sync::atomic::Ordering::Relaxed);
    let agent = start_agent(cfg.clone(), 2000);
    let mut vm2 = Guest::attach(&cfg.ring_path("vm2"));
    assert_ne!(vm2.ring.generation(), first, "re-initialised");
    assert_eq!(in_store(&agent, |s| s.pinned()), Some((3, vec![1, 2])));
    // Its first hint on the new ring is its re-announcement.
    let a2 = vm2.hit(1, "f", &dir.join("a/f"), 0);
    assert_eq!(read_through(&cfg.pool, &a2), f);
    assert_eq!(in_store(&agent, |s| s.pinned()), Some((3, vec![1])));
    vm1.event("the re-announce notice", |e| {
        *e == (EVENT_NOTICE, NOTICE_REANNOUNCE, 2000)
    });
    map_ops(&mut vm1, &[(OP_HOLDS_DONE, 2000)]);
    wait_for("the pins to go", || {
        in_store(&agent, |s| s.pinned()).is_none().then_some(())
    });
    // Nobody re-announced the old map: it is gone, the new one serves.
    assert!(in_store(&agent, |s| s.frames_of(a.file_map_id).is_none()));
    assert_eq!(read_through(&cfg.pool, &a2), f);
    agent.shutdown();
}

#[test]
fn a_stopped_agent_leaves_the_maps_to_the_next_one() {
    let (_tmp, dir, cfg) = scratch("restart-graceful");
    let f = content(11, 4 * 4096);
    std::fs::write(dir.join("a/f"), &f).unwrap();
    let old = start_agent(cfg.clone(), 1000);
    let mut vm1 = Guest::attach(&cfg.ring_path("vm1"));
    let a = vm1.hit(1, "f", &dir.join("a/f"), 0);
    old.shutdown();
    drop(old);
    let agent = start_agent(cfg.clone(), 2000);
    vm1.event("the re-announce notice", |e| {
        *e == (EVENT_NOTICE, NOTICE_REANNOUNCE, 2000)
    });
    assert_eq!(
        vm1.events,
        vec![(EVENT_NOTICE, NOTICE_REANNOUNCE, 2000)],
        "nothing told the guest to drop its maps"
    );
    assert_eq!(read_through(&cfg.pool, &a), f);
    agent.shutdown();
}

#[test]
fn a_vm_added_at_run_time_is_waited_for_after_a_restart() {
    let (_tmp, dir, cfg) = scratch("restart-added");
    let f = content(13, 3 * 4096);
    std::fs::write(dir.join("a/f"), &f).unwrap();
    let old = start_agent(cfg.clone(), 1000);
    old.add_vm("vm3", "default").unwrap();
    let mut vm3 = Guest::attach(&cfg.ring_path("vm3"));
    let a = vm3.hit(1, "f", &dir.join("a/f"), 0);
    old.abandon();
    drop(old);

    // The new agent knows vm3 from the file the old one wrote, gives it the
    // same id, takes its ring over and waits for it as for the configured
    // VMs: its map's frames stay pinned until it re-announced.
    let agent = start_agent(cfg.clone(), 2000);
    assert_eq!(agent.domains().vm_id("vm3"), Some(3));
    vm3.event("the re-announce notice", |e| {
        *e == (EVENT_NOTICE, NOTICE_REANNOUNCE, 2000)
    });
    let (frames, waiting) = in_store(&agent, |s| s.pinned()).expect("pinned after the adoption");
    assert!(frames >= 3, "{frames}");
    assert!(waiting.contains(&3), "{waiting:?}");
    assert_eq!(read_through(&cfg.pool, &a), f);

    // Removed, it is forgotten for good: a third agent does not know it.
    agent.remove_vm("vm3").unwrap();
    agent.abandon();
    drop(agent);
    let third = start_agent(cfg.clone(), 3000);
    assert_eq!(third.domains().vm_id("vm3"), None);
    third.shutdown();
}
