//! `herd export`: a target's samples out of the herd, streamed, in the OpenMetrics
//! text format that `promtool tsdb create-blocks-from openmetrics` reads, or as
//! JSON lines. It asks the herd's `Select` (the Prometheus API's own call, fanned out
//! and merged) one series and one window at a time, so memory stays the same
//! whether the range is an hour or a year. Series come grouped by metric name (an
//! OpenMetrics family), each series whole and in time order, then `# EOF`.
use std::io::Write;
use std::time::{Duration, Instant};

use herd_proto::v1 as pb;

use super::CliError;

/// How much of one series is asked for at once.
const WINDOW_MS: i64 = 6 * 3_600_000;
/// How often progress is told on stderr.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// The output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    Openmetrics,
    Json,
}

/// What to export.
pub struct ExportArgs<'a> {
    pub targets: &'a [String],
    /// Prometheus names (`herd_cpu_used_pct`) or Herd names (`cpu.used_pct`).
    pub metrics: &'a [String],
    pub from_ms: i64,
    pub to_ms: i64,
    pub format: ExportFormat,
}

/// A label value in the text format: backslash, double quote and newline escaped.
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A sample value as OpenMetrics writes it.
fn value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

/// `name{a="b",...}` of a series (labels sorted, `__name__` as the name).
fn series_text(labels: &std::collections::BTreeMap<String, String>) -> String {
    let name = labels.get("__name__").map(String::as_str).unwrap_or("");
    let rest: Vec<String> = labels
        .iter()
        .filter(|(k, _)| k.as_str() != "__name__")
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    if rest.is_empty() {
        name.to_string()
    } else {
        format!("{name}{{{}}}", rest.join(","))
    }
}

fn eq(name: &str, value: &str) -> pb::LabelMatcher {
    pb::LabelMatcher {
        name: name.into(),
        op: "=".into(),
        value: value.into(),
    }
}

/// Exports to `out`; progress and the herd's gaps on stderr.
pub async fn export(
    client: &mut super::commands::Client,
    args: ExportArgs<'_>,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    if args.from_ms >= args.to_ms {
        return Err(CliError::Usage(format!(
            "--since must be before --until (from {} to {} ms)",
            args.from_ms, args.to_ms
        )));
    }
    let wanted: Vec<String> = args
        .metrics
        .iter()
        .map(|m| {
            if m.starts_with("herd_") {
                m.clone()
            } else {
                crate::api::prom_name(m)
            }
        })
        .collect();
    // The series first (labels only), sorted: families stay together.
    let mut series: Vec<std::collections::BTreeMap<String, String>> = Vec::new();
    for target in args.targets {
        let reply = client
            .select(pb::SelectRequest {
                sets: vec![pb::MatcherSet {
                    matchers: vec![eq("target", target)],
                }],
                from_ms: args.from_ms,
                to_ms: args.to_ms,
                local_only: false,
                names_only: true,
            })
            .await
            .map_err(|s| {
                CliError::Failure(format!("listing the series of {target}: {}", s.message()))
            })?
            .into_inner();
        let found = reply.series.len();
        series.extend(
            reply
                .series
                .into_iter()
                .map(|s| s.labels.into_iter().collect())
                .filter(|l: &std::collections::BTreeMap<String, String>| {
                    wanted.is_empty() || l.get("__name__").is_some_and(|n| wanted.contains(n))
                }),
        );
        if found == 0 {
            eprintln!("herd export: no series of target {target:?} (is it in the fleet?)");
        }
    }
    series.sort_by(|a, b| (a.get("__name__"), a).cmp(&(b.get("__name__"), b)));
    series.dedup();
    let total = series.len();
    let started = Instant::now();
    let mut told = Instant::now();
    let (mut samples, mut family) = (0u64, String::new());
    let write_err = |e: std::io::Error| CliError::Failure(format!("writing the export: {e}"));
    for (i, labels) in series.iter().enumerate() {
        let name = labels.get("__name__").cloned().unwrap_or_default();
        if args.format == ExportFormat::Openmetrics && name != family {
            writeln!(out, "# TYPE {name} gauge").map_err(write_err)?;
            family = name.clone();
        }
        let head = series_text(labels);
        let matchers: Vec<pb::LabelMatcher> = labels.iter().map(|(k, v)| eq(k, v)).collect();
        let mut from = args.from_ms;
        while from < args.to_ms {
            let to = (from + WINDOW_MS).min(args.to_ms);
            let reply = client
                .select(pb::SelectRequest {
                    sets: vec![pb::MatcherSet {
                        matchers: matchers.clone(),
                    }],
                    from_ms: from,
                    to_ms: to,
                    local_only: false,
                    names_only: false,
                })
                .await
                .map_err(|s| CliError::Failure(format!("reading {head}: {}", s.message())))?
                .into_inner();
            for g in &reply.gaps {
                eprintln!(
                    "herd export: gap in {head} from {} to {} ms: {}",
                    g.from_ms, g.to_ms, g.reason
                );
            }
            // Exact matchers select this series alone (any other it names has
            // more labels): keep exactly it.
            for s in reply.series {
                let got: std::collections::BTreeMap<String, String> =
                    s.labels.into_iter().collect();
                if &got != labels {
                    continue;
                }
                for p in s.points.iter().filter(|p| p.ts_ms >= from && p.ts_ms < to) {
                    match args.format {
                        ExportFormat::Openmetrics => writeln!(
                            out,
                            "{head} {} {}.{:03}",
                            value(p.value),
                            p.ts_ms.div_euclid(1000),
                            p.ts_ms.rem_euclid(1000)
                        ),
                        ExportFormat::Json => writeln!(
                            out,
                            "{}",
                            serde_json::json!({"labels": labels, "ts_ms": p.ts_ms, "value": p.value})
                        ),
                    }
                    .map_err(write_err)?;
                    samples += 1;
                }
            }
            from = to;
            if told.elapsed() >= PROGRESS_EVERY {
                told = Instant::now();
                let secs = started.elapsed().as_secs_f64().max(0.001);
                eprintln!(
                    "herd export: series {}/{total}, {samples} samples ({:.0}/s)",
                    i + 1,
                    samples as f64 / secs
                );
            }
        }
    }
    if args.format == ExportFormat::Openmetrics {
        writeln!(out, "# EOF").map_err(write_err)?;
    }
    out.flush().map_err(write_err)?;
    eprintln!(
        "herd export: {samples} samples of {total} series in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_and_values_are_written_as_openmetrics_reads_them() {
        let labels: std::collections::BTreeMap<String, String> = [
            ("__name__", "herd_disk_used_pct"),
            ("target", "web \"1\"\\a"),
            ("mount", "/"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(
            series_text(&labels),
            r#"herd_disk_used_pct{mount="/",target="web \"1\"\\a"}"#
        );
        assert_eq!(value(1.5), "1.5");
        assert_eq!(value(f64::NAN), "NaN");
        assert_eq!(value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(value(3.0), "3");
    }
}
