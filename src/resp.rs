//! RESP2, the Redis serialization protocol: commands as clients send them, and replies.
//!
//! A command is an array of bulk strings (`*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`), or an
//! *inline* line of words (`PING\r\n`, what a person types into `telnet`). A reply is a
//! simple string (`+OK`), an error (`-ERR …`), an integer (`:1`), a bulk string (`$3\r\nabc`,
//! `$-1` for none) or an array of replies (`*-1` for none).
//!
//! Parsing is incremental and bounded. A parser is handed whatever bytes a connection has
//! buffered and returns a whole command with the number of bytes it took, or how many
//! bytes it needs at least before it is worth trying again, or a protocol error (in
//! Redis's words: a server answers it and closes the connection, as Redis does). Every
//! length is checked against [`Limits`] before anything is allocated, and no byte is read
//! past the buffer; arguments borrow from it where they can.

use std::borrow::Cow;

/// Bounds on what a peer may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Elements of one command (or reply array) at most.
    pub args_max: usize,
    /// Bytes of one bulk string at most.
    pub bulk_max: usize,
    /// Bytes of an inline command line at most.
    pub inline_max: usize,
    /// Arrays nested in a reply at most.
    pub depth_max: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            args_max: 1 << 20,
            bulk_max: BULK_MAX,
            inline_max: 64 << 10,
            depth_max: 16,
        }
    }
}

/// The default bound on one bulk string: 16 MiB plus room for a command's other fields.
pub const BULK_MAX: usize = (16 << 20) + 4096;

/// Digits a length line may have (a `u64`, or `-1`), so a header is found or refused
/// within a few bytes.
const LENGTH_DIGITS_MAX: usize = 20;

/// What the bytes buffered so far hold.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<T> {
    /// A whole item, and the bytes it took from the front of the buffer.
    Done(T, usize),
    /// Not yet a whole item: try again once at least this many bytes are buffered.
    Incomplete { need: usize },
}

/// A protocol error; its text follows `ERR Protocol error: ` in Redis's replies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl ProtocolError {
    fn new(what: impl Into<String>) -> ProtocolError {
        ProtocolError(what.into())
    }

    /// The error reply a server sends before it closes the connection.
    pub fn reply(&self) -> Vec<u8> {
        let mut out = Vec::new();
        error(&mut out, &format!("ERR Protocol error: {}", self.0));
        out
    }
}

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "protocol error: {}", self.0)
    }
}

impl std::error::Error for ProtocolError {}

/// A command's arguments, the command name first. Empty for an empty line or `*0`, which
/// clients may send and a server skips.
pub type Args<'a> = Vec<Cow<'a, [u8]>>;

/// Finds the `\r\n`-terminated line that starts at `at` and is at most `max` bytes long:
/// its end (the `\r`), `Ok(None)` if the buffer ends first, an error if it is longer.
fn line_end(buf: &[u8], at: usize, max: usize, what: &str) -> Result<Option<usize>, ProtocolError> {
    let rest = buf.get(at..).unwrap_or_default();
    let window = &rest[..rest.len().min(max + 2)];
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(i) => Ok(Some(at + i)),
        None if rest.len() >= max + 2 => Err(ProtocolError::new(what.to_string())),
        None => Ok(None),
    }
}

/// The decimal integer `digits` holds (`-` allowed in front), if it is one.
fn parse_int(digits: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(digits).ok()?;
    if s.is_empty() || s.starts_with('+') {
        return None;
    }
    s.parse().ok()
}

/// Parses one command from the front of `buf`.
pub fn parse_command<'a>(
    buf: &'a [u8],
    limits: &Limits,
) -> Result<Parsed<Args<'a>>, ProtocolError> {
    match buf.first() {
        None => Ok(Parsed::Incomplete { need: 1 }),
        Some(b'*') => parse_multibulk(buf, limits),
        Some(_) => parse_inline(buf, limits),
    }
}

