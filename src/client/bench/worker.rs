//! One load thread: its sockets, its slab of virtual clients (slots), and the loop that
//! sends requests in batches, receives and matches replies, and handles redirects,
//! cookies, Busy and timeouts.

use super::keys::*;
use super::report::*;
use super::*;
use crate::net::{self, BATCH, RawAddr};

/// The keys one worker prefills: `first, first + step, ...` below `end`.
#[derive(Debug, Clone, Copy)]
pub(super) struct KeyShare {
    pub(super) first: u64,
    pub(super) step: u64,
    pub(super) end: u64,
}

pub(super) struct WorkerConfig {
    /// Virtual clients allocated: enough for the prefill and for the measurement.
    pub(super) slots: usize,
    /// Virtual clients busy during the measurement (the first ones).
    pub(super) measure_slots: usize,
    pub(super) sockets: usize,
    pub(super) servers: Vec<SocketAddr>,
    pub(super) timeout: Duration,
    pub(super) workload: Workload,
    pub(super) read_ratio: f64,
    pub(super) sampler: KeySampler,
    pub(super) value: Vec<u8>,
    /// With `--values random`: the pool each SET's value is a slice of.
    pub(super) value_pool: Option<std::sync::Arc<[u8]>>,
    pub(super) prefill_keys: Option<KeyShare>,
    pub(super) warmup: Duration,
    pub(super) duration: Duration,
    /// Most requests per BATCH datagram (1: no batches).
    pub(super) pipeline: usize,
    /// Open loop: this thread's share of `--rate`, in operations per second. The measured
    /// phase then starts operations on a fixed schedule (at most `measure_slots` in
    /// flight) instead of one as each answer arrives.
    pub(super) rate: Option<f64>,
}

/// The value a SET of `key` carries: the fixed value, or with `--values random` a slice of
/// the random pool picked by `key` and `nonce` (a request number), different op to op.
pub(super) fn set_value(cfg: &WorkerConfig, key: u64, nonce: u64) -> &[u8] {
    let Some(pool) = &cfg.value_pool else {
        return &cfg.value;
    };
    let len = cfg.value.len();
    let mut x = key.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ nonce.rotate_left(29);
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 29;
    let span = pool.len().saturating_sub(len) as u64 + 1;
    let at = (x % span) as usize;
    pool.get(at..at + len).unwrap_or(&cfg.value)
}

/// A BATCH datagram sent recently: its items, for a reply to the whole batch.
#[derive(Debug, Default)]
pub(super) struct BatchRecord {
    pub(super) seq: u64,
    /// `(slot, request_seq)` of each item.
    pub(super) items: Vec<(u32, u64)>,
}

/// Batches remembered per worker (the oldest is forgotten; its items time out if the
/// server answers only the whole batch that late).
const BATCH_RECORDS_MAX: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SlotState {
    /// No operation (the phase has no more work for it).
    Idle,
    /// In its socket's send queue.
    Queued,
    /// Sent, awaiting the answer.
    InFlight,
    /// Waiting in the timer heap to be resent (after Busy or a leaderless NotLeader).
    Delayed,
}

/// One virtual client.
#[derive(Debug, Clone)]
pub(super) struct Slot {
    pub(super) client_id: u64,
    pub(super) generation: u64,
    pub(super) seq: u64,
    pub(super) state: SlotState,
    /// Bumped whenever a new operation starts, so stale timer entries are recognised.
    pub(super) epoch: u32,
    pub(super) op: Op,
    pub(super) key: u64,
    /// Server index the last transmission went to.
    pub(super) target: usize,
    /// First transmission of the current operation (`None` until sent).
    pub(super) first_sent: Option<Instant>,
    /// Open loop: when the schedule meant the operation to start. Its latency counts from
    /// here, so time spent waiting for a free slot is not hidden (no coordinated omission).
    pub(super) intended: Option<Instant>,
    pub(super) busy_streak: u32,
    /// Prefill: timeouts so far for this slot's key.
    pub(super) attempts: u32,
}

