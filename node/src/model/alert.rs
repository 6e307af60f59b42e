//! Alerts: what a rule found about a target, its lifecycle and the notifications
//! it causes. Plain data; the rules engine drives it and the store keeps it.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How urgent an alert is; routes pick channels by it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    #[default]
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// Lifecycle of an alert: inactive → pending → firing → (resolving →) resolved.
/// `Resolving` is firing held by `keep_firing_for`; `Flapping` replaces firing and
/// resolved notifications while an alert changes too often.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    Inactive,
    Pending,
    Firing,
    Resolving,
    Resolved,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Inactive => "inactive",
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
            AlertState::Resolving => "resolving",
            AlertState::Resolved => "resolved",
        }
    }
    /// Counts as firing for people (resolving is still firing).
    pub fn is_firing(self) -> bool {
        matches!(self, AlertState::Firing | AlertState::Resolving)
    }
}

/// What a notification announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyKind {
    Firing,
    Resolved,
    /// The alert changed state too often; one notice, then quiet until it settles.
    Flapping,
}

impl NotifyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyKind::Firing => "firing",
            NotifyKind::Resolved => "resolved",
            NotifyKind::Flapping => "flapping",
        }
    }
}

/// An alert as kept in the store and shown by `herd alerts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Stable id: a hash of (rule, target, series labels), shown in hex.
    pub id: String,
    pub rule: String,
    pub target: String,
    /// Labels of the series (or event) the rule matched, plus the rule's labels.
    pub labels: BTreeMap<String, String>,
    pub severity: Severity,
    pub state: AlertState,
    /// When the current state began (unix ms).
    pub since_ms: i64,
    /// When the condition first held in this episode (pending start).
    pub active_since_ms: i64,
    /// The last value seen (a number, or the text for regex/event rules).
    pub value: String,
    pub summary: String,
    pub description: String,
    /// Transitions so far; each notification's idempotency key uses it.
    pub transitions: u64,
    pub acked_by: Option<String>,
    pub flapping: bool,
}

/// What is kept of an alert forgotten once it settled (resolved past the
/// retention of resolved alerts): its target and its transition count, so that a
/// later episode counts on and its idempotency keys stay unique.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForgottenAlert {
    pub id: String,
    pub target: String,
    pub transitions: u64,
    /// When it settled (ms since the epoch; 0 from a build before this field):
    /// the herd keeps the most recent [`MAX_FORGOTTEN`] counts.
    #[serde(default)]
    pub settled_ms: i64,
}

/// Transition counts of forgotten alerts the herd keeps at most; beyond it, the
/// counts of the alerts that settled first go (a later episode of one of them
/// counts from what its owner's engine still knows, or from 0 — its old keys
/// are long gone from the herd's delivered keys by then).
pub const MAX_FORGOTTEN: usize = 100_000;

/// One notification to deliver: what the outbox keeps until a channel took it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// `alert-id:transition:channel`; receivers can use it to drop duplicates.
    pub idempotency_key: String,
    pub channel: String,
    pub kind: NotifyKind,
    pub alert: Alert,
    /// Unix ms of the transition.
    pub ts_ms: i64,
}
