//! Crash tests: crash the engine at every IO point of a workload and check recovery.
//!
//! Method: a fixed workload (batches of SET/DELETE with values on both sides of the
//! inline limit, a checkpoint every few entries) is first run on a fault-free in-memory
//! disk to count its IO points. Then, for every point, a fresh disk is armed to crash
//! there — tearing that write after a chosen number of sectors — and the workload runs
//! until the crash. At power loss the unsynced writes are dropped, or kept sector by
//! sector at random. The engine is reopened and must hold exactly the state after its
//! last log entry, and that entry must be the last acknowledged one or, at most, the one
//! whose append was cut off (durable but never acknowledged): no acknowledged write lost,
//! no write invented, no partial batch.

mod common;

use common::*;
use ocean_liner::ids::{LogIndex, Term};
use ocean_liner::storage::cleaner::CleanerOptions;
use ocean_liner::storage::engine::{Engine, EngineOptions};
use ocean_liner::storage::io::Backend;
use ocean_liner::storage::io::fault::{Fault, FaultBackend, PowerLoss};
use ocean_liner::storage::log::LogOptions;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

const ENTRIES: usize = 40;
const CHECKPOINT_EVERY: usize = 5;

fn options() -> EngineOptions {
    EngineOptions {
        log: LogOptions {
            prepare_chunk_bytes: 32 << 10,
            cache_bytes: 0,
            // Small segments: the workload rolls over to new ones, and checkpoints
            // delete the old ones, at IO points like every other.
            segment_bytes: 96 << 10,
        },
        raft_log_retain_bytes: 0,
        bootstrap_membership: None,
    }
}

fn workload() -> Vec<Vec<Write>> {
    let mut rng = Rng(42);
    (0..ENTRIES)
        .map(|_| {
            let n = 1 + rng.below(40) as usize;
            random_batch(&mut rng, n, 300, 200)
        })
        .collect()
}

/// Model state after each prefix of the workload: `models[i]` = after `i` entries.
fn models(batches: &[Vec<Write>]) -> Vec<HashMap<Vec<u8>, Vec<u8>>> {
    let mut out = vec![HashMap::new()];
    for b in batches {
        let mut m = out.last().unwrap().clone();
        apply_model(&mut m, b);
        out.push(m);
    }
    out
}

/// Runs the workload; returns how many entries were acknowledged before the first error.
fn drive(backend: Arc<dyn Backend>, dir: &Path, batches: &[Vec<Write>]) -> usize {
    let Ok((mut engine, _)) = Engine::open(backend, dir, options(), None) else {
        return 0;
    };
    for (i, b) in batches.iter().enumerate() {
        if engine
            .commit_local(Term(1), b.len() as u64, &encode_batch(b))
            .is_err()
        {
            return i;
        }
        if (i + 1) % CHECKPOINT_EVERY == 0 && engine.checkpoint().is_err() {
            return i + 1;
        }
    }
    batches.len()
}

#[test]
fn crash_at_every_io_point_recovers_exactly_the_durable_prefix() {
    let batches = workload();
    let models = models(&batches);
    let all_keys: Vec<Vec<u8>> = (0..300).map(key).collect();
    let dir = Path::new("/node");

    let clean = FaultBackend::new();
    assert_eq!(drive(Arc::new(clean.clone()), dir, &batches), ENTRIES);
    let points = clean.io_points();
    assert!(
        points > 60,
        "the workload should have many IO points, has {points}"
    );

    let mut outcomes = [0usize; 2];
    let mut runs = 0;
    for point in 0..points {
        for (torn_sectors, loss) in [
            (0, PowerLoss::DropUnsynced),
            (1, PowerLoss::KeepRandomSectors(point)),
            (3, PowerLoss::KeepRandomSectors(point + 1)),
            (usize::MAX, PowerLoss::KeepRandomSectors(point + 2)),
            (usize::MAX, PowerLoss::KeepUnsynced),
        ] {
            let disk = FaultBackend::new();
            disk.arm(point, Fault::Crash { torn_sectors });
            let acked = drive(Arc::new(disk.clone()), dir, &batches);
            assert!(disk.crashed(), "point {point} was never reached");
            disk.power_loss(loss);
            let context =
                format!("crash at IO point {point}, torn after {torn_sectors} sectors, {loss:?}");
            let (mut engine, _) = Engine::open(Arc::new(disk.clone()), dir, options(), None)
                .unwrap_or_else(|e| panic!("{context}: reopen failed: {e}"));
            let last = engine.last_index().get() as usize;
            assert!(
                last == acked || last == acked + 1,
                "{context}: {acked} entries acknowledged but the log recovered {last}"
            );
            outcomes[last - acked] += 1;
            runs += 1;
            assert_eq!(
                engine.applied_index().get() as usize,
                last,
                "{context}: everything replayed"
            );
            assert_matches(&mut engine, &models[last], &all_keys, &context);
        }
    }
    // Both outcomes must have been exercised, or the test is not testing the cut-off entry.
    assert!(outcomes[0] > 0 && outcomes[1] > 0, "outcomes {outcomes:?}");
    eprintln!(
        "{runs} crash runs over {points} IO points: {outcomes:?} (recovered = acknowledged, = acknowledged + 1)"
    );
}

