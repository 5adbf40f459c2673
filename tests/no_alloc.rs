//! The GET path allocates nothing per request: a map lookup hands its inline value over
//! borrowed from the page, and a log read answered by the entry cache or the value cache
//! hands the value over borrowed from that cache. Counted with a global allocator that
//! counts the allocations of the thread under test.

use ocean_liner::ids::{LogIndex, Term};
use ocean_liner::storage::command::{self, CommandOp};
use ocean_liner::storage::io::fault::FaultBackend;
use ocean_liner::storage::io::uring::UringBackend;
use ocean_liner::storage::log::{Log, LogOptions, NewEntry, ValueCache, ValueRead};
use ocean_liner::storage::store::{LookupRef, Map};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;
use std::sync::{Arc, Mutex};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    // `try_with`: the slot may be gone while the thread exits.
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

// SAFETY: every call is passed on to the system allocator unchanged; the counter is a
// thread-local Cell that allocates nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Allocations made by this thread while `f` runs.
fn allocations_in(f: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

#[test]
fn map_lookups_allocate_nothing() {
    let disk = FaultBackend::new();
    let (map, _) = Map::open(&disk, Path::new("/m")).unwrap();
    let keys: Vec<Vec<u8>> = (0..2000)
        .map(|i| format!("key:{i:010}").into_bytes())
        .collect();
    for (i, k) in keys.iter().enumerate() {
        // Short values go inline (15 slots a page), long ones are only a log address.
        let value = vec![i as u8; if i % 2 == 0 { 20 } else { 100 }];
        map.set(map.key_hash(k), 4096 * i as u64, &value);
    }
    let mut out = Vec::with_capacity(64);
    let (mut inline, mut in_log) = (0, 0);
    let n = allocations_in(|| {
        for k in &keys {
            map.get_with(map.key_hash(k), |found| match found {
                LookupRef::Inline(v) => {
                    out.clear();
                    out.extend_from_slice(v);
                    inline += 1;
                }
                LookupRef::InLog(_) => in_log += 1,
                LookupRef::Missing => panic!("a key set is missing"),
            });
        }
    });
    assert!(
        inline > 200 && in_log > 1000,
        "{inline} inline, {in_log} in the log"
    );
    assert_eq!(n, 0, "{n} allocations for {} lookups", keys.len());
}

/// A SET in the log: its address, key and value.
type Set = (u64, Vec<u8>, Vec<u8>);

/// A log of `entries` entries of 50 SETs of 100-byte values; returns each SET's log
/// address, key and value.
fn log_with_sets(path: &Path, options: LogOptions, entries: u64) -> (Log, Vec<Set>) {
    let (mut log, _) = Log::open(Arc::new(UringBackend), path, options).unwrap();
    for i in 1..=entries {
        let mut commands = Vec::new();
        for c in 0..50u64 {
            let key = format!("key:{i}:{c}");
            let value = vec![(i + c) as u8; 100];
            command::encode(&mut commands, CommandOp::Set, i, c, key.as_bytes(), &value);
        }
        let entry = NewEntry {
            term: Term(1),
            log_index: LogIndex(i),
            num_commands: 50,
            commands: &commands,
        };
        log.append(&[entry]).unwrap();
    }
    let mut sets = Vec::new();
    for i in 1..=entries {
        let entry = log.read(LogIndex(i)).unwrap();
        for cmd in entry.iter() {
            let cmd = cmd.unwrap();
            let address = entry.command_file_offset(cmd.offset);
            sets.push((address, cmd.key.to_vec(), cmd.value.to_vec()));
        }
    }
    (log, sets)
}

/// Reads every SET back through `read_values_with`, checking each value, twice: the
/// second pass must allocate nothing (the first may grow the reader's scratch list).
fn read_back_allocates_nothing(reader: &mut ocean_liner::storage::log::LogReader, sets: &[Set]) {
    let wanted: Vec<(u64, &[u8])> = sets.iter().map(|(a, k, _)| (*a, &k[..])).collect();
    let mut seen = vec![false; sets.len()];
    for pass in 0..2 {
        seen.fill(false);
        let n = allocations_in(|| {
            reader.read_values_with(&wanted, |i, got| {
                assert_eq!(got.unwrap(), ValueRead::Value(&sets[i].2[..]), "read {i}");
                seen[i] = true;
            });
        });
        assert!(seen.iter().all(|&s| s), "every read answered once");
        if pass == 1 {
            assert_eq!(n, 0, "{n} allocations for {} cached reads", sets.len());
        }
    }
}

#[test]
fn cached_log_reads_allocate_nothing() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    // Values in the cache of recent entries.
    let options = LogOptions {
        prepare_chunk_bytes: 1 << 20,
        cache_bytes: 64 << 20,
        ..LogOptions::default()
    };
    let (log, sets) = log_with_sets(&dir.path().join("recent"), options, 8);
    read_back_allocates_nothing(&mut log.reader(), &sets);
    // Values in the value cache: the first pass reads them from the disk and fills it.
    let options = LogOptions {
        prepare_chunk_bytes: 1 << 20,
        cache_bytes: 0,
        ..LogOptions::default()
    };
    let (log, sets) = log_with_sets(&dir.path().join("cold"), options, 8);
    let values = Arc::new(Mutex::new(ValueCache::new(16 << 20)));
    let mut reader = log.reader().with_value_cache(values);
    read_back_allocates_nothing(&mut reader, &sets);
    // A read of a key other than the SET's reads as OtherKey, from either cache.
    let (address, _, _) = sets[0];
    reader.read_values_with(&[(address, b"another key")], |_, got| {
        assert_eq!(got.unwrap(), ValueRead::OtherKey);
    });
}
