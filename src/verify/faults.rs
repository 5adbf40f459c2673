//! Faults on real processes: a three-node cluster of real `ocean-liner` processes, each in
//! a network namespace of its own, joined through a bridge namespace, with the clients in a
//! fourth; faults are injected with the kernel's own tools (iptables, tc, signals, the
//! file system) while clients run a recorded workload, then healed; the history is checked
//! for linearizability and for acknowledged writes lost.
//!
//! ```text
//!   <p>n0 10.177.0.10 ─┐
//!   <p>n1 10.177.0.11 ─┼─ br0 in <p>b
//!   <p>n2 10.177.0.12 ─┤
//!   <p>c  10.177.0.100 ┘  (clients: their threads enter this namespace)
//! ```
//!
//! `<p>` is `olf` and the harness's process id, so runs side by side do not meet, and a
//! run finds and removes what an interrupted run left behind (namespaces whose process is
//! gone). Everything a run creates lives in its namespaces and its work directory: dropping
//! [`Hosts`] removes the namespaces, and with them the veth pairs, the bridge and every
//! iptables rule and qdisc. Needs root; [`Hosts::available`] says why not.
//!
//! Each scenario is reproducible from its seed: the seed picks the nodes faults hit and
//! the workload's keys. A failing run keeps its work directory: the history, the fault
//! schedule and each node's log.

use crate::client::{Client, ClientOptions};
use crate::verify::linearizability::{self, CheckResult, Input, Operation, Output};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const NODES: usize = 3;
const PEER_PORT: u16 = 8000;
const CLIENT_PORT: u16 = 9000;

/// The address of node `k` on the bridge.
pub fn node_ip(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 177, 0, 10 + k as u8)
}

/// The clients' address on the bridge.
pub fn client_ip() -> Ipv4Addr {
    Ipv4Addr::new(10, 177, 0, 100)
}

