//! The herd's changes on the node's feed: ownership moves and node up/down, read
//! off the applied state (every member applies the same log, so every member
//! publishes the same herd changes; the watch fan-out takes them from one node).
use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::types::ClusterState;
use crate::model::change::{Change, Feed};
use crate::model::now_ms;

/// Publishes what each newly applied state changed, until `stop`. The state
/// when it starts is the baseline: nothing is published for it.
pub async fn follow(
    mut state: watch::Receiver<Arc<ClusterState>>,
    feed: Feed,
    stop: CancellationToken,
) {
    let mut seen = state.borrow_and_update().clone();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            r = state.changed() => if r.is_err() { return },
        }
        let now = state.borrow_and_update().clone();
        for change in diff(&seen, &now, now_ms()) {
            feed.publish(change);
        }
        seen = now;
    }
}

/// The herd changes between two applied states (pure): targets whose owner
/// differs, nodes whose health record says up where it said down or the reverse.
pub fn diff(old: &ClusterState, new: &ClusterState, ts_ms: i64) -> Vec<Change> {
    let mut out = Vec::new();
    if old.ownership_version != new.ownership_version || old.owners != new.owners {
        let names: BTreeSet<&String> = old.owners.keys().chain(new.owners.keys()).collect();
        for target in names {
            let (from, to) = (old.owners.get(target), new.owners.get(target));
            if from != to {
                out.push(Change::Owner {
                    ts_ms,
                    target: target.clone(),
                    from: from.copied(),
                    to: to.copied(),
                });
            }
        }
    }
    for (node, h) in &new.health {
        let before = old.health.get(node);
        let changed = match before {
            Some(b) => b.up != h.up || b.transitions != h.transitions,
            // A first record is news only when it says down (up is the default).
            None => !h.up,
        };
        if changed {
            out.push(Change::Node {
                ts_ms: if h.since_ms > 0 { h.since_ms } else { ts_ms },
                node: *node,
                up: h.up,
                moved: h.moved.len(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::types::NodeHealth;

    fn health(up: bool, transitions: u64, moved: &[&str]) -> NodeHealth {
        NodeHealth {
            up,
            since_ms: 5,
            seen_by: 1,
            transitions,
            moved: moved.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn owner_moves_and_node_health_are_the_changes() {
        let mut old = ClusterState::default();
        old.owners.insert("a".into(), 1);
        old.owners.insert("b".into(), 2);
        old.health.insert(2, health(true, 0, &[]));
        let mut new = old.clone();
        new.ownership_version += 1;
        new.owners.insert("b".into(), 1);
        new.owners.remove("a");
        new.owners.insert("c".into(), 3);
        new.health.insert(2, health(false, 1, &["b"]));
        new.health.insert(3, health(true, 0, &[]));
        let changes = diff(&old, &new, 9);
        assert_eq!(
            changes,
            vec![
                Change::Owner {
                    ts_ms: 9,
                    target: "a".into(),
                    from: Some(1),
                    to: None
                },
                Change::Owner {
                    ts_ms: 9,
                    target: "b".into(),
                    from: Some(2),
                    to: Some(1)
                },
                Change::Owner {
                    ts_ms: 9,
                    target: "c".into(),
                    from: None,
                    to: Some(3)
                },
                Change::Node {
                    ts_ms: 5,
                    node: 2,
                    up: false,
                    moved: 1
                },
            ]
        );
        assert!(diff(&new, &new, 10).is_empty(), "the same state: no change");
    }

    #[test]
    fn a_node_down_and_back_between_two_looks_is_still_seen() {
        let mut old = ClusterState::default();
        old.health.insert(2, health(true, 0, &[]));
        let mut new = old.clone();
        new.health.insert(2, health(true, 2, &[]));
        assert_eq!(diff(&old, &new, 1).len(), 1);
    }
}
