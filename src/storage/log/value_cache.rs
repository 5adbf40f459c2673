//! Values kept in memory by how often they are read, under a byte budget.
//!
//! The entry cache ([`super::EntryCache`]) keeps what was *written* last; on a store that
//! has grown past it, a GET of an older key would otherwise cost an O_DIRECT read every
//! time. This cache holds the values that GETs read from the disk and, on a server, the
//! values of applied SETs (put in off the replication core, see
//! [`crate::storage::engine::fill_value_cache`]), keyed by the log address of their SET
//! command, and keeps the ones read again.
//!
//! # Layout
//!
//! The values live in one ring of bytes as large as the budget, allocated zeroed, so the
//! kernel backs it with memory only as far as it has been written. Each record is
//!
//! ```text
//! offset  size
//!      0     8  bits 0..55: the SET's log address; bit 56: read since it was (re)written;
//!               bits 57..63: the key's fingerprint, high 7 bits
//!      8     4  bits 0..24: the value's length; bits 25..31: the fingerprint, low 7 bits
//!     12     n  the value, padded to a multiple of 4
//! ```
//!
//! The fingerprint is 14 bits of the key's xxh3-64. An index finds each cached address's
//! record: a hash table of record positions alone (in units of 4 bytes), which compares a
//! candidate's address in the ring itself, so a bucket costs 5 bytes (the position and
//! the table's control byte) where one holding the address as well cost 13. A record
//! costs 12 bytes plus its value in the ring and its share of the buckets: 118 to 124
//! bytes for a 100-byte value, as the table's fill goes from 7/8 to 7/16, where a heap
//! allocation per value cost over 200.
//!
//! # Eviction: FIFO with reinsertion (CLOCK's order)
//!
//! New records go at the head; room is made at the tail. A tail record read since it was
//! written is moved to the head with its bit cleared (a second chance); one not read
//! since is dropped. That is CLOCK's policy, with the ring as the clock: a value read once
//! and never again is the first to go, a hot one survives any number of passes. While
//! less than half the ring holds values that can still be found, every such value gets the
//! second chance, so a store whose keys are overwritten again and again loses the dead
//! copies, not the live ones that were not read lately. At most
//! [`SECOND_CHANCES_MAX`] records are moved per insertion, so an insertion under the lock
//! does bounded work even when every value is hot (the next one is then dropped).
//!
//! Records whose value no map slot points at any more (the key was set again or deleted,
//! see [`ValueCache::remove`]) leave the index at once and their bytes at the tail.
//!
//! Addresses are stable: the map only hands out addresses of applied entries, which are
//! never truncated or rewritten, so a cached value never goes stale. The map tells keys
//! apart by hash (96 bits); a read from the log compares the whole key, and a hit here
//! compares the key's fingerprint, so a hash collision reads as another key's SET in
//! both (the chance that a 96-bit collision also agrees on the fingerprint is 2^-14).

use super::ValueRead;
use std::hash::BuildHasher;

/// Bytes of a record's header.
const HEADER_BYTES: usize = 12;
/// Records are aligned to this, and the index counts ring positions in it.
const UNIT: usize = 4;
/// The largest budget positions of `u32` units can address.
pub const BUDGET_BYTES_MAX: usize = (u32::MAX as usize) * UNIT;
/// A single value may take at most this fraction of the budget.
const VALUE_SHARE_MAX: usize = 16;
/// Lines of a record's value a batch read prefetches at most.
const PREFETCH_LINES_MAX: usize = 4;
/// Records given a second chance per insertion at most.
const SECOND_CHANCES_MAX: usize = 128;
/// The address bits of a record's first word. The all-ones address is not cached, so no
/// record's first word is [`WRAP`].
const ADDRESS_MASK: u64 = (1 << 56) - 1;
/// A record's first word: read since it was written.
const REFERENCED: u64 = 1 << 56;
/// Where a record's first word keeps the fingerprint's high bits.
const WORD_FINGERPRINT_SHIFT: u32 = 57;
/// The length bits of a record's second field; longer values are not cached.
const LENGTH_MASK: u32 = (1 << 25) - 1;
/// Where a record's second field keeps the fingerprint's low bits.
const LENGTH_FINGERPRINT_SHIFT: u32 = 25;
/// Bits of the key's fingerprint: 7 in each field.
const FINGERPRINT_BITS: u32 = 14;
/// The first word of the padding at the ring's end (the next record is at 0).
const WRAP: u64 = u64::MAX;

