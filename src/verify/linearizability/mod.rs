//! A linearizability checker for key-value histories.
//!
//! A *history* is the list of operations that clients issued against the store, each with
//! the time it was called, the time its reply arrived (if it ever did) and what the reply
//! said. The history is *linearizable* if every operation can be assigned a single instant
//! between its call and its return, such that replaying the operations one at a time in that
//! order against a sequential model reproduces every observed reply.
//!
//! # Model
//!
//! Every key is an independent register holding `Option<value>`; keys start absent (`None`).
//! `Set(v)` stores `Some(v)`, `Delete` stores `None`, and `Get` returns the current contents.
//! Writes reply [`Output::Ok`]; reads reply [`Output::Value`].
//!
//! # Per-key decomposition
//!
//! Linearizability is *compositional* (Herlihy & Wing): a history over several objects is
//! linearizable iff the sub-history of each object is. [`check`] therefore partitions the
//! history by key and checks each register on its own, smallest sub-history first so that a
//! violation in a small key is found before the step budget is spent on a large one. This
//! turns one search over the interleavings of every operation into many much smaller searches.
//!
//! # Timed-out operations
//!
//! An operation is *timed out* when it never returned (`ret: None`) or its reply is
//! [`Output::Unknown`]. Its effect is unknown: the request may have been lost, or it may have
//! been applied, possibly long after the client gave up. A timed-out operation is modelled as
//! having an infinite return time: it may take effect at any instant after its call, or never.
//! The result of a timed-out `Get` is unconstrained, so such reads are simply dropped. A
//! timed-out write that never takes effect is equivalent to one that takes effect after every
//! other operation, so the search succeeds as soon as every operation that *did* return has
//! been linearized; pending writes left over are fine.
//!
//! # Algorithm
//!
//! This is the Wing & Gong search with Lowe's memoization, as in Porcupine, plus pruning
//! rules specific to registers:
//!
//! 1. Each operation contributes a *call* entry and a *return* entry. All entries are sorted by
//!    time (calls before returns at equal times, so operations whose intervals merely touch
//!    are treated as concurrent; infinite returns sort last) into a doubly linked list.
//! 2. A depth-first search builds a linearization one operation at a time. At each node the
//!    *candidates* are the operations whose call entries precede the first return entry
//!    still in the list: an operation called after some remaining operation returned must
//!    follow it. Linearizing a candidate that the model accepts *lifts* its two entries out
//!    of the list and descends; when a node has no candidate left to try, the search
//!    backtracks, re-inserting the last operation's entries (dancing-links style) and trying
//!    the next candidate of the node above.
//! 3. Every (set of linearized operations, model state) pair that is reached is stored in a
//!    hash set, with the set as a compact bitset. Reaching a known pair again is pruned: the
//!    remainder of the search depends only on that pair, not on the order that produced it.
//! 4. Candidates are pruned with rules that keep the search complete, because any
//!    linearization can be rearranged to fit them: a read that sees the current state is
//!    linearized at once without branching; a write whose value no remaining read observes
//!    is linearized as soon as some write must be (a timed-out one is dropped); among writes
//!    leaving the same state only the earliest-returning one is tried. The other writes are
//!    tried first if a concurrent read is waiting for their value. Without these rules a
//!    plain Porcupine search drowns in the interleavings of reads once a dozen operations on
//!    one key are in flight at once; with them, valid histories are usually checked with
//!    next to no backtracking.
//!
//! The search is exponential in the worst case (checking a register with repeated values is
//! NP-complete), so every list entry examined and every candidate tried counts as one step
//! against a caller-supplied budget; when it runs out the answer is [`CheckResult::Unknown`].
//! Memory grows with the number of distinct pairs memoized, which is at most the steps taken.
//! When no linearization exists, the explanation names the longest prefix the search managed
//! to linearize and the operation that could not be placed after it.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

/// What an operation asked the store to do.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Input {
    Get,
    Set(Vec<u8>),
    Delete,
}

