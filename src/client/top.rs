//! `ocean-liner top`: a live view of a node or a cluster, one row per node, refreshed
//! every interval from each node's STATS: role, term, commit and applied index, how far
//! each node trails the leader's commit index, writes and GETs per second, p99 of UDP
//! SETs and GETs over the interval (from the server's latency buckets), keys, live and
//! disk bytes.

use super::{Client, ClientOptions};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

type Stats = HashMap<String, String>;

fn parse(text: &str) -> Stats {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn num(s: &Stats, key: &str) -> u64 {
    s.get(key).and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn list(s: &Stats, key: &str) -> Vec<u64> {
    s.get(key)
        .map(|v| v.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_default()
}

/// The bucket bound (µs) under which quantile `q` of the interval's observations fall.
fn interval_quantile(now: &Stats, before: &Stats, key: &str, q: f64) -> Option<u64> {
    let (a, b) = (list(now, key), list(before, key));
    let delta: Vec<u64> = a
        .iter()
        .enumerate()
        .map(|(i, n)| n.saturating_sub(b.get(i).copied().unwrap_or(0)))
        .collect();
    let bounds = list(now, "latency_bounds_us");
    let total: u64 = delta.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, c) in delta.iter().enumerate() {
        seen += c;
        if seen >= rank {
            return Some(bounds.get(i).copied().unwrap_or(u64::MAX));
        }
    }
    None
}

fn duration_text(us: Option<u64>) -> String {
    match us {
        None => "-".into(),
        Some(u64::MAX) => ">30s".into(),
        Some(us) if us < 1_000 => format!("≤{us}µs"),
        Some(us) if us < 1_000_000 => format!("≤{}ms", us as f64 / 1e3),
        Some(us) => format!("≤{}s", us as f64 / 1e6),
    }
}

fn bytes_text(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.1}G", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1}M", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1}K", b as f64 / 1024.0),
        b => format!("{b}"),
    }
}

/// One screen from two rounds of STATS (`None`: the node did not answer).
pub fn render(
    servers: &[SocketAddr],
    now: &[Option<Stats>],
    before: &[Option<Stats>],
    seconds: f64,
) -> String {
    let leader_commit = now
        .iter()
        .flatten()
        .filter(|s| s.get("role").map(String::as_str) == Some("leader"))
        .map(|s| num(s, "commit_index"))
        .max();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<22} {:>4} {:<8} {:>6} {:>10} {:>10} {:>6} {:>10} {:>10} {:>9} {:>9} {:>9} {:>8} {:>8}",
        "node",
        "id",
        "role",
        "term",
        "commit",
        "applied",
        "lag",
        "writes/s",
        "gets/s",
        "set p99",
        "get p99",
        "keys",
        "live",
        "disk"
    );
    for (i, addr) in servers.iter().enumerate() {
        let Some(Some(s)) = now.get(i) else {
            let _ = writeln!(out, "{addr:<22} (no answer)");
            continue;
        };
        let prev = before.get(i).cloned().flatten().unwrap_or_default();
        let rate = |key: &str| {
            if prev.is_empty() {
                0.0
            } else {
                num(s, key).saturating_sub(num(&prev, key)) as f64 / seconds.max(1e-3)
            }
        };
        let lag = leader_commit
            .map(|c| c.saturating_sub(num(s, "applied_index")).to_string())
            .unwrap_or_else(|| "?".into());
        let _ = writeln!(
            out,
            "{:<22} {:>4} {:<8} {:>6} {:>10} {:>10} {:>6} {:>10.0} {:>10.0} {:>9} {:>9} {:>9} {:>8} {:>8}",
            addr.to_string(),
            s.get("node_id").map(String::as_str).unwrap_or("?"),
            s.get("role").map(String::as_str).unwrap_or("?"),
            num(s, "term"),
            num(s, "commit_index"),
            num(s, "applied_index"),
            lag,
            rate("commands_applied"),
            rate("gets"),
            duration_text(interval_quantile(s, &prev, "set_latency_counts", 0.99)),
            duration_text(interval_quantile(s, &prev, "get_latency_counts", 0.99)),
            num(s, "keys"),
            bytes_text(num(s, "live_bytes")),
            bytes_text(num(s, "disk_bytes")),
        );
    }
    out
}

/// Runs the view: `rounds` screens (forever when `None`), one per `interval`. Each node is
/// asked on its own, so one that is down shows as such and the rest go on.
pub fn run(servers: &[SocketAddr], interval: Duration, rounds: Option<u64>, clear: bool) {
    let options = ClientOptions {
        deadline: interval.min(Duration::from_secs(1)),
        ..ClientOptions::default()
    };
    let ask = || -> Vec<Option<Stats>> {
        servers
            .iter()
            .map(|a| {
                Client::connect(*a, options.clone())
                    .ok()
                    .and_then(|mut c| c.stats().ok())
                    .map(|t| parse(&t))
            })
            .collect()
    };
    let mut before = ask();
    let mut at = Instant::now();
    let mut shown = 0;
    while rounds.is_none_or(|r| shown < r) {
        std::thread::sleep(interval.saturating_sub(at.elapsed()));
        let now = ask();
        let seconds = at.elapsed().as_secs_f64();
        at = Instant::now();
        let screen = render(servers, &now, &before, seconds);
        if clear {
            print!("\x1b[2J\x1b[H");
        }
        println!(
            "ocean-liner top — every {:.1} s (Ctrl-C to quit)\n{screen}",
            interval.as_secs_f64()
        );
        before = now;
        shown += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_lag_and_p99_come_from_two_rounds() {
        let a: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:9001".parse().unwrap();
        let before = parse(
            "node_id=0\nrole=leader\nterm=3\ncommit_index=100\napplied_index=100\n\
             commands_applied=1000\ngets=50\nlatency_bounds_us=100,1000\n\
             set_latency_counts=0,0,0\nget_latency_counts=0,0,0\n",
        );
        let now = parse(
            "node_id=0\nrole=leader\nterm=3\ncommit_index=150\napplied_index=150\n\
             commands_applied=3000\ngets=50\nlatency_bounds_us=100,1000\n\
             set_latency_counts=10,980,10\nget_latency_counts=0,0,0\nkeys=7\n",
        );
        let follower = parse("node_id=1\nrole=follower\nterm=3\napplied_index=120\n");
        let screen = render(
            &[a, b],
            &[Some(now), Some(follower)],
            &[Some(before), None],
            2.0,
        );
        let rows: Vec<&str> = screen.lines().collect();
        assert!(
            rows[1].contains(" leader ") && rows[1].contains(" 1000 "),
            "{screen}"
        );
        // 1% of 1000 SETs were past the last bound: the p99 is in the middle bucket.
        assert!(rows[1].contains("≤1ms"), "{screen}");
        assert!(
            rows[2].contains(" follower ") && rows[2].contains(" 30 "),
            "lag 30: {screen}"
        );
    }
}
