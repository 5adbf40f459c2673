//! Who is in the cluster: voters, learners, and where each is reached.
//!
//! The membership is replicated state. A change travels as one command of op
//! [`crate::storage::command::CommandOp::Config`] in an entry of its own (raft-rs proposes
//! it as a `ConfChangeV2` of one change, so no joint configuration is ever entered); the
//! engine applies it to the membership it keeps with the map, checkpoints it with the
//! sessions and sends it in snapshots, and raft-rs applies the same change to its
//! progress tracker. Both follow the rules of [`Membership::apply`], checked before a
//! change is proposed, so they cannot disagree. `--peers` only names the first voters
//! of a new cluster ([`Membership::bootstrap`]).
//!
//! ```text
//! change (little-endian)        u8 version (1), u8 kind (1 add learner, 2 promote,
//!                               3 remove), u16 0, u32 node index; for an add:
//!                               u16 len, peer address as text, u16 len, client address
//! membership                    u32 count, then per member: u32 node index, u8 voter,
//!                               u16 len, peer address, u16 len, client address; then
//!                               u32 count, the node indexes removed (never re-added)
//! ```
//!
//! Every decoder checks each length against the bytes present; nothing here panics on
//! bytes from a peer or a disk.

use crate::ids::NodeId;
use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState};
use std::net::SocketAddr;

/// Node indexes run below this (so do the members of one cluster).
pub const NODES_MAX: usize = 256;
const CHANGE_VERSION: u8 = 1;
/// Longest address text accepted.
const ADDR_TEXT_MAX: usize = 64;

/// One node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: NodeId,
    /// Where its peers reach it (Raft over TCP).
    pub peer_addr: SocketAddr,
    /// Where clients reach it (UDP).
    pub client_addr: SocketAddr,
    /// A voter counts toward quorums; a learner only receives the log.
    pub voter: bool,
}

/// One change of the membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A new node that receives the log but does not vote.
    AddLearner {
        id: NodeId,
        peer_addr: SocketAddr,
        client_addr: SocketAddr,
    },
    /// A learner becomes a voter.
    Promote { id: NodeId },
    /// A voter or learner leaves.
    Remove { id: NodeId },
}

impl Change {
    /// The node the change is about.
    pub fn id(&self) -> NodeId {
        match self {
            Change::AddLearner { id, .. } | Change::Promote { id } | Change::Remove { id } => *id,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let kind = match self {
            Change::AddLearner { .. } => 1u8,
            Change::Promote { .. } => 2,
            Change::Remove { .. } => 3,
        };
        let mut out = vec![CHANGE_VERSION, kind, 0, 0];
        out.extend_from_slice(&(self.id().index() as u32).to_le_bytes());
        if let Change::AddLearner {
            peer_addr,
            client_addr,
            ..
        } = self
        {
            put_addr(&mut out, peer_addr);
            put_addr(&mut out, client_addr);
        }
        out
    }

    /// Decodes a change; all of `bytes` must be used.
    pub fn decode(bytes: &[u8]) -> Result<Change, &'static str> {
        let mut r = Reader(bytes);
        let [version, kind, r0, r1] = r.array::<4>().ok_or("truncated change")?;
        if version != CHANGE_VERSION || [r0, r1] != [0, 0] {
            return Err("unknown change version");
        }
        let id = r.node_id()?;
        let change = match kind {
            1 => Change::AddLearner {
                id,
                peer_addr: r.addr()?,
                client_addr: r.addr()?,
            },
            2 => Change::Promote { id },
            3 => Change::Remove { id },
            _ => return Err("unknown change kind"),
        };
        if !r.0.is_empty() {
            return Err("trailing bytes after a change");
        }
        Ok(change)
    }

    /// The same change as raft-rs takes it: one simple change, no joint configuration.
    pub fn to_conf_change(&self) -> ConfChangeV2 {
        let change_type = match self {
            Change::AddLearner { .. } => ConfChangeType::AddLearnerNode,
            Change::Promote { .. } => ConfChangeType::AddNode,
            Change::Remove { .. } => ConfChangeType::RemoveNode,
        };
        let mut single = ConfChangeSingle::default();
        single.set_change_type(change_type);
        single.node_id = self.id().raft_id();
        let mut cc = ConfChangeV2::default();
        cc.set_changes(vec![single].into());
        cc
    }
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::AddLearner {
                id,
                peer_addr,
                client_addr,
            } => write!(
                f,
                "add node {id} as a learner (peer {peer_addr}, client {client_addr})"
            ),
            Change::Promote { id } => write!(f, "promote node {id} to voter"),
            Change::Remove { id } => write!(f, "remove node {id}"),
        }
    }
}

