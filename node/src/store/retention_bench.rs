//! Sample commit latency while retention runs: a store of many targets' history
//! (filled through the import path, not by waiting), then a retention pass that
//! deletes half of it (the retention was shortened) and a routine pass (deletes
//! next to nothing, goes through every series), each with a steady trickle of
//! fresh samples whose commit is timed; then the same trickle with no pass
//! running, the baseline. A measurement, not a test:
//!
//! ```sh
//! cargo test -p herd --release --lib retention_commit_latency_bench -- --ignored --nocapture
//! ```
//!
//! Sizes from the environment: `HERD_BENCH_TARGETS` (1000), `HERD_BENCH_SERIES`
//! per target (4), `HERD_BENCH_DAYS` (30), `HERD_BENCH_INTERVAL_S` (10).

use super::writer::MAX_CHUNK_SPAN_MS;
use super::*;
use crate::model::{now_ms, Labels};
use std::time::Instant;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn options(retention_days: u64) -> StoreOptions {
    StoreOptions {
        retention: Duration::from_secs(retention_days * 86_400),
        flush_interval: Duration::from_secs(1),
        chunk_samples: 240,
        // Never by itself here: the bench compacts as a phase of its own.
        compact_min_bytes: u64::MAX,
        ..Default::default()
    }
}

/// A share with two decimals drifting around a daily wave (what vitals look like
/// to the codec: decimal integers, small deltas).
fn history(seed: u64, from: i64, interval_ms: i64, count: usize) -> Vec<(i64, f64)> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut noise = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % 200) as f64 / 100.0 - 1.0
    };
    (0..count)
        .map(|i| {
            let ts = from + i as i64 * interval_ms;
            let day = (ts % 86_400_000) as f64 / 86_400_000.0;
            let v = 40.0 + 20.0 * (day * std::f64::consts::TAU).sin() + noise();
            (ts, (v * 100.0).round() / 100.0)
        })
        .collect()
}

struct Phase {
    name: &'static str,
    pass_s: Option<f64>,
    latencies_ms: Vec<f64>,
}

/// When [`trickle`] stops.
enum Until<'a> {
    /// Once the store has finished more retention passes than this.
    Pass(u64),
    /// Once this says so.
    Done(&'a dyn Fn() -> bool),
    /// After this many ticks.
    Ticks(usize),
}

