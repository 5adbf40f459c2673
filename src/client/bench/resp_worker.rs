//! One load thread speaking RESP (`--protocol resp`): its TCP connections, each keeping
//! up to `--pipeline` commands in flight, answered in order.
//!
//! The concurrency model is the UDP worker's: the thread's share of `--concurrency`
//! requests is outstanding at all times, here as connections of `--pipeline` commands
//! each (a connection sends its next command as soon as one is answered, so its pipeline
//! stays full). The phases, key sampler, latency histograms and statistics are the UDP
//! worker's too, so a report from Ocean Liner's RESP door, from its UDP port and from
//! Redis compare line by line. Latency runs from when a command is queued on its
//! connection to when its reply is parsed.
//!
//! Replies: `+OK` to a SET and a bulk string to a GET count as ok, a nil bulk as a miss;
//! errors are final (nothing is resent) and counted by status: `-BUSY…` as Busy,
//! `-READONLY…` as NotLeader, any other as Failed. TCP
//! delivers every reply, so there are no timeouts; a connection the server closes, or a
//! reply that is not RESP, ends the run with an error.

use super::keys::*;
use super::report::*;
use super::worker::{Phase, WorkerConfig, next_op, poll_until, set_value};
use super::*;
use crate::resp::{self, Limits, Parsed, Reply};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;

/// Bytes read from a connection at a time.
const READ_CHUNK: usize = 64 << 10;

/// Prefill's commands in flight per connection at least: it fills the key space at full
/// speed whatever pipeline the measurement uses, without a connection per command.
const PREFILL_PIPELINE_MIN: usize = 64;

fn prefill_pipeline(pipeline: usize) -> usize {
    pipeline.max(PREFILL_PIPELINE_MIN)
}

/// A command sent and not yet answered.
struct Sent {
    op: Op,
    at: Instant,
}

struct Conn {
    stream: TcpStream,
    fd: RawFd,
    /// Encoded commands not yet written, from `written` on.
    out: Vec<u8>,
    written: usize,
    input: Vec<u8>,
    in_flight: VecDeque<Sent>,
    /// Commands this connection keeps in flight in the current phase.
    depth: usize,
}

pub(super) struct RespWorker {
    cfg: WorkerConfig,
    pipeline: usize,
    tx: Sender<Msg>,
    rng: StdRng,
    conns: Vec<Conn>,
    limits: Limits,
    chunk: Vec<u8>,
    tally: Tally,
    /// The phase has no more operations to start.
    exhausted: bool,
    pollfds: Vec<libc::pollfd>,
}

impl RespWorker {
    pub(super) fn new(
        cfg: WorkerConfig,
        pipeline: usize,
        tx: Sender<Msg>,
    ) -> anyhow::Result<RespWorker> {
        let server = *cfg.servers.first().context("no server address")?;
        let count = cfg
            .measure_slots
            .div_ceil(pipeline)
            .max(cfg.slots.div_ceil(prefill_pipeline(pipeline)));
        let mut conns = Vec::with_capacity(count);
        for _ in 0..count {
            let stream = TcpStream::connect(server)
                .with_context(|| format!("connecting to {server} (is its RESP port open?)"))?;
            stream.set_nodelay(true)?;
            stream.set_nonblocking(true)?;
            conns.push(Conn {
                fd: stream.as_raw_fd(),
                stream,
                out: Vec::new(),
                written: 0,
                input: Vec::new(),
                in_flight: VecDeque::new(),
                depth: 0,
            });
        }
        Ok(RespWorker {
            cfg,
            pipeline,
            tx,
            rng: StdRng::from_entropy(),
            conns,
            limits: Limits::default(),
            chunk: vec![0; READ_CHUNK],
            tally: Tally::new(),
            exhausted: false,
            pollfds: Vec::new(),
        })
    }

    pub(super) fn run(&mut self, start_rx: Receiver<Instant>) -> anyhow::Result<()> {
        drive(self, start_rx)
    }

    fn run_phase_with(
        &mut self,
        phase: &mut Phase,
        slots: usize,
        depth: usize,
    ) -> anyhow::Result<()> {
        let mut left = slots;
        for c in &mut self.conns {
            c.depth = left.min(depth);
            left -= c.depth;
        }
        // Connections are filled in order: the phase uses the first ones.
        let used = self.conns.iter().take_while(|c| c.depth > 0).count();
        self.exhausted = false;
        let mut next_flush = Instant::now() + FLUSH_INTERVAL;
        loop {
            let now = Instant::now();
            let busy = self.conns.iter().any(|c| !c.in_flight.is_empty());
            match phase {
                Phase::Measure { end, .. } if now >= *end => break,
                Phase::Prefill { .. } if self.exhausted && !busy => break,
                _ => {}
            }
            if now >= next_flush {
                self.flush_interval();
                next_flush = now + FLUSH_INTERVAL;
            }
            let mut progress = 0;
            for i in 0..used {
                progress += self.turn(i, phase)?;
            }
            if progress == 0 {
                self.wait_idle(next_flush, used);
            }
        }
        Ok(())
    }

