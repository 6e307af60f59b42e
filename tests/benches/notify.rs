//! Notification benchmark: how long a breach takes to reach a webhook, and how many
//! notifications per second one `herd node` pushes through its durable outbox.
//!
//! Run it with `scripts/bench notify` (builds the release `herd` first). Arguments:
//!
//! ```text
//! scripts/bench notify                  everything (latency, then throughput; ~5 min)
//! scripts/bench notify latency          breach-to-delivery only
//! scripts/bench notify throughput       outbox throughput only
//! options: --targets N   targets of the latency part (default 20)
//!          --breaches N  breaches of the latency part (default 60)
//!          --duration S  how long the breaches are spread over (default 180)
//!          --interval S  scrape interval of the latency part (default 10)
//!          --nodes N     run the latency part on a herd of N nodes (default 1; 2-5)
//!          --burst M     targets going critical together in the throughput part (default 500)
//!          --burst-interval S  their scrape interval (default 2)
//!          --hung        every rule also routes to a second webhook channel whose
//!                        receiver accepts connections and never answers (the
//!                        figures are then those of the healthy channel beside it)
//! ```
//!
//! **The node** is the release `herd` binary (the harness's [`Herd`], flush_interval
//! 1 s as the node's default), watching its own host: every target is
//! `transport = "local"` with one `file_fresh` check on a file this bench creates
//! and deletes, and one rule per check (`check = NAME`, `kind = "range"`, no `for`)
//! routed to one webhook channel with `group_window = "0s"`, so grouping adds no
//! delay. The channel posts Herd's JSON document to the **receiver**: the harness's
//! HTTP/1.1 server in this process (blocking accept, a thread per connection) that records
//! when each request was complete (wall clock, µs), its `Idempotency-Key` header and
//! every notification of its body.
//!
//! **A herd** (`--nodes N`, latency part only): N release nodes formed with
//! `cluster init` / `cluster join` (the harness's [`Cluster`]), the fleet applied
//! through node 1, so the leader spreads the targets over all nodes. An owner then
//! sends a notification only once the herd has recorded it through Raft (a follower
//! forwards that write to the leader and waits for its own copy), which is what
//! this mode measures: scrape → webhook is split by whether the target's owner is the
//! leader or a follower. CPU, commits and the log stages are summed over the nodes.
//!
//! **Latency.** Each breach deletes one target's file at a random moment (so at a
//! random phase of the scrape interval), waits for the firing webhook, restores the
//! file and waits for the resolved one, so every breach is a new firing episode.
//! Reported: deletion → webhook arrival (goal: ≤ interval + 1 s), and the part
//! after the scrape that saw it: arrival − `alert.active_since_ms` (the sample's
//! timestamp, taken when the scrape starts; goal ≤ 100 ms). The node's JSON log
//! ("alert transition" is logged before the transition's commit) splits the
//! latter into scrape → rules engine and rules engine → webhook.
//!
//! **Throughput.** M targets scraped every 2 s (the node spreads each target's
//! scrapes over its interval, so the M alerts are created within about one
//! interval). Each local scrape is an `sh` fork: 500 a second take about 1.5 cores
//! on their own (the steady CPU of the node's children in the table), which on a
//! 2-CPU host starves the node and the drain measures that; `--burst-interval 1`
//! creates the alerts within a second where there are cores to spare.
//! Burst A: all M files are deleted at once (in the middle of the longest pause
//! between the targets' scrapes, from their last verdict times, should they be
//! bunched), and M firing notifications go out as fast as the scrapes see them.
//! Burst B: the receiver holds every request it gets while all M files are
//! restored, until the node's outbox holds all M resolved
//! notifications, then lets go, and the outbox drains the backlog. Reported:
//! notifications per second (A: first to last arrival; B: release to last arrival),
//! the lag from each notification's sample to its arrival, the most connections open
//! at once, store commits, and that every idempotency key arrived exactly once. The
//! node's log is kept as `target/bench/notify-{latency,throughput}-node.log`.
//!
//! Results: a table on stdout, and `target/bench/notify.json`. Progress on stderr.
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use herd_proto::v1::herd_client::HerdClient;
use herd_proto::v1::{AlertsReply, AlertsRequest, StatusReply};
use herd_tests::bench::{
    bench_setup, client_runtime, host_busy_s, node_status, percentile, progress, target_dir,
    write_report, BenchArgs,
};
use herd_tests::{Cluster, Herd, HerdOptions, HttpReceiver, Received};
use rand::Rng;
use serde_json::{json, Value};

/// The webhook channel every rule routes to.
const CHANNEL: &str = "hook";
/// Longest wait for one gRPC call.
const RPC_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for every target to have an ok verdict after the node started.
const WARMUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the latency loop looks at arrivals and the breach plan.
const TICK: Duration = Duration::from_millis(5);
/// Longest wait for a burst's notifications.
const BURST_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for the outbox to hold the whole backlog while the receiver holds.
const BACKLOG_TIMEOUT: Duration = Duration::from_secs(20);
/// fsync probes of the data directory's file system.
const FSYNC_PROBES: usize = 100;

const USAGE: &str = "usage: notify [latency] [throughput] [--targets N] [--breaches N] \
[--duration S] [--interval S] [--nodes N] [--burst M] [--burst-interval S] [--hung]
  no mode: latency, then throughput";

fn main() {
    let opts = Options::parse();
    bench_setup("notify");
    let rt = client_runtime();

    let started = Instant::now();
    let receiver = Receiver::start();
    progress(&format!("receiver listening on {}", receiver.url()));
    let fsync = fsync_probe();
    progress(&format!(
        "fsync of a 4 KiB write in {}: p50 {:.2} ms, p99 {:.2} ms",
        std::env::temp_dir().display(),
        fsync.0,
        fsync.1
    ));
    let latency = opts.latency.then(|| bench_latency(&rt, &receiver, &opts));
    let throughput = opts
        .throughput
        .then(|| bench_throughput(&rt, &receiver, &opts));
    drop(receiver);

    let report = json!({
        "settings": {
            "targets": opts.targets,
            "breaches": opts.breaches,
            "duration_s": opts.duration.as_secs_f64(),
            "interval_s": opts.interval_s,
            "nodes": opts.nodes,
            "burst": opts.burst,
            "burst_interval_s": opts.burst_interval_s,
            "group_window": "0s",
            "hung_channel": opts.hung.is_some(),
            "herd_bin": herd_tests::herd_bin().display().to_string(),
        },
        "machine": machine(fsync),
        "latency": latency.as_ref().map(Latency::to_json),
        "throughput": throughput.as_ref().map(Throughput::to_json),
        "total_s": started.elapsed().as_secs_f64(),
    });
    print_table(&opts, latency.as_ref(), throughput.as_ref(), fsync);
    write_report("notify", &report);
    eprintln!("bench took {:.0} s", started.elapsed().as_secs_f64());
}

#[derive(Debug)]
struct Options {
    latency: bool,
    throughput: bool,
    targets: usize,
    breaches: usize,
    duration: Duration,
    interval_s: u64,
    /// Nodes of the latency part (1: one node; more: a herd).
    nodes: u64,
    burst: usize,
    burst_interval_s: u64,
    /// The URL of a receiver that never answers, routed to beside the healthy one.
    hung: Option<String>,
}

impl Options {
    fn parse() -> Options {
        let mut a = BenchArgs::from_env("notify", USAGE);
        let targets = a.number("--targets", 20, 1..=1000) as usize;
        let breaches = a.number("--breaches", 60, 1..=10_000) as usize;
        let duration = a.seconds("--duration", 180, 1..=3600);
        let interval_s = a.number("--interval", 10, 1..=600);
        let nodes = a.number("--nodes", 1, 1..=5);
        let burst = a.number("--burst", 500, 1..=5000) as usize;
        let burst_interval_s = a.number("--burst-interval", 2, 1..=60);
        let hung = a.switch("--hung").then(hung_receiver);
        let all = a.word("all");
        let mut latency = a.word("latency") || all;
        let mut throughput = a.word("throughput") || all;
        a.finish();
        if !latency && !throughput {
            latency = true;
            throughput = true;
        }
        let per_target = breaches.div_ceil(targets) as u64;
        let slot = duration.as_secs() / per_target.max(1);
        if latency && slot < 2 * interval_s + 6 {
            a.fail(&format!(
                "{breaches} breaches on {targets} targets in {} s leave {slot} s per breach; \
                 each needs 2 intervals + 6 s (firing, restore, resolved): raise --duration \
                 or --targets",
                duration.as_secs()
            ));
        }
        Options {
            latency,
            throughput,
            targets,
            breaches,
            duration,
            interval_s,
            nodes,
            burst,
            burst_interval_s,
            hung,
        }
    }
}

