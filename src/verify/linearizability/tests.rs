//! Unit tests of the checker: hand-built histories it must reject or accept, and a
//! cross-check against brute force.
use super::*;
use std::time::Instant;

const BUDGET: u64 = 1_000_000;

fn get(client: u64, call: u64, ret: u64, seen: Option<&str>) -> Operation {
    Operation {
        client,
        key: b"k".to_vec(),
        input: Input::Get,
        call,
        ret: Some(ret),
        output: Output::Value(seen.map(|s| s.as_bytes().to_vec())),
    }
}

fn set(client: u64, call: u64, ret: u64, value: &str) -> Operation {
    Operation {
        client,
        key: b"k".to_vec(),
        input: Input::Set(value.as_bytes().to_vec()),
        call,
        ret: Some(ret),
        output: Output::Ok,
    }
}

fn delete(client: u64, call: u64, ret: u64) -> Operation {
    Operation {
        client,
        key: b"k".to_vec(),
        input: Input::Delete,
        call,
        ret: Some(ret),
        output: Output::Ok,
    }
}

fn timed_out(mut op: Operation) -> Operation {
    op.ret = None;
    op.output = Output::Unknown;
    op
}

fn on_key(mut op: Operation, key: &str) -> Operation {
    op.key = key.as_bytes().to_vec();
    op
}

#[track_caller]
fn assert_ok(history: &[Operation]) {
    let result = check(history, BUDGET);
    assert_eq!(result, CheckResult::Ok, "history: {history:#?}");
}

#[track_caller]
fn assert_illegal(history: &[Operation]) -> String {
    match check(history, BUDGET) {
        CheckResult::Illegal { key, explanation } => {
            assert!(explanation.contains(&show_bytes(&key)), "{explanation}");
            explanation
        }
        other => panic!("expected Illegal, got {other:?} for {history:#?}"),
    }
}

#[test]
fn empty_and_trivial_histories_are_ok() {
    assert_ok(&[]);
    assert_ok(&[get(1, 0, 1, None)]);
    assert_ok(&[set(1, 0, 1, "1"), get(1, 2, 3, Some("1"))]);
    assert_eq!(check_key(&[], 0), CheckResult::Ok);
}

#[test]
fn stale_read_is_rejected() {
    // Read of the initial (absent) value after a completed write.
    let explanation = assert_illegal(&[set(1, 0, 10, "1"), get(2, 20, 30, None)]);
    assert!(explanation.contains("Get -> absent"), "{explanation}");
    // Read of an older value after a newer write completed.
    assert_illegal(&[
        set(1, 0, 10, "1"),
        set(1, 20, 30, "2"),
        get(2, 40, 50, Some("1")),
    ]);
    // Close good variants: the read overlaps the write, or sees the new value.
    assert_ok(&[set(1, 0, 10, "1"), get(2, 5, 30, None)]);
    assert_ok(&[set(1, 0, 10, "1"), get(2, 20, 30, Some("1"))]);
    assert_ok(&[
        set(1, 0, 10, "1"),
        set(1, 20, 30, "2"),
        get(2, 25, 50, Some("1")),
    ]);
}

#[test]
fn lost_write_is_rejected() {
    assert_illegal(&[
        set(1, 0, 10, "1"),
        set(2, 20, 30, "2"),
        get(3, 40, 50, Some("1")),
    ]);
    // Acknowledged write, then the key reads as absent.
    assert_illegal(&[set(1, 0, 10, "1"), get(3, 40, 50, None)]);
    // Good: the later write is observed; or the writes overlap so either may win.
    assert_ok(&[
        set(1, 0, 10, "1"),
        set(2, 20, 30, "2"),
        get(3, 40, 50, Some("2")),
    ]);
    assert_ok(&[
        set(1, 0, 25, "1"),
        set(2, 20, 30, "2"),
        get(3, 40, 50, Some("1")),
    ]);
}

