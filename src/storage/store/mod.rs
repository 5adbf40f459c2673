//! The hashmap that indexes the log: 4096-byte bucket pages, grown online by extendible
//! hashing, checkpointed to disk through a double-write journal.
//!
//! Keys are identified by their hash alone (the design accepts the collision odds; a page
//! keeps the low 96 bits, see [`page`]): xxh3-128 keyed with a secret of
//! [`KEY_SECRET_SIZE`] random bytes drawn when the map is created and stored in its
//! metadata page. Without the secret nobody can choose keys that share hash bits, so a
//! client cannot flood one page, grow the directory without bound, or make every replica
//! that replays its writes fail the same way. Each replica draws its own secret: the hash
//! decides only where a key sits in this node's pages, never anything replicated. Each key
//! maps to the log-file offset of its latest SET command, and values of at most 63 bytes
//! are copied into one of the page's 15 inline slots so a GET needs no log read.
//!
//! # Files
//!
//! `map.dat`: page 0 is the metadata page, page `i + 1` holds bucket page `i`.
//!
//! ```text
//! metadata page
//!    0   8  magic                  b"OLMAP\0\0\x03" (format 2, b"OLMAP\0\0\x02",
//!                                  had 128 slots a page: read and upgraded)
//!    8   8  last_committed_index   log index the pages reflect
//!   16   8  last_committed_term
//!   24   8  slot_count             bucket pages × 153 (× 128 in format 2)
//!   32   8  entry_count            live keys
//!   40   8  page_count             bucket pages
//!   48   8  global_depth           directory bits
//!   56   8  checkpoint_sequence
//!   64 192  key secret             the xxh3 secret every key hash is keyed with
//!  256 3824 bloom filter           30592 bits, 3 probes per key
//! 4080  16  xxh3-128 of bytes 0..4080
//! ```
//!
//! A new map's secret reaches the disk with its first checkpoint, in the same journaled
//! write as the first pages hashed with it; until then the map is rebuilt from the log
//! (under a fresh secret) after a crash.
//!
//! `ckpt.0` / `ckpt.1`: alternating double-write journals (see [`checkpoint`]).
//!
//! # Growth
//!
//! A directory of `2^global_depth` page numbers is indexed by the low bits of the key
//! hash. When a key must go into a full page, that page alone is split in two by one more
//! hash bit (doubling the directory first if the page was already at the global depth).
//! No operation ever moves more than one page's entries. The directory is rebuilt on load
//! from each page's local depth and prefix, so it is never written to disk.
//!
//! The directory is bounded: it doubles only while it stays within
//! [`DIRECTORY_PAGES_RATIO_MAX`] entries per page (or [`DIRECTORY_LEN_FLOOR`] entries).
//! A full page that cannot split within that bound — keys that share more low hash bits
//! than the budget allows, which random keys under a secret hash practically never do —
//! gets an overflow page chained behind it instead. A chained bucket is never split
//! again; lookups walk its chain. Chains are checked on load (every link in range, every
//! overflow page on exactly one chain).
//!
//! # Concurrency
//!
//! One writer (the apply loop) and any number of readers (shards serving GETs). Readers
//! hold the directory lock shared and the page's embedded lock shared; the writer holds
//! the directory lock shared and the page lock exclusive for an update, and the directory
//! lock exclusive only for a split.
//!
//! # Checkpoints
//!
//! A checkpoint covers the map at one index but copies nothing when it begins: it marks
//! the pages changed since the last one as pending. Its job (on any thread) takes pending
//! pages under their page locks, a group at a time, while the writer goes on applying;
//! the writer, about to change a pending page, saves that page's image for the job first.
//! Each page is copied once, the journal holds every page as it was at the index, and the
//! memory a checkpoint needs is its write buffer plus the images saved for it, not a copy
//! of every changed page.

mod bloom;
pub mod checkpoint;
pub mod image;
pub mod page;
#[cfg(test)]
mod tests;

use crate::storage::io::{AlignedBuf, Backend, BlockFile, PAGE_SIZE, read_exact_at};
use crate::storage::log::{LogIndex, Term};
use bloom::Bloom;
use page::{INLINE_VALUE_SIZE_MAX, NOT_INLINE, PageFull, PagePtr, PageView, PageWrite, SLOT_COUNT};
use std::alloc::handle_alloc_error;
use std::io;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use xxhash_rust::xxh3::{xxh3_128, xxh3_128_with_secret};

/// Bytes of the secret the key hash is keyed with (xxh3's own secret size).
pub const KEY_SECRET_SIZE: usize = 192;
/// The shortest secret xxh3 accepts.
const XXH3_SECRET_SIZE_MIN: usize = 136;
const _: () = assert!(KEY_SECRET_SIZE >= XXH3_SECRET_SIZE_MIN);

/// The key hash the map is indexed by: xxh3-128 keyed with the map's secret.
#[derive(Clone)]
pub struct KeyHasher {
    secret: Box<[u8; KEY_SECRET_SIZE]>,
}

impl KeyHasher {
    /// A hasher keyed with `secret` (random bytes: see [`Backend::fill_random`]).
    pub fn new(secret: [u8; KEY_SECRET_SIZE]) -> KeyHasher {
        KeyHasher {
            secret: Box::new(secret),
        }
    }

    /// The 128-bit hash of `key`.
    pub fn hash(&self, key: &[u8]) -> u128 {
        xxh3_128_with_secret(key, &self.secret[..])
    }
}

impl std::fmt::Debug for KeyHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyHasher(secret)")
    }
}

/// Bucket pages per arena chunk (2 MiB chunks: one huge page each).
const PAGES_PER_CHUNK: usize = 512;
/// The directory never grows beyond this many bits.
pub const GLOBAL_DEPTH_MAX: u8 = 40;
/// The directory may always grow to this many entries (4 MiB of page numbers)...
pub const DIRECTORY_LEN_FLOOR: usize = 1 << 20;
/// ...and beyond that only while it has at most this many entries per page. Random keys
/// keep it near one entry per page.
pub const DIRECTORY_PAGES_RATIO_MAX: usize = 8;

pub const META_MAGIC: [u8; 8] = *b"OLMAP\0\0\x03";
/// The map file format before pages kept 96-bit hashes in 153 slots (see
/// [`page::upgrade_from_format_2`]): still read, and written back as format 3.
const META_MAGIC_FORMAT_2: [u8; 8] = *b"OLMAP\0\0\x02";
const META_SECRET_OFFSET: usize = 64;
const META_BLOOM_OFFSET: usize = META_SECRET_OFFSET + KEY_SECRET_SIZE;
const META_HASH_OFFSET: usize = PAGE_SIZE - 16;
pub const BLOOM_BYTES: usize = META_HASH_OFFSET - META_BLOOM_OFFSET;
const _: () = assert!(BLOOM_BYTES.is_multiple_of(8));
const _: () = assert!(META_BLOOM_OFFSET == 256);

