//! A deterministic simulator of a whole cluster in one thread.
//!
//! It runs the production [`RaftNode`] (raft-rs, the log, the map, checkpoints) of every
//! node on its own in-memory [`FaultBackend`] disk, under a simulated clock (one step is one
//! Raft tick), a simulated network that drops, duplicates, delays and reorders messages
//! and partitions nodes, and a disk that crashes, tears writes and loses what was not
//! synced. Simulated clients issue GET/SET/DELETE with exactly-once sessions, retry on
//! timeouts and follow leader hints, and their history is recorded.
//!
//! After the faulty phase the network heals, every node restarts, and the run continues
//! until the cluster converges. Then it checks:
//! - every node holds the same committed log prefix and the same map;
//! - the recorded history, closed by a final read of every key, is linearizable (so no
//!   acknowledged write was lost, no read was stale, no retry applied twice).
//!
//! Everything random comes from the seed, so a failure replays exactly from it.

use crate::command;
use crate::consensus::{Event, NodeConfig, Output, PlantedBug, ProposeError, RaftNode};
use crate::engine::EngineOptions;
use crate::io::fault::{Fault, FaultBackend, PowerLoss};
use crate::linearizability::{self, CheckResult, Input, Operation, Output as OpOutput};
use crate::log::LogOptions;
use raft::eraftpb::Message;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::path::Path;
use std::sync::Arc;

/// Knobs of one simulation.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    pub nodes: usize,
    /// Ticks of the faulty phase (one tick is 10 ms of simulated time).
    pub ticks: u64,
    pub clients: usize,
    pub keys: usize,
    /// Ticks between window seals on the leader.
    pub window_ticks: u64,
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
            drop_per_mille: 30,
            duplicate_per_mille: 10,
            delay_ticks_max: 4,
            crash_per_mille: 4,
            disk_fault_per_mille: 2,
            partition_per_mille: 3,
            planted_bug: PlantedBug::None,
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
    node: Option<RaftNode>,
    down_until: u64,
    window: Vec<ClientReq>,
    proposals: HashMap<u64, Vec<ClientReq>>,
    reads: HashMap<u64, Vec<ClientReq>>,
}

const REQUEST_TIMEOUT_TICKS: u64 = 60;
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
    next_tag: u64,
    crashes: usize,
    faults_enabled: bool,
}

