//! The UDP client wire format.
//!
//! Every client request and every server reply is one UDP datagram of at most
//! [`MAX_DATAGRAM_SIZE`] bytes: a fixed 40-byte header followed by a body whose length
//! the header states exactly. All integers are little-endian. This module is pure: it
//! parses and encodes byte slices and owns no sockets. `docs/protocol.md` describes the
//! same format for people writing a client in another language.
//!
//! # Request
//!
//! ```text
//!  0       2   3   4       6       8                               16
//!  +-------+---+---+-------+-------+-------------------------------+
//!  | magic |ver|op |key_len| flags |           client_id           |
//!  +-------+---+---+-------+-------+-------------------------------+
//! 16                              24                               32
//!  +-------------------------------+-------------------------------+
//!  |          request_seq          |            cookie             |
//!  +-------------------------------+-------------------------------+
//! 32              36              40
//!  +---------------+---------------+----------------+--------------+
//!  |   value_len   |   reserved    | key (key_len)  | value (...)  |
//!  +---------------+---------------+----------------+--------------+
//! ```
//!
//! - `magic` is `0x4C4F` (the bytes `'O' 'L'` on the wire), `ver` is 1.
//! - `op`: 1 GET, 2 SET, 3 DELETE, 4 PING, 5 STATS.
//! - `flags` and `reserved` must be zero.
//! - `40 + key_len + value_len` must equal the datagram length exactly.
//! - The key is valid UTF-8 without NUL bytes. GET, SET and DELETE need a non-empty key;
//!   only SET carries a value; PING and STATS carry neither.
//!
//! # Response
//!
//! ```text
//!  0       2   3   4       6       8                               16
//!  +-------+---+---+-------+-------+-------------------------------+
//!  | magic |ver|op |status | flags |      client_id (echoed)       |
//!  +-------+---+---+-------+-------+-------------------------------+
//! 16                              24                               32
//!  +-------------------------------+-------------------------------+
//!  |     request_seq (echoed)      |  cookie (server's, or 0)      |
//!  +-------------------------------+-------------------------------+
//! 32              36              40
//!  +---------------+---------------+-------------------------------+
//!  |  payload_len  |   reserved    |      payload (payload_len)    |
//!  +---------------+---------------+-------------------------------+
//! ```
//!
//! `op`, `client_id` and `request_seq` echo the request (the op is 0 when the request's
//! op byte was not a known op). The payload is the value for a GET hit, `key=value` text
//! lines for STATS, the leader's client address (`"ip:port"`, possibly empty) for
//! [`Status::NotLeader`], and an optional short ASCII message for other errors.
//!
//! # Anti-amplification cookies
//!
//! UDP source addresses can be forged, so the server must not let a forged request make
//! it send more bytes to a victim than the attacker sent. The server derives a cookie per
//! source address with [`cookie_for`] from a secret only it knows, and applies one rule:
//!
//! > A reply to a request whose `cookie` field is not the valid cookie for its source
//! > address must not be larger than that request ([`reply_fits_unvalidated`]). If it
//! > would be, the server instead replies [`Status::CookieRequired`] with the valid
//! > cookie in the header and an empty payload. (An error reply whose payload is only
//! > an optional message may instead be sent without the message.)
//!
//! That replacement reply is exactly [`RESPONSE_HEADER_SIZE`] bytes, which is never larger
//! than a request the server could address a reply to (those are at least
//! [`REQUEST_HEADER_SIZE`] bytes). A client stores the cookie per server address and
//! resends the same request (same `request_seq`) with it; only someone who receives
//! packets at the source address learns its cookie. Garbage that does not carry a valid
//! magic and version ([`Unaddressable`]) gets no reply at all.
//!
//! # Exactly-once writes
//!
//! A client id has at most one outstanding request at a time. Each new request takes a
//! higher `request_seq` than the previous one from the same client id; a retransmission
//! of a request reuses its `request_seq` (and its key and value). The server applies a
//! write at most once per `(client_id, request_seq)` and answers a retransmission of an
//! already-applied write with the original outcome.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// Largest datagram, request or response, that either side sends or accepts.
pub const MAX_DATAGRAM_SIZE: usize = 1024;
/// First two bytes of every datagram (`'O' 'L'` on the wire, little-endian `0x4C4F`).
pub const MAGIC: u16 = 0x4C4F;
/// Wire format version carried in byte 2.
pub const VERSION: u8 = 1;
/// Size of the fixed request header that precedes the key and value.
pub const REQUEST_HEADER_SIZE: usize = 40;
/// Size of the fixed response header that precedes the payload.
pub const RESPONSE_HEADER_SIZE: usize = 40;
/// Longest key a request can carry (a key alone filling the datagram).
pub const MAX_KEY_LEN: usize = MAX_DATAGRAM_SIZE - REQUEST_HEADER_SIZE;
/// Longest value a SET can carry (with the shortest allowed key, one byte).
pub const MAX_VALUE_LEN: usize = MAX_DATAGRAM_SIZE - REQUEST_HEADER_SIZE - 1;
/// Longest response payload.
pub const MAX_PAYLOAD_LEN: usize = MAX_DATAGRAM_SIZE - RESPONSE_HEADER_SIZE;
/// Length of the server secret that [`cookie_for`] keys the cookie hash with.
pub const COOKIE_SECRET_LEN: usize = 16;
/// The `cookie` value meaning "no cookie".
pub const NO_COOKIE: u64 = 0;

