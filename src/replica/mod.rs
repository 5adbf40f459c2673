//! The replica core: one node's replication logic as a state machine with no threads,
//! channels, atomics, sockets or clock reads.
//!
//! It owns the node's [`RaftNode`] and does, per call:
//! - **seal → propose**: the windows of writes gathered since the last seal become one
//!   Raft entry ([`Replica::seal`]); a full disk or a lost leadership fails them at once;
//! - **ready → send → persist → apply**: [`Replica::ready`] hands out the messages that
//!   may leave before this node's own write (the leader's AppendEntries), and
//!   [`Replica::persist_and_apply`] makes the entries durable, hands out the messages that
//!   promise durability and completes every window whose entry was applied;
//! - **reads**: in lease mode a ReadIndex round every heartbeat renews a lease during
//!   which the leader serves reads locally; in index mode a round per window confirms the
//!   reads waiting for it ([`Replica::start_read_round`]).
//!
//! Time comes in as a parameter: `now` is how long this node's monotonic clock has run
//! since it started. Disk IO goes through the engine's `Backend`; messages go out in the
//! returned [`ReplicaOutput`]. The server's replication thread drives it with real time,
//! sockets and disks (`crate::server::replication`); the simulator drives the very same
//! code with simulated ones (`crate::verify::sim`).
//!
//! What it reports is outcomes ([`WriteOutcome`], [`ReadDecision`]), never wire statuses:
//! the shard maps them to the client protocol.

pub mod conditional;
pub mod dedup;

use crate::consensus::membership::{Change, Membership};
use crate::consensus::{ChangeError, Event, FatalError, Output, ProposeError, RaftNode};
use crate::ids::LogIndex;
use crate::storage::engine::{EngineError, Outcome, Reclaimed};
use crate::storage::log;
use crate::storage::snapshot::SnapshotSource;
use crate::storage::store::CheckpointJob;
use raft::eraftpb::Message;
use std::collections::HashMap;
use std::time::Duration;

/// Marks a read context as a lease round (index-mode rounds carry their epoch).
const LEASE_CTX: u64 = 1 << 63;

/// How linearizable reads are confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReadMode {
    /// Leader lease renewed by a quorum round every heartbeat (assumes bounded drift).
    Lease,
    /// One ReadIndex quorum round per window for the GETs waiting (no clock assumption).
    Index,
}

/// Settings of the replica core.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// One Raft tick.
    pub tick: Duration,
    /// Election timeout floor in ticks (raft-rs's `election_tick`): the lease's basis.
    pub election_ticks: usize,
    /// Fraction of the election timeout a lease lasts (covers clock drift between nodes).
    pub lease_fraction: f64,
    pub read_mode: ReadMode,
    /// A read round still unanswered after this is issued again (raft-rs drops a read
    /// silently, e.g. before a new leader has committed in its term).
    pub read_round_retry: Duration,
    /// Log a SET that the next write of its key in the same entry sets again as a NOP
    /// keeping its session ([`dedup`]).
    pub drop_overwritten_sets: bool,
}

impl ReplicaConfig {
    /// How long a confirmed lease lasts past the start of its round.
    pub fn lease(&self) -> Duration {
        self.tick
            .mul_f64(self.election_ticks as f64 * self.lease_fraction)
    }
}

/// The commands (in log encoding) gathered by one shard since the last seal, with what is
/// needed to answer each of them (`R`: a client address, a simulated request).
#[derive(Debug)]
pub struct Window<R> {
    pub commands: Vec<u8>,
    pub replies: Vec<R>,
    /// Whether `commands` holds window-only (conditional) commands, which sealing
    /// resolves into log commands ([`conditional`]).
    pub conditional: bool,
    /// After sealing: the answers of the conditional commands, by place in the window.
    pub results: Vec<(usize, conditional::Resolved)>,
}