/// What a SET did to where a key's value is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetOutcome {
    /// The log address of the value it replaced, if that one was read from the log.
    pub replaced_address: Option<u64>,
    /// The log address of the new value, if it is read from the log (not inline).
    pub stored_address: Option<u64>,
}

/// Where a key's value is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Absent.
    Missing,
    /// Stored inline: here it is.
    Inline(Vec<u8>),
    /// In the log, in the SET command at this file offset.
    InLog(u64),
}

/// [`Lookup`] with an inline value borrowed from its page (see [`Map::get_with`]).
#[derive(Debug, PartialEq, Eq)]
pub enum LookupRef<'a> {
    Missing,
    Inline(&'a [u8]),
    InLog(u64),
}

impl LookupRef<'_> {
    pub fn to_owned(&self) -> Lookup {
        match *self {
            LookupRef::Missing => Lookup::Missing,
            LookupRef::Inline(v) => Lookup::Inline(v.to_vec()),
            LookupRef::InLog(offset) => Lookup::InLog(offset),
        }
    }
}

/// The metadata the map persists alongside its pages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MapMeta {
    pub last_committed_index: LogIndex,
    pub last_committed_term: Term,
    pub entry_count: u64,
    pub page_count: u64,
    pub global_depth: u8,
    pub checkpoint_sequence: u64,
}

/// Bytes of one arena chunk.
const CHUNK_SIZE: usize = PAGES_PER_CHUNK * PAGE_SIZE;
const CHUNK_LAYOUT: std::alloc::Layout =
    match std::alloc::Layout::from_size_align(CHUNK_SIZE, CHUNK_SIZE) {
        Ok(layout) => layout,
        Err(_) => panic!("chunk layout"),
    };

/// One arena allocation: `PAGES_PER_CHUNK` zeroed, page-aligned pages.
///
/// Readers and the writer touch different pages of one chunk at the same time, so once a
/// chunk is in the arena its bytes are reached only through raw [`PagePtr`]s derived from
/// the allocation itself; no Rust reference to the chunk's bytes exists while it is
/// shared.
struct Chunk {
    base: NonNull<u8>,
}

// SAFETY: a chunk owns its allocation exclusively, like a `Box<[u8]>`.
unsafe impl Send for Chunk {}
// SAFETY: `&Chunk` hands out only raw page pointers, and every access through one is
// guarded by that page's embedded lock.
unsafe impl Sync for Chunk {}

impl Chunk {
    /// A zeroed chunk: an anonymous mapping aligned to its size, which the kernel is
    /// asked to back with one transparent huge page. A lookup lands on a random page of
    /// the map; with 4 KiB pages nearly every one missed the TLB as well as the cache.
    fn new() -> Chunk {
        let len = 2 * CHUNK_SIZE;
        // SAFETY: a new private anonymous mapping (no file, no fixed address); the result
        // is checked before use.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            handle_alloc_error(CHUNK_LAYOUT);
        }
        let raw = raw.cast::<u8>();
        let head = (CHUNK_SIZE - raw as usize % CHUNK_SIZE) % CHUNK_SIZE;
        // SAFETY: `head < CHUNK_SIZE`, so the aligned chunk and everything trimmed lie in
        // the mapping of `len` bytes; the trimmed parts are never used.
        unsafe {
            let base = raw.add(head);
            if head > 0 {
                libc::munmap(raw.cast(), head);
            }
            let tail = len - head - CHUNK_SIZE;
            if tail > 0 {
                libc::munmap(base.add(CHUNK_SIZE).cast(), tail);
            }
            // A hint: without transparent huge pages the chunk is plain 4 KiB pages.
            libc::madvise(base.cast(), CHUNK_SIZE, libc::MADV_HUGEPAGE);
            Chunk {
                base: NonNull::new_unchecked(base),
            }
        }
    }

    /// A chunk whose bytes `fill` writes first (pages read from disk at load).
    fn new_with(fill: impl FnOnce(&mut [u8]) -> io::Result<()>) -> io::Result<Chunk> {
        let chunk = Chunk::new();
        // SAFETY: the chunk was just allocated and no page pointer into it exists yet, so
        // this slice is the only access to its bytes; it cannot outlive `fill`.
        let bytes = unsafe { std::slice::from_raw_parts_mut(chunk.base.as_ptr(), CHUNK_SIZE) };
        fill(bytes)?;
        Ok(chunk)
    }

    /// Page `i` of the chunk.
    fn page(&self, i: usize) -> PagePtr {
        assert!(i < PAGES_PER_CHUNK, "page {i} of a chunk");
        // SAFETY: `i * PAGE_SIZE` is inside the allocation (checked above); the pointer
        // keeps the allocation's provenance, so it may be written through under the lock.
        PagePtr(unsafe { self.base.as_ptr().add(i * PAGE_SIZE) })
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        // SAFETY: mapped in `new` with this length; no page pointer outlives the map.
        unsafe { libc::munmap(self.base.as_ptr().cast(), CHUNK_SIZE) };
    }
}

/// Pages in memory, in stable chunks (pointers never move when the arena grows).
struct Arena {
    chunks: Vec<Chunk>,
    page_count: usize,
}

impl Arena {
    fn page(&self, page_no: u32) -> PagePtr {
        let i = page_no as usize;
        assert!(i < self.page_count, "page {i} out of range");
        self.chunks[i / PAGES_PER_CHUNK].page(i % PAGES_PER_CHUNK)
    }

    fn is_full(&self) -> bool {
        self.page_count == self.chunks.len() * PAGES_PER_CHUNK
    }

    /// Adds a page, taking a new chunk from `spare` (allocated by the caller outside any
    /// lock readers wait on) when the last chunk is full.
    fn push(&mut self, spare: &mut Option<Chunk>) -> u32 {
        if self.is_full() {
            let chunk = spare.take().unwrap_or_else(Chunk::new);
            self.chunks.push(chunk);
        }
        self.page_count += 1;
        (self.page_count - 1) as u32
    }
}

struct Layout {
    arena: Arena,
    directory: Vec<u32>,
    global_depth: u8,
    /// Kept with the pages it placed keys in: an installed snapshot replaces both.
    hasher: KeyHasher,
}

