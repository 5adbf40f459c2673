//! Values kept in memory by how often they are read (CLOCK), under a byte budget.
//!
//! The entry cache ([`super::EntryCache`]) keeps what was *written* last; on a store that
//! has grown past it, a GET of an older key would otherwise cost an O_DIRECT read every
//! time. This cache holds the values that GETs read from the disk and, on a server, the
//! values of applied SETs (put in off the replication core, see
//! [`crate::storage::engine::fill_value_cache`]), keyed by the log offset of their SET
//! command, and keeps the ones read again: each value has a
//! reference bit, set on every hit; when the budget is reached the clock hand sweeps the
//! values, clearing set bits and evicting the first value whose bit is clear. A value read
//! once and never again is the first to go; a hot one survives any number of sweeps.
//!
//! Offsets are stable: the map only hands out offsets of applied entries, which are
//! never truncated or rewritten, so a cached value never goes stale. Keys are stored with
//! their values so a hit is checked against the key asked for, like a read from the log.

use super::ValueRead;
use std::collections::HashMap;

/// Bytes charged per value on top of its key and value (the index entry and the slot).
const OVERHEAD_BYTES: usize = 64;
/// A single value may take at most this fraction of the budget.
const VALUE_SHARE_MAX: usize = 16;

struct Slot {
    offset: u64,
    /// The key, then the value.
    bytes: Box<[u8]>,
    key_len: usize,
    referenced: bool,
}

impl Slot {
    fn charge(&self) -> usize {
        self.bytes.len() + OVERHEAD_BYTES
    }
}

/// Values by log offset, evicted by CLOCK.
pub struct ValueCache {
    budget_bytes: usize,
    used_bytes: usize,
    index: HashMap<u64, usize>,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    hand: usize,
    hits: u64,
    misses: u64,
}

impl ValueCache {
    /// A cache of at most `budget_bytes` (0 disables it).
    pub fn new(budget_bytes: usize) -> ValueCache {
        ValueCache {
            budget_bytes,
            used_bytes: 0,
            index: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            hand: 0,
            hits: 0,
            misses: 0,
        }
    }

    /// The value of the SET at `offset` for `key`, if cached; marks it as read.
    pub fn get(&mut self, offset: u64, key: &[u8]) -> Option<ValueRead> {
        let Some(slot) = self
            .index
            .get(&offset)
            .and_then(|&i| self.slots.get_mut(i))
            .and_then(Option::as_mut)
        else {
            self.misses += 1;
            return None;
        };
        self.hits += 1;
        slot.referenced = true;
        let (stored_key, value) = slot.bytes.split_at(slot.key_len);
        Some(if stored_key == key {
            ValueRead::Value(value.to_vec())
        } else {
            ValueRead::OtherKey
        })
    }

    /// Caches the value `key` has in the SET at `offset`, evicting by CLOCK to make room.
    pub fn insert(&mut self, offset: u64, key: &[u8], value: &[u8]) {
        let charge = key.len() + value.len() + OVERHEAD_BYTES;
        if charge > self.budget_bytes / VALUE_SHARE_MAX || self.index.contains_key(&offset) {
            return;
        }
        while self.used_bytes + charge > self.budget_bytes {
            if !self.evict_one() {
                return;
            }
        }
        let mut bytes = Vec::with_capacity(key.len() + value.len());
        bytes.extend_from_slice(key);
        bytes.extend_from_slice(value);
        let slot = Slot {
            offset,
            bytes: bytes.into_boxed_slice(),
            key_len: key.len(),
            referenced: false,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(slot);
                i
            }
            None => {
                self.slots.push(Some(slot));
                self.slots.len() - 1
            }
        };
        self.index.insert(offset, i);
        self.used_bytes += charge;
    }

    /// Files the value cached for the SET at `from` under `to` instead, its reference bit
    /// kept (the cleaner moved that SET: the map now reads it at `to`). Nothing happens if
    /// `from` is not cached or `to` already is.
    pub fn rekey(&mut self, from: u64, to: u64) {
        if self.index.contains_key(&to) {
            return;
        }
        let Some(i) = self.index.remove(&from) else {
            return;
        };
        if let Some(Some(slot)) = self.slots.get_mut(i) {
            slot.offset = to;
            self.index.insert(to, i);
        }
    }

    /// Moves the hand to the next value not read since the last sweep and evicts it.
    /// Returns false when the cache is empty.
    fn evict_one(&mut self) -> bool {
        if self.index.is_empty() {
            return false;
        }
        // Terminates: a value exists, and one full sweep clears every reference bit.
        loop {
            if self.hand >= self.slots.len() {
                self.hand = 0;
            }
            let i = self.hand;
            self.hand += 1;
            match self.slots.get_mut(i) {
                Some(Some(slot)) if slot.referenced => slot.referenced = false,
                Some(entry @ Some(_)) => {
                    if let Some(slot) = entry.take() {
                        self.index.remove(&slot.offset);
                        self.used_bytes -= slot.charge();
                        self.free.push(i);
                    }
                    return true;
                }
                _ => {}
            }
        }
    }

    /// Bytes charged to the cached values.
    pub fn used_bytes(&self) -> usize {
        self.used_bytes
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

    fn value(v: Option<ValueRead>) -> Option<Vec<u8>> {
        match v {
            Some(ValueRead::Value(v)) => Some(v),
            _ => None,
        }
    }

    /// Values read again survive a stream of values read once; the budget holds.
    #[test]
    fn values_read_again_outlive_values_read_once() {
        let budget = 100 * (8 + 100 + OVERHEAD_BYTES);
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
                let offset = 1_000 + round * 20 + cold;
                assert!(c.get(offset, b"coldkey!").is_none());
                c.insert(offset, b"coldkey!", &v);
            }
            assert!(c.used_bytes() <= budget);
        }
        assert_eq!(c.len(), 100);
    }

    #[test]
    fn a_moved_value_is_found_under_its_new_offset_only() {
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
}
