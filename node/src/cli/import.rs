//! `herd import FILE`: history from an OpenMetrics or Prometheus text file (what
//! `herd export` writes, what a Prometheus `/federate` answers, what tools built on
//! `promtool tsdb dump` give) into the store of the node it talks to.
//!
//! The file is read twice, streaming (memory grows with the number of series, not
//! of samples): first to check every line — a bad one is reported with its line
//! number, and nothing is stored unless `--partial` says to skip bad lines — and
//! to ask the node which series it would refuse (overlap with what a series holds,
//! older than the retention, in the future); then to send the samples in batches.
//!
//! Names: a series' `target` label names its target (else `--target`); a name
//! `herd_X` is the Herd metric whose Prometheus name it is (the node resolves it
//! against the series it holds, else `X`); any other name is kept as it is (a
//! Prometheus `node_load1` is the Herd metric `node_load1`, `herd_node_load1` in
//! the Prometheus API). An `exported_target` label is the series' own `target`.
//! OpenMetrics timestamps are seconds, Prometheus text timestamps milliseconds:
//! the format is OpenMetrics when the file ends with `# EOF` (or `--format`).
use std::collections::BTreeMap;
use std::io::BufRead;
use std::time::{Duration, Instant};

use herd_proto::v1 as pb;

use super::CliError;
use crate::collector::checks::parse::exposition;

/// Samples sent per request.
const BATCH_SAMPLES: usize = 20_000;
/// Bad lines listed before "and N more".
const MAX_LISTED: usize = 20;
/// How often progress is told on stderr.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// How the timestamps of the file count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ImportFormat {
    /// OpenMetrics when the file ends with `# EOF`, else Prometheus text.
    Auto,
    /// Timestamps in seconds (fractions allowed).
    Openmetrics,
    /// Timestamps in milliseconds.
    Prometheus,
}

/// One sample line, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
    /// As written: seconds (OpenMetrics) or milliseconds (Prometheus text).
    pub timestamp: f64,
}

/// What a line of the file is.
#[derive(Debug, PartialEq)]
pub enum Parsed {
    Sample(Line),
    /// A comment, `# TYPE`/`# HELP`/`# UNIT`, an empty line.
    Nothing,
    Eof,
}

/// Parses one line (without its newline): the sample grammar is the exposition
/// parser's (`collector::checks::parse::exposition::sample_parts`); an import also
/// needs every sample's time.
pub fn parse_line(line: &str) -> Result<Parsed, String> {
    let line = line.strip_suffix('\r').unwrap_or(line).trim();
    if line.is_empty() {
        return Ok(Parsed::Nothing);
    }
    if let Some(rest) = line.strip_prefix('#') {
        return Ok(if rest.trim() == "EOF" {
            Parsed::Eof
        } else {
            Parsed::Nothing
        });
    }
    let p = exposition::sample_parts(line)?;
    let name = p.name;
    let ts = p.timestamp.ok_or_else(|| {
        format!("{name}: no timestamp (an import stores history: every sample needs its time)")
    })?;
    let timestamp = ts
        .parse::<f64>()
        .ok()
        .filter(|t| t.is_finite())
        .ok_or_else(|| format!("{name}: timestamp {ts:?} is not a number"))?;
    Ok(Parsed::Sample(Line {
        name: name.to_string(),
        labels: p.labels,
        value: p.value,
        timestamp,
    }))
}

/// The target of a line and its own labels (`target` taken out,
/// `exported_target` back to `target`).
fn series_of(
    line: &Line,
    default_target: Option<&str>,
) -> Result<(String, BTreeMap<String, String>), String> {
    let mut labels = line.labels.clone();
    let target = match labels.remove("target") {
        Some(t) if !t.is_empty() => t,
        _ => default_target
            .map(str::to_string)
            .ok_or_else(|| format!("{}: no target label and no --target", line.name))?,
    };
    if let Some(own) = labels.remove("exported_target") {
        labels.insert("target".into(), own);
    }
    Ok((target, labels))
}

/// One series as the file has it: where its samples are, for the order check.
struct Seen {
    last: f64,
    count: u64,
    first: f64,
}

/// What the first pass found.
struct Survey {
    openmetrics: bool,
    /// (line number, why) of every bad line.
    bad: Vec<(usize, String)>,
    series: BTreeMap<(String, String, BTreeMap<String, String>), Seen>,
    samples: u64,
}

/// Key of a series: (target, name, labels).
type Key = (String, String, BTreeMap<String, String>);

fn key_of(line: &Line, default_target: Option<&str>) -> Result<Key, String> {
    let (target, labels) = series_of(line, default_target)?;
    Ok((target, line.name.clone(), labels))
}

