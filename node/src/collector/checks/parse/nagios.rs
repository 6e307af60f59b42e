//! Nagios plugin output: an exit code for the state, a status line, long text and
//! performance data (<https://nagios-plugins.org/doc/guidelines.html#AEN200>).
//!
//! ```text
//! TEXT OUTPUT | OPTIONAL PERFDATA
//! LONG TEXT LINE 1
//! LONG TEXT LINE N | PERFDATA LINE 2
//! PERFDATA LINE 3
//! ```
//!
//! Plugins are written by everyone and the convention is loosely followed, so the
//! parser never fails: what it cannot read is named in `problems` and the rest is kept.

use crate::model::text::{prefix_bytes, prefix_chars, quote_excerpt};
use crate::model::{Labels, Measurement};

/// Longest status line kept, in characters: it is shown in one line of a table.
const MAX_TEXT_CHARS: usize = 1024;
/// Longest long text kept, in bytes: enough for a listing, bounded per scrape.
const MAX_LONG_TEXT_BYTES: usize = 8 * 1024;
/// Perfdata items beyond this many are ignored: each becomes up to five series.
const MAX_PERF_ITEMS: usize = 256;
/// Problems kept in full; a summary line may follow them.
const MAX_PROBLEMS: usize = 20;
/// How much of an offending item a problem quotes.
const MAX_QUOTED_CHARS: usize = 60;
/// An unknown UOM is kept as written, but only if it looks like a unit.
const MAX_UOM_CHARS: usize = 16;
/// The value plugins write when they could not measure.
const UNKNOWN_VALUE: &str = "U";

const METRIC_STATUS: &str = "command.status";
const METRIC_PERF: &str = "command.perf";
const METRIC_PERF_WARN: &str = "command.perf_warn";
const METRIC_PERF_CRIT: &str = "command.perf_crit";
const METRIC_PERF_MIN: &str = "command.perf_min";
const METRIC_PERF_MAX: &str = "command.perf_max";

/// The service state a plugin reports through its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginStatus {
    Ok,
    Warning,
    Critical,
    Unknown,
}

impl PluginStatus {
    /// 0..=3 map to their states; any other code, or none (killed by a signal), is
    /// Unknown, as Nagios itself treats it.
    pub fn from_exit(code: Option<u32>) -> Self {
        match code {
            Some(0) => PluginStatus::Ok,
            Some(1) => PluginStatus::Warning,
            Some(2) => PluginStatus::Critical,
            _ => PluginStatus::Unknown,
        }
    }

    /// The conventional numeric state, 0..=3.
    pub fn code(self) -> u8 {
        match self {
            PluginStatus::Ok => 0,
            PluginStatus::Warning => 1,
            PluginStatus::Critical => 2,
            PluginStatus::Unknown => 3,
        }
    }

    /// Stable lower-case name; scripts match on it.
    #[cfg(test)]
    pub fn as_str(self) -> &'static str {
        match self {
            PluginStatus::Ok => "ok",
            PluginStatus::Warning => "warning",
            PluginStatus::Critical => "critical",
            PluginStatus::Unknown => "unknown",
        }
    }
}

/// One perfdata item: `'label'=value[UOM];[warn];[crit];[min];[max]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PerfData {
    pub label: String,
    pub value: f64,
    /// As written; empty when the value has no unit.
    pub uom: String,
    /// Thresholds are ranges (`10:20`, `~:5`, `@10:20`), so they are kept as written.
    pub warn: Option<String>,
    pub crit: Option<String>,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

/// Everything one plugin run said.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginOutput {
    pub status: PluginStatus,
    /// The first line without its perfdata, trimmed, at most `MAX_TEXT_CHARS`.
    pub text: String,
    /// The following lines up to the perfdata, at most `MAX_LONG_TEXT_BYTES`.
    pub long_text: String,
    pub perfdata: Vec<PerfData>,
    /// What could not be read, each naming the item.
    pub problems: Vec<String>,
}

