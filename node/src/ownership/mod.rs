//! "What this node owns now": a value the collectors reconcile against.
//!
//! Until the herd (Raft ownership) exists, a node owns every target of the fleet
//! spec it applied. The cluster work replaces `owned_by` with the committed
//! ownership map; the collectors do not change.
use std::sync::Arc;

use tokio::sync::watch;

mod fleet_state;

pub use fleet_state::{diff, ApplyError, FleetState, SpecDiff};

use crate::config::{FleetSpec, TargetSpec};

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Owned {
    /// Version of the fleet spec these targets come from.
    pub spec_version: u64,
    pub targets: Vec<TargetSpec>,
    /// The whole spec (rules, channels, routes apply to the owned targets).
    pub spec: Arc<FleetSpec>,
}

/// The targets `node` owns under `spec`. Single node: all of them.
pub fn owned_by(_node: u64, spec: &Arc<FleetSpec>, spec_version: u64) -> Owned {
    Owned {
        spec_version,
        targets: spec.targets.clone(),
        spec: spec.clone(),
    }
}

pub type OwnedTx = watch::Sender<Arc<Owned>>;
pub type OwnedRx = watch::Receiver<Arc<Owned>>;

pub fn channel() -> (OwnedTx, OwnedRx) {
    watch::channel(Arc::new(Owned::default()))
}
