//! The chaos harness: rounds of real faults against a herd of three real `herd node`
//! processes, each in its own network namespace, scraping real SSH targets, and
//! after each round a check of what must never happen, read from what the nodes
//! stored and what the outside world received.
//!
//! **The rig.** A [`NetLab`] of three namespaces on a bridge; in the root namespace,
//! on the bridge's address: a real OpenSSH sshd (the targets), and a webhook
//! [`HttpReceiver`] that records every request. Node N runs in namespace N with the
//! herd's default timings (heartbeat 100 ms, election 0.5–1 s, beats 200 ms, lease
//! 1 s, failover after 1.5 s), an API token and the herd secret, `machine = "none"`
//! (only the fleet is owned; "node down" notices still go out). Node 1 inits the
//! herd, 2 and 3 join.
//!
//! **The fleet.** Targets `t-1..t-N` over SSH at 1 s, each with one `file_fresh`
//! check on its own file in a directory of this process (the sshd is on this host,
//! so the harness makes a target breach by deleting its file). Rule `stale-I` fires
//! (critical → the webhook, no group window) while `t-I`'s file is missing, and
//! carries an action that runs on the target, over SSH, for both transitions and
//! appends a line to `actions/t-I.log`. An extra target `x-1` comes and goes with
//! the applies made during a fault.
//!
//! **A round.** Wait until the herd is settled (every node answers, sees the three
//! members alive, holds its lease, names one leader and one ownership map, and every
//! target is owned, up and scraped within 2.5 s); pick a fault from the round's seed;
//! pick its victim (the leader, or a node that owns targets and is not the leader);
//! inject it; 300 ms in, flip the file of one of the victim's targets (an alert
//! fires or resolves in the middle of the fault); end the fault; wait until the herd
//! is settled again and the notifications agree with the files. Faults:
//!
//! | fault | what |
//! |---|---|
//! | `kill-owner`, `kill-leader` | `kill -9`, restarted 4 s later (same dir, same port) |
//! | `stop-owner-D`, `stop-leader-D` | SIGSTOP for D = 0.5 s, 1.6 s or 5 s, then SIGCONT |
//! | `cut-owner`, `cut-leader` | the victim cut from both others (both ways) for 4 s |
//! | `cut-from-leader` | partial: the victim cut from the leader only; both still reach the third node |
//! | `one-way-to-leader`, `one-way-from-leader` | what one side sends the other is lost, for 4 s |
//! | `restart` | SIGTERM (the ordered stop), started again at once |
//! | `rolling-restart` | every node in turn, the leader last, each restarted like `restart` once the herd settled after the one before |
//! | `apply-during-cut` | the victim cut from both others; an apply through the leader meanwhile |
//! | `clock-back` | the leader's wall clock steps 60 s back for 4 s, then forward to the true time (libfaketime; the monotonic clock does not move, as with an NTP step) |
//! | `clock-forward` | an owner's wall clock steps 20 s forward for 4 s, then back |
//!
//! **What is checked after each round** (from every node's own store, `Query` with
//! `local_only`, and from the receiver's log and the action files):
//! - *double scrape*: a sample of a target by one node strictly inside a tenure of
//!   another (two of its consecutive samples at most 1.5 intervals apart);
//! - *duplicate key*: an idempotency key the receiver accepted twice;
//! - *lost transition*: per alert, the accepted notifications do not alternate
//!   FIRING / RESOLVED, or, once settled, the last one does not match the file (or,
//!   for a node, its being back);
//! - *action twice*: more action lines for a target than transitions notified;
//! - *orphan hole*: a target the victim owned went without any sample for longer
//!   than the limit (the bench: 3 s + one interval; the suite's short run only
//!   catches hangs);
//! - *clock step moved*: after a clock fault, another node scraped one of the
//!   victim's targets (a clock step is not a death: no failover, no takeover). The
//!   victim's own holes are not counted for these faults: its samples are stamped
//!   by its stepped clock, and those behind its newest are dropped (as Prometheus
//!   drops out-of-order samples);
//! - *not settled*: the herd did not settle within 60 s after the fault.
//!
//! Per fault kind it measures the takeover (the first sample of an orphaned target
//! by another node, minus the fault's start) and the longest hole.
//!
//! The clock faults run only where libfaketime is installed (`scripts/test`
//! installs Debian's `faketime`); the table says which kinds ran.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::bench::{client_runtime, local_samples, percentile};
use crate::cluster::Status;
use crate::netns::{default_timings_toml, NetLab, NetNode, NodeSpec};
use crate::{now_ms, toml_str, HttpReceiver, Sshd, SSH_USER};

/// Scrape interval of every target.
const INTERVAL_MS: i64 = 1000;
/// The port every node listens on, in its own namespace.
const PORT: u16 = 7401;
const TOKEN: &str = "chaos-harness-token-7c2e";
/// How long a cut or a killed node lasts.
const FAULT_MS: u64 = 4000;
/// When, after the fault starts, a file is flipped.
const FLIP_AFTER_MS: u64 = 300;
/// Longest wait for the herd to settle.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait, once settled, for the notifications to agree with the files.
const NOTES_TIMEOUT: Duration = Duration::from_secs(30);
/// Settled: every target scraped within this.
const FRESH_S: f64 = 2.5;
/// A tenure: two samples of one node at most this far apart.
const TENURE_GAP_MS: i64 = INTERVAL_MS * 3 / 2;
/// A sample must be this far inside another node's tenure to count (clock reads
/// of two processes on one host).
const INSIDE_SLACK_MS: i64 = 20;
/// Samples are read from this long before the fault.
const LOOKBACK_MS: i64 = 5000;

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    KillOwner,
    KillLeader,
    StopOwner(u64),
    StopLeader(u64),
    CutOwner,
    CutLeader,
    CutFromLeader,
    OneWayToLeader,
    OneWayFromLeader,
    Restart,
    RollingRestart,
    ApplyDuringCut,
    /// The victim's wall clock steps back by [`CLOCK_BACK_S`] for the fault's length,
    /// then forward to the true time again (libfaketime; the monotonic clock stays).
    ClockBack,
    /// The victim's wall clock steps forward by [`CLOCK_FORWARD_S`], then back.
    ClockForward,
}

