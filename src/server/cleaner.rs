//! The cleaner thread: runs the storage cleaner ([`crate::storage::cleaner`]) off the
//! replication and shard cores, at a bounded rate and a low scheduling priority, so that
//! foreground throughput holds while superseded log space is reclaimed. It also removes
//! the files of the segments that checkpoints released, oldest first.

use super::Shared;
use crate::storage::cleaner::Cleaner;
use crate::storage::io::uring::UringBackend;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How long the thread waits when nothing needs cleaning.
const IDLE_WAIT: Duration = Duration::from_millis(200);
/// How long it waits after a failed pass (a full disk, say) before trying again.
const ERROR_WAIT: Duration = Duration::from_secs(1);

/// Cleans until the node stops, keeping its reads plus writes under `bytes_per_s`.
pub fn run(cleaner: &mut Cleaner, shared: &Shared, bytes_per_s: u64) {
    super::host::run_in_background();
    let stats = &shared.stats;
    let mut errors_reported = 0u64;
    while !shared.stop.load(Ordering::Acquire) {
        remove_released_files(shared);
        let started = Instant::now();
        match cleaner.clean_one() {
            Ok(Some(report)) => {
                stats.clean_passes.fetch_add(1, Ordering::Relaxed);
                stats
                    .values_moved
                    .fetch_add(report.moved, Ordering::Relaxed);
                stats
                    .clean_bytes_read
                    .fetch_add(report.bytes_read, Ordering::Relaxed);
                stats
                    .clean_bytes_written
                    .fetch_add(report.bytes_written, Ordering::Relaxed);
                let bytes = report.bytes_read + report.bytes_written;
                let due = Duration::from_secs_f64(bytes as f64 / bytes_per_s.max(1) as f64);
                sleep_unless_stopped(shared, due.saturating_sub(started.elapsed()));
            }
            Ok(None) => sleep_unless_stopped(shared, IDLE_WAIT),
            Err(e) => {
                let n = stats.clean_errors.fetch_add(1, Ordering::Relaxed) + 1;
                // Say it once, then at every power of two, not once a second for ever.
                if n.is_power_of_two() && n > errors_reported {
                    errors_reported = n;
                    eprintln!("ocean-liner: cleaning failed ({n} times so far): {e}");
                }
                sleep_unless_stopped(shared, ERROR_WAIT);
            }
        }
    }
    cleaner.seal();
}

/// Removes the released segment files queued so far, in order. A failure is reported and
/// the file left: it is found again at the next start and released again.
pub fn remove_released_files(shared: &Shared) {
    loop {
        let Some(path) = shared.released_files.lock().unwrap().pop_front() else {
            return;
        };
        if let Err(e) = crate::storage::io::remove_durable(&UringBackend, &path) {
            eprintln!(
                "ocean-liner: cannot remove released segment {}: {e}",
                path.display()
            );
            shared.stats.clean_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn sleep_unless_stopped(shared: &Shared, total: Duration) {
    let until = Instant::now() + total;
    while !shared.stop.load(Ordering::Acquire) {
        let now = Instant::now();
        if now >= until {
            return;
        }
        std::thread::sleep((until - now).min(Duration::from_millis(50)));
    }
}