/// Where a phase is.
pub(super) enum Phase {
    Prefill {
        next: u64,
        share: KeyShare,
        retry: Vec<(u64, u32)>,
        done: u64,
        failed: u64,
    },
    Measure {
        warm_end: Instant,
        end: Instant,
    },
}

pub(super) struct Worker {
    pub(super) cfg: WorkerConfig,
    pub(super) tx: Sender<Msg>,
    pub(super) rng: StdRng,
    pub(super) sockets: Vec<Socket>,
    pub(super) fds: Vec<RawFd>,
    pub(super) servers: Vec<SocketAddr>,
    pub(super) server_addrs: Vec<RawAddr>,
    /// Current target server index.
    pub(super) target: usize,
    /// `cookies[server][socket]`.
    pub(super) cookies: Vec<Vec<u64>>,
    pub(super) slots: Vec<Slot>,
    pub(super) id_base: u64,
    pub(super) send_queues: Vec<VecDeque<u32>>,
    pub(super) timers: BinaryHeap<Reverse<(Instant, u32, u32)>>,
    pub(super) sender: net::Sender,
    /// Out of its place only during [`Worker::receive`].
    pub(super) receiver: Option<net::Receiver>,
    pub(super) last_rx: Instant,
    pub(super) last_rotate: Instant,
    pub(super) tally: Tally,
    /// Slots not [`SlotState::Idle`].
    pub(super) active: usize,
    pub(super) pollfds: Vec<libc::pollfd>,
    /// The `client_id` of this worker's BATCH datagrams, and the last batch number used.
    pub(super) batch_id: u64,
    pub(super) batch_seq: u64,
    /// The BATCH datagrams sent recently, oldest first (consecutive numbers).
    pub(super) batches: VecDeque<BatchRecord>,
    /// Items per datagram of the send being prepared.
    pub(super) batch_counts: Vec<usize>,
    /// Open loop: the measured phase's schedule, and the slots free to take an operation.
    pub(super) schedule: Option<Schedule>,
    pub(super) free: Vec<u32>,
}

/// An open-loop schedule: operation `n` is due at `start + n / rate`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Schedule {
    pub(super) start: Instant,
    pub(super) rate: f64,
    /// Operations started so far.
    pub(super) issued: u64,
}

impl Schedule {
    /// When operation `n` is due.
    pub(super) fn due(&self, n: u64) -> Instant {
        self.start + Duration::from_secs_f64(n as f64 / self.rate)
    }

    /// Operations due by `now`.
    pub(super) fn due_by(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.start).as_secs_f64() * self.rate) as u64
    }
}

impl Worker {
    pub(super) fn new(cfg: WorkerConfig, tx: Sender<Msg>) -> anyhow::Result<Self> {
        let first = *cfg.servers.first().context("no server address")?;
        let sockets = udp_sockets(cfg.sockets, first)?;
        let fds = sockets.iter().map(AsRawFd::as_raw_fd).collect();
        let mut rng = StdRng::from_entropy();
        let id_base = rng.r#gen::<u64>();
        let batch_id = rng.r#gen::<u64>();
        let n = cfg.slots;
        let now = Instant::now();
        let mut w = Worker {
            tx,
            sockets,
            fds,
            servers: Vec::new(),
            server_addrs: Vec::new(),
            target: 0,
            cookies: Vec::new(),
            slots: Vec::with_capacity(n),
            id_base,
            send_queues: vec![VecDeque::new(); cfg.sockets],
            timers: BinaryHeap::new(),
            sender: net::Sender::new(),
            receiver: Some(net::Receiver::new()),
            last_rx: now,
            last_rotate: now,
            tally: Tally::new(),
            active: 0,
            pollfds: Vec::new(),
            batch_id,
            batch_seq: 0,
            batches: VecDeque::new(),
            batch_counts: Vec::new(),
            schedule: None,
            free: Vec::new(),
            rng,
            cfg,
        };
        for addr in w.cfg.servers.clone() {
            w.server_index(addr);
        }
        for i in 0..n {
            let mut slot = Slot {
                client_id: 0,
                generation: 0,
                seq: 0,
                state: SlotState::Idle,
                epoch: 0,
                op: Op::Get,
                key: 0,
                target: 0,
                first_sent: None,
                intended: None,
                busy_streak: 0,
                attempts: 0,
            };
            slot.client_id = w.client_id_for(i, &mut slot.generation);
            w.slots.push(slot);
        }
        Ok(w)
    }