/// How far a `clock-back` fault steps the victim's wall clock back: more than the
/// time a round waits for notifications, so an outbox or timer that waits on the
/// wall clock shows as a lost transition.
pub const CLOCK_BACK_S: i64 = 60;
/// How far a `clock-forward` fault steps it forward. What the victim stamped in
/// that future stays in its store, so the next round starts once it is past.
pub const CLOCK_FORWARD_S: i64 = 20;

impl Fault {
    /// Every kind the harness runs.
    pub fn all() -> Vec<Fault> {
        let mut v = vec![Fault::KillOwner, Fault::KillLeader];
        for ms in [500, 1600, 5000] {
            v.push(Fault::StopOwner(ms));
            v.push(Fault::StopLeader(ms));
        }
        v.extend([
            Fault::CutOwner,
            Fault::CutLeader,
            Fault::CutFromLeader,
            Fault::OneWayToLeader,
            Fault::OneWayFromLeader,
            Fault::Restart,
            Fault::RollingRestart,
            Fault::ApplyDuringCut,
        ]);
        if crate::netns::libfaketime().is_some() {
            v.extend([Fault::ClockBack, Fault::ClockForward]);
        }
        v
    }

    pub fn name(&self) -> String {
        match self {
            Fault::KillOwner => "kill-owner".into(),
            Fault::KillLeader => "kill-leader".into(),
            Fault::StopOwner(ms) => format!("stop-owner-{}s", *ms as f64 / 1000.0),
            Fault::StopLeader(ms) => format!("stop-leader-{}s", *ms as f64 / 1000.0),
            Fault::CutOwner => "cut-owner".into(),
            Fault::CutLeader => "cut-leader".into(),
            Fault::CutFromLeader => "cut-from-leader".into(),
            Fault::OneWayToLeader => "one-way-to-leader".into(),
            Fault::OneWayFromLeader => "one-way-from-leader".into(),
            Fault::Restart => "restart".into(),
            Fault::RollingRestart => "rolling-restart".into(),
            Fault::ApplyDuringCut => "apply-during-cut".into(),
            Fault::ClockBack => "clock-back".into(),
            Fault::ClockForward => "clock-forward".into(),
        }
    }

    /// The kind [`Fault::name`] names.
    pub fn parse(name: &str) -> Option<Fault> {
        Fault::all().into_iter().find(|f| f.name() == name)
    }

    /// The wall-clock step of a clock fault, in seconds.
    fn clock_step_s(&self) -> Option<i64> {
        match self {
            Fault::ClockBack => Some(-CLOCK_BACK_S),
            Fault::ClockForward => Some(CLOCK_FORWARD_S),
            _ => None,
        }
    }

    /// Whether the victim is the leader.
    fn on_leader(&self) -> bool {
        matches!(
            self,
            Fault::KillLeader | Fault::StopLeader(_) | Fault::CutLeader | Fault::ClockBack
        )
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub rounds: usize,
    /// Round r's faults and flips come from a generator seeded with `seed` and r.
    pub seed: u64,
    /// The first round's number (to replay round R of a seed: `first = R`, `rounds = 1`).
    pub first: usize,
    /// Fleet size.
    pub targets: usize,
    /// Which faults; None: all, chosen at random. Some: these in turn.
    pub faults: Option<Vec<Fault>>,
    /// An orphaned target without a sample for longer than this is a violation.
    pub hole_limit_ms: i64,
}

/// The invariants, in the order of the report.
pub const INVARIANTS: [&str; 7] = [
    "double scrape",
    "duplicate key",
    "lost transition",
    "action twice",
    "orphan hole",
    "clock step moved",
    "not settled",
];

/// One broken invariant.
#[derive(Debug, Clone)]
pub struct Violation {
    pub invariant: &'static str,
    pub round: usize,
    pub fault: String,
    pub detail: String,
}

/// What one round measured.
#[derive(Debug, Clone)]
pub struct RoundFigures {
    pub round: usize,
    pub fault: String,
    pub victim: u64,
    /// Per orphaned target: first sample by another node minus the fault's start.
    pub takeover_ms: Vec<f64>,
    /// Per orphaned target: its longest stretch without a sample.
    pub hole_ms: Vec<f64>,
    pub seconds: f64,
}

/// Everything a run found.
#[derive(Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub rounds: Vec<RoundFigures>,
    pub violations: Vec<Violation>,
    /// Action runs fewer than the transitions notified (reported, not an invariant
    /// of the issue: an action of a node that died mid-run is not repeated).
    pub actions_missing: usize,
    pub notifications: usize,
    /// Why the run ended early, if it did.
    pub aborted: Option<String>,
}

// ---------------------------------------------------------------------------------
// The rig

/// Fields drop in order: the nodes die before the receiver, sshd and the lab go.
struct Rig {
    nodes: BTreeMap<u64, NetNode>,
    hook: HttpReceiver,
    sshd: Sshd,
    dir: TempDir,
    lab: NetLab,
    names: Vec<String>,
    /// Targets whose file is missing now.
    missing: BTreeSet<String>,
    /// Whether the extra target `x-1` is in the applied fleet.
    extra: bool,
}

