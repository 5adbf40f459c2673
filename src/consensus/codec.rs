//! A bounded binary codec for Raft messages between nodes.
//!
//! raft-rs's own codec is rust-protobuf 2, which has a known stack-overflow advisory when
//! parsing untrusted input (deeply nested messages). Peer bytes never reach it: messages
//! travel in this flat encoding, and every length is checked against the bytes present
//! and against named limits before anything is allocated.
//!
//! ```text
//! message (little-endian)
//!   u8  msg_type        MessageType as i32, 0..=18
//!   u64 to, from, term, log_term, index, commit, commit_term, request_snapshot,
//!       reject_hint
//!   u8  reject          0 or 1
//!   i64 priority
//!   u32 context_len,  context bytes
//!   u32 entry_count, then per entry:
//!       u8 entry_type, u64 term, u64 index, u32 data_len, data, u32 context_len, context
//!         type 0, normal: data the commands, context their count (or both empty)
//!         type 2, a membership change: data its CONFIG command as the log holds it,
//!         context empty (raft-rs's own encoding of the change is rebuilt from it)
//!   u8  has_snapshot    1 only in a MsgSnapshot, which must have it; then:
//!       u64 index, u64 term, u32 voter_count, voters (u64 each),
//!       u32 learner_count, learners, u32 data_len (≤ SNAPSHOT_DATA_MAX), data
//! ```
//!
//! A snapshot message carries only the snapshot's metadata and a descriptor naming the
//! snapshot stream (see [`crate::storage::snapshot`]); the stream itself travels in
//! chunks of its own ahead of the message.

use raft::eraftpb::{Entry, EntryType, Message, MessageType};

/// Largest frame payload accepted from a peer.
pub const MESSAGE_SIZE_MAX: usize = 128 << 20;
/// Most entries in one message.
pub const ENTRY_COUNT_MAX: usize = 1 << 16;
/// Longest context of a message or entry.
pub const CONTEXT_SIZE_MAX: usize = 4096;
/// Longest snapshot data (a descriptor) in a message.
pub const SNAPSHOT_DATA_MAX: usize = 64;
/// Most voters or learners a snapshot's configuration may name.
pub const MEMBERS_MAX: usize = 1024;

/// Why bytes from a peer were refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub &'static str);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bad raft message: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

fn msg_type_from(v: u8) -> Option<MessageType> {
    use MessageType::*;
    Some(match v {
        0 => MsgHup,
        1 => MsgBeat,
        2 => MsgPropose,
        3 => MsgAppend,
        4 => MsgAppendResponse,
        5 => MsgRequestVote,
        6 => MsgRequestVoteResponse,
        7 => MsgSnapshot,
        8 => MsgHeartbeat,
        9 => MsgHeartbeatResponse,
        10 => MsgUnreachable,
        11 => MsgSnapStatus,
        12 => MsgCheckQuorum,
        13 => MsgTransferLeader,
        14 => MsgTimeoutNow,
        15 => MsgReadIndex,
        16 => MsgReadIndexResp,
        17 => MsgRequestPreVote,
        18 => MsgRequestPreVoteResponse,
        _ => return None,
    })
}