/// Byte offsets of the header fields. Requests and responses share every offset; bytes
/// 4..6 hold `key_len` in a request and `status` in a response, and bytes 32..36 hold
/// `value_len` in a request and `payload_len` in a response.
pub mod offset {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 2;
    pub const OP: usize = 3;
    pub const KEY_LEN: usize = 4;
    pub const STATUS: usize = 4;
    pub const FLAGS: usize = 6;
    pub const CLIENT_ID: usize = 8;
    pub const REQUEST_SEQ: usize = 16;
    pub const COOKIE: usize = 24;
    pub const VALUE_LEN: usize = 32;
    pub const PAYLOAD_LEN: usize = 32;
    pub const RESERVED: usize = 36;
    pub const BODY: usize = 40;
}

const _: () = assert!(offset::BODY == REQUEST_HEADER_SIZE);
const _: () = assert!(offset::BODY == RESPONSE_HEADER_SIZE);
const _: () = assert!(offset::RESERVED + 4 == REQUEST_HEADER_SIZE);
const _: () = assert!(REQUEST_HEADER_SIZE < MAX_DATAGRAM_SIZE);
// The CookieRequired reply must never exceed a request the server can address.
const _: () = assert!(RESPONSE_HEADER_SIZE <= REQUEST_HEADER_SIZE);
// Lengths must fit their header fields.
const _: () = assert!(MAX_KEY_LEN <= u16::MAX as usize);
const _: () = assert!(MAX_VALUE_LEN <= u32::MAX as usize);
const _: () = assert!(MAX_PAYLOAD_LEN <= u32::MAX as usize);
const _: () = assert!(MAX_VALUE_LEN + 1 + REQUEST_HEADER_SIZE == MAX_DATAGRAM_SIZE);
const _: () = assert!(MAGIC.to_le_bytes()[0] == b'O' && MAGIC.to_le_bytes()[1] == b'L');

/// A request operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Op {
    /// Read a key; answered [`Status::Ok`] with the value or [`Status::NotFound`].
    Get = 1,
    /// Write a key's value.
    Set = 2,
    /// Remove a key; deleting an absent key succeeds.
    Delete = 3,
    /// Liveness check; answered [`Status::Ok`] with an empty payload.
    Ping = 4,
    /// Server counters as `key=value` text lines.
    Stats = 5,
    /// Several requests in one datagram (see [`batch`]); never an item of a batch.
    Batch = 6,
}

impl Op {
    /// Every op, in wire order.
    pub const ALL: [Op; 6] = [Op::Get, Op::Set, Op::Delete, Op::Ping, Op::Stats, Op::Batch];

    /// Decodes a wire op byte.
    pub fn from_u8(v: u8) -> Option<Op> {
        match v {
            1 => Some(Op::Get),
            2 => Some(Op::Set),
            3 => Some(Op::Delete),
            4 => Some(Op::Ping),
            5 => Some(Op::Stats),
            6 => Some(Op::Batch),
            _ => None,
        }
    }

