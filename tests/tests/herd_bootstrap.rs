//! One herd, however its nodes are started: real `herd node` processes started
//! the way one systemd unit or container image starts them — the same herd.toml
//! template (`[cluster] peers`, `bootstrap_expect`, a shared `secret_file`) and
//! the same `--fleet` — form one herd by themselves, with nothing typed.
//!
//! The bounds only catch hangs; no test asserts a timing.
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use herd_tests::cluster::{Cluster, FORM_TIMEOUT};
use herd_tests::{free_port, local_target, phase, wait_for, Herd, HerdOptions};

/// Repetitions of the start-together test (the issue asks for 20).
const REPETITIONS: usize = 20;
/// Longest random wait between two starts in that test.
const MAX_START_DELAY_MS: u64 = 1500;
/// Hang catcher for a rejoin or a late join.
const BOUND: Duration = Duration::from_secs(30);

const SECRET: &str = "bootstrap-test-herd-secret-0123456789";

fn fleet() -> String {
    (1..=4)
        .map(|i| local_target(&format!("t-{i}"), "2s"))
        .collect()
}

fn fleet_names() -> Vec<String> {
    (1..=4).map(|i| format!("t-{i}")).collect()
}

/// The one template every node is started from: the herd's members (all of
/// `ports`), how many to wait for, the shared secret file.
fn template(secret: &Path, ports: &[u16], expect: usize) -> HerdOptions {
    HerdOptions::default()
        .fleet(fleet())
        .no_fleet_wait()
        .extra_toml(cluster_toml(secret, ports, expect))
}

fn cluster_toml(secret: &Path, ports: &[u16], expect: usize) -> String {
    let peers: Vec<String> = ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    format!(
        "[cluster]\nsecret_file = \"{}\"\npeers = [{}]\nbootstrap_expect = {expect}\n",
        secret.display(),
        peers.join(", ")
    )
}

fn secret_file(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("herd-secret");
    std::fs::write(&path, format!("{SECRET}\n")).unwrap();
    path
}

fn start(base: &HerdOptions, id: u64, port: u16) -> Herd {
    Herd::start(base.clone().id(id).port(port))
}

/// Waits until every running node of `cluster` reports the same herd id, the
/// members `members`, a leader, and every fleet target owned once by a member;
/// returns the herd id.
fn wait_one_herd(cluster: &Cluster, members: &BTreeSet<u64>) -> String {
    cluster.wait_formed(FORM_TIMEOUT);
    let names = fleet_names();
    wait_for(
        BOUND,
        "one herd id on every node, the fleet applied and owned",
        || {
            let mut ids = BTreeSet::new();
            for id in cluster.live_nodes() {
                let s = cluster.try_status(id)?;
                if &s.node_ids() != members || s.spec_version == 0 {
                    return None;
                }
                if !s.ownership_problems(&names, false).is_empty() {
                    return None;
                }
                ids.insert(s.raw["herd_id"].as_str()?.to_string());
            }
            match ids.into_iter().collect::<Vec<_>>()[..] {
                [ref id] if !id.is_empty() => Some(id.clone()),
                _ => None,
            }
        },
    )
}

#[test]
fn nodes_started_from_one_template_form_one_herd() {
    let tmp = tempfile::tempdir().unwrap();
    let secret = secret_file(tmp.path());
    let seed: u64 = herd_tests::now_ms() as u64;
    eprintln!("    seed {seed} (start delays)");
    let mut rng = seed;
    let mut next_delay = || {
        // xorshift: enough for start delays, and the seed replays them.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        Duration::from_millis(rng % MAX_START_DELAY_MS)
    };
    let members: BTreeSet<u64> = [1, 2, 3].into();
    let mut herd_ids = BTreeSet::new();
    for round in 1..=REPETITIONS {
        phase!("round {round}: three nodes from one template, started apart");
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let base = template(&secret, &ports, 0);
        // Started in a random order with random pauses, as a fleet's units do.
        let mut order = [1u64, 2, 3];
        let shift = (next_delay().as_millis() % 3) as usize;
        order.rotate_left(shift);
        let mut started = Vec::new();
        for id in order {
            std::thread::sleep(next_delay());
            started.push(start(&base, id, ports[(id - 1) as usize]));
        }
        let cluster = Cluster::from_started(started, base);
        let herd = wait_one_herd(&cluster, &members);
        let s = cluster.status();
        eprintln!("    round {round}: herd {herd}: {}", s.summary());
        assert!(
            herd_ids.insert(herd.clone()),
            "herd id {herd} was made twice"
        );
    }
}

