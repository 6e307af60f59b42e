use promql_parser::parser::parse;

use super::*;

fn labels(pairs: &[(&str, &str)]) -> PromLabels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn series(name: &str, target: &str, pts: &[(i64, f64)]) -> Series {
    Series {
        labels: labels(&[("__name__", name), ("target", target)]),
        points: pts.to_vec(),
    }
}

/// Two gauges of two targets every 10 s from 0 to 300 s, and a counter that
/// resets once.
fn data() -> Evaluator {
    let every10 = |f: &dyn Fn(i64) -> f64| -> Vec<(i64, f64)> {
        (0..=30).map(|i| (i * 10_000, f(i))).collect()
    };
    Evaluator::new(vec![
        series("herd_cpu", "a", &every10(&|i| i as f64)),
        series("herd_cpu", "b", &every10(&|_| 50.0)),
        series("herd_mem", "a", &every10(&|_| 10.0)),
        series(
            "herd_bytes_total",
            "a",
            &every10(&|i| {
                if i <= 15 {
                    (i * 100) as f64
                } else {
                    ((i - 16) * 100) as f64
                }
            }),
        ),
    ])
}

fn vector(e: &Evaluator, q: &str, t: i64) -> Vec<(PromLabels, f64)> {
    match e.eval(&parse(q).unwrap(), t).unwrap() {
        Value::Vector(mut v) => {
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        }
        other => panic!("{q}: not a vector: {other:?}"),
    }
}

fn values(e: &Evaluator, q: &str, t: i64) -> Vec<f64> {
    vector(e, q, t).into_iter().map(|x| x.1).collect()
}

