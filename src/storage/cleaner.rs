//! The log cleaner: reclaims the space of superseded values.
//!
//! Every SET leaves its command in a segment for as long as the segment exists; once the
//! key is set again or deleted, those bytes are dead. The cleaner picks the sealed segment
//! with the smallest live fraction — the share of its SET commands the map still reads
//! from it (see [`crate::storage::log::segments`] for the accounting) — reads it from
//! start to end, copies the SET commands the map still points
//! at into a values segment (one durable write per entry of up to
//! [`CleanerOptions::entry_bytes_max`]), and then points the map at the copies — each key
//! only if it still points at the old command, so a SET or DELETE applied meanwhile wins.
//! The victim is then empty; the engine releases it when the next checkpoint that began
//! after that completes (and, for a Raft segment, only once the Raft log no longer needs
//! its entries), and its file is removed.
//!
//! This is a local operation of one replica, never a Raft entry: each replica cleans its
//! own segments on its own schedule, and what it copies is exactly what its own map holds.
//!
//! Crash safety: copies are durable before the map points at them; the map's pages reach
//! the disk only with a checkpoint, and a segment is deleted only after a checkpoint that
//! began once it was empty has completed. A crash at any step leaves either the old
//! pointers (the victim still exists) or the new ones (the copies are durable). A values
//! segment torn by a crash is cut on open like any segment; nothing points into a part
//! that was not written.
//!
//! No thread, no clock: the server runs [`Cleaner::clean_one`] on a thread of its own at
//! a bounded rate, the simulator and the crash tests call it between steps.

use crate::storage::command::CommandOp;
use crate::storage::io::Backend;
use crate::storage::log::segments::{LiveDelta, SegmentKind, Segments, split_address};
use crate::storage::log::{EntryCache, EntryScanner, LogError, ValueCache, ValuesWriter};
use crate::storage::store::Map;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// Tunables of the cleaner.
#[derive(Debug, Clone)]
pub struct CleanerOptions {
    /// Segments whose estimated live fraction is at most this are cleaned (never more
    /// than [`CLEAN_FRACTION_OVER_TARGET`]: copying a segment that is nearly all live
    /// frees almost nothing, and the copies would qualify in turn).
    pub live_fraction_max: f64,
    /// When the segments take more than this many bytes on disk, any sealed segment
    /// below [`CLEAN_FRACTION_OVER_TARGET`] live is cleaned.
    pub disk_target_bytes: Option<u64>,
    /// Size of a values segment.
    pub segment_bytes: u64,
    /// Bytes of copied commands per durable write.
    pub entry_bytes_max: usize,
}

/// The live fraction up to which segments are cleaned while the disk is over its target.
pub const CLEAN_FRACTION_OVER_TARGET: f64 = 0.9;

impl Default for CleanerOptions {
    fn default() -> CleanerOptions {
        CleanerOptions {
            live_fraction_max: 0.25,
            disk_target_bytes: None,
            segment_bytes: crate::storage::log::SEGMENT_BYTES_DEFAULT,
            entry_bytes_max: 1 << 20,
        }
    }
}

/// What one cleaning pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanReport {
    pub segment_no: u64,
    /// Bytes of the victim read.
    pub bytes_read: u64,
    /// Values still live when they were read.
    pub live_found: u64,
    /// Values the map now reads from their copies.
    pub moved: u64,
    /// Bytes of commands written into values segments.
    pub bytes_written: u64,
}

/// One replica's cleaner.
pub struct Cleaner {
    backend: Arc<dyn Backend>,
    table: Arc<Segments>,
    map: Arc<Map>,
    cache: Arc<Mutex<EntryCache>>,
    options: CleanerOptions,
    writer: Option<ValuesWriter>,
    /// Segments already cleaned (they hold no live value and wait to be deleted).
    cleaned: HashSet<u64>,
    /// Snapshot installs seen (see [`Segments::cleaning`]).
    installs_seen: u64,
    /// The readers' value cache: a moved value stays cached under its new address.
    values: Option<Arc<Mutex<ValueCache>>>,
}

/// Live commands gathered for one durable write.
#[derive(Default)]
struct Pending {
    commands: Vec<u8>,
    /// (key hash, old address, offset in `commands`) of each.
    moves: Vec<(u128, u64, usize)>,
}