    /// One connection's turn: fill its pipeline, write, read, answer what arrived.
    /// Returns how much happened (0: nothing to do right now).
    fn turn(&mut self, i: usize, phase: &mut Phase) -> anyhow::Result<usize> {
        let mut progress = 0;
        let now = Instant::now();
        while !self.exhausted && self.conns[i].in_flight.len() < self.conns[i].depth {
            // Prefill's retry list stays empty here: TCP has no timeouts to retry.
            match next_op(&self.cfg, &mut self.rng, phase, now) {
                Some((op, key, _)) => {
                    let mut name = [0u8; KEY_NAME_LEN];
                    let name = key_name(key, &mut name).as_bytes();
                    let nonce = rand::RngCore::next_u64(&mut self.rng);
                    let c = &mut self.conns[i];
                    match op {
                        Op::Get => resp::command(&mut c.out, &[&b"GET"[..], name]),
                        _ => {
                            let value = set_value(&self.cfg, key, nonce);
                            resp::command(&mut c.out, &[&b"SET"[..], name, value])
                        }
                    }
                    c.in_flight.push_back(Sent { op, at: now });
                    progress += 1;
                }
                None => self.exhausted = true,
            }
        }
        let c = &mut self.conns[i];
        while c.written < c.out.len() {
            match c.stream.write(&c.out[c.written..]) {
                Ok(0) => bail!("the server stopped taking commands"),
                Ok(n) => {
                    c.written += n;
                    progress += 1;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("writing to the server"),
            }
        }
        if c.written == c.out.len() {
            c.out.clear();
            c.written = 0;
        }
        for _ in 0..4 {
            match c.stream.read(&mut self.chunk) {
                Ok(0) => bail!("the server closed the connection"),
                Ok(n) => {
                    c.input.extend_from_slice(&self.chunk[..n]);
                    progress += 1;
                    if n < self.chunk.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("reading from the server"),
            }
        }
        let mut used = 0;
        let now = Instant::now();
        loop {
            let c = &mut self.conns[i];
            match resp::parse_reply(&c.input[used..], &self.limits) {
                Ok(Parsed::Done(reply, n)) => {
                    used += n;
                    let sent = c
                        .in_flight
                        .pop_front()
                        .context("the server answered a command it was not sent")?;
                    self.complete(sent, &reply, phase, now);
                }
                Ok(Parsed::Incomplete { .. }) => break,
                Err(e) => bail!("the server's reply is not RESP: {e:?}"),
            }
        }
        self.conns[i].input.drain(..used);
        Ok(progress)
    }

    fn complete(&mut self, sent: Sent, reply: &Reply, phase: &mut Phase, now: Instant) {
        let status = match (sent.op, reply) {
            (_, Reply::Error(e)) if e.starts_with(b"BUSY") => Status::Busy,
            (_, Reply::Error(e)) if e.starts_with(b"READONLY") => Status::NotLeader,
            (Op::Get, Reply::Bulk(Some(_))) => Status::Ok,
            (Op::Get, Reply::Bulk(None)) => Status::NotFound,
            (Op::Set, Reply::Simple(s)) if s == b"OK" => Status::Ok,
            _ => Status::Failed,
        };
        let latency_us = (now.duration_since(sent.at).as_micros() as u64).max(1);
        self.tally.answer(Some(status), latency_us, phase, now);
    }

    fn flush_interval(&mut self) {
        let prefilling = self.cfg.prefill_keys.is_some();
        self.tally.flush(&self.tx, prefilling);
    }

    /// Sleeps in `poll` until a connection is readable (or writable, with output
    /// pending), or `until`; at most 1 ms.
    fn wait_idle(&mut self, until: Instant, used: usize) {
        let fds = self.conns[..used].iter().map(|c| {
            let out = if c.out.is_empty() { 0 } else { libc::POLLOUT };
            (c.fd, libc::POLLIN | out)
        });
        poll_until(&mut self.pollfds, fds, until);
    }
}

impl LoadThread for RespWorker {
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
        let (slots, depth) = match phase {
            Phase::Prefill { .. } => (self.cfg.slots, prefill_pipeline(self.pipeline)),
            Phase::Measure { .. } => (self.cfg.measure_slots, self.pipeline),
        };
        self.run_phase_with(phase, slots, depth)
    }
}