#[test]
fn resurrected_delete_is_rejected() {
    let explanation = assert_illegal(&[
        set(1, 0, 10, "1"),
        delete(2, 20, 30),
        get(3, 40, 50, Some("1")),
    ]);
    assert!(explanation.contains("Delete"), "{explanation}");
    assert_ok(&[set(1, 0, 10, "1"), delete(2, 20, 30), get(3, 40, 50, None)]);
    // The read overlaps the delete, so it may precede it.
    assert_ok(&[
        set(1, 0, 10, "1"),
        delete(2, 20, 30),
        get(3, 25, 50, Some("1")),
    ]);
    // A delete of an absent key leaves it absent.
    assert_illegal(&[delete(1, 0, 10), get(2, 20, 30, Some("1"))]);
}

#[test]
fn double_applied_retry_is_rejected() {
    // A's write is applied, B overwrites it and that is observed, then A's value shows up
    // again with no write of it in flight.
    assert_illegal(&[
        set(1, 0, 10, "1"),
        set(2, 20, 30, "2"),
        get(3, 40, 50, Some("2")),
        get(3, 60, 70, Some("1")),
    ]);
    // Good variant: A's first attempt timed out and was retried. The lost first attempt
    // may legitimately be applied late, after B's write.
    assert_ok(&[
        timed_out(set(1, 0, 0, "1")),
        set(1, 5, 10, "1"),
        set(2, 20, 30, "2"),
        get(3, 40, 50, Some("2")),
        get(3, 60, 70, Some("1")),
    ]);
    // But a late duplicate can only apply once: 1, 2, 1, 2, 1 needs two late writes of 1.
    assert_illegal(&[
        timed_out(set(1, 0, 0, "1")),
        set(1, 5, 10, "1"),
        set(2, 20, 30, "2"),
        get(3, 40, 50, Some("2")),
        get(3, 60, 70, Some("1")),
        set(2, 80, 90, "2"),
        get(3, 100, 110, Some("2")),
        get(3, 120, 130, Some("1")),
    ]);
}

#[test]
fn concurrent_write_and_read() {
    let write = set(1, 0, 100, "1");
    assert_ok(&[write.clone(), get(2, 10, 20, None)]);
    assert_ok(&[write.clone(), get(2, 10, 20, Some("1"))]);
    assert_ok(&[
        write.clone(),
        get(2, 10, 20, Some("1")),
        get(2, 30, 40, Some("1")),
    ]);
    assert_illegal(&[write.clone(), get(2, 10, 20, Some("2"))]);
    // Once a read has seen the write, a later read cannot un-see it.
    assert_illegal(&[write, get(2, 10, 20, Some("1")), get(2, 30, 40, None)]);
}

#[test]
fn timed_out_write() {
    let write = timed_out(set(1, 0, 0, "1"));
    assert_ok(&[
        write.clone(),
        get(2, 10, 20, None),
        get(2, 30, 40, Some("1")),
    ]);
    assert_ok(&[write.clone(), get(2, 10, 20, None), get(2, 30, 40, None)]);
    assert_ok(&[write.clone(), get(2, 10, 20, Some("1"))]);
    assert_illegal(&[
        write.clone(),
        get(2, 10, 20, Some("1")),
        get(2, 30, 40, None),
    ]);
    // It cannot take effect before it was called.
    let late = timed_out(set(1, 50, 0, "1"));
    assert_illegal(&[late.clone(), get(2, 10, 20, Some("1"))]);
    assert_ok(&[late, get(2, 10, 20, None), get(2, 60, 70, Some("1"))]);
    // A reply of Unknown with a return time is just as uncertain as no reply.
    let mut unknown = set(1, 0, 5, "1");
    unknown.output = Output::Unknown;
    assert_ok(&[
        unknown.clone(),
        get(2, 10, 20, None),
        get(2, 30, 40, Some("1")),
    ]);
    // A timed-out delete.
    assert_ok(&[
        set(1, 0, 5, "1"),
        timed_out(delete(2, 6, 0)),
        get(3, 10, 20, Some("1")),
        get(3, 30, 40, None),
    ]);
    assert_illegal(&[
        set(1, 0, 5, "1"),
        timed_out(delete(2, 6, 0)),
        get(3, 10, 20, None),
        get(3, 30, 40, Some("1")),
    ]);
}

