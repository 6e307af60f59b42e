//! The fleet spec, pauses and ownership as the herd agreed on them (the applied
//! Raft state), and what this node owns of it: proposals go through Raft, the
//! view of "what I own" is recomputed whenever the applied state or the lease
//! changes, and published to the collectors and the rules.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::cluster::node::{ClusterError, ClusterNode};
use crate::cluster::types::{ClusterState, Command, NodeId};
use crate::config::{parse_fleet, ConfigErrors, FleetSpec, TargetSpec};
use crate::model::{now_ms, Event, EventKind};
use crate::ownership::{machines, Owned, OwnedTx, Pause};
use crate::store::Store;

/// Names of targets an apply added, changed, removed or left alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecDiff {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    pub unchanged: Vec<String>,
}

/// Pure diff of two specs by target name.
pub fn diff(old: &FleetSpec, new: &FleetSpec) -> SpecDiff {
    let old: BTreeMap<&str, &TargetSpec> =
        old.targets.iter().map(|t| (t.name.as_str(), t)).collect();
    let new: BTreeMap<&str, &TargetSpec> =
        new.targets.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut d = SpecDiff::default();
    for (name, t) in &new {
        match old.get(name) {
            None => d.added.push(name.to_string()),
            Some(o) if o != t => d.changed.push(name.to_string()),
            Some(_) => d.unchanged.push(name.to_string()),
        }
    }
    d.removed = old
        .keys()
        .filter(|n| !new.contains_key(*n))
        .map(|n| n.to_string())
        .collect();
    d
}

#[derive(Debug, thiserror::Error)]
pub enum PauseError {
    #[error("no target named {0:?} in the applied fleet spec")]
    NoTarget(String),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{0}")]
    Invalid(ConfigErrors),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

/// The applied spec parsed once per version.
#[derive(Debug, Clone)]
struct Parsed {
    /// The applied version this was computed for.
    version: u64,
    /// The spec in force: the applied one, or, when that does not parse here, the
    /// last one that did (empty if none did).
    spec: Arc<FleetSpec>,
    /// The version of `spec` (0: none).
    good: u64,
    /// Why the applied version does not parse here.
    error: Option<String>,
}

impl Parsed {
    fn empty() -> Parsed {
        Parsed {
            version: 0,
            spec: Arc::new(FleetSpec::default()),
            good: 0,
            error: None,
        }
    }

    /// The spec in force after version `version` (text, source) was applied: a
    /// spec that does not parse here (a newer grammar, a stricter validator after
    /// an upgrade) leaves the last one that did in force and says why (pure).
    fn next(&self, version: u64, text: &str, source: &str) -> Parsed {
        if version == 0 {
            return Parsed::empty();
        }
        match parse_fleet(text, source) {
            Ok(s) => Parsed {
                version,
                spec: Arc::new(s),
                good: version,
                error: None,
            },
            Err(e) => Parsed {
                version,
                spec: self.spec.clone(),
                good: self.good,
                error: Some(format!(
                    "fleet spec v{version} does not parse on this node, which keeps {}: {e}",
                    if self.good == 0 {
                        "no spec (and the leader keeps the ownership map as it is)".to_string()
                    } else {
                        format!("spec v{} in force", self.good)
                    }
                )),
            },
        }
    }
}

pub struct FleetState {
    node: ClusterNode,
    store: Store,
    parsed: Mutex<Parsed>,
    /// Serializes applies, so a diff is against the version the apply replaces.
    applying: tokio::sync::Mutex<()>,
}

impl FleetState {
    pub fn new(node: ClusterNode, store: Store) -> Arc<FleetState> {
        Arc::new(FleetState {
            node,
            store,
            parsed: Mutex::new(Parsed::empty()),
            applying: tokio::sync::Mutex::new(()),
        })
    }

    pub fn cluster(&self) -> &ClusterNode {
        &self.node
    }

    /// The applied cluster state.
    pub fn state(&self) -> Arc<ClusterState> {
        self.node.state().borrow().clone()
    }

    /// The applied spec and its version.
    pub fn current(&self) -> (u64, Arc<FleetSpec>) {
        let state = self.state();
        self.spec_of(&state)
    }

