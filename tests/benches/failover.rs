//! Failover benchmark: how fast a herd of three real `herd node` processes takes
//! over the targets of a node killed with `kill -9`, what that costs in scrapes,
//! and whether anything is done twice (two owners scraping one target, a
//! node-down notification sent twice).
//!
//! Run it with `scripts/bench failover` (builds the release `herd` first). Arguments:
//!
//! ```text
//! scripts/bench failover                   20 owner kills and 5 leader kills (~2 min)
//! options: --owner-kills N   kills of a node that is not the leader (default 20)
//!          --leader-kills N  kills of the leader (default 5), spread evenly among them
//!          --targets N       fleet size (default 300)
//! ```
//!
//! **The herd.** Three release `herd node` processes on 127.0.0.1 (the harness's
//! [`Cluster`]: `cluster init` on node 1, `cluster join` of 2 and 3), each with the
//! default `[cluster]` timings written out (heartbeat 100 ms, election 0.5-1 s,
//! beats every 200 ms, lease 1 s, failover after 1.5 s) and `machine = "none"`, so
//! that only the fleet is owned. **The fleet:** N targets, `transport = "local"`,
//! `interval = "1s"`, one `port` check against a TCP listener of this process
//! (it accepts and closes). The check is `from = "target"`: on a local target that
//! is the same direct TCP connect as from the node (no shell, no fork), but it is the
//! target's reachability check, so every scrape also writes `target.up` and the
//! status shows the target up. One webhook channel to the harness's
//! [`HttpReceiver`] in this process, `group_window = "0s"`, routed as `critical`
//! (where the leader sends "node down" and "node back").
//!
//! **A trial.** Wait until the herd is settled (every node answers, agrees on the
//! leader and the ownership version, sees all three alive, the map is balanced, and
//! every node scrapes exactly the targets its map gives it, each within 2 s); read
//! the map from the leader; wait a random 0-1 s (a random phase of the scrapes);
//! `kill -9` the victim (the leader, or a node that is not the leader and owns
//! targets, the two taken in turn); wait until every orphaned target was scraped by
//! a survivor; restart the victim (same config, port and data dir) and wait until
//! the herd is settled again with it (alive, balanced, scraping its share); wait for
//! this trial's two notifications.
//!
//! **What is measured.**
//! - *Takeover* of each orphaned target: its first `target.up` sample in a
//!   survivor's own store (`Query` with `local_only`, on each survivor) minus the
//!   time just before the kill.
//! - *Missed scrapes* per orphaned target, two ways: the hole in the stored series,
//!   first survivor sample minus the victim's last stored sample before the kill
//!   (read from the victim after its restart), as `round(hole / interval) - 1`
//!   (the samples a 1 s series lacks there; samples the victim had not flushed when
//!   it died count as missed); and from the kill alone, `floor(takeover s) - 1`.
//! - *Handback*: for each target the rebalance gives back to the restarted node,
//!   its first sample there minus the survivor's last sample, and the scrapes
//!   missed in that hole (the same rounding).
//! - *Double owners*, from a poller thread that asks every node for its own status
//!   (`Status` with `local_only`: the targets it scrapes itself) every 200 ms,
//!   throughout (during restarts too): (a) at the same moment, two nodes each show
//!   a row of the target scraped less than 1 s ago (in answers at most 100 ms
//!   apart: a node answering late shows what it held later); (b) interleaved scrapes: a node
//!   scraped a target, another node scraped it, then the first one again within
//!   1.5 intervals (both held it at once, if only for one scrape; counted at the
//!   intruding scrape). Both must be 0. And from the stores: the samples the
//!   restarted node wrote after its restart for targets that the settled map gives
//!   to another node (it never legitimately owned them since the restart).
//! - *Committed maps*: every third poll round one node (in turn) is asked for the
//!   full status, which lists each target with its owner in that node's applied map:
//!   every target listed once, with an owner that is a member, the per-node counts
//!   matching, and every node's map of one ownership version the same.
//! - *Notifications*: every `node_down` notification at the receiver, counted per
//!   idempotency key (a key twice is a duplicate) and per trial (arrivals from one
//!   kill to the next): one FIRING of the victim per kill and one RESOLVED per
//!   restart expected; a notification about another node is unexpected.
//!
//! Results: a Markdown table on stdout, `target/bench/failover.json`, and the
//! nodes' logs as `target/bench/failover-node-N.log`. Progress on stderr.
// serde_json's json! of the report nests deeper than the default limit.
#![recursion_limit = "256"]
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::io::ErrorKind;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use herd_proto::v1::herd_client::HerdClient;
use herd_proto::v1::StatusReply;
use herd_tests::bench::{
    bench_setup, client_runtime, host_busy_s, node_status, percentile, point_times, progress,
    target_dir, up_query, write_report, BenchArgs,
};
use herd_tests::cluster::Cluster;
use herd_tests::{now_ms, HerdOptions, HttpReceiver, Received};
use rand::Rng;
use serde_json::{json, Value};
use tonic::transport::Channel;

/// Nodes in the herd (ids 1..=NODES).
const NODES: u64 = 3;
/// Scrape interval of every target.
const INTERVAL_MS: i64 = 1000;
/// `[cluster]` timings, the node's defaults written out.
const HEARTBEAT: &str = "100ms";
const ELECTION_MIN: &str = "500ms";
const ELECTION_MAX: &str = "1s";
const BEAT_INTERVAL: &str = "200ms";
const LEASE: &str = "1s";
const FAILOVER_AFTER_MS: u64 = 1500;
/// The webhook channel the critical route names.
const CHANNEL: &str = "hook";
/// Rule name of the leader's peer-health notifications.
const NODE_DOWN_RULE: &str = "node_down";
/// Target name prefix of a node in peer notifications (`herd-node-N`).
const NODE_TARGET_PREFIX: &str = "herd-node-";

/// How often the poller asks every node for its own status.
const POLL: Duration = Duration::from_millis(200);
/// Every this many poll rounds one node (in turn) is asked for the full status.
const FULL_EVERY: u64 = 3;
/// Longest wait for one local status, one full status (it asks the other nodes)
/// and one query.
const LOCAL_TIMEOUT: Duration = Duration::from_secs(1);
const FULL_TIMEOUT: Duration = Duration::from_secs(3);
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// Queries in flight at once.
const QUERY_CONCURRENCY: usize = 32;
/// A node that did not answer the poller for this long is not counted as live.
const VIEW_MAX_AGE_MS: i64 = 1500;
/// Settled: every row a node shows was scraped within this (interval 1 s).
const FRESH_S: f64 = 2.0;
/// Double owner at one moment: both rows scraped less than this ago (one interval).
const DOUBLE_FRESH_S: f64 = 1.0;
/// ... in answers of the two nodes at most this far apart: a node that answers a
/// second later (busy, starting) shows what it held then, not at the same moment
/// (a handover in between is not a double owner; interleaved scrapes catch real ones).
const SAME_MOMENT_SKEW_MS: i64 = 100;
/// Two sightings of one node's row this close are one scrape (the poller sees each
/// scrape in about five rounds, with the round trip as jitter).
const SAME_SCRAPE_MS: i64 = 300;
/// Interleaving: the other node's scrape must be this far inside the pair, so that
/// the poller's jitter cannot invent an order.
const ORDER_SLACK_MS: i64 = 50;
/// Interleaving: the same node's two scrapes are consecutive ticks of one tenure
/// when at most this far apart (1.5 intervals).
const TENURE_GAP_MS: i64 = INTERVAL_MS * 3 / 2;

/// Longest wait for the herd to settle: at the start, and before each trial.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait from the kill until every orphan was scraped by a survivor.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait from the restart until the herd is settled with the node back.
const REJOIN_TIMEOUT: Duration = Duration::from_secs(40);
/// Longest wait for a trial's notifications once the herd is settled again.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest wait for a scrape the poller saw to be in the store (flush 200 ms).
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(10);
/// After the last trial, how long to watch for late duplicates.
const QUIET: Duration = Duration::from_secs(4);
/// No trial starts later than this after the bench started (it must end < 10 min).
const TRIAL_BUDGET: Duration = Duration::from_secs(8 * 60);
/// The kill comes at a random moment within this after the herd settled.
const KILL_JITTER_MS: u64 = 1000;
/// How often the trial loops look at the poller's findings.
const TICK: Duration = Duration::from_millis(100);
/// Problems kept verbatim per kind (all are counted).
const KEEP: usize = 20;
/// Double-owner sightings kept in the JSON report.
const KEEP_DOUBLES: usize = 2000;

const USAGE: &str =
    "usage: failover [--owner-kills N] [--leader-kills N] [--targets N]\n  defaults: 20, 5, 300";