    /// The wire op byte.
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    /// Whether the op changes the store (and is therefore deduplicated by sequence).
    pub fn is_write(self) -> bool {
        matches!(self, Op::Set | Op::Delete)
    }

    /// Whether the op carries a key.
    pub fn has_key(self) -> bool {
        matches!(self, Op::Get | Op::Set | Op::Delete)
    }

    /// Upper-case name, as used in documentation and tool output.
    pub fn name(self) -> &'static str {
        match self {
            Op::Get => "GET",
            Op::Set => "SET",
            Op::Delete => "DELETE",
            Op::Ping => "PING",
            Op::Stats => "STATS",
            Op::Batch => "BATCH",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A response status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u16)]
pub enum Status {
    /// Success. GET: the payload is the value. STATS: the payload is the text.
    Ok = 200,
    /// GET of a key that is not present.
    NotFound = 201,
    /// The request broke a rule of the wire format.
    Malformed = 400,
    /// The request lacked a valid cookie and the reply would have been larger than it.
    /// The header's `cookie` field holds the cookie to resend with.
    CookieRequired = 407,
    /// The datagram was larger than [`MAX_DATAGRAM_SIZE`].
    TooLarge = 413,
    /// This server is not the leader. The payload is the leader's client address as
    /// ASCII `"ip:port"`, or empty when the leader is unknown (e.g. during an election).
    NotLeader = 421,
    /// The server failed to execute the request.
    Failed = 500,
    /// The server is overloaded; retry later with the same sequence number.
    Busy = 503,
    /// The server's disk is full; writes fail, reads still work.
    NoSpace = 507,
}

impl Status {
    /// Every status, in numeric order.
    pub const ALL: [Status; 9] = [
        Status::Ok,
        Status::NotFound,
        Status::Malformed,
        Status::CookieRequired,
        Status::TooLarge,
        Status::NotLeader,
        Status::Failed,
        Status::Busy,
        Status::NoSpace,
    ];

    /// Decodes a wire status code.
    pub fn from_u16(v: u16) -> Option<Status> {
        match v {
            200 => Some(Status::Ok),
            201 => Some(Status::NotFound),
            400 => Some(Status::Malformed),
            407 => Some(Status::CookieRequired),
            413 => Some(Status::TooLarge),
            421 => Some(Status::NotLeader),
            500 => Some(Status::Failed),
            503 => Some(Status::Busy),
            507 => Some(Status::NoSpace),
            _ => None,
        }
    }

    /// The wire status code.
    pub fn as_u16(self) -> u16 {
        self as u16
    }

    /// Whether the request was executed successfully (a GET miss counts as success).
    pub fn is_success(self) -> bool {
        matches!(self, Status::Ok | Status::NotFound)
    }

    /// Short name, as used in tool output.
    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "Ok",
            Status::NotFound => "NotFound",
            Status::Malformed => "Malformed",
            Status::CookieRequired => "CookieRequired",
            Status::TooLarge => "TooLarge",
            Status::NotLeader => "NotLeader",
            Status::Failed => "Failed",
            Status::Busy => "Busy",
            Status::NoSpace => "NoSpace",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.as_u16(), self.name())
    }
}

/// A parsed (or to-be-encoded) request. Borrows its key and value from the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'a> {
    pub op: Op,
    pub client_id: u64,
    pub request_seq: u64,
    /// The cookie the client holds for this server, or [`NO_COOKIE`].
    pub cookie: u64,
    pub key: &'a str,
    pub value: &'a [u8],
}

impl<'a> Request<'a> {
    /// Size of the datagram this request encodes to.
    pub fn encoded_len(&self) -> usize {
        REQUEST_HEADER_SIZE + self.key.len() + self.value.len()
    }

    /// Checks the rules [`parse_request`] enforces on the body, so a client can refuse
    /// to send what the server would reject.
    pub fn validate(&self) -> Result<(), RejectReason> {
        if self.encoded_len() > MAX_DATAGRAM_SIZE {
            return Err(RejectReason::Oversize);
        }
        check_body(self.op, self.key.as_bytes(), self.value.len()).map(|_| ())
    }

