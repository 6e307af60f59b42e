//! Prometheus text exposition format 0.0.4
//! (<https://prometheus.io/docs/instrumenting/exposition_formats/>), as served by
//! node_exporter, CockroachDB's `/_status/vars` and most `/metrics` endpoints.
//!
//! ```text
//! # HELP http_requests_total The total number of HTTP requests.
//! # TYPE http_requests_total counter
//! http_requests_total{method="post",code="200"} 1027 1395066363000
//! ```
//!
//! The parser is lenient where exporters are sloppy (blanks inside label sets,
//! trailing commas, CRLF line ends, unknown escapes) and line-oriented: a bad line is
//! reported and skipped, the rest of the scrape is kept.

use std::collections::BTreeMap;

use crate::model::text::quote_excerpt;
use crate::model::{Labels, Measurement};

/// Problems kept, including the summary lines at the end.
const MAX_PROBLEMS: usize = 20;
/// How much of an offending line a problem quotes.
const MAX_QUOTED_CHARS: usize = 80;
/// Prefix of every metric produced here, keeping exporter names in their own space.
const METRIC_PREFIX: &str = "prom.";

const TYPES: [&str; 5] = ["counter", "gauge", "histogram", "summary", "untyped"];
const TYPE_COUNTER: &str = "counter";
const TYPE_HISTOGRAM: &str = "histogram";
const TYPE_SUMMARY: &str = "summary";

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct PromSample {
    /// The metric family (the `# TYPE` name) the sample belongs to: `foo` for
    /// `foo_bucket` of histogram `foo`. Without a matching TYPE, the sample's name.
    pub family: String,
    pub name: String,
    /// Empty label values are dropped: to Prometheus they equal an absent label.
    pub labels: Labels,
    pub value: f64,
    pub timestamp_ms: Option<i64>,
}

/// What one scrape said.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exposition {
    pub samples: Vec<PromSample>,
    /// Family name to its declared type.
    pub types: BTreeMap<String, String>,
    /// `line N: why`, at most `MAX_PROBLEMS`.
    pub problems: Vec<String>,
}

/// Reads a scrape. Never fails: a bad line is named in `problems` and skipped; after
/// `max_samples` samples the rest is ignored, which is noted as a problem.
pub fn parse(text: &[u8], max_samples: usize) -> Exposition {
    let text = String::from_utf8_lossy(text);
    let mut out = Exposition::default();
    let mut problems = Problems::default();
    for (index, line) in text.split('\n').enumerate() {
        let number = index + 1;
        let line = line.strip_suffix('\r').unwrap_or(line);
        let trimmed = line.trim_matches(is_blank);
        if trimmed.is_empty() {
            continue;
        }
        if let Some(comment) = trimmed.strip_prefix('#') {
            if let Err(why) = read_comment(comment, &mut out.types) {
                problems.push(format!("line {number}: {why}"));
            }
            continue;
        }
        match read_sample(trimmed, &out.types) {
            Ok(sample) => {
                if out.samples.len() >= max_samples {
                    problems.set_limit(format!(
                        "line {number}: stopped after {max_samples} samples, rest ignored"
                    ));
                    break;
                }
                out.samples.push(sample);
            }
            Err(why) => problems.push(format!(
                "line {number}: {why}: {}",
                quote_excerpt(trimmed, MAX_QUOTED_CHARS)
            )),
        }
    }
    out.problems = problems.finish();
    out
}

/// An allow-list of family names: exact names, or globs where `*` matches any run of
/// characters. Scrapes are large (node_exporter serves about a thousand series) and
/// only what is asked for is kept, so an empty list allows nothing.
#[derive(Debug, Clone, Default)]
pub struct Allow {
    patterns: Vec<String>,
}

/// An `allow` pattern that could never match a metric name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllowError {
    #[error("empty metric pattern")]
    Empty,
    #[error(
        "metric pattern {pattern:?}: {bad:?} is not allowed \
         (letters, digits, '_', ':' and '*' are)"
    )]
    BadChar { pattern: String, bad: char },
}

