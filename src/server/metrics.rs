//! The HTTP endpoint of `--metrics-addr`: `/metrics` in Prometheus's text format,
//! `/livez` and `/readyz`.
//!
//! It listens from the start of the process, before recovery: while the node recovers,
//! `/livez` answers 200, `/readyz` 503 and `/metrics` only `ocean_liner_up` and
//! `ocean_liner_ready`. Once the node serves, `/readyz` answers 200 when a single node has
//! recovered, and in a cluster when a leader is known and this node has applied its log to
//! within [`READY_LAG_ENTRIES`] of the commit index the leader told it — so a load
//! balancer sends clients only to nodes that can answer them now.
//!
//! Names follow Prometheus's conventions: a unit suffix (`_seconds`, `_bytes`), `_total`
//! on counters, histograms as cumulative `_bucket{le=…}` series with `_sum` and `_count`.

use super::Shared;
use crate::ids::NodeId;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// A node is ready while its applied index trails the known commit index by at most this.
pub const READY_LAG_ENTRIES: u64 = 1000;

/// Upper bounds of the latency buckets, in microseconds (the last bucket is +Inf).
const BUCKETS_US: [u64; 18] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000, 30_000_000,
];

/// A latency histogram any thread records into: one counter per bucket, a sum, a count.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    /// Records `n` observations of `d`.
    pub fn observe_n(&self, d: Duration, n: u64) {
        if n == 0 {
            return;
        }
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        let i = BUCKETS_US.partition_point(|&b| b < us);
        self.buckets[i].fetch_add(n, Ordering::Relaxed);
        self.sum_us
            .fetch_add(us.saturating_mul(n), Ordering::Relaxed);
        self.count.fetch_add(n, Ordering::Relaxed);
    }

    pub fn observe(&self, d: Duration) {
        self.observe_n(d, 1);
    }

    /// Each bucket's count (not cumulative), the last one past the largest bound.
    pub fn counts(&self) -> Vec<u64> {
        self.buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect()
    }
}

/// The buckets' upper bounds in µs (the last bucket, past them, has none).
pub fn bucket_bounds_us() -> &'static [u64] {
    &BUCKETS_US
}

impl Histogram {
    /// Appends the histogram as `name` (in seconds) with `labels` (`key="value",…`).
    fn render(&self, out: &mut String, name: &str, labels: &str, help: &str, header: bool) {
        if header {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} histogram");
        }
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            cumulative += b.load(Ordering::Relaxed);
            let le = BUCKETS_US
                .get(i)
                .map_or("+Inf".to_string(), |us| format!("{}", *us as f64 / 1e6));
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
        }
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(
            out,
            "{name}_count{braces} {}",
            self.count.load(Ordering::Relaxed)
        );
    }
}

/// What the endpoint reads: nothing until the node has recovered, then its shared state.
pub type Node = Arc<OnceLock<Arc<Shared>>>;

/// Serves `/metrics`, `/livez` and `/readyz` on `addr` on a thread of its own, for the
/// life of the process.
pub fn start(addr: SocketAddr, node: Node) -> anyhow::Result<()> {
    let server = tiny_http::Server::http(addr).map_err(|e| {
        anyhow::anyhow!(
            "cannot serve metrics on {addr}: {e} (another process holds the port: stop it, or choose another --metrics-addr)"
        )
    })?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                let shared = node.get();
                let (status, body, kind) = answer(request.url(), shared.map(|s| &**s));
                let header = tiny_http::Header::from_bytes(&b"Content-Type"[..], kind.as_bytes())
                    .expect("a static header is valid");
                let response = tiny_http::Response::from_string(body)
                    .with_status_code(status)
                    .with_header(header);
                let _ = request.respond(response);
            }
        })?;
    Ok(())
}

const TEXT: &str = "text/plain; charset=utf-8";
const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Status, body and content type for a request of `url`.
fn answer(url: &str, shared: Option<&Shared>) -> (u16, String, &'static str) {
    let path = url.split('?').next().unwrap_or_default();
    match path {
        "/livez" => (200, "ok\n".into(), TEXT),
        "/readyz" => match readiness(shared) {
            Ok(()) => (200, "ready\n".into(), TEXT),
            Err(why) => (503, format!("not ready: {why}\n"), TEXT),
        },
        "/metrics" => (200, render(shared), PROMETHEUS),
        _ => (
            404,
            "not found: try /metrics, /livez or /readyz\n".into(),
            TEXT,
        ),
    }
}

