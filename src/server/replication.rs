//! The replication thread: drives this node's [`Replica`] with real time, the TCP
//! transport and the shards' windows, and publishes what the shards need.
//!
//! Per loop turn: wait for a peer message, a shard's "window full" signal, or the next
//! tick or seal; feed the replica what arrived; tick; seal the windows and start a read
//! round; run the Ready cycle — send the messages that may leave first, then persist and
//! apply — and route completed windows back to their shards; publish role, indexes,
//! lease and read epochs through atomics. Every decision is the replica's; this file only
//! moves data between it and the threads and sockets around it. Checkpoint IO runs on a
//! thread of its own so windows, heartbeats and lease renewals go on meanwhile.

use super::Shared;
use super::transport::{Inbound, Transport};
use super::window::ReplyTo;
use crate::consensus::adaptive::AdaptiveTimeout;
use crate::consensus::membership::Change;
use crate::ids::NodeId;
use crate::replica::{ChangeOutcome, Completed, Replica, ReplicaOutput, Window, WriteOutcome};
use crate::storage::engine::Outcome;
use crate::storage::store::CheckpointJob;
use crossbeam_channel::{Receiver, Sender, select};
use raft::eraftpb::Message;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// What a shard gets back for one sealed window: every write in it shares the entry's
/// fate.
pub struct Completion {
    pub window: Window<ReplyTo>,
    pub outcome: WriteOutcome,
    /// What applying did to each of the window's commands, in order (empty unless the
    /// window was applied).
    pub outcomes: Vec<Outcome>,
}

/// Settings of the replication loop.
pub struct ReplicationConfig {
    pub batch_window: Duration,
    pub checkpoint_interval: Duration,
    pub tick: Duration,
    /// Named in `member list` answers.
    pub cluster_id: u64,
}

/// A learner may be promoted once it lacks at most this many of the leader's entries.
const PROMOTE_LAG_MAX: u64 = 64;

/// A checkpoint's IO running on its own thread; it hands the job back when done.
type CheckpointThread = std::thread::JoinHandle<(CheckpointJob, std::io::Result<()>)>;

const PING_EVERY_TICKS: u64 = 5;
/// A follower's election clock stands still for at most this many ticks at a time.
const HOLD_TICKS_MAX: usize = 1000;
/// Emptied window buffers kept per slot for reuse.
const SPARES_MAX: usize = 4;
const INBOUND_DRAIN_MAX: usize = 4096;
const STOP_DRAIN: Duration = Duration::from_secs(2);

/// Heartbeats sent on the leader's behalf while its replication core is busy with a large
/// entry. Preparing log space for it, encoding it once per follower and writing it each
/// take time in proportion to its size (a 16 MiB value: 50–150 ms each here), in which
/// the core sends nothing; together they can pass an election timeout, and followers that
/// hear nothing would depose a healthy leader. So around such a seal a helper thread sends
/// the leader's heartbeats ([`crate::consensus::RaftNode::liveness_heartbeats`]: its term,
/// commit index 0, so they advance nothing). They stop when the core is done, or after
/// [`KEEPALIVE_MAX`], so a leader stuck in its IO is still replaced.
#[derive(Default)]
struct Keepalive {
    armed: Mutex<Option<(Vec<Message>, Instant)>>,
    wake: Condvar,
    stop: AtomicBool,
}

/// Windows that together hold at least this much are sealed under [`Keepalive`].
const KEEPALIVE_SEAL_BYTES: usize = 2 << 20;
/// The longest a keepalive runs for one seal.
const KEEPALIVE_MAX: Duration = Duration::from_secs(1);
/// How often an idle keepalive thread looks at its stop flag anyway.
const KEEPALIVE_IDLE: Duration = Duration::from_millis(200);
/// How often keepalive heartbeats go out (the leader's heartbeat interval).
const KEEPALIVE_EVERY: Duration = Duration::from_millis(30);

impl Keepalive {
    fn arm(&self, heartbeats: Vec<Message>) {
        if heartbeats.is_empty() {
            return;
        }
        *self.armed.lock().unwrap() = Some((heartbeats, Instant::now() + KEEPALIVE_MAX));
        self.wake.notify_all();
    }

