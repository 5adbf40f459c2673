//! Per-operation cost of the in-memory map at 1,000,000 keys.
//!
//! Two maps are pre-loaded, one with 32-byte values (eligible for an inline slot) and one
//! with 100-byte values (always a reference into the log). Each is measured for GET hit,
//! GET miss, SET overwrite of an existing key and a DELETE + re-SET pair, over keys drawn
//! at random. The key hashes are computed up front and read sequentially, so hashing is
//! not part of the measurement, except in `get_hit_with_hash`, which hashes a 16-byte key
//! on every call.
//!
//! The maps live on real O_DIRECT files under /var/tmp, although no operation measured
//! here touches the disk (only a checkpoint would).
//!
//! Run: `cargo bench --bench map -- --warm-up-time 1 --measurement-time 5`

use criterion::{Criterion, criterion_group, criterion_main};
use ocean_liner::storage::io::uring::UringBackend;
use ocean_liner::storage::store::{Lookup, Map};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::hint::black_box;
use std::time::Instant;

/// Keys pre-loaded into each map.
const KEYS: u64 = 1_000_000;
/// Length of each precomputed random access sequence (a power of two).
const SEQUENCE: usize = 1 << 20;
/// Stand-in distance between the log offsets of consecutive keys' SET commands.
const OFFSET_STRIDE: u64 = 256;

/// The 16-byte key of key number `i`.
fn key(i: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k.copy_from_slice(format!("key:{i:012}").as_bytes());
    k
}

/// A key that is never loaded.
fn missing_key(i: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k.copy_from_slice(format!("abs:{i:012}").as_bytes());
    k
}

/// A loaded map and the inputs measured against it.
struct Fixture {
    map: Map,
    _dir: tempfile::TempDir,
    value: Vec<u8>,
    /// (hash, stand-in offset) of loaded keys, in random order.
    hits: Vec<(u128, u64)>,
    /// Hashes of keys never loaded, in random order.
    misses: Vec<u128>,
    /// Loaded keys themselves, in random order.
    hit_keys: Vec<[u8; 16]>,
}

fn fixture(value_len: usize, rng: &mut StdRng) -> Fixture {
    std::fs::create_dir_all("/var/tmp").expect("create /var/tmp");
    let dir = tempfile::Builder::new()
        .prefix("ol-bench-map-")
        .tempdir_in("/var/tmp")
        .expect("temp dir under /var/tmp");
    let (map, _) = Map::open(&UringBackend, dir.path()).expect("open map");
    let value = vec![0x5Au8; value_len];
    let hashes: Vec<u128> = (0..KEYS).map(|i| map.key_hash(&key(i))).collect();
    let started = Instant::now();
    for (i, &h) in hashes.iter().enumerate() {
        map.set(h, i as u64 * OFFSET_STRIDE, &value);
    }
    let load = started.elapsed();
    assert_eq!(map.entry_count(), KEYS);

    let picks: Vec<u64> = (0..SEQUENCE).map(|_| rng.gen_range(0..KEYS)).collect();
    let hits: Vec<(u128, u64)> = picks
        .iter()
        .map(|&i| (hashes[i as usize], i * OFFSET_STRIDE))
        .collect();
    let hit_keys: Vec<[u8; 16]> = picks.iter().map(|&i| key(i)).collect();
    let misses: Vec<u128> = (0..SEQUENCE as u64)
        .map(|_| map.key_hash(&missing_key(rng.gen_range(0..1_000_000_000_000u64))))
        .collect();

    let inline = hits[..100_000]
        .iter()
        .filter(|(h, _)| matches!(map.get(*h), Lookup::Inline(_)))
        .count();
    eprintln!(
        "map with {KEYS} keys of {value_len}-byte values: loaded in {:.2} s, {} pages \
         ({:.1} keys/page), {:.1}% of sampled hits stored inline",
        load.as_secs_f64(),
        map.page_count(),
        KEYS as f64 / map.page_count() as f64,
        inline as f64 / 1000.0,
    );
    Fixture {
        map,
        _dir: dir,
        value,
        hits,
        misses,
        hit_keys,
    }
}

fn bench_map(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(0x0CEA_11E7);
    for (label, value_len) in [("inline32", 32usize), ("inlog100", 100usize)] {
        let f = fixture(value_len, &mut rng);
        let mask = SEQUENCE - 1;
        let mut group = c.benchmark_group(format!("map_1M_{label}"));

        let mut i = 0usize;
        group.bench_function("get_hit", |b| {
            b.iter(|| {
                let (h, _) = f.hits[i & mask];
                i += 1;
                let found = f.map.get(h);
                debug_assert!(found != Lookup::Missing);
                black_box(found)
            })
        });

        let mut i = 0usize;
        group.bench_function("get_miss", |b| {
            b.iter(|| {
                let h = f.misses[i & mask];
                i += 1;
                black_box(f.map.get(h))
            })
        });

        let mut i = 0usize;
        group.bench_function("get_hit_with_hash", |b| {
            b.iter(|| {
                let k = &f.hit_keys[i & mask];
                i += 1;
                black_box(f.map.get(f.map.key_hash(black_box(k))))
            })
        });

        let mut i = 0usize;
        group.bench_function("set_overwrite", |b| {
            b.iter(|| {
                let (h, offset) = f.hits[i & mask];
                i += 1;
                f.map.set(h, offset, black_box(&f.value));
            })
        });

        let mut i = 0usize;
        group.bench_function("delete_then_set", |b| {
            b.iter(|| {
                let (h, offset) = f.hits[i & mask];
                i += 1;
                let removed = f.map.delete(h);
                debug_assert!(removed);
                f.map.set(h, offset, black_box(&f.value));
                black_box(removed)
            })
        });

        group.finish();
        assert_eq!(f.map.entry_count(), KEYS);
    }
}

criterion_group!(benches, bench_map);
criterion_main!(benches);
