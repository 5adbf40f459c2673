//! TCP transport between the nodes of a cluster.
//!
//! Each node keeps one outbound connection to every other member (a sender thread per
//! peer, with reconnection and backoff; [`Transport::set_peers`] follows membership
//! changes) and accepts inbound connections from them (a reader thread per connection).
//! A connection opens with a hello naming the cluster and the sender; a node of another
//! cluster, a node id out of range, or any malformed frame closes that connection only.
//!
//! ```text
//! frame     u32 payload_len (≤ FRAME_SIZE_MAX), u8 kind, payload
//! kind 1    hello: 8 B magic b"OLPEER02", u64 cluster_id, u32 node_index,
//!           u64 last_log_index, u16 addr_len, client address as text ("ip:port"),
//!           u16 RESP port (0: none), u16 addr_len, peer address as text (both optional:
//!           older nodes end the hello before them)
//! kind 2    raft message (see crate::consensus::codec)
//! kind 3    ping: u64 sender's clock in ns      kind 4  pong: the ping's u64 echoed
//! kind 5    snapshot chunk (see crate::storage::snapshot)
//! kind 6    snapshot acknowledgement: u8 1 = staged whole, 0 = refused
//! kind 7    admin request, instead of a hello: UTF-8 text (≤ ADMIN_SIZE_MAX), e.g.
//!           "member list"; answered by one kind 8 frame, then the connection closes
//! kind 8    admin reply: UTF-8 text, first word OK, ERR or LEADER (then the leader's
//!           peer address: ask there)
//! kind 9    raft message, compressed (`--peer-compression`): u32 length of the kind-2
//!           payload it stands for (≤ MESSAGE_SIZE_MAX), then that payload as one LZ4
//!           block
//! ```
//!
//! Compression happens on the sender thread of each peer, never on the replication core,
//! and only for Raft frames of at least [`COMPRESS_MIN_BYTES`] that shrink by an eighth or
//! more. With `auto` a sender compresses while its link lags, as it last saw within
//! [`LAG_HOLD`]: when it is about to write a large frame, the connection still holds
//! [`UNSENT_LAG_BYTES`] or more that the peer has not acknowledged (the kernel's send
//! queue, `TIOCOUTQ`), or the frame waited in the sender's queue longer than
//! [`LINK_LAG`]. A node that receives kind 9 must know it: turn compression on only once
//! every member runs a build that has it.
//!
//! A snapshot travels on a connection of its own, opened by a thread that streams it: the
//! hello, every chunk, then the Raft message that names it. The receiving reader stages
//! the chunks as they come (checked, values written durably), hands the complete
//! snapshot and its message to the replication core, and answers with an
//! acknowledgement, on which the sender reports the transfer to Raft. Any bad chunk or a
//! dropped connection ends the transfer; the leader sends a new snapshot later.
//!
//! Pings are the heartbeat the adaptive election timeout samples RTT on: they are
//! answered by the reader thread at once, never behind a disk write.

use crate::consensus::codec;
use crate::consensus::membership::NODES_MAX;
use crate::ids::{LogIndex, NodeId};
use crate::storage::snapshot::{SnapshotSink, SnapshotSource, SnapshotTarget, StagedSnapshot};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use raft::eraftpb::Message;
use std::io::{self, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Largest frame payload.
pub const FRAME_SIZE_MAX: usize = codec::MESSAGE_SIZE_MAX + 64;
/// Frames queued per peer before new ones are dropped (Raft retransmits).
pub const QUEUE_FRAMES_MAX: usize = 4096;
const HELLO_MAGIC: [u8; 8] = *b"OLPEER02";
pub(crate) const KIND_HELLO: u8 = 1;
pub(crate) const KIND_RAFT: u8 = 2;
const KIND_PING: u8 = 3;
const KIND_PONG: u8 = 4;
pub(crate) const KIND_SNAPSHOT_CHUNK: u8 = 5;
const KIND_SNAPSHOT_ACK: u8 = 6;
pub(crate) const KIND_ADMIN: u8 = 7;
pub(crate) const KIND_ADMIN_REPLY: u8 = 8;
pub(crate) const KIND_RAFT_LZ4: u8 = 9;
/// Raft frames smaller than this go as they are (heartbeats, responses, small appends).
pub const COMPRESS_MIN_BYTES: usize = 16 << 10;
/// How long a frame may wait in a peer's queue before `auto` takes the link as lagging.
pub const LINK_LAG: Duration = Duration::from_millis(20);
/// Bytes a connection may hold unacknowledged before `auto` takes the link as lagging.
pub const UNSENT_LAG_BYTES: usize = 256 << 10;
/// How long `auto` keeps compressing after it last saw the link lag.
pub const LAG_HOLD: Duration = Duration::from_secs(30);
/// The most an LZ4 block can expand to per byte of it (a bound on what a claimed length
/// may ask to allocate before decompressing).
const LZ4_RATIO_MAX: usize = 255;

/// When a node compresses the Raft messages it sends to its peers (`--peer-compression`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PeerCompression {
    /// Never.
    Off,
    /// Large messages to a peer for 30 s after its link last lagged.
    Auto,
    /// Every large message.
    Always,
}

/// Bytes of Raft frames sent to peers, before and after compression (all peers).
#[derive(Debug, Default)]
pub struct WireCounters {
    /// Payload bytes of the Raft frames as encoded.
    pub raft_bytes: AtomicU64,
    /// Payload bytes of the same frames as sent.
    pub wire_bytes: AtomicU64,
    /// Frames sent compressed.
    pub compressed_frames: AtomicU64,
}