    /// The client id of slot `index` at `generation` (advanced past the value 0).
    pub(super) fn client_id_for(&self, index: usize, generation: &mut u64) -> u64 {
        let n = self.cfg.slots as u64;
        loop {
            let id = self
                .id_base
                .wrapping_add(generation.wrapping_mul(n))
                .wrapping_add(index as u64);
            if id != 0 {
                return id;
            }
            *generation += 1;
        }
    }

    /// The slot a client id belongs to, if it is that slot's current id.
    pub(super) fn slot_for(&self, client_id: u64) -> Option<usize> {
        let n = self.slots.len() as u64;
        let i = (client_id.wrapping_sub(self.id_base) % n) as usize;
        (self.slots[i].client_id == client_id).then_some(i)
    }

    pub(super) fn server_index(&mut self, addr: SocketAddr) -> usize {
        if let Some(i) = self.servers.iter().position(|s| *s == addr) {
            return i;
        }
        self.servers.push(addr);
        self.server_addrs.push(RawAddr::new(&addr));
        self.cookies.push(vec![NO_COOKIE; self.sockets.len()]);
        self.servers.len() - 1
    }

    pub(super) fn run(&mut self, start_rx: Receiver<Instant>) -> anyhow::Result<()> {
        drive(self, start_rx)
    }

    pub(super) fn run_phase(&mut self, phase: &mut Phase) -> anyhow::Result<()> {
        // Only the slots started here ever run: each restarts itself when it finishes.
        let started = match phase {
            Phase::Prefill { .. } => self.slots.len(),
            Phase::Measure { .. } => self.cfg.measure_slots,
        };
        match (&*phase, self.cfg.rate) {
            (Phase::Measure { .. }, Some(rate)) => {
                self.schedule = Some(Schedule {
                    start: Instant::now(),
                    rate,
                    issued: 0,
                });
                self.free = (0..started as u32).rev().collect();
            }
            _ => {
                for i in 0..started {
                    self.start_next(i, phase, Instant::now());
                }
            }
        }
        let scan_every =
            (self.cfg.timeout / 20).clamp(Duration::from_millis(1), Duration::from_millis(50));
        let mut next_scan = Instant::now() + scan_every;
        let mut next_flush = Instant::now() + FLUSH_INTERVAL;
        loop {
            let now = Instant::now();
            match phase {
                Phase::Measure { end, .. } if now >= *end => break,
                Phase::Prefill { .. } if self.active == 0 => break,
                _ => {}
            }
            self.fire_timers(now);
            self.start_due(phase, now);
            if now >= next_scan {
                self.scan_timeouts(phase, now);
                next_scan = now + scan_every;
            }
            if now >= next_flush {
                self.flush_interval();
                next_flush = now + FLUSH_INTERVAL;
            }
            let sent = self.flush_sends()?;
            let received = self.receive(phase)?;
            if sent == 0 && received == 0 {
                self.wait_idle(next_scan.min(next_flush));
            }
        }
        // Abandon whatever is still outstanding; later answers are ignored as stale.
        for s in &mut self.slots {
            s.state = SlotState::Idle;
            s.epoch = s.epoch.wrapping_add(1);
        }
        self.active = 0;
        self.send_queues.iter_mut().for_each(VecDeque::clear);
        self.timers.clear();
        self.schedule = None;
        self.free.clear();
        Ok(())
    }

