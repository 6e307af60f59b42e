//! Alert state across the herd: each owner commits its alert changes, the
//! notifications it queued and those its outbox finished through Raft (coalesced),
//! so that a new owner continues them; and the outbox's part in the herd (who
//! delivers a replicated entry, and when).
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::node::ClusterNode;
use super::types::Command;
use crate::notify::worker::Notifier;
use crate::ownership;
use crate::rules::runner::AlertDelta;

/// The outbox's part in the herd: a replicated notification is delivered only by
/// its sender (the owner of its target, or the leader for a peer health notice),
/// once the herd recorded it, and never after the herd recorded it delivered; what
/// the outbox finished is committed like alert changes.
pub fn herd_hooks(
    cluster: &ClusterNode,
    owned: ownership::OwnedRx,
    replicate: tokio::sync::mpsc::UnboundedSender<AlertDelta>,
) -> crate::notify::worker::HerdHooks {
    let (state, me, node) = (cluster.state(), cluster.id(), cluster.clone());
    crate::notify::worker::HerdHooks {
        gate: Box::new(move |entry, now| {
            if owned.borrow().fenced {
                return crate::notify::worker::Gate::Wait;
            }
            // One watch borrow at a time (see `ClusterNode::follow_herd_id`).
            let leader = node.is_leader();
            state.borrow().gate_notice(entry, me, leader, now)
        }),
        report: Box::new(move |delivered, queued| {
            let _ = replicate.send(AlertDelta {
                queued,
                delivered,
                ..Default::default()
            });
        }),
    }
}

/// This node's alert changes waiting to be committed, coalesced by id and key.
#[derive(Default)]
struct Pending {
    upserts: std::collections::BTreeMap<String, crate::model::Alert>,
    deleted: std::collections::BTreeSet<String>,
    queued: std::collections::BTreeMap<String, crate::store::alerting::OutboxEntry>,
    delivered: std::collections::BTreeSet<String>,
    forgotten: std::collections::BTreeMap<String, crate::model::ForgottenAlert>,
    /// The ownership map the upserts, deletions and forgotten alerts were made under.
    ownership_version: u64,
    /// Alerts forgotten while a member could not apply it (a herd mid-upgrade),
    /// with the map each was forgotten under: they go to the herd once every
    /// member can (at most [`MAX_HELD_FORGOTTEN`]; kept while this node is
    /// fenced: each is refused by the herd if its target moved meanwhile).
    held: std::collections::BTreeMap<String, (u64, crate::model::ForgottenAlert)>,
}

/// Forgotten alerts held for a herd mid-upgrade at most; beyond, the herd keeps
/// its copies of the rest until their next episode ends.
const MAX_HELD_FORGOTTEN: usize = 100_000;

/// How often held forgotten alerts look whether the herd's level lets them go.
const HELD_RETRY: Duration = Duration::from_secs(5);

