//! The command encoding shared by shard window buffers, log entries and replay.
//!
//! A shard writes each valid write request straight into its window buffer in this form;
//! the replication core concatenates the buffers into one log entry without re-encoding,
//! and replay walks the same bytes. All integers are little-endian.
//!
//! ```text
//! offset  size  field
//!      0     1  op            0 NOP, 1 GET, 2 SET, 3 DELETE, 7 CONFIG
//!      1     1  reserved      0
//!      2     2  key_len       bytes of key, excluding the NUL
//!      4     4  reserved      0
//!      8     8  client_id     exactly-once session (0 = none)
//!     16     8  request_seq   sequence within the session
//!     24     k  key, NUL      k = align_up(key_len + 1, 8)
//!   24+k     8  value_len
//!   32+k     v  value         then zero padding: the command's size is a multiple of 32
//! ```
//!
//! Writes that read before they write (SET NX/XX/GET, INCRBY, GETDEL) are encoded the same
//! way with an op of [`ConditionalOp`] and flags in byte 1, but only inside a window: the
//! leader's replication core resolves each against the state every earlier write leaves
//! and puts the plain SET, DELETE or NOP it comes to into the entry
//! ([`crate::replica::conditional`]). The log holds only ops 0–3, so replay and a fuzzy
//! checkpoint stay idempotent; [`decode_at`] refuses anything else.
//!
//! A NOP with a session (client_id ≠ 0) stands for a SET the leader dropped because the
//! next write of its key in the same entry sets it again ([`crate::replica::dedup`]):
//! applying it records the session and changes nothing else. The NOPs of conditional
//! writes carry no session.
//!
//! A CONFIG command changes the cluster's membership: no key, no session, and as its
//! value a [`crate::consensus::membership::Change`]. It is the only command of its entry
//! (see [`config_change`]), and no other entry holds one.

use crate::storage::io::align_up;

/// Every command starts and ends on this boundary inside a window or entry.
pub const COMMAND_ALIGN: usize = 32;
/// Bytes before the key.
pub const COMMAND_HEADER_SIZE: usize = 24;
/// Longest key accepted anywhere in the engine.
pub const KEY_SIZE_MAX: usize = 1024;
/// Longest value accepted by the engine (the UDP protocol's own cap is smaller; the RESP
/// door takes values up to this).
pub const VALUE_SIZE_MAX: usize = 16 << 20;
// A window's hard cap (half an entry) plus one command of the longest value fits an entry.
const _: () = assert!(
    crate::storage::log::COMMAND_LENGTH_MAX / 2
        + encoded_size(KEY_SIZE_MAX, VALUE_SIZE_MAX)
        + (1 << 20)
        <= crate::storage::log::COMMAND_LENGTH_MAX
);
const _: () = assert!(COMMAND_HEADER_SIZE.is_multiple_of(8));
const _: () = assert!(KEY_SIZE_MAX < u16::MAX as usize);

/// A command's operation code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CommandOp {
    Nop = 0,
    Get = 1,
    Set = 2,
    Delete = 3,
    /// A membership change (see the module docs).
    Config = 7,
}

impl CommandOp {
    /// Decodes an op byte.
    pub fn from_u8(byte: u8) -> Option<CommandOp> {
        match byte {
            0 => Some(CommandOp::Nop),
            1 => Some(CommandOp::Get),
            2 => Some(CommandOp::Set),
            3 => Some(CommandOp::Delete),
            7 => Some(CommandOp::Config),
            _ => None,
        }
    }
}

/// A write that reads the key's current value first. Window buffers only: never logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ConditionalOp {
    /// SET with flags [`SET_NX`], [`SET_XX`], [`SET_GET`].
    SetIf = 4,
    /// Adds the value (8 bytes, a little-endian i64) to the key's integer.
    IncrBy = 5,
    /// Deletes the key and answers its value.
    GetDel = 6,
}

/// SET only if the key is absent.
pub const SET_NX: u8 = 1;
/// SET only if the key exists.
pub const SET_XX: u8 = 2;
/// Answer the value the key had before.
pub const SET_GET: u8 = 4;