/// A zeroed ring whose whole 2 MiB stretches the kernel is asked to back with
/// transparent huge pages (a GET reads a random record: with 4 KiB pages, a TLB miss
/// too). The zeroed allocation of this size is a fresh mapping not yet touched, so the
/// advice comes before any page is.
fn huge_zeroed(capacity: usize) -> Vec<u8> {
    const HUGE: usize = 2 << 20;
    let ring = vec![0u8; capacity];
    let start = ring.as_ptr() as usize;
    let first = start.next_multiple_of(HUGE);
    let end = (start + capacity) / HUGE * HUGE;
    if end > first {
        // SAFETY: madvise only advises: [first, end) lies inside the ring's allocation,
        // is page aligned, and no byte of it is read or written by the call.
        unsafe {
            libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE);
        }
    }
    ring
}

fn fingerprint(key: &[u8]) -> u32 {
    xxhash_rust::xxh3::xxh3_64(key) as u32 & ((1 << FINGERPRINT_BITS) - 1)
}

/// A record's two header fields for a value of `len` bytes (at most [`LENGTH_MASK`]) at
/// `address` of a key with fingerprint `print`, not yet read.
fn header_fields(address: u64, len: usize, print: u32) -> (u64, u32) {
    let half = FINGERPRINT_BITS / 2;
    let word = address | u64::from(print >> half) << WORD_FINGERPRINT_SHIFT;
    let second = len as u32 | (print & ((1 << half) - 1)) << LENGTH_FINGERPRINT_SHIFT;
    (word, second)
}

/// The fingerprint kept in a record's two header fields.
fn fingerprint_of(word: u64, second: u32) -> u32 {
    let half = FINGERPRINT_BITS / 2;
    ((word >> WORD_FINGERPRINT_SHIFT) as u32) << half | second >> LENGTH_FINGERPRINT_SHIFT
}

/// The 8 bytes of the ring at `pos`.
fn word_in(ring: &[u8], pos: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&ring[pos..pos + 8]);
    u64::from_le_bytes(b)
}

/// The address in the first word of the record at ring unit `unit`.
fn address_in(ring: &[u8], unit: u32) -> u64 {
    word_in(ring, unit as usize * UNIT) & ADDRESS_MASK
}

fn record_bytes(value_len: usize) -> usize {
    HEADER_BYTES + value_len.div_ceil(UNIT) * UNIT
}

/// Values by log address in a ring, evicted in CLOCK's order.
pub struct ValueCache {
    ring: Vec<u8>,
    /// Where the next record goes.
    head: usize,
    /// The oldest record (or the wrap padding before it).
    tail: usize,
    /// Ring bytes between the tail and the head, padding included.
    used: usize,
    /// Ring bytes of the records the index points at.
    live: usize,
    /// The positions (in units) of the records the cache can find, hashed by their
    /// address with `hasher`; the address is read from the ring.
    index: hashbrown::HashTable<u32>,
    hasher: ahash::RandomState,
    hits: u64,
    misses: u64,
}

impl ValueCache {
    /// A cache of at most `budget_bytes` (0 disables it; capped at [`BUDGET_BYTES_MAX`]).
    pub fn new(budget_bytes: usize) -> ValueCache {
        let capacity = budget_bytes.min(BUDGET_BYTES_MAX) / UNIT * UNIT;
        ValueCache {
            // Zeroed: the allocator maps fresh pages, so memory is used as the ring fills.
            ring: huge_zeroed(capacity),
            head: 0,
            tail: 0,
            used: 0,
            live: 0,
            index: hashbrown::HashTable::new(),
            hasher: ahash::RandomState::new(),
            hits: 0,
            misses: 0,
        }
    }

    fn word_at(&self, pos: usize) -> u64 {
        word_in(&self.ring, pos)
    }

    fn set_word_at(&mut self, pos: usize, word: u64) {
        self.ring[pos..pos + 8].copy_from_slice(&word.to_le_bytes());
    }

