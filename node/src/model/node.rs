//! The herd's nodes as plain data.
use serde::{Deserialize, Serialize};

/// A node's id (`[node] id`), unique and stable for the node's life.
pub type NodeId = u64;

/// What a node tells the herd about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub addr: String,
    pub machine: String,
}

/// Target names of the herd's machines start with this (reserved in fleet specs).
pub const MACHINE_PREFIX: &str = "herd-node-";
