//! The map's key hashing under attack: keys that share hash bits, and a secret per map.
//!
//! Method: drive the map directly with chosen 128-bit hashes (what an attacker who knew
//! the hash function could produce from keys) that share their low 64 bits, so no number
//! of page splits can separate them; the map must keep every key reachable, keep its
//! directory within budget, and checkpoint and reload the overflow chains it built. Then
//! check that the hash is keyed: two maps hash one key differently, and a map keeps its
//! own secret across a reopen. Also: a damaged chain link on disk is refused at load.

use ocean_liner::ids::{LogIndex, Term};
use ocean_liner::storage::io::fault::FaultBackend;
use ocean_liner::storage::io::uring::UringBackend;
use ocean_liner::storage::io::{Backend, PAGE_SIZE};
use ocean_liner::storage::store::page::OFFSET_NEXT;
use ocean_liner::storage::store::{DIRECTORY_LEN_FLOOR, Lookup, Map};
use std::path::Path;

/// `count` hashes that agree in their low `shared_bits` bits.
fn flood(count: u64, shared_bits: u32) -> Vec<u128> {
    (0..count)
        .map(|i| {
            let high = (i as u128 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835);
            let mask = (1u128 << shared_bits) - 1;
            (high & !mask) | (0x5A5A_5A5A_5A5A_5A5A & mask)
        })
        .collect()
}

fn check_all(map: &Map, hashes: &[u128], present: impl Fn(usize) -> bool, context: &str) {
    for (i, &h) in hashes.iter().enumerate() {
        let got = map.get(h);
        if present(i) {
            assert_eq!(got, Lookup::InLog(i as u64 * 64), "{context}: key {i}");
        } else {
            assert_eq!(got, Lookup::Missing, "{context}: deleted key {i}");
        }
    }
}

#[test]
fn keys_sharing_all_directory_bits_get_overflow_pages_not_a_huge_directory() {
    for shared_bits in [24, 64] {
        let disk = FaultBackend::new();
        let dir = Path::new("/m");
        let (map, _) = Map::open(&disk, dir).unwrap();
        let hashes = flood(2000, shared_bits);
        for (i, &h) in hashes.iter().enumerate() {
            map.set(h, i as u64 * 64, &[7u8; 100]);
        }
        let context = format!("{shared_bits} shared bits");
        assert!(
            map.directory_len() <= DIRECTORY_LEN_FLOOR,
            "{context}: the directory grew to {} entries for 2000 keys",
            map.directory_len()
        );
        assert!(
            map.page_count() < 100,
            "{context}: {} pages",
            map.page_count()
        );
        check_all(&map, &hashes, |_| true, &context);
        // Overwrites stay in place, deletes find keys anywhere in a chain.
        for (i, &h) in hashes.iter().enumerate() {
            if i.is_multiple_of(3) {
                assert!(map.delete(h), "{context}: delete {i}");
            } else {
                map.set(h, i as u64 * 64, &[8u8; 100]);
            }
        }
        let present = |i: usize| !i.is_multiple_of(3);
        assert_eq!(map.entry_count(), 2000 - 667);
        check_all(&map, &hashes, present, &context);
        map.checkpoint(LogIndex(1), Term(1), b"").unwrap();
        drop(map);
        let (map, _) = Map::open(&disk, dir).unwrap();
        check_all(&map, &hashes, present, &format!("{context}, reopened"));
        assert_eq!(map.entry_count(), 2000 - 667);
        // Freed slots anywhere in the chain are reused before it grows.
        let pages = map.page_count();
        for (i, &h) in hashes
            .iter()
            .enumerate()
            .filter(|(i, _)| i.is_multiple_of(3))
        {
            map.set(h, i as u64 * 64, &[9u8; 100]);
        }
        assert_eq!(map.page_count(), pages, "{context}");
        check_all(&map, &hashes, |_| true, &format!("{context}, refilled"));
    }
}

#[test]
fn a_damaged_overflow_link_is_refused_at_load() {
    let disk = FaultBackend::new();
    let dir = Path::new("/m");
    let (map, _) = Map::open(&disk, dir).unwrap();
    for (i, &h) in flood(400, 64).iter().enumerate() {
        map.set(h, i as u64 * 64, b"");
    }
    map.checkpoint(LogIndex(1), Term(1), b"").unwrap();
    drop(map);
    let path = dir.join("map.dat");
    let mut image = disk.durable_image(&path).unwrap();
    // Bucket page 0 sits after the metadata page; point its chain past the end.
    let link = PAGE_SIZE + OFFSET_NEXT;
    image[link..link + 8].copy_from_slice(&1_000_000u64.to_le_bytes());
    disk.replace_image(&path, image);
    // Without a journal to repair it from.
    for journal in ["ckpt.0", "ckpt.1"] {
        disk.replace_image(&dir.join(journal), Vec::new());
    }
    let err = Map::open(&disk, dir)
        .err()
        .expect("a bad link must be refused");
    assert!(err.to_string().contains("out of range"), "{err}");
}

#[test]
fn each_map_keys_its_hash_with_its_own_secret() {
    let root = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (a, b) = (root.path().join("a"), root.path().join("b"));
    for d in [&a, &b] {
        UringBackend.create_dir_all(d).unwrap();
    }
    let (map_a, _) = Map::open(&UringBackend, &a).unwrap();
    let (map_b, _) = Map::open(&UringBackend, &b).unwrap();
    let key = b"the same key";
    assert_ne!(map_a.key_hash(key), map_b.key_hash(key));
    let before = map_a.key_hash(key);
    map_a.set(before, 4096, b"v");
    map_a.checkpoint(LogIndex(1), Term(1), b"").unwrap();
    drop(map_a);
    let (map_a, _) = Map::open(&UringBackend, &a).unwrap();
    assert_eq!(
        map_a.key_hash(key),
        before,
        "the secret is kept across a reopen"
    );
    assert_eq!(map_a.get(before), Lookup::Inline(b"v".to_vec()));
}