/// Reads one plugin run. Never fails: output is split into text and perfdata as far
/// as possible and whatever cannot be read is listed in `problems`.
pub fn parse(stdout: &[u8], exit_code: Option<u32>) -> PluginOutput {
    let raw = String::from_utf8_lossy(stdout);
    let mut lines = raw
        .split('\n')
        .map(|line| line.strip_suffix('\r').unwrap_or(line));

    let first = lines.next().unwrap_or("");
    let (first_text, first_perf) = split_perf(first);
    let mut perf_chunks: Vec<&str> = first_perf.into_iter().collect();

    // Long text runs until a line carrying `|`; from there on every line is perfdata.
    let mut long_lines: Vec<&str> = Vec::new();
    let mut in_perf = false;
    for line in lines {
        if in_perf {
            perf_chunks.push(line);
            continue;
        }
        let (text, perf) = split_perf(line);
        long_lines.push(text);
        if let Some(perf) = perf {
            perf_chunks.push(perf);
            in_perf = true;
        }
    }

    let mut problems = Problems::default();
    let perfdata = parse_perfdata(&perf_chunks, &mut problems);

    let text = prefix_chars(&clean(first_text), MAX_TEXT_CHARS)
        .trim()
        .to_string();
    let long_text: Vec<String> = long_lines
        .iter()
        .map(|line| clean(line).trim_end().to_string())
        .collect();
    let long_text = prefix_bytes(long_text.join("\n").trim(), MAX_LONG_TEXT_BYTES)
        .trim_end()
        .to_string();

    PluginOutput {
        status: PluginStatus::from_exit(exit_code),
        text,
        long_text,
        perfdata,
        problems: problems.finish(),
    }
}

/// Measurements of one command check: `command.status` always, and per perfdata item
/// `command.perf` plus its thresholds (when plain numbers) and bounds (when present).
/// Every series of an item carries `label` and, when it has one, `uom`.
pub fn measurements(out: &PluginOutput) -> Vec<Measurement> {
    let mut result = vec![Measurement::new(
        METRIC_STATUS,
        f64::from(out.status.code()),
    )];
    for perf in &out.perfdata {
        let mut labels = Labels::new();
        labels.insert("label".to_string(), perf.label.clone());
        if !perf.uom.is_empty() {
            labels.insert("uom".to_string(), perf.uom.clone());
        }
        let series = [
            (METRIC_PERF, Some(perf.value)),
            (
                METRIC_PERF_WARN,
                threshold_number(perf.warn.as_deref(), &perf.uom),
            ),
            (
                METRIC_PERF_CRIT,
                threshold_number(perf.crit.as_deref(), &perf.uom),
            ),
            (METRIC_PERF_MIN, perf.min),
            (METRIC_PERF_MAX, perf.max),
        ];
        for (metric, value) in series {
            if let Some(value) = value {
                result.push(Measurement {
                    metric: metric.to_string(),
                    labels: labels.clone(),
                    value,
                });
            }
        }
    }
    result
}

/// A threshold that is a plain number (not a range) as a value.
fn threshold_number(threshold: Option<&str>, uom: &str) -> Option<f64> {
    threshold.and_then(|t| plain_number(t, uom))
}

/// Splits a line at its first `|` into text and perfdata.
fn split_perf(line: &str) -> (&str, Option<&str>) {
    match line.split_once('|') {
        Some((text, perf)) => (text, Some(perf)),
        None => (line, None),
    }
}

/// Drops control characters (escape sequences, NULs from binary junk) that would
/// garble whatever displays the text; tabs become spaces.
fn clean(s: &str) -> String {
    s.chars()
        .filter_map(|c| match c {
            '\t' => Some(' '),
            c if c.is_control() => None,
            c => Some(c),
        })
        .collect()
}

/// Problems, bounded so junk output cannot produce an unbounded list.
#[derive(Default)]
struct Problems {
    kept: Vec<String>,
    dropped: usize,
}

impl Problems {
    fn push(&mut self, problem: String) {
        // One slot is reserved for the summary of the dropped ones.
        if self.kept.len() < MAX_PROBLEMS - 1 {
            self.kept.push(problem);
        } else {
            self.dropped += 1;
        }
    }

    fn finish(mut self) -> Vec<String> {
        if self.dropped > 0 {
            self.kept
                .push(format!("{} more problems not listed", self.dropped));
        }
        self.kept
    }
}

fn parse_perfdata(chunks: &[&str], problems: &mut Problems) -> Vec<PerfData> {
    let mut items: Vec<PerfData> = Vec::new();
    let mut ignored = 0usize;
    for chunk in chunks {
        let mut tokens = Tokens { rest: chunk };
        while let Some(token) = tokens.next_item() {
            let item = match token {
                Ok(raw) => match parse_item(raw.label, raw.data, problems) {
                    Some(item) => item,
                    None => continue,
                },
                Err(problem) => {
                    problems.push(problem);
                    continue;
                }
            };
            if items.iter().any(|seen| seen.label == item.label) {
                // Two series with the same labels at the same time would collide.
                problems.push(format!(
                    "perfdata {}: duplicate label, later item ignored",
                    quote_excerpt(&item.label, MAX_QUOTED_CHARS)
                ));
            } else if items.len() >= MAX_PERF_ITEMS {
                ignored += 1;
            } else {
                items.push(item);
            }
        }
    }
    if ignored > 0 {
        problems.push(format!(
            "{ignored} perfdata items beyond the first {MAX_PERF_ITEMS} ignored"
        ));
    }
    items
}

