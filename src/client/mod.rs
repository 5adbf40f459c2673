//! A blocking client for the UDP protocol in [`crate::client::protocol`].
//!
//! A [`Client`] owns one UDP socket and one random client id, and keeps exactly one
//! request outstanding at a time, as the server's exactly-once sessions require. Every
//! call takes the next sequence number; retransmissions of that call reuse it, so a
//! write the server already applied is answered again instead of being applied twice.
//!
//! Retransmission follows exponential backoff (50 ms doubling to 1 s by default) until
//! the call's deadline (5 s by default). The client also:
//! - stores the anti-amplification cookie a server hands out with
//!   [`Status::CookieRequired`] and resends at once (this is not counted as a failure);
//! - follows [`Status::NotLeader`] redirects to the leader named in the payload;
//! - moves on to the next known server when one does not answer;
//! - backs off and retries on [`Status::Busy`] until the deadline;
//! - ignores datagrams that are not the answer to the outstanding request.
//!
//! [`Client::get_many`] and [`Client::set_many`] send many operations in BATCH datagrams
//! (see [`protocol::batch`]): each operation rides on a *lane* of its own, a client id
//! with its own sequence numbers, so the exactly-once rules hold item by item; what stays
//! unanswered is resent with the same sequence numbers, by the same rules as a call.
//!
//! ```no_run
//! use ocean_liner::client::{Client, ClientOptions};
//!
//! let mut client = Client::connect("127.0.0.1:9000", ClientOptions::default())?;
//! client.set("greeting", b"hello")?;
//! assert_eq!(client.get("greeting")?.as_deref(), Some(&b"hello"[..]));
//! client.delete("greeting")?;
//! # Ok::<(), ocean_liner::client::ClientError>(())
//! ```

pub mod bench;
pub mod member;
pub mod protocol;
pub mod top;

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::time::{Duration, Instant};

use crate::client::protocol::{
    MAX_DATAGRAM_SIZE, NO_COOKIE, Op, RejectReason, Request, Response, Status,
};

/// Tuning for a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Total time one call may take, retries included.
    pub deadline: Duration,
    /// Wait before the first retransmission (and after the first Busy).
    pub initial_backoff: Duration,
    /// Longest wait between retransmissions.
    pub max_backoff: Duration,
    /// How many NotLeader redirects one call follows before giving up.
    pub max_redirects: u32,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            deadline: Duration::from_secs(5),
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            max_redirects: 4,
        }
    }
}

/// Why a call failed.
#[derive(Debug)]
pub enum ClientError {
    /// No server answered before the deadline.
    NoReply {
        servers: Vec<SocketAddr>,
        waited: Duration,
        /// Whether the OS reported the port unreachable (nothing listening).
        refused: bool,
    },
    /// The server answered with an error status (for [`Status::Busy`], after retrying
    /// until the deadline).
    Refused { status: Status, message: String },
    /// Redirects went on longer than [`ClientOptions::max_redirects`], or no leader was
    /// known before the deadline.
    NoLeader { last: Option<SocketAddr> },
    /// The request breaks a protocol rule and was not sent.
    InvalidRequest(RejectReason),
    /// An address could not be resolved or was empty.
    Resolve(String),
    /// A socket operation failed.
    Io(io::Error),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::NoReply {
                servers,
                waited,
                refused,
            } => {
                let list: Vec<String> = servers.iter().map(ToString::to_string).collect();
                write!(
                    f,
                    "no reply from {} after {:.1} s{}; is the server running? \
                     start it with `ocean-liner serve`",
                    list.join(", "),
                    waited.as_secs_f64(),
                    if *refused { " (port unreachable)" } else { "" }
                )
            }
            ClientError::Refused { status, message } if message.is_empty() => {
                write!(f, "server refused the request: {status}")
            }
            ClientError::Refused { status, message } => {
                write!(f, "server refused the request: {status}: {message}")
            }
            ClientError::NoLeader { last: Some(addr) } => {
                write!(
                    f,
                    "no leader found (last redirect to {addr}); is the cluster electing?"
                )
            }
            ClientError::NoLeader { last: None } => {
                write!(
                    f,
                    "no leader known to the servers; is the cluster electing?"
                )
            }
            ClientError::InvalidRequest(reason) => write!(f, "invalid request: {reason}"),
            ClientError::Resolve(msg) => write!(f, "cannot resolve server address: {msg}"),
            ClientError::Io(e) => write!(f, "socket error: {e}"),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        ClientError::Io(e)
    }
}

