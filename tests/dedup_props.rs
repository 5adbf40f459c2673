//! Dropping overwritten SETs at seal changes nothing a client can see: property tests
//! against the same entries applied as sent.
//!
//! Method: proptest generates entries of SETs and DELETEs over three keys from four
//! client sessions whose request numbers repeat and go backwards (retries of applied
//! writes, duplicates inside one entry). Each entry is committed to one engine as it is
//! and to another after `drop_overwritten_sets`, given the second engine's own applied
//! state; some steps reopen the second engine (replaying its log). After every entry
//! both engines must answer each command alike (the dropped SET's NOP as its SET did),
//! hold the same value for every key and the same last request for every session.

mod common;

use common::small_engine_options as options;
use ocean_liner::ids::Term;
use ocean_liner::replica::conditional::AppliedState;
use ocean_liner::replica::dedup::drop_overwritten_sets;
use ocean_liner::storage::command::{self, CommandOp};
use ocean_liner::storage::engine::Engine;
use ocean_liner::storage::io::fault::FaultBackend;
use proptest::prelude::*;
use std::path::Path;
use std::sync::Arc;

const KEYS: [&[u8]; 3] = [b"apple", b"b", b"cherry-key"];
const CLIENTS: u64 = 4;

/// (client 0..=CLIENTS (0: no session), request, key, value length or DELETE)
type Cmd = (u64, u64, usize, Option<u8>);

fn encode(entry: &[Cmd]) -> Vec<u8> {
    let mut out = Vec::new();
    for &(client, seq, key, value) in entry {
        match value {
            Some(len) => {
                let v = vec![len; len as usize + 70 * (key % 2)];
                command::encode(&mut out, CommandOp::Set, client, seq, KEYS[key], &v);
            }
            None => command::encode(&mut out, CommandOp::Delete, client, seq, KEYS[key], b""),
        }
    }
    out
}

fn run(entries: &[(Vec<Cmd>, bool)]) {
    let plain_disk = Arc::new(FaultBackend::new());
    let dedup_disk = Arc::new(FaultBackend::new());
    let dir = Path::new("/data");
    let open =
        |disk: &Arc<FaultBackend>| Engine::open(disk.clone(), dir, options(), None).unwrap().0;
    let mut plain = open(&plain_disk);
    let mut dedup = open(&dedup_disk);
    let mut scratch = Vec::new();
    for (n, (entry, reopen)) in entries.iter().enumerate() {
        let sent = encode(entry);
        let mut rewritten = sent.clone();
        drop_overwritten_sets(&mut rewritten, &mut scratch, &[], true, &dedup);
        assert!(rewritten.len() <= sent.len());
        let count = entry.len() as u64;
        let (_, a) = plain.commit_local(Term(1), count, &sent).unwrap();
        let (_, b) = dedup.commit_local(Term(1), count, &rewritten).unwrap();
        assert_eq!(a, b, "entry {n}: outcomes of {entry:?}");
        if *reopen {
            drop(dedup);
            dedup = open(&dedup_disk);
        }
        for key in KEYS {
            assert_eq!(
                plain.get(key).unwrap(),
                dedup.get(key).unwrap(),
                "entry {n}: {key:?}"
            );
        }
        for client in 1..=CLIENTS {
            assert_eq!(
                plain.last_seq(client),
                dedup.last_seq(client),
                "entry {n}: session {client}"
            );
        }
    }
}

fn cmd() -> impl Strategy<Value = Cmd> {
    (
        0..=CLIENTS,
        1u64..6,
        0..KEYS.len(),
        prop::option::weighted(0.8, 0u8..40),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn dropping_overwritten_sets_is_invisible(
        entries in prop::collection::vec((prop::collection::vec(cmd(), 1..12), prop::bool::weighted(0.2)), 1..12)
    ) {
        run(&entries);
    }
}

/// The generator above does reach the case the rule exists for.
#[test]
fn overwritten_sets_are_dropped_in_typical_histories() {
    // SETs of the key with the longer values; a DELETE of another key between them.
    let entry: Vec<Cmd> = vec![
        (1, 1, 1, Some(5)),
        (2, 1, 1, Some(9)),
        (3, 1, 0, None),
        (1, 2, 1, Some(1)),
    ];
    let mut rewritten = encode(&entry);
    let disk = Arc::new(FaultBackend::new());
    let engine = Engine::open(disk, Path::new("/data"), options(), None)
        .unwrap()
        .0;
    let n = drop_overwritten_sets(&mut rewritten, &mut Vec::new(), &[], true, &engine);
    assert_eq!(n, 2);
    assert!(rewritten.len() < encode(&entry).len());
    run(&[(entry, true)]);
}
