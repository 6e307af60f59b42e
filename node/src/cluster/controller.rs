//! The leader's duties, run on every node and acted on by the leader only (while
//! its lease is valid):
//! - health: a member silent for `failover_after` is down, one heard again is
//!   back; each change is committed (`NodeHealth`) and notified once per channel;
//! - ownership: every target of the spec gets a live owner (balanced, sticky: see
//!   [`crate::ownership::assign`]) and every watched machine its ring successor;
//!   the map is committed with a version whenever it would change;
//! - housekeeping: records of nodes that left are forgotten.
//!
//! Every node also keeps its own record (address, how its machine is watched) in
//! the herd's state.
//!
//! Peer notifications are exactly-once as far as a crash allows: the leader
//! queues them in its durable outbox right after the health change commits and
//! then commits their keys as queued (`Sent`). A new leader queues the notices of
//! health changes whose keys are not recorded, so a leader that dies between the
//! two steps loses nothing; one that dies after queueing but before recording may
//! have its notice sent twice (once by itself after a restart, once by the new
//! leader), with the same idempotency key.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::types::{ClusterState, Command, NodeHealth, NodeId, NodeRecord};
use super::FleetState;
use crate::model::{now_ms, Alert, AlertState, NotifyKind, Severity};
use crate::notify::worker::Notifier;
use crate::ownership::{assign, machines};
use crate::rules::runner::{outbox_entries, route};
use crate::store::alerting::{OutboxEntry, Sender};

/// Rule name of peer health notifications.
pub const NODE_DOWN_RULE: &str = "node_down";

#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub lease: Duration,
    pub failover_after: Duration,
    /// How often the leader looks (the beat interval).
    pub every: Duration,
    /// Watchers of each node's machine.
    pub watchers: usize,
    /// This node's own record.
    pub me: NodeRecord,
}

