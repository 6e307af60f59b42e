//! `Watch`: the node's feed of changes as a stream, merged across the herd.
//!
//! A node streams its own feed (events and alert transitions it committed, and the
//! herd's ownership moves and node up/down it applied). Without `local_only` it
//! also opens a local stream on every other member and passes on their events and
//! alerts (each target's come from the node that owns it; the herd's own changes
//! are the same on every member, so only this node's are passed on). A member that
//! cannot be streamed from is a "gap" change (what = "missing"), and a "gap" with what = "resumed"
//! when its changes flow again; members that join later are picked up within
//! [`MEMBERS_EVERY`]. The stream ends when the caller hangs up.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use herd_proto::v1 as pb;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tonic::Status;

use super::cluster::{outbound, peer_client};
use crate::cluster::types::NodeId;
use crate::cluster::FleetState;
use crate::model::change::{Change, Feed, CHANGE_KINDS};
use crate::model::now_ms;

/// Changes queued for one caller before the stream waits for it.
const STREAM_DEPTH: usize = 1024;
/// How often the member list is read again, and a lost member tried again.
const MEMBERS_EVERY: Duration = Duration::from_secs(2);

/// The stream `Watch` answers with.
pub type ChangeStream = tokio_stream::wrappers::ReceiverStream<Result<pb::Change, Status>>;

/// What a watcher asked for.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    target: Option<String>,
    kinds: Vec<String>,
}

impl Filter {
    /// The request's filter; an unknown kind is refused, named.
    pub fn of(req: &pb::WatchRequest) -> Result<Filter, Status> {
        for k in &req.kinds {
            if !CHANGE_KINDS.contains(&k.as_str()) {
                return Err(Status::invalid_argument(format!(
                    "unknown kind of change {k:?}: one of {}",
                    CHANGE_KINDS.join(", ")
                )));
            }
        }
        Ok(Filter {
            target: (!req.target.is_empty()).then(|| req.target.clone()),
            kinds: req.kinds.clone(),
        })
    }

    fn wants_kind(&self, kind: &str) -> bool {
        self.kinds.is_empty() || self.kinds.iter().any(|k| k == kind)
    }

    /// Whether a change passes. Gaps and lags always do: they say what is missing.
    fn admits(&self, kind: &str, target: Option<&str>) -> bool {
        if kind == "gap" || kind == "lagged" {
            return true;
        }
        self.wants_kind(kind)
            && match (&self.target, target) {
                (None, _) => true,
                (Some(want), Some(t)) => want == t,
                (Some(_), None) => false,
            }
    }

    /// Whether the other members have anything this watcher wants (their events
    /// and alerts; the herd's changes come from this node).
    fn needs_members(&self) -> bool {
        self.wants_kind("event") || self.wants_kind("alert")
    }
}

/// A change as the API shows it; `node` is the node that saw it.
pub fn change_pb(node: NodeId, c: &Change) -> pb::Change {
    let mut out = pb::Change {
        kind: c.kind().into(),
        node,
        target: c.target().unwrap_or_default().into(),
        ..Default::default()
    };
    match c {
        Change::Event(e) => {
            out.ts_ms = e.ts_ms;
            out.what = e.kind.as_str().into();
            out.message = e.message.clone();
        }
        Change::Alert {
            ts_ms,
            alert_id,
            rule,
            from,
            to,
            suppressed,
            ..
        } => {
            out.ts_ms = *ts_ms;
            out.alert_id = alert_id.clone();
            out.rule = rule.clone();
            out.from = from.as_str().into();
            out.to = to.as_str().into();
            out.what = to.as_str().into();
            out.message = suppressed.clone().unwrap_or_default();
        }
        Change::Owner {
            ts_ms, from, to, ..
        } => {
            out.ts_ms = *ts_ms;
            out.from_node = from.unwrap_or(0);
            out.to_node = to.unwrap_or(0);
            out.what = "moved".into();
        }
        Change::Node {
            ts_ms,
            node: subject,
            up,
            moved,
        } => {
            out.ts_ms = *ts_ms;
            out.subject_node = *subject;
            out.what = if *up { "up" } else { "down" }.into();
            out.message = if *up {
                String::new()
            } else {
                format!("{moved} targets moved to other nodes")
            };
        }
    }
    out
}

