//! Property tests of the wire codec every shared struct gets from
//! `wire_struct!`: values round-trip through their bytes, any bytes decode
//! (without a panic) and encode back to themselves, the encoding is the
//! `#[repr(C)]` memory layout, and reads or writes outside a buffer do nothing.

use core::fmt::Debug;
use core::mem::size_of;

use proptest::prelude::*;
use vmdedup_protocol::abi::*;
use vmdedup_protocol::pool::{PoolHeader, TableHeader, POOL_HEADER_SIZE, TABLE_HEADER_SIZE};
use vmdedup_protocol::wire::Wire;

fn bytes<const N: usize>() -> impl Strategy<Value = [u8; N]> {
    proptest::collection::vec(any::<u8>(), N).prop_map(|v| {
        let mut a = [0u8; N];
        a.copy_from_slice(&v);
        a
    })
}

/// The bytes `x` occupies in memory.
fn raw<T: Wire>(x: &T) -> &[u8] {
    // SAFETY: every `Wire` struct of the ABI has no padding (asserted where
    // `wire_struct!` declares it), so all `size_of::<T>()` bytes of `x` are
    // initialised; the slice borrows `x` and is only read.
    unsafe { core::slice::from_raw_parts((x as *const T).cast::<u8>(), size_of::<T>()) }
}

/// Decodes `b` as a `T`, checks that it encodes back to `b` and, on a
/// little-endian machine, that the bytes are the struct's memory layout.
fn total<T: Wire + Debug>(b: &[u8]) -> Result<(), TestCaseError> {
    prop_assert_eq!(T::SIZE, size_of::<T>());
    let b = &b[..T::SIZE];
    let x = T::get(b, 0);
    let mut out = vec![0u8; T::SIZE];
    x.put(&mut out, 0);
    prop_assert_eq!(&out[..], b, "{:?}", x);
    if cfg!(target_endian = "little") {
        prop_assert_eq!(raw(&x), b);
    }
    Ok(())
}

/// `get`/`put` at any offset of any buffer: no panic, nothing outside the
/// value's bytes changes, and a value that fits round-trips. (A primitive
/// field that does not fit reads as zero and writes nothing.)
fn bounded<T: Wire + Debug>(buf: &[u8], o: usize) -> Result<(), TestCaseError> {
    let fits = o.checked_add(T::SIZE).is_some_and(|e| e <= buf.len());
    let x = T::get(buf, o);
    let mut copy = buf.to_vec();
    x.put(&mut copy, o);
    prop_assert_eq!(&copy, buf);
    let zero = T::get(&[], 0);
    let mut copy = buf.to_vec();
    zero.put(&mut copy, o);
    let start = o.min(buf.len());
    prop_assert_eq!(&copy[..start], &buf[..start]);
    if fits {
        prop_assert!(copy[o..o + T::SIZE].iter().all(|&c| c == 0));
        prop_assert!(copy[o + T::SIZE..] == buf[o + T::SIZE..]);
        x.put(&mut copy, o);
        prop_assert_eq!(&copy, buf);
    } else if o >= buf.len() {
        prop_assert_eq!(&copy, buf);
    }
    let mut out = vec![0u8; T::SIZE];
    zero.put(&mut out, 0);
    prop_assert!(out.iter().all(|&c| c == 0));
    Ok(())
}

fn prefix() -> impl Strategy<Value = RegionPrefix> {
    any::<(u64, u32, u32, u64, u64)>().prop_map(|p| RegionPrefix {
        magic: p.0,
        version: p.1,
        header_size: p.2,
        region_size: p.3,
        generation: p.4,
    })
}

fn area() -> impl Strategy<Value = RingArea> {
    any::<[u32; 4]>().prop_map(|a| RingArea {
        offset: a[0],
        entries: a[1],
        entry_size: a[2],
        reserved: a[3],
    })
}

fn slots() -> impl Strategy<Value = SlotArea> {
    any::<[u32; 4]>().prop_map(|a| SlotArea {
        offset: a[0],
        count: a[1],
        slot_size: a[2],
        reserved: a[3],
    })
}

fn index_line() -> impl Strategy<Value = IndexLine> {
    (any::<u32>(), bytes::<60>()).prop_map(|(value, pad)| IndexLine { value, pad })
}

fn flags_line() -> impl Strategy<Value = FlagsLine> {
    (any::<u32>(), bytes::<60>()).prop_map(|(flags, reserved)| FlagsLine { flags, reserved })
}

fn ring_header() -> impl Strategy<Value = RingHeader> {
    (
        (
            prefix(),
            any::<(u64, u64)>(),
            [area(), area(), area()],
            slots(),
        ),
        (
            (any::<u64>(), bytes::<8>()),
            [index_line(), index_line(), index_line()],
        ),
        ([index_line(), index_line(), index_line()], flags_line()),
        (flags_line(), index_line(), bytes::<320>()),
    )
        .prop_map(|(a, b, c, d)| RingHeader {
            prefix: a.0,
            host_features: a.1 .0,
            guest_features: a.1 .1,
            sq: a.2[0],
            cq: a.2[1],
            eq: a.2[2],
            slots: a.3,
            host_options: b.0 .0,
            reserved_config: b.0 .1,
            sq_head: b.1[0],
            sq_tail: b.1[1],
            cq_head: b.1[2],
            cq_tail: c.0[0],
            eq_head: c.0[1],
            eq_tail: c.0[2],
            host_flags: c.1,
            guest_flags: d.0,
            guest_attached: d.1,
            reserved: d.2,
        })
}

