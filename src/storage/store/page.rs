//! One 4096-byte bucket page of the on-disk hashmap.
//!
//! ```text
//! offset  size  field
//!      0  1224  slot words: 153 × u64, `cmd_byte_offset << 8 | inline_slot`,
//!               u64::MAX = empty; inline_slot 0..15 or NOT_INLINE (0xFF)
//!   1224  1836  key hashes: 153 × 12 bytes (the low 96 bits of the key's keyed
//!               xxh3-128), same order (SoA)
//!   3060    12  zero
//!   3072   960  inline values: 15 × 64 bytes, 63 data bytes then 1 length byte
//!   4032    40  page lock: an AtomicU32 at 4032 (below), rest zero.
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
//! # Which bits of the hash a page keeps
//!
//! A page keeps the low 96 bits of each key's hash. The directory and page splits use the
//! lowest bits, so they are all there; two keys whose 96 bits agree would be one key to the
//! map, a chance of about 2^-97 per pair (10^-15 over 10M keys). Format 2 pages kept all
//! 128 bits in 16-byte slots, 128 to a page; 12-byte slots fit 153, so at the same fill a
//! page holds 20% more keys. Under uniform hashes every page splits at about the same key
//! count, so the fill of the whole map swings between half and full as keys grow: with 153
//! slots the index costs 32 to 46 bytes per key over that whole cycle (39 at 10M
//! keys), with 128 it was 38 to 54 (53 at 10M). Format 2 pages are rewritten as format 3
//! when they are loaded ([`upgrade_from_format_2`]).
//!
//! # Where a key's slot is
//!
//! A key's *home* slot is bits 64..79 of its hash scaled to the slot count (the directory
//! uses the low bits, which every key of a page shares). Its slot is the first one from
//! home, walking forward and wrapping, that was free when it was inserted (linear
//! probing), and removals close the gap they leave by moving later entries back
//! (backward-shift deletion, no tombstones). So every used slot is reached from its key's
//! home through used slots only: a lookup starts at home and stops at the first empty
//! slot, reading one or two cache lines of slot words and key hashes where a scan of all
//! 153 hashes would read up to 29. Pages loaded
//! from disk are laid out this way before use ([`place_loaded`]), whatever placement
//! wrote them.
//!
//! # The page lock
//!
//! ```text
//! bit  31     WRITER          the writer holds the page
//! bit  30     WRITER_WAITING  the writer waits for the readers inside to leave
//! bits 0–29   reader count    readers inside
//! ```
//!
//! Readers (any number of shards) hold it shared and the single writer (the apply loop)
//! exclusive. The writer must not be starved by a stream of readers on a hot page: it is
//! the replication core, which also drives Raft ticks. So:
//!
//! - A reader enters by a compare-and-swap `count → count + 1` (Acquire), only from a word
//!   with neither writer bit set; otherwise it waits. It leaves by subtracting 1 (Release).
//! - The writer first sets WRITER_WAITING (`fetch_or`). From then on no new reader
//!   enters, so the count only falls; the writer waits for exactly the readers already
//!   inside, then swaps the word `WRITER_WAITING → WRITER` (Acquire).
//! - The writer leaves by storing 0 (Release), which clears both bits and lets the
//!   waiting readers in.
//!
//! The writer thus waits at most for the reads in progress when it arrived, each a scan
//! of one page. Hence no thread may take one page shared twice at once: a writer arriving
//! between the two would wait for the first while the second waits for it. Waiting threads `spin_loop` a few rounds, then `yield_now` (there are
//! often more threads than cores, and the holder may be a thread that is not running).
//!
//! # Access
//!
//! A page is reached only through a raw pointer into the map's page arena, and its bytes
//! only through a guard: [`PageRead`] or [`PageWrite`], which hold the lock. Reads copy
//! bytes out, writes copy them in, both through raw pointers; the only reference to page
//! bytes handed out is an inline value, which borrows the guard. While the map is shared
//! the lock word is only ever touched atomically, and no Rust reference to page bytes
//! spans it (pages loaded from disk are filled through a slice before that).

use crate::storage::io::PAGE_SIZE;
use std::sync::atomic::{AtomicU32, Ordering};

/// Slots per page.
pub const SLOT_COUNT: usize = 153;
/// Bytes of a key hash as a page keeps it (its low 96 bits).
pub const HASH_SIZE: usize = 12;
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
/// The kind byte of a bucket page (in the directory)...
pub const KIND_BUCKET: u8 = 0;
/// ...and of an overflow page (in a chain).
pub const KIND_OVERFLOW: u8 = 1;

pub const OFFSET_SLOT_WORDS: usize = 0;
pub const OFFSET_KEY_HASHES: usize = OFFSET_SLOT_WORDS + SLOT_COUNT * 8;
pub const OFFSET_INLINE: usize = 3072;
pub const OFFSET_LOCK: usize = OFFSET_INLINE + INLINE_SLOT_COUNT * INLINE_SLOT_SIZE;
pub const LOCK_SIZE: usize = 40;
pub const OFFSET_BITMAP: usize = OFFSET_LOCK + LOCK_SIZE;
pub const OFFSET_LOCAL_DEPTH: usize = OFFSET_BITMAP + 2;
pub const OFFSET_KIND: usize = OFFSET_LOCAL_DEPTH + 1;
pub const OFFSET_USED: usize = OFFSET_KIND + 1;
pub const OFFSET_PREFIX: usize = OFFSET_USED + 4;
pub const OFFSET_NEXT: usize = OFFSET_PREFIX + 8;

