//! Control-channel messages between `vmdedup` clients (the host CLI, guest
//! tools) and the host agent.
//!
//! Host and guest *userspace* only (feature `control`); the guest kernel module
//! never sees these. Every message is one frame:
//!
//! ```text
//! u32 LE  length   bytes after this field (2 + payload), at most MAX_FRAME_LEN - 4
//! u16 LE  version  CONTROL_VERSION
//! ...     payload  postcard encoding of a Request or a Response
//! ```
//!
//! One request, one response, in order, on a stream socket. Every field that
//! could grow is a `heapless` type with a fixed bound, so decoding needs no
//! allocation and a frame of at most [`MAX_FRAME_LEN`] bytes can hold any
//! message. A frame that is too long, too short, of another version, or whose
//! payload does not decode to exactly one message with no trailing bytes is an
//! error, never a panic.

use core::fmt;

use heapless::{String, Vec};
use serde::{Deserialize, Serialize};

/// Version of the control framing and messages (2: misses counted over
/// quota; 4: [`DomainReport::filesystem_full`]).
///
/// Version 3 peers are still understood: a version 3 frame decodes (a
/// [`DomainReport`] from it has `filesystem_full` 0), and the agent answers
/// each request in the version it came in ([`Response::encode_version`]).
/// Only [`Response::Status`] differs between the two; every other message
/// is the same bytes under either version.
pub const CONTROL_VERSION: u16 = 4;
/// Oldest version still decoded and answered.
pub const CONTROL_VERSION_MIN: u16 = 3;
/// Largest frame, length prefix included.
pub const MAX_FRAME_LEN: usize = 64 * 1024;
/// Size of the frame header (length + version).
pub const FRAME_HEADER_LEN: usize = 6;
/// Longest name (namespace, VM, trust domain), in bytes.
pub const MAX_NAME: usize = 64;
/// Longest path in a message, in bytes.
pub const MAX_PATH: usize = 512;
/// Longest error message, in bytes.
pub const MAX_MESSAGE: usize = 256;
/// Most VMs in one [`Response::Vms`] or [`StatusReport::vms`].
pub const MAX_VMS: usize = 32;
/// Most trust domains a [`StatusReport`] lists.
pub const MAX_DOMAINS: usize = 32;
/// Most files in one [`Response::Files`] page (messages stay small enough
/// to live on a thread stack several times over; page with `offset`).
pub const MAX_FILES: usize = 16;
/// Most namespaces in one [`Response::Namespaces`].
pub const MAX_NAMESPACES: usize = 32;

/// A bounded name.
pub type Name = String<MAX_NAME>;
/// A bounded relative path inside a namespace.
pub type RelPath = String<MAX_PATH>;

/// What a client asks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Pool and hint counters ([`Response::Status`]). A VM sees its own only.
    Status,
    /// Registered VMs ([`Response::Vms`]). A VM sees itself only.
    Vms,
    /// Namespaces the caller may use ([`Response::Namespaces`]).
    Namespaces,
    /// One page of the file maps in the pool ([`Response::Files`]).
    Files {
        /// Only this namespace; empty for all the caller may see.
        ns: Name,
        /// Index of the first file to list.
        offset: u32,
        /// Most files to list (capped at [`MAX_FILES`]).
        limit: u16,
    },
    /// Preload a file or a tree ([`Response::Warmed`]).
    Warm {
        /// The namespace.
        ns: Name,
        /// A path inside it; empty for the whole namespace.
        path: RelPath,
    },
    /// Drop file maps from the pool ([`Response::Evicted`]). Host CLI only.
    Evict {
        /// The namespace; empty for every namespace.
        ns: Name,
        /// A file or directory inside it; empty for the whole namespace.
        path: RelPath,
    },
    /// Register a VM and create its ring region ([`Response::VmAdded`]). Host
    /// CLI only.
    VmAdd {
        /// Name of the VM.
        name: Name,
        /// Trust domain of the VM; empty for `default`.
        domain: Name,
    },
    /// Serve a cut-off VM again: its ring starts over with a new generation
    /// ([`Response::VmReinstated`]). Host CLI only. (Appended last: variant
    /// indices are the wire format.)
    VmReinstate {
        /// Name of the VM.
        name: Name,
    },
    /// The VM is gone for good (its QEMU exited): forget it and free what
    /// it held, cut off or not ([`Response::VmRemoved`]). Host CLI only.
    /// (Appended last: variant indices are the wire format.)
    VmRemove {
        /// Name of the VM.
        name: Name,
    },
    /// Where VM `name` attaches: its ring region and its trust domain's
    /// pool, with their sizes ([`Response::VmAttachment`]), for `vmdedup
    /// qemu-args`. Host CLI only. (Appended last: variant indices are the
    /// wire format.)
    VmAttachment {
        /// Name of the VM.
        name: Name,
    },
    /// Every VM's ring device and its wake-ups ([`Response::VmRings`]).
    /// Host CLI only. (Appended last: variant indices are the wire format;
    /// an agent that does not know it cannot decode it and says so.)
    VmRings,
}