/// The level of [`Command::ForgetAlerts`].
fn forget_level() -> u32 {
    Command::ForgetAlerts {
        alerts: Vec::new(),
        fence: None,
    }
    .level()
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.upserts.is_empty()
            && self.deleted.is_empty()
            && self.queued.is_empty()
            && self.delivered.is_empty()
            && self.forgotten.is_empty()
    }

    /// Takes `d` in, unless its alert changes were made under another ownership
    /// map than those already here (then it waits for the next write: each write
    /// is fenced by one map).
    fn merge(&mut self, d: AlertDelta) -> Result<(), Box<AlertDelta>> {
        let changes = !d.upserts.is_empty() || !d.deleted.is_empty() || !d.forgotten.is_empty();
        if changes {
            let mine =
                !self.upserts.is_empty() || !self.deleted.is_empty() || !self.forgotten.is_empty();
            if mine && self.ownership_version != d.ownership_version {
                return Err(Box::new(d));
            }
            self.ownership_version = d.ownership_version;
        }
        for f in d.forgotten {
            self.forgotten.insert(f.id.clone(), f);
        }
        for a in d.upserts {
            // Back before the herd forgot it: its count goes on in the alert.
            self.forgotten.remove(&a.id);
            self.held.remove(&a.id);
            self.deleted.remove(&a.id);
            self.upserts.insert(a.id.clone(), a);
        }
        for id in d.deleted {
            self.upserts.remove(&id);
            self.forgotten.remove(&id);
            self.held.remove(&id);
            self.deleted.insert(id);
        }
        for e in d.queued {
            self.queued
                .insert(e.notification.idempotency_key.clone(), e);
        }
        self.delivered.extend(d.delivered);
        Ok(())
    }

    /// The commands to write, in order: the alert changes, then the alerts
    /// forgotten (one command per ownership map they were forgotten under) — only
    /// when every member applies that command's level (`herd_level`). In a herd
    /// mid-upgrade the herd keeps its copies of them meanwhile, as before levels,
    /// and they are held here for a later write.
    fn commands(&mut self, me: super::types::NodeId, herd_level: u32) -> Vec<Command> {
        let fence = |ownership_version| {
            Some(super::types::AlertFence {
                node: me,
                ownership_version,
            })
        };
        let mut out = Vec::with_capacity(2);
        if !(self.upserts.is_empty()
            && self.deleted.is_empty()
            && self.queued.is_empty()
            && self.delivered.is_empty())
        {
            out.push(Command::Alerts {
                upserts: self.upserts.values().cloned().collect(),
                deleted: self.deleted.iter().cloned().collect(),
                queued: self.queued.values().cloned().collect(),
                delivered: self.delivered.iter().cloned().collect(),
                fence: fence(self.ownership_version),
            });
        }
        self.hold_forgotten();
        if self.held.is_empty() {
            return out;
        }
        if forget_level() > herd_level {
            tracing::debug!(
                n = self.held.len(),
                herd_level,
                "resolved alerts wait to leave the herd's state: a member's build does not forget them"
            );
            return out;
        }
        let mut by_map: std::collections::BTreeMap<u64, Vec<crate::model::ForgottenAlert>> =
            std::collections::BTreeMap::new();
        for (version, f) in self.held.values() {
            by_map.entry(*version).or_default().push(f.clone());
        }
        out.extend(
            by_map
                .into_iter()
                .map(|(version, alerts)| Command::ForgetAlerts {
                    alerts,
                    fence: fence(version),
                }),
        );
        out
    }

    /// Moves the alerts forgotten under this write's map to those held.
    fn hold_forgotten(&mut self) {
        let forgotten = std::mem::take(&mut self.forgotten);
        self.hold(self.ownership_version, forgotten.into_values());
    }

    /// Holds `forgotten`, forgotten under map `version` (bounded).
    fn hold(
        &mut self,
        version: u64,
        forgotten: impl IntoIterator<Item = crate::model::ForgottenAlert>,
    ) {
        for f in forgotten {
            if self.held.len() < MAX_HELD_FORGOTTEN || self.held.contains_key(&f.id) {
                self.held.insert(f.id.clone(), (version, f));
            }
        }
    }

    /// What stays for the next write once `herd_level`'s commands were written:
    /// the forgotten alerts held (when they could not go).
    fn written(&mut self, herd_level: u32) {
        let held = if forget_level() > herd_level {
            std::mem::take(&mut self.held)
        } else {
            Default::default()
        };
        *self = Pending {
            held,
            ..Default::default()
        };
    }
}