fn parse_multibulk<'a>(buf: &'a [u8], limits: &Limits) -> Result<Parsed<Args<'a>>, ProtocolError> {
    let Some(end) = line_end(buf, 1, LENGTH_DIGITS_MAX, "invalid multibulk length")? else {
        return Ok(Parsed::Incomplete {
            need: buf.len() + 1,
        });
    };
    let count = parse_int(&buf[1..end])
        .filter(|&n| n <= limits.args_max as i64)
        .ok_or_else(|| ProtocolError::new("invalid multibulk length"))?;
    let mut at = end + 2;
    if count <= 0 {
        return Ok(Parsed::Done(Vec::new(), at));
    }
    // Not `count` slots up front: a peer could claim a million and send nothing.
    let mut args = Vec::with_capacity((count as usize).min(64));
    for _ in 0..count {
        match buf.get(at) {
            None => return Ok(Parsed::Incomplete { need: at + 1 }),
            Some(b'$') => {}
            Some(&c) => {
                return Err(ProtocolError::new(format!(
                    "expected '$', got '{}'",
                    char::from(c).escape_default()
                )));
            }
        }
        let Some(end) = line_end(buf, at + 1, LENGTH_DIGITS_MAX, "invalid bulk length")? else {
            return Ok(Parsed::Incomplete {
                need: buf.len() + 1,
            });
        };
        let len = parse_int(&buf[at + 1..end])
            .filter(|&n| n >= 0 && n as u64 <= limits.bulk_max as u64)
            .ok_or_else(|| ProtocolError::new("invalid bulk length"))? as usize;
        let start = end + 2;
        let stop = start + len;
        if buf.len() < stop + 2 {
            return Ok(Parsed::Incomplete { need: stop + 2 });
        }
        if &buf[stop..stop + 2] != b"\r\n" {
            return Err(ProtocolError::new("bulk string not followed by CRLF"));
        }
        args.push(Cow::Borrowed(&buf[start..stop]));
        at = stop + 2;
    }
    Ok(Parsed::Done(args, at))
}

fn parse_inline<'a>(buf: &'a [u8], limits: &Limits) -> Result<Parsed<Args<'a>>, ProtocolError> {
    let window = &buf[..buf.len().min(limits.inline_max + 1)];
    let Some(nl) = window.iter().position(|&b| b == b'\n') else {
        if buf.len() > limits.inline_max {
            return Err(ProtocolError::new("too big inline request"));
        }
        return Ok(Parsed::Incomplete {
            need: buf.len() + 1,
        });
    };
    let line = &buf[..nl];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let args = split_inline(line)?;
    if args.len() > limits.args_max {
        return Err(ProtocolError::new("invalid multibulk length"));
    }
    Ok(Parsed::Done(args, nl + 1))
}

/// Splits an inline line into words as Redis does: blanks separate words; a word may be
/// "double-quoted" (with `\"`, `\\`, `\n`, `\r`, `\t`, `\b`, `\a` and `\xHH` escapes) or
/// 'single-quoted' (with `\'`); a closing quote must end the word.
fn split_inline(line: &[u8]) -> Result<Args<'_>, ProtocolError> {
    let unbalanced = || ProtocolError::new("unbalanced quotes in request");
    let mut args: Args<'_> = Vec::new();
    let mut i = 0;
    while i < line.len() {
        while line.get(i).is_some_and(|b| b.is_ascii_whitespace()) {
            i += 1;
        }
        let Some(&first) = line.get(i) else { break };
        if first != b'"' && first != b'\'' {
            let start = i;
            while line.get(i).is_some_and(|b| !b.is_ascii_whitespace()) {
                i += 1;
            }
            args.push(Cow::Borrowed(&line[start..i]));
            continue;
        }
        let mut word = Vec::new();
        i += 1;
        loop {
            let Some(&c) = line.get(i) else {
                return Err(unbalanced());
            };
            if c == first {
                i += 1;
                if line.get(i).is_some_and(|b| !b.is_ascii_whitespace()) {
                    return Err(unbalanced());
                }
                break;
            }
            if c == b'\\' && first == b'"' {
                let hex = |b: u8| (b as char).to_digit(16);
                match line.get(i + 1) {
                    Some(b'x')
                        if line.get(i + 2).and_then(|&b| hex(b)).is_some()
                            && line.get(i + 3).and_then(|&b| hex(b)).is_some() =>
                    {
                        let hi = line.get(i + 2).and_then(|&b| hex(b)).unwrap_or(0);
                        let lo = line.get(i + 3).and_then(|&b| hex(b)).unwrap_or(0);
                        word.push((hi * 16 + lo) as u8);
                        i += 4;
                        continue;
                    }
                    Some(&e) => {
                        word.push(match e {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'b' => 8,
                            b'a' => 7,
                            other => other,
                        });
                        i += 2;
                        continue;
                    }
                    None => return Err(unbalanced()),
                }
            }
            if c == b'\\' && first == b'\'' && line.get(i + 1) == Some(&b'\'') {
                word.push(b'\'');
                i += 2;
                continue;
            }
            word.push(c);
            i += 1;
        }
        args.push(Cow::Owned(word));
    }
    Ok(args)
}

