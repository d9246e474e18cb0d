// SPDX-License-Identifier: GPL-2.0
//! The shared-memory ABI of vmdedup.
//!
//! This file is compiled twice: by cargo into the `vmdedup-protocol` crate, and by
//! Kbuild into the guest module (`#[path = "../protocol/src/abi.rs"] mod abi;`).
//! It must therefore use `core` only: no external crates, no floats, no `std`, and
//! it must be clean under the kernel's lint set.
//!
//! All multi-byte fields are little-endian. Every struct is `#[repr(C)]` with its
//! size and field offsets asserted at compile time, so both sides agree or fail to
//! build.
//!
//! # Regions
//! A guest sees two shared regions, each an `ivshmem-plain` PCI device (BAR2):
//! - the *ring region*, read-write, private to one VM and the host agent;
//! - the *pool region*, one host file shared by all VMs, attached read-only.
//!
//! Both start with a [`RegionPrefix`]. The guest tells them apart by its `magic`
//! and refuses any device whose magic or version it does not know.

use core::mem::size_of;

use crate::wire::wire_struct;

// The guest module, which compiles this file too, names only some of these.
#[allow(unused_imports)]
pub use crate::layout::{LayoutError, RingLayout, RingSizes};

/// Builds a little-endian `u64` magic from eight ASCII bytes.
const fn magic(bytes: &[u8; 8]) -> u64 {
    u64::from_le_bytes(*bytes)
}

/// Magic of a ring region: the ASCII bytes `VMDDRING` at offset 0.
pub const RING_MAGIC: u64 = magic(b"VMDDRING");
/// Magic of a pool region: the ASCII bytes `VMDDPOOL` at offset 0.
pub const POOL_MAGIC: u64 = magic(b"VMDDPOOL");
/// Version of the ring region layout this file describes.
///
/// Version 2 is the first with the full ring header ([`RingHeader`]) and the
/// submission, completion and event rings behind it.
pub const RING_VERSION: u32 = 2;
/// Version of the pool region layout this file describes.
pub const POOL_VERSION: u32 = 1;

wire_struct! {
    /// The first 32 bytes of every shared region.
    ///
    /// Writer: the host, once, when it creates the region (`generation` again when the
    /// host side restarts). The guest only reads it. The host must treat these bytes
    /// in a ring region as guest-writable, i.e. never trust what it reads back.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct RegionPrefix: 32, offsets prefix_off {
        /// [`RING_MAGIC`] or [`POOL_MAGIC`].
        pub magic: u64 = MAGIC @ 0,
        /// Layout version of the region kind ([`RING_VERSION`] or [`POOL_VERSION`]).
        pub version: u32 = VERSION @ 8,
        /// Size in bytes of the full header of this region kind (prefix included).
        pub header_size: u32 = HEADER_SIZE @ 12,
        /// Size in bytes of the whole region as the host created it.
        pub region_size: u64 = REGION_SIZE @ 16,
        /// Changes every time the host side (re)initialises the region.
        pub generation: u64 = GENERATION @ 24,
    }
}

/// What a region is, as told by its prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionKind {
    /// A per-VM ring region.
    Ring,
    /// The shared, read-only pool region.
    Pool,
}

/// Why a region prefix was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrefixError {
    /// The device is smaller than a prefix.
    TooSmall,
    /// The magic is neither [`RING_MAGIC`] nor [`POOL_MAGIC`].
    UnknownMagic(u64),
    /// The magic is known but the version is not.
    UnknownVersion(RegionKind, u32),
    /// `header_size` is smaller than a prefix or larger than the region.
    BadHeaderSize(u32),
    /// `region_size` is zero or larger than the device.
    BadRegionSize(u64),
}

impl core::fmt::Display for RegionKind {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            RegionKind::Ring => "ring",
            RegionKind::Pool => "pool",
        })
    }
}

/// Says what was found and what was expected, for an operator: the magic as
/// the ASCII it spells when it spells one, in hex otherwise.
impl core::fmt::Display for PrefixError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            PrefixError::TooSmall => f.write_str("too small to hold a region header"),
            PrefixError::UnknownMagic(m) => {
                let b = m.to_le_bytes();
                if b.iter().all(|c| c.is_ascii_graphic() || *c == b' ') {
                    f.write_str("its magic is \"")?;
                    for c in b {
                        write!(f, "{}", c as char)?;
                    }
                    f.write_str("\"")?;
                } else {
                    write!(f, "its magic is {m:#018x}")?;
                }
                f.write_str(", not a vmdedup ring (VMDDRING) or pool (VMDDPOOL)")
            }
            PrefixError::UnknownVersion(kind, v) => {
                let known = match kind {
                    RegionKind::Ring => RING_VERSION,
                    RegionKind::Pool => POOL_VERSION,
                };
                write!(
                    f,
                    "a {kind} region of version {v}, this build knows version {known}"
                )
            }
            PrefixError::BadHeaderSize(n) => {
                write!(f, "its header size {n} is outside the region")
            }
            PrefixError::BadRegionSize(n) => write!(
                f,
                "its region size {n} is zero or larger than the file or device"
            ),
        }
    }
}

impl RegionPrefix {
    /// Classifies and validates a prefix copied out of a device of `device_len`
    /// bytes. The prefix must already be a private copy: validation of shared
    /// memory in place would be open to a concurrent writer.
    pub fn validate(&self, device_len: u64) -> Result<RegionKind, PrefixError> {
        if device_len < size_of::<RegionPrefix>() as u64 {
            return Err(PrefixError::TooSmall);
        }
        let kind = match self.magic {
            RING_MAGIC => RegionKind::Ring,
            POOL_MAGIC => RegionKind::Pool,
            other => return Err(PrefixError::UnknownMagic(other)),
        };
        let known = match kind {
            RegionKind::Ring => RING_VERSION,
            RegionKind::Pool => POOL_VERSION,
        };
        if self.version != known {
            return Err(PrefixError::UnknownVersion(kind, self.version));
        }
        if self.region_size == 0 || self.region_size > device_len {
            return Err(PrefixError::BadRegionSize(self.region_size));
        }
        if (self.header_size as usize) < size_of::<RegionPrefix>()
            || self.header_size as u64 > self.region_size
        {
            return Err(PrefixError::BadHeaderSize(self.header_size));
        }
        Ok(kind)
    }
}

