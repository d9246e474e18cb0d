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
        Just(Request::VmRings),
    ]
}

fn rings() -> impl Strategy<Value = Response> {
    prop::collection::vec(
        (
            name(),
            any::<(bool, bool, bool)>(),
            any::<u64>(),
            any::<u64>(),
        ),
        0..=MAX_VMS,
    )
    .prop_map(|v| {
        Response::VmRings(
            v.into_iter()
                .map(
                    |(name, (doorbell, connected, guest_rings), doorbells, interrupts)| {
                        RingReport {
                            name,
                            doorbell,
                            connected,
                            guest_rings,
                            doorbells,
                            interrupts,
                        }
                    },
                )
                .collect(),
        )
    })
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
        // Every version decoded, the older one's status decoder included.
        for v in [CONTROL_VERSION_MIN, CONTROL_VERSION] {
            let mut f = ((payload.len() + 2) as u32).to_le_bytes().to_vec();
            f.extend_from_slice(&v.to_le_bytes());
            f.extend_from_slice(&payload);
            let _ = Request::decode(&f);
            let _ = Response::decode(&f);
            let mut status = f.clone();
            status.insert(6, 0);
            status[..4].copy_from_slice(&((payload.len() + 3) as u32).to_le_bytes());
            let _ = Response::decode(&status);
        }
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
    fn attachments_round_trip_and_damage_is_refused(resp in attachment(), cut in any::<usize>(), junk in any::<u8>(), at in any::<usize>(), byte in any::<u8>()) {
        round_trips_and_damage_is_refused(&resp, cut, junk, at, byte)?;
    }

    #[test]
    fn ring_reports_round_trip_and_damage_is_refused(resp in rings(), cut in any::<usize>(), junk in any::<u8>(), at in any::<usize>(), byte in any::<u8>()) {
        round_trips_and_damage_is_refused(&resp, cut, junk, at, byte)?;
    }
}

/// `resp` round-trips; cut at `cut` (modulo its length) or with `junk`
/// after it, it is refused; with the payload byte at `at` set to `byte`, it
/// decodes to something or to an error, never a panic.
fn round_trips_and_damage_is_refused(
    resp: &Response,
    cut: usize,
    junk: u8,
    at: usize,
    byte: u8,
) -> Result<(), TestCaseError> {
    let mut buf = vec![0u8; MAX_FRAME_LEN];
    let n = resp.encode(&mut buf).unwrap();
    let frame = &buf[..n];
    prop_assert_eq!(Response::decode(frame), Ok(resp.clone()));
    prop_assert!(Response::decode(&frame[..cut % n]).is_err());
    let mut longer = frame.to_vec();
    longer.push(junk);
    prop_assert_eq!(Response::decode(&longer), Err(ControlError::TrailingBytes));
    let mut damaged = frame.to_vec();
    damaged[FRAME_HEADER_LEN + at % (n - FRAME_HEADER_LEN)] = byte;
    let _ = Response::decode(&damaged);
    Ok(())
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
        (Request::VmRings, vec![10]),
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

fn counters() -> impl Strategy<Value = HintCounters> {
    (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
        |(hints, hits, pool_full, p99)| HintCounters {
            hints,
            hits,
            misses: MissCounts {
                pool_full,
                ..MissCounts::default()
            },
            pages_mapped: hits / 2,
            hint_latency_us_p50: p99 / 2,
            hint_latency_us_p99: p99,
        },
    )
}

fn domain_report() -> impl Strategy<Value = DomainReport> {
    (name(), any::<[u64; 6]>(), any::<u32>(), any::<u64>()).prop_map(|(name, n, vms, fs)| {
        DomainReport {
            name,
            pool: PoolFigures::from(n),
            vms,
            filesystem_full: fs,
        }
    })
}

fn status_report() -> impl Strategy<Value = StatusReport> {
    let vm = (name(), name(), any::<bool>(), any::<u32>(), counters()).prop_map(
        |(name, domain, cut_off, maps_held, counters)| VmReport {
            name,
            domain,
            cut_off,
            maps_held,
            revocations_pending: maps_held / 3,
            counters,
        },
    );
    (
        any::<[u64; 6]>(),
        counters(),
        proptest::collection::vec(vm, 0..4),
        proptest::collection::vec(domain_report(), 0..5),
    )
        .prop_map(|(n, counters, vms, domains)| StatusReport {
            pool: PoolFigures::from(n),
            counters,
            vms: vms.into_iter().collect(),
            domains: domains.into_iter().collect(),
        })
}

/// What a version 3 build (before `filesystem_full`) encodes: the same
/// fields, in the same order, without the new one.
mod v3 {
    use serde::Serialize;
    use vmdedup_protocol::control::{HintCounters, Name, VmReport, MAX_DOMAINS, MAX_VMS};

    #[derive(Serialize)]
    pub struct DomainReport {
        pub name: Name,
        pub pool_generation: u64,
        pub frames_total: u64,
        pub frames_budget: u64,
        pub frames_used: u64,
        pub file_maps: u64,
        pub bytes_saved: u64,
        pub vms: u32,
    }

    #[derive(Serialize)]
    pub struct StatusReport {
        pub pool_generation: u64,
        pub frames_total: u64,
        pub frames_budget: u64,
        pub frames_used: u64,
        pub file_maps: u64,
        pub bytes_saved: u64,
        pub counters: HintCounters,
        pub vms: heapless::Vec<VmReport, MAX_VMS>,
        pub domains: heapless::Vec<DomainReport, MAX_DOMAINS>,
    }

    /// The version 3 response enum, as far as `Status` (variant 0).
    #[derive(Serialize)]
    pub enum Response {
        Status(StatusReport),
    }
}

/// `r` as a version 3 build encodes `Response::Status(r)`, as a whole frame.
fn v3_status_frame(r: &StatusReport) -> Vec<u8> {
    let old = v3::Response::Status(v3::StatusReport {
        pool_generation: r.pool.generation,
        frames_total: r.pool.frames_total,
        frames_budget: r.pool.frames_budget,
        frames_used: r.pool.frames_used,
        file_maps: r.pool.file_maps,
        bytes_saved: r.pool.bytes_saved,
        counters: r.counters,
        vms: r.vms.clone(),
        domains: r
            .domains
            .iter()
            .map(|d| v3::DomainReport {
                name: d.name.clone(),
                pool_generation: d.pool.generation,
                frames_total: d.pool.frames_total,
                frames_budget: d.pool.frames_budget,
                frames_used: d.pool.frames_used,
                file_maps: d.pool.file_maps,
                bytes_saved: d.pool.bytes_saved,
                vms: d.vms,
            })
            .collect(),
    });
    let mut space = vec![0u8; MAX_FRAME_LEN];
    let payload = postcard::to_slice(&old, &mut space).unwrap().to_vec();
    let mut f = ((payload.len() + 2) as u32).to_le_bytes().to_vec();
    f.extend_from_slice(&3u16.to_le_bytes());
    f.extend_from_slice(&payload);
    f
}

/// `frame` with its version field set to `v`.
fn with_version(frame: &[u8], v: u16) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[4..6].copy_from_slice(&v.to_le_bytes());
    f
}

