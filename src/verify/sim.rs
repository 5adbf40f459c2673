//! A deterministic simulator of a whole cluster in one thread.
//!
//! It runs the production replica core ([`Replica`]: window sealing under the size cap,
//! proposals, the two-step Ready cycle, lease and ReadIndex reads, checkpoints) over the
//! production [`RaftNode`], log and map of every node, each on its own in-memory
//! [`FaultBackend`] disk, under a simulated clock, a simulated network that drops,
//! duplicates, delays and reorders messages and partitions nodes, and a disk that
//! crashes, tears writes and loses what was not synced. GETs go through the shard's own
//! read decision ([`decide_read`], [`WaitingReads`]).
//!
//! Time: one step is 10 ms of real time. Every node has a clock of its own that runs at
//! a rate drawn from the seed, within the drift bound the lease assumes (rates within
//! ±9%, so no clock runs more than 20% faster than another); the node ticks, times its
//! windows and judges its lease by that clock. `PlantedBug::ClockDriftBeyondBound` draws
//! rates far outside the bound, and the checker must then find stale lease reads. Seeds
//! alternate between the lease and the index read mode. A checkpoint's IO runs a few
//! steps after its pages were copied, while the node goes on applying, as the server's
//! checkpoint thread does. Each node's cleaner runs a pass now and then between steps,
//! copying the live values of its mostly dead segments (small ones, so runs roll over to
//! many) and repointing its map while applies and checkpoints go on around it.
//!
//! Membership changes (a quarter of the seeds): one more node starts empty, as `--join`
//! starts it, and the current leader is asked, as an operator's `ocean-liner member`
//! asks it, to add it as a learner, to promote it once it has caught up, and then to
//! remove one of the first voters; nodes announce their log's end to their peers when
//! they start, as the transport's hello does, so the leader sends the new node a
//! snapshot. Crashes, partitions and lost messages go on around every step.
//!
//! Simulated clients issue GET/SET/DELETE with exactly-once sessions, retry on timeouts
//! and Busy, follow leader hints, and their history is recorded.
//!
//! After the faulty phase the network heals, every node restarts, and the run continues
//! until the cluster converges (and the membership changes are made). Then it checks:
//! - every member holds the same committed log prefix and the same map;
//! - the recorded history, closed by a final read of every key, is linearizable (so no
//!   acknowledged write was lost, no read was stale, no retry applied twice).
//!
//! Everything random comes from the seed, so a failure replays exactly from it.

use crate::consensus::membership::{Change, Membership};
use crate::consensus::{NodeConfig, PlantedBug, RaftNode};
use crate::ids::{LogIndex, NodeId, Term};
use crate::replica::{
    ChangeOutcome, Completed, ReadDecision, ReadMode, Replica, ReplicaConfig, ReplicaOutput,
    WaitingReads, Window, WriteOutcome, decide_read, window_is_full,
};
use crate::storage::cleaner::{Cleaner, CleanerOptions};
use crate::storage::command;
use crate::storage::engine::EngineOptions;
use crate::storage::io::fault::{Fault, FaultBackend, PowerLoss};
use crate::storage::log::LogOptions;
use crate::storage::snapshot::SnapshotSink;
use crate::storage::store::CheckpointJob;
use crate::verify::linearizability::{self, CheckResult, Input, Operation, Output as OpOutput};
use raft::eraftpb::Message;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Knobs of one simulation.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    pub nodes: usize,
    /// Ticks of the faulty phase (one tick is 10 ms of simulated time).
    pub ticks: u64,
    pub clients: usize,
    pub keys: usize,
    /// Ticks (of the node's own clock) between window seals.
    pub window_ticks: u64,
    /// A window holding this many bytes of commands is sealed at once.
    pub window_bytes_max: usize,
    pub read_mode: ReadMode,
    /// Each node's clock runs at 1 ± up to this many thousandths.
    pub clock_drift_per_mille: u64,
    pub drop_per_mille: u64,
    pub duplicate_per_mille: u64,
    pub delay_ticks_max: u64,
    /// Chance per tick that some node crashes (power loss).
    pub crash_per_mille: u64,
    /// Chance per tick that a disk is armed to crash at a near write (torn write).
    pub disk_fault_per_mille: u64,
    /// Chance per tick that a partition starts, when none is in force.
    pub partition_per_mille: u64,
    pub planted_bug: PlantedBug,
    /// Start one more node empty, add it, promote it, remove a first voter (see the
    /// module docs).
    pub membership_changes: bool,
    /// Leaders drop SETs a later write of the same entry overwrites.
    pub drop_overwritten_sets: bool,
}

impl SimConfig {
    /// The configuration CI runs for each seed.
    pub fn new(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            nodes: 3,
            ticks: 1500,
            clients: 6,
            keys: 4,
            window_ticks: 5,
            window_bytes_max: 400,
            read_mode: if seed.is_multiple_of(2) {
                ReadMode::Lease
            } else {
                ReadMode::Index
            },
            clock_drift_per_mille: 90,
            drop_per_mille: 30,
            duplicate_per_mille: 10,
            delay_ticks_max: 4,
            crash_per_mille: 4,
            disk_fault_per_mille: 2,
            partition_per_mille: 3,
            planted_bug: PlantedBug::None,
            membership_changes: seed % 4 == 3,
            drop_overwritten_sets: !seed.is_multiple_of(3),
        }
    }
}