/// What the client observed in reply.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Output {
    /// The reply to a `Get`: the value read, or `None` if the key was absent.
    Value(Option<Vec<u8>>),
    /// The acknowledgement of a `Set` or `Delete`.
    Ok,
    /// No usable reply (timed out, connection lost): the operation may or may not have taken
    /// effect, and a `Get`'s result is unconstrained.
    Unknown,
}

/// One client operation on one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    pub client: u64,
    pub key: Vec<u8>,
    pub input: Input,
    /// When the request was issued.
    pub call: u64,
    /// When the reply arrived; `None` if it never did (treated as returning at +infinity).
    pub ret: Option<u64>,
    pub output: Output,
}

impl Operation {
    /// True if the outcome of this operation is unknown: no reply, or an `Unknown` reply.
    pub fn is_timed_out(&self) -> bool {
        self.ret.is_none() || self.output == Output::Unknown
    }
}

/// The verdict of a check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckResult {
    /// The history is linearizable.
    Ok,
    /// The sub-history of `key` is not linearizable (or contains a malformed operation).
    Illegal { key: Vec<u8>, explanation: String },
    /// The step budget ran out before the search reached a verdict.
    Unknown,
}

impl CheckResult {
    pub fn is_ok(&self) -> bool {
        matches!(self, CheckResult::Ok)
    }

    pub fn is_illegal(&self) -> bool {
        matches!(self, CheckResult::Illegal { .. })
    }

    pub fn is_unknown(&self) -> bool {
        matches!(self, CheckResult::Unknown)
    }
}

/// Checks a whole history, key by key, spending at most `budget` search steps in total.
///
/// Keys are checked smallest sub-history first and the first violation found is returned.
/// If the budget runs out before every key has been decided, the result is
/// [`CheckResult::Unknown`].
pub fn check(history: &[Operation], budget: u64) -> CheckResult {
    let mut by_key: HashMap<&[u8], Vec<usize>> = HashMap::new();
    for (i, op) in history.iter().enumerate() {
        by_key.entry(op.key.as_slice()).or_default().push(i);
    }
    let mut groups: Vec<(&[u8], Vec<usize>)> = by_key.into_iter().collect();
    groups.sort_by(|a, b| a.1.len().cmp(&b.1.len()).then_with(|| a.0.cmp(b.0)));

    let mut remaining = budget;
    for (key, indices) in &groups {
        match check_register(history, key, indices, &mut remaining) {
            CheckResult::Ok => {}
            verdict => return verdict,
        }
    }
    CheckResult::Ok
}

/// Checks `ops` as the history of a single register, ignoring their `key` fields (the key
/// of the first operation is used in the report).
pub fn check_key(ops: &[Operation], budget: u64) -> CheckResult {
    let key = ops.first().map(|op| op.key.as_slice()).unwrap_or(&[]);
    let indices: Vec<usize> = (0..ops.len()).collect();
    let mut remaining = budget;
    check_register(ops, key, &indices, &mut remaining)
}

/// Interned register contents: `ABSENT` is `None`, `n > 0` is the `n`-th distinct value.
type State = u32;
const ABSENT: State = 0;

/// Sentinel "no entry" link.
const NIL: usize = usize::MAX;
/// The list head sentinel lives at entry index 0.
const HEAD: usize = 0;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    /// A read that observed this state.
    Get(State),
    /// A write that leaves this state (`ABSENT` for a delete).
    Put(State),
}

#[derive(Clone, Copy, Debug)]
struct RegisterOp {
    /// Index into the caller's history, for reporting.
    origin: usize,
    action: Action,
    /// Timed-out write: may take effect any time after its call, or never.
    pending: bool,
}

impl Action {
    fn step(self, state: State) -> Option<State> {
        match self {
            Action::Get(observed) => (observed == state).then_some(state),
            Action::Put(next) => Some(next),
        }
    }
}

/// The entries of the call/return list, with links stored in parallel arrays.
struct EntryList {
    next: Vec<usize>,
    prev: Vec<usize>,
    /// Operation index of each entry (unused for the head).
    op: Vec<usize>,
    /// For a call entry, the index of its return entry; `NIL` for return entries.
    matching: Vec<usize>,
}

