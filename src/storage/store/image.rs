//! A map's image — its metadata page and every page, copied at one applied index — and a
//! map built back from one. This is the map half of a Raft snapshot
//! ([`crate::storage::snapshot`]): the leader copies its pages, the follower checks each
//! page as it arrives (as it would a page read from its own disk), points every value
//! read from the log at the copy it wrote in its own segments, and swaps the result in.
//!
//! The follower takes the leader's hash secret with the pages: the map holds keys by hash
//! only, so pages placed under one secret can only be looked up under that secret.

use super::bloom::Bloom;
use super::page::{self, EMPTY, OFFSET_KEY_HASHES, OFFSET_SLOT_WORDS, PageView, SLOT_COUNT};
use super::{
    Arena, Chunk, KeyHasher, Layout, Map, MapMeta, PAGES_PER_CHUNK, PageFormat, WriterState,
    decode_meta, encode_meta,
};
use crate::storage::io::{AlignedBuf, PAGE_SIZE};
use crate::storage::log::{LogIndex, Term};
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

/// A consistent copy of a map.
pub struct MapImage {
    /// The metadata page, as a checkpoint would write it (index, term, secret, bloom).
    pub meta_page: AlignedBuf,
    /// Every page, in order, lock words zeroed.
    pub pages: Vec<u8>,
}

impl MapImage {
    pub fn page_count(&self) -> usize {
        self.pages.len() / PAGE_SIZE
    }

    /// The log address of every value read from the log, in page order.
    pub fn log_addresses(&self) -> Vec<u64> {
        let mut out = Vec::new();
        for page in self.pages.chunks_exact(PAGE_SIZE) {
            for word in page[OFFSET_SLOT_WORDS..OFFSET_KEY_HASHES].chunks_exact(8) {
                let word = u64::from_le_bytes(word.try_into().expect("8 bytes"));
                if let Some(address) = page::log_address(word) {
                    out.push(address);
                }
            }
        }
        out
    }
}

impl Map {
    /// Copies every page and the metadata as of `index` (of `term`). The writer calls it
    /// between two applies; the cleaner's relocations wait for it (they take the writer
    /// state too), so the copy is of one state.
    pub fn image(&self, index: LogIndex, term: Term) -> MapImage {
        let _writer = self.writer.lock().unwrap();
        let layout = self.layout.read().unwrap();
        let page_count = layout.arena.page_count;
        let meta = MapMeta {
            last_committed_index: index,
            last_committed_term: term,
            entry_count: self.entry_count(),
            page_count: page_count as u64,
            global_depth: layout.global_depth,
            checkpoint_sequence: 0,
        };
        let meta_page = encode_meta(&meta, &layout.hasher, &self.bloom);
        let mut pages = vec![0u8; page_count * PAGE_SIZE];
        for (p, out) in pages.chunks_exact_mut(PAGE_SIZE).enumerate() {
            layout.arena.page(p as u32).read().copy_to(out);
        }
        MapImage { meta_page, pages }
    }

    /// Replaces this map's pages, secret, bloom filter and key count with `other`'s (a
    /// map built by [`MapImageBuilder`]), under the directory lock: readers see the old
    /// map or the new one. Every page is then changed, so the next checkpoint writes the
    /// whole map. Writer only.
    pub fn replace_contents(&self, other: Map) {
        let Map {
            layout: other_layout,
            bloom: other_bloom,
            entry_count: other_count,
            ..
        } = other;
        let mut other_layout = other_layout.into_inner().unwrap_or_else(|e| e.into_inner());
        let mut w = self.writer.lock().unwrap();
        assert!(
            w.capture.is_none(),
            "a map's contents are replaced only while no checkpoint is running"
        );
        {
            let mut layout = self.layout.write().unwrap();
            std::mem::swap(&mut *layout, &mut other_layout);
            self.bloom.copy_from(&other_bloom);
            self.entry_count
                .store(other_count.into_inner(), Ordering::Relaxed);
            w.dirty = (0..layout.arena.page_count as u32).collect();
            w.meta_dirty = true;
        }
        drop(w);
        // The old pages are freed here, outside every lock.
        drop(other_layout);
    }
}

