//! The server: one replication core and N-1 shard cores, each a pinned thread.
//!
//! ```text
//!  clients ──UDP──▶ shard 1..N-1 (SO_REUSEPORT) ──window──▶ replication core (core 0)
//!                   │ GET: map + log cache                  │ seal every batch_window_ms
//!                   │                                       │ append (O_DIRECT + fdatasync)
//!  clients ◀──UDP── shard ◀──────── completion ─────────────┘ apply to map
//! ```
//!
//! - [`shard`]: ingress, validation, window, GETs, replies.
//! - [`resp_door`]: Redis clients over TCP (`--resp-port`), a glommio executor per shard
//!   core with a window of its own.
//! - [`window`]: the per-shard (and per-door) window buffer handed to the replication core.
//! - [`replication`]: the thread that drives the replica core (`crate::replica`).
//! - [`transport`]: TCP frames between the nodes of a cluster, and a thread per snapshot
//!   streamed to a follower.
//! - `cleaner.rs`: the thread that reclaims superseded log space
//!   ([`crate::storage::cleaner`]), rate-limited, at a low priority.
//! - this file also starts the `cache-fill` thread (applied values into the value cache,
//!   at a low priority) and the backup listener ([`crate::backup`], TCP on the client
//!   port).
//! - `config.rs`: the flags and the cluster layout they describe; `host.rs`: checks of
//!   the host at start-up, the data directory lock, signals; this file: the wiring.
//!
//! Threads share only the map (its pages carry their own locks), the segment table and
//! the caches (behind mutexes), the window slots, and atomics (statistics, the stop
//! flag). Everything else crosses as messages.
//!
//! Each core runs a plain pinned OS thread rather than a glommio executor: glommio's UDP
//! socket receives one datagram per future (no `recvmmsg` batching), and its DMA files
//! are async-only, which would make the storage engine async and keep the simulator from
//! driving it step by step. A pinned thread with `recvmmsg`/`sendmmsg` and a per-file
//! io_uring keeps the one-thread-per-core shape with batched system calls.

pub mod admin;
mod cleaner;
mod config;
pub mod config_file;
mod host;
pub mod metrics;
pub mod replication;
mod resp_commands;
pub mod resp_door;
pub mod shard;
pub mod transport;
pub mod window;

use crate::consensus::membership::{Membership, NODES_MAX};
use crate::consensus::{NodeConfig, RaftNode};
use crate::ids::NodeId;
use crate::replica::{ReadMode, ReadView, Replica, ReplicaConfig, WaitingReads};
use crate::storage::cleaner::{Cleaner, CleanerOptions};
use crate::storage::engine::EngineOptions;
use crate::storage::io::uring::UringBackend;
use crate::storage::log::LogOptions;
use crate::storage::log::{LogReader, Segments, ValueCache};
use crate::storage::store::Map;
use anyhow::{Context, bail};
use socket2::{Domain, Protocol, Socket, Type};
use std::collections::VecDeque;
use std::fs::File;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use window::WindowSlot;

pub use config::ServerConfig;
use config::*;
use host::*;
pub use host::{Pacer, run_in_background};

