//! BATCH datagrams: several requests in one datagram, several replies in one datagram.
//!
//! The kernel's per-datagram cost (one `recvmmsg`/`sendmmsg` slot, one socket-buffer
//! charge, one wakeup) dominates a small request. A client with many requests in flight to
//! one server packs them into a BATCH request, and the server packs the replies it has
//! for one address into BATCH replies. Every item keeps its own `client_id` and
//! `request_seq`, so the exactly-once rules are those of single requests, item by item.
//!
//! # Request
//!
//! The 40-byte request header with `op` 6 (BATCH), `key_len` 0, and `value_len` the length
//! of the body. `client_id` and `request_seq` name the batch itself (the client chooses
//! them; they are echoed only in a reply to the whole batch). The body is a sequence of
//! items, each a 24-byte item header followed by the item's key and value:
//!
//! ```text
//!  0   1   2       4               8                              16
//!  +---+---+-------+---------------+-------------------------------+
//!  |op |fl |key_len|   value_len   |           client_id           |
//!  +---+---+-------+---------------+-------------------------------+
//! 16                              24
//!  +-------------------------------+--------------+----------------+
//!  |          request_seq          | key          | value          |
//!  +-------------------------------+--------------+----------------+
//! ```
//!
//! An item is GET, SET, DELETE or PING and obeys every rule of a single request of that
//! op, including that it would fit a datagram on its own (`40 + key_len + value_len ≤
//! 1024`). The whole datagram is at most [`MAX_BATCH_DATAGRAM_SIZE`] bytes. A batch is
//! checked whole before any item runs: one broken item rejects the batch, with one reply
//! to the batch's own `client_id` and `request_seq`.
//!
//! # Replies
//!
//! A batch whose `cookie` is not the valid cookie for its source address runs nothing:
//! the server answers the batch once with [`Status::CookieRequired`](super::Status) (40
//! bytes, never more than the request), and the client resends it with the cookie. So
//! the anti-amplification rule holds per datagram without counting items.
//!
//! The items of a valid batch are answered with BATCH replies: the 40-byte response
//! header with `op` 6, `status` 200, `client_id` and `request_seq` 0, the server's
//! cookie, and `payload_len` the body length; the body is a sequence of reply items:
//!
//! ```text
//!  0   1   2       4               8                              16
//!  +---+---+-------+---------------+-------------------------------+
//!  |op |fl |status |  payload_len  |      client_id (echoed)       |
//!  +---+---+-------+---------------+-------------------------------+
//! 16                              24
//!  +-------------------------------+-------------------------------+
//!  |     request_seq (echoed)      |      payload (payload_len)    |
//!  +-------------------------------+-------------------------------+
//! ```
//!
//! Reply items carry what a single reply would (status, payload), one per request item.
//! They need not come in one datagram, nor in request order: a GET is answered at once, a
//! SET once its window is durable, and the replies of several batches from the same
//! address may share a datagram. A client matches each reply item by its `client_id` and
//! `request_seq`, and resends (same sequence numbers) what stays unanswered.

use super::*;

/// Largest BATCH datagram, request or reply: fits one Ethernet frame with IPv6 and some
/// tunnel headers, so a batch is never fragmented on a 1500-byte path.
pub const MAX_BATCH_DATAGRAM_SIZE: usize = 1400;
/// Size of the header in front of every item, request or reply.
pub const BATCH_ITEM_HEADER_SIZE: usize = 24;
/// Largest body of a BATCH datagram.
pub const MAX_BATCH_BODY: usize = MAX_BATCH_DATAGRAM_SIZE - REQUEST_HEADER_SIZE;

const _: () = assert!(MAX_BATCH_DATAGRAM_SIZE > MAX_DATAGRAM_SIZE);
// A reply item the size of the largest single reply fits a BATCH reply.
const _: () = assert!(
    RESPONSE_HEADER_SIZE + BATCH_ITEM_HEADER_SIZE + MAX_PAYLOAD_LEN <= MAX_BATCH_DATAGRAM_SIZE
);
const _: () = assert!(MAX_BATCH_BODY <= u32::MAX as usize);

/// Item header byte offsets (request and reply share them; bytes 2..4 hold `key_len` in
/// a request item and `status` in a reply item, 4..8 `value_len` or `payload_len`).
mod item {
    pub const OP: usize = 0;
    pub const FLAGS: usize = 1;
    pub const KEY_LEN: usize = 2;
    pub const STATUS: usize = 2;
    pub const VALUE_LEN: usize = 4;
    pub const CLIENT_ID: usize = 8;
    pub const REQUEST_SEQ: usize = 16;
}

