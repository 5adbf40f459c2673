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
//! Every phase ends by itself: prefill when every key has been written (or given up on
//! after a few timeouts), measurement after `--warmup + --duration` seconds.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt::{self, Write as _};
use std::io;
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
use socket2::{Domain, Protocol, Socket, Type};

use crate::client::protocol::{
    self, MAX_DATAGRAM_SIZE, NO_COOKIE, Op, REQUEST_HEADER_SIZE, Request, Status,
};
use crate::client::resolve_servers;

/// Datagrams per `sendmmsg`/`recvmmsg` call.
const BATCH: usize = 64;
/// Receive buffer per datagram: larger than any valid datagram, so oversize ones show.
const RECV_BUF_SIZE: usize = MAX_DATAGRAM_SIZE + 64;
/// Length of a key name, `key:` plus ten digits.
const KEY_NAME_LEN: usize = 14;
/// Largest `--keys`: key names have exactly ten digits.
const MAX_KEYS: u64 = 10_000_000_000;
/// Largest `--value-size` that fits a datagram with a key name.
pub const MAX_VALUE_SIZE: usize = MAX_DATAGRAM_SIZE - REQUEST_HEADER_SIZE - KEY_NAME_LEN;
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
const _: () = assert!(RECV_BUF_SIZE > MAX_DATAGRAM_SIZE);

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
    /// Number of distinct keys (`key:0000000000` ...).
    #[arg(long, default_value_t = 1_000_000)]
    pub keys: u64,
    /// Key popularity distribution.
    #[arg(long, value_enum, default_value_t = KeyDist::Uniform)]
    pub key_dist: KeyDist,
    /// Zipf exponent for `--key-dist zipfian`.
    #[arg(long, default_value_t = 0.99)]
    pub zipf_theta: f64,
    /// Total outstanding requests across all threads (one per virtual client).
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
}

impl Default for BenchArgs {
    fn default() -> Self {
        BenchArgs {
            server: "127.0.0.1:9000".into(),
            workload: Workload::Mixed,
            read_ratio: 0.9,
            value_size: 100,
            keys: 1_000_000,
            key_dist: KeyDist::Uniform,
            zipf_theta: 0.99,
            concurrency: 1024,
            threads: 1,
            sockets: 4,
            duration: 10.0,
            warmup: 1.0,
            timeout_ms: 1000,
            json: false,
            prefill: false,
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
        ensure!(
            self.value_size <= MAX_VALUE_SIZE,
            "--value-size {} does not fit a datagram (at most {MAX_VALUE_SIZE} bytes)",
            self.value_size
        );
        ensure!(
            (0.0..=1.0).contains(&self.read_ratio),
            "--read-ratio must be within 0..=1"
        );
        ensure!(
            self.zipf_theta.is_finite() && self.zipf_theta >= 0.0,
            "--zipf-theta must be a non-negative number"
        );
        ensure!(self.concurrency >= 1, "--concurrency must be at least 1");
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
        Ok(())
    }
}

/// The prefill phase's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct PrefillReport {
    pub keys: u64,
    /// Keys given up on after repeated timeouts or refused with an error status.
    pub failed: u64,
    pub seconds: f64,
}