#[test]
fn selectors_take_the_latest_sample_within_the_lookback() {
    let e = data();
    assert_eq!(values(&e, "herd_cpu", 105_000), vec![10.0, 50.0]);
    assert_eq!(values(&e, r#"herd_cpu{target="a"}"#, 100_000), vec![10.0]);
    assert_eq!(values(&e, r#"herd_cpu{target!="a"}"#, 100_000), vec![50.0]);
    assert_eq!(
        values(&e, r#"{__name__=~"herd_(cpu|mem)",target=~"a"}"#, 100_000).len(),
        2
    );
    assert_eq!(values(&e, r#"herd_cpu{target!~"a|b"}"#, 100_000).len(), 0);
    assert_eq!(values(&e, "herd_cpu offset 1m", 100_000), vec![4.0, 50.0]);
    // After the last sample by more than 5 minutes: nothing.
    assert!(values(&e, "herd_cpu", 300_000 + LOOKBACK_MS + 1).is_empty());
    let v = vector(&e, r#"herd_cpu{target="a"}"#, 100_000);
    assert_eq!(v[0].0["__name__"], "herd_cpu", "a selector keeps the name");
}

#[test]
fn rate_and_increase_follow_prometheus() {
    let e = data();
    // 1 per 10 s; the window (40 s, 100 s] holds 50..100 s: extrapolated to 60 s.
    let r = values(&e, r#"rate(herd_cpu{target="a"}[1m])"#, 100_000);
    assert!((r[0] - 0.1).abs() < 1e-9, "{r:?}");
    let i = values(&e, r#"increase(herd_cpu{target="a"}[1m])"#, 100_000);
    assert!((i[0] - 6.0).abs() < 1e-9, "{i:?}");
    // The counter resets between 150 and 160 s: the reset is added back. (140 s,
    // 200 s] holds 1500, 0, 100 .. 400: 400 over 50 s, extrapolated to 60 s.
    let inc = values(&e, "increase(herd_bytes_total[1m])", 200_000);
    assert!((inc[0] - 480.0).abs() < 1e-9, "{inc:?}");
    let ir = values(&e, "irate(herd_bytes_total[1m])", 160_000);
    assert_eq!(ir, vec![0.0 / 10.0], "the reset sample over 10 s");
    let d = values(&e, r#"deriv(herd_cpu{target="a"}[1m])"#, 100_000);
    assert!((d[0] - 0.1).abs() < 1e-9, "{d:?}");
    assert_eq!(
        values(&e, r#"delta(herd_cpu{target="b"}[1m])"#, 100_000),
        vec![0.0]
    );
    let v = vector(&e, "rate(herd_cpu[1m])", 100_000);
    assert!(!v[0].0.contains_key("__name__"), "functions drop the name");
}

#[test]
fn over_time_functions() {
    let e = data();
    let q = |f: &str| values(&e, &format!(r#"{f}(herd_cpu{{target="a"}}[1m])"#), 100_000)[0];
    assert_eq!(q("avg_over_time"), 7.5);
    assert_eq!(q("min_over_time"), 5.0);
    assert_eq!(q("max_over_time"), 10.0);
    assert_eq!(q("sum_over_time"), 45.0);
    assert_eq!(q("count_over_time"), 6.0);
    assert_eq!(q("last_over_time"), 10.0);
    let med = values(
        &e,
        r#"quantile_over_time(0.5, herd_cpu{target="a"}[1m])"#,
        100_000,
    );
    assert_eq!(med, vec![7.5]);
}

#[test]
fn aggregations_by_and_without() {
    let e = data();
    assert_eq!(values(&e, "sum(herd_cpu)", 100_000), vec![60.0]);
    assert_eq!(values(&e, "avg(herd_cpu)", 100_000), vec![30.0]);
    assert_eq!(values(&e, "max(herd_cpu)", 100_000), vec![50.0]);
    assert_eq!(values(&e, "count(herd_cpu)", 100_000), vec![2.0]);
    let by = vector(
        &e,
        "sum by (target) ({__name__=~\"herd_cpu|herd_mem\"})",
        100_000,
    );
    assert_eq!(by.len(), 2);
    assert_eq!(by[0].0, labels(&[("target", "a")]));
    assert_eq!(by[0].1, 20.0);
    let without = vector(&e, "max without (target) (herd_cpu)", 100_000);
    assert_eq!(without, vec![(PromLabels::new(), 50.0)]);
    let top = vector(&e, "topk(1, herd_cpu)", 100_000);
    assert_eq!(top.len(), 1);
    assert_eq!(top[0].0["target"], "b", "topk keeps the series' labels");
    assert_eq!(values(&e, "bottomk(1, herd_cpu)", 100_000), vec![10.0]);
    assert_eq!(values(&e, "quantile(0.5, herd_cpu)", 100_000), vec![30.0]);
}

#[test]
fn binary_operators() {
    let e = data();
    assert_eq!(values(&e, "herd_cpu * 2", 100_000), vec![20.0, 100.0]);
    assert_eq!(values(&e, "100 - herd_cpu", 100_000), vec![90.0, 50.0]);
    assert_eq!(values(&e, "herd_cpu > 20", 100_000), vec![50.0], "a filter");
    assert_eq!(values(&e, "herd_cpu > bool 20", 100_000), vec![0.0, 1.0]);
    assert_eq!(
        values(&e, "herd_cpu + ignoring() herd_cpu", 100_000),
        vec![20.0, 100.0]
    );
    // Matched on target: cpu of a (10) / mem of a (10).
    assert_eq!(
        values(&e, "herd_cpu / on(target) herd_mem", 100_000),
        vec![1.0]
    );
    assert_eq!(
        values(&e, "herd_cpu and on(target) herd_mem", 100_000),
        vec![10.0]
    );
    assert_eq!(
        values(&e, "herd_cpu unless on(target) herd_mem", 100_000),
        vec![50.0]
    );
    assert_eq!(
        e.eval(&parse("1 + 2 * 3").unwrap(), 0).unwrap(),
        Value::Scalar(7.0)
    );
}

#[test]
fn what_is_not_supported_is_named() {
    let e = data();
    for (q, what) in [
        ("rate(herd_cpu[5m:1m])", "subquery"),
        ("herd_cpu @ 100", "@ modifier"),
        ("herd_cpu * on(target) group_left herd_mem", "group_left"),
        ("histogram_quantile(0.9, herd_cpu)", "histogram_quantile"),
        ("count_values(\"v\", herd_cpu)", "count_values"),
    ] {
        let parsed = parse(q).unwrap_or_else(|err| panic!("{q}: {err}"));
        let err = selectors(&parsed)
            .err()
            .or_else(|| e.eval(&parsed, 100_000).err())
            .unwrap_or_else(|| panic!("{q} was evaluated"));
        assert!(
            matches!(err, EvalError::Unsupported(_)) && err.to_string().contains(what),
            "{q}: {err}"
        );
    }
}