/// One `label=data` item as it appears, before its data is read.
struct RawItem<'a> {
    label: String,
    data: &'a str,
}

/// Splits a perfdata string into items. Items are separated by white space; a label
/// in single quotes may hold spaces and `=`, and writes a quote as two quotes.
struct Tokens<'a> {
    rest: &'a str,
}

impl<'a> Tokens<'a> {
    /// The next item, an error naming an unreadable one, or None at the end.
    fn next_item(&mut self) -> Option<Result<RawItem<'a>, String>> {
        self.rest = self.rest.trim_start();
        if self.rest.is_empty() {
            return None;
        }
        Some(match self.rest.strip_prefix('\'') {
            Some(quoted) => self.quoted_item(quoted),
            None => self.plain_item(),
        })
    }

    /// Takes everything up to the next white space as the item's data.
    fn take_data(&mut self, from: &'a str) -> &'a str {
        let end = from.find(char::is_whitespace).unwrap_or(from.len());
        let (data, rest) = from.split_at(end);
        self.rest = rest;
        data
    }

    fn plain_item(&mut self) -> Result<RawItem<'a>, String> {
        let token = self.take_data(self.rest);
        match token.split_once('=') {
            Some(("", _)) => Err(format!(
                "perfdata {}: empty label",
                quote_excerpt(token, MAX_QUOTED_CHARS)
            )),
            Some((label, data)) => Ok(RawItem {
                label: label.to_string(),
                data,
            }),
            None => Err(format!(
                "perfdata {}: no '=' in item",
                quote_excerpt(token, MAX_QUOTED_CHARS)
            )),
        }
    }

    /// `quoted` follows the opening quote.
    fn quoted_item(&mut self, quoted: &'a str) -> Result<RawItem<'a>, String> {
        let mut label = String::new();
        let mut chars = quoted.char_indices();
        while let Some((i, c)) = chars.next() {
            if c != '\'' {
                label.push(c);
                continue;
            }
            let after = quoted.get(i + 1..).unwrap_or("");
            if after.starts_with('\'') {
                // A doubled quote is a literal one.
                label.push('\'');
                chars.next();
                continue;
            }
            let Some(data) = after.strip_prefix('=') else {
                let token = self.take_data(after);
                return Err(format!(
                    "perfdata {}: no '=' after quoted label",
                    quote_excerpt(&format!("'{label}'{token}"), MAX_QUOTED_CHARS)
                ));
            };
            let data = self.take_data(data);
            if label.is_empty() {
                return Err(format!(
                    "perfdata {}: empty label",
                    quote_excerpt(data, MAX_QUOTED_CHARS)
                ));
            }
            return Ok(RawItem { label, data });
        }
        // No closing quote: resume at the next white space so that later items
        // are still read.
        let token = self.take_data(self.rest);
        Err(format!(
            "perfdata {}: unterminated quote",
            quote_excerpt(token, MAX_QUOTED_CHARS)
        ))
    }
}

