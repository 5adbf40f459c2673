//! The map as a whole: readers racing the single writer, and pages loaded from a damaged
//! disk.
//!
//! The concurrency test runs reader threads against a writer that updates a few hot keys
//! (inline and in-log values, deletes) and adds enough new keys to split pages and grow
//! the arena. Every value and log offset encodes its key and version, so a read that
//! returns anything the writer did not write for that key — a torn or misplaced read —
//! is caught. It also records the writer's longest `set`/`delete`, which the page lock
//! must keep short however many readers crowd a hot page.

use super::*;
use crate::storage::io::fault::FaultBackend;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

const HOT_KEY_COUNT: usize = 8;
const READER_THREAD_COUNT: usize = 3;
/// New keys the writer adds: enough for a few hundred pages, past one arena chunk.
const COLD_KEY_COUNT_MAX: u64 = 48_000;
const COLD_KEYS_PER_ROUND: u64 = 8;
const RUN_TIME_MAX: Duration = Duration::from_secs(3);
/// Generous: the writer waits only for the reads already inside the page.
const WRITER_WAIT_MAX: Duration = Duration::from_millis(200);

fn key_hash_of(map: &Map, id: u64) -> u128 {
    map.key_hash(format!("key-{id}").as_bytes())
}

/// The log offset recorded for `version` of key `id`; both can be read back from it.
fn offset_of(id: u64, version: u64) -> u64 {
    assert!(id < 1 << 24 && version < 1 << 32);
    id << 32 | version
}

/// The value of `version` of key `id`: short enough to go inline (at most 63 bytes) for
/// even versions, longer for odd ones.
fn value_of(id: u64, version: u64) -> Vec<u8> {
    let len = if version.is_multiple_of(2) {
        16 + (version % 48) as usize
    } else {
        64 + (version % 64) as usize
    };
    let mut value = Vec::with_capacity(len);
    value.extend_from_slice(&id.to_le_bytes());
    value.extend_from_slice(&version.to_le_bytes());
    while value.len() < len {
        value.push((id ^ version ^ value.len() as u64) as u8);
    }
    value
}

/// The version a lookup of key `id` found, if any, after checking it is exactly what the
/// writer wrote for that key at that version.
fn version_found(id: u64, found: &Lookup) -> Option<u64> {
    match found {
        Lookup::Missing => None,
        Lookup::Inline(value) => {
            let version = u64::from_le_bytes(value[8..16].try_into().unwrap());
            assert!(
                version.is_multiple_of(2),
                "key {id}: inline value of an in-log version"
            );
            assert_eq!(value, &value_of(id, version), "key {id}: torn inline value");
            Some(version)
        }
        Lookup::InLog(offset) => {
            assert_eq!(
                offset >> 32,
                id,
                "key {id}: another key's offset {offset:#x}"
            );
            // Short values too, when the page's inline slots are all taken.
            Some(offset & 0xFFFF_FFFF)
        }
    }
}

/// The single version each new (cold) key is written at.
fn cold_version(id: u64) -> u64 {
    1 + id % 2
}

