//! The fleet spec this node applied, kept in the store so a restart resumes it, and
//! published to the collectors as "what this node owns".
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::{owned_by, OwnedTx, Pause};
use crate::config::{parse_fleet, ConfigErrors, FleetSpec, TargetSpec};
use crate::model::{now_ms, Event, EventKind};
use crate::store::{Store, StoreError};

const META_FLEET: &str = "fleet_spec";
const META_PAUSES: &str = "pauses";

/// The applied spec as stored: its text (so it can be parsed again by a newer
/// version) and its version.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSpec {
    version: u64,
    source: String,
    text: String,
}

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
    Store(#[from] StoreError),
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{0}")]
    Invalid(ConfigErrors),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct FleetState {
    node_id: u64,
    store: Store,
    owned: OwnedTx,
    current: Mutex<(u64, Arc<FleetSpec>)>,
    /// Paused targets (node-local until the herd replicates them), kept in the store.
    pauses: Mutex<BTreeMap<String, Pause>>,
    /// Serializes applies, so two at once cannot both become the same version.
    applying: tokio::sync::Mutex<()>,
}

impl FleetState {
    /// Loads the last applied spec from the store (none: an empty fleet) and
    /// publishes it.
    pub fn load(node_id: u64, store: Store, owned: OwnedTx) -> Result<FleetState, StoreError> {
        let mut version = 0;
        let mut spec = FleetSpec::default();
        if let Some(bytes) = store.get_meta(META_FLEET)? {
            match serde_json::from_slice::<StoredSpec>(&bytes) {
                Ok(stored) => match parse_fleet(&stored.text, &stored.source) {
                    Ok(s) => {
                        version = stored.version;
                        spec = s;
                    }
                    Err(e) => {
                        version = stored.version;
                        tracing::error!(errors = %e, "the stored fleet spec is no longer valid; starting with no targets until the next apply");
                    }
                },
                Err(e) => {
                    tracing::error!(error = %e, "unreadable stored fleet spec; starting with no targets")
                }
            }
        }
        let spec = Arc::new(spec);
        let pauses: BTreeMap<String, Pause> = store
            .get_meta(META_PAUSES)?
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let _ = owned.send(Arc::new(owned_by(node_id, &spec, version, &pauses)));
        Ok(FleetState {
            node_id,
            store,
            owned,
            pauses: Mutex::new(pauses),
            current: Mutex::new((version, spec)),
            applying: tokio::sync::Mutex::new(()),
        })
    }

    pub fn current(&self) -> (u64, Arc<FleetSpec>) {
        match self.current.lock() {
            Ok(c) => (c.0, c.1.clone()),
            Err(p) => {
                let c = p.into_inner();
                (c.0, c.1.clone())
            }
        }
    }

    fn pauses(&self) -> BTreeMap<String, Pause> {
        self.pauses.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// Tells the collectors and rules what this node owns now.
    fn publish(&self) {
        let (version, spec) = self.current();
        let _ = self.owned.send(Arc::new(owned_by(
            self.node_id,
            &spec,
            version,
            &self.pauses(),
        )));
    }

    /// Pauses a target of the applied spec: not scraped, no alert, until resumed or
    /// `until_ms`. Durable before it returns.
    pub async fn pause(&self, target: &str, pause: Pause) -> Result<(), PauseError> {
        let (_, spec) = self.current();
        if !spec.targets.iter().any(|t| t.name == target) {
            return Err(PauseError::NoTarget(target.to_string()));
        }
        let mut all = self.pauses();
        all.insert(target.to_string(), pause);
        self.save_pauses(all).await
    }

    /// Resumes a paused target; false when it was not paused.
    pub async fn resume(&self, target: &str) -> Result<bool, PauseError> {
        let mut all = self.pauses();
        if all.remove(target).is_none() {
            return Ok(false);
        }
        self.save_pauses(all).await.map(|()| true)
    }

    /// Ends pauses whose time is up (called every second by the daemon).
    pub async fn expire_pauses(&self, now_ms: i64) {
        let mut all = self.pauses();
        let before = all.len();
        all.retain(|_, p| p.until_ms.is_none_or(|u| u > now_ms));
        if all.len() != before {
            tracing::info!(ended = before - all.len(), "pauses ended");
            if let Err(e) = self.save_pauses(all).await {
                tracing::error!(error = %e, "cannot store ended pauses");
            }
        }
    }

    async fn save_pauses(&self, all: BTreeMap<String, Pause>) -> Result<(), PauseError> {
        let bytes = serde_json::to_vec(&all).unwrap_or_default();
        self.store.put_meta(META_PAUSES, bytes).await?;
        if let Ok(mut p) = self.pauses.lock() {
            *p = all;
        }
        self.publish();
        Ok(())
    }

    /// Validates `text`, stores it durably as the next version and publishes it.
    pub async fn apply(&self, text: &str, source: &str) -> Result<(u64, SpecDiff), ApplyError> {
        let spec = parse_fleet(text, source).map_err(ApplyError::Invalid)?;
        let _one_at_a_time = self.applying.lock().await;
        let (old_version, old) = self.current();
        let version = old_version + 1;
        let stored = StoredSpec {
            version,
            source: source.to_string(),
            text: text.to_string(),
        };
        let bytes = serde_json::to_vec(&stored).unwrap_or_default();
        self.store.put_meta(META_FLEET, bytes).await?;
        let d = diff(&old, &spec);
        let spec = Arc::new(spec);
        if let Ok(mut c) = self.current.lock() {
            *c = (version, spec.clone());
        }
        self.publish();
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