impl Allow {
    /// Refuses patterns that could never match a metric name, so typos surface when
    /// the spec is applied rather than as silently missing data.
    pub fn new(patterns: &[String]) -> Result<Allow, AllowError> {
        for pattern in patterns {
            if pattern.is_empty() {
                return Err(AllowError::Empty);
            }
            if let Some(bad) = pattern.chars().find(|&c| c != '*' && !is_name_char(c)) {
                return Err(AllowError::BadChar {
                    pattern: pattern.clone(),
                    bad,
                });
            }
        }
        Ok(Allow {
            patterns: patterns.to_vec(),
        })
    }

    pub fn allows(&self, family: &str) -> bool {
        self.patterns
            .iter()
            .any(|p| crate::model::glob_match(p, family))
    }
}

/// Measurements of the allowed families: `prom.<sample name>` with the sample's
/// labels. NaN and infinite values are left out: exporters write NaN for "no
/// observation yet" (empty summary quantiles) and neither carries a measurement.
pub fn measurements(e: &Exposition, allow: &Allow) -> Vec<Measurement> {
    e.samples
        .iter()
        .filter(|s| s.value.is_finite() && allow.allows(&s.family))
        .map(|s| Measurement {
            metric: format!("{METRIC_PREFIX}{}", s.name),
            labels: s.labels.clone(),
            value: s.value,
        })
        .collect()
}

/// Problems, bounded: a scrape of garbage must not produce one message per line.
#[derive(Default)]
struct Problems {
    kept: Vec<String>,
    dropped: usize,
    limit: Option<String>,
}

impl Problems {
    /// Two slots stay free for the summary of dropped problems and the limit note.
    const ORDINARY: usize = MAX_PROBLEMS - 2;

    fn push(&mut self, problem: String) {
        if self.kept.len() < Self::ORDINARY {
            self.kept.push(problem);
        } else {
            self.dropped += 1;
        }
    }

    fn set_limit(&mut self, note: String) {
        self.limit = Some(note);
    }

    fn finish(mut self) -> Vec<String> {
        if self.dropped > 0 {
            self.kept
                .push(format!("{} more problems not listed", self.dropped));
        }
        self.kept.extend(self.limit);
        self.kept
    }
}

/// The format separates tokens by blanks and tabs only.
fn is_blank(c: char) -> bool {
    c == ' ' || c == '\t'
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(is_name_start) && chars.all(is_name_char)
}

/// `# HELP` is ignored (its text is for people); `# TYPE` is recorded; any other
/// comment is skipped.
fn read_comment(comment: &str, types: &mut BTreeMap<String, String>) -> Result<(), String> {
    let mut tokens = comment.split(is_blank).filter(|t| !t.is_empty());
    if tokens.next() != Some("TYPE") {
        return Ok(());
    }
    let (Some(name), Some(kind)) = (tokens.next(), tokens.next()) else {
        return Err("TYPE without a name and a type".to_string());
    };
    if tokens.next().is_some() {
        return Err(format!("TYPE {name}: unexpected text after the type"));
    }
    if !is_metric_name(name) {
        return Err(format!(
            "TYPE {}: not a metric name",
            quote_excerpt(name, MAX_QUOTED_CHARS)
        ));
    }
    let Some(kind) = TYPES.into_iter().find(|t| *t == kind) else {
        return Err(format!(
            "TYPE {name}: unknown type {}",
            quote_excerpt(kind, MAX_QUOTED_CHARS)
        ));
    };
    if types.contains_key(name) {
        // The format allows one TYPE per family; the first one described the samples
        // already read.
        return Err(format!("TYPE {name}: repeated, first one kept"));
    }
    types.insert(name.to_string(), kind.to_string());
    Ok(())
}

/// The family a sample belongs to: its own name if that has a TYPE, else the name
/// without the suffix a histogram, summary or counter adds to its samples.
fn family_of(name: &str, types: &BTreeMap<String, String>) -> String {
    if types.contains_key(name) {
        return name.to_string();
    }
    let type_of = |base: &str| types.get(base).map(String::as_str);
    let suffixed: [(&str, &[&str]); 5] = [
        ("_bucket", &[TYPE_HISTOGRAM]),
        ("_sum", &[TYPE_HISTOGRAM, TYPE_SUMMARY]),
        ("_count", &[TYPE_HISTOGRAM, TYPE_SUMMARY]),
        ("_created", &[TYPE_HISTOGRAM, TYPE_SUMMARY, TYPE_COUNTER]),
        // OpenMetrics-style counters declare `foo` and sample `foo_total`.
        ("_total", &[TYPE_COUNTER]),
    ];
    for (suffix, kinds) in suffixed {
        let Some(base) = name.strip_suffix(suffix) else {
            continue;
        };
        if type_of(base).is_some_and(|t| kinds.contains(&t)) {
            return base.to_string();
        }
        // Python's client declares counter `foo_total` and samples `foo_created`.
        let total = format!("{base}_total");
        if suffix == "_created" && type_of(&total) == Some(TYPE_COUNTER) {
            return total;
        }
    }
    name.to_string()
}