/// The most connections the hung receiver holds (then it stops accepting: the
/// kernel's backlog holds the rest, unanswered too).
const HUNG_MAX_CONNECTIONS: usize = 4096;

/// A receiver that accepts connections and never answers: a channel routed to it
/// waits for its timeout on every send. Its URL.
fn hung_receiver() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding the hung receiver");
    let addr = listener.local_addr().expect("its address");
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().take(HUNG_MAX_CONNECTIONS) {
            match conn {
                Ok(c) => held.push(c),
                Err(_) => break,
            }
        }
        // Hold them until the process ends.
        std::thread::park();
        drop(held);
    });
    format!("http://{addr}/hung")
}

/// The second channel's name with `--hung`.
const HUNG_CHANNEL: &str = "hung";

// ---------------------------------------------------------------------------
// The fleet

/// One `[[target]]` with its `file_fresh` check and the `[[rule]]` on that check.
fn target_and_rule(name: &str, check: &str, path: &Path, interval_s: u64, hung: bool) -> String {
    let channels = if hung {
        format!("\"{CHANNEL}\", \"{HUNG_CHANNEL}\"")
    } else {
        format!("\"{CHANNEL}\"")
    };
    format!(
        "[[target]]\nname = \"{name}\"\ntransport = \"local\"\ninterval = \"{interval_s}s\"\n\
         checks = [{{ kind = \"file_fresh\", name = \"{check}\", path = \"{path}\", \
         max_age = \"1h\" }}]\n\n\
         [[rule]]\nname = \"{check}\"\ntargets = [\"{name}\"]\ncheck = \"{check}\"\n\
         kind = \"range\"\nseverity = \"critical\"\nchannels = [{channels}]\n\n",
        path = path.display()
    )
}

/// The webhook channel to the receiver, without grouping delay.
fn channel(url: &str, group_window: &str, hung: Option<&str>) -> String {
    let one = |name: &str, url: &str| {
        format!(
            "[[channel]]\nname = \"{name}\"\nkind = \"webhook\"\nurl = \"{url}\"\n\
             group_window = \"{group_window}\"\ntimeout = \"30s\"\n"
        )
    };
    let mut text = one(CHANNEL, url);
    if let Some(h) = hung {
        text.push_str(&one(HUNG_CHANNEL, h));
    }
    text
}

/// A fleet of `n` targets watching files in `dir`; `herd check` must accept a zero
/// group window, else 1 ms is used (reported).
struct Fleet {
    names: Vec<String>,
    files: Vec<PathBuf>,
    text: String,
    group_window: &'static str,
}

fn fleet(
    prefix: &str,
    n: usize,
    interval_s: u64,
    dir: &Path,
    url: &str,
    hung: Option<&str>,
) -> Fleet {
    let width = n.saturating_sub(1).to_string().len().max(2);
    let mut names = Vec::with_capacity(n);
    let mut files = Vec::with_capacity(n);
    let mut targets = String::with_capacity(n * 400);
    for i in 0..n {
        let name = format!("{prefix}-{i:0width$}");
        let file = dir.join(format!("{name}.stamp"));
        std::fs::write(&file, b"fresh\n").expect("creating a watched file");
        targets.push_str(&target_and_rule(
            &name,
            &format!("fresh-{i:0width$}"),
            &file,
            interval_s,
            hung.is_some(),
        ));
        names.push(name);
        files.push(file);
    }
    let mut group_window = "0s";
    let mut text = format!("{targets}{}", channel(url, group_window, hung));
    let path = dir.join("fleet-check.toml");
    std::fs::write(&path, &text).expect("writing fleet.toml");
    let out = herd_tests::herd_cli(
        &["check", &path.display().to_string()],
        Duration::from_secs(30),
    );
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        if !err.contains("group_window") {
            panic!("herd check refused the bench's fleet:\n{err}");
        }
        progress(&format!(
            "group_window = \"0s\" refused ({}); using 1ms",
            err.trim()
        ));
        group_window = "1ms";
        text = format!("{targets}{}", channel(url, group_window, hung));
    }
    Fleet {
        names,
        files,
        text,
        group_window,
    }
}

/// Starts the node on `fleet` and waits until every target's check said ok.
fn start_node(rt: &tokio::runtime::Runtime, fleet: &Fleet, what: &str) -> (Herd, i32, f64) {
    progress(&format!(
        "{what}: starting herd node (release) with {} targets",
        fleet.names.len()
    ));
    let herd = Herd::start(HerdOptions {
        flush_interval: "1s".into(),
        fleet: Some(fleet.text.clone()),
        ..Default::default()
    });
    let pid = node_pid(&herd);
    let warmup = wait_all_ok(rt, std::slice::from_ref(&herd), fleet, what);
    progress(&format!(
        "{what}: every target ok after {warmup:.1} s (node pid {pid})"
    ));
    (herd, pid, warmup)
}