/// Why a hint was answered with a miss. Also the keys of [`MissCounts`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MissReason {
    /// The guest's identity (size, mtime) differs from the host file.
    IdentityMismatch,
    /// No such file in the namespace.
    NotFound,
    /// The path names something other than a regular file.
    NotRegular,
    /// The path is malformed or tries to leave the namespace.
    BadPath,
    /// No such namespace, or the VM may not use it (not told apart).
    NoNamespace,
    /// The file is being loaded; retry later.
    Loading,
    /// The pool has no room now; retry later. Also a pool-only hint
    /// (`HINT_FLAG_POOL_ONLY`) for a file the pool does not hold: it was
    /// evicted again before the guest came for it.
    PoolFull,
    /// The file is larger than a table may describe.
    TooLarge,
    /// The VM is cut off from the pool.
    CutOff,
    /// Host I/O error reading the file.
    IoError,
    /// The VM holds its quota of pool pages; retry once it released some.
    OverQuota,
}

impl MissReason {
    /// Every reason, in the order of the fields of [`MissCounts`].
    pub const ALL: [MissReason; 11] = [
        MissReason::IdentityMismatch,
        MissReason::NotFound,
        MissReason::NotRegular,
        MissReason::BadPath,
        MissReason::NoNamespace,
        MissReason::Loading,
        MissReason::PoolFull,
        MissReason::TooLarge,
        MissReason::CutOff,
        MissReason::IoError,
        MissReason::OverQuota,
    ];

    /// Its name where the agent shows it: a key of `status --json`'s
    /// `misses`, the `reason` label of the metrics (the name of its field
    /// in [`MissCounts`]).
    pub const fn key(self) -> &'static str {
        match self {
            MissReason::IdentityMismatch => "identity_mismatch",
            MissReason::NotFound => "not_found",
            MissReason::NotRegular => "not_regular",
            MissReason::BadPath => "bad_path",
            MissReason::NoNamespace => "no_namespace",
            MissReason::Loading => "loading",
            MissReason::PoolFull => "pool_full",
            MissReason::TooLarge => "too_large",
            MissReason::CutOff => "cut_off",
            MissReason::IoError => "io_error",
            MissReason::OverQuota => "over_quota",
        }
    }
}

/// Miss counters by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissCounts {
    /// [`MissReason::IdentityMismatch`].
    pub identity_mismatch: u64,
    /// [`MissReason::NotFound`].
    pub not_found: u64,
    /// [`MissReason::NotRegular`].
    pub not_regular: u64,
    /// [`MissReason::BadPath`].
    pub bad_path: u64,
    /// [`MissReason::NoNamespace`].
    pub no_namespace: u64,
    /// [`MissReason::Loading`].
    pub loading: u64,
    /// [`MissReason::PoolFull`].
    pub pool_full: u64,
    /// [`MissReason::TooLarge`].
    pub too_large: u64,
    /// [`MissReason::CutOff`].
    pub cut_off: u64,
    /// [`MissReason::IoError`].
    pub io_error: u64,
    /// [`MissReason::OverQuota`].
    pub over_quota: u64,
}

