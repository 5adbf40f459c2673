//! The Raft driver: raft-rs's `RawNode` over the node's own log, map and hard state.
//!
//! [`RaftNode`] does no network IO, owns no thread and reads no clock: the caller feeds
//! it ticks and peer messages and collects what to send and what was applied. The server's
//! replication core drives it with TCP and a timer; the simulator drives it with a
//! simulated network, clock and disk. Both run exactly this code.
//!
//! The Ready cycle has two steps, so that the leader's own disk write overlaps
//! replication (Raft thesis §10.2.1):
//! 1. [`RaftNode::ready`] hands out the messages that need no persistence (the leader's
//!    AppendEntries and heartbeats); the caller sends them at once;
//! 2. [`RaftNode::persist_and_apply`] appends the new entries durably (a conflicting
//!    suffix is cut first) and saves the hard state, then hands out the messages that
//!    promise durability (votes, append responses: a follower persists before it
//!    replies), and applies committed entries in log order so proposals learn their
//!    outcome.
//!
//! raft-rs counts the leader's own entries toward the quorum only once `advance` says
//! they are persisted, so nothing commits before the leader's write is durable.

pub mod adaptive;
pub mod codec;
pub mod hard_state;
pub mod membership;
pub mod storage;

use crate::ids::{LogIndex, NodeId, Term};
use crate::storage::engine::{Engine, EngineError, EngineOptions, OpenReport, Outcome};
use crate::storage::io::Backend;
use crate::storage::log::NewEntry;
use crate::storage::snapshot::{SnapshotSource, StagedSnapshot};
use hard_state::HardStateFile;
use membership::{Change, Membership};
use raft::eraftpb::{Entry, EntryType, Message};
use raft::{RawNode, StateRole};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use storage::LogStorage;

/// Ticks a node that starts with no state waits to hear from a leader before it votes
/// (a whole cluster starting from nothing then elects its first leader after this).
pub const FRESH_GRACE_TICKS: u64 = 100;

/// A deliberate bug, compiled in so the simulator can prove it would catch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PlantedBug {
    #[default]
    None,
    /// The leader acknowledges a proposal as soon as its own copy is durable, without
    /// waiting for a quorum.
    AckBeforeCommit,
    /// Followers acknowledge appended entries before writing them.
    AckBeforePersist,
    /// Not a code change: the simulator runs node clocks at rates far outside the drift
    /// bound the read lease assumes.
    ClockDriftBeyondBound,
}

/// Settings of one node's Raft group.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's Raft id (1-based).
    pub id: NodeId,
    /// The members a new cluster starts with (every one a voter); once a membership is
    /// recorded in the node's state (a change applied, a checkpoint, a snapshot) that one
    /// holds instead. Empty for a node that joins a running cluster: it has no say until
    /// the cluster adds it.
    pub bootstrap: Membership,
    /// Ticks without a leader before an election may start (the lease bound too).
    pub election_tick: usize,
    /// Upper bound of the randomized election timeout, in ticks.
    pub max_election_tick: usize,
    /// Ticks between leader heartbeats.
    pub heartbeat_tick: usize,
    /// Largest AppendEntries payload, in bytes.
    pub max_size_per_msg: u64,
    /// Proposals beyond this many uncommitted bytes are refused (back-pressure).
    pub max_uncommitted_size: u64,
    pub engine: EngineOptions,
    pub planted_bug: PlantedBug,
    /// Forward raft-rs's warnings (elections, step-downs) to stderr.
    pub log_warnings: bool,
    /// Seeds the draw of randomized election timeouts (raft-rs's own draw uses a thread
    /// RNG; this node redraws with its own, so a simulation replays exactly).
    pub seed: u64,
}

impl NodeConfig {
    /// Defaults for a node with `id` among `voters` (whose addresses are unspecified: for
    /// drivers that route by id, such as the simulator).
    pub fn new(id: NodeId, voters: Vec<NodeId>) -> NodeConfig {
        let nowhere = std::net::SocketAddr::from(([0, 0, 0, 0], 0));
        let count = voters.iter().map(|v| v.index() + 1).max().unwrap_or(0);
        let mut bootstrap = Membership::bootstrap(&vec![nowhere; count], &vec![nowhere; count]);
        for k in 0..count {
            let k = NodeId::from_index(k);
            if !voters.contains(&k) {
                let _ = bootstrap.apply(&membership::Change::Remove { id: k });
            }
        }
        NodeConfig {
            id,
            bootstrap,
            election_tick: 15,
            max_election_tick: 30,
            heartbeat_tick: 3,
            max_size_per_msg: 16 << 20,
            max_uncommitted_size: 512 << 20,
            engine: EngineOptions::default(),
            planted_bug: PlantedBug::None,
            log_warnings: true,
            seed: id.raft_id(),
        }
    }
}

/// Something the caller must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The proposal `tag` committed and was applied: one outcome per command.
    Applied {
        tag: u64,
        index: LogIndex,
        outcomes: Vec<Outcome>,
    },
    /// The proposal `tag` will not commit through this node (leadership lost, or its entry
    /// was replaced). It may still have committed elsewhere; clients retry, and sessions
    /// keep the retry from applying twice.
    Dropped { tag: u64 },
    /// The read `ctx` may be served: this node was leader when it was issued and has
    /// applied everything committed before it.
    ReadReady { ctx: u64, index: LogIndex },
}