impl<R> Default for Window<R> {
    fn default() -> Window<R> {
        Window {
            commands: Vec::new(),
            replies: Vec::new(),
            conditional: false,
            results: Vec::new(),
        }
    }
}

impl<R> Window<R> {
    pub fn is_empty(&self) -> bool {
        self.replies.is_empty()
    }

    pub fn clear(&mut self) {
        self.commands.clear();
        self.replies.clear();
        self.conditional = false;
        self.results.clear();
    }
}

/// The commands of the entries proposed and not yet applied (`pending`, by proposal tag),
/// in the order they were proposed.
fn in_flight_commands<R>(pending: &HashMap<u64, Vec<Window<R>>>) -> Vec<&[u8]> {
    let mut tags: Vec<&u64> = pending.keys().collect();
    tags.sort_unstable();
    tags.into_iter()
        .flat_map(|t| pending[t].iter().map(|w| &w.commands[..]))
        .collect()
}

/// Whether a shard's window of `bytes` has reached the cap and should be sealed now
/// rather than at the end of the batch window.
pub fn window_is_full(bytes: usize, bytes_max: usize) -> bool {
    bytes >= bytes_max
}

/// What became of a sealed batch of windows. Every write in it shares the fate of the
/// one entry that carried them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Committed and applied.
    Applied,
    /// Not committed through this node (not the leader, or it lost leadership). It may
    /// still commit elsewhere: clients retry, and sessions keep a retry from applying
    /// twice.
    NotLeader,
    /// Too much is uncommitted: back off.
    Busy,
    /// The disk is full: nothing was written.
    NoSpace,
    /// The disk failed: nothing was written.
    Failed,
}

/// Windows handed back with their outcome (or, when `outcome` is `None`, returned
/// unused because they held nothing).
#[derive(Debug)]
pub struct Completed<R> {
    pub windows: Vec<Window<R>>,
    pub outcome: Option<WriteOutcome>,
    /// Commands the entry held (0 when it was not applied).
    pub applied_commands: u64,
    /// What applying did to each command, in the windows' order (empty when the entry
    /// was not applied).
    pub outcomes: Vec<Outcome>,
}

/// What the driver must do after a call.
pub struct ReplicaOutput<R> {
    /// Raft messages to send, in order.
    pub messages: Vec<Message>,
    /// Windows to hand back to their shards (in shard order inside each).
    pub completed: Vec<Completed<R>>,
    /// Snapshots to stream, each followed by its message; the driver reports how each
    /// fared ([`crate::consensus::RaftNode::report_snapshot`]).
    pub snapshots: Vec<(Message, SnapshotSource)>,
    /// Membership changes proposed here that are settled: (tag, how).
    pub changes: Vec<(u64, ChangeOutcome)>,
    /// The membership, when a change or a snapshot made a new one: the driver connects
    /// to new members and drops removed ones.
    pub membership: Option<Membership>,
}

/// How a membership change this node proposed ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeOutcome {
    /// Committed and made, at this index.
    Made(LogIndex),
    /// Committed, but the membership it met refused it (nothing changed).
    Refused,
    /// Will not commit through this node (leadership lost); it may still commit elsewhere.
    Dropped,
}

impl<R> Default for ReplicaOutput<R> {
    fn default() -> ReplicaOutput<R> {
        ReplicaOutput {
            messages: Vec::new(),
            completed: Vec::new(),
            snapshots: Vec::new(),
            changes: Vec::new(),
            membership: None,
        }
    }
}

/// How a GET that arrives now is to be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadDecision {
    /// Read the map now: the lease holds.
    Serve,
    /// Wait for the ReadIndex round of epoch `epoch` (index mode).
    Wait { epoch: u64 },
    /// Not the leader: redirect.
    NotLeader,
    /// The leader's lease is not confirmed yet, or too many reads wait: retry shortly.
    Busy,
}

