//! The server: one replication core and N-1 shard cores, each a pinned thread.
//!
//! ```text
//!  clients ──UDP──▶ shard 1..N-1 (SO_REUSEPORT) ──window──▶ replication core (core 0)
//!                   │ GET: map + log cache                  │ seal every batch_window_ms
//!                   │                                       │ append (O_DIRECT, RWF_DSYNC)
//!  clients ◀──UDP── shard ◀──────── completion ─────────────┘ apply to map
//! ```
//!
//! - [`shard`]: ingress, validation, window, GETs, replies.
//! - [`window`]: the per-shard window buffer handed to the replication core.
//! - [`replication`]: seal → persist → apply → complete.
//! - [`udp`]: batched datagram IO.
//!
//! Threads share only the map (its pages carry their own locks), the window slots, and
//! atomics (statistics, the stop flag). Everything else crosses as messages.

pub mod replication;
pub mod shard;
pub mod udp;
pub mod window;

use crate::engine::{Engine, EngineOptions};
use crate::io::uring::UringBackend;
use crate::log::LogOptions;
use crate::store::Map;
use anyhow::{Context, bail};
use socket2::{Domain, Protocol, Socket, Type};
use std::fs::File;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use window::WindowSlot;

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
    /// UDP port for clients.
    #[arg(long, default_value_t = 9000)]
    pub client_port: u16,
    /// Address to listen on. The protocol has no authentication: expose it only on a
    /// network you trust (e.g. --listen-ip 0.0.0.0 on a private network).
    #[arg(long, default_value = "127.0.0.1")]
    pub listen_ip: IpAddr,
    /// Milliseconds of writes batched into one log entry.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub batch_window_ms: u64,
    /// Seal a window early once one shard's buffer holds this many KiB.
    #[arg(long, default_value_t = 8192, value_parser = clap::value_parser!(u64).range(4..=65_536))]
    pub window_kib_max: u64,
    /// Do not pin threads to cores (for shared hosts, or several nodes on one machine).
    #[arg(long)]
    pub no_pin: bool,
    /// MiB of recent log entries kept in memory to serve values longer than 63 bytes.
    #[arg(long, default_value_t = 256)]
    pub log_cache_mib: usize,
    /// Seconds between checkpoints of the map.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub checkpoint_interval_s: u64,
}

/// Counters shown by STATS.
#[derive(Debug, Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub gets: AtomicU64,
    pub dropped: AtomicU64,
    pub rejected: AtomicU64,
    pub busy: AtomicU64,
    pub commit_index: AtomicU64,
    pub entries_written: AtomicU64,
    pub commands_applied: AtomicU64,
    pub last_entry_commands: AtomicU64,
    pub write_errors: AtomicU64,
    pub checkpoints: AtomicU64,
    pub last_checkpoint_us: AtomicU64,
}

/// State shared by every thread of a node.
pub struct Shared {
    pub windows: Vec<WindowSlot>,
    pub map: Arc<Map>,
    pub stats: Stats,
    pub stop: AtomicBool,
    pub shards_idle: AtomicUsize,
    pub replication_done: AtomicBool,
    pub started: Instant,
    pub batch_window_ms: u64,
}

impl Shared {
    /// The STATS payload: `key=value` lines.
    pub fn stats_text(&self) -> String {
        let s = &self.stats;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "role=leader\nterm=1\ncommit_index={}\napplied_index={}\nkeys={}\nmap_pages={}\n\
             entries_written={}\ncommands_applied={}\nlast_entry_commands={}\nrequests={}\ngets={}\n\
             rejected={}\ndropped={}\nbusy={}\nwrite_errors={}\ncheckpoints={}\nlast_checkpoint_us={}\n\
             batch_window_ms={}\nshards={}\nuptime_s={}\n",
            get(&s.commit_index),
            get(&s.commit_index),
            self.map.entry_count(),
            self.map.page_count(),
            get(&s.entries_written),
            get(&s.commands_applied),
            get(&s.last_entry_commands),
            get(&s.requests),
            get(&s.gets),
            get(&s.rejected),
            get(&s.dropped),
            get(&s.busy),
            get(&s.write_errors),
            get(&s.checkpoints),
            get(&s.last_checkpoint_us),
            self.batch_window_ms,
            self.windows.len(),
            self.started.elapsed().as_secs(),
        )
    }
}

