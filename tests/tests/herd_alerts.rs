//! Alerts across the herd, end to end: three real `herd node` processes formed with
//! `herd cluster`, local targets whose file_fresh checks watch files in a temp dir
//! of the test (a missing file is critical, so a test breaks and heals a target at
//! will within a scrape), and a real HTTP receiver for the webhook channel (no group
//! window, so each transition is its own request).
//!
//! What is tried to be broken is design invariant 4: each alert transition gives
//! exactly one notification per channel, across a takeover (`kill -9` of the
//! owner) and the owner's return. Also: rules select the herd's own machines
//! (`herd-node-N`) like any target, and `ack` and `silence` work from any node.
//!
//! The bounds below only catch hangs; no test asserts a timing.
use std::collections::BTreeMap;
use std::time::Duration;

use herd_tests::cluster::{node_target, Cluster, Status};
use herd_tests::files::WatchedFiles as Files;
use herd_tests::{local_target, now_ms, phase, wait_for, wait_until, HerdOptions, HttpReceiver};
use serde_json::Value;

/// Hang catcher for a failover, a rejoin, a rebalance or a notification.
const BOUND: Duration = Duration::from_secs(20);

/// Hang catcher for every target being up and scraped, and for a first sample of
/// a `herd-node-N` target (scraped every 10 s, on a machine shared with other tests).
const SCRAPE_BOUND: Duration = Duration::from_secs(40);

/// After the first notification of a transition arrived, how long to watch for a
/// duplicate: the channel has no group window, and a worker round is 1 s.
const QUIET: Duration = Duration::from_secs(4);

/// How long to watch the `herd-node-N` alerts for a duplicate: longer than the
/// machine targets' interval (10 s), so every alert saw at least one more sample.
const MACHINE_QUIET: Duration = Duration::from_secs(12);

/// A fleet target is fresh when scraped within this many seconds (interval 1 s;
/// the machine is shared by several nodes and tests).
const FRESH_S: f64 = 5.0;

/// The webhook channel's name; it ends every idempotency key.
const HOOK: &str = "hook";

/// The file_fresh check of every fleet target.
const CHECK: &str = "backup";

/// The rule that fires while a target's file is missing.
const STALE_RULE: &str = "backup-stale";

// ---------------------------------------------------------------------------------
// Watched files and fleet.toml

fn names(prefix: &str, n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("{prefix}-{i}")).collect()
}

/// A local target at 1 s with one file_fresh check ([`CHECK`]) on its file.
fn fresh_target(name: &str, files: &Files) -> String {
    format!(
        "[[target]]\nname = \"{name}\"\ntransport = \"local\"\ninterval = \"1s\"\nchecks = [\n  \
         {{ kind = \"file_fresh\", name = \"{CHECK}\", path = \"{}\", max_age = \"1h\" }},\n]\n\n",
        files.path(name).display()
    )
}

/// [`STALE_RULE`]: a range rule on the check with no bounds, so it fires (at once)
/// while the check is not ok; notified on the webhook channel.
fn stale_rule() -> String {
    format!(
        "[[rule]]\nname = \"{STALE_RULE}\"\ncheck = \"{CHECK}\"\nkind = \"range\"\nfor = \"0s\"\n\
         severity = \"critical\"\nchannels = [\"{HOOK}\"]\n\n"
    )
}

/// The webhook channel [`HOOK`] (Herd's JSON document) to `hook`, with a group
/// window of `window` (a notification waits that long in its owner's outbox).
fn webhook_channel(hook: &HttpReceiver, window: &str) -> String {
    format!(
        "[[channel]]\nname = \"{HOOK}\"\nkind = \"webhook\"\nurl = \"{}\"\ngroup_window = \"{window}\"\n\n",
        hook.url("/hook")
    )
}

/// `fleet` as fresh targets, the stale rule and the webhook channel (no group window).
fn stale_fleet(fleet: &[String], files: &Files, hook: &HttpReceiver) -> String {
    stale_fleet_window(fleet, files, hook, "0s")
}

fn stale_fleet_window(
    fleet: &[String],
    files: &Files,
    hook: &HttpReceiver,
    window: &str,
) -> String {
    let mut text: String = fleet.iter().map(|t| fresh_target(t, files)).collect();
    text.push_str(&stale_rule());
    text.push_str(&webhook_channel(hook, window));
    text
}

// ---------------------------------------------------------------------------------
// What the receiver got

/// One notification in a Herd JSON document the receiver accepted, with the time
/// its request arrived.
#[derive(Debug, Clone)]
struct Note {
    kind: String,
    rule: String,
    target: String,
    alert_id: String,
    key: String,
    arrived_ms: i64,
    doc: Value,
}

impl Note {
    /// The transition count in the key `ALERT:TRANSITION:CHANNEL`.
    fn transition(&self) -> u64 {
        let parts: Vec<&str> = self.key.split(':').collect();
        match parts[..] {
            [id, t, channel] if id == self.alert_id && channel == HOOK => {
                t.parse().unwrap_or_else(|_| {
                    panic!("the transition in the key {:?} is not a number", self.key)
                })
            }
            _ => panic!(
                "the idempotency key {:?} is not {}:<transition>:{HOOK}",
                self.key, self.alert_id
            ),
        }
    }
}

/// Every notification the receiver accepted (2xx), in order of arrival.
fn notes(hook: &HttpReceiver) -> Vec<Note> {
    hook.accepted()
        .iter()
        .flat_map(|r| {
            let arrived_ms = r.ts_ms;
            r.json()["notifications"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |n| {
                    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
                    Note {
                        kind: s(&n["kind"]),
                        rule: s(&n["alert"]["rule"]),
                        target: s(&n["alert"]["target"]),
                        alert_id: s(&n["alert"]["id"]),
                        key: s(&n["idempotency_key"]),
                        arrived_ms,
                        doc: n,
                    }
                })
        })
        .collect()
}

/// The notifications of `rule` on `target` of `kind` ("firing" or "resolved").
fn notes_of(hook: &HttpReceiver, rule: &str, target: &str, kind: &str) -> Vec<Note> {
    notes(hook)
        .into_iter()
        .filter(|n| n.rule == rule && n.target == target && n.kind == kind)
        .collect()
}