impl ConditionalOp {
    fn from_u8(byte: u8) -> Option<ConditionalOp> {
        match byte {
            4 => Some(ConditionalOp::SetIf),
            5 => Some(ConditionalOp::IncrBy),
            6 => Some(ConditionalOp::GetDel),
            _ => None,
        }
    }
}

/// One decoded command, borrowing the entry's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandRef<'a> {
    pub op: CommandOp,
    pub client_id: u64,
    pub request_seq: u64,
    pub key: &'a [u8],
    pub value: &'a [u8],
    /// Where the command starts, relative to the start of the commands region.
    pub offset: usize,
    /// The command's encoded size, padding included.
    pub size: usize,
}

/// The encoded size of a command with these key and value lengths.
pub const fn encoded_size(key_len: usize, value_len: usize) -> usize {
    align_up(
        COMMAND_HEADER_SIZE + align_up(key_len + 1, 8) + 8 + value_len,
        COMMAND_ALIGN,
    )
}

/// Appends one encoded command to `out`. Panics if the key or value exceeds the engine's
/// limits or the key holds a NUL: callers validate input first.
pub fn encode(
    out: &mut Vec<u8>,
    op: CommandOp,
    client_id: u64,
    request_seq: u64,
    key: &[u8],
    value: &[u8],
) {
    encode_raw(out, op as u8, 0, client_id, request_seq, key, value);
}

/// Appends one window-only command (see the module docs); same limits as [`encode`].
pub fn encode_conditional(
    out: &mut Vec<u8>,
    op: ConditionalOp,
    flags: u8,
    client_id: u64,
    request_seq: u64,
    key: &[u8],
    value: &[u8],
) {
    encode_raw(out, op as u8, flags, client_id, request_seq, key, value);
}

fn encode_raw(
    out: &mut Vec<u8>,
    op: u8,
    flags: u8,
    client_id: u64,
    request_seq: u64,
    key: &[u8],
    value: &[u8],
) {
    assert!(key.len() <= KEY_SIZE_MAX && value.len() <= VALUE_SIZE_MAX);
    assert!(!key.contains(&0), "keys never contain NUL");
    let start = out.len();
    debug_assert_eq!(start % COMMAND_ALIGN, 0);
    out.push(op);
    out.push(flags);
    out.extend_from_slice(&(key.len() as u16).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&client_id.to_le_bytes());
    out.extend_from_slice(&request_seq.to_le_bytes());
    out.extend_from_slice(key);
    out.resize(start + COMMAND_HEADER_SIZE + align_up(key.len() + 1, 8), 0);
    out.extend_from_slice(&(value.len() as u64).to_le_bytes());
    out.extend_from_slice(value);
    out.resize(start + encoded_size(key.len(), value.len()), 0);
}

/// Why a commands region failed to decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub offset: usize,
    pub reason: &'static str,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bad command at offset {}: {}", self.offset, self.reason)
    }
}

impl std::error::Error for DecodeError {}

/// Decodes the command at `offset` of `region` (a log entry's: window-only ops are
/// refused). Never panics, whatever the bytes.
pub fn decode_at(region: &[u8], offset: usize) -> Result<CommandRef<'_>, DecodeError> {
    decode_inner(region, offset, false).map(|(cmd, _)| cmd)
}

/// A window-only command's op and flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conditional {
    pub op: ConditionalOp,
    pub flags: u8,
}

/// Decodes the command at `offset` of a window buffer: a log command, or a window-only
/// one (then its [`CommandRef::op`] says NOP and the second field what it is).
pub fn decode_window_at(
    region: &[u8],
    offset: usize,
) -> Result<(CommandRef<'_>, Option<Conditional>), DecodeError> {
    decode_inner(region, offset, true)
}

