//! nginx: the `stub_status` page and access logs in any `log_format`.
//!
//! Two independent halves:
//! - [`parse_stub_status`] reads the page of `ngx_http_stub_status_module`
//!   and [`StubState`] turns two consecutive pages into per-second rates.
//! - [`LogFormat`] compiles an nginx `log_format` string into a regex that
//!   reads the lines it produces into [`AccessRecord`]s, and [`AccessStats`]
//!   sums one scrape window's records into [`Measurement`]s.
//!
//! Decisions worth knowing:
//! - **stub_status is read by tokens**, not by line layout: the page's
//!   trailing spaces, CRLF from a proxy in between or a forked server's extra
//!   header columns (Tengine adds `request_time`) must not matter, while a
//!   missing or non-numeric field is an error naming it.
//! - **Counter resets** (nginx restarted; a reload keeps the counters, they
//!   live in shared memory) are seen as a counter going down: the scrape then
//!   only re-baselines and emits no rates. A restart followed by more traffic
//!   than before it, all between two scrapes, cannot be told from growth.
//! - **Log variables** become lazy `(.*?)` groups, so the literal text that
//!   follows a variable in the format ends it; nginx escapes `"` inside
//!   values as `\x22` (default `escape=`), which keeps quoted fields
//!   unambiguous. Variables whose values are always numbers get stricter
//!   patterns so that a line of some other format does not pass as a record.
//! - **Quantiles** are exact (nearest rank) over the window's request times
//!   while at most [`MAX_TIME_SAMPLES`] were logged; beyond that a uniform
//!   reservoir sample is kept, so memory stays bounded on a busy server. The
//!   maximum is always exact.

use std::collections::BTreeMap;

use regex::Regex;

use super::geoip::GeoDb;
use crate::model::text::quote_excerpt;
use crate::model::Measurement;

/// Decimal places kept of rates and milliseconds: more digits carry no
/// information at scrape resolution.
const DECIMALS: i32 = 2;
const MS_PER_S: f64 = 1000.0;

fn round2(v: f64) -> f64 {
    let scale = 10f64.powi(DECIMALS);
    (v * scale).round() / scale
}

// ---------------------------------------------------------------------------
// stub_status
// ---------------------------------------------------------------------------

/// One reading of the stub_status page. `accepts`, `handled` and `requests`
/// are counters since nginx started; the rest are gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StubStatus {
    pub active: u64,
    pub accepts: u64,
    pub handled: u64,
    pub requests: u64,
    pub reading: u64,
    pub writing: u64,
    pub waiting: u64,
}

/// How much of a page is quoted in an error: enough to recognise an HTML
/// error page or a login form, short enough for an event message.
const EXCERPT_CHARS: usize = 80;

/// A page that is not a stub_status page, or one with a value that is not a number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StubStatusError {
    /// `excerpt`: the start of the page, quoted.
    #[error("not an nginx stub_status page: {excerpt}")]
    NotAPage { excerpt: String },
    #[error("stub_status: {name} is not a number: {token:?}")]
    NotANumber { name: String, token: String },
}

/// Reads a stub_status page, e.g.
///
/// ```text
/// Active connections: 291
/// server accepts handled requests
///  16630948 16630948 31070465
/// Reading: 6 Writing: 179 Waiting: 106
/// ```
pub fn parse_stub_status(text: &[u8]) -> Result<StubStatus, StubStatusError> {
    let text = String::from_utf8_lossy(text);
    let tokens: Vec<&str> = text.split_whitespace().collect();
    let not_a_page = || StubStatusError::NotAPage {
        excerpt: quote_excerpt(text.trim(), EXCERPT_CHARS),
    };
    let not_a_number = |name: &str, tok: &str| StubStatusError::NotANumber {
        name: name.to_string(),
        token: tok.to_string(),
    };

    let number_after = |label: &[&str], name: &str| -> Result<u64, StubStatusError> {
        let at = tokens
            .windows(label.len())
            .position(|w| w == label)
            .ok_or_else(not_a_page)?;
        let tok = tokens.get(at + label.len()).copied().unwrap_or("");
        tok.parse::<u64>().map_err(|_| not_a_number(name, tok))
    };

    let active = number_after(&["Active", "connections:"], "active connections")?;
    let reading = number_after(&["Reading:"], "reading")?;
    let writing = number_after(&["Writing:"], "writing")?;
    let waiting = number_after(&["Waiting:"], "waiting")?;

    // The three counters follow their header line; forks may add more header
    // words (and values after ours), so skip words up to the first number.
    const COUNTER_HEADER: [&str; 3] = ["accepts", "handled", "requests"];
    let at = tokens
        .windows(COUNTER_HEADER.len())
        .position(|w| w == COUNTER_HEADER)
        .ok_or_else(not_a_page)?;
    let mut rest = tokens
        .iter()
        .skip(at + COUNTER_HEADER.len())
        .skip_while(|t| !t.starts_with(|c: char| c.is_ascii_digit()));
    let mut counter = |name: &str| -> Result<u64, StubStatusError> {
        let tok = rest.next().copied().unwrap_or("");
        tok.parse::<u64>().map_err(|_| not_a_number(name, tok))
    };
    let accepts = counter("accepts")?;
    let handled = counter("handled")?;
    let requests = counter("requests")?;

    Ok(StubStatus {
        active,
        accepts,
        handled,
        requests,
        reading,
        writing,
        waiting,
    })
}

/// The previous stub_status reading of one target, for rates.
#[derive(Debug, Default)]
pub struct StubState {
    prev: Option<(StubStatus, i64)>,
}

