//! The append-only log: one entry per replication window, each entry a batch of commands.
//!
//! Owned by the replication core. All IO goes through [`crate::storage::io::BlockFile`] with
//! page-aligned buffers, so the real backend runs it with `O_DIRECT`.
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

pub use cache::EntryCache;

use crate::storage::command::{self, CommandRef, DecodeError};
use crate::storage::io::{AlignedBuf, Backend, BlockFile, PAGE_SIZE, align_up, read_exact_at};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use xxhash_rust::xxh3::xxh3_128;

/// Format magic and version of an entry header.
pub const ENTRY_MAGIC: [u8; 8] = *b"OLLOG\0\0\x01";
/// Bytes of a header.
pub const HEADER_SIZE: usize = 80;
/// Bytes reserved for a header at each end of an entry (keeps commands 32-byte aligned).
pub const HEADER_SLOT_SIZE: usize = 96;
const _: () = assert!(HEADER_SLOT_SIZE >= HEADER_SIZE);
const _: () = assert!(HEADER_SLOT_SIZE.is_multiple_of(command::COMMAND_ALIGN));
const _: () = assert!(2 * HEADER_SLOT_SIZE <= PAGE_SIZE);
/// The largest commands region of one entry.
pub const COMMAND_LENGTH_MAX: usize = 64 << 20;

const OFFSET_TERM: usize = 8;
const OFFSET_INDEX: usize = 16;
const OFFSET_NUM_COMMANDS: usize = 24;
const OFFSET_COMMAND_LENGTH: usize = 32;
const OFFSET_BATCH_FIRST: usize = 40;
const OFFSET_COMMANDS_HASH: usize = 48;
const OFFSET_HEADER_HASH: usize = OFFSET_COMMANDS_HASH + 16;
const _: () = assert!(OFFSET_HEADER_HASH + 16 == HEADER_SIZE);

/// A log index (1-based; 0 means "before the first entry").
pub type LogIndex = u64;
/// A Raft term.
pub type Term = u64;

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

/// A decoded entry header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryHeader {
    pub term: Term,
    pub log_index: LogIndex,
    pub num_commands: u64,
    pub command_length: u64,
    /// Index of the first entry of the write this entry was part of.
    pub batch_first_index: LogIndex,
    pub commands_hash: u128,
}

impl EntryHeader {
    /// Bytes the whole entry occupies on disk.
    pub fn entry_size(&self) -> usize {
        entry_size(self.command_length as usize)
    }

    /// Writes the header into `out[..HEADER_SIZE]`.
    pub fn encode(&self, out: &mut [u8]) {
        out[..8].copy_from_slice(&ENTRY_MAGIC);
        out[OFFSET_TERM..OFFSET_TERM + 8].copy_from_slice(&self.term.to_le_bytes());
        out[OFFSET_INDEX..OFFSET_INDEX + 8].copy_from_slice(&self.log_index.to_le_bytes());
        out[OFFSET_NUM_COMMANDS..OFFSET_NUM_COMMANDS + 8]
            .copy_from_slice(&self.num_commands.to_le_bytes());
        out[OFFSET_COMMAND_LENGTH..OFFSET_COMMAND_LENGTH + 8]
            .copy_from_slice(&self.command_length.to_le_bytes());
        out[OFFSET_BATCH_FIRST..OFFSET_BATCH_FIRST + 8]
            .copy_from_slice(&self.batch_first_index.to_le_bytes());
        out[OFFSET_COMMANDS_HASH..OFFSET_HEADER_HASH]
            .copy_from_slice(&self.commands_hash.to_le_bytes());
        let hash = xxh3_128(&out[..OFFSET_HEADER_HASH]);
        out[OFFSET_HEADER_HASH..HEADER_SIZE].copy_from_slice(&hash.to_le_bytes());
    }