fn decode_inner(
    region: &[u8],
    offset: usize,
    window: bool,
) -> Result<(CommandRef<'_>, Option<Conditional>), DecodeError> {
    let fail = |reason| Err(DecodeError { offset, reason });
    let rest = region.get(offset..).unwrap_or_default();
    // The shortest command: the header, an empty key's NUL padded to 8, the value length.
    if rest.len() < COMMAND_HEADER_SIZE + 8 + 8 {
        return fail("truncated header");
    }
    let Some((header, after_header)) = rest.split_first_chunk::<COMMAND_HEADER_SIZE>() else {
        return fail("truncated header");
    };
    let [
        op,
        reserved,
        key_len_lo,
        key_len_hi,
        r0,
        r1,
        r2,
        r3,
        ids @ ..,
    ] = *header;
    let conditional = match ConditionalOp::from_u8(op) {
        Some(op) if window => Some(Conditional {
            op,
            flags: reserved,
        }),
        _ => None,
    };
    let op = match (CommandOp::from_u8(op), conditional) {
        (Some(op), _) => op,
        (None, Some(_)) => CommandOp::Nop,
        (None, None) => return fail("unknown op"),
    };
    let flags_allowed = match conditional {
        Some(Conditional {
            op: ConditionalOp::SetIf,
            ..
        }) => SET_NX | SET_XX | SET_GET,
        _ => 0,
    };
    if reserved & !flags_allowed != 0 || [r0, r1, r2, r3] != [0; 4] {
        return fail("reserved bytes set");
    }
    let key_len = u16::from_le_bytes([key_len_lo, key_len_hi]) as usize;
    if key_len > KEY_SIZE_MAX {
        return fail("key too long");
    }
    if op == CommandOp::Config && (key_len != 0 || ids.iter().any(|&b| b != 0)) {
        return fail("a membership change has a key or a session");
    }
    let (client_id, request_seq) = match ids.split_first_chunk::<8>() {
        Some((client_id, request_seq)) => (
            u64::from_le_bytes(*client_id),
            request_seq
                .first_chunk::<8>()
                .map_or(0, |b| u64::from_le_bytes(*b)),
        ),
        None => (0, 0),
    };
    let key_field = align_up(key_len + 1, 8);
    let Some((key_field, after_key)) = after_header.split_at_checked(key_field) else {
        return fail("truncated key");
    };
    let Some((value_len, after_len)) = after_key.split_first_chunk::<8>() else {
        return fail("truncated key");
    };
    let Some((key, terminator)) = key_field.split_at_checked(key_len) else {
        return fail("truncated key");
    };
    if terminator.first() != Some(&0) || key.contains(&0) {
        return fail("key not NUL-terminated");
    }
    let value_len = u64::from_le_bytes(*value_len);
    if value_len > VALUE_SIZE_MAX as u64 {
        return fail("value too long");
    }
    let size = encoded_size(key_len, value_len as usize);
    let Some(value) = after_len.get(..value_len as usize) else {
        return fail("truncated value");
    };
    if rest.len() < size {
        return fail("truncated value");
    }
    Ok((
        CommandRef {
            op,
            client_id,
            request_seq,
            key,
            value,
            offset,
            size,
        },
        conditional,
    ))
}

/// Iterates over the commands of a region, stopping at the first error.
pub struct Commands<'a> {
    region: &'a [u8],
    offset: usize,
    failed: bool,
}

impl<'a> Commands<'a> {
    /// Walks `region`, which holds whole commands back to back.
    pub fn new(region: &'a [u8]) -> Commands<'a> {
        Commands {
            region,
            offset: 0,
            failed: false,
        }
    }
}

impl<'a> Iterator for Commands<'a> {
    type Item = Result<CommandRef<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.offset >= self.region.len() {
            return None;
        }
        let result = decode_at(self.region, self.offset);
        match &result {
            Ok(cmd) => self.offset += cmd.size,
            Err(_) => self.failed = true,
        }
        Some(result)
    }
}

/// The membership change an entry's commands region holds, if it holds exactly one
/// CONFIG command (`None` for any other region); its value must decode as a change.
pub fn config_change(
    region: &[u8],
) -> Option<Result<crate::consensus::membership::Change, &'static str>> {
    let cmd = decode_at(region, 0).ok()?;
    if cmd.op != CommandOp::Config {
        return None;
    }
    if cmd.size != region.len() {
        return Some(Err("a membership change shares its entry"));
    }
    Some(crate::consensus::membership::Change::decode(cmd.value))
}

/// Encodes the entry of one membership change.
pub fn encode_config(change: &crate::consensus::membership::Change) -> Vec<u8> {
    let mut out = Vec::new();
    encode(&mut out, CommandOp::Config, 0, 0, b"", &change.encode());
    out
}

