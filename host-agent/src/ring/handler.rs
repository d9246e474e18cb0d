//! What a poller does with a hint: the [`Handler`] trait.

use vmdedup_protocol::abi::AnswerStatus;
use vmdedup_protocol::pool::TableRef;

/// Identifies a ring (a VM) to the handler, e.g. for namespace permissions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RingId(pub u32);

/// A validated hint, copied out of the ring. The path has passed
/// [`check_path`](vmdedup_protocol::abi::check_path); it is still untrusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hint<'a> {
    /// Guest-chosen id (echoed by the poller, not by the handler).
    pub request_id: u64,
    /// The namespace the path is relative to.
    pub namespace_id: u32,
    /// The namespace-relative path.
    pub path: &'a [u8],
    /// Guest copy: size in bytes.
    pub file_size: u64,
    /// Guest copy: mtime in ns.
    pub mtime_ns: i64,
    /// Guest copy: ctime in ns (0 if unknown).
    pub ctime_ns: i64,
    /// Guest copy: inode number (0 if unknown).
    pub inode: u64,
    /// First page wanted.
    pub first_page: u64,
    /// Pages wanted (0: to the end).
    pub page_count: u32,
    /// Guest copy: content fingerprint from its lower image, if it sent one.
    pub fingerprint: Option<vmdedup_protocol::abi::Fingerprint>,
    /// If answered "loading", the guest would like to be told when the
    /// file is loaded ([`HINT_FLAG_NOTIFY_LOADED`]).
    ///
    /// [`HINT_FLAG_NOTIFY_LOADED`]: vmdedup_protocol::abi::HINT_FLAG_NOTIFY_LOADED
    pub notify_loaded: bool,
    /// Answer from what the pool holds now: a miss queues no load
    /// ([`HINT_FLAG_POOL_ONLY`]).
    ///
    /// [`HINT_FLAG_POOL_ONLY`]: vmdedup_protocol::abi::HINT_FLAG_POOL_ONLY
    pub pool_only: bool,
}

/// A handler's answer to a hint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Served from the pool: where the file's table is.
    Hit(TableRef),
    /// Not served, with the reason. `Miss(AnswerStatus::Hit)` is turned into
    /// [`AnswerStatus::HostError`].
    Miss(AnswerStatus),
    /// [`AnswerStatus::Loading`], and the guest will be told when the file
    /// is loaded (the hint asked; the answer carries
    /// [`ANSWER_FLAG_NOTICE_COMING`](vmdedup_protocol::abi::ANSWER_FLAG_NOTICE_COMING)).
    LoadingNotice,
}

/// Turns hints into answers. Called on the poller threads, so it must be quick
/// (the [hint service](crate::service::HintService) plugs in here); it must
/// not panic on any hint.
pub trait Handler: Send + Sync {
    /// Answers one hint from ring `ring`.
    fn handle(&self, ring: RingId, hint: &Hint<'_>) -> Answer;

    /// The guest acknowledged the revocation of `file_map_id`
    /// ([`OP_ACK_REVOKE`](vmdedup_protocol::abi::OP_ACK_REVOKE)). Default: ignored.
    fn ack_revoke(&self, _ring: RingId, _file_map_id: u64) {}

    /// The guest let go of `file_map_id`
    /// ([`OP_RELEASE`](vmdedup_protocol::abi::OP_RELEASE)). Default: ignored.
    fn release(&self, _ring: RingId, _file_map_id: u64) {}

    /// The guest of cut-off ring `ring` acknowledged the cut-off
    /// ([`GUEST_FLAG_CUT_OFF_ACK`](vmdedup_protocol::abi::GUEST_FLAG_CUT_OFF_ACK)):
    /// it maps no pool frame any more, so what it still had charged may be
    /// freed. Called once per ring. Default: ignored.
    fn cut_off_acknowledged(&self, _ring: RingId) {}

    /// The guest attached this ring (it wrote the ring's generation to
    /// `guest_attached`, after it dropped every map of an older ring): what
    /// it held through an older ring may be released. Called once per ring.
    /// Default: ignored.
    fn reconnected(&self, _ring: RingId) {}

    /// The guest re-announced that it holds `file_map_id`
    /// ([`OP_HOLD`](vmdedup_protocol::abi::OP_HOLD)). Default: ignored.
    fn hold(&self, _ring: RingId, _file_map_id: u64) {}

    /// The guest re-announced all it holds
    /// ([`OP_HOLDS_DONE`](vmdedup_protocol::abi::OP_HOLDS_DONE) with `token`;
    /// 0 when the host saw it start over on a re-initialised ring).
    /// Default: ignored.
    fn holds_done(&self, _ring: RingId, _token: u64) {}
}

impl<F> Handler for F
where
    F: Fn(RingId, &Hint<'_>) -> Answer + Send + Sync,
{
    fn handle(&self, ring: RingId, hint: &Hint<'_>) -> Answer {
        self(ring, hint)
    }
}
