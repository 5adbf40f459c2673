//! Reading values back by log address, from any thread: from the shared cache of recent
//! entries, the cache of values read before, or with O_DIRECT reads (batched for a shard's
//! GETs) of the segment file the address names, checking that the SET command found there
//! is for the key asked for.

use super::segments::Segments;
use super::{EntryCache, LogError, ValueCache};
use crate::storage::command::{self, CommandRef, DecodeError};
use crate::storage::io::{
    AlignedBuf, Backend, BlockFile, FileReads, FinishedRead, PAGE_SIZE, ReadQueue, align_up,
    read_exact_at,
};
use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::sync::Mutex;

/// Reads values out of the log from a thread other than the log's owner (a shard serving
/// GETs, the cleaner). Only addresses the map handed out after the entry was durable are
/// ever read. Each reader opens the segment files it needs on first use and closes those
/// of removed segments.
pub struct LogReader {
    backend: Arc<dyn Backend>,
    table: Arc<Segments>,
    files: HashMap<u64, Box<dyn BlockFile>>,
    removals_seen: u64,
    pub(super) cache: Arc<Mutex<EntryCache>>,
    /// Values read from the disk, kept by access (shared by every reader of a node).
    pub(super) values: Option<Arc<Mutex<ValueCache>>>,
    /// [`LogReader::read_values_with`]'s list of reads the caches could not answer, kept
    /// for its capacity.
    scratch_misses: Vec<usize>,
    /// [`LogReader::read_values_with`]'s record positions in the value cache, kept for its
    /// capacity.
    scratch_units: Vec<Option<u32>>,
    /// A running average of the size of the commands read from the disk: cold reads cover
    /// the pages a command of this size would span from where it starts.
    typical_command_bytes: usize,
    /// One-page buffers of earlier cold reads, kept for the next ones (a buffer read into
    /// needs no zeroing: only the bytes a read returned are looked at).
    spare_buffers: Vec<AlignedBuf>,
    /// Reads kept in flight across calls ([`LogReader::start_read`]), made on first use.
    queue: Option<Box<dyn ReadQueue>>,
    /// Each read in flight, by its caller's tag: what was asked and where it is read.
    started: HashMap<u64, Started>,
    /// Reads in flight per segment: those segments' files stay open.
    reading: HashMap<u64, usize>,
    /// Reads that failed as they started (their file could not be had), by tag.
    failed: Vec<(u64, LogError)>,
    /// [`LogReader::finish_reads`]'s finished reads, kept for its capacity.
    finished: Vec<FinishedRead>,
}

/// A read in flight in a [`LogReader`]'s queue.
struct Started {
    address: u64,
    key: Vec<u8>,
    at: Located,
}

impl Drop for LogReader {
    fn drop(&mut self) {
        // Every read in flight finishes before the files it reads are closed.
        self.queue.take();
    }
}

/// Handles a reader keeps open at most (the oldest are closed past it).
const OPEN_FILES_MAX: usize = 256;

impl LogReader {
    pub(super) fn new(
        backend: Arc<dyn Backend>,
        table: Arc<Segments>,
        cache: Arc<Mutex<EntryCache>>,
    ) -> LogReader {
        LogReader {
            backend,
            table,
            files: HashMap::new(),
            removals_seen: 0,
            cache,
            values: None,
            scratch_misses: Vec::new(),
            scratch_units: Vec::new(),
            typical_command_bytes: TYPICAL_COMMAND_BYTES_INITIAL,
            spare_buffers: Vec::new(),
            queue: None,
            started: HashMap::new(),
            reading: HashMap::new(),
            failed: Vec::new(),
            finished: Vec::new(),
        }
    }

    /// The open file of the segment holding `address` and the offset in it.
    fn file_for(&mut self, address: u64) -> Result<(&mut dyn BlockFile, u64), LogError> {
        self.close_removed();
        self.open_for(address)
    }

    /// Closes the files of segments removed since the last look.
    ///
    /// A file with a read in flight stays open until the read is collected (and is closed
    /// at a later look).
    fn close_removed(&mut self) {
        let removals = self.table.removal_count();
        if removals != self.removals_seen {
            let (table, reading) = (&self.table, &self.reading);
            let mut busy = false;
            self.files.retain(|no, _| {
                let live = table.get(*no).is_some();
                busy |= !live && reading.contains_key(no);
                live || reading.contains_key(no)
            });
            if !busy {
                self.removals_seen = removals;
            }
        }
    }

