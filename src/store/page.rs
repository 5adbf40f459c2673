//! One 4096-byte bucket page of the on-disk hashmap.
//!
//! ```text
//! offset  size  field
//!      0  1024  slot words: 128 × u64, `cmd_byte_offset << 8 | inline_slot`,
//!               u64::MAX = empty; inline_slot 0..15 or NOT_INLINE (0xFF)
//!   1024  2048  key hashes: 128 × 16 bytes (xxh3-128 of the key), same order (SoA)
//!   3072   960  inline values: 15 × 64 bytes, 63 data bytes then 1 length byte
//!   4032    40  page lock: an AtomicU32 reader/writer lock at 4032, rest zero.
//!               Meaningless on disk: zeroed when a page is written out or loaded.
//!   4072     2  inline-slot bitmap (u16, bit s = inline slot s in use)
//!   4074     1  local depth (extendible hashing)
//!   4075     1  kind: 0 = bucket page (in the directory), 1 = overflow page (in a chain)
//!   4076     2  used slot count (u16)
//!   4078     2  reserved
//!   4080     8  hash prefix: the low `local depth` bits every key in this page shares
//!   4088     8  next page of this bucket's overflow chain, plus one (0 = none)
//! ```
//!
//! A page is reached only through a raw pointer into the map's page arena. Readers hold
//! the embedded lock shared and the single writer (the apply loop) holds it exclusive;
//! the lock word itself is only ever touched atomically, and no Rust reference to the
//! page ever spans it.

use crate::io::PAGE_SIZE;
use std::sync::atomic::{AtomicU32, Ordering};

/// Slots per page.
pub const SLOT_COUNT: usize = 128;
/// Inline value slots per page.
pub const INLINE_SLOT_COUNT: usize = 15;
/// Bytes of one inline value slot.
pub const INLINE_SLOT_SIZE: usize = 64;
/// Longest value stored inline (the last byte of a slot holds the length).
pub const INLINE_VALUE_SIZE_MAX: usize = INLINE_SLOT_SIZE - 1;
/// Marks a slot whose value lives only in the log.
pub const NOT_INLINE: u8 = 0xFF;
/// The slot word of an empty slot.
pub const EMPTY: u64 = u64::MAX;
/// The kind byte of an overflow page (a bucket page has 0).
pub const KIND_OVERFLOW: u8 = 1;

pub const OFFSET_SLOT_WORDS: usize = 0;
pub const OFFSET_KEY_HASHES: usize = OFFSET_SLOT_WORDS + SLOT_COUNT * 8;
pub const OFFSET_INLINE: usize = OFFSET_KEY_HASHES + SLOT_COUNT * 16;
pub const OFFSET_LOCK: usize = OFFSET_INLINE + INLINE_SLOT_COUNT * INLINE_SLOT_SIZE;
pub const LOCK_SIZE: usize = 40;
pub const OFFSET_BITMAP: usize = OFFSET_LOCK + LOCK_SIZE;
pub const OFFSET_LOCAL_DEPTH: usize = OFFSET_BITMAP + 2;
pub const OFFSET_KIND: usize = OFFSET_LOCAL_DEPTH + 1;
pub const OFFSET_USED: usize = OFFSET_KIND + 1;
pub const OFFSET_PREFIX: usize = OFFSET_USED + 4;
pub const OFFSET_NEXT: usize = OFFSET_PREFIX + 8;

const _: () = assert!(OFFSET_KEY_HASHES == 1024);
const _: () = assert!(OFFSET_INLINE == 3072);
const _: () = assert!(OFFSET_LOCK == 4032);
const _: () = assert!(OFFSET_BITMAP == 4072);
const _: () = assert!(OFFSET_NEXT + 8 == PAGE_SIZE);
const _: () = assert!(INLINE_SLOT_COUNT <= 16, "the bitmap is a u16");
const _: () = assert!(
    OFFSET_LOCK.is_multiple_of(4),
    "the lock word is an aligned AtomicU32"
);

