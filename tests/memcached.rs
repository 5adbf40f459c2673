//! The load tool against a real memcached (Debian's package) over memcached's UDP
//! protocol: `ocean-liner bench --protocol memcache` prefills, runs a mixed load with
//! several commands per datagram, and what it wrote is read back with a datagram of our
//! own.

mod procs;

use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ocean-liner");

struct Memcached(Child);

impl Drop for Memcached {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One memcached request datagram (id 1) and its reply payloads, concatenated, until
/// `until` appears in them.
fn call(port: u16, command: &[u8], until: &[u8]) -> Vec<u8> {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut datagram = vec![0, 1, 0, 0, 0, 1, 0, 0];
    datagram.extend_from_slice(command);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        sock.send_to(&datagram, ("127.0.0.1", port)).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        while let Ok(n) = sock.recv(&mut buf) {
            if n >= 8 && buf[..2] == [0, 1] {
                got.extend_from_slice(&buf[8..n]);
            }
            if got.windows(until.len()).any(|w| w == until) {
                return got;
            }
        }
        assert!(Instant::now() < deadline, "memcached does not answer");
    }
}

#[test]
fn the_load_tool_drives_memcached_over_udp() {
    let present = Command::new("memcached")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !present {
        eprintln!("SKIPPED: memcached is not installed (.ci/run installs it)");
        return;
    }
    let port = procs::free_port(43_000);
    let child = Command::new("memcached")
        .args(["-l", "127.0.0.1", "-p", "0", "-U", &port.to_string()])
        .args(["-m", "64", "-t", "1", "-u", "root"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = Memcached(child);
    assert!(call(port, b"version\r\n", b"\r\n").starts_with(b"VERSION"));

    let out = Command::new(BIN)
        .args(["bench", "--protocol", "memcache", "--workload", "mixed"])
        .args([
            "--read-ratio",
            "0.5",
            "--keys",
            "2000",
            "--value-size",
            "300",
        ])
        .args(["--prefill", "--prefill-concurrency", "64"])
        .args(["--concurrency", "64", "--pipeline", "8", "--sockets", "2"])
        .args(["--duration", "2", "--warmup", "0.5", "--json", "--server"])
        .arg(format!("127.0.0.1:{port}"))
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains("\"protocol\":\"memcache\""), "{report}");
    assert!(procs::json_field(&report, "ops") > 100.0, "{report}");
    assert_eq!(procs::json_field(&report, "errors"), 0.0, "{report}");
    assert_eq!(procs::json_field(&report, "timeouts"), 0.0, "{report}");
    assert_eq!(
        procs::json_field(&report, "get_miss"),
        0.0,
        "every key was prefilled: {report}"
    );
    // The first and the last key hold the load's 300-byte value.
    for key in ["key:0000000000", "key:0000001999"] {
        let reply = call(port, format!("get {key}\r\n").as_bytes(), b"END\r\n");
        let head = format!("VALUE {key} 0 300\r\nabcdefghij");
        assert!(
            reply.starts_with(head.as_bytes()),
            "{}",
            String::from_utf8_lossy(&reply)
        );
    }
}