    fn spec_of(&self, state: &ClusterState) -> (u64, Arc<FleetSpec>) {
        let mut cache = self.parsed.lock().unwrap_or_else(|p| p.into_inner());
        if cache.version != state.spec_version {
            let next = cache.next(state.spec_version, &state.spec_text, &state.spec_source);
            if let Some(e) = &next.error {
                tracing::error!(version = state.spec_version, "{e}");
            }
            *cache = next;
        }
        (cache.version, cache.spec.clone())
    }

    /// Why the applied spec does not parse on this node (None: it does).
    pub fn spec_error(&self) -> Option<String> {
        let state = self.state();
        self.spec_of(&state);
        self.parsed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .error
            .clone()
    }

    /// Whether the spec in force is one that parsed (not the empty stand-in for an
    /// applied spec this node cannot read).
    pub fn spec_known(&self) -> bool {
        let state = self.state();
        self.spec_of(&state);
        let p = self.parsed.lock().unwrap_or_else(|p| p.into_inner());
        p.version == 0 || p.good > 0
    }

    /// Makes this node a herd of one when it is in none yet (a node used alone, as
    /// before the herd existed), for a write that needs a herd (`apply`, a silence).
    /// A node configured with peers never does: it forms or joins the herd with
    /// them, and the write fails until it has.
    pub async fn ensure_herd(&self) -> Result<bool, ClusterError> {
        if self.node.config().declarative && !self.node.in_herd() {
            let waiting = self.node.bootstrap_status();
            return Err(ClusterError::Rejected(format!(
                "node {} has cluster.peers and is not in the herd yet ({}); it forms or joins \
                 the herd with its peers by itself: try again once `herd status` shows it a member",
                self.node.id(),
                if waiting.is_empty() {
                    "starting".into()
                } else {
                    waiting
                }
            )));
        }
        self.init_herd().await
    }

    /// `cluster init`: makes this node a herd of one when it is in none yet.
    pub async fn init_herd(&self) -> Result<bool, ClusterError> {
        let mut members = BTreeMap::new();
        members.insert(
            self.node.id(),
            openraft::BasicNode::new(self.node.addr().to_string()),
        );
        let made = self.node.init(members).await?;
        if made {
            tracing::info!(node = self.node.id(), "this node is now a herd of one");
        }
        Ok(made)
    }

    /// Validates `text` and proposes it through Raft; returns once applied here.
    pub async fn apply(&self, text: &str, source: &str) -> Result<(u64, SpecDiff), ApplyError> {
        let spec = parse_fleet(text, source).map_err(ApplyError::Invalid)?;
        let _one_at_a_time = self.applying.lock().await;
        self.ensure_herd().await?;
        let (_, old) = self.current();
        let r = self
            .node
            .write(Command::ApplySpec {
                text: text.to_string(),
                source: source.to_string(),
            })
            .await?;
        let version = r.version;
        // Returns once the leader has placed the new targets too (when there is a
        // node to place them on), so that `herd status` right after shows owners.
        let names: Vec<String> = spec.targets.iter().map(|t| t.name.clone()).collect();
        self.wait_applied(|s| {
            s.spec_version >= version && names.iter().all(|n| s.owners.contains_key(n))
        })
        .await;
        let d = diff(&old, &spec);
        self.store
            .event(Event {
                ts_ms: now_ms(),
                target: String::new(),
                kind: EventKind::SpecApplied,
                message: format!(
                    "fleet spec v{version} from {source}: {} added, {} changed, {} removed",
                    d.added.len(),
                    d.changed.len(),
                    d.removed.len()
                ),
            })
            .await;
        tracing::info!(version, added = ?d.added, changed = ?d.changed, removed = ?d.removed, "fleet spec applied");
        Ok((version, d))
    }

