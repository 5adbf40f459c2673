//! Ocean Liner: a replicated key-value store built for throughput on Linux.
//!
//! The crate is layered so that dependencies point one way, and the data path can be read
//! off the tree:
//!
//! - [`ids`]: log indexes, terms and node ids as types of their own; [`le`]: bounded
//!   reads of little-endian fields from a disk's or a peer's bytes.
//! - [`storage`]: io, log, store, engine — bytes on disk; no sockets, threads or clocks.
//! - [`consensus`]: the Raft driver (raft-rs) over the engine; no IO of its own.
//! - [`replica`]: one node's replication logic — seal, propose, Ready cycle, leases and
//!   read rounds — as a state machine the server and the simulator both drive.
//! - [`server`]: the threads, sockets and timers around it: shards (ingress, window,
//!   reply), the RESP door (glommio), the replication thread, the peer transport.
//! - [`net`]: batched UDP (`recvmmsg`/`sendmmsg`), used by the shards and the load tool.
//! - [`client`]: the UDP wire protocol, the client library and the load tool; it stands
//!   apart from the server.
//! - [`resp`]: RESP2, the Redis protocol: commands and replies, parsed with bounds.
//! - [`verify`]: the cluster simulator and the linearizability checker.
//! - [`backup`]: snapshots of a live node saved to a file, and restored from one.

pub mod backup;
pub mod client;
pub mod consensus;
pub mod doctor;
pub mod ids;
pub mod le;
pub mod net;
pub mod replica;
pub mod resp;
pub mod server;
pub mod storage;
pub mod verify;
