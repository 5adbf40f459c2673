//! Fuzz targets: every parser that reads bytes from a client, a peer or a disk, each
//! wrapped in a function that must return for any input — an error is fine, a panic, a
//! hang or an unbounded allocation is a bug. Where the parser has an encoder, the target
//! also checks that what it accepts encodes and parses back to the same thing, and
//! that what the server accepts from a client can be written to the log.
//!
//! The same functions run under AFL++ (`fuzz/`, one binary per target, driven by
//! `tools/fuzz.sh`) and under `cargo test` (`tests/fuzz_corpus.rs` replays every input
//! in `fuzz/corpus/<target>/` and `fuzz/crashes/<target>/`).
//!
//! Inputs that would otherwise stop at a checksum are given one: the disk and snapshot
//! targets read their first byte as a mode, and in one mode the harness wraps the rest
//! in valid hashes, so the fuzzer reaches the decoders behind them (bytes a buggy or
//! hostile writer could have hashed correctly).

use crate::client::protocol::{self, ParseError};
use crate::consensus::codec;
use crate::resp;
use crate::server::transport;
use crate::storage::command::{self, CommandOp};
use crate::storage::engine::{Engine, EngineOptions};
use crate::storage::io::fault::FaultBackend;
use crate::storage::io::{Backend, PAGE_SIZE};
use crate::storage::log::segments::{SegmentKind, file_name};
use crate::storage::log::{LogIndex, LogOptions, NewEntry, Term, encode_entry, entry_size};
use crate::storage::snapshot::{self, ChunkKind, SnapshotSink};
use crate::storage::store::page;
use std::path::Path;
use std::sync::Arc;

/// A fuzz target: takes any bytes, returns (or panics on a bug).
pub type Target = fn(&[u8]);

/// Every target by name (the names of the AFL binaries and of the corpus directories).
pub const TARGETS: &[(&str, Target)] = &[
    ("client_request", client_request),
    ("client_response", client_response),
    ("peer_stream", peer_stream),
    ("raft_message", raft_message),
    ("log_segment", log_segment),
    ("map_pages", map_pages),
    ("snapshot_chunks", snapshot_chunks),
    ("resp_request", resp_request),
    ("resp_reply", resp_reply),
];

/// Bounds small enough that the fuzzer reaches them.
const RESP_LIMITS: resp::Limits = resp::Limits {
    args_max: 1024,
    bulk_max: 1 << 16,
    inline_max: 1 << 12,
    depth_max: 8,
};

/// A RESP connection's bytes, parsed command after command as the door parses them. Each
/// accepted command takes bytes it was given, encodes as a command and parses back to
/// the same arguments; an incomplete one asks for more bytes than there are.
pub fn resp_request(data: &[u8]) {
    let mut at = 0;
    while at < data.len() {
        let rest = &data[at..];
        match resp::parse_command(rest, &RESP_LIMITS) {
            Ok(resp::Parsed::Done(args, n)) => {
                assert!(n > 0 && n <= rest.len(), "took {n} of {}", rest.len());
                let mut out = Vec::new();
                resp::command(&mut out, &args);
                match resp::parse_command(&out, &RESP_LIMITS) {
                    Ok(resp::Parsed::Done(again, m)) => {
                        assert_eq!(again, args, "round trip");
                        assert_eq!(m, out.len());
                    }
                    other => panic!("an accepted command did not parse back: {other:?}"),
                }
                at += n;
            }
            Ok(resp::Parsed::Incomplete { need }) => {
                assert!(
                    need > rest.len(),
                    "incomplete with {} of {need}",
                    rest.len()
                );
                return;
            }
            Err(e) => {
                let reply = e.reply();
                assert!(reply.starts_with(b"-ERR Protocol error: ") && reply.ends_with(b"\r\n"));
                return;
            }
        }
    }
}

/// A server's bytes as a RESP client parses them: an accepted reply encodes and parses
/// back to itself.
pub fn resp_reply(data: &[u8]) {
    if let Ok(resp::Parsed::Done(reply, n)) = resp::parse_reply(data, &RESP_LIMITS) {
        assert!(n > 0 && n <= data.len());
        let mut out = Vec::new();
        reply.encode(&mut out);
        assert_eq!(
            resp::parse_reply(&out, &RESP_LIMITS).ok(),
            Some(resp::Parsed::Done(reply, out.len())),
            "round trip"
        );
    }
}

