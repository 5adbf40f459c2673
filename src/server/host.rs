//! Checks of the host at start-up (io_uring, O_DIRECT, the data directory, the ports),
//! the data directory's lock, stop signals, and the cookie secret.

use super::*;

pub(super) static STOP_SIGNAL: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP_SIGNAL.store(true, Ordering::SeqCst);
}

pub(super) fn install_signal_handlers() {
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

/// Asks the kernel to give the calling thread scheduler slices of `slice` (EEVDF's
/// per-task slice, `sched_setattr` with `sched_runtime` on a normal-policy thread; the
/// kernel clamps it to 0.1–100 ms). Kernels before 6.12 take the call and ignore the slice.
pub(super) fn set_scheduler_slice(slice: Duration) -> std::io::Result<()> {
    /// `struct sched_attr` of `sched_setattr(2)`, up to `sched_util_max`.
    #[repr(C)]
    struct SchedAttr {
        size: u32,
        sched_policy: u32,
        sched_flags: u64,
        sched_nice: i32,
        sched_priority: u32,
        sched_runtime: u64,
        sched_deadline: u64,
        sched_period: u64,
        sched_util_min: u32,
        sched_util_max: u32,
    }
    // The thread's nice value is kept: SCHED_FLAG_KEEP_PARAMS is not for the normal
    // policy, so read it and pass it back.
    // SAFETY: getpriority takes no pointers.
    let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        sched_policy: libc::SCHED_OTHER as u32,
        sched_flags: 0,
        sched_nice: nice,
        sched_priority: 0,
        sched_runtime: slice.as_nanos() as u64,
        sched_deadline: 0,
        sched_period: 0,
        sched_util_min: 0,
        sched_util_max: 0,
    };
    // SAFETY: `attr` is a valid sched_attr whose `size` field gives its length, and it
    // outlives the call; pid 0 is the calling thread.
    let r = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Checks the host can run the server, with a one-line cause and fix for each failure.
pub(super) fn preflight(config: &ServerConfig) -> anyhow::Result<()> {
    // What `ocean-liner doctor` calls fatal stops the start: io_uring first (the data
    // directory is created with it), then the data directory.
    if let Some(f) = crate::doctor::fatal_io_uring() {
        bail!("{}", refusal(&f, config));
    }
    crate::storage::io::create_dir_durable(&crate::storage::io::uring::UringBackend, &config.data_dir).with_context(|| {
        format!(
            "cannot create data directory {} (is it writable by this user? choose another with --data-dir)",
            config.data_dir.display()
        )
    })?;
    if let Some(f) = crate::doctor::fatal_data_dir(&config.data_dir) {
        bail!("{}", refusal(&f, config));
    }
    Ok(())
}

/// Why the server will not start, in doctor's words, with the fix when there is one.
fn refusal(f: &crate::doctor::Finding, config: &ServerConfig) -> String {
    format!(
        "{}: {} (wants {}); `ocean-liner doctor --data-dir {}` checks the host{} (see kernel-notes.md)",
        f.check,
        f.found,
        f.wants,
        config.data_dir.display(),
        f.fix
            .as_ref()
            .map(|c| format!(", and `{c}` fixes this"))
            .unwrap_or_default()
    )
}

/// The memory this process may use: the machine's (`MemTotal`), or its cgroup's limit
/// (v2 `memory.max`, v1 `memory.limit_in_bytes`) if that is lower; `None` if neither can
/// be read.
pub(super) fn memory_limit_bytes() -> Option<u64> {
    let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        let kib = m.lines().find_map(|l| l.strip_prefix("MemTotal:"))?;
        kib.trim().trim_end_matches("kB").trim().parse::<u64>().ok()
    });
    let total = total.map(|kib| kib.saturating_mul(1024));
    let limit = |file: String| {
        // "max" (v2) is no limit; v1 writes a huge number for none, which min() ignores.
        std::fs::read_to_string(file)
            .ok()?
            .trim()
            .parse::<u64>()
            .ok()
    };
    let cgroup = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                if let Some(path) = l.strip_prefix("0::") {
                    limit(format!("/sys/fs/cgroup{}/memory.max", path.trim()))
                } else {
                    let (_, rest) = l.split_once(':')?;
                    let path = rest.strip_prefix("memory:")?;
                    limit(format!(
                        "/sys/fs/cgroup/memory{}/memory.limit_in_bytes",
                        path.trim()
                    ))
                }
            })
        });
    match (total, cgroup) {
        (Some(t), Some(c)) => Some(t.min(c)),
        (t, c) => t.or(c),
    }
}