/// What one [`RaftNode::advance`] produced.
#[derive(Default)]
pub struct Output {
    pub messages: Vec<Message>,
    pub events: Vec<Event>,
    /// Snapshots to stream to followers, each with the message to deliver after its
    /// chunks; the driver reports the outcome with [`RaftNode::report_snapshot`].
    pub snapshots: Vec<(Message, SnapshotSource)>,
    /// The membership, when a change or a snapshot made a new one.
    pub membership: Option<Membership>,
}

/// Why a membership change was not proposed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeError {
    Propose(ProposeError),
    /// The membership's rules refuse it, or another change is under way.
    Refused(String),
}

/// Why a proposal was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProposeError {
    /// This node is not the leader; the leader's id if known.
    NotLeader(Option<NodeId>),
    /// Too much is uncommitted, or a leadership transfer is under way.
    Busy,
}

/// A failure after which the node must stop (a disk that failed under the log).
#[derive(Debug)]
pub struct FatalError(pub String);

impl std::fmt::Display for FatalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FatalError {}

impl From<EngineError> for FatalError {
    fn from(e: EngineError) -> FatalError {
        FatalError(e.to_string())
    }
}

/// Forwards raft-rs's warnings and errors to stderr; drops the rest.
struct StderrDrain {
    prefix: String,
    enabled: bool,
}

impl slog::Drain for StderrDrain {
    type Ok = ();
    type Err = slog::Never;
    fn log(&self, record: &slog::Record<'_>, _: &slog::OwnedKVList) -> Result<(), slog::Never> {
        if self.enabled && record.level().is_at_least(slog::Level::Warning) {
            eprintln!("{}raft: {}", self.prefix, record.msg());
        }
        Ok(())
    }
}

/// One node: raft-rs state machine, log, map, hard state.
pub struct RaftNode {
    raw: RawNode<LogStorage>,
    engine: Rc<RefCell<Engine>>,
    hard_state: HardStateFile,
    /// Proposals awaiting their entry's application: index → (term, tag).
    pending: BTreeMap<u64, (u64, u64)>,
    /// Reads confirmed by a quorum, waiting for the map to catch up: (ctx, index).
    pending_reads: Vec<(u64, u64)>,
    planted_bug: PlantedBug,
    leader_changes: u64,
    last_leader: u64,
    election_tick_range: (usize, usize),
    /// Lower end of the randomized election timeout, in ticks (the adaptive estimate).
    election_floor_ticks: usize,
    /// Follower ticks left during which the election clock stands still.
    election_hold_ticks: usize,
    /// Started without any state (see [`RaftNode::guard_rejoin`]).
    fresh: bool,
    ticks: u64,
    vote_floor_term: Option<u64>,
    warned_lost_log: bool,
    open_report: OpenReport,
    rng: u64,
    seen: (u64, StateRole),
    /// A Ready taken by [`RaftNode::ready`] whose persistence is still to come.
    ready: Option<raft::Ready>,
    /// A received snapshot raft-rs accepted, to install with the Ready that carries it.
    staged: Option<StagedSnapshot>,
    /// Appends refused because the disk had no room for them (see [`RaftNode::step`]).
    appends_refused_no_space: u64,
    /// Peers (raft ids) whose hello said their log is empty: a learner among them is sent
    /// a snapshot, never the log from its start (see [`RaftNode::tick`]).
    empty_peers: BTreeMap<u64, Option<u64>>,
}

