//! Building a hint service on a memfd pool and talking to it as a guest would.

use std::path::Path;

use vmdedup_host_agent::namespace::{GuestIdentity, Namespace, NamespaceConfig};
use vmdedup_host_agent::pool::{PoolBacking, PoolMemory, PoolSpec};
use vmdedup_host_agent::ring::Hint;
use vmdedup_host_agent::service::{HintResult, HintService, ServiceConfig};
use vmdedup_host_agent::store::{PageStore, StoreConfig, VmId};
use vmdedup_protocol::control::MissReason;
use vmdedup_protocol::pool::{PoolGeometry, TableHeader, TableRef, TABLE_HEADER_SIZE};

/// `len` bytes that differ from page to page and from seed to seed.
pub fn content(seed: u32, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2654435761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Namespace `name` (`id`) served from `dir` to `domains`, with no options set.
pub fn ns_config(name: &str, id: u32, dir: &Path, domains: &[&str]) -> NamespaceConfig {
    NamespaceConfig {
        name: name.into(),
        id,
        dir: dir.to_path_buf(),
        domains: domains.iter().map(|d| d.to_string()).collect(),
        mtime_granularity_ns: 1,
        require_fingerprint: false,
        warm_at_start: false,
        always_loading: false,
    }
}

/// Pool memory on a memfd of `size` bytes with a `table_area` of frame tables.
pub fn memfd_pool(size: u64, table_area: u64, generation: u64) -> PoolMemory {
    PoolMemory::create(&PoolSpec {
        backing: PoolBacking::Memfd,
        size,
        table_area,
        generation,
    })
    .unwrap()
}

/// A service over `namespaces` on a 4 MiB memfd pool (64 KiB of tables),
/// with VMs 1 "vm1" and 2 "vm2" in domain default.
pub fn service_over(
    namespaces: Vec<Namespace>,
    generation: u64,
    store: StoreConfig,
    cfg: ServiceConfig,
) -> HintService {
    let pool = memfd_pool(4 << 20, 64 << 10, generation);
    let svc = HintService::new(PageStore::new(pool, store), namespaces, cfg);
    svc.add_vm(1, "vm1", "default").unwrap();
    svc.add_vm(2, "vm2", "default").unwrap();
    svc
}

/// The size and mtime a guest whose copy is the host file `p` sends.
pub fn ident(p: &Path) -> GuestIdentity {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).unwrap();
    GuestIdentity {
        size: m.size(),
        mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        fingerprint: None,
    }
}

/// A hint for `path` of namespace `ns`, by a guest whose copy is `id`.
pub fn req(ns: u32, path: &[u8], id: GuestIdentity) -> Hint<'_> {
    Hint {
        request_id: 0,
        namespace_id: ns,
        path,
        file_size: id.size,
        mtime_ns: id.mtime_ns,
        ctime_ns: 0,
        inode: 0,
        first_page: 0,
        page_count: 0,
        fingerprint: id.fingerprint,
        notify_loaded: false,
        pool_only: false,
    }
}

/// Hints at most `tries` times until the answer is no longer "loading",
/// running queued loads in between; returns every answer.
pub fn hint_until_done(
    svc: &HintService,
    vm: VmId,
    ns: u32,
    path: &[u8],
    id: GuestIdentity,
    tries: usize,
) -> Vec<HintResult> {
    let mut seen = Vec::new();
    for _ in 0..tries {
        let r = svc.answer(vm, &req(ns, path, id));
        seen.push(r);
        if r != HintResult::Miss(MissReason::Loading) {
            return seen;
        }
        svc.load_pending();
    }
    panic!("still loading: {seen:?}");
}

/// Whether `r` is a hit.
pub fn is_hit(r: &HintResult) -> bool {
    matches!(r, HintResult::Hit(_))
}

/// The table of a hit; panics on anything else.
pub fn expect_hit(r: HintResult) -> TableRef {
    match r {
        HintResult::Hit(l) => l,
        other => panic!("expected a hit, got {other:?}"),
    }
}

/// What a guest does with a hit: validates the table and reads the file
/// out of the frames; returns the bytes and the frames they came from.
pub fn guest_read(svc: &HintService, loc: &TableRef) -> (Vec<u8>, Vec<u32>) {
    svc.inspect_store(|s| {
        let pool = s.pool().bytes();
        let hb: [u8; 128] = pool[..128].try_into().unwrap();
        let g = PoolGeometry::from_header_bytes(&hb, pool.len() as u64).unwrap();
        let (start, len) = g.table_span(loc).unwrap();
        let off = loc.offset as usize;
        let th: [u8; TABLE_HEADER_SIZE] = pool[off..off + TABLE_HEADER_SIZE].try_into().unwrap();
        let mut v = g
            .check_table_header(loc, &TableHeader::from_le_bytes(&th))
            .unwrap();
        let fb = &pool[start as usize..(start + len) as usize];
        v.update(fb).unwrap();
        v.finish().unwrap();
        let mut out = Vec::new();
        let mut frames = Vec::new();
        for i in 0..loc.page_count {
            let f = vmdedup_protocol::pool::frame_at(fb, i).unwrap();
            frames.push(f);
            let o = g.frame_offset(f).unwrap() as usize;
            out.extend_from_slice(&pool[o..o + 4096]);
        }
        out.truncate(loc.file_size as usize);
        (out, frames)
    })
}