/// Starts the streams a `Watch` call answers with: this node's feed and, unless
/// `local_only`, every other member's.
pub fn start(
    me: NodeId,
    feed: &Feed,
    fleet: Arc<FleetState>,
    token: Option<String>,
    req: pb::WatchRequest,
) -> Result<ChangeStream, Status> {
    let filter = Filter::of(&req)?;
    let (tx, rx) = mpsc::channel(STREAM_DEPTH);
    tokio::spawn(forward_local(
        me,
        feed.subscribe(),
        filter.clone(),
        tx.clone(),
    ));
    if !req.local_only && filter.needs_members() {
        let peer_req = pb::WatchRequest {
            local_only: true,
            ..req
        };
        tokio::spawn(follow_members(me, fleet, token, peer_req, filter, tx));
    }
    Ok(ChangeStream::new(rx))
}

/// This node's feed into the caller's stream, until the caller hangs up.
async fn forward_local(
    me: NodeId,
    mut feed: broadcast::Receiver<Arc<Change>>,
    filter: Filter,
    tx: mpsc::Sender<Result<pb::Change, Status>>,
) {
    loop {
        let change = tokio::select! {
            _ = tx.closed() => return,
            r = feed.recv() => r,
        };
        let out = match change {
            Ok(c) if filter.admits(c.kind(), c.target()) => change_pb(me, &c),
            Ok(_) => continue,
            Err(broadcast::error::RecvError::Lagged(n)) => pb::Change {
                ts_ms: now_ms(),
                kind: "lagged".into(),
                node: me,
                count: n,
                message: format!("the watcher read too slowly: {n} changes were skipped"),
                ..Default::default()
            },
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if tx.send(Ok(out)).await.is_err() {
            return;
        }
    }
}

/// One task per other member, started as members appear and stopped as they go.
async fn follow_members(
    me: NodeId,
    fleet: Arc<FleetState>,
    token: Option<String>,
    req: pb::WatchRequest,
    filter: Filter,
    tx: mpsc::Sender<Result<pb::Change, Status>>,
) {
    let mut tasks: HashMap<NodeId, JoinHandle<()>> = HashMap::new();
    loop {
        let members = fleet.cluster().members();
        tasks.retain(|id, t| {
            let keep = members.iter().any(|(m, _)| m == id) && !t.is_finished();
            if !keep {
                t.abort();
            }
            keep
        });
        for (id, node) in members {
            if id == me || tasks.contains_key(&id) {
                continue;
            }
            let member = Member {
                me,
                id,
                addr: node.addr.clone(),
                fleet: fleet.clone(),
                token: token.clone(),
            };
            tasks.insert(
                id,
                tokio::spawn(member.forward(req.clone(), filter.clone(), tx.clone())),
            );
        }
        tokio::select! {
            _ = tx.closed() => break,
            _ = tokio::time::sleep(MEMBERS_EVERY) => {}
        }
    }
    for t in tasks.values() {
        t.abort();
    }
}

/// Another member whose changes this node passes on.
struct Member {
    me: NodeId,
    id: NodeId,
    addr: String,
    fleet: Arc<FleetState>,
    token: Option<String>,
}

impl Member {
    fn gap(&self, what: &str, message: String) -> pb::Change {
        pb::Change {
            ts_ms: now_ms(),
            kind: "gap".into(),
            node: self.me,
            subject_node: self.id,
            what: what.into(),
            message,
            ..Default::default()
        }
    }

    /// The member's local stream into the caller's, reopened after it breaks;
    /// one "gap" when it breaks, one "resumed" when it flows again.
    async fn forward(
        self,
        req: pb::WatchRequest,
        filter: Filter,
        tx: mpsc::Sender<Result<pb::Change, Status>>,
    ) {
        let mut in_gap = false;
        loop {
            let why = match self.open(req.clone()).await {
                Ok(mut stream) => {
                    if in_gap {
                        let resumed =
                            self.gap("resumed", format!("node {} streams again", self.id));
                        if tx.send(Ok(resumed)).await.is_err() {
                            return;
                        }
                        in_gap = false;
                    }
                    loop {
                        let next = tokio::select! {
                            _ = tx.closed() => return,
                            n = stream.message() => n,
                        };
                        match next {
                            Ok(Some(c)) if self.passes(&c, &filter) => {
                                if tx.send(Ok(c)).await.is_err() {
                                    return;
                                }
                            }
                            Ok(Some(_)) => {}
                            Ok(None) => break "its stream ended".to_string(),
                            Err(s) => break s.message().to_string(),
                        }
                    }
                }
                Err(s) => s.message().to_string(),
            };
            if !in_gap {
                let gap = self.gap(
                    "missing",
                    format!(
                        "node {}'s changes are missing from this stream: {why}",
                        self.id
                    ),
                );
                if tx.send(Ok(gap)).await.is_err() {
                    return;
                }
                in_gap = true;
            }
            tokio::select! {
                _ = tx.closed() => return,
                _ = tokio::time::sleep(MEMBERS_EVERY) => {}
            }
        }
    }

    async fn open(&self, req: pb::WatchRequest) -> Result<tonic::Streaming<pb::Change>, Status> {
        let mut client = peer_client(&self.fleet, &self.addr)?;
        let r = outbound(self.token.as_deref(), req, None);
        Ok(client.watch(r).await?.into_inner())
    }

    /// What a member's stream contributes: its events and alerts (and its own
    /// lags); the herd's changes come from this node.
    fn passes(&self, c: &pb::Change, filter: &Filter) -> bool {
        matches!(c.kind.as_str(), "event" | "alert" | "lagged")
            && filter.admits(&c.kind, (!c.target.is_empty()).then_some(c.target.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AlertState, Event, EventKind};

    fn req(target: &str, kinds: &[&str]) -> pb::WatchRequest {
        pb::WatchRequest {
            local_only: true,
            target: target.into(),
            kinds: kinds.iter().map(|k| k.to_string()).collect(),
        }
    }

    #[test]
    fn an_unknown_kind_is_refused_by_name() {
        let e = Filter::of(&req("", &["event", "alerts"])).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("\"alerts\""), "{}", e.message());
    }

    #[test]
    fn the_filter_keeps_what_was_asked_and_always_the_gaps() {
        let f = Filter::of(&req("web1", &["alert"])).unwrap();
        assert!(f.admits("alert", Some("web1")));
        assert!(!f.admits("alert", Some("web2")));
        assert!(!f.admits("event", Some("web1")));
        assert!(!f.admits("node", None));
        assert!(f.admits("gap", None));
        assert!(f.admits("lagged", None));
        assert!(f.needs_members());
        let herd_only = Filter::of(&req("", &["owner", "node"])).unwrap();
        assert!(herd_only.admits("node", None));
        assert!(!herd_only.needs_members());
    }

    #[test]
    fn changes_show_their_fields() {
        let e = change_pb(
            3,
            &Change::Event(Event {
                ts_ms: 7,
                target: "web1".into(),
                kind: EventKind::TargetDown,
                message: "refused".into(),
            }),
        );
        assert_eq!(
            (e.kind.as_str(), e.node, e.target.as_str(), e.what.as_str()),
            ("event", 3, "web1", "target_down")
        );
        let a = change_pb(
            1,
            &Change::Alert {
                ts_ms: 8,
                target: "web1".into(),
                alert_id: "cpu/web1".into(),
                rule: "cpu".into(),
                from: AlertState::Pending,
                to: AlertState::Firing,
                suppressed: None,
            },
        );
        assert_eq!((a.from.as_str(), a.to.as_str()), ("pending", "firing"));
        let o = change_pb(
            1,
            &Change::Owner {
                ts_ms: 9,
                target: "web1".into(),
                from: Some(2),
                to: None,
            },
        );
        assert_eq!((o.from_node, o.to_node), (2, 0));
        let n = change_pb(
            1,
            &Change::Node {
                ts_ms: 9,
                node: 2,
                up: false,
                moved: 4,
            },
        );
        assert_eq!((n.subject_node, n.what.as_str()), (2, "down"));
        assert!(n.message.contains("4 targets"), "{}", n.message);
    }
}
