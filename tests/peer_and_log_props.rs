//! Property tests: bytes from a peer or a disk never panic a parser.
//!
//! Method: feed every parser that reads another node's or a file's bytes — the peer
//! hello, the Raft message codec, the log entry header and the command decoder — with
//! arbitrary bytes, and with valid encodings that are cut short or have bytes flipped.
//! Each must return an error (or a value that re-encodes to what it read) and never
//! panic; a truncated valid encoding is always refused.

use ocean_liner::consensus::codec;
use ocean_liner::ids::{LogIndex, Term};
use ocean_liner::server::transport::Hello;
use ocean_liner::storage::command::{self, CommandOp, Commands};
use ocean_liner::storage::log::{EntryHeader, HEADER_SIZE};
use proptest::prelude::*;
use raft::eraftpb::{Entry, Message, MessageType};

fn commands(keys: &[Vec<u8>], value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        command::encode(&mut out, CommandOp::Set, 1, i as u64, k, value);
    }
    out
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(1u8..=255, 1..40)
}

fn flip(mut bytes: Vec<u8>, at: usize, to: u8) -> Vec<u8> {
    if !bytes.is_empty() {
        let i = at % bytes.len();
        bytes[i] = to;
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn hellos_never_panic(
        noise in prop::collection::vec(any::<u8>(), 0..128),
        cluster_id in any::<u64>(),
        node_index in any::<u32>(),
        last_index in any::<u64>(),
        port in any::<u16>(),
        at in any::<usize>(),
        to in any::<u8>(),
    ) {
        let _ = Hello::decode(&noise);
        let hello = Hello {
            cluster_id,
            node_index,
            last_index,
            client_addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            resp_port: port.rotate_left(3),
            peer_addr: Some(std::net::SocketAddr::from(([10, 0, 0, 1], port.rotate_left(5)))),
        };
        let bytes = hello.encode();
        prop_assert_eq!(Hello::decode(&bytes), Ok(hello.clone()));
        let peer_len = 2 + hello.peer_addr.unwrap().to_string().len();
        for cut in 0..bytes.len() {
            if cut == bytes.len() - peer_len - 2 {
                // A hello from before the RESP port: no door.
                let old = Hello { resp_port: 0, peer_addr: None, ..hello.clone() };
                prop_assert_eq!(Hello::decode(&bytes[..cut]), Ok(old));
                continue;
            }
            if cut == bytes.len() - peer_len {
                // One from before the peer address.
                let old = Hello { peer_addr: None, ..hello.clone() };
                prop_assert_eq!(Hello::decode(&bytes[..cut]), Ok(old));
                continue;
            }
            prop_assert!(Hello::decode(&bytes[..cut]).is_err());
        }
        let _ = Hello::decode(&flip(bytes, at, to));
    }

    #[test]
    fn raft_messages_never_panic(
        noise in prop::collection::vec(any::<u8>(), 0..512),
        keys in prop::collection::vec(key(), 0..6),
        term in any::<u64>(),
        at in any::<usize>(),
        to in any::<u8>(),
    ) {
        let _ = codec::decode(&noise);
        let data = commands(&keys, b"value");
        let context = if keys.is_empty() { Vec::new() } else { (keys.len() as u64).to_le_bytes().to_vec() };
        let mut msg = Message {
            msg_type: MessageType::MsgAppend,
            to: 2,
            from: 1,
            term,
            ..Default::default()
        };
        msg.set_entries(vec![Entry { term, index: 3, data: data.into(), context: context.into(), ..Default::default() }].into());
        let mut bytes = Vec::new();
        codec::encode(&msg, &mut bytes);
        prop_assert!(codec::decode(&bytes).is_ok());
        for cut in 0..bytes.len() {
            prop_assert!(codec::decode(&bytes[..cut]).is_err());
        }
        let _ = codec::decode(&flip(bytes, at, to));
    }

    #[test]
    fn commands_and_entry_headers_never_panic(
        noise in prop::collection::vec(any::<u8>(), 0..512),
        keys in prop::collection::vec(key(), 1..6),
        value in prop::collection::vec(any::<u8>(), 0..200),
        offset in 0usize..600,
        at in any::<usize>(),
        to in any::<u8>(),
    ) {
        let _ = command::decode_at(&noise, offset);
        let _ = Commands::new(&noise).count();
        let _ = EntryHeader::decode(&noise);
        let region = commands(&keys, &value);
        prop_assert_eq!(command::count(&region), Ok(keys.len() as u64));
        for cut in 1..region.len() {
            let _ = command::count(&region[..cut]);
            let _ = command::decode_at(&region[..cut], offset % cut);
        }
        let flipped = flip(region, at, to);
        let _ = command::count(&flipped);
        let _ = Commands::new(&flipped).count();
        let header = EntryHeader {
            term: Term(1),
            log_index: LogIndex(1),
            num_commands: keys.len() as u64,
            command_length: flipped.len() as u64,
            batch_first_index: LogIndex(1),
            commands_hash: 0,
        };
        let mut encoded = [0u8; HEADER_SIZE];
        header.encode(&mut encoded);
        prop_assert_eq!(EntryHeader::decode(&encoded), Some(header));
        for cut in 0..HEADER_SIZE {
            prop_assert_eq!(EntryHeader::decode(&encoded[..cut]), None);
        }
        let _ = EntryHeader::decode(&flip(encoded.to_vec(), at, to));
    }
}