impl StubState {
    /// Gauges of `s` always; rates only when a previous reading exists, the
    /// clock moved forward and no counter went down (nginx restarted).
    pub fn observe(&mut self, s: StubStatus, ts_ms: i64) -> Vec<Measurement> {
        let mut out = vec![
            Measurement::new("nginx.active", s.active as f64),
            Measurement::new("nginx.reading", s.reading as f64),
            Measurement::new("nginx.writing", s.writing as f64),
            Measurement::new("nginx.waiting", s.waiting as f64),
        ];
        if let Some((p, p_ts)) = self.prev {
            let reset = s.accepts < p.accepts || s.handled < p.handled || s.requests < p.requests;
            let dt_s = ts_ms.saturating_sub(p_ts) as f64 / MS_PER_S;
            if !reset && dt_s > 0.0 {
                let rate = |now: u64, before: u64| round2(now.saturating_sub(before) as f64 / dt_s);
                out.push(Measurement::new(
                    "nginx.accepts_per_s",
                    rate(s.accepts, p.accepts),
                ));
                out.push(Measurement::new(
                    "nginx.handled_per_s",
                    rate(s.handled, p.handled),
                ));
                out.push(Measurement::new(
                    "nginx.requests_per_s",
                    rate(s.requests, p.requests),
                ));
                // Connections accepted but not handled: nginx ran out of
                // worker_connections (or another resource) and closed them.
                let dropped_now = s.accepts.saturating_sub(s.handled);
                let dropped_before = p.accepts.saturating_sub(p.handled);
                out.push(Measurement::new(
                    "nginx.dropped_per_s",
                    rate(dropped_now, dropped_before),
                ));
            }
        }
        self.prev = Some((s, ts_ms));
        out
    }
}

// ---------------------------------------------------------------------------
// access log
// ---------------------------------------------------------------------------

/// nginx's predefined `combined` format, the default of `access_log`.
pub const COMBINED_FORMAT: &str = r#"$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent""#;

/// Longest format string accepted; real ones are a few hundred bytes.
const MAX_FORMAT_LEN: usize = 16 * 1024;

/// Regex for the value of variables that nginx always prints as digits
/// (`-` where a few print it when unset).
const INTEGER_VALUE: &str = r"(\d+|-)";
/// `$request_time`, `$msec`: seconds with a millisecond fraction.
const SECONDS_VALUE: &str = r"(\d+(?:\.\d+)?|-)";
/// Anything up to the literal text that follows in the format.
const ANY_VALUE: &str = r"(.*?)";

/// Variables whose values are always integers.
const INTEGER_VARS: &[&str] = &[
    "status",
    "body_bytes_sent",
    "bytes_sent",
    "request_length",
    "connection",
    "connection_requests",
    "pid",
];
/// Variables whose values are always a decimal number of seconds.
const SECONDS_VARS: &[&str] = &["request_time", "msec"];

/// Longest HTTP method accepted as such; longer first words of a request
/// line are garbage (a TLS handshake on a plain port) rather than methods.
const MAX_METHOD_LEN: usize = 32;

/// An nginx `log_format` compiled into a line regex.
#[derive(Debug, Clone)]
pub struct LogFormat {
    /// None only when even the built-in format failed to compile (it does
    /// not; kept so that `Default` needs no panic): nothing then matches.
    regex: Option<Regex>,
    /// Capture group of the first occurrence of each variable we read.
    status: Option<usize>,
    body_bytes_sent: Option<usize>,
    bytes_sent: Option<usize>,
    request_time: Option<usize>,
    upstream_response_time: Option<usize>,
    remote_addr: Option<usize>,
    request: Option<usize>,
    request_method: Option<usize>,
}

impl Default for LogFormat {
    /// The `combined` format.
    fn default() -> Self {
        LogFormat::compile(COMBINED_FORMAT).unwrap_or_else(|_| LogFormat::never())
    }
}

/// One part of a format string.
enum Part<'a> {
    Literal(&'a str),
    Var(&'a str),
}

fn is_var_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// An nginx `log_format` that cannot be compiled; `at` is the byte of the `$`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LogFormatError {
    #[error("log format longer than {MAX_FORMAT_LEN} bytes ({len} bytes)")]
    TooLong { len: usize },
    #[error("unclosed ${{ at byte {at} of the log format")]
    Unclosed { at: usize },
    #[error("invalid variable name after $ at byte {at} of the log format")]
    BadName { at: usize },
    #[error("log format: {0}")]
    Regex(regex::Error),
}

/// Splits a format into literal text and `$name` / `${name}` variables, the
/// way nginx's script compiler does.
fn split_format(fmt: &str) -> Result<Vec<Part<'_>>, LogFormatError> {
    let mut parts = Vec::new();
    let mut rest = fmt;
    while let Some(dollar) = rest.find('$') {
        let (lit, tail) = rest.split_at(dollar);
        if !lit.is_empty() {
            parts.push(Part::Literal(lit));
        }
        let after = tail.get(1..).unwrap_or("");
        let (name, consumed) = if let Some(braced) = after.strip_prefix('{') {
            let close = braced
                .find('}')
                .ok_or(LogFormatError::Unclosed { at: dollar })?;
            let name = braced.get(..close).unwrap_or("");
            (name, 1 + close + 2)
        } else {
            let len = after.find(|c: char| !is_var_char(c)).unwrap_or(after.len());
            (after.get(..len).unwrap_or(""), 1 + len)
        };
        if name.is_empty() || !name.chars().all(is_var_char) {
            return Err(LogFormatError::BadName { at: dollar });
        }
        parts.push(Part::Var(name));
        rest = tail.get(consumed..).unwrap_or("");
    }
    if !rest.is_empty() {
        parts.push(Part::Literal(rest));
    }
    Ok(parts)
}

