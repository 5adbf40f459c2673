//! The storage engine: the log, the map that indexes it, and the client sessions that
//! make writes exactly-once. No sockets, no threads, no clocks: the server's replication
//! core drives it in production, and tests and the simulator drive it directly.
//!
//! Write path: [`Engine::append`] makes an entry durable, [`Engine::apply`] applies it to
//! the map in log order. Recovery ([`Engine::open`]) loads the newest map checkpoint and
//! replays the log entries after the index it covers. SET and DELETE are idempotent per
//! key and the sessions table is checkpointed with the map, so replaying from any
//! checkpoint reaches the same state.

use crate::storage::command::CommandOp;
use crate::storage::io::Backend;
use crate::storage::log::{
    Entry, Log, LogError, LogIndex, LogOptions, LogReader, NewEntry, RecoveryReport, Term,
    ValueRead,
};
use crate::storage::store::{CheckpointJob, Lookup, Map};
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Sessions kept for exactly-once writes; past this the least recently written are
/// dropped (deterministically, by log index), and a retry from a dropped session may apply
/// twice.
pub const SESSIONS_MAX: usize = 1 << 20;

/// Tunables of the engine.
#[derive(Debug, Clone, Default)]
pub struct EngineOptions {
    pub log: LogOptions,
}

/// The outcome of one applied command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A SET stored, a DELETE removed a key.
    Done,
    /// A DELETE of an absent key.
    Absent,
    /// A retry of a write this session already applied: nothing was changed.
    Duplicate,
    /// A NOP or GET in the log: nothing to do.
    Ignored,
}

#[derive(Debug, Clone, Copy)]
struct Session {
    last_seq: u64,
    last_index: LogIndex,
}

/// What opening the engine found.
#[derive(Debug, Clone, Default)]
pub struct OpenReport {
    pub log: RecoveryReport,
    pub checkpoint_index: LogIndex,
    pub replayed_entries: u64,
    pub journal_replayed: bool,
}

/// Errors of the engine.
#[derive(Debug)]
pub enum EngineError {
    Log(LogError),
    Io(io::Error),
    /// The map checkpoint claims entries the log does not have.
    MapAheadOfLog {
        map_index: LogIndex,
        log_index: LogIndex,
    },
}

impl std::fmt::Display for EngineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EngineError::Log(e) => write!(f, "{e}"),
            EngineError::Io(e) => write!(f, "map IO error: {e}"),
            EngineError::MapAheadOfLog {
                map_index,
                log_index,
            } => write!(
                f,
                "map checkpoint covers log index {map_index} but the log ends at {log_index}"
            ),
        }
    }
}

impl std::error::Error for EngineError {}

impl From<LogError> for EngineError {
    fn from(e: LogError) -> EngineError {
        EngineError::Log(e)
    }
}

impl From<io::Error> for EngineError {
    fn from(e: io::Error) -> EngineError {
        EngineError::Io(e)
    }
}

impl EngineError {
    /// Whether this is a full disk.
    pub fn is_no_space(&self) -> bool {
        match self {
            EngineError::Log(e) => e.is_no_space(),
            EngineError::Io(e) => e.raw_os_error() == Some(libc::ENOSPC),
            _ => false,
        }
    }
}

/// Log + map + sessions of one node.
pub struct Engine {
    backend: Arc<dyn Backend>,
    dir: PathBuf,
    log: Log,
    map: Arc<Map>,
    sessions: HashMap<u64, Session>,
    applied_index: LogIndex,
    applied_term: Term,
    /// GETs whose key hash the map held for another key (answered as misses).
    hash_collisions: u64,
}