/// What a passing run did.
#[derive(Debug, Clone, Default)]
pub struct SimReport {
    pub operations: usize,
    pub acknowledged_writes: usize,
    pub completed_reads: usize,
    pub timed_out: usize,
    pub crashes: usize,
    pub leader_changes: u64,
    pub committed_index: u64,
    /// Values the nodes' cleaners moved, and segments deleted after checkpoints.
    pub values_moved: u64,
    pub segments_deleted: u64,
    /// Snapshots streamed to followers, and those they took (installed at their next
    /// Ready).
    pub snapshots_sent: u64,
    pub snapshots_installed: u64,
    /// Membership changes made (added, promoted, removed).
    pub membership_changes: usize,
    /// SETs the running nodes' replicas dropped as overwritten in their entry (since
    /// each last started).
    pub sets_dropped: u64,
}

/// Why a run failed; replay with the same seed.
#[derive(Debug, Clone)]
pub struct SimFailure {
    pub seed: u64,
    pub message: String,
}

impl std::fmt::Display for SimFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "simulation seed {} failed: {}", self.seed, self.message)
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

#[derive(Debug, Clone)]
enum ReqOp {
    Get(Vec<u8>),
    Set(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
}

#[derive(Debug, Clone)]
struct ClientReq {
    client: usize,
    client_id: u64,
    seq: u64,
    op: ReqOp,
}

#[derive(Debug, Clone)]
enum ReplyKind {
    Done,
    Value(Option<Vec<u8>>),
    NotLeader(Option<usize>),
    Busy,
}

#[derive(Debug, Clone)]
enum Envelope {
    Raft {
        to: usize,
        msg: Message,
    },
    Request {
        to: usize,
        req: ClientReq,
    },
    Reply {
        client: usize,
        seq: u64,
        kind: ReplyKind,
    },
    /// A snapshot's chunks, then its message, as one delivery (the server streams them
    /// over one connection; a loss anywhere fails the whole transfer).
    Snapshot {
        to: usize,
        from: usize,
        msg: Message,
        chunks: std::sync::Arc<Vec<Vec<u8>>>,
    },
}

struct InFlight {
    history_index: usize,
    req: ClientReq,
    deadline: u64,
    attempts: u32,
}

struct Client {
    client_id: u64,
    seq: u64,
    target: usize,
    next_op_at: u64,
    current: Option<InFlight>,
    values_written: u64,
}

struct SimNode {
    disk: FaultBackend,
    replica: Option<Replica<ClientReq>>,
    down_until: u64,
    /// The node's one shard window.
    window: Window<ClientReq>,
    waiting_reads: WaitingReads<ClientReq>,
    read_epoch_next: u64,
    reads_waiting: bool,
    /// This node's clock rate, in thousandths of real time, and its reading in ns.
    clock_rate_per_mille: u64,
    clock_ns: u64,
    ticks: u64,
    /// A checkpoint begun (its pages are taken when its IO runs, or saved by the node's
    /// applies before then), and the step its IO runs at.
    checkpoint: Option<(CheckpointJob, u64)>,
    /// The node's cleaner (the server runs it on a thread of its own), and the files of
    /// released segments it has still to remove.
    cleaner: Option<Cleaner>,
    released: Vec<PathBuf>,
}

impl SimNode {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.clock_ns)
    }
}

/// Steps between two changes of a node's clock rate (a clock's drift wanders, e.g. with
/// temperature or under NTP slewing).
const CLOCK_RATE_STEPS: u64 = 50;

/// A clock rate in thousandths of real time, within the configured drift. With the
/// planted drift bug, the leader's clock runs at 0.15 and every other at 1.7: the leader
/// holds its lease long past the followers' promise not to elect anyone else.
fn clock_rate(config: &SimConfig, rng: &mut Rng, is_leader: bool) -> u64 {
    if config.planted_bug == PlantedBug::ClockDriftBeyondBound {
        if is_leader { 150 } else { 1700 }
    } else {
        let drift = config.clock_drift_per_mille;
        1000 - drift + rng.below(2 * drift + 1)
    }
}

const REQUEST_TIMEOUT_TICKS: u64 = 60;
/// One step of real time, and one tick of a node's own clock.
const STEP: Duration = Duration::from_millis(10);
const ELECTION_TICKS: usize = 15;
const LEASE_FRACTION: f64 = 0.8;
const WAITING_READS_MAX: usize = 64;
const ATTEMPTS_MAX: u32 = 6;
const CHECK_BUDGET: u64 = 5_000_000;

struct Sim {
    config: SimConfig,
    rng: Rng,
    tick: u64,
    nodes: Vec<SimNode>,
    clients: Vec<Client>,
    network: BinaryHeap<Reverse<(u64, u64, usize)>>,
    parcels: HashMap<usize, Envelope>,
    parcel_seq: u64,
    /// Node groups: a message crosses only between nodes of the same side.
    partition: Option<(Vec<bool>, u64)>,
    history: Vec<Operation>,
    crashes: usize,
    faults_enabled: bool,
    values_moved: u64,
    segments_deleted: u64,
    snapshots_sent: u64,
    snapshots_installed: u64,
    /// The membership changes still to make, in order, and the one proposed (by the node
    /// that proposed it, with its tag).
    changes_to_make: Vec<Change>,
    change_in_flight: Option<(usize, u64)>,
    changes_made: usize,
    /// Steps before the next try of a change.
    change_next_try: u64,
}

/// The first try of a membership change, and the pause between tries.
const CHANGE_FIRST_TICK: u64 = 150;
const CHANGE_RETRY_TICKS: u64 = 15;

fn engine_options() -> EngineOptions {
    EngineOptions {
        log: LogOptions {
            prepare_chunk_bytes: 64 << 10,
            cache_bytes: 256 << 10,
            // Small segments, so that runs roll over to new ones and clean old ones.
            segment_bytes: 192 << 10,
        },
        // Little Raft log kept for lagging followers: a node that was down or cut off
        // for a while is sent a snapshot.
        raft_log_retain_bytes: 0,
        bootstrap_membership: None,
    }
}