/// Tells systemd how the service is (`Type=notify`): `READY=1` once recovered and
/// serving, `STOPPING=1` when a stop begins. Nothing without `NOTIFY_SOCKET`.
pub(super) fn sd_notify(state: &str) {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::UnixDatagram;
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(socket) = UnixDatagram::unbound() else {
        return;
    };
    let sent = match path.as_bytes().strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name)
                .and_then(|addr| socket.send_to_addr(state.as_bytes(), &addr))
        }
        None => socket.send_to(state.as_bytes(), &path),
    };
    if let Err(e) = sent {
        eprintln!("ocean-liner: telling systemd {state:?} failed: {e}");
    }
}

/// Takes an exclusive lock on the data directory so two servers never share it.
pub(super) fn lock_data_dir(config: &ServerConfig) -> anyhow::Result<File> {
    let path = config.data_dir.join("LOCK");
    let file = File::create(&path).with_context(|| {
        format!(
            "data directory {} is not writable (choose another with --data-dir)",
            config.data_dir.display()
        )
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
pub(super) fn bind_client_socket(addr: SocketAddr, probe: bool) -> anyhow::Result<UdpSocket> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    if probe {
        let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
        if let Err(e) = s.bind(&addr.into()) {
            bail!(
                "cannot listen on UDP {addr}: {e} (another process holds the port: stop it, or choose another --client-port)"
            );
        }
    }
    crate::net::bind_reuse_port(addr, SOCKET_BUFFER_BYTES, Duration::from_millis(1))
        .with_context(|| format!("cannot listen on UDP {addr} (choose another --client-port)"))
}

pub(super) fn cookie_secret() -> [u8; 16] {
    let mut secret = [0u8; 16];
    // SAFETY: getrandom writes at most secret.len() bytes into secret.
    let n = unsafe { libc::getrandom(secret.as_mut_ptr().cast(), secret.len(), 0) };
    if n != secret.len() as isize {
        let t = Instant::now().elapsed().as_nanos() ^ (std::process::id() as u128) << 64;
        secret = t.to_le_bytes();
    }
    secret
}

/// Nice value of the background threads (cleaner, cache fill, snapshot and backup
/// streams): the shards and the replication core go first.
pub const BACKGROUND_NICE: i32 = 10;

/// Lowers the calling thread's scheduling priority to [`BACKGROUND_NICE`].
pub fn run_in_background() {
    // SAFETY: setpriority with PRIO_PROCESS and tid 0 changes only the calling thread's
    // nice value; raising it needs no privilege, and a failure is harmless (ignored).
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, BACKGROUND_NICE);
    }
}

/// Keeps a stream under a byte rate: after each piece, sleeps until the bytes so far are
/// due at that rate (snapshots to followers and backups, which read the segments at the
/// disk's speed otherwise and starve the log's durable writes).
pub struct Pacer {
    started: std::time::Instant,
    bytes: u64,
    bytes_per_s: u64,
}

impl Pacer {
    pub fn new(bytes_per_s: u64) -> Pacer {
        Pacer {
            started: std::time::Instant::now(),
            bytes: 0,
            bytes_per_s: bytes_per_s.max(1),
        }
    }

    /// Counts `bytes` sent and waits if they came early.
    pub fn pace(&mut self, bytes: usize) {
        self.bytes += bytes as u64;
        let due = std::time::Duration::from_secs_f64(self.bytes as f64 / self.bytes_per_s as f64);
        if let Some(wait) = due.checked_sub(self.started.elapsed()) {
            std::thread::sleep(wait);
        }
    }
}
