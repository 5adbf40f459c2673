//! Unit tests of the UDP wire format: field layout, every rejection, round trips.
use super::*;

fn sample_set() -> Request<'static> {
    Request {
        op: Op::Set,
        client_id: 0x0102_0304_0506_0708,
        request_seq: 0x1112_1314_1516_1718,
        cookie: 0x2122_2324_2526_2728,
        key: "user:42",
        value: b"hello world",
    }
}

fn encoded(req: &Request<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    encode_request(req, &mut out);
    out
}

fn rejected(buf: &[u8]) -> Rejection {
    match parse_request(buf) {
        Err(ParseError::Rejected(r)) => r,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn unaddressable(buf: &[u8]) -> Unaddressable {
    match parse_request(buf) {
        Err(ParseError::Unaddressable(u)) => u,
        other => panic!("expected unaddressable, got {other:?}"),
    }
}

#[test]
fn request_layout_is_as_documented() {
    let buf = encoded(&sample_set());
    assert_eq!(buf.len(), 40 + 7 + 11);
    assert_eq!(&buf[0..2], b"OL");
    assert_eq!(buf[2], 1);
    assert_eq!(buf[3], 2);
    assert_eq!(&buf[4..6], &7u16.to_le_bytes());
    assert_eq!(&buf[6..8], &[0, 0]);
    assert_eq!(&buf[8..16], &[8, 7, 6, 5, 4, 3, 2, 1]);
    assert_eq!(&buf[16..24], &0x1112_1314_1516_1718u64.to_le_bytes());
    assert_eq!(&buf[24..32], &0x2122_2324_2526_2728u64.to_le_bytes());
    assert_eq!(&buf[32..36], &11u32.to_le_bytes());
    assert_eq!(&buf[36..40], &[0, 0, 0, 0]);
    assert_eq!(&buf[40..47], b"user:42");
    assert_eq!(&buf[47..], b"hello world");
}

/// The worked example in `docs/protocol.md`.
#[test]
fn documented_set_example() {
    let hex = "4f4c0102050000008877665544332211010000000000000001020304050607080500000000000000\
               68656c6c6f776f726c64";
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let req = Request {
        op: Op::Set,
        client_id: 0x1122_3344_5566_7788,
        request_seq: 1,
        cookie: 0x0807_0605_0403_0201,
        key: "hello",
        value: b"world",
    };
    assert_eq!(bytes.len(), 50);
    assert_eq!(parse_request(&bytes), Ok(req));
    assert_eq!(encoded(&req), bytes);
    let mut reply = Vec::new();
    encode_response(
        &Response::cookie_required(&req.addressing(), req.cookie),
        &mut reply,
    );
    assert_eq!(&reply[4..6], &[0x97, 0x01]);
}

#[test]
fn request_round_trips_every_op() {
    let cases = [
        Request {
            op: Op::Get,
            value: b"",
            ..sample_set()
        },
        sample_set(),
        Request {
            op: Op::Set,
            key: "k",
            value: b"",
            ..sample_set()
        },
        Request {
            op: Op::Delete,
            value: b"",
            ..sample_set()
        },
        Request {
            op: Op::Ping,
            key: "",
            value: b"",
            ..sample_set()
        },
        Request {
            op: Op::Stats,
            key: "",
            value: b"",
            cookie: 0,
            ..sample_set()
        },
        Request {
            client_id: u64::MAX,
            request_seq: 0,
            ..sample_set()
        },
        Request {
            key: "ключ-日本",
            ..sample_set()
        },
    ];
    for req in cases {
        assert_eq!(req.validate(), Ok(()), "{req:?}");
        let buf = encoded(&req);
        assert_eq!(buf.len(), req.encoded_len());
        assert_eq!(parse_request(&buf), Ok(req));
        let mut fixed = [0u8; MAX_DATAGRAM_SIZE];
        let n = encode_request_into(&req, &mut fixed);
        assert_eq!(&fixed[..n], &buf[..]);
    }
}

#[test]
fn largest_requests_are_accepted() {
    let value = vec![7u8; MAX_VALUE_LEN];
    let req = Request {
        key: "k",
        value: &value,
        ..sample_set()
    };
    let buf = encoded(&req);
    assert_eq!(buf.len(), MAX_DATAGRAM_SIZE);
    assert_eq!(parse_request(&buf), Ok(req));

    let key = "x".repeat(MAX_KEY_LEN);
    let req = Request {
        op: Op::Get,
        key: &key,
        value: b"",
        ..sample_set()
    };
    let buf = encoded(&req);
    assert_eq!(buf.len(), MAX_DATAGRAM_SIZE);
    assert_eq!(parse_request(&buf), Ok(req));
}

#[test]
fn append_encoding_keeps_existing_bytes() {
    let mut out = vec![9, 9];
    encode_request(&sample_set(), &mut out);
    assert_eq!(&out[..2], &[9, 9]);
    assert_eq!(parse_request(&out[2..]), Ok(sample_set()));
}

#[test]
fn short_and_foreign_datagrams_are_unaddressable() {
    let good = encoded(&sample_set());
    assert_eq!(unaddressable(&[]), Unaddressable::TooShort);
    assert_eq!(
        unaddressable(&good[..REQUEST_HEADER_SIZE - 1]),
        Unaddressable::TooShort
    );
    assert_eq!(unaddressable(&good[..1]), Unaddressable::TooShort);

    let mut bad = good.clone();
    bad[0] = b'X';
    assert_eq!(unaddressable(&bad), Unaddressable::BadMagic);
    let mut bad = good.clone();
    bad[0..2].copy_from_slice(b"LO");
    assert_eq!(unaddressable(&bad), Unaddressable::BadMagic);

    for version in [0u8, 2, 255] {
        let mut bad = good.clone();
        bad[2] = version;
        assert_eq!(unaddressable(&bad), Unaddressable::BadVersion);
    }
}

#[test]
fn rejections_carry_the_addressing() {
    let mut bad = encoded(&sample_set());
    bad[offset::FLAGS] = 1;
    let r = rejected(&bad);
    assert_eq!(r.reason, RejectReason::NonZeroFlags);
    assert_eq!(r.status(), Status::Malformed);
    assert_eq!(r.to, sample_set().addressing());
    let resp = r.response(77);
    assert_eq!(resp.status, Status::Malformed);
    assert_eq!(resp.client_id, sample_set().client_id);
    assert_eq!(resp.request_seq, sample_set().request_seq);
    assert_eq!(resp.op, Some(Op::Set));
    assert_eq!(resp.cookie, 77);
    assert_eq!(resp.payload, b"flags must be zero");
}

#[test]
fn unknown_ops_are_malformed_and_echo_op_zero() {
    for op in [0u8, 7, 200, 255] {
        let mut bad = encoded(&sample_set());
        bad[offset::OP] = op;
        let r = rejected(&bad);
        assert_eq!(r.reason, RejectReason::UnknownOp);
        assert_eq!(r.to.op, None);
        assert_eq!(r.to.client_id, sample_set().client_id);
        let mut out = Vec::new();
        encode_response(&r.response(0), &mut out);
        assert_eq!(out[offset::OP], 0);
    }
}

#[test]
fn nonzero_flags_and_reserved_are_malformed() {
    for at in [offset::FLAGS, offset::FLAGS + 1] {
        let mut bad = encoded(&sample_set());
        bad[at] = 0x80;
        assert_eq!(rejected(&bad).reason, RejectReason::NonZeroFlags);
    }
    for at in offset::RESERVED..offset::RESERVED + 4 {
        let mut bad = encoded(&sample_set());
        bad[at] = 1;
        assert_eq!(rejected(&bad).reason, RejectReason::NonZeroReserved);
    }
}

#[test]
fn length_lies_are_malformed() {
    let good = encoded(&sample_set());
    let set_key_len = |buf: &mut Vec<u8>, v: u16| {
        buf[offset::KEY_LEN..offset::KEY_LEN + 2].copy_from_slice(&v.to_le_bytes())
    };
    let set_value_len = |buf: &mut Vec<u8>, v: u32| {
        buf[offset::VALUE_LEN..offset::VALUE_LEN + 4].copy_from_slice(&v.to_le_bytes())
    };
    for key_len in [0u16, 6, 8, 100, u16::MAX] {
        let mut bad = good.clone();
        set_key_len(&mut bad, key_len);
        let reason = rejected(&bad).reason;
        assert_eq!(reason, RejectReason::LengthMismatch, "key_len {key_len}");
    }
    for value_len in [0u32, 10, 12, 1000, u32::MAX] {
        let mut bad = good.clone();
        set_value_len(&mut bad, value_len);
        let reason = rejected(&bad).reason;
        assert_eq!(
            reason,
            RejectReason::LengthMismatch,
            "value_len {value_len}"
        );
    }
    // Lengths that shift bytes between key and value but keep the sum are legal for
    // SET (the key changes), so lie in a way that stays inconsistent.
    let mut bad = good.clone();
    set_key_len(&mut bad, 8);
    set_value_len(&mut bad, 11);
    assert_eq!(rejected(&bad).reason, RejectReason::LengthMismatch);
    // Trailing garbage and truncated bodies.
    let mut long = good.clone();
    long.push(0);
    assert_eq!(rejected(&long).reason, RejectReason::LengthMismatch);
    assert_eq!(
        rejected(&good[..good.len() - 1]).reason,
        RejectReason::LengthMismatch
    );
    assert_eq!(
        rejected(&good[..REQUEST_HEADER_SIZE]).reason,
        RejectReason::LengthMismatch
    );
}

#[test]
fn oversize_datagrams_are_too_large() {
    let value = vec![1u8; MAX_VALUE_LEN + 1];
    let req = Request {
        key: "k",
        value: &value,
        ..sample_set()
    };
    assert_eq!(req.validate(), Err(RejectReason::Oversize));
    let buf = encoded(&req);
    assert_eq!(buf.len(), MAX_DATAGRAM_SIZE + 1);
    let r = rejected(&buf);
    assert_eq!(r.reason, RejectReason::Oversize);
    assert_eq!(r.status(), Status::TooLarge);
    assert_eq!(r.to, req.addressing());
    // Oversize wins even when the lengths also lie (a truncated receive).
    let mut garbage = encoded(&sample_set());
    garbage.resize(4000, 0xAB);
    assert_eq!(rejected(&garbage).reason, RejectReason::Oversize);
}

#[test]
fn body_shape_rules() {
    let check = |req: Request<'_>, want: RejectReason| {
        assert_eq!(req.validate(), Err(want), "{req:?}");
        assert_eq!(rejected(&encoded(&req)).reason, want, "{req:?}");
    };
    let base = sample_set();
    check(Request { key: "", ..base }, RejectReason::EmptyKey);
    check(
        Request {
            op: Op::Get,
            key: "",
            value: b"",
            ..base
        },
        RejectReason::EmptyKey,
    );
    check(
        Request {
            op: Op::Delete,
            key: "",
            value: b"",
            ..base
        },
        RejectReason::EmptyKey,
    );
    check(
        Request {
            op: Op::Get,
            ..base
        },
        RejectReason::UnexpectedValue,
    );
    check(
        Request {
            op: Op::Delete,
            ..base
        },
        RejectReason::UnexpectedValue,
    );
    check(
        Request {
            op: Op::Ping,
            value: b"",
            ..base
        },
        RejectReason::UnexpectedKey,
    );
    check(
        Request {
            op: Op::Stats,
            value: b"",
            ..base
        },
        RejectReason::UnexpectedKey,
    );
    check(
        Request {
            op: Op::Ping,
            key: "",
            ..base
        },
        RejectReason::UnexpectedValue,
    );
    check(
        Request {
            op: Op::Stats,
            key: "",
            ..base
        },
        RejectReason::UnexpectedValue,
    );
    check(
        Request {
            key: "a\0b",
            ..base
        },
        RejectReason::KeyContainsNul,
    );
    check(
        Request {
            key: "\0",
            op: Op::Get,
            value: b"",
            ..base
        },
        RejectReason::KeyContainsNul,
    );
}

#[test]
fn non_utf8_keys_are_malformed() {
    for key in [
        &[0xFFu8][..],
        &[b'a', 0xC3],
        &[0xED, 0xA0, 0x80],
        &[0xC0, 0xAF],
    ] {
        let mut buf = encoded(&Request {
            key: "",
            op: Op::Ping,
            value: b"",
            ..sample_set()
        });
        buf[offset::OP] = Op::Get.as_u8();
        buf[offset::KEY_LEN..offset::KEY_LEN + 2]
            .copy_from_slice(&(key.len() as u16).to_le_bytes());
        buf.extend_from_slice(key);
        assert_eq!(rejected(&buf).reason, RejectReason::KeyNotUtf8, "{key:?}");
    }
}

#[test]
fn every_rejection_has_an_ascii_message_that_fits() {
    let reasons = [
        RejectReason::Oversize,
        RejectReason::UnknownOp,
        RejectReason::NonZeroFlags,
        RejectReason::NonZeroReserved,
        RejectReason::LengthMismatch,
        RejectReason::EmptyKey,
        RejectReason::UnexpectedKey,
        RejectReason::UnexpectedValue,
        RejectReason::KeyContainsNul,
        RejectReason::KeyNotUtf8,
    ];
    for r in reasons {
        assert!(r.message().is_ascii() && !r.message().is_empty());
        assert!(r.message().len() <= MAX_PAYLOAD_LEN);
    }
}

#[test]
fn response_round_trips() {
    let big = vec![0x5Au8; MAX_PAYLOAD_LEN];
    let mut cases = vec![
        Response {
            op: Some(Op::Get),
            status: Status::Ok,
            client_id: 0xDEAD_BEEF,
            request_seq: 9,
            cookie: 0x1234,
            payload: b"value",
        },
        Response {
            op: None,
            status: Status::Malformed,
            client_id: 0,
            request_seq: 0,
            cookie: 0,
            payload: b"unknown op",
        },
        Response {
            op: Some(Op::Set),
            status: Status::NotLeader,
            client_id: u64::MAX,
            request_seq: u64::MAX,
            cookie: u64::MAX,
            payload: b"10.0.0.2:9000",
        },
        Response {
            op: Some(Op::Stats),
            status: Status::Ok,
            client_id: 1,
            request_seq: 2,
            cookie: 3,
            payload: &big,
        },
    ];
    for status in Status::ALL {
        for op in Op::ALL {
            cases.push(Response {
                op: Some(op),
                status,
                client_id: 5,
                request_seq: 6,
                cookie: 7,
                payload: b"",
            });
        }
    }
    for resp in cases {
        let mut out = Vec::new();
        encode_response(&resp, &mut out);
        assert_eq!(out.len(), resp.encoded_len());
        assert_eq!(parse_response(&out), Ok(resp));
        let mut fixed = [0u8; MAX_DATAGRAM_SIZE];
        let n = encode_response_into(&resp, &mut fixed);
        assert_eq!(&fixed[..n], &out[..]);
    }
}

#[test]
fn response_layout_is_as_documented() {
    let resp = Response {
        op: Some(Op::Get),
        status: Status::NotFound,
        client_id: 0x0102_0304_0506_0708,
        request_seq: 3,
        cookie: 4,
        payload: b"",
    };
    let mut out = Vec::new();
    encode_response(&resp, &mut out);
    assert_eq!(out.len(), 40);
    assert_eq!(&out[0..4], &[b'O', b'L', 1, 1]);
    assert_eq!(&out[4..6], &201u16.to_le_bytes());
    assert_eq!(&out[6..8], &[0, 0]);
    assert_eq!(&out[8..16], &[8, 7, 6, 5, 4, 3, 2, 1]);
    assert_eq!(&out[16..24], &3u64.to_le_bytes());
    assert_eq!(&out[24..32], &4u64.to_le_bytes());
    assert_eq!(&out[32..40], &[0; 8]);
}

#[test]
fn response_rejections() {
    let resp = Response {
        op: Some(Op::Get),
        status: Status::Ok,
        client_id: 1,
        request_seq: 2,
        cookie: 3,
        payload: b"abc",
    };
    let mut good = Vec::new();
    encode_response(&resp, &mut good);
    let mutate = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = good.clone();
        f(&mut b);
        parse_response(&b).map(|_| ())
    };
    assert_eq!(
        parse_response(&good[..39]).map(|_| ()),
        Err(ResponseError::TooShort)
    );
    assert_eq!(mutate(&|b| b[1] = 0), Err(ResponseError::BadMagic));
    assert_eq!(mutate(&|b| b[2] = 2), Err(ResponseError::BadVersion));
    assert_eq!(mutate(&|b| b[3] = 9), Err(ResponseError::UnknownOp(9)));
    assert_eq!(mutate(&|b| b[4] = 0), Err(ResponseError::UnknownStatus(0)));
    assert_eq!(mutate(&|b| b[7] = 1), Err(ResponseError::NonZeroFlags));
    assert_eq!(mutate(&|b| b[39] = 1), Err(ResponseError::NonZeroReserved));
    assert_eq!(mutate(&|b| b[32] = 4), Err(ResponseError::LengthMismatch));
    assert_eq!(mutate(&|b| b[32] = 2), Err(ResponseError::LengthMismatch));
    assert_eq!(mutate(&|b| b.push(0)), Err(ResponseError::LengthMismatch));
    assert_eq!(mutate(&|b| b.resize(1100, 0)), Err(ResponseError::Oversize));
}