impl LogFormat {
    /// Compiles an nginx `log_format` string (as nginx joins its quoted
    /// pieces, without the `escape=` parameter).
    pub fn compile(fmt: &str) -> Result<LogFormat, LogFormatError> {
        if fmt.len() > MAX_FORMAT_LEN {
            return Err(LogFormatError::TooLong { len: fmt.len() });
        }
        let parts = split_format(fmt)?;
        let mut pattern = String::from("^");
        let mut lf = LogFormat::never();
        let mut group = 0usize;
        for part in parts {
            match part {
                Part::Literal(text) => pattern.push_str(&regex::escape(text)),
                Part::Var(name) => {
                    group += 1;
                    let value = if INTEGER_VARS.contains(&name) {
                        INTEGER_VALUE
                    } else if SECONDS_VARS.contains(&name) {
                        SECONDS_VALUE
                    } else {
                        ANY_VALUE
                    };
                    pattern.push_str(value);
                    let slot = match name {
                        "status" => &mut lf.status,
                        "body_bytes_sent" => &mut lf.body_bytes_sent,
                        "bytes_sent" => &mut lf.bytes_sent,
                        "request_time" => &mut lf.request_time,
                        "upstream_response_time" => &mut lf.upstream_response_time,
                        "remote_addr" => &mut lf.remote_addr,
                        "request" => &mut lf.request,
                        "request_method" => &mut lf.request_method,
                        _ => continue,
                    };
                    slot.get_or_insert(group);
                }
            }
        }
        pattern.push('$');
        let regex = Regex::new(&pattern).map_err(LogFormatError::Regex)?;
        lf.regex = Some(regex);
        Ok(lf)
    }

    /// A format that matches nothing.
    fn never() -> LogFormat {
        LogFormat {
            regex: None,
            status: None,
            body_bytes_sent: None,
            bytes_sent: None,
            request_time: None,
            upstream_response_time: None,
            remote_addr: None,
            request: None,
            request_method: None,
        }
    }

    /// True when the format logs `$remote_addr` (needed for counts per country).
    pub fn has_remote_addr(&self) -> bool {
        self.remote_addr.is_some()
    }

    /// Reads one log line (a trailing `\n` / `\r\n` is ignored); None when it
    /// does not have the shape of the format.
    pub fn parse_line(&self, line: &str) -> Option<AccessRecord> {
        let line = line.strip_suffix('\n').unwrap_or(line);
        let line = line.strip_suffix('\r').unwrap_or(line);
        let caps = self.regex.as_ref()?.captures(line)?;
        let get = |slot: Option<usize>| -> Option<&str> {
            let v = caps.get(slot?)?.as_str();
            (!v.is_empty() && v != "-").then_some(v)
        };
        let bytes = get(self.body_bytes_sent)
            .or_else(|| get(self.bytes_sent))
            .and_then(|v| v.parse::<u64>().ok());
        // nginx's own `$request_method` is `-` for a request line it could not
        // parse; only formats without it fall back to the first word of
        // `$request`, and only when a target follows it ("GARBAGE" is not a
        // request with method GARBAGE).
        let method = if self.request_method.is_some() {
            get(self.request_method).and_then(valid_method)
        } else {
            get(self.request)
                .and_then(|r| r.split_once(' '))
                .and_then(|(m, _)| valid_method(m))
        };
        Some(AccessRecord {
            status: get(self.status).and_then(|v| v.parse::<u16>().ok()),
            bytes,
            request_time_s: get(self.request_time).and_then(parse_seconds),
            upstream_time_s: get(self.upstream_response_time).and_then(sum_upstream_times),
            remote_addr: get(self.remote_addr).map(str::to_string),
            method,
        })
    }
}

fn parse_seconds(v: &str) -> Option<f64> {
    v.parse::<f64>().ok().filter(|x| x.is_finite() && *x >= 0.0)
}

/// `$upstream_response_time` lists one time per upstream server tried,
/// separated by `, ` (and ` : ` between upstream groups after an internal
/// redirect); `-` stands for a server not reached. The request spent the
/// sum upstream.
fn sum_upstream_times(v: &str) -> Option<f64> {
    let mut sum = None;
    for t in v.split([',', ':']) {
        if let Some(x) = parse_seconds(t.trim()) {
            *sum.get_or_insert(0.0) += x;
        }
    }
    sum
}

/// A method is an HTTP token; what nginx logs for a garbage request line
/// (escaped binary, `-`) is not one.
fn valid_method(m: &str) -> Option<String> {
    let ok = !m.is_empty()
        && m.len() <= MAX_METHOD_LEN
        && m.starts_with(|c: char| c.is_ascii_uppercase())
        && m.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '-' || c == '_');
    ok.then(|| m.to_string())
}

/// What one access log line says, as far as the format logs it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AccessRecord {
    pub status: Option<u16>,
    /// `$body_bytes_sent`, else `$bytes_sent`.
    pub bytes: Option<u64>,
    /// `$request_time`.
    pub request_time_s: Option<f64>,
    /// `$upstream_response_time`, summed over the servers tried.
    pub upstream_time_s: Option<f64>,
    pub remote_addr: Option<String>,
    /// `$request_method`, else the first word of `$request`.
    pub method: Option<String>,
}

/// Request times kept for quantiles per window; beyond this a uniform
/// sample of this size is kept (8 bytes each: 800 KB at most).
pub const MAX_TIME_SAMPLES: usize = 100_000;
/// Distinct client addresses counted per window; more are only counted in
/// [`AccessStats::remote_addrs_overflow`]. Bounds memory under a scan or a
/// flood from many addresses.
pub const MAX_REMOTE_ADDRS: usize = 10_000;

