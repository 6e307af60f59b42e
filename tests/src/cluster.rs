//! A herd of several real `herd node` processes on loopback: started, formed with
//! `herd cluster init` and `herd cluster join`, observed through `herd status
//! --json` of any live node, and broken with `kill -9` and restarted on the same
//! port and data dir.
//!
//! Every status the helper reads is checked against design invariant 1 as far as
//! that status shows it: each target is listed once, and, once the fleet is owned,
//! each fleet target has an owner that is a member; after a failover was seen, an
//! owner the status shows alive (see [`Cluster::expect_live_owners`]).
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;

use crate::herd::{Herd, HerdOptions};
use crate::wait::wait_for;

/// Longest wait for the herd to form (every node a member, one leader agreed).
pub const FORM_TIMEOUT: Duration = Duration::from_secs(30);

/// Prefix of the target that watches a node's machine: `herd-node-N`.
pub const NODE_TARGET_PREFIX: &str = "herd-node-";

/// `herd-node-N`, the target that watches node N's machine.
pub fn node_target(id: u64) -> String {
    format!("{NODE_TARGET_PREFIX}{id}")
}

/// One entry of `nodes[]` in `herd status --json`.
#[derive(Debug, Clone)]
pub struct NodeView {
    pub id: u64,
    pub address: String,
    /// "leader", "follower", "learner", "candidate" or "unknown".
    pub role: String,
    pub voter: bool,
    pub alive: bool,
    pub lease: Option<bool>,
    pub last_seen_ms: Option<u64>,
    /// Targets it owns in the applied ownership map.
    pub targets: Option<u64>,
}

/// One entry of `targets[]` in `herd status --json`.
#[derive(Debug, Clone)]
pub struct TargetView {
    pub name: String,
    pub owner: Option<u64>,
    /// None: not known (pending, or its owner did not answer).
    pub up: Option<bool>,
    pub last_scrape_age_s: Option<f64>,
}

/// `herd status --json` of one node, parsed; `raw` keeps the whole document.
#[derive(Debug, Clone)]
pub struct Status {
    pub node_id: u64,
    pub leader: Option<u64>,
    /// The Raft term the node is in (0 from a node that does not say).
    pub term: u64,
    pub spec_version: u64,
    pub ownership_version: u64,
    pub nodes: Vec<NodeView>,
    pub targets: Vec<TargetView>,
    pub unreachable: Vec<u64>,
    pub raw: Value,
}