impl Layout {
    fn page_for(&self, hash: u128) -> PagePtr {
        let mask = (1u64 << self.global_depth) - 1;
        self.arena
            .page(self.directory[(hash as u64 & mask) as usize])
    }

    fn page_no_for(&self, hash: u128) -> u32 {
        let mask = (1u64 << self.global_depth) - 1;
        self.directory[(hash as u64 & mask) as usize]
    }
}

/// The pages changed since the last checkpoint: one bit per page, so marking one (every
/// applied write does) is a store, not a tree insert.
#[derive(Debug, Default)]
pub(super) struct DirtyPages {
    words: Vec<u64>,
    count: usize,
}

impl DirtyPages {
    pub(super) fn insert(&mut self, page_no: u32) {
        let (word, bit) = (page_no as usize / 64, page_no % 64);
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        let mask = 1u64 << bit;
        if self.words[word] & mask == 0 {
            self.words[word] |= mask;
            self.count += 1;
        }
    }

    pub(super) fn len(&self) -> usize {
        self.count
    }

    /// The marked pages in ascending order; the set is left empty.
    #[cfg(test)]
    pub(super) fn take(&mut self) -> Vec<u32> {
        self.take_with_bits().0
    }

    /// The marked pages in ascending order, and the bitmap they were marked in (bit `p`
    /// of word `p / 64`, as long as the highest page marked needs); the set is left empty.
    pub(super) fn take_with_bits(&mut self) -> (Vec<u32>, Vec<u64>) {
        let words = std::mem::take(&mut self.words);
        let mut pages = Vec::with_capacity(self.count);
        for (i, &word) in words.iter().enumerate() {
            let mut w = word;
            while w != 0 {
                pages.push(i as u32 * 64 + w.trailing_zeros());
                w &= w - 1;
            }
        }
        self.count = 0;
        (pages, words)
    }
}

impl Extend<u32> for DirtyPages {
    fn extend<I: IntoIterator<Item = u32>>(&mut self, pages: I) {
        pages.into_iter().for_each(|p| self.insert(p));
    }
}

impl FromIterator<u32> for DirtyPages {
    fn from_iter<I: IntoIterator<Item = u32>>(pages: I) -> Self {
        let mut set = DirtyPages::default();
        set.extend(pages);
        set
    }
}

/// State only the writer touches.
struct WriterState {
    dirty: DirtyPages,
    meta_dirty: bool,
    meta: MapMeta,
    /// A zeroed chunk ready for the next arena growth.
    spare_chunk: Option<Chunk>,
    /// The map file and the two journals; out on loan while a checkpoint job runs.
    file: Option<Box<dyn BlockFile>>,
    journals: [Option<Box<dyn BlockFile>>; 2],
    /// The pages a running checkpoint has not taken yet.
    capture: Option<Arc<Capture>>,
}

/// What a running checkpoint still needs of the pages as they were at its index.
///
/// A checkpoint does not copy its pages when it begins. The job takes each page's image
/// when it gets to it; the writer, about to change a page the job has not taken yet,
/// first saves the page's image for the job. Whoever clears a page's bit copies it, and
/// each does so only while holding that page's lock (the job shared, the writer
/// exclusive, before it changes anything), so the one copy is always the page as it was
/// at the checkpoint's index. The job needs neither the writer state nor a long-held
/// directory lock: applies go on while it copies.
struct Capture {
    /// Bit `p`: page `p` belongs to the checkpoint and its image is still the live page.
    pending: Vec<AtomicU64>,
    /// Images the writer saved before changing a pending page, until the job reaches
    /// that page (the journal then stays in page order, so the in-place step writes long
    /// runs). The writer clears a bit and saves the image before it releases the page's
    /// lock, so a job that finds a bit clear under that lock finds the image here.
    saved: Mutex<std::collections::HashMap<u32, Box<[u8]>>>,
    /// The most images `saved` held at once.
    saved_peak: AtomicU64,
}

impl Capture {
    fn bit(p: u32) -> (usize, u64) {
        (p as usize / 64, 1 << (p % 64))
    }

    /// Whether page `p` still waits to be taken (exact while its lock is held).
    fn is_pending(&self, p: u32) -> bool {
        let (word, bit) = Capture::bit(p);
        self.pending
            .get(word)
            .is_some_and(|w| w.load(Ordering::Relaxed) & bit != 0)
    }

    /// Clears page `p`'s bit; returns whether it was set. Call with the page's lock held.
    fn take(&self, p: u32) -> bool {
        let (word, bit) = Capture::bit(p);
        self.pending
            .get(word)
            .is_some_and(|w| w.fetch_and(!bit, Ordering::Relaxed) & bit != 0)
    }
}

/// Saves page `p`'s image for the running checkpoint before the writer changes it, if the
/// checkpoint still needs that image. `page` is the writer's exclusive guard on `p`.
fn preserve(capture: &Option<Arc<Capture>>, p: u32, page: &PageWrite) {
    let Some(c) = capture else {
        return;
    };
    // The job clears bits only under the page lock, which the writer holds: a bit seen
    // clear here stays clear.
    if !c.is_pending(p) {
        return;
    }
    let mut saved = c.saved.lock().unwrap();
    if c.take(p) {
        let mut image = vec![0u8; PAGE_SIZE].into_boxed_slice();
        page.copy_to(&mut image);
        saved.insert(p, image);
        c.saved_peak
            .fetch_max(saved.len() as u64, Ordering::Relaxed);
    }
}

/// The on-disk hashmap, fully resident in memory.
pub struct Map {
    layout: RwLock<Layout>,
    bloom: Bloom,
    entry_count: AtomicU64,
    writer: Mutex<WriterState>,
    dir: PathBuf,
    /// Bytes of page images the last finished checkpoint held at once.
    checkpoint_copy_peak: AtomicU64,
}

/// What loading the map found.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// The sessions blob stored with the last checkpoint.
    pub sessions: Vec<u8>,
    /// Whether a checkpoint journal was replayed into the map file.
    pub journal_replayed: bool,
}

