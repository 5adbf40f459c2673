//! Snapshots between two engines: taken while the source goes on writing and cleaning,
//! streamed chunk by chunk, checked, installed over another state, and crash-safe at
//! every IO point of the receiving side.

mod common;

use common::*;
use ocean_liner::ids::{LogIndex, Term};
use ocean_liner::storage::cleaner::CleanerOptions;
use ocean_liner::storage::engine::{Engine, EngineOptions};
use ocean_liner::storage::io::Backend;
use ocean_liner::storage::io::fault::{Fault, FaultBackend, PowerLoss};
use ocean_liner::storage::log::LogOptions;
use ocean_liner::storage::snapshot::{SnapshotSink, SnapshotSource};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

type Model = HashMap<Vec<u8>, Vec<u8>>;

const KEYS: u64 = 300;

fn options() -> EngineOptions {
    EngineOptions {
        log: LogOptions {
            prepare_chunk_bytes: 16 << 10,
            cache_bytes: 0,
            segment_bytes: 64 << 10,
        },
        raft_log_retain_bytes: 0,
        bootstrap_membership: None,
    }
}

fn all_keys() -> Vec<Vec<u8>> {
    (0..KEYS).map(key).collect()
}

/// Runs `entries` random batches on `engine` (cleaning and checkpointing every few), and
/// on `model`.
fn write(engine: &mut Engine, model: &mut Model, rng: &mut Rng, entries: usize) {
    let mut cleaner = engine.cleaner(CleanerOptions::default());
    for i in 0..entries {
        let batch = random_batch(rng, 30, KEYS, 700);
        let term = engine.log().last_term().max(Term(1));
        engine
            .commit_local(term, batch.len() as u64, &encode_batch(&batch))
            .unwrap();
        apply_model(model, &batch);
        if i % 5 == 4 {
            while cleaner.clean_one().unwrap().is_some() {}
            cleaner.seal();
            engine.checkpoint().unwrap();
        }
    }
}

fn open(backend: &FaultBackend, dir: &str) -> Engine {
    Engine::open(Arc::new(backend.clone()), Path::new(dir), options(), None)
        .unwrap()
        .0
}

/// All chunks of a source.
fn chunks(source: &mut SnapshotSource) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(c) = source.next_chunk().unwrap() {
        out.push(c);
    }
    out
}

/// The engine's segment files on disk.
fn segment_files(disk: &FaultBackend, dir: &str) -> Vec<String> {
    let mut names = disk.list_dir(&Path::new(dir).join("segments")).unwrap();
    names.sort();
    names
}

/// A source taken at index S keeps describing S while its engine writes, cleans and
/// checkpoints on (nothing is released meanwhile); installed over another engine's state
/// it leaves exactly the source's state at S, a log that continues at S + 1, and nothing
/// of the old state on disk, before and after a power loss.
#[test]
fn a_snapshot_taken_during_writes_installs_over_another_state() {
    let leader_disk = FaultBackend::new();
    let mut leader = open(&leader_disk, "/leader");
    let mut model = Model::new();
    let mut rng = Rng(11);
    write(&mut leader, &mut model, &mut rng, 40);
    let at = leader.applied_index();
    let snapshot_model = model.clone();
    let mut source = leader.snapshot_source(77);
    assert_eq!(source.header().index, at);
    // The source's engine goes on: values move, segments empty, checkpoints complete.
    let released_before = leader.space().segment_count;
    write(&mut leader, &mut model, &mut rng, 40);
    assert!(
        leader.space().segment_count > released_before,
        "nothing is released while a snapshot is read"
    );
    let stream = chunks(&mut source);
    drop(source);
    assert!(
        leader.checkpoint().unwrap().segments > 0,
        "released once unpinned"
    );

    let follower_disk = FaultBackend::new();
    let mut follower = open(&follower_disk, "/follower");
    let mut old = Model::new();
    write(&mut follower, &mut old, &mut Rng(5), 30);
    let old_files = segment_files(&follower_disk, "/follower");
    let mut sink = SnapshotSink::new(follower.snapshot_target());
    for c in &stream {
        sink.accept(c).unwrap();
    }
    let staged = sink.finish().unwrap();
    assert_eq!(staged.header.index, at);
    follower.install_snapshot(staged).unwrap();
    assert_matches(&mut follower, &snapshot_model, &all_keys(), "after install");
    assert_eq!(follower.applied_index(), at);
    assert_eq!(follower.last_index(), at);
    assert_eq!(follower.log().first_index(), at.next());
    assert_eq!(follower.log().term(at), Some(Term(1)));
    let files = segment_files(&follower_disk, "/follower");
    assert!(
        files.iter().all(|f| !old_files.contains(f)),
        "old segments remain: {files:?} (old {old_files:?})"
    );
    // The log goes on after S.
    let batch = vec![Write::Set(key(1), value(9, 500))];
    let (index, _) = follower
        .commit_local(Term(2), 1, &encode_batch(&batch))
        .unwrap();
    assert_eq!(index, at.next());
    let mut after = snapshot_model.clone();
    apply_model(&mut after, &batch);
    drop(follower);
    follower_disk.power_loss(PowerLoss::DropUnsynced);
    let mut follower = open(&follower_disk, "/follower");
    assert_matches(&mut follower, &after, &all_keys(), "after power loss");
    assert_eq!(follower.last_index(), at.next());
    // And it is a full engine: cleaning and checkpoints work on the installed state.
    write(&mut follower, &mut after, &mut Rng(3), 20);
    drop(follower);
    let mut follower = open(&follower_disk, "/follower");
    assert_matches(&mut follower, &after, &all_keys(), "after more writes");
}