/// One line per notification, for messages.
fn note_lines(hook: &HttpReceiver) -> String {
    let lines: Vec<String> = notes(hook)
        .iter()
        .map(|n| {
            format!(
                "  {} {} {} key={} at {}",
                n.kind, n.rule, n.target, n.key, n.arrived_ms
            )
        })
        .collect();
    if lines.is_empty() {
        "  (nothing)".into()
    } else {
        lines.join("\n")
    }
}

/// Waits until a `kind` notification of `rule` arrived for every one of `targets`,
/// watches [`QUIET`] for duplicates, and asserts exactly one each; returns them by
/// target.
fn expect_one_each(
    hook: &HttpReceiver,
    rule: &str,
    targets: &[String],
    kind: &str,
    timeout: Duration,
    quiet: Duration,
) -> BTreeMap<String, Note> {
    hook.wait_for(
        timeout,
        &format!("a {kind} notification of {rule} for each of {targets:?}"),
        |_| {
            targets
                .iter()
                .all(|t| !notes_of(hook, rule, t, kind).is_empty())
        },
    );
    std::thread::sleep(quiet);
    targets
        .iter()
        .map(|t| {
            let got = notes_of(hook, rule, t, kind);
            assert_eq!(
                got.len(),
                1,
                "exactly one {kind} notification of {rule} for {t}; the receiver got:\n{}",
                note_lines(hook)
            );
            (t.clone(), got[0].clone())
        })
        .collect()
}

// ---------------------------------------------------------------------------------
// herd alerts, herd status

/// `herd alerts --history 1h --json` on node `id`.
fn alerts(cluster: &Cluster, id: u64) -> Value {
    let text = cluster
        .node(id)
        .cli_ok(&["alerts", "--history", "1h", "--json"]);
    serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!("`herd alerts --json` on node {id} printed no JSON ({e}): {text}")
    })
}

/// The alert `alert_id` in a `herd alerts --json` document.
fn alert_by_id(doc: &Value, alert_id: &str) -> Option<Value> {
    doc["alerts"]
        .as_array()?
        .iter()
        .find(|a| a["id"] == alert_id)
        .cloned()
}

/// Waits until node `id` lists the alert `alert_id` and `cond` holds on it;
/// returns it.
fn wait_alert_on(
    cluster: &Cluster,
    id: u64,
    alert_id: &str,
    what: &str,
    cond: impl Fn(&Value) -> bool,
) -> Value {
    let mut last = String::new();
    wait_for(
        BOUND,
        &format!("node {id} lists alert {alert_id} {what}"),
        || {
            let a = alert_by_id(&alerts(cluster, id), alert_id);
            if let Some(a) = a.as_ref().filter(|a| cond(a)) {
                return Some(a.clone());
            }
            let line = format!("{a:?}");
            if line != last {
                eprintln!("    not yet on node {id}: {line}");
                last = line;
            }
            None
        },
    )
}

fn state(a: &Value) -> &str {
    a["state"].as_str().unwrap_or_default()
}

fn transitions(a: &Value) -> u64 {
    a["transitions"].as_u64().unwrap_or(0)
}

/// The `checks[]` entry `check` of `target` in a status (its verdict and when).
fn check_of(s: &Status, target: &str, check: &str) -> Option<Value> {
    s.raw["targets"]
        .as_array()?
        .iter()
        .find(|t| t["name"] == target)?["checks"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == check)
        .cloned()
}

/// Waits until a status shows each of `targets` owned by a live node other than
/// `dead`, and its [`CHECK`] critical as seen by a scrape after `after_ms` (so the
/// new owner scraped it); returns that status.
fn wait_taken_over(cluster: &Cluster, targets: &[String], dead: u64, after_ms: i64) -> Status {
    let mut last = String::new();
    wait_for(
        BOUND,
        &format!("{targets:?} are owned by survivors and scraped after the kill"),
        || {
            let s = cluster.status();
            let alive = s.alive_ids();
            let mut why = Vec::new();
            for t in targets {
                let owner = s.target(t).and_then(|t| t.owner);
                let check = check_of(&s, t, CHECK);
                let ts = check
                    .as_ref()
                    .and_then(|c| c["ts_ms"].as_i64())
                    .unwrap_or(0);
                match owner {
                    Some(o) if o != dead && alive.contains(&o) => {}
                    _ => why.push(format!("{t} owned by {owner:?}")),
                }
                if ts <= after_ms {
                    why.push(format!("{t} check last seen at {ts}"));
                } else if check.as_ref().is_some_and(|c| c["status"] != "critical") {
                    why.push(format!(
                        "{t} check is {:?}",
                        check.map(|c| c["status"].clone())
                    ));
                }
            }
            if why.is_empty() {
                return Some(s);
            }
            let line = format!("{} · {}", s.summary(), why.join("; "));
            if line != last {
                eprintln!("    not yet: {line}");
                last = line;
            }
            None
        },
    )
}

/// Waits until the fleet targets are balanced over the live nodes (each owns
/// floor(T/N) or ceil(T/N)) and `id` owns at least one; returns that status.
fn wait_rebalanced_to(cluster: &Cluster, id: u64, fleet: &[String]) -> Status {
    let live = cluster.live_nodes();
    let (lo, hi) = (fleet.len() / live.len(), fleet.len().div_ceil(live.len()));
    let mut last = String::new();
    wait_for(
        BOUND,
        &format!("the fleet is balanced over {live:?} and node {id} owns fleet targets"),
        || {
            let s = cluster.status();
            let counts: BTreeMap<u64, usize> = live
                .iter()
                .map(|&n| (n, s.owned_among(n, fleet).len()))
                .collect();
            let total: usize = counts.values().sum();
            if total == fleet.len()
                && counts.values().all(|c| (lo..=hi).contains(c))
                && counts[&id] > 0
            {
                return Some(s);
            }
            let line = format!("{} · fleet owned {counts:?}", s.summary());
            if line != last {
                eprintln!("    not yet: {line}");
                last = line;
            }
            None
        },
    )
}