    fn disarm(&self) {
        self.armed.lock().unwrap().take();
    }

    /// Stops the helper thread. `stop` is set under the lock the thread holds between
    /// looking at it and waiting, so the wake-up cannot fall between the two.
    fn finish(&self) {
        let guard = self.armed.lock().unwrap();
        self.stop.store(true, Ordering::Release);
        drop(guard);
        self.wake.notify_all();
    }

    /// The helper thread: sends while armed, until `stop`.
    fn run(&self, transport: &Transport) {
        let mut armed = self.armed.lock().unwrap();
        while !self.stop.load(Ordering::Acquire) {
            let until = match &*armed {
                Some((heartbeats, until)) if Instant::now() < *until => {
                    for m in heartbeats {
                        transport.send(m);
                    }
                    *until
                }
                Some(_) => {
                    *armed = None;
                    continue;
                }
                None => {
                    armed = self.wake.wait_timeout(armed, KEEPALIVE_IDLE).unwrap().0;
                    continue;
                }
            };
            let wait = KEEPALIVE_EVERY.min(until.saturating_duration_since(Instant::now()));
            armed = self.wake.wait_timeout(armed, wait).unwrap().0;
        }
    }
}

struct Loop<'a> {
    keepalive: &'a Keepalive,
    replica: Replica<ReplyTo>,
    shared: Arc<Shared>,
    completions: Vec<Sender<Completion>>,
    transport: Option<&'a Transport>,
    config: ReplicationConfig,
    adaptive: AdaptiveTimeout,
    spares: Vec<Vec<Window<ReplyTo>>>,
    ticks: u64,
    checkpoint_job: Option<(CheckpointThread, Instant)>,
    backups: u64,
    /// Operators waiting for a membership change they asked for, by proposal tag.
    changes_waiting: std::collections::HashMap<u64, (Sender<String>, Change)>,
}

/// Runs the loop until `shared.stop` is set; then seals one last window, waits (bounded)
/// for what is in flight to commit, checkpoints, and returns.
/// What wakes the replication thread: a shard's full window, the transport, a backup.
pub struct Inputs {
    pub flush_rx: Receiver<()>,
    pub inbound_rx: Receiver<Inbound>,
    pub backup_rx: Receiver<crate::backup::SnapshotRequest>,
}

pub fn run(
    replica: Replica<ReplyTo>,
    shared: Arc<Shared>,
    inputs: Inputs,
    completions: Vec<Sender<Completion>>,
    transport: Option<Transport>,
    config: ReplicationConfig,
) -> anyhow::Result<()> {
    let spares = completions.iter().map(|_| Vec::new()).collect();
    let keepalive = Keepalive::default();
    std::thread::scope(|scope| {
        if let Some(t) = transport.as_ref() {
            let keepalive = &keepalive;
            std::thread::Builder::new()
                .name("keepalive".into())
                .spawn_scoped(scope, move || keepalive.run(t))?;
        }
        let result = run_loop(
            &keepalive,
            replica,
            shared,
            &inputs,
            completions,
            transport.as_ref(),
            config,
            spares,
        );
        keepalive.finish();
        result
    })
}

#[allow(clippy::too_many_arguments)]
fn run_loop(
    keepalive: &Keepalive,
    replica: Replica<ReplyTo>,
    shared: Arc<Shared>,
    inputs: &Inputs,
    completions: Vec<Sender<Completion>>,
    transport: Option<&Transport>,
    config: ReplicationConfig,
    spares: Vec<Vec<Window<ReplyTo>>>,
) -> anyhow::Result<()> {
    let mut l = Loop {
        keepalive,
        replica,
        shared,
        completions,
        transport,
        config,
        adaptive: AdaptiveTimeout::new(Default::default()),
        spares,
        ticks: 0,
        checkpoint_job: None,
        backups: 0,
        changes_waiting: Default::default(),
    };
    let membership = l.replica.node().membership();
    l.note_membership(&membership);
    let result = l.main_loop(&inputs.flush_rx, &inputs.inbound_rx, &inputs.backup_rx);
    l.checkpoint();
    l.shared.replication_done.store(true, Ordering::Release);
    result
}