/// Longest admin request or reply.
pub const ADMIN_SIZE_MAX: usize = 64 << 10;
/// How long an admin connection waits for the replication core's answer (a membership
/// change answers once it is applied).
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a snapshot sender waits for the receiver's acknowledgement after its last
/// byte (the receiver writes the last values durably first).
const SNAPSHOT_ACK_TIMEOUT: Duration = Duration::from_secs(60);
const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// What the transport hands the replication core.
#[derive(Debug)]
pub enum Inbound {
    Raft(Message),
    Rtt {
        peer: NodeId,
        rtt: Duration,
    },
    PeerUnreachable(NodeId),
    /// A peer (re)connected: its client address and how far its log reaches now (a node
    /// that lost its data reports less than the leader believes it holds).
    PeerHello {
        peer: NodeId,
        addr: SocketAddr,
        /// Its RESP door's port (0: none).
        resp_port: u16,
        /// Where it takes peer connections (`None` from nodes that do not say).
        peer_addr: Option<SocketAddr>,
        last_index: LogIndex,
    },
    /// An operator's request (see the module docs): the answer goes to `reply`.
    Admin {
        request: String,
        reply: Sender<String>,
    },
    /// A snapshot received whole and staged, with the Raft message that names it.
    Snapshot {
        peer: NodeId,
        msg: Box<Message>,
        staged: Box<StagedSnapshot>,
    },
    /// How a snapshot this node streamed to `peer` fared, and the bytes it sent.
    SnapshotSent {
        peer: NodeId,
        delivered: bool,
        bytes: u64,
    },
}

enum Frame {
    /// An encoded Raft message and when it was queued.
    Raft(Vec<u8>, Instant),
    Ping(u64),
    Pong(u64),
}

/// Settings of one node's transport.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    pub node_index: usize,
    /// Where this node takes peer connections.
    pub listen_addr: SocketAddr,
    /// The other members to connect to at start.
    pub peers: Vec<(NodeId, SocketAddr)>,
    pub cluster_id: u64,
    pub client_addr: SocketAddr,
    /// This node's RESP port (0: no door), announced in each hello.
    pub resp_port: u16,
    /// This node's last log index, announced in each hello.
    pub last_index: Arc<std::sync::atomic::AtomicU64>,
    /// Where received snapshots are staged (set once the node's state is open).
    pub snapshot_target: Option<SnapshotTarget>,
    /// The rate snapshots are streamed at, at most.
    pub snapshot_bytes_per_s: u64,
    pub compression: PeerCompression,
    pub wire: Arc<WireCounters>,
}

/// The outbound link to each peer, by node index.
#[derive(Default)]
struct Links {
    senders: Vec<Option<(SocketAddr, Sender<Frame>)>>,
}

impl Links {
    fn sender(&self, peer: NodeId) -> Option<&Sender<Frame>> {
        self.senders.get(peer.index())?.as_ref().map(|(_, tx)| tx)
    }

    fn addr(&self, peer: NodeId) -> Option<SocketAddr> {
        self.senders
            .get(peer.index())?
            .as_ref()
            .map(|(addr, _)| *addr)
    }
}

/// Handle used by the replication core to send.
pub struct Transport {
    links: Arc<std::sync::Mutex<Links>>,
    epoch: Instant,
    config: TransportConfig,
    inbound: Sender<Inbound>,
    stop: Arc<AtomicBool>,
}