impl Map {
    /// Opens (or creates) the map in `dir`, completing an interrupted checkpoint.
    pub fn open(backend: &dyn Backend, dir: &Path) -> io::Result<(Map, LoadReport)> {
        let mut file = crate::storage::io::open_durable(backend, &dir.join("map.dat"))?;
        let mut journals = [
            crate::storage::io::open_durable(backend, &dir.join("ckpt.0"))?,
            crate::storage::io::open_durable(backend, &dir.join("ckpt.1"))?,
        ];
        let mut report = LoadReport::default();
        if let Some((slot, header)) = checkpoint::newest_valid(&mut journals)? {
            checkpoint::replay(journals[slot].as_mut(), &header, file.as_mut())?;
            report.sessions = checkpoint::read_sessions(journals[slot].as_mut(), &header)?;
            report.journal_replayed = true;
        }
        let (meta, hasher, bloom, arena, upgraded) = if file.len()? >= PAGE_SIZE as u64 {
            load_pages(file.as_mut())?
        } else {
            let mut secret = [0u8; KEY_SECRET_SIZE];
            backend.fill_random(&mut secret)?;
            (
                MapMeta::default(),
                KeyHasher::new(secret),
                Bloom::new(),
                Arena {
                    chunks: Vec::new(),
                    page_count: 0,
                },
                false,
            )
        };
        // Pages upgraded from an older format are all rewritten by the next checkpoint,
        // through its journal: until that one is done, the file stays whole in the old
        // format, and is upgraded again if the node stops first.
        let dirty = if upgraded {
            (0..arena.page_count as u32).collect()
        } else {
            DirtyPages::default()
        };
        let mut map = Map {
            layout: RwLock::new(Layout {
                arena,
                directory: Vec::new(),
                global_depth: meta.global_depth,
                hasher,
            }),
            bloom,
            entry_count: AtomicU64::new(meta.entry_count),
            writer: Mutex::new(WriterState {
                dirty,
                meta_dirty: upgraded,
                meta,
                spare_chunk: None,
                file: Some(file),
                journals: journals.map(Some),
                capture: None,
            }),
            dir: dir.to_path_buf(),
            checkpoint_copy_peak: AtomicU64::new(0),
        };
        map.rebuild_directory()?;
        Ok((map, report))
    }

    fn rebuild_directory(&mut self) -> io::Result<()> {
        let layout = self.layout.get_mut().unwrap();
        if layout.arena.page_count == 0 {
            let p = layout.arena.push(&mut None);
            layout.arena.page(p).write().init(0, 0);
            layout.directory = vec![p];
            layout.global_depth = 0;
            let w = self.writer.get_mut().unwrap();
            w.dirty.insert(p);
            w.meta_dirty = true;
            return Ok(());
        }
        let depth = layout.global_depth;
        let mut directory = vec![u32::MAX; 1usize << depth];
        check_chains(&layout.arena)?;
        for p in 0..layout.arena.page_count as u32 {
            let page = layout.arena.page(p);
            let guard = page.read();
            if guard.is_overflow() {
                continue;
            }
            let (d, prefix) = (guard.local_depth(), guard.prefix());
            if d > depth || prefix >= (1u64 << d) {
                return Err(io::Error::other(format!(
                    "map page {p} has local depth {d} and prefix {prefix} under global depth {depth}"
                )));
            }
            let mut j = prefix;
            while j < directory.len() as u64 {
                directory[j as usize] = p;
                j += 1u64 << d;
            }
        }
        if let Some(hole) = directory.iter().position(|&p| p == u32::MAX) {
            return Err(io::Error::other(format!(
                "map directory slot {hole} has no page"
            )));
        }
        layout.directory = directory;
        Ok(())
    }

    /// The directory this map lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The hash of `key` under this map's secret.
    pub fn key_hash(&self, key: &[u8]) -> u128 {
        self.layout.read().unwrap().hasher.hash(key)
    }

    /// Starts loading the page `hash` lives in (see [`PagePtr::prefetch`]): a reader
    /// about to look up many keys prefetches them all first.
    pub fn prefetch(&self, hash: u128) {
        if self.bloom.may_contain(hash) {
            self.prefetch_for_write(hash);
        }
    }

    /// Starts loading the lines a [`Map::set`] or [`Map::remove`] of `hash` touches first
    /// (as [`Map::prefetch`], whether or not the key may be present: an insert reads its
    /// home page too).
    pub fn prefetch_for_write(&self, hash: u128) {
        self.layout.read().unwrap().page_for(hash).prefetch(hash);
    }

    /// Looks a key up by its hash.
    pub fn get(&self, hash: u128) -> Lookup {
        self.get_with(hash, |found| found.to_owned())
    }