/// Appends `msg` to `out`. Panics on a message this cluster never sends (a version-1
/// conf-change entry, a snapshot carrying more than a descriptor): those would be
/// programming errors.
pub fn encode(msg: &Message, out: &mut Vec<u8>) {
    out.push(msg.get_msg_type() as i32 as u8);
    for v in [
        msg.to,
        msg.from,
        msg.term,
        msg.log_term,
        msg.index,
        msg.commit,
        msg.commit_term,
        msg.request_snapshot,
        msg.reject_hint,
    ] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.push(msg.reject as u8);
    out.extend_from_slice(&msg.priority.to_le_bytes());
    put_bytes(out, &msg.context);
    out.extend_from_slice(&(msg.entries.len() as u32).to_le_bytes());
    for e in msg.entries.iter() {
        match e.get_entry_type() {
            EntryType::EntryNormal => {
                out.push(0);
                out.extend_from_slice(&e.term.to_le_bytes());
                out.extend_from_slice(&e.index.to_le_bytes());
                put_bytes(out, &e.data);
                put_bytes(out, &e.context);
            }
            EntryType::EntryConfChangeV2 => {
                out.push(2);
                out.extend_from_slice(&e.term.to_le_bytes());
                out.extend_from_slice(&e.index.to_le_bytes());
                put_bytes(out, &e.context);
                put_bytes(out, &[]);
            }
            EntryType::EntryConfChange => panic!("version-1 conf changes are never made"),
        }
    }
    match msg.snapshot.as_ref() {
        Some(snap) if msg.get_msg_type() == MessageType::MsgSnapshot => {
            let meta = snap.get_metadata();
            let cs = meta.get_conf_state();
            assert!(
                snap.data.len() <= SNAPSHOT_DATA_MAX,
                "a snapshot descriptor"
            );
            out.push(1);
            out.extend_from_slice(&meta.index.to_le_bytes());
            out.extend_from_slice(&meta.term.to_le_bytes());
            for ids in [cs.get_voters(), cs.get_learners()] {
                out.extend_from_slice(&(ids.len() as u32).to_le_bytes());
                for id in ids {
                    out.extend_from_slice(&id.to_le_bytes());
                }
            }
            put_bytes(out, &snap.data);
        }
        _ => out.push(0),
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let s = self
            .at
            .checked_add(n)
            .and_then(|end| self.buf.get(self.at..end))
            .ok_or(DecodeError("truncated"))?;
        self.at += n;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        self.take(N)?
            .first_chunk::<N>()
            .copied()
            .ok_or(DecodeError("truncated"))
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(u8::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn bytes(&mut self, max: usize) -> Result<&'a [u8], DecodeError> {
        let n = self.u32()? as usize;
        if n > max {
            return Err(DecodeError("field longer than its limit"));
        }
        self.take(n)
    }
}

/// Decodes one message, refusing anything malformed or over a limit.
pub fn decode(buf: &[u8]) -> Result<Message, DecodeError> {
    if buf.len() > MESSAGE_SIZE_MAX {
        return Err(DecodeError("message too large"));
    }
    let mut r = Reader { buf, at: 0 };
    let mut msg = Message::default();
    let t = msg_type_from(r.u8()?).ok_or(DecodeError("unknown message type"))?;
    msg.set_msg_type(t);
    msg.to = r.u64()?;
    msg.from = r.u64()?;
    msg.term = r.u64()?;
    msg.log_term = r.u64()?;
    msg.index = r.u64()?;
    msg.commit = r.u64()?;
    msg.commit_term = r.u64()?;
    msg.request_snapshot = r.u64()?;
    msg.reject_hint = r.u64()?;
    msg.reject = match r.u8()? {
        0 => false,
        1 => true,
        _ => return Err(DecodeError("bad bool")),
    };
    msg.priority = r.u64()? as i64;
    msg.context = bytes::Bytes::copy_from_slice(r.bytes(CONTEXT_SIZE_MAX)?);
    let count = r.u32()? as usize;
    if count > ENTRY_COUNT_MAX {
        return Err(DecodeError("too many entries"));
    }
    let mut entries = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let entry_type = r.u8()?;
        let term = r.u64()?;
        let index = r.u64()?;
        let data = r.bytes(MESSAGE_SIZE_MAX)?;
        let context = r.bytes(CONTEXT_SIZE_MAX)?;
        match entry_type {
            0 => {}
            2 => {
                if !context.is_empty() || data.len() > CONTEXT_SIZE_MAX {
                    return Err(DecodeError("a membership change's entry is malformed"));
                }
                let change = crate::storage::command::config_change(data)
                    .ok_or(DecodeError("a membership change's entry holds no change"))?
                    .map_err(DecodeError)?;
                entries.push(crate::consensus::storage::conf_change_entry(
                    term, index, &change,
                ));
                continue;
            }
            _ => return Err(DecodeError("unknown entry type")),
        }
        check_entry_commands(data, context)?;
        entries.push(Entry {
            term,
            index,
            data: bytes::Bytes::copy_from_slice(data),
            context: bytes::Bytes::copy_from_slice(context),
            ..Default::default()
        });
    }
    msg.set_entries(entries.into());
    match (r.u8()?, t == MessageType::MsgSnapshot) {
        (0, false) => {}
        (1, true) => {
            let mut snap = raft::eraftpb::Snapshot::default();
            let meta = snap.mut_metadata();
            meta.index = r.u64()?;
            meta.term = r.u64()?;
            let mut members = || -> Result<Vec<u64>, DecodeError> {
                let n = r.u32()? as usize;
                if n > MEMBERS_MAX {
                    return Err(DecodeError("too many members"));
                }
                (0..n).map(|_| r.u64()).collect()
            };
            let voters = members()?;
            let learners = members()?;
            let cs = meta.mut_conf_state();
            cs.voters = voters;
            cs.learners = learners;
            snap.data = bytes::Bytes::copy_from_slice(r.bytes(SNAPSHOT_DATA_MAX)?);
            msg.snapshot = Some(snap).into();
        }
        (0, true) => return Err(DecodeError("a snapshot message without its snapshot")),
        (1, false) => return Err(DecodeError("a snapshot in a message of another type")),
        _ => return Err(DecodeError("bad snapshot flag")),
    }
    if r.at != buf.len() {
        return Err(DecodeError("trailing bytes"));
    }
    Ok(msg)
}

