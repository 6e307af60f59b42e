//! "What this node owns now": a value the collectors reconcile against.
//!
//! Until the herd (Raft ownership) exists, a node owns every target of the fleet
//! spec it applied. The cluster work replaces `owned_by` with the committed
//! ownership map; the collectors do not change.
use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::watch;

pub mod assign;
mod fleet_state;

pub use fleet_state::{diff, ApplyError, FleetState, PauseError, SpecDiff};

use crate::config::{FleetSpec, TargetSpec};

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Owned {
    /// Version of the fleet spec these targets come from.
    pub spec_version: u64,
    pub targets: Vec<TargetSpec>,
    /// The whole spec (rules, channels, routes apply to the owned targets).
    pub spec: Arc<FleetSpec>,
    /// Owned targets that are paused: not scraped, no alerts.
    pub paused: BTreeMap<String, Pause>,
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
}

/// The targets `node` owns under `spec`. Single node: all of them.
pub fn owned_by(
    _node: u64,
    spec: &Arc<FleetSpec>,
    spec_version: u64,
    pauses: &BTreeMap<String, Pause>,
) -> Owned {
    Owned {
        spec_version,
        targets: spec.targets.clone(),
        spec: spec.clone(),
        paused: pauses
            .iter()
            .filter(|(name, _)| spec.targets.iter().any(|t| &t.name == *name))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

pub type OwnedTx = watch::Sender<Arc<Owned>>;
pub type OwnedRx = watch::Receiver<Arc<Owned>>;

pub fn channel() -> (OwnedTx, OwnedRx) {
    watch::channel(Arc::new(Owned::default()))
}