/// What a shard knows of the replica when a GET arrives (published by the replica's
/// driver; a shard may see it slightly late, which only makes it more cautious).
#[derive(Debug, Clone, Copy)]
pub struct ReadView {
    pub read_mode: ReadMode,
    pub is_leader: bool,
    /// Reads may be served locally while `now` is before this (lease mode).
    pub lease_until: Duration,
    /// The epoch of the next index-mode round not yet started.
    pub read_epoch_next: u64,
}

/// Decides how a GET arriving at `now` is served. `waiting` is how many reads already
/// wait for a round on this shard, `waiting_max` the bound on them.
pub fn decide_read(
    view: &ReadView,
    now: Duration,
    waiting: usize,
    waiting_max: usize,
) -> ReadDecision {
    if !view.is_leader {
        return ReadDecision::NotLeader;
    }
    match view.read_mode {
        ReadMode::Lease if now < view.lease_until => ReadDecision::Serve,
        ReadMode::Lease => ReadDecision::Busy,
        ReadMode::Index if waiting >= waiting_max => ReadDecision::Busy,
        // A round issued from now on covers this read: the driver takes the epoch for a
        // round before it asks raft for it.
        ReadMode::Index => ReadDecision::Wait {
            epoch: view.read_epoch_next,
        },
    }
}

/// Reads waiting for their ReadIndex round, with what is needed to answer them.
#[derive(Debug)]
pub struct WaitingReads<R> {
    reads: Vec<(u64, R)>,
}

impl<R> Default for WaitingReads<R> {
    fn default() -> WaitingReads<R> {
        WaitingReads { reads: Vec::new() }
    }
}

impl<R> WaitingReads<R> {
    pub fn len(&self) -> usize {
        self.reads.len()
    }

    pub fn is_empty(&self) -> bool {
        self.reads.is_empty()
    }

    pub fn push(&mut self, epoch: u64, read: R) {
        self.reads.push((epoch, read));
    }

    /// Takes the reads that can be answered: every read when this node is no longer the
    /// leader (`serve` false: they are redirected), else those whose round is done
    /// (`epoch <= epoch_done`). Returns them and whether reads are still waiting.
    pub fn take_ready(&mut self, is_leader: bool, epoch_done: u64) -> (Vec<R>, bool) {
        if !is_leader {
            return (self.reads.drain(..).map(|(_, r)| r).collect(), false);
        }
        let (ready, still): (Vec<_>, Vec<_>) = self
            .reads
            .drain(..)
            .partition(|(epoch, _)| *epoch <= epoch_done);
        self.reads = still;
        (
            ready.into_iter().map(|(_, r)| r).collect(),
            !self.reads.is_empty(),
        )
    }
}

/// One node's replica core.
pub struct Replica<R> {
    node: RaftNode,
    config: ReplicaConfig,
    /// Sealed windows whose entry was proposed, by proposal tag.
    pending: HashMap<u64, Vec<Window<R>>>,
    /// Membership changes proposed, by tag.
    pending_changes: std::collections::HashSet<u64>,
    next_tag: u64,
    entry: Vec<u8>,
    /// Space [`dedup::drop_overwritten_sets`] rewrites an entry into.
    dedup_scratch: Vec<u8>,
    /// SETs dropped that way since start.
    dropped_sets: u64,
    /// The lease round in flight: (context, when it was issued).
    lease_round: Option<(u64, Duration)>,
    /// The index-mode round in flight: (epoch, when it was issued).
    read_round: Option<(u64, Duration)>,
    lease_until: Duration,
    read_epoch_done: u64,
    /// Reads waited for a round that was dropped: the driver should start another.
    read_round_lost: bool,
    ticks: u64,
    was_leader: bool,
    /// A leadership transfer is under way: no lease is taken or renewed.
    transferring: bool,
    /// The tick at which raft-rs was seen to have given a transfer up.
    transfer_given_up_at: Option<u64>,
}