impl Engine {
    /// Opens the engine in `dir`, replaying the log after the map's checkpoint up to
    /// `replay_to` (all of it when `None`: a single node's log holds only committed
    /// entries).
    pub fn open(
        backend: Arc<dyn Backend>,
        dir: &Path,
        options: EngineOptions,
        replay_to: Option<LogIndex>,
    ) -> Result<(Engine, OpenReport), EngineError> {
        crate::storage::io::create_dir_durable(backend.as_ref(), dir)?;
        let (map, load) = Map::open(backend.as_ref(), dir)?;
        let (log, log_report) = Log::open(backend.as_ref(), &dir.join("log"), options.log)?;
        let meta = map.meta();
        if meta.last_committed_index > log.last_index() {
            return Err(EngineError::MapAheadOfLog {
                map_index: meta.last_committed_index,
                log_index: log.last_index(),
            });
        }
        let mut engine = Engine {
            backend,
            dir: dir.to_path_buf(),
            log,
            map: Arc::new(map),
            sessions: decode_sessions(&load.sessions),
            applied_index: meta.last_committed_index,
            applied_term: meta.last_committed_term,
            hash_collisions: 0,
        };
        let last = replay_to
            .unwrap_or(LogIndex(u64::MAX))
            .min(engine.log.last_index());
        let mut replayed = 0;
        while engine.applied_index < last {
            engine.apply(engine.applied_index.next())?;
            replayed += 1;
        }
        let report = OpenReport {
            log: log_report,
            checkpoint_index: meta.last_committed_index,
            replayed_entries: replayed,
            journal_replayed: load.journal_replayed,
        };
        Ok((engine, report))
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The log, to look at (indexes, terms). Every change to it goes through the engine.
    pub fn log(&self) -> &Log {
        &self.log
    }

    /// Reads entry `index` (from the log's cache, or its file).
    pub fn read_entry(&mut self, index: LogIndex) -> Result<Entry, LogError> {
        self.log.read(index)
    }

    /// Appends entries (consecutive, after the last one) durably.
    pub fn append_entries(&mut self, entries: &[NewEntry<'_>]) -> Result<LogIndex, LogError> {
        self.log.append(entries)
    }

    /// Removes every log entry from `index` on, durably. Applied entries are never
    /// removed.
    pub fn truncate_log_from(&mut self, index: LogIndex) -> Result<(), LogError> {
        assert!(
            index > self.applied_index,
            "an applied entry is never removed"
        );
        self.log.truncate_from(index)
    }

    /// Makes sure `bytes` of log space past the end are prepared (a full disk shows here,
    /// before any entry byte is written).
    pub fn prepare_log(&mut self, bytes: u64) -> Result<(), LogError> {
        self.log.prepare(bytes)
    }

    /// Keeps at least half a preparation chunk of log space ready past the end, so that
    /// the next append does not wait for it.
    pub fn prepare_log_ahead(&mut self) -> Result<(), LogError> {
        let chunk = self.log.prepare_chunk_bytes();
        if self.log.prepared_bytes_ahead() < chunk / 2 {
            self.log.prepare(chunk)?;
        }
        Ok(())
    }

    /// The map, shared with readers on other threads.
    pub fn map(&self) -> &Arc<Map> {
        &self.map
    }

    /// A log reader for another thread.
    pub fn log_reader(&self) -> Result<LogReader, EngineError> {
        Ok(self.log.reader(self.backend.as_ref())?)
    }

    /// Last log index applied to the map.
    pub fn applied_index(&self) -> LogIndex {
        self.applied_index
    }

    /// Index of the last log entry.
    pub fn last_index(&self) -> LogIndex {
        self.log.last_index()
    }

    /// Appends one entry of `num_commands` encoded commands, durably.
    pub fn append(
        &mut self,
        term: Term,
        num_commands: u64,
        commands: &[u8],
    ) -> Result<LogIndex, EngineError> {
        let entry = NewEntry {
            term,
            log_index: self.log.last_index().next(),
            num_commands,
            commands,
        };
        Ok(self.log.append(&[entry])?)
    }

    /// Applies entry `index` (which must be the next one) to the map; returns one outcome
    /// per command, in order.
    pub fn apply(&mut self, index: LogIndex) -> Result<Vec<Outcome>, EngineError> {
        assert_eq!(
            index,
            self.applied_index.next(),
            "entries apply in log order"
        );
        let entry = self.log.read(index)?;
        // The count was checked against the commands when the entry was verified; the
        // capacity is still bounded by what the bytes can hold.
        let capacity = (entry.header.num_commands as usize)
            .min(entry.commands().len() / crate::storage::command::COMMAND_ALIGN);
        let mut outcomes = Vec::with_capacity(capacity);
        for cmd in entry.iter() {
            let cmd = cmd.map_err(|e| LogError::Corrupt {
                offset: entry.offset,
                reason: e.to_string(),
            })?;
            if matches!(cmd.op, CommandOp::Nop | CommandOp::Get) {
                outcomes.push(Outcome::Ignored);
                continue;
            }
            if cmd.client_id != 0 {
                let fresh = self
                    .sessions
                    .get(&cmd.client_id)
                    .is_none_or(|s| cmd.request_seq > s.last_seq);
                if !fresh {
                    outcomes.push(Outcome::Duplicate);
                    continue;
                }
                self.sessions.insert(
                    cmd.client_id,
                    Session {
                        last_seq: cmd.request_seq,
                        last_index: index,
                    },
                );
            }
            let hash = self.map.key_hash(cmd.key);
            let outcome = match cmd.op {
                CommandOp::Set => {
                    self.map
                        .set(hash, entry.command_file_offset(cmd.offset), cmd.value);
                    Outcome::Done
                }
                CommandOp::Delete if self.map.delete(hash) => Outcome::Done,
                _ => Outcome::Absent,
            };
            outcomes.push(outcome);
        }
        self.applied_index = index;
        self.applied_term = entry.header.term;
        if self.sessions.len() > SESSIONS_MAX {
            self.evict_sessions();
        }
        Ok(outcomes)
    }

    /// Drops the least recently written tenth of the sessions.
    fn evict_sessions(&mut self) {
        let mut by_age: Vec<(LogIndex, u64)> = self
            .sessions
            .iter()
            .map(|(id, s)| (s.last_index, *id))
            .collect();
        by_age.sort_unstable();
        for (_, id) in by_age.iter().take(SESSIONS_MAX / 10) {
            self.sessions.remove(id);
        }
    }

    /// Appends and applies one entry (a single node, which is its own majority).
    pub fn commit_local(
        &mut self,
        term: Term,
        num_commands: u64,
        commands: &[u8],
    ) -> Result<(LogIndex, Vec<Outcome>), EngineError> {
        let index = self.append(term, num_commands, commands)?;
        let outcomes = self.apply(index)?;
        Ok((index, outcomes))
    }

    /// Reads a key's current value. The map knows keys by hash only; a value in the log
    /// sits in its SET command with the whole key, and one of another key (a hash
    /// collision) is a miss, counted in [`Engine::hash_collisions`].
    pub fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        match self.map.get(self.map.key_hash(key)) {
            Lookup::Missing => Ok(None),
            Lookup::Inline(value) => Ok(Some(value)),
            Lookup::InLog(offset) => match self.log.read_value_at(offset, key)? {
                ValueRead::Value(value) => Ok(Some(value)),
                ValueRead::OtherKey => {
                    self.hash_collisions += 1;
                    Ok(None)
                }
            },
        }
    }

    /// GETs that found their key's hash held for another key and answered "not found".
    pub fn hash_collisions(&self) -> u64 {
        self.hash_collisions
    }

    /// Writes the map's changed pages and the sessions back, durably.
    pub fn checkpoint(&mut self) -> Result<(), EngineError> {
        let blob = encode_sessions(&self.sessions);
        self.map
            .checkpoint(self.applied_index, self.applied_term, &blob)?;
        Ok(())
    }

    /// Snapshots the changed pages and the sessions for a checkpoint whose IO can run on
    /// another thread ([`CheckpointJob::write`], then [`Engine::checkpoint_end`]). `None`
    /// while a previous job is still out.
    pub fn checkpoint_begin(&mut self) -> Option<CheckpointJob> {
        let blob = encode_sessions(&self.sessions);
        self.map
            .checkpoint_begin(self.applied_index, self.applied_term, &blob)
    }

    /// Completes a job started by [`Engine::checkpoint_begin`].
    pub fn checkpoint_end(
        &mut self,
        job: CheckpointJob,
        result: io::Result<()>,
    ) -> Result<(), EngineError> {
        Ok(self.map.checkpoint_end(job, result)?)
    }

    /// The last sequence applied for a client session.
    pub fn session_seq(&self, client_id: u64) -> Option<u64> {
        self.sessions.get(&client_id).map(|s| s.last_seq)
    }

    /// Live sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }
}

/// Sessions blob: count, then (client_id, last_seq, last_index) triples, little-endian.
fn encode_sessions(sessions: &HashMap<u64, Session>) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + sessions.len() * 24);
    out.extend_from_slice(&(sessions.len() as u64).to_le_bytes());
    let mut ids: Vec<_> = sessions.iter().collect();
    ids.sort_unstable_by_key(|(id, _)| **id);
    for (id, s) in ids {
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&s.last_seq.to_le_bytes());
        out.extend_from_slice(&s.last_index.get().to_le_bytes());
    }
    out
}

