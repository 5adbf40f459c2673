//! The RESP door: Redis clients over TCP on `--resp-port`, one glommio executor per shard
//! core, each accepting on the port (`SO_REUSEPORT`, so the kernel spreads connections).
//!
//! A door is one more window slot for the replication core: its writes go into its own
//! window, are sealed with the shards' into the same log entry, and are answered from the
//! door's completions, after the entry is durable and applied, exactly as UDP writes are.
//! Reads follow the same read decision as a shard's (lease, or a ReadIndex round).
//!
//! Each connection is one task. It parses every command its buffered bytes hold and
//! answers them in order: a run of writes goes into the window together and is answered
//! when it completes; a read or any other command waits until the connection's earlier
//! writes are answered, so a connection always reads its own writes. A connection waits
//! for its writes before it reads more from the socket, so one that sends faster than
//! windows commit is throttled by TCP, not buffered without bound; its input buffer holds
//! the command being parsed and at most [`READ_CHUNK`] bytes more.
//!
//! Writes of one command (MSET's pairs, DEL's keys) go into the window in one append, so
//! they are in one log entry and applied together. A RESP connection is a session of its
//! own for exactly-once (a client id the door draws), but RESP has no request ids, so a
//! command a client library retries on a new connection after a drop may be applied twice
//! (as with Redis).