/// Every 100 ms: the samples of 1 % of the targets (each target every 10 s, as
/// scrapes come), then a commit forced and timed from append to its reply. Runs
/// until `until`; returns the latencies and when it ended (seconds; not for ticks).
fn trickle(store: &Store, targets: u64, series: u64, until: Until) -> (Vec<f64>, Option<f64>) {
    let started = Instant::now();
    let mut latencies = Vec::new();
    let mut next_target = 0u64;
    let mut ended = None;
    for tick in 0.. {
        let over = match &until {
            Until::Pass(passes) => store.stats.retention_passes.load(Ordering::Relaxed) > *passes,
            Until::Done(done) => done(),
            Until::Ticks(ticks) => tick >= *ticks,
        };
        if over {
            if !matches!(until, Until::Ticks(_)) {
                ended = Some(started.elapsed().as_secs_f64());
            }
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "the phase did not end within 30 minutes"
        );
        let due = started + Duration::from_millis(100 * tick as u64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let now = now_ms();
        let batch: Vec<Sample> = (0..targets.div_ceil(100))
            .flat_map(|_| {
                let t = next_target % targets;
                next_target += 1;
                (0..series).map(move |m| Sample {
                    target: format!("t{t:05}"),
                    metric: format!("m{m}"),
                    labels: Labels::new(),
                    ts_ms: now,
                    value: (t + m) as f64,
                })
            })
            .collect();
        let sent = Instant::now();
        store.append(batch);
        store.flush_blocking().unwrap();
        latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
    }
    (latencies, ended)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[test]
#[ignore = "a measurement; run it explicitly"]
fn retention_commit_latency_bench() {
    let targets = env_or("HERD_BENCH_TARGETS", 1000);
    let series = env_or("HERD_BENCH_SERIES", 4);
    let days = env_or("HERD_BENCH_DAYS", 30).max(2);
    let interval_ms = env_or("HERD_BENCH_INTERVAL_S", 10) as i64 * 1000;
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // Fill: `days` of history for every series, up to a minute ago.
    let store = Store::open(dir.path(), options(days + 1)).unwrap();
    let end = now_ms() - 60_000;
    let count = (days as i64 * 86_400_000 / interval_ms) as usize;
    let from = end - count as i64 * interval_ms;
    let fill = Instant::now();
    let mut written = 0u64;
    let per_import = (2_000_000 / count.max(1)).max(1) as u64;
    let all: Vec<(u64, u64)> = (0..targets)
        .flat_map(|t| (0..series).map(move |m| (t, m)))
        .collect();
    for (i, part) in all.chunks(per_import as usize).enumerate() {
        let batch: Vec<ImportSeries> = part
            .iter()
            .map(|&(t, m)| ImportSeries {
                target: format!("t{t:05}"),
                metric: format!("m{m}"),
                labels: Labels::new(),
                points: history(t * 1000 + m, from, interval_ms, count),
            })
            .collect();
        let outcome = rt.block_on(store.import(batch, false)).unwrap();
        assert!(outcome.refused.is_empty(), "{:?}", outcome.refused.first());
        written += outcome.written;
        if i % 20 == 0 {
            eprintln!(
                "[bench] filled {}/{} series, {written} samples, {:.0} s",
                (i as u64 + 1) * per_import,
                all.len(),
                fill.elapsed().as_secs_f64()
            );
        }
    }
    let fill_s = fill.elapsed().as_secs_f64();
    store.close().unwrap();
    drop(store);
    let filled_bytes = std::fs::metadata(dir.path().join("herd.redb"))
        .unwrap()
        .len();
    eprintln!("[bench] filled {written} samples in {fill_s:.1} s, file {filled_bytes} bytes");

    let mut phases = Vec::new();
    // A shorter retention: the pass at start deletes the older half.
    let store = Store::open(dir.path(), options(days / 2)).unwrap();
    let (latencies_ms, pass_s) = trickle(&store, targets, series, Until::Pass(0));
    phases.push(Phase {
        name: "pass deleting half",
        pass_s,
        latencies_ms,
    });
    // The live file compacted (half of it free now) while samples keep coming.
    let path = dir.path().join("herd.redb");
    let before_compact = std::fs::metadata(&path).unwrap().len();
    let compacted = std::sync::Mutex::new(None);
    let (latencies_ms, compact_s) = std::thread::scope(|scope| {
        scope.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let c = rt.block_on(store.compact()).unwrap();
            *compacted.lock().unwrap() = Some(c);
        });
        let done = || compacted.lock().unwrap().is_some();
        trickle(&store, targets, series, Until::Done(&done))
    });
    let compacted = compacted.into_inner().unwrap().unwrap();
    phases.push(Phase {
        name: "compaction",
        pass_s: compact_s,
        latencies_ms,
    });
    // What the pass kept: from the new cutoff on (a chunk across it stays whole).
    let kept = store
        .query("t00000", "m0", &Labels::new(), 0, now_ms())
        .unwrap();
    let oldest = kept
        .iter()
        .flat_map(|s| s.points.first())
        .map(|p| p.0)
        .min();
    let cutoff = now_ms() - (days / 2) as i64 * 86_400_000;
    assert!(
        oldest.is_some_and(|ts| ts >= cutoff - MAX_CHUNK_SPAN_MS - 60_000),
        "the pass kept samples from {oldest:?}, cutoff {cutoff}"
    );
    store.close().unwrap();
    drop(store);
    // The same retention again: a routine pass (nearly nothing to delete).
    let store = Store::open(dir.path(), options(days / 2)).unwrap();
    let (latencies_ms, pass_s) = trickle(&store, targets, series, Until::Pass(0));
    phases.push(Phase {
        name: "routine pass",
        pass_s,
        latencies_ms,
    });
    // No pass running: the baseline.
    let (latencies_ms, _) = trickle(&store, targets, series, Until::Ticks(300));
    phases.push(Phase {
        name: "no pass (baseline)",
        pass_s: None,
        latencies_ms,
    });
    store.close().unwrap();
    drop(store);
    let after_bytes = std::fs::metadata(dir.path().join("herd.redb"))
        .unwrap()
        .len();

    println!(
        "[bench] store: {targets} targets x {series} series x {days} days at {} s = {written} samples ({:.0} samples/s through import), file {filled_bytes} bytes; after the passes and the compaction {after_bytes} bytes",
        interval_ms / 1000,
        written as f64 / fill_s
    );
    println!(
        "[bench] compaction of the live file: {before_compact} -> {} bytes, the writer and readers held {} ms",
        compacted.after_bytes, compacted.took_ms
    );
    println!(
        "[bench] {:<20} {:>8} {:>8} {:>9} {:>9} {:>9}",
        "phase", "pass s", "commits", "p50 ms", "p99 ms", "max ms"
    );
    for p in &mut phases {
        p.latencies_ms.sort_by(f64::total_cmp);
        println!(
            "[bench] {:<20} {:>8} {:>8} {:>9.2} {:>9.2} {:>9.2}",
            p.name,
            p.pass_s.map_or("-".into(), |s| format!("{s:.1}")),
            p.latencies_ms.len(),
            percentile(&p.latencies_ms, 0.5),
            percentile(&p.latencies_ms, 0.99),
            p.latencies_ms.last().copied().unwrap_or(f64::NAN)
        );
    }
}