impl Rig {
    fn start(targets: usize) -> Rig {
        crate::require_root();
        progress(
            "a bridge and three network namespaces; sshd and a webhook receiver on the bridge",
        );
        let lab = NetLab::new(3);
        let hook = HttpReceiver::start_on(&lab.bridge_ip());
        let sshd = Sshd::start_on(&lab.bridge_ip());
        let dir = tempfile::Builder::new()
            .prefix("herd-chaos-")
            .tempdir()
            .expect("a temp dir");
        // The SSH account reads the watched files and appends to the action files.
        for (sub, mode) in [("", 0o755), ("watched", 0o755), ("actions", 0o777)] {
            let p = dir.path().join(sub);
            std::fs::create_dir_all(&p).expect("creating the harness's dirs");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
                .expect("setting a dir's mode");
        }
        let names: Vec<String> = (1..=targets).map(|i| format!("t-{i}")).collect();
        let mut rig = Rig {
            nodes: BTreeMap::new(),
            hook,
            sshd,
            dir,
            lab,
            names,
            missing: BTreeSet::new(),
            extra: false,
        };
        for name in rig.names.clone().iter().chain([&"x-1".to_string()]) {
            rig.write_file(name);
        }
        progress("one herd node per namespace");
        for id in 1..=3u64 {
            let i = id as usize;
            let node = NetNode::start(NodeSpec {
                id,
                addr: format!("{}:{PORT}", rig.lab.ip(i)),
                netns: Some(rig.lab.ns(i).to_string()),
                token: Some(TOKEN.into()),
                tls: None,
                extra_toml: default_timings_toml("none"),
                ssh_toml: format!(
                    "user = \"{SSH_USER}\"\nkey = {}\n",
                    toml_str(&rig.sshd.client_key().display().to_string())
                ),
                // Every node can be a clock fault's victim.
                faketime: crate::netns::libfaketime().is_some(),
            });
            node.trust(&rig.sshd.known_hosts_line());
            rig.nodes.insert(id, node);
        }
        progress("node 1 inits the herd, 2 and 3 join it");
        rig.node(1).cli_ok(&["cluster", "init"]);
        let seed = rig.node(1).addr().to_string();
        for id in [2, 3] {
            rig.node(id).cli_ok(&["cluster", "join", &seed]);
        }
        progress(&format!(
            "apply {targets} SSH targets with a file_fresh check, a rule with an action each, a webhook"
        ));
        rig.node(1).apply(&rig.fleet());
        rig
    }

    fn node(&self, id: u64) -> &NetNode {
        &self.nodes[&id]
    }

    fn node_mut(&mut self, id: u64) -> &mut NetNode {
        self.nodes.get_mut(&id).expect("a node of the rig")
    }

    fn watched(&self, name: &str) -> PathBuf {
        self.dir.path().join("watched").join(name)
    }

    fn action_file(&self, name: &str) -> PathBuf {
        self.dir.path().join("actions").join(format!("{name}.log"))
    }

    fn write_file(&self, name: &str) {
        let p = self.watched(name);
        std::fs::write(&p, "fresh\n").expect("writing a watched file");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644))
            .expect("setting a file's mode");
    }

    /// Deletes a present file, writes a missing one.
    fn flip(&mut self, name: &str) {
        if self.missing.remove(name) {
            self.write_file(name);
        } else {
            let _ = std::fs::remove_file(self.watched(name));
            self.missing.insert(name.to_string());
        }
    }

    fn fleet(&self) -> String {
        let mut text = String::new();
        let mut targets = self.names.clone();
        if self.extra {
            targets.push("x-1".into());
        }
        for name in &targets {
            text.push_str(&format!(
                "[[target]]\nname = \"{name}\"\naddress = \"{}\"\ninterval = \"1s\"\n\
                 checks = [{{ kind = \"file_fresh\", path = {}, max_age = \"1h\" }}]\n\n",
                self.sshd.address(),
                toml_str(&self.watched(name).display().to_string())
            ));
        }
        for (i, name) in self.names.iter().enumerate() {
            // Temp dir paths hold no quote.
            let run = format!("date +%s%N >> '{}'", self.action_file(name).display());
            text.push_str(&format!(
                "[[rule]]\nname = \"stale-{}\"\ntargets = [\"{name}\"]\ncheck = \"file_fresh\"\n\
                 kind = \"range\"\nseverity = \"critical\"\n\
                 action = {{ run = {}, on = \"both\", timeout = \"10s\", max_per_hour = 100000 }}\n\n",
                i + 1,
                toml_str(&run)
            ));
        }
        text.push_str(&format!(
            "[[channel]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\ngroup_window = \"0s\"\n\n\
             [routes]\ncritical = [\"hook\"]\n",
            self.hook.url("/hook")
        ));
        text
    }

    fn fleet_names(&self) -> Vec<String> {
        let mut v = self.names.clone();
        if self.extra {
            v.push("x-1".into());
        }
        v
    }

    /// Every node's status when the herd is settled: all answer, all see the three
    /// alive, each holds its lease, one leader, one map, every target owned, up and
    /// fresh, and the map balanced (no move pending: see [`imbalance`]). Else why not.
    fn settled(&self) -> Result<BTreeMap<u64, Status>, String> {
        let members: BTreeSet<u64> = self.nodes.keys().copied().collect();
        let names = self.fleet_names();
        let mut statuses = BTreeMap::new();
        let mut why = Vec::new();
        for (&id, node) in &self.nodes {
            let out = node.cli(&["status", "--json"]);
            if !out.status.success() {
                why.push(format!("node {id} does not answer"));
                continue;
            }
            let s = match serde_json::from_slice::<Value>(&out.stdout)
                .map_err(|e| e.to_string())
                .and_then(Status::parse)
            {
                Ok(s) => s,
                Err(e) => {
                    why.push(format!("node {id}: bad status: {e}"));
                    continue;
                }
            };
            let mut p = s.ownership_problems(&names, true);
            for name in &names {
                match s.target(name) {
                    Some(t) if t.up != Some(true) => p.push(format!("{name} up={:?}", t.up)),
                    Some(t) if !t.last_scrape_age_s.is_some_and(|a| a <= FRESH_S) => {
                        p.push(format!("{name} scraped {:?}s ago", t.last_scrape_age_s))
                    }
                    _ => {}
                }
            }
            if !p.is_empty() {
                p.truncate(4);
                why.push(format!("node {id}: {}", p.join("; ")));
            }
            statuses.insert(id, s);
        }
        why.extend(Status::agreement_problems(&statuses, &members));
        if why.is_empty() {
            // One map is not enough: a node back from a fault owns nothing until the
            // leader has heard (a beat later) that it applied the map, and then gets
            // its share. Until the map is balanced a move is pending, and a round
            // started then would count it against its fault.
            if let Some(s) = statuses.values().next() {
                if let Some(p) = imbalance(&s.owners(), &names, &members) {
                    why.push(p);
                }
            }
        }
        if why.is_empty() {
            Ok(statuses)
        } else {
            why.truncate(6);
            Err(why.join(" | "))
        }
    }

    fn wait_settled(&self) -> Result<(u64, BTreeMap<String, u64>), String> {
        let start = Instant::now();
        loop {
            match self.settled() {
                Ok(s) => {
                    let any = s.values().next().expect("three statuses");
                    return Ok((any.leader.expect("settled: a leader"), any.owners()));
                }
                Err(why) if start.elapsed() > SETTLE_TIMEOUT => {
                    return Err(format!("not settled after {SETTLE_TIMEOUT:?}: {why}"))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(300)),
            }
        }
    }

    /// Keeps every node's dir and the harness's files (watched, actions) for a
    /// post-mortem, and says where they are.
    fn keep(&mut self) {
        for (id, node) in self.nodes.iter_mut() {
            progress(&format!("kept node {id}'s dir {}", node.keep().display()));
        }
        self.dir.disable_cleanup(true);
        progress(&format!(
            "kept the harness's files in {}",
            self.dir.path().display()
        ));
        let log: Vec<String> = self
            .hook
            .requests()
            .iter()
            .map(|r| {
                format!(
                    "{} {} {}",
                    r.ts_ms,
                    r.peer,
                    String::from_utf8_lossy(&r.body)
                )
            })
            .collect();
        let path = self.dir.path().join("receiver.log");
        if std::fs::write(&path, log.join("\n")).is_ok() {
            progress(&format!("the receiver's requests: {}", path.display()));
        }
    }
}