#[test]
fn transient_eio_and_enospc_lose_nothing() {
    let batches = workload();
    let models = models(&batches);
    let all_keys: Vec<Vec<u8>> = (0..300).map(key).collect();
    let dir = Path::new("/node");
    for errno in [libc::ENOSPC, libc::EIO] {
        let disk = FaultBackend::new();
        let backend: Arc<dyn Backend> = Arc::new(disk.clone());
        let mut engine = Engine::open(backend.clone(), dir, options(), None)
            .unwrap()
            .0;
        let mut acked = 0;
        for (i, b) in batches.iter().enumerate() {
            if i == 7 {
                disk.arm(disk.io_points(), Fault::FailFrom(errno));
                let err = engine
                    .commit_local(Term(1), b.len() as u64, &encode_batch(b))
                    .unwrap_err();
                assert_eq!(err.is_no_space(), errno == libc::ENOSPC, "{err}");
                // Reads keep working while writes fail.
                assert_matches(&mut engine, &models[acked], &all_keys, "while failing");
                disk.disarm();
            }
            match engine.commit_local(Term(1), b.len() as u64, &encode_batch(b)) {
                Ok(_) => acked += 1,
                // After EIO the log refuses writes until a restart.
                Err(e) => {
                    assert_eq!(errno, libc::EIO, "{e}");
                    break;
                }
            }
        }
        drop(engine);
        disk.power_loss(PowerLoss::DropUnsynced);
        let (mut engine, _) = Engine::open(backend, dir, options(), None).unwrap();
        assert_eq!(engine.last_index().get() as usize, acked, "errno {errno}");
        assert_matches(&mut engine, &models[acked], &all_keys, "after restart");
    }
}

/// A checkpoint that fails (EIO on its journal or in-place writes) loses nothing: its
/// pages are marked changed again, the next checkpoint writes them, and a reopen after a
/// power loss finds every acknowledged entry.
#[test]
fn a_failed_checkpoint_is_retried_by_the_next() {
    let batches = workload();
    let models = models(&batches);
    let all_keys: Vec<Vec<u8>> = (0..300).map(key).collect();
    let dir = Path::new("/node");
    for fail_after in 0..4u64 {
        let disk = FaultBackend::new();
        let backend: Arc<dyn Backend> = Arc::new(disk.clone());
        let mut engine = Engine::open(backend.clone(), dir, options(), None)
            .unwrap()
            .0;
        for b in &batches[..20] {
            engine
                .commit_local(Term(1), b.len() as u64, &encode_batch(b))
                .unwrap();
        }
        // Fail one of the checkpoint's writes (journal, in-place pages, metadata or sync).
        disk.arm(disk.io_points() + fail_after, Fault::Fail(libc::EIO));
        assert!(
            engine.checkpoint().is_err(),
            "the armed write is part of the checkpoint"
        );
        assert!(
            engine.map().dirty_page_count() > 0,
            "its pages are still to be written"
        );
        for b in &batches[20..] {
            engine
                .commit_local(Term(1), b.len() as u64, &encode_batch(b))
                .unwrap();
        }
        engine.checkpoint().unwrap();
        assert_eq!(engine.map().dirty_page_count(), 0);
        drop(engine);
        disk.power_loss(PowerLoss::DropUnsynced);
        let (mut engine, report) = Engine::open(backend, dir, options(), None).unwrap();
        assert_eq!(report.checkpoint_index, LogIndex(ENTRIES as u64));
        assert_eq!(report.replayed_entries, 0);
        assert_matches(
            &mut engine,
            &models[ENTRIES],
            &all_keys,
            &format!("failure at checkpoint write {fail_after}"),
        );
    }
}

