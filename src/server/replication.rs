//! The replication core: seals the shards' windows into one log entry every
//! `batch_window_ms`, makes it durable, applies it, and hands each shard its results.
//!
//! Owns the [`Engine`]. With one node the entry is committed as soon as it is durable
//! (a node alone is its own majority); the loop's order — seal, persist, apply, reply —
//! is the one the Raft driver keeps.

use super::Shared;
use super::window::Window;
use crate::engine::{Engine, Outcome};
use crate::protocol::Status;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a shard gets back for one sealed window.
pub struct Completion {
    pub window: Window,
    pub statuses: Vec<Status>,
}

/// Settings of the replication loop.
pub struct ReplicationConfig {
    pub batch_window: Duration,
    pub checkpoint_interval: Duration,
}

/// The term single-node entries are written with.
const SINGLE_NODE_TERM: u64 = 1;

/// Runs the loop until `shared.stop` is set, then seals and commits one last window,
/// checkpoints, and returns.
pub fn run(
    mut engine: Engine,
    shared: Arc<Shared>,
    flush_rx: Receiver<()>,
    completions: Vec<Sender<Completion>>,
    config: ReplicationConfig,
) -> anyhow::Result<()> {
    let mut spares: Vec<Vec<Window>> = completions.iter().map(|_| Vec::new()).collect();
    let mut entry = Vec::new();
    let mut last_checkpoint = Instant::now();
    let mut next_seal = Instant::now() + config.batch_window;
    loop {
        let stopping = shared.stop.load(Ordering::Acquire);
        if stopping {
            // Let the shards finish the batch they are on, so the last window holds
            // everything they accepted.
            let deadline = Instant::now() + Duration::from_secs(2);
            while shared.shards_idle.load(Ordering::Acquire) < shared.windows.len() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
        } else {
            match flush_rx.recv_deadline(next_seal) {
                Ok(()) | Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {}
            }
        }
        next_seal = Instant::now() + config.batch_window;
        // Seal: take every shard's window.
        let windows: Vec<Window> = shared
            .windows
            .iter()
            .zip(spares.iter_mut())
            .map(|(slot, spare)| slot.seal(spare.pop().unwrap_or_default()))
            .collect();
        let num_commands: usize = windows.iter().map(|w| w.replies.len()).sum();
        if num_commands > 0 {
            entry.clear();
            for w in &windows {
                entry.extend_from_slice(&w.commands);
            }
            let result = engine.commit_local(SINGLE_NODE_TERM, num_commands as u64, &entry);
            let statuses: Vec<Status> = match result {
                Ok((index, outcomes)) => {
                    shared.stats.commit_index.store(index, Ordering::Release);
                    shared.stats.entries_written.fetch_add(1, Ordering::Relaxed);
                    shared.stats.commands_applied.fetch_add(num_commands as u64, Ordering::Relaxed);
                    shared.stats.last_entry_commands.store(num_commands as u64, Ordering::Relaxed);
                    outcomes.iter().map(|o| outcome_status(*o)).collect()
                }
                Err(e) => {
                    let status = if e.is_no_space() { Status::NoSpace } else { Status::Failed };
                    shared.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                    eprintln!("ocean-liner: window of {num_commands} writes failed: {e}");
                    vec![status; num_commands]
                }
            };
            let mut at = 0;
            for (shard, window) in windows.into_iter().enumerate() {
                let n = window.replies.len();
                if n == 0 {
                    spares[shard].push(window);
                    continue;
                }
                let completion = Completion {
                    window,
                    statuses: statuses[at..at + n].to_vec(),
                };
                at += n;
                // A shard that is gone cannot reply; its clients will retry.
                let _ = completions[shard].send(completion);
            }
        } else {
            for (shard, window) in windows.into_iter().enumerate() {
                spares[shard].push(window);
            }
        }
        if stopping {
            break;
        }
        if last_checkpoint.elapsed() >= config.checkpoint_interval && engine.map().dirty_page_count() > 0 {
            checkpoint(&mut engine, &shared);
            last_checkpoint = Instant::now();
        }
    }
    checkpoint(&mut engine, &shared);
    shared.replication_done.store(true, Ordering::Release);
    Ok(())
}

fn checkpoint(engine: &mut Engine, shared: &Shared) {
    let start = Instant::now();
    match engine.checkpoint() {
        Ok(()) => {
            shared.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
            shared
                .stats
                .last_checkpoint_us
                .store(start.elapsed().as_micros() as u64, Ordering::Relaxed);
        }
        // The log still holds everything: a failed checkpoint only lengthens replay.
        Err(e) => eprintln!("ocean-liner: checkpoint failed (the log keeps the data): {e}"),
    }
}

fn outcome_status(outcome: Outcome) -> Status {
    match outcome {
        Outcome::Done | Outcome::Duplicate | Outcome::Absent | Outcome::Ignored => Status::Ok,
    }
}