static STOP_SIGNAL: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP_SIGNAL.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_stop_signal as *const () as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut());
        }
    }
}

/// Checks the host can run the server, with a one-line cause and fix for each failure.
fn preflight(config: &ServerConfig) -> anyhow::Result<()> {
    if let Ok(v) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        match v.trim() {
            "0" => {}
            "1" if unsafe { libc::geteuid() } == 0 => {}
            other => bail!(
                "io_uring is disabled on this host (kernel.io_uring_disabled = {other}); \
                 run `sysctl -w kernel.io_uring_disabled=0` (see kernel-notes.md)"
            ),
        }
    }
    if let Err(e) = io_uring::IoUring::new(4) {
        let hint = match e.raw_os_error() {
            Some(libc::ENOMEM) => "the locked-memory limit is too low for io_uring on this kernel: raise `ulimit -l`",
            Some(libc::EPERM) | Some(libc::ENOSYS) => "a seccomp profile (e.g. a container runtime's default) blocks io_uring: allow io_uring_setup/io_uring_enter",
            _ => "io_uring is unavailable",
        };
        bail!("cannot create an io_uring ({e}): {hint} (see kernel-notes.md)");
    }
    std::fs::create_dir_all(&config.data_dir).with_context(|| {
        format!(
            "cannot create data directory {} (is it writable by this user? choose another with --data-dir)",
            config.data_dir.display()
        )
    })?;
    Ok(())
}

/// Takes an exclusive lock on the data directory so two servers never share it.
fn lock_data_dir(config: &ServerConfig) -> anyhow::Result<File> {
    let path = config.data_dir.join("LOCK");
    let file = File::create(&path).with_context(|| {
        format!("data directory {} is not writable (choose another with --data-dir)", config.data_dir.display())
    })?;
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        bail!(
            "data directory {} is in use by another ocean-liner process (stop it, or choose another --data-dir)",
            config.data_dir.display()
        );
    }
    Ok(file)
}

/// Binds one shard socket with SO_REUSEPORT. The first bind first proves that no other
/// process holds the port, since SO_REUSEPORT would otherwise silently share it.
fn bind_client_socket(addr: SocketAddr, probe: bool) -> anyhow::Result<UdpSocket> {
    let domain = if addr.is_ipv4() { Domain::IPV4 } else { Domain::IPV6 };
    if probe {
        let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
        if let Err(e) = s.bind(&addr.into()) {
            bail!(
                "cannot listen on UDP {addr}: {e} (another process holds the port: stop it, or choose another --client-port)"
            );
        }
    }
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_port(true)?;
    let _ = s.set_recv_buffer_size(8 << 20);
    let _ = s.set_send_buffer_size(8 << 20);
    s.bind(&addr.into())
        .with_context(|| format!("cannot listen on UDP {addr} (choose another --client-port)"))?;
    s.set_read_timeout(Some(Duration::from_millis(1)))?;
    Ok(s.into())
}

fn cookie_secret() -> [u8; 16] {
    let mut secret = [0u8; 16];
    // SAFETY: getrandom writes at most secret.len() bytes into secret.
    let n = unsafe { libc::getrandom(secret.as_mut_ptr().cast(), secret.len(), 0) };
    if n != secret.len() as isize {
        let t = Instant::now().elapsed().as_nanos() ^ (std::process::id() as u128) << 64;
        secret = t.to_le_bytes();
    }
    secret
}

