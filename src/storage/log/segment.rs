//! One segment file: a run of entries with consecutive indexes, written only at its end,
//! with zeroed space prepared ahead of the writer. The scan on open verifies every entry
//! and tells a torn tail (cut) from damage in the middle (refused, by offset); see the
//! parent module for the format and the rules.

use super::entry::{check_commands, encode_entry, verify_body};
use super::segments::{SegmentKind, address};
use super::{Entry, EntryHeader, LogError, LogIndex, NewEntry, Term, entry_size};
use crate::storage::command::{self, CommandOp};
use crate::storage::io::{AlignedBuf, BlockFile, PAGE_SIZE, align_up, read_exact_at};
use std::path::PathBuf;
use std::sync::Arc;

/// Where one entry is and what the log needs of it without reading it.
#[derive(Debug, Clone, Copy)]
pub(super) struct EntryMeta {
    /// Byte offset in the segment file.
    pub offset: u64,
    pub term: Term,
    pub command_length: u64,
}

/// What the scan of a segment found.
#[derive(Debug, Default)]
pub(super) struct ScanReport {
    /// Where a torn tail was cut (or, for a segment that is not the last one, the damage
    /// the caller must refuse).
    pub torn_at: Option<u64>,
    /// Why the entry at `torn_at` failed.
    pub torn_reason: Option<String>,
}

/// Log-backed SET commands in a commands region and their bytes (values that fit an
/// inline slot count too: whether the map keeps one inline is decided per page).
pub(super) fn set_usage(commands: &[u8]) -> (u64, u64) {
    let mut count = 0;
    let mut bytes = 0;
    for cmd in command::Commands::new(commands).flatten() {
        if cmd.op == CommandOp::Set {
            count += 1;
            bytes += command::encoded_size(cmd.key.len(), cmd.value.len()) as u64;
        }
    }
    (count, bytes)
}

/// An open segment file.
pub(super) struct SegmentFile {
    pub no: u64,
    pub kind: SegmentKind,
    pub path: PathBuf,
    pub file: Box<dyn BlockFile>,
    /// Index of `metas[0]` (of the next entry while empty).
    pub first_index: LogIndex,
    pub metas: Vec<EntryMeta>,
    /// Offset where the next entry goes.
    pub end: u64,
    /// Offset up to which the file is written (entries, then zeros).
    pub prepared: u64,
    pub set_count: u64,
    pub set_bytes: u64,
    /// For a segment that is not the newest: why its entries ended before its zeros or
    /// its end (damage, if a later segment holds entries).
    pub torn_reason: Option<String>,
}

impl SegmentFile {
    /// A segment over `file`, empty until [`SegmentFile::scan`] reads it.
    pub fn new(
        no: u64,
        kind: SegmentKind,
        path: PathBuf,
        file: Box<dyn BlockFile>,
        first_index: LogIndex,
    ) -> SegmentFile {
        SegmentFile {
            no,
            kind,
            path,
            file,
            first_index,
            metas: Vec::new(),
            end: 0,
            prepared: 0,
            set_count: 0,
            set_bytes: 0,
            torn_reason: None,
        }
    }

    /// Index of the last entry (the one before `first_index` while empty).
    pub fn last_index(&self) -> LogIndex {
        LogIndex(self.first_index.get() + self.metas.len() as u64 - 1)
    }

    /// Whether it holds no entry.
    pub fn is_empty(&self) -> bool {
        self.metas.is_empty()
    }

    /// The entry `index`, if this segment holds it.
    pub fn meta(&self, index: LogIndex) -> Option<&EntryMeta> {
        let i = index.get().checked_sub(self.first_index.get())?;
        self.metas.get(i as usize)
    }

    /// The log address of byte `offset` of this segment.
    pub fn address(&self, offset: u64) -> u64 {
        address(self.no, offset)
    }