impl MissCounts {
    /// The counter for `r`.
    pub fn get_mut(&mut self, r: MissReason) -> &mut u64 {
        match r {
            MissReason::IdentityMismatch => &mut self.identity_mismatch,
            MissReason::NotFound => &mut self.not_found,
            MissReason::NotRegular => &mut self.not_regular,
            MissReason::BadPath => &mut self.bad_path,
            MissReason::NoNamespace => &mut self.no_namespace,
            MissReason::Loading => &mut self.loading,
            MissReason::PoolFull => &mut self.pool_full,
            MissReason::TooLarge => &mut self.too_large,
            MissReason::CutOff => &mut self.cut_off,
            MissReason::IoError => &mut self.io_error,
            MissReason::OverQuota => &mut self.over_quota,
        }
    }

    /// The counter for `r`, read.
    pub fn get(&self, r: MissReason) -> u64 {
        let mut copy = *self;
        *copy.get_mut(r)
    }

    /// Each reason with its count, in [`MissReason::ALL`] order.
    pub fn by_reason(&self) -> impl Iterator<Item = (MissReason, u64)> + '_ {
        MissReason::ALL.into_iter().map(|r| (r, self.get(r)))
    }

    /// Sum of all counters (saturating).
    pub fn total(&self) -> u64 {
        self.by_reason()
            .fold(0u64, |sum, (_, n)| sum.saturating_add(n))
    }
}

/// Hint counters, for the whole agent or one VM.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HintCounters {
    /// Hints received.
    pub hints: u64,
    /// Hints answered with a file map.
    pub hits: u64,
    /// Misses by reason.
    pub misses: MissCounts,
    /// File pages currently served from the pool (sum of the page counts of
    /// the file maps held).
    pub pages_mapped: u64,
    /// Median hint latency, microseconds.
    pub hint_latency_us_p50: u64,
    /// 99th percentile hint latency, microseconds.
    pub hint_latency_us_p99: u64,
}

/// One VM, as [`Response::Vms`] and [`StatusReport::vms`] list it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmReport {
    /// Name of the VM.
    pub name: Name,
    /// Its trust domain.
    pub domain: Name,
    /// Whether it was cut off from the pool (never acknowledged a revocation).
    pub cut_off: bool,
    /// File maps it holds.
    pub maps_held: u32,
    /// Revocations sent to it and not yet acknowledged.
    pub revocations_pending: u32,
    /// Its counters.
    pub counters: HintCounters,
}

/// The figures of a pool: one trust domain's ([`DomainReport::pool`]) or,
/// for the host, their sums over the domains ([`StatusReport::pool`]).
///
/// Postcard writes a nested struct's fields in order with nothing around
/// them, so a report that embeds this is the same bytes as one that listed
/// these six fields in its place.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolFigures {
    /// The pool's generation (the host's sums: the first domain's).
    pub generation: u64,
    /// Frames in the pool.
    pub frames_total: u64,
    /// Frames that may be used under the memory budget.
    pub frames_budget: u64,
    /// Frames holding data.
    pub frames_used: u64,
    /// File maps in the pool.
    pub file_maps: u64,
    /// `max(0, pages_mapped - frames_used) * 4096` within the pool's trust
    /// domain (pages mapped by VMs of other domains are not shared with it).
    pub bytes_saved: u64,
}

impl PoolFigures {
    /// Adds `other`'s counts to these, as the host sums its domains' pools;
    /// the generation stays the first nonzero one.
    pub fn add(&mut self, other: &PoolFigures) {
        if self.generation == 0 {
            self.generation = other.generation;
        }
        self.frames_total = self.frames_total.saturating_add(other.frames_total);
        self.frames_budget = self.frames_budget.saturating_add(other.frames_budget);
        self.frames_used = self.frames_used.saturating_add(other.frames_used);
        self.file_maps = self.file_maps.saturating_add(other.file_maps);
        self.bytes_saved = self.bytes_saved.saturating_add(other.bytes_saved);
    }

    /// Only the pool's fixed geometry (generation, size, budget), without
    /// what its use depends on: what a VM may learn, since other VMs of
    /// its domain load files into it too.
    pub fn geometry(&self) -> PoolFigures {
        PoolFigures {
            generation: self.generation,
            frames_total: self.frames_total,
            frames_budget: self.frames_budget,
            ..PoolFigures::default()
        }
    }
}

