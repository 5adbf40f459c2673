//! Writes that read before they write, resolved where the log's order is decided.
//!
//! SET with NX, XX or GET, INCRBY and GETDEL depend on the value the key holds just before
//! them. A shard cannot know it (it sees neither the other shards' windows nor the entries
//! still in flight), and resolving them when the entry applies would make the log's
//! commands depend on the state they meet: replay after a fuzzy checkpoint would add an
//! INCRBY twice. So the leader's replication core resolves each one when it seals the
//! windows. The value the key holds after every write ordered before it — the applied map,
//! then the entries this leader proposed that have not applied yet, then the earlier
//! commands of the same batch — decides the plain SET, DELETE or NOP that takes the
//! command's place in the entry, and the answer the client gets once that entry has
//! applied. Entries commit in order, so if the entry commits, so did everything it was
//! resolved against; if it does not, neither the write nor its answer happened.
//!
//! Unapplied entries this leader did not propose (an earlier leader's, right after an
//! election) have effects this core cannot see without reading them: the conditional
//! writes of such a batch become NOPs answered [`Resolved::Busy`], and the client retries.
//!
//! Exactly-once: a retried plain write that the engine will skip as a duplicate is skipped
//! here too (the sessions of the applied state, then those the scanned writes advance).
//! No socket, thread or clock: the simulator and the tests drive the same function.

use crate::replica::Window;
use crate::storage::command::{
    self, CommandOp, CommandRef, Conditional, ConditionalOp, SET_GET, SET_NX, SET_XX,
};
use std::collections::HashMap;

/// What a conditional write came to; the client's answer once its entry has applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// SET NX/XX/GET or GETDEL: whether the write happened, and the value before it when
    /// the command asked for it.
    Set {
        written: bool,
        previous: Option<Vec<u8>>,
    },
    /// INCRBY: the new value.
    Counter(i64),
    /// INCRBY on a value that is not a decimal 64-bit integer.
    NotInteger,
    /// INCRBY past the range of a 64-bit integer.
    Overflow,
    /// Not resolvable now (another leader's entries are not yet applied): retry.
    Busy,
    /// Reading the current value failed.
    ReadFailed,
}