    /// [`LogReader::file_for`] without closing the files of removed segments: every file
    /// it opened stays open until the next [`LogReader::close_removed`] (or until more than
    /// `OPEN_FILES_MAX` are open).
    fn open_for(&mut self, address: u64) -> Result<(&mut dyn BlockFile, u64), LogError> {
        let (no, path, offset) = self
            .table
            .locate(address)
            .ok_or_else(|| LogError::Corrupt {
                offset: address,
                reason: "address outside every segment's entries".into(),
            })?;
        if !self.files.contains_key(&no) {
            if self.files.len() >= OPEN_FILES_MAX {
                let reading = &self.reading;
                self.files.retain(|no, _| reading.contains_key(no));
            }
            let file = self.backend.open(&path, false)?;
            self.files.insert(no, file);
        }
        let file = self.files.get_mut(&no).expect("inserted above");
        Ok((file.as_mut(), offset))
    }

    /// Keeps the values this reader reads from the disk in `values` (shared by readers).
    pub fn with_value_cache(mut self, values: Arc<Mutex<ValueCache>>) -> LogReader {
        self.values = Some(values);
        self
    }

    /// Reads the value for `key` of the SET command at log-file offset `file_offset` (see
    /// [`ValueRead`]).
    pub fn read_value_at(&mut self, address: u64, key: &[u8]) -> Result<ValueRead, LogError> {
        if let Some(found) = self.cache.lock().unwrap().value_at(address, key) {
            return found.map_err(|e| corrupt_at(address, e));
        }
        let (file, offset) = self.file_for(address)?;
        read_value(file, address, offset, key)
    }

    /// Reads the values of the SET commands at several (offset, key) pairs and hands each
    /// to `answer` with its index in `reads`: the cached ones borrowed from the cache that
    /// holds them (no copy; `answer` runs under that cache's lock, so it should be quick),
    /// the rest through [`LogReader::read_values_at`], in any order.
    pub fn read_values_with(
        &mut self,
        reads: &[(u64, &[u8])],
        mut answer: impl FnMut(usize, Result<ValueRead<&[u8]>, LogError>),
    ) {
        let mut misses = std::mem::take(&mut self.scratch_misses);
        self.read_values_cached(reads, &mut misses, &mut answer);
        if !misses.is_empty() {
            let rest: Vec<(u64, &[u8])> = misses.iter().map(|&i| reads[i]).collect();
            for (&i, read) in misses.iter().zip(self.read_values_at(&rest)) {
                match read {
                    Ok(value) => answer(i, Ok(value.as_ref())),
                    Err(e) => answer(i, Err(e)),
                }
            }
        }
        self.scratch_misses = misses;
    }

    /// The part of [`LogReader::read_values_with`] that needs no disk: hands `answer`
    /// each read a cache holds (borrowed from it, under its lock), and leaves the indexes
    /// of the others, in order, in `misses`.
    pub fn read_values_cached(
        &mut self,
        reads: &[(u64, &[u8])],
        misses: &mut Vec<usize>,
        mut answer: impl FnMut(usize, Result<ValueRead<&[u8]>, LogError>),
    ) {
        misses.clear();
        {
            let cache = self.cache.lock().unwrap();
            for (i, &(offset, key)) in reads.iter().enumerate() {
                match cache.value_ref_at(offset, key) {
                    Some(found) => answer(i, found.map_err(|e| corrupt_at(offset, e))),
                    None => misses.push(i),
                }
            }
        }
        if let Some(values) = &self.values
            && !misses.is_empty()
        {
            let mut values = values.lock().unwrap();
            values.get_many_ref(reads, misses, &mut self.scratch_units, |i, found| {
                answer(i, Ok(found))
            });
        }
    }

