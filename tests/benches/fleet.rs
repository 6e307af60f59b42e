//! Fleet benchmark: what one `herd node` costs per scrape at 100, 1000 and 3000
//! targets, and what the same vitals scrape costs through OpenSSH.
//!
//! Run it with `scripts/bench` (builds the release `herd` first). Arguments:
//!
//! ```text
//! scripts/bench                         everything (fleet 100 1000 3000, then baseline)
//! scripts/bench fleet 100               one fleet size
//! scripts/bench fleet 100 1000 --window 20
//! scripts/bench baseline                only the OpenSSH / real-sshd baseline
//! options: --window S (measurement window per size, default 60)
//!          --interval S (scrape interval of the fleet, default 10)
//!          --calls N (ssh calls per baseline, default 30)
//!          --real-window S (herd against the real sshd, default 20)
//!          --stagger (apply the fleet in one batch per second over an interval:
//!                     the node starts all targets of one apply within 1 s, and
//!                     they keep that phase, so one apply bunches the scrapes)
//! ```
//!
//! **Fleet.** The targets are played by an in-process russh server in a child
//! process (this executable re-run with `--fake-fleet`), so that the node's CPU
//! time read from `/proc/PID/stat` is the node's alone. Every target is
//! `127.0.0.1:PORT` under its own name: each has its own SSH session. The server
//! answers every exec with the `linux_real.txt` vitals fixture whose CPU, uptime,
//! load, memory and network counters move on with time per session, so the node
//! computes real rates; the disk sections (mounts, df) only to the commands that
//! read the disks (one scrape in `disk_interval`), as a shell would. The node is the release `herd` binary with a generated
//! herd.toml (flush_interval 1 s) and a fleet applied with `herd apply`.
//!
//! **Baseline.** A real OpenSSH sshd on loopback (the harness's `Sshd`, account
//! `herdtest` with `/bin/sh`): the vitals command through a fresh `ssh` per call,
//! through an OpenSSH ControlMaster, and a herd node scraping that sshd every second.
//!
//! **What is measured.** Node CPU (utime+stime of the process, or the exact run
//! time of its threads when none came or went) over a window, divided by the
//! scrapes the node counted in it; the node's own scrape timing (`Status`, its last
//! 20,000 scrapes); the exec as the fake target saw it (channel open to the node's
//! answer to a ping sent after CLOSE), over the window only; how bunched the
//! scrapes are (the fake fleet counts execs per 100 ms); VmRSS; samples written,
//! dropped and the redb file size. The host's CPU used by anything else in the
//! window is reported too: a build running beside the bench disturbs lateness.
//!
//! Results: a table on stdout, and `target/bench/fleet.json`. Progress on stderr.
// serde_json's json! of a fleet row nests deeper than the default limit.
#![recursion_limit = "256"]
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use herd_proto::v1::StatusReply;
use herd_tests::bench::{
    bench_args, bench_setup, client_runtime, node_status, percentile, progress, write_report,
    BenchArgs, POSITIVE,
};
use herd_tests::{ssh_target, Herd, HerdOptions, Sshd, SSH_USER};
use serde_json::{json, Value};

/// The vitals commands exactly as the node sends them
/// (`node/src/collector/checks/vitals.rs`, `VITALS_COMMAND` when the disk figures
/// are due, every `disk_interval`, and `VITALS_COMMAND_NO_DISK` between); the
/// baseline runs both through OpenSSH. The fake fleet checks every command it gets
/// against them and the bench reports a difference.
const VITALS_COMMAND: &str = "exec 2>/dev/null;\
head -n 999999 /proc/stat /proc/meminfo /proc/loadavg /proc/net/dev /proc/uptime /proc/mounts;\
echo @@herd:df;df -Pk;echo @@herd:dfi;df -Pi;echo @@herd:end";
const VITALS_COMMAND_NO_DISK: &str = "exec 2>/dev/null;\
head -n 999999 /proc/stat /proc/meminfo /proc/loadavg /proc/net/dev /proc/uptime;echo @@herd:end";
/// Their inline forms (`VITALS_INLINE`, `VITALS_INLINE_NO_DISK`), which the node
/// sends to its long-lived shell to run without a subshell.
const VITALS_INLINE: &str = "{ \
head -n 999999 /proc/stat /proc/meminfo /proc/loadavg /proc/net/dev /proc/uptime /proc/mounts;\
echo @@herd:df;df -Pk;echo @@herd:dfi;df -Pi;echo @@herd:end\n} 2>/dev/null";
const VITALS_INLINE_NO_DISK: &str = "{ \
head -n 999999 /proc/stat /proc/meminfo /proc/loadavg /proc/net/dev /proc/uptime;\
echo @@herd:end\n} 2>/dev/null";

/// The node scrapes every second with the default `disk_interval` (60 s): one
/// scrape in 60 reads the disks. OpenSSH's runs make the same mix.
const DISK_EVERY_CALLS: usize = 60;

/// The command of OpenSSH's `i`-th call, as the node would send it.
fn command_for_call(i: usize) -> &'static str {
    if i.is_multiple_of(DISK_EVERY_CALLS) {
        VITALS_COMMAND
    } else {
        VITALS_COMMAND_NO_DISK
    }
}

/// What the fake targets answer, moved on per call (see [`fake`]).
const FIXTURE: &str =
    include_str!("../../node/src/collector/checks/fixtures/vitals/linux_real.txt");

/// Default fleet sizes.
const DEFAULT_SIZES: &[usize] = &[100, 1000, 3000];
/// Longest wait for every target to be up after `herd apply`.
const WARMUP_TIMEOUT: Duration = Duration::from_secs(120);
/// How often the warm-up polls `Status`.
const WARMUP_POLL: Duration = Duration::from_secs(2);
/// Idle node measured before the fleet is applied.
const IDLE_WINDOW: Duration = Duration::from_secs(3);
/// Longest wait for one gRPC call.
const RPC_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest run of one ssh call in the baseline.
const SSH_TIMEOUT: Duration = Duration::from_secs(30);
/// Scrapes kept by the node's timing window (`collector/stats.rs`).
const NODE_STATS_WINDOW: u64 = 20_000;

fn main() {
    let args = bench_args();
    if args.first().map(String::as_str) == Some("--fake-fleet") {
        fake::run();
        return;
    }
    let opts = Options::parse(args);
    bench_setup("fleet");
    let rt = client_runtime();

    let started = Instant::now();
    let mut rows = Vec::new();
    if opts.fleet {
        for &n in &opts.sizes {
            rows.push(bench_fleet(&rt, n, &opts));
        }
    }
    let baseline = opts.baseline.then(|| bench_baseline(&rt, &opts));

    let report = json!({
        "settings": {
            "window_s": opts.window.as_secs_f64(),
            "interval_s": opts.interval_s,
            "baseline_calls": opts.calls,
            "real_window_s": opts.real_window.as_secs_f64(),
            "stagger": opts.stagger,
            "herd_bin": herd_tests::herd_bin().display().to_string(),
        },
        "machine": machine(),
        "fleet": rows.iter().map(FleetRow::to_json).collect::<Vec<_>>(),
        "baseline": baseline.as_ref().map(Baseline::to_json),
        "total_s": started.elapsed().as_secs_f64(),
    });
    print_table(&rows, baseline.as_ref());
    write_report("fleet", &report);
    eprintln!("bench took {:.0} s", started.elapsed().as_secs_f64());
}

const USAGE: &str = "usage: fleet [fleet [N...]] [baseline] [--window S] [--interval S] \
[--calls N] [--real-window S] [--stagger] [--heavy-rc]
  no mode: fleet 100 1000 3000, then baseline
  --heavy-rc: the baseline with the account's login shell bash and a slow ~/.bashrc (~0.3 s)
  --stagger: apply the fleet in one batch per second over an interval (spreads the scrapes)";

#[derive(Debug)]
struct Options {
    fleet: bool,
    baseline: bool,
    sizes: Vec<usize>,
    window: Duration,
    interval_s: u64,
    calls: usize,
    real_window: Duration,
    /// Apply the fleet in one batch per second over an interval.
    stagger: bool,
    /// The baseline's account logs in with bash and a slow ~/.bashrc.
    heavy_rc: bool,
}

impl Options {
    fn parse(args: Vec<String>) -> Options {
        let mut a = BenchArgs::new("fleet", USAGE, args);
        let window = a.seconds("--window", 60, POSITIVE);
        let interval_s = a.number("--interval", 10, POSITIVE);
        let calls = a.number("--calls", 30, POSITIVE).min(1000) as usize;
        let real_window = a.seconds("--real-window", 20, POSITIVE);
        let stagger = a.switch("--stagger");
        let heavy_rc = a.switch("--heavy-rc");
        let mut sizes: Vec<usize> = a
            .numbers("fleet size", 1..=20_000)
            .into_iter()
            .map(|n| n as usize)
            .collect();
        let all = a.word("all");
        let mut fleet = a.word("fleet") || all || !sizes.is_empty();
        let mut baseline = a.word("baseline") || all;
        a.finish();
        if !fleet && !baseline {
            fleet = true;
            baseline = true;
        }
        if sizes.is_empty() {
            sizes = DEFAULT_SIZES.to_vec();
        }
        Options {
            fleet,
            baseline,
            sizes,
            window,
            interval_s,
            calls,
            real_window,
            stagger,
            heavy_rc,
        }
    }
}

/// The baseline account with bash as its login shell and a ~/.bashrc that
/// costs about 0.3 s of CPU here (Debian's bash reads ~/.bashrc when sshd starts it
/// for a command): what every exec pays on such an account. Undone on drop.
struct HeavyRc {
    bashrc: PathBuf,
}