    /// The fields a reply to this request is addressed with.
    pub fn addressing(&self) -> Addressing {
        Addressing {
            op: Some(self.op),
            client_id: self.client_id,
            request_seq: self.request_seq,
            cookie: self.cookie,
        }
    }
}

/// A parsed (or to-be-encoded) response. Borrows its payload from the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response<'a> {
    /// The request's op, or `None` (wire 0) when the request's op byte was unknown.
    pub op: Option<Op>,
    pub status: Status,
    pub client_id: u64,
    pub request_seq: u64,
    /// The server's cookie for the client's address, or [`NO_COOKIE`].
    pub cookie: u64,
    pub payload: &'a [u8],
}

impl<'a> Response<'a> {
    /// A reply addressed to `to`.
    pub fn reply(to: &Addressing, status: Status, cookie: u64, payload: &'a [u8]) -> Self {
        Response {
            op: to.op,
            status,
            client_id: to.client_id,
            request_seq: to.request_seq,
            cookie,
            payload,
        }
    }

    /// The [`Status::CookieRequired`] reply: header only, carrying `cookie`.
    pub fn cookie_required(to: &Addressing, cookie: u64) -> Response<'static> {
        Response {
            op: to.op,
            status: Status::CookieRequired,
            client_id: to.client_id,
            request_seq: to.request_seq,
            cookie,
            payload: &[],
        }
    }

    /// Size of the datagram this response encodes to.
    pub fn encoded_len(&self) -> usize {
        RESPONSE_HEADER_SIZE + self.payload.len()
    }
}

/// The header fields of a request that a reply is addressed with. Available even for
/// requests that are rejected, as long as magic and version were right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addressing {
    /// `None` when the op byte is not a known op (the reply then carries op 0).
    pub op: Option<Op>,
    pub client_id: u64,
    pub request_seq: u64,
    /// The cookie the request carried, for the server's validity check.
    pub cookie: u64,
}

/// Why [`parse_request`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Not a request of this protocol: drop it silently, send nothing.
    Unaddressable(Unaddressable),
    /// A request of this protocol that breaks a rule: reply with
    /// [`Rejection::status`] to [`Rejection::to`] (subject to the cookie rule).
    Rejected(Rejection),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Unaddressable(u) => write!(f, "unaddressable datagram: {u}"),
            ParseError::Rejected(r) => write!(f, "{}: {}", r.status(), r.reason.message()),
        }
    }
}

impl std::error::Error for ParseError {}

/// A datagram that cannot be answered because it is not recognisably ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unaddressable {
    /// Shorter than a request header (this includes the empty datagram).
    TooShort,
    /// The first two bytes are not [`MAGIC`].
    BadMagic,
    /// The version byte is not [`VERSION`].
    BadVersion,
}

impl fmt::Display for Unaddressable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Unaddressable::TooShort => "shorter than a header",
            Unaddressable::BadMagic => "bad magic",
            Unaddressable::BadVersion => "unsupported version",
        })
    }
}

/// A request rejected with enough header to address the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    /// Whom to reply to.
    pub to: Addressing,
    /// Which rule the request broke.
    pub reason: RejectReason,
}

impl Rejection {
    /// The status to reply with.
    pub fn status(&self) -> Status {
        self.reason.status()
    }

    /// The error reply, with the reason's message as payload. The caller must still
    /// apply the cookie rule ([`reply_fits_unvalidated`]) before sending it.
    pub fn response(&self, cookie: u64) -> Response<'static> {
        Response::reply(
            &self.to,
            self.status(),
            cookie,
            self.reason.message().as_bytes(),
        )
    }
}

/// Which rule a rejected request broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// The datagram is larger than [`MAX_DATAGRAM_SIZE`] (status [`Status::TooLarge`]).
    Oversize,
    /// The op byte is not a known op.
    UnknownOp,
    /// The flags field is not zero.
    NonZeroFlags,
    /// The reserved field is not zero.
    NonZeroReserved,
    /// `40 + key_len + value_len` is not the datagram length.
    LengthMismatch,
    /// GET, SET or DELETE with an empty key.
    EmptyKey,
    /// PING or STATS with a key.
    UnexpectedKey,
    /// An op other than SET with a value.
    UnexpectedValue,
    /// The key contains a NUL byte.
    KeyContainsNul,
    /// The key is not valid UTF-8.
    KeyNotUtf8,
    /// A BATCH datagram parsed as a single request, or an item of a batch whose op may
    /// not be batched (STATS, BATCH).
    NotBatchable,
    /// A batch with no items, or whose items do not fill its body exactly.
    BadBatch,
}

