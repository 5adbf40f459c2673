//! The load generator behind `ocean-liner bench`.
//!
//! It keeps tens of thousands of requests outstanding from a handful of threads. Each
//! thread owns a few non-blocking UDP sockets and a slab of *virtual clients* (slots).
//! A slot has its own client id and at most one request outstanding, as the server's
//! exactly-once sessions require. Threads send with `sendmmsg` and receive with
//! `recvmmsg` in batches, spin while there is work and `poll` briefly when idle.
//!
//! A slot's client id is `base + generation * slots + index` (wrapping), so a response
//! is matched to its slot in O(1); the slot's current id and sequence number must both
//! match, otherwise the response is stale and ignored. A request that gets no final
//! answer within `--timeout-ms` of its first transmission counts as a timeout, and the
//! slot moves to the next generation (a new client id), so the abandoned request can
//! never be confused with later ones and each session keeps one request outstanding.
//!
//! Replies are handled as a real client would: [`Status::CookieRequired`] stores the
//! cookie for that (socket, server) pair and resends at once; [`Status::NotLeader`]
//! switches the thread's target to the named leader (or to the next server if none is
//! named); [`Status::Busy`] resends after a short backoff. Retransmissions reuse the
//! request's sequence number, and latency is measured from the first transmission.
//!
//! With `--pipeline N` over UDP, a socket packs up to N of its queued requests into one
//! BATCH datagram (each keeps its slot's client id and sequence number) once it holds
//! the server's cookie, and takes the items of BATCH replies one by one. A reply to a
//! whole batch (CookieRequired after a server restart, say) is applied to each of its
//! items, from a record of the batches recently sent.
//!
//! Every phase ends by itself: prefill when every key has been written (or given up on
//! after a few timeouts), measurement after `--warmup + --duration` seconds.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt::{self, Write as _};
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use crossbeam_channel::{Receiver, Sender};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use socket2::{Domain, Protocol as SocketProtocol, Socket, Type};

use crate::client::protocol::{
    self, MAX_DATAGRAM_SIZE, NO_COOKIE, Op, REQUEST_HEADER_SIZE, Request, Status,
};
use crate::client::resolve_servers;

pub mod echo;
mod keys;
mod memcache;
mod memcache_worker;
pub mod plot;
mod report;
mod resp_worker;
#[cfg(test)]
mod tests;
mod worker;

pub use keys::{KeySampler, Scatter, Zipf};
use report::*;
pub use report::{PrefillReport, Report};
use worker::*;

/// Length of a key name, `key:` plus ten digits.
const KEY_NAME_LEN: usize = 14;
/// Largest `--keys`: key names have exactly ten digits.
const MAX_KEYS: u64 = 10_000_000_000;
/// Largest `--value-size` that fits a datagram with a key name.
pub const MAX_VALUE_SIZE: usize = MAX_DATAGRAM_SIZE - REQUEST_HEADER_SIZE - KEY_NAME_LEN;
/// Most requests one UDP BATCH datagram carries (`--pipeline`); fewer go when their
/// bytes would pass [`protocol::MAX_BATCH_DATAGRAM_SIZE`].
pub const UDP_PIPELINE_MAX: usize = 64;
/// Socket buffer size requested from the kernel (it may grant less).
const SOCKET_BUFFER_BYTES: usize = 16 << 20;
/// Workers report interval statistics this often.
const FLUSH_INTERVAL: Duration = Duration::from_millis(200);
/// First Busy backoff; doubles per consecutive Busy up to [`BUSY_BACKOFF_MAX`].
const BUSY_BACKOFF: Duration = Duration::from_micros(500);
const BUSY_BACKOFF_MAX: Duration = Duration::from_millis(20);
/// Wait before resending after a NotLeader without a leader hint (an election).
const NO_LEADER_BACKOFF: Duration = Duration::from_millis(10);
/// Prefill gives up on a key after this many timeouts.
const PREFILL_ATTEMPTS: u32 = 5;
/// Largest latency the histograms track (60 s, in µs); larger values saturate.
const HIST_MAX_US: u64 = 60_000_000;
/// Most receive batches per socket per loop turn, so sends are not starved.
const RECV_ROUNDS: usize = 4;

