//! The herd: Raft (openraft) types, the redb log and state machine, the tonic
//! network, liveness and leases, and the controller that assigns targets.
pub mod bootstrap;
pub mod changes;
pub mod controller;
pub mod credential;
mod election;
mod fleet_state;
pub mod keylog;
pub mod liveness;
pub mod membership;
pub mod network;
pub mod node;
pub mod quorum;
pub mod replication;
pub mod service;
pub mod store;
pub mod types;

pub use fleet_state::{ApplyError, FleetState, PauseError};
