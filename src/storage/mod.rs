//! Storage: everything that keeps bytes on a disk, with no sockets, threads or clocks.
//!
//! - [`io`]: the file backend seam (real O_DIRECT io_uring files, or an in-memory
//!   fault-injecting disk for crash tests and the simulator).
//! - [`command`]: the encoding of one write in the log.
//! - [`log`]: the append-only log of batched command entries.
//! - [`store`]: the page-aligned on-disk hashmap that indexes the log, and its checkpoints.
//! - [`engine`]: log + map + client sessions: append, apply, recover, delete what is no
//!   longer needed after a checkpoint.
//! - [`cleaner`]: copies the live values out of mostly dead segments so they can go.

pub mod cleaner;
pub mod command;
pub mod engine;
pub mod io;
pub mod log;
pub mod snapshot;
pub mod store;