/// Waits until every target of `fleet` has an ok verdict on the node that owns it
/// (each node's own status); returns the seconds waited.
fn wait_all_ok(rt: &tokio::runtime::Runtime, herds: &[Herd], fleet: &Fleet, what: &str) -> f64 {
    let t0 = Instant::now();
    let mut last_print = Instant::now();
    loop {
        let ok: usize = herds
            .iter()
            .map(|h| {
                status(rt, &h.addr())
                    .map(|s| {
                        s.targets
                            .iter()
                            .filter(|t| t.checks.iter().any(|c| c.status == "ok"))
                            .count()
                    })
                    .unwrap_or(0)
            })
            .sum();
        if ok == fleet.names.len() {
            return t0.elapsed().as_secs_f64();
        }
        if t0.elapsed() > WARMUP_TIMEOUT {
            for h in herds {
                h.dump_logs();
            }
            panic!(
                "{what}: only {ok}/{} targets ok after {WARMUP_TIMEOUT:?}",
                fleet.names.len()
            );
        }
        if last_print.elapsed() > Duration::from_secs(5) {
            progress(&format!(
                "{what}: warm-up, {ok}/{} targets ok",
                fleet.names.len()
            ));
            last_print = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The nodes of the latency part: one node, or a herd (node 1 first).
struct Nodes {
    herds: Vec<Herd>,
    pids: Vec<i32>,
    /// Target → whether its owner was the leader once every target was ok (a
    /// herd only: the map does not change while nothing joins or dies).
    on_leader: HashMap<String, bool>,
    warmup_s: f64,
}

impl Nodes {
    fn start(rt: &tokio::runtime::Runtime, fleet: &Fleet, what: &str, n: u64) -> Nodes {
        if n == 1 {
            let (herd, pid, warmup_s) = start_node(rt, fleet, what);
            return Nodes {
                herds: vec![herd],
                pids: vec![pid],
                on_leader: HashMap::new(),
                warmup_s,
            };
        }
        progress(&format!(
            "{what}: starting a herd of {n} nodes (release) with {} targets",
            fleet.names.len()
        ));
        let mut cluster = Cluster::start(
            n,
            HerdOptions {
                flush_interval: "1s".into(),
                ..Default::default()
            },
        );
        cluster.apply(1, &fleet.text);
        let herds: Vec<Herd> = (1..=n).map(|id| cluster.forget(id)).collect();
        let pids: Vec<i32> = herds.iter().map(node_pid).collect();
        let warmup_s = wait_all_ok(rt, &herds, fleet, what);
        let mut on_leader = HashMap::new();
        for h in &herds {
            let s = status(rt, &h.addr()).unwrap_or_else(|e| panic!("{what}: {e}"));
            let leads = s.leader == Some(s.node_id);
            for t in &s.targets {
                on_leader.insert(t.name.clone(), leads);
            }
        }
        let led = on_leader.values().filter(|l| **l).count();
        progress(&format!(
            "{what}: every target ok after {warmup_s:.1} s; {led} owned by the leader, {} by \
             followers (pids {pids:?})",
            on_leader.len() - led
        ));
        Nodes {
            herds,
            pids,
            on_leader,
            warmup_s,
        }
    }

    fn cpu(&self) -> Cpu {
        cpu_of(&self.pids)
    }

    /// Store commits of every node.
    fn commits(&self, rt: &tokio::runtime::Runtime) -> Option<u64> {
        self.herds
            .iter()
            .map(|h| status(rt, &h.addr()).ok().map(|s| s.store_commits))
            .sum()
    }

    fn log(&self) -> NodeLog {
        let mut log = NodeLog::default();
        for h in &self.herds {
            let l = NodeLog::read(&h.log_path());
            for (k, v) in l.transitions {
                log.transitions.entry(k).or_default().extend(v);
            }
            log.delivered.extend(l.delivered);
        }
        log
    }

    /// Stops every node; the seconds the slowest took.
    fn stop(self, what: &str, errors: &mut Vec<String>) -> f64 {
        let one = self.herds.len() == 1;
        self.herds
            .into_iter()
            .map(|h| {
                let name = if one {
                    what.to_string()
                } else {
                    format!("{what}-{}", h.id())
                };
                stop_node(h, &name, errors)
            })
            .fold(0.0, f64::max)
    }
}

/// Stops the node (SIGTERM) and keeps its log as `target/bench/notify-WHAT-node.log`.
fn stop_node(mut herd: Herd, what: &str, errors: &mut Vec<String>) -> f64 {
    let t = Instant::now();
    let status = herd.sigterm();
    if !status.success() {
        errors.push(format!("node exited with {status} after SIGTERM"));
    }
    let stopped = t.elapsed().as_secs_f64();
    let kept = target_dir().join(format!("bench/notify-{what}-node.log"));
    if let Some(dir) = kept.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::copy(herd.log_path(), &kept) {
        Ok(_) => progress(&format!("{what}: node log kept in {}", kept.display())),
        Err(e) => errors.push(format!("cannot keep the node log: {e}")),
    }
    stopped
}

// ---------------------------------------------------------------------------
// Latency

#[derive(Debug)]
struct Breach {
    target: String,
    /// In a herd: whether the target's owner was the leader.
    on_leader: Option<bool>,
    deleted_ms: f64,
    active_since_ms: i64,
    arrival_ms: f64,
}

#[derive(Debug, Default)]
struct Latency {
    targets: usize,
    interval_s: u64,
    nodes: u64,
    planned: usize,
    breaches: Vec<Breach>,
    /// Breaches whose firing webhook did not come within 2 intervals + 10 s.
    missed: usize,
    /// Restores whose resolved webhook did not come in time.
    resolved_missing: usize,
    /// Restore → resolved webhook, ms.
    resolve_ms: Vec<f64>,
    /// Notifications that fit no breach (a second firing, a resolved too early).
    unexpected: usize,
    keys: KeyCheck,
    stages: Stages,
    warmup_s: f64,
    window_s: f64,
    node_cpu: Cpu,
    commits: u64,
    /// Host CPU used by other processes during the breaches, % of one core.
    other_cpu_pct: f64,
    group_window: &'static str,
    stop_s: f64,
    errors: Vec<String>,
}

#[derive(Debug)]
enum Phase {
    Idle,
    Deleted { at_ms: f64, at: Instant },
    Restored { at_ms: f64, at: Instant },
}

struct Watched {
    name: String,
    file: PathBuf,
    plan: Vec<Instant>,
    next: usize,
    phase: Phase,
}

fn bench_latency(rt: &tokio::runtime::Runtime, receiver: &Receiver, opts: &Options) -> Latency {
    let dir = tempfile::Builder::new()
        .prefix("herd-bench-notify-")
        .tempdir()
        .expect("temp dir");
    let fleet = fleet(
        "lat",
        opts.targets,
        opts.interval_s,
        dir.path(),
        &receiver.url(),
        opts.hung.as_deref(),
    );
    let nodes = Nodes::start(rt, &fleet, "latency", opts.nodes);
    let mut out = Latency {
        targets: opts.targets,
        interval_s: opts.interval_s,
        nodes: opts.nodes,
        planned: opts.breaches,
        warmup_s: nodes.warmup_s,
        group_window: fleet.group_window,
        ..Default::default()
    };

    // The plan: each target's breaches in slots of equal length, each at a random
    // moment of the slot's first part (the rest leaves time to fire and resolve).
    let per_target = opts.breaches.div_ceil(opts.targets);
    let slot = opts.duration / per_target as u32;
    let spread = slot - Duration::from_secs(2 * opts.interval_s + 5);
    let start = Instant::now();
    let mut rng = rand::rng();
    let mut watched: Vec<Watched> = fleet
        .names
        .iter()
        .zip(&fleet.files)
        .enumerate()
        .map(|(i, (name, file))| {
            let count =
                opts.breaches / opts.targets + usize::from(i < opts.breaches % opts.targets);
            let plan = (0..count)
                .map(|k| start + slot * k as u32 + spread.mul_f64(rng.random_range(0.0..1.0)))
                .collect();
            Watched {
                name: name.clone(),
                file: file.clone(),
                plan,
                next: 0,
                phase: Phase::Idle,
            }
        })
        .collect();
    let by_name: HashMap<String, usize> = fleet
        .names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.clone(), i))
        .collect();
    let give_up = Duration::from_secs(2 * opts.interval_s + 10);
    let deadline = start + opts.duration + give_up * 2;
    progress(&format!(
        "latency: {} breaches on {} targets over {} s (interval {} s)",
        opts.breaches,
        opts.targets,
        opts.duration.as_secs(),
        opts.interval_s
    ));

    let commits0 = nodes.commits(rt);
    let cpu0 = nodes.cpu();
    let other = OtherCpu::start(&nodes.pids);
    let base = receiver.len();
    let mut seen = base;
    let mut last_print = Instant::now();
    loop {
        for a in receiver.since(seen) {
            seen += 1;
            for n in &a.notes {
                let Some(&i) = by_name.get(&n.target) else {
                    out.unexpected += 1;
                    continue;
                };
                let w = &mut watched[i];
                match (n.kind.as_str(), &w.phase) {
                    ("firing", Phase::Deleted { at_ms, .. }) => {
                        out.breaches.push(Breach {
                            target: w.name.clone(),
                            on_leader: nodes.on_leader.get(&w.name).copied(),
                            deleted_ms: *at_ms,
                            active_since_ms: n.active_since_ms,
                            arrival_ms: a.at_ms,
                        });
                        restore(&w.file);
                        w.phase = Phase::Restored {
                            at_ms: now_ms_f64(),
                            at: Instant::now(),
                        };
                    }
                    ("resolved", Phase::Restored { at_ms, .. }) => {
                        out.resolve_ms.push(a.at_ms - at_ms);
                        w.phase = Phase::Idle;
                    }
                    _ => out.unexpected += 1,
                }
            }
        }
        let now = Instant::now();
        let mut done = true;
        for w in &mut watched {
            match w.phase {
                Phase::Idle if w.next < w.plan.len() && now >= w.plan[w.next] => {
                    if let Err(e) = std::fs::remove_file(&w.file) {
                        panic!("cannot delete {}: {e}", w.file.display());
                    }
                    w.phase = Phase::Deleted {
                        at_ms: now_ms_f64(),
                        at: Instant::now(),
                    };
                    w.next += 1;
                }
                Phase::Deleted { at, .. } if at.elapsed() > give_up => {
                    out.missed += 1;
                    out.errors.push(format!(
                        "{}: no firing webhook within {give_up:?} of the deletion",
                        w.name
                    ));
                    restore(&w.file);
                    w.phase = Phase::Restored {
                        at_ms: now_ms_f64(),
                        at: Instant::now(),
                    };
                }
                Phase::Restored { at, .. } if at.elapsed() > give_up => {
                    out.resolved_missing += 1;
                    w.phase = Phase::Idle;
                }
                _ => {}
            }
            done &= w.next == w.plan.len() && matches!(w.phase, Phase::Idle);
        }
        if done {
            break;
        }
        if now >= deadline {
            out.errors
                .push("the breach plan did not finish before its deadline".into());
            break;
        }
        if last_print.elapsed() >= Duration::from_secs(15) {
            let mut lat: Vec<f64> = out
                .breaches
                .iter()
                .map(|b| b.arrival_ms - b.deleted_ms)
                .collect();
            progress(&format!(
                "latency: {:.0} s, {}/{} breaches delivered, breach→webhook p50 {:.0} ms",
                start.elapsed().as_secs_f64(),
                out.breaches.len(),
                opts.breaches,
                percentile(&mut lat, 50.0)
            ));
            last_print = Instant::now();
        }
        std::thread::sleep(TICK);
    }
    out.window_s = start.elapsed().as_secs_f64();
    out.node_cpu = nodes.cpu() - cpu0;
    out.other_cpu_pct = other.pct(&nodes.pids);
    if out.other_cpu_pct > 10.0 {
        out.errors.push(format!(
            "other processes used {:.0}% of a core during the breaches: figures are disturbed",
            out.other_cpu_pct
        ));
    }
    if let (Some(c0), Some(c1)) = (commits0, nodes.commits(rt)) {
        out.commits = c1.saturating_sub(c0);
    }
    let arrivals = receiver.since(base);
    out.keys = KeyCheck::of(&arrivals, None);
    out.stages = Stages::of(&arrivals, &nodes.log(), "firing");
    out.stop_s = nodes.stop("latency", &mut out.errors);
    let mut lat: Vec<f64> = out
        .breaches
        .iter()
        .map(|b| b.arrival_ms - b.deleted_ms)
        .collect();
    progress(&format!(
        "latency: {} breaches delivered, {} missed; breach→webhook p50 {:.0} ms p99 {:.0} ms",
        out.breaches.len(),
        out.missed,
        percentile(&mut lat, 50.0),
        percentile(&mut lat, 99.0)
    ));
    out
}

fn restore(file: &Path) {
    if let Err(e) = std::fs::write(file, b"fresh\n") {
        panic!("cannot restore {}: {e}", file.display());
    }
}

impl Latency {
    fn breach_ms(&self) -> Vec<f64> {
        self.breaches
            .iter()
            .map(|b| b.arrival_ms - b.deleted_ms)
            .collect()
    }
    fn after_scrape_ms(&self) -> Vec<f64> {
        self.after_scrape_where(|_| true)
    }
    /// Scrape → webhook of the breaches whose owner was (`true`) or was not the
    /// leader (in a herd).
    fn after_scrape_on(&self, leader: bool) -> Vec<f64> {
        self.after_scrape_where(|b| b.on_leader == Some(leader))
    }
    fn after_scrape_where(&self, keep: impl Fn(&Breach) -> bool) -> Vec<f64> {
        self.breaches
            .iter()
            .filter(|b| keep(b))
            .map(|b| b.arrival_ms - b.active_since_ms as f64)
            .collect()
    }
    fn to_scrape_ms(&self) -> Vec<f64> {
        self.breaches
            .iter()
            .map(|b| b.active_since_ms as f64 - b.deleted_ms)
            .collect()
    }
    fn breach_goal_ms(&self) -> f64 {
        (self.interval_s * 1000 + 1000) as f64
    }

    fn to_json(&self) -> Value {
        let breach = Dist::of(self.breach_ms());
        let after = Dist::of(self.after_scrape_ms());
        json!({
            "targets": self.targets,
            "interval_s": self.interval_s,
            "group_window": self.group_window,
            "breaches_planned": self.planned,
            "breaches_delivered": self.breaches.len(),
            "breaches_missed": self.missed,
            "resolved_missing": self.resolved_missing,
            "unexpected_notifications": self.unexpected,
            "breach_to_webhook_ms": breach.to_json(),
            "breach_to_webhook_goal_ms": self.breach_goal_ms(),
            "breach_to_webhook_goal_met": breach.max <= self.breach_goal_ms(),
            "scrape_to_webhook_ms": after.to_json(),
            "scrape_to_webhook_goal_ms": 100.0,
            "scrape_to_webhook_goal_met": after.p99 <= 100.0,
            "nodes": self.nodes,
            "scrape_to_webhook_owner_leader_ms": Dist::of(self.after_scrape_on(true)).to_json(),
            "scrape_to_webhook_owner_follower_ms": Dist::of(self.after_scrape_on(false)).to_json(),
            "deletion_to_scrape_ms": Dist::of(self.to_scrape_ms()).to_json(),
            "restore_to_resolved_webhook_ms": Dist::of(self.resolve_ms.clone()).to_json(),
            "stages": self.stages.to_json(),
            "idempotency": self.keys.to_json(),
            "warmup_s": self.warmup_s,
            "window_s": self.window_s,
            "node_cpu_s": self.node_cpu.own,
            "node_children_cpu_s": self.node_cpu.children,
            "store_commits": self.commits,
            "other_host_cpu_pct_of_one_core": self.other_cpu_pct,
            "stop_s": self.stop_s,
            "breaches": self.breaches.iter().map(|b| json!({
                "target": b.target,
                "owner_is_leader": b.on_leader,
                "deleted_ms": b.deleted_ms,
                "active_since_ms": b.active_since_ms,
                "arrival_ms": b.arrival_ms,
            })).collect::<Vec<_>>(),
            "errors": self.errors,
        })
    }
}

// ---------------------------------------------------------------------------
// Throughput

#[derive(Debug, Default)]
struct Burst {
    expected: usize,
    /// Notifications of the burst's kind (first arrival of each key).
    delivered: usize,
    requests: usize,
    /// First and last arrival (unix ms) of the measured notifications.
    first_ms: f64,
    last_ms: f64,
    /// Where the measured span starts: the first arrival, or the release.
    from_ms: f64,
    /// Notifications measured (after `from_ms`).
    measured: usize,
    /// Arrival of each notification (unix ms), in order.
    arrivals_ms: Vec<f64>,
    /// Arrival − the notification's `ts_ms` (its sample's timestamp).
    after_scrape_ms: Vec<f64>,
    /// Spread of the sample timestamps that created the alerts.
    created_span_ms: f64,
    peak_connections: usize,
    commits: u64,
    node_cpu: Cpu,
    wall_s: f64,
    stages: Stages,
    /// Burst B: requests sent while the receiver held, how long it held, and the
    /// outbox size when it let go.
    held_requests: usize,
    held_notifications: usize,
    hold_s: f64,
    outbox_at_release: u64,
    /// Connections dropped by a full listen queue on the host during the burst.
    listen_overflows: u64,
    /// Host CPU used by other processes during the burst, % of one core.
    other_cpu_pct: f64,
    /// How close together the targets' scrapes were before the change (the
    /// interval minus the longest pause between them), ms.
    scrape_window_ms: f64,
}

impl Burst {
    fn span_s(&self) -> f64 {
        (self.last_ms - self.from_ms) / 1000.0
    }
    fn per_s(&self) -> f64 {
        if self.span_s() > 0.0 {
            self.measured as f64 / self.span_s()
        } else {
            f64::NAN
        }
    }
    fn to_json(&self) -> Value {
        json!({
            "expected": self.expected,
            "delivered": self.delivered,
            "requests": self.requests,
            "measured": self.measured,
            "span_s": self.span_s(),
            "notifications_per_s": self.per_s(),
            "first_arrival_ms": self.first_ms,
            "last_arrival_ms": self.last_ms,
            "span_from_ms": self.from_ms,
            "scrape_to_webhook_ms": Dist::of(self.after_scrape_ms.clone()).to_json(),
            "alerts_created_span_ms": self.created_span_ms,
            "peak_concurrent_connections": self.peak_connections,
            "store_commits": self.commits,
            "node_cpu_s": self.node_cpu.own,
            "node_children_cpu_s": self.node_cpu.children,
            "wall_s": self.wall_s,
            "stages": self.stages.to_json(),
            "held_requests": self.held_requests,
            "held_notifications": self.held_notifications,
            "hold_s": self.hold_s,
            "outbox_at_release": self.outbox_at_release,
            "listen_overflows": self.listen_overflows,
            "other_host_cpu_pct_of_one_core": self.other_cpu_pct,
            "scrape_window_before_ms": self.scrape_window_ms,
            "arrivals_ms_after_first": self.arrivals_ms.iter().map(|t| t - self.first_ms).collect::<Vec<_>>(),
        })
    }
}

#[derive(Debug, Default)]
struct Throughput {
    targets: usize,
    interval_s: u64,
    group_window: &'static str,
    warmup_s: f64,
    /// Node CPU with nothing firing, % of one core: own, and its `sh` children.
    steady_cpu_pct: (f64, f64),
    firing: Burst,
    backlog: Burst,
    keys: KeyCheck,
    stop_s: f64,
    errors: Vec<String>,
}

impl Throughput {
    fn to_json(&self) -> Value {
        json!({
            "targets": self.targets,
            "interval_s": self.interval_s,
            "group_window": self.group_window,
            "warmup_s": self.warmup_s,
            "steady_node_cpu_pct_of_one_core": self.steady_cpu_pct.0,
            "steady_node_children_cpu_pct_of_one_core": self.steady_cpu_pct.1,
            "burst_a_firing": self.firing.to_json(),
            "burst_b_backlog_resolved": self.backlog.to_json(),
            "idempotency": self.keys.to_json(),
            "stop_s": self.stop_s,
            "errors": self.errors,
        })
    }
}

fn bench_throughput(
    rt: &tokio::runtime::Runtime,
    receiver: &Receiver,
    opts: &Options,
) -> Throughput {
    let m = opts.burst;
    let dir = tempfile::Builder::new()
        .prefix("herd-bench-notify-")
        .tempdir()
        .expect("temp dir");
    let fleet = fleet(
        "tp",
        m,
        opts.burst_interval_s,
        dir.path(),
        &receiver.url(),
        opts.hung.as_deref(),
    );
    let (herd, pid, warmup_s) = start_node(rt, &fleet, "throughput");
    let mut out = Throughput {
        targets: m,
        interval_s: opts.burst_interval_s,
        group_window: fleet.group_window,
        warmup_s,
        ..Default::default()
    };
    let addr = herd.addr();
    let c0 = proc_cpu(pid);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(opts.burst_interval_s.max(3)));
    let steady = proc_cpu(pid) - c0;
    let pct = |s: f64| s / t0.elapsed().as_secs_f64() * 100.0;
    out.steady_cpu_pct = (pct(steady.own), pct(steady.children));
    progress(&format!(
        "throughput: steady node CPU {:.0}% of a core, its sh children {:.0}% ({m} scrapes \
         every {} s)",
        out.steady_cpu_pct.0, out.steady_cpu_pct.1, opts.burst_interval_s
    ));
    let all_base = receiver.len();

    // Burst A: every file deleted at once; the alerts fire as the scrapes see it.
    let window = quiet_moment(rt, &addr, opts.burst_interval_s);
    progress(&format!(
        "throughput: burst A, deleting {m} files at once (their scrapes span {window:.0} ms \
         of the interval)"
    ));
    let base = receiver.len();
    receiver.http.reset_peak();
    let s0 = status(rt, &addr).ok();
    let cpu0 = proc_cpu(pid);
    let overflows = listen_overflows();
    let other = OtherCpu::start(&[pid]);
    let t = Instant::now();
    for f in &fleet.files {
        let _ = std::fs::remove_file(f);
    }
    if !wait_kind(receiver, base, "firing", m, BURST_TIMEOUT) {
        out.errors.push(format!(
            "burst A: not every firing notification within {BURST_TIMEOUT:?}"
        ));
    }
    out.firing = burst_of(receiver, base, "firing", m, None);
    out.firing.peak_connections = receiver.http.reset_peak();
    out.firing.listen_overflows = listen_overflows().saturating_sub(overflows);
    out.firing.scrape_window_ms = window;
    out.firing.other_cpu_pct = other.pct(&[pid]);
    out.firing.wall_s = t.elapsed().as_secs_f64();
    out.firing.node_cpu = proc_cpu(pid) - cpu0;
    if let (Some(s0), Ok(s1)) = (s0, status(rt, &addr)) {
        out.firing.commits = s1.store_commits.saturating_sub(s0.store_commits);
    }
    progress(&format!(
        "throughput: burst A, {} firing notifications in {:.2} s: {:.0}/s",
        out.firing.delivered,
        out.firing.span_s(),
        out.firing.per_s()
    ));
    // Let the last round's commit land.
    std::thread::sleep(Duration::from_millis(1500));

    // Burst B: the receiver holds what it gets while every file is restored; once
    // the outbox holds all M resolved notifications, it lets go.
    let window_b = quiet_moment(rt, &addr, opts.burst_interval_s);
    progress(&format!(
        "throughput: burst B, receiver holds; restoring {m} files (scrapes span \
         {window_b:.0} ms)"
    ));
    let base = receiver.len();
    receiver.http.hold(true);
    receiver.http.reset_peak();
    let s0 = status(rt, &addr).ok();
    let cpu0 = proc_cpu(pid);
    let overflows = listen_overflows();
    let other = OtherCpu::start(&[pid]);
    let t = Instant::now();
    for f in &fleet.files {
        restore(f);
    }
    let mut outbox = 0;
    let mut last_print = Instant::now();
    while t.elapsed() < BACKLOG_TIMEOUT {
        match alerts(rt, &addr) {
            Ok(a) => outbox = a.outbox,
            Err(e) => progress(&format!("  alerts: {e}")),
        }
        if outbox >= m as u64 {
            break;
        }
        if last_print.elapsed() >= Duration::from_secs(5) {
            progress(&format!(
                "  outbox {outbox}/{m}, {} request(s) held",
                receiver.len() - base
            ));
            last_print = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if outbox < m as u64 {
        out.errors.push(format!(
            "burst B: the outbox held {outbox} of {m} after {BACKLOG_TIMEOUT:?}"
        ));
    }
    let held = receiver.since(base);
    let release_ms = now_ms_f64();
    receiver.http.hold(false);
    let peak_held = receiver.http.reset_peak();
    if !wait_kind(receiver, base, "resolved", m, BURST_TIMEOUT) {
        out.errors.push(format!(
            "burst B: not every resolved notification within {BURST_TIMEOUT:?}"
        ));
    }
    out.backlog = burst_of(receiver, base, "resolved", m, Some(release_ms));
    out.backlog.peak_connections = receiver.http.reset_peak();
    out.backlog.listen_overflows = listen_overflows().saturating_sub(overflows);
    out.backlog.scrape_window_ms = window_b;
    out.backlog.other_cpu_pct = other.pct(&[pid]);
    for (name, b) in [("A", &out.firing), ("B", &out.backlog)] {
        if b.other_cpu_pct > 10.0 {
            out.errors.push(format!(
                "burst {name}: other processes used {:.0}% of a core: figures are disturbed",
                b.other_cpu_pct
            ));
        }
    }
    out.backlog.held_requests = held.len();
    out.backlog.held_notifications = held.iter().map(|a| a.notes.len()).sum();
    out.backlog.hold_s = held
        .first()
        .map_or(0.0, |a| (release_ms - a.at_ms) / 1000.0);
    out.backlog.outbox_at_release = outbox;
    out.backlog.wall_s = t.elapsed().as_secs_f64();
    out.backlog.node_cpu = proc_cpu(pid) - cpu0;
    if let (Some(s0), Ok(s1)) = (s0, status(rt, &addr)) {
        out.backlog.commits = s1.store_commits.saturating_sub(s0.store_commits);
    }
    progress(&format!(
        "throughput: burst B, {} requests ({} connections at once) held {:.1} s while the \
         outbox grew to {outbox}; then {} resolved notifications in {:.2} s: {:.0}/s",
        out.backlog.held_requests,
        peak_held,
        out.backlog.hold_s,
        out.backlog.measured,
        out.backlog.span_s(),
        out.backlog.per_s()
    ));

    let arrivals = receiver.since(all_base);
    out.keys = KeyCheck::of(&arrivals, Some(2 * m));
    let log = NodeLog::read(&herd.log_path());
    out.firing.stages = Stages::of(&receiver.since(all_base), &log, "firing");
    out.backlog.stages = Stages::of(&receiver.since(base), &log, "resolved");
    out.stop_s = stop_node(herd, "throughput", &mut out.errors);
    out
}

/// Sleeps until the middle of the longest pause between the targets' scrapes (their
/// phases modulo the interval, from the last verdict times in `Status`), so that a
/// change made then is seen by every target's next scrape, all within one window.
/// Returns how long that window is (the interval minus the pause), ms.
fn quiet_moment(rt: &tokio::runtime::Runtime, addr: &str, interval_s: u64) -> f64 {
    let interval = (interval_s * 1000) as i64;
    let mut phases: Vec<i64> = match status(rt, addr) {
        Ok(s) => s
            .targets
            .iter()
            .flat_map(|t| t.checks.iter().map(|c| c.ts_ms.rem_euclid(interval)))
            .collect(),
        Err(e) => {
            progress(&format!("  status: {e}; not timing the change"));
            return f64::NAN;
        }
    };
    if phases.is_empty() {
        return f64::NAN;
    }
    phases.sort_unstable();
    // The longest gap, the one across the interval's end included.
    let mut gap = (
        phases[0] + interval - phases[phases.len() - 1],
        phases[phases.len() - 1],
    );
    for w in phases.windows(2) {
        if w[1] - w[0] > gap.0 {
            gap = (w[1] - w[0], w[0]);
        }
    }
    let target = (gap.1 + gap.0 / 2).rem_euclid(interval);
    let now = herd_tests::now_ms();
    let wait = (target - now.rem_euclid(interval)).rem_euclid(interval);
    std::thread::sleep(Duration::from_millis(wait as u64));
    (interval - gap.0) as f64
}

/// Waits until `want` distinct keys of notifications of `kind` arrived since `base`.
fn wait_kind(receiver: &Receiver, base: usize, kind: &str, want: usize, timeout: Duration) -> bool {
    let t = Instant::now();
    let mut last_print = Instant::now();
    loop {
        let got: HashSet<String> = receiver
            .since(base)
            .iter()
            .flat_map(|a| a.notes.iter())
            .filter(|n| n.kind == kind)
            .map(|n| n.key.clone())
            .collect();
        if got.len() >= want {
            return true;
        }
        if t.elapsed() >= timeout {
            progress(&format!("  only {}/{want} {kind} notifications", got.len()));
            return false;
        }
        if last_print.elapsed() >= Duration::from_secs(5) {
            progress(&format!("  {}/{want} {kind} notifications", got.len()));
            last_print = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A burst's figures from the arrivals since `base` of notifications of `kind`;
/// the span runs from `from_ms` (else the first arrival) to the last arrival.
fn burst_of(
    receiver: &Receiver,
    base: usize,
    kind: &str,
    expected: usize,
    from_ms: Option<f64>,
) -> Burst {
    let arrivals = receiver.since(base);
    let mut b = Burst {
        expected,
        ..Default::default()
    };
    let mut seen = HashSet::new();
    let mut times = Vec::new();
    let mut created = Vec::new();
    for a in &arrivals {
        let mut counted = false;
        for n in a.notes.iter().filter(|n| n.kind == kind) {
            if !seen.insert(n.key.clone()) {
                continue;
            }
            counted = true;
            times.push((a.at_ms, a.held));
            created.push(n.ts_ms);
            b.after_scrape_ms.push(a.at_ms - n.ts_ms as f64);
        }
        b.requests += usize::from(counted);
    }
    b.delivered = times.len();
    b.arrivals_ms = times.iter().map(|t| t.0).collect();
    b.first_ms = times.iter().map(|t| t.0).fold(f64::INFINITY, f64::min);
    b.last_ms = times.iter().map(|t| t.0).fold(f64::NEG_INFINITY, f64::max);
    b.from_ms = from_ms.unwrap_or(b.first_ms);
    // From the first arrival: the intervals between arrivals; from a release: every
    // arrival after it.
    b.measured = match from_ms {
        Some(_) => times.iter().filter(|t| !t.1).count(),
        None => times.len().saturating_sub(1),
    };
    if let (Some(lo), Some(hi)) = (created.iter().min(), created.iter().max()) {
        b.created_span_ms = (hi - lo) as f64;
    }
    b
}

// ---------------------------------------------------------------------------
// Idempotency keys and the node's log

#[derive(Debug, Default)]
struct KeyCheck {
    requests: usize,
    notifications: usize,
    distinct: usize,
    /// Keys that arrived more than once.
    duplicates: usize,
    expected: Option<usize>,
    /// Requests whose Idempotency-Key header is not the body's keys joined by ",".
    header_mismatch: usize,
    /// Requests whose body was no Herd document.
    bad_bodies: usize,
}

impl KeyCheck {
    fn of(arrivals: &[Arrival], expected: Option<usize>) -> KeyCheck {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        let mut k = KeyCheck {
            requests: arrivals.len(),
            expected,
            ..Default::default()
        };
        for a in arrivals {
            if a.error.is_some() {
                k.bad_bodies += 1;
            }
            let joined = a
                .notes
                .iter()
                .map(|n| n.key.as_str())
                .collect::<Vec<_>>()
                .join(",");
            if joined != a.header_key {
                k.header_mismatch += 1;
            }
            for n in &a.notes {
                k.notifications += 1;
                *counts.entry(n.key.as_str()).or_default() += 1;
            }
        }
        k.distinct = counts.len();
        k.duplicates = counts.values().filter(|c| **c > 1).count();
        k
    }

    fn exactly_once(&self) -> bool {
        self.duplicates == 0
            && self.header_mismatch == 0
            && self.bad_bodies == 0
            && self.expected.is_none_or(|e| e == self.distinct)
    }

    fn to_json(&self) -> Value {
        json!({
            "requests": self.requests,
            "notifications": self.notifications,
            "distinct_keys": self.distinct,
            "expected_keys": self.expected,
            "duplicate_keys": self.duplicates,
            "header_mismatch": self.header_mismatch,
            "bad_bodies": self.bad_bodies,
            "exactly_once": self.exactly_once(),
        })
    }
}

/// What the node logged: "alert transition" (before the transition's commit) per
/// (alert id, kind), and "notification delivered" (after the send) per key.
#[derive(Debug, Default)]
struct NodeLog {
    transitions: HashMap<(String, String), Vec<f64>>,
    delivered: HashMap<String, f64>,
}

impl NodeLog {
    fn read(path: &Path) -> NodeLog {
        let mut log = NodeLog::default();
        let text = std::fs::read_to_string(path).unwrap_or_default();
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            let Some(ts) = v["timestamp"].as_str().and_then(rfc3339_ms) else {
                continue;
            };
            let f = &v["fields"];
            match f["message"].as_str() {
                Some("alert transition") => {
                    if let (Some(id), Some(kind)) = (f["alert"].as_str(), f["kind"].as_str()) {
                        log.transitions
                            .entry((id.to_string(), kind.to_string()))
                            .or_default()
                            .push(ts);
                    }
                }
                Some("notification delivered") => {
                    if let Some(key) = f["key"].as_str() {
                        log.delivered.insert(key.to_string(), ts);
                    }
                }
                _ => {}
            }
        }
        log
    }
}

/// Where the time after the scrape goes, per notification (from the node's log):
/// sample → "alert transition" logged (scrape command, rules queue and engine), and
/// that log line → webhook arrival (the transition's commit, the outbox round, the
/// HTTP request); arrival → "notification delivered" (answer read, logged).
#[derive(Debug, Default)]
struct Stages {
    to_rules_ms: Vec<f64>,
    rules_to_webhook_ms: Vec<f64>,
    webhook_to_logged_ms: Vec<f64>,
}

impl Stages {
    fn of(arrivals: &[Arrival], log: &NodeLog, kind: &str) -> Stages {
        let mut s = Stages::default();
        for a in arrivals {
            for n in a.notes.iter().filter(|n| n.kind == kind) {
                let id = n.key.split(':').next().unwrap_or_default();
                let since = n.ts_ms as f64;
                let logged = log
                    .transitions
                    .get(&(id.to_string(), kind.to_string()))
                    .and_then(|ts| {
                        ts.iter()
                            .copied()
                            .filter(|t| *t >= since - 1.0 && *t <= a.at_ms + 1.0)
                            .reduce(f64::max)
                    });
                if let Some(t) = logged {
                    s.to_rules_ms.push(t - since);
                    s.rules_to_webhook_ms.push(a.at_ms - t);
                }
                if let Some(d) = log.delivered.get(&n.key) {
                    s.webhook_to_logged_ms.push(d - a.at_ms);
                }
            }
        }
        s
    }

    fn to_json(&self) -> Value {
        json!({
            "scrape_to_rules_logged_ms": Dist::of(self.to_rules_ms.clone()).to_json(),
            "rules_logged_to_webhook_ms": Dist::of(self.rules_to_webhook_ms.clone()).to_json(),
            "webhook_to_delivered_logged_ms": Dist::of(self.webhook_to_logged_ms.clone()).to_json(),
        })
    }
}

/// `2026-11-23T16:46:44.952716Z` → unix ms.
fn rfc3339_ms(s: &str) -> Option<f64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, mo, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (h, mi) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let sec: f64 = t.next()?.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + h * 3600 + mi * 60) as f64 + sec) * 1000.0)
}

