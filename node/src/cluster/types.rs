//! Raft types of the herd: the commands replicated through the log and the state
//! machine they build. The state machine is plain data with a pure `apply`, so
//! that the redb store, tests and every node agree on what a command does.
use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::keylog::KeyLog;
use crate::model::Alert;
pub use crate::model::ForgottenAlert;
use crate::notify::worker::Gate;
use crate::ownership::Pause;
use crate::store::alerting::{OutboxEntry, Sender, Silence};

openraft::declare_raft_types!(
    /// Herd's openraft configuration.
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
        NodeId = u64,
        Node = openraft::BasicNode,
        SnapshotData = std::io::Cursor<Vec<u8>>,
);

pub use crate::model::{NodeId, NodeRecord};

/// What the herd agrees on, one log entry at a time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// A fleet spec validated by the node that proposed it; every node parses the
    /// text again when it applies it.
    ApplySpec {
        text: String,
        source: String,
    },
    /// The leader's assignment of targets to nodes.
    SetOwnership {
        owners: BTreeMap<String, NodeId>,
        reason: String,
    },
    /// Alert changes of owned targets, so a new owner continues them, with the
    /// notifications the owner queued for them and those it finished (delivered or
    /// given up): a new owner delivers what the last one had not.
    Alerts {
        upserts: Vec<Alert>,
        deleted: Vec<String>,
        #[serde(default)]
        queued: Vec<OutboxEntry>,
        #[serde(default)]
        delivered: Vec<String>,
        /// Who proposed them, and under which ownership map: changes of a target
        /// are taken only from its owner, and only when that owner's tenure began
        /// at or before `fence.ownership_version` (a proposal made before the
        /// target moved away, and committed late — a cut that delayed it, a
        /// forward in flight — is refused). None: the leader's own notices.
        #[serde(default)]
        fence: Option<AlertFence>,
    },
    /// Idempotency keys of delivered notifications (no second send after a takeover).
    Sent {
        keys: Vec<String>,
    },
    /// A node's health as the leader concluded it (a change of `up` counts a
    /// transition; the notification it causes is keyed by it).
    NodeHealth {
        node: NodeId,
        up: bool,
        since_ms: i64,
        seen_by: NodeId,
        /// Targets that moved away from (down) or back to (up) the node, for the notice.
        moved: Vec<String>,
    },
    /// What a node tells the herd about itself: its address and how its machine is
    /// watched (`MachineSpec` text).
    NodeInfo {
        node: NodeId,
        addr: String,
        machine: String,
    },
    /// A node is leaving: it gets no targets any more (its targets move first, then
    /// the membership changes).
    Drain {
        node: NodeId,
    },
    /// A node left or was removed: forget its records.
    Forget {
        node: NodeId,
    },
    Pause {
        target: String,
        pause: Pause,
    },
    Resume {
        target: String,
    },
    /// A silence for the whole herd; silences that ended before it was made are
    /// dropped at the same time.
    SilenceAdd {
        silence: Silence,
    },
    SilenceRemove {
        id: String,
    },
    /// Ends the pauses whose end is at or before `now_ms` (the proposer's clock,
    /// so that every node ends the same ones).
    ExpirePauses {
        now_ms: i64,
    },
    /// The herd's id, made when it was initialised (or by the first leader of a
    /// herd from before ids): the first one applied stays.
    HerdId {
        id: String,
    },
    /// Where checks that tail files stopped (log, nginx, json_state), by the key
    /// they persist under: a new owner continues from there. A mark older than the
    /// one recorded (by `at_ms`, the writer's clock) is ignored.
    Tails {
        marks: Vec<(String, TailMark)>,
    },
    /// A node asks to run a remediation action: granted at most once per `key`
    /// (an alert transition) and at most `max_per_hour` per (rule, target) in the
    /// whole herd, counted at `at_ms` (the proposer's clock). `nonce` tells the
    /// same request retried (granted again) from another node's (refused).
    ActionRun {
        key: String,
        rule: String,
        target: String,
        at_ms: i64,
        max_per_hour: u32,
        nonce: u64,
        node: NodeId,
    },
    /// Level 2. Resolved alerts the owner's engine forgot (settled past its
    /// retention): the herd drops each one's copy and keeps only its transition
    /// count, so a later episode counts on (idempotency keys stay unique). Taken
    /// only from the target's owner, like [`Command::Alerts`], and only for an
    /// alert still inactive with no more transitions than the owner forgot.
    ForgetAlerts {
        alerts: Vec<ForgottenAlert>,
        fence: Option<AlertFence>,
    },
    /// The leader drops these forgotten alerts' counts (the herd keeps at most
    /// [`crate::model::MAX_FORGOTTEN`]; it names the ids, those that settled
    /// first, so that every node drops the same ones whatever it holds of their
    /// ages). Level 3.
    TrimForgotten {
        ids: Vec<String>,
    },
    /// A command of a later build's level, which this build cannot read: kept as
    /// it came (so it is stored and sent on unchanged) and applied as nothing,
    /// counted and logged. Proposers never send a command above the level every
    /// member advertises ([`super::node::ClusterNode::herd_level`]), so this is met only when
    /// a node was added after a command of a later level was committed (a build
    /// from before levels has no such fallback: it cannot read that entry at all).
    #[serde(untagged)]
    Unknown(serde_json::Value),
}

/// The highest level of [`Command`] this build applies. Level 1: every command
/// before levels existed; level 2 adds [`Command::ForgetAlerts`]; level 3
/// [`Command::TrimForgotten`] (a level-2 build keeps every count). A node says its
/// level in its beats to every member (not in the replicated state: a node of an
/// older build drops fields it does not know from what it applies) and a command
/// of level n is proposed only when every member is heard saying n or more
/// ([`super::node::ClusterNode::herd_level`]): during a rolling upgrade the nodes
/// still on the older build keep applying everything they are sent.
///
/// A change to the shape of an existing command (a new field without a default,
/// a new value of an enum inside it, such as a severity) needs a new level too:
/// a build that cannot decode a command of a kind it knows reads it as
/// [`Command::Unknown`] and applies nothing, where before levels it stopped.
pub const COMMAND_LEVEL: u32 = 3;

/// Commands of a later level than this build's applied so far (as nothing).
static UNKNOWN_APPLIED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many commands this process applied as nothing because it could not read them.
pub fn unknown_commands_applied() -> u64 {
    UNKNOWN_APPLIED.load(std::sync::atomic::Ordering::Relaxed)
}

/// A check's persisted position (a log tail's file and offset, as JSON) as the
/// target's owner last told the herd.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TailMark {
    pub value: String,
    pub at_ms: i64,
}

/// Marks kept at most (the oldest are forgotten first).
pub const MAX_TAIL_MARKS: usize = 100_000;