#[test]
fn readers_see_only_written_values_and_the_writer_is_not_starved() {
    let disk = FaultBackend::new();
    let (map, _) = Map::open(&disk, Path::new("/map")).unwrap();
    // The newest version the writer started to apply, per hot key (published before it).
    let latest: Vec<AtomicU64> = (0..HOT_KEY_COUNT).map(|_| AtomicU64::new(0)).collect();
    // Cold keys 0..n (ids from HOT_KEY_COUNT) are in the map for good.
    let cold_count = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let (read_count, (op_count, writer_wait_max)) = std::thread::scope(|s| {
        let readers: Vec<_> = (0..READER_THREAD_COUNT)
            .map(|t| {
                let (map, latest, cold_count, stop) = (&map, &latest, &cold_count, &stop);
                s.spawn(move || {
                    let mut read_count = 0u64;
                    let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ t as u64;
                    while !stop.load(Ordering::Relaxed) {
                        let hot = read_count % HOT_KEY_COUNT as u64;
                        let found = map.get(key_hash_of(map, hot));
                        if let Some(v) = version_found(hot, &found) {
                            let newest = latest[hot as usize].load(Ordering::Acquire);
                            assert!(v <= newest, "key {hot}: version {v} not yet written");
                        }
                        if read_count.is_multiple_of(4) {
                            let n = cold_count.load(Ordering::Acquire);
                            if n > 0 {
                                rng ^= rng << 13;
                                rng ^= rng >> 7;
                                rng ^= rng << 17;
                                let id = HOT_KEY_COUNT as u64 + rng % n;
                                let found = map.get(key_hash_of(map, id));
                                assert_eq!(
                                    version_found(id, &found),
                                    Some(cold_version(id)),
                                    "cold key {id} lost"
                                );
                            }
                        }
                        read_count += 1;
                    }
                    read_count
                })
            })
            .collect();
        let writer = s.spawn(|| {
            let deadline = Instant::now() + RUN_TIME_MAX;
            let mut wait_max = Duration::ZERO;
            let mut op_count = 0u64;
            let mut version = 0;
            let mut cold = 0;
            while Instant::now() < deadline && cold < COLD_KEY_COUNT_MAX {
                version += 1;
                for (id, newest) in latest.iter().enumerate() {
                    let id = id as u64;
                    newest.store(version, Ordering::Release);
                    let start = Instant::now();
                    if version.is_multiple_of(7) && id.is_multiple_of(2) {
                        map.delete(key_hash_of(&map, id));
                    } else {
                        map.set(
                            key_hash_of(&map, id),
                            offset_of(id, version),
                            &value_of(id, version),
                        );
                    }
                    wait_max = wait_max.max(start.elapsed());
                    op_count += 1;
                }
                for _ in 0..COLD_KEYS_PER_ROUND {
                    let id = HOT_KEY_COUNT as u64 + cold;
                    let v = cold_version(id);
                    let start = Instant::now();
                    map.set(key_hash_of(&map, id), offset_of(id, v), &value_of(id, v));
                    wait_max = wait_max.max(start.elapsed());
                    op_count += 1;
                    cold += 1;
                    cold_count.store(cold, Ordering::Release);
                }
            }
            stop.store(true, Ordering::Relaxed);
            (op_count, wait_max)
        });
        let writer = writer.join().unwrap();
        let reads: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
        (reads, writer)
    });
    println!(
        "{op_count} writes, {read_count} reads by {READER_THREAD_COUNT} threads, {} pages; \
         longest set/delete {writer_wait_max:?}",
        map.page_count()
    );
    assert!(
        read_count > 0 && map.page_count() > 1,
        "the test raced nothing"
    );
    assert!(
        writer_wait_max < WRITER_WAIT_MAX,
        "the writer waited {writer_wait_max:?} for a page"
    );
}

/// A page on disk whose slot names an inline slot past the 15 a page has would send
/// reads outside the page: loading rejects it.
#[test]
fn open_rejects_a_page_naming_an_inline_slot_it_lacks() {
    let disk = FaultBackend::new();
    let dir = Path::new("/map");
    {
        let (map, _) = Map::open(&disk, dir).unwrap();
        map.set(map.key_hash(b"k"), 4096, b"short");
        map.checkpoint(LogIndex(1), Term(1), &[]).unwrap();
    }
    let path = dir.join("map.dat");
    let mut image = disk.durable_image(&path).unwrap();
    let words = &mut image[PAGE_SIZE..PAGE_SIZE + SLOT_COUNT * 8];
    let slot = words
        .chunks_exact(8)
        .position(|w| u64::from_le_bytes(w.try_into().unwrap()) != page::EMPTY)
        .unwrap();
    assert_eq!(words[slot * 8], 0, "the value went to inline slot 0");
    words[slot * 8] = 200;
    disk.replace_image(&path, image);
    // No journal to replay over the damage.
    disk.replace_image(&dir.join("ckpt.0"), Vec::new());
    disk.replace_image(&dir.join("ckpt.1"), Vec::new());
    let err = Map::open(&disk, dir).err().expect("a damaged page loads");
    assert!(err.to_string().contains("inline slot 200"), "{err}");
}

/// Every key's lookup, for ids `0..n`.
fn lookups(map: &Map, n: u64) -> Vec<Lookup> {
    (0..n).map(|id| map.get(key_hash_of(map, id))).collect()
}