impl EntryList {
    /// Builds the time-ordered list; entries are numbered in list order after the head.
    fn build(history: &[Operation], ops: &[RegisterOp]) -> Self {
        // (infinite, time, is_return, op): calls sort before returns at equal times.
        let mut events: Vec<(bool, u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
        for (i, op) in ops.iter().enumerate() {
            let h = &history[op.origin];
            events.push((false, h.call, false, i));
            match (op.pending, h.ret) {
                (false, Some(ret)) => events.push((false, ret, true, i)),
                _ => events.push((true, 0, true, i)),
            }
        }
        events.sort_unstable();

        let len = events.len() + 1;
        let mut list = EntryList {
            next: vec![NIL; len],
            prev: vec![NIL; len],
            op: vec![NIL; len],
            matching: vec![NIL; len],
        };
        let mut call_entry = vec![NIL; ops.len()];
        for (pos, &(_, _, is_return, op)) in events.iter().enumerate() {
            let e = pos + 1;
            list.prev[e] = e - 1;
            list.next[e - 1] = e;
            list.op[e] = op;
            if is_return {
                list.matching[call_entry[op]] = e;
            } else {
                call_entry[op] = e;
            }
        }
        list
    }

    fn is_call(&self, e: usize) -> bool {
        self.matching[e] != NIL
    }

    /// Removes a call entry and its return entry from the list.
    fn lift(&mut self, call: usize) {
        let (p, n) = (self.prev[call], self.next[call]);
        self.next[p] = n;
        self.prev[n] = p; // a call is always followed by at least its own return
        let ret = self.matching[call];
        let (p, n) = (self.prev[ret], self.next[ret]);
        self.next[p] = n;
        if n != NIL {
            self.prev[n] = p;
        }
    }

    /// Undoes [`EntryList::lift`]; must be applied in the reverse order of lifting.
    fn unlift(&mut self, call: usize) {
        let ret = self.matching[call];
        let (p, n) = (self.prev[ret], self.next[ret]);
        self.next[p] = ret;
        if n != NIL {
            self.prev[n] = ret;
        }
        let (p, n) = (self.prev[call], self.next[call]);
        self.next[p] = call;
        self.prev[n] = call;
    }
}

/// The deepest point at which the search got stuck, for the explanation.
struct Stuck {
    depth: usize,
    /// The operation whose return was reached without it being linearized.
    op: usize,
    state: State,
    /// The last few linearized operations before getting stuck, oldest first.
    tail: Vec<usize>,
}

fn check_register<'a>(
    history: &'a [Operation],
    key: &[u8],
    indices: &[usize],
    budget: &mut u64,
) -> CheckResult {
    let illegal = |explanation: String| CheckResult::Illegal {
        key: key.to_vec(),
        explanation,
    };

    // Intern values and translate operations; drop reads whose result is unconstrained.
    let mut values: Vec<&'a [u8]> = vec![&[]];
    let mut ids: HashMap<&'a [u8], State> = HashMap::new();
    let mut intern = |v: Option<&'a [u8]>| -> State {
        match v {
            None => ABSENT,
            Some(v) => *ids.entry(v).or_insert_with(|| {
                values.push(v);
                (values.len() - 1) as State
            }),
        }
    };
    let mut ops = Vec::with_capacity(indices.len());
    for &i in indices {
        let h = &history[i];
        if let Some(ret) = h.ret
            && ret < h.call
        {
            return illegal(format!(
                "malformed operation {}: returns before it is called",
                describe(history, i)
            ));
        }
        let action = match (&h.input, &h.output) {
            (Input::Get, Output::Unknown) => continue,
            (Input::Get, Output::Value(_)) if h.ret.is_none() => continue,
            (Input::Get, Output::Value(v)) => Action::Get(intern(v.as_deref())),
            (Input::Set(v), Output::Ok | Output::Unknown) => Action::Put(intern(Some(v))),
            (Input::Delete, Output::Ok | Output::Unknown) => Action::Put(ABSENT),
            _ => {
                return illegal(format!(
                    "malformed operation {}: reply does not match the request",
                    describe(history, i)
                ));
            }
        };
        ops.push(RegisterOp {
            origin: i,
            action,
            pending: h.is_timed_out(),
        });
    }

    // Number operations in return order (timed-out ones last) so that the linearized set is
    // a run of ones followed by a short, sparse tail; see `Search::linearize`.
    ops.sort_by_key(|op| match (op.pending, history[op.origin].ret) {
        (false, Some(ret)) => (false, ret),
        _ => (true, 0),
    });
    let remaining = ops.iter().filter(|op| !op.pending).count();
    if remaining == 0 {
        return CheckResult::Ok;
    }

    let mut search = Search::new(history, &ops, values.len(), remaining);
    match search.run(budget) {
        Some(true) => CheckResult::Ok,
        Some(false) => illegal(explain(history, key, &ops, &values, search.stuck)),
        None => CheckResult::Unknown,
    }
}