// ---------------------------------------------------------------------------
// The receiver

/// One notification of a request's body.
#[derive(Debug, Clone)]
struct Note {
    key: String,
    kind: String,
    target: String,
    active_since_ms: i64,
    /// The transition's time: the timestamp of the sample that caused it (for a
    /// firing without `for`, the same as `active_since_ms`).
    ts_ms: i64,
}

/// One request: when it was complete, its keys, whether it was held.
#[derive(Debug, Clone)]
struct Arrival {
    at_ms: f64,
    header_key: String,
    notes: Vec<Note>,
    held: bool,
    error: Option<String>,
}

impl Arrival {
    fn of(r: &Received) -> Arrival {
        let (notes, error) = match parse_notes(&r.body) {
            Ok(n) => (n, None),
            Err(e) => (Vec::new(), Some(e)),
        };
        Arrival {
            at_ms: r.ts_us as f64 / 1000.0,
            header_key: r.header("idempotency-key").unwrap_or_default().to_string(),
            notes,
            held: r.held,
            error,
        }
    }
}

/// The harness's [`HttpReceiver`] (blocking accept, a thread per connection,
/// `Connection: close`: the node opens one connection per message), with each
/// request's notifications parsed once, as the bench polls them often.
struct Receiver {
    http: HttpReceiver,
    parsed: Mutex<Vec<Arrival>>,
}

