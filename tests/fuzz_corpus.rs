//! Replays every fuzz input the project keeps — the corpus each target grew
//! (`fuzz/corpus/<target>/`) and every input that ever made one fail
//! (`fuzz/crashes/<target>/`) — through the targets in `ocean_liner::verify::fuzz`.
//! A target that panics on any of them fails this test, naming the file.
//!
//! `OCEAN_LINER_WRITE_FUZZ_SEEDS=1 cargo test --release --test fuzz_corpus` also writes
//! the seed inputs (made by the project's own encoders) into the corpus first.

use ocean_liner::client::protocol::{self, Op, Request, Response, Status};
use ocean_liner::consensus::codec;
use ocean_liner::storage::command::{self, CommandOp};
use ocean_liner::verify::fuzz::TARGETS;
use raft::eraftpb::{Entry, Message, MessageType};
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn inputs(target: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for kind in ["corpus", "crashes"] {
        let dir = fuzz_dir().join(kind).join(target);
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.path().is_file() && e.file_name() != "README.txt" {
                    files.push(e.path());
                }
            }
        }
    }
    files.sort();
    files
}

#[test]
fn every_kept_fuzz_input_runs_clean() {
    if std::env::var_os("OCEAN_LINER_WRITE_FUZZ_SEEDS").is_some() {
        write_seeds();
    }
    let mut total = 0;
    for (name, target) in TARGETS {
        let files = inputs(name);
        assert!(
            !files.is_empty(),
            "target {name} has no corpus in fuzz/corpus/{name}"
        );
        for path in &files {
            let data = std::fs::read(path).unwrap();
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(outcome.is_ok(), "{name} failed on {}", path.display());
        }
        eprintln!("{name}: {} inputs", files.len());
        total += files.len();
    }
    eprintln!("{total} fuzz inputs replayed");
}