/// A client datagram as a shard parses it (a BATCH, or a single request). An accepted
/// request must round-trip and, if it is a write, encode as a log command that decodes to
/// the same fields; an accepted batch re-encodes to the same bytes, item by item.
pub fn client_request(data: &[u8]) {
    if protocol::batch::is_batch(data) {
        return client_batch(data);
    }
    match protocol::parse_request(data) {
        Ok(req) => {
            assert!(req.validate().is_ok(), "accepted but invalid: {req:?}");
            let mut out = Vec::new();
            protocol::encode_request(&req, &mut out);
            assert_eq!(protocol::parse_request(&out).ok(), Some(req), "round trip");
            let op = match req.op {
                protocol::Op::Set => CommandOp::Set,
                protocol::Op::Delete => CommandOp::Delete,
                _ => return,
            };
            let mut region = Vec::new();
            command::encode(
                &mut region,
                op,
                req.client_id,
                req.request_seq,
                req.key.as_bytes(),
                req.value,
            );
            let cmd = command::decode_at(&region, 0).expect("an accepted write decodes");
            assert_eq!(
                (cmd.op, cmd.key, cmd.value),
                (op, req.key.as_bytes(), req.value)
            );
        }
        Err(ParseError::Rejected(r)) => {
            // A rejection is answered: the reply must fit the anti-amplification rule.
            let reply = protocol::Response::reply(&r.to, r.reason.status(), 0, &[]);
            assert!(reply.encoded_len() <= data.len().max(protocol::REQUEST_HEADER_SIZE));
        }
        Err(ParseError::Unaddressable(_)) => {}
    }
}

fn client_batch(data: &[u8]) {
    use protocol::batch;
    match protocol::parse_batch(data) {
        Ok(b) => {
            assert!(data.len() <= protocol::MAX_BATCH_DATAGRAM_SIZE);
            let mut out = Vec::new();
            let start = batch::begin_batch(&mut out, &b.to);
            for req in b.items() {
                assert!(req.validate().is_ok(), "accepted but invalid: {req:?}");
                batch::push_request_item(&mut out, start, &req);
            }
            assert_eq!(out, data, "round trip");
        }
        Err(ParseError::Rejected(r)) => {
            let reply = protocol::Response::reply(&r.to, r.reason.status(), 0, &[]);
            assert!(reply.encoded_len() <= data.len());
        }
        Err(ParseError::Unaddressable(_)) => {}
    }
}

/// A server's reply as the client library parses it, and the leader hint it may carry.
pub fn client_response(data: &[u8]) {
    if let Ok(protocol::Reply::Batch(b)) = protocol::parse_reply(data) {
        let mut out = Vec::new();
        let start = protocol::batch::begin_batch_response(&mut out, b.cookie);
        for item in b.items() {
            protocol::batch::push_response_item(&mut out, start, &item);
            let _ = protocol::parse_leader_hint(item.payload);
        }
        assert_eq!(out, data, "round trip");
        return;
    }
    if let Ok(resp) = protocol::parse_response(data) {
        let mut out = Vec::new();
        protocol::encode_response(&resp, &mut out);
        assert_eq!(
            protocol::parse_response(&out).ok(),
            Some(resp),
            "round trip"
        );
        let _ = protocol::parse_leader_hint(resp.payload);
    }
}

/// A peer connection's byte stream: frames, each decoded as the reader loop decodes it.
pub fn peer_stream(data: &[u8]) {
    let mut stream = data;
    let mut buf = Vec::new();
    let mut first = true;
    loop {
        let limit = if first {
            transport::HELLO_SIZE_MAX
        } else {
            transport::FRAME_SIZE_MAX
        };
        let Ok(kind) = transport::read_frame(&mut stream, &mut buf, limit) else {
            return;
        };
        first = false;
        match kind {
            transport::KIND_HELLO => {
                if let Ok(hello) = transport::Hello::decode(&buf) {
                    assert_eq!(transport::Hello::decode(&hello.encode()), Ok(hello));
                }
            }
            transport::KIND_RAFT => raft_message(&buf),
            transport::KIND_SNAPSHOT_CHUNK => {
                let _ = snapshot::decode_chunk(&buf);
            }
            _ => {}
        }
    }
}