// ---------------------------------------------------------------------------
// Ring region (RING_VERSION 2)
// ---------------------------------------------------------------------------
//
// A ring region is laid out as
//
//   [0, RING_HEADER_SIZE)      RingHeader: prefix, config, one cache line per index
//   [sq.offset, ..)            submission ring: sq.entries * SQE_SIZE bytes
//   [cq.offset, ..)            completion ring: cq.entries * CQE_SIZE bytes
//   [eq.offset, ..)            event ring:      eq.entries * EQE_SIZE bytes
//   [slots.offset, ..)         path slots:      slots.count * PATH_SLOT_SIZE bytes
//
// The host chooses the offsets and capacities when it creates the region and
// writes them into the header; the guest validates them with
// [`RingLayout::validate`] before it uses them. The host never reads them back:
// it keeps its own copy, because the guest can write the header.
//
// # The three rings
// Every ring is single-producer single-consumer with free-running `u32` indices:
// `head` is written only by the consumer, `tail` only by the producer, entry `i`
// lives in slot `i & (entries - 1)`, the ring is empty when `head == tail` and
// full when `tail - head == entries` (wrapping arithmetic). Each index sits alone
// on its own 64-byte cache line.
//
// | ring       | producer (writes tail, entries) | consumer (writes head) |
// |------------|---------------------------------|------------------------|
// | submission | guest                           | host poller            |
// | completion | host poller                     | guest                  |
// | event      | host                            | guest                  |
//
// # Memory ordering
// - Producer: write the entries, then store `tail` with Release.
// - Consumer: load `tail` with Acquire, copy the entries out, then store `head`
//   with Release (so the producer cannot overwrite a slot still being read).
// - Producer, before writing slots: load `head` with Acquire.
// - A reader checks `tail - head <= entries` on every index it loads; a value
//   outside that range means a corrupt ring and nothing is read.
//
// # Poller wake-up (NEED_WAKEUP)
// Host poller, before it parks:
//   1. set [`HOST_FLAG_NEED_WAKEUP`] in `host_flags` (SeqCst RMW),
//   2. full fence (SeqCst),
//   3. re-load `sq_tail` (and `cq_head`/`eq_head` if it was blocked on them);
//      if there is work, clear the flag and go on polling, else sleep until a
//      doorbell. After waking it clears the flag.
// Guest, after every store to `sq_tail`, `cq_head` or `eq_head`:
//   1. full fence (SeqCst) (`smp_mb()` in the kernel),
//   2. load `host_flags`; if NEED_WAKEUP is set, ring the doorbell.
//   After a `cq_head` store the guest may skip the doorbell when `sq_head`
//   (loaded after the fence) equals its own `sq_tail`: the poller can only be
//   waiting for completion room while hints wait in the submission ring.
// The two fences order "store index; load flag" against "store flag; load
// index", so at least one side sees the other: no lost wake-up. While the
// poller is awake the flag is clear and the guest rings no doorbell at all.
//
// # Guest wake-up (WAITING): the same handshake the other way round
// Guest, before it sleeps with no timer (it waits for a late answer, or has
// nothing to do but events may come):
//   1. set [`GUEST_FLAG_WAITING`] in `guest_flags` (SeqCst RMW),
//   2. full fence (SeqCst),
//   3. re-load `cq_tail`, `eq_tail`, `host_flags` and the prefix's
//      generation; if there is an answer, an event, a new host flag or
//      another ring, clear the flag and go on, else sleep until the ring's
//      interrupt. After waking it clears the flag (Relaxed).
// Host, after every store to `cq_tail` or `eq_tail`:
//   1. full fence (SeqCst),
//   2. load `guest_flags`; if WAITING is set, raise the guest's ring vector.
// Host, after setting [`HOST_FLAG_CUT_OFF`], and once after writing a new
//   ring over an old one (until the guest attaches it): raise the vector
//   whatever `guest_flags` says. Writing a ring zeroes `guest_flags`, so a
//   guest that slept over the old ring has no WAITING left to be seen by.
// It only sleeps so while the host says it can raise that vector
// ([`HOST_FLAG_INTERRUPTS`]); otherwise it keeps its periodic timer.
//
// # Host-side flow control
// The host consumes a submission only when the completion ring has room for its
// answer, so it never overwrites an answer the guest has not consumed. A guest
// that keeps `cq.entries >= sq.entries` answers outstanding never stalls.
//
// # Path slots
// A hint whose path does not fit in the entry's inline area sets
// [`HINT_FLAG_PATH_IN_SLOT`] and names a slot in `path_slot`. The guest owns
// slot allocation: a slot is busy from the submission until the guest has read
// the answer for that request; the host copies the path out before it answers.
// A path longer than [`MAX_PATH_LEN`] is answered with
// [`AnswerStatus::PathTooLong`], never truncated.
//
// Path slots of requests the guest gave up on (no answer in time) are
// reclaimed once the host's `sq_head` has passed their entry: the host copies
// a slot's path out before its Release store of `sq_head` that frees the
// entry, and never reads the slot again; a guest that loads `sq_head` with
// Acquire and finds it past the entry may write the slot.
//
// # Cut-off
// A VM that does not acknowledge a revocation in time is cut off. The host
// says so with [`HOST_FLAG_CUT_OFF`] in `host_flags`, not with an event: a
// stuck guest's event ring is full, and the notice must arrive. The guest
// checks the flag on every events poll, zaps every held map, then sets
// [`GUEST_FLAG_CUT_OFF_ACK`] in `guest_flags`; until then the host keeps the
// frames charged to the VM. The cut-off lasts until the host writes a new
// ring (new generation).
//
// # Attaching and restarting
// The host writes every header field and the indices first, then the prefix
// (magic last). The guest validates prefix and layout, then starts from the
// current index values (`tail = sq_tail`, `cq_head`, `eq_head` as found) and
// ignores answers whose request id it does not know. The host bumps the prefix
// `generation` whenever it re-initialises the region; a guest that sees it
// change drops every file map it got from the old generation before it
// attaches the new one, then writes `guest_features` and `guest_attached`.
// A guest that found the indices corrupt stops using the ring until the
// generation changes, then attaches again. A host that restarts takes a
// valid region over in place instead (same generation, indices as found,
// nothing rewritten) and sends [`NOTICE_REANNOUNCE`]: the guest keeps its
// maps and tells the host which ones it holds.

