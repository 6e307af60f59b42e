//! A network partition, for real: three `herd node` processes, each in its own
//! network namespace on a bridge the test makes (`herd_tests::netns`), a webhook
//! receiver on the bridge's address in the root namespace, and blackhole routes
//! that cut one node off from the other two but not from the receiver nor from the
//! CLI. Tries to break invariants 1, 2 and 4 of DESIGN.md:
//!
//! - the cut-off node loses its lease, stops scraping and sends nothing, although
//!   it can still reach the receiver (2);
//! - the majority takes its targets; an alert that fires meanwhile on one of them
//!   is notified once, by the new owner; "node down" goes out once (4);
//! - after the heal, every node shows every target with exactly one owner, the same
//!   map everywhere, and no notification ever arrived twice (1, 4);
//! - the cut-off node never stood for election (pre-vote): the leader and its term
//!   are the same after the heal as before the cut.
//!
//! Targets are local `file_fresh` checks on files in a temp dir (the filesystem is
//! shared by every namespace): deleting a file makes its target breach. The waits
//! only catch hangs; nothing asserts a timing.
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use herd_tests::cluster::{node_target, Status};
use herd_tests::netns::{default_timings_toml, NetLab, NetNode, NodeSpec};
use herd_tests::{local_target_with, phase, require_root, toml_str, wait_for};
use herd_tests::{HttpReceiver, Received};
use serde_json::Value;

/// Hang catcher for a formation, a fence, a failover, a rejoin or a notification.
const BOUND: Duration = Duration::from_secs(30);
/// After a notification arrived, how long to watch for a duplicate (no group
/// window here; an outbox round is about a second).
const QUIET: Duration = Duration::from_secs(4);
/// How long to watch the cut-off node's sample count for growth.
const STILL: Duration = Duration::from_secs(3);
/// Every node listens on this port of its own namespace's address.
const PORT: u16 = 7401;
/// One token for the herd: nodes present it to each other's client API too.
const TOKEN: &str = "partition-test-token-5f1d";
/// A fleet target is fresh when scraped within this many seconds (interval 1 s).
const FRESH_S: f64 = 5.0;
/// Files watched by `file_fresh` targets `f-1`..`f-N`.
const FILES: usize = 6;
/// The rule that fires when a watched file is missing or old.
const RULE: &str = "stale-file";

// ---------------------------------------------------------------------------------
// The rig

/// Fields drop in order: the nodes die before the receiver closes and before the
/// namespaces go.
struct Rig {
    nodes: BTreeMap<u64, NetNode>,
    hook: HttpReceiver,
    files: tempfile::TempDir,
    lab: NetLab,
}

impl Rig {
    fn node(&self, id: u64) -> &NetNode {
        &self.nodes[&id]
    }

    fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    fn file(&self, name: &str) -> PathBuf {
        self.files.path().join(name)
    }

    /// Node id → its address on the bridge.
    fn ip_of(&self, id: u64) -> IpAddr {
        self.node(id)
            .host()
            .parse()
            .expect("a node address is an IP")
    }
}

fn file_names() -> Vec<String> {
    (1..=FILES).map(|i| format!("f-{i}")).collect()
}

/// The fleet: a `file_fresh` target per file, a rule that fires (critical) while
/// a file is missing or older than an hour, and the webhook for critical.
fn fleet(rig: &Rig) -> String {
    let mut text = String::new();
    for name in file_names() {
        let check = format!(
            "{{ kind = \"file_fresh\", path = {}, max_age = \"1h\" }}",
            toml_str(&rig.file(&name).display().to_string())
        );
        text.push_str(&local_target_with(&name, &[check]));
    }
    text.push_str(&format!(
        "[[rule]]\nname = \"{RULE}\"\ntargets = [\"f-*\"]\ncheck = \"file_fresh\"\nkind = \"range\"\n\
         severity = \"critical\"\n\n\
         [[channel]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\ngroup_window = \"0s\"\n\n\
         [routes]\ncritical = [\"hook\"]\n",
        rig.hook.url("/hook")
    ));
    text
}

