//! A shard core: ingress, window and reply for the clients the kernel sends it.
//!
//! Each shard owns a `SO_REUSEPORT` UDP socket on the client port and loops:
//! receive a batch (`recvmmsg`) → validate each datagram → answer GETs, PINGs and bad
//! requests at once → append the batch's writes to the shard's window → send the replies
//! of every window the replication core has completed (`sendmmsg`). A BATCH datagram is
//! checked whole and its items run one by one as requests of their own; their replies
//! join BATCH replies to the same address ([`Sender::push_coalesced`]).
//!
//! The loop runs on a thread of its own ([`Shard::run`]; a receive waits up to 1 ms), or,
//! when the RESP door is open, as a task of its core's glommio executor
//! ([`Shard::run_in_executor`]; a receive takes what is waiting, an idle turn sleeps on
//! the executor's timer).
//!
//! The GETs of a receive batch look up in stages, so their cache misses overlap rather
//! than queue: every GET's map page is prefetched before the first is answered, and the
//! values they find in the log are read together after the batch, the value cache's
//! records all located before any is copied.
//!
//! A write is answered only from a [`Completion`], i.e. after its entry is durable and
//! applied. A GET reads the map the replication core applies to (the page lock makes
//! that safe), so it sees every acknowledged write.

use super::Shared;
use super::replication::Completion;
use super::window::{ReplyTo, Window};
use crate::client::protocol::{
    self, Addressing, COOKIE_SECRET_LEN, Op, ParseError, Request, Response, Status,
};
use crate::net::{Datagram, Receiver, Sender};
use crate::replica::{ReadDecision, WaitingReads, WriteOutcome, decide_read, window_is_full};
use crate::storage::command;
use crate::storage::log::{LogReader, ValueRead};
use crate::storage::store::LookupRef;
use crossbeam_channel::{Receiver as ChannelReceiver, Sender as ChannelSender};
use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
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
    /// GETs waiting for a ReadIndex round (read mode `index`).
    pub waiting_reads: WaitingReads<WaitingRead>,
    /// GETs of this receive batch whose values are in the log.
    pub log_reads: Vec<LogRead>,
    /// Their keys, one after the other (no allocation per GET).
    pub log_read_keys: Vec<u8>,
    /// When the current turn of the loop began, and the GETs it answered.
    pub turn_started: std::time::Instant,
    pub turn_gets: u64,
    /// GETs whose values are being read from the disk, by the tag of their read: answered
    /// as their reads finish, while the shard receives and answers others.
    pub reading_gets: HashMap<u64, ReadingGet>,
    /// The tag of the next read started.
    pub next_read_tag: u64,
    /// The indexes of a batch's log reads no cache holds, kept for its capacity.
    pub log_read_misses: Vec<usize>,
}

/// A GET whose value is being read from the disk.
pub struct ReadingGet {
    dest: Dest,
    to: Addressing,
    cookie: u64,
    /// The start of the turn that received it.
    received: std::time::Instant,
}

/// Most GETs one shard holds waiting for a ReadIndex round before answering Busy.
pub const WAITING_READS_MAX: usize = 1 << 16;

/// Where a reply goes, and what bounds it.
#[derive(Debug, Clone, Copy)]
pub struct Dest {
    addr: SocketAddr,
    /// Size of the request's datagram: an unvalidated reply may not be larger.
    request_len: usize,
    /// Whether the request carried this source's cookie.
    validated: bool,
    /// The request was an item of a BATCH: its reply is an item of a BATCH reply.
    batched: bool,
}

/// A GET whose value must be read from the log.
pub struct LogRead {
    offset: u64,
    /// The key asked for, in `Shard::log_read_keys`: the SET command at `offset` must be
    /// of this key, not of another one with the same hash.
    key: std::ops::Range<usize>,
    dest: Dest,
    to: Addressing,
    cookie: u64,
}

/// A GET waiting for the ReadIndex round of the epoch it arrived in.
pub struct WaitingRead {
    key: String,
    dest: Dest,
    to: Addressing,
}

/// A shard's loop state between two turns.
pub struct ShardLoop {
    shard: Shard,
    receiver: Receiver,
    sender: Sender,
    batch: Window,
    idle_reported: bool,
}

/// What one turn of a shard's loop did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// Datagrams or completions were handled.
    Worked,
    /// Nothing was waiting.
    Idle,
    /// The server stopped and every accepted write was answered.
    Finished,
}

