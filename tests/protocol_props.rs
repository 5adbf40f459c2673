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
        op(),
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