impl Cleaner {
    pub fn new(
        backend: Arc<dyn Backend>,
        table: Arc<Segments>,
        map: Arc<Map>,
        cache: Arc<Mutex<EntryCache>>,
        options: CleanerOptions,
    ) -> Cleaner {
        Cleaner {
            backend,
            table,
            map,
            cache,
            options,
            writer: None,
            cleaned: HashSet::new(),
            installs_seen: 0,
            values: None,
        }
    }

    /// Keeps moved values cached under their new addresses in `values`.
    pub fn with_value_cache(mut self, values: Arc<Mutex<ValueCache>>) -> Cleaner {
        self.values = Some(values);
        self
    }

    /// The segment to clean next, if one qualifies: sealed, every entry of it applied
    /// (no new value will point into it), live values left, and a live fraction within
    /// the bound (a higher one while the disk is over its target).
    pub fn pick_victim(&self) -> Option<u64> {
        let rows = self.table.snapshot();
        let applied = self.table.applied_index();
        let file_bytes: u64 = rows.iter().map(|(_, r)| r.file_bytes).sum();
        let over_target = self
            .options
            .disk_target_bytes
            .is_some_and(|t| file_bytes > t);
        let bound = if over_target {
            CLEAN_FRACTION_OVER_TARGET
        } else {
            self.options
                .live_fraction_max
                .min(CLEAN_FRACTION_OVER_TARGET)
        };
        rows.iter()
            .filter(|(no, r)| {
                r.sealed
                    && r.valid_bytes > 0
                    && r.live_count > 0
                    && !self.cleaned.contains(no)
                    && (r.kind == SegmentKind::Values || r.last_index.is_some_and(|i| i <= applied))
                    && r.live_fraction() <= bound
            })
            .min_by(|a, b| a.1.live_fraction().total_cmp(&b.1.live_fraction()))
            .map(|(no, _)| *no)
    }

    /// Cleans the best victim, if there is one. The pass holds the table's cleaning lock,
    /// so a snapshot install never runs in the middle of one; after an install the values
    /// segment being filled is gone, and a new one is started.
    pub fn clean_one(&mut self) -> Result<Option<CleanReport>, LogError> {
        let table = self.table.clone();
        let installs = table.cleaning();
        if *installs != self.installs_seen {
            self.installs_seen = *installs;
            self.writer = None;
            self.cleaned.clear();
        }
        self.cleaned.retain(|no| table.get(*no).is_some());
        match self.pick_victim() {
            Some(no) => self.clean(no).map(Some),
            None => Ok(None),
        }
    }

    /// Copies the live values of segment `victim` and points the map at the copies.
    pub fn clean(&mut self, victim: u64) -> Result<CleanReport, LogError> {
        let mut report = CleanReport {
            segment_no: victim,
            ..CleanReport::default()
        };
        let mut scanner = EntryScanner::open(self.backend.as_ref(), &self.table, victim)?;
        let mut pending = Pending::default();
        while let Some(entry) = scanner.next_entry()? {
            let commands = entry.commands();
            for cmd in entry.iter() {
                let cmd = cmd.map_err(|e| LogError::Corrupt {
                    offset: entry.offset,
                    reason: e.to_string(),
                })?;
                if cmd.op != CommandOp::Set {
                    continue;
                }
                let address = entry.command_file_offset(cmd.offset);
                let hash = self.map.key_hash(cmd.key);
                if self.map.log_address(hash) != Some(address) {
                    continue;
                }
                report.live_found += 1;
                if pending.commands.len() + cmd.size > self.options.entry_bytes_max
                    && !pending.moves.is_empty()
                {
                    self.flush(&mut pending, victim, &mut report)?;
                }
                // The decoder checked that the command lies inside the region.
                let bytes = commands
                    .get(cmd.offset..cmd.offset + cmd.size)
                    .ok_or_else(|| LogError::Corrupt {
                        offset: address,
                        reason: "command runs past its entry".into(),
                    })?;
                pending.moves.push((hash, address, pending.commands.len()));
                pending.commands.extend_from_slice(bytes);
            }
        }
        self.flush(&mut pending, victim, &mut report)?;
        report.bytes_read = scanner.bytes_read();
        self.cleaned.insert(victim);
        Ok(report)
    }