/// Whether the node can serve clients now, or why not.
pub fn readiness(shared: Option<&Shared>) -> Result<(), String> {
    let Some(s) = shared else {
        return Err("recovering".into());
    };
    if s.stop.load(Ordering::Acquire) {
        return Err("stopping".into());
    }
    if s.cluster_size.load(Ordering::Relaxed) <= 1 {
        return Ok(());
    }
    if NodeId::from_raft_id(s.leader_id.load(Ordering::Acquire)).is_none() {
        return Err("no leader is known".into());
    }
    let commit = s.stats.commit_index.load(Ordering::Relaxed);
    let applied = s.stats.applied_index.load(Ordering::Relaxed);
    let lag = commit.saturating_sub(applied);
    if lag > READY_LAG_ENTRIES {
        return Err(format!(
            "applied index {applied} is {lag} entries behind the commit index {commit}"
        ));
    }
    Ok(())
}

/// The Prometheus text of the node's state.
pub fn render(shared: Option<&Shared>) -> String {
    let mut out = String::with_capacity(8 << 10);
    let mut m = |name: &str, kind: &str, help: &str, value: f64| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "{name} {value}");
    };
    m("ocean_liner_up", "gauge", "1 while the process runs.", 1.0);
    m(
        "ocean_liner_ready",
        "gauge",
        "1 when /readyz would answer 200.",
        readiness(shared).is_ok() as u8 as f64,
    );
    let Some(s) = shared else {
        return out;
    };
    let st = &s.stats;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
    let space = s.segments.space();
    let (cache_bytes, cache_values, (hits, misses)) = {
        let c = s.value_cache.lock().unwrap_or_else(|e| e.into_inner());
        (c.memory_bytes(), c.len(), c.hits_and_misses())
    };
    let is_leader = s.is_leader.load(Ordering::Relaxed);
    let has_leader = NodeId::from_raft_id(s.leader_id.load(Ordering::Relaxed)).is_some();
    m(
        "ocean_liner_is_leader",
        "gauge",
        "1 on the leader.",
        is_leader as u8 as f64,
    );
    m(
        "ocean_liner_has_leader",
        "gauge",
        "1 while a leader is known.",
        has_leader as u8 as f64,
    );
    m(
        "ocean_liner_cluster_nodes",
        "gauge",
        "Voters in the cluster.",
        s.cluster_size.load(Ordering::Relaxed) as f64,
    );
    m(
        "ocean_liner_term",
        "gauge",
        "Current Raft term.",
        get(&st.term),
    );
    m(
        "ocean_liner_leader_changes_total",
        "counter",
        "Times this node saw the leader change.",
        get(&st.leader_changes),
    );
    m(
        "ocean_liner_commit_index",
        "gauge",
        "Highest log index known committed.",
        get(&st.commit_index),
    );
    m(
        "ocean_liner_applied_index",
        "gauge",
        "Highest log index applied to the map.",
        get(&st.applied_index),
    );
    m(
        "ocean_liner_first_log_index",
        "gauge",
        "First index the Raft log still holds.",
        get(&st.first_log_index),
    );
    m(
        "ocean_liner_entries_applied_total",
        "counter",
        "Entries (sealed windows) this node proposed as leader that applied.",
        get(&st.entries_written),
    );
    m(
        "ocean_liner_commands_applied_total",
        "counter",
        "Write commands of the entries this node proposed as leader that applied.",
        get(&st.commands_applied),
    );
    m(
        "ocean_liner_sets_dropped_total",
        "counter",
        "SETs this node as leader logged as NOPs because a later SET of the same entry overwrote them.",
        get(&st.sets_dropped),
    );
    m(
        "ocean_liner_last_entry_commands",
        "gauge",
        "Commands in the last applied entry (the window's fill).",
        get(&st.last_entry_commands),
    );
    m(
        "ocean_liner_window_failures_total",
        "counter",
        "Windows whose writes failed (disk full or failed).",
        get(&st.write_errors),
    );
    m(
        "ocean_liner_batch_window_seconds",
        "gauge",
        "The batch window (--batch-window-ms).",
        s.batch_window_ms as f64 / 1e3,
    );
    m(
        "ocean_liner_udp_requests_total",
        "counter",
        "UDP requests received by the shards (a BATCH datagram counts its items).",
        get(&st.requests),
    );
    m(
        "ocean_liner_udp_batches_total",
        "counter",
        "UDP BATCH datagrams received by the shards.",
        get(&st.batches),
    );
    m(
        "ocean_liner_gets_total",
        "counter",
        "GETs served (UDP and RESP).",
        get(&st.gets),
    );
    m(
        "ocean_liner_rejected_total",
        "counter",
        "Requests refused as malformed or too large.",
        get(&st.rejected),
    );
    m(
        "ocean_liner_dropped_total",
        "counter",
        "Datagrams dropped unanswered.",
        get(&st.dropped),
    );
    m(
        "ocean_liner_busy_total",
        "counter",
        "Requests answered busy (a window or read queue full).",
        get(&st.busy),
    );
    m(
        "ocean_liner_hash_collisions_total",
        "counter",
        "GETs whose key hash the map held for another key.",
        get(&st.hash_collisions),
    );
    m(
        "ocean_liner_election_timeout_seconds",
        "gauge",
        "The adaptive election timeout's lower end.",
        get(&st.election_timeout_ms) / 1e3,
    );
    m(
        "ocean_liner_peer_rtt_seconds",
        "gauge",
        "Estimated round trip to the peers (transport pings).",
        get(&st.rtt_us) / 1e6,
    );
    m(
        "ocean_liner_peer_rtt_deviation_seconds",
        "gauge",
        "Deviation of the round-trip estimate.",
        get(&st.rtt_dev_us) / 1e6,
    );
    m(
        "ocean_liner_keys",
        "gauge",
        "Live keys in the map.",
        s.map.entry_count() as f64,
    );
    m(
        "ocean_liner_index_bytes",
        "gauge",
        "Memory of the map's pages and directory.",
        s.map.index_bytes() as f64,
    );
    m(
        "ocean_liner_value_cache_bytes",
        "gauge",
        "Memory the value cache holds: the used part of its ring and its index.",
        cache_bytes as f64,
    );
    m(
        "ocean_liner_value_cache_values",
        "gauge",
        "Values the value cache holds.",
        cache_values as f64,
    );
    m(
        "ocean_liner_value_cache_hits_total",
        "counter",
        "Log reads answered from the value cache.",
        hits as f64,
    );
    m(
        "ocean_liner_value_cache_misses_total",
        "counter",
        "Log reads the value cache could not answer.",
        misses as f64,
    );
    m(
        "ocean_liner_log_file_bytes",
        "gauge",
        "Bytes of the log's segment files on disk.",
        space.file_bytes as f64,
    );
    m(
        "ocean_liner_log_entry_bytes",
        "gauge",
        "Bytes of valid entries in the segments.",
        space.valid_bytes as f64,
    );
    m(
        "ocean_liner_log_live_bytes",
        "gauge",
        "Bytes of the commands the map still reads values from.",
        space.live_bytes as f64,
    );
    m(
        "ocean_liner_log_segments",
        "gauge",
        "Segment files.",
        space.segment_count as f64,
    );
    m(
        "ocean_liner_segments_deleted_total",
        "counter",
        "Segment files deleted once empty.",
        get(&st.segments_deleted),
    );
    m(
        "ocean_liner_clean_passes_total",
        "counter",
        "Segments cleaned.",
        get(&st.clean_passes),
    );
    m(
        "ocean_liner_values_moved_total",
        "counter",
        "Live values the cleaner copied.",
        get(&st.values_moved),
    );
    m(
        "ocean_liner_clean_written_bytes_total",
        "counter",
        "Bytes the cleaner wrote.",
        get(&st.clean_bytes_written),
    );
    m(
        "ocean_liner_checkpoints_total",
        "counter",
        "Checkpoints completed.",
        get(&st.checkpoints),
    );
    m(
        "ocean_liner_last_checkpoint_seconds",
        "gauge",
        "Duration of the last checkpoint.",
        get(&st.last_checkpoint_us) / 1e6,
    );
    m(
        "ocean_liner_snapshots_sent_total",
        "counter",
        "Snapshots streamed to followers.",
        get(&st.snapshots_sent),
    );
    m(
        "ocean_liner_peer_raft_bytes_total",
        "counter",
        "Bytes of Raft messages sent to peers, as encoded.",
        get(&st.peer_wire.raft_bytes),
    );
    m(
        "ocean_liner_peer_wire_bytes_total",
        "counter",
        "Bytes of the same messages as sent (after compression).",
        get(&st.peer_wire.wire_bytes),
    );
    m(
        "ocean_liner_peer_compressed_frames_total",
        "counter",
        "Raft messages sent to peers compressed.",
        get(&st.peer_wire.compressed_frames),
    );
    m(
        "ocean_liner_snapshots_received_total",
        "counter",
        "Snapshots installed from a leader.",
        get(&st.snapshots_received),
    );
    m(
        "ocean_liner_resident_memory_bytes",
        "gauge",
        "Resident set size of the process.",
        resident_bytes() as f64,
    );
    m(
        "ocean_liner_uptime_seconds",
        "gauge",
        "Seconds since the process started serving.",
        s.started.elapsed().as_secs_f64(),
    );
    st.persist_seconds.render(
        &mut out,
        "ocean_liner_persist_seconds",
        "",
        "Time the replication core spent per Raft ready cycle making entries durable and applying them.",
        true,
    );
    let help = "Latency of client requests, from receipt to the reply being queued (GETs: from \
                the start of the shard turn that answers them).";
    st.udp_set_seconds.render(
        &mut out,
        "ocean_liner_request_seconds",
        "op=\"set\",door=\"udp\"",
        help,
        true,
    );
    st.udp_del_seconds.render(
        &mut out,
        "ocean_liner_request_seconds",
        "op=\"del\",door=\"udp\"",
        help,
        false,
    );
    st.udp_get_seconds.render(
        &mut out,
        "ocean_liner_request_seconds",
        "op=\"get\",door=\"udp\"",
        help,
        false,
    );
    st.resp_write_seconds.render(
        &mut out,
        "ocean_liner_request_seconds",
        "op=\"write\",door=\"resp\"",
        help,
        false,
    );
    st.resp_read_seconds.render(
        &mut out,
        "ocean_liner_request_seconds",
        "op=\"read\",door=\"resp\"",
        help,
        false,
    );
    // Per window slot: each UDP shard, then each RESP door.
    type Pick = fn(&super::SlotStats) -> &AtomicU64;
    let counters: [(&str, &str, Pick); 4] = [
        (
            "ocean_liner_slot_requests_total",
            "Datagrams (a UDP shard) or commands (a RESP door) handled.",
            |c| &c.requests,
        ),
        ("ocean_liner_slot_gets_total", "GETs served.", |c| &c.gets),
        (
            "ocean_liner_slot_errors_total",
            "Requests refused as malformed or too large, or dropped.",
            |c| &c.errors,
        ),
        (
            "ocean_liner_slot_busy_total",
            "Requests answered busy.",
            |c| &c.busy,
        ),
    ];
    for (name, help, pick) in counters {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        for (i, c) in s.slot_stats.iter().enumerate() {
            let (door, core) = if i < s.shard_count {
                ("udp", i)
            } else {
                ("resp", i - s.shard_count)
            };
            let _ = writeln!(
                out,
                "{name}{{door=\"{door}\",shard=\"{core}\"}} {}",
                pick(c).load(Ordering::Relaxed)
            );
        }
    }
    out
}