impl RejectReason {
    /// The status a request rejected for this reason is answered with.
    pub fn status(self) -> Status {
        match self {
            RejectReason::Oversize => Status::TooLarge,
            _ => Status::Malformed,
        }
    }

    /// A short ASCII explanation, sent as the error reply's payload.
    pub fn message(self) -> &'static str {
        match self {
            RejectReason::Oversize => "datagram larger than the size limit",
            RejectReason::UnknownOp => "unknown op",
            RejectReason::NonZeroFlags => "flags must be zero",
            RejectReason::NonZeroReserved => "reserved must be zero",
            RejectReason::LengthMismatch => "key_len + value_len do not match the datagram",
            RejectReason::EmptyKey => "key must not be empty",
            RejectReason::UnexpectedKey => "op takes no key",
            RejectReason::UnexpectedValue => "op takes no value",
            RejectReason::KeyContainsNul => "key contains a NUL byte",
            RejectReason::KeyNotUtf8 => "key is not valid UTF-8",
            RejectReason::NotBatchable => "op cannot be an item of a batch",
            RejectReason::BadBatch => "batch items do not fill its body",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

/// Why [`parse_response`] failed. A client ignores such datagrams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseError {
    TooShort,
    BadMagic,
    BadVersion,
    Oversize,
    /// `40 + payload_len` is not the datagram length.
    LengthMismatch,
    NonZeroFlags,
    NonZeroReserved,
    UnknownOp(u8),
    UnknownStatus(u16),
}

impl fmt::Display for ResponseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResponseError::TooShort => f.write_str("response shorter than a header"),
            ResponseError::BadMagic => f.write_str("response has bad magic"),
            ResponseError::BadVersion => f.write_str("response has unsupported version"),
            ResponseError::Oversize => f.write_str("response larger than the size limit"),
            ResponseError::LengthMismatch => f.write_str("response payload_len mismatch"),
            ResponseError::NonZeroFlags => f.write_str("response flags not zero"),
            ResponseError::NonZeroReserved => f.write_str("response reserved not zero"),
            ResponseError::UnknownOp(op) => write!(f, "response has unknown op {op}"),
            ResponseError::UnknownStatus(s) => write!(f, "response has unknown status {s}"),
        }
    }
}

impl std::error::Error for ResponseError {}

// Readers of received bytes never panic: a field past the end reads as zero (the parsers
// check the length first, so that never decides anything).

#[inline]
fn field<const N: usize>(buf: &[u8], at: usize) -> [u8; N] {
    crate::le::array(buf, at).unwrap_or([0; N])
}

#[inline]
fn get_u8(buf: &[u8], at: usize) -> u8 {
    u8::from_le_bytes(field(buf, at))
}

#[inline]
fn get_u16(buf: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(field(buf, at))
}

#[inline]
fn get_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(field(buf, at))
}

#[inline]
fn get_u64(buf: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(field(buf, at))
}

#[inline]
fn put(buf: &mut [u8], at: usize, bytes: &[u8]) {
    buf[at..at + bytes.len()].copy_from_slice(bytes);
}

/// Digits a STATS request's key (the first line of the page asked for) has at most.
pub const STATS_LINE_DIGITS_MAX: usize = 6;

/// The page of STATS `text` that starts at line `first_line`: as many whole lines as fit in
/// a response payload (at least one, cut to fit if it alone is too long); empty past the
/// last line. The second value is the number of lines in the page.
pub fn stats_page(text: &str, first_line: usize) -> (String, usize) {
    let mut page = String::new();
    let mut lines = 0;
    for line in text.lines().skip(first_line) {
        if page.len() + line.len() + 1 > MAX_PAYLOAD_LEN {
            if lines == 0 {
                let mut cut = MAX_PAYLOAD_LEN - 1;
                while !line.is_char_boundary(cut) {
                    cut -= 1;
                }
                page.push_str(&line[..cut]);
                page.push('\n');
                lines = 1;
            }
            break;
        }
        page.push_str(line);
        page.push('\n');
        lines += 1;
    }
    (page, lines)
}

