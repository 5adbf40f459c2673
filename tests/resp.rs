//! The RESP door (`--resp-port`) on a real server process: pipelines of raw RESP, the
//! Redis project's own clients (redis-cli and redis-benchmark, Debian's redis-tools),
//! redis-py (PyPI), and kill -9 after which every acknowledged write is read back.

mod procs;

use ocean_liner::resp::{self, Limits, Parsed, Reply};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ocean-liner");
/// A UDP/TCP port number and a RESP port no one uses right now.
fn free_ports() -> (u16, u16) {
    (procs::free_port(40_000), procs::free_port(40_000))
}

struct Server {
    child: Option<Child>,
    udp: u16,
    resp: u16,
    dir: PathBuf,
    extra: Vec<String>,
    _tmp: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        Server::start_with(&[])
    }

    fn start_with(extra: &[&str]) -> Server {
        let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let (udp, resp) = free_ports();
        let mut s = Server {
            child: None,
            udp,
            resp,
            dir: tmp.path().join("data"),
            extra: extra.iter().map(|a| a.to_string()).collect(),
            _tmp: tmp,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let child = Command::new(BIN)
            .args(["--cores", "2", "--no-pin", "--batch-window-ms", "10"])
            .args(&self.extra)
            .args(["--client-port", &self.udp.to_string()])
            .args(["--resp-port", &self.resp.to_string()])
            .arg("--data-dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.log()).unwrap())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(mut c) = Resp::connect(self.resp) {
                let mut out = Vec::new();
                resp::command(&mut out, &["SET", "__up", "1"]);
                c.send(&out);
                // Until this node has elected itself, writes are refused: try again.
                if c.reply() == Some(ok()) {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "the RESP door did not come up on port {}:\n{}",
            self.resp,
            std::fs::read_to_string(self.log()).unwrap_or_default()
        );
    }

    fn log(&self) -> PathBuf {
        self._tmp.path().join("server.log")
    }

    fn kill9(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
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

/// A raw RESP connection.
struct Resp {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Resp {
    fn connect(port: u16) -> std::io::Result<Resp> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Resp {
            stream,
            buf: Vec::new(),
        })
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    fn reply(&mut self) -> Option<Reply> {
        loop {
            match resp::parse_reply(&self.buf, &Limits::default()).unwrap() {
                Parsed::Done(reply, n) => {
                    self.buf.drain(..n);
                    return Some(reply);
                }
                Parsed::Incomplete { .. } => {
                    let mut chunk = [0u8; 65536];
                    let n = self.stream.read(&mut chunk).ok()?;
                    if n == 0 {
                        return None;
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                }
            }
        }
    }

    fn call(&mut self, args: &[&str]) -> Reply {
        let mut out = Vec::new();
        resp::command(&mut out, args);
        self.send(&out);
        self.reply().expect("a reply")
    }
}

fn ok() -> Reply {
    Reply::Simple(b"OK".to_vec())
}

fn bulk(v: &str) -> Reply {
    Reply::Bulk(Some(v.as_bytes().to_vec()))
}

fn error_starts(reply: &Reply, prefix: &str) -> bool {
    matches!(reply, Reply::Error(e) if e.starts_with(prefix.as_bytes()))
}

/// One pipeline of every kind of command, sent in one write: the replies come back in
/// order, and reads see the writes before them on the connection.
#[test]
fn a_pipeline_is_answered_in_order_and_reads_its_own_writes() {
    let server = Server::start();
    let mut c = Resp::connect(server.resp).unwrap();
    let commands: &[&[&str]] = &[
        &["SET", "a", "1"],
        &["GET", "a"],
        &["SET", "long", &"v".repeat(300)],
        &["DEL", "a", "nothing"],
        &["GET", "a"],
        &["MSET", "x", "10", "y", "20"],
        &["MGET", "x", "y", "z"],
        &["EXISTS", "x", "z", "y"],
        &["GET", "long"],
        &["PING"],
        &["ECHO", "hi"],
        &["SELECT", "0"],
        &["SELECT", "1"],
        &["HELLO", "3"],
        &["CLIENT", "SETNAME", "tester"],
        &["CLIENT", "GETNAME"],
        &["SET", "k"],
        &["NOSUCH", "arg"],
        &["DBSIZE"],
    ];
    let mut out = Vec::new();
    for cmd in commands {
        resp::command(&mut out, cmd);
    }
    out.extend_from_slice(b"PING\r\n");
    c.send(&out);
    let replies: Vec<Reply> = (0..commands.len() + 1)
        .map(|_| c.reply().unwrap())
        .collect();
    assert_eq!(replies[0], ok());
    assert_eq!(replies[1], bulk("1"));
    assert_eq!(replies[2], ok());
    assert_eq!(replies[3], Reply::Integer(1), "one of the two keys existed");
    assert_eq!(replies[4], Reply::Bulk(None));
    assert_eq!(replies[5], ok());
    assert_eq!(
        replies[6],
        Reply::Array(Some(vec![bulk("10"), bulk("20"), Reply::Bulk(None)]))
    );
    assert_eq!(replies[7], Reply::Integer(2));
    assert_eq!(replies[8], bulk(&"v".repeat(300)));
    assert_eq!(replies[9], Reply::Simple(b"PONG".to_vec()));
    assert_eq!(replies[10], bulk("hi"));
    assert_eq!(replies[11], ok());
    assert!(error_starts(&replies[12], "ERR DB index is out of range"));
    assert!(error_starts(&replies[13], "NOPROTO"));
    assert_eq!(replies[14], ok());
    assert_eq!(replies[15], bulk("tester"));
    assert!(error_starts(
        &replies[16],
        "ERR wrong number of arguments for 'set' command"
    ));
    assert!(error_starts(&replies[17], "ERR unknown command 'NOSUCH'"));
    // __up, long, x, y.
    assert_eq!(replies[18], Reply::Integer(4));
    assert_eq!(replies[19], Reply::Simple(b"PONG".to_vec()));
}

/// SET NX/XX/GET, SETNX, GETSET, GETDEL and the INCR family answer as Redis answers,
/// in one pipeline (so in the same window, each seeing the ones before it) and across
/// windows.
#[test]
fn conditional_writes_answer_as_redis_does() {
    let server = Server::start();
    let mut c = Resp::connect(server.resp).unwrap();
    let int = Reply::Integer;
    let nil = Reply::Bulk(None);
    let cases: &[(&[&str], Reply)] = &[
        (&["SET", "n", "10"], ok()),
        (&["INCR", "n"], int(11)),
        (&["INCRBY", "n", "5"], int(16)),
        (&["DECR", "n"], int(15)),
        (&["DECRBY", "n", "100"], int(-85)),
        (&["GET", "n"], bulk("-85")),
        (&["INCR", "fresh"], int(1)),
        (&["SET", "k", "v", "NX"], ok()),
        (&["SET", "k", "v2", "nx"], nil.clone()),
        (&["SET", "k", "v3", "XX", "GET"], bulk("v")),
        (&["GET", "k"], bulk("v3")),
        (&["SET", "absent", "1", "XX"], nil.clone()),
        (&["EXISTS", "absent"], int(0)),
        (&["SET", "k", "v4", "KEEPTTL", "GET"], bulk("v3")),
        (&["SETNX", "k", "q"], int(0)),
        (&["SETNX", "k2", "q"], int(1)),
        (&["GETSET", "k2", "r"], bulk("q")),
        (&["GETDEL", "k2"], bulk("r")),
        (&["GETDEL", "k2"], nil.clone()),
        (&["EXISTS", "k2"], int(0)),
        (&["SET", "k", "a", "GET"], bulk("v4")),
        (&["GET", "k"], bulk("a")),
    ];
    let errors: &[(&[&str], &str)] = &[
        (
            &["INCR", "k"],
            "ERR value is not an integer or out of range",
        ),
        (&["SET", "max", "9223372036854775807"], ""),
        (
            &["INCR", "max"],
            "ERR increment or decrement would overflow",
        ),
        (
            &["INCRBY", "n", "1.5"],
            "ERR value is not an integer or out of range",
        ),
        (
            &["DECRBY", "n", "-9223372036854775808"],
            "ERR decrement would overflow",
        ),
        (
            &["SET", "a", "b", "EX", "10"],
            "ERR SET EX, PX, EXAT and PXAT are not supported",
        ),
        (&["SET", "a", "b", "NX", "XX"], "ERR syntax error"),
        (&["SET", "a", "b", "FOO"], "ERR syntax error"),
        (
            &["INCR"],
            "ERR wrong number of arguments for 'incr' command",
        ),
        (&["GET", "a"], ""),
    ];
    // Once one command at a time, once as one pipeline (one window).
    for round in 0..2 {
        let prefix = format!("r{round}:");
        let named = |args: &[&str]| -> Vec<String> {
            args.iter()
                .enumerate()
                .map(|(i, a)| {
                    if i == 1 {
                        format!("{prefix}{a}")
                    } else {
                        a.to_string()
                    }
                })
                .collect()
        };
        let mut out = Vec::new();
        let mut want = Vec::new();
        for (args, reply) in cases {
            let args = named(args);
            let args: Vec<&str> = args.iter().map(|a| a.as_str()).collect();
            if round == 0 {
                assert_eq!(&c.call(&args), reply, "{args:?}");
            } else {
                resp::command(&mut out, &args);
                want.push(reply.clone());
            }
        }
        for (args, err) in errors {
            let args = named(args);
            let args: Vec<&str> = args.iter().map(|a| a.as_str()).collect();
            let reply = if round == 0 {
                c.call(&args)
            } else {
                resp::command(&mut out, &args);
                continue;
            };
            match *err {
                "" if args[0] == "GET" => assert_eq!(reply, nil, "{args:?}"),
                "" => assert_eq!(reply, ok(), "{args:?}"),
                _ => assert!(error_starts(&reply, err), "{args:?}: {reply:?}"),
            }
        }
        if round == 1 {
            c.send(&out);
            for (i, w) in want.iter().enumerate() {
                assert_eq!(&c.reply().unwrap(), w, "pipelined {:?}", cases[i].0);
            }
            for (args, err) in errors {
                let reply = c.reply().unwrap();
                match *err {
                    "" if args[0] == "GET" => assert_eq!(reply, nil, "{args:?}"),
                    "" => assert_eq!(reply, ok(), "{args:?}"),
                    _ => assert!(error_starts(&reply, err), "{args:?}: {reply:?}"),
                }
            }
        }
    }
}

/// Many connections INCR one counter at once: every acknowledged INCR got a value no other
/// got, together they are exactly 1..=N, and after kill -9 the counter is N.
#[test]
fn concurrent_incr_hands_out_each_value_once_and_survives_kill_9() {
    let mut server = Server::start();
    let port = server.resp;
    let threads: Vec<_> = (0..6)
        .map(|t| {
            std::thread::spawn(move || {
                let mut c = Resp::connect(port).unwrap();
                let mut got = Vec::new();
                for round in 0..20 {
                    let depth = 1 + (t * 7 + round) % 16;
                    let mut out = Vec::new();
                    for _ in 0..depth {
                        resp::command(&mut out, &["INCR", "counter"]);
                        resp::command(&mut out, &["SET", "other", "x"]);
                    }
                    c.send(&out);
                    for _ in 0..depth {
                        match c.reply().unwrap() {
                            Reply::Integer(n) => got.push(n),
                            other => panic!("INCR answered {other:?}"),
                        }
                        assert_eq!(c.reply().unwrap(), ok());
                    }
                }
                got
            })
        })
        .collect();
    let mut all: Vec<i64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    all.sort_unstable();
    let n = all.len() as i64;
    assert_eq!(all, (1..=n).collect::<Vec<_>>(), "each value once");
    server.kill9();
    server.spawn();
    let mut c = Resp::connect(server.resp).unwrap();
    assert_eq!(c.call(&["GET", "counter"]), bulk(&n.to_string()));
    assert_eq!(c.call(&["INCR", "counter"]), Reply::Integer(n + 1));
}

/// A value of `len` bytes that differs for each `seed`.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn stat(udp: u16, name: &str) -> u64 {
    let out = Command::new(BIN)
        .args(["stats", "--server", &format!("127.0.0.1:{udp}")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in stats:\n{text}"))
}

/// Values of 16 MiB, the limit, go through the window (an entry of their own), the log,
/// replay after kill -9, the cleaner (which moves them out of mostly dead segments) and
/// a backup restored into a new node; one byte more is refused. A UDP GET of one answers
/// that it does not fit a datagram.
#[test]
fn sixteen_mib_values_through_log_cleaner_and_snapshot() {
    const MIB16: usize = 16 << 20;
    let mut server = Server::start_with(&[
        "--disk-target-mib",
        "64",
        "--checkpoint-interval-s",
        "1",
        "--window-kib-max",
        "1024",
    ]);
    let mut c = Resp::connect(server.resp).unwrap();
    let values: Vec<Vec<u8>> = (0..3).map(|i| pattern(i, MIB16)).collect();
    let set = |c: &mut Resp, key: &str, value: &[u8]| {
        let mut out = Vec::new();
        resp::command(&mut out, &[&b"SET"[..], key.as_bytes(), value]);
        c.send(&out);
        c.reply().unwrap()
    };
    for (i, v) in values.iter().enumerate() {
        assert_eq!(set(&mut c, &format!("big:{i}"), v), ok(), "big:{i}");
        // Small writes around them share windows with them.
        assert_eq!(c.call(&["SET", &format!("small:{i}"), "s"]), ok());
    }
    let over = vec![b'x'; MIB16 + 1];
    assert!(error_starts(
        &set(&mut c, "over", &over),
        "ERR values may be at most 16777216 bytes"
    ));
    // Overwrite one key with 16 MiB values until the segments behind are mostly dead.
    for round in 0..8 {
        assert_eq!(set(&mut c, "churn", &pattern(100 + round, MIB16)), ok());
    }
    let check = |port: u16, label: &str| {
        let mut c = Resp::connect(port).unwrap();
        for (i, v) in values.iter().enumerate() {
            let got = c.call(&["GET", &format!("big:{i}")]);
            assert!(
                got == Reply::Bulk(Some(v.clone())),
                "{label}: big:{i} differs"
            );
        }
        assert_eq!(c.call(&["GET", "small:2"]), bulk("s"), "{label}");
        assert_eq!(c.call(&["EXISTS", "over"]), Reply::Integer(0), "{label}");
        let churn = c.call(&["GET", "churn"]);
        assert!(
            churn == Reply::Bulk(Some(pattern(107, MIB16))),
            "{label}: churn differs"
        );
    };
    check(server.resp, "written");
    let deadline = Instant::now() + Duration::from_secs(30);
    while stat(server.udp, "values_moved") == 0 {
        assert!(Instant::now() < deadline, "the cleaner moved no value");
        std::thread::sleep(Duration::from_millis(200));
    }
    check(server.resp, "cleaned");
    // Over UDP the value cannot be answered in a datagram: the client is told so.
    let out = Command::new(BIN)
        .args([
            "get",
            "big:0",
            "--server",
            &format!("127.0.0.1:{}", server.udp),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("TooLarge"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.kill9();
    server.spawn();
    check(server.resp, "after kill -9");
    // A backup of the live node, restored into a new one.
    let file = server._tmp.path().join("backup.snap");
    let saved = Command::new(BIN)
        .args(["snapshot", "save"])
        .arg(&file)
        .args(["--server", &format!("127.0.0.1:{}", server.udp)])
        .output()
        .unwrap();
    assert!(
        saved.status.success(),
        "{}",
        String::from_utf8_lossy(&saved.stderr)
    );
    let mut restored = Server::start_with(&[]);
    restored.kill9();
    std::fs::remove_dir_all(&restored.dir).unwrap();
    let out = Command::new(BIN)
        .args(["snapshot", "restore"])
        .arg(&file)
        .arg("--data-dir")
        .arg(&restored.dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    restored.spawn();
    check(restored.resp, "restored");
}

/// `ocean-liner bench --protocol resp` with a mixed load over prefilled keys.
fn bench_resp(port: u16) -> String {
    let out = Command::new(BIN)
        .args(["bench", "--protocol", "resp", "--workload", "mixed"])
        .args(["--keys", "2000", "--prefill", "--prefill-concurrency", "64"])
        .args(["--concurrency", "64", "--pipeline", "8"])
        .args(["--duration", "2", "--warmup", "0.5", "--json", "--server"])
        .arg(format!("127.0.0.1:{port}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The load tool speaks RESP: the same report from Ocean Liner's RESP door and from a
/// real Redis (Debian's redis-server, when installed), every prefilled key read back.
#[test]
fn the_load_tool_drives_the_door_and_redis_over_resp() {
    let server = Server::start();
    let report = bench_resp(server.resp);
    assert!(report.contains("\"protocol\":\"resp\""), "{report}");
    assert!(procs::json_field(&report, "ops") > 100.0, "{report}");
    assert_eq!(procs::json_field(&report, "errors"), 0.0, "{report}");
    assert_eq!(
        procs::json_field(&report, "get_miss"),
        0.0,
        "every key was prefilled: {report}"
    );
    let mut c = Resp::connect(server.resp).unwrap();
    assert_eq!(
        c.call(&["EXISTS", "key:0000000000", "key:0000001999"]),
        Reply::Integer(2)
    );
    if !have("redis-server") {
        eprintln!("SKIPPED (the Redis half): redis-server is not installed");
        return;
    }
    let (_, port) = free_ports();
    let mut redis = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Resp::connect(port).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let report = bench_resp(port);
    let _ = redis.kill();
    let _ = redis.wait();
    assert!(procs::json_field(&report, "ops") > 100.0, "{report}");
    assert_eq!(procs::json_field(&report, "errors"), 0.0, "{report}");
    assert_eq!(procs::json_field(&report, "get_miss"), 0.0, "{report}");
}

/// Bytes that are not RESP get Redis's protocol error, and the connection is closed.
#[test]
fn a_protocol_error_is_answered_and_the_connection_closed() {
    let server = Server::start();
    let mut c = Resp::connect(server.resp).unwrap();
    c.send(b"*1\r\n$3\r\nGET\r\n*x\r\n");
    let first = c.reply().unwrap();
    assert!(error_starts(
        &first,
        "ERR wrong number of arguments for 'get'"
    ));
    let second = c.reply().unwrap();
    assert_eq!(
        second,
        Reply::Error(b"ERR Protocol error: invalid multibulk length".to_vec())
    );
    assert_eq!(c.reply(), None, "closed");
    // A bulk string over the parser's bound is a protocol error too (values up to the
    // limit and one byte over it: `sixteen_mib_values_through_log_cleaner_and_snapshot`).
    let mut c = Resp::connect(server.resp).unwrap();
    c.send(format!("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n${}\r\n", 64 << 20).as_bytes());
    assert_eq!(
        c.reply(),
        Some(Reply::Error(
            b"ERR Protocol error: invalid bulk length".to_vec()
        ))
    );
    assert_eq!(c.reply(), None, "closed");
}

/// Pipelined SETs acknowledged before a kill -9 are all there after the restart, and
/// reads over UDP see them too (with the shard's UDP loop on a thread of its own,
/// `--shard-loop thread`; the other tests run it in the door's executor, the default).
#[test]
fn acknowledged_pipelined_writes_survive_kill_9() {
    let mut server = Server::start_with(&["--shard-loop", "thread"]);
    let mut c = Resp::connect(server.resp).unwrap();
    let mut out = Vec::new();
    for i in 0..2000 {
        resp::command(
            &mut out,
            &["SET", &format!("key:{i}"), &format!("value-{i}")],
        );
    }
    c.send(&out);
    for i in 0..2000 {
        assert_eq!(c.reply().unwrap(), ok(), "SET {i}");
    }
    server.kill9();
    server.spawn();
    let mut c = Resp::connect(server.resp).unwrap();
    for i in (0..2000).step_by(7) {
        assert_eq!(
            c.call(&["GET", &format!("key:{i}")]),
            bulk(&format!("value-{i}")),
            "key:{i}"
        );
    }
    let out = Command::new(BIN)
        .args([
            "get",
            "key:1999",
            "--server",
            &format!("127.0.0.1:{}", server.udp),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "value-1999");
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// redis-cli, unmodified: commands, a value from stdin, the reply formats.
#[test]
fn redis_cli_talks_to_the_door() {
    if !have("redis-cli") {
        eprintln!("SKIPPED: redis-cli is not installed (Debian's redis-tools)");
        return;
    }
    let server = Server::start();
    let port = server.resp.to_string();
    let cli = |args: &[&str], stdin: Option<&[u8]>| {
        let mut child = Command::new("redis-cli")
            .args(["-p", &port])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(input) = stdin {
            child.stdin.take().unwrap().write_all(input).unwrap();
        } else {
            drop(child.stdin.take());
        }
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim_end().to_string()
    };
    assert_eq!(cli(&["PING"], None), "PONG");
    assert_eq!(cli(&["SET", "greeting", "hello world"], None), "OK");
    assert_eq!(cli(&["GET", "greeting"], None), "hello world");
    let big: Vec<u8> = (0..200_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    assert_eq!(cli(&["-x", "SET", "big"], Some(&big)), "OK");
    assert!(cli(&["STRLEN", "big"], None).contains("unknown command"));
    let got = cli(&["GET", "big"], None);
    assert_eq!(got.as_bytes(), &big[..]);
    assert_eq!(cli(&["DEL", "greeting", "missing"], None), "1");
    assert_eq!(cli(&["EXISTS", "greeting"], None), "0");
}

/// redis-benchmark, unmodified, pipelined: every request answered without an error, and
/// the keys it wrote are there.
#[test]
fn redis_benchmark_runs_against_the_door() {
    if !have("redis-benchmark") {
        eprintln!("SKIPPED: redis-benchmark is not installed (Debian's redis-tools)");
        return;
    }
    let server = Server::start();
    let out = Command::new("redis-benchmark")
        .args(["-p", &server.resp.to_string()])
        .args(["-t", "set,get", "-n", "20000", "-c", "20", "-P", "16", "-q"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("SET:") && text.contains("GET:"), "{text}");
    assert!(!text.to_lowercase().contains("error"), "{text}");
    let mut c = Resp::connect(server.resp).unwrap();
    assert!(matches!(c.call(&["DBSIZE"]), Reply::Integer(n) if n >= 2));
    assert_eq!(c.call(&["GET", "key:__rand_int__"]), bulk("VXK"));
}

/// What redis-py does against the door, in two phases around a kill -9: `write` pipelines
/// 1,000 SETs, an MSET and a 1 MiB value and prints "acked" once all are acknowledged;
/// `check` reads every one back.
const REDIS_PY: &str = r#"
import hashlib, sys, redis
port, phase = int(sys.argv[1]), sys.argv[2]
# RESP2: redis-py 5+ asks for RESP3 with HELLO 3, which the door refuses.
r = redis.Redis(port=port, protocol=2, socket_timeout=20)
big = hashlib.sha256(b"seed").digest() * (1 << 15)
assert len(big) == 1 << 20
if phase == "write":
    p = r.pipeline(transaction=False)
    for i in range(1000):
        p.set(f"py:{i}", f"value-{i}")
    assert all(p.execute())
    assert r.mset({"m:a": "1", "m:b": "2"})
    assert r.set("py:big", big)
    assert r.get("py:big") == big
    # Conditional writes and counters, as redis-py calls them.
    assert r.set("py:nx", "a", nx=True) and r.set("py:nx", "b", nx=True) is None
    assert r.set("py:nx", "c", xx=True, get=True) == b"a"
    assert r.setnx("py:nx", "d") is False and r.getset("py:nx", "e") == b"c"
    assert r.getdel("py:nx") == b"e" and r.getdel("py:nx") is None
    p = r.pipeline(transaction=False)
    for _ in range(100):
        p.incr("py:counter")
    p.decrby("py:counter", 30)
    p.incrby("py:counter", 5)
    assert p.execute() == list(range(1, 101)) + [70, 75]
    try:
        r.incr("py:0")
        raise AssertionError("INCR of a non-integer succeeded")
    except redis.ResponseError as e:
        assert "not an integer" in str(e)
    print("acked")
else:
    p = r.pipeline(transaction=False)
    for i in range(1000):
        p.get(f"py:{i}")
    got = p.execute()
    assert got == [f"value-{i}".encode() for i in range(1000)], "a pipelined SET was lost"
    assert r.mget("m:a", "m:b", "m:none") == [b"1", b"2", None]
    assert r.get("py:big") == big
    assert r.delete("m:a", "m:none") == 1 and r.exists("m:a") == 0
    assert r.get("py:counter") == b"75" and r.incr("py:counter") == 76
    # The command table and INFO as redis-py reads them.
    table = r.command()
    assert table["incr"]["arity"] == 2 and table["mset"]["step_count"] == 2, table["mset"]
    assert r.command_count() == len(table) and b"getdel" in r.command_list()
    assert r.info("keyspace")["db0"]["keys"] >= 1000
    assert r.info("replication")["role"] == "master" and "db0" not in r.info("replication")
    print("checked")
"#;

/// redis-py, unmodified (PyPI): a pipeline, MSET/MGET, a 1 MiB value, then kill -9 and
/// every acknowledged write read back.
#[test]
fn redis_py_writes_survive_kill_9() {
    let importable = Command::new("python3")
        .args(["-c", "import redis"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !importable {
        eprintln!("SKIPPED: redis-py is not installed (python3 -m pip install redis)");
        return;
    }
    let mut server = Server::start();
    let port = server.resp.to_string();
    let py = |phase: &str| {
        let out = Command::new("python3")
            .args(["-c", REDIS_PY, &port, phase])
            .output()
            .unwrap();
        (
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (out, err) = py("write");
    assert_eq!(out, "acked", "{err}");
    server.kill9();
    server.spawn();
    let (out, err) = py("check");
    assert_eq!(out, "checked", "{err}");
}

/// With `--metrics-addr`, RESP commands are timed and counted per door: the scrape, parsed
/// by prometheus-parse, holds a write and a read latency histogram for the RESP door.
#[test]
fn resp_commands_show_in_the_metrics() {
    use prometheus_parse::{Scrape, Value};
    let (metrics_port, _) = free_ports();
    let server = Server::start_with(&["--metrics-addr", &format!("127.0.0.1:{metrics_port}")]);
    let mut c = Resp::connect(server.resp).unwrap();
    for i in 0..50 {
        assert_eq!(c.call(&["SET", &format!("m{i}"), "v"]), ok());
        assert_eq!(c.call(&["GET", &format!("m{i}")]), bulk("v"));
    }
    let mut stream = TcpStream::connect(("127.0.0.1", metrics_port)).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1;
    let scrape = Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).unwrap();
    for op in ["write", "read"] {
        let h = scrape
            .samples
            .iter()
            .find(|m| {
                m.metric == "ocean_liner_request_seconds"
                    && m.labels.get("door") == Some("resp")
                    && m.labels.get("op") == Some(op)
            })
            .unwrap_or_else(|| panic!("no RESP {op} histogram"));
        let Value::Histogram(b) = &h.value else {
            panic!("not a histogram")
        };
        assert!(b.last().unwrap().count >= 50.0, "{op}: {b:?}");
    }
    let door = scrape
        .samples
        .iter()
        .find(|m| {
            m.metric == "ocean_liner_slot_requests_total" && m.labels.get("door") == Some("resp")
        })
        .expect("the door's own counter");
    assert!(
        matches!(door.value, Value::Counter(n) if n >= 100.0),
        "{door:?}"
    );
}
