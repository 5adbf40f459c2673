//! Recovery: the forward scan that verifies every entry when the log is opened, tells a
//! torn tail (cut) from damage in the middle (refused, by offset), and rebuilds the
//! in-memory index of entries.

use super::entry::verify_body;
use super::{Entry, EntryHeader, EntryMeta, Log, LogError, LogIndex, RecoveryReport};
use crate::storage::io::{AlignedBuf, PAGE_SIZE, read_exact_at};
use std::sync::Arc;

impl Log {
    pub(super) fn recover(&mut self) -> Result<RecoveryReport, LogError> {
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
                    let damaged_index = self.last_index().next();
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
        let expected = self.last_index().next();
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
}