/// Counters shown by STATS.
#[derive(Debug, Default)]
pub struct Stats {
    pub term: AtomicU64,
    pub applied_index: AtomicU64,
    pub leader_changes: AtomicU64,
    /// Entries from the leader refused because the disk was full.
    pub appends_refused_no_space: AtomicU64,
    pub election_timeout_ms: AtomicU64,
    pub rtt_us: AtomicU64,
    pub rtt_dev_us: AtomicU64,
    /// UDP requests: single datagrams, and the items of BATCH datagrams.
    pub requests: AtomicU64,
    /// BATCH datagrams received.
    pub batches: AtomicU64,
    pub gets: AtomicU64,
    /// GETs whose key hash the map held for another key (answered NotFound).
    pub hash_collisions: AtomicU64,
    pub dropped: AtomicU64,
    pub rejected: AtomicU64,
    pub busy: AtomicU64,
    pub commit_index: AtomicU64,
    pub entries_written: AtomicU64,
    pub commands_applied: AtomicU64,
    /// SETs this leader dropped from entries because a later SET of the same entry
    /// overwrote them (`crate::replica::dedup`).
    pub sets_dropped: AtomicU64,
    pub last_entry_commands: AtomicU64,
    pub write_errors: AtomicU64,
    pub checkpoints: AtomicU64,
    pub last_checkpoint_us: AtomicU64,
    /// Segment files deleted after checkpoints, and their bytes.
    pub segments_deleted: AtomicU64,
    pub bytes_deleted: AtomicU64,
    /// Cleaning passes, the values they copied, the bytes they read and wrote.
    pub clean_passes: AtomicU64,
    pub values_moved: AtomicU64,
    pub clean_bytes_read: AtomicU64,
    pub clean_bytes_written: AtomicU64,
    pub clean_errors: AtomicU64,
    /// Snapshots streamed to followers and received from a leader, and their bytes.
    pub snapshots_sent: AtomicU64,
    pub snapshot_bytes_sent: AtomicU64,
    pub snapshots_received: AtomicU64,
    pub snapshot_bytes_received: AtomicU64,
    /// Raft frames sent to peers, before and after compression.
    pub peer_wire: Arc<transport::WireCounters>,
    /// The first index this node's Raft log still holds.
    pub first_log_index: AtomicU64,
    /// Time per Raft ready cycle spent persisting and applying.
    pub persist_seconds: metrics::Histogram,
    /// UDP requests from receipt to the reply being queued, by op.
    pub udp_set_seconds: metrics::Histogram,
    pub udp_del_seconds: metrics::Histogram,
    pub udp_get_seconds: metrics::Histogram,
    /// RESP commands, from being parsed to the reply being queued.
    pub resp_write_seconds: metrics::Histogram,
    pub resp_read_seconds: metrics::Histogram,
}

/// One window slot's own counters (a UDP shard's, or a RESP door's).
#[derive(Debug, Default)]
pub struct SlotStats {
    /// Requests (a shard; a BATCH counts its items) or commands (a door) handled.
    pub requests: AtomicU64,
    pub gets: AtomicU64,
    /// Refused as malformed or too large, or unanswerable.
    pub errors: AtomicU64,
    pub busy: AtomicU64,
}

/// State shared by every thread of a node.
pub struct Shared {
    /// One window per shard, then one per RESP door.
    pub windows: Vec<WindowSlot>,
    /// UDP shards (the first windows).
    pub shard_count: usize,
    pub map: Arc<Map>,
    pub segments: Arc<Segments>,
    /// The values kept in memory for GETs (shared with the log readers).
    pub value_cache: Arc<Mutex<ValueCache>>,
    pub stats: Stats,
    /// Per window slot: the shards', then the doors'.
    pub slot_stats: Vec<SlotStats>,
    pub stop: AtomicBool,
    pub shards_idle: AtomicUsize,
    /// Set by a SIGTERM on a leader: the replication core hands leadership over.
    pub transfer_requested: AtomicBool,
    pub replication_done: AtomicBool,
    pub started: Instant,
    pub batch_window_ms: u64,
    pub node_index: usize,
    /// Voters in the cluster (1: a single node), as of the applied membership.
    pub cluster_size: AtomicUsize,
    pub read_mode: ReadMode,
    /// Raft id of the leader (0 = unknown), and whether it is this node.
    pub leader_id: AtomicU64,
    pub is_leader: AtomicBool,
    /// Reads may be served locally until this instant (ns since `started`).
    pub lease_until_ns: AtomicU64,
    /// ReadIndex epochs: a GET that arrives while `read_epoch_next` is E is served once
    /// `read_epoch_done` ≥ E.
    pub read_epoch_next: AtomicU64,
    pub read_epoch_done: AtomicU64,
    pub reads_waiting: AtomicBool,
    /// Each node's client address, by node index (from the membership and peer
    /// handshakes; `None`: unknown).
    pub client_addrs: Mutex<Vec<Option<SocketAddr>>>,
    /// Each node's RESP port as its hello announced it (this node's from its flags; 0:
    /// none or not heard yet), by node index.
    pub resp_ports: Vec<AtomicU16>,
    /// This node's last log index (announced to peers when connecting).
    pub last_log_index: Arc<AtomicU64>,
    /// Files of segments released by checkpoints, to remove in this order.
    pub released_files: Mutex<VecDeque<PathBuf>>,
}

