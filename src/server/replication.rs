//! The replication core: drives the node's [`RaftNode`] — ticks, peer messages, one
//! proposal per `batch_window_ms` carrying every shard's window — and turns what Raft
//! applied into completions for the shards.
//!
//! Per loop turn: wait for a peer message, a shard's "window full" signal, or the next
//! tick or seal; tick; seal and propose; run the Ready cycle (send, persist, apply); route
//! applied proposals back to their shards; publish commit/applied/role/lease atomics.
//!
//! Reads never enter the log. In lease mode a ReadIndex round runs every heartbeat; when
//! a quorum confirms it, the leader may serve reads locally until `sent + lease`, where
//! the lease is shorter than the followers' election timeout by the assumed clock-drift
//! margin. In index mode one ReadIndex round per window covers every GET that was waiting.

use super::Shared;
use super::transport::{Inbound, Transport};
use super::window::Window;
use crate::consensus::adaptive::AdaptiveTimeout;
use crate::consensus::{Event, Output, ProposeError, RaftNode};
use crate::log;
use crate::protocol::Status;
use crate::store::CheckpointJob;
use crossbeam_channel::{Receiver, Sender, select};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// What a shard gets back for one sealed window: every write in it shares the entry's
/// fate (applied, or not committed through this node).
pub struct Completion {
    pub window: Window,
    pub status: Status,
}

/// How linearizable reads are confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReadMode {
    /// Leader lease renewed by a quorum round every heartbeat (assumes bounded drift).
    Lease,
    /// One ReadIndex quorum round per window for the GETs waiting (no clock assumption).
    Index,
}

/// Settings of the replication loop.
pub struct ReplicationConfig {
    pub batch_window: Duration,
    pub checkpoint_interval: Duration,
    pub tick: Duration,
    /// Election timeout floor in ticks (raft-rs's `election_tick`), the lease's basis.
    pub election_ticks: usize,
    pub read_mode: ReadMode,
    /// Fraction of the election timeout a lease lasts (covers clock drift between nodes).
    pub lease_fraction: f64,
}

/// A checkpoint's IO running on its own thread; it hands the job back when done.
type CheckpointThread = std::thread::JoinHandle<(CheckpointJob, std::io::Result<()>)>;

const LEASE_CTX: u64 = 1 << 63;
const PING_EVERY_TICKS: u64 = 5;
const INBOUND_DRAIN_MAX: usize = 4096;
const STOP_DRAIN: Duration = Duration::from_secs(2);
/// A read round still unanswered after this is issued again.
const ROUND_RETRY: Duration = Duration::from_millis(60);

struct Loop<'a> {
    node: RaftNode,
    shared: Arc<Shared>,
    completions: Vec<Sender<Completion>>,
    transport: Option<&'a Transport>,
    config: ReplicationConfig,
    adaptive: AdaptiveTimeout,
    pending: HashMap<u64, Vec<Window>>,
    next_tag: u64,
    spares: Vec<Vec<Window>>,
    entry: Vec<u8>,
    lease_round: Option<(u64, Instant)>,
    read_round: Option<(u64, Instant)>,
    was_leader: bool,
    ticks: u64,
    checkpoint_job: Option<(CheckpointThread, Instant)>,
}

/// Runs the loop until `shared.stop` is set; then seals one last window, waits (bounded)
/// for what is in flight to commit, checkpoints, and returns.
pub fn run(
    node: RaftNode,
    shared: Arc<Shared>,
    flush_rx: Receiver<()>,
    inbound_rx: Receiver<Inbound>,
    completions: Vec<Sender<Completion>>,
    transport: Option<Transport>,
    config: ReplicationConfig,
) -> anyhow::Result<()> {
    let spares = completions.iter().map(|_| Vec::new()).collect();
    let mut l = Loop {
        node,
        shared,
        completions,
        transport: transport.as_ref(),
        config,
        adaptive: AdaptiveTimeout::new(Default::default()),
        pending: HashMap::new(),
        next_tag: 1,
        spares,
        entry: Vec::new(),
        lease_round: None,
        read_round: None,
        was_leader: false,
        ticks: 0,
        checkpoint_job: None,
    };
    let result = l.main_loop(&flush_rx, &inbound_rx);
    let checkpoint = l.checkpoint();
    l.shared.replication_done.store(true, Ordering::Release);
    result.and(checkpoint)
}