    /// Open loop: starts the operations the schedule has made due, as long as slots are
    /// free. Those that find none start later, each timed from its due time.
    fn start_due(&mut self, phase: &mut Phase, now: Instant) {
        let Some(mut schedule) = self.schedule else {
            return;
        };
        let due = schedule.due_by(now);
        while schedule.issued < due {
            let Some(i) = self.free.pop() else {
                break;
            };
            let intended = schedule.due(schedule.issued);
            schedule.issued += 1;
            self.start_next(i as usize, phase, now);
            self.slots[i as usize].intended = Some(intended);
        }
        self.schedule = Some(schedule);
    }

    /// Slot `i` is done with its operation: closed loop, it starts the next one; open
    /// loop, it waits for the schedule.
    fn finish(&mut self, i: usize, phase: &mut Phase, now: Instant) {
        if self.schedule.is_none() {
            return self.start_next(i, phase, now);
        }
        let slot = &mut self.slots[i];
        slot.epoch = slot.epoch.wrapping_add(1);
        slot.first_sent = None;
        slot.intended = None;
        if slot.state != SlotState::Idle {
            slot.state = SlotState::Idle;
            self.active -= 1;
        }
        self.free.push(i as u32);
    }

    /// Gives slot `i` its next operation (or leaves it idle) and queues it.
    pub(super) fn start_next(&mut self, i: usize, phase: &mut Phase, now: Instant) {
        let next = next_op(&self.cfg, &mut self.rng, phase, now);
        let slot = &mut self.slots[i];
        slot.epoch = slot.epoch.wrapping_add(1);
        slot.first_sent = None;
        slot.intended = None;
        slot.busy_streak = 0;
        let was_idle = slot.state == SlotState::Idle;
        match next {
            None => {
                slot.state = SlotState::Idle;
                self.active -= usize::from(!was_idle);
            }
            Some((op, key, attempts)) => {
                self.active += usize::from(was_idle);
                slot.op = op;
                slot.key = key;
                slot.attempts = attempts;
                slot.seq += 1;
                self.queue(i);
            }
        }
    }

    pub(super) fn queue(&mut self, i: usize) {
        self.slots[i].state = SlotState::Queued;
        let sock = i % self.sockets.len();
        self.send_queues[sock].push_back(i as u32);
    }

    pub(super) fn delay(&mut self, i: usize, until: Instant) {
        let slot = &mut self.slots[i];
        slot.state = SlotState::Delayed;
        self.timers.push(Reverse((until, i as u32, slot.epoch)));
    }

    pub(super) fn fire_timers(&mut self, now: Instant) {
        while let Some(Reverse((due, i, epoch))) = self.timers.peek().copied() {
            if due > now {
                break;
            }
            self.timers.pop();
            let slot = &self.slots[i as usize];
            if slot.epoch == epoch && slot.state == SlotState::Delayed {
                self.queue(i as usize);
            }
        }
    }

