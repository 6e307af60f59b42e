//! Declarative membership: a node whose `herd.toml` names the herd's members
//! (`cluster.peers`) forms or joins the herd by itself, so that nodes started the
//! same way (one systemd unit, one container image, one template) make one herd.
//!
//! Each round (every [`ROUND`]) until this node is a member:
//! 1. Ask every peer address `Hello`: who answers there, and is it in a herd.
//! 2. A peer in a herd: ask it to add this node (`Join`; it passes the request to
//!    the leader). That is also how a node restarted with an empty data dir, or a
//!    node added to the list later, gets in.
//! 3. Nobody in a herd: once `bootstrap_expect` nodes (this one counted) answer, the
//!    one with the lowest id forms the herd. It first promises itself, then asks the
//!    others to promise to it (a node that promised forms no herd and promises no
//!    other node for [`PROMISE_TTL`]); with `bootstrap_expect` promises it
//!    initialises Raft with those nodes as members (the first five vote). Promises
//!    make two nodes that both think they are lowest (each saw a different set) fail
//!    rather than form two herds; `bootstrap_expect` above half the peers makes two
//!    disjoint herds impossible.
//!
//! The node never makes itself a herd of one here unless `bootstrap_expect` is 1.
use std::collections::BTreeMap;
use std::time::Duration;

use openraft::BasicNode;
use tokio_util::sync::CancellationToken;

use super::membership::{MAX_VOTERS, PROMISE_TTL};
use super::node::ClusterNode;
use super::types::NodeId;

/// Time between rounds.
const ROUND: Duration = Duration::from_millis(500);
/// Bound on one Hello or Join.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a member checks that its peers are of its herd.
const CHECK_EVERY: Duration = Duration::from_secs(5);
/// Progress is logged at most this often while nothing changes.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// The declarative membership of a node.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    /// Addresses of the herd's members as the others reach them (this node's may be
    /// among them).
    pub peers: Vec<String>,
    /// How many nodes (this one included) must see each other before a herd forms.
    pub expect: usize,
}

/// What one round saw.
#[derive(Debug, Default)]
struct Seen {
    /// Nodes in no herd: id → the address they answered at.
    fresh: BTreeMap<NodeId, String>,
    /// Members of a herd: (the id and address to ask, the herd id).
    members: Vec<(NodeId, String, String)>,
    /// The address this node answered at itself, when it is in the list.
    me: Option<String>,
    /// Peers that did not answer, with why.
    silent: Vec<String>,
}

/// Runs until `cancel`: forms or joins the herd; once a member, checks every
/// [`CHECK_EVERY`] that the peers listed are of the same herd (a node pointed at
/// another herd's nodes says so, naming both herd ids, in its log and status).
pub async fn run(node: ClusterNode, cfg: Bootstrap, cancel: CancellationToken) {
    let mut last = (String::new(), std::time::Instant::now());
    loop {
        if node.in_herd() {
            node.set_bootstrap_status(String::new());
            check_peers(&node, &cfg.peers).await;
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(CHECK_EVERY) => {}
            }
            continue;
        }
        let status = round(&node, &cfg).await;
        let now = std::time::Instant::now();
        if status != last.0 || now.duration_since(last.1) >= LOG_EVERY {
            tracing::info!(node = node.id(), "herd bootstrap: {status}");
            last = (status.clone(), now);
        }
        node.set_bootstrap_status(status);
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(ROUND) => {}
        }
    }
}

/// One round; returns what the node waits for, for people.
async fn round(node: &ClusterNode, cfg: &Bootstrap) -> String {
    let seen = look(node, &cfg.peers).await;
    let my_addr = seen.me.clone().unwrap_or_else(|| node.addr().to_string());
    if let Some((id, addr, herd)) = seen.members.first() {
        return match node
            .peers()
            .join(addr, node.id(), &my_addr, CALL_TIMEOUT * 10)
            .await
        {
            Ok(message) => format!("joining herd {herd} through node {id} at {addr}: {message}"),
            Err(e) => format!(
                "node {id} at {addr} (herd {herd}) did not add this node: {}",
                e.message()
            ),
        };
    }
    let mut nodes = seen.fresh.clone();
    nodes.insert(node.id(), my_addr.clone());
    let silent = if seen.silent.is_empty() {
        String::new()
    } else {
        format!("; no answer from {}", seen.silent.join(", "))
    };
    if nodes.len() < cfg.expect {
        return format!(
            "waiting for peers: {} of {} nodes seen (ids {}){silent}",
            nodes.len(),
            cfg.expect,
            ids(&nodes)
        );
    }
    let lowest = *nodes.keys().next().unwrap_or(&node.id());
    if lowest != node.id() {
        return format!(
            "{} of {} nodes seen (ids {}); node {lowest} forms the herd",
            nodes.len(),
            cfg.expect,
            ids(&nodes)
        );
    }
    form(node, cfg, nodes).await
}

