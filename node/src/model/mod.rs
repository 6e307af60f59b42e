//! Plain data shared by every layer: no I/O here.
mod alert;
mod sample;

pub use alert::{Alert, AlertState, Notification, NotifyKind, Severity};
pub use sample::{now_ms, Event, EventKind, Labels, Measurement, Sample};
