//! Snapshots: one node's applied state — the map and the values it reads from the log —
//! as a stream of checksummed chunks, taken at one applied index while writes go on, and
//! installed by another node in one step.
//!
//! A follower the leader can no longer repair from its log (the entries it needs were
//! deleted) receives one over the peer transport; `ocean-liner snapshot save` writes the
//! same stream to a file and `snapshot restore` installs it into an empty data directory.
//! Its size follows the live data, not the history: the map's pages, then each value the
//! map reads from the log, once.
//!
//! # Taking one ([`SnapshotSource`])
//!
//! Between two applies the engine copies the map's pages (an image at the applied index,
//! [`crate::storage::store::image`]), encodes the sessions, and pins the segment table, so
//! no segment is released while the snapshot is read (the cleaner may still copy values
//! elsewhere; the old copies stay). Whatever thread sends the snapshot then collects from
//! the copied pages the log address of every value that is not inline, sorts them, and
//! reads the values segment by segment in address order, each entry verified by its
//! checksum as recovery does.
//!
//! # Installing one ([`SnapshotSink`], [`crate::storage::engine::Engine::install_snapshot`])
//!
//! The receiver checks every chunk (magic, checksum, snapshot id, sequence, kind order,
//! every length) and every page (as a page loaded from disk), builds a map from the pages,
//! writes the values into new values segments of its own (durably, not yet sealed, so
//! nothing deletes them) and points each key at its copy. A value that names no key of
//! the map, a value missing, one too many: the snapshot is refused and its segments are
//! removed. Once complete, the engine swaps the map in, drops every segment of its old
//! state, starts its Raft log after the snapshot's index, and commits all of it with one
//! checkpoint (see the engine for what a crash at any point leaves).
//!
//! # Chunk format (little-endian)
//!
//! ```text
//!   0  8  magic         b"OLSNAP\0\x01"
//!   8  8  snapshot id
//!  16  8  sequence      0, 1, 2, … in the order sent
//!  24  1  kind          1 header, 2 sessions, 3 map metadata, 4 pages, 5 values, 6 end
//!  25  3  zeros
//!  28  4  body length   ≤ CHUNK_BODY_MAX
//!  32  n  body
//! 32+n 16 xxh3-128 of bytes 0..32+n
//!
//! header    u64 index, u64 term, u64 sessions bytes, u64 pages, u64 values
//! sessions  the next bytes of the engine's sessions record (the sessions, then the
//!           cluster's membership)
//! map meta  the map's metadata page (4096 bytes; index and term as in the header)
//! pages     u64 first page number, then whole pages
//! values    records: u64 the value's address on the sender, u32 command length, u32 0,
//!           the SET command as the log holds it
//! end       u64 chunks before this one, u64 values
//! ```
//!
//! Chunks come in that order: one header, the sessions, the metadata page, the pages in
//! order, the values, one end.

use crate::ids::{LogIndex, Term};
use crate::storage::command::{self, CommandOp};
use crate::storage::io::{Backend, PAGE_SIZE, remove_durable};
use crate::storage::log::segments::{SegmentPin, split_address};
use crate::storage::log::{Entry, EntryCache, EntryScanner, LogError, Segments, ValuesWriter};
use crate::storage::store::Map;
use crate::storage::store::image::{MapImage, MapImageBuilder};
use std::sync::{Arc, Mutex};
use xxhash_rust::xxh3::xxh3_128;