/// Three nodes from one template (the herd secret in `dir`) formed into one herd:
/// the cluster, its members and its herd id.
fn three_formed(dir: &Path) -> (Cluster, BTreeSet<u64>, String) {
    let secret = secret_file(dir);
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let base = template(&secret, &ports, 0);
    phase!("three nodes form their herd");
    let started = (1..=3).map(|id| start(&base, id, ports[id as usize - 1]));
    let cluster = Cluster::from_started(started.collect(), base);
    let members: BTreeSet<u64> = [1, 2, 3].into();
    let herd = wait_one_herd(&cluster, &members);
    (cluster, members, herd)
}

#[test]
fn a_node_whose_data_dir_was_wiped_rejoins_by_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut cluster, members, herd) = three_formed(tmp.path());

    phase!("node 3 dies and loses its data dir");
    cluster.kill9(3);
    let data = cluster.node(3).data_dir();
    std::fs::remove_dir_all(&data).unwrap();
    assert!(!data.exists());

    phase!("node 3 starts again with the same config, and nothing typed");
    cluster.restart(3);
    let again = wait_one_herd(&cluster, &members);
    assert_eq!(again, herd, "node 3 is back in the same herd");
    let s = cluster.status_of(3);
    assert_eq!(s.raw["bootstrap"].as_str(), Some(""), "{}", s.raw);
    assert!(
        cluster.node(3).data_dir().join("raft.redb").exists(),
        "node 3 keeps the herd's log again"
    );
}