fn open(path: &std::path::Path) -> Result<std::io::BufReader<std::fs::File>, CliError> {
    std::fs::File::open(path)
        .map(std::io::BufReader::new)
        .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))
}

fn survey(
    path: &std::path::Path,
    default_target: Option<&str>,
    format: ImportFormat,
) -> Result<Survey, CliError> {
    let mut s = Survey {
        openmetrics: false,
        bad: Vec::new(),
        series: BTreeMap::new(),
        samples: 0,
    };
    let mut eof_at = None;
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let (mut read, mut told) = (0u64, Instant::now());
    for (i, line) in open(path)?.lines().enumerate() {
        let n = i + 1;
        if told.elapsed() >= PROGRESS_EVERY {
            told = Instant::now();
            eprintln!(
                "herd import: checking {}: line {n}, {} of {} MB",
                path.display(),
                read / 1_000_000,
                size / 1_000_000
            );
        }
        let line =
            line.map_err(|e| CliError::Usage(format!("{}:{n}: cannot read: {e}", path.display())))?;
        read += line.len() as u64 + 1;
        if let Some(at) = eof_at {
            if !line.trim().is_empty() {
                s.bad.push((n, format!("text after # EOF (line {at})")));
            }
            continue;
        }
        match parse_line(&line) {
            Ok(Parsed::Eof) => eof_at = Some(n),
            Ok(Parsed::Nothing) => {}
            Ok(Parsed::Sample(l)) => match key_of(&l, default_target) {
                Err(e) => s.bad.push((n, e)),
                Ok(key) => match s.series.get_mut(&key) {
                    Some(seen) if l.timestamp <= seen.last => s.bad.push((
                        n,
                        format!(
                            "{}: timestamp {} is not after the series' previous one ({})",
                            l.name, l.timestamp, seen.last
                        ),
                    )),
                    Some(seen) => {
                        seen.last = l.timestamp;
                        seen.count += 1;
                        s.samples += 1;
                    }
                    None => {
                        s.series.insert(
                            key,
                            Seen {
                                first: l.timestamp,
                                last: l.timestamp,
                                count: 1,
                            },
                        );
                        s.samples += 1;
                    }
                },
            },
            Err(e) => s.bad.push((n, e)),
        }
    }
    s.openmetrics = match format {
        ImportFormat::Auto => eof_at.is_some(),
        ImportFormat::Openmetrics => true,
        ImportFormat::Prometheus => false,
    };
    Ok(s)
}

/// A file timestamp in Unix ms.
fn ts_ms(timestamp: f64, openmetrics: bool) -> i64 {
    if openmetrics {
        (timestamp * 1000.0).round() as i64
    } else {
        timestamp.round() as i64
    }
}

fn pb_series(key: &Key, points: Vec<pb::Point>) -> pb::ImportSeries {
    pb::ImportSeries {
        target: key.0.clone(),
        metric: key.1.clone(),
        labels: key.2.clone().into_iter().collect(),
        points,
    }
}

/// What to import.
pub struct ImportArgs<'a> {
    pub path: &'a std::path::Path,
    pub target: Option<&'a str>,
    pub partial: bool,
    pub format: ImportFormat,
}