fn other_response() -> impl Strategy<Value = Response> {
    prop_oneof![
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(files, pages, skipped)| {
            Response::Warmed {
                files,
                pages,
                skipped,
            }
        }),
        (name(), path()).prop_map(|(name, ring_path)| Response::VmAdded { name, ring_path }),
        "[ -~]{0,300}".prop_map(|m| Response::error(ErrorCode::NotFound, &m)),
        (name(), any::<u32>()).prop_map(|(name, maps_released)| Response::VmRemoved {
            name,
            maps_released
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// A status with `filesystem_full` round-trips in this version; for a
    /// version 3 peer it is the bytes a version 3 build writes, and they
    /// decode to the same report with `filesystem_full` 0.
    #[test]
    fn status_round_trips_in_both_versions(r in status_report()) {
        let mut buf = vec![0u8; MAX_FRAME_LEN];
        let msg = Response::Status(r.clone());
        let n = msg.encode(&mut buf).unwrap();
        prop_assert_eq!(Response::decode(&buf[..n]), Ok(msg.clone()));
        let n3 = msg.encode_version(3, &mut buf).unwrap();
        let old = v3_status_frame(&r);
        prop_assert_eq!(&buf[..n3], &old[..]);
        let mut zeroed = r.clone();
        for d in zeroed.domains.iter_mut() {
            d.filesystem_full = 0;
        }
        prop_assert_eq!(Response::decode(&old), Ok(Response::Status(zeroed)));
        // Damaged old frames are refused, never a panic.
        for cut in [0, 1, 5, 6, old.len() / 2, old.len() - 1] {
            prop_assert!(Response::decode(&old[..cut]).is_err());
        }
    }

    /// Every other message is the same bytes in versions 3 and 4, and a
    /// request of either version decodes with its version.
    #[test]
    fn other_messages_are_the_same_in_both_versions(resp in other_response(), req in request()) {
        let mut buf = vec![0u8; MAX_FRAME_LEN];
        let n = resp.encode(&mut buf).unwrap();
        let now = buf[..n].to_vec();
        let n3 = resp.encode_version(3, &mut buf).unwrap();
        prop_assert_eq!(&buf[..n3], &with_version(&now, 3)[..]);
        prop_assert_eq!(Response::decode(&buf[..n3]), Ok(resp.clone()));
        let n = req.encode(&mut buf).unwrap();
        for v in [3u16, CONTROL_VERSION] {
            let f = with_version(&buf[..n], v);
            prop_assert_eq!(Request::decode_body_version(&f[4..]), Ok((req.clone(), v)));
        }
        for v in [0u16, 2, CONTROL_VERSION + 1, u16::MAX] {
            let f = with_version(&buf[..n], v);
            prop_assert_eq!(Request::decode(&f), Err(ControlError::Version(v)));
        }
    }
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
        pool: PoolFigures::from([u64::MAX; 6]),
        vms: u32::MAX,
        filesystem_full: u64::MAX,
    };
    let mut domains = heapless::Vec::new();
    while domains.push(domain.clone()).is_ok() {}
    let status = Response::Status(StatusReport {
        pool: PoolFigures::from([u64::MAX; 6]),
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
        assert_eq!(Response::decode(&buf[..n]), Ok(msg.clone()));
        msg.encode_version(3, &mut buf)
            .expect("largest message fits for a version 3 peer");
    }
    // a buffer that is too small is an error, not a panic
    assert!(Response::error(ErrorCode::Internal, "x")
        .encode(&mut [0u8; 3])
        .is_err());
}

/// A status report is the same bytes, field for field, in both versions,
/// whatever Rust types hold its fields.
#[test]
fn a_status_keeps_its_encoding() {
    let mut buf = vec![0u8; MAX_FRAME_LEN];
    let msg = Response::Status(StatusReport::sample());
    let counters = [20u8, 21, 0, 0, 0, 0, 0, 22, 0, 0, 0, 0, 200, 1, 23, 24, 25];
    let mut head = vec![0u8, 1, 172, 2, 3, 4, 5, 6];
    head.extend_from_slice(&counters);
    head.extend_from_slice(&[1, 3, b'v', b'm', b'1', 1, b'd', 1, 26, 27]);
    head.extend_from_slice(&counters);
    head.extend_from_slice(&[1, 1, b'd', 11, 12, 13, 14, 15, 16, 1]);
    let mut v4 = head.clone();
    v4.push(17);
    let n = msg.encode(&mut buf).unwrap();
    assert_eq!(&buf[FRAME_HEADER_LEN..n], &v4[..]);
    assert_eq!(Response::decode(&buf[..n]), Ok(msg.clone()));
    let n = msg.encode_version(3, &mut buf).unwrap();
    assert_eq!(&buf[FRAME_HEADER_LEN..n], &head[..]);
}

/// The host's figures are the domains' summed (saturating, never a
/// panic), with the first domain's generation; a VM's keep the geometry.
#[test]
fn pool_figures_sum_and_keep_their_geometry() {
    let mut host = PoolFigures::default();
    host.add(&PoolFigures::from([0, 1, 1, 1, 1, 1]));
    host.add(&PoolFigures::from([7, 10, 20, 30, 40, 50]));
    host.add(&PoolFigures::from([9, 100, 200, 300, 400, 500]));
    assert_eq!(host, PoolFigures::from([7, 111, 221, 331, 441, 551]));
    host.add(&PoolFigures::from([u64::MAX; 6]));
    assert_eq!(
        host,
        PoolFigures::from([7, u64::MAX, u64::MAX, u64::MAX, u64::MAX, u64::MAX])
    );
    assert_eq!(
        PoolFigures::from([7, 10, 20, 30, 40, 50]).geometry(),
        PoolFigures::from([7, 10, 20, 0, 0, 0])
    );
}

proptest! {
    /// Pool figures are their six fields in order, alone or in a domain's
    /// report, and round-trip.
    #[test]
    fn pool_figures_are_their_fields_in_order(n in any::<[u64; 6]>(), d in domain_report()) {
        let mut a = [0u8; 256];
        let mut b = [0u8; 256];
        let figures = postcard::to_slice(&PoolFigures::from(n), &mut a).unwrap();
        prop_assert_eq!(&*figures, &*postcard::to_slice(&n, &mut b).unwrap());
        prop_assert_eq!(postcard::from_bytes::<PoolFigures>(figures), Ok(PoolFigures::from(n)));
        let mut buf = vec![0u8; MAX_FRAME_LEN];
        let flat = (&d.name, d.pool.generation, d.pool.frames_total, d.pool.frames_budget,
            d.pool.frames_used, d.pool.file_maps, d.pool.bytes_saved, d.vms, d.filesystem_full);
        let nested = postcard::to_slice(&d, &mut a).unwrap().to_vec();
        prop_assert_eq!(&nested[..], &*postcard::to_slice(&flat, &mut buf).unwrap());
        prop_assert_eq!(postcard::from_bytes::<DomainReport>(&nested), Ok(d));
    }
}

/// Every reason once, each with its own counter, and in the fields' order.
#[test]
fn miss_reasons_each_have_their_counter() {
    let mut m = MissCounts::default();
    for (i, r) in MissReason::ALL.into_iter().enumerate() {
        *m.get_mut(r) = i as u64 + 1;
    }
    let got: Vec<(MissReason, u64)> = m.by_reason().collect();
    let want: Vec<(MissReason, u64)> = MissReason::ALL.into_iter().zip(1..).collect();
    assert_eq!(got, want);
    assert_eq!(m.total(), 66);
    // In field order: postcard writes the fields in order.
    let mut buf = [0u8; 64];
    let bytes = postcard::to_slice(&m, &mut buf).unwrap();
    assert_eq!(&*bytes, &[1u8, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
    let mut keys: Vec<&str> = MissReason::ALL.iter().map(|r| r.key()).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), MissReason::ALL.len());
}
