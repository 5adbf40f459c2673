//! The server's flags, the cluster layout they describe, and the timing constants of a
//! node.

use super::*;

/// Where a shard's UDP loop runs when the RESP door is open (`--shard-loop`). Measured
/// on the test machine (three rounds, one binary): as a task of the door's executor, UDP
/// GETs ran 30% faster and UDP SETs 9% faster than on a thread beside it, RESP GETs at
/// pipeline 16 the same and at pipeline 1 6% slower; so the task is the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ShardLoop {
    /// A thread of its own, pinned to the core the door's executor runs on.
    Thread,
    /// A task of the door's glommio executor.
    Door,
}

/// Server settings (the command line's flags).
#[derive(Debug, Clone, clap::Args)]
pub struct ServerConfig {
    /// Cores to use: core 0 of the set runs replication, the others run shards. With 1,
    /// one shard and replication share the core. Default: every core this process may use.
    #[arg(long)]
    pub cores: Option<usize>,
    /// Directory for the log, the map and its checkpoints.
    #[arg(long, default_value = "./data")]
    pub data_dir: PathBuf,
    /// UDP port for clients [default: 9000 + --node-id].
    #[arg(long)]
    pub client_port: Option<u16>,
    /// Address to listen on. The protocol has no authentication: expose it only on a
    /// network you trust (e.g. --listen-ip 0.0.0.0 on a private network).
    #[arg(long, default_value = "127.0.0.1")]
    pub listen_ip: IpAddr,
    /// TCP port for Redis clients (RESP2; off unless given). Every shard core accepts on
    /// it, on --listen-ip.
    #[arg(long)]
    pub resp_port: Option<u16>,
    /// RESP connections each shard core accepts at most (beyond them a new connection is
    /// told "max number of clients reached" and closed).
    #[arg(long, default_value_t = 10_000, value_parser = clap::builder::TypedValueParser::map(clap::value_parser!(u64).range(1..=1_000_000), |v| v as usize))]
    pub resp_connections_max: usize,
    /// Read settings from this TOML file first (keys are these flags' names without the
    /// dashes); a flag given on the command line overrides the file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Serve Prometheus metrics on http://HOST:PORT/metrics, with /livez and /readyz
    /// (off unless given).
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
    /// With --resp-port: where each shard's UDP loop runs — on a thread of its own beside
    /// the door's executor on the same core, or as a task of that executor.
    #[arg(long, value_enum, default_value_t = ShardLoop::Door)]
    pub shard_loop: ShardLoop,
    /// Milliseconds of writes batched into one log entry.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub batch_window_ms: u64,
    /// Seal a window early once one shard's buffer holds this many KiB.
    #[arg(long, default_value_t = 8192, value_parser = clap::value_parser!(u64).range(4..=65_536))]
    pub window_kib_max: u64,
    /// Do not pin threads to cores (for shared hosts, or several nodes on one machine).
    #[arg(long)]
    pub no_pin: bool,
    /// The scheduler slice, in µs, asked for the replication and shard threads (Linux
    /// 6.12+ EEVDF, `sched_setattr`): a thread with a short slice that wakes (a durable
    /// write done, a datagram in) preempts another process on its core sooner instead
    /// of waiting for that process's slice to run out. 0 keeps the kernel's default.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(0..=100_000))]
    pub sched_slice_us: u64,
    /// As leader, log a SET that the next write of its key in the same entry sets again
    /// as a NOP keeping only its session (retries stay exactly-once). Fewer bytes to
    /// disk and followers when a few keys take most writes, for more work on the
    /// replication core: measured, 32% fewer disk bytes per SET under a zipfian load and
    /// 14% fewer SETs/s when that core is the bottleneck, so it is off by default.
    #[arg(long)]
    pub drop_overwritten_sets: bool,
    /// MiB of recent log entries kept in memory: what the leader sends to followers and,
    /// before the value cache has them, values longer than 63 bytes (older entries are
    /// read from the disk with O_DIRECT).
    #[arg(long, default_value_t = 64)]
    pub log_cache_mib: usize,
    /// MiB of values kept in memory for GETs: applied SETs put theirs there, GETs that
    /// read one from the disk too; evicted by how often they are read (CLOCK order).
    /// At most 16383. Default: a quarter of the memory this process may use (the
    /// machine's, or its cgroup's limit if lower), at least 64.
    #[arg(long,
          value_parser = clap::builder::TypedValueParser::map(clap::value_parser!(u64).range(0..=16383), |v| v as usize))]
    pub value_cache_mib: Option<usize>,
    /// MiB of one log segment file; old segments are deleted once their live values are
    /// copied elsewhere and a checkpoint covers them.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=512))]
    pub segment_mib: u64,
    /// MiB the segments may take on disk before the cleaner copies the live values of
    /// any segment up to 90% live (below it, only of segments where at most 25% of the
    /// values are still live). Without it, only the 25% rule applies.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub disk_target_mib: Option<u64>,
    /// MiB per second the cleaner may read and write at most.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..))]
    pub clean_mib_per_s: u64,
    /// MiB of Raft log a cluster node keeps for followers that fall behind, beyond what a
    /// checkpoint covers. A follower that needs older entries (it was down long, or lost
    /// its data) is sent a snapshot of the live data instead.
    #[arg(long, default_value_t = 256)]
    pub raft_log_retain_mib: u64,
    /// MiB per second a snapshot (to a follower, or a backup) is streamed at most: it reads
    /// the segments, and at the disk's full speed it would delay the log's writes.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub snapshot_mib_per_s: u64,
    /// Seconds between checkpoints of the map.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub checkpoint_interval_s: u64,
    /// Peer addresses (HOST:PORT for Raft traffic over TCP) of every node, in node-id
    /// order, comma-separated: the voters a new cluster starts with. Once the cluster
    /// has recorded its membership (after its first checkpoint or membership change) the
    /// recorded one holds and only this node's own entry is used. Without it the node is
    /// a cluster of one.
    #[arg(long, value_delimiter = ',')]
    pub peers: Vec<String>,
    /// This node's position in --peers (0-based).
    #[arg(long, default_value_t = 0)]
    pub node_id: usize,
    /// Identifies the cluster in peer handshakes [default: derived from --peers].
    #[arg(long)]
    pub cluster_id: Option<u64>,
    /// Start as a new node of a running cluster, with no say until the cluster adds it
    /// (`ocean-liner member add`): it waits for the leader to send it the data. Needs
    /// --cluster-id (`ocean-liner member list` prints it) and this node's own entry in
    /// --peers, at --node-id (the other entries are not used).
    #[arg(long)]
    pub join: bool,
    /// How GETs are made linearizable: a leader lease (no extra round trip; assumes clock
    /// rates differ by less than 20%), or a ReadIndex round per window.
    #[arg(long, value_enum, default_value_t = ReadMode::Lease)]
    pub read_mode: ReadMode,
    /// When to compress the Raft messages sent to peers (LZ4, on each peer's sender
    /// thread, only messages of 16 KiB or more that shrink by an eighth): never; for 30 s
    /// after the link to a peer last lagged (256 KiB sent and not yet acknowledged, or a
    /// message queued over 20 ms); or always. Turn it on only once every member runs a
    /// build that reads compressed messages.
    #[arg(long, value_enum, default_value_t = transport::PeerCompression::Off)]
    pub peer_compression: transport::PeerCompression,
}