#[test]
fn status_codes_round_trip() {
    let expected = [200u16, 201, 400, 407, 413, 421, 500, 503, 507];
    for (status, code) in Status::ALL.into_iter().zip(expected) {
        assert_eq!(status.as_u16(), code);
        assert_eq!(Status::from_u16(code), Some(status));
    }
    let known = (0..=u16::MAX)
        .filter(|&c| Status::from_u16(c).is_some())
        .count();
    assert_eq!(known, Status::ALL.len());
    assert!(Status::Ok.is_success() && Status::NotFound.is_success());
    assert!(!Status::Busy.is_success());
    assert_eq!(Status::NotLeader.to_string(), "421 NotLeader");
}

#[test]
fn op_codes_round_trip() {
    for (i, op) in Op::ALL.into_iter().enumerate() {
        assert_eq!(op.as_u8() as usize, i + 1);
        assert_eq!(Op::from_u8(op.as_u8()), Some(op));
    }
    assert_eq!(Op::from_u8(0), None);
    assert_eq!(Op::from_u8(7), None);
    assert!(Op::Set.is_write() && Op::Delete.is_write() && !Op::Get.is_write());
}

#[test]
fn cookies_depend_on_secret_and_address_and_are_never_zero() {
    let a: SocketAddr = "127.0.0.1:5000".parse().unwrap();
    let b: SocketAddr = "127.0.0.1:5001".parse().unwrap();
    let c: SocketAddr = "127.0.0.2:5000".parse().unwrap();
    let d: SocketAddr = "[::1]:5000".parse().unwrap();
    let s1 = [1u8; 16];
    let mut s2 = [1u8; 16];
    s2[15] = 2;
    let ca = cookie_for(&s1, &a);
    assert_eq!(ca, cookie_for(&s1, &a));
    assert_ne!(ca, cookie_for(&s1, &b));
    assert_ne!(ca, cookie_for(&s1, &c));
    assert_ne!(ca, cookie_for(&s1, &d));
    assert_ne!(ca, cookie_for(&s2, &a));
    for port in 0..2000u16 {
        let addr = SocketAddr::from(([10, 0, 0, 1], port));
        assert_ne!(cookie_for(&s1, &addr), NO_COOKIE);
    }
}

