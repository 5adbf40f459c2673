//! The storage engine: the log, the map that indexes it, and the client sessions that
//! make writes exactly-once. No sockets, no threads, no clocks: the server's replication
//! core drives it in production, and tests and the simulator drive it directly.
//!
//! Write path: [`Engine::append`] makes an entry durable, [`Engine::apply`] applies it to
//! the map in log order. Recovery ([`Engine::open`]) loads the newest map checkpoint and
//! replays the log entries after the index it covers. SET and DELETE are idempotent per
//! key and the sessions table is checkpointed with the map, so replaying from any
//! checkpoint reaches the same state. So is the cluster's membership
//! ([`crate::consensus::membership`]): CONFIG commands change it, the checkpoint record
//! and a snapshot's sessions record carry it after the sessions.
//!
//! Space: applying a command keeps the segments' live counts (see
//! [`crate::storage::log::segments`]); a checkpoint that completes releases the segments
//! that were empty when it began (their files are removed by the caller, see
//! [`Reclaimed`]) — values segments the cleaner emptied, and the oldest Raft segments
//! once the checkpoint covers their entries and no follower still needs them (see
//! [`Engine::set_raft_keep_from`]; a follower further behind than the log keeps is sent a
//! snapshot). Nothing is released while a snapshot is being read.
//!
//! Snapshots ([`crate::storage::snapshot`]): [`Engine::snapshot_source`] takes one at the
//! applied index; [`Engine::install_snapshot`] replaces this engine's whole state with a
//! received one. An install swaps the map in, takes every old segment out of the log and
//! the table, starts the Raft log after the snapshot's index in a new segment, and writes
//! one checkpoint of the whole map; that checkpoint is the commit point. Its record names
//! the new segment and the snapshot's values segments (the *install floor*): on every
//! open, any other segment numbered below the floor belongs to the state before and is
//! deleted. A crash before the checkpoint is durable leaves the old state whole (the
//! snapshot's values segments are then unreferenced and deleted like any empty one); a
//! crash after it leaves the new state, and the open finishes the deletions.

use crate::consensus::membership::Membership;
use crate::storage::cleaner::{Cleaner, CleanerOptions};
use crate::storage::command::CommandOp;
use crate::storage::io::Backend;
use crate::storage::log::segments::{LiveDelta, SegmentKind, SpaceReport, split_address};
use crate::storage::log::{
    Entry, Log, LogError, LogIndex, LogOptions, LogReader, NewEntry, RecoveryReport, SEGMENTS_DIR,
    Term, ValueCache, ValueRead,
};
use crate::storage::snapshot::{SnapshotSource, SnapshotTarget, StagedSnapshot};
use crate::storage::store::{CheckpointJob, Lookup, Map, SetOutcome};
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Sessions kept for exactly-once writes; past this the least recently written are
/// dropped (deterministically, by log index), and a retry from a dropped session may apply
/// twice.
pub const SESSIONS_MAX: usize = 1 << 20;

/// Tunables of the engine.
#[derive(Debug, Clone, Default)]
pub struct EngineOptions {
    pub log: LogOptions,
    /// Raft segments kept for followers that lag: a segment some follower still needs
    /// (see [`Engine::set_raft_keep_from`]) is deleted anyway once this many bytes of
    /// newer Raft segments exist; that follower then gets a snapshot.
    pub raft_log_retain_bytes: u64,
    /// The membership a cluster starts with when its checkpoint names none (a new
    /// cluster, or data from before memberships were kept): what the first membership
    /// change is made to.
    pub bootstrap_membership: Option<Membership>,
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
    /// A GET, or a NOP without a session, in the log: nothing to do.
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

/// The segments a completed checkpoint released: they are out of the log and the segment
/// table; their files are still to be removed, in this order (see
/// [`Reclaimed::remove_files`]), which may happen on another thread and at any time later.
/// A file not yet removed at a crash is found again on open and released again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reclaimed {
    pub segments: u64,
    pub bytes: u64,
    pub files: Vec<PathBuf>,
}