impl Status {
    /// Parses the documented shape; the error says which field is off.
    pub fn parse(raw: Value) -> Result<Status, String> {
        let u64_field = |v: &Value, key: &str| -> Result<u64, String> {
            v[key]
                .as_u64()
                .ok_or_else(|| format!("{key} is not a number: {}", v[key]))
        };
        let nodes = raw["nodes"]
            .as_array()
            .ok_or("nodes is not an array")?
            .iter()
            .map(|n| {
                Ok(NodeView {
                    id: u64_field(n, "id")?,
                    address: n["address"].as_str().unwrap_or_default().to_string(),
                    role: n["role"].as_str().unwrap_or_default().to_string(),
                    voter: n["voter"]
                        .as_bool()
                        .ok_or_else(|| format!("nodes[].voter is not a bool: {n}"))?,
                    alive: n["alive"]
                        .as_bool()
                        .ok_or_else(|| format!("nodes[].alive is not a bool: {n}"))?,
                    lease: n["lease"].as_bool(),
                    last_seen_ms: n["last_seen_ms"].as_u64(),
                    targets: n["targets"].as_u64(),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let targets = raw["targets"]
            .as_array()
            .ok_or("targets is not an array")?
            .iter()
            .map(|t| {
                Ok(TargetView {
                    name: t["name"]
                        .as_str()
                        .ok_or_else(|| format!("targets[].name is not a string: {t}"))?
                        .to_string(),
                    // 0 or null: no owner.
                    owner: t["owner"].as_u64().filter(|&o| o > 0),
                    up: t["up"].as_bool(),
                    last_scrape_age_s: t["last_scrape_age_s"].as_f64().filter(|a| *a >= 0.0),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Status {
            node_id: u64_field(&raw, "node_id")?,
            leader: raw["leader"].as_u64().filter(|&l| l > 0),
            term: raw["term"].as_u64().unwrap_or(0),
            spec_version: u64_field(&raw, "spec_version")?,
            ownership_version: raw["ownership_version"].as_u64().unwrap_or(0),
            nodes,
            targets,
            unreachable: raw["unreachable"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_u64)
                .collect(),
            raw,
        })
    }

    pub fn node(&self, id: u64) -> Option<&NodeView> {
        self.nodes.iter().find(|n| n.id == id)
    }

    pub fn target(&self, name: &str) -> Option<&TargetView> {
        self.targets.iter().find(|t| t.name == name)
    }

    pub fn node_ids(&self) -> BTreeSet<u64> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// Ids of the members this status shows alive.
    pub fn alive_ids(&self) -> BTreeSet<u64> {
        self.nodes
            .iter()
            .filter(|n| n.alive)
            .map(|n| n.id)
            .collect()
    }

    /// Target → owner, for the targets that have one.
    pub fn owners(&self) -> BTreeMap<String, u64> {
        self.targets
            .iter()
            .filter_map(|t| Some((t.name.clone(), t.owner?)))
            .collect()
    }

    /// Names of the targets `id` owns, sorted.
    pub fn owned_by(&self, id: u64) -> Vec<String> {
        self.targets
            .iter()
            .filter(|t| t.owner == Some(id))
            .map(|t| t.name.clone())
            .collect()
    }

    /// The targets of `fleet` that `id` owns.
    pub fn owned_among(&self, id: u64, fleet: &[String]) -> Vec<String> {
        self.owned_by(id)
            .into_iter()
            .filter(|t| fleet.contains(t))
            .collect()
    }

    /// The node other than `leader` that owns the most targets of `fleet`, and
    /// those targets (panics with fewer than two nodes).
    pub fn busiest_follower(&self, leader: u64, fleet: &[String]) -> (u64, Vec<String>) {
        let id = self
            .nodes
            .iter()
            .map(|n| n.id)
            .filter(|&id| id != leader)
            .max_by_key(|&id| self.owned_among(id, fleet).len())
            .expect("a node besides the leader");
        (id, self.owned_among(id, fleet))
    }

    /// Owner → how many targets, counted from `targets[]`.
    pub fn counts(&self) -> BTreeMap<u64, usize> {
        let mut m = BTreeMap::new();
        for t in &self.targets {
            if let Some(o) = t.owner {
                *m.entry(o).or_insert(0) += 1;
            }
        }
        m
    }

    /// What keeps the statuses of every member (by node id) from showing one settled
    /// herd: each lists `members`, all alive, holds its own lease and knows a
    /// leader, its map gives every listed target one owner, a member, alive; and all
    /// show the same leader, ownership version and map. Empty when settled.
    pub fn agreement_problems(
        statuses: &BTreeMap<u64, Status>,
        members: &BTreeSet<u64>,
    ) -> Vec<String> {
        let mut why = Vec::new();
        for (id, s) in statuses {
            if s.node_ids() != *members || s.alive_ids() != *members {
                why.push(format!("node {id}: {}", s.summary()));
            }
            if s.node(*id).and_then(|n| n.lease) != Some(true) {
                why.push(format!("node {id} has no valid lease"));
            }
            if s.leader.is_none() {
                why.push(format!("node {id} knows no leader"));
            }
            let listed: Vec<String> = s.targets.iter().map(|t| t.name.clone()).collect();
            let problems = s.ownership_problems(&listed, true);
            if !problems.is_empty() {
                why.push(format!("node {id}: {}", problems.join("; ")));
            }
        }
        if why.is_empty() {
            let views: BTreeSet<(Option<u64>, u64, BTreeMap<String, u64>)> = statuses
                .values()
                .map(|s| (s.leader, s.ownership_version, s.owners()))
                .collect();
            if views.len() > 1 {
                why.push(format!(
                    "the nodes disagree on (leader, ownership version, owners): {views:?}"
                ));
            }
        }
        why
    }

    /// What this status shows against invariant 1: a target listed twice; a target
    /// of `must_own` without owner or owned by a node that is not a member; with
    /// `owners_alive`, any owner that this status shows not alive.
    pub fn ownership_problems(&self, must_own: &[String], owners_alive: bool) -> Vec<String> {
        let mut p = Vec::new();
        let mut seen = BTreeSet::new();
        for t in &self.targets {
            if !seen.insert(t.name.as_str()) {
                p.push(format!("target {} is listed twice", t.name));
            }
        }
        let members = self.node_ids();
        let alive = self.alive_ids();
        for name in must_own {
            match self.target(name).map(|t| t.owner) {
                None => p.push(format!("target {name} is not listed")),
                Some(None) => p.push(format!("target {name} has no owner")),
                Some(Some(o)) if !members.contains(&o) => {
                    p.push(format!("target {name} is owned by {o}, not a member"))
                }
                Some(Some(_)) => {}
            }
        }
        if owners_alive {
            for t in &self.targets {
                if let Some(o) = t.owner.filter(|o| !alive.contains(o)) {
                    p.push(format!(
                        "target {} is owned by node {o}, which this status shows not alive",
                        t.name
                    ));
                }
            }
        }
        p
    }

    /// One line per node and a count per owner, for logs.
    pub fn summary(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| {
                format!(
                    "{}:{}{}{}",
                    n.id,
                    n.role,
                    if n.voter { "" } else { "(learner)" },
                    if n.alive { "" } else { "(DOWN)" }
                )
            })
            .collect();
        format!(
            "asked {} · leader {:?} · spec v{} · ownership v{} · nodes [{}] · owned {:?} · unreachable {:?}",
            self.node_id,
            self.leader,
            self.spec_version,
            self.ownership_version,
            nodes.join(" "),
            self.counts(),
            self.unreachable
        )
    }
}

/// Several `herd node` processes with ids 1..=N (and more added later), each in
/// its own temp dir on its own port.
pub struct Cluster {
    nodes: BTreeMap<u64, Herd>,
    base: HerdOptions,
    /// Killed and not restarted.
    down: BTreeSet<u64>,
    /// Fleet targets every status must show owned by a member (set once they were).
    must_own: RefCell<Vec<String>>,
    /// Every owner must be alive in the status that names it.
    owners_alive: Cell<bool>,
}

impl Cluster {
    /// Starts `n` nodes (ids 1..=n, options `base` with the id set), makes node 1 a
    /// herd (`cluster init`), joins the others to it one by one and waits until
    /// every node sees all `n` members alive and agrees on the leader.
    pub fn start(n: u64, base: HerdOptions) -> Cluster {
        let cluster = Cluster::start_apart(n, base);
        cluster.init(1);
        for id in 2..=n {
            cluster.join(id, 1);
        }
        cluster.wait_formed(FORM_TIMEOUT);
        cluster
    }

    /// Starts `n` nodes (ids 1..=n) and leaves them apart: none is in a herd yet.
    /// One after the other, from this thread: a node gets SIGKILL when the thread
    /// that spawned it ends (PR_SET_PDEATHSIG), so no helper threads here.
    pub fn start_apart(n: u64, base: HerdOptions) -> Cluster {
        let started: Vec<Herd> = (1..=n).map(|id| Herd::start(base.clone().id(id))).collect();
        eprintln!(
            "    started nodes {}",
            started
                .iter()
                .map(|h| format!("{} at {}", h.id(), h.addr()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        Cluster {
            nodes: started.into_iter().map(|h| (h.id(), h)).collect(),
            base,
            down: BTreeSet::new(),
            must_own: RefCell::new(Vec::new()),
            owners_alive: Cell::new(false),
        }
    }

    /// A cluster of nodes the caller started (a declarative herd forms by itself);
    /// `base` is what [`Cluster::start_node`] starts further nodes with.
    pub fn from_started(started: Vec<Herd>, base: HerdOptions) -> Cluster {
        Cluster {
            nodes: started.into_iter().map(|h| (h.id(), h)).collect(),
            base,
            down: BTreeSet::new(),
            must_own: RefCell::new(Vec::new()),
            owners_alive: Cell::new(false),
        }
    }

    /// Adds a node the caller started.
    pub fn add_started(&mut self, herd: Herd) {
        let id = herd.id();
        assert!(!self.nodes.contains_key(&id), "node {id} exists already");
        self.nodes.insert(id, herd);
    }

    /// Starts node `id` (apart: no herd yet) and adds it to the cluster.
    pub fn start_node(&mut self, id: u64) -> &Herd {
        assert!(!self.nodes.contains_key(&id), "node {id} exists already");
        let herd = Herd::start(self.base.clone().id(id));
        eprintln!("    started node {id} at {}", herd.addr());
        self.nodes.insert(id, herd);
        &self.nodes[&id]
    }

    pub fn node(&self, id: u64) -> &Herd {
        self.nodes
            .get(&id)
            .unwrap_or_else(|| panic!("no node {id} in this cluster"))
    }

    pub fn node_mut(&mut self, id: u64) -> &mut Herd {
        self.nodes
            .get_mut(&id)
            .unwrap_or_else(|| panic!("no node {id} in this cluster"))
    }

    /// Every node started, live or not.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// Nodes whose process runs (not killed, or restarted since).
    pub fn live_nodes(&self) -> Vec<u64> {
        self.nodes
            .keys()
            .copied()
            .filter(|id| !self.down.contains(id))
            .collect()
    }

    /// `herd --node N cluster init`; panics unless it exits 0. Returns stdout.
    pub fn init(&self, id: u64) -> String {
        let out = self.node(id).cli_ok(&["cluster", "init"]);
        eprintln!("    node {id}: cluster init: {}", out.trim());
        out
    }

    /// `herd --node NEW cluster join SEED_ADDR`; panics unless it exits 0.
    pub fn join(&self, id: u64, seed: u64) -> String {
        let seed_addr = self.node(seed).addr();
        let out = self.node(id).cli_ok(&["cluster", "join", &seed_addr]);
        eprintln!("    node {id}: cluster join {seed_addr}: {}", out.trim());
        out
    }

    /// Writes `fleet` and runs `herd apply` on node `via`; from then on every status
    /// must show the targets `names` (once [`Cluster::wait_until_all_owned_and_scraped`]
    /// saw them owned).
    pub fn apply(&self, via: u64, fleet: &str) -> String {
        let out = self.node(via).apply(fleet);
        eprintln!("    applied through node {via}: {}", out.trim());
        out
    }

    /// `herd status --json` of node `id`, parsed and checked; None when the CLI
    /// fails (the failure is printed): for polls that ride out a failover.
    pub fn try_status(&self, id: u64) -> Option<Status> {
        let out = self.node(id).cli(&["status", "--json"]);
        if !out.status.success() {
            eprintln!(
                "    herd status on node {id} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        let raw: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "`herd status --json` on node {id} printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        let status = Status::parse(raw.clone()).unwrap_or_else(|e| {
            panic!("`herd status --json` on node {id} does not have the documented shape: {e}\n{raw:#}")
        });
        assert_eq!(
            status.node_id, id,
            "node_id of the status of node {id}: {raw}"
        );
        self.check(&status);
        Some(status)
    }

    /// `herd status --json` of node `id`; panics when the CLI fails.
    pub fn status_of(&self, id: u64) -> Status {
        self.try_status(id)
            .unwrap_or_else(|| panic!("`herd status --json` on node {id} failed"))
    }

    /// `herd status --json` of the first live node that answers.
    pub fn status(&self) -> Status {
        for id in self.live_nodes() {
            if let Some(s) = self.try_status(id) {
                return s;
            }
        }
        panic!("no live node answers herd status ({:?})", self.live_nodes())
    }

    /// The leader as the first live node that answers knows it.
    pub fn leader(&self) -> Option<u64> {
        self.status().leader
    }

    /// Waits until every live node names the same leader, itself live; returns it.
    pub fn wait_leader(&self, timeout: Duration) -> u64 {
        let live = self.live_nodes();
        wait_for(
            timeout,
            &format!("the live nodes {live:?} agree on a live leader"),
            || {
                let mut leaders = BTreeSet::new();
                for &id in &live {
                    leaders.insert(self.try_status(id)?.leader?);
                }
                match leaders.into_iter().collect::<Vec<_>>()[..] {
                    [l] if live.contains(&l) => Some(l),
                    _ => None,
                }
            },
        )
    }

    /// Waits until every live node lists exactly the started nodes that are
    /// members, the live ones alive, and agrees on a live leader.
    pub fn wait_formed(&self, timeout: Duration) -> u64 {
        let members: BTreeSet<u64> = self.nodes.keys().copied().collect();
        let live: BTreeSet<u64> = self.live_nodes().into_iter().collect();
        wait_for(
            timeout,
            &format!("every live node sees members {members:?}, {live:?} alive, one leader"),
            || {
                let mut leaders = BTreeSet::new();
                for &id in &live {
                    let s = self.try_status(id)?;
                    if s.node_ids() != members || !live.is_subset(&s.alive_ids()) {
                        return None;
                    }
                    leaders.insert(s.leader?);
                }
                match leaders.into_iter().collect::<Vec<_>>()[..] {
                    [l] if live.contains(&l) => Some(l),
                    _ => None,
                }
            },
        )
    }

    /// Target → owner as the first live node that answers shows it.
    pub fn owners(&self) -> BTreeMap<String, u64> {
        self.status().owners()
    }

    /// Waits until a status shows `target` owned by a node other than `from` (a
    /// takeover after `from` was killed or cut); returns the new owner.
    pub fn wait_owner_moved(&self, target: &str, from: u64, timeout: Duration) -> u64 {
        wait_for(
            timeout,
            &format!("a node other than {from} owns {target}"),
            || {
                self.status()
                    .target(target)
                    .and_then(|t| t.owner)
                    .filter(|&o| o != from)
            },
        )
    }

    /// Waits until a status shows every target of `fleet_targets` (and every other
    /// target it lists, such as the `herd-node-N` ones) owned by a running node it
    /// shows alive and up, and each fleet target scraped within `max_age_s` (the
    /// node targets keep the node's own interval); from then on every status read
    /// must show the fleet targets owned. Returns that status.
    pub fn wait_until_all_owned_and_scraped(
        &self,
        fleet_targets: &[String],
        max_age_s: f64,
        timeout: Duration,
    ) -> Status {
        let mut last = String::new();
        let status = wait_for(
            timeout,
            &format!(
                "all {} fleet targets (and the node targets) are owned by live nodes, up and \
                 scraped within {max_age_s}s",
                fleet_targets.len()
            ),
            || {
                let s = self.status();
                let problems = self.scrape_problems(&s, fleet_targets, max_age_s);
                if problems.is_empty() {
                    return Some(s);
                }
                let line = format!("{} · {}", s.summary(), problems.join("; "));
                if line != last {
                    eprintln!("    not yet: {line}");
                    last = line;
                }
                None
            },
        );
        *self.must_own.borrow_mut() = fleet_targets.to_vec();
        eprintln!("    {}", status.summary());
        status
    }

    fn scrape_problems(&self, s: &Status, fleet_targets: &[String], max_age_s: f64) -> Vec<String> {
        let mut p = s.ownership_problems(fleet_targets, true);
        let live = self.live_nodes();
        for t in &s.targets {
            match t.owner {
                Some(o) if !live.contains(&o) => p.push(format!(
                    "{} is owned by node {o}, which is not running",
                    t.name
                )),
                _ => {}
            }
            if t.up != Some(true) {
                p.push(format!("{} up={:?}", t.name, t.up));
            } else if fleet_targets.contains(&t.name)
                && !t.last_scrape_age_s.is_some_and(|a| a <= max_age_s)
            {
                p.push(format!(
                    "{} last scraped {:?}s ago",
                    t.name, t.last_scrape_age_s
                ));
            }
        }
        p.truncate(6);
        p
    }

    /// Whether every later status must show every owner alive (invariant 1 after
    /// a failover completed). [`Cluster::kill9`] turns it off.
    pub fn expect_live_owners(&self, on: bool) {
        self.owners_alive.set(on);
    }

    fn check(&self, s: &Status) {
        let problems = s.ownership_problems(&self.must_own.borrow(), self.owners_alive.get());
        if !problems.is_empty() {
            panic!(
                "the status of node {} breaks invariant 1: {}\n{}\n{:#}",
                s.node_id,
                problems.join("; "),
                s.summary(),
                s.raw
            );
        }
    }

    /// `kill -9` node `id` and waits until it is gone; returns the time (Unix ms)
    /// just before the kill.
    pub fn kill9(&mut self, id: u64) -> i64 {
        self.owners_alive.set(false);
        let at = crate::now_ms();
        self.nodes
            .get_mut(&id)
            .unwrap_or_else(|| panic!("no node {id}"))
            .kill9();
        self.down.insert(id);
        eprintln!("    killed node {id} (kill -9) at {at}");
        at
    }

    /// Starts node `id` again with the same config, port and data dir; returns once
    /// it answers `herd status`.
    pub fn restart(&mut self, id: u64) {
        self.nodes
            .get_mut(&id)
            .unwrap_or_else(|| panic!("no node {id}"))
            .restart();
        self.down.remove(&id);
        eprintln!("    restarted node {id} at {}", self.node(id).addr());
    }

    /// SIGTERM node `id` (it must exit within the harness's bound).
    pub fn stop(&mut self, id: u64) {
        let status = self
            .nodes
            .get_mut(&id)
            .unwrap_or_else(|| panic!("no node {id}"))
            .sigterm();
        self.down.insert(id);
        eprintln!("    stopped node {id}: {status}");
    }

    /// Forgets node `id` (after it left the herd): it is stopped and its logs are
    /// kept until the cluster is dropped.
    pub fn forget(&mut self, id: u64) -> Herd {
        self.down.remove(&id);
        self.nodes
            .remove(&id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    /// Prints the tail of every node's log.
    pub fn dump_logs(&self) {
        for h in self.nodes.values() {
            h.dump_logs();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Each Herd prints its log tail when the test panics and kills its process.
        // Kill them all first, so that no node reacts to another's end in the logs.
        for h in self.nodes.values() {
            h.dump_threads();
        }
        for h in self.nodes.values_mut() {
            h.kill9();
        }
    }
}
