//! Alert storm benchmark (issue 17): every target of a big fleet breaches at once
//! on a herd, and every FIRING notification must be delivered exactly once.
//!
//! Run it with `scripts/bench storm` (builds the release `herd` first). Options:
//!
//! ```text
//! --targets N    targets (default 10000)
//! --nodes N      nodes of the herd (default 3)
//! --interval S   their scrape interval (default 10)
//! --flap-minutes M   after the two storms, keep flapping for M minutes (default 0):
//!                    breach, resolve, wait past --forget-after, again; sizes of
//!                    each node's raft.redb and of the herd's alert state per cycle
//! --forget-after S   the nodes' `[store] resolved_retention` (default 3600)
//! ```
//!
//! **The herd:** N release nodes formed by the harness's [`Cluster`] (`cluster
//! init` / `join`), the fleet applied through node 1, so the leader spreads the
//! targets over the nodes. **The fleet:** `transport = "local"` targets, each with
//! one `port` check (connected from the node, no process forked) against a TCP
//! port of this process (the harness's HTTP receiver, used as a plain listener),
//! and one rule for all of them (`targets = ["storm-*"]`, any non-ok status fires,
//! no `for`) routed to one webhook channel (`group_window = "0s"`) whose receiver
//! is a second HTTP receiver of this process, which records every request.
//!
//! **The storm:** once every target's check is ok on its owner, the port is closed
//! (connection refused): each target breaches at its next scrape, all within one
//! interval. Each owner records the alerts and their notifications through Raft
//! and sends them. Then the port opens again: the resolved storm. Reported, per
//! storm: time from the breach to the last delivery, the first to last arrival
//! and notifications per second between them, requests, notifications that arrived
//! more than once (by idempotency key) and those missing, and each node's CPU.
//! Nothing is asserted: figures are printed, and the run exits 1 when a
//! notification was missing or duplicated.
//!
//! Results: a table on stdout, and `target/bench/storm.json`. Progress on stderr.
use std::collections::HashMap;
use std::time::{Duration, Instant};

use herd_tests::bench::{bench_setup, node_status, progress, write_report, BenchArgs};
use herd_tests::{Cluster, Herd, HerdOptions, HttpReceiver, Received};
use serde_json::{json, Value};

const USAGE: &str =
    "usage: storm [--targets N] [--nodes N] [--interval S] [--flap-minutes M] [--forget-after S]";
/// The channel every notification goes to.
const CHANNEL: &str = "hook";
/// Longest wait for the herd to place and scrape every target.
const WARMUP_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest wait for a storm's notifications after the breach.
const STORM_TIMEOUT: Duration = Duration::from_secs(600);
const RPC_TIMEOUT: Duration = Duration::from_secs(60);