const _: () = assert!(OFFSET_KEY_HASHES == 1224);
const _: () = assert!(OFFSET_KEY_HASHES + SLOT_COUNT * HASH_SIZE <= OFFSET_INLINE);
const _: () = assert!(
    (SLOT_COUNT + 1) * (8 + HASH_SIZE) > OFFSET_INLINE,
    "as many slots as fit below the inline values"
);
const _: () = assert!(SLOT_COUNT <= 1 << 16, "home_slot scales 16 bits");
const _: () = assert!(OFFSET_LOCK == 4032);
const _: () = assert!(OFFSET_BITMAP == 4072);
const _: () = assert!(OFFSET_NEXT + 8 == PAGE_SIZE);
const _: () = assert!(INLINE_SLOT_COUNT <= 16, "the bitmap is a u16");
const _: () = assert!(
    EMPTY == u64::MAX,
    "`init` empties slot words by filling 0xFF"
);
const _: () = assert!(
    OFFSET_LOCK.is_multiple_of(4),
    "the lock word is an aligned AtomicU32"
);

/// Lock word bit: the writer holds the page.
const WRITER: u32 = 1 << 31;
/// Lock word bit: the writer waits for the readers inside to leave; no new reader enters.
const WRITER_WAITING: u32 = 1 << 30;
/// The low bits of the lock word count the readers inside.
const READER_COUNT_MAX: u32 = WRITER_WAITING - 1;
/// `spin_loop` rounds a waiting thread makes before it starts yielding its core (there
/// are often more threads than cores, and the holder may be one that is not running).
const SPIN_COUNT_MAX: u32 = 64;

/// Spins a while, then yields.
#[derive(Default)]
struct Backoff {
    spin_count: u32,
}

