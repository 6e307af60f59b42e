//! Who this node has heard from, and when: the failure detector of the herd and
//! the lease that fences a node cut off from the majority.
//!
//! Every node beats every member (voters and learners) each `beat_interval` over
//! the Raft service. A beat answered proves both ends alive and connected, so
//! both record it: the sender when the answer comes, the receiver when the beat
//! arrives. The leader declares a member down when it has not heard from it for
//! `failover_after`; a node holds a valid lease while it has heard from a majority
//! of the voters (itself included) within `lease`. With `lease` shorter than
//! `failover_after`, a node that is cut off stops acting for its targets before
//! the leader gives them to others.
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::BasicNode;
use tokio_util::sync::CancellationToken;

use super::network::Peers;
use super::types::NodeId;

/// When this node last heard from each peer.
#[derive(Debug)]
pub struct Liveness {
    id: NodeId,
    started: Instant,
    heard: Mutex<HashMap<NodeId, Instant>>,
}

impl Liveness {
    pub fn new(id: NodeId) -> Arc<Liveness> {
        Arc::new(Liveness {
            id,
            started: Instant::now(),
            heard: Mutex::new(HashMap::new()),
        })
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Records a sign of life of `node` now.
    pub fn heard(&self, node: NodeId) {
        if node == self.id {
            return;
        }
        let mut h = self.heard.lock().unwrap_or_else(|p| p.into_inner());
        h.insert(node, Instant::now());
    }

    /// How long `node` has been silent: since its last sign of life, or since this
    /// node started when it never heard from it (a node gives its peers a full
    /// `failover_after` after its own start). Zero for this node itself.
    pub fn silent_for(&self, node: NodeId) -> Duration {
        self.silent_at(node, Instant::now())
    }

    fn silent_at(&self, node: NodeId, now: Instant) -> Duration {
        if node == self.id {
            return Duration::ZERO;
        }
        let h = self.heard.lock().unwrap_or_else(|p| p.into_inner());
        let since = h.get(&node).copied().unwrap_or(self.started);
        now.saturating_duration_since(since)
    }

    /// Whether this node hears from a majority of `voters` (itself counted when it
    /// is one) within `lease`. A node that is not in any membership yet has no lease.
    pub fn lease_valid(&self, voters: &BTreeSet<NodeId>, lease: Duration) -> bool {
        self.lease_valid_at(voters, lease, Instant::now())
    }

    fn lease_valid_at(&self, voters: &BTreeSet<NodeId>, lease: Duration, now: Instant) -> bool {
        if voters.is_empty() {
            return false;
        }
        let h = self.heard.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = voters
            .iter()
            .filter(|v| {
                **v == self.id
                    || h.get(v)
                        .is_some_and(|t| now.saturating_duration_since(*t) < lease)
            })
            .count();
        fresh * 2 > voters.len()
    }
}

/// Beats every member but this node each `interval` until `cancel`; one task
/// per member so a slow or dead one delays nobody else. `members` is read anew
/// each round (joins and leaves take effect at once).
pub async fn beat_members(
    liveness: Arc<Liveness>,
    peers: Peers,
    self_addr: String,
    members: impl Fn() -> Vec<(NodeId, BasicNode)> + Send + 'static,
    interval: Duration,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // A beat may take at most two intervals; a slower answer says little anyway.
    let timeout = interval * 2;
    let mut in_flight: HashMap<NodeId, tokio::task::JoinHandle<()>> = HashMap::new();
    // Members known so far. One that joins while this node runs was just heard
    // from (the membership change needed its answer), so it counts as heard now:
    // adding a voter does not cost the others their lease until its first beat.
    // The members found at start get no such credit.
    let mut known: Option<BTreeSet<NodeId>> = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        in_flight.retain(|_, h| !h.is_finished());
        let now_members = members();
        let ids: BTreeSet<NodeId> = now_members.iter().map(|(id, _)| *id).collect();
        if let Some(k) = &known {
            for id in ids.difference(k) {
                liveness.heard(*id);
            }
        }
        if !ids.is_empty() {
            known = Some(ids);
        }
        for (id, node) in now_members {
            if id == liveness.id() || in_flight.contains_key(&id) {
                continue;
            }
            let (liveness, peers, from_addr) = (liveness.clone(), peers.clone(), self_addr.clone());
            in_flight.insert(
                id,
                tokio::spawn(async move {
                    match peers
                        .beat(&node.addr, liveness.id(), &from_addr, timeout)
                        .await
                    {
                        Ok(answered) if answered == id => liveness.heard(id),
                        Ok(other) => tracing::warn!(
                            peer = id, addr = %node.addr, answered = other,
                            "a different node answers at this member's address"
                        ),
                        Err(e) => tracing::trace!(peer = id, error = %e, "beat failed"),
                    }
                }),
            );
        }
    }
    for (_, h) in in_flight {
        h.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_needs_a_majority_of_voters() {
        let l = Liveness::new(1);
        let voters: BTreeSet<NodeId> = [1, 2, 3].into();
        let lease = Duration::from_millis(500);
        assert!(!l.lease_valid(&voters, lease), "alone among three");
        l.heard(2);
        assert!(l.lease_valid(&voters, lease), "two of three");
        let later = Instant::now() + Duration::from_millis(600);
        assert!(
            !l.lease_valid_at(&voters, lease, later),
            "the beat is too old"
        );
        // A learner counts the voters only.
        let l = Liveness::new(9);
        l.heard(1);
        assert!(!l.lease_valid(&voters, lease));
        l.heard(2);
        assert!(l.lease_valid(&voters, lease));
        assert!(!l.lease_valid(&BTreeSet::new(), lease), "no herd, no lease");
        assert!(
            Liveness::new(1).lease_valid(&[1].into(), lease),
            "a herd of one"
        );
    }

    #[test]
    fn silence_counts_from_start_until_first_heard() {
        let l = Liveness::new(1);
        let t = Instant::now() + Duration::from_secs(3);
        assert!(l.silent_at(2, t) >= Duration::from_secs(3));
        l.heard(2);
        assert!(l.silent_at(2, Instant::now()) < Duration::from_secs(1));
        assert_eq!(l.silent_for(1), Duration::ZERO);
    }
}
