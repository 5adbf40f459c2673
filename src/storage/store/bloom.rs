//! The bloom filter kept in the map's metadata page.
//!
//! It lets a GET of a key that was never set skip the page lookup. Bits are only ever
//! added (a delete cannot clear them), and at 32128 bits the filter saturates after a few
//! tens of thousands of keys, after which every probe says "maybe": it helps small maps
//! and costs large ones three bit tests.

use super::BLOOM_BYTES;
use std::sync::atomic::{AtomicU64, Ordering};

const WORDS: usize = BLOOM_BYTES / 8;
const BITS: u64 = (WORDS * 64) as u64;
const PROBES: u32 = 3;

pub struct Bloom {
    words: Vec<AtomicU64>,
}

impl Bloom {
    pub fn new() -> Bloom {
        Bloom {
            words: (0..WORDS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub fn load(bytes: &[u8]) -> Bloom {
        Bloom {
            words: bytes
                .chunks_exact(8)
                .map(|c| AtomicU64::new(u64::from_le_bytes(c.try_into().unwrap())))
                .collect(),
        }
    }

    pub fn store(&self, out: &mut [u8]) {
        for (i, w) in self.words.iter().enumerate() {
            out[i * 8..i * 8 + 8].copy_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
        }
    }

    fn bits(hash: u128) -> impl Iterator<Item = u64> {
        // Probes come from the high half of the hash; the directory uses the low half.
        let h = (hash >> 64) as u64;
        let (h1, h2) = (h & 0xFFFF_FFFF, h >> 32);
        (0..PROBES as u64).map(move |i| h1.wrapping_add(i.wrapping_mul(h2)) % BITS)
    }

    /// Takes `other`'s bits (each word at once; a reader in between may see a mix).
    pub fn copy_from(&self, other: &Bloom) {
        for (a, b) in self.words.iter().zip(&other.words) {
            a.store(b.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }

    pub fn insert(&self, hash: u128) {
        for bit in Self::bits(hash) {
            self.words[(bit / 64) as usize].fetch_or(1 << (bit % 64), Ordering::Relaxed);
        }
    }

    pub fn may_contain(&self, hash: u128) -> bool {
        Self::bits(hash).all(|bit| {
            self.words[(bit / 64) as usize].load(Ordering::Relaxed) & (1 << (bit % 64)) != 0
        })
    }
}