impl Backoff {
    fn snooze(&mut self) {
        if self.spin_count < SPIN_COUNT_MAX {
            self.spin_count += 1;
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

/// The log address a slot word points at when the value is read from the log (not
/// inline, not empty).
pub fn log_address(word: u64) -> Option<u64> {
    (word != EMPTY && (word & 0xFF) as u8 == NOT_INLINE).then_some(word >> 8)
}

/// Packs a slot word.
pub fn slot_word(cmd_byte_offset: u64, inline_slot: u8) -> u64 {
    assert!(cmd_byte_offset < (1 << 56), "log offsets fit in 56 bits");
    cmd_byte_offset << 8 | inline_slot as u64
}

/// The slot a lookup of `key_hash` starts at: bits 64..79, which a page keeps, scaled
/// to the slot count.
pub fn home_slot(key_hash: u128) -> usize {
    ((key_hash >> 64) as u16 as usize * SLOT_COUNT) >> 16
}

/// The bytes of `key_hash` a page keeps.
pub fn kept_hash(key_hash: u128) -> [u8; HASH_SIZE] {
    let mut out = [0; HASH_SIZE];
    out.copy_from_slice(&key_hash.to_le_bytes()[..HASH_SIZE]);
    out
}

/// A key hash as a page keeps it, back as a number (the high 32 bits zero).
fn hash_from_kept(kept: [u8; HASH_SIZE]) -> u128 {
    let mut bytes = [0; 16];
    bytes[..HASH_SIZE].copy_from_slice(&kept);
    u128::from_le_bytes(bytes)
}

/// Slots of a format 2 page: 128 slot words at 0, then 128 full 16-byte hashes.
const FORMAT_2_SLOT_COUNT: usize = 128;
const FORMAT_2_OFFSET_KEY_HASHES: usize = FORMAT_2_SLOT_COUNT * 8;

/// Rewrites the slot words and key hashes of a format 2 page (as read from disk or from
/// a snapshot, before [`check_loaded`]) in this format's layout, packed from slot 0 (for
/// [`place_loaded`] to place); every other field is where both formats keep it. Every
/// word is carried over, whatever it holds, so `check_loaded` judges the page as read.
pub fn upgrade_from_format_2(page: &mut [u8]) {
    let Some(region) = page.get_mut(..OFFSET_INLINE) else {
        return;
    };
    let mut entries = [(EMPTY, [0u8; HASH_SIZE]); FORMAT_2_SLOT_COUNT];
    let (words, hashes) = region.split_at(FORMAT_2_OFFSET_KEY_HASHES);
    let mut count = 0;
    for (w, h) in words.chunks_exact(8).zip(hashes.chunks_exact(16)) {
        let word = u64::from_le_bytes(w.try_into().unwrap_or([0xFF; 8]));
        if word != EMPTY
            && let (Some(e), Some(kept)) = (entries.get_mut(count), h.get(..HASH_SIZE))
        {
            *e = (word, kept.try_into().unwrap_or([0; HASH_SIZE]));
            count += 1;
        }
    }
    let (words, hashes) = region.split_at_mut(OFFSET_KEY_HASHES);
    words.fill(0xFF);
    hashes.fill(0);
    for (s, &(word, kept)) in entries[..count].iter().enumerate() {
        words[s * 8..s * 8 + 8].copy_from_slice(&word.to_le_bytes());
        hashes[s * HASH_SIZE..(s + 1) * HASH_SIZE].copy_from_slice(&kept);
    }
}

/// Slots from `from` forward to `to`, wrapping.
fn distance(from: usize, to: usize) -> usize {
    (to + SLOT_COUNT - from) % SLOT_COUNT
}

/// Lays out the slots of a page just loaded (and checked by [`check_loaded`]) for
/// lookups from each key's home slot: every occupied slot word and its key hash are
/// placed again by linear probing from the home slot; inline values stay where they are.
/// The page is not shared yet: this works on plain bytes.
pub fn place_loaded(page: &mut [u8]) {
    let Some(page) = page.get_mut(..OFFSET_INLINE) else {
        return;
    };
    let (words, hashes) = page.split_at_mut(OFFSET_KEY_HASHES);
    // On the stack (3 KiB): a load lays out every page of the map.
    let mut entries = [(EMPTY, [0u8; HASH_SIZE]); SLOT_COUNT];
    let mut count = 0;
    for (w, h) in words.chunks_exact(8).zip(hashes.chunks_exact(HASH_SIZE)) {
        let word = u64::from_le_bytes(w.try_into().unwrap_or([0xFF; 8]));
        if word != EMPTY
            && let Some(e) = entries.get_mut(count)
        {
            *e = (word, h.try_into().unwrap_or([0; HASH_SIZE]));
            count += 1;
        }
    }
    words.fill(0xFF);
    hashes.fill(0);
    for &(word, hash) in &entries[..count] {
        let mut s = home_slot(hash_from_kept(hash));
        // At most SLOT_COUNT entries (one per slot read above), so a free slot exists.
        while words[s * 8..s * 8 + 8] != [0xFF; 8] {
            s = (s + 1) % SLOT_COUNT;
        }
        words[s * 8..s * 8 + 8].copy_from_slice(&word.to_le_bytes());
        hashes[s * HASH_SIZE..(s + 1) * HASH_SIZE].copy_from_slice(&hash);
    }
}

/// Whether every occupied slot of `page` is reached from its key's home slot through
/// occupied slots only (what lookups rely on).
pub fn placement_ok(page: &[u8]) -> Result<(), String> {
    let region = page.get(..OFFSET_INLINE).ok_or("short page")?;
    let (words, hashes) = region.split_at(OFFSET_KEY_HASHES);
    let used = |s: usize| words[s * 8..s * 8 + 8] != [0xFF; 8];
    for s in (0..SLOT_COUNT).filter(|&s| used(s)) {
        let kept = hashes
            .get(s * HASH_SIZE..(s + 1) * HASH_SIZE)
            .and_then(|h| h.try_into().ok())
            .unwrap_or([0; HASH_SIZE]);
        let hash = hash_from_kept(kept);
        let home = home_slot(hash);
        if let Some(gap) = (0..distance(home, s)).find(|&d| !used((home + d) % SLOT_COUNT)) {
            return Err(format!(
                "slot {s} (home {home}) is past the empty slot {}",
                (home + gap) % SLOT_COUNT
            ));
        }
    }
    Ok(())
}

/// A raw handle to a page in the arena.
#[derive(Clone, Copy)]
pub struct PagePtr(pub(super) *mut u8);

// SAFETY: the page stays allocated as long as the map, and every access to its bytes goes
// through a guard of the embedded lock.
unsafe impl Send for PagePtr {}
unsafe impl Sync for PagePtr {}

impl PagePtr {
    fn lock_word<'a>(self) -> &'a AtomicU32 {
        // SAFETY: the lock word is 4-byte aligned inside a live page and, while the page
        // is shared, only ever accessed atomically (no other reference spans it).
        unsafe { &*(self.0.add(OFFSET_LOCK) as *const AtomicU32) }
    }

    /// Takes the page lock shared. Waits while the writer holds the lock or waits for it.
    /// Asks the CPU to start loading the lines a lookup of `key_hash` touches first (the
    /// lock word, and the slot word and key hash of its home slot), so that the lookups
    /// of a batch overlap their cache misses. Reads nothing and writes nothing: a prefetch
    /// cannot fault or race.
    pub fn prefetch(self, key_hash: u128) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            let home = home_slot(key_hash);
            for at in [
                OFFSET_LOCK,
                OFFSET_SLOT_WORDS + home * 8,
                OFFSET_KEY_HASHES + home * HASH_SIZE,
            ] {
                // `wrapping_add` keeps this free of any claim about the pointer; the
                // offsets lie inside the page anyway.
                let line = self.0.wrapping_add(at).cast::<i8>().cast_const();
                // SAFETY: SSE is part of the x86_64 baseline, so the instruction exists;
                // a prefetch is a hint that never faults, whatever the address.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(line) };
            }
        }
    }

    pub fn read(self) -> PageRead {
        let lock = self.lock_word();
        let mut backoff = Backoff::default();
        loop {
            let cur = lock.load(Ordering::Relaxed);
            if cur & (WRITER | WRITER_WAITING) == 0 {
                assert!(cur < READER_COUNT_MAX, "page lock reader count overflow");
                // Fails if the writer announced itself since the load: then wait for it.
                if lock
                    .compare_exchange_weak(cur, cur + 1, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return PageRead { page: self };
                }
                continue;
            }
            backoff.snooze();
        }
    }

    /// Takes the page lock exclusive: announces the writer, so no new reader enters, then
    /// waits for the readers already inside. Only the single writer calls this.
    pub fn write(self) -> PageWrite {
        let lock = self.lock_word();
        let before = lock.fetch_or(WRITER_WAITING, Ordering::Relaxed);
        assert!(
            before & (WRITER | WRITER_WAITING) == 0,
            "page lock taken exclusive twice: the map has a single writer"
        );
        let mut backoff = Backoff::default();
        // Readers only leave now, so once the count reaches zero it stays there.
        while !(lock.load(Ordering::Relaxed) == WRITER_WAITING
            && lock
                .compare_exchange_weak(WRITER_WAITING, WRITER, Ordering::Acquire, Ordering::Relaxed)
                .is_ok())
        {
            backoff.snooze();
        }
        PageWrite { page: self }
    }

    /// Resets the lock word (a page just loaded or copied; no thread can hold it).
    pub fn reset_lock(bytes: &mut [u8]) {
        bytes[OFFSET_LOCK..OFFSET_LOCK + LOCK_SIZE].fill(0);
    }

    /// The address of `len` page bytes at `at`, which must lie clear of the lock word.
    fn field(self, at: usize, len: usize) -> *mut u8 {
        assert!(
            at + len <= OFFSET_LOCK || (at >= OFFSET_LOCK + LOCK_SIZE && at + len <= PAGE_SIZE),
            "page field {at}+{len} overlaps the lock word or the page end"
        );
        // SAFETY: `at` is inside the page (checked above).
        unsafe { self.0.add(at) }
    }
}

/// Checks a page read from disk, before the map is shared, against everything the page
/// code assumes: every slot word names an inline slot that exists (or none), no inline
/// slot is named twice and each named one is marked in the bitmap, the used count is the
/// number of occupied slots, and the kind is known. So no later access leaves the page,
/// and no update underflows a count or frees another key's value.
pub fn check_loaded(bytes: &[u8]) -> Result<(), String> {
    let words = bytes
        .get(OFFSET_SLOT_WORDS..OFFSET_KEY_HASHES)
        .ok_or("short page")?;
    let field = |at: usize, len: usize| bytes.get(at..at + len).ok_or("short page");
    let bitmap = u16::from_le_bytes(
        field(OFFSET_BITMAP, 2)?
            .try_into()
            .map_err(|_| "short page")?,
    );
    let used = u16::from_le_bytes(
        field(OFFSET_USED, 2)?
            .try_into()
            .map_err(|_| "short page")?,
    );
    let kind = field(OFFSET_KIND, 1)?[0];
    if kind != KIND_BUCKET && kind != KIND_OVERFLOW {
        return Err(format!("unknown page kind {kind}"));
    }
    let mut named = 0u16;
    let mut occupied = 0usize;
    for (slot, word) in words.chunks_exact(8).enumerate() {
        let word = u64::from_le_bytes(word.try_into().map_err(|_| "short slot word")?);
        if word == EMPTY {
            continue;
        }
        occupied += 1;
        let inline = (word & 0xFF) as u8;
        if inline == NOT_INLINE {
            continue;
        }
        if inline as usize >= INLINE_SLOT_COUNT {
            return Err(format!("slot {slot} names inline slot {inline}"));
        }
        let bit = 1u16 << inline;
        if named & bit != 0 {
            return Err(format!("inline slot {inline} is named by two slots"));
        }
        if bitmap & bit == 0 {
            return Err(format!(
                "slot {slot} names inline slot {inline}, which is marked free"
            ));
        }
        named |= bit;
    }
    if occupied != used as usize {
        return Err(format!(
            "{occupied} slots are occupied but the page counts {used}"
        ));
    }
    Ok(())
}

mod sealed {
    /// Only the two guards are page views: holding one is what makes reading sound.
    pub trait Guard {}
}

/// Read access to a page's fields, through a guard that holds the page lock.
pub trait PageView: sealed::Guard {
    fn ptr(&self) -> PagePtr;