/// STATS text (`key=value` lines) as one JSON object: values that read as numbers are
/// numbers, the rest strings.
pub fn stats_json(text: &str) -> String {
    let mut out = String::from("{");
    for (i, (k, v)) in text.lines().filter_map(|l| l.split_once('=')).enumerate() {
        if i > 0 {
            out.push(',');
        }
        json_string(&mut out, k);
        out.push(':');
        // JSON numbers: no leading zeros, no exponent or sign forms JSON lacks.
        let digits = v.strip_prefix('-').unwrap_or(v);
        let leading_zero = digits.len() > 1 && digits.starts_with('0') && !digits.starts_with("0.");
        let bad_dot = digits.starts_with('.') || digits.ends_with('.');
        let all_digits = digits.chars().all(|c| c.is_ascii_digit() || c == '.');
        let numeric = all_digits
            && !digits.is_empty()
            && !leading_zero
            && !bad_dot
            && v.parse::<f64>().is_ok_and(f64::is_finite);
        if numeric {
            out.push_str(v);
        } else {
            json_string(&mut out, v);
        }
    }
    out.push('}');
    out
}

fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Resolves a comma-separated list of `host:port` addresses (every address each name
/// resolves to, in order, without duplicates).
pub fn resolve_servers(list: &str) -> Result<Vec<SocketAddr>, ClientError> {
    let mut out = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let addrs = part
            .to_socket_addrs()
            .map_err(|e| ClientError::Resolve(format!("{part}: {e}")))?;
        for addr in addrs {
            if !out.contains(&addr) {
                out.push(addr);
            }
        }
    }
    if out.is_empty() {
        return Err(ClientError::Resolve(format!("no address in {list:?}")));
    }
    Ok(out)
}

/// A random nonzero client id.
pub fn random_client_id() -> u64 {
    loop {
        let id: u64 = rand::random();
        if id != 0 {
            return id;
        }
    }
}

/// A blocking client. See the [module documentation](self).
#[derive(Debug)]
pub struct Client {
    socket: UdpSocket,
    servers: Vec<SocketAddr>,
    /// Index into `servers` of the server requests go to.
    current: usize,
    /// The peer the socket is connected to.
    connected: Option<SocketAddr>,
    client_id: u64,
    next_seq: u64,
    cookies: HashMap<SocketAddr, u64>,
    opts: ClientOptions,
    send_buf: Vec<u8>,
    recv_buf: Box<[u8]>,
    /// `(client_id, next_seq)` per lane of [`Client::get_many`]/[`Client::set_many`].
    lanes: Vec<(u64, u64)>,
    /// The number of the last BATCH datagram sent (its `request_seq`).
    batch_seq: u64,
}

/// A successful answer, owning its payload.
struct Answer {
    status: Status,
    payload: Vec<u8>,
}

impl Client {
    /// Connects to the server(s) at `addr` (anything [`ToSocketAddrs`] accepts, e.g. a
    /// [`SocketAddr`] or `"host:port"`; a name that resolves to several addresses makes
    /// them all known servers).
    pub fn connect<A: ToSocketAddrs>(addr: A, opts: ClientOptions) -> Result<Client, ClientError> {
        let servers: Vec<SocketAddr> = addr
            .to_socket_addrs()
            .map_err(|e| ClientError::Resolve(e.to_string()))?
            .collect();
        Client::connect_cluster(servers, opts)
    }

    /// Connects to a cluster (a `Vec` or slice of addresses): requests go to the first
    /// address until a server redirects or stops answering.
    pub fn connect_cluster(
        servers: impl AsRef<[SocketAddr]>,
        opts: ClientOptions,
    ) -> Result<Client, ClientError> {
        let servers = servers.as_ref();
        let first = *servers
            .first()
            .ok_or_else(|| ClientError::Resolve("no server address given".into()))?;
        let bind: SocketAddr = if first.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(bind)?;
        let mut unique = Vec::with_capacity(servers.len());
        for s in servers {
            if !unique.contains(s) {
                unique.push(*s);
            }
        }
        Ok(Client {
            socket,
            servers: unique,
            current: 0,
            connected: None,
            client_id: random_client_id(),
            next_seq: 1,
            cookies: HashMap::new(),
            opts,
            send_buf: Vec::with_capacity(MAX_DATAGRAM_SIZE),
            recv_buf: vec![0u8; protocol::MAX_BATCH_DATAGRAM_SIZE + 1].into_boxed_slice(),
            lanes: Vec::new(),
            batch_seq: 0,
        })
    }

    /// This client's id.
    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    /// The servers this client knows of (redirect targets are added as they appear).
    pub fn servers(&self) -> &[SocketAddr] {
        &self.servers
    }

    /// The server the next request goes to first.
    pub fn current_server(&self) -> SocketAddr {
        self.servers[self.current]
    }

    /// Reads `key`: `Some(value)`, or `None` if it is absent.
    pub fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, ClientError> {
        let answer = self.call(Op::Get, key, &[])?;
        Ok(match answer.status {
            Status::NotFound => None,
            _ => Some(answer.payload),
        })
    }