    /// Scans the file from the start, verifying every entry. `first_index` is the index
    /// its first entry must have (`None`: whatever it has, for the oldest Raft segment
    /// after compaction); `min_term` the term entries may not go below. Entries read are
    /// handed to `found` (to warm a cache). On a torn tail the file is cut there, durably,
    /// unless `cut` is false (the caller decides it is damage instead).
    pub fn scan(
        &mut self,
        first_index: Option<LogIndex>,
        index_hint: Option<LogIndex>,
        min_term: Term,
        cut: bool,
        mut found: impl FnMut(&Entry),
    ) -> Result<ScanReport, LogError> {
        let file_len = self.file.len()?;
        let mut offset = 0u64;
        let mut page = AlignedBuf::new(PAGE_SIZE);
        let mut report = ScanReport::default();
        let mut last_term = min_term;
        while offset < file_len {
            let n = self.file.read_at(&mut page, offset)?;
            if n < PAGE_SIZE {
                report.torn_at = Some(offset);
                report.torn_reason = Some("a partial page at the end of the file".into());
                break;
            }
            let expected = match (self.metas.is_empty(), first_index) {
                (true, None) => None,
                (true, Some(first)) => Some(first),
                (false, _) => Some(self.last_index().next()),
            };
            // A zeroed first page is where the prepared space past the last entry begins,
            // or a damaged entry: the search for a later write below tells which.
            let zero_page = page.iter().all(|&b| b == 0);
            let verdict = if zero_page {
                Err("zeroed page where an entry should start".to_string())
            } else {
                self.verify_entry_at(offset, &page, file_len, expected, last_term)?
            };
            match verdict {
                Ok(entry) => {
                    if self.metas.is_empty() {
                        self.first_index = entry.header.log_index;
                    }
                    let (count, bytes) = set_usage(entry.commands());
                    self.set_count += count;
                    self.set_bytes += bytes;
                    last_term = entry.header.term;
                    self.metas.push(EntryMeta {
                        offset,
                        term: entry.header.term,
                        command_length: entry.header.command_length,
                    });
                    offset += entry.header.entry_size() as u64;
                    found(&Entry {
                        offset: self.address(entry.offset),
                        ..entry
                    });
                }
                Err(reason) => {
                    // The index the damaged entry should have had: the segment's first
                    // is known from the one before it (or the checkpoint the log starts
                    // after); entries of the same write carry it as their batch start.
                    let damaged_index = expected.or(index_hint).unwrap_or(LogIndex(1));
                    let from = offset + PAGE_SIZE as u64;
                    if let Some(later) = self.find_later_write(from, file_len, damaged_index)? {
                        return Err(LogError::Corrupt {
                            offset: self.address(offset),
                            reason: format!(
                                "{}: {reason}; the entry at offset {later} was written after \
                                 this one, so this is not a torn tail",
                                self.path.display()
                            ),
                        });
                    }
                    if !zero_page {
                        report.torn_at = Some(offset);
                        report.torn_reason = Some(reason);
                    }
                    break;
                }
            }
        }
        if let Some(first) = first_index
            && self.metas.is_empty()
        {
            self.first_index = first;
        }
        self.end = offset;
        if cut && (report.torn_at.is_some() || offset < file_len) {
            // Everything past the last entry must read as zeros: cut it off durably.
            self.file.set_len(offset)?;
            self.file.sync()?;
        }
        self.prepared = if cut { offset } else { file_len };
        Ok(report)
    }

