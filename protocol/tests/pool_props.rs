//! Property tests of the pool decoders a guest runs on bytes it copied out of
//! the pool region: no input makes them panic, and whatever they accept stays
//! inside the region.

use proptest::prelude::*;
use vmdedup_protocol::pool::*;

fn header_bytes() -> impl Strategy<Value = [u8; POOL_HEADER_SIZE]> {
    proptest::collection::vec(any::<u8>(), POOL_HEADER_SIZE).prop_map(|v| {
        let mut a = [0u8; POOL_HEADER_SIZE];
        a.copy_from_slice(&v);
        a
    })
}

/// A valid header with a few fields replaced by arbitrary values, so that
/// the checks behind the prefix are reached too.
fn mutated_header() -> impl Strategy<Value = (PoolHeader, u64)> {
    (
        14u32..24,
        1u64..16,
        any::<u64>(),
        proptest::collection::vec((0usize..9, any::<u64>()), 0..3),
    )
        .prop_map(|(log2, tables, generation, edits)| {
            let size = 1u64 << log2;
            let g = PoolGeometry::plan(size, tables * 4096, generation)
                .unwrap_or_else(|_| PoolGeometry::plan(1 << 24, 4096, generation).unwrap());
            let mut h = g.header();
            for (field, v) in edits {
                match field {
                    0 => h.frame_size = v as u32,
                    1 => h.entry_size = v as u32,
                    2 => h.frame_count = v,
                    3 => h.frame_area_offset = v,
                    4 => h.table_area_offset = v,
                    5 => h.table_area_size = v,
                    6 => h.prefix.header_size = v as u32,
                    7 => h.prefix.region_size = v,
                    _ => h.frame_count = v % 64,
                }
            }
            (h, size)
        })
}

fn check_geometry(g: &PoolGeometry, device_len: u64) -> Result<(), TestCaseError> {
    prop_assert!(g.region_size <= device_len);
    prop_assert!(g.table_area_offset >= HEADER_AREA_SIZE);
    prop_assert!(g.table_area_offset + g.table_area_size <= g.frame_area_offset);
    prop_assert!(g.frame_count > 0 && g.frame_count <= u32::MAX as u64);
    prop_assert!(g.frame_area_offset + g.frame_count * FRAME_SIZE <= g.region_size);
    let last = g.frame_offset((g.frame_count - 1) as u32);
    prop_assert_eq!(
        last,
        Ok(g.frame_area_offset + (g.frame_count - 1) * FRAME_SIZE)
    );
    prop_assert!(g.frame_offset(g.frame_count as u32).is_err());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_header_bytes_decode_without_panic(b in header_bytes(), device_len in any::<u64>()) {
        if let Ok(g) = PoolGeometry::from_header_bytes(&b, device_len) {
            check_geometry(&g, device_len)?;
        }
        prop_assert_eq!(PoolHeader::from_le_bytes(&b).to_le_bytes(), b);
    }

    #[test]
    fn mutated_headers_are_accepted_only_when_in_bounds((h, size) in mutated_header()) {
        if let Ok(g) = PoolGeometry::from_header(&h, size) {
            check_geometry(&g, size)?;
        }
    }

    #[test]
    fn any_table_bytes_verify_without_panic(
        hb in proptest::collection::vec(any::<u8>(), TABLE_HEADER_SIZE),
        frames in proptest::collection::vec(any::<u8>(), 0..80),
        r in any::<(u64, u32, u64, u64, u64)>(),
        near in any::<bool>(),
    ) {
        let g = PoolGeometry::plan(1 << 20, 16 << 10, 7).unwrap();
        let mut h = [0u8; TABLE_HEADER_SIZE];
        h.copy_from_slice(&hb);
        // Half the cases name a table where one may be, so the checks
        // behind the bounds are reached.
        let r = TableRef {
            offset: if near { g.table_area_offset + (r.0 % 256) * 64 } else { r.0 },
            page_count: if near { r.1 % 20 } else { r.1 },
            file_map_id: r.2,
            file_size: if near { (r.1 % 20) as u64 * FRAME_SIZE } else { r.3 },
            map_generation: if near { 7 } else { r.4 },
        };
        if verify_table(&g, &r, &h, &frames).is_ok() {
            let th = TableHeader::from_le_bytes(&h);
            prop_assert_eq!(th.magic, TABLE_MAGIC);
            prop_assert_eq!(frames.len() as u64, r.page_count as u64 * FRAME_ENTRY_SIZE);
            for i in 0..r.page_count {
                let f = frame_at(&frames, i).unwrap();
                prop_assert!(g.frame_offset(f).is_ok());
            }
        }
        let _ = frame_at(&frames, r.page_count);
        let _ = frame_at(&frames, u32::MAX);
    }

    #[test]
    fn verifying_in_chunks_equals_verifying_at_once(
        frames in proptest::collection::vec(0u32..200, 0..40),
        cut in any::<proptest::sample::Index>(),
        flip in proptest::option::of((any::<proptest::sample::Index>(), 1u8..=255)),
    ) {
        let g = PoolGeometry::plan(1 << 20, 16 << 10, 9).unwrap();
        let mut th = TableHeader {
            magic: TABLE_MAGIC,
            file_map_id: 3,
            file_size: frames.len() as u64 * FRAME_SIZE,
            page_count: frames.len() as u32,
            flags: 0,
            pool_generation: 9,
            checksum: 0,
            reserved: [0; 2],
        };
        let mut sum = th.checksum_start();
        let mut fb = Vec::new();
        for f in &frames {
            sum.update_u32(*f);
            fb.extend_from_slice(&f.to_le_bytes());
        }
        th.checksum = sum.finish();
        if let Some((i, x)) = flip {
            if !fb.is_empty() {
                let i = i.index(fb.len());
                fb[i] ^= x;
            }
        }
        let r = TableRef {
            offset: g.table_area_offset,
            page_count: th.page_count,
            file_map_id: 3,
            file_size: th.file_size,
            map_generation: 9,
        };
        let whole = verify_table(&g, &r, &th.to_le_bytes(), &fb);
        let mut v = g.check_table_header(&r, &th).unwrap();
        let c = cut.index(frames.len() + 1) * 4;
        let chunked = v.update(&fb[..c]).and_then(|()| v.update(&fb[c..])).and_then(|()| v.finish());
        prop_assert_eq!(whole, chunked);
        if flip.is_none() || fb.is_empty() {
            prop_assert_eq!(whole, Ok(()));
        }
    }
}