impl RaftNode {
    /// Opens a node's state in `dir` (log, map, hard state) and starts its Raft group.
    /// A single-voter group campaigns at once.
    pub fn open(
        backend: Arc<dyn Backend>,
        dir: &Path,
        config: NodeConfig,
    ) -> Result<RaftNode, FatalError> {
        crate::storage::io::create_dir_durable(backend.as_ref(), dir)
            .map_err(|e| FatalError(format!("cannot create {}: {e}", dir.display())))?;
        let hard_state = HardStateFile::open(backend.as_ref(), dir).map_err(|e| {
            FatalError(format!(
                "cannot read the raft state in {}: {e}",
                dir.display()
            ))
        })?;
        let mut hs = hard_state.get().clone();
        let state_was_empty = hs == raft::eraftpb::HardState::default();
        let mut engine_options = config.engine.clone();
        engine_options.bootstrap_membership =
            (!config.bootstrap.is_empty()).then(|| config.bootstrap.clone());
        let (engine, open_report) =
            Engine::open(backend, dir, engine_options, Some(LogIndex(hs.commit)))?;
        // The map may be checkpointed past the last saved commit index: those entries were
        // committed (they were applied), so the commit index is raised to match.
        hs.commit = hs
            .commit
            .max(engine.applied_index().get())
            .min(engine.last_index().get());
        let applied = engine.applied_index().get();
        let mut engine = engine;
        let membership = engine.membership();
        let alone = membership.members().len() == 1 && membership.get(config.id).is_some();
        if !alone {
            // Nothing is known of the followers yet: keep every Raft segment (within the
            // retention bound) until a checkpoint sets the bound.
            engine.set_raft_keep_from(LogIndex::ZERO);
        }
        let fresh = state_was_empty && engine.last_index() == LogIndex::ZERO && !alone;
        let engine = Rc::new(RefCell::new(engine));
        let storage = LogStorage::new(engine.clone(), hs, membership.conf_state());
        storage.seed_snapshot_ids(config.seed.wrapping_mul(0x2545_F491_4F6C_DD1D));
        let raft_config = raft::Config {
            id: config.id.raft_id(),
            election_tick: config.election_tick,
            heartbeat_tick: config.heartbeat_tick,
            min_election_tick: config.election_tick,
            max_election_tick: config.max_election_tick,
            applied,
            max_size_per_msg: config.max_size_per_msg,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            max_uncommitted_size: config.max_uncommitted_size,
            ..Default::default()
        };
        raft_config
            .validate()
            .map_err(|e| FatalError(format!("raft config: {e}")))?;
        let logger = slog::Logger::root(
            slog::Fuse(StderrDrain {
                prefix: format!("node {}: ", config.id),
                enabled: config.log_warnings,
            }),
            slog::o!(),
        );
        let mut raw = RawNode::new(&raft_config, storage, &logger)
            .map_err(|e| FatalError(format!("cannot start raft: {e}")))?;
        if alone && membership.get(config.id).is_some_and(|m| m.voter) {
            raw.campaign()
                .map_err(|e| FatalError(format!("campaign: {e}")))?;
        }
        Ok(RaftNode {
            raw,
            engine,
            hard_state,
            pending: BTreeMap::new(),
            pending_reads: Vec::new(),
            planted_bug: config.planted_bug,
            leader_changes: 0,
            appends_refused_no_space: 0,
            last_leader: 0,
            election_tick_range: (config.election_tick, config.max_election_tick),
            election_floor_ticks: config.election_tick,
            election_hold_ticks: 0,
            fresh,
            ticks: 0,
            vote_floor_term: None,
            warned_lost_log: false,
            open_report,
            rng: config.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            seen: (0, StateRole::Follower),
            ready: None,
            staged: None,
            empty_peers: Default::default(),
        }
        .started())
    }

    fn started(mut self) -> RaftNode {
        self.redraw_election_timeout();
        self
    }

    /// Advances the logical clock by one tick.
    pub fn tick(&mut self) {
        self.ticks = self.ticks.saturating_add(1);
        if self.election_hold_ticks > 0 && !self.is_leader() {
            // A follower's election clock only (see `hold_election_clock`).
            self.election_hold_ticks -= 1;
            return;
        }
        self.raw.tick();
        self.snapshot_empty_learners();
        self.after_input();
    }

    /// A node added to a running cluster starts with no state: the log's early entries
    /// assume the membership before it, which it does not know, so it must begin from a
    /// snapshot (its membership and all). The leader asks raft-rs to send one to each
    /// learner that reported an empty log and has matched nothing yet; raft-rs forgets
    /// the request once a transfer ends, so it is made again until the learner answers.
    fn snapshot_empty_learners(&mut self) {
        if !self.is_leader() || self.empty_peers.is_empty() {
            return;
        }
        let applied = self.applied_index().get();
        let learners = self.raw.raft.prs().conf().learners().clone();
        let (ticks, again) = (self.ticks, 2 * self.election_tick_range.1 as u64);
        let raft = &mut self.raw.raft;
        self.empty_peers.retain(|id, asked| {
            let Some(pr) = raft.mut_prs().get_mut(*id) else {
                return true;
            };
            if pr.matched > 0 {
                return false;
            }
            // After one transfer the learner's answer takes a moment: ask again only if
            // none came for a while.
            if learners.contains(id)
                && applied > 0
                && pr.pending_request_snapshot == raft::INVALID_INDEX
                && pr.state != raft::ProgressState::Snapshot
                && asked.is_none_or(|at| ticks.saturating_sub(at) > again)
            {
                pr.pending_request_snapshot = applied;
                *asked = Some(ticks);
            }
            true
        });
    }

    /// Heartbeats to every other member in this leader's term that advance nothing
    /// (commit index 0): what the driver sends on the leader's behalf while its core is
    /// busy with one long write. Empty unless this node leads.
    pub fn liveness_heartbeats(&self) -> Vec<Message> {
        if !self.is_leader() {
            return Vec::new();
        }
        let me = self.raw.raft.id;
        let mut ids: Vec<u64> = self.raw.raft.prs().iter().map(|(id, _)| *id).collect();
        ids.sort_unstable();
        ids.into_iter()
            .filter(|&id| id != me)
            .map(|to| {
                let mut m = Message::default();
                m.set_msg_type(raft::eraftpb::MessageType::MsgHeartbeat);
                m.to = to;
                m.from = me;
                m.term = self.raw.raft.term;
                m
            })
            .collect()
    }

    /// Starts handing leadership to the member whose log matches this leader's furthest
    /// (raft-rs sends it what it lacks, then MsgTimeoutNow, and it campaigns at once).
    /// Returns the member chosen; `None` unless this node leads a cluster.
    pub fn transfer_leadership(&mut self) -> Option<NodeId> {
        self.transfer_leadership_to(None)
    }