/// A cursor over one sample line.
struct Cursor<'a> {
    rest: &'a str,
}

impl<'a> Cursor<'a> {
    fn skip_blanks(&mut self) {
        self.rest = self.rest.trim_start_matches(is_blank);
    }

    fn peek(&self) -> Option<char> {
        self.rest.chars().next()
    }

    fn eat(&mut self, c: char) -> bool {
        match self.rest.strip_prefix(c) {
            Some(rest) => {
                self.rest = rest;
                true
            }
            None => false,
        }
    }

    /// A name: a first character passing `start`, then characters passing `more`.
    fn name(&mut self, start: fn(char) -> bool, more: fn(char) -> bool) -> Option<&'a str> {
        if !self.peek().is_some_and(start) {
            return None;
        }
        let end = self
            .rest
            .find(|c: char| !more(c))
            .unwrap_or(self.rest.len());
        let (name, rest) = self.rest.split_at(end);
        self.rest = rest;
        Some(name)
    }

    /// The next blank-separated token, if any.
    fn token(&mut self) -> Option<&'a str> {
        self.skip_blanks();
        if self.rest.is_empty() {
            return None;
        }
        let end = self.rest.find(is_blank).unwrap_or(self.rest.len());
        let (token, rest) = self.rest.split_at(end);
        self.rest = rest;
        Some(token)
    }

    /// A quoted label value after its opening quote, with `\\`, `\"` and `\n`
    /// unescaped. Other escapes are kept as written: the format allows none, but
    /// refusing the whole line over one would lose the sample.
    fn label_value(&mut self) -> Result<String, String> {
        let mut value = String::new();
        let mut chars = self.rest.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.rest = self.rest.get(i + 1..).unwrap_or("");
                    return Ok(value);
                }
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, escaped @ ('\\' | '"'))) => value.push(escaped),
                    Some((_, other)) => {
                        value.push('\\');
                        value.push(other);
                    }
                    None => break,
                },
                c => value.push(c),
            }
        }
        Err("unterminated label value".to_string())
    }

    /// `{name="value",...}` after the opening brace; a trailing comma is accepted.
    fn labels(&mut self) -> Result<Labels, String> {
        let mut labels = Labels::new();
        loop {
            self.skip_blanks();
            if self.eat('}') {
                return Ok(labels);
            }
            let name = self
                .name(is_label_start, is_label_char)
                .ok_or("bad label name")?;
            self.skip_blanks();
            if !self.eat('=') {
                return Err(format!("label {name}: '=' expected"));
            }
            self.skip_blanks();
            if !self.eat('"') {
                return Err(format!("label {name}: quoted value expected"));
            }
            let value = self.label_value()?;
            if labels.contains_key(name) {
                return Err(format!("label {name} repeated"));
            }
            // An empty value is the same as no label to Prometheus.
            if !value.is_empty() {
                labels.insert(name.to_string(), value);
            }
            self.skip_blanks();
            if !self.eat(',') && self.peek() != Some('}') {
                return Err(format!("label {name}: ',' or '}}' expected"));
            }
        }
    }
}

fn is_label_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_label_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// One sample line's parts, the timestamp as written: seconds with a fraction in
/// OpenMetrics, milliseconds in the Prometheus text format (`herd import` reads both).
#[derive(Debug, Clone, PartialEq)]
pub struct SampleParts<'a> {
    pub name: &'a str,
    /// Empty label values are dropped: to Prometheus they equal an absent label.
    pub labels: Labels,
    pub value: f64,
    pub timestamp: Option<&'a str>,
}