pub const CHUNK_MAGIC: [u8; 8] = *b"OLSNAP\0\x01";
/// Bytes before a chunk's body.
pub const CHUNK_HEADER_SIZE: usize = 32;
/// Bytes of the checksum after the body.
pub const CHUNK_HASH_SIZE: usize = 16;
/// Largest body accepted (a value record holds up to a whole command).
pub const CHUNK_BODY_MAX: usize = 20 << 20;
// One value record of the longest value fits a chunk.
const _: () = assert!(
    VALUE_RECORD_HEADER + command::encoded_size(command::KEY_SIZE_MAX, command::VALUE_SIZE_MAX)
        <= CHUNK_BODY_MAX
);
/// Largest chunk, header and checksum included.
pub const CHUNK_SIZE_MAX: usize = CHUNK_HEADER_SIZE + CHUNK_BODY_MAX + CHUNK_HASH_SIZE;
/// Body size a sender aims for.
const CHUNK_BODY_TARGET: usize = 1 << 20;
/// Values written by the receiver per durable write.
const VALUES_WRITE_BYTES: usize = 1 << 20;
/// Bytes before a value record's command.
const VALUE_RECORD_HEADER: usize = 16;
const HEADER_BODY_SIZE: usize = 40;
const END_BODY_SIZE: usize = 16;
/// What a Raft snapshot message carries: this magic and the snapshot id.
const DESCRIPTOR_MAGIC: [u8; 8] = *b"OLSNAPD1";

/// What a chunk holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum ChunkKind {
    Header = 1,
    Sessions = 2,
    MapMeta = 3,
    Pages = 4,
    Values = 5,
    End = 6,
}

impl ChunkKind {
    fn from_u8(b: u8) -> Option<ChunkKind> {
        Some(match b {
            1 => ChunkKind::Header,
            2 => ChunkKind::Sessions,
            3 => ChunkKind::MapMeta,
            4 => ChunkKind::Pages,
            5 => ChunkKind::Values,
            6 => ChunkKind::End,
            _ => return None,
        })
    }
}

/// A snapshot that could not be taken, sent or installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotError(pub String);

impl std::fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "snapshot: {}", self.0)
    }
}

impl std::error::Error for SnapshotError {}

impl From<LogError> for SnapshotError {
    fn from(e: LogError) -> SnapshotError {
        SnapshotError(e.to_string())
    }
}

impl From<std::io::Error> for SnapshotError {
    fn from(e: std::io::Error) -> SnapshotError {
        SnapshotError(e.to_string())
    }
}

fn fail<T>(msg: impl Into<String>) -> Result<T, SnapshotError> {
    Err(SnapshotError(msg.into()))
}

/// One decoded chunk, borrowing its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk<'a> {
    pub id: u64,
    pub seq: u64,
    pub kind: ChunkKind,
    pub body: &'a [u8],
}

/// Encodes one chunk.
pub fn encode_chunk(id: u64, seq: u64, kind: ChunkKind, body: &[u8]) -> Vec<u8> {
    assert!(body.len() <= CHUNK_BODY_MAX, "chunk body over the limit");
    let mut out = Vec::with_capacity(CHUNK_HEADER_SIZE + body.len() + CHUNK_HASH_SIZE);
    out.extend_from_slice(&CHUNK_MAGIC);
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&[kind as u8, 0, 0, 0]);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    let hash = xxh3_128(&out);
    out.extend_from_slice(&hash.to_le_bytes());
    out
}

/// Decodes and verifies one chunk (the whole of `bytes`). Never panics.
pub fn decode_chunk(bytes: &[u8]) -> Result<Chunk<'_>, SnapshotError> {
    let u64_at = |at| crate::le::u64_at(bytes, at);
    let Some(head) = bytes.get(..CHUNK_HEADER_SIZE) else {
        return fail(format!(
            "chunk of {} bytes is shorter than a header",
            bytes.len()
        ));
    };
    if head[..8] != CHUNK_MAGIC {
        return fail("chunk magic is wrong");
    }
    let (Some(id), Some(seq)) = (u64_at(8), u64_at(16)) else {
        return fail("short chunk header");
    };
    let Some(kind) = ChunkKind::from_u8(head[24]) else {
        return fail(format!("unknown chunk kind {}", head[24]));
    };
    if head[25..28] != [0; 3] {
        return fail("chunk reserved bytes set");
    }
    let len = u32::from_le_bytes([head[28], head[29], head[30], head[31]]) as usize;
    if len > CHUNK_BODY_MAX {
        return fail(format!("chunk body of {len} bytes is over the limit"));
    }
    if bytes.len() != CHUNK_HEADER_SIZE + len + CHUNK_HASH_SIZE {
        return fail(format!(
            "chunk of {} bytes for a body of {len}",
            bytes.len()
        ));
    }
    let (covered, hash) = bytes.split_at(CHUNK_HEADER_SIZE + len);
    if hash != xxh3_128(covered).to_le_bytes() {
        return fail(format!("chunk {seq} failed its checksum"));
    }
    Ok(Chunk {
        id,
        seq,
        kind,
        body: &covered[CHUNK_HEADER_SIZE..],
    })
}