    /// Hands leadership to `target` if it is another voter (`None`: the voter whose log
    /// matches furthest). Returns the member chosen.
    pub fn transfer_leadership_to(&mut self, target: Option<NodeId>) -> Option<NodeId> {
        if !self.is_leader() {
            return None;
        }
        let me = self.raw.raft.id;
        let voters = self.raw.raft.prs().conf().voters().ids();
        let target = self
            .raw
            .raft
            .prs()
            .iter()
            .filter(|(id, _)| **id != me && voters.contains(**id))
            .filter(|(id, _)| target.is_none_or(|t| t.raft_id() == **id))
            .max_by_key(|(id, pr)| (pr.matched, std::cmp::Reverse(**id)))
            .map(|(id, _)| *id)?;
        self.raw.transfer_leader(target);
        NodeId::from_raft_id(target)
    }

    /// Whether a leadership transfer is under way.
    pub fn is_transferring(&self) -> bool {
        self.raw.raft.lead_transferee.is_some()
    }

    /// Stops a follower's election clock for the next `ticks` ticks. The driver calls it
    /// after a persist that took long (a large entry): the leader, which writes the same
    /// entry and cannot send heartbeats meanwhile, is likely still writing it, and an
    /// election now would only depose a healthy leader.
    pub fn hold_election_clock(&mut self, ticks: usize) {
        if !self.is_leader() {
            self.election_hold_ticks = self.election_hold_ticks.max(ticks);
        }
    }

    /// Protects the cluster from a member that lost its state (its data directory was
    /// wiped, or it is new): such a node forgot its votes and log, so
    /// - it casts no vote until it has heard from a leader (or, for a cluster that is
    ///   starting from nothing, until [`FRESH_GRACE_TICKS`] have passed), and then only in
    ///   terms after that leader's, in which it cannot have voted before;
    /// - a heartbeat's commit index beyond its (empty or shortened) log is clamped to the
    ///   log's end, since the leader's view of what this node holds predates the loss; the
    ///   entries arrive by the normal log repair.
    ///
    /// Returns whether the message should be stepped.
    fn guard_rejoin(&mut self, msg: &mut Message) -> bool {
        use raft::eraftpb::MessageType::*;
        let t = msg.get_msg_type();
        if self.fresh {
            if matches!(t, MsgAppend | MsgHeartbeat) && msg.term >= self.raw.raft.term {
                self.vote_floor_term = Some(self.vote_floor_term.unwrap_or(0).max(msg.term));
            }
            if matches!(t, MsgRequestVote | MsgRequestPreVote) {
                match self.vote_floor_term {
                    None if self.ticks < FRESH_GRACE_TICKS => return false,
                    Some(floor) if msg.term <= floor => return false,
                    _ => {}
                }
            }
        }
        if t == MsgHeartbeat {
            let last = self.engine.borrow().last_index();
            if msg.commit > last.get() {
                if !self.warned_lost_log {
                    self.warned_lost_log = true;
                    eprintln!(
                        "raft: node {}: the leader believes this node holds entries up to {} but its \
                         log ends at {last}; it lost data it had acknowledged and catches up from the leader",
                        self.raw.raft.id, msg.commit
                    );
                }
                msg.commit = last.get();
            }
        }
        true
    }

    /// Redraws the randomized election timeout whenever raft-rs has reset it (a new term
    /// or role), from this node's own seeded generator and adaptive floor.
    fn after_input(&mut self) {
        let now = (self.raw.raft.term, self.raw.raft.state);
        if now != self.seen {
            self.seen = now;
            self.redraw_election_timeout();
        }
    }

    fn redraw_election_timeout(&mut self) {
        let (min, max) = self.election_tick_range;
        let lo = self.election_floor_ticks.clamp(min, max - 1);
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let t = lo + (self.rng % (max - lo) as u64) as usize;
        self.raw.raft.set_randomized_election_timeout(t);
    }

    /// Sets the lower end of future randomized election timeouts, in ticks.
    pub fn set_election_floor_ticks(&mut self, ticks: usize) {
        self.election_floor_ticks = ticks;
    }

    /// The election timeout in force, in ticks.
    pub fn election_timeout_ticks(&self) -> usize {
        self.raw.raft.randomized_election_timeout()
    }

    /// Feeds a message from a peer. Messages for another node or a stale term are
    /// ignored by raft-rs itself.
    /// A snapshot message comes only with its snapshot ([`RaftNode::step_snapshot`]);
    /// alone it is dropped.
    pub fn step(&mut self, msg: Message) {
        if msg.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot {
            eprintln!("raft: dropped a snapshot message that came without its snapshot");
            return;
        }
        self.step_any(msg);
    }

    fn step_any(&mut self, mut msg: Message) {
        if !self.guard_rejoin(&mut msg) {
            return;
        }
        if msg.get_msg_type() == raft::eraftpb::MessageType::MsgAppend
            && !msg.entries.is_empty()
            && self.engine.borrow().knows_no_membership()
        {
            // A node that joins knows no membership until its first snapshot brings one;
            // the entries before it would be applied to a membership it lacks.
            return;
        }
        if !self.room_for(&msg) {
            return;
        }
        if let Err(e) = self.raw.step(msg) {
            // Only messages from unknown peers or local message types end up here.
            eprintln!("raft: dropped a peer message: {e}");
        }
        self.after_input();
    }