    /// Abandons operations older than the timeout; gives their slots new client ids.
    pub(super) fn scan_timeouts(&mut self, phase: &mut Phase, now: Instant) {
        let timeout = self.cfg.timeout;
        for i in 0..self.slots.len() {
            let s = &self.slots[i];
            let waiting = matches!(s.state, SlotState::InFlight | SlotState::Delayed);
            let expired = s
                .first_sent
                .is_some_and(|t| now.duration_since(t) >= timeout);
            if !(waiting && expired) {
                continue;
            }
            let (key, attempts) = (s.key, s.attempts + 1);
            let mut generation = s.generation.wrapping_add(1);
            self.tally.bump(in_window(phase, now), |c| &mut c.timeouts);
            // A new session: the abandoned request may still be applied, but nothing
            // sent under the old id can be mistaken for an answer to the new one.
            let id = self.client_id_for(i, &mut generation);
            let slot = &mut self.slots[i];
            slot.generation = generation;
            slot.client_id = id;
            slot.seq = 0;
            if let Phase::Prefill { retry, failed, .. } = phase {
                if attempts < PREFILL_ATTEMPTS {
                    retry.push((key, attempts));
                } else {
                    *failed += 1;
                }
            }
            self.finish(i, phase, now);
        }
        if self.servers.len() > 1
            && now.duration_since(self.last_rx) >= timeout
            && now.duration_since(self.last_rotate) >= timeout
        {
            // The target has been silent for a whole timeout: try the next server.
            self.target = (self.target + 1) % self.servers.len();
            self.last_rotate = now;
        }
    }

    /// Sends queued requests with `sendmmsg`; returns how many went out.
    pub(super) fn flush_sends(&mut self) -> anyhow::Result<usize> {
        let mut total = 0;
        for sock in 0..self.sockets.len() {
            // Batches need the cookie (the server runs none without it); until a reply
            // brings it, requests go alone.
            if self.cfg.pipeline > 1 && self.cookies[self.target][sock] != NO_COOKIE {
                total += self.flush_batches(sock)?;
                continue;
            }
            while !self.send_queues[sock].is_empty() {
                let n = self.send_queues[sock].len().min(BATCH);
                let target = self.target;
                let addr = self.server_addrs[target];
                let mut key_buf = [0u8; KEY_NAME_LEN];
                for j in 0..n {
                    let i = self.send_queues[sock][j] as usize;
                    let slot = &mut self.slots[i];
                    slot.target = target;
                    let req = Request {
                        op: slot.op,
                        client_id: slot.client_id,
                        request_seq: slot.seq,
                        cookie: self.cookies[target][sock],
                        key: key_name(slot.key, &mut key_buf),
                        value: if slot.op == Op::Set {
                            set_value(&self.cfg, slot.key, slot.seq)
                        } else {
                            &[]
                        },
                    };
                    self.sender
                        .push_raw(addr, |out| protocol::encode_request(&req, out));
                }
                let sent = self
                    .sender
                    .send_nonblocking(self.fds[sock])
                    .context("sendmmsg")?;
                let now = Instant::now();
                for _ in 0..sent {
                    let i = self.send_queues[sock].pop_front().expect("queued") as usize;
                    let slot = &mut self.slots[i];
                    slot.state = SlotState::InFlight;
                    slot.first_sent.get_or_insert(now);
                }
                total += sent;
                if sent < n {
                    break;
                }
            }
        }
        Ok(total)
    }