    /// Writes `value` under `key`.
    pub fn set(&mut self, key: &str, value: &[u8]) -> Result<(), ClientError> {
        self.call(Op::Set, key, value).map(|_| ())
    }

    /// Removes `key`; removing an absent key succeeds.
    pub fn delete(&mut self, key: &str) -> Result<(), ClientError> {
        self.call(Op::Delete, key, &[]).map(|_| ())
    }

    /// Reads many keys in BATCH datagrams: the value of each (`None` if absent), in
    /// order. Fails as a call fails, if any one read does.
    pub fn get_many(&mut self, keys: &[&str]) -> Result<Vec<Option<Vec<u8>>>, ClientError> {
        let ops: Vec<(Op, &str, &[u8])> = keys.iter().map(|k| (Op::Get, *k, &[][..])).collect();
        let answers = self.call_batch(&ops)?;
        Ok(answers
            .into_iter()
            .map(|a| (a.status == Status::Ok).then_some(a.payload))
            .collect())
    }

    /// Writes many keys in BATCH datagrams. Every write is durable when this returns
    /// `Ok`; on an error, some may have been applied and others not.
    pub fn set_many(&mut self, pairs: &[(&str, &[u8])]) -> Result<(), ClientError> {
        let ops: Vec<(Op, &str, &[u8])> = pairs.iter().map(|(k, v)| (Op::Set, *k, *v)).collect();
        self.call_batch(&ops).map(|_| ())
    }

    /// Checks that a server answers; returns the round-trip time of the call.
    pub fn ping(&mut self) -> Result<Duration, ClientError> {
        let start = Instant::now();
        self.call(Op::Ping, "", &[])?;
        Ok(start.elapsed())
    }

    /// The server's counters as `key=value` text lines. The text comes in pages of whole
    /// lines (one request each, until an empty page), so each line is consistent but the
    /// pages are read one after another, not at one instant.
    pub fn stats(&mut self) -> Result<String, ClientError> {
        let first = self.call(Op::Stats, "", &[])?;
        let first = String::from_utf8_lossy(&first.payload).into_owned();
        let mut text = first.clone();
        let mut line = first.lines().count();
        while line > 0 && line < 10usize.pow(protocol::STATS_LINE_DIGITS_MAX as u32) {
            // A server from before pages refuses the key or sends the first page again:
            // then the first page is all there is.
            let Ok(answer) = self.call(Op::Stats, &line.to_string(), &[]) else {
                break;
            };
            let page = String::from_utf8_lossy(&answer.payload).into_owned();
            if page.is_empty() || page == first {
                break;
            }
            line += page.lines().count();
            text.push_str(&page);
        }
        Ok(text)
    }

    fn connect_to(&mut self, target: SocketAddr) -> io::Result<()> {
        if self.connected != Some(target) {
            self.socket.connect(target)?;
            self.connected = Some(target);
        }
        Ok(())
    }

    fn server_index(&mut self, addr: SocketAddr) -> usize {
        match self.servers.iter().position(|s| *s == addr) {
            Some(i) => i,
            None => {
                self.servers.push(addr);
                self.servers.len() - 1
            }
        }
    }

    /// Sends one request and retries it (same sequence number) until it is answered
    /// with a final status or the deadline passes.
    fn call(&mut self, op: Op, key: &str, value: &[u8]) -> Result<Answer, ClientError> {
        let probe = Request {
            op,
            client_id: self.client_id,
            request_seq: 0,
            cookie: NO_COOKIE,
            key,
            value,
        };
        probe.validate().map_err(ClientError::InvalidRequest)?;

        let seq = self.next_seq;
        self.next_seq += 1;
        let mut retry = Retry::new(&self.opts);

        loop {
            if let Some(e) = retry.expired(&self.servers) {
                return Err(e);
            }
            let deadline = retry.deadline;
            let backoff = retry.backoff;
            let target = self.servers[self.current];
            let req = Request {
                request_seq: seq,
                cookie: self.cookies.get(&target).copied().unwrap_or(NO_COOKIE),
                ..probe
            };
            self.send_buf.clear();
            protocol::encode_request(&req, &mut self.send_buf);

            let sent = self
                .connect_to(target)
                .and_then(|()| self.socket.send(&self.send_buf));
            let wait_until = deadline.min(Instant::now() + backoff);
            let outcome = match sent {
                Ok(_) => self.await_reply(seq, op, wait_until),
                Err(e) if is_unreachable(&e) => Wait::Unreachable,
                Err(e) => return Err(ClientError::Io(e)),
            };

            match outcome {
                Wait::Reply {
                    status,
                    cookie,
                    payload,
                } => match status {
                    Status::Ok | Status::NotFound => return Ok(Answer { status, payload }),
                    Status::CookieRequired => {
                        self.take_cookie(&mut retry, target, cookie, wait_until)
                    }
                    Status::NotLeader => {
                        let hint = protocol::parse_leader_hint(&payload);
                        self.redirect(&mut retry, hint, target, wait_until)?
                    }
                    Status::Busy => retry.busy(wait_until),
                    Status::Malformed | Status::TooLarge | Status::Failed | Status::NoSpace => {
                        return Err(ClientError::Refused {
                            status,
                            message: String::from_utf8_lossy(&payload).into_owned(),
                        });
                    }
                },
                Wait::Unreachable => self.unreachable(&mut retry, wait_until),
                Wait::TimedOut => self.timed_out(&mut retry),
            }
        }
    }