/// Three nodes watching `n` files as local targets `PREFIX-i` with the rule
/// [`STALE_RULE`] and the webhook channel grouping for `window`, all owned and
/// scraped; `victim` is the follower that owns most of them (`breached`).
struct StaleHerd {
    hook: HttpReceiver,
    files: Files,
    fleet: Vec<String>,
    cluster: Cluster,
    leader: u64,
    victim: u64,
    breached: Vec<String>,
}

fn stale_herd(prefix: &str, n: usize, window: &str) -> StaleHerd {
    let hook = HttpReceiver::start();
    let files = Files::new(&format!("herd-{prefix}-"));
    let fleet = names(prefix, n);
    for t in &fleet {
        files.create(t);
    }
    let cluster = Cluster::start(3, HerdOptions::default());
    phase!("apply {n} local targets with a file_fresh check and the rule {STALE_RULE}");
    cluster.apply(1, &stale_fleet_window(&fleet, &files, &hook, window));
    cluster.wait_until_all_owned_and_scraped(&fleet, FRESH_S, SCRAPE_BOUND);
    let leader = cluster.wait_leader(BOUND);
    let s = cluster.status();
    let (victim, breached) = s.busiest_follower(leader, &fleet);
    assert!(
        !breached.is_empty(),
        "follower {victim} owns fleet targets: {}",
        s.summary()
    );
    StaleHerd {
        hook,
        files,
        fleet,
        cluster,
        leader,
        victim,
        breached,
    }
}

// ---------------------------------------------------------------------------------
// 1. a firing alert survives its owner's kill -9

#[test]
fn takeover_continues_a_firing_alert() {
    phase!("an HTTP receiver, twelve watched files, three nodes");
    // Four per node. The assignment is a deterministic function of names and ids:
    // with these, the node that comes back gets one of its alerts' targets back.
    let StaleHerd {
        hook,
        files,
        fleet,
        mut cluster,
        leader,
        victim,
        breached,
    } = stale_herd("bk", 12, "0s");
    std::thread::sleep(QUIET);
    assert!(
        notes(&hook).iter().all(|n| n.rule != STALE_RULE),
        "nothing is stale yet:\n{}",
        note_lines(&hook)
    );

    phase!("the files of {breached:?} (owned by follower {victim}; leader {leader}) vanish");
    for t in &breached {
        files.remove(t);
    }
    let firing = expect_one_each(&hook, STALE_RULE, &breached, "firing", BOUND, QUIET);
    for (t, n) in &firing {
        eprintln!("    FIRING {t}: key {}", n.key);
        assert_eq!(n.doc["channel"], HOOK, "{}", n.doc);
        assert_eq!(n.doc["alert"]["state"], "firing", "{}", n.doc);
        assert_eq!(
            n.doc["alert"]["transitions"].as_u64(),
            Some(n.transition()),
            "the key's transition is the alert's count: {}",
            n.doc
        );
    }
    let others: Vec<u64> = cluster
        .live_nodes()
        .into_iter()
        .filter(|&id| id != victim)
        .collect();
    for &id in &others {
        for n in firing.values() {
            let a = wait_alert_on(&cluster, id, &n.alert_id, "firing (committed)", |a| {
                state(a) == "firing"
            });
            assert_eq!(transitions(&a), n.transition(), "node {id}: {a}");
        }
    }
    let s = cluster.status();
    assert_eq!(
        s.owned_among(victim, &fleet),
        breached,
        "ownership is stable before the kill: {}",
        s.summary()
    );

    phase!("kill -9 node {victim}, the owner of the firing alerts");
    let killed_at = cluster.kill9(victim);
    let s = wait_taken_over(&cluster, &breached, victim, killed_at);
    let new_owners: BTreeMap<String, u64> = breached
        .iter()
        .map(|t| (t.clone(), s.target(t).and_then(|t| t.owner).unwrap_or(0)))
        .collect();
    eprintln!("    new owners: {new_owners:?}");
    cluster.wait_until_all_owned_and_scraped(&fleet, FRESH_S, SCRAPE_BOUND);
    cluster.expect_live_owners(true);

    phase!("the new owners continue the alerts: still firing, no second FIRING");
    std::thread::sleep(QUIET);
    for (t, n) in &firing {
        let got = notes_of(&hook, STALE_RULE, t, "firing");
        assert_eq!(
            got.len(),
            1,
            "still exactly one FIRING for {t} after the takeover by node {}; the receiver got:\n{}",
            new_owners[t],
            note_lines(&hook)
        );
        assert!(
            notes_of(&hook, STALE_RULE, t, "resolved").is_empty(),
            "no RESOLVED for {t} while its file is missing:\n{}",
            note_lines(&hook)
        );
        for &id in &others {
            let a = alert_by_id(&alerts(&cluster, id), &n.alert_id)
                .unwrap_or_else(|| panic!("node {id} lists the alert of {t} ({})", n.alert_id));
            assert_eq!(state(&a), "firing", "node {id}: {a}");
            assert_eq!(
                transitions(&a),
                n.transition(),
                "no new transition on node {id}: {a}"
            );
        }
    }

    phase!("the files come back: exactly one RESOLVED each, sent by the new owner");
    for t in &breached {
        files.create(t);
    }
    let resolved = expect_one_each(&hook, STALE_RULE, &breached, "resolved", BOUND, QUIET);
    for (t, r) in &resolved {
        let f = &firing[t];
        eprintln!("    RESOLVED {t}: key {}", r.key);
        assert_eq!(r.alert_id, f.alert_id, "the same alert: {}", r.doc);
        assert!(
            r.arrived_ms > killed_at,
            "the RESOLVED of {t} arrived after node {victim} died (from node {})",
            new_owners[t]
        );
        assert_eq!(
            r.transition(),
            f.transition() + 1,
            "the transition count continues across the takeover: firing {}, resolved {}",
            f.key,
            r.key
        );
        assert_eq!(r.doc["alert"]["state"], "resolved", "{}", r.doc);
        for &id in &others {
            let a = wait_alert_on(&cluster, id, &r.alert_id, "resolved", |a| {
                state(a) == "resolved"
            });
            assert_eq!(transitions(&a), r.transition(), "node {id}: {a}");
        }
    }

    phase!("node {victim} comes back, rejoins and gets fleet targets again");
    let seen = notes(&hook).len();
    cluster.restart(victim);
    cluster.wait_formed(BOUND);
    let s = wait_rebalanced_to(&cluster, victim, &fleet);
    let regained: Vec<String> = s
        .owned_among(victim, &fleet)
        .into_iter()
        .filter(|t| breached.contains(t))
        .collect();
    eprintln!(
        "    node {victim} owns {:?}; of the alerts' targets it got back {regained:?}",
        s.owned_among(victim, &fleet)
    );
    cluster.wait_until_all_owned_and_scraped(&fleet, FRESH_S, SCRAPE_BOUND);

    phase!("no further notification for those alerts");
    std::thread::sleep(QUIET);
    let later: Vec<Note> = notes(&hook)
        .into_iter()
        .skip(seen)
        .filter(|n| n.rule == STALE_RULE)
        .collect();
    assert!(
        later.is_empty(),
        "nothing after node {victim} came back; the receiver got:\n{}",
        note_lines(&hook)
    );
    for r in resolved.values() {
        for id in cluster.live_nodes() {
            let a = wait_alert_on(&cluster, id, &r.alert_id, "resolved", |a| {
                state(a) == "resolved"
            });
            assert_eq!(transitions(&a), r.transition(), "node {id}: {a}");
        }
    }

    // The node that comes back had these alerts firing in its own store; where it
    // got one of their targets back, it must go on from the herd's state.
    let again = regained.first().unwrap_or(&breached[0]).clone();
    let owner = cluster
        .status()
        .target(&again)
        .and_then(|t| t.owner)
        .expect("an owner");
    phase!("{again} (now owned by node {owner}) breaks again: one FIRING, the count goes on");
    let before = resolved[&again].transition();
    files.remove(&again);
    hook.wait_for(BOUND, &format!("a second FIRING for {again}"), |_| {
        notes_of(&hook, STALE_RULE, &again, "firing").len() >= 2
    });
    std::thread::sleep(QUIET);
    let fired = notes_of(&hook, STALE_RULE, &again, "firing");
    assert_eq!(
        fired.len(),
        2,
        "one FIRING per firing transition of {again}:\n{}",
        note_lines(&hook)
    );
    assert_eq!(
        fired[1].transition(),
        before + 1,
        "the count continues from the RESOLVED sent by another node: {}",
        fired[1].key
    );
    files.create(&again);
    hook.wait_for(BOUND, &format!("a second RESOLVED for {again}"), |_| {
        notes_of(&hook, STALE_RULE, &again, "resolved").len() >= 2
    });
    std::thread::sleep(QUIET);
    let done = notes_of(&hook, STALE_RULE, &again, "resolved");
    assert_eq!(done.len(), 2, "{}", note_lines(&hook));
    assert_eq!(done[1].transition(), before + 2, "{}", done[1].key);
    let others_later: Vec<Note> = notes(&hook)
        .into_iter()
        .skip(seen)
        .filter(|n| n.rule == STALE_RULE && n.target != again)
        .collect();
    assert!(
        others_later.is_empty(),
        "nothing for the other alerts:\n{}",
        note_lines(&hook)
    );
}