/// The data of a Raft snapshot message: which streamed snapshot it stands for.
pub fn encode_descriptor(id: u64) -> Vec<u8> {
    let mut out = DESCRIPTOR_MAGIC.to_vec();
    out.extend_from_slice(&id.to_le_bytes());
    out
}

/// The snapshot id in a Raft snapshot message's data.
pub fn decode_descriptor(data: &[u8]) -> Option<u64> {
    (data.len() == 16 && data[..8] == DESCRIPTOR_MAGIC)
        .then(|| crate::le::u64_at(data, 8))
        .flatten()
}

/// What the header chunk says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotHeader {
    pub index: LogIndex,
    pub term: Term,
    pub sessions_bytes: u64,
    pub pages: u64,
    pub values: u64,
}

impl SnapshotHeader {
    fn encode(&self) -> Vec<u8> {
        [
            self.index.get(),
            self.term.get(),
            self.sessions_bytes,
            self.pages,
            self.values,
        ]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect()
    }

    /// Decodes a header chunk's body.
    pub fn decode(body: &[u8]) -> Result<SnapshotHeader, SnapshotError> {
        if body.len() != HEADER_BODY_SIZE {
            return fail(format!("header body of {} bytes", body.len()));
        }
        let f = |i: usize| crate::le::u64_at(body, i * 8).unwrap_or(0);
        Ok(SnapshotHeader {
            index: LogIndex(f(0)),
            term: Term(f(1)),
            sessions_bytes: f(2),
            pages: f(3),
            values: f(4),
        })
    }
}

/// Where the sender is in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Header,
    Sessions,
    Pages,
    Values,
    Done,
}

/// A snapshot taken from an engine, read out chunk by chunk (on any thread).
pub struct SnapshotSource {
    id: u64,
    header: SnapshotHeader,
    sessions: Vec<u8>,
    image: MapImage,
    /// Log addresses of the values to send, ascending (collected from the image by the
    /// thread that reads the source, on its first chunk, not by the one that took it).
    addresses: Option<Vec<u64>>,
    backend: Arc<dyn Backend>,
    table: Arc<Segments>,
    _pin: SegmentPin,
    phase: Phase,
    seq: u64,
    sessions_sent: usize,
    pages_sent: usize,
    values_sent: usize,
    scanner: Option<(u64, EntryScanner)>,
    entry: Option<Entry>,
    bytes: u64,
}

