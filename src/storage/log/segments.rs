//! The table of segment files and what each holds, shared by the log (replication core),
//! the readers (shards), the cleaner and the engine's accounting.
//!
//! # Addresses
//!
//! Every command has a *log address*: `segment_no << SEGMENT_OFFSET_BITS | offset`, where
//! `offset` is its byte offset in segment file `segment_no`. Segment numbers only grow
//! (they are never reused), so an address names one command for the life of the data
//! directory, and the map, the caches and the readers never confuse a deleted segment's
//! bytes with a newer one's. The map keeps addresses in 56 bits: 2^26 segments of up to
//! 1 GiB of address space each.
//!
//! # Files
//!
//! `segments/NNNNNNNN.log` (eight hex digits: the segment number) hold Raft entries, consecutive across
//! files; `segments/NNNNNNNN.val` hold values the cleaner relocated out of older segments,
//! in the same entry format with their own indexes from 1 (not Raft entries). Both are
//! written only at their end, durably, and deleted whole.
//!
//! # Live accounting
//!
//! A value is *live* in a segment while the map points at its SET command there (values
//! the map keeps inline are not counted: their log copy is never read). Applying a SET
//! adds one live value to the segment of its entry and removes one from the segment of the
//! version it replaces; a DELETE removes one; a relocation moves one. Per segment the
//! table also knows how many log-backed SET commands it holds and their bytes, so live
//! bytes are estimated as `live_count × set_bytes / set_count`: exact for values of one
//! size, and the cleaner measures the real figure of each segment it reads.

use crate::ids::LogIndex;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bits of an address that are the offset inside its segment.
pub const SEGMENT_OFFSET_BITS: u32 = 30;
/// Bits of an address the map can hold.
pub const ADDRESS_BITS: u32 = 56;
/// The largest segment number.
pub const SEGMENT_NO_MAX: u64 = (1 << (ADDRESS_BITS - SEGMENT_OFFSET_BITS)) - 1;
/// The largest a segment file may grow (its address space).
pub const SEGMENT_SPACE_BYTES: u64 = 1 << SEGMENT_OFFSET_BITS;
const _: () = assert!(
    super::COMMAND_LENGTH_MAX as u64 + 2 * super::HEADER_SLOT_SIZE as u64 <= SEGMENT_SPACE_BYTES
);

/// The log address of byte `offset` of segment `segment_no`.
pub fn address(segment_no: u64, offset: u64) -> u64 {
    debug_assert!(segment_no <= SEGMENT_NO_MAX && offset < SEGMENT_SPACE_BYTES);
    segment_no << SEGMENT_OFFSET_BITS | offset
}

/// The segment number and offset of a log address.
pub fn split_address(address: u64) -> (u64, u64) {
    (
        address >> SEGMENT_OFFSET_BITS,
        address & (SEGMENT_SPACE_BYTES - 1),
    )
}

/// What a segment file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SegmentKind {
    /// Raft entries.
    Raft,
    /// Values relocated by the cleaner.
    Values,
}

impl SegmentKind {
    fn suffix(self) -> &'static str {
        match self {
            SegmentKind::Raft => "log",
            SegmentKind::Values => "val",
        }
    }
}

/// The file name of a segment.
pub fn file_name(segment_no: u64, kind: SegmentKind) -> String {
    format!("{segment_no:08x}.{}", kind.suffix())
}

/// The segment number and kind a file name stands for, if it is a segment's.
pub fn parse_file_name(name: &str) -> Option<(u64, SegmentKind)> {
    let (stem, suffix) = name.split_once('.')?;
    let kind = match suffix {
        "log" => SegmentKind::Raft,
        "val" => SegmentKind::Values,
        _ => return None,
    };
    if stem.len() != 8 || !stem.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let no = u64::from_str_radix(stem, 16).ok()?;
    (no <= SEGMENT_NO_MAX).then_some((no, kind))
}