/// Runs a command, failing with its standard error.
fn run(args: &[&str]) -> io::Result<()> {
    let out = Command::new(args[0]).args(&args[1..]).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// The namespaces of one run.
pub struct Hosts {
    prefix: String,
}

impl Hosts {
    /// Why this machine cannot run the harness, if it cannot.
    pub fn available() -> Result<(), String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("needs root (network namespaces, iptables)".into());
        }
        for tool in ["ip", "iptables", "tc"] {
            let found = Command::new(tool)
                .arg("-V")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok();
            if !found {
                return Err(format!("needs `{tool}` (iproute2, iptables)"));
            }
        }
        Ok(())
    }

    /// Creates the bridge, node and client namespaces, after removing what interrupted
    /// runs left.
    pub fn create() -> io::Result<Hosts> {
        remove_leftovers();
        let hosts = Hosts {
            prefix: format!("olf{}", std::process::id()),
        };
        let b = hosts.ns("b");
        run(&["ip", "netns", "add", &b])?;
        run(&["ip", "-n", &b, "link", "add", "br0", "type", "bridge"])?;
        run(&["ip", "-n", &b, "link", "set", "br0", "up"])?;
        let mut members: Vec<(String, Ipv4Addr)> =
            (0..NODES).map(|k| (format!("n{k}"), node_ip(k))).collect();
        members.push(("c".into(), client_ip()));
        for (name, ip) in members {
            let ns = hosts.ns(&name);
            let (inner, outer) = (
                format!("{}{name}i", hosts.prefix),
                format!("{}{name}o", hosts.prefix),
            );
            run(&["ip", "netns", "add", &ns])?;
            run(&[
                "ip", "link", "add", &inner, "type", "veth", "peer", "name", &outer,
            ])?;
            run(&["ip", "link", "set", &inner, "netns", &ns])?;
            run(&["ip", "link", "set", &outer, "netns", &b])?;
            run(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                &inner,
            ])?;
            run(&["ip", "-n", &ns, "link", "set", &inner, "up"])?;
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
            run(&["ip", "-n", &b, "link", "set", &outer, "master", "br0"])?;
            run(&["ip", "-n", &b, "link", "set", &outer, "up"])?;
        }
        Ok(hosts)
    }

    /// The full name of namespace `name` (`b`, `n0`…, `c`).
    pub fn ns(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Node `k`'s interface name inside its namespace.
    fn node_if(&self, k: usize) -> String {
        format!("{}n{k}i", self.prefix)
    }

    /// Moves the calling thread into the clients' namespace: sockets it opens from now
    /// on live there.
    pub fn enter_clients(&self) -> io::Result<()> {
        enter(&format!("/run/netns/{}", self.ns("c")))
    }

    /// Drops every packet node `to` receives from node `from` (one direction).
    pub fn cut(&self, from: usize, to: usize) -> io::Result<()> {
        let ns = self.ns(&format!("n{to}"));
        let src = node_ip(from).to_string();
        run(&[
            "ip", "netns", "exec", &ns, "iptables", "-A", "INPUT", "-s", &src, "-j", "DROP",
        ])
    }

    /// Cuts both directions between every node of `a` and every node of `b`.
    pub fn partition(&self, a: &[usize], b: &[usize]) -> io::Result<()> {
        for &x in a {
            for &y in b {
                self.cut(x, y)?;
                self.cut(y, x)?;
            }
        }
        Ok(())
    }

    /// Drops each packet node `k` receives (clients' too) with probability `percent`%.
    pub fn loss(&self, k: usize, percent: u32) -> io::Result<()> {
        let ns = self.ns(&format!("n{k}"));
        let p = format!("{:.2}", percent as f64 / 100.0);
        run(&[
            "ip",
            "netns",
            "exec",
            &ns,
            "iptables",
            "-A",
            "INPUT",
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
            &p,
            "-j",
            "DROP",
        ])
    }

    /// Limits what node `k` sends to `kbit` kbit/s (token bucket on its interface).
    pub fn slow_link(&self, k: usize, kbit: u32) -> io::Result<()> {
        let ns = self.ns(&format!("n{k}"));
        run(&[
            "ip",
            "netns",
            "exec",
            &ns,
            "tc",
            "qdisc",
            "add",
            "dev",
            &self.node_if(k),
            "root",
            "tbf",
            "rate",
            &format!("{kbit}kbit"),
            "burst",
            "16kbit",
            "latency",
            "500ms",
        ])
    }

    /// Removes every network fault.
    pub fn heal(&self) -> io::Result<()> {
        for k in 0..NODES {
            let ns = self.ns(&format!("n{k}"));
            run(&["ip", "netns", "exec", &ns, "iptables", "-F", "INPUT"])?;
            // No qdisc is fine.
            let _ = run(&[
                "ip",
                "netns",
                "exec",
                &ns,
                "tc",
                "qdisc",
                "del",
                "dev",
                &self.node_if(k),
                "root",
            ]);
        }
        Ok(())
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for name in ["c", "n0", "n1", "n2", "b"] {
            let _ = run(&["ip", "netns", "del", &self.ns(name)]);
        }
    }
}

/// Deletes the namespaces of runs whose process is gone.
fn remove_leftovers() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix("olf") else {
            continue;
        };
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let Ok(pid) = digits.parse::<u32>() else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run(&["ip", "netns", "del", name]);
        }
    }
}

/// A running node.
struct Node {
    child: Option<Child>,
    paused: bool,
}

/// Three real nodes on [`Hosts`].
pub struct Cluster {
    pub hosts: Hosts,
    bin: PathBuf,
    dir: PathBuf,
    nodes: Vec<Node>,
    schedule: Mutex<Vec<String>>,
    epoch: Instant,
    /// Loop-mounted data directories, unmounted on drop.
    mounts: Vec<PathBuf>,
    extra: Vec<String>,
}

