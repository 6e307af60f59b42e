//! A lease blip: a node that stops hearing a majority for a few hundred ms stops
//! acting at once but keeps its SSH sessions and its alert state for the park
//! grace, and resumes without reconnecting. Three real `herd node` processes, SSH
//! targets on a real sshd; the blip is made by stopping the two other nodes
//! (SIGSTOP) for 1.3 s, so the node keeps its targets (nobody could move them).
//!
//! The bounds only catch hangs; no test asserts a timing.
use std::time::Duration;

use herd_tests::cluster::Cluster;
use herd_tests::process::signal;
use herd_tests::{phase, ssh_target, wait_for, HerdOptions, Sshd};

const BOUND: Duration = Duration::from_secs(30);
const TARGETS: usize = 6;

#[test]
fn a_lease_blip_parks_the_targets_and_keeps_the_sessions() {
    let sshd = Sshd::start();
    let cluster = Cluster::start(3, HerdOptions::with_sshd(&sshd));
    let names: Vec<String> = (1..=TARGETS).map(|i| format!("s-{i}")).collect();
    let fleet: String = names
        .iter()
        .map(|n| ssh_target(n, &sshd.address(), "1s"))
        .collect();
    cluster.apply(1, &fleet);
    cluster.wait_until_all_owned_and_scraped(&names, 5.0, BOUND);

    // The node with the most SSH targets goes through the blip.
    let status = cluster.status();
    let (node, owned) = cluster
        .ids()
        .into_iter()
        .map(|id| (id, status.owned_among(id, &names)))
        .max_by_key(|(_, o)| o.len())
        .expect("three nodes");
    assert!(!owned.is_empty(), "{}", status.summary());
    let herd = cluster.node(node);
    let sessions = wait_for(BOUND, "one SSH session per owned target", || {
        let open = herd.metric("herd_ssh_sessions_open")?;
        (open as usize == owned.len()).then_some(open)
    });
    let connects = herd.metric("herd_ssh_connects_total").expect("connects");
    let scrapes = herd.metric("herd_scrapes_total").expect("scrapes");
    eprintln!("    node {node} owns {owned:?}: {sessions} sessions, {connects} connects");

    phase!("the two other nodes stop for 1.3 s: node {node} hears no majority");
    let others: Vec<i32> = cluster
        .ids()
        .into_iter()
        .filter(|id| *id != node)
        .map(|id| cluster.node(id).pid().expect("running"))
        .collect();
    for pid in &others {
        signal(*pid, libc::SIGSTOP);
    }
    wait_for(BOUND, &format!("node {node} to lose its lease"), || {
        (herd.metric("herd_lease_valid")? == 0.0).then_some(())
    });
    let fenced_scrapes = herd.metric("herd_scrapes_total").expect("scrapes");
    std::thread::sleep(Duration::from_millis(700));
    let still_fenced = herd.metric("herd_lease_valid");
    let after_wait = herd.metric("herd_scrapes_total").expect("scrapes");
    for pid in &others {
        signal(*pid, libc::SIGCONT);
    }
    if still_fenced == Some(0.0) {
        assert_eq!(
            after_wait, fenced_scrapes,
            "no scrape runs while the lease is lost"
        );
    }

    phase!("the lease is back: the same sessions, no reconnect, scrapes resume");
    wait_for(BOUND, &format!("node {node}'s lease valid again"), || {
        (herd.metric("herd_lease_valid")? == 1.0).then_some(())
    });
    wait_for(BOUND, "scrapes resume", || {
        (herd.metric("herd_scrapes_total")? > after_wait.max(scrapes)).then_some(())
    });
    let log = herd.log();
    assert!(log.contains("lease lost"), "{}", herd.log_tail(30));
    assert!(log.contains("lease valid again"), "{}", herd.log_tail(30));
    assert_eq!(
        herd.metric("herd_ssh_connects_total"),
        Some(connects),
        "a blip opens no new session"
    );
    assert_eq!(herd.metric("herd_ssh_reconnects_total"), Some(0.0));
    assert_eq!(herd.metric("herd_ssh_sessions_open"), Some(sessions));
    let after = cluster.status();
    assert_eq!(
        after.owned_among(node, &names),
        owned,
        "nobody moved the targets: {}",
        after.summary()
    );
}