    /// A write returns when the leader applied it; this node may apply it a moment later.
    async fn wait_applied(&self, done: impl Fn(&ClusterState) -> bool) {
        let mut rx = self.node.state();
        let _ = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|s| done(s))).await;
    }

    /// Pauses a target of the applied spec for the whole herd: not scraped, no
    /// alert, until resumed or `until_ms`.
    pub async fn pause(&self, target: &str, pause: Pause) -> Result<(), PauseError> {
        let (_, spec) = self.current();
        if !spec.targets.iter().any(|t| t.name == target) {
            return Err(PauseError::NoTarget(target.to_string()));
        }
        self.node
            .write(Command::Pause {
                target: target.to_string(),
                pause: pause.clone(),
            })
            .await?;
        self.wait_applied(|s| s.pauses.get(target) == Some(&pause))
            .await;
        Ok(())
    }

    /// Resumes a paused target; false when it was not paused.
    pub async fn resume(&self, target: &str) -> Result<bool, PauseError> {
        if !self.state().pauses.contains_key(target) {
            return Ok(false);
        }
        let r = self
            .node
            .write(Command::Resume {
                target: target.to_string(),
            })
            .await?;
        self.wait_applied(|s| !s.pauses.contains_key(target)).await;
        Ok(r.version > 0)
    }

    /// Adds a silence for the whole herd (a node in no herd becomes a herd of one).
    pub async fn silence(
        &self,
        silence: crate::store::alerting::Silence,
    ) -> Result<(), ClusterError> {
        self.ensure_herd().await?;
        let id = silence.id.clone();
        self.node.write(Command::SilenceAdd { silence }).await?;
        self.wait_applied(|s| s.silences.contains_key(&id)).await;
        Ok(())
    }

    /// Ends a silence now; false when there was none with that id.
    pub async fn unsilence(&self, id: &str) -> Result<bool, ClusterError> {
        if !self.state().silences.contains_key(id) {
            return Ok(false);
        }
        let r = self
            .node
            .write(Command::SilenceRemove { id: id.to_string() })
            .await?;
        self.wait_applied(|s| !s.silences.contains_key(id)).await;
        Ok(r.version > 0)
    }

    /// Ends pauses whose time is up (the leader proposes it; called every second).
    pub async fn expire_pauses(&self, now_ms: i64) {
        if !self.node.is_leader() {
            return;
        }
        let due = self
            .state()
            .pauses
            .values()
            .any(|p| p.until_ms.is_some_and(|u| u <= now_ms));
        if due {
            match self.node.write(Command::ExpirePauses { now_ms }).await {
                Ok(r) => tracing::info!(ended = r.version, "pauses ended"),
                Err(e) => tracing::warn!(error = %e, "cannot end pauses now; retrying"),
            }
        }
    }

    /// What this node owns now, from the applied state (for the first value the
    /// collectors and rules see: the stored spec, not an empty one).
    pub fn view_now(&self, lease: Duration) -> Owned {
        let state = self.state();
        let me = self.node.id();
        self.node.liveness().set_applied(state.ownership_version);
        let fenced = !self.node.liveness().lease_valid(&self.node.voters(), lease);
        let (version, spec) = self.spec_of(&state);
        let mut view = owned_view(me, &state, version, &spec, &imbl::OrdMap::new(), fenced);
        view.spec_unknown = !self.spec_known();
        view
    }

    /// Publishes what this node owns until `cancel`: on every applied change and
    /// every `recheck` (the lease is a matter of time, not of state).
    pub async fn publish_owned(
        self: Arc<Self>,
        owned: OwnedTx,
        lease: Duration,
        recheck: Duration,
        cancel: CancellationToken,
    ) {
        let me = self.node.id();
        let mut state_rx = self.node.state();
        let mut tick = tokio::time::interval(recheck);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Owners of the map before the current one: who a gained target came from.
        let mut last_owners: imbl::OrdMap<String, NodeId> = imbl::OrdMap::new();
        let mut last_version = 0u64;
        let mut prev_owners: imbl::OrdMap<String, NodeId> = imbl::OrdMap::new();
        let mut was_fenced: Option<bool> = None;
        // Since when the lease has been lost: within PARK_GRACE the view keeps the
        // targets, parked (a blip keeps sessions and alert state; nothing acts).
        let mut fenced_since: Option<std::time::Instant> = None;
        // The alerts handed over are read when ownership, spec or fencing change
        // only: the owner's own alert updates must not make a new view each time.
        let mut snapshot_of = (u64::MAX, u64::MAX, false);
        let mut alerts = Vec::new();
        let mut notices = Vec::new();
        // The view is recomputed only when its inputs change (a fleet of thousands
        // of targets is not copied ten times a second for nothing).
        let mut computed_for: Option<ViewInputs> = None;
        // When this node first applied the current ownership version: gained
        // targets are held at most HOLD_MAX from then.
        let mut version_since = std::time::Instant::now();
        // The targets of the view last published: what this node acts for.
        let mut acted: BTreeSet<String> = BTreeSet::new();
        let mut told_spec_error: Option<String> = None;
        loop {
            let state = state_rx.borrow_and_update().clone();
            let spec_error = self.spec_error();
            if spec_error.is_some() && spec_error != told_spec_error {
                self.store
                    .event(Event {
                        ts_ms: now_ms(),
                        target: String::new(),
                        kind: EventKind::SpecRejected,
                        message: spec_error.clone().unwrap_or_default(),
                    })
                    .await;
            }
            told_spec_error = spec_error;
            if state.ownership_version != last_version {
                prev_owners = std::mem::replace(&mut last_owners, state.owners.clone());
                last_version = state.ownership_version;
                version_since = std::time::Instant::now();
            }
            self.node.liveness().set_applied(state.ownership_version);
            let voters = self.node.voters();
            let fenced = !self.node.liveness().lease_valid(&voters, lease);
            self.node.liveness().set_fenced(fenced);
            if was_fenced != Some(fenced) {
                if fenced && was_fenced.is_some() {
                    tracing::warn!(node = me, grace = ?PARK_GRACE, "lease lost: no majority heard within the lease; scrapes, rules and notifications stop now, sessions and alert state are kept for the grace");
                    fenced_since = Some(std::time::Instant::now());
                } else if !fenced && was_fenced == Some(true) {
                    tracing::info!(node = me, "lease valid again");
                }
                if !fenced {
                    fenced_since = None;
                }
                was_fenced = Some(fenced);
            }
            let parked = fenced && fenced_since.is_some_and(|t| t.elapsed() < PARK_GRACE);
            if fenced && !parked && fenced_since.take().is_some() {
                tracing::warn!(node = me, "lease still lost after the grace: closing sessions and dropping alert state of this node's targets (the herd keeps them)");
            }
            // Another member still heard that acts on an older map than this
            // node applied may still scrape what this node now takes up.
            let liveness = self.node.liveness();
            let behind: Vec<NodeId> =
                if fenced || version_since.elapsed() >= lease * HOLD_MAX_LEASES {
                    Vec::new()
                } else {
                    self.node
                        .members()
                        .into_iter()
                        .map(|(id, _)| id)
                        .filter(|p| {
                            *p != me
                                && liveness.silent_for(*p) < lease
                                && liveness.acting_of(*p).unwrap_or(0) < state.ownership_version
                        })
                        .collect()
                };
            let held = held_targets(me, &state, &acted, !behind.is_empty());
            let unchanged = computed_for.as_ref().is_some_and(|(st, f, h)| {
                *f == (fenced, parked) && *h == held && same_view_inputs(st, &state)
            });
            if !unchanged {
                if !held.is_empty() {
                    tracing::debug!(held = ?held, behind = ?behind, "targets taken up held until every member heard acts on this map or none");
                }
                computed_for = Some((state.clone(), (fenced, parked), held.clone()));
                let (version, spec) = self.spec_of(&state);
                let mut view =
                    owned_view(me, &state, version, &spec, &prev_owners, fenced && !parked);
                view.fenced = fenced;
                view.spec_unknown = !self.spec_known();
                let key = (state.ownership_version, version, fenced);
                if key != snapshot_of {
                    snapshot_of = key;
                    alerts = view.alerts.clone();
                    notices = view.notices.clone();
                } else {
                    view.alerts = alerts.clone();
                    view.notices = notices.clone();
                }
                // After the snapshot: what the herd handed over stays whole, and a
                // target released from its hold gets its alerts with it.
                view.hold(&held);
                // Parked targets are not acted for: back from a fence, a target is
                // taken up again like any other.
                acted = if view.fenced {
                    BTreeSet::new()
                } else {
                    view.targets.iter().map(|t| t.name.clone()).collect()
                };
                let current = owned.borrow().clone();
                if *current != view {
                    let _ = owned.send(Arc::new(view));
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                changed = state_rx.changed() => if changed.is_err() { return },
                _ = tick.tick() => {}
            }
        }
    }
}