    /// Starts reading from the disk the value for `key` of the SET at `address` (one no
    /// cache holds: see [`LogReader::read_values_cached`]); [`LogReader::finish_reads`]
    /// hands it over under `tag`, which no other read in flight may carry. The read is
    /// handed to the disk at the next [`LogReader::submit_reads`], and runs while the
    /// caller goes on.
    pub fn start_read(&mut self, address: u64, key: &[u8], tag: u64) {
        self.close_removed();
        let offset = match self.open_for(address) {
            Ok((_, offset)) => offset,
            Err(e) => {
                self.failed.push((tag, e));
                return;
            }
        };
        let no = super::segments::split_address(address).0;
        let len = self.first_read_len(key.len(), offset);
        let buf = self.take_buffer(len);
        let backend = &self.backend;
        let queue = self.queue.get_or_insert_with(|| backend.read_queue());
        let file = self.files.get_mut(&no).expect("opened above");
        queue.start(file.as_mut(), page_start(offset), buf, tag);
        *self.reading.entry(no).or_default() += 1;
        let at = Located {
            no,
            i: 0,
            offset,
            len,
        };
        let key = key.to_vec();
        self.started.insert(tag, Started { address, key, at });
    }

    /// Hands every read started since the last call to the disk.
    pub fn submit_reads(&mut self) {
        if let Some(queue) = &mut self.queue {
            queue.submit();
        }
    }

    /// Reads started and not yet handed over by [`LogReader::finish_reads`].
    pub fn reads_in_flight(&self) -> usize {
        self.started.len() + self.failed.len()
    }

    /// Hands each started read that has finished to `answer`, with its tag; with `wait`,
    /// first waits for one to finish if none has and some are in flight. A command longer
    /// than its first read is read again at once. Returns how many were handed over.
    pub fn finish_reads(
        &mut self,
        wait: bool,
        mut answer: impl FnMut(u64, Result<ValueRead, LogError>),
    ) -> usize {
        let mut handed = 0;
        for (tag, e) in std::mem::take(&mut self.failed) {
            answer(tag, Err(e));
            handed += 1;
        }
        if self.started.is_empty() {
            return handed;
        }
        let mut finished = std::mem::take(&mut self.finished);
        if let Some(queue) = &mut self.queue {
            queue.collect(wait && handed == 0, &mut finished);
        }
        let mut outcomes = Vec::with_capacity(finished.len());
        for (tag, buf, outcome) in finished.drain(..) {
            let Some(started) = self.started.remove(&tag) else {
                continue;
            };
            let no = started.at.no;
            if let Some(count) = self.reading.get_mut(&no) {
                *count -= 1;
                if *count == 0 {
                    self.reading.remove(&no);
                }
            }
            let asked = (started.address, &started.key[..]);
            let result = match self.decode_read(asked, &started.at, &buf, outcome) {
                Decoded::Done(result) => result,
                Decoded::Longer(_) | Decoded::Unclear => self.read_alone(asked, &started.at),
            };
            self.give_back(buf);
            outcomes.push((tag, started, result));
        }
        self.finished = finished;
        if let Some(values) = &self.values {
            let mut values = values.lock().unwrap();
            for (_, started, result) in &outcomes {
                if let Ok(ValueRead::Value(value)) = result {
                    values.insert(started.address, &started.key, value);
                }
            }
        }
        handed += outcomes.len();
        for (tag, _, result) in outcomes {
            answer(tag, result);
        }
        handed
    }

    /// Bytes a first read of a command starting at file offset `offset` covers from its
    /// page: what the key and this reader's typical command size say it spans.
    fn first_read_len(&self, key_len: usize, offset: u64) -> usize {
        let within = offset as usize % PAGE_SIZE;
        let guess = command::encoded_size(key_len, 0).max(self.typical_command_bytes);
        align_up(within + guess, PAGE_SIZE).min(READ_BYTES_MAX)
    }

    /// A buffer of `len` bytes for a read: a spare one if it fits.
    fn take_buffer(&mut self, len: usize) -> AlignedBuf {
        match self.spare_buffers.pop() {
            Some(buf) if buf.len() == len => buf,
            other => {
                self.spare_buffers.extend(other);
                AlignedBuf::new(len)
            }
        }
    }

    /// Keeps a one-page buffer a read is done with for the next.
    fn give_back(&mut self, buf: AlignedBuf) {
        if buf.len() == PAGE_SIZE && self.spare_buffers.len() < SPARE_BUFFERS_MAX {
            self.spare_buffers.push(buf);
        }
    }

