//! A pool larger than its filesystem: writing a page the filesystem cannot
//! back would kill the agent with SIGBUS. The store reserves memory before
//! it writes, so a full filesystem is a full pool.
//!
//! The filesystem is a real 8 MiB tmpfs mounted for the test (it needs
//! root, as the selftest machines have; without it the test says so and
//! checks nothing).

use std::path::Path;

use vmdedup_host_agent::hostfile::FileAccess;
use vmdedup_host_agent::pool::{PoolBacking, PoolMemory, PoolSpec};
use vmdedup_host_agent::store::{page_hash, FileKey, MapLabel, PageStore, StoreConfig, StoreError};

mod common;
use common::SmallTmpfs;

fn spec(path: &Path, size: u64) -> PoolSpec {
    PoolSpec {
        backing: PoolBacking::File {
            path: path.to_path_buf(),
            access: FileAccess::default(),
        },
        size,
        table_area: 0,
        generation: 7,
    }
}

fn allocated_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

#[test]
fn a_pool_larger_than_its_tmpfs_fills_up_instead_of_faulting() {
    let Some(fs) = SmallTmpfs::mount("pool-space", "8m") else {
        return;
    };
    let path = fs.0.join("pool");
    // 32 MiB of pool on 8 MiB of tmpfs.
    let pool = PoolMemory::create(&spec(&path, 32 << 20)).unwrap();
    // Reserved as the store grows, not up front.
    assert!(allocated_bytes(&path) <= 4 << 20, "reserved up front");
    let mut store = PageStore::new(pool, StoreConfig::default());
    // A VM holds every map: nothing can be evicted to make room.
    store.add_vm(1);
    let mut loaded_pages = 0u64;
    let mut full = false;
    'files: for file in 0u64..64 {
        let key = FileKey {
            dev: 1,
            ino: file + 1,
            size: 64 * 4096,
            mtime_ns: 1,
        };
        let label = MapLabel {
            ns: 1,
            path: format!("f{file}"),
        };
        let id = match store.begin_load(key, label, None, 0) {
            Ok(id) => id,
            Err(StoreError::PoolFull) => {
                full = true;
                break;
            }
            Err(e) => panic!("{e:?}"),
        };
        for p in 0u64..64 {
            // Distinct pages: nothing deduplicates.
            let page = [(file * 64 + p) as u8; 1]
                .iter()
                .copied()
                .chain((file * 64 + p).to_le_bytes())
                .cycle()
                .take(4096)
                .collect::<Vec<u8>>();
            match store.add_page(id, &page_hash(&page), &page, 0) {
                Ok(()) => loaded_pages += 1,
                Err(StoreError::PoolFull) => {
                    store.abort_load(id);
                    full = true;
                    break 'files;
                }
                Err(e) => panic!("{e:?}"),
            }
        }
        store.finish_load(id).unwrap();
        store.hold(1, id).unwrap();
    }
    assert!(
        full,
        "{loaded_pages} distinct pages fit in an 8 MiB tmpfs? {}",
        allocated_bytes(&path)
    );
    assert!(store.counts().filesystem_full > 0);
    assert!(store.pool().reserve_failures() > 0);
    // Most of the filesystem was used before it was full.
    assert!(loaded_pages * 4096 >= 4 << 20, "{loaded_pages} pages");
    assert!(allocated_bytes(&path) <= 8 << 20);
    // Once the VM lets go, the room its maps took is reused.
    for id in store.held_by(1) {
        store.release(1, id, 0);
    }
    let key = FileKey {
        dev: 2,
        ino: 1,
        size: 4096,
        mtime_ns: 1,
    };
    let label = MapLabel {
        ns: 1,
        path: "after".into(),
    };
    let id = store.begin_load(key, label, None, 0).unwrap();
    let page = vec![0xa5u8; 4096];
    store.add_page(id, &page_hash(&page), &page, 0).unwrap();
    store.finish_load(id).unwrap();
}