impl Transport {
    /// Binds the peer port and starts the sender and listener threads.
    pub fn start(
        config: TransportConfig,
        inbound: Sender<Inbound>,
        stop: Arc<AtomicBool>,
    ) -> anyhow::Result<Transport> {
        let listener = TcpListener::bind(config.listen_addr).map_err(|e| {
            anyhow::anyhow!(
                "cannot listen for peers on TCP {}: {e} (is another node using it? check --peers and --node-id)",
                config.listen_addr
            )
        })?;
        let epoch = Instant::now();
        let links = Arc::new(std::sync::Mutex::new(Links {
            senders: vec![None; NODES_MAX],
        }));
        let readers_outbound = links.clone();
        let transport = Transport {
            links,
            epoch,
            config: config.clone(),
            inbound: inbound.clone(),
            stop: stop.clone(),
        };
        transport.set_peers(&config.peers);
        std::thread::Builder::new()
            .name("peer-listen".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let Ok(conn) = conn else { continue };
                    let config = config.clone();
                    let inbound = inbound.clone();
                    let links = readers_outbound.clone();
                    let _ = std::thread::Builder::new()
                        .name("peer-in".into())
                        .spawn(move || {
                            if let Err(e) = reader_loop(conn, &config, &inbound, &links, epoch)
                                && e.kind() != io::ErrorKind::UnexpectedEof
                            {
                                eprintln!("ocean-liner: closed a peer connection: {e}");
                            }
                        });
                }
            })?;
        Ok(transport)
    }

    /// Makes `peers` (this node left out) the ones this node keeps links to: a new peer,
    /// or one at a new address, gets a sender thread; a peer not listed any more loses its
    /// (the thread ends once its queue is dropped).
    pub fn set_peers(&self, peers: &[(NodeId, SocketAddr)]) {
        let mut links = self.links.lock().unwrap();
        for index in 0..links.senders.len() {
            let wanted = peers
                .iter()
                .find(|(id, _)| id.index() == index && index != self.config.node_index)
                .map(|(_, addr)| *addr);
            let current = links.senders[index].as_ref().map(|(addr, _)| *addr);
            if wanted == current {
                continue;
            }
            links.senders[index] = wanted.and_then(|addr| {
                let (tx, rx) = crossbeam_channel::bounded(QUEUE_FRAMES_MAX);
                let peer = NodeId::from_index(index);
                let (config, inbound, stop) =
                    (self.config.clone(), self.inbound.clone(), self.stop.clone());
                std::thread::Builder::new()
                    .name(format!("peer-out-{index}"))
                    .spawn(move || sender_loop(peer, addr, rx, &config, inbound, stop))
                    .ok()?;
                Some((addr, tx))
            });
        }
    }

    /// Adds a link to `peer` at `addr` unless there is one.
    pub fn connect(&self, peer: NodeId, addr: SocketAddr) {
        let mut now: Vec<(NodeId, SocketAddr)> = {
            let links = self.links.lock().unwrap();
            if links.sender(peer).is_some() {
                return;
            }
            links
                .senders
                .iter()
                .enumerate()
                .filter_map(|(i, l)| l.as_ref().map(|(a, _)| (NodeId::from_index(i), *a)))
                .collect()
        };
        now.push((peer, addr));
        self.set_peers(&now);
    }

    /// Streams a snapshot to the peer its message is for, on a connection and a thread of
    /// its own; the outcome comes back as [`Inbound::SnapshotSent`].
    pub fn send_snapshot(&self, msg: Message, source: SnapshotSource) {
        let target = NodeId::from_raft_id(msg.to)
            .and_then(|p| Some((p, self.links.lock().unwrap().addr(p)?)));
        let Some((peer, addr)) = target else {
            let _ = self.inbound.send(Inbound::SnapshotSent {
                peer: NodeId::from_raft_id(msg.to).unwrap_or(NodeId::from_index(0)),
                delivered: false,
                bytes: 0,
            });
            return;
        };
        let config = self.config.clone();
        let inbound = self.inbound.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("snapshot-out-{}", peer.index()))
            .spawn(move || {
                super::host::run_in_background();
                let mut source = source;
                let result = stream_snapshot(&config, addr, &msg, &mut source);
                if let Err(e) = &result {
                    eprintln!("ocean-liner: sending a snapshot to node {peer} failed: {e}");
                }
                let _ = inbound.send(Inbound::SnapshotSent {
                    peer,
                    delivered: result.is_ok(),
                    bytes: source.bytes(),
                });
            });
        if spawned.is_err() {
            let _ = self.inbound.send(Inbound::SnapshotSent {
                peer,
                delivered: false,
                bytes: 0,
            });
        }
    }

    /// Queues a Raft message for its destination (dropped if the queue is full or the
    /// destination is unknown: Raft retransmits).
    pub fn send(&self, msg: &Message) {
        let Some(to) = NodeId::from_raft_id(msg.to) else {
            return;
        };
        let Some(tx) = self.links.lock().unwrap().sender(to).cloned() else {
            return;
        };
        let mut buf =
            Vec::with_capacity(128 + msg.entries.iter().map(|e| e.data.len()).sum::<usize>());
        codec::encode(msg, &mut buf);
        let _ = tx.try_send(Frame::Raft(buf, Instant::now()));
    }

    /// Sends a ping to every peer.
    pub fn ping_all(&self) {
        let now = self.epoch.elapsed().as_nanos() as u64;
        let links = self.links.lock().unwrap();
        for (_, tx) in links.senders.iter().flatten() {
            match tx.try_send(Frame::Ping(now)) {
                Ok(()) | Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {}
            }
        }
    }
}

fn write_frame(w: &mut impl Write, kind: u8, payload: &[u8]) -> io::Result<()> {
    w.write_all(&(payload.len() as u32).to_le_bytes())?;
    w.write_all(&[kind])?;
    w.write_all(payload)
}

pub(crate) fn read_frame(r: &mut impl Read, buf: &mut Vec<u8>, limit: usize) -> io::Result<u8> {
    let mut len = [0u8; 4];
    let mut kind = [0u8; 1];
    r.read_exact(&mut len)?;
    r.read_exact(&mut kind)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes is over the limit"),
        ));
    }
    // Memory follows the bytes that arrive, not the length a peer claims.
    buf.clear();
    r.take(len as u64).read_to_end(buf)?;
    if buf.len() < len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("frame of {len} bytes cut at {}", buf.len()),
        ));
    }
    Ok(kind[0])
}

/// The first frame on every peer connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub cluster_id: u64,
    pub node_index: u32,
    pub last_index: u64,
    /// The sender's client address.
    pub client_addr: SocketAddr,
    /// The sender's RESP port (0: no door).
    pub resp_port: u16,
    /// Where the sender takes peer connections (`None` from older nodes).
    pub peer_addr: Option<SocketAddr>,
}

/// Bytes of a hello before its address: magic, cluster id, node index, last index,
/// address length.
const HELLO_FIXED_SIZE: usize = 8 + 8 + 4 + 8 + 2;
/// Longest hello payload accepted.
pub(crate) const HELLO_SIZE_MAX: usize = 1024;