fn engine_options() -> EngineOptions {
    EngineOptions {
        log: LogOptions {
            prepare_chunk_bytes: 64 << 10,
            cache_bytes: 256 << 10,
        },
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
        let nodes = (0..config.nodes)
            .map(|_| SimNode {
                disk: FaultBackend::new(),
                node: None,
                down_until: 0,
                window: Vec::new(),
                proposals: HashMap::new(),
                reads: HashMap::new(),
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
            next_tag: 1,
            crashes: 0,
            faults_enabled: true,
        }
    }

    fn node_config(&self, i: usize) -> NodeConfig {
        let voters = (1..=self.config.nodes as u64).collect();
        let mut config = NodeConfig::new(i as u64 + 1, voters);
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
                self.nodes[i].node = Some(node);
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
        let n = &mut self.nodes[i];
        n.node = None;
        n.window.clear();
        n.proposals.clear();
        n.reads.clear();
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
            let from = msg.from as usize - 1;
            if !self.connected(from, to) {
                return;
            }
        }
        if self.faults_enabled && self.rng.chance(self.config.drop_per_mille) {
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
            .node
            .as_ref()
            .and_then(|n| n.leader_id())
            .map(|id| id as usize - 1)
    }

    fn deliver(&mut self) {
        while let Some(Reverse((at, _, id))) = self.network.peek().copied() {
            if at > self.tick {
                break;
            }
            self.network.pop();
            let envelope = self.parcels.remove(&id).unwrap();
            match envelope {
                Envelope::Raft { to, msg } => {
                    if let Some(node) = self.nodes[to].node.as_mut() {
                        node.step(msg);
                    }
                }
                Envelope::Request { to, req } => self.node_request(to, req),
                Envelope::Reply { client, seq, kind } => self.client_reply(client, seq, kind),
            }
        }
    }

    fn node_request(&mut self, i: usize, req: ClientReq) {
        let Some(node) = self.nodes[i].node.as_mut() else {
            return; // a dead node says nothing
        };
        if !node.is_leader() {
            let hint = self.leader_hint(i);
            self.reply(&req, ReplyKind::NotLeader(hint));
            return;
        }
        match req.op {
            ReqOp::Get(_) => {
                let ctx = self.next_tag;
                self.next_tag += 1;
                node.read_index(ctx);
                self.nodes[i].reads.insert(ctx, vec![req]);
            }
            _ => self.nodes[i].window.push(req),
        }
    }

    fn seal_window(&mut self, i: usize) {
        let reqs = std::mem::take(&mut self.nodes[i].window);
        if reqs.is_empty() {
            return;
        }
        let mut commands = Vec::new();
        for r in &reqs {
            match &r.op {
                ReqOp::Set(k, v) => {
                    command::encode(&mut commands, command::Op::Set, r.client_id, r.seq, k, v)
                }
                ReqOp::Delete(k) => command::encode(
                    &mut commands,
                    command::Op::Delete,
                    r.client_id,
                    r.seq,
                    k,
                    b"",
                ),
                ReqOp::Get(_) => unreachable!("reads never enter a window"),
            }
        }
        let tag = self.next_tag;
        self.next_tag += 1;
        let n = reqs.len() as u64;
        let result = self.nodes[i]
            .node
            .as_mut()
            .unwrap()
            .propose(tag, commands, n);
        match result {
            Ok(_) => {
                self.nodes[i].proposals.insert(tag, reqs);
            }
            Err(ProposeError::NotLeader(_)) | Err(ProposeError::Busy) => {
                let hint = self.leader_hint(i);
                for r in reqs {
                    self.reply(&r, ReplyKind::NotLeader(hint));
                }
            }
        }
    }

    fn advance_node(&mut self, i: usize) -> Result<(), String> {
        let Some(node) = self.nodes[i].node.as_mut() else {
            return Ok(());
        };
        let mut out = Output::default();
        let result = node.advance(&mut out);
        for msg in std::mem::take(&mut out.messages) {
            let to = msg.to as usize - 1;
            self.send(Envelope::Raft { to, msg });
        }
        for event in out.events {
            match event {
                Event::Applied { tag, .. } => {
                    for r in self.nodes[i].proposals.remove(&tag).unwrap_or_default() {
                        self.reply(&r, ReplyKind::Done);
                    }
                }
                Event::Dropped { tag } => {
                    let hint = self.leader_hint(i);
                    for r in self.nodes[i].proposals.remove(&tag).unwrap_or_default() {
                        self.reply(&r, ReplyKind::NotLeader(hint));
                    }
                }
                Event::ReadReady { ctx, .. } => {
                    for r in self.nodes[i].reads.remove(&ctx).unwrap_or_default() {
                        let ReqOp::Get(key) = &r.op else {
                            unreachable!()
                        };
                        let value = self.nodes[i]
                            .node
                            .as_mut()
                            .unwrap()
                            .engine()
                            .get(key)
                            .map_err(|e| format!("node {} read failed: {e}", i + 1))?;
                        self.reply(&r, ReplyKind::Value(value));
                    }
                }
            }
        }
        if let Err(e) = result {
            if self.nodes[i].disk.crashed() {
                self.crash_node(i);
            } else {
                return Err(format!("node {} stopped at tick {}: {e}", i + 1, self.tick));
            }
        }
        Ok(())
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
            let target = self.rng.below(self.config.nodes as u64) as usize;
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
                let v = format!("c{c}v{}", client.values_written).into_bytes();
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
            ReplyKind::NotLeader(hint) => {
                let req = inflight.req.clone();
                let target =
                    hint.unwrap_or_else(|| self.rng.below(self.config.nodes as u64) as usize);
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
        let n = self.config.nodes;
        if self.rng.chance(self.config.crash_per_mille) {
            let i = self.rng.below(n as u64) as usize;
            if self.nodes[i].node.is_some() {
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

    fn step(&mut self) -> Result<(), String> {
        self.tick += 1;
        if self.faults_enabled {
            self.inject_faults()?;
        }
        for i in 0..self.nodes.len() {
            if self.nodes[i].node.is_none() && self.tick >= self.nodes[i].down_until {
                self.start_node(i)?;
            }
        }
        self.deliver();
        for c in 0..self.clients.len() {
            self.client_step(c);
        }
        for i in 0..self.nodes.len() {
            let Some(node) = self.nodes[i].node.as_mut() else {
                continue;
            };
            node.tick();
            if self.tick.is_multiple_of(self.config.window_ticks) {
                self.seal_window(i);
            }
            // Checkpoints now and then exercise the journal and replay from it.
            if self.tick % 97 == (i as u64 * 31) % 97 {
                let node = self.nodes[i].node.as_mut().unwrap();
                if node.checkpoint().is_err() {
                    if self.nodes[i].disk.crashed() {
                        self.crash_node(i);
                        continue;
                    }
                    return Err(format!("node {} checkpoint failed", i + 1));
                }
            }
            self.advance_node(i)?;
        }
        Ok(())
    }

    fn converged(&self) -> bool {
        let live: Vec<&RaftNode> = self.nodes.iter().filter_map(|n| n.node.as_ref()).collect();
        if live.len() != self.nodes.len() {
            return false;
        }
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
                    .map(|n| match &n.node {
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
                    "the cluster did not converge after healing: {states:?}"
                ));
            }
            self.step()?;
        }
        self.final_checks()
    }

    fn final_checks(mut self) -> Result<SimReport, String> {
        // Log matching: every node holds the same committed entries.
        let commit = self.nodes[0].node.as_ref().unwrap().commit_index();
        for index in 1..=commit {
            let terms: Vec<Option<u64>> = self
                .nodes
                .iter_mut()
                .map(|n| n.node.as_mut().unwrap().engine().log().term(index))
                .collect();
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
            for n in self.nodes.iter_mut() {
                let v = n
                    .node
                    .as_mut()
                    .unwrap()
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
            .nodes
            .iter()
            .filter_map(|n| n.node.as_ref())
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