const _: () = assert!(KEY_NAME_LEN == "key:".len() + 10);
const _: () = assert!(MAX_VALUE_SIZE + KEY_NAME_LEN + REQUEST_HEADER_SIZE == MAX_DATAGRAM_SIZE);
const _: () = assert!(crate::net::RECV_BUFFER_SIZE > MAX_DATAGRAM_SIZE);

/// What the measured requests do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Only SETs.
    Set,
    /// Only GETs.
    Get,
    /// GETs with probability `--read-ratio`, SETs otherwise.
    Mixed,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Set => "set",
            Workload::Get => "get",
            Workload::Mixed => "mixed",
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the SET values hold (`--values`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Values {
    /// The alphabet repeated, the same in every SET: compresses to almost nothing.
    Repeated,
    /// A different slice of a 16 MiB random pool in every SET: does not compress.
    Random,
}

impl Values {
    pub fn name(self) -> &'static str {
        match self {
            Values::Repeated => "repeated",
            Values::Random => "random",
        }
    }
}

/// Bytes of random data `--values random` takes its values from.
const RANDOM_POOL_BYTES: usize = 16 << 20;

/// `len` pseudo-random bytes (xorshift64*, fixed seed: runs are comparable).
fn random_pool(len: usize) -> Vec<u8> {
    let mut x = 0x243F_6A88_85A3_08D3u64;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// What the load speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// Ocean Liner's UDP protocol: a request per datagram, or `--pipeline` per BATCH.
    Udp,
    /// RESP2 over TCP: Ocean Liner's RESP door, or Redis.
    Resp,
    /// memcached's text protocol over UDP (`memcached -U PORT`): `--pipeline` commands per
    /// request datagram.
    Memcache,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Udp => "udp",
            Protocol::Resp => "resp",
            Protocol::Memcache => "memcache",
        }
    }
}

/// How keys are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyDist {
    /// Every key equally likely.
    Uniform,
    /// Zipf with exponent `--zipf-theta`; hot keys are scattered over the key space.
    Zipfian,
}

impl KeyDist {
    pub fn name(self) -> &'static str {
        match self {
            KeyDist::Uniform => "uniform",
            KeyDist::Zipfian => "zipfian",
        }
    }
}

/// Options of `ocean-liner bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Server address, or a comma-separated list of the cluster's client addresses.
    #[arg(long, default_value = "127.0.0.1:9000")]
    pub server: String,
    /// Request mix.
    #[arg(long, value_enum, default_value_t = Workload::Mixed)]
    pub workload: Workload,
    /// Fraction of GETs in the mixed workload.
    #[arg(long, default_value_t = 0.9)]
    pub read_ratio: f64,
    /// Value size in bytes for SETs.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// What the SET values hold: the same bytes in every SET, or different random bytes
    /// in each (UDP and RESP).
    #[arg(long, value_enum, default_value_t = Values::Repeated)]
    pub values: Values,
    /// Number of distinct keys (`key:0000000000` ...).
    #[arg(long, default_value_t = 1_000_000)]
    pub keys: u64,
    /// Key popularity distribution.
    #[arg(long, value_enum, default_value_t = KeyDist::Uniform)]
    pub key_dist: KeyDist,
    /// Zipf exponent for `--key-dist zipfian`.
    #[arg(long, default_value_t = 0.99)]
    pub zipf_theta: f64,
    /// What to speak: Ocean Liner's UDP protocol, RESP (`--server` is then the RESP port
    /// of Ocean Liner or of Redis), or memcached's UDP protocol.
    #[arg(long, value_enum, default_value_t = Protocol::Udp)]
    pub protocol: Protocol,
    /// RESP: commands in flight per connection (connections = concurrency / pipeline).
    /// UDP: most requests per BATCH datagram (1 sends each request alone). memcache: most
    /// commands per request datagram.
    #[arg(long, default_value_t = 1)]
    pub pipeline: usize,
    /// Total outstanding requests across all threads (one per virtual client; over RESP,
    /// spread over connections of `--pipeline` each).
    #[arg(long, default_value_t = 1024)]
    pub concurrency: usize,
    /// Load-generating threads.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// UDP sockets per thread.
    #[arg(long, default_value_t = 4)]
    pub sockets: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Unmeasured seconds before the measurement.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Per-request timeout in milliseconds, from the first transmission.
    #[arg(long, default_value_t = 1000)]
    pub timeout_ms: u64,
    /// Print the final report as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// SET every key once before measuring, so GETs hit.
    #[arg(long)]
    pub prefill: bool,
    /// Outstanding SETs while prefilling: the key space fills at full speed whatever
    /// `--concurrency` the measured phase uses.
    #[arg(long, default_value_t = 8192)]
    pub prefill_concurrency: usize,
    /// Open loop (UDP only): start this many operations per second on a fixed schedule,
    /// `--concurrency` being the most in flight, and time each from when it was due, so
    /// the latency is that of a steady offered load rather than of a saturated closed
    /// loop. Without it, each answer starts the next operation.
    #[arg(long)]
    pub rate: Option<f64>,
}