/// A remediation action run the herd granted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionRunRecord {
    pub rule: String,
    pub target: String,
    pub at_ms: i64,
    pub nonce: u64,
    pub node: NodeId,
}

/// How long granted action runs are kept (their keys refuse a second run; the
/// last hour's count the rate).
pub const ACTION_RUNS_KEPT_MS: i64 = 24 * 3_600_000;
const HOUR_MS: i64 = 3_600_000;
/// What [`CommandResponse::refused`] says when the key was granted to another request.
pub const ACTION_ALREADY_RUN: &str = "already run for this transition";

/// The parts the state is stored in: an applied batch rewrites only the parts its
/// commands change (alert updates do not rewrite a large fleet spec).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Part {
    Spec,
    Owners,
    Alerts,
    /// The tail marks: written by every owner once a second, so kept apart.
    Tails,
    Rest,
}

impl Part {
    pub const ALL: [Part; 5] = [
        Part::Spec,
        Part::Owners,
        Part::Alerts,
        Part::Tails,
        Part::Rest,
    ];
}

impl Command {
    /// The parts of [`ClusterState`] that applying this command may change.
    pub fn parts(&self) -> &'static [Part] {
        match self {
            Command::ApplySpec { .. } => &[Part::Spec],
            // A new map also drops the alerts of targets that left it.
            Command::SetOwnership { .. } => &[Part::Owners, Part::Alerts],
            Command::Alerts { .. }
            | Command::ForgetAlerts { .. }
            | Command::TrimForgotten { .. } => &[Part::Alerts],
            Command::Tails { .. } => &[Part::Tails],
            Command::Unknown(_) => &[],
            _ => &[Part::Rest],
        }
    }

    /// The command level a node must apply to read this command.
    pub fn level(&self) -> u32 {
        match self {
            Command::ForgetAlerts { .. } => 2,
            Command::TrimForgotten { .. } => 3,
            Command::Unknown(_) => u32::MAX,
            _ => 1,
        }
    }
}

/// The proposer of an alert change and the ownership map it acted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertFence {
    pub node: NodeId,
    pub ownership_version: u64,
}

/// What applying a command returns to the proposer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CommandResponse {
    /// The version the command produced (spec or ownership), when it made one.
    pub version: u64,
    /// Why the command was refused, for those that can be (an action run).
    #[serde(default)]
    pub refused: Option<String>,
}

/// A node's health record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeHealth {
    pub up: bool,
    pub since_ms: i64,
    pub seen_by: NodeId,
    /// Changes of `up` so far (the first "down" is 1).
    pub transitions: u64,
    pub moved: Vec<String>,
}

/// Most sent keys remembered; the oldest are forgotten first.
pub const MAX_SENT_KEYS: usize = 100_000;

/// Most undelivered alert notifications kept for a takeover; beyond it the oldest
/// are forgotten (their owner still delivers them; only a takeover loses them).
pub const MAX_NOTICES: usize = 10_000;

/// Most delivered alert notification keys remembered (a node that comes back with
/// one of them still in its outbox drops it).
pub const MAX_DELIVERED_KEYS: usize = 10_000;

/// The replicated state: the state machine's data.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    pub spec_version: u64,
    pub spec_text: String,
    pub spec_source: String,
    pub ownership_version: u64,
    pub owners: imbl::OrdMap<String, NodeId>,
    /// Per target, the ownership version at which its current owner got it (the
    /// start of the owner's tenure): alert changes proposed under an older map
    /// are refused ([`AlertFence`]), an outbox entry queued under an older tenure
    /// and never recorded is not sent.
    #[serde(default)]
    pub tenure: imbl::OrdMap<String, u64>,
    /// Shared values in a persistent map: the copy of the state each applied
    /// batch makes shares every alert and every node of the map but the changed
    /// path (10,000 alerts: 26 ms a deep copy before, 4 ms a copy of the map).
    pub alerts: imbl::OrdMap<String, Arc<Alert>>,
    /// Alert notifications queued by the owner of their target and not delivered
    /// yet, by idempotency key: a new owner delivers them (bounded by MAX_NOTICES).
    #[serde(default)]
    pub notices: imbl::OrdMap<String, OutboxEntry>,
    /// Keys of alert notifications delivered (or given up), oldest first (bounded
    /// by MAX_DELIVERED_KEYS): never sent again by any node.
    #[serde(default)]
    pub delivered: KeyLog,
    /// Keys of the peer health notices queued so far, in order (bounded by
    /// MAX_SENT_KEYS): a new leader does not queue them again.
    pub sent: KeyLog,
    pub health: BTreeMap<NodeId, NodeHealth>,
    pub nodes: BTreeMap<NodeId, NodeRecord>,
    pub pauses: BTreeMap<String, Pause>,
    /// Nodes on their way out: members still, owners of nothing.
    pub draining: std::collections::BTreeSet<NodeId>,
    /// The herd's silences by id.
    pub silences: BTreeMap<String, Silence>,
    /// The herd's id (random, made once); calls between nodes of different herds
    /// are refused.
    #[serde(default)]
    pub herd_id: Option<String>,
    /// Remediation action runs granted in the last [`ACTION_RUNS_KEPT_MS`], by key.
    #[serde(default)]
    pub action_runs: BTreeMap<String, ActionRunRecord>,
    /// Checks' positions in the files they tail, by key ([`Command::Tails`]).
    #[serde(default)]
    pub tails: imbl::OrdMap<String, TailMark>,
    /// Alerts forgotten by their owner ([`Command::ForgetAlerts`]), by id: only
    /// their transition counts, which a later episode continues.
    #[serde(default)]
    pub forgotten: imbl::OrdMap<String, ForgottenAlert>,
}

impl ClusterState {
    /// What the leader trims ([`Command::TrimForgotten`]) when the herd holds
    /// more than MAX_FORGOTTEN forgotten alerts' counts: the ids of those that
    /// settled first, down to nine tenths of it (so a herd at the bound trims once
    /// per tenth, not on every forget). Empty: nothing to trim.
    pub fn forgotten_to_trim(&self) -> Vec<String> {
        let max = crate::model::MAX_FORGOTTEN;
        if self.forgotten.len() <= max {
            return Vec::new();
        }
        let mut by_age: Vec<(i64, &String)> = (self.forgotten.iter())
            .map(|(id, f)| (f.settled_ms, id))
            .collect();
        by_age.sort_unstable();
        let excess = self.forgotten.len() - max * 9 / 10;
        by_age
            .into_iter()
            .take(excess)
            .map(|(_, id)| id.clone())
            .collect()
    }
}