impl Reclaimed {
    /// Removes the files, in order, each removal durable before the next (so that Raft
    /// segments always go oldest first and the log never has a gap).
    pub fn remove_files(&self, backend: &dyn Backend) -> io::Result<()> {
        for path in &self.files {
            crate::storage::io::remove_durable(backend, path)?;
        }
        Ok(())
    }
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
    /// The map checkpoint covers less than the log's first entry: entries it needs to
    /// replay were deleted.
    MapBehindLog {
        map_index: LogIndex,
        first_index: LogIndex,
    },
    /// The map points at values in segments that do not exist.
    MapPointsOutsideLog {
        address: u64,
        count: u64,
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
            EngineError::MapBehindLog {
                map_index,
                first_index,
            } => write!(
                f,
                "map checkpoint covers log index {map_index} but the log starts at \
                 {first_index}: the entries between are gone"
            ),
            EngineError::MapPointsOutsideLog { address, count } => write!(
                f,
                "the map reads {count} values from segments that do not exist (the first \
                 at log address {address})"
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

/// Conditional writes are resolved against the applied map and sessions.
impl crate::replica::conditional::AppliedState for Engine {
    fn last_seq(&self, client_id: u64) -> Option<u64> {
        self.sessions.get(&client_id).map(|s| s.last_seq)
    }

    fn read(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
        self.get(key).map_err(|e| e.to_string())
    }
}

/// Log + map + sessions of one node.
pub struct Engine {
    backend: Arc<dyn Backend>,
    dir: PathBuf,
    options: EngineOptions,
    log: Log,
    reader: LogReader,
    map: Arc<Map>,
    /// Segments that were empty when the checkpoint now running began (deleted when it
    /// completes), with the index it covers.
    removable: Option<(LogIndex, Vec<u64>)>,
    /// Live-count changes of the entry being applied.
    deltas: Vec<LiveDelta>,
    sessions: Sessions,
    applied_index: LogIndex,
    applied_term: Term,
    /// GETs whose key hash the map held for another key (answered as misses).
    hash_collisions: u64,
    /// The first Raft index some follower still needs from this log.
    raft_keep_from: LogIndex,
    /// The last install's floor and the values segments it brought (see the module
    /// documentation), written with every checkpoint.
    install_floor: Option<InstallFloor>,
    /// Where applied entries go, with the addresses of their values read from the log,
    /// to fill the readers' value cache (see [`Engine::fill_value_cache_through`]).
    value_fill: Option<crossbeam_channel::Sender<AppliedValues>>,
    /// The cluster's members as of the applied index (`None`: no change was ever made and
    /// none was recorded, so the bootstrap membership holds).
    membership: Option<Membership>,
}

/// What [`fill_value_cache`] puts into a value cache from one applied entry.
pub struct AppliedValues {
    /// The entry.
    pub entry: Entry,
    /// The log addresses of its SETs whose values the map reads from the log.
    pub stored: Vec<u64>,
    /// The log addresses of the values its SETs and DELETEs replaced (no map slot
    /// points at them any more).
    pub replaced: Vec<u64>,
}

/// Values put into the value cache under one lock (readers wait at most for this many).
const VALUE_CACHE_BATCH: usize = 256;

/// Each client's last applied request, by client id. Ids come from clients, so the
/// hasher is keyed at random (ahash: DoS-resistant, and cheaper than SipHash per write).
type Sessions = HashMap<u64, Session, ahash::RandomState>;

/// How many commands ahead [`Engine::apply`] hashes keys and prefetches their pages.
const APPLY_PREFETCH_AHEAD: usize = 8;

/// Puts the values of one applied entry into `cache` (not marked as read, so they go
/// first unless a GET reads them). Runs off the replication core.
pub fn fill_value_cache(cache: &Mutex<ValueCache>, applied: AppliedValues) {
    for batch in applied.replaced.chunks(VALUE_CACHE_BATCH) {
        let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
        for &address in batch {
            cache.remove(address);
        }
    }
    for batch in applied.stored.chunks(VALUE_CACHE_BATCH) {
        let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
        for &address in batch {
            if let Ok(cmd) = applied.entry.command_at(address) {
                cache.insert(address, cmd.key, cmd.value);
            }
        }
    }
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
        if backend.exists(&dir.join("log")) {
            return Err(EngineError::Io(io::Error::other(format!(
                "{} holds a log in the single-file format of earlier versions, which this \
                 version does not read (it keeps the log in segments/); move the data \
                 directory away and start empty, or run the earlier version",
                dir.display()
            ))));
        }
        let (map, load) = Map::open(backend.as_ref(), dir)?;
        let (sessions, install_floor, membership) = decode_checkpoint_record(&load.sessions);
        if let Some((floor, kept)) = &install_floor {
            remove_below_floor(backend.as_ref(), &dir.join(SEGMENTS_DIR), *floor, kept)?;
        }
        let meta = map.meta();
        let (mut log, log_report) = Log::open_after(
            backend.clone(),
            &dir.join(SEGMENTS_DIR),
            options.log.clone(),
            Some(meta.last_committed_index.next()),
        )?;
        if log.last_index() == LogIndex::ZERO && meta.last_committed_index > LogIndex::ZERO {
            // Only an installed snapshot leaves a checkpoint past an empty log.
            log.start_after(meta.last_committed_index, meta.last_committed_term);
        } else {
            log.note_compacted_term(meta.last_committed_index, meta.last_committed_term);
        }
        if meta.last_committed_index > log.last_index() {
            return Err(EngineError::MapAheadOfLog {
                map_index: meta.last_committed_index,
                log_index: log.last_index(),
            });
        }
        if meta.last_committed_index.next() < log.first_index() {
            return Err(EngineError::MapBehindLog {
                map_index: meta.last_committed_index,
                first_index: log.first_index(),
            });
        }
        let reader = log.reader();
        let mut engine = Engine {
            backend,
            dir: dir.to_path_buf(),
            options,
            log,
            reader,
            map: Arc::new(map),
            removable: None,
            deltas: Vec::new(),
            sessions,
            applied_index: meta.last_committed_index,
            applied_term: meta.last_committed_term,
            hash_collisions: 0,
            raft_keep_from: LogIndex(u64::MAX),
            install_floor,
            value_fill: None,
            membership,
        };
        let last = replay_to
            .unwrap_or(LogIndex(u64::MAX))
            .min(engine.log.last_index());
        let mut replayed = 0;
        while engine.applied_index < last {
            engine.apply(engine.applied_index.next())?;
            replayed += 1;
        }
        engine.count_live_values()?;
        let report = OpenReport {
            log: log_report,
            checkpoint_index: meta.last_committed_index,
            replayed_entries: replayed,
            journal_replayed: load.journal_replayed,
        };
        Ok((engine, report))
    }

    /// Counts the values the map reads from each segment, from the map itself.
    fn count_live_values(&mut self) -> Result<(), EngineError> {
        let table = self.log.segments();
        let mut counts: BTreeMap<u64, u64> = BTreeMap::new();
        self.map.for_each_log_address(|address| {
            *counts.entry(split_address(address).0).or_default() += 1;
        });
        let mut dangling = (0u64, None);
        for (&no, &count) in &counts {
            if table.get(no).is_none() {
                dangling.0 += count;
                dangling.1.get_or_insert(no);
            }
        }
        if let (count, Some(no)) = dangling {
            let mut address = 0;
            self.map.for_each_log_address(|a| {
                if split_address(a).0 == no && address == 0 {
                    address = a;
                }
            });
            return Err(EngineError::MapPointsOutsideLog { address, count });
        }
        table.set_live_counts(&counts);
        table.set_applied_index(self.applied_index);
        Ok(())
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A cleaner for this engine's segments (to run on another thread, or between steps).
    pub fn cleaner(&self, mut options: CleanerOptions) -> Cleaner {
        options.segment_bytes = self.options.log.segment_bytes;
        Cleaner::new(
            self.backend.clone(),
            self.log.segments().clone(),
            self.map.clone(),
            self.log.entry_cache().clone(),
            options,
        )
    }

    /// Disk use and live data over every segment.
    pub fn space(&self) -> SpaceReport {
        self.log.segments().space()
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
    /// the next append does not wait for it (starting the next segment when the current
    /// one is nearly full).
    pub fn prepare_log_ahead(&mut self) -> Result<(), LogError> {
        self.log.prepare_ahead()
    }

    /// The map, shared with readers on other threads.
    pub fn map(&self) -> &Arc<Map> {
        &self.map
    }

    /// A log reader for another thread.
    pub fn log_reader(&self) -> Result<LogReader, EngineError> {
        Ok(self.log.reader())
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
        let mut cached: Vec<u64> = Vec::new();
        let mut replaced: Vec<u64> = Vec::new();
        // Commands are decoded a few ahead of their turn, with the key hashes of SETs and
        // DELETEs computed and their pages prefetched, so that the cache misses of a
        // window's writes overlap instead of each stalling the apply in turn.
        let mut commands = entry.iter();
        let mut ahead = std::collections::VecDeque::with_capacity(APPLY_PREFETCH_AHEAD + 1);
        let map = Arc::clone(&self.map);
        let mut look_ahead = |ahead: &mut std::collections::VecDeque<_>| {
            if let Some(next) = commands.next() {
                let hash = next.as_ref().ok().and_then(|c| {
                    matches!(c.op, CommandOp::Set | CommandOp::Delete).then(|| {
                        let hash = map.key_hash(c.key);
                        map.prefetch_for_write(hash);
                        hash
                    })
                });
                ahead.push_back((next, hash));
            }
        };
        for _ in 0..APPLY_PREFETCH_AHEAD {
            look_ahead(&mut ahead);
        }
        while let Some((cmd, hashed)) = {
            look_ahead(&mut ahead);
            ahead.pop_front()
        } {
            let cmd = cmd.map_err(|e| LogError::Corrupt {
                offset: entry.offset,
                reason: e.to_string(),
            })?;
            // A NOP with a session stands for a SET the leader dropped because a later
            // write of this entry overwrites it (`crate::replica::dedup`): it records
            // the session and changes nothing else.
            let dropped_set = cmd.op == CommandOp::Nop && cmd.client_id != 0;
            if cmd.op == CommandOp::Get || (cmd.op == CommandOp::Nop && !dropped_set) {
                outcomes.push(Outcome::Ignored);
                continue;
            }
            if cmd.op == CommandOp::Config {
                outcomes.push(self.apply_config(&entry));
                continue;
            }
            if cmd.client_id != 0 {
                let session = Session {
                    last_seq: cmd.request_seq,
                    last_index: index,
                };
                match self.sessions.entry(cmd.client_id) {
                    std::collections::hash_map::Entry::Occupied(mut known) => {
                        if cmd.request_seq <= known.get().last_seq {
                            outcomes.push(Outcome::Duplicate);
                            continue;
                        }
                        known.insert(session);
                    }
                    std::collections::hash_map::Entry::Vacant(new) => {
                        new.insert(session);
                    }
                }
            }
            if dropped_set {
                outcomes.push(Outcome::Done);
                continue;
            }
            let hash = hashed.unwrap_or_else(|| self.map.key_hash(cmd.key));
            let outcome = match cmd.op {
                CommandOp::Set => {
                    let set = self
                        .map
                        .set(hash, entry.command_file_offset(cmd.offset), cmd.value);
                    if self.value_fill.is_some() {
                        cached.extend(set.stored_address);
                        replaced.extend(set.replaced_address);
                    }
                    self.count_set(set);
                    Outcome::Done
                }
                CommandOp::Delete => match self.map.remove(hash) {
                    Some(previous) => {
                        if self.value_fill.is_some() {
                            replaced.extend(previous);
                        }
                        self.count_set(SetOutcome {
                            replaced_address: previous,
                            stored_address: None,
                        });
                        Outcome::Done
                    }
                    None => Outcome::Absent,
                },
                _ => Outcome::Absent,
            };
            outcomes.push(outcome);
        }
        if let Some(fill) = &self.value_fill
            && !(cached.is_empty() && replaced.is_empty())
        {
            let _ = fill.try_send(AppliedValues {
                entry: entry.clone(),
                stored: cached,
                replaced,
            });
        }
        let table = self.log.segments();
        table.apply_live(&self.deltas);
        self.deltas.clear();
        self.applied_index = index;
        self.applied_term = entry.header.term;
        table.set_applied_index(index);
        if self.sessions.len() > SESSIONS_MAX {
            self.evict_sessions();
        }
        Ok(outcomes)
    }

    /// Applies a membership change: `Done` if made, `Ignored` if the membership refused it
    /// (then raft-rs is not told of it either).
    fn apply_config(&mut self, entry: &Entry) -> Outcome {
        // Not alone in its entry, or not decoding: no membership change (peers and
        // proposals never make such entries).
        let Some(Ok(change)) = crate::storage::command::config_change(entry.commands()) else {
            return Outcome::Ignored;
        };
        let mut membership = self.membership();
        match membership.apply(&change) {
            Ok(()) => {
                self.membership = Some(membership);
                Outcome::Done
            }
            Err(_) => Outcome::Ignored,
        }
    }

    /// The cluster's members as of the applied index.
    pub fn membership(&self) -> Membership {
        self.membership
            .clone()
            .or_else(|| self.options.bootstrap_membership.clone())
            .unwrap_or_default()
    }

    /// Whether this engine knows no member at all (a node that joins, before its first
    /// snapshot). Cheap: no copy.
    pub fn knows_no_membership(&self) -> bool {
        match (&self.membership, &self.options.bootstrap_membership) {
            (Some(m), _) | (None, Some(m)) => m.is_empty(),
            (None, None) => true,
        }
    }

    /// Drops the recorded membership: a restored backup starts a cluster of its own,
    /// whose members its nodes' `--peers` name. The next checkpoint records none.
    pub fn forget_membership(&mut self) {
        self.membership = None;
    }

    /// Whether a membership was recorded (a change applied, or a snapshot or checkpoint
    /// brought one), as opposed to the bootstrap one.
    pub fn has_recorded_membership(&self) -> bool {
        self.membership.is_some()
    }

    /// Notes the live-count changes of one SET or DELETE.
    fn count_set(&mut self, set: SetOutcome) {
        let mut add = |address: Option<u64>, delta: i64| {
            let Some(address) = address else { return };
            let segment_no = split_address(address).0;
            match self.deltas.last_mut() {
                Some(last) if last.segment_no == segment_no => last.delta += delta,
                _ => self.deltas.push(LiveDelta { segment_no, delta }),
            }
        };
        add(set.replaced_address, -1);
        add(set.stored_address, 1);
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
            Lookup::InLog(offset) => match self.reader.read_value_at(offset, key)? {
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

    /// Writes the map's changed pages and the sessions back, durably, then deletes the
    /// segments that no longer hold anything needed (their files too).
    pub fn checkpoint(&mut self) -> Result<Reclaimed, EngineError> {
        let removable = self.removable_segments();
        let blob = self.checkpoint_record();
        self.map
            .checkpoint(self.applied_index, self.applied_term, &blob)?;
        let reclaimed = self.release_segments(self.applied_index, &removable);
        reclaimed.remove_files(self.backend.as_ref())?;
        Ok(reclaimed)
    }

    /// Snapshots the changed pages and the sessions for a checkpoint whose IO can run on
    /// another thread ([`CheckpointJob::write`], then [`Engine::checkpoint_end`]). `None`
    /// while a previous job is still out.
    pub fn checkpoint_begin(&mut self) -> Option<CheckpointJob> {
        // Which segments are empty is read before the pages are copied: the copy then
        // holds no pointer into them.
        let removable = self.removable_segments();
        let blob = self.checkpoint_record();
        let job = self
            .map
            .checkpoint_begin(self.applied_index, self.applied_term, &blob)?;
        self.removable = Some((self.applied_index, removable));
        Some(job)
    }

    /// Completes a job started by [`Engine::checkpoint_begin`]; once its pages are
    /// durable, releases the segments that were empty when it began. Their files are the
    /// caller's to remove ([`Reclaimed::remove_files`]): each removal waits for the disk,
    /// which the replication core should not.
    pub fn checkpoint_end(
        &mut self,
        job: CheckpointJob,
        result: io::Result<()>,
    ) -> Result<Reclaimed, EngineError> {
        let removable = self.removable.take();
        self.map.checkpoint_end(job, result)?;
        Ok(match removable {
            Some((index, segments)) => self.release_segments(index, &segments),
            None => Reclaimed::default(),
        })
    }

    /// The last sequence applied for a client session.
    pub fn session_seq(&self, client_id: u64) -> Option<u64> {
        self.sessions.get(&client_id).map(|s| s.last_seq)
    }

    /// Live sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Sealed segments the map reads no value from: values segments, and Raft segments
    /// whose entries are all applied and that no follower needs (or that lie beyond what
    /// the log retains for followers).
    fn removable_segments(&self) -> Vec<u64> {
        let rows = self.log.segments().snapshot();
        // Bytes of Raft segments newer than each one.
        let mut newer_raft_bytes = BTreeMap::new();
        let mut total = 0u64;
        for (no, r) in rows.iter().rev() {
            if r.kind == SegmentKind::Raft {
                newer_raft_bytes.insert(*no, total);
                total += r.file_bytes;
            }
        }
        rows.iter()
            .filter(|(no, r)| {
                r.sealed
                    && r.live_count <= 0
                    && match r.kind {
                        SegmentKind::Values => true,
                        SegmentKind::Raft => r.last_index.is_some_and(|i| {
                            i <= self.applied_index
                                && (i < self.raft_keep_from
                                    || newer_raft_bytes.get(no).copied().unwrap_or(0)
                                        >= self.options.raft_log_retain_bytes)
                        }),
                    }
            })
            .map(|(no, _)| *no)
            .collect()
    }

    /// Hands every applied entry, with the addresses of its values read from the log, to
    /// `fill` (a thread running [`fill_value_cache`]): data written recently is then in
    /// memory up to the cache's budget, not only data read before. An entry that finds
    /// the channel full is skipped (its values are cached when first read).
    pub fn fill_value_cache_through(&mut self, fill: crossbeam_channel::Sender<AppliedValues>) {
        self.value_fill = Some(fill);
    }

    /// Sets the first Raft index a follower still needs (the leader's slowest follower's
    /// next index; past everything for a node that leads no one). Raft segments from it
    /// on are kept, up to [`EngineOptions::raft_log_retain_bytes`].
    pub fn set_raft_keep_from(&mut self, index: LogIndex) {
        self.raft_keep_from = index;
    }

    /// The record stored with each checkpoint: the sessions, the membership, and the
    /// install floor.
    fn checkpoint_record(&self) -> Vec<u8> {
        let mut out = self.sessions_record();
        if let Some((floor, kept)) = &self.install_floor {
            out.extend_from_slice(&INSTALL_TAG);
            out.extend_from_slice(&floor.to_le_bytes());
            out.extend_from_slice(&(kept.len() as u64).to_le_bytes());
            for no in kept {
                out.extend_from_slice(&no.to_le_bytes());
            }
        }
        out
    }

    /// The sessions, then the membership (the replicated state besides the map, as a
    /// snapshot carries it).
    fn sessions_record(&self) -> Vec<u8> {
        let mut out = encode_sessions(&self.sessions);
        let membership = self
            .membership
            .clone()
            .or_else(|| self.options.bootstrap_membership.clone());
        if let Some(m) = membership {
            let bytes = m.encode();
            out.extend_from_slice(&MEMBERS_TAG);
            out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            out.extend_from_slice(&bytes);
        }
        out
    }

    /// Takes a snapshot of the applied state (see [`crate::storage::snapshot`]): the map's
    /// pages and the sessions are copied now, the values are read by the source later,
    /// from segments pinned until it is dropped.
    pub fn snapshot_source(&self, id: u64) -> SnapshotSource {
        SnapshotSource::new(
            id,
            self.applied_index,
            self.applied_term,
            self.sessions_record(),
            self.map.image(self.applied_index, self.applied_term),
            self.backend.clone(),
            self.log.segments().clone(),
        )
    }

    /// What a receiver of snapshots for this engine needs (valid across installs).
    pub fn snapshot_target(&self) -> SnapshotTarget {
        SnapshotTarget {
            backend: self.backend.clone(),
            table: self.log.segments().clone(),
            cache: self.log.entry_cache().clone(),
            segment_bytes: self.options.log.segment_bytes,
        }
    }

    /// Replaces this engine's whole state with a received snapshot, durably (see the
    /// module documentation). No checkpoint job may be out. An error leaves the state in
    /// memory undefined: the node must stop; reopening finds the old state or the new.
    pub fn install_snapshot(&mut self, staged: StagedSnapshot) -> Result<(), EngineError> {
        if self.removable.is_some() {
            return Err(EngineError::Io(io::Error::other(
                "a snapshot cannot be installed while a checkpoint is being written",
            )));
        }
        let header = staged.header;
        let (map, sessions, kept) = staged.take();
        let table = self.log.segments().clone();
        let mut installs = table.cleaning();
        *installs += 1;
        self.map.replace_contents(map);
        let (sessions, _, membership) = decode_checkpoint_record(&sessions);
        self.sessions = sessions;
        // A snapshot from before memberships were kept names none: the bootstrap one holds.
        self.membership = membership;
        self.applied_index = header.index;
        self.applied_term = header.term;
        let mut obsolete: Vec<PathBuf> = self
            .log
            .reset_after(header.index, header.term)?
            .into_iter()
            .map(|row| row.path)
            .collect();
        for (no, row) in table.snapshot() {
            if row.kind == SegmentKind::Values && !kept.contains(&no) {
                table.remove(no);
                obsolete.push(row.path);
            }
        }
        for &no in &kept {
            table.update(no, |row| row.sealed = true);
        }
        self.install_floor = Some((self.log.head_no(), kept));
        self.count_live_values()?;
        let record = self.checkpoint_record();
        self.map.checkpoint(header.index, header.term, &record)?;
        drop(installs);
        for path in &obsolete {
            crate::storage::io::remove_durable(self.backend.as_ref(), path)?;
        }
        Ok(())
    }

    /// Releases `segments` (found empty before a checkpoint covering `index` began, which
    /// is now durable): values segments whatever their place, Raft segments only from
    /// the front of the log and only up to `index`.
    fn release_segments(&mut self, index: LogIndex, segments: &[u64]) -> Reclaimed {
        let mut reclaimed = Reclaimed::default();
        let table = self.log.segments().clone();
        if table.is_pinned() {
            // A snapshot is reading these segments; the next checkpoint tries again.
            return reclaimed;
        }
        let mut release = |row: crate::storage::log::SegmentInfo| {
            reclaimed.segments += 1;
            reclaimed.bytes += row.file_bytes;
            reclaimed.files.push(row.path);
        };
        for &no in segments {
            if let Some(row) = table.get(no)
                && row.kind == SegmentKind::Values
            {
                table.remove(no);
                release(row);
            }
        }
        while let Some((no, last)) = self.log.first_segment() {
            if last > index || !segments.contains(&no) {
                break;
            }
            if let Some(row) = self.log.release_first_segment() {
                release(row);
            }
        }
        reclaimed
    }
}

/// Sessions blob: count, then (client_id, last_seq, last_index) triples, little-endian.
fn encode_sessions(sessions: &Sessions) -> Vec<u8> {
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

/// An install's floor and the segments it brought.
type InstallFloor = (u64, Vec<u64>);

/// Marks the install floor after the sessions in a checkpoint record.
const INSTALL_TAG: [u8; 8] = *b"INSTALL\0";
/// Marks the membership after the sessions, in a checkpoint record and a snapshot.
const MEMBERS_TAG: [u8; 8] = *b"MEMBERS\0";

/// Splits a checkpoint record (or a snapshot's sessions) into the sessions, the install
/// floor (none in a record written before installs existed, or never installed into) and
/// the membership (none in a record from before memberships were kept). A damaged
/// membership reads as none.
fn decode_checkpoint_record(blob: &[u8]) -> (Sessions, Option<InstallFloor>, Option<Membership>) {
    let sessions = decode_sessions(blob);
    let count = crate::le::u64_at(blob, 0).unwrap_or(0) as usize;
    let after = 8usize.saturating_add(count.saturating_mul(24));
    let mut rest = blob.get(after..).unwrap_or_default();
    let mut membership = None;
    if rest.get(..8) == Some(&MEMBERS_TAG[..]) {
        let len = crate::le::u64_at(rest, 8).unwrap_or(u64::MAX);
        let body = usize::try_from(len)
            .ok()
            .and_then(|len| rest.get(16..16usize.checked_add(len)?));
        if let Some(body) = body {
            membership = Membership::decode(body)
                .ok()
                .filter(|(_, after)| after.is_empty())
                .map(|(m, _)| m);
            rest = rest.get(16 + body.len()..).unwrap_or_default();
        } else {
            rest = &[];
        }
    }
    let floor = (rest.get(..8) == Some(&INSTALL_TAG[..])).then(|| {
        let floor = crate::le::u64_at(rest, 8)?;
        let n = crate::le::u64_at(rest, 16)? as usize;
        let kept = (0..n.min(rest.len() / 8))
            .map(|i| crate::le::u64_at(rest, 24 + i * 8))
            .collect::<Option<Vec<u64>>>()?;
        Some((floor, kept))
    });
    (sessions, floor.flatten(), membership)
}

/// Deletes every segment file numbered below `floor` that is not in `kept`: what an
/// install left of the state before it.
fn remove_below_floor(
    backend: &dyn Backend,
    dir: &Path,
    floor: u64,
    kept: &[u64],
) -> io::Result<()> {
    if !backend.exists(dir) {
        return Ok(());
    }
    for name in backend.list_dir(dir)? {
        if let Some((no, _)) = crate::storage::log::segments::parse_file_name(&name)
            && no < floor
            && !kept.contains(&no)
        {
            crate::storage::io::remove_durable(backend, &dir.join(&name))?;
        }
    }
    Ok(())
}

fn decode_sessions(blob: &[u8]) -> Sessions {
    let mut sessions = Sessions::default();
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
                ..LogOptions::default()
            },
            ..EngineOptions::default()
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

    /// The membership is replicated state: a change applies on top of the bootstrap one,
    /// survives a reopen by replay and by checkpoint, and travels in a snapshot; a CONFIG
    /// command beside another one is no change.
    #[test]
    fn membership_changes_apply_replay_checkpoint_and_travel_in_snapshots() {
        use crate::consensus::membership::{Change, Membership};
        use crate::ids::NodeId;
        let addr = |p: u16| std::net::SocketAddr::from(([127, 0, 0, 1], p));
        let boot = Membership::bootstrap(&[addr(8000), addr(8001)], &[addr(9000), addr(9001)]);
        let options = EngineOptions {
            bootstrap_membership: Some(boot.clone()),
            ..EngineOptions::default()
        };
        let disk = Arc::new(FaultBackend::new());
        let dir = Path::new("/m");
        let open = |options: &EngineOptions| {
            Engine::open(disk.clone(), dir, options.clone(), None)
                .unwrap()
                .0
        };
        let add = Change::AddLearner {
            id: NodeId::from_index(2),
            peer_addr: addr(8002),
            client_addr: addr(9002),
        };
        let mut want = boot.clone();
        want.apply(&add).unwrap();
        let mut e = open(&options);
        assert_eq!(e.membership(), boot);
        let cmds = command::encode_config(&add);
        let (_, outcomes) = e.commit_local(Term(1), 1, &cmds).unwrap();
        assert_eq!(outcomes, vec![Outcome::Done]);
        assert_eq!(e.membership(), want);
        // The same change again is refused by the rules, and changes nothing.
        let (_, outcomes) = e.commit_local(Term(1), 1, &cmds).unwrap();
        assert_eq!(outcomes, vec![Outcome::Ignored]);
        // Beside a SET it is no change at all.
        let mut beside = command::encode_config(&Change::Remove {
            id: NodeId::from_index(0),
        });
        command::encode(&mut beside, CommandOp::Set, 0, 0, b"k", b"v");
        let (_, outcomes) = e.commit_local(Term(1), 2, &beside).unwrap();
        assert_eq!(outcomes, vec![Outcome::Ignored, Outcome::Done]);
        assert_eq!(e.membership(), want);
        drop(e);
        // Replayed from the log onto the bootstrap membership.
        let e = open(&options);
        assert_eq!(e.membership(), want);
        let mut e = e;
        e.checkpoint().unwrap();
        drop(e);
        // From the checkpoint, whatever bootstrap membership the node is given now.
        let e = open(&EngineOptions::default());
        assert!(e.has_recorded_membership());
        assert_eq!(e.membership(), want);
        // A snapshot carries it into another engine.
        let mut source = e.snapshot_source(7);
        let target_disk = Arc::new(FaultBackend::new());
        let mut other = Engine::open(target_disk, Path::new("/t"), EngineOptions::default(), None)
            .unwrap()
            .0;
        assert!(other.knows_no_membership());
        let mut sink = crate::storage::snapshot::SnapshotSink::new(other.snapshot_target());
        while let Some(chunk) = source.next_chunk().unwrap() {
            sink.accept(&chunk).unwrap();
        }
        drop(source);
        other.install_snapshot(sink.finish().unwrap()).unwrap();
        assert_eq!(other.membership(), want);
        assert!(!other.knows_no_membership());
    }

    /// A data directory written by the single-file log of earlier versions is refused
    /// with a reason, not taken for an empty one (which would lose its data from view).
    #[test]
    fn a_single_file_log_of_an_earlier_version_is_refused() {
        let disk = FaultBackend::new();
        crate::storage::io::create_dir_durable(&disk, Path::new("/old")).unwrap();
        crate::storage::io::open_durable(&disk, Path::new("/old/log")).unwrap();
        let Err(e) = Engine::open(
            Arc::new(disk),
            Path::new("/old"),
            EngineOptions::default(),
            None,
        ) else {
            panic!("an old data directory opened as a new one");
        };
        assert!(e.to_string().contains("single-file format"), "{e}");
    }

    /// A key whose hash the map holds with another key's SET (a hash collision, which
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

    /// With a fill channel attached, an applied entry goes there with the addresses of
    /// its values read from the log, and filling puts them into a value cache under those
    /// addresses; inline values and entries applied before do not.
    #[test]
    fn applied_sets_fill_the_value_cache() {
        let cache = Mutex::new(ValueCache::new(1 << 20));
        let (tx, rx) = crossbeam_channel::bounded(16);
        let mut engine = open(0);
        let mut cmds = Vec::new();
        command::encode(&mut cmds, CommandOp::Set, 0, 0, b"before", &[b'b'; 100]);
        engine.commit_local(Term(1), 1, &cmds).unwrap();
        engine.fill_value_cache_through(tx);
        let mut cmds = Vec::new();
        command::encode(&mut cmds, CommandOp::Set, 0, 0, b"long", &[b'l'; 100]);
        command::encode(&mut cmds, CommandOp::Set, 0, 0, b"short", b"s");
        engine.commit_local(Term(1), 2, &cmds).unwrap();
        let applied: Vec<AppliedValues> = rx.try_iter().collect();
        assert_eq!(applied.len(), 1);
        for a in applied {
            fill_value_cache(&cache, a);
        }
        let mut c = cache.lock().unwrap();
        assert_eq!(c.len(), 1, "only the value read from the log");
        assert_eq!(
            c.get(log_offset(&engine, b"long"), b"long"),
            Some(ValueRead::Value(vec![b'l'; 100]))
        );
        assert_eq!(c.get(log_offset(&engine, b"before"), b"before"), None);
        drop(c);
        // A SET again and a DELETE take the values they replaced out of the cache.
        let long_before = log_offset(&engine, b"long");
        let mut cmds = Vec::new();
        command::encode(&mut cmds, CommandOp::Set, 0, 0, b"long", &[b'L'; 100]);
        command::encode(&mut cmds, CommandOp::Set, 0, 0, b"other", &[b'o'; 100]);
        engine.commit_local(Term(1), 2, &cmds).unwrap();
        let other = log_offset(&engine, b"other");
        let mut cmds = Vec::new();
        command::encode(&mut cmds, CommandOp::Delete, 0, 0, b"other", b"");
        engine.commit_local(Term(1), 1, &cmds).unwrap();
        for a in rx.try_iter() {
            fill_value_cache(&cache, a);
        }
        let mut c = cache.lock().unwrap();
        assert_eq!(c.get(long_before, b"long"), None, "the replaced value");
        assert_eq!(c.get(other, b"other"), None, "the deleted value");
        assert_eq!(
            c.get(log_offset(&engine, b"long"), b"long"),
            Some(ValueRead::Value(vec![b'L'; 100]))
        );
        assert_eq!(c.len(), 1);
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