    fn u32_at(&self, pos: usize) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.ring[pos..pos + 4]);
        u32::from_le_bytes(b)
    }

    /// Ring bytes of the record at `pos`, header and padding included.
    /// Starts loading the lines of the record at `pos` past its first (at most
    /// `PREFETCH_LINES_MAX`): a hint, with no effect on what is read.
    fn prefetch_record(&self, pos: usize) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            let end = (pos + self.record_bytes_at(pos)).min(self.ring.len());
            let first_line = pos / 64 * 64;
            for line in (first_line + 64..end).step_by(64).take(PREFETCH_LINES_MAX) {
                // SAFETY: SSE is part of the x86_64 baseline; `line` lies inside the ring,
                // and a prefetch never faults or changes memory anyway.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(self.ring.as_ptr().add(line).cast()) };
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = pos;
    }

    fn record_bytes_at(&self, pos: usize) -> usize {
        record_bytes((self.u32_at(pos + 8) & LENGTH_MASK) as usize)
    }

    fn hash(&self, address: u64) -> u64 {
        self.hasher.hash_one(address)
    }

    /// The ring position of `address`'s record, if cached.
    fn position(&self, address: u64) -> Option<usize> {
        self.locate(address).map(|unit| unit as usize * UNIT)
    }

    /// Files the record at ring unit `unit`, whose address is `address`, in the index.
    fn index_insert(&mut self, address: u64, unit: u32) {
        let (ring, hasher) = (&self.ring, &self.hasher);
        self.index
            .insert_unique(hasher.hash_one(address), unit, |&u| {
                hasher.hash_one(address_in(ring, u))
            });
    }

    /// Takes `address`'s record out of the index; returns its unit.
    fn index_remove(&mut self, address: u64) -> Option<u32> {
        let hash = self.hash(address);
        let ring = &self.ring;
        match self
            .index
            .find_entry(hash, |&u| address_in(ring, u) == address)
        {
            Ok(entry) => Some(entry.remove().0),
            Err(_) => None,
        }
    }

    /// The value of the SET at `address` for `key`, if cached; marks it as read.
    pub fn get(&mut self, address: u64, key: &[u8]) -> Option<ValueRead> {
        self.get_ref(address, key).map(ValueRead::into_owned)
    }

    /// [`ValueCache::get`], borrowing the value from the ring.
    pub fn get_ref(&mut self, address: u64, key: &[u8]) -> Option<ValueRead<&[u8]>> {
        let unit = self.locate(address);
        self.get_located(unit, key)
    }

    /// [`ValueCache::get_ref`] of the reads `wanted` names (indexes into `reads`): each
    /// value found is given to `answer` with its index, and `wanted` keeps the reads not
    /// cached, in order. Every record is found first, in a loop that does nothing else, so
    /// the memory loads of neighbouring lookups overlap; then the answers are built.
    /// `units` is scratch space.
    pub fn get_many_ref(
        &mut self,
        reads: &[(u64, &[u8])],
        wanted: &mut Vec<usize>,
        units: &mut Vec<Option<u32>>,
        mut answer: impl FnMut(usize, ValueRead<&[u8]>),
    ) {
        units.clear();
        units.extend(wanted.iter().map(|&i| self.locate(reads[i].0)));
        // Locating a record loaded its header's line; the lines of its value start loading
        // for every record of the batch before the first is copied.
        for &unit in units.iter().flatten() {
            self.prefetch_record(unit as usize * UNIT);
        }
        let mut n = 0;
        wanted.retain(|&i| {
            let unit = units[n];
            n += 1;
            match self.get_located(unit, reads[i].1) {
                Some(found) => {
                    answer(i, found);
                    false
                }
                None => true,
            }
        });
    }

    /// Where `address`'s record is, if cached, for [`ValueCache::get_located`].
    fn locate(&self, address: u64) -> Option<u32> {
        let ring = &self.ring;
        self.index
            .find(self.hash(address), |&unit| {
                address_in(ring, unit) == address
            })
            .copied()
    }

    /// [`ValueCache::get_ref`] of the record [`ValueCache::locate`] found, with no change
    /// to the cache between the two.
    fn get_located(&mut self, unit: Option<u32>, key: &[u8]) -> Option<ValueRead<&[u8]>> {
        let Some(unit) = unit else {
            self.misses += 1;
            return None;
        };
        let pos = unit as usize * UNIT;
        self.hits += 1;
        let word = self.word_at(pos);
        self.set_word_at(pos, word | REFERENCED);
        let second = self.u32_at(pos + 8);
        if fingerprint_of(word, second) != fingerprint(key) {
            return Some(ValueRead::OtherKey);
        }
        let len = (second & LENGTH_MASK) as usize;
        let start = pos + HEADER_BYTES;
        Some(ValueRead::Value(&self.ring[start..start + len]))
    }

    /// Caches the value `key` has in the SET at `address`, making room at the tail.
    pub fn insert(&mut self, address: u64, key: &[u8], value: &[u8]) {
        let bytes = record_bytes(value.len());
        if bytes > self.ring.len() / VALUE_SHARE_MAX
            || value.len() > LENGTH_MASK as usize
            || address >= ADDRESS_MASK
            || self.position(address).is_some()
        {
            return;
        }
        let pos = self.make_room(bytes);
        let (word, second) = header_fields(address, value.len(), fingerprint(key));
        self.set_word_at(pos, word);
        self.ring[pos + 8..pos + 12].copy_from_slice(&second.to_le_bytes());
        self.ring[pos + HEADER_BYTES..pos + HEADER_BYTES + value.len()].copy_from_slice(value);
        self.index_insert(address, (pos / UNIT) as u32);
        self.live += bytes;
    }

    /// Returns the position of `bytes` free ring bytes at the head (now counted as used),
    /// evicting at the tail as needed. `bytes` is at most a sixteenth of the ring.
    fn make_room(&mut self, bytes: usize) -> usize {
        let mut second_chances = 0;
        loop {
            if self.used == 0 {
                self.head = 0;
                self.tail = 0;
            }
            let wrapped = self.used > 0 && self.head <= self.tail;
            if !wrapped {
                // Free: from the head to the end, then from 0 to the tail.
                if self.ring.len() - self.head >= bytes {
                    break;
                }
                let pad = self.ring.len() - self.head;
                if pad >= 8 {
                    self.set_word_at(self.head, WRAP);
                }
                self.used += pad;
                self.head = 0;
                continue;
            }
            if self.tail - self.head >= bytes {
                break;
            }
            self.evict_tail(&mut second_chances);
        }
        let pos = self.head;
        self.head += bytes;
        self.used += bytes;
        pos
    }

    /// Takes the record at the tail out: dropped, or moved to the head if it was read
    /// since it was written (while `second_chances` allows). Only called when the ring
    /// is wrapped (the head before the tail) or full.
    fn evict_tail(&mut self, second_chances: &mut usize) {
        let len = self.ring.len();
        if len - self.tail < 8 || self.word_at(self.tail) == WRAP {
            self.used -= len - self.tail;
            self.tail = 0;
            return;
        }
        let word = self.word_at(self.tail);
        let address = word & ADDRESS_MASK;
        let bytes = self.record_bytes_at(self.tail);
        let tail_unit = (self.tail / UNIT) as u32;
        let hash = self.hash(address);
        // A value read since it was written gets a second chance; so does any value while
        // most of the ring is values no one can read any more (a store whose keys are set
        // again and again), so those are what goes.
        let worth_keeping = word & REFERENCED != 0 || self.live * 2 <= self.ring.len();
        if let Ok(mut entry) = self.index.find_entry(hash, |&u| u == tail_unit) {
            if worth_keeping && *second_chances < SECOND_CHANCES_MAX {
                *second_chances += 1;
                // The head is before the tail, so the record fits where the head is: the
                // bytes between them are free, and the record's own follow.
                let from = self.tail;
                let to = self.head;
                *entry.get_mut() = (to / UNIT) as u32;
                self.ring.copy_within(from..from + bytes, to);
                self.ring[to..to + 8].copy_from_slice(&(word & !REFERENCED).to_le_bytes());
                self.head += bytes;
                self.tail += bytes;
                return;
            }
            entry.remove();
            self.live -= bytes;
        }
        self.used -= bytes;
        self.tail += bytes;
    }

    /// Forgets the value cached for the SET at `address` (no map slot points at it any
    /// more: its key was set again or deleted). Its bytes go when the tail reaches them.
    pub fn remove(&mut self, address: u64) {
        if let Some(unit) = self.index_remove(address) {
            self.live -= self.record_bytes_at(unit as usize * UNIT);
        }
    }

    /// Files the value cached for the SET at `from` under `to` instead, its reference bit
    /// kept (the cleaner moved that SET: the map now reads it at `to`). Nothing happens if
    /// `from` is not cached or `to` already is.
    pub fn rekey(&mut self, from: u64, to: u64) {
        if to >= ADDRESS_MASK || self.position(to).is_some() {
            return;
        }
        let Some(unit) = self.index_remove(from) else {
            return;
        };
        let pos = unit as usize * UNIT;
        let word = self.word_at(pos);
        self.set_word_at(pos, (word & !ADDRESS_MASK) | to);
        self.index_insert(to, unit);
    }

    /// Ring bytes in use (records, the dropped ones the tail has not reached, padding).
    pub fn used_bytes(&self) -> usize {
        self.used
    }

    /// Memory the cache holds: the ring bytes in use and the index's table.
    pub fn memory_bytes(&self) -> usize {
        self.used + self.index.allocation_size()
    }

    /// Ring bytes of the values that can still be found.
    pub fn live_bytes(&self) -> usize {
        self.live
    }

    /// Values cached.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Lookups that found their value, and lookups that did not.
    pub fn hits_and_misses(&self) -> (u64, u64) {
        (self.hits, self.misses)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn value(v: Option<ValueRead>) -> Option<Vec<u8>> {
        match v {
            Some(ValueRead::Value(v)) => Some(v),
            _ => None,
        }
    }

    /// Values read again survive a stream of values read once; the budget holds.
    #[test]
    fn values_read_again_outlive_values_read_once() {
        let budget = 100 * record_bytes(100);
        let mut c = ValueCache::new(budget);
        let v = [7u8; 100];
        for hot in 0..10u64 {
            c.insert(hot, b"hot-key!", &v);
        }
        for round in 0..50u64 {
            for hot in 0..10u64 {
                assert!(value(c.get(hot, b"hot-key!")).is_some(), "round {round}");
            }
            for cold in 0..20u64 {
                let address = 1_000 + round * 20 + cold;
                assert!(c.get(address, b"coldkey!").is_none());
                c.insert(address, b"coldkey!", &v);
            }
            assert!(c.used_bytes() <= budget);
        }
        assert_eq!(c.len(), 100);
    }

    #[test]
    fn a_moved_value_is_found_under_its_new_address_only() {
        let mut c = ValueCache::new(1 << 20);
        c.insert(10, b"k", b"v");
        let _ = c.get(10, b"k");
        c.rekey(10, 20);
        assert_eq!(value(c.get(10, b"k")), None);
        assert_eq!(value(c.get(20, b"k")), Some(b"v".to_vec()));
        c.insert(30, b"j", b"w");
        c.rekey(20, 30);
        assert_eq!(
            value(c.get(30, b"j")),
            Some(b"w".to_vec()),
            "an existing entry wins"
        );
        c.rekey(99, 100);
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn a_hit_checks_the_key_and_oversize_values_are_not_cached() {
        let mut c = ValueCache::new(1 << 20);
        c.insert(42, b"alpha", b"one");
        assert_eq!(value(c.get(42, b"alpha")), Some(b"one".to_vec()));
        assert_eq!(c.get(42, b"beta"), Some(ValueRead::OtherKey));
        c.insert(43, b"big", &vec![0u8; (1 << 20) / VALUE_SHARE_MAX]);
        assert!(c.get(43, b"big").is_none());
        let mut off = ValueCache::new(0);
        off.insert(1, b"k", b"v");
        assert!(off.is_empty());
    }

    /// The header's two fields give back the address, the length and the fingerprint,
    /// and no record's first word reads as the ring's wrap padding.
    #[test]
    fn a_header_keeps_address_length_and_fingerprint_apart() {
        for (address, len, print) in [
            (0, 0, 0),
            (
                ADDRESS_MASK - 1,
                LENGTH_MASK as usize,
                (1 << FINGERPRINT_BITS) - 1,
            ),
            (1 << 40 | 12_345, 100, 0x2a5a),
            (7, 1, 1),
            (7, 1, 1 << (FINGERPRINT_BITS - 1)),
        ] {
            let (word, second) = header_fields(address, len, print);
            assert_eq!(word & ADDRESS_MASK, address);
            assert_eq!(word & REFERENCED, 0);
            assert_eq!((second & LENGTH_MASK) as usize, len);
            assert_eq!(fingerprint_of(word, second), print);
            assert_eq!(fingerprint_of(word | REFERENCED, second), print);
            assert_ne!(word | REFERENCED, WRAP);
        }
        let mut c = ValueCache::new(1 << 20);
        c.insert(ADDRESS_MASK, b"k", b"v");
        assert!(c.is_empty(), "the all-ones address is not cached");
    }

    /// Keys whose fingerprints differ in either half read as another key's SET.
    #[test]
    fn a_fingerprint_differing_in_either_half_is_another_key() {
        let mut c = ValueCache::new(1 << 20);
        c.insert(5, b"alpha", b"one");
        let print = fingerprint(b"alpha");
        let mut seen = [false; 2];
        for n in 0u32..100_000 {
            let other = format!("other-{n}");
            let p = fingerprint(other.as_bytes());
            if p == print {
                continue;
            }
            let half = (p ^ print) >> (FINGERPRINT_BITS / 2) == 0;
            seen[usize::from(half)] = true;
            assert_eq!(
                c.get(5, other.as_bytes()),
                Some(ValueRead::OtherKey),
                "{other}"
            );
            if seen == [true, true] {
                return;
            }
        }
        panic!("no key differing only in the low half of the fingerprint");
    }

    /// A value longer than the length field holds is not cached.
    #[test]
    fn a_value_longer_than_the_length_field_is_not_cached() {
        let mut c = ValueCache::new(1 << 30);
        c.insert(1, b"big", &vec![3u8; LENGTH_MASK as usize + 1]);
        assert!(c.is_empty());
        c.insert(2, b"big", &vec![3u8; LENGTH_MASK as usize]);
        assert_eq!(
            c.get(2, b"big").map(|v| match v {
                ValueRead::Value(v) => v.len(),
                _ => 0,
            }),
            Some(LENGTH_MASK as usize)
        );
    }

    /// A 100-byte value costs its 12-byte header and its share of the index's table of
    /// 5-byte buckets: under 125 bytes however full the table is (a table from address to
    /// position and a 16-byte header took 133 at this count).
    #[test]
    fn a_cached_100_byte_value_costs_under_125_bytes() {
        let values = 100_000;
        let mut c = ValueCache::new(1 << 30);
        for a in 0..values {
            c.insert(a * 64, b"k", &[1u8; 100]);
        }
        assert_eq!(c.len(), values as usize);
        let per_value = c.memory_bytes() as f64 / values as f64;
        assert!(per_value < 125.0, "{per_value:.1} bytes per value");
    }

    /// Looking up several reads at once answers what one at a time would, keeps the
    /// misses in order, and counts the same hits and misses.
    #[test]
    fn a_batch_of_reads_answers_what_single_reads_do() {
        let mut c = ValueCache::new(1 << 20);
        for a in (0..40u64).step_by(3) {
            c.insert(a, b"k", &[a as u8; 20]);
        }
        c.insert(41, b"other", b"x");
        let reads: Vec<(u64, &[u8])> = (0..42u64).map(|a| (a, &b"k"[..])).collect();
        let mut wanted: Vec<usize> = (0..reads.len()).rev().collect();
        let mut units = Vec::new();
        let mut answers = Vec::new();
        c.get_many_ref(&reads, &mut wanted, &mut units, |i, v| {
            answers.push((i, v.into_owned()))
        });
        let (hits, misses) = c.hits_and_misses();
        let mut single = Vec::new();
        let mut not_cached = Vec::new();
        for i in (0..reads.len()).rev() {
            match c.get(reads[i].0, reads[i].1) {
                Some(v) => single.push((i, v)),
                None => not_cached.push(i),
            }
        }
        assert_eq!(answers, single);
        assert_eq!(wanted, not_cached);
        assert_eq!(answers.len(), 15);
        assert_eq!(answers[0], (41, ValueRead::OtherKey));
        assert_eq!(c.hits_and_misses(), (2 * hits, 2 * misses));
    }

    /// A removed value is gone at once and its room comes back when the tail passes it.
    #[test]
    fn a_removed_value_is_not_found_and_its_room_is_reused() {
        let budget = 20 * record_bytes(100);
        let mut c = ValueCache::new(budget);
        for a in 0..20u64 {
            c.insert(a, b"k", &[a as u8; 100]);
        }
        for a in 0..10u64 {
            c.remove(a);
            assert!(c.get(a, b"k").is_none());
        }
        for a in 10..20u64 {
            let _ = c.get(a, b"k");
        }
        for a in 20..30u64 {
            c.insert(a, b"k", &[a as u8; 100]);
        }
        for a in 10..30u64 {
            assert_eq!(value(c.get(a, b"k")), Some(vec![a as u8; 100]), "{a}");
        }
        assert_eq!(c.len(), 20);
        assert_eq!(c.used_bytes(), budget);
    }

    /// Values set again and again leave dead copies; the live values outlast them even
    /// when nothing reads them.
    #[test]
    fn live_values_outlast_overwritten_ones() {
        let budget = 40 * record_bytes(100);
        let mut c = ValueCache::new(budget);
        for a in 0..5u64 {
            c.insert(a, b"k", &[a as u8; 100]);
        }
        let mut current = 1000u64;
        c.insert(current, b"hot", &[0; 100]);
        for n in 1..500u64 {
            c.remove(current);
            current = 1000 + n;
            c.insert(current, b"hot", &[n as u8; 100]);
        }
        for a in 0..5u64 {
            assert_eq!(value(c.get(a, b"k")), Some(vec![a as u8; 100]), "{a}");
        }
        assert_eq!(c.len(), 6);
        assert_eq!(c.live_bytes(), 6 * record_bytes(100));
        assert!(c.used_bytes() <= budget);
    }

    /// The cache against a model: every hit is the value inserted at that address, the
    /// ring never holds more than its budget, and with room for everything nothing is
    /// lost.
    fn run_model(budget: usize, ops: &[(u8, u16, u16)]) -> Result<(), TestCaseError> {
        let mut c = ValueCache::new(budget);
        let mut model: HashMap<u64, Vec<u8>> = HashMap::new();
        for &(op, a, len) in ops {
            let address = a as u64 % 64;
            match op % 4 {
                0 | 1 => {
                    let v: Vec<u8> = (0..len % 300).map(|i| (i as u64 ^ address) as u8).collect();
                    if c.position(address).is_none() {
                        c.insert(address, b"k", &v);
                        if c.position(address).is_some() {
                            model.insert(address, v);
                        }
                    }
                }
                2 => {
                    c.remove(address);
                    model.remove(&address);
                }
                _ => {
                    let to = 64 + a as u64 % 64;
                    let had = c.position(address).is_some() && c.position(to).is_none();
                    c.rekey(address, to);
                    if had && let Some(v) = model.remove(&address) {
                        model.insert(to, v);
                    }
                }
            }
            prop_assert!(c.used_bytes() <= c.ring.len());
            prop_assert!(c.live_bytes() <= c.used_bytes());
            for (&address, v) in &model {
                if let Some(found) = value(c.get(address, b"k")) {
                    prop_assert_eq!(&found, v);
                } else {
                    prop_assert!(budget < 64 * record_bytes(300) * 2, "lost {}", address);
                }
            }
            model.retain(|a, _| c.position(*a).is_some());
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn agrees_with_a_model(
            small in any::<bool>(),
            ops in proptest::collection::vec(any::<(u8, u16, u16)>(), 1..400),
        ) {
            let budget = if small { 16 * record_bytes(300) + 12 } else { 1 << 20 };
            run_model(budget, &ops)?;
        }
    }
}