/// Checks the op-specific shape and the key rules; returns the key as `&str`.
fn check_body(op: Op, key: &[u8], value_len: usize) -> Result<&str, RejectReason> {
    match op {
        Op::Get | Op::Delete | Op::Set => {
            if key.is_empty() {
                return Err(RejectReason::EmptyKey);
            }
            if op != Op::Set && value_len != 0 {
                return Err(RejectReason::UnexpectedValue);
            }
        }
        Op::Batch => return Err(RejectReason::NotBatchable),
        Op::Ping | Op::Stats => {
            // STATS may name the first line to send: the text is sent in pages.
            let page_start = op == Op::Stats
                && key.len() <= STATS_LINE_DIGITS_MAX
                && key.iter().all(u8::is_ascii_digit);
            if !key.is_empty() && !page_start {
                return Err(RejectReason::UnexpectedKey);
            }
            if value_len != 0 {
                return Err(RejectReason::UnexpectedValue);
            }
        }
    }
    if key.contains(&0) {
        return Err(RejectReason::KeyContainsNul);
    }
    std::str::from_utf8(key).map_err(|_| RejectReason::KeyNotUtf8)
}

/// The addressing of a request datagram (single or BATCH), once it is recognisably ours:
/// long enough for a header, with the right magic and version.
fn request_addressing(buf: &[u8]) -> Result<Addressing, ParseError> {
    if buf.len() < REQUEST_HEADER_SIZE {
        return Err(ParseError::Unaddressable(Unaddressable::TooShort));
    }
    if get_u16(buf, offset::MAGIC) != MAGIC {
        return Err(ParseError::Unaddressable(Unaddressable::BadMagic));
    }
    if get_u8(buf, offset::VERSION) != VERSION {
        return Err(ParseError::Unaddressable(Unaddressable::BadVersion));
    }
    Ok(Addressing {
        op: Op::from_u8(get_u8(buf, offset::OP)),
        client_id: get_u64(buf, offset::CLIENT_ID),
        request_seq: get_u64(buf, offset::REQUEST_SEQ),
        cookie: get_u64(buf, offset::COOKIE),
    })
}

/// Parses one request datagram.
///
/// Pass the whole datagram. A server should receive into a buffer of at least
/// `MAX_DATAGRAM_SIZE + 1` bytes: an oversize datagram truncated to that buffer is still
/// longer than [`MAX_DATAGRAM_SIZE`] and is rejected with [`Status::TooLarge`].
pub fn parse_request(buf: &[u8]) -> Result<Request<'_>, ParseError> {
    let to = request_addressing(buf)?;
    let op = to.op;
    let reject = |reason| ParseError::Rejected(Rejection { to, reason });
    if buf.len() > MAX_DATAGRAM_SIZE {
        return Err(reject(RejectReason::Oversize));
    }
    let Some(op) = op else {
        return Err(reject(RejectReason::UnknownOp));
    };
    if get_u16(buf, offset::FLAGS) != 0 {
        return Err(reject(RejectReason::NonZeroFlags));
    }
    if get_u32(buf, offset::RESERVED) != 0 {
        return Err(reject(RejectReason::NonZeroReserved));
    }
    let key_len = usize::from(get_u16(buf, offset::KEY_LEN));
    let value_len = get_u32(buf, offset::VALUE_LEN) as usize;
    // No overflow: key_len < 2^16 and value_len < 2^32 fit a 64-bit usize comfortably.
    if REQUEST_HEADER_SIZE as u64 + key_len as u64 + value_len as u64 != buf.len() as u64 {
        return Err(reject(RejectReason::LengthMismatch));
    }
    let body = buf.get(REQUEST_HEADER_SIZE..).unwrap_or_default();
    let (key, value) = body
        .split_at_checked(key_len)
        .ok_or(reject(RejectReason::LengthMismatch))?;
    let key = check_body(op, key, value_len).map_err(reject)?;
    Ok(Request {
        op,
        client_id: to.client_id,
        request_seq: to.request_seq,
        cookie: to.cookie,
        key,
        value,
    })
}