    /// Copies `out.len()` bytes at `at` out of the page.
    fn read_into(&self, at: usize, out: &mut [u8]) {
        let src = self.ptr().field(at, out.len());
        // SAFETY: the field is inside the page and clear of the lock word; the guard holds
        // the page lock, so no other thread writes these bytes during the copy.
        unsafe { std::ptr::copy_nonoverlapping(src, out.as_mut_ptr(), out.len()) }
    }

    fn array<const N: usize>(&self, at: usize) -> [u8; N] {
        let mut out = [0; N];
        self.read_into(at, &mut out);
        out
    }

    fn word(&self, slot: usize) -> u64 {
        u64::from_le_bytes(self.array(OFFSET_SLOT_WORDS + slot * 8))
    }

    /// The hash of the key in `slot` as the page keeps it: its low 96 bits.
    fn key_hash(&self, slot: usize) -> u128 {
        hash_from_kept(self.array(OFFSET_KEY_HASHES + slot * HASH_SIZE))
    }

    fn inline_value(&self, inline_slot: usize) -> &[u8] {
        assert!(inline_slot < INLINE_SLOT_COUNT, "inline slot {inline_slot}");
        let at = OFFSET_INLINE + inline_slot * INLINE_SLOT_SIZE;
        let [len] = self.array(at + INLINE_VALUE_SIZE_MAX);
        let len = (len as usize).min(INLINE_VALUE_SIZE_MAX);
        let src = self.ptr().field(at, len);
        // SAFETY: the bytes lie in one inline slot, clear of the lock word. The slice
        // borrows the guard, which holds the page lock all that time: a shared guard keeps
        // the writer out, and an exclusive one writes only through `&mut self`, which the
        // borrow excludes.
        unsafe { std::slice::from_raw_parts(src, len) }
    }

