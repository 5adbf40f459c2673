//! A bounded in-memory cache of recent log entries, keyed by file offset.
//!
//! O_DIRECT bypasses the kernel's page cache, so without this every GET of a value larger
//! than an inline slot would cost a disk read. Entries just written are inserted (they are
//! already in memory), as are entries read back; the oldest insertions are evicted first
//! once the byte budget is exceeded.

use crate::storage::io::AlignedBuf;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

/// Cached entry bytes: a whole entry, or a range of a larger shared buffer.
#[derive(Clone)]
struct Slot {
    buf: Arc<AlignedBuf>,
    start: usize,
    len: usize,
}

/// Recent entries by log-file offset, bounded in bytes.
pub struct EntryCache {
    budget_bytes: usize,
    used_bytes: usize,
    slots: BTreeMap<u64, Slot>,
    order: VecDeque<u64>,
}

impl EntryCache {
    /// A cache holding at most `budget_bytes` of entry bytes (0 disables it).
    pub fn new(budget_bytes: usize) -> EntryCache {
        EntryCache {
            budget_bytes,
            used_bytes: 0,
            slots: BTreeMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Caches a whole entry buffer at `offset`.
    pub fn insert(&mut self, offset: u64, buf: Arc<AlignedBuf>) {
        let len = buf.len();
        self.insert_slice(offset, &buf, 0, len);
    }

    /// Caches `buf[start..start + len]` as the entry at `offset`.
    pub fn insert_slice(&mut self, offset: u64, buf: &Arc<AlignedBuf>, start: usize, len: usize) {
        if len > self.budget_bytes {
            return;
        }
        if let Some(old) = self.slots.insert(
            offset,
            Slot {
                buf: buf.clone(),
                start,
                len,
            },
        ) {
            self.used_bytes -= old.len;
        } else {
            self.order.push_back(offset);
        }
        self.used_bytes += len;
        while self.used_bytes > self.budget_bytes {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some(slot) = self.slots.remove(&oldest) {
                self.used_bytes -= slot.len;
            }
        }
    }

    /// The entry at `offset`, copied out into its own page-aligned buffer when it was a
    /// slice of a larger one.
    pub fn get(&self, offset: u64) -> Option<Arc<AlignedBuf>> {
        let slot = self.slots.get(&offset)?;
        if slot.start == 0 && slot.len == slot.buf.len() {
            return Some(slot.buf.clone());
        }
        Some(Arc::new(AlignedBuf::from_slice(
            &slot.buf[slot.start..slot.start + slot.len],
        )))
    }

    /// Drops every entry at or after `offset` (after a suffix truncation).
    pub fn remove_from(&mut self, offset: u64) {
        let removed = self.slots.split_off(&offset);
        for slot in removed.values() {
            self.used_bytes -= slot.len;
        }
        self.order.retain(|o| *o < offset);
    }

    /// Bytes currently cached.
    pub fn used_bytes(&self) -> usize {
        self.used_bytes
    }
}

impl EntryCache {
    /// The value for `key` of the SET command at log-file offset `file_offset`, if the
    /// entry that holds it is cached.
    pub fn value_at(
        &self,
        file_offset: u64,
        key: &[u8],
    ) -> Option<Result<super::ValueRead, crate::storage::command::DecodeError>> {
        self.value_ref_at(file_offset, key)
            .map(|found| found.map(super::ValueRead::into_owned))
    }

    /// [`EntryCache::value_at`], borrowing the value from the cached entry.
    pub fn value_ref_at(
        &self,
        file_offset: u64,
        key: &[u8],
    ) -> Option<Result<super::ValueRead<&[u8]>, crate::storage::command::DecodeError>> {
        let (&start, slot) = self.slots.range(..=file_offset).next_back()?;
        if file_offset >= start + slot.len as u64 {
            return None;
        }
        let bytes = &slot.buf[slot.start..slot.start + slot.len];
        let relative = (file_offset - start) as usize;
        Some(
            crate::storage::command::decode_at(bytes, relative)
                .and_then(|cmd| super::reader::value_ref_for_key(&cmd, key)),
        )
    }
}