/// Encodes `req` into the front of `buf` and returns the datagram length.
///
/// The request is encoded as given, even if it breaks a rule (use
/// [`Request::validate`] first to avoid that).
///
/// # Panics
///
/// If `buf` is shorter than [`Request::encoded_len`], or the key is longer than
/// `u16::MAX` bytes, or the value longer than `u32::MAX` bytes.
pub fn encode_request_into(req: &Request<'_>, buf: &mut [u8]) -> usize {
    let key_len = u16::try_from(req.key.len()).expect("key longer than u16::MAX");
    let value_len = u32::try_from(req.value.len()).expect("value longer than u32::MAX");
    let len = req.encoded_len();
    assert!(
        buf.len() >= len,
        "buffer of {} bytes cannot hold a {len}-byte request",
        buf.len()
    );
    put(buf, offset::MAGIC, &MAGIC.to_le_bytes());
    buf[offset::VERSION] = VERSION;
    buf[offset::OP] = req.op.as_u8();
    put(buf, offset::KEY_LEN, &key_len.to_le_bytes());
    put(buf, offset::FLAGS, &0u16.to_le_bytes());
    put(buf, offset::CLIENT_ID, &req.client_id.to_le_bytes());
    put(buf, offset::REQUEST_SEQ, &req.request_seq.to_le_bytes());
    put(buf, offset::COOKIE, &req.cookie.to_le_bytes());
    put(buf, offset::VALUE_LEN, &value_len.to_le_bytes());
    put(buf, offset::RESERVED, &0u32.to_le_bytes());
    let key_end = REQUEST_HEADER_SIZE + req.key.len();
    put(buf, REQUEST_HEADER_SIZE, req.key.as_bytes());
    put(buf, key_end, req.value);
    len
}

/// Appends the encoding of `req` to `out`. See [`encode_request_into`].
pub fn encode_request(req: &Request<'_>, out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + req.encoded_len(), 0);
    encode_request_into(req, &mut out[start..]);
}

/// Parses one response datagram.
pub fn parse_response(buf: &[u8]) -> Result<Response<'_>, ResponseError> {
    if buf.len() < RESPONSE_HEADER_SIZE {
        return Err(ResponseError::TooShort);
    }
    if get_u16(buf, offset::MAGIC) != MAGIC {
        return Err(ResponseError::BadMagic);
    }
    if get_u8(buf, offset::VERSION) != VERSION {
        return Err(ResponseError::BadVersion);
    }
    if buf.len() > MAX_DATAGRAM_SIZE {
        return Err(ResponseError::Oversize);
    }
    let (op, status) = reply_op_and_status(get_u8(buf, offset::OP), get_u16(buf, offset::STATUS))?;
    if get_u16(buf, offset::FLAGS) != 0 {
        return Err(ResponseError::NonZeroFlags);
    }
    if get_u32(buf, offset::RESERVED) != 0 {
        return Err(ResponseError::NonZeroReserved);
    }
    let payload_len = get_u32(buf, offset::PAYLOAD_LEN) as u64;
    if RESPONSE_HEADER_SIZE as u64 + payload_len != buf.len() as u64 {
        return Err(ResponseError::LengthMismatch);
    }
    Ok(Response {
        op,
        status,
        client_id: get_u64(buf, offset::CLIENT_ID),
        request_seq: get_u64(buf, offset::REQUEST_SEQ),
        cookie: get_u64(buf, offset::COOKIE),
        payload: buf.get(RESPONSE_HEADER_SIZE..).unwrap_or_default(),
    })
}

/// A reply's op (0: the request's op was unknown) and status, as the wire has them.
fn reply_op_and_status(op: u8, code: u16) -> Result<(Option<Op>, Status), ResponseError> {
    let op = match op {
        0 => None,
        b => Some(Op::from_u8(b).ok_or(ResponseError::UnknownOp(b))?),
    };
    let status = Status::from_u16(code).ok_or(ResponseError::UnknownStatus(code))?;
    Ok((op, status))
}