    fn bitmap(&self) -> u16 {
        u16::from_le_bytes(self.array(OFFSET_BITMAP))
    }

    fn local_depth(&self) -> u8 {
        let [depth] = self.array(OFFSET_LOCAL_DEPTH);
        depth
    }

    fn used(&self) -> usize {
        u16::from_le_bytes(self.array(OFFSET_USED)) as usize
    }

    fn prefix(&self) -> u64 {
        u64::from_le_bytes(self.array(OFFSET_PREFIX))
    }

    /// Whether this is an overflow page (reached through a chain, not the directory).
    fn is_overflow(&self) -> bool {
        let [kind] = self.array(OFFSET_KIND);
        kind == KIND_OVERFLOW
    }

    /// The next page of this bucket's overflow chain.
    fn next_page(&self) -> Option<u32> {
        let stored = u64::from_le_bytes(self.array(OFFSET_NEXT));
        stored.checked_sub(1).map(|n| n as u32)
    }

    /// The slot holding `key_hash`, if any: probes from its home slot to the first empty
    /// one (see the module docs), bounds checked once for each region.
    fn find(&self, key_hash: u128) -> Option<usize> {
        let words = self.ptr().field(OFFSET_SLOT_WORDS, SLOT_COUNT * 8);
        let hashes = self.ptr().field(OFFSET_KEY_HASHES, SLOT_COUNT * HASH_SIZE);
        let target = kept_hash(key_hash);
        let mut s = home_slot(key_hash);
        for _ in 0..SLOT_COUNT {
            // SAFETY: slot `s`'s 8 and 12 bytes lie inside the regions `field` checked
            // (s < SLOT_COUNT); the guard holds the page lock, so no thread writes them
            // during the reads, and unaligned reads of plain bytes have no invalid value.
            let word = unsafe { std::ptr::read_unaligned(words.add(s * 8).cast::<[u8; 8]>()) };
            if u64::from_le_bytes(word) == EMPTY {
                return None;
            }
            // SAFETY: as above.
            let hash = unsafe {
                std::ptr::read_unaligned(hashes.add(s * HASH_SIZE).cast::<[u8; HASH_SIZE]>())
            };
            if hash == target {
                return Some(s);
            }
            s = (s + 1) % SLOT_COUNT;
        }
        None
    }

    /// Copies the whole page out, the lock word as zeros.
    fn copy_to(&self, out: &mut [u8]) {
        let out = &mut out[..PAGE_SIZE];
        self.read_into(0, &mut out[..OFFSET_LOCK]);
        PagePtr::reset_lock(out);
        self.read_into(OFFSET_BITMAP, &mut out[OFFSET_BITMAP..]);
    }
}

/// A page held shared.
pub struct PageRead {
    page: PagePtr,
}

impl sealed::Guard for PageRead {}

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

impl sealed::Guard for PageWrite {}

impl PageView for PageWrite {
    fn ptr(&self) -> PagePtr {
        self.page
    }
}

impl Drop for PageWrite {
    fn drop(&mut self) {
        // No reader enters while WRITER is set, so nothing else changed the word.
        self.page.lock_word().store(0, Ordering::Release);
    }
}

impl PageWrite {
    /// Copies `src` into the page at `at`.
    fn store(&mut self, at: usize, src: &[u8]) {
        let dst = self.page.field(at, src.len());
        // SAFETY: the field is inside the page and clear of the lock word; this guard
        // holds the page lock exclusive, so no other thread touches these bytes, and
        // `&mut self` means no slice from `inline_value` is alive.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) }
    }

    /// Sets `len` page bytes at `at` to `byte`.
    fn fill(&mut self, at: usize, len: usize, byte: u8) {
        let dst = self.page.field(at, len);
        // SAFETY: as in `store`.
        unsafe { std::ptr::write_bytes(dst, byte, len) }
    }

