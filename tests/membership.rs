//! Membership changes on a live cluster of real processes, under write load: a fourth node
//! joins as a learner, is promoted, the leader is removed (it hands leadership over
//! first), every node is killed with SIGKILL and restarted, and every acknowledged write
//! is read back. The changes go through the command line (`ocean-liner member …`), as an
//! operator makes them.

mod procs;

use ocean_liner::client::{Client, ClientOptions};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ocean-liner");

fn free_port() -> u16 {
    procs::free_port(40_000)
}

struct Node {
    child: Option<Child>,
    peer_port: u16,
    client_port: u16,
    /// Started with --join (added after the cluster's start).
    joined: bool,
}

struct Cluster {
    nodes: Vec<Node>,
    /// How many nodes the cluster started with (their --peers).
    bootstrap: usize,
    cluster_id: Option<String>,
    dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Cluster {
    fn start(n: usize) -> Cluster {
        let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let mut c = Cluster {
            nodes: Vec::new(),
            bootstrap: n,
            cluster_id: None,
            dir: tmp.path().to_path_buf(),
            _tmp: tmp,
        };
        for _ in 0..n {
            c.new_node(false);
        }
        for k in 0..n {
            c.spawn(k);
        }
        c
    }

    fn new_node(&mut self, joined: bool) -> usize {
        self.nodes.push(Node {
            child: None,
            peer_port: free_port(),
            client_port: free_port(),
            joined,
        });
        self.nodes.len() - 1
    }

    fn peer(&self, k: usize) -> String {
        format!("127.0.0.1:{}", self.nodes[k].peer_port)
    }

    fn client(&self, k: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.nodes[k].client_port))
    }

    fn spawn(&mut self, k: usize) {
        // The bootstrap nodes keep the --peers they started with; a joined node names the
        // peers up to itself (only its own entry is used).
        let upto = if self.nodes[k].joined {
            k + 1
        } else {
            self.bootstrap
        };
        let peers: Vec<String> = (0..upto).map(|i| self.peer(i)).collect();
        let mut cmd = Command::new(BIN);
        cmd.args(["--no-pin", "--cores", "2", "--batch-window-ms", "10"])
            .args(["--peers", &peers.join(","), "--node-id", &k.to_string()])
            .args(["--client-port", &self.nodes[k].client_port.to_string()])
            .arg("--data-dir")
            .arg(self.dir.join(format!("node-{k}")));
        if self.nodes[k].joined {
            cmd.args([
                "--join",
                "--cluster-id",
                self.cluster_id.as_deref().unwrap(),
            ]);
        }
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("node-{k}.stderr")))
            .unwrap();
        let child = cmd.stdout(Stdio::null()).stderr(stderr).spawn().unwrap();
        self.nodes[k].child = Some(child);
    }

    fn kill9(&mut self, k: usize) {
        if let Some(mut c) = self.nodes[k].child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    fn logs(&self) -> String {
        (0..self.nodes.len())
            .map(|k| {
                let text = std::fs::read_to_string(self.dir.join(format!("node-{k}.stderr")))
                    .unwrap_or_default();
                format!("--- node {k}\n{text}")
            })
            .collect()
    }

    /// Runs `ocean-liner member ARGS --peer (node k)`; returns its standard output.
    fn member(&self, k: usize, args: &[&str]) -> String {
        let out = Command::new(BIN)
            .arg("member")
            .args(args)
            .args(["--peer", &self.peer(k), "--timeout", "30"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "member {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// The listing's rows: (id, role) — role is leader, voter or learner.
    fn roles(&self, k: usize) -> Vec<(usize, String)> {
        self.member(k, &["list"])
            .lines()
            .skip(2)
            .map(|l| {
                let mut w = l.split_whitespace();
                (
                    w.next().unwrap().parse().unwrap(),
                    w.next().unwrap().to_string(),
                )
            })
            .collect()
    }

    fn wait_for_leader(&self, among: &[usize], limit: Duration) -> usize {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            for &k in among {
                let opts = ClientOptions {
                    deadline: Duration::from_millis(100),
                    ..ClientOptions::default()
                };
                if let Ok(mut c) = Client::connect(self.client(k), opts)
                    && c.stats().is_ok_and(|s| s.contains("role=leader\n"))
                {
                    return k;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("no leader among {among:?}\n{}", self.logs());
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for k in 0..self.nodes.len() {
            self.kill9(k);
        }
    }
}

/// Writers that SET distinct keys through any of `servers` until stopped; every write a
/// server acknowledged is recorded.
fn start_writers(
    servers: Vec<SocketAddr>,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(String, String)>>>,
) -> Vec<std::thread::JoinHandle<u64>> {
    (0..3)
        .map(|t| {
            let (servers, stop, acked) = (servers.clone(), stop.clone(), acked.clone());
            std::thread::spawn(move || {
                let opts = ClientOptions {
                    deadline: Duration::from_secs(3),
                    ..ClientOptions::default()
                };
                let mut client = Client::connect_cluster(&servers, opts).unwrap();
                let mut failed = 0;
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let (key, value) = (format!("w{t}-{i}"), format!("v{t}-{i}"));
                    match client.set(&key, value.as_bytes()) {
                        Ok(()) => acked.lock().unwrap().push((key, value)),
                        Err(_) => failed += 1,
                    }
                    i += 1;
                }
                failed
            })
        })
        .collect()
}

#[test]
fn a_node_joins_is_promoted_and_the_leader_is_removed_under_write_load() {
    let mut c = Cluster::start(3);
    let first = c.wait_for_leader(&[0, 1, 2], Duration::from_secs(10));
    let listing = c.member(0, &["list"]);
    let cluster_id = listing
        .strip_prefix("cluster id ")
        .and_then(|r| r.split(',').next())
        .unwrap()
        .to_string();
    c.cluster_id = Some(cluster_id);
    let joined = c.new_node(true);
    let servers: Vec<SocketAddr> = (0..=joined).map(|k| c.client(k)).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let writers = start_writers(servers.clone(), stop.clone(), acked.clone());
    std::thread::sleep(Duration::from_millis(500));

    // A new node: started empty, it has no say until the cluster adds it.
    c.spawn(joined);
    std::thread::sleep(Duration::from_millis(300));
    let added = c.member(
        first,
        &[
            "add",
            &joined.to_string(),
            &c.peer(joined),
            &c.client(joined).to_string(),
        ],
    );
    assert!(added.contains("as a learner"), "{added}");
    let roles = c.roles(1);
    assert!(
        roles.contains(&(joined, "learner".to_string())),
        "{roles:?}"
    );
    // It starts from a snapshot (its membership with it), never from the log's start.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(c.dir.join(format!("node-{joined}.stderr")))
        .unwrap_or_default()
        .contains("installed a snapshot")
    {
        assert!(Instant::now() < deadline, "no snapshot\n{}", c.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
    // Promotion waits for the learner to catch up (it gets a snapshot, then the log).
    let promoted = c.member(2, &["promote", &joined.to_string()]);
    assert!(promoted.contains("to voter"), "{promoted}");
    let roles = c.roles(joined);
    assert_eq!(
        roles.iter().filter(|(_, r)| r != "learner").count(),
        4,
        "{roles:?}"
    );
    std::thread::sleep(Duration::from_millis(300));

    // Remove the leader: it hands leadership over first, then the change commits.
    let leader = c.wait_for_leader(&[0, 1, 2, joined], Duration::from_secs(5));
    let removed = c.member(joined, &["remove", &leader.to_string()]);
    assert!(
        removed.contains(&format!("remove node {leader}")),
        "{removed}"
    );
    let remaining: Vec<usize> = (0..=joined).filter(|&k| k != leader).collect();
    let roles = c.roles(remaining[0]);
    assert_eq!(
        roles.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
        remaining,
        "{roles:?}"
    );
    c.kill9(leader);
    // Leadership moves to a named voter on request.
    let now = c.wait_for_leader(&remaining, Duration::from_secs(5));
    let target = *remaining.iter().find(|&&k| k != now).unwrap();
    let moved = c.member(now, &["transfer", &target.to_string()]);
    assert!(moved.contains(&format!("to node {target}")), "{moved}");
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let failed: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();

    // Every remaining node killed and restarted: the membership is in their data.
    for &k in &remaining {
        c.kill9(k);
    }
    for &k in &remaining {
        c.spawn(k);
    }
    let leader = c.wait_for_leader(&remaining, Duration::from_secs(10));
    let roles = c.roles(leader);
    assert_eq!(
        roles.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
        remaining,
        "{roles:?}"
    );
    assert!(roles.iter().all(|(_, r)| r != "learner"), "{roles:?}");
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 100,
        "only {} writes acknowledged",
        acked.len()
    );
    let servers: Vec<SocketAddr> = remaining.iter().map(|&k| c.client(k)).collect();
    let mut client = Client::connect_cluster(
        &servers,
        ClientOptions {
            deadline: Duration::from_secs(5),
            ..ClientOptions::default()
        },
    )
    .unwrap();
    for (key, value) in &acked {
        assert_eq!(
            client.get(key).unwrap().as_deref(),
            Some(value.as_bytes()),
            "acknowledged write {key} lost\n{}",
            c.logs()
        );
    }
    eprintln!(
        "{} writes acknowledged and read back, {failed} not acknowledged (retried through \
         the changes)",
        acked.len()
    );
}

/// A request the membership's rules refuse is answered with the reason, and changes
/// nothing.
#[test]
fn bad_membership_requests_are_refused_with_a_reason() {
    let c = Cluster::start(3);
    c.wait_for_leader(&[0, 1, 2], Duration::from_secs(10));
    for (args, reason) in [
        (vec!["promote", "1"], "already a voter"),
        (vec!["remove", "7"], "not a member"),
        (
            vec!["add", "1", "127.0.0.1:1", "127.0.0.1:2"],
            "already a member",
        ),
        (vec!["transfer", "9"], "no such voter"),
    ] {
        let out = Command::new(BIN)
            .arg("member")
            .args(&args)
            .args(["--peer", &c.peer(2), "--timeout", "5"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
    }
    let roles = c.roles(0);
    assert_eq!(roles.len(), 3, "{roles:?}");
}
