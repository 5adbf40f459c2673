//! Operators' requests over the peer port (`ocean-liner member …`): their text form, as
//! the transport carries it (kinds 7 and 8, see [`super::transport`]).
//!
//! ```text
//! member list                        any member answers; a follower sends LEADER first
//! member add ID PEER_ADDR CLIENT_ADDR  a new node, as a learner
//! member promote ID                  a learner that has caught up becomes a voter
//! member remove ID                   a voter or learner leaves
//! member transfer [ID]               leadership goes to ID (default: the best voter)
//! ```
//!
//! Answers start with `OK`, `ERR reason`, `RETRY reason` (try again shortly: another
//! change is under way, a learner is still catching up, leadership is moving) or
//! `LEADER PEER_ADDR` (ask the leader there). A list is `OK cluster_id=… leader=…
//! commit=…`, then one line per member: `member id=… voter|learner peer=… client=…
//! match=…` (match is known on the leader only; elsewhere `-`).

use crate::consensus::membership::{Change, NODES_MAX};
use crate::ids::NodeId;
use std::net::SocketAddr;

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminRequest {
    List,
    Change(Change),
    Transfer(Option<NodeId>),
}

fn node_id(word: Option<&str>) -> Result<NodeId, String> {
    let word = word.ok_or("a node id is missing")?;
    match word.parse::<usize>() {
        Ok(k) if k < NODES_MAX => Ok(NodeId::from_index(k)),
        _ => Err(format!("{word:?} is not a node id (0..{NODES_MAX})")),
    }
}

fn addr(word: Option<&str>, what: &str) -> Result<SocketAddr, String> {
    let word = word.ok_or(format!("the {what} address is missing"))?;
    word.parse()
        .map_err(|_| format!("{word:?} is not an IP:PORT {what} address"))
}

/// Parses one request; the error says what is wrong.
pub fn parse(text: &str) -> Result<AdminRequest, String> {
    let mut words = text.split_ascii_whitespace();
    if words.next() != Some("member") {
        return Err("unknown request (expected: member list|add|promote|remove|transfer)".into());
    }
    let request = match words.next() {
        Some("list") => AdminRequest::List,
        Some("add") => {
            let id = node_id(words.next())?;
            AdminRequest::Change(Change::AddLearner {
                id,
                peer_addr: addr(words.next(), "peer")?,
                client_addr: addr(words.next(), "client")?,
            })
        }
        Some("promote") => AdminRequest::Change(Change::Promote {
            id: node_id(words.next())?,
        }),
        Some("remove") => AdminRequest::Change(Change::Remove {
            id: node_id(words.next())?,
        }),
        Some("transfer") => match words.next() {
            None => AdminRequest::Transfer(None),
            word => AdminRequest::Transfer(Some(node_id(word)?)),
        },
        _ => return Err("expected: member list|add|promote|remove|transfer".into()),
    };
    if let Some(extra) = words.next() {
        return Err(format!("unexpected {extra:?} at the end"));
    }
    Ok(request)
}

/// The text of a request (what the command line sends).
pub fn format(request: &AdminRequest) -> String {
    match request {
        AdminRequest::List => "member list".into(),
        AdminRequest::Change(Change::AddLearner {
            id,
            peer_addr,
            client_addr,
        }) => format!("member add {id} {peer_addr} {client_addr}"),
        AdminRequest::Change(Change::Promote { id }) => format!("member promote {id}"),
        AdminRequest::Change(Change::Remove { id }) => format!("member remove {id}"),
        AdminRequest::Transfer(None) => "member transfer".into(),
        AdminRequest::Transfer(Some(id)) => format!("member transfer {id}"),
    }
}

/// One member as a list names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedMember {
    pub id: NodeId,
    pub voter: bool,
    pub peer_addr: String,
    pub client_addr: String,
    pub match_index: Option<u64>,
}

/// A parsed list answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub cluster_id: u64,
    pub leader: Option<NodeId>,
    pub commit: u64,
    pub members: Vec<ListedMember>,
}

/// Parses the answer to `member list`.
pub fn parse_listing(answer: &str) -> Result<Listing, String> {
    let mut lines = answer.lines();
    let head = lines.next().unwrap_or_default();
    let field = |line: &str, key: &str| -> Option<String> {
        line.split_ascii_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('=').map(str::to_string))
    };
    if !head.starts_with("OK ") {
        return Err(answer.trim().to_string());
    }
    let bad = || format!("cannot read the list {answer:?}");
    let mut listing = Listing {
        cluster_id: field(head, "cluster_id")
            .and_then(|v| v.parse().ok())
            .ok_or_else(bad)?,
        leader: field(head, "leader")
            .and_then(|v| v.parse().ok())
            .map(NodeId::from_index),
        commit: field(head, "commit")
            .and_then(|v| v.parse().ok())
            .ok_or_else(bad)?,
        members: Vec::new(),
    };
    for line in lines {
        let voter = line.split_ascii_whitespace().any(|w| w == "voter");
        listing.members.push(ListedMember {
            id: field(line, "id")
                .and_then(|v| v.parse().ok())
                .map(NodeId::from_index)
                .ok_or_else(bad)?,
            voter,
            peer_addr: field(line, "peer").ok_or_else(bad)?,
            client_addr: field(line, "client").ok_or_else(bad)?,
            match_index: field(line, "match").and_then(|v| v.parse().ok()),
        });
    }
    Ok(listing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_bad_ones_say_why() {
        for text in [
            "member list",
            "member add 3 127.0.0.1:8003 127.0.0.1:9003",
            "member promote 3",
            "member remove 0",
            "member transfer",
            "member transfer 2",
        ] {
            assert_eq!(format(&parse(text).unwrap()), text);
        }
        for bad in [
            "",
            "member",
            "member add",
            "member add 3 127.0.0.1:8003",
            "member add x 127.0.0.1:8003 127.0.0.1:9003",
            "member add 3 nowhere 127.0.0.1:9003",
            "member promote 256",
            "member remove 1 2",
            "stats",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_listing_parses() {
        let text = "OK cluster_id=7 leader=1 commit=40\n\
                    member id=0 voter peer=127.0.0.1:8000 client=127.0.0.1:9000 match=40\n\
                    member id=3 learner peer=127.0.0.1:8003 client=127.0.0.1:9003 match=-\n";
        let l = parse_listing(text).unwrap();
        assert_eq!(
            (l.cluster_id, l.leader, l.commit),
            (7, Some(NodeId::from_index(1)), 40)
        );
        assert_eq!(l.members.len(), 2);
        assert!(l.members[0].voter && !l.members[1].voter);
        assert_eq!(l.members[0].match_index, Some(40));
        assert_eq!(l.members[1].match_index, None);
        assert!(parse_listing("ERR nope").is_err());
    }
}