fn main() {
    let mut a = BenchArgs::from_env("storm", USAGE);
    let targets = a.number("--targets", 10_000, 10..=50_000) as usize;
    let nodes = a.number("--nodes", 3, 1..=5);
    let interval_s = a.number("--interval", 10, 1..=600);
    let flap_minutes = a.number("--flap-minutes", 0, 0..=24 * 60);
    let forget_after_s = a.number("--forget-after", 3600, 1..=30 * 24 * 3600);
    a.finish();
    bench_setup("storm");
    let started = Instant::now();
    let rt = herd_tests::bench::client_runtime();

    let service = HttpReceiver::start();
    let hook = HttpReceiver::start();
    let text = fleet(targets, interval_s, service.port(), &hook.url("/storm"));
    progress(&format!(
        "starting a herd of {nodes} release node(s) for {targets} targets every {interval_s} s"
    ));
    let mut cluster = Cluster::start(
        nodes,
        HerdOptions {
            flush_interval: "1s".into(),
            store_extra: format!("resolved_retention = \"{forget_after_s}s\"\n"),
            ..Default::default()
        },
    );
    cluster.apply(1, &text);
    let herds: Vec<Herd> = (1..=nodes).map(|id| cluster.forget(id)).collect();
    let warmup_s = wait_all_ok(&rt, &herds, targets);
    progress(&format!("every target ok after {warmup_s:.1} s"));
    // One more interval: every alert rule has seen an ok verdict first.
    std::thread::sleep(Duration::from_secs(interval_s));

    let firing = storm(&herds, &hook, targets, "firing", interval_s, || {
        service.down()
    });
    let resolved = storm(&herds, &hook, targets, "resolved", interval_s, || {
        service.up()
    });
    let flaps = flap(
        &rt,
        &herds,
        &hook,
        targets,
        interval_s,
        flap_minutes,
        forget_after_s,
        &service,
    );
    let per_node: Vec<Value> = herds
        .iter()
        .map(|h| {
            let s = rt.block_on(node_status(&h.addr(), true, RPC_TIMEOUT)).ok();
            json!({
                "node": h.id(),
                "targets": s.as_ref().map(|s| s.targets.len()),
                "log": h.log_path().display().to_string(),
            })
        })
        .collect();
    for h in herds {
        drop(h);
    }
    let report = json!({
        "settings": {
            "targets": targets,
            "nodes": nodes,
            "interval_s": interval_s,
            "herd_bin": herd_tests::herd_bin().display().to_string(),
        },
        "warmup_s": warmup_s,
        "nodes": per_node,
        "firing": firing.to_json(),
        "resolved": resolved.to_json(),
        "flap": flaps.iter().map(Cycle::to_json).collect::<Vec<_>>(),
        "total_s": started.elapsed().as_secs_f64(),
    });
    println!();
    println!("alert storm: {targets} targets on {nodes} node(s), scraped every {interval_s} s");
    println!(
        "{:<9} {:>10} {:>10} {:>10} {:>9} {:>9} {:>6} {:>6}  node CPU s",
        "storm", "to last s", "span s", "per s", "requests", "delivered", "dup", "miss"
    );
    for s in [&firing, &resolved] {
        println!(
            "{:<9} {:>10.2} {:>10.2} {:>10.0} {:>9} {:>9} {:>6} {:>6}  {}",
            s.kind,
            s.to_last_s,
            s.span_s,
            s.per_s(),
            s.requests,
            s.distinct,
            s.duplicated,
            s.missing,
            s.node_cpu_s
                .iter()
                .map(|c| format!("{c:.1}"))
                .collect::<Vec<_>>()
                .join(" / ")
        );
    }
    if !flaps.is_empty() {
        println!();
        println!(
            "flapping: every target breaches and resolves, then {forget_after_s} s pass (resolved_retention)"
        );
        println!(
            "{:>7} {:>6} {:>10} {:>10} {:>9} {:>6} {:>6}  raft.redb MB per node",
            "cycle", "min", "herd alerts", "forgotten", "delivered", "dup", "miss"
        );
        for c in &flaps {
            println!(
                "{:>7} {:>6.1} {:>10} {:>10} {:>9} {:>6} {:>6}  {}",
                c.cycle,
                c.minute,
                c.alerts
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join("/"),
                c.forgotten
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join("/"),
                c.delivered,
                c.duplicated,
                c.missing,
                c.raft_bytes
                    .iter()
                    .map(|b| format!("{:.1}", *b as f64 / 1e6))
                    .collect::<Vec<_>>()
                    .join(" / ")
            );
        }
    }
    write_report("storm", &report);
    eprintln!("bench took {:.0} s", started.elapsed().as_secs_f64());
    if [&firing, &resolved]
        .iter()
        .any(|s| s.missing > 0 || s.duplicated > 0)
        || flaps.iter().any(|c| c.missing > 0 || c.duplicated > 0)
    {
        eprintln!("storm: notifications missing or duplicated (see above)");
        std::process::exit(1);
    }
}

/// The fleet: `n` local targets with a port check each, one rule, one channel.
fn fleet(n: usize, interval_s: u64, port: u16, url: &str) -> String {
    let mut text = String::with_capacity(n * 160 + 1000);
    for i in 0..n {
        text.push_str(&format!(
            "[[target]]\nname = \"storm-{i:05}\"\ntransport = \"local\"\n\
             interval = \"{interval_s}s\"\nchecks = [{{ kind = \"port\", name = \"svc\", \
             host = \"127.0.0.1\", port = {port} }}]\n\n"
        ));
    }
    text.push_str(&format!(
        "[[rule]]\nname = \"svc-down\"\ntargets = [\"storm-*\"]\ncheck = \"svc\"\n\
         kind = \"range\"\nseverity = \"critical\"\nchannels = [\"{CHANNEL}\"]\n\n\
         [[channel]]\nname = \"{CHANNEL}\"\nkind = \"webhook\"\nurl = \"{url}\"\n\
         group_window = \"0s\"\ntimeout = \"30s\"\n"
    ));
    text
}