/// Size in bytes of the ring region header ([`RingHeader`]).
pub const RING_HEADER_SIZE: u32 = 1024;
/// Cache line size the layout is built around.
pub const CACHE_LINE: u32 = 64;
/// Largest number of entries in one ring.
pub const MAX_RING_ENTRIES: u32 = 1 << 15;
/// Largest number of path slots.
pub const MAX_PATH_SLOTS: u32 = 1 << 12;
/// Size in bytes of one path slot.
pub const PATH_SLOT_SIZE: u32 = 4096;
/// Longest path (in bytes, without terminator) a hint may carry.
pub const MAX_PATH_LEN: u32 = PATH_SLOT_SIZE;

/// Feature bit: the host answers hints ([`OP_HINT`]). Always offered.
pub const FEATURE_HINTS: u64 = 1 << 0;
/// Feature bit: the region has path slots for long paths.
pub const FEATURE_PATH_SLOTS: u64 = 1 << 1;
/// Feature bit: the host sends events (revocations, notices) on the event ring.
pub const FEATURE_EVENTS: u64 = 1 << 2;
/// Feature bit: the poller parks and honours [`HOST_FLAG_NEED_WAKEUP`].
pub const FEATURE_NEED_WAKEUP: u64 = 1 << 3;
/// Every feature bit this version of the ABI knows.
pub const FEATURES_KNOWN: u64 =
    FEATURE_HINTS | FEATURE_PATH_SLOTS | FEATURE_EVENTS | FEATURE_NEED_WAKEUP;

/// Option bit (`host_options`): the host may tell a guest when a file it
/// answered [`AnswerStatus::Loading`] for is in the pool ([`NOTICE_LOADED`]),
/// for hints that ask with [`HINT_FLAG_NOTIFY_LOADED`].
pub const OPTION_LOADED_NOTICE: u64 = 1 << 0;
/// Option bit (`host_options`): the host honours [`HINT_FLAG_POOL_ONLY`].
pub const OPTION_POOL_ONLY: u64 = 1 << 1;
/// Every option bit this version of the ABI knows. Unlike a feature bit, an
/// option a guest does not know is ignored (an older guest reads these
/// bytes as reserved), so a newer host can offer one to every guest.
pub const OPTIONS_KNOWN: u64 = OPTION_LOADED_NOTICE | OPTION_POOL_ONLY;

/// `host_flags` bit: the poller is (about to be) asleep; the guest must ring
/// the doorbell after publishing work.
pub const HOST_FLAG_NEED_WAKEUP: u32 = 1 << 0;
/// `host_flags` bit: the host had to drop events because the event ring stayed
/// full; the guest must treat every file map as revoked. Sticky (never
/// cleared while the ring lives), so every loss, the first included, is also
/// told with a [`NOTICE_EVENTS_LOST`] event ahead of the queued ones.
pub const HOST_FLAG_EVENTS_LOST: u32 = 1 << 1;
/// `host_flags` bit: the host is shutting down; new hints are answered with
/// [`AnswerStatus::HostRestarting`].
pub const HOST_FLAG_STOPPING: u32 = 1 << 2;
/// `host_flags` bit: this VM is cut off from the pool (it did not
/// acknowledge a revocation in time). Set with Release by the host, never
/// cleared while the ring lives (a reinstated VM gets a new ring with a new
/// generation). Unlike an event it cannot be lost to a full event ring: the
/// guest loads `host_flags` (Acquire) on every events poll, whatever the
/// event ring holds. On seeing it the guest zaps every pool mapping of every
/// map it holds, sends no release (the host keeps them charged), serves from
/// lower and sends no more hints; then it sets [`GUEST_FLAG_CUT_OFF_ACK`].
pub const HOST_FLAG_CUT_OFF: u32 = 1 << 3;
/// `host_flags` bit: the host raises the guest's ring interrupt when it sees
/// [`GUEST_FLAG_WAITING`] (its `ivshmem-doorbell` peer is connected). Set
/// and cleared by the host (Release RMWs) as the connection comes and goes;
/// a guest loads it (Acquire) before it sleeps without a timer, and keeps a
/// timer while it is clear. A host that takes a ring over after a restart
/// clears it until its own peer connects.
pub const HOST_FLAG_INTERRUPTS: u32 = 1 << 4;

/// `guest_flags` bit: the guest has applied [`HOST_FLAG_CUT_OFF`]: no page
/// table of this VM maps a pool frame any more. Set with Release (a
/// `fetch_or`) only after the zap, so a host that loads it with Acquire may
/// free the frames the VM still had charged. Never cleared while the ring
/// lives.
pub const GUEST_FLAG_CUT_OFF_ACK: u32 = 1 << 0;
/// `guest_flags` bit: the guest rings a doorbell (an `ivshmem-doorbell`
/// device's Doorbell register, which reaches the agent's eventfd) whenever
/// the NEED_WAKEUP handshake asks for one, attachment and cut-off
/// acknowledgement included. Set with Release (a `fetch_or`) once the guest
/// has found the register, before it stores `guest_attached`; cleared
/// (`fetch_and`, Release) if it loses the device. A host poller parks with
/// its long safety timeout only while every ring it serves has the bit set
/// *and* a connected doorbell; a ring without it is looked at every short
/// park timeout, as with `ivshmem-plain`. The host only reads it (Relaxed: it
/// chooses a timeout, nothing is read through it).
pub const GUEST_FLAG_DOORBELL: u32 = 1 << 1;
/// `guest_flags` bit: the guest is (about to be) asleep waiting for the
/// host: the host must raise the guest's ring interrupt after it publishes
/// an answer or an event, or sets [`HOST_FLAG_CUT_OFF`]. Set SeqCst and
/// cleared Relaxed by the guest (the "Guest wake-up" handshake above); the
/// host loads it after a full fence.
pub const GUEST_FLAG_WAITING: u32 = 1 << 2;