/// Removes the entries of `map` whose value is `gone` (a persistent map has no
/// `retain`).
fn remove_where<V: Clone>(map: &mut imbl::OrdMap<String, V>, gone: impl Fn(&V) -> bool) {
    let keys: Vec<String> = (map.iter())
        .filter(|(_, v)| gone(v))
        .map(|(k, _)| k.clone())
        .collect();
    for k in keys {
        map.remove(&k);
    }
}

/// How long a node waits for the herd to record an alert notification it queued
/// before it delivers it anyway. Its commit through Raft normally takes ms. A node
/// that cannot commit but still holds its lease is cut from the leader only (a
/// partial or one-way partition): the leader, not hearing it, gives its targets to
/// another node within `failover_after`, which sends what the herd recorded or
/// redoes the transition under the same key; had the cut-off node sent it too, the
/// receiver would get the key twice (the chaos harness showed it with a 1 s
/// grace). Only a node that keeps its targets this long without being able to
/// commit sends anyway: a notification late and perhaps twice, never lost.
pub const NOTICE_COMMIT_GRACE_MS: i64 = 30_000;

impl ClusterState {
    /// Whether node `me` (`leading`: the leader) delivers the replicated outbox
    /// entry `e` now (pure): never one delivered already, only as its sender (the
    /// owner of its target, or the leader for a peer health notice), and not before
    /// the herd recorded it (within [`NOTICE_COMMIT_GRACE_MS`]), so that a sender
    /// that dies right after sending leaves a state from which nobody sends it again.
    pub fn gate_notice(&self, e: &OutboxEntry, me: NodeId, leading: bool, now_ms: i64) -> Gate {
        let key = &e.notification.idempotency_key;
        if self.delivered.contains(key) {
            return Gate::Drop;
        }
        let sender = match e.sender {
            Sender::Local => true,
            Sender::Owner => self.owners.get(&e.notification.alert.target) == Some(&me),
            Sender::Leader => leading,
        };
        if !sender {
            return Gate::Drop;
        }
        let recorded = self.notices.contains_key(key);
        // Queued by the owner in an earlier tenure of the target and never
        // recorded: the herd's history of the alert went on without it (another
        // owner in between redid the transition under its own key).
        if !recorded
            && e.sender == Sender::Owner
            && e.tenure > 0
            && self
                .tenure
                .get(&e.notification.alert.target)
                .is_some_and(|&t| t > e.tenure)
        {
            return Gate::Drop;
        }
        if !recorded && now_ms - e.created_ms < NOTICE_COMMIT_GRACE_MS {
            return Gate::Wait;
        }
        Gate::Send
    }

    /// Applies one command (pure, deterministic: every node gets the same result).
    pub fn apply(&mut self, cmd: &Command) -> CommandResponse {
        match cmd {
            Command::ApplySpec { text, source } => self.apply_spec(text, source),
            Command::SetOwnership { owners, .. } => self.set_ownership(owners),
            Command::Alerts {
                upserts,
                deleted,
                queued,
                delivered,
                fence,
            } => self.apply_alerts(upserts, deleted, queued, delivered, *fence),
            Command::Sent { keys } => self.record_sent(keys),
            Command::NodeHealth {
                node,
                up,
                since_ms,
                seen_by,
                moved,
            } => self.set_node_health(
                *node,
                NodeHealth {
                    up: *up,
                    since_ms: *since_ms,
                    seen_by: *seen_by,
                    transitions: 0,
                    moved: moved.clone(),
                },
            ),
            Command::NodeInfo {
                node,
                addr,
                machine,
            } => self.set_node_info(*node, addr, machine),
            Command::SilenceAdd { silence } => self.add_silence(silence),
            Command::SilenceRemove { id } => self.remove_silence(id),
            Command::Drain { node } => self.drain(*node),
            Command::Forget { node } => self.forget(*node),
            Command::Pause { target, pause } => self.pause(target, pause),
            Command::Resume { target } => self.resume(target),
            Command::HerdId { id } => self.set_herd_id(id),
            Command::ExpirePauses { now_ms } => self.expire_pauses(*now_ms),
            Command::Tails { marks } => self.record_tails(marks),
            Command::ActionRun {
                key,
                rule,
                target,
                at_ms,
                max_per_hour,
                nonce,
                node,
            } => self.claim_action(
                key,
                ActionRunRecord {
                    rule: rule.clone(),
                    target: target.clone(),
                    at_ms: *at_ms,
                    nonce: *nonce,
                    node: *node,
                },
                *max_per_hour,
            ),
            Command::ForgetAlerts { alerts, fence } => self.forget_alerts(alerts, *fence),
            Command::TrimForgotten { ids } => {
                for id in ids {
                    self.forgotten.remove(id);
                }
                CommandResponse::default()
            }
            Command::Unknown(raw) => {
                let n = UNKNOWN_APPLIED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                let kind = match raw {
                    serde_json::Value::Object(m) => m.keys().next().cloned(),
                    serde_json::Value::String(s) => Some(s.clone()),
                    _ => None,
                };
                tracing::warn!(
                    kind = kind.as_deref().unwrap_or("?"),
                    total = n,
                    "applied a herd command of a later build as nothing (this build reads command level {COMMAND_LEVEL}); upgrade this node"
                );
                CommandResponse::default()
            }
        }
    }

    /// Drops the herd's copy of alerts their owner forgot, keeping their counts.
    /// An alert active again, or with more transitions than the owner forgot
    /// (it went on since), stays; so does one proposed by a node that is not the
    /// target's owner in its current tenure.
    fn forget_alerts(
        &mut self,
        alerts: &[ForgottenAlert],
        fence: Option<AlertFence>,
    ) -> CommandResponse {
        let mut refused = 0usize;
        for f in alerts {
            if !self.within_tenure(fence, &f.target, None) {
                refused += 1;
                continue;
            }
            if let Some(a) = self.alerts.get(&f.id) {
                let settled = matches!(
                    a.state,
                    crate::model::AlertState::Inactive | crate::model::AlertState::Resolved
                );
                if !settled || a.transitions > f.transitions {
                    continue;
                }
                self.alerts.remove(&f.id);
            }
            let (transitions, settled_ms) =
                self.forgotten
                    .get(&f.id)
                    .map_or((f.transitions, f.settled_ms), |old| {
                        (
                            old.transitions.max(f.transitions),
                            old.settled_ms.max(f.settled_ms),
                        )
                    });
            self.forgotten.insert(
                f.id.clone(),
                ForgottenAlert {
                    transitions,
                    settled_ms,
                    ..f.clone()
                },
            );
        }
        CommandResponse {
            refused: (refused > 0)
                .then(|| format!("{refused} forgotten alert(s) of targets that moved since")),
            ..Default::default()
        }
    }

