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
//! A checkpoint copies each dirty page once, straight into the journal's buffer; the
//! in-place step writes runs of adjacent pages from that same buffer, so the peak memory of
//! a checkpoint is the journal itself.
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

use crate::le;
use crate::storage::io::{AlignedBuf, BlockFile, PAGE_SIZE, align_up, read_exact_at};
use std::io;
use xxhash_rust::xxh3::xxh3_128;

pub const JOURNAL_MAGIC: [u8; 8] = *b"OLCKPT\0\x01";
/// Bytes of the journal header fields (the rest of the header page is zeros).
const HEADER_FIELDS_SIZE: usize = 72;

/// One checkpoint's worth of pages, laid out exactly as the journal file holds them.
pub struct Journal {
    pub sequence: u64,
    /// Bucket page numbers, ascending; image `i` is page `page_numbers[i]`.
    pub page_numbers: Vec<u32>,
    sessions_len: usize,
    /// Header page, then the body.
    buf: AlignedBuf,
}

fn table_size(page_count: usize) -> usize {
    align_up(page_count * 4, PAGE_SIZE)
}

fn body_len(page_count: usize, sessions_len: usize) -> usize {
    table_size(page_count) + page_count * PAGE_SIZE + PAGE_SIZE + align_up(sessions_len, PAGE_SIZE)
}

impl Journal {
    /// A journal for `page_numbers` (ascending) and `sessions`, with zeroed page images
    /// and metadata page to fill in before [`Journal::seal`].
    pub fn new(sequence: u64, page_numbers: Vec<u32>, sessions: &[u8]) -> Journal {
        let n = page_numbers.len();
        let mut buf = AlignedBuf::new(PAGE_SIZE + body_len(n, sessions.len()));
        for (i, page_no) in page_numbers.iter().enumerate() {
            let at = PAGE_SIZE + i * 4;
            buf[at..at + 4].copy_from_slice(&page_no.to_le_bytes());
        }
        let mut journal = Journal {
            sequence,
            page_numbers,
            sessions_len: sessions.len(),
            buf,
        };
        let at = journal.sessions_at();
        journal.buf[at..at + sessions.len()].copy_from_slice(sessions);
        journal
    }

    fn page_at(&self, i: usize) -> usize {
        PAGE_SIZE + table_size(self.page_numbers.len()) + i * PAGE_SIZE
    }

    fn meta_at(&self) -> usize {
        self.page_at(self.page_numbers.len())
    }

    fn sessions_at(&self) -> usize {
        self.meta_at() + PAGE_SIZE
    }

    /// The image of page `page_numbers[i]`.
    pub fn page(&self, i: usize) -> &[u8] {
        let at = self.page_at(i);
        &self.buf[at..at + PAGE_SIZE]
    }

    /// Where the image of page `page_numbers[i]` goes.
    pub fn page_mut(&mut self, i: usize) -> &mut [u8] {
        let at = self.page_at(i);
        &mut self.buf[at..at + PAGE_SIZE]
    }

    pub fn meta_page(&self) -> &[u8] {
        let at = self.meta_at();
        &self.buf[at..at + PAGE_SIZE]
    }

    pub fn meta_page_mut(&mut self) -> &mut [u8] {
        let at = self.meta_at();
        &mut self.buf[at..at + PAGE_SIZE]
    }

    pub fn sessions(&self) -> &[u8] {
        let at = self.sessions_at();
        &self.buf[at..at + self.sessions_len]
    }