/// The host agent's peer id on a ring's `ivshmem-doorbell` device: a guest
/// rings the host by writing `(DOORBELL_HOST_PEER << 16) | vector` to the
/// device's Doorbell register. It is 0 because QEMU reads the server's
/// version message (0) as "peer 0 left" when it reconnects.
pub const DOORBELL_HOST_PEER: u16 = 0;
/// The guest's peer id on that device (what its IVPosition register reads).
pub const DOORBELL_GUEST_PEER: u16 = 1;
/// The interrupt vector of the ring, both ways: the host's for new work or
/// room, the guest's for answers and events it waits for.
pub const DOORBELL_RING_VECTOR: u16 = 0;
/// Interrupt vectors of a ring's `ivshmem-doorbell` device.
pub const DOORBELL_VECTORS: u16 = 1;

wire_struct! {
    /// Where one ring lives in the region, as written in the header.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct RingArea: 16, offsets area_off {
        /// Byte offset of slot 0 from the start of the region (64-byte aligned).
        pub offset: u32 = OFFSET @ 0,
        /// Capacity in entries: a power of two in `1..=MAX_RING_ENTRIES`.
        pub entries: u32 = ENTRIES @ 4,
        /// Size of one entry in bytes (must equal the ABI constant for that ring).
        pub entry_size: u32 = ENTRY_SIZE @ 8,
        /// Zero.
        pub reserved: u32 = RESERVED @ 12,
    }
}

wire_struct! {
    /// Where the path slots live, as written in the header.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct SlotArea: 16, offsets slot_area_off {
        /// Byte offset of slot 0 from the start of the region (64-byte aligned).
        pub offset: u32 = OFFSET @ 0,
        /// Number of slots (may be zero: then [`FEATURE_PATH_SLOTS`] is off).
        pub count: u32 = COUNT @ 4,
        /// Size of one slot in bytes ([`PATH_SLOT_SIZE`]).
        pub slot_size: u32 = SLOT_SIZE @ 8,
        /// Zero.
        pub reserved: u32 = RESERVED @ 12,
    }
}

wire_struct! {
    /// One free-running ring index alone on its cache line.
    #[repr(align(64))]
    #[derive(Clone, Copy, Debug)]
    pub struct IndexLine: 64, offsets index_line_off {
        /// The index; accessed only atomically (see the ring region comment).
        pub value: u32 = VALUE @ 0,
        /// Padding up to the cache line.
        pub pad: [u8; 60] = PAD @ 4,
    }
}

wire_struct! {
    /// A flags word alone on its cache line, with room for more state.
    #[repr(align(64))]
    #[derive(Clone, Copy, Debug)]
    pub struct FlagsLine: 64, offsets flags_line_off {
        /// The flags; accessed only atomically.
        pub flags: u32 = FLAGS @ 0,
        /// Zero; reserved.
        pub reserved: [u8; 60] = RESERVED @ 4,
    }
}

wire_struct! {
    /// The header at offset 0 of a ring region.
    ///
    /// Neither side makes a reference to it in shared memory. They access the
    /// fields at the offsets in [`ring_off`], the indices and flags atomically,
    /// the rest by copying bytes out. Index writers follow the ring table in
    /// the ring region comment; every index store is Release, every load of the
    /// other side's index Acquire.
    #[repr(align(64))]
    #[derive(Clone, Copy, Debug)]
    pub struct RingHeader: RING_HEADER_SIZE as usize, offsets ring_off {
        /// Writer: host at init. `header_size` is [`RING_HEADER_SIZE`].
        pub prefix: RegionPrefix = PREFIX @ 0,
        /// Writer: host at init. Feature bits the host offers (`FEATURE_*`).
        pub host_features: u64 = HOST_FEATURES @ 32,
        /// Writer: guest after attach. Feature bits the guest uses (informational).
        pub guest_features: u64 = GUEST_FEATURES @ 40,
        /// Writer: host at init. The submission ring (guest -> host hints).
        pub sq: RingArea = SQ_AREA @ 48,
        /// Writer: host at init. The completion ring (host -> guest answers).
        pub cq: RingArea = CQ_AREA @ 64,
        /// Writer: host at init. The event ring (host -> guest events).
        pub eq: RingArea = EQ_AREA @ 80,
        /// Writer: host at init. The path slot area.
        pub slots: SlotArea = SLOT_AREA @ 96,
        /// Writer: host at init. Option bits the host offers (`OPTION_*`);
        /// a guest ignores those it does not know.
        pub host_options: u64 = HOST_OPTIONS @ 112,
        /// Zero; reserved for configuration of later versions.
        pub reserved_config: [u8; 8] = RESERVED_CONFIG @ 120,
        /// Writer: host (consumer), Release. Submission ring head.
        pub sq_head: IndexLine = SQ_HEAD @ 128,
        /// Writer: guest (producer), Release. Submission ring tail.
        pub sq_tail: IndexLine = SQ_TAIL @ 192,
        /// Writer: guest (consumer), Release. Completion ring head.
        pub cq_head: IndexLine = CQ_HEAD @ 256,
        /// Writer: host (producer), Release. Completion ring tail.
        pub cq_tail: IndexLine = CQ_TAIL @ 320,
        /// Writer: guest (consumer), Release. Event ring head.
        pub eq_head: IndexLine = EQ_HEAD @ 384,
        /// Writer: host (producer), Release. Event ring tail.
        pub eq_tail: IndexLine = EQ_TAIL @ 448,
        /// Writer: host, atomic read-modify-writes only (`HOST_FLAG_*`):
        /// NEED_WAKEUP set SeqCst and cleared Relaxed (the handshake in the
        /// ring region comment), EVENTS_LOST and CUT_OFF set Release (the
        /// guest loads the word with Acquire).
        pub host_flags: FlagsLine = HOST_FLAGS @ 512,
        /// Writer: guest, atomic read-modify-writes only (`GUEST_FLAG_*`):
        /// CUT_OFF_ACK set Release after the guest's zap; the host loads the
        /// word with Acquire. DOORBELL set/cleared Release, read Relaxed by
        /// the host. WAITING set SeqCst, cleared Relaxed, read by the host
        /// after a full fence. Other bits zero; reserved.
        pub guest_flags: FlagsLine = GUEST_FLAGS @ 576,
        /// Writer: guest, Release, once after attach (after it dropped every
        /// map of an older generation and wrote `guest_features`): the low
        /// 32 bits of the `generation` it attached. The host, loading it
        /// with Acquire, knows the guest uses this ring (a reconnection);
        /// a stale guest still on an older generation cannot write the
        /// current value.
        pub guest_attached: IndexLine = GUEST_ATTACHED @ 640,
        /// Zero; reserved.
        pub reserved: [u8; 320] = RESERVED @ 704,
    }
    also {
        /// End of the configuration bytes (`[HOST_FEATURES, CONFIG_END)` is
        /// [`super::RingLayout`]).
        pub const CONFIG_END: usize = SQ_HEAD;
    }
}