impl Shared {
    /// The client address of the current leader, if one is known.
    /// Where a Redis client finds the leader: its client IP and RESP port, once known.
    pub fn leader_resp_addr(&self) -> Option<SocketAddr> {
        let leader = NodeId::from_raft_id(self.leader_id.load(Ordering::Acquire))?;
        let port = self.resp_ports.get(leader.index())?.load(Ordering::Relaxed);
        let ip = (*self.client_addrs.lock().unwrap().get(leader.index())?)?.ip();
        (port != 0).then_some(SocketAddr::new(ip, port))
    }

    pub fn leader_client_addr(&self) -> Option<SocketAddr> {
        let leader = NodeId::from_raft_id(self.leader_id.load(Ordering::Acquire))?;
        let addrs = self.client_addrs.lock().unwrap();
        addrs.get(leader.index()).copied().flatten()
    }

    /// The NotLeader payload: the leader's client address as text, or empty if unknown.
    pub fn leader_hint(&self) -> String {
        self.leader_client_addr()
            .map(|a| a.to_string())
            .unwrap_or_default()
    }

    /// What the replication thread last published for the shards' read decisions.
    pub fn read_view(&self) -> ReadView {
        ReadView {
            read_mode: self.read_mode,
            is_leader: self.is_leader.load(Ordering::Acquire),
            lease_until: Duration::from_nanos(self.lease_until_ns.load(Ordering::Acquire)),
            read_epoch_next: self.read_epoch_next.load(Ordering::Acquire),
        }
    }

    /// The STATS payload: `key=value` lines.
    pub fn stats_text(&self) -> String {
        let s = &self.stats;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let space = self.segments.space();
        let index_bytes = self.map.index_bytes();
        let (cache_bytes, cache_values, (cache_hits, cache_misses)) = {
            let c = self.value_cache.lock().unwrap_or_else(|e| e.into_inner());
            (c.memory_bytes(), c.len(), c.hits_and_misses())
        };
        let role = if self.is_leader.load(Ordering::Relaxed) {
            "leader"
        } else {
            "follower"
        };
        format!(
            "node_id={}\nrole={role}\nterm={}\nleader_id={}\ncommit_index={}\napplied_index={}\n\
             elections_seen={}\nelection_timeout_ms={}\nrtt_estimate_us={}\nrtt_deviation_us={}\n\
             read_mode={:?}\nkeys={}\nmap_pages={}\nindex_bytes={}\nindex_bytes_per_key={:.1}\n\
             value_cache_bytes={}\nvalue_cache_values={}\nvalue_cache_hits={}\n\
             value_cache_misses={}\n\
             entries_written={}\ncommands_applied={}\nsets_dropped={}\nlast_entry_commands={}\nrequests={}\nbatches={}\ngets={}\n\
             hash_collisions={}\nrejected={}\ndropped={}\nbusy={}\nwrite_errors={}\n\
             checkpoints={}\nlast_checkpoint_us={}\ncheckpoint_copy_peak_bytes={}\n\
             appends_refused_no_space={}\n\
             segments={}\ndisk_bytes={}\nentry_bytes={}\nlive_bytes={}\nlive_values={}\n\
             segments_deleted={}\nbytes_deleted={}\nclean_passes={}\nvalues_moved={}\n\
             clean_bytes_read={}\nclean_bytes_written={}\nclean_errors={}\n\
             snapshots_sent={}\nsnapshot_bytes_sent={}\nsnapshots_received={}\n\
             snapshot_bytes_received={}\npeer_raft_bytes={}\npeer_wire_bytes={}\n\
             peer_compressed_frames={}\nfirst_log_index={}\nbatch_window_ms={}\nshards={}\nuptime_s={}\n\
             latency_bounds_us={}\nset_latency_counts={}\nget_latency_counts={}\n",
            self.node_index,
            get(&s.term),
            // The leader's node index, or -1 while none is known (Raft id 0).
            NodeId::from_raft_id(get(&self.leader_id)).map_or(-1, |n| n.index() as i64),
            get(&s.commit_index),
            get(&s.applied_index),
            get(&s.leader_changes),
            get(&s.election_timeout_ms),
            get(&s.rtt_us),
            get(&s.rtt_dev_us),
            self.read_mode,
            self.map.entry_count(),
            self.map.page_count(),
            index_bytes,
            index_bytes as f64 / self.map.entry_count().max(1) as f64,
            cache_bytes,
            cache_values,
            cache_hits,
            cache_misses,
            get(&s.entries_written),
            get(&s.commands_applied),
            get(&s.sets_dropped),
            get(&s.last_entry_commands),
            get(&s.requests),
            get(&s.batches),
            get(&s.gets),
            get(&s.hash_collisions),
            get(&s.rejected),
            get(&s.dropped),
            get(&s.busy),
            get(&s.write_errors),
            get(&s.checkpoints),
            get(&s.last_checkpoint_us),
            self.map.checkpoint_copy_peak_bytes(),
            get(&s.appends_refused_no_space),
            space.segment_count,
            space.file_bytes,
            space.valid_bytes,
            space.live_bytes,
            space.live_count,
            get(&s.segments_deleted),
            get(&s.bytes_deleted),
            get(&s.clean_passes),
            get(&s.values_moved),
            get(&s.clean_bytes_read),
            get(&s.clean_bytes_written),
            get(&s.clean_errors),
            get(&s.snapshots_sent),
            get(&s.snapshot_bytes_sent),
            get(&s.snapshots_received),
            get(&s.snapshot_bytes_received),
            get(&s.peer_wire.raft_bytes),
            get(&s.peer_wire.wire_bytes),
            get(&s.peer_wire.compressed_frames),
            get(&s.first_log_index),
            self.batch_window_ms,
            self.shard_count,
            self.started.elapsed().as_secs(),
            join_u64(metrics::bucket_bounds_us()),
            join_u64(&s.udp_set_seconds.counts()),
            join_u64(&s.udp_get_seconds.counts()),
        )
    }
}