    /// Formats an empty page with the given depth and prefix.
    pub fn init(&mut self, local_depth: u8, prefix: u64) {
        self.fill(
            OFFSET_SLOT_WORDS,
            OFFSET_KEY_HASHES - OFFSET_SLOT_WORDS,
            0xFF,
        );
        self.fill(OFFSET_KEY_HASHES, OFFSET_LOCK - OFFSET_KEY_HASHES, 0);
        self.fill(OFFSET_BITMAP, PAGE_SIZE - OFFSET_BITMAP, 0);
        self.set_depth_prefix(local_depth, prefix);
    }

    /// Marks this page as an overflow page.
    pub fn set_overflow(&mut self) {
        self.store(OFFSET_KIND, &[KIND_OVERFLOW]);
    }

    /// Links the next page of this bucket's overflow chain.
    pub fn set_next_page(&mut self, next: Option<u32>) {
        let stored = next.map_or(0, |n| n as u64 + 1);
        self.store(OFFSET_NEXT, &stored.to_le_bytes());
    }

    pub fn set_depth_prefix(&mut self, local_depth: u8, prefix: u64) {
        self.store(OFFSET_LOCAL_DEPTH, &[local_depth]);
        self.store(OFFSET_PREFIX, &prefix.to_le_bytes());
    }

    fn set_used(&mut self, used: usize) {
        self.store(OFFSET_USED, &(used as u16).to_le_bytes());
    }

    fn set_bitmap(&mut self, bitmap: u16) {
        self.store(OFFSET_BITMAP, &bitmap.to_le_bytes());
    }

    fn set_word(&mut self, slot: usize, word: u64) {
        self.store(OFFSET_SLOT_WORDS + slot * 8, &word.to_le_bytes());
    }

    fn set_key_hash(&mut self, slot: usize, key_hash: u128) {
        self.store(OFFSET_KEY_HASHES + slot * HASH_SIZE, &kept_hash(key_hash));
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
        let mut slot = [0; INLINE_SLOT_SIZE];
        slot[..value.len()].copy_from_slice(value);
        slot[INLINE_VALUE_SIZE_MAX] = value.len() as u8;
        self.store(OFFSET_INLINE + free * INLINE_SLOT_SIZE, &slot);
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
        self.upsert_word(key_hash, cmd_byte_offset, inline)
            .map(|(previous, _)| previous.is_none())
    }

    /// [`PageWrite::upsert`], returning the slot word it replaced (`None` for a new key)
    /// and the one it stored.
    pub fn upsert_word(
        &mut self,
        key_hash: u128,
        cmd_byte_offset: u64,
        inline: Option<&[u8]>,
    ) -> Result<(Option<u64>, u64), PageFull> {
        let (slot, previous) = match self.find(key_hash) {
            Some(slot) => {
                let word = self.word(slot);
                self.free_inline(word);
                (slot, Some(word))
            }
            None => {
                let home = home_slot(key_hash);
                let slot = (0..SLOT_COUNT)
                    .map(|d| (home + d) % SLOT_COUNT)
                    .find(|&s| self.word(s) == EMPTY)
                    .ok_or(PageFull)?;
                self.set_key_hash(slot, key_hash);
                self.set_used(self.used() + 1);
                (slot, None)
            }
        };
        let inline_slot = match inline {
            Some(value) => self.alloc_inline(value),
            None => NOT_INLINE,
        };
        let word = slot_word(cmd_byte_offset, inline_slot);
        self.set_word(slot, word);
        Ok((previous, word))
    }

    /// Removes `key_hash`; returns whether it was present.
    pub fn remove(&mut self, key_hash: u128) -> bool {
        self.remove_word(key_hash).is_some()
    }

    /// Removes `key_hash`; returns the slot word it had.
    pub fn remove_word(&mut self, key_hash: u128) -> Option<u64> {
        let slot = self.find(key_hash)?;
        let word = self.word(slot);
        self.free_inline(word);
        // Backward shift: an entry further along whose probe from home passed the hole
        // moves into it, leaving a hole where it was; up to the first empty slot.
        let mut hole = slot;
        for d in 1..SLOT_COUNT {
            let s = (slot + d) % SLOT_COUNT;
            let w = self.word(s);
            if w == EMPTY {
                break;
            }
            let hash = self.key_hash(s);
            if distance(home_slot(hash), s) >= distance(hole, s) {
                self.set_word(hole, w);
                self.set_key_hash(hole, hash);
                hole = s;
            }
        }
        self.set_word(hole, EMPTY);
        self.set_key_hash(hole, 0);
        self.set_used(self.used() - 1);
        Some(word)
    }

    /// Points `key_hash` at log address `to` if it points at log address `from` now (a
    /// value the cleaner moved); returns whether it did.
    pub fn relocate(&mut self, key_hash: u128, from: u64, to: u64) -> bool {
        let Some(slot) = self.find(key_hash) else {
            return false;
        };
        if log_address(self.word(slot)) != Some(from) {
            return false;
        }
        self.set_word(slot, slot_word(to, NOT_INLINE));
        true
    }