    /// Writes the gathered commands durably, then moves each key still pointing at its old
    /// command to the copy.
    fn flush(
        &mut self,
        pending: &mut Pending,
        victim: u64,
        report: &mut CleanReport,
    ) -> Result<(), LogError> {
        if pending.moves.is_empty() {
            return Ok(());
        }
        if self
            .writer
            .as_ref()
            .is_none_or(|w| !w.has_room(pending.commands.len()))
        {
            if let Some(full) = self.writer.take() {
                full.seal();
            }
            self.writer = Some(ValuesWriter::create(
                self.backend.as_ref(),
                &self.table,
                self.options.segment_bytes,
                &self.cache,
            )?);
        }
        let writer = self.writer.as_mut().expect("created above");
        let base = match writer.append(pending.moves.len() as u64, &pending.commands) {
            Ok(base) => base,
            Err(e) => {
                // The segment's end is unknown after a failed write: leave it unsealed (it
                // is never deleted while this process runs) and start a new one next time.
                self.writer = None;
                return Err(e);
            }
        };
        let target = split_address(base).0;
        let mut moved = 0i64;
        let mut rekeyed = Vec::new();
        for &(hash, from, at) in &pending.moves {
            let to = base + at as u64;
            if self.map.relocate(hash, from, to) {
                moved += 1;
                rekeyed.push((from, to));
            }
        }
        if let Some(values) = &self.values {
            // In batches, so readers never wait long for the cache.
            for batch in rekeyed.chunks(256) {
                let mut values = values.lock().unwrap_or_else(|e| e.into_inner());
                for &(from, to) in batch {
                    values.rekey(from, to);
                }
            }
        }
        self.table.apply_live(&[
            LiveDelta {
                segment_no: victim,
                delta: -moved,
            },
            LiveDelta {
                segment_no: target,
                delta: moved,
            },
        ]);
        report.moved += moved as u64;
        report.bytes_written += pending.commands.len() as u64;
        pending.commands.clear();
        pending.moves.clear();
        Ok(())
    }