/// The process's resident set size (from `/proc/self/statm`), 0 if unreadable.
pub fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * page.max(0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_end_at_inf() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(40));
        h.observe(Duration::from_micros(100));
        h.observe_n(Duration::from_millis(3), 2);
        h.observe(Duration::from_secs(100));
        let mut out = String::new();
        h.render(&mut out, "x_seconds", "op=\"a\"", "help", true);
        assert!(
            out.contains("x_seconds_bucket{op=\"a\",le=\"0.00005\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{op=\"a\",le=\"0.0001\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{op=\"a\",le=\"0.005\"} 4\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{op=\"a\",le=\"30\"} 4\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{op=\"a\",le=\"+Inf\"} 5\n"),
            "{out}"
        );
        assert!(out.contains("x_seconds_count{op=\"a\"} 5\n"), "{out}");
    }

    #[test]
    fn before_recovery_only_liveness_and_not_ready() {
        assert_eq!(answer("/livez", None).0, 200);
        let (status, body, _) = answer("/readyz", None);
        assert_eq!((status, body.as_str()), (503, "not ready: recovering\n"));
        let (status, body, _) = answer("/metrics", None);
        assert_eq!(status, 200);
        assert!(body.contains("ocean_liner_up 1\n") && body.contains("ocean_liner_ready 0\n"));
        assert_eq!(answer("/nope", None).0, 404);
    }
}