    /// Whether the log has room for the entries `msg` carries. A follower whose disk is
    /// full must not accept entries it cannot persist (a failed append would stop the
    /// node): it drops the append unanswered, as a lossy link would, and keeps following
    /// the leader's heartbeats; the leader sends the entries again, and once space
    /// returns they are taken.
    fn room_for(&mut self, msg: &Message) -> bool {
        if msg.get_msg_type() != raft::eraftpb::MessageType::MsgAppend || msg.entries.is_empty() {
            return true;
        }
        let bytes: u64 = msg
            .entries
            .iter()
            .map(|e| crate::storage::log::entry_size(e.data.len()) as u64)
            .sum();
        match self.engine.borrow_mut().prepare_log(bytes) {
            Err(e) if e.is_no_space() => {
                if self.appends_refused_no_space.is_multiple_of(1000) {
                    eprintln!(
                        "ocean-liner: the disk is full: entries from the leader are refused until \
                         space returns ({} refused so far)",
                        self.appends_refused_no_space + 1
                    );
                }
                self.appends_refused_no_space += 1;
                false
            }
            // Any other failure shows again, fatally, when the entries are persisted.
            _ => true,
        }
    }

    /// Appends refused because the disk was full.
    pub fn appends_refused_no_space(&self) -> u64 {
        self.appends_refused_no_space
    }

    /// Proposes one membership change under `tag`; [`Event::Applied`] reports it (its
    /// one outcome `Done` if made). Refused while another change is not applied yet, or
    /// if the membership's rules refuse it.
    pub fn propose_change(&mut self, tag: u64, change: &Change) -> Result<LogIndex, ChangeError> {
        if self.raw.raft.state != StateRole::Leader {
            return Err(ChangeError::Propose(ProposeError::NotLeader(
                self.leader_id(),
            )));
        }
        if self.raw.raft.has_pending_conf() {
            return Err(ChangeError::Refused(
                "another membership change is not applied yet; retry".into(),
            ));
        }
        self.engine
            .borrow()
            .membership()
            .check(change)
            .map_err(ChangeError::Refused)?;
        let commands = crate::storage::command::encode_config(change);
        if self
            .raw
            .propose_conf_change(commands, change.to_conf_change())
            .is_err()
        {
            return Err(ChangeError::Propose(ProposeError::Busy));
        }
        let index = self.raw.raft.raft_log.last_index();
        self.pending.insert(index, (self.raw.raft.term, tag));
        Ok(LogIndex(index))
    }

    /// The cluster's members as of the applied index.
    pub fn membership(&self) -> Membership {
        self.engine.borrow().membership()
    }

    /// How far each member's log is known to match this leader's (empty unless leading).
    pub fn match_indexes(&self) -> Vec<(NodeId, LogIndex)> {
        if !self.is_leader() {
            return Vec::new();
        }
        let mut out: Vec<(NodeId, LogIndex)> = self
            .raw
            .raft
            .prs()
            .iter()
            .filter_map(|(id, pr)| Some((NodeId::from_raft_id(*id)?, LogIndex(pr.matched))))
            .collect();
        out.sort_unstable();
        out
    }

    /// Whether `node`'s log is close enough to this leader's to promote it: no snapshot
    /// is on its way to it, and it lacks at most `lag` entries.
    pub fn has_caught_up(&self, node: NodeId, lag: u64) -> bool {
        self.is_leader()
            && self.raw.raft.prs().get(node.raft_id()).is_some_and(|pr| {
                pr.state != raft::ProgressState::Snapshot
                    && pr.matched > 0
                    && pr.matched + lag >= self.raw.raft.raft_log.last_index()
            })
    }

    /// Proposes one window of `num_commands` encoded commands under `tag`.
    pub fn propose(
        &mut self,
        tag: u64,
        commands: Vec<u8>,
        num_commands: u64,
    ) -> Result<LogIndex, ProposeError> {
        if self.raw.raft.state != StateRole::Leader {
            return Err(ProposeError::NotLeader(self.leader_id()));
        }
        let context = num_commands.to_le_bytes().to_vec();
        if self.raw.propose(context, commands).is_err() {
            return Err(ProposeError::Busy);
        }
        let index = self.raw.raft.raft_log.last_index();
        self.pending.insert(index, (self.raw.raft.term, tag));
        Ok(LogIndex(index))
    }

    /// Whether every entry of the log past the applied index is one this leader proposed
    /// in its current term (and still awaits): then the applied state plus those proposals
    /// is the state a new proposal will meet.
    pub fn unapplied_entries_are_own(&self) -> bool {
        let applied = self.applied_index().get();
        let last = self.raw.raft.raft_log.last_index();
        let term = self.raw.raft.term;
        self.is_leader()
            && last.saturating_sub(applied) == self.pending.len() as u64
            && self
                .pending
                .iter()
                .enumerate()
                .all(|(i, (&index, &(t, _)))| index == applied + 1 + i as u64 && t == term)
    }