impl PrefillReport {
    pub fn sets_per_sec(&self) -> f64 {
        if self.seconds > 0.0 {
            (self.keys - self.failed) as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// The result of a benchmark run. Counts cover the measured window only.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub workload: Workload,
    pub read_ratio: f64,
    pub value_size: usize,
    pub keys: u64,
    pub key_dist: KeyDist,
    pub concurrency: usize,
    pub threads: usize,
    pub duration_s: f64,
    /// Successfully answered operations: `ok + get_miss`.
    pub ops: u64,
    pub ok: u64,
    /// GETs answered [`Status::NotFound`].
    pub get_miss: u64,
    /// Operations answered with an error status (final, after retries).
    pub errors: u64,
    /// `errors` broken down by status, nonzero entries only.
    pub errors_by_status: Vec<(Status, u64)>,
    /// Operations abandoned after `--timeout-ms` without a final answer.
    pub timeouts: u64,
    /// Busy answers (each caused a delayed resend).
    pub busy: u64,
    /// NotLeader answers followed.
    pub redirects: u64,
    /// CookieRequired answers (each caused an immediate resend).
    pub cookie_retries: u64,
    pub ops_per_sec: f64,
    /// Latency percentiles of successful operations, in µs.
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub prefill: Option<PrefillReport>,
}

impl Report {
    /// The report as one JSON object on one line.
    pub fn to_json(&self) -> String {
        let mut s = String::with_capacity(512);
        s.push('{');
        let _ = write!(s, "\"workload\":\"{}\"", self.workload.name());
        let _ = write!(s, ",\"read_ratio\":{}", json_f64(self.read_ratio));
        let _ = write!(s, ",\"value_size\":{}", self.value_size);
        let _ = write!(s, ",\"keys\":{}", self.keys);
        let _ = write!(s, ",\"key_dist\":\"{}\"", self.key_dist.name());
        let _ = write!(s, ",\"concurrency\":{}", self.concurrency);
        let _ = write!(s, ",\"threads\":{}", self.threads);
        let _ = write!(s, ",\"duration_s\":{}", json_f64(self.duration_s));
        let _ = write!(s, ",\"ops\":{}", self.ops);
        let _ = write!(s, ",\"ops_per_sec\":{}", json_f64(self.ops_per_sec));
        let _ = write!(s, ",\"ok\":{}", self.ok);
        let _ = write!(s, ",\"get_miss\":{}", self.get_miss);
        let _ = write!(s, ",\"errors\":{}", self.errors);
        s.push_str(",\"errors_by_status\":{");
        for (i, (status, n)) in self.errors_by_status.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            let _ = write!(s, "{sep}\"{}\":{n}", status.name());
        }
        s.push('}');
        let _ = write!(s, ",\"timeouts\":{}", self.timeouts);
        let _ = write!(s, ",\"busy\":{}", self.busy);
        let _ = write!(s, ",\"redirects\":{}", self.redirects);
        let _ = write!(s, ",\"cookie_retries\":{}", self.cookie_retries);
        let _ = write!(s, ",\"p50_us\":{}", self.p50_us);
        let _ = write!(s, ",\"p90_us\":{}", self.p90_us);
        let _ = write!(s, ",\"p99_us\":{}", self.p99_us);
        let _ = write!(s, ",\"p999_us\":{}", self.p999_us);
        let _ = write!(s, ",\"max_us\":{}", self.max_us);
        match &self.prefill {
            None => s.push_str(",\"prefill\":null"),
            Some(p) => {
                let _ = write!(
                    s,
                    ",\"prefill\":{{\"keys\":{},\"failed\":{},\"seconds\":{},\"sets_per_sec\":{}}}",
                    p.keys,
                    p.failed,
                    json_f64(p.seconds),
                    json_f64(p.sets_per_sec())
                );
            }
        }
        s.push('}');
        s
    }

    /// The text report, or the JSON object when `json` is set.
    pub fn render(&self, json: bool) -> String {
        if json {
            self.to_json()
        } else {
            self.to_string()
        }
    }
}

/// A finite float as JSON (JSON has no NaN or infinity; those become 0).
fn json_f64(v: f64) -> String {
    if v.is_finite() {
        format!("{:.3}", v)
    } else {
        "0".into()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mix = match self.workload {
            Workload::Mixed => format!("mixed ({:.0}% reads)", self.read_ratio * 100.0),
            w => w.name().to_string(),
        };
        writeln!(
            f,
            "workload      {mix}, {} B values, {} {} keys, concurrency {} on {} thread(s)",
            self.value_size,
            self.keys,
            self.key_dist.name(),
            self.concurrency,
            self.threads
        )?;
        if let Some(p) = &self.prefill {
            writeln!(
                f,
                "prefill       {} keys in {:.2} s ({:.0} sets/s), {} failed",
                p.keys,
                p.seconds,
                p.sets_per_sec(),
                p.failed
            )?;
        }
        writeln!(f, "duration      {:.2} s", self.duration_s)?;
        writeln!(
            f,
            "throughput    {:.0} ops/s ({} ops)",
            self.ops_per_sec, self.ops
        )?;
        writeln!(
            f,
            "latency (us)  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            self.p50_us, self.p90_us, self.p99_us, self.p999_us, self.max_us
        )?;
        writeln!(f, "ok            {}", self.ok)?;
        writeln!(f, "get-miss      {}", self.get_miss)?;
        write!(f, "errors        {}", self.errors)?;
        if !self.errors_by_status.is_empty() {
            let parts: Vec<String> = self
                .errors_by_status
                .iter()
                .map(|(s, n)| format!("{} {n}", s.name()))
                .collect();
            write!(f, " ({})", parts.join(", "))?;
        }
        writeln!(f)?;
        writeln!(f, "timeouts      {}", self.timeouts)?;
        write!(
            f,
            "retries       busy {}  redirects {}  cookie {}",
            self.busy, self.redirects, self.cookie_retries
        )
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

    let (msg_tx, msg_rx) = crossbeam_channel::unbounded::<Msg>();
    let mut start_txs = Vec::with_capacity(threads);
    let mut handles = Vec::with_capacity(threads);
    for t in 0..threads {
        let slots = args.concurrency / threads + usize::from(t < args.concurrency % threads);
        let (start_tx, start_rx) = crossbeam_channel::bounded::<Instant>(1);
        start_txs.push(start_tx);
        let cfg = WorkerConfig {
            slots,
            sockets: args.sockets.min(slots),
            servers: servers.clone(),
            timeout,
            workload: args.workload,
            read_ratio: args.read_ratio,
            sampler: sampler.clone(),
            value: value.clone(),
            prefill_keys: args.prefill.then_some(KeyShare {
                first: t as u64,
                step: threads as u64,
                end: args.keys,
            }),
            warmup: Duration::from_secs_f64(args.warmup),
            duration: Duration::from_secs_f64(args.duration),
        };
        let tx = msg_tx.clone();
        let handle = thread::Builder::new()
            .name(format!("bench-{t}"))
            .spawn(move || {
                let result = Worker::new(cfg, tx.clone()).and_then(|mut w| w.run(start_rx));
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

/// Aggregates worker statistics on the main thread.
struct Progress {
    interval: Counts,
    interval_hist: Histogram<u64>,
    total: Counts,
    total_hist: Histogram<u64>,
    threads: usize,
}

impl Progress {
    fn new(threads: usize) -> Self {
        Progress {
            interval: Counts::default(),
            interval_hist: new_histogram(),
            total: Counts::default(),
            total_hist: new_histogram(),
            threads,
        }
    }

    fn add_interval(&mut self, stats: IntervalStats) {
        self.interval.add(&stats.counts);
        // Both histograms share bounds, so adding cannot fail.
        let _ = self.interval_hist.add(&stats.hist);
    }

    fn add_final(&mut self, stats: FinalStats) {
        self.total.add(&stats.counts);
        let _ = self.total_hist.add(&stats.hist);
    }

    /// The progress line for the second ending at `secs`, then resets the interval.
    fn tick_line(&mut self, secs: u64, warmup: bool) -> String {
        let c = &self.interval;
        let p99 = if self.interval_hist.is_empty() {
            0
        } else {
            self.interval_hist.value_at_quantile(0.99)
        };
        let line = format!(
            "t={secs}s{} ops/s={} p99={p99}us errors={} timeouts={}",
            if warmup { " (warmup)" } else { "" },
            c.ok + c.get_miss,
            c.errors(),
            c.timeouts
        );
        self.interval = Counts::default();
        self.interval_hist.reset();
        line
    }

    fn into_report(
        self,
        args: &BenchArgs,
        threads: usize,
        prefill: Option<PrefillReport>,
    ) -> Report {
        debug_assert_eq!(threads, self.threads);
        let c = &self.total;
        let h = &self.total_hist;
        let q = |p: f64| {
            if h.is_empty() {
                0
            } else {
                h.value_at_quantile(p)
            }
        };
        let ops = c.ok + c.get_miss;
        let errors_by_status = Status::ALL
            .iter()
            .zip(c.errors.iter())
            .filter(|(_, n)| **n > 0)
            .map(|(s, n)| (*s, *n))
            .collect();
        Report {
            workload: args.workload,
            read_ratio: args.read_ratio,
            value_size: args.value_size,
            keys: args.keys,
            key_dist: args.key_dist,
            concurrency: args.concurrency,
            threads,
            duration_s: args.duration,
            ops,
            ok: c.ok,
            get_miss: c.get_miss,
            errors: c.errors(),
            errors_by_status,
            timeouts: c.timeouts,
            busy: c.busy,
            redirects: c.redirects,
            cookie_retries: c.cookie_retries,
            ops_per_sec: ops as f64 / args.duration,
            p50_us: q(0.5),
            p90_us: q(0.9),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: if h.is_empty() { 0 } else { h.max() },
            prefill,
        }
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("valid histogram bounds")
}

/// Event counters, one set per reporting scope.
#[derive(Debug, Clone, Default)]
struct Counts {
    ok: u64,
    get_miss: u64,
    /// Final error answers, indexed like [`Status::ALL`].
    errors: [u64; Status::ALL.len()],
    timeouts: u64,
    busy: u64,
    redirects: u64,
    cookie_retries: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.ok += o.ok;
        self.get_miss += o.get_miss;
        for (a, b) in self.errors.iter_mut().zip(o.errors.iter()) {
            *a += b;
        }
        self.timeouts += o.timeouts;
        self.busy += o.busy;
        self.redirects += o.redirects;
        self.cookie_retries += o.cookie_retries;
    }

    fn errors(&self) -> u64 {
        self.errors.iter().sum()
    }

    fn count_error(&mut self, status: Status) {
        if let Some(i) = Status::ALL.iter().position(|s| *s == status) {
            self.errors[i] += 1;
        }
    }
}

struct IntervalStats {
    counts: Counts,
    hist: Histogram<u64>,
}

struct FinalStats {
    counts: Counts,
    hist: Histogram<u64>,
}

enum Msg {
    PrefillProgress { done: u64 },
    PrefillDone { done: u64, failed: u64 },
    Interval(IntervalStats),
    Done(Box<FinalStats>),
    Failed(String),
}

/// Draws key indices in `0..keys`.
#[derive(Debug, Clone)]
pub enum KeySampler {
    Uniform { keys: u64 },
    Zipfian { zipf: Zipf, scatter: Scatter },
}

impl KeySampler {
    pub fn new(dist: KeyDist, keys: u64, theta: f64) -> Self {
        match dist {
            KeyDist::Uniform => KeySampler::Uniform { keys },
            KeyDist::Zipfian => KeySampler::Zipfian {
                zipf: Zipf::new(keys, theta),
                scatter: Scatter::new(keys),
            },
        }
    }

    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> u64 {
        match self {
            KeySampler::Uniform { keys } => rng.gen_range(0..*keys),
            KeySampler::Zipfian { zipf, scatter } => scatter.apply(zipf.sample(rng) - 1),
        }
    }
}

/// A bijection of `0..n` that spreads the hottest Zipf ranks over the key space
/// (`rank * P mod n` for a prime `P` coprime to `n`).
#[derive(Debug, Clone, Copy)]
pub struct Scatter {
    n: u64,
    mul: u64,
}

impl Scatter {
    /// A large prime (Knuth's multiplicative hashing constant).
    const PRIME: u64 = 2_654_435_761;

    pub fn new(n: u64) -> Self {
        // A prime is coprime to n unless it divides n; then fall back to the identity.
        let mul = if n.is_multiple_of(Self::PRIME) {
            1
        } else {
            Self::PRIME % n.max(1)
        };
        Scatter { n, mul: mul.max(1) }
    }

    pub fn apply(&self, rank: u64) -> u64 {
        ((u128::from(rank) * u128::from(self.mul)) % u128::from(self.n)) as u64
    }
}

/// Zipf distribution over ranks `1..=n` with exponent `theta` (P(k) ∝ k^-theta), drawn
/// by rejection-inversion (Hörmann and Derflinger, "Rejection-inversion to generate
/// variates from monotone discrete distributions", 1996): O(1) memory and time.
#[derive(Debug, Clone, Copy)]
pub struct Zipf {
    n: u64,
    theta: f64,
    h_integral_x1: f64,
    h_integral_n: f64,
    s: f64,
}

impl Zipf {
    /// # Panics
    ///
    /// If `n` is 0 or `theta` is negative or not finite.
    pub fn new(n: u64, theta: f64) -> Self {
        assert!(n >= 1, "Zipf needs at least one element");
        assert!(
            theta.is_finite() && theta >= 0.0,
            "Zipf exponent must be >= 0"
        );
        let mut z = Zipf {
            n,
            theta,
            h_integral_x1: 0.0,
            h_integral_n: 0.0,
            s: 0.0,
        };
        z.h_integral_x1 = z.h_integral(1.5) - 1.0;
        z.h_integral_n = z.h_integral(n as f64 + 0.5);
        z.s = 2.0 - z.h_integral_inverse(z.h_integral(2.5) - z.h(2.0));
        z
    }

    /// A rank in `1..=n`; rank 1 is the most likely.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> u64 {
        loop {
            let r: f64 = rng.r#gen();
            let u = self.h_integral_n + r * (self.h_integral_x1 - self.h_integral_n);
            let x = self.h_integral_inverse(u);
            let k = (x + 0.5).floor().clamp(1.0, self.n as f64);
            let k_int = k as u64;
            if k - x <= self.s || u >= self.h_integral(k + 0.5) - self.h(k) {
                return k_int.clamp(1, self.n);
            }
        }
    }

    fn h(&self, x: f64) -> f64 {
        (-self.theta * x.ln()).exp()
    }

    fn h_integral(&self, x: f64) -> f64 {
        let log_x = x.ln();
        expm1_over_x((1.0 - self.theta) * log_x) * log_x
    }

    fn h_integral_inverse(&self, x: f64) -> f64 {
        let t = (x * (1.0 - self.theta)).max(-1.0);
        (log1p_over_x(t) * x).exp()
    }
}

/// `ln(1 + x) / x`, accurate near 0.
fn log1p_over_x(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.ln_1p() / x
    } else {
        1.0 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x))
    }
}

/// `(e^x - 1) / x`, accurate near 0.
fn expm1_over_x(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.exp_m1() / x
    } else {
        1.0 + x * 0.5 * (1.0 + x * (1.0 / 3.0) * (1.0 + 0.25 * x))
    }
}

/// Writes the name of key `n` (`key:` and ten digits) into `out`.
fn key_name(n: u64, out: &mut [u8; KEY_NAME_LEN]) -> &str {
    out[..4].copy_from_slice(b"key:");
    let mut v = n;
    for i in (4..KEY_NAME_LEN).rev() {
        out[i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
    std::str::from_utf8(out).expect("ASCII")
}

/// The keys one worker prefills: `first, first + step, ...` below `end`.
#[derive(Debug, Clone, Copy)]
struct KeyShare {
    first: u64,
    step: u64,
    end: u64,
}

struct WorkerConfig {
    slots: usize,
    sockets: usize,
    servers: Vec<SocketAddr>,
    timeout: Duration,
    workload: Workload,
    read_ratio: f64,
    sampler: KeySampler,
    value: Vec<u8>,
    prefill_keys: Option<KeyShare>,
    warmup: Duration,
    duration: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    /// No operation (the phase has no more work for it).
    Idle,
    /// In its socket's send queue.
    Queued,
    /// Sent, awaiting the answer.
    InFlight,
    /// Waiting in the timer heap to be resent (after Busy or a leaderless NotLeader).
    Delayed,
}

/// One virtual client.
#[derive(Debug, Clone)]
struct Slot {
    client_id: u64,
    generation: u64,
    seq: u64,
    state: SlotState,
    /// Bumped whenever a new operation starts, so stale timer entries are recognised.
    epoch: u32,
    op: Op,
    key: u64,
    /// Server index the last transmission went to.
    target: usize,
    /// First transmission of the current operation (`None` until sent).
    first_sent: Option<Instant>,
    busy_streak: u32,
    /// Prefill: timeouts so far for this slot's key.
    attempts: u32,
}

/// Where a phase is.
enum Phase {
    Prefill {
        next: u64,
        share: KeyShare,
        retry: Vec<(u64, u32)>,
        done: u64,
        failed: u64,
    },
    Measure {
        warm_end: Instant,
        end: Instant,
    },
}

struct Worker {
    cfg: WorkerConfig,
    tx: Sender<Msg>,
    rng: StdRng,
    sockets: Vec<Socket>,
    fds: Vec<RawFd>,
    servers: Vec<SocketAddr>,
    server_addrs: Vec<(libc::sockaddr_storage, libc::socklen_t)>,
    /// Current target server index.
    target: usize,
    /// `cookies[server][socket]`.
    cookies: Vec<Vec<u64>>,
    slots: Vec<Slot>,
    id_base: u64,
    send_queues: Vec<VecDeque<u32>>,
    timers: BinaryHeap<Reverse<(Instant, u32, u32)>>,
    send_buf: Vec<u8>,
    recv_buf: Vec<u8>,
    last_rx: Instant,
    last_rotate: Instant,
    /// Counters and histogram for the measured window.
    window: Counts,
    window_hist: Histogram<u64>,
    /// Counters and histogram since the last flush to the main thread (all phases).
    interval: Counts,
    interval_hist: Histogram<u64>,
    prefill_unreported: u64,
    /// Slots not [`SlotState::Idle`].
    active: usize,
    pollfds: Vec<libc::pollfd>,
}

impl Worker {
    fn new(cfg: WorkerConfig, tx: Sender<Msg>) -> anyhow::Result<Self> {
        let first = cfg.servers[0];
        let bind: SocketAddr = match first.ip() {
            IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let mut sockets = Vec::with_capacity(cfg.sockets);
        for _ in 0..cfg.sockets {
            let s = Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP))
                .context("creating a UDP socket")?;
            s.set_nonblocking(true)?;
            // Above net.core.{r,w}mem_max when allowed (root), else capped by them.
            crate::server::net::set_buffer_size(&s, SOCKET_BUFFER_BYTES, true);
            crate::server::net::set_buffer_size(&s, SOCKET_BUFFER_BYTES, false);
            s.bind(&bind.into())
                .with_context(|| format!("binding a UDP socket to {bind}"))?;
            sockets.push(s);
        }
        let fds = sockets.iter().map(AsRawFd::as_raw_fd).collect();
        let mut rng = StdRng::from_entropy();
        let id_base = rng.r#gen::<u64>();
        let n = cfg.slots;
        let now = Instant::now();
        let mut w = Worker {
            tx,
            sockets,
            fds,
            servers: Vec::new(),
            server_addrs: Vec::new(),
            target: 0,
            cookies: Vec::new(),
            slots: Vec::with_capacity(n),
            id_base,
            send_queues: vec![VecDeque::new(); cfg.sockets],
            timers: BinaryHeap::new(),
            send_buf: vec![0u8; BATCH * MAX_DATAGRAM_SIZE],
            recv_buf: vec![0u8; BATCH * RECV_BUF_SIZE],
            last_rx: now,
            last_rotate: now,
            window: Counts::default(),
            window_hist: new_histogram(),
            interval: Counts::default(),
            interval_hist: new_histogram(),
            prefill_unreported: 0,
            active: 0,
            pollfds: Vec::new(),
            rng,
            cfg,
        };
        for addr in w.cfg.servers.clone() {
            w.server_index(addr);
        }
        for i in 0..n {
            let mut slot = Slot {
                client_id: 0,
                generation: 0,
                seq: 0,
                state: SlotState::Idle,
                epoch: 0,
                op: Op::Get,
                key: 0,
                target: 0,
                first_sent: None,
                busy_streak: 0,
                attempts: 0,
            };
            slot.client_id = w.client_id_for(i, &mut slot.generation);
            w.slots.push(slot);
        }
        Ok(w)
    }

    /// The client id of slot `index` at `generation` (advanced past the value 0).
    fn client_id_for(&self, index: usize, generation: &mut u64) -> u64 {
        let n = self.cfg.slots as u64;
        loop {
            let id = self
                .id_base
                .wrapping_add(generation.wrapping_mul(n))
                .wrapping_add(index as u64);
            if id != 0 {
                return id;
            }
            *generation += 1;
        }
    }

    /// The slot a client id belongs to, if it is that slot's current id.
    fn slot_for(&self, client_id: u64) -> Option<usize> {
        let n = self.slots.len() as u64;
        let i = (client_id.wrapping_sub(self.id_base) % n) as usize;
        (self.slots[i].client_id == client_id).then_some(i)
    }

    fn server_index(&mut self, addr: SocketAddr) -> usize {
        if let Some(i) = self.servers.iter().position(|s| *s == addr) {
            return i;
        }
        self.servers.push(addr);
        self.server_addrs.push(sockaddr_of(&addr));
        self.cookies.push(vec![NO_COOKIE; self.sockets.len()]);
        self.servers.len() - 1
    }

    fn run(&mut self, start_rx: Receiver<Instant>) -> anyhow::Result<()> {
        if let Some(share) = self.cfg.prefill_keys {
            let mut phase = Phase::Prefill {
                next: share.first,
                share,
                retry: Vec::new(),
                done: 0,
                failed: 0,
            };
            self.run_phase(&mut phase)?;
            let Phase::Prefill { done, failed, .. } = phase else {
                unreachable!()
            };
            debug_assert!(done + failed >= share.end.saturating_sub(share.first) / share.step);
            let unreported = mem::take(&mut self.prefill_unreported);
            let _ = self.tx.send(Msg::PrefillDone {
                done: unreported,
                failed,
            });
            // Prefill traffic is not part of the first measured second.
            self.interval = Counts::default();
            self.interval_hist.reset();
        }
        let Ok(start) = start_rx.recv() else {
            // The coordinator gave up (another thread failed); nothing to measure.
            return Ok(());
        };
        let warm_end = start + self.cfg.warmup;
        let mut phase = Phase::Measure {
            warm_end,
            end: warm_end + self.cfg.duration,
        };
        self.run_phase(&mut phase)?;
        self.flush_interval();
        let stats = FinalStats {
            counts: mem::take(&mut self.window),
            hist: mem::replace(&mut self.window_hist, new_histogram()),
        };
        let _ = self.tx.send(Msg::Done(Box::new(stats)));
        Ok(())
    }

    fn run_phase(&mut self, phase: &mut Phase) -> anyhow::Result<()> {
        for i in 0..self.slots.len() {
            self.start_next(i, phase, Instant::now());
        }
        let scan_every =
            (self.cfg.timeout / 20).clamp(Duration::from_millis(1), Duration::from_millis(50));
        let mut next_scan = Instant::now() + scan_every;
        let mut next_flush = Instant::now() + FLUSH_INTERVAL;
        loop {
            let now = Instant::now();
            match phase {
                Phase::Measure { end, .. } if now >= *end => break,
                Phase::Prefill { .. } if self.active == 0 => break,
                _ => {}
            }
            self.fire_timers(now);
            if now >= next_scan {
                self.scan_timeouts(phase, now);
                next_scan = now + scan_every;
            }
            if now >= next_flush {
                self.flush_interval();
                next_flush = now + FLUSH_INTERVAL;
            }
            let sent = self.flush_sends()?;
            let received = self.receive(phase)?;
            if sent == 0 && received == 0 {
                self.wait_idle(next_scan.min(next_flush));
            }
        }
        // Abandon whatever is still outstanding; later answers are ignored as stale.
        for s in &mut self.slots {
            s.state = SlotState::Idle;
            s.epoch = s.epoch.wrapping_add(1);
        }
        self.active = 0;
        self.send_queues.iter_mut().for_each(VecDeque::clear);
        self.timers.clear();
        Ok(())
    }

    /// Gives slot `i` its next operation (or leaves it idle) and queues it.
    fn start_next(&mut self, i: usize, phase: &mut Phase, now: Instant) {
        let next = match phase {
            Phase::Measure { end, .. } => {
                if now >= *end {
                    None
                } else {
                    let key = self.cfg.sampler.sample(&mut self.rng);
                    let op = match self.cfg.workload {
                        Workload::Set => Op::Set,
                        Workload::Get => Op::Get,
                        Workload::Mixed => {
                            if self.rng.r#gen::<f64>() < self.cfg.read_ratio {
                                Op::Get
                            } else {
                                Op::Set
                            }
                        }
                    };
                    Some((op, key, 0))
                }
            }
            Phase::Prefill {
                next, share, retry, ..
            } => {
                if let Some((key, attempts)) = retry.pop() {
                    Some((Op::Set, key, attempts))
                } else if *next < share.end {
                    let key = *next;
                    *next += share.step;
                    Some((Op::Set, key, 0))
                } else {
                    None
                }
            }
        };
        let slot = &mut self.slots[i];
        slot.epoch = slot.epoch.wrapping_add(1);
        slot.first_sent = None;
        slot.busy_streak = 0;
        let was_idle = slot.state == SlotState::Idle;
        match next {
            None => {
                slot.state = SlotState::Idle;
                self.active -= usize::from(!was_idle);
            }
            Some((op, key, attempts)) => {
                self.active += usize::from(was_idle);
                slot.op = op;
                slot.key = key;
                slot.attempts = attempts;
                slot.seq += 1;
                self.queue(i);
            }
        }
    }

    fn queue(&mut self, i: usize) {
        self.slots[i].state = SlotState::Queued;
        let sock = i % self.sockets.len();
        self.send_queues[sock].push_back(i as u32);
    }

    fn delay(&mut self, i: usize, until: Instant) {
        let slot = &mut self.slots[i];
        slot.state = SlotState::Delayed;
        self.timers.push(Reverse((until, i as u32, slot.epoch)));
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(Reverse((due, i, epoch))) = self.timers.peek().copied() {
            if due > now {
                break;
            }
            self.timers.pop();
            let slot = &self.slots[i as usize];
            if slot.epoch == epoch && slot.state == SlotState::Delayed {
                self.queue(i as usize);
            }
        }
    }

    /// Abandons operations older than the timeout; gives their slots new client ids.
    fn scan_timeouts(&mut self, phase: &mut Phase, now: Instant) {
        let timeout = self.cfg.timeout;
        for i in 0..self.slots.len() {
            let s = &self.slots[i];
            let waiting = matches!(s.state, SlotState::InFlight | SlotState::Delayed);
            let expired = s
                .first_sent
                .is_some_and(|t| now.duration_since(t) >= timeout);
            if !(waiting && expired) {
                continue;
            }
            let (key, attempts) = (s.key, s.attempts + 1);
            let mut generation = s.generation.wrapping_add(1);
            self.interval.timeouts += 1;
            if in_window(phase, now) {
                self.window.timeouts += 1;
            }
            // A new session: the abandoned request may still be applied, but nothing
            // sent under the old id can be mistaken for an answer to the new one.
            let id = self.client_id_for(i, &mut generation);
            let slot = &mut self.slots[i];
            slot.generation = generation;
            slot.client_id = id;
            slot.seq = 0;
            if let Phase::Prefill { retry, failed, .. } = phase {
                if attempts < PREFILL_ATTEMPTS {
                    retry.push((key, attempts));
                } else {
                    *failed += 1;
                }
            }
            self.start_next(i, phase, now);
        }
        if self.servers.len() > 1
            && now.duration_since(self.last_rx) >= timeout
            && now.duration_since(self.last_rotate) >= timeout
        {
            // The target has been silent for a whole timeout: try the next server.
            self.target = (self.target + 1) % self.servers.len();
            self.last_rotate = now;
        }
    }

    /// Sends queued requests with `sendmmsg`; returns how many went out.
    fn flush_sends(&mut self) -> anyhow::Result<usize> {
        let mut total = 0;
        for sock in 0..self.sockets.len() {
            while !self.send_queues[sock].is_empty() {
                let n = self.send_queues[sock].len().min(BATCH);
                let target = self.target;
                let mut lens = [0usize; BATCH];
                let mut key_buf = [0u8; KEY_NAME_LEN];
                for (j, len) in lens.iter_mut().enumerate().take(n) {
                    let i = self.send_queues[sock][j] as usize;
                    let slot = &mut self.slots[i];
                    slot.target = target;
                    let req = Request {
                        op: slot.op,
                        client_id: slot.client_id,
                        request_seq: slot.seq,
                        cookie: self.cookies[target][sock],
                        key: key_name(slot.key, &mut key_buf),
                        value: if slot.op == Op::Set {
                            &self.cfg.value
                        } else {
                            &[]
                        },
                    };
                    let buf =
                        &mut self.send_buf[j * MAX_DATAGRAM_SIZE..(j + 1) * MAX_DATAGRAM_SIZE];
                    *len = protocol::encode_request_into(&req, buf);
                }
                // SAFETY: all-zero iovecs and mmsghdrs are valid (null pointers, zero lengths).
                let mut iovs: [libc::iovec; BATCH] = unsafe { mem::zeroed() };
                let mut msgs: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
                let base = self.send_buf.as_mut_ptr();
                let iov_base = iovs.as_mut_ptr();
                let (addr, addr_len) = &self.server_addrs[target];
                for j in 0..n {
                    // SAFETY: j < BATCH, so both offsets stay inside their arrays.
                    unsafe {
                        *iov_base.add(j) = libc::iovec {
                            iov_base: base.add(j * MAX_DATAGRAM_SIZE).cast(),
                            iov_len: lens[j],
                        };
                        msgs[j].msg_hdr.msg_iov = iov_base.add(j);
                    }
                    msgs[j].msg_hdr.msg_iovlen = 1;
                    msgs[j].msg_hdr.msg_name =
                        (addr as *const libc::sockaddr_storage).cast_mut().cast();
                    msgs[j].msg_hdr.msg_namelen = *addr_len;
                }
                // SAFETY: `msgs[..n]` point at `iovs`, `send_buf` and `server_addrs`,
                // all of which outlive the call and are not touched during it.
                let rc = unsafe {
                    libc::sendmmsg(
                        self.fds[sock],
                        msgs.as_mut_ptr(),
                        n as libc::c_uint,
                        libc::MSG_DONTWAIT,
                    )
                };
                let now = Instant::now();
                let sent = if rc >= 0 {
                    rc as usize
                } else {
                    let err = io::Error::last_os_error();
                    match err.raw_os_error() {
                        Some(libc::EAGAIN | libc::ENOBUFS) => break,
                        Some(libc::EINTR) => continue,
                        // The first datagram cannot be sent (e.g. a redirect to an
                        // address of the other family): treat it as lost, so the
                        // operation times out like any unanswered one.
                        Some(
                            libc::EAFNOSUPPORT
                            | libc::EINVAL
                            | libc::ENETUNREACH
                            | libc::EHOSTUNREACH
                            | libc::ECONNREFUSED
                            | libc::EPERM
                            | libc::EADDRNOTAVAIL
                            | libc::EMSGSIZE,
                        ) => 1,
                        _ => return Err(err).context("sendmmsg"),
                    }
                };
                for _ in 0..sent {
                    let i = self.send_queues[sock].pop_front().expect("queued") as usize;
                    let slot = &mut self.slots[i];
                    slot.state = SlotState::InFlight;
                    slot.first_sent.get_or_insert(now);
                }
                total += sent;
                if sent < n {
                    break;
                }
            }
        }
        Ok(total)
    }

    /// Receives and handles responses with `recvmmsg`; returns how many arrived.
    fn receive(&mut self, phase: &mut Phase) -> anyhow::Result<usize> {
        let mut total = 0;
        for sock in 0..self.sockets.len() {
            for _ in 0..RECV_ROUNDS {
                // SAFETY: all-zero iovecs and mmsghdrs are valid (null pointers, zero lengths).
                let mut iovs: [libc::iovec; BATCH] = unsafe { mem::zeroed() };
                let mut msgs: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
                let base = self.recv_buf.as_mut_ptr();
                let iov_base = iovs.as_mut_ptr();
                for (j, msg) in msgs.iter_mut().enumerate() {
                    // SAFETY: j < BATCH, so both offsets stay inside their arrays.
                    unsafe {
                        *iov_base.add(j) = libc::iovec {
                            iov_base: base.add(j * RECV_BUF_SIZE).cast(),
                            iov_len: RECV_BUF_SIZE,
                        };
                        msg.msg_hdr.msg_iov = iov_base.add(j);
                    }
                    msg.msg_hdr.msg_iovlen = 1;
                }
                // SAFETY: `msgs` point at `iovs` and `recv_buf`, which outlive the call.
                let rc = unsafe {
                    libc::recvmmsg(
                        self.fds[sock],
                        msgs.as_mut_ptr(),
                        BATCH as libc::c_uint,
                        libc::MSG_DONTWAIT,
                        std::ptr::null_mut(),
                    )
                };
                if rc < 0 {
                    let err = io::Error::last_os_error();
                    match err.raw_os_error() {
                        Some(libc::EAGAIN | libc::EINTR) => break,
                        // ICMP errors surface here on some kernels; they carry no
                        // answer, and the operation will time out.
                        Some(libc::ECONNREFUSED | libc::EHOSTUNREACH | libc::ENETUNREACH) => break,
                        _ => return Err(err).context("recvmmsg"),
                    }
                }
                let got = rc as usize;
                let now = Instant::now();
                for (j, msg) in msgs.iter().enumerate().take(got) {
                    if msg.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                        continue;
                    }
                    let len = msg.msg_len as usize;
                    let start = j * RECV_BUF_SIZE;
                    self.handle_datagram(sock, start, len, phase, now);
                }
                total += got;
                if got < BATCH {
                    break;
                }
            }
        }
        Ok(total)
    }