impl Shard {
    /// Runs on its own thread until the server stops and every accepted write has been
    /// answered; each receive waits for datagrams (at most the socket's 1 ms timeout).
    pub fn run(self) {
        let mut l = self.into_loop();
        while l.turn(false) != Turn::Finished {
            if l.idle_reported {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    }

    /// Runs as a task of the RESP door's executor on the same core: each receive takes
    /// only what is waiting, and an idle turn sleeps on the executor's timer so the door's
    /// connections run meanwhile.
    pub async fn run_in_executor(self) {
        let mut l = self.into_loop();
        let mut idle_turns = 0u32;
        loop {
            match l.turn(true) {
                Turn::Finished => return,
                Turn::Worked => {
                    idle_turns = 0;
                    glommio::yield_if_needed().await
                }
                Turn::Idle => {
                    // Short sleeps while traffic may be between bursts, longer ones once
                    // the shard has been idle a while (an idle server should not spin).
                    idle_turns = idle_turns.saturating_add(1);
                    let sleep = if idle_turns < EXECUTOR_IDLE_TURNS_SHORT {
                        EXECUTOR_IDLE_SLEEP
                    } else {
                        EXECUTOR_IDLE_SLEEP_LONG
                    };
                    glommio::timer::sleep(sleep).await
                }
            }
        }
    }

    fn into_loop(self) -> ShardLoop {
        ShardLoop {
            shard: self,
            receiver: Receiver::new(),
            sender: Sender::new(),
            batch: Window::default(),
            idle_reported: false,
        }
    }
}

/// How long a shard running in the door's executor sleeps when nothing is waiting: at
/// first, and after this many idle turns in a row (about 10 ms without traffic).
const EXECUTOR_IDLE_SLEEP: std::time::Duration = std::time::Duration::from_micros(50);
const EXECUTOR_IDLE_TURNS_SHORT: u32 = 200;
const EXECUTOR_IDLE_SLEEP_LONG: std::time::Duration = std::time::Duration::from_micros(500);

impl ShardLoop {
    /// One turn: receive a batch, answer what completed, send.
    pub fn turn(&mut self, nonblocking: bool) -> Turn {
        let s = &mut self.shard;
        let mut worked = false;
        s.turn_started = std::time::Instant::now();
        s.turn_gets = 0;
        if !s.shared.stop.load(Ordering::Acquire) {
            // With reads in flight the shard waits on the disk, not on the socket.
            let received = if nonblocking || s.log_reader.reads_in_flight() > 0 {
                self.receiver.recv_nonblocking(s.socket.as_raw_fd())
            } else {
                self.receiver.recv(&s.socket)
            };
            match received {
                Ok(n) => {
                    worked |= n > 0;
                    // The batch's lone GETs start loading their pages together, as a BATCH
                    // datagram's do: their cache misses overlap.
                    if n > 1 {
                        let map = &s.shared.map;
                        for i in 0..n {
                            if let Some(d) = self.receiver.get(i)
                                && let Ok(req) = protocol::parse_request(d.bytes)
                                && req.op == Op::Get
                            {
                                map.prefetch(map.key_hash(req.key.as_bytes()));
                            }
                        }
                    }
                    for i in 0..n {
                        if let Some(d) = self.receiver.get(i) {
                            s.handle(&d, &mut self.batch, &mut self.sender);
                        }
                    }
                }
                Err(e) => eprintln!("ocean-liner: shard {}: receive failed: {e}", s.index),
            }
            if !self.batch.is_empty() {
                let bytes = s.shared.windows[s.index].append(&mut self.batch);
                if window_is_full(bytes, s.window_bytes_max) {
                    let _ = s.flush_tx.try_send(());
                }
            }
        } else if !self.idle_reported {
            self.idle_reported = true;
            s.shared.shards_idle.fetch_add(1, Ordering::AcqRel);
        }
        s.serve_waiting_reads(&mut self.sender);
        s.answer_log_reads(&mut self.sender);
        // Nothing came in: wait for a read of the disk to finish (a blocking shard only;
        // one in an executor gets back to it on its next turn).
        let wait = !worked && !nonblocking;
        worked |= s.finish_log_reads(wait, &mut self.sender) > 0;
        while let Ok(done) = s.completions.try_recv() {
            worked = true;
            s.reply_completion(&done, &mut self.sender);
        }
        self.sender.flush(&s.socket);
        // The GETs this turn answered, from the turn's start (a GET that waited for a
        // ReadIndex round counts from the turn that answered it).
        s.shared
            .stats
            .udp_get_seconds
            .observe_n(s.turn_started.elapsed(), s.turn_gets);
        if self.idle_reported
            && s.shared.replication_done.load(Ordering::Acquire)
            && s.completions.is_empty()
            && s.log_reader.reads_in_flight() == 0
        {
            return Turn::Finished;
        }
        if worked { Turn::Worked } else { Turn::Idle }
    }
}

impl Shard {
    fn cookie(&self, addr: &SocketAddr) -> u64 {
        protocol::cookie_for(&self.cookie_secret, addr)
    }

    /// See [`respond`].
    fn respond(&self, sender: &mut Sender, dest: Dest, response: Response<'_>) {
        respond(sender, dest, response)
    }
}

/// Answers a GET whose value was looked for in the log with what was found there.
fn answer_read(
    stats: &super::Stats,
    sender: &mut Sender,
    dest: Dest,
    to: &Addressing,
    cookie: u64,
    value: Result<ValueRead<&[u8]>, &crate::storage::log::LogError>,
) {
    let resp = match value {
        Ok(ValueRead::Value(v)) => Response::reply(to, Status::Ok, cookie, v),
        // The map held this key's hash for another key: this one is absent.
        Ok(ValueRead::OtherKey) => {
            stats.hash_collisions.fetch_add(1, Ordering::Relaxed);
            Response::reply(to, Status::NotFound, cookie, b"")
        }
        Err(e) => {
            eprintln!("ocean-liner: reading a value from the log failed: {e}");
            Response::reply(to, Status::Failed, cookie, b"log read failed")
        }
    };
    respond(sender, dest, resp);
}

/// Queues `response` to `dest`, unless the source is unvalidated and the reply would be
/// larger than its request: then only the cookie goes back. The reply to a batch item
/// joins a BATCH reply to the same address.
fn respond(sender: &mut Sender, dest: Dest, response: Response<'_>) {
    let Dest {
        addr: to,
        request_len,
        validated,
        batched,
    } = dest;
    // A value stored over the RESP door may be larger than a datagram.
    let response = if response.payload.len() > protocol::MAX_PAYLOAD_LEN {
        Response {
            status: Status::TooLarge,
            payload: b"the value is larger than a datagram: read it over the RESP door",
            ..response
        }
    } else {
        response
    };
    if batched {
        // Only a batch with the valid cookie runs, so its replies may be larger.
        let cookie = response.cookie;
        sender.push_coalesced(
            to,
            protocol::MAX_BATCH_DATAGRAM_SIZE,
            protocol::batch::response_item_len(&response),
            |out| {
                protocol::batch::begin_batch_response(out, cookie);
            },
            |out, start| protocol::batch::push_response_item(out, start, &response),
        );
        return;
    }
    let response =
        if validated || protocol::reply_fits_unvalidated(request_len, response.encoded_len()) {
            response
        } else if response.status.is_success()
            || response.status == Status::NotFound
            || (response.status == Status::NotLeader && !response.payload.is_empty())
        {
            let to_addr = Addressing {
                op: response.op,
                client_id: response.client_id,
                request_seq: response.request_seq,
                cookie: 0,
            };
            Response::cookie_required(&to_addr, response.cookie)
        } else {
            // An error's message is optional: send the status alone.
            Response {
                payload: &[],
                ..response
            }
        };
    sender.push(to, |out| protocol::encode_response(&response, out));
}

impl Shard {
    fn handle(&mut self, d: &Datagram<'_>, batch: &mut Window, sender: &mut Sender) {
        if protocol::batch::is_batch(d.bytes) {
            return self.handle_batch(d, batch, sender);
        }
        let stats = &self.shared.stats;
        stats.requests.fetch_add(1, Ordering::Relaxed);
        let mine = &self.shared.slot_stats[self.index];
        mine.requests.fetch_add(1, Ordering::Relaxed);
        let cookie = self.cookie(&d.from);
        let request_len = if d.truncated {
            usize::MAX
        } else {
            d.bytes.len()
        };
        let req = match protocol::parse_request(d.bytes) {
            Ok(req) if !d.truncated => req,
            Ok(req) => {
                // Larger than our receive buffer: certainly over the limit.
                stats.rejected.fetch_add(1, Ordering::Relaxed);
                mine.errors.fetch_add(1, Ordering::Relaxed);
                let resp = Response::reply(
                    &req.addressing(),
                    Status::TooLarge,
                    cookie,
                    b"datagram larger than 1024 bytes",
                );
                self.respond(sender, Dest::single(d.from, request_len, false), resp);
                return;
            }
            Err(ParseError::Unaddressable(_)) => {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
                mine.errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(ParseError::Rejected(rejection)) => {
                stats.rejected.fetch_add(1, Ordering::Relaxed);
                mine.errors.fetch_add(1, Ordering::Relaxed);
                let validated = rejection.to.cookie == cookie;
                let dest = Dest::single(d.from, request_len, validated);
                self.respond(sender, dest, rejection.response(cookie));
                return;
            }
        };
        let dest = Dest::single(d.from, request_len, req.cookie == cookie);
        self.execute(&req, dest, cookie, batch, sender);
    }

    /// A BATCH datagram: checked whole, run only with this source's cookie, each item as
    /// a request of its own whose reply joins a BATCH reply.
    fn handle_batch(&mut self, d: &Datagram<'_>, batch: &mut Window, sender: &mut Sender) {
        let stats = &self.shared.stats;
        let mine = &self.shared.slot_stats[self.index];
        stats.batches.fetch_add(1, Ordering::Relaxed);
        let cookie = self.cookie(&d.from);
        let request_len = d.bytes.len();
        match protocol::parse_batch(d.bytes) {
            Err(ParseError::Unaddressable(_)) => {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
                mine.errors.fetch_add(1, Ordering::Relaxed);
            }
            Err(ParseError::Rejected(rejection)) => {
                stats.requests.fetch_add(1, Ordering::Relaxed);
                stats.rejected.fetch_add(1, Ordering::Relaxed);
                mine.requests.fetch_add(1, Ordering::Relaxed);
                mine.errors.fetch_add(1, Ordering::Relaxed);
                let validated = rejection.to.cookie == cookie;
                let dest = Dest::single(d.from, request_len, validated);
                self.respond(sender, dest, rejection.response(cookie));
            }
            Ok(b) if b.to.cookie != cookie => {
                // Nothing runs without the cookie: 40 bytes go back, never more.
                let dest = Dest::single(d.from, request_len, false);
                self.respond(sender, dest, Response::cookie_required(&b.to, cookie));
            }
            Ok(b) => {
                let n = b.len as u64;
                stats.requests.fetch_add(n, Ordering::Relaxed);
                mine.requests.fetch_add(n, Ordering::Relaxed);
                let dest = Dest {
                    addr: d.from,
                    request_len,
                    validated: true,
                    batched: true,
                };
                // The batch's GETs start loading their pages together: their cache misses
                // overlap instead of coming one after the other.
                let map = &self.shared.map;
                for req in b.items().filter(|r| r.op == Op::Get) {
                    map.prefetch(map.key_hash(req.key.as_bytes()));
                }
                for req in b.items() {
                    self.execute(&req, dest, cookie, batch, sender);
                }
            }
        }
    }

    /// Runs one parsed request (a datagram's, or a batch item).
    fn execute(
        &mut self,
        req: &Request<'_>,
        dest: Dest,
        cookie: u64,
        batch: &mut Window,
        sender: &mut Sender,
    ) {
        let to = req.addressing();
        match req.op {
            Op::Get => self.get_request(req, dest, cookie, sender),
            Op::Set | Op::Delete => {
                let in_window = self.shared.windows[self.index].bytes() + batch.commands.len();
                let refusal = if !self.shared.is_leader.load(Ordering::Acquire) {
                    Some(Status::NotLeader)
                } else if in_window >= self.window_bytes_hard_max {
                    Some(Status::Busy)
                } else {
                    None
                };
                if let Some(status) = refusal {
                    self.refuse(sender, dest, &to, cookie, status);
                    return;
                }
                let (op, value) = match req.op {
                    Op::Set => (command::CommandOp::Set, req.value),
                    _ => (command::CommandOp::Delete, &[][..]),
                };
                command::encode(
                    &mut batch.commands,
                    op,
                    req.client_id,
                    req.request_seq,
                    req.key.as_bytes(),
                    value,
                );
                batch.replies.push(ReplyTo {
                    door: if dest.batched {
                        super::window::Door::UdpBatch
                    } else {
                        super::window::Door::Udp
                    },
                    addr: dest.addr,
                    op: req.op,
                    client_id: req.client_id,
                    request_seq: req.request_seq,
                    validated: dest.validated,
                    request_len: dest.request_len.min(u16::MAX as usize) as u16,
                    received: self.turn_started,
                });
            }
            Op::Ping => self.respond(sender, dest, Response::reply(&to, Status::Ok, cookie, b"")),
            Op::Stats => {
                // The decoder let only an empty key or a few digits through.
                let first_line = req.key.parse::<usize>().unwrap_or(0);
                let (page, _) =
                    crate::client::protocol::stats_page(&self.shared.stats_text(), first_line);
                self.respond(
                    sender,
                    dest,
                    Response::reply(&to, Status::Ok, cookie, page.as_bytes()),
                );
            }
            // The dispatch in `handle` sends BATCH datagrams to `handle_batch`, and a
            // batch's items are never batches.
            Op::Batch => {}
        }
    }

    /// Answers Busy (back off and retry) or NotLeader (with the leader's address).
    fn refuse(
        &self,
        sender: &mut Sender,
        dest: Dest,
        to: &Addressing,
        cookie: u64,
        status: Status,
    ) {
        let hint = match status {
            Status::NotLeader => self.shared.leader_hint(),
            _ => {
                self.shared.stats.busy.fetch_add(1, Ordering::Relaxed);
                self.shared.slot_stats[self.index]
                    .busy
                    .fetch_add(1, Ordering::Relaxed);
                String::new()
            }
        };
        let resp = Response::reply(to, status, cookie, hint.as_bytes());
        self.respond(sender, dest, resp);
    }

    /// GET: served as the replica core decides (lease valid, or after its ReadIndex
    /// round), from what the replication thread published.
    fn get_request(&mut self, req: &Request<'_>, dest: Dest, cookie: u64, sender: &mut Sender) {
        let to = req.addressing();
        let view = self.shared.read_view();
        let now = self.shared.started.elapsed();
        let decision = decide_read(&view, now, self.waiting_reads.len(), WAITING_READS_MAX);
        match decision {
            ReadDecision::Serve => self.get(req.key, dest, &to, cookie, sender),
            // Busy: a new leader whose lease is not yet confirmed, or too many reads
            // waiting; the client backs off briefly and retries.
            ReadDecision::NotLeader | ReadDecision::Busy => {
                let status = match decision {
                    ReadDecision::NotLeader => Status::NotLeader,
                    _ => Status::Busy,
                };
                self.refuse(sender, dest, &to, cookie, status)
            }
            ReadDecision::Wait { epoch } => {
                self.waiting_reads.push(
                    epoch,
                    WaitingRead {
                        key: req.key.to_string(),
                        dest,
                        to,
                    },
                );
                self.shared.reads_waiting.store(true, Ordering::Release);
            }
        }
    }

    /// Answers the waiting GETs whose ReadIndex round completed (or NotLeader to all of
    /// them once this node is no longer the leader).
    fn serve_waiting_reads(&mut self, sender: &mut Sender) {
        if self.waiting_reads.is_empty() {
            return;
        }
        let leader = self.shared.is_leader.load(Ordering::Acquire);
        let done = self.shared.read_epoch_done.load(Ordering::Acquire);
        let (ready, still_waiting) = self.waiting_reads.take_ready(leader, done);
        for r in ready {
            let cookie = self.cookie(&r.dest.addr);
            if leader {
                self.get(&r.key, r.dest, &r.to, cookie, sender);
            } else {
                self.refuse(sender, r.dest, &r.to, cookie, Status::NotLeader);
            }
        }
        if still_waiting {
            self.shared.reads_waiting.store(true, Ordering::Release);
        }
    }

    fn get(&mut self, key: &str, dest: Dest, to: &Addressing, cookie: u64, sender: &mut Sender) {
        let to = *to;
        self.shared.stats.gets.fetch_add(1, Ordering::Relaxed);
        self.shared.slot_stats[self.index]
            .gets
            .fetch_add(1, Ordering::Relaxed);
        self.turn_gets += 1;
        let map = &self.shared.map;
        // The inline value is copied straight from its page into the reply.
        let in_log = map.get_with(map.key_hash(key.as_bytes()), |found| match found {
            LookupRef::Missing => {
                respond(
                    sender,
                    dest,
                    Response::reply(&to, Status::NotFound, cookie, b""),
                );
                None
            }
            LookupRef::Inline(v) => {
                respond(sender, dest, Response::reply(&to, Status::Ok, cookie, v));
                None
            }
            LookupRef::InLog(offset) => Some(offset),
        });
        if let Some(offset) = in_log {
            // Answered after the receive batch, with the batch's other log reads.
            let start = self.log_read_keys.len();
            self.log_read_keys.extend_from_slice(key.as_bytes());
            self.log_reads.push(LogRead {
                offset,
                key: start..self.log_read_keys.len(),
                dest,
                to,
                cookie,
            });
        }
    }

    /// Answers the batch's GETs whose values live in the log from the caches that hold
    /// them, and starts reading the others from the disk (all handed to it together);
    /// [`Shard::finish_log_reads`] answers those as their reads finish.
    fn answer_log_reads(&mut self, sender: &mut Sender) {
        if self.log_reads.is_empty() {
            return;
        }
        let reads = std::mem::take(&mut self.log_reads);
        let keys = std::mem::take(&mut self.log_read_keys);
        let mut misses = std::mem::take(&mut self.log_read_misses);
        let wanted: Vec<(u64, &[u8])> = reads
            .iter()
            .map(|r| (r.offset, &keys[r.key.clone()]))
            .collect();
        let stats = &self.shared.stats;
        // Cached values are copied straight from their cache into the replies.
        self.log_reader
            .read_values_cached(&wanted, &mut misses, |i, value| {
                let r = &reads[i];
                answer_read(
                    stats,
                    sender,
                    r.dest,
                    &r.to,
                    r.cookie,
                    value.as_ref().cloned(),
                );
            });
        for &i in &misses {
            let (r, (offset, key)) = (&reads[i], wanted[i]);
            let tag = self.next_read_tag;
            self.next_read_tag += 1;
            self.log_reader.start_read(offset, key, tag);
            self.reading_gets.insert(
                tag,
                ReadingGet {
                    dest: r.dest,
                    to: r.to,
                    cookie: r.cookie,
                    received: self.turn_started,
                },
            );
        }
        // Counted when answered, from the turn that received them.
        self.turn_gets = self.turn_gets.saturating_sub(misses.len() as u64);
        self.log_reader.submit_reads();
        drop(wanted);
        self.log_reads = reads;
        self.log_reads.clear();
        self.log_read_keys = keys;
        self.log_read_keys.clear();
        self.log_read_misses = misses;
    }

    /// Answers the GETs whose reads of the disk have finished; with `wait`, first waits
    /// for one if none has and some are in flight. Returns how many were answered.
    fn finish_log_reads(&mut self, wait: bool, sender: &mut Sender) -> usize {
        if self.log_reader.reads_in_flight() == 0 {
            return 0;
        }
        let (stats, reading) = (&self.shared.stats, &mut self.reading_gets);
        self.log_reader.finish_reads(wait, |tag, value| {
            let Some(r) = reading.remove(&tag) else {
                return;
            };
            let value = value.as_ref().map(ValueRead::as_ref);
            answer_read(stats, sender, r.dest, &r.to, r.cookie, value);
            stats.udp_get_seconds.observe_n(r.received.elapsed(), 1);
        })
    }

    fn reply_completion(&self, done: &Completion, sender: &mut Sender) {
        let hint = self.shared.leader_hint();
        let status = status_of(done.outcome);
        let payload: &[u8] = if status == Status::NotLeader {
            hint.as_bytes()
        } else {
            b""
        };
        let now = std::time::Instant::now();
        for reply in &done.window.replies {
            let histogram = match reply.op {
                Op::Delete => &self.shared.stats.udp_del_seconds,
                _ => &self.shared.stats.udp_set_seconds,
            };
            histogram.observe(now.saturating_duration_since(reply.received));
            let to = Addressing {
                op: Some(reply.op),
                client_id: reply.client_id,
                request_seq: reply.request_seq,
                cookie: 0,
            };
            let resp = Response::reply(&to, status, self.cookie(&reply.addr), payload);
            let dest = Dest {
                addr: reply.addr,
                request_len: reply.request_len.into(),
                validated: reply.validated,
                batched: reply.door == super::window::Door::UdpBatch,
            };
            self.respond(sender, dest, resp);
        }
    }
}

impl Dest {
    /// The reply to a request that came alone in its datagram.
    fn single(addr: SocketAddr, request_len: usize, validated: bool) -> Dest {
        Dest {
            addr,
            request_len,
            validated,
            batched: false,
        }
    }
}

/// The wire status every write of a window gets for its outcome.
fn status_of(outcome: WriteOutcome) -> Status {
    match outcome {
        WriteOutcome::Applied => Status::Ok,
        WriteOutcome::NotLeader => Status::NotLeader,
        WriteOutcome::Busy => Status::Busy,
        WriteOutcome::NoSpace => Status::NoSpace,
        WriteOutcome::Failed => Status::Failed,
    }
}
