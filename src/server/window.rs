//! The window buffer each shard fills with encoded write commands between two seals.
//!
//! A shard appends a whole receive batch under one short lock; the replication core takes
//! the buffer at the end of each window (or earlier, when a shard reports that its buffer
//! passed the size cap) and hands the emptied buffers back with the results, so the
//! steady state allocates nothing.

use crate::client::protocol::Op;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

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
    /// The current window's size in bytes, written under the lock and read without it
    /// (a shard checks it for every write it takes, so the check must not lock).
    bytes: AtomicUsize,
}

impl WindowSlot {
    /// Moves `batch` into the current window; returns the window's size in bytes after.
    pub fn append(&self, batch: &mut Window) -> usize {
        let mut w = self.current.lock().unwrap();
        w.commands.extend_from_slice(&batch.commands);
        w.replies.append(&mut batch.replies);
        w.conditional |= std::mem::take(&mut batch.conditional);
        batch.commands.clear();
        let bytes = w.commands.len();
        self.bytes.store(bytes, Ordering::Release);
        bytes
    }

    /// Seals the current window, leaving `spare` (an emptied buffer) in its place.
    pub fn seal(&self, mut spare: Window) -> Window {
        spare.clear();
        let mut current = self.current.lock().unwrap();
        self.bytes.store(0, Ordering::Release);
        std::mem::replace(&mut *current, spare)
    }

    /// Bytes in the current window, as of the last append or seal (no lock taken).
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_size_a_shard_checks_follows_appends_and_seals_without_the_lock() {
        let slot = WindowSlot::default();
        assert_eq!(slot.bytes(), 0);
        let mut batch = Window::default();
        batch.commands.extend_from_slice(&[7u8; 100]);
        assert_eq!(slot.append(&mut batch), 100);
        batch.commands.extend_from_slice(&[8u8; 20]);
        assert_eq!(slot.append(&mut batch), 120);
        assert_eq!(slot.bytes(), 120);
        // Held by someone else (the replication core sealing): the size is still read.
        {
            let _held = slot.current.lock().unwrap();
            assert_eq!(slot.bytes(), 120);
        }
        let sealed = slot.seal(Window::default());
        assert_eq!((sealed.commands.len(), slot.bytes()), (120, 0));
    }
}