fn node_dir() -> &'static Path {
    Path::new("/node")
}

impl Sim {
    fn new(config: SimConfig) -> Sim {
        let mut rng = Rng(config.seed);
        let clients = (0..config.clients)
            .map(|c| Client {
                client_id: 1000 + c as u64,
                seq: 0,
                target: rng.below(config.nodes as u64) as usize,
                next_op_at: rng.below(20),
                current: None,
                values_written: 0,
            })
            .collect();
        // With membership changes, one more node: the one that joins.
        let node_count = config.nodes + config.membership_changes as usize;
        let changes_to_make = if config.membership_changes {
            let joiner = NodeId::from_index(config.nodes);
            let nowhere = std::net::SocketAddr::from(([0, 0, 0, 0], 0));
            vec![
                Change::AddLearner {
                    id: joiner,
                    peer_addr: nowhere,
                    client_addr: nowhere,
                },
                Change::Promote { id: joiner },
                Change::Remove {
                    id: NodeId::from_index(rng.below(config.nodes as u64) as usize),
                },
            ]
        } else {
            Vec::new()
        };
        let nodes = (0..node_count)
            .map(|i| {
                let clock_rate_per_mille = clock_rate(&config, &mut rng, false);
                SimNode {
                    disk: FaultBackend::with_seed(config.seed ^ i as u64),
                    replica: None,
                    down_until: 0,
                    window: Window::default(),
                    waiting_reads: WaitingReads::default(),
                    read_epoch_next: 1,
                    reads_waiting: false,
                    clock_rate_per_mille,
                    clock_ns: 0,
                    ticks: 0,
                    checkpoint: None,
                    cleaner: None,
                    released: Vec::new(),
                }
            })
            .collect();
        Sim {
            config,
            rng,
            tick: 0,
            nodes,
            clients,
            network: BinaryHeap::new(),
            parcels: HashMap::new(),
            parcel_seq: 0,
            partition: None,
            history: Vec::new(),
            crashes: 0,
            faults_enabled: true,
            values_moved: 0,
            segments_deleted: 0,
            snapshots_sent: 0,
            snapshots_installed: 0,
            changes_to_make,
            change_in_flight: None,
            changes_made: 0,
            change_next_try: CHANGE_FIRST_TICK,
        }
    }

    fn node_config(&self, i: usize) -> NodeConfig {
        let voters = (0..self.config.nodes).map(NodeId::from_index).collect();
        let mut config = NodeConfig::new(NodeId::from_index(i), voters);
        if i >= self.config.nodes {
            // The node that joins: no membership until the cluster sends it one.
            config.bootstrap = Membership::default();
        }
        config.election_tick = ELECTION_TICKS;
        config.engine = engine_options();
        config.planted_bug = self.config.planted_bug;
        config.log_warnings = false;
        config.seed = self.config.seed ^ ((i as u64 + 1) << 32) ^ self.tick;
        config
    }

    fn start_node(&mut self, i: usize) -> Result<(), String> {
        let config = self.node_config(i);
        let disk = self.nodes[i].disk.clone();
        match RaftNode::open(Arc::new(disk.clone()), node_dir(), config) {
            Ok(node) => {
                let replica_config = ReplicaConfig {
                    tick: STEP,
                    election_ticks: ELECTION_TICKS,
                    lease_fraction: LEASE_FRACTION,
                    read_mode: self.config.read_mode,
                    read_round_retry: STEP * 6,
                    drop_overwritten_sets: self.config.drop_overwritten_sets,
                };
                let cleaner = node.engine().cleaner(CleanerOptions::default());
                let last_index = node.last_index();
                let n = &mut self.nodes[i];
                n.replica = Some(Replica::new(node, replica_config));
                n.cleaner = Some(cleaner);
                // The clock ran on while the node was down; its ticks start from now.
                n.ticks = n.clock_ns / STEP.as_nanos() as u64;
                // Its hello: every peer learns how far its log reaches.
                for (k, other) in self.nodes.iter_mut().enumerate() {
                    if k != i
                        && let Some(r) = other.replica.as_mut()
                    {
                        r.node_mut()
                            .peer_log_reaches(NodeId::from_index(i), last_index);
                    }
                }
                Ok(())
            }
            Err(_) if disk.crashed() => {
                // An armed disk fault fired during recovery: that is another crash.
                self.crash_node(i);
                Ok(())
            }
            Err(e) => Err(format!(
                "node {} failed to recover at tick {}: {e}",
                i + 1,
                self.tick
            )),
        }
    }

    fn crash_node(&mut self, i: usize) {
        if self.change_in_flight.is_some_and(|(node, _)| node == i) {
            // Its answer died with it; the change may have committed (see change_step).
            self.change_in_flight = None;
        }
        let n = &mut self.nodes[i];
        n.replica = None;
        n.window.clear();
        n.waiting_reads = WaitingReads::default();
        n.reads_waiting = false;
        n.checkpoint = None;
        n.cleaner = None;
        // Files released but not yet removed stay on the disk, to be found on restart.
        n.released.clear();
        let mode = match self.rng.below(3) {
            0 => PowerLoss::DropUnsynced,
            1 => PowerLoss::KeepUnsynced,
            _ => PowerLoss::KeepRandomSectors(self.rng.next()),
        };
        n.disk.power_loss(mode);
        n.down_until = self.tick + 5 + self.rng.below(60);
        self.crashes += 1;
    }