    /// Reads the values of the SET commands at several (offset, key) pairs, in order:
    /// cached ones from memory, the rest with one batch of O_DIRECT reads submitted
    /// together.
    pub fn read_values_at(&mut self, reads: &[(u64, &[u8])]) -> Vec<Result<ValueRead, LogError>> {
        let mut results: Vec<Option<Result<ValueRead, LogError>>> = Vec::with_capacity(reads.len());
        {
            let cache = self.cache.lock().unwrap();
            for &(offset, key) in reads {
                results.push(
                    cache
                        .value_at(offset, key)
                        .map(|r| r.map_err(|e| corrupt_at(offset, e))),
                );
            }
        }
        if let Some(values) = &self.values {
            let mut values = values.lock().unwrap();
            for (result, &(offset, key)) in results.iter_mut().zip(reads) {
                if result.is_none() {
                    *result = values.get(offset, key).map(Ok);
                }
            }
        }
        let misses: Vec<usize> = (0..reads.len()).filter(|&i| results[i].is_none()).collect();
        if !misses.is_empty() {
            // Sorted by segment, a bounded number of segment files at a time (the reader
            // keeps at most OPEN_FILES_MAX open), each pass one batch spanning its files.
            let mut by_segment: Vec<(u64, usize)> = misses
                .iter()
                .map(|&i| (super::segments::split_address(reads[i].0).0, i))
                .collect();
            by_segment.sort_unstable();
            let mut rest = by_segment.as_slice();
            while !rest.is_empty() {
                let mut files = 0;
                let mut end = 0;
                while end < rest.len() {
                    if end == 0 || rest[end].0 != rest[end - 1].0 {
                        if files == FILES_PER_BATCH {
                            break;
                        }
                        files += 1;
                    }
                    end += 1;
                }
                let (pass, later) = rest.split_at(end);
                self.read_pass(reads, pass, &mut results);
                rest = later;
            }
            if let Some(values) = &self.values {
                let mut values = values.lock().unwrap();
                for &i in &misses {
                    let (offset, key) = reads[i];
                    if let Some(Ok(ValueRead::Value(value))) = &results[i] {
                        values.insert(offset, key, value);
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.expect("every offset resolved"))
            .collect()
    }
}

/// Segment files one batch of cold reads spans at most: well under `OPEN_FILES_MAX`, so
/// that opening a pass's files never closes one of the same pass.
const FILES_PER_BATCH: usize = OPEN_FILES_MAX / 2;

impl LogReader {
    /// Reads the misses `pass` (sorted by segment, at most `FILES_PER_BATCH` of them) with
    /// one batch of O_DIRECT reads spanning their files, all in flight together. Each read
    /// covers the pages the command would span at this reader's typical command size
    /// (one page for most small values); those that turn out longer are read again, all
    /// together, at the size their lengths give.
    fn read_pass(
        &mut self,
        reads: &[(u64, &[u8])],
        pass: &[(u64, usize)],
        results: &mut [Option<Result<ValueRead, LogError>>],
    ) {
        self.close_removed();
        let wanted: std::collections::HashSet<u64> = pass.iter().map(|&(no, _)| no).collect();
        if self.files.len() + wanted.len() > OPEN_FILES_MAX {
            let reading = &self.reading;
            self.files
                .retain(|no, _| wanted.contains(no) || reading.contains_key(no));
        }
        // Each read's offset in its segment file, or why its file cannot be had. From here
        // on no file is closed (see `open_for`): each one opened is there to read.
        let mut located: Vec<Located> = Vec::with_capacity(pass.len());
        for &(no, i) in pass {
            match self.open_for(reads[i].0) {
                Ok((_, offset)) => {
                    let len = self.first_read_len(reads[i].1.len(), offset);
                    located.push(Located { no, i, offset, len });
                }
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        let mut longer = Vec::new();
        let read = self.read_spanning(&located);
        for (at, (buf, outcome)) in located.iter().zip(read) {
            match self.decode_read(reads[at.i], at, &buf, outcome) {
                Decoded::Done(result) => results[at.i] = Some(result),
                Decoded::Longer(len) => longer.push(Located { len, ..*at }),
                Decoded::Unclear => results[at.i] = Some(self.read_alone(reads[at.i], at)),
            }
            self.give_back(buf);
        }
        if longer.is_empty() {
            return;
        }
        let read = self.read_spanning(&longer);
        for (at, (buf, outcome)) in longer.iter().zip(read) {
            results[at.i] = Some(match self.decode_read(reads[at.i], at, &buf, outcome) {
                Decoded::Done(result) => result,
                // A key longer than the first guess: its value's length was not read yet.
                Decoded::Longer(_) | Decoded::Unclear => self.read_alone(reads[at.i], at),
            });
        }
    }

    /// Reads every one of `located` (sorted by segment, each one's file open) with one
    /// batch spanning their files; returns each read's buffer and outcome, in order.
    fn read_spanning(&mut self, located: &[Located]) -> Vec<(AlignedBuf, io::Result<usize>)> {
        let mut buffers: Vec<(u64, AlignedBuf)> = located
            .iter()
            .map(|at| (page_start(at.offset), self.take_buffer(at.len)))
            .collect();
        let outcomes = {
            let mut files: HashMap<u64, &mut Box<dyn BlockFile>> = self
                .files
                .iter_mut()
                .filter(|(no, _)| located.iter().any(|at| at.no == **no))
                .map(|(&no, file)| (no, file))
                .collect();
            let mut groups = Vec::new();
            let mut buffers_left = buffers.as_mut_slice();
            for run in located.chunk_by(|a, b| a.no == b.no) {
                let (these, others) = buffers_left.split_at_mut(run.len());
                buffers_left = others;
                let file = files
                    .remove(&run[0].no)
                    .expect("opened by the caller, one run per segment");
                groups.push(FileReads {
                    file: file.as_mut(),
                    reads: these,
                });
            }
            self.backend.read_many(&mut groups)
        };
        buffers
            .into_iter()
            .map(|(_, buf)| buf)
            .zip(outcomes)
            .collect()
    }

    /// What the read of `at` into `buf` found.
    fn decode_read(
        &mut self,
        (address, key): (u64, &[u8]),
        at: &Located,
        buf: &[u8],
        outcome: io::Result<usize>,
    ) -> Decoded {
        let n = match outcome {
            Ok(n) => n,
            Err(e) => return Decoded::Done(Err(LogError::Io(e))),
        };
        let bytes = &buf[..n.min(buf.len())];
        let within = (at.offset - page_start(at.offset)) as usize;
        match command::decode_at(bytes, within) {
            Ok(cmd) => {
                let size = command::encoded_size(cmd.key.len(), cmd.value.len());
                self.typical_command_bytes = (self.typical_command_bytes * 7 + size) / 8;
                Decoded::Done(value_for_key(&cmd, key).map_err(|e| corrupt_at(address, e)))
            }
            Err(_) if n < at.len => Decoded::Unclear,
            Err(_) => match peek_command_size(bytes, within) {
                Some(needed) if align_up(within + needed, PAGE_SIZE) > at.len => {
                    Decoded::Longer(align_up(within + needed, PAGE_SIZE))
                }
                _ => Decoded::Unclear,
            },
        }
    }

    /// [`read_value`] for `at`: page by page as the command's lengths say, reporting what
    /// is wrong with it if anything is.
    fn read_alone(
        &mut self,
        (address, key): (u64, &[u8]),
        at: &Located,
    ) -> Result<ValueRead, LogError> {
        match self.files.get_mut(&at.no) {
            Some(file) => read_value(file.as_mut(), address, at.offset, key),
            None => Err(LogError::Corrupt {
                offset: address,
                reason: "segment file closed during the read".into(),
            }),
        }
    }
}

/// One cold read of a batch: its segment, its index in the batch, its offset in the
/// segment file, and the bytes to read from that offset's page on.
#[derive(Debug, Clone, Copy)]
struct Located {
    no: u64,
    i: usize,
    offset: u64,
    len: usize,
}

/// What a batched read found.
enum Decoded {
    /// The value (or why there is none).
    Done(Result<ValueRead, LogError>),
    /// The command runs on past what was read: this many bytes from its page hold it.
    Longer(usize),
    /// Nothing conclusive (a short read, or lengths that make no sense): read it alone,
    /// which reports what is wrong.
    Unclear,
}

/// The start of the page holding file offset `offset`.
fn page_start(offset: u64) -> u64 {
    offset / PAGE_SIZE as u64 * PAGE_SIZE as u64
}

/// One-page buffers a reader keeps for its next cold reads, at most.
const SPARE_BUFFERS_MAX: usize = 512;

/// The most a first batched read of one command covers; longer ones are read again.
const READ_BYTES_MAX: usize = 16 * PAGE_SIZE;

/// A reader's typical command size before it has read any: reads cover the page a command
/// starts in and the next, as for a value of up to about a page.
const TYPICAL_COMMAND_BYTES_INITIAL: usize = PAGE_SIZE;

fn corrupt_at(offset: u64, e: DecodeError) -> LogError {
    LogError::Corrupt {
        offset,
        reason: e.to_string(),
    }
}

/// What the command at an offset the map handed out holds for the key looked up.
///
/// The map tells keys apart by their hash alone (the 96 bits a page keeps), but the SET
/// command it points at carries the whole key: a read compares it, so a different key
/// with the same hash is a miss rather than that key's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueRead<V = Vec<u8>> {
    /// The command is a SET of the key looked up: its value (owned, or borrowed from the
    /// cache that holds it).
    Value(V),
    /// The command is a SET of another key with the same hash (a hash collision): the key
    /// looked up has no value.
    OtherKey,
}

/// The value `cmd` holds for `key`. The map points only at SET commands, so any other op
/// is corruption.
pub(super) fn value_for_key(cmd: &CommandRef<'_>, key: &[u8]) -> Result<ValueRead, DecodeError> {
    value_ref_for_key(cmd, key).map(ValueRead::into_owned)
}

/// [`value_for_key`], borrowing the value from the command's bytes.
pub(super) fn value_ref_for_key<'a>(
    cmd: &CommandRef<'a>,
    key: &[u8],
) -> Result<ValueRead<&'a [u8]>, DecodeError> {
    if cmd.op != command::CommandOp::Set {
        return Err(DecodeError {
            offset: cmd.offset,
            reason: "the map points at a command that is not a SET",
        });
    }
    Ok(if cmd.key == key {
        ValueRead::Value(cmd.value)
    } else {
        ValueRead::OtherKey
    })
}

impl ValueRead<&[u8]> {
    /// The same outcome with the value copied out.
    pub fn into_owned(self) -> ValueRead {
        match self {
            ValueRead::Value(v) => ValueRead::Value(v.to_vec()),
            ValueRead::OtherKey => ValueRead::OtherKey,
        }
    }
}

impl ValueRead {
    /// The same outcome borrowing the value.
    pub fn as_ref(&self) -> ValueRead<&[u8]> {
        match self {
            ValueRead::Value(v) => ValueRead::Value(v),
            ValueRead::OtherKey => ValueRead::OtherKey,
        }
    }
}

/// The value for `key` of the command at byte `file_offset` of `file` (log address
/// `address`), read with O_DIRECT, one page first and then as many more as the command's
/// lengths say it spans.
pub(super) fn read_value(
    file: &mut dyn BlockFile,
    address: u64,
    file_offset: u64,
    key: &[u8],
) -> Result<ValueRead, LogError> {
    let corrupt = |e: DecodeError| LogError::Corrupt {
        offset: address,
        reason: e.to_string(),
    };
    let page_start = file_offset / PAGE_SIZE as u64 * PAGE_SIZE as u64;
    let within = (file_offset - page_start) as usize;
    let mut len = align_up(within + command::encoded_size(0, 0), PAGE_SIZE);
    loop {
        let mut buf = AlignedBuf::new(len);
        read_exact_at(file, &mut buf, page_start)?;
        match command::decode_at(&buf, within) {
            Ok(cmd) => return value_for_key(&cmd, key).map_err(corrupt),
            Err(e) => {
                // A truncation error means the command continues past what was read:
                // read again with the size its lengths give (at most twice: once for a
                // long key, once for the value).
                let needed = peek_command_size(&buf, within).ok_or_else(|| corrupt(e.clone()))?;
                let want = align_up(within + needed, PAGE_SIZE);
                if want <= len {
                    return Err(corrupt(e));
                }
                len = want;
            }
        }
    }
}

/// The size of the command at `at`, from its key and value lengths, if enough is present
/// to tell.
fn peek_command_size(buf: &[u8], at: usize) -> Option<usize> {
    let rest = buf.get(at..)?;
    let key_len = u16::from_le_bytes([*rest.get(2)?, *rest.get(3)?]) as usize;
    if key_len > command::KEY_SIZE_MAX {
        return None;
    }
    let value_len_at = command::COMMAND_HEADER_SIZE + align_up(key_len + 1, 8);
    match rest.get(value_len_at..value_len_at + 8) {
        Some(b) => {
            let value_len = u64::from_le_bytes(b.try_into().unwrap());
            (value_len <= command::VALUE_SIZE_MAX as u64)
                .then(|| command::encoded_size(key_len, value_len as usize))
        }
        // The key runs past what was read: read enough for the longest key first.
        None => Some(value_len_at + 8),
    }
}