/// The members of a cluster, by node id.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Membership {
    members: Vec<Member>,
    /// Ids that were members once: a removed node's data (its log, its votes) may still
    /// exist, so its id is not given to a new node.
    removed: Vec<NodeId>,
}

impl Membership {
    /// The first voters of a new cluster: node `k` at `peers[k]`, clients at
    /// `client_addrs[k]`.
    pub fn bootstrap(peers: &[SocketAddr], client_addrs: &[SocketAddr]) -> Membership {
        Membership {
            members: peers
                .iter()
                .zip(client_addrs)
                .enumerate()
                .take(NODES_MAX)
                .map(|(k, (peer, client))| Member {
                    id: NodeId::from_index(k),
                    peer_addr: *peer,
                    client_addr: *client,
                    voter: true,
                })
                .collect(),
            removed: Vec::new(),
        }
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    pub fn get(&self, id: NodeId) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn voters(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.members.iter().filter(|m| m.voter).map(|m| m.id)
    }

    /// Checks `change` against this membership without making it.
    pub fn check(&self, change: &Change) -> Result<(), String> {
        let id = change.id();
        let existing = self.get(id);
        match change {
            Change::AddLearner { .. } if existing.is_some() => {
                Err(format!("node {id} is already a member"))
            }
            Change::AddLearner { .. } if id.index() >= NODES_MAX => {
                Err(format!("node ids run below {NODES_MAX}"))
            }
            Change::AddLearner { .. } if self.removed.contains(&id) => Err(format!(
                "node {id} was removed from this cluster; a new node takes a new id"
            )),
            Change::AddLearner { .. } => Ok(()),
            Change::Promote { .. } => match existing {
                None => Err(format!("node {id} is not a member")),
                Some(m) if m.voter => Err(format!("node {id} is already a voter")),
                Some(_) => Ok(()),
            },
            Change::Remove { .. } => match existing {
                None => Err(format!("node {id} is not a member")),
                Some(m) if m.voter && self.voters().count() == 1 => {
                    Err(format!("node {id} is the last voter"))
                }
                Some(_) => Ok(()),
            },
        }
    }

    /// Makes `change` if [`Membership::check`] allows it.
    pub fn apply(&mut self, change: &Change) -> Result<(), String> {
        self.check(change)?;
        match change {
            Change::AddLearner {
                id,
                peer_addr,
                client_addr,
            } => {
                self.members.push(Member {
                    id: *id,
                    peer_addr: *peer_addr,
                    client_addr: *client_addr,
                    voter: false,
                });
                self.members.sort_by_key(|m| m.id);
            }
            Change::Promote { id } => {
                if let Some(m) = self.members.iter_mut().find(|m| m.id == *id) {
                    m.voter = true;
                }
            }
            Change::Remove { id } => {
                self.members.retain(|m| m.id != *id);
                if self.removed.len() < NODES_MAX {
                    self.removed.push(*id);
                    self.removed.sort();
                }
            }
        }
        Ok(())
    }

    /// raft-rs's view of it.
    pub fn conf_state(&self) -> ConfState {
        let ids = |voter: bool| {
            self.members
                .iter()
                .filter(|m| m.voter == voter)
                .map(|m| m.id.raft_id())
                .collect()
        };
        ConfState {
            voters: ids(true),
            learners: ids(false),
            ..Default::default()
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + self.members.len() * 48);
        out.extend_from_slice(&(self.members.len() as u32).to_le_bytes());
        for m in &self.members {
            out.extend_from_slice(&(m.id.index() as u32).to_le_bytes());
            out.push(m.voter as u8);
            put_addr(&mut out, &m.peer_addr);
            put_addr(&mut out, &m.client_addr);
        }
        out.extend_from_slice(&(self.removed.len() as u32).to_le_bytes());
        for id in &self.removed {
            out.extend_from_slice(&(id.index() as u32).to_le_bytes());
        }
        out
    }

    /// Decodes a membership; returns it and the bytes after it.
    pub fn decode(bytes: &[u8]) -> Result<(Membership, &[u8]), &'static str> {
        let mut r = Reader(bytes);
        let count = r.u32().ok_or("truncated membership")? as usize;
        if count > NODES_MAX {
            return Err("too many members");
        }
        let mut members: Vec<Member> = Vec::with_capacity(count);
        for _ in 0..count {
            let id = r.node_id()?;
            let voter = match r.array::<1>().ok_or("truncated membership")? {
                [0] => false,
                [1] => true,
                _ => return Err("bad voter flag"),
            };
            let peer_addr = r.addr()?;
            let client_addr = r.addr()?;
            if members.last().is_some_and(|last| last.id >= id) {
                return Err("members out of order");
            }
            members.push(Member {
                id,
                peer_addr,
                client_addr,
                voter,
            });
        }
        let removed_count = r.u32().ok_or("truncated membership")? as usize;
        if removed_count > NODES_MAX {
            return Err("too many removed members");
        }
        let removed = (0..removed_count)
            .map(|_| r.node_id())
            .collect::<Result<Vec<_>, _>>()?;
        Ok((Membership { members, removed }, r.0))
    }
}