/// Group window of the channel in the handover test: long enough that the owner is
/// killed while its notifications still wait in its outbox (the alerts are seen
/// committed on another node within a few scrapes of 1 s).
const HANDOVER_WINDOW_S: u64 = 10;

/// Waits until node `id` lists a firing alert of `rule` on each of `targets`;
/// returns their ids by target.
fn wait_firing_on(
    cluster: &Cluster,
    id: u64,
    rule: &str,
    targets: &[String],
) -> BTreeMap<String, String> {
    wait_for(
        BOUND,
        &format!("node {id} lists {rule} firing on each of {targets:?}"),
        || {
            let doc = alerts(cluster, id);
            let firing: BTreeMap<String, String> = doc["alerts"]
                .as_array()?
                .iter()
                .filter(|a| a["rule"] == rule && state(a) == "firing")
                .map(|a| {
                    let s = |k: &str| a[k].as_str().unwrap_or_default().to_string();
                    (s("target"), s("id"))
                })
                .filter(|(t, _)| targets.contains(t))
                .collect();
            (firing.len() == targets.len()).then_some(firing)
        },
    )
}

#[test]
fn an_owner_killed_before_delivering_leaves_its_notifications_to_the_new_owner() {
    phase!("an HTTP receiver, nine watched files, three nodes; the channel groups for {HANDOVER_WINDOW_S} s");
    let StaleHerd {
        hook,
        files,
        fleet,
        mut cluster,
        leader,
        victim,
        breached,
    } = stale_herd("ho", 9, &format!("{HANDOVER_WINDOW_S}s"));

    phase!("the files of {breached:?} (owned by node {victim}) vanish; the alerts fire");
    let broken_at = now_ms();
    for t in &breached {
        files.remove(t);
    }
    let ids = wait_firing_on(&cluster, leader, STALE_RULE, &breached);
    eprintln!("    committed firing on node {leader}: {ids:?}");

    phase!("kill -9 node {victim} while its FIRING notifications wait out the group window");
    let killed_at = cluster.kill9(victim);
    assert!(
        notes(&hook).iter().all(|n| n.rule != STALE_RULE),
        "the owner was killed before its group window ended ({} ms after the break, window {HANDOVER_WINDOW_S} s), so nothing may have arrived yet:\n{}",
        killed_at - broken_at,
        note_lines(&hook)
    );
    let s = wait_taken_over(&cluster, &breached, victim, killed_at);
    eprintln!("    taken over: {}", s.summary());

    phase!("the new owners deliver what node {victim} had queued: exactly one FIRING each");
    let bound = BOUND + Duration::from_secs(HANDOVER_WINDOW_S);
    let firing = expect_one_each(&hook, STALE_RULE, &breached, "firing", bound, QUIET);
    for (t, n) in &firing {
        eprintln!(
            "    FIRING {t}: key {} at +{} ms after the kill",
            n.key,
            n.arrived_ms - killed_at
        );
        assert!(
            n.arrived_ms > killed_at,
            "{t}: sent by a survivor: {}",
            n.doc
        );
        assert_eq!(
            n.alert_id, ids[t],
            "the alert node {victim} fired: {}",
            n.doc
        );
        let a = alert_by_id(&alerts(&cluster, leader), &n.alert_id).expect("listed");
        assert_eq!(
            n.transition(),
            transitions(&a),
            "the key of the transition the herd recorded: {a}"
        );
    }

    phase!("node {victim} comes back with those notifications still in its outbox: none goes out again");
    let seen = notes(&hook).len();
    cluster.restart(victim);
    cluster.wait_formed(BOUND);
    wait_rebalanced_to(&cluster, victim, &fleet);
    cluster.wait_until_all_owned_and_scraped(&fleet, FRESH_S, SCRAPE_BOUND);
    std::thread::sleep(QUIET);
    let later: Vec<Note> = notes(&hook)
        .into_iter()
        .skip(seen)
        .filter(|n| n.rule == STALE_RULE)
        .collect();
    assert!(
        later.is_empty(),
        "nothing after node {victim} came back; the receiver got:\n{}",
        note_lines(&hook)
    );
    // Its stale entries are dropped, not kept waiting forever.
    wait_for(BOUND, &format!("node {victim}'s outbox is empty"), || {
        (alerts(&cluster, victim)["outbox"].as_u64() == Some(0)).then_some(())
    });
}