    /// Looks a key up by its hash and hands what it found to `f`, an inline value borrowed
    /// from its page (no copy): `f` runs with the page held shared, so it should be quick.
    pub fn get_with<R>(&self, hash: u128, f: impl FnOnce(LookupRef<'_>) -> R) -> R {
        if !self.bloom.may_contain(hash) {
            return f(LookupRef::Missing);
        }
        let layout = self.layout.read().unwrap();
        let mut guard = layout.page_for(hash).read();
        let slot = loop {
            if let Some(slot) = guard.find(hash) {
                break slot;
            }
            let Some(next) = guard.next_page() else {
                drop(guard);
                drop(layout);
                return f(LookupRef::Missing);
            };
            // Chains only ever grow, under the directory lock held shared here.
            guard = layout.arena.page(next).read();
        };
        let word = guard.word(slot);
        let inline = (word & 0xFF) as u8;
        if inline == NOT_INLINE {
            drop(guard);
            drop(layout);
            f(LookupRef::InLog(word >> 8))
        } else {
            f(LookupRef::Inline(guard.inline_value(inline as usize)))
        }
    }

    /// Records that `hash` is now set by the command at `cmd_byte_offset`, copying
    /// `value` inline when it is short enough. Writer only. Says which log addresses the
    /// key's value was read from before and will be read from now (none when inline).
    pub fn set(&self, hash: u128, cmd_byte_offset: u64, value: &[u8]) -> SetOutcome {
        let inline = (value.len() <= INLINE_VALUE_SIZE_MAX).then_some(value);
        self.bloom.insert(hash);
        let mut w = self.writer.lock().unwrap();
        loop {
            {
                let layout = self.layout.read().unwrap();
                if let Ok((page_no, previous, word)) =
                    upsert_in_bucket(&layout, &w.capture, hash, cmd_byte_offset, inline)
                {
                    if previous.is_none() {
                        self.entry_count.fetch_add(1, Ordering::Relaxed);
                    }
                    w.dirty.insert(page_no);
                    w.meta_dirty = true;
                    return SetOutcome {
                        replaced_address: previous.and_then(page::log_address),
                        stored_address: page::log_address(word),
                    };
                }
            }
            self.make_room(&mut w, hash);
        }
    }

    /// The log address `hash`'s value is read from, if it is present and not inline.
    pub fn log_address(&self, hash: u128) -> Option<u64> {
        if !self.bloom.may_contain(hash) {
            return None;
        }
        let layout = self.layout.read().unwrap();
        let mut guard = layout.page_for(hash).read();
        loop {
            if let Some(slot) = guard.find(hash) {
                return page::log_address(guard.word(slot));
            }
            let next = guard.next_page()?;
            guard = layout.arena.page(next).read();
        }
    }

    /// Points `hash` at log address `to` if its value is read from `from` now (a value
    /// the cleaner copied); returns whether it did. A key set or deleted meanwhile is left
    /// as it is.
    pub fn relocate(&self, hash: u128, from: u64, to: u64) -> bool {
        let mut w = self.writer.lock().unwrap();
        let layout = self.layout.read().unwrap();
        let mut page_no = Some(layout.page_no_for(hash));
        while let Some(p) = page_no {
            let mut guard = layout.arena.page(p).write();
            if guard.find(hash).is_some() {
                preserve(&w.capture, p, &guard);
                let moved = guard.relocate(hash, from, to);
                if moved {
                    w.dirty.insert(p);
                    w.meta_dirty = true;
                }
                return moved;
            }
            page_no = guard.next_page();
        }
        false
    }

    /// Calls `f` with the log address of every value read from the log (each key whose
    /// value is not inline), page by page under the page's read lock.
    pub fn for_each_log_address(&self, mut f: impl FnMut(u64)) {
        let layout = self.layout.read().unwrap();
        for p in 0..layout.arena.page_count {
            let guard = layout.arena.page(p as u32).read();
            for slot in 0..SLOT_COUNT {
                if let Some(address) = page::log_address(guard.word(slot)) {
                    f(address);
                }
            }
        }
    }

    /// Makes room in the full bucket of `hash`: splits its page when that keeps the
    /// directory within its budget, chains an overflow page behind it otherwise.
    fn make_room(&self, w: &mut WriterState, hash: u128) {
        let layout = self.layout.read().unwrap();
        let head = layout.page_for(hash).read();
        let splittable = head.next_page().is_none()
            && (head.local_depth() < layout.global_depth || directory_may_double(&layout));
        drop(head);
        drop(layout);
        if splittable {
            self.split(w, hash);
        } else {
            self.chain(w, hash);
        }
    }

    /// Links a new overflow page right behind the bucket page of `hash`.
    fn chain(&self, w: &mut WriterState, hash: u128) {
        self.reserve_chunk(w);
        let mut layout = self.layout.write().unwrap();
        let head_no = layout.page_no_for(hash);
        let new_no = layout.arena.push(&mut w.spare_chunk);
        let head = layout.arena.page(head_no);
        let mut head_guard = head.write();
        let mut new_guard = layout.arena.page(new_no).write();
        new_guard.init(head_guard.local_depth(), head_guard.prefix());
        new_guard.set_overflow();
        new_guard.set_next_page(head_guard.next_page());
        preserve(&w.capture, head_no, &head_guard);
        head_guard.set_next_page(Some(new_no));
        w.dirty.insert(head_no);
        w.dirty.insert(new_no);
        w.meta_dirty = true;
    }

    /// Allocates a zeroed chunk ahead of an arena growth: that takes a while, so it is
    /// done before readers are locked out.
    fn reserve_chunk(&self, w: &mut WriterState) {
        if w.spare_chunk.is_none() && self.layout.read().unwrap().arena.is_full() {
            w.spare_chunk = Some(Chunk::new());
        }
    }

    /// Removes `hash`; returns whether it was present. Writer only.
    pub fn delete(&self, hash: u128) -> bool {
        self.remove(hash).is_some()
    }

    /// Removes `hash`; returns `None` when it was absent, else the log address its value
    /// was read from (`Some(None)` when it was inline). Writer only.
    pub fn remove(&self, hash: u128) -> Option<Option<u64>> {
        if !self.bloom.may_contain(hash) {
            return None;
        }
        let mut w = self.writer.lock().unwrap();
        let layout = self.layout.read().unwrap();
        let mut page_no = Some(layout.page_no_for(hash));
        while let Some(p) = page_no {
            let mut guard = layout.arena.page(p).write();
            if guard.find(hash).is_some() {
                preserve(&w.capture, p, &guard);
            }
            if let Some(word) = guard.remove_word(hash) {
                self.entry_count.fetch_sub(1, Ordering::Relaxed);
                w.dirty.insert(p);
                w.meta_dirty = true;
                return Some(page::log_address(word));
            }
            page_no = guard.next_page();
        }
        None
    }

    /// Splits the full page that `hash` maps to (a page with no overflow chain, whose
    /// split keeps the directory within its budget: see [`Map::make_room`]).
    fn split(&self, w: &mut WriterState, hash: u128) {
        self.reserve_chunk(w);
        let mut layout = self.layout.write().unwrap();
        let old_no = layout.page_no_for(hash);
        let old = layout.arena.page(old_no);
        let depth = old.read().local_depth();
        if depth == layout.global_depth {
            assert!(
                directory_may_double(&layout),
                "the caller checked the budget"
            );
            let copy = layout.directory.clone();
            layout.directory.extend_from_slice(&copy);
            layout.global_depth += 1;
        }
        let prefix = old.read().prefix();
        let new_no = layout.arena.push(&mut w.spare_chunk);
        let new = layout.arena.page(new_no);
        let mut new_guard = new.write();
        new_guard.init(depth + 1, prefix | 1 << depth);
        {
            let mut old_guard = old.write();
            preserve(&w.capture, old_no, &old_guard);
            old_guard.set_depth_prefix(depth + 1, prefix);
            old_guard.split_into(&mut new_guard, depth as u32);
        }
        drop(new_guard);
        let mut j = prefix | 1 << depth;
        let step = 1u64 << (depth + 1);
        while j < layout.directory.len() as u64 {
            layout.directory[j as usize] = new_no;
            j += step;
        }
        w.dirty.insert(old_no);
        w.dirty.insert(new_no);
        w.meta_dirty = true;
    }

    /// Live keys.
    pub fn entry_count(&self) -> u64 {
        self.entry_count.load(Ordering::Relaxed)
    }

    /// Pages, bucket and overflow.
    pub fn page_count(&self) -> usize {
        self.layout.read().unwrap().arena.page_count
    }

    /// Bytes of memory the index takes: its pages and its directory (the bloom filter,
    /// one page, included).
    pub fn index_bytes(&self) -> u64 {
        let layout = self.layout.read().unwrap();
        (layout.arena.page_count as u64 + 1) * PAGE_SIZE as u64
            + (layout.directory.len() * std::mem::size_of::<u32>()) as u64
    }

    /// Entries of the directory (`2^global_depth`).
    pub fn directory_len(&self) -> usize {
        self.layout.read().unwrap().directory.len()
    }

    /// The persisted metadata as of the last checkpoint or load.
    pub fn meta(&self) -> MapMeta {
        self.writer.lock().unwrap().meta
    }

    /// Pages changed since the last checkpoint.
    pub fn dirty_page_count(&self) -> usize {
        self.writer.lock().unwrap().dirty.len()
    }

    /// Writes every changed page back, durably, recording that the map reflects the log up
    /// to `index` (of `term`), with `sessions` stored beside it. Writer only; no writes may
    /// be applied concurrently.
    pub fn checkpoint(&self, index: LogIndex, term: Term, sessions: &[u8]) -> io::Result<()> {
        let Some(mut io) = self.begin_checkpoint(index, term, sessions) else {
            return Err(io::Error::other("a checkpoint is already being written"));
        };
        let result = io.write(self);
        self.end_checkpoint(io, result)
    }

    /// Starts a checkpoint of the map as it is now, at `index`, and hands it to a job
    /// whose [`CheckpointJob::write`] may run on another thread while the writer goes on
    /// applying. Nothing is copied here: the job takes each changed page's image as it
    /// writes, and the writer saves the image of a page it is about to change before the
    /// job has taken it (see [`Capture`]). `None` while another job is out. Writer only,
    /// between two applies.
    pub fn checkpoint_begin(
        self: &Arc<Self>,
        index: LogIndex,
        term: Term,
        sessions: &[u8],
    ) -> Option<CheckpointJob> {
        let io = self.begin_checkpoint(index, term, sessions)?;
        Some(CheckpointJob {
            map: Arc::clone(self),
            io,
        })
    }

    fn begin_checkpoint(
        &self,
        index: LogIndex,
        term: Term,
        sessions: &[u8],
    ) -> Option<CheckpointIo> {
        let mut w = self.writer.lock().unwrap();
        let file = w.file.take()?;
        let layout = self.layout.read().unwrap();
        let meta = MapMeta {
            last_committed_index: index,
            last_committed_term: term,
            entry_count: self.entry_count(),
            page_count: layout.arena.page_count as u64,
            global_depth: layout.global_depth,
            checkpoint_sequence: w.meta.checkpoint_sequence + 1,
        };
        let (pages, mut pending) = w.dirty.take_with_bits();
        pending.resize(layout.arena.page_count.div_ceil(64), 0);
        let meta_page = encode_meta(&meta, &layout.hasher, &self.bloom);
        drop(layout);
        let groups = pages
            .len()
            .div_ceil(checkpoint::GROUP_PAGES)
            .clamp(1, checkpoint::WRITE_GROUPS_MAX);
        let capture = Arc::new(Capture {
            pending: pending.into_iter().map(AtomicU64::new).collect(),
            saved: Mutex::new(std::collections::HashMap::new()),
            saved_peak: AtomicU64::new(0),
        });
        w.capture = Some(Arc::clone(&capture));
        let slot = (meta.checkpoint_sequence % 2) as usize;
        let journal_file = w.journals[slot]
            .take()
            .expect("journal files travel with the map file");
        w.meta_dirty = false;
        Some(CheckpointIo {
            pages,
            meta,
            meta_page,
            sessions: sessions.to_vec(),
            journal_durable: false,
            write_groups: groups,
            capture,
            slot,
            file,
            journal_file,
        })
    }

    /// Moves the images of the next pages of the checkpoint (`pages`, from `cursor`) into
    /// `groups`, at most one group's worth per call (splits wait meanwhile; applies do
    /// not), in page order: the live page if its bit is still set, else the image the
    /// writer saved. Returns whether pages remain.
    fn capture_into(
        &self,
        c: &Capture,
        pages: &[u32],
        cursor: &mut usize,
        write_groups: usize,
        groups: &mut checkpoint::Groups,
    ) -> io::Result<bool> {
        let mut room = groups.room().min(checkpoint::GROUP_PAGES);
        let layout = self.layout.read().unwrap();
        while room > 0
            && let Some(&p) = pages.get(*cursor)
        {
            *cursor += 1;
            room -= 1;
            let page = layout.arena.page(p).read();
            if c.take(p) {
                page.copy_to(groups.push(p));
                continue;
            }
            // The writer cleared the bit under the page's lock, which this read lock
            // waited for: its image is saved.
            let Some(image) = c.saved.lock().unwrap().remove(&p) else {
                return Err(io::Error::other(format!(
                    "checkpoint: page {p} was neither pending nor saved"
                )));
            };
            groups.push(p).copy_from_slice(&image);
        }
        let more = *cursor < pages.len();
        if !more {
            let peak = c.saved_peak.load(Ordering::Relaxed) as usize
                + write_groups * (1 + checkpoint::GROUP_PAGES);
            self.checkpoint_copy_peak
                .store((peak * PAGE_SIZE) as u64, Ordering::Relaxed);
        }
        Ok(more)
    }

    /// Finishes a checkpoint job with the result of its `write`: the files come back, and
    /// on failure its pages are marked changed again so the next checkpoint retries them.
    pub fn checkpoint_end(&self, job: CheckpointJob, result: io::Result<()>) -> io::Result<()> {
        self.end_checkpoint(job.io, result)
    }

    fn end_checkpoint(&self, io: CheckpointIo, result: io::Result<()>) -> io::Result<()> {
        let mut w = self.writer.lock().unwrap();
        // A job that failed part-way leaves pages untaken: nothing needs them any more.
        w.capture = None;
        w.file = Some(io.file);
        w.journals[io.slot] = Some(io.journal_file);
        if io.journal_durable {
            // The journal is the newest complete checkpoint on disk, and the in-place
            // step may have changed map.dat already: a retry must go to the other journal
            // slot, or a crash that tears the retry would leave the older journal to be
            // replayed over pages of this one.
            w.meta.checkpoint_sequence = io.meta.checkpoint_sequence;
        }
        match result {
            Ok(()) => {
                w.meta = io.meta;
                Ok(())
            }
            Err(e) => {
                w.dirty.extend(io.pages.iter().copied());
                w.meta_dirty = true;
                Err(e)
            }
        }
    }

    /// Bytes of page images the last completed checkpoint held in memory, at most: its
    /// write buffer (up to [`checkpoint::WRITE_GROUPS_MAX`] groups) plus the most images
    /// the writer had saved for it at once.
    pub fn checkpoint_copy_peak_bytes(&self) -> u64 {
        self.checkpoint_copy_peak.load(Ordering::Relaxed)
    }
}

/// A running checkpoint: the map it reads its pages from and its IO half.
pub struct CheckpointJob {
    map: Arc<Map>,
    io: CheckpointIo,
}

impl CheckpointJob {
    /// Writes the journal durably (taking each page's image as it goes), then the pages
    /// in place, then syncs.
    pub fn write(&mut self) -> io::Result<()> {
        self.io.write(&self.map)
    }

