//! "What this node owns now": a value the collectors and the rules reconcile
//! against. It is computed from the applied Raft state (spec, ownership map,
//! pauses, replicated alerts) and this node's lease: a node whose lease is not
//! valid acts for nothing (it is fenced), whatever its map says.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use tokio::sync::watch;

pub mod assign;
pub mod machines;

use crate::config::{FleetSpec, TargetSpec};
use crate::model::Alert;

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Owned {
    /// Version of the fleet spec these targets come from.
    pub spec_version: u64,
    pub targets: Vec<TargetSpec>,
    /// The whole spec (rules, channels, routes apply to the owned targets).
    pub spec: Arc<FleetSpec>,
    /// Owned targets that are paused: not scraped, no alerts.
    pub paused: BTreeMap<String, Pause>,
    /// Version of the ownership map these targets come from.
    pub ownership_version: u64,
    /// Alerts of the owned targets as the herd last recorded them: a new owner
    /// continues them (no second "firing", the "resolved" still goes out).
    pub alerts: Vec<Alert>,
    /// Transition counts of the owned targets' alerts the herd forgot (settled
    /// past their retention): a later episode counts on from them.
    pub forgotten: Vec<crate::model::ForgottenAlert>,
    /// Notifications of the owned targets that their last owner queued and had not
    /// delivered when the herd last recorded them: a new owner delivers them.
    pub notices: Vec<crate::store::alerting::OutboxEntry>,
    /// Targets taken over from another node: scraped at once, not at a random phase.
    pub gained: BTreeSet<String>,
    /// True while the lease is not valid: nothing is scraped, evaluated, notified
    /// or run. For a short while (the park grace) `targets` still lists what the
    /// map gives this node, so that sessions and alert state survive a blip; after
    /// it, a fenced view owns nothing.
    pub fenced: bool,
    /// The applied spec does not parse on this node and none did before: the empty
    /// spec here says nothing about what the fleet is (no alert ends for it).
    pub spec_unknown: bool,
}

/// A paused target: who paused it, why, until when.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Pause {
    pub by: String,
    pub reason: String,
    pub since_ms: i64,
    /// None: until resumed.
    pub until_ms: Option<i64>,
}

impl Owned {
    /// Owned targets that are not paused.
    pub fn active(&self) -> impl Iterator<Item = &TargetSpec> {
        self.targets
            .iter()
            .filter(|t| !self.paused.contains_key(&t.name))
    }

    /// Leaves out `held` targets (with their pauses, alerts and notices): owned in
    /// the map, not yet acted for by this node.
    pub fn hold(&mut self, held: &std::collections::BTreeSet<String>) {
        if held.is_empty() {
            return;
        }
        self.targets.retain(|t| !held.contains(&t.name));
        self.paused.retain(|n, _| !held.contains(n));
        self.alerts.retain(|a| !held.contains(&a.target));
        self.notices
            .retain(|e| !held.contains(&e.notification.alert.target));
        self.gained.retain(|n| !held.contains(n));
    }
}

pub type OwnedTx = watch::Sender<Arc<Owned>>;
pub type OwnedRx = watch::Receiver<Arc<Owned>>;

pub fn channel() -> (OwnedTx, OwnedRx) {
    watch::channel(Arc::new(Owned::default()))
}