impl Cluster {
    /// Starts three nodes of `bin` with data and logs under `dir`; with `disk_mib`, each
    /// node's data directory is an ext4 file system of that size of its own (loop-mounted),
    /// so it can be filled.
    pub fn start(bin: &Path, dir: &Path, disk_mib: Option<u64>) -> io::Result<Cluster> {
        std::fs::create_dir_all(dir)?;
        let mut c = Cluster {
            hosts: Hosts::create()?,
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
            nodes: (0..NODES)
                .map(|_| Node {
                    child: None,
                    paused: false,
                })
                .collect(),
            schedule: Mutex::new(Vec::new()),
            epoch: Instant::now(),
            mounts: Vec::new(),
            extra: Vec::new(),
        };
        if let Some(mib) = disk_mib {
            for k in 0..NODES {
                let image = dir.join(format!("node-{k}.img"));
                let image_s = image.to_string_lossy().into_owned();
                let mnt = c.data_dir(k);
                std::fs::create_dir_all(&mnt)?;
                run(&["truncate", "-s", &format!("{mib}M"), &image_s])?;
                run(&["mkfs.ext4", "-q", "-F", &image_s])?;
                run(&["mount", "-o", "loop", &image_s, &mnt.to_string_lossy()])?;
                c.mounts.push(mnt);
            }
            // Segments small enough for a small disk.
            // Small segments, so that new ones (which need free blocks) start during a run.
            c.extra = ["--segment-mib", "1", "--raft-log-retain-mib", "4"]
                .map(String::from)
                .to_vec();
        }
        for k in 0..NODES {
            c.spawn(k)?;
        }
        Ok(c)
    }

    /// Fills node `k`'s (loop-mounted) file system to the last block.
    pub fn fill_disk(&self, k: usize) -> io::Result<()> {
        self.note(format!("fill node {k}'s disk"));
        let path = self.data_dir(k).join("filler");
        let file = std::fs::File::create(&path)?;
        use std::os::fd::AsRawFd;
        let mut chunk: i64 = 1 << 30;
        let mut at: i64 = 0;
        while chunk >= 4096 {
            // SAFETY: fallocate on an open descriptor with a valid range.
            if unsafe { libc::fallocate(file.as_raw_fd(), 0, at, chunk) } == 0 {
                at += chunk;
            } else {
                chunk /= 2;
            }
        }
        file.sync_all()
    }

    /// Gives node `k` its space back.
    pub fn free_disk(&self, k: usize) {
        self.note(format!("free node {k}'s disk"));
        let _ = std::fs::remove_file(self.data_dir(k).join("filler"));
    }

    /// Notes a fault in the schedule (kept with a failing run).
    pub fn note(&self, what: impl Into<String>) {
        let line = format!(
            "{:>8.3}s {}",
            self.epoch.elapsed().as_secs_f64(),
            what.into()
        );
        self.schedule.lock().unwrap().push(line);
    }

