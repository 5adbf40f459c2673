//! What the cleaner reads and writes: entries of a whole segment read in order, and the
//! values segments it copies live values into.
//!
//! A values segment holds entries in the Raft segments' format (header, SET commands,
//! trailer; indexes from 1, term 0), written durably at its end, so the same scan verifies
//! it on open and the same readers serve its values. It is no part of the Raft log.

use super::segment::SegmentFile;
use super::segments::{SegmentInfo, SegmentKind, Segments};
use super::{Entry, EntryCache, EntryHeader, LogError, LogIndex, NewEntry, Term, entry_size};
use crate::storage::io::{AlignedBuf, Backend, BlockFile, PAGE_SIZE, open_durable, read_exact_at};
use std::io;
use std::sync::{Arc, Mutex};

/// Reads the entries of one segment file from its start, verifying each.
pub struct EntryScanner {
    file: Box<dyn BlockFile>,
    segment_no: u64,
    offset: u64,
    end: u64,
}

impl EntryScanner {
    /// A scanner over the first `valid_bytes` of segment `segment_no`'s file.
    pub fn open(
        backend: &dyn Backend,
        table: &Segments,
        segment_no: u64,
    ) -> Result<EntryScanner, LogError> {
        let info = table.get(segment_no).ok_or_else(|| {
            LogError::Io(io::Error::new(
                io::ErrorKind::NotFound,
                format!("segment {segment_no} is gone"),
            ))
        })?;
        Ok(EntryScanner {
            file: backend.open(&info.path, false)?,
            segment_no,
            offset: 0,
            end: info.valid_bytes,
        })
    }

    /// Bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.offset
    }

    /// The next entry, or `None` at the end of the segment's entries.
    pub fn next_entry(&mut self) -> Result<Option<Entry>, LogError> {
        if self.offset >= self.end {
            return Ok(None);
        }
        let address = super::segments::address(self.segment_no, self.offset);
        let corrupt = |reason: &str| LogError::Corrupt {
            offset: address,
            reason: reason.into(),
        };
        let mut page = AlignedBuf::new(PAGE_SIZE);
        read_exact_at(self.file.as_mut(), &mut page, self.offset)?;
        let header = EntryHeader::decode(&page).ok_or_else(|| corrupt("bad entry header"))?;
        let size = header.entry_size();
        if self.offset + size as u64 > self.end {
            return Err(corrupt("entry runs past the segment's entries"));
        }
        let bytes = if size == PAGE_SIZE {
            page
        } else {
            let mut bytes = AlignedBuf::new(size);
            read_exact_at(self.file.as_mut(), &mut bytes, self.offset)?;
            bytes
        };
        super::entry::verify_body(&header, &bytes).map_err(corrupt)?;
        self.offset += size as u64;
        Ok(Some(Entry {
            header,
            offset: address,
            bytes: Arc::new(bytes),
        }))
    }
}

/// The values segment the cleaner is filling.
pub struct ValuesWriter {
    seg: SegmentFile,
    table: Arc<Segments>,
    segment_bytes: u64,
    /// The log's cache of entries: the copies are put there as they are written, so the
    /// values the cleaner moves stay in memory as they were in their old segment.
    cache: Arc<Mutex<EntryCache>>,
}

impl ValuesWriter {
    /// Creates a new, empty values segment (durable in its directory) and registers it,
    /// not sealed: nothing may delete it while values are being moved into it.
    pub fn create(
        backend: &dyn Backend,
        table: &Arc<Segments>,
        segment_bytes: u64,
        cache: &Arc<Mutex<EntryCache>>,
    ) -> Result<ValuesWriter, LogError> {
        let no = table.allocate_no().ok_or_else(|| {
            LogError::Io(io::Error::other(
                "segment numbers are used up: this data directory has written 2^26 segments",
            ))
        })?;
        let path = table.path(no, SegmentKind::Values);
        let file = open_durable(backend, &path)?;
        let seg = SegmentFile::new(no, SegmentKind::Values, path.clone(), file, LogIndex(1));
        table.insert(
            no,
            SegmentInfo {
                kind: SegmentKind::Values,
                path,
                valid_bytes: 0,
                file_bytes: 0,
                set_count: 0,
                set_bytes: 0,
                live_count: 0,
                last_index: None,
                sealed: false,
            },
        );
        Ok(ValuesWriter {
            seg,
            table: table.clone(),
            segment_bytes,
            cache: cache.clone(),
        })
    }

    /// The segment's number.
    pub fn segment_no(&self) -> u64 {
        self.seg.no
    }

    /// Whether an entry of `command_length` bytes still fits.
    pub fn has_room(&self, command_length: usize) -> bool {
        self.seg.is_empty()
            || self.seg.end + entry_size(command_length) as u64 <= self.segment_bytes
    }

    /// Writes one entry of encoded SET commands durably; returns the log address of its
    /// commands region (command `i` at offset `o` of `commands` is at that plus `o`).
    pub fn append(&mut self, num_commands: u64, commands: &[u8]) -> Result<u64, LogError> {
        let entry = NewEntry {
            term: Term::ZERO,
            log_index: self.seg.last_index().next(),
            num_commands,
            commands,
        };
        SegmentFile::check(std::slice::from_ref(&entry))?;
        let start = self.seg.end;
        let buf = self.seg.write(std::slice::from_ref(&entry))?;
        let (no, end) = (self.seg.no, self.seg.end);
        self.cache
            .lock()
            .unwrap()
            .insert(super::segments::address(no, start), buf);
        let (count, bytes) = (self.seg.set_count, self.seg.set_bytes);
        self.table.update(no, |row| {
            row.valid_bytes = end;
            row.file_bytes = end;
            row.set_count = count;
            row.set_bytes = bytes;
        });
        Ok(super::segments::address(
            no,
            start + super::HEADER_SLOT_SIZE as u64,
        ))
    }

    /// Marks the segment sealed: every value moved into it is accounted for, so an
    /// empty one may now be deleted.
    pub fn seal(self) {
        self.table.update(self.seg.no, |row| row.sealed = true);
    }
}