#[test]
fn a_member_restored_from_its_backup_rejoins_with_its_history() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut cluster, members, herd) = three_formed(tmp.path());
    // What node 3 holds in its own store: `target.up` times of every target.
    let names = fleet_names();
    let rt = herd_tests::bench::client_runtime();
    let local = |cluster: &Cluster| -> Vec<(String, i64)> {
        let addr = cluster.node(3).addr();
        let m = rt
            .block_on(herd_tests::bench::local_samples(
                &addr,
                None,
                &names,
                0,
                herd_tests::now_ms(),
            ))
            .unwrap_or_default();
        m.into_iter()
            .flat_map(|(t, ts)| ts.into_iter().map(move |x| (t.clone(), x)))
            .collect()
    };
    let held = wait_for(BOUND, "node 3 has stored a few scrapes", || {
        let v = local(&cluster);
        (v.len() >= 2).then_some(v)
    });

    phase!(
        "herd backup of node 3 ({} scrapes in its store)",
        held.len()
    );
    let file = tmp.path().join("node-3.backup");
    let out = cluster
        .node(3)
        .cli(&["backup", "--out", file.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");

    phase!("node 3 dies and loses its data dir; restored from the backup");
    cluster.kill9(3);
    let data = cluster.node(3).data_dir();
    std::fs::remove_dir_all(&data).unwrap();
    let out = cluster.node(3).cli(&[
        "restore",
        file.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{out:?}");
    assert!(
        said.contains("other voters (1, 2, 3)") && said.contains("rejoins as itself"),
        "a member of a larger herd gets its store back, not its vote: {said}"
    );
    assert!(
        data.join("herd.redb").exists() && !data.join("raft.redb").exists(),
        "the store is restored, the Raft file is not"
    );

    phase!("node 3 starts: back in the same herd, with its history");
    cluster.restart(3);
    let again = wait_one_herd(&cluster, &members);
    assert_eq!(
        again, herd,
        "node 3 is back in the same herd, not a second one"
    );
    let now = local(&cluster);
    let missing: Vec<&(String, i64)> = held.iter().filter(|x| !now.contains(x)).collect();
    assert!(
        missing.is_empty(),
        "node 3's own store holds every scrape it held before the backup; missing: {missing:?}"
    );
}

#[test]
fn five_nodes_form_with_bootstrap_expect_three_and_two_late_nodes_join() {
    let tmp = tempfile::tempdir().unwrap();
    let secret = secret_file(tmp.path());
    let ports: Vec<u16> = (0..5).map(|_| free_port()).collect();
    let base = template(&secret, &ports, 3);

    phase!("three of the five nodes start: that is enough");
    let started = (1..=3).map(|id| start(&base, id, ports[id as usize - 1]));
    let mut cluster = Cluster::from_started(started.collect(), base.clone());
    let herd = wait_one_herd(&cluster, &[1, 2, 3].into());

    phase!("the two late nodes join by themselves");
    for id in [4u64, 5] {
        cluster.add_started(start(&base, id, ports[id as usize - 1]));
    }
    let all: BTreeSet<u64> = (1..=5).collect();
    assert_eq!(wait_one_herd(&cluster, &all), herd);
    let s = cluster.status();
    let voters = s.nodes.iter().filter(|n| n.voter).count();
    assert_eq!(voters, 5, "the first five nodes vote: {}", s.summary());
}

#[test]
fn a_node_with_peers_never_makes_itself_a_herd_of_one() {
    let tmp = tempfile::tempdir().unwrap();
    let secret = secret_file(tmp.path());
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let base = template(&secret, &ports, 0);

    phase!("one node of three starts: it waits, and says so");
    let node = start(&base, 1, ports[0]);
    let status = wait_for(BOUND, "the node says what it waits for", || {
        let v = node.status_json();
        let b = v["bootstrap"].as_str()?.to_string();
        b.contains("waiting for peers: 1 of 3").then_some(v)
    });
    assert_eq!(status["spec_version"], 0, "{status}");
    assert_eq!(status["herd_id"], "", "{status}");

    phase!("`herd apply` there fails with a clear error, and makes no herd");
    let path = node.write_file("fleet", &fleet());
    let out = node.cli(&["apply", &path.display().to_string()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cluster.peers") && stderr.contains("not in the herd yet"),
        "{stderr}"
    );
    let status = node.status_json();
    assert_eq!(status["herd_id"], "", "{status}");
    assert_eq!(status["spec_version"], 0, "{status}");
    assert!(
        node.log()
            .contains("the fleet spec waits for the herd to form")
            || node.log().contains("herd bootstrap"),
        "the node logs its progress:\n{}",
        node.log_tail(20)
    );
}

#[test]
fn a_node_pointed_at_another_herd_says_so_naming_both_herds() {
    let tmp = tempfile::tempdir().unwrap();
    let secret = secret_file(tmp.path());
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();

    phase!("herd A: nodes 1 and 2 from their template");
    let base = template(&secret, &ports[..2], 0);
    let started = (1..=2).map(|id| start(&base, id, ports[id as usize - 1]));
    let a = Cluster::from_started(started.collect(), base);
    let herd_a = wait_one_herd(&a, &[1, 2].into());

    phase!("herd B: node 3 alone, same secret file, made by hand");
    let mut b = Herd::start(
        HerdOptions::default()
            .id(3)
            .port(ports[2])
            .extra_toml(format!(
                "[cluster]\nsecret_file = \"{}\"\n",
                secret.display()
            )),
    );
    b.cli_ok(&["cluster", "init"]);
    let herd_b = wait_for(BOUND, "herd B's id", || {
        let id = b.status_json()["herd_id"].as_str()?.to_string();
        (!id.is_empty()).then_some(id)
    });
    assert_ne!(herd_a, herd_b);
    eprintln!("    herd A {herd_a}, herd B {herd_b}");

    phase!("node 3 restarted with herd A's peers in its config");
    b.reconfigure(cluster_toml(&secret, &ports, 0));
    b.restart();
    let named = |text: &str| text.contains(&herd_a) && text.contains(&herd_b);
    let said = wait_for(BOUND, "node 3 says it is pointed at another herd", || {
        let v = b.status_json();
        let refusals = v["refusals"].as_array()?.clone();
        refusals
            .iter()
            .filter_map(|r| r.as_str())
            .find(|r| named(r))
            .map(str::to_string)
    });
    eprintln!("    node 3 says: {said}");
    assert!(
        b.log().lines().any(named),
        "node 3's log names both herds:\n{}",
        b.log_tail(20)
    );
    let heard = wait_for(BOUND, "node 1 reports the call from another herd", || {
        let v = a.node(1).status_json();
        let refusals = v["refusals"].as_array()?.clone();
        refusals
            .iter()
            .filter_map(|r| r.as_str())
            .find(|r| r.contains("another herd") && named(r))
            .map(str::to_string)
    });
    eprintln!("    node 1 says: {heard}");

    phase!("neither herd changed");
    assert_eq!(a.status().node_ids(), [1, 2].into());
    assert_eq!(b.status_json()["herd_id"], herd_b.as_str());
}
