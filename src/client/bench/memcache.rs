//! memcached's text protocol over UDP, as `ocean-liner bench --protocol memcache` speaks
//! it to a memcached server (`memcached -U PORT`), so that memcached is measured by the
//! same client, concurrency model and histograms as Ocean Liner and Redis.
//!
//! A request datagram is memcached's 8-byte UDP frame header (request id, sequence
//! number 0, datagram count 1, reserved 0; big-endian) followed by one or more text
//! commands: `get KEY\r\n` or `set KEY 0 0 LEN\r\nVALUE\r\n`. memcached answers each
//! command in turn under the request's id, in one or more reply datagrams that each carry
//! a frame header of the same shape; the client concatenates a request's reply payloads
//! in arrival order and reads the replies from that stream: `STORED` to a SET, an
//! optional `VALUE KEY FLAGS LEN` block then `END` to a GET, or an error line.
//!
//! Everything a server sends is parsed with bounds checks: a reply that is not this
//! grammar is [`BadReply`], never a panic.

use std::fmt;

/// Bytes of memcached's UDP frame header.
pub const FRAME_HEADER_LEN: usize = 8;
/// Largest request datagram the load tool builds (the size Ocean Liner's BATCH datagrams
/// keep to as well, so both fit one Ethernet frame).
pub const DATAGRAM_MAX: usize = 1400;
/// Longest reply line accepted (a `VALUE` line: a key of at most 250 bytes and numbers).
const LINE_MAX: usize = 512;

/// A reply datagram's frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub request_id: u16,
    pub seq: u16,
    pub total: u16,
}