impl Receiver {
    fn start() -> Receiver {
        let http = HttpReceiver::start();
        http.answer(200, r#"{"ok":true}"#);
        Receiver {
            http,
            parsed: Mutex::new(Vec::new()),
        }
    }

    fn url(&self) -> String {
        self.http.url("/hook")
    }

    fn len(&self) -> usize {
        self.http.count()
    }

    /// Arrivals from index `from` on, in arrival order.
    fn since(&self, from: usize) -> Vec<Arrival> {
        let mut parsed = self.parsed.lock().unwrap();
        let new = self.http.requests_since(parsed.len());
        parsed.extend(new.iter().map(Arrival::of));
        parsed
            .get(from..)
            .map(<[Arrival]>::to_vec)
            .unwrap_or_default()
    }
}

/// The notifications of Herd's JSON document.
fn parse_notes(body: &[u8]) -> Result<Vec<Note>, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let list = v["notifications"]
        .as_array()
        .ok_or("no notifications array")?;
    list.iter()
        .map(|n| {
            let s = |v: &Value| v.as_str().map(String::from).ok_or("missing field");
            Ok(Note {
                key: s(&n["idempotency_key"])?,
                kind: s(&n["kind"])?,
                target: s(&n["alert"]["target"])?,
                active_since_ms: n["alert"]["active_since_ms"]
                    .as_i64()
                    .ok_or("missing alert.active_since_ms")?,
                ts_ms: n["ts_ms"].as_i64().ok_or("missing ts_ms")?,
            })
        })
        .collect::<Result<Vec<_>, &str>>()
        .map_err(String::from)
}