/// Waits until every target has an ok verdict on its owner (each node's own
/// status); the seconds waited.
fn wait_all_ok(rt: &tokio::runtime::Runtime, herds: &[Herd], want: usize) -> f64 {
    let t0 = Instant::now();
    let mut last_print = Instant::now();
    loop {
        let ok: usize = herds
            .iter()
            .map(|h| {
                rt.block_on(node_status(&h.addr(), true, RPC_TIMEOUT))
                    .map(|s| {
                        s.targets
                            .iter()
                            .filter(|t| t.checks.iter().any(|c| c.status == "ok"))
                            .count()
                    })
                    .unwrap_or(0)
            })
            .sum();
        if ok == want {
            return t0.elapsed().as_secs_f64();
        }
        if t0.elapsed() > WARMUP_TIMEOUT {
            for h in herds {
                h.dump_logs();
            }
            panic!("only {ok}/{want} targets ok after {WARMUP_TIMEOUT:?}");
        }
        if last_print.elapsed() > Duration::from_secs(5) {
            progress(&format!("warm-up: {ok}/{want} targets ok"));
            last_print = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// One storm's figures.
struct Storm {
    kind: &'static str,
    /// Breach (the port's change) → last arrival.
    to_last_s: f64,
    /// First → last arrival.
    span_s: f64,
    requests: usize,
    /// Distinct idempotency keys of notifications of this kind.
    distinct: usize,
    /// Keys that arrived more than once.
    duplicated: usize,
    missing: usize,
    node_cpu_s: Vec<f64>,
}

impl Storm {
    fn per_s(&self) -> f64 {
        if self.span_s > 0.0 {
            self.distinct as f64 / self.span_s
        } else {
            f64::NAN
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "to_last_delivery_s": self.to_last_s,
            "first_to_last_s": self.span_s,
            "notifications_per_s": self.per_s(),
            "requests": self.requests,
            "delivered": self.distinct,
            "duplicated": self.duplicated,
            "missing": self.missing,
            "node_cpu_s": self.node_cpu_s,
        })
    }
}

/// Makes the change (`breach`), waits until `want` distinct keys of notifications
/// of `kind` arrived (or the timeout), and measures.
fn storm(
    herds: &[Herd],
    hook: &HttpReceiver,
    want: usize,
    kind: &'static str,
    interval_s: u64,
    breach: impl FnOnce(),
) -> Storm {
    let base = hook.count();
    let pids: Vec<Option<i32>> = herds.iter().map(Herd::pid).collect();
    let cpu0: Vec<f64> = pids.iter().map(|p| cpu_s(*p)).collect();
    progress(&format!("{kind} storm: breach"));
    let t0_ms = herd_tests::now_ms();
    breach();
    let t = Instant::now();
    let mut last_print = Instant::now();
    let mut tally = Tally::default();
    let mut seen = base;
    let mut late_until: Option<Instant> = None;
    loop {
        let new = hook.requests_since(seen);
        seen += new.len();
        tally.add(&new, kind);
        if tally.counts.len() >= want || t.elapsed() > STORM_TIMEOUT {
            // Late duplicates: a little longer than a retry would take.
            let until = *late_until
                .get_or_insert_with(|| Instant::now() + Duration::from_secs(interval_s.max(5)));
            if Instant::now() >= until {
                break;
            }
        }
        if last_print.elapsed() > Duration::from_secs(5) {
            progress(&format!(
                "{kind} storm: {}/{want} after {:.0} s",
                tally.counts.len(),
                t.elapsed().as_secs_f64()
            ));
            last_print = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let counts = &tally.counts;
    let first = tally.first_ms.unwrap_or(t0_ms);
    let last = tally.last_ms.unwrap_or(t0_ms);
    let s = Storm {
        kind,
        to_last_s: (last - t0_ms) as f64 / 1000.0,
        span_s: (last - first) as f64 / 1000.0,
        requests: tally.requests,
        distinct: counts.len(),
        duplicated: counts.values().filter(|c| **c > 1).count(),
        missing: want.saturating_sub(counts.len()),
        node_cpu_s: pids.iter().zip(&cpu0).map(|(p, c)| cpu_s(*p) - c).collect(),
    };
    progress(&format!(
        "{kind} storm: {} delivered in {:.2} s after the breach ({:.0}/s from first to last), \
         {} duplicated, {} missing",
        s.distinct,
        s.to_last_s,
        s.per_s(),
        s.duplicated,
        s.missing
    ));
    s
}

/// One flapping cycle: both storms, then the wait past the retention of resolved
/// alerts; what the herd held at its end.
struct Cycle {
    cycle: usize,
    minute: f64,
    delivered: usize,
    duplicated: usize,
    missing: usize,
    /// Per node: alerts and forgotten alerts in its herd state, raft.redb's bytes.
    alerts: Vec<u64>,
    forgotten: Vec<u64>,
    raft_bytes: Vec<u64>,
}

impl Cycle {
    fn to_json(&self) -> Value {
        json!({
            "cycle": self.cycle, "minute": self.minute, "delivered": self.delivered,
            "duplicated": self.duplicated, "missing": self.missing,
            "herd_alerts": self.alerts, "herd_forgotten_alerts": self.forgotten,
            "raft_redb_bytes": self.raft_bytes,
        })
    }
}

/// Flaps every target for `minutes` (0: not at all): a firing storm, a resolved
/// storm, then `forget_after_s` + 5 s so the owners forget the resolved alerts;
/// after each cycle, what each node's herd state and raft.redb hold. Keys are
/// checked across the whole run: a key that arrives in two cycles is a duplicate.
#[allow(clippy::too_many_arguments)]
fn flap(
    rt: &tokio::runtime::Runtime,
    herds: &[Herd],
    hook: &HttpReceiver,
    targets: usize,
    interval_s: u64,
    minutes: u64,
    forget_after_s: u64,
    service: &HttpReceiver,
) -> Vec<Cycle> {
    let mut out = Vec::new();
    if minutes == 0 {
        return out;
    }
    let t0 = Instant::now();
    let until = t0 + Duration::from_secs(minutes * 60);
    let mut all: HashMap<String, usize> = HashMap::new();
    let mut seen = 0;
    while Instant::now() < until {
        let firing = storm(herds, hook, targets, "firing", interval_s, || {
            service.down()
        });
        let resolved = storm(herds, hook, targets, "resolved", interval_s, || {
            service.up()
        });
        std::thread::sleep(Duration::from_secs(forget_after_s + 5));
        let new = hook.requests_since(seen);
        seen += new.len();
        for n in herd_tests::receiver::herd_notes(&new) {
            if let Some(k) = n["idempotency_key"].as_str() {
                *all.entry(k.to_string()).or_insert(0) += 1;
            }
        }
        let status: Vec<_> = herds
            .iter()
            .map(|h| rt.block_on(node_status(&h.addr(), true, RPC_TIMEOUT)).ok())
            .collect();
        let c = Cycle {
            cycle: out.len() + 1,
            minute: t0.elapsed().as_secs_f64() / 60.0,
            delivered: firing.distinct + resolved.distinct,
            duplicated: all.values().filter(|c| **c > 1).count(),
            missing: firing.missing + resolved.missing,
            alerts: status
                .iter()
                .map(|s| s.as_ref().map_or(0, |s| s.herd_alerts))
                .collect(),
            forgotten: (status.iter())
                .map(|s| s.as_ref().map_or(0, |s| s.herd_forgotten_alerts))
                .collect(),
            raft_bytes: (herds.iter())
                .map(|h| std::fs::metadata(h.data_dir().join("raft.redb")).map_or(0, |m| m.len()))
                .collect(),
        };
        progress(&format!(
            "flap cycle {} at {:.1} min: herd alerts {:?}, forgotten {:?}, raft.redb {:?} B, {} duplicated so far",
            c.cycle, c.minute, c.alerts, c.forgotten, c.raft_bytes, c.duplicated
        ));
        out.push(c);
    }
    out
}

/// What arrived so far: idempotency key → arrivals of the notifications of one
/// kind in accepted requests, and the first and last of those requests.
#[derive(Default)]
struct Tally {
    counts: HashMap<String, usize>,
    requests: usize,
    first_ms: Option<i64>,
    last_ms: Option<i64>,
}

impl Tally {
    fn add(&mut self, reqs: &[Received], kind: &str) {
        for r in reqs.iter().filter(|r| r.accepted()) {
            let mut ours = false;
            for n in herd_tests::receiver::herd_notes(std::slice::from_ref(r)) {
                if n["kind"].as_str() == Some(kind) {
                    if let Some(k) = n["idempotency_key"].as_str() {
                        *self.counts.entry(k.to_string()).or_insert(0) += 1;
                        ours = true;
                    }
                }
            }
            if ours {
                self.requests += 1;
                self.first_ms = Some(self.first_ms.map_or(r.ts_ms, |f| f.min(r.ts_ms)));
                self.last_ms = Some(self.last_ms.map_or(r.ts_ms, |l| l.max(r.ts_ms)));
            }
        }
    }
}

/// CPU seconds (user + system) a process used so far; NaN when unknown.
fn cpu_s(pid: Option<i32>) -> f64 {
    let Some(stat) = pid.and_then(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
    else {
        return f64::NAN;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return f64::NAN;
    };
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    // After the comm: state is field 0, utime 11, stime 12.
    let ticks = f.get(11).unwrap_or(&0.0) + f.get(12).unwrap_or(&0.0);
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64
}
