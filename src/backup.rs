//! Backups: `ocean-liner snapshot save` streams a snapshot of a live node into a file,
//! `ocean-liner snapshot restore` installs one into an empty data directory.
//!
//! A snapshot (see [`crate::storage::snapshot`]) is the node's applied state at one index
//! — the map's pages, the sessions, every live value — taken between two applies while
//! writes go on; its chunks carry their own checksums. A node serves it over TCP on its
//! client port (the same number as the UDP port):
//!
//! ```text
//! request    8 B magic b"OLBACKUP", u32 version (1)
//! response   frames: u32 length, then a snapshot chunk of that length; length 0 ends
//!            the snapshot; length 0xFFFF_FFFF is an error: u32 length, UTF-8 text
//! file       8 B magic b"OLSNAPF1", then the response's frames through the final 0
//! ```
//!
//! `save` checks every chunk (checksum, snapshot id, order) as it arrives, writes to
//! `FILE.tmp`, syncs, and renames it to `FILE` only once the end chunk arrived: a file of
//! that name is always a whole snapshot. `restore` refuses a directory that holds data,
//! installs the snapshot through the same code a follower uses, and writes a Raft state
//! whose term is the snapshot's, so a node — or every node of a new cluster, each restored
//! from the same file — starts from there.

use crate::consensus::hard_state::HardStateFile;
use crate::storage::engine::{Engine, EngineOptions};
use crate::storage::io::uring::UringBackend;
use crate::storage::snapshot::{
    CHUNK_SIZE_MAX, ChunkKind, SnapshotHeader, SnapshotSink, SnapshotSource, decode_chunk,
};
use anyhow::{Context, bail};
use crossbeam_channel::Sender;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const REQUEST_MAGIC: [u8; 8] = *b"OLBACKUP";
const VERSION: u32 = 1;
const FILE_MAGIC: [u8; 8] = *b"OLSNAPF1";
const ERROR_FRAME: u32 = u32::MAX;
const ERROR_TEXT_MAX: usize = 4096;
/// How long a node waits for a request, and a client for the snapshot to start.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Asks the node's replication core for a snapshot of its applied state.
pub type SnapshotRequest = Sender<SnapshotSource>;

/// What a save or restore did.
#[derive(Debug, Clone, Copy)]
pub struct BackupReport {
    pub header: SnapshotHeader,
    pub bytes: u64,
}

impl std::fmt::Display for BackupReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "snapshot at log index {} (term {}): {} map pages, {} values from the log, {} bytes",
            self.header.index, self.header.term, self.header.pages, self.header.values, self.bytes
        )
    }
}

/// Serves backups on `listener` until the process ends: each connection gets its own
/// thread, streaming at most `bytes_per_s`; `request` reaches the replication core.
pub fn serve(listener: TcpListener, request: Sender<SnapshotRequest>, bytes_per_s: u64) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let request = request.clone();
        let _ = std::thread::Builder::new()
            .name("backup".into())
            .spawn(move || {
                crate::server::run_in_background();
                let peer = conn.peer_addr().ok();
                if let Err(e) = serve_one(conn, &request, bytes_per_s) {
                    eprintln!("ocean-liner: a backup for {peer:?} failed: {e}");
                }
            });
    }
}

fn serve_one(
    conn: TcpStream,
    request: &Sender<SnapshotRequest>,
    bytes_per_s: u64,
) -> io::Result<()> {
    conn.set_read_timeout(Some(TIMEOUT))?;
    let mut head = [0u8; 12];
    (&conn).read_exact(&mut head)?;
    let mut w = BufWriter::with_capacity(1 << 20, conn);
    if head[..8] != REQUEST_MAGIC || head[8..] != VERSION.to_le_bytes() {
        return send_error(&mut w, "not a backup request of this version");
    }
    let (tx, rx) = crossbeam_channel::bounded(1);
    if request.send(tx).is_err() {
        return send_error(&mut w, "the node is stopping");
    }
    let Ok(mut source) = rx.recv_timeout(TIMEOUT) else {
        return send_error(&mut w, "the node did not take a snapshot in time");
    };
    let mut pacer = crate::server::Pacer::new(bytes_per_s);
    loop {
        match source.next_chunk() {
            Ok(Some(chunk)) => {
                w.write_all(&(chunk.len() as u32).to_le_bytes())?;
                w.write_all(&chunk)?;
                pacer.pace(chunk.len());
            }
            Ok(None) => break,
            Err(e) => return send_error(&mut w, &e.to_string()),
        }
    }
    w.write_all(&0u32.to_le_bytes())?;
    w.flush()?;
    eprintln!(
        "ocean-liner: sent a backup snapshot at index {} ({} bytes)",
        source.header().index,
        source.bytes()
    );
    Ok(())
}

fn send_error(w: &mut impl Write, text: &str) -> io::Result<()> {
    let text = &text.as_bytes()[..text.len().min(ERROR_TEXT_MAX)];
    w.write_all(&ERROR_FRAME.to_le_bytes())?;
    w.write_all(&(text.len() as u32).to_le_bytes())?;
    w.write_all(text)?;
    w.flush()
}