    /// A server asked for its cookie: resend at once with it. One that keeps asking for
    /// the cookie it was just given is treated as not answering.
    fn take_cookie(&mut self, retry: &mut Retry, target: SocketAddr, cookie: u64, until: Instant) {
        let had = self.cookies.insert(target, cookie);
        if had == Some(cookie) || cookie == NO_COOKIE {
            retry.wait(until);
        }
    }

    /// NotLeader: follow the hint, or (election in progress) wait and ask another server.
    fn redirect(
        &mut self,
        retry: &mut Retry,
        hint: Option<SocketAddr>,
        target: SocketAddr,
        until: Instant,
    ) -> Result<(), ClientError> {
        retry.last = Trouble::LeaderUnknown;
        match hint {
            Some(leader) if leader != target => {
                retry.redirects += 1;
                retry.last_redirect = Some(leader);
                if retry.redirects > self.opts.max_redirects {
                    return Err(ClientError::NoLeader { last: Some(leader) });
                }
                self.current = self.server_index(leader);
            }
            _ => {
                retry.wait(until);
                self.next_server();
            }
        }
        Ok(())
    }

    /// The port was unreachable: wait, then try the next server.
    fn unreachable(&mut self, retry: &mut Retry, until: Instant) {
        retry.refused = true;
        retry.last = Trouble::Silence;
        retry.wait(until);
        self.next_server();
    }

    /// No answer in time: back off and try the next server.
    fn timed_out(&mut self, retry: &mut Retry) {
        retry.last = Trouble::Silence;
        retry.backoff = (retry.backoff * 2).min(retry.max_backoff);
        self.next_server();
    }

    fn next_server(&mut self) {
        self.current = (self.current + 1) % self.servers.len();
    }

    /// Runs `ops` (each on a lane of its own) in BATCH datagrams, resending what is
    /// unanswered, until every one has a final answer or the deadline passes.
    fn call_batch(&mut self, ops: &[(Op, &str, &[u8])]) -> Result<Vec<Answer>, ClientError> {
        use protocol::batch;
        let mut items = Vec::with_capacity(ops.len());
        for (i, &(op, key, value)) in ops.iter().enumerate() {
            if i == self.lanes.len() {
                self.lanes.push((random_client_id(), 1));
            }
            let (client_id, request_seq) = self.lanes[i];
            let req = Request {
                op,
                client_id,
                request_seq,
                cookie: NO_COOKIE,
                key,
                value,
            };
            req.validate().map_err(ClientError::InvalidRequest)?;
            items.push(req);
        }
        for lane in &mut self.lanes[..ops.len()] {
            lane.1 += 1;
        }
        let mut answers: Vec<Option<Answer>> = (0..ops.len()).map(|_| None).collect();
        let mut retry = Retry::new(&self.opts);
        let mut datagrams = Vec::new();
        while answers.iter().any(Option::is_none) {
            if let Some(e) = retry.expired(&self.servers) {
                // The unanswered operations may yet be applied: their lanes start over
                // with new ids, so nothing sent under the old ones answers a later call.
                for (i, a) in answers.iter().enumerate() {
                    if a.is_none() {
                        self.lanes[i] = (random_client_id(), 1);
                    }
                }
                return Err(e);
            }
            let (deadline, backoff) = (retry.deadline, retry.backoff);
            let target = self.servers[self.current];
            let cookie = self.cookies.get(&target).copied().unwrap_or(NO_COOKIE);
            // The unanswered operations, packed into as few datagrams as they fit.
            datagrams.clear();
            let first_batch = self.batch_seq + 1;
            let mut open: Option<usize> = None;
            for (req, _) in items.iter().zip(&answers).filter(|(_, a)| a.is_none()) {
                let len = batch::request_item_len(req);
                let fits = open.is_some_and(|start| {
                    let d: &Vec<u8> = &datagrams[start];
                    d.len() + len <= protocol::MAX_BATCH_DATAGRAM_SIZE
                });
                if !fits {
                    self.batch_seq += 1;
                    let to = protocol::Addressing {
                        op: Some(Op::Batch),
                        client_id: self.client_id,
                        request_seq: self.batch_seq,
                        cookie,
                    };
                    let mut d = Vec::with_capacity(protocol::MAX_BATCH_DATAGRAM_SIZE);
                    batch::begin_batch(&mut d, &to);
                    datagrams.push(d);
                    open = Some(datagrams.len() - 1);
                }
                let d = datagrams.last_mut().expect("a datagram was begun");
                batch::push_request_item(d, 0, req);
            }
            let mut sent = self.connect_to(target);
            for d in &datagrams {
                if sent.is_err() {
                    break;
                }
                sent = self.socket.send(d).map(|_| ());
            }
            let wait_until = deadline.min(Instant::now() + backoff);
            let outcome = match sent {
                Ok(()) => {
                    let batches = first_batch..=self.batch_seq;
                    self.await_batch(&items, &mut answers, batches, wait_until)?
                }
                Err(e) if is_unreachable(&e) => BatchWait::Unreachable,
                Err(e) => return Err(ClientError::Io(e)),
            };
            match outcome {
                BatchWait::Done => {}
                BatchWait::Cookie(c) => self.take_cookie(&mut retry, target, c, wait_until),
                BatchWait::Redirect(hint) => self.redirect(&mut retry, hint, target, wait_until)?,
                BatchWait::Busy => retry.busy(wait_until),
                BatchWait::Unreachable => self.unreachable(&mut retry, wait_until),
                BatchWait::TimedOut => self.timed_out(&mut retry),
            }
        }
        Ok(answers.into_iter().flatten().collect())
    }

