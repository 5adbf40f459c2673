//! Latency of every single SET while the map grows from empty to N keys, then the cost of
//! checkpointing all of it.
//!
//! Each `map.set` is timed on its own with `Instant`, so the splits and directory
//! doublings that online growth spreads over the load show up as individual slow
//! operations rather than being averaged away. Key hashes are computed outside the timed
//! region.
//!
//! Environment:
//! - `GROWTH_KEYS`: keys to load (default 10,000,000);
//! - `GROWTH_VALUE_BYTES`: value length (default 32, short enough to be stored inline
//!   when the page has a free inline slot; above 63 every value is a log reference).
//!
//! Run: `cargo bench --bench growth` (or `GROWTH_KEYS=100000 cargo bench --bench growth`)

use hdrhistogram::Histogram;
use ocean_liner::ids::{LogIndex, Term};
use ocean_liner::storage::io::uring::UringBackend;
use ocean_liner::storage::store::Map;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// Stand-in distance between the log offsets of consecutive keys' SET commands.
const OFFSET_STRIDE: u64 = 256;
const SLOWEST: usize = 10;
/// Bucket pages per chunk of the map's page arena (2 MiB chunks).
const PAGES_PER_CHUNK: usize = 512;

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .replace('_', "")
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a whole number, not {v:?}")),
        Err(_) => default,
    }
}

/// Resident set size of this process, in MiB.
fn rss_mib() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0.0);
    pages * 4096.0 / (1024.0 * 1024.0)
}

/// The process's peak resident memory since the last [`reset_peak_rss`], in MiB.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Starts a new peak-memory measurement (Linux: writing 5 to clear_refs resets VmHWM).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn main() {
    // `cargo bench` passes `--bench`; nothing here takes arguments.
    let keys = env_u64("GROWTH_KEYS", 10_000_000);
    let value_len = env_u64("GROWTH_VALUE_BYTES", 32) as usize;
    let value = vec![0x5Au8; value_len];

    std::fs::create_dir_all("/var/tmp").expect("create /var/tmp");
    let dir = tempfile::Builder::new()
        .prefix("ol-bench-growth-")
        .tempdir_in("/var/tmp")
        .expect("temp dir under /var/tmp");
    let (map, _) = Map::open(&UringBackend, dir.path()).expect("open map");
    println!(
        "loading {keys} keys ({value_len}-byte values) into an empty map in {}",
        dir.path().display()
    );

    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("histogram");
    // The same latencies split by whether the set had to split a page.
    let mut hist_split = hist.clone();
    let mut hist_plain = hist.clone();
    // The slowest operations so far, as a min-heap of (nanoseconds, key index, pages
    // before, pages after).
    let mut slowest: BinaryHeap<Reverse<(u64, u64, usize, usize)>> =
        BinaryHeap::with_capacity(SLOWEST + 1);
    let mut in_set = Duration::ZERO;
    let progress_every = (keys / 10).max(1);
    let mut pages = map.page_count();
    let started = Instant::now();
    for i in 0..keys {
        let hash = map.key_hash(format!("key:{i:012}").as_bytes());
        let t = Instant::now();
        map.set(hash, i * OFFSET_STRIDE, &value);
        let took = t.elapsed();
        in_set += took;
        let pages_after = map.page_count();
        let ns = (took.as_nanos() as u64).max(1);
        hist.saturating_record(ns);
        if pages_after != pages {
            hist_split.saturating_record(ns);
        } else {
            hist_plain.saturating_record(ns);
        }
        if slowest.len() < SLOWEST || ns > slowest.peek().unwrap().0.0 {
            slowest.push(Reverse((ns, i, pages, pages_after)));
            if slowest.len() > SLOWEST {
                slowest.pop();
            }
        }
        pages = pages_after;
        if (i + 1) % progress_every == 0 {
            println!(
                "  {:>11} keys  {:>8} pages  {:7.1} s  rss {:8.0} MiB",
                i + 1,
                pages,
                started.elapsed().as_secs_f64(),
                rss_mib()
            );
        }
    }
    let wall = started.elapsed();
    assert_eq!(map.entry_count(), keys);

    let us = |ns: u64| ns as f64 / 1000.0;
    println!();
    println!("set latency (each call timed alone), µs:");
    println!(
        "  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  p99.99 {:.3}  max {:.1}  mean {:.3}",
        us(hist.value_at_quantile(0.50)),
        us(hist.value_at_quantile(0.90)),
        us(hist.value_at_quantile(0.99)),
        us(hist.value_at_quantile(0.999)),
        us(hist.value_at_quantile(0.9999)),
        us(hist.max()),
        hist.mean() / 1000.0
    );
    for (label, h) in [("with a page split", &hist_split), ("without", &hist_plain)] {
        println!(
            "  sets {label}: {} calls, p50 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.1}",
            h.len(),
            us(h.value_at_quantile(0.50)),
            us(h.value_at_quantile(0.99)),
            us(h.value_at_quantile(0.999)),
            us(h.max()),
        );
    }
    let page_count = map.page_count();
    println!(
        "pages {page_count} ({:.1} keys/page, {:.0} MiB of pages), rss {:.0} MiB",
        keys as f64 / page_count as f64,
        page_count as f64 * 4096.0 / (1024.0 * 1024.0),
        rss_mib()
    );
    println!(
        "slowest {SLOWEST} sets (a page split shows as pages a -> b; the page arena \
         grows by a 2 MiB chunk every {PAGES_PER_CHUNK} pages):"
    );
    let mut slowest: Vec<_> = slowest.into_iter().map(|Reverse(s)| s).collect();
    slowest.sort_unstable_by(|a, b| b.cmp(a));
    for (ns, i, before, after) in &slowest {
        let what = if after == before {
            "no split".to_string()
        } else if after.div_ceil(PAGES_PER_CHUNK) != before.div_ceil(PAGES_PER_CHUNK) {
            format!("split, pages {before} -> {after}, new arena chunk")
        } else {
            format!("split, pages {before} -> {after}")
        };
        println!("  {:>10.1} µs at key index {i:>9}  ({what})", us(*ns));
    }
    println!(
        "throughput: {:.0} keys/s counting only set calls, {:.0} keys/s wall clock \
         (including key hashing and timing), {:.2} s total",
        keys as f64 / in_set.as_secs_f64(),
        keys as f64 / wall.as_secs_f64(),
        wall.as_secs_f64()
    );

    let dirty = map.dirty_page_count();
    let rss_before = rss_mib();
    reset_peak_rss();
    let t = Instant::now();
    map.checkpoint(LogIndex(1), Term(1), &[])
        .expect("checkpoint");
    let took = t.elapsed();
    let peak = peak_rss_mib();
    println!(
        "checkpoint memory: rss {rss_before:.0} MiB before, peak {peak:.0} MiB during \
         (+{:.0} MiB for {:.0} MiB of dirty pages)",
        peak - rss_before,
        dirty as f64 * 4096.0 / (1024.0 * 1024.0)
    );
    let meta = map.meta();
    println!(
        "checkpoint: {dirty} dirty pages ({:.0} MiB) in {:.3} s; global depth {} \
         ({} directory doublings), rss after {:.0} MiB",
        dirty as f64 * 4096.0 / (1024.0 * 1024.0),
        took.as_secs_f64(),
        meta.global_depth,
        meta.global_depth,
        rss_mib()
    );
}
