//! The append-only log: one entry per replication window, each entry a batch of commands,
//! kept in a sequence of segment files.
//!
//! Owned by the replication core. All IO goes through [`crate::storage::io::BlockFile`] with
//! page-aligned buffers, so the real backend runs it with `O_DIRECT`.
//!
//! Files: `entry.rs` (the entry format and its checks), `segment.rs` (one segment file:
//! the scan on open, writes at its end), `segments.rs` (the shared table of segments,
//! addresses and live accounting), `reader.rs` (values by address, from other threads),
//! `cache.rs` and `value_cache.rs` (entries and values in memory); this file holds the log
//! itself (append, roll over to a new segment, prepare, read, truncate, compact).
//!
//! # Segments
//!
//! Raft entries go into `segments/NNNNNNNN.log` (hex), one file after another: when the next
//! write would take the current segment past `segment_bytes`, a new segment starts (a
//! write never spans two files, so one entry larger than a segment gets one to itself).
//! Indexes run on from file to file. Every command is named by its *log address* (segment
//! number and offset, see [`segments`]), which the map stores; a value the cleaner moves
//! out of an old segment gets an address in a values segment. The oldest Raft segments
//! are released once the map no longer points into them and a durable checkpoint covers
//! their entries ([`Log::release_first_segment`]); the log then starts at a later index.
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
//! Only the newest segment that holds entries may have a torn tail: damage in an older
//! one, a gap in the indexes between two files, or entries after a damaged file are
//! corruption.
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
mod segment;
pub mod segments;
mod value_cache;
mod values;

pub use cache::EntryCache;
pub use entry::{
    COMMAND_LENGTH_MAX, ENTRY_MAGIC, Entry, EntryHeader, HEADER_SIZE, HEADER_SLOT_SIZE, NewEntry,
    encode_entry, entry_size,
};
pub use reader::{LogReader, ValueRead};
use segment::SegmentFile;
pub use segments::{SegmentInfo, SegmentKind, Segments, SpaceReport};
pub use value_cache::ValueCache;
pub use values::{EntryScanner, ValuesWriter};

use crate::storage::io::{
    AlignedBuf, Backend, PAGE_SIZE, create_dir_durable, open_durable, read_exact_at, remove_durable,
};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub use crate::ids::{LogIndex, Term};

/// Errors of the log.
#[derive(Debug)]
pub enum LogError {
    /// The underlying file failed.
    Io(io::Error),
    /// An entry in the middle of the log failed verification (`offset` is its log
    /// address; for the first segment, the file offset).
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
    /// A segment file is closed and a new one started once it holds this many bytes.
    pub segment_bytes: u64,
}

/// The default size of one segment file.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 << 20;
/// The smallest segment size accepted.
pub const SEGMENT_BYTES_MIN: u64 = 1 << 20;
const _: () = assert!(SEGMENT_BYTES_DEFAULT <= segments::SEGMENT_SPACE_BYTES / 2);

impl Default for LogOptions {
    fn default() -> LogOptions {
        LogOptions {
            prepare_chunk_bytes: 16 << 20,
            cache_bytes: 256 << 20,
            segment_bytes: SEGMENT_BYTES_DEFAULT,
        }
    }
}

/// What recovery found when the log was opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub entries: u64,
    /// Log address where a torn tail was cut, if one was.
    pub torn_tail_at: Option<u64>,
    /// The first index the log holds (1 unless older segments were deleted).
    pub first_index: LogIndex,
    /// Segment files found (Raft and values).
    pub segment_count: u64,
}

/// The name of the directory holding the segments, inside the data directory.
pub const SEGMENTS_DIR: &str = "segments";

/// The append-only log, in segment files.
pub struct Log {
    backend: Arc<dyn Backend>,
    options: LogOptions,
    /// The Raft segments, oldest first; the last one is where entries are appended.
    segs: Vec<SegmentFile>,
    table: Arc<Segments>,
    cache: Arc<Mutex<EntryCache>>,
    /// Term of the entry before the first one, when known (it was deleted).
    compacted_term: Option<Term>,
    /// The index the first entry has if the log was empty before it (see
    /// [`Log::open_after`]).
    first_index_hint: Option<LogIndex>,
    failed: bool,
}