/// A target this node takes up (it did not act for it in the view it last
/// published: gained from another node, or owned again after a fence) is held —
/// not scraped, its alerts not run — while another member that is still heard
/// says, in its beats, that it acts on an older map than this node applied: that
/// member may still act for the target (cut from the leader only, it keeps a lease
/// through the others; an old owner of a planned move may not have applied the
/// move yet). A member fences itself as soon as it hears of a newer map than it
/// applied, and then says it acts on none, within a beat interval or two. Held at
/// most this many leases after the map was applied.
const HOLD_MAX_LEASES: u32 = 2;

/// What a published view was computed from: the applied state, (fenced, parked)
/// and the targets held.
type ViewInputs = (Arc<ClusterState>, (bool, bool), BTreeSet<String>);

/// How long a node whose lease is lost keeps its targets parked: SSH sessions
/// open and alert state in memory, nothing scraped, evaluated, notified or run.
/// A blip shorter than this resumes without a reconnect storm; a longer loss
/// closes everything (the herd has moved the targets by then).
pub const PARK_GRACE: Duration = Duration::from_secs(10);

/// The targets `state` gives `me` that it did not act for (`acted`), when another
/// member may act on an older map (`behind`) (pure).
fn held_targets(
    me: NodeId,
    state: &ClusterState,
    acted: &BTreeSet<String>,
    behind: bool,
) -> BTreeSet<String> {
    if !behind {
        return BTreeSet::new();
    }
    state
        .owners
        .iter()
        .filter(|(name, o)| **o == me && !acted.contains(*name))
        .map(|(name, _)| name.clone())
        .collect()
}