/// With every member alive and caught up the leader's map gives each of them
/// floor(T/N) or ceil(T/N) of the fleet's T targets (see `ownership::assign`); a map
/// that does not is about to change. Why not, if so.
fn imbalance(
    owners: &BTreeMap<String, u64>,
    names: &[String],
    members: &BTreeSet<u64>,
) -> Option<String> {
    let mut count: BTreeMap<u64, usize> = members.iter().map(|&m| (m, 0)).collect();
    for name in names {
        if let Some(c) = owners.get(name).and_then(|o| count.get_mut(o)) {
            *c += 1;
        }
    }
    let (lo, hi) = (
        names.len() / members.len(),
        names.len().div_ceil(members.len()),
    );
    count
        .values()
        .any(|&c| c < lo || c > hi)
        .then(|| format!("the map is not balanced yet (a move is pending): {count:?}"))
}

fn progress(message: &str) {
    eprintln!("chaos: {message}");
}

// ---------------------------------------------------------------------------------
// Samples

/// Samples of one target: node → sorted times.
type PerNode = BTreeMap<u64, Vec<i64>>;

/// Samples of one node strictly inside a tenure of another: (node, time, other).
pub fn double_scrapes(samples: &PerNode) -> Vec<(u64, i64, u64)> {
    let mut found = Vec::new();
    for (&x, xs) in samples {
        for (&y, ys) in samples {
            if x == y {
                continue;
            }
            for pair in ys.windows(2) {
                let (a, b) = (pair[0], pair[1]);
                if b - a > TENURE_GAP_MS {
                    continue;
                }
                let lo = xs.partition_point(|&t| t <= a + INSIDE_SLACK_MS);
                if let Some(&t) = xs.get(lo).filter(|&&t| t < b - INSIDE_SLACK_MS) {
                    found.push((x, t, y));
                }
            }
        }
    }
    found.sort_unstable();
    found.dedup();
    found
}

/// The longest stretch without a sample (any node) that ends after `from_ms`, up to
/// `to_ms`.
pub fn longest_hole(samples: &PerNode, from_ms: i64, to_ms: i64) -> i64 {
    let mut all: Vec<i64> = samples.values().flatten().copied().collect();
    all.sort_unstable();
    let mut hole = 0;
    let mut prev: Option<i64> = None;
    for &t in &all {
        if let Some(p) = prev {
            if t > from_ms {
                hole = hole.max(t - p.max(from_ms - INTERVAL_MS));
            }
        }
        prev = Some(t);
    }
    // Still nothing at the end.
    if let Some(p) = prev {
        hole = hole.max(to_ms - p.max(from_ms));
    } else {
        hole = hole.max(to_ms - from_ms);
    }
    hole
}

// ---------------------------------------------------------------------------------
// Notifications