/// A Raft message as the codec decodes it: what it accepts must encode (the encoder
/// panics on what the cluster never sends) and decode back to the same message.
pub fn raft_message(data: &[u8]) {
    if let Ok(msg) = codec::decode(data) {
        let mut out = Vec::new();
        codec::encode(&msg, &mut out);
        assert_eq!(codec::decode(&out).ok().as_ref(), Some(&msg), "round trip");
        if msg.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot {
            let _ = snapshot::decode_descriptor(msg.get_snapshot().get_data());
        }
    }
}

fn engine_options() -> EngineOptions {
    EngineOptions {
        log: LogOptions {
            prepare_chunk_bytes: 16 << 10,
            cache_bytes: 0,
            segment_bytes: 1 << 20,
        },
        raft_log_retain_bytes: 0,
        bootstrap_membership: None,
    }
}

/// A node's data directory whose first log segment holds these bytes, opened and
/// replayed. Mode byte 0: the bytes are the file. Otherwise the bytes are the commands
/// of entries with valid hashes (one entry per piece between `0xFE` bytes; the mode
/// byte is the number of commands each claims), so replay decodes and applies them.
pub fn log_segment(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let file = if mode == 0 {
        rest.to_vec()
    } else {
        let mut file = Vec::new();
        for (i, commands) in rest.split(|&b| b == 0xFE).enumerate().take(64) {
            let entry = NewEntry {
                term: Term(1),
                log_index: LogIndex(i as u64 + 1),
                num_commands: u64::from(mode),
                commands,
            };
            let mut out = vec![0u8; entry_size(commands.len())];
            encode_entry(&entry, entry.log_index, &mut out);
            file.extend_from_slice(&out);
        }
        file
    };
    let disk = FaultBackend::new();
    let dir = Path::new("/node");
    let segments = dir.join("segments");
    disk.replace_image(&segments.join(file_name(0, SegmentKind::Raft)), pad(file));
    let backend: Arc<dyn Backend> = Arc::new(disk);
    if let Ok((mut engine, _)) = Engine::open(backend, dir, engine_options(), None) {
        let _ = engine.checkpoint();
    }
}

/// Bytes padded with zeros to whole pages (files are read in pages).
fn pad(mut bytes: Vec<u8>) -> Vec<u8> {
    bytes.resize(bytes.len().div_ceil(PAGE_SIZE) * PAGE_SIZE, 0);
    bytes
}

/// Map pages as loaded from `map.dat`: each page is checked as a load checks it, and a
/// set of pages that passes is opened as a map (behind a valid metadata page), used, and
/// its pages checked again.
pub fn map_pages(data: &[u8]) {
    let pages = pad(data.iter().copied().take(64 * PAGE_SIZE).collect());
    if pages.is_empty()
        || pages
            .chunks_exact(PAGE_SIZE)
            .any(|p| page::check_loaded(p).is_err())
    {
        return;
    }
    let disk = FaultBackend::new();
    let dir = Path::new("/map");
    disk.replace_image(
        &dir.join("map.dat"),
        crate::storage::store::map_file_with(&pages),
    );
    if let Ok((map, _)) = crate::storage::store::Map::open(&disk, dir) {
        for i in 0..32u64 {
            let hash = map.key_hash(&i.to_le_bytes());
            let _ = map.get(hash);
            if i % 3 == 0 {
                map.set(hash, 4096 * i, &[i as u8; 70]);
            } else if i % 3 == 1 {
                map.delete(hash);
            }
        }
        map.for_each_log_address(|_| {});
        // Whatever the map did to pages it accepted leaves pages it would accept again.
        let image = map.image(LogIndex(1), Term(1));
        for (i, p) in image.pages.chunks_exact(PAGE_SIZE).enumerate() {
            if let Err(e) = page::check_loaded(p) {
                panic!("page {i} is no longer consistent after updates: {e}");
            }
            if let Err(e) = page::placement_ok(p) {
                panic!("page {i}: a lookup would miss a key after updates: {e}");
            }
            // And, independently of that check, its count of used slots is right.
            let occupied = p[..page::OFFSET_KEY_HASHES]
                .chunks_exact(8)
                .filter(|w| **w != [0xFF; 8])
                .count();
            let used = u16::from_le_bytes([p[page::OFFSET_USED], p[page::OFFSET_USED + 1]]);
            assert_eq!(
                occupied, used as usize,
                "page {i}: used count after updates"
            );
        }
        let _ = map.checkpoint(LogIndex(1), Term(1), b"");
    }
}