const WRITER: u32 = 1 << 31;

/// Packs a slot word.
pub fn slot_word(cmd_byte_offset: u64, inline_slot: u8) -> u64 {
    assert!(cmd_byte_offset < (1 << 56), "log offsets fit in 56 bits");
    cmd_byte_offset << 8 | inline_slot as u64
}

/// A raw handle to a page in the arena.
#[derive(Clone, Copy)]
pub struct PagePtr(pub(crate) *mut u8);

// SAFETY: access to the page bytes is serialized by the embedded lock.
unsafe impl Send for PagePtr {}
unsafe impl Sync for PagePtr {}

impl PagePtr {
    fn lock_word<'a>(self) -> &'a AtomicU32 {
        // SAFETY: the lock word is 4-byte aligned inside a live page and only ever
        // accessed atomically.
        unsafe { &*(self.0.add(OFFSET_LOCK) as *const AtomicU32) }
    }

    /// Takes the page lock shared; spins while the writer holds it.
    pub fn read(self) -> PageRead {
        let lock = self.lock_word();
        loop {
            let cur = lock.load(Ordering::Relaxed);
            if cur & WRITER == 0
                && lock
                    .compare_exchange_weak(cur, cur + 1, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return PageRead { page: self };
            }
            std::hint::spin_loop();
        }
    }

    /// Takes the page lock exclusive. Only the single writer calls this.
    pub fn write(self) -> PageWrite {
        let lock = self.lock_word();
        while lock
            .compare_exchange_weak(0, WRITER, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            std::hint::spin_loop();
        }
        PageWrite { page: self }
    }

    /// Resets the lock word (a page just loaded or copied; no thread can hold it).
    pub fn reset_lock(bytes: &mut [u8]) {
        bytes[OFFSET_LOCK..OFFSET_LOCK + LOCK_SIZE].fill(0);
    }

    fn bytes<'a>(self, at: usize, len: usize) -> &'a [u8] {
        debug_assert!(at + len <= OFFSET_LOCK || at >= OFFSET_LOCK + LOCK_SIZE);
        // SAFETY: in-bounds region outside the lock word, guarded by the page lock.
        unsafe { std::slice::from_raw_parts(self.0.add(at), len) }
    }

    fn bytes_mut<'a>(self, at: usize, len: usize) -> &'a mut [u8] {
        debug_assert!(at + len <= OFFSET_LOCK || at >= OFFSET_LOCK + LOCK_SIZE);
        // SAFETY: as above, and the caller holds the lock exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(at), len) }
    }

    /// Copies the page out (the caller holds at least a shared lock or is the writer).
    pub fn copy_to(self, out: &mut [u8]) {
        out[..OFFSET_LOCK].copy_from_slice(self.bytes(0, OFFSET_LOCK));
        out[OFFSET_LOCK..OFFSET_LOCK + LOCK_SIZE].fill(0);
        out[OFFSET_BITMAP..PAGE_SIZE]
            .copy_from_slice(self.bytes(OFFSET_BITMAP, PAGE_SIZE - OFFSET_BITMAP));
    }
}

/// Read access to a page's fields.
pub trait PageView {
    fn ptr(&self) -> PagePtr;

    fn word(&self, slot: usize) -> u64 {
        let b = self.ptr().bytes(OFFSET_SLOT_WORDS + slot * 8, 8);
        u64::from_le_bytes(b.try_into().unwrap())
    }

    fn key_hash(&self, slot: usize) -> u128 {
        let b = self.ptr().bytes(OFFSET_KEY_HASHES + slot * 16, 16);
        u128::from_le_bytes(b.try_into().unwrap())
    }

    fn inline_value(&self, inline_slot: usize) -> &[u8] {
        // The returned slice lives as long as the guard borrowed here.
        let b = self.ptr().bytes(
            OFFSET_INLINE + inline_slot * INLINE_SLOT_SIZE,
            INLINE_SLOT_SIZE,
        );
        let len = (b[INLINE_VALUE_SIZE_MAX] as usize).min(INLINE_VALUE_SIZE_MAX);
        &b[..len]
    }