impl Log {
    /// Opens (or creates) the log in directory `dir`, verifies every segment, cuts a torn
    /// tail, and registers every segment (values ones too) in a new shared table.
    pub fn open(
        backend: Arc<dyn Backend>,
        dir: &Path,
        options: LogOptions,
    ) -> Result<(Log, RecoveryReport), LogError> {
        Log::open_after(backend, dir, options, None)
    }

    /// [`Log::open`] for a log whose state before `first_index_hint` is in a checkpoint:
    /// if its first segment's first entry is damaged, that is the index it should have,
    /// which tells a torn first write from damage (see the segment scan).
    pub fn open_after(
        backend: Arc<dyn Backend>,
        dir: &Path,
        options: LogOptions,
        first_index_hint: Option<LogIndex>,
    ) -> Result<(Log, RecoveryReport), LogError> {
        create_dir_durable(backend.as_ref(), dir)?;
        let mut names: Vec<(u64, SegmentKind)> = backend
            .list_dir(dir)?
            .iter()
            .filter_map(|n| segments::parse_file_name(n))
            .collect();
        names.sort_unstable();
        let next_no = names.last().map_or(0, |(no, _)| no + 1);
        let table = Arc::new(Segments::new(dir, next_no));
        let cache = Arc::new(Mutex::new(EntryCache::new(options.cache_bytes)));
        let mut log = Log {
            backend,
            options,
            segs: Vec::new(),
            table,
            cache,
            compacted_term: None,
            first_index_hint,
            failed: false,
        };
        let mut report = RecoveryReport {
            segment_count: names.len() as u64,
            ..RecoveryReport::default()
        };
        let raft: Vec<u64> = names
            .iter()
            .filter(|(_, k)| *k == SegmentKind::Raft)
            .map(|(no, _)| *no)
            .collect();
        for (i, &no) in raft.iter().enumerate() {
            let newest = i + 1 == raft.len();
            if let Some(torn) = log.open_raft_segment(no, newest)? {
                report.torn_tail_at = Some(torn);
            }
        }
        log.drop_empty_segments()?;
        for &(no, kind) in &names {
            if kind == SegmentKind::Values {
                log.open_values_segment(no)?;
            }
        }
        if log.segs.is_empty() {
            let first = log.start_segment(LogIndex(1))?;
            log.segs.push(first);
        }
        report.entries = log.entry_count();
        report.first_index = log.first_index();
        Ok((log, report))
    }

    /// Scans Raft segment `no`, checks that it continues the ones before, and adds it.
    /// Returns where a torn tail was cut.
    fn open_raft_segment(&mut self, no: u64, newest: bool) -> Result<Option<u64>, LogError> {
        let path = self.table.path(no, SegmentKind::Raft);
        let file = self.backend.open(&path, false)?;
        let previous = self.segs.last();
        let expected = previous.map(|p| p.last_index().next());
        let min_term = previous
            .and_then(|p| p.metas.last())
            .map_or(Term::ZERO, |m| m.term);
        let mut seg = SegmentFile::new(no, SegmentKind::Raft, path, file, LogIndex(1));
        let cache = self.cache.clone();
        let hint = expected.or(self.first_index_hint);
        let scan = seg.scan(None, hint, min_term, newest, |entry| {
            cache
                .lock()
                .unwrap()
                .insert(entry.offset, entry.bytes.clone())
        })?;
        if seg.is_empty() {
            seg.first_index = expected.unwrap_or(LogIndex(1));
        }
        if let Some(prev) = self.segs.last()
            && !seg.is_empty()
        {
            // A later segment holds entries: the one before must have ended cleanly, hold
            // entries, and be continued without a gap.
            let problem = if let Some(reason) = &prev.torn_reason {
                Some((
                    prev.address(prev.end),
                    format!("{}: {reason}", prev.path.display()),
                ))
            } else if Some(seg.first_index) != expected {
                Some((
                    seg.address(0),
                    format!(
                        "{} starts at index {} where {} was expected",
                        seg.path.display(),
                        seg.first_index,
                        prev.last_index().next()
                    ),
                ))
            } else {
                None
            };
            if let Some((offset, what)) = problem {
                return Err(LogError::Corrupt {
                    offset,
                    reason: format!("{what}, and a later segment holds entries"),
                });
            }
        }
        let torn = scan.torn_at.map(|at| seg.address(at));
        if !newest {
            seg.torn_reason = scan.torn_reason;
        }
        self.register(&seg, !newest);
        self.segs.push(seg);
        Ok(if newest { torn } else { None })
    }