/// `name[{labels}] value [timestamp_ms]`
fn read_sample(line: &str, types: &BTreeMap<String, String>) -> Result<PromSample, String> {
    let p = sample_parts(line)?;
    let timestamp_ms = match p.timestamp {
        Some(ts) => Some(
            ts.parse::<i64>()
                .map_err(|_| format!("bad timestamp {}", quote_excerpt(ts, MAX_QUOTED_CHARS)))?,
        ),
        None => None,
    };
    Ok(PromSample {
        family: family_of(p.name, types),
        name: p.name.to_string(),
        labels: p.labels,
        value: p.value,
        timestamp_ms,
    })
}

/// `name[{labels}] value [timestamp]`, then perhaps an OpenMetrics exemplar
/// (`# {labels} value [timestamp]`), which is left out.
pub fn sample_parts(line: &str) -> Result<SampleParts<'_>, String> {
    let mut cursor = Cursor { rest: line };
    let name = cursor
        .name(is_name_start, is_name_char)
        .ok_or("bad metric name")?;
    // Blanks may precede the label set, but without one they separate the value.
    let after_name = cursor.rest;
    cursor.skip_blanks();
    let labels = if cursor.eat('{') {
        cursor.labels()?
    } else {
        cursor.rest = after_name;
        Labels::new()
    };
    if cursor.peek().is_some_and(|c| !is_blank(c)) {
        return Err("blank expected after the metric name".to_string());
    }
    let value = cursor.token().ok_or("value missing")?;
    let value = parse_value(value)
        .ok_or_else(|| format!("bad value {}", quote_excerpt(value, MAX_QUOTED_CHARS)))?;
    let timestamp = cursor.token().filter(|t| !t.starts_with('#'));
    if timestamp.is_some() && cursor.token().is_some_and(|t| !t.starts_with('#')) {
        return Err("unexpected text after the timestamp".to_string());
    }
    Ok(SampleParts {
        name,
        labels,
        value,
        timestamp,
    })
}

