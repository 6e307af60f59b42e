//! Remediation actions: a rule's `action` runs when its alert fires (and/or
//! resolves), on the target over the target's SSH session (or locally), only on the
//! owning node, at most once per alert transition (its key is recorded like a
//! notification's), at most `max_per_hour` per (rule, target). The exit code and the
//! first lines of output become an `action_run` event and part of the notification.
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use crate::config::rules::{Action, ActionOn, ActionWhere};
use crate::model::{now_ms, Alert, NotifyKind};
use crate::store::{OutboxChange, Store};
use crate::transport::Transports;
use crate::transport::{ExecOutput, LocalTransport};

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long past an action's timeout its notifications stay held if the node never
/// releases them (it died or hung): then they go out without the action's result.
const HOLD_MARGIN: Duration = Duration::from_secs(5);

/// How long the notifications of a transition with `action` are held for it (ms).
pub fn hold_ms(action: &Action) -> i64 {
    let timeout = action.timeout.map(|t| t.get()).unwrap_or(DEFAULT_TIMEOUT);
    (timeout + HOLD_MARGIN).as_millis().min(i64::MAX as u128) as i64
}
pub const DEFAULT_MAX_PER_HOUR: u32 = 3;
const HOUR_MS: i64 = 3_600_000;
/// Output kept of an action run.
const MAX_OUTPUT: usize = 64 * 1024;
/// Lines of output shown in the event and the notification.
const SHOWN_LINES: usize = 5;

/// Whether `action` runs for a transition that notifies `kind`.
pub fn applies(action: &Action, kind: NotifyKind) -> bool {
    matches!(
        (action.on, kind),
        (ActionOn::Firing | ActionOn::Both, NotifyKind::Firing)
            | (ActionOn::Resolved | ActionOn::Both, NotifyKind::Resolved)
    )
}

/// A run of an action the herd is asked to grant (in a herd, before it runs).
#[derive(Debug, Clone)]
pub struct ActionClaim {
    /// The transition's key (`ALERT:TRANSITIONS:action`).
    pub key: String,
    pub rule: String,
    pub target: String,
    pub at_ms: i64,
    pub max_per_hour: u32,
}

/// The herd's answer to an [`ActionClaim`].
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    Granted,
    /// Another request was granted this transition: not run again, silently.
    AlreadyRun,
    /// Not run, and why (the herd-wide rate, or the herd could not be asked).
    Refused(String),
}

/// Asks the herd to grant a run; `None` while the node is in no herd (the run is
/// then counted on this node alone).
pub type ClaimAction = std::sync::Arc<
    dyn Fn(
            ActionClaim,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<Claim>> + Send>>
        + Send
        + Sync,
>;

/// Runs actions and remembers their rate per (rule, target).
#[derive(Default)]
pub struct Actions {
    runs: Mutex<HashMap<(String, String), VecDeque<i64>>>,
}

impl Actions {
    /// Runs the action for one transition; returns a line describing what happened
    /// (for the event and the notification), or None when it did not run because
    /// it already ran for this transition.
    pub async fn run(
        &self,
        action: &Action,
        alert: &Alert,
        transports: &Transports,
        store: &Store,
        claim: Option<&ClaimAction>,
    ) -> Option<String> {
        let key = format!("{}:{}:action", alert.id, alert.transitions);
        let check = store.clone();
        let k = key.clone();
        let done = tokio::task::spawn_blocking(move || check.was_sent(&k))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(false);
        if done {
            return None;
        }
        let now = now_ms();
        let max = action.max_per_hour.unwrap_or(DEFAULT_MAX_PER_HOUR) as usize;
        let not_run = |why: &str| {
            Some(format!(
                "action of {} on {} not run: {why}",
                alert.rule, alert.target
            ))
        };
        // In a herd the herd grants the run: once per transition and max_per_hour
        // across every node that owned the target in the last hour.
        let mut granted = false;
        if let Some(claim) = claim {
            let asked = ActionClaim {
                key: key.clone(),
                rule: alert.rule.clone(),
                target: alert.target.clone(),
                at_ms: now,
                max_per_hour: max as u32,
            };
            match claim(asked).await {
                Some(Claim::Granted) => granted = true,
                Some(Claim::AlreadyRun) => return None,
                Some(Claim::Refused(why)) => return not_run(&why),
                None => {}
            }
        }
        let limited = !granted && {
            let mut runs = self.runs.lock().ok()?;
            let q = runs
                .entry((alert.rule.clone(), alert.target.clone()))
                .or_default();
            while q.front().is_some_and(|t| *t <= now - HOUR_MS) {
                q.pop_front();
            }
            if q.len() >= max {
                true
            } else {
                q.push_back(now);
                false
            }
        };
        if limited {
            return not_run(&format!("{max} runs in the last hour (max_per_hour)"));
        }
        // Recorded before running: at most once per transition, even across a crash.
        let mark = OutboxChange {
            mark_sent: vec![key],
            ..Default::default()
        };
        if let Err(e) = store.outbox_change(mark).await {
            return not_run(&e.to_string());
        }
        let timeout = action.timeout.map(|t| t.get()).unwrap_or(DEFAULT_TIMEOUT);
        let result = match action.location {
            ActionWhere::Node => LocalTransport.exec(&action.run, timeout, MAX_OUTPUT).await,
            ActionWhere::Target => {
                let t = transports
                    .read()
                    .ok()
                    .and_then(|t| t.get(&alert.target).cloned());
                match t {
                    Some(t) => t.exec(&action.run, timeout, MAX_OUTPUT).await,
                    None => {
                        return Some(format!(
                            "action of {} on {} not run: the target has no session on this node",
                            alert.rule, alert.target
                        ))
                    }
                }
            }
        };
        Some(match result {
            Ok(out) => describe(alert, &out),
            Err(e) => format!("action of {} on {} failed: {e}", alert.rule, alert.target),
        })
    }
}

fn describe(alert: &Alert, out: &ExecOutput) -> String {
    let text = String::from_utf8_lossy(if out.stdout.is_empty() {
        &out.stderr
    } else {
        &out.stdout
    });
    let lines: Vec<&str> = text.lines().take(SHOWN_LINES).collect();
    let code = out
        .exit_status
        .map(|c| c.to_string())
        .unwrap_or_else(|| "none (killed)".into());
    format!(
        "action of {} on {}: exit {code}{}{}",
        alert.rule,
        alert.target,
        if lines.is_empty() { "" } else { ": " },
        lines.join(" | ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_on_selects_transitions() {
        let mut a = Action {
            run: "true".into(),
            on: ActionOn::Firing,
            timeout: None,
            max_per_hour: None,
            location: ActionWhere::Target,
        };
        assert!(applies(&a, NotifyKind::Firing));
        assert!(!applies(&a, NotifyKind::Resolved));
        a.on = ActionOn::Both;
        assert!(applies(&a, NotifyKind::Resolved));
        assert!(!applies(&a, NotifyKind::Flapping));
    }
}