const _: () = {
    assert!(ring_off::SQ_HEAD & (CACHE_LINE as usize - 1) == 0);
    assert!(ring_off::SQ_TAIL - ring_off::SQ_HEAD >= CACHE_LINE as usize);
};

// ---------------------------------------------------------------------------
// Submission entries (guest -> host)
// ---------------------------------------------------------------------------

/// Answer flag: this answers a map operation ([`OP_ACK_REVOKE`],
/// [`OP_RELEASE`]); `status` is [`AnswerStatus::Hit`] when it was taken,
/// `file_map_id` echoes the map. Nothing else in the answer is meaningful.
pub const ANSWER_FLAG_MAP_OP: u16 = 1 << 0;
/// Answer flag: on an [`AnswerStatus::Loading`] answer to a hint that asked
/// with [`HINT_FLAG_NOTIFY_LOADED`], the host recorded the request and a
/// [`NOTICE_LOADED`] follows if the load succeeds (without it, none will:
/// no load of the file was queued, e.g. the VM has its bound of loads).
pub const ANSWER_FLAG_NOTICE_COMING: u16 = 1 << 1;

/// Size of one submission ring slot: a [`SubmissionEntry`] followed by
/// [`SQE_INLINE_PATH_MAX`] bytes of inline path.
pub const SQE_SIZE: u32 = 256;
/// Offset of the inline path inside a submission slot.
pub const SQE_INLINE_PATH_OFF: u32 = 96;
/// Longest path stored inline in a submission slot.
pub const SQE_INLINE_PATH_MAX: u32 = SQE_SIZE - SQE_INLINE_PATH_OFF;

/// Opcode: a hint (the guest opened a file; answer with a file map or a miss).
pub const OP_HINT: u16 = 1;
/// Opcode: the guest has stopped using file map `reserved[0]` after an
/// [`EVENT_REVOKE`] for it (every mapping of its frames is gone). Only after
/// every holder acknowledged does the host reuse the map's frames.
pub const OP_ACK_REVOKE: u16 = 2;
/// Opcode: the guest no longer holds file map `reserved[0]` (the inode went
/// away, or the file fell back to the lower file for good).
pub const OP_RELEASE: u16 = 3;
/// Opcode: the guest holds file map `reserved[0]` (one per map it holds),
/// sent after a [`NOTICE_REANNOUNCE`]: a restarted host that adopted the pool
/// learns from these which VM may map which adopted frames.
pub const OP_HOLD: u16 = 4;
/// Opcode: the guest has re-announced every map it holds (the [`OP_HOLD`]s
/// before this one); `reserved[0]` echoes the notice's `file_map_id` token.
pub const OP_HOLDS_DONE: u16 = 5;
// Opcodes 6.. are reserved.
//
// Map operations ([`OP_ACK_REVOKE`], [`OP_RELEASE`], [`OP_HOLD`],
// [`OP_HOLDS_DONE`]) carry no path: path_len,
// flags, path_slot and the identity fields are zero, `reserved[0]` is the file
// map id (never 0) and `reserved[1..]` are zero. Like a hint, each gets exactly
// one answer, with [`ANSWER_FLAG_MAP_OP`] set, so ring accounting stays one
// answer per entry and a guest can drop these answers without a lookup.

/// Hint flag: the path is in path slot `path_slot`, not inline.
pub const HINT_FLAG_PATH_IN_SLOT: u32 = 1 << 0;
/// Hint flag: `reserved` holds the guest copy's content fingerprint
/// ([`FINGERPRINT_LEN`] bytes, see [`SubmissionEntry::fingerprint`]). Without
/// it `reserved` is zero.
pub const HINT_FLAG_FINGERPRINT: u32 = 1 << 1;
/// Hint flag: if the answer is [`AnswerStatus::Loading`], the guest would
/// like a [`NOTICE_LOADED`] naming this hint's `request_id` once the file is
/// in the pool. Set only when the host offers [`OPTION_LOADED_NOTICE`].
pub const HINT_FLAG_NOTIFY_LOADED: u32 = 1 << 2;
/// Hint flag: answer from what the pool holds now. A file that is not
/// there is a miss ([`AnswerStatus::Loading`] where a load would have been
/// queued) with no load queued for it, and no notice. The guest sets it on
/// the hint a [`NOTICE_LOADED`] asks for: if the file was evicted again
/// before that hint came, the pool has no room for it, and loading it once
/// more would only evict another file. Set only when the host offers
/// [`OPTION_POOL_ONLY`].
pub const HINT_FLAG_POOL_ONLY: u32 = 1 << 3;
/// Every hint flag this version knows; others must be zero.
pub const HINT_FLAGS_KNOWN: u32 =
    HINT_FLAG_PATH_IN_SLOT | HINT_FLAG_FINGERPRINT | HINT_FLAG_NOTIFY_LOADED | HINT_FLAG_POOL_ONLY;