/// Starts a node and blocks until SIGTERM/SIGINT, then shuts down cleanly: no new
/// requests, the last window committed and answered, a checkpoint, and `Ok`.
pub fn run(config: ServerConfig) -> anyhow::Result<()> {
    preflight(&config)?;
    let _lock = lock_data_dir(&config)?;
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
    let options = EngineOptions {
        log: LogOptions {
            cache_bytes: config.log_cache_mib << 20,
            ..LogOptions::default()
        },
    };
    let started = Instant::now();
    let (engine, report) = Engine::open(Arc::new(UringBackend), &config.data_dir, options, None)
        .map_err(|e| anyhow::anyhow!("cannot open the data in {}: {e}", config.data_dir.display()))?;
    eprintln!(
        "ocean-liner: recovered {} log entries (checkpoint at {}, {} replayed{}) with {} keys in {:.1?}",
        report.log.entries,
        report.checkpoint_index,
        report.replayed_entries,
        report.log.torn_tail_at.map(|o| format!(", torn tail cut at byte {o}")).unwrap_or_default(),
        engine.map().entry_count(),
        started.elapsed()
    );
    let addr = SocketAddr::new(config.listen_ip, config.client_port);
    let sockets: Vec<UdpSocket> = (0..shard_count)
        .map(|i| bind_client_socket(addr, i == 0))
        .collect::<anyhow::Result<_>>()?;
    let shared = Arc::new(Shared {
        windows: (0..shard_count).map(|_| WindowSlot::default()).collect(),
        map: engine.map().clone(),
        stats: Stats::default(),
        stop: AtomicBool::new(false),
        shards_idle: AtomicUsize::new(0),
        replication_done: AtomicBool::new(false),
        started,
        batch_window_ms: config.batch_window_ms,
    });
    shared.stats.commit_index.store(engine.applied_index(), Ordering::Relaxed);
    install_signal_handlers();
    let no_pin = config.no_pin;
    let available = Arc::new(available);
    let pin = move |slot: usize| {
        if !no_pin {
            if let Some(core) = available.get(slot % available.len().max(1)) {
                core_affinity::set_for_current(*core);
            }
        }
    };
    let secret = cookie_secret();
    let window_bytes_max = (config.window_kib_max as usize) << 10;
    let (flush_tx, flush_rx) = crossbeam_channel::bounded(1);
    let mut completion_txs = Vec::new();
    let mut shard_threads = Vec::new();
    for (i, socket) in sockets.into_iter().enumerate() {
        let (tx, rx) = crossbeam_channel::unbounded();
        completion_txs.push(tx);
        let shard = shard::Shard {
            index: i,
            socket,
            shared: shared.clone(),
            log_reader: engine.log_reader().map_err(|e| anyhow::anyhow!("{e}"))?,
            completions: rx,
            flush_tx: flush_tx.clone(),
            cookie_secret: secret,
            window_bytes_max,
            window_bytes_hard_max: window_bytes_max * 8,
        };
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
    let replication_config = replication::ReplicationConfig {
        batch_window: Duration::from_millis(config.batch_window_ms),
        checkpoint_interval: Duration::from_secs(config.checkpoint_interval_s),
    };
    let repl_shared = shared.clone();
    let replication = std::thread::Builder::new().name("replication".into()).spawn(move || {
        pin(0);
        replication::run(engine, repl_shared, flush_rx, completion_txs, replication_config)
    })?;
    eprintln!(
        "ocean-liner: serving clients on udp://{addr} with {shard_count} shard(s) + replication on {cores} core(s){}; data in {}",
        if config.no_pin { " (unpinned)" } else { "" },
        config.data_dir.display()
    );
    while !STOP_SIGNAL.load(Ordering::SeqCst) && !replication.is_finished() {
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("ocean-liner: stopping: finishing the current window and checkpointing");
    shared.stop.store(true, Ordering::Release);
    let result = replication.join().map_err(|_| anyhow::anyhow!("replication thread panicked"))?;
    shared.replication_done.store(true, Ordering::Release);
    for t in shard_threads {
        let _ = t.join();
    }
    result?;
    eprintln!("ocean-liner: stopped cleanly");
    Ok(())
}