impl Hello {
    pub fn encode(&self) -> Vec<u8> {
        let addr = self.client_addr.to_string();
        let mut out = Vec::with_capacity(HELLO_FIXED_SIZE + addr.len());
        out.extend_from_slice(&HELLO_MAGIC);
        out.extend_from_slice(&self.cluster_id.to_le_bytes());
        out.extend_from_slice(&self.node_index.to_le_bytes());
        out.extend_from_slice(&self.last_index.to_le_bytes());
        out.extend_from_slice(&(addr.len() as u16).to_le_bytes());
        out.extend_from_slice(addr.as_bytes());
        out.extend_from_slice(&self.resp_port.to_le_bytes());
        if let Some(peer) = self.peer_addr {
            let peer = peer.to_string();
            out.extend_from_slice(&(peer.len() as u16).to_le_bytes());
            out.extend_from_slice(peer.as_bytes());
        }
        out
    }

    /// Decodes a hello payload; every field is bounds-checked and the whole payload must
    /// be used.
    pub fn decode(payload: &[u8]) -> Result<Hello, String> {
        let mut rest = payload;
        let mut take = |n: usize, what: &str| -> Result<&[u8], String> {
            if rest.len() < n {
                return Err(format!(
                    "hello of {} bytes ends inside its {what}",
                    payload.len()
                ));
            }
            let (field, after) = rest.split_at(n);
            rest = after;
            Ok(field)
        };
        let u64_of = |b: &[u8]| b.first_chunk::<8>().map(|c| u64::from_le_bytes(*c));
        if take(8, "magic")? != HELLO_MAGIC {
            return Err("peer did not open with a hello".into());
        }
        let cluster_id = u64_of(take(8, "cluster id")?).unwrap_or_default();
        let node_index = take(4, "node index")?
            .first_chunk::<4>()
            .map(|c| u32::from_le_bytes(*c))
            .unwrap_or_default();
        let last_index = u64_of(take(8, "last index")?).unwrap_or_default();
        let addr_len = take(2, "address length")?
            .first_chunk::<2>()
            .map(|c| u16::from_le_bytes(*c))
            .unwrap_or_default() as usize;
        let client_addr = std::str::from_utf8(take(addr_len, "client address")?)
            .ok()
            .and_then(|s| s.parse::<SocketAddr>().ok())
            .ok_or_else(|| "bad client address in hello".to_string())?;
        // The RESP port and the peer address came later: a hello without the port says
        // the sender has no door, one without the address does not say where it listens.
        let (resp_port, peer_addr) = match rest {
            [] => (0, None),
            [lo, hi] => (u16::from_le_bytes([*lo, *hi]), None),
            [lo, hi, len_lo, len_hi, text @ ..]
                if text.len() == u16::from_le_bytes([*len_lo, *len_hi]) as usize =>
            {
                let peer = std::str::from_utf8(text)
                    .ok()
                    .and_then(|s| s.parse::<SocketAddr>().ok())
                    .ok_or_else(|| "bad peer address in hello".to_string())?;
                (u16::from_le_bytes([*lo, *hi]), Some(peer))
            }
            _ => {
                return Err(format!(
                    "{} bytes after a hello's address do not parse",
                    rest.len()
                ));
            }
        };
        Ok(Hello {
            cluster_id,
            node_index,
            last_index,
            client_addr,
            resp_port,
            peer_addr,
        })
    }
}