    /// Deletes every empty Raft segment but the newest. A crash can leave one behind: a
    /// snapshot install creates the new head before its commit point, and an install cut
    /// short leaves that head, empty, after the old log. An empty segment takes the index
    /// the one before it ends at, and the scan checked that the next one starts there, so
    /// no entry is missing where it was; but appends go to the newest segment, and an
    /// empty one left in between would hold the log's front in place for good (only the
    /// oldest segment is ever released).
    fn drop_empty_segments(&mut self) -> Result<(), LogError> {
        let mut at = 0;
        while at + 1 < self.segs.len() {
            if self.segs[at].is_empty() {
                let seg = self.segs.remove(at);
                self.table.remove(seg.no);
                remove_durable(self.backend.as_ref(), &seg.path)?;
            } else {
                at += 1;
            }
        }
        Ok(())
    }

    /// Scans values segment `no` (cutting a torn tail: a relocation that never finished)
    /// and registers it; the cleaner reads it through handles of its own.
    fn open_values_segment(&mut self, no: u64) -> Result<(), LogError> {
        let path = self.table.path(no, SegmentKind::Values);
        let file = self.backend.open(&path, false)?;
        let mut seg = SegmentFile::new(no, SegmentKind::Values, path, file, LogIndex(1));
        seg.scan(Some(LogIndex(1)), None, Term::ZERO, true, |_| {})?;
        self.register(&seg, true);
        Ok(())
    }

    /// Adds (or refreshes) a segment's row in the shared table.
    fn register(&self, seg: &SegmentFile, sealed: bool) {
        let row = segments::SegmentInfo {
            kind: seg.kind,
            path: seg.path.clone(),
            valid_bytes: seg.end,
            file_bytes: seg.prepared,
            set_count: seg.set_count,
            set_bytes: seg.set_bytes,
            live_count: self.table.get(seg.no).map_or(0, |r| r.live_count),
            last_index: (!seg.is_empty()).then(|| seg.last_index()),
            sealed,
        };
        self.table.insert(seg.no, row);
    }

    /// Creates an empty Raft segment whose first entry will be `first_index`.
    fn start_segment(&mut self, first_index: LogIndex) -> Result<SegmentFile, LogError> {
        let no = self.table.allocate_no().ok_or_else(|| {
            LogError::Io(io::Error::other(
                "segment numbers are used up: this data directory has written 2^26 segments",
            ))
        })?;
        let path = self.table.path(no, SegmentKind::Raft);
        let file = open_durable(self.backend.as_ref(), &path)?;
        let seg = SegmentFile::new(no, SegmentKind::Raft, path, file, first_index);
        self.register(&seg, false);
        Ok(seg)
    }

    /// The shared table of segments.
    pub fn segments(&self) -> &Arc<Segments> {
        &self.table
    }

    /// The directory holding the segment files.
    pub fn dir(&self) -> &Path {
        self.table.dir()
    }

    /// The path of each Raft segment file, oldest first.
    pub fn segment_paths(&self) -> Vec<PathBuf> {
        self.segs.iter().map(|s| s.path.clone()).collect()
    }

    fn head(&self) -> &SegmentFile {
        self.segs.last().expect("the log always has a segment")
    }

    fn head_mut(&mut self) -> &mut SegmentFile {
        self.segs.last_mut().expect("the log always has a segment")
    }

    fn entry_count(&self) -> u64 {
        self.segs.iter().map(|s| s.metas.len() as u64).sum()
    }

    /// Index of the first entry the log holds (the next one's while empty).
    pub fn first_index(&self) -> LogIndex {
        self.segs
            .iter()
            .find(|s| !s.is_empty())
            .map_or(self.head().first_index, |s| s.first_index)
    }

    /// Index of the last entry (0 when empty).
    pub fn last_index(&self) -> LogIndex {
        self.head().last_index()
    }

    /// Term of the last entry (0 when empty).
    pub fn last_term(&self) -> Term {
        self.segs
            .iter()
            .rev()
            .find_map(|s| s.metas.last())
            .map_or(self.compacted_term.unwrap_or(Term::ZERO), |m| m.term)
    }

