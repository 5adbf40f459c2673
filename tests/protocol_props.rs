//! Property tests for the UDP wire format in `ocean_liner::client::protocol`.
//!
//! They show that:
//! - every valid request and every response survives encode → parse unchanged, and the
//!   encoded length is exactly header + body;
//! - `parse_request` and `parse_response` never panic, whether fed arbitrary bytes up to
//!   2048 long or valid datagrams with bytes flipped, truncated or appended;
//! - whatever `parse_request` (or `parse_response`) accepts re-encodes to exactly the
//!   bytes it was parsed from, so the parser accepts one canonical encoding per message
//!   and nothing outside the format;
//! - a rejection that can be addressed carries the client id and sequence of the datagram,
//!   and only oversize datagrams are rejected as `TooLarge`.

use ocean_liner::client::protocol::{
    MAX_DATAGRAM_SIZE, MAX_PAYLOAD_LEN, Op, ParseError, REQUEST_HEADER_SIZE, RejectReason, Request,
    Response, Status, encode_request, encode_response, offset, parse_request, parse_response,
};
use proptest::prelude::*;

/// An owned request, so strategies can generate it.
#[derive(Debug, Clone)]
struct OwnedRequest {
    op: Op,
    client_id: u64,
    request_seq: u64,
    cookie: u64,
    key: String,
    value: Vec<u8>,
}

impl OwnedRequest {
    fn as_request(&self) -> Request<'_> {
        Request {
            op: self.op,
            client_id: self.client_id,
            request_seq: self.request_seq,
            cookie: self.cookie,
            key: &self.key,
            value: &self.value,
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        encode_request(&self.as_request(), &mut out);
        out
    }
}

fn op() -> impl Strategy<Value = Op> {
    prop::sample::select(Op::ALL.to_vec())
}

/// The ops a request alone in its datagram (or a batch item, but for STATS) carries.
fn single_op() -> impl Strategy<Value = Op> {
    prop::sample::select(
        Op::ALL
            .into_iter()
            .filter(|&o| o != Op::Batch)
            .collect::<Vec<_>>(),
    )
}

fn status() -> impl Strategy<Value = Status> {
    prop::sample::select(Status::ALL.to_vec())
}

/// Keys: short printable ones, arbitrary non-NUL Unicode, and long ASCII ones.
fn key() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z:0-9]{1,20}", "[^\u{0}]{1,40}", "[A-Za-z]{1,984}",]
}

/// Requests that satisfy every rule, including the 1024-byte limit.
fn valid_request() -> impl Strategy<Value = OwnedRequest> {
    (
        single_op(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        key(),
        prop::collection::vec(any::<u8>(), 0..=1000),
    )
        .prop_map(|(op, client_id, request_seq, cookie, mut key, mut value)| {
            if !op.has_key() {
                key.clear();
            }
            if op != Op::Set {
                value.clear();
            }
            // Trim to fit: shorten the value first, then the key (on a char boundary).
            let room = MAX_DATAGRAM_SIZE - REQUEST_HEADER_SIZE;
            while key.len() > room {
                key.pop();
            }
            value.truncate(room - key.len());
            OwnedRequest {
                op,
                client_id,
                request_seq,
                cookie,
                key,
                value,
            }
        })
}

fn response() -> impl Strategy<Value = (Option<Op>, Status, u64, u64, u64, Vec<u8>)> {
    (
        prop::option::of(op()),
        status(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        prop::collection::vec(any::<u8>(), 0..=MAX_PAYLOAD_LEN),
    )
}

/// How to damage a valid datagram.
#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, xor: u8 },
    Set { at: usize, byte: u8 },
    Truncate { len: usize },
    Append { bytes: Vec<u8> },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(at, xor)| Mutation::Flip { at, xor }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Set { at, byte }),
        any::<usize>().prop_map(|len| Mutation::Truncate { len }),
        prop::collection::vec(any::<u8>(), 1..64).prop_map(|bytes| Mutation::Append { bytes }),
    ]
}