impl Default for BenchArgs {
    fn default() -> Self {
        BenchArgs {
            server: "127.0.0.1:9000".into(),
            workload: Workload::Mixed,
            read_ratio: 0.9,
            value_size: 100,
            values: Values::Repeated,
            keys: 1_000_000,
            key_dist: KeyDist::Uniform,
            zipf_theta: 0.99,
            protocol: Protocol::Udp,
            pipeline: 1,
            concurrency: 1024,
            threads: 1,
            sockets: 4,
            duration: 10.0,
            warmup: 1.0,
            timeout_ms: 1000,
            json: false,
            prefill: false,
            prefill_concurrency: 8192,
            rate: None,
        }
    }
}

impl BenchArgs {
    /// Rejects option values the load loop cannot honour.
    pub fn validate(&self) -> anyhow::Result<()> {
        ensure!(
            self.keys >= 1 && self.keys <= MAX_KEYS,
            "--keys must be in 1..={MAX_KEYS}"
        );
        match self.protocol {
            Protocol::Udp => {
                ensure!(
                    self.value_size <= MAX_VALUE_SIZE,
                    "--value-size {} does not fit a datagram (at most {MAX_VALUE_SIZE} bytes; \
                     --protocol resp takes larger values)",
                    self.value_size
                );
                ensure!(
                    (1..=UDP_PIPELINE_MAX).contains(&self.pipeline),
                    "--pipeline must be within 1..={UDP_PIPELINE_MAX} over UDP (a BATCH \
                     datagram holds at most {} bytes)",
                    protocol::MAX_BATCH_DATAGRAM_SIZE
                );
            }
            Protocol::Memcache => {
                ensure!(
                    self.values == Values::Repeated,
                    "--values random is for --protocol udp and resp"
                );
                ensure!(
                    memcache::FRAME_HEADER_LEN + memcache::set_len(KEY_NAME_LEN, self.value_size)
                        <= memcache::DATAGRAM_MAX,
                    "--value-size {} does not fit a memcached request datagram of {} bytes",
                    self.value_size,
                    memcache::DATAGRAM_MAX
                );
                ensure!(
                    (1..=UDP_PIPELINE_MAX).contains(&self.pipeline),
                    "--pipeline must be within 1..={UDP_PIPELINE_MAX} over memcached's UDP"
                );
            }
            Protocol::Resp => {
                ensure!(
                    self.value_size <= crate::storage::command::VALUE_SIZE_MAX,
                    "--value-size must be at most {} over RESP",
                    crate::storage::command::VALUE_SIZE_MAX
                );
                ensure!(self.pipeline >= 1, "--pipeline must be at least 1");
            }
        }
        ensure!(
            (0.0..=1.0).contains(&self.read_ratio),
            "--read-ratio must be within 0..=1"
        );
        ensure!(
            self.zipf_theta.is_finite() && self.zipf_theta >= 0.0,
            "--zipf-theta must be a non-negative number"
        );
        ensure!(self.concurrency >= 1, "--concurrency must be at least 1");
        ensure!(
            self.prefill_concurrency >= 1,
            "--prefill-concurrency must be at least 1"
        );
        ensure!(self.threads >= 1, "--threads must be at least 1");
        ensure!(self.sockets >= 1, "--sockets must be at least 1");
        ensure!(
            self.duration.is_finite() && self.duration > 0.0,
            "--duration must be positive"
        );
        ensure!(
            self.warmup.is_finite() && self.warmup >= 0.0,
            "--warmup must not be negative"
        );
        ensure!(self.timeout_ms >= 1, "--timeout-ms must be at least 1");
        if let Some(rate) = self.rate {
            ensure!(
                rate.is_finite() && rate >= 1.0,
                "--rate must be at least 1 operation per second"
            );
            ensure!(
                self.protocol == Protocol::Udp,
                "--rate is supported with --protocol udp only"
            );
        }
        Ok(())
    }
}