    fn handle_datagram(
        &mut self,
        sock: usize,
        start: usize,
        len: usize,
        phase: &mut Phase,
        now: Instant,
    ) {
        let Ok(resp) = protocol::parse_response(&self.recv_buf[start..start + len]) else {
            return;
        };
        let Some(i) = self.slot_for(resp.client_id) else {
            return;
        };
        let (status, cookie) = (resp.status, resp.cookie);
        let slot = &self.slots[i];
        if slot.state != SlotState::InFlight || slot.seq != resp.request_seq {
            return;
        }
        if resp.op.is_some_and(|op| op != slot.op) {
            return;
        }
        let hint = (status == Status::NotLeader).then(|| protocol::parse_leader_hint(resp.payload));
        let slot_target = slot.target;
        self.last_rx = now;
        match status {
            Status::Ok | Status::NotFound => self.complete(i, Some(status), phase, now),
            Status::CookieRequired => {
                self.interval.cookie_retries += 1;
                if in_window(phase, now) {
                    self.window.cookie_retries += 1;
                }
                self.cookies[slot_target][sock] = cookie;
                self.queue(i);
            }
            Status::NotLeader => {
                self.interval.redirects += 1;
                if in_window(phase, now) {
                    self.window.redirects += 1;
                }
                match hint.flatten() {
                    Some(leader) => {
                        self.target = self.server_index(leader);
                        self.queue(i);
                    }
                    None => {
                        // Leader unknown: move on from the server that said so (once,
                        // not once per slot) and retry a little later.
                        if self.target == slot_target {
                            self.target = (self.target + 1) % self.servers.len();
                        }
                        self.delay(i, now + NO_LEADER_BACKOFF);
                    }
                }
            }
            Status::Busy => {
                self.interval.busy += 1;
                if in_window(phase, now) {
                    self.window.busy += 1;
                }
                let slot = &mut self.slots[i];
                let backoff = BUSY_BACKOFF
                    .saturating_mul(1 << slot.busy_streak.min(10))
                    .min(BUSY_BACKOFF_MAX);
                slot.busy_streak += 1;
                self.delay(i, now + backoff);
            }
            Status::Malformed | Status::TooLarge | Status::Failed | Status::NoSpace => {
                self.complete(i, Some(status), phase, now)
            }
        }
    }