impl SnapshotSource {
    /// A snapshot of `image` and `sessions` at `index` (of `term`), reading values from
    /// `table`'s segments, which stay pinned until it is dropped.
    pub(crate) fn new(
        id: u64,
        index: LogIndex,
        term: Term,
        sessions: Vec<u8>,
        image: MapImage,
        backend: Arc<dyn Backend>,
        table: Arc<Segments>,
    ) -> SnapshotSource {
        let pin = table.pin();
        let header = SnapshotHeader {
            index,
            term,
            sessions_bytes: sessions.len() as u64,
            pages: image.page_count() as u64,
            values: 0,
        };
        SnapshotSource {
            id,
            header,
            sessions,
            image,
            addresses: None,
            backend,
            table,
            _pin: pin,
            phase: Phase::Header,
            seq: 0,
            sessions_sent: 0,
            pages_sent: 0,
            values_sent: 0,
            scanner: None,
            entry: None,
            bytes: 0,
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// The header (its value count is known once the first chunk was taken).
    pub fn header(&self) -> SnapshotHeader {
        self.header
    }

    /// The sorted addresses of the values to send, collected on first use.
    fn addresses(&mut self) -> &[u64] {
        if self.addresses.is_none() {
            let mut addresses = self.image.log_addresses();
            addresses.sort_unstable();
            self.header.values = addresses.len() as u64;
            self.addresses = Some(addresses);
        }
        self.addresses.as_deref().unwrap_or_default()
    }

    /// Bytes of the chunks handed out so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The next chunk, or `None` after the end chunk.
    pub fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, SnapshotError> {
        let value_count = self.addresses().len();
        let (kind, body) = match self.phase {
            Phase::Header => {
                self.phase = Phase::Sessions;
                (ChunkKind::Header, self.header.encode())
            }
            Phase::Sessions if self.sessions_sent < self.sessions.len() => {
                let end = (self.sessions_sent + CHUNK_BODY_TARGET).min(self.sessions.len());
                let body = self.sessions[self.sessions_sent..end].to_vec();
                self.sessions_sent = end;
                (ChunkKind::Sessions, body)
            }
            Phase::Sessions => {
                self.phase = Phase::Pages;
                (ChunkKind::MapMeta, self.image.meta_page.to_vec())
            }
            Phase::Pages if self.pages_sent < self.image.page_count() => {
                let count =
                    (self.image.page_count() - self.pages_sent).min(CHUNK_BODY_TARGET / PAGE_SIZE);
                let mut body = Vec::with_capacity(8 + count * PAGE_SIZE);
                body.extend_from_slice(&(self.pages_sent as u64).to_le_bytes());
                let at = self.pages_sent * PAGE_SIZE;
                body.extend_from_slice(&self.image.pages[at..at + count * PAGE_SIZE]);
                self.pages_sent += count;
                (ChunkKind::Pages, body)
            }
            Phase::Pages | Phase::Values if self.values_sent < value_count => {
                self.phase = Phase::Values;
                (ChunkKind::Values, self.values_body()?)
            }
            Phase::Pages | Phase::Values => {
                self.phase = Phase::Done;
                let mut body = self.seq.to_le_bytes().to_vec();
                body.extend_from_slice(&self.header.values.to_le_bytes());
                (ChunkKind::End, body)
            }
            Phase::Done => return Ok(None),
        };
        let chunk = encode_chunk(self.id, self.seq, kind, &body);
        self.seq += 1;
        self.bytes += chunk.len() as u64;
        Ok(Some(chunk))
    }

    /// The next value records, about [`CHUNK_BODY_TARGET`] of them.
    fn values_body(&mut self) -> Result<Vec<u8>, SnapshotError> {
        let mut body = Vec::with_capacity(CHUNK_BODY_TARGET + 4096);
        while self.values_sent < self.header.values as usize && body.len() < CHUNK_BODY_TARGET {
            let at = self.values_sent;
            let address = self.addresses()[at];
            let entry = self.entry_holding(address)?;
            let cmd = entry
                .command_at(address)
                .map_err(|e| SnapshotError(format!("the value at log address {address}: {e}")))?;
            if cmd.op != CommandOp::Set {
                return fail(format!(
                    "the map points at a {:?} at log address {address}",
                    cmd.op
                ));
            }
            let bytes = entry
                .commands()
                .get(cmd.offset..cmd.offset + cmd.size)
                .ok_or_else(|| {
                    SnapshotError(format!("command at {address} runs past its entry"))
                })?;
            if body.len() + VALUE_RECORD_HEADER + bytes.len() > CHUNK_BODY_MAX {
                break;
            }
            body.extend_from_slice(&address.to_le_bytes());
            body.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            body.extend_from_slice(&0u32.to_le_bytes());
            body.extend_from_slice(bytes);
            self.values_sent += 1;
        }
        Ok(body)
    }

    /// The entry whose commands region holds `address`, scanning forward through its
    /// segment (addresses come in ascending order).
    fn entry_holding(&mut self, address: u64) -> Result<&Entry, SnapshotError> {
        let segment_no = split_address(address).0;
        if self
            .scanner
            .as_ref()
            .is_none_or(|(no, _)| *no != segment_no)
        {
            let scanner = EntryScanner::open(self.backend.as_ref(), &self.table, segment_no)?;
            self.scanner = Some((segment_no, scanner));
            self.entry = None;
        }
        loop {
            if let Some(e) = &self.entry {
                let start = e.command_file_offset(0);
                let end = start + e.commands().len() as u64;
                if address < start {
                    return fail(format!("log address {address} is not inside an entry"));
                }
                if address < end {
                    break;
                }
            }
            let (_, scanner) = self.scanner.as_mut().expect("opened above");
            match scanner.next_entry()? {
                Some(e) => self.entry = Some(e),
                None => {
                    return fail(format!(
                        "log address {address} lies past the entries of segment {segment_no}"
                    ));
                }
            }
        }
        Ok(self.entry.as_ref().expect("found above"))
    }
}

/// What a receiver needs of the engine it will install into: handles that stay valid
/// across installs, usable from another thread.
#[derive(Clone)]
pub struct SnapshotTarget {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) table: Arc<Segments>,
    pub(crate) cache: Arc<Mutex<EntryCache>>,
    pub(crate) segment_bytes: u64,
}

/// A snapshot received whole and checked, with its values durable in segments of the
/// receiver's own, waiting to be installed ([`crate::storage::engine::Engine::install_snapshot`]).
/// Dropped uninstalled, it removes those segments.
pub struct StagedSnapshot {
    pub id: u64,
    pub header: SnapshotHeader,
    pub(crate) sessions: Vec<u8>,
    pub(crate) map: Option<Map>,
    pub(crate) segments: Vec<u64>,
    target: SnapshotTarget,
    /// Bytes of chunks received.
    pub bytes: u64,
}

impl StagedSnapshot {
    /// The parts an install takes; the segments are then the engine's.
    pub(crate) fn take(mut self) -> (Map, Vec<u8>, Vec<u64>) {
        let map = self.map.take().expect("a staged snapshot holds its map");
        (
            map,
            std::mem::take(&mut self.sessions),
            std::mem::take(&mut self.segments),
        )
    }
}

impl std::fmt::Debug for SnapshotTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SnapshotTarget({})", self.table.dir().display())
    }
}

