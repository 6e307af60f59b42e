//! `herd export`: a target's samples out of a real node in OpenMetrics, read back by
//! the real `promtool tsdb create-blocks-from openmetrics` into Prometheus blocks
//! that hold exactly the exported samples (`promtool tsdb dump`), which are the
//! samples `herd query` answers; JSON lines too; bad usage exits 2. `herd import`:
//! an export back into another node losslessly, a real Prometheus's federation.
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

/// The export of one node, imported into another, exports again as the same
/// samples (names, labels, values, times); a second import overlaps and stores
/// nothing; a bad line is named with its line number and nothing is stored
/// unless `--partial`.
#[test]
fn import_takes_an_export_back_losslessly_and_checks_every_line_first() {
    let a = Herd::start(HerdOptions::default().fleet(local_target("box", "1s")));
    let b = Herd::start(HerdOptions::default().fleet(local_target("other", "1s")));
    wait_for(BOUND, "a few cpu samples", || {
        (a.points("box", "cpu.used_pct").len() >= 3).then_some(())
    });
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("box.om");
    let file_s = file.to_str().unwrap();
    a.cli_ok(&["export", "box", "--since", "10m", "--out", file_s]);
    let exported = samples(&std::fs::read_to_string(&file).unwrap(), true);

    phase!("herd import box.om into another node; its export is the same samples");
    let out = b.cli(&["import", file_s]);
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains(&format!("{} samples", exported.len())),
        "{said}"
    );
    let again = dir.path().join("again.om");
    b.cli_ok(&[
        "export",
        "box",
        "--since",
        "10m",
        "--out",
        again.to_str().unwrap(),
    ]);
    let reexported = samples(&std::fs::read_to_string(&again).unwrap(), true);
    assert_eq!(reexported, exported, "lossless round trip");

    phase!("the same file again: every series overlaps, nothing is stored, exit 2");
    let out = b.cli(&["import", file_s]);
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(
        said.contains("overlaps the samples the series holds"),
        "{said}"
    );
    assert!(said.contains("nothing imported"), "{said}");
    // --partial: every series is known refused before sending (the refusals name
    // series by index, so `herd_*` names the node resolved still match).
    let out = b.cli(&["import", file_s, "--partial"]);
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("skipped series box herd_cpu_used_pct"),
        "{said}"
    );
    assert!(!said.contains("the node refused"), "{said}");
    assert!(said.contains("herd import: 0 samples"), "{said}");

    phase!("a bad line: named with its number, nothing stored; --partial stores the rest");
    let now_s = herd_tests::now_ms() / 1000;
    let hand = dir.path().join("hand.om");
    std::fs::write(
        &hand,
        format!(
            "# TYPE herd_load_1 gauge\n\
             herd_load_1{{target=\"hand\"}} 1 {}\n\
             herd_load_1{{target=\"hand\"}} 2 {}\n\
             herd_load_1{{target=\"hand\"}} oops {}\n\
             # EOF\n",
            now_s - 30,
            now_s - 20,
            now_s - 10
        ),
    )
    .unwrap();
    let hand_s = hand.to_str().unwrap();
    let out = b.cli(&["import", hand_s]);
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(
        said.contains(&format!("{hand_s}:4: bad value \"oops\"")),
        "{said}"
    );
    let out = b.cli(&["query", "hand", "load_1", "--since", "1h"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no data for it"),
        "nothing stored: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = b.cli(&["import", hand_s, "--partial"]);
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{said}");
    assert!(said.contains("skipped"), "{said}");
    let got = b.points("hand", "load_1");
    assert_eq!(
        got,
        vec![((now_s - 30) * 1000, 1.0), ((now_s - 20) * 1000, 2.0)]
    );
    let out = b.cli(&["import", "/nonexistent.om"]);
    assert_eq!(out.status.code(), Some(2));

    phase!("herd compact: refused while the node runs, done once it stopped");
    let mut b = b;
    let data = b.data_dir();
    let data_s = data.to_str().unwrap();
    let out = herd_tests::herd_cli(&["compact", data_s], BOUND);
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("in use: a node runs on this data dir"),
        "{said}"
    );
    assert!(b.sigterm().success());
    let out = herd_tests::herd_cli(&["compact", data_s], BOUND);
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("herd.redb:") && said.contains("raft.redb:"),
        "{said}"
    );
}

/// What a real Prometheus federates (Prometheus text, times in ms, no `# EOF`)
/// is imported as is: `up{instance,job}` of target `prom`, the same values at
/// the same times.
#[test]
fn import_reads_what_a_real_prometheus_federates() {
    // A target nobody serves (port 1 of loopback): Prometheus records `up` 0.
    let prom = herd_tests::prometheus::Prometheus::start(
        "  - job_name: down\n    static_configs:\n      - targets: ['127.0.0.1:1']\n",
    );
    let fetch = || {
        let out = run_bounded(
            Command::new("curl")
                .args(["-s", "--max-time", "10", "-G"])
                .arg(format!("{}/federate", prom.url))
                .arg("--data-urlencode")
                .arg("match[]=up"),
            BOUND,
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let text = wait_for(BOUND, "Prometheus federating a few samples of up", || {
        let t = fetch();
        (t.lines().filter(|l| l.starts_with("up{")).count() >= 1).then_some(t)
    });
    let herd = Herd::start(HerdOptions::default().fleet(local_target("other", "1s")));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("federate.txt");
    std::fs::write(&file, &text).unwrap();
    let out = herd.cli(&["import", file.to_str().unwrap(), "--target", "prom"]);
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{said}\n{text}");
    let federated = samples(&text, false);
    let json = herd.cli_ok(&["export", "prom", "--since", "1h", "--format", "json"]);
    let got: BTreeSet<Sample> = json
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let mut labels: BTreeMap<String, String> =
                serde_json::from_value(v["labels"].clone()).unwrap();
            // Herd's name for `up` and its target: back to what Prometheus said.
            labels.insert("__name__".into(), "up".into());
            labels.remove("target");
            (
                labels,
                format!("{}", v["value"].as_f64().unwrap()),
                v["ts_ms"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, federated, "{text}");
}