#[test]
fn timed_out_reads_are_dropped() {
    let mut lost = get(2, 10, 0, Some("garbage"));
    lost.ret = None;
    let mut unknown = get(2, 10, 20, None);
    unknown.output = Output::Unknown;
    assert_ok(&[set(1, 0, 5, "1"), lost, unknown, get(2, 30, 40, Some("1"))]);
}

#[test]
fn concurrent_writes_observed_consistently() {
    let w1 = set(1, 0, 50, "1");
    let w2 = set(2, 0, 50, "2");
    // Order 1 then 2.
    assert_ok(&[
        w1.clone(),
        w2.clone(),
        get(3, 10, 20, Some("1")),
        get(3, 30, 40, Some("2")),
        get(3, 60, 70, Some("2")),
    ]);
    // Order 2 then 1.
    assert_ok(&[
        w1.clone(),
        w2.clone(),
        get(3, 10, 20, Some("2")),
        get(3, 30, 40, Some("1")),
        get(3, 60, 70, Some("1")),
    ]);
    // Either final value, as long as all later reads agree.
    for v in ["1", "2"] {
        assert_ok(&[
            w1.clone(),
            w2.clone(),
            get(3, 60, 70, Some(v)),
            get(4, 80, 90, Some(v)),
        ]);
    }
    // Flip-flopping after both writes completed is impossible.
    assert_illegal(&[
        w1.clone(),
        w2.clone(),
        get(3, 60, 70, Some("1")),
        get(3, 80, 90, Some("2")),
        get(3, 100, 110, Some("1")),
    ]);
    // Two readers disagreeing, in sequence, about the final value.
    assert_illegal(&[
        w1.clone(),
        w2.clone(),
        get(3, 60, 70, Some("2")),
        get(4, 80, 90, Some("1")),
    ]);
    // Flip-flopping during the writes is also impossible with one write of each.
    assert_illegal(&[
        w1,
        w2,
        get(3, 5, 10, Some("1")),
        get(3, 15, 20, Some("2")),
        get(3, 25, 30, Some("1")),
    ]);
}

#[test]
fn touching_intervals_are_concurrent() {
    // The read is called at the instant the write returns: treated as overlapping.
    assert_ok(&[set(1, 0, 10, "1"), get(2, 10, 20, None)]);
    assert_illegal(&[set(1, 0, 10, "1"), get(2, 11, 20, None)]);
}

#[test]
fn keys_are_independent() {
    let history = [
        on_key(set(1, 0, 10, "1"), "a"),
        on_key(set(2, 0, 10, "2"), "b"),
        on_key(get(3, 20, 30, Some("1")), "a"),
        on_key(get(3, 20, 30, Some("2")), "b"),
        on_key(get(3, 40, 50, None), "c"),
    ];
    assert_ok(&history);
    // A read of key b seeing key a's value is a violation on key b only.
    let mut bad = history.clone();
    bad[3] = on_key(get(3, 20, 30, Some("1")), "b");
    match check(&bad, BUDGET) {
        CheckResult::Illegal { key, .. } => assert_eq!(key, b"b"),
        other => panic!("expected Illegal, got {other:?}"),
    }
    // check_key ignores keys: as one register, a, b, a... is not linearizable.
    assert!(check_key(&history, BUDGET).is_illegal());
    assert!(check_key(&history[..1], BUDGET).is_ok());
}

#[test]
fn malformed_operations_are_reported() {
    let mut bad_reply = set(1, 0, 10, "1");
    bad_reply.output = Output::Value(None);
    assert!(check(&[bad_reply], BUDGET).is_illegal());
    let mut get_ok = get(1, 0, 10, None);
    get_ok.output = Output::Ok;
    assert!(check(&[get_ok], BUDGET).is_illegal());
    let backwards = set(1, 10, 5, "1");
    assert!(check(&[backwards], BUDGET).is_illegal());
}