/// A checkpoint whose journal is durable but whose in-place step fails must not have its
/// retry overwrite that journal: a crash tearing the retry would otherwise leave the
/// journal before it to be replayed over pages the failed attempt had already written in
/// place (pages ahead of the metadata: a drifting entry count, stale split state).
#[test]
fn a_crash_during_a_checkpoint_retry_keeps_the_last_complete_journal() {
    let set = |range: std::ops::Range<u64>| -> Vec<Write> {
        range.map(|i| Write::Set(key(i), value(i, 100))).collect()
    };
    // A prefill over many pages, then small batches of new keys: each checkpoint after
    // the first writes only the few pages its batch touched.
    let mut batches: Vec<Vec<Write>> = (0..10).map(|b| set(b * 300..(b + 1) * 300)).collect();
    batches.extend((0..20).map(|b| set(3000 + b * 3..3000 + (b + 1) * 3)));
    let models = models(&batches);
    let all_keys: Vec<Vec<u8>> = (0..3060).map(key).collect();
    let dir = Path::new("/node");
    for (fail_at, loss) in [
        ("the in-place sync", PowerLoss::KeepUnsynced),
        ("the in-place sync", PowerLoss::KeepRandomSectors(11)),
        ("the metadata write", PowerLoss::KeepUnsynced),
    ] {
        let disk = FaultBackend::new();
        let backend: Arc<dyn Backend> = Arc::new(disk.clone());
        let (mut engine, _) = Engine::open(backend.clone(), dir, options(), None).unwrap();
        let commit = |engine: &mut Engine, range: std::ops::Range<usize>| {
            for b in &batches[range] {
                engine
                    .commit_local(Term(1), b.len() as u64, &encode_batch(b))
                    .unwrap();
            }
        };
        commit(&mut engine, 0..10);
        engine.checkpoint().unwrap();
        commit(&mut engine, 10..15);
        engine.checkpoint().unwrap();
        commit(&mut engine, 15..20);
        // Learn how many IO points this checkpoint takes by writing it once, then hand
        // its pages back as though it had failed after its journal: the next attempt
        // covers the same pages (into the other journal) and makes the same writes.
        let mut job = engine.checkpoint_begin().unwrap();
        let start = disk.io_points();
        job.write().unwrap();
        let points = disk.io_points() - start;
        engine
            .checkpoint_end(job, Err(std::io::Error::other("not written")))
            .unwrap_err();
        // The last IO points of a checkpoint: the in-place metadata page, then the sync.
        let point = match fail_at {
            "the in-place sync" => disk.io_points() + points - 1,
            _ => disk.io_points() + points - 2,
        };
        disk.arm(point, Fault::Fail(libc::EIO));
        engine.checkpoint().unwrap_err();
        assert_eq!(disk.io_points(), point + 1, "the armed point was the last");
        commit(&mut engine, 20..30);
        // The retry's journal write is torn and the machine dies.
        disk.arm(disk.io_points(), Fault::Crash { torn_sectors: 1 });
        engine.checkpoint().unwrap_err();
        drop(engine);
        disk.power_loss(loss);
        let context = format!("failure at {fail_at}, then {loss:?}");
        let (mut engine, _) = Engine::open(backend, dir, options(), None)
            .unwrap_or_else(|e| panic!("{context}: reopen failed: {e}"));
        assert_eq!(engine.last_index(), LogIndex(30), "{context}");
        assert_matches(&mut engine, &models[30], &all_keys, &context);
    }
}

/// A data directory created by the engine must survive a power loss together with the
/// writes acknowledged in it: every directory the engine creates, and every file, has its
/// entry synced into its parent before anything is acknowledged.
#[test]
fn a_new_data_directory_survives_power_loss_with_its_writes() {
    let batches = workload();
    let models = models(&batches);
    let all_keys: Vec<Vec<u8>> = (0..300).map(key).collect();
    let dir = Path::new("/var/lib/ocean-liner/node-0");
    let disk = FaultBackend::new();
    let backend: Arc<dyn Backend> = Arc::new(disk.clone());
    let (mut engine, _) = Engine::open(backend.clone(), dir, options(), None).unwrap();
    for b in &batches[..10] {
        engine
            .commit_local(Term(1), b.len() as u64, &encode_batch(b))
            .unwrap();
    }
    drop(engine);
    disk.power_loss(PowerLoss::DropUnsynced);
    for path in [
        dir.to_path_buf(),
        dir.join("segments"),
        dir.join("segments/00000000.log"),
        dir.join("map.dat"),
    ] {
        assert!(disk.exists(&path), "{} was lost", path.display());
    }
    let (mut engine, _) = Engine::open(backend, dir, options(), None).unwrap();
    assert_eq!(engine.last_index(), LogIndex(10));
    assert_matches(&mut engine, &models[10], &all_keys, "after power loss");
}

/// Options for the cleaning workload: segments of a few entries each.
fn cleaning_options() -> EngineOptions {
    EngineOptions {
        log: LogOptions {
            prepare_chunk_bytes: 16 << 10,
            cache_bytes: 0,
            segment_bytes: 32 << 10,
        },
        raft_log_retain_bytes: 0,
        bootstrap_membership: None,
    }
}