impl<R> Replica<R> {
    pub fn new(node: RaftNode, config: ReplicaConfig) -> Replica<R> {
        Replica {
            node,
            config,
            pending: HashMap::new(),
            pending_changes: Default::default(),
            next_tag: 1,
            entry: Vec::new(),
            dedup_scratch: Vec::new(),
            dropped_sets: 0,
            lease_round: None,
            read_round: None,
            transferring: false,
            transfer_given_up_at: None,
            lease_until: Duration::ZERO,
            read_epoch_done: 0,
            read_round_lost: false,
            ticks: 0,
            was_leader: false,
        }
    }

    /// SETs logged as NOPs since start because the next write of their key in the same
    /// entry set it again.
    pub fn dropped_sets(&self) -> u64 {
        self.dropped_sets
    }

    /// The Raft node (roles, indexes, statistics).
    pub fn node(&self) -> &RaftNode {
        &self.node
    }

    /// The Raft node, to feed it peer messages and reports.
    pub fn node_mut(&mut self) -> &mut RaftNode {
        &mut self.node
    }

    pub fn config(&self) -> &ReplicaConfig {
        &self.config
    }

    /// Whether sealed windows still wait for their entry to commit.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Reads may be served locally until this point of this node's clock (zero when it
    /// is not the leader or holds no confirmed lease).
    pub fn lease_until(&self) -> Duration {
        self.lease_until
    }

    /// The highest index-mode epoch whose round completed.
    pub fn read_epoch_done(&self) -> u64 {
        self.read_epoch_done
    }

    /// Whether a dropped index-mode round left reads waiting (the driver starts another
    /// with the next epoch; this clears the flag).
    pub fn take_read_round_lost(&mut self) -> bool {
        std::mem::take(&mut self.read_round_lost)
    }

    /// What a shard needs to decide on a GET, as of now.
    pub fn read_view(&self, read_epoch_next: u64) -> ReadView {
        ReadView {
            read_mode: self.config.read_mode,
            is_leader: self.node.is_leader(),
            lease_until: self.lease_until,
            read_epoch_next,
        }
    }

    /// One Raft tick at `now`: elections and heartbeats advance, stale read rounds are
    /// dropped, and in lease mode a leader without a round in flight starts one.
    pub fn tick(&mut self, now: Duration) {
        self.node.tick();
        self.ticks += 1;
        if self.transferring && self.node.is_leader() && !self.node.is_transferring() {
            // raft-rs gave the transfer up (the target did not catch up in time) and this
            // node leads on. The target may still have been told to campaign at once,
            // which voters grant whatever lease they hold: the lease is taken again only
            // once such a late campaign would have shown (two election timeouts).
            let since = *self.transfer_given_up_at.get_or_insert(self.ticks);
            if self.ticks - since > 2 * self.config.election_ticks as u64 {
                self.transferring = false;
                self.transfer_given_up_at = None;
            }
        }
        let retry = self.config.read_round_retry;
        if self
            .lease_round
            .is_some_and(|(_, sent)| now.saturating_sub(sent) > retry)
        {
            self.lease_round = None;
        }
        if self
            .read_round
            .is_some_and(|(_, sent)| now.saturating_sub(sent) > retry)
        {
            self.read_round = None;
            self.read_round_lost = true;
        }
        if self.config.read_mode == ReadMode::Lease
            && self.node.is_leader()
            && self.lease_round.is_none()
            && !self.transferring
        {
            let ctx = LEASE_CTX | self.ticks;
            self.node.read_index(ctx);
            self.lease_round = Some((ctx, now));
        }
    }

    /// Starts an index-mode round for the reads waiting, if one can start now (no round
    /// in flight, this node the leader). `take_epoch` hands out the round's epoch: the
    /// driver's counter moves on *before* the round is asked for, so every read that saw
    /// the old value arrived before the round and is covered by it. Returns whether a
    /// round started; if not, the reads keep waiting for a later call.
    pub fn start_read_round(&mut self, now: Duration, take_epoch: impl FnOnce() -> u64) -> bool {
        if self.config.read_mode != ReadMode::Index
            || self.read_round.is_some()
            || !self.node.is_leader()
        {
            return false;
        }
        let epoch = take_epoch();
        self.node.read_index(epoch);
        self.read_round = Some((epoch, now));
        true
    }