#[test]
fn budget_exhaustion_is_unknown() {
    let history = [
        set(1, 0, 50, "1"),
        set(2, 0, 50, "2"),
        get(3, 10, 20, Some("1")),
        get(3, 30, 40, Some("2")),
        get(3, 60, 70, Some("2")),
    ];
    assert_eq!(check(&history, 1), CheckResult::Unknown);
    assert_eq!(check(&history, 0), CheckResult::Unknown);
    assert_eq!(check_key(&history, 1), CheckResult::Unknown);
    assert_eq!(check(&history, BUDGET), CheckResult::Ok);
    // The budget is shared across keys.
    let (history, _) = random_history(7, 600, 4, 8, 4);
    assert_eq!(check(&history, 50), CheckResult::Unknown);
}

/// SplitMix64: a small deterministic generator for test histories.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Simulates clients issuing overlapping operations against a real sequential store:
/// each operation takes effect at a random point inside its interval (some timed-out
/// writes never take effect at all) and outputs are computed by applying the operations
/// in that order. Written values are drawn from `distinct` values per key, or are all
/// different if `distinct` is 0. Returns the history and the indices of reads that
/// returned.
fn random_history(
    seed: u64,
    ops: usize,
    keys: u64,
    clients: u64,
    distinct: u64,
) -> (Vec<Operation>, Vec<usize>) {
    let mut rng = Rng(seed);
    let mut clock = vec![0u64; clients as usize];
    let mut history = Vec::with_capacity(ops);
    // (linearization point, history index); `None` for writes that never happen.
    let mut points: Vec<(u64, usize)> = Vec::with_capacity(ops);
    for i in 0..ops {
        let client = rng.below(clients);
        let call = clock[client as usize] + rng.below(5);
        let duration = 2 + rng.below(30);
        let ret = call + duration;
        clock[client as usize] = ret;
        let key = format!("key{}", rng.below(keys)).into_bytes();
        let input = match rng.below(10) {
            0..5 => Input::Get,
            5..9 if distinct == 0 => Input::Set(format!("v{i}").into_bytes()),
            5..9 => Input::Set(format!("v{}", rng.below(distinct)).into_bytes()),
            _ => Input::Delete,
        };
        let timed_out = rng.below(50) == 0;
        let takes_effect = !timed_out || (input != Input::Get && rng.below(2) == 0);
        if takes_effect {
            points.push((call + 1 + rng.below(duration - 1), i));
        }
        history.push(Operation {
            client,
            key,
            input,
            call,
            ret: (!timed_out).then_some(ret),
            output: if timed_out {
                Output::Unknown
            } else {
                Output::Ok
            },
        });
    }
    points.sort_unstable();
    let mut store: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    let mut reads = Vec::new();
    for (_, i) in points {
        let op = &mut history[i];
        match &op.input {
            Input::Get => {
                op.output = Output::Value(store.get(&op.key).cloned());
                reads.push(i);
            }
            Input::Set(v) => {
                store.insert(op.key.clone(), v.clone());
            }
            Input::Delete => {
                store.remove(&op.key);
            }
        }
    }
    (history, reads)
}

#[test]
fn random_valid_history_is_ok_and_a_mutation_is_caught() {
    let (mut history, reads) = random_history(42, 3000, 6, 16, 4);
    let pending = history.iter().filter(|op| op.is_timed_out()).count();
    assert!(
        pending > 10,
        "the history should include timed-out operations"
    );

    let start = Instant::now();
    assert_eq!(check(&history, 10_000_000), CheckResult::Ok);
    let elapsed = start.elapsed();
    assert!(
        elapsed.as_secs_f64() < 2.0,
        "valid history took {elapsed:?}"
    );

    // Corrupt one read in the middle of the history with a value nobody wrote.
    let victim = reads[reads.len() / 2];
    history[victim].output = Output::Value(Some(b"never written".to_vec()));
    let start = Instant::now();
    match check(&history, 10_000_000) {
        CheckResult::Illegal { key, explanation } => {
            assert_eq!(key, history[victim].key);
            assert!(explanation.contains("never written"), "{explanation}");
        }
        other => panic!("expected Illegal, got {other:?}"),
    }
    let elapsed = start.elapsed();
    assert!(
        elapsed.as_secs_f64() < 2.0,
        "mutated history took {elapsed:?}"
    );
}

