//! Herd: an agentless fleet monitor. Modules are listed in the order a sample
//! travels: config → ownership → collector → store → api → cli.
pub mod api;
pub mod cli;
pub mod cluster;
pub mod collector;
pub mod config;
pub mod daemon;
pub mod model;
pub mod notify;
pub mod ownership;
pub mod rules;
pub mod store;
pub mod tls;