    /// Pages this checkpoint writes.
    pub fn page_count(&self) -> usize {
        self.io.pages.len()
    }

    /// The log index the checkpoint covers.
    pub fn index(&self) -> LogIndex {
        self.io.meta.last_committed_index
    }
}

/// The IO half of a checkpoint, with the map's files on loan.
struct CheckpointIo {
    /// Every page the checkpoint covers, ascending.
    pages: Vec<u32>,
    meta: MapMeta,
    meta_page: AlignedBuf,
    sessions: Vec<u8>,
    /// Whether the journal write completed (the in-place step may then have begun).
    journal_durable: bool,
    /// Groups gathered per journal write.
    write_groups: usize,
    /// The pages still to take, shared with the writer.
    capture: Arc<Capture>,
    slot: usize,
    file: Box<dyn BlockFile>,
    journal_file: Box<dyn BlockFile>,
}

impl CheckpointIo {
    fn write(&mut self, map: &Map) -> io::Result<()> {
        let mut writer = checkpoint::JournalWriter::new(
            self.journal_file.as_mut(),
            self.meta.checkpoint_sequence,
        );
        let mut groups = checkpoint::Groups::new(self.write_groups);
        let capture = Arc::clone(&self.capture);
        let mut cursor = 0;
        loop {
            let more = map.capture_into(
                &capture,
                &self.pages,
                &mut cursor,
                self.write_groups,
                &mut groups,
            )?;
            if groups.is_full() || !more {
                writer.write_groups(&groups)?;
                groups.clear();
            }
            if !more {
                break;
            }
        }
        drop(groups);
        let header = writer.finish(&self.meta_page, &self.sessions)?;
        self.journal_durable = true;
        checkpoint::replay(self.journal_file.as_mut(), &header, self.file.as_mut())
    }
}

/// Whether the directory may double and stay within its budget.
fn directory_may_double(layout: &Layout) -> bool {
    let budget = DIRECTORY_LEN_FLOOR.max(DIRECTORY_PAGES_RATIO_MAX * layout.arena.page_count);
    layout.global_depth < GLOBAL_DEPTH_MAX && layout.directory.len() * 2 <= budget
}

/// Inserts or replaces `hash` in its bucket: the bucket page and its overflow chain.
/// Returns the page written and whether the key is new; `PageFull` when every page of
/// the bucket is full and the key is new. Writer only.
fn upsert_in_bucket(
    layout: &Layout,
    capture: &Option<Arc<Capture>>,
    hash: u128,
    cmd_byte_offset: u64,
    inline: Option<&[u8]>,
) -> Result<(u32, Option<u64>, u64), PageFull> {
    let head_no = layout.page_no_for(hash);
    let mut head = layout.arena.page(head_no).write();
    if head.next_page().is_none() || head.find(hash).is_some() {
        preserve(capture, head_no, &head);
        return head
            .upsert_word(hash, cmd_byte_offset, inline)
            .map(|(previous, word)| (head_no, previous, word));
    }
    drop(head);
    // A chained bucket, in one walk: the key may sit in any page of the chain (replace it
    // there); a new key goes into the first page with a free slot.
    let mut with_room = None;
    let mut page_no = Some(head_no);
    while let Some(p) = page_no {
        let mut guard = layout.arena.page(p).write();
        if guard.find(hash).is_some() {
            preserve(capture, p, &guard);
            return guard
                .upsert_word(hash, cmd_byte_offset, inline)
                .map(|(previous, word)| (p, previous, word));
        }
        if with_room.is_none() && guard.used() < SLOT_COUNT {
            with_room = Some(p);
        }
        page_no = guard.next_page();
    }
    let p = with_room.ok_or(PageFull)?;
    let mut guard = layout.arena.page(p).write();
    preserve(capture, p, &guard);
    guard
        .upsert_word(hash, cmd_byte_offset, inline)
        .map(|(previous, word)| (p, previous, word))
}

/// Checks the overflow chains of loaded pages: every link points at an overflow page in
/// range, and every overflow page is on exactly one chain that starts at a bucket page.
fn check_chains(arena: &Arena) -> io::Result<()> {
    let page_count = arena.page_count;
    let corrupt = |p: u32, what: String| io::Error::other(format!("map page {p}: {what}"));
    let mut linked = vec![false; page_count];
    let mut overflow_count = 0usize;
    for p in 0..page_count as u32 {
        let guard = arena.page(p).read();
        overflow_count += guard.is_overflow() as usize;
        let Some(next) = guard.next_page() else {
            continue;
        };
        if next as usize >= page_count {
            return Err(corrupt(
                p,
                format!("overflow link to page {next} out of range"),
            ));
        }
        if !arena.page(next).read().is_overflow() || linked[next as usize] {
            return Err(corrupt(
                p,
                format!("overflow link to page {next} is not a free overflow page"),
            ));
        }
        linked[next as usize] = true;
    }
    // Links are unique, so walking from the bucket pages reaches every overflow page
    // exactly once unless some form a cycle of their own.
    let mut reached = 0usize;
    for p in 0..page_count as u32 {
        let head = arena.page(p).read();
        if head.is_overflow() {
            continue;
        }
        let mut next = head.next_page();
        while let Some(n) = next {
            reached += 1;
            next = arena.page(n).read().next_page();
        }
    }
    if reached != overflow_count {
        return Err(io::Error::other(format!(
            "map has {overflow_count} overflow pages but its chains reach {reached}"
        )));
    }
    Ok(())
}

/// A `map.dat` image of `pages` (whole pages) behind a valid metadata page: a fixed
/// secret, a bloom filter that lets every lookup through, and the global depth of the
/// deepest page. For fuzzing the page loader and the map behind it.
pub fn map_file_with(pages: &[u8]) -> Vec<u8> {
    let page_count = pages.len() / PAGE_SIZE;
    let depth = pages
        .chunks_exact(PAGE_SIZE)
        .map(|p| p[page::OFFSET_LOCAL_DEPTH])
        .max()
        .unwrap_or(0)
        .min(20);
    let meta = MapMeta {
        last_committed_index: LogIndex(1),
        last_committed_term: Term(1),
        entry_count: 0,
        page_count: page_count as u64,
        global_depth: depth,
        checkpoint_sequence: 1,
    };
    let bloom = Bloom::load(&[0xFF; BLOOM_BYTES]);
    let mut file = encode_meta(&meta, &KeyHasher::new([7; KEY_SECRET_SIZE]), &bloom).to_vec();
    file.extend_from_slice(&pages[..page_count * PAGE_SIZE]);
    file
}

/// Builds the metadata page.
fn encode_meta(meta: &MapMeta, hasher: &KeyHasher, bloom: &Bloom) -> AlignedBuf {
    let mut page = AlignedBuf::new(PAGE_SIZE);
    page[..8].copy_from_slice(&META_MAGIC);
    let fields = [
        meta.last_committed_index.get(),
        meta.last_committed_term.get(),
        meta.page_count * SLOT_COUNT as u64,
        meta.entry_count,
        meta.page_count,
        meta.global_depth as u64,
        meta.checkpoint_sequence,
    ];
    for (i, v) in fields.iter().enumerate() {
        page[8 + i * 8..16 + i * 8].copy_from_slice(&v.to_le_bytes());
    }
    page[META_SECRET_OFFSET..META_BLOOM_OFFSET].copy_from_slice(&hasher.secret[..]);
    bloom.store(&mut page[META_BLOOM_OFFSET..META_HASH_OFFSET]);
    let hash = xxh3_128(&page[..META_HASH_OFFSET]);
    page[META_HASH_OFFSET..].copy_from_slice(&hash.to_le_bytes());
    page
}

/// The page format a metadata page names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PageFormat {
    /// 128 slots of full 16-byte hashes: upgraded as pages are read.
    Format2,
    Current,
}

