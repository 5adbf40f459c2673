//! Crash-safe checkpoints of the map: a double-write journal.
//!
//! Writing dirty pages straight into `map.dat` is unsafe: a crash can tear a page, or land
//! one half of a split and not the other, and replaying the log cannot repair a key that
//! a torn page lost from before the checkpoint. So a checkpoint is written twice:
//!
//! 1. the dirty page images, the new metadata page and the sessions blob go into one
//!    journal file (`ckpt.0` or `ckpt.1`, alternating by sequence), in a single durable
//!    write covered by a hash;
//! 2. the same pages are written into `map.dat` in place, then synced.
//!
//! On open, the valid journal with the highest sequence is written into `map.dat` again
//! (idempotent). A crash during step 1 leaves that journal invalid, and the previous one,
//! whose step 2 had completed, is replayed instead; a crash during step 2 is finished by
//! the replay. Either way `map.dat` ends up exactly at one checkpoint, and the log is
//! replayed from that checkpoint's index.
//!
//! ```text
//! journal header page
//!    0   8  magic        b"OLCKPT\0\x01"
//!    8   8  sequence
//!   16   8  page_count   page images in this journal
//!   24   8  sessions_len
//!   32   8  body_len     bytes after the header page
//!   40  16  body_hash    xxh3-128 of the body
//!   56  16  header_hash  xxh3-128 of bytes 0..56
//! body: page_count × u32 page numbers (padded to a page), page_count page images,
//!       the metadata page, the sessions blob (padded to a page)
//! ```

use crate::storage::io::{AlignedBuf, BlockFile, PAGE_SIZE, align_up, read_exact_at};
use std::io;
use xxhash_rust::xxh3::xxh3_128;

pub const JOURNAL_MAGIC: [u8; 8] = *b"OLCKPT\0\x01";

/// One checkpoint's worth of pages.
pub struct Journal {
    pub sequence: u64,
    /// (bucket page number, image) in ascending page order.
    pub pages: Vec<(u32, AlignedBuf)>,
    pub meta_page: AlignedBuf,
    pub sessions: Vec<u8>,
}

fn table_size(page_count: usize) -> usize {
    align_up(page_count * 4, PAGE_SIZE)
}

/// Writes `journal` durably into `file`.
pub fn write(file: &mut dyn BlockFile, journal: &Journal) -> io::Result<()> {
    let n = journal.pages.len();
    let table = table_size(n);
    let body_len = table + n * PAGE_SIZE + PAGE_SIZE + align_up(journal.sessions.len(), PAGE_SIZE);
    let mut buf = AlignedBuf::new(PAGE_SIZE + body_len);
    let body = &mut buf[PAGE_SIZE..];
    for (i, (page_no, image)) in journal.pages.iter().enumerate() {
        body[i * 4..i * 4 + 4].copy_from_slice(&page_no.to_le_bytes());
        let at = table + i * PAGE_SIZE;
        body[at..at + PAGE_SIZE].copy_from_slice(image);
    }
    let meta_at = table + n * PAGE_SIZE;
    body[meta_at..meta_at + PAGE_SIZE].copy_from_slice(&journal.meta_page);
    let sessions_at = meta_at + PAGE_SIZE;
    body[sessions_at..sessions_at + journal.sessions.len()].copy_from_slice(&journal.sessions);
    let body_hash = xxh3_128(&buf[PAGE_SIZE..]);
    let header = &mut buf[..PAGE_SIZE];
    header[..8].copy_from_slice(&JOURNAL_MAGIC);
    header[8..16].copy_from_slice(&journal.sequence.to_le_bytes());
    header[16..24].copy_from_slice(&(n as u64).to_le_bytes());
    header[24..32].copy_from_slice(&(journal.sessions.len() as u64).to_le_bytes());
    header[32..40].copy_from_slice(&(body_len as u64).to_le_bytes());
    header[40..56].copy_from_slice(&body_hash.to_le_bytes());
    let header_hash = xxh3_128(&header[..56]);
    header[56..72].copy_from_slice(&header_hash.to_le_bytes());
    file.write_durable_at(&buf, 0)
}

/// Reads a journal back; `None` if it is absent, torn or otherwise invalid.
pub fn read(file: &mut dyn BlockFile) -> io::Result<Option<Journal>> {
    let len = file.len()?;
    if len < PAGE_SIZE as u64 {
        return Ok(None);
    }
    let mut header = AlignedBuf::new(PAGE_SIZE);
    read_exact_at(file, &mut header, 0)?;
    let u64_at = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().unwrap());
    let header_hash = u128::from_le_bytes(header[56..72].try_into().unwrap());
    if header[..8] != JOURNAL_MAGIC || header_hash != xxh3_128(&header[..56]) {
        return Ok(None);
    }
    let (sequence, n, sessions_len, body_len) = (
        u64_at(8),
        u64_at(16) as usize,
        u64_at(24) as usize,
        u64_at(32) as usize,
    );
    let expected_len =
        table_size(n) + n * PAGE_SIZE + PAGE_SIZE + align_up(sessions_len, PAGE_SIZE);
    if body_len != expected_len || PAGE_SIZE as u64 + body_len as u64 > len {
        return Ok(None);
    }
    let mut body = AlignedBuf::new(body_len);
    read_exact_at(file, &mut body, PAGE_SIZE as u64)?;
    if xxh3_128(&body[..body_len]) != u128::from_le_bytes(header[40..56].try_into().unwrap()) {
        return Ok(None);
    }
    let table = table_size(n);
    let pages = (0..n)
        .map(|i| {
            let page_no = u32::from_le_bytes(body[i * 4..i * 4 + 4].try_into().unwrap());
            let at = table + i * PAGE_SIZE;
            (page_no, AlignedBuf::from_slice(&body[at..at + PAGE_SIZE]))
        })
        .collect();
    let meta_at = table + n * PAGE_SIZE;
    let sessions_at = meta_at + PAGE_SIZE;
    Ok(Some(Journal {
        sequence,
        pages,
        meta_page: AlignedBuf::from_slice(&body[meta_at..meta_at + PAGE_SIZE]),
        sessions: body[sessions_at..sessions_at + sessions_len].to_vec(),
    }))
}

/// The valid journal with the highest sequence, if any.
pub fn newest_valid(journals: &mut [Box<dyn BlockFile>; 2]) -> io::Result<Option<Journal>> {
    let a = read(journals[0].as_mut())?;
    let b = read(journals[1].as_mut())?;
    Ok(match (a, b) {
        (Some(a), Some(b)) => Some(if a.sequence > b.sequence { a } else { b }),
        (a, b) => a.or(b),
    })
}

/// Writes the journal's pages into the map file in place (runs of adjacent pages in one
/// write each), then the metadata page, then syncs.
pub fn replay(journal: &Journal, file: &mut dyn BlockFile) -> io::Result<()> {
    for pages in runs(&journal.pages) {
        let mut run = AlignedBuf::new(pages.len() * PAGE_SIZE);
        for (k, (_, image)) in pages.iter().enumerate() {
            run[k * PAGE_SIZE..(k + 1) * PAGE_SIZE].copy_from_slice(image);
        }
        file.write_at(&run, (pages[0].0 as u64 + 1) * PAGE_SIZE as u64)?;
    }
    file.write_at(&journal.meta_page, 0)?;
    file.sync()
}

/// Splits pages (ascending by number) into runs of adjacent page numbers.
pub fn runs(pages: &[(u32, AlignedBuf)]) -> impl Iterator<Item = &[(u32, AlignedBuf)]> {
    pages.chunk_by(|a, b| b.0 == a.0 + 1)
}
