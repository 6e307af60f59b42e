//! Raft types of the herd: the commands replicated through the log and the state
//! machine they build. The state machine is plain data with a pure `apply`, so
//! that the redb store, tests and every node agree on what a command does.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::Alert;

openraft::declare_raft_types!(
    /// Herd's openraft configuration.
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
        NodeId = u64,
        Node = openraft::BasicNode,
        SnapshotData = std::io::Cursor<Vec<u8>>,
);

pub type NodeId = u64;

/// What the herd agrees on, one log entry at a time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// A fleet spec validated by the node that proposed it; every node parses the
    /// text again when it applies it.
    ApplySpec { text: String, source: String },
    /// The leader's assignment of targets to nodes.
    SetOwnership {
        owners: BTreeMap<String, NodeId>,
        reason: String,
    },
    /// Alert changes of owned targets, so a new owner continues them.
    Alerts {
        upserts: Vec<Alert>,
        deleted: Vec<String>,
    },
    /// Idempotency keys of delivered notifications (no second send after a takeover).
    Sent { keys: Vec<String> },
    /// A node's health as the leader concluded it.
    NodeHealth {
        node: NodeId,
        up: bool,
        since_ms: i64,
        seen_by: NodeId,
    },
}

/// What applying a command returns to the proposer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CommandResponse {
    /// The version the command produced (spec or ownership), when it made one.
    pub version: u64,
}

/// A node's health record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeHealth {
    pub up: bool,
    pub since_ms: i64,
    pub seen_by: NodeId,
}

/// Most sent keys remembered; the oldest are forgotten first.
pub const MAX_SENT_KEYS: usize = 100_000;

/// The replicated state: the state machine's data.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    pub spec_version: u64,
    pub spec_text: String,
    pub spec_source: String,
    pub ownership_version: u64,
    pub owners: BTreeMap<String, NodeId>,
    pub alerts: BTreeMap<String, Alert>,
    /// Delivered idempotency keys in delivery order (bounded by MAX_SENT_KEYS).
    pub sent: std::collections::VecDeque<String>,
    pub health: BTreeMap<NodeId, NodeHealth>,
}

impl ClusterState {
    /// Applies one command (pure, deterministic: every node gets the same result).
    pub fn apply(&mut self, cmd: &Command) -> CommandResponse {
        match cmd {
            Command::ApplySpec { text, source } => {
                self.spec_version += 1;
                self.spec_text = text.clone();
                self.spec_source = source.clone();
                CommandResponse {
                    version: self.spec_version,
                }
            }
            Command::SetOwnership { owners, .. } => {
                self.ownership_version += 1;
                self.owners = owners.clone();
                CommandResponse {
                    version: self.ownership_version,
                }
            }
            Command::Alerts { upserts, deleted } => {
                for a in upserts {
                    self.alerts.insert(a.id.clone(), a.clone());
                }
                for id in deleted {
                    self.alerts.remove(id);
                }
                CommandResponse::default()
            }
            Command::Sent { keys } => {
                for k in keys {
                    if !self.sent.contains(k) {
                        self.sent.push_back(k.clone());
                    }
                }
                while self.sent.len() > MAX_SENT_KEYS {
                    self.sent.pop_front();
                }
                CommandResponse::default()
            }
            Command::NodeHealth {
                node,
                up,
                since_ms,
                seen_by,
            } => {
                self.health.insert(
                    *node,
                    NodeHealth {
                        up: *up,
                        since_ms: *since_ms,
                        seen_by: *seen_by,
                    },
                );
                CommandResponse::default()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_count_applied_commands() {
        let mut s = ClusterState::default();
        let r = s.apply(&Command::ApplySpec {
            text: "x".into(),
            source: "f".into(),
        });
        assert_eq!(r.version, 1);
        let r = s.apply(&Command::SetOwnership {
            owners: [("a".to_string(), 2)].into(),
            reason: "init".into(),
        });
        assert_eq!(r.version, 1);
        assert_eq!(s.owners["a"], 2);
        s.apply(&Command::Sent {
            keys: vec!["k".into(), "k".into()],
        });
        assert_eq!(s.sent.len(), 1);
    }
}
