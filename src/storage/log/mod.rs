//! The append-only log: one entry per replication window, each entry a batch of commands.
//!
//! Owned by the replication core. All IO goes through [`crate::storage::io::BlockFile`] with
//! page-aligned buffers, so the real backend runs it with `O_DIRECT`.
//!
//! Files: `entry.rs` (the entry format and its checks), `recovery.rs` (the scan on open),
//! `reader.rs` (values by offset, from other threads), `cache.rs` (recent entries in
//! memory); this file holds the log itself (append, prepare, read, truncate).
//!
//! # Entry layout
//!
//! Every entry starts on a [`PAGE_SIZE`] boundary and is padded to a whole number of pages.
//! The header is written twice, at the start and at the end, so the log can be walked in
//! either direction.
//!
//! ```text
//! entry offset
//!   0 ┌──────────────────────────────┐
//!     │ header (80 B) + 16 B zeros   │ HEADER_SLOT_SIZE = 96
//!  96 ├──────────────────────────────┤
//!     │ commands (command_length B)  │ see crate::storage::command, 32-byte aligned
//!     ├──────────────────────────────┤
//!     │ zeros                        │
//! E-96├──────────────────────────────┤
//!     │ header copy (80 B) + 16 B    │ the trailer
//!   E └──────────────────────────────┘ E = align_up(96 + command_length + 96, 4096)
//!
//! header (little-endian)
//!   0  8  magic             b"OLLOG\0\0\x01" (format version 1)
//!   8  8  term
//!  16  8  log_index         1-based, consecutive
//!  24  8  num_commands
//!  32  8  command_length    bytes of commands, padding excluded
//!  40  8  batch_first_index index of the first entry of the write this entry was in
//!  48 16  commands_hash     xxh3-128 of the commands bytes
//!  64 16  header_hash       xxh3-128 of header bytes 0..64
//! ```
//!
//! The seed design listed a 40-byte header; its own fields (four u64 and a 16-byte hash)
//! take 48, and the magic, the batch index and the commands hash bring it to 80.
//!
//! # Torn writes and recovery
//!
//! A device may persist the sectors of one O_DIRECT write in any order, so after a crash
//! the last entry can have a valid header and trailer around a zeroed middle sector. The
//! header hash covers the commands hash, so such an entry fails verification. On open the
//! log is scanned forward; at the first entry that fails verification the rest of the file
//! is searched for a later valid entry written by a *later* write (its batch began after
//! the damaged entry). If one exists, the damaged entry had been durable before that
//! write, so the damage is in the middle of the log and [`LogError::Corrupt`] names the
//! offset. Otherwise it is a torn tail — possibly a multi-entry write whose later entries
//! landed while an earlier one did not — and the file is cut there.
//!
//! A page of zeros where an entry should start gets the same search: it is the normal
//! end of the log (the prepared space below) only if no later write follows it. A lost
//! first page in the middle of the log is corruption, never a place to cut.
//!
//! # Space ahead of the writer
//!
//! Durable O_DIRECT writes into a growing file are several times slower than into blocks
//! already written once, so the log keeps the region past its end written with zeros
//! (`prepare_chunk_bytes` at a time). Everything past the last entry is therefore zeros,
//! and a suffix truncation cuts the file rather than leaving stale entries behind. A full
//! disk shows up while preparing, before any entry byte is written.

mod cache;
mod entry;
mod reader;
mod recovery;
mod value_cache;

pub use cache::EntryCache;
pub use entry::{
    COMMAND_LENGTH_MAX, ENTRY_MAGIC, Entry, EntryHeader, HEADER_SIZE, HEADER_SLOT_SIZE, NewEntry,
    entry_size,
};
use entry::{check_commands, encode_entry, verify_body};
use reader::read_value;
pub use reader::{LogReader, ValueRead};
pub use value_cache::ValueCache;

use crate::storage::io::{AlignedBuf, Backend, BlockFile, PAGE_SIZE, align_up, read_exact_at};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub use crate::ids::{LogIndex, Term};

