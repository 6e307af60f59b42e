//! The node's gRPC API (the CLI's only way in). One file maps errors to statuses.
pub mod auth;
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