/// Many overwrites of few keys: most of every segment is dead by the time it is sealed.
fn cleaning_workload() -> Vec<Vec<Write>> {
    let mut rng = Rng(7);
    (0..48)
        .map(|_| {
            let n = 10 + rng.below(20) as usize;
            random_batch(&mut rng, n, 40, 300)
        })
        .collect()
}

/// What the cleaning workload did before it stopped.
#[derive(Debug, Default)]
struct CleaningRun {
    acked: usize,
    moved: u64,
    segments_deleted: u64,
}

/// Runs the cleaning workload: every few entries the cleaner cleans every segment that
/// qualifies, then a checkpoint deletes what it emptied. Stops at the first error.
fn drive_cleaning(backend: Arc<dyn Backend>, dir: &Path, batches: &[Vec<Write>]) -> CleaningRun {
    let mut run = CleaningRun::default();
    let Ok((mut engine, _)) = Engine::open(backend, dir, cleaning_options(), None) else {
        return run;
    };
    let mut cleaner = engine.cleaner(CleanerOptions::default());
    for (i, b) in batches.iter().enumerate() {
        if engine
            .commit_local(Term(1), b.len() as u64, &encode_batch(b))
            .is_err()
        {
            return run;
        }
        run.acked = i + 1;
        if (i + 1) % 4 != 0 {
            continue;
        }
        loop {
            match cleaner.clean_one() {
                Ok(Some(report)) => run.moved += report.moved,
                Ok(None) => break,
                Err(_) => return run,
            }
        }
        cleaner.seal();
        match engine.checkpoint() {
            Ok(reclaimed) => run.segments_deleted += reclaimed.segments,
            Err(_) => return run,
        }
    }
    run
}

/// A crash at every IO point of a workload that cleans and deletes segments as it goes:
/// the copies, the map's new pointers, the checkpoints and the deletions. After power loss
/// the engine holds exactly the model's state at its last entry (the acknowledged one, or
/// the one cut off), every value reads back, and cleaning, checkpointing and reopening
/// once more keeps it so.
#[test]
fn a_crash_at_every_io_point_of_cleaning_loses_nothing() {
    let batches = cleaning_workload();
    let models = models(&batches);
    let all_keys: Vec<Vec<u8>> = (0..40).map(key).collect();
    let dir = Path::new("/node");

    let clean = FaultBackend::new();
    let full = drive_cleaning(Arc::new(clean.clone()), dir, &batches);
    assert_eq!(full.acked, batches.len());
    assert!(
        full.moved > 0 && full.segments_deleted > 2,
        "the workload must clean and delete segments: {full:?}"
    );
    let points = clean.io_points();
    let mut runs = 0;
    for point in 0..points {
        for (torn_sectors, loss) in [
            (0, PowerLoss::DropUnsynced),
            (1, PowerLoss::KeepRandomSectors(point)),
            (usize::MAX, PowerLoss::KeepUnsynced),
        ] {
            let disk = FaultBackend::new();
            disk.arm(point, Fault::Crash { torn_sectors });
            let acked = drive_cleaning(Arc::new(disk.clone()), dir, &batches).acked;
            assert!(disk.crashed(), "point {point} was never reached");
            disk.power_loss(loss);
            let context =
                format!("crash at IO point {point}, torn after {torn_sectors} sectors, {loss:?}");
            let backend: Arc<dyn Backend> = Arc::new(disk.clone());
            let (mut engine, _) = Engine::open(backend.clone(), dir, cleaning_options(), None)
                .unwrap_or_else(|e| panic!("{context}: reopen failed: {e}"));
            let last = engine.last_index().get() as usize;
            assert!(
                last == acked || last == acked + 1,
                "{context}: {acked} entries acknowledged but the log recovered {last}"
            );
            assert_matches(&mut engine, &models[last], &all_keys, &context);
            let mut cleaner = engine.cleaner(CleanerOptions::default());
            while cleaner
                .clean_one()
                .unwrap_or_else(|e| panic!("{context}: cleaning after recovery: {e}"))
                .is_some()
            {}
            cleaner.seal();
            engine.checkpoint().unwrap();
            engine.checkpoint().unwrap();
            drop(engine);
            let (mut engine, _) = Engine::open(backend, dir, cleaning_options(), None)
                .unwrap_or_else(|e| panic!("{context}: second reopen failed: {e}"));
            assert_matches(&mut engine, &models[last], &all_keys, &context);
            runs += 1;
        }
    }
    eprintln!("{runs} crash runs over {points} IO points of a cleaning workload ({full:?})");
}