/// Status classes, in the order of [`AccessStats::classes`].
const CLASS_LABELS: [&str; 5] = ["2xx", "3xx", "4xx", "5xx", "other"];
const OTHER_CLASS: usize = 4;
const QUANTILES: [(f64, &str); 3] = [(0.5, "0.5"), (0.9, "0.9"), (0.99, "0.99")];

/// Seed of the reservoir's generator: the sample only needs to be uniform,
/// not unpredictable, and a fixed seed keeps results reproducible.
const SAMPLER_SEED: u64 = 0x9E37_79B9_7F4A_7C15;

/// One scrape window's access log records, summed.
#[derive(Debug, Clone)]
pub struct AccessStats {
    requests: u64,
    classes: [u64; 5],
    bytes: u64,
    unparsed: u64,
    /// Request times in seconds: all of them, or a reservoir sample.
    times: Vec<f64>,
    /// How many request times were seen (the reservoir's denominator).
    times_seen: u64,
    time_max: f64,
    remote_addrs: BTreeMap<String, u64>,
    remote_addrs_overflow: u64,
    sampler: u64,
}

impl Default for AccessStats {
    fn default() -> Self {
        AccessStats {
            requests: 0,
            classes: [0; 5],
            bytes: 0,
            unparsed: 0,
            times: Vec::new(),
            times_seen: 0,
            time_max: 0.0,
            remote_addrs: BTreeMap::new(),
            remote_addrs_overflow: 0,
            sampler: SAMPLER_SEED,
        }
    }
}

impl AccessStats {
    pub fn add(&mut self, r: &AccessRecord) {
        self.requests += 1;
        let class = match r.status {
            Some(s @ 200..=599) => usize::from(s / 100 - 2),
            _ => OTHER_CLASS,
        };
        if let Some(c) = self.classes.get_mut(class) {
            *c += 1;
        }
        if let Some(b) = r.bytes {
            self.bytes = self.bytes.saturating_add(b);
        }
        if let Some(t) = r.request_time_s.filter(|t| t.is_finite() && *t >= 0.0) {
            self.add_time(t);
        }
        if let Some(addr) = &r.remote_addr {
            if let Some(n) = self.remote_addrs.get_mut(addr.as_str()) {
                *n += 1;
            } else if self.remote_addrs.len() < MAX_REMOTE_ADDRS {
                self.remote_addrs.insert(addr.clone(), 1);
            } else {
                self.remote_addrs_overflow += 1;
            }
        }
    }

    /// A line that did not have the shape of the format.
    pub fn add_unparsed(&mut self) {
        self.unparsed += 1;
    }

    /// Reservoir sampling (Vitter's algorithm R): after n values each one is
    /// in the sample with probability MAX_TIME_SAMPLES / n.
    fn add_time(&mut self, t: f64) {
        self.times_seen += 1;
        if t > self.time_max {
            self.time_max = t;
        }
        if self.times.len() < MAX_TIME_SAMPLES {
            self.times.push(t);
            return;
        }
        let j = self.next_random() % self.times_seen;
        if let Some(slot) = usize::try_from(j).ok().and_then(|j| self.times.get_mut(j)) {
            *slot = t;
        }
    }

    /// splitmix64: tiny, fast and good enough for picking sample slots.
    fn next_random(&mut self) -> u64 {
        self.sampler = self.sampler.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.sampler;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Records counted (parsed lines).
    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// Lines that did not match the format.
    pub fn unparsed(&self) -> u64 {
        self.unparsed
    }

    /// Client addresses and how many records each had, sorted by address.
    pub fn remote_addrs(&self) -> impl Iterator<Item = (&str, u64)> + '_ {
        self.remote_addrs.iter().map(|(a, n)| (a.as_str(), *n))
    }

    /// Records whose address was not kept because [`MAX_REMOTE_ADDRS`]
    /// distinct ones were already counted.
    #[cfg(test)]
    pub fn remote_addrs_overflow(&self) -> u64 {
        self.remote_addrs_overflow
    }

    /// `nginx.log.requests{country="DE"}` per country of the window's client
    /// addresses (ISO code, or `unknown`; addresses beyond [`MAX_REMOTE_ADDRS`]
    /// count as `unknown`). Countries without requests have no series.
    pub fn country_measurements(&self, db: &GeoDb) -> Vec<Measurement> {
        db.count(self.remote_addrs(), self.remote_addrs_overflow)
            .into_iter()
            .map(|(country, n)| {
                Measurement::new("nginx.log.requests", n as f64).with_label("country", &country)
            })
            .collect()
    }

    /// The window's measurements. `window_s` (the scrape interval) only
    /// turns the request count into `nginx.log.requests_per_s`; it is left
    /// out when the window is not a positive duration.
    pub fn measurements(&self, window_s: f64) -> Vec<Measurement> {
        let mut out = vec![Measurement::new("nginx.log.requests", self.requests as f64)];
        for (label, n) in CLASS_LABELS.iter().zip(self.classes) {
            out.push(Measurement::new("nginx.log.requests", n as f64).with_label("class", label));
        }
        if window_s.is_finite() && window_s > 0.0 {
            out.push(Measurement::new(
                "nginx.log.requests_per_s",
                round2(self.requests as f64 / window_s),
            ));
        }
        out.push(Measurement::new("nginx.log.bytes", self.bytes as f64));
        if !self.times.is_empty() {
            let mut sorted = self.times.clone();
            sorted.sort_by(f64::total_cmp);
            for (q, label) in QUANTILES {
                if let Some(v) = nearest_rank(&sorted, q) {
                    out.push(
                        Measurement::new("nginx.log.request_time_ms", round2(v * MS_PER_S))
                            .with_label("quantile", label),
                    );
                }
            }
            out.push(Measurement::new(
                "nginx.log.request_time_ms_max",
                round2(self.time_max * MS_PER_S),
            ));
        }
        out.push(Measurement::new("nginx.log.unparsed", self.unparsed as f64));
        out
    }
}