    /// Sends socket `sock`'s queued requests as BATCH datagrams of up to `--pipeline`
    /// items; returns how many requests went out.
    fn flush_batches(&mut self, sock: usize) -> anyhow::Result<usize> {
        let target = self.target;
        let addr = self.server_addrs[target];
        let cookie = self.cookies[target][sock];
        let mut total = 0;
        while !self.send_queues[sock].is_empty() {
            let mut sender = mem::take(&mut self.sender);
            self.batch_counts.clear();
            let queue = &self.send_queues[sock];
            let mut next = 0;
            let mut key_buf = [0u8; KEY_NAME_LEN];
            while next < queue.len() && self.batch_counts.len() < BATCH {
                let to = protocol::Addressing {
                    op: Some(Op::Batch),
                    client_id: self.batch_id,
                    request_seq: self.batch_seq + 1 + self.batch_counts.len() as u64,
                    cookie,
                };
                let mut items = 0;
                sender.push_raw(addr, |out| {
                    let start = protocol::batch::begin_batch(out, &to);
                    while next < queue.len() && items < self.cfg.pipeline {
                        let slot = &self.slots[queue[next] as usize];
                        let req = Request {
                            op: slot.op,
                            client_id: slot.client_id,
                            request_seq: slot.seq,
                            cookie,
                            key: key_name(slot.key, &mut key_buf),
                            value: if slot.op == Op::Set {
                                set_value(&self.cfg, slot.key, slot.seq)
                            } else {
                                &[]
                            },
                        };
                        let len = protocol::batch::request_item_len(&req);
                        if out.len() - start + len > protocol::MAX_BATCH_DATAGRAM_SIZE {
                            break;
                        }
                        protocol::batch::push_request_item(out, start, &req);
                        next += 1;
                        items += 1;
                    }
                });
                self.batch_counts.push(items);
            }
            let datagrams = self.batch_counts.len();
            let sent = sender.send_nonblocking(self.fds[sock]);
            self.sender = sender;
            let sent = sent.context("sendmmsg")?;
            let now = Instant::now();
            for d in 0..sent {
                self.batch_seq += 1;
                let mut record = if self.batches.len() >= BATCH_RECORDS_MAX {
                    self.batches.pop_front().unwrap_or_default()
                } else {
                    BatchRecord::default()
                };
                record.seq = self.batch_seq;
                record.items.clear();
                for _ in 0..self.batch_counts[d] {
                    let i = self.send_queues[sock].pop_front().expect("queued") as usize;
                    let slot = &mut self.slots[i];
                    slot.target = target;
                    slot.state = SlotState::InFlight;
                    slot.first_sent.get_or_insert(now);
                    record.items.push((i as u32, slot.seq));
                    total += 1;
                }
                self.batches.push_back(record);
            }
            if sent < datagrams {
                break;
            }
        }
        Ok(total)
    }

    /// Receives and handles responses with `recvmmsg`; returns how many arrived.
    pub(super) fn receive(&mut self, phase: &mut Phase) -> anyhow::Result<usize> {
        let mut rx = self.receiver.take().expect("the worker owns a receiver");
        let result = self.receive_with(&mut rx, phase);
        self.receiver = Some(rx);
        result
    }