/// A snapshot stream as a follower receives it, into an engine of its own. Mode byte 0:
/// the bytes are chunks as sent (each after a u32 length). Otherwise each piece between
/// `0xFE` bytes is a chunk (kind from its first byte, then the body) that gets a valid
/// header and checksum, so the receiver checks the bodies themselves.
pub fn snapshot_chunks(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let disk = FaultBackend::new();
    let backend: Arc<dyn Backend> = Arc::new(disk);
    let Ok((engine, _)) = Engine::open(backend, Path::new("/node"), engine_options(), None) else {
        return;
    };
    let mut sink = SnapshotSink::new(engine.snapshot_target());
    let chunks: Vec<Vec<u8>> = if mode == 0 {
        let mut chunks = Vec::new();
        let mut rest = rest;
        while let Some((len, tail)) = rest.split_first_chunk::<4>() {
            let len = (u32::from_le_bytes(*len) as usize).min(tail.len());
            chunks.push(tail[..len].to_vec());
            rest = &tail[len..];
        }
        chunks
    } else {
        rest.split(|&b| b == 0xFE)
            .enumerate()
            .take(64)
            .map(|(seq, piece)| {
                let (kind, body) = match piece.split_first() {
                    Some((&k, body)) => (k, body),
                    None => (1, piece),
                };
                let kind = match kind % 6 {
                    0 => ChunkKind::Header,
                    1 => ChunkKind::Sessions,
                    2 => ChunkKind::MapMeta,
                    3 => ChunkKind::Pages,
                    4 => ChunkKind::Values,
                    _ => ChunkKind::End,
                };
                snapshot::encode_chunk(7, seq as u64, kind, body)
            })
            .collect()
    };
    for chunk in chunks {
        if sink.accept(&chunk).is_err() {
            return;
        }
    }
    let _ = sink.finish();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A few hand-made inputs through every target (the corpus replay covers the rest).
    #[test]
    fn every_target_takes_empty_and_short_inputs() {
        for (name, target) in TARGETS {
            for input in [&b""[..], b"\0", b"\x01", b"\x01\xFE\xFE", &[0xFF; 300]] {
                let r = std::panic::catch_unwind(|| target(input));
                assert!(r.is_ok(), "{name} panicked on {input:?}");
            }
        }
    }
}

#[cfg(test)]
mod reach {
    use super::*;

    /// The fix-up mode of `log_segment` makes entries replay really applies: a SET in it
    /// is found after the open (else the target would only exercise the refusals).
    #[test]
    fn fixed_up_entries_are_replayed() {
        let mut data = vec![1u8];
        command::encode(&mut data, CommandOp::Set, 1, 1, b"key", &[5u8; 80]);
        let commands = &data[1..];
        let mut file = vec![0u8; entry_size(commands.len())];
        let entry = NewEntry {
            term: Term(1),
            log_index: LogIndex(1),
            num_commands: 1,
            commands,
        };
        encode_entry(&entry, LogIndex(1), &mut file);
        let disk = FaultBackend::new();
        let dir = Path::new("/node");
        disk.replace_image(
            &dir.join("segments").join(file_name(0, SegmentKind::Raft)),
            pad(file),
        );
        let backend: Arc<dyn Backend> = Arc::new(disk);
        let (engine, _) = Engine::open(backend, dir, engine_options(), None).unwrap();
        assert_eq!(engine.last_index(), LogIndex(1));
        assert_eq!(engine.map().entry_count(), 1);
    }
}