fn apply(buf: &mut Vec<u8>, m: &Mutation) {
    match m {
        // Bias flips towards the header, where most of the rules live.
        Mutation::Flip { at, xor } => {
            let len = buf.len();
            let i = if at % 2 == 0 {
                at % REQUEST_HEADER_SIZE.min(len)
            } else {
                at % len
            };
            buf[i] ^= xor;
        }
        Mutation::Set { at, byte } => {
            let len = buf.len();
            buf[at % len] = *byte;
        }
        Mutation::Truncate { len } => buf.truncate(len % (buf.len() + 1)),
        Mutation::Append { bytes } => buf.extend_from_slice(bytes),
    }
}

/// Parses `buf`; if accepted, the request must re-encode to exactly `buf`. If rejected
/// with an address, the address must come from the datagram's header.
fn check_request_parse(buf: &[u8]) -> Result<(), TestCaseError> {
    match parse_request(buf) {
        Ok(req) => {
            let mut out = Vec::new();
            encode_request(&req, &mut out);
            prop_assert_eq!(&out[..], buf);
            prop_assert!(buf.len() <= MAX_DATAGRAM_SIZE);
            prop_assert_eq!(req.validate(), Ok(()));
        }
        Err(ParseError::Unaddressable(_)) => {
            let addressable = buf.len() >= REQUEST_HEADER_SIZE && buf[0..3] == [b'O', b'L', 1];
            prop_assert!(!addressable);
        }
        Err(ParseError::Rejected(r)) => {
            prop_assert!(buf.len() >= REQUEST_HEADER_SIZE);
            let id = u64::from_le_bytes(buf[offset::CLIENT_ID..][..8].try_into().unwrap());
            let seq = u64::from_le_bytes(buf[offset::REQUEST_SEQ..][..8].try_into().unwrap());
            prop_assert_eq!(r.to.client_id, id);
            prop_assert_eq!(r.to.request_seq, seq);
            prop_assert_eq!(r.to.op, Op::from_u8(buf[offset::OP]));
            prop_assert_eq!(
                r.reason == RejectReason::Oversize,
                buf.len() > MAX_DATAGRAM_SIZE
            );
            let resp = r.response(0);
            prop_assert_eq!(resp.status, r.status());
            prop_assert!(resp.encoded_len() <= MAX_DATAGRAM_SIZE);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn valid_requests_round_trip(req in valid_request()) {
        prop_assert_eq!(req.as_request().validate(), Ok(()));
        let buf = req.encode();
        prop_assert_eq!(buf.len(), REQUEST_HEADER_SIZE + req.key.len() + req.value.len());
        prop_assert!(buf.len() <= MAX_DATAGRAM_SIZE);
        prop_assert_eq!(parse_request(&buf), Ok(req.as_request()));
    }

    #[test]
    fn responses_round_trip((op, status, client_id, request_seq, cookie, payload) in response()) {
        let resp = Response { op, status, client_id, request_seq, cookie, payload: &payload };
        let mut buf = Vec::new();
        encode_response(&resp, &mut buf);
        prop_assert_eq!(buf.len(), resp.encoded_len());
        prop_assert_eq!(parse_response(&buf), Ok(resp));
    }

    #[test]
    fn arbitrary_bytes_never_panic(buf in prop::collection::vec(any::<u8>(), 0..2048)) {
        check_request_parse(&buf)?;
        if let Ok(resp) = parse_response(&buf) {
            let mut out = Vec::new();
            encode_response(&resp, &mut out);
            prop_assert_eq!(&out[..], &buf[..]);
        }
    }

    /// Arbitrary bytes behind a valid magic and version reach the deeper checks.
    #[test]
    fn arbitrary_headers_never_panic(
        rest in prop::collection::vec(any::<u8>(), 37..2048),
        small_lengths in any::<bool>(),
    ) {
        let mut buf = vec![b'O', b'L', 1];
        buf.extend_from_slice(&rest);
        if small_lengths {
            // Make plausible lengths likely: clear the high bytes of key_len/value_len,
            // and the flags and reserved fields.
            buf[offset::KEY_LEN + 1] = 0;
            buf[offset::VALUE_LEN + 1..offset::VALUE_LEN + 4].fill(0);
            buf[offset::FLAGS..offset::FLAGS + 2].fill(0);
            buf[offset::RESERVED..offset::RESERVED + 4].fill(0);
            buf[offset::OP] %= 6;
        }
        check_request_parse(&buf)?;
    }

    #[test]
    fn mutated_requests_never_panic(
        req in valid_request(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let mut buf = req.encode();
        for m in &mutations {
            if buf.is_empty() {
                break;
            }
            apply(&mut buf, m);
        }
        check_request_parse(&buf)?;
    }

    #[test]
    fn mutated_responses_never_panic(
        (op, status, client_id, request_seq, cookie, payload) in response(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let resp = Response { op, status, client_id, request_seq, cookie, payload: &payload };
        let mut buf = Vec::new();
        encode_response(&resp, &mut buf);
        for m in &mutations {
            if buf.is_empty() {
                break;
            }
            apply(&mut buf, m);
        }
        if let Ok(parsed) = parse_response(&buf) {
            let mut out = Vec::new();
            encode_response(&parsed, &mut out);
            prop_assert_eq!(&out[..], &buf[..]);
        }
    }
}

// BATCH datagrams: several requests, or several replies, in one datagram.

use ocean_liner::client::protocol::batch::{
    begin_batch, begin_batch_response, push_request_item, push_response_item, request_item_len,
    response_item_len,
};
use ocean_liner::client::protocol::{
    Addressing, MAX_BATCH_DATAGRAM_SIZE, Reply, parse_batch, parse_reply,
};

/// A batchable request (not STATS) that also satisfies every single-request rule.
fn batch_item() -> impl Strategy<Value = OwnedRequest> {
    valid_request().prop_filter("STATS is not batched", |r| r.op != Op::Stats)
}

/// Encodes as many of `items` as fit one BATCH datagram; returns it and how many went in.
fn encode_batch(to: &Addressing, items: &[OwnedRequest]) -> (Vec<u8>, usize) {
    let mut out = Vec::new();
    let start = begin_batch(&mut out, to);
    let mut n = 0;
    for item in items {
        let req = item.as_request();
        if out.len() + request_item_len(&req) > MAX_BATCH_DATAGRAM_SIZE {
            break;
        }
        push_request_item(&mut out, start, &req);
        n += 1;
    }
    (out, n)
}

/// Re-encodes an accepted batch from its parsed items.
fn reencode_batch(buf: &[u8]) -> Option<Vec<u8>> {
    let b = parse_batch(buf).ok()?;
    let mut out = Vec::new();
    let start = begin_batch(&mut out, &b.to);
    for req in b.items() {
        push_request_item(&mut out, start, &req);
    }
    assert_eq!(b.items().count(), b.len);
    Some(out)
}

fn reencode_reply(buf: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    match parse_reply(buf).ok()? {
        Reply::Single(r) => encode_response(&r, &mut out),
        Reply::Batch(b) => {
            let start = begin_batch_response(&mut out, b.cookie);
            for item in b.items() {
                push_response_item(&mut out, start, &item);
            }
        }
    }
    Some(out)
}

fn addressing() -> impl Strategy<Value = Addressing> {
    (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(client_id, request_seq, cookie)| {
        Addressing {
            op: Some(Op::Batch),
            client_id,
            request_seq,
            cookie,
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    /// Every item of a batch comes back as sent, carrying the batch's cookie; a single
    /// request's parser refuses the batch.
    #[test]
    fn valid_batches_round_trip(
        to in addressing(),
        items in prop::collection::vec(batch_item(), 1..40),
    ) {
        let (buf, n) = encode_batch(&to, &items);
        prop_assume!(n > 0);
        prop_assert!(buf.len() <= MAX_BATCH_DATAGRAM_SIZE);
        let b = parse_batch(&buf).unwrap();
        prop_assert_eq!(b.to, to);
        prop_assert_eq!(b.len, n);
        let parsed: Vec<Request<'_>> = b.items().collect();
        let want: Vec<Request<'_>> = items[..n]
            .iter()
            .map(|i| Request { cookie: to.cookie, ..i.as_request() })
            .collect();
        prop_assert_eq!(parsed, want);
        prop_assert!(parse_request(&buf).is_err());
    }

    /// A damaged batch never panics the parser, and what it accepts is canonical: it
    /// re-encodes to the same bytes, within the size limit.
    #[test]
    fn mutated_batches_never_panic(
        to in addressing(),
        items in prop::collection::vec(batch_item(), 1..8),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let (mut buf, _) = encode_batch(&to, &items);
        for m in &mutations {
            if buf.is_empty() {
                break;
            }
            apply(&mut buf, m);
        }
        match parse_batch(&buf) {
            Ok(_) => {
                prop_assert!(buf.len() <= MAX_BATCH_DATAGRAM_SIZE);
                let again = reencode_batch(&buf);
                prop_assert_eq!(again.as_deref(), Some(&buf[..]));
            }
            Err(ParseError::Rejected(r)) => {
                let id = u64::from_le_bytes(buf[offset::CLIENT_ID..][..8].try_into().unwrap());
                prop_assert_eq!(r.to.client_id, id);
            }
            Err(ParseError::Unaddressable(_)) => {}
        }
    }

    /// Reply items come back as sent; damaged replies never panic, and what is accepted
    /// re-encodes to the same bytes.
    #[test]
    fn batch_replies_round_trip_and_damage_never_panics(
        cookie in any::<u64>(),
        items in prop::collection::vec(response(), 1..12),
        mutations in prop::collection::vec(mutation(), 0..4),
    ) {
        let mut buf = Vec::new();
        let start = begin_batch_response(&mut buf, cookie);
        let mut sent = Vec::new();
        for (op, status, client_id, request_seq, _, payload) in &items {
            let r = Response {
                op: *op, status: *status, client_id: *client_id, request_seq: *request_seq,
                cookie, payload,
            };
            if buf.len() + response_item_len(&r) > MAX_BATCH_DATAGRAM_SIZE {
                break;
            }
            push_response_item(&mut buf, start, &r);
            sent.push(r);
        }
        match parse_reply(&buf).unwrap() {
            Reply::Batch(b) => prop_assert_eq!(b.items().collect::<Vec<_>>(), sent),
            Reply::Single(_) => prop_assert!(false, "a BATCH reply parsed as a single one"),
        }
        let mut damaged = buf.clone();
        for m in &mutations {
            if damaged.is_empty() {
                break;
            }
            apply(&mut damaged, m);
        }
        if let Some(out) = reencode_reply(&damaged) {
            prop_assert_eq!(out, damaged);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_batch_parsers(
        rest in prop::collection::vec(any::<u8>(), 37..1600),
        status_ok in any::<bool>(),
    ) {
        let mut buf = vec![b'O', b'L', 1];
        buf.extend_from_slice(&rest);
        buf[offset::OP] = Op::Batch.as_u8();
        if status_ok {
            buf[offset::STATUS..offset::STATUS + 2].copy_from_slice(&200u16.to_le_bytes());
        }
        if let Some(out) = reencode_batch(&buf) {
            prop_assert_eq!(out, buf.clone());
        }
        if let Some(out) = reencode_reply(&buf) {
            prop_assert_eq!(out, buf);
        }
    }
}
