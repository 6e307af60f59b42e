//! A real herd in one process: three nodes, each with its own redb store in a
//! temp dir and a real tonic server on a free loopback port.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use openraft::{BasicNode, ServerState};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

use super::{ClusterConfig, ClusterNode};
use crate::cluster::types::{Command, NodeId};

/// Upper bound of every wait in these tests.
const BOUND: Duration = Duration::from_secs(10);

struct Running {
    node: ClusterNode,
    addr: String,
    dir: PathBuf,
    cancel: CancellationToken,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
}

async fn bind(addr: &str) -> TcpListener {
    // Rebinding the port of a stopped node: retry briefly.
    let started = Instant::now();
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) if started.elapsed() < Duration::from_secs(3) => {
                eprintln!("bind {addr}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("bind {addr}: {e}"),
        }
    }
}

/// The herd secret every node of these tests holds (cluster.secret_file).
const TEST_SECRET: &str = "in-process-herd-secret-0123456789";

async fn spawn(id: NodeId, listener: TcpListener, dir: &Path) -> Running {
    let addr = listener.local_addr().unwrap().to_string();
    std::fs::create_dir_all(dir).unwrap();
    let secret_file = dir.join("test-secret");
    std::fs::write(&secret_file, TEST_SECRET).unwrap();
    let config = ClusterConfig {
        secret_file: Some(secret_file),
        ..ClusterConfig::default()
    };
    let node = ClusterNode::start(id, addr.clone(), dir, config)
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    // Beats and elections, as a running node has them (elections are started by
    // cluster::election only: openraft's own timer is off).
    tokio::spawn(node.beats(Duration::from_millis(200), cancel.clone()));
    let stop = cancel.clone();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(node.service())
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                stop.cancelled().await
            }),
    );
    Running {
        node,
        addr,
        dir: dir.to_path_buf(),
        cancel,
        server,
    }
}

/// Stops a node's Raft and its server (its connections close).
async fn stop(r: Running) -> (String, PathBuf) {
    r.node.shutdown().await.unwrap();
    r.cancel.cancel();
    let mut server = r.server;
    if tokio::time::timeout(Duration::from_secs(3), &mut server)
        .await
        .is_err()
    {
        server.abort();
    }
    (r.addr, r.dir)
}

