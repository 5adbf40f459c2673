//! The window buffer each shard fills with encoded write commands between two seals.
//!
//! A shard appends a whole receive batch under one short lock; the replication core takes
//! the buffer at the end of each window (or earlier, when a shard reports that its buffer
//! passed the size cap) and hands the emptied buffers back with the results, so the
//! steady state allocates nothing.

use crate::client::protocol::Op;
use std::net::SocketAddr;
use std::sync::Mutex;

/// Which door a write came in through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    /// A UDP datagram from `addr`.
    Udp,
    /// An item of a UDP BATCH datagram from `addr` (answered in a BATCH reply).
    UdpBatch,
    /// A RESP connection: `client_id` names it, `request_seq` the command's place.
    Resp,
}

/// Whom to answer once a write is durable and applied.
#[derive(Debug, Clone, Copy)]
pub struct ReplyTo {
    pub door: Door,
    pub addr: SocketAddr,
    pub op: Op,
    pub client_id: u64,
    pub request_seq: u64,
    /// Whether the request carried this source's cookie, and its size: together they
    /// bound how large the reply may be.
    pub validated: bool,
    pub request_len: u16,
    /// When the request arrived (for the latency histograms).
    pub received: std::time::Instant,
}

/// Commands (in log encoding) and their reply addresses, in arrival order.
pub type Window = crate::replica::Window<ReplyTo>;

/// A shard's current window, shared with the replication core.
#[derive(Debug, Default)]
pub struct WindowSlot {
    current: Mutex<Window>,
}

impl WindowSlot {
    /// Moves `batch` into the current window; returns the window's size in bytes after.
    pub fn append(&self, batch: &mut Window) -> usize {
        let mut w = self.current.lock().unwrap();
        w.commands.extend_from_slice(&batch.commands);
        w.replies.append(&mut batch.replies);
        w.conditional |= std::mem::take(&mut batch.conditional);
        batch.commands.clear();
        w.commands.len()
    }

    /// Seals the current window, leaving `spare` (an emptied buffer) in its place.
    pub fn seal(&self, mut spare: Window) -> Window {
        spare.clear();
        std::mem::replace(&mut *self.current.lock().unwrap(), spare)
    }

    /// Bytes in the current window.
    pub fn bytes(&self) -> usize {
        self.current.lock().unwrap().commands.len()
    }
}
