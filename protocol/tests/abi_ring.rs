//! Tests of the ring ABI: encodings round-trip, decoders never panic, layouts
//! the host computes pass the guest's validation, hostile layouts do not.

use proptest::prelude::*;
use vmdedup_protocol::abi::*;

fn sqe() -> impl Strategy<Value = SubmissionEntry> {
    (
        any::<(u64, u16, u16, u32, u32, u32)>(),
        any::<(u64, i64, i64, u64, u64, u32, u32)>(),
        any::<[u64; 3]>(),
    )
        .prop_map(|(a, b, reserved)| SubmissionEntry {
            request_id: a.0,
            opcode: a.1,
            path_len: a.2,
            namespace_id: a.3,
            flags: a.4,
            path_slot: a.5,
            file_size: b.0,
            mtime_ns: b.1,
            ctime_ns: b.2,
            inode: b.3,
            first_page: b.4,
            page_count: b.5,
            reserved0: b.6,
            reserved,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn submission_entries_round_trip(e in sqe()) {
        prop_assert_eq!(SubmissionEntry::from_le_bytes(&e.to_le_bytes()), e);
    }

    #[test]
    fn any_submission_bytes_decode_and_check_without_panic(
        b in proptest::collection::vec(any::<u8>(), 96),
        slots in 0u32..64,
    ) {
        let mut a = [0u8; 96];
        a.copy_from_slice(&b);
        let e = SubmissionEntry::from_le_bytes(&a);
        prop_assert_eq!(e.to_le_bytes(), a);
        match e.check(slots) {
            Ok(PathLocation::Inline { len }) => {
                prop_assert!((1..=SQE_INLINE_PATH_MAX).contains(&len));
                prop_assert_eq!(e.flags & HINT_FLAG_PATH_IN_SLOT, 0);
            }
            Ok(PathLocation::Slot { index, len }) => {
                prop_assert!(index < slots);
                prop_assert!((1..=MAX_PATH_LEN).contains(&len));
            }
            Err(err) => prop_assert_ne!(err.status(), AnswerStatus::Hit),
        }
    }

    #[test]
    fn fingerprints_survive_the_wire_and_text(
        fp in any::<[u8; FINGERPRINT_LEN]>(),
        path_in_slot in any::<bool>(),
    ) {
        let mut e = SubmissionEntry {
            request_id: 9,
            opcode: OP_HINT,
            path_len: 5,
            ..Default::default()
        };
        if path_in_slot {
            e.flags = HINT_FLAG_PATH_IN_SLOT;
        }
        prop_assert_eq!(e.fingerprint(), None);
        e.set_fingerprint(&fp);
        let back = SubmissionEntry::from_le_bytes(&e.to_le_bytes());
        prop_assert_eq!(back.fingerprint(), Some(fp));
        prop_assert!(back.check(4).is_ok());
        prop_assert_eq!(back.flags & HINT_FLAG_PATH_IN_SLOT != 0, path_in_slot);
        let text = fingerprint_text(&fp);
        prop_assert_eq!(parse_fingerprint_text(&text), Some(fp));
        prop_assert_eq!(parse_fingerprint_text(&text.to_ascii_uppercase()), Some(fp));
    }

    #[test]
    fn any_fingerprint_text_decodes_without_panic(
        b in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        match parse_fingerprint_text(&b) {
            Some(fp) => {
                prop_assert_eq!(b.len(), FINGERPRINT_TEXT_LEN);
                prop_assert!(b.iter().all(u8::is_ascii_hexdigit));
                prop_assert_eq!(&fingerprint_text(&fp)[..], &b.to_ascii_lowercase()[..]);
            }
            None => prop_assert!(
                b.len() != FINGERPRINT_TEXT_LEN || !b.iter().all(u8::is_ascii_hexdigit)
            ),
        }
    }

    #[test]
    fn completion_and_event_entries_round_trip(
        c in any::<(u64, u16, u16, u32, u64, u64, u64, u64, [u64; 2])>(),
        ev in any::<(u16, u16, u32, u64, u64, u64, u64, [u64; 3])>(),
    ) {
        let c = CompletionEntry {
            request_id: c.0, status: c.1, flags: c.2, page_count: c.3, table_offset: c.4,
            file_map_id: c.5, map_generation: c.6, file_size: c.7, reserved: c.8,
        };
        prop_assert_eq!(CompletionEntry::from_le_bytes(&c.to_le_bytes()), c);
        let ev = EventEntry {
            kind: ev.0, flags: ev.1, notice: ev.2, file_map_id: ev.3, table_offset: ev.4,
            map_generation: ev.5, request_id: ev.6, reserved: ev.7,
        };
        prop_assert_eq!(EventEntry::from_le_bytes(&ev.to_le_bytes()), ev);
    }

    #[test]
    fn computed_layouts_validate_and_stay_in_bounds(
        sq in 0u32..11, cq_extra in 0u32..3, eq in 0u32..10, slots in 0u32..80,
        region_log2 in 14u32..26,
    ) {
        let region = 1u64 << region_log2;
        let s = RingSizes { sq_entries: 1 << sq, cq_entries: 1 << (sq + cq_extra), eq_entries: 1 << eq, path_slots: slots };
        if let Ok(l) = RingLayout::compute(region, &s) {
            prop_assert_eq!(l.validate(region), Ok(()));
            prop_assert_eq!(RingLayout::from_le_bytes(&l.to_le_bytes()), l);
            let last_sqe = l.sqe_offset(u32::MAX) + SQE_SIZE as u64;
            let last_cqe = l.cqe_offset(u32::MAX) + CQE_SIZE as u64;
            let last_eqe = l.eqe_offset(u32::MAX) + EQE_SIZE as u64;
            prop_assert!(last_sqe <= region && last_cqe <= region && last_eqe <= region);
            prop_assert!(l.path_slot_offset(slots).is_none());
            if slots > 0 {
                prop_assert!(l.path_slot_offset(slots - 1).unwrap() + PATH_SLOT_SIZE as u64 <= region);
            }
        }
    }

    #[test]
    fn hostile_layout_bytes_never_validate_out_of_bounds(
        b in proptest::collection::vec(any::<u8>(), 96),
        region_log2 in 12u32..24,
    ) {
        let region = 1u64 << region_log2;
        let mut a = [0u8; 96];
        a.copy_from_slice(&b);
        let l = RingLayout::from_le_bytes(&a);
        if l.validate(region).is_ok() {
            for (off, size) in [
                (l.sqe_offset(u32::MAX), SQE_SIZE),
                (l.cqe_offset(u32::MAX), CQE_SIZE),
                (l.eqe_offset(u32::MAX), EQE_SIZE),
            ] {
                prop_assert!(off + size as u64 <= region);
                prop_assert!(off >= RING_HEADER_SIZE as u64);
            }
        }
    }

    #[test]
    fn check_path_refuses_escapes(p in proptest::collection::vec(any::<u8>(), 0..64)) {
        if check_path(&p).is_ok() {
            prop_assert!(!p.is_empty() && p[0] != b'/' && !p.contains(&0));
            prop_assert!(!p.split(|&c| c == b'/').any(|c| c == b".."));
        }
    }
}

#[test]
fn default_sizes_fit_common_region_sizes() {
    for (size, sq) in [(64u64 << 10, 128u32), (1 << 20, 1024), (16 << 20, 1024)] {
        let s = RingSizes::for_region(size).unwrap();
        assert_eq!(s.sq_entries, sq, "region {size}");
        RingLayout::compute(size, &s).unwrap();
    }
    assert!(RingSizes::for_region(4096).is_none());
}

#[test]
fn entry_checks_give_the_documented_statuses() {
    let ok = SubmissionEntry {
        request_id: 1,
        opcode: OP_HINT,
        path_len: 5,
        ..Default::default()
    };
    assert_eq!(ok.check(0), Ok(PathLocation::Inline { len: 5 }));
    let e = |f: &dyn Fn(&mut SubmissionEntry)| {
        let mut x = ok;
        f(&mut x);
        x.check(4).map_err(|e| e.status())
    };
    assert_eq!(e(&|x| x.opcode = 77), Err(AnswerStatus::Unsupported));
    assert_eq!(e(&|x| x.reserved[2] = 1), Err(AnswerStatus::BadRequest));
    // With the fingerprint flag `reserved` is the fingerprint.
    assert_eq!(
        e(&|x| {
            x.reserved[2] = 1;
            x.flags = HINT_FLAG_FINGERPRINT
        }),
        Ok(PathLocation::Inline { len: 5 })
    );
    // Map operations still refuse the flag.
    let mut op = SubmissionEntry::map_op(1, OP_RELEASE, 7);
    op.flags = HINT_FLAG_FINGERPRINT;
    assert!(op.check_map_op().is_err());
    assert_eq!(e(&|x| x.flags = 1 << 9), Err(AnswerStatus::BadRequest));
    assert_eq!(e(&|x| x.path_len = 0), Err(AnswerStatus::BadRequest));
    assert_eq!(e(&|x| x.path_len = 200), Err(AnswerStatus::BadRequest));
    assert_eq!(e(&|x| x.path_len = 4097), Err(AnswerStatus::PathTooLong));
    assert_eq!(
        e(&|x| {
            x.path_len = 4096;
            x.flags = HINT_FLAG_PATH_IN_SLOT;
            x.path_slot = 3
        }),
        Ok(PathLocation::Slot {
            index: 3,
            len: 4096
        })
    );
    assert_eq!(
        e(&|x| {
            x.flags = HINT_FLAG_PATH_IN_SLOT;
            x.path_slot = 4
        }),
        Err(AnswerStatus::BadRequest)
    );
    for v in 0..=10u16 {
        assert_eq!(AnswerStatus::from_u16(v).map(|s| s as u16), Some(v));
    }
    assert_eq!(AnswerStatus::from_u16(11), None);
    // "Ask again later" keeps the value it had on the wire when it was
    // called PoolFull.
    assert_eq!(AnswerStatus::Loading as u16, 4);
}

#[test]
fn header_offsets_are_on_their_own_cache_lines() {
    let idx = [
        ring_off::SQ_HEAD,
        ring_off::SQ_TAIL,
        ring_off::CQ_HEAD,
        ring_off::CQ_TAIL,
        ring_off::EQ_HEAD,
        ring_off::EQ_TAIL,
        ring_off::HOST_FLAGS,
        ring_off::GUEST_FLAGS,
    ];
    for w in idx.windows(2) {
        assert_eq!(w[1] - w[0], CACHE_LINE as usize);
    }
    assert!(idx
        .iter()
        .all(|&o| o % 64 == 0 && o >= ring_off::CONFIG_END));
}
