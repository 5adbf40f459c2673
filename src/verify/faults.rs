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
    /// NFQUEUE holder threads (see [`Hosts::delay`]): their stop flags and handles.
    holders: Mutex<Vec<Holder>>,
}

/// A thread that holds a node's incoming packets (see [`Hosts::delay`]).
struct Holder {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<io::Result<u64>>,
}

impl Hosts {
    /// Why this machine cannot run the harness, if it cannot.
    pub fn available() -> Result<(), String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("needs root (network namespaces, iptables)".into());
        }
        for tool in ["ip", "iptables", "tc", "nft", "mkfs.ext4", "findmnt"] {
            let found = Command::new(tool)
                .arg("-V")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok();
            if !found {
                return Err(format!(
                    "needs `{tool}` (iproute2, iptables, nftables, e2fsprogs, mount)"
                ));
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
            holders: Mutex::new(Vec::new()),
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

    /// Sends a second copy of each packet node `k` sends, and of each packet the clients
    /// send to it, with probability `percent`% (nftables `numgen` and `dup`).
    pub fn duplicate(&self, k: usize, percent: u32) -> io::Result<()> {
        let mut targets: Vec<(String, Vec<Ipv4Addr>)> = vec![(
            self.ns(&format!("n{k}")),
            (0..NODES)
                .filter(|&o| o != k)
                .map(node_ip)
                .chain([client_ip()])
                .collect(),
        )];
        targets.push((self.ns("c"), vec![node_ip(k)]));
        for (ns, to) in targets {
            let nft = |args: &[&str]| {
                let mut all = vec!["ip", "netns", "exec", &ns, "nft"];
                all.extend_from_slice(args);
                run(&all)
            };
            // The table may exist from an earlier call: `add` keeps it.
            nft(&["add", "table", "ip", "olfdup"])?;
            nft(&[
                "add",
                "chain",
                "ip",
                "olfdup",
                "out",
                "{ type filter hook output priority 0; }",
            ])?;
            for ip in to {
                let ip = ip.to_string();
                nft(&[
                    "add",
                    "rule",
                    "ip",
                    "olfdup",
                    "out",
                    "ip",
                    "daddr",
                    &ip,
                    "numgen",
                    "random",
                    "mod",
                    "100",
                    "<",
                    &percent.to_string(),
                    "dup",
                    "to",
                    &ip,
                ])?;
            }
        }
        Ok(())
    }

    /// Holds each packet node `k` receives for a random time between `min` and `max`
    /// before letting it in, so packets arrive late and out of order: an NFQUEUE rule, and
    /// a thread in the node's namespace that gives the verdicts when each packet's time is
    /// up.
    pub fn delay(&self, k: usize, min: Duration, max: Duration, seed: u64) -> io::Result<()> {
        let ns = self.ns(&format!("n{k}"));
        let netns = format!("/run/netns/{ns}");
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || hold_packets(&netns, min, max, seed, &stop, ready_tx))
        };
        // The queue is bound before the rule sends packets to it.
        match ready_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(io::Error::other("the NFQUEUE holder did not start")),
        }
        self.holders.lock().unwrap().push(Holder { stop, thread });
        run(&[
            "ip",
            "netns",
            "exec",
            &ns,
            "iptables",
            "-A",
            "INPUT",
            "-j",
            "NFQUEUE",
            "--queue-num",
            "0",
            "--queue-bypass",
        ])
    }

    /// Removes every network fault.
    pub fn heal(&self) -> io::Result<()> {
        let _ = run(&[
            "ip",
            "netns",
            "exec",
            &self.ns("c"),
            "nft",
            "delete",
            "table",
            "ip",
            "olfdup",
        ]);
        for k in 0..NODES {
            let ns = self.ns(&format!("n{k}"));
            run(&["ip", "netns", "exec", &ns, "iptables", "-F", "INPUT"])?;
            // No table is fine.
            let _ = run(&[
                "ip", "netns", "exec", &ns, "nft", "delete", "table", "ip", "olfdup",
            ]);
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
        // The rules are gone, so no packet is queued any more: the holders let in what
        // they hold and stop.
        let holders: Vec<Holder> = std::mem::take(&mut *self.holders.lock().unwrap());
        for h in holders {
            h.stop.store(true, Ordering::Relaxed);
            h.thread
                .join()
                .map_err(|_| io::Error::other("an NFQUEUE holder panicked"))??;
        }
        Ok(())
    }
}