/// One trust domain's pool, as [`StatusReport::domains`] lists it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainReport {
    /// Name of the trust domain.
    pub name: Name,
    /// Its pool.
    pub pool: PoolFigures,
    /// VMs in the domain.
    pub vms: u32,
    /// Allocations refused (answered "pool full") because the filesystem
    /// under the domain's pool file had no memory left for the frame or
    /// table, though the pool itself had room: the filesystem is smaller
    /// than the pool (e.g. a small `/dev/shm`). (Version 4; appended last.)
    pub filesystem_full: u64,
}

/// Whole-agent status. For the host the pool figures are the sums over the
/// trust domains' pools, which [`StatusReport::domains`] lists; a VM sees
/// its own domain's pool geometry and its own counters only.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The pool (the host: the sums over the domains' pools; a VM: its
    /// domain's pool's [`geometry`](PoolFigures::geometry)).
    pub pool: PoolFigures,
    /// Counters over all VMs.
    pub counters: HintCounters,
    /// Per-VM entries (at most [`MAX_VMS`]; a VM caller sees only itself).
    pub vms: Vec<VmReport, MAX_VMS>,
    /// Per trust domain pools (host only; empty for a VM caller).
    pub domains: Vec<DomainReport, MAX_DOMAINS>,
}

/// Pool figures from six numbers in field order: generation, frames total,
/// budget and used, file maps, bytes saved (the order postcard writes them).
impl From<[u64; 6]> for PoolFigures {
    fn from(n: [u64; 6]) -> PoolFigures {
        let [generation, frames_total, frames_budget, frames_used, file_maps, bytes_saved] = n;
        PoolFigures {
            generation,
            frames_total,
            frames_budget,
            frames_used,
            file_maps,
            bytes_saved,
        }
    }
}

impl StatusReport {
    /// A small report with a distinct value in every field (one VM, one
    /// domain): the fixture that the codec's tests and the agent's JSON and
    /// metrics tests compare against, so that a field shown in the wrong
    /// place cannot go unnoticed.
    pub fn sample() -> StatusReport {
        let counters = HintCounters {
            hints: 20,
            hits: 21,
            misses: MissCounts {
                loading: 22,
                over_quota: 200,
                ..MissCounts::default()
            },
            pages_mapped: 23,
            hint_latency_us_p50: 24,
            hint_latency_us_p99: 25,
        };
        let mut r = StatusReport {
            pool: PoolFigures::from([1, 300, 3, 4, 5, 6]),
            counters,
            ..StatusReport::default()
        };
        // One entry each: within MAX_VMS and MAX_DOMAINS (both at least 1).
        let _ = r.vms.push(VmReport {
            name: bounded_str("vm1"),
            domain: bounded_str("d"),
            cut_off: true,
            maps_held: 26,
            revocations_pending: 27,
            counters,
        });
        let _ = r.domains.push(DomainReport {
            name: bounded_str("d"),
            pool: PoolFigures::from([11, 12, 13, 14, 15, 16]),
            vms: 1,
            filesystem_full: 17,
        });
        r
    }
}

/// One file map, as [`Response::Files`] lists it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileReport {
    /// The trust domain whose pool holds it.
    pub domain: Name,
    /// Namespace.
    pub ns: Name,
    /// Path inside it (truncated to [`MAX_PATH`] bytes on a char boundary).
    pub path: RelPath,
    /// File size in bytes.
    pub size: u64,
    /// Pages.
    pub pages: u32,
    /// VMs holding the map.
    pub holders: u32,
    /// Whether the map is being revoked.
    pub revoking: bool,
}

/// One namespace, as [`Response::Namespaces`] lists it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceReport {
    /// Name of the namespace.
    pub name: Name,
    /// File maps of it in the pool.
    pub file_maps: u32,
}

/// Error classes of [`Response::Error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The frame could not be decoded.
    BadRequest,
    /// The caller may not do this.
    Denied,
    /// No such namespace (or not one the caller may use), VM or path.
    NotFound,
    /// It exists already.
    Exists,
    /// The agent failed.
    Internal,
}