    /// Term of entry `index`, if present (index 0 has term 0, and the entry just before
    /// the first has the term it had when it was deleted in this process).
    pub fn term(&self, index: LogIndex) -> Option<Term> {
        if index == LogIndex::ZERO {
            return Some(Term::ZERO);
        }
        if index.next() == self.first_index() && self.compacted_term.is_some() {
            return self.compacted_term;
        }
        self.locate(index).map(|(_, m)| m.term)
    }

    /// The segment (position in `segs`) and entry of `index`.
    fn locate(&self, index: LogIndex) -> Option<(usize, segment::EntryMeta)> {
        let pos = self
            .segs
            .partition_point(|s| s.first_index <= index)
            .checked_sub(1)?;
        self.segs[pos].meta(index).map(|m| (pos, *m))
    }

    /// Log address where the next entry goes.
    pub fn end_offset(&self) -> u64 {
        self.head().address(self.head().end)
    }

    /// Appends entries and makes them durable before returning. On error nothing is
    /// appended in memory; a full disk (`is_no_space`) leaves the log usable.
    pub fn append(&mut self, new_entries: &[NewEntry<'_>]) -> Result<LogIndex, LogError> {
        if self.failed {
            return Err(LogError::Failed);
        }
        SegmentFile::check(new_entries)?;
        let mut expected = self.last_index().next();
        let mut last_term = self.last_term();
        for entry in new_entries {
            assert_eq!(entry.log_index, expected, "log indexes are consecutive");
            assert!(entry.term >= last_term, "terms never go backwards in a log");
            assert!(entry.commands.len() <= COMMAND_LENGTH_MAX);
            expected = expected.next();
            last_term = entry.term;
        }
        let first_new = self.last_index().next();
        if let Err(e) = self.append_runs(new_entries) {
            // All or nothing: entries of earlier runs already written are cut again, so a
            // caller that sees the error (a full disk, say) may retry the same entries.
            if self.last_index() >= first_new
                && !self.failed
                && self.truncate_from(first_new).is_err()
            {
                self.failed = true;
            }
            return Err(e);
        }
        Ok(self.last_index())
    }

    /// Writes `new_entries` in runs that each fit the head segment, rolling over between.
    fn append_runs(&mut self, new_entries: &[NewEntry<'_>]) -> Result<(), LogError> {
        let mut rest = new_entries;
        while !rest.is_empty() {
            // The longest run that fits in the head segment (at least one entry in an
            // empty segment): one durable write each.
            let room = self.options.segment_bytes.saturating_sub(self.head().end);
            let mut run = 0;
            let mut run_bytes = 0u64;
            for entry in rest {
                let size = entry_size(entry.commands.len()) as u64;
                if run_bytes + size > room && !(run == 0 && self.head().is_empty()) {
                    break;
                }
                run += 1;
                run_bytes += size;
            }
            if run == 0 {
                self.roll()?;
                continue;
            }
            self.write_run(&rest[..run], run_bytes)?;
            rest = &rest[run..];
        }
        Ok(())
    }

    /// Writes `run` at the end of the head segment, durably, and caches it.
    fn write_run(&mut self, run: &[NewEntry<'_>], run_bytes: u64) -> Result<(), LogError> {
        self.prepare(run_bytes)?;
        let head = self.head_mut();
        let start = head.end;
        let first_meta = head.metas.len();
        let buf = match head.write(run) {
            Ok(buf) => buf,
            Err(e) => {
                if !e.is_no_space() {
                    self.failed = true;
                }
                return Err(e);
            }
        };
        let head = self.head();
        let mut cache = self.cache.lock().unwrap();
        for meta in &head.metas[first_meta..] {
            cache.insert_slice(
                head.address(meta.offset),
                &buf,
                (meta.offset - start) as usize,
                entry_size(meta.command_length as usize),
            );
        }
        drop(cache);
        let (no, end, prepared, last) = (head.no, head.end, head.prepared, head.last_index());
        let (count, bytes) = (head.set_count, head.set_bytes);
        self.table.update(no, |row| {
            row.valid_bytes = end;
            row.file_bytes = prepared;
            row.last_index = Some(last);
            row.set_count = count;
            row.set_bytes = bytes;
        });
        Ok(())
    }

    /// Seals the head segment (dropping the zeros prepared past its end) and starts a new
    /// one.
    fn roll(&mut self) -> Result<(), LogError> {
        let next = self.last_index().next();
        let fresh = self.start_segment(next)?;
        let head = self.head_mut();
        if head.prepared > head.end {
            head.file.set_len(head.end)?;
            head.file.sync()?;
            head.prepared = head.end;
        }
        let (no, end) = (head.no, head.end);
        self.table.update(no, |row| {
            row.sealed = true;
            row.file_bytes = end;
        });
        self.segs.push(fresh);
        Ok(())
    }

    /// Bytes already written with zeros past the last entry.
    pub fn prepared_bytes_ahead(&self) -> u64 {
        self.head().prepared - self.head().end
    }

    /// Keeps space prepared ahead of the next append: half a preparation chunk (or half a
    /// segment, if smaller) at least. A head segment with less room than that left is
    /// closed now and the next one started, so that neither the roll-over nor the
    /// preparation happens inside an append.
    pub fn prepare_ahead(&mut self) -> Result<(), LogError> {
        let want = self
            .options
            .prepare_chunk_bytes
            .min(self.options.segment_bytes);
        let room = self.options.segment_bytes.saturating_sub(self.head().end);
        if !self.head().is_empty() && room < want / 2 {
            self.roll()?;
        }
        if self.prepared_bytes_ahead() < want / 2 {
            let room = self.options.segment_bytes.saturating_sub(self.head().end);
            self.prepare(want.min(room))?;
        }
        Ok(())
    }

    /// Ensures `bytes` past the end are already written (zeros), extending by whole chunks
    /// (within the segment size, unless one write needs more).
    pub fn prepare(&mut self, bytes: u64) -> Result<(), LogError> {
        let chunk = self.options.prepare_chunk_bytes;
        let limit = self.options.segment_bytes;
        self.head_mut().prepare(bytes, chunk, limit)?;
        let (no, prepared) = (self.head().no, self.head().prepared);
        self.table.update(no, |row| row.file_bytes = prepared);
        Ok(())
    }

    /// Reads entry `index` (from the cache, or the disk).
    pub fn read(&mut self, index: LogIndex) -> Result<Entry, LogError> {
        let (pos, meta) = self
            .locate(index)
            .ok_or_else(|| LogError::Io(io::Error::other(format!("no log entry {index}"))))?;
        let address = self.segs[pos].address(meta.offset);
        let cached = self.cache.lock().unwrap().get(address);
        if let Some(bytes) = cached {
            let header = EntryHeader::decode(&bytes).expect("cached entries are valid");
            return Ok(Entry {
                header,
                offset: address,
                bytes,
            });
        }
        let entry = self.segs[pos].read(index)?;
        self.cache
            .lock()
            .unwrap()
            .insert(address, entry.bytes.clone());
        Ok(entry)
    }

    /// Reads the value for `key` of the SET command at log address `address`, in a Raft
    /// segment or a values segment (see [`ValueRead`]).
    pub fn read_value_at(&mut self, address: u64, key: &[u8]) -> Result<ValueRead, LogError> {
        let mut reader = self.reader();
        reader.read_value_at(address, key)
    }

    /// The cache of recent entries, shared with the readers and the cleaner.
    pub fn entry_cache(&self) -> &Arc<Mutex<EntryCache>> {
        &self.cache
    }

    /// A handle that reads values from this log on another thread, sharing its cache.
    pub fn reader(&self) -> LogReader {
        LogReader::new(self.backend.clone(), self.table.clone(), self.cache.clone())
    }

    /// Walks the log backwards from its end using the trailers, verifying each entry, and
    /// returns the headers newest first. Recovery walks forwards; this is the reverse path
    /// (and a cross-check of the trailers).
    pub fn walk_backward(&mut self) -> Result<Vec<EntryHeader>, LogError> {
        let mut headers = Vec::new();
        let mut page = AlignedBuf::new(PAGE_SIZE);
        for pos in (0..self.segs.len()).rev() {
            let mut end = self.segs[pos].end;
            while end > 0 {
                let seg = &mut self.segs[pos];
                read_exact_at(seg.file.as_mut(), &mut page, end - PAGE_SIZE as u64)?;
                let trailer_at = PAGE_SIZE - HEADER_SLOT_SIZE;
                let header =
                    EntryHeader::decode(&page[trailer_at..]).ok_or_else(|| LogError::Corrupt {
                        offset: seg.address(end - HEADER_SLOT_SIZE as u64),
                        reason: "trailer failed verification".into(),
                    })?;
                let start = end - header.entry_size() as u64;
                let start_address = seg.address(start);
                let entry = self.read(header.log_index)?;
                if entry.offset != start_address || entry.header != header {
                    return Err(LogError::Corrupt {
                        offset: start_address,
                        reason: "trailer does not match its header".into(),
                    });
                }
                headers.push(header);
                end = start;
            }
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
        let Some((pos, meta)) = self.locate(index) else {
            return Ok(());
        };
        let cut_at = self.segs[pos].address(meta.offset);
        let result = self.truncate_segments(pos, index);
        if result.is_err() {
            self.failed = true;
        }
        self.cache.lock().unwrap().remove_from(cut_at);
        result
    }

    fn truncate_segments(&mut self, pos: usize, index: LogIndex) -> Result<(), LogError> {
        // Newest first, each removal durable before the next, so a crash leaves a log
        // whose segments still run on without a gap.
        while self.segs.len() > pos + 1 {
            let seg = self.segs.pop().expect("more than pos + 1");
            self.table.remove(seg.no);
            remove_durable(self.backend.as_ref(), &seg.path)?;
        }
        let head = self.head_mut();
        head.truncate_from(index)?;
        let (no, end) = (head.no, head.end);
        let last = (!head.is_empty()).then(|| head.last_index());
        self.table.update(no, |row| {
            row.valid_bytes = end;
            row.file_bytes = end;
            row.last_index = last;
            row.sealed = false;
        });
        Ok(())
    }

    /// Makes an empty log continue after `index` (of `term`): the state up to there came
    /// from a checkpoint whose entries are gone (an installed snapshot).
    pub fn start_after(&mut self, index: LogIndex, term: Term) {
        assert!(
            self.segs.iter().all(|s| s.is_empty()),
            "only an empty log is moved"
        );
        for seg in &mut self.segs {
            seg.first_index = index.next();
        }
        self.compacted_term = Some(term);
    }

    /// Notes the term of the entry before the first, when a checkpoint says it.
    pub fn note_compacted_term(&mut self, index: LogIndex, term: Term) {
        if index.next() == self.first_index() && index > LogIndex::ZERO {
            self.compacted_term = Some(term);
        }
    }

    /// Replaces every Raft segment with one new, empty one whose first entry will be the
    /// one after `index` (of `term`); returns the rows of the segments taken out (their
    /// files are still there: the caller removes them once the new state is durable).
    pub fn reset_after(
        &mut self,
        index: LogIndex,
        term: Term,
    ) -> Result<Vec<segments::SegmentInfo>, LogError> {
        let head = self.start_segment(index.next())?;
        let old = std::mem::replace(&mut self.segs, vec![head]);
        self.compacted_term = Some(term);
        Ok(old
            .into_iter()
            .filter_map(|seg| self.table.remove(seg.no))
            .collect())
    }

    /// The number of the segment entries are appended to.
    pub fn head_no(&self) -> u64 {
        self.head().no
    }

    /// The oldest Raft segment's number and last index, if it may be removed: it is not
    /// the head, and a later segment holds entries (so the log's first index stays
    /// written down in a file).
    pub fn first_segment(&self) -> Option<(u64, LogIndex)> {
        let later_entries = self.segs.iter().skip(1).any(|s| !s.is_empty());
        (later_entries && !self.segs[0].is_empty())
            .then(|| (self.segs[0].no, self.segs[0].last_index()))
    }

    /// Takes the oldest Raft segment out of the log and the segment table; the log then
    /// starts at the index after its last. Returns its row, whose file the caller removes
    /// (until then a reopen finds it again, and it still runs on into the next segment).
    /// The caller has made sure nothing needs its entries (a durable checkpoint covers
    /// them, and no peer will ask for them) and the map points at none of its values.
    /// Never the head.
    pub fn release_first_segment(&mut self) -> Option<segments::SegmentInfo> {
        assert!(self.segs.len() > 1, "the head segment is never removed");
        let seg = self.segs.remove(0);
        if let Some(m) = seg.metas.last() {
            self.compacted_term = Some(m.term);
        }
        self.table.remove(seg.no)
    }

    /// Deletes the oldest Raft segment, its file too, durably.
    pub fn remove_first_segment(&mut self) -> Result<(), LogError> {
        if let Some(row) = self.release_first_segment() {
            remove_durable(self.backend.as_ref(), &row.path)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::command::{self, CommandOp};
    use crate::storage::io::fault::{Fault, FaultBackend};

    fn commands(n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0..n {
            let key = format!("k{i}");
            command::encode(&mut out, CommandOp::Set, 0, 0, key.as_bytes(), &[7; 300]);
        }
        out
    }

    /// An append that spans two segments is two writes; a full disk at any of its IO
    /// points leaves none of its entries behind, so the same entries can be appended
    /// again once there is room.
    #[test]
    fn an_append_across_segments_is_all_or_nothing() {
        let cmds = commands(40);
        let batch: Vec<NewEntry<'_>> = (2..=4)
            .map(|i| NewEntry {
                term: Term(1),
                log_index: LogIndex(i),
                num_commands: 40,
                commands: &cmds,
            })
            .collect();
        let options = LogOptions {
            prepare_chunk_bytes: 4096,
            cache_bytes: 1 << 20,
            segment_bytes: 32 << 10,
        };
        let mut failures = 0;
        for offset in 0..12 {
            let disk = FaultBackend::new();
            let (mut log, _) =
                Log::open(Arc::new(disk.clone()), Path::new("/l"), options.clone()).unwrap();
            log.append(&[NewEntry {
                log_index: LogIndex(1),
                ..batch[0]
            }])
            .unwrap();
            disk.arm(disk.io_points() + offset, Fault::Fail(libc::ENOSPC));
            if let Err(e) = log.append(&batch) {
                assert!(e.is_no_space(), "{e}");
                failures += 1;
                assert_eq!(
                    log.last_index(),
                    LogIndex(1),
                    "offset {offset}: nothing kept"
                );
                log.append(&batch).unwrap();
            }
            assert_eq!(log.last_index(), LogIndex(4));
            assert!(log.segment_paths().len() >= 2, "the batch spans segments");
            for i in 1..=4 {
                assert_eq!(log.read(LogIndex(i)).unwrap().commands(), &cmds[..]);
            }
        }
        assert!(failures > 3, "the fault hit the append {failures} times");
    }

    /// An install cut short by a crash leaves its new, empty head segment after the old
    /// log (and after the old log's own empty head): reopened, the log appends to the
    /// newest segment, and reopens again with every entry, the empty ones deleted.
    #[test]
    fn empty_segments_left_by_an_interrupted_install_are_dropped() {
        let disk = FaultBackend::new();
        let dir = Path::new("/l");
        let cmds = commands(2);
        let entry = |i: u64| NewEntry {
            term: Term(1),
            log_index: LogIndex(i),
            num_commands: 2,
            commands: &cmds,
        };
        let options = LogOptions::default();
        {
            let (mut log, _) = Log::open(Arc::new(disk.clone()), dir, options.clone()).unwrap();
            log.append(&[entry(1), entry(2)]).unwrap();
            log.roll().unwrap();
            // What reset_after leaves when the install's checkpoint never became durable.
            let _ = log.start_segment(LogIndex(3)).unwrap();
        }
        for round in 0..2u64 {
            let (mut log, _) = Log::open(Arc::new(disk.clone()), dir, options.clone()).unwrap();
            assert_eq!(log.last_index(), LogIndex(2 + 2 * round));
            assert_eq!(
                log.segment_paths().len(),
                2,
                "round {round}: the empty one is gone"
            );
            log.append(&[entry(3 + 2 * round), entry(4 + 2 * round)])
                .unwrap();
        }
        let (mut log, _) = Log::open(Arc::new(disk.clone()), dir, options).unwrap();
        assert_eq!(log.last_index(), LogIndex(6));
        for i in 1..=6 {
            assert_eq!(log.read(LogIndex(i)).unwrap().header.log_index, LogIndex(i));
        }
    }
}