    /// Collects reply items to `items` into `answers` until all are answered, a reply
    /// asks for a resend (cookie, redirect, Busy), or `until`.
    fn await_batch(
        &mut self,
        items: &[Request<'_>],
        answers: &mut [Option<Answer>],
        batches: std::ops::RangeInclusive<u64>,
        until: Instant,
    ) -> Result<BatchWait, ClientError> {
        let mut resend = None;
        loop {
            if answers.iter().all(Option::is_some) {
                return Ok(BatchWait::Done);
            }
            let now = Instant::now();
            if now >= until {
                return Ok(resend.unwrap_or(BatchWait::TimedOut));
            }
            let remaining = (until - now).max(Duration::from_micros(100));
            // Once something asked for a resend, take only what is already here.
            let wait = if resend.is_some() {
                Duration::from_micros(100)
            } else {
                remaining
            };
            if self.socket.set_read_timeout(Some(wait)).is_err() {
                return Ok(BatchWait::TimedOut);
            }
            let n = match self.socket.recv(&mut self.recv_buf) {
                Ok(n) => n,
                Err(e) if is_unreachable(&e) => return Ok(BatchWait::Unreachable),
                Err(e) if is_wait_over(&e) => {
                    if let Some(r) = resend {
                        return Ok(r);
                    }
                    continue;
                }
                Err(_) => return Ok(BatchWait::TimedOut),
            };
            let Ok(reply) = protocol::parse_reply(&self.recv_buf[..n]) else {
                continue;
            };
            match reply {
                protocol::Reply::Single(r) => {
                    let ours = r.op == Some(Op::Batch)
                        && r.client_id == self.client_id
                        && batches.contains(&r.request_seq);
                    if !ours {
                        continue;
                    }
                    match r.status {
                        Status::CookieRequired => return Ok(BatchWait::Cookie(r.cookie)),
                        status => {
                            return Err(ClientError::Refused {
                                status,
                                message: String::from_utf8_lossy(r.payload).into_owned(),
                            });
                        }
                    }
                }
                protocol::Reply::Batch(b) => {
                    for r in b.items() {
                        let Some(i) = items
                            .iter()
                            .position(|q| answers_item(&r, q))
                            .filter(|&i| answers[i].is_none())
                        else {
                            continue;
                        };
                        match r.status {
                            Status::Ok | Status::NotFound => {
                                answers[i] = Some(Answer {
                                    status: r.status,
                                    payload: r.payload.to_vec(),
                                })
                            }
                            Status::NotLeader => {
                                let hint = protocol::parse_leader_hint(r.payload);
                                resend = Some(BatchWait::Redirect(hint));
                            }
                            Status::Busy => {
                                resend.get_or_insert(BatchWait::Busy);
                            }
                            // Items never ask for a cookie (the whole batch does).
                            Status::CookieRequired => {}
                            status => {
                                return Err(ClientError::Refused {
                                    status,
                                    message: String::from_utf8_lossy(r.payload).into_owned(),
                                });
                            }
                        }
                    }
                }
            }
        }
    }

    /// Waits until `until` for the answer to `(client_id, seq)`, skipping anything else.
    fn await_reply(&mut self, seq: u64, op: Op, until: Instant) -> Wait {
        loop {
            let now = Instant::now();
            if now >= until {
                return Wait::TimedOut;
            }
            // A zero read timeout means "block forever"; never pass one.
            let remaining = (until - now).max(Duration::from_micros(100));
            if self.socket.set_read_timeout(Some(remaining)).is_err() {
                return Wait::TimedOut;
            }
            let n = match self.socket.recv(&mut self.recv_buf) {
                Ok(n) => n,
                Err(e) if is_unreachable(&e) => return Wait::Unreachable,
                Err(e) if is_wait_over(&e) => {
                    continue;
                }
                Err(_) => return Wait::TimedOut,
            };
            let Ok(resp) = protocol::parse_response(&self.recv_buf[..n]) else {
                continue;
            };
            if !answers(&resp, self.client_id, seq, op) {
                continue;
            }
            return Wait::Reply {
                status: resp.status,
                cookie: resp.cookie,
                payload: resp.payload.to_vec(),
            };
        }
    }
}

/// How waiting for a batch's replies ended.
enum BatchWait {
    /// Every item is answered.
    Done,
    /// The batch needs this cookie.
    Cookie(u64),
    /// An item was answered NotLeader (with the hint, if any).
    Redirect(Option<SocketAddr>),
    Busy,
    Unreachable,
    TimedOut,
}

/// Whether reply item `r` answers request item `q`.
fn answers_item(r: &Response<'_>, q: &Request<'_>) -> bool {
    r.client_id == q.client_id && r.request_seq == q.request_seq && r.op.is_none_or(|o| o == q.op)
}

/// One call's retry state: the deadline, the backoff, and what went wrong last (to
/// explain a deadline expiry).
struct Retry {
    start: Instant,
    deadline: Instant,
    backoff: Duration,
    max_backoff: Duration,
    redirects: u32,
    last: Trouble,
    last_redirect: Option<SocketAddr>,
    /// Whether the OS ever reported a port unreachable.
    refused: bool,
}

impl Retry {
    fn new(opts: &ClientOptions) -> Retry {
        let start = Instant::now();
        Retry {
            start,
            deadline: start + opts.deadline,
            backoff: opts.initial_backoff,
            max_backoff: opts.max_backoff,
            redirects: 0,
            last: Trouble::Silence,
            last_redirect: None,
            refused: false,
        }
    }