    /// Fills in the header: sizes and the hashes over everything else.
    pub fn seal(&mut self) {
        let n = self.page_numbers.len();
        let body_len = body_len(n, self.sessions_len);
        let body_hash = xxh3_128(&self.buf[PAGE_SIZE..]);
        let header = &mut self.buf[..PAGE_SIZE];
        header[..8].copy_from_slice(&JOURNAL_MAGIC);
        header[8..16].copy_from_slice(&self.sequence.to_le_bytes());
        header[16..24].copy_from_slice(&(n as u64).to_le_bytes());
        header[24..32].copy_from_slice(&(self.sessions_len as u64).to_le_bytes());
        header[32..40].copy_from_slice(&(body_len as u64).to_le_bytes());
        header[40..56].copy_from_slice(&body_hash.to_le_bytes());
        let header_hash = xxh3_128(&header[..56]);
        header[56..HEADER_FIELDS_SIZE].copy_from_slice(&header_hash.to_le_bytes());
    }

    /// Bytes the journal takes in memory and on disk.
    pub fn size_bytes(&self) -> usize {
        self.buf.len()
    }
}

/// Writes a sealed `journal` durably into `file`.
pub fn write(file: &mut dyn BlockFile, journal: &Journal) -> io::Result<()> {
    file.write_durable_at(&journal.buf, 0)
}

/// Reads a journal back; `None` if it is absent, torn or otherwise invalid.
pub fn read(file: &mut dyn BlockFile) -> io::Result<Option<Journal>> {
    let len = file.len()?;
    if len < PAGE_SIZE as u64 {
        return Ok(None);
    }
    let mut header = AlignedBuf::new(PAGE_SIZE);
    read_exact_at(file, &mut header, 0)?;
    let field = |at: usize| le::u64_at(&header, at).unwrap_or(0);
    let hash_at = |at: usize| le::u128_at(&header, at).unwrap_or(0);
    if le::array(&header, 0) != Some(JOURNAL_MAGIC)
        || hash_at(56) != xxh3_128(header.get(..56).unwrap_or_default())
    {
        return Ok(None);
    }
    let (sequence, n, sessions_len, stored_body_len) = (field(8), field(16), field(24), field(32));
    // Sizes from the file are checked before anything is allocated for them.
    let (Ok(n), Ok(sessions_len)) = (usize::try_from(n), usize::try_from(sessions_len)) else {
        return Ok(None);
    };
    if n > (len as usize) / PAGE_SIZE || sessions_len > len as usize {
        return Ok(None);
    }
    let expected_len = body_len(n, sessions_len);
    if stored_body_len != expected_len as u64 || PAGE_SIZE as u64 + expected_len as u64 > len {
        return Ok(None);
    }
    let mut buf = AlignedBuf::new(PAGE_SIZE + expected_len);
    read_exact_at(file, &mut buf, 0)?;
    if xxh3_128(&buf[PAGE_SIZE..]) != hash_at(40) {
        return Ok(None);
    }
    let page_numbers = buf[PAGE_SIZE..PAGE_SIZE + n * 4]
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok(Some(Journal {
        sequence,
        page_numbers,
        sessions_len,
        buf,
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

/// Writes the journal's pages into the map file in place (each run of adjacent pages in
/// one write, straight from the journal's buffer), then the metadata page, then syncs.
pub fn replay(journal: &Journal, file: &mut dyn BlockFile) -> io::Result<()> {
    for run in runs(&journal.page_numbers) {
        let start = journal.page_at(run.start);
        let end = journal.page_at(run.end);
        let first_page = journal.page_numbers[run.start] as u64;
        file.write_at(
            &journal.buf[start..end],
            (first_page + 1) * PAGE_SIZE as u64,
        )?;
    }
    file.write_at(journal.meta_page(), 0)?;
    file.sync()
}

/// Splits ascending page numbers into runs of adjacent ones (as index ranges).
pub fn runs(page_numbers: &[u32]) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
    let mut start = 0;
    std::iter::from_fn(move || {
        if start >= page_numbers.len() {
            return None;
        }
        let mut end = start + 1;
        while end < page_numbers.len() && page_numbers[end] == page_numbers[end - 1] + 1 {
            end += 1;
        }
        let run = start..end;
        start = end;
        Some(run)
    })
}