pub async fn run(
    fleet: Arc<FleetState>,
    notifier: Arc<Notifier>,
    cfg: ControllerConfig,
    cancel: CancellationToken,
) {
    let node = fleet.cluster().clone();
    let me = node.id();
    let mut tick = tokio::time::interval(cfg.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut state_rx = node.state();
    // When this node first saw each member: a member it never heard from is
    // given failover_after from then, not from this node's start.
    let mut first_seen: HashMap<NodeId, Instant> = HashMap::new();
    let mut next_record_try = Instant::now();
    let mut last_plan: Option<PlanKey> = None;
    let mut queued_here: BTreeSet<String> = BTreeSet::new();
    // Silence is counted only from here: a leader that itself did not run for
    // longer than a lease (paused, stalled) did not observe the others' silence
    // meanwhile, and must not declare them down for it.
    let mut observing_since = Instant::now();
    // When this node first saw each ownership version (the latest few): a member
    // still behind a version that has been current for failover_after is not
    // live, though it beats (it cannot receive the herd's entries).
    let mut versions = MapVersions::default();
    let mut lagging_told: BTreeSet<NodeId> = BTreeSet::new();
    // Since when each member beats again after it was down (silent for
    // failover_after): its lag behind the map is counted from then, not from
    // when the version it missed while down became current — a restarted node
    // needs a moment to receive it, and must not be declared down a second time.
    let mut returns = Returns::default();
    loop {
        // The wait below ends within one tick; a much longer one means this
        // process was not running (the work of a round is not counted).
        let waiting = Instant::now();
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
            changed = state_rx.changed() => if changed.is_err() { return },
        }
        let gap = waiting.elapsed();
        if gap > cfg.every + cfg.lease {
            tracing::warn!(
                stalled_ms = gap.as_millis() as u64,
                "this node did not run for a while (paused or stalled): peers' silence is counted from now"
            );
            observing_since = Instant::now();
        }
        let state = state_rx.borrow_and_update().clone();
        let members = node.members();
        if members.is_empty() {
            continue;
        }
        let now = Instant::now();
        let member_ids: BTreeSet<NodeId> = members.iter().map(|(id, _)| *id).collect();
        for id in &member_ids {
            first_seen.entry(*id).or_insert(now);
        }
        first_seen.retain(|id, _| member_ids.contains(id));
        returns.observe(
            &member_ids,
            &|id| node.liveness().silent_for(id),
            cfg.failover_after,
            now,
        );

        // Our own record, on any node that is a member.
        if state.nodes.get(&me) != Some(&cfg.me)
            && now >= next_record_try
            && member_ids.contains(&me)
        {
            next_record_try = now + Duration::from_secs(2);
            let cmd = Command::NodeInfo {
                node: me,
                addr: cfg.me.addr.clone(),
                machine: cfg.me.machine.clone(),
            };
            let node = node.clone();
            tokio::spawn(async move {
                if let Err(e) = node.write(cmd).await {
                    tracing::debug!(error = %e, "cannot record this node's info yet");
                }
            });
        }

        let leading = node.is_leader() && node.liveness().lease_valid(&node.voters(), cfg.lease);
        if !leading {
            last_plan = None;
            queued_here.clear();
            continue;
        }
        versions.saw(state.ownership_version, now);
        trim_forgotten(&node, &state).await;
        let lag = |id: NodeId| {
            if id == me {
                return Duration::ZERO;
            }
            node.liveness()
                .version_of(id)
                .map_or(Duration::ZERO, |v| {
                    returns.lag(id, versions.behind_for(v, now), now)
                })
                .min(now.saturating_duration_since(observing_since))
        };
        for id in &member_ids {
            let behind = lag(*id) >= cfg.failover_after;
            if behind && lagging_told.insert(*id) {
                tracing::warn!(
                    node = id,
                    applied = node.liveness().version_of(*id),
                    current = state.ownership_version,
                    "a member beats but has not applied the herd's ownership map for failover_after: it counts as down until it catches up"
                );
            } else if !behind && lagging_told.remove(id) {
                tracing::info!(node = id, "a lagging member caught up with the herd's map");
            }
        }
        // Silence, or lagging behind the map as long: either way a member that
        // cannot act for its targets.
        let silent = |id: NodeId| {
            let since_known = first_seen.get(&id).map_or(Duration::ZERO, |t| now - *t);
            node.liveness()
                .silent_for(id)
                .max(lag(id))
                .min(since_known)
                .min(now.saturating_duration_since(observing_since))
        };
        let caught_up = |id: NodeId| {
            node.liveness()
                .version_of(id)
                .is_some_and(|v| v >= state.ownership_version)
        };
        // The plan depends on these only; with thousands of targets it is worth
        // not recomputing it after every alert update.
        let key = PlanKey {
            spec_version: state.spec_version,
            ownership_version: state.ownership_version,
            members: member_ids.clone(),
            live: eligible(
                &state,
                me,
                &member_ids,
                &silent,
                &caught_up,
                cfg.failover_after,
            ),
            up: member_ids
                .iter()
                .copied()
                .filter(|id| *id == me || silent(*id) < cfg.failover_after)
                .collect(),
            nodes: state.nodes.clone(),
            health: state.health.iter().map(|(id, h)| (*id, h.up)).collect(),
            draining: state.draining.clone(),
        };
        if last_plan.as_ref() == Some(&key) {
            queue_peer_notices(&state, me, &fleet, &notifier, &node, &mut queued_here).await;
            continue;
        }
        let plan = plan(
            &state,
            me,
            &member_ids,
            &Seen {
                silent: &silent,
                caught_up: &caught_up,
                failover_after: cfg.failover_after,
            },
            cfg.watchers,
            &fleet.current().1,
        );
        let mut commands = plan.commands;
        if !fleet.spec_known() {
            // The applied spec does not parse here (this leader runs an older or
            // stricter version): an ownership map made from no spec would take every
            // target away and end every alert. Keep the map; health still counts.
            commands.retain(|c| !matches!(c, Command::SetOwnership { .. }));
        }
        let plan_was_empty = commands.is_empty();
        let mut all_written = true;
        for cmd in commands {
            let health = match &cmd {
                Command::NodeHealth { node: n, up, .. } => Some((*n, *up)),
                _ => None,
            };
            match node.write_as_leader(cmd).await {
                Ok(r) => {
                    if let Some((n, up)) = health {
                        tracing::warn!(
                            node = n,
                            up,
                            transitions = r.version,
                            "peer health changed"
                        );
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot commit the leader's decision; retrying");
                    all_written = false;
                    break;
                }
            }
        }
        // An empty plan changed nothing: no need to plan again until an input
        // changes. Otherwise the next round plans against the state it made.
        last_plan = (all_written && plan_was_empty).then_some(key);
        // Notices of health changes not yet queued by any leader (a new leader
        // starts with the ones its predecessor may have left).
        let latest = node.state().borrow().clone();
        queue_peer_notices(&latest, me, &fleet, &notifier, &node, &mut queued_here).await;
    }
}

/// When the leader first saw each recent ownership version.
#[derive(Debug, Default)]
struct MapVersions {
    seen: std::collections::VecDeque<(u64, Instant)>,
}

/// Versions remembered: a member further behind counts from the oldest.
const MAP_VERSIONS_KEPT: usize = 64;

impl MapVersions {
    fn saw(&mut self, version: u64, now: Instant) {
        if self.seen.back().is_none_or(|(v, _)| *v < version) {
            self.seen.push_back((version, now));
            while self.seen.len() > MAP_VERSIONS_KEPT {
                self.seen.pop_front();
            }
        }
    }

    /// How long a member that applied `applied` has been behind: since the first
    /// newer version was seen (zero when it is not behind).
    fn behind_for(&self, applied: u64, now: Instant) -> Duration {
        self.seen
            .iter()
            .find(|(v, _)| *v > applied)
            .map_or(Duration::ZERO, |(_, at)| now.saturating_duration_since(*at))
    }
}

/// Since when each member beats again after it was last down (silent for
/// failover_after). A member's lag behind the map is counted from then at most:
/// a node back from a kill still holds the map it had, and the version it missed
/// became current while it was down — it needs a moment to receive it, and must
/// not be declared down a second time for it (two node_down notifications for one
/// kill, seen in the failover bench).
#[derive(Debug, Default)]
struct Returns {
    back_since: HashMap<NodeId, Instant>,
}

impl Returns {
    fn observe(
        &mut self,
        members: &BTreeSet<NodeId>,
        silent_for: &dyn Fn(NodeId) -> Duration,
        down_after: Duration,
        now: Instant,
    ) {
        self.back_since.retain(|id, _| members.contains(id));
        for id in members {
            if silent_for(*id) >= down_after {
                self.back_since.remove(id);
            } else {
                self.back_since.entry(*id).or_insert(now);
            }
        }
    }

    /// `behind` (how long the member's map has been old) counted from its return.
    fn lag(&self, id: NodeId, behind: Duration, now: Instant) -> Duration {
        let back = self
            .back_since
            .get(&id)
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(*t));
        behind.min(back)
    }
}