/// Polls `f` until it holds; returns how long that took.
async fn wait_until(what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !f() {
        assert!(started.elapsed() < BOUND, "{what}: not within {BOUND:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    started.elapsed()
}

/// The leader all of `nodes` agree on, if they do and it is among them.
fn agreed_leader(nodes: &[&Running]) -> Option<NodeId> {
    let leader = nodes[0].node.leader()?;
    let all_agree = nodes.iter().all(|r| r.node.leader() == Some(leader));
    let leads = nodes
        .iter()
        .any(|r| r.node.id() == leader && r.node.metrics().borrow().state == ServerState::Leader);
    (all_agree && leads).then_some(leader)
}

fn members(nodes: &[(NodeId, &str)]) -> BTreeMap<NodeId, BasicNode> {
    nodes
        .iter()
        .map(|(id, addr)| (*id, BasicNode::new(*addr)))
        .collect()
}

fn spec(text: &str) -> Command {
    Command::ApplySpec {
        text: text.into(),
        source: "fleet.toml".into(),
    }
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_elect_forward_fail_over_and_catch_up() {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        let listener = bind("127.0.0.1:0").await;
        nodes.push(Some(
            spawn(id, listener, &tmp.path().join(format!("n{id}"))).await,
        ));
    }
    let all: Vec<(NodeId, String)> = nodes
        .iter()
        .map(|r| {
            let r = r.as_ref().unwrap();
            (r.node.id(), r.addr.clone())
        })
        .collect();
    let all_ref: Vec<(NodeId, &str)> = all.iter().map(|(i, a)| (*i, a.as_str())).collect();

    // Init on node 1 with all three as voters → a leader.
    let started = Instant::now();
    let n1 = nodes[0].as_ref().unwrap();
    assert!(n1.node.init(members(&all_ref)).await.unwrap());
    assert!(
        !n1.node.init(members(&all_ref)).await.unwrap(),
        "second init is a no-op"
    );
    wait_until("first leader", || {
        let live: Vec<&Running> = nodes.iter().flatten().collect();
        agreed_leader(&live).is_some()
    })
    .await;
    let first_election = started.elapsed();
    let live: Vec<&Running> = nodes.iter().flatten().collect();
    let leader = agreed_leader(&live).unwrap();
    println!("leader {leader} elected {first_election:?} after init");

    // A write on a follower is forwarded to the leader and replicated everywhere.
    let follower = live.iter().find(|r| r.node.id() != leader).unwrap();
    let text = "[[target]]\nname = \"web-1\"\ntransport = \"local\"\n";
    let r = follower.node.write(spec(text)).await.unwrap();
    assert_eq!(r.version, 1);
    for r in &live {
        let st = r.node.state();
        wait_until("spec v1 everywhere", || {
            let s = st.borrow();
            s.spec_version == 1 && s.spec_text == text
        })
        .await;
    }

    // Ownership, proposed on the other follower.
    let other = live
        .iter()
        .find(|r| r.node.id() != leader && r.node.id() != follower.node.id())
        .unwrap();
    let owners: BTreeMap<String, NodeId> = [("web-1".to_string(), other.node.id())]
        .into_iter()
        .collect();
    let r = other
        .node
        .write(Command::SetOwnership {
            owners: owners.clone(),
            reason: "test".into(),
        })
        .await
        .unwrap();
    assert_eq!(r.version, 1);
    for r in &live {
        let st = r.node.state();
        wait_until("ownership everywhere", || {
            let s = st.borrow();
            s.ownership_version == 1 && s.owners == owners.clone().into_iter().collect()
        })
        .await;
    }
    // Forwards and replication went over the cached channels.
    for r in &live {
        let stats = r.node.peer_stats();
        assert!(stats.len() <= 2, "one channel per peer: {stats:?}");
    }

    // Stop the leader → the survivors elect a new one.
    let idx = nodes
        .iter()
        .position(|r| r.as_ref().is_some_and(|r| r.node.id() == leader))
        .unwrap();
    let stopped_at = Instant::now();
    let (old_addr, old_dir) = stop(nodes[idx].take().unwrap()).await;
    // A write proposed at once, while the survivors still name the stopped leader:
    // it is retried until a new leader takes it (within the write timeout).
    let survivor = nodes.iter().flatten().next().unwrap().node.clone();
    let text2 = "[[target]]\nname = \"web-2\"\ntransport = \"local\"\n";
    let during = tokio::spawn(async move {
        let w = Instant::now();
        let r = survivor.write(spec(text2)).await;
        (r, w.elapsed())
    });
    let failover = wait_until("new leader", || {
        let live: Vec<&Running> = nodes.iter().flatten().collect();
        agreed_leader(&live).is_some_and(|l| l != leader)
    })
    .await;
    let failover_total = stopped_at.elapsed();
    let live: Vec<&Running> = nodes.iter().flatten().collect();
    let new_leader = agreed_leader(&live).unwrap();
    println!(
        "leader {leader} stopped; node {new_leader} leads after {failover:?} \
         ({failover_total:?} including the stop)"
    );
    assert!(
        failover < Duration::from_secs(5),
        "failover took {failover:?}"
    );
    let (r, took) = during.await.unwrap();
    println!("write proposed during the failover took {took:?}");
    assert_eq!(r.unwrap().version, 2);

    // A further write succeeds on the survivors, proposed on the follower.
    let follower = live.iter().find(|r| r.node.id() != new_leader).unwrap();
    let text3 = "[[target]]\nname = \"web-3\"\ntransport = \"local\"\n";
    let w = Instant::now();
    let r = follower.node.write(spec(text3)).await.unwrap();
    println!("write after failover took {:?}", w.elapsed());
    assert_eq!(r.version, 3);
    for r in &live {
        let st = r.node.state();
        wait_until("spec v3 on survivors", || st.borrow().spec_version == 3).await;
    }
    // Backoff towards the stopped node: a handful of RPCs, not thousands.
    let to_stopped: u64 = live
        .iter()
        .flat_map(|r| r.node.peer_stats())
        .filter(|s| s.addr == old_addr)
        .map(|s| s.failures)
        .sum();
    println!("failed RPCs to the stopped node while it was down: {to_stopped}");
    for r in &live {
        println!("node {}: {:?}", r.node.id(), r.node.peer_stats());
    }
    assert!(to_stopped < 200);

    // The stopped node comes back with its dir and address: no init, no add_learner.
    let listener = bind(&old_addr).await;
    let back = spawn(leader, listener, &old_dir).await;
    assert_eq!(
        back.node.state().borrow().spec_version,
        1,
        "its own durable state"
    );
    let st = back.node.state();
    let caught_up = wait_until("restarted node catches up", || {
        let s = st.borrow();
        s.spec_version == 3
            && s.spec_text == text3
            && s.owners == owners.clone().into_iter().collect()
    })
    .await;
    println!("restarted node {leader} caught up in {:?}", caught_up);
    nodes[idx] = Some(back);
    // It follows the new leader: its return did not unseat it.
    wait_until("restarted node follows", || {
        let live: Vec<&Running> = nodes.iter().flatten().collect();
        agreed_leader(&live).is_some()
    })
    .await;
    let live: Vec<&Running> = nodes.iter().flatten().collect();
    assert_eq!(agreed_leader(&live), Some(new_leader));
    // And a write proposed on it lands everywhere.
    let r = nodes[idx]
        .as_ref()
        .unwrap()
        .node
        .write(spec(
            "[[target]]\nname = \"web-4\"\ntransport = \"local\"\n",
        ))
        .await
        .unwrap();
    assert_eq!(r.version, 4);
    for r in nodes.iter().flatten() {
        let st = r.node.state();
        wait_until("spec v4 everywhere", || st.borrow().spec_version == 4).await;
    }

    for r in nodes.into_iter().flatten() {
        stop(r).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_peer_is_backed_off_not_flooded() {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    // A port nobody listens on.
    let dead = {
        let l = bind("127.0.0.1:0").await;
        l.local_addr().unwrap().to_string()
    };
    let a = spawn(1, bind("127.0.0.1:0").await, &tmp.path().join("n1")).await;
    let b = spawn(2, bind("127.0.0.1:0").await, &tmp.path().join("n2")).await;
    let m = members(&[(1, &a.addr), (2, &b.addr), (3, &dead)]);
    assert!(a.node.init(m).await.unwrap());
    let election = wait_until("leader with one voter dead", || {
        agreed_leader(&[&a, &b]).is_some()
    })
    .await;
    println!("leader elected in {election:?} with node 3 dead");

    let to_dead = |r: &Running| {
        r.node
            .peer_stats()
            .into_iter()
            .find(|s| s.addr == dead)
            .map_or((0, 0), |s| (s.attempts, s.failures))
    };
    let before: Vec<(u64, u64)> = [&a, &b].map(to_dead).to_vec();
    let window = Duration::from_secs(2);
    // The herd keeps working meanwhile.
    let r = a
        .node
        .write(spec("[[target]]\nname = \"x\"\ntransport = \"local\"\n"))
        .await
        .unwrap();
    assert_eq!(r.version, 1);
    tokio::time::sleep(window).await;
    let after: Vec<(u64, u64)> = [&a, &b].map(to_dead).to_vec();
    let attempts: u64 = after.iter().zip(&before).map(|(x, y)| x.0 - y.0).sum();
    let failures: u64 = after.iter().zip(&before).map(|(x, y)| x.1 - y.1).sum();
    println!("RPC attempts to the dead peer over {window:?}: {attempts} ({failures} failed)");
    assert!(attempts >= 1, "the leader keeps trying the dead peer");
    assert_eq!(attempts, failures);
    assert!(
        attempts < 200,
        "{attempts} attempts in {window:?}: no backoff"
    );

    stop(a).await;
    stop(b).await;
}

#[test]
fn config_relations_are_checked() {
    let ok = ClusterConfig::default();
    assert!(ok.raft_config().is_ok());
    let c = ClusterConfig {
        election_min: Duration::from_millis(100),
        ..ClusterConfig::default()
    };
    assert!(c.validate().unwrap_err().to_string().contains("heartbeat"));
    let c = ClusterConfig {
        election_max: Duration::from_millis(500),
        ..ClusterConfig::default()
    };
    assert!(c
        .validate()
        .unwrap_err()
        .to_string()
        .contains("election_max"));
}