impl ServerConfig {
    /// The value cache's budget in MiB: the flag's, or [`default_value_cache_mib`] of the
    /// memory this process may use.
    pub(super) fn value_cache_mib(&self) -> usize {
        self.value_cache_mib
            .unwrap_or_else(|| default_value_cache_mib(host::memory_limit_bytes()))
    }
}

/// The value cache's default budget in MiB for a process that may use `memory` bytes: a
/// quarter of it (the rest for the map's pages, the entry cache, the kernel's buffers and
/// other programs), between 64 and the flag's ceiling; 1024 when the limit is unknown. The
/// ring is backed by memory only as values fill it, so a budget no load reaches costs
/// nothing.
pub(super) fn default_value_cache_mib(memory: Option<u64>) -> usize {
    match memory {
        Some(bytes) => ((bytes >> 20) / 4).clamp(64, 16383) as usize,
        None => 1024,
    }
}

/// Client socket buffers: a window's burst of requests or replies must fit.
pub(super) const SOCKET_BUFFER_BYTES: usize = 64 << 20;

/// Raft tick.
pub(super) const TICK: Duration = Duration::from_millis(10);
/// Election timeout floor in ticks (150 ms), and the randomization ceiling (300 ms).
pub(super) const ELECTION_TICKS: usize = 15;
pub(super) const ELECTION_TICKS_MAX: usize = 30;
/// Heartbeat interval in ticks (30 ms), on its own timer, independent of windows.
pub(super) const HEARTBEAT_TICKS: usize = 3;
/// A lease lasts this fraction of the election timeout floor (the drift margin).
pub(super) const LEASE_FRACTION: f64 = 0.8;
/// A read round still unanswered after this is issued again.
pub(super) const READ_ROUND_RETRY: Duration = Duration::from_millis(60);