/// The members that may own targets: up, not draining, and either owning some
/// already or caught up with the current ownership map (a node coming back, or
/// new, gets targets once it has applied the map: before that its lease is not
/// valid and it would leave them unscraped).
fn eligible(
    state: &ClusterState,
    me: NodeId,
    members: &BTreeSet<NodeId>,
    silent: &dyn Fn(NodeId) -> Duration,
    caught_up: &dyn Fn(NodeId) -> bool,
    failover_after: Duration,
) -> BTreeSet<NodeId> {
    members
        .iter()
        .copied()
        .filter(|id| {
            let up = *id == me || silent(*id) < failover_after;
            let owns = state.owners.values().any(|o| o == id);
            up && !state.draining.contains(id) && (*id == me || owns || caught_up(*id))
        })
        .collect()
}

/// What the leader knows of the other members for a plan.
struct Seen<'a> {
    /// How long a member has been silent.
    silent: &'a dyn Fn(NodeId) -> Duration,
    /// Whether a member has applied the current ownership map.
    caught_up: &'a dyn Fn(NodeId) -> bool,
    failover_after: Duration,
}

/// The inputs of a plan, to skip planning when none changed.
#[derive(Debug, PartialEq)]
struct PlanKey {
    spec_version: u64,
    ownership_version: u64,
    members: BTreeSet<NodeId>,
    live: BTreeSet<NodeId>,
    up: BTreeSet<NodeId>,
    nodes: BTreeMap<NodeId, NodeRecord>,
    health: BTreeMap<NodeId, bool>,
    draining: BTreeSet<NodeId>,
}

/// What the leader would commit now (pure but for reading the spec).
pub struct Plan {
    pub commands: Vec<Command>,
}