/// Builds a map from an image that arrives in pieces: the metadata page first, then the
/// pages in order. Every piece is checked as the engine checks its own map file on load;
/// nothing is allocated for pages that have not arrived.
pub struct MapImageBuilder {
    meta: MapMeta,
    hasher: KeyHasher,
    bloom: Bloom,
    /// The format the image's pages are in (an older node's are upgraded as they come).
    format: PageFormat,
    arena: Arena,
    /// Pages received but not yet in a chunk.
    pending: Vec<u8>,
    received: usize,
}

impl MapImageBuilder {
    /// Starts from a metadata page (its checksum and fields verified).
    pub fn new(meta_page: &[u8]) -> io::Result<MapImageBuilder> {
        let (meta, hasher, bloom, format) = decode_meta(meta_page)?;
        if meta.page_count == 0 {
            return Err(io::Error::other("map image: no pages"));
        }
        Ok(MapImageBuilder {
            meta,
            hasher,
            bloom,
            format,
            arena: Arena {
                chunks: Vec::new(),
                page_count: 0,
            },
            pending: Vec::new(),
            received: 0,
        })
    }

    /// The metadata the image carries.
    pub fn meta(&self) -> MapMeta {
        self.meta
    }

    /// Pages still to come.
    pub fn pages_missing(&self) -> usize {
        self.meta.page_count as usize - self.received
    }

    /// Adds the next pages (a whole number of them).
    pub fn push_pages(&mut self, bytes: &[u8]) -> io::Result<()> {
        if !bytes.len().is_multiple_of(PAGE_SIZE) {
            return Err(io::Error::other(format!(
                "map image: {} bytes are not whole pages",
                bytes.len()
            )));
        }
        let count = bytes.len() / PAGE_SIZE;
        if count > self.pages_missing() {
            return Err(io::Error::other(format!(
                "map image: {} pages beyond the {} it names",
                count - self.pages_missing(),
                self.meta.page_count
            )));
        }
        let start = self.pending.len();
        self.pending.extend_from_slice(bytes);
        for (i, page) in self.pending[start..]
            .chunks_exact_mut(PAGE_SIZE)
            .enumerate()
        {
            self.format.upgrade(page);
            if let Err(e) = page::check_loaded(page) {
                self.pending.truncate(start);
                return Err(io::Error::other(format!(
                    "map image: page {}: {e}",
                    self.received + i
                )));
            }
        }
        self.received += count;
        let chunk_bytes = PAGES_PER_CHUNK * PAGE_SIZE;
        while self.pending.len() >= chunk_bytes
            || (self.pages_missing() == 0 && !self.pending.is_empty())
        {
            let take = self.pending.len().min(chunk_bytes);
            let chunk = Chunk::new_with(|out| {
                out[..take].copy_from_slice(&self.pending[..take]);
                for page in out[..take].chunks_exact_mut(PAGE_SIZE) {
                    page::PagePtr::reset_lock(page);
                    page::place_loaded(page);
                }
                Ok(())
            })?;
            self.arena.chunks.push(chunk);
            self.arena.page_count += take / PAGE_SIZE;
            self.pending.drain(..take);
        }
        Ok(())
    }