/// Starts a request datagram with id `request_id`.
pub fn begin_datagram(out: &mut Vec<u8>, request_id: u16) {
    out.extend_from_slice(&request_id.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
}

/// Bytes [`push_get`] appends for a key of `key_len` bytes.
pub fn get_len(key_len: usize) -> usize {
    "get ".len() + key_len + 2
}

/// Bytes [`push_set`] appends for a key and a value of these lengths.
pub fn set_len(key_len: usize, value_len: usize) -> usize {
    "set ".len() + key_len + " 0 0 ".len() + decimal_digits(value_len) + 2 + value_len + 2
}

fn decimal_digits(mut n: usize) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

pub fn push_get(out: &mut Vec<u8>, key: &[u8]) {
    out.extend_from_slice(b"get ");
    out.extend_from_slice(key);
    out.extend_from_slice(b"\r\n");
}

pub fn push_set(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    out.extend_from_slice(b"set ");
    out.extend_from_slice(key);
    out.extend_from_slice(b" 0 0 ");
    out.extend_from_slice(value.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Splits a reply datagram into its frame header and payload.
pub fn parse_frame(datagram: &[u8]) -> Option<(FrameHeader, &[u8])> {
    let (head, payload) = datagram.split_at_checked(FRAME_HEADER_LEN)?;
    let word = |i: usize| u16::from_be_bytes([head[i], head[i + 1]]);
    Some((
        FrameHeader {
            request_id: word(0),
            seq: word(2),
            total: word(4),
        },
        payload,
    ))
}

/// One reply read from a request's reply stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum McReply<'a> {
    Stored,
    NotStored,
    /// A GET hit's block (its `END` follows as a reply of its own).
    Value {
        key: &'a [u8],
        data: &'a [u8],
    },
    End,
    /// `ERROR`, `CLIENT_ERROR …` or `SERVER_ERROR …` (the whole line).
    Error(&'a [u8]),
}

/// The outcome of reading at the start of a reply stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// A reply and the bytes it took.
    Done(McReply<'a>, usize),
    /// More bytes are needed.
    Incomplete,
}

/// A reply that is not memcached's text protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadReply(pub &'static str);

impl fmt::Display for BadReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for BadReply {}

/// Reads one reply from the start of `buf`; a `VALUE` block longer than `value_max` bytes
/// is refused.
pub fn parse_reply(buf: &[u8], value_max: usize) -> Result<Parsed<'_>, BadReply> {
    let Some(eol) = buf.windows(2).take(LINE_MAX).position(|w| w == b"\r\n") else {
        return if buf.len() > LINE_MAX {
            Err(BadReply("reply line too long"))
        } else {
            Ok(Parsed::Incomplete)
        };
    };
    let line = &buf[..eol];
    let after_line = eol + 2;
    let reply = match line {
        b"STORED" => McReply::Stored,
        b"NOT_STORED" => McReply::NotStored,
        b"END" => McReply::End,
        b"ERROR" => McReply::Error(line),
        _ if line.starts_with(b"CLIENT_ERROR") || line.starts_with(b"SERVER_ERROR") => {
            McReply::Error(line)
        }
        _ if line.starts_with(b"VALUE ") => {
            let mut fields = line[b"VALUE ".len()..].split(|&b| b == b' ');
            let key = fields.next().filter(|k| !k.is_empty());
            let flags = fields.next().and_then(parse_decimal);
            let len = fields.next().and_then(parse_decimal);
            // An optional CAS unique may follow (`gets`); nothing after it.
            let cas_ok = fields.next().is_none_or(|c| parse_decimal(c).is_some());
            let (Some(key), Some(_), Some(len), true, None) =
                (key, flags, len, cas_ok, fields.next())
            else {
                return Err(BadReply("malformed VALUE line"));
            };
            if len > value_max as u64 {
                return Err(BadReply("VALUE longer than any value sent"));
            }
            let end = after_line + len as usize;
            let Some(tail) = buf.get(end..end + 2) else {
                return Ok(Parsed::Incomplete);
            };
            if tail != b"\r\n" {
                return Err(BadReply("VALUE data not followed by CRLF"));
            }
            let data = &buf[after_line..end];
            return Ok(Parsed::Done(McReply::Value { key, data }, end + 2));
        }
        _ => return Err(BadReply("unknown reply line")),
    };
    Ok(Parsed::Done(reply, after_line))
}

/// An unsigned decimal of at most 19 digits.
fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn requests_have_the_frame_header_and_the_lengths_announced() {
        let mut out = Vec::new();
        begin_datagram(&mut out, 0xBEEF);
        assert_eq!(out, [0xBE, 0xEF, 0, 0, 0, 1, 0, 0]);
        let before = out.len();
        push_set(&mut out, b"key:0000000001", &[b'v'; 100]);
        assert_eq!(out.len() - before, set_len(14, 100));
        assert!(out[before..].starts_with(b"set key:0000000001 0 0 100\r\nvvv"));
        assert!(out.ends_with(b"v\r\n"));
        let before = out.len();
        push_get(&mut out, b"key:0000000001");
        assert_eq!(&out[before..], b"get key:0000000001\r\n");
        assert_eq!(out.len() - before, get_len(14));
        for n in [0, 9, 10, 99, 100, 1000, 12345] {
            assert_eq!(decimal_digits(n), n.to_string().len());
        }
    }

    #[test]
    fn frames_split_and_short_ones_are_refused() {
        let (h, p) = parse_frame(&[0, 7, 0, 1, 0, 2, 0, 0, b'E']).unwrap();
        let want = FrameHeader {
            request_id: 7,
            seq: 1,
            total: 2,
        };
        assert_eq!(h, want);
        assert_eq!(p, b"E");
        assert!(parse_frame(&[0; 7]).is_none());
    }

    #[test]
    fn a_reply_stream_reads_in_order_and_waits_for_what_is_missing() {
        let stream = b"STORED\r\nVALUE key:1 0 3\r\nabc\r\nEND\r\nEND\r\nNOT_STORED\r\n";
        let mut at = 0;
        let mut got = Vec::new();
        while let Ok(Parsed::Done(r, n)) = parse_reply(&stream[at..], 100) {
            got.push(r);
            at += n;
        }
        assert_eq!(at, stream.len());
        let value = McReply::Value {
            key: b"key:1",
            data: b"abc",
        };
        let want = [
            McReply::Stored,
            value,
            McReply::End,
            McReply::End,
            McReply::NotStored,
        ];
        assert_eq!(got, want);
        // Every strict prefix of a reply is incomplete, never an error.
        let block = b"VALUE key:1 0 3\r\nabc\r\n";
        for cut in 0..block.len() {
            assert_eq!(parse_reply(&block[..cut], 100), Ok(Parsed::Incomplete));
        }
        assert_eq!(
            parse_reply(b"SERVER_ERROR out of memory\r\n", 100),
            Ok(Parsed::Done(
                McReply::Error(b"SERVER_ERROR out of memory"),
                28
            ))
        );
    }

    #[test]
    fn malformed_replies_are_errors_not_panics() {
        for bad in [
            &b"HELLO\r\n"[..],
            b"VALUE\r\n",
            b"VALUE key 0\r\n",
            b"VALUE key x 3\r\nabc\r\n",
            b"VALUE key 0 -3\r\n",
            b"VALUE key 0 3 4 5\r\nabc\r\n",
            b"VALUE key 0 3\r\nabcd\r\n",
            b"VALUE key 0 99999999999999999999\r\n",
            b"VALUE key 0 101\r\n",
        ] {
            let shown = String::from_utf8_lossy(bad);
            assert!(parse_reply(bad, 100).is_err(), "{shown:?}");
        }
        assert!(parse_reply(&[b'x'; LINE_MAX + 10], 100).is_err());
    }

    proptest! {
        /// Arbitrary bytes, and bytes biased to the grammar's own: any outcome but a
        /// panic, and a reply never claims more bytes than it was given.
        #[test]
        fn arbitrary_reply_bytes_never_panic(
            picks in proptest::collection::vec(any::<usize>(), 0..80),
            raw in proptest::collection::vec(any::<u8>(), 0..80),
        ) {
            let alphabet = b"VALUE END\r\n 0123abc";
            let biased: Vec<u8> = picks.iter().map(|&i| alphabet[i % alphabet.len()]).collect();
            for bytes in [biased, raw] {
                if let Ok(Parsed::Done(_, n)) = parse_reply(&bytes, 100) {
                    prop_assert!(n <= bytes.len());
                }
            }
        }
    }
}