/// What the table knows of one segment.
#[derive(Debug, Clone)]
pub struct SegmentInfo {
    pub kind: SegmentKind,
    pub path: PathBuf,
    /// Bytes of entries (readers may read below this).
    pub valid_bytes: u64,
    /// Bytes the file takes on disk (entries plus space prepared ahead).
    pub file_bytes: u64,
    /// Log-backed SET commands written into it, and their encoded bytes.
    pub set_count: u64,
    pub set_bytes: u64,
    /// Values the map points at in it. Signed: a relocation's increment and an apply's
    /// decrement of the same value may reach the table in either order.
    pub live_count: i64,
    /// For Raft segments: the last entry's index (`None` while empty).
    pub last_index: Option<LogIndex>,
    /// No more entries will be written into it.
    pub sealed: bool,
}

impl SegmentInfo {
    /// Estimated bytes of live values.
    pub fn live_bytes(&self) -> u64 {
        if self.set_count == 0 {
            return 0;
        }
        let live = self.live_count.max(0) as u128;
        (live * self.set_bytes as u128 / self.set_count as u128).min(self.valid_bytes as u128)
            as u64
    }

    /// The fraction of the segment's SET commands whose values the map still reads from
    /// it. (By count, not bytes: a values segment holds nothing but values that were live
    /// when copied, so it qualifies for cleaning only once some of them have died since,
    /// however much padding its entries carry; a Raft segment whose values all sit inline
    /// in the map counts as empty.)
    pub fn live_fraction(&self) -> f64 {
        if self.set_count == 0 {
            return 0.0;
        }
        self.live_count.max(0) as f64 / self.set_count as f64
    }
}

/// Totals over every segment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpaceReport {
    pub segment_count: u64,
    pub file_bytes: u64,
    pub valid_bytes: u64,
    pub live_bytes: u64,
    pub live_count: u64,
}

/// A change of one segment's live count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveDelta {
    pub segment_no: u64,
    pub delta: i64,
}

/// The shared segment table.
#[derive(Debug)]
pub struct Segments {
    dir: PathBuf,
    table: Mutex<BTreeMap<u64, SegmentInfo>>,
    next_no: AtomicU64,
    /// Bumped whenever a segment is removed (readers drop their handles then).
    removals: AtomicU64,
    /// The last Raft index applied to the map (segments below it gain no more values).
    applied_index: AtomicU64,
    /// Snapshots being read from these segments: while any is, no segment is released.
    pins: AtomicU64,
    /// Held by the cleaner for a whole pass and by a snapshot install; the number counts
    /// installs, so the cleaner knows to drop the values segment it was filling.
    cleaning: Mutex<u64>,
}

/// Keeps every segment of a table from being released while it lives (a snapshot being
/// sent reads values from the segments as they were when it was taken).
#[derive(Debug)]
pub struct SegmentPin {
    table: std::sync::Arc<Segments>,
}

