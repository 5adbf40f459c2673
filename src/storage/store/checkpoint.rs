//! Crash-safe checkpoints of the map: a double-write journal, written as a stream.
//!
//! Writing dirty pages straight into `map.dat` is unsafe: a crash can tear a page, or land
//! one half of a split and not the other, and replaying the log cannot repair a key that
//! a torn page lost from before the checkpoint. So a checkpoint is written twice:
//!
//! 1. the dirty page images, in groups, then the new metadata page and the sessions blob
//!    go into one journal file (`ckpt.0` or `ckpt.1`, alternating by sequence) with plain
//!    writes, then the file is synced, then its header page — which carries the hash of
//!    all of that — is written durably: the journal is valid only once its header is;
//! 2. the same pages are read back from the journal a group at a time and written into
//!    `map.dat` in place, then the metadata page, then `map.dat` is synced.
//!
//! On open, the valid journal with the highest sequence is written into `map.dat` again
//! (idempotent). A crash before the header is durable leaves that journal invalid (an
//! older header over a new body fails its body hash), and the previous one, whose step 2
//! had completed, is replayed instead; a crash during step 2 is finished by the replay.
//! Either way `map.dat` ends up exactly at one checkpoint, and the log is replayed from
//! that checkpoint's index.
//!
//! Neither step holds more than a batch of groups in memory (16 MiB): the map hands the
//! job each page image once (see `Map::checkpoint_begin`), the job writes up to
//! [`WRITE_GROUPS_MAX`] groups with one request, and the in-place step streams the
//! journal back as many at a time. A checkpoint's memory is that buffer plus the images
//! the writer saved of pages it changed before the job took them.
//!
//! ```text
//! journal header page
//!    0   8  magic        b"OLCKPT\0\x02"
//!    8   8  sequence
//!   16   8  page_count   page images in this journal
//!   24   8  sessions_len
//!   32   8  body_len     bytes after the header page
//!   40  16  body_hash    xxh3-128 of the body
//!   56  16  header_hash  xxh3-128 of bytes 0..56
//! body: groups, each a table page (u32 n ≤ 1023, then n u32 page numbers) followed by
//!       n page images; then the metadata page; then the sessions blob (padded to a page)
//! ```
//!
//! Journals of format 1 (`b"OLCKPT\0\x01"`, one table of every page number padded to a
//! page, then the images) are still read and replayed, so a node stopped by a crash in the
//! middle of an older version's checkpoint finishes it.

use crate::le;
use crate::storage::io::{AlignedBuf, BlockFile, PAGE_SIZE, align_up, read_exact_at};
use std::io;
use xxhash_rust::xxh3::{Xxh3, xxh3_128};

pub const JOURNAL_MAGIC: [u8; 8] = *b"OLCKPT\0\x02";
const JOURNAL_MAGIC_V1: [u8; 8] = *b"OLCKPT\0\x01";
/// Bytes of the journal header fields (the rest of the header page is zeros).
const HEADER_FIELDS_SIZE: usize = 72;
/// The most page images one group's table page can list.
pub const GROUP_PAGES_MAX: usize = PAGE_SIZE / 4 - 1;
/// Page images per group this version writes: a group is then 1 MiB.
pub const GROUP_PAGES: usize = 255;
/// Bytes read at a time when a journal's body is hashed.
const VERIFY_CHUNK: usize = 16 << 20;
/// Groups a checkpoint writes with one request (16 MiB), at most.
pub const WRITE_GROUPS_MAX: usize = 16;
/// Bytes of a journal the in-place step reads at a time, at most.
const REPLAY_BATCH: usize = WRITE_GROUPS_MAX * (1 + GROUP_PAGES) * PAGE_SIZE;

/// A journal's header, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    version: u8,
    pub sequence: u64,
    pub page_count: u64,
    pub sessions_len: u64,
    pub body_len: u64,
    body_hash: u128,
}

