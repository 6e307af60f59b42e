//! The herd: Raft (openraft) types, the redb log and state machine, and (to come)
//! the tonic network, membership and the ownership it replicates.
pub mod network;
pub mod node;
pub mod service;
pub mod store;
pub mod types;