impl Drop for SegmentPin {
    fn drop(&mut self) {
        self.table.pins.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Segments {
    /// An empty table for the segments in `dir`, numbering new ones from `next_no`.
    pub fn new(dir: &Path, next_no: u64) -> Segments {
        Segments {
            dir: dir.to_path_buf(),
            table: Mutex::new(BTreeMap::new()),
            next_no: AtomicU64::new(next_no),
            removals: AtomicU64::new(0),
            applied_index: AtomicU64::new(0),
            pins: AtomicU64::new(0),
            cleaning: Mutex::new(0),
        }
    }

    /// Pins every segment until the returned guard is dropped.
    pub fn pin(self: &std::sync::Arc<Self>) -> SegmentPin {
        self.pins.fetch_add(1, Ordering::AcqRel);
        SegmentPin {
            table: self.clone(),
        }
    }

    /// Whether a pin is held.
    pub fn is_pinned(&self) -> bool {
        self.pins.load(Ordering::Acquire) > 0
    }

    /// The cleaning lock: the cleaner holds it for a pass, an install for its whole
    /// course. The value counts installs.
    pub fn cleaning(&self) -> std::sync::MutexGuard<'_, u64> {
        self.cleaning.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The directory holding the segment files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of a segment file.
    pub fn path(&self, segment_no: u64, kind: SegmentKind) -> PathBuf {
        self.dir.join(file_name(segment_no, kind))
    }

    /// A fresh segment number, or `None` when they are used up.
    pub fn allocate_no(&self) -> Option<u64> {
        let no = self.next_no.fetch_add(1, Ordering::Relaxed);
        (no <= SEGMENT_NO_MAX).then_some(no)
    }

    /// Adds a segment to the table (after its file exists).
    pub fn insert(&self, segment_no: u64, info: SegmentInfo) {
        self.next_no.fetch_max(segment_no + 1, Ordering::Relaxed);
        self.table.lock().unwrap().insert(segment_no, info);
    }

    /// Drops a segment from the table (before its file is removed).
    pub fn remove(&self, segment_no: u64) -> Option<SegmentInfo> {
        let info = self.table.lock().unwrap().remove(&segment_no);
        self.removals.fetch_add(1, Ordering::Release);
        info
    }

    /// How many removals there have been (a reader compares it with what it saw last).
    pub fn removal_count(&self) -> u64 {
        self.removals.load(Ordering::Acquire)
    }

    /// Changes one segment's entry in place.
    pub fn update(&self, segment_no: u64, f: impl FnOnce(&mut SegmentInfo)) {
        if let Some(info) = self.table.lock().unwrap().get_mut(&segment_no) {
            f(info);
        }
    }

    /// A copy of one segment's entry.
    pub fn get(&self, segment_no: u64) -> Option<SegmentInfo> {
        self.table.lock().unwrap().get(&segment_no).cloned()
    }

    /// The path of the segment holding `address`, if `address` lies inside its entries.
    pub fn locate(&self, address: u64) -> Option<(u64, PathBuf, u64)> {
        let (no, offset) = split_address(address);
        let table = self.table.lock().unwrap();
        let info = table.get(&no)?;
        (offset < info.valid_bytes).then(|| (no, info.path.clone(), offset))
    }

    /// Applies live-count changes.
    pub fn apply_live(&self, deltas: &[LiveDelta]) {
        if deltas.is_empty() {
            return;
        }
        let mut table = self.table.lock().unwrap();
        for d in deltas {
            if let Some(info) = table.get_mut(&d.segment_no) {
                info.live_count += d.delta;
            }
        }
    }

    /// Sets every segment's live count (after counting the map's pointers).
    pub fn set_live_counts(&self, counts: &BTreeMap<u64, u64>) {
        let mut table = self.table.lock().unwrap();
        for (no, info) in table.iter_mut() {
            info.live_count = counts.get(no).copied().unwrap_or(0) as i64;
        }
    }

    /// A copy of the whole table.
    pub fn snapshot(&self) -> Vec<(u64, SegmentInfo)> {
        self.table
            .lock()
            .unwrap()
            .iter()
            .map(|(no, info)| (*no, info.clone()))
            .collect()
    }

    /// Totals over every segment.
    pub fn space(&self) -> SpaceReport {
        let table = self.table.lock().unwrap();
        let mut r = SpaceReport::default();
        for info in table.values() {
            r.segment_count += 1;
            r.file_bytes += info.file_bytes;
            r.valid_bytes += info.valid_bytes;
            r.live_bytes += info.live_bytes();
            r.live_count += info.live_count.max(0) as u64;
        }
        r
    }

    /// Publishes the applied index.
    pub fn set_applied_index(&self, index: LogIndex) {
        self.applied_index.store(index.get(), Ordering::Release);
    }

    /// The applied index last published.
    pub fn applied_index(&self) -> LogIndex {
        LogIndex(self.applied_index.load(Ordering::Acquire))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip_and_strangers_are_ignored() {
        for (no, kind) in [
            (0, SegmentKind::Raft),
            (0x1234_abcd & SEGMENT_NO_MAX, SegmentKind::Values),
            (SEGMENT_NO_MAX, SegmentKind::Raft),
        ] {
            assert_eq!(parse_file_name(&file_name(no, kind)), Some((no, kind)));
        }
        for name in [
            "map.dat",
            "0000000.log",
            "000000000.log",
            "0000000g.log",
            "00000001.tmp",
            "ffffffff.log",
            "",
            ".log",
        ] {
            assert_eq!(parse_file_name(name), None, "{name:?}");
        }
    }

    #[test]
    fn addresses_split_back_into_segment_and_offset() {
        for (no, off) in [
            (0, 0),
            (1, 4096),
            (SEGMENT_NO_MAX, SEGMENT_SPACE_BYTES - 32),
        ] {
            let a = address(no, off);
            assert!(a < 1 << ADDRESS_BITS);
            assert_eq!(split_address(a), (no, off));
        }
    }
}