    /// Records the final answer of slot `i`'s operation and starts its next one.
    fn complete(&mut self, i: usize, status: Option<Status>, phase: &mut Phase, now: Instant) {
        let slot = &self.slots[i];
        let latency_us = slot
            .first_sent
            .map_or(0, |t| now.duration_since(t).as_micros() as u64)
            .max(1);
        let window = in_window(phase, now);
        for (counts, hist, record) in [
            (&mut self.interval, &mut self.interval_hist, true),
            (&mut self.window, &mut self.window_hist, window),
        ] {
            if !record {
                continue;
            }
            match status {
                Some(Status::Ok) => {
                    counts.ok += 1;
                    hist.saturating_record(latency_us);
                }
                Some(Status::NotFound) => {
                    counts.get_miss += 1;
                    hist.saturating_record(latency_us);
                }
                Some(s) => counts.count_error(s),
                None => {}
            }
        }
        if let Phase::Prefill { done, failed, .. } = phase {
            if status.is_some_and(Status::is_success) {
                *done += 1;
                self.prefill_unreported += 1;
            } else {
                *failed += 1;
            }
        }
        self.start_next(i, phase, now);
    }

    /// Sends interval statistics to the main thread.
    fn flush_interval(&mut self) {
        if self.prefill_unreported > 0 && self.cfg.prefill_keys.is_some() {
            let done = mem::take(&mut self.prefill_unreported);
            let _ = self.tx.send(Msg::PrefillProgress { done });
        }
        let stats = IntervalStats {
            counts: mem::take(&mut self.interval),
            hist: mem::replace(&mut self.interval_hist, new_histogram()),
        };
        let _ = self.tx.send(Msg::Interval(stats));
    }