impl std::fmt::Debug for StagedSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "StagedSnapshot({:#x} at {}, {} bytes)",
            self.id, self.header.index, self.bytes
        )
    }
}

impl Drop for StagedSnapshot {
    fn drop(&mut self) {
        discard_segments(&self.target, &mut self.segments);
    }
}

fn discard_segments(target: &SnapshotTarget, segments: &mut Vec<u64>) {
    for no in segments.drain(..) {
        if let Some(row) = target.table.remove(no) {
            // A file left behind by a failure here is found on the next open, holds no
            // value the map reads, and is deleted then.
            let _ = remove_durable(target.backend.as_ref(), &row.path);
        }
    }
}

/// Receives a snapshot chunk by chunk (see the module documentation for the checks).
pub struct SnapshotSink {
    target: SnapshotTarget,
    id: u64,
    next_seq: u64,
    header: Option<SnapshotHeader>,
    sessions: Vec<u8>,
    builder: Option<MapImageBuilder>,
    map: Option<Map>,
    /// Values the map reads from the log, counted once its pages are in.
    values_in_map: u64,
    writer: Option<ValuesWriter>,
    segments: Vec<u64>,
    commands: Vec<u8>,
    /// (key hash, address on the sender, offset in `commands`) of each value gathered.
    moves: Vec<(u128, u64, usize)>,
    values: u64,
    ended: bool,
    bytes: u64,
}

