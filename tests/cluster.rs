//! A real three-node cluster: separate processes, TCP between them, UDP clients.
//!
//! Method: start three `ocean-liner` processes on loopback, run a mixed load from several
//! client threads (each key has one writer; every thread also reads other keys) and
//! record every operation with its call and return times. Mid-load, `kill -9` the leader
//! and measure how long until another node reports itself leader (must be under 1 s);
//! restart it. Then kill every node with SIGKILL, restart them all, read every key back,
//! and check (1) each key holds its last acknowledged value (or the one write that was
//! in flight), (2) the whole recorded history is linearizable.

mod procs;

use ocean_liner::client::{Client, ClientOptions};
use ocean_liner::verify::faults;
use ocean_liner::verify::linearizability::{self, CheckResult, Input, Operation, Output};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ocean-liner");

struct Node {
    child: Option<Child>,
    peer_port: u16,
    client_port: u16,
    resp_port: u16,
    metrics_port: u16,
}

struct Cluster {
    nodes: Vec<Node>,
    extra: Vec<String>,
    /// Whether the nodes open their RESP door (on each node's `resp_port`).
    resp: bool,
    /// Whether the nodes serve metrics (on each node's `metrics_port`).
    metrics: bool,
    dir: PathBuf,
    _tmp: tempfile::TempDir,
}

/// A port free for both TCP and UDP, never handed out twice in this process (the tests of
/// this file run in parallel, each with its own cluster).
fn free_port() -> u16 {
    procs::free_port(30_000)
}

impl Cluster {
    fn start(n: usize) -> Cluster {
        Cluster::start_with(n, &[])
    }

    fn start_with(n: usize, extra: &[&str]) -> Cluster {
        let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let mut nodes = Vec::new();
        for _ in 0..n {
            let peer_port = free_port();
            let client_port = free_port();
            let resp_port = free_port();
            let metrics_port = free_port();
            nodes.push(Node {
                child: None,
                peer_port,
                client_port,
                resp_port,
                metrics_port,
            });
        }
        let mut c = Cluster {
            nodes,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            resp: extra.contains(&"--resp"),
            metrics: extra.contains(&"--metrics"),
            dir: tmp.path().to_path_buf(),
            _tmp: tmp,
        };
        for k in 0..n {
            c.spawn(k);
        }
        c
    }

    fn peers(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.peer_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&mut self, k: usize) {
        let child = Command::new(BIN)
            .args(["--no-pin", "--cores", "2"])
            .args(
                (!self.extra.iter().any(|a| a == "--batch-window-ms"))
                    .then_some(["--batch-window-ms", "10"])
                    .into_iter()
                    .flatten(),
            )
            .args(["--peers", &self.peers(), "--node-id", &k.to_string()])
            .args(["--client-port", &self.nodes[k].client_port.to_string()])
            .arg("--data-dir")
            .arg(self.dir.join(format!("node-{k}")))
            .args(
                self.extra
                    .iter()
                    .filter(|a| *a != "--resp" && *a != "--metrics"),
            )
            .args(
                self.metrics
                    .then(|| {
                        [
                            "--metrics-addr".to_string(),
                            format!("127.0.0.1:{}", self.nodes[k].metrics_port),
                        ]
                    })
                    .into_iter()
                    .flatten(),
            )
            .args(
                self.resp
                    .then(|| {
                        [
                            "--resp-port".to_string(),
                            self.nodes[k].resp_port.to_string(),
                        ]
                    })
                    .into_iter()
                    .flatten(),
            )
            .stdout(Stdio::null())
            .stderr(self.stderr_file(k))
            .spawn()
            .unwrap();
        self.nodes[k].child = Some(child);
    }