fn write_seeds() {
    let mut seeds: Vec<(&str, String, Vec<u8>)> = Vec::new();
    let request = |op, key: &'static str, value: &'static [u8]| {
        let mut out = Vec::new();
        let req = Request {
            op,
            client_id: 42,
            request_seq: 7,
            cookie: protocol::NO_COOKIE,
            key,
            value,
        };
        protocol::encode_request(&req, &mut out);
        out
    };
    for (i, (op, key, value)) in [
        (Op::Get, "key:1", &b""[..]),
        (Op::Set, "key:1", &[b'v'; 100][..]),
        (Op::Delete, "key:2", &b""[..]),
        (Op::Ping, "", &b""[..]),
        (Op::Stats, "", &b""[..]),
    ]
    .into_iter()
    .enumerate()
    {
        seeds.push((
            "client_request",
            format!("seed-{i}"),
            request(op, key, value),
        ));
    }
    // A BATCH of a GET and a SET, and a BATCH reply to it.
    let to = protocol::Addressing {
        op: Some(Op::Batch),
        client_id: 43,
        request_seq: 1,
        cookie: 99,
    };
    let mut batch = Vec::new();
    let start = protocol::batch::begin_batch(&mut batch, &to);
    let get = Request {
        op: Op::Get,
        client_id: 42,
        request_seq: 7,
        cookie: 99,
        key: "key:1",
        value: b"",
    };
    let set = Request {
        op: Op::Set,
        client_id: 44,
        value: b"value",
        ..get
    };
    protocol::batch::push_request_item(&mut batch, start, &get);
    protocol::batch::push_request_item(&mut batch, start, &set);
    seeds.push(("client_request", "seed-batch".into(), batch));
    let mut reply = Vec::new();
    let start = protocol::batch::begin_batch_response(&mut reply, 99);
    for (r, payload) in [(&get, &b"value"[..]), (&set, &b""[..])] {
        let resp = Response::reply(&r.addressing(), Status::Ok, 99, payload);
        protocol::batch::push_response_item(&mut reply, start, &resp);
    }
    seeds.push(("client_response", "seed-batch".into(), reply));
    for (i, (status, payload)) in [
        (Status::Ok, &b"value"[..]),
        (Status::NotLeader, &b"127.0.0.1:9001"[..]),
        (Status::NotFound, &b""[..]),
    ]
    .into_iter()
    .enumerate()
    {
        let mut out = Vec::new();
        let resp = Response {
            op: Some(Op::Get),
            status,
            client_id: 42,
            request_seq: 7,
            cookie: 99,
            payload,
        };
        protocol::encode_response(&resp, &mut out);
        seeds.push(("client_response", format!("seed-{i}"), out));
    }
    let mut messages = Vec::new();
    let mut append = Message::default();
    append.set_msg_type(MessageType::MsgAppend);
    (
        append.to,
        append.from,
        append.term,
        append.index,
        append.commit,
    ) = (2, 1, 3, 10, 9);
    let mut commands = Vec::new();
    command::encode(&mut commands, CommandOp::Set, 1, 2, b"k", b"value");
    let mut entry = Entry::default();
    (entry.term, entry.index, entry.data) = (3, 11, commands.into());
    append.mut_entries().push(entry);
    messages.push(append);
    let mut heartbeat = Message::default();
    heartbeat.set_msg_type(MessageType::MsgHeartbeat);
    (heartbeat.to, heartbeat.from, heartbeat.term) = (2, 1, 3);
    messages.push(heartbeat);
    let mut vote = Message::default();
    vote.set_msg_type(MessageType::MsgRequestVote);
    (vote.to, vote.from, vote.term, vote.log_term, vote.index) = (1, 3, 4, 3, 11);
    messages.push(vote);
    // A membership change, as the leader replicates one.
    let mut conf = Message::default();
    conf.set_msg_type(MessageType::MsgAppend);
    (conf.to, conf.from, conf.term, conf.index, conf.log_term) = (2, 1, 3, 11, 3);
    let change = ocean_liner::consensus::membership::Change::AddLearner {
        id: ocean_liner::ids::NodeId::from_index(3),
        peer_addr: "127.0.0.1:8003".parse().unwrap(),
        client_addr: "127.0.0.1:9003".parse().unwrap(),
    };
    conf.set_entries(
        vec![ocean_liner::consensus::storage::conf_change_entry(
            3, 12, &change,
        )]
        .into(),
    );
    messages.push(conf);
    let mut stream = Vec::new();
    let hello = ocean_liner::server::transport::Hello {
        cluster_id: 1,
        node_index: 1,
        last_index: 10,
        client_addr: "127.0.0.1:9001".parse().unwrap(),
        resp_port: 6380,
        peer_addr: Some("127.0.0.1:8001".parse().unwrap()),
    }
    .encode();
    frame(&mut stream, 1, &hello);
    for (i, msg) in messages.iter().enumerate() {
        let mut out = Vec::new();
        codec::encode(msg, &mut out);
        frame(&mut stream, 2, &out);
        seeds.push(("raft_message", format!("seed-{i}"), out));
    }
    frame(&mut stream, 3, &5u64.to_le_bytes());
    seeds.push(("peer_stream", "seed-0".into(), stream));
    let mut entries = vec![1u8];
    for i in 0..3u64 {
        if i > 0 {
            entries.push(0xFE);
        }
        command::encode(&mut entries, CommandOp::Set, 1, i, b"key", &[i as u8; 80]);
    }
    seeds.push(("log_segment", "seed-0".into(), entries));
    let mut delete = vec![1u8];
    command::encode(&mut delete, CommandOp::Delete, 1, 9, b"key", b"");
    seeds.push(("log_segment", "seed-1".into(), delete));
    let mut page = vec![0u8; 4096];
    // An empty page: its 153 slot words (bytes 0..1224) empty.
    page[..1224].fill(0xFF);
    seeds.push(("map_pages", "seed-0".into(), page));
    let mut chunks = vec![1u8];
    chunks.extend_from_slice(&[0, 1, 2, 3]);
    seeds.push(("snapshot_chunks", "seed-0".into(), chunks));
    let mut pipeline = Vec::new();
    ocean_liner::resp::command(&mut pipeline, &["SET", "key:1", "value"]);
    ocean_liner::resp::command(&mut pipeline, &["GET", "key:1"]);
    ocean_liner::resp::command(&mut pipeline, &["MSET", "a", "1", "b", "2"]);
    pipeline.extend_from_slice(b"PING\r\nSET \"a b\" 'c'\r\n");
    seeds.push(("resp_request", "seed-0".into(), pipeline));
    let mut replies = Vec::new();
    ocean_liner::resp::Reply::Array(Some(vec![
        ocean_liner::resp::Reply::Simple(b"OK".to_vec()),
        ocean_liner::resp::Reply::Error(b"ERR unknown command".to_vec()),
        ocean_liner::resp::Reply::Integer(3),
        ocean_liner::resp::Reply::Bulk(Some(b"value".to_vec())),
        ocean_liner::resp::Reply::Bulk(None),
        ocean_liner::resp::Reply::Array(None),
    ]))
    .encode(&mut replies);
    seeds.push(("resp_reply", "seed-0".into(), replies));
    for (target, name, bytes) in seeds {
        let dir = fuzz_dir().join("corpus").join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

fn frame(out: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
}