impl SnapshotSink {
    pub fn new(target: SnapshotTarget) -> SnapshotSink {
        SnapshotSink {
            target,
            id: 0,
            next_seq: 0,
            header: None,
            sessions: Vec::new(),
            builder: None,
            map: None,
            values_in_map: 0,
            writer: None,
            segments: Vec::new(),
            commands: Vec::new(),
            moves: Vec::new(),
            values: 0,
            ended: false,
            bytes: 0,
        }
    }

    /// The snapshot's id (0 before its first chunk).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Takes the next chunk. Any error refuses the whole snapshot.
    pub fn accept(&mut self, bytes: &[u8]) -> Result<(), SnapshotError> {
        let chunk = decode_chunk(bytes)?;
        if self.ended {
            return fail("a chunk after the end");
        }
        if chunk.seq != self.next_seq {
            return fail(format!(
                "chunk {} where {} was expected",
                chunk.seq, self.next_seq
            ));
        }
        if self.next_seq == 0 {
            self.id = chunk.id;
        } else if chunk.id != self.id {
            return fail(format!(
                "a chunk of snapshot {:#x} inside snapshot {:#x}",
                chunk.id, self.id
            ));
        }
        self.next_seq += 1;
        self.bytes += bytes.len() as u64;
        let expected = self.expected_kinds();
        if !expected.contains(&chunk.kind) {
            return fail(format!(
                "a {:?} chunk where one of {expected:?} was expected",
                chunk.kind
            ));
        }
        match chunk.kind {
            ChunkKind::Header => self.header = Some(SnapshotHeader::decode(chunk.body)?),
            ChunkKind::Sessions => self.sessions.extend_from_slice(chunk.body),
            ChunkKind::MapMeta => self.map_meta(chunk.body)?,
            ChunkKind::Pages => self.pages(chunk.body)?,
            ChunkKind::Values => self.values(chunk.body)?,
            ChunkKind::End => self.end(chunk.seq, chunk.body)?,
        }
        Ok(())
    }

    /// The kinds the next chunk may have.
    fn expected_kinds(&self) -> Vec<ChunkKind> {
        let Some(header) = self.header else {
            return vec![ChunkKind::Header];
        };
        if (self.sessions.len() as u64) < header.sessions_bytes {
            return vec![ChunkKind::Sessions];
        }
        if self.builder.is_none() && self.map.is_none() {
            return vec![ChunkKind::MapMeta];
        }
        if self.map.is_none() {
            return vec![ChunkKind::Pages];
        }
        if self.values < header.values {
            return vec![ChunkKind::Values];
        }
        vec![ChunkKind::End]
    }

    fn map_meta(&mut self, body: &[u8]) -> Result<(), SnapshotError> {
        let header = self.header.expect("checked by the kind order");
        if (self.sessions.len() as u64) != header.sessions_bytes {
            return fail("more sessions bytes than the header names");
        }
        let builder = MapImageBuilder::new(body)?;
        let meta = builder.meta();
        if meta.page_count != header.pages
            || meta.last_committed_index != header.index
            || meta.last_committed_term != header.term
        {
            return fail("the map metadata disagrees with the header");
        }
        self.builder = Some(builder);
        Ok(())
    }

    fn pages(&mut self, body: &[u8]) -> Result<(), SnapshotError> {
        let builder = self.builder.as_mut().expect("checked by the kind order");
        let first =
            crate::le::u64_at(body, 0).ok_or_else(|| SnapshotError("short pages chunk".into()))?;
        let received = builder.meta().page_count - builder.pages_missing() as u64;
        if first != received {
            return fail(format!("pages from {first} where {received} was expected"));
        }
        builder.push_pages(&body[8..])?;
        if builder.pages_missing() == 0 {
            let map = self.builder.take().expect("present above").finish()?;
            let mut values = 0u64;
            map.for_each_log_address(|_| values += 1);
            if values != self.header.map_or(0, |h| h.values) {
                return fail(format!(
                    "the pages read {values} values from the log, the header names {}",
                    self.header.map_or(0, |h| h.values)
                ));
            }
            self.values_in_map = values;
            self.map = Some(map);
        }
        Ok(())
    }