/// Whether `buf` is a BATCH request (right magic and version, op 6); such a datagram is
/// parsed with [`parse_batch`], every other one with [`parse_request`].
pub fn is_batch(buf: &[u8]) -> bool {
    buf.len() >= REQUEST_HEADER_SIZE
        && get_u16(buf, offset::MAGIC) == MAGIC
        && get_u8(buf, offset::VERSION) == VERSION
        && get_u8(buf, offset::OP) == Op::Batch.as_u8()
}

/// A parsed BATCH request: every item already checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batch<'a> {
    /// The batch's own addressing (op BATCH), for a reply to the whole batch.
    pub to: Addressing,
    /// Number of items.
    pub len: usize,
    body: &'a [u8],
}

impl<'a> Batch<'a> {
    /// The items in datagram order; each carries the batch's cookie.
    pub fn items(&self) -> impl Iterator<Item = Request<'a>> + 'a {
        let (body, cookie) = (self.body, self.to.cookie);
        let mut at = 0;
        std::iter::from_fn(move || {
            let (req, next) = request_item(body, at).ok()??;
            at = next;
            Some(Request { cookie, ..req })
        })
    }
}

/// The request item at `at` of `body` and the offset after it; `Ok(None)` at the end.
fn request_item(body: &[u8], at: usize) -> Result<Option<(Request<'_>, usize)>, RejectReason> {
    let Some(rest) = body.get(at..).filter(|r| !r.is_empty()) else {
        return Ok(None);
    };
    if rest.len() < BATCH_ITEM_HEADER_SIZE {
        return Err(RejectReason::BadBatch);
    }
    let op = Op::from_u8(get_u8(rest, item::OP)).ok_or(RejectReason::UnknownOp)?;
    if matches!(op, Op::Stats | Op::Batch) {
        return Err(RejectReason::NotBatchable);
    }
    if get_u8(rest, item::FLAGS) != 0 {
        return Err(RejectReason::NonZeroFlags);
    }
    let key_len = usize::from(get_u16(rest, item::KEY_LEN));
    let value_len = get_u32(rest, item::VALUE_LEN) as usize;
    // As a single request it must fit a datagram: then whatever it stores reads back
    // with a single GET. (No overflow: key_len < 2^16, value_len < 2^32.)
    if (REQUEST_HEADER_SIZE as u64) + key_len as u64 + value_len as u64 > MAX_DATAGRAM_SIZE as u64 {
        return Err(RejectReason::Oversize);
    }
    let end = BATCH_ITEM_HEADER_SIZE + key_len + value_len;
    let body_bytes = rest
        .get(BATCH_ITEM_HEADER_SIZE..end)
        .ok_or(RejectReason::BadBatch)?;
    let (key, value) = body_bytes
        .split_at_checked(key_len)
        .ok_or(RejectReason::BadBatch)?;
    let key = check_body(op, key, value_len)?;
    let req = Request {
        op,
        client_id: get_u64(rest, item::CLIENT_ID),
        request_seq: get_u64(rest, item::REQUEST_SEQ),
        cookie: NO_COOKIE,
        key,
        value,
    };
    Ok(Some((req, at + end)))
}

/// Parses a BATCH request datagram (see [`is_batch`]) and checks every item.
///
/// Receive into a buffer larger than [`MAX_BATCH_DATAGRAM_SIZE`], so an oversize batch
/// is seen as such and rejected with [`Status::TooLarge`].
pub fn parse_batch(buf: &[u8]) -> Result<Batch<'_>, ParseError> {
    let to = request_addressing(buf)?;
    let reject = |reason| ParseError::Rejected(Rejection { to, reason });
    if to.op != Some(Op::Batch) {
        return Err(reject(RejectReason::UnknownOp));
    }
    if buf.len() > MAX_BATCH_DATAGRAM_SIZE {
        return Err(reject(RejectReason::Oversize));
    }
    if get_u16(buf, offset::FLAGS) != 0 {
        return Err(reject(RejectReason::NonZeroFlags));
    }
    if get_u32(buf, offset::RESERVED) != 0 {
        return Err(reject(RejectReason::NonZeroReserved));
    }
    if get_u16(buf, offset::KEY_LEN) != 0 {
        return Err(reject(RejectReason::UnexpectedKey));
    }
    let body_len = get_u32(buf, offset::VALUE_LEN) as u64;
    if REQUEST_HEADER_SIZE as u64 + body_len != buf.len() as u64 {
        return Err(reject(RejectReason::LengthMismatch));
    }
    let body = buf.get(REQUEST_HEADER_SIZE..).unwrap_or_default();
    let (mut at, mut len) = (0, 0);
    while let Some((_, next)) = request_item(body, at).map_err(reject)? {
        at = next;
        len += 1;
    }
    if len == 0 {
        return Err(reject(RejectReason::BadBatch));
    }
    Ok(Batch { to, len, body })
}

