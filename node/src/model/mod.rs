//! Plain data shared by every layer: no I/O here.
mod alert;
pub mod change;
pub mod digest;
pub mod net;
mod node;
mod pattern;
pub mod prom_names;
pub mod retry;
mod sample;
pub mod text;

pub use alert::{
    Alert, AlertState, ForgottenAlert, Notification, NotifyKind, Severity, MAX_FORGOTTEN,
};
pub use node::{NodeId, NodeRecord, MACHINE_PREFIX};
pub use pattern::{fnv1a64, glob_match, FNV_OFFSET};
pub use retry::{Retry, RetryPolicy};
pub use sample::{now_ms, Event, EventKind, HerdMarks, InputSink, Labels, Measurement, Sample};

/// json_state trees: target → check name → (the runner instance that owns the
/// entry, tree). The instance lets an old runner that stops after its replacement
/// started (an apply changed the target) leave the new runner's entry alone. A
/// tree is replaced whole when it changes, never edited in place: a reader that
/// kept the `Arc` of the last tree it saw knows by pointer whether it changed.
pub type StateBoard = std::sync::Arc<
    std::sync::RwLock<
        std::collections::BTreeMap<
            String,
            std::collections::BTreeMap<String, (u64, std::sync::Arc<serde_json::Value>)>,
        >,
    >,
>;