/// Three namespaces, a node in each formed into a herd (1 inits, 2 and 3 join),
/// the fleet applied, every target owned, up and scraped.
fn rig() -> Rig {
    require_root();
    phase!("a bridge and three network namespaces; a webhook receiver on the bridge");
    let lab = NetLab::new(3);
    let hook = HttpReceiver::start_on(&lab.bridge_ip());
    let files = tempfile::Builder::new()
        .prefix("herd-partition-files-")
        .tempdir()
        .expect("a temp dir");

    phase!("one herd node per namespace");
    let mut nodes = BTreeMap::new();
    for id in 1..=3u64 {
        let i = id as usize;
        let node = NetNode::start(NodeSpec {
            id,
            addr: format!("{}:{PORT}", lab.ip(i)),
            netns: Some(lab.ns(i).to_string()),
            token: Some(TOKEN.into()),
            tls: None,
            extra_toml: default_timings_toml("local"),
            ..Default::default()
        });
        eprintln!("    node {id} at {} in {}", node.addr(), lab.ns(i));
        nodes.insert(id, node);
    }
    let rig = Rig {
        nodes,
        hook,
        files,
        lab,
    };
    for name in file_names() {
        std::fs::write(rig.file(&name), "fresh\n").expect("writing a watched file");
    }

    phase!("node 1 inits the herd, 2 and 3 join it");
    let out = rig.node(1).cli_ok(&["cluster", "init"]);
    eprintln!("    node 1: cluster init: {}", out.trim());
    for id in [2, 3] {
        let seed = rig.node(1).addr().to_string();
        let out = rig.node(id).cli_ok(&["cluster", "join", &seed]);
        eprintln!("    node {id}: cluster join {seed}: {}", out.trim());
    }
    wait_agreed(&rig, "the herd formed");

    phase!("apply {FILES} file_fresh targets, rule {RULE}, webhook for critical");
    let out = rig.node(1).apply(&fleet(&rig));
    eprintln!("    {}", out.trim());
    let names = all_targets();
    wait_for(
        BOUND,
        "every target owned by a node, up and scraped",
        || {
            let s = rig.node(1).try_status()?;
            let problems = scrape_problems(&s, &names);
            if problems.is_empty() {
                eprintln!("    {}", s.summary());
                return Some(());
            }
            eprintln!("    not yet: {} · {}", s.summary(), problems.join("; "));
            None
        },
    );
    rig
}

/// The fleet targets and the three `herd-node-N` targets.
fn all_targets() -> Vec<String> {
    let mut names = file_names();
    names.extend((1..=3).map(node_target));
    names
}

/// What keeps status `s` from showing every one of `names` owned, up and (fleet
/// targets) scraped within [`FRESH_S`].
fn scrape_problems(s: &Status, names: &[String]) -> Vec<String> {
    let mut p = s.ownership_problems(names, true);
    for name in names {
        match s.target(name) {
            Some(t) if t.up != Some(true) => p.push(format!("{name} up={:?}", t.up)),
            Some(t)
                if name.starts_with("f-") && !t.last_scrape_age_s.is_some_and(|a| a <= FRESH_S) =>
            {
                p.push(format!("{name} scraped {:?}s ago", t.last_scrape_age_s))
            }
            _ => {}
        }
    }
    p.truncate(6);
    p
}

/// Waits until every node answers, lists members {1,2,3} all alive, holds a valid
/// lease, names the same leader, and shows the same ownership version and map in
/// which every target has exactly one owner (invariant 1 as far as a status shows
/// it). Returns the statuses.
fn wait_agreed(rig: &Rig, what: &str) -> BTreeMap<u64, Status> {
    let members: BTreeSet<u64> = rig.ids().into_iter().collect();
    let mut last = String::new();
    wait_for(
        BOUND,
        &format!("{what}: every node sees {members:?} alive, its lease valid, one leader, one map"),
        || {
            let mut statuses = BTreeMap::new();
            let mut why = Vec::new();
            for id in rig.ids() {
                match rig.node(id).try_status() {
                    Some(s) => {
                        statuses.insert(id, s);
                    }
                    None => why.push(format!("node {id} does not answer")),
                }
            }
            why.extend(Status::agreement_problems(&statuses, &members));
            if why.is_empty() {
                return Some(statuses);
            }
            why.truncate(6);
            let line = why.join(" | ");
            if line != last {
                eprintln!("    not yet: {line}");
                last = line;
            }
            None
        },
    )
}

