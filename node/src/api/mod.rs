//! The node's gRPC API (the CLI's only way in). One file maps errors to statuses.
pub mod auth;
mod backup;
mod cluster;
mod dashboard;
mod error;
mod grpc;
pub mod http;
pub mod json;
mod metrics;
mod prom;
mod watch;

pub use grpc::{HerdApi, NodeIdentity};
/// `cpu.used_pct` → `herd_cpu_used_pct`: the one mapping of Herd's names to the
/// Prometheus API's (the CLI's export names series the same way).
pub use prom::names::metric_name as prom_name;