    /// Seals the shards' windows into one entry and proposes it (into several, each of
    /// whole windows, when together they pass [`log::COMMAND_LENGTH_MAX`]: a large value
    /// gets an entry of its own). Windows that cannot be proposed come back at once in
    /// `out` with their outcome; empty ones come back unused.
    pub fn seal(&mut self, windows: Vec<Window<R>>, out: &mut ReplicaOutput<R>) {
        let Some(windows) = with_commands(windows, out) else {
            return;
        };
        if !self.node.is_leader() {
            fail(windows, WriteOutcome::NotLeader, out);
            return;
        }
        let mut windows = windows;
        if windows.iter().any(|w| w.conditional) {
            // Resolved against the applied state and the entries still in flight, in
            // the order they were proposed.
            let complete = self.node.unapplied_entries_are_own();
            let in_flight = in_flight_commands(&self.pending);
            let mut engine = self.node.engine();
            conditional::resolve(&in_flight, &mut windows, complete, &mut *engine);
        }
        let total: usize = windows.iter().map(|w| w.commands.len()).sum();
        let groups = if total <= log::COMMAND_LENGTH_MAX {
            vec![windows]
        } else {
            split_windows(windows)
        };
        // Conditional writes of a later entry were resolved assuming the earlier ones
        // apply: once one fails, the rest fail with it.
        let mut failed = None;
        for group in groups {
            match failed {
                Some(outcome) => fail(group, outcome, out),
                None => failed = self.propose_windows(group, out).err(),
            }
        }
    }

    /// Proposes one entry of `windows`' commands; on failure hands them back failed.
    fn propose_windows(
        &mut self,
        windows: Vec<Window<R>>,
        out: &mut ReplicaOutput<R>,
    ) -> Result<(), WriteOutcome> {
        let Some(windows) = with_commands(windows, out) else {
            return Ok(());
        };
        let num_commands: usize = windows.iter().map(|w| w.replies.len()).sum();
        self.entry.clear();
        for w in &windows {
            self.entry.extend_from_slice(&w.commands);
        }
        if self.config.drop_overwritten_sets {
            // The entries in flight count for the sessions, as for conditional writes.
            let complete = self.node.unapplied_entries_are_own();
            let in_flight = in_flight_commands(&self.pending);
            let engine = self.node.engine();
            self.dropped_sets += dedup::drop_overwritten_sets(
                &mut self.entry,
                &mut self.dedup_scratch,
                &in_flight,
                complete,
                &*engine,
            ) as u64;
        }
        if self.entry.len() > log::COMMAND_LENGTH_MAX {
            // The shards' size caps keep a window well under this.
            eprintln!(
                "ocean-liner: a window of {} bytes is over the entry limit",
                self.entry.len()
            );
            fail(windows, WriteOutcome::Failed, out);
            return Err(WriteOutcome::Failed);
        }
        // A full disk shows here, before anything is proposed: the windows fail cleanly.
        let prepared = self
            .node
            .engine()
            .prepare_log(log::entry_size(self.entry.len()) as u64);
        if let Err(e) = prepared {
            let outcome = if e.is_no_space() {
                WriteOutcome::NoSpace
            } else {
                WriteOutcome::Failed
            };
            fail(windows, outcome, out);
            return Err(outcome);
        }
        let tag = self.next_tag;
        self.next_tag += 1;
        let commands = std::mem::take(&mut self.entry);
        let outcome = match self.node.propose(tag, commands, num_commands as u64) {
            Ok(_) => {
                self.pending.insert(tag, windows);
                return Ok(());
            }
            Err(ProposeError::NotLeader(_)) => WriteOutcome::NotLeader,
            Err(ProposeError::Busy) => WriteOutcome::Busy,
        };
        fail(windows, outcome, out);
        Err(outcome)
    }