/// Bytes `req` takes as an item of a BATCH request.
pub fn request_item_len(req: &Request<'_>) -> usize {
    BATCH_ITEM_HEADER_SIZE + req.key.len() + req.value.len()
}

/// Starts a BATCH request addressed `to` (its `client_id`, `request_seq` and `cookie`) at
/// the end of `out`; returns where it starts, for [`push_request_item`].
pub fn begin_batch(out: &mut Vec<u8>, to: &Addressing) -> usize {
    let start = out.len();
    out.resize(start + REQUEST_HEADER_SIZE, 0);
    let h = &mut out[start..];
    put(h, offset::MAGIC, &MAGIC.to_le_bytes());
    h[offset::VERSION] = VERSION;
    h[offset::OP] = Op::Batch.as_u8();
    put(h, offset::CLIENT_ID, &to.client_id.to_le_bytes());
    put(h, offset::REQUEST_SEQ, &to.request_seq.to_le_bytes());
    put(h, offset::COOKIE, &to.cookie.to_le_bytes());
    start
}

/// Appends `req` (its cookie is ignored: the batch's counts) to the batch begun at
/// `start`, and updates the batch's body length. The caller keeps the datagram within
/// [`MAX_BATCH_DATAGRAM_SIZE`] and the item within the single-request rules
/// ([`Request::validate`]).
///
/// # Panics
///
/// If `start` is not where [`begin_batch`] began a batch in `out`, or the key or value
/// is longer than its field.
pub fn push_request_item(out: &mut Vec<u8>, start: usize, req: &Request<'_>) {
    let key_len = u16::try_from(req.key.len()).expect("key longer than u16::MAX");
    let value_len = u32::try_from(req.value.len()).expect("value longer than u32::MAX");
    let mut h = [0u8; BATCH_ITEM_HEADER_SIZE];
    h[item::OP] = req.op.as_u8();
    put(&mut h, item::KEY_LEN, &key_len.to_le_bytes());
    put(&mut h, item::VALUE_LEN, &value_len.to_le_bytes());
    put(&mut h, item::CLIENT_ID, &req.client_id.to_le_bytes());
    put(&mut h, item::REQUEST_SEQ, &req.request_seq.to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(req.key.as_bytes());
    out.extend_from_slice(req.value);
    set_body_len(out, start);
}

fn set_body_len(out: &mut [u8], start: usize) {
    let body = out.len() - start - REQUEST_HEADER_SIZE;
    let body = u32::try_from(body).expect("batch body longer than u32::MAX");
    put(&mut out[start..], offset::VALUE_LEN, &body.to_le_bytes());
}

/// Bytes `resp` takes as an item of a BATCH reply.
pub fn response_item_len(resp: &Response<'_>) -> usize {
    BATCH_ITEM_HEADER_SIZE + resp.payload.len()
}

/// Starts a BATCH reply carrying `cookie` at the end of `out`; returns where it starts,
/// for [`push_response_item`].
pub fn begin_batch_response(out: &mut Vec<u8>, cookie: u64) -> usize {
    let start = out.len();
    let envelope = Response {
        op: Some(Op::Batch),
        status: Status::Ok,
        client_id: 0,
        request_seq: 0,
        cookie,
        payload: &[],
    };
    encode_response(&envelope, out);
    start
}

/// Appends `resp` (its cookie is ignored: the envelope's counts) to the BATCH reply begun
/// at `start` and updates its payload length. The caller keeps the datagram within
/// [`MAX_BATCH_DATAGRAM_SIZE`].
///
/// # Panics
///
/// If `start` is not where [`begin_batch_response`] began a reply in `out`, or the
/// payload is longer than `u32::MAX` bytes.
pub fn push_response_item(out: &mut Vec<u8>, start: usize, resp: &Response<'_>) {
    let payload_len = u32::try_from(resp.payload.len()).expect("payload longer than u32::MAX");
    let mut h = [0u8; BATCH_ITEM_HEADER_SIZE];
    h[item::OP] = resp.op.map_or(0, Op::as_u8);
    put(&mut h, item::STATUS, &resp.status.as_u16().to_le_bytes());
    put(&mut h, item::VALUE_LEN, &payload_len.to_le_bytes());
    put(&mut h, item::CLIENT_ID, &resp.client_id.to_le_bytes());
    put(&mut h, item::REQUEST_SEQ, &resp.request_seq.to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(resp.payload);
    set_body_len(out, start);
}

/// A parsed BATCH reply: every item already checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchResponse<'a> {
    /// The server's cookie for the client's address.
    pub cookie: u64,
    /// Number of items.
    pub len: usize,
    body: &'a [u8],
}

impl<'a> BatchResponse<'a> {
    /// The reply items in datagram order; each carries the envelope's cookie.
    pub fn items(&self) -> impl Iterator<Item = Response<'a>> + 'a {
        let (body, cookie) = (self.body, self.cookie);
        let mut at = 0;
        std::iter::from_fn(move || {
            let (resp, next) = response_item(body, at).ok()??;
            at = next;
            Some(Response { cookie, ..resp })
        })
    }
}

fn response_item(body: &[u8], at: usize) -> Result<Option<(Response<'_>, usize)>, ResponseError> {
    let Some(rest) = body.get(at..).filter(|r| !r.is_empty()) else {
        return Ok(None);
    };
    if rest.len() < BATCH_ITEM_HEADER_SIZE {
        return Err(ResponseError::LengthMismatch);
    }
    let (op, status) = reply_op_and_status(get_u8(rest, item::OP), get_u16(rest, item::STATUS))?;
    if get_u8(rest, item::FLAGS) != 0 {
        return Err(ResponseError::NonZeroFlags);
    }
    let payload_len = get_u32(rest, item::VALUE_LEN) as usize;
    if payload_len > MAX_PAYLOAD_LEN {
        return Err(ResponseError::Oversize);
    }
    let end = BATCH_ITEM_HEADER_SIZE + payload_len;
    let payload = rest
        .get(BATCH_ITEM_HEADER_SIZE..end)
        .ok_or(ResponseError::LengthMismatch)?;
    let resp = Response {
        op,
        status,
        client_id: get_u64(rest, item::CLIENT_ID),
        request_seq: get_u64(rest, item::REQUEST_SEQ),
        cookie: NO_COOKIE,
        payload,
    };
    Ok(Some((resp, at + end)))
}

/// A reply datagram: a single reply (to a request, or to a whole batch), or a BATCH
/// reply holding items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply<'a> {
    Single(Response<'a>),
    Batch(BatchResponse<'a>),
}

/// Parses any reply datagram: a BATCH reply (op 6, status 200) or a single reply.
pub fn parse_reply(buf: &[u8]) -> Result<Reply<'_>, ResponseError> {
    let batch_ok = buf.len() >= RESPONSE_HEADER_SIZE
        && get_u16(buf, offset::MAGIC) == MAGIC
        && get_u8(buf, offset::VERSION) == VERSION
        && get_u8(buf, offset::OP) == Op::Batch.as_u8()
        && get_u16(buf, offset::STATUS) == Status::Ok.as_u16();
    if !batch_ok {
        return parse_response(buf).map(Reply::Single);
    }
    if buf.len() > MAX_BATCH_DATAGRAM_SIZE {
        return Err(ResponseError::Oversize);
    }
    if get_u16(buf, offset::FLAGS) != 0 {
        return Err(ResponseError::NonZeroFlags);
    }
    // The envelope answers no one request: its client_id and request_seq are zero.
    let unaddressed =
        get_u64(buf, offset::CLIENT_ID) == 0 && get_u64(buf, offset::REQUEST_SEQ) == 0;
    if get_u32(buf, offset::RESERVED) != 0 || !unaddressed {
        return Err(ResponseError::NonZeroReserved);
    }
    let body_len = get_u32(buf, offset::PAYLOAD_LEN) as u64;
    if RESPONSE_HEADER_SIZE as u64 + body_len != buf.len() as u64 {
        return Err(ResponseError::LengthMismatch);
    }
    let body = buf.get(RESPONSE_HEADER_SIZE..).unwrap_or_default();
    let (mut at, mut len) = (0, 0);
    while let Some((_, next)) = response_item(body, at)? {
        at = next;
        len += 1;
    }
    Ok(Reply::Batch(BatchResponse {
        cookie: get_u64(buf, offset::COOKIE),
        len,
        body,
    }))
}