fn put_addr(out: &mut Vec<u8>, addr: &SocketAddr) {
    let text = addr.to_string();
    out.extend_from_slice(&(text.len() as u16).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    fn u32(&mut self) -> Option<u32> {
        self.array::<4>().map(u32::from_le_bytes)
    }

    fn node_id(&mut self) -> Result<NodeId, &'static str> {
        let index = self.u32().ok_or("truncated node id")? as usize;
        if index >= NODES_MAX {
            return Err("node id out of range");
        }
        Ok(NodeId::from_index(index))
    }

    fn addr(&mut self) -> Result<SocketAddr, &'static str> {
        let len = self
            .array::<2>()
            .map(u16::from_le_bytes)
            .ok_or("truncated address")? as usize;
        if len > ADDR_TEXT_MAX {
            return Err("address too long");
        }
        let text = self.take(len).ok_or("truncated address")?;
        std::str::from_utf8(text)
            .ok()
            .and_then(|t| t.parse().ok())
            .ok_or("bad address")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn three() -> Membership {
        Membership::bootstrap(
            &[addr(8000), addr(8001), addr(8002)],
            &[addr(9000), addr(9001), addr(9002)],
        )
    }

    #[test]
    fn a_learner_is_added_promoted_and_removed_and_raft_sees_the_same() {
        let mut m = three();
        let add = Change::AddLearner {
            id: NodeId::from_index(3),
            peer_addr: addr(8003),
            client_addr: addr(9003),
        };
        m.apply(&add).unwrap();
        assert_eq!(m.conf_state().voters, vec![1, 2, 3]);
        assert_eq!(m.conf_state().learners, vec![4]);
        assert!(m.apply(&add).is_err(), "added twice");
        m.apply(&Change::Promote {
            id: NodeId::from_index(3),
        })
        .unwrap();
        assert_eq!(m.conf_state().voters, vec![1, 2, 3, 4]);
        m.apply(&Change::Remove {
            id: NodeId::from_index(0),
        })
        .unwrap();
        assert_eq!(m.conf_state().voters, vec![2, 3, 4]);
        assert!(
            m.apply(&Change::Promote {
                id: NodeId::from_index(1)
            })
            .is_err()
        );
        assert!(
            m.apply(&Change::Remove {
                id: NodeId::from_index(0)
            })
            .is_err()
        );
        let again = Change::AddLearner {
            id: NodeId::from_index(0),
            peer_addr: addr(8010),
            client_addr: addr(9010),
        };
        assert!(m.check(&again).unwrap_err().contains("was removed"));
        let bytes = m.encode();
        let (back, rest) = Membership::decode(&bytes).unwrap();
        assert_eq!(back, m);
        assert!(rest.is_empty());
    }

    #[test]
    fn the_last_voter_stays() {
        let mut m = Membership::bootstrap(&[addr(8000)], &[addr(9000)]);
        assert!(
            m.apply(&Change::Remove {
                id: NodeId::from_index(0)
            })
            .is_err()
        );
        assert_eq!(m.voters().count(), 1);
    }

    #[test]
    fn changes_round_trip_and_every_truncation_or_garbage_is_refused() {
        let changes = [
            Change::AddLearner {
                id: NodeId::from_index(7),
                peer_addr: "[::1]:8007".parse().unwrap(),
                client_addr: addr(9007),
            },
            Change::Promote {
                id: NodeId::from_index(7),
            },
            Change::Remove {
                id: NodeId::from_index(2),
            },
        ];
        for c in &changes {
            let bytes = c.encode();
            assert_eq!(&Change::decode(&bytes).unwrap(), c);
            for cut in 0..bytes.len() {
                assert!(Change::decode(&bytes[..cut]).is_err(), "{c} cut at {cut}");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(Change::decode(&longer).is_err());
        }
        let mut bad = changes[1].encode();
        bad[4..8].copy_from_slice(&(NODES_MAX as u32).to_le_bytes());
        assert!(Change::decode(&bad).is_err(), "node id out of range");
        let m = three().encode();
        for cut in 0..m.len() {
            assert!(
                Membership::decode(&m[..cut]).is_err(),
                "membership cut at {cut}"
            );
        }
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..2000 {
            let len = (seed % 64) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let _ = Change::decode(&bytes);
            let _ = Membership::decode(&bytes);
        }
    }
}