/// The state conditional writes are resolved against: the applied map and sessions.
pub trait AppliedState {
    /// The last request applied for `client_id`'s session, if it has one.
    fn last_seq(&self, client_id: u64) -> Option<u64>;
    /// The key's applied value.
    fn read(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, String>;
}

/// Resolves the conditional commands of `batch` (windows in entry order) in place: each
/// window holding any gets its commands rewritten to log commands, one per reply as
/// before, and the answers in [`Window::results`]. `in_flight` holds the commands of the
/// entries proposed before this one that have not applied, oldest first; `complete` says
/// whether they are every unapplied entry of the log.
pub fn resolve<R>(
    in_flight: &[&[u8]],
    batch: &mut [Window<R>],
    complete: bool,
    state: &mut dyn AppliedState,
) {
    if !batch.iter().any(|w| w.conditional) {
        return;
    }
    let mut known = Known::default();
    for w in batch.iter().filter(|w| w.conditional) {
        for cmd in window_commands(&w.commands) {
            if cmd.1.is_some() {
                known.values.entry(cmd.0.key.to_vec()).or_insert(None);
            }
        }
    }
    if complete {
        for region in in_flight {
            for cmd in command::Commands::new(region) {
                known.note(&cmd.expect("in-flight entries hold log commands"), state);
            }
        }
    }
    let mut out = Vec::new();
    for w in batch.iter_mut() {
        if !w.conditional {
            for cmd in command::Commands::new(&w.commands) {
                known.note(
                    &cmd.expect("a window holds the commands it was given"),
                    state,
                );
            }
            continue;
        }
        out.clear();
        w.results.clear();
        for (i, (cmd, cond)) in window_commands(&w.commands).enumerate() {
            let Some(cond) = cond else {
                out.extend_from_slice(&w.commands[cmd.offset..cmd.offset + cmd.size]);
                known.note(&cmd, state);
                continue;
            };
            let start = out.len();
            let result = if complete {
                known.resolve(&cmd, cond, state, &mut out)
            } else {
                nop(&mut out);
                Resolved::Busy
            };
            let written = command::decode_at(&out, start).expect("resolution encodes a command");
            known.note(&written, state);
            w.results.push((i, result));
        }
        std::mem::swap(&mut w.commands, &mut out);
        w.conditional = false;
    }
}

/// The commands of a window buffer, with each one's conditional op if it has one.
fn window_commands(
    region: &[u8],
) -> impl Iterator<Item = (CommandRef<'_>, Option<Conditional>)> + '_ {
    let mut offset = 0;
    std::iter::from_fn(move || {
        if offset >= region.len() {
            return None;
        }
        let decoded = command::decode_window_at(region, offset)
            .expect("a window holds only commands its door encoded");
        offset += decoded.0.size;
        Some(decoded)
    })
}

/// What the scan knows so far about the keys conditional writes read.
#[derive(Default)]
struct Known {
    /// Each key of interest: `None` until a write to it was seen (then the applied state
    /// holds its value), else its value after the last write seen.
    values: HashMap<Vec<u8>, Option<Option<Vec<u8>>>>,
    /// Sessions advanced by the writes seen.
    sessions: HashMap<u64, u64>,
}

impl Known {
    /// Takes note of one log command that will apply after everything noted before.
    fn note(&mut self, cmd: &CommandRef<'_>, state: &dyn AppliedState) {
        if !matches!(cmd.op, CommandOp::Set | CommandOp::Delete) {
            return;
        }
        if cmd.client_id != 0 {
            let last = self
                .sessions
                .get(&cmd.client_id)
                .copied()
                .or_else(|| state.last_seq(cmd.client_id));
            if last.is_some_and(|last| cmd.request_seq <= last) {
                return; // the engine skips it as a duplicate
            }
            self.sessions.insert(cmd.client_id, cmd.request_seq);
        }
        if let Some(slot) = self.values.get_mut(cmd.key) {
            *slot = Some((cmd.op == CommandOp::Set).then(|| cmd.value.to_vec()));
        }
    }

    /// The key's value after every write noted so far.
    fn current(
        &mut self,
        key: &[u8],
        state: &mut dyn AppliedState,
    ) -> Result<Option<Vec<u8>>, String> {
        if let Some(Some(value)) = self.values.get(key) {
            return Ok(value.clone());
        }
        let value = state.read(key)?;
        self.values.insert(key.to_vec(), Some(value.clone()));
        Ok(value)
    }

    /// Appends the log command `cmd` comes to and returns the answer.
    fn resolve(
        &mut self,
        cmd: &CommandRef<'_>,
        cond: Conditional,
        state: &mut dyn AppliedState,
        out: &mut Vec<u8>,
    ) -> Resolved {
        let current = match self.current(cmd.key, state) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("ocean-liner: reading a value for a conditional write failed: {e}");
                nop(out);
                return Resolved::ReadFailed;
            }
        };
        let (cid, seq, key) = (cmd.client_id, cmd.request_seq, cmd.key);
        match cond.op {
            ConditionalOp::SetIf => {
                let exists = current.is_some();
                let (nx, xx) = (cond.flags & SET_NX != 0, cond.flags & SET_XX != 0);
                let written = if exists { !nx } else { !xx };
                if written {
                    command::encode(out, CommandOp::Set, cid, seq, key, cmd.value);
                } else {
                    nop(out);
                }
                let previous = if cond.flags & SET_GET != 0 {
                    current
                } else {
                    None
                };
                Resolved::Set { written, previous }
            }
            ConditionalOp::GetDel => {
                let written = current.is_some();
                if written {
                    command::encode(out, CommandOp::Delete, cid, seq, key, b"");
                } else {
                    nop(out);
                }
                Resolved::Set {
                    written,
                    previous: current,
                }
            }
            ConditionalOp::IncrBy => {
                let delta = cmd.value.first_chunk::<8>().map(|b| i64::from_le_bytes(*b));
                let base = match current.as_deref().map(parse_integer) {
                    None => Some(0),
                    Some(parsed) => parsed,
                };
                let (Some(delta), Some(base)) = (delta, base) else {
                    nop(out);
                    return Resolved::NotInteger;
                };
                let Some(new) = base.checked_add(delta) else {
                    nop(out);
                    return Resolved::Overflow;
                };
                let text = new.to_string();
                command::encode(out, CommandOp::Set, cid, seq, key, text.as_bytes());
                Resolved::Counter(new)
            }
        }
    }
}

/// A NOP in the command's place: the entry keeps one command per reply.
fn nop(out: &mut Vec<u8>) {
    command::encode(out, CommandOp::Nop, 0, 0, b"", b"");
}