    /// Sleeps until `until` and doubles the backoff.
    fn wait(&mut self, until: Instant) {
        sleep_until(until);
        self.backoff = (self.backoff * 2).min(self.max_backoff);
    }

    fn busy(&mut self, until: Instant) {
        self.last = Trouble::Busy;
        self.wait(until);
    }

    /// The error to give up with, once the deadline has passed.
    fn expired(&self, servers: &[SocketAddr]) -> Option<ClientError> {
        let now = Instant::now();
        (now >= self.deadline).then(|| match self.last {
            Trouble::Busy => ClientError::Refused {
                status: Status::Busy,
                message: "server still busy at the deadline".into(),
            },
            Trouble::LeaderUnknown => ClientError::NoLeader {
                last: self.last_redirect,
            },
            Trouble::Silence => ClientError::NoReply {
                servers: servers.to_vec(),
                waited: now - self.start,
                refused: self.refused,
            },
        })
    }
}

enum Trouble {
    Silence,
    Busy,
    LeaderUnknown,
}

enum Wait {
    Reply {
        status: Status,
        cookie: u64,
        payload: Vec<u8>,
    },
    /// The OS reported the destination port unreachable.
    Unreachable,
    TimedOut,
}

/// Whether `resp` answers the outstanding request. A reply to a request the server
/// could not parse carries op 0, so a missing op is accepted.
fn answers(resp: &Response<'_>, client_id: u64, seq: u64, op: Op) -> bool {
    resp.client_id == client_id && resp.request_seq == seq && resp.op.is_none_or(|o| o == op)
}

/// A receive that ended with nothing: its timeout passed, or a signal interrupted it.
fn is_wait_over(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

fn is_unreachable(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset
    )
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn stats_become_json_with_numbers_and_strings() {
        let text = "node_id=0\nrole=leader\nleader_id=-1\nratio=53.1\nread_mode=Lease\n\
                    odd=007\nquote=a\"b\nend=1.\n";
        assert_eq!(
            stats_json(text),
            r#"{"node_id":0,"role":"leader","leader_id":-1,"ratio":53.1,"read_mode":"Lease","odd":"007","quote":"a\"b","end":"1."}"#
        );
    }

    use super::*;
    use crate::client::protocol::{encode_response, parse_request};
    use std::thread;

    /// What a scripted server saw: (client_id, request_seq, op) per request.
    type Seen = Vec<(u64, u64, Op)>;

    /// A scripted server: answers each request with `reply(request, count)`.
    fn fake_server<F>(mut reply: F) -> (SocketAddr, thread::JoinHandle<Seen>)
    where
        F: FnMut(&Request<'_>, usize) -> Option<(Status, u64, Vec<u8>)> + Send + 'static,
    {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(1500)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let handle = thread::spawn(move || {
            let mut seen = Vec::new();
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                let Ok(req) = parse_request(&buf[..n]) else {
                    continue;
                };
                seen.push((req.client_id, req.request_seq, req.op));
                if let Some((status, cookie, payload)) = reply(&req, seen.len()) {
                    let resp = Response::reply(&req.addressing(), status, cookie, &payload);
                    let mut out = Vec::new();
                    encode_response(&resp, &mut out);
                    sock.send_to(&out, from).unwrap();
                }
            }
            seen
        });
        (addr, handle)
    }

    fn quick() -> ClientOptions {
        ClientOptions {
            deadline: Duration::from_millis(600),
            ..ClientOptions::default()
        }
    }

    #[test]
    fn get_set_delete_against_scripted_server() {
        let (addr, server) = fake_server(|req, _| {
            Some(match (req.op, req.key) {
                (Op::Get, "present") => (Status::Ok, 0, b"v".to_vec()),
                (Op::Get, _) => (Status::NotFound, 0, vec![]),
                (Op::Stats, "") => (Status::Ok, 0, b"a=1\n".to_vec()),
                // The page after the last line is empty.
                (Op::Stats, _) => (Status::Ok, 0, vec![]),
                _ => (Status::Ok, 0, vec![]),
            })
        });
        let mut c = Client::connect(addr, quick()).unwrap();
        assert_eq!(c.get("present").unwrap(), Some(b"v".to_vec()));
        assert_eq!(c.get("absent").unwrap(), None);
        c.set("k", b"value").unwrap();
        c.delete("k").unwrap();
        c.ping().unwrap();
        assert_eq!(c.stats().unwrap(), "a=1\n");
        let id = c.client_id();
        drop(c);
        let seen = server.join().unwrap();
        let seqs: Vec<u64> = seen.iter().map(|s| s.1).collect();
        assert_eq!(seqs, vec![1, 2, 3, 4, 5, 6, 7], "STATS took two pages");
        assert!(seen.iter().all(|s| s.0 == id));
    }

    #[test]
    fn retries_reuse_the_sequence_number() {
        // Drop the first two transmissions.
        let (addr, server) = fake_server(|_, n| (n > 2).then(|| (Status::Ok, 0, vec![])));
        let mut c = Client::connect(addr, ClientOptions::default()).unwrap();
        c.set("k", b"v").unwrap();
        drop(c);
        let seen = server.join().unwrap();
        assert_eq!(seen.len(), 3);
        assert!(seen.iter().all(|s| s.1 == 1));
    }

    #[test]
    fn cookie_required_is_stored_and_resent() {
        let (addr, server) = fake_server(|req, _| {
            Some(if req.cookie == 42 {
                (Status::Ok, 42, b"big value".to_vec())
            } else {
                (Status::CookieRequired, 42, vec![])
            })
        });
        let mut c = Client::connect(addr, quick()).unwrap();
        assert_eq!(c.get("k").unwrap(), Some(b"big value".to_vec()));
        assert_eq!(c.get("k").unwrap(), Some(b"big value".to_vec()));
        drop(c);
        // One CookieRequired round trip, then the cookie is reused.
        assert_eq!(server.join().unwrap().len(), 3);
    }

    #[test]
    fn not_leader_redirects_are_followed() {
        let (leader, leader_srv) = fake_server(|_, _| Some((Status::Ok, 0, b"x".to_vec())));
        let hint = leader.to_string().into_bytes();
        let (follower, follower_srv) =
            fake_server(move |_, _| Some((Status::NotLeader, 0, hint.clone())));
        let mut c = Client::connect(follower, quick()).unwrap();
        assert_eq!(c.get("k").unwrap(), Some(b"x".to_vec()));
        assert_eq!(c.current_server(), leader);
        assert_eq!(c.get("k").unwrap(), Some(b"x".to_vec()));
        drop(c);
        assert_eq!(follower_srv.join().unwrap().len(), 1);
        assert_eq!(leader_srv.join().unwrap().len(), 2);
    }

    #[test]
    fn silent_server_fails_over_to_the_next() {
        let (dead, dead_srv) = fake_server(|_, _| None);
        let (live, live_srv) = fake_server(|_, _| Some((Status::Ok, 0, vec![])));
        let mut c = Client::connect_cluster([dead, live], quick()).unwrap();
        c.set("k", b"v").unwrap();
        drop(c);
        assert_eq!(dead_srv.join().unwrap().len(), 1);
        assert_eq!(live_srv.join().unwrap().len(), 1);
    }

    #[test]
    fn error_statuses_are_reported() {
        let (addr, server) = fake_server(|req, _| {
            Some(match req.key {
                "full" => (Status::NoSpace, 0, b"disk full".to_vec()),
                _ => (Status::Busy, 0, vec![]),
            })
        });
        let mut c = Client::connect(addr, quick()).unwrap();
        match c.set("full", b"v") {
            Err(ClientError::Refused {
                status: Status::NoSpace,
                message,
            }) => {
                assert_eq!(message, "disk full")
            }
            other => panic!("{other:?}"),
        }
        match c.set("busy", b"v") {
            Err(ClientError::Refused {
                status: Status::Busy,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        drop(c);
        server.join().unwrap();
    }

    #[test]
    fn no_reply_message_names_the_server() {
        // A bound socket that never answers.
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = silent.local_addr().unwrap();
        let opts = ClientOptions {
            deadline: Duration::from_millis(200),
            ..ClientOptions::default()
        };
        let mut c = Client::connect(addr, opts).unwrap();
        let err = c.ping().unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&addr.to_string()), "{msg}");
        assert!(msg.contains("ocean-liner serve"), "{msg}");
        assert!(matches!(err, ClientError::NoReply { .. }));
    }

    #[test]
    fn closed_port_is_reported_as_unreachable() {
        let addr = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let opts = ClientOptions {
            deadline: Duration::from_millis(300),
            ..ClientOptions::default()
        };
        let mut c = Client::connect(addr, opts).unwrap();
        match c.ping() {
            Err(ClientError::NoReply { refused: true, .. }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn invalid_requests_are_not_sent() {
        let mut c = Client::connect("127.0.0.1:9", quick()).unwrap();
        assert!(matches!(
            c.get(""),
            Err(ClientError::InvalidRequest(RejectReason::EmptyKey))
        ));
        let big = vec![0u8; MAX_DATAGRAM_SIZE];
        assert!(matches!(
            c.set("k", &big),
            Err(ClientError::InvalidRequest(RejectReason::Oversize))
        ));
        assert!(matches!(
            c.get("a\0"),
            Err(ClientError::InvalidRequest(RejectReason::KeyContainsNul))
        ));
    }

    #[test]
    fn server_lists_resolve() {
        let list = resolve_servers("127.0.0.1:9000, 127.0.0.1:9001,127.0.0.1:9000").unwrap();
        assert_eq!(list.len(), 2);
        assert!(resolve_servers("").is_err());
        assert!(resolve_servers("not an address").is_err());
    }

    /// A BATCH server with a cookie, that drops the first transmission of the item for
    /// key "lost" and answers "busy" Busy once: every item ends up answered, the retries
    /// reuse each item's sequence number, and only the unanswered items are resent.
    #[test]
    fn batches_take_the_cookie_and_resend_only_what_is_unanswered() {
        use crate::client::protocol::batch;
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(1500)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let server = thread::spawn(move || {
            let mut seen: Vec<(u64, u64, String)> = Vec::new();
            let (mut dropped, mut refused) = (false, false);
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                let Ok(b) = protocol::parse_batch(&buf[..n]) else {
                    continue;
                };
                let mut out = Vec::new();
                if b.to.cookie != 77 {
                    encode_response(&Response::cookie_required(&b.to, 77), &mut out);
                    sock.send_to(&out, from).unwrap();
                    continue;
                }
                let start = batch::begin_batch_response(&mut out, 77);
                for req in b.items() {
                    seen.push((req.client_id, req.request_seq, req.key.to_string()));
                    let status = match req.key {
                        "lost" if !dropped => {
                            dropped = true;
                            continue;
                        }
                        "busy" if !refused => {
                            refused = true;
                            Status::Busy
                        }
                        "absent" => Status::NotFound,
                        _ => Status::Ok,
                    };
                    let value = req.key.as_bytes();
                    let payload: &[u8] = if status == Status::Ok { value } else { b"" };
                    let resp = Response::reply(&req.addressing(), status, 77, payload);
                    batch::push_response_item(&mut out, start, &resp);
                }
                sock.send_to(&out, from).unwrap();
            }
            seen
        });
        let mut c = Client::connect(addr, quick()).unwrap();
        let got = c.get_many(&["a", "lost", "busy", "absent"]).unwrap();
        assert_eq!(
            got,
            [
                Some(b"a".to_vec()),
                Some(b"lost".to_vec()),
                Some(b"busy".to_vec()),
                None
            ]
        );
        drop(c);
        let seen = server.join().unwrap();
        let count = |k: &str| seen.iter().filter(|s| s.2 == k).count();
        assert_eq!((count("a"), count("absent")), (1, 1), "{seen:?}");
        assert!(count("lost") >= 2 && count("busy") >= 2, "{seen:?}");
        for k in ["lost", "busy"] {
            let mut ids: Vec<_> = seen
                .iter()
                .filter(|s| s.2 == k)
                .map(|s| (s.0, s.1))
                .collect();
            ids.dedup();
            assert_eq!(
                ids.len(),
                1,
                "retries of {k} reuse its id and sequence: {seen:?}"
            );
        }
    }
}