/// One node of the search: the operations that may be linearized next at it.
struct Level {
    /// Where this node's candidates start in [`Search::pool`].
    start: usize,
    /// The next candidate to try.
    next: usize,
}

/// One linearized operation on the current path.
struct Step {
    /// Its call entry.
    entry: usize,
    /// The model state before it.
    state: State,
}

/// The depth-first search over one register's history.
struct Search<'o> {
    ops: &'o [RegisterOp],
    list: EntryList,
    /// Bitset of linearized operations.
    linearized: Vec<u64>,
    /// Every (linearized set, state) pair reached so far, the set in the compact form made
    /// by [`Search::linearize`].
    visited: HashSet<(u32, Box<[u64]>, State)>,
    /// The operations linearized so far, in order.
    path: Vec<Step>,
    /// The nodes on the current path: `levels.len() == path.len() + 1`.
    levels: Vec<Level>,
    /// Candidate call entries of every level, concatenated.
    pool: Vec<usize>,
    state: State,
    /// Per state, how many unlinearized reads observe it.
    readers: Vec<u32>,
    /// Operations that returned and are not yet linearized.
    remaining: usize,
    stuck: Option<Stuck>,
}

impl<'o> Search<'o> {
    fn new(history: &[Operation], ops: &'o [RegisterOp], states: usize, remaining: usize) -> Self {
        let mut readers = vec![0; states];
        for op in ops {
            if let Action::Get(observed) = op.action {
                readers[observed as usize] += 1;
            }
        }
        Search {
            ops,
            list: EntryList::build(history, ops),
            linearized: vec![0u64; ops.len().div_ceil(64)],
            visited: HashSet::new(),
            path: Vec::new(),
            levels: Vec::new(),
            pool: Vec::new(),
            state: ABSENT,
            readers,
            remaining,
            stuck: None,
        }
    }

    /// Returns whether a linearization exists, or `None` if the budget ran out first.
    fn run(&mut self, budget: &mut u64) -> Option<bool> {
        if self.remaining == 0 {
            return Some(true);
        }
        self.open(budget)?;
        loop {
            if *budget == 0 {
                return None;
            }
            *budget -= 1;
            let level = self
                .levels
                .last_mut()
                .expect("the root level is never popped");
            if level.next < self.pool.len() {
                let entry = self.pool[level.next];
                level.next += 1;
                if self.linearize(entry) {
                    if self.remaining == 0 {
                        return Some(true);
                    }
                    self.open(budget)?;
                }
            } else {
                self.record_stuck();
                if self.path.is_empty() {
                    return Some(false);
                }
                self.close();
            }
        }
    }