impl PageFormat {
    fn slot_count(self) -> usize {
        match self {
            PageFormat::Format2 => 128,
            PageFormat::Current => SLOT_COUNT,
        }
    }

    /// Brings a page read in this format (not yet checked) into the current one.
    fn upgrade(self, page: &mut [u8]) {
        if self == PageFormat::Format2 {
            page::upgrade_from_format_2(page);
        }
    }
}

/// Decodes and verifies the metadata page.
fn decode_meta(page: &[u8]) -> io::Result<(MapMeta, KeyHasher, Bloom, PageFormat)> {
    let field = |at: usize, len: usize| page.get(at..at + len).unwrap_or_default();
    if field(0, 8) == b"OLMAP\0\0\x01" {
        return Err(io::Error::other(
            "map.dat is format version 1 (unkeyed hashes), which this version does not read: \
             move the data directory aside and let the node rebuild it (from its peers, or \
             from the log of a single node)",
        ));
    }
    let stored_hash = field(META_HASH_OFFSET, 16);
    let format = if field(0, 8) == META_MAGIC_FORMAT_2 {
        PageFormat::Format2
    } else {
        PageFormat::Current
    };
    if (field(0, 8) != META_MAGIC && format != PageFormat::Format2)
        || stored_hash != xxh3_128(field(0, META_HASH_OFFSET)).to_le_bytes()
    {
        return Err(io::Error::other(
            "map.dat: metadata page failed verification",
        ));
    }
    let u64_at = |i: usize| crate::le::u64_at(page, 8 + i * 8).unwrap_or(0);
    let meta = MapMeta {
        last_committed_index: LogIndex(u64_at(0)),
        last_committed_term: Term(u64_at(1)),
        entry_count: u64_at(3),
        page_count: u64_at(4),
        global_depth: u64_at(5).min(u8::MAX as u64) as u8,
        checkpoint_sequence: u64_at(6),
    };
    let directory_budget =
        DIRECTORY_LEN_FLOOR.max(DIRECTORY_PAGES_RATIO_MAX.saturating_mul(meta.page_count as usize));
    if Some(u64_at(2)) != meta.page_count.checked_mul(format.slot_count() as u64)
        || meta.global_depth > GLOBAL_DEPTH_MAX
        || (1usize << meta.global_depth) > directory_budget
        || meta.page_count > u32::MAX as u64
    {
        return Err(io::Error::other(
            "map.dat: metadata fields are inconsistent",
        ));
    }
    let secret = crate::le::array::<KEY_SECRET_SIZE>(page, META_SECRET_OFFSET)
        .ok_or_else(|| io::Error::other("map.dat: metadata page is short"))?;
    Ok((
        meta,
        KeyHasher::new(secret),
        Bloom::load(field(META_BLOOM_OFFSET, BLOOM_BYTES)),
        format,
    ))
}