impl Loop<'_> {
    /// This node's clock as the replica sees it: time since the server started.
    fn now(&self) -> Duration {
        self.shared.started.elapsed()
    }

    fn main_loop(
        &mut self,
        flush_rx: &Receiver<()>,
        inbound_rx: &Receiver<Inbound>,
        backup_rx: &Receiver<crate::backup::SnapshotRequest>,
    ) -> anyhow::Result<()> {
        let mut last_checkpoint = Instant::now();
        let mut next_tick = Instant::now() + self.config.tick;
        let mut next_seal = Instant::now() + self.config.batch_window;
        let mut stop_deadline: Option<Instant> = None;
        loop {
            if self.shared.transfer_requested.swap(false, Ordering::AcqRel) {
                if let Some(to) = self.replica.transfer_leadership() {
                    eprintln!("ocean-liner: stopping: handing leadership to node {to}");
                }
                // The dropped lease is visible to the shards before anything leaves.
                self.publish();
            }
            let mut seal_now = false;
            if self.shared.stop.load(Ordering::Acquire) && stop_deadline.is_none() {
                // Let the shards finish the batch they are on, then seal everything.
                let deadline = Instant::now() + Duration::from_secs(2);
                while self.shared.shards_idle.load(Ordering::Acquire) < self.shared.windows.len()
                    && Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(1));
                }
                stop_deadline = Some(Instant::now() + STOP_DRAIN);
                seal_now = true;
            }
            let wake = next_tick.min(next_seal);
            select! {
                recv(inbound_rx) -> m => if let Ok(m) = m { self.inbound(m) },
                recv(flush_rx) -> _ => seal_now = true,
                recv(backup_rx) -> r => if let Ok(reply) = r {
                    // A snapshot of the applied state, taken between two applies; its
                    // values are read by the backup connection's thread.
                    self.backups += 1;
                    let id = self.backups ^ (self.shared.started.elapsed().as_nanos() as u64) << 16;
                    let _ = reply.send(self.replica.node().engine().snapshot_source(id));
                },
                default(wake.saturating_duration_since(Instant::now())) => {}
            }
            for m in inbound_rx.try_iter().take(INBOUND_DRAIN_MAX) {
                self.inbound(m);
            }
            let mut out = ReplicaOutput::default();
            let now = Instant::now();
            if now >= next_tick {
                self.on_tick();
                next_tick += self.config.tick;
                if next_tick < now {
                    next_tick = now + self.config.tick;
                }
            }
            let mut kept_alive = false;
            if now >= next_seal || seal_now {
                kept_alive = self.seal(&mut out);
                self.start_read_round();
                next_seal = now + self.config.batch_window;
            }
            let advanced = self.advance(out);
            if kept_alive {
                self.keepalive.disarm();
            }
            self.replica.prepare_log_ahead();
            if let Err(e) = advanced {
                anyhow::bail!("the node must stop: {e}");
            }
            if let Some(deadline) = stop_deadline
                && (!self.replica.has_pending() || Instant::now() >= deadline)
            {
                // Still uncommitted: the client retries (elsewhere, in a cluster), and
                // sessions keep a retry of a write that does commit from applying twice.
                let mut out = ReplicaOutput::default();
                self.replica.fail_pending(WriteOutcome::NotLeader, &mut out);
                self.complete(out.completed);
                return Ok(());
            }
            self.finish_checkpoint(false);
            if last_checkpoint.elapsed() >= self.config.checkpoint_interval {
                self.start_checkpoint();
                last_checkpoint = Instant::now();
            }
        }
    }

    fn inbound(&mut self, m: Inbound) {
        match m {
            Inbound::Raft(msg) => self.replica.node_mut().step(msg),
            Inbound::Rtt { rtt, .. } => {
                self.adaptive.record_rtt(rtt);
                let s = &self.shared.stats;
                s.rtt_us.store(
                    self.adaptive
                        .estimated_rtt()
                        .unwrap_or_default()
                        .as_micros() as u64,
                    Ordering::Relaxed,
                );
                s.rtt_dev_us.store(
                    self.adaptive.rtt_deviation().as_micros() as u64,
                    Ordering::Relaxed,
                );
            }
            Inbound::PeerUnreachable(peer) => self.replica.node_mut().report_unreachable(peer),
            Inbound::Snapshot { peer, msg, staged } => {
                let bytes = staged.bytes;
                // The install writes a checkpoint of its own: the one out finishes first.
                self.finish_checkpoint(true);
                let accepted = self.replica.node_mut().step_snapshot(*msg, *staged);
                let s = &self.shared.stats;
                s.snapshots_received.fetch_add(1, Ordering::Relaxed);
                s.snapshot_bytes_received
                    .fetch_add(bytes, Ordering::Relaxed);
                eprintln!(
                    "ocean-liner: received a snapshot of {bytes} bytes from node {peer}{}",
                    if accepted {
                        ""
                    } else {
                        " (not needed any more: dropped)"
                    }
                );
            }
            Inbound::SnapshotSent {
                peer,
                delivered,
                bytes,
            } => {
                self.replica.node_mut().report_snapshot(peer, delivered);
                let s = &self.shared.stats;
                if delivered {
                    s.snapshots_sent.fetch_add(1, Ordering::Relaxed);
                }
                s.snapshot_bytes_sent.fetch_add(bytes, Ordering::Relaxed);
            }
            Inbound::PeerHello {
                peer,
                addr,
                resp_port,
                peer_addr,
                last_index,
            } => {
                if let Some(slot) = self.shared.resp_ports.get(peer.index()) {
                    slot.store(resp_port, Ordering::Relaxed);
                }
                if let Some(slot) = self
                    .shared
                    .client_addrs
                    .lock()
                    .unwrap()
                    .get_mut(peer.index())
                {
                    *slot = Some(addr);
                }
                // A node the cluster has not added (yet) learns where its peers are from
                // their hellos: the leader's comes first, with the log.
                let me = self.replica.node().id();
                if let (Some(t), Some(peer_addr)) = (self.transport, peer_addr)
                    && self.replica.node().membership().get(me).is_none()
                {
                    t.connect(peer, peer_addr);
                }
                self.replica.node_mut().peer_log_reaches(peer, last_index);
            }
            Inbound::Admin { request, reply } => self.admin(&request, reply),
        }
    }

    /// Follows a new membership: links to every other member, their client addresses.
    fn note_membership(&mut self, membership: &crate::consensus::membership::Membership) {
        let me = self.replica.node().id();
        if let Some(t) = self.transport {
            if membership.get(me).is_some() {
                t.set_peers(&super::peer_links(membership, me.index()));
            } else if !membership.is_empty() {
                eprintln!(
                    "ocean-liner: this node is not a member of the cluster (it was removed, or is \
                     not added yet); it serves no writes and may be stopped"
                );
            }
        }
        super::publish_membership(&self.shared, membership);
    }

    /// Answers an operator's request (see [`super::admin`]); a membership change is
    /// answered once it is applied.
    fn admin(&mut self, text: &str, reply: Sender<String>) {
        use super::admin::AdminRequest;
        let request = match super::admin::parse(text) {
            Ok(r) => r,
            Err(e) => {
                let _ = reply.send(format!("ERR {e}"));
                return;
            }
        };
        let node = self.replica.node();
        let membership = node.membership();
        let leader = node.leader_id();
        let leader_peer = leader
            .filter(|&l| l != node.id())
            .and_then(|l| membership.get(l))
            .map(|m| m.peer_addr);
        if let (false, Some(at)) = (node.is_leader(), leader_peer) {
            let _ = reply.send(format!("LEADER {at}"));
            return;
        }
        let answer = match request {
            AdminRequest::List => {
                let matches = node.match_indexes();
                let mut out = format!(
                    "OK cluster_id={} leader={} commit={}\n",
                    self.config.cluster_id,
                    leader.map_or("none".to_string(), |l| l.to_string()),
                    node.commit_index()
                );
                for m in membership.members() {
                    let matched = matches
                        .iter()
                        .find(|(id, _)| *id == m.id)
                        .map_or("-".to_string(), |(_, i)| i.to_string());
                    out.push_str(&format!(
                        "member id={} {} peer={} client={} match={matched}\n",
                        m.id,
                        if m.voter { "voter" } else { "learner" },
                        m.peer_addr,
                        m.client_addr
                    ));
                }
                out
            }
            _ if !node.is_leader() => "RETRY no leader is known yet".to_string(),
            AdminRequest::Transfer(Some(target)) if target == node.id() => {
                format!("OK node {target} already leads")
            }
            AdminRequest::Transfer(target) => match self.replica.transfer_leadership_to(target) {
                Some(to) => {
                    self.publish();
                    format!("OK handing leadership to node {to}")
                }
                None => "ERR no such voter to hand leadership to".to_string(),
            },
            AdminRequest::Change(Change::Remove { id }) if id == node.id() => {
                // A leader that removed itself would lead a cluster it is not part of
                // until the change commits; it hands leadership over first.
                match self.replica.transfer_leadership() {
                    Some(to) => {
                        self.publish();
                        format!(
                            "RETRY node {id} leads: it is handing leadership to node {to} first"
                        )
                    }
                    None => format!("ERR node {id} is the only voter"),
                }
            }
            AdminRequest::Change(Change::Promote { id })
                if membership.get(id).is_some_and(|m| !m.voter)
                    && !node.has_caught_up(id, PROMOTE_LAG_MAX) =>
            {
                let matched = node
                    .match_indexes()
                    .iter()
                    .find(|(m, _)| *m == id)
                    .map_or(0, |(_, i)| i.get());
                format!(
                    "RETRY node {id} has not caught up: its log matches up to {matched} of {}",
                    node.last_index()
                )
            }
            AdminRequest::Change(change) => match self.replica.propose_change(&change) {
                Ok(tag) => {
                    self.changes_waiting.insert(tag, (reply, change));
                    return;
                }
                Err(crate::consensus::ChangeError::Refused(why)) if why.contains("retry") => {
                    format!("RETRY {why}")
                }
                Err(crate::consensus::ChangeError::Refused(why)) => format!("ERR {why}"),
                Err(crate::consensus::ChangeError::Propose(_)) => {
                    "RETRY the leader cannot take proposals now".to_string()
                }
            },
        };
        let _ = reply.send(answer);
    }

    /// Answers the operators whose changes settled, and follows a new membership.
    fn settle_changes(&mut self, out: &mut ReplicaOutput<ReplyTo>) {
        for (tag, outcome) in out.changes.drain(..) {
            let Some((reply, change)) = self.changes_waiting.remove(&tag) else {
                continue;
            };
            let answer = match outcome {
                ChangeOutcome::Made(index) => format!("OK {change} (log index {index})"),
                ChangeOutcome::Refused => {
                    format!("ERR the membership refused \"{change}\" when it applied")
                }
                ChangeOutcome::Dropped => format!(
                    "RETRY leadership changed before \"{change}\" committed (it may still be made)"
                ),
            };
            let _ = reply.send(answer);
        }
        if let Some(membership) = out.membership.take() {
            self.note_membership(&membership);
        }
    }

    fn on_tick(&mut self) {
        let floor_ticks = (self.adaptive.timeout().as_secs_f64() / self.config.tick.as_secs_f64())
            .round() as usize;
        self.replica
            .node_mut()
            .set_election_floor_ticks(floor_ticks);
        let now = self.now();
        self.replica.tick(now);
        self.ticks += 1;
        if let Some(t) = self.transport
            && self.ticks.is_multiple_of(PING_EVERY_TICKS)
        {
            t.ping_all();
        }
        if self.replica.take_read_round_lost() {
            self.shared.reads_waiting.store(true, Ordering::Release);
        }
    }

    /// Takes every shard's window and hands them to the replica as one entry.
    /// Seals the windows; returns whether the keepalive was armed for it (a large entry
    /// on a leader), to be disarmed once the entry is written.
    fn seal(&mut self, out: &mut ReplicaOutput<ReplyTo>) -> bool {
        let windows: Vec<Window<ReplyTo>> = self
            .shared
            .windows
            .iter()
            .zip(self.spares.iter_mut())
            .map(|(slot, spare)| slot.seal(spare.pop().unwrap_or_default()))
            .collect();
        let bytes: usize = windows.iter().map(|w| w.commands.len()).sum();
        let keep_alive = bytes >= KEEPALIVE_SEAL_BYTES && self.transport.is_some();
        if keep_alive {
            self.keepalive
                .arm(self.replica.node().liveness_heartbeats());
        }
        self.replica.seal(windows, out);
        keep_alive
    }

    /// In index mode, one ReadIndex round covers every GET waiting when it starts.
    fn start_read_round(&mut self) {
        if self.shared.reads_waiting.swap(false, Ordering::AcqRel) {
            let now = self.now();
            let epochs = &self.shared.read_epoch_next;
            let started = self
                .replica
                .start_read_round(now, || epochs.fetch_add(1, Ordering::AcqRel));
            if !started {
                self.shared.reads_waiting.store(true, Ordering::Release);
            }
        }
    }

    /// The Ready cycle: send what may leave before the write, persist and apply, send
    /// the rest, complete windows, publish.
    fn advance(
        &mut self,
        mut out: ReplicaOutput<ReplyTo>,
    ) -> Result<(), crate::consensus::FatalError> {
        self.replica.ready(&mut out);
        self.send(&mut out);
        let started = Instant::now();
        let before = (
            self.replica.node().last_index(),
            self.replica.node().applied_index(),
        );
        let result = self.replica.persist_and_apply(&mut out);
        let took = started.elapsed();
        let after = (
            self.replica.node().last_index(),
            self.replica.node().applied_index(),
        );
        if after != before {
            self.shared.stats.persist_seconds.observe(took);
        }
        if took > self.config.tick * 2 {
            // A follower that took this long to write what the leader sent grants the
            // leader, busy writing the same, twice as long before it may stand for
            // election.
            let ticks = (took.as_secs_f64() * 2.0 / self.config.tick.as_secs_f64()).ceil();
            self.replica
                .node_mut()
                .hold_election_clock((ticks as usize).min(HOLD_TICKS_MAX));
        }
        self.send(&mut out);
        self.complete(std::mem::take(&mut out.completed));
        self.settle_changes(&mut out);
        self.publish();
        result
    }

    fn send(&mut self, out: &mut ReplicaOutput<ReplyTo>) {
        if let Some(t) = self.transport {
            for m in out.messages.drain(..) {
                t.send(&m);
            }
            for (m, source) in out.snapshots.drain(..) {
                t.send_snapshot(m, source);
            }
        } else {
            out.messages.clear();
            out.snapshots.clear();
        }
    }

    /// Sends each window back to its shard with the outcome all its writes get.
    fn complete(&mut self, completed: Vec<Completed<ReplyTo>>) {
        let stats = &self.shared.stats;
        for c in completed {
            if c.outcome == Some(WriteOutcome::Applied) {
                stats.entries_written.fetch_add(1, Ordering::Relaxed);
                stats
                    .commands_applied
                    .fetch_add(c.applied_commands, Ordering::Relaxed);
                stats
                    .last_entry_commands
                    .store(c.applied_commands, Ordering::Relaxed);
            }
            if let Some(outcome @ (WriteOutcome::NoSpace | WriteOutcome::Failed)) = c.outcome {
                stats.write_errors.fetch_add(1, Ordering::Relaxed);
                let writes: usize = c.windows.iter().map(|w| w.replies.len()).sum();
                eprintln!("ocean-liner: a window of {writes} writes failed: {outcome:?}");
            }
            // The entry's commands are the windows' in order, one per reply.
            let mut outcomes = c.outcomes.into_iter();
            for (shard, window) in c.windows.into_iter().enumerate() {
                let mine: Vec<Outcome> = outcomes.by_ref().take(window.replies.len()).collect();
                match c.outcome {
                    Some(outcome) if !window.is_empty() => {
                        // A shard that is gone cannot reply; its clients retry.
                        let _ = self.completions[shard].send(Completion {
                            window,
                            outcome,
                            outcomes: mine,
                        });
                    }
                    // An entry split for a large value hands back extra empty windows:
                    // keep a few.
                    _ if self.spares[shard].len() < SPARES_MAX => self.spares[shard].push(window),
                    _ => {}
                }
            }
        }
    }

    fn publish(&mut self) {
        let node = self.replica.node();
        let s = &self.shared;
        s.is_leader.store(node.is_leader(), Ordering::Release);
        s.lease_until_ns.store(
            self.replica.lease_until().as_nanos() as u64,
            Ordering::Release,
        );
        s.read_epoch_done
            .fetch_max(self.replica.read_epoch_done(), Ordering::AcqRel);
        s.leader_id.store(
            node.leader_id().map_or(0, NodeId::raft_id),
            Ordering::Release,
        );
        s.stats.term.store(node.term().get(), Ordering::Relaxed);
        s.stats
            .sets_dropped
            .store(self.replica.dropped_sets(), Ordering::Relaxed);
        s.stats
            .commit_index
            .store(node.commit_index().get(), Ordering::Relaxed);
        s.stats
            .applied_index
            .store(node.applied_index().get(), Ordering::Release);
        s.last_log_index
            .store(node.last_index().get(), Ordering::Release);
        s.stats
            .first_log_index
            .store(node.engine().log().first_index().get(), Ordering::Relaxed);
        s.stats
            .leader_changes
            .store(node.leader_changes(), Ordering::Relaxed);
        s.stats
            .appends_refused_no_space
            .store(node.appends_refused_no_space(), Ordering::Relaxed);
        let timeout_ms = node.election_timeout_ticks() as u64 * self.config.tick.as_millis() as u64;
        s.stats
            .election_timeout_ms
            .store(timeout_ms, Ordering::Relaxed);
    }

    /// Starts a checkpoint in the background at the applied index: its thread takes the
    /// changed pages as it writes them (the apply loop saves the ones it changes first),
    /// then writes them in place.
    fn start_checkpoint(&mut self) {
        if self.checkpoint_job.is_some() {
            return;
        }
        let Some(mut job) = self.replica.checkpoint_begin() else {
            return;
        };
        let started = Instant::now();
        let handle = std::thread::Builder::new()
            .name("checkpoint".into())
            .spawn(move || {
                let result = job.write();
                (job, result)
            });
        match handle {
            Ok(h) => self.checkpoint_job = Some((h, started)),
            Err(e) => eprintln!("ocean-liner: cannot start a checkpoint thread: {e}"),
        }
    }

    /// Collects a finished background checkpoint (or waits for it when `wait`).
    fn finish_checkpoint(&mut self, wait: bool) {
        let Some((handle, started)) = self.checkpoint_job.take() else {
            return;
        };
        if !wait && !handle.is_finished() {
            self.checkpoint_job = Some((handle, started));
            return;
        }
        let Ok((job, result)) = handle.join() else {
            eprintln!("ocean-liner: the checkpoint thread panicked");
            return;
        };
        match self.replica.checkpoint_end(job, result) {
            Ok(reclaimed) => {
                let s = &self.shared.stats;
                s.checkpoints.fetch_add(1, Ordering::Relaxed);
                s.segments_deleted
                    .fetch_add(reclaimed.segments, Ordering::Relaxed);
                s.bytes_deleted
                    .fetch_add(reclaimed.bytes, Ordering::Relaxed);
                // Removing a file waits for the disk (tens of ms for a large one): the
                // cleaner thread does it, in this order.
                self.shared
                    .released_files
                    .lock()
                    .unwrap()
                    .extend(reclaimed.files);
                s.last_checkpoint_us
                    .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
            }
            // The log still holds everything (no segment is deleted until a checkpoint
            // completes): a failed checkpoint only lengthens replay.
            Err(e) => eprintln!("ocean-liner: checkpoint failed (the log keeps the data): {e}"),
        }
    }

    /// A final, synchronous checkpoint (at shutdown).
    fn checkpoint(&mut self) {
        self.finish_checkpoint(true);
        self.start_checkpoint();
        self.finish_checkpoint(true);
    }
}