    /// The map, once every page has arrived: its chains and directory checked and
    /// rebuilt, its key count taken from the pages. It has no files; it is meant for
    /// [`Map::replace_contents`].
    pub fn finish(self) -> io::Result<Map> {
        if self.pages_missing() > 0 {
            return Err(io::Error::other(format!(
                "map image: {} of {} pages missing",
                self.pages_missing(),
                self.meta.page_count
            )));
        }
        let mut entries = 0u64;
        for p in 0..self.arena.page_count as u32 {
            let guard = self.arena.page(p).read();
            entries += (0..SLOT_COUNT).filter(|&s| guard.word(s) != EMPTY).count() as u64;
        }
        let mut meta = self.meta;
        meta.entry_count = entries;
        let mut map = Map {
            layout: RwLock::new(Layout {
                arena: self.arena,
                directory: Vec::new(),
                global_depth: meta.global_depth,
                hasher: self.hasher,
            }),
            bloom: self.bloom,
            entry_count: AtomicU64::new(entries),
            writer: Mutex::new(WriterState {
                dirty: super::DirtyPages::default(),
                meta_dirty: true,
                meta,
                spare_chunk: None,
                file: None,
                journals: [None, None],
                capture: None,
            }),
            dir: PathBuf::new(),
            checkpoint_copy_peak: AtomicU64::new(0),
        };
        map.rebuild_directory()?;
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::io::fault::FaultBackend;
    use std::path::Path;

    fn map_with(keys: u32) -> Map {
        let (map, _) = Map::open(&FaultBackend::new(), Path::new("/m")).unwrap();
        for k in 0..keys {
            let key = format!("key-{k}");
            let value = if k % 3 == 0 {
                vec![1u8; 10]
            } else {
                vec![2u8; 200]
            };
            map.set(map.key_hash(key.as_bytes()), 4096 * (k as u64 + 1), &value);
        }
        map
    }

    /// An image rebuilt piece by piece finds every key with the same answer, under the
    /// image's secret, and replacing a map's contents with it makes that map answer so.
    #[test]
    fn an_image_rebuilds_the_same_map_and_replaces_another() {
        let source = map_with(5000);
        let image = source.image(LogIndex(7), Term(2));
        let mut builder = MapImageBuilder::new(&image.meta_page).unwrap();
        for piece in image.pages.chunks(PAGE_SIZE * 37) {
            builder.push_pages(piece).unwrap();
        }
        let built = builder.finish().unwrap();
        assert_eq!(built.entry_count(), 5000);
        assert_eq!(built.meta().last_committed_index, LogIndex(7));
        let target = map_with(100);
        target.replace_contents(built);
        assert_eq!(target.entry_count(), 5000);
        for k in 0..5000 {
            let key = format!("key-{k}");
            assert_eq!(
                target.get(target.key_hash(key.as_bytes())),
                source.get(source.key_hash(key.as_bytes())),
                "{key}"
            );
        }
        assert_eq!(target.dirty_page_count(), target.page_count());
        let mut a = image.log_addresses();
        let mut b = Vec::new();
        source.for_each_log_address(|x| b.push(x));
        a.sort_unstable();
        b.sort_unstable();
        assert_eq!(a, b);
        assert!(a.len() >= 5000 - 5000usize.div_ceil(3) && a.len() < 5000);
    }

    /// Damaged or incomplete images are refused with a reason, never a panic.
    #[test]
    fn damaged_images_are_refused() {
        let image = map_with(3000).image(LogIndex(1), Term(1));
        let mut meta = image.meta_page.to_vec();
        meta[40] ^= 1;
        assert!(MapImageBuilder::new(&meta).is_err());
        assert!(MapImageBuilder::new(&meta[..100]).is_err());
        let mut builder = MapImageBuilder::new(&image.meta_page).unwrap();
        assert!(builder.push_pages(&image.pages[..100]).is_err());
        let mut bad = image.pages.clone();
        bad[0] = 20; // slot 0 names inline slot 20
        assert!(builder.push_pages(&bad).is_err());
        let mut builder = MapImageBuilder::new(&image.meta_page).unwrap();
        builder.push_pages(&image.pages[PAGE_SIZE..]).unwrap();
        assert!(builder.finish().is_err(), "a page missing");
        let mut builder = MapImageBuilder::new(&image.meta_page).unwrap();
        let mut twice = image.pages.clone();
        twice.extend_from_slice(&image.pages[..PAGE_SIZE]);
        assert!(builder.push_pages(&twice).is_err(), "a page too many");
        // A chain link out of range.
        let mut linked = image.pages.clone();
        let next = page::OFFSET_NEXT;
        linked[next..next + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        let mut builder = MapImageBuilder::new(&image.meta_page).unwrap();
        builder.push_pages(&linked).unwrap();
        assert!(builder.finish().is_err());
    }
}