/// Accepted notifications (one per idempotency key) in arrival order, and the keys
/// accepted more than once.
fn notes(hook: &HttpReceiver) -> (Vec<Value>, Vec<String>) {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut list = Vec::new();
    for n in crate::receiver::herd_notes(&hook.requests()) {
        let key = n["idempotency_key"].as_str().unwrap_or("").to_string();
        let count = seen.entry(key).or_default();
        *count += 1;
        if *count == 1 {
            list.push(n);
        }
    }
    let dups = seen
        .into_iter()
        .filter(|(_, c)| *c > 1)
        .map(|(k, c)| format!("{k} ×{c}"))
        .collect();
    (list, dups)
}

/// (rule, target) → kinds of its notifications in arrival order.
fn sequences(list: &[Value]) -> BTreeMap<(String, String), Vec<String>> {
    let mut seq: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for n in list {
        let kind = n["kind"].as_str().unwrap_or("?").to_string();
        if kind != "firing" && kind != "resolved" {
            continue;
        }
        let rule = n["alert"]["rule"].as_str().unwrap_or("?").to_string();
        let target = n["alert"]["target"].as_str().unwrap_or("?").to_string();
        seq.entry((rule, target)).or_default().push(kind);
    }
    seq
}

/// Alerts whose notifications do not alternate: "rule/target: firing, firing".
fn broken_alternation(seq: &BTreeMap<(String, String), Vec<String>>) -> Vec<String> {
    seq.iter()
        .filter(|(_, kinds)| {
            kinds.first().is_some_and(|k| k == "resolved") || kinds.windows(2).any(|w| w[0] == w[1])
        })
        .map(|((r, t), kinds)| format!("{r}/{t}: {}", kinds.join(", ")))
        .collect()
}

/// Where the last notification of an alert disagrees with the world: a missing
/// file whose alert is not firing, a present one whose alert is, a node (all are
/// back when settled) whose "node down" is still firing.
fn disagreements(
    seq: &BTreeMap<(String, String), Vec<String>>,
    names: &[String],
    missing: &BTreeSet<String>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let key = (format!("stale-{}", i + 1), name.clone());
        let last = seq.get(&key).and_then(|k| k.last()).map(String::as_str);
        let want_firing = missing.contains(name);
        if want_firing != (last == Some("firing")) {
            out.push(format!(
                "{name}: file {}, last notification {last:?}",
                if want_firing { "missing" } else { "present" }
            ));
        }
    }
    for ((rule, target), kinds) in seq {
        if target.starts_with("herd-node-") && kinds.last().is_some_and(|k| k == "firing") {
            out.push(format!(
                "{rule}/{target}: still firing though every node is back"
            ));
        }
    }
    out
}

// ---------------------------------------------------------------------------------
// A run

