//! `ocean-liner member …`: membership changes and leadership hand-over on a live cluster,
//! over the peer port (see [`crate::server::admin`]).
//!
//! A request goes to the address given; a follower answers with the leader's peer
//! address, where it is sent again. `RETRY` answers (another change under way, a learner
//! still catching up, leadership moving) are retried until the deadline.

use crate::server::admin::{self, AdminRequest, Listing};
use crate::server::transport::admin_request;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Redirects followed for one request at most.
const REDIRECTS_MAX: usize = 8;
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Sends `request` to the cluster that `peer` belongs to and returns the final `OK …`
/// answer (an `ERR`, or the deadline passing, is an error).
pub fn ask(peer: SocketAddr, request: &AdminRequest, timeout: Duration) -> anyhow::Result<String> {
    let deadline = Instant::now() + timeout;
    let text = admin::format(request);
    let mut at = peer;
    let mut redirects = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let answer = admin_request(at, &text, left.max(Duration::from_secs(1)))
            .map_err(|e| anyhow::anyhow!("{at}: {e}"))?;
        let (word, rest) = answer.split_once([' ', '\n']).unwrap_or((&answer, ""));
        match word {
            "OK" => return Ok(answer),
            "LEADER" if redirects < REDIRECTS_MAX => {
                redirects += 1;
                at = rest
                    .trim()
                    .parse()
                    .map_err(|_| anyhow::anyhow!("{at} named a bad leader address {rest:?}"))?;
            }
            "RETRY" if Instant::now() + RETRY_PAUSE < deadline => {
                std::thread::sleep(RETRY_PAUSE);
                // Leadership may have moved: start from the address given again.
                at = peer;
                redirects = 0;
            }
            "RETRY" => anyhow::bail!("gave up after {timeout:?}: {}", rest.trim()),
            "ERR" => anyhow::bail!("{}", rest.trim()),
            _ => anyhow::bail!("{at} answered {answer:?}"),
        }
    }
}

/// The cluster's members as its leader (or, with none, the node at `peer`) sees them.
pub fn list(peer: SocketAddr, timeout: Duration) -> anyhow::Result<Listing> {
    let answer = ask(peer, &AdminRequest::List, timeout)?;
    admin::parse_listing(&answer).map_err(|e| anyhow::anyhow!(e))
}

/// A listing as a table.
pub fn render(listing: &Listing) -> String {
    let mut out = format!(
        "cluster id {}, leader {}, commit index {}\n",
        listing.cluster_id,
        listing
            .leader
            .map_or("unknown".to_string(), |l| format!("node {l}")),
        listing.commit
    );
    out.push_str(&format!(
        "{:>4}  {:<8} {:<22} {:<22} {:>10}\n",
        "id", "role", "peer address", "client address", "match"
    ));
    for m in &listing.members {
        let role = if Some(m.id) == listing.leader {
            "leader"
        } else if m.voter {
            "voter"
        } else {
            "learner"
        };
        out.push_str(&format!(
            "{:>4}  {:<8} {:<22} {:<22} {:>10}\n",
            m.id.to_string(),
            role,
            m.peer_addr,
            m.client_addr,
            m.match_index.map_or("-".to_string(), |i| i.to_string())
        ));
    }
    out
}

/// Hands leadership over and waits until the cluster names the new leader.
pub fn transfer(
    peer: SocketAddr,
    target: Option<crate::ids::NodeId>,
    timeout: Duration,
) -> anyhow::Result<String> {
    let deadline = Instant::now() + timeout;
    let before = list(peer, timeout)?.leader;
    if let (Some(t), Some(b)) = (target, before)
        && t == b
    {
        return Ok(format!("node {t} already leads"));
    }
    let answer = ask(peer, &AdminRequest::Transfer(target), timeout)?;
    let wanted = target.or_else(|| {
        answer
            .rsplit(' ')
            .next()
            .and_then(|w| w.parse().ok())
            .map(crate::ids::NodeId::from_index)
    });
    while Instant::now() < deadline {
        let now = list(peer, deadline.saturating_duration_since(Instant::now()))?.leader;
        if now.is_some() && now != before && (wanted.is_none() || now == wanted) {
            return Ok(format!(
                "leadership moved from {} to node {}",
                before.map_or("none".into(), |b| format!("node {b}")),
                now.map_or(String::new(), |n| n.to_string())
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    anyhow::bail!("{answer}, but no new leader within {timeout:?}")
}