fn main() {
    let opts = Options::parse();
    bench_setup("failover");
    let rt = client_runtime();

    let started = Instant::now();
    let load_start = loadavg();
    let rig = Rig::start(&opts);
    let busy_start = (host_busy_s(), Instant::now());
    let (trials, stopped) = run_trials(&rt, &rig, &opts, started);
    progress(&format!(
        "watching {} s for late notifications",
        QUIET.as_secs()
    ));
    std::thread::sleep(QUIET);
    let host_busy_pct =
        (host_busy_s() - busy_start.0) / busy_start.1.elapsed().as_secs_f64() * 100.0;
    let notes = node_down_notes(&rig.receiver.requests());
    let findings = rig.poller.findings();
    let report = Report::build(
        &opts,
        &trials,
        &notes,
        findings,
        Machine {
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            load_start,
            load_end: loadavg(),
            host_busy_pct,
        },
        stopped,
    );
    report.print();
    write_report("failover", &report.json);
    drop(rig);
    eprintln!("bench took {:.0} s", started.elapsed().as_secs_f64());
}

#[derive(Debug)]
struct Options {
    owner_kills: usize,
    leader_kills: usize,
    targets: usize,
}

impl Options {
    fn parse() -> Options {
        let mut a = BenchArgs::from_env("failover", USAGE);
        let owner_kills = a.number("--owner-kills", 20, 0..=100) as usize;
        let leader_kills = a.number("--leader-kills", 5, 0..=100) as usize;
        let targets = a.number("--targets", 300, 3..=3000) as usize;
        a.finish();
        if owner_kills + leader_kills == 0 {
            a.fail("nothing to do: no kills");
        }
        Options {
            owner_kills,
            leader_kills,
            targets,
        }
    }

    /// Which trials kill the leader: spread evenly, the last trial among them.
    fn kinds(&self) -> Vec<Kind> {
        let total = self.owner_kills + self.leader_kills;
        let mut kinds = vec![Kind::Owner; total];
        for j in 0..self.leader_kills {
            kinds[(j + 1) * total / self.leader_kills - 1] = Kind::Leader;
        }
        kinds
    }
}

// ---------------------------------------------------------------------------
// The rig: listener, receiver, herd, poller