/// Runs the rounds and returns what they found. Progress on stderr.
pub fn run(opts: &Options) -> Report {
    let mut rig = Rig::start(opts.targets);
    let rt = client_runtime();
    let mut report = Report {
        seed: opts.seed,
        ..Default::default()
    };
    let mut seen_doubles: BTreeSet<(String, u64, i64)> = BTreeSet::new();
    let mut counted = BTreeMap::<&'static str, usize>::new();
    let kinds = Fault::all();
    for r in opts.first..opts.first + opts.rounds {
        let started = Instant::now();
        let mut rng =
            StdRng::seed_from_u64(opts.seed ^ (r as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let fault = match &opts.faults {
            Some(list) => list[(r - opts.first) % list.len()],
            None => *kinds.choose(&mut rng).expect("fault kinds"),
        };
        let (leader, owners) = match rig.wait_settled() {
            Ok(v) => v,
            Err(e) => {
                report.violations.push(Violation {
                    invariant: "not settled",
                    round: r,
                    fault: "(before the fault)".into(),
                    detail: e.clone(),
                });
                report.aborted = Some(format!("round {r}: {e}"));
                break;
            }
        };
        let victim = if fault.on_leader() {
            leader
        } else {
            let mut owning: Vec<u64> = owners
                .values()
                .copied()
                .filter(|&o| o != leader)
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            if owning.is_empty() {
                owning = rig.nodes.keys().copied().filter(|&o| o != leader).collect();
            }
            *owning.choose(&mut rng).expect("a node besides the leader")
        };
        let orphans: Vec<String> = owners
            .iter()
            .filter(|(_, &o)| o == victim)
            .map(|(t, _)| t.clone())
            .collect();
        let flip = orphans
            .iter()
            .filter(|t| t.starts_with("t-"))
            .collect::<Vec<_>>()
            .choose(&mut rng)
            .map(|t| t.to_string());
        progress(&format!(
            "round {r}: {} of node {victim} (leader {leader}, owns {}){}",
            fault.name(),
            orphans.len(),
            flip.as_deref()
                .map(|t| format!("; {t}'s file flips"))
                .unwrap_or_default()
        ));
        let t0 = now_ms();
        if let Err(e) = inject(&mut rig, fault, victim, leader, flip.as_deref(), &mut rng) {
            report.aborted = Some(format!("round {r}: {e}"));
            break;
        }
        let settled = rig.wait_settled();
        let t_end = now_ms();
        if let Err(e) = &settled {
            report.violations.push(Violation {
                invariant: "not settled",
                round: r,
                fault: fault.name(),
                detail: e.clone(),
            });
            report.aborted = Some(format!("round {r}: {e}"));
            break;
        }
        // Samples of this round, from every node's own store.
        let names = {
            let mut v = rig.names.clone();
            v.push("x-1".into());
            v
        };
        let addrs: Vec<(u64, String)> = rig
            .nodes
            .iter()
            .map(|(&id, n)| (id, n.addr().to_string()))
            .collect();
        let mut per_target: BTreeMap<String, PerNode> = BTreeMap::new();
        let mut query_error = None;
        for (id, addr) in &addrs {
            match rt.block_on(local_samples(
                addr,
                Some(TOKEN),
                &names,
                t0 - LOOKBACK_MS,
                t_end,
            )) {
                Ok(m) => {
                    for (t, ts) in m {
                        per_target.entry(t).or_default().insert(*id, ts);
                    }
                }
                Err(e) => query_error = Some(e),
            }
        }
        if let Some(e) = query_error {
            report.aborted = Some(format!("round {r}: reading the samples: {e}"));
            break;
        }
        let mut fig = RoundFigures {
            round: r,
            fault: fault.name(),
            victim,
            takeover_ms: Vec::new(),
            hole_ms: Vec::new(),
            seconds: 0.0,
        };
        for (t, samples) in &per_target {
            for (x, ts, y) in double_scrapes(samples) {
                if seen_doubles.insert((t.clone(), x, ts)) {
                    report.violations.push(Violation {
                        invariant: "double scrape",
                        round: r,
                        fault: fault.name(),
                        detail: format!("{t}: node {x} scraped at {ts} inside node {y}'s tenure"),
                    });
                }
            }
        }
        for t in &orphans {
            // An apply during the round may have removed the extra target: no
            // sample after that is right, not a hole.
            if t == "x-1" && !rig.extra {
                continue;
            }
            let Some(samples) = per_target.get(t) else {
                continue;
            };
            let first_other = samples
                .iter()
                .filter(|(&id, _)| id != victim)
                .filter_map(|(_, ts)| ts.iter().find(|&&x| x > t0).copied())
                .min();
            if fault.clock_step_s().is_some() {
                // A clock step is no death: nobody else may take the target up.
                // The victim's own samples of the step are stamped by its stepped
                // clock (and those behind its newest dropped, as Prometheus drops
                // out-of-order samples), so its holes are not the herd's.
                if let Some(f) = first_other {
                    report.violations.push(Violation {
                        invariant: "clock step moved",
                        round: r,
                        fault: fault.name(),
                        detail: format!(
                            "{t}: scraped by another node {} ms after node {victim}'s clock stepped",
                            f - t0
                        ),
                    });
                }
                continue;
            }
            if let Some(f) = first_other {
                fig.takeover_ms.push((f - t0) as f64);
            }
            let hole = longest_hole(samples, t0, t_end);
            fig.hole_ms.push(hole as f64);
            if hole > opts.hole_limit_ms {
                report.violations.push(Violation {
                    invariant: "orphan hole",
                    round: r,
                    fault: fault.name(),
                    detail: format!(
                        "{t}: {hole} ms without a sample (limit {} ms)",
                        opts.hole_limit_ms
                    ),
                });
            }
        }
        // Notifications: wait until the last of each alert agrees with the world.
        let names_now = rig.names.clone();
        let deadline = Instant::now() + NOTES_TIMEOUT;
        let (list, dups) = loop {
            let (list, dups) = notes(&rig.hook);
            let seq = sequences(&list);
            if disagreements(&seq, &names_now, &rig.missing).is_empty() || Instant::now() > deadline
            {
                break (list, dups);
            }
            std::thread::sleep(Duration::from_millis(300));
        };
        let seq = sequences(&list);
        let mut now_counts = BTreeMap::<&'static str, Vec<String>>::new();
        now_counts.insert("duplicate key", dups);
        let mut lost = broken_alternation(&seq);
        lost.extend(disagreements(&seq, &names_now, &rig.missing));
        now_counts.insert("lost transition", lost);
        // Actions: lines per target against the transitions notified.
        let mut twice = Vec::new();
        let mut missing_actions = 0;
        for (i, name) in names_now.iter().enumerate() {
            let lines = std::fs::read_to_string(rig.action_file(name))
                .map(|s| s.lines().count())
                .unwrap_or(0);
            let transitions = seq
                .get(&(format!("stale-{}", i + 1), name.clone()))
                .map_or(0, Vec::len);
            if lines > transitions {
                twice.push(format!(
                    "{name}: {lines} action runs for {transitions} transitions"
                ));
            }
            missing_actions += transitions.saturating_sub(lines);
        }
        now_counts.insert("action twice", twice);
        report.actions_missing = missing_actions;
        report.notifications = list.len();
        // Cumulative checks: what is new since the last round belongs to this one.
        for (inv, items) in now_counts {
            let before = counted.get(inv).copied().unwrap_or(0);
            if items.len() > before {
                report.violations.push(Violation {
                    invariant: inv,
                    round: r,
                    fault: fault.name(),
                    detail: items.join("; "),
                });
            }
            counted.insert(inv, items.len().max(before));
        }
        fig.seconds = started.elapsed().as_secs_f64();
        progress(&format!(
            "round {r}: {} done in {:.1}s; takeover max {}, hole max {}; violations so far {}",
            fault.name(),
            fig.seconds,
            ms_max(&fig.takeover_ms),
            ms_max(&fig.hole_ms),
            report.violations.len()
        ));
        for v in report.violations.iter().filter(|v| v.round == r) {
            progress(&format!(
                "round {r}: VIOLATION {}: {}",
                v.invariant,
                v.detail.chars().take(300).collect::<String>()
            ));
        }
        report.rounds.push(fig);
        if fault == Fault::ClockForward {
            // What the victim stamped ahead must be in the past before the next
            // round reads its samples.
            let ahead = t0 + CLOCK_FORWARD_S * 1000 + FAULT_MS as i64 + 1000;
            let wait = ahead - now_ms();
            if wait > 0 {
                progress(&format!(
                    "round {r}: waiting {wait} ms until the stamps of the step are past"
                ));
                std::thread::sleep(Duration::from_millis(wait as u64));
            }
            // The step must have happened: the victim stamped samples of its targets
            // in the future it was moved to (else libfaketime did nothing, and the
            // round proved nothing).
            let from = t0 + CLOCK_FORWARD_S * 1000;
            let stamped = rt
                .block_on(local_samples(
                    rig.node(victim).addr(),
                    Some(TOKEN),
                    &orphans,
                    from,
                    from + FAULT_MS as i64 + 2000,
                ))
                .map(|m| m.values().map(Vec::len).sum::<usize>());
            match stamped {
                Ok(n) if n > 0 || orphans.is_empty() => {
                    progress(&format!("round {r}: node {victim} stamped {n} samples {CLOCK_FORWARD_S} s ahead, as its clock said"))
                }
                Ok(_) => {
                    report.aborted = Some(format!(
                        "round {r}: node {victim} stamped no sample ahead: its clock did not step (is libfaketime working?)"
                    ));
                    break;
                }
                Err(e) => {
                    report.aborted = Some(format!("round {r}: reading the samples: {e}"));
                    break;
                }
            }
        }
    }
    if !report.violations.is_empty() || report.aborted.is_some() {
        rig.keep();
    }
    report
}

fn ms_max(v: &[f64]) -> String {
    v.iter()
        .copied()
        .reduce(f64::max)
        .map_or("-".into(), |m| format!("{:.0} ms", m))
}

/// Sleeps until `ms` after `start`.
fn sleep_until(start: Instant, ms: u64) {
    let at = start + Duration::from_millis(ms);
    let now = Instant::now();
    if at > now {
        std::thread::sleep(at - now);
    }
}

/// Runs one fault against `victim` and ends it; flips `flip`'s file 300 ms in.
fn inject(
    rig: &mut Rig,
    fault: Fault,
    victim: u64,
    leader: u64,
    flip: Option<&str>,
    rng: &mut StdRng,
) -> Result<(), String> {
    let start = Instant::now();
    let v = victim as usize;
    let others: Vec<usize> = rig
        .nodes
        .keys()
        .map(|&id| id as usize)
        .filter(|&i| i != v)
        .collect();
    let flip_now = |rig: &mut Rig| {
        sleep_until(start, FLIP_AFTER_MS);
        if let Some(t) = flip {
            rig.flip(t);
        }
    };
    match fault {
        Fault::KillOwner | Fault::KillLeader => {
            rig.node_mut(victim).kill9();
            flip_now(rig);
            sleep_until(start, FAULT_MS);
            rig.node_mut(victim).restart()?;
        }
        Fault::StopOwner(ms) | Fault::StopLeader(ms) => {
            rig.node(victim).pause();
            flip_now(rig);
            sleep_until(start, ms);
            rig.node(victim).resume();
        }
        Fault::CutOwner | Fault::CutLeader => {
            for &o in &others {
                rig.lab.cut(v, o);
            }
            flip_now(rig);
            sleep_until(start, FAULT_MS);
            rig.lab.heal();
        }
        Fault::CutFromLeader => {
            rig.lab.cut(v, leader as usize);
            flip_now(rig);
            sleep_until(start, FAULT_MS);
            rig.lab.heal();
        }
        Fault::OneWayToLeader => {
            rig.lab.cut_one_way(v, leader as usize);
            flip_now(rig);
            sleep_until(start, FAULT_MS);
            rig.lab.heal();
        }
        Fault::OneWayFromLeader => {
            rig.lab.cut_one_way(leader as usize, v);
            flip_now(rig);
            sleep_until(start, FAULT_MS);
            rig.lab.heal();
        }
        Fault::Restart => {
            rig.node_mut(victim).stop();
            flip_now(rig);
            rig.node_mut(victim).restart()?;
        }
        Fault::RollingRestart => {
            // Every node in turn (the victim first, the leader last), each once the
            // herd has settled again after the one before: an upgrade's restarts.
            let mut order: Vec<u64> = rig
                .nodes
                .keys()
                .copied()
                .filter(|&id| id != leader && id != victim)
                .collect();
            order.insert(0, victim);
            if victim != leader {
                order.push(leader);
            }
            for (i, id) in order.into_iter().enumerate() {
                rig.node_mut(id).stop();
                if i == 0 {
                    flip_now(rig);
                }
                rig.node_mut(id).restart()?;
                rig.wait_settled()?;
            }
        }
        Fault::ClockBack | Fault::ClockForward => {
            let step = fault.clock_step_s().unwrap_or_default();
            rig.node(victim).set_clock_offset(step);
            flip_now(rig);
            sleep_until(start, FAULT_MS);
            rig.node(victim).set_clock_offset(0);
        }
        Fault::ApplyDuringCut => {
            for &o in &others {
                rig.lab.cut(v, o);
            }
            flip_now(rig);
            sleep_until(start, 500 + rng.random_range(0..500));
            rig.extra = !rig.extra;
            let fleet = rig.fleet();
            let out = {
                let n = rig.node(leader);
                let path = n.dir().join(format!("chaos-fleet-{}.toml", now_ms()));
                std::fs::write(&path, fleet).map_err(|e| format!("writing a fleet: {e}"))?;
                n.cli(&["apply", &path.display().to_string()])
            };
            if !out.status.success() {
                rig.lab.heal();
                return Err(format!(
                    "apply through leader {leader} during the cut failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            sleep_until(start, FAULT_MS);
            rig.lab.heal();
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// The report

fn dist(v: &[f64]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    let mut v = v.to_vec();
    format!(
        "{:.2} / {:.2} / {:.2}",
        percentile(&mut v, 50.0) / 1000.0,
        percentile(&mut v, 99.0) / 1000.0,
        percentile(&mut v, 100.0) / 1000.0
    )
}

impl Report {
    /// Markdown tables: per fault kind, then per invariant (with the seed and round
    /// of each violation, to replay it).
    pub fn table(&self) -> String {
        let mut by_kind: BTreeMap<String, Vec<&RoundFigures>> = BTreeMap::new();
        for r in &self.rounds {
            by_kind.entry(r.fault.clone()).or_default().push(r);
        }
        let mut out = format!(
            "chaos: seed {}, {} rounds, {} notifications accepted, {} action runs fewer than transitions\n\n\
             | fault | rounds | takeover p50 / p99 / max (s) | longest hole p50 / p99 / max (s) | violations |\n\
             |---|---:|---|---|---:|\n",
            self.seed,
            self.rounds.len(),
            self.notifications,
            self.actions_missing
        );
        for (kind, rounds) in &by_kind {
            let take: Vec<f64> = rounds.iter().flat_map(|r| r.takeover_ms.clone()).collect();
            let hole: Vec<f64> = rounds.iter().flat_map(|r| r.hole_ms.clone()).collect();
            let bad = self.violations.iter().filter(|v| &v.fault == kind).count();
            out.push_str(&format!(
                "| {kind} | {} | {} | {} | {bad} |\n",
                rounds.len(),
                dist(&take),
                dist(&hole)
            ));
        }
        out.push_str(
            "\n| invariant | violations | first (seed, round: detail) |\n|---|---:|---|\n",
        );
        for inv in INVARIANTS {
            let v: Vec<&Violation> = self
                .violations
                .iter()
                .filter(|v| v.invariant == inv)
                .collect();
            let first = v
                .first()
                .map(|v| {
                    format!(
                        "{}, {} ({}): {}",
                        self.seed,
                        v.round,
                        v.fault,
                        v.detail.chars().take(200).collect::<String>()
                    )
                })
                .unwrap_or_default();
            out.push_str(&format!("| {inv} | {} | {first} |\n", v.len()));
        }
        if let Some(why) = &self.aborted {
            out.push_str(&format!("\nThe run ended early: {why}\n"));
        }
        out
    }

    pub fn json(&self) -> Value {
        json!({
            "seed": self.seed,
            "rounds": self.rounds.iter().map(|r| json!({
                "round": r.round, "fault": r.fault, "victim": r.victim,
                "takeover_ms": r.takeover_ms, "hole_ms": r.hole_ms, "seconds": r.seconds,
            })).collect::<Vec<_>>(),
            "violations": self.violations.iter().map(|v| json!({
                "invariant": v.invariant, "round": v.round, "fault": v.fault, "detail": v.detail,
            })).collect::<Vec<_>>(),
            "actions_missing": self.actions_missing,
            "notifications": self.notifications,
            "aborted": self.aborted,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn per(v: &[(u64, &[i64])]) -> PerNode {
        v.iter().map(|(id, ts)| (*id, ts.to_vec())).collect()
    }

    #[test]
    fn a_handover_is_not_a_double_scrape() {
        let s = per(&[(1, &[0, 1000, 2000]), (2, &[2600, 3600, 4600])]);
        assert!(double_scrapes(&s).is_empty());
    }

    #[test]
    fn a_scrape_inside_another_tenure_is() {
        let s = per(&[(1, &[0, 1000, 2000, 3000]), (2, &[1500, 2500])]);
        let d = double_scrapes(&s);
        assert!(d.contains(&(2, 1500, 1)), "{d:?}");
        assert!(d.contains(&(1, 2000, 2)), "{d:?}");
    }

    #[test]
    fn a_paused_node_scraping_once_after_takeover_is() {
        // Node 1 stops at 1000 (paused), node 2 scrapes from 2500; node 1 scrapes
        // once more at 5200 on resume: inside node 2's tenure.
        let s = per(&[(1, &[0, 1000, 5200]), (2, &[2500, 3500, 4500, 5500])]);
        assert_eq!(double_scrapes(&s), vec![(1, 5200, 2)]);
    }

    #[test]
    fn a_node_back_without_its_share_is_not_settled() {
        let names: Vec<String> = ["t-1", "t-2", "t-3", "t-4", "t-5", "t-6", "x-1"]
            .map(String::from)
            .to_vec();
        let members: BTreeSet<u64> = [1, 2, 3].into();
        let map = |v: &[u64]| -> BTreeMap<String, u64> {
            names.iter().cloned().zip(v.iter().copied()).collect()
        };
        // Round 11 of seed 3268188216: node 2 back from a one-way cut, owning nothing.
        assert!(imbalance(&map(&[1, 1, 3, 3, 1, 3, 1]), &names, &members).is_some());
        // The rebalance that followed: x-1 and t-3 to node 2.
        assert!(imbalance(&map(&[1, 1, 2, 3, 1, 3, 2]), &names, &members).is_none());
    }

    #[test]
    fn holes_count_from_the_fault() {
        let s = per(&[(1, &[0, 1000, 2000]), (2, &[4500, 5500])]);
        assert_eq!(longest_hole(&s, 1500, 6000), 2500);
        assert_eq!(longest_hole(&s, 1500, 9000), 3500);
        assert_eq!(longest_hole(&PerNode::new(), 0, 3000), 3000);
    }

    #[test]
    fn alternation_and_agreement() {
        let mut seq = BTreeMap::new();
        seq.insert(
            ("stale-1".to_string(), "t-1".to_string()),
            vec!["firing".to_string(), "firing".to_string()],
        );
        assert_eq!(broken_alternation(&seq).len(), 1);
        let names = vec!["t-1".to_string(), "t-2".to_string()];
        let missing: BTreeSet<String> = ["t-1".to_string()].into();
        assert!(disagreements(&seq, &names, &missing).is_empty());
        let none = BTreeSet::new();
        assert_eq!(disagreements(&seq, &names, &none).len(), 1);
    }
}