impl HeavyRc {
    fn install() -> Result<HeavyRc, String> {
        let home = PathBuf::from(format!("/home/{SSH_USER}"));
        let bashrc = home.join(".bashrc");
        std::fs::write(
            &bashrc,
            "# herd bench: a slow rc file\ni=0; while [ $i -lt 40000 ]; do i=$((i+1)); done\n",
        )
        .map_err(|e| format!("{}: {e}", bashrc.display()))?;
        let out = Command::new("usermod")
            .args(["-s", "/bin/bash", SSH_USER])
            .output()
            .map_err(|e| format!("usermod: {e}"))?;
        if !out.status.success() {
            let _ = std::fs::remove_file(&bashrc);
            return Err(format!(
                "usermod -s /bin/bash: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(HeavyRc { bashrc })
    }
}

impl Drop for HeavyRc {
    fn drop(&mut self) {
        let _ = Command::new("usermod")
            .args(["-s", "/bin/sh", SSH_USER])
            .output();
        let _ = std::fs::remove_file(&self.bashrc);
    }
}

// ---------------------------------------------------------------------------
// Fleet

#[derive(Debug, Default)]
struct FleetRow {
    targets: usize,
    up_at_start: usize,
    up_at_end: usize,
    warmup_s: f64,
    window_s: f64,
    scrapes: u64,
    expected_scrapes: f64,
    node_cpu_s: f64,
    cpu_ms_per_scrape: f64,
    cpu_pct: f64,
    idle_cpu_pct: f64,
    duration_p50_ms: f64,
    duration_p99_ms: f64,
    duration_max_ms: f64,
    lateness_p50_ms: f64,
    lateness_p99_ms: f64,
    lateness_max_ms: f64,
    /// Scrapes the node's timing percentiles are over (its window of the last 20,000).
    stats_over: u64,
    rss_bytes: u64,
    rss_idle_bytes: u64,
    rss_per_target: f64,
    samples_per_s: f64,
    store_bytes: u64,
    store_samples: u64,
    bytes_per_sample: f64,
    dropped: u64,
    commits_per_s: f64,
    fake_cpu_ms_per_scrape: f64,
    rates_ok: bool,
    /// Share of the node's timing window that is first (connecting) scrapes.
    connect_share_pct: f64,
    /// Execs the fake fleet answered in the window, sessions it accepted in all,
    /// sessions open at the end.
    fake_execs: u64,
    fake_sessions: u64,
    fake_open: u64,
    fake_rss_bytes: u64,
    rtt_p50_ms: f64,
    rtt_p99_ms: f64,
    rtt_max_ms: f64,
    /// Host CPU used by neither the node nor the fake fleet, % of one CPU.
    other_cpu_pct: f64,
    peak_scrapes_per_s: f64,
    busy_time_pct: f64,
    /// How the node's CPU was read: "schedstat" (ns) or "stat" (ticks).
    cpu_source: &'static str,
    /// The dashboard's target page (`/herd/v1/status?limit=50`, over HTTP with curl)
    /// and the whole status document: latency p50/p99 and bytes.
    page_p50_ms: f64,
    page_p99_ms: f64,
    page_bytes: u64,
    status_all_p50_ms: f64,
    status_all_bytes: u64,
    stop_s: f64,
    stop_status: String,
    errors: Vec<String>,
}

impl FleetRow {
    fn to_json(&self) -> Value {
        json!({
            "targets": self.targets,
            "up_at_start": self.up_at_start,
            "up_at_end": self.up_at_end,
            "warmup_s": self.warmup_s,
            "window_s": self.window_s,
            "scrapes": self.scrapes,
            "expected_scrapes": self.expected_scrapes,
            "node_cpu_s": self.node_cpu_s,
            "node_cpu_source": self.cpu_source,
            "cpu_ms_per_scrape": self.cpu_ms_per_scrape,
            "cpu_s_per_1000_scrapes": self.cpu_ms_per_scrape,
            "cpu_pct_of_one_core": self.cpu_pct,
            "idle_cpu_pct_of_one_core": self.idle_cpu_pct,
            "duration_p50_ms": self.duration_p50_ms,
            "duration_p99_ms": self.duration_p99_ms,
            "duration_max_ms": self.duration_max_ms,
            "lateness_p50_ms": self.lateness_p50_ms,
            "lateness_p99_ms": self.lateness_p99_ms,
            "lateness_max_ms": self.lateness_max_ms,
            "timing_over_last_scrapes": self.stats_over,
            "timing_first_scrapes_pct": self.connect_share_pct,
            "fake_fleet_execs": self.fake_execs,
            "fake_fleet_sessions_accepted": self.fake_sessions,
            "fake_fleet_sessions_open": self.fake_open,
            "fake_fleet_rss_bytes": self.fake_rss_bytes,
            "target_side_exec_p50_ms": self.rtt_p50_ms,
            "target_side_exec_p99_ms": self.rtt_p99_ms,
            "target_side_exec_max_ms": self.rtt_max_ms,
            "other_host_cpu_pct_of_one_core": self.other_cpu_pct,
            "peak_scrapes_per_s": self.peak_scrapes_per_s,
            "time_pct_holding_90pct_of_scrapes": self.busy_time_pct,
            "rss_bytes": self.rss_bytes,
            "rss_idle_bytes": self.rss_idle_bytes,
            "rss_bytes_per_target": self.rss_per_target,
            "samples_per_s": self.samples_per_s,
            "store_bytes": self.store_bytes,
            "store_samples": self.store_samples,
            "bytes_per_sample": self.bytes_per_sample,
            "samples_dropped": self.dropped,
            "store_commits_per_s": self.commits_per_s,
            "fake_fleet_cpu_ms_per_scrape": self.fake_cpu_ms_per_scrape,
            "rates_ok": self.rates_ok,
            "dashboard_page_p50_ms": self.page_p50_ms,
            "dashboard_page_p99_ms": self.page_p99_ms,
            "dashboard_page_bytes": self.page_bytes,
            "status_all_targets_p50_ms": self.status_all_p50_ms,
            "status_all_targets_bytes": self.status_all_bytes,
            "stop_s": self.stop_s,
            "stop_status": self.stop_status,
            "errors": self.errors,
        })
    }
}

fn bench_fleet(rt: &tokio::runtime::Runtime, n: usize, opts: &Options) -> FleetRow {
    let mut row = FleetRow {
        targets: n,
        ..Default::default()
    };
    progress(&format!(
        "fleet {n}: starting the fake fleet (russh server, own process)"
    ));
    let mut fleet = FakeFleet::start();
    let dir = tempfile::Builder::new()
        .prefix("herd-bench-")
        .tempdir()
        .expect("temp dir");
    let key_path = dir.path().join("client_ed25519");
    write_client_key(&key_path);
    let known_hosts = dir.path().join("known_hosts");
    std::fs::write(
        &known_hosts,
        format!("[127.0.0.1]:{} {}\n", fleet.port, fleet.host_key),
    )
    .expect("writing known_hosts");

    progress(&format!("fleet {n}: starting herd node (release)"));
    let mut herd = Herd::start(HerdOptions {
        ssh_key: Some(key_path),
        known_hosts: Some(known_hosts),
        ssh_user: "bench".into(),
        connect_timeout: "10s".into(),
        reconnect_min: "1s".into(),
        reconnect_max: "60s".into(),
        flush_interval: "1s".into(),
        ..Default::default()
    });
    let pid = node_pid(&herd);

    // The node with no targets: its floor.
    let c0 = read_cpu(pid).unwrap_or_default();
    std::thread::sleep(IDLE_WINDOW);
    let c1 = read_cpu(pid).unwrap_or_default();
    row.idle_cpu_pct = cpu_between(&c0, &c1).0 / IDLE_WINDOW.as_secs_f64() * 100.0;
    row.rss_idle_bytes = vm_rss(pid).unwrap_or(0);

    let interval = format!("{}s", opts.interval_s);
    let address = format!("127.0.0.1:{}", fleet.port);
    let fleet_of = |count: usize| -> String {
        let mut text = String::with_capacity(count * 110);
        for i in 0..count {
            text.push_str(&ssh_target(&target_name(i), &address, &interval));
        }
        text
    };
    let applied = Instant::now();
    if opts.stagger {
        // One apply per second over one interval, each adding its share: every
        // batch starts in its own second, so the scrapes spread over the interval.
        let batches = (opts.interval_s as usize).clamp(1, n);
        progress(&format!(
            "fleet {n}: herd apply in {batches} batches 1 s apart ({n} targets every {interval})"
        ));
        for b in 1..=batches {
            herd.apply(&fleet_of(n * b / batches));
            if b < batches {
                let next = applied + Duration::from_secs(b as u64);
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        }
    } else {
        progress(&format!(
            "fleet {n}: herd apply ({n} targets every {interval})"
        ));
        herd.apply(&fleet_of(n));
    }

    // Warm-up: every target has scraped once and is up.
    let mut last_print = Instant::now();
    loop {
        let up = match status(rt, &herd.addr()) {
            Ok(s) => s.targets.iter().filter(|t| t.up == 1).count(),
            Err(e) => {
                progress(&format!("fleet {n}: status failed during warm-up: {e}"));
                0
            }
        };
        row.up_at_start = up;
        if up == n {
            break;
        }
        if applied.elapsed() >= WARMUP_TIMEOUT {
            let message = format!(
                "only {up}/{n} targets up after {WARMUP_TIMEOUT:?} of warm-up; measuring anyway"
            );
            progress(&format!("fleet {n}: WARNING {message}"));
            row.errors.push(message);
            break;
        }
        if last_print.elapsed() >= Duration::from_secs(6) {
            progress(&format!(
                "fleet {n}: warm-up, {up}/{n} up after {:.0} s",
                applied.elapsed().as_secs_f64()
            ));
            last_print = Instant::now();
        }
        std::thread::sleep(WARMUP_POLL);
    }
    row.warmup_s = applied.elapsed().as_secs_f64();
    progress(&format!(
        "fleet {n}: {}/{n} up after {:.1} s; measuring for {} s",
        row.up_at_start,
        row.warmup_s,
        opts.window.as_secs()
    ));

    // The window.
    let s0 = status(rt, &herd.addr()).expect("status at window start");
    let cpu0 = read_cpu(pid).expect("node /proc stat");
    let host0 = host_cpu();
    let fake0 = read_cpu(fleet.pid()).unwrap_or_default();
    if let Err(e) = fleet.mark() {
        row.errors.push(e);
    }
    let t0 = Instant::now();
    let mut remaining = opts.window;
    while !remaining.is_zero() {
        let step = remaining.min(Duration::from_secs(15));
        std::thread::sleep(step);
        remaining -= step;
        if !remaining.is_zero() {
            progress(&format!("fleet {n}: {} s left", remaining.as_secs()));
        }
    }
    let cpu1 = read_cpu(pid).expect("node /proc stat");
    let host1 = host_cpu();
    let fake1 = read_cpu(fleet.pid()).unwrap_or_default();
    match fleet.stats() {
        Ok(f) => {
            row.fake_execs = f.execs;
            row.fake_sessions = f.sessions;
            row.fake_open = f.open;
            if f.other_commands > 0 {
                row.errors.push(format!(
                    "{} execs were not this bench's VITALS_COMMAND: the node's command changed, \
                     update the copy in tests/benches/fleet.rs (the baseline runs the copy)",
                    f.other_commands
                ));
            }
            row.rtt_p50_ms = f.rtt_p50_ms;
            row.rtt_p99_ms = f.rtt_p99_ms;
            row.rtt_max_ms = f.rtt_max_ms;
            (row.peak_scrapes_per_s, row.busy_time_pct) = burstiness(&f.buckets);
        }
        Err(e) => row.errors.push(e),
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let s1 = status(rt, &herd.addr()).expect("status at window end");
    row.rss_bytes = vm_rss(pid).unwrap_or(0);
    row.fake_rss_bytes = vm_rss(fleet.pid()).unwrap_or(0);

    let sc0 = s0.scrapes.unwrap_or_default();
    let sc1 = s1.scrapes.unwrap_or_default();
    row.window_s = elapsed;
    row.scrapes = sc1.count.saturating_sub(sc0.count);
    row.expected_scrapes = n as f64 * elapsed / opts.interval_s as f64;
    (row.node_cpu_s, row.cpu_source) = cpu_between(&cpu0, &cpu1);
    row.cpu_pct = row.node_cpu_s / elapsed * 100.0;
    row.cpu_ms_per_scrape = per(row.node_cpu_s * 1000.0, row.scrapes);
    let fake_cpu_s = cpu_between(&fake0, &fake1).0;
    row.fake_cpu_ms_per_scrape = per(fake_cpu_s * 1000.0, row.scrapes);
    // Whatever else ran on the host in the window (a build, another test) competes
    // with the node for the CPUs and shows in lateness.
    row.other_cpu_pct = ((host1.0 - host0.0) - row.node_cpu_s - fake_cpu_s) / elapsed * 100.0;
    if row.other_cpu_pct > 10.0 {
        row.errors.push(format!(
            "other processes used {:.0}% of a CPU during the window: figures are disturbed",
            row.other_cpu_pct
        ));
    }
    row.duration_p50_ms = sc1.duration_p50_ms;
    row.duration_p99_ms = sc1.duration_p99_ms;
    row.duration_max_ms = sc1.duration_max_ms;
    row.lateness_p50_ms = sc1.lateness_p50_ms;
    row.lateness_p99_ms = sc1.lateness_p99_ms;
    row.lateness_max_ms = sc1.lateness_max_ms;
    row.stats_over = sc1.count.min(NODE_STATS_WINDOW);
    // The node's timing window holds its last 20,000 scrapes; the first scrape of
    // each target (TCP + SSH handshake) is in it until that many came after.
    let first_scrapes_left = (n as u64).saturating_sub(sc1.count.saturating_sub(NODE_STATS_WINDOW));
    row.connect_share_pct = first_scrapes_left as f64 / row.stats_over.max(1) as f64 * 100.0;
    row.rss_per_target = row.rss_bytes.saturating_sub(row.rss_idle_bytes) as f64 / n as f64;
    row.samples_per_s = s1.store_samples.saturating_sub(s0.store_samples) as f64 / elapsed;
    row.store_bytes = s1.store_bytes;
    row.store_samples = s1.store_samples;
    row.bytes_per_sample = per(s1.store_bytes as f64, s1.store_samples);
    row.dropped = s1.store_samples_dropped;
    row.commits_per_s = s1.store_commits.saturating_sub(s0.store_commits) as f64 / elapsed;
    row.up_at_end = s1.targets.iter().filter(|t| t.up == 1).count();
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    for t in &s1.targets {
        if !t.last_error.is_empty() {
            *errors.entry(t.last_error.clone()).or_default() += 1;
        }
    }
    for (e, count) in errors {
        row.errors.push(format!("{count} targets: {e}"));
    }

    // The fake output must make the node compute rates, like a real machine.
    let probe = target_name(0);
    let cpu_points = herd.points(&probe, "cpu.used_pct").len();
    let net_points = herd.points(&probe, "net.rx_bytes_per_s").len();
    row.rates_ok = cpu_points > 0 && net_points > 0;
    if !row.rates_ok {
        row.errors.push(format!(
            "{probe}: {cpu_points} cpu.used_pct and {net_points} net.rx_bytes_per_s points"
        ));
    }

    progress(&format!(
        "fleet {n}: the dashboard's page of 50 targets, 30 times"
    ));
    match http_latency(&herd.http_addr(), "/herd/v1/status?limit=50&state=up", 30) {
        Ok((p50, p99, bytes)) => {
            (row.page_p50_ms, row.page_p99_ms, row.page_bytes) = (p50, p99, bytes)
        }
        Err(e) => row.errors.push(e),
    }
    match http_latency(&herd.http_addr(), "/herd/v1/status", 5) {
        Ok((p50, _, bytes)) => (row.status_all_p50_ms, row.status_all_bytes) = (p50, bytes),
        Err(e) => row.errors.push(e),
    }
    progress(&format!(
        "fleet {n}: dashboard page p50 {:.1} ms, p99 {:.1} ms, {} bytes (whole status: {:.1} ms, {} bytes)",
        row.page_p50_ms, row.page_p99_ms, row.page_bytes, row.status_all_p50_ms, row.status_all_bytes
    ));

    progress(&format!("fleet {n}: stopping the node (SIGTERM)"));
    let stopping = Instant::now();
    let status = herd.sigterm();
    row.stop_s = stopping.elapsed().as_secs_f64();
    row.stop_status = status.to_string();
    if !status.success() {
        row.errors
            .push(format!("node exited with {status} after SIGTERM"));
    }
    drop(fleet);
    progress(&format!(
        "fleet {n}: {} scrapes, {:.3} ms CPU per scrape, p99 {:.1} ms, late p99 {:.1} ms",
        row.scrapes, row.cpu_ms_per_scrape, row.duration_p99_ms, row.lateness_p99_ms
    ));
    for e in &row.errors {
        progress(&format!("fleet {n}: note: {e}"));
    }
    row
}

fn target_name(i: usize) -> String {
    format!("fake-{i:05}")
}

/// The fake fleet: this executable run with `--fake-fleet`, a russh server on
/// 127.0.0.1 at a port it picks. It prints `READY PORT HOSTKEY` once it listens,
/// then answers `mark` and `stats` lines on its stdin (see [`fake`]).
struct FakeFleet {
    child: Child,
    stdin: std::process::ChildStdin,
    lines: mpsc::Receiver<String>,
    port: u16,
    /// `ssh-ed25519 AAAA...`
    host_key: String,
}

/// What the fake fleet saw between `mark` and `stats`.
#[derive(Debug, Default)]
struct FakeStats {
    execs: u64,
    sessions: u64,
    open: u64,
    /// Execs whose command differed from this file's `VITALS_COMMAND`.
    other_commands: u64,
    /// Execs per 100 ms since the mark.
    buckets: Vec<u64>,
    /// Channel open → the node's answer to a ping sent after CLOSE: the exec as
    /// the target sees it.
    rtt_p50_ms: f64,
    rtt_p99_ms: f64,
    rtt_max_ms: f64,
}

impl FakeFleet {
    fn start() -> FakeFleet {
        let exe = std::env::current_exe().expect("current_exe");
        let mut cmd = Command::new(exe);
        cmd.arg("--fake-fleet")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().expect("cannot start the fake fleet");
        let stdout = child.stdout.take().expect("piped stdout");
        let stdin = child.stdin.take().expect("piped stdin");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let line = match lines.recv_timeout(Duration::from_secs(20)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                panic!("the fake fleet did not start within 20 s");
            }
        };
        let mut parts = line.split_whitespace();
        let (Some("READY"), Some(port), Some(alg), Some(key)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            let _ = child.kill();
            panic!("the fake fleet said {line:?}, not READY PORT KEY");
        };
        FakeFleet {
            port: port.parse().expect("fake fleet port"),
            host_key: format!("{alg} {key}"),
            child,
            stdin,
            lines,
        }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends one command line and returns the answer line.
    fn ask(&mut self, command: &str) -> Result<String, String> {
        writeln!(self.stdin, "{command}")
            .and_then(|()| self.stdin.flush())
            .map_err(|e| format!("fake fleet stdin: {e}"))?;
        self.lines
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| format!("the fake fleet did not answer {command:?}"))
    }

    /// Starts counting execs per 100 ms from now.
    fn mark(&mut self) -> Result<(), String> {
        self.ask("mark").map(|_| ())
    }

    fn stats(&mut self) -> Result<FakeStats, String> {
        let line = self.ask("stats")?;
        let v: Value =
            serde_json::from_str(&line).map_err(|e| format!("fake fleet stats {line:?}: {e}"))?;
        let n = |k: &str| v[k].as_u64().unwrap_or(0);
        let ms = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        Ok(FakeStats {
            rtt_p50_ms: ms("rtt_p50_ms"),
            rtt_p99_ms: ms("rtt_p99_ms"),
            rtt_max_ms: ms("rtt_max_ms"),
            execs: n("execs_since_mark"),
            sessions: n("sessions"),
            open: n("open"),
            other_commands: n("other_commands"),
            buckets: v["buckets_100ms"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_u64).collect())
                .unwrap_or_default(),
        })
    }
}

impl Drop for FakeFleet {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How bunched up the scrapes are: the busiest second's rate, and the share of
/// time (100 ms slots) that holds 90% of the scrapes (10% = evenly spread over a
/// tenth of the time; 90% = smooth).
fn burstiness(buckets: &[u64]) -> (f64, f64) {
    let peak_per_s = buckets
        .windows(10)
        .map(|w| w.iter().sum::<u64>())
        .max()
        .unwrap_or_else(|| buckets.iter().sum()) as f64;
    let total: u64 = buckets.iter().sum();
    let mut sorted = buckets.to_vec();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    let mut acc = 0;
    let mut slots = 0;
    for b in sorted {
        if acc * 10 >= total * 9 {
            break;
        }
        acc += b;
        slots += 1;
    }
    let share = if buckets.is_empty() {
        f64::NAN
    } else {
        slots as f64 / buckets.len() as f64 * 100.0
    };
    (peak_per_s, share)
}

/// A fresh ed25519 client key in OpenSSH format (what `ssh-keygen` writes).
fn write_client_key(path: &Path) {
    let seed: [u8; 32] = rand::random();
    let key = russh::keys::PrivateKey::from(
        russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&seed),
    );
    let text = key
        .to_openssh(russh::keys::ssh_key::LineEnding::LF)
        .expect("encoding the client key");
    std::fs::write(path, text.as_bytes()).expect("writing the client key");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .expect("chmod client key");
}

// ---------------------------------------------------------------------------
// Baseline: OpenSSH and a real sshd

#[derive(Debug, Default)]
struct SshRun {
    calls: usize,
    client_cpu_ms: f64,
    /// ControlMaster only: the backgrounded master's CPU per call.
    master_cpu_ms: Option<f64>,
    target_cpu_ms: f64,
    wall_p50_ms: f64,
    wall_p99_ms: f64,
}

impl SshRun {
    fn to_json(&self) -> Value {
        json!({
            "calls": self.calls,
            "client_cpu_ms_per_call": self.client_cpu_ms,
            "master_cpu_ms_per_call": self.master_cpu_ms,
            "client_total_cpu_ms_per_call": self.client_cpu_ms + self.master_cpu_ms.unwrap_or(0.0),
            "target_cpu_ms_per_call": self.target_cpu_ms,
            "wall_p50_ms": self.wall_p50_ms,
            "wall_p99_ms": self.wall_p99_ms,
        })
    }
}

#[derive(Debug, Default)]
struct RealHerd {
    scrapes: u64,
    window_s: f64,
    node_cpu_ms: f64,
    sshd_cpu_ms: f64,
    sshd_with_command_cpu_ms: f64,
    duration_p50_ms: f64,
}

#[derive(Debug, Default)]
struct Baseline {
    skipped: Option<String>,
    /// Measured with `--heavy-rc`.
    heavy_rc: bool,
    command_cpu_ms: Option<f64>,
    fresh: Option<SshRun>,
    master: Option<SshRun>,
    /// The herd's node in its default mode (a long-lived shell per target).
    herd: Option<RealHerd>,
    /// The same with `[ssh] shell = false` (an exec channel per scrape).
    herd_exec: Option<RealHerd>,
    errors: Vec<String>,
}

impl RealHerd {
    fn to_json(&self) -> Value {
        json!({
            "scrapes": self.scrapes,
            "window_s": self.window_s,
            "node_cpu_ms_per_scrape": self.node_cpu_ms,
            "sshd_cpu_ms_per_scrape": self.sshd_cpu_ms,
            "sshd_with_command_cpu_ms_per_scrape": self.sshd_with_command_cpu_ms,
            "duration_p50_ms": self.duration_p50_ms,
        })
    }
}

impl Baseline {
    fn to_json(&self) -> Value {
        json!({
            "skipped": self.skipped,
            "heavy_rc": self.heavy_rc,
            "command_alone_cpu_ms": self.command_cpu_ms,
            "fresh_ssh": self.fresh.as_ref().map(SshRun::to_json),
            "control_master": self.master.as_ref().map(SshRun::to_json),
            "herd_vs_real_sshd": self.herd.as_ref().map(RealHerd::to_json),
            "herd_vs_real_sshd_exec_channels": self.herd_exec.as_ref().map(RealHerd::to_json),
            "errors": self.errors,
        })
    }
}

fn bench_baseline(rt: &tokio::runtime::Runtime, opts: &Options) -> Baseline {
    let mut b = Baseline::default();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        b.skipped = Some("needs root (starts sshd, creates the herdtest account)".into());
    } else if !Path::new("/usr/sbin/sshd").is_file() || which("ssh").is_none() {
        b.skipped =
            Some("needs openssh-server and openssh-client (scripts/test installs them)".into());
    }
    if let Some(why) = &b.skipped {
        progress(&format!("baseline: skipped: {why}"));
        return b;
    }
    progress("baseline: starting a real OpenSSH sshd on 127.0.0.1");
    let sshd = Sshd::start();
    let _rc = if opts.heavy_rc {
        match HeavyRc::install() {
            Ok(rc) => {
                progress(&format!(
                    "baseline: {SSH_USER} logs in with bash and a slow ~/.bashrc"
                ));
                b.heavy_rc = true;
                Some(rc)
            }
            Err(e) => {
                b.skipped = Some(format!("--heavy-rc: {e}"));
                return b;
            }
        }
    } else {
        None
    };
    let config = sshd.dir().join("sshd_config").display().to_string();
    let listener = pid_with_cmdline(&config).expect("sshd's pid");

    b.command_cpu_ms = Some(command_alone_cpu_ms(opts.calls));

    progress(&format!("baseline: {} fresh `ssh` calls", opts.calls));
    match ssh_runs(&sshd, listener, opts.calls, &[], None) {
        Ok(r) => b.fresh = Some(r),
        Err(e) => b.errors.push(format!("fresh ssh: {e}")),
    }

    progress(&format!(
        "baseline: {} calls through a ControlMaster",
        opts.calls
    ));
    let control_dir = tempfile::Builder::new()
        .prefix("herd-bench-cm-")
        .tempdir()
        .expect("temp dir");
    let control_path = control_dir.path().join("cm-%C").display().to_string();
    let cm_opts = [
        "-o".to_string(),
        "ControlMaster=auto".to_string(),
        "-o".to_string(),
        format!("ControlPath={control_path}"),
        "-o".to_string(),
        "ControlPersist=60".to_string(),
    ];
    match ssh_runs(&sshd, listener, opts.calls, &cm_opts, Some(&cm_opts)) {
        Ok(r) => b.master = Some(r),
        Err(e) => b.errors.push(format!("ControlMaster: {e}")),
    }
    let mut exit = ssh_command(&sshd, &cm_opts);
    exit.args(["-O", "exit"])
        .arg(format!("{SSH_USER}@127.0.0.1"));
    let _ = run_timed(&mut exit);

    for shell in [true, false] {
        progress(&format!(
            "baseline: herd node ({}), 1 target on the real sshd every 1 s for {} s",
            if shell {
                "long-lived shell"
            } else {
                "exec channels"
            },
            opts.real_window.as_secs()
        ));
        match herd_vs_real(rt, &sshd, listener, opts.real_window, shell) {
            Ok(h) if shell => b.herd = Some(h),
            Ok(h) => b.herd_exec = Some(h),
            Err(e) => b
                .errors
                .push(format!("herd vs real sshd (shell = {shell}): {e}")),
        }
    }
    for e in &b.errors {
        progress(&format!("baseline: note: {e}"));
    }
    b
}

fn ssh_command(sshd: &Sshd, extra: &[String]) -> Command {
    let mut cmd = Command::new("ssh");
    cmd.arg("-F")
        .arg("/dev/null")
        .arg("-i")
        .arg(sshd.client_key())
        .arg("-p")
        .arg(sshd.port().to_string())
        .arg("-o")
        .arg(format!(
            "UserKnownHostsFile={}",
            sshd.known_hosts().display()
        ))
        .args([
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
        ])
        .args(extra);
    cmd
}

/// `calls` vitals calls through `ssh`; with `master` set, one warm-up call first
/// (it starts the ControlMaster) and the master's own CPU is read from /proc.
fn ssh_runs(
    sshd: &Sshd,
    listener: i32,
    calls: usize,
    extra: &[String],
    master: Option<&[String]>,
) -> Result<SshRun, String> {
    let dest = format!("{SSH_USER}@127.0.0.1");
    let call = |i: usize| -> Result<Duration, String> {
        let mut cmd = ssh_command(sshd, extra);
        cmd.arg(&dest).arg(command_for_call(i));
        let (out, wall) = run_timed(&mut cmd)?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || !stdout.contains("@@herd:end") {
            return Err(format!(
                "ssh exited with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(wall)
    };
    let mut master_pid = None;
    if let Some(cm) = master {
        call(0)?;
        let mut check = ssh_command(sshd, cm);
        check.args(["-O", "check"]).arg(&dest);
        let (out, _) = run_timed(&mut check)?;
        let text = String::from_utf8_lossy(&out.stderr);
        master_pid = text
            .split("pid=")
            .nth(1)
            .and_then(|r| r.split(')').next())
            .and_then(|p| p.trim().parse::<i32>().ok());
        if master_pid.is_none() {
            return Err(format!("`ssh -O check` said {text:?}"));
        }
    }
    settle_sshd(listener);
    let target0 = tree_cpu(listener);
    let master0 = master_pid.and_then(threads_cpu).unwrap_or_default();
    let children0 = children_cpu_s();
    let mut walls = Vec::with_capacity(calls);
    for i in 0..calls {
        walls.push(call(i)?.as_secs_f64() * 1000.0);
    }
    let children1 = children_cpu_s();
    let master1 = master_pid.and_then(threads_cpu).unwrap_or_default();
    settle_sshd(listener);
    let target1 = tree_cpu(listener);
    Ok(SshRun {
        calls,
        client_cpu_ms: (children1 - children0) * 1000.0 / calls as f64,
        master_cpu_ms: master_pid
            .map(|_| (master1.seconds - master0.seconds) * 1000.0 / calls as f64),
        target_cpu_ms: (target1 - target0) * 1000.0 / calls as f64,
        wall_p50_ms: percentile(&mut walls, 50.0),
        wall_p99_ms: percentile(&mut walls, 99.0),
    })
}

/// CPU of the vitals command alone, run by `sh -c` here (as the `herdtest`
/// account would, minus sshd).
fn command_alone_cpu_ms(calls: usize) -> f64 {
    let c0 = children_cpu_s();
    for i in 0..calls {
        let _ = run_timed(Command::new("/bin/sh").arg("-c").arg(command_for_call(i)));
    }
    (children_cpu_s() - c0) * 1000.0 / calls as f64
}

/// Waits (bounded) until sshd has no per-connection process left, so that their
/// CPU has been reaped into the listener's cutime/cstime.
fn settle_sshd(listener: i32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !descendants(listener).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn herd_vs_real(
    rt: &tokio::runtime::Runtime,
    sshd: &Sshd,
    listener: i32,
    window: Duration,
    shell: bool,
) -> Result<RealHerd, String> {
    let mut herd = Herd::start(HerdOptions {
        flush_interval: "1s".into(),
        connect_timeout: "10s".into(),
        ssh_extra: format!("shell = {shell}\n"),
        ..HerdOptions::with_sshd(sshd)
    });
    let pid = node_pid(&herd);
    herd.apply(&ssh_target("real-1", &sshd.address(), "1s"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = status(rt, &herd.addr())?;
        if s.targets.iter().any(|t| t.up == 1 && t.scrapes >= 2) {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the target was not up within 30 s: {:?}",
                s.targets.first().map(|t| &t.last_error)
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let s0 = status(rt, &herd.addr())?;
    let node0 = read_cpu(pid).ok_or("node stat")?;
    let (sshd0, sshd_cmd0) = session_cpu(listener);
    let t0 = Instant::now();
    std::thread::sleep(window);
    let node1 = read_cpu(pid).ok_or("node stat")?;
    let (sshd1, sshd_cmd1) = session_cpu(listener);
    let window_s = t0.elapsed().as_secs_f64();
    let s1 = status(rt, &herd.addr())?;
    let sc1 = s1.scrapes.unwrap_or_default();
    let scrapes = sc1
        .count
        .saturating_sub(s0.scrapes.unwrap_or_default().count);
    let status = herd.sigterm();
    if !status.success() {
        return Err(format!("node exited with {status} after SIGTERM"));
    }
    Ok(RealHerd {
        scrapes,
        window_s,
        node_cpu_ms: per(cpu_between(&node0, &node1).0 * 1000.0, scrapes),
        sshd_cpu_ms: per((sshd1 - sshd0) * 1000.0, scrapes),
        sshd_with_command_cpu_ms: per((sshd_cmd1 - sshd_cmd0) * 1000.0, scrapes),
        duration_p50_ms: sc1.duration_p50_ms,
    })
}

/// CPU seconds of sshd's per-connection processes (the ones serving the node's
/// session): their own time (exact, schedstat), and their own plus their reaped
/// children's (the commands they ran; those only in 10 ms ticks).
fn session_cpu(listener: i32) -> (f64, f64) {
    let mut own = 0.0;
    let mut with_children = 0.0;
    for p in descendants(listener) {
        if let (Some(c), Some(t)) = (proc_cpu(p), threads_cpu(p)) {
            own += t.seconds;
            with_children += t.seconds + c.children();
        }
    }
    (own, with_children)
}

/// Everything sshd spent: the listener's reaped children plus every live
/// descendant (own and reaped children).
fn tree_cpu(listener: i32) -> f64 {
    let mut sum = proc_cpu(listener).map(|c| c.children()).unwrap_or(0.0);
    for p in descendants(listener) {
        sum += proc_cpu(p).map(|c| c.total()).unwrap_or(0.0);
    }
    sum
}

// ---------------------------------------------------------------------------
// Processes and /proc

#[derive(Debug, Default, Clone, Copy)]
struct Cpu {
    utime: f64,
    stime: f64,
    cutime: f64,
    cstime: f64,
}

impl Cpu {
    fn own(&self) -> f64 {
        self.utime + self.stime
    }
    fn children(&self) -> f64 {
        self.cutime + self.cstime
    }
    fn total(&self) -> f64 {
        self.own() + self.children()
    }
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime, stime, cutime, cstime of `pid` in seconds.
fn proc_cpu(pid: i32) -> Option<Cpu> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = clock_ticks();
    let field = |i: usize| -> Option<f64> { Some(f.get(i)?.parse::<f64>().ok()? / tick) };
    Some(Cpu {
        utime: field(11)?,
        stime: field(12)?,
        cutime: field(13)?,
        cstime: field(14)?,
    })
}

/// CPU of a process to the nanosecond: the sum of its threads' run time
/// (`/proc/PID/task/*/schedstat`), with the thread ids it was summed over.
/// `/proc/PID/stat` counts in clock ticks (10 ms), too coarse for small windows.
#[derive(Debug, Default, Clone)]
struct ThreadsCpu {
    tids: Vec<i32>,
    seconds: f64,
}

fn threads_cpu(pid: i32) -> Option<ThreadsCpu> {
    let mut out = ThreadsCpu::default();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(entry.path().join("schedstat")) else {
            continue;
        };
        let ns: f64 = text.split_whitespace().next()?.parse().ok()?;
        out.tids.push(tid);
        out.seconds += ns / 1e9;
    }
    out.tids.sort_unstable();
    Some(out)
}

/// A process's CPU at one moment, both ways.
#[derive(Debug, Default, Clone)]
struct CpuReading {
    stat: Cpu,
    threads: Option<ThreadsCpu>,
}

fn read_cpu(pid: i32) -> Option<CpuReading> {
    Some(CpuReading {
        stat: proc_cpu(pid)?,
        threads: threads_cpu(pid),
    })
}

/// CPU seconds between two readings: from the threads' run time when the same
/// threads lived at both ends (exact), else from /proc/PID/stat (10 ms ticks,
/// but it keeps the time of threads that exited).
fn cpu_between(a: &CpuReading, b: &CpuReading) -> (f64, &'static str) {
    match (&a.threads, &b.threads) {
        (Some(x), Some(y)) if x.tids == y.tids => (y.seconds - x.seconds, "schedstat"),
        _ => (b.stat.own() - a.stat.own(), "stat"),
    }
}

/// Busy and total CPU seconds of the whole host (all CPUs), from /proc/stat.
fn host_cpu() -> (f64, f64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return (0.0, 0.0);
    };
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|t| t.parse().ok())
        .collect();
    let total: f64 = v.iter().sum();
    let idle = v.get(3).unwrap_or(&0.0) + v.get(4).unwrap_or(&0.0);
    let tick = clock_ticks();
    ((total - idle) / tick, total / tick)
}

fn vm_rss(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// CPU seconds of this process's reaped children.
fn children_cpu_s() -> f64 {
    // SAFETY: getrusage fills the struct we pass; zeroed is a valid rusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// (pid, ppid, cmdline) of every process.
fn processes() -> Vec<(i32, i32, String)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some(ppid) = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
        else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        out.push((pid, ppid, cmdline));
    }
    out
}

fn descendants(pid: i32) -> Vec<i32> {
    let all = processes();
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for (p, pp, _) in &all {
            if *pp == parent && !out.contains(p) {
                out.push(*p);
                frontier.push(*p);
            }
        }
    }
    out
}

/// The one process of ours whose command line contains `needle`.
fn pid_with_cmdline(needle: &str) -> Option<i32> {
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    let mine = descendants(me);
    processes()
        .into_iter()
        .find(|(p, _, cmd)| mine.contains(p) && cmd.contains(needle))
        .map(|(p, _, _)| p)
}

/// The pid of the node process (the harness keeps its `Child` private).
fn node_pid(herd: &Herd) -> i32 {
    let config = herd.config_path().display().to_string();
    pid_with_cmdline(&format!("node --config {config}"))
        .unwrap_or_else(|| panic!("no herd node process with --config {config}"))
}

/// Runs `cmd` (bounded), returning its output and wall time.
fn run_timed(cmd: &mut Command) -> Result<(std::process::Output, Duration), String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    let pid = child.id() as i32;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(SSH_TIMEOUT) {
        Ok(Ok(out)) => Ok((out, started.elapsed())),
        Ok(Err(e)) => Err(format!("waiting for {cmd:?}: {e}")),
        Err(_) => {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            Err(format!("{cmd:?} did not finish within {SSH_TIMEOUT:?}"))
        }
    }
}

/// The child gets SIGKILL when this process dies.
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn which(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(cmd))
            .find(|p| p.is_file())
    })
}

fn machine() -> Value {
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    json!({
        "loadavg_at_end": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": cpu_model,
        "kernel": kernel,
        "clock_ticks": clock_ticks(),
    })
}

// ---------------------------------------------------------------------------
// gRPC

/// `calls` GETs of `path` with the real curl: p50 and p99 of their total time, and
/// the size of the last answer.
fn http_latency(addr: &str, path: &str, calls: usize) -> Result<(f64, f64, u64), String> {
    let mut times = Vec::with_capacity(calls);
    let mut bytes = 0;
    for _ in 0..calls {
        let out = herd_tests::process::run_bounded(
            std::process::Command::new("curl")
                .args([
                    "-s",
                    "-S",
                    "--max-time",
                    "30",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code} %{time_total} %{size_download}",
                ])
                .arg(format!("http://{addr}{path}")),
            Duration::from_secs(40),
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut it = text.split_whitespace();
        let (code, secs, size) = (it.next(), it.next(), it.next());
        if code != Some("200") {
            return Err(format!(
                "GET {path}: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        times.push(secs.and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0) * 1000.0);
        bytes = size.and_then(|s| s.parse().ok()).unwrap_or(0);
    }
    Ok((
        percentile(&mut times, 50.0),
        percentile(&mut times, 99.0),
        bytes,
    ))
}

fn status(rt: &tokio::runtime::Runtime, addr: &str) -> Result<StatusReply, String> {
    rt.block_on(node_status(addr, true, RPC_TIMEOUT))
}

// ---------------------------------------------------------------------------
// Output

fn per(total: f64, count: u64) -> f64 {
    if count == 0 {
        f64::NAN
    } else {
        total / count as f64
    }
}

/// The main table's columns: header and the cell of one row.
type Column = (&'static str, fn(&FleetRow) -> String);

const COLUMNS: &[Column] = &[
    ("targets", |r| r.targets.to_string()),
    ("scrapes", |r| r.scrapes.to_string()),
    ("sched%", |r| {
        format!("{:.1}", r.scrapes as f64 / r.expected_scrapes * 100.0)
    }),
    ("cpu_ms/scrape", |r| format!("{:.3}", r.cpu_ms_per_scrape)),
    ("cpu_s/1000", |r| format!("{:.3}", r.cpu_ms_per_scrape)),
    ("cpu%", |r| format!("{:.1}", r.cpu_pct)),
    ("p50_ms", |r| {
        let mark = if r.connect_share_pct > 25.0 { "*" } else { "" };
        format!("{:.2}{mark}", r.duration_p50_ms)
    }),
    ("p99_ms", |r| {
        let mark = if r.connect_share_pct > 0.5 { "*" } else { "" };
        format!("{:.2}{mark}", r.duration_p99_ms)
    }),
    ("late_p99_ms", |r| format!("{:.1}", r.lateness_p99_ms)),
    ("tgt_p50/p99_ms", |r| {
        format!("{:.2}/{:.1}", r.rtt_p50_ms, r.rtt_p99_ms)
    }),
    ("peak/s", |r| format!("{:.0}", r.peak_scrapes_per_s)),
    ("rss_B/target", |r| format!("{:.0}", r.rss_per_target)),
    ("samples/s", |r| format!("{:.0}", r.samples_per_s)),
    ("B/sample", |r| format!("{:.2}", r.bytes_per_sample)),
    ("dropped", |r| r.dropped.to_string()),
    ("up", |r| r.up_at_end.to_string()),
];

/// What the columns mean, printed under the table.
const TABLE_NOTES: &[&str] = &[
    "sched% = scrapes / (targets x window / interval); cpu% = node CPU over the window, \
     of one core;",
    "cpu_s/1000 = CPU s per 1000 scrapes (the same number as ms per scrape)",
    "rss_B/target = (VmRSS at the end - VmRSS of the idle node) / targets;",
    "B/sample = redb file bytes (free pages included) / samples written",
    "p50/p99/late are the node's own, over its last 20,000 scrapes; * = that window still \
     holds",
    "  the first scrape of each target (TCP + SSH handshake) and they skew this percentile",
    "tgt_p50/p99_ms = exec as the fake target saw it (channel open to the node's answer",
    "  to a ping sent after CLOSE), over the window only",
    "peak/s = most scrapes the fake fleet answered in one second of the window \
     (mean = targets / interval)",
];

fn print_table(rows: &[FleetRow], baseline: Option<&Baseline>) {
    let mut out = String::new();
    if !rows.is_empty() {
        let cells: Vec<Vec<String>> = rows
            .iter()
            .map(|r| COLUMNS.iter().map(|(_, cell)| cell(r)).collect())
            .collect();
        let widths: Vec<usize> = COLUMNS
            .iter()
            .enumerate()
            .map(|(i, (name, _))| {
                cells
                    .iter()
                    .map(|row| row[i].len())
                    .chain([name.len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        out.push('\n');
        let names: Vec<String> = COLUMNS.iter().map(|(n, _)| n.to_string()).collect();
        for line in std::iter::once(&names).chain(&cells) {
            let padded: Vec<String> = line
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:>w$}"))
                .collect();
            out.push_str(&padded.join("  "));
            out.push('\n');
        }
        for note in TABLE_NOTES {
            out.push_str("  ");
            out.push_str(note);
            out.push('\n');
        }
        for r in rows {
            let mib = |b: u64| b as f64 / 1048576.0;
            out.push_str(&format!(
                "  {} targets: node idle {:.2}% cpu, RSS {:.1} MiB (idle {:.1} MiB), \
                 warm-up {:.1} s, store {:.1} MiB / {} samples, {:.2} commits/s,\n    \
                 scrape p99/max {:.1}/{:.1} ms over the last {} scrapes ({:.1}% first scrapes), \
                 late p50/max {:.1}/{:.1} ms,\n    \
                 90% of the scrapes fell in {:.0}% of the time, \
                 fake fleet {} execs in the window / {} sessions ({} open), \
                 {:.3} ms CPU/scrape, RSS {:.1} MiB,\n    node cpu read from {}, \
                 other processes {:.1}% of a CPU, \
                 node stopped in {:.1} s ({})\n",
                r.targets,
                r.idle_cpu_pct,
                mib(r.rss_bytes),
                mib(r.rss_idle_bytes),
                r.warmup_s,
                mib(r.store_bytes),
                r.store_samples,
                r.commits_per_s,
                r.duration_p99_ms,
                r.duration_max_ms,
                r.stats_over,
                r.connect_share_pct,
                r.lateness_p50_ms,
                r.lateness_max_ms,
                r.busy_time_pct,
                r.fake_execs,
                r.fake_sessions,
                r.fake_open,
                r.fake_cpu_ms_per_scrape,
                mib(r.fake_rss_bytes),
                r.cpu_source,
                r.other_cpu_pct,
                r.stop_s,
                r.stop_status,
            ));
            for e in &r.errors {
                out.push_str(&format!("    ! {e}\n"));
            }
        }
    }
    if let Some(b) = baseline {
        out.push('\n');
        if let Some(why) = &b.skipped {
            out.push_str(&format!("baseline: skipped ({why})\n"));
        } else {
            let run = |name: &str, r: &Option<SshRun>| match r {
                Some(r) => {
                    let master = r
                        .master_cpu_ms
                        .map(|m| format!(" + master {m:.2} ms"))
                        .unwrap_or_default();
                    format!(
                        "baseline: {name}: client cpu {:.2} ms/call{master}, \
                         target (sshd + command) \
                         cpu {:.2} ms/call, wall p50 {:.1} ms (p99 {:.1}), {} calls\n",
                        r.client_cpu_ms, r.target_cpu_ms, r.wall_p50_ms, r.wall_p99_ms, r.calls
                    )
                }
                None => format!("baseline: {name}: failed\n"),
            };
            if b.heavy_rc {
                out.push_str(
                    "baseline: account: login shell bash, a slow ~/.bashrc (--heavy-rc)\n",
                );
            }
            out.push_str(&run("fresh ssh", &b.fresh));
            out.push_str(&run("ControlMaster", &b.master));
            if let Some(c) = b.command_cpu_ms {
                out.push_str(&format!(
                    "baseline: the command alone (sh -c): {c:.2} ms cpu\n"
                ));
            }
            for (mode, herd) in [
                ("long-lived shell", &b.herd),
                ("exec channels", &b.herd_exec),
            ] {
                match herd {
                    Some(h) => out.push_str(&format!(
                        "baseline: herd vs real sshd ({mode}): node cpu {:.2} ms/scrape, \
                         sshd cpu {:.2} ms/scrape \
                         ({:.2} with the command), scrape p50 {:.1} ms, {} scrapes in {:.0} s\n",
                        h.node_cpu_ms,
                        h.sshd_cpu_ms,
                        h.sshd_with_command_cpu_ms,
                        h.duration_p50_ms,
                        h.scrapes,
                        h.window_s
                    )),
                    None => {
                        out.push_str(&format!("baseline: herd vs real sshd ({mode}): failed\n"))
                    }
                }
            }
            for e in &b.errors {
                out.push_str(&format!("  ! {e}\n"));
            }
        }
    }
    print!("{out}");
    let _ = std::io::stdout().flush();
}

// ---------------------------------------------------------------------------
// The fake fleet (child process)

mod fake {
    //! A russh server that plays any number of Linux machines: any user, any
    //! public key, every exec answered with vitals output whose counters move on.
    use std::io::Write;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, LazyLock};
    use std::time::{Duration, Instant};

    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};
    use russh::keys::ssh_key::private::Ed25519Keypair;
    use russh::keys::PrivateKey;
    use russh::server::{self, Auth, ChannelOpenHandle, Msg, Session, VerifiedPublicKey};
    use russh::{Channel, ChannelId};

    use super::FIXTURE;

    /// USER_HZ: /proc/stat counts in 1/100 s.
    const TICKS_PER_S: f64 = 100.0;
    const CPUS: usize = 2;
    /// Interfaces whose counters move (the fixture's `lo` and `ifb*` stay put).
    const MOVING_IFACE: &str = "eth0";

    static START: LazyLock<Instant> = LazyLock::new(Instant::now);
    static NEXT_ID: AtomicU64 = AtomicU64::new(0);
    static OPEN: AtomicU64 = AtomicU64::new(0);
    /// 100 ms slots for an hour: execs answered in each, since START.
    const SLOTS: usize = 36_000;
    static EXECS: LazyLock<Vec<AtomicU64>> =
        LazyLock::new(|| (0..SLOTS).map(|_| AtomicU64::new(0)).collect());

    /// Since the last `mark`: channel open → the client's answer to a ping sent
    /// right after CLOSE, per exec, in µs.
    static RTTS: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());
    static MARK: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);
    /// Execs whose command was not the bench's copy of `VITALS_COMMAND`.
    static OTHER_COMMANDS: AtomicU64 = AtomicU64::new(0);

    fn slot_now() -> usize {
        (START.elapsed().as_millis() / 100) as usize
    }

    /// A fixture line, or a slot the renderer fills.
    enum Line {
        Raw(&'static str),
        /// A line of the disk sections (mounts, df, df -i, their markers too):
        /// printed only when the command reads the disks, as a shell would.
        Disk(&'static str),
        CpuAll,
        Cpu(usize),
        Eth0,
        Loadavg,
        Uptime,
        MemFree,
        MemAvailable,
    }

    struct Template {
        lines: Vec<Line>,
        /// The fixture's per-CPU counters: user nice system idle iowait irq softirq
        /// steal guest guest_nice.
        cpu_base: [[f64; 10]; CPUS],
        /// rx bytes, rx packets, tx bytes, tx packets of eth0.
        net_base: [f64; 4],
        uptime: f64,
        idle: f64,
        mem_free_kb: f64,
        mem_available_kb: f64,
    }

    fn numbers(s: &str) -> Vec<f64> {
        s.split_whitespace()
            .filter_map(|t| t.parse().ok())
            .collect()
    }

    /// The sections only the commands that read the disks print.
    const DISK_SECTIONS: [&str; 3] = ["mounts", "df", "dfi"];

    /// Whether `command` (as exec'd, or framed for the shell) reads the disks.
    fn reads_disks(command: &str) -> bool {
        command == super::VITALS_COMMAND || command == super::VITALS_INLINE
    }

    static TEMPLATE: LazyLock<Template> = LazyLock::new(|| {
        let mut t = Template {
            lines: Vec::new(),
            cpu_base: [[0.0; 10]; CPUS],
            net_base: [0.0; 4],
            uptime: 0.0,
            idle: 0.0,
            mem_free_kb: 0.0,
            mem_available_kb: 0.0,
        };
        let mut section = "";
        for line in FIXTURE.lines() {
            if let Some(s) = line.strip_prefix("@@herd:") {
                section = s;
                t.lines.push(if DISK_SECTIONS.contains(&s) {
                    Line::Disk(line)
                } else {
                    Line::Raw(line)
                });
                continue;
            }
            if DISK_SECTIONS.contains(&section) {
                t.lines.push(Line::Disk(line));
                continue;
            }
            let first = line.split_whitespace().next().unwrap_or("");
            let slot = match (section, first) {
                ("stat", "cpu") => Some(Line::CpuAll),
                ("stat", c) if c.starts_with("cpu") => {
                    let i: usize = c[3..].parse().expect("cpuN");
                    let v = numbers(&line[4..]);
                    t.cpu_base[i][..v.len()].copy_from_slice(&v);
                    Some(Line::Cpu(i))
                }
                ("net/dev", "eth0:") => {
                    let v = numbers(line.split_once(':').unwrap().1);
                    t.net_base = [v[0], v[1], v[8], v[9]];
                    Some(Line::Eth0)
                }
                ("loadavg", _) => Some(Line::Loadavg),
                ("uptime", _) => {
                    let v = numbers(line);
                    t.uptime = v[0];
                    t.idle = v[1];
                    Some(Line::Uptime)
                }
                ("meminfo", "MemFree:") => {
                    t.mem_free_kb = numbers(line)[0];
                    Some(Line::MemFree)
                }
                ("meminfo", "MemAvailable:") => {
                    t.mem_available_kb = numbers(line)[0];
                    Some(Line::MemAvailable)
                }
                _ => None,
            };
            t.lines.push(slot.unwrap_or(Line::Raw(line)));
        }
        assert!(
            t.uptime > 0.0 && t.net_base[0] > 0.0,
            "fixture not understood"
        );
        t
    });

    /// One SSH session: one fake machine.
    struct Machine {
        rng: SmallRng,
        /// Share of CPU time busy, around which each interval varies.
        busy: f64,
        /// eth0 receive rate, bytes/s; transmit is a tenth.
        rx_rate: f64,
        /// Seconds of uptime this machine had when the fixture was taken, beyond it.
        boot_offset: f64,
        cpu: [[f64; 10]; CPUS],
        net: [f64; 4],
        idle: f64,
        last: f64,
        calls: u64,
        out: String,
        /// When each open channel was opened.
        opened: std::collections::HashMap<ChannelId, Instant>,
        /// Channels running the node's long-lived shell, with what came on their
        /// stdin and is not answered yet.
        shells: std::collections::HashMap<ChannelId, Vec<u8>>,
    }

    impl Machine {
        fn new(id: u64) -> Machine {
            let mut rng = SmallRng::seed_from_u64(id ^ 0x5eed_f1ee7);
            let t = &*TEMPLATE;
            let busy = rng.random_range(0.03..0.6);
            let rx_rate = rng.random_range(1e3..5e6);
            let boot_offset = rng.random_range(0.0..30.0 * 86400.0);
            let mut m = Machine {
                rng,
                busy,
                rx_rate,
                boot_offset,
                cpu: t.cpu_base,
                net: t.net_base,
                idle: t.idle,
                last: 0.0,
                calls: 0,
                out: String::with_capacity(FIXTURE.len() + 256),
                opened: std::collections::HashMap::new(),
                shells: std::collections::HashMap::new(),
            };
            OPEN.fetch_add(1, Ordering::Relaxed);
            // Age the counters by the boot offset, then by the time since start.
            m.advance(boot_offset, busy);
            m.last = START.elapsed().as_secs_f64();
            m.advance(m.last, busy);
            m
        }

        fn advance(&mut self, dt: f64, busy: f64) {
            let ticks = dt * TICKS_PER_S;
            for c in &mut self.cpu {
                c[0] += ticks * busy * 0.65; // user
                c[2] += ticks * busy * 0.30; // system
                c[6] += ticks * busy * 0.05; // softirq
                c[4] += ticks * 0.005; // iowait
                c[3] += ticks * (1.0 - busy - 0.005); // idle
            }
            self.idle += dt * CPUS as f64 * (1.0 - busy);
            let rx = self.rx_rate * dt;
            self.net[0] += rx;
            self.net[1] += rx / 1200.0;
            self.net[2] += rx / 10.0;
            self.net[3] += rx / 1200.0 / 2.0;
        }

        fn render(&mut self, disk: bool) -> String {
            let now = START.elapsed().as_secs_f64();
            let dt = (now - self.last).max(0.0);
            self.last = now;
            self.calls += 1;
            let busy = (self.busy * self.rng.random_range(0.5..1.5)).min(0.95);
            self.advance(dt, busy);
            // A scrape moves a few packets itself.
            self.net[0] += 1500.0 + self.rng.random_range(0.0..500.0);
            self.net[2] += 6000.0 + self.rng.random_range(0.0..500.0);
            let t = &*TEMPLATE;
            let mut out = std::mem::take(&mut self.out);
            out.clear();
            use std::fmt::Write as _;
            let cpu_line = |out: &mut String, label: &str, c: &[f64; 10]| {
                let _ = write!(out, "{label}");
                for v in c {
                    let _ = write!(out, " {}", *v as u64);
                }
                out.push('\n');
            };
            for line in &t.lines {
                match line {
                    Line::Raw(l) => {
                        out.push_str(l);
                        out.push('\n');
                    }
                    Line::Disk(l) => {
                        if disk {
                            out.push_str(l);
                            out.push('\n');
                        }
                    }
                    Line::CpuAll => {
                        let mut sum = [0.0; 10];
                        for c in &self.cpu {
                            for (s, v) in sum.iter_mut().zip(c) {
                                *s += v.floor();
                            }
                        }
                        cpu_line(&mut out, "cpu ", &sum);
                    }
                    Line::Cpu(i) => cpu_line(&mut out, &format!("cpu{i}"), &self.cpu[*i]),
                    Line::Eth0 => {
                        let _ = writeln!(
                            out,
                            "  {MOVING_IFACE}: {} {} 0 0 0 0 0 0 {} {} 0 0 0 0 0 0",
                            self.net[0] as u64,
                            self.net[1] as u64,
                            self.net[2] as u64,
                            self.net[3] as u64
                        );
                    }
                    Line::Loadavg => {
                        let l1 = busy * CPUS as f64 * self.rng.random_range(0.8..1.2);
                        let _ = writeln!(
                            out,
                            "{l1:.2} {:.2} {:.2} 2/85 {}",
                            self.busy * CPUS as f64,
                            self.busy * CPUS as f64 * 0.9,
                            9453 + self.calls
                        );
                    }
                    Line::Uptime => {
                        let _ = writeln!(
                            out,
                            "{:.2} {:.2}",
                            t.uptime + self.boot_offset + now,
                            self.idle
                        );
                    }
                    Line::MemFree => {
                        let kb = t.mem_free_kb - self.rng.random_range(0.0..2e6);
                        let _ = writeln!(out, "MemFree:        {} kB", kb as u64);
                    }
                    Line::MemAvailable => {
                        let kb = t.mem_available_kb - self.rng.random_range(0.0..2e6);
                        let _ = writeln!(out, "MemAvailable:   {} kB", kb as u64);
                    }
                }
            }
            let text = out.clone();
            self.out = out;
            text
        }
    }

    impl Drop for Machine {
        fn drop(&mut self) {
            OPEN.fetch_sub(1, Ordering::Relaxed);
        }
    }

    impl server::Handler for Machine {
        type Error = russh::Error;

        async fn auth_publickey_offered(
            &mut self,
            _user: &str,
            _offer: russh::server::PublicKeyOffer<'_>,
        ) -> Result<Auth, Self::Error> {
            Ok(Auth::Accept)
        }

        async fn auth_publickey(
            &mut self,
            _user: &str,
            _key: VerifiedPublicKey<'_>,
        ) -> Result<Auth, Self::Error> {
            Ok(Auth::Accept)
        }

        async fn channel_open_session(
            &mut self,
            channel: Channel<Msg>,
            reply: ChannelOpenHandle,
            _session: &mut Session,
        ) -> Result<(), Self::Error> {
            self.opened.insert(channel.id(), Instant::now());
            reply.accept().await;
            Ok(())
        }

        async fn exec_request(
            &mut self,
            channel: ChannelId,
            command: &[u8],
            session: &mut Session,
        ) -> Result<(), Self::Error> {
            session.channel_success(channel)?;
            if command == b"exec /bin/sh" {
                // The node's long-lived shell: commands come on stdin (`data`).
                self.opened.remove(&channel);
                self.shells.insert(channel, Vec::new());
                return Ok(());
            }
            if command != super::VITALS_COMMAND.as_bytes()
                && command != super::VITALS_COMMAND_NO_DISK.as_bytes()
            {
                OTHER_COMMANDS.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(slot) = EXECS.get(slot_now()) {
                slot.fetch_add(1, Ordering::Relaxed);
            }
            let output = self.render(reads_disks(&String::from_utf8_lossy(command)));
            session.data(channel, output)?;
            session.exit_status_request(channel, 0)?;
            session.eof(channel)?;
            session.close(channel)?;
            // The node's SSH session answers this ping once it has read all of the
            // above: open → that answer is the exec as this target sees it.
            if let Some(opened) = self.opened.remove(&channel) {
                time_until_read(session, opened);
            }
            Ok(())
        }

        /// What the node's shell gets on stdin: the probe
        /// (`printf '@@herd-ready:TAG\n'`) and framed commands
        /// (`( CMD\n) </dev/null; printf '\n@@herd-end:TAG:%d\n' "$?"; printf '\n@@herd-end:TAG\n' >&2`,
        /// or `{ INLINE\n} </dev/null; ...` for a command's inline form),
        /// answered as a shell would, with the vitals output for CMD.
        async fn data(
            &mut self,
            channel: ChannelId,
            data: &[u8],
            session: &mut Session,
        ) -> Result<(), Self::Error> {
            let Some(buf) = self.shells.get_mut(&channel) else {
                return Ok(());
            };
            buf.extend_from_slice(data);
            let text = String::from_utf8_lossy(buf).into_owned();
            let mut used = 0;
            let mut answers: Vec<(Option<String>, String)> = Vec::new();
            loop {
                let rest = &text[used..];
                const READY: &str = "printf '@@herd-ready:";
                if let Some(r) = rest.strip_prefix(READY) {
                    let Some(end) = r.find("\\n'\n") else { break };
                    answers.push((None, format!("@@herd-ready:{}\n", &r[..end])));
                    used += READY.len() + end + 4;
                    continue;
                }
                let Some(frame_end) = rest.find(">&2\n") else {
                    break;
                };
                let frame = &rest[..frame_end];
                used += frame_end + 4;
                let command = (frame.strip_prefix("( "))
                    .and_then(|f| f.split_once("\n) </dev/null;"))
                    .or_else(|| {
                        (frame.strip_prefix("{ ")).and_then(|f| f.split_once("\n} </dev/null;"))
                    })
                    .map(|(c, _)| c.to_string());
                let tag = frame
                    .split("@@herd-end:")
                    .nth(1)
                    .and_then(|t| t.split(':').next())
                    .unwrap_or_default()
                    .to_string();
                answers.push((command, tag));
            }
            buf.drain(..used.min(buf.len()));
            for (command, tag) in answers {
                let Some(command) = command else {
                    session.data(channel, tag.into_bytes())?;
                    continue;
                };
                let known = [
                    super::VITALS_COMMAND,
                    super::VITALS_COMMAND_NO_DISK,
                    super::VITALS_INLINE,
                    super::VITALS_INLINE_NO_DISK,
                ];
                if !known.contains(&command.as_str()) {
                    OTHER_COMMANDS.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(slot) = EXECS.get(slot_now()) {
                    slot.fetch_add(1, Ordering::Relaxed);
                }
                let started = Instant::now();
                let mut output = self.render(reads_disks(&command)).into_bytes();
                output.extend_from_slice(format!("\n@@herd-end:{tag}:0\n").as_bytes());
                session.data(channel, output)?;
                session.extended_data(channel, 1, format!("\n@@herd-end:{tag}\n").into_bytes())?;
                // Command received → the node read the answer.
                time_until_read(session, started);
            }
            Ok(())
        }
    }

    /// Records, for an exec or shell command that began at `since` (after the
    /// mark), how long until the node's session read the answer: a ping sent after
    /// the answer is answered once the node read everything before it.
    fn time_until_read(session: &mut Session, since: Instant) {
        let marked = MARK.lock().ok().and_then(|m| *m);
        if marked.is_none_or(|m| since < m) {
            return;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        if session.send_ping(tx).is_ok() {
            tokio::spawn(async move {
                if rx.await.is_ok() {
                    let us = since.elapsed().as_micros().min(u32::MAX as u128) as u32;
                    if let Ok(mut r) = RTTS.lock() {
                        r.push(us);
                    }
                }
            });
        }
    }

    /// Answers the parent on stdin/stdout: `mark` starts a measurement, `stats`
    /// prints one JSON line about it. EOF (the parent is gone) ends the process.
    fn commands() {
        let mut mark = slot_now();
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            let answer = match line.trim() {
                "mark" => {
                    mark = slot_now();
                    if let (Ok(mut m), Ok(mut r)) = (MARK.lock(), RTTS.lock()) {
                        *m = Some(Instant::now());
                        r.clear();
                    }
                    "ok".to_string()
                }
                "stats" => {
                    let now = slot_now().min(SLOTS);
                    let buckets: Vec<u64> = EXECS[mark.min(now)..now]
                        .iter()
                        .map(|b| b.load(Ordering::Relaxed))
                        .collect();
                    let mut rtts = RTTS.lock().map(|r| r.clone()).unwrap_or_default();
                    rtts.sort_unstable();
                    let pct = |p: f64| -> f64 {
                        if rtts.is_empty() {
                            return f64::NAN;
                        }
                        let rank = ((p / 100.0) * (rtts.len() - 1) as f64).round() as usize;
                        rtts[rank.min(rtts.len() - 1)] as f64 / 1000.0
                    };
                    serde_json::json!({
                        "rtt_count": rtts.len(),
                        "rtt_p50_ms": pct(50.0),
                        "rtt_p99_ms": pct(99.0),
                        "rtt_max_ms": pct(100.0),
                        "execs_since_mark": buckets.iter().sum::<u64>(),
                        "sessions": NEXT_ID.load(Ordering::Relaxed),
                        "open": OPEN.load(Ordering::Relaxed),
                        "other_commands": OTHER_COMMANDS.load(Ordering::Relaxed),
                        "buckets_100ms": buckets,
                    })
                    .to_string()
                }
                other => format!("error: unknown command {other:?}"),
            };
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(stdout, "{answer}");
            let _ = stdout.flush();
        }
        std::process::exit(0);
    }

    pub fn run() {
        LazyLock::force(&START);
        LazyLock::force(&TEMPLATE);
        LazyLock::force(&EXECS);
        std::thread::spawn(commands);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        rt.block_on(async {
            let seed: [u8; 32] = rand::random();
            let key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
            let public = key.public_key().to_openssh().expect("host key");
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("fake fleet: cannot listen on 127.0.0.1");
            let port = listener.local_addr().expect("local addr").port();
            let config = Arc::new(server::Config {
                auth_rejection_time: Duration::from_millis(10),
                auth_rejection_time_initial: Some(Duration::ZERO),
                keys: vec![key],
                inactivity_timeout: None,
                nodelay: true,
                ..Default::default()
            });
            {
                let mut stdout = std::io::stdout().lock();
                let _ = writeln!(stdout, "READY {port} {public}");
                let _ = stdout.flush();
            }
            loop {
                let (socket, _) = match listener.accept().await {
                    Ok(s) => s,
                    Err(e) => {
                        // EMFILE and friends: keep serving the sessions we have.
                        eprintln!("fake fleet: accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = socket.set_nodelay(true);
                let config = config.clone();
                let machine = Machine::new(NEXT_ID.fetch_add(1, Ordering::Relaxed));
                tokio::spawn(async move {
                    if let Ok(session) = server::run_stream(config, socket, machine).await {
                        let _ = session.await;
                    }
                });
            }
        });
    }
}
