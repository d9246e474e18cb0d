//! Hint counters and latency histograms, and the `status --json` document.
//!
//! Counters are relaxed atomics: pollers bump them per hint without a lock.
//!
//! # `status --json` keys (stable)
//! ```text
//! pool_generation   u64  generation of the pool file
//! frames_total      u64  frames in the pool
//! frames_budget     u64  frames the memory budget allows
//! frames_used       u64  frames holding data
//! file_maps         u64  file maps in the pool (loading, live or being revoked)
//! pages_mapped      u64  sum over VMs of the pages of the file maps they hold
//! bytes_saved       u64  max(0, pages_mapped - frames_used) * 4096
//! hints             u64  hints answered
//! hits              u64  hints answered with a file map
//! misses            {identity_mismatch, not_found, not_regular, bad_path,
//!                    no_namespace, loading, pool_full, too_large, cut_off,
//!                    io_error, over_quota: u64}
//! hint_latency_us   {p50, p99: u64}  time the agent took to answer, upper
//!                                    bucket bounds (buckets grow by 1/4 octave)
//! vms               [ {name, domain, cut_off: bool, maps_held, revocations_pending,
//!                      pages_mapped, hints, hits, misses {...}, hint_latency_us {...}} ]
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use vmdedup_protocol::control::{HintCounters, MissCounts, MissReason, PoolFigures, StatusReport};
use vmdedup_protocol::pool::FRAME_SIZE;

const SUB: usize = 4;
const BUCKETS: usize = 40 * SUB;

/// A latency histogram in microseconds with quarter-octave buckets, and
/// the sum of its samples.
#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: Box<[AtomicU64]>,
    sum_us: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
        }
    }
}

/// The upper bounds, in microseconds, of the cumulative buckets the
/// metrics endpoint exports: powers of two from 4 µs to about 4.2 s. Each is
/// a boundary of the quarter-octave buckets (a sample of `us` whole
/// microseconds is below `2^k` exactly when its bucket ends below it), so the
/// exported counts are exact, not interpolated.
pub const EXPORTED_BOUNDS_US: [u64; 21] = {
    let mut b = [0u64; 21];
    let mut i = 0;
    while i < b.len() {
        b[i] = 1 << (i + 2);
        i += 1;
    }
    b
};

/// A histogram read once, as the metrics endpoint exports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LatencyBuckets {
    /// Samples below each of [`EXPORTED_BOUNDS_US`] (cumulative).
    pub below: [u64; EXPORTED_BOUNDS_US.len()],
    /// Every sample (the `+Inf` bucket and `_count`).
    pub count: u64,
    /// Sum of the samples, microseconds.
    pub sum_us: u64,
}

fn bucket_of(us: u64) -> usize {
    if us < SUB as u64 {
        return us as usize;
    }
    let octave = 63 - us.leading_zeros() as usize; // >= 2
    let sub = ((us >> (octave - 2)) & 3) as usize;
    (octave * SUB + sub).min(BUCKETS - 1)
}

fn bucket_upper(b: usize) -> u64 {
    if b < 2 * SUB {
        // Buckets SUB..2*SUB are never used (octaves start at 2).
        return b.min(SUB - 1) as u64;
    }
    let octave = b / SUB;
    let sub = (b % SUB) as u64;
    ((4 + sub + 1) << (octave - 2)) - 1
}

impl LatencyHistogram {
    /// Records one sample.
    pub fn record(&self, us: u64) {
        self.buckets[bucket_of(us)].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// The cumulative counts at [`EXPORTED_BOUNDS_US`], read bucket by
    /// bucket once (so `count` is the sum of the same reads, whatever is
    /// recorded meanwhile).
    pub fn exported(&self) -> LatencyBuckets {
        let mut out = LatencyBuckets {
            sum_us: self.sum_us.load(Ordering::Relaxed),
            ..LatencyBuckets::default()
        };
        for (b, c) in self.buckets.iter().enumerate() {
            let n = c.load(Ordering::Relaxed);
            out.count += n;
            // Every value of bucket `b` is at most bucket_upper(b).
            for (i, bound) in EXPORTED_BOUNDS_US.iter().enumerate() {
                if bucket_upper(b) < *bound {
                    out.below[i] += n;
                }
            }
        }
        out
    }

    /// The `pct`-th percentile (0..=100), as a bucket's upper bound; 0 when empty.
    pub fn percentile(&self, pct: u64) -> u64 {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0;
        }
        let rank = (total * pct.min(100)).div_ceil(100).max(1);
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return bucket_upper(i);
            }
        }
        bucket_upper(BUCKETS - 1)
    }
}

/// Counters of one VM or of the whole agent.
#[derive(Debug, Default)]
pub struct HintStats {
    hints: AtomicU64,
    hits: AtomicU64,
    misses: [AtomicU64; MissReason::ALL.len()],
    latency: LatencyHistogram,
}