/// Errors of the log.
#[derive(Debug)]
pub enum LogError {
    /// The underlying file failed.
    Io(io::Error),
    /// An entry in the middle of the log failed verification.
    Corrupt { offset: u64, reason: String },
    /// A previous durable write failed with an error after which the on-disk state is
    /// unknown; the node must restart and recover.
    Failed,
    /// An entry handed to [`Log::append`] is malformed (its commands do not decode, or
    /// their count is not the one it claims); nothing was written.
    Invalid { log_index: LogIndex, reason: String },
}

impl std::fmt::Display for LogError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LogError::Io(e) => write!(f, "log IO error: {e}"),
            LogError::Corrupt { offset, reason } => {
                write!(f, "log corrupt at byte offset {offset}: {reason}")
            }
            LogError::Failed => write!(f, "log failed after an IO error; restart to recover"),
            LogError::Invalid { log_index, reason } => {
                write!(f, "refused to append malformed entry {log_index}: {reason}")
            }
        }
    }
}

impl std::error::Error for LogError {}

impl From<io::Error> for LogError {
    fn from(e: io::Error) -> LogError {
        LogError::Io(e)
    }
}

impl LogError {
    /// Whether this is a full disk (the caller may retry once space is freed).
    pub fn is_no_space(&self) -> bool {
        matches!(self, LogError::Io(e) if e.raw_os_error() == Some(libc::ENOSPC))
    }
}

/// Tunables of the log.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// Bytes written with zeros past the end each time the prepared region runs out.
    pub prepare_chunk_bytes: u64,
    /// Bytes of recent entries kept in memory for reads.
    pub cache_bytes: usize,
}

impl Default for LogOptions {
    fn default() -> LogOptions {
        LogOptions {
            prepare_chunk_bytes: 16 << 20,
            cache_bytes: 256 << 20,
        }
    }
}

/// What recovery found when the log was opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub entries: u64,
    /// Byte offset where a torn tail was cut, if one was.
    pub torn_tail_at: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
struct EntryMeta {
    offset: u64,
    term: Term,
    command_length: u64,
}

/// The append-only log file.
pub struct Log {
    file: Box<dyn BlockFile>,
    path: PathBuf,
    options: LogOptions,
    /// Entry `i` holds log index `i + 1`.
    entries: Vec<EntryMeta>,
    end_offset: u64,
    prepared_offset: u64,
    cache: Arc<Mutex<EntryCache>>,
    failed: bool,
}

impl Log {
    /// Opens (or creates) the log at `path`, verifies it and cuts a torn tail.
    pub fn open(
        backend: &dyn Backend,
        path: &Path,
        options: LogOptions,
    ) -> Result<(Log, RecoveryReport), LogError> {
        let file = crate::storage::io::open_durable(backend, path)?;
        let cache = Arc::new(Mutex::new(EntryCache::new(options.cache_bytes)));
        let mut log = Log {
            file,
            path: path.to_path_buf(),
            options,
            entries: Vec::new(),
            end_offset: 0,
            prepared_offset: 0,
            cache,
            failed: false,
        };
        let report = log.recover()?;
        Ok((log, report))
    }

    /// The file this log lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Index of the last entry (0 when empty).
    pub fn last_index(&self) -> LogIndex {
        LogIndex(self.entries.len() as u64)
    }

    /// Term of the last entry (0 when empty).
    pub fn last_term(&self) -> Term {
        self.entries.last().map_or(Term::ZERO, |e| e.term)
    }

    /// Term of entry `index`, if present (index 0 has term 0).
    pub fn term(&self, index: LogIndex) -> Option<Term> {
        if index == LogIndex::ZERO {
            return Some(Term::ZERO);
        }
        self.meta(index).map(|m| m.term)
    }

    /// Byte offset where the next entry goes.
    pub fn end_offset(&self) -> u64 {
        self.end_offset
    }