use super::Shared;
use super::replication::Completion;
use super::window::{Door, ReplyTo, Window};
use crate::replica::conditional::Resolved;
use crate::replica::{ReadDecision, WriteOutcome, decide_read, window_is_full};
use crate::resp::{self, Args, Parsed};
use crate::storage::command::{
    self, CommandOp, ConditionalOp, KEY_SIZE_MAX, SET_GET, SET_NX, SET_XX, VALUE_SIZE_MAX,
};
use crate::storage::engine::Outcome;
use crate::storage::log::{LogReader, ValueRead};
use crate::storage::store::Lookup;
use crossbeam_channel::{Receiver, Sender};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Replies a connection holds at most before it writes them out (while it goes on
/// parsing a long pipeline).
pub const OUTPUT_FLUSH_BYTES: usize = 1 << 20;
/// Bytes read from a socket at a time: a connection buffers the command it is parsing
/// and at most this much more.
const READ_CHUNK: usize = 16 << 10;
/// How often a door looks for completed windows and finished read rounds.
const POLL: Duration = Duration::from_micros(200);

/// What one door needs.
pub struct DoorConfig {
    /// This door's window slot.
    pub slot: usize,
    /// The TCP port the door listens on (INFO reports it).
    pub port: u16,
    /// RESP sessions' client ids start here.
    pub client_id_base: u64,
    pub connections_max: usize,
    pub window_bytes_max: usize,
    pub window_bytes_hard_max: usize,
}

/// A listening socket for one door on `addr`: `SO_REUSEPORT`, so every door binds the
/// same port and the kernel spreads connections over them, and `SO_REUSEADDR`, so a
/// restart need not wait for old connections' TIME_WAIT.
pub fn listen(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Runs a door on the calling thread until the server stops: accepts on `listener` (from
/// [`listen`]) and serves each connection.
pub fn run(
    config: DoorConfig,
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    completions: Receiver<Completion>,
    log_reader: LogReader,
    flush_tx: Sender<()>,
    shard: Option<super::shard::Shard>,
) -> std::io::Result<()> {
    let client_id_base = config.client_id_base;
    let door = Rc::new(DoorState {
        config,
        shared,
        flush_tx,
        log_reader: RefCell::new(log_reader),
        conns: RefCell::new(HashMap::new()),
        next_conn: Cell::new(0),
        client_id_base,
    });
    let local = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .make()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    local.run(async move {
        use std::os::fd::{FromRawFd, IntoRawFd};
        // SAFETY: the descriptor is a bound, listening TCP socket this function owns (it
        // came out of `listener`, which gives it up); the glommio listener takes it over.
        let listener = unsafe { TcpListener::from_raw_fd(listener.into_raw_fd()) };
        let dispatcher = glommio::spawn_local(dispatch(door.clone(), completions));
        // `--shard-loop door`: this core's UDP shard is a task here too.
        let shard = shard.map(|s| glommio::spawn_local(s.run_in_executor()));
        // Accepting runs as a task of its own: an accept raced against a timer and dropped
        // could lose a connection the kernel had just handed over.
        let acceptor = {
            let door = door.clone();
            glommio::spawn_local(async move {
                loop {
                    let Ok(stream) = listener.accept().await else {
                        glommio::timer::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    // Replies go out as soon as they are written, not after a delayed ACK.
                    let _ = stream.set_nodelay(true);
                    if door.conns.borrow().len() >= door.config.connections_max {
                        let mut stream = stream;
                        let _ = stream
                            .write_all(b"-ERR max number of clients reached\r\n")
                            .await;
                        continue;
                    }
                    let id = door.next_conn.get();
                    door.next_conn.set(id + 1);
                    glommio::spawn_local(serve(door.clone(), stream, id)).detach();
                }
            })
        };
        while !door.shared.stop.load(Ordering::Acquire) {
            glommio::timer::sleep(Duration::from_millis(20)).await;
        }
        acceptor.cancel().await;
        // New writes are refused from now on; the replication core seals what the window
        // holds, and the dispatcher hands out the outcomes until it is done.
        door.shared.shards_idle.fetch_add(1, Ordering::AcqRel);
        dispatcher.await;
        // Let the connections write the replies of the last windows (bounded: a client
        // that stopped reading does not hold the server up).
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        while std::time::Instant::now() < deadline
            && door
                .conns
                .borrow()
                .values()
                .any(|c| c.pending.get() > 0 || !c.done.borrow().is_empty())
        {
            glommio::timer::sleep(POLL).await;
        }
        if let Some(shard) = shard {
            shard.await;
        }
        glommio::timer::sleep(Duration::from_millis(20)).await;
    });
    Ok(())
}

struct DoorState {
    config: DoorConfig,
    shared: Arc<Shared>,
    flush_tx: Sender<()>,
    log_reader: RefCell<LogReader>,
    conns: RefCell<HashMap<u64, Rc<ConnShared>>>,
    next_conn: Cell<u64>,
    client_id_base: u64,
}

/// What the dispatcher hands a connection: its writes' outcomes, by sequence number.
struct ConnShared {
    /// Writes in the window not yet answered.
    pending: Cell<usize>,
    done: RefCell<Vec<Done>>,
}

/// One write's fate: its request, its window's outcome, what applying did, and the answer
/// of a conditional write.
type Done = (u64, WriteOutcome, Option<Outcome>, Option<Resolved>);

/// Moves completed windows' outcomes to their connections, until the server has stopped
/// and every pending write was answered.
async fn dispatch(door: Rc<DoorState>, completions: Receiver<Completion>) {
    loop {
        let mut any = false;
        while let Ok(mut done) = completions.try_recv() {
            any = true;
            let conns = door.conns.borrow();
            let mut results = std::mem::take(&mut done.window.results)
                .into_iter()
                .peekable();
            for (i, reply) in done.window.replies.iter().enumerate() {
                let resolved = results.next_if(|r| r.0 == i).map(|r| r.1);
                if let Some(conn) = conns.get(&reply.client_id) {
                    conn.done.borrow_mut().push((
                        reply.request_seq,
                        done.outcome,
                        done.outcomes.get(i).copied(),
                        resolved,
                    ));
                    conn.pending.set(conn.pending.get().saturating_sub(1));
                }
            }
        }
        if !any {
            if door.shared.replication_done.load(Ordering::Acquire) && completions.is_empty() {
                return;
            }
            glommio::timer::sleep(POLL).await;
        }
    }
}

/// A command's writes waiting in the window, and how to answer them.
enum Awaited {
    /// SET, MSET: +OK.
    Ok,
    /// DEL: the number of keys that existed.
    Count,
    /// A conditional write: answered from what it was resolved to.
    Resolved(Shape),
    /// Refused before it reached the window: this reply, in its turn.
    Refused(Vec<u8>),
}

/// How a conditional write's answer is shaped.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// SET with NX/XX: +OK when written, else a nil; with GET, the previous value.
    Set { get: bool },
    /// SETNX: 1 when written, else 0.
    SetNx,
    /// GETSET, GETDEL: the previous value.
    Previous,
    /// INCR and its family: the new value.
    Counter,
}

/// One connection, until it closes, QUITs, sends what is not RESP, or the server stops.
async fn serve(door: Rc<DoorState>, mut stream: TcpStream, conn: u64) {
    let client_id = door.client_id_base.wrapping_add(conn);
    let shared_conn = Rc::new(ConnShared {
        pending: Cell::new(0),
        done: RefCell::new(Vec::new()),
    });
    door.conns
        .borrow_mut()
        .insert(client_id, shared_conn.clone());
    let mut c = Conn {
        door: door.clone(),
        shared: shared_conn,
        client_id,
        seq: 0,
        name: None,
        out: Vec::new(),
        batch: Window::default(),
        awaited: Vec::new(),
        awaited_at: Vec::new(),
    };
    let _ = c.run(&mut stream).await;
    door.conns.borrow_mut().remove(&client_id);
}

struct Conn {
    door: Rc<DoorState>,
    shared: Rc<ConnShared>,
    client_id: u64,
    seq: u64,
    name: Option<Vec<u8>>,
    out: Vec<u8>,
    /// Writes parsed but not yet in the window.
    batch: Window,
    /// Commands whose writes are in flight, in order: how to answer, and their
    /// sequence numbers.
    awaited: Vec<(Awaited, std::ops::Range<u64>)>,
    /// When the awaited writes were parsed, in the same order (for the latency histogram).
    awaited_at: Vec<std::time::Instant>,
}

/// What a command asks of the connection after it is handled.
enum Next {
    Go,
    Close,
}

impl Conn {
    async fn run(&mut self, stream: &mut TcpStream) -> std::io::Result<()> {
        let limits = resp::Limits::default();
        let mut input: Vec<u8> = Vec::with_capacity(16 << 10);
        let mut need = 1usize;
        let mut chunk = vec![0u8; READ_CHUNK];
        loop {
            // Read until a whole command may be there, or the buffer is full.
            while input.len() < need.max(1) || input.is_empty() {
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    return Ok(());
                }
                input.extend_from_slice(&chunk[..n]);
            }
            let mut used = 0;
            let mut close = false;
            loop {
                match resp::parse_command(&input[used..], &limits) {
                    Ok(Parsed::Done(args, n)) => {
                        used += n;
                        if args.is_empty() {
                            continue;
                        }
                        if matches!(self.handle(args).await, Next::Close) {
                            close = true;
                            break;
                        }
                        if self.out.len() > OUTPUT_FLUSH_BYTES {
                            self.finish_writes().await;
                            stream.write_all(&self.out).await?;
                            self.out.clear();
                        }
                    }
                    Ok(Parsed::Incomplete { need: more }) => {
                        need = more;
                        break;
                    }
                    Err(e) => {
                        self.finish_writes().await;
                        self.out.extend_from_slice(&e.reply());
                        close = true;
                        break;
                    }
                }
            }
            input.drain(..used);
            if used > 0 && input.is_empty() {
                need = 1;
            }
            self.finish_writes().await;
            if !self.out.is_empty() {
                stream.write_all(&self.out).await?;
                self.out.clear();
            }
            if close || self.door.shared.stop.load(Ordering::Acquire) {
                return Ok(());
            }
        }
    }

    /// Puts the parsed writes into the window, waits until all are answered, and appends
    /// their replies in order.
    async fn finish_writes(&mut self) {
        if !self.batch.is_empty() {
            let slot = &self.door.shared.windows[self.door.config.slot];
            let count = self.batch.replies.len();
            self.shared.pending.set(self.shared.pending.get() + count);
            let bytes = slot.append(&mut self.batch);
            if window_is_full(bytes, self.door.config.window_bytes_max) {
                let _ = self.door.flush_tx.try_send(());
            }
        }
        if self.awaited.is_empty() {
            return;
        }
        while self.shared.pending.get() > 0
            && !self.door.shared.replication_done.load(Ordering::Acquire)
        {
            glommio::timer::sleep(POLL).await;
        }
        type Fate = (WriteOutcome, Option<Outcome>, Option<Resolved>);
        let mut done: HashMap<u64, Fate> = self
            .shared
            .done
            .borrow_mut()
            .drain(..)
            .map(|(seq, w, o, r)| (seq, (w, o, r)))
            .collect();
        let hint = leader_words(&self.door.shared);
        let now = std::time::Instant::now();
        let parsed_at = std::mem::take(&mut self.awaited_at);
        for (at, (how, seqs)) in parsed_at.into_iter().zip(std::mem::take(&mut self.awaited)) {
            self.door
                .shared
                .stats
                .resp_write_seconds
                .observe(now.saturating_duration_since(at));
            let mut outcome = WriteOutcome::Applied;
            let mut count = 0i64;
            let mut resolved = None;
            for seq in seqs {
                match done.remove(&seq) {
                    Some((WriteOutcome::Applied, o, r)) => {
                        count += matches!(o, Some(Outcome::Done)) as i64;
                        resolved = r;
                    }
                    Some((other, _, _)) => outcome = other,
                    None => outcome = WriteOutcome::Failed,
                }
            }
            match (outcome, how) {
                (_, Awaited::Refused(text)) => self.out.extend_from_slice(&text),
                (WriteOutcome::Applied, Awaited::Ok) => resp::simple(&mut self.out, "OK"),
                (WriteOutcome::Applied, Awaited::Count) => resp::integer(&mut self.out, count),
                (WriteOutcome::Applied, Awaited::Resolved(shape)) => {
                    answer_resolved(&mut self.out, shape, resolved, &hint)
                }
                (other, _) => write_error(&mut self.out, other, &hint),
            }
        }
    }

    /// Queues the writes of one command (one append, so one log entry) after checking
    /// that this node leads and the window has room.
    fn write(&mut self, ops: &[(CommandOp, &[u8], &[u8])], how: Awaited) {
        let ops: Vec<(WriteOp, &[u8], &[u8])> = ops
            .iter()
            .map(|&(op, k, v)| (WriteOp::Log(op), k, v))
            .collect();
        self.write_ops(&ops, how);
    }

    /// Queues one conditional write, answered as `shape` says.
    fn write_conditional(
        &mut self,
        op: ConditionalOp,
        flags: u8,
        key: &[u8],
        value: &[u8],
        shape: Shape,
    ) {
        self.write_ops(
            &[(WriteOp::Conditional(op, flags), key, value)],
            Awaited::Resolved(shape),
        );
    }

    fn write_ops(&mut self, ops: &[(WriteOp, &[u8], &[u8])], how: Awaited) {
        let shared = &self.door.shared;
        let slot = &shared.windows[self.door.config.slot];
        let refusal = if shared.stop.load(Ordering::Acquire) {
            Some(WriteOutcome::Failed)
        } else if !shared.is_leader.load(Ordering::Acquire) {
            Some(WriteOutcome::NotLeader)
        } else if slot.bytes() + self.batch.commands.len() >= self.door.config.window_bytes_hard_max
        {
            Some(WriteOutcome::Busy)
        } else {
            None
        };
        if let Some(outcome) = refusal {
            if outcome == WriteOutcome::Busy {
                shared.stats.busy.fetch_add(1, Ordering::Relaxed);
                shared.slot_stats[self.door.config.slot]
                    .busy
                    .fetch_add(1, Ordering::Relaxed);
            }
            // Answered in order, after the writes before it.
            let hint = leader_words(shared);
            let mut text = Vec::new();
            write_error(&mut text, outcome, &hint);
            self.awaited_at.push(std::time::Instant::now());
            self.awaited.push((Awaited::Refused(text), 0..0));
            return;
        }
        let first = self.seq + 1;
        for &(op, key, value) in ops {
            self.seq += 1;
            match op {
                WriteOp::Log(op) => command::encode(
                    &mut self.batch.commands,
                    op,
                    self.client_id,
                    self.seq,
                    key,
                    value,
                ),
                WriteOp::Conditional(op, flags) => {
                    command::encode_conditional(
                        &mut self.batch.commands,
                        op,
                        flags,
                        self.client_id,
                        self.seq,
                        key,
                        value,
                    );
                    self.batch.conditional = true;
                }
            }
            self.batch.replies.push(ReplyTo {
                addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                door: Door::Resp,
                op: crate::client::protocol::Op::Set,
                client_id: self.client_id,
                request_seq: self.seq,
                validated: true,
                request_len: 0,
                received: std::time::Instant::now(),
            });
        }
        self.awaited_at.push(std::time::Instant::now());
        self.awaited.push((how, first..self.seq + 1));
    }
}

impl Conn {
    /// Handles one command: answers it now, or queues its writes.
    async fn handle(&mut self, args: Args<'_>) -> Next {
        self.door.shared.slot_stats[self.door.config.slot]
            .requests
            .fetch_add(1, Ordering::Relaxed);
        let name = args[0].to_ascii_uppercase();
        let argc = args.len();
        let arity = |ok: bool, out: &mut Vec<u8>| {
            if !ok {
                resp::error(out, &arity_message(&args[0]));
            }
            ok
        };
        // Writes first: consecutive ones share the wait for their window.
        match name.as_slice() {
            b"SET" => {
                if argc < 3 {
                    self.refuse_in_turn(&arity_message(&args[0]));
                    return Next::Go;
                }
                let flags = match set_flags(&args[3..]) {
                    Ok(flags) => flags,
                    Err(e) => {
                        self.refuse_in_turn(e);
                        return Next::Go;
                    }
                };
                if let Some(err) = check_key(&args[1]).or_else(|| check_value(&args[2])) {
                    self.refuse_in_turn(&err);
                    return Next::Go;
                }
                if flags == 0 {
                    self.write(&[(CommandOp::Set, &args[1], &args[2])], Awaited::Ok);
                } else {
                    let shape = Shape::Set {
                        get: flags & SET_GET != 0,
                    };
                    self.write_conditional(ConditionalOp::SetIf, flags, &args[1], &args[2], shape);
                }
                return Next::Go;
            }
            b"SETNX" | b"GETSET" => {
                if argc != 3 {
                    self.refuse_in_turn(&arity_message(&args[0]));
                    return Next::Go;
                }
                if let Some(err) = check_key(&args[1]).or_else(|| check_value(&args[2])) {
                    self.refuse_in_turn(&err);
                    return Next::Go;
                }
                let (flags, shape) = if name.as_slice() == b"SETNX" {
                    (SET_NX, Shape::SetNx)
                } else {
                    (SET_GET, Shape::Previous)
                };
                self.write_conditional(ConditionalOp::SetIf, flags, &args[1], &args[2], shape);
                return Next::Go;
            }
            b"GETDEL" => {
                if argc != 2 {
                    self.refuse_in_turn(&arity_message(&args[0]));
                    return Next::Go;
                }
                if let Some(err) = check_key(&args[1]) {
                    self.refuse_in_turn(&err);
                    return Next::Go;
                }
                self.write_conditional(ConditionalOp::GetDel, 0, &args[1], b"", Shape::Previous);
                return Next::Go;
            }
            b"INCR" | b"DECR" | b"INCRBY" | b"DECRBY" => {
                let by = matches!(name.as_slice(), b"INCRBY" | b"DECRBY");
                if argc != 2 + by as usize {
                    self.refuse_in_turn(&arity_message(&args[0]));
                    return Next::Go;
                }
                if let Some(err) = check_key(&args[1]) {
                    self.refuse_in_turn(&err);
                    return Next::Go;
                }
                let amount = if by {
                    crate::replica::conditional::parse_integer(&args[2])
                } else {
                    Some(1)
                };
                let delta = match (amount, name.starts_with(b"DECR")) {
                    (None, _) => {
                        self.refuse_in_turn("ERR value is not an integer or out of range");
                        return Next::Go;
                    }
                    (Some(n), false) => Some(n),
                    (Some(n), true) => n.checked_neg(),
                };
                let Some(delta) = delta else {
                    self.refuse_in_turn("ERR decrement would overflow");
                    return Next::Go;
                };
                self.write_conditional(
                    ConditionalOp::IncrBy,
                    0,
                    &args[1],
                    &delta.to_le_bytes(),
                    Shape::Counter,
                );
                return Next::Go;
            }
            b"MSET" => {
                if argc < 3 || argc.is_multiple_of(2) {
                    self.refuse_in_turn(&arity_message(&args[0]));
                    return Next::Go;
                }
                let pairs: Vec<(&[u8], &[u8])> = args[1..]
                    .chunks(2)
                    .map(|p| (&p[0][..], &p[1][..]))
                    .collect();
                if let Some(err) = pairs
                    .iter()
                    .find_map(|(k, v)| check_key(k).or_else(|| check_value(v)))
                {
                    self.refuse_in_turn(&err);
                    return Next::Go;
                }
                let ops: Vec<(CommandOp, &[u8], &[u8])> =
                    pairs.iter().map(|&(k, v)| (CommandOp::Set, k, v)).collect();
                self.write(&ops, Awaited::Ok);
                return Next::Go;
            }
            b"DEL" | b"UNLINK" => {
                if argc < 2 {
                    self.refuse_in_turn(&arity_message(&args[0]));
                    return Next::Go;
                }
                if let Some(err) = args[1..].iter().find_map(|k| check_key(k)) {
                    self.refuse_in_turn(&err);
                    return Next::Go;
                }
                let ops: Vec<(CommandOp, &[u8], &[u8])> = args[1..]
                    .iter()
                    .map(|k| (CommandOp::Delete, &k[..], &b""[..]))
                    .collect();
                self.write(&ops, Awaited::Count);
                return Next::Go;
            }
            _ => {}
        }
        // Anything else answers after the connection's earlier writes.
        self.finish_writes().await;
        let out = &mut self.out;
        match name.as_slice() {
            b"GET" => {
                if arity(argc == 2, out) {
                    match self.read_values(&args[1..2]).await {
                        Ok(mut values) => {
                            resp::bulk(&mut self.out, values.pop().flatten().as_deref())
                        }
                        Err(e) => resp::error(&mut self.out, &e),
                    }
                }
            }
            b"MGET" => {
                if arity(argc >= 2, out) {
                    match self.read_values(&args[1..]).await {
                        Ok(values) => {
                            resp::array_header(&mut self.out, Some(values.len()));
                            for v in values {
                                resp::bulk(&mut self.out, v.as_deref());
                            }
                        }
                        Err(e) => resp::error(&mut self.out, &e),
                    }
                }
            }
            b"EXISTS" => {
                if arity(argc >= 2, out) {
                    match self.read_values(&args[1..]).await {
                        Ok(values) => {
                            let n = values.iter().filter(|v| v.is_some()).count();
                            resp::integer(&mut self.out, n as i64)
                        }
                        Err(e) => resp::error(&mut self.out, &e),
                    }
                }
            }
            b"PING" => match argc {
                1 => resp::simple(out, "PONG"),
                2 => resp::bulk(out, Some(&args[1])),
                _ => {
                    arity(false, out);
                }
            },
            b"ECHO" => {
                if arity(argc == 2, out) {
                    resp::bulk(out, Some(&args[1]));
                }
            }
            b"DBSIZE" => {
                if arity(argc == 1, out) {
                    resp::integer(out, self.door.shared.map.entry_count() as i64);
                }
            }
            b"SELECT" => {
                if arity(argc == 2, out) {
                    if &args[1][..] == b"0" {
                        resp::simple(out, "OK");
                    } else {
                        resp::error(out, "ERR DB index is out of range");
                    }
                }
            }
            b"QUIT" => {
                resp::simple(out, "OK");
                return Next::Close;
            }
            b"RESET" => {
                self.name = None;
                resp::simple(out, "RESET");
            }
            b"HELLO" => {
                let version = args.get(1).map(|v| v.to_vec());
                match version.as_deref() {
                    None | Some(b"2") => {
                        let id = self.client_id.to_string();
                        resp::array_header(out, Some(14));
                        for (k, v) in [
                            ("server", "ocean-liner"),
                            ("version", env!("CARGO_PKG_VERSION")),
                        ] {
                            resp::bulk(out, Some(k.as_bytes()));
                            resp::bulk(out, Some(v.as_bytes()));
                        }
                        resp::bulk(out, Some(b"proto"));
                        resp::integer(out, 2);
                        resp::bulk(out, Some(b"id"));
                        resp::bulk(out, Some(id.as_bytes()));
                        resp::bulk(out, Some(b"mode"));
                        resp::bulk(out, Some(b"standalone"));
                        resp::bulk(out, Some(b"role"));
                        let role: &[u8] = if self.door.shared.is_leader.load(Ordering::Acquire) {
                            b"master"
                        } else {
                            b"replica"
                        };
                        resp::bulk(out, Some(role));
                        resp::bulk(out, Some(b"modules"));
                        resp::array_header(out, Some(0));
                    }
                    Some(_) => resp::error(out, "NOPROTO unsupported protocol version"),
                }
            }
            b"CLIENT" => {
                let sub = args
                    .get(1)
                    .map(|s| s.to_ascii_uppercase())
                    .unwrap_or_default();
                match (sub.as_slice(), argc) {
                    (b"SETNAME", 3) => {
                        self.name = Some(args[2].to_vec());
                        resp::simple(out, "OK");
                    }
                    (b"GETNAME", 2) => resp::bulk(out, self.name.as_deref()),
                    (b"ID", 2) => resp::integer(out, self.client_id as i64 & i64::MAX),
                    (b"SETINFO", 4) => resp::simple(out, "OK"),
                    _ => resp::error(
                        out,
                        &format!(
                            "ERR unknown subcommand '{}'. Try CLIENT HELP.",
                            String::from_utf8_lossy(args.get(1).map(|a| &a[..]).unwrap_or(b""))
                        ),
                    ),
                }
            }
            b"COMMAND" => {
                let rest: Vec<&[u8]> = args[1..].iter().map(|a| &a[..]).collect();
                super::resp_commands::answer(out, &rest);
            }
            b"INFO" => {
                let sections: Vec<Vec<u8>> =
                    args[1..].iter().map(|a| a.to_ascii_lowercase()).collect();
                let text = self.info(&sections);
                resp::bulk(&mut self.out, Some(text.as_bytes()));
            }
            _ => {
                let mut msg = format!(
                    "ERR unknown command '{}', with args beginning with: ",
                    String::from_utf8_lossy(&args[0])
                );
                for a in args.iter().skip(1).take(8) {
                    msg.push_str(&format!("'{}' ", String::from_utf8_lossy(a)));
                }
                resp::error(out, &msg);
            }
        }
        Next::Go
    }

    fn refuse_in_turn(&mut self, err: &str) {
        let mut text = Vec::new();
        resp::error(&mut text, err);
        if self.awaited.is_empty() && self.batch.is_empty() {
            self.out.extend_from_slice(&text);
        } else {
            self.awaited_at.push(std::time::Instant::now());
            self.awaited.push((Awaited::Refused(text), 0..0));
        }
    }

    /// The values of `keys`, read as a shard reads: once this node may serve reads.
    async fn read_values(
        &mut self,
        keys: &[std::borrow::Cow<'_, [u8]>],
    ) -> Result<Vec<Option<Vec<u8>>>, String> {
        let began = std::time::Instant::now();
        let read = self.read_values_now(keys).await;
        let shared = &self.door.shared;
        shared.stats.resp_read_seconds.observe(began.elapsed());
        shared.slot_stats[self.door.config.slot]
            .gets
            .fetch_add(keys.len() as u64, Ordering::Relaxed);
        read
    }

    async fn read_values_now(
        &mut self,
        keys: &[std::borrow::Cow<'_, [u8]>],
    ) -> Result<Vec<Option<Vec<u8>>>, String> {
        let shared = self.door.shared.clone();
        loop {
            let view = shared.read_view();
            let now = shared.started.elapsed();
            match decide_read(&view, now, 0, usize::MAX) {
                ReadDecision::Serve => break,
                ReadDecision::NotLeader => {
                    let hint = leader_words(&shared);
                    return Err(if hint.is_empty() {
                        "READONLY this node is not the leader and no leader is known yet; retry"
                            .into()
                    } else {
                        format!("READONLY this node is not the leader ({hint})")
                    });
                }
                ReadDecision::Busy => glommio::timer::sleep(POLL).await,
                ReadDecision::Wait { epoch } => {
                    shared.reads_waiting.store(true, Ordering::Release);
                    while shared.read_epoch_done.load(Ordering::Acquire) < epoch {
                        if !shared.is_leader.load(Ordering::Acquire) {
                            break;
                        }
                        shared.reads_waiting.store(true, Ordering::Release);
                        glommio::timer::sleep(POLL).await;
                    }
                    if shared.read_epoch_done.load(Ordering::Acquire) >= epoch {
                        break;
                    }
                }
            }
        }
        shared
            .stats
            .gets
            .fetch_add(keys.len() as u64, Ordering::Relaxed);
        let map = &shared.map;
        let mut values: Vec<Option<Vec<u8>>> = Vec::with_capacity(keys.len());
        let mut from_log: Vec<(usize, u64)> = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            match map.get(map.key_hash(key)) {
                Lookup::Missing => values.push(None),
                Lookup::Inline(v) => values.push(Some(v)),
                Lookup::InLog(offset) => {
                    values.push(None);
                    from_log.push((i, offset));
                }
            }
        }
        if !from_log.is_empty() {
            let wanted: Vec<(u64, &[u8])> = from_log
                .iter()
                .map(|&(i, off)| (off, &keys[i][..]))
                .collect();
            let read = self.door.log_reader.borrow_mut().read_values_at(&wanted);
            for (&(i, _), r) in from_log.iter().zip(read) {
                match r {
                    Ok(ValueRead::Value(v)) => values[i] = Some(v),
                    Ok(ValueRead::OtherKey) => {
                        shared.stats.hash_collisions.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        eprintln!("ocean-liner: reading a value from the log failed: {e}");
                        return Err("ERR reading the value from the log failed".into());
                    }
                }
            }
        }
        Ok(values)
    }

    /// INFO's text: the sections asked for (all of them for none, `all`, `default` or
    /// `everything`), in Redis's `field:value` lines; an unknown section is empty.
    fn info(&self, asked: &[Vec<u8>]) -> String {
        let s = &self.door.shared;
        let role = if s.is_leader.load(Ordering::Acquire) {
            "master"
        } else {
            "slave"
        };
        let stats = &s.stats;
        let sections: [(&str, String); 5] = [
            (
                "server",
                format!(
                    "redis_version:7.0.0\r\nocean_liner_version:{}\r\nredis_mode:standalone\r\n\
                     process_id:{}\r\ntcp_port:{}\r\nuptime_in_seconds:{}\r\n",
                    env!("CARGO_PKG_VERSION"),
                    std::process::id(),
                    self.door.config.port,
                    s.started.elapsed().as_secs(),
                ),
            ),
            (
                "clients",
                format!(
                    "connected_clients:{}\r\nmaxclients:{}\r\n",
                    self.door.conns.borrow().len(),
                    self.door.config.connections_max,
                ),
            ),
            (
                "stats",
                format!(
                    "ocean_liner_udp_requests:{}\r\nocean_liner_commands_applied:{}\r\n\
                     ocean_liner_gets:{}\r\nocean_liner_busy:{}\r\n",
                    stats.requests.load(Ordering::Relaxed),
                    stats.commands_applied.load(Ordering::Relaxed),
                    stats.gets.load(Ordering::Relaxed),
                    stats.busy.load(Ordering::Relaxed),
                ),
            ),
            ("replication", format!("role:{role}\r\n")),
            (
                "keyspace",
                format!("db0:keys={},expires=0,avg_ttl=0\r\n", s.map.entry_count()),
            ),
        ];
        let all = asked.is_empty()
            || asked
                .iter()
                .any(|a| matches!(a.as_slice(), b"all" | b"default" | b"everything"));
        let mut text = String::new();
        for (name, body) in sections {
            if all || asked.iter().any(|a| a.as_slice() == name.as_bytes()) {
                if !text.is_empty() {
                    text.push_str("\r\n");
                }
                let mut title = name.to_string();
                title[..1].make_ascii_uppercase();
                text.push_str(&format!("# {title}\r\n{body}"));
            }
        }
        text
    }
}

/// Redis's words for a command given the wrong number of arguments.
fn arity_message(name: &[u8]) -> String {
    format!(
        "ERR wrong number of arguments for '{}' command",
        String::from_utf8_lossy(name).to_lowercase()
    )
}

/// A write queued in a window: a log command, or a conditional one with its flags.
#[derive(Debug, Clone, Copy)]
enum WriteOp {
    Log(CommandOp),
    Conditional(ConditionalOp, u8),
}

/// SET's options as conditional flags (0: a plain SET), or Redis's error.
fn set_flags(options: &[std::borrow::Cow<'_, [u8]>]) -> Result<u8, &'static str> {
    let mut flags = 0;
    for option in options {
        match option.to_ascii_uppercase().as_slice() {
            b"NX" if flags & SET_XX == 0 => flags |= SET_NX,
            b"XX" if flags & SET_NX == 0 => flags |= SET_XX,
            b"GET" => flags |= SET_GET,
            // No key has a time to live, so there is none to keep.
            b"KEEPTTL" => {}
            b"EX" | b"PX" | b"EXAT" | b"PXAT" => {
                return Err(
                    "ERR SET EX, PX, EXAT and PXAT are not supported: keys never expire in Ocean Liner",
                );
            }
            _ => return Err("ERR syntax error"),
        }
    }
    Ok(flags)
}

/// The answer of a conditional write whose entry applied.
fn answer_resolved(out: &mut Vec<u8>, shape: Shape, resolved: Option<Resolved>, hint: &str) {
    match (shape, resolved) {
        (Shape::Set { get: false }, Some(Resolved::Set { written, .. })) => {
            if written {
                resp::simple(out, "OK")
            } else {
                resp::bulk(out, None)
            }
        }
        (Shape::Set { get: true } | Shape::Previous, Some(Resolved::Set { previous, .. })) => {
            resp::bulk(out, previous.as_deref())
        }
        (Shape::SetNx, Some(Resolved::Set { written, .. })) => resp::integer(out, written as i64),
        (Shape::Counter, Some(Resolved::Counter(n))) => resp::integer(out, n),
        (_, Some(Resolved::NotInteger)) => {
            resp::error(out, "ERR value is not an integer or out of range")
        }
        (_, Some(Resolved::Overflow)) => {
            resp::error(out, "ERR increment or decrement would overflow")
        }
        (_, Some(Resolved::Busy)) => write_error(out, WriteOutcome::Busy, hint),
        (_, Some(Resolved::ReadFailed)) => {
            resp::error(out, "ERR reading the value from the log failed")
        }
        // Applied without an answer: not resolved by this node's replication core.
        (_, _) => write_error(out, WriteOutcome::Failed, hint),
    }
}

/// Why `key` cannot be stored, if it cannot.
fn check_key(key: &[u8]) -> Option<String> {
    if key.is_empty() || key.len() > KEY_SIZE_MAX {
        return Some(format!("ERR keys must be 1 to {KEY_SIZE_MAX} bytes"));
    }
    if key.contains(&0) || std::str::from_utf8(key).is_err() {
        return Some("ERR keys must be UTF-8 without NUL bytes".into());
    }
    None
}

/// Why `value` cannot be stored, if it cannot.
fn check_value(value: &[u8]) -> Option<String> {
    (value.len() > VALUE_SIZE_MAX)
        .then(|| format!("ERR values may be at most {VALUE_SIZE_MAX} bytes"))
}

/// Where the leader is, for a READONLY answer: its RESP address, else its UDP address;
/// empty while no leader is known.
fn leader_words(shared: &Shared) -> String {
    if let Some(addr) = shared.leader_resp_addr() {
        return format!("the leader is {addr}");
    }
    match shared.leader_client_addr() {
        Some(addr) => format!("the leader's UDP address is {addr}; it has no RESP door"),
        None => String::new(),
    }
}

/// The error a write gets for an outcome other than applied.
fn write_error(out: &mut Vec<u8>, outcome: WriteOutcome, hint: &str) {
    let msg = match outcome {
        WriteOutcome::Applied => return resp::simple(out, "OK"),
        WriteOutcome::NotLeader if hint.is_empty() => {
            "READONLY You can't write against a read only replica (no leader is known yet; retry)"
                .to_string()
        }
        WriteOutcome::NotLeader => {
            format!("READONLY You can't write against a read only replica ({hint})")
        }
        WriteOutcome::Busy => "BUSY the server is busy; retry".to_string(),
        WriteOutcome::NoSpace => {
            "ERR no space left on the server's disk: writes are refused, reads work".to_string()
        }
        WriteOutcome::Failed => {
            "ERR the write was not applied (the server failed it, or is stopping)".to_string()
        }
    };
    resp::error(out, &msg);
}