// ---------------------------------------------------------------------------------
// 2. rules select the herd's machines like any target

/// A rule that holds on every live machine: `target.up` (1) above 0.5.
fn machine_rule(name: &str, selector: &str) -> String {
    format!(
        "[[rule]]\nname = \"{name}\"\n{selector}\nmetric = \"target.up\"\nkind = \"range\"\n\
         max = 0.5\nseverity = \"warning\"\nsummary = \"{{{{target}}}} is watched\"\n\n"
    )
}

#[test]
fn rules_apply_to_the_herds_machines() {
    phase!("an HTTP receiver and three nodes");
    let hook = HttpReceiver::start();
    let cluster = Cluster::start(3, HerdOptions::default());

    phase!("a plain local target, two rules on the machines (glob, label), routes default");
    let fleet = vec!["app-1".to_string()];
    let text = [
        local_target("app-1", "1s"),
        machine_rule("machine-by-name", "targets = [\"herd-node-*\"]"),
        machine_rule(
            "machine-by-label",
            "target_labels = { role = \"herd-node\" }",
        ),
        webhook_channel(&hook, "0s"),
        format!("[routes]\ndefault = [\"{HOOK}\"]\n"),
    ]
    .concat();
    cluster.apply(2, &text);
    let s = cluster.wait_until_all_owned_and_scraped(&fleet, FRESH_S, SCRAPE_BOUND);
    let machines: Vec<String> = (1..=3).map(node_target).collect();
    for m in &machines {
        assert!(s.target(m).is_some(), "status lists {m}: {}", s.summary());
    }

    for rule in ["machine-by-name", "machine-by-label"] {
        phase!("{rule}: one FIRING per herd-node-N");
        let got = expect_one_each(
            &hook,
            rule,
            &machines,
            "firing",
            SCRAPE_BOUND,
            Duration::ZERO,
        );
        for (m, n) in &got {
            assert_eq!(n.doc["alert"]["severity"], "warning", "{}", n.doc);
            assert_eq!(
                n.doc["alert"]["summary"],
                format!("{m} is watched"),
                "{}",
                n.doc
            );
            assert_eq!(
                n.transition(),
                n.doc["alert"]["transitions"].as_u64().unwrap_or(0)
            );
        }
    }

    phase!("a machine interval later: still one each, none for app-1, listed on every node");
    std::thread::sleep(MACHINE_QUIET);
    for rule in ["machine-by-name", "machine-by-label"] {
        for m in &machines {
            assert_eq!(
                notes_of(&hook, rule, m, "firing").len(),
                1,
                "exactly one FIRING of {rule} for {m}; the receiver got:\n{}",
                note_lines(&hook)
            );
        }
        assert!(
            notes(&hook)
                .iter()
                .all(|n| !(n.rule == rule && n.target == "app-1")),
            "{rule} does not select app-1:\n{}",
            note_lines(&hook)
        );
        assert!(
            notes(&hook)
                .iter()
                .filter(|n| n.rule == rule)
                .all(|n| n.kind == "firing"),
            "{rule} only fired:\n{}",
            note_lines(&hook)
        );
    }
    for id in cluster.live_nodes() {
        let doc = alerts(&cluster, id);
        for rule in ["machine-by-name", "machine-by-label"] {
            let mut firing: Vec<String> = doc["alerts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|a| a["rule"] == rule && state(a) == "firing")
                .map(|a| a["target"].as_str().unwrap_or_default().to_string())
                .collect();
            firing.sort();
            assert_eq!(firing, machines, "node {id} lists {rule} firing on: {doc}");
        }
    }
}

// ---------------------------------------------------------------------------------
// 3. ack and silence through any node

#[test]
fn ack_and_silence_from_any_node() {
    phase!("an HTTP receiver, three watched files, three nodes");
    let hook = HttpReceiver::start();
    let files = Files::new("herd-alerts-");
    let fleet = names("db", 3);
    for t in &fleet {
        files.create(t);
    }
    let cluster = Cluster::start(3, HerdOptions::default());
    cluster.apply(1, &stale_fleet(&fleet, &files, &hook));
    let s = cluster.wait_until_all_owned_and_scraped(&fleet, FRESH_S, SCRAPE_BOUND);

    let target = fleet[0].clone();
    let a = s
        .target(&target)
        .and_then(|t| t.owner)
        .expect("the target has an owner");
    let rest: Vec<u64> = cluster
        .live_nodes()
        .into_iter()
        .filter(|&id| id != a)
        .collect();
    let (b, c) = (rest[0], rest[1]);

    phase!("{target} (owned by node {a}) loses its file: one FIRING");
    files.remove(&target);
    let firing = expect_one_each(
        &hook,
        STALE_RULE,
        std::slice::from_ref(&target),
        "firing",
        BOUND,
        QUIET,
    );
    let alert_id = firing[&target].alert_id.clone();
    wait_alert_on(&cluster, b, &alert_id, "firing", |a| state(a) == "firing");

    phase!("`herd --node {b} ack {alert_id}`: passed to node {a}; node {c} shows it acked");
    let out = cluster.node(b).cli_ok(&["ack", &alert_id, "--by", "alice"]);
    eprintln!("    {}", out.trim());
    assert!(
        out.contains("acknowledged") && out.contains("alice"),
        "{out}"
    );
    for id in [c, a] {
        let acked = wait_alert_on(&cluster, id, &alert_id, "acked by alice", |a| {
            a["acked_by"] == "alice"
        });
        assert_eq!(
            state(&acked),
            "firing",
            "an ack does not end the alert: {acked}"
        );
    }
    let unknown = cluster.node(b).cli(&["ack", "no-such-alert"]);
    assert!(
        !unknown.status.success(),
        "acking an unknown id through node {b} fails"
    );

    phase!("`herd --node {b} silence add target={target}`: node {c} lists it");
    let selector = format!("target={target}");
    let out = cluster.node(b).cli_ok(&[
        "silence",
        "add",
        &selector,
        "--for",
        "1h",
        "--reason",
        "herd test",
        "--by",
        "alice",
    ]);
    eprintln!("    {}", out.trim());
    let silence_id = out
        .split_whitespace()
        .nth(1)
        .expect("`silence ID on ...`")
        .to_string();
    for id in [c, a] {
        let listed = wait_for(
            BOUND,
            &format!("node {id} lists silence {silence_id}"),
            || {
                let text = cluster.node(id).cli_ok(&["silence", "ls", "--json"]);
                let doc: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
                    panic!("`herd silence ls --json` on node {id} printed no JSON ({e}): {text}")
                });
                doc["silences"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|s| s["id"] == silence_id.as_str())
                    .cloned()
            },
        );
        assert_eq!(listed["selector"], selector.as_str(), "node {id}: {listed}");
        assert_eq!(listed["reason"], "herd test", "node {id}: {listed}");
        assert!(
            listed["until_ms"]
                .as_i64()
                .is_some_and(|u| u > now_ms() + 3_500_000),
            "an hour, on node {id}: {listed}"
        );
    }

    phase!("the file comes back: the owner, node {a}, resolves the alert and notifies no one");
    let before = notes(&hook).len();
    files.create(&target);
    wait_alert_on(&cluster, a, &alert_id, "resolved", |a| {
        state(a) == "resolved"
    });
    std::thread::sleep(QUIET);
    let later: Vec<Note> = notes(&hook).into_iter().skip(before).collect();
    assert!(
        later.is_empty(),
        "the silence made on node {b} mutes node {a}'s RESOLVED; the receiver got:\n{}",
        note_lines(&hook)
    );
    let history = alerts(&cluster, a)["history"].clone();
    let t = history
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["alert_id"] == alert_id.as_str() && t["to"] == "resolved")
        .cloned()
        .unwrap_or_else(|| panic!("node {a}'s history has the resolved transition: {history}"));
    assert!(
        t["suppressed"]
            .as_str()
            .is_some_and(|s| s.contains(&silence_id)),
        "the history names the silence: {t}"
    );
    wait_until(BOUND, &format!("node {c} shows the alert resolved"), || {
        alert_by_id(&alerts(&cluster, c), &alert_id).is_some_and(|a| state(&a) == "resolved")
    });
}