/// Reads the next frame: `Ok(Some(chunk))`, `Ok(None)` at the end marker.
fn read_frame(r: &mut impl Read, buf: &mut Vec<u8>) -> anyhow::Result<Option<()>> {
    let mut word = [0u8; 4];
    r.read_exact(&mut word)
        .context("the snapshot stream ended early")?;
    let len = u32::from_le_bytes(word);
    if len == 0 {
        return Ok(None);
    }
    if len == ERROR_FRAME {
        r.read_exact(&mut word)?;
        let n = (u32::from_le_bytes(word) as usize).min(ERROR_TEXT_MAX);
        let mut text = vec![0u8; n];
        r.read_exact(&mut text)?;
        bail!("the node refused: {}", String::from_utf8_lossy(&text));
    }
    let len = len as usize;
    if len > CHUNK_SIZE_MAX {
        bail!("a frame of {len} bytes is over the chunk limit");
    }
    buf.resize(len, 0);
    r.read_exact(buf)
        .context("the snapshot stream ended inside a chunk")?;
    Ok(Some(()))
}

/// Checks that chunks come in order from one snapshot, and keeps its header.
#[derive(Default)]
struct StreamCheck {
    id: u64,
    next_seq: u64,
    header: Option<SnapshotHeader>,
    ended: bool,
    bytes: u64,
}

impl StreamCheck {
    fn check(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        let chunk = decode_chunk(bytes)?;
        if self.ended || chunk.seq != self.next_seq || (self.next_seq > 0 && chunk.id != self.id) {
            bail!("snapshot chunks out of order at chunk {}", chunk.seq);
        }
        if chunk.seq == 0 {
            if chunk.kind != ChunkKind::Header {
                bail!("the snapshot does not start with its header");
            }
            self.header = Some(SnapshotHeader::decode(chunk.body)?);
            self.id = chunk.id;
        }
        self.ended = chunk.kind == ChunkKind::End;
        self.next_seq += 1;
        self.bytes += bytes.len() as u64;
        Ok(())
    }
}

/// Saves a snapshot of the node at `server` into `file` (see the module documentation).
pub fn save(server: SocketAddr, file: &Path) -> anyhow::Result<BackupReport> {
    let conn = TcpStream::connect_timeout(&server, Duration::from_secs(5))
        .with_context(|| format!("cannot connect to {server} over TCP"))?;
    conn.set_read_timeout(Some(TIMEOUT))?;
    let mut request = REQUEST_MAGIC.to_vec();
    request.extend_from_slice(&VERSION.to_le_bytes());
    (&conn).write_all(&request)?;
    let mut r = BufReader::with_capacity(1 << 20, conn);
    let tmp = file.with_extension("tmp");
    let mut out = BufWriter::with_capacity(
        1 << 20,
        File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?,
    );
    let result = (|| -> anyhow::Result<BackupReport> {
        out.write_all(&FILE_MAGIC)?;
        let mut check = StreamCheck::default();
        let mut buf = Vec::new();
        while read_frame(&mut r, &mut buf)?.is_some() {
            check.check(&buf)?;
            out.write_all(&(buf.len() as u32).to_le_bytes())?;
            out.write_all(&buf)?;
        }
        let Some(header) = check.header.filter(|_| check.ended) else {
            bail!("the snapshot stream ended before its end chunk");
        };
        out.write_all(&0u32.to_le_bytes())?;
        let f = out.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        Ok(BackupReport {
            header,
            bytes: check.bytes,
        })
    })();
    match result {
        Ok(report) => {
            std::fs::rename(&tmp, file).with_context(|| {
                format!("cannot rename {} to {}", tmp.display(), file.display())
            })?;
            if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
                File::open(dir)?.sync_all()?;
            }
            Ok(report)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Installs the snapshot in `file` into `data_dir`, which must hold no data.
pub fn restore(file: &Path, data_dir: &Path) -> anyhow::Result<BackupReport> {
    if data_dir.exists() {
        let held: Vec<String> = std::fs::read_dir(data_dir)?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "LOCK")
            .collect();
        if !held.is_empty() {
            bail!(
                "{} already holds data ({}): restore into an empty or new directory",
                data_dir.display(),
                held.join(", ")
            );
        }
    }
    let mut r = BufReader::with_capacity(
        1 << 20,
        File::open(file).with_context(|| format!("cannot open {}", file.display()))?,
    );
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)
        .with_context(|| format!("{} is not a snapshot file", file.display()))?;
    if magic != FILE_MAGIC {
        bail!("{} is not a snapshot file", file.display());
    }
    let backend = Arc::new(UringBackend);
    let (mut engine, _) = Engine::open(backend.clone(), data_dir, EngineOptions::default(), None)
        .map_err(|e| {
        anyhow::anyhow!("cannot create the data in {}: {e}", data_dir.display())
    })?;
    let mut sink = SnapshotSink::new(engine.snapshot_target());
    let mut buf = Vec::new();
    let mut offset = 8u64;
    while read_frame(&mut r, &mut buf)?.is_some() {
        sink.accept(&buf)
            .with_context(|| format!("{}: the chunk at byte {offset}", file.display()))?;
        offset += 4 + buf.len() as u64;
    }
    let staged = sink
        .finish()
        .with_context(|| format!("{} ends before its snapshot does", file.display()))?;
    let report = BackupReport {
        header: staged.header,
        bytes: staged.bytes,
    };
    engine
        .install_snapshot(staged)
        .map_err(|e| anyhow::anyhow!("installing the snapshot failed: {e}"))?;
    // The backed-up cluster's members are not the new one's: its --peers name them.
    engine.forget_membership();
    engine
        .checkpoint()
        .map_err(|e| anyhow::anyhow!("writing the restored state failed: {e}"))?;
    drop(engine);
    let mut hs = HardStateFile::open(backend.as_ref(), data_dir)?;
    let state = raft::eraftpb::HardState {
        term: report.header.term.get(),
        commit: report.header.index.get(),
        ..Default::default()
    };
    hs.save(&state)?;
    Ok(report)
}