    /// Step one of the Ready cycle: the messages that may leave before this node's own
    /// write. The driver sends them, then calls [`Replica::persist_and_apply`].
    pub fn ready(&mut self, out: &mut ReplicaOutput<R>) {
        let mut raft_out = Output::default();
        self.node.ready(&mut raft_out);
        self.take_output(raft_out, out);
    }

    /// Step two: persist, then the messages that promise durability, then apply and
    /// complete windows (a lease is renewed from the start of the round that confirmed
    /// it). An error means the node must stop: every pending window is failed
    /// (NotLeader: a client retries elsewhere) first.
    pub fn persist_and_apply(&mut self, out: &mut ReplicaOutput<R>) -> Result<(), FatalError> {
        let mut raft_out = Output::default();
        let result = self.node.persist_and_apply(&mut raft_out);
        self.take_output(raft_out, out);
        self.note_role();
        if result.is_err() {
            self.fail_pending(WriteOutcome::NotLeader, out);
        }
        result
    }

    /// Fails every pending window with `outcome` (at shutdown, or when the node stops).
    pub fn fail_pending(&mut self, outcome: WriteOutcome, out: &mut ReplicaOutput<R>) {
        for (_, windows) in std::mem::take(&mut self.pending) {
            out.completed.push(Completed {
                windows,
                outcome: Some(outcome),
                applied_commands: 0,
                outcomes: Vec::new(),
            });
        }
    }

    /// Proposes a membership change; its outcome comes back in
    /// [`ReplicaOutput::changes`] under the returned tag.
    pub fn propose_change(&mut self, change: &Change) -> Result<u64, ChangeError> {
        let tag = self.next_tag;
        self.node.propose_change(tag, change)?;
        self.next_tag += 1;
        self.pending_changes.insert(tag);
        Ok(tag)
    }

    fn take_output(&mut self, raft_out: Output, out: &mut ReplicaOutput<R>) {
        out.messages.extend(raft_out.messages);
        out.snapshots.extend(raft_out.snapshots);
        if raft_out.membership.is_some() {
            out.membership = raft_out.membership;
        }
        for event in raft_out.events {
            match event {
                Event::Applied {
                    tag,
                    outcomes,
                    index,
                } if self.pending_changes.remove(&tag) => {
                    let outcome = if outcomes.first() == Some(&Outcome::Done) {
                        ChangeOutcome::Made(index)
                    } else {
                        ChangeOutcome::Refused
                    };
                    out.changes.push((tag, outcome));
                }
                Event::Dropped { tag } if self.pending_changes.remove(&tag) => {
                    out.changes.push((tag, ChangeOutcome::Dropped));
                }
                Event::Applied { tag, outcomes, .. } => {
                    if let Some(windows) = self.pending.remove(&tag) {
                        out.completed.push(Completed {
                            windows,
                            outcome: Some(WriteOutcome::Applied),
                            applied_commands: outcomes.len() as u64,
                            outcomes,
                        });
                    }
                }
                Event::Dropped { tag } => {
                    if let Some(windows) = self.pending.remove(&tag) {
                        out.completed.push(Completed {
                            windows,
                            outcome: Some(WriteOutcome::NotLeader),
                            applied_commands: 0,
                            outcomes: Vec::new(),
                        });
                    }
                }
                Event::ReadReady { ctx, .. } => self.read_ready(ctx),
            }
        }
    }

