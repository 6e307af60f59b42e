//! Herd: an agentless fleet monitor. The modules stand on floors (`floors.rs`):
//! model → config → store, tls, transport → ownership → collector, notify, rules
//! → cluster → api → node → cli; a module uses only those below it.
pub mod api;
pub mod cli;
pub mod cluster;
pub mod collector;
pub mod config;
pub mod floors;
pub mod model;
pub mod node;
pub mod notify;
pub mod ownership;
pub mod rules;
pub mod store;
pub mod tls;
pub mod transport;