fn plan(
    state: &ClusterState,
    me: NodeId,
    members: &BTreeSet<NodeId>,
    seen: &Seen,
    watchers: usize,
    spec: &crate::config::FleetSpec,
) -> Plan {
    let (silent, caught_up, failover_after) = (seen.silent, seen.caught_up, seen.failover_after);
    let now = now_ms();
    let mut commands = Vec::new();
    // Health.
    let live = eligible(state, me, members, silent, caught_up, failover_after);
    let mut changes: Vec<(NodeId, bool, i64)> = Vec::new();
    for id in members {
        let quiet = silent(*id);
        let up = *id == me || quiet < failover_after;
        let recorded = state.health.get(id).is_none_or(|h| h.up);
        if up != recorded {
            changes.push((*id, up, now - quiet.as_millis() as i64));
        }
    }
    // Ownership.
    let names: Vec<String> = spec.targets.iter().map(|t| t.name.clone()).collect();
    let live_list: Vec<NodeId> = live.iter().copied().collect();
    let previous: BTreeMap<String, NodeId> = state
        .owners
        .iter()
        .filter(|(n, _)| !n.starts_with(machines::MACHINE_PREFIX))
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    let mut owners = assign::assign(&names, &live_list, &previous);
    let machine_names: Vec<String> = machines::targets(&state.nodes, watchers)
        .into_iter()
        .filter(|t| machines::watched_node(&t.name).is_some_and(|n| members.contains(&n)))
        .map(|t| t.name)
        .collect();
    owners.extend(machines::owners(&machine_names, members, &live));
    let ownership_changes = owners.len() != state.owners.len()
        || owners.iter().any(|(t, o)| state.owners.get(t) != Some(o));
    if ownership_changes {
        let current: BTreeMap<String, NodeId> =
            state.owners.iter().map(|(t, o)| (t.clone(), *o)).collect();
        let moved = assign::moved(&current, &owners);
        commands.push(Command::SetOwnership {
            owners: owners.clone(),
            reason: if changes.is_empty() {
                format!("{} target(s) placed", moved.len())
            } else {
                format!("health change: {} target(s) moved", moved.len())
            },
        });
    }
    for (id, up, since_ms) in changes {
        let moved: Vec<String> = if up {
            owners
                .iter()
                .filter(|(_, o)| **o == id)
                .map(|(t, _)| t.clone())
                .collect()
        } else {
            state
                .owners
                .iter()
                .filter(|(_, o)| **o == id)
                .map(|(t, _)| match owners.get(t) {
                    Some(o) => format!("{t} → {o}"),
                    None => format!("{t} → (none)"),
                })
                .collect()
        };
        commands.push(Command::NodeHealth {
            node: id,
            up,
            since_ms,
            seen_by: me,
            moved,
        });
    }
    // Records of nodes that are no longer members.
    let gone: BTreeSet<NodeId> = state
        .nodes
        .keys()
        .chain(state.health.keys())
        .chain(state.draining.iter())
        .filter(|id| !members.contains(id))
        .copied()
        .collect();
    for node in gone {
        commands.push(Command::Forget { node });
    }
    Plan { commands }
}

/// The alert a peer health change is told as.
pub fn peer_alert(node: NodeId, h: &NodeHealth, addr: &str) -> Alert {
    let when = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + Duration::from_millis(h.since_ms.max(0) as u64),
    );
    let moved = if h.moved.is_empty() {
        "no targets moved".to_string()
    } else if h.up {
        format!("targets back on it: {}", h.moved.join(", "))
    } else {
        format!("targets moved: {}", h.moved.join(", "))
    };
    let (state, value, summary, description) = if h.up {
        (
            AlertState::Resolved,
            "up",
            format!("node {node} ({addr}) back"),
            format!(
                "node {node} heard again since {when}, seen by node {}; {moved}",
                h.seen_by
            ),
        )
    } else {
        (
            AlertState::Firing,
            "down",
            format!("node {node} ({addr}) down"),
            format!(
                "node {node} silent since {when}, seen by node {}; {moved}",
                h.seen_by
            ),
        )
    };
    Alert {
        id: machines::target_name(node, 1),
        rule: NODE_DOWN_RULE.into(),
        target: machines::target_name(node, 1),
        labels: [
            ("node".to_string(), node.to_string()),
            ("seen_by".to_string(), h.seen_by.to_string()),
        ]
        .into(),
        severity: Severity::Critical,
        state,
        since_ms: h.since_ms,
        active_since_ms: h.since_ms,
        value: value.into(),
        summary,
        description,
        transitions: h.transitions,
        acked_by: None,
        flapping: false,
    }
}

/// The key recorded in `ClusterState::sent` once a health change's notices are queued.
fn queued_key(node: NodeId, transitions: u64) -> String {
    format!("{}:{transitions}", machines::target_name(node, 1))
}