    fn spawn(&mut self, k: usize) -> io::Result<()> {
        let peers: Vec<String> = (0..NODES)
            .map(|i| format!("{}:{PEER_PORT}", node_ip(i)))
            .collect();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("node-{k}.log")))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.hosts.ns(&format!("n{k}"))])
            .arg(&self.bin)
            .args(["--no-pin", "--cores", "2", "--batch-window-ms", "10"])
            .args(["--listen-ip", &node_ip(k).to_string()])
            .args(["--peers", &peers.join(","), "--node-id", &k.to_string()])
            .args(["--client-port", &CLIENT_PORT.to_string()])
            .arg("--data-dir")
            .arg(self.data_dir(k))
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.nodes[k] = Node {
            child: Some(child),
            paused: false,
        };
        Ok(())
    }

    fn data_dir(&self, k: usize) -> PathBuf {
        self.dir.join(format!("node-{k}"))
    }

    /// The clients' view of the cluster.
    pub fn client_addrs() -> Vec<SocketAddr> {
        (0..NODES)
            .map(|k| SocketAddr::from((node_ip(k), CLIENT_PORT)))
            .collect()
    }

    /// `kill -9` of node `k`.
    pub fn kill9(&mut self, k: usize) {
        self.note(format!("kill -9 node {k}"));
        if let Some(mut c) = self.nodes[k].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Restarts node `k` from its data directory (wiped first when `wipe`).
    pub fn restart(&mut self, k: usize, wipe: bool) -> io::Result<()> {
        if wipe {
            self.note(format!("wipe node {k}'s data directory"));
            // Its contents: the directory itself may be a mount point.
            for e in std::fs::read_dir(self.data_dir(k))?.flatten() {
                let path = e.path();
                let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
            }
        }
        self.note(format!("start node {k}"));
        self.spawn(k)
    }

    /// SIGSTOP (`pause`) or SIGCONT of node `k`.
    pub fn pause(&mut self, k: usize, pause: bool) {
        self.note(format!(
            "{} node {k}",
            if pause { "SIGSTOP" } else { "SIGCONT" }
        ));
        if let Some(c) = &self.nodes[k].child {
            let sig = if pause { libc::SIGSTOP } else { libc::SIGCONT };
            // SAFETY: kill with a child's pid and a valid signal number.
            unsafe { libc::kill(c.id() as libc::pid_t, sig) };
            self.nodes[k].paused = pause;
        }
    }

    /// STATS of node `k`, asked from the clients' namespace.
    pub fn stats(&self, k: usize) -> Option<String> {
        let hosts = &self.hosts;
        std::thread::scope(|s| {
            s.spawn(|| {
                hosts.enter_clients().ok()?;
                let opts = ClientOptions {
                    deadline: Duration::from_millis(300),
                    ..ClientOptions::default()
                };
                Client::connect(Cluster::client_addrs()[k], opts)
                    .ok()?
                    .stats()
                    .ok()
            })
            .join()
            .ok()
            .flatten()
        })
    }

    /// The node that says it leads, if one does (paused and dead nodes are not asked).
    pub fn leader(&self) -> Option<usize> {
        (0..NODES).find(|&k| {
            self.nodes[k].child.is_some()
                && !self.nodes[k].paused
                && self.stats(k).is_some_and(|s| s.contains("role=leader\n"))
        })
    }

    /// A counter from node `k`'s STATS.
    pub fn stat(&self, k: usize, name: &str) -> Option<u64> {
        let stats = self.stats(k)?;
        stats
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
    }

    /// Waits until every node has applied all the leader had committed; how long it took.
    pub fn wait_converged(&self, leader: usize, limit: Duration) -> Option<Duration> {
        let start = Instant::now();
        let target = self.stat(leader, "commit_index")?;
        while start.elapsed() < limit {
            if (0..NODES).all(|k| self.stat(k, "applied_index").is_some_and(|a| a >= target)) {
                return Some(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    pub fn wait_for_leader(&self, limit: Duration) -> Option<usize> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(k) = self.leader() {
                return Some(k);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for k in 0..NODES {
            if let Some(mut c) = self.nodes[k].child.take() {
                // SAFETY: as in `pause`; a stopped process must run again to die cleanly.
                unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGCONT) };
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        for mnt in &self.mounts {
            let _ = run(&["umount", &mnt.to_string_lossy()]);
        }
    }
}

/// A fault scenario: what it injects, given the cluster, the current leader and a seeded
/// random source, before the harness heals everything.
pub struct Scenario {
    pub name: &'static str,
    pub what: &'static str,
    /// Each node's data directory on a file system of this many MiB of its own.
    disk_mib: Option<u64>,
    inject: fn(&mut Cluster, usize, &mut Rng) -> io::Result<()>,
    /// Undoes what `heal` does not (the network is always healed), after checking that the
    /// fault bit: a problem to report if it did not.
    undo: fn(&mut Cluster, usize) -> Option<String>,
}

fn nothing(_: &mut Cluster, _: usize) -> Option<String> {
    None
}

/// Frees node `k`'s disk after checking that counter `stat` shows the full disk was hit.
fn free_after(c: &mut Cluster, k: usize, stat: &str) -> Option<String> {
    let hits = c.stat(k, stat);
    c.note(format!("node {k}: {stat}={hits:?}"));
    c.free_disk(k);
    match hits {
        Some(n) if n > 0 => None,
        _ => Some(format!(
            "node {k}'s full disk was never hit ({stat}={hits:?})"
        )),
    }
}

/// How long a scenario's faults last before they are healed.
const HOLD: Duration = Duration::from_secs(4);

fn others(leader: usize) -> Vec<usize> {
    (0..NODES).filter(|&k| k != leader).collect()
}

/// Every scenario of the suite.
pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "leader-isolated",
        what: "the leader cut off from both followers (clients still reach it)",
        disk_mib: None,
        undo: nothing,
        inject: |c, leader, _| {
            c.note(format!("partition {{{leader}}} | {:?}", others(leader)));
            c.hosts.partition(&[leader], &others(leader))
        },
    },
    Scenario {
        name: "minority-majority",
        what: "a random node cut off from the other two",
        disk_mib: None,
        undo: nothing,
        inject: |c, _, rng| {
            let k = rng.below(NODES as u64) as usize;
            c.note(format!("partition {{{k}}} | {:?}", others(k)));
            c.hosts.partition(&[k], &others(k))
        },
    },
    Scenario {
        name: "one-way",
        what: "the followers stop hearing the leader; the leader still hears them",
        disk_mib: None,
        undo: nothing,
        inject: |c, leader, _| {
            for f in others(leader) {
                c.note(format!("drop {leader} -> {f}"));
                c.hosts.cut(leader, f)?;
            }
            Ok(())
        },
    },
    Scenario {
        name: "bridge",
        what: "two nodes cut from each other, the third (the old leader) sees both",
        disk_mib: None,
        undo: nothing,
        inject: |c, leader, _| {
            let o = others(leader);
            c.note(format!(
                "partition {{{}}} | {{{}}}, {leader} bridges",
                o[0], o[1]
            ));
            c.hosts.partition(&[o[0]], &[o[1]])
        },
    },
    Scenario {
        name: "loss-20",
        what: "every node drops 20% of the packets it receives",
        disk_mib: None,
        undo: nothing,
        inject: |c, _, _| {
            for k in 0..NODES {
                c.note(format!("20% loss into node {k}"));
                c.hosts.loss(k, 20)?;
            }
            Ok(())
        },
    },
    Scenario {
        name: "slow-leader",
        what: "the leader's outgoing link limited to 2 Mbit/s",
        disk_mib: None,
        undo: nothing,
        inject: |c, leader, _| {
            c.note(format!("tbf 2mbit on node {leader}"));
            c.hosts.slow_link(leader, 2000)
        },
    },
    Scenario {
        name: "kill-restart",
        what: "kill -9 of random nodes, each restarted 1.5 s later",
        disk_mib: None,
        undo: nothing,
        inject: |c, _, rng| {
            for _ in 0..2 {
                let k = rng.below(NODES as u64) as usize;
                c.kill9(k);
                std::thread::sleep(Duration::from_millis(1500));
                c.restart(k, false)?;
                std::thread::sleep(Duration::from_millis(500));
            }
            Ok(())
        },
    },
    Scenario {
        name: "pause-leader",
        what: "SIGSTOP of the leader for 2 s (beyond the election timeout), then SIGCONT",
        disk_mib: None,
        undo: nothing,
        inject: |c, leader, _| {
            c.pause(leader, true);
            std::thread::sleep(Duration::from_secs(2));
            c.pause(leader, false);
            Ok(())
        },
    },
    Scenario {
        name: "wiped-follower",
        what: "a follower killed and restarted with an empty data directory",
        disk_mib: None,
        undo: nothing,
        inject: |c, leader, rng| {
            let o = others(leader);
            let k = o[rng.below(2) as usize];
            c.kill9(k);
            c.restart(k, true)
        },
    },
    Scenario {
        name: "disk-full-follower",
        what: "a follower's file system filled to the last block, then freed",
        disk_mib: Some(96),
        undo: |c, leader| free_after(c, others(leader)[0], "appends_refused_no_space"),
        inject: |c, leader, _| c.fill_disk(others(leader)[0]),
    },
    Scenario {
        name: "disk-full-leader",
        what: "the leader's file system filled to the last block, then freed",
        disk_mib: Some(96),
        undo: |c, leader| free_after(c, leader, "write_errors"),
        inject: |c, leader, _| c.fill_disk(leader),
    },
];

/// A small seeded random source (xorshift64*).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

/// What one run of a scenario saw.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub scenario: &'static str,
    pub seed: u64,
    pub operations: usize,
    pub acknowledged_writes: usize,
    pub failed_operations: usize,
    /// Successful operations per second before, during and after the faults.
    pub ok_per_s: [f64; 3],
    pub linearizable: bool,
    pub lost_writes: usize,
    pub keys_checked: usize,
    /// The leader before the faults and after healing.
    pub leaders: (usize, Option<usize>),
    /// How long after the final reads every node had applied all the leader committed.
    pub converged_after: Option<Duration>,
    /// Where the history, schedule and logs were kept (a failed run).
    pub kept: Option<PathBuf>,
    pub problem: Option<String>,
}

/// A read of one key after healing: key, value, call and return times.
type FinalRead = (String, Option<Vec<u8>>, u64, u64);

/// Client threads of a recorded workload, and keys each writes.
pub const WRITERS: usize = 4;
pub const KEYS_PER_WRITER: usize = 5;

/// Runs `scenario` once: a cluster of `bin` under `dir`, clients writing and reading for
/// the whole run, the faults injected and healed, every key read back at the end.
pub fn run_scenario(scenario: &Scenario, seed: u64, bin: &Path, dir: &Path) -> io::Result<Report> {
    let _ = std::fs::remove_dir_all(dir);
    let mut cluster = Cluster::start(bin, dir, scenario.disk_mib)?;
    let mut rng = Rng::new(seed);
    let mut report = Report {
        scenario: scenario.name,
        seed,
        ..Report::default()
    };
    let Some(first) = cluster.wait_for_leader(Duration::from_secs(15)) else {
        return Err(io::Error::other("no leader was elected"));
    };
    cluster.note(format!("node {first} leads"));
    let epoch = cluster.epoch;
    let history = Arc::new(Mutex::new(Vec::<Operation>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let salt = rng.below(1 << 20);
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (history, stop) = (history.clone(), stop.clone());
            let netns = format!("/run/netns/{}", cluster.hosts.ns("c"));
            std::thread::spawn(move || -> io::Result<HashMap<String, (u64, u64)>> {
                enter(&netns)?;
                let prefix = format!("s{salt}-");
                let servers = Cluster::client_addrs();
                let deadline = Duration::from_millis(1500);
                workload(&servers, w, &prefix, deadline, epoch, &history, &stop)
            })
        })
        .collect();
    let phase = |t: Instant| t.duration_since(epoch).as_micros() as u64;
    std::thread::sleep(Duration::from_secs(2));
    let fault_at = Instant::now();
    let fault_start = phase(fault_at);
    let leader = cluster.leader().unwrap_or(first);
    report.leaders.0 = leader;
    let injected = (scenario.inject)(&mut cluster, leader, &mut rng);
    std::thread::sleep(HOLD.saturating_sub(fault_at.elapsed()));
    cluster.note("heal");
    let undone = (scenario.undo)(&mut cluster, leader);
    let healed = cluster.hosts.heal();
    let fault_end = phase(Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let mut versions = Vec::new();
    for t in writers {
        versions.push(
            t.join()
                .map_err(|_| io::Error::other("a client thread panicked"))??,
        );
    }
    let run_end = phase(Instant::now());
    injected?;
    healed?;
    let mut history = Arc::try_unwrap(history)
        .unwrap_or_default()
        .into_inner()
        .unwrap_or_default();
    // Every key read back once the cluster has a leader again.
    let after = cluster.wait_for_leader(Duration::from_secs(15));
    report.leaders.1 = after;
    let netns = format!("/run/netns/{}", cluster.hosts.ns("c"));
    let finals = std::thread::spawn(move || -> io::Result<Vec<FinalRead>> {
        enter(&netns)?;
        let opts = ClientOptions {
            deadline: Duration::from_secs(10),
            ..ClientOptions::default()
        };
        let mut client = Client::connect_cluster(Cluster::client_addrs(), opts)
            .map_err(|e| io::Error::other(e.to_string()))?;
        let mut out = Vec::new();
        for map in &versions {
            for key in map.keys() {
                let call = epoch.elapsed().as_micros() as u64;
                let value = client
                    .get(key)
                    .map_err(|e| io::Error::other(format!("final read of {key}: {e}")))?;
                out.push((key.clone(), value, call, epoch.elapsed().as_micros() as u64));
            }
        }
        Ok(out)
    })
    .join()
    .map_err(|_| io::Error::other("the final reader panicked"))?;
    let mut problems: Vec<String> = undone.into_iter().collect();
    if after.is_none() {
        problems.push("no leader after healing".to_string());
    }
    match finals {
        Ok(finals) => {
            let mut limits: HashMap<String, (u64, u64)> = HashMap::new();
            for op in &history {
                let (Input::Set(v), Ok(key)) = (&op.input, String::from_utf8(op.key.clone()))
                else {
                    continue;
                };
                let version: u64 = String::from_utf8_lossy(v).parse().unwrap_or(0);
                let e = limits.entry(key).or_insert((0, 0));
                if op.output == Output::Ok {
                    e.0 = e.0.max(version);
                }
                e.1 = e.1.max(version);
            }
            for (key, value, call, ret) in finals {
                history.push(Operation {
                    client: 1000,
                    key: key.clone().into_bytes(),
                    input: Input::Get,
                    call,
                    ret: Some(ret),
                    output: Output::Value(value.clone()),
                });
                let got: u64 = value.as_deref().map_or(0, |v| {
                    String::from_utf8_lossy(v).parse().unwrap_or(u64::MAX)
                });
                let (acked, attempted) = limits.get(&key).copied().unwrap_or((0, 0));
                report.keys_checked += 1;
                if got < acked || got > attempted {
                    report.lost_writes += (got < acked) as usize;
                    problems.push(format!(
                        "{key}: read version {got}, acknowledged {acked}, attempted up to {attempted}"
                    ));
                }
            }
        }
        Err(e) => problems.push(e.to_string()),
    }
    if let Some(leader) = after {
        report.converged_after = cluster.wait_converged(leader, Duration::from_secs(30));
        if report.converged_after.is_none() {
            problems.push("the nodes did not converge within 30 s of healing".into());
        }
    }
    report.operations = history.len();
    report.acknowledged_writes = history
        .iter()
        .filter(|o| matches!(o.input, Input::Set(_)) && o.output == Output::Ok)
        .count();
    report.failed_operations = history
        .iter()
        .filter(|o| o.output == Output::Unknown)
        .count();
    let spans = [
        (0, fault_start),
        (fault_start, fault_end),
        (fault_end, run_end),
    ];
    for (i, (from, to)) in spans.into_iter().enumerate() {
        let ok = history
            .iter()
            .filter(|o| o.client < 1000 && o.output != Output::Unknown)
            .filter(|o| o.ret.is_some_and(|r| r >= from && r < to))
            .count();
        report.ok_per_s[i] = ok as f64 / ((to.saturating_sub(from)) as f64 / 1e6).max(1e-3);
    }
    match linearizability::check(&history, 50_000_000) {
        CheckResult::Ok => report.linearizable = true,
        CheckResult::Illegal { key, explanation } => problems.push(format!(
            "not linearizable on {}: {explanation}",
            String::from_utf8_lossy(&key)
        )),
        CheckResult::Unknown => problems.push("the linearizability check ran out of budget".into()),
    }
    if report.acknowledged_writes < 50 {
        problems.push(format!(
            "only {} writes were acknowledged",
            report.acknowledged_writes
        ));
    }
    if !problems.is_empty() {
        report.problem = Some(problems.join("; "));
        keep(&cluster, &history, dir)?;
        report.kept = Some(dir.to_path_buf());
    }
    drop(cluster);
    if report.problem.is_none() {
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(report)
}

/// Moves the calling thread into the network namespace at `netns` (a `/run/netns` path).
fn enter(netns: &str) -> io::Result<()> {
    let file = std::fs::File::open(netns)?;
    use std::os::fd::AsRawFd;
    // SAFETY: setns with a valid namespace descriptor only changes this thread's network
    // namespace.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One recorded client of a test cluster: SETs of increasing versions to
/// `KEYS_PER_WRITER` keys of its own (`{prefix}w{w}-k{i}`), GETs of the other writers'
/// keys, every call recorded in `history` until `stop`. Returns, per own key, (last
/// acknowledged version, last attempted version). The real-process tests and this
/// harness share it.
pub fn workload(
    servers: &[SocketAddr],
    w: usize,
    prefix: &str,
    deadline: Duration,
    epoch: Instant,
    history: &Mutex<Vec<Operation>>,
    stop: &AtomicBool,
) -> io::Result<HashMap<String, (u64, u64)>> {
    let opts = ClientOptions {
        deadline,
        ..ClientOptions::default()
    };
    let mut client =
        Client::connect_cluster(servers, opts).map_err(|e| io::Error::other(e.to_string()))?;
    let mut versions: HashMap<String, (u64, u64)> = HashMap::new();
    let mut version = 0u64;
    let mut i = 0usize;
    let now = || epoch.elapsed().as_micros() as u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let (key, input) = if i.is_multiple_of(2) {
            version += 1;
            let key = format!("{prefix}w{w}-k{}", i / 2 % KEYS_PER_WRITER);
            (key, Input::Set(version.to_string().into_bytes()))
        } else {
            let other = (w + i) % WRITERS;
            (
                format!("{prefix}w{other}-k{}", i % KEYS_PER_WRITER),
                Input::Get,
            )
        };
        let call = now();
        let (ret, output) = match &input {
            Input::Set(v) => {
                let e = versions.entry(key.clone()).or_insert((0, 0));
                e.1 = version;
                match client.set(&key, v) {
                    Ok(()) => {
                        e.0 = version;
                        (Some(now()), Output::Ok)
                    }
                    Err(_) => (None, Output::Unknown),
                }
            }
            _ => match client.get(&key) {
                Ok(v) => (Some(now()), Output::Value(v)),
                Err(_) => (None, Output::Unknown),
            },
        };
        history.lock().unwrap().push(Operation {
            client: w as u64,
            key: key.into_bytes(),
            input,
            call,
            ret,
            output,
        });
    }
    Ok(versions)
}

/// Saves a failed run's history and fault schedule beside the node logs.
fn keep(cluster: &Cluster, history: &[Operation], dir: &Path) -> io::Result<()> {
    let mut text = String::new();
    for op in history {
        let _ = writeln!(text, "{op:?}");
    }
    std::fs::write(dir.join("history.txt"), text)?;
    std::fs::write(
        dir.join("schedule.txt"),
        cluster.schedule.lock().unwrap().join("\n"),
    )
}