    fn read_ready(&mut self, ctx: u64) {
        if ctx & LEASE_CTX != 0 {
            if let Some((round, sent)) = self.lease_round
                && round == ctx
                && !self.transferring
            {
                // The round started at `sent`: a quorum was still following this leader
                // then, so no other leader can be elected before `sent` plus the
                // followers' election timeout; the lease stops short of that by the
                // drift margin.
                self.lease_until = sent + self.config.lease();
                self.lease_round = None;
            }
        } else if self.read_round.is_some_and(|(epoch, _)| epoch == ctx) {
            self.read_epoch_done = self.read_epoch_done.max(ctx);
            self.read_round = None;
        }
    }

    /// Drops the lease and read rounds when leadership is lost.
    fn note_role(&mut self) {
        let leader = self.node.is_leader();
        if leader != self.was_leader {
            self.was_leader = leader;
            if !leader {
                self.lease_until = Duration::ZERO;
                self.lease_round = None;
                self.read_round = None;
                self.transferring = false;
            }
        }
    }

    /// Hands leadership to the most up-to-date follower (a graceful stop). The lease is
    /// dropped first and not renewed while the transfer runs: the new leader is elected
    /// at once, without waiting out the followers' election timeout that a lease counts
    /// on, so this node must serve no lease read from now on (the driver publishes the
    /// dropped lease before the transfer's messages leave). Returns the node chosen.
    pub fn transfer_leadership(&mut self) -> Option<crate::ids::NodeId> {
        self.transfer_leadership_to(None)
    }

    /// Hands leadership to `target` (a voter), or to the most up-to-date follower when
    /// `None`, as [`Replica::transfer_leadership`] does.
    pub fn transfer_leadership_to(
        &mut self,
        target: Option<crate::ids::NodeId>,
    ) -> Option<crate::ids::NodeId> {
        if !self.node.is_leader() {
            return None;
        }
        self.lease_until = Duration::ZERO;
        self.lease_round = None;
        self.transferring = true;
        self.transfer_given_up_at = None;
        let chosen = self.node.transfer_leadership_to(target);
        if chosen.is_none() {
            self.transferring = false;
        }
        chosen
    }

    /// Keeps log space prepared ahead of the next entry, between windows rather than
    /// inside one. A failure (a full disk) shows again, with an outcome, at the next seal.
    pub fn prepare_log_ahead(&mut self) {
        let _ = self.node.engine().prepare_log_ahead();
    }

    /// Starts a checkpoint at the applied index, between two applies (the job takes the
    /// changed pages as it writes them); the returned job's IO may run elsewhere while
    /// this replica goes on ([`Replica::checkpoint_end`] takes it back). `None` when nothing changed or a job
    /// is already out.
    pub fn checkpoint_begin(&mut self) -> Option<CheckpointJob> {
        if self.node.has_staged_snapshot() {
            return None;
        }
        self.node.note_followers();
        let mut engine = self.node.engine();
        if engine.map().dirty_page_count() == 0 {
            return None;
        }
        engine.checkpoint_begin()
    }

    /// Takes back a checkpoint job with the result of its IO.
    pub fn checkpoint_end(
        &mut self,
        job: CheckpointJob,
        result: std::io::Result<()>,
    ) -> Result<Reclaimed, EngineError> {
        self.node.engine().checkpoint_end(job, result)
    }
}

/// `windows`, unless none holds a command: then they go back unused and `None` is returned.
fn with_commands<R>(windows: Vec<Window<R>>, out: &mut ReplicaOutput<R>) -> Option<Vec<Window<R>>> {
    if windows.iter().any(|w| !w.replies.is_empty()) {
        return Some(windows);
    }
    out.completed.push(Completed {
        windows,
        outcome: None,
        applied_commands: 0,
        outcomes: Vec::new(),
    });
    None
}

/// Hands `windows` back with `outcome`, none of their writes applied.
fn fail<R>(windows: Vec<Window<R>>, outcome: WriteOutcome, out: &mut ReplicaOutput<R>) {
    out.completed.push(Completed {
        windows,
        outcome: Some(outcome),
        applied_commands: 0,
        outcomes: Vec::new(),
    })
}

