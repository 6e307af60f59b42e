//! Plain data shared by every layer: no I/O here.
mod alert;
mod node;
mod pattern;
mod sample;

pub use alert::{Alert, AlertState, Notification, NotifyKind, Severity};
pub use node::{NodeId, NodeRecord, MACHINE_PREFIX};
pub use pattern::{fnv1a64, glob_match, FNV_OFFSET, FNV_PRIME};
pub use sample::{now_ms, Event, EventKind, InputSink, Labels, Measurement, Sample};
