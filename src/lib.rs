//! Ocean Liner: a replicated key-value store built for throughput on Linux.
//!
//! The crate is layered so that dependencies point one way:
//!
//! - [`io`]: the file backend seam (real O_DIRECT io_uring files, or an in-memory
//!   fault-injecting backend for crash tests and the simulator).
//! - [`log`]: the append-only log of batched command entries.
//! - [`store`]: the page-aligned on-disk hashmap that indexes the log, and its checkpoints.
//! - [`engine`]: log + map + client sessions: append, apply, recover. No sockets, no threads.
//! - [`consensus`]: the Raft driver (raft-rs) over the engine; no IO of its own.
//! - [`replica`]: one node's replication logic — seal, propose, Ready cycle, leases and
//!   read rounds — as a state machine the server and the simulator both drive.
//! - [`protocol`]: the UDP client wire format.
//! - [`server`]: the shard and replication cores that own sockets, threads and timers.
//! - [`client`] and [`bench`]: the command-line client and the load tool.

pub mod bench;
pub mod client;
pub mod command;
pub mod consensus;
pub mod engine;
pub mod io;
pub mod linearizability;
pub mod log;
pub mod protocol;
pub mod replica;
pub mod server;
pub mod sim;
pub mod store;