    /// Moves every entry whose hash has bit `bit` set into `other` (an empty page).
    pub fn split_into(&mut self, other: &mut PageWrite, bit: u32) {
        // Collected first: each removal may move later entries back.
        let moving: Vec<(u128, u64)> = (0..SLOT_COUNT)
            .map(|s| (self.key_hash(s), self.word(s)))
            .filter(|&(hash, word)| word != EMPTY && (hash as u64 >> bit) & 1 == 1)
            .collect();
        for (hash, word) in moving {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::store::Chunk;
    use std::sync::atomic::AtomicBool;
    use std::time::{Duration, Instant};

    /// Polls `done` for up to `limit`; returns whether it came true.
    fn wait_for(limit: Duration, done: impl Fn() -> bool) -> bool {
        let start = Instant::now();
        while !done() {
            if start.elapsed() > limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    /// A writer waiting for a reader already inside keeps new readers out, so a steady
    /// stream of readers cannot starve it: reader B, arriving after the writer announced
    /// itself, gets in only once the writer has been in and out.
    #[test]
    fn waiting_writer_goes_before_new_readers() {
        let chunk = Chunk::new();
        let page = chunk.page(0);
        page.write().init(0, 0);
        let reader_a = page.read();
        let writer_done = AtomicBool::new(false);
        let b_in = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut guard = page.write();
                guard.set_depth_prefix(1, 1);
                writer_done.store(true, Ordering::SeqCst);
            });
            // The writer has announced itself once the lock word shows more than reader A.
            wait_for(Duration::from_secs(1), || {
                page.lock_word().load(Ordering::SeqCst) != 1
            });
            let b = s.spawn(|| {
                let guard = page.read();
                b_in.store(true, Ordering::SeqCst);
                // The writer's change is visible, and it came before B.
                assert!(
                    writer_done.load(Ordering::SeqCst),
                    "reader B went before the writer"
                );
                (guard.local_depth(), guard.prefix())
            });
            std::thread::sleep(Duration::from_millis(50));
            assert!(
                !b_in.load(Ordering::SeqCst),
                "reader B entered past a waiting writer"
            );
            assert!(
                !writer_done.load(Ordering::SeqCst),
                "the writer went in past reader A"
            );
            drop(reader_a);
            assert_eq!(b.join().unwrap(), (1, 1));
        });
        assert_eq!(page.lock_word().load(Ordering::SeqCst), 0, "all released");
    }

    /// A hash whose home slot is `home`, made distinct by `n` in the other kept bits.
    fn hash_at(home: usize, n: u64) -> u128 {
        let bits = (home << 16).div_ceil(SLOT_COUNT);
        let hash = ((bits as u128) << 64) | ((n as u128 & 0xFFFF) << 80) | n as u128;
        assert_eq!(home_slot(hash), home);
        hash
    }

    proptest::proptest! {
        /// Random upserts and removals, with homes crowded into a few slots so probes run
        /// long and wrap: every key present is found with its latest word, every key
        /// removed is not, the count is right, and every slot stays reachable from its
        /// home through used slots (which a lookup that stops at an empty slot needs).
        #[test]
        fn probing_and_backward_shift_keep_every_key_reachable(
            ops in proptest::collection::vec((0u64..200, 0usize..6, proptest::bool::ANY), 1..600),
        ) {
            let chunk = Chunk::new();
            let page = chunk.page(0);
            let mut w = page.write();
            w.init(0, 0);
            let mut model = std::collections::HashMap::new();
            for (i, &(n, crowd, insert)) in ops.iter().enumerate() {
                // Homes from 3 before the last slot wrap past it.
                let hash = hash_at((SLOT_COUNT - 3 + crowd) % SLOT_COUNT, n);
                if insert {
                    let offset = i as u64 * 4096;
                    match w.upsert(hash, offset, None) {
                        Ok(_) => { model.insert(hash, offset); }
                        Err(PageFull) => proptest::prop_assert!(model.len() == SLOT_COUNT),
                    }
                } else {
                    proptest::prop_assert_eq!(w.remove(hash), model.remove(&hash).is_some());
                }
                proptest::prop_assert_eq!(w.used(), model.len());
                let mut image = vec![0; PAGE_SIZE];
                w.copy_to(&mut image);
                proptest::prop_assert_eq!(placement_ok(&image), Ok(()));
            }
            for n in 0..200 {
                for crowd in 0..6 {
                    let hash = hash_at((SLOT_COUNT - 3 + crowd) % SLOT_COUNT, n);
                    let found = w.find(hash).map(|s| w.word(s) >> 8);
                    proptest::prop_assert_eq!(found, model.get(&hash).copied());
                }
            }
        }
    }

    /// A lookup reads a few slots, not the page: at the fill pages have between splits,
    /// uniformly hashed keys sit within a few slots of home.
    #[test]
    fn keys_sit_near_their_home_slot() {
        let chunk = Chunk::new();
        let page = chunk.page(0);
        let mut w = page.write();
        w.init(0, 0);
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut hashes = Vec::new();
        for _ in 0..SLOT_COUNT * 3 / 4 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let hash = (x as u128) << 64 | x.rotate_left(17) as u128;
            assert_eq!(w.upsert(hash, 4096, None), Ok(true));
            hashes.push(hash);
        }
        let probes: usize = hashes
            .iter()
            .map(|&h| distance(home_slot(h), w.find(h).unwrap()) + 1)
            .sum();
        let mean = probes as f64 / hashes.len() as f64;
        assert!(mean < 4.0, "mean probe length {mean} at 75% fill");
    }