    /// Newer tail marks replace older ones; beyond MAX_TAIL_MARKS the oldest go.
    fn record_tails(&mut self, marks: &[(String, TailMark)]) -> CommandResponse {
        for (key, mark) in marks {
            match self.tails.get(key) {
                Some(m) if m.at_ms > mark.at_ms => {}
                _ => {
                    self.tails.insert(key.clone(), mark.clone());
                }
            }
        }
        if self.tails.len() > MAX_TAIL_MARKS {
            let mut ages: Vec<(i64, String)> = self
                .tails
                .iter()
                .map(|(k, m)| (m.at_ms, k.clone()))
                .collect();
            ages.sort();
            for (_, k) in ages.into_iter().take(self.tails.len() - MAX_TAIL_MARKS) {
                self.tails.remove(&k);
            }
        }
        CommandResponse::default()
    }

    /// Grants an action run: once per key, `max_per_hour` per (rule, target).
    fn claim_action(
        &mut self,
        key: &str,
        run: ActionRunRecord,
        max_per_hour: u32,
    ) -> CommandResponse {
        let at = run.at_ms;
        self.action_runs
            .retain(|_, r| r.at_ms > at - ACTION_RUNS_KEPT_MS);
        let refused = |why: String| CommandResponse {
            refused: Some(why),
            ..Default::default()
        };
        if let Some(r) = self.action_runs.get(key) {
            return if r.nonce == run.nonce {
                CommandResponse::default()
            } else {
                refused(ACTION_ALREADY_RUN.to_string())
            };
        }
        let recent = self
            .action_runs
            .values()
            .filter(|r| r.rule == run.rule && r.target == run.target && r.at_ms > at - HOUR_MS)
            .count();
        if recent >= max_per_hour as usize {
            return refused(format!(
                "{recent} runs in the last hour in the herd (max_per_hour = {max_per_hour})"
            ));
        }
        self.action_runs.insert(key.to_string(), run);
        CommandResponse::default()
    }

    /// A new fleet spec; its version is the answer.
    fn apply_spec(&mut self, text: &str, source: &str) -> CommandResponse {
        self.spec_version += 1;
        self.spec_text = text.to_string();
        self.spec_source = source.to_string();
        CommandResponse {
            version: self.spec_version,
            ..Default::default()
        }
    }

    /// A new map of owners; its version is the answer.
    fn set_ownership(&mut self, owners: &BTreeMap<String, NodeId>) -> CommandResponse {
        self.ownership_version += 1;
        let version = self.ownership_version;
        self.tenure = std::mem::take(&mut self.tenure)
            .into_iter()
            .filter(|(t, _)| owners.contains_key(t))
            .collect();
        for (t, n) in owners {
            if self.owners.get(t) != Some(n) || !self.tenure.contains_key(t) {
                self.tenure.insert(t.clone(), version);
            }
        }
        self.owners = owners.iter().map(|(t, n)| (t.clone(), *n)).collect();
        // Alerts of targets that left the fleet have nobody to continue them.
        // (And the counts of those forgotten.)
        remove_where(&mut self.alerts, |a| !owners.contains_key(&a.target));
        remove_where(&mut self.forgotten, |f| !owners.contains_key(&f.target));
        remove_where(&mut self.notices, |e| {
            e.sender != Sender::Leader && !owners.contains_key(&e.notification.alert.target)
        });
        CommandResponse {
            version: self.ownership_version,
            ..Default::default()
        }
    }

    /// Alert changes, notices queued (unless delivered already) and notices
    /// delivered; the oldest notices beyond MAX_NOTICES are forgotten. With a
    /// fence, what concerns a target is taken only from its current owner, made
    /// within its current tenure (delivered keys are always true and kept); the
    /// answer says how many changes were refused.
    fn apply_alerts(
        &mut self,
        upserts: &[Alert],
        deleted: &[String],
        queued: &[OutboxEntry],
        delivered: &[String],
        fence: Option<AlertFence>,
    ) -> CommandResponse {
        let mut refused = 0usize;
        for a in upserts {
            if self.within_tenure(fence, &a.target, None) {
                // Back: its count goes on in the alert itself — unless the
                // alert counts less than the herd kept (an owner of an older
                // build that never had the count): then the count stays, and a
                // new owner continues from the higher of the two.
                if self
                    .forgotten
                    .get(&a.id)
                    .is_none_or(|f| a.transitions >= f.transitions)
                {
                    self.forgotten.remove(&a.id);
                }
                self.alerts.insert(a.id.clone(), Arc::new(a.clone()));
            } else {
                refused += 1;
            }
        }
        for id in deleted {
            let target = (self.alerts.get(id).map(|a| a.target.clone()))
                .or_else(|| self.forgotten.get(id).map(|f| f.target.clone()));
            let Some(target) = target else {
                continue;
            };
            if self.within_tenure(fence, &target, None) {
                self.alerts.remove(id);
                self.forgotten.remove(id);
            } else {
                refused += 1;
            }
        }
        for e in queued {
            let key = &e.notification.idempotency_key;
            let target = &e.notification.alert.target;
            if e.sender == Sender::Owner && !self.within_tenure(fence, target, Some(e.tenure)) {
                refused += 1;
                continue;
            }
            if !self.delivered.contains(key) {
                self.notices.insert(key.clone(), e.clone());
            }
        }
        for key in delivered {
            self.notices.remove(key);
            self.delivered.insert(key, MAX_DELIVERED_KEYS);
        }
        self.forget_oldest_notices();
        CommandResponse {
            refused: (refused > 0).then(|| {
                format!("{refused} alert change(s) of targets that moved since they were made")
            }),
            ..Default::default()
        }
    }

    /// Whether a change of `target` proposed under `fence` (an outbox entry's own
    /// tenure in `entry_tenure`, when it has one) belongs to the target's current
    /// tenure. No fence: the leader's own, taken as it is.
    fn within_tenure(
        &self,
        fence: Option<AlertFence>,
        target: &str,
        entry_tenure: Option<u64>,
    ) -> bool {
        let Some(f) = fence else {
            return true;
        };
        if self.owners.get(target) != Some(&f.node) {
            return false;
        }
        let made_under = entry_tenure
            .filter(|&t| t > 0)
            .unwrap_or(f.ownership_version);
        // 0: made before tenures were recorded (an upgrade); the owner decides.
        made_under == 0 || self.tenure.get(target).is_none_or(|&t| t <= made_under)
    }

    /// Keeps at most MAX_NOTICES notices, forgetting the oldest first.
    fn forget_oldest_notices(&mut self) {
        if self.notices.len() <= MAX_NOTICES {
            return;
        }
        let mut by_age: Vec<(i64, String)> = self
            .notices
            .iter()
            .map(|(k, e)| (e.created_ms, k.clone()))
            .collect();
        by_age.sort();
        let excess = self.notices.len() - MAX_NOTICES;
        for (_, k) in by_age.into_iter().take(excess) {
            self.notices.remove(&k);
        }
    }