    /// Decodes and verifies a header (magic, header hash, sane length).
    pub fn decode(bytes: &[u8]) -> Option<EntryHeader> {
        let header: &[u8; HEADER_SIZE] = bytes.first_chunk()?;
        let field = |at: usize| header.get(at..).and_then(|b| b.first_chunk::<16>());
        let u64_at = |at: usize| {
            header
                .get(at..)
                .and_then(|b| b.first_chunk::<8>())
                .map_or(0, |b| u64::from_le_bytes(*b))
        };
        if header.first_chunk::<8>() != Some(&ENTRY_MAGIC) {
            return None;
        }
        let hash = u128::from_le_bytes(*field(OFFSET_HEADER_HASH)?);
        if hash != xxh3_128(header.get(..OFFSET_HEADER_HASH)?) {
            return None;
        }
        let header = EntryHeader {
            term: u64_at(OFFSET_TERM),
            log_index: u64_at(OFFSET_INDEX),
            num_commands: u64_at(OFFSET_NUM_COMMANDS),
            command_length: u64_at(OFFSET_COMMAND_LENGTH),
            batch_first_index: u64_at(OFFSET_BATCH_FIRST),
            commands_hash: u128::from_le_bytes(*field(OFFSET_COMMANDS_HASH)?),
        };
        (header.command_length as usize <= COMMAND_LENGTH_MAX
            && header.log_index > 0
            && header.batch_first_index <= header.log_index)
            .then_some(header)
    }
}

/// Bytes an entry with `command_length` bytes of commands occupies on disk.
pub const fn entry_size(command_length: usize) -> usize {
    align_up(
        HEADER_SLOT_SIZE + command_length + HEADER_SLOT_SIZE,
        PAGE_SIZE,
    )
}

/// An entry read back from the log: its header and its bytes as on disk.
#[derive(Debug, Clone)]
pub struct Entry {
    pub header: EntryHeader,
    /// Byte offset of the entry in the log file.
    pub offset: u64,
    bytes: Arc<AlignedBuf>,
}

impl Entry {
    /// The commands region.
    pub fn commands(&self) -> &[u8] {
        &self.bytes[HEADER_SLOT_SIZE..HEADER_SLOT_SIZE + self.header.command_length as usize]
    }

    /// Iterates over the entry's commands.
    pub fn iter(&self) -> command::Commands<'_> {
        command::Commands::new(self.commands())
    }

    /// The log-file byte offset of the command at `offset_in_commands`.
    pub fn command_file_offset(&self, offset_in_commands: usize) -> u64 {
        self.offset + (HEADER_SLOT_SIZE + offset_in_commands) as u64
    }

    /// Decodes the command that starts at log-file byte offset `file_offset`.
    pub fn command_at(&self, file_offset: u64) -> Result<CommandRef<'_>, DecodeError> {
        let relative = file_offset
            .checked_sub(self.offset + HEADER_SLOT_SIZE as u64)
            .unwrap_or(u64::MAX) as usize;
        command::decode_at(self.commands(), relative)
    }
}