    fn meta(&self, index: LogIndex) -> Option<&EntryMeta> {
        index
            .prev()
            .and_then(|i| self.entries.get(i.get() as usize))
    }

    /// Appends entries and makes them durable before returning. On error nothing is
    /// appended in memory; a full disk (`is_no_space`) leaves the log usable.
    pub fn append(&mut self, new_entries: &[NewEntry<'_>]) -> Result<LogIndex, LogError> {
        if self.failed {
            return Err(LogError::Failed);
        }
        let mut total = 0usize;
        let mut expected = self.last_index().next();
        let mut last_term = self.last_term();
        for entry in new_entries {
            check_commands(entry.commands, entry.num_commands).map_err(|reason| {
                LogError::Invalid {
                    log_index: entry.log_index,
                    reason,
                }
            })?;
        }
        for entry in new_entries {
            assert_eq!(entry.log_index, expected, "log indexes are consecutive");
            assert!(entry.term >= last_term, "terms never go backwards in a log");
            assert!(entry.commands.len() <= COMMAND_LENGTH_MAX);
            expected = expected.next();
            last_term = entry.term;
            total += entry_size(entry.commands.len());
        }
        if total == 0 {
            return Ok(self.last_index());
        }
        self.prepare(total as u64)?;
        let mut buf = AlignedBuf::new(total);
        let mut at = 0usize;
        let mut metas = Vec::with_capacity(new_entries.len());
        let batch_first_index = new_entries[0].log_index;
        for entry in new_entries {
            let size = entry_size(entry.commands.len());
            encode_entry(entry, batch_first_index, &mut buf[at..at + size]);
            metas.push(EntryMeta {
                offset: self.end_offset + at as u64,
                term: entry.term,
                command_length: entry.commands.len() as u64,
            });
            at += size;
        }
        if let Err(e) = self.file.write_durable_at(&buf, self.end_offset) {
            if e.raw_os_error() != Some(libc::ENOSPC) {
                self.failed = true;
            }
            return Err(e.into());
        }
        let buf = Arc::new(buf);
        let mut cache = self.cache.lock().unwrap();
        for meta in &metas {
            let start = (meta.offset - self.end_offset) as usize;
            cache.insert_slice(
                meta.offset,
                &buf,
                start,
                entry_size(meta.command_length as usize),
            );
        }
        drop(cache);
        self.entries.extend(metas);
        self.end_offset += total as u64;
        Ok(self.last_index())
    }

    /// Bytes already written with zeros past the last entry.
    pub fn prepared_bytes_ahead(&self) -> u64 {
        self.prepared_offset - self.end_offset
    }

    /// The size of one preparation step.
    pub fn prepare_chunk_bytes(&self) -> u64 {
        self.options.prepare_chunk_bytes
    }

    /// Ensures `bytes` past the end are already written (zeros), extending by whole chunks.
    pub fn prepare(&mut self, bytes: u64) -> Result<(), LogError> {
        if self.end_offset + bytes <= self.prepared_offset {
            return Ok(());
        }
        let chunk = self.options.prepare_chunk_bytes.max(PAGE_SIZE as u64);
        let target = align_up((self.end_offset + bytes) as usize, chunk as usize) as u64;
        let zeros = AlignedBuf::new(chunk.min(4 << 20) as usize);
        let mut at = self.prepared_offset;
        while at < target {
            let n = (zeros.len() as u64).min(target - at) as usize;
            self.file.write_at(&zeros[..n], at)?;
            at += n as u64;
        }
        self.file.sync()?;
        self.prepared_offset = target;
        Ok(())
    }

    /// Reads entry `index` (from the cache, or the disk).
    pub fn read(&mut self, index: LogIndex) -> Result<Entry, LogError> {
        let meta = *self
            .meta(index)
            .ok_or_else(|| LogError::Io(io::Error::other(format!("no log entry {index}"))))?;
        let cached = self.cache.lock().unwrap().get(meta.offset);
        if let Some(bytes) = cached {
            let header = EntryHeader::decode(&bytes).expect("cached entries are valid");
            return Ok(Entry {
                header,
                offset: meta.offset,
                bytes,
            });
        }
        let size = entry_size(meta.command_length as usize);
        let mut bytes = AlignedBuf::new(size);
        read_exact_at(self.file.as_mut(), &mut bytes, meta.offset)?;
        let header = EntryHeader::decode(&bytes).ok_or_else(|| LogError::Corrupt {
            offset: meta.offset,
            reason: "header failed verification on read".into(),
        })?;
        verify_body(&header, &bytes).map_err(|reason| LogError::Corrupt {
            offset: meta.offset,
            reason: reason.into(),
        })?;
        let bytes = Arc::new(bytes);
        self.cache
            .lock()
            .unwrap()
            .insert(meta.offset, bytes.clone());
        Ok(Entry {
            header,
            offset: meta.offset,
            bytes,
        })
    }

    /// The index of the entry containing log-file byte offset `file_offset`.
    pub fn index_at_offset(&self, file_offset: u64) -> Option<LogIndex> {
        let i = self.entries.partition_point(|m| m.offset <= file_offset);
        (i > 0).then_some(LogIndex(i as u64))
    }

    /// Reads the value for `key` of the SET command stored at log-file offset
    /// `file_offset` (see [`ValueRead`]).
    pub fn read_value_at(&mut self, file_offset: u64, key: &[u8]) -> Result<ValueRead, LogError> {
        if self.index_at_offset(file_offset).is_none() || file_offset >= self.end_offset {
            return Err(LogError::Corrupt {
                offset: file_offset,
                reason: "offset outside the log".into(),
            });
        }
        read_value(self.file.as_mut(), &self.cache, file_offset, key)
    }

    /// A handle that reads values from this log on another thread, sharing its cache.
    pub fn reader(&self, backend: &dyn Backend) -> Result<LogReader, LogError> {
        Ok(LogReader {
            file: backend.open(&self.path, false)?,
            cache: self.cache.clone(),
            values: None,
        })
    }

    /// Walks the log backwards from its end using the trailers, verifying each entry, and
    /// returns the headers newest first. Recovery walks forwards; this is the reverse path
    /// (and a cross-check of the trailers).
    pub fn walk_backward(&mut self) -> Result<Vec<EntryHeader>, LogError> {
        let mut headers = Vec::new();
        let mut end = self.end_offset;
        let mut page = AlignedBuf::new(PAGE_SIZE);
        while end > 0 {
            read_exact_at(self.file.as_mut(), &mut page, end - PAGE_SIZE as u64)?;
            let trailer_at = PAGE_SIZE - HEADER_SLOT_SIZE;
            let header =
                EntryHeader::decode(&page[trailer_at..]).ok_or_else(|| LogError::Corrupt {
                    offset: end - HEADER_SLOT_SIZE as u64,
                    reason: "trailer failed verification".into(),
                })?;
            let start = end - header.entry_size() as u64;
            let entry = self.read(header.log_index)?;
            if entry.offset != start || entry.header != header {
                return Err(LogError::Corrupt {
                    offset: start,
                    reason: "trailer does not match its header".into(),
                });
            }
            headers.push(header);
            end = start;
        }
        Ok(headers)
    }

    /// Removes every entry from `index` on (a new leader overwriting uncommitted entries).
    /// Durable before returning.
    pub fn truncate_from(&mut self, index: LogIndex) -> Result<(), LogError> {
        if self.failed {
            return Err(LogError::Failed);
        }
        assert!(index > LogIndex::ZERO);
        let Some(meta) = self.meta(index).copied() else {
            return Ok(());
        };
        self.file.set_len(meta.offset)?;
        if let Err(e) = self.file.sync() {
            self.failed = true;
            return Err(e.into());
        }
        self.entries.truncate(index.get() as usize - 1);
        self.end_offset = meta.offset;
        self.prepared_offset = meta.offset;
        self.cache.lock().unwrap().remove_from(meta.offset);
        Ok(())
    }
}