/// Run by the leader: queues the notices of health changes no leader has queued
/// yet, records them with the herd (then `sent`), and takes over the recorded
/// notices an earlier leader did not deliver. Only the leader sends them (their
/// sender is `Leader`), so a leader that dies with a notice queued leaves it to the
/// next one, and sends nothing once it comes back.
///
/// `queued_here`: keys this node queued while leading (cleared when it stops).
async fn queue_peer_notices(
    state: &ClusterState,
    me: NodeId,
    fleet: &FleetState,
    notifier: &Notifier,
    node: &super::node::ClusterNode,
    queued_here: &mut BTreeSet<String>,
) {
    let (_, spec) = fleet.current();
    let mut keys = Vec::new();
    let mut fresh = Vec::new();
    let now = now_ms();
    for (id, h) in &state.health {
        if h.transitions == 0 {
            continue;
        }
        let key = queued_key(*id, h.transitions);
        if state.sent.contains(&key) {
            continue;
        }
        let addr = state.nodes.get(id).map(|r| r.addr.as_str()).unwrap_or("?");
        let alert = peer_alert(*id, h, addr);
        let kind = if h.up {
            NotifyKind::Resolved
        } else {
            NotifyKind::Firing
        };
        let channels = route(&spec, None, Severity::Critical);
        let mut entries = outbox_entries(&spec, channels, &alert, kind, h.since_ms, now);
        for e in &mut entries {
            e.sender = Sender::Leader;
        }
        tracing::info!(
            node = id,
            up = h.up,
            channels = entries.len(),
            by = me,
            "queueing peer health notices"
        );
        fresh.extend(entries);
        keys.push(key);
    }
    // What an earlier leader recorded and nobody delivered yet, unless this
    // leader queued it already (no outbox read each round while one waits).
    queued_here.retain(|k| state.notices.contains_key(k));
    let inherited: Vec<OutboxEntry> = state
        .notices
        .values()
        .filter(|e| e.sender == Sender::Leader)
        .filter(|e| !queued_here.contains(&e.notification.idempotency_key))
        .cloned()
        .collect();
    if keys.is_empty() && inherited.is_empty() {
        return;
    }
    // Never twice in this outbox (this node may have queued them as leader before).
    let mut candidates = fresh.clone();
    candidates.extend(inherited);
    let candidate_keys: Vec<String> = candidates
        .iter()
        .map(|e| e.notification.idempotency_key.clone())
        .collect();
    match notifier.queue_new(candidates).await {
        Ok(0) => {}
        Ok(count) => tracing::info!(count, "queued peer health notices this leader sends"),
        Err(e) => {
            tracing::error!(error = %e, "cannot queue peer health notices");
            return;
        }
    }
    queued_here.extend(candidate_keys);
    if keys.is_empty() {
        return;
    }
    // Recorded first, then marked queued: a leader that dies in between leaves
    // recorded notices (taken over above) and the change to queue again (the
    // same keys: one notice each).
    let record = Command::Alerts {
        upserts: Vec::new(),
        deleted: Vec::new(),
        queued: fresh,
        delivered: Vec::new(),
        fence: None,
    };
    if let Err(e) = node.write_as_leader(record).await {
        tracing::warn!(error = %e, "cannot record queued peer notices; retrying");
        return;
    }
    notifier.wake();
    if let Err(e) = node.write_as_leader(Command::Sent { keys }).await {
        tracing::warn!(error = %e, "cannot mark peer notices queued (the next round records them again)");
    }
}

