//! The whole agent with an in-process fake guest: a hint answered "loading"
//! that asked with `HINT_FLAG_NOTIFY_LOADED` is followed by a
//! `NOTICE_LOADED` naming its request once the file is in the pool; one
//! that did not ask is not; the ring header offers the option. A
//! pool-only hint queues no load.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use vmdedup_protocol::abi::{
    AnswerStatus, SubmissionEntry, ANSWER_FLAG_NOTICE_COMING, EVENT_NOTICE,
    HINT_FLAG_NOTIFY_LOADED, HINT_FLAG_POOL_ONLY, NOTICE_LOADED, OPTION_LOADED_NOTICE,
    OPTION_POOL_ONLY,
};

mod common;
use common::agent::{agent_config, start_agent, vm, Guest};
use common::service::ns_config;
use common::{wait_for, TempDir};

/// Publishes a hint for `rel` (host copy `file`) as request `id`, asking
/// for a notice if `notify`, and returns its answer's status and flags.
fn ask_flags(g: &mut Guest, rel: &str, file: &Path, id: u64, notify: bool) -> (u16, u16) {
    let flags = if notify { HINT_FLAG_NOTIFY_LOADED } else { 0 };
    ask_with(g, rel, file, id, flags)
}

/// [`ask_flags`] with the hint's `HINT_FLAG_*` bits.
fn ask_with(g: &mut Guest, rel: &str, file: &Path, id: u64, flags: u32) -> (u16, u16) {
    let md = std::fs::metadata(file).unwrap();
    let e = SubmissionEntry {
        request_id: id,
        namespace_id: 1,
        file_size: md.size(),
        mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
        flags,
        ..Default::default()
    };
    g.ring.stage(e, rel.as_bytes()).unwrap();
    g.ring.publish();
    let a = g.answer(id);
    (a.status, a.flags)
}

/// [`ask_flags`]'s status.
fn ask(g: &mut Guest, rel: &str, file: &Path, id: u64, notify: bool) -> u16 {
    ask_flags(g, rel, file, id, notify).0
}

#[test]
fn a_guest_that_asked_is_told_when_its_loading_file_is_in_the_pool() {
    let tmp = TempDir::new("notices");
    let dir = tmp.0.clone();
    std::fs::create_dir_all(dir.join("a")).unwrap();
    let (f, g) = (dir.join("a/f"), dir.join("a/g"));
    std::fs::write(&f, vec![5u8; 9 * 4096 + 1]).unwrap();
    std::fs::write(&g, vec![6u8; 2 * 4096]).unwrap();
    let config = agent_config(
        &dir,
        4 << 20,
        vec![ns_config("a", 1, &dir.join("a"), &["default"])],
        vec![vm("vm1", "default")],
    );
    let ring_path = config.ring_path("vm1");
    let _agent = start_agent(config, 1000);
    let mut guest = Guest::attach(&ring_path);
    assert_ne!(
        guest.ring.layout().options & OPTION_LOADED_NOTICE,
        0,
        "the ring offers loaded notices"
    );
    let loading = AnswerStatus::Loading as u16;
    // The answer says whether a notice will come.
    assert_eq!(
        ask_flags(&mut guest, "f", &f, 11, true),
        (loading, ANSWER_FLAG_NOTICE_COMING)
    );
    assert_eq!(ask_flags(&mut guest, "g", &g, 12, false), (loading, 0));
    let mut notices = Vec::new();
    wait_for("the notice for request 11", || {
        guest.ring.reap_events(|e| {
            assert_eq!(e.kind, EVENT_NOTICE, "{e:?}");
            assert_eq!(e.notice, NOTICE_LOADED, "{e:?}");
            notices.push(e.request_id);
        });
        notices.contains(&11).then_some(())
    });
    // g was loaded too (its hit comes without waiting), but never told.
    wait_for("g in the pool", || {
        (ask(&mut guest, "g", &g, 13, false) == AnswerStatus::Hit as u16).then_some(())
    });
    assert_eq!(ask(&mut guest, "f", &f, 14, true), AnswerStatus::Hit as u16);
    std::thread::sleep(std::time::Duration::from_millis(50));
    guest.ring.reap_events(|e| notices.push(e.request_id));
    assert_eq!(notices, vec![11], "one notice, for the hint that asked");
    // A pool-only hint takes what the pool holds, and for a file it does
    // not hold queues no load: no notice is coming, though it asked.
    assert_ne!(guest.ring.layout().options & OPTION_POOL_ONLY, 0);
    let both = HINT_FLAG_NOTIFY_LOADED | HINT_FLAG_POOL_ONLY;
    assert_eq!(
        ask_with(&mut guest, "g", &g, 15, both).0,
        AnswerStatus::Hit as u16
    );
    let h = dir.join("a/h");
    std::fs::write(&h, vec![7u8; 4096]).unwrap();
    assert_eq!(ask_with(&mut guest, "h", &h, 16, both), (loading, 0));
}
