//! End-to-end tests of the real `ocean-liner` binary over real UDP sockets.
//!
//! Each test starts the server as a child process on its own port and data directory,
//! talks to it with the protocol library (or the CLI), and checks what a user relies on:
//! round trips, many concurrent clients, exactly-once retries, survival of `kill -9`
//! with every acknowledged write intact, garbage input, the amplification rule, clean
//! shutdown, and clear start-up errors.

mod procs;

use ocean_liner::client::protocol::{self, Op, Request, Response, Status};
use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ocean-liner");

/// A port no other test (or process) uses right now (backups are served over TCP on the
/// same number as the UDP port).
fn free_port() -> u16 {
    procs::free_port(20_000)
}

struct Server {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Server {
    fn start() -> Server {
        Server::start_with(&[])
    }

    fn start_with(extra: &[&str]) -> Server {
        let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let dir = tmp.path().join("data");
        let mut s = Server {
            child: None,
            port: free_port(),
            dir,
            _tmp: Some(tmp),
        };
        s.spawn(extra);
        s
    }

    fn spawn(&mut self, extra: &[&str]) {
        let child = Command::new(BIN)
            .args(["--cores", "2", "--no-pin", "--batch-window-ms", "10"])
            .arg("--client-port")
            .arg(self.port.to_string())
            .arg("--data-dir")
            .arg(&self.dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut c = Conn::new(self.addr());
        while Instant::now() < deadline {
            // Up once it answers and reports itself leader (a single node elects itself).
            if let Some((Status::Ok, stats)) =
                c.call_once(Op::Stats, "", b"", Duration::from_millis(100))
                && String::from_utf8_lossy(&stats).contains("role=leader")
            {
                return;
            }
        }
        panic!("server did not come up on port {}", self.port);
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn kill9(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }

    fn terminate(&mut self) -> Output {
        let child = self.child.take().unwrap();
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child.wait_with_output().unwrap()
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .arg("--server")
            .arg(self.addr().to_string())
            .output()
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A raw protocol connection: one socket, one client id, explicit sequences.
struct Conn {
    socket: UdpSocket,
    server: SocketAddr,
    client_id: u64,
    seq: u64,
    cookie: u64,
}

impl Conn {
    fn new(server: SocketAddr) -> Conn {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        Conn {
            socket,
            server,
            client_id: rand::random::<u64>() | 1,
            seq: 0,
            cookie: 0,
        }
    }

    fn send(&self, op: Op, seq: u64, key: &str, value: &[u8]) {
        let req = Request {
            op,
            client_id: self.client_id,
            request_seq: seq,
            cookie: self.cookie,
            key,
            value,
        };
        let mut buf = Vec::new();
        protocol::encode_request(&req, &mut buf);
        self.socket.send_to(&buf, self.server).unwrap();
    }

    /// Sends once and waits for the matching reply: (status, payload).
    fn call_seq(
        &mut self,
        op: Op,
        seq: u64,
        key: &str,
        value: &[u8],
        wait: Duration,
    ) -> Option<(Status, Vec<u8>)> {
        for _ in 0..3 {
            self.send(op, seq, key, value);
            let deadline = Instant::now() + wait;
            let mut buf = [0u8; 2048];
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return None;
                }
                self.socket.set_read_timeout(Some(left)).unwrap();
                let Ok(n) = self.socket.recv(&mut buf) else {
                    return None;
                };
                let Ok(resp) = protocol::parse_response(&buf[..n]) else {
                    continue;
                };
                if resp.request_seq != seq || resp.client_id != self.client_id {
                    continue;
                }
                self.cookie = resp.cookie;
                if resp.status == Status::CookieRequired {
                    break; // resend with the cookie
                }
                return Some((resp.status, resp.payload.to_vec()));
            }
        }
        None
    }

    fn call_once(
        &mut self,
        op: Op,
        key: &str,
        value: &[u8],
        wait: Duration,
    ) -> Option<(Status, Vec<u8>)> {
        self.seq += 1;
        self.call_seq(op, self.seq, key, value, wait)
    }

    /// Retries (same sequence) until answered with something other than Busy (a node
    /// whose leadership or lease is not confirmed yet).
    fn call(&mut self, op: Op, key: &str, value: &[u8]) -> (Status, Vec<u8>) {
        self.seq += 1;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            match self.call_seq(op, self.seq, key, value, Duration::from_millis(300)) {
                // Busy: a lease being renewed; NotLeader without a hint: a node that has
                // not finished taking leadership after a start.
                Some((Status::Busy, _)) => std::thread::sleep(Duration::from_millis(20)),
                Some((Status::NotLeader, hint)) if hint.is_empty() => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Some(r) => return r,
                None => {}
            }
        }
        panic!("no reply to {op:?} {key}");
    }
}

fn stat(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in stats:\n{text}"))
}

#[test]
fn cli_round_trips_and_exit_codes() {
    let server = Server::start();
    let out = server.cli(&["set", "greeting", "hello world"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = server.cli(&["get", "greeting"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello world\n");
    let out = server.cli(&["get", "absent"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    let long = "v".repeat(900);
    assert!(server.cli(&["set", "long", &long]).status.success());
    assert_eq!(
        String::from_utf8_lossy(&server.cli(&["get", "long"]).stdout).trim_end(),
        long
    );
    assert!(server.cli(&["del", "greeting"]).status.success());
    assert_eq!(server.cli(&["get", "greeting"]).status.code(), Some(1));
    // Too large for a datagram: refused before sending, exit 2.
    let huge = "x".repeat(2000);
    let out = server.cli(&["set", "k", &huge]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Nothing listening: a clear message and exit 2.
    let out = Command::new(BIN)
        .args([
            "get",
            "k",
            "--server",
            &format!("127.0.0.1:{}", free_port()),
            "--timeout",
            "0.5",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no reply"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// STATS counts GETs and, among them, `hash_collisions`: GETs whose key hash the map held
/// for another key (answered NotFound). No two keys here share a hash, so a GET of a value
/// read back from the log (longer than 63 bytes) leaves it at zero.
#[test]
fn stats_count_gets_and_hash_collisions() {
    let server = Server::start();
    let mut c = Conn::new(server.addr());
    let long = vec![b'v'; 200];
    assert_eq!(c.call(Op::Set, "long", &long).0, Status::Ok);
    assert_eq!(c.call(Op::Get, "long", b""), (Status::Ok, long));
    assert_eq!(c.call(Op::Get, "absent", b"").0, Status::NotFound);
    let (status, stats) = c.call(Op::Stats, "", b"");
    assert_eq!(status, Status::Ok);
    let stats = String::from_utf8(stats).unwrap();
    assert!(stat(&stats, "gets") >= 2, "{stats}");
    assert_eq!(stat(&stats, "hash_collisions"), 0, "{stats}");
}

/// STATS comes in pages of whole lines: a request's key names the first line, a page
/// past the last line is empty, and `ocean-liner stats` puts every page together.
#[test]
fn stats_come_in_pages_of_whole_lines() {
    let server = Server::start();
    let mut c = Conn::new(server.addr());
    let (status, first) = c.call(Op::Stats, "", b"");
    assert_eq!(status, Status::Ok);
    let first = String::from_utf8(first).unwrap();
    assert!(first.len() <= protocol::MAX_PAYLOAD_LEN && first.ends_with('\n'));
    let (status, from_5) = c.call(Op::Stats, "5", b"");
    assert_eq!(status, Status::Ok);
    let from_5 = String::from_utf8(from_5).unwrap();
    let fifth = first.lines().nth(5).unwrap();
    let name = |l: &str| l.split('=').next().unwrap().to_string();
    assert_eq!(name(from_5.lines().next().unwrap()), name(fifth));
    assert_eq!(c.call(Op::Stats, "999999", b""), (Status::Ok, Vec::new()));
    assert_eq!(c.call(Op::Stats, "x1", b"").0, Status::Malformed);
    let out = server.cli(&["stats"]);
    assert!(out.status.success());
    let all = String::from_utf8(out.stdout).unwrap();
    let names: Vec<String> = all.lines().map(name).collect();
    for line in first.lines().chain(from_5.lines()) {
        assert!(names.contains(&name(line)), "{line} missing from:\n{all}");
    }
    assert_eq!(
        names.last().map(String::as_str),
        Some("get_latency_counts"),
        "{all}"
    );
    let unique: std::collections::HashSet<&String> = names.iter().collect();
    assert_eq!(unique.len(), names.len(), "no line twice:\n{all}");
}

#[test]
fn ten_thousand_concurrent_clients_all_acknowledged_and_readable() {
    let server = Server::start();
    const CLIENTS: usize = 10_000;
    const SOCKETS: usize = 16;
    let sockets: Vec<UdpSocket> = (0..SOCKETS)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    for s in &sockets {
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    }
    let mut cookies = vec![0u64; SOCKETS];
    let mut acked = vec![false; CLIENTS];
    let send = |i: usize, cookies: &[u64]| {
        let key = format!("client-{i}");
        let value = format!("value-{i}");
        let req = Request {
            op: Op::Set,
            client_id: 1_000_000 + i as u64,
            request_seq: 1,
            cookie: cookies[i % SOCKETS],
            key: &key,
            value: value.as_bytes(),
        };
        let mut buf = Vec::new();
        protocol::encode_request(&req, &mut buf);
        sockets[i % SOCKETS].send_to(&buf, server.addr()).unwrap();
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut rounds = 0;
    while acked.iter().any(|a| !a) {
        assert!(
            Instant::now() < deadline,
            "not every write was acknowledged"
        );
        rounds += 1;
        for i in (0..CLIENTS).filter(|&i| !acked[i]) {
            send(i, &cookies);
        }
        let mut buf = [0u8; 2048];
        for (si, s) in sockets.iter().enumerate() {
            while let Ok(n) = s.recv(&mut buf) {
                let resp = protocol::parse_response(&buf[..n]).unwrap();
                cookies[si] = resp.cookie;
                if resp.status == Status::Ok {
                    acked[(resp.client_id - 1_000_000) as usize] = true;
                } else {
                    assert_eq!(resp.status, Status::Busy, "unexpected status");
                }
            }
        }
    }
    eprintln!("{CLIENTS} writes acknowledged in {rounds} send rounds");
    let mut c = Conn::new(server.addr());
    for i in 0..CLIENTS {
        let (status, value) = c.call(Op::Get, &format!("client-{i}"), b"");
        assert_eq!(status, Status::Ok, "client-{i}");
        assert_eq!(value, format!("value-{i}").into_bytes());
    }
    let (_, stats) = c.call(Op::Stats, "", b"");
    let stats = String::from_utf8(stats).unwrap();
    assert_eq!(stat(&stats, "keys"), CLIENTS as u64);
    // Retries of acknowledged writes were deduplicated: exactly one apply per client.
    assert!(
        stat(&stats, "entries_written") < CLIENTS as u64 / 10,
        "writes were batched:\n{stats}"
    );
}

#[test]
fn retried_writes_apply_once() {
    let server = Server::start();
    let mut c = Conn::new(server.addr());
    assert_eq!(c.call(Op::Set, "k", b"first").0, Status::Ok);
    let first_seq = c.seq;
    assert_eq!(c.call(Op::Set, "k", b"second").0, Status::Ok);
    // A late retry of the first write (its reply was "lost") must not overwrite "second".
    let (status, _) = c
        .call_seq(Op::Set, first_seq, "k", b"first", Duration::from_secs(2))
        .unwrap();
    assert_eq!(status, Status::Ok);
    assert_eq!(c.call(Op::Get, "k", b""), (Status::Ok, b"second".to_vec()));
    // The same request twice in one window applies once.
    c.seq += 1;
    let seq = c.seq;
    c.send(Op::Set, seq, "k", b"third");
    c.send(Op::Set, seq, "k", b"third");
    assert_eq!(
        c.call_seq(Op::Set, seq, "k", b"third", Duration::from_secs(2))
            .unwrap()
            .0,
        Status::Ok
    );
    // A retry after the key changed under another client does not resurrect the old value.
    let mut other = Conn::new(server.addr());
    assert_eq!(other.call(Op::Set, "k", b"fourth").0, Status::Ok);
    assert_eq!(
        c.call_seq(Op::Set, seq, "k", b"third", Duration::from_secs(2))
            .unwrap()
            .0,
        Status::Ok
    );
    assert_eq!(c.call(Op::Get, "k", b""), (Status::Ok, b"fourth".to_vec()));
    // Dedup survives a restart.
    let mut server = server;
    server.kill9();
    server.spawn(&[]);
    assert_eq!(
        c.call_seq(Op::Set, seq, "k", b"third", Duration::from_secs(2))
            .unwrap()
            .0,
        Status::Ok
    );
    assert_eq!(c.call(Op::Get, "k", b""), (Status::Ok, b"fourth".to_vec()));
}

/// SETs of one key in one window, with `--drop-overwritten-sets`: those a later SET of
/// the window overwrites are logged
/// as NOPs with their sessions (counted in `sets_dropped`), every client is answered,
/// and a late retry of a dropped one is still a duplicate, after a kill -9 as well.
/// Without `--drop-overwritten-sets` every SET is logged.
#[test]
fn overwritten_sets_of_a_window_are_dropped_and_stay_exactly_once() {
    for keep in [false, true] {
        let flags: &[&str] = if keep {
            &["--batch-window-ms", "300"]
        } else {
            &["--batch-window-ms", "300", "--drop-overwritten-sets"]
        };
        let mut server = Server::start_with(flags);
        let mut a = Conn::new(server.addr());
        let mut b = Conn::new(server.addr());
        assert_eq!(a.call(Op::Set, "k", b"zero").0, Status::Ok);
        assert_eq!(b.call(Op::Get, "k", b""), (Status::Ok, b"zero".to_vec()));
        // Three SETs sent at once land in one 300 ms window: a1 before a2 on one socket.
        let (a1, b1, a2) = (a.seq + 1, b.seq + 1, a.seq + 2);
        a.send(Op::Set, a1, "k", b"a1");
        b.send(Op::Set, b1, "k", b"b1");
        a.send(Op::Set, a2, "k", b"a2");
        let wait = Duration::from_secs(3);
        assert_eq!(
            a.call_seq(Op::Set, a1, "k", b"a1", wait).unwrap().0,
            Status::Ok
        );
        assert_eq!(
            b.call_seq(Op::Set, b1, "k", b"b1", wait).unwrap().0,
            Status::Ok
        );
        assert_eq!(
            a.call_seq(Op::Set, a2, "k", b"a2", wait).unwrap().0,
            Status::Ok
        );
        (a.seq, b.seq) = (a2, b1);
        // One sending thread over loopback: they arrive in the order sent.
        assert_eq!(a.call(Op::Get, "k", b""), (Status::Ok, b"a2".to_vec()));
        let stats = String::from_utf8_lossy(&server.cli(&["stats"]).stdout).to_string();
        if keep {
            assert_eq!(stat(&stats, "sets_dropped"), 0, "{stats}");
        } else {
            assert!(stat(&stats, "sets_dropped") >= 2, "{stats}");
        }
        // b1, overwritten in its own window, is b's only write: its session alone says
        // it was applied, so its retry must change nothing, before and after a restart
        // that replays the log (and a1's neither).
        for restart in [false, true] {
            if restart {
                server.kill9();
                server.spawn(flags);
            }
            assert_eq!(
                b.call_seq(Op::Set, b1, "k", b"b1", wait).unwrap().0,
                Status::Ok
            );
            assert_eq!(
                a.call_seq(Op::Set, a1, "k", b"a1", wait).unwrap().0,
                Status::Ok
            );
            assert_eq!(a.call(Op::Get, "k", b""), (Status::Ok, b"a2".to_vec()));
        }
    }
}

#[test]
fn kill_9_during_writes_keeps_every_acknowledged_write() {
    let mut server = Server::start();
    let addr = server.addr();
    // Writer threads each own a set of keys and write versions 1, 2, 3, ... to each, one
    // at a time; they record the last acknowledged version and the one in flight.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut c = Conn::new(addr);
                let mut acked: HashMap<String, (u64, u64)> = HashMap::new();
                let mut version = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    version += 1;
                    for k in 0..25 {
                        let key = format!("w{w}-k{k}");
                        let value = format!("{version}:{}", "p".repeat((k * 7) % 90));
                        let entry = acked.entry(key.clone()).or_insert((0, 0));
                        entry.1 = version;
                        match c.call_once(
                            Op::Set,
                            &key,
                            value.as_bytes(),
                            Duration::from_millis(500),
                        ) {
                            Some((Status::Ok, _)) => entry.0 = version,
                            _ => return acked,
                        }
                    }
                }
                acked
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    server.kill9();
    stop.store(true, Ordering::Relaxed);
    let acked: Vec<HashMap<String, (u64, u64)>> =
        writers.into_iter().map(|t| t.join().unwrap()).collect();
    let total: u64 = acked.iter().flat_map(|m| m.values()).map(|v| v.0).sum();
    assert!(
        total > 100,
        "the load acknowledged too few writes ({total}) to test anything"
    );
    server.spawn(&[]);
    let mut c = Conn::new(server.addr());
    let mut checked = 0;
    for map in &acked {
        for (key, &(last_acked, in_flight)) in map {
            let (status, value) = c.call(Op::Get, key, b"");
            let got: u64 = if status == Status::NotFound {
                0
            } else {
                let v = String::from_utf8(value).unwrap();
                v.split(':').next().unwrap().parse().unwrap()
            };
            assert!(
                got == last_acked || got == in_flight,
                "{key}: acknowledged version {last_acked} (in flight {in_flight}) but read {got}"
            );
            checked += 1;
        }
    }
    eprintln!("{checked} keys checked after kill -9; {total} version acknowledgements in all");
}

#[test]
fn garbage_datagrams_get_errors_and_the_server_keeps_serving() {
    let server = Server::start();
    let mut c = Conn::new(server.addr());
    assert_eq!(c.call(Op::Set, "before", b"1").0, Status::Ok);
    let raw = UdpSocket::bind("127.0.0.1:0").unwrap();
    raw.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut valid = Vec::new();
    protocol::encode_request(
        &Request {
            op: Op::Set,
            client_id: 77,
            request_seq: 1,
            cookie: 0,
            key: "kk",
            value: b"vv",
        },
        &mut valid,
    );
    let mut rng = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut statuses: HashMap<u16, usize> = HashMap::new();
    let mut sent = [0usize; 6];
    let mut buf = [0u8; 2048];
    raw.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    for i in 0..3000 {
        let kind = i % 6;
        sent[kind] += 1;
        let datagram: Vec<u8> = match kind {
            0 => (0..next() % 1500).map(|_| next() as u8).collect(),
            1 => valid[..(next() as usize % valid.len())].to_vec(),
            2 => {
                let mut v = valid.clone();
                v[4] = 3 + (next() % 250) as u8; // key_len lies
                v
            }
            3 => {
                let mut v = valid.clone();
                v[32..36].copy_from_slice(&(3 + next() as u32 % 100_000).to_le_bytes()); // value_len lies
                v
            }
            4 => {
                let mut v = valid.clone();
                v.resize(65_000, 0xAB); // far too large
                v
            }
            _ => {
                let mut v = valid.clone();
                let at = next() as usize % v.len();
                v[at] ^= 1 << (next() % 8);
                v
            }
        };
        raw.send_to(&datagram, server.addr()).unwrap();
        // Pace the burst so that neither side's socket buffer overflows.
        if i % 30 == 29 {
            while let Ok(n) = raw.recv(&mut buf) {
                assert!(n <= 1024, "a reply is never larger than the protocol limit");
                let resp = protocol::parse_response(&buf[..n]).unwrap();
                *statuses.entry(resp.status.as_u16()).or_default() += 1;
            }
        }
    }
    // Every oversize datagram and every length lie got its error status.
    let malformed = statuses.get(&400).copied().unwrap_or(0);
    assert!(
        malformed >= sent[2] + sent[3],
        "malformed requests are answered: {statuses:?}, sent {sent:?}"
    );
    assert_eq!(
        statuses.get(&413).copied().unwrap_or(0),
        sent[4],
        "oversize requests are answered: {statuses:?}"
    );
    // The server still answers correctly, and no garbage key reached the log.
    assert_eq!(c.call(Op::Get, "before", b""), (Status::Ok, b"1".to_vec()));
    assert_eq!(c.call(Op::Set, "after", b"2").0, Status::Ok);
    assert_eq!(c.call(Op::Get, "after", b""), (Status::Ok, b"2".to_vec()));
    let (_, stats) = c.call(Op::Stats, "", b"");
    let stats = String::from_utf8(stats).unwrap();
    assert!(
        stat(&stats, "rejected") > 200 && stat(&stats, "dropped") > 200,
        "{stats}"
    );
    let keys = stat(&stats, "keys");
    // Bit flips of a valid SET can yield valid SETs of other small keys; random bytes and
    // length lies never can. At most a few dozen such keys exist.
    assert!(keys < 200, "{keys} keys after garbage:\n{stats}");
}

#[test]
fn unvalidated_sources_never_get_a_larger_reply_than_their_request() {
    let server = Server::start();
    let mut c = Conn::new(server.addr());
    let value = vec![b'v'; 900];
    assert_eq!(c.call(Op::Set, "big", &value).0, Status::Ok);
    // A fresh source without a cookie: the reply must not exceed the request's size.
    let raw = UdpSocket::bind("127.0.0.1:0").unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 2048];
    let mut ask = |seq: u64, cookie: u64| -> (Vec<u8>, usize) {
        let mut req = Vec::new();
        protocol::encode_request(
            &Request {
                op: Op::Get,
                client_id: 5,
                request_seq: seq,
                cookie,
                key: "big",
                value: b"",
            },
            &mut req,
        );
        // Busy (a lease being renewed on a loaded machine) is retried.
        loop {
            raw.send_to(&req, server.addr()).unwrap();
            let n = raw.recv(&mut buf).unwrap();
            let resp = protocol::parse_response(&buf[..n]).unwrap();
            if resp.status != Status::Busy {
                return (buf[..n].to_vec(), req.len());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let (reply, request_len) = ask(1, 0);
    assert!(
        reply.len() <= request_len,
        "amplification: {}-byte reply to a {request_len}-byte request",
        reply.len()
    );
    let resp: Response<'_> = protocol::parse_response(&reply).unwrap();
    assert_eq!(resp.status, Status::CookieRequired);
    let cookie = resp.cookie;
    // With the cookie, the value comes back.
    let (reply, _) = ask(2, cookie);
    let resp = protocol::parse_response(&reply).unwrap();
    assert_eq!((resp.status, resp.payload), (Status::Ok, &value[..]));
}

#[test]
fn sigterm_finishes_the_window_checkpoints_and_exits_zero() {
    let mut server = Server::start();
    let mut c = Conn::new(server.addr());
    for i in 0..200 {
        assert_eq!(c.call(Op::Set, &format!("k{i}"), b"v").0, Status::Ok);
    }
    let out = server.terminate();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("stopped cleanly"), "{stderr}");
    server.spawn(&[]);
    for i in 0..200 {
        assert_eq!(
            c.call(Op::Get, &format!("k{i}"), b""),
            (Status::Ok, b"v".to_vec())
        );
    }
    // The checkpoint at shutdown covered everything: nothing left to replay.
    let out = server.terminate();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(" 0 replayed"), "{stderr}");
}

#[test]
fn start_up_errors_name_the_cause_and_the_fix() {
    let server = Server::start();
    // What doctor calls fatal: a data directory on tmpfs (no O_DIRECT).
    if std::path::Path::new("/dev/shm").is_dir() {
        let shm = tempfile::tempdir_in("/dev/shm").unwrap();
        let out = Command::new(BIN)
            .args([
                "--no-pin",
                "--client-port",
                &free_port().to_string(),
                "--data-dir",
            ])
            .arg(shm.path().join("d"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            stderr.contains("data directory file system: tmpfs")
                && stderr.contains("ocean-liner doctor --data-dir"),
            "{stderr}"
        );
        let doctor = Command::new(BIN)
            .args(["doctor", "--data-dir"])
            .arg(shm.path())
            .output()
            .unwrap();
        assert_eq!(
            doctor.status.code(),
            Some(1),
            "doctor exits 1 on a fatal finding"
        );
        assert!(String::from_utf8_lossy(&doctor.stdout).contains("FATAL"));
    } else {
        eprintln!("SKIPPED (the tmpfs case): no /dev/shm");
    }
    let doctor = Command::new(BIN)
        .args(["doctor", "--data-dir"])
        .arg(env!("CARGO_TARGET_TMPDIR"))
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&doctor.stdout);
    assert_eq!(doctor.status.code(), Some(0), "{report}");
    assert!(report.contains("O_DIRECT write + fdatasync") && report.contains("io_uring opcodes"));
    // Port in use.
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let out = Command::new(BIN)
        .args([
            "--no-pin",
            "--client-port",
            &server.port.to_string(),
            "--data-dir",
        ])
        .arg(tmp.path().join("d"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("--client-port"), "{stderr}");
    // The same data directory as a running server.
    let out = Command::new(BIN)
        .args([
            "--no-pin",
            "--client-port",
            &free_port().to_string(),
            "--data-dir",
        ])
        .arg(&server.dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("in use by another"), "{stderr}");
    // A data directory that cannot be created.
    let file = tmp.path().join("plain-file");
    std::fs::write(&file, b"").unwrap();
    let out = Command::new(BIN)
        .args([
            "--no-pin",
            "--client-port",
            &free_port().to_string(),
            "--data-dir",
        ])
        .arg(Path::new(&file).join("sub"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("--data-dir"), "{stderr}");
    // A bad flag explains itself.
    let out = Command::new(BIN)
        .args(["--batch-window-ms", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("batch-window-ms"));
}

/// Bytes of the files directly in `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

/// Sets every (key, value) pair, many requests in flight at once, until all are
/// acknowledged. A session's sequences must arrive in order (a lower one after a higher
/// one is answered as the retry of an applied write), so each round sends what is still
/// unacknowledged in order, from a new client.
fn set_all(server: SocketAddr, pairs: &[(String, Vec<u8>)]) {
    let mut missing: Vec<usize> = (0..pairs.len()).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !missing.is_empty() {
        assert!(
            Instant::now() < deadline,
            "{} SETs never acknowledged",
            missing.len()
        );
        let mut conn = Conn::new(server);
        // One call first, for the cookie that lets the rest go out back to back.
        let (status, _) = conn.call(Op::Set, &pairs[missing[0]].0, &pairs[missing[0]].1);
        assert_eq!(status, Status::Ok);
        let first_seq = conn.seq + 1;
        let mut pending: HashMap<u64, usize> = HashMap::new();
        for (j, &i) in missing[1..].iter().enumerate() {
            let seq = first_seq + j as u64;
            pending.insert(seq, i);
            conn.send(Op::Set, seq, &pairs[i].0, &pairs[i].1);
        }
        let mut buf = [0u8; 2048];
        conn.socket
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        while let Ok(n) = conn.socket.recv(&mut buf) {
            if let Ok(resp) = protocol::parse_response(&buf[..n])
                && resp.client_id == conn.client_id
                && resp.status == Status::Ok
            {
                pending.remove(&resp.request_seq);
            }
        }
        missing = pending.into_values().collect();
        missing.sort_unstable();
    }
}

/// Runs `ocean-liner bench ARGS --server` against `server`, which must succeed; returns
/// its standard output.
fn bench_ok(server: &Server, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("bench")
        .args(args)
        .arg("--server")
        .arg(server.addr().to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Overwrites from the load tool fill many small segments; the cleaner copies the few
/// live values out, checkpoints release the emptied segments and their files go, so the
/// segment directory stays near the live data instead of growing with every write. Every
/// key then holds the last value written, before and after `kill -9` and a restart.
#[test]
fn overwrites_leave_the_disk_bounded_and_every_value_intact() {
    let mut server = Server::start_with(&["--segment-mib", "1", "--checkpoint-interval-s", "1"]);
    let report = bench_ok(
        &server,
        &[
            "--workload",
            "set",
            "--keys",
            "2000",
            "--value-size",
            "500",
            "--concurrency",
            "4096",
            "--sockets",
            "8",
            "--duration",
            "5",
            "--warmup",
            "0",
            "--json",
        ],
    );
    let ops: u64 = report
        .split("\"ops\":")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no ops in {report}"));
    let written = ops * 540;
    assert!(
        written > 16 << 20,
        "the load wrote only {written} bytes ({report})"
    );

    let pairs: Vec<(String, Vec<u8>)> = (0..2000)
        .map(|i| {
            let mut v = format!("final-{i}-").into_bytes();
            v.resize(400, b'f');
            (format!("key:{i:010}"), v)
        })
        .collect();
    set_all(server.addr(), &pairs);
    let mut conn = Conn::new(server.addr());

    let segments = server.dir.join("segments");
    let bound = 8u64 << 20;
    let deadline = Instant::now() + Duration::from_secs(30);
    let stats = loop {
        let (_, stats) = conn.call(Op::Stats, "", b"");
        let stats = String::from_utf8_lossy(&stats).to_string();
        if dir_bytes(&segments) < bound && stat(&stats, "segments_deleted") > 4 {
            break stats;
        }
        assert!(
            Instant::now() < deadline,
            "after {written} bytes of writes the segments still take {} bytes:\n{stats}",
            dir_bytes(&segments)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(stat(&stats, "values_moved") > 0, "{stats}");
    assert!(
        stat(&stats, "live_bytes") <= stat(&stats, "entry_bytes"),
        "{stats}"
    );
    assert_eq!(stat(&stats, "clean_errors"), 0, "{stats}");

    let check = |conn: &mut Conn, when: &str| {
        for (k, v) in &pairs {
            let (status, got) = conn.call(Op::Get, k, b"");
            assert_eq!(status, Status::Ok, "{when}: {k}");
            assert_eq!(&got, v, "{when}: {k}");
        }
    };
    check(&mut conn, "after cleaning");
    server.kill9();
    server.spawn(&["--segment-mib", "1", "--checkpoint-interval-s", "1"]);
    let mut conn = Conn::new(server.addr());
    check(&mut conn, "after kill -9 and a restart");
}

/// `snapshot save` from a node under a stream of writes yields a state at one applied
/// index: restored into a new directory and served, it holds every write acknowledged
/// before the save began and, of the writes racing it, exactly a prefix — each key written
/// one after another by a single writer, so a snapshot between two applies can only hold
/// keys 0..=k. The restored node takes writes; a damaged or truncated file and a
/// directory that holds data are refused with a reason.
#[test]
fn a_snapshot_saved_during_writes_restores_a_node_at_one_index() {
    let server = Server::start();
    let addr = server.addr();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let writer = {
        let (stop, acked) = (stop.clone(), acked.clone());
        std::thread::spawn(move || {
            let mut c = Conn::new(addr);
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let value = format!("v{i}-{}", "x".repeat((i % 150) as usize));
                let (status, _) = c.call(Op::Set, &format!("seq{i}"), value.as_bytes());
                assert_eq!(status, Status::Ok);
                i += 1;
                acked.store(i, Ordering::Relaxed);
            }
        })
    };
    while acked.load(Ordering::Relaxed) < 300 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let file = tmp.path().join("backup.olsnap");
    let before = acked.load(Ordering::Relaxed);
    let out = server.cli(&["snapshot", "save", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let written = acked.load(Ordering::Relaxed);
    assert!(written > before, "writes went on during the save");

    // Refusals: a directory with data, a flipped byte, a cut file.
    let busy = Command::new(BIN)
        .args(["snapshot", "restore", file.to_str().unwrap(), "--data-dir"])
        .arg(&server.dir)
        .output()
        .unwrap();
    assert!(!busy.status.success());
    assert!(String::from_utf8_lossy(&busy.stderr).contains("already holds data"));
    let bytes = std::fs::read(&file).unwrap();
    for (what, damaged) in [
        ("flipped", {
            let mut b = bytes.clone();
            let at = b.len() / 2;
            b[at] ^= 0x10;
            b
        }),
        ("cut", bytes[..bytes.len() - 100].to_vec()),
    ] {
        let bad = tmp.path().join(format!("{what}.olsnap"));
        std::fs::write(&bad, &damaged).unwrap();
        let out = Command::new(BIN)
            .args(["snapshot", "restore", bad.to_str().unwrap(), "--data-dir"])
            .arg(tmp.path().join(format!("{what}-dir")))
            .output()
            .unwrap();
        assert!(!out.status.success(), "a {what} file was restored");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("backup") || err.contains("snapshot"),
            "{what}: {err}"
        );
    }

    let restored_dir = tmp.path().join("restored");
    let out = Command::new(BIN)
        .args(["snapshot", "restore", file.to_str().unwrap(), "--data-dir"])
        .arg(&restored_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut restored = Server {
        child: None,
        port: free_port(),
        dir: restored_dir,
        _tmp: None,
    };
    restored.spawn(&[]);
    let mut c = Conn::new(restored.addr());
    let mut present = Vec::new();
    for i in 0..written {
        let (status, value) = c.call(Op::Get, &format!("seq{i}"), b"");
        if status == Status::Ok {
            let want = format!("v{i}-{}", "x".repeat((i % 150) as usize));
            assert_eq!(value, want.as_bytes(), "seq{i}");
            present.push(i);
        } else {
            assert_eq!(status, Status::NotFound);
        }
    }
    let k = present.len() as u64;
    assert_eq!(
        present,
        (0..k).collect::<Vec<_>>(),
        "the restored keys are a prefix of the writes"
    );
    assert!(
        k >= before && k <= written,
        "{k} keys restored; {before} were acknowledged before the save, {written} in all"
    );
    let (status, _) = c.call(Op::Set, "after-restore", b"yes");
    assert_eq!(status, Status::Ok);
    let (status, value) = c.call(Op::Get, "after-restore", b"");
    assert_eq!((status, value.as_slice()), (Status::Ok, &b"yes"[..]));
    eprintln!("restored {k} keys: {before} acknowledged before the save, {written} in all");
}

/// `--config FILE`: the file's settings apply, a flag on the command line overrides one,
/// and the server tells systemd (`NOTIFY_SOCKET`, `Type=notify`) `READY=1` only once it
/// answers, then `STOPPING=1` when SIGTERM stops it.
#[test]
fn config_file_under_flags_and_systemd_notification() {
    use std::os::unix::net::UnixDatagram;
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (file_port, flag_port) = (free_port(), free_port());
    let config = tmp.path().join("ocean-liner.toml");
    std::fs::write(
        &config,
        format!(
            "client-port = {file_port}\nbatch-window-ms = 7\nno-pin = true\ncores = 2\n\
             data-dir = \"{}\"\n",
            tmp.path().join("data").display()
        ),
    )
    .unwrap();
    let notify_path = tmp.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .args(["--client-port", &flag_port.to_string()])
        .env("NOTIFY_SOCKET", &notify_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 512];
    let n = notify.recv(&mut buf).expect("READY=1 within 20 s");
    let ready = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(ready.starts_with("READY=1"), "{ready}");
    // Ready means serving: the flag's port answers at once, with the file's window.
    let mut c = Conn::new(SocketAddr::from(([127, 0, 0, 1], flag_port)));
    let (status, stats) = c.call(Op::Stats, "", b"");
    assert_eq!(status, Status::Ok);
    let stats = String::from_utf8_lossy(&stats).to_string();
    assert!(stats.contains("batch_window_ms=7\n"), "{stats}");
    assert!(
        UdpSocket::bind(("127.0.0.1", file_port)).is_ok(),
        "the flag overrides the file"
    );
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let n = notify.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert!(child.wait().unwrap().success());
    // A misspelt key is refused by name before anything starts.
    std::fs::write(&config, "batch-windw-ms = 7\n").unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown setting 'batch-windw-ms'"));
}

/// `ocean-liner top` shows a row per address: the node's role and counters, and a node
/// that does not answer as such.
#[test]
fn top_shows_each_node_and_one_that_is_down() {
    let server = Server::start();
    let down = free_port();
    let out = Command::new(BIN)
        .args([
            "top",
            "--count",
            "1",
            "--no-clear",
            "--interval",
            "0.3",
            "--server",
        ])
        .arg(format!("{},127.0.0.1:{down}", server.addr()))
        .output()
        .unwrap();
    assert!(out.status.success());
    let screen = String::from_utf8_lossy(&out.stdout).to_string();
    let rows: Vec<&str> = screen.lines().collect();
    assert!(
        rows.iter()
            .any(|r| r.starts_with("node ") && r.contains("writes/s")),
        "{screen}"
    );
    assert!(
        rows.iter()
            .any(|r| r.starts_with(&server.addr().to_string()) && r.contains(" leader ")),
        "{screen}"
    );
    assert!(
        rows.iter()
            .any(|r| r.starts_with(&format!("127.0.0.1:{down}")) && r.contains("(no answer)")),
        "{screen}"
    );
}

/// An owned reply item (or a reply to a whole batch).
#[derive(Debug, Clone, PartialEq)]
struct Answer {
    op: Option<Op>,
    status: Status,
    client_id: u64,
    request_seq: u64,
    payload: Vec<u8>,
}

impl Answer {
    fn of(r: &Response<'_>) -> Answer {
        Answer {
            op: r.op,
            status: r.status,
            client_id: r.client_id,
            request_seq: r.request_seq,
            payload: r.payload.to_vec(),
        }
    }
}

/// Sends one BATCH datagram of `items` (retrying what is unanswered or Busy) and collects
/// the replies: the answer per item (in item order), or the reply to the whole batch.
/// Also returns the size of every reply datagram.
fn batch_call(
    sock: &UdpSocket,
    server: SocketAddr,
    to: &protocol::Addressing,
    items: &[Request<'_>],
) -> (Result<Vec<Answer>, Answer>, Vec<usize>) {
    use protocol::batch;
    let mut answers: Vec<Option<Answer>> = vec![None; items.len()];
    let mut sizes = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 2048];
    while answers.iter().any(Option::is_none) {
        assert!(Instant::now() < deadline, "items unanswered: {answers:?}");
        let mut out = Vec::new();
        let start = batch::begin_batch(&mut out, to);
        for (item, a) in items.iter().zip(&answers) {
            if a.is_none() {
                batch::push_request_item(&mut out, start, item);
            }
        }
        sock.send_to(&out, server).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        while let Ok(n) = sock.recv(&mut buf) {
            sizes.push(n);
            match protocol::parse_reply(&buf[..n]).unwrap() {
                protocol::Reply::Single(r) => {
                    assert_eq!(
                        (r.op, r.client_id, r.request_seq),
                        (Some(Op::Batch), to.client_id, to.request_seq)
                    );
                    return (Err(Answer::of(&r)), sizes);
                }
                protocol::Reply::Batch(b) => {
                    for r in b.items() {
                        let i = items
                            .iter()
                            .position(|q| {
                                q.client_id == r.client_id && q.request_seq == r.request_seq
                            })
                            .expect("a reply item to an item of the batch");
                        if r.status != Status::Busy {
                            answers[i] = Some(Answer::of(&r));
                        }
                    }
                }
            }
            if answers.iter().all(Option::is_some) {
                break;
            }
        }
    }
    (Ok(answers.into_iter().map(Option::unwrap).collect()), sizes)
}

#[test]
fn batches_need_the_cookie_run_every_item_once_and_reject_whole() {
    let server = Server::start();
    let mut c = Conn::new(server.addr());
    // A leader whose lease is confirmed, and the cookie for this socket.
    assert_eq!(c.call(Op::Get, "warm", b"").0, Status::NotFound);
    let cookie = c.cookie;
    let sock = &c.socket;
    let ids: Vec<u64> = (0..8).map(|_| rand::random::<u64>() | 1).collect();
    let item = |i: usize, op: Op, key: &'static str, value: &'static [u8]| Request {
        op,
        client_id: ids[i],
        request_seq: 1,
        cookie: 0,
        key,
        value,
    };
    let mut to = protocol::Addressing {
        op: Some(Op::Batch),
        client_id: 99,
        request_seq: 1,
        cookie: 0,
    };

    // Without the cookie nothing runs, and the one reply is no larger than the request.
    let writes = [item(0, Op::Set, "a", b"1"), item(1, Op::Set, "b", b"2")];
    let (whole, sizes) = batch_call(sock, server.addr(), &to, &writes);
    let whole = whole.unwrap_err();
    assert_eq!((whole.status, sizes.len()), (Status::CookieRequired, 1));
    assert!(sizes[0] <= 40 + 2 * (24 + 2));
    assert_eq!(c.call(Op::Get, "a", b"").0, Status::NotFound);

    // With it, every item runs and is answered in BATCH replies.
    let sock = &c.socket;
    to.cookie = cookie;
    to.request_seq = 2;
    let mixed = [
        item(0, Op::Set, "a", b"1"),
        item(1, Op::Set, "b", b"2"),
        item(2, Op::Delete, "c", b""),
        item(3, Op::Ping, "", b""),
        item(4, Op::Get, "missing", b""),
    ];
    let (answers, _) = batch_call(sock, server.addr(), &to, &mixed);
    let statuses: Vec<Status> = answers.unwrap().iter().map(|a| a.status).collect();
    use Status::{NotFound, Ok as Done};
    assert_eq!(statuses, [Done, Done, Done, Done, NotFound]);
    assert_eq!(c.call(Op::Get, "b", b""), (Status::Ok, b"2".to_vec()));

    // A retransmitted batch item is answered but not applied again.
    let mut other = Conn::new(server.addr());
    assert_eq!(other.call(Op::Set, "a", b"newer").0, Status::Ok);
    let sock = &c.socket;
    let (answers, _) = batch_call(sock, server.addr(), &to, &mixed[..1]);
    assert_eq!(answers.unwrap()[0].status, Status::Ok);
    assert_eq!(c.call(Op::Get, "a", b""), (Status::Ok, b"newer".to_vec()));

    // One broken item rejects the batch whole: its SET does not run.
    let sock = &c.socket;
    to.request_seq = 3;
    let broken = [item(5, Op::Set, "z", b"no"), item(6, Op::Stats, "", b"")];
    let (whole, _) = batch_call(sock, server.addr(), &to, &broken);
    assert_eq!(whole.unwrap_err().status, Status::Malformed);
    assert_eq!(c.call(Op::Get, "z", b"").0, Status::NotFound);

    // Large values: the replies spread over several datagrams, none over the limit.
    static BIG: [u8; 900] = [b'v'; 900];
    assert_eq!(c.call(Op::Set, "big", &BIG).0, Status::Ok);
    let sock = &c.socket;
    to.request_seq = 4;
    let gets: Vec<Request<'_>> = (0..8)
        .map(|i| Request {
            request_seq: 2,
            ..item(i, Op::Get, "big", b"")
        })
        .collect();
    let (answers, sizes) = batch_call(sock, server.addr(), &to, &gets);
    for a in answers.unwrap() {
        assert_eq!((a.status, &a.payload[..]), (Status::Ok, &BIG[..]));
    }
    assert!(
        sizes.len() >= 8,
        "900-byte values: one per reply datagram, got {sizes:?}"
    );
    assert!(
        sizes
            .iter()
            .all(|&n| n <= protocol::MAX_BATCH_DATAGRAM_SIZE)
    );
    let stats = c.call(Op::Stats, "", b"").1;
    assert!(stat(&String::from_utf8_lossy(&stats), "batches") >= 5);
}

#[test]
fn the_load_tool_batches_and_recovers_its_cookie_after_a_restart() {
    let mut server = Server::start();
    let bench = |duration: &str, workload: &str| {
        let prefill: &[&str] = if workload == "set" {
            &[]
        } else {
            &["--prefill"]
        };
        Command::new(BIN)
            .args(["bench", "--workload", workload, "--read-ratio", "0.9"])
            .args(["--keys", "2000", "--pipeline", "16", "--concurrency", "256"])
            .args(prefill)
            .args(["--json", "--warmup", "0", "--timeout-ms", "300"])
            .args(["--duration", duration])
            .arg("--server")
            .arg(server.addr().to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let report = |child: Child| {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("no {k} in {v}"));
        (n("ops"), n("errors"), n("get_miss"), n("timeouts"))
    };
    // SETs alone never need the cookie: the tool takes it from the replies, and batches.
    let (ops, errors, _, timeouts) = report(bench("1", "set"));
    assert!(ops > 1000 && errors == 0 && timeouts == 0, "{ops} ops");
    let mut c = Conn::new(server.addr());
    let stats = String::from_utf8_lossy(&c.call(Op::Stats, "", b"").1).into_owned();
    let batches = stat(&stats, "batches");
    assert!(
        batches > 0 && batches * 4 < stat(&stats, "requests"),
        "{stats}"
    );
    let (ops, errors, misses, timeouts) = report(bench("2", "mixed"));
    assert!(ops > 1000, "{ops} ops");
    assert_eq!((errors, misses, timeouts), (0, 0, 0));
    let stats = String::from_utf8_lossy(&c.call(Op::Stats, "", b"").1).into_owned();
    assert!(stat(&stats, "batches") > batches * 2, "{stats}");

    // A restart gives the server a new cookie secret: the tool's batches are refused
    // whole (CookieRequired) until it takes the new cookie; then they run again.
    let child = bench("4", "mixed");
    std::thread::sleep(Duration::from_millis(1500));
    server.kill9();
    server.spawn(&[]);
    let (ops, errors, _, _) = report(child);
    assert!(ops > 1000 && errors == 0, "{ops} ops, {errors} errors");
    let mut c = Conn::new(server.addr());
    let stats = String::from_utf8_lossy(&c.call(Op::Stats, "", b"").1).into_owned();
    assert!(
        stat(&stats, "gets") > 1000,
        "GETs ran after the restart: {stats}"
    );
}

#[test]
fn the_client_library_reads_and_writes_many_keys_in_batches() {
    use ocean_liner::client::{Client, ClientOptions};
    let server = Server::start();
    let mut c = Client::connect(server.addr(), ClientOptions::default()).unwrap();
    let keys: Vec<String> = (0..300).map(|i| format!("many:{i}")).collect();
    let values: Vec<Vec<u8>> = (0..300)
        .map(|i| vec![b'a' + (i % 26) as u8; 100 + i])
        .collect();
    let pairs: Vec<(&str, &[u8])> = keys
        .iter()
        .map(|k| k.as_str())
        .zip(values.iter().map(|v| &v[..]))
        .collect();
    c.set_many(&pairs).unwrap();
    let mut wanted: Vec<&str> = keys.iter().map(|k| k.as_str()).collect();
    wanted.push("never-written");
    let got = c.get_many(&wanted).unwrap();
    assert_eq!(got.len(), 301);
    for (i, v) in got[..300].iter().enumerate() {
        assert_eq!(v.as_deref(), Some(&values[i][..]), "{}", keys[i]);
    }
    assert_eq!(got[300], None);
    // The same keys read one by one agree.
    assert_eq!(c.get("many:7").unwrap().as_deref(), Some(&values[7][..]));
    let stats = c.stats().unwrap();
    assert!(stat(&stats, "batches") >= 300 * 100 / 1400, "{stats}");
}

/// The slices the kernel gives each of a process's threads, by thread name, from
/// `/proc/PID/task/*/sched` (`se.slice`, in ns); `None` where the kernel does not show
/// them (no scheduler debug information, or not EEVDF).
fn thread_slices(pid: u32) -> Option<Vec<(String, u64)>> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let dir = task.ok()?.path();
        let name = std::fs::read_to_string(dir.join("comm")).ok()?;
        let sched = std::fs::read_to_string(dir.join("sched")).ok()?;
        let slice = sched
            .lines()
            .find(|l| l.starts_with("se.slice"))?
            .split(':')
            .nth(1)?
            .trim()
            .parse()
            .ok()?;
        out.push((name.trim().to_string(), slice));
    }
    Some(out)
}

/// The replication thread runs with the `--sched-slice-us` slice (100 µs by default),
/// so that it preempts a process sharing its core as soon as its durable write is done;
/// `--sched-slice-us 0` leaves it the kernel's default.
#[test]
fn replication_thread_gets_the_short_scheduler_slice() {
    let mut slices = Vec::new();
    for flags in [&[][..], &["--sched-slice-us", "0"][..]] {
        let mut server = Server::start_with(flags);
        let mut c = Conn::new(server.addr());
        assert_eq!(c.call(Op::Set, "k", b"v").0, Status::Ok);
        let pid = server.child.as_ref().unwrap().id();
        let Some(found) = thread_slices(pid) else {
            eprintln!("skipped: this kernel shows no se.slice in /proc/PID/task/*/sched");
            return;
        };
        let replication = found
            .iter()
            .find(|(name, _)| name == "replication")
            .map(|(_, s)| *s)
            .expect("a replication thread");
        slices.push(replication);
        server.kill9();
    }
    assert_eq!(slices[0], 100_000, "the default slice, in ns");
    assert_ne!(slices[1], 100_000, "0 keeps the kernel's default");
}

/// `bench --values random` stores a value of its own in every key (over UDP single
/// requests and BATCH datagrams alike): the values read back have the asked length, are
/// not the repeated alphabet of the default, and nearly all differ from one another.
#[test]
fn the_load_tools_random_values_differ_from_key_to_key() {
    use ocean_liner::client::{Client, ClientOptions};
    let server = Server::start();
    for pipeline in ["1", "16"] {
        bench_ok(
            &server,
            &[
                "--workload",
                "set",
                "--values",
                "random",
                "--prefill",
                "--keys",
                "500",
                "--value-size",
                "120",
                "--pipeline",
                pipeline,
                "--duration",
                "0.2",
                "--warmup",
                "0",
            ],
        );
        let mut c = Client::connect(server.addr(), ClientOptions::default()).unwrap();
        let repeated: Vec<u8> = (0..120).map(|i| b'a' + (i % 26) as u8).collect();
        let mut seen = std::collections::HashSet::new();
        for i in 0..500 {
            let v = c.get(&format!("key:{i:010}")).unwrap().expect("prefilled");
            assert_eq!(v.len(), 120);
            assert_ne!(v, repeated, "key {i} holds the repeated value");
            seen.insert(v);
        }
        assert!(seen.len() > 490, "{} distinct values of 500", seen.len());
    }
    let refused = Command::new(BIN)
        .args([
            "bench",
            "--protocol",
            "memcache",
            "--values",
            "random",
            "--server",
        ])
        .arg(server.addr().to_string())
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--values random"));
}