/// Length of a file's content fingerprint: the first 24 bytes of the BLAKE3
/// hash of the whole file (192 bits: no accidental collision, and finding
/// one on purpose is as hard as breaking BLAKE3).
pub const FINGERPRINT_LEN: usize = 24;
/// A file's content fingerprint ([`FINGERPRINT_LEN`] bytes).
pub type Fingerprint = [u8; FINGERPRINT_LEN];
/// The extended attribute that holds a file's fingerprint in a guest's lower
/// image, written when the image is built (`vmdedup stamp`): the
/// fingerprint as [`FINGERPRINT_TEXT_LEN`] lowercase hex digits (text, so
/// `getfattr` shows it and `debugfs ea_set` can write it).
pub const FINGERPRINT_XATTR: &str = "user.vmdedup.b3";
/// Length of the fingerprint attribute's value.
pub const FINGERPRINT_TEXT_LEN: usize = 2 * FINGERPRINT_LEN;

/// Decodes a fingerprint attribute's value: exactly
/// [`FINGERPRINT_TEXT_LEN`] hex digits (either case). Anything else is
/// `None` (the guest then sends no fingerprint).
pub fn parse_fingerprint_text(text: &[u8]) -> Option<Fingerprint> {
    if text.len() != FINGERPRINT_TEXT_LEN {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; FINGERPRINT_LEN];
    for (i, b) in out.iter_mut().enumerate() {
        *b = (digit(*text.get(2 * i)?)? << 4) | digit(*text.get(2 * i + 1)?)?;
    }
    Some(out)
}

/// Encodes a fingerprint as the attribute's value (lowercase hex).
pub fn fingerprint_text(fp: &Fingerprint) -> [u8; FINGERPRINT_TEXT_LEN] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; FINGERPRINT_TEXT_LEN];
    for (i, b) in fp.iter().enumerate() {
        out[2 * i] = HEX[(b >> 4) as usize];
        out[2 * i + 1] = HEX[(b & 15) as usize];
    }
    out
}

wire_struct! {
    /// The fixed part of a submission slot: one hint or map operation.
    ///
    /// Writer: guest (producer), before its Release store of `sq_tail`. The host
    /// copies it out with volatile loads after its Acquire load of `sq_tail` and
    /// then validates the copy ([`SubmissionEntry::check`]).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct SubmissionEntry: SQE_INLINE_PATH_OFF as usize, offsets sqe_off {
        /// Guest-chosen id, echoed in the answer.
        pub request_id: u64 = REQUEST_ID @ 0,
        /// [`OP_HINT`], [`OP_ACK_REVOKE`] or [`OP_RELEASE`].
        pub opcode: u16 = OPCODE @ 8,
        /// Length of the path in bytes, no terminator.
        pub path_len: u16 = PATH_LEN @ 10,
        /// Which namespace the path is relative to.
        pub namespace_id: u32 = NAMESPACE_ID @ 12,
        /// `HINT_FLAG_*`.
        pub flags: u32 = FLAGS @ 16,
        /// Path slot index when [`HINT_FLAG_PATH_IN_SLOT`] is set, else zero.
        pub path_slot: u32 = PATH_SLOT @ 20,
        /// Identity of the guest's copy: size in bytes.
        pub file_size: u64 = FILE_SIZE @ 24,
        /// Identity: modification time, ns since the epoch.
        pub mtime_ns: i64 = MTIME_NS @ 32,
        /// Identity: inode change time, ns since the epoch (0 if unknown).
        pub ctime_ns: i64 = CTIME_NS @ 40,
        /// Identity: inode number in the guest's lower file system (0 if unknown).
        pub inode: u64 = INODE @ 48,
        /// First page wanted (page size 4096).
        pub first_page: u64 = FIRST_PAGE @ 56,
        /// Number of pages wanted; 0 means to the end of the file.
        pub page_count: u32 = PAGE_COUNT @ 64,
        /// Zero; reserved.
        pub reserved0: u32 = RESERVED0 @ 68,
        /// Map operations: `reserved[0]` is the file map id. Hints with
        /// [`HINT_FLAG_FINGERPRINT`]: the content fingerprint, its bytes in
        /// order (`reserved[0]` holds bytes 0..8 little-endian, ...).
        /// Otherwise zero.
        pub reserved: [u64; 3] = RESERVED @ 72,
    }
}

const _: () = {
    assert!(SQE_SIZE.is_power_of_two());
    assert!(SQE_INLINE_PATH_OFF & 7 == 0 && SQE_INLINE_PATH_MAX & 7 == 0);
};

/// Where a checked hint's path is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathLocation {
    /// In the entry's inline area, `len` bytes.
    Inline {
        /// Path length.
        len: u32,
    },
    /// In path slot `index`, `len` bytes.
    Slot {
        /// Slot index (checked against the slot count).
        index: u32,
        /// Path length.
        len: u32,
    },
}

impl PathLocation {
    /// Length of the path in bytes.
    pub fn len(&self) -> u32 {
        match *self {
            PathLocation::Inline { len } | PathLocation::Slot { len, .. } => len,
        }
    }

    /// Whether the path is empty (never true for a checked entry).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a submission entry was refused before its path was looked at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryError {
    /// The opcode is unknown.
    UnknownOpcode(u16),
    /// Unknown flag bits or non-zero reserved fields.
    Reserved,
    /// The path is empty.
    EmptyPath,
    /// The path is longer than [`MAX_PATH_LEN`].
    PathTooLong(u32),
    /// The path does not fit inline and names no valid slot.
    BadPathSlot(u32),
}

impl EntryError {
    /// The answer status for this error.
    pub fn status(&self) -> AnswerStatus {
        match self {
            EntryError::UnknownOpcode(_) => AnswerStatus::Unsupported,
            EntryError::PathTooLong(_) => AnswerStatus::PathTooLong,
            EntryError::Reserved | EntryError::EmptyPath | EntryError::BadPathSlot(_) => {
                AnswerStatus::BadRequest
            }
        }
    }
}

impl SubmissionEntry {
    /// A map operation ([`OP_ACK_REVOKE`] or [`OP_RELEASE`]) for `file_map_id`.
    pub fn map_op(request_id: u64, opcode: u16, file_map_id: u64) -> SubmissionEntry {
        SubmissionEntry {
            request_id,
            opcode,
            reserved: [file_map_id, 0, 0],
            ..SubmissionEntry::default()
        }
    }