/// Encodes `resp` into the front of `buf` and returns the datagram length.
///
/// # Panics
///
/// If `buf` is shorter than [`Response::encoded_len`] or the payload is longer than
/// `u32::MAX` bytes.
pub fn encode_response_into(resp: &Response<'_>, buf: &mut [u8]) -> usize {
    let payload_len = u32::try_from(resp.payload.len()).expect("payload longer than u32::MAX");
    let len = resp.encoded_len();
    assert!(
        buf.len() >= len,
        "buffer of {} bytes cannot hold a {len}-byte response",
        buf.len()
    );
    put(buf, offset::MAGIC, &MAGIC.to_le_bytes());
    buf[offset::VERSION] = VERSION;
    buf[offset::OP] = resp.op.map_or(0, Op::as_u8);
    put(buf, offset::STATUS, &resp.status.as_u16().to_le_bytes());
    put(buf, offset::FLAGS, &0u16.to_le_bytes());
    put(buf, offset::CLIENT_ID, &resp.client_id.to_le_bytes());
    put(buf, offset::REQUEST_SEQ, &resp.request_seq.to_le_bytes());
    put(buf, offset::COOKIE, &resp.cookie.to_le_bytes());
    put(buf, offset::PAYLOAD_LEN, &payload_len.to_le_bytes());
    put(buf, offset::RESERVED, &0u32.to_le_bytes());
    put(buf, RESPONSE_HEADER_SIZE, resp.payload);
    len
}

/// Appends the encoding of `resp` to `out`. See [`encode_response_into`].
pub fn encode_response(resp: &Response<'_>, out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + resp.encoded_len(), 0);
    encode_response_into(resp, &mut out[start..]);
}

/// The anti-amplification cookie for a source address under the server's `secret`.
///
/// A keyed xxh3 hash of the address family, IP and port; never [`NO_COOKIE`]. The
/// server keeps `secret` random and private (and may rotate it; clients then receive
/// [`Status::CookieRequired`] again and pick up the new cookie).
pub fn cookie_for(secret: &[u8; COOKIE_SECRET_LEN], addr: &SocketAddr) -> u64 {
    // 8 secret bytes + family tag + up to 16 address bytes + 2 port bytes.
    let mut data = [0u8; 8 + 1 + 16 + 2];
    let seed = u64::from_le_bytes(secret[..8].try_into().expect("8 bytes"));
    data[..8].copy_from_slice(&secret[8..]);
    let ip_end = match addr.ip() {
        IpAddr::V4(ip) => {
            data[8] = 4;
            data[9..13].copy_from_slice(&ip.octets());
            13
        }
        IpAddr::V6(ip) => {
            data[8] = 6;
            data[9..25].copy_from_slice(&ip.octets());
            25
        }
    };
    data[ip_end..ip_end + 2].copy_from_slice(&addr.port().to_le_bytes());
    let hash = xxhash_rust::xxh3::xxh3_64_with_seed(&data[..ip_end + 2], seed);
    if hash == NO_COOKIE { 1 } else { hash }
}

/// Whether a reply of `response_len` bytes may be sent to a source whose request of
/// `request_len` bytes did not carry its valid cookie: only if it is no larger.
///
/// When this is false the server sends [`Response::cookie_required`] instead, which is
/// [`RESPONSE_HEADER_SIZE`] bytes and therefore always fits.
pub fn reply_fits_unvalidated(request_len: usize, response_len: usize) -> bool {
    response_len <= request_len
}

/// Decodes a [`Status::NotLeader`] payload: the leader's client address as ASCII
/// `"ip:port"` (`"[v6]:port"` for IPv6). `None` when empty or unparsable.
pub fn parse_leader_hint(payload: &[u8]) -> Option<SocketAddr> {
    std::str::from_utf8(payload).ok()?.trim().parse().ok()
}

pub mod batch;
pub use batch::{
    BATCH_ITEM_HEADER_SIZE, Batch, BatchResponse, MAX_BATCH_DATAGRAM_SIZE, Reply, parse_batch,
    parse_reply,
};

#[cfg(test)]
mod tests;