/// A live table of file map `id` in generation `generation`.
fn live_table(id: u64, generation: u64) -> TableHeader {
    TableHeader {
        magic: TABLE_MAGIC,
        file_map_id: id,
        file_size: 3 * 4096,
        page_count: 3,
        flags: 0,
        pool_generation: generation,
        checksum: 0,
        reserved: [0; 2],
    }
}

#[test]
fn a_revoked_or_reused_table_slot_no_longer_describes_the_old_map() {
    let mine = live_table(7, 42);
    assert!(mine.describes(7, 42));
    // Revoked: the host cleared the magic first.
    assert!(!TableHeader { magic: 0, ..mine }.describes(7, 42));
    // The slot was given to another file after every holder acknowledged:
    // live again, with the same magic, but another map's.
    assert!(!live_table(8, 42).describes(7, 42));
    // A new agent wrote a table at the same offset in a new pool generation,
    // possibly with the same id (ids restart with the generation).
    assert!(!live_table(7, 43).describes(7, 42));
}

proptest! {
    /// `describes` holds exactly when the magic, the id and the generation
    /// all match, whatever else the header says.
    #[test]
    fn describes_needs_magic_id_and_generation(
        bytes in proptest::collection::vec(any::<u8>(), TABLE_HEADER_SIZE),
        id in any::<u64>(),
        generation in any::<u64>(),
        keep in any::<(bool, bool, bool)>(),
    ) {
        let mut b = [0u8; TABLE_HEADER_SIZE];
        b.copy_from_slice(&bytes);
        let mut h = TableHeader::from_le_bytes(&b);
        if keep.0 { h.magic = TABLE_MAGIC; }
        if keep.1 { h.file_map_id = id; }
        if keep.2 { h.pool_generation = generation; }
        let expect = h.magic == TABLE_MAGIC && h.file_map_id == id && h.pool_generation == generation;
        prop_assert_eq!(h.describes(id, generation), expect);
    }
}