// ---------------------------------------------------------------------------
// The node and the host

fn status(rt: &tokio::runtime::Runtime, addr: &str) -> Result<StatusReply, String> {
    rt.block_on(node_status(addr, true, RPC_TIMEOUT))
}

fn alerts(rt: &tokio::runtime::Runtime, addr: &str) -> Result<AlertsReply, String> {
    let url = format!("http://{addr}");
    rt.block_on(async {
        let call = async {
            let mut client = HerdClient::connect(url)
                .await
                .map_err(|e| format!("connect {addr}: {e}"))?;
            client
                .alerts(AlertsRequest {
                    history_since_ms: 0,
                    history_limit: 0,
                })
                .await
                .map(|r| r.into_inner())
                .map_err(|e| format!("alerts: {e}"))
        };
        tokio::time::timeout(RPC_TIMEOUT, call)
            .await
            .map_err(|_| format!("alerts did not answer within {RPC_TIMEOUT:?}"))?
    })
}

/// The pid of the node process (the harness keeps its `Child` private): the one
/// whose command line names its herd.toml.
fn node_pid(herd: &Herd) -> i32 {
    let needle = format!("node --config {}", herd.config_path().display());
    let dir = std::fs::read_dir("/proc").expect("/proc");
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        if cmdline.contains(&needle) {
            return pid;
        }
    }
    panic!("no process with {needle:?}");
}