/// An entry to append: the caller's commands region, already encoded.
#[derive(Debug, Clone, Copy)]
pub struct NewEntry<'a> {
    pub term: Term,
    pub log_index: LogIndex,
    pub num_commands: u64,
    pub commands: &'a [u8],
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
        self.entries.len() as LogIndex
    }

    /// Term of the last entry (0 when empty).
    pub fn last_term(&self) -> Term {
        self.entries.last().map_or(0, |e| e.term)
    }

    /// Term of entry `index`, if present (index 0 has term 0).
    pub fn term(&self, index: LogIndex) -> Option<Term> {
        if index == 0 {
            return Some(0);
        }
        self.meta(index).map(|m| m.term)
    }

    /// Byte offset where the next entry goes.
    pub fn end_offset(&self) -> u64 {
        self.end_offset
    }

    fn meta(&self, index: LogIndex) -> Option<&EntryMeta> {
        index
            .checked_sub(1)
            .and_then(|i| self.entries.get(i as usize))
    }

    fn recover(&mut self) -> Result<RecoveryReport, LogError> {
        let file_len = self.file.len()?;
        let mut offset = 0u64;
        let mut page = AlignedBuf::new(PAGE_SIZE);
        let mut torn_at = None;
        while offset < file_len {
            let n = self.file.read_at(&mut page, offset)?;
            if n < PAGE_SIZE {
                torn_at = Some(offset);
                break;
            }
            // A zeroed first page is where the prepared space past the last entry begins,
            // or a damaged entry: the search for a later write below tells which.
            let zero_page = page.iter().all(|&b| b == 0);
            let verdict = if zero_page {
                Err("zeroed page where an entry should start".to_string())
            } else {
                self.verify_entry_at(offset, &page, file_len)?
            };
            match verdict {
                Ok(entry) => {
                    self.entries.push(EntryMeta {
                        offset,
                        term: entry.header.term,
                        command_length: entry.header.command_length,
                    });
                    offset += entry.header.entry_size() as u64;
                    self.cache.lock().unwrap().insert(entry.offset, entry.bytes);
                }
                Err(reason) => {
                    let damaged_index = self.last_index() + 1;
                    let from = offset + PAGE_SIZE as u64;
                    if let Some(later) = self.find_later_write(from, file_len, damaged_index)? {
                        return Err(LogError::Corrupt {
                            offset,
                            reason: format!(
                                "{reason}; the entry at offset {later} was written after this \
                                 one, so this is not a torn tail"
                            ),
                        });
                    }
                    if zero_page {
                        // The normal end of the log: prepared zeros, nothing written after.
                        break;
                    }
                    torn_at = Some(offset);
                    break;
                }
            }
        }
        self.end_offset = offset;
        if torn_at.is_some() || offset < file_len {
            // Everything past the last entry must read as zeros: cut it off durably.
            self.file.set_len(offset)?;
            self.file.sync()?;
        }
        self.prepared_offset = offset;
        Ok(RecoveryReport {
            entries: self.entries.len() as u64,
            torn_tail_at: torn_at,
        })
    }

    /// Reads and verifies the entry whose first page is `first_page`. The outer result is
    /// IO; the inner one says why the bytes are not a valid next entry.
    fn verify_entry_at(
        &mut self,
        offset: u64,
        first_page: &[u8],
        file_len: u64,
    ) -> Result<Result<Entry, String>, LogError> {
        let Some(header) = EntryHeader::decode(first_page) else {
            return Ok(Err("header magic or hash mismatch".into()));
        };
        let expected = self.last_index() + 1;
        if header.log_index != expected {
            return Ok(Err(format!(
                "entry has index {} where {expected} was expected",
                header.log_index
            )));
        }
        if header.term < self.last_term() {
            return Ok(Err(format!("term {} goes backwards", header.term)));
        }
        let size = header.entry_size();
        if offset + size as u64 > file_len {
            return Ok(Err("entry extends past the end of the file".into()));
        }
        let mut bytes = AlignedBuf::new(size);
        read_exact_at(self.file.as_mut(), &mut bytes, offset)?;
        if let Err(reason) = verify_body(&header, &bytes) {
            return Ok(Err(reason.into()));
        }
        Ok(Ok(Entry {
            header,
            offset,
            bytes: Arc::new(bytes),
        }))
    }

    /// Searches page starts from `from` to the end of the file for a fully valid entry
    /// that a write after the one holding entry `damaged_index` produced.
    fn find_later_write(
        &mut self,
        from: u64,
        file_len: u64,
        damaged_index: LogIndex,
    ) -> Result<Option<u64>, LogError> {
        const CHUNK: usize = 1 << 20;
        let mut chunk = AlignedBuf::new(CHUNK);
        let mut base = from;
        while base < file_len {
            let n = self.file.read_at(&mut chunk, base)?;
            if n == 0 {
                break;
            }
            for page_start in (0..n).step_by(PAGE_SIZE) {
                let Some(header) = EntryHeader::decode(&chunk[page_start..]) else {
                    continue;
                };
                let at = base + page_start as u64;
                if header.log_index <= damaged_index
                    || header.batch_first_index <= damaged_index
                    || at + header.entry_size() as u64 > file_len
                {
                    continue;
                }
                let mut bytes = AlignedBuf::new(header.entry_size());
                read_exact_at(self.file.as_mut(), &mut bytes, at)?;
                if verify_body(&header, &bytes).is_ok() {
                    return Ok(Some(at));
                }
            }
            base += n as u64;
        }
        Ok(None)
    }

    /// Appends entries and makes them durable before returning. On error nothing is
    /// appended in memory; a full disk (`is_no_space`) leaves the log usable.
    pub fn append(&mut self, new_entries: &[NewEntry<'_>]) -> Result<LogIndex, LogError> {
        if self.failed {
            return Err(LogError::Failed);
        }
        let mut total = 0usize;
        let mut expected = self.last_index() + 1;
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
            expected += 1;
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
        (i > 0).then_some(i as LogIndex)
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
        assert!(index >= 1);
        let Some(meta) = self.meta(index).copied() else {
            return Ok(());
        };
        self.file.set_len(meta.offset)?;
        if let Err(e) = self.file.sync() {
            self.failed = true;
            return Err(e.into());
        }
        self.entries.truncate(index as usize - 1);
        self.end_offset = meta.offset;
        self.prepared_offset = meta.offset;
        self.cache.lock().unwrap().remove_from(meta.offset);
        Ok(())
    }
}

