// SPDX-License-Identifier: GPL-2.0
//! Module-wide counters, shown in `/sys/kernel/vmdedup/stats/<name>`.

use core::fmt::Write;
use core::sync::atomic::{AtomicU64, Ordering};

use kernel::prelude::*;

macro_rules! counters {
    ($($name:ident: $doc:literal,)*) => {
        /// Every counter the module keeps.
        #[derive(Clone, Copy)]
        #[allow(non_camel_case_types, dead_code)]
        pub(crate) enum Counter { $(#[doc = $doc] $name,)* }

        const NAMES: &[&str] = &[$(stringify!($name),)*];
        const COUNT: usize = NAMES.len();
    };
}

counters! {
    hints_sent: "Hints published on the submission ring.",
    hints_skipped_no_host: "Opens that sent no hint: no valid ring header (host absent).",
    hints_skipped_ring_full: "Opens that sent no hint: submission ring or request table full.",
    hints_skipped_path: "Opens that sent no hint: path too long or not sendable.",
    answers_hit: "Answers with status Hit that validated against the pool.",
    answers_miss_loading: "Misses with status Loading (the host is loading the file or making room).",
    answers_miss_not_found: "Misses with status NotFound.",
    answers_miss_identity: "Misses with status IdentityMismatch.",
    answers_miss_other: "Misses with any other status.",
    answers_late: "Answers taken after the open stopped polling for them.",
    answers_unknown: "Answers for request ids that were never sent (dropped).",
    answers_malformed: "Answers or tables that failed validation (dropped, lower used).",
    requests_timed_out: "Requests given up on without an answer.",
    pages_pool: "Page-sized (or shorter) pieces of read(2) served from pool frames.",
    pages_lower: "read(2) pieces served from the lower file (one per page where a map exists, else one per call).",
    bytes_pool: "Bytes read(2) from pool frames.",
    mmap_pool: "mmap(2) calls mapped from pool frames.",
    mmap_lower: "mmap(2) calls delegated to the lower file.",
    mmap_pool_private: "Private mmap(2) calls (MAP_PRIVATE: programs, libraries) mapped from pool frames.",
    mmap_pool_exec: "Executable mappings (code) mapped from pool frames.",
    faults_pool: "Page faults served with a pool frame.",
    faults_pool_exec: "Page faults in executable mappings served with a pool frame.",
    faults_around_pages: "Neighbouring pool frames a read fault on a pool mapping mapped too (fault-around: up to 16 pages in the aligned block around the fault, within the VMA, the file and the map the mapping was checked against; a page already mapped counts too).",
    faults_lower: "Page faults on a pool mapping served with the lower file's page (map revoked or replaced).",
    faults_failed: "Page faults on a pool mapping that could not be served.",
    doorbell_refused: "Ring devices whose doorbell was not used: their IVPosition register did not read the guest's peer id (the register BAR does not reach the device, or no vmdedup agent serves it), so the ring is polled.",
    doorbells_needed: "Times NEED_WAKEUP was set after publishing (a doorbell was due; rung only with an ivshmem-doorbell ring, see doorbells_rung).",
    fallbacks: "Times a file map was dropped and the file went back to lower.",
    verify_pages: "Pool pages compared with the lower file.",
    verify_mismatches: "Pool pages that differed from the lower file.",
    verify_files: "Files whose verify=sample check (first, last and a random page) passed.",
    loaded_notices: "Notices that a file answered \"loading\" (whose hint asked for one) is in the pool now, including those that came before the answer was taken.",
    loaded_notices_unknown: "Such notices for a request this guest no longer waits for (forgotten, or opened again meanwhile).",
    loading_forgotten: "Files answered \"loading\" forgotten before their notice came (timed out 60 s after the first hint, or more than 256 waited).",
    refetches: "Hints sent again after such a notice, without an open.",
    refetch_hits: "Of those, hits: the file's lower pages read while it was loading were dropped then.",
    lower_pages_dropped: "Lower page cache pages dropped once the pool served their file.",
    revocations: "Revocation events applied.",
    acks_sent: "Revocation acknowledgements (OP_ACK_REVOKE) published.",
    acks_withheld: "Revocation acknowledgements not sent because the fault_no_ack test knob is set.",
    releases_sent: "Map releases (OP_RELEASE) published.",
    map_ops_deferred: "Times map operations had to wait for room in the submission ring.",
    map_ops_dropped: "Map operations dropped: the queue was full (the host's timeout covers them).",
    map_op_answers: "Answers to map operations (dropped).",
    map_ops_refused: "Answers to map operations whose status was not Hit.",
    events_unknown: "Events that named no held file map or had an unknown kind.",
    generation_changes: "Ring or pool generation changes seen (host restart).",
    ring_corrupt: "Times the ring indices were found corrupt (ring disabled until reset).",
    cut_offs: "Cut-offs seen in the ring header (HOST_FLAG_CUT_OFF), applied and acknowledged.",
    hints_skipped_cut_off: "Opens that sent no hint: this VM is cut off until its ring is reinstated.",
    answers_cut_off: "Answers not applied because this VM was cut off meanwhile.",
    events_withheld: "Events polls that consumed nothing because fault_no_ack (2 or 3) plays a stuck guest.",
    answers_held_back: "Reaps skipped because the fault_hold_answers test knob is set.",
    slots_reclaimed: "Path slots of expired requests freed once the host had consumed their entry.",
    reannounce_requests: "Re-announce notices from a host that took the pool over in place.",
    holds_reannounced: "Held maps re-announced (OP_HOLD) to such a host.",
    hint_rtt_us_le_64: "Hints answered within 64 us of being sent (round trip as this guest saw it; one bucket each, powers of two).",
    hint_rtt_us_le_128: "Hints answered within 128 us of being sent (round trip as this guest saw it; one bucket each, powers of two).",
    hint_rtt_us_le_256: "Hints answered within 256 us of being sent (round trip as this guest saw it; one bucket each, powers of two).",
    hint_rtt_us_le_512: "Hints answered within 512 us of being sent (round trip as this guest saw it; one bucket each, powers of two).",
    hint_rtt_us_le_1024: "Hints answered within 1024 us of being sent (round trip as this guest saw it; one bucket each, powers of two).",
    hint_rtt_us_le_2048: "Hints answered within 2048 us of being sent (round trip as this guest saw it; one bucket each, powers of two).",
    hint_rtt_us_le_4096: "Hints answered within 4096 us of being sent (round trip as this guest saw it; one bucket each, powers of two).",
    hint_rtt_us_le_8192: "Hints answered within 8192 us of being sent (round trip as this guest saw it; one bucket each, powers of two).",
    hint_rtt_us_le_16384: "Hints answered within 16384 us of being sent (round trip as this guest saw it; one bucket each, powers of two).",
    hint_rtt_us_le_32768: "Hints answered within 32768 us of being sent (round trip as this guest saw it; one bucket each, powers of two).",
    hint_rtt_us_le_65536: "Hints answered within 65536 us of being sent (round trip as this guest saw it; one bucket each, powers of two).",
    hint_rtt_us_le_131072: "Hints answered within 131072 us of being sent (round trip as this guest saw it; one bucket each, powers of two).",
    hint_rtt_us_le_262144: "Hints answered within 262144 us of being sent (round trip as this guest saw it; one bucket each, powers of two).",
    hint_rtt_us_le_524288: "Hints answered within 524288 us of being sent (round trip as this guest saw it; one bucket each, powers of two).",
    hint_rtt_us_le_1048576: "Hints answered within 1048576 us of being sent (round trip as this guest saw it; one bucket each, powers of two).",
    hint_rtt_us_over: "Hints answered more than 1048576 us after being sent.",
    loaded_share_ms_le_1: "Files answered \"loading\" whose second hint, after the host's notice, hit within 1 ms of the first hint (the time to share of a cold file; one bucket each, powers of two).",
    loaded_share_ms_le_2: "Files answered \"loading\" whose second hint, after the host's notice, hit within 2 ms of the first hint (the time to share of a cold file; one bucket each, powers of two).",
    loaded_share_ms_le_4: "Files answered \"loading\" whose second hint, after the host's notice, hit within 4 ms of the first hint (the time to share of a cold file; one bucket each, powers of two).",
    loaded_share_ms_le_8: "Files answered \"loading\" whose second hint, after the host's notice, hit within 8 ms of the first hint (the time to share of a cold file; one bucket each, powers of two).",
    loaded_share_ms_le_16: "Files answered \"loading\" whose second hint, after the host's notice, hit within 16 ms of the first hint (the time to share of a cold file; one bucket each, powers of two).",
    loaded_share_ms_le_32: "Files answered \"loading\" whose second hint, after the host's notice, hit within 32 ms of the first hint (the time to share of a cold file; one bucket each, powers of two).",
    loaded_share_ms_le_64: "Files answered \"loading\" whose second hint, after the host's notice, hit within 64 ms of the first hint (the time to share of a cold file; one bucket each, powers of two).",
    loaded_share_ms_le_128: "Files answered \"loading\" whose second hint, after the host's notice, hit within 128 ms of the first hint (the time to share of a cold file; one bucket each, powers of two).",
    loaded_share_ms_le_256: "Files answered \"loading\" whose second hint, after the host's notice, hit within 256 ms of the first hint (the time to share of a cold file; one bucket each, powers of two).",
    loaded_share_ms_le_512: "Files answered \"loading\" whose second hint, after the host's notice, hit within 512 ms of the first hint (the time to share of a cold file; one bucket each, powers of two).",
    loaded_share_ms_le_1024: "Files answered \"loading\" whose second hint, after the host's notice, hit within 1024 ms of the first hint (the time to share of a cold file; one bucket each, powers of two).",
    loaded_share_ms_over: "Such files shared more than 1024 ms after their first hint.",
    reads_fast: "read(2) calls (or their first run of frames) served by the fast path: one lock, one copy, the table checked after it.",
    opens_settled: "Opens of files needing no hint (answer kept, request pending, miss known, identity unchanged): no path, no fingerprint read.",
    doorbells_rung: "Doorbells rung: writes to the ring device's Doorbell register (ivshmem-doorbell) after NEED_WAKEUP was seen.",
    irqs_received: "Interrupts received on the ring device's vector (the host published while this guest waited).",
    ticks: "Runs of the event work (its timer every event_poll_ms while polling, or an interrupt or a hint after waiting).",
    waits: "Times the event work went to sleep without a timer, waiting for the host's interrupt (GUEST_FLAG_WAITING).",
}

static VALUES: [AtomicU64; COUNT] = [const { AtomicU64::new(0) }; COUNT];

/// Adds `n` to counter `c`.
pub(crate) fn add(c: Counter, n: u64) {
    if let Some(v) = VALUES.get(c as usize) {
        v.fetch_add(n, Ordering::Relaxed);
    }
}

/// Adds one to counter `c`.
pub(crate) fn inc(c: Counter) {
    add(c, 1);
}

/// Counts one hint answered `us` microseconds after it was sent, in the
/// `hint_rtt_us_le_*` bucket of the smallest power of two (at least 64) that
/// is not below it, or in `hint_rtt_us_over`.
pub(crate) fn record_hint_rtt(us: u64) {
    // Buckets 2^6 ..= 2^20, then "over": 16 counters in a row.
    let log = if us <= 64 {
        6
    } else {
        64 - (us - 1).leading_zeros()
    };
    let bucket = (log.saturating_sub(6) as usize).min(15);
    if let Some(v) = VALUES.get(Counter::hint_rtt_us_le_64 as usize + bucket) {
        v.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counts one file answered "loading" and shared `ms` milliseconds after
/// its first hint, in the `loaded_share_ms_le_*` bucket of the smallest
/// power of two not below it, or in `loaded_share_ms_over`.
pub(crate) fn record_loaded_share(ms: u64) {
    // Buckets 2^0 ..= 2^10, then "over": 12 counters in a row.
    let log = if ms <= 1 {
        0
    } else {
        64 - (ms - 1).leading_zeros()
    };
    let bucket = (log as usize).min(11);
    if let Some(v) = VALUES.get(Counter::loaded_share_ms_le_1 as usize + bucket) {
        v.fetch_add(1, Ordering::Relaxed);
    }
}

/// Reads counter `c`.
#[allow(dead_code)]
pub(crate) fn get(c: Counter) -> u64 {
    VALUES
        .get(c as usize)
        .map_or(0, |v| v.load(Ordering::Relaxed))
}

/// Formats the counter called `name` (a sysfs file name), or `ENOENT`.
pub(crate) fn show(name: &[u8], out: &mut impl Write) -> Result {
    let i = NAMES
        .iter()
        .position(|n| n.as_bytes() == name)
        .ok_or(ENOENT)?;
    let v = VALUES.get(i).map_or(0, |v| v.load(Ordering::Relaxed));
    writeln!(out, "{}", v).map_err(|_| EINVAL)
}

/// Resets every counter (module load: statics survive nothing, but be explicit).
pub(crate) fn reset() {
    for v in VALUES.iter() {
        v.store(0, Ordering::Relaxed);
    }
}

/// The name of counter `i` (its sysfs file name).
pub(crate) fn name(i: usize) -> Option<&'static str> {
    NAMES.get(i).copied()
}