/// CPU seconds of a process: its own (utime + stime) and its reaped children's
/// (cutime + cstime: the `sh` of every local scrape).
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    own: f64,
    children: f64,
}

impl std::ops::Add for Cpu {
    type Output = Cpu;
    fn add(self, o: Cpu) -> Cpu {
        Cpu {
            own: self.own + o.own,
            children: self.children + o.children,
        }
    }
}

/// CPU of several processes together.
fn cpu_of(pids: &[i32]) -> Cpu {
    pids.iter()
        .map(|p| proc_cpu(*p))
        .fold(Cpu::default(), |a, b| a + b)
}

impl std::ops::Sub for Cpu {
    type Output = Cpu;
    fn sub(self, o: Cpu) -> Cpu {
        Cpu {
            own: self.own - o.own,
            children: self.children - o.children,
        }
    }
}

fn proc_cpu(pid: i32) -> Cpu {
    let nan = Cpu {
        own: f64::NAN,
        children: f64::NAN,
    };
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return nan;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return nan;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Cpu {
        own: (ticks(11) + ticks(12)) / hz,
        children: (ticks(13) + ticks(14)) / hz,
    }
}

/// p50 and p99 of a 4 KiB write + fdatasync in the temp dir (where the node's
/// redb file lives): what each durable commit costs at least.
fn fsync_probe() -> (f64, f64) {
    let dir = tempfile::Builder::new()
        .prefix("herd-bench-fsync-")
        .tempdir()
        .expect("temp dir");
    let path = dir.path().join("probe");
    let mut file = std::fs::File::create(&path).expect("fsync probe file");
    let block = [7u8; 4096];
    let mut times = Vec::with_capacity(FSYNC_PROBES);
    for _ in 0..FSYNC_PROBES {
        let t = Instant::now();
        if file
            .write_all(&block)
            .and_then(|()| file.sync_data())
            .is_err()
        {
            return (f64::NAN, f64::NAN);
        }
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    (percentile(&mut times, 50.0), percentile(&mut times, 99.0))
}

fn machine(fsync: (f64, f64)) -> Value {
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_default();
    json!({
        "loadavg_at_end": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": cpu_model,
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "fsync_4k_p50_ms": fsync.0,
        "fsync_4k_p99_ms": fsync.1,
    })
}

/// What the host's other processes (neither the node, its children, nor this
/// bench) used while `f` ran, % of one core.
struct OtherCpu {
    host: f64,
    node: Cpu,
    me: f64,
    at: Instant,
}

impl OtherCpu {
    fn start(nodes: &[i32]) -> OtherCpu {
        OtherCpu {
            host: host_busy_s(),
            node: cpu_of(nodes),
            // SAFETY: getpid has no preconditions.
            me: proc_cpu(unsafe { libc::getpid() }).own,
            at: Instant::now(),
        }
    }

    fn pct(&self, nodes: &[i32]) -> f64 {
        let n = cpu_of(nodes) - self.node;
        // SAFETY: getpid has no preconditions.
        let me = proc_cpu(unsafe { libc::getpid() }).own - self.me;
        let other = host_busy_s() - self.host - n.own - n.children - me;
        (other / self.at.elapsed().as_secs_f64() * 100.0).max(0.0)
    }
}

/// TcpExtListenOverflows of the host (/proc/net/netstat): connections a full
/// listen queue dropped.
fn listen_overflows() -> u64 {
    let text = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let mut lines = text.lines();
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        if !names.starts_with("TcpExt:") {
            continue;
        }
        let found = names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(n, _)| *n == "ListenOverflows");
        return found.and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
    }
    0
}