    fn connected(&self, a: usize, b: usize) -> bool {
        match &self.partition {
            Some((side, _)) => side[a] == side[b],
            None => true,
        }
    }

    fn send(&mut self, envelope: Envelope) {
        if let Envelope::Raft { to, ref msg } = envelope {
            let Some(from) = NodeId::from_raft_id(msg.from) else {
                return;
            };
            if !self.connected(from.index(), to) {
                return;
            }
        }
        if let Envelope::Snapshot { to, from, .. } = envelope
            && (!self.connected(from, to)
                || (self.faults_enabled && self.rng.chance(self.config.drop_per_mille)))
        {
            // The connection broke: the sender learns of it.
            self.report_snapshot(from, to, false);
            return;
        }
        let is_snapshot = matches!(envelope, Envelope::Snapshot { .. });
        if !is_snapshot && self.faults_enabled && self.rng.chance(self.config.drop_per_mille) {
            return;
        }
        let copies = if self.faults_enabled && self.rng.chance(self.config.duplicate_per_mille) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let at = self.tick + 1 + self.rng.below(self.config.delay_ticks_max);
            self.parcel_seq += 1;
            let id = self.parcel_seq as usize;
            self.parcels.insert(id, envelope.clone());
            self.network.push(Reverse((at, self.parcel_seq, id)));
        }
    }

    fn reply(&mut self, req: &ClientReq, kind: ReplyKind) {
        self.send(Envelope::Reply {
            client: req.client,
            seq: req.seq,
            kind,
        });
    }

    fn leader_hint(&self, i: usize) -> Option<usize> {
        self.nodes[i]
            .replica
            .as_ref()
            .and_then(|r| r.node().leader_id())
            .map(NodeId::index)
    }

    fn deliver(&mut self) -> Result<(), String> {
        while let Some(Reverse((at, _, id))) = self.network.peek().copied() {
            if at > self.tick {
                break;
            }
            self.network.pop();
            let envelope = self.parcels.remove(&id).unwrap();
            match envelope {
                Envelope::Raft { to, msg } => {
                    if let Some(replica) = self.nodes[to].replica.as_mut() {
                        replica.node_mut().step(msg);
                    }
                }
                Envelope::Request { to, req } => self.node_request(to, req)?,
                Envelope::Reply { client, seq, kind } => self.client_reply(client, seq, kind),
                Envelope::Snapshot {
                    to,
                    from,
                    msg,
                    chunks,
                } => self.receive_snapshot(to, from, msg, &chunks)?,
            }
        }
        Ok(())
    }

    /// Tells node `from` how its snapshot to `to` fared (if it still runs).
    fn report_snapshot(&mut self, from: usize, to: usize, delivered: bool) {
        if let Some(replica) = self.nodes[from].replica.as_mut() {
            replica
                .node_mut()
                .report_snapshot(NodeId::from_index(to), delivered);
        }
    }

    /// Streams a snapshot into node `to` (as the server's receiving connection does),
    /// then steps its message; the next Ready installs it.
    fn receive_snapshot(
        &mut self,
        to: usize,
        from: usize,
        msg: Message,
        chunks: &[Vec<u8>],
    ) -> Result<(), String> {
        if self.nodes[to].replica.is_none() {
            self.report_snapshot(from, to, false);
            return Ok(());
        }
        // An install writes a checkpoint of its own: a checkpoint still out finishes first.
        if !self.finish_checkpoint(to)? {
            self.report_snapshot(from, to, false);
            return Ok(());
        }
        let replica = self.nodes[to].replica.as_mut().expect("checked above");
        let mut sink = SnapshotSink::new(replica.node().engine().snapshot_target());
        let mut result = Ok(());
        for c in chunks {
            result = sink.accept(c);
            if result.is_err() {
                break;
            }
        }
        let staged = result.and_then(|_| sink.finish());
        match staged {
            Ok(staged) => {
                let replica = self.nodes[to].replica.as_mut().expect("checked above");
                if replica.node_mut().step_snapshot(msg, staged) {
                    self.snapshots_installed += 1;
                }
                self.report_snapshot(from, to, true);
                Ok(())
            }
            Err(_) if self.nodes[to].disk.crashed() => {
                self.crash_node(to);
                self.report_snapshot(from, to, false);
                Ok(())
            }
            Err(e) => Err(format!("node {} refused a snapshot: {e}", to + 1)),
        }
    }

    fn node_request(&mut self, i: usize, req: ClientReq) -> Result<(), String> {
        let n = &mut self.nodes[i];
        let now = n.now();
        let Some(replica) = n.replica.as_mut() else {
            return Ok(()); // a dead node says nothing
        };
        if let ReqOp::Get(key) = &req.op {
            let view = replica.read_view(n.read_epoch_next);
            match decide_read(&view, now, n.waiting_reads.len(), WAITING_READS_MAX) {
                ReadDecision::Serve => {
                    let value = replica
                        .node()
                        .engine()
                        .get(key)
                        .map_err(|e| format!("node {} read failed: {e}", i + 1))?;
                    self.reply(&req, ReplyKind::Value(value));
                }
                ReadDecision::Wait { epoch } => {
                    n.waiting_reads.push(epoch, req);
                    n.reads_waiting = true;
                }
                ReadDecision::NotLeader => {
                    let hint = self.leader_hint(i);
                    self.reply(&req, ReplyKind::NotLeader(hint));
                }
                ReadDecision::Busy => self.reply(&req, ReplyKind::Busy),
            }
            return Ok(());
        }
        if !replica.node().is_leader() {
            let hint = self.leader_hint(i);
            self.reply(&req, ReplyKind::NotLeader(hint));
            return Ok(());
        }
        let (op, key, value) = match &req.op {
            ReqOp::Set(k, v) => (command::CommandOp::Set, k, &v[..]),
            ReqOp::Delete(k) => (command::CommandOp::Delete, k, &b""[..]),
            ReqOp::Get(_) => unreachable!("handled above"),
        };
        command::encode(
            &mut n.window.commands,
            op,
            req.client_id,
            req.seq,
            key,
            value,
        );
        n.window.replies.push(req);
        if window_is_full(n.window.commands.len(), self.config.window_bytes_max) {
            self.seal_window(i);
        }
        Ok(())
    }

    /// Seals the node's window into one proposal (the server seals every shard's).
    fn seal_window(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        let Some(replica) = n.replica.as_mut() else {
            return;
        };
        let window = std::mem::take(&mut n.window);
        let mut out = ReplicaOutput::default();
        replica.seal(vec![window], &mut out);
        self.finish(i, out);
    }

    /// In index mode, one ReadIndex round covers every GET waiting when it starts.
    fn start_read_round(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        let now = n.now();
        let (Some(replica), true) = (n.replica.as_mut(), n.reads_waiting) else {
            return;
        };
        let epochs = &mut n.read_epoch_next;
        let started = replica.start_read_round(now, || {
            *epochs += 1;
            *epochs - 1
        });
        n.reads_waiting = !started;
    }

    /// Sends the messages and answers the windows a replica call produced.
    fn finish(&mut self, i: usize, mut out: ReplicaOutput<ClientReq>) {
        for (tag, outcome) in std::mem::take(&mut out.changes) {
            if self.change_in_flight != Some((i, tag)) {
                continue;
            }
            self.change_in_flight = None;
            if let ChangeOutcome::Made(_) = outcome {
                self.changes_to_make.remove(0);
                self.changes_made += 1;
            }
            // Refused (cannot happen: one change at a time, checked first) or dropped
            // (leadership moved; it may still commit): tried again, and the rules refuse
            // it if it did commit, which shows as made below.
        }
        for (msg, mut source) in std::mem::take(&mut out.snapshots) {
            let Some(to) = NodeId::from_raft_id(msg.to).map(NodeId::index) else {
                continue;
            };
            let mut chunks = Vec::new();
            let read = loop {
                match source.next_chunk() {
                    Ok(Some(c)) => chunks.push(c),
                    Ok(None) => break true,
                    Err(_) => break false,
                }
            };
            drop(source);
            if !read {
                self.report_snapshot(i, to, false);
                continue;
            }
            self.snapshots_sent += 1;
            self.send(Envelope::Snapshot {
                to,
                from: i,
                msg,
                chunks: std::sync::Arc::new(chunks),
            });
        }
        for msg in std::mem::take(&mut out.messages) {
            let Some(to) = NodeId::from_raft_id(msg.to) else {
                continue;
            };
            self.send(Envelope::Raft {
                to: to.index(),
                msg,
            });
        }
        for Completed {
            windows, outcome, ..
        } in out.completed
        {
            let kind = match outcome {
                None => continue,
                Some(WriteOutcome::Applied) => ReplyKind::Done,
                Some(WriteOutcome::Busy) => ReplyKind::Busy,
                Some(_) => ReplyKind::NotLeader(self.leader_hint(i)),
            };
            for r in windows.into_iter().flat_map(|w| w.replies) {
                self.reply(&r, kind.clone());
            }
        }
    }

    /// The Ready cycle: what may leave before the write is sent first (it can arrive even
    /// if the node dies while writing), then persist and apply; then answer the reads
    /// whose round completed.
    fn advance_node(&mut self, i: usize) -> Result<(), String> {
        let Some(replica) = self.nodes[i].replica.as_mut() else {
            return Ok(());
        };
        let mut out = ReplicaOutput::default();
        replica.ready(&mut out);
        self.finish(i, out);
        let replica = self.nodes[i].replica.as_mut().expect("checked above");
        let mut out = ReplicaOutput::default();
        let result = replica.persist_and_apply(&mut out);
        self.finish(i, out);
        if let Err(e) = result {
            if self.nodes[i].disk.crashed() {
                self.crash_node(i);
                return Ok(());
            }
            return Err(format!("node {} stopped at tick {}: {e}", i + 1, self.tick));
        }
        self.serve_waiting_reads(i)
    }

    fn serve_waiting_reads(&mut self, i: usize) -> Result<(), String> {
        let n = &mut self.nodes[i];
        let Some(replica) = n.replica.as_ref() else {
            return Ok(());
        };
        let leader = replica.node().is_leader();
        let (ready, still) = n
            .waiting_reads
            .take_ready(leader, replica.read_epoch_done());
        n.reads_waiting |= still;
        for r in ready {
            let kind = if leader {
                let ReqOp::Get(key) = &r.op else {
                    unreachable!("only GETs wait for rounds")
                };
                let value = self.nodes[i]
                    .replica
                    .as_ref()
                    .expect("checked above")
                    .node()
                    .engine()
                    .get(key)
                    .map_err(|e| format!("node {} read failed: {e}", i + 1))?;
                ReplyKind::Value(value)
            } else {
                ReplyKind::NotLeader(self.leader_hint(i))
            };
            self.reply(&r, kind);
        }
        Ok(())
    }

    /// Begins a checkpoint now and runs its IO a few steps later, while the node goes on
    /// applying (the server runs it on a thread of its own): pages the node changes
    /// meanwhile reach the journal through the copies its applies saved.
    fn checkpoint_step(&mut self, i: usize) -> Result<(), String> {
        let tick = self.tick;
        if self.nodes[i]
            .checkpoint
            .as_ref()
            .is_some_and(|(_, due)| tick >= *due)
        {
            self.finish_checkpoint(i)?;
        } else if self.nodes[i].checkpoint.is_none() && tick % 97 == (i as u64 * 31) % 97 {
            let due = tick + 1 + self.rng.below(6);
            let replica = self.nodes[i].replica.as_mut().expect("a live node");
            if let Some(job) = replica.checkpoint_begin() {
                self.nodes[i].checkpoint = Some((job, due));
            }
        }
        Ok(())
    }

    /// Runs the IO of node `i`'s checkpoint job, if one is out, and hands the job back.
    /// Returns false if the node crashed doing so.
    fn finish_checkpoint(&mut self, i: usize) -> Result<bool, String> {
        let Some((mut job, _)) = self.nodes[i].checkpoint.take() else {
            return Ok(true);
        };
        let result = job.write();
        let replica = self.nodes[i].replica.as_mut().expect("a live node");
        match replica.checkpoint_end(job, result) {
            Ok(reclaimed) => {
                self.segments_deleted += reclaimed.segments;
                self.nodes[i].released.extend(reclaimed.files);
                Ok(true)
            }
            Err(_) if self.nodes[i].disk.crashed() => {
                self.crash_node(i);
                Ok(false)
            }
            Err(e) => Err(format!("node {} checkpoint failed: {e}", i + 1)),
        }
    }

    /// Runs one cleaning pass now and then, between the node's other steps: its copies and
    /// repointing interleave with applies and checkpoints at step granularity.
    fn clean_step(&mut self, i: usize) -> Result<(), String> {
        if !(self.tick + i as u64 * 5).is_multiple_of(17) {
            return Ok(());
        }
        let n = &mut self.nodes[i];
        let Some(cleaner) = n.cleaner.as_mut() else {
            return Ok(());
        };
        for path in std::mem::take(&mut n.released) {
            if let Err(e) = crate::storage::io::remove_durable(&n.disk, &path) {
                if n.disk.crashed() {
                    self.crash_node(i);
                    return Ok(());
                }
                return Err(format!(
                    "node {} cannot remove {}: {e}",
                    i + 1,
                    path.display()
                ));
            }
        }
        match cleaner.clean_one() {
            Ok(Some(report)) => {
                self.values_moved += report.moved;
                // Now and then the segment being filled is sealed, so emptied copies go.
                if self.rng.below(4) == 0 {
                    cleaner.seal();
                }
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(_) if n.disk.crashed() => {
                self.crash_node(i);
                Ok(())
            }
            Err(e) => Err(format!("node {} cleaning failed: {e}", i + 1)),
        }
    }

    fn client_step(&mut self, c: usize) {
        let tick = self.tick;
        if let Some(inflight) = self.clients[c].current.as_mut() {
            if tick < inflight.deadline {
                return;
            }
            inflight.attempts += 1;
            if inflight.attempts >= ATTEMPTS_MAX {
                // Give up: the outcome stays unknown (ret = None) in the history.
                self.clients[c].current = None;
                self.clients[c].next_op_at = tick + 1;
                return;
            }
            inflight.deadline = tick + REQUEST_TIMEOUT_TICKS;
            let req = inflight.req.clone();
            let target = self.rng.below(self.nodes.len() as u64) as usize;
            self.clients[c].target = target;
            self.send(Envelope::Request { to: target, req });
            return;
        }
        if tick < self.clients[c].next_op_at || !self.faults_enabled {
            return;
        }
        let key = format!("key{}", self.rng.below(self.config.keys as u64)).into_bytes();
        let client = &mut self.clients[c];
        client.seq += 1;
        let (op, input) = match self.rng.below(10) {
            0..=4 => (ReqOp::Get(key.clone()), Input::Get),
            5..=8 => {
                client.values_written += 1;
                let mut v = format!("c{c}v{}", client.values_written).into_bytes();
                // Half the values are too long for an inline slot: they are read from the
                // log, and the cleaner has them to move.
                if self.rng.below(2) == 0 {
                    v.resize(64 + self.rng.below(200) as usize, b'.');
                }
                (ReqOp::Set(key.clone(), v.clone()), Input::Set(v))
            }
            _ => (ReqOp::Delete(key.clone()), Input::Delete),
        };
        let req = ClientReq {
            client: c,
            client_id: client.client_id,
            seq: client.seq,
            op,
        };
        self.history.push(Operation {
            client: c as u64,
            key,
            input,
            call: tick,
            ret: None,
            output: OpOutput::Unknown,
        });
        client.current = Some(InFlight {
            history_index: self.history.len() - 1,
            req: req.clone(),
            deadline: tick + REQUEST_TIMEOUT_TICKS,
            attempts: 0,
        });
        let target = client.target;
        self.send(Envelope::Request { to: target, req });
    }

    fn client_reply(&mut self, c: usize, seq: u64, kind: ReplyKind) {
        let tick = self.tick;
        let Some(inflight) = self.clients[c].current.as_mut() else {
            return;
        };
        if inflight.req.seq != seq {
            return; // a late or duplicated reply to an earlier request
        }
        match kind {
            ReplyKind::Busy => {
                // Back off briefly, then ask the same node again.
                inflight.deadline = tick + 2 + self.rng.below(4);
            }
            ReplyKind::NotLeader(hint) => {
                let req = inflight.req.clone();
                let target =
                    hint.unwrap_or_else(|| self.rng.below(self.nodes.len() as u64) as usize);
                self.clients[c].target = target;
                self.send(Envelope::Request { to: target, req });
            }
            ReplyKind::Done | ReplyKind::Value(_) => {
                let op = &mut self.history[inflight.history_index];
                op.ret = Some(tick);
                op.output = match kind {
                    ReplyKind::Value(v) => OpOutput::Value(v),
                    _ => OpOutput::Ok,
                };
                self.clients[c].current = None;
                self.clients[c].next_op_at = tick + self.rng.below(4);
            }
        }
    }

    fn inject_faults(&mut self) -> Result<(), String> {
        let n = self.nodes.len();
        if self.tick.is_multiple_of(CLOCK_RATE_STEPS) {
            for i in 0..n {
                let leader = self.nodes[i]
                    .replica
                    .as_ref()
                    .is_some_and(|r| r.node().is_leader());
                self.nodes[i].clock_rate_per_mille =
                    clock_rate(&self.config, &mut self.rng, leader);
            }
        }
        if self.rng.chance(self.config.crash_per_mille) {
            let i = self.rng.below(n as u64) as usize;
            if self.nodes[i].replica.is_some() {
                self.crash_node(i);
            }
        }
        if self.rng.chance(self.config.disk_fault_per_mille) {
            let i = self.rng.below(n as u64) as usize;
            let disk = &self.nodes[i].disk;
            let at = disk.io_points() + 1 + self.rng.below(20);
            let torn_sectors = match self.rng.below(3) {
                0 => 0,
                1 => 1 + self.rng.below(8) as usize,
                _ => usize::MAX,
            };
            disk.arm(at, Fault::Crash { torn_sectors });
        }
        match &self.partition {
            Some((_, until)) if self.tick >= *until => self.partition = None,
            None if self.rng.chance(self.config.partition_per_mille) => {
                let side: Vec<bool> = (0..n).map(|_| self.rng.below(2) == 0).collect();
                let until = self.tick + 20 + self.rng.below(200);
                self.partition = Some((side, until));
            }
            _ => {}
        }
        Ok(())
    }

    /// Asks the leader for the next membership change, as an operator would: once a
    /// change is settled, after a pause; a promotion only once the learner has caught up.
    fn change_step(&mut self) {
        let Some(change) = self.changes_to_make.first().cloned() else {
            return;
        };
        if self.change_in_flight.is_some() || self.tick < self.change_next_try {
            return;
        }
        self.change_next_try = self.tick + CHANGE_RETRY_TICKS;
        let Some(leader) = (0..self.nodes.len()).find(|&k| {
            self.nodes[k]
                .replica
                .as_ref()
                .is_some_and(|r| r.node().is_leader())
        }) else {
            return;
        };
        let replica = self.nodes[leader].replica.as_mut().expect("found above");
        let membership = replica.node().membership();
        if membership.check(&change).is_err() {
            // A change dropped earlier committed after all.
            self.changes_to_make.remove(0);
            self.changes_made += 1;
            return;
        }
        match change {
            Change::Promote { id } if !replica.node().has_caught_up(id, 64) => return,
            // A leader hands leadership over before removing itself.
            Change::Remove { id } if id == replica.node().id() => {
                replica.transfer_leadership();
                return;
            }
            _ => {}
        }
        if let Ok(tag) = replica.propose_change(&change) {
            self.change_in_flight = Some((leader, tag));
        }
    }

    /// The nodes the cluster's membership names (as its leader, or else any live node,
    /// has applied it).
    fn members(&self) -> Vec<usize> {
        let view = self
            .nodes
            .iter()
            .filter_map(|n| n.replica.as_ref().map(|r| r.node()))
            .max_by_key(|n| (n.is_leader(), n.applied_index()))
            .map(|n| n.membership());
        match view {
            Some(m) => m.members().iter().map(|m| m.id.index()).collect(),
            None => (0..self.nodes.len()).collect(),
        }
    }

    fn step(&mut self) -> Result<(), String> {
        self.tick += 1;
        if self.faults_enabled {
            self.inject_faults()?;
        }
        self.change_step();
        for i in 0..self.nodes.len() {
            if self.nodes[i].replica.is_none() && self.tick >= self.nodes[i].down_until {
                self.start_node(i)?;
            }
        }
        self.deliver()?;
        for c in 0..self.clients.len() {
            self.client_step(c);
        }
        for i in 0..self.nodes.len() {
            // Every clock runs on, a dead node's too; a live node ticks each time its own
            // clock passes a tick, and seals a window every few of its ticks.
            let n = &mut self.nodes[i];
            n.clock_ns += STEP.as_nanos() as u64 * n.clock_rate_per_mille / 1000;
            loop {
                let n = &mut self.nodes[i];
                let Some(replica) = n.replica.as_mut() else {
                    break;
                };
                if (n.ticks + 1) * STEP.as_nanos() as u64 > n.clock_ns {
                    break;
                }
                n.ticks += 1;
                replica.tick(Duration::from_nanos(n.clock_ns));
                if replica.take_read_round_lost() {
                    n.reads_waiting = true;
                }
                if n.ticks.is_multiple_of(self.config.window_ticks) {
                    self.seal_window(i);
                    self.start_read_round(i);
                }
            }
            if self.nodes[i].replica.is_none() {
                continue;
            }
            self.checkpoint_step(i)?;
            if self.nodes[i].replica.is_some() {
                self.clean_step(i)?;
            }
            if self.nodes[i].replica.is_some() {
                self.advance_node(i)?;
            }
        }
        Ok(())
    }

    fn live_nodes(&self) -> impl Iterator<Item = &RaftNode> {
        self.nodes
            .iter()
            .filter_map(|n| n.replica.as_ref().map(|r| r.node()))
    }

    fn converged(&self) -> bool {
        if !self.changes_to_make.is_empty() || self.change_in_flight.is_some() {
            return false;
        }
        let members = self.members();
        if members.iter().any(|&k| self.nodes[k].replica.is_none()) {
            return false;
        }
        let live: Vec<&RaftNode> = members
            .iter()
            .filter_map(|&k| self.nodes[k].replica.as_ref().map(|r| r.node()))
            .collect();
        let Some(leader) = live.iter().find(|n| n.is_leader()) else {
            return false;
        };
        let commit = leader.commit_index();
        live.iter()
            .all(|n| n.applied_index() == commit && n.last_index() == commit)
            && self.clients.iter().all(|c| c.current.is_none())
    }

    fn run(mut self) -> Result<SimReport, String> {
        for i in 0..self.nodes.len() {
            self.start_node(i)?;
        }
        while self.tick < self.config.ticks {
            self.step()?;
        }
        // Heal: no more faults, every node back, and run until the cluster settles.
        self.faults_enabled = false;
        self.partition = None;
        for n in &self.nodes {
            n.disk.disarm();
        }
        let settle_until = self.tick + 3000;
        while !self.converged() {
            if self.tick >= settle_until {
                let states: Vec<String> = self
                    .nodes
                    .iter()
                    .map(|n| match n.replica.as_ref().map(|r| r.node()) {
                        Some(r) => format!(
                            "{:?} term {} commit {} applied {} last {}",
                            r.role(),
                            r.term(),
                            r.commit_index(),
                            r.applied_index(),
                            r.last_index()
                        ),
                        None => "down".into(),
                    })
                    .collect();
                return Err(format!(
                    "the cluster did not converge after healing: {states:?}; membership \
                     changes still to make: {:?} (one in flight: {:?}), members {:?}",
                    self.changes_to_make,
                    self.change_in_flight,
                    self.members()
                ));
            }
            self.step()?;
        }
        self.final_checks()
    }

    /// The live members' nodes (a removed node is left behind, as it should be).
    fn member_nodes(&self) -> Vec<&RaftNode> {
        self.members()
            .into_iter()
            .filter_map(|k| self.nodes[k].replica.as_ref().map(|r| r.node()))
            .collect()
    }

    fn final_checks(mut self) -> Result<SimReport, String> {
        // Log matching: every member holds the same committed entries (those every log
        // still holds; earlier ones went into snapshots).
        let nodes: Vec<&RaftNode> = self.member_nodes();
        let commit = nodes[0].commit_index().get();
        let first = nodes
            .iter()
            .map(|n| n.engine().log().first_index().get())
            .max()
            .unwrap_or(1);
        for index in (first..=commit).map(LogIndex) {
            let terms: Vec<Option<Term>> =
                nodes.iter().map(|n| n.engine().log().term(index)).collect();
            if terms.iter().any(|t| *t != terms[0]) {
                return Err(format!(
                    "logs diverge at committed index {index}: terms {terms:?}"
                ));
            }
        }
        // Every replica's map agrees, and a final read of each key closes the history.
        let final_tick = self.tick + 1;
        for k in 0..self.config.keys {
            let key = format!("key{k}").into_bytes();
            let mut values = Vec::new();
            for n in self.member_nodes() {
                let v = n
                    .engine()
                    .get(&key)
                    .map_err(|e| format!("final read failed: {e}"))?;
                values.push(v);
            }
            if values.iter().any(|v| *v != values[0]) {
                return Err(format!(
                    "replicas disagree on {}: {values:?}",
                    String::from_utf8_lossy(&key)
                ));
            }
            self.history.push(Operation {
                client: u64::MAX,
                key,
                input: Input::Get,
                call: final_tick,
                ret: Some(final_tick),
                output: OpOutput::Value(values.swap_remove(0)),
            });
        }
        match linearizability::check(&self.history, CHECK_BUDGET) {
            CheckResult::Ok => {}
            CheckResult::Illegal { key, explanation } => {
                return Err(format!(
                    "history is not linearizable for key {}: {explanation}",
                    String::from_utf8_lossy(&key)
                ));
            }
            CheckResult::Unknown => {
                return Err("the linearizability check ran out of budget".into());
            }
        }
        let leader_changes = self
            .live_nodes()
            .map(|n| n.leader_changes())
            .max()
            .unwrap_or(0);
        Ok(SimReport {
            operations: self.history.len(),
            acknowledged_writes: self
                .history
                .iter()
                .filter(|o| o.ret.is_some() && !matches!(o.input, Input::Get))
                .count(),
            completed_reads: self
                .history
                .iter()
                .filter(|o| o.ret.is_some() && matches!(o.input, Input::Get))
                .count(),
            timed_out: self.history.iter().filter(|o| o.ret.is_none()).count(),
            crashes: self.crashes,
            values_moved: self.values_moved,
            segments_deleted: self.segments_deleted,
            snapshots_sent: self.snapshots_sent,
            snapshots_installed: self.snapshots_installed,
            membership_changes: self.changes_made,
            sets_dropped: self
                .nodes
                .iter()
                .filter_map(|n| n.replica.as_ref())
                .map(Replica::dropped_sets)
                .sum(),
            leader_changes,
            committed_index: commit,
        })
    }
}

/// Runs one simulation. A panic inside the nodes (an assertion of raft-rs or of the
/// engine) is a failure of the run, reported like any other.
pub fn run(config: &SimConfig) -> Result<SimReport, SimFailure> {
    let seed = config.seed;
    let config = config.clone();
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || Sim::new(config).run())) {
        Ok(result) => result.map_err(|message| SimFailure { seed, message }),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(SimFailure {
                seed,
                message: format!("a node panicked: {message}"),
            })
        }
    }
}