/// A TCP listener on 127.0.0.1 that accepts and closes: what every target's port
/// check connects to.
struct PortListener {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl PortListener {
    fn start() -> PortListener {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the port listener");
        let port = listener.local_addr().expect("listener address").port();
        listener
            .set_nonblocking(true)
            .expect("set the listener nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        // Dropped at once: the check only needs the connect.
                        Ok((stream, _)) => drop(stream),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(2))
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        PortListener {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for PortListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The `[cluster]` section of every node.
fn cluster_toml() -> String {
    format!(
        "[cluster]\nheartbeat = \"{HEARTBEAT}\"\nelection_min = \"{ELECTION_MIN}\"\n\
         election_max = \"{ELECTION_MAX}\"\nbeat_interval = \"{BEAT_INTERVAL}\"\n\
         lease = \"{LEASE}\"\nfailover_after = \"{FAILOVER_AFTER_MS}ms\"\nwatchers = 1\n\
         machine = \"none\"\n"
    )
}

/// The fleet: `names` checking `port`, every 1 s, and the critical route to the receiver.
fn fleet_toml(names: &[String], port: u16, url: &str) -> String {
    let mut text = String::with_capacity(names.len() * 160);
    for name in names {
        text.push_str(&format!(
            "[[target]]\nname = \"{name}\"\ntransport = \"local\"\ninterval = \"{}s\"\n\
             checks = [{{ kind = \"port\", port = {port}, from = \"target\" }}]\n\n",
            INTERVAL_MS / 1000
        ));
    }
    text.push_str(&format!(
        "[[channel]]\nname = \"{CHANNEL}\"\nkind = \"webhook\"\nurl = \"{url}\"\n\
         group_window = \"0s\"\n\n[routes]\ncritical = [\"{CHANNEL}\"]\n"
    ));
    text
}

/// Everything the trials use. Dropped in field order after `Drop::drop` copied
/// the logs: the poller stops, then the nodes die, then the receiver and listener.
struct Rig {
    poller: Poller,
    cluster: RefCell<Cluster>,
    receiver: HttpReceiver,
    _listener: PortListener,
    addrs: BTreeMap<u64, String>,
    targets: Vec<String>,
}

impl Rig {
    /// Starts the listener, the receiver and the herd, applies the fleet and waits
    /// until the herd is settled with it.
    fn start(opts: &Options) -> Rig {
        let listener = PortListener::start();
        let receiver = HttpReceiver::start();
        progress(&format!(
            "port listener on 127.0.0.1:{}, webhook receiver at {}",
            listener.port,
            receiver.url("/hook")
        ));
        progress(&format!("starting {NODES} nodes and forming the herd"));
        let cluster = Cluster::start(NODES, HerdOptions::default().extra_toml(cluster_toml()));
        let addrs: BTreeMap<u64, String> = cluster
            .ids()
            .into_iter()
            .map(|id| (id, cluster.node(id).addr()))
            .collect();
        let width = opts.targets.saturating_sub(1).to_string().len();
        let targets: Vec<String> = (0..opts.targets)
            .map(|i| format!("t-{i:0width$}"))
            .collect();
        cluster.apply(
            1,
            &fleet_toml(&targets, listener.port, &receiver.url("/hook")),
        );
        let poller = Poller::start(addrs.clone(), targets.iter().cloned().collect());
        let rig = Rig {
            poller,
            cluster: RefCell::new(cluster),
            receiver,
            _listener: listener,
            addrs,
            targets,
        };
        let started = Instant::now();
        match rig.wait_settled(SETTLE_TIMEOUT) {
            Ok(leader) => progress(&format!(
                "herd settled in {:.1} s: leader {leader}, {} targets owned and scraped",
                started.elapsed().as_secs_f64(),
                rig.targets.len()
            )),
            Err(why) => panic!("the herd did not settle within {SETTLE_TIMEOUT:?}: {why}"),
        }
        rig.poller.shared.lock().unwrap().checking = true;
        rig
    }

    fn addrs_vec(&self) -> Vec<(u64, String)> {
        self.addrs.iter().map(|(id, a)| (*id, a.clone())).collect()
    }

    fn ids(&self) -> Vec<u64> {
        self.addrs.keys().copied().collect()
    }

    /// Waits until [`Observed::settled`]; returns the leader, or the last reason why not.
    fn wait_settled(&self, timeout: Duration) -> Result<u64, String> {
        let start = Instant::now();
        loop {
            let why = match self
                .poller
                .with(|o| o.settled(&self.ids(), self.targets.len(), now_ms()))
            {
                Ok(leader) => return Ok(leader),
                Err(why) => why,
            };
            if start.elapsed() >= timeout {
                return Err(why);
            }
            std::thread::sleep(TICK);
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        // The node dirs are temp dirs, gone with the cluster: keep the logs.
        let dir = target_dir().join("bench");
        let _ = std::fs::create_dir_all(&dir);
        let cluster = self.cluster.borrow();
        for id in cluster.ids() {
            let to = dir.join(format!("failover-node-{id}.log"));
            if std::fs::copy(cluster.node(id).log_path(), &to).is_ok() {
                eprintln!("node {id}'s log: {}", to.display());
            }
        }
    }
}

// ---------------------------------------------------------------------------
// gRPC

async fn client(addr: &str) -> Result<HerdClient<Channel>, String> {
    HerdClient::connect(format!("http://{addr}"))
        .await
        .map_err(|e| format!("connect {addr}: {e}"))
}

async fn status(addr: &str, local_only: bool, timeout: Duration) -> Result<StatusReply, String> {
    node_status(addr, local_only, timeout).await
}

/// Timestamps of `target.up` of `target` in [from, to] in this node's own store.
async fn sample_times(
    mut c: HerdClient<Channel>,
    target: String,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<i64>, String> {
    let call = c.query(up_query(&target, from_ms, to_ms));
    match tokio::time::timeout(QUERY_TIMEOUT, call).await {
        Err(_) => Err(format!(
            "query {target}: no answer within {QUERY_TIMEOUT:?}"
        )),
        // Never held by this node: no data, which is an answer.
        Ok(Err(s)) if s.code() == tonic::Code::NotFound => Ok(Vec::new()),
        Ok(Err(s)) => Err(format!("query {target}: {}", s.message())),
        Ok(Ok(r)) => Ok(point_times(r.into_inner())),
    }
}

/// Sample times per (target, node).
type SampleTimes = HashMap<(String, u64), Vec<i64>>;

/// For each of `targets`, the samples in [from, to] on each of `nodes`, and the
/// errors of the calls that failed (left out).
fn samples_on(
    rt: &tokio::runtime::Runtime,
    nodes: &[(u64, String)],
    targets: &[String],
    from_ms: i64,
    to_ms: i64,
) -> (SampleTimes, Vec<String>) {
    rt.block_on(async {
        let mut clients = Vec::new();
        let mut errors = Vec::new();
        for (id, addr) in nodes {
            match tokio::time::timeout(QUERY_TIMEOUT, client(addr)).await {
                Ok(Ok(c)) => clients.push((*id, c)),
                Ok(Err(e)) => errors.push(e),
                Err(_) => errors.push(format!("connect {addr}: timed out")),
            }
        }
        let gate = Arc::new(tokio::sync::Semaphore::new(QUERY_CONCURRENCY));
        let mut calls = tokio::task::JoinSet::new();
        for t in targets {
            for (id, c) in &clients {
                let (gate, c, t, id) = (gate.clone(), c.clone(), t.clone(), *id);
                calls.spawn(async move {
                    let _permit = gate.acquire_owned().await;
                    let r = sample_times(c, t.clone(), from_ms, to_ms).await;
                    (t, id, r)
                });
            }
        }
        let mut out = HashMap::new();
        while let Some(done) = calls.join_next().await {
            match done {
                Ok((t, id, Ok(ts))) => {
                    out.insert((t, id), ts);
                }
                Ok((_, id, Err(e))) => errors.push(format!("node {id}: {e}")),
                Err(e) => errors.push(format!("query task: {e}")),
            }
        }
        (out, errors)
    })
}

/// Target → owner as the full status of the node at `addr` shows its applied map.
fn full_map(rt: &tokio::runtime::Runtime, addr: &str) -> Result<BTreeMap<String, u64>, String> {
    let s = rt.block_on(status(addr, false, FULL_TIMEOUT))?;
    Ok(s.targets
        .into_iter()
        .filter(|t| t.owner > 0)
        .map(|t| (t.name, t.owner))
        .collect())
}

// ---------------------------------------------------------------------------
// The poller

/// One node's own status in the latest poll round it answered.
#[derive(Debug, Clone)]
struct View {
    /// The poll round's time.
    at_ms: i64,
    /// When this node's answer came.
    answered_ms: i64,
    leader: Option<u64>,
    ownership_version: u64,
    /// Member → (alive, targets it owns in this node's applied map).
    members: BTreeMap<u64, (bool, u64)>,
    /// The rows of the targets this node scrapes: name → seconds since its last
    /// scrape (None: not scraped yet).
    rows: BTreeMap<String, Option<f64>>,
}

impl View {
    fn of(node: u64, s: &StatusReply, at_ms: i64, answered_ms: i64) -> View {
        View {
            at_ms,
            answered_ms,
            leader: s.leader.filter(|l| *l > 0),
            ownership_version: s.ownership_version,
            members: s
                .nodes
                .iter()
                .map(|n| (n.id, (n.alive, n.targets)))
                .collect(),
            rows: s
                .targets
                .iter()
                .filter(|t| t.owner == node || t.owner == 0)
                .map(|t| {
                    (
                        t.name.clone(),
                        (t.last_scrape_age_s >= 0.0).then_some(t.last_scrape_age_s),
                    )
                })
                .collect(),
        }
    }
}

/// Two nodes scraping one target, seen at one moment or as interleaved scrapes.
#[derive(Debug, Clone)]
struct Double {
    at_ms: i64,
    target: String,
    nodes: Vec<u64>,
}

/// What the checks of the committed maps found.
#[derive(Debug, Default)]
struct MapChecks {
    checked: u64,
    problems: u64,
    examples: Vec<String>,
    /// Ownership version → (hash of the map, node that first showed it).
    by_version: BTreeMap<u64, (u64, u64)>,
    conflicts: u64,
    conflict_examples: Vec<String>,
}

#[derive(Debug, Default)]
struct Observed {
    rounds: u64,
    /// Nodes that answered the latest round.
    views: BTreeMap<u64, View>,
    failed_calls: u64,
    slowest_round_ms: u64,
    /// Target → every distinct scrape seen: (time, node).
    scrapes: HashMap<String, Vec<(i64, u64)>>,
    /// (target, node) → time of the latest scrape seen.
    last_scrape: HashMap<(String, u64), i64>,
    /// Double owners at one moment (definition (a)).
    same_moment: Vec<Double>,
    maps: MapChecks,
    /// Set once the herd first settled: map problems before that are a herd still
    /// placing its targets.
    checking: bool,
}

impl Observed {
    /// Records node `node`'s answer `s`, given at `answered_ms`, in the round of `at_ms`.
    fn record(&mut self, node: u64, s: &StatusReply, answered_ms: i64, at_ms: i64) {
        let view = View::of(node, s, at_ms, answered_ms);
        for (name, age) in &view.rows {
            let Some(age) = age else { continue };
            let ts = answered_ms - (age * 1000.0).round() as i64;
            let key = (name.clone(), node);
            if self
                .last_scrape
                .get(&key)
                .is_some_and(|last| (ts - last).abs() < SAME_SCRAPE_MS)
            {
                continue;
            }
            self.last_scrape.insert(key, ts);
            self.scrapes
                .entry(name.clone())
                .or_default()
                .push((ts, node));
        }
        self.views.insert(node, view);
    }

    /// Targets two nodes of this round, answering within [`SAME_MOMENT_SKEW_MS`]
    /// of each other, both show scraped less than 1 s ago.
    fn check_same_moment(&mut self, at_ms: i64) {
        let mut fresh: BTreeMap<&str, Vec<(u64, i64)>> = BTreeMap::new();
        for (id, v) in &self.views {
            if v.at_ms != at_ms {
                continue;
            }
            for (name, age) in &v.rows {
                if age.is_some_and(|a| a < DOUBLE_FRESH_S) {
                    fresh.entry(name).or_default().push((*id, v.answered_ms));
                }
            }
        }
        let doubles: Vec<Double> = fresh
            .into_iter()
            .filter_map(|(t, holders)| {
                let mut nodes: Vec<u64> = holders
                    .iter()
                    .filter(|(id, at)| {
                        holders.iter().any(|(other, other_at)| {
                            other != id && (at - other_at).abs() <= SAME_MOMENT_SKEW_MS
                        })
                    })
                    .map(|(id, _)| *id)
                    .collect();
                nodes.sort_unstable();
                (nodes.len() > 1).then(|| Double {
                    at_ms,
                    target: t.to_string(),
                    nodes,
                })
            })
            .collect();
        self.same_moment.extend(doubles);
    }

    /// Checks one full status: the node's applied map as it lists the targets.
    fn check_map(&mut self, node: u64, s: &StatusReply, targets: &BTreeSet<String>) {
        let m = &mut self.maps;
        m.checked += 1;
        let members: BTreeSet<u64> = s.nodes.iter().map(|n| n.id).collect();
        let mut problems = Vec::new();
        let mut owners: BTreeMap<&str, u64> = BTreeMap::new();
        for t in &s.targets {
            if owners.insert(&t.name, t.owner).is_some() {
                problems.push(format!("{} listed twice", t.name));
            }
            if t.owner == 0 {
                problems.push(format!("{} has no owner", t.name));
            } else if !members.contains(&t.owner) {
                problems.push(format!("{} owned by {}, not a member", t.name, t.owner));
            }
            if !targets.contains(&t.name) {
                problems.push(format!("{} is not in the fleet", t.name));
            }
        }
        for t in targets {
            if !owners.contains_key(t.as_str()) {
                problems.push(format!("{t} not listed"));
            }
        }
        let mut counts: BTreeMap<u64, u64> = BTreeMap::new();
        for o in owners.values().filter(|o| **o > 0) {
            *counts.entry(*o).or_default() += 1;
        }
        for n in &s.nodes {
            let listed = counts.get(&n.id).copied().unwrap_or(0);
            if listed != n.targets {
                problems.push(format!(
                    "node {} owns {} targets by nodes[] but {listed} by targets[]",
                    n.id, n.targets
                ));
            }
        }
        if !problems.is_empty() {
            m.problems += 1;
            if m.examples.len() < KEEP {
                m.examples.push(format!(
                    "node {node}, ownership v{}: {}",
                    s.ownership_version,
                    problems
                        .iter()
                        .take(5)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join("; ")
                ));
            }
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        owners.hash(&mut h);
        let hash = h.finish();
        match m.by_version.get(&s.ownership_version) {
            Some((other, first)) if *other != hash => {
                m.conflicts += 1;
                if m.conflict_examples.len() < KEEP {
                    m.conflict_examples.push(format!(
                        "ownership v{}: node {node}'s map differs from node {first}'s",
                        s.ownership_version
                    ));
                }
            }
            Some(_) => {}
            None => {
                m.by_version.insert(s.ownership_version, (hash, node));
            }
        }
    }

    /// Views of the nodes that answered within the last [`VIEW_MAX_AGE_MS`].
    fn live_views(&self, now: i64) -> BTreeMap<u64, &View> {
        self.views
            .iter()
            .filter(|(_, v)| now - v.at_ms <= VIEW_MAX_AGE_MS)
            .map(|(id, v)| (*id, v))
            .collect()
    }

    /// Settled: every node of `ids` answers, they agree on a leader among them and
    /// on the ownership version, each sees all of them alive, the map is balanced
    /// and covers `targets`, and each node scrapes exactly its share, every row
    /// within [`FRESH_S`]. Returns the leader, or why not.
    fn settled(&self, ids: &[u64], targets: usize, now: i64) -> Result<u64, String> {
        let views = self.live_views(now);
        let mut leaders = BTreeSet::new();
        let mut versions = BTreeSet::new();
        for id in ids {
            let v = views
                .get(id)
                .ok_or_else(|| format!("node {id} does not answer"))?;
            leaders.insert(v.leader);
            versions.insert(v.ownership_version);
            for other in ids {
                if !v.members.get(other).is_some_and(|m| m.0) {
                    return Err(format!("node {id} does not see node {other} alive"));
                }
            }
            let counts: Vec<u64> = ids
                .iter()
                .map(|o| v.members.get(o).map_or(0, |m| m.1))
                .collect();
            let (min, max) = (
                counts.iter().min().copied().unwrap_or(0),
                counts.iter().max().copied().unwrap_or(0),
            );
            if counts.iter().sum::<u64>() != targets as u64 || max - min > 1 {
                return Err(format!("node {id}'s map is not balanced: {counts:?}"));
            }
            let mine = v.members.get(id).map_or(0, |m| m.1);
            if v.rows.len() as u64 != mine {
                return Err(format!(
                    "node {id} scrapes {} targets, its map gives it {mine}",
                    v.rows.len()
                ));
            }
            if let Some((t, age)) = v.rows.iter().find(|(_, a)| !a.is_some_and(|a| a < FRESH_S)) {
                return Err(format!("node {id}: {t} last scraped {age:?} s ago"));
            }
        }
        if versions.len() != 1 {
            return Err(format!("ownership versions differ: {versions:?}"));
        }
        match leaders.into_iter().collect::<Vec<_>>()[..] {
            [Some(l)] if ids.contains(&l) => Ok(l),
            ref other => Err(format!("no agreed leader: {other:?}")),
        }
    }

    /// The first scrape of `target` after `after_ms` by a node other than `not`.
    fn first_scrape_after(&self, target: &str, after_ms: i64, not: u64) -> Option<(i64, u64)> {
        self.scrapes
            .get(target)?
            .iter()
            .filter(|(ts, n)| *ts > after_ms && *n != not)
            .min()
            .copied()
    }

    /// Interleaved scrapes (definition (b)): node X scraped, another node scraped,
    /// then X again within [`TENURE_GAP_MS`] of its previous scrape.
    fn interleaved(&self) -> Vec<Double> {
        let mut out = Vec::new();
        for (target, list) in &self.scrapes {
            let mut sorted = list.clone();
            sorted.sort_unstable();
            let mut last: BTreeMap<u64, i64> = BTreeMap::new();
            for &(ts, node) in &sorted {
                if let Some(&prev) = last.get(&node) {
                    if ts - prev <= TENURE_GAP_MS {
                        let between: Vec<(u64, i64)> = last
                            .iter()
                            .filter(|(n, t)| {
                                **n != node
                                    && **t > prev + ORDER_SLACK_MS
                                    && **t < ts - ORDER_SLACK_MS
                            })
                            .map(|(n, t)| (*n, *t))
                            .collect();
                        if let Some(&intruded) = between.iter().map(|(_, t)| t).max() {
                            let mut nodes = vec![node];
                            nodes.extend(between.iter().map(|(n, _)| *n));
                            // At the intruding scrape: that is when both held it.
                            out.push(Double {
                                at_ms: intruded,
                                target: target.clone(),
                                nodes,
                            });
                        }
                    }
                }
                last.insert(node, ts);
            }
        }
        out.sort_by_key(|d| d.at_ms);
        out
    }
}

/// A thread that asks every node for its own status every [`POLL`], whether or not
/// it is running (a dead node refuses at once), so that restarts are watched too.
struct Poller {
    shared: Arc<Mutex<Observed>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Poller {
    fn start(addrs: BTreeMap<u64, String>, targets: BTreeSet<String>) -> Poller {
        let shared = Arc::new(Mutex::new(Observed::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (shared, stop) = (shared.clone(), stop.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("poller runtime");
                rt.block_on(poll_loop(addrs, targets, shared, stop));
            })
        };
        Poller {
            shared,
            stop,
            thread: Some(thread),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&Observed) -> T) -> T {
        f(&self.shared.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// What the poller found over the whole run.
    fn findings(&self) -> Findings {
        self.with(|o| Findings {
            rounds: o.rounds,
            failed_calls: o.failed_calls,
            slowest_round_ms: o.slowest_round_ms,
            same_moment: o.same_moment.clone(),
            interleaved: o.interleaved(),
            maps_checked: o.maps.checked,
            map_problems: o.maps.problems,
            map_examples: o.maps.examples.clone(),
            map_versions: o.maps.by_version.len(),
            map_conflicts: o.maps.conflicts,
            conflict_examples: o.maps.conflict_examples.clone(),
            scrapes_seen: o.scrapes.values().map(Vec::len).sum(),
        })
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn poll_loop(
    addrs: BTreeMap<u64, String>,
    targets: BTreeSet<String>,
    shared: Arc<Mutex<Observed>>,
    stop: Arc<AtomicBool>,
) {
    let ids: Vec<u64> = addrs.keys().copied().collect();
    let mut round = 0u64;
    let mut next = tokio::time::Instant::now();
    while !stop.load(Ordering::SeqCst) {
        let began = Instant::now();
        let locals = async {
            let mut set = tokio::task::JoinSet::new();
            for (id, addr) in &addrs {
                let (id, addr) = (*id, addr.clone());
                set.spawn(async move {
                    let r = status(&addr, true, LOCAL_TIMEOUT).await;
                    (id, r, now_ms())
                });
            }
            let mut out = Vec::new();
            while let Some(Ok(r)) = set.join_next().await {
                out.push(r);
            }
            out
        };
        // One full status per FULL_EVERY rounds, from each node in turn.
        let full_from = round
            .is_multiple_of(FULL_EVERY)
            .then(|| ids[(round / FULL_EVERY) as usize % ids.len()]);
        let full = async {
            match full_from {
                Some(id) => Some((id, status(&addrs[&id], false, FULL_TIMEOUT).await)),
                None => None,
            }
        };
        let (locals, full) = tokio::join!(locals, full);
        let at_ms = now_ms();
        {
            let mut o = shared.lock().unwrap_or_else(|p| p.into_inner());
            o.rounds += 1;
            for (id, r, answered_ms) in locals {
                match r {
                    Ok(s) => o.record(id, &s, answered_ms, at_ms),
                    Err(_) => {
                        // Killed, or starting: not a live view any more.
                        o.views.remove(&id);
                        o.failed_calls += 1;
                    }
                }
            }
            o.check_same_moment(at_ms);
            if let Some((id, Ok(s))) = &full {
                if o.checking {
                    o.check_map(*id, s, &targets);
                }
            }
            o.slowest_round_ms = o.slowest_round_ms.max(began.elapsed().as_millis() as u64);
        }
        round += 1;
        next += POLL;
        let now = tokio::time::Instant::now();
        if next < now {
            next = now;
        }
        tokio::time::sleep_until(next).await;
    }
}

/// The poller's findings at the end.
struct Findings {
    rounds: u64,
    failed_calls: u64,
    slowest_round_ms: u64,
    same_moment: Vec<Double>,
    interleaved: Vec<Double>,
    maps_checked: u64,
    map_problems: u64,
    map_examples: Vec<String>,
    map_versions: usize,
    map_conflicts: u64,
    conflict_examples: Vec<String>,
    scrapes_seen: usize,
}

// ---------------------------------------------------------------------------
// Trials

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A node that is not the leader and owns targets.
    Owner,
    Leader,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Owner => "owner",
            Kind::Leader => "leader",
        }
    }
}

/// One kill and restart.
#[derive(Debug, Default)]
struct Trial {
    n: usize,
    kind: Option<Kind>,
    victim: u64,
    kill_ms: i64,
    restart_ms: i64,
    orphans: usize,
    /// Per orphan taken over: first survivor sample − kill (ms).
    takeover_ms: Vec<f64>,
    /// Orphans with no survivor sample within the bounds.
    not_taken: usize,
    /// Orphans whose first survivor sample came from a node the new map does not
    /// name as the owner.
    first_by_other: usize,
    /// Per orphan: missed scrapes as the hole in the stored series, and from the kill.
    missed_hole: Vec<f64>,
    missed_from_kill: Vec<f64>,
    /// Per orphan: kill − the victim's last stored sample before it (ms).
    tail_lost_ms: Vec<f64>,
    /// Since the kill (ms): a survivor shows the victim down, a survivor shows a
    /// newer ownership map, a survivor names a new leader (leader kills), every
    /// orphan was seen scraped by a survivor.
    down_seen_ms: Option<f64>,
    map_seen_ms: Option<f64>,
    new_leader_ms: Option<f64>,
    all_scraped_ms: Option<f64>,
    /// Since the restart began (ms): the survivors show the victim alive; settled.
    alive_ms: Option<f64>,
    settled_ms: Option<f64>,
    /// Samples the restarted victim stored after its restart for targets the map
    /// gives to another node once settled (it never owned them since), and of how
    /// many targets: scrapes on a stale ownership map.
    stale_samples: usize,
    stale_targets: usize,
    /// Per target the rebalance gave back to the victim: the victim's first sample
    /// after its restart − the survivor's last sample before it (ms), and the
    /// missed scrapes in that hole.
    handback_gap_ms: Vec<f64>,
    missed_handback: Vec<f64>,
    /// Arrival at the receiver: FIRING − kill, RESOLVED − restart (ms).
    firing_ms: Option<f64>,
    resolved_ms: Option<f64>,
    errors: Vec<String>,
}

/// Runs the trials until done, the budget is spent or the herd does not settle.
/// Returns them and why it stopped early, if it did.
fn run_trials(
    rt: &tokio::runtime::Runtime,
    rig: &Rig,
    opts: &Options,
    started: Instant,
) -> (Vec<Trial>, Option<String>) {
    let kinds = opts.kinds();
    let mut trials = Vec::new();
    let mut owner_kills = 0usize;
    for (i, kind) in kinds.iter().enumerate() {
        if started.elapsed() > TRIAL_BUDGET {
            let why = format!(
                "stopped after {} of {} trials: the {} s budget is spent",
                trials.len(),
                kinds.len(),
                TRIAL_BUDGET.as_secs()
            );
            progress(&why);
            return (trials, Some(why));
        }
        let t = match run_trial(rt, rig, i + 1, kinds.len(), *kind, owner_kills) {
            Ok(t) => t,
            Err(why) => {
                let why = format!("stopped before trial {}: {why}", i + 1);
                progress(&why);
                rig.cluster.borrow_mut().dump_logs();
                return (trials, Some(why));
            }
        };
        if *kind == Kind::Owner {
            owner_kills += 1;
        }
        trials.push(t);
    }
    (trials, None)
}

fn secs(ms: Option<f64>) -> String {
    ms.map_or("-".into(), |m| format!("{:.2} s", m / 1000.0))
}

/// One trial; Err when the herd is not settled to begin with (nothing to measure).
fn run_trial(
    rt: &tokio::runtime::Runtime,
    rig: &Rig,
    n: usize,
    of: usize,
    kind: Kind,
    owner_kills: usize,
) -> Result<Trial, String> {
    let leader = rig.wait_settled(SETTLE_TIMEOUT)?;
    let map = full_map(rt, &rig.addrs[&leader])?;
    let count = |id: u64| map.values().filter(|o| **o == id).count();
    let victim = match kind {
        Kind::Leader => leader,
        Kind::Owner => {
            let followers: Vec<u64> = rig
                .ids()
                .into_iter()
                .filter(|id| *id != leader && count(*id) > 0)
                .collect();
            *followers
                .get(owner_kills % followers.len().max(1))
                .ok_or("no node but the leader owns targets")?
        }
    };
    let orphans: Vec<String> = map
        .iter()
        .filter(|(_, o)| **o == victim)
        .map(|(t, _)| t.clone())
        .collect();
    let version_before = rig
        .poller
        .with(|o| o.views.get(&leader).map_or(0, |v| v.ownership_version));
    let survivors: Vec<(u64, String)> = rig
        .addrs
        .iter()
        .filter(|(id, _)| **id != victim)
        .map(|(id, a)| (*id, a.clone()))
        .collect();
    let mut t = Trial {
        n,
        kind: Some(kind),
        victim,
        orphans: orphans.len(),
        ..Default::default()
    };

    std::thread::sleep(Duration::from_millis(
        rand::rng().random_range(0..KILL_JITTER_MS),
    ));
    t.kill_ms = rig.cluster.borrow_mut().kill9(victim);
    let kill_ms = t.kill_ms;

    // Failover: until every orphan was seen scraped by a survivor.
    let began = Instant::now();
    loop {
        let now = now_ms();
        let since = (now - kill_ms) as f64;
        let done = rig.poller.with(|o| {
            for (id, v) in o.live_views(now) {
                if id == victim || v.at_ms <= kill_ms {
                    continue;
                }
                if t.down_seen_ms.is_none() && v.members.get(&victim).is_some_and(|m| !m.0) {
                    t.down_seen_ms = Some((v.at_ms - kill_ms) as f64);
                }
                if t.map_seen_ms.is_none() && v.ownership_version > version_before {
                    t.map_seen_ms = Some((v.at_ms - kill_ms) as f64);
                }
                if kind == Kind::Leader
                    && t.new_leader_ms.is_none()
                    && v.leader.is_some_and(|l| l != victim)
                {
                    t.new_leader_ms = Some((v.at_ms - kill_ms) as f64);
                }
            }
            orphans
                .iter()
                .all(|name| o.first_scrape_after(name, kill_ms, victim).is_some())
        });
        if done {
            t.all_scraped_ms = Some(since);
            break;
        }
        if began.elapsed() >= FAILOVER_TIMEOUT {
            t.errors.push(format!(
                "not every orphan was scraped by a survivor within {FAILOVER_TIMEOUT:?}"
            ));
            break;
        }
        std::thread::sleep(TICK);
    }

    // The first sample of each orphan in a survivor's store, to the millisecond.
    let new_map = full_map(rt, &survivors[0].1)
        .or_else(|_| full_map(rt, &survivors[survivors.len() - 1].1))
        .unwrap_or_default();
    let mut first: BTreeMap<String, (i64, u64)> = BTreeMap::new();
    let began = Instant::now();
    loop {
        let missing: Vec<String> = orphans
            .iter()
            .filter(|o| !first.contains_key(*o))
            .cloned()
            .collect();
        if missing.is_empty() {
            break;
        }
        let (found, errors) = samples_on(rt, &survivors, &missing, kill_ms + 1, now_ms() + 1000);
        for ((target, node), ts) in found {
            if let Some(&ts) = ts.first() {
                let e = first.entry(target).or_insert((ts, node));
                if ts < e.0 {
                    *e = (ts, node);
                }
            }
        }
        if began.elapsed() >= SAMPLE_TIMEOUT || t.all_scraped_ms.is_none() {
            if let Some(e) = errors.first() {
                t.errors
                    .push(format!("{} query errors, e.g. {e}", errors.len()));
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    for o in &orphans {
        match first.get(o) {
            Some((ts, node)) => {
                t.takeover_ms.push((ts - kill_ms) as f64);
                if new_map.get(o) != Some(node) {
                    t.first_by_other += 1;
                }
            }
            None => t.not_taken += 1,
        }
    }

    // Restart, and wait until the herd is settled with the node back.
    t.restart_ms = now_ms();
    rig.cluster.borrow_mut().restart(victim);
    let ids = rig.ids();
    let began = Instant::now();
    loop {
        let now = now_ms();
        let (alive, settled) = rig.poller.with(|o| {
            let views = o.live_views(now);
            let alive = views.contains_key(&victim)
                && survivors.iter().all(|(id, _)| {
                    views
                        .get(id)
                        .is_some_and(|v| v.members.get(&victim).is_some_and(|m| m.0))
                });
            (alive, o.settled(&ids, rig.targets.len(), now))
        });
        if alive && t.alive_ms.is_none() {
            t.alive_ms = Some((now - t.restart_ms) as f64);
        }
        match settled {
            Ok(_) => {
                t.settled_ms = Some((now - t.restart_ms) as f64);
                break;
            }
            Err(why) if began.elapsed() >= REJOIN_TIMEOUT => {
                t.errors.push(format!(
                    "not settled within {REJOIN_TIMEOUT:?} of the restart: {why}"
                ));
                break;
            }
            Err(_) => std::thread::sleep(TICK),
        }
    }

    // The victim's last stored sample of each orphan before the kill: the holes.
    let victim_addr = vec![(victim, rig.addrs[&victim].clone())];
    let (last, errors) = samples_on(rt, &victim_addr, &orphans, kill_ms - 60_000, kill_ms);
    if let Some(e) = errors.first() {
        t.errors.push(format!(
            "{} query errors on the victim, e.g. {e}",
            errors.len()
        ));
    }
    for o in &orphans {
        let Some(&(after, _)) = first.get(o) else {
            continue;
        };
        let gap_s = (after - kill_ms) as f64 / 1000.0;
        t.missed_from_kill.push((gap_s.floor() - 1.0).max(0.0));
        if let Some(&before) = last.get(&(o.clone(), victim)).and_then(|v| v.last()) {
            let hole = (after - before) as f64 / INTERVAL_MS as f64;
            t.missed_hole.push((hole.round() - 1.0).max(0.0));
            t.tail_lost_ms.push((kill_ms - before) as f64);
        }
    }

    // Samples the victim stored since its restart for targets it does not own.
    match full_map(rt, &rig.addrs[&victim]) {
        Ok(settled_map) => {
            let others: Vec<String> = settled_map
                .iter()
                .filter(|(_, o)| **o != victim)
                .map(|(t, _)| t.clone())
                .collect();
            let (found, errors) = samples_on(rt, &victim_addr, &others, t.restart_ms, now_ms());
            t.stale_samples = found.values().map(Vec::len).sum();
            t.stale_targets = found.values().filter(|v| !v.is_empty()).count();
            if let Some(e) = errors.first() {
                t.errors.push(format!(
                    "{} stale-sample query errors, e.g. {e}",
                    errors.len()
                ));
            }
            // The handback: the targets the rebalance gave back to the victim, from
            // the survivor's last sample to the victim's first.
            let share: Vec<String> = settled_map
                .iter()
                .filter(|(_, o)| **o == victim)
                .map(|(t, _)| t.clone())
                .collect();
            let (all, errors) = samples_on(rt, &rig.addrs_vec(), &share, kill_ms, now_ms());
            if let Some(e) = errors.first() {
                t.errors
                    .push(format!("{} handback query errors, e.g. {e}", errors.len()));
            }
            for target in &share {
                let back = all
                    .get(&(target.clone(), victim))
                    .and_then(|v| v.iter().find(|ts| **ts >= t.restart_ms).copied());
                let Some(back) = back else { continue };
                let before = survivors
                    .iter()
                    .filter_map(|(id, _)| all.get(&(target.clone(), *id)))
                    .flat_map(|v| v.iter().copied().filter(|ts| *ts < back))
                    .max();
                if let Some(before) = before {
                    let gap = (back - before) as f64;
                    t.handback_gap_ms.push(gap);
                    t.missed_handback
                        .push(((gap / INTERVAL_MS as f64).round() - 1.0).max(0.0));
                }
            }
        }
        Err(e) => t
            .errors
            .push(format!("no map from the victim after its restart: {e}")),
    }

    // This trial's notifications.
    let began = Instant::now();
    loop {
        let notes = node_down_notes(&rig.receiver.requests());
        let firing = notes
            .iter()
            .find(|n| n.node == victim && n.firing && n.at_ms >= kill_ms);
        let resolved = notes
            .iter()
            .find(|n| n.node == victim && !n.firing && n.at_ms >= t.restart_ms);
        t.firing_ms = firing.map(|n| (n.at_ms - kill_ms) as f64);
        t.resolved_ms = resolved.map(|n| (n.at_ms - t.restart_ms) as f64);
        if (firing.is_some() && resolved.is_some()) || began.elapsed() >= NOTIFY_TIMEOUT {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    let mut takeover = t.takeover_ms.clone();
    let window = Window {
        n,
        victim,
        kill: kill_ms,
        restart: t.restart_ms,
        to: i64::MAX,
    };
    let (mut same, mut inter) = (Doubles::default(), Doubles::default());
    rig.poller.with(|o| {
        same.add(&o.same_moment, &window);
        inter.add(&o.interleaved(), &window);
    });
    progress(&format!(
        "trial {n}/{of} ({} kill): node {victim} with {} targets; down seen {}, map {}, \
         {}all scraped {}; takeover p50 {} max {}; restart: alive {}, settled {}; \
         FIRING {}, RESOLVED {}; double owners: same moment {}, interleaved {}; \
         handback max {}; victim stored {} samples of {} targets it does not own{}",
        kind.as_str(),
        t.orphans,
        secs(t.down_seen_ms),
        secs(t.map_seen_ms),
        t.new_leader_ms
            .map_or(String::new(), |l| format!("new leader {}, ", secs(Some(l)))),
        secs(t.all_scraped_ms),
        secs(Some(percentile(&mut takeover, 50.0))),
        secs(takeover.iter().copied().reduce(f64::max)),
        secs(t.alive_ms),
        secs(t.settled_ms),
        secs(t.firing_ms),
        secs(t.resolved_ms),
        same.cell(),
        inter.cell(),
        secs(t.handback_gap_ms.iter().copied().reduce(f64::max)),
        t.stale_samples,
        t.stale_targets,
        if t.errors.is_empty() {
            String::new()
        } else {
            format!("; PROBLEMS: {}", t.errors.join("; "))
        }
    ));
    Ok(t)
}

// ---------------------------------------------------------------------------
// Notifications

/// One node_down notification at the receiver.
#[derive(Debug, Clone)]
struct NodeNote {
    at_ms: i64,
    key: String,
    node: u64,
    firing: bool,
}

/// Every node_down notification in the Herd JSON documents the receiver accepted.
fn node_down_notes(reqs: &[Received]) -> Vec<NodeNote> {
    let mut out = Vec::new();
    for r in reqs.iter().filter(|r| r.accepted()) {
        let Ok(doc) = serde_json::from_slice::<Value>(&r.body) else {
            continue;
        };
        for n in doc["notifications"].as_array().into_iter().flatten() {
            if n["alert"]["rule"] != NODE_DOWN_RULE {
                continue;
            }
            let node = n["alert"]["target"]
                .as_str()
                .and_then(|t| t.strip_prefix(NODE_TARGET_PREFIX))
                .and_then(|id| id.parse().ok())
                .unwrap_or(0);
            out.push(NodeNote {
                at_ms: r.ts_ms,
                key: n["idempotency_key"].as_str().unwrap_or_default().into(),
                node,
                firing: n["kind"] == "firing",
            });
        }
    }
    out
}

/// Double-owner sightings inside the trials' windows: after the kill (until the
/// restart) and after the restart (until the next kill), and the targets involved.
#[derive(Debug, Default, Clone)]
struct Doubles {
    after_kill: usize,
    after_restart: usize,
    /// Sightings where one of the two nodes is the trial's victim (restarted).
    with_victim: usize,
    targets: BTreeSet<String>,
}

impl Doubles {
    fn add(&mut self, list: &[Double], w: &Window) {
        for d in list.iter().filter(|d| d.at_ms >= w.kill && d.at_ms < w.to) {
            if d.at_ms < w.restart {
                self.after_kill += 1;
            } else {
                self.after_restart += 1;
            }
            if d.nodes.contains(&w.victim) {
                self.with_victim += 1;
            }
            self.targets.insert(d.target.clone());
        }
    }
    fn total(&self) -> usize {
        self.after_kill + self.after_restart
    }
    fn cell(&self) -> String {
        format!(
            "{} ({} / {}; {} targets; {} with the victim)",
            self.total(),
            self.after_kill,
            self.after_restart,
            self.targets.len(),
            self.with_victim
        )
    }
    fn to_json(&self) -> Value {
        json!({
            "after_kill": self.after_kill,
            "after_restart": self.after_restart,
            "with_victim": self.with_victim,
            "targets": self.targets.len(),
        })
    }
}

/// A trial's stretch of time: from its kill to the next trial's kill (the last:
/// to the end), split at its restart.
#[derive(Debug, Clone, Copy)]
struct Window {
    n: usize,
    victim: u64,
    kill: i64,
    restart: i64,
    to: i64,
}

/// Per kind of trial: notifications expected, got, duplicated and missing.
#[derive(Debug, Default, Clone, Copy)]
struct NoteCount {
    expected: usize,
    got: usize,
    duplicates: usize,
    missing: usize,
}

impl NoteCount {
    fn add(&mut self, got: usize) {
        self.expected += 1;
        self.got += got;
        self.duplicates += got.saturating_sub(1);
        self.missing += usize::from(got == 0);
    }
}

// ---------------------------------------------------------------------------
// Report

struct Machine {
    cpus: usize,
    load_start: String,
    load_end: String,
    host_busy_pct: f64,
}

/// n, p50, p99 and max of a sample.
#[derive(Debug, Clone, Copy)]
struct Dist {
    n: usize,
    p50: f64,
    p99: f64,
    max: f64,
    mean: f64,
}

impl Dist {
    fn of(mut v: Vec<f64>) -> Dist {
        let mean = if v.is_empty() {
            f64::NAN
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        };
        Dist {
            n: v.len(),
            p50: percentile(&mut v, 50.0),
            p99: percentile(&mut v, 99.0),
            max: v.iter().copied().fold(f64::NAN, f64::max),
            mean,
        }
    }
    fn to_json(self) -> Value {
        let f = |x: f64| if x.is_nan() { Value::Null } else { json!(x) };
        json!({ "n": self.n, "p50": f(self.p50), "p99": f(self.p99), "max": f(self.max), "mean": f(self.mean) })
    }
    /// "p50 / p99 / max" of milliseconds, in seconds.
    fn s3(self) -> String {
        if self.n == 0 {
            return "-".into();
        }
        format!(
            "{:.2} / {:.2} / {:.2} s",
            self.p50 / 1000.0,
            self.p99 / 1000.0,
            self.max / 1000.0
        )
    }
    /// "p50 / max" of milliseconds, in seconds.
    fn s2(self) -> String {
        if self.n == 0 {
            return "-".into();
        }
        format!("{:.2} / {:.2} s", self.p50 / 1000.0, self.max / 1000.0)
    }
    /// "mean / max" of counts.
    fn count(self) -> String {
        if self.n == 0 {
            return "-".into();
        }
        format!("{:.2} / {:.0}", self.mean, self.max)
    }
}

/// The figures of one kind of trial.
struct Column {
    trials: usize,
    orphans: usize,
    takeover: Dist,
    down_seen: Dist,
    map_seen: Dist,
    new_leader: Dist,
    all_scraped: Dist,
    missed_hole: Dist,
    missed_from_kill: Dist,
    tail_lost: Dist,
    not_taken: usize,
    first_by_other: usize,
    alive: Dist,
    settled: Dist,
    firing_at: Dist,
    resolved_at: Dist,
    stale_samples: usize,
    stale_targets: usize,
    stale_trials: usize,
    handback_gap: Dist,
    missed_handback: Dist,
    firing: NoteCount,
    resolved: NoteCount,
    unexpected: usize,
    same_moment: Doubles,
    interleaved: Doubles,
    problems: usize,
}

impl Column {
    fn of(trials: &[&Trial], windows: &[Window], notes: &[NodeNote], f: &Findings) -> Column {
        let all =
            |g: &dyn Fn(&Trial) -> Vec<f64>| Dist::of(trials.iter().flat_map(|t| g(t)).collect());
        let one = |g: &dyn Fn(&Trial) -> Option<f64>| {
            Dist::of(trials.iter().filter_map(|t| g(t)).collect())
        };
        let mut firing = NoteCount::default();
        let mut resolved = NoteCount::default();
        let mut unexpected = 0;
        let mut same_moment = Doubles::default();
        let mut interleaved = Doubles::default();
        for t in trials {
            let Some(w) = windows.iter().find(|w| w.n == t.n) else {
                continue;
            };
            let inside = |at: i64| at >= w.kill && at < w.to;
            let mine: Vec<&NodeNote> = notes.iter().filter(|n| inside(n.at_ms)).collect();
            firing.add(
                mine.iter()
                    .filter(|n| n.node == t.victim && n.firing)
                    .count(),
            );
            resolved.add(
                mine.iter()
                    .filter(|n| n.node == t.victim && !n.firing)
                    .count(),
            );
            unexpected += mine.iter().filter(|n| n.node != t.victim).count();
            same_moment.add(&f.same_moment, w);
            interleaved.add(&f.interleaved, w);
        }
        Column {
            trials: trials.len(),
            orphans: trials.iter().map(|t| t.orphans).sum(),
            takeover: all(&|t| t.takeover_ms.clone()),
            down_seen: one(&|t| t.down_seen_ms),
            map_seen: one(&|t| t.map_seen_ms),
            new_leader: one(&|t| t.new_leader_ms),
            all_scraped: one(&|t| t.all_scraped_ms),
            missed_hole: all(&|t| t.missed_hole.clone()),
            missed_from_kill: all(&|t| t.missed_from_kill.clone()),
            tail_lost: all(&|t| t.tail_lost_ms.clone()),
            not_taken: trials.iter().map(|t| t.not_taken).sum(),
            first_by_other: trials.iter().map(|t| t.first_by_other).sum(),
            alive: one(&|t| t.alive_ms),
            settled: one(&|t| t.settled_ms),
            firing_at: one(&|t| t.firing_ms),
            stale_samples: trials.iter().map(|t| t.stale_samples).sum(),
            stale_targets: trials.iter().map(|t| t.stale_targets).sum(),
            stale_trials: trials.iter().filter(|t| t.stale_samples > 0).count(),
            handback_gap: all(&|t| t.handback_gap_ms.clone()),
            missed_handback: all(&|t| t.missed_handback.clone()),
            resolved_at: one(&|t| t.resolved_ms),
            firing,
            resolved,
            unexpected,
            same_moment,
            interleaved,
            problems: trials.iter().map(|t| t.errors.len()).sum(),
        }
    }

    fn to_json(&self) -> Value {
        let nc = |c: NoteCount| json!({ "expected": c.expected, "got": c.got, "duplicates": c.duplicates, "missing": c.missing });
        json!({
            "trials": self.trials,
            "orphans": self.orphans,
            "takeover_ms": self.takeover.to_json(),
            "down_seen_ms": self.down_seen.to_json(),
            "map_seen_ms": self.map_seen.to_json(),
            "new_leader_ms": self.new_leader.to_json(),
            "all_scraped_ms": self.all_scraped.to_json(),
            "missed_scrapes_hole": self.missed_hole.to_json(),
            "missed_scrapes_from_kill": self.missed_from_kill.to_json(),
            "victim_tail_lost_ms": self.tail_lost.to_json(),
            "not_taken_over": self.not_taken,
            "first_sample_by_non_owner": self.first_by_other,
            "restart_to_alive_ms": self.alive.to_json(),
            "restart_to_settled_ms": self.settled.to_json(),
            "kill_to_firing_ms": self.firing_at.to_json(),
            "restart_to_resolved_ms": self.resolved_at.to_json(),
            "stale_samples": self.stale_samples,
            "stale_targets": self.stale_targets,
            "stale_trials": self.stale_trials,
            "handback_gap_ms": self.handback_gap.to_json(),
            "missed_scrapes_handback": self.missed_handback.to_json(),
            "firing": nc(self.firing),
            "resolved": nc(self.resolved),
            "unexpected_notifications": self.unexpected,
            "double_owner_same_moment": self.same_moment.to_json(),
            "double_owner_interleaved": self.interleaved.to_json(),
            "trial_problems": self.problems,
        })
    }
}

struct Report {
    owner: Column,
    leader: Column,
    opts_line: String,
    machine: Machine,
    findings: Findings,
    keys: (usize, usize, usize),
    before_trials: usize,
    stopped: Option<String>,
    errors: Vec<String>,
    json: Value,
}

impl Report {
    fn build(
        opts: &Options,
        trials: &[Trial],
        notes: &[NodeNote],
        findings: Findings,
        machine: Machine,
        stopped: Option<String>,
    ) -> Report {
        // Trial n's window: from its kill to the next kill (the last: to the end).
        let windows: Vec<Window> = trials
            .iter()
            .enumerate()
            .map(|(i, t)| Window {
                n: t.n,
                victim: t.victim,
                kill: t.kill_ms,
                restart: t.restart_ms,
                to: trials.get(i + 1).map_or(i64::MAX, |n| n.kill_ms),
            })
            .collect();
        let of = |k: Kind| -> Vec<&Trial> { trials.iter().filter(|t| t.kind == Some(k)).collect() };
        let owner = Column::of(&of(Kind::Owner), &windows, notes, &findings);
        let leader = Column::of(&of(Kind::Leader), &windows, notes, &findings);
        let mut per_key: BTreeMap<&str, usize> = BTreeMap::new();
        for n in notes {
            *per_key.entry(&n.key).or_default() += 1;
        }
        let keys = (
            notes.len(),
            per_key.len(),
            per_key.values().map(|c| c - 1).sum::<usize>(),
        );
        let first_kill = trials.first().map_or(i64::MAX, |t| t.kill_ms);
        let before_trials = notes.iter().filter(|n| n.at_ms < first_kill).count();
        let errors: Vec<String> = trials
            .iter()
            .flat_map(|t| t.errors.iter().map(move |e| format!("trial {}: {e}", t.n)))
            .collect();
        let doubles = |v: &[Double]| -> Vec<Value> {
            v.iter()
                .take(KEEP_DOUBLES)
                .map(|d| json!({ "at_ms": d.at_ms, "target": d.target, "nodes": d.nodes }))
                .collect()
        };
        let json = json!({
            "settings": {
                "nodes": NODES,
                "targets": opts.targets,
                "owner_kills": opts.owner_kills,
                "leader_kills": opts.leader_kills,
                "interval_ms": INTERVAL_MS,
                "heartbeat": HEARTBEAT, "election_min": ELECTION_MIN, "election_max": ELECTION_MAX,
                "beat_interval": BEAT_INTERVAL, "lease": LEASE, "failover_after_ms": FAILOVER_AFTER_MS,
                "poll_ms": POLL.as_millis() as u64,
                "herd_bin": herd_tests::herd_bin().display().to_string(),
            },
            "owner_kills": owner.to_json(),
            "leader_kills": leader.to_json(),
            "notifications": {
                "node_down_total": keys.0, "distinct_keys": keys.1, "duplicate_keys": keys.2,
                "before_trials": before_trials,
            },
            "poller": {
                "rounds": findings.rounds, "failed_calls": findings.failed_calls,
                "slowest_round_ms": findings.slowest_round_ms, "scrapes_seen": findings.scrapes_seen,
                "double_owner_same_moment": doubles(&findings.same_moment),
                "double_owner_interleaved": doubles(&findings.interleaved),
            },
            "maps": {
                "checked": findings.maps_checked, "with_problems": findings.map_problems,
                "examples": findings.map_examples, "versions": findings.map_versions,
                "conflicts": findings.map_conflicts, "conflict_examples": findings.conflict_examples,
            },
            "machine": {
                "cpus": machine.cpus, "loadavg_start": machine.load_start,
                "loadavg_end": machine.load_end, "host_busy_pct_of_one_core": machine.host_busy_pct,
            },
            "trials": trials.iter().map(|t| json!({
                "n": t.n, "kind": t.kind.map(Kind::as_str), "victim": t.victim,
                "kill_ms": t.kill_ms, "restart_ms": t.restart_ms, "orphans": t.orphans,
                "takeover_ms": Dist::of(t.takeover_ms.clone()).to_json(),
                "down_seen_ms": t.down_seen_ms, "map_seen_ms": t.map_seen_ms,
                "new_leader_ms": t.new_leader_ms, "all_scraped_ms": t.all_scraped_ms,
                "not_taken": t.not_taken, "first_by_other": t.first_by_other,
                "restart_to_alive_ms": t.alive_ms, "restart_to_settled_ms": t.settled_ms,
                "kill_to_firing_ms": t.firing_ms, "restart_to_resolved_ms": t.resolved_ms,
                "stale_samples": t.stale_samples, "stale_targets": t.stale_targets,
                "handback_gap_ms": Dist::of(t.handback_gap_ms.clone()).to_json(),
                "double_owner_same_moment": windows.iter().find(|w| w.n == t.n).map(|w| {
                    let mut d = Doubles::default();
                    d.add(&findings.same_moment, w);
                    d.to_json()
                }),
                "double_owner_interleaved": windows.iter().find(|w| w.n == t.n).map(|w| {
                    let mut d = Doubles::default();
                    d.add(&findings.interleaved, w);
                    d.to_json()
                }),
                "errors": t.errors,
            })).collect::<Vec<_>>(),
            "stopped": stopped,
        });
        Report {
            owner,
            leader,
            opts_line: format!(
                "{NODES} release `herd node` processes on 127.0.0.1, {} local targets (one port \
                 check each, every {} s), failover_after {} ms, lease {LEASE}, beats every \
                 {BEAT_INTERVAL}, election {ELECTION_MIN}-{ELECTION_MAX}",
                opts.targets,
                INTERVAL_MS / 1000,
                FAILOVER_AFTER_MS
            ),
            machine,
            findings,
            keys,
            before_trials,
            stopped,
            errors,
            json,
        }
    }

    fn print(&self) {
        let (o, l) = (&self.owner, &self.leader);
        println!("\n## Herd failover benchmark\n");
        println!("{}.\n", self.opts_line);
        println!("| | owner kills | leader kills |");
        println!("|---|---|---|");
        let row = |label: &str, a: String, b: String| println!("| {label} | {a} | {b} |");
        row("trials", o.trials.to_string(), l.trials.to_string());
        row(
            "orphaned targets (all trials)",
            o.orphans.to_string(),
            l.orphans.to_string(),
        );
        row(
            "**takeover** p50 / p99 / max (kill → first sample in a survivor's store)",
            o.takeover.s3(),
            l.takeover.s3(),
        );
        row(
            "kill → a survivor shows the node down, p50 / max",
            o.down_seen.s2(),
            l.down_seen.s2(),
        );
        row(
            "kill → a survivor names a new leader, p50 / max",
            o.new_leader.s2(),
            l.new_leader.s2(),
        );
        row(
            "kill → a survivor shows a new ownership map, p50 / max",
            o.map_seen.s2(),
            l.map_seen.s2(),
        );
        row(
            "kill → every orphan seen scraped (poller), p50 / max",
            o.all_scraped.s2(),
            l.all_scraped.s2(),
        );
        row(
            "**missed scrapes** per orphan, hole in the stored series: mean / max",
            o.missed_hole.count(),
            l.missed_hole.count(),
        );
        row(
            "missed scrapes per orphan, floor(takeover s) − 1: mean / max",
            o.missed_from_kill.count(),
            l.missed_from_kill.count(),
        );
        row(
            "kill − victim's last stored sample (unflushed samples lost), p50 / max",
            o.tail_lost.s2(),
            l.tail_lost.s2(),
        );
        row(
            "orphans never sampled by a survivor / first sampled by a non-owner",
            format!("{} / {}", o.not_taken, o.first_by_other),
            format!("{} / {}", l.not_taken, l.first_by_other),
        );
        row(
            "restart → survivors show it alive, p50 / max",
            o.alive.s2(),
            l.alive.s2(),
        );
        row(
            "restart → settled (rebalanced, its share scraped), p50 / max",
            o.settled.s2(),
            l.settled.s2(),
        );
        row(
            "**double owners**, same moment (two nodes' rows < 1 s old): sightings (after kill / after restart; targets; involving the victim) — must be 0",
            o.same_moment.cell(),
            l.same_moment.cell(),
        );
        row(
            "**double owners**, interleaved scrapes (after kill / after restart; targets; involving the victim) — must be 0",
            o.interleaved.cell(),
            l.interleaved.cell(),
        );
        let stale = |c: &Column| {
            format!(
                "{} samples of {} targets, in {} of {} trials",
                c.stale_samples, c.stale_targets, c.stale_trials, c.trials
            )
        };
        row(
            "handback after the restart: survivor's last → victim's first sample, p50 / p99 / max",
            o.handback_gap.s3(),
            l.handback_gap.s3(),
        );
        row(
            "missed scrapes per target handed back: mean / max",
            o.missed_handback.count(),
            l.missed_handback.count(),
        );
        row(
            "samples the restarted node stored for targets owned by others — must be 0",
            stale(o),
            stale(l),
        );
        let nc = |c: NoteCount| {
            format!(
                "{}/{} , dup {}, missing {}",
                c.got, c.expected, c.duplicates, c.missing
            )
        };
        row(
            "node_down FIRING per kill: got/expected, duplicates, missing",
            nc(o.firing),
            nc(l.firing),
        );
        row(
            "node_down RESOLVED per restart: got/expected, duplicates, missing",
            nc(o.resolved),
            nc(l.resolved),
        );
        row(
            "kill → FIRING at the webhook, p50 / max",
            o.firing_at.s2(),
            l.firing_at.s2(),
        );
        row(
            "restart → RESOLVED at the webhook, p50 / max",
            o.resolved_at.s2(),
            l.resolved_at.s2(),
        );
        row(
            "node_down about a node not killed in the trial",
            o.unexpected.to_string(),
            l.unexpected.to_string(),
        );
        let f = &self.findings;
        println!();
        println!(
            "- Idempotency keys: {} node_down notifications, {} distinct keys, {} duplicated; \
             {} before the first kill.",
            self.keys.0, self.keys.1, self.keys.2, self.before_trials
        );
        println!(
            "- Committed maps: {} full statuses checked ({} ownership versions): {} with a \
             problem, {} versions whose maps differ between nodes.",
            f.maps_checked, f.map_versions, f.map_problems, f.map_conflicts
        );
        println!(
            "- Poller: {} rounds every {} ms, {} failed calls (a dead or starting node), \
             slowest round {} ms, {} distinct scrapes seen; double owners outside the trials' \
             windows are not in the table (same moment {}, interleaved {} in all).",
            f.rounds,
            POLL.as_millis(),
            f.failed_calls,
            f.slowest_round_ms,
            f.scrapes_seen,
            f.same_moment.len(),
            f.interleaved.len()
        );
        for d in f.same_moment.iter().take(5) {
            println!(
                "  - same moment at {}: {} on nodes {:?}",
                d.at_ms, d.target, d.nodes
            );
        }
        for d in f.interleaved.iter().take(5) {
            println!(
                "  - interleaved at {}: {} by nodes {:?} (the first resumed after the others)",
                d.at_ms, d.target, d.nodes
            );
        }
        for e in f.map_examples.iter().chain(&f.conflict_examples).take(5) {
            println!("  - map: {e}");
        }
        for e in self.errors.iter().take(10) {
            println!("- Problem: {e}");
        }
        if let Some(s) = &self.stopped {
            println!("- **Incomplete**: {s}.");
        }
        let m = &self.machine;
        println!(
            "- Machine: {} CPUs; load average {} at the start, {} at the end; the host was \
             busy {:.0}% of one core during the trials.",
            m.cpus, m.load_start, m.load_end, m.host_busy_pct
        );
        println!(
            "- Caveat: the three nodes, their {} scrapes a second, the poller and this bench \
             share those CPUs; timings include the scheduling delays of a loaded machine \
             (and of anything else running on it) and are not those of dedicated hosts.",
            self.json["settings"]["targets"]
        );
    }
}

// ---------------------------------------------------------------------------
// The host

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}