fn encode_entry(entry: &NewEntry<'_>, batch_first_index: LogIndex, out: &mut [u8]) {
    let header = EntryHeader {
        term: entry.term,
        log_index: entry.log_index,
        num_commands: entry.num_commands,
        command_length: entry.commands.len() as u64,
        batch_first_index,
        commands_hash: xxh3_128(entry.commands),
    };
    header.encode(&mut out[..HEADER_SIZE]);
    out[HEADER_SLOT_SIZE..HEADER_SLOT_SIZE + entry.commands.len()].copy_from_slice(entry.commands);
    let trailer = out.len() - HEADER_SLOT_SIZE;
    let (head, tail) = out.split_at_mut(trailer);
    tail[..HEADER_SIZE].copy_from_slice(&head[..HEADER_SIZE]);
}

fn verify_body(header: &EntryHeader, bytes: &[u8]) -> Result<(), &'static str> {
    let size = header.entry_size();
    let commands = &bytes[HEADER_SLOT_SIZE..HEADER_SLOT_SIZE + header.command_length as usize];
    if xxh3_128(commands) != header.commands_hash {
        return Err("commands hash mismatch (torn or corrupt body)");
    }
    if bytes[size - HEADER_SLOT_SIZE..size - HEADER_SLOT_SIZE + HEADER_SIZE] != bytes[..HEADER_SIZE]
    {
        return Err("trailer differs from header");
    }
    check_commands(commands, header.num_commands)
        .map_err(|_| "commands do not decode to the count the header claims")
}

/// Checks that `commands` decodes to exactly `num_commands` commands.
fn check_commands(commands: &[u8], num_commands: u64) -> Result<(), String> {
    match command::count(commands) {
        Ok(n) if n == num_commands => Ok(()),
        Ok(n) => Err(format!("it claims {num_commands} commands but holds {n}")),
        Err(e) => Err(format!("its commands do not decode: {e}")),
    }
}

/// Reads values out of the log from a thread other than the log's owner (a shard serving
/// GETs). Only offsets the map handed out after the entry was durable are ever read.
pub struct LogReader {
    file: Box<dyn BlockFile>,
    cache: Arc<Mutex<EntryCache>>,
}

impl LogReader {
    /// Reads the value for `key` of the SET command at log-file offset `file_offset` (see
    /// [`ValueRead`]).
    pub fn read_value_at(&mut self, file_offset: u64, key: &[u8]) -> Result<ValueRead, LogError> {
        read_value(self.file.as_mut(), &self.cache, file_offset, key)
    }

    /// Reads the values of the SET commands at several (offset, key) pairs, in order:
    /// cached ones from memory, the rest with one batch of O_DIRECT reads submitted
    /// together.
    pub fn read_values_at(&mut self, reads: &[(u64, &[u8])]) -> Vec<Result<ValueRead, LogError>> {
        let mut results: Vec<Option<Result<ValueRead, LogError>>> = Vec::with_capacity(reads.len());
        {
            let cache = self.cache.lock().unwrap();
            for &(offset, key) in reads {
                results.push(
                    cache
                        .value_at(offset, key)
                        .map(|r| r.map_err(|e| corrupt_at(offset, e))),
                );
            }
        }
        let misses: Vec<usize> = (0..reads.len()).filter(|&i| results[i].is_none()).collect();
        if !misses.is_empty() {
            // Two pages hold any command that starts in the first one and is shorter than a
            // page (every command a client can send); longer ones are read one by one.
            let mut buffers: Vec<(u64, AlignedBuf)> = misses
                .iter()
                .map(|&i| {
                    (
                        reads[i].0 / PAGE_SIZE as u64 * PAGE_SIZE as u64,
                        AlignedBuf::new(2 * PAGE_SIZE),
                    )
                })
                .collect();
            let outcomes = self.file.read_batch(&mut buffers);
            for ((&i, (page_start, buf)), outcome) in misses.iter().zip(&buffers).zip(outcomes) {
                let (offset, key) = reads[i];
                let within = (offset - page_start) as usize;
                results[i] = Some(match outcome {
                    Err(e) => Err(LogError::Io(e)),
                    Ok(n) => match command::decode_at(&buf[..n], within) {
                        Ok(cmd) => value_for_key(&cmd, key).map_err(|e| corrupt_at(offset, e)),
                        Err(_) => read_value(self.file.as_mut(), &self.cache, offset, key),
                    },
                });
            }
        }
        results
            .into_iter()
            .map(|r| r.expect("every offset resolved"))
            .collect()
    }
}