fn reason_index(r: MissReason) -> usize {
    MissReason::ALL
        .iter()
        .position(|x| *x == r)
        .unwrap_or(MissReason::ALL.len() - 1)
}

impl HintStats {
    /// Records one answered hint: `None` for a hit.
    pub fn record(&self, miss: Option<MissReason>, latency_us: u64) {
        self.hints.fetch_add(1, Ordering::Relaxed);
        match miss {
            None => self.hits.fetch_add(1, Ordering::Relaxed),
            Some(r) => self.misses[reason_index(r)].fetch_add(1, Ordering::Relaxed),
        };
        self.latency.record(latency_us);
    }

    /// Its hint latency histogram.
    pub fn latency(&self) -> &LatencyHistogram {
        &self.latency
    }

    /// A plain copy (`pages_mapped` is filled in by the caller).
    pub fn snapshot(&self) -> HintCounters {
        let mut misses = MissCounts::default();
        for (i, r) in MissReason::ALL.iter().enumerate() {
            *misses.get_mut(*r) = self.misses[i].load(Ordering::Relaxed);
        }
        HintCounters {
            hints: self.hints.load(Ordering::Relaxed),
            hits: self.hits.load(Ordering::Relaxed),
            misses,
            pages_mapped: 0,
            hint_latency_us_p50: self.latency.percentile(50),
            hint_latency_us_p99: self.latency.percentile(99),
        }
    }
}

/// All counters of the agent.
#[derive(Debug, Default)]
pub struct Stats {
    /// Over all VMs.
    pub total: HintStats,
    per_vm: RwLock<BTreeMap<u32, Arc<HintStats>>>,
}

impl Stats {
    /// The counters of VM `vm` (created on first use).
    pub fn vm(&self, vm: u32) -> Arc<HintStats> {
        if let Some(s) = self
            .per_vm
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&vm)
        {
            return s.clone();
        }
        self.per_vm
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(vm)
            .or_default()
            .clone()
    }

    /// Records one answered hint of `vm`.
    pub fn record(&self, vm: u32, miss: Option<MissReason>, latency_us: u64) {
        self.total.record(miss, latency_us);
        self.vm(vm).record(miss, latency_us);
    }
}

/// `max(0, pages_mapped - frames_used) * 4096`.
pub fn bytes_saved(pages_mapped: u64, frames_used: u64) -> u64 {
    pages_mapped
        .saturating_sub(frames_used)
        .saturating_mul(FRAME_SIZE)
}

fn counters_json(c: &HintCounters) -> serde_json::Map<String, serde_json::Value> {
    let mut o = serde_json::Map::new();
    o.insert("pages_mapped".into(), c.pages_mapped.into());
    o.insert("hints".into(), c.hints.into());
    o.insert("hits".into(), c.hits.into());
    let misses: serde_json::Map<String, serde_json::Value> = c
        .misses
        .by_reason()
        .map(|(r, n)| (r.key().to_string(), n.into()))
        .collect();
    o.insert("misses".into(), misses.into());
    o.insert(
        "hint_latency_us".into(),
        serde_json::json!({ "p50": c.hint_latency_us_p50, "p99": c.hint_latency_us_p99 }),
    );
    o
}

/// One VM as `status --json` lists it under `vms`, and `vms --json` prints it.
pub fn vm_json(v: &vmdedup_protocol::control::VmReport) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    m.insert("name".into(), v.name.as_str().into());
    m.insert("domain".into(), v.domain.as_str().into());
    m.insert("cut_off".into(), v.cut_off.into());
    m.insert("maps_held".into(), v.maps_held.into());
    m.insert("revocations_pending".into(), v.revocations_pending.into());
    m.extend(counters_json(&v.counters));
    serde_json::Value::Object(m)
}

/// Adds each VM's `ring` object (device and wake-ups, see
/// [`vmdedup_protocol::control::RingReport`]) to a `status --json`
/// document's `vms`.
pub fn add_rings_json(
    doc: &mut serde_json::Value,
    rings: &[vmdedup_protocol::control::RingReport],
) {
    let Some(vms) = doc.get_mut("vms").and_then(|v| v.as_array_mut()) else {
        return;
    };
    for v in vms {
        let Some(name) = v.get("name").and_then(|n| n.as_str()).map(str::to_string) else {
            continue;
        };
        if let Some(g) = rings.iter().find(|g| g.name.as_str() == name) {
            v["ring"] = serde_json::json!({
                "device": if g.doorbell { "ivshmem-doorbell" } else { "ivshmem-plain" },
                "connected": g.connected,
                "guest_rings": g.guest_rings,
                "doorbells": g.doorbells,
                "interrupts": g.interrupts,
            });
        }
    }
}

/// A pool's figures, as `status --json` shows them for the host and for
/// each domain.
fn pool_json(p: &PoolFigures) -> serde_json::Map<String, serde_json::Value> {
    let mut o = serde_json::Map::new();
    o.insert("pool_generation".into(), p.generation.into());
    o.insert("frames_total".into(), p.frames_total.into());
    o.insert("frames_budget".into(), p.frames_budget.into());
    o.insert("frames_used".into(), p.frames_used.into());
    o.insert("file_maps".into(), p.file_maps.into());
    o.insert("bytes_saved".into(), p.bytes_saved.into());
    o
}