/// Reads `value[UOM];[warn];[crit];[min];[max]`. Fields beyond max are ignored.
fn parse_item(label: String, data: &str, problems: &mut Problems) -> Option<PerfData> {
    let mut fields = data.split(';');
    let value_field = fields.next().unwrap_or("").trim();
    if value_field == UNKNOWN_VALUE {
        problems.push(format!(
            "perfdata {}: value is U (not measured), skipped",
            quote_excerpt(&label, MAX_QUOTED_CHARS)
        ));
        return None;
    }
    let Some((value, uom)) = split_number(value_field) else {
        problems.push(format!(
            "perfdata {}: value {} is not a number",
            quote_excerpt(&label, MAX_QUOTED_CHARS),
            quote_excerpt(value_field, MAX_QUOTED_CHARS)
        ));
        return None;
    };
    if !is_uom(uom) {
        problems.push(format!(
            "perfdata {}: value {} has an unreadable unit",
            quote_excerpt(&label, MAX_QUOTED_CHARS),
            quote_excerpt(value_field, MAX_QUOTED_CHARS)
        ));
        return None;
    }
    let mut next_text = || {
        fields
            .next()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let warn = next_text();
    let crit = next_text();
    let min_text = next_text();
    let max_text = next_text();
    let mut bound = |name: &str, text: Option<String>| -> Option<f64> {
        let text = text?;
        let number = plain_number(&text, uom);
        if number.is_none() {
            problems.push(format!(
                "perfdata {}: {name} {} is not a number",
                quote_excerpt(&label, MAX_QUOTED_CHARS),
                quote_excerpt(&text, MAX_QUOTED_CHARS)
            ));
        }
        number
    };
    let min = bound("min", min_text);
    let max = bound("max", max_text);
    Some(PerfData {
        label,
        value,
        uom: uom.to_string(),
        warn,
        crit,
        min,
        max,
    })
}

/// A unit is what follows the number: the standard ones (s, ms, us, %, B, KB, MB,
/// TB, c) and whatever else plugins write, as long as it is short, printable and
/// does not look like the remains of a malformed number.
fn is_uom(uom: &str) -> bool {
    let Some(first) = uom.chars().next() else {
        return true;
    };
    !(first.is_ascii_digit() || matches!(first, '.' | ',' | '+' | '-'))
        && uom.chars().count() <= MAX_UOM_CHARS
        && !uom.chars().any(|c| c.is_control() || c.is_whitespace())
}

/// A number alone, or followed by the item's own unit (some plugins repeat it).
fn plain_number(text: &str, uom: &str) -> Option<f64> {
    let (number, rest) = split_number(text.trim())?;
    (rest.is_empty() || rest == uom).then_some(number)
}

/// Splits a leading decimal number off `s`. A decimal comma is taken as a point:
/// plugins formatting with the C library under a non-English locale write one.
fn split_number(s: &str) -> Option<(f64, &str)> {
    let bytes = s.as_bytes();
    let digits_from = |mut i: usize| {
        while bytes.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        i
    };
    let mut end = usize::from(matches!(bytes.first(), Some(b'+' | b'-')));
    let int_end = digits_from(end);
    let mut has_digits = int_end > end;
    end = int_end;
    if matches!(bytes.get(end), Some(b'.' | b',')) {
        let frac_end = digits_from(end + 1);
        has_digits |= frac_end > end + 1;
        end = frac_end;
    }
    if !has_digits {
        return None;
    }
    if matches!(bytes.get(end), Some(b'e' | b'E')) {
        let sign = usize::from(matches!(bytes.get(end + 1), Some(b'+' | b'-')));
        let exp_end = digits_from(end + 1 + sign);
        // Without digits the `e` is not an exponent but the start of a unit.
        if exp_end > end + 1 + sign {
            end = exp_end;
        }
    }
    let (number, rest) = (s.get(..end)?, s.get(end..)?);
    let value: f64 = number.replace(',', ".").parse().ok()?;
    value.is_finite().then_some((value, rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;
    use std::path::PathBuf;

    fn fixture_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/collector/checks/parse/fixtures/nagios")
    }

    /// A fixture is `exit=N` on the first line, then the plugin's stdout byte for byte.
    fn split_fixture(bytes: &[u8]) -> (Option<u32>, &[u8]) {
        let newline = bytes.iter().position(|&b| b == b'\n').expect("header line");
        let header = std::str::from_utf8(&bytes[..newline]).expect("utf-8 header");
        let code = header
            .trim()
            .strip_prefix("exit=")
            .expect("exit= header")
            .parse()
            .expect("exit code");
        (Some(code), &bytes[newline + 1..])
    }

    fn fixture(name: &str) -> PluginOutput {
        let bytes = std::fs::read(fixture_dir().join(name)).expect("fixture");
        let (code, stdout) = split_fixture(&bytes);
        parse(stdout, code)
    }

    fn perf<'a>(out: &'a PluginOutput, label: &str) -> &'a PerfData {
        out.perfdata
            .iter()
            .find(|p| p.label == label)
            .unwrap_or_else(|| panic!("no perfdata {label:?} in {out:#?}"))
    }

    fn labels(out: &PluginOutput) -> Vec<&str> {
        out.perfdata.iter().map(|p| p.label.as_str()).collect()
    }

    #[test]
    fn exit_codes_map_to_states() {
        let cases = [
            (Some(0), PluginStatus::Ok, "ok"),
            (Some(1), PluginStatus::Warning, "warning"),
            (Some(2), PluginStatus::Critical, "critical"),
            (Some(3), PluginStatus::Unknown, "unknown"),
            (Some(4), PluginStatus::Unknown, "unknown"),
            (Some(255), PluginStatus::Unknown, "unknown"),
            (None, PluginStatus::Unknown, "unknown"),
        ];
        for (code, status, name) in cases {
            let got = PluginStatus::from_exit(code);
            assert_eq!(got, status, "{code:?}");
            assert_eq!(got.as_str(), name);
            assert_eq!(PluginStatus::from_exit(Some(u32::from(got.code()))), got);
        }
    }

    #[test]
    fn every_real_capture_parses_cleanly() {
        let mut seen = 0;
        for entry in std::fs::read_dir(fixture_dir()).expect("fixture dir") {
            let path = entry.expect("entry").path();
            let name = path.file_name().and_then(|n| n.to_str()).expect("name");
            if !name.starts_with("check_") {
                continue;
            }
            seen += 1;
            let out = fixture(name);
            // A usage message is not plugin output; its `|` yields junk perfdata.
            if !name.contains("usage_error") {
                assert!(out.problems.is_empty(), "{name}: {:?}", out.problems);
            }
            assert!(!out.text.is_empty(), "{name}");
            let m = measurements(&out);
            assert_eq!(m[0].metric, METRIC_STATUS, "{name}");
            assert_eq!(m[0].value, f64::from(out.status.code()), "{name}");
            assert!(m.iter().all(|m| m.value.is_finite()), "{name}");
        }
        assert!(seen >= 15, "only {seen} real captures");
    }

    #[test]
    fn check_disk_ok() {
        let out = fixture("check_disk_ok.txt");
        assert_eq!(out.status, PluginStatus::Ok);
        assert!(
            out.text.starts_with("DISK OK - free space: / "),
            "{}",
            out.text
        );
        assert!(out.text.ends_with(';'), "{}", out.text);
        assert_eq!(out.long_text, "");
        assert_eq!(labels(&out), ["/"]);
        let root = perf(&out, "/");
        assert_eq!(root.uom, "B");
        assert_eq!(root.warn.as_deref(), Some("216442024755"));
        assert_eq!(root.crit.as_deref(), Some("243497277849"));
        assert_eq!(root.min, Some(0.0));
        assert_eq!(root.max, Some(270552530944.0));
        assert!(root.value > 0.0 && root.value < 270552530944.0);
    }

    #[test]
    fn check_disk_states_follow_the_exit_code() {
        assert_eq!(
            fixture("check_disk_critical.txt").status,
            PluginStatus::Critical
        );
        assert_eq!(
            fixture("check_disk_warning_mb.txt").status,
            PluginStatus::Warning
        );
    }

    #[test]
    fn check_load_with_trailing_space_and_empty_max() {
        let out = fixture("check_load_ok.txt");
        assert_eq!(out.status, PluginStatus::Ok);
        assert!(out.text.starts_with("LOAD OK - total load average: "));
        assert_eq!(labels(&out), ["load1", "load5", "load15"]);
        let load5 = perf(&out, "load5");
        assert_eq!(load5.uom, "");
        assert_eq!(load5.warn.as_deref(), Some("4.000"));
        assert_eq!(load5.crit.as_deref(), Some("8.000"));
        assert_eq!(load5.min, Some(0.0));
        assert_eq!(load5.max, None);

        let scaled = fixture("check_load_scaled.txt");
        assert_eq!(scaled.perfdata.len(), 6);
        let load1 = perf(&scaled, "load1");
        assert_eq!((load1.warn.as_deref(), load1.crit.as_deref()), (None, None));
        assert_eq!(perf(&scaled, "scaled_load1").warn.as_deref(), Some("5.000"));
    }

    #[test]
    fn check_procs_plain_ranges_and_rss() {
        let out = fixture("check_procs_ok.txt");
        assert_eq!(out.text.split(':').next(), Some("PROCS OK"));
        assert_eq!(perf(&out, "procs").warn.as_deref(), Some("250"));

        let ranged = fixture("check_procs_range_critical.txt");
        assert_eq!(ranged.status, PluginStatus::Critical);
        let procs = perf(&ranged, "procs");
        assert_eq!(procs.value, 0.0);
        assert_eq!(procs.warn.as_deref(), Some("1:1"));
        assert_eq!(procs.crit.as_deref(), Some("1:1"));
        // Ranges are not plain numbers: no threshold series.
        let m = measurements(&ranged);
        assert!(m.iter().all(|m| m.metric != METRIC_PERF_WARN));

        let rss = fixture("check_procs_rss.txt");
        assert_eq!(labels(&rss), ["procs", "procs_warn", "procs_crit"]);
    }

    #[test]
    fn check_users_swap_file_age() {
        let users = fixture("check_users_ok.txt");
        assert_eq!(perf(&users, "users").min, Some(0.0));

        let swap = fixture("check_swap_none.txt");
        assert_eq!(swap.status, PluginStatus::Critical);
        let s = perf(&swap, "swap");
        assert_eq!((s.value, s.uom.as_str(), s.max), (0.0, "B", Some(0.0)));

        let age = fixture("check_file_age_critical.txt");
        assert_eq!(perf(&age, "age").uom, "s");
        assert_eq!(perf(&age, "age").min, None);
        assert_eq!(perf(&age, "size").uom, "B");
    }

    #[test]
    fn check_tcp_http_ping_icmp_units() {
        let refused = fixture("check_tcp_refused.txt");
        assert_eq!(refused.status, PluginStatus::Critical);
        assert_eq!(
            refused.text,
            "connect to address 127.0.0.1 and port 1: Connection refused"
        );
        assert!(refused.perfdata.is_empty());

        let tcp = fixture("check_tcp_ok.txt");
        let time = perf(&tcp, "time");
        assert_eq!(time.uom, "s");
        assert_eq!((time.min, time.max), (Some(0.0), Some(10.0)));

        let http = fixture("check_http_404.txt");
        assert_eq!(http.status, PluginStatus::Warning);
        assert_eq!(labels(&http), ["time", "size"]);

        let ping = fixture("check_ping_localhost.txt");
        assert_eq!(perf(&ping, "rta").uom, "ms");
        assert_eq!(perf(&ping, "pl").uom, "%");
        assert_eq!(perf(&ping, "pl").warn.as_deref(), Some("20"));

        let icmp = fixture("check_icmp_localhost.txt");
        assert_eq!(labels(&icmp), ["rta", "pl", "rtmax", "rtmin"]);
        assert_eq!(perf(&icmp, "rtmax").min, None);
    }

    #[test]
    fn usage_errors_keep_the_first_line_and_the_rest_as_long_text() {
        let out = fixture("check_disk_usage_error.txt");
        assert_eq!(out.status, PluginStatus::Unknown);
        assert_eq!(out.text, "Unknown argument");
        assert!(out.long_text.starts_with("Usage:\n"), "{}", out.long_text);
        // The usage lines contain `|` (alternatives): everything after it is read as
        // perfdata and does not parse, which is reported, not fatal.
        assert!(out.perfdata.is_empty());
        assert!(!out.problems.is_empty());
        assert_eq!(fixture("check_dummy_unknown.txt").text, "UNKNOWN: hello");
    }

    #[test]
    fn quoted_labels_with_spaces_equals_and_doubled_quotes() {
        let out = fixture("odd_quoted_labels.txt");
        assert!(out.problems.is_empty(), "{:?}", out.problems);
        assert_eq!(out.text, r"DISK WARNING - C:\ is filling up");
        assert_eq!(
            labels(&out),
            [
                r"C:\ Label: used space",
                "it's = odd",
                "with  two  spaces",
                "plain"
            ]
        );
        let used = perf(&out, r"C:\ Label: used space");
        assert_eq!((used.value, used.uom.as_str()), (12.0, "GB"));
        assert_eq!(used.max, Some(40.0));
        assert_eq!(perf(&out, "with  two  spaces").uom, "c");
    }

    #[test]
    fn multiline_perfdata_is_concatenated() {
        let out = fixture("odd_multiline_perfdata.txt");
        assert!(out.problems.is_empty(), "{:?}", out.problems);
        assert_eq!(out.text, "DISK OK - free space: / 3326 MB (56%);");
        assert_eq!(
            out.long_text,
            "/ 15272 MB (77%);\n/boot 68 MB (69%);\n/home 69357 MB (27%);\n/var/log 819 MB (84%);"
        );
        assert_eq!(labels(&out), ["/", "/boot", "/home", "/var/log"]);
        assert_eq!(perf(&out, "/var/log").max, Some(980.0));
    }

    #[test]
    fn unknown_values_are_skipped_with_a_note() {
        let out = fixture("odd_unknown_values.txt");
        assert_eq!(labels(&out), ["load5"]);
        assert_eq!(out.problems.len(), 2, "{:?}", out.problems);
        assert!(out.problems[0].contains("load1"), "{:?}", out.problems);
        assert!(out.problems[1].contains("load15"), "{:?}", out.problems);
    }

    #[test]
    fn decimal_commas_are_accepted() {
        let out = fixture("odd_decimal_comma.txt");
        assert!(out.problems.is_empty(), "{:?}", out.problems);
        let temp = perf(&out, "temp");
        assert_eq!((temp.value, temp.uom.as_str()), (23.5, "C"));
        assert_eq!(temp.warn.as_deref(), Some("30,0"));
        let hum = perf(&out, "humidity");
        assert_eq!(hum.value, 41.25);
        assert_eq!(hum.warn.as_deref(), Some("~:80"));
        assert_eq!(hum.crit.as_deref(), Some("@90:100"));
        let m = measurements(&out);
        let warn: Vec<f64> = m
            .iter()
            .filter(|m| m.metric == METRIC_PERF_WARN)
            .map(|m| m.value)
            .collect();
        assert_eq!(warn, [30.0]);
        assert!(m
            .iter()
            .any(|m| m.metric == METRIC_PERF_CRIT && m.value == 40.5));
    }

    #[test]
    fn missing_perfdata_and_empty_output() {
        let out = fixture("odd_no_perfdata.txt");
        assert_eq!(out.text, "OK - all services running");
        assert_eq!(out.long_text, "second line of detail\nthird line of detail");
        assert!(out.perfdata.is_empty() && out.problems.is_empty());
        assert_eq!(measurements(&out).len(), 1);

        let empty = fixture("odd_empty.txt");
        assert_eq!(empty.status, PluginStatus::Ok);
        assert_eq!((empty.text.as_str(), empty.long_text.as_str()), ("", ""));
        assert!(empty.perfdata.is_empty() && empty.problems.is_empty());

        let nothing = parse(b"", None);
        assert_eq!(nothing.status, PluginStatus::Unknown);
        assert_eq!(
            measurements(&nothing),
            [Measurement::new(METRIC_STATUS, 3.0)]
        );
    }

    #[test]
    fn crlf_line_ends_are_stripped() {
        let out = fixture("odd_crlf.txt");
        assert_eq!(out.status, PluginStatus::Warning);
        assert_eq!(out.text, "WARNING - from a Windows agent");
        assert_eq!(out.long_text, "CPU 0 at 93%");
        assert_eq!(perf(&out, "cpu").max, Some(100.0));
        assert!(out.problems.is_empty(), "{:?}", out.problems);
    }

    #[test]
    fn ranges_and_units_seen_in_the_wild() {
        let out = fixture("odd_ranges_and_uoms.txt");
        assert!(out.problems.is_empty(), "{:?}", out.problems);
        let uoms: Vec<&str> = out.perfdata.iter().map(|p| p.uom.as_str()).collect();
        assert_eq!(
            uoms,
            ["s", "ms", "us", "KB", "MB", "TB", "B/s", "rpm", "", ""]
        );
        assert_eq!(perf(&out, "a").crit.as_deref(), Some("@10:20"));
        assert_eq!(perf(&out, "b").warn.as_deref(), Some("~:5"));
        assert_eq!(perf(&out, "b").crit.as_deref(), Some("5:"));
        assert_eq!(perf(&out, "b").max, Some(1000.0));
        assert_eq!(perf(&out, "i").value, -0.0025);
        assert_eq!(perf(&out, "j").value, 9.0);
        assert_eq!(perf(&out, "e").warn, None);
    }

    #[test]
    fn broken_items_are_named_and_the_rest_kept() {
        let out = fixture("odd_broken_items.txt");
        assert_eq!(labels(&out), ["good", "bad_min", "dup", "ok2"]);
        assert_eq!(perf(&out, "dup").value, 1.0);
        assert_eq!(perf(&out, "bad_min").min, None);
        assert_eq!(perf(&out, "bad_min").max, Some(10.0));
        let all = out.problems.join("\n");
        for named in [
            "empty label",
            "novalue",
            "abc",
            "lonely",
            "unterminated",
            "zero",
            "duplicate",
            "weird",
        ] {
            assert!(all.contains(named), "{named} not in\n{all}");
        }
    }

    #[test]
    fn binary_junk_is_survived_and_cleaned() {
        let out = fixture("odd_binary_junk.txt");
        assert_eq!(out.status, PluginStatus::Critical);
        assert!(
            out.text.starts_with("\u{fffd}\u{fffd}CRITICAL [31mred[0m"),
            "{}",
            out.text
        );
        for s in [&out.text, &out.long_text] {
            assert!(!s.chars().any(|c| c.is_control() && c != '\n'), "{s:?}");
        }
        assert!(out.problems.len() <= MAX_PROBLEMS);
    }

    #[test]
    fn measurements_carry_label_uom_thresholds_and_bounds() {
        let out = parse(b"OK|'a b'=1.5ms;2;3:4;0;10 n=7;;;;\n", Some(0));
        let m = measurements(&out);
        let ab = Labels::from([
            ("label".to_string(), "a b".to_string()),
            ("uom".to_string(), "ms".to_string()),
        ]);
        let n = Labels::from([("label".to_string(), "n".to_string())]);
        let expect = vec![
            Measurement::new(METRIC_STATUS, 0.0),
            Measurement {
                metric: METRIC_PERF.into(),
                labels: ab.clone(),
                value: 1.5,
            },
            Measurement {
                metric: METRIC_PERF_WARN.into(),
                labels: ab.clone(),
                value: 2.0,
            },
            Measurement {
                metric: METRIC_PERF_MIN.into(),
                labels: ab.clone(),
                value: 0.0,
            },
            Measurement {
                metric: METRIC_PERF_MAX.into(),
                labels: ab,
                value: 10.0,
            },
            Measurement {
                metric: METRIC_PERF.into(),
                labels: n,
                value: 7.0,
            },
        ];
        assert_eq!(m, expect);
    }

    #[test]
    fn long_fields_are_bounded() {
        let mut input = "é".repeat(3 * MAX_TEXT_CHARS);
        input.push('\n');
        input.push_str(&"ü".repeat(MAX_LONG_TEXT_BYTES));
        input.push_str(" |");
        for i in 0..(MAX_PERF_ITEMS + 10) {
            input.push_str(&format!(" x{i}=1"));
        }
        for _ in 0..100 {
            input.push_str(" junk");
        }
        let out = parse(input.as_bytes(), Some(0));
        assert_eq!(out.text.chars().count(), MAX_TEXT_CHARS);
        assert!(out.long_text.len() <= MAX_LONG_TEXT_BYTES);
        assert!(out.long_text.len() > MAX_LONG_TEXT_BYTES - 4);
        assert_eq!(out.perfdata.len(), MAX_PERF_ITEMS);
        assert_eq!(out.problems.len(), MAX_PROBLEMS);
        assert!(out.problems[MAX_PROBLEMS - 1].contains("more problems"));
    }

    #[test]
    fn numbers_split_from_units() {
        assert_eq!(split_number("1.5ms"), Some((1.5, "ms")));
        assert_eq!(split_number("-.5"), Some((-0.5, "")));
        assert_eq!(split_number("5."), Some((5.0, "")));
        assert_eq!(split_number("2e3B"), Some((2000.0, "B")));
        assert_eq!(split_number("2e"), Some((2.0, "e")));
        assert_eq!(split_number("3,25%"), Some((3.25, "%")));
        assert_eq!(split_number("1e999"), None);
        for bad in ["", "-", ".", "U", "abc", "~:5", "@1"] {
            assert_eq!(split_number(bad), None, "{bad}");
        }
        assert_eq!(plain_number("10:20", ""), None);
        assert_eq!(plain_number("100ms", "ms"), Some(100.0));
        assert_eq!(plain_number("100s", "ms"), None);
    }

    /// Random mutations of the fixtures and random bytes: the parser never panics
    /// and its bounds hold.
    #[test]
    fn random_input_never_panics() {
        const ROUNDS: usize = 3000;
        const ALPHABET: &[u8] = b"'=;|: \n\r\t,.-+eEU%~@0123456789abcms\xff\xc3";
        let mut rng = rand::rng();
        let mut seeds: Vec<Vec<u8>> = Vec::new();
        for entry in std::fs::read_dir(fixture_dir()).expect("fixture dir") {
            let bytes = std::fs::read(entry.expect("entry").path()).expect("read");
            seeds.push(split_fixture(&bytes).1.to_vec());
        }
        for round in 0..ROUNDS {
            let mut input = if round % 4 == 0 {
                let len = rng.random_range(0..200);
                (0..len).map(|_| rng.random::<u8>()).collect()
            } else {
                seeds[rng.random_range(0..seeds.len())].clone()
            };
            for _ in 0..rng.random_range(0..8) {
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
            let code = rng.random_range(0..6);
            let out = parse(&input, (code < 5).then_some(code));
            assert!(out.text.chars().count() <= MAX_TEXT_CHARS);
            assert!(out.long_text.len() <= MAX_LONG_TEXT_BYTES);
            assert!(out.problems.len() <= MAX_PROBLEMS);
            let m = measurements(&out);
            assert!(m.iter().all(|m| m.value.is_finite()), "{m:?}");
        }
    }
}