    fn values(&mut self, mut body: &[u8]) -> Result<(), SnapshotError> {
        if body.is_empty() {
            return fail("an empty values chunk");
        }
        while !body.is_empty() {
            let (Some(address), Some(len)) = (
                crate::le::u64_at(body, 0),
                crate::le::array::<4>(body, 8).map(u32::from_le_bytes),
            ) else {
                return fail("a value record cut short");
            };
            let len = len as usize;
            let Some(cmd_bytes) = body.get(VALUE_RECORD_HEADER..VALUE_RECORD_HEADER + len) else {
                return fail("a value record runs past its chunk");
            };
            let cmd = command::decode_at(cmd_bytes, 0)
                .map_err(|e| SnapshotError(format!("value record: {e}")))?;
            if cmd.op != CommandOp::Set || cmd.size != len {
                return fail("a value record is not one SET command");
            }
            if self.values >= self.values_in_map {
                return fail("more values than the map reads");
            }
            let map = self.map.as_ref().expect("checked by the kind order");
            let hash = map.key_hash(cmd.key);
            if self.commands.len() + len > VALUES_WRITE_BYTES && !self.moves.is_empty() {
                self.flush()?;
            }
            self.moves.push((hash, address, self.commands.len()));
            self.commands.extend_from_slice(cmd_bytes);
            self.values += 1;
            body = &body[VALUE_RECORD_HEADER + len..];
        }
        Ok(())
    }

    /// Writes the gathered values durably and points their keys at the copies.
    fn flush(&mut self) -> Result<(), SnapshotError> {
        if self.moves.is_empty() {
            return Ok(());
        }
        if self
            .writer
            .as_ref()
            .is_none_or(|w| !w.has_room(self.commands.len()))
        {
            // A full writer is dropped unsealed: nothing may delete its segment before
            // the install.
            let writer = ValuesWriter::create(
                self.target.backend.as_ref(),
                &self.target.table,
                self.target.segment_bytes,
                &self.target.cache,
            )?;
            self.segments.push(writer.segment_no());
            self.writer = Some(writer);
        }
        let writer = self.writer.as_mut().expect("created above");
        let base = writer.append(self.moves.len() as u64, &self.commands)?;
        let map = self.map.as_ref().expect("values come after the map");
        for &(hash, from, at) in &self.moves {
            if !map.relocate(hash, from, base + at as u64) {
                return fail(format!(
                    "the value sent for log address {from} is for no key the map reads there"
                ));
            }
        }
        self.commands.clear();
        self.moves.clear();
        Ok(())
    }

    fn end(&mut self, seq: u64, body: &[u8]) -> Result<(), SnapshotError> {
        let (Some(before), Some(values)) = (crate::le::u64_at(body, 0), crate::le::u64_at(body, 8))
        else {
            return fail("short end chunk");
        };
        if body.len() != END_BODY_SIZE || before != seq || values != self.values {
            return fail("the end chunk disagrees with what arrived");
        }
        self.flush()?;
        self.ended = true;
        Ok(())
    }

    /// The staged snapshot, once every chunk arrived.
    pub fn finish(mut self) -> Result<StagedSnapshot, SnapshotError> {
        if !self.ended {
            return fail("the snapshot is incomplete");
        }
        let (Some(header), Some(map)) = (self.header, self.map.take()) else {
            return fail("the snapshot is incomplete");
        };
        Ok(StagedSnapshot {
            id: self.id,
            header,
            sessions: std::mem::take(&mut self.sessions),
            map: Some(map),
            segments: std::mem::take(&mut self.segments),
            target: self.target.clone(),
            bytes: self.bytes,
        })
    }
}

impl Drop for SnapshotSink {
    fn drop(&mut self) {
        self.writer = None;
        discard_segments(&self.target, &mut self.segments);
    }
}
