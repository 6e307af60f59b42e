//! The herd end to end: several real `herd node` processes formed with `herd
//! cluster init` and `herd cluster join`, one real sshd whose account plays many
//! targets (the same sshd under different names), a real SMTP server (aiosmtpd)
//! and a real HTTP receiver for the peer-down notifications. Nodes die by
//! `kill -9` and come back on the same port and data dir; everything is observed
//! through the CLI of the survivors.
//!
//! The bounds below only catch hangs; no test asserts a timing. Every status the
//! cluster helper reads is checked against invariant 1 (see `herd_tests::cluster`).
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use herd_tests::cluster::{node_target, Cluster, Status};
use herd_tests::{
    free_port, local_target, now_ms, phase, ssh_target, wait_for, wait_until, Herd, HerdOptions,
    HttpReceiver, Mail, Received, SmtpServer, Sshd,
};
use serde_json::Value;

/// Hang catcher for a failover, a rejoin, a rebalance or a notification.
const BOUND: Duration = Duration::from_secs(20);

/// Hang catcher for every target being up and scraped: the `herd-node-N` targets
/// are scraped every 10 s, so one that just moved may wait that long for its first
/// scrape on a loaded machine.
const SCRAPE_BOUND: Duration = Duration::from_secs(40);

/// After the first notification of a transition arrived, how long to watch for a
/// duplicate: the channels have no group window here, and a worker round is 1 s.
const QUIET: Duration = Duration::from_secs(4);

/// A fleet target is fresh when scraped within this many seconds (interval 1 s; the
/// machine is shared by several nodes and tests).
const FRESH_S: f64 = 5.0;

// ---------------------------------------------------------------------------------
// fleet.toml

fn names(prefix: &str, n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("{prefix}-{i}")).collect()
}

/// `names` as ssh targets on `sshd` with the vitals check every `interval`.
fn ssh_fleet(sshd: &Sshd, names: &[String], interval: &str) -> String {
    names
        .iter()
        .map(|n| ssh_target(n, &sshd.address(), interval))
        .collect()
}

/// An email channel `mail` to `smtp`, without TLS and without a group window.
fn email_channel(smtp: &SmtpServer) -> String {
    smtp.email_channel("mail", &["ops@example.test"]) + "group_window = \"0s\"\n\n"
}

/// A webhook channel `hook` (Herd's JSON document) to `hook`, without a group window.
fn webhook_channel(hook: &HttpReceiver) -> String {
    grouped_webhook_channel(hook, "0s")
}

/// The webhook channel `hook` with a group window of `window` (a notification waits
/// that long in the sender's outbox).
fn grouped_webhook_channel(hook: &HttpReceiver, window: &str) -> String {
    format!(
        "[[channel]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\ngroup_window = \"{window}\"\n\n",
        hook.url("/hook")
    )
}

/// `[routes] critical = [...]`: where a peer-down notification goes.
fn critical_route(channels: &[&str]) -> String {
    let list: Vec<String> = channels.iter().map(|c| format!("\"{c}\"")).collect();
    format!("[routes]\ncritical = [{}]\n", list.join(", "))
}

// ---------------------------------------------------------------------------------
// What the receivers got

/// Every notification in the Herd JSON documents the receiver accepted (2xx).
fn notes(reqs: &[Received]) -> Vec<Value> {
    herd_tests::receiver::herd_notes(reqs)
}

/// The node_down notifications of node `id` of `kind` ("firing" or "resolved").
fn node_down_notes(hook: &HttpReceiver, id: u64, kind: &str) -> Vec<Value> {
    notes(&hook.requests())
        .into_iter()
        .filter(|n| {
            n["alert"]["rule"] == "node_down"
                && n["alert"]["target"] == node_target(id).as_str()
                && n["kind"] == kind
        })
        .collect()
}

/// `(rule, target, kind)` of every notification the receiver accepted, for messages.
fn note_lines(hook: &HttpReceiver) -> Vec<String> {
    notes(&hook.requests())
        .iter()
        .map(|n| {
            format!(
                "{} {} {} key={}",
                n["kind"].as_str().unwrap_or("?"),
                n["alert"]["rule"].as_str().unwrap_or("?"),
                n["alert"]["target"].as_str().unwrap_or("?"),
                n["idempotency_key"].as_str().unwrap_or("?")
            )
        })
        .collect()
}

/// Mails whose subject is exactly `[TAG] node_down on herd-node-ID`.
fn node_down_mails(smtp: &SmtpServer, id: u64, tag: &str) -> Vec<Mail> {
    let subject = format!("[{tag}] node_down on {}", node_target(id));
    smtp.messages()
        .into_iter()
        .filter(|m| m.subject() == subject)
        .collect()
}

fn subjects(smtp: &SmtpServer) -> Vec<String> {
    smtp.messages().iter().map(Mail::subject).collect()
}