#[test]
fn cookie_required_reply_fits_every_addressable_request() {
    let to = sample_set().addressing();
    let reply = Response::cookie_required(&to, 99);
    assert_eq!(reply.encoded_len(), RESPONSE_HEADER_SIZE);
    assert!(reply_fits_unvalidated(
        REQUEST_HEADER_SIZE,
        reply.encoded_len()
    ));
    assert!(reply_fits_unvalidated(100, 100));
    assert!(!reply_fits_unvalidated(41, 42));
    // A GET of a short key cannot be answered with a longer value unvalidated.
    let get = Request {
        op: Op::Get,
        key: "k",
        value: b"",
        ..sample_set()
    };
    assert!(!reply_fits_unvalidated(
        get.encoded_len(),
        RESPONSE_HEADER_SIZE + 100
    ));
}

#[test]
fn leader_hints() {
    assert_eq!(
        parse_leader_hint(b"10.1.2.3:9000"),
        Some("10.1.2.3:9000".parse().unwrap())
    );
    assert_eq!(
        parse_leader_hint(b"[::1]:9000"),
        Some("[::1]:9000".parse().unwrap())
    );
    assert_eq!(parse_leader_hint(b""), None);
    assert_eq!(parse_leader_hint(b"nonsense"), None);
    assert_eq!(parse_leader_hint(&[0xFF, 0xFE]), None);
}