/// Beyond [`crate::model::MAX_FORGOTTEN`] forgotten alerts' counts, the leader
/// names those to drop ([`Command::TrimForgotten`]) — once every member applies
/// that command; until then the herd keeps them all.
async fn trim_forgotten(node: &super::node::ClusterNode, state: &ClusterState) {
    // Cheap checks first: this runs every beat, and the sort only beyond the bound.
    let trim_level = Command::TrimForgotten { ids: Vec::new() }.level();
    if state.forgotten.len() <= crate::model::MAX_FORGOTTEN || trim_level > node.herd_level() {
        return;
    }
    let ids = state.forgotten_to_trim();
    let n = ids.len();
    let cmd = Command::TrimForgotten { ids };
    match node.write_as_leader(cmd).await {
        Ok(_) => tracing::info!(
            dropped = n,
            "the herd dropped the oldest forgotten alerts' counts"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot trim the forgotten alerts' counts; retrying"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_fleet;

    fn spec(n: usize) -> crate::config::FleetSpec {
        let text: String = (0..n)
            .map(|i| format!("[[target]]\nname = \"t{i}\"\ntransport = \"local\"\n"))
            .collect();
        parse_fleet(&text, "test").unwrap()
    }

    fn record() -> NodeRecord {
        NodeRecord {
            addr: "127.0.0.1:1".into(),
            machine: "local".into(),
        }
    }

    /// Node 1's plan, one watcher per machine.
    fn plan_for(
        state: &ClusterState,
        members: &BTreeSet<NodeId>,
        silent: &dyn Fn(NodeId) -> Duration,
        caught_up: &dyn Fn(NodeId) -> bool,
        failover_after: Duration,
        spec: &crate::config::FleetSpec,
    ) -> Plan {
        let seen = Seen {
            silent,
            caught_up,
            failover_after,
        };
        plan(state, 1, members, &seen, 1, spec)
    }

    /// Applies a plan's commands to the state, as Raft would.
    fn run(state: &mut ClusterState, plan: Plan) {
        for c in &plan.commands {
            state.apply(c);
        }
    }

    #[test]
    fn a_silent_node_is_down_once_and_its_targets_move() {
        let members: BTreeSet<NodeId> = [1, 2, 3].into();
        let spec = spec(9);
        let mut state = ClusterState {
            nodes: members.iter().map(|id| (*id, record())).collect(),
            ..Default::default()
        };
        let after = Duration::from_millis(1500);
        let all_heard = |_: NodeId| Duration::from_millis(100);
        let p = plan_for(&state, &members, &all_heard, &|_| true, after, &spec);
        run(&mut state, p);
        let per_node = |s: &ClusterState, n: NodeId| s.owners.values().filter(|o| **o == n).count();
        assert_eq!(
            [
                per_node(&state, 1),
                per_node(&state, 2),
                per_node(&state, 3)
            ],
            [4, 4, 4],
            "3 targets + 1 machine each"
        );
        assert!(
            plan(
                &state,
                1,
                &members,
                &Seen {
                    silent: &all_heard,
                    caught_up: &|_| true,
                    failover_after: after
                },
                1,
                &spec
            )
            .commands
            .is_empty(),
            "stable"
        );

        let two_silent = |id: NodeId| {
            if id == 2 {
                Duration::from_secs(2)
            } else {
                Duration::from_millis(100)
            }
        };
        let p = plan_for(&state, &members, &two_silent, &|_| true, after, &spec);
        let down: Vec<_> = p
            .commands
            .iter()
            .filter(|c| {
                matches!(
                    c,
                    Command::NodeHealth {
                        up: false,
                        node: 2,
                        ..
                    }
                )
            })
            .collect();
        assert_eq!(down.len(), 1);
        let before = state.owners.clone();
        run(&mut state, p);
        assert_eq!(per_node(&state, 2), 0, "a dead node owns nothing");
        assert!(state
            .owners
            .keys()
            .all(|t| t.starts_with("herd-node-") || before.contains_key(t)));
        assert_eq!(
            state.owners["herd-node-2"], 3,
            "its machine is still watched by the next live node"
        );
        assert_eq!(state.health[&2].transitions, 1);
        assert!(!state.health[&2].moved.is_empty());
        // Still silent: nothing new.
        assert!(plan(
            &state,
            1,
            &members,
            &Seen {
                silent: &two_silent,
                caught_up: &|_| true,
                failover_after: after
            },
            1,
            &spec
        )
        .commands
        .is_empty());
        // Back: one "up", and it gets targets again.
        let p = plan_for(&state, &members, &all_heard, &|_| true, after, &spec);
        run(&mut state, p);
        assert!(state.health[&2].up);
        assert_eq!(state.health[&2].transitions, 2);
        assert!(per_node(&state, 2) >= 3);
    }

    #[test]
    fn a_node_back_gets_targets_once_it_caught_up_with_the_map() {
        let members: BTreeSet<NodeId> = [1, 2, 3].into();
        let spec = spec(6);
        let after = Duration::from_millis(1500);
        let heard = |_: NodeId| Duration::from_millis(100);
        // Node 3 was down: the map gives it nothing.
        let mut state = ClusterState::default();
        let p = plan(
            &state,
            1,
            &[1, 2].into(),
            &Seen {
                silent: &heard,
                caught_up: &|_| true,
                failover_after: after,
            },
            1,
            &spec,
        );
        run(&mut state, p);
        assert!(!state.owners.values().any(|o| *o == 3));
        // It is heard again but has not applied the current map: nothing yet.
        let behind = |id: NodeId| id != 3;
        let p = plan_for(&state, &members, &heard, &behind, after, &spec);
        assert!(p
            .commands
            .iter()
            .all(|c| !matches!(c, Command::SetOwnership { .. })));
        // Caught up: it gets its share.
        let p = plan_for(&state, &members, &heard, &|_| true, after, &spec);
        run(&mut state, p);
        assert_eq!(state.owners.values().filter(|o| **o == 3).count(), 2);
    }

    #[test]
    fn a_member_behind_the_map_counts_from_the_first_newer_version() {
        let t0 = Instant::now();
        let mut v = MapVersions::default();
        v.saw(3, t0);
        v.saw(3, t0 + Duration::from_secs(1));
        v.saw(4, t0 + Duration::from_secs(2));
        let at = t0 + Duration::from_secs(5);
        assert_eq!(v.behind_for(4, at), Duration::ZERO, "caught up");
        assert_eq!(
            v.behind_for(3, at),
            Duration::from_secs(3),
            "behind version 4"
        );
        assert_eq!(
            v.behind_for(1, at),
            Duration::from_secs(5),
            "from the oldest known"
        );
        for n in 5..200 {
            v.saw(n, at);
        }
        assert_eq!(v.seen.len(), MAP_VERSIONS_KEPT);
    }

    #[test]
    fn a_member_back_from_down_has_its_lag_counted_from_its_return() {
        let t0 = Instant::now();
        let after = Duration::from_secs(1);
        let members: BTreeSet<NodeId> = [1, 2].into();
        let mut r = Returns::default();
        let mut versions = MapVersions::default();
        versions.saw(7, t0);
        // Node 2 beats (silent 0.2 s): its lag counts from its first sighting.
        r.observe(&members, &|_| Duration::from_millis(200), after, t0);
        // It is killed; the takeover map (8) is current while it is down.
        versions.saw(8, t0 + Duration::from_millis(500));
        let down = t0 + Duration::from_secs(2);
        // (Node 1 beats all along.)
        r.observe(
            &members,
            &|id| Duration::from_millis(if id == 2 { 1500 } else { 100 }),
            after,
            down,
        );
        // Back at 4 s, still on map 7: behind for 3.5 s, but back for 0 s.
        let back = t0 + Duration::from_secs(4);
        r.observe(&members, &|_| Duration::from_millis(100), after, back);
        let behind = versions.behind_for(7, back);
        assert_eq!(behind, Duration::from_millis(3500));
        assert_eq!(
            r.lag(2, behind, back),
            Duration::ZERO,
            "not down again at once"
        );
        // Still on 7 a second and a half later: that is a lagging member.
        let later = back + Duration::from_millis(1500);
        r.observe(&members, &|_| Duration::from_millis(100), after, later);
        assert_eq!(
            r.lag(2, versions.behind_for(7, later), later),
            Duration::from_millis(1500)
        );
        // A member that never left keeps the whole lag (a one-way cut: it beats
        // and cannot receive the herd's entries).
        assert_eq!(
            r.lag(1, Duration::from_secs(5), later),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn records_of_departed_nodes_are_forgotten() {
        let state = ClusterState {
            nodes: [(1, record()), (4, record())].into(),
            ..Default::default()
        };
        let members: BTreeSet<NodeId> = [1].into();
        let p = plan_for(
            &state,
            &members,
            &|_| Duration::ZERO,
            &|_| true,
            Duration::from_secs(1),
            &spec(1),
        );
        assert!(p.commands.contains(&Command::Forget { node: 4 }));
    }

    #[test]
    fn peer_alert_tells_who_when_and_what_moved() {
        let h = NodeHealth {
            up: false,
            since_ms: 0,
            seen_by: 1,
            transitions: 3,
            moved: vec!["a → 3".into()],
        };
        let a = peer_alert(2, &h, "10.0.0.2:7401");
        assert_eq!(a.target, "herd-node-2");
        assert_eq!(a.rule, NODE_DOWN_RULE);
        assert_eq!(a.transitions, 3);
        assert!(
            a.summary.contains("node 2 (10.0.0.2:7401) down"),
            "{}",
            a.summary
        );
        assert!(a.description.contains("seen by node 1") && a.description.contains("a → 3"));
    }
}