    /// Pushes a level for the current node with its candidates in the order to try them.
    ///
    /// The candidates are the operations called before the first remaining return entry;
    /// anything called later must come after that operation. Reads that disagree with the
    /// current state are never candidates, and three rules prune the rest, each because
    /// any linearization of the remaining operations can be rearranged to fit the rule:
    ///
    /// - A *safe read*, one observing the current state, can go first: moving it to the
    ///   front of any linearization keeps every read correct (it changes no state and sees
    ///   the current one) and respects real time (being a candidate, it was called before
    ///   any remaining operation returned). It is then the only candidate tried.
    /// - Otherwise every linearization starts with a write. A *dead write*, one whose value
    ///   no remaining read observes, is always directly followed by another write or last,
    ///   so it can be moved to the front (the next write hides it again). It is then the
    ///   only candidate tried, and a timed-out dead write is not needed at all.
    /// - Of several candidate writes leaving the same state, only the one that returns first
    ///   is tried: swapping it with another one keeps every state and real-time order.
    ///
    /// The remaining writes are ordered by how soon a candidate read needs their value, then
    /// by their own return.
    fn open(&mut self, budget: &mut u64) -> Option<()> {
        let start = self.pool.len();
        // (candidate entry, resulting state, return entry)
        let mut writes: Vec<(usize, State, usize)> = Vec::new();
        // (observed state, return entry) of candidate reads
        let mut reads: Vec<(State, usize)> = Vec::new();
        let mut dead = None;
        let mut entry = self.list.next[HEAD];
        while entry != NIL && self.list.is_call(entry) {
            if *budget == 0 {
                return None;
            }
            *budget -= 1;
            let op = &self.ops[self.list.op[entry]];
            let ret = self.list.matching[entry];
            match op.action {
                Action::Get(observed) if observed == self.state => {
                    self.pool.push(entry);
                    self.levels.push(Level { start, next: start });
                    return Some(());
                }
                Action::Get(observed) => reads.push((observed, ret)),
                Action::Put(next) if self.readers[next as usize] == 0 => {
                    if !op.pending && dead.is_none() {
                        dead = Some(entry);
                    }
                }
                Action::Put(next) => match writes.iter_mut().find(|w| w.1 == next) {
                    Some(w) if w.2 > ret => *w = (entry, next, ret),
                    Some(_) => {}
                    None => writes.push((entry, next, ret)),
                },
            }
            entry = self.list.next[entry];
        }
        if let Some(dead) = dead {
            self.pool.push(dead);
        } else {
            // Return entries are numbered in time order, so comparing them compares times.
            let wanted = |state: State| {
                reads
                    .iter()
                    .filter(|r| r.0 == state)
                    .map(|r| r.1)
                    .min()
                    .unwrap_or(NIL)
            };
            writes.sort_by_key(|w| (wanted(w.1), w.2));
            self.pool.extend(writes.iter().map(|w| w.0));
        }
        self.levels.push(Level { start, next: start });
        Some(())
    }

    /// Pops the current level and undoes the operation that led to it.
    fn close(&mut self) {
        let level = self.levels.pop().expect("a level to close");
        self.pool.truncate(level.start);
        let step = self.path.pop().expect("a step to undo");
        let op = self.list.op[step.entry];
        self.state = step.state;
        self.linearized[op / 64] &= !(1 << (op % 64));
        self.list.unlift(step.entry);
        if let Action::Get(observed) = self.ops[op].action {
            self.readers[observed as usize] += 1;
        }
        if !self.ops[op].pending {
            self.remaining += 1;
        }
    }

    /// Tries to linearize the operation of call entry `entry` next. Fails if the model
    /// rejects it or the resulting (set, state) pair was already reached.
    fn linearize(&mut self, entry: usize) -> bool {
        let op = self.list.op[entry];
        let Some(next_state) = self.ops[op].action.step(self.state) else {
            return false;
        };
        // Store the set exactly but compactly: the index of the first word that is not all
        // ones, and the words from there to the last nonzero one. Operations are numbered in
        // return order, and a linearized operation implies that every operation which
        // returned before it was called is linearized too, so the bitset is all ones up to a
        // frontier followed by a few bits for operations concurrent with it.
        self.linearized[op / 64] |= 1 << (op % 64);
        let first = self
            .linearized
            .iter()
            .position(|w| *w != !0)
            .unwrap_or(self.linearized.len());
        let last = self
            .linearized
            .iter()
            .rposition(|w| *w != 0)
            .map_or(first, |i| (i + 1).max(first));
        let key = (
            first as u32,
            Box::<[u64]>::from(&self.linearized[first..last]),
            next_state,
        );
        if !self.visited.insert(key) {
            self.linearized[op / 64] &= !(1 << (op % 64));
            return false;
        }
        self.path.push(Step {
            entry,
            state: self.state,
        });
        self.state = next_state;
        self.list.lift(entry);
        if let Action::Get(observed) = self.ops[op].action {
            self.readers[observed as usize] -= 1;
        }
        if !self.ops[op].pending {
            self.remaining -= 1;
        }
        true
    }