    /// Puts `fp` into a hint (sets [`HINT_FLAG_FINGERPRINT`]).
    pub fn set_fingerprint(&mut self, fp: &Fingerprint) {
        let mut words = [0u64; 3];
        for (i, &b) in fp.iter().enumerate() {
            words[i / 8] |= u64::from(b) << (8 * (i % 8));
        }
        self.reserved = words;
        self.flags |= HINT_FLAG_FINGERPRINT;
    }

    /// The content fingerprint a hint carries, if [`HINT_FLAG_FINGERPRINT`]
    /// is set.
    pub fn fingerprint(&self) -> Option<Fingerprint> {
        if self.flags & HINT_FLAG_FINGERPRINT == 0 {
            return None;
        }
        let mut fp = [0u8; FINGERPRINT_LEN];
        for (i, b) in fp.iter_mut().enumerate() {
            *b = (self.reserved[i / 8] >> (8 * (i % 8))) as u8;
        }
        Some(fp)
    }

    /// Validates a copied-out map operation; returns its file map id.
    pub fn check_map_op(&self) -> Result<u64, EntryError> {
        if !matches!(
            self.opcode,
            OP_ACK_REVOKE | OP_RELEASE | OP_HOLD | OP_HOLDS_DONE
        ) {
            return Err(EntryError::UnknownOpcode(self.opcode));
        }
        let [map_id, r1, r2] = self.reserved;
        if self.path_len != 0
            || self.flags != 0
            || self.path_slot != 0
            || self.namespace_id != 0
            || self.file_size != 0
            || self.mtime_ns != 0
            || self.ctime_ns != 0
            || self.inode != 0
            || self.first_page != 0
            || self.page_count != 0
            || self.reserved0 != 0
            || r1 != 0
            || r2 != 0
            || map_id == 0
        {
            return Err(EntryError::Reserved);
        }
        Ok(map_id)
    }

    /// Checks the structure of a copied-out entry in a region with
    /// `slot_count` path slots and says where its path is. The path bytes
    /// themselves are checked by [`check_path`] once copied out.
    pub fn check(&self, slot_count: u32) -> Result<PathLocation, EntryError> {
        if self.opcode != OP_HINT {
            return Err(EntryError::UnknownOpcode(self.opcode));
        }
        if self.flags & !HINT_FLAGS_KNOWN != 0
            || self.reserved0 != 0
            || (self.flags & HINT_FLAG_FINGERPRINT == 0 && self.reserved != [0; 3])
            || (self.flags & HINT_FLAG_PATH_IN_SLOT == 0 && self.path_slot != 0)
        {
            return Err(EntryError::Reserved);
        }
        let len = self.path_len as u32;
        if len == 0 {
            return Err(EntryError::EmptyPath);
        }
        if len > MAX_PATH_LEN {
            return Err(EntryError::PathTooLong(len));
        }
        if self.flags & HINT_FLAG_PATH_IN_SLOT != 0 {
            if self.path_slot >= slot_count {
                return Err(EntryError::BadPathSlot(self.path_slot));
            }
            Ok(PathLocation::Slot {
                index: self.path_slot,
                len,
            })
        } else if len > SQE_INLINE_PATH_MAX {
            Err(EntryError::BadPathSlot(self.path_slot))
        } else {
            Ok(PathLocation::Inline { len })
        }
    }
}

/// Why a path was refused (copied out, before any file system lookup).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathError {
    /// Empty, or longer than [`MAX_PATH_LEN`].
    Length,
    /// Contains a NUL byte.
    Nul,
    /// Starts with `/`: paths are relative to their namespace.
    Absolute,
    /// Has a `..` component.
    DotDot,
}

/// Cheap structural check of a namespace-relative path: non-empty, at most
/// [`MAX_PATH_LEN`] bytes, no NUL, not absolute, no `..` component. The host's
/// resolver still confines the lookup to the namespace root; this only
/// refuses what can never be valid.
// The bitwise `|` and `&` on booleans keep the fast path free of branches.
#[allow(clippy::needless_bitwise_bool)]
pub fn check_path(path: &[u8]) -> Result<(), PathError> {
    if path.is_empty() || path.len() > MAX_PATH_LEN as usize {
        return Err(PathError::Length);
    }
    if path.first() == Some(&b'/') {
        return Err(PathError::Absolute);
    }
    // Fast path (this runs for every hint): branch-free scans for a NUL and
    // for two adjacent dots; almost every real path has neither.
    let nul = path.iter().fold(false, |a, &c| a | (c == 0));
    let dot_dot = path
        .iter()
        .zip(path.iter().skip(1))
        .fold(false, |a, (&x, &y)| a | ((x == b'.') & (y == b'.')));
    if !nul && !dot_dot {
        return Ok(());
    }
    // Exact pass: length of the current component and how many of its bytes
    // are dots.
    let (mut len, mut dots) = (0usize, 0usize);
    for &c in path {
        match c {
            0 => return Err(PathError::Nul),
            b'/' => {
                if len == 2 && dots == 2 {
                    return Err(PathError::DotDot);
                }
                len = 0;
                dots = 0;
            }
            b'.' => {
                len += 1;
                dots += 1;
            }
            _ => len += 1,
        }
    }
    if len == 2 && dots == 2 {
        return Err(PathError::DotDot);
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Completion entries (host -> guest)
// ---------------------------------------------------------------------------

/// Size of one completion entry.
pub const CQE_SIZE: u32 = 64;

/// What the host answers to a hint. Everything but [`AnswerStatus::Hit`] is a
/// miss: the guest reads the lower file as usual.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AnswerStatus {
    /// The file is in the pool: `table_offset` and `page_count` are valid.
    Hit = 0,
    /// Miss: no such file in the namespace.
    NotFound = 1,
    /// Miss: the host's file differs from the guest's copy (size, mtime, ...).
    IdentityMismatch = 2,
    /// Miss: the file is larger than the host serves.
    TooLarge = 3,
    /// Miss, ask again later: the host is loading the file into the pool in
    /// the background, or the pool has no room right now and the host is
    /// making some. A later hint for the same file may hit.
    Loading = 4,
    /// Miss: the entry was malformed (reserved bits, bad slot, bad path).
    BadRequest = 5,
    /// Miss: this VM may not use that namespace (or it does not exist).
    NamespaceNotAllowed = 6,
    /// Miss: the path is longer than [`MAX_PATH_LEN`].
    PathTooLong = 7,
    /// Miss: the host is restarting or shutting down.
    HostRestarting = 8,
    /// Miss: unknown opcode.
    Unsupported = 9,
    /// Miss: the host failed for a reason of its own (I/O error, ...).
    HostError = 10,
}

impl AnswerStatus {
    /// Decodes a status; unknown values are `None` (a guest treats them as a miss).
    pub fn from_u16(v: u16) -> Option<AnswerStatus> {
        Some(match v {
            0 => AnswerStatus::Hit,
            1 => AnswerStatus::NotFound,
            2 => AnswerStatus::IdentityMismatch,
            3 => AnswerStatus::TooLarge,
            4 => AnswerStatus::Loading,
            5 => AnswerStatus::BadRequest,
            6 => AnswerStatus::NamespaceNotAllowed,
            7 => AnswerStatus::PathTooLong,
            8 => AnswerStatus::HostRestarting,
            9 => AnswerStatus::Unsupported,
            10 => AnswerStatus::HostError,
            _ => return None,
        })
    }
}

wire_struct! {
    /// One answer.
    ///
    /// Writer: host (producer), before its Release store of `cq_tail`. The guest
    /// copies it out after its Acquire load of `cq_tail` and validates
    /// `table_offset`/`page_count` against the pool before it uses them.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct CompletionEntry: CQE_SIZE as usize, offsets cqe_off {
        /// The hint's `request_id`.
        pub request_id: u64 = REQUEST_ID @ 0,
        /// An [`AnswerStatus`] as `u16`.
        pub status: u16 = STATUS @ 8,
        /// `ANSWER_FLAG_*`; other bits zero.
        pub flags: u16 = FLAGS @ 10,
        /// On a hit: pages in the file's frame table.
        pub page_count: u32 = PAGE_COUNT @ 12,
        /// On a hit: byte offset of the file's frame table in the pool region.
        pub table_offset: u64 = TABLE_OFFSET @ 16,
        /// On a hit: the host's id of this file map (events name it).
        pub file_map_id: u64 = FILE_MAP_ID @ 24,
        /// On a hit: generation of the file map (a revocation carries it too).
        pub map_generation: u64 = MAP_GENERATION @ 32,
        /// On a hit: the file size the host serves.
        pub file_size: u64 = FILE_SIZE @ 40,
        /// Zero; reserved.
        pub reserved: [u64; 2] = RESERVED @ 48,
    }
}

