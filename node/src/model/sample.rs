use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Label set of a series, sorted by name so equal sets compare and hash equal.
pub type Labels = BTreeMap<String, String>;

/// One value a check produced, before it is stamped with a target and a time.
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    /// Dotted, stable metric name, e.g. `cpu.used_pct`.
    pub metric: String,
    pub labels: Labels,
    pub value: f64,
}

impl Measurement {
    pub fn new(metric: &str, value: f64) -> Self {
        Measurement {
            metric: metric.to_string(),
            labels: Labels::new(),
            value,
        }
    }

    pub fn with_label(mut self, name: &str, value: &str) -> Self {
        self.labels.insert(name.to_string(), value.to_string());
        self
    }
}

/// A measurement of one target at one time, as the store keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub target: String,
    pub metric: String,
    pub labels: Labels,
    pub ts_ms: i64,
    pub value: f64,
}

/// What kind of fact an event records. Stable strings: scripts match on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The target could not be reached or the session broke.
    TargetDown,
    /// The target answers again.
    TargetUp,
    /// The target presented a host key different from the recorded one.
    HostKeyChanged,
    /// The target's host key is not in known_hosts and checking is strict.
    HostKeyUnknown,
    /// A new host key was recorded (accept-new).
    HostKeyLearned,
    /// A check ran but its output could not be understood.
    CheckError,
    /// The fleet spec changed on this node.
    SpecApplied,
    /// A log line matched a log check's patterns.
    LogMatch,
    /// A check's verdict changed (ok, warning, critical, unknown).
    CheckStatus,
    /// A notification could not be delivered by its channel nor its fallbacks.
    NotificationFailed,
    /// A rule's remediation action ran (exit code and first lines of output).
    ActionRun,
    /// This node lost the herd's quorum (no majority of voters heard), or got it back.
    QuorumLost,
    QuorumRegained,
    /// The applied fleet spec does not parse on this node (the last good one stays).
    SpecRejected,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::TargetDown => "target_down",
            EventKind::TargetUp => "target_up",
            EventKind::HostKeyChanged => "host_key_changed",
            EventKind::HostKeyUnknown => "host_key_unknown",
            EventKind::HostKeyLearned => "host_key_learned",
            EventKind::CheckError => "check_error",
            EventKind::SpecApplied => "spec_applied",
            EventKind::LogMatch => "log_match",
            EventKind::CheckStatus => "check_status",
            EventKind::NotificationFailed => "notification_failed",
            EventKind::ActionRun => "action_run",
            EventKind::QuorumLost => "quorum_lost",
            EventKind::QuorumRegained => "quorum_regained",
            EventKind::SpecRejected => "spec_rejected",
        }
    }
}

/// A fact about a target at a time, kept in the store's events table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub ts_ms: i64,
    pub target: String,
    pub kind: EventKind,
    pub message: String,
}

/// Wall-clock now in Unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Where the collectors hand what they collected for evaluation (the rules task);
/// the node's wiring connects the two, so neither imports the other.
pub trait InputSink: Send + Sync {
    /// A scrape's samples, shared (the store takes the same ones).
    fn samples(&self, samples: &std::sync::Arc<[Sample]>);
    fn event(&self, e: &Event);
}

/// The herd's copy of what checks persist to continue where they stopped (a log
/// tail's file position), by the same key as in the node's store: a new owner of a
/// target continues from the last position the herd recorded. The node's wiring
/// connects it to the herd's replicated state.
pub trait HerdMarks: Send + Sync {
    /// The herd's latest value of `key`, if it has one.
    fn get(&self, key: &str) -> Option<Vec<u8>>;
    /// This node's new value of `key` (recorded with the herd's next batch).
    fn put(&self, key: &str, value: &[u8]);
}