/// Imports the file; progress and what was skipped on stderr.
pub async fn import(
    client: &mut super::commands::Client,
    args: ImportArgs<'_>,
) -> Result<(), CliError> {
    let started = Instant::now();
    let file = args.path.display().to_string();
    let survey = survey(args.path, args.target, args.format)?;
    if !survey.bad.is_empty() {
        let mut lines: Vec<String> = survey
            .bad
            .iter()
            .take(MAX_LISTED)
            .map(|(n, why)| format!("{file}:{n}: {why}"))
            .collect();
        if survey.bad.len() > MAX_LISTED {
            lines.push(format!("... and {} more", survey.bad.len() - MAX_LISTED));
        }
        if !args.partial {
            lines.push(format!(
                "nothing imported: {} bad line(s) (--partial imports the good ones)",
                survey.bad.len()
            ));
            return Err(CliError::Usage(lines.join("\n")));
        }
        for l in &lines {
            eprintln!("herd import: skipped {l}");
        }
    }
    if survey.samples == 0 {
        return Err(CliError::Usage(format!("{file}: no samples to import")));
    }
    // Which series would the node refuse? Asked with each series' first and last.
    let om = survey.openmetrics;
    let keys: Vec<&Key> = survey.series.keys().collect();
    let check: Vec<pb::ImportSeries> = survey
        .series
        .iter()
        .map(|(k, seen)| {
            let mut pts = vec![pb::Point {
                ts_ms: ts_ms(seen.first, om),
                value: 0.0,
            }];
            if seen.count > 1 {
                pts.push(pb::Point {
                    ts_ms: ts_ms(seen.last, om),
                    value: 0.0,
                });
            }
            pb_series(k, pts)
        })
        .collect();
    const CHECK_SERIES: usize = 1000;
    let mut refused: Vec<(Key, String)> = Vec::new();
    for (n, chunk) in check.chunks(CHECK_SERIES).enumerate() {
        let reply = client
            .import(pb::ImportRequest {
                series: chunk.to_vec(),
                check_only: true,
            })
            .await
            .map_err(|s| CliError::Failure(format!("asking the node: {}", s.message())))?
            .into_inner();
        for r in reply.refused {
            if let Some(k) = keys.get(n * CHECK_SERIES + r.series as usize) {
                refused.push(((*k).clone(), r.why));
            }
        }
    }
    let skip: std::collections::BTreeSet<Key> = refused.iter().map(|(k, _)| k.clone()).collect();
    if !refused.is_empty() {
        let said: Vec<String> = refused
            .iter()
            .map(|(k, why)| format!("{}: {why}", display_name(k)))
            .collect();
        if !args.partial {
            let mut lines: Vec<String> = said.iter().take(MAX_LISTED).cloned().collect();
            if said.len() > MAX_LISTED {
                lines.push(format!("... and {} more", said.len() - MAX_LISTED));
            }
            lines.push(format!(
                "nothing imported: the node refuses {} series (--partial imports the others)",
                said.len()
            ));
            return Err(CliError::Usage(lines.join("\n")));
        }
        for r in &said {
            eprintln!("herd import: skipped series {r}");
        }
    }
    let total: u64 = survey
        .series
        .iter()
        .filter(|(k, _)| !skip.contains(*k))
        .map(|(_, s)| s.count)
        .sum();
    // Second pass: the samples, in batches.
    let mut batch: BTreeMap<Key, Vec<pb::Point>> = BTreeMap::new();
    let mut in_batch = 0usize;
    let (mut sent, mut written) = (0u64, 0u64);
    let mut told = Instant::now();
    // The lines the first pass found bad (only with --partial) are left out.
    let bad: std::collections::HashSet<usize> = survey.bad.iter().map(|(n, _)| *n).collect();
    for (i, line) in open(args.path)?.lines().enumerate() {
        let line = line.map_err(|e| CliError::Failure(format!("{file}: cannot read: {e}")))?;
        if bad.contains(&(i + 1)) {
            continue;
        }
        let l = match parse_line(&line) {
            Ok(Parsed::Sample(l)) => l,
            Ok(Parsed::Eof) => break,
            _ => continue,
        };
        let Ok(key) = key_of(&l, args.target) else {
            continue;
        };
        if skip.contains(&key) {
            continue;
        }
        batch.entry(key).or_default().push(pb::Point {
            ts_ms: ts_ms(l.timestamp, om),
            value: l.value,
        });
        in_batch += 1;
        if in_batch >= BATCH_SAMPLES {
            written += send(client, &mut batch, &file).await?;
            sent += in_batch as u64;
            in_batch = 0;
            if told.elapsed() >= PROGRESS_EVERY {
                told = Instant::now();
                let secs = started.elapsed().as_secs_f64().max(0.001);
                eprintln!(
                    "herd import: {sent}/{total} samples ({:.0}/s)",
                    sent as f64 / secs
                );
            }
        }
    }
    written += send(client, &mut batch, &file).await?;
    eprintln!(
        "herd import: {written} samples of {} series stored in {:.1} s{}",
        survey.series.len() - skip.len(),
        started.elapsed().as_secs_f64(),
        if skip.is_empty() && survey.bad.is_empty() {
            String::new()
        } else {
            format!(
                " ({} bad lines and {} series skipped)",
                survey.bad.len(),
                skip.len()
            )
        }
    );
    Ok(())
}

/// A series as messages name it: `target metric{k="v",...}`.
fn display_name(k: &Key) -> String {
    if k.2.is_empty() {
        format!("{} {}", k.0, k.1)
    } else {
        let labels: Vec<String> = k.2.iter().map(|(a, b)| format!("{a}={b:?}")).collect();
        format!("{} {}{{{}}}", k.0, k.1, labels.join(","))
    }
}