    fn bitmap(&self) -> u16 {
        u16::from_le_bytes(self.ptr().bytes(OFFSET_BITMAP, 2).try_into().unwrap())
    }

    fn local_depth(&self) -> u8 {
        self.ptr().bytes(OFFSET_LOCAL_DEPTH, 1)[0]
    }

    fn used(&self) -> usize {
        u16::from_le_bytes(self.ptr().bytes(OFFSET_USED, 2).try_into().unwrap()) as usize
    }

    fn prefix(&self) -> u64 {
        u64::from_le_bytes(self.ptr().bytes(OFFSET_PREFIX, 8).try_into().unwrap())
    }

    /// Whether this is an overflow page (reached through a chain, not the directory).
    fn is_overflow(&self) -> bool {
        self.ptr().bytes(OFFSET_KIND, 1)[0] == KIND_OVERFLOW
    }

    /// The next page of this bucket's overflow chain.
    fn next_page(&self) -> Option<u32> {
        let stored = u64::from_le_bytes(self.ptr().bytes(OFFSET_NEXT, 8).try_into().unwrap());
        stored.checked_sub(1).map(|n| n as u32)
    }

    /// The slot holding `key_hash`, if any.
    fn find(&self, key_hash: u128) -> Option<usize> {
        (0..SLOT_COUNT).find(|&s| self.word(s) != EMPTY && self.key_hash(s) == key_hash)
    }
}

/// A page held shared.
pub struct PageRead {
    page: PagePtr,
}

impl PageView for PageRead {
    fn ptr(&self) -> PagePtr {
        self.page
    }
}

impl Drop for PageRead {
    fn drop(&mut self) {
        self.page.lock_word().fetch_sub(1, Ordering::Release);
    }
}

/// The key is new and every slot of the page is taken: the page must split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageFull;

/// A page held exclusive.
pub struct PageWrite {
    page: PagePtr,
}

impl PageView for PageWrite {
    fn ptr(&self) -> PagePtr {
        self.page
    }
}

impl Drop for PageWrite {
    fn drop(&mut self) {
        self.page.lock_word().store(0, Ordering::Release);
    }
}

impl PageWrite {
    /// Formats an empty page with the given depth and prefix.
    pub fn init(&mut self, local_depth: u8, prefix: u64) {
        let p = self.page;
        for s in 0..SLOT_COUNT {
            p.bytes_mut(OFFSET_SLOT_WORDS + s * 8, 8)
                .copy_from_slice(&EMPTY.to_le_bytes());
        }
        p.bytes_mut(OFFSET_KEY_HASHES, OFFSET_LOCK - OFFSET_KEY_HASHES)
            .fill(0);
        p.bytes_mut(OFFSET_BITMAP, PAGE_SIZE - OFFSET_BITMAP)
            .fill(0);
        self.set_depth_prefix(local_depth, prefix);
    }

    /// Marks this page as an overflow page.
    pub fn set_overflow(&mut self) {
        self.page.bytes_mut(OFFSET_KIND, 1)[0] = KIND_OVERFLOW;
    }

    /// Links the next page of this bucket's overflow chain.
    pub fn set_next_page(&mut self, next: Option<u32>) {
        let stored = next.map_or(0, |n| n as u64 + 1);
        self.page
            .bytes_mut(OFFSET_NEXT, 8)
            .copy_from_slice(&stored.to_le_bytes());
    }

    pub fn set_depth_prefix(&mut self, local_depth: u8, prefix: u64) {
        self.page.bytes_mut(OFFSET_LOCAL_DEPTH, 1)[0] = local_depth;
        self.page
            .bytes_mut(OFFSET_PREFIX, 8)
            .copy_from_slice(&prefix.to_le_bytes());
    }

    fn set_used(&mut self, used: usize) {
        self.page
            .bytes_mut(OFFSET_USED, 2)
            .copy_from_slice(&(used as u16).to_le_bytes());
    }