/// Runs the benchmark described by `args` and prints the report to stdout (text, or
/// JSON with `--json`). Progress goes to stderr.
pub fn run_and_print(args: &BenchArgs) -> anyhow::Result<Report> {
    let report = run(args)?;
    println!("{}", report.render(args.json));
    Ok(report)
}

/// Runs the benchmark described by `args`: optional prefill, warmup, then the measured
/// window. Prints a progress line per second to stderr and returns the report.
pub fn run(args: &BenchArgs) -> anyhow::Result<Report> {
    args.validate()?;
    let servers = resolve_servers(&args.server).context("--server")?;
    let threads = args.threads.min(args.concurrency);
    let timeout = Duration::from_millis(args.timeout_ms);
    let sampler = KeySampler::new(args.key_dist, args.keys, args.zipf_theta);
    let value: Vec<u8> = (0..args.value_size)
        .map(|i| b'a' + (i % 26) as u8)
        .collect();
    let value_pool: Option<std::sync::Arc<[u8]>> = (args.values == Values::Random)
        .then(|| random_pool(RANDOM_POOL_BYTES + args.value_size).into());

    let (msg_tx, msg_rx) = crossbeam_channel::unbounded::<Msg>();
    let mut start_txs = Vec::with_capacity(threads);
    let mut handles = Vec::with_capacity(threads);
    for t in 0..threads {
        let share = |total: usize| total / threads + usize::from(t < total % threads);
        let measure_slots = share(args.concurrency);
        let prefill_slots = if args.prefill {
            share(args.prefill_concurrency.max(threads))
        } else {
            0
        };
        let slots = measure_slots.max(prefill_slots);
        let (start_tx, start_rx) = crossbeam_channel::bounded::<Instant>(1);
        start_txs.push(start_tx);
        let cfg = WorkerConfig {
            slots,
            measure_slots,
            sockets: args.sockets.min(slots),
            servers: servers.clone(),
            timeout,
            workload: args.workload,
            read_ratio: args.read_ratio,
            sampler: sampler.clone(),
            value: value.clone(),
            value_pool: value_pool.clone(),
            prefill_keys: args.prefill.then_some(KeyShare {
                first: t as u64,
                step: threads as u64,
                end: args.keys,
            }),
            warmup: Duration::from_secs_f64(args.warmup),
            duration: Duration::from_secs_f64(args.duration),
            pipeline: args.pipeline,
            rate: args.rate.map(|r| r / threads as f64),
        };
        let tx = msg_tx.clone();
        let (protocol, pipeline) = (args.protocol, args.pipeline);
        let handle = thread::Builder::new()
            .name(format!("bench-{t}"))
            .spawn(move || {
                let result = match protocol {
                    Protocol::Udp => Worker::new(cfg, tx.clone()).and_then(|mut w| w.run(start_rx)),
                    Protocol::Resp => resp_worker::RespWorker::new(cfg, pipeline, tx.clone())
                        .and_then(|mut w| w.run(start_rx)),
                    Protocol::Memcache => memcache_worker::MemcacheWorker::new(cfg, tx.clone())
                        .and_then(|mut w| w.run(start_rx)),
                };
                if let Err(e) = &result {
                    let _ = tx.send(Msg::Failed(format!("{e:#}")));
                }
                result
            })
            .context("spawning a bench thread")?;
        handles.push(handle);
    }
    drop(msg_tx);

    let mut progress = Progress::new(threads);
    let outcome = coordinate(args, threads, &msg_rx, &start_txs, &mut progress);
    drop(start_txs);
    for h in handles {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => bail!("a bench thread panicked"),
        }
    }
    let prefill = outcome?;
    Ok(progress.into_report(args, threads, prefill))
}