    /// Node `k`'s standard error, kept across restarts.
    fn stderr_file(&self, k: usize) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("node-{k}.stderr")))
            .unwrap()
    }

    fn stderr_text(&self, k: usize) -> String {
        std::fs::read_to_string(self.dir.join(format!("node-{k}.stderr"))).unwrap_or_default()
    }

    fn kill9(&mut self, k: usize) {
        if let Some(mut c) = self.nodes[k].child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    fn client_addrs(&self) -> Vec<SocketAddr> {
        self.nodes
            .iter()
            .map(|n| SocketAddr::from(([127, 0, 0, 1], n.client_port)))
            .collect()
    }

    /// (node index, term) of a node that reports itself leader, if any.
    fn leader(&self, except: Option<usize>) -> Option<(usize, u64)> {
        for (k, addr) in self.client_addrs().into_iter().enumerate() {
            if Some(k) == except || self.nodes[k].child.is_none() {
                continue;
            }
            let opts = ClientOptions {
                deadline: Duration::from_millis(100),
                ..ClientOptions::default()
            };
            let Ok(mut c) = Client::connect(addr, opts) else {
                continue;
            };
            if let Ok(stats) = c.stats()
                && stats.contains("role=leader\n")
            {
                let term = stats
                    .lines()
                    .find_map(|l| l.strip_prefix("term="))
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(0);
                return Some((k, term));
            }
        }
        None
    }

    /// A counter from node `k`'s STATS, if it answers.
    fn stat(&self, k: usize, name: &str) -> Option<u64> {
        let opts = ClientOptions {
            deadline: Duration::from_millis(200),
            ..ClientOptions::default()
        };
        let s = Client::connect(self.client_addrs()[k], opts)
            .ok()?
            .stats()
            .ok()?;
        s.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
    }

    /// Waits until node `follower` has applied everything `leader` committed.
    fn wait_caught_up(&self, leader: usize, follower: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let target = self.stat(leader, "commit_index").unwrap_or(u64::MAX);
            if self
                .stat(follower, "applied_index")
                .is_some_and(|a| a >= target)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {follower} did not catch up: {}",
                self.stderr_text(follower)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_for_leader(
        &self,
        except: Option<usize>,
        limit: Duration,
    ) -> Option<(usize, u64, Duration)> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some((k, term)) = self.leader(except) {
                return Some((k, term, start.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for k in 0..self.nodes.len() {
            self.kill9(k);
        }
    }
}

fn now_us(epoch: Instant) -> u64 {
    epoch.elapsed().as_micros() as u64
}

#[test]
fn three_nodes_survive_leader_kill_and_full_restart_linearizably() {
    leader_kill_and_full_restart(&[]);
}

/// The same with reads confirmed by a ReadIndex round instead of the leader lease.
#[test]
fn three_nodes_with_read_index_reads_stay_linearizable() {
    leader_kill_and_full_restart(&["--read-mode", "index"]);
}

fn leader_kill_and_full_restart(extra: &[&str]) {
    let mut cluster = Cluster::start_with(3, extra);
    let (first_leader, _, _) = cluster
        .wait_for_leader(None, Duration::from_secs(10))
        .expect("a leader is elected");
    let addrs = cluster.client_addrs();
    let epoch = Instant::now();
    let history = Arc::new(Mutex::new(Vec::<Operation>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..faults::WRITERS)
        .map(|w| {
            let (addrs, history, stop) = (addrs.clone(), history.clone(), stop.clone());
            std::thread::spawn(move || {
                let deadline = Duration::from_secs(3);
                faults::workload(&addrs, w, "", deadline, epoch, &history, &stop).unwrap()
            })
        })
        .collect();

    std::thread::sleep(Duration::from_millis(1500));
    cluster.kill9(first_leader);
    let (new_leader, _, failover) = cluster
        .wait_for_leader(Some(first_leader), Duration::from_secs(5))
        .expect("a new leader is elected");
    eprintln!("leader {first_leader} killed; node {new_leader} leads after {failover:?}");
    assert!(
        failover < Duration::from_secs(1),
        "failover took {failover:?}"
    );
    std::thread::sleep(Duration::from_millis(700));
    cluster.spawn(first_leader);
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::Relaxed);
    let versions: Vec<HashMap<String, (u64, u64)>> =
        threads.into_iter().map(|t| t.join().unwrap()).collect();

    // Every node dies at once and comes back from its own disk.
    for k in 0..3 {
        cluster.kill9(k);
    }
    for k in 0..3 {
        cluster.spawn(k);
    }
    cluster
        .wait_for_leader(None, Duration::from_secs(10))
        .expect("a leader after the full restart");
    let mut client = Client::connect_cluster(
        &addrs,
        ClientOptions {
            deadline: Duration::from_secs(10),
            ..ClientOptions::default()
        },
    )
    .unwrap();
    let mut history = Arc::try_unwrap(history).unwrap().into_inner().unwrap();
    let mut acknowledged = 0;
    for map in &versions {
        for (key, &(last_acked, in_flight)) in map {
            let call = now_us(epoch);
            let value = client.get(key).expect("reads work after the restart");
            history.push(Operation {
                client: 1000,
                key: key.clone().into_bytes(),
                input: Input::Get,
                call,
                ret: Some(now_us(epoch)),
                output: Output::Value(value.clone()),
            });
            let got: u64 = value.map_or(0, |v| String::from_utf8(v).unwrap().parse().unwrap());
            assert!(
                got == last_acked || got == in_flight,
                "{key}: last acknowledged version {last_acked} (in flight {in_flight}), read {got}"
            );
            acknowledged += (last_acked > 0) as usize;
        }
    }
    let writes = history
        .iter()
        .filter(|o| matches!(o.input, Input::Set(_)) && o.ret.is_some())
        .count();
    eprintln!(
        "{} operations recorded, {writes} acknowledged writes, {acknowledged} keys checked",
        history.len()
    );
    assert!(
        writes > 100,
        "too few writes were acknowledged ({writes}) to test anything"
    );
    match linearizability::check(&history, 50_000_000) {
        CheckResult::Ok => {}
        CheckResult::Illegal { key, explanation } => {
            panic!(
                "not linearizable on {}: {explanation}",
                String::from_utf8_lossy(&key)
            )
        }
        CheckResult::Unknown => panic!("the linearizability check ran out of budget"),
    }
}

/// A follower whose data directory is wiped rejoins with nothing, is repaired from the
/// leader's log, and can then carry the data on its own: after the old leader is killed,
/// every acknowledged key is still readable from the two remaining nodes.
#[test]
fn a_wiped_follower_catches_up_from_the_leader() {
    let mut cluster = Cluster::start(3);
    let (leader, _, _) = cluster
        .wait_for_leader(None, Duration::from_secs(10))
        .expect("a leader is elected");
    let addrs = cluster.client_addrs();
    let opts = ClientOptions {
        deadline: Duration::from_secs(10),
        ..ClientOptions::default()
    };
    let mut client = Client::connect_cluster(&addrs, opts).unwrap();
    for i in 0..300 {
        client
            .set(&format!("key{i}"), format!("value{i}").as_bytes())
            .unwrap();
    }
    let follower = (leader + 1) % 3;
    cluster.kill9(follower);
    std::fs::remove_dir_all(cluster.dir.join(format!("node-{follower}"))).unwrap();
    cluster.spawn(follower);
    // Wait until the wiped node has applied everything the leader committed.
    cluster.wait_caught_up(leader, follower, Duration::from_secs(15));
    assert_eq!(cluster.stat(follower, "keys"), Some(300));
    cluster.kill9(leader);
    cluster
        .wait_for_leader(Some(leader), Duration::from_secs(5))
        .expect("the two remaining nodes elect a leader");
    for i in 0..300 {
        assert_eq!(
            client.get(&format!("key{i}")).unwrap(),
            Some(format!("value{i}").into_bytes()),
            "key{i}"
        );
    }
}

/// A follower that lost its data after the leader deleted the Raft log it would need is
/// sent a snapshot: the live keys and values, not the history. It installs it, follows
/// the log from there, and can carry the data on its own once the leader is killed.
#[test]
fn a_wiped_follower_behind_a_compacted_log_is_sent_a_snapshot() {
    let mut cluster = Cluster::start_with(
        3,
        &[
            "--segment-mib",
            "1",
            "--raft-log-retain-mib",
            "0",
            "--checkpoint-interval-s",
            "1",
        ],
    );
    let (leader, _, _) = cluster
        .wait_for_leader(None, Duration::from_secs(10))
        .expect("a leader is elected");
    let addrs = cluster.client_addrs();
    let server = addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(",");
    // History: overwrites of few keys, many times their size.
    let bench = Command::new(BIN)
        .args(["bench", "--server", &server, "--workload", "set"])
        .args(["--keys", "2000", "--value-size", "200", "--duration", "4"])
        .args(["--warmup", "0", "--concurrency", "64"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(bench.success());
    let opts = ClientOptions {
        deadline: Duration::from_secs(10),
        ..ClientOptions::default()
    };
    let mut client = Client::connect_cluster(&addrs, opts).unwrap();
    for i in 0..200 {
        client
            .set(&format!("final{i}"), format!("value{i}").as_bytes())
            .unwrap();
    }
    // The leader's log no longer starts at 1.
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.stat(leader, "first_log_index").unwrap_or(1) <= 1 {
        assert!(
            Instant::now() < deadline,
            "the leader never compacted its log"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let history_bytes = cluster.stat(leader, "entries_written").unwrap_or(0);
    let follower = (leader + 1) % 3;
    cluster.kill9(follower);
    std::fs::remove_dir_all(cluster.dir.join(format!("node-{follower}"))).unwrap();
    let wiped_at = Instant::now();
    cluster.spawn(follower);
    cluster.wait_caught_up(leader, follower, Duration::from_secs(30));
    let caught_up = wiped_at.elapsed();
    let received = cluster
        .stat(follower, "snapshot_bytes_received")
        .unwrap_or(0);
    assert!(
        cluster.stat(follower, "snapshots_received").unwrap_or(0) >= 1,
        "no snapshot was received: {}",
        cluster.stderr_text(follower)
    );
    assert_eq!(cluster.stat(follower, "keys"), cluster.stat(leader, "keys"));
    let leader_disk = cluster.stat(leader, "bytes_deleted").unwrap_or(0);
    eprintln!(
        "wiped follower caught up in {caught_up:?} from a snapshot of {received} bytes \
         (the leader had deleted {leader_disk} bytes of log; {history_bytes} entries written)"
    );
    assert!(
        received < leader_disk,
        "the snapshot ({received} bytes) is smaller than the history the leader deleted ({leader_disk} bytes)"
    );
    cluster.kill9(leader);
    cluster
        .wait_for_leader(Some(leader), Duration::from_secs(5))
        .expect("the two remaining nodes elect a leader");
    for i in 0..200 {
        assert_eq!(
            client.get(&format!("final{i}")).unwrap(),
            Some(format!("value{i}").into_bytes()),
            "final{i}"
        );
    }
}

/// With `--peer-compression always` the leader's large appends travel LZ4-compressed and
/// the followers apply them: a follower ends up with every key, the leader's counters show
/// compressed frames that took less than half the bytes they stand for (the load's values
/// repeat), and once the leader is killed the new one serves the values.
#[test]
fn compressed_appends_reach_the_followers() {
    let mut cluster = Cluster::start_with(3, &["--peer-compression", "always"]);
    let (leader, _, _) = cluster
        .wait_for_leader(None, Duration::from_secs(10))
        .expect("a leader is elected");
    let addrs = cluster.client_addrs();
    let bench = Command::new(BIN)
        .args([
            "bench",
            "--server",
            &addrs[leader].to_string(),
            "--workload",
            "set",
        ])
        .args([
            "--keys",
            "20000",
            "--value-size",
            "300",
            "--prefill",
            "--duration",
            "1",
        ])
        .args(["--warmup", "0", "--concurrency", "1024", "--pipeline", "16"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(bench.success());
    let follower = (leader + 1) % 3;
    cluster.wait_caught_up(leader, follower, Duration::from_secs(15));
    assert_eq!(cluster.stat(follower, "keys"), Some(20000));
    let frames = cluster.stat(leader, "peer_compressed_frames").unwrap_or(0);
    let raft = cluster.stat(leader, "peer_raft_bytes").unwrap_or(0);
    let wire = cluster.stat(leader, "peer_wire_bytes").unwrap_or(0);
    eprintln!("{frames} compressed frames; {raft} bytes of Raft messages sent as {wire}");
    assert!(frames > 0, "nothing was compressed");
    assert!(wire < raft / 2, "{raft} bytes went as {wire}");
    cluster.kill9(leader);
    cluster
        .wait_for_leader(Some(leader), Duration::from_secs(5))
        .expect("the two remaining nodes elect a leader");
    let opts = ClientOptions {
        deadline: Duration::from_secs(10),
        ..ClientOptions::default()
    };
    let mut client = Client::connect_cluster(&addrs, opts).unwrap();
    let value: Vec<u8> = (0..300).map(|i| b'a' + (i % 26) as u8).collect();
    for i in [0u64, 7, 12_345, 19_999] {
        let key = format!("key:{i:010}");
        assert_eq!(client.get(&key).unwrap(), Some(value.clone()), "{key}");
    }
}

/// Peer connections refuse strangers and garbage without hurting the node: a hello from
/// another cluster, a frame claiming 4 GiB, and random bytes each close only their own
/// connection, and the cluster keeps committing writes.
#[test]
fn bad_peer_connections_are_closed_and_the_cluster_keeps_working() {
    use std::io::{Read, Write};
    let cluster = Cluster::start_with(3, &["--cluster-id", "7"]);
    cluster
        .wait_for_leader(None, Duration::from_secs(10))
        .expect("a leader is elected");
    let peer = SocketAddr::from(([127, 0, 0, 1], cluster.nodes[0].peer_port));
    let closed_after = |bytes: &[u8]| -> bool {
        let mut s = std::net::TcpStream::connect(peer).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
        let _ = s.write_all(bytes);
        let mut buf = [0u8; 16];
        // The node writes on an inbound connection only to refuse a snapshot; the read
        // that ends is the close.
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return true,
                Ok(_) => continue,
            }
        }
    };
    // A hello naming another cluster.
    let mut hello = Vec::new();
    let mut body = b"OLPEER02".to_vec();
    body.extend_from_slice(&0xDEAD_BEEFu64.to_le_bytes());
    body.extend_from_slice(&1u32.to_le_bytes());
    body.extend_from_slice(&0u64.to_le_bytes());
    let addr = b"127.0.0.1:1";
    body.extend_from_slice(&(addr.len() as u16).to_le_bytes());
    body.extend_from_slice(addr);
    hello.extend_from_slice(&(body.len() as u32).to_le_bytes());
    hello.push(1);
    hello.extend_from_slice(&body);
    assert!(closed_after(&hello), "a foreign cluster's hello is refused");
    // A frame header claiming 4 GiB.
    assert!(
        closed_after(&[0xFF, 0xFF, 0xFF, 0xFF, 2]),
        "an oversize frame is refused"
    );
    // Random bytes.
    let junk: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    assert!(closed_after(&junk), "garbage is refused");
    // Hellos of this very cluster cut short anywhere, the 22-byte one among them.
    let mut ours = b"OLPEER02".to_vec();
    ours.extend_from_slice(&7u64.to_le_bytes());
    ours.extend_from_slice(&1u32.to_le_bytes());
    ours.extend_from_slice(&0u64.to_le_bytes());
    ours.extend_from_slice(&(addr.len() as u16).to_le_bytes());
    ours.extend_from_slice(addr);
    for cut in [22, 16, 20, 27, 29, 31] {
        let mut frame = (cut as u32).to_le_bytes().to_vec();
        frame.push(1);
        frame.extend_from_slice(&ours[..cut]);
        assert!(
            closed_after(&frame),
            "a hello cut at {cut} bytes is refused"
        );
    }
    // A well-formed hello of this cluster (naming node 1's real client address, which the
    // node takes from it) followed by a damaged snapshot chunk, or by a snapshot message
    // whose chunks never came.
    let real = format!("127.0.0.1:{}", cluster.nodes[1].client_port);
    let mut ours = ours[..ours.len() - addr.len() - 2].to_vec();
    ours.extend_from_slice(&(real.len() as u16).to_le_bytes());
    ours.extend_from_slice(real.as_bytes());
    let mut hello_ok = (ours.len() as u32).to_le_bytes().to_vec();
    hello_ok.push(1);
    hello_ok.extend_from_slice(&ours);
    let mut chunk = ocean_liner::storage::snapshot::encode_chunk(
        9,
        0,
        ocean_liner::storage::snapshot::ChunkKind::Header,
        &[0u8; 40],
    );
    chunk[20] ^= 1;
    let mut frame = hello_ok.clone();
    frame.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
    frame.push(5);
    frame.extend_from_slice(&chunk);
    assert!(closed_after(&frame), "a damaged snapshot chunk is refused");
    let mut snap = raft::eraftpb::Message::default();
    snap.set_msg_type(raft::eraftpb::MessageType::MsgSnapshot);
    snap.from = 2;
    snap.to = 1;
    let mut s = raft::eraftpb::Snapshot::default();
    s.mut_metadata().index = 5;
    s.data = ocean_liner::storage::snapshot::encode_descriptor(9).into();
    snap.snapshot = Some(s).into();
    let mut body = Vec::new();
    ocean_liner::consensus::codec::encode(&snap, &mut body);
    let mut frame = hello_ok;
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.push(2);
    frame.extend_from_slice(&body);
    assert!(
        closed_after(&frame),
        "a snapshot message without its chunks is refused"
    );
    // The reader logs its reason just after it closes the connection.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut log = cluster.stderr_text(0);
    while !(log.contains("failed its checksum") && log.contains("without its chunks"))
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
        log = cluster.stderr_text(0);
    }
    assert!(
        log.contains("failed its checksum") && log.contains("without its chunks"),
        "the node logs why it refused the snapshots:\n{log}"
    );
    assert!(
        !log.contains("panicked"),
        "a peer connection's reader panicked:\n{log}"
    );
    assert!(
        log.contains("ends inside its"),
        "the node logs why it closed the connection:\n{log}"
    );
    // The cluster still takes writes.
    let mut client = Client::connect_cluster(
        cluster.client_addrs(),
        ClientOptions {
            deadline: Duration::from_secs(5),
            ..ClientOptions::default()
        },
    )
    .unwrap();
    for i in 0..50 {
        client.set(&format!("k{i}"), b"v").unwrap();
    }
    assert_eq!(client.get("k49").unwrap(), Some(b"v".to_vec()));
}

/// One RESP command on a new connection to `port`, and its reply.
fn resp_call<A: AsRef<[u8]>>(port: u16, args: &[A]) -> Option<ocean_liner::resp::Reply> {
    use ocean_liner::resp::{self, Limits, Parsed};
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut out = Vec::new();
    resp::command(&mut out, args);
    stream.write_all(&out).ok()?;
    let mut buf = Vec::new();
    loop {
        if let Ok(Parsed::Done(reply, _)) = resp::parse_reply(&buf, &Limits::default()) {
            return Some(reply);
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// INCR through the leader's RESP door while its earlier entries are still in flight
/// (a follower must acknowledge each): every acknowledged INCR got a value no other got,
/// together exactly 1..=N. The followers applied the same plain SETs, so after a kill -9
/// of the leader the next one continues at N+1.
#[test]
fn incr_on_a_cluster_hands_out_each_value_once_across_a_leader_kill() {
    use ocean_liner::resp::{self, Limits, Parsed, Reply};
    use std::io::{Read, Write};
    // Windows of 1 ms: shorter than a commit, so entries are still in flight at a seal.
    let mut cluster = Cluster::start_with(3, &["--resp", "--batch-window-ms", "1"]);
    let leader_port = |cluster: &Cluster| {
        let (leader, _, _) = cluster
            .wait_for_leader(None, Duration::from_secs(10))
            .expect("a leader is elected");
        (leader, cluster.nodes[leader].resp_port)
    };
    // Until the new leader's first entry has applied, conditional writes are BUSY.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (_, port) = loop {
        let (leader, port) = leader_port(&cluster);
        if let Some(Reply::Integer(_)) = resp_call(port, &["INCR", "warm-up"]) {
            break (leader, port);
        }
        assert!(Instant::now() < deadline, "no leader takes an INCR");
        std::thread::sleep(Duration::from_millis(20));
    };
    // A follower names the leader's RESP address.
    let (leader, _) = leader_port(&cluster);
    let follower = (leader + 1) % 3;
    let want = format!(
        "the leader is 127.0.0.1:{}",
        cluster.nodes[leader].resp_port
    );
    match resp_call(cluster.nodes[follower].resp_port, &["SET", "k", "v"]) {
        Some(Reply::Error(e)) => {
            let e = String::from_utf8_lossy(&e).to_string();
            assert!(e.starts_with("READONLY") && e.contains(&want), "{e}");
        }
        other => panic!("a follower answered a SET with {other:?}"),
    }
    // Each thread: the values its INCRs got, and how many ended with an unknown outcome
    // (the leader lost its place while they were in flight: they may or may not apply).
    let threads: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                let mut buf = Vec::new();
                let mut got = Vec::new();
                let mut unknown = 0;
                for round in 0..15 {
                    let depth = 1 + (t * 5 + round) % 16;
                    let mut out = Vec::new();
                    for _ in 0..depth {
                        resp::command(&mut out, &["INCR", "counter"]);
                    }
                    stream.write_all(&out).unwrap();
                    let mut answered = 0;
                    while answered < depth {
                        match resp::parse_reply(&buf, &Limits::default()).unwrap() {
                            Parsed::Done(reply, n) => {
                                buf.drain(..n);
                                match reply {
                                    Reply::Integer(v) => got.push(v),
                                    // Logged as a NOP: nothing applied.
                                    Reply::Error(e) if e.starts_with(b"BUSY") => {}
                                    Reply::Error(_) => unknown += 1,
                                    other => panic!("INCR answered {other:?}"),
                                }
                                answered += 1;
                            }
                            Parsed::Incomplete { .. } => {
                                let mut chunk = [0u8; 4096];
                                let n = stream.read(&mut chunk).unwrap();
                                assert!(n > 0, "the leader closed the connection");
                                buf.extend_from_slice(&chunk[..n]);
                            }
                        }
                    }
                }
                (got, unknown)
            })
        })
        .collect();
    let mut all: Vec<i64> = Vec::new();
    let mut unknown = 0;
    for t in threads {
        let (got, u) = t.join().unwrap();
        all.extend(got);
        unknown += u;
    }
    all.sort_unstable();
    let mut distinct = all.clone();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        all.len(),
        "an INCR value was handed out twice"
    );
    let n = match resp_call(leader_port(&cluster).1, &["GET", "counter"]) {
        Some(Reply::Bulk(Some(v))) => String::from_utf8(v).unwrap().parse::<i64>().unwrap(),
        other => panic!("GET counter: {other:?}"),
    };
    if unknown == 0 {
        assert_eq!(all, (1..=n).collect::<Vec<_>>(), "each value once");
    } else {
        assert!(all.last().is_none_or(|&max| max <= n));
        assert!(all.len() as i64 <= n && n <= all.len() as i64 + unknown);
    }
    // A 16 MiB value (an entry of its own) reaches the followers too.
    let big: Vec<u8> = (0..16u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    // A SET refused or dropped by a leader that lost its place (under a loaded machine)
    // is sent again to the current one: SET is idempotent.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (leader, _) = loop {
        let (leader, port) = leader_port(&cluster);
        match resp_call(port, &[&b"SET"[..], b"big", &big]) {
            Some(Reply::Simple(s)) if s == b"OK" => break (leader, port),
            other if Instant::now() > deadline => panic!("SET big: {other:?}"),
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    cluster.kill9(leader);
    let (next, _, _) = cluster
        .wait_for_leader(Some(leader), Duration::from_secs(10))
        .expect("another leader is elected");
    let deadline = Instant::now() + Duration::from_secs(10);
    let reply = loop {
        // Right after the election the new leader answers BUSY until its first entry
        // applied: retry.
        match resp_call(cluster.nodes[next].resp_port, &["INCR", "counter"]) {
            Some(Reply::Integer(v)) => break v,
            other if Instant::now() > deadline => panic!("INCR on the new leader: {other:?}"),
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    assert_eq!(reply, n + 1, "the new leader continues the counter");
    match resp_call(cluster.nodes[next].resp_port, &["GET", "big"]) {
        Some(Reply::Bulk(Some(v))) => assert!(v == big, "the 16 MiB value differs"),
        other => panic!(
            "GET big on the new leader: {:?}",
            other.map(|_| "not the value")
        ),
    }
}

/// One HTTP GET: the status code and the body.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

/// Every node's `/metrics` scraped and parsed by a Prometheus text parser (the
/// prometheus-parse crate): counters, gauges and histograms under their conventional
/// names, one leader among them, the writes counted on every node; `/livez` and
/// `/readyz` answer 200 on every node, and again on the survivors once they have elected
/// a new leader after a kill -9 of the old one.
#[test]
fn metrics_and_health_endpoints_on_a_cluster() {
    use prometheus_parse::{Scrape, Value};
    let mut cluster = Cluster::start_with(3, &["--metrics"]);
    let (leader, _, _) = cluster
        .wait_for_leader(None, Duration::from_secs(10))
        .expect("a leader is elected");
    let opts = ClientOptions {
        deadline: Duration::from_secs(10),
        ..ClientOptions::default()
    };
    let mut client = Client::connect_cluster(cluster.client_addrs(), opts).unwrap();
    for i in 0..200 {
        client.set(&format!("m{i}"), b"value").unwrap();
    }
    let scrape = |k: usize| -> Scrape {
        let (status, body) = http_get(cluster.nodes[k].metrics_port, "/metrics").expect("scraped");
        assert_eq!(status, 200);
        Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("Prometheus text")
    };
    let value = |s: &Scrape, name: &str| -> Value {
        s.samples
            .iter()
            .find(|m| m.metric == name)
            .unwrap_or_else(|| panic!("no {name}"))
            .value
            .clone()
    };
    let Value::Gauge(committed) = value(&scrape(leader), "ocean_liner_commit_index") else {
        panic!("commit_index is a gauge")
    };
    assert!(matches!(
        value(&scrape(leader), "ocean_liner_commands_applied_total"),
        Value::Counter(n) if n >= 200.0
    ));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut leaders = 0.0;
    for k in 0..3 {
        // Each node applies what the leader committed.
        let s = loop {
            let s = scrape(k);
            match value(&s, "ocean_liner_applied_index") {
                Value::Gauge(n) if n >= committed => break s,
                Value::Gauge(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                other => panic!("node {k} applied_index: {other:?}, leader committed {committed}"),
            }
        };
        let Value::Gauge(is_leader) = value(&s, "ocean_liner_is_leader") else {
            panic!("is_leader is a gauge")
        };
        leaders += is_leader;
        assert_eq!(value(&s, "ocean_liner_has_leader"), Value::Gauge(1.0));
        assert_eq!(value(&s, "ocean_liner_cluster_nodes"), Value::Gauge(3.0));
        assert_eq!(value(&s, "ocean_liner_ready"), Value::Gauge(1.0));
        assert!(
            matches!(value(&s, "ocean_liner_resident_memory_bytes"), Value::Gauge(b) if b > 1e6)
        );
        assert!(matches!(value(&s, "ocean_liner_term"), Value::Gauge(t) if t >= 1.0));
        // Every node persisted and applied entries: its histogram counts them.
        let Value::Histogram(buckets) = value(&s, "ocean_liner_persist_seconds") else {
            panic!("persist_seconds is a histogram")
        };
        assert!(buckets.len() >= 10 && buckets.last().unwrap().less_than.is_infinite());
        assert!(
            buckets.windows(2).all(|w| w[0].count <= w[1].count),
            "cumulative"
        );
        assert!(
            buckets.last().unwrap().count > 0.0,
            "node {k} persisted nothing"
        );
        for name in ["ocean_liner_log_live_bytes", "ocean_liner_peer_rtt_seconds"] {
            assert!(s.docs.contains_key(name), "no HELP for {name}");
        }
        assert_eq!(
            http_get(cluster.nodes[k].metrics_port, "/livez").map(|r| r.0),
            Some(200)
        );
        assert_eq!(
            http_get(cluster.nodes[k].metrics_port, "/readyz").map(|r| r.0),
            Some(200)
        );
    }
    assert_eq!(leaders, 1.0, "exactly one node says it leads");
    // The leader timed each SET from receipt to reply.
    let s = scrape(leader);
    let set = s
        .samples
        .iter()
        .find(|m| m.metric == "ocean_liner_request_seconds" && m.labels.get("op") == Some("set"))
        .expect("a SET latency histogram");
    let Value::Histogram(buckets) = &set.value else {
        panic!("request_seconds is a histogram")
    };
    assert!(buckets.last().unwrap().count >= 200.0, "{buckets:?}");
    // Per shard: the leader's one UDP shard took every datagram.
    let shard0 = s
        .samples
        .iter()
        .find(|m| {
            m.metric == "ocean_liner_slot_requests_total"
                && m.labels.get("door") == Some("udp")
                && m.labels.get("shard") == Some("0")
        })
        .expect("per-shard counters");
    assert!(
        matches!(shard0.value, Value::Counter(n) if n >= 200.0),
        "{shard0:?}"
    );
    assert_eq!(
        http_get(cluster.nodes[leader].metrics_port, "/nope").map(|r| r.0),
        Some(404)
    );
    // `stats --json`: one object, numbers as numbers.
    let out = Command::new(BIN)
        .args(["stats", "--json", "--server"])
        .arg(cluster.client_addrs()[leader].to_string())
        .output()
        .unwrap();
    let json = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(json.starts_with('{') && json.ends_with('}'), "{json}");
    assert!(
        json.contains("\"role\":\"leader\"") && json.contains("\"keys\":200"),
        "{json}"
    );
    cluster.kill9(leader);
    for k in (0..3).filter(|&k| k != leader) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match http_get(cluster.nodes[k].metrics_port, "/readyz") {
                Some((200, _)) => break,
                Some((503, body)) if Instant::now() < deadline => {
                    assert!(body.starts_with("not ready: "), "{body}");
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => panic!("node {k} /readyz after the leader's kill: {other:?}"),
            }
        }
    }
}

/// SIGTERM on the leader hands leadership to a follower before the node stops: a client
/// writing throughout sees no failed write, none of its writes waits a second, the old
/// leader says it handed over and exits cleanly, and every acknowledged write is there.
#[test]
fn sigterm_on_the_leader_hands_leadership_over() {
    let mut cluster = Cluster::start(3);
    let (leader, term, _) = cluster
        .wait_for_leader(None, Duration::from_secs(10))
        .expect("a leader is elected");
    let addrs = cluster.client_addrs();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let opts = ClientOptions {
                deadline: Duration::from_secs(10),
                ..ClientOptions::default()
            };
            let mut client = Client::connect_cluster(&addrs, opts).unwrap();
            let mut written = Vec::new();
            let mut slowest = Duration::ZERO;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let began = Instant::now();
                let key = format!("h{i}");
                client
                    .set(&key, b"v")
                    .unwrap_or_else(|e| panic!("write {i} failed: {e}"));
                slowest = slowest.max(began.elapsed());
                written.push(key);
                i += 1;
            }
            (written, slowest)
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let pid = cluster.nodes[leader].child.as_ref().unwrap().id();
    let killed = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = cluster.nodes[leader]
        .child
        .as_mut()
        .unwrap()
        .wait()
        .unwrap();
    cluster.nodes[leader].child = None;
    assert!(status.success(), "the old leader exited with {status}");
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let (written, slowest) = writer.join().unwrap();
    let log = cluster.stderr_text(leader);
    assert!(log.contains("handed leadership over in"), "{log}");
    let line = log
        .lines()
        .find(|l| l.contains("handed leadership over in"));
    eprintln!("{line:?}; slowest write {slowest:?} of {}", written.len());
    assert!(
        slowest < Duration::from_secs(1),
        "a write waited {slowest:?} across the hand-over"
    );
    let (next, next_term, _) = cluster
        .wait_for_leader(Some(leader), Duration::from_secs(5))
        .expect("a new leader");
    assert_ne!(next, leader);
    assert!(next_term > term);
    let opts = ClientOptions {
        deadline: Duration::from_secs(10),
        ..ClientOptions::default()
    };
    let mut client = Client::connect_cluster(cluster.client_addrs(), opts).unwrap();
    for key in written.iter().step_by(13).chain(written.last()) {
        assert_eq!(
            client.get(key).unwrap().as_deref(),
            Some(&b"v"[..]),
            "{key}"
        );
    }
}