/// Applies `fleet` (one fleet target, `target`) through node 1 and waits until it is
/// owned and scraped; its owner.
fn apply_one(cluster: &Cluster, fleet: &str, target: &str) -> u64 {
    cluster.apply(1, fleet);
    let names = [target.to_string()];
    cluster.wait_until_all_owned_and_scraped(&names, FRESH_S, SCRAPE_BOUND);
    cluster
        .status()
        .target(target)
        .and_then(|t| t.owner)
        .expect("an owner")
}

/// Waits until `target` is owned by a live node other than `dead` that scraped it
/// after `after_ms`; that node.
fn wait_moved(cluster: &Cluster, target: &str, dead: u64, after_ms: i64) -> u64 {
    wait_for(BOUND, "the target owned by a survivor and scraped", || {
        let s = cluster.status();
        let t = s.target(target)?;
        let owner = t
            .owner
            .filter(|o| *o != dead && s.alive_ids().contains(o))?;
        let age = t.last_scrape_age_s?;
        (now_ms() - (age * 1000.0) as i64 > after_ms).then_some(owner)
    })
}

/// The lines of the file a node-side action appends to.
fn action_runs(log: &std::path::Path) -> usize {
    std::fs::read_to_string(log)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

#[test]
fn max_per_hour_counts_action_runs_across_the_herd() {
    let files = Files::new("herd-actions-");
    let log = files.path("runs.log");
    let target = "act-1".to_string();
    files.create(&target);
    let mut cluster = Cluster::start(3, HerdOptions::default());
    let fleet = format!(
        "{}[[rule]]\nname = \"fix\"\ncheck = \"{CHECK}\"\nkind = \"range\"\nfor = \"0s\"\n\
         action = {{ run = {}, on = \"firing\", where = \"node\", max_per_hour = 1 }}\n\n",
        fresh_target(&target, &files),
        herd_tests::toml_str(&format!("echo ran >> {}", log.display()))
    );
    let first = apply_one(&cluster, &fleet, &target);

    phase!("the file vanishes: the alert fires on node {first}, its action runs once");
    files.remove(&target);
    wait_until(BOUND, "the action ran", || action_runs(&log) == 1);
    phase!("the file is back: resolved");
    files.create(&target);
    wait_for(BOUND, "the alert resolved", || {
        let text = cluster.node(first).cli_ok(&["alerts", "--json"]);
        let v: Value = serde_json::from_str(&text).ok()?;
        v["alerts"]
            .as_array()?
            .iter()
            .filter(|a| a["rule"] == "fix")
            .all(|a| a["state"] == "resolved")
            .then_some(())
    });

    phase!("kill -9 node {first}: the target moves; the file vanishes again");
    let killed_at = cluster.kill9(first);
    let second = wait_moved(&cluster, &target, first, killed_at);
    files.remove(&target);
    let refused = wait_for(BOUND, "the second firing's action refused", || {
        cluster
            .node(second)
            .events_of(&target, "action_run")
            .into_iter()
            .filter_map(|e| e["message"].as_str().map(str::to_string))
            .find(|m| m.contains("not run"))
    });
    eprintln!("    node {second}: {refused}");
    assert!(
        refused.contains("in the herd") && refused.contains("max_per_hour = 1"),
        "the herd-wide limit says why: {refused}"
    );
    std::thread::sleep(QUIET);
    assert_eq!(
        action_runs(&log),
        1,
        "node {second} did not run it again (max_per_hour = 1 across the herd)"
    );
}

/// The `log_match` events of `target` in the stores of the live nodes (events are
/// kept by the node that saw them), by line.
fn log_lines(cluster: &Cluster, target: &str) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for id in cluster.live_nodes() {
        for e in cluster.node(id).events_of(target, "log_match") {
            if let Some(m) = e["message"].as_str() {
                let line = m.rsplit(": ").next().unwrap_or(m).to_string();
                *seen.entry(line).or_insert(0) += 1;
            }
        }
    }
    seen
}

