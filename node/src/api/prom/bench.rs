//! Query latency of the Prometheus API on one node's store: a measurement, not a
//! test (it asserts only that the answers are whole). What it times is the node's
//! own work for a query: parse, the store scan and decode of `Select`, and the
//! evaluation; not HTTP nor the fan-out to other members (one loopback round trip
//! each, in parallel). Run: `scripts/bench promql`.
use std::time::{Duration, Instant};

use super::select::{compile, from_store};
use super::{eval_range, evaluator, parse_query, select_request};
use crate::model::{now_ms, Labels, Sample};
use crate::store::{Store, StoreOptions};

const VITALS: [&str; 10] = [
    "cpu.used_pct",
    "cpu.iowait_pct",
    "mem.used_pct",
    "mem.available_bytes",
    "swap.used_pct",
    "load.1",
    "load.5",
    "load.15",
    "net.rx_bytes_per_s",
    "net.tx_bytes_per_s",
];

fn fill(store: &Store, samples: impl Iterator<Item = Sample>) {
    let mut batch = Vec::with_capacity(10_000);
    let push = |batch: &mut Vec<Sample>| {
        let b = std::mem::take(batch);
        while !store.append(b.clone()) {
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    for s in samples {
        batch.push(s);
        if batch.len() == 10_000 {
            push(&mut batch);
        }
    }
    push(&mut batch);
    store.flush_blocking().unwrap();
}

fn sample(target: String, metric: &str, ts_ms: i64, value: f64) -> Sample {
    Sample {
        target,
        metric: metric.into(),
        labels: Labels::new(),
        ts_ms,
        value,
    }
}

/// p50 and p99 of `runs` runs of `f`, in ms; `f` returns the series it answered.
fn time(what: &str, runs: usize, mut f: impl FnMut() -> usize) {
    let mut took = Vec::with_capacity(runs);
    let mut series = 0;
    for _ in 0..runs {
        let t = Instant::now();
        series = f();
        took.push(t.elapsed());
    }
    took.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let p = |q: f64| ms(took[((runs as f64 - 1.0) * q).round() as usize]);
    println!(
        "| {what} | {series} | {:.1} | {:.1} | {:.1} |",
        p(0.5),
        p(0.99),
        ms(*took.last().unwrap())
    );
}

/// Runs `text` over `[start, end]` at `step` against the store; the number of
/// series in the answer.
fn run(store: &Store, text: &str, (start, end, step): (i64, i64, i64)) -> usize {
    let expr = parse_query(text).unwrap();
    let req = select_request(&expr, start, end).unwrap().unwrap();
    let sets = compile(&req.sets).unwrap();
    let reply = from_store(store, &sets, &req).unwrap();
    let ev = evaluator(reply);
    eval_range(&ev, &expr, (start, end, step)).unwrap().len()
}

#[test]
#[ignore = "a measurement; run it with scripts/bench promql"]
fn promql_latency() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        dir.path(),
        StoreOptions {
            retention: Duration::from_secs(3 * 24 * 3600),
            flush_interval: Duration::from_millis(200),
            chunk_samples: 240,
            ..Default::default()
        },
    )
    .unwrap();
    let now = now_ms();
    let day = 24 * 3600 * 1000;
    eprintln!("promql bench: writing 24 h of vitals of one target at 10 s (86,400 samples)");
    fill(
        &store,
        (0..8640i64).flat_map(|i| {
            VITALS
                .iter()
                .map(move |m| sample("web-0".into(), m, now - day + i * 10_000, (i % 100) as f64))
        }),
    );
    eprintln!(
        "promql bench: writing 1 h of cpu.used_pct of 1,000 targets at 10 s (360,000 samples)"
    );
    fill(
        &store,
        (0..360i64).flat_map(|i| {
            (0..1000).map(move |t| {
                sample(
                    format!("host-{t:04}"),
                    "cpu.used_pct",
                    now - 3_600_000 + i * 10_000,
                    ((t + i) % 100) as f64,
                )
            })
        }),
    );
    println!("| query | series | p50 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|---:|");
    let runs = 30;
    time(
        "query_range 24 h, step 60 s: herd_cpu_used_pct{target=\"web-0\"}",
        runs,
        || {
            run(
                &store,
                r#"herd_cpu_used_pct{target="web-0"}"#,
                (now - day, now, 60_000),
            )
        },
    );
    time(
        "query_range 24 h, step 60 s: all 10 vitals of web-0",
        runs,
        || run(&store, r#"{target="web-0"}"#, (now - day, now, 60_000)),
    );
    time(
        "query_range 24 h, step 5 m: avg_over_time(herd_load_1{target=\"web-0\"}[5m])",
        runs,
        || {
            run(
                &store,
                r#"avg_over_time(herd_load_1{target="web-0"}[5m])"#,
                (now - day, now, 300_000),
            )
        },
    );
    time(
        "instant: sum by (target) (herd_cpu_used_pct), 1,000 targets",
        runs,
        || run(&store, "sum by (target) (herd_cpu_used_pct)", (now, now, 1)),
    );
    time(
        "instant: sum(rate(herd_cpu_used_pct[5m])), 1,000 targets",
        runs,
        || run(&store, "sum(rate(herd_cpu_used_pct[5m]))", (now, now, 1)),
    );
    time(
        "query_range 1 h, step 60 s: sum(herd_cpu_used_pct), 1,000 targets",
        10,
        || {
            run(
                &store,
                "sum(herd_cpu_used_pct)",
                (now - 3_600_000, now, 60_000),
            )
        },
    );
}
