//! Durable append throughput of the log on real O_DIRECT files under /var/tmp.
//!
//! Each appended entry carries a commands region of SETs (16-byte keys, 100-byte values)
//! filled up to 64 KiB or 1 MiB. Three ways of making room ahead of the writer:
//!
//! - `prepared`: the whole file is written with zeros before any measured append (the
//!   production design, with the zero-filling kept out of the measurement);
//! - `chunk16m`: the default 16 MiB `prepare_chunk_bytes`, nothing prepared up front, so
//!   the measurement includes the zero-filling each time a chunk runs out;
//! - `growing`: `prepare_chunk_bytes` of one page, so every append first zero-fills
//!   exactly the space it is about to use (write + fdatasync), then writes the entry.
//!
//! Throughput is the commands-region bytes per second; the on-disk entry adds two
//! 96-byte header slots and padding to a page.
//!
//! Disk use is bounded: a log is dropped and its file deleted (outside the measured time)
//! once it reaches `FILE_BYTES_MAX`, and each group pins its own warm-up and measurement
//! times (these override `--warm-up-time` / `--measurement-time`), so a group writes a
//! few GiB at most. The bytes each benchmark wrote are printed when it ends.
//!
//! Run: `cargo bench --bench log_append`

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use ocean_liner::storage::command::{self, CommandOp};
use ocean_liner::storage::io::uring::UringBackend;
use ocean_liner::storage::log::{Log, LogOptions, NewEntry, entry_size};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A log file is recreated once it would grow past this.
const FILE_BYTES_MAX: u64 = 256 << 20;
const VALUE_LEN: usize = 100;

/// SET commands of 100-byte values, as many as fit in `target` bytes.
fn commands_region(target: usize) -> (Vec<u8>, u64) {
    let value = [0xA5u8; VALUE_LEN];
    let one = command::encoded_size(16, VALUE_LEN);
    let mut out = Vec::with_capacity(target);
    let mut n = 0u64;
    while out.len() + one <= target {
        let key = format!("key:{n:012}");
        command::encode(
            &mut out,
            CommandOp::Set,
            1 + n % 64,
            n,
            key.as_bytes(),
            &value,
        );
        n += 1;
    }
    (out, n)
}

#[derive(Clone, Copy)]
enum Mode {
    Prepared,
    Chunk16M,
    Growing,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Prepared => "prepared",
            Mode::Chunk16M => "chunk16m",
            Mode::Growing => "growing",
        }
    }

    fn options(self) -> LogOptions {
        let prepare_chunk_bytes = match self {
            Mode::Prepared | Mode::Chunk16M => LogOptions::default().prepare_chunk_bytes,
            Mode::Growing => 4096,
        };
        LogOptions {
            prepare_chunk_bytes,
            // One segment holds the whole file.
            segment_bytes: FILE_BYTES_MAX,
            ..LogOptions::default()
        }
    }
}

/// A log that is replaced by a fresh one whenever the next entry would not fit.
struct Rolling {
    mode: Mode,
    path: PathBuf,
    log: Option<Log>,
    /// Bytes of entries written.
    entry_bytes: u64,
    /// Bytes of zeros written ahead of the entries.
    zero_bytes: u64,
    entries: u64,
}

impl Rolling {
    fn new(mode: Mode, dir: &Path) -> Rolling {
        Rolling {
            mode,
            path: dir.join(format!("{}.log", mode.name())),
            log: None,
            entry_bytes: 0,
            zero_bytes: 0,
            entries: 0,
        }
    }

    /// The log to append an entry of `size` bytes to, fresh if the current one is full.
    fn log_for(&mut self, size: u64) -> &mut Log {
        let full = self
            .log
            .as_ref()
            .is_none_or(|log| log.end_offset() + size > FILE_BYTES_MAX);
        if full {
            self.retire();
            let (mut log, _) = Log::open(Arc::new(UringBackend), &self.path, self.mode.options())
                .expect("open log");
            if let Mode::Prepared = self.mode {
                log.prepare(FILE_BYTES_MAX).expect("prepare log");
                self.zero_bytes += FILE_BYTES_MAX;
            }
            self.log = Some(log);
        }
        self.log.as_mut().unwrap()
    }

    fn retire(&mut self) {
        if let Some(log) = self.log.take() {
            if !matches!(self.mode, Mode::Prepared) {
                // Zero-filling ahead ends on a chunk boundary past the last entry.
                let chunk = self.mode.options().prepare_chunk_bytes;
                self.zero_bytes += log.end_offset().div_ceil(chunk) * chunk;
            }
            drop(log);
            std::fs::remove_dir_all(&self.path).expect("remove log directory");
        }
    }
}

fn bench_append(c: &mut Criterion) {
    std::fs::create_dir_all("/var/tmp").expect("create /var/tmp");
    let dir = tempfile::Builder::new()
        .prefix("ol-bench-log-")
        .tempdir_in("/var/tmp")
        .expect("temp dir under /var/tmp");

    for (label, target, warm_up, measure) in [
        (
            "64KiB",
            64usize << 10,
            Duration::from_millis(500),
            Duration::from_secs(2),
        ),
        (
            "1MiB",
            1 << 20,
            Duration::from_millis(300),
            Duration::from_secs(1),
        ),
    ] {
        let (commands, num_commands) = commands_region(target);
        let size = entry_size(commands.len()) as u64;
        eprintln!(
            "{label}: {num_commands} SETs, commands region {} B, entry on disk {size} B",
            commands.len()
        );
        let mut group = c.benchmark_group(format!("log_append_{label}"));
        group
            .throughput(Throughput::Bytes(commands.len() as u64))
            .sampling_mode(SamplingMode::Flat)
            .sample_size(10)
            .warm_up_time(warm_up)
            .measurement_time(measure);

        for mode in [Mode::Prepared, Mode::Chunk16M, Mode::Growing] {
            let mut rolling = Rolling::new(mode, dir.path());
            group.bench_function(mode.name(), |b| {
                b.iter_custom(|iters| {
                    let mut measured = Duration::ZERO;
                    for _ in 0..iters {
                        let log = rolling.log_for(size);
                        let entry = NewEntry {
                            term: ocean_liner::ids::Term(1),
                            log_index: log.last_index().next(),
                            num_commands,
                            commands: &commands,
                        };
                        let started = Instant::now();
                        log.append(&[entry]).expect("append");
                        measured += started.elapsed();
                    }
                    rolling.entries += iters;
                    rolling.entry_bytes += iters * size;
                    measured
                })
            });
            rolling.retire();
            let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
            eprintln!(
                "  {}: {} entries appended; written to log files: {:.2} GiB of entries, \
                 {:.2} GiB of zeros ahead",
                mode.name(),
                rolling.entries,
                gib(rolling.entry_bytes),
                gib(rolling.zero_bytes),
            );
        }
        group.finish();
    }
}

criterion_group!(benches, bench_append);
criterion_main!(benches);