fn append(path: &std::path::Path, line: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .expect("the log");
    writeln!(f, "{line}").expect("appending");
}

#[test]
fn a_new_owner_continues_a_log_where_the_last_one_stopped() {
    let files = Files::new("herd-tails-");
    let log = files.path("app.log");
    std::fs::write(&log, "before the herd watched\n").unwrap();
    let target = "tail-1".to_string();
    let mut cluster = Cluster::start(3, HerdOptions::default());
    let fleet = format!(
        "[[target]]\nname = \"{target}\"\ntransport = \"local\"\ninterval = \"1s\"\nchecks = [\n  \
         {{ kind = \"log\", name = \"app\", path = \"{}\", include = [\"ERROR\"] }},\n]\n\n",
        log.display()
    );
    let first = apply_one(&cluster, &fleet, &target);

    phase!("node {first} reads ERROR one; the herd records where it stopped");
    append(&log, "ERROR one");
    wait_for(BOUND, "ERROR one reported", || {
        log_lines(&cluster, &target)
            .contains_key("ERROR one")
            .then_some(())
    });
    // The position goes to the herd within a second of the read.
    std::thread::sleep(Duration::from_secs(2));

    phase!("kill -9 node {first}; ERROR two is written while nobody watches");
    let killed_at = cluster.kill9(first);
    append(&log, "ERROR two");
    let second = wait_moved(&cluster, &target, first, killed_at);
    let seen = wait_for(BOUND, &format!("node {second} reports ERROR two"), || {
        let seen = log_lines(&cluster, &target);
        seen.contains_key("ERROR two").then_some(seen)
    });
    // Node {first}'s own events are out of reach while it is down: a survivor's
    // "ERROR one" would be a line read twice.
    assert_eq!(
        seen.get("ERROR one"),
        None,
        "not read again by node {second}: {seen:?}"
    );
    assert!(!seen.contains_key("before the herd watched"), "{seen:?}");

    phase!("node {first} comes back; whoever owns the target then, nothing is read twice");
    cluster.restart(first);
    append(&log, "ERROR three");
    wait_for(
        BOUND,
        "ERROR three reported, node {first} answering",
        || {
            let seen = log_lines(&cluster, &target);
            (seen.contains_key("ERROR three") && seen.contains_key("ERROR one")).then_some(())
        },
    );
    std::thread::sleep(QUIET);
    let seen = log_lines(&cluster, &target).into_iter().collect::<Vec<_>>();
    assert_eq!(
        seen,
        [
            ("ERROR one".to_string(), 1),
            ("ERROR three".to_string(), 1),
            ("ERROR two".to_string(), 1)
        ],
        "each line once, none skipped (before: {:?})",
        seen
    );
}

// ---------------------------------------------------------------------------------
// 7. a herd mid-upgrade: a node of the previous release beside two of this build

/// How long a resolved alert is kept before it is forgotten, on the nodes of this
/// build (`[store] resolved_retention`; the previous release has no such key).
const RESOLVED_RETENTION: &str = "3s";

/// Past [`RESOLVED_RETENTION`], the rules' 1 s tick and a Raft write.
const FORGET_WAIT: Duration = Duration::from_secs(8);

/// The `herd_state` of node `id`'s status: alerts kept, alerts forgotten and the
/// herd's command level, as that node applied the herd's state.
fn herd_state(cluster: &Cluster, id: u64) -> (u64, u64, u64) {
    let s = cluster.status_of(id);
    let h = &s.raw["herd_state"];
    let n = |k: &str| {
        h[k].as_u64()
            .unwrap_or_else(|| panic!("no herd_state.{k}: {}", s.raw))
    };
    (n("alerts"), n("forgotten_alerts"), n("command_level"))
}

/// Waits until the receiver got a `kind` notification of every one of `targets`
/// whose key carries transition `n`, watches [`QUIET`], and asserts that no key
/// arrived twice and that each target got exactly `n` notifications of the rule.
fn expect_transition(hook: &HttpReceiver, targets: &[String], kind: &str, n: u64) {
    hook.wait_for(
        BOUND,
        &format!("{kind} notifications with transition {n} for {targets:?}"),
        |_| {
            targets.iter().all(|t| {
                notes_of(hook, STALE_RULE, t, kind)
                    .iter()
                    .any(|x| x.transition() == n)
            })
        },
    );
    std::thread::sleep(QUIET);
    let all = notes(hook);
    let mut keys = std::collections::BTreeSet::new();
    for x in &all {
        assert!(
            keys.insert(x.key.clone()),
            "the key {} arrived twice; the receiver got:\n{}",
            x.key,
            note_lines(hook)
        );
    }
    for t in targets {
        let of_t: Vec<u64> = all
            .iter()
            .filter(|x| x.rule == STALE_RULE && &x.target == t)
            .map(Note::transition)
            .collect();
        assert_eq!(
            of_t,
            (1..=n).collect::<Vec<_>>(),
            "{t}: one notification per transition, in order; the receiver got:\n{}",
            note_lines(hook)
        );
    }
}