/// A checkpoint copies nothing when it begins; the writer goes on setting, deleting,
/// splitting and relocating while the job writes. What the job writes must still be the
/// map exactly as it was at the checkpoint's index — once with every change made before
/// the job takes any page (so each changed page's image comes from the writer's saved
/// copy), once with the job running on another thread meanwhile.
#[test]
fn a_checkpoint_is_the_map_at_its_index_while_the_writer_goes_on() {
    for concurrent in [false, true] {
        let disk = FaultBackend::new();
        let dir = Path::new("/map");
        let (map, _) = Map::open(&disk, dir).unwrap();
        let map = Arc::new(map);
        let set = |id: u64, version: u64| {
            let hash = key_hash_of(&map, id);
            map.set(hash, offset_of(id, version), &value_of(id, version));
        };
        for id in 0..20_000 {
            set(id, 1);
        }
        map.checkpoint(LogIndex(1), Term(1), b"first").unwrap();
        for id in (0..20_000).step_by(3) {
            set(id, 2);
        }
        let expected = lookups(&map, 40_000);
        let pages_at_index = map.page_count();
        let mut job = map
            .checkpoint_begin(LogIndex(2), Term(1), b"second")
            .unwrap();
        let change = || {
            for id in 0..20_000u64 {
                match id % 4 {
                    0 => set(id, 3),
                    1 => {
                        map.delete(key_hash_of(&map, id));
                    }
                    2 => {
                        let hash = key_hash_of(&map, id);
                        if let Some(from) = map.log_address(hash) {
                            map.relocate(hash, from, offset_of(id, 9));
                        }
                    }
                    _ => set(20_000 + id, 1),
                }
            }
        };
        let result = if concurrent {
            std::thread::scope(|s| {
                let writer = s.spawn(change);
                let result = job.write();
                writer.join().unwrap();
                result
            })
        } else {
            change();
            job.write()
        };
        map.checkpoint_end(job, result).unwrap();
        assert!(map.page_count() > pages_at_index, "the writer split pages");
        if !concurrent {
            // Every page the checkpoint covers was changed first: the writer saved them
            // all, once each, and the job held no other copy.
            let peak = map.checkpoint_copy_peak_bytes() as usize / PAGE_SIZE;
            assert!(peak > 100, "saved images: {peak}");
            assert!(
                peak <= pages_at_index
                    + checkpoint::WRITE_GROUPS_MAX * (1 + checkpoint::GROUP_PAGES),
                "{peak}"
            );
        }
        let (reopened, report) = Map::open(&disk, dir).unwrap();
        assert!(report.journal_replayed);
        assert_eq!(report.sessions, b"second");
        assert_eq!(reopened.meta().last_committed_index, LogIndex(2));
        assert_eq!(reopened.page_count(), pages_at_index);
        let found = lookups(&reopened, 40_000);
        let differ = (0..40_000).filter(|&i| found[i] != expected[i]).count();
        assert_eq!(
            differ, 0,
            "keys whose checkpointed state is not the state at index 2"
        );
    }
}

#[test]
fn dirty_pages_are_a_set_taken_in_order() {
    let mut dirty = DirtyPages::default();
    assert_eq!(dirty.len(), 0);
    for p in [700u32, 3, 64, 63, 3, 0, 700, 128] {
        dirty.insert(p);
    }
    assert_eq!(dirty.len(), 6, "repeats count once");
    assert_eq!(dirty.take(), vec![0, 3, 63, 64, 128, 700]);
    assert_eq!(dirty.len(), 0);
    assert!(dirty.take().is_empty(), "taking empties the set");
    dirty.extend([5, 1, 5]);
    assert_eq!(dirty.take(), vec![1, 5]);
    let all: DirtyPages = (0..130).collect();
    assert_eq!(all.len(), 130);
}

/// The keys of [`format_2_file`]: key, log offset, and the value if it is inline.
fn format_2_keys() -> Vec<(Vec<u8>, u64, Option<Vec<u8>>)> {
    (0..180u64)
        .map(|i| {
            let inline = i
                .is_multiple_of(12)
                .then(|| vec![i as u8; 1 + i as usize % 60]);
            (format!("old-{i}").into_bytes(), 4096 * (i + 1), inline)
        })
        .collect()
}

/// A `map.dat` as format 2 wrote it (128 slots a page, each key's whole 16-byte hash, keys
/// packed from slot 0): the keys of [`format_2_keys`] in two pages split on the lowest
/// hash bit, under the fixed secret of [`map_file_with`].
fn format_2_file() -> Vec<u8> {
    let hasher = KeyHasher::new([7; KEY_SECRET_SIZE]);
    let keys = format_2_keys();
    let mut pages = vec![0u8; 2 * PAGE_SIZE];
    for (p, page) in pages.chunks_exact_mut(PAGE_SIZE).enumerate() {
        page[..1024].fill(0xFF);
        page[page::OFFSET_LOCAL_DEPTH] = 1;
        page[page::OFFSET_PREFIX] = p as u8;
        let (mut used, mut bitmap) = (0usize, 0u16);
        for (key, offset, inline) in &keys {
            let hash = hasher.hash(key);
            if hash as usize & 1 != p {
                continue;
            }
            let inline_slot = match inline {
                Some(value) => {
                    let i = bitmap.count_ones() as usize;
                    let at = page::OFFSET_INLINE + i * page::INLINE_SLOT_SIZE;
                    page[at..at + value.len()].copy_from_slice(value);
                    page[at + page::INLINE_VALUE_SIZE_MAX] = value.len() as u8;
                    bitmap |= 1 << i;
                    i as u8
                }
                None => NOT_INLINE,
            };
            page[used * 8..used * 8 + 8]
                .copy_from_slice(&page::slot_word(*offset, inline_slot).to_le_bytes());
            page[1024 + used * 16..1024 + used * 16 + 16].copy_from_slice(&hash.to_le_bytes());
            used += 1;
        }
        assert!(used <= 128 && bitmap.count_ones() as usize <= page::INLINE_SLOT_COUNT);
        page[page::OFFSET_USED..page::OFFSET_USED + 2]
            .copy_from_slice(&(used as u16).to_le_bytes());
        page[page::OFFSET_BITMAP..page::OFFSET_BITMAP + 2].copy_from_slice(&bitmap.to_le_bytes());
    }
    let mut file = map_file_with(&pages);
    file[..8].copy_from_slice(&META_MAGIC_FORMAT_2);
    // Metadata field 2: the slots of all pages, 128 each in format 2.
    file[24..32].copy_from_slice(&(2 * 128u64).to_le_bytes());
    let hash = xxh3_128(&file[..META_HASH_OFFSET]);
    file[META_HASH_OFFSET..PAGE_SIZE].copy_from_slice(&hash.to_le_bytes());
    file
}