/// Whether two applied states give the same view of what a node owns (alerts are
/// read only when ownership, spec or fencing change: see `publish_owned`).
fn same_view_inputs(a: &ClusterState, b: &ClusterState) -> bool {
    a.spec_version == b.spec_version
        && a.ownership_version == b.ownership_version
        && a.pauses == b.pauses
        && a.nodes == b.nodes
}

/// What node `me` owns under the applied `state` (pure). `prev_owners` is the map
/// before the current one: targets that come from another node are `gained`.
pub fn owned_view(
    me: NodeId,
    state: &ClusterState,
    spec_version: u64,
    spec: &Arc<FleetSpec>,
    prev_owners: &imbl::OrdMap<String, NodeId>,
    fenced: bool,
) -> Owned {
    let mut targets: Vec<TargetSpec> = Vec::new();
    if !fenced {
        let mine = |name: &str| state.owners.get(name) == Some(&me);
        targets.extend(spec.targets.iter().filter(|t| mine(&t.name)).cloned());
        // As many watchers as there could be: the map says which exist.
        targets.extend(
            machines::targets(&state.nodes, state.nodes.len())
                .into_iter()
                .filter(|t| mine(&t.name)),
        );
    }
    let names: BTreeSet<&str> = targets.iter().map(|t| t.name.as_str()).collect();
    Owned {
        spec_unknown: false,
        spec_version,
        ownership_version: state.ownership_version,
        spec: spec.clone(),
        paused: state
            .pauses
            .iter()
            .filter(|(n, _)| names.contains(n.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        alerts: state
            .alerts
            .values()
            .filter(|a| names.contains(a.target.as_str()))
            .map(|a| crate::model::Alert::clone(a))
            .collect(),
        forgotten: state
            .forgotten
            .values()
            .filter(|f| names.contains(f.target.as_str()))
            .cloned()
            .collect(),
        notices: state
            .notices
            .values()
            .filter(|e| {
                e.sender == crate::store::alerting::Sender::Owner
                    && names.contains(e.notification.alert.target.as_str())
            })
            .cloned()
            .collect(),
        gained: targets
            .iter()
            .filter(|t| prev_owners.get(&t.name).is_some_and(|o| *o != me))
            .map(|t| t.name.clone())
            .collect(),
        fenced,
        targets,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_taken_up_are_held_while_a_member_acts_on_an_older_map() {
        let state = ClusterState {
            owners: [
                ("a".to_string(), 1u64),
                ("b".to_string(), 1),
                ("c".to_string(), 2),
            ]
            .into_iter()
            .collect(),
            ownership_version: 7,
            ..Default::default()
        };
        // Node 1 acted for b already; a is new to it; c is node 2's.
        let acted: BTreeSet<String> = ["b".to_string()].into();
        assert_eq!(
            held_targets(1, &state, &acted, true),
            ["a".to_string()].into()
        );
        assert!(held_targets(1, &state, &acted, false).is_empty());
        // Back from a fence: it acted for nothing, so everything waits.
        assert_eq!(held_targets(1, &state, &BTreeSet::new(), true).len(), 2);
    }

    #[test]
    fn a_spec_that_does_not_parse_here_leaves_the_last_good_one_in_force() {
        let good = "[[target]]\nname='a'\ntransport='local'\n";
        let newer = "[[target]]\nname='a'\ntransport='local'\nfuture_key = 1\n";
        let p = Parsed::empty().next(1, good, "f");
        assert_eq!((p.version, p.good, p.error.is_none()), (1, 1, true));
        let q = p.next(2, newer, "f");
        assert_eq!((q.version, q.good), (2, 1));
        assert_eq!(q.spec.targets[0].name, "a", "the old spec stays in force");
        let e = q.error.clone().unwrap();
        assert!(
            e.contains("v2 does not parse") && e.contains("spec v1 in force"),
            "{e}"
        );
        assert!(e.contains("future_key"), "{e}");
        // After a restart nothing parsed yet: no spec, and the reason says so.
        let r = Parsed::empty().next(2, newer, "f");
        assert_eq!(r.good, 0);
        assert!(r.spec.targets.is_empty());
        assert!(r.error.unwrap().contains("keeps the ownership map"));
        // A later good spec clears the error.
        let s = q.next(3, good, "f");
        assert_eq!((s.good, s.error), (3, None));
    }

    #[test]
    fn diff_names_every_kind_of_change() {
        let a = parse_fleet("[[target]]\nname='a'\ntransport='local'\n[[target]]\nname='b'\ntransport='local'\n[[target]]\nname='c'\ntransport='local'\n", "a").unwrap();
        let b = parse_fleet("[[target]]\nname='a'\ntransport='local'\n[[target]]\nname='b'\ntransport='local'\ninterval='20s'\n[[target]]\nname='d'\ntransport='local'\n", "b").unwrap();
        let d = diff(&a, &b);
        assert_eq!(d.unchanged, ["a"]);
        assert_eq!(d.changed, ["b"]);
        assert_eq!(d.added, ["d"]);
        assert_eq!(d.removed, ["c"]);
    }

    #[test]
    fn a_node_owns_its_share_and_nothing_when_fenced() {
        let text =
            "[[target]]\nname='a'\ntransport='local'\n[[target]]\nname='b'\ntransport='local'\n";
        let spec = Arc::new(parse_fleet(text, "f").unwrap());
        let mut state = ClusterState::default();
        state.apply(&Command::SetOwnership {
            owners: [
                ("a".to_string(), 1),
                ("b".to_string(), 2),
                ("herd-node-2".to_string(), 1),
            ]
            .into(),
            reason: String::new(),
        });
        state.apply(&Command::NodeInfo {
            node: 2,
            addr: "127.0.0.1:2".into(),
            machine: "local".into(),
        });
        state.apply(&Command::Pause {
            target: "a".into(),
            pause: Pause {
                by: "me".into(),
                reason: "r".into(),
                since_ms: 0,
                until_ms: None,
            },
        });
        let notice = crate::store::alerting::fixtures::notice;
        state.apply(&Command::Alerts {
            upserts: vec![],
            deleted: vec![],
            queued: vec![notice("x:1:c", "a", 1), notice("y:1:c", "b", 1)],
            delivered: vec![],
            fence: None,
        });
        let before: imbl::OrdMap<String, NodeId> = [("a".to_string(), 3u64)].into_iter().collect();
        let v = owned_view(1, &state, 1, &spec, &before, false);
        let keys: Vec<&str> = v
            .notices
            .iter()
            .map(|e| e.notification.idempotency_key.as_str())
            .collect();
        assert_eq!(
            keys,
            ["x:1:c"],
            "the undelivered notices of its own targets"
        );
        let names: Vec<&str> = v.targets.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            ["a", "herd-node-2"],
            "its spec targets and the machine it watches"
        );
        assert!(v.paused.contains_key("a"));
        assert_eq!(
            v.active().count(),
            1,
            "a paused target is owned, not scraped"
        );
        assert_eq!(
            v.gained.iter().collect::<Vec<_>>(),
            ["a"],
            "taken over from node 3"
        );
        let fenced = owned_view(1, &state, 1, &spec, &before, true);
        assert!(fenced.targets.is_empty() && fenced.fenced);
    }
}