    /// Seals the values segment being filled (so that, once emptied in turn, it can be
    /// deleted). The next pass starts a new one.
    pub fn seal(&mut self) {
        if let Some(w) = self.writer.take() {
            w.seal();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Term;
    use crate::storage::command;
    use crate::storage::engine::{Engine, EngineOptions};
    use crate::storage::io::fault::FaultBackend;
    use crate::storage::log::LogOptions;
    use std::path::Path;

    fn engine() -> (FaultBackend, Engine) {
        let disk = FaultBackend::new();
        let options = EngineOptions {
            log: LogOptions {
                prepare_chunk_bytes: 16 << 10,
                cache_bytes: 0,
                segment_bytes: 64 << 10,
            },
            raft_log_retain_bytes: 0,
            bootstrap_membership: None,
        };
        let (engine, _) =
            Engine::open(Arc::new(disk.clone()), Path::new("/c"), options, None).unwrap();
        (disk, engine)
    }

    fn set_all(engine: &mut Engine, keys: std::ops::Range<u32>, version: u8) {
        let mut cmds = Vec::new();
        for k in keys.clone() {
            let key = format!("key-{k}");
            command::encode(
                &mut cmds,
                CommandOp::Set,
                0,
                0,
                key.as_bytes(),
                &[version; 200],
            );
        }
        engine
            .commit_local(Term(1), keys.len() as u64, &cmds)
            .unwrap();
    }

    /// A value cached under its old address is found under its new one once the cleaner
    /// moved it, and no longer under the old.
    #[test]
    fn a_moved_value_stays_cached_under_its_new_address() {
        let (_disk, mut engine) = engine();
        for round in 0..6u8 {
            set_all(&mut engine, 0..200, round);
        }
        // Key 0 alone keeps its first version in the oldest segments.
        let mut keep = Vec::new();
        command::encode(&mut keep, CommandOp::Set, 0, 0, b"kept", &[9; 200]);
        engine.commit_local(Term(1), 1, &keep).unwrap();
        for round in 6..12u8 {
            set_all(&mut engine, 0..200, round);
        }
        let map = engine.map().clone();
        let old = map.log_address(map.key_hash(b"kept")).unwrap();
        let values = Arc::new(Mutex::new(ValueCache::new(1 << 20)));
        values.lock().unwrap().insert(old, b"kept", &[9; 200]);
        let mut cleaner = engine
            .cleaner(CleanerOptions::default())
            .with_value_cache(values.clone());
        while cleaner.clean_one().unwrap().is_some() {}
        let new = map.log_address(map.key_hash(b"kept")).unwrap();
        assert_ne!(new, old, "the cleaner moved the value");
        let mut v = values.lock().unwrap();
        assert_eq!(
            v.get(new, b"kept"),
            Some(crate::storage::log::ValueRead::Value(vec![9; 200]))
        );
        assert_eq!(v.get(old, b"kept"), None);
    }

    /// Overwriting most keys leaves the old segments mostly dead: the cleaner copies what
    /// is still live out of them, every value reads back from its copy, the victims' live
    /// counts drop to zero, and the next checkpoint deletes them.
    #[test]
    fn live_values_move_out_and_the_emptied_segments_go_at_the_next_checkpoint() {
        let (_disk, mut engine) = engine();
        for batch in 0..10 {
            set_all(&mut engine, batch * 40..batch * 40 + 40, 1);
        }
        // Overwrite all but every tenth key, several times: the first segments end up
        // about 10% live.
        for round in 2..5 {
            for batch in 0..10 {
                let keys: Vec<u32> = (batch * 40..batch * 40 + 40)
                    .filter(|k| k % 10 != 0)
                    .collect();
                let mut cmds = Vec::new();
                for k in &keys {
                    let key = format!("key-{k}");
                    command::encode(
                        &mut cmds,
                        CommandOp::Set,
                        0,
                        0,
                        key.as_bytes(),
                        &[round; 200],
                    );
                }
                engine
                    .commit_local(Term(1), keys.len() as u64, &cmds)
                    .unwrap();
            }
        }
        let before = engine.space();
        let mut cleaner = engine.cleaner(CleanerOptions::default());
        let mut moved = 0;
        let mut victims = Vec::new();
        while let Some(report) = cleaner.clean_one().unwrap() {
            assert!(report.moved <= report.live_found);
            moved += report.moved;
            victims.push(report.segment_no);
        }
        cleaner.seal();
        assert!(
            moved > 0 && victims.len() >= 2,
            "moved {moved} from {victims:?}"
        );
        for &no in &victims {
            let row = engine.log().segments().get(no).unwrap();
            assert_eq!(row.live_count, 0, "segment {no} was emptied");
        }
        for k in 0..400u32 {
            let want = if k % 10 == 0 { 1 } else { 4 };
            let got = engine.get(format!("key-{k}").as_bytes()).unwrap();
            assert_eq!(got, Some(vec![want; 200]), "key-{k}");
        }
        let reclaimed = engine.checkpoint().unwrap();
        assert!(
            reclaimed.segments >= victims.len() as u64 - 1,
            "{reclaimed:?}"
        );
        let after = engine.space();
        assert!(
            after.file_bytes < before.file_bytes,
            "{before:?} then {after:?}"
        );
        assert_eq!(
            after.live_count, before.live_count,
            "no value lost or doubled"
        );
    }

    /// A relocation is conditional: a key set again after the cleaner read it keeps its
    /// new value, and the map refuses to move a key from an address it does not hold.
    #[test]
    fn a_key_set_again_meanwhile_is_not_moved_back() {
        let (_disk, mut engine) = engine();
        set_all(&mut engine, 0..1, 1);
        let map = engine.map().clone();
        let hash = map.key_hash(b"key-0");
        let old = map.log_address(hash).unwrap();
        set_all(&mut engine, 0..1, 2);
        let new = map.log_address(hash).unwrap();
        assert_ne!(old, new);
        assert!(!map.relocate(hash, old, old + 4096), "stale source refused");
        assert_eq!(map.log_address(hash), Some(new));
        assert_eq!(engine.get(b"key-0").unwrap(), Some(vec![2; 200]));
    }
}