/// Sends and empties a batch; returns how many samples the node stored.
async fn send(
    client: &mut super::commands::Client,
    batch: &mut BTreeMap<Key, Vec<pb::Point>>,
    file: &str,
) -> Result<u64, CliError> {
    if batch.is_empty() {
        return Ok(0);
    }
    let (keys, series): (Vec<Key>, Vec<pb::ImportSeries>) = std::mem::take(batch)
        .into_iter()
        .map(|(k, pts)| {
            let s = pb_series(&k, pts);
            (k, s)
        })
        .unzip();
    let reply = client
        .import(pb::ImportRequest {
            series,
            check_only: false,
        })
        .await
        .map_err(|s| CliError::Failure(format!("importing {file}: {}", s.message())))?
        .into_inner();
    for r in &reply.refused {
        let name = keys
            .get(r.series as usize)
            .map_or_else(|| format!("series {}", r.series), display_name);
        eprintln!("herd import: the node refused {name}: {}", r.why);
    }
    Ok(reply.written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(line: &str) -> Line {
        match parse_line(line) {
            Ok(Parsed::Sample(l)) => l,
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn lines_of_both_formats_parse() {
        let l =
            sample(r#"herd_disk_used_pct{mount="/",target="web \"1\"\\a\n"} 42.5 1700000000.250"#);
        assert_eq!(l.name, "herd_disk_used_pct");
        assert_eq!(l.labels["target"], "web \"1\"\\a\n");
        assert_eq!(l.labels["mount"], "/");
        assert_eq!((l.value, l.timestamp), (42.5, 1_700_000_000.25));
        let l = sample("node_load1 0.5 1700000000250");
        assert!(l.labels.is_empty());
        assert_eq!(ts_ms(l.timestamp, false), 1_700_000_000_250);
        assert_eq!(ts_ms(1_700_000_000.25, true), 1_700_000_000_250);
        assert!(sample("x{a=\"1\",} NaN 1").value.is_nan());
        assert_eq!(sample("x -Inf 1").value, f64::NEG_INFINITY);
        let ex = sample(r#"x_bucket{le="1"} 3 1.5 # {trace_id="a"} 0.5 1.4"#);
        assert_eq!(ex.timestamp, 1.5, "an exemplar is left out");
        assert_eq!(parse_line("# TYPE x gauge"), Ok(Parsed::Nothing));
        assert_eq!(parse_line(""), Ok(Parsed::Nothing));
        assert_eq!(parse_line("# EOF"), Ok(Parsed::Eof));
    }

    #[test]
    fn bad_lines_say_what_is_wrong() {
        for (line, says) in [
            ("9x 1 1", "bad metric name"),
            ("x", "value missing"),
            ("x 1", "no timestamp"),
            ("x one 1", "bad value \"one\""),
            ("x 1 soon", "timestamp \"soon\" is not a number"),
            ("x 1 2 3", "unexpected text after the timestamp"),
            ("x{a=1} 1 1", "label a: quoted value expected"),
            ("x{a=\"1} 1 1", "unterminated label value"),
            ("x{a=\"1\",a=\"2\"} 1 1", "label a repeated"),
            ("x{a=\"1\" b=\"2\"} 1 1", "',' or '}' expected"),
        ] {
            match parse_line(line) {
                Err(e) => assert!(e.contains(says), "{line}: {e}"),
                Ok(p) => panic!("{line} parsed: {p:?}"),
            }
        }
    }

    #[test]
    fn the_survey_finds_bad_lines_order_and_the_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.om");
        std::fs::write(
            &path,
            "# TYPE herd_load_1 gauge\n\
             herd_load_1{target=\"a\"} 1 100\n\
             herd_load_1{target=\"a\"} 2 101.5\n\
             herd_load_1{target=\"a\"} 3 101\n\
             herd_load_1 4 100\n\
             herd_load_1{target=\"b\",exported_target=\"own\"} 5 100\n\
             # EOF\n",
        )
        .unwrap();
        let s = survey(&path, None, ImportFormat::Auto).unwrap();
        assert!(s.openmetrics);
        let bad: Vec<usize> = s.bad.iter().map(|(n, _)| *n).collect();
        assert_eq!(bad, [4, 5], "{:?}", s.bad);
        assert!(s.bad[0].1.contains("not after"));
        assert!(s.bad[1].1.contains("no target label"));
        assert_eq!(s.samples, 3);
        let keys: Vec<&Key> = s.series.keys().collect();
        assert_eq!(keys[1].0, "b");
        assert_eq!(keys[1].2["target"], "own");
        // With --target the unnamed series is the target's.
        let s = survey(&path, Some("c"), ImportFormat::Prometheus).unwrap();
        assert_eq!(s.bad.len(), 1);
        assert!(!s.openmetrics);
    }
}
