//! Helpers shared by the engine tests: a model of the key space and a workload driver.
#![allow(dead_code)]

use ocean_liner::storage::command::{self, CommandOp};
use ocean_liner::storage::engine::Engine;
use std::collections::HashMap;

/// One client-level write.
#[derive(Debug, Clone)]
pub enum Write {
    Set(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
}

/// Encodes a batch of writes as one entry's commands region.
pub fn encode_batch(writes: &[Write]) -> Vec<u8> {
    let mut out = Vec::new();
    for w in writes {
        match w {
            Write::Set(k, v) => command::encode(&mut out, CommandOp::Set, 0, 0, k, v),
            Write::Delete(k) => command::encode(&mut out, CommandOp::Delete, 0, 0, k, b""),
        }
    }
    out
}

/// Applies a batch to the model.
pub fn apply_model(model: &mut HashMap<Vec<u8>, Vec<u8>>, writes: &[Write]) {
    for w in writes {
        match w {
            Write::Set(k, v) => {
                model.insert(k.clone(), v.clone());
            }
            Write::Delete(k) => {
                model.remove(k);
            }
        }
    }
}

/// Asserts that every key of `keys` reads back as the model says.
pub fn assert_matches(
    engine: &mut Engine,
    model: &HashMap<Vec<u8>, Vec<u8>>,
    keys: &[Vec<u8>],
    context: &str,
) {
    for k in keys {
        let got = engine
            .get(k)
            .unwrap_or_else(|e| panic!("{context}: get failed: {e}"));
        assert_eq!(
            got.as_deref(),
            model.get(k).map(Vec::as_slice),
            "{context}: key {:?}",
            String::from_utf8_lossy(k)
        );
    }
    assert_eq!(
        engine.map().entry_count(),
        model.len() as u64,
        "{context}: entry count"
    );
}

/// A deterministic pseudo-random generator for workloads.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Key `i` of a key space, with lengths that vary from 1 to ~60 bytes.
pub fn key(i: u64) -> Vec<u8> {
    let pad = (i * 7919) % 50;
    format!("k{i}-{}", "x".repeat(pad as usize)).into_bytes()
}

/// A value of `len` bytes derived from a seed.
pub fn value(seed: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|j| (seed.wrapping_mul(31).wrapping_add(j as u64)) as u8)
        .collect()
}

/// A batch of `n` random writes over `key_space` keys.
pub fn random_batch(rng: &mut Rng, n: usize, key_space: u64, value_max: usize) -> Vec<Write> {
    (0..n)
        .map(|_| {
            let k = key(rng.below(key_space));
            if rng.below(5) == 0 {
                Write::Delete(k)
            } else {
                let len = match rng.below(3) {
                    0 => rng.below(64) as usize,
                    _ => rng.below(value_max as u64 + 1) as usize,
                };
                Write::Set(k, value(rng.next(), len))
            }
        })
        .collect()
}

/// Engine options for tests: small log chunks, cache and segments, so that segments roll
/// over and go within a test's few writes.
pub fn small_engine_options() -> ocean_liner::storage::engine::EngineOptions {
    ocean_liner::storage::engine::EngineOptions {
        log: ocean_liner::storage::log::LogOptions {
            prepare_chunk_bytes: 256 << 10,
            cache_bytes: 1 << 20,
            segment_bytes: 64 << 10,
        },
        raft_log_retain_bytes: 0,
        bootstrap_membership: None,
    }
}