/// Applied entries waiting for the cache-fill thread; beyond this, entries are skipped.
const VALUE_FILL_QUEUE: usize = 64;

/// What the replication thread hands back once the node's state is open.
struct Opened {
    map: Arc<Map>,
    segments: Arc<Segments>,
    value_cache: Arc<Mutex<ValueCache>>,
    cleaner: Cleaner,
    log_readers: Vec<LogReader>,
    applied_index: u64,
    last_index: u64,
    summary: String,
    membership: Membership,
}

/// The peers a node keeps links to: every other member.
pub(super) fn peer_links(membership: &Membership, me: usize) -> Vec<(NodeId, SocketAddr)> {
    membership
        .members()
        .iter()
        .filter(|m| m.id.index() != me)
        .map(|m| (m.id, m.peer_addr))
        .collect()
}

/// Publishes a membership's client addresses and voter count to the shards.
pub(super) fn publish_membership(shared: &Shared, membership: &Membership) {
    let mut addrs = shared.client_addrs.lock().unwrap();
    for m in membership.members() {
        if let Some(slot) = addrs.get_mut(m.id.index())
            && slot.is_none_or(|a| a.ip().is_unspecified() || a.port() == 0)
        {
            *slot = Some(m.client_addr);
        }
    }
    drop(addrs);
    shared
        .cluster_size
        .store(membership.voters().count().max(1), Ordering::Relaxed);
}

