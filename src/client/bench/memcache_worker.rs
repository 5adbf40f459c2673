//! One load thread speaking memcached's UDP protocol (`--protocol memcache`): its UDP
//! sockets, each keeping its share of `--concurrency` commands outstanding in request
//! datagrams of up to `--pipeline` commands (and at most [`memcache::DATAGRAM_MAX`]
//! bytes), sent with `sendmmsg` and answered through `recvmmsg`.
//!
//! The phases, key sampler, latency histograms and statistics are the other workers', so
//! a memcached report compares line by line with Ocean Liner's and Redis's. A command's
//! latency runs from its datagram's transmission to the parse of its reply. A request
//! whose replies are not all in within `--timeout-ms` is abandoned: its unanswered
//! commands count as timeouts (prefill tries their keys again, a few times), and replies
//! that arrive later under its id are ignored. memcached has no retransmission or
//! exactly-once rule, so nothing is resent within a request.
//!
//! Replies are checked: a GET's `VALUE` must name the key asked for and carry the
//! value's length, a SET must be answered `STORED`; anything else counts as `Failed`. A
//! reply stream that is not memcached's protocol abandons the request the same way.

use super::keys::*;
use super::memcache::{self, McReply, Parsed};
use super::report::*;
use super::worker::{Phase, in_window, next_op, poll_until, udp_sockets};
use super::*;
use crate::net::{self, BATCH, RawAddr};
use std::collections::HashMap;

/// A command sent and not yet answered.
struct Pending {
    op: Op,
    key: u64,
    /// Prefill: timeouts so far for this key.
    attempts: u32,
    /// A GET's `VALUE` block has arrived (its `END` completes it).
    hit: bool,
}

/// A request datagram in flight.
struct InFlight {
    sent: Instant,
    ops: VecDeque<Pending>,
    /// Reply bytes not yet read as whole replies.
    input: Vec<u8>,
}

struct McSocket {
    /// Owns the descriptor `fd`.
    _socket: Socket,
    fd: RawFd,
    in_flight: HashMap<u16, InFlight>,
    next_id: u16,
    /// Commands this socket may start now (its share minus those outstanding).
    free: usize,
}

pub(super) struct MemcacheWorker {
    cfg: WorkerConfig,
    tx: Sender<Msg>,
    rng: StdRng,
    addr: RawAddr,
    sockets: Vec<McSocket>,
    sender: net::Sender,
    receiver: net::Receiver,
    tally: Tally,
    /// The phase has no more commands to start.
    exhausted: bool,
    pollfds: Vec<libc::pollfd>,
    /// Commands of the datagram being built.
    building: Vec<Pending>,
}

impl MemcacheWorker {
    pub(super) fn new(cfg: WorkerConfig, tx: Sender<Msg>) -> anyhow::Result<MemcacheWorker> {
        let server = *cfg.servers.first().context("no server address")?;
        let sockets = udp_sockets(cfg.sockets, server)?
            .into_iter()
            .map(|s| McSocket {
                fd: s.as_raw_fd(),
                _socket: s,
                in_flight: HashMap::new(),
                next_id: 0,
                free: 0,
            })
            .collect();
        Ok(MemcacheWorker {
            cfg,
            tx,
            rng: StdRng::from_entropy(),
            addr: RawAddr::new(&server),
            sockets,
            sender: net::Sender::new(),
            receiver: net::Receiver::new(),
            tally: Tally::new(),
            exhausted: false,
            pollfds: Vec::new(),
            building: Vec::new(),
        })
    }

    pub(super) fn run(&mut self, start_rx: Receiver<Instant>) -> anyhow::Result<()> {
        drive(self, start_rx)
    }

    fn run_phase_with(&mut self, phase: &mut Phase, slots: usize) -> anyhow::Result<()> {
        let n = self.sockets.len();
        for (i, s) in self.sockets.iter_mut().enumerate() {
            s.free = slots / n + usize::from(i < slots % n);
        }
        self.exhausted = false;
        let scan_every =
            (self.cfg.timeout / 20).clamp(Duration::from_millis(1), Duration::from_millis(50));
        let mut next_scan = Instant::now() + scan_every;
        let mut next_flush = Instant::now() + FLUSH_INTERVAL;
        loop {
            let now = Instant::now();
            let busy = self.sockets.iter().any(|s| !s.in_flight.is_empty());
            let retrying = matches!(phase, Phase::Prefill { retry, .. } if !retry.is_empty());
            match phase {
                Phase::Measure { end, .. } if now >= *end => break,
                Phase::Prefill { .. } if self.exhausted && !busy && !retrying => break,
                _ => {}
            }
            if retrying {
                self.exhausted = false;
            }
            if now >= next_scan {
                self.scan_timeouts(phase, now);
                next_scan = now + scan_every;
            }
            if now >= next_flush {
                let prefilling = self.cfg.prefill_keys.is_some();
                self.tally.flush(&self.tx, prefilling);
                next_flush = now + FLUSH_INTERVAL;
            }
            let sent = self.send(phase)?;
            let received = self.receive(phase)?;
            if sent == 0 && received == 0 {
                self.wait_idle(next_scan.min(next_flush));
            }
        }
        // Abandon whatever is still outstanding; later replies are ignored.
        for s in &mut self.sockets {
            s.in_flight.clear();
        }
        Ok(())
    }