impl Header {
    fn encode(&self) -> AlignedBuf {
        let mut page = AlignedBuf::new(PAGE_SIZE);
        page[..8].copy_from_slice(if self.version == 1 {
            &JOURNAL_MAGIC_V1
        } else {
            &JOURNAL_MAGIC
        });
        page[8..16].copy_from_slice(&self.sequence.to_le_bytes());
        page[16..24].copy_from_slice(&self.page_count.to_le_bytes());
        page[24..32].copy_from_slice(&self.sessions_len.to_le_bytes());
        page[32..40].copy_from_slice(&self.body_len.to_le_bytes());
        page[40..56].copy_from_slice(&self.body_hash.to_le_bytes());
        let header_hash = xxh3_128(&page[..56]);
        page[56..HEADER_FIELDS_SIZE].copy_from_slice(&header_hash.to_le_bytes());
        page
    }

    /// Decodes a header page; `None` unless magic and header hash hold.
    fn decode(page: &[u8]) -> Option<Header> {
        let version = match le::array::<8>(page, 0)? {
            JOURNAL_MAGIC => 2,
            JOURNAL_MAGIC_V1 => 1,
            _ => return None,
        };
        if le::u128_at(page, 56)? != xxh3_128(page.get(..56)?) {
            return None;
        }
        Some(Header {
            version,
            sequence: le::u64_at(page, 8)?,
            page_count: le::u64_at(page, 16)?,
            sessions_len: le::u64_at(page, 24)?,
            body_len: le::u64_at(page, 32)?,
            body_hash: le::u128_at(page, 40)?,
        })
    }

    /// Where the metadata page starts (the sessions blob follows it).
    fn meta_offset(&self) -> u64 {
        PAGE_SIZE as u64 + self.body_len
            - PAGE_SIZE as u64
            - align_up(self.sessions_len as usize, PAGE_SIZE) as u64
    }

    /// Whether the sizes fit together (checked before anything is read or allocated for
    /// them).
    fn sizes_hold(&self, file_len: u64) -> bool {
        let page = PAGE_SIZE as u64;
        let Some(sessions) = self
            .sessions_len
            .checked_add(page - 1)
            .map(|s| s / page * page)
        else {
            return false;
        };
        let images = match self.page_count.checked_mul(page) {
            Some(b) => b,
            None => return false,
        };
        // Format 2: at least one table page per GROUP_PAGES_MAX images; format 1: one
        // table, exactly.
        let tables = if self.version == 1 {
            align_up((self.page_count as usize).saturating_mul(4), PAGE_SIZE) as u64
        } else {
            self.page_count.div_ceil(GROUP_PAGES_MAX as u64) * page
        };
        let least = images
            .checked_add(tables)
            .and_then(|b| b.checked_add(page))
            .and_then(|b| b.checked_add(sessions));
        let fits = page
            .checked_add(self.body_len)
            .is_some_and(|end| end <= file_len);
        match least {
            Some(least) if self.version == 1 => self.body_len == least && fits,
            Some(least) => self.body_len >= least && self.body_len.is_multiple_of(page) && fits,
            None => false,
        }
    }
}

/// Groups of page images being filled, back to back as the journal holds them (each its
/// table page, then its images), written with one request when full.
pub struct Groups {
    buf: AlignedBuf,
    groups_max: usize,
    /// Groups begun (the last one may have room).
    groups: usize,
    /// Images in the last group begun.
    in_last: usize,
    len: usize,
}

impl Groups {
    /// Room for `groups_max` (at least one) groups of [`GROUP_PAGES`] images.
    pub fn new(groups_max: usize) -> Groups {
        let groups_max = groups_max.max(1);
        Groups {
            buf: AlignedBuf::new(groups_max * (1 + GROUP_PAGES) * PAGE_SIZE),
            groups_max,
            groups: 0,
            in_last: 0,
            len: 0,
        }
    }

    /// Images held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Images that still fit.
    pub fn room(&self) -> usize {
        self.groups_max * GROUP_PAGES - self.len
    }

    pub fn is_full(&self) -> bool {
        self.room() == 0
    }

    /// Lists page `page_no` next and returns where its image goes.
    pub fn push(&mut self, page_no: u32) -> &mut [u8] {
        assert!(!self.is_full(), "full checkpoint groups");
        if self.groups == 0 || self.in_last == GROUP_PAGES {
            self.groups += 1;
            self.in_last = 0;
        }
        let table = (self.groups - 1) * (1 + GROUP_PAGES) * PAGE_SIZE;
        let at = table + 4 + self.in_last * 4;
        self.buf[at..at + 4].copy_from_slice(&page_no.to_le_bytes());
        self.in_last += 1;
        self.len += 1;
        self.buf[table..table + 4].copy_from_slice(&(self.in_last as u32).to_le_bytes());
        let image = table + self.in_last * PAGE_SIZE;
        &mut self.buf[image..image + PAGE_SIZE]
    }

