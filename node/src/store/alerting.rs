//! Alert state, transition history, the notification outbox, the log of sent
//! notifications and silences. A transition and the notifications it causes are
//! written in one transaction, so a crash never loses one without the other.
use serde::{Deserialize, Serialize};

use crate::model::{glob_match, Alert, AlertState, Notification, NotifyKind};

/// One stored transition (history shown by `herd alerts --history`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransitionRecord {
    pub alert_id: String,
    pub rule: String,
    pub target: String,
    pub from: AlertState,
    pub to: AlertState,
    pub notify: Option<NotifyKind>,
    pub ts_ms: i64,
    /// Why no notification went out although one was due (silenced, no route).
    pub suppressed: Option<String>,
}

/// A notification waiting in the outbox until a channel took it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxEntry {
    pub notification: Notification,
    /// Delivery attempts so far on this channel.
    pub attempts: u32,
    /// Unix ms before which it is not tried (backoff, grouping, rate limit).
    pub not_before_ms: i64,
    pub created_ms: i64,
    /// Channels still to try, in order, when this one gives up.
    pub fallbacks: Vec<String>,
    pub last_error: Option<String>,
    /// Who in a herd delivers it.
    #[serde(default)]
    pub sender: Sender,
    /// For an owner's entry: the version of the ownership map it was queued under
    /// (0: not in a herd, or made before tenures were recorded).
    #[serde(default)]
    pub tenure: u64,
}

/// A boxed future, for the [`Outbox`] trait.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// The notification outbox as the rules (and the leader's peer notices) use it:
/// the node's wiring hands them the notifier, so that the rules never import it.
pub trait Outbox: Send + Sync {
    /// Builds the channels of the spec in force; called before anything is queued
    /// for them (an entry must not meet an unknown channel and be given up).
    fn configure<'a>(
        &'a self,
        channels: &'a [crate::config::channels::ChannelSpec],
    ) -> BoxFuture<'a, ()>;
    /// Queues the entries this outbox has neither queued nor delivered yet and wakes
    /// the delivery; returns how many were new.
    fn queue_new(
        &self,
        entries: Vec<OutboxEntry>,
    ) -> BoxFuture<'_, Result<usize, super::StoreError>>;
    /// Something was queued: look at the outbox now.
    fn wake(&self);
    /// Whether a channel that keeps firing alerts alive (Alertmanager) is due to
    /// be told them again.
    fn keep_alive_due(&self) -> bool {
        false
    }
    /// The firing alerts of the targets this node owns, each with the channels it
    /// is routed to: posted again to the keep-alive channels that are due.
    fn keep_alive(&self, _firing: Vec<(crate::model::Alert, Vec<String>)>) {}
}

/// `alert-id:transition:channel`, the idempotency key of a notification.
pub fn idempotency_key(alert_id: &str, transition: u64, channel: &str) -> String {
    format!("{alert_id}:{transition}:{channel}")
}

/// Who delivers an outbox entry. `Owner` and `Leader` entries are known to the
/// herd (committed through Raft): sent only once the herd recorded them, handed
/// over when the sender changes, never sent again once recorded delivered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sender {
    /// This node, whatever the herd says (a node outside a herd).
    #[default]
    Local,
    /// The owner of the alert's target (alert notifications).
    Owner,
    /// The leader (peer health notices: "node N down", "node N back").
    Leader,
}

impl Sender {
    /// Whether the herd decides who sends it.
    pub fn replicated(self) -> bool {
        self != Sender::Local
    }
}

/// A silence: matching alerts still change state but notify nobody.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Silence {
    pub id: String,
    /// `target=GLOB`, `rule=NAME`, `LABEL=VALUE`, joined by commas; all must match.
    pub selector: String,
    pub until_ms: i64,
    pub reason: String,
    pub created_ms: i64,
    pub created_by: String,
}

impl Silence {
    /// Whether this silence covers `alert` at `now_ms`.
    pub fn covers(&self, alert: &Alert, now_ms: i64) -> bool {
        if now_ms >= self.until_ms {
            return false;
        }
        self.selector
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .all(|part| {
                let Some((k, v)) = part.split_once('=') else {
                    return false;
                };
                let (k, v) = (k.trim(), v.trim());
                match k {
                    "target" => glob_match(v, &alert.target),
                    "rule" => glob_match(v, &alert.rule),
                    "severity" => v == alert.severity.as_str(),
                    label => alert.labels.get(label).is_some_and(|x| glob_match(v, x)),
                }
            })
    }

    /// Problems of a selector (pure): each part must be NAME=VALUE.
    pub fn check_selector(selector: &str) -> Result<(), SelectorError> {
        let parts: Vec<&str> = selector
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect();
        if parts.is_empty() {
            return Err(SelectorError::Empty);
        }
        for p in parts {
            match p.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() && !v.trim().is_empty() => {}
                _ => {
                    return Err(SelectorError::NotNameValue {
                        part: p.to_string(),
                    })
                }
            }
        }
        Ok(())
    }
}

/// What is wrong with a silence's selector.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("the selector is empty; write e.g. target=web-*,rule=disk-full")]
    Empty,
    /// One comma-separated part (trimmed) is not `NAME=VALUE`.
    #[error("{part:?} is not NAME=VALUE")]
    NotNameValue { part: String },
}

/// Test fixtures other modules' tests share.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::{OutboxEntry, Sender};

    /// An outbox entry keyed `key` for an alert of `target`, created at `created_ms`.
    pub(crate) fn notice(key: &str, target: &str, created_ms: i64) -> OutboxEntry {
        OutboxEntry {
            notification: crate::model::Notification {
                idempotency_key: key.into(),
                channel: "c".into(),
                kind: crate::model::NotifyKind::Firing,
                alert: crate::model::Alert {
                    id: key.split(':').next().unwrap_or_default().into(),
                    rule: "r".into(),
                    target: target.into(),
                    labels: Default::default(),
                    severity: crate::model::Severity::Warning,
                    state: crate::model::AlertState::Firing,
                    since_ms: created_ms,
                    active_since_ms: created_ms,
                    value: String::new(),
                    summary: String::new(),
                    description: String::new(),
                    transitions: 1,
                    acked_by: None,
                    flapping: false,
                },
                ts_ms: created_ms,
            },
            attempts: 0,
            not_before_ms: created_ms,
            created_ms,
            fallbacks: vec![],
            last_error: None,
            sender: Sender::Owner,
            tenure: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Severity;

    fn alert() -> Alert {
        Alert {
            id: "a1".into(),
            rule: "disk-full".into(),
            target: "web-1".into(),
            labels: [("mount".to_string(), "/".to_string())].into(),
            severity: Severity::Warning,
            state: AlertState::Firing,
            since_ms: 0,
            active_since_ms: 0,
            value: "95".into(),
            summary: String::new(),
            description: String::new(),
            transitions: 1,
            acked_by: None,
            flapping: false,
        }
    }

    #[test]
    fn silences_match_every_part_until_they_expire() {
        let s = Silence {
            id: "s".into(),
            selector: "target=web-*, rule=disk-full, mount=/".into(),
            until_ms: 100,
            reason: "maintenance".into(),
            created_ms: 0,
            created_by: "me".into(),
        };
        assert!(s.covers(&alert(), 50));
        assert!(!s.covers(&alert(), 100), "expired");
        let mut other = alert();
        other.target = "db-1".into();
        assert!(!s.covers(&other, 50));
        assert!(Silence::check_selector("target=web-*").is_ok());
        assert!(Silence::check_selector("web").is_err());
        assert!(Silence::check_selector("").is_err());
    }
}