    /// Fills every socket's share with new request datagrams and sends them; returns how
    /// many datagrams went out.
    fn send(&mut self, phase: &mut Phase) -> anyhow::Result<usize> {
        let mut total = 0;
        let value_len = self.cfg.value.len();
        // Room for one more command of either kind.
        let need = memcache::set_len(KEY_NAME_LEN, value_len).max(memcache::get_len(KEY_NAME_LEN));
        for si in 0..self.sockets.len() {
            while !self.exhausted && self.sockets[si].free > 0 {
                // Up to BATCH datagrams per system call.
                let now = Instant::now();
                let mut datagrams: Vec<(u16, VecDeque<Pending>)> = Vec::new();
                while datagrams.len() < BATCH && self.sockets[si].free > 0 && !self.exhausted {
                    let id = self.take_id(si);
                    let mut len = memcache::FRAME_HEADER_LEN;
                    self.building.clear();
                    while self.building.len() < self.cfg.pipeline && self.sockets[si].free > 0 {
                        if !self.building.is_empty() && len + need > memcache::DATAGRAM_MAX {
                            break;
                        }
                        let Some((op, key, attempts)) =
                            next_op(&self.cfg, &mut self.rng, phase, now)
                        else {
                            self.exhausted = true;
                            break;
                        };
                        let p = Pending {
                            op,
                            key,
                            attempts,
                            hit: false,
                        };
                        len += match p.op {
                            Op::Get => memcache::get_len(KEY_NAME_LEN),
                            _ => memcache::set_len(KEY_NAME_LEN, value_len),
                        };
                        self.sockets[si].free -= 1;
                        self.building.push(p);
                    }
                    if self.building.is_empty() {
                        break;
                    }
                    let value = &self.cfg.value;
                    let ops = &self.building;
                    self.sender.push_raw(self.addr, |out| {
                        memcache::begin_datagram(out, id);
                        let mut name = [0u8; KEY_NAME_LEN];
                        for p in ops {
                            let key = key_name(p.key, &mut name).as_bytes();
                            match p.op {
                                Op::Get => memcache::push_get(out, key),
                                _ => memcache::push_set(out, key, value),
                            }
                        }
                    });
                    datagrams.push((id, self.building.drain(..).collect()));
                }
                if datagrams.is_empty() {
                    break;
                }
                let sent = self
                    .sender
                    .send_nonblocking(self.sockets[si].fd)
                    .context("sendmmsg")?;
                let now = Instant::now();
                let full = sent < datagrams.len();
                for (k, (id, ops)) in datagrams.into_iter().enumerate() {
                    if k < sent {
                        self.sockets[si].in_flight.insert(
                            id,
                            InFlight {
                                sent: now,
                                ops,
                                input: Vec::new(),
                            },
                        );
                    } else {
                        // Not sent (the socket's buffer is full): the commands were never
                        // started; prefill's keys go back to be written later.
                        self.sockets[si].free += ops.len();
                        if let Phase::Prefill { retry, .. } = phase {
                            retry.extend(ops.iter().map(|p| (p.key, p.attempts)));
                            self.exhausted = false;
                        }
                    }
                }
                total += sent;
                if full {
                    break;
                }
            }
        }
        Ok(total)
    }

    /// A request id of socket `si` not in flight.
    fn take_id(&mut self, si: usize) -> u16 {
        let s = &mut self.sockets[si];
        loop {
            let id = s.next_id;
            s.next_id = s.next_id.wrapping_add(1);
            if !s.in_flight.contains_key(&id) {
                return id;
            }
        }
    }