/// The documented `status --json` document of a status report.
pub fn status_json(r: &StatusReport) -> serde_json::Value {
    let mut o = pool_json(&r.pool);
    o.extend(counters_json(&r.counters));
    let vms: Vec<serde_json::Value> = r.vms.iter().map(vm_json).collect();
    o.insert("vms".into(), vms.into());
    let domains: Vec<serde_json::Value> = r
        .domains
        .iter()
        .map(|d| {
            let mut o = pool_json(&d.pool);
            o.insert("name".into(), d.name.as_str().into());
            o.insert("vms".into(), d.vms.into());
            o.insert("filesystem_full".into(), d.filesystem_full.into());
            serde_json::Value::Object(o)
        })
        .collect();
    o.insert("domains".into(), domains.into());
    serde_json::Value::Object(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_cover_their_samples() {
        let mut last = 0;
        for us in 0..100_000u64 {
            let b = bucket_of(us);
            assert!(b >= last);
            last = b;
            assert!(
                bucket_upper(b) >= us,
                "{us} in bucket {b} up to {}",
                bucket_upper(b)
            );
            if b > 0 {
                assert!(bucket_upper(b - 1) < us);
            }
        }
    }

    #[test]
    fn percentiles() {
        let h = LatencyHistogram::default();
        assert_eq!(h.percentile(50), 0);
        for _ in 0..98 {
            h.record(10);
        }
        h.record(1000);
        h.record(1000);
        assert_eq!(h.percentile(50), bucket_upper(bucket_of(10)));
        assert_eq!(h.percentile(99), bucket_upper(bucket_of(1000)));
        assert!(bucket_upper(bucket_of(1000)) < 1000 * 5 / 4);
    }

    #[test]
    fn exported_buckets_count_samples_below_each_bound() {
        let h = LatencyHistogram::default();
        let samples = [
            0u64, 3, 4, 5, 7, 8, 100, 127, 128, 129, 4_000_000, 9_000_000,
        ];
        for us in samples {
            h.record(us);
        }
        let e = h.exported();
        assert_eq!(e.count, samples.len() as u64);
        assert_eq!(e.sum_us, samples.iter().sum::<u64>());
        for (i, bound) in EXPORTED_BOUNDS_US.iter().enumerate() {
            let want = samples.iter().filter(|&&s| s < *bound).count() as u64;
            assert_eq!(e.below[i], want, "below {bound}");
        }
    }

    /// The documented keys, each with its own value: the pool figures of
    /// the host and of each domain, the counters, the VMs.
    #[test]
    fn status_json_keeps_its_keys_and_values() {
        let r = StatusReport::sample();
        let c = serde_json::json!({
            "pages_mapped": 23, "hints": 20, "hits": 21,
            "misses": {
                "identity_mismatch": 0, "not_found": 0, "not_regular": 0, "bad_path": 0,
                "no_namespace": 0, "loading": 22, "pool_full": 0, "too_large": 0,
                "cut_off": 0, "io_error": 0, "over_quota": 200,
            },
            "hint_latency_us": { "p50": 24, "p99": 25 },
        });
        let mut vm = serde_json::json!({
            "name": "vm1", "domain": "d", "cut_off": true, "maps_held": 26,
            "revocations_pending": 27,
        });
        let mut want = serde_json::json!({
            "pool_generation": 1, "frames_total": 300, "frames_budget": 3, "frames_used": 4,
            "file_maps": 5, "bytes_saved": 6,
            "domains": [{
                "name": "d", "pool_generation": 11, "frames_total": 12, "frames_budget": 13,
                "frames_used": 14, "file_maps": 15, "bytes_saved": 16, "vms": 1,
                "filesystem_full": 17,
            }],
        });
        for o in [&mut vm, &mut want] {
            o.as_object_mut()
                .unwrap()
                .extend(c.as_object().unwrap().clone());
        }
        want["vms"] = serde_json::json!([vm]);
        assert_eq!(status_json(&r), want);
    }

    /// A reason's key is the name of its counter's field.
    #[test]
    fn miss_keys_are_the_field_names() {
        let mut m = MissCounts::default();
        for (i, r) in MissReason::ALL.into_iter().enumerate() {
            *m.get_mut(r) = i as u64 + 1;
        }
        let fields = serde_json::to_value(m).unwrap();
        for (r, n) in m.by_reason() {
            assert_eq!(fields[r.key()], n, "{r:?}");
        }
        assert_eq!(fields.as_object().unwrap().len(), MissReason::ALL.len());
    }

    #[test]
    fn bytes_saved_is_never_negative() {
        assert_eq!(bytes_saved(3, 5), 0);
        assert_eq!(bytes_saved(5, 3), 2 * 4096);
    }
}