fn corrupt_at(offset: u64, e: DecodeError) -> LogError {
    LogError::Corrupt {
        offset,
        reason: e.to_string(),
    }
}

/// What the command at an offset the map handed out holds for the key looked up.
///
/// The map tells keys apart by their 128-bit hash alone, but the SET command it points at
/// carries the whole key: a read compares it, so a different key with the same hash is a
/// miss rather than that key's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueRead {
    /// The command is a SET of the key looked up: its value.
    Value(Vec<u8>),
    /// The command is a SET of another key with the same hash (a hash collision): the key
    /// looked up has no value.
    OtherKey,
}

/// The value `cmd` holds for `key`. The map points only at SET commands, so any other op
/// is corruption.
fn value_for_key(cmd: &CommandRef<'_>, key: &[u8]) -> Result<ValueRead, DecodeError> {
    if cmd.op != command::Op::Set {
        return Err(DecodeError {
            offset: cmd.offset,
            reason: "the map points at a command that is not a SET",
        });
    }
    Ok(if cmd.key == key {
        ValueRead::Value(cmd.value.to_vec())
    } else {
        ValueRead::OtherKey
    })
}

/// The value for `key` of the command at `file_offset`: from the cache, or read from the
/// file with O_DIRECT, one page first and then as many more as the command's lengths say
/// it spans.
fn read_value(
    file: &mut dyn BlockFile,
    cache: &Mutex<EntryCache>,
    file_offset: u64,
    key: &[u8],
) -> Result<ValueRead, LogError> {
    let corrupt = |e: DecodeError| LogError::Corrupt {
        offset: file_offset,
        reason: e.to_string(),
    };
    if let Some(found) = cache.lock().unwrap().value_at(file_offset, key) {
        return found.map_err(corrupt);
    }
    let page_start = file_offset / PAGE_SIZE as u64 * PAGE_SIZE as u64;
    let within = (file_offset - page_start) as usize;
    let mut len = align_up(within + command::encoded_size(0, 0), PAGE_SIZE);
    loop {
        let mut buf = AlignedBuf::new(len);
        read_exact_at(file, &mut buf, page_start)?;
        match command::decode_at(&buf, within) {
            Ok(cmd) => return value_for_key(&cmd, key).map_err(corrupt),
            Err(e) => {
                // A truncation error means the command continues past what was read:
                // read again with the size its lengths give (at most twice: once for a
                // long key, once for the value).
                let needed = peek_command_size(&buf, within).ok_or_else(|| corrupt(e.clone()))?;
                let want = align_up(within + needed, PAGE_SIZE);
                if want <= len {
                    return Err(corrupt(e));
                }
                len = want;
            }
        }
    }
}

/// The size of the command at `at`, from its key and value lengths, if enough is present
/// to tell.
fn peek_command_size(buf: &[u8], at: usize) -> Option<usize> {
    let rest = buf.get(at..)?;
    let key_len = u16::from_le_bytes([*rest.get(2)?, *rest.get(3)?]) as usize;
    if key_len > command::KEY_SIZE_MAX {
        return None;
    }
    let value_len_at = command::COMMAND_HEADER_SIZE + align_up(key_len + 1, 8);
    match rest.get(value_len_at..value_len_at + 8) {
        Some(b) => {
            let value_len = u64::from_le_bytes(b.try_into().unwrap());
            (value_len <= command::VALUE_SIZE_MAX as u64)
                .then(|| command::encoded_size(key_len, value_len as usize))
        }
        // The key runs past what was read: read enough for the longest key first.
        None => Some(value_len_at + 8),
    }
}