/// Checks a peer notification's idempotency key: `herd-node-N:<transition>:<channel>`.
fn assert_peer_key(key: &str, id: u64, channel: &str) {
    let prefix = format!("{}:", node_target(id));
    let suffix = format!(":{channel}");
    assert!(
        key.starts_with(&prefix)
            && key.ends_with(&suffix)
            && key.len() > prefix.len() + suffix.len(),
        "the idempotency key {key:?} is not {prefix}<transition>{suffix}"
    );
}

/// Waits for the `kind` ("firing"/"resolved") node_down notification of node `id`
/// at the webhook and, when `smtp` is given, by mail; then watches for duplicates
/// for [`QUIET`] and asserts exactly one per channel. Returns the webhook's key.
fn expect_one_peer_notification(
    hook: &HttpReceiver,
    smtp: Option<&SmtpServer>,
    id: u64,
    kind: &str,
) -> String {
    let tag = kind.to_ascii_uppercase();
    hook.wait_for(
        BOUND,
        &format!("the webhook got node_down {kind} for {}", node_target(id)),
        |_| !node_down_notes(hook, id, kind).is_empty(),
    );
    if let Some(smtp) = smtp {
        smtp.wait_for(
            BOUND,
            &format!("a [{tag}] node_down mail for {}", node_target(id)),
            |_| !node_down_mails(smtp, id, &tag).is_empty(),
        );
    }
    std::thread::sleep(QUIET);
    let got = node_down_notes(hook, id, kind);
    assert_eq!(
        got.len(),
        1,
        "exactly one node_down {kind} of {} at the webhook; it got:\n{}",
        node_target(id),
        note_lines(hook).join("\n")
    );
    let key = got[0]["idempotency_key"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_peer_key(&key, id, "hook");
    assert_eq!(got[0]["channel"], "hook", "{}", got[0]);
    assert_eq!(got[0]["alert"]["severity"], "critical", "{}", got[0]);
    if let Some(smtp) = smtp {
        let mails = node_down_mails(smtp, id, &tag);
        assert_eq!(
            mails.len(),
            1,
            "exactly one [{tag}] node_down mail of {}; subjects: {:?}",
            node_target(id),
            subjects(smtp)
        );
        let mail_key = mails[0]
            .header("x-herd-idempotency-key")
            .unwrap_or_default()
            .to_string();
        assert_peer_key(&mail_key, id, "mail");
    }
    let others: Vec<String> = note_lines(hook)
        .into_iter()
        .filter(|l| !l.contains(&format!(" {} ", node_target(id))))
        .collect();
    if !others.is_empty() {
        eprintln!("    other notifications at the webhook: {others:?}");
    }
    key
}

// ---------------------------------------------------------------------------------
// Status and query

/// `herd query TARGET METRIC --since 5m --json` on node `id`; panics unless it
/// exits 0 (a node that is down must be a gap, not an error).
fn query(cluster: &Cluster, id: u64, target: &str, metric: &str) -> Value {
    let out = cluster
        .node(id)
        .cli(&["query", target, metric, "--since", "5m", "--json"]);
    assert!(
        out.status.success(),
        "`herd query {target} {metric}` on node {id} failed with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "`herd query --json` on node {id} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Every point of every series of a query document, sorted by time.
fn points_of(doc: &Value) -> Vec<(i64, f64)> {
    let mut points: Vec<(i64, f64)> = doc["series"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["points"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| Some((p.get(0)?.as_i64()?, p.get(1)?.as_f64()?)))
        .collect();
    points.sort_by_key(|p| p.0);
    points
}

/// The gaps of a query document that name node `id`.
fn gaps_naming(doc: &Value, id: u64) -> Vec<Value> {
    doc["gaps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|g| g["node"].as_u64() == Some(id))
        .cloned()
        .collect()
}

/// Waits until a query on a live node shows, for each of `targets`, a `target.up`
/// point of 1 taken after `after_ms`.
fn wait_scraped_after(cluster: &Cluster, targets: &[String], after_ms: i64) {
    let live = cluster.live_nodes();
    let mut missing: BTreeSet<String> = targets.iter().cloned().collect();
    let mut turn = 0usize;
    wait_until(
        BOUND,
        &format!(
            "{} targets have a target.up point of 1 newer than {after_ms}",
            targets.len()
        ),
        || {
            // Ask the live nodes in turn: each must fan out to the new owner.
            let asked = live[turn % live.len()];
            turn += 1;
            missing.retain(|t| {
                !points_of(&query(cluster, asked, t, "target.up"))
                    .iter()
                    .any(|&(ts, v)| ts > after_ms && v == 1.0)
            });
            missing.is_empty()
        },
    );
}

/// Waits until a status from a live node shows every one of `dead` not alive and
/// no target owned by any of them (each owned by a node it shows alive); returns
/// that status and turns on the live-owner check of every later status.
fn wait_failover(cluster: &Cluster, dead: &[u64]) -> Status {
    let mut last = String::new();
    let status = wait_for(
        BOUND,
        &format!("a survivor shows nodes {dead:?} down and their targets moved"),
        || {
            let s = cluster.status();
            let alive = s.alive_ids();
            let mut why = Vec::new();
            for d in dead {
                if alive.contains(d) {
                    why.push(format!("node {d} still alive"));
                }
            }
            for t in &s.targets {
                match t.owner {
                    Some(o) if dead.contains(&o) || !alive.contains(&o) => {
                        why.push(format!("{} owned by {o}", t.name))
                    }
                    None => why.push(format!("{} has no owner", t.name)),
                    _ => {}
                }
            }
            if why.is_empty() {
                return Some(s);
            }
            why.truncate(5);
            let line = format!("{} · {}", s.summary(), why.join("; "));
            if line != last {
                eprintln!("    not yet: {line}");
                last = line;
            }
            None
        },
    );
    cluster.expect_live_owners(true);
    eprintln!("    {}", status.summary());
    status
}

/// Every live node owns floor(T/N) or ceil(T/N) of the T fleet targets, and no
/// other node owns any. (The `herd-node-N` targets follow the ring instead, see
/// [`ring_problems`].)
fn balanced(s: &Status, live: &[u64], fleet: &[String]) -> bool {
    let (t, n) = (fleet.len(), live.len());
    let counts = fleet_counts(s, fleet);
    let (lo, hi) = (t / n, t.div_ceil(n));
    live.iter().all(|id| {
        let c = counts.get(id).copied().unwrap_or(0);
        (lo..=hi).contains(&c)
    }) && counts.keys().all(|o| live.contains(o))
}

/// The node that watches node `n`'s machine with one watcher: the next live node
/// after `n` in the ring of ids.
fn ring_next(n: u64, live: &[u64]) -> Option<u64> {
    let mut ring: Vec<u64> = live.iter().copied().filter(|&id| id != n).collect();
    ring.sort_unstable();
    ring.iter()
        .copied()
        .find(|&id| id > n)
        .or(ring.first().copied())
}

/// `herd-node-N` targets whose owner is not the next live node after N.
fn ring_problems(s: &Status, live: &[u64]) -> Vec<String> {
    s.targets
        .iter()
        .filter_map(|t| {
            let n: u64 = t.name.strip_prefix("herd-node-")?.parse().ok()?;
            let want = ring_next(n, live);
            (t.owner != want).then(|| format!("{} owned by {:?}, not {want:?}", t.name, t.owner))
        })
        .collect()
}

/// Waits until the status of a live node shows the fleet targets balanced over
/// the live nodes, `id` owning at least one target, and each `herd-node-N` watched
/// by the next live node in the ring.
fn wait_rebalanced_to(cluster: &Cluster, id: u64, fleet: &[String]) -> Status {
    let live = cluster.live_nodes();
    let mut last = String::new();
    wait_for(
        BOUND,
        &format!("ownership rebalanced over {live:?}, node {id} owns targets"),
        || {
            let s = cluster.status();
            let ring = ring_problems(&s, &live);
            if balanced(&s, &live, fleet) && !s.owned_by(id).is_empty() && ring.is_empty() {
                return Some(s);
            }
            let line = format!(
                "{} of {} targets · fleet owned {:?} · ring: {ring:?}",
                s.summary(),
                s.targets.len(),
                fleet_counts(&s, fleet)
            );
            if line != last {
                eprintln!("    not yet: {line}");
                last = line;
            }
            None
        },
    )
}

/// Owner → how many fleet targets.
fn fleet_counts(s: &Status, fleet: &[String]) -> BTreeMap<u64, usize> {
    let mut m = BTreeMap::new();
    for name in fleet {
        if let Some(o) = s.target(name).and_then(|t| t.owner) {
            *m.entry(o).or_insert(0) += 1;
        }
    }
    m
}

// ---------------------------------------------------------------------------------
// Setup shared by the three-node tests

/// Three nodes formed into a herd, a fleet of ssh targets on one sshd owned and
/// scraped, and a mail and a webhook channel for critical notifications.
struct Rig {
    // Dropped first: the nodes stop before the servers they talk to.
    cluster: Cluster,
    hook: HttpReceiver,
    smtp: SmtpServer,
    _sshd: Sshd,
    fleet: Vec<String>,
}

/// Fleet targets of the three-node tests: with the three `herd-node-N` targets, 12
/// targets, 4 per node.
const THREE_NODE_TARGETS: usize = 9;

fn three_nodes_with_fleet() -> Rig {
    phase!("a real sshd, aiosmtpd and an HTTP receiver");
    let sshd = Sshd::start();
    let smtp = SmtpServer::start();
    let hook = HttpReceiver::start();

    phase!("three nodes: node 1 inits the herd, 2 and 3 join it");
    let cluster = Cluster::start(3, HerdOptions::with_sshd(&sshd));
    let s = cluster.status();
    assert_eq!(s.nodes.len(), 3, "{}", s.summary());
    assert!(s.nodes.iter().all(|n| n.voter), "{}", s.summary());

    phase!("apply {THREE_NODE_TARGETS} ssh targets at 1s, mail + webhook for critical");
    let fleet = names("web", THREE_NODE_TARGETS);
    let text = [
        ssh_fleet(&sshd, &fleet, "1s"),
        email_channel(&smtp),
        webhook_channel(&hook),
        critical_route(&["mail", "hook"]),
    ]
    .concat();
    cluster.apply(1, &text);

    phase!("every node has the spec; every target is owned, up and scraped");
    let versions: BTreeSet<u64> = wait_for(BOUND, "every node applied the same spec", || {
        let v: BTreeSet<u64> = cluster
            .live_nodes()
            .into_iter()
            .map(|id| cluster.status_of(id).spec_version)
            .collect();
        (v.len() == 1 && !v.contains(&0)).then_some(v)
    });
    eprintln!("    spec versions: {versions:?}");
    let s = cluster.wait_until_all_owned_and_scraped(&fleet, FRESH_S, SCRAPE_BOUND);
    for id in 1..=3 {
        assert!(
            s.target(&node_target(id)).is_some(),
            "status lists {} (the watch of node {id}'s machine): {}",
            node_target(id),
            s.summary()
        );
    }
    Rig {
        cluster,
        hook,
        smtp,
        _sshd: sshd,
        fleet,
    }
}

// ---------------------------------------------------------------------------------
// 1. a follower that owns targets dies and comes back

#[test]
fn three_nodes_kill_owner() {
    let mut rig = three_nodes_with_fleet();
    let leader = rig.cluster.wait_leader(BOUND);
    let s = rig.cluster.status();
    let (victim, fleet_orphans) = s.busiest_follower(leader, &rig.fleet);
    let orphans = s.owned_by(victim);
    assert!(
        !fleet_orphans.is_empty(),
        "follower {victim} owns fleet targets: {}",
        s.summary()
    );

    phase!("kill -9 node {victim} (a follower owning {orphans:?}; leader {leader})");
    let killed_at = rig.cluster.kill9(victim);
    let s = wait_failover(&rig.cluster, &[victim]);
    for t in &orphans {
        let owner = s.target(t).and_then(|t| t.owner);
        assert!(
            owner.is_some_and(|o| o != victim),
            "{t} moved to a survivor: {owner:?}"
        );
    }
    assert_eq!(s.leader, Some(leader), "the leader stays: {}", s.summary());

    phase!("a survivor scrapes each orphaned fleet target after the kill");
    wait_scraped_after(&rig.cluster, &fleet_orphans, killed_at);
    rig.cluster
        .wait_until_all_owned_and_scraped(&rig.fleet, FRESH_S, SCRAPE_BOUND);
    wait_rebalanced_to(&rig.cluster, leader, &rig.fleet);

    phase!("exactly one node_down FIRING per channel");
    expect_one_peer_notification(&rig.hook, Some(&rig.smtp), victim, "firing");
    assert!(
        node_down_notes(&rig.hook, victim, "resolved").is_empty(),
        "no RESOLVED while node {victim} is down"
    );

    phase!("restart node {victim} on its port and data dir: it rejoins by itself");
    rig.cluster.restart(victim);
    rig.cluster.wait_formed(BOUND);
    let s = rig.cluster.status_of(victim);
    assert!(
        s.leader.is_some(),
        "the restarted node knows the leader: {}",
        s.summary()
    );

    phase!("ownership rebalances: node {victim} owns targets again and scrapes them");
    let s = wait_rebalanced_to(&rig.cluster, victim, &rig.fleet);
    eprintln!("    {}", s.summary());
    rig.cluster
        .wait_until_all_owned_and_scraped(&rig.fleet, FRESH_S, SCRAPE_BOUND);

    phase!("exactly one node_down RESOLVED per channel, and still one FIRING");
    let resolved_key = expect_one_peer_notification(&rig.hook, Some(&rig.smtp), victim, "resolved");
    assert_eq!(node_down_notes(&rig.hook, victim, "firing").len(), 1);
    assert_eq!(node_down_mails(&rig.smtp, victim, "FIRING").len(), 1);
    let firing_key = node_down_notes(&rig.hook, victim, "firing")[0]["idempotency_key"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_ne!(firing_key, resolved_key, "two transitions, two keys");

    phase!("every status still shows one live owner per target");
    for id in rig.cluster.live_nodes() {
        let s = rig.cluster.status_of(id);
        assert_eq!(s.unreachable, Vec::<u64>::new(), "{}", s.summary());
    }
}

// ---------------------------------------------------------------------------------
// 2. the leader dies

#[test]
fn three_nodes_kill_leader() {
    let mut rig = three_nodes_with_fleet();
    let leader = rig.cluster.wait_leader(BOUND);
    let s = rig.cluster.status();
    let orphans = s.owned_by(leader);
    let fleet_orphans = s.owned_among(leader, &rig.fleet);
    eprintln!("    leader {leader} owns {orphans:?}");

    phase!("kill -9 the leader, node {leader}");
    let killed_at = rig.cluster.kill9(leader);

    phase!("a new leader is elected among the survivors");
    let new_leader = rig.cluster.wait_leader(BOUND);
    assert_ne!(new_leader, leader, "the leader changed");

    phase!("its targets move to the survivors, which scrape them");
    let s = wait_failover(&rig.cluster, &[leader]);
    assert_eq!(s.leader, Some(new_leader), "{}", s.summary());
    assert_eq!(
        s.node(new_leader).map(|n| n.role.as_str()),
        Some("leader"),
        "{}",
        s.summary()
    );
    for t in &orphans {
        let owner = s.target(t).and_then(|t| t.owner);
        assert!(
            owner.is_some_and(|o| o != leader),
            "{t} moved to a survivor: {owner:?}"
        );
    }
    wait_scraped_after(&rig.cluster, &fleet_orphans, killed_at);
    wait_rebalanced_to(&rig.cluster, new_leader, &rig.fleet);

    phase!("exactly one node_down FIRING per channel for the old leader");
    expect_one_peer_notification(&rig.hook, Some(&rig.smtp), leader, "firing");

    phase!("the old leader comes back: it rejoins, the new leader stays, one RESOLVED");
    rig.cluster.restart(leader);
    rig.cluster.wait_formed(BOUND);
    let s = rig.cluster.status_of(leader);
    assert!(s.leader.is_some(), "{}", s.summary());
    wait_rebalanced_to(&rig.cluster, leader, &rig.fleet);
    expect_one_peer_notification(&rig.hook, Some(&rig.smtp), leader, "resolved");
    assert_eq!(node_down_notes(&rig.hook, leader, "firing").len(), 1);
    assert_eq!(node_down_mails(&rig.smtp, leader, "FIRING").len(), 1);
}

// ---------------------------------------------------------------------------------
// 3. five voters, two die, a sixth joins as a learner

#[test]
fn five_nodes() {
    phase!("a real sshd and an HTTP receiver; five nodes formed into a herd");
    let sshd = Sshd::start();
    let hook = HttpReceiver::start();
    let mut cluster = Cluster::start(5, HerdOptions::with_sshd(&sshd));

    phase!("five voters, one leader");
    let s = cluster.status();
    assert_eq!(s.nodes.len(), 5, "{}", s.summary());
    assert!(
        s.nodes.iter().all(|n| n.voter),
        "all five are voters: {}",
        s.summary()
    );
    let leaders: Vec<u64> = s
        .nodes
        .iter()
        .filter(|n| n.role == "leader")
        .map(|n| n.id)
        .collect();
    assert_eq!(leaders, vec![s.leader.unwrap_or(0)], "{}", s.summary());

    phase!("20 ssh targets at 2s applied through node 3 (any member takes an apply)");
    let fleet = names("db", 20);
    let text = [
        ssh_fleet(&sshd, &fleet, "2s"),
        webhook_channel(&hook),
        critical_route(&["hook"]),
    ]
    .concat();
    cluster.apply(3, &text);
    let s = cluster.wait_until_all_owned_and_scraped(&fleet, FRESH_S + 2.0, SCRAPE_BOUND);
    assert!(
        balanced(&s, &cluster.live_nodes(), &fleet),
        "{}",
        s.summary()
    );
    let ring = ring_problems(&s, &cluster.live_nodes());
    assert!(ring.is_empty(), "{ring:?}");

    phase!("kill -9 two followers that own targets");
    let leader = cluster.wait_leader(BOUND);
    let victims: Vec<u64> = s
        .nodes
        .iter()
        .map(|n| n.id)
        .filter(|&id| id != leader && !s.owned_among(id, &fleet).is_empty())
        .take(2)
        .collect();
    assert_eq!(victims.len(), 2, "{}", s.summary());
    let orphans: Vec<String> = victims
        .iter()
        .flat_map(|&v| s.owned_among(v, &fleet))
        .collect();
    let killed_at = now_ms();
    for &v in &victims {
        cluster.kill9(v);
    }

    phase!("the three survivors own every target and scrape the orphans");
    let s = wait_failover(&cluster, &victims);
    let survivors = cluster.live_nodes();
    assert!(
        s.owners().values().all(|o| survivors.contains(o)),
        "{}",
        s.summary()
    );
    wait_scraped_after(&cluster, &orphans, killed_at);
    wait_rebalanced_to(&cluster, leader, &fleet);
    cluster.wait_until_all_owned_and_scraped(&fleet, FRESH_S + 2.0, SCRAPE_BOUND);
    for &v in &victims {
        expect_one_peer_notification(&hook, None, v, "firing");
    }

    phase!("a sixth node joins through a follower: a learner that gets targets");
    let seed = *survivors
        .iter()
        .find(|&&id| id != leader)
        .expect("a surviving follower");
    cluster.start_node(6);
    cluster.join(6, seed);
    cluster.wait_formed(BOUND);
    let s = cluster.status();
    let six = s.node(6).expect("node 6 is listed").clone();
    assert!(!six.voter, "node 6 is a learner: {}", s.summary());
    assert_eq!(six.role, "learner", "{}", s.summary());
    assert_eq!(
        s.nodes.iter().filter(|n| n.voter).count(),
        5,
        "still five voters: {}",
        s.summary()
    );
    let s = wait_rebalanced_to(&cluster, 6, &fleet);
    eprintln!("    {}", s.summary());
    let s = cluster.wait_until_all_owned_and_scraped(&fleet, FRESH_S + 2.0, SCRAPE_BOUND);
    assert!(
        !s.owned_among(6, &fleet).is_empty(),
        "node 6 owns targets: {}",
        s.summary()
    );
    let s6 = cluster.status_of(6);
    assert_eq!(
        s6.leader,
        Some(leader),
        "the learner knows the leader: {}",
        s6.summary()
    );
}

// ---------------------------------------------------------------------------------
// 3b. the leader dies while its "node down" still waits in its outbox

/// Group window of the webhook in the peer-notice handover test: long enough that
/// the leader is killed while its "node down" still waits in its outbox.
const PEER_WINDOW_S: u64 = 10;

/// The size of node `id`'s outbox (`herd alerts --json`), None when it does not answer.
fn outbox_of(cluster: &Cluster, id: u64) -> Option<u64> {
    let out = cluster.node(id).cli(&["alerts", "--json"]);
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice::<Value>(&out.stdout).ok()?["outbox"].as_u64()
}

#[test]
fn a_leader_killed_before_delivering_node_down_leaves_it_to_the_next_leader() {
    phase!("an HTTP receiver that groups for {PEER_WINDOW_S} s; five nodes; a few local targets");
    let hook = HttpReceiver::start();
    let mut cluster = Cluster::start(5, HerdOptions::default());
    let fleet = names("pn", 5);
    let text = [
        fleet
            .iter()
            .map(|n| local_target(n, "1s"))
            .collect::<String>(),
        grouped_webhook_channel(&hook, &format!("{PEER_WINDOW_S}s")),
        critical_route(&["hook"]),
    ]
    .concat();
    cluster.apply(1, &text);
    cluster.wait_until_all_owned_and_scraped(&fleet, FRESH_S, SCRAPE_BOUND);
    let leader = cluster.wait_leader(BOUND);
    let down = *cluster
        .live_nodes()
        .iter()
        .find(|&&id| id != leader)
        .expect("a follower");

    phase!(
        "kill -9 node {down}; the leader {leader} queues its node_down (held {PEER_WINDOW_S} s)"
    );
    cluster.kill9(down);
    wait_for(
        BOUND,
        &format!("leader {leader}'s outbox holds the node_down of node {down}"),
        || (outbox_of(&cluster, leader)? >= 1).then_some(()),
    );
    // The leader records what it queued right after queueing it (one Raft commit).
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        notes(&hook.requests()).is_empty(),
        "nothing may have arrived inside the group window:\n{}",
        note_lines(&hook).join("\n")
    );

    phase!("kill -9 the leader {leader} before it sent it");
    let leader_killed_at = cluster.kill9(leader);
    let next = cluster.wait_leader(BOUND);
    assert_ne!(next, leader);

    phase!("the next leader {next} delivers node {down}'s node_down once, and the old leader's");
    expect_one_peer_notification(&hook, None, down, "firing");
    let arrived: Vec<i64> = hook
        .requests()
        .iter()
        .filter(|r| {
            notes(std::slice::from_ref(*r))
                .iter()
                .any(|n| n["alert"]["target"] == node_target(down).as_str())
        })
        .map(|r| r.ts_ms)
        .collect();
    assert!(
        arrived.iter().all(|t| *t > leader_killed_at),
        "sent by a survivor, after the leader's kill at {leader_killed_at}: {arrived:?}"
    );
    expect_one_peer_notification(&hook, None, leader, "firing");

    phase!("the old leader comes back with the notice still in its outbox: it sends nothing");
    cluster.restart(leader);
    cluster.wait_formed(BOUND);
    wait_for(
        BOUND,
        &format!("node {leader}'s outbox is empty (its stale notice dropped)"),
        || (outbox_of(&cluster, leader)? == 0).then_some(()),
    );
    expect_one_peer_notification(&hook, None, leader, "resolved");
    expect_one_peer_notification(&hook, None, down, "firing");

    phase!("node {down} comes back: one node_down RESOLVED");
    cluster.restart(down);
    cluster.wait_formed(BOUND);
    expect_one_peer_notification(&hook, None, down, "resolved");
    expect_one_peer_notification(&hook, None, down, "firing");
}

// ---------------------------------------------------------------------------------
// 4. the cluster commands, their errors, and a node leaving (API token on)

/// What a CLI run printed, stdout and stderr together.
fn said(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn cluster_cli_errors() {
    phase!("three nodes apart, every one requiring the same API token");
    let hook = HttpReceiver::start();
    let mut cluster = Cluster::start_apart(
        3,
        HerdOptions::default().api_token("cluster-test-token-0123456789"),
    );

    phase!("join a closed port: exit 1, the message names the address");
    let closed = format!("127.0.0.1:{}", free_port());
    let out = cluster.node(3).cli(&["cluster", "join", &closed]);
    eprintln!("    {}", said(&out).trim());
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    assert!(
        said(&out).contains(&closed),
        "names {closed}: {}",
        said(&out)
    );

    phase!("init twice: the second says the node is already in a herd");
    cluster.init(1);
    let out = cluster.node(1).cli(&["cluster", "init"]);
    eprintln!("    exit {:?}: {}", out.status.code(), said(&out).trim());
    assert!(
        matches!(out.status.code(), Some(0) | Some(1)),
        "{}",
        said(&out)
    );
    assert!(
        said(&out).to_lowercase().contains("already"),
        "says already: {}",
        said(&out)
    );

    phase!("2 and 3 join (3 after its failed join)");
    cluster.join(2, 1);
    cluster.join(3, 1);
    cluster.wait_formed(BOUND);

    phase!("remove a node that does not exist: a failure naming 99");
    let out = cluster.node(2).cli(&["cluster", "remove", "99"]);
    eprintln!("    exit {:?}: {}", out.status.code(), said(&out).trim());
    assert!(
        matches!(out.status.code(), Some(1) | Some(2)),
        "fails: {}",
        said(&out)
    );
    assert!(said(&out).contains("99"), "names 99: {}", said(&out));
    cluster.wait_formed(BOUND);

    phase!("a fleet of local targets, applied through node 2");
    let fleet = names("app", 6);
    let text = [
        fleet
            .iter()
            .map(|n| local_target(n, "1s"))
            .collect::<String>(),
        webhook_channel(&hook),
        critical_route(&["hook"]),
    ]
    .concat();
    cluster.apply(2, &text);
    let s = cluster.wait_until_all_owned_and_scraped(&fleet, FRESH_S, SCRAPE_BOUND);
    let leader = cluster.wait_leader(BOUND);
    let (leaver, moved) = s.busiest_follower(leader, &fleet);
    assert!(!moved.is_empty(), "{}", s.summary());

    phase!("node {leaver} leaves (owning {moved:?})");
    let out = cluster.node(leaver).cli_ok(&["cluster", "leave"]);
    eprintln!("    {}", out.trim());
    let mut left: Herd = cluster.forget(leaver);
    let stayed = cluster.live_nodes();
    let s = wait_for(
        BOUND,
        &format!("nodes {stayed:?} no longer list node {leaver} and own its targets"),
        || {
            let statuses: Vec<Status> = stayed
                .iter()
                .map(|&id| cluster.try_status(id))
                .collect::<Option<_>>()?;
            statuses
                .iter()
                .all(|s| {
                    s.node(leaver).is_none()
                        && moved.iter().all(|t| {
                            s.target(t)
                                .and_then(|t| t.owner)
                                .is_some_and(|o| o != leaver)
                        })
                })
                .then(|| statuses[0].clone())
        },
    );
    eprintln!("    {}", s.summary());
    assert!(
        s.owners().values().all(|o| stayed.contains(o)),
        "{}",
        s.summary()
    );
    cluster.wait_until_all_owned_and_scraped(&fleet, FRESH_S, SCRAPE_BOUND);

    phase!("node {leaver} no longer acts for the targets it had (invariant 2)");
    let mut last = Vec::new();
    wait_until(
        BOUND,
        &format!("node {leaver}'s own status shows it owns no target"),
        || {
            let s = Status::parse(left.status_json())
                .unwrap_or_else(|e| panic!("the status of node {leaver}: {e}"));
            let owned = s.owned_by(leaver);
            if owned != last {
                eprintln!(
                    "    node {leaver} still owns {owned:?} in its own view: {}",
                    s.summary()
                );
                last = owned.clone();
            }
            owned.is_empty()
        },
    );

    phase!("the node that left stops; nobody reports it down");
    let exit = left.sigterm();
    eprintln!("    node {leaver} exited: {exit}");
    std::thread::sleep(QUIET);
    let s = cluster.status();
    assert!(s.node(leaver).is_none(), "{}", s.summary());
    assert!(
        s.target(&node_target(leaver)).is_none(),
        "a node that left is no longer watched as {}: {}",
        node_target(leaver),
        s.summary()
    );
    assert!(
        node_down_notes(&hook, leaver, "firing").is_empty(),
        "a node that left is not down: {:?}",
        note_lines(&hook)
    );
    drop(left);
}

// ---------------------------------------------------------------------------------
// 5. a query on any node merges the samples of every owner

#[test]
fn query_fans_out() {
    phase!("a real sshd and three nodes; one ssh target at 1s");
    let sshd = Sshd::start();
    let mut cluster = Cluster::start(3, HerdOptions::with_sshd(&sshd));
    let fleet = vec!["q-1".to_string()];
    cluster.apply(1, &ssh_fleet(&sshd, &fleet, "1s"));
    let s = cluster.wait_until_all_owned_and_scraped(&fleet, FRESH_S, SCRAPE_BOUND);
    let a = s
        .target("q-1")
        .and_then(|t| t.owner)
        .expect("q-1 has an owner");

    phase!("node {a} owns q-1 for a while");
    let before = wait_for(
        BOUND,
        &format!("node {a} has 5 target.up points of q-1"),
        || {
            let p = points_of(&query(&cluster, a, "q-1", "target.up"));
            (p.len() >= 5).then_some(p)
        },
    );
    let others: Vec<u64> = cluster
        .live_nodes()
        .into_iter()
        .filter(|&id| id != a)
        .collect();
    for &id in &others {
        let p = points_of(&query(&cluster, id, "q-1", "target.up"));
        assert!(
            before.iter().all(|x| p.contains(x)),
            "node {id} answers with all {} points node {a} had: {p:?}",
            before.len()
        );
    }

    phase!("kill -9 node {a}; another node takes q-1 over");
    let killed_at = cluster.kill9(a);
    let s = wait_failover(&cluster, &[a]);
    let b = s
        .target("q-1")
        .and_then(|t| t.owner)
        .expect("q-1 has an owner");
    let c = *others.iter().find(|&&id| id != b).expect("a third node");
    eprintln!("    q-1: node {a} → node {b}; asking node {c}");

    phase!("node {c} answers with node {b}'s points and a gap naming node {a}");
    let doc = wait_for(
        BOUND,
        &format!("node {c}'s query has 3 points after the kill and a gap naming node {a}"),
        || {
            let doc = query(&cluster, c, "q-1", "target.up");
            let fresh = points_of(&doc)
                .iter()
                .filter(|&&(ts, _)| ts > killed_at)
                .count();
            (fresh >= 3 && !gaps_naming(&doc, a).is_empty()).then_some(doc)
        },
    );
    eprintln!("    gaps: {}", doc["gaps"]);
    let present = points_of(&doc)
        .iter()
        .filter(|p| before.contains(p))
        .count();
    eprintln!(
        "    {present} of node {a}'s {} points in the answer while it is down",
        before.len()
    );

    phase!("node {a} restarts: the query on node {c} merges both periods by time");
    let restarted_at = now_ms();
    cluster.restart(a);
    cluster.wait_formed(BOUND);
    let doc = wait_for(
        BOUND,
        &format!("node {c}'s query has all of node {a}'s points again and no gap naming it"),
        || {
            let doc = query(&cluster, c, "q-1", "target.up");
            let p = points_of(&doc);
            (before.iter().all(|x| p.contains(x)) && gaps_naming(&doc, a).is_empty()).then_some(doc)
        },
    );
    let series = doc["series"].as_array().expect("series[]");
    let labels: Vec<String> = series.iter().map(|s| s["labels"].to_string()).collect();
    let distinct: BTreeSet<&String> = labels.iter().collect();
    assert_eq!(
        labels.len(),
        distinct.len(),
        "one series per label set, merged across nodes: {labels:?}"
    );
    for s in series {
        let ts: Vec<i64> = s["points"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p.get(0)?.as_i64())
            .collect();
        assert!(
            ts.windows(2).all(|w| w[0] < w[1]),
            "points merged by time, no duplicates: {ts:?}"
        );
    }
    let p = points_of(&doc);
    let b_points: Vec<&(i64, f64)> = p
        .iter()
        .filter(|(ts, _)| *ts > killed_at + 500 && *ts < restarted_at)
        .collect();
    assert!(
        !b_points.is_empty(),
        "node {b}'s points while node {a} was down are in the answer: {p:?}"
    );
    let first_b = b_points[0].0;
    assert!(
        before.iter().all(|(ts, _)| *ts < first_b),
        "node {a}'s points come before node {b}'s"
    );
    eprintln!(
        "    {} points: {} from node {a} before the kill, {} from node {b} after",
        p.len(),
        before.len(),
        b_points.len()
    );
}