/// Drives the phases from the main thread: waits for prefill, starts the measurement,
/// prints progress, and collects the workers' final statistics into `progress`.
fn coordinate(
    args: &BenchArgs,
    threads: usize,
    rx: &Receiver<Msg>,
    start_txs: &[Sender<Instant>],
    progress: &mut Progress,
) -> anyhow::Result<Option<PrefillReport>> {
    let mut prefill = None;
    if args.prefill {
        let began = Instant::now();
        let mut done_threads = 0;
        let mut failed = 0;
        let mut next_tick = began + Duration::from_secs(1);
        let mut done_keys = 0u64;
        let mut last_done = 0u64;
        while done_threads < threads {
            match rx.recv_deadline(next_tick) {
                Ok(Msg::PrefillProgress { done }) => done_keys += done,
                Ok(Msg::PrefillDone { done, failed: f }) => {
                    done_keys += done;
                    failed += f;
                    done_threads += 1;
                }
                Ok(Msg::Failed(e)) => bail!("bench thread failed: {e}"),
                Ok(_) => {}
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    let t = began.elapsed().as_secs_f64();
                    eprintln!(
                        "prefill t={t:.0}s sets/s={} done={done_keys}/{}",
                        done_keys - last_done,
                        args.keys
                    );
                    last_done = done_keys;
                    next_tick += Duration::from_secs(1);
                }
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    bail!("bench threads exited during prefill")
                }
            }
        }
        let report = PrefillReport {
            keys: args.keys,
            failed,
            seconds: began.elapsed().as_secs_f64(),
        };
        eprintln!(
            "prefill: {} keys in {:.2} s ({:.0} sets/s), {} failed",
            report.keys,
            report.seconds,
            report.sets_per_sec(),
            report.failed
        );
        prefill = Some(report);
    }

    let start = Instant::now();
    for tx in start_txs {
        let _ = tx.send(start);
    }
    let warm_end = start + Duration::from_secs_f64(args.warmup);
    let mut next_tick = start + Duration::from_secs(1);
    let mut finished = 0;
    while finished < threads {
        match rx.recv_deadline(next_tick) {
            Ok(Msg::Interval(stats)) => progress.add_interval(stats),
            Ok(Msg::Done(stats)) => {
                progress.add_final(*stats);
                finished += 1;
            }
            Ok(Msg::Failed(e)) => bail!("bench thread failed: {e}"),
            Ok(Msg::PrefillProgress { .. } | Msg::PrefillDone { .. }) => {}
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                let secs = next_tick.duration_since(start).as_secs();
                eprintln!("{}", progress.tick_line(secs, next_tick <= warm_end));
                next_tick += Duration::from_secs(1);
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                bail!("bench threads exited before reporting")
            }
        }
    }
    Ok(prefill)
}