    /// Keys of peer health notices queued.
    fn record_sent(&mut self, keys: &[String]) -> CommandResponse {
        for k in keys {
            self.sent.insert(k, MAX_SENT_KEYS);
        }
        CommandResponse::default()
    }

    /// A node's health as the leader concluded it (`health.transitions` is
    /// counted here); the answer is the node's transitions so far.
    fn set_node_health(&mut self, node: NodeId, health: NodeHealth) -> CommandResponse {
        let before = self.health.get(&node);
        // A node is up until said otherwise; only a change is a transition.
        let was_up = before.is_none_or(|h| h.up);
        let transitions = before.map_or(0, |h| h.transitions);
        if was_up == health.up && before.is_some() {
            return CommandResponse {
                version: transitions,
                ..Default::default()
            };
        }
        let transitions = if was_up == health.up {
            transitions
        } else {
            transitions + 1
        };
        self.health.insert(
            node,
            NodeHealth {
                transitions,
                ..health
            },
        );
        CommandResponse {
            version: transitions,
            ..Default::default()
        }
    }

    /// A node's address and how its machine is watched.
    fn set_node_info(&mut self, node: NodeId, addr: &str, machine: &str) -> CommandResponse {
        self.nodes.insert(
            node,
            NodeRecord {
                addr: addr.to_string(),
                machine: machine.to_string(),
            },
        );
        CommandResponse::default()
    }

    /// A silence for the herd; the silences that ended before it was made go.
    fn add_silence(&mut self, silence: &Silence) -> CommandResponse {
        let now = silence.created_ms;
        self.silences.retain(|_, s| s.until_ms > now);
        self.silences.insert(silence.id.clone(), silence.clone());
        CommandResponse::default()
    }

    /// Ends a silence; the answer is 1 when there was one.
    fn remove_silence(&mut self, id: &str) -> CommandResponse {
        CommandResponse {
            version: u64::from(self.silences.remove(id).is_some()),
            ..Default::default()
        }
    }

    /// A node on its way out: it gets no targets any more.
    fn drain(&mut self, node: NodeId) -> CommandResponse {
        self.draining.insert(node);
        CommandResponse::default()
    }

    /// A node that left: its records go.
    fn forget(&mut self, node: NodeId) -> CommandResponse {
        self.nodes.remove(&node);
        self.health.remove(&node);
        self.draining.remove(&node);
        CommandResponse::default()
    }

    /// Pauses a target.
    fn pause(&mut self, target: &str, pause: &Pause) -> CommandResponse {
        self.pauses.insert(target.to_string(), pause.clone());
        CommandResponse::default()
    }

    /// Ends a target's pause; the answer is 1 when there was one.
    fn resume(&mut self, target: &str) -> CommandResponse {
        CommandResponse {
            version: u64::from(self.pauses.remove(target).is_some()),
            ..Default::default()
        }
    }

    /// The herd's id: the first one applied stays.
    fn set_herd_id(&mut self, id: &str) -> CommandResponse {
        if self.herd_id.is_none() && !id.is_empty() {
            self.herd_id = Some(id.to_string());
        }
        CommandResponse::default()
    }

