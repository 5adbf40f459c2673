//! The integers of the replication protocol, as types: a log index, a term, a node.
//!
//! They cross module boundaries (log ↔ engine ↔ consensus ↔ replica ↔ server) and are
//! easy to mix up as plain `u64`s, so each has its own type; raft-rs speaks `u64`, and
//! the conversion happens once, where the consensus module talks to it.

use std::fmt;

/// A position in the log: 1-based; 0 means "before the first entry".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct LogIndex(pub u64);

impl LogIndex {
    /// Before the first entry.
    pub const ZERO: LogIndex = LogIndex(0);

    pub const fn get(self) -> u64 {
        self.0
    }

    /// The index after this one.
    pub const fn next(self) -> LogIndex {
        LogIndex(self.0 + 1)
    }

    /// The index before this one (`None` for index 0).
    pub fn prev(self) -> Option<LogIndex> {
        self.0.checked_sub(1).map(LogIndex)
    }
}

impl fmt::Display for LogIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A Raft term: 0 before any election.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Term(pub u64);

impl Term {
    pub const ZERO: Term = Term(0);

    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One node of a cluster. Operators and the command line count nodes from 0 (the order
/// of `--peers`, `--node-id`); Raft counts them from 1 and keeps 0 for "none". This type
/// holds the index and converts, here and nowhere else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(usize);

impl NodeId {
    /// The node at `index` in `--peers` order.
    pub const fn from_index(index: usize) -> NodeId {
        NodeId(index)
    }

    /// The node Raft calls `raft_id` (`None` for 0, Raft's "no node").
    pub fn from_raft_id(raft_id: u64) -> Option<NodeId> {
        raft_id
            .checked_sub(1)
            .and_then(|i| usize::try_from(i).ok())
            .map(NodeId)
    }

    /// Position in `--peers` order (0-based).
    pub const fn index(self) -> usize {
        self.0
    }

    /// Raft's id for this node (1-based).
    pub const fn raft_id(self) -> u64 {
        self.0 as u64 + 1
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_convert_both_ways_and_zero_is_no_node() {
        for index in [0, 1, 2, 6] {
            let id = NodeId::from_index(index);
            assert_eq!(id.raft_id(), index as u64 + 1);
            assert_eq!(NodeId::from_raft_id(id.raft_id()), Some(id));
        }
        assert_eq!(NodeId::from_raft_id(0), None);
        assert_eq!(LogIndex(5).next(), LogIndex(6));
        assert_eq!(LogIndex::ZERO.prev(), None);
    }
}