impl Loop<'_> {
    fn main_loop(
        &mut self,
        flush_rx: &Receiver<()>,
        inbound_rx: &Receiver<Inbound>,
    ) -> anyhow::Result<()> {
        let mut last_checkpoint = Instant::now();
        let mut next_tick = Instant::now() + self.config.tick;
        let mut next_seal = Instant::now() + self.config.batch_window;
        let mut stop_deadline: Option<Instant> = None;
        loop {
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
                default(wake.saturating_duration_since(Instant::now())) => {}
            }
            for m in inbound_rx.try_iter().take(INBOUND_DRAIN_MAX) {
                self.inbound(m);
            }
            let now = Instant::now();
            if now >= next_tick {
                self.on_tick(now);
                next_tick += self.config.tick;
                if next_tick < now {
                    next_tick = now + self.config.tick;
                }
            }
            if now >= next_seal || seal_now {
                self.seal();
                self.start_read_round();
                next_seal = now + self.config.batch_window;
            }
            self.advance()?;
            self.prepare_log_ahead();
            if let Some(deadline) = stop_deadline
                && (self.pending.is_empty() || Instant::now() >= deadline)
            {
                // Still uncommitted: the client retries (elsewhere, in a cluster), and sessions keep
                // a retry of a write that does commit from applying twice.
                self.fail_pending(Status::NotLeader);
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
            Inbound::Raft(msg) => self.node.step(msg),
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
            Inbound::PeerUnreachable(peer) => self.node.report_unreachable(peer as u64 + 1),
            Inbound::PeerHello {
                peer,
                addr,
                last_index,
            } => {
                if let Some(slot) = self.shared.client_addrs.lock().unwrap().get_mut(peer) {
                    *slot = addr;
                }
                self.node.peer_log_reaches(peer as u64 + 1, last_index);
            }
        }
    }

    fn on_tick(&mut self, now: Instant) {
        self.node.tick();
        self.ticks += 1;
        let floor_ticks = (self.adaptive.timeout().as_secs_f64() / self.config.tick.as_secs_f64())
            .round() as usize;
        self.node.set_election_floor_ticks(floor_ticks);
        if let Some(t) = self.transport
            && self.ticks.is_multiple_of(PING_EVERY_TICKS)
        {
            t.ping_all();
        }
        // raft-rs drops a read silently (e.g. before a new leader has committed in its
        // term): a round unanswered after a few heartbeats is retried.
        if self
            .lease_round
            .is_some_and(|(_, sent)| now.duration_since(sent) > ROUND_RETRY)
        {
            self.lease_round = None;
        }
        if let Some((_, sent)) = self.read_round
            && now.duration_since(sent) > ROUND_RETRY
        {
            self.read_round = None;
            self.shared.reads_waiting.store(true, Ordering::Release);
        }
        if self.config.read_mode == ReadMode::Lease
            && self.node.is_leader()
            && self.lease_round.is_none()
        {
            let ctx = LEASE_CTX | self.ticks;
            self.node.read_index(ctx);
            self.lease_round = Some((ctx, now));
        }
    }

    /// Takes every shard's window and proposes them as one entry.
    fn seal(&mut self) {
        let windows: Vec<Window> = self
            .shared
            .windows
            .iter()
            .zip(self.spares.iter_mut())
            .map(|(slot, spare)| slot.seal(spare.pop().unwrap_or_default()))
            .collect();
        let num_commands: usize = windows.iter().map(|w| w.replies.len()).sum();
        if num_commands == 0 {
            for (shard, w) in windows.into_iter().enumerate() {
                self.spares[shard].push(w);
            }
            return;
        }
        if !self.node.is_leader() {
            self.complete(windows, Status::NotLeader);
            return;
        }
        self.entry.clear();
        for w in &windows {
            self.entry.extend_from_slice(&w.commands);
        }
        // A full disk shows here, before anything is proposed: the window fails cleanly.
        let prepared = self
            .node
            .engine()
            .log()
            .prepare(log::entry_size(self.entry.len()) as u64);
        if let Err(e) = prepared {
            let status = if e.is_no_space() {
                Status::NoSpace
            } else {
                Status::Failed
            };
            self.shared
                .stats
                .write_errors
                .fetch_add(1, Ordering::Relaxed);
            eprintln!("ocean-liner: cannot take a window of {num_commands} writes: {e}");
            self.complete(windows, status);
            return;
        }
        let tag = self.next_tag;
        self.next_tag += 1;
        match self
            .node
            .propose(tag, std::mem::take(&mut self.entry), num_commands as u64)
        {
            Ok(_) => {
                self.pending.insert(tag, windows);
            }
            Err(ProposeError::NotLeader(_)) => self.complete(windows, Status::NotLeader),
            Err(ProposeError::Busy) => self.complete(windows, Status::Busy),
        }
    }

    /// Keeps at least half a preparation chunk of zeroed log space ahead of the writer,
    /// right after a window completed rather than inside the next one's critical path.
    fn prepare_log_ahead(&mut self) {
        let mut engine = self.node.engine();
        let log = engine.log();
        let chunk = log.prepare_chunk_bytes();
        if log.prepared_bytes_ahead() < chunk / 2 {
            // A failure here (a full disk) surfaces again, with a status, at the next seal.
            let _ = log.prepare(chunk);
        }
    }

    fn start_read_round(&mut self) {
        if self.config.read_mode != ReadMode::Index
            || self.read_round.is_some()
            || !self.node.is_leader()
        {
            return;
        }
        if self.shared.reads_waiting.swap(false, Ordering::AcqRel) {
            let epoch = self.shared.read_epoch_next.fetch_add(1, Ordering::AcqRel);
            self.node.read_index(epoch);
            self.read_round = Some((epoch, Instant::now()));
        }
    }

    /// Sends each window back to its shard with the status all its writes get.
    fn complete(&mut self, windows: Vec<Window>, status: Status) {
        for (shard, window) in windows.into_iter().enumerate() {
            if window.replies.is_empty() {
                self.spares[shard].push(window);
                continue;
            }
            // A shard that is gone cannot reply; its clients retry.
            let _ = self.completions[shard].send(Completion { window, status });
        }
    }

    fn fail_pending(&mut self, status: Status) {
        for (_, windows) in std::mem::take(&mut self.pending) {
            self.complete(windows, status);
        }
    }

    fn advance(&mut self) -> anyhow::Result<()> {
        let mut out = Output::default();
        if let Err(e) = self.node.advance(&mut out) {
            // Still uncommitted: the client retries (elsewhere, in a cluster), and sessions keep
            // a retry of a write that does commit from applying twice.
            self.fail_pending(Status::NotLeader);
            anyhow::bail!("the node must stop: {e}");
        }
        if let Some(t) = self.transport {
            for m in &out.messages {
                t.send(m);
            }
        }
        let shared = self.shared.clone();
        let stats = &shared.stats;
        for event in out.events {
            match event {
                Event::Applied { tag, outcomes, .. } => {
                    if let Some(windows) = self.pending.remove(&tag) {
                        stats.entries_written.fetch_add(1, Ordering::Relaxed);
                        stats
                            .commands_applied
                            .fetch_add(outcomes.len() as u64, Ordering::Relaxed);
                        stats
                            .last_entry_commands
                            .store(outcomes.len() as u64, Ordering::Relaxed);
                        self.complete(windows, Status::Ok);
                    }
                }
                Event::Dropped { tag } => {
                    if let Some(windows) = self.pending.remove(&tag) {
                        self.complete(windows, Status::NotLeader);
                    }
                }
                Event::ReadReady { ctx, .. } => {
                    if ctx & LEASE_CTX != 0 {
                        if let Some((round, sent)) = self.lease_round
                            && round == ctx
                        {
                            let lease = self.config.tick.mul_f64(
                                self.config.election_ticks as f64 * self.config.lease_fraction,
                            );
                            let until = (sent + lease)
                                .duration_since(self.shared.started)
                                .as_nanos() as u64;
                            self.shared.lease_until_ns.store(until, Ordering::Release);
                            self.lease_round = None;
                        }
                    } else if self.read_round.is_some_and(|(epoch, _)| epoch == ctx) {
                        self.shared.read_epoch_done.fetch_max(ctx, Ordering::AcqRel);
                        self.read_round = None;
                    }
                }
            }
        }
        self.publish();
        Ok(())
    }

    fn publish(&mut self) {
        let leader = self.node.is_leader();
        if leader != self.was_leader {
            self.was_leader = leader;
            if !leader {
                self.shared.lease_until_ns.store(0, Ordering::Release);
                self.lease_round = None;
                self.read_round = None;
            }
        }
        let s = &self.shared;
        s.is_leader.store(leader, Ordering::Release);
        s.leader_id
            .store(self.node.leader_id().unwrap_or(0), Ordering::Release);
        s.stats.term.store(self.node.term(), Ordering::Relaxed);
        s.stats
            .commit_index
            .store(self.node.commit_index(), Ordering::Relaxed);
        s.stats
            .applied_index
            .store(self.node.applied_index(), Ordering::Release);
        s.last_log_index
            .store(self.node.last_index(), Ordering::Release);
        s.stats
            .leader_changes
            .store(self.node.leader_changes(), Ordering::Relaxed);
        let timeout_ms =
            self.node.election_timeout_ticks() as u64 * self.config.tick.as_millis() as u64;
        s.stats
            .election_timeout_ms
            .store(timeout_ms, Ordering::Relaxed);
    }

    /// Starts a checkpoint in the background: the page copies are taken here, between two
    /// applies; the journal and in-place writes run on their own thread so that windows,
    /// heartbeats and lease renewals go on meanwhile.
    fn start_checkpoint(&mut self) {
        if self.checkpoint_job.is_some() || self.node.engine().map().dirty_page_count() == 0 {
            return;
        }
        let Some(mut job) = self.node.engine().checkpoint_begin() else {
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
        let end = self.node.engine().checkpoint_end(job, result);
        match end {
            Ok(()) => {
                let s = &self.shared.stats;
                s.checkpoints.fetch_add(1, Ordering::Relaxed);
                s.last_checkpoint_us
                    .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
            }
            // The log still holds everything: a failed checkpoint only lengthens replay.
            Err(e) => eprintln!("ocean-liner: checkpoint failed (the log keeps the data): {e}"),
        }
    }

    /// A final, synchronous checkpoint (at shutdown).
    fn checkpoint(&mut self) -> anyhow::Result<()> {
        self.finish_checkpoint(true);
        self.start_checkpoint();
        self.finish_checkpoint(true);
        Ok(())
    }
}