fn hello(config: &TransportConfig) -> Vec<u8> {
    Hello {
        cluster_id: config.cluster_id,
        node_index: config.node_index as u32,
        last_index: config.last_index.load(Ordering::Acquire),
        client_addr: config.client_addr,
        resp_port: config.resp_port,
        peer_addr: Some(config.listen_addr),
    }
    .encode()
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn sender_loop(
    peer: NodeId,
    addr: SocketAddr,
    rx: Receiver<Frame>,
    config: &TransportConfig,
    inbound: Sender<Inbound>,
    stop: Arc<AtomicBool>,
) {
    let mut backoff = BACKOFF_MIN;
    let mut packer = Packer::new(config.compression, config.wire.clone());
    while !stop.load(Ordering::Relaxed) {
        let stream = match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            Ok(s) => s,
            Err(_) => {
                let _ = inbound.try_send(Inbound::PeerUnreachable(peer));
                // Drop what queued up for a dead peer; Raft will send afresh.
                loop {
                    match rx.try_recv() {
                        Ok(_) => {}
                        Err(crossbeam_channel::TryRecvError::Empty) => break,
                        // Not a peer any more.
                        Err(crossbeam_channel::TryRecvError::Disconnected) => return,
                    }
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        backoff = BACKOFF_MIN;
        let _ = stream.set_nodelay(true);
        let mut w = BufWriter::with_capacity(256 << 10, stream);
        if write_frame(&mut w, KIND_HELLO, &hello(config))
            .and_then(|_| w.flush())
            .is_err()
        {
            continue;
        }
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let frame = match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(f) => f,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            packer.unsent = w.buffer().len() + unsent_bytes(w.get_ref());
            let mut result = packer.write(&mut w, &frame);
            // Coalesce whatever else is queued into the same flush.
            while result.is_ok() {
                match rx.try_recv() {
                    Ok(f) => result = packer.write(&mut w, &f),
                    Err(_) => break,
                }
            }
            if result.and_then(|_| w.flush()).is_err() {
                let _ = inbound.try_send(Inbound::PeerUnreachable(peer));
                break;
            }
        }
    }
}

/// Connects to `peer`, sends the hello, every chunk of `source` and then `msg`, and
/// waits for the receiver's acknowledgement.
fn stream_snapshot(
    config: &TransportConfig,
    addr: SocketAddr,
    msg: &Message,
    source: &mut SnapshotSource,
) -> io::Result<()> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    let _ = stream.set_nodelay(true);
    let mut reader = io::BufReader::new(stream.try_clone()?);
    let mut w = BufWriter::with_capacity(1 << 20, stream);
    write_frame(&mut w, KIND_HELLO, &hello(config))?;
    let mut pacer = super::Pacer::new(config.snapshot_bytes_per_s);
    while let Some(chunk) = source
        .next_chunk()
        .map_err(|e| io::Error::other(e.to_string()))?
    {
        write_frame(&mut w, KIND_SNAPSHOT_CHUNK, &chunk)?;
        pacer.pace(chunk.len());
    }
    let mut buf = Vec::new();
    codec::encode(msg, &mut buf);
    write_frame(&mut w, KIND_RAFT, &buf)?;
    w.flush()?;
    reader
        .get_ref()
        .set_read_timeout(Some(SNAPSHOT_ACK_TIMEOUT))?;
    let mut ack = Vec::new();
    match read_frame(&mut reader, &mut ack, 16)? {
        KIND_SNAPSHOT_ACK if ack == [1] => Ok(()),
        _ => Err(invalid("the peer refused the snapshot".into())),
    }
}

/// Writes a peer's frames, compressing large Raft frames as `--peer-compression` says.
struct Packer {
    mode: PeerCompression,
    counters: Arc<WireCounters>,
    /// `auto` compresses until then (the link last lagged `LAG_HOLD` before it).
    lagging_until: Option<Instant>,
    /// Bytes the connection held unacknowledged when last looked at.
    unsent: usize,
    scratch: Vec<u8>,
}

impl Packer {
    fn new(mode: PeerCompression, counters: Arc<WireCounters>) -> Packer {
        Packer {
            mode,
            counters,
            lagging_until: None,
            unsent: 0,
            scratch: Vec::new(),
        }
    }

    fn write(&mut self, w: &mut impl Write, frame: &Frame) -> io::Result<()> {
        let (bytes, queued) = match frame {
            Frame::Raft(bytes, queued) => (bytes, *queued),
            Frame::Ping(t) => return write_frame(w, KIND_PING, &t.to_le_bytes()),
            Frame::Pong(t) => return write_frame(w, KIND_PONG, &t.to_le_bytes()),
        };
        self.counters
            .raft_bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        let (kind, payload) = if self.compress(bytes.len(), queued) && self.pack(bytes) {
            self.counters
                .compressed_frames
                .fetch_add(1, Ordering::Relaxed);
            (KIND_RAFT_LZ4, &self.scratch)
        } else {
            (KIND_RAFT, bytes)
        };
        self.counters
            .wire_bytes
            .fetch_add(payload.len() as u64, Ordering::Relaxed);
        write_frame(w, kind, payload)
    }

    /// Whether a Raft frame of `len` bytes queued at `queued` is to be compressed.
    fn compress(&mut self, len: usize, queued: Instant) -> bool {
        if len < COMPRESS_MIN_BYTES {
            return false;
        }
        match self.mode {
            PeerCompression::Off => false,
            PeerCompression::Always => true,
            PeerCompression::Auto => {
                let now = Instant::now();
                if now.saturating_duration_since(queued) > LINK_LAG
                    || self.unsent >= UNSENT_LAG_BYTES
                {
                    self.lagging_until = Some(now + LAG_HOLD);
                }
                self.lagging_until.is_some_and(|until| now < until)
            }
        }
    }

    /// Compresses `bytes` into a kind-9 payload in `scratch`; false (send them as they
    /// are) unless that saves an eighth.
    fn pack(&mut self, bytes: &[u8]) -> bool {
        let bound = lz4_flex::block::get_maximum_output_size(bytes.len());
        self.scratch.clear();
        self.scratch.resize(4 + bound, 0);
        self.scratch[..4].copy_from_slice(&(bytes.len() as u32).to_le_bytes());
        let Ok(n) = lz4_flex::block::compress_into(bytes, &mut self.scratch[4..]) else {
            return false;
        };
        self.scratch.truncate(4 + n);
        self.scratch.len() <= bytes.len() - bytes.len() / 8
    }
}

/// Bytes written to `stream` that its peer has not acknowledged yet (the kernel's send
/// queue), or 0 where the kernel does not say.
fn unsent_bytes(stream: &TcpStream) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ stores one c_int through the pointer, which points at `n`; the
    // descriptor is the stream's own, open while it is borrowed.
    let r = unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    if r == 0 { n.max(0) as usize } else { 0 }
}

/// The Raft message a kind-9 payload stands for, decompressed into `out`; refused (the
/// connection closes) if its claimed length is over the limit or more than LZ4 could
/// expand the block to, or if the block is malformed or decompresses to another length.
fn unpack<'a>(payload: &[u8], out: &'a mut Vec<u8>) -> io::Result<&'a [u8]> {
    let Some((len, block)) = payload.split_first_chunk::<4>() else {
        return Err(invalid("a compressed frame without its length".into()));
    };
    let len = u32::from_le_bytes(*len) as usize;
    if len > codec::MESSAGE_SIZE_MAX || len > block.len().saturating_mul(LZ4_RATIO_MAX) {
        return Err(invalid(format!(
            "a compressed frame claims {len} bytes from a block of {}",
            block.len()
        )));
    }
    out.clear();
    out.resize(len, 0);
    match lz4_flex::block::decompress_into(block, out) {
        Ok(n) if n == len => Ok(&out[..]),
        Ok(n) => Err(invalid(format!(
            "a compressed frame claims {len} bytes and holds {n}"
        ))),
        Err(e) => Err(invalid(format!("a compressed frame is malformed: {e}"))),
    }
}