/// Whether `region` holds a CONFIG command anywhere.
pub fn has_config(region: &[u8]) -> bool {
    Commands::new(region).any(|c| c.is_ok_and(|c| c.op == CommandOp::Config))
}

/// Counts the commands of `region` (whole commands back to back), failing at the first
/// that does not decode. Entries carry this count; it is checked, never trusted.
pub fn count(region: &[u8]) -> Result<u64, DecodeError> {
    Commands::new(region).try_fold(0u64, |n, cmd| cmd.map(|_| n + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_every_field() {
        let mut buf = Vec::new();
        encode(&mut buf, CommandOp::Set, 7, 9, b"alpha", b"value-bytes");
        encode(&mut buf, CommandOp::Delete, 8, 10, b"", b"");
        encode(&mut buf, CommandOp::Set, 0, 0, b"k", &[0xAB; 300]);
        assert_eq!(buf.len() % COMMAND_ALIGN, 0);
        let cmds: Vec<_> = Commands::new(&buf).map(Result::unwrap).collect();
        assert_eq!(cmds.len(), 3);
        assert_eq!(cmds[0].op, CommandOp::Set);
        assert_eq!((cmds[0].client_id, cmds[0].request_seq), (7, 9));
        assert_eq!(cmds[0].key, b"alpha");
        assert_eq!(cmds[0].value, b"value-bytes");
        assert_eq!(cmds[1].op, CommandOp::Delete);
        assert_eq!(cmds[1].key, b"");
        assert_eq!(cmds[2].value, &[0xAB; 300][..]);
        assert_eq!(cmds[2].offset, cmds[0].size + cmds[1].size);
        assert_eq!(encoded_size(5, 11), cmds[0].size);
    }

    #[test]
    fn rejects_lies_in_lengths() {
        let mut buf = Vec::new();
        encode(&mut buf, CommandOp::Set, 1, 1, b"key", b"v");
        let mut bad = buf.clone();
        bad[2] = 200; // key_len beyond the region
        assert!(decode_at(&bad, 0).is_err());
        let mut bad = buf.clone();
        bad[32..40].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(decode_at(&bad, 0).is_err());
        let mut bad = buf.clone();
        bad[0] = 9;
        assert!(decode_at(&bad, 0).is_err());
        assert!(decode_at(&buf[..20], 0).is_err());
    }

    #[test]
    fn window_only_commands_never_decode_as_log_commands() {
        let mut buf = Vec::new();
        encode_conditional(
            &mut buf,
            ConditionalOp::SetIf,
            SET_NX | SET_GET,
            3,
            4,
            b"k",
            b"v",
        );
        encode_conditional(
            &mut buf,
            ConditionalOp::IncrBy,
            0,
            3,
            5,
            b"n",
            &7i64.to_le_bytes(),
        );
        assert_eq!(decode_at(&buf, 0).unwrap_err().reason, "unknown op");
        let (cmd, cond) = decode_window_at(&buf, 0).unwrap();
        assert_eq!(
            (cmd.key, cmd.value, cmd.op),
            (&b"k"[..], &b"v"[..], CommandOp::Nop)
        );
        assert_eq!(
            cond,
            Some(Conditional {
                op: ConditionalOp::SetIf,
                flags: SET_NX | SET_GET
            })
        );
        let (cmd, cond) = decode_window_at(&buf, cmd.size).unwrap();
        assert_eq!(cond.map(|c| c.op), Some(ConditionalOp::IncrBy));
        assert_eq!(cmd.value, 7i64.to_le_bytes());
        // Flags on an op that has none, or unknown flags, are refused.
        let mut bad = buf.clone();
        bad[1] = 8;
        assert!(decode_window_at(&bad, 0).is_err());
        let mut bad = buf.clone();
        bad[cmd.offset + 1] = SET_NX;
        assert!(decode_window_at(&bad, cmd.offset).is_err());
        // A plain command decodes the same either way.
        let mut plain = Vec::new();
        encode(&mut plain, CommandOp::Set, 1, 1, b"a", b"b");
        assert_eq!(
            decode_window_at(&plain, 0).unwrap(),
            (decode_at(&plain, 0).unwrap(), None)
        );
    }
}