    fn set_bitmap(&mut self, bitmap: u16) {
        self.page
            .bytes_mut(OFFSET_BITMAP, 2)
            .copy_from_slice(&bitmap.to_le_bytes());
    }

    fn set_word(&mut self, slot: usize, word: u64) {
        self.page
            .bytes_mut(OFFSET_SLOT_WORDS + slot * 8, 8)
            .copy_from_slice(&word.to_le_bytes());
    }

    fn set_key_hash(&mut self, slot: usize, key_hash: u128) {
        self.page
            .bytes_mut(OFFSET_KEY_HASHES + slot * 16, 16)
            .copy_from_slice(&key_hash.to_le_bytes());
    }

    fn free_inline(&mut self, word: u64) {
        let inline = (word & 0xFF) as u8;
        if word != EMPTY && inline != NOT_INLINE {
            self.set_bitmap(self.bitmap() & !(1 << inline));
        }
    }

    /// Stores `value` in a free inline slot, if one is free.
    fn alloc_inline(&mut self, value: &[u8]) -> u8 {
        debug_assert!(value.len() <= INLINE_VALUE_SIZE_MAX);
        let bitmap = self.bitmap();
        let free = (!bitmap).trailing_zeros() as usize;
        if free >= INLINE_SLOT_COUNT {
            return NOT_INLINE;
        }
        self.set_bitmap(bitmap | 1 << free);
        let b = self
            .page
            .bytes_mut(OFFSET_INLINE + free * INLINE_SLOT_SIZE, INLINE_SLOT_SIZE);
        b[..value.len()].copy_from_slice(value);
        b[value.len()..INLINE_VALUE_SIZE_MAX].fill(0);
        b[INLINE_VALUE_SIZE_MAX] = value.len() as u8;
        free as u8
    }

    /// Inserts or replaces `key_hash`. Returns `Err(PageFull)` when the page is full and
    /// the key is new; `Ok(true)` when a new key was added.
    pub fn upsert(
        &mut self,
        key_hash: u128,
        cmd_byte_offset: u64,
        inline: Option<&[u8]>,
    ) -> Result<bool, PageFull> {
        let (slot, added) = match self.find(key_hash) {
            Some(slot) => {
                self.free_inline(self.word(slot));
                (slot, false)
            }
            None => {
                let slot = (0..SLOT_COUNT)
                    .find(|&s| self.word(s) == EMPTY)
                    .ok_or(PageFull)?;
                self.set_key_hash(slot, key_hash);
                self.set_used(self.used() + 1);
                (slot, true)
            }
        };
        let inline_slot = match inline {
            Some(value) => self.alloc_inline(value),
            None => NOT_INLINE,
        };
        self.set_word(slot, slot_word(cmd_byte_offset, inline_slot));
        Ok(added)
    }

    /// Removes `key_hash`; returns whether it was present.
    pub fn remove(&mut self, key_hash: u128) -> bool {
        let Some(slot) = self.find(key_hash) else {
            return false;
        };
        self.free_inline(self.word(slot));
        self.set_word(slot, EMPTY);
        self.set_key_hash(slot, 0);
        self.set_used(self.used() - 1);
        true
    }

    /// Moves every entry whose hash has bit `bit` set into `other` (an empty page).
    pub fn split_into(&mut self, other: &mut PageWrite, bit: u32) {
        for s in 0..SLOT_COUNT {
            let word = self.word(s);
            if word == EMPTY {
                continue;
            }
            let hash = self.key_hash(s);
            if (hash as u64 >> bit) & 1 == 0 {
                continue;
            }
            let inline_slot = (word & 0xFF) as u8;
            let value = (inline_slot != NOT_INLINE)
                .then(|| self.inline_value(inline_slot as usize).to_vec());
            other
                .upsert(hash, word >> 8, value.as_deref())
                .expect("a split target page has room for a whole page");
            self.remove(hash);
        }
    }
}
