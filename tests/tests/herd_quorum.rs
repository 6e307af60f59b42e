//! Losing the herd's quorum is said out loud: three real `herd node` processes, two
//! of them killed; the survivor cannot scrape or notify through its outbox (no
//! majority), so it sends one notice of its own straight to the channel of
//! `routes.quorum_loss` (a real HTTP receiver), records an event and shows it in
//! `herd status`. When a majority is back, it says so, and no second notice goes out.
//!
//! The bounds only catch hangs; no test asserts a timing.
use std::time::Duration;

use herd_tests::cluster::{node_target, Cluster};
use herd_tests::{local_target, phase, wait_for, HerdOptions, HttpReceiver, Received};
use serde_json::Value;

const BOUND: Duration = Duration::from_secs(30);
/// After the notice arrived, how long to watch for a second one.
const QUIET: Duration = Duration::from_secs(4);

fn quorum_notes(reqs: &[Received]) -> Vec<Value> {
    herd_tests::receiver::herd_notes(reqs)
        .into_iter()
        .filter(|n| n["alert"]["rule"] == "quorum_lost")
        .collect()
}

#[test]
fn a_node_that_loses_quorum_says_so_once() {
    let hook = HttpReceiver::start();
    let mut cluster = Cluster::start(3, HerdOptions::default());
    let fleet = format!(
        "{}[[channel]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\ngroup_window = \"0s\"\n\n\
         [routes]\nquorum_loss = [\"hook\"]\n",
        local_target("t-1", "1s"),
        hook.url("/hook")
    );
    cluster.apply(1, &fleet);
    let status = cluster.status_of(1);
    assert_eq!(status.raw["quorum_lost"], "", "{}", status.raw);

    phase!("nodes 2 and 3 die: node 1 is alone, without a majority");
    cluster.kill9(2);
    cluster.kill9(3);
    let reqs = hook.wait_for(BOUND, "the quorum loss notice of node 1", |r| {
        !quorum_notes(r).is_empty()
    });
    let note = &quorum_notes(&reqs)[0];
    assert_eq!(note["alert"]["target"], node_target(1).as_str(), "{note}");
    assert_eq!(note["kind"], "firing", "{note}");
    let text = note["alert"]["description"].as_str().unwrap_or_default();
    assert!(text.contains("hears 1 of 3 voters"), "{note}");
    let node1 = cluster.node(1);
    let lost = wait_for(BOUND, "node 1's status says the quorum is lost", || {
        let v = node1.status_json();
        let q = v["quorum_lost"].as_str()?.to_string();
        (!q.is_empty()).then_some(q)
    });
    assert!(lost.contains("lost the herd's quorum"), "{lost}");
    // Events are written in the store's next batch, a moment after the status
    // changes: wait for it, then check it stays one.
    wait_for(BOUND, "a quorum_lost event", || {
        (!node1.events_of(&node_target(1), "quorum_lost").is_empty()).then_some(())
    });
    std::thread::sleep(QUIET);
    assert_eq!(
        quorum_notes(&hook.requests()).len(),
        1,
        "one notice per loss, not one per check"
    );
    assert_eq!(node1.events_of(&node_target(1), "quorum_lost").len(), 1);

    phase!("node 2 is back: a majority again, said once, and no second notice");
    cluster.restart(2);
    let node1 = cluster.node(1);
    wait_for(
        BOUND,
        "node 1's status no longer says the quorum is lost",
        || (node1.status_json()["quorum_lost"] == "").then_some(()),
    );
    wait_for(BOUND, "a quorum_regained event", || {
        (node1.events_of(&node_target(1), "quorum_regained").len() == 1).then_some(())
    });
    std::thread::sleep(QUIET);
    assert_eq!(quorum_notes(&hook.requests()).len(), 1);
}