/// The staged snapshot a snapshot message names, if it arrived whole before it.
fn finish_snapshot(sink: Option<SnapshotSink>, msg: &Message) -> Result<StagedSnapshot, String> {
    let named = crate::storage::snapshot::decode_descriptor(&msg.get_snapshot().data);
    let sink = sink.ok_or("a snapshot message without its chunks")?;
    if named != Some(sink.id()) {
        return Err("a snapshot message names another snapshot than its chunks".into());
    }
    sink.finish().map_err(|e| e.to_string())
}

fn reader_loop(
    conn: TcpStream,
    config: &TransportConfig,
    inbound: &Sender<Inbound>,
    links: &std::sync::Mutex<Links>,
    epoch: Instant,
) -> io::Result<()> {
    let _ = conn.set_nodelay(true);
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut ack_writer = conn.try_clone()?;
    let mut r = io::BufReader::with_capacity(256 << 10, conn);
    let mut buf = Vec::new();
    let mut sink: Option<SnapshotSink> = None;
    match read_frame(&mut r, &mut buf, HELLO_SIZE_MAX.max(ADMIN_SIZE_MAX))? {
        KIND_HELLO if buf.len() <= HELLO_SIZE_MAX => {}
        KIND_ADMIN => return answer_admin(&buf, inbound, &mut ack_writer),
        _ => return Err(invalid("peer did not open with a hello".into())),
    }
    let hello = Hello::decode(&buf).map_err(invalid)?;
    let cluster_id = hello.cluster_id;
    if cluster_id != config.cluster_id {
        return Err(invalid(format!(
            "refused a node of another cluster (cluster id {cluster_id:#x}, ours {:#x})",
            config.cluster_id
        )));
    }
    let peer = NodeId::from_index(hello.node_index as usize);
    // Any node of this cluster may connect (a node being added, one the membership this
    // node applied does not name yet); raft-rs ignores members it does not know.
    if peer.index() >= NODES_MAX || peer.index() == config.node_index {
        return Err(invalid(format!("refused a hello from node index {peer}")));
    }
    let _ = inbound.send(Inbound::PeerHello {
        peer,
        addr: hello.client_addr,
        resp_port: hello.resp_port,
        peer_addr: hello.peer_addr,
        last_index: LogIndex(hello.last_index),
    });
    r.get_ref().set_read_timeout(None)?;
    let mut inflated = Vec::new();
    loop {
        let kind = read_frame(&mut r, &mut buf, FRAME_SIZE_MAX)?;
        match kind {
            KIND_RAFT | KIND_RAFT_LZ4 => {
                let payload = if kind == KIND_RAFT_LZ4 {
                    unpack(&buf, &mut inflated)?
                } else {
                    &buf[..]
                };
                let msg = codec::decode(payload).map_err(|e| invalid(e.to_string()))?;
                let me = NodeId::from_index(config.node_index);
                if msg.from != peer.raft_id() || msg.to != me.raft_id() {
                    return Err(invalid(format!(
                        "message from {} to {} on node {peer}'s connection",
                        msg.from, msg.to
                    )));
                }
                if msg.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot {
                    let staged = finish_snapshot(sink.take(), &msg);
                    let ok = staged.is_ok();
                    let _ = write_frame(&mut ack_writer, KIND_SNAPSHOT_ACK, &[ok as u8]);
                    let staged = staged.map_err(invalid)?;
                    if inbound
                        .send(Inbound::Snapshot {
                            peer,
                            msg: Box::new(msg),
                            staged: Box::new(staged),
                        })
                        .is_err()
                    {
                        return Ok(());
                    }
                    continue;
                }
                if inbound.send(Inbound::Raft(msg)).is_err() {
                    return Ok(());
                }
            }
            KIND_SNAPSHOT_CHUNK => {
                let Some(target) = &config.snapshot_target else {
                    return Err(invalid("no snapshot can be received yet".into()));
                };
                let sink = sink.get_or_insert_with(|| SnapshotSink::new(target.clone()));
                if let Err(e) = sink.accept(&buf) {
                    let _ = write_frame(&mut ack_writer, KIND_SNAPSHOT_ACK, &[0]);
                    return Err(invalid(format!("refused a snapshot from node {peer}: {e}")));
                }
            }
            KIND_PING if buf.len() == 8 => {
                let t = buf.first_chunk::<8>().map_or(0, |c| u64::from_le_bytes(*c));
                if let Some(tx) = links.lock().unwrap().sender(peer) {
                    let _ = tx.try_send(Frame::Pong(t));
                }
            }
            KIND_PONG if buf.len() == 8 => {
                let Some(sent) = buf.first_chunk::<8>().map(|c| u64::from_le_bytes(*c)) else {
                    continue;
                };
                let now = epoch.elapsed().as_nanos() as u64;
                if let Some(rtt) = now.checked_sub(sent) {
                    let _ = inbound.try_send(Inbound::Rtt {
                        peer,
                        rtt: Duration::from_nanos(rtt),
                    });
                }
            }
            other => {
                return Err(invalid(format!(
                    "unknown frame kind {other} (len {})",
                    buf.len()
                )));
            }
        }
    }
}