    /// Empties the groups for reuse.
    pub fn clear(&mut self) {
        for g in 0..self.groups {
            let table = g * (1 + GROUP_PAGES) * PAGE_SIZE;
            self.buf[table..table + PAGE_SIZE].fill(0);
        }
        (self.groups, self.in_last, self.len) = (0, 0, 0);
    }

    fn bytes(&self) -> &[u8] {
        let full = self.groups.saturating_sub(1) * (1 + GROUP_PAGES);
        let last = if self.groups == 0 {
            0
        } else {
            1 + self.in_last
        };
        &self.buf[..(full + last) * PAGE_SIZE]
    }
}

/// Writes one journal: groups as they come, then the tail and the header.
pub struct JournalWriter<'f> {
    file: &'f mut dyn BlockFile,
    sequence: u64,
    offset: u64,
    hasher: Xxh3,
    page_count: u64,
}

impl<'f> JournalWriter<'f> {
    pub fn new(file: &'f mut dyn BlockFile, sequence: u64) -> JournalWriter<'f> {
        JournalWriter {
            file,
            sequence,
            offset: PAGE_SIZE as u64,
            hasher: Xxh3::new(),
            page_count: 0,
        }
    }

    /// Appends groups in one write (not yet durable; nothing when they are empty).
    pub fn write_groups(&mut self, groups: &Groups) -> io::Result<()> {
        if groups.is_empty() {
            return Ok(());
        }
        let bytes = groups.bytes();
        self.hasher.update(bytes);
        self.file.write_at(bytes, self.offset)?;
        self.offset += bytes.len() as u64;
        self.page_count += groups.len() as u64;
        Ok(())
    }

    /// Appends the metadata page and the sessions blob, syncs, then writes the header
    /// durably: from then on the journal is valid.
    pub fn finish(mut self, meta_page: &[u8], sessions: &[u8]) -> io::Result<Header> {
        let mut tail = AlignedBuf::new(PAGE_SIZE + align_up(sessions.len(), PAGE_SIZE));
        tail[..PAGE_SIZE].copy_from_slice(&meta_page[..PAGE_SIZE]);
        tail[PAGE_SIZE..PAGE_SIZE + sessions.len()].copy_from_slice(sessions);
        self.hasher.update(&tail);
        self.file.write_at(&tail, self.offset)?;
        self.file.sync()?;
        let header = Header {
            version: 2,
            sequence: self.sequence,
            page_count: self.page_count,
            sessions_len: sessions.len() as u64,
            body_len: self.offset + tail.len() as u64 - PAGE_SIZE as u64,
            body_hash: self.hasher.digest128(),
        };
        self.file.write_durable_at(&header.encode(), 0)?;
        Ok(header)
    }
}

/// The header of the journal in `file` if the journal is valid: header hash, sizes and
/// the hash of the whole body (read a few MiB at a time).
pub fn read_valid(file: &mut dyn BlockFile) -> io::Result<Option<Header>> {
    let Some(header) = read_header(file)? else {
        return Ok(None);
    };
    let mut hasher = Xxh3::new();
    let end = PAGE_SIZE as u64 + header.body_len;
    let mut buf = AlignedBuf::new(VERIFY_CHUNK.min(header.body_len.max(1) as usize));
    let mut at = PAGE_SIZE as u64;
    while at < end {
        let n = (end - at).min(buf.len() as u64) as usize;
        read_exact_at(file, &mut buf[..n], at)?;
        hasher.update(&buf[..n]);
        at += n as u64;
    }
    Ok((hasher.digest128() == header.body_hash).then_some(header))
}

/// The header alone, if its own hash and its sizes hold (the body is not checked).
fn read_header(file: &mut dyn BlockFile) -> io::Result<Option<Header>> {
    let len = file.len()?;
    if len < PAGE_SIZE as u64 {
        return Ok(None);
    }
    let mut page = AlignedBuf::new(PAGE_SIZE);
    read_exact_at(file, &mut page, 0)?;
    Ok(Header::decode(&page).filter(|h| h.sizes_hold(len)))
}

/// The valid journal with the highest sequence, if any: which of the two it is and its
/// header.
pub fn newest_valid(journals: &mut [Box<dyn BlockFile>; 2]) -> io::Result<Option<(usize, Header)>> {
    let mut order = [0usize, 1];
    let a = read_header(journals[0].as_mut())?.map(|h| h.sequence);
    let b = read_header(journals[1].as_mut())?.map(|h| h.sequence);
    if b > a {
        order = [1, 0];
    }
    for slot in order {
        if let Some(header) = read_valid(journals[slot].as_mut())? {
            return Ok(Some((slot, header)));
        }
    }
    Ok(None)
}

/// The sessions blob a valid journal carries.
pub fn read_sessions(file: &mut dyn BlockFile, header: &Header) -> io::Result<Vec<u8>> {
    let len = header.sessions_len as usize;
    if len == 0 {
        return Ok(Vec::new());
    }
    let mut buf = AlignedBuf::new(align_up(len.max(1), PAGE_SIZE));
    read_exact_at(file, &mut buf, header.meta_offset() + PAGE_SIZE as u64)?;
    Ok(buf[..len].to_vec())
}

/// Writes a valid journal's pages into the map file in place, a group at a time (each
/// run of adjacent pages in one write), then the metadata page, then syncs.
pub fn replay(
    journal: &mut dyn BlockFile,
    header: &Header,
    map: &mut dyn BlockFile,
) -> io::Result<()> {
    let page = PAGE_SIZE as u64;
    let meta_at = header.meta_offset();
    let corrupt = |at: u64, what: &str| {
        io::Error::other(format!(
            "checkpoint journal {}: {what} at offset {at}",
            header.sequence
        ))
    };
    // One read of up to REPLAY_BATCH bytes at a time (at least one largest group).
    let body = (header.body_len as usize).max(PAGE_SIZE);
    let mut buf = AlignedBuf::new(body.clamp((1 + GROUP_PAGES_MAX) * PAGE_SIZE, REPLAY_BATCH));
    let mut left = header.page_count as usize;
    if header.version == 1 {
        let table_len = align_up(left * 4, PAGE_SIZE);
        let mut table = AlignedBuf::new(table_len.max(PAGE_SIZE));
        read_exact_at(journal, &mut table[..table_len], page)?;
        let numbers = page_numbers(&table[..left * 4]);
        let mut at = page + table_len as u64;
        for batch in numbers.chunks(buf.len() / PAGE_SIZE) {
            let bytes = batch.len() * PAGE_SIZE;
            read_exact_at(journal, &mut buf[..bytes], at)?;
            write_runs(map, batch, &buf[..bytes])?;
            at += bytes as u64;
        }
    } else {
        // Several groups per read; a group the read cuts is read again from its start.
        let mut at = page;
        while left > 0 {
            let n_bytes = (meta_at.saturating_sub(at)).min(buf.len() as u64) as usize;
            if n_bytes < PAGE_SIZE {
                return Err(corrupt(at, "groups run into the metadata page"));
            }
            read_exact_at(journal, &mut buf[..n_bytes], at)?;
            let mut offset = 0usize;
            while left > 0 && offset + PAGE_SIZE <= n_bytes {
                let n = le::u32_at(&buf, offset).unwrap_or(0) as usize;
                let group_len = (1 + n) * PAGE_SIZE;
                if n == 0
                    || n > GROUP_PAGES_MAX.min(left)
                    || at + (offset + group_len) as u64 > meta_at
                {
                    return Err(corrupt(
                        at + offset as u64,
                        &format!("a group of {n} pages"),
                    ));
                }
                if offset + group_len > n_bytes {
                    break;
                }
                let numbers = page_numbers(&buf[offset + 4..offset + 4 + n * 4]);
                write_runs(map, &numbers, &buf[offset + PAGE_SIZE..offset + group_len])?;
                offset += group_len;
                left -= n;
            }
            at += offset as u64;
        }
        if at != meta_at {
            return Err(corrupt(
                at,
                "bytes between the last group and the metadata page",
            ));
        }
    }
    read_exact_at(journal, &mut buf[..PAGE_SIZE], meta_at)?;
    map.write_at(&buf[..PAGE_SIZE], 0)?;
    map.sync()
}

/// The little-endian u32 page numbers of a journal table.
fn page_numbers(table: &[u8]) -> Vec<u32> {
    table
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Writes `images` (image `i` is page `numbers[i]`) into the map file, one write per run
/// of adjacent page numbers.
fn write_runs(map: &mut dyn BlockFile, numbers: &[u32], images: &[u8]) -> io::Result<()> {
    for run in runs(numbers) {
        let first_page = numbers[run.start] as u64;
        map.write_at(
            &images[run.start * PAGE_SIZE..run.end * PAGE_SIZE],
            (first_page + 1) * PAGE_SIZE as u64,
        )?;
    }
    Ok(())
}

/// Splits page numbers into runs of ascending adjacent ones (as index ranges).
fn runs(page_numbers: &[u32]) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
    let mut start = 0;
    std::iter::from_fn(move || {
        if start >= page_numbers.len() {
            return None;
        }
        let mut end = start + 1;
        while end < page_numbers.len() && page_numbers[end] == page_numbers[end - 1].wrapping_add(1)
        {
            end += 1;
        }
        let run = start..end;
        start = end;
        Some(run)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::io::fault::{Fault, FaultBackend, PowerLoss};
    use crate::storage::io::open_durable;
    use std::path::Path;

    /// A page image whose every byte names `page_no` and `version`.
    fn image(page_no: u32, version: u8) -> Vec<u8> {
        (0..PAGE_SIZE)
            .map(|i| (page_no as usize * 7 + i) as u8 ^ version)
            .collect()
    }

    fn meta(version: u8) -> Vec<u8> {
        vec![0xA0 ^ version; PAGE_SIZE]
    }

    /// Writes a format-2 journal of `pages` (in that order, in groups of [`GROUP_PAGES`],
    /// two groups per write).
    fn write_journal(file: &mut dyn BlockFile, sequence: u64, pages: &[u32], version: u8) {
        let mut writer = JournalWriter::new(file, sequence);
        let mut groups = Groups::new(2);
        for &p in pages {
            groups.push(p).copy_from_slice(&image(p, version));
            if groups.is_full() {
                writer.write_groups(&groups).unwrap();
                groups.clear();
            }
        }
        writer.write_groups(&groups).unwrap();
        writer.finish(&meta(version), b"sessions blob").unwrap();
    }

    fn map_page(disk: &FaultBackend, p: u32) -> Vec<u8> {
        let image = disk.durable_image(Path::new("/map.dat")).unwrap();
        let at = (p as usize + 1) * PAGE_SIZE;
        image[at..at + PAGE_SIZE].to_vec()
    }

    #[test]
    fn a_journal_replays_every_group_and_its_metadata() {
        let disk = FaultBackend::new();
        let mut journal = open_durable(&disk, Path::new("/ckpt.0")).unwrap();
        let mut map = open_durable(&disk, Path::new("/map.dat")).unwrap();
        // Out of order and in several groups, as the writer's saved images make them.
        let pages: Vec<u32> = (0..600).rev().chain([700, 701, 650]).collect();
        write_journal(journal.as_mut(), 4, &pages, 1);
        let header = read_valid(journal.as_mut())
            .unwrap()
            .expect("a valid journal");
        assert_eq!((header.sequence, header.page_count), (4, 603));
        assert_eq!(
            read_sessions(journal.as_mut(), &header).unwrap(),
            b"sessions blob"
        );
        replay(journal.as_mut(), &header, map.as_mut()).unwrap();
        for &p in &pages {
            assert_eq!(map_page(&disk, p), image(p, 1), "page {p}");
        }
        let file = disk.durable_image(Path::new("/map.dat")).unwrap();
        assert_eq!(&file[..PAGE_SIZE], &meta(1)[..]);
    }

    #[test]
    fn a_journal_is_valid_only_once_its_header_is_durable() {
        for loss in [PowerLoss::KeepUnsynced, PowerLoss::DropUnsynced] {
            let disk = FaultBackend::new();
            let mut journal = open_durable(&disk, Path::new("/ckpt.1")).unwrap();
            write_journal(journal.as_mut(), 1, &(0..300).collect::<Vec<_>>(), 1);
            // The next journal into this file dies writing its header: groups (2), tail,
            // sync, then the header.
            disk.arm(disk.io_points() + 4, Fault::Crash { torn_sectors: 0 });
            let mut writer = JournalWriter::new(journal.as_mut(), 3);
            let mut groups = Groups::new(1);
            for p in 0..300 {
                if groups.is_full() {
                    writer.write_groups(&groups).unwrap();
                    groups.clear();
                }
                groups.push(p).copy_from_slice(&image(p, 2));
            }
            writer.write_groups(&groups).unwrap();
            writer.finish(&meta(2), b"").unwrap_err();
            drop(journal);
            disk.power_loss(loss);
            let mut journal = open_durable(&disk, Path::new("/ckpt.1")).unwrap();
            // The old header now covers a body that is not its own.
            assert_eq!(read_valid(journal.as_mut()).unwrap(), None, "{loss:?}");
        }
    }

    #[test]
    fn a_damaged_body_or_header_makes_the_journal_invalid() {
        let disk = FaultBackend::new();
        let path = Path::new("/ckpt.0");
        let mut journal = open_durable(&disk, path).unwrap();
        write_journal(journal.as_mut(), 2, &[3, 4, 5], 1);
        drop(journal);
        let good = disk.durable_image(path).unwrap();
        for at in [9, PAGE_SIZE + 2, 3 * PAGE_SIZE + 100, good.len() - 1] {
            let mut bad = good.clone();
            bad[at] ^= 1;
            disk.replace_image(path, bad);
            let mut journal = open_durable(&disk, path).unwrap();
            assert_eq!(read_valid(journal.as_mut()).unwrap(), None, "byte {at}");
        }
        let mut cut = good.clone();
        cut.truncate(good.len() - PAGE_SIZE);
        disk.replace_image(path, cut);
        let mut journal = open_durable(&disk, path).unwrap();
        assert_eq!(read_valid(journal.as_mut()).unwrap(), None, "cut short");
    }

    /// A journal of the earlier format (one table of all page numbers) is still replayed.
    #[test]
    fn a_format_1_journal_is_replayed() {
        let pages = [9u32, 2, 3, 4];
        let sessions = b"old sessions";
        let table = align_up(pages.len() * 4, PAGE_SIZE);
        let body_len = table + pages.len() * PAGE_SIZE + PAGE_SIZE + PAGE_SIZE;
        let mut bytes = vec![0u8; PAGE_SIZE + body_len];
        for (i, p) in pages.iter().enumerate() {
            bytes[PAGE_SIZE + i * 4..PAGE_SIZE + i * 4 + 4].copy_from_slice(&p.to_le_bytes());
            let at = PAGE_SIZE + table + i * PAGE_SIZE;
            bytes[at..at + PAGE_SIZE].copy_from_slice(&image(*p, 5));
        }
        let meta_at = PAGE_SIZE + table + pages.len() * PAGE_SIZE;
        bytes[meta_at..meta_at + PAGE_SIZE].copy_from_slice(&meta(5));
        bytes[meta_at + PAGE_SIZE..meta_at + PAGE_SIZE + sessions.len()].copy_from_slice(sessions);
        let header = Header {
            version: 1,
            sequence: 7,
            page_count: pages.len() as u64,
            sessions_len: sessions.len() as u64,
            body_len: body_len as u64,
            body_hash: xxh3_128(&bytes[PAGE_SIZE..]),
        };
        bytes[..PAGE_SIZE].copy_from_slice(&header.encode());
        let disk = FaultBackend::new();
        disk.replace_image(Path::new("/ckpt.1"), bytes);
        let mut journals = [
            open_durable(&disk, Path::new("/ckpt.0")).unwrap(),
            open_durable(&disk, Path::new("/ckpt.1")).unwrap(),
        ];
        let (slot, found) = newest_valid(&mut journals)
            .unwrap()
            .expect("the old journal");
        assert_eq!((slot, found), (1, header));
        let mut map = open_durable(&disk, Path::new("/map.dat")).unwrap();
        replay(journals[1].as_mut(), &found, map.as_mut()).unwrap();
        assert_eq!(
            read_sessions(journals[1].as_mut(), &found).unwrap(),
            sessions
        );
        for p in pages {
            assert_eq!(map_page(&disk, p), image(p, 5), "page {p}");
        }
    }
}