/// Every key of [`format_2_keys`] reads back from `map` as it was written.
fn assert_format_2_keys_found(map: &Map) {
    for (key, offset, inline) in format_2_keys() {
        let expected = match inline {
            Some(value) => Lookup::Inline(value),
            None => Lookup::InLog(offset),
        };
        assert_eq!(
            map.get(map.key_hash(&key)),
            expected,
            "{}",
            String::from_utf8_lossy(&key)
        );
    }
    assert_eq!(map.get(map.key_hash(b"old-180")), Lookup::Missing);
}

/// A map file of the previous page format opens with every key found, stays in that
/// format on disk until a checkpoint (so a node stopped before one upgrades it again),
/// and the checkpoint rewrites every page in the current format.
#[test]
fn a_format_2_map_file_is_read_and_rewritten_in_the_current_format() {
    let disk = FaultBackend::new();
    let dir = Path::new("/map");
    let path = dir.join("map.dat");
    disk.replace_image(&path, format_2_file());
    {
        let (map, _) = Map::open(&disk, dir).unwrap();
        assert_format_2_keys_found(&map);
    }
    assert_eq!(
        disk.durable_image(&path).unwrap()[..8],
        META_MAGIC_FORMAT_2,
        "opening alone rewrote the file"
    );
    let (map, _) = Map::open(&disk, dir).unwrap();
    assert_format_2_keys_found(&map);
    map.set(map.key_hash(b"new"), 1 << 30, b"after the upgrade");
    map.checkpoint(LogIndex(2), Term(1), &[]).unwrap();
    drop(map);
    let file = disk.durable_image(&path).unwrap();
    assert_eq!(file[..8], META_MAGIC);
    for (p, page) in file[PAGE_SIZE..].chunks_exact(PAGE_SIZE).enumerate() {
        assert_eq!(page::check_loaded(page), Ok(()), "page {p}");
        assert_eq!(page::placement_ok(page), Ok(()), "page {p}");
    }
    let (map, _) = Map::open(&disk, dir).unwrap();
    assert_format_2_keys_found(&map);
    assert_eq!(
        map.get(map.key_hash(b"new")),
        Lookup::Inline(b"after the upgrade".to_vec())
    );
}

/// A snapshot's map image from a node of the previous format is upgraded page by page as
/// it arrives.
#[test]
fn a_format_2_map_image_is_upgraded_as_it_arrives() {
    let file = format_2_file();
    let mut builder = image::MapImageBuilder::new(&file[..PAGE_SIZE]).unwrap();
    builder.push_pages(&file[PAGE_SIZE..2 * PAGE_SIZE]).unwrap();
    builder.push_pages(&file[2 * PAGE_SIZE..]).unwrap();
    let map = builder.finish().unwrap();
    assert_format_2_keys_found(&map);
    assert_eq!(map.entry_count(), 180);
}

/// The index costs at most about 46 bytes per key wherever the key count falls in the
/// pages' fill cycle. 312,500 keys (10M / 2^5) sit where 10M do, near the low point of
/// the cycle for 128-slot pages, which cost 53 bytes per key there.
#[test]
fn the_index_takes_under_46_bytes_per_key() {
    let disk = FaultBackend::new();
    let (map, _) = Map::open(&disk, Path::new("/map")).unwrap();
    let keys = 312_500u64;
    for id in 0..keys {
        map.set(key_hash_of(&map, id), offset_of(id, 1), &value_of(id, 1));
    }
    let per_key = (map.page_count() * PAGE_SIZE) as f64 / keys as f64;
    assert!(per_key < 46.0, "{per_key:.1} bytes per key");
    assert!(
        per_key > 30.0,
        "{per_key:.1} bytes per key: pages fuller than splits leave them"
    );
}