/// A STATS page holds whole lines up to the payload limit; the pages cover the text once.
#[test]
fn stats_pages_hold_whole_lines_and_cover_the_text() {
    let text: String = (0..200)
        .map(|i| format!("counter_{i}={}\n", i * 7919))
        .collect();
    let mut joined = String::new();
    let mut line = 0;
    loop {
        let (page, lines) = stats_page(&text, line);
        assert!(page.len() <= MAX_PAYLOAD_LEN);
        assert_eq!(page.lines().count(), lines);
        if lines == 0 {
            assert!(page.is_empty());
            break;
        }
        joined.push_str(&page);
        line += lines;
    }
    assert_eq!(joined, text);
    let long = "x".repeat(3 * MAX_PAYLOAD_LEN);
    let (page, lines) = stats_page(&long, 0);
    assert_eq!((page.len(), lines), (MAX_PAYLOAD_LEN, 1));
    let mut ok = sample_set();
    ok.op = Op::Stats;
    ok.value = b"";
    ok.key = "123";
    assert_eq!(ok.validate(), Ok(()));
    assert_eq!(parse_request(&encoded(&ok)).map(|r| r.key), Ok("123"));
    ok.key = "1234567";
    assert_eq!(ok.validate(), Err(RejectReason::UnexpectedKey));
}