impl ErrorCode {
    /// How the agent refused, in words to put after "the agent refused"
    /// (`""` where the answer's message says it all).
    pub fn refusal_kind(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => " a request it could not read",
            ErrorCode::Denied | ErrorCode::NotFound | ErrorCode::Exists => "",
            ErrorCode::Internal => " after an internal error",
        }
    }
}

/// What the agent answers.
// Variants are bounded and unboxed on purpose: no allocation in decoding.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Answer to [`Request::Status`].
    Status(StatusReport),
    /// Answer to [`Request::Vms`].
    Vms(Vec<VmReport, MAX_VMS>),
    /// Answer to [`Request::Namespaces`].
    Namespaces(Vec<NamespaceReport, MAX_NAMESPACES>),
    /// Answer to [`Request::Files`].
    Files {
        /// Number of files the caller could list in all.
        total: u64,
        /// This page.
        files: Vec<FileReport, MAX_FILES>,
    },
    /// Answer to [`Request::Warm`].
    Warmed {
        /// Regular files loaded (or already present).
        files: u64,
        /// Their pages.
        pages: u64,
        /// Entries skipped (not regular, unreadable, pool full).
        skipped: u64,
    },
    /// Answer to [`Request::Evict`].
    Evicted {
        /// File maps dropped at once.
        dropped: u64,
        /// File maps whose revocation was started (dropped once acknowledged).
        revoking: u64,
    },
    /// Answer to [`Request::VmAdd`].
    VmAdded {
        /// Name of the VM.
        name: Name,
        /// Path of its new ring region.
        ring_path: RelPath,
    },
    /// The request failed.
    Error {
        /// Class of the error.
        code: ErrorCode,
        /// Human-readable detail.
        message: String<MAX_MESSAGE>,
    },
    /// Answer to [`Request::VmReinstate`]. (Appended last: variant indices
    /// are the wire format.)
    VmReinstated {
        /// Name of the VM.
        name: Name,
        /// Whether it was cut off (false: it was served already, nothing done).
        was_cut_off: bool,
    },
    /// Answer to [`Request::VmRemove`]. (Appended last: variant indices are
    /// the wire format.)
    VmRemoved {
        /// Name of the VM.
        name: Name,
        /// File maps it still held, now released.
        maps_released: u32,
    },
    /// Answer to [`Request::VmAttachment`]. (Appended last: variant indices
    /// are the wire format.)
    VmAttachment(AttachmentReport),
    /// Answer to [`Request::VmRings`]. (Appended last.)
    VmRings(Vec<RingReport, MAX_VMS>),
}

/// One VM's ring device and the wake-ups over it ([`Response::VmRings`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingReport {
    /// Name of the VM.
    pub name: Name,
    /// The ring is served as an `ivshmem-doorbell` device (the agent is its
    /// ivshmem server); false: `ivshmem-plain`, polled.
    pub doorbell: bool,
    /// The VM's QEMU is connected to the agent's ivshmem socket now.
    pub connected: bool,
    /// The guest said it rings when the poller parks (its module found the
    /// Doorbell register).
    pub guest_rings: bool,
    /// Doorbells received from the guest (eventfd counts the poller drained).
    pub doorbells: u64,
    /// Interrupts raised in the guest.
    pub interrupts: u64,
}

/// The files a VM's QEMU maps, as the running agent serves them
/// ([`Response::VmAttachment`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentReport {
    /// Name of the VM.
    pub name: Name,
    /// Its trust domain.
    pub domain: Name,
    /// Its ring region file (the VM maps it read-write).
    pub ring_path: RelPath,
    /// The ring region's size in bytes.
    pub ring_size: u64,
    /// Its trust domain's pool file (the VM maps it read-only).
    pub pool_path: RelPath,
    /// The pool's size in bytes.
    pub pool_size: u64,
}

/// Why a frame could not be encoded or decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlError {
    /// The frame's length field is over [`MAX_FRAME_LEN`] (or the message
    /// does not fit in one when encoding).
    Oversized(u64),
    /// Fewer bytes than a header, or than the length field announces.
    Truncated,
    /// More bytes than the length field announces.
    TrailingBytes,
    /// Another protocol version.
    Version(u16),
    /// The payload is not a valid message.
    Malformed,
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ControlError::Oversized(n) => write!(
                f,
                "control frame of {n} bytes is over the limit of {MAX_FRAME_LEN}"
            ),
            ControlError::Truncated => f.write_str("control frame truncated"),
            ControlError::TrailingBytes => f.write_str("trailing bytes after control message"),
            ControlError::Version(v) => write!(
                f,
                "control protocol version {v}, expected {CONTROL_VERSION}"
            ),
            ControlError::Malformed => f.write_str("malformed control message"),
        }
    }
}