fn pool_header() -> impl Strategy<Value = PoolHeader> {
    (
        prefix(),
        any::<(u32, u32, u64, u64, u64, u64, u64, u64)>(),
        any::<[u64; 5]>(),
    )
        .prop_map(|(prefix, f, reserved)| PoolHeader {
            prefix,
            frame_size: f.0,
            entry_size: f.1,
            frame_count: f.2,
            frame_area_offset: f.3,
            table_area_offset: f.4,
            table_area_size: f.5,
            revocation_epoch: f.6,
            frames_used: f.7,
            reserved,
        })
}

fn table_header() -> impl Strategy<Value = TableHeader> {
    (
        any::<(u64, u64, u64, u32, u32, u64, u64)>(),
        any::<[u64; 2]>(),
    )
        .prop_map(|(f, reserved)| TableHeader {
            magic: f.0,
            file_map_id: f.1,
            file_size: f.2,
            page_count: f.3,
            flags: f.4,
            pool_generation: f.5,
            checksum: f.6,
            reserved,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn values_round_trip_through_their_bytes(
        p in prefix(), a in area(), s in slots(), il in index_line(), fl in flags_line(),
        h in ring_header(), ph in pool_header(), th in table_header(),
    ) {
        prop_assert_eq!(RegionPrefix::from_le_bytes(&p.to_le_bytes()), p);
        prop_assert_eq!(RingArea::from_le_bytes(&a.to_le_bytes()), a);
        prop_assert_eq!(SlotArea::from_le_bytes(&s.to_le_bytes()), s);
        // No PartialEq on the cache-line types: compare what Debug shows.
        let il2 = IndexLine::from_le_bytes(&il.to_le_bytes());
        prop_assert_eq!(format!("{il2:?}"), format!("{il:?}"));
        let fl2 = FlagsLine::from_le_bytes(&fl.to_le_bytes());
        prop_assert_eq!(format!("{fl2:?}"), format!("{fl:?}"));
        let h2 = RingHeader::from_le_bytes(&h.to_le_bytes());
        prop_assert_eq!(format!("{h2:?}"), format!("{h:?}"));
        prop_assert_eq!(PoolHeader::from_le_bytes(&ph.to_le_bytes()), ph);
        prop_assert_eq!(TableHeader::from_le_bytes(&th.to_le_bytes()), th);
        let l = RingLayout { features: h.host_features, options: h.host_options, sq: h.sq, cq: h.cq, eq: h.eq, slots: h.slots };
        prop_assert_eq!(RingLayout::from_le_bytes(&l.to_le_bytes()), l);
    }

    #[test]
    fn any_bytes_decode_and_encode_back_to_themselves(b in bytes::<1024>()) {
        total::<RegionPrefix>(&b)?;
        total::<RingArea>(&b)?;
        total::<SlotArea>(&b)?;
        total::<IndexLine>(&b)?;
        total::<FlagsLine>(&b)?;
        total::<RingHeader>(&b)?;
        total::<SubmissionEntry>(&b)?;
        total::<CompletionEntry>(&b)?;
        total::<EventEntry>(&b)?;
        total::<PoolHeader>(&b)?;
        total::<TableHeader>(&b)?;
        let mut a = [0u8; 96];
        a.copy_from_slice(&b[..96]);
        // The layout bytes hold `guest_features` at [8, 16) and reserved bytes
        // at [88, 96), which the layout does not carry: the rest (the host's
        // options at [80, 88) included) comes back.
        let mut expect = a;
        expect[8..16].fill(0);
        expect[88..].fill(0);
        prop_assert_eq!(RingLayout::from_le_bytes(&a).to_le_bytes(), expect);
    }

    #[test]
    fn reads_and_writes_outside_a_buffer_do_nothing(
        buf in proptest::collection::vec(any::<u8>(), 0..200),
        o in prop_oneof![0usize..220, any::<usize>(), (0usize..64).prop_map(|d| usize::MAX - d)],
    ) {
        bounded::<u16>(&buf, o)?;
        bounded::<i64>(&buf, o)?;
        bounded::<[u64; 3]>(&buf, o)?;
        bounded::<RegionPrefix>(&buf, o)?;
        bounded::<SubmissionEntry>(&buf, o)?;
        bounded::<CompletionEntry>(&buf, o)?;
        bounded::<EventEntry>(&buf, o)?;
        bounded::<TableHeader>(&buf, o)?;
    }
}

#[test]
fn fields_are_little_endian_at_their_documented_offsets() {
    let p = RegionPrefix {
        magic: RING_MAGIC,
        version: 0x0102_0304,
        header_size: 0,
        region_size: 0,
        generation: 0x1122_3344_5566_7788,
    };
    let b = p.to_le_bytes();
    assert_eq!(&b[prefix_off::MAGIC..][..8], b"VMDDRING");
    assert_eq!(&b[prefix_off::VERSION..][..4], &[4, 3, 2, 1]);
    assert_eq!(b[prefix_off::GENERATION], 0x88);
    let e = SubmissionEntry {
        mtime_ns: -2,
        reserved: [0, 0, 0x0a0b],
        ..Default::default()
    };
    let b = e.to_le_bytes();
    assert_eq!(
        &b[sqe_off::MTIME_NS..][..8],
        &[0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]
    );
    assert_eq!(&b[sqe_off::RESERVED + 16..][..2], &[0x0b, 0x0a]);
    assert_eq!(ring_off::PREFIX, 0);
    assert_eq!(ring_off::GUEST_ATTACHED, 640);
    assert_eq!(ring_off::RESERVED, 704);
    assert_eq!(size_of::<RingHeader>(), RING_HEADER_SIZE as usize);
    assert_eq!(size_of::<PoolHeader>(), POOL_HEADER_SIZE);
    assert_eq!(size_of::<TableHeader>(), TABLE_HEADER_SIZE);
}
