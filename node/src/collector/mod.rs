//! The collector: a task per owned target, reconciled against "what this node owns".
pub mod checks;
pub mod link;
mod scheduler;
pub mod stats;
mod target;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

pub use scheduler::run;

use crate::store::Store;
use crate::transport::SshSettings;

/// Live state of one target, shown by `herd status`.
#[derive(Debug, Clone, Default)]
pub struct TargetStatus {
    pub address: String,
    pub transport: String,
    /// SSH targets: "shell" or "exec (why)" (see `SshTransport::mode`).
    pub exec_mode: String,
    pub interval: Duration,
    /// None until the first scrape finished.
    pub up: Option<bool>,
    pub last_scrape_ms: Option<i64>,
    pub last_error: Option<String>,
    pub scrapes: u64,
    /// The latest verdict of each check that gives one, by check name.
    pub checks: BTreeMap<String, CheckState>,
    /// Set while the target is paused (no task runs).
    pub paused: Option<crate::ownership::Pause>,
}

/// The latest verdict of one check.
#[derive(Debug, Clone, Default)]
pub struct CheckState {
    pub kind: String,
    /// "ok", "warning", "critical" or "unknown".
    pub status: String,
    pub detail: String,
    pub ts_ms: i64,
}

pub use crate::model::StateBoard;

/// Status of every running target, by name.
pub type StatusBoard = Arc<RwLock<BTreeMap<String, TargetStatus>>>;

/// The transport of each running target, so that remediation actions run over the
/// target's own SSH session.
pub use crate::transport::Transports;

/// What every target task needs; built once by the node's wiring.
pub struct CollectorCtx {
    pub store: Store,
    pub ssh: Arc<SshSettings>,
    /// `[ssh] key`; None: ssh-agent.
    pub default_key: Option<PathBuf>,
    pub default_user: String,
    pub command_timeout: Duration,
    /// How a down target is retried (`[ssh] reconnect_min`, `reconnect_max`).
    pub reconnect: crate::model::RetryPolicy,
    pub board: StatusBoard,
    pub stats: Arc<stats::ScrapeStats>,
    pub states: StateBoard,
    /// Where samples and events go for rule evaluation (None: no rules, in tests).
    pub rules: Option<Arc<dyn crate::model::InputSink>>,
    pub transports: Transports,
    /// The herd's copy of the log tails' positions (None: no herd, in tests).
    pub marks: Option<Arc<dyn crate::model::HerdMarks>>,
    /// Whether this node's lease holds at this instant (None: always, in tests).
    /// Asked right before each scrape: the published view says "fenced" a moment
    /// after the lease ran out (a process resumed after a pause runs its overdue
    /// scrape timers at once), and a scrape then would be one inside another
    /// node's tenure.
    pub may_act: Option<Arc<dyn Fn() -> bool + Send + Sync>>,
}

impl CollectorCtx {
    /// See `may_act`.
    pub fn may_act(&self) -> bool {
        self.may_act.as_ref().is_none_or(|f| f())
    }
}