// ---------------------------------------------------------------------------------
// What the receiver got

/// Every notification in the Herd JSON documents received, with its sender.
fn notes(hook: &HttpReceiver) -> Vec<(IpAddr, Value)> {
    notes_of(&hook.requests())
}

fn notes_of(reqs: &[Received]) -> Vec<(IpAddr, Value)> {
    reqs.iter()
        .flat_map(|r| {
            let doc = r.json();
            let list = doc["notifications"].as_array().cloned().unwrap_or_default();
            list.into_iter().map(move |n| (r.peer.ip(), n))
        })
        .collect()
}

fn is(n: &Value, rule: &str, target: &str, kind: &str) -> bool {
    n["alert"]["rule"] == rule && n["alert"]["target"] == target && n["kind"] == kind
}

/// One line per request and notification, for failure messages.
fn describe(hook: &HttpReceiver) -> String {
    let reqs = hook.requests();
    if reqs.is_empty() {
        return "  (nothing)".into();
    }
    reqs.iter()
        .map(|r| {
            let ns: Vec<String> = r.json()["notifications"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|n| {
                    format!(
                        "{} {} {} key={}",
                        n["kind"].as_str().unwrap_or("?"),
                        n["alert"]["rule"].as_str().unwrap_or("?"),
                        n["alert"]["target"].as_str().unwrap_or("?"),
                        n["idempotency_key"].as_str().unwrap_or("?")
                    )
                })
                .collect();
            format!(
                "  from {} {} {} idempotency-key={:?}: [{}]",
                r.peer,
                r.method,
                r.path,
                r.header("idempotency-key"),
                ns.join(", ")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits until the receiver has a notification `rule`/`target`/`kind`, watches
/// [`QUIET`] for a duplicate, and returns the one there is (with its sender).
fn expect_one(hook: &HttpReceiver, rule: &str, target: &str, kind: &str) -> (IpAddr, Value) {
    let what = format!("{kind} {rule} on {target}");
    wait_for(BOUND, &format!("the webhook got {what}"), || {
        notes(hook)
            .iter()
            .any(|(_, n)| is(n, rule, target, kind))
            .then_some(())
    });
    std::thread::sleep(QUIET);
    let got: Vec<(IpAddr, Value)> = notes(hook)
        .into_iter()
        .filter(|(_, n)| is(n, rule, target, kind))
        .collect();
    assert_eq!(
        got.len(),
        1,
        "exactly one {what} at the webhook; it got:\n{}",
        describe(hook)
    );
    got.into_iter().next().expect("one")
}

/// Panics when any idempotency key arrived twice (in a body or in the header).
fn assert_no_duplicates(hook: &HttpReceiver) {
    let mut seen = BTreeMap::<String, usize>::new();
    for (_, n) in notes(hook) {
        let key = n["idempotency_key"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            !key.is_empty(),
            "a notification without idempotency key: {n}"
        );
        *seen.entry(key).or_insert(0) += 1;
    }
    let mut headers = BTreeMap::<String, usize>::new();
    for r in hook.requests() {
        let key = r.header("idempotency-key").unwrap_or_default().to_string();
        *headers.entry(key).or_insert(0) += 1;
    }
    let dup: BTreeSet<&String> = seen
        .iter()
        .chain(headers.iter())
        .filter(|(_, &c)| c > 1)
        .map(|(k, _)| k)
        .collect();
    assert!(
        dup.is_empty(),
        "notifications arrived more than once (idempotency keys {dup:?}):\n{}",
        describe(hook)
    );
}

// ---------------------------------------------------------------------------------

#[test]
fn partitioned_owner_is_fenced_and_the_majority_notifies_once() {
    let rig = rig();
    let s = rig.node(1).status();
    let leader = s.leader.expect("a leader");
    let term = s.term;
    let files = file_names();

    // The victim: a follower that owns fleet targets (3 if it qualifies).
    let owned_files = |s: &Status, id: u64| -> Vec<String> {
        s.owned_by(id)
            .into_iter()
            .filter(|t| files.contains(t))
            .collect()
    };
    let victim = rig
        .ids()
        .into_iter()
        .rev()
        .filter(|&id| id != leader)
        .find(|&id| !owned_files(&s, id).is_empty())
        .unwrap_or_else(|| panic!("no follower owns a fleet target: {}", s.summary()));
    let majority: Vec<u64> = rig.ids().into_iter().filter(|&id| id != victim).collect();
    let breached = owned_files(&s, victim)[0].clone();
    let victim_ip = rig.ip_of(victim);
    let before = rig.hook.requests();
    assert!(
        before.is_empty(),
        "nothing is notified while every file is fresh; the webhook got:\n{}",
        describe(&rig.hook)
    );

    phase!(
        "cut node {victim} (owns {:?}; leader {leader}) off from nodes {majority:?}, \
         not from the receiver",
        s.owned_by(victim)
    );
    for &m in &majority {
        rig.lab.cut(victim as usize, m as usize);
    }

    phase!("node {victim}, asked directly, shows its lease lost");
    wait_for(
        BOUND,
        &format!("node {victim} shows its own lease invalid"),
        || {
            let s = rig.node(victim).try_status()?;
            let lease = s.node(victim).and_then(|n| n.lease);
            eprintln!("    node {victim}: lease {lease:?} · {}", s.summary());
            (lease == Some(false)).then_some(())
        },
    );

    phase!("{breached} (owned by node {victim}) breaches: its file is deleted");
    std::fs::remove_file(rig.file(&breached)).expect("deleting the watched file");

    phase!("the majority {majority:?} shows node {victim} down and owns all its targets");
    let mut last = String::new();
    let taken = wait_for(
        BOUND,
        &format!("nodes {majority:?} show node {victim} down and no target owned by it"),
        || {
            let mut out = None;
            let mut why = Vec::new();
            for &id in &majority {
                let Some(s) = rig.node(id).try_status() else {
                    why.push(format!("node {id} does not answer"));
                    continue;
                };
                if s.alive_ids().contains(&victim) {
                    why.push(format!("node {id} shows {victim} alive"));
                }
                let names = all_targets();
                let mut p = s.ownership_problems(&names, false);
                for t in &s.targets {
                    if !t.owner.is_some_and(|o| majority.contains(&o)) {
                        p.push(format!("{} owned by {:?}", t.name, t.owner));
                    }
                }
                if !p.is_empty() {
                    why.push(format!("node {id}: {}", p.join("; ")));
                }
                if s.leader.is_none_or(|l| !majority.contains(&l)) {
                    why.push(format!("node {id}: leader {:?}", s.leader));
                }
                out = Some(s);
            }
            if why.is_empty() {
                return out;
            }
            let line = why.join(" | ");
            if line != last {
                eprintln!("    not yet: {line}");
                last = line;
            }
            None
        },
    );
    eprintln!("    {}", taken.summary());
    let new_owner = taken
        .target(&breached)
        .and_then(|t| t.owner)
        .expect("the breached target has an owner");

    phase!("exactly one FIRING {RULE} on {breached}, from its new owner {new_owner}");
    let (from, note) = expect_one(&rig.hook, RULE, &breached, "firing");
    assert_eq!(
        from,
        rig.ip_of(new_owner),
        "the FIRING of {breached} comes from its new owner, node {new_owner}: {note}"
    );

    phase!("exactly one node_down FIRING for {}", node_target(victim));
    let (from, note) = expect_one(&rig.hook, "node_down", &node_target(victim), "firing");
    assert_ne!(
        from, victim_ip,
        "node {victim} does not notify about itself: {note}"
    );
    assert_eq!(note["alert"]["severity"], "critical", "{note}");

    phase!("node {victim} scrapes nothing and has sent nothing while cut off");
    let fenced = rig.node(victim).status();
    assert_eq!(
        fenced.node(victim).and_then(|n| n.lease),
        Some(false),
        "node {victim} is still without lease: {}",
        fenced.summary()
    );
    let scraped: Vec<String> = fenced
        .targets
        .iter()
        .filter(|t| t.up.is_some() || t.last_scrape_age_s.is_some())
        .map(|t| format!("{} (owner {:?}, up {:?})", t.name, t.owner, t.up))
        .collect();
    assert!(
        scraped.is_empty(),
        "a node without lease shows no target it scrapes; node {victim} shows {scraped:?}\n{:#}",
        fenced.raw
    );
    let samples = |s: &Status| s.raw["store"]["samples"].as_u64();
    let first = samples(&fenced);
    std::thread::sleep(STILL);
    let second = samples(&rig.node(victim).status());
    assert!(
        first.is_some(),
        "status shows store.samples: {:#}",
        fenced.raw
    );
    assert_eq!(
        first, second,
        "node {victim} stores no new sample while it has no lease"
    );
    assert!(
        rig.node(victim).log().contains("lease lost"),
        "node {victim} logs that it lost its lease"
    );
    let during = rig.hook.requests();
    let from_victim: Vec<&Received> = during.iter().filter(|r| r.peer.ip() == victim_ip).collect();
    assert!(
        from_victim.is_empty(),
        "node {victim} sent {} request(s) to the receiver while cut off:\n{}",
        from_victim.len(),
        describe(&rig.hook)
    );
    assert_no_duplicates(&rig.hook);

    phase!("heal: node {victim} rejoins");
    rig.lab.heal();
    let statuses = wait_agreed(&rig, "after the heal");
    for s in statuses.values() {
        eprintln!("    {}", s.summary());
    }

    phase!("no election: node {victim} never stood while cut off (pre-vote), so the leader {leader} keeps its term {term}");
    for s in statuses.values() {
        assert_eq!(
            (s.leader, s.term),
            (Some(leader), term),
            "node {} shows leader {:?} in term {}; node {victim}, cut off alone, must not \
             have raised its term and deposed leader {leader} (term {term}) when it came back",
            s.node_id,
            s.leader,
            s.term
        );
    }

    phase!("exactly one node_down RESOLVED for {}", node_target(victim));
    let (from, note) = expect_one(&rig.hook, "node_down", &node_target(victim), "resolved");
    assert_ne!(
        from, victim_ip,
        "node {victim} does not notify about itself: {note}"
    );

    phase!("settled: one owner per target everywhere, still one FIRING, no duplicate");
    let statuses = wait_agreed(&rig, "settled");
    let names = all_targets();
    for (id, s) in &statuses {
        let problems = s.ownership_problems(&names, true);
        assert!(
            problems.is_empty(),
            "node {id} shows every target with exactly one live owner: {problems:?}\n{}",
            s.summary()
        );
    }
    assert_no_duplicates(&rig.hook);
    let firing: Vec<(IpAddr, Value)> = notes(&rig.hook)
        .into_iter()
        .filter(|(_, n)| is(n, RULE, &breached, "firing"))
        .collect();
    assert_eq!(
        firing.len(),
        1,
        "{breached} fired once, across the partition and the heal:\n{}",
        describe(&rig.hook)
    );
    let resolved: Vec<(IpAddr, Value)> = notes(&rig.hook)
        .into_iter()
        .filter(|(_, n)| is(n, RULE, &breached, "resolved"))
        .collect();
    assert!(
        resolved.is_empty(),
        "{breached} stays firing (its file is still missing):\n{}",
        describe(&rig.hook)
    );
    eprintln!("    the receiver got:\n{}", describe(&rig.hook));
}