    /// Sleeps in `poll` until a socket is readable (or writable, if sends are pending),
    /// a timer is due, or `until`, whichever is first; at most 1 ms.
    fn wait_idle(&mut self, until: Instant) {
        let now = Instant::now();
        let mut deadline = until;
        if let Some(Reverse((due, _, _))) = self.timers.peek() {
            deadline = deadline.min(*due);
        }
        if deadline <= now {
            return;
        }
        let pfds = &mut self.pollfds;
        pfds.clear();
        pfds.extend(
            self.fds
                .iter()
                .zip(&self.send_queues)
                .map(|(&fd, q)| libc::pollfd {
                    fd,
                    events: libc::POLLIN | if q.is_empty() { 0 } else { libc::POLLOUT },
                    revents: 0,
                }),
        );
        let wait = (deadline - now).min(Duration::from_millis(1));
        let ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: wait.as_nanos() as libc::c_long,
        };
        // SAFETY: `pfds` is a valid array of `pfds.len()` pollfds; `ts` is a valid timespec.
        unsafe {
            libc::ppoll(
                pfds.as_mut_ptr(),
                pfds.len() as libc::nfds_t,
                &ts,
                std::ptr::null(),
            );
        }
    }
}

/// Whether an event at `now` belongs to the measured window.
fn in_window(phase: &Phase, now: Instant) -> bool {
    match phase {
        Phase::Measure { warm_end, end } => now >= *warm_end && now < *end,
        Phase::Prefill { .. } => false,
    }
}