/// Every damaged, missing, repeated or foreign chunk refuses the snapshot with a reason,
/// and the segments it had written are removed.
#[test]
fn a_damaged_stream_is_refused_and_leaves_nothing_behind() {
    let leader_disk = FaultBackend::new();
    let mut leader = open(&leader_disk, "/leader");
    write(&mut leader, &mut Model::new(), &mut Rng(21), 30);
    let stream = chunks(&mut leader.snapshot_source(5));
    let other = chunks(&mut leader.snapshot_source(6));
    assert!(stream.len() > 4, "{} chunks", stream.len());
    let follower_disk = FaultBackend::new();
    let follower = open(&follower_disk, "/follower");
    let files_before = segment_files(&follower_disk, "/follower");
    let rows_before = follower.space().segment_count;
    let mut damaged: Vec<(String, Vec<Vec<u8>>)> = Vec::new();
    for i in [0, 1, 2, stream.len() / 2, stream.len() - 1] {
        let mut s = stream.clone();
        let mid = s[i].len() / 2;
        s[i][mid] ^= 0x40;
        damaged.push((format!("byte flipped in chunk {i}"), s));
        let mut s = stream.clone();
        s.remove(i);
        damaged.push((format!("chunk {i} missing"), s));
        let mut s = stream.clone();
        s.insert(i, stream[i].clone());
        damaged.push((format!("chunk {i} repeated"), s));
        let mut s = stream.clone();
        s[i] = other[i].clone();
        damaged.push((format!("chunk {i} of another snapshot"), s));
        let mut s = stream.clone();
        s[i].pop();
        damaged.push((format!("chunk {i} cut short"), s));
    }
    for (what, s) in damaged {
        let refused = {
            let mut sink = SnapshotSink::new(follower.snapshot_target());
            s.iter().any(|c| sink.accept(c).is_err()) || sink.finish().is_err()
        };
        assert!(refused, "{what}: accepted");
        assert_eq!(
            segment_files(&follower_disk, "/follower"),
            files_before,
            "{what}"
        );
        assert_eq!(follower.space().segment_count, rows_before, "{what}");
    }
}

/// A crash at every IO point of receiving and installing a snapshot: after power loss
/// the engine opens with exactly the old state or exactly the new one, and writes,
/// checkpoints and reopens from there.
#[test]
fn a_crash_at_every_io_point_of_an_install_leaves_the_old_state_or_the_new() {
    let leader_disk = FaultBackend::new();
    let mut leader = open(&leader_disk, "/leader");
    let mut new_model = Model::new();
    write(&mut leader, &mut new_model, &mut Rng(31), 30);
    let at = leader.applied_index();
    let stream = chunks(&mut leader.snapshot_source(9));

    let base = FaultBackend::new();
    let mut old_model = Model::new();
    let old_at = {
        let mut follower = open(&base, "/f");
        write(&mut follower, &mut old_model, &mut Rng(8), 12);
        follower.checkpoint().unwrap();
        follower.applied_index()
    };
    let install = |disk: &FaultBackend| -> bool {
        let Ok((mut follower, _)) =
            Engine::open(Arc::new(disk.clone()), Path::new("/f"), options(), None)
        else {
            return false;
        };
        let mut sink = SnapshotSink::new(follower.snapshot_target());
        for c in &stream {
            if sink.accept(c).is_err() {
                return false;
            }
        }
        let Ok(staged) = sink.finish() else {
            return false;
        };
        follower.install_snapshot(staged).is_ok()
    };
    let clean = base.deep_copy();
    let start = clean.io_points();
    assert!(install(&clean));
    let points = clean.io_points() - start;
    let (mut saw_old, mut saw_new) = (0, 0);
    for offset in 0..points {
        for (torn_sectors, loss) in [
            (0, PowerLoss::DropUnsynced),
            (1, PowerLoss::KeepRandomSectors(offset)),
            (usize::MAX, PowerLoss::KeepUnsynced),
        ] {
            let disk = base.deep_copy();
            disk.arm(disk.io_points() + offset, Fault::Crash { torn_sectors });
            install(&disk);
            assert!(disk.crashed(), "point {offset} not reached");
            disk.power_loss(loss);
            let context = format!("crash at install IO point {offset}/{points}, {loss:?}");
            let backend: Arc<dyn Backend> = Arc::new(disk.clone());
            let (mut follower, _) = Engine::open(backend.clone(), Path::new("/f"), options(), None)
                .unwrap_or_else(|e| panic!("{context}: reopen failed: {e}"));
            let (model, index) = if follower.applied_index() == at && at != old_at {
                saw_new += 1;
                (new_model.clone(), at)
            } else {
                saw_old += 1;
                (old_model.clone(), old_at)
            };
            assert_eq!(follower.applied_index(), index, "{context}");
            assert_matches(&mut follower, &model, &all_keys(), &context);
            let mut model = model;
            write(&mut follower, &mut model, &mut Rng(offset + 1), 6);
            drop(follower);
            let (mut follower, _) = Engine::open(backend, Path::new("/f"), options(), None)
                .unwrap_or_else(|e| panic!("{context}: second reopen failed: {e}"));
            assert_matches(&mut follower, &model, &all_keys(), &context);
        }
    }
    eprintln!("{points} IO points: old state {saw_old} times, new state {saw_new} times");
    assert!(saw_old > 0 && saw_new > 0);
    let _ = LogIndex::ZERO;
}