/// A member asks its peers who they are: a peer of another herd refuses the
/// call (the herd ids differ), which the credential records and logs on both
/// ends; a peer that answers as a member of another herd is reported here.
async fn check_peers(node: &ClusterNode, peers: &[String]) {
    let seen = look(node, peers).await;
    let mine = node.credential().herd_id().unwrap_or_default();
    for (id, addr, theirs) in &seen.members {
        if !mine.is_empty() && !theirs.is_empty() && theirs != &mine {
            node.credential().report(format!(
                "cluster.peers names node {id} at {addr} of herd {theirs}; this node is in \
                 herd {mine}"
            ));
        }
    }
}

/// Asks every peer who it is.
async fn look(node: &ClusterNode, peers: &[String]) -> Seen {
    let calls = peers.iter().map(|addr| {
        let (peers, me, addr) = (node.peers().clone(), node.id(), addr.clone());
        tokio::spawn(async move {
            let r = peers.hello(&addr, me, 0, CALL_TIMEOUT).await;
            (addr, r)
        })
    });
    let answers: Vec<_> = calls.collect();
    let mut seen = Seen::default();
    for task in answers {
        let Ok((addr, r)) = task.await else { continue };
        match r {
            Ok(h) if h.id == node.id() => seen.me = Some(addr),
            Ok(h) if h.in_herd => {
                // Ask the leader where it is known, else the member itself.
                let (id, at) = match h.leader_id {
                    Some(l) if !h.leader_addr.is_empty() => (l, h.leader_addr.clone()),
                    _ => (h.id, addr),
                };
                seen.members.push((id, at, h.herd_id));
            }
            Ok(h) => {
                seen.fresh.insert(h.id, addr);
            }
            Err(e) => seen.silent.push(format!("{addr} ({})", e.message())),
        }
    }
    seen
}

/// This node is the lowest of `nodes`: gathers promises and initialises the herd.
async fn form(node: &ClusterNode, cfg: &Bootstrap, nodes: BTreeMap<NodeId, String>) -> String {
    let me = node.id();
    {
        let now = std::time::Instant::now();
        let mut promise = node.promise.lock().unwrap_or_else(|p| p.into_inner());
        match *promise {
            Some((to, at)) if to != me && now.duration_since(at) < PROMISE_TTL => {
                return format!("promised to form the herd with node {to}; waiting for it");
            }
            _ => *promise = Some((me, now)),
        }
    }
    let mut members: BTreeMap<NodeId, BasicNode> = BTreeMap::new();
    members.insert(me, BasicNode::new(nodes[&me].clone()));
    let mut refused = Vec::new();
    for (&id, addr) in nodes.iter().filter(|(id, _)| **id != me) {
        match node.peers().hello(addr, me, me, CALL_TIMEOUT).await {
            Ok(h) if h.promised && h.id == id => {
                members.insert(id, BasicNode::new(addr.clone()));
            }
            Ok(h) => refused.push(format!("node {} (promised to {})", h.id, h.promised_to)),
            Err(e) => refused.push(format!("node {id} ({})", e.message())),
        }
    }
    if members.len() < cfg.expect {
        *node.promise.lock().unwrap_or_else(|p| p.into_inner()) = None;
        return format!(
            "forming the herd: {} of {} nodes promised; not yet: {}",
            members.len(),
            cfg.expect,
            refused.join(", ")
        );
    }
    // The first MAX_VOTERS vote; the others join as learners through their own rounds.
    let voters: BTreeMap<NodeId, BasicNode> = members.into_iter().take(MAX_VOTERS).collect();
    let ids_text = voters
        .keys()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    match node.init(voters).await {
        Ok(true) => {
            tracing::info!(
                node = me,
                herd = node.credential().herd_id().unwrap_or_default(),
                members = %ids_text,
                "herd bootstrap: formed the herd"
            );
            format!("formed the herd with nodes {ids_text}")
        }
        Ok(false) => "this node is in a herd already".into(),
        Err(e) => format!("cannot form the herd: {e}"),
    }
}

fn ids(nodes: &BTreeMap<NodeId, String>) -> String {
    nodes
        .keys()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