    fn receive_with(&mut self, rx: &mut net::Receiver, phase: &mut Phase) -> anyhow::Result<usize> {
        let mut total = 0;
        for sock in 0..self.sockets.len() {
            for _ in 0..RECV_ROUNDS {
                let got = rx.recv_nonblocking(self.fds[sock]).context("recvmmsg")?;
                let now = Instant::now();
                for j in 0..got {
                    if let Some(d) = rx.get(j)
                        && !d.truncated
                    {
                        self.handle_datagram(sock, d.bytes, phase, now);
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

    pub(super) fn handle_datagram(
        &mut self,
        sock: usize,
        bytes: &[u8],
        phase: &mut Phase,
        now: Instant,
    ) {
        match protocol::parse_reply(bytes) {
            Ok(protocol::Reply::Batch(b)) => {
                for item in b.items() {
                    self.handle_response(sock, &item, phase, now);
                }
            }
            Ok(protocol::Reply::Single(r))
                if r.op == Some(Op::Batch) && r.client_id == self.batch_id =>
            {
                self.handle_batch_refusal(sock, &r, phase, now)
            }
            Ok(protocol::Reply::Single(r)) => self.handle_response(sock, &r, phase, now),
            Err(_) => {}
        }
    }

    /// A reply to a whole batch (CookieRequired, or a rejection): each item takes it.
    fn handle_batch_refusal(
        &mut self,
        sock: usize,
        resp: &protocol::Response<'_>,
        phase: &mut Phase,
        now: Instant,
    ) {
        let Some(first) = self.batches.front().map(|b| b.seq) else {
            return;
        };
        let Some(at) = resp.request_seq.checked_sub(first) else {
            return;
        };
        let Some(record) = self.batches.get_mut(at as usize) else {
            return;
        };
        let items = mem::take(&mut record.items);
        for &(i, seq) in &items {
            let item = protocol::Response {
                op: None,
                client_id: self.slots[i as usize].client_id,
                request_seq: seq,
                ..*resp
            };
            self.handle_response(sock, &item, phase, now);
        }
    }

    /// One reply to one request (alone, or an item of a batch).
    fn handle_response(
        &mut self,
        sock: usize,
        resp: &protocol::Response<'_>,
        phase: &mut Phase,
        now: Instant,
    ) {
        let Some(i) = self.slot_for(resp.client_id) else {
            return;
        };
        let (status, cookie) = (resp.status, resp.cookie);
        let slot = &self.slots[i];
        if slot.state != SlotState::InFlight || slot.seq != resp.request_seq {
            return;
        }
        if resp.op.is_some_and(|op| op != slot.op) {
            return;
        }
        let hint = (status == Status::NotLeader).then(|| protocol::parse_leader_hint(resp.payload));
        let slot_target = slot.target;
        self.last_rx = now;
        // Every reply carries the server's cookie for this socket: keep it (a SET-only
        // load never sees CookieRequired, and batches need the cookie).
        if cookie != NO_COOKIE {
            self.cookies[slot_target][sock] = cookie;
        }
        match status {
            Status::Ok | Status::NotFound => self.complete(i, Some(status), phase, now),
            Status::CookieRequired => {
                self.tally
                    .bump(in_window(phase, now), |c| &mut c.cookie_retries);
                self.cookies[slot_target][sock] = cookie;
                self.queue(i);
            }
            Status::NotLeader => {
                self.tally.bump(in_window(phase, now), |c| &mut c.redirects);
                match hint.flatten() {
                    Some(leader) => {
                        self.target = self.server_index(leader);
                        self.queue(i);
                    }
                    None => {
                        // Leader unknown: move on from the server that said so (once,
                        // not once per slot) and retry a little later.
                        if self.target == slot_target {
                            self.target = (self.target + 1) % self.servers.len();
                        }
                        self.delay(i, now + NO_LEADER_BACKOFF);
                    }
                }
            }
            Status::Busy => {
                self.tally.bump(in_window(phase, now), |c| &mut c.busy);
                let slot = &mut self.slots[i];
                let backoff = BUSY_BACKOFF
                    .saturating_mul(1 << slot.busy_streak.min(10))
                    .min(BUSY_BACKOFF_MAX);
                slot.busy_streak += 1;
                self.delay(i, now + backoff);
            }
            Status::Malformed | Status::TooLarge | Status::Failed | Status::NoSpace => {
                self.complete(i, Some(status), phase, now)
            }
        }
    }

    /// Records the final answer of slot `i`'s operation and starts its next one.
    pub(super) fn complete(
        &mut self,
        i: usize,
        status: Option<Status>,
        phase: &mut Phase,
        now: Instant,
    ) {
        let slot = &self.slots[i];
        let latency_us = slot
            .intended
            .or(slot.first_sent)
            .map_or(0, |t| now.saturating_duration_since(t).as_micros() as u64)
            .max(1);
        self.tally.answer(status, latency_us, phase, now);
        self.finish(i, phase, now);
    }

    /// Sends interval statistics to the main thread.
    pub(super) fn flush_interval(&mut self) {
        let prefilling = self.cfg.prefill_keys.is_some();
        self.tally.flush(&self.tx, prefilling);
    }

    /// Sleeps in `poll` until a socket is readable (or writable, if sends are pending),
    /// a timer is due, or `until`, whichever is first; at most 1 ms.
    pub(super) fn wait_idle(&mut self, until: Instant) {
        let mut deadline = until;
        if let Some(Reverse((due, _, _))) = self.timers.peek() {
            deadline = deadline.min(*due);
        }
        if let Some(s) = &self.schedule
            && !self.free.is_empty()
        {
            deadline = deadline.min(s.due(s.issued));
        }
        let fds = self.fds.iter().zip(&self.send_queues).map(|(&fd, q)| {
            let out = if q.is_empty() { 0 } else { libc::POLLOUT };
            (fd, libc::POLLIN | out)
        });
        poll_until(&mut self.pollfds, fds, deadline);
    }
}

/// `count` nonblocking UDP sockets bound to an ephemeral port of `server`'s address
/// family, with the load tool's socket buffers.
pub(super) fn udp_sockets(count: usize, server: SocketAddr) -> anyhow::Result<Vec<Socket>> {
    let bind: SocketAddr = match server.ip() {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    (0..count)
        .map(|_| {
            let s = Socket::new(
                Domain::for_address(bind),
                Type::DGRAM,
                Some(SocketProtocol::UDP),
            )
            .context("creating a UDP socket")?;
            s.set_nonblocking(true)?;
            // Above net.core.{r,w}mem_max when allowed (root), else capped by them.
            crate::net::set_buffer_size(&s, SOCKET_BUFFER_BYTES, true);
            crate::net::set_buffer_size(&s, SOCKET_BUFFER_BYTES, false);
            s.bind(&bind.into())
                .with_context(|| format!("binding a UDP socket to {bind}"))?;
            Ok(s)
        })
        .collect()
}

/// The phase's next operation `(op, key, prefill attempts so far)`, or `None` when it
/// has no more: the measurement samples a key and picks the op by workload until its end;
/// the prefill writes its share of keys in order, and keys given back for a retry first.
pub(super) fn next_op(
    cfg: &WorkerConfig,
    rng: &mut StdRng,
    phase: &mut Phase,
    now: Instant,
) -> Option<(Op, u64, u32)> {
    match phase {
        Phase::Measure { end, .. } => {
            if now >= *end {
                return None;
            }
            let key = cfg.sampler.sample(rng);
            let op = match cfg.workload {
                Workload::Set => Op::Set,
                Workload::Get => Op::Get,
                Workload::Mixed if rng.r#gen::<f64>() < cfg.read_ratio => Op::Get,
                Workload::Mixed => Op::Set,
            };
            Some((op, key, 0))
        }
        Phase::Prefill {
            next, share, retry, ..
        } => {
            if let Some((key, attempts)) = retry.pop() {
                return Some((Op::Set, key, attempts));
            }
            (*next < share.end).then(|| {
                let key = *next;
                *next += share.step;
                (Op::Set, key, 0)
            })
        }
    }
}

/// Waits in `ppoll` for one of `fds` (descriptor, events) to be ready, or `until`,
/// capped at 1 ms (load threads poll briefly when idle, so timers and reports stay on
/// time); returns at once if `until` has passed. `pfds` is scratch space.
pub(super) fn poll_until(
    pfds: &mut Vec<libc::pollfd>,
    fds: impl Iterator<Item = (RawFd, libc::c_short)>,
    until: Instant,
) {
    let now = Instant::now();
    if until <= now {
        return;
    }
    pfds.clear();
    pfds.extend(fds.map(|(fd, events)| libc::pollfd {
        fd,
        events,
        revents: 0,
    }));
    let wait = (until - now).min(Duration::from_millis(1));
    let ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: wait.as_nanos() as libc::c_long,
    };
    // SAFETY: `pfds` is a valid array of `pfds.len()` pollfds and `ts` a valid timespec;
    // both outlive the call.
    unsafe {
        libc::ppoll(
            pfds.as_mut_ptr(),
            pfds.len() as libc::nfds_t,
            &ts,
            std::ptr::null(),
        );
    }
}

/// Whether an event at `now` belongs to the measured window.
pub(super) fn in_window(phase: &Phase, now: Instant) -> bool {
    match phase {
        Phase::Measure { warm_end, end } => now >= *warm_end && now < *end,
        Phase::Prefill { .. } => false,
    }
}

impl LoadThread for Worker {
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
        Worker::run_phase(self, phase)
    }
}