    fn receive(&mut self, phase: &mut Phase) -> anyhow::Result<usize> {
        let mut total = 0;
        for si in 0..self.sockets.len() {
            for _ in 0..RECV_ROUNDS {
                let got = self
                    .receiver
                    .recv_nonblocking(self.sockets[si].fd)
                    .context("recvmmsg")?;
                let now = Instant::now();
                for j in 0..got {
                    let Some(d) = self.receiver.get(j) else {
                        continue;
                    };
                    if d.truncated {
                        continue;
                    }
                    let Some((head, payload)) = memcache::parse_frame(d.bytes) else {
                        continue;
                    };
                    let Some(req) = self.sockets[si].in_flight.get_mut(&head.request_id) else {
                        continue; // abandoned, or not ours
                    };
                    req.input.extend_from_slice(payload);
                    let latency_us = (now.duration_since(req.sent).as_micros() as u64).max(1);
                    let (completed, read) = answer(
                        req,
                        &self.cfg.value,
                        latency_us,
                        &mut self.tally,
                        phase,
                        now,
                    );
                    let finished = read.is_err() || req.ops.is_empty();
                    self.sockets[si].free += completed;
                    if finished
                        && let Some(req) = self.sockets[si].in_flight.remove(&head.request_id)
                    {
                        // A broken reply stream: what it left unanswered failed.
                        for _ in &req.ops {
                            self.tally
                                .answer(Some(Status::Failed), latency_us, phase, now);
                        }
                        self.sockets[si].free += req.ops.len();
                    }
                }
                total += got;
                if got < BATCH {
                    break;
                }
            }
        }
        Ok(total)
    }

    /// Abandons requests older than the timeout.
    fn scan_timeouts(&mut self, phase: &mut Phase, now: Instant) {
        let timeout = self.cfg.timeout;
        let window = in_window(phase, now);
        for s in &mut self.sockets {
            let expired: Vec<u16> = s
                .in_flight
                .iter()
                .filter(|(_, r)| now.duration_since(r.sent) >= timeout)
                .map(|(&id, _)| id)
                .collect();
            for id in expired {
                let Some(req) = s.in_flight.remove(&id) else {
                    continue;
                };
                s.free += req.ops.len();
                for p in req.ops {
                    self.tally.bump(window, |c| &mut c.timeouts);
                    if let Phase::Prefill { retry, failed, .. } = phase {
                        if p.attempts + 1 < PREFILL_ATTEMPTS {
                            retry.push((p.key, p.attempts + 1));
                        } else {
                            *failed += 1;
                        }
                    }
                }
            }
        }
    }

    /// Sleeps in `poll` until a socket is readable or `until`; at most 1 ms.
    fn wait_idle(&mut self, until: Instant) {
        let fds = self.sockets.iter().map(|s| (s.fd, libc::POLLIN));
        poll_until(&mut self.pollfds, fds, until);
    }
}

/// Reads the whole replies in `req.input`, completing its commands in order; returns
/// how many completed, and an error if the stream is not memcached's protocol or answers a
/// command it was not sent (the request is then abandoned).
fn answer(
    req: &mut InFlight,
    value: &[u8],
    latency_us: u64,
    tally: &mut Tally,
    phase: &mut Phase,
    now: Instant,
) -> (usize, Result<(), memcache::BadReply>) {
    let mut used = 0;
    let mut completed = 0;
    let mut result = Ok(());
    while let Some(front) = req.ops.front_mut() {
        let reply = match memcache::parse_reply(&req.input[used..], value.len()) {
            Ok(Parsed::Done(reply, n)) => {
                used += n;
                reply
            }
            Ok(Parsed::Incomplete) => break,
            Err(e) => {
                result = Err(e);
                break;
            }
        };
        let status = match (front.op, reply) {
            (Op::Get, McReply::Value { key, data }) => {
                let mut name = [0u8; KEY_NAME_LEN];
                if key != key_name(front.key, &mut name).as_bytes() || data.len() != value.len() {
                    result = Err(memcache::BadReply(
                        "VALUE for another key, or of another size",
                    ));
                    break;
                }
                front.hit = true;
                continue;
            }
            (Op::Get, McReply::End) if front.hit => Status::Ok,
            (Op::Get, McReply::End) => Status::NotFound,
            (Op::Get, McReply::Error(_)) => Status::Failed,
            (_, McReply::Stored) => Status::Ok,
            (_, McReply::NotStored | McReply::Error(_)) => Status::Failed,
            _ => {
                result = Err(memcache::BadReply(
                    "a reply that does not answer its command",
                ));
                break;
            }
        };
        req.ops.pop_front();
        tally.answer(Some(status), latency_us, phase, now);
        completed += 1;
    }
    req.input.drain(..used);
    (completed, result)
}

impl LoadThread for MemcacheWorker {
    fn config(&self) -> &WorkerConfig {
        &self.cfg
    }

    fn tally(&mut self) -> &mut Tally {
        &mut self.tally
    }

    fn tx(&self) -> &Sender<Msg> {
        &self.tx
    }

    fn run_phase(&mut self, phase: &mut Phase) -> anyhow::Result<()> {
        let slots = match phase {
            Phase::Prefill { .. } => self.cfg.slots,
            Phase::Measure { .. } => self.cfg.measure_slots,
        };
        self.run_phase_with(phase, slots)
    }
}