fn decode_sessions(blob: &[u8]) -> HashMap<u64, Session> {
    let mut sessions = HashMap::new();
    if blob.len() < 8 {
        return sessions;
    }
    let count = u64::from_le_bytes(blob[..8].try_into().unwrap()) as usize;
    for rec in blob[8..].chunks_exact(24).take(count) {
        let u = |i: usize| u64::from_le_bytes(rec[i * 8..i * 8 + 8].try_into().unwrap());
        sessions.insert(
            u(0),
            Session {
                last_seq: u(1),
                last_index: LogIndex(u(2)),
            },
        );
    }
    sessions
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::command;
    use crate::storage::io::fault::FaultBackend;
    use crate::storage::log::Term;

    /// An engine on a fresh in-memory disk, caching `cache_bytes` of log entries (0: every
    /// value is read back from the log file).
    fn open(cache_bytes: usize) -> Engine {
        let options = EngineOptions {
            log: LogOptions {
                prepare_chunk_bytes: 64 << 10,
                cache_bytes,
            },
        };
        Engine::open(
            Arc::new(FaultBackend::new()),
            Path::new("/e"),
            options,
            None,
        )
        .unwrap()
        .0
    }

    /// The log offset the map holds for `key`.
    fn log_offset(engine: &Engine, key: &[u8]) -> u64 {
        match engine.map().get(engine.map().key_hash(key)) {
            Lookup::InLog(offset) => offset,
            other => panic!("{:?} is not in the log: {other:?}", key),
        }
    }

    /// A key whose hash the map holds with another key's SET (a 128-bit collision, which
    /// no test can find for real) reads as absent, not as the other key's value, and the
    /// collision is counted; the other key still reads back.
    #[test]
    fn hash_collision_reads_as_a_miss_and_is_counted() {
        for cache_bytes in [1 << 20, 0] {
            let mut engine = open(cache_bytes);
            let theirs = vec![b'o'; 100];
            let mut cmds = Vec::new();
            command::encode(&mut cmds, CommandOp::Set, 0, 0, b"other", &theirs);
            engine.commit_local(Term(1), 1, &cmds).unwrap();
            let offset = log_offset(&engine, b"other");
            engine
                .map()
                .set(engine.map().key_hash(b"victim"), offset, &[b'v'; 100]);
            assert_eq!(
                engine.get(b"victim").unwrap(),
                None,
                "cache_bytes {cache_bytes}"
            );
            assert_eq!(engine.hash_collisions(), 1);
            assert_eq!(engine.get(b"other").unwrap(), Some(theirs));
            assert_eq!(engine.hash_collisions(), 1);
        }
    }

    /// The map only ever points at SET commands: any other command at its offset is
    /// corruption, reported with the offset, never a value.
    #[test]
    fn map_offset_at_a_delete_is_corruption() {
        for cache_bytes in [1 << 20, 0] {
            let mut engine = open(cache_bytes);
            let mut cmds = Vec::new();
            command::encode(&mut cmds, CommandOp::Set, 0, 0, b"gone", &[b'g'; 100]);
            command::encode(&mut cmds, CommandOp::Delete, 0, 0, b"gone", b"");
            let (index, _) = engine.commit_local(Term(1), 2, &cmds).unwrap();
            let entry = engine.read_entry(index).unwrap();
            let delete_at = entry
                .iter()
                .map(Result::unwrap)
                .find(|c| c.op == CommandOp::Delete)
                .map(|c| entry.command_file_offset(c.offset))
                .unwrap();
            engine
                .map()
                .set(engine.map().key_hash(b"gone"), delete_at, &[b'g'; 100]);
            match engine.get(b"gone") {
                Err(EngineError::Log(LogError::Corrupt { offset, .. })) => {
                    assert_eq!(offset, delete_at, "cache_bytes {cache_bytes}")
                }
                other => panic!("cache_bytes {cache_bytes}: {other:?}"),
            }
        }
    }
}