    /// Reads and verifies the entry whose first page is `first_page`. The outer result is
    /// IO; the inner one says why the bytes are not a valid next entry.
    fn verify_entry_at(
        &mut self,
        offset: u64,
        first_page: &[u8],
        file_len: u64,
        expected: Option<LogIndex>,
        min_term: Term,
    ) -> Result<Result<Entry, String>, LogError> {
        let Some(header) = EntryHeader::decode(first_page) else {
            return Ok(Err("header magic or hash mismatch".into()));
        };
        if let Some(expected) = expected
            && header.log_index != expected
        {
            return Ok(Err(format!(
                "entry has index {} where {expected} was expected",
                header.log_index
            )));
        }
        if header.term < min_term {
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
                let Some(header) = chunk.get(page_start..).and_then(EntryHeader::decode) else {
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

    /// Ensures `bytes` past the end are already written (zeros), extending by whole
    /// chunks of `chunk_bytes`, but not past `limit` unless the bytes need it.
    pub fn prepare(&mut self, bytes: u64, chunk_bytes: u64, limit: u64) -> Result<(), LogError> {
        if self.end + bytes <= self.prepared {
            return Ok(());
        }
        let chunk = chunk_bytes.max(PAGE_SIZE as u64);
        let needed = self.end + bytes;
        let target = (align_up(needed as usize, chunk as usize) as u64).min(limit.max(needed));
        let target = align_up(target as usize, PAGE_SIZE) as u64;
        let zeros = AlignedBuf::new(chunk.min(4 << 20) as usize);
        let mut at = self.prepared;
        while at < target {
            let n = (zeros.len() as u64).min(target - at) as usize;
            self.file.write_at(&zeros[..n], at)?;
            at += n as u64;
        }
        self.file.sync()?;
        self.prepared = target;
        Ok(())
    }

    /// Writes `entries` (consecutive, following this segment's last) as one durable
    /// write at the end; returns the buffer written, for the cache. The caller has
    /// checked the entries and prepared the space.
    pub fn write(&mut self, entries: &[NewEntry<'_>]) -> Result<Arc<AlignedBuf>, LogError> {
        let total: usize = entries.iter().map(|e| entry_size(e.commands.len())).sum();
        let mut buf = AlignedBuf::new(total);
        let mut at = 0usize;
        let mut metas = Vec::with_capacity(entries.len());
        let batch_first_index = entries[0].log_index;
        let mut usage = (0, 0);
        for entry in entries {
            let size = entry_size(entry.commands.len());
            encode_entry(entry, batch_first_index, &mut buf[at..at + size]);
            metas.push(EntryMeta {
                offset: self.end + at as u64,
                term: entry.term,
                command_length: entry.commands.len() as u64,
            });
            let (count, bytes) = set_usage(entry.commands);
            usage.0 += count;
            usage.1 += bytes;
            at += size;
        }
        self.file.write_durable_at(&buf, self.end)?;
        if self.metas.is_empty() {
            self.first_index = entries[0].log_index;
        }
        self.metas.extend(metas);
        self.end += total as u64;
        self.prepared = self.prepared.max(self.end);
        self.set_count += usage.0;
        self.set_bytes += usage.1;
        Ok(Arc::new(buf))
    }

    /// Reads entry `index` from the file and verifies it.
    pub fn read(&mut self, index: LogIndex) -> Result<Entry, LogError> {
        let meta = *self
            .meta(index)
            .ok_or_else(|| LogError::Io(std::io::Error::other(format!("no log entry {index}"))))?;
        let size = entry_size(meta.command_length as usize);
        let mut bytes = AlignedBuf::new(size);
        read_exact_at(self.file.as_mut(), &mut bytes, meta.offset)?;
        let address = self.address(meta.offset);
        let header = EntryHeader::decode(&bytes).ok_or_else(|| LogError::Corrupt {
            offset: address,
            reason: "header failed verification on read".into(),
        })?;
        verify_body(&header, &bytes).map_err(|reason| LogError::Corrupt {
            offset: address,
            reason: reason.into(),
        })?;
        Ok(Entry {
            header,
            offset: address,
            bytes: Arc::new(bytes),
        })
    }

    /// Removes every entry from `index` on; durable before returning.
    pub fn truncate_from(&mut self, index: LogIndex) -> Result<(), LogError> {
        let Some(meta) = self.meta(index).copied() else {
            return Ok(());
        };
        self.file.set_len(meta.offset)?;
        self.file.sync()?;
        let keep = (index.get() - self.first_index.get()) as usize;
        self.metas.truncate(keep);
        self.end = meta.offset;
        self.prepared = meta.offset;
        // The SET usage of what was cut is not subtracted: it only sharpens an estimate,
        // and a follower's cut suffix is small.
        Ok(())
    }

    /// Checks entries before they are written.
    pub fn check(entries: &[NewEntry<'_>]) -> Result<(), LogError> {
        for entry in entries {
            check_commands(entry.commands, entry.num_commands).map_err(|reason| {
                LogError::Invalid {
                    log_index: entry.log_index,
                    reason,
                }
            })?;
        }
        Ok(())
    }
}
