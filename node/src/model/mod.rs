//! Plain data shared by every layer: no I/O here.
mod sample;

pub use sample::{now_ms, Event, EventKind, Labels, Measurement, Sample};