/// The NFQUEUE holder of [`Hosts::delay`]: binds queue 0 in the namespace at `netns`,
/// reports on `ready`, then accepts each queued packet once a random time in `[min, max]`
/// has passed since it came; after `stop`, lets in everything still held and returns how
/// many packets it held.
fn hold_packets(
    netns: &str,
    min: Duration,
    max: Duration,
    seed: u64,
    stop: &AtomicBool,
    ready: std::sync::mpsc::Sender<io::Result<()>>,
) -> io::Result<u64> {
    use std::cmp::Reverse;
    let opened = enter(netns).and_then(|()| {
        let mut queue = nfq::Queue::open()?;
        queue.bind(0)?;
        // Metadata only; a full queue lets packets through rather than dropping them.
        queue.set_copy_range(0, 0)?;
        queue.set_fail_open(0, true)?;
        queue.set_queue_max_len(0, 8192)?;
        queue.set_nonblocking(true);
        Ok(queue)
    });
    let mut queue = match opened {
        Ok(q) => {
            let _ = ready.send(Ok(()));
            q
        }
        Err(e) => {
            let _ = ready.send(Err(io::Error::new(e.kind(), e.to_string())));
            return Err(e);
        }
    };
    let mut rng = Rng::new(seed);
    let spread = (max.saturating_sub(min)).as_micros() as u64;
    let mut due: std::collections::BinaryHeap<Reverse<(Instant, u64)>> = Default::default();
    let mut held: HashMap<u64, nfq::Message> = HashMap::new();
    let mut count = 0u64;
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        loop {
            match queue.recv() {
                Ok(mut msg) => {
                    msg.set_verdict(nfq::Verdict::Accept);
                    let wait = min + Duration::from_micros(rng.below(spread + 1));
                    count += 1;
                    due.push(Reverse((Instant::now() + wait, count)));
                    held.insert(count, msg);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        let now = Instant::now();
        while let Some(&Reverse((at, id))) = due.peek() {
            if at > now && !stopping {
                break;
            }
            due.pop();
            if let Some(msg) = held.remove(&id) {
                queue.verdict(msg)?;
            }
        }
        if stopping && held.is_empty() {
            let _ = queue.unbind(0);
            return Ok(count);
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for h in std::mem::take(&mut *self.holders.lock().unwrap()) {
            h.stop.store(true, Ordering::Relaxed);
            let _ = h.thread.join();
        }
        for name in ["c", "n0", "n1", "n2", "b"] {
            let _ = run(&["ip", "netns", "del", &self.ns(name)]);
        }
    }
}

/// Whether the run a name belongs to (the name with its `olf` prefix cut off: the run's
/// process id, then the rest) has no process any more.
fn run_is_gone(after_prefix: &str) -> bool {
    let digits: String = after_prefix
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .parse::<u32>()
        .is_ok_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
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
        if run_is_gone(rest) {
            let _ = run(&["ip", "netns", "del", name]);
        }
    }
    // The blkio groups of runs whose process is gone.
    for e in std::fs::read_dir(BLKIO_ROOT)
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("olf") else {
            continue;
        };
        if run_is_gone(rest) {
            release_blkio_group(&e.path());
        }
    }
}

/// Whether `path` is a mount point (listed in /proc/self/mounts).
fn is_mount_point(path: &Path) -> bool {
    let Ok(path) = path.canonicalize() else {
        return false;
    };
    let want = path.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(want.as_str()))
}

/// Where the blkio cgroup hierarchy (cgroup v1) is mounted.
const BLKIO_ROOT: &str = "/sys/fs/cgroup/blkio";

