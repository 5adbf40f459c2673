//! A shard core: ingress, window and reply for the clients the kernel sends it.
//!
//! Each shard owns a `SO_REUSEPORT` UDP socket on the client port and loops:
//! receive a batch (`recvmmsg`) → validate each datagram → answer GETs, PINGs and bad
//! requests at once → append the batch's writes to the shard's window → send the replies
//! of every window the replication core has completed (`sendmmsg`).
//!
//! A write is answered only from a [`Completion`], i.e. after its entry is durable and
//! applied. A GET reads the map the replication core applies to (the page lock makes
//! that safe), so it sees every acknowledged write.

use super::Shared;
use super::replication::Completion;
use super::udp::{Datagram, Receiver, Sender};
use super::window::{ReplyTo, Window};
use crate::command;
use crate::log::LogReader;
use crate::protocol::{
    self, Addressing, COOKIE_SECRET_LEN, Op, ParseError, Request, Response, Status,
};
use crate::store::{Lookup, key_hash};
use crossbeam_channel::{Receiver as ChannelReceiver, Sender as ChannelSender};
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Everything one shard thread owns.
pub struct Shard {
    pub index: usize,
    pub socket: UdpSocket,
    pub shared: Arc<Shared>,
    pub log_reader: LogReader,
    pub completions: ChannelReceiver<Completion>,
    pub flush_tx: ChannelSender<()>,
    pub cookie_secret: [u8; COOKIE_SECRET_LEN],
    /// Seal the window early once it holds this many bytes.
    pub window_bytes_max: usize,
    /// Refuse writes with Busy once the window holds this many bytes.
    pub window_bytes_hard_max: usize,
}