/// Appends a command as an array of bulk strings.
pub fn command<A: AsRef<[u8]>>(out: &mut Vec<u8>, args: &[A]) {
    array_header(out, Some(args.len()));
    for a in args {
        bulk(out, Some(a.as_ref()));
    }
}

/// Appends a simple string reply (`+OK`). `s` must not hold CR or LF.
pub fn simple(out: &mut Vec<u8>, s: &str) {
    debug_assert!(!s.contains(['\r', '\n']));
    out.push(b'+');
    out.extend_from_slice(s.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends an error reply; `msg` starts with its kind (`ERR …`, `WRONGTYPE …`). CR and LF
/// in it become spaces.
pub fn error(out: &mut Vec<u8>, msg: &str) {
    out.push(b'-');
    out.extend(
        msg.bytes()
            .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.extend_from_slice(b"\r\n");
}

/// Appends an integer reply.
pub fn integer(out: &mut Vec<u8>, n: i64) {
    out.push(b':');
    out.extend_from_slice(n.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends a bulk string reply, or the null bulk string for `None`.
pub fn bulk(out: &mut Vec<u8>, value: Option<&[u8]>) {
    match value {
        Some(v) => {
            out.push(b'$');
            out.extend_from_slice(v.len().to_string().as_bytes());
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(v);
            out.extend_from_slice(b"\r\n");
        }
        None => out.extend_from_slice(b"$-1\r\n"),
    }
}

/// Appends the header of an array of `len` replies, or the null array for `None`.
pub fn array_header(out: &mut Vec<u8>, len: Option<usize>) {
    match len {
        Some(n) => {
            out.push(b'*');
            out.extend_from_slice(n.to_string().as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        None => out.extend_from_slice(b"*-1\r\n"),
    }
}

/// A reply, as a client reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Simple(Vec<u8>),
    Error(Vec<u8>),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// Appends this reply in its wire form.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Reply::Simple(s) | Reply::Error(s) => {
                out.push(if matches!(self, Reply::Simple(_)) {
                    b'+'
                } else {
                    b'-'
                });
                out.extend_from_slice(s);
                out.extend_from_slice(b"\r\n");
            }
            Reply::Integer(n) => integer(out, *n),
            Reply::Bulk(v) => bulk(out, v.as_deref()),
            Reply::Array(items) => {
                array_header(out, items.as_ref().map(Vec::len));
                for item in items.iter().flatten() {
                    item.encode(out);
                }
            }
        }
    }
}

/// Parses one reply from the front of `buf`.
pub fn parse_reply(buf: &[u8], limits: &Limits) -> Result<Parsed<Reply>, ProtocolError> {
    parse_reply_at(buf, 0, limits, 0)
}

fn parse_reply_at(
    buf: &[u8],
    at: usize,
    limits: &Limits,
    depth: usize,
) -> Result<Parsed<Reply>, ProtocolError> {
    let Some(&kind) = buf.get(at) else {
        return Ok(Parsed::Incomplete { need: at + 1 });
    };
    let max = match kind {
        b'+' | b'-' => limits.inline_max,
        _ => LENGTH_DIGITS_MAX,
    };
    let Some(end) = line_end(buf, at + 1, max, "reply line too long")? else {
        return Ok(Parsed::Incomplete {
            need: buf.len() + 1,
        });
    };
    let line = &buf[at + 1..end];
    let next = end + 2;
    let bad = |what: &str| ProtocolError::new(format!("bad {what} in reply"));
    Ok(match kind {
        b'+' => Parsed::Done(Reply::Simple(line.to_vec()), next),
        b'-' => Parsed::Done(Reply::Error(line.to_vec()), next),
        b':' => Parsed::Done(
            Reply::Integer(parse_int(line).ok_or_else(|| bad("integer"))?),
            next,
        ),
        b'$' => {
            let len = parse_int(line).ok_or_else(|| bad("bulk length"))?;
            if len == -1 {
                return Ok(Parsed::Done(Reply::Bulk(None), next));
            }
            if len < 0 || len as u64 > limits.bulk_max as u64 {
                return Err(bad("bulk length"));
            }
            let stop = next + len as usize;
            if buf.len() < stop + 2 {
                return Ok(Parsed::Incomplete { need: stop + 2 });
            }
            if &buf[stop..stop + 2] != b"\r\n" {
                return Err(bad("bulk terminator"));
            }
            Parsed::Done(Reply::Bulk(Some(buf[next..stop].to_vec())), stop + 2)
        }
        b'*' => {
            let len = parse_int(line).ok_or_else(|| bad("array length"))?;
            if len == -1 {
                return Ok(Parsed::Done(Reply::Array(None), next));
            }
            if len < 0 || len as u64 > limits.args_max as u64 {
                return Err(bad("array length"));
            }
            if depth >= limits.depth_max {
                return Err(ProtocolError::new("replies nested too deeply"));
            }
            let mut items = Vec::with_capacity((len as usize).min(64));
            let mut pos = next;
            for _ in 0..len {
                match parse_reply_at(buf, pos, limits, depth + 1)? {
                    Parsed::Done(item, after) => {
                        items.push(item);
                        pos = after;
                    }
                    incomplete => return Ok(incomplete),
                }
            }
            Parsed::Done(Reply::Array(Some(items)), pos)
        }
        other => {
            return Err(ProtocolError::new(format!(
                "unknown reply type '{}'",
                char::from(other).escape_default()
            )));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn args_of(parsed: Parsed<Args<'_>>) -> (Vec<Vec<u8>>, usize) {
        match parsed {
            Parsed::Done(args, n) => (args.into_iter().map(|a| a.into_owned()).collect(), n),
            other => panic!("not a whole command: {other:?}"),
        }
    }

    fn words(ws: &[&str]) -> Vec<Vec<u8>> {
        ws.iter().map(|w| w.as_bytes().to_vec()).collect()
    }

    #[test]
    fn pipelined_commands_parse_one_after_another() {
        let mut buf = Vec::new();
        command(&mut buf, &["SET", "k", "v"]);
        command(&mut buf, &["GET", "k"]);
        buf.extend_from_slice(b"PING\r\n");
        let limits = Limits::default();
        let (a, n1) = args_of(parse_command(&buf, &limits).unwrap());
        assert_eq!(a, words(&["SET", "k", "v"]));
        let (b, n2) = args_of(parse_command(&buf[n1..], &limits).unwrap());
        assert_eq!(b, words(&["GET", "k"]));
        let (c, n3) = args_of(parse_command(&buf[n1 + n2..], &limits).unwrap());
        assert_eq!(c, words(&["PING"]));
        assert_eq!(n1 + n2 + n3, buf.len());
    }

    /// Every proper prefix of a command is incomplete, and asks for more than it has but
    /// never more than the command's length.
    #[test]
    fn every_prefix_is_incomplete_and_asks_for_no_more_than_the_command() {
        let mut buf = Vec::new();
        command(&mut buf, &["MSET", "a", "1", "bb", "", "ccc", "xyz"]);
        let limits = Limits::default();
        for cut in 0..buf.len() {
            match parse_command(&buf[..cut], &limits).unwrap() {
                Parsed::Incomplete { need } => {
                    assert!(need > cut && need <= buf.len(), "cut {cut}: need {need}")
                }
                done => panic!("cut {cut}: {done:?}"),
            }
        }
    }

    #[test]
    fn bad_headers_and_lengths_are_protocol_errors() {
        let limits = Limits {
            args_max: 4,
            bulk_max: 10,
            ..Limits::default()
        };
        let cases: &[(&[u8], &str)] = &[
            (b"*x\r\n", "invalid multibulk length"),
            (b"*5\r\n", "invalid multibulk length"),
            (b"*+1\r\n", "invalid multibulk length"),
            (b"*99999999999999999999999\r\n", "invalid multibulk length"),
            (b"*1\r\n:5\r\n", "expected '$', got ':'"),
            (b"*1\r\n$11\r\n", "invalid bulk length"),
            (b"*1\r\n$-1\r\n", "invalid bulk length"),
            (b"*1\r\n$1\r\nab\r\n", "bulk string not followed by CRLF"),
            (b"SET \"a\"b c\r\n", "unbalanced quotes in request"),
            (b"SET \"abc\r\n", "unbalanced quotes in request"),
        ];
        for (input, want) in cases {
            let err = parse_command(input, &limits).unwrap_err();
            assert_eq!(&err.0, want, "{:?}", String::from_utf8_lossy(input));
        }
        // A header that never ends is refused once it is longer than any length can be.
        let endless = [b'*'].into_iter().chain([b'1'; 64]).collect::<Vec<u8>>();
        assert!(parse_command(&endless, &limits).is_err());
        let long_line = vec![b'a'; limits.inline_max + 1];
        assert_eq!(
            parse_command(&long_line, &limits).unwrap_err().0,
            "too big inline request"
        );
    }

    #[test]
    fn inline_commands_split_like_redis() {
        let limits = Limits::default();
        let (a, n) = args_of(parse_command(b"  set  key   value \r\nGET", &limits).unwrap());
        assert_eq!((a, n), (words(&["set", "key", "value"]), 21));
        let (a, _) = args_of(parse_command(b"SET \"a b\\x41\\n\" 'it\\'s'\n", &limits).unwrap());
        assert_eq!(
            a,
            vec![b"SET".to_vec(), b"a bA\n".to_vec(), b"it's".to_vec()]
        );
        let (a, n) = args_of(parse_command(b"\r\n", &limits).unwrap());
        assert!(a.is_empty() && n == 2, "an empty line is an empty command");
        let (a, n) = args_of(parse_command(b"*0\r\n", &limits).unwrap());
        assert!(a.is_empty() && n == 4);
    }

    #[test]
    fn replies_encode_and_parse_back() {
        let reply = Reply::Array(Some(vec![
            Reply::Simple(b"OK".to_vec()),
            Reply::Error(b"ERR no".to_vec()),
            Reply::Integer(-42),
            Reply::Bulk(Some(b"a\r\nb".to_vec())),
            Reply::Bulk(None),
            Reply::Array(None),
            Reply::Array(Some(vec![])),
        ]));
        let mut out = Vec::new();
        reply.encode(&mut out);
        let limits = Limits::default();
        assert_eq!(
            parse_reply(&out, &limits).unwrap(),
            Parsed::Done(reply, out.len())
        );
        for cut in 0..out.len() {
            assert!(matches!(
                parse_reply(&out[..cut], &limits).unwrap(),
                Parsed::Incomplete { need } if need > cut && need <= out.len()
            ));
        }
        let deep = "*1\r\n".repeat(limits.depth_max + 1) + ":1\r\n";
        assert!(parse_reply(deep.as_bytes(), &limits).is_err());
    }

    proptest! {
        #[test]
        fn commands_round_trip(args in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..40), 1..8)) {
            let mut buf = Vec::new();
            command(&mut buf, &args);
            let limits = Limits::default();
            let (parsed, n) = args_of(parse_command(&buf, &limits).unwrap());
            prop_assert_eq!(parsed, args);
            prop_assert_eq!(n, buf.len());
        }

        #[test]
        fn any_bytes_parse_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let limits = Limits { args_max: 8, bulk_max: 64, inline_max: 64, depth_max: 4 };
            let mut at = 0;
            while at < bytes.len() {
                match parse_command(&bytes[at..], &limits) {
                    Ok(Parsed::Done(_, n)) => { prop_assert!(n > 0); at += n; }
                    _ => break,
                }
            }
            let _ = parse_reply(&bytes, &limits);
        }
    }
}