/// The nearest-rank quantile of sorted values: the smallest value with at
/// least `q` of all values at or below it. Never interpolates, so the
/// result is a time some request actually took.
fn nearest_rank(sorted: &[f64], q: f64) -> Option<f64> {
    let n = sorted.len();
    let rank = (q * n as f64).ceil() as usize;
    sorted.get(rank.clamp(1, n.max(1)) - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    const STUB_IDLE: &[u8] = include_bytes!("fixtures/nginx/stub_status_idle.txt");
    const STUB_BUSY: &[u8] = include_bytes!("fixtures/nginx/stub_status_busy.txt");
    const STUB_BEFORE_DROP: &[u8] = include_bytes!("fixtures/nginx/stub_status_before_drop.txt");
    const STUB_DROPPED: &[u8] = include_bytes!("fixtures/nginx/stub_status_dropped.txt");
    const ACCESS_COMBINED: &[u8] = include_bytes!("fixtures/nginx/access_combined.log");
    const ACCESS_TIMED: &[u8] = include_bytes!("fixtures/nginx/access_timed.log");
    const ODD_COMBINED: &[u8] = include_bytes!("fixtures/nginx/odd_combined.log");
    /// The `timed` log_format of fixtures/nginx/capture.conf.
    const TIMED_FORMAT: &str = r#"$remote_addr $request_method "$request" $status $bytes_sent $request_time $upstream_response_time "$http_user_agent" [$time_iso8601]"#;

    fn value(ms: &[Measurement], metric: &str, label: Option<(&str, &str)>) -> Option<f64> {
        ms.iter()
            .find(|m| {
                m.metric == metric
                    && match label {
                        Some((k, v)) => m.labels.get(k).map(String::as_str) == Some(v),
                        None => m.labels.is_empty(),
                    }
            })
            .map(|m| m.value)
    }

    fn stats_of(fmt: &LogFormat, log: &[u8]) -> AccessStats {
        let text = String::from_utf8_lossy(log);
        let mut stats = AccessStats::default();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            match fmt.parse_line(line) {
                Some(r) => stats.add(&r),
                None => stats.add_unparsed(),
            }
        }
        stats
    }

    #[test]
    fn stub_status_brief_example() {
        let page = b"Active connections: 291 \nserver accepts handled requests\n 16630948 16630948 31070465 \nReading: 6 Writing: 179 Waiting: 106 \n";
        let s = parse_stub_status(page).unwrap();
        assert_eq!(
            s,
            StubStatus {
                active: 291,
                accepts: 16630948,
                handled: 16630948,
                requests: 31070465,
                reading: 6,
                writing: 179,
                waiting: 106,
            }
        );
    }

    #[test]
    fn stub_status_real_pages() {
        let idle = parse_stub_status(STUB_IDLE).unwrap();
        assert_eq!(
            (idle.active, idle.accepts, idle.handled, idle.requests),
            (1, 2, 2, 2)
        );
        assert_eq!((idle.reading, idle.writing, idle.waiting), (0, 1, 0));
        // Taken while two clients sent half a request and three sat idle.
        let busy = parse_stub_status(STUB_BUSY).unwrap();
        assert_eq!(
            (busy.active, busy.reading, busy.writing, busy.waiting),
            (6, 2, 1, 3)
        );
        assert_eq!((busy.accepts, busy.handled, busy.requests), (46, 46, 45));
        // Taken after more connections than worker_connections were opened.
        let dropped = parse_stub_status(STUB_DROPPED).unwrap();
        assert_eq!(
            (dropped.accepts, dropped.handled, dropped.requests),
            (134, 115, 74)
        );
    }

    #[test]
    fn stub_status_variants_and_errors() {
        let crlf = b"Active connections: 3\r\nserver accepts handled requests\r\n 1 2 3\r\nReading: 4 Writing: 5 Waiting: 6\r\n";
        let s = parse_stub_status(crlf).unwrap();
        assert_eq!((s.active, s.accepts, s.requests, s.waiting), (3, 1, 3, 6));
        let tengine = b"Active connections: 1\nserver accepts handled requests request_time\n 10 10 20 75806\nReading: 0 Writing: 1 Waiting: 0\n";
        let s = parse_stub_status(tengine).unwrap();
        assert_eq!((s.accepts, s.handled, s.requests), (10, 10, 20));

        let html = b"<html><head><title>404 Not Found</title></head></html>";
        let e = parse_stub_status(html).unwrap_err().to_string();
        assert!(
            e.contains("not an nginx stub_status page") && e.contains("404"),
            "{e}"
        );
        assert!(parse_stub_status(b"").is_err());
        let bad = b"Active connections: x\nserver accepts handled requests\n 1 2 3\nReading: 0 Writing: 1 Waiting: 0\n";
        let e = parse_stub_status(bad).unwrap_err().to_string();
        assert!(e.contains("active connections"), "{e}");
        let cut = b"Active connections: 1\nserver accepts handled requests\n 1 2";
        assert!(parse_stub_status(cut).is_err());
        let cut2 = b"Active connections: 1\nserver accepts handled requests\n 1 2\nReading: 0 Writing: 1 Waiting: 0\n";
        let e = parse_stub_status(cut2).unwrap_err().to_string();
        assert!(e.contains("requests"), "{e}");
    }

    #[test]
    fn stub_state_rates_reset_and_dropped() {
        let mut st = StubState::default();
        let first = st.observe(parse_stub_status(STUB_BEFORE_DROP).unwrap(), 10_000);
        assert_eq!(
            first.len(),
            4,
            "gauges only on the first reading: {first:?}"
        );
        assert_eq!(value(&first, "nginx.active", None), Some(1.0));

        // 103/103/62 -> 134/115/74 over 4 s.
        let second = st.observe(parse_stub_status(STUB_DROPPED).unwrap(), 14_000);
        assert_eq!(value(&second, "nginx.accepts_per_s", None), Some(7.75));
        assert_eq!(value(&second, "nginx.handled_per_s", None), Some(3.0));
        assert_eq!(value(&second, "nginx.requests_per_s", None), Some(3.0));
        assert_eq!(value(&second, "nginx.dropped_per_s", None), Some(4.75));

        // nginx restarted: counters went down; re-baseline, no rates.
        let restarted = StubStatus {
            accepts: 5,
            handled: 5,
            requests: 7,
            ..Default::default()
        };
        let third = st.observe(restarted, 20_000);
        assert_eq!(third.len(), 4, "{third:?}");
        let later = StubStatus {
            accepts: 8,
            handled: 8,
            requests: 10,
            ..Default::default()
        };
        let fourth = st.observe(later, 23_000);
        assert_eq!(value(&fourth, "nginx.requests_per_s", None), Some(1.0));
        assert_eq!(value(&fourth, "nginx.dropped_per_s", None), Some(0.0));

        // The clock did not move: no division by zero, no rates.
        let same = st.observe(later, 23_000);
        assert_eq!(same.len(), 4);
        // Rounded to two decimals.
        let third_s = StubStatus {
            accepts: 9,
            handled: 9,
            requests: 11,
            ..Default::default()
        };
        let r = st.observe(third_s, 26_000);
        assert_eq!(value(&r, "nginx.requests_per_s", None), Some(0.33));
    }

    #[test]
    fn combined_format_on_real_log() {
        let fmt = LogFormat::compile(COMBINED_FORMAT).unwrap();
        let stats = stats_of(&fmt, ACCESS_COMBINED);
        let ms = stats.measurements(60.0);
        assert_eq!(stats.unparsed(), 0);
        assert_eq!(value(&ms, "nginx.log.requests", None), Some(67.0));
        assert_eq!(
            value(&ms, "nginx.log.requests", Some(("class", "2xx"))),
            Some(23.0)
        );
        assert_eq!(
            value(&ms, "nginx.log.requests", Some(("class", "3xx"))),
            Some(1.0)
        );
        assert_eq!(
            value(&ms, "nginx.log.requests", Some(("class", "4xx"))),
            Some(41.0)
        );
        assert_eq!(
            value(&ms, "nginx.log.requests", Some(("class", "5xx"))),
            Some(2.0)
        );
        assert_eq!(
            value(&ms, "nginx.log.requests", Some(("class", "other"))),
            Some(0.0)
        );
        assert_eq!(value(&ms, "nginx.log.requests_per_s", None), Some(1.12));
        assert_eq!(value(&ms, "nginx.log.bytes", None), Some(15292.0));
        assert_eq!(value(&ms, "nginx.log.unparsed", None), Some(0.0));
        // combined has no $request_time: no latency series at all.
        assert!(ms
            .iter()
            .all(|m| !m.metric.starts_with("nginx.log.request_time")));
        let addrs: Vec<_> = stats.remote_addrs().collect();
        assert_eq!(addrs, vec![("127.0.0.1", 65), ("::1", 2)]);

        let text = String::from_utf8_lossy(ACCESS_COMBINED);
        let lines: Vec<&str> = text.lines().collect();
        let ua = lines.iter().find(|l| l.contains("GET /ua ")).unwrap();
        let r = fmt.parse_line(ua).unwrap();
        assert_eq!((r.status, r.bytes), (Some(403), Some(153)));
        assert_eq!(r.method.as_deref(), Some("GET"));
        let head = lines.iter().find(|l| l.contains("\"HEAD /")).unwrap();
        assert_eq!(
            fmt.parse_line(head).unwrap().method.as_deref(),
            Some("HEAD")
        );
        let binary = lines.iter().find(|l| l.contains("\\x01\\xFF")).unwrap();
        assert_eq!(
            fmt.parse_line(binary).unwrap().method.as_deref(),
            Some("GET")
        );
        assert_eq!(LogFormat::default().parse_line(ua), Some(r));
    }

    #[test]
    fn custom_format_on_real_log() {
        let fmt = LogFormat::compile(TIMED_FORMAT).unwrap();
        let stats = stats_of(&fmt, ACCESS_TIMED);
        let ms = stats.measurements(0.0);
        assert_eq!(stats.unparsed(), 0);
        assert_eq!(value(&ms, "nginx.log.requests", None), Some(67.0));
        assert_eq!(value(&ms, "nginx.log.requests_per_s", None), None);
        assert_eq!(value(&ms, "nginx.log.bytes", None), Some(23881.0));
        let q = |l| value(&ms, "nginx.log.request_time_ms", Some(("quantile", l)));
        assert_eq!(q("0.5"), Some(0.0));
        assert_eq!(q("0.9"), Some(790.0));
        assert_eq!(q("0.99"), Some(3014.0));
        assert_eq!(
            value(&ms, "nginx.log.request_time_ms_max", None),
            Some(3014.0)
        );

        let text = String::from_utf8_lossy(ACCESS_TIMED);
        let recs: Vec<AccessRecord> = text.lines().filter_map(|l| fmt.parse_line(l)).collect();
        assert_eq!(
            recs.iter().filter(|r| r.upstream_time_s.is_some()).count(),
            13
        );
        let retry = text.lines().find(|l| l.contains("/retry/a")).unwrap();
        let r = fmt.parse_line(retry).unwrap();
        assert_eq!(r.upstream_time_s, Some(0.0), "two tries, 0.000, 0.000");
        let slow = text.lines().find(|l| l.contains("/slowapi/q6")).unwrap();
        let r = fmt.parse_line(slow).unwrap();
        assert_eq!(
            (r.request_time_s, r.upstream_time_s),
            (Some(0.142), Some(0.141))
        );
        // $request_method is used when logged; nginx logs `-` for a bad line.
        let garbage = text.lines().find(|l| l.contains("\"GARBAGE\"")).unwrap();
        let r = fmt.parse_line(garbage).unwrap();
        assert_eq!((r.method, r.status), (None, Some(400)));
        let del = text.lines().find(|l| l.contains("DELETE")).unwrap();
        assert_eq!(
            fmt.parse_line(del).unwrap().method.as_deref(),
            Some("DELETE")
        );
    }

    #[test]
    fn odd_lines() {
        let fmt = LogFormat::default();
        let stats = stats_of(&fmt, ODD_COMBINED);
        let ms = stats.measurements(10.0);
        assert_eq!(stats.unparsed(), 4, "truncated, cut, binary, other format");
        assert_eq!(stats.requests(), 12);
        let class = |c| value(&ms, "nginx.log.requests", Some(("class", c)));
        assert_eq!(class("2xx"), Some(4.0));
        assert_eq!(class("3xx"), Some(1.0));
        assert_eq!(class("4xx"), Some(5.0));
        assert_eq!(class("5xx"), Some(1.0));
        assert_eq!(class("other"), Some(1.0), "101 Switching Protocols");
        assert_eq!(value(&ms, "nginx.log.bytes", None), Some(867.0));
        let addrs: BTreeMap<&str, u64> = stats.remote_addrs().collect();
        assert_eq!(addrs.get("2001:db8::1"), Some(&1));
        assert_eq!(addrs.get("::ffff:192.0.2.7"), Some(&1));
        assert_eq!(addrs.get("203.0.113.9"), Some(&9));

        let text = String::from_utf8_lossy(ODD_COMBINED);
        let find = |needle: &str| {
            let line = text.lines().find(|l| l.contains(needle)).unwrap();
            fmt.parse_line(line).unwrap()
        };
        assert_eq!(
            find("\\x16\\x03").method,
            None,
            "TLS handshake on a plain port"
        );
        assert_eq!(find("\"-\" 400").method, None);
        assert_eq!(find("\"\" 400").method, None);
        assert_eq!(find("M-SEARCH").method.as_deref(), Some("M-SEARCH"));
        assert_eq!(find("/a b c").method.as_deref(), Some("GET"));
        assert_eq!(find("/crlf").status, Some(304));
        let ua = find("Evil");
        assert_eq!((ua.status, ua.bytes), (Some(200), Some(10)));
        let user = find("alice smith");
        assert_eq!(user.remote_addr.as_deref(), Some("198.51.100.4"));
        assert_eq!(user.status, Some(401));
    }

    #[test]
    fn format_compilation() {
        let braces = LogFormat::compile("${remote_addr}:${status}-$request_time").unwrap();
        let r = braces.parse_line("10.0.0.1:200-0.5").unwrap();
        assert_eq!(r.remote_addr.as_deref(), Some("10.0.0.1"));
        assert_eq!((r.status, r.request_time_s), (Some(200), Some(0.5)));
        // Regex metacharacters in literal text are literal.
        let meta = LogFormat::compile("(*) $status .+ [$body_bytes_sent]").unwrap();
        assert_eq!(meta.parse_line("(*) 204 .+ [0]").unwrap().status, Some(204));
        assert!(meta.parse_line("(*) 204 xx [0]").is_none());
        // Repeated variables: the first occurrence counts.
        let twice = LogFormat::compile("$status $status").unwrap();
        assert_eq!(twice.parse_line("200 500").unwrap().status, Some(200));
        // Upstream groups after an internal redirect, and unreached servers.
        let up = LogFormat::compile("$upstream_response_time|$bytes_sent").unwrap();
        let r = up.parse_line("0.5, 0.25 : -, 1.0|12").unwrap();
        assert_eq!((r.upstream_time_s, r.bytes), (Some(1.75), Some(12)));
        assert_eq!(up.parse_line("-|12").unwrap().upstream_time_s, None);
        // A numeric variable with a non-numeric value does not match.
        assert!(up.parse_line("0.5|many").is_none());
        // No variables at all is a valid, if useless, format.
        assert!(LogFormat::compile("static")
            .unwrap()
            .parse_line("static")
            .is_some());

        for bad in ["$", "a $ b", "${status", "${}", "$-x", "${a b}"] {
            let e = LogFormat::compile(bad).unwrap_err().to_string();
            assert!(e.contains("log format"), "{bad}: {e}");
        }
        assert!(LogFormat::compile(&"x".repeat(MAX_FORMAT_LEN + 1)).is_err());
    }

    #[test]
    fn quantiles_are_exact_nearest_rank() {
        let mut st = AccessStats::default();
        for ms in 1..=100u32 {
            st.add(&AccessRecord {
                status: Some(200),
                request_time_s: Some(f64::from(ms) / 1000.0),
                ..Default::default()
            });
        }
        // Records without a time, or with a nonsense one, do not count.
        st.add(&AccessRecord {
            request_time_s: Some(f64::NAN),
            ..Default::default()
        });
        st.add(&AccessRecord::default());
        let ms = st.measurements(1.0);
        let q = |l| value(&ms, "nginx.log.request_time_ms", Some(("quantile", l)));
        assert_eq!(
            (q("0.5"), q("0.9"), q("0.99")),
            (Some(50.0), Some(90.0), Some(99.0))
        );
        assert_eq!(
            value(&ms, "nginx.log.request_time_ms_max", None),
            Some(100.0)
        );
        assert_eq!(
            value(&ms, "nginx.log.requests", Some(("class", "other"))),
            Some(2.0)
        );
        assert_eq!(nearest_rank(&[], 0.5), None);
        assert_eq!(nearest_rank(&[7.0], 0.99), Some(7.0));
    }

    #[test]
    fn requests_per_country_on_real_log() {
        let db =
            super::super::geoip::GeoDb::from_bytes(super::super::geoip::testdb::sample(6)).unwrap();
        let fmt = LogFormat::default();
        assert!(fmt.has_remote_addr());
        assert!(!LogFormat::compile("$status").unwrap().has_remote_addr());
        let stats = stats_of(&fmt, ACCESS_COMBINED);
        let ms = stats.country_measurements(&db);
        let country = |c| value(&ms, "nginx.log.requests", Some(("country", c)));
        assert_eq!(country("DE"), Some(65.0), "127.0.0.1");
        assert_eq!(country("unknown"), Some(2.0), "::1 is in no network");
        assert_eq!(ms.len(), 2, "{ms:?}");
        assert!(ms.iter().all(|m| m.labels.len() == 1));
        // No addresses: no series.
        assert!(AccessStats::default().country_measurements(&db).is_empty());

        // Addresses beyond the cap count as unknown.
        let mut st = AccessStats::default();
        for i in 0..MAX_REMOTE_ADDRS + 5 {
            st.add(&AccessRecord {
                remote_addr: Some(format!(
                    "10.{}.{}.{}",
                    (i >> 16) & 255,
                    (i >> 8) & 255,
                    i & 255
                )),
                ..Default::default()
            });
        }
        let ms = st.country_measurements(&db);
        let country = |c| value(&ms, "nginx.log.requests", Some(("country", c)));
        assert_eq!(country("US"), Some(MAX_REMOTE_ADDRS as f64));
        assert_eq!(country("unknown"), Some(5.0));
    }

    #[test]
    fn memory_is_capped() {
        let mut st = AccessStats::default();
        let n = MAX_TIME_SAMPLES + MAX_TIME_SAMPLES / 2;
        for i in 0..n {
            st.add(&AccessRecord {
                status: Some(200),
                // Uniform over [0, 1) s; the sample's median must stay near 0.5 s.
                request_time_s: Some(i as f64 / n as f64),
                remote_addr: Some(format!(
                    "10.{}.{}.{}",
                    (i >> 16) & 255,
                    (i >> 8) & 255,
                    i & 255
                )),
                ..Default::default()
            });
        }
        assert_eq!(st.times.len(), MAX_TIME_SAMPLES);
        assert_eq!(st.remote_addrs().count(), MAX_REMOTE_ADDRS);
        assert_eq!(st.remote_addrs_overflow(), (n - MAX_REMOTE_ADDRS) as u64);
        let ms = st.measurements(1.0);
        let median = value(&ms, "nginx.log.request_time_ms", Some(("quantile", "0.5"))).unwrap();
        assert!((median - 500.0).abs() < 20.0, "sampled median {median}");
        let max = value(&ms, "nginx.log.request_time_ms_max", None).unwrap();
        assert_eq!(
            max,
            round2((n - 1) as f64 / n as f64 * MS_PER_S),
            "max stays exact"
        );
        // Known addresses keep counting when the map is full.
        st.add(&AccessRecord {
            remote_addr: Some("10.0.0.0".into()),
            ..Default::default()
        });
        assert_eq!(st.remote_addrs().next(), Some(("10.0.0.0", 2)));
    }

    #[test]
    fn random_input_never_panics() {
        let mut rng = StdRng::seed_from_u64(7);
        let formats = [
            LogFormat::default(),
            LogFormat::compile(TIMED_FORMAT).unwrap(),
            LogFormat::compile("$status$body_bytes_sent$request_time").unwrap(),
        ];
        let alphabet: &[u8] = b"$ {}[]\"\\-.:,0123456789abcxyz_GETPOST\x00\xff\xc3\n\r\t";
        let real: Vec<u8> = [ACCESS_COMBINED, ACCESS_TIMED, ODD_COMBINED, STUB_BUSY].concat();
        let mut stats = AccessStats::default();
        for _ in 0..3000 {
            let len = rng.random_range(0..120);
            let mut bytes: Vec<u8> = if rng.random_bool(0.5) {
                (0..len)
                    .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                    .collect()
            } else {
                // Real text with a few bytes flipped or cut short.
                let start = rng.random_range(0..real.len());
                let end = (start + len * 3).min(real.len());
                real[start..end].to_vec()
            };
            for _ in 0..rng.random_range(0..4) {
                if !bytes.is_empty() {
                    let i = rng.random_range(0..bytes.len());
                    bytes[i] = rng.random();
                }
            }
            let text = String::from_utf8_lossy(&bytes);
            let _ = parse_stub_status(&bytes);
            let _ = LogFormat::compile(&text);
            for f in &formats {
                match f.parse_line(&text) {
                    Some(r) => stats.add(&r),
                    None => stats.add_unparsed(),
                }
            }
        }
        let ms = stats.measurements(f64::NAN);
        assert!(ms.iter().all(|m| m.value.is_finite()));
        let mut st = StubState::default();
        for _ in 0..200 {
            let s = StubStatus {
                accepts: rng.random_range(0..5),
                handled: rng.random_range(0..5),
                requests: rng.random(),
                ..Default::default()
            };
            let out = st.observe(s, rng.random_range(i64::MIN..i64::MAX));
            assert!(out.iter().all(|m| m.value.is_finite() && m.value >= 0.0));
        }
    }
}
