//! Property tests of the control-frame decoder: nothing decodes to a panic,
//! every well-formed message round-trips, and every damaged frame is refused.
#![cfg(feature = "control")]

use proptest::prelude::*;
use vmdedup_protocol::control::*;

fn name() -> impl Strategy<Value = Name> {
    "[a-z0-9._-]{0,64}".prop_map(|s| bounded_str(&s))
}

fn path() -> impl Strategy<Value = RelPath> {
    "[ -~]{0,600}".prop_map(|s| bounded_str(&s))
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        Just(Request::Status),
        Just(Request::Vms),
        Just(Request::Namespaces),
        (name(), any::<u32>(), any::<u16>()).prop_map(|(ns, offset, limit)| Request::Files {
            ns,
            offset,
            limit
        }),
        (name(), path()).prop_map(|(ns, path)| Request::Warm { ns, path }),
        (name(), path()).prop_map(|(ns, path)| Request::Evict { ns, path }),
        (name(), name()).prop_map(|(name, domain)| Request::VmAdd { name, domain }),
        name().prop_map(|name| Request::VmReinstate { name }),
        name().prop_map(|name| Request::VmRemove { name }),
        name().prop_map(|name| Request::VmAttachment { name }),
    ]
}

fn attachment() -> impl Strategy<Value = Response> {
    (name(), name(), path(), any::<u64>(), path(), any::<u64>()).prop_map(
        |(name, domain, ring_path, ring_size, pool_path, pool_size)| {
            Response::VmAttachment(AttachmentReport {
                name,
                domain,
                ring_path,
                ring_size,
                pool_path,
                pool_size,
            })
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = Request::decode(&bytes);
        let _ = Response::decode(&bytes);
        let _ = Request::decode_body(&bytes);
        let _ = Response::decode_body(&bytes);
    }

    #[test]
    fn valid_header_random_payload_never_panics(payload in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut f = ((payload.len() + 2) as u32).to_le_bytes().to_vec();
        f.extend_from_slice(&CONTROL_VERSION.to_le_bytes());
        f.extend_from_slice(&payload);
        let _ = Request::decode(&f);
        let _ = Response::decode(&f);
    }

    #[test]
    fn requests_round_trip_and_damage_is_refused(req in request(), cut in any::<usize>(), junk in any::<u8>()) {
        let mut buf = vec![0u8; MAX_FRAME_LEN];
        let n = req.encode(&mut buf).unwrap();
        let frame = &buf[..n];
        prop_assert_eq!(Request::decode(frame), Ok(req.clone()));
        // truncated anywhere
        let cut = cut % n;
        prop_assert!(Request::decode(&frame[..cut]).is_err());
        // one byte too many
        let mut longer = frame.to_vec();
        longer.push(junk);
        prop_assert_eq!(Request::decode(&longer), Err(ControlError::TrailingBytes));
        // another version
        let mut other = frame.to_vec();
        other[4] ^= 0xff;
        prop_assert!(matches!(Request::decode(&other), Err(ControlError::Version(_))));
    }

    #[test]
    fn attachments_round_trip_and_damage_is_refused(resp in attachment(), cut in any::<usize>(), junk in any::<u8>()) {
        let mut buf = vec![0u8; MAX_FRAME_LEN];
        let n = resp.encode(&mut buf).unwrap();
        let frame = &buf[..n];
        prop_assert_eq!(Response::decode(frame), Ok(resp.clone()));
        prop_assert!(Response::decode(&frame[..cut % n]).is_err());
        let mut longer = frame.to_vec();
        longer.push(junk);
        prop_assert_eq!(Response::decode(&longer), Err(ControlError::TrailingBytes));
    }

    #[test]
    fn a_damaged_attachment_never_panics(resp in attachment(), at in any::<usize>(), byte in any::<u8>()) {
        let mut buf = vec![0u8; MAX_FRAME_LEN];
        let n = resp.encode(&mut buf).unwrap();
        let mut frame = buf[..n].to_vec();
        let at = FRAME_HEADER_LEN + at % (n - FRAME_HEADER_LEN);
        frame[at] = byte;
        let _ = Response::decode(&frame);
    }
}

/// Messages added later are appended: the ones older clients and agents
/// send keep their bytes.
#[test]
fn older_messages_keep_their_encoding() {
    let mut buf = vec![0u8; MAX_FRAME_LEN];
    let name: Name = bounded_str("vm1");
    for (msg, body) in [
        (Request::Status, vec![0u8]),
        (Request::Vms, vec![1]),
        (
            Request::VmAdd {
                name: name.clone(),
                domain: bounded_str(""),
            },
            vec![6, 3, b'v', b'm', b'1', 0],
        ),
        (
            Request::VmReinstate { name: name.clone() },
            vec![7, 3, b'v', b'm', b'1'],
        ),
        (
            Request::VmRemove { name: name.clone() },
            vec![8, 3, b'v', b'm', b'1'],
        ),
        (
            Request::VmAttachment { name: name.clone() },
            vec![9, 3, b'v', b'm', b'1'],
        ),
    ] {
        let n = msg.encode(&mut buf).unwrap();
        assert_eq!(&buf[FRAME_HEADER_LEN..n], &body[..], "{msg:?}");
        assert_eq!(Request::decode(&buf[..n]), Ok(msg));
    }
    let removed = Response::VmRemoved {
        name,
        maps_released: 2,
    };
    let n = removed.encode(&mut buf).unwrap();
    assert_eq!(&buf[FRAME_HEADER_LEN..n], &[9, 3, b'v', b'm', b'1', 2]);
}

#[test]
fn oversized_length_is_refused_before_reading() {
    assert_eq!(
        frame_body_len(u32::MAX.to_le_bytes()),
        Err(ControlError::Oversized(u32::MAX as u64))
    );
    assert_eq!(
        frame_body_len(((MAX_FRAME_LEN - 4) as u32).to_le_bytes()),
        Ok(MAX_FRAME_LEN - 4)
    );
    assert!(frame_body_len(((MAX_FRAME_LEN - 3) as u32).to_le_bytes()).is_err());
    assert_eq!(frame_body_len([1, 0, 0, 0]), Err(ControlError::Truncated));
}

#[test]
fn largest_messages_fit_in_one_frame() {
    let full_name: Name = bounded_str(&"n".repeat(MAX_NAME));
    let full_path: RelPath = bounded_str(&"p".repeat(MAX_PATH));
    let counters = HintCounters {
        hints: u64::MAX,
        hits: u64::MAX,
        misses: MissCounts {
            identity_mismatch: u64::MAX,
            not_found: u64::MAX,
            not_regular: u64::MAX,
            bad_path: u64::MAX,
            no_namespace: u64::MAX,
            loading: u64::MAX,
            pool_full: u64::MAX,
            too_large: u64::MAX,
            cut_off: u64::MAX,
            io_error: u64::MAX,
            over_quota: u64::MAX,
        },
        pages_mapped: u64::MAX,
        hint_latency_us_p50: u64::MAX,
        hint_latency_us_p99: u64::MAX,
    };
    let vm = VmReport {
        name: full_name.clone(),
        domain: full_name.clone(),
        cut_off: true,
        maps_held: u32::MAX,
        revocations_pending: u32::MAX,
        counters,
    };
    let mut vms = heapless::Vec::new();
    while vms.push(vm.clone()).is_ok() {}
    let domain = DomainReport {
        name: full_name.clone(),
        pool_generation: u64::MAX,
        frames_total: u64::MAX,
        frames_budget: u64::MAX,
        frames_used: u64::MAX,
        file_maps: u64::MAX,
        bytes_saved: u64::MAX,
        vms: u32::MAX,
    };
    let mut domains = heapless::Vec::new();
    while domains.push(domain.clone()).is_ok() {}
    let status = Response::Status(StatusReport {
        pool_generation: u64::MAX,
        frames_total: u64::MAX,
        frames_budget: u64::MAX,
        frames_used: u64::MAX,
        file_maps: u64::MAX,
        bytes_saved: u64::MAX,
        counters,
        vms: vms.clone(),
        domains,
    });
    let file = FileReport {
        domain: full_name.clone(),
        ns: full_name.clone(),
        path: full_path.clone(),
        size: u64::MAX,
        pages: u32::MAX,
        holders: u32::MAX,
        revoking: true,
    };
    let mut files = heapless::Vec::new();
    while files.push(file.clone()).is_ok() {}
    let listing = Response::Files {
        total: u64::MAX,
        files,
    };
    let mut buf = vec![0u8; MAX_FRAME_LEN];
    let attachment = Response::VmAttachment(AttachmentReport {
        name: full_name.clone(),
        domain: full_name.clone(),
        ring_path: full_path.clone(),
        ring_size: u64::MAX,
        pool_path: full_path.clone(),
        pool_size: u64::MAX,
    });
    for msg in [status, Response::Vms(vms), listing, attachment] {
        let n = msg.encode(&mut buf).expect("largest message fits");
        assert_eq!(Response::decode(&buf[..n]), Ok(msg));
    }
    // a buffer that is too small is an error, not a panic
    assert!(Response::error(ErrorCode::Internal, "x")
        .encode(&mut [0u8; 3])
        .is_err());
}
