//! `herd export`: a target's samples out of a real node in OpenMetrics, read back by
//! the real `promtool tsdb create-blocks-from openmetrics` into Prometheus blocks
//! that hold exactly the exported samples (`promtool tsdb dump`), which are the
//! samples `herd query` answers; JSON lines too; bad usage exits 2.
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use herd_tests::process::run_bounded;
use herd_tests::{local_target, phase, wait_for, Herd, HerdOptions};

const BOUND: Duration = Duration::from_secs(30);
const PROMTOOL: Duration = Duration::from_secs(60);

/// `{__name__="n", a="b"}` or `n{a="b"}` → the labels, `__name__` included.
fn labels_of(series: &str) -> BTreeMap<String, String> {
    let (name, rest) = match series.find('{') {
        Some(0) => ("", &series[1..]),
        Some(i) => (&series[..i], &series[i + 1..]),
        None => (series, "}"),
    };
    let mut out = BTreeMap::new();
    if !name.is_empty() {
        out.insert("__name__".to_string(), name.to_string());
    }
    for pair in rest
        .trim_end_matches('}')
        .split(", ")
        .flat_map(|p| p.split("\","))
    {
        if let Some((k, v)) = pair.split_once('=') {
            out.insert(k.trim().to_string(), v.trim_matches('"').to_string());
        }
    }
    out
}

/// One sample: labels, value (as written), time in ms.
type Sample = (BTreeMap<String, String>, String, i64);

/// The samples of exposition-like lines `SERIES VALUE TIME` (`TIME` in s or ms).
fn samples(text: &str, time_in_seconds: bool) -> BTreeSet<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (rest, ts) = l.rsplit_once(' ').expect("a time");
            let (series, value) = rest.rsplit_once(' ').expect("a value");
            let ts_ms = if time_in_seconds {
                (ts.parse::<f64>().expect("seconds") * 1000.0).round() as i64
            } else {
                ts.parse().expect("ms")
            };
            let v: f64 = value.parse().expect("a number");
            (labels_of(series), format!("{v}"), ts_ms)
        })
        .collect()
}

#[test]
fn export_feeds_promtool_blocks_that_hold_the_same_samples() {
    let herd = Herd::start(HerdOptions::default().fleet(local_target("box", "1s")));
    wait_for(BOUND, "a few cpu samples", || {
        (herd.points("box", "cpu.used_pct").len() >= 3).then_some(())
    });
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("box.om");

    phase!("herd export box --since 10m --out box.om");
    let out = herd.cli(&[
        "export",
        "box",
        "--since",
        "10m",
        "--out",
        file.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.ends_with("# EOF\n"),
        "{}",
        &text[text.len().saturating_sub(200)..]
    );
    // Each family once, its samples together.
    let mut families = Vec::new();
    for l in text.lines() {
        if let Some(f) = l.strip_prefix("# TYPE ") {
            families.push(f.split(' ').next().unwrap().to_string());
        } else if !l.starts_with('#') {
            let name = l.split(['{', ' ']).next().unwrap();
            assert_eq!(Some(name), families.last().map(String::as_str), "{l}");
        }
    }
    let unique: BTreeSet<&String> = families.iter().collect();
    assert_eq!(unique.len(), families.len(), "{families:?}");
    let exported = samples(&text, true);
    assert!(exported.len() > 20, "{} samples", exported.len());
    eprintln!(
        "    {} samples of {} families",
        exported.len(),
        families.len()
    );

    phase!("promtool makes blocks of it; they hold exactly those samples");
    let blocks = dir.path().join("blocks");
    let out = run_bounded(
        Command::new("promtool")
            .args(["tsdb", "create-blocks-from", "openmetrics"])
            .arg(&file)
            .arg(&blocks),
        PROMTOOL,
    );
    assert!(
        out.status.success(),
        "promtool create-blocks-from: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::create_dir_all(blocks.join("wal")).unwrap();
    let out = run_bounded(
        Command::new("promtool").args(["tsdb", "dump"]).arg(&blocks),
        PROMTOOL,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dumped = samples(&String::from_utf8_lossy(&out.stdout), false);
    assert_eq!(dumped, exported, "promtool's blocks hold what was exported");

    phase!("the exported cpu samples are what herd query answers");
    let last = exported.iter().map(|s| s.2).max().unwrap();
    for (ts, v) in herd.points("box", "cpu.used_pct") {
        if ts > last {
            continue;
        }
        let want = (
            labels_of("herd_cpu_used_pct{target=\"box\"}"),
            format!("{v}"),
            ts,
        );
        assert!(exported.contains(&want), "{want:?} missing from the export");
    }

    phase!("JSON lines, one metric; bad usage exits 2");
    let out = herd.cli(&[
        "export",
        "box",
        "--metric",
        "cpu.used_pct",
        "--format",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert!(lines.len() >= 3, "{lines:?}");
    assert!(lines
        .iter()
        .all(|l| l["labels"]["__name__"] == "herd_cpu_used_pct" && l["ts_ms"].is_i64()));
    let out = herd.cli(&["export", "box", "--since", "1h", "--until", "2h"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = herd.cli(&["export"]);
    assert_eq!(out.status.code(), Some(2));
}
