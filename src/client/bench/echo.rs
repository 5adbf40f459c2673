//! `ocean-liner udp-ceiling`: a responder that answers every request at once, doing no
//! work — the request/response ceiling of this machine's UDP path for `ocean-liner bench`,
//! measured with the same client, the same datagrams and the same receive and send path
//! as a shard ([`crate::net`]: `recvmmsg` and `sendmmsg` batches, a 64 MiB socket buffer,
//! `SO_REUSEPORT`), so a node's figure can be read as a fraction of it.
//!
//! Each request is parsed as the server parses it and answered `200 Ok` with an empty
//! payload (a GET of an empty value), the request's cookie echoed so that no handshake is
//! needed; a datagram that does not parse gets no answer.

use crate::client::protocol::{self, Response, Status};
use crate::net::{Receiver, Sender};
use anyhow::Context;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const SOCKET_BUFFER_BYTES: usize = 64 << 20;

fn bind(addr: SocketAddr) -> anyhow::Result<UdpSocket> {
    crate::net::bind_reuse_port(addr, SOCKET_BUFFER_BYTES, Duration::from_millis(50))
        .with_context(|| format!("cannot listen on UDP {addr}"))
}

/// Answers on `addr` with `threads` threads (one socket each) until `stop`, or for
/// `duration` if given; returns how many requests were answered.
pub fn serve(
    addr: SocketAddr,
    threads: usize,
    duration: Option<Duration>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<u64> {
    let sockets: Vec<UdpSocket> = (0..threads.max(1))
        .map(|_| bind(addr))
        .collect::<anyhow::Result<_>>()?;
    let answered = Arc::new(AtomicU64::new(0));
    let until = duration.map(|d| Instant::now() + d);
    std::thread::scope(|scope| {
        for socket in &sockets {
            let (stop, answered) = (stop.clone(), answered.clone());
            scope.spawn(move || {
                let mut rx = Receiver::new();
                let mut tx = Sender::new();
                while !stop.load(Ordering::Relaxed) && until.is_none_or(|u| Instant::now() < u) {
                    let Ok(n) = rx.recv(socket) else { continue };
                    for i in 0..n {
                        let Some(d) = rx.get(i) else { continue };
                        let Ok(req) = protocol::parse_request(d.bytes) else {
                            continue;
                        };
                        let to = req.addressing();
                        tx.push(d.from, |out| {
                            protocol::encode_response(
                                &Response::reply(&to, Status::Ok, req.cookie, &[]),
                                out,
                            )
                        });
                    }
                    answered.fetch_add(tx.flush(socket) as u64, Ordering::Relaxed);
                }
            });
        }
    });
    Ok(answered.load(Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::protocol::{Op, Request};

    /// A request is answered `200 Ok` at once, addressed to it; garbage is not answered.
    #[test]
    fn requests_are_answered_at_once_and_garbage_is_not() {
        let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let stop = Arc::new(AtomicBool::new(false));
        let server = {
            let stop = stop.clone();
            std::thread::spawn(move || serve(addr, 1, None, stop).unwrap())
        };
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = [0u8; 2048];
        client
            .send_to(b"not a request at all, just bytes", addr)
            .unwrap();
        let req = Request {
            op: Op::Get,
            client_id: 77,
            request_seq: 5,
            cookie: 0,
            key: "k",
            value: &[],
        };
        let mut bytes = Vec::new();
        protocol::encode_request(&req, &mut bytes);
        let mut answer = None;
        for _ in 0..25 {
            client.send_to(&bytes, addr).unwrap();
            if let Ok((n, _)) = client.recv_from(&mut buf) {
                answer = Some(buf[..n].to_vec());
                break;
            }
        }
        let answer = answer.expect("an answer");
        let resp = protocol::parse_response(&answer).unwrap();
        assert_eq!(
            (resp.status, resp.client_id, resp.request_seq, resp.op),
            (Status::Ok, 77, 5, Some(Op::Get))
        );
        // Nothing else arrives but answers to the GET (sent again if one was slow): the
        // garbage got none.
        while let Ok((n, _)) = client.recv_from(&mut buf) {
            let again = protocol::parse_response(&buf[..n]).unwrap();
            assert_eq!((again.client_id, again.request_seq), (77, 5));
        }
        stop.store(true, Ordering::Relaxed);
        assert!(server.join().unwrap() >= 1);
    }
}
