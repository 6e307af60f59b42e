//! Configuration: node-local `herd.toml` and the cluster-wide `fleet.toml`.
//! Types deny unknown fields; validation is pure and returns every error at once.
pub mod channels;
pub mod checks;
mod duration;
mod error;
pub mod fleet;
pub mod node;
pub mod remote_write;
pub mod rules;

pub use checks::{CheckSpec, Vantage};
pub use duration::parse_duration;
#[cfg(test)]
pub use duration::HumanDuration;
pub use error::ConfigErrors;
pub use fleet::{parse_fleet, FleetSpec, TargetSpec, TransportKind};
pub use node::{expand_home, HostKeyChecking, LogFormat, MachineSpec, NodeConfig, TlsSection};