/// An entry from a peer must be what this node's own log accepts: an empty entry (a new
/// leader's no-op) or commands that decode to exactly the count its context carries.
/// Anything else closes the connection before it can reach the log.
fn check_entry_commands(data: &[u8], context: &[u8]) -> Result<(), DecodeError> {
    if data.is_empty() && context.is_empty() {
        return Ok(());
    }
    let count = context
        .first_chunk::<8>()
        .filter(|_| context.len() == 8)
        .map(|c| u64::from_le_bytes(*c))
        .ok_or(DecodeError("an entry's context is not its command count"))?;
    if crate::storage::command::has_config(data) {
        return Err(DecodeError(
            "a membership change outside an entry of its own",
        ));
    }
    match crate::storage::command::count(data) {
        Ok(n) if n == count => Ok(()),
        Ok(_) => Err(DecodeError(
            "an entry's command count does not match its commands",
        )),
        Err(_) => Err(DecodeError("an entry's commands do not decode")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Message {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgAppend);
        m.to = 2;
        m.from = 1;
        m.term = 7;
        m.log_term = 6;
        m.index = 41;
        m.commit = 40;
        m.commit_term = 6;
        m.reject = true;
        m.reject_hint = 3;
        m.priority = -5;
        m.context = bytes::Bytes::from_static(b"ctx");
        let mut commands = Vec::new();
        crate::storage::command::encode(
            &mut commands,
            crate::storage::command::CommandOp::Set,
            1,
            2,
            b"k",
            b"v",
        );
        let e = Entry {
            term: 7,
            index: 42,
            data: commands.into(),
            context: bytes::Bytes::from_static(&[1, 0, 0, 0, 0, 0, 0, 0]),
            ..Default::default()
        };
        m.set_entries(vec![e.clone(), Entry::default()].into());
        m
    }

    fn snapshot_message() -> Message {
        let mut m = sample();
        m.set_msg_type(MessageType::MsgSnapshot);
        m.set_entries(Vec::new().into());
        let mut snap = raft::eraftpb::Snapshot::default();
        snap.mut_metadata().index = 900;
        snap.mut_metadata().term = 8;
        snap.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
        snap.mut_metadata().mut_conf_state().learners = vec![4];
        snap.data = crate::storage::snapshot::encode_descriptor(0xfeed).into();
        m.snapshot = Some(snap).into();
        m
    }

    #[test]
    fn round_trips_every_field() {
        for m in [sample(), snapshot_message()] {
            let mut buf = Vec::new();
            encode(&m, &mut buf);
            assert_eq!(decode(&buf).unwrap(), m);
        }
    }

    /// A snapshot message is only accepted whole, within its limits, and a snapshot only
    /// in a snapshot message.
    #[test]
    fn snapshot_messages_are_checked() {
        let mut buf = Vec::new();
        encode(&snapshot_message(), &mut buf);
        for cut in 0..buf.len() {
            assert!(decode(&buf[..cut]).is_err(), "cut at {cut}");
        }
        let mut b = buf.clone();
        b[0] = MessageType::MsgAppend as i32 as u8;
        assert!(decode(&b).is_err(), "a snapshot riding on an append");
        let mut bare = snapshot_message();
        bare.snapshot = None.into();
        let mut b = Vec::new();
        encode(&bare, &mut b);
        assert!(decode(&b).is_err(), "a snapshot message without one");
    }

    #[test]
    fn every_truncation_and_garbage_is_refused_without_panic() {
        let mut buf = Vec::new();
        encode(&sample(), &mut buf);
        for cut in 0..buf.len() {
            assert!(decode(&buf[..cut]).is_err(), "cut at {cut}");
        }
        let mut extra = buf.clone();
        extra.push(0);
        assert!(decode(&extra).is_err());
        let mut rng = 99u64;
        for _ in 0..20_000 {
            let mut b = buf.clone();
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let at = rng as usize % b.len();
            b[at] = (rng >> 32) as u8;
            let _ = decode(&b);
        }
        // A length field claiming 4 GiB is refused before allocating.
        let mut lie = buf.clone();
        let ctx_len_at = 1 + 9 * 8 + 1 + 8;
        lie[ctx_len_at..ctx_len_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&lie).is_err());
    }

    /// An entry whose context claims a command count its commands do not have, or whose
    /// commands do not decode, is refused at the frame: it must never reach the log.
    /// The encoding of [`sample`] carrying one normal entry of `data` and `context`, and
    /// where that entry's type byte is in it.
    fn with_one_entry(data: Vec<u8>, context: Vec<u8>) -> (Vec<u8>, usize) {
        let mut m = sample();
        m.set_entries(
            vec![Entry {
                term: 7,
                index: 42,
                data: data.into(),
                context: context.into(),
                ..Default::default()
            }]
            .into(),
        );
        let mut buf = Vec::new();
        encode(&m, &mut buf);
        // The entry type byte follows the fixed fields, the context and the entry count.
        (buf, 1 + 9 * 8 + 1 + 8 + 4 + m.context.len() + 4)
    }

    #[test]
    fn entries_whose_commands_do_not_match_their_count_are_refused() {
        let with_entry = |data: Vec<u8>, context: Vec<u8>| decode(&with_one_entry(data, context).0);
        let mut two = Vec::new();
        for key in [&b"a"[..], b"b"] {
            crate::storage::command::encode(
                &mut two,
                crate::storage::command::CommandOp::Set,
                1,
                2,
                key,
                b"v",
            );
        }
        assert!(with_entry(two.clone(), 2u64.to_le_bytes().to_vec()).is_ok());
        assert!(
            with_entry(Vec::new(), Vec::new()).is_ok(),
            "a leader's no-op"
        );
        for (data, context) in [
            (two.clone(), u64::MAX.to_le_bytes().to_vec()),
            (two.clone(), 3u64.to_le_bytes().to_vec()),
            (two.clone(), Vec::new()),
            (two.clone(), vec![2, 0, 0]),
            (vec![0xAB; 64], 1u64.to_le_bytes().to_vec()),
            (two[..two.len() - 8].to_vec(), 2u64.to_le_bytes().to_vec()),
        ] {
            assert!(with_entry(data, context).is_err());
        }
    }

    #[test]
    fn membership_changes_travel_in_their_log_form_and_nowhere_else() {
        use crate::consensus::membership::Change;
        let change = Change::AddLearner {
            id: crate::ids::NodeId::from_index(3),
            peer_addr: "127.0.0.1:8003".parse().unwrap(),
            client_addr: "127.0.0.1:9003".parse().unwrap(),
        };
        let entry = crate::consensus::storage::conf_change_entry(4, 9, &change);
        let mut m = sample();
        m.set_entries(vec![entry.clone()].into());
        let mut buf = Vec::new();
        encode(&m, &mut buf);
        let back = decode(&buf).unwrap();
        assert_eq!(
            back.entries[0], entry,
            "the same entry, raft-rs's encoding rebuilt"
        );
        // A CONFIG command inside a normal entry, or beside another command, is refused.
        let config = crate::storage::command::encode_config(&change);
        let mut beside = config.clone();
        crate::storage::command::encode(
            &mut beside,
            crate::storage::command::CommandOp::Set,
            0,
            0,
            b"k",
            b"v",
        );
        for (data, context, kind) in [
            (config.clone(), 1u64.to_le_bytes().to_vec(), 0u8),
            (beside.clone(), 2u64.to_le_bytes().to_vec(), 0),
            (beside.clone(), Vec::new(), 2),
            (vec![0; 64], Vec::new(), 2),
            (config.clone(), vec![1], 2),
        ] {
            let (mut buf, at) = with_one_entry(data, context);
            buf[at] = kind;
            assert!(decode(&buf).is_err(), "kind {kind}");
        }
    }
}