// BATCH datagrams.

fn batch_of(to: &Addressing, items: &[Request<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    let start = batch::begin_batch(&mut out, to);
    for item in items {
        batch::push_request_item(&mut out, start, item);
    }
    out
}

fn batch_to() -> Addressing {
    Addressing {
        op: Some(Op::Batch),
        client_id: 0xAA,
        request_seq: 7,
        cookie: 0xC0C0,
    }
}

fn batch_rejected(buf: &[u8]) -> Rejection {
    match parse_batch(buf) {
        Err(ParseError::Rejected(r)) => r,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn batch_layout_is_as_documented() {
    let get = Request {
        op: Op::Get,
        client_id: 0x11,
        request_seq: 0x22,
        cookie: 0,
        key: "k",
        value: b"",
    };
    let set = Request {
        op: Op::Set,
        key: "ab",
        value: b"xyz",
        ..get
    };
    let buf = batch_of(&batch_to(), &[get, set]);
    assert_eq!(buf.len(), 40 + (24 + 1) + (24 + 5));
    assert_eq!(&buf[..4], &[0x4f, 0x4c, 1, 6]);
    assert_eq!(&buf[4..8], &[0, 0, 0, 0], "key_len and flags are zero");
    assert_eq!(buf[offset::CLIENT_ID], 0xAA);
    assert_eq!(buf[offset::REQUEST_SEQ], 7);
    assert_eq!(&buf[offset::COOKIE..][..2], &[0xC0, 0xC0]);
    assert_eq!(&buf[offset::VALUE_LEN..][..4], &(25u32 + 29).to_le_bytes());
    let item = &buf[40..];
    assert_eq!(
        &item[..8],
        &[1, 0, 1, 0, 0, 0, 0, 0],
        "op, flags, key_len, value_len"
    );
    assert_eq!(item[8], 0x11);
    assert_eq!(item[16], 0x22);
    assert_eq!(item[24], b'k');
    let item = &buf[65..];
    assert_eq!(&item[..8], &[2, 0, 2, 0, 3, 0, 0, 0]);
    assert_eq!(&item[24..], b"abxyz");

    let b = parse_batch(&buf).unwrap();
    assert_eq!((b.to, b.len), (batch_to(), 2));
    let items: Vec<_> = b.items().collect();
    assert_eq!(
        items,
        [
            Request {
                cookie: 0xC0C0,
                ..get
            },
            Request {
                cookie: 0xC0C0,
                ..set
            }
        ]
    );
    // A single request's parser refuses it, with the batch's addressing.
    let r = rejected(&buf);
    assert_eq!(
        (r.reason, r.to.client_id),
        (RejectReason::NotBatchable, 0xAA)
    );
}

#[test]
fn batch_rejections() {
    let get = sample_set();
    let get = Request {
        op: Op::Get,
        value: b"",
        ..get
    };
    let stats = Request {
        op: Op::Stats,
        key: "",
        ..get
    };
    let to = batch_to();
    assert_eq!(
        batch_rejected(&batch_of(&to, &[])).reason,
        RejectReason::BadBatch
    );
    let with_stats = batch_of(&to, &[get, stats]);
    assert_eq!(
        batch_rejected(&with_stats).reason,
        RejectReason::NotBatchable
    );
    // An item that would not fit a datagram alone.
    let long = "v".repeat(MAX_DATAGRAM_SIZE);
    let big = Request {
        op: Op::Set,
        key: "k",
        value: long.as_bytes(),
        ..get
    };
    let r = batch_rejected(&batch_of(&to, &[big]));
    assert_eq!(r.reason, RejectReason::Oversize);
    // A truncated last item, with the body length told the truth about.
    let mut cut = batch_of(&to, &[get, get]);
    cut.truncate(cut.len() - 1);
    let body = (cut.len() - REQUEST_HEADER_SIZE) as u32;
    cut[offset::VALUE_LEN..][..4].copy_from_slice(&body.to_le_bytes());
    assert_eq!(batch_rejected(&cut).reason, RejectReason::BadBatch);
    // Lengths that lie, nonzero header fields, a GET with a value.
    let good = batch_of(&to, &[get]);
    let mut lie = good.clone();
    lie.push(0);
    assert_eq!(batch_rejected(&lie).reason, RejectReason::LengthMismatch);
    let mut keyed = good.clone();
    keyed[offset::KEY_LEN] = 1;
    assert_eq!(batch_rejected(&keyed).reason, RejectReason::UnexpectedKey);
    let mut flagged = good.clone();
    flagged[REQUEST_HEADER_SIZE + 1] = 1;
    assert_eq!(batch_rejected(&flagged).reason, RejectReason::NonZeroFlags);
    let with_value = Request { value: b"x", ..get };
    let r = batch_rejected(&batch_of(&to, &[with_value]));
    assert_eq!(r.reason, RejectReason::UnexpectedValue);
    // Larger than a BATCH datagram may be.
    let many: Vec<_> = (0..60).map(|_| get).collect();
    let r = batch_rejected(&batch_of(&to, &many));
    assert_eq!(
        (r.reason, r.status()),
        (RejectReason::Oversize, Status::TooLarge)
    );
    assert_eq!(r.to, to);
    // Not ours at all.
    let mut foreign = good;
    foreign[0] = b'X';
    assert!(matches!(
        parse_batch(&foreign),
        Err(ParseError::Unaddressable(_))
    ));
    assert!(!batch::is_batch(&foreign));
}

#[test]
fn batch_replies_round_trip_and_single_replies_still_parse() {
    let mut out = Vec::new();
    let start = batch::begin_batch_response(&mut out, 0x55);
    let hit = Response {
        op: Some(Op::Get),
        status: Status::Ok,
        client_id: 3,
        request_seq: 4,
        cookie: 0,
        payload: b"value",
    };
    let leader = Response {
        op: Some(Op::Set),
        status: Status::NotLeader,
        payload: b"127.0.0.1:9001",
        ..hit
    };
    batch::push_response_item(&mut out, start, &hit);
    batch::push_response_item(&mut out, start, &leader);
    assert_eq!(out.len(), 40 + 24 + 5 + 24 + 14);
    assert_eq!(&out[..6], &[0x4f, 0x4c, 1, 6, 200, 0]);
    assert_eq!(&out[40..48], &[1, 0, 200, 0, 5, 0, 0, 0]);
    let Ok(Reply::Batch(b)) = parse_reply(&out) else {
        panic!("not a batch reply");
    };
    assert_eq!(b.cookie, 0x55);
    let items: Vec<_> = b.items().collect();
    assert_eq!(
        items,
        [
            Response {
                cookie: 0x55,
                ..hit
            },
            Response {
                cookie: 0x55,
                ..leader
            }
        ]
    );
    // A reply to the whole batch is a single reply with op BATCH.
    let whole = Response::cookie_required(&batch_to(), 9);
    let mut single = Vec::new();
    encode_response(&whole, &mut single);
    assert_eq!(parse_reply(&single), Ok(Reply::Single(whole)));
    // A damaged item is refused, not skipped.
    let mut bad = out.clone();
    bad[40 + 2] = 0xFF;
    assert!(parse_reply(&bad).is_err());
}
