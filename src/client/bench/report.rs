//! What the load tool measures and prints: per-interval progress, HDR histograms of
//! latency, the prefill and final reports (text and `--json`).

use super::*;

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
    pub values: Values,
    pub keys: u64,
    pub key_dist: KeyDist,
    pub protocol: Protocol,
    /// Commands in flight per RESP connection (1 over UDP).
    pub pipeline: usize,
    pub concurrency: usize,
    /// Open loop: the offered operations per second (`--rate`).
    pub rate: Option<f64>,
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
    /// Each second of the measured window: (second since the start, operations
    /// answered in it, their p99 in µs).
    pub timeline: Vec<(u64, u64, u64)>,
    /// The latency distribution of the measured window: (quantile, µs) at
    /// [`CDF_QUANTILES`].
    pub latency_cdf: Vec<(f64, u64)>,
}

/// Where the report's latency distribution is sampled.
pub const CDF_QUANTILES: [f64; 16] = [
    0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9995, 0.9999, 0.99999,
    0.999999, 1.0,
];

impl Report {
    /// The report as one JSON object on one line.
    pub fn to_json(&self) -> String {
        let mut s = String::with_capacity(512);
        s.push('{');
        let _ = write!(s, "\"workload\":\"{}\"", self.workload.name());
        let _ = write!(s, ",\"read_ratio\":{}", json_f64(self.read_ratio));
        let _ = write!(s, ",\"value_size\":{}", self.value_size);
        let _ = write!(s, ",\"values\":\"{}\"", self.values.name());
        let _ = write!(s, ",\"keys\":{}", self.keys);
        let _ = write!(s, ",\"key_dist\":\"{}\"", self.key_dist.name());
        let _ = write!(s, ",\"protocol\":\"{}\"", self.protocol.name());
        let _ = write!(s, ",\"pipeline\":{}", self.pipeline);
        let _ = write!(s, ",\"concurrency\":{}", self.concurrency);
        match self.rate {
            Some(r) => {
                let _ = write!(s, ",\"rate\":{}", json_f64(r));
            }
            None => s.push_str(",\"rate\":null"),
        }
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
        s.push_str(",\"timeline\":[");
        for (i, (t, ops, p99)) in self.timeline.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            let _ = write!(s, "{sep}[{t},{ops},{p99}]");
        }
        s.push_str("],\"latency_cdf\":[");
        for (i, (q, us)) in self.latency_cdf.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            let _ = write!(s, "{sep}[{},{us}]", json_f64(*q));
        }
        s.push(']');
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
pub(super) fn json_f64(v: f64) -> String {
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
            "workload      {mix}, {} B {}values, {} {} keys, concurrency {} on {} thread(s), {}",
            self.value_size,
            match self.values {
                Values::Repeated => "",
                Values::Random => "random ",
            },
            self.keys,
            self.key_dist.name(),
            self.concurrency,
            self.threads,
            match self.protocol {
                Protocol::Udp if self.pipeline > 1 => format!("UDP, batch {}", self.pipeline),
                Protocol::Udp => "UDP".to_string(),
                Protocol::Resp => format!("RESP, pipeline {}", self.pipeline),
                Protocol::Memcache => format!("memcached UDP, {} per datagram", self.pipeline),
            }
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
        if let Some(rate) = self.rate {
            writeln!(
                f,
                "open loop     {rate:.0} ops/s offered, latency from each operation's due time"
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

/// Aggregates worker statistics on the main thread.
pub(super) struct Progress {
    pub(super) interval: Counts,
    pub(super) interval_hist: Histogram<u64>,
    pub(super) total: Counts,
    pub(super) total_hist: Histogram<u64>,
    pub(super) threads: usize,
    /// The measured seconds so far (see [`Report::timeline`]).
    pub(super) timeline: Vec<(u64, u64, u64)>,
}

impl Progress {
    pub(super) fn new(threads: usize) -> Self {
        Progress {
            interval: Counts::default(),
            interval_hist: new_histogram(),
            total: Counts::default(),
            total_hist: new_histogram(),
            threads,
            timeline: Vec::new(),
        }
    }

    pub(super) fn add_interval(&mut self, stats: IntervalStats) {
        self.interval.add(&stats.counts);
        // Both histograms share bounds, so adding cannot fail.
        let _ = self.interval_hist.add(&stats.hist);
    }

    pub(super) fn add_final(&mut self, stats: FinalStats) {
        self.total.add(&stats.counts);
        let _ = self.total_hist.add(&stats.hist);
    }

    /// The progress line for the second ending at `secs`, then resets the interval.
    pub(super) fn tick_line(&mut self, secs: u64, warmup: bool) -> String {
        let c = &self.interval;
        let p99 = if self.interval_hist.is_empty() {
            0
        } else {
            self.interval_hist.value_at_quantile(0.99)
        };
        if !warmup {
            self.timeline.push((secs, c.ok + c.get_miss, p99));
        }
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

    pub(super) fn into_report(
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
            values: args.values,
            keys: args.keys,
            key_dist: args.key_dist,
            protocol: args.protocol,
            pipeline: args.pipeline,
            concurrency: args.concurrency,
            rate: args.rate,
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
            latency_cdf: CDF_QUANTILES.iter().map(|&p| (p, q(p))).collect(),
            timeline: self.timeline,
        }
    }
}

pub(super) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("valid histogram bounds")
}

/// Event counters, one set per reporting scope.
#[derive(Debug, Clone, Default)]
pub(super) struct Counts {
    pub(super) ok: u64,
    pub(super) get_miss: u64,
    /// Final error answers, indexed like [`Status::ALL`].
    pub(super) errors: [u64; Status::ALL.len()],
    pub(super) timeouts: u64,
    pub(super) busy: u64,
    pub(super) redirects: u64,
    pub(super) cookie_retries: u64,
}

impl Counts {
    pub(super) fn add(&mut self, o: &Counts) {
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

    pub(super) fn errors(&self) -> u64 {
        self.errors.iter().sum()
    }

    pub(super) fn count_error(&mut self, status: Status) {
        if let Some(i) = Status::ALL.iter().position(|s| *s == status) {
            self.errors[i] += 1;
        }
    }
}

pub(super) struct IntervalStats {
    pub(super) counts: Counts,
    pub(super) hist: Histogram<u64>,
}

pub(super) struct FinalStats {
    pub(super) counts: Counts,
    pub(super) hist: Histogram<u64>,
}

pub(super) enum Msg {
    PrefillProgress { done: u64 },
    PrefillDone { done: u64, failed: u64 },
    Interval(IntervalStats),
    Done(Box<FinalStats>),
    Failed(String),
}

/// What one load thread counts, whatever it speaks: the measured window's statistics,
/// those since its last report to the main thread, and the prefilled keys not yet
/// reported.
pub(super) struct Tally {
    window: Counts,
    window_hist: Histogram<u64>,
    interval: Counts,
    interval_hist: Histogram<u64>,
    prefill_unreported: u64,
}

impl Tally {
    pub(super) fn new() -> Tally {
        Tally {
            window: Counts::default(),
            window_hist: new_histogram(),
            interval: Counts::default(),
            interval_hist: new_histogram(),
            prefill_unreported: 0,
        }
    }

    /// Adds one to a counter of the interval, and of the window when `in_window`.
    pub(super) fn bump(&mut self, in_window: bool, field: fn(&mut Counts) -> &mut u64) {
        *field(&mut self.interval) += 1;
        if in_window {
            *field(&mut self.window) += 1;
        }
    }

    /// One operation's final answer (`None`: given up on, counted elsewhere) and its
    /// latency; in the prefill, whether its key is in.
    pub(super) fn answer(
        &mut self,
        status: Option<Status>,
        latency_us: u64,
        phase: &mut Phase,
        now: Instant,
    ) {
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
    }

    /// Sends the interval's statistics (and prefill progress) to the main thread.
    pub(super) fn flush(&mut self, tx: &Sender<Msg>, prefilling: bool) {
        if self.prefill_unreported > 0 && prefilling {
            let done = mem::take(&mut self.prefill_unreported);
            let _ = tx.send(Msg::PrefillProgress { done });
        }
        let stats = IntervalStats {
            counts: mem::take(&mut self.interval),
            hist: mem::replace(&mut self.interval_hist, new_histogram()),
        };
        let _ = tx.send(Msg::Interval(stats));
    }
}

/// A load thread's protocol side: the phases run the same way over it.
pub(super) trait LoadThread {
    fn config(&self) -> &WorkerConfig;
    fn tally(&mut self) -> &mut Tally;
    fn tx(&self) -> &Sender<Msg>;
    /// Runs `phase` to its end (prefill: every key tried; measurement: its end time).
    fn run_phase(&mut self, phase: &mut Phase) -> anyhow::Result<()>;
}

/// Prefill (when asked), then, once the main thread says start, warm-up and measurement;
/// reports progress and the final statistics to the main thread.
pub(super) fn drive(t: &mut impl LoadThread, start_rx: Receiver<Instant>) -> anyhow::Result<()> {
    if let Some(share) = t.config().prefill_keys {
        let mut phase = Phase::Prefill {
            next: share.first,
            share,
            retry: Vec::new(),
            done: 0,
            failed: 0,
        };
        t.run_phase(&mut phase)?;
        let Phase::Prefill { done, failed, .. } = phase else {
            unreachable!()
        };
        debug_assert!(done + failed >= share.end.saturating_sub(share.first) / share.step);
        let unreported = mem::take(&mut t.tally().prefill_unreported);
        let _ = t.tx().send(Msg::PrefillDone {
            done: unreported,
            failed,
        });
        // Prefill traffic is not part of the first measured second.
        let tally = t.tally();
        tally.interval = Counts::default();
        tally.interval_hist.reset();
    }
    let Ok(start) = start_rx.recv() else {
        // The coordinator gave up (another thread failed); nothing to measure.
        return Ok(());
    };
    let warm_end = start + t.config().warmup;
    let mut phase = Phase::Measure {
        warm_end,
        end: warm_end + t.config().duration,
    };
    t.run_phase(&mut phase)?;
    let tx = t.tx().clone();
    let tally = t.tally();
    tally.flush(&tx, false);
    let stats = FinalStats {
        counts: mem::take(&mut tally.window),
        hist: mem::replace(&mut tally.window_hist, new_histogram()),
    };
    let _ = tx.send(Msg::Done(Box::new(stats)));
    Ok(())
}