/// Every file of `fleet` vanishes, then comes back: a FIRING with transition
/// `first` and a RESOLVED with the next for each target, once each.
fn episode(hook: &HttpReceiver, files: &Files, fleet: &[String], first: u64) {
    for t in fleet {
        files.remove(t);
    }
    expect_transition(hook, fleet, "firing", first);
    for t in fleet {
        files.create(t);
    }
    expect_transition(hook, fleet, "resolved", first + 1);
}

/// Design invariant 4 across a rolling upgrade, and the herd state's bound: with a
/// node of the previous release in the herd (it applies command level 1 only), the
/// nodes of this build do not propose the level-2 command that forgets resolved
/// alerts, and the old node keeps applying the log, scraping and notifying; once it
/// runs this build too, resolved alerts leave the herd's state (their counts kept),
/// and later episodes — on the same owner and after a takeover — notify under keys
/// never used before.
#[test]
fn a_herd_mid_upgrade_keeps_its_older_node_working_and_forgets_only_once_all_are_upgraded() {
    let Some(previous) = std::env::var_os("HERD_PREVIOUS_BIN").map(std::path::PathBuf::from) else {
        eprintln!(
            "HERD_PREVIOUS_BIN is unset (scripts/test builds the previous release and sets it): nothing to run"
        );
        return;
    };
    assert!(
        previous.is_file(),
        "HERD_PREVIOUS_BIN={} is not a file",
        previous.display()
    );
    phase!("an HTTP receiver, six watched files; nodes 1 and 2 of this build, node 3 of the previous release");
    let hook = HttpReceiver::start();
    let files = Files::new("herd-up-");
    let fleet = names("up", 6);
    for t in &fleet {
        files.create(t);
    }
    let store = format!("resolved_retention = \"{RESOLVED_RETENTION}\"\n");
    let base = HerdOptions::default().store_extra(store.clone());
    let started = vec![
        herd_tests::Herd::start(base.clone().id(1)),
        herd_tests::Herd::start(base.clone().id(2)),
        herd_tests::Herd::start(HerdOptions::default().id(3).bin(Some(previous.clone()))),
    ];
    let mut cluster = Cluster::from_started(started, base);
    cluster.init(1);
    cluster.join(2, 1);
    cluster.join(3, 1);
    cluster.wait_formed(SCRAPE_BOUND);
    cluster.apply(1, &stale_fleet(&fleet, &files, &hook));
    cluster.wait_until_all_owned_and_scraped(&fleet, FRESH_S, SCRAPE_BOUND);
    let s = cluster.status_of(1);
    let level_of = |id: u64| {
        s.raw["nodes"]
            .as_array()
            .and_then(|ns| ns.iter().find(|n| n["id"] == id))
            .and_then(|n| n["command_level"].as_u64())
    };
    assert_eq!(
        level_of(3),
        Some(1),
        "the previous release says no level: {}",
        s.raw
    );
    // This build's level (`COMMAND_LEVEL`).
    assert_eq!(level_of(1), Some(3), "{}", s.raw);
    let old_owns = s.owned_among(3, &fleet);
    assert!(
        !old_owns.is_empty(),
        "node 3 (previous release) owns targets: {}",
        s.summary()
    );

    phase!("mixed builds: every file vanishes, then comes back");
    episode(&hook, &files, &fleet, 1);
    std::thread::sleep(FORGET_WAIT);
    for id in [1, 2] {
        let (alerts, forgotten, level) = herd_state(&cluster, id);
        assert_eq!(level, 1, "node {id}: node 3 applies level 1 only");
        assert_eq!(
            (alerts, forgotten),
            (fleet.len() as u64, 0),
            "node {id}: with an older member the herd keeps its resolved alerts"
        );
    }
    // The older node applied everything it was sent: it answers with the same map.
    let (v1, v3) = (
        cluster.status_of(1).raw["ownership_version"].clone(),
        cluster.status_of(3).raw["ownership_version"].clone(),
    );
    assert_eq!(v1, v3, "node 3 follows the herd's log");

    phase!("node 3 is upgraded in place (same data dir) to this build");
    cluster.node_mut(3).switch_build(None, store);
    cluster.restart(3);
    cluster.wait_formed(SCRAPE_BOUND);
    let mut last = String::new();
    wait_for(BOUND, "every member records command level 3", || {
        let levels: Vec<(u64, u64, u64)> = (1..=3).map(|id| herd_state(&cluster, id)).collect();
        if levels.iter().all(|l| l.2 == 3) {
            return Some(());
        }
        let line = format!("{levels:?} {}", cluster.status_of(1).raw["nodes"]);
        if line != last {
            eprintln!("    not yet: (alerts, forgotten, level) per node {line}");
            last = line;
        }
        None
    });
    cluster.wait_until_all_owned_and_scraped(&fleet, FRESH_S, SCRAPE_BOUND);
    // Every node's herd state holds no alert and a count for each target's.
    let all_forgotten = |what: &str| {
        wait_for(SCRAPE_BOUND, what, || {
            (1..=3)
                .all(|id| {
                    let (alerts, forgotten, _) = herd_state(&cluster, id);
                    alerts == 0 && forgotten == fleet.len() as u64
                })
                .then_some(())
        })
    };
    // What the owners forgot while node 3 could not: held by nodes 1 and 2 until
    // the herd's level let it go; node 3's own, forgotten again by this build.
    all_forgotten(
        "the alerts resolved in mixed builds leave the herd's state once every member forgets",
    );

    phase!("all on this build: a second episode, forgotten once resolved");
    episode(&hook, &files, &fleet, 3);
    all_forgotten("every node's herd state forgot the resolved alerts");

    phase!(
        "a third episode after the owner's kill -9: the new owner counts on from the herd's counts"
    );
    let s = cluster.status();
    let leader = cluster.wait_leader(BOUND);
    let (victim, moved) = s.busiest_follower(leader, &fleet);
    assert!(
        !moved.is_empty(),
        "follower {victim} owns targets: {}",
        s.summary()
    );
    let at = cluster.kill9(victim);
    for t in &moved {
        files.remove(t);
    }
    wait_taken_over(&cluster, &moved, victim, at);
    expect_transition(&hook, &moved, "firing", 5);
}