/// `addr` as a `sockaddr_storage` for `sendmmsg`.
fn sockaddr_of(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is a valid (AF_UNSPEC) value.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is large and aligned enough for any sockaddr.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::protocol::{Response, encode_response, parse_request};
    use std::net::UdpSocket;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn zipf_stays_in_range() {
        let mut rng = StdRng::seed_from_u64(1);
        for (n, theta) in [
            (1u64, 0.99),
            (2, 0.99),
            (3, 0.5),
            (10, 0.0),
            (1000, 1.0),
            (1000, 1.5),
            (u64::MAX / 2, 0.99),
        ] {
            let z = Zipf::new(n, theta);
            for _ in 0..20_000 {
                let k = z.sample(&mut rng);
                assert!((1..=n).contains(&k), "n={n} theta={theta} k={k}");
            }
        }
    }

    #[test]
    fn zipf_matches_its_probability_mass() {
        let mut rng = StdRng::seed_from_u64(7);
        let (n, theta) = (50u64, 0.99);
        let z = Zipf::new(n, theta);
        let draws = 400_000;
        let mut counts = vec![0u64; n as usize + 1];
        for _ in 0..draws {
            counts[z.sample(&mut rng) as usize] += 1;
        }
        let norm: f64 = (1..=n).map(|k| (k as f64).powf(-theta)).sum();
        for k in [1u64, 2, 3, 5, 10, 25, 50] {
            let expected = draws as f64 * (k as f64).powf(-theta) / norm;
            let got = counts[k as usize] as f64;
            // Within 5 standard deviations of the binomial count.
            let sd = expected.sqrt();
            assert!(
                (got - expected).abs() < 5.0 * sd + 1.0,
                "k={k} got={got} expected={expected:.0}"
            );
        }
    }

    #[test]
    fn zipf_is_skewed_and_zero_theta_is_uniform() {
        let mut rng = StdRng::seed_from_u64(3);
        let z = Zipf::new(1_000_000, 0.99);
        let draws = 200_000;
        let hot = (0..draws).filter(|_| z.sample(&mut rng) <= 10).count();
        // The 10 hottest of a million keys take well over 10% of the draws.
        assert!(hot as f64 / draws as f64 > 0.10, "hot share {hot}");

        let u = Zipf::new(10, 0.0);
        let mut counts = [0u32; 11];
        for _ in 0..100_000 {
            counts[u.sample(&mut rng) as usize] += 1;
        }
        for c in &counts[1..] {
            assert!((9_000..11_000).contains(c), "{counts:?}");
        }
    }

    #[test]
    fn key_sampler_covers_range_and_scatter_is_a_bijection() {
        for n in [1u64, 2, 7, 1000, 1024] {
            let s = Scatter::new(n);
            let mut seen: Vec<u64> = (0..n).map(|r| s.apply(r)).collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..n).collect::<Vec<_>>(), "n={n}");
        }
        let mut rng = StdRng::seed_from_u64(5);
        for dist in [KeyDist::Uniform, KeyDist::Zipfian] {
            let ks = KeySampler::new(dist, 100, 0.99);
            for _ in 0..10_000 {
                assert!(ks.sample(&mut rng) < 100);
            }
        }
    }

    #[test]
    fn key_names_have_ten_digits() {
        let mut b = [0u8; KEY_NAME_LEN];
        assert_eq!(key_name(0, &mut b), "key:0000000000");
        assert_eq!(key_name(42, &mut b), format!("key:{:010}", 42));
        assert_eq!(key_name(MAX_KEYS - 1, &mut b), "key:9999999999");
    }

    #[test]
    fn argument_validation() {
        assert!(BenchArgs::default().validate().is_ok());
        let bad = [
            BenchArgs {
                keys: 0,
                ..BenchArgs::default()
            },
            BenchArgs {
                value_size: MAX_VALUE_SIZE + 1,
                ..BenchArgs::default()
            },
            BenchArgs {
                read_ratio: 1.5,
                ..BenchArgs::default()
            },
            BenchArgs {
                concurrency: 0,
                ..BenchArgs::default()
            },
            BenchArgs {
                duration: 0.0,
                ..BenchArgs::default()
            },
            BenchArgs {
                zipf_theta: -1.0,
                ..BenchArgs::default()
            },
        ];
        for args in bad {
            assert!(args.validate().is_err(), "{args:?}");
        }
    }

    fn sample_report() -> Report {
        Report {
            workload: Workload::Mixed,
            read_ratio: 0.9,
            value_size: 100,
            keys: 1000,
            key_dist: KeyDist::Zipfian,
            concurrency: 64,
            threads: 2,
            duration_s: 2.0,
            ops: 300,
            ok: 250,
            get_miss: 50,
            errors: 3,
            errors_by_status: vec![(Status::Failed, 1), (Status::NoSpace, 2)],
            timeouts: 4,
            busy: 5,
            redirects: 6,
            cookie_retries: 7,
            ops_per_sec: 150.0,
            p50_us: 10,
            p90_us: 20,
            p99_us: 30,
            p999_us: 40,
            max_us: 50,
            prefill: Some(PrefillReport {
                keys: 1000,
                failed: 0,
                seconds: 0.5,
            }),
        }
    }

    #[test]
    fn json_report_has_the_documented_fields() {
        let json = sample_report().to_json();
        for field in [
            "\"ops_per_sec\":150.000",
            "\"p50_us\":10",
            "\"p90_us\":20",
            "\"p99_us\":30",
            "\"p999_us\":40",
            "\"max_us\":50",
            "\"errors\":3",
            "\"timeouts\":4",
            "\"ops\":300",
            "\"duration_s\":2.000",
            "\"workload\":\"mixed\"",
            "\"value_size\":100",
            "\"concurrency\":64",
            "\"errors_by_status\":{\"Failed\":1,\"NoSpace\":2}",
            "\"sets_per_sec\":2000.000",
        ] {
            assert!(json.contains(field), "{field} missing from {json}");
        }
        assert!(json.starts_with('{') && json.ends_with('}') && !json.contains('\n'));
        let opens = json.matches('{').count();
        assert_eq!(opens, json.matches('}').count());
        let none = Report {
            prefill: None,
            errors_by_status: vec![],
            ..sample_report()
        };
        assert!(none.to_json().contains("\"prefill\":null"));
        assert!(none.to_json().contains("\"errors_by_status\":{}"));
    }

    #[test]
    fn text_report_lists_percentiles_and_errors() {
        let text = sample_report().to_string();
        assert!(text.contains("150 ops/s"), "{text}");
        assert!(
            text.contains("p50 10  p90 20  p99 30  p99.9 40  max 50"),
            "{text}"
        );
        assert!(
            text.contains("errors        3 (Failed 1, NoSpace 2)"),
            "{text}"
        );
        assert!(text.contains("timeouts      4"), "{text}");
        assert!(text.contains("get-miss      50"), "{text}");
        assert!(text.contains("prefill       1000 keys"), "{text}");
        assert_eq!(sample_report().render(true), sample_report().to_json());
    }

    /// A tiny in-process server: demands a cookie once per address, answers Busy to
    /// every 10th request, and otherwise stores and serves values.
    fn toy_server(stop: Arc<AtomicBool>) -> (SocketAddr, thread::JoinHandle<u64>) {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let handle = thread::spawn(move || {
            let secret = [9u8; 16];
            let mut store = std::collections::HashMap::<String, Vec<u8>>::new();
            let mut buf = [0u8; 2048];
            let mut out = Vec::new();
            let mut served = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let Ok(req) = parse_request(&buf[..n]) else {
                    continue;
                };
                served += 1;
                let cookie = protocol::cookie_for(&secret, &from);
                let to = req.addressing();
                let value;
                let resp = if req.cookie != cookie {
                    Response::cookie_required(&to, cookie)
                } else if served.is_multiple_of(10) {
                    Response::reply(&to, Status::Busy, cookie, &[])
                } else {
                    match req.op {
                        Op::Set => {
                            store.insert(req.key.to_string(), req.value.to_vec());
                            Response::reply(&to, Status::Ok, cookie, &[])
                        }
                        Op::Get => match store.get(req.key) {
                            Some(v) => {
                                value = v.clone();
                                Response::reply(&to, Status::Ok, cookie, &value)
                            }
                            None => Response::reply(&to, Status::NotFound, cookie, &[]),
                        },
                        _ => Response::reply(&to, Status::Ok, cookie, &[]),
                    }
                };
                out.clear();
                encode_response(&resp, &mut out);
                let _ = sock.send_to(&out, from);
            }
            served
        });
        (addr, handle)
    }

    #[test]
    fn end_to_end_against_a_toy_server() {
        let stop = Arc::new(AtomicBool::new(false));
        let (addr, server) = toy_server(stop.clone());
        let args = BenchArgs {
            server: addr.to_string(),
            workload: Workload::Mixed,
            read_ratio: 0.5,
            keys: 200,
            key_dist: KeyDist::Zipfian,
            concurrency: 16,
            threads: 2,
            sockets: 2,
            duration: 0.5,
            warmup: 0.1,
            timeout_ms: 500,
            prefill: true,
            ..BenchArgs::default()
        };
        let report = run(&args).unwrap();
        stop.store(true, Ordering::Relaxed);
        server.join().unwrap();
        let prefill = report.prefill.clone().unwrap();
        assert_eq!(prefill.keys, 200);
        assert_eq!(prefill.failed, 0);
        assert!(report.ops > 0, "{report}");
        assert_eq!(report.get_miss, 0, "prefilled keys must hit: {report}");
        assert_eq!(report.errors, 0, "{report}");
        assert!(report.busy > 0, "{report}");
        assert!(
            report.p50_us > 0 && report.p50_us <= report.max_us,
            "{report}"
        );
        assert_eq!(report.ops, report.ok + report.get_miss);

        // Without prefill or warmup, the cookie exchange falls inside the window.
        let stop = Arc::new(AtomicBool::new(false));
        let (addr, server) = toy_server(stop.clone());
        let args = BenchArgs {
            server: addr.to_string(),
            prefill: false,
            warmup: 0.0,
            ..args
        };
        let report = run(&args).unwrap();
        stop.store(true, Ordering::Relaxed);
        server.join().unwrap();
        assert!(report.cookie_retries >= 4, "one per socket: {report}");
        assert!(report.ops > 0 && report.errors == 0, "{report}");
    }

    #[test]
    fn not_leader_redirects_move_the_load_to_the_leader() {
        let stop = Arc::new(AtomicBool::new(false));
        let (leader, leader_srv) = toy_server(stop.clone());
        let follower = UdpSocket::bind("127.0.0.1:0").unwrap();
        follower
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let follower_addr = follower.local_addr().unwrap();
        let stop_f = stop.clone();
        let follower_srv = thread::spawn(move || {
            let hint = leader.to_string();
            let mut buf = [0u8; 2048];
            let mut out = Vec::new();
            let mut answered = 0u64;
            while !stop_f.load(Ordering::Relaxed) {
                let Ok((n, from)) = follower.recv_from(&mut buf) else {
                    continue;
                };
                let Ok(req) = parse_request(&buf[..n]) else {
                    continue;
                };
                let resp =
                    Response::reply(&req.addressing(), Status::NotLeader, 0, hint.as_bytes());
                out.clear();
                encode_response(&resp, &mut out);
                let _ = follower.send_to(&out, from);
                answered += 1;
            }
            answered
        });
        let args = BenchArgs {
            server: follower_addr.to_string(),
            workload: Workload::Set,
            concurrency: 8,
            duration: 0.3,
            warmup: 0.0,
            timeout_ms: 300,
            ..BenchArgs::default()
        };
        let report = run(&args).unwrap();
        stop.store(true, Ordering::Relaxed);
        assert!(leader_srv.join().unwrap() > 0);
        assert!(follower_srv.join().unwrap() >= 1);
        assert!(
            report.redirects >= 1 && report.ops > 0 && report.errors == 0,
            "{report}"
        );
    }

    #[test]
    fn silent_server_yields_timeouts_and_stops_on_time() {
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let args = BenchArgs {
            server: silent.local_addr().unwrap().to_string(),
            concurrency: 8,
            duration: 0.4,
            warmup: 0.0,
            timeout_ms: 100,
            ..BenchArgs::default()
        };
        let began = Instant::now();
        let report = run(&args).unwrap();
        assert!(began.elapsed() < Duration::from_secs(3));
        assert_eq!(report.ops, 0);
        assert!(report.timeouts >= 8, "{report}");
    }
}
