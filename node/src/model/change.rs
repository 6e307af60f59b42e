//! What changes on a node, as it happens: the feed behind `herd watch` and the
//! HTTP face's event stream. The store publishes events and alert transitions once
//! they are committed (a watcher never sees what a crash could take back); the
//! cluster publishes ownership moves and node up/down as the herd applies them.
//! Publishing never blocks and never fails: with nobody watching a change is
//! dropped, and a watcher that reads too slowly is told how many it missed.
use std::sync::Arc;

use tokio::sync::broadcast;

use super::{AlertState, Event, NodeId};

/// Changes a slow watcher may fall behind by before it skips some.
pub const FEED_CAPACITY: usize = 4096;

/// One change on this node.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// An event was recorded (target up/down, check status, log match, ...).
    Event(Event),
    /// An alert changed state.
    Alert {
        ts_ms: i64,
        target: String,
        alert_id: String,
        rule: String,
        from: AlertState,
        to: AlertState,
        /// Why no notification went out although one was due.
        suppressed: Option<String>,
    },
    /// A target moved between nodes (`None`: nobody).
    Owner {
        ts_ms: i64,
        target: String,
        from: Option<NodeId>,
        to: Option<NodeId>,
    },
    /// The herd recorded a node as down or up again; `moved`: targets it gave up.
    Node {
        ts_ms: i64,
        node: NodeId,
        up: bool,
        moved: usize,
    },
}

impl Change {
    /// The kind's name, as watchers filter on it.
    pub fn kind(&self) -> &'static str {
        match self {
            Change::Event(_) => "event",
            Change::Alert { .. } => "alert",
            Change::Owner { .. } => "owner",
            Change::Node { .. } => "node",
        }
    }

    /// The target the change is about, if any.
    pub fn target(&self) -> Option<&str> {
        match self {
            Change::Event(e) => Some(&e.target),
            Change::Alert { target, .. } | Change::Owner { target, .. } => Some(target),
            Change::Node { .. } => None,
        }
    }
}

/// The kinds a watcher may ask for.
pub const CHANGE_KINDS: [&str; 4] = ["event", "alert", "owner", "node"];

/// The node's feed of changes; clones publish to the same watchers.
#[derive(Debug, Clone)]
pub struct Feed {
    tx: broadcast::Sender<Arc<Change>>,
}

impl Default for Feed {
    fn default() -> Self {
        Feed::new(FEED_CAPACITY)
    }
}

impl Feed {
    pub fn new(capacity: usize) -> Feed {
        let (tx, _) = broadcast::channel(capacity.max(1));
        Feed { tx }
    }

    /// Tells every watcher; never blocks.
    pub fn publish(&self, change: Change) {
        if self.tx.receiver_count() > 0 {
            let _ = self.tx.send(Arc::new(change));
        }
    }

    /// A new watcher: it sees the changes published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::EventKind;

    fn event(target: &str) -> Change {
        Change::Event(Event {
            ts_ms: 1,
            target: target.into(),
            kind: EventKind::TargetDown,
            message: "gone".into(),
        })
    }

    #[test]
    fn watchers_see_what_is_published_after_they_subscribe() {
        let feed = Feed::new(8);
        feed.publish(event("before"));
        let mut rx = feed.subscribe();
        feed.publish(event("a"));
        feed.clone().publish(event("b"));
        assert_eq!(rx.try_recv().unwrap().target(), Some("a"));
        assert_eq!(rx.try_recv().unwrap().target(), Some("b"));
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn a_slow_watcher_is_told_how_many_it_missed() {
        let feed = Feed::new(2);
        let mut rx = feed.subscribe();
        for t in ["a", "b", "c", "d"] {
            feed.publish(event(t));
        }
        match rx.try_recv() {
            Err(broadcast::error::TryRecvError::Lagged(n)) => assert_eq!(n, 2),
            other => panic!("expected a lag, got {other:?}"),
        }
        assert_eq!(rx.try_recv().unwrap().target(), Some("c"));
    }
}