/// Reads the frame header: returns the number of bytes that follow the
/// 4-byte length field (version included), after checking it is in range.
/// A stream reader reads 4 bytes, calls this, then reads that many bytes.
pub fn frame_body_len(len_field: [u8; 4]) -> Result<usize, ControlError> {
    let n = u32::from_le_bytes(len_field) as u64;
    if n > (MAX_FRAME_LEN - 4) as u64 {
        return Err(ControlError::Oversized(n));
    }
    if n < 2 {
        return Err(ControlError::Truncated);
    }
    Ok(n as usize)
}

fn encode<T: Serialize>(msg: &T, buf: &mut [u8]) -> Result<usize, ControlError> {
    encode_version(msg, CONTROL_VERSION, &[], buf)
}

/// Encodes `prefix` then `msg` as the payload of a frame of `version`.
fn encode_version<T: Serialize>(
    msg: &T,
    version: u16,
    prefix: &[u8],
    buf: &mut [u8],
) -> Result<usize, ControlError> {
    let cap = buf.len().min(MAX_FRAME_LEN);
    let too_big = ControlError::Oversized(MAX_FRAME_LEN as u64 + 1);
    let body = buf
        .get_mut(FRAME_HEADER_LEN..cap)
        .ok_or(ControlError::Oversized(cap as u64))?;
    let (head, rest) = body.split_at_mut_checked(prefix.len()).ok_or(too_big)?;
    head.copy_from_slice(prefix);
    let n = prefix.len() + postcard::to_slice(msg, rest).map_err(|_| too_big)?.len();
    let len = (n + 2) as u32;
    buf[..4].copy_from_slice(&len.to_le_bytes());
    buf[4..6].copy_from_slice(&version.to_le_bytes());
    Ok(n + FRAME_HEADER_LEN)
}

/// The body (version + payload) of a whole frame, its length checked.
fn frame_body(frame: &[u8]) -> Result<&[u8], ControlError> {
    let len: [u8; 4] = frame
        .get(..4)
        .and_then(|s| s.try_into().ok())
        .ok_or(ControlError::Truncated)?;
    let body_len = frame_body_len(len)?;
    let body = frame.get(4..).ok_or(ControlError::Truncated)?;
    if body.len() < body_len {
        return Err(ControlError::Truncated);
    }
    if body.len() > body_len {
        return Err(ControlError::TrailingBytes);
    }
    Ok(body)
}

/// The version of a body and its payload; a version this build does not
/// decode is an error.
fn split_version(body: &[u8]) -> Result<(u16, &[u8]), ControlError> {
    let ver: [u8; 2] = body
        .get(..2)
        .and_then(|s| s.try_into().ok())
        .ok_or(ControlError::Truncated)?;
    let ver = u16::from_le_bytes(ver);
    if !(CONTROL_VERSION_MIN..=CONTROL_VERSION).contains(&ver) {
        return Err(ControlError::Version(ver));
    }
    Ok((ver, body.get(2..).ok_or(ControlError::Truncated)?))
}

/// Exactly one `T` in `payload`.
fn decode_payload<'a, T: Deserialize<'a>>(payload: &'a [u8]) -> Result<T, ControlError> {
    let (msg, rest) =
        postcard::take_from_bytes::<T>(payload).map_err(|_| ControlError::Malformed)?;
    if !rest.is_empty() {
        return Err(ControlError::TrailingBytes);
    }
    Ok(msg)
}

/// Version 3 of the one message that changed in version 4: the same
/// fields, without [`DomainReport::filesystem_full`].
mod v3 {
    use super::*;

    #[derive(Serialize, Deserialize)]
    pub(super) struct DomainReport {
        name: Name,
        pool: PoolFigures,
        vms: u32,
    }