    /// A page written with another placement (keys packed from slot 0, as earlier
    /// versions stored them) is laid out for probing when loaded, so every key is found.
    #[test]
    fn loaded_pages_are_placed_for_probing() {
        let chunk = Chunk::new();
        let page = chunk.page(0);
        let mut image = vec![0u8; PAGE_SIZE];
        {
            let mut w = page.write();
            w.init(0, 0);
            w.copy_to(&mut image);
        }
        let keys: Vec<u128> = (0..40)
            .map(|n| hash_at((n * 37 + 5) as usize % SLOT_COUNT, n))
            .collect();
        for (slot, &k) in keys.iter().enumerate() {
            image[OFFSET_SLOT_WORDS + slot * 8..][..8]
                .copy_from_slice(&slot_word(slot as u64 * 4096, NOT_INLINE).to_le_bytes());
            image[OFFSET_KEY_HASHES + slot * HASH_SIZE..][..HASH_SIZE]
                .copy_from_slice(&kept_hash(k));
        }
        image[OFFSET_USED..OFFSET_USED + 2].copy_from_slice(&40u16.to_le_bytes());
        assert_eq!(check_loaded(&image), Ok(()));
        assert!(placement_ok(&image).is_err(), "packed from slot 0");
        place_loaded(&mut image);
        assert_eq!(placement_ok(&image), Ok(()));
        assert_eq!(check_loaded(&image), Ok(()));
        let loaded = chunk.page(1);
        {
            let mut w = loaded.write();
            w.init(0, 0);
            w.store(0, &image[..OFFSET_LOCK]);
            w.store(OFFSET_BITMAP, &image[OFFSET_BITMAP..]);
        }
        let r = loaded.read();
        for (slot, &k) in keys.iter().enumerate() {
            let found = r.find(k).map(|s| r.word(s));
            assert_eq!(
                found,
                Some(slot_word(slot as u64 * 4096, NOT_INLINE)),
                "key {slot}"
            );
        }
        assert_eq!(r.used(), 40);
    }

    /// Every field written through a write guard reads back through a read guard, and a
    /// copied-out page carries no lock state.
    #[test]
    fn upsert_remove_split_and_copy_keep_every_field() {
        let chunk = Chunk::new();
        let (a, b) = (chunk.page(0), chunk.page(1));
        let mut wa = a.write();
        wa.init(0, 0);
        let value = |k: u128| vec![k as u8; (k % 60) as usize];
        for k in 1..=SLOT_COUNT as u128 {
            assert_eq!(wa.upsert(k, k as u64 * 4096, Some(&value(k))), Ok(true));
        }
        assert_eq!(wa.upsert(1000, 0, None), Err(PageFull));
        assert_eq!(
            wa.upsert(2, 77, None),
            Ok(false),
            "a replaced key is not new"
        );
        assert_eq!(wa.used(), SLOT_COUNT);
        // Keys 1..=15 took the inline slots; key 2 gave its slot back.
        assert_eq!(wa.bitmap().count_ones() as usize, INLINE_SLOT_COUNT - 1);
        assert!(wa.remove(3) && !wa.remove(3));
        assert_eq!(wa.used(), SLOT_COUNT - 1);
        let mut wb = b.write();
        wb.init(1, 1);
        wa.set_depth_prefix(1, 0);
        wa.split_into(&mut wb, 0);
        drop((wa, wb));
        let (ra, rb) = (a.read(), b.read());
        for k in 1..=SLOT_COUNT as u128 {
            let (page, other) = if k % 2 == 1 { (&rb, &ra) } else { (&ra, &rb) };
            assert_eq!(other.find(k), None, "key {k} in both halves");
            let Some(slot) = page.find(k) else {
                assert_eq!(k, 3, "key {k} lost in the split");
                continue;
            };
            let word = page.word(slot);
            let inline = (word & 0xFF) as u8;
            if k == 2 {
                assert_eq!(word, slot_word(77, NOT_INLINE));
            } else {
                assert_eq!(word >> 8, k as u64 * 4096);
                if inline != NOT_INLINE {
                    assert_eq!(page.inline_value(inline as usize), value(k));
                }
            }
        }
        assert_eq!((ra.local_depth(), ra.prefix()), (1, 0));
        assert_eq!((rb.local_depth(), rb.prefix()), (1, 1));
        assert_eq!(ra.used() + rb.used(), SLOT_COUNT - 1);
        let mut image = vec![0xAA; PAGE_SIZE];
        rb.copy_to(&mut image);
        assert_ne!(b.lock_word().load(Ordering::SeqCst), 0, "copied while held");
        assert!(
            image[OFFSET_LOCK..OFFSET_LOCK + LOCK_SIZE]
                .iter()
                .all(|&x| x == 0)
        );
        assert_eq!(image[OFFSET_LOCAL_DEPTH], 1);
        assert_eq!(image[OFFSET_PREFIX], 1);
        assert_eq!(
            u16::from_le_bytes([image[OFFSET_BITMAP], image[OFFSET_BITMAP + 1]]),
            rb.bitmap()
        );
        assert_eq!(check_loaded(&image), Ok(()));
    }
}