/// Reads the map file: its metadata, hash secret, bloom filter and pages, each page
/// checked and laid out for lookups (format 2 pages upgraded first: then the last value
/// is true and every page must be written again).
fn load_pages(file: &mut dyn BlockFile) -> io::Result<(MapMeta, KeyHasher, Bloom, Arena, bool)> {
    let mut meta_page = AlignedBuf::new(PAGE_SIZE);
    read_exact_at(file, &mut meta_page, 0)?;
    let (meta, hasher, bloom, format) = decode_meta(&meta_page)?;
    let needed = (meta.page_count + 1) * PAGE_SIZE as u64;
    let file_len = file.len()?;
    if file_len < needed {
        return Err(io::Error::other(format!(
            "map.dat holds {file_len} bytes but its metadata names {} pages ({needed} bytes)",
            meta.page_count
        )));
    }
    let page_count = meta.page_count as usize;
    let mut arena = Arena {
        chunks: Vec::new(),
        page_count: 0,
    };
    // One chunk at a time, so a bad page count fails at the end of the file instead of
    // allocating for pages that are not there.
    while arena.chunks.len() * PAGES_PER_CHUNK < page_count {
        let c = arena.chunks.len();
        let pages = (page_count - c * PAGES_PER_CHUNK).min(PAGES_PER_CHUNK);
        let offset = ((1 + c * PAGES_PER_CHUNK) * PAGE_SIZE) as u64;
        // The map is not shared yet: the new chunk is filled through a plain slice.
        let chunk = Chunk::new_with(|bytes| {
            read_exact_at(file, &mut bytes[..pages * PAGE_SIZE], offset)?;
            for (p, page) in bytes.chunks_exact_mut(PAGE_SIZE).take(pages).enumerate() {
                PagePtr::reset_lock(page);
                format.upgrade(page);
                page::check_loaded(page).map_err(|e| {
                    io::Error::other(format!("map.dat: page {}: {e}", c * PAGES_PER_CHUNK + p))
                })?;
                page::place_loaded(page);
            }
            Ok(())
        })?;
        arena.chunks.push(chunk);
    }
    arena.page_count = page_count;
    Ok((meta, hasher, bloom, arena, format != PageFormat::Current))
}