    #[derive(Serialize, Deserialize)]
    pub(super) struct StatusReport {
        pool: PoolFigures,
        counters: HintCounters,
        vms: Vec<VmReport, MAX_VMS>,
        domains: Vec<DomainReport, MAX_DOMAINS>,
    }

    impl From<&super::StatusReport> for StatusReport {
        fn from(r: &super::StatusReport) -> Self {
            let domains = r.domains.iter().map(|d| DomainReport {
                name: d.name.clone(),
                pool: d.pool,
                vms: d.vms,
            });
            StatusReport {
                pool: r.pool,
                counters: r.counters,
                vms: r.vms.clone(),
                domains: domains.collect(),
            }
        }
    }

    impl From<StatusReport> for super::StatusReport {
        fn from(r: StatusReport) -> Self {
            let domains = r.domains.into_iter().map(|d| super::DomainReport {
                name: d.name,
                pool: d.pool,
                vms: d.vms,
                filesystem_full: 0,
            });
            super::StatusReport {
                pool: r.pool,
                counters: r.counters,
                vms: r.vms,
                domains: domains.collect(),
            }
        }
    }
}

/// Postcard's encoding of [`Response::Status`]'s variant index (a varint
/// 0): the byte before its report. Variant indices are the wire format.
const STATUS_VARIANT: u8 = 0;

impl Request {
    /// Encodes the request as one frame into `buf` (at least
    /// [`MAX_FRAME_LEN`] bytes are always enough); returns the frame length.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, ControlError> {
        encode(self, buf)
    }

    /// Decodes one whole frame (length field included).
    pub fn decode(frame: &[u8]) -> Result<Self, ControlError> {
        Self::decode_body(frame_body(frame)?)
    }

    /// Decodes the bytes after the length field (version + payload), as a
    /// stream reader has them after [`frame_body_len`].
    pub fn decode_body(body: &[u8]) -> Result<Self, ControlError> {
        Self::decode_body_version(body).map(|(r, _)| r)
    }

    /// [`decode_body`](Self::decode_body), and the version the request came
    /// in, for [`Response::encode_version`]. (Requests are the same in
    /// every version decoded.)
    pub fn decode_body_version(body: &[u8]) -> Result<(Self, u16), ControlError> {
        let (ver, payload) = split_version(body)?;
        Ok((decode_payload(payload)?, ver))
    }
}

impl Response {
    /// Encodes the response as one frame into `buf` (at least
    /// [`MAX_FRAME_LEN`] bytes are always enough); returns the frame length.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, ControlError> {
        encode(self, buf)
    }

    /// Encodes the response for a peer of `version` (one of
    /// [`CONTROL_VERSION_MIN`]..=[`CONTROL_VERSION`]; another is encoded as
    /// [`CONTROL_VERSION`]).
    pub fn encode_version(&self, version: u16, buf: &mut [u8]) -> Result<usize, ControlError> {
        match (version, self) {
            (3, Response::Status(r)) => {
                encode_version(&v3::StatusReport::from(r), 3, &[STATUS_VARIANT], buf)
            }
            (3, other) => encode_version(other, 3, &[], buf),
            (_, other) => encode(other, buf),
        }
    }

    /// Decodes one whole frame (length field included).
    pub fn decode(frame: &[u8]) -> Result<Self, ControlError> {
        Self::decode_body(frame_body(frame)?)
    }

    /// Decodes the bytes after the length field (version + payload).
    pub fn decode_body(body: &[u8]) -> Result<Self, ControlError> {
        match split_version(body)? {
            (3, [STATUS_VARIANT, report @ ..]) => {
                decode_payload::<v3::StatusReport>(report).map(|r| Response::Status(r.into()))
            }
            (_, payload) => decode_payload(payload),
        }
    }

    /// An error response; `message` is cut to [`MAX_MESSAGE`] bytes.
    pub fn error(code: ErrorCode, message: &str) -> Self {
        Response::Error {
            code,
            message: bounded_str(message),
        }
    }
}

/// Copies `s` into a bounded string, cut on a char boundary if too long.
pub fn bounded_str<const N: usize>(s: &str) -> String<N> {
    let mut out = String::new();
    for c in s.chars() {
        if out.push(c).is_err() {
            break;
        }
    }
    out
}