/// The cluster layout the flags describe.
pub(super) struct Cluster {
    pub(super) peers: Vec<SocketAddr>,
    pub(super) node_index: usize,
    pub(super) client_addr: SocketAddr,
    pub(super) client_addrs: Vec<SocketAddr>,
    pub(super) cluster_id: u64,
}

pub(super) fn cluster_layout(config: &ServerConfig) -> anyhow::Result<Cluster> {
    let peers: Vec<SocketAddr> = config
        .peers
        .iter()
        .map(|p| {
            p.to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .ok_or_else(|| {
                    anyhow::anyhow!("--peers: cannot resolve {p:?} (expected HOST:PORT)")
                })
        })
        .collect::<anyhow::Result<_>>()?;
    let n = peers.len().max(1);
    if config.node_id >= n {
        bail!(
            "--node-id {} is out of range: --peers lists {} node(s), so ids run 0..{}",
            config.node_id,
            n,
            n - 1
        );
    }
    let port_of = |k: usize| -> anyhow::Result<u16> {
        u16::try_from(9000 + k).map_err(|_| anyhow::anyhow!("node {k} has no default client port"))
    };
    let client_port = match config.client_port {
        Some(p) => p,
        None => port_of(config.node_id)?,
    };
    let client_addr = if config.listen_ip.is_unspecified() && !peers.is_empty() {
        SocketAddr::new(peers[config.node_id].ip(), client_port)
    } else {
        SocketAddr::new(config.listen_ip, client_port)
    };
    let mut client_addrs = Vec::new();
    for (k, p) in peers.iter().enumerate() {
        client_addrs.push(if k == config.node_id {
            client_addr
        } else {
            SocketAddr::new(p.ip(), port_of(k)?)
        });
    }
    if client_addrs.is_empty() {
        client_addrs.push(client_addr);
    }
    if config.join && (peers.is_empty() || config.cluster_id.is_none()) {
        bail!(
            "--join needs --peers (with this node's own peer address at --node-id) and \
             --cluster-id (ocean-liner member list --peer ADDR prints the cluster's)"
        );
    }
    let cluster_id = config
        .cluster_id
        .unwrap_or_else(|| xxhash_rust::xxh3::xxh3_64(config.peers.join(",").as_bytes()));
    Ok(Cluster {
        peers,
        node_index: config.node_id,
        client_addr,
        client_addrs,
        cluster_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_value_cache_defaults_to_a_quarter_of_memory_within_bounds() {
        assert_eq!(default_value_cache_mib(Some(24 << 30)), 6 << 10);
        assert_eq!(default_value_cache_mib(Some(128 << 20)), 64);
        assert_eq!(default_value_cache_mib(Some(1 << 40)), 16383);
        assert_eq!(default_value_cache_mib(None), 1024);
    }

    #[test]
    fn the_flag_overrides_the_default_budget() {
        #[derive(clap::Parser)]
        struct Flags {
            #[command(flatten)]
            server: ServerConfig,
        }
        let parse = |args: &[&str]| {
            <Flags as clap::Parser>::try_parse_from(
                std::iter::once("ocean-liner").chain(args.iter().copied()),
            )
            .map(|f| f.server)
        };
        assert_eq!(
            parse(&["--value-cache-mib", "0"])
                .unwrap()
                .value_cache_mib(),
            0
        );
        assert_eq!(
            parse(&["--value-cache-mib", "300"])
                .unwrap()
                .value_cache_mib(),
            300
        );
        assert!(parse(&["--value-cache-mib", "16384"]).is_err());
        let auto = parse(&[]).unwrap();
        assert_eq!(auto.value_cache_mib, None);
        // This machine's memory is readable, so the default follows it.
        let memory = host::memory_limit_bytes().expect("/proc/meminfo is readable");
        assert!(memory > 0);
        assert_eq!(
            auto.value_cache_mib(),
            default_value_cache_mib(Some(memory))
        );
    }
}