/// A decimal 64-bit integer as Redis reads one for INCR: an optional minus, no plus, no
/// leading zeros, no spaces, nothing else.
pub fn parse_integer(text: &[u8]) -> Option<i64> {
    if text == b"0" {
        return Some(0);
    }
    let (negative, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    match digits.first() {
        Some(b'1'..=b'9') => {}
        _ => return None,
    }
    let mut magnitude: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        magnitude = magnitude
            .checked_mul(10)?
            .checked_add(u64::from(d - b'0'))?;
    }
    if negative {
        0i64.checked_sub_unsigned(magnitude)
    } else {
        i64::try_from(magnitude).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An applied state held in a map.
    #[derive(Default)]
    struct Applied {
        values: HashMap<Vec<u8>, Vec<u8>>,
        sessions: HashMap<u64, u64>,
        reads: usize,
    }

    impl AppliedState for Applied {
        fn last_seq(&self, client_id: u64) -> Option<u64> {
            self.sessions.get(&client_id).copied()
        }
        fn read(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
            self.reads += 1;
            Ok(self.values.get(key).cloned())
        }
    }

    fn set(out: &mut Vec<u8>, cid: u64, seq: u64, key: &[u8], value: &[u8]) {
        command::encode(out, CommandOp::Set, cid, seq, key, value);
    }

    fn cond(w: &mut Window<()>, op: ConditionalOp, flags: u8, key: &[u8], value: &[u8]) {
        // One session, its requests numbered in order.
        let seq = w.replies.len() as u64 + 1;
        command::encode_conditional(&mut w.commands, op, flags, 9, seq, key, value);
        w.replies.push(());
        w.conditional = true;
    }

    fn plain(w: &mut Window<()>, cid: u64, seq: u64, key: &[u8], value: &[u8]) {
        set(&mut w.commands, cid, seq, key, value);
        w.replies.push(());
    }

    fn logged(w: &Window<()>) -> Vec<(CommandOp, Vec<u8>, Vec<u8>)> {
        command::Commands::new(&w.commands)
            .map(|c| {
                let c = c.expect("only log commands remain");
                (c.op, c.key.to_vec(), c.value.to_vec())
            })
            .collect()
    }

    #[test]
    fn each_write_sees_the_ones_ordered_before_it() {
        let mut state = Applied::default();
        state.values.insert(b"n".to_vec(), b"10".to_vec());
        state.values.insert(b"gone".to_vec(), b"x".to_vec());
        // In flight: n := 20, then gone deleted.
        let mut flight = Vec::new();
        set(&mut flight, 0, 0, b"n", b"20");
        command::encode(&mut flight, CommandOp::Delete, 0, 0, b"gone", b"");
        let mut first = Window::<()>::default();
        plain(&mut first, 0, 0, b"n", b"30");
        let mut second = Window::<()>::default();
        cond(
            &mut second,
            ConditionalOp::IncrBy,
            0,
            b"n",
            &5i64.to_le_bytes(),
        );
        cond(
            &mut second,
            ConditionalOp::IncrBy,
            0,
            b"n",
            &(-1i64).to_le_bytes(),
        );
        cond(&mut second, ConditionalOp::SetIf, SET_NX, b"gone", b"new");
        cond(
            &mut second,
            ConditionalOp::SetIf,
            SET_NX | SET_GET,
            b"gone",
            b"newer",
        );
        cond(&mut second, ConditionalOp::SetIf, SET_XX, b"absent", b"v");
        cond(&mut second, ConditionalOp::GetDel, 0, b"gone", b"");
        cond(&mut second, ConditionalOp::GetDel, 0, b"gone", b"");
        let mut batch = vec![first, second];
        resolve(&[&flight], &mut batch, true, &mut state);
        let results: Vec<Resolved> = batch[1].results.iter().map(|r| r.1.clone()).collect();
        assert_eq!(
            results,
            vec![
                Resolved::Counter(35),
                Resolved::Counter(34),
                Resolved::Set {
                    written: true,
                    previous: None
                },
                Resolved::Set {
                    written: false,
                    previous: Some(b"new".to_vec())
                },
                Resolved::Set {
                    written: false,
                    previous: None
                },
                Resolved::Set {
                    written: true,
                    previous: Some(b"new".to_vec())
                },
                Resolved::Set {
                    written: false,
                    previous: None
                },
            ]
        );
        assert_eq!(
            batch[1].results.iter().map(|r| r.0).collect::<Vec<_>>(),
            (0..7).collect::<Vec<_>>()
        );
        let nop = (CommandOp::Nop, Vec::new(), Vec::new());
        assert_eq!(
            logged(&batch[1]),
            vec![
                (CommandOp::Set, b"n".to_vec(), b"35".to_vec()),
                (CommandOp::Set, b"n".to_vec(), b"34".to_vec()),
                (CommandOp::Set, b"gone".to_vec(), b"new".to_vec()),
                nop.clone(),
                nop.clone(),
                (CommandOp::Delete, b"gone".to_vec(), Vec::new()),
                nop,
            ]
        );
        assert!(!batch[1].conditional);
        assert_eq!(batch[1].replies.len(), 7);
        // Only "absent" came from the applied state: n and gone were written in flight.
        assert_eq!(state.reads, 1);
        // The plain window is untouched.
        assert_eq!(
            logged(&batch[0]),
            vec![(CommandOp::Set, b"n".to_vec(), b"30".to_vec())]
        );
    }

    #[test]
    fn a_retried_write_the_engine_skips_is_skipped_here() {
        let mut state = Applied::default();
        state.sessions.insert(7, 3);
        let mut w = Window::<()>::default();
        plain(&mut w, 7, 3, b"n", b"100"); // a duplicate: not applied
        plain(&mut w, 8, 1, b"m", b"5");
        plain(&mut w, 8, 1, b"m", b"6"); // a duplicate of the one before
        cond(&mut w, ConditionalOp::IncrBy, 0, b"n", &1i64.to_le_bytes());
        cond(&mut w, ConditionalOp::IncrBy, 0, b"m", &1i64.to_le_bytes());
        let mut batch = vec![w];
        resolve(&[], &mut batch, true, &mut state);
        let results: Vec<Resolved> = batch[0].results.iter().map(|r| r.1.clone()).collect();
        assert_eq!(results, vec![Resolved::Counter(1), Resolved::Counter(6)]);
        assert_eq!(
            batch[0].results.iter().map(|r| r.0).collect::<Vec<_>>(),
            vec![3, 4]
        );
    }

    #[test]
    fn integers_refused_and_overflow_leave_the_key_alone() {
        let mut state = Applied::default();
        for (k, v) in [
            (&b"text"[..], &b"abc"[..]),
            (b"big", b"9223372036854775807"),
            (b"spaced", b" 1"),
            (b"zero", b"007"),
        ] {
            state.values.insert(k.to_vec(), v.to_vec());
        }
        let mut w = Window::<()>::default();
        for key in [&b"text"[..], b"big", b"spaced", b"zero"] {
            cond(&mut w, ConditionalOp::IncrBy, 0, key, &1i64.to_le_bytes());
        }
        let mut batch = vec![w];
        resolve(&[], &mut batch, true, &mut state);
        let results: Vec<Resolved> = batch[0].results.iter().map(|r| r.1.clone()).collect();
        use Resolved::*;
        assert_eq!(results, vec![NotInteger, Overflow, NotInteger, NotInteger]);
        assert!(logged(&batch[0]).iter().all(|c| c.0 == CommandOp::Nop));
    }

    #[test]
    fn unknown_entries_in_flight_make_the_batch_busy() {
        let mut state = Applied::default();
        let mut w = Window::<()>::default();
        plain(&mut w, 0, 0, b"a", b"1");
        cond(&mut w, ConditionalOp::IncrBy, 0, b"n", &1i64.to_le_bytes());
        let mut batch = vec![w];
        resolve(&[], &mut batch, false, &mut state);
        assert_eq!(batch[0].results, vec![(1, Resolved::Busy)]);
        let logged = logged(&batch[0]);
        assert_eq!(logged[0], (CommandOp::Set, b"a".to_vec(), b"1".to_vec()));
        assert_eq!(logged[1].0, CommandOp::Nop);
    }

    #[test]
    fn integers_parse_as_redis_parses_them() {
        for (text, want) in [
            (&b"0"[..], Some(0)),
            (b"12", Some(12)),
            (b"-12", Some(-12)),
            (b"-9223372036854775808", Some(i64::MIN)),
            (b"9223372036854775807", Some(i64::MAX)),
            (b"9223372036854775808", None),
            (b"-0", None),
            (b"+1", None),
            (b"01", None),
            (b"", None),
            (b"-", None),
            (b"1 ", None),
            (b"1.5", None),
            (b"99999999999999999999999", None),
        ] {
            assert_eq!(
                parse_integer(text),
                want,
                "{:?}",
                String::from_utf8_lossy(text)
            );
        }
    }
}
