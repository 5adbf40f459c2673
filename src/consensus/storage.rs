//! raft-rs's `Storage`, served from the node's own log.
//!
//! Raft log index `i` is log entry `i` of [`crate::storage::log::Log`]; the entry's data is the
//! window's commands region and its context the command count (8 bytes, little-endian).
//! A single node deletes its oldest segments once a checkpoint covers them, so its first
//! index moves up; nobody ever asks it for the entries before. A cluster keeps its whole
//! Raft log (see [`crate::storage::engine::EngineOptions::keep_raft_log`]), so no snapshot
//! is ever needed; one is never offered.

use crate::ids::LogIndex;
use crate::storage::engine::Engine;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};
use std::cell::RefCell;
use std::rc::Rc;

/// The Raft view of the engine's log.
pub struct LogStorage {
    pub(crate) engine: Rc<RefCell<Engine>>,
    hard_state: HardState,
    conf_state: ConfState,
}

impl LogStorage {
    pub fn new(engine: Rc<RefCell<Engine>>, hard_state: HardState, voters: &[u64]) -> LogStorage {
        let conf_state = ConfState {
            voters: voters.to_vec(),
            ..Default::default()
        };
        LogStorage {
            engine,
            hard_state,
            conf_state,
        }
    }
}

fn other(e: impl std::error::Error + Send + Sync + 'static) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(e)))
}

/// Builds the raft entry for log entry `index`.
pub fn raft_entry(engine: &mut Engine, index: u64) -> raft::Result<Entry> {
    let entry = engine.read_entry(LogIndex(index)).map_err(other)?;
    Ok(Entry {
        term: entry.header.term.get(),
        index,
        data: bytes::Bytes::copy_from_slice(entry.commands()),
        context: bytes::Bytes::copy_from_slice(&entry.header.num_commands.to_le_bytes()),
        ..Default::default()
    })
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

    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        Err(raft::Error::Store(
            StorageError::SnapshotTemporarilyUnavailable,
        ))
    }
}