    /// Starts a read confirmed by a quorum (ReadIndex); [`Event::ReadReady`] reports it.
    pub fn read_index(&mut self, ctx: u64) {
        self.raw.read_index(ctx.to_le_bytes().to_vec());
    }

    /// Whether this node is the leader.
    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// The current leader, if known.
    pub fn leader_id(&self) -> Option<NodeId> {
        NodeId::from_raft_id(self.raw.raft.leader_id)
    }

    pub fn id(&self) -> NodeId {
        NodeId::from_raft_id(self.raw.raft.id).expect("a node's own raft id is not 0")
    }

    pub fn role(&self) -> StateRole {
        self.raw.raft.state
    }

    pub fn term(&self) -> Term {
        Term(self.raw.raft.term)
    }

    pub fn commit_index(&self) -> LogIndex {
        LogIndex(self.raw.raft.raft_log.committed)
    }

    pub fn applied_index(&self) -> LogIndex {
        self.engine.borrow().applied_index()
    }

    pub fn last_index(&self) -> LogIndex {
        self.engine.borrow().last_index()
    }

    /// What recovery found when the node was opened.
    pub fn open_report(&self) -> &OpenReport {
        &self.open_report
    }

    /// How many times this node has seen the leader change.
    pub fn leader_changes(&self) -> u64 {
        self.leader_changes
    }