impl CompletionEntry {
    /// A miss answer for `request_id`.
    pub const fn miss(request_id: u64, status: AnswerStatus) -> CompletionEntry {
        CompletionEntry {
            request_id,
            status: status as u16,
            flags: 0,
            page_count: 0,
            table_offset: 0,
            file_map_id: 0,
            map_generation: 0,
            file_size: 0,
            reserved: [0; 2],
        }
    }
}

// ---------------------------------------------------------------------------
// Event entries (host -> guest)
// ---------------------------------------------------------------------------

/// Size of one event entry.
pub const EQE_SIZE: u32 = 64;

/// Event kind: a file map is revoked; the guest must stop using its frames
/// and unmap them, then acknowledge with [`OP_ACK_REVOKE`].
pub const EVENT_REVOKE: u16 = 1;
/// Event kind: a notice (`notice` says which).
pub const EVENT_NOTICE: u16 = 2;

/// Notice: the host is restarting; the generation will change.
pub const NOTICE_HOST_RESTARTING: u32 = 1;
/// Notice: events were lost (see [`HOST_FLAG_EVENTS_LOST`]); revoke
/// everything. (A cut-off is told with [`HOST_FLAG_CUT_OFF`], which a full
/// event ring cannot lose.)
pub const NOTICE_EVENTS_LOST: u32 = 2;
/// Notice: the pool is under pressure; the guest should release what it can.
pub const NOTICE_POOL_PRESSURE: u32 = 3;
/// Notice: a restarted host adopted this ring and the pool in place (same
/// generations, every map stays valid) but does not know what this VM holds:
/// the guest sends one [`OP_HOLD`] per map it holds, then [`OP_HOLDS_DONE`]
/// echoing this event's `file_map_id` (a non-zero token). Until then the host
/// rewrites none of the frames the adopted tables name.
pub const NOTICE_REANNOUNCE: u32 = 4;
/// Notice: the file of hint `request_id`, answered
/// [`AnswerStatus::Loading`] with [`HINT_FLAG_NOTIFY_LOADED`], is in the
/// pool now: a new hint for it may hit. Advisory: the host sends at most
/// one per such hint, none when the load failed, when the VM asked for too
/// many or when its event ring is busy, and nothing is held for the guest
/// until it hints again, so a guest that ignores or loses one leaks nothing.
pub const NOTICE_LOADED: u32 = 5;

wire_struct! {
    /// One event.
    ///
    /// Writer: host (producer), before its Release store of `eq_tail`. The guest
    /// copies it out after its Acquire load of `eq_tail`.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct EventEntry: EQE_SIZE as usize, offsets eqe_off {
        /// `EVENT_*`.
        pub kind: u16 = KIND @ 0,
        /// Zero; reserved.
        pub flags: u16 = FLAGS @ 2,
        /// For [`EVENT_NOTICE`]: a `NOTICE_*` code; else zero.
        pub notice: u32 = NOTICE @ 4,
        /// For [`EVENT_REVOKE`]: the revoked file map.
        pub file_map_id: u64 = FILE_MAP_ID @ 8,
        /// For [`EVENT_REVOKE`]: where its frame table was in the pool.
        pub table_offset: u64 = TABLE_OFFSET @ 16,
        /// For [`EVENT_REVOKE`]: the revoked generation of that file map.
        pub map_generation: u64 = MAP_GENERATION @ 24,
        /// For [`NOTICE_LOADED`]: the hint's `request_id`; else zero.
        pub request_id: u64 = REQUEST_ID @ 32,
        /// Zero; reserved (revocation sequence numbers).
        pub reserved: [u64; 3] = RESERVED @ 40,
    }
}