fn now_ms_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

// ---------------------------------------------------------------------------
// Output

/// p50, p99 and max of a sample of milliseconds.
#[derive(Debug, Clone, Copy)]
struct Dist {
    n: usize,
    p50: f64,
    p99: f64,
    max: f64,
}

impl Dist {
    fn of(mut v: Vec<f64>) -> Dist {
        Dist {
            n: v.len(),
            p50: percentile(&mut v, 50.0),
            p99: percentile(&mut v, 99.0),
            max: v.iter().copied().fold(f64::NAN, f64::max),
        }
    }
    fn to_json(self) -> Value {
        json!({ "n": self.n, "p50": self.p50, "p99": self.p99, "max": self.max })
    }
}

/// Milliseconds for the table: seconds from 10 s up.
fn ms(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else if v.abs() >= 10_000.0 {
        format!("{:.2} s", v / 1000.0)
    } else {
        format!("{v:.1} ms")
    }
}

fn row(label: &str, d: Dist, goal: &str, met: Option<bool>) {
    let verdict = match met {
        Some(true) => "met",
        Some(false) => "MISSED",
        None => "",
    };
    println!(
        "  {label:<34} {:>4} {:>11} {:>11} {:>11}   {goal} {verdict}",
        d.n,
        ms(d.p50),
        ms(d.p99),
        ms(d.max)
    );
}

fn print_table(
    opts: &Options,
    latency: Option<&Latency>,
    throughput: Option<&Throughput>,
    fsync: (f64, f64),
) {
    println!("\nHerd notification benchmark (release herd node, local targets, webhook receiver in this process)");
    if opts.hung.is_some() {
        println!(
            "every rule also routes to a second webhook channel whose receiver never answers \
             (timeout 30 s): the figures are the healthy channel's"
        );
    }
    println!(
        "host: {} CPUs; fsync of a 4 KiB write: p50 {:.2} ms, p99 {:.2} ms",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        fsync.0,
        fsync.1
    );
    if let Some(l) = latency {
        println!(
            "\n1. Breach to delivery: {} node(s), {} targets, file_fresh every {} s, one rule \
             each, group_window {}, {} breaches over {} s",
            l.nodes,
            l.targets,
            l.interval_s,
            l.group_window,
            l.planned,
            opts.duration.as_secs()
        );
        println!(
            "  {:<34} {:>4} {:>11} {:>11} {:>11}   goal",
            "", "n", "p50", "p99", "max"
        );
        let breach = Dist::of(l.breach_ms());
        let goal = l.breach_goal_ms();
        row(
            "deletion -> webhook",
            breach,
            &format!("max <= {}", ms(goal)),
            Some(breach.max <= goal),
        );
        row(
            "  deletion -> scrape (waiting)",
            Dist::of(l.to_scrape_ms()),
            "",
            None,
        );
        let after = Dist::of(l.after_scrape_ms());
        row(
            "scrape -> webhook",
            after,
            "p99 <= 100.0 ms",
            Some(after.p99 <= 100.0),
        );
        if l.nodes > 1 {
            row(
                "  of targets the leader owns",
                Dist::of(l.after_scrape_on(true)),
                "",
                None,
            );
            row(
                "  of targets a follower owns",
                Dist::of(l.after_scrape_on(false)),
                "",
                None,
            );
        }
        row(
            "  scrape -> rules (node log)",
            Dist::of(l.stages.to_rules_ms.clone()),
            "",
            None,
        );
        row(
            "  rules -> webhook (commit, outbox)",
            Dist::of(l.stages.rules_to_webhook_ms.clone()),
            "",
            None,
        );
        row(
            "restore -> resolved webhook",
            Dist::of(l.resolve_ms.clone()),
            "",
            None,
        );
        println!(
            "  delivered {}/{}, missed {}, resolved missing {}, unexpected {}; keys: {} \
             requests, {} distinct, {} duplicated; node CPU {:.1} s (+ {:.1} s sh) in {:.0} s, \
             {} store commits; other processes {:.0}% of a core",
            l.breaches.len(),
            l.planned,
            l.missed,
            l.resolved_missing,
            l.unexpected,
            l.keys.requests,
            l.keys.distinct,
            l.keys.duplicates,
            l.node_cpu.own,
            l.node_cpu.children,
            l.window_s,
            l.commits,
            l.other_cpu_pct
        );
        for e in &l.errors {
            println!("  note: {e}");
        }
    }
    if let Some(t) = throughput {
        println!(
            "\n2. Outbox throughput: {} targets, file_fresh every {} s, one rule each, \
             group_window {} (steady: node {:.0}% of a core, its sh children {:.0}%)",
            t.targets, t.interval_s, t.group_window, t.steady_cpu_pct.0, t.steady_cpu_pct.1
        );
        println!(
            "  {:<26} {:>5} {:>5} {:>7} {:>7} {:>10} {:>10} {:>10} {:>5} {:>5} {:>7} {:>9}",
            "burst",
            "notes",
            "reqs",
            "span_s",
            "per_s",
            "lag_p50",
            "lag_p99",
            "lag_max",
            "conns",
            "drops",
            "commits",
            "cpu_s"
        );
        for (label, b) in [
            ("A firing, as scraped", &t.firing),
            ("B resolved, backlog drain", &t.backlog),
        ] {
            let lag = Dist::of(b.after_scrape_ms.clone());
            println!(
                "  {label:<26} {:>5} {:>5} {:>7.2} {:>7.0} {:>10} {:>10} {:>10} {:>5} {:>5} {:>7} {:>9}",
                b.delivered,
                b.requests,
                b.span_s(),
                b.per_s(),
                ms(lag.p50),
                ms(lag.p99),
                ms(lag.max),
                b.peak_connections,
                b.listen_overflows,
                b.commits,
                format!("{:.2}+{:.2}", b.node_cpu.own, b.node_cpu.children)
            );
        }
        let a = &t.firing;
        let b = &t.backlog;
        let rules = Dist::of(a.stages.to_rules_ms.clone());
        let after = Dist::of(a.stages.rules_to_webhook_ms.clone());
        println!(
            "  lag = arrival - notification ts_ms (the sample that caused the transition); conns = most requests open at once at the \
             receiver;\n  drops = connections a full listen queue dropped (host counter); commits = store commits in the burst; cpu_s = node + its sh children"
        );
        println!(
            "  A: scrapes spanned {} of the interval; alerts created over {} (sample \
             timestamps); per_s = (notes - 1) / (last - first \
             arrival); other processes {:.0}% of a core;\n     scrape -> rules p50/p99 {}/{}, \
             rules -> webhook p50/p99 {}/{}",
            ms(a.scrape_window_ms),
            ms(a.created_span_ms),
            a.other_cpu_pct,
            ms(rules.p50),
            ms(rules.p99),
            ms(after.p50),
            ms(after.p99)
        );
        println!(
            "  B: the receiver held {} request(s) ({} notification(s)) for {:.1} s while the \
             outbox grew to {};\n     per_s = notifications after the release / (last arrival \
             - release); other processes {:.0}% of a core",
            b.held_requests, b.held_notifications, b.hold_s, b.outbox_at_release, b.other_cpu_pct
        );
        println!(
            "  idempotency keys: {} requests, {} notifications, {} distinct of {} expected, {} \
             duplicated, {} header mismatches: {}",
            t.keys.requests,
            t.keys.notifications,
            t.keys.distinct,
            t.keys.expected.unwrap_or(0),
            t.keys.duplicates,
            t.keys.header_mismatch,
            if t.keys.exactly_once() {
                "each exactly once"
            } else {
                "NOT exactly once"
            }
        );
        for e in &t.errors {
            println!("  note: {e}");
        }
    }
}