/// Commits this node's alert changes through Raft, coalesced: whatever queued
/// while one write was under way goes in the next. Nothing is proposed while the
/// node is fenced (its changes then stay local, and the next owner continues from
/// what was committed before). After each commit the outbox looks again: entries
/// wait for the herd to record them.
pub async fn replicate_alerts(
    cluster: ClusterNode,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<AlertDelta>,
    owned: ownership::OwnedRx,
    notifier: Arc<Notifier>,
    cancel: CancellationToken,
) {
    let mut pending = Pending::default();
    // A delta made under another ownership map than `pending`: the next write's.
    let mut carry: Option<AlertDelta> = None;
    let me = cluster.id();
    loop {
        if pending.is_empty() {
            let d = match carry.take() {
                Some(d) => Some(d),
                None => tokio::select! {
                    _ = cancel.cancelled() => return,
                    d = rx.recv() => match d {
                        None => return,
                        Some(d) => Some(d),
                    },
                    _ = tokio::time::sleep(HELD_RETRY), if !pending.held.is_empty() => None,
                },
            };
            match d {
                // An empty `pending` takes any delta.
                Some(d) => {
                    let _ = pending.merge(d);
                }
                None if forget_level() > cluster.herd_level() => continue,
                None => {}
            }
        }
        while carry.is_none() {
            let Ok(d) = rx.try_recv() else { break };
            if let Err(d) = pending.merge(d) {
                carry = Some(*d);
            }
        }
        if owned.borrow().fenced {
            // What was delivered stays true, and what the engine forgot (each
            // fenced by the map it was forgotten under: refused if its target
            // moved meanwhile); the rest is the next owner's to redo.
            let mut delivered = std::mem::take(&mut pending.delivered);
            pending.hold_forgotten();
            if let Some(c) = carry.take() {
                delivered.extend(c.delivered);
                pending.hold(c.ownership_version, c.forgotten);
            }
            pending = Pending {
                delivered,
                held: std::mem::take(&mut pending.held),
                ..Default::default()
            };
            if !pending.is_empty() {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
            continue;
        }
        let herd_level = cluster.herd_level();
        match write_all(&cluster, pending.commands(me, herd_level)).await {
            Ok(()) => {
                pending.written(herd_level);
                notifier.wake();
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot commit alert changes to the herd; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }
    }
}

/// Writes `commands` in order; the first error stops. Each is idempotent, so a
/// retry of the whole list after a partial failure applies nothing twice.
async fn write_all(
    cluster: &ClusterNode,
    commands: Vec<Command>,
) -> Result<(), super::node::ClusterError> {
    for cmd in commands {
        let r = cluster.write(cmd).await?;
        if let Some(why) = r.refused {
            // The target moved (away, or away and back) since: its next owner's
            // history is the herd's, and this node follows it.
            tracing::warn!(refused = %why, "the herd refused alert changes made under an ownership map that is gone");
        }
    }
    Ok(())
}

/// How often the owners' new tail positions go to the herd (one Raft entry for
/// all that changed): a new owner re-reads at most this much of a log.
const TAILS_EVERY: Duration = Duration::from_secs(1);

/// The herd's copy of the checks' tail positions for the collectors: read from the
/// applied state, written through [`replicate_tails`].
pub struct HerdTails {
    state: tokio::sync::watch::Receiver<Arc<super::types::ClusterState>>,
    tx: tokio::sync::mpsc::UnboundedSender<(String, Vec<u8>)>,
}

impl HerdTails {
    pub fn new(
        cluster: &ClusterNode,
    ) -> (
        Arc<HerdTails>,
        tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (
            Arc::new(HerdTails {
                state: cluster.state(),
                tx,
            }),
            rx,
        )
    }
}

impl crate::model::HerdMarks for HerdTails {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.state
            .borrow()
            .tails
            .get(key)
            .map(|m| m.value.clone().into_bytes())
    }

    fn put(&self, key: &str, value: &[u8]) {
        let _ = self.tx.send((key.to_string(), value.to_vec()));
    }
}

/// Commits the newest tail position of each key every [`TAILS_EVERY`], while this
/// node holds its lease and is in a herd (a fenced node's positions are not the
/// herd's: the next owner continues from the last ones recorded).
pub async fn replicate_tails(
    cluster: ClusterNode,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    owned: ownership::OwnedRx,
    cancel: CancellationToken,
) {
    let mut pending: std::collections::BTreeMap<String, super::types::TailMark> =
        Default::default();
    let mut tick = tokio::time::interval(TAILS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            got = rx.recv() => match got {
                None => return,
                Some((key, value)) => {
                    pending.insert(key, super::types::TailMark {
                        value: String::from_utf8_lossy(&value).into_owned(),
                        at_ms: crate::model::now_ms(),
                    });
                }
            },
            _ = tick.tick() => {
                if pending.is_empty() || owned.borrow().fenced || !cluster.in_herd() {
                    if !cluster.in_herd() {
                        pending.clear();
                    }
                    continue;
                }
                let marks: Vec<_> = std::mem::take(&mut pending).into_iter().collect();
                if let Err(e) = cluster.write(Command::Tails { marks: marks.clone() }).await {
                    tracing::debug!(error = %e, "tail positions not recorded in the herd yet; retrying");
                    // Newer positions that arrived meanwhile win.
                    for (k, m) in marks {
                        pending.entry(k).or_insert(m);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::alerting::fixtures::notice;

    fn delta(version: u64, alert_key: Option<&str>, delivered: &[&str]) -> AlertDelta {
        AlertDelta {
            upserts: alert_key
                .map(|k| vec![notice(k, "a", 1).notification.alert])
                .unwrap_or_default(),
            delivered: delivered.iter().map(|k| k.to_string()).collect(),
            ownership_version: version,
            ..Default::default()
        }
    }

    #[test]
    fn one_write_is_fenced_by_one_ownership_map() {
        let mut p = Pending::default();
        assert!(p.merge(delta(4, Some("x:1:c"), &[])).is_ok());
        assert!(p.merge(delta(4, Some("y:1:c"), &[])).is_ok());
        assert!(
            p.merge(delta(0, None, &["z:1:c"])).is_ok(),
            "deliveries go with any map"
        );
        let later = p.merge(delta(6, Some("w:1:c"), &[]));
        assert!(
            later.is_err(),
            "a change under map 6 waits for the next write"
        );
        let [Command::Alerts { upserts, fence, .. }] = &p.commands(2, 1)[..] else {
            panic!("one alerts command");
        };
        let fence = *fence;
        assert_eq!(upserts.len(), 2);
        assert_eq!(
            fence,
            Some(crate::cluster::types::AlertFence {
                node: 2,
                ownership_version: 4
            })
        );
    }

    fn forgotten(version: u64, id: &str, transitions: u64) -> AlertDelta {
        AlertDelta {
            forgotten: vec![crate::model::ForgottenAlert {
                id: id.into(),
                target: "a".into(),
                transitions,
                settled_ms: 0,
            }],
            ownership_version: version,
            ..Default::default()
        }
    }

    #[test]
    fn forgotten_alerts_go_to_the_herd_only_when_every_member_can_apply_it() {
        let mut p = Pending::default();
        assert!(p.merge(delta(4, Some("x:1:c"), &[])).is_ok());
        assert!(p.merge(forgotten(4, "old", 2)).is_ok());
        assert!(
            p.merge(forgotten(5, "older", 2)).is_err(),
            "forgetting is fenced by the map like any alert change"
        );
        // A member of an older build (level 1): the alert changes only; the
        // forgotten alert is held for a later write.
        let cmds = p.commands(2, 1);
        assert_eq!(cmds.len(), 1);
        assert!(matches!(cmds[0], Command::Alerts { .. }));
        p.written(1);
        assert!(p.is_empty(), "nothing else to write now");
        assert_eq!(p.held.len(), 1, "held: {:?}", p.held);
        // Another one forgotten under a later map, still at level 1.
        assert!(p.merge(forgotten(5, "older", 3)).is_ok());
        assert!(p.commands(2, 1).is_empty());
        p.written(1);
        assert_eq!(p.held.len(), 2);
        // Every member at level 2: one forget per map, each fenced by its own.
        let cmds = p.commands(2, 2);
        let [Command::ForgetAlerts {
            alerts: a4,
            fence: f4,
        }, Command::ForgetAlerts {
            alerts: a5,
            fence: f5,
        }] = &cmds[..]
        else {
            panic!("two forgets: {cmds:?}");
        };
        assert_eq!((a4.len(), a4[0].id.as_str()), (1, "old"));
        assert_eq!((a5.len(), a5[0].id.as_str()), (1, "older"));
        assert_eq!(f4.map(|f| f.ownership_version), Some(4));
        assert_eq!(f5.map(|f| f.ownership_version), Some(5));
        p.written(2);
        assert!(p.held.is_empty(), "sent once");
        // Changes and forgetting in one write at level 2: changes first.
        let mut p = Pending::default();
        assert!(p.merge(delta(4, Some("x:1:c"), &[])).is_ok());
        assert!(p.merge(forgotten(4, "old", 2)).is_ok());
        let cmds = p.commands(2, 2);
        let [Command::Alerts { .. }, Command::ForgetAlerts { alerts, fence }] = &cmds[..] else {
            panic!("alerts then forget: {cmds:?}");
        };
        assert_eq!(alerts.len(), 1);
        assert_eq!(fence.map(|f| f.ownership_version), Some(4));
        // A held alert back before the herd forgot it is not forgotten.
        let mut p = Pending::default();
        assert!(p.merge(forgotten(4, "h", 1)).is_ok());
        assert!(p.commands(2, 1).is_empty());
        p.written(1);
        let mut back = delta(6, Some("h:2:c"), &[]);
        back.upserts[0].id = "h".into();
        assert!(p.merge(back).is_ok());
        assert!(p.held.is_empty());
        // An alert back before the herd forgot it is not forgotten.
        let mut p = Pending::default();
        assert!(p.merge(forgotten(4, "x", 1)).is_ok());
        let mut back = delta(4, Some("x:2:c"), &[]);
        back.upserts[0].id = "x".into();
        assert!(p.merge(back).is_ok());
        assert!(p.forgotten.is_empty());
    }
}
