//! Herd: an agentless fleet monitor. The modules stand on floors (`floors.rs`):
//! model → config → store, tls, transport → ownership → collector, notify, rules
//! → cluster → api → node → cli; a module uses only those below it.
pub(crate) mod api;
pub(crate) mod cli;
pub(crate) mod cluster;
pub(crate) mod collector;
pub(crate) mod config;
#[cfg(test)]
mod floors;
pub(crate) mod model;
pub(crate) mod node;
pub(crate) mod notify;
pub(crate) mod ownership;
pub(crate) mod remote_write;
pub(crate) mod rules;
pub(crate) mod store;
pub(crate) mod tls;
pub(crate) mod transport;

// What the binary (main.rs) uses; everything else is the crate's own, so the
// dead-code lint sees every unused item.
pub use cli::{exit, run, Cli, Command, LogFormatArg};
pub use config::{LogFormat, NodeConfig};