/// Moves the processes of blkio cgroup `group` back to the root group and removes it
/// (nothing happens if it does not exist).
fn release_blkio_group(group: &Path) {
    if let Ok(procs) = std::fs::read_to_string(group.join("cgroup.procs")) {
        for pid in procs.split_whitespace() {
            let _ = std::fs::write(Path::new(BLKIO_ROOT).join("cgroup.procs"), pid);
        }
    }
    let _ = std::fs::remove_dir(group);
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
    /// The fault file system daemons (see [`Disk::FaultFs`]).
    fault_fs: Vec<Child>,
    extra: Vec<String>,
}

/// What the nodes' data directories are on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disk {
    /// The work directory's file system.
    Plain,
    /// An ext4 file system of this many MiB of its own per node (loop-mounted), so it
    /// can be filled or throttled.
    Loop(u64),
    /// A FUSE pass-through file system per node (`tools/faultfs.py`, over the work
    /// directory) that fails writes or reads, or shortens writes, on request
    /// ([`Cluster::disk_faults`]).
    FaultFs,
}

/// The FUSE fault file system's daemon.
const FAULT_FS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/faultfs.py");
/// The Python that has Debian's python3-fusepy.
const SYSTEM_PYTHON: &str = "/usr/bin/python3";

impl Cluster {
    /// Starts three nodes of `bin` with data and logs under `dir`, their data directories
    /// on `disk`.
    pub fn start(bin: &Path, dir: &Path, disk: Disk) -> io::Result<Cluster> {
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
            fault_fs: Vec::new(),
            extra: Vec::new(),
        };
        if disk == Disk::FaultFs {
            for k in 0..NODES {
                let (backing, mnt) = (dir.join(format!("node-{k}.back")), c.data_dir(k));
                std::fs::create_dir_all(&backing)?;
                std::fs::create_dir_all(&mnt)?;
                let control = c.fault_control(k);
                std::fs::write(&control, "none")?;
                let log = std::fs::File::create(dir.join(format!("faultfs-{k}.log")))?;
                let daemon = Command::new(SYSTEM_PYTHON)
                    .arg(FAULT_FS)
                    .args([&backing, &mnt, &control])
                    .stdout(log.try_clone()?)
                    .stderr(log)
                    .spawn()?;
                c.fault_fs.push(daemon);
                let deadline = Instant::now() + Duration::from_secs(10);
                while !is_mount_point(&mnt) {
                    if Instant::now() > deadline {
                        return Err(io::Error::other(format!(
                            "the fault file system did not mount on {} (needs {SYSTEM_PYTHON} \
                             with python3-fusepy and /dev/fuse; see faultfs-{k}.log)",
                            mnt.display()
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                c.mounts.push(mnt);
            }
        }
        if let Disk::Loop(mib) = disk {
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

    /// The control file of node `k`'s fault file system.
    fn fault_control(&self, k: usize) -> PathBuf {
        self.dir.join(format!("node-{k}.faultfs"))
    }

    /// Sets what node `k`'s fault file system does (a [`Disk::FaultFs`] cluster):
    /// `"eio-write P"`, `"eio-read P"`, `"short-write P"` (each with probability P%) or
    /// `"none"`.
    pub fn disk_faults(&self, k: usize, mode: &str) -> io::Result<()> {
        self.note(format!("node {k}'s file system: {mode}"));
        std::fs::write(self.fault_control(k), mode)?;
        // The daemon reads it every 50 ms.
        std::thread::sleep(Duration::from_millis(120));
        Ok(())
    }

    /// Faults node `k`'s fault file system has injected so far.
    pub fn disk_faults_injected(&self, k: usize) -> u64 {
        let mut path = self.fault_control(k).into_os_string();
        path.push(".count");
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Whether node `k`'s process has exited (it is then forgotten, ready for a restart).
    pub fn exited(&mut self, k: usize) -> bool {
        let gone = match &mut self.nodes[k].child {
            Some(c) => c.try_wait().ok().flatten().is_some(),
            None => true,
        };
        if gone {
            self.nodes[k].child = None;
        }
        gone
    }

    /// The blkio cgroup (v1) node `k` is moved into to slow its disk.
    fn blkio_group(&self, k: usize) -> PathBuf {
        Path::new(BLKIO_ROOT).join(format!("{}n{k}", self.hosts.prefix))
    }

    /// Throttles node `k`'s (loop-mounted) disk to `bytes_per_s` and `iops` for writes and
    /// reads: the process is moved into a blkio cgroup with those limits on its loop device.
    pub fn slow_disk(&mut self, k: usize, bytes_per_s: u64, iops: u64) -> io::Result<()> {
        self.note(format!(
            "slow node {k}'s disk to {bytes_per_s} B/s, {iops} IO/s"
        ));
        let mnt = self.data_dir(k);
        let out = Command::new("findmnt")
            .args(["-n", "-o", "SOURCE", "--target"])
            .arg(&mnt)
            .output()?;
        let source = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let device = source
            .strip_prefix("/dev/")
            .filter(|d| d.starts_with("loop"))
            .ok_or_else(|| io::Error::other(format!("node {k}'s data is not on a loop device")))?;
        let numbers = std::fs::read_to_string(format!("/sys/block/{device}/dev"))?;
        let numbers = numbers.trim();
        let group = self.blkio_group(k);
        std::fs::create_dir_all(&group)?;
        for (file, limit) in [
            ("blkio.throttle.write_bps_device", bytes_per_s),
            ("blkio.throttle.read_bps_device", bytes_per_s),
            ("blkio.throttle.write_iops_device", iops),
            ("blkio.throttle.read_iops_device", iops),
        ] {
            std::fs::write(group.join(file), format!("{numbers} {limit}"))?;
        }
        let pid = self.nodes[k]
            .child
            .as_ref()
            .map(|c| c.id())
            .ok_or_else(|| io::Error::other(format!("node {k} is not running")))?;
        std::fs::write(group.join("cgroup.procs"), pid.to_string())?;
        Ok(())
    }

    /// Ends [`Cluster::slow_disk`] for node `k`: the writes it made under the limit (0 if
    /// none), after which the process is back in the root group and the group is gone.
    pub fn unslow_disk(&mut self, k: usize) -> u64 {
        let group = self.blkio_group(k);
        let writes = std::fs::read_to_string(group.join("blkio.throttle.io_serviced"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut parts = l.split_whitespace();
                let (_, op, n) = (parts.next()?, parts.next()?, parts.next()?);
                (op == "Write").then(|| n.parse::<u64>().ok()).flatten()
            })
            .sum();
        self.note(format!(
            "node {k}'s disk at full speed again ({writes} writes throttled)"
        ));
        release_blkio_group(&group);
        writes
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
        for k in 0..NODES {
            release_blkio_group(&self.blkio_group(k));
        }
        for mnt in &self.mounts {
            let _ = run(&["umount", &mnt.to_string_lossy()]);
        }
        for mut daemon in self.fault_fs.drain(..) {
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
    }
}

/// A fault scenario: what it injects, given the cluster, the current leader and a seeded
/// random source, before the harness heals everything.
pub struct Scenario {
    pub name: &'static str,
    pub what: &'static str,
    /// What each node's data directory is on.
    disk: Disk,
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

/// Ends an EIO fault on node `k`: the disk works again, and the node, which must have
/// stopped on the failed write (it cannot know what reached the disk), is started again
/// as a supervisor would.
fn eio_undo(c: &mut Cluster, k: usize) -> Option<String> {
    let injected = c.disk_faults_injected(k);
    let _ = c.disk_faults(k, "none");
    let stopped = c.exited(k);
    c.note(format!(
        "node {k}: {injected} failed writes, stopped: {stopped}"
    ));
    if stopped && let Err(e) = c.restart(k, false) {
        return Some(format!("node {k} did not restart: {e}"));
    }
    match (injected, stopped) {
        (0, _) => Some(format!("node {k} was never failed a write")),
        (_, false) => Some(format!("node {k} went on after failed writes")),
        _ => None,
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
        disk: Disk::Plain,
        undo: nothing,
        inject: |c, leader, _| {
            c.note(format!("partition {{{leader}}} | {:?}", others(leader)));
            c.hosts.partition(&[leader], &others(leader))
        },
    },
    Scenario {
        name: "minority-majority",
        what: "a random node cut off from the other two",
        disk: Disk::Plain,
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
        disk: Disk::Plain,
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
        disk: Disk::Plain,
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
        disk: Disk::Plain,
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
        name: "duplicate-30",
        what: "30% of the packets each node sends, and clients send it, arrive twice",
        disk: Disk::Plain,
        undo: nothing,
        inject: |c, _, _| {
            for k in 0..NODES {
                c.note(format!("30% duplication from and to node {k}"));
                c.hosts.duplicate(k, 30)?;
            }
            Ok(())
        },
    },
    Scenario {
        name: "delay-reorder",
        what: "every packet a node receives held 5–60 ms at random (late and out of order)",
        disk: Disk::Plain,
        undo: nothing,
        inject: |c, _, rng| {
            for k in 0..NODES {
                c.note(format!("hold packets into node {k} 5-60 ms"));
                let (min, max) = (Duration::from_millis(5), Duration::from_millis(60));
                c.hosts.delay(k, min, max, rng.below(u64::MAX))?;
            }
            Ok(())
        },
    },
    Scenario {
        name: "slow-leader",
        what: "the leader's outgoing link limited to 2 Mbit/s",
        disk: Disk::Plain,
        undo: nothing,
        inject: |c, leader, _| {
            c.note(format!("tbf 2mbit on node {leader}"));
            c.hosts.slow_link(leader, 2000)
        },
    },
    Scenario {
        name: "kill-restart",
        what: "kill -9 of random nodes, each restarted 1.5 s later",
        disk: Disk::Plain,
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
        disk: Disk::Plain,
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
        disk: Disk::Plain,
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
        disk: Disk::Loop(96),
        undo: |c, leader| free_after(c, others(leader)[0], "appends_refused_no_space"),
        inject: |c, leader, _| c.fill_disk(others(leader)[0]),
    },
    Scenario {
        name: "slow-disk-leader",
        what: "the leader's disk throttled to 256 KiB/s and 20 IO/s (blkio cgroup), then freed",
        disk: Disk::Loop(96),
        undo: |c, leader| match c.unslow_disk(leader) {
            0 => Some(format!("node {leader} wrote nothing under the throttle")),
            _ => None,
        },
        inject: |c, leader, _| c.slow_disk(leader, 256 << 10, 20),
    },
    Scenario {
        name: "eio-follower",
        what: "every write of a follower fails with EIO (FUSE); it stops, and is restarted once the disk works",
        disk: Disk::FaultFs,
        undo: |c, leader| eio_undo(c, others(leader)[0]),
        inject: |c, leader, _| c.disk_faults(others(leader)[0], "eio-write 100"),
    },
    Scenario {
        name: "eio-leader",
        what: "every write of the leader fails with EIO (FUSE); it stops, and is restarted once the disk works",
        disk: Disk::FaultFs,
        undo: eio_undo,
        inject: |c, leader, _| c.disk_faults(leader, "eio-write 100"),
    },
    Scenario {
        name: "short-writes",
        what: "a third of every node's writes store only their first half and say so (FUSE)",
        disk: Disk::FaultFs,
        undo: |c, _| {
            let mut problems = Vec::new();
            for k in 0..NODES {
                let _ = c.disk_faults(k, "none");
                if c.disk_faults_injected(k) == 0 {
                    problems.push(format!("node {k} saw no short write"));
                }
                if c.exited(k) {
                    problems.push(format!("node {k} stopped on short writes"));
                }
            }
            (!problems.is_empty()).then(|| problems.join("; "))
        },
        inject: |c, _, _| {
            for k in 0..NODES {
                c.disk_faults(k, "short-write 33")?;
            }
            Ok(())
        },
    },
    Scenario {
        name: "disk-full-leader",
        what: "the leader's file system filled to the last block, then freed",
        disk: Disk::Loop(96),
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
    let mut cluster = Cluster::start(bin, dir, scenario.disk)?;
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
    let writers = start_writers(&cluster, salt, epoch, &history, &stop);
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
    let versions = join_writers(writers)?;
    let run_end = phase(Instant::now());
    injected?;
    healed?;
    let mut history = Arc::try_unwrap(history)
        .unwrap_or_default()
        .into_inner()
        .unwrap_or_default();
    let mut problems: Vec<String> = undone.into_iter().collect();
    read_back_and_check(
        &cluster,
        &mut history,
        versions,
        epoch,
        &mut report,
        &mut problems,
    );
    report.count(&history);
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

/// One row of a soak run: what happened in the interval that ended `at_s` seconds in.
#[derive(Debug, Clone, Default)]
pub struct SoakSample {
    pub at_s: f64,
    /// Operations per second of the background load (`ocean-liner bench`) and of the
    /// recorded clients that succeeded in the interval, and recorded ones that failed.
    pub load_per_s: f64,
    pub recorded_ok_per_s: f64,
    pub recorded_failed: usize,
    pub leader: Option<usize>,
    /// Each node's resident memory and data directory size (MiB; 0 while it is down).
    pub rss_mib: [u64; NODES],
    pub disk_mib: [u64; NODES],
    /// The faults injected in the interval.
    pub faults: String,
}

/// What a soak run saw, and whether its history held.
#[derive(Debug, Clone, Default)]
pub struct SoakReport {
    pub samples: Vec<SoakSample>,
    pub faults_injected: usize,
    /// Times the sampled leader changed.
    pub failovers: usize,
    pub run: Report,
}

/// Faults a soak draws from: every scenario that runs on loop-mounted data directories
/// (the soak's), so all but the fault file system's.
fn soak_scenarios() -> Vec<&'static Scenario> {
    SCENARIOS
        .iter()
        .filter(|s| s.disk != Disk::FaultFs)
        .collect()
}

/// Runs the cluster for `duration` under a background load (`ocean-liner bench`, 90%
/// GETs over 100k keys, from the clients' namespace) and the recorded clients, with a
/// fault drawn at random (seeded) every `every`, held [`HOLD`], then healed. Each
/// `sample_every` it writes a row to `out`; at the end the whole history is checked as in
/// [`run_scenario`].
pub fn soak(
    bin: &Path,
    dir: &Path,
    duration: Duration,
    every: Duration,
    seed: u64,
    out: &mut dyn io::Write,
) -> io::Result<SoakReport> {
    let sample_every = Duration::from_secs(10);
    let _ = std::fs::remove_dir_all(dir);
    let mut cluster = Cluster::start(bin, dir, Disk::Loop(512))?;
    let mut rng = Rng::new(seed);
    let mut report = SoakReport::default();
    report.run.scenario = "soak";
    report.run.seed = seed;
    let Some(first) = cluster.wait_for_leader(Duration::from_secs(15)) else {
        return Err(io::Error::other("no leader was elected"));
    };
    let epoch = cluster.epoch;
    let history = Arc::new(Mutex::new(Vec::<Operation>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let salt = rng.below(1 << 20);
    let writers = start_writers(&cluster, salt, epoch, &history, &stop);
    let servers: Vec<String> = Cluster::client_addrs()
        .iter()
        .map(|a| a.to_string())
        .collect();
    let bench_log = dir.join("bench.log");
    let mut bench = Command::new("ip")
        .args(["netns", "exec", &cluster.hosts.ns("c")])
        .arg(bin)
        .args(["bench", "--server", &servers.join(",")])
        .args([
            "--workload",
            "mixed",
            "--read-ratio",
            "0.9",
            "--keys",
            "100000",
        ])
        .args([
            "--value-size",
            "100",
            "--concurrency",
            "64",
            "--threads",
            "1",
        ])
        .args([
            "--warmup",
            "0",
            "--duration",
            &duration.as_secs().max(1).to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&bench_log)?)
        .spawn()?;
    writeln!(
        out,
        "| t (s) | load ops/s | recorded ok/s | recorded failed | leader | RSS MiB n0/n1/n2 | data MiB n0/n1/n2 | faults |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|---|---|")?;
    let start = Instant::now();
    let mut next_fault = start + every;
    let mut last_leader = Some(first);
    let mut last_sample = start;
    let mut seen_ops = 0usize;
    let mut faults_now: Vec<String> = Vec::new();
    let scenarios = soak_scenarios();
    while start.elapsed() < duration {
        if Instant::now() >= next_fault && start.elapsed() + every / 2 < duration {
            let scenario = scenarios[rng.below(scenarios.len() as u64) as usize];
            let leader = cluster.leader().unwrap_or(first);
            cluster.note(format!("soak: {} (leader {leader})", scenario.name));
            let fault_at = Instant::now();
            let injected = (scenario.inject)(&mut cluster, leader, &mut rng);
            std::thread::sleep(HOLD.saturating_sub(fault_at.elapsed()));
            let undone = (scenario.undo)(&mut cluster, leader);
            cluster.hosts.heal()?;
            if let Err(e) = injected {
                faults_now.push(format!("{} (failed to inject: {e})", scenario.name));
            } else {
                faults_now.push(scenario.name.to_string());
            }
            if let Some(p) = undone {
                cluster.note(format!("soak: {}: {p}", scenario.name));
            }
            // A node a scenario left down comes back.
            for k in 0..NODES {
                if cluster.nodes[k].child.is_none() {
                    cluster.restart(k, false)?;
                }
            }
            report.faults_injected += 1;
            next_fault += every;
        }
        if last_sample.elapsed() >= sample_every {
            let interval = last_sample.elapsed().as_secs_f64();
            last_sample = Instant::now();
            let leader = cluster.leader();
            if leader.is_some() && leader != last_leader {
                if last_leader.is_some() {
                    report.failovers += 1;
                }
                last_leader = leader;
            }
            let (ok, failed) = {
                let h = history.lock().unwrap();
                let fresh = &h[seen_ops.min(h.len())..];
                let ok = fresh.iter().filter(|o| o.output != Output::Unknown).count();
                let failed = fresh.len() - ok;
                seen_ops = h.len();
                (ok, failed)
            };
            let mut sample = SoakSample {
                at_s: start.elapsed().as_secs_f64(),
                load_per_s: recent_bench_rate(&bench_log, sample_every),
                recorded_ok_per_s: ok as f64 / interval,
                recorded_failed: failed,
                leader,
                faults: std::mem::take(&mut faults_now).join(", "),
                ..SoakSample::default()
            };
            for k in 0..NODES {
                sample.rss_mib[k] = cluster.nodes[k]
                    .child
                    .as_ref()
                    .and_then(|c| std::fs::read_to_string(format!("/proc/{}/status", c.id())).ok())
                    .and_then(|st| {
                        st.lines()
                            .find_map(|l| l.strip_prefix("VmRSS:"))
                            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                    })
                    .unwrap_or(0)
                    / 1024;
                sample.disk_mib[k] = dir_bytes(&cluster.data_dir(k)) >> 20;
            }
            writeln!(
                out,
                "| {:.0} | {:.0} | {:.0} | {} | {} | {}/{}/{} | {}/{}/{} | {} |",
                sample.at_s,
                sample.load_per_s,
                sample.recorded_ok_per_s,
                sample.recorded_failed,
                sample.leader.map_or("none".into(), |k| k.to_string()),
                sample.rss_mib[0],
                sample.rss_mib[1],
                sample.rss_mib[2],
                sample.disk_mib[0],
                sample.disk_mib[1],
                sample.disk_mib[2],
                sample.faults
            )?;
            out.flush()?;
            report.samples.push(sample);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    let _ = bench.wait();
    let versions = join_writers(writers)?;
    let mut history = Arc::try_unwrap(history)
        .unwrap_or_default()
        .into_inner()
        .unwrap_or_default();
    let mut problems = Vec::new();
    let mut run = Report {
        scenario: "soak",
        seed,
        ..Report::default()
    };
    read_back_and_check(
        &cluster,
        &mut history,
        versions,
        epoch,
        &mut run,
        &mut problems,
    );
    run.count(&history);
    if !problems.is_empty() {
        run.problem = Some(problems.join("; "));
        keep(&cluster, &history, dir)?;
        run.kept = Some(dir.to_path_buf());
    }
    drop(cluster);
    report.run = run;
    Ok(report)
}

/// The mean of the per-second rates `ocean-liner bench` logged over the last `span`.
fn recent_bench_rate(log: &Path, span: Duration) -> f64 {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let rates: Vec<f64> = text
        .lines()
        .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("ops/s=")))
        .filter_map(|v| v.parse().ok())
        .collect();
    let n = (span.as_secs() as usize).clamp(1, rates.len().max(1));
    let recent = &rates[rates.len().saturating_sub(n)..];
    if recent.is_empty() {
        0.0
    } else {
        recent.iter().sum::<f64>() / recent.len() as f64
    }
}

/// Bytes of the files under `dir` (allocated blocks, as `du` counts).
fn dir_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.blocks() * 512,
                Err(_) => {}
            }
        }
    }
    total
}

/// A recorded client's thread.
type Writer = std::thread::JoinHandle<io::Result<HashMap<String, (u64, u64)>>>;

/// Starts the [`WRITERS`] recorded clients of a run, in the clients' namespace.
fn start_writers(
    cluster: &Cluster,
    salt: u64,
    epoch: Instant,
    history: &Arc<Mutex<Vec<Operation>>>,
    stop: &Arc<AtomicBool>,
) -> Vec<Writer> {
    (0..WRITERS)
        .map(|w| {
            let (history, stop) = (history.clone(), stop.clone());
            let netns = format!("/run/netns/{}", cluster.hosts.ns("c"));
            std::thread::spawn(move || {
                enter(&netns)?;
                let prefix = format!("s{salt}-");
                let servers = Cluster::client_addrs();
                let deadline = Duration::from_millis(1500);
                workload(&servers, w, &prefix, deadline, epoch, &history, &stop)
            })
        })
        .collect()
}

/// Waits for the recorded clients: per client, its keys' (acknowledged, attempted) versions.
fn join_writers(writers: Vec<Writer>) -> io::Result<Vec<HashMap<String, (u64, u64)>>> {
    writers
        .into_iter()
        .map(|t| {
            t.join()
                .map_err(|_| io::Error::other("a client thread panicked"))?
        })
        .collect()
}

impl Report {
    /// Counts a history's operations, acknowledged writes and failed operations.
    fn count(&mut self, history: &[Operation]) {
        self.operations = history.len();
        self.acknowledged_writes = history
            .iter()
            .filter(|o| matches!(o.input, Input::Set(_)) && o.output == Output::Ok)
            .count();
        self.failed_operations = history
            .iter()
            .filter(|o| o.output == Output::Unknown)
            .count();
    }
}

/// Reads every key back once the cluster has a leader again, adds those reads to
/// `history`, counts acknowledged writes the reads do not show, waits for the nodes to
/// converge and checks the history for linearizability: into `report` and `problems`.
fn read_back_and_check(
    cluster: &Cluster,
    history: &mut Vec<Operation>,
    versions: Vec<HashMap<String, (u64, u64)>>,
    epoch: Instant,
    report: &mut Report,
    problems: &mut Vec<String>,
) {
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
    .unwrap_or_else(|_| Err(io::Error::other("the final reader panicked")));
    if after.is_none() {
        problems.push("no leader after healing".to_string());
    }
    match finals {
        Ok(finals) => {
            let mut limits: HashMap<String, (u64, u64)> = HashMap::new();
            for op in history.iter() {
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
    match linearizability::check(history, 50_000_000) {
        CheckResult::Ok => report.linearizable = true,
        CheckResult::Illegal { key, explanation } => problems.push(format!(
            "not linearizable on {}: {explanation}",
            String::from_utf8_lossy(&key)
        )),
        CheckResult::Unknown => problems.push("the linearizability check ran out of budget".into()),
    }
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