#[test]
fn random_valid_histories_across_seeds() {
    for seed in 0..20 {
        let (history, _) = random_history(seed, 400, 2, 8, 3);
        assert_eq!(check(&history, 10_000_000), CheckResult::Ok, "seed {seed}");
    }
}

#[test]
fn random_history_with_many_operations_in_flight_on_one_key() {
    // About a dozen operations on the key are in flight at any time.
    for distinct in [0, 4] {
        let (mut history, reads) = random_history(9, 800, 1, 12, distinct);
        assert_eq!(check(&history, 10_000_000), CheckResult::Ok);
        let victim = reads[reads.len() / 3];
        history[victim].output = Output::Value(Some(b"never written".to_vec()));
        assert!(check(&history, 10_000_000).is_illegal());
    }
}

/// Decides linearizability of a small single-register history by trying every order.
fn brute_force(history: &[Operation]) -> bool {
    fn search(history: &[Operation], placed: &mut Vec<bool>, state: Option<&[u8]>) -> bool {
        let mut all_done = true;
        for (i, op) in history.iter().enumerate() {
            if placed[i] {
                continue;
            }
            all_done &= op.is_timed_out();
            // Some unplaced operation returned before this one was called.
            let blocked = history.iter().enumerate().any(|(j, other)| {
                !placed[j] && !other.is_timed_out() && other.ret.unwrap() < op.call
            });
            if blocked {
                continue;
            }
            let next = match (&op.input, &op.output) {
                (Input::Get, Output::Value(v)) if v.as_deref() == state => state,
                (Input::Get, _) => continue,
                (Input::Set(v), _) => Some(v.as_slice()),
                (Input::Delete, _) => None,
            };
            placed[i] = true;
            let found = search(history, placed, next);
            placed[i] = false;
            if found {
                return true;
            }
        }
        all_done
    }
    let history: Vec<Operation> = history
        .iter()
        .filter(|op| !(op.input == Input::Get && op.is_timed_out()))
        .cloned()
        .collect();
    search(&history, &mut vec![false; history.len()], None)
}

#[test]
fn agrees_with_brute_force_on_small_random_histories() {
    let mut rng = Rng(1);
    let (mut legal, mut illegal) = (0, 0);
    for _ in 0..3000 {
        let len = 1 + rng.below(7) as usize;
        let history: Vec<Operation> = (0..len)
            .map(|i| {
                let call = rng.below(20);
                let value = |rng: &mut Rng| {
                    let v = rng.below(3);
                    (v > 0).then(|| vec![b'0' + v as u8])
                };
                let mut op = match rng.below(3) {
                    0 => get(i as u64, call, 0, None),
                    1 => set(i as u64, call, 0, "0"),
                    _ => delete(i as u64, call, 0),
                };
                match &mut op.input {
                    Input::Get => op.output = Output::Value(value(&mut rng)),
                    Input::Set(v) => *v = value(&mut rng).unwrap_or(b"1".to_vec()),
                    Input::Delete => {}
                }
                op.ret = Some(call + rng.below(10));
                if rng.below(6) == 0 {
                    op = timed_out(op);
                }
                op
            })
            .collect();
        let expected = brute_force(&history);
        let result = check(&history, BUDGET);
        assert_eq!(result.is_ok(), expected, "{result:?} for {history:#?}");
        assert!(!result.is_unknown());
        if expected {
            legal += 1;
        } else {
            illegal += 1;
        }
    }
    assert!(
        legal > 300 && illegal > 300,
        "{legal} legal, {illegal} illegal"
    );
}

#[test]
fn show_bytes_is_readable() {
    assert_eq!(show_bytes(b"abc"), "\"abc\"");
    assert_eq!(show_bytes(&[0, 255]), "0x00ff");
    assert!(show_bytes(&[b'x'; 100]).ends_with("..."));
}
