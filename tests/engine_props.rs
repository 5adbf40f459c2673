//! Property tests of the storage engine against `std::collections::HashMap`.
//!
//! Method: proptest generates random sequences of batches of SET/DELETE (keys from a space
//! of 10,000 names of varying length, values of 0..=1000 bytes) interleaved with GETs,
//! checkpoints and reopenings. After every step each key touched so far must read back as
//! the model says. The map starts with a single page, so every run goes through many page
//! splits and directory doublings; checkpoints land at arbitrary points between them, and
//! so do cleaning passes (with small segments, so that several roll over and go). The
//! segments' live counts must equal the map's pointers into each after every step. One
//! property runs on the in-memory backend (many cases), one on real O_DIRECT files.

mod common;

use common::small_engine_options as options;
use common::*;
use ocean_liner::ids::{LogIndex, Term};
use ocean_liner::storage::cleaner::CleanerOptions;
use ocean_liner::storage::engine::Engine;
use ocean_liner::storage::io::Backend;
use ocean_liner::storage::io::fault::FaultBackend;
use ocean_liner::storage::io::uring::UringBackend;
use ocean_liner::storage::log::segments::split_address;
use proptest::prelude::*;
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, Clone)]
enum Step {
    Batch(Vec<(u16, Option<u16>)>),
    Checkpoint,
    Reopen,
    /// Clean every sealed segment up to 90% live.
    Clean,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => prop::collection::vec((0u16..10_000, prop::option::weighted(0.8, 0u16..=1000)), 1..60)
            .prop_map(Step::Batch),
        1 => Just(Step::Checkpoint),
        1 => Just(Step::Reopen),
        1 => Just(Step::Clean),
    ]
}

fn run(backend: Arc<dyn Backend>, dir: &Path, steps: &[Step]) {
    let mut engine = Engine::open(backend.clone(), dir, options(), None)
        .unwrap()
        .0;
    let mut model = HashMap::new();
    let mut touched = BTreeSet::new();
    for (n, step) in steps.iter().enumerate() {
        match step {
            Step::Batch(ops) => {
                let writes: Vec<Write> = ops
                    .iter()
                    .map(|&(k, v)| match v {
                        Some(len) => {
                            Write::Set(key(k as u64), value(k as u64 ^ len as u64, len as usize))
                        }
                        None => Write::Delete(key(k as u64)),
                    })
                    .collect();
                engine
                    .commit_local(Term(1), writes.len() as u64, &encode_batch(&writes))
                    .unwrap();
                apply_model(&mut model, &writes);
                touched.extend(ops.iter().map(|&(k, _)| key(k as u64)));
            }
            Step::Checkpoint => {
                engine.checkpoint().unwrap();
            }
            Step::Reopen => {
                drop(engine);
                engine = Engine::open(backend.clone(), dir, options(), None)
                    .unwrap()
                    .0;
            }
            Step::Clean => {
                let mut cleaner = engine.cleaner(CleanerOptions {
                    live_fraction_max: 0.9,
                    ..CleanerOptions::default()
                });
                // Cleaning must come to an end: copies are as live as what they copied, so
                // with no writes in between nothing qualifies twice.
                let mut passes = 0;
                while cleaner.clean_one().unwrap().is_some() {
                    passes += 1;
                    assert!(passes < 1000, "after step {n}: cleaning does not terminate");
                }
                cleaner.seal();
            }
        }
        let keys: Vec<_> = touched.iter().cloned().collect();
        assert_matches(&mut engine, &model, &keys, &format!("after step {n}"));
        // The live accounting is exact with one thread: the table's live values are the
        // map's log-backed keys, segment by segment.
        let mut by_segment = std::collections::BTreeMap::<u64, i64>::new();
        engine.map().for_each_log_address(|a| {
            *by_segment.entry(split_address(a).0).or_default() += 1;
        });
        for (no, row) in engine.log().segments().snapshot() {
            assert_eq!(
                row.live_count,
                by_segment.get(&no).copied().unwrap_or(0),
                "after step {n}: live values of segment {no}"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_hashmap_in_memory(steps in prop::collection::vec(step(), 1..40)) {
        run(Arc::new(FaultBackend::new()), Path::new("/data"), &steps);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_hashmap_on_real_files(steps in prop::collection::vec(step(), 1..25)) {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        run(Arc::new(UringBackend), dir.path(), &steps);
    }
}

/// Many keys: the map grows to hundreds of pages; every key must survive splits,
/// a checkpoint and a reopen.
#[test]
fn growth_keeps_every_key_through_checkpoint_and_reopen() {
    let backend: Arc<dyn Backend> = Arc::new(FaultBackend::new());
    let dir = Path::new("/grow");
    let mut engine = Engine::open(backend.clone(), dir, options(), None)
        .unwrap()
        .0;
    let mut model = HashMap::new();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for round in 0..50u64 {
        let writes: Vec<Write> = (0..1000)
            .map(|i| {
                let k = key(round * 1000 + i);
                Write::Set(k, value(rng.next(), rng.below(120) as usize))
            })
            .collect();
        engine
            .commit_local(Term(1), writes.len() as u64, &encode_batch(&writes))
            .unwrap();
        apply_model(&mut model, &writes);
        if round == 25 {
            engine.checkpoint().unwrap();
        }
    }
    let pages = engine.map().page_count();
    assert!(
        pages > 300,
        "50k keys need several hundred pages, got {pages}"
    );
    let keys: Vec<_> = model.keys().cloned().collect();
    assert_matches(&mut engine, &model, &keys, "before reopen");
    drop(engine);
    let (mut engine, report) = Engine::open(backend, dir, options(), None).unwrap();
    assert_eq!(report.checkpoint_index, LogIndex(26));
    assert_eq!(report.replayed_entries, 24);
    assert_matches(&mut engine, &model, &keys, "after reopen");
}