/// Groups whole windows into entries of at most [`log::COMMAND_LENGTH_MAX`] bytes, in
/// order; each group keeps every window at its slot (empty ones elsewhere).
fn split_windows<R>(windows: Vec<Window<R>>) -> Vec<Vec<Window<R>>> {
    let slots = windows.len();
    let new_group = || (0..slots).map(|_| Window::default()).collect::<Vec<_>>();
    let mut groups = vec![new_group()];
    let mut bytes = 0;
    for (i, w) in windows.into_iter().enumerate() {
        if bytes > 0 && bytes + w.commands.len() > log::COMMAND_LENGTH_MAX {
            groups.push(new_group());
            bytes = 0;
        }
        bytes += w.commands.len();
        if let Some(group) = groups.last_mut() {
            group[i] = w;
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(read_mode: ReadMode, is_leader: bool, lease_until_ms: u64) -> ReadView {
        ReadView {
            read_mode,
            is_leader,
            lease_until: Duration::from_millis(lease_until_ms),
            read_epoch_next: 7,
        }
    }

    #[test]
    fn reads_are_served_only_inside_the_lease_or_after_their_round() {
        let now = Duration::from_millis(100);
        let d = |v: ReadView, waiting| decide_read(&v, now, waiting, 4);
        assert_eq!(d(view(ReadMode::Lease, true, 101), 0), ReadDecision::Serve);
        assert_eq!(d(view(ReadMode::Lease, true, 100), 0), ReadDecision::Busy);
        assert_eq!(
            d(view(ReadMode::Lease, false, 500), 0),
            ReadDecision::NotLeader
        );
        assert_eq!(
            d(view(ReadMode::Index, true, 0), 3),
            ReadDecision::Wait { epoch: 7 }
        );
        assert_eq!(d(view(ReadMode::Index, true, 0), 4), ReadDecision::Busy);
        assert_eq!(
            d(view(ReadMode::Index, false, 0), 0),
            ReadDecision::NotLeader
        );
    }

    #[test]
    fn windows_too_large_for_one_entry_are_split_at_window_bounds_in_order() {
        let window = |bytes: usize, tag: u8| Window::<u8> {
            commands: vec![tag; bytes],
            replies: vec![tag],
            ..Window::default()
        };
        let third = log::COMMAND_LENGTH_MAX / 3;
        // Slots: two that fit together, an empty one, one that starts a new entry, one
        // that needs an entry of its own, a small one after it.
        let windows = vec![
            window(third, 1),
            window(third, 2),
            Window::default(),
            window(third + 10, 3),
            window(log::COMMAND_LENGTH_MAX - third, 4),
            window(100, 5),
        ];
        let groups = split_windows(windows);
        let layout: Vec<Vec<u8>> = groups
            .iter()
            .map(|g| {
                g.iter()
                    .map(|w| w.replies.first().copied().unwrap_or(0))
                    .collect()
            })
            .collect();
        assert_eq!(
            layout,
            vec![
                vec![1, 2, 0, 0, 0, 0],
                vec![0, 0, 0, 3, 0, 0],
                vec![0, 0, 0, 0, 4, 5],
            ]
        );
        for g in &groups {
            assert_eq!(g.len(), 6, "every slot keeps its place");
            let bytes: usize = g.iter().map(|w| w.commands.len()).sum();
            assert!(bytes <= log::COMMAND_LENGTH_MAX);
        }
    }

    #[test]
    fn waiting_reads_leave_when_their_round_is_done_or_leadership_is_lost() {
        let mut w = WaitingReads::default();
        for (epoch, r) in [(1, 'a'), (2, 'b'), (3, 'c')] {
            w.push(epoch, r);
        }
        assert_eq!(w.take_ready(true, 2), (vec!['a', 'b'], true));
        assert_eq!(w.take_ready(true, 2), (vec![], true));
        assert_eq!(w.take_ready(false, 0), (vec!['c'], false));
        assert!(w.is_empty());
    }
}
