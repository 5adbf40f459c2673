//! What the tests that start real processes share.

use std::net::{TcpListener, UdpSocket};
use std::sync::atomic::{AtomicU16, Ordering};

static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

/// A loopback port free for both UDP and TCP right now, never handed out twice in this
/// process (the tests of one file run in parallel). Numbers start at `base` plus a
/// stretch picked by the process id, so that runs side by side rarely collide.
pub fn free_port(base: u16) -> u16 {
    if NEXT_PORT.load(Ordering::Relaxed) == 0 {
        let start = base + (std::process::id() % 1000) as u16 * 16;
        let _ = NEXT_PORT.compare_exchange(0, start, Ordering::Relaxed, Ordering::Relaxed);
    }
    loop {
        let p = NEXT_PORT.fetch_add(1, Ordering::Relaxed);
        if UdpSocket::bind(("127.0.0.1", p)).is_ok() && TcpListener::bind(("127.0.0.1", p)).is_ok()
        {
            return p;
        }
    }
}

/// A number field of the load tool's JSON report (panics, naming the field, if absent).
#[allow(dead_code)] // not every test binary reads reports
pub fn json_field(report: &str, field: &str) -> f64 {
    report
        .split(&format!("\"{field}\":"))
        .nth(1)
        .and_then(|r| r.split(|c: char| !(c.is_ascii_digit() || c == '.')).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {report}"))
}