/// Go's ParseFloat, which the format refers to: decimals, exponents, `NaN`, `+Inf`,
/// `-Inf` (any case). Rust's parser takes the same spellings.
fn parse_value(token: &str) -> Option<f64> {
    token.parse::<f64>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;
    use std::path::PathBuf;

    fn fixture_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("src/collector/checks/parse/fixtures/exposition")
    }

    fn fixture(name: &str) -> Exposition {
        let bytes = std::fs::read(fixture_dir().join(name)).expect("fixture");
        parse(&bytes, usize::MAX)
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn find<'a>(e: &'a Exposition, name: &str, with: &[(&str, &str)]) -> &'a PromSample {
        let want = labels(with);
        e.samples
            .iter()
            .find(|s| s.name == name && s.labels == want)
            .unwrap_or_else(|| panic!("no {name}{want:?}"))
    }

    fn allow(patterns: &[&str]) -> Allow {
        let patterns: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
        Allow::new(&patterns).expect("valid patterns")
    }

    #[test]
    fn node_exporter_capture() {
        let e = fixture("node_exporter_1.5.0.prom");
        assert!(e.problems.is_empty(), "{:?}", e.problems);
        assert_eq!(e.samples.len(), 187);
        assert_eq!(e.types.len(), 116);
        assert_eq!(
            e.types.get("node_cpu_seconds_total").map(String::as_str),
            Some("counter")
        );
        assert_eq!(e.types.get("node_load1").map(String::as_str), Some("gauge"));
        assert_eq!(
            e.types.get("go_gc_duration_seconds").map(String::as_str),
            Some("summary")
        );

        let idle = find(
            &e,
            "node_cpu_seconds_total",
            &[("cpu", "0"), ("mode", "idle")],
        );
        assert_eq!(idle.family, "node_cpu_seconds_total");
        assert!(idle.value > 0.0);
        assert_eq!(idle.timestamp_ms, None);

        let quantile = find(&e, "go_gc_duration_seconds", &[("quantile", "0.5")]);
        assert_eq!(quantile.family, "go_gc_duration_seconds");
        let count = find(&e, "go_gc_duration_seconds_count", &[]);
        assert_eq!(count.family, "go_gc_duration_seconds");

        let fs = find(
            &e,
            "node_filesystem_size_bytes",
            &[
                ("device", "/dev/vda"),
                ("fstype", "ext4"),
                ("mountpoint", "/"),
            ],
        );
        assert!(fs.value > 1e9, "exponent notation read: {}", fs.value);

        // Empty label values are dropped, the others kept.
        let os = e
            .samples
            .iter()
            .find(|s| s.name == "node_os_info")
            .expect("node_os_info");
        assert_eq!(os.labels.get("id").map(String::as_str), Some("debian"));
        assert!(!os.labels.contains_key("variant"));

        let m = measurements(&e, &allow(&["node_load*", "node_cpu_*", "go_goroutines"]));
        let names: std::collections::BTreeSet<&str> = m.iter().map(|m| m.metric.as_str()).collect();
        let expect = [
            "prom.go_goroutines",
            "prom.node_cpu_guest_seconds_total",
            "prom.node_cpu_seconds_total",
            "prom.node_load1",
            "prom.node_load15",
            "prom.node_load5",
        ];
        assert_eq!(names.into_iter().collect::<Vec<_>>(), expect);
        let cpu = m
            .iter()
            .filter(|m| m.metric == "prom.node_cpu_seconds_total")
            .count();
        assert_eq!(cpu, 16);
    }

    #[test]
    fn cockroach_status_vars() {
        let e = fixture("cockroach_status_vars.prom");
        assert!(e.problems.is_empty(), "{:?}", e.problems);
        let bucket = find(
            &e,
            "sql_service_latency_bucket",
            &[("node_id", "1"), ("le", "+Inf")],
        );
        assert_eq!(bucket.family, "sql_service_latency");
        assert_eq!(bucket.value, 1_582_137.0);
        let buckets = e
            .samples
            .iter()
            .filter(|s| s.family == "sql_service_latency")
            .count();
        assert_eq!(buckets, 10);
        let build = find(
            &e,
            "build_timestamp",
            &[
                ("tag", "v23.1.11"),
                ("go_version", "go1.19.13"),
                ("node_id", "1"),
            ],
        );
        assert_eq!(build.value, 1.6966208e9);
        // `capacity_used` is its own family, not a suffix of `capacity`.
        assert_eq!(
            find(&e, "capacity_used", &[("store", "1"), ("node_id", "1")]).family,
            "capacity_used"
        );

        let m = measurements(&e, &allow(&["sql_service_latency", "ranges_*"]));
        assert_eq!(m.len(), 12);
        assert!(m
            .iter()
            .any(|m| m.metric == "prom.sql_service_latency_count"));
        assert!(m.iter().any(|m| m.metric == "prom.ranges_unavailable"));
        assert!(m.iter().all(|m| m.metric != "prom.ranges"));
    }

    #[test]
    fn histogram_summary_and_counter_suffixes_join_their_family() {
        let e = fixture("histogram_summary_counter.prom");
        assert!(e.problems.is_empty(), "{:?}", e.problems);
        let family = |name: &str| {
            e.samples
                .iter()
                .find(|s| s.name == name)
                .map(|s| s.family.as_str())
                .unwrap_or_else(|| panic!("no {name}"))
        };
        for name in [
            "http_request_duration_seconds_bucket",
            "http_request_duration_seconds_sum",
            "http_request_duration_seconds_count",
            "http_request_duration_seconds_created",
        ] {
            assert_eq!(family(name), "http_request_duration_seconds", "{name}");
        }
        assert_eq!(family("rpc_duration_seconds_sum"), "rpc_duration_seconds");
        assert_eq!(family("requests_created"), "requests_total");
        assert_eq!(family("jobs_total"), "jobs");
        assert_eq!(family("queue_count"), "queue_count");
        let m = measurements(&e, &allow(&["http_request_duration_seconds"]));
        assert_eq!(m.len(), 9);
        assert_eq!(
            m.iter()
                .find(|m| m.labels.get("le").map(String::as_str) == Some("+Inf"))
                .map(|m| m.value),
            Some(144_320.0)
        );
    }

    #[test]
    fn escapes_special_values_timestamps_and_lenient_label_sets() {
        let e = fixture("odd_escapes_and_special_values.prom");
        assert!(e.problems.is_empty(), "{:?}", e.problems);
        let escaped = &e.samples[0];
        assert_eq!(
            escaped.labels,
            labels(&[
                ("path", r"C:\Program Files\x"),
                ("quote", "say \"hi\""),
                ("multi", "line1\nline2"),
                ("odd", r"keep \t as is"),
            ])
        );
        assert!(find(&e, "special", &[("v", "nan")]).value.is_nan());
        assert_eq!(find(&e, "special", &[("v", "pinf")]).value, f64::INFINITY);
        assert_eq!(
            find(&e, "special", &[("v", "ninf")]).value,
            f64::NEG_INFINITY
        );
        assert_eq!(find(&e, "special", &[("v", "exp")]).value, 0.0015);
        assert_eq!(find(&e, "special", &[("v", "EXP")]).value, -2e10);

        let stamped = find(&e, "stamped_total", &[]);
        assert_eq!(stamped.timestamp_ms, Some(1_712_345_678_901));
        assert_eq!(stamped.family, "stamped");
        assert_eq!(
            find(&e, "stamped", &[("spaced", "yes")]).timestamp_ms,
            Some(-5)
        );
        assert_eq!(find(&e, "spaced", &[("a", "1"), ("b", "2")]).value, 3.0);
        assert_eq!(find(&e, "trailing_comma", &[("a", "1")]).value, 4.0);
        assert_eq!(find(&e, "empty_label", &[("b", "x")]).value, 5.0);
        let untyped = find(&e, "no_type_at_all_bucket", &[("le", "1")]);
        assert_eq!(untyped.family, "no_type_at_all_bucket");
        let tabs = find(&e, "with_tabs", &[("a", "1")]);
        assert_eq!((tabs.value, tabs.timestamp_ms), (9.0, Some(1000)));
        assert_eq!(
            e.types.get("with_tabs").map(String::as_str),
            Some("untyped")
        );

        // Non-finite values are not measurements.
        let m = measurements(&e, &allow(&["special"]));
        assert_eq!(m.len(), 3);
    }

    #[test]
    fn garbage_lines_are_reported_and_the_rest_kept() {
        let e = fixture("odd_garbage.prom");
        let names: Vec<&str> = e.samples.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["ok_before", "ok_after"]);
        assert_eq!(e.types.get("ok_before").map(String::as_str), Some("gauge"));
        assert!(!e.types.contains_key("bad_type") && !e.types.contains_key("weird_type"));
        let lines: Vec<&str> = e
            .problems
            .iter()
            .map(|p| p.split(':').next().unwrap_or(""))
            .collect();
        let expect: Vec<String> = (3..=16).chain([18]).map(|n| format!("line {n}")).collect();
        assert_eq!(lines, expect, "{:#?}", e.problems);
        let all = e.problems.join("\n");
        for why in [
            "unexpected text after the type",
            "unknown type \"frobnicator\"",
            "bad metric name",
            "unterminated label value",
            "value missing",
            "bad value",
            "bad timestamp",
            "unexpected text after the timestamp",
            "label a repeated",
            "bad label name",
            "quoted value expected",
            "'=' expected",
            "repeated, first one kept",
        ] {
            assert!(all.contains(why), "{why} not in\n{all}");
        }
    }

    #[test]
    fn crlf_line_ends() {
        let e = fixture("odd_crlf.prom");
        assert!(e.problems.is_empty(), "{:?}", e.problems);
        assert_eq!(e.samples.len(), 2);
        assert_eq!(find(&e, "crlf", &[("a", "c")]).value, 2.0);
        assert_eq!(e.types.get("crlf").map(String::as_str), Some("gauge"));
    }

    #[test]
    fn sample_limit_stops_and_is_noted() {
        let e = parse(b"a 1\nb 2\n# TYPE c gauge\nc 3\nd 4\n", 2);
        assert_eq!(e.samples.len(), 2);
        assert_eq!(
            e.problems,
            ["line 4: stopped after 2 samples, rest ignored"]
        );
        assert_eq!(e.types.len(), 1);
        let none = parse(b"a 1\n", 0);
        assert!(none.samples.is_empty());
        assert_eq!(none.problems.len(), 1);
        // Bad lines past the limit do not matter; bad lines before it do.
        let exact = parse(b"a 1\nb 2\n", 2);
        assert!(exact.problems.is_empty());
    }

    #[test]
    fn problems_are_bounded_and_the_limit_note_survives() {
        let mut text = String::new();
        for i in 0..100 {
            text.push_str(&format!("bad line {i}\n"));
        }
        text.push_str("good 1\ngood 2\n");
        let e = parse(text.as_bytes(), 1);
        assert_eq!(e.problems.len(), MAX_PROBLEMS);
        assert_eq!(e.problems[MAX_PROBLEMS - 2], "82 more problems not listed");
        assert!(e.problems[MAX_PROBLEMS - 1].starts_with("line 102: stopped after 1"));
        assert_eq!(e.samples.len(), 1);
    }

    #[test]
    fn empty_and_blank_input() {
        assert_eq!(parse(b"", 10), Exposition::default());
        assert_eq!(
            parse(b"\n \n\t\n# just a comment\n", 10),
            Exposition::default()
        );
    }

    #[test]
    fn allow_lists_match_exact_names_and_globs() {
        let a = allow(&["go_goroutines", "node_cpu_*", "*_bytes", "a*b*c", "x**y"]);
        for yes in [
            "go_goroutines",
            "node_cpu_seconds_total",
            "node_cpu_",
            "node_memory_MemFree_bytes",
            "abc",
            "a_b_c",
            "abbc",
            "xy",
            "x_y",
        ] {
            assert!(a.allows(yes), "{yes}");
        }
        for no in [
            "go_goroutines_total",
            "go_goroutine",
            "node_cpu",
            "ab",
            "acb",
            "abcd",
            "",
        ] {
            assert!(!a.allows(no), "{no}");
        }
        assert!(allow(&["*"]).allows("anything"));
        assert!(!allow(&[]).allows("anything"));
        assert!(!allow(&[]).allows(""));
        assert!(Allow::new(&["".to_string()]).is_err());
        assert!(Allow::new(&["node cpu".to_string()]).is_err());
        assert!(Allow::new(&["node_cpu_?".to_string()]).is_err());
        assert!(measurements(&fixture("cockroach_status_vars.prom"), &allow(&[])).is_empty());
    }

    #[test]
    fn values_parse_like_go() {
        for (token, value) in [
            ("1", 1.0),
            ("-1.5e3", -1500.0),
            (".5", 0.5),
            ("+Inf", f64::INFINITY),
            ("-Inf", f64::NEG_INFINITY),
            ("inf", f64::INFINITY),
            ("1E-2", 0.01),
        ] {
            assert_eq!(parse_value(token), Some(value), "{token}");
        }
        assert!(parse_value("NaN").is_some_and(f64::is_nan));
        for bad in ["", "one", "1,5", "0x10", "1e", "--1"] {
            assert_eq!(parse_value(bad), None, "{bad}");
        }
    }

    /// Random mutations of the fixtures and random bytes: the parser never panics
    /// and its bounds hold.
    #[test]
    fn random_input_never_panics() {
        const ROUNDS: usize = 400;
        const ALPHABET: &[u8] = b"{}=\",\\# \t\n\r_:aZ09.eE+-InfNaT\xff\xc3";
        let mut rng = rand::rng();
        let mut seeds: Vec<Vec<u8>> = Vec::new();
        for entry in std::fs::read_dir(fixture_dir()).expect("fixture dir") {
            seeds.push(std::fs::read(entry.expect("entry").path()).expect("read"));
        }
        for round in 0..ROUNDS {
            let mut input = if round % 4 == 0 {
                let len = rng.random_range(0..400);
                (0..len).map(|_| rng.random::<u8>()).collect()
            } else {
                seeds[rng.random_range(0..seeds.len())].clone()
            };
            for _ in 0..rng.random_range(0..30) {
                let at = rng.random_range(0..=input.len());
                let byte = ALPHABET[rng.random_range(0..ALPHABET.len())];
                match rng.random_range(0..3) {
                    0 => input.insert(at, byte),
                    1 if at < input.len() => {
                        input.remove(at);
                    }
                    _ if at < input.len() => input[at] = byte,
                    _ => input.push(byte),
                }
            }
            let max = rng.random_range(0..300);
            let e = parse(&input, max);
            assert!(e.samples.len() <= max);
            assert!(e.problems.len() <= MAX_PROBLEMS);
            let m = measurements(&e, &allow(&["*"]));
            assert!(m
                .iter()
                .all(|m| m.value.is_finite() && m.metric.starts_with(METRIC_PREFIX)));
        }
    }
}