    /// Remembers the deepest node from which no candidate could be linearized.
    fn record_stuck(&mut self) {
        let depth = self.path.len();
        if self.stuck.as_ref().is_some_and(|s| s.depth >= depth) {
            return;
        }
        // The first remaining return entry: that operation cannot be linearized in time.
        let mut bound = self.list.next[HEAD];
        while bound != NIL && self.list.is_call(bound) {
            bound = self.list.next[bound];
        }
        if bound == NIL {
            return;
        }
        self.stuck = Some(Stuck {
            depth,
            op: self.list.op[bound],
            state: self.state,
            tail: self
                .path
                .iter()
                .rev()
                .take(3)
                .rev()
                .map(|step| self.list.op[step.entry])
                .collect(),
        });
    }
}

fn explain(
    history: &[Operation],
    key: &[u8],
    ops: &[RegisterOp],
    values: &[&[u8]],
    stuck: Option<Stuck>,
) -> String {
    let mut out = format!(
        "key {}: no linearization of its {} operations exists",
        show_bytes(key),
        ops.len()
    );
    let Some(stuck) = stuck else {
        return out;
    };
    let state = match stuck.state {
        ABSENT => "absent".to_string(),
        v => show_bytes(values[v as usize]),
    };
    let _ = write!(
        out,
        "; the search got furthest after linearizing {} operation(s)",
        stuck.depth
    );
    if !stuck.tail.is_empty() {
        let ellipsis = if stuck.depth > stuck.tail.len() {
            "..., "
        } else {
            ""
        };
        let tail: Vec<String> = stuck
            .tail
            .iter()
            .map(|&op| describe(history, ops[op].origin))
            .collect();
        let _ = write!(out, " ({ellipsis}{})", tail.join(", "));
    }
    let _ = write!(
        out,
        ", leaving the value {state}, where {} cannot take effect before it returns",
        describe(history, ops[stuck.op].origin)
    );
    out
}

/// A short description of `history[i]`, e.g. `#7 client 2 Get -> "a" [10, 20]`.
fn describe(history: &[Operation], i: usize) -> String {
    let op = &history[i];
    let input = match &op.input {
        Input::Get => "Get".to_string(),
        Input::Set(v) => format!("Set({})", show_bytes(v)),
        Input::Delete => "Delete".to_string(),
    };
    let output = match &op.output {
        Output::Value(None) => "absent".to_string(),
        Output::Value(Some(v)) => show_bytes(v),
        Output::Ok => "ok".to_string(),
        Output::Unknown => "unknown".to_string(),
    };
    let ret = match op.ret {
        Some(t) => t.to_string(),
        None => "never".to_string(),
    };
    format!(
        "#{i} client {} {input} -> {output} [{}, {ret}]",
        op.client, op.call
    )
}

/// Quoted text if the bytes are short printable ASCII, hex otherwise.
fn show_bytes(bytes: &[u8]) -> String {
    const MAX: usize = 24;
    if bytes.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        if bytes.len() <= MAX {
            format!("{:?}", String::from_utf8_lossy(bytes))
        } else {
            format!("{:?}...", String::from_utf8_lossy(&bytes[..MAX]))
        }
    } else {
        let mut out = String::from("0x");
        for b in bytes.iter().take(MAX / 2) {
            let _ = write!(out, "{b:02x}");
        }
        if bytes.len() > MAX / 2 {
            out.push_str("...");
        }
        out
    }
}

#[cfg(test)]
mod tests;