impl Shard {
    /// Runs until the server stops and every accepted write has been answered.
    pub fn run(mut self) {
        let mut receiver = Receiver::new();
        let mut sender = Sender::new();
        let mut batch = Window::default();
        let mut idle_reported = false;
        loop {
            if !self.shared.stop.load(Ordering::Acquire) {
                match receiver.recv(&self.socket) {
                    Ok(n) => {
                        for i in 0..n {
                            if let Some(d) = receiver.get(i) {
                                self.handle(&d, &mut batch, &mut sender);
                            }
                        }
                    }
                    Err(e) => eprintln!("ocean-liner: shard {}: receive failed: {e}", self.index),
                }
                if !batch.is_empty() {
                    let bytes = self.shared.windows[self.index].append(&mut batch);
                    if bytes >= self.window_bytes_max {
                        let _ = self.flush_tx.try_send(());
                    }
                }
            } else if !idle_reported {
                idle_reported = true;
                self.shared.shards_idle.fetch_add(1, Ordering::AcqRel);
            }
            while let Ok(done) = self.completions.try_recv() {
                self.reply_completion(&done, &mut sender);
            }
            sender.flush(&self.socket);
            if idle_reported && self.shared.replication_done.load(Ordering::Acquire) && self.completions.is_empty() {
                return;
            }
            if idle_reported {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    }

    fn cookie(&self, addr: &SocketAddr) -> u64 {
        protocol::cookie_for(&self.cookie_secret, addr)
    }

    /// Queues `response` to `to`, unless the source is unvalidated and the reply would be
    /// larger than its request: then only the cookie goes back.
    fn respond(&self, sender: &mut Sender, to: SocketAddr, request_len: usize, validated: bool, response: Response<'_>) {
        let response = if validated || protocol::reply_fits_unvalidated(request_len, response.encoded_len()) {
            response
        } else if response.status.is_success() || response.status == Status::NotFound {
            let to_addr = Addressing {
                op: response.op,
                client_id: response.client_id,
                request_seq: response.request_seq,
                cookie: 0,
            };
            Response::cookie_required(&to_addr, response.cookie)
        } else {
            // An error's message is optional: send the status alone.
            Response { payload: &[], ..response }
        };
        sender.push(to, |out| protocol::encode_response(&response, out));
    }

    fn handle(&mut self, d: &Datagram<'_>, batch: &mut Window, sender: &mut Sender) {
        let stats = &self.shared.stats;
        stats.requests.fetch_add(1, Ordering::Relaxed);
        let cookie = self.cookie(&d.from);
        let request_len = if d.truncated { usize::MAX } else { d.bytes.len() };
        let req = match protocol::parse_request(d.bytes) {
            Ok(req) if !d.truncated => req,
            Ok(req) => {
                // Larger than our receive buffer: certainly over the limit.
                stats.rejected.fetch_add(1, Ordering::Relaxed);
                let resp = Response::reply(&req.addressing(), Status::TooLarge, cookie, b"datagram larger than 1024 bytes");
                self.respond(sender, d.from, request_len, false, resp);
                return;
            }
            Err(ParseError::Unaddressable(_)) => {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(ParseError::Rejected(rejection)) => {
                stats.rejected.fetch_add(1, Ordering::Relaxed);
                let validated = rejection.to.cookie == cookie;
                self.respond(sender, d.from, request_len, validated, rejection.response(cookie));
                return;
            }
        };
        let validated = req.cookie == cookie;
        let to = req.addressing();
        match req.op {
            Op::Get => self.get(&req, d, validated, cookie, sender),
            Op::Set | Op::Delete => {
                let in_window = self.shared.windows[self.index].bytes() + batch.commands.len();
                if in_window >= self.window_bytes_hard_max {
                    stats.busy.fetch_add(1, Ordering::Relaxed);
                    self.respond(sender, d.from, request_len, validated, Response::reply(&to, Status::Busy, cookie, b""));
                    return;
                }
                let (op, value) = match req.op {
                    Op::Set => (command::Op::Set, req.value),
                    _ => (command::Op::Delete, &[][..]),
                };
                command::encode(&mut batch.commands, op, req.client_id, req.request_seq, req.key.as_bytes(), value);
                batch.replies.push(ReplyTo {
                    addr: d.from,
                    op: req.op,
                    client_id: req.client_id,
                    request_seq: req.request_seq,
                });
            }
            Op::Ping => self.respond(sender, d.from, request_len, validated, Response::reply(&to, Status::Ok, cookie, b"")),
            Op::Stats => {
                let text = self.shared.stats_text();
                self.respond(sender, d.from, request_len, validated, Response::reply(&to, Status::Ok, cookie, text.as_bytes()));
            }
        }
    }

    fn get(&mut self, req: &Request<'_>, d: &Datagram<'_>, validated: bool, cookie: u64, sender: &mut Sender) {
        let to = req.addressing();
        self.shared.stats.gets.fetch_add(1, Ordering::Relaxed);
        let value = match self.shared.map.get(key_hash(req.key.as_bytes())) {
            Lookup::Missing => None,
            Lookup::Inline(v) => Some(v),
            Lookup::InLog(offset) => {
                match self.log_reader.read_value_at(offset) {
                    Ok(v) => Some(v),
                    Err(e) => {
                        eprintln!("ocean-liner: reading a value from the log failed: {e}");
                        let resp = Response::reply(&to, Status::Failed, cookie, b"log read failed");
                        self.respond(sender, d.from, d.bytes.len(), validated, resp);
                        return;
                    }
                }
            }
        };
        let resp = match &value {
            Some(v) => Response::reply(&to, Status::Ok, cookie, v),
            None => Response::reply(&to, Status::NotFound, cookie, b""),
        };
        self.respond(sender, d.from, d.bytes.len(), validated, resp);
    }

    fn reply_completion(&self, done: &Completion, sender: &mut Sender) {
        for (reply, status) in done.window.replies.iter().zip(&done.statuses) {
            let to = Addressing {
                op: Some(reply.op),
                client_id: reply.client_id,
                request_seq: reply.request_seq,
                cookie: 0,
            };
            let resp = Response::reply(&to, *status, self.cookie(&reply.addr), b"");
            // Write replies are header-only: never larger than the request.
            sender.push(reply.addr, |out| protocol::encode_response(&resp, out));
        }
    }
}