/// Hands an admin request to the replication core and writes its answer back.
fn answer_admin(request: &[u8], inbound: &Sender<Inbound>, w: &mut TcpStream) -> io::Result<()> {
    let answer = match std::str::from_utf8(request) {
        Err(_) => "ERR the request is not UTF-8".to_string(),
        Ok(request) => {
            let (reply, answer) = crossbeam_channel::bounded(1);
            let sent = inbound.send(Inbound::Admin {
                request: request.to_string(),
                reply,
            });
            match sent.ok().map(|_| answer.recv_timeout(ADMIN_TIMEOUT)) {
                Some(Ok(a)) => a,
                Some(Err(_)) => "ERR no answer in time (the change may still be made)".into(),
                None => "ERR the node is stopping".into(),
            }
        }
    };
    let mut answer = answer.into_bytes();
    answer.truncate(ADMIN_SIZE_MAX);
    write_frame(w, KIND_ADMIN_REPLY, &answer)?;
    w.flush()
}

/// Sends one admin request to the node at `addr` and returns its answer.
pub fn admin_request(addr: SocketAddr, request: &str, timeout: Duration) -> io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout.min(Duration::from_secs(5)))?;
    stream.set_read_timeout(Some(timeout))?;
    write_frame(&mut stream, KIND_ADMIN, request.as_bytes())?;
    stream.flush()?;
    let mut buf = Vec::new();
    match read_frame(&mut stream, &mut buf, ADMIN_SIZE_MAX)? {
        KIND_ADMIN_REPLY => {
            String::from_utf8(buf).map_err(|_| invalid("the answer is not UTF-8".into()))
        }
        other => Err(invalid(format!("answered with frame kind {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Hello {
        Hello {
            cluster_id: 0x0123_4567_89AB_CDEF,
            node_index: 2,
            last_index: 99,
            client_addr: "127.0.0.1:9002".parse().unwrap(),
            resp_port: 6380,
            peer_addr: Some("127.0.0.1:8002".parse().unwrap()),
        }
    }

    /// Writes `frame` through `packer` and reads it back: the frame's kind and the Raft
    /// payload it stands for.
    fn through(packer: &mut Packer, frame: &Frame) -> (u8, Vec<u8>) {
        let mut wire = Vec::new();
        packer.write(&mut wire, frame).unwrap();
        let mut buf = Vec::new();
        let kind = read_frame(&mut &wire[..], &mut buf, FRAME_SIZE_MAX).unwrap();
        let mut inflated = Vec::new();
        match kind {
            KIND_RAFT_LZ4 => (kind, unpack(&buf, &mut inflated).unwrap().to_vec()),
            _ => (kind, buf),
        }
    }

    fn repeating(len: usize) -> Vec<u8> {
        (0..len).map(|i| b'a' + (i % 26) as u8).collect()
    }

    /// The next number of a xorshift generator.
    fn xorshift(x: &mut u64) -> u64 {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *x
    }

    fn noise(len: usize) -> Vec<u8> {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        (0..len).map(|_| (xorshift(&mut x) >> 24) as u8).collect()
    }

    /// `always` sends a large compressible frame as kind 9 and it decompresses to the same
    /// bytes; small frames, and large ones that would not shrink by an eighth, go as they
    /// are; the counters add up what was encoded and what was sent.
    #[test]
    fn large_frames_travel_compressed_and_come_back_whole() {
        let counters = Arc::new(WireCounters::default());
        let mut packer = Packer::new(PeerCompression::Always, counters.clone());
        let now = Instant::now();
        let big = repeating(200 << 10);
        assert_eq!(
            through(&mut packer, &Frame::Raft(big.clone(), now)),
            (KIND_RAFT_LZ4, big.clone())
        );
        let small = repeating(COMPRESS_MIN_BYTES - 1);
        assert_eq!(
            through(&mut packer, &Frame::Raft(small.clone(), now)),
            (KIND_RAFT, small.clone())
        );
        let random = noise(64 << 10);
        assert_eq!(
            through(&mut packer, &Frame::Raft(random.clone(), now)),
            (KIND_RAFT, random.clone())
        );
        let encoded = (big.len() + small.len() + random.len()) as u64;
        assert_eq!(counters.raft_bytes.load(Ordering::Relaxed), encoded);
        let sent = counters.wire_bytes.load(Ordering::Relaxed);
        assert!(sent < encoded - big.len() as u64 / 2, "{sent} of {encoded}");
        assert_eq!(counters.compressed_frames.load(Ordering::Relaxed), 1);
        let mut off = Packer::new(PeerCompression::Off, counters);
        assert_eq!(
            through(&mut off, &Frame::Raft(big.clone(), now)).0,
            KIND_RAFT
        );
    }

    /// `auto` leaves frames alone while they leave at once, compresses from the first one
    /// that waited longer than the lag bound, keeps doing so for the hold time, and
    /// compresses again once the connection holds a megabyte unacknowledged.
    #[test]
    fn auto_compresses_while_the_link_lags() {
        let mut packer = Packer::new(PeerCompression::Auto, Arc::default());
        let big = repeating(64 << 10);
        let now = Instant::now();
        assert_eq!(
            through(&mut packer, &Frame::Raft(big.clone(), now)).0,
            KIND_RAFT
        );
        let waited = now.checked_sub(LINK_LAG * 2).unwrap();
        assert_eq!(
            through(&mut packer, &Frame::Raft(big.clone(), waited)).0,
            KIND_RAFT_LZ4
        );
        let fresh = Instant::now();
        assert_eq!(
            through(&mut packer, &Frame::Raft(big.clone(), fresh)).0,
            KIND_RAFT_LZ4,
            "still within the hold"
        );
        packer.lagging_until = Some(Instant::now());
        assert_eq!(
            through(&mut packer, &Frame::Raft(big.clone(), fresh)).0,
            KIND_RAFT
        );
        // A connection holding a megabyte the peer has not taken lags too.
        packer.unsent = UNSENT_LAG_BYTES;
        assert_eq!(
            through(&mut packer, &Frame::Raft(big.clone(), Instant::now())).0,
            KIND_RAFT_LZ4
        );
    }

    /// A compressed frame is refused, never panicking nor allocating what it claims,
    /// when it has no length, claims more than the message limit or than its block could
    /// expand to, is truncated or damaged anywhere, or decompresses to another length.
    #[test]
    fn hostile_compressed_frames_are_refused() {
        let mut out = Vec::new();
        assert!(unpack(&[1, 2, 3], &mut out).is_err());
        let mut huge = ((codec::MESSAGE_SIZE_MAX + 1) as u32)
            .to_le_bytes()
            .to_vec();
        huge.extend_from_slice(&[0u8; 1 << 20]);
        assert!(unpack(&huge, &mut out).is_err());
        let mut bomb = (100u32 << 20).to_le_bytes().to_vec();
        bomb.extend_from_slice(&[0xF0, 0, 0, 0]);
        assert!(unpack(&bomb, &mut out).is_err());
        assert!(out.capacity() < 1 << 20, "allocated {}", out.capacity());
        let raw = repeating(40 << 10);
        let mut good = (raw.len() as u32).to_le_bytes().to_vec();
        good.extend_from_slice(&lz4_flex::block::compress(&raw));
        assert_eq!(unpack(&good, &mut out).unwrap(), &raw[..]);
        let mut longer = good.clone();
        longer[..4].copy_from_slice(&(raw.len() as u32 + 1).to_le_bytes());
        assert!(unpack(&longer, &mut out).is_err());
        for cut in 0..good.len() {
            assert!(unpack(&good[..cut], &mut out).is_err(), "cut at {cut}");
        }
        let mut x = 5u64;
        for _ in 0..20_000 {
            let x = xorshift(&mut x);
            let mut b = good.clone();
            let at = 4 + x as usize % (b.len() - 4);
            b[at] ^= (x >> 40) as u8 | 1;
            // A damaged block may still decode to bytes of the right length (a literal
            // changed); it must never panic, and what it yields has that length.
            if let Ok(bytes) = unpack(&b, &mut out) {
                assert_eq!(bytes.len(), raw.len());
            }
        }
    }

    #[test]
    fn a_hello_round_trips() {
        assert_eq!(Hello::decode(&sample().encode()), Ok(sample()));
    }

    /// Every truncation of a valid hello — the 22-byte one with the magic and the cluster
    /// id among them — and random bytes are refused with a reason, never a panic.
    #[test]
    fn a_frame_claiming_more_than_arrives_takes_only_the_memory_of_what_arrived() {
        let mut bytes = (100u32 << 20).to_le_bytes().to_vec();
        bytes.push(KIND_RAFT);
        bytes.extend_from_slice(&[7u8; 10]);
        let mut buf = Vec::new();
        let err = read_frame(&mut &bytes[..], &mut buf, FRAME_SIZE_MAX).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(
            buf.capacity() < 1 << 20,
            "allocated {} bytes",
            buf.capacity()
        );
    }

    #[test]
    fn every_truncation_and_garbage_is_refused_without_panic() {
        let full = sample().encode();
        let peer_len = "127.0.0.1:8002".len() + 2;
        for cut in 0..full.len() {
            if cut == full.len() - peer_len - 2 {
                // A hello from before the RESP port: the sender has no door.
                let old = Hello::decode(&full[..cut]).unwrap();
                assert_eq!(
                    old,
                    Hello {
                        resp_port: 0,
                        peer_addr: None,
                        ..sample()
                    }
                );
                continue;
            }
            if cut == full.len() - peer_len {
                // One from before the peer address.
                let old = Hello::decode(&full[..cut]).unwrap();
                assert_eq!(
                    old,
                    Hello {
                        peer_addr: None,
                        ..sample()
                    }
                );
                continue;
            }
            assert!(Hello::decode(&full[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = full.clone();
        longer.push(0);
        assert!(Hello::decode(&longer).is_err());
        let mut rng = 7u64;
        for _ in 0..20_000 {
            let rng = xorshift(&mut rng);
            let mut b = full.clone();
            let at = rng as usize % b.len();
            b[at] = (rng >> 40) as u8;
            let _ = Hello::decode(&b);
            let len = (rng >> 8) as usize % 64;
            let noise: Vec<u8> = (0..len).map(|i| (rng >> (i % 56)) as u8).collect();
            let _ = Hello::decode(&noise);
        }
    }
}