    /// Ends the pauses whose end is at or before `now_ms`; the answer is how many.
    fn expire_pauses(&mut self, now_ms: i64) -> CommandResponse {
        let before = self.pauses.len();
        self.pauses
            .retain(|_, p| p.until_ms.is_none_or(|u| u > now_ms));
        CommandResponse {
            version: (before - self.pauses.len()) as u64,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::alerting::fixtures::notice;

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

    #[test]
    fn alerts_of_targets_that_left_the_map_are_dropped() {
        let mut s = ClusterState::default();
        let alert = |id: &str, target: &str| Alert {
            id: id.into(),
            rule: "r".into(),
            target: target.into(),
            labels: Default::default(),
            severity: crate::model::Severity::Warning,
            state: crate::model::AlertState::Firing,
            since_ms: 0,
            active_since_ms: 0,
            value: String::new(),
            summary: String::new(),
            description: String::new(),
            transitions: 1,
            acked_by: None,
            flapping: false,
        };
        s.apply(&Command::Alerts {
            upserts: vec![alert("1", "a"), alert("2", "b")],
            deleted: vec![],
            queued: vec![notice("1:1:c", "a", 0), notice("2:1:c", "b", 0)],
            delivered: vec![],
            fence: None,
        });
        s.apply(&Command::SetOwnership {
            owners: [("a".to_string(), 1)].into(),
            reason: "b removed".into(),
        });
        assert_eq!(s.alerts.keys().collect::<Vec<_>>(), ["1"]);
        assert_eq!(s.notices.keys().collect::<Vec<_>>(), ["1:1:c"]);
    }

    fn queued(entries: Vec<OutboxEntry>, delivered: &[&str]) -> Command {
        Command::Alerts {
            upserts: vec![],
            deleted: vec![],
            queued: entries,
            delivered: delivered.iter().map(|k| k.to_string()).collect(),
            fence: None,
        }
    }

    #[test]
    fn notices_wait_until_delivered_and_are_never_queued_again() {
        let mut s = ClusterState::default();
        s.apply(&queued(
            vec![notice("x:1:c", "a", 5), notice("y:1:c", "a", 6)],
            &[],
        ));
        assert_eq!(s.notices.len(), 2);
        s.apply(&queued(vec![], &["x:1:c"]));
        assert_eq!(s.notices.keys().collect::<Vec<_>>(), ["y:1:c"]);
        assert_eq!(s.delivered.iter().collect::<Vec<_>>(), ["x:1:c"]);
        // A late copy of a delivered notice (a coalesced batch, a replay) is not kept.
        s.apply(&queued(vec![notice("x:1:c", "a", 5)], &[]));
        assert!(!s.notices.contains_key("x:1:c"));
        // Queued and finished in the same batch: nothing left to hand over.
        s.apply(&queued(vec![notice("z:1:c", "a", 7)], &["z:1:c", "x:1:c"]));
        assert!(!s.notices.contains_key("z:1:c"));
        assert_eq!(
            s.delivered.iter().collect::<Vec<_>>(),
            ["x:1:c", "z:1:c"],
            "each key once"
        );
    }

    #[test]
    fn only_the_owner_sends_what_the_herd_recorded_and_never_twice() {
        let mut s = ClusterState::default();
        s.apply(&Command::SetOwnership {
            owners: [("a".to_string(), 1), ("b".to_string(), 2)].into(),
            reason: String::new(),
        });
        let mine = notice("x:1:c", "a", 10_000);
        let grace = NOTICE_COMMIT_GRACE_MS;
        assert_eq!(
            s.gate_notice(&mine, 1, false, 10_000),
            Gate::Wait,
            "not recorded yet"
        );
        assert_eq!(
            s.gate_notice(&mine, 1, false, 10_000 + grace),
            Gate::Send,
            "the herd cannot record it: its owner sends it anyway"
        );
        s.apply(&queued(vec![mine.clone()], &[]));
        assert_eq!(
            s.gate_notice(&mine, 1, false, 10_000),
            Gate::Send,
            "recorded"
        );
        assert_eq!(
            s.gate_notice(&mine, 2, false, 10_000),
            Gate::Drop,
            "node 2 does not own a"
        );
        let theirs = notice("y:1:c", "b", 10_000);
        s.apply(&queued(vec![theirs.clone()], &[]));
        assert_eq!(s.gate_notice(&theirs, 1, false, 20_000), Gate::Drop);
        assert_eq!(s.gate_notice(&theirs, 2, false, 20_000), Gate::Send);
        s.apply(&queued(vec![], &["x:1:c"]));
        assert_eq!(
            s.gate_notice(&mine, 1, false, 20_000),
            Gate::Drop,
            "delivered (by this node before a restart, or by another): never again"
        );
    }

    /// A state whose first map (version 1) is `owners`.
    fn owned_by(owners: &[(&str, NodeId)]) -> ClusterState {
        let mut s = ClusterState::default();
        set_owners(&mut s, owners);
        s
    }

    fn set_owners(s: &mut ClusterState, owners: &[(&str, NodeId)]) {
        s.apply(&Command::SetOwnership {
            owners: owners.iter().map(|(t, n)| (t.to_string(), *n)).collect(),
            reason: String::new(),
        });
    }

    fn fenced(
        node: NodeId,
        version: u64,
        upserts: Vec<Alert>,
        queued: Vec<OutboxEntry>,
    ) -> Command {
        Command::Alerts {
            upserts,
            deleted: vec![],
            queued,
            delivered: vec!["done:1:c".into()],
            fence: Some(AlertFence {
                node,
                ownership_version: version,
            }),
        }
    }

    #[test]
    fn alert_changes_of_an_ended_tenure_are_refused_delivered_keys_kept() {
        // The chaos run's case: node 1, cut one way from the leader, proposed a
        // firing of `a` under map 1; the leader moved `a` to node 3 (map 2), node 3
        // fired and resolved; node 1's proposal was committed after that.
        let mut s = owned_by(&[("a", 1), ("b", 1)]);
        let stale = notice("al:2:c", "a", 1_000);
        let stale = OutboxEntry { tenure: 1, ..stale };
        set_owners(&mut s, &[("a", 3), ("b", 1)]);
        let mut theirs = notice("al:1:c", "a", 2_000).notification.alert;
        theirs.id = "al".into();
        assert_eq!(
            s.apply(&fenced(3, 2, vec![theirs.clone()], vec![])).refused,
            None
        );
        let mut late = stale.notification.alert.clone();
        late.id = "al".into();
        late.transitions = 2;
        let r = s.apply(&fenced(1, 1, vec![late.clone()], vec![stale.clone()]));
        assert!(r.refused.is_some_and(|w| w.starts_with("2 alert change")));
        assert_eq!(*s.alerts["al"], theirs, "node 3's history stands");
        assert!(s.notices.is_empty(), "the stale notice is not the herd's");
        assert!(
            s.delivered.contains("done:1:c"),
            "a delivery is always true"
        );
        // Away and back: node 1's new tenure begins at map 4; what it made under
        // map 1 is still refused, what it makes under map 4 is taken.
        set_owners(&mut s, &[("a", 1), ("b", 1)]);
        assert_eq!(s.tenure["a"], 3);
        assert_eq!(s.tenure["b"], 1, "b never moved");
        assert!(s
            .apply(&fenced(1, 2, vec![late.clone()], vec![]))
            .refused
            .is_some());
        assert!(s
            .apply(&fenced(1, 1, vec![], vec![stale.clone()]))
            .refused
            .is_some());
        assert_eq!(
            s.apply(&fenced(1, 3, vec![late.clone()], vec![])).refused,
            None
        );
        assert_eq!(s.alerts["al"].transitions, 2);
        // b's tenure never ended: a proposal under map 1 is b's owner's.
        let mut of_b = late.clone();
        of_b.id = "bl".into();
        of_b.target = "b".into();
        assert_eq!(s.apply(&fenced(1, 1, vec![of_b], vec![])).refused, None);
        // Another node never writes a's alerts, whatever map it names.
        assert!(s.apply(&fenced(2, 9, vec![late], vec![])).refused.is_some());
    }

    #[test]
    fn an_unrecorded_notice_of_an_ended_tenure_is_not_sent() {
        let mut s = owned_by(&[("a", 1)]);
        let old = OutboxEntry {
            tenure: 1,
            ..notice("x:2:c", "a", 10_000)
        };
        // Moved away and back before the worker looked at it again.
        set_owners(&mut s, &[("a", 2)]);
        set_owners(&mut s, &[("a", 1)]);
        assert_eq!(
            s.gate_notice(&old, 1, false, 10_000 + NOTICE_COMMIT_GRACE_MS),
            Gate::Drop,
            "the herd's history went on without it"
        );
        let now = OutboxEntry {
            tenure: 3,
            ..notice("x:3:c", "a", 10_000)
        };
        assert_eq!(s.gate_notice(&now, 1, false, 10_000), Gate::Wait);
        // Recorded in the herd (by the last owner): this owner delivers it.
        s.apply(&queued(vec![old.clone()], &[]));
        assert_eq!(s.gate_notice(&old, 1, false, 10_000), Gate::Send);
    }

    #[test]
    fn peer_notices_are_the_leaders_whoever_owns_the_machine() {
        let mut s = ClusterState::default();
        let mut peer = notice("herd-node-3:1:c", "herd-node-3", 10_000);
        peer.sender = Sender::Leader;
        s.apply(&queued(vec![peer.clone()], &[]));
        s.apply(&Command::SetOwnership {
            owners: [("herd-node-3".to_string(), 1)].into(),
            reason: String::new(),
        });
        assert_eq!(
            s.gate_notice(&peer, 1, false, 10_000),
            Gate::Drop,
            "owner, not leader"
        );
        assert_eq!(
            s.gate_notice(&peer, 2, true, 10_000),
            Gate::Send,
            "the leader"
        );
        s.apply(&Command::SetOwnership {
            owners: BTreeMap::new(),
            reason: "no machine targets".into(),
        });
        assert!(
            s.notices.contains_key("herd-node-3:1:c"),
            "a peer notice does not depend on the map"
        );
        s.apply(&queued(vec![], &["herd-node-3:1:c"]));
        assert_eq!(
            s.gate_notice(&peer, 2, true, 20_000),
            Gate::Drop,
            "delivered"
        );
    }

    #[test]
    fn notices_and_delivered_keys_are_bounded_oldest_first() {
        let mut s = ClusterState::default();
        let entries = (0..MAX_NOTICES as i64 + 3)
            .map(|i| notice(&format!("n{i}:1:c"), "a", 1_000 + i))
            .collect();
        s.apply(&queued(entries, &[]));
        assert_eq!(s.notices.len(), MAX_NOTICES);
        for i in 0..3 {
            assert!(
                !s.notices.contains_key(&format!("n{i}:1:c")),
                "n{i} is the oldest"
            );
        }
        let keys: Vec<String> = (0..MAX_DELIVERED_KEYS + 2)
            .map(|i| format!("d{i}"))
            .collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        s.apply(&queued(vec![], &refs));
        assert_eq!(s.delivered.len(), MAX_DELIVERED_KEYS);
        assert_eq!(s.delivered.iter().next(), Some("d2"));
    }

    #[test]
    fn health_counts_changes_only() {
        let mut s = ClusterState::default();
        let health = |up| Command::NodeHealth {
            node: 2,
            up,
            since_ms: 1,
            seen_by: 1,
            moved: vec![],
        };
        assert_eq!(
            s.apply(&health(true)).version,
            0,
            "up is the default: no change"
        );
        assert_eq!(s.apply(&health(false)).version, 1);
        assert_eq!(
            s.apply(&health(false)).version,
            1,
            "again: no new transition"
        );
        assert_eq!(s.apply(&health(true)).version, 2);
        assert_eq!(s.health[&2].transitions, 2);
    }

    #[test]
    fn pauses_end_by_the_proposers_clock() {
        let mut s = ClusterState::default();
        let p = |until_ms| Pause {
            by: "me".into(),
            reason: "r".into(),
            since_ms: 0,
            until_ms,
        };
        s.apply(&Command::Pause {
            target: "a".into(),
            pause: p(Some(100)),
        });
        s.apply(&Command::Pause {
            target: "b".into(),
            pause: p(None),
        });
        assert_eq!(s.apply(&Command::ExpirePauses { now_ms: 99 }).version, 0);
        assert_eq!(s.apply(&Command::ExpirePauses { now_ms: 100 }).version, 1);
        assert!(s.pauses.contains_key("b"));
        assert_eq!(s.apply(&Command::Resume { target: "b".into() }).version, 1);
        assert_eq!(s.apply(&Command::Resume { target: "b".into() }).version, 0);
    }

    #[test]
    fn tail_marks_keep_the_newest_per_key() {
        let mut s = ClusterState::default();
        let mark = |value: &str, at_ms| TailMark {
            value: value.into(),
            at_ms,
        };
        s.apply(&Command::Tails {
            marks: vec![("k".into(), mark("a", 10)), ("j".into(), mark("x", 5))],
        });
        s.apply(&Command::Tails {
            marks: vec![("k".into(), mark("old", 9))],
        });
        assert_eq!(
            s.tails["k"].value, "a",
            "an older mark (a late writer) is ignored"
        );
        s.apply(&Command::Tails {
            marks: vec![("k".into(), mark("b", 11))],
        });
        assert_eq!(s.tails["k"].value, "b");
        assert_eq!(s.tails["j"].value, "x");
    }

    #[test]
    fn action_runs_are_granted_once_per_key_and_max_per_hour_herd_wide() {
        let mut s = ClusterState::default();
        let run = |key: &str, target: &str, at_ms: i64, nonce: u64, node: u64| Command::ActionRun {
            key: key.into(),
            rule: "fix".into(),
            target: target.into(),
            at_ms,
            max_per_hour: 2,
            nonce,
            node,
        };
        let h = 3_600_000;
        assert_eq!(s.apply(&run("a:1:action", "t", 10 * h, 7, 1)).refused, None);
        assert_eq!(
            s.apply(&run("a:1:action", "t", 10 * h, 7, 1)).refused,
            None,
            "the same request retried is granted again"
        );
        assert_eq!(
            s.apply(&run("a:1:action", "t", 10 * h + 5, 8, 2))
                .refused
                .as_deref(),
            Some(ACTION_ALREADY_RUN),
            "another node's request for the same transition"
        );
        assert_eq!(
            s.apply(&run("a:3:action", "t", 10 * h + 10, 9, 2)).refused,
            None
        );
        let third = s.apply(&run("a:5:action", "t", 10 * h + 20, 10, 3));
        assert!(
            third
                .refused
                .as_deref()
                .is_some_and(|w| w.contains("max_per_hour = 2")),
            "{third:?}"
        );
        assert_eq!(
            s.apply(&run("b:1:action", "other", 10 * h + 20, 11, 3))
                .refused,
            None,
            "the rate is per (rule, target)"
        );
        assert_eq!(
            s.apply(&run("a:7:action", "t", 11 * h + 1, 12, 1)).refused,
            None,
            "an hour later"
        );
        s.apply(&run("c:1:action", "x", 40 * h, 13, 1));
        assert_eq!(
            s.action_runs.keys().collect::<Vec<_>>(),
            ["c:1:action"],
            "runs older than a day are forgotten"
        );
    }

    fn forgotten(id: &str, target: &str, transitions: u64) -> ForgottenAlert {
        ForgottenAlert {
            id: id.into(),
            target: target.into(),
            transitions,
            settled_ms: 0,
        }
    }

    fn forget(node: NodeId, version: u64, alerts: Vec<ForgottenAlert>) -> Command {
        Command::ForgetAlerts {
            alerts,
            fence: Some(AlertFence {
                node,
                ownership_version: version,
            }),
        }
    }

    #[test]
    fn the_herd_forgets_settled_alerts_of_their_owner_and_keeps_their_counts() {
        let mut s = owned_by(&[("a", 1), ("b", 2)]);
        let mut resolved = notice("r:2:c", "a", 1).notification.alert;
        (resolved.id, resolved.transitions) = ("r".into(), 2);
        resolved.state = crate::model::AlertState::Resolved;
        let mut firing = resolved.clone();
        (firing.id, firing.transitions) = ("f".into(), 3);
        firing.state = crate::model::AlertState::Firing;
        s.apply(&fenced(
            1,
            1,
            vec![resolved.clone(), firing.clone()],
            vec![],
        ));
        let r = s.apply(&forget(
            1,
            1,
            vec![forgotten("r", "a", 2), forgotten("f", "a", 3)],
        ));
        assert_eq!(r.refused, None);
        assert!(!s.alerts.contains_key("r"), "the settled one goes");
        assert_eq!(s.forgotten["r"].transitions, 2, "its count stays");
        assert!(
            s.alerts.contains_key("f"),
            "a firing alert is never forgotten"
        );
        // Only the owner forgets: node 2 does not own a.
        let r = s.apply(&forget(2, 1, vec![forgotten("x", "a", 1)]));
        assert!(r.refused.is_some());
        assert!(!s.forgotten.contains_key("x"));
        // An owner that counts less than the herd kept (an older build that never
        // had the count): its copy is taken, the higher count stays.
        let mut lower = resolved.clone();
        (lower.id, lower.transitions) = ("low".into(), 1);
        s.apply(&forget(1, 1, vec![forgotten("low", "a", 6)]));
        s.apply(&fenced(1, 1, vec![lower], vec![]));
        assert!(s.alerts.contains_key("low"));
        assert_eq!(s.forgotten["low"].transitions, 6);
        // An alert that went on after the owner forgot it (a newer copy) stays.
        let mut later = resolved.clone();
        later.transitions = 4;
        s.apply(&fenced(1, 1, vec![later], vec![]));
        assert!(
            !s.forgotten.contains_key("r"),
            "back: its count is in the alert"
        );
        s.apply(&forget(1, 1, vec![forgotten("r", "a", 2)]));
        assert_eq!(s.alerts["r"].transitions, 4, "the later copy stands");
        // A target that leaves the fleet takes its counts with it.
        s.apply(&forget(1, 1, vec![forgotten("gone", "a", 7)]));
        set_owners(&mut s, &[("b", 2)]);
        assert!(s.forgotten.is_empty());
    }

    #[test]
    fn the_herd_keeps_the_counts_of_the_alerts_that_settled_last() {
        let max = crate::model::MAX_FORGOTTEN;
        let mut s = owned_by(&[("a", 1)]);
        let batch = |from: usize, n: usize| {
            (from..from + n)
                .map(|i| ForgottenAlert {
                    settled_ms: i as i64,
                    ..forgotten(&format!("x{i:06}"), "a", 1)
                })
                .collect::<Vec<_>>()
        };
        s.apply(&forget(1, 1, batch(0, max)));
        assert_eq!(s.forgotten.len(), max, "up to the bound, all kept");
        assert!(s.forgotten_to_trim().is_empty(), "nothing to trim");
        // One more: the leader names those that settled first, down to nine tenths,
        // and every node applying the command drops the same ids.
        s.apply(&forget(1, 1, batch(max, 1)));
        assert_eq!(
            s.forgotten.len(),
            max + 1,
            "forgetting never trims by itself"
        );
        let ids = s.forgotten_to_trim();
        assert_eq!(ids.len(), max + 1 - max * 9 / 10);
        assert_eq!(ids[0], "x000000", "the oldest first");
        let trim = Command::TrimForgotten { ids };
        assert_eq!(trim.level(), 3);
        let mut other = s.clone();
        s.apply(&trim);
        other.apply(&trim);
        assert_eq!(s.forgotten.len(), max * 9 / 10);
        assert_eq!(s.forgotten, other.forgotten);
        assert!(!s.forgotten.contains_key("x000000"), "the oldest went");
        assert!(
            s.forgotten.contains_key(&format!("x{max:06}")),
            "the newest stays"
        );
        let oldest_kept = s.forgotten.values().map(|f| f.settled_ms).min();
        assert_eq!(oldest_kept, Some((max + 1 - max * 9 / 10) as i64));
        assert!(s.forgotten_to_trim().is_empty());
    }

    #[test]
    fn a_command_of_a_later_build_is_kept_as_it_came_and_applied_as_nothing() {
        let raw = r#"{"Frobnicate":{"target":"a","level":9}}"#;
        let cmd: Command = serde_json::from_str(raw).expect("decodes");
        assert!(matches!(cmd, Command::Unknown(_)));
        assert_eq!(cmd.level(), u32::MAX);
        assert!(cmd.parts().is_empty(), "nothing stored");
        // Stored and sent on unchanged.
        let again: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&cmd).expect("encodes")).expect("json");
        assert_eq!(
            again,
            serde_json::from_str::<serde_json::Value>(raw).expect("raw")
        );
        let mut s = owned_by(&[("a", 1)]);
        let before = s.clone();
        let seen = unknown_commands_applied();
        assert_eq!(s.apply(&cmd), CommandResponse::default());
        assert_eq!(s, before);
        assert!(unknown_commands_applied() > seen);
        // Known commands still decode as themselves.
        let known = Command::Resume { target: "a".into() };
        let text = serde_json::to_string(&known).expect("encodes");
        assert_eq!(
            serde_json::from_str::<Command>(&text).expect("decodes"),
            known
        );
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;
    use std::time::Instant;

    /// What one applied batch costs on a big fleet: the state machine clones the
    /// state, then stores the parts the batch changed (`cargo test -p herd --release
    /// --lib applied_state_cost -- --ignored --nocapture`).
    #[test]
    #[ignore = "a measurement, not a check"]
    fn applied_state_cost() {
        for targets in [300usize, 10_000] {
            let text: String = (0..targets)
                .map(|i| format!("[[target]]\nname = \"web-{i}\"\naddress = \"10.0.{}.{}:22\"\ninterval = \"10s\"\nchecks = [{{ kind = \"vitals\" }}]\n\n", i / 250, i % 250))
                .collect();
            let mut s = ClusterState::default();
            s.apply(&Command::ApplySpec {
                text,
                source: "fleet.toml".into(),
            });
            s.apply(&Command::SetOwnership {
                owners: (0..targets)
                    .map(|i| (format!("web-{i}"), (i % 3) as u64 + 1))
                    .collect(),
                reason: String::new(),
            });
            let rounds = 50u32;
            let t = Instant::now();
            for _ in 0..rounds {
                std::hint::black_box(s.clone());
            }
            let clone = t.elapsed() / rounds;
            let spec = serde_json::to_vec(&(&s.spec_version, &s.spec_text, &s.spec_source))
                .unwrap()
                .len();
            let owners = serde_json::to_vec(&(&s.ownership_version, &s.owners))
                .unwrap()
                .len();
            let t = Instant::now();
            for _ in 0..rounds {
                std::hint::black_box(serde_json::to_vec(&s.alerts).unwrap());
            }
            let alerts_t = t.elapsed() / rounds;
            println!("{targets} targets: clone {clone:?} per batch; parts written only when changed: spec {spec} B, ownership {owners} B, alerts (none firing) in {alerts_t:?}");
        }
    }
}
