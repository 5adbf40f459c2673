//! raft-rs's `Storage`, served from the node's own log.
//!
//! Raft log index `i` is log entry `i` of [`crate::storage::log::Log`]; the entry's data is the
//! window's commands region and its context the command count (8 bytes, little-endian).
//! A node deletes its oldest segments once a checkpoint covers them and no follower it
//! knows of needs them (within a retention bound), so its first index moves up. A
//! follower that needs entries from before is sent a snapshot: [`LogStorage::snapshot`]
//! takes one of the applied state ([`crate::storage::snapshot`]) and hands raft-rs its
//! metadata and a descriptor; the taken snapshot waits here until the driver collects
//! it with the message that names it ([`LogStorage::take_snapshot_source`]).

use crate::consensus::membership::Change;
use crate::ids::LogIndex;
use crate::storage::engine::Engine;
use crate::storage::snapshot::{self, SnapshotSource};
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};
use std::cell::RefCell;
use std::rc::Rc;

/// The Raft view of the engine's log.
pub struct LogStorage {
    pub(crate) engine: Rc<RefCell<Engine>>,
    hard_state: HardState,
    conf_state: ConfState,
    /// Snapshots taken for raft-rs, by id, until their message is collected.
    sources: RefCell<Vec<SnapshotSource>>,
    next_snapshot_id: std::cell::Cell<u64>,
}

impl LogStorage {
    /// The log of `engine`, whose applied state has the configuration `conf_state`.
    pub fn new(
        engine: Rc<RefCell<Engine>>,
        hard_state: HardState,
        conf_state: ConfState,
    ) -> LogStorage {
        LogStorage {
            engine,
            hard_state,
            conf_state,
            sources: RefCell::new(Vec::new()),
            next_snapshot_id: std::cell::Cell::new(1),
        }
    }

    /// Numbers this node's snapshots from `seed` on (ids differ between nodes and runs).
    pub fn seed_snapshot_ids(&self, seed: u64) {
        self.next_snapshot_id.set(seed | 1);
    }

    /// Takes the snapshot with `id` out (raft-rs put its message in a Ready).
    pub fn take_snapshot_source(&self, id: u64) -> Option<SnapshotSource> {
        let mut sources = self.sources.borrow_mut();
        let at = sources.iter().position(|s| s.id() == id)?;
        Some(sources.swap_remove(at))
    }

    /// Drops every snapshot no message took (each pins the segments).
    pub fn drop_snapshot_sources(&self) {
        self.sources.borrow_mut().clear();
    }
}

fn other(e: impl std::error::Error + Send + Sync + 'static) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(e)))
}

/// Builds the raft entry for log entry `index`. An entry that holds one membership
/// change is raft-rs's `ConfChangeV2` entry: the change as raft-rs encodes it, and the
/// log's form of it in the context (as [`crate::consensus::RaftNode`] proposes it).
pub fn raft_entry(engine: &mut Engine, index: u64) -> raft::Result<Entry> {
    let entry = engine.read_entry(LogIndex(index)).map_err(other)?;
    if let Some(change) = crate::storage::command::config_change(entry.commands()) {
        let change = change.map_err(|e| other(std::io::Error::other(e)))?;
        return Ok(conf_change_entry(entry.header.term.get(), index, &change));
    }
    Ok(Entry {
        term: entry.header.term.get(),
        index,
        data: bytes::Bytes::copy_from_slice(entry.commands()),
        context: bytes::Bytes::copy_from_slice(&entry.header.num_commands.to_le_bytes()),
        ..Default::default()
    })
}

/// raft-rs's entry for a membership change at `index` of `term`.
pub fn conf_change_entry(term: u64, index: u64, change: &Change) -> Entry {
    use protobuf::Message as _;
    let data = change
        .to_conf_change()
        .write_to_bytes()
        .expect("a ConfChangeV2 of one change encodes");
    let mut e = Entry {
        term,
        index,
        data: data.into(),
        context: crate::storage::command::encode_config(change).into(),
        ..Default::default()
    };
    e.set_entry_type(raft::eraftpb::EntryType::EntryConfChangeV2);
    e
}

impl raft::Storage for LogStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let max_size = max_size.into().unwrap_or(u64::MAX);
        let mut engine = self.engine.borrow_mut();
        if low < engine.log().first_index().get() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > engine.last_index().next().get() {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let mut out = Vec::with_capacity((high - low) as usize);
        let mut size = 0u64;
        for index in low..high {
            let e = raft_entry(&mut engine, index)?;
            size += e.data.len() as u64 + 32;
            if !out.is_empty() && size > max_size {
                break;
            }
            out.push(e);
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == 0 {
            return Ok(0);
        }
        let engine = self.engine.borrow();
        let log = engine.log();
        match log.term(LogIndex(idx)) {
            Some(term) => Ok(term.get()),
            None if LogIndex(idx) < log.first_index() => {
                Err(raft::Error::Store(StorageError::Compacted))
            }
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.engine.borrow().log().first_index().get())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.engine.borrow().last_index().get())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let engine = self.engine.borrow();
        let applied = engine.applied_index().get();
        if applied < request_index || applied == 0 {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let id = self.next_snapshot_id.get();
        self.next_snapshot_id.set(id.wrapping_add(2));
        let source = engine.snapshot_source(id);
        let header = source.header();
        self.sources.borrow_mut().push(source);
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = header.index.get();
        snap.mut_metadata().term = header.term.get();
        snap.mut_metadata()
            .set_conf_state(engine.membership().conf_state());
        snap.data = snapshot::encode_descriptor(id).into();
        Ok(snap)
    }
}