/// Starts a node and blocks until SIGTERM/SIGINT, then shuts down cleanly: no new
/// requests, the last window proposed and answered, a checkpoint, and `Ok`.
pub fn run(config: ServerConfig) -> anyhow::Result<()> {
    preflight(&config)?;
    let _lock = lock_data_dir(&config)?;
    // Metrics and health answer from the start, recovery included.
    let metrics_node: metrics::Node = Arc::new(std::sync::OnceLock::new());
    if let Some(addr) = config.metrics_addr {
        metrics::start(addr, metrics_node.clone())?;
    }
    let cluster = cluster_layout(&config)?;
    let available = core_affinity::get_core_ids().unwrap_or_default();
    let cores = config.cores.unwrap_or(available.len().max(1));
    if cores == 0 {
        bail!("--cores must be at least 1");
    }
    if !config.no_pin && cores > available.len() {
        bail!(
            "--cores {cores} asks for more cores than this process may use ({}); lower it, or pass --no-pin",
            available.len()
        );
    }
    let shard_count = cores.saturating_sub(1).max(1);
    let started = Instant::now();
    let sockets: Vec<UdpSocket> = (0..shard_count)
        .map(|i| {
            bind_client_socket(
                SocketAddr::new(config.listen_ip, cluster.client_addr.port()),
                i == 0,
            )
        })
        .collect::<anyhow::Result<_>>()?;

    let snapshot_bytes_per_s = config.snapshot_mib_per_s << 20;
    // Backups are served over TCP on the client port's number.
    let backup_addr = SocketAddr::new(config.listen_ip, cluster.client_addr.port());
    let backup_listener = std::net::TcpListener::bind(backup_addr).map_err(|e| {
        anyhow::anyhow!(
            "cannot listen for backups on TCP {backup_addr}: {e} (another process holds the port: stop it, or choose another --client-port)"
        )
    })?;
    let (backup_tx, backup_rx) = crossbeam_channel::unbounded::<crate::backup::SnapshotRequest>();
    std::thread::Builder::new()
        .name("backup-listen".into())
        .spawn(move || crate::backup::serve(backup_listener, backup_tx, snapshot_bytes_per_s))?;

    install_signal_handlers();
    let no_pin = config.no_pin;
    let available = Arc::new(available);
    let slice = Duration::from_micros(config.sched_slice_us);
    let slice_warned = Arc::new(AtomicBool::new(false));
    let pin = move |slot: usize| {
        if !no_pin && let Some(core) = available.get(slot % available.len().max(1)) {
            core_affinity::set_for_current(*core);
        }
        if !slice.is_zero()
            && let Err(e) = host::set_scheduler_slice(slice)
            && !slice_warned.swap(true, Ordering::Relaxed)
        {
            eprintln!(
                "ocean-liner: warning: cannot set a {} µs scheduler slice ({e}); the kernel's \
                 default stays (--sched-slice-us 0 skips this)",
                slice.as_micros()
            );
        }
    };

    // The replication thread opens the node (RaftNode is single-threaded by design) and
    // sends back what the shards share with it.
    let mut node_config = NodeConfig::new(NodeId::from_index(cluster.node_index), Vec::new());
    node_config.bootstrap = if config.join {
        Membership::default()
    } else if cluster.peers.is_empty() {
        // A single node: its own peer address is never used.
        Membership::bootstrap(
            &[SocketAddr::new(config.listen_ip, 0)],
            &cluster.client_addrs,
        )
    } else {
        Membership::bootstrap(&cluster.peers, &cluster.client_addrs)
    };
    node_config.election_tick = ELECTION_TICKS;
    node_config.max_election_tick = ELECTION_TICKS_MAX;
    node_config.heartbeat_tick = HEARTBEAT_TICKS;
    node_config.seed = cookie_secret_seed();
    node_config.engine = EngineOptions {
        log: LogOptions {
            cache_bytes: config.log_cache_mib << 20,
            segment_bytes: config.segment_mib << 20,
            ..LogOptions::default()
        },
        raft_log_retain_bytes: if cluster.peers.is_empty() {
            0
        } else {
            config.raft_log_retain_mib << 20
        },
        bootstrap_membership: None,
    };
    let (opened_tx, opened_rx) = crossbeam_channel::bounded::<anyhow::Result<Opened>>(1);
    let (node_tx, node_rx) = crossbeam_channel::bounded::<Arc<Shared>>(1);
    let (flush_tx, flush_rx) = crossbeam_channel::bounded(1);
    let (inbound_tx, inbound_rx) = crossbeam_channel::bounded(1 << 16);
    // A window slot per shard, and one per RESP door (one door per shard core).
    let doors = if config.resp_port.is_some() {
        shard_count
    } else {
        0
    };
    let slot_count = shard_count + doors;
    let mut completion_txs = Vec::new();
    let mut completion_rxs = Vec::new();
    for _ in 0..slot_count {
        let (tx, rx) = crossbeam_channel::unbounded();
        completion_txs.push(tx);
        completion_rxs.push(rx);
    }
    let data_dir = config.data_dir.clone();
    let value_cache_mib = config.value_cache_mib();
    let value_cache_bytes = value_cache_mib << 20;
    let cleaner_options = CleanerOptions {
        disk_target_bytes: config.disk_target_mib.map(|m| m << 20),
        ..CleanerOptions::default()
    };
    let clean_bytes_per_s = config.clean_mib_per_s << 20;
    let last_log_index = Arc::new(AtomicU64::new(0));
    let peer_wire = Arc::new(transport::WireCounters::default());
    let transport_config = (!cluster.peers.is_empty()).then(|| transport::TransportConfig {
        node_index: cluster.node_index,
        listen_addr: cluster.peers[cluster.node_index],
        peers: Vec::new(),
        cluster_id: cluster.cluster_id,
        client_addr: cluster.client_addr,
        resp_port: config.resp_port.unwrap_or(0),
        last_index: last_log_index.clone(),
        snapshot_target: None,
        snapshot_bytes_per_s: config.snapshot_mib_per_s << 20,
        compression: config.peer_compression,
        wire: peer_wire.clone(),
    });
    let replication_config = replication::ReplicationConfig {
        batch_window: Duration::from_millis(config.batch_window_ms),
        checkpoint_interval: Duration::from_secs(config.checkpoint_interval_s),
        tick: TICK,
        cluster_id: cluster.cluster_id,
    };
    let replica_config = ReplicaConfig {
        tick: TICK,
        election_ticks: ELECTION_TICKS,
        lease_fraction: LEASE_FRACTION,
        read_mode: config.read_mode,
        read_round_retry: READ_ROUND_RETRY,
        drop_overwritten_sets: config.drop_overwritten_sets,
    };
    let repl_pin = pin.clone();
    let stop_for_transport = Arc::new(AtomicBool::new(false));
    let transport_stop = stop_for_transport.clone();
    let replication = std::thread::Builder::new()
        .name("replication".into())
        .spawn(move || -> anyhow::Result<()> {
            repl_pin(0);
            let opened =
                RaftNode::open(Arc::new(UringBackend), &data_dir, node_config).and_then(|node| {
                    let mut engine = node.engine();
                    let values = Arc::new(Mutex::new(ValueCache::new(value_cache_bytes)));
                    // Applied values reach the cache through a thread of their own, off
                    // the replication core; it ends when the engine (the sender) does.
                    let (fill_tx, fill_rx) = crossbeam_channel::bounded(VALUE_FILL_QUEUE);
                    engine.fill_value_cache_through(fill_tx);
                    let cache = values.clone();
                    std::thread::Builder::new()
                        .name("cache-fill".into())
                        .spawn(move || {
                            host::run_in_background();
                            for applied in fill_rx {
                                crate::storage::engine::fill_value_cache(&cache, applied);
                            }
                        })
                        .map_err(|e| crate::consensus::FatalError(e.to_string()))?;
                    let readers = (0..slot_count)
                        .map(|_| {
                            engine
                                .log_reader()
                                .map(|r| r.with_value_cache(values.clone()))
                        })
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| crate::consensus::FatalError(e.to_string()))?;
                    let report = node.open_report();
                    let summary = format!(
                        "the log up to index {} (from {}; checkpoint at {}, {} replayed{}), {} keys",
                        engine.last_index(),
                        engine.log().first_index(),
                        report.checkpoint_index,
                        report.replayed_entries,
                        report
                            .log
                            .torn_tail_at
                            .map(|o| format!(", torn tail cut at byte {o}"))
                            .unwrap_or_default(),
                        engine.map().entry_count()
                    );
                    let opened = Opened {
                        map: engine.map().clone(),
                        segments: engine.log().segments().clone(),
                        cleaner: engine.cleaner(cleaner_options).with_value_cache(values.clone()),
                        value_cache: values,
                        log_readers: readers,
                        applied_index: engine.applied_index().get(),
                        last_index: engine.last_index().get(),
                        summary,
                        membership: engine.membership(),
                    };
                    drop(engine);
                    Ok((node, opened))
                });
            let node = match opened {
                Ok((node, opened)) => {
                    let _ = opened_tx.send(Ok(opened));
                    node
                }
                Err(e) => {
                    let _ = opened_tx.send(Err(anyhow::anyhow!("{e}")));
                    return Ok(());
                }
            };
            let Ok(shared) = node_rx.recv() else {
                return Ok(());
            };
            let transport = match transport_config {
                Some(mut tc) => {
                    tc.snapshot_target = Some(node.engine().snapshot_target());
                    tc.peers = peer_links(&node.membership(), tc.node_index);
                    Some(transport::Transport::start(tc, inbound_tx, transport_stop)?)
                }
                None => None,
            };
            replication::run(
                Replica::new(node, replica_config),
                shared,
                replication::Inputs {
                    flush_rx,
                    inbound_rx,
                    backup_rx,
                },
                completion_txs,
                transport,
                replication_config,
            )
        })?;
    let opened = match opened_rx.recv() {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => {
            let _ = replication.join();
            bail!("cannot open the data in {}: {e}", config.data_dir.display());
        }
        Err(_) => bail!("the replication thread died while opening the data"),
    };
    eprintln!(
        "ocean-liner: recovered {} in {:.1?}",
        opened.summary,
        started.elapsed()
    );
    let shared = Arc::new(Shared {
        windows: (0..slot_count).map(|_| WindowSlot::default()).collect(),
        shard_count,
        map: opened.map,
        segments: opened.segments,
        value_cache: opened.value_cache,
        stats: Stats {
            peer_wire,
            ..Stats::default()
        },
        stop: AtomicBool::new(false),
        slot_stats: (0..slot_count).map(|_| SlotStats::default()).collect(),
        shards_idle: AtomicUsize::new(0),
        transfer_requested: AtomicBool::new(false),
        replication_done: AtomicBool::new(false),
        started,
        batch_window_ms: config.batch_window_ms,
        node_index: cluster.node_index,
        cluster_size: AtomicUsize::new(1),
        read_mode: config.read_mode,
        leader_id: AtomicU64::new(0),
        is_leader: AtomicBool::new(false),
        lease_until_ns: AtomicU64::new(0),
        read_epoch_next: AtomicU64::new(1),
        read_epoch_done: AtomicU64::new(0),
        reads_waiting: AtomicBool::new(false),
        client_addrs: Mutex::new({
            let mut addrs = vec![None; NODES_MAX];
            addrs[cluster.node_index] = Some(cluster.client_addr);
            addrs
        }),
        resp_ports: (0..NODES_MAX)
            .map(|i| {
                let own = (i == cluster.node_index).then_some(config.resp_port);
                AtomicU16::new(own.flatten().unwrap_or(0))
            })
            .collect(),
        last_log_index: last_log_index.clone(),
        released_files: Mutex::new(VecDeque::new()),
    });
    publish_membership(&shared, &opened.membership);
    last_log_index.store(opened.last_index, Ordering::Release);
    shared
        .stats
        .applied_index
        .store(opened.applied_index, Ordering::Relaxed);
    shared
        .stats
        .commit_index
        .store(opened.applied_index, Ordering::Relaxed);
    let secret = cookie_secret();
    let window_bytes_max = (config.window_kib_max as usize) << 10;
    // Past this a shard answers busy. A window must fit in one log entry (windows that do
    // not fit together are sealed into several): the cap, plus the command or receive
    // batch that crosses it — a value of up to VALUE_SIZE_MAX — stays under the limit.
    let window_bytes_hard_max =
        (window_bytes_max * 8).min(crate::storage::log::COMMAND_LENGTH_MAX / 2);
    let mut completion_rxs = completion_rxs.into_iter();
    let mut log_readers = opened.log_readers.into_iter();
    let mut shard_threads = Vec::new();
    // Shards that run as tasks of their core's door executor, by shard index.
    let in_doors = config.resp_port.is_some() && config.shard_loop == ShardLoop::Door;
    let mut door_shards: Vec<Option<shard::Shard>> = Vec::new();
    for (i, ((socket, completions), log_reader)) in sockets
        .into_iter()
        .zip(completion_rxs.by_ref().take(shard_count))
        .zip(log_readers.by_ref().take(shard_count))
        .enumerate()
    {
        let shard = shard::Shard {
            index: i,
            socket,
            shared: shared.clone(),
            log_reader,
            completions,
            flush_tx: flush_tx.clone(),
            cookie_secret: secret,
            window_bytes_max,
            window_bytes_hard_max,
            waiting_reads: WaitingReads::default(),
            log_reads: Vec::new(),
            log_read_keys: Vec::new(),
            reading_gets: std::collections::HashMap::new(),
            next_read_tag: 0,
            log_read_misses: Vec::new(),
            turn_started: Instant::now(),
            turn_gets: 0,
        };
        if in_doors {
            door_shards.push(Some(shard));
            continue;
        }
        let core_slot = if cores == 1 { 0 } else { i + 1 };
        let pin = pin.clone();
        shard_threads.push(
            std::thread::Builder::new()
                .name(format!("shard-{i}"))
                .spawn(move || {
                    pin(core_slot);
                    shard.run()
                })?,
        );
    }
    if let Some(port) = config.resp_port {
        let addr = SocketAddr::new(config.listen_ip, port);
        let listeners = (0..doors)
            .map(|_| resp_door::listen(addr))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot listen for Redis clients on TCP {addr}: {e} (another process holds the port: stop it, or choose another --resp-port)"
                )
            })?;
        let doors_iter = completion_rxs.zip(log_readers).zip(listeners);
        for (d, ((completions, log_reader), listener)) in doors_iter.enumerate() {
            // RESP sessions' client ids: random, so they never meet a UDP client's.
            let base = u64::from_le_bytes(cookie_secret()[..8].try_into().unwrap_or([0; 8]));
            let door = resp_door::DoorConfig {
                client_id_base: base,
                slot: shard_count + d,
                port,
                connections_max: config.resp_connections_max,
                window_bytes_max,
                window_bytes_hard_max,
            };
            let (shared, flush_tx, pin) = (shared.clone(), flush_tx.clone(), pin.clone());
            let shard = door_shards.get_mut(d).and_then(Option::take);
            let core_slot = if cores == 1 { 0 } else { d + 1 };
            shard_threads.push(
                std::thread::Builder::new()
                    .name(format!("resp-{d}"))
                    .spawn(move || {
                        pin(core_slot);
                        let run = resp_door::run(
                            door,
                            listener,
                            shared.clone(),
                            completions,
                            log_reader,
                            flush_tx,
                            shard,
                        );
                        if let Err(e) = run {
                            eprintln!("ocean-liner: the RESP door on TCP port {port} failed: {e}");
                            shared.shards_idle.fetch_add(1, Ordering::AcqRel);
                        }
                    })?,
            );
        }
    }
    let _ = node_tx.send(shared.clone());
    let _ = metrics_node.set(shared.clone());
    let cleaner = {
        let shared = shared.clone();
        let mut cleaner = opened.cleaner;
        std::thread::Builder::new()
            .name("cleaner".into())
            .spawn(move || cleaner::run(&mut cleaner, &shared, clean_bytes_per_s))?
    };
    eprintln!(
        "ocean-liner: node {} serving clients on udp://{} with {shard_count} shard(s) + replication on {cores} core(s){}; {}; data in {}; value cache {value_cache_mib} MiB",
        cluster.node_index,
        cluster.client_addr,
        if config.no_pin { " (unpinned)" } else { "" },
        if cluster.peers.is_empty() {
            "single node".to_string()
        } else {
            format!("peers {:?}", cluster.peers)
        },
        config.data_dir.display()
    );
    host::sd_notify(&format!(
        "READY=1\nSTATUS=serving on udp://{}, node {}",
        cluster.client_addr, cluster.node_index
    ));
    while !STOP_SIGNAL.load(Ordering::SeqCst) && !replication.is_finished() {
        std::thread::sleep(Duration::from_millis(20));
    }
    host::sd_notify("STOPPING=1");
    if shared.cluster_size.load(Ordering::Relaxed) > 1
        && shared.is_leader.load(Ordering::Acquire)
        && !replication.is_finished()
    {
        // Hand leadership over first, so clients see a new leader at once rather than
        // after an election timeout.
        let began = Instant::now();
        shared.transfer_requested.store(true, Ordering::Release);
        while shared.is_leader.load(Ordering::Acquire)
            && began.elapsed() < HANDOVER_WAIT
            && !replication.is_finished()
        {
            std::thread::sleep(Duration::from_millis(2));
        }
        if shared.is_leader.load(Ordering::Acquire) {
            eprintln!(
                "ocean-liner: no follower took over leadership within {} ms; stopping anyway",
                HANDOVER_WAIT.as_millis()
            );
        } else {
            eprintln!(
                "ocean-liner: handed leadership over in {} ms",
                began.elapsed().as_millis()
            );
        }
    }
    eprintln!("ocean-liner: stopping: finishing the current window and checkpointing");
    shared.stop.store(true, Ordering::Release);
    let result = replication
        .join()
        .map_err(|_| anyhow::anyhow!("replication thread panicked"))?;
    shared.replication_done.store(true, Ordering::Release);
    stop_for_transport.store(true, Ordering::Release);
    for t in shard_threads {
        let _ = t.join();
    }
    let _ = cleaner.join();
    // What the last checkpoint released.
    cleaner::remove_released_files(&shared);
    result?;
    eprintln!("ocean-liner: stopped cleanly");
    Ok(())
}

fn join_u64(values: &[u64]) -> String {
    values
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// How long a stopping leader waits for a follower to take over.
const HANDOVER_WAIT: Duration = Duration::from_secs(3);

fn cookie_secret_seed() -> u64 {
    u64::from_le_bytes(cookie_secret()[..8].try_into().unwrap())
}
