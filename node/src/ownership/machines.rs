//! The herd's own machines as targets: each node's host is watched (vitals, and
//! every rule that selects it) by the next live nodes in the ring of node ids, so
//! that a node whose herd process runs but whose machine struggles is noticed like
//! any target. Every node derives the same target specs from the replicated node
//! records; the leader chooses the watchers.
use std::collections::{BTreeMap, BTreeSet};

use crate::config::checks::VitalsCheck;
use crate::config::{CheckSpec, MachineSpec, TargetSpec, TransportKind};
use crate::model::{NodeId, NodeRecord};

pub use crate::model::MACHINE_PREFIX;

/// `herd-node-N` for the first watcher, `herd-node-N.wK` for the K-th.
pub fn target_name(node: NodeId, watcher: usize) -> String {
    if watcher <= 1 {
        format!("{MACHINE_PREFIX}{node}")
    } else {
        format!("{MACHINE_PREFIX}{node}.w{watcher}")
    }
}

/// The node a machine target name watches, if it is one.
pub fn watched_node(name: &str) -> Option<NodeId> {
    let rest = name.strip_prefix(MACHINE_PREFIX)?;
    rest.split('.').next()?.parse().ok()
}

/// The machine targets of `nodes` (those whose machine is watched), `watchers`
/// of each, sorted by name.
pub fn targets(nodes: &BTreeMap<NodeId, NodeRecord>, watchers: usize) -> Vec<TargetSpec> {
    let mut out = Vec::new();
    for (id, rec) in nodes {
        let (transport, address, user) = match MachineSpec::parse(&rec.machine) {
            Ok(MachineSpec::Local) => (TransportKind::Local, None, None),
            Ok(MachineSpec::Ssh { user, address }) => (TransportKind::Ssh, Some(address), user),
            Ok(MachineSpec::None) | Err(_) => continue,
        };
        for k in 1..=watchers.max(1) {
            out.push(TargetSpec {
                name: target_name(*id, k),
                address: address.clone(),
                user: user.clone(),
                key: None,
                transport,
                interval: crate::config::fleet::DEFAULT_INTERVAL,
                timeout: None,
                labels: [
                    ("herd_node".to_string(), id.to_string()),
                    ("role".to_string(), "herd-node".to_string()),
                ]
                .into(),
                checks: vec![CheckSpec::Vitals(VitalsCheck::default())],
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Owners of the machine targets: the K-th watcher of node N is the K-th live
/// node after N in the ring of `members` ids (never N itself). With fewer live
/// others than K, that watcher has no owner.
pub fn owners(
    names: &[String],
    members: &BTreeSet<NodeId>,
    live: &BTreeSet<NodeId>,
) -> BTreeMap<String, NodeId> {
    let ring: Vec<NodeId> = members.iter().copied().collect();
    let mut out = BTreeMap::new();
    for name in names {
        let Some(node) = watched_node(name) else {
            continue;
        };
        let k = name
            .rsplit_once(".w")
            .and_then(|(_, k)| k.parse::<usize>().ok())
            .unwrap_or(1);
        // Members after `node` in id order, wrapping round, live ones only.
        let start = ring.partition_point(|id| *id <= node);
        let successors = ring[start..]
            .iter()
            .chain(&ring[..start])
            .filter(|id| **id != node && live.contains(id));
        if let Some(owner) = successors.copied().nth(k - 1) {
            out.insert(name.clone(), owner);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(machine: &str) -> NodeRecord {
        NodeRecord {
            addr: "127.0.0.1:1".into(),
            machine: machine.into(),
        }
    }

    #[test]
    fn each_node_is_watched_by_the_next_live_ones() {
        let nodes: BTreeMap<NodeId, NodeRecord> = [
            (1, rec("local")),
            (2, rec("ssh://herd@10.0.0.2:22")),
            (3, rec("none")),
        ]
        .into();
        let t = targets(&nodes, 2);
        let names: Vec<String> = t.iter().map(|t| t.name.clone()).collect();
        assert_eq!(
            names,
            [
                "herd-node-1",
                "herd-node-1.w2",
                "herd-node-2",
                "herd-node-2.w2"
            ]
        );
        assert_eq!(t[2].address.as_deref(), Some("10.0.0.2:22"));
        assert_eq!(t[2].user.as_deref(), Some("herd"));
        assert_eq!(watched_node("herd-node-2.w2"), Some(2));
        let members: BTreeSet<NodeId> = [1, 2, 3].into();
        let o = owners(&names, &members, &members);
        assert_eq!(o["herd-node-1"], 2);
        assert_eq!(o["herd-node-1.w2"], 3);
        assert_eq!(o["herd-node-2"], 3);
        assert_eq!(o["herd-node-2.w2"], 1, "the ring wraps");
        // 3 is down: its watch passes on, and nobody watches with the node itself.
        let live: BTreeSet<NodeId> = [1, 2].into();
        let o = owners(&names, &members, &live);
        assert_eq!(o["herd-node-1"], 2);
        assert!(!o.contains_key("herd-node-1.w2"), "no third live node");
        assert_eq!(o["herd-node-2"], 1);
    }
}