    /// The engine (map and log) behind this node.
    pub fn engine(&self) -> std::cell::RefMut<'_, Engine> {
        self.engine.borrow_mut()
    }

    /// A peer says its log ends at `last_index`. If this leader believes it holds more,
    /// the peer lost data (a wiped data directory): its progress is rewound so the leader
    /// repairs its log from there, instead of waiting forever on acknowledgements that
    /// were lost with it.
    pub fn peer_log_reaches(&mut self, node: NodeId, last_index: LogIndex) {
        if node == self.id() {
            return;
        }
        let (id, last_index) = (node.raft_id(), last_index.get());
        // Kept whatever this node's role: it may lead when the peer needs its snapshot.
        if last_index == 0 {
            self.empty_peers.entry(id).or_insert(None);
        } else {
            self.empty_peers.remove(&id);
        }
        if !self.is_leader() {
            return;
        }
        if let Some(pr) = self.raw.raft.mut_prs().get_mut(id)
            && pr.matched > last_index
        {
            eprintln!(
                "raft: node {id} reports its log ends at {last_index}, below the {} it acknowledged; repairing it",
                pr.matched
            );
            pr.matched = last_index;
            pr.become_probe();
            pr.next_idx = last_index + 1;
        }
    }

    /// Tells raft a peer could not be reached (it then probes instead of streaming).
    pub fn report_unreachable(&mut self, node: NodeId) {
        self.raw.report_unreachable(node.raft_id());
    }

    /// Both steps of the Ready cycle with nothing in between: [`RaftNode::ready`], then
    /// [`RaftNode::persist_and_apply`]. The messages in `out` leave after the write.
    pub fn advance(&mut self, out: &mut Output) -> Result<(), FatalError> {
        self.ready(out);
        self.persist_and_apply(out)
    }

    /// Step one of the Ready cycle: takes what raft-rs has ready and puts into `out` the
    /// messages that may leave before anything is persisted — the leader's AppendEntries
    /// and heartbeats (Raft thesis §10.2.1: the leader writes its own copy in parallel
    /// with replicating it). The caller sends them, then calls
    /// [`RaftNode::persist_and_apply`] before it feeds this node anything else.
    pub fn ready(&mut self, out: &mut Output) {
        if self.ready.is_some() || !self.raw.has_ready() {
            return;
        }
        let mut rd = self.raw.ready();
        if let Some(ss) = rd.ss() {
            if ss.leader_id != self.last_leader {
                self.last_leader = ss.leader_id;
                self.leader_changes += 1;
            }
            if ss.raft_state != StateRole::Leader {
                for (_, (_, tag)) in std::mem::take(&mut self.pending) {
                    out.events.push(Event::Dropped { tag });
                }
                self.pending_reads.clear();
            }
        }
        for msg in rd.take_messages() {
            self.route(msg, out);
        }
        self.raw.store().drop_snapshot_sources();
        if self.planted_bug == PlantedBug::AckBeforePersist {
            out.messages.extend(rd.take_persisted_messages());
        }
        self.ready = Some(rd);
    }

    /// Step two of the Ready cycle: makes the entries and hard state taken by
    /// [`RaftNode::ready`] durable, then puts into `out` the messages that promise
    /// durability (votes, append responses) and the outcome of every committed entry,
    /// applied in log order. raft-rs counts the leader's own copy toward a quorum only
    /// from here on, so nothing commits before the leader's write is durable.
    pub fn persist_and_apply(&mut self, out: &mut Output) -> Result<(), FatalError> {
        let Some(mut rd) = self.ready.take() else {
            self.drain_reads(out);
            return Ok(());
        };
        if !rd.snapshot().is_empty() {
            self.install(rd.snapshot().get_metadata())?;
            out.membership = Some(self.engine.borrow().membership());
        }
        if !rd.entries().is_empty() {
            self.persist(rd.entries())?;
            if self.planted_bug == PlantedBug::AckBeforeCommit {
                let last = rd.entries().last().unwrap().index;
                let acked: Vec<_> = self.pending.range(..=last).map(|(i, _)| *i).collect();
                for index in acked {
                    let (_, tag) = self.pending.remove(&index).unwrap();
                    out.events.push(Event::Applied {
                        tag,
                        index: LogIndex(index),
                        outcomes: Vec::new(),
                    });
                }
            }
        }
        if let Some(hs) = rd.hs() {
            self.hard_state
                .save(hs)
                .map_err(|e| FatalError(format!("saving the raft state failed: {e}")))?;
        }
        for msg in rd.take_persisted_messages() {
            self.route(msg, out);
        }
        for rs in rd.take_read_states() {
            let ctx = u64::from_le_bytes(
                rs.request_ctx
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .unwrap_or([0; 8]),
            );
            self.pending_reads.push((ctx, rs.index));
        }
        let committed = rd.take_committed_entries();
        self.apply(committed, out)?;
        let mut light = self.raw.advance(rd);
        for msg in light.take_messages() {
            self.route(msg, out);
        }
        let committed = light.take_committed_entries();
        self.apply(committed, out)?;
        self.raw.advance_apply();
        self.drain_reads(out);
        Ok(())
    }

    /// Puts a message into `out`: a snapshot message goes with the snapshot it names.
    fn route(&mut self, msg: Message, out: &mut Output) {
        if msg.get_msg_type() != raft::eraftpb::MessageType::MsgSnapshot {
            out.messages.push(msg);
            return;
        }
        let source = crate::storage::snapshot::decode_descriptor(&msg.get_snapshot().data)
            .and_then(|id| self.raw.store().take_snapshot_source(id));
        match source {
            Some(source) => out.snapshots.push((msg, source)),
            // Not ours to send (cannot happen: raft-rs sends what the storage gave it);
            // the follower is probed again after a failure.
            None => self
                .raw
                .report_snapshot(msg.to, raft::SnapshotStatus::Failure),
        }
    }

    /// Says how the snapshot sent to `node` fared: on success raft-rs waits for the
    /// follower's answer, on failure it probes again (and sends a new one if needed).
    pub fn report_snapshot(&mut self, node: NodeId, delivered: bool) {
        let status = if delivered {
            raft::SnapshotStatus::Finish
        } else {
            raft::SnapshotStatus::Failure
        };
        self.raw.report_snapshot(node.raft_id(), status);
    }

    /// Feeds a snapshot message with the snapshot it names, received whole. Returns
    /// whether raft-rs took it: then the next Ready installs it. Refused (stale, or a
    /// snapshot this log already covers), it is dropped and its segments with it. A
    /// checkpoint job must not be out (the install writes a checkpoint of its own).
    pub fn step_snapshot(&mut self, msg: Message, staged: StagedSnapshot) -> bool {
        let meta = msg.get_snapshot().get_metadata();
        let named = crate::storage::snapshot::decode_descriptor(&msg.get_snapshot().data);
        if msg.get_msg_type() != raft::eraftpb::MessageType::MsgSnapshot
            || named != Some(staged.id)
            || meta.index != staged.header.index.get()
            || meta.term != staged.header.term.get()
        {
            return false;
        }
        self.staged = Some(staged);
        self.step_any(msg);
        let index = self.staged.as_ref().map(|s| s.header.index.get());
        let pending = self
            .raw
            .raft
            .raft_log
            .unstable_snapshot()
            .as_ref()
            .map(|s| s.get_metadata().index);
        if pending.is_none() || pending != index {
            self.staged = None;
            return false;
        }
        true
    }

    /// Installs the staged snapshot raft-rs restored (see [`RaftNode::step_snapshot`]).
    fn install(&mut self, meta: &raft::eraftpb::SnapshotMetadata) -> Result<(), FatalError> {
        let staged = self
            .staged
            .take()
            .filter(|s| s.header.index.get() == meta.index && s.header.term.get() == meta.term)
            .ok_or_else(|| {
                FatalError(format!(
                    "raft restored snapshot {}/{} but no such snapshot was received",
                    meta.index, meta.term
                ))
            })?;
        self.engine
            .borrow_mut()
            .install_snapshot(staged)
            .map_err(|e| FatalError(format!("installing a snapshot failed: {e}")))?;
        eprintln!(
            "raft: node {}: installed a snapshot at index {} (term {})",
            self.raw.raft.id, meta.index, meta.term
        );
        Ok(())
    }

    /// Whether a received snapshot waits to be installed (no checkpoint may start then:
    /// the install writes one of its own).
    pub fn has_staged_snapshot(&self) -> bool {
        self.staged.is_some()
    }

    /// Tells the engine which Raft entries a follower may still need: from the slowest
    /// follower's next index when leading; none otherwise (a follower that becomes
    /// leader sends snapshots to those its log no longer reaches).
    pub fn note_followers(&mut self) {
        let keep_from = if self.is_leader() {
            let me = self.raw.raft.id;
            self.raw
                .raft
                .prs()
                .iter()
                .filter(|(id, _)| **id != me)
                .map(|(_, pr)| pr.matched + 1)
                .min()
                .unwrap_or(u64::MAX)
        } else {
            u64::MAX
        };
        self.engine
            .borrow_mut()
            .set_raft_keep_from(LogIndex(keep_from));
    }

    fn persist(&mut self, entries: &[Entry]) -> Result<(), FatalError> {
        let mut engine = self.engine.borrow_mut();
        let first = entries[0].index;
        if first <= engine.last_index().get() {
            assert!(
                first > engine.applied_index().get(),
                "raft never rewrites an applied entry"
            );
            engine
                .truncate_log_from(LogIndex(first))
                .map_err(|e| FatalError(format!("log truncation failed: {e}")))?;
        }
        let new: Vec<NewEntry<'_>> = entries
            .iter()
            .map(|e| match e.get_entry_type() {
                // A membership change: its log form travels in the entry's context.
                EntryType::EntryConfChangeV2 => NewEntry {
                    term: Term(e.term),
                    log_index: LogIndex(e.index),
                    num_commands: 1,
                    commands: &e.context,
                },
                _ => NewEntry {
                    term: Term(e.term),
                    log_index: LogIndex(e.index),
                    num_commands: e
                        .context
                        .first_chunk::<8>()
                        .map_or(0, |b| u64::from_le_bytes(*b)),
                    commands: &e.data,
                },
            })
            .collect();
        engine
            .append_entries(&new)
            .map_err(|e| FatalError(format!("log append failed: {e}")))?;
        Ok(())
    }

    fn apply(&mut self, entries: Vec<Entry>, out: &mut Output) -> Result<(), FatalError> {
        for e in entries {
            let mut engine = self.engine.borrow_mut();
            let index = LogIndex(e.index);
            if index <= engine.applied_index() {
                continue;
            }
            assert_eq!(
                engine.log().term(index),
                Some(Term(e.term)),
                "committed entries are in the log"
            );
            let outcomes = engine.apply(index)?;
            drop(engine);
            if e.get_entry_type() == EntryType::EntryConfChangeV2 {
                self.apply_change(&e, &outcomes, out)?;
            }
            // Proposals at lower indexes were replaced by another leader's entries.
            while let Some((&index, _)) = self.pending.first_key_value() {
                if index > e.index {
                    break;
                }
                let (term, tag) = self.pending.remove(&index).unwrap();
                if index == e.index && term == e.term {
                    out.events.push(Event::Applied {
                        tag,
                        index: LogIndex(index),
                        outcomes: outcomes.clone(),
                    });
                } else {
                    out.events.push(Event::Dropped { tag });
                }
            }
        }
        Ok(())
    }

    /// Tells raft-rs of a membership change the engine made (the same rules decided both).
    fn apply_change(
        &mut self,
        e: &Entry,
        outcomes: &[Outcome],
        out: &mut Output,
    ) -> Result<(), FatalError> {
        let Some(Ok(change)) = crate::storage::command::config_change(&e.context) else {
            return Err(FatalError(format!(
                "entry {} is a membership change that does not decode",
                e.index
            )));
        };
        if outcomes.first() != Some(&Outcome::Done) {
            eprintln!(
                "raft: node {}: entry {}: the membership refused \"{change}\"; nothing changed",
                self.id(),
                e.index
            );
            return Ok(());
        }
        let cs = self
            .raw
            .apply_conf_change(&change.to_conf_change())
            .map_err(|err| FatalError(format!("raft refused the change \"{change}\": {err}")))?;
        let membership = self.engine.borrow().membership();
        let sorted = |ids: &[u64]| {
            let mut ids = ids.to_vec();
            ids.sort_unstable();
            ids
        };
        let ours = membership.conf_state();
        if sorted(&cs.voters) != ours.voters || sorted(&cs.learners) != ours.learners {
            return Err(FatalError(format!(
                "after \"{change}\" raft has voters {:?} learners {:?}, the state {:?} {:?}",
                cs.voters, cs.learners, ours.voters, ours.learners
            )));
        }
        let ids = |voter: bool| -> Vec<String> {
            membership
                .members()
                .iter()
                .filter(|m| m.voter == voter)
                .map(|m| m.id.to_string())
                .collect()
        };
        eprintln!(
            "raft: node {}: entry {}: {change}; voters [{}], learners [{}]",
            self.id(),
            e.index,
            ids(true).join(", "),
            ids(false).join(", ")
        );
        out.membership = Some(membership);
        Ok(())
    }

    fn drain_reads(&mut self, out: &mut Output) {
        let applied = self.applied_index().get();
        self.pending_reads.retain(|&(ctx, index)| {
            if index <= applied {
                out.events.push(Event::ReadReady {
                    ctx,
                    index: LogIndex(index),
                });
                false
            } else {
                true
            }
        });
    }

    /// Writes the map's changed pages back (see [`Engine::checkpoint`]).
    pub fn checkpoint(&mut self) -> Result<(), EngineError> {
        self.note_followers();
        self.engine.borrow_mut().checkpoint().map(|_| ())
    }
}
