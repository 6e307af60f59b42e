//! The check kinds of `fleet.toml`: `checks = [{ kind = "...", ... }]`. One struct per
//! kind; `CheckSpec` is the closed family. Every kind takes `name` (default: the kind;
//! unique per target), `interval` and `timeout`.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::duration::HumanDuration;
use crate::model::net::check_http_url;

/// Where a network check connects from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Vantage {
    /// From the monitoring node.
    #[default]
    Node,
    /// From the target, through a TCP tunnel on its SSH session (nothing runs there).
    Target,
}

fn vantage_target() -> Vantage {
    Vantage::Target
}

fn yes() -> bool {
    true
}

/// Defines a check struct with the fields every kind takes (`name`, `interval`,
/// `timeout`) followed by its own; written out (not flattened) so that unknown keys
/// stay errors.
macro_rules! check_struct {
    ($(#[$m:meta])* $name:ident { $($(#[$fm:meta])* $field:ident : $ty:ty,)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            /// Unique per target; default: the kind.
            #[serde(default)]
            pub name: Option<String>,
            /// Default: the target's interval.
            #[serde(default)]
            pub interval: Option<HumanDuration>,
            /// Default: `ssh.command_timeout`, at most the interval.
            #[serde(default)]
            pub timeout: Option<HumanDuration>,
            $($(#[$fm])* pub $field: $ty,)*
        }
    };
}

/// A check of a target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CheckSpec {
    Vitals(VitalsCheck),
    Log(LogCheck),
    Nginx(NginxCheck),
    FileFresh(FileFreshCheck),
    Port(PortCheck),
    Socket(SocketCheck),
    Http(HttpCheck),
    Command(CommandCheck),
    Prometheus(PrometheusCheck),
    JsonState(JsonStateCheck),
}

/// `name`, `interval` and `timeout` of every kind, without a match per accessor.
macro_rules! common {
    ($self:ident, $field:ident) => {
        match $self {
            CheckSpec::Vitals(c) => &c.$field,
            CheckSpec::Log(c) => &c.$field,
            CheckSpec::Nginx(c) => &c.$field,
            CheckSpec::FileFresh(c) => &c.$field,
            CheckSpec::Port(c) => &c.$field,
            CheckSpec::Socket(c) => &c.$field,
            CheckSpec::Http(c) => &c.$field,
            CheckSpec::Command(c) => &c.$field,
            CheckSpec::Prometheus(c) => &c.$field,
            CheckSpec::JsonState(c) => &c.$field,
        }
    };
}

impl CheckSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            CheckSpec::Vitals(_) => "vitals",
            CheckSpec::Log(_) => "log",
            CheckSpec::Nginx(_) => "nginx",
            CheckSpec::FileFresh(_) => "file_fresh",
            CheckSpec::Port(_) => "port",
            CheckSpec::Socket(_) => "socket",
            CheckSpec::Http(_) => "http",
            CheckSpec::Command(_) => "command",
            CheckSpec::Prometheus(_) => "prometheus",
            CheckSpec::JsonState(_) => "json_state",
        }
    }
    /// The check's name: `name`, or the kind when absent.
    pub fn name(&self) -> &str {
        common!(self, name).as_deref().unwrap_or(self.kind())
    }
    pub fn interval(&self) -> Option<HumanDuration> {
        *common!(self, interval)
    }
    pub fn timeout(&self) -> Option<HumanDuration> {
        *common!(self, timeout)
    }
    /// True when the check runs commands or tunnels over the target's SSH session.
    pub fn uses_transport(&self) -> bool {
        match self {
            CheckSpec::Port(c) => c.from == Vantage::Target,
            CheckSpec::Http(c) => c.from == Vantage::Target,
            CheckSpec::Prometheus(c) => c.from == Vantage::Target,
            CheckSpec::Nginx(c) => c.from == Vantage::Target || c.access_log.is_some(),
            _ => true,
        }
    }
}

check_struct! {
    /// CPU, memory, swap, disk, load, network and uptime in one command.
    #[derive(Default)]
    VitalsCheck {
        /// How often the disk figures are read (df); the scrapes between read
        /// the rest only. Default 60 s; at most `interval` reads them every time.
        #[serde(default)]
        disk_interval: Option<HumanDuration>,
    }
}

check_struct! {
    /// Lines of a file on the target matching patterns, tailed by byte offset.
    LogCheck {
        path: String,
        /// Regexes; a line is reported when it matches one (all lines when empty).
        #[serde(default)]
        include: Vec<String>,
        /// Regexes; a line matching one is never reported.
        #[serde(default)]
        exclude: Vec<String>,
        /// Matching lines reported as events per scrape; more are only counted.
        #[serde(default)]
        max_lines: Option<usize>,
        /// Bytes read per scrape at most; a backlog beyond is skipped and counted.
        #[serde(default)]
        max_bytes: Option<usize>,
    }
}

check_struct! {
    /// nginx: stub_status and access-log statistics.
    NginxCheck {
        /// URL of the stub_status page, e.g. "http://127.0.0.1/nginx_status".
        #[serde(default)]
        status_url: Option<String>,
        /// Where status_url is fetched from; default: the target (it is usually local there).
        #[serde(default = "vantage_target")]
        from: Vantage,
        /// Access log on the target to count requests from.
        #[serde(default)]
        access_log: Option<String>,
        /// nginx `log_format` of that log; default: `combined`.
        #[serde(default)]
        log_format: Option<String>,
        /// A MaxMind-format database (GeoLite2-Country.mmdb, ...) on the node: requests
        /// are then also counted per country. None: no country labels.
        #[serde(default)]
        geoip_db: Option<String>,
    }
}

check_struct! {
    /// A file's modification time must be newer than `max_age`.
    FileFreshCheck {
        path: String,
        max_age: HumanDuration,
    }
}

check_struct! {
    /// A TCP port accepts connections.
    PortCheck {
        port: u16,
        /// Host to connect to; default: the target's host (from the target: 127.0.0.1).
        #[serde(default)]
        host: Option<String>,
        #[serde(default)]
        from: Vantage,
    }
}

check_struct! {
    /// A unix socket on the target accepts a connection.
    SocketCheck {
        path: String,
    }
}

check_struct! {
    /// An HTTP endpoint answers as expected.
    HttpCheck {
        url: String,
        #[serde(default)]
        method: Option<String>,
        #[serde(default)]
        headers: BTreeMap<String, String>,
        #[serde(default)]
        body: Option<String>,
        /// Statuses that count as up; default: 200-399.
        #[serde(default)]
        expect_status: Vec<u16>,
        /// The body must match this regex.
        #[serde(default)]
        body_regex: Option<String>,
        /// Verify TLS certificates (system roots, plus `ca_file`). On by default.
        #[serde(default = "yes")]
        tls_verify: bool,
        /// PEM file of extra CA certificates to trust.
        #[serde(default)]
        ca_file: Option<String>,
        #[serde(default)]
        from: Vantage,
        /// JSON answers: values at these paths become samples (numbers) or values
        /// (strings, for regex/presence rules).
        #[serde(default)]
        json: Vec<JsonValue>,
        /// Conditions on the JSON answer that set the check's status, e.g.
        /// `status == "UP"`, `nodes.up >= 3`.
        #[serde(default)]
        expect: Vec<String>,
    }
}

/// A value picked out of a JSON answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonValue {
    /// JSONPath (RFC 9535, `$.data.queue.depth`) or a dotted path (`data.queue.depth`).
    pub path: String,
    pub metric: String,
}

check_struct! {
    /// Any command on the target under the Nagios plugin convention.
    CommandCheck {
        command: String,
    }
}

check_struct! {
    /// A Prometheus exposition endpoint; allow-listed families are kept.
    PrometheusCheck {
        url: String,
        /// Family names or globs (`node_cpu_*`) to keep; nothing else is stored.
        allow: Vec<String>,
        #[serde(default)]
        from: Vantage,
        /// Samples read per scrape at most.
        #[serde(default)]
        max_samples: Option<usize>,
    }
}

/// A numeric state path recorded as a metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateMetric {
    pub path: String,
    pub metric: String,
}

check_struct! {
    /// JSON-lines records deep-merged into a per-target state tree.
    JsonStateCheck {
        /// A JSON-lines file on the target, tailed.
        #[serde(default)]
        path: Option<String>,
        /// Or: `docker logs` of containers with this label (docker CLI on the target).
        #[serde(default)]
        docker_label: Option<String>,
        #[serde(default)]
        metrics: Vec<StateMetric>,
        /// Keys untouched this long are removed from the tree.
        #[serde(default)]
        expire_after: Option<HumanDuration>,
    }
}

/// A comparison in an `expect` condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Ge,
    Le,
    Gt,
    Lt,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "==",
            Op::Ne => "!=",
            Op::Ge => ">=",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Lt => "<",
        }
    }
}

/// `expect = ['status == "UP"', 'nodes.up >= 3']`: a path, an operator and a JSON
/// literal (strings quoted; numbers, true, false, null bare).
#[derive(Debug, Clone, PartialEq)]
pub struct Expect {
    pub path: String,
    pub op: Op,
    pub value: serde_json::Value,
}

/// What is wrong with an `expect` line of an http check (`text` as written).
#[derive(Debug, thiserror::Error)]
pub enum ExpectError {
    #[error("expect {text:?}: write PATH OP VALUE, e.g. status == \"UP\" or nodes.up >= 3")]
    NoOperator { text: String },
    #[error("expect {text:?}: the path is empty")]
    EmptyPath { text: String },
    #[error("expect {text:?}: {literal:?} is not a JSON value (quote strings: \"UP\")")]
    NotJson { text: String, literal: String },
    #[error("expect {text:?}: {op} needs a number")]
    NeedsNumber { text: String, op: &'static str },
    #[error(transparent)]
    Path(#[from] JsonPathError),
}

/// A path that is not a JSONPath: the path as written and the parser's reason.
#[derive(Debug, thiserror::Error)]
#[error("path {path:?}: {source}")]
pub struct JsonPathError {
    pub path: String,
    pub source: serde_json_path::ParseError,
}

impl Expect {
    pub fn parse(text: &str) -> Result<Expect, ExpectError> {
        // Two-character operators first, so ">=" is not read as ">".
        const OPS: [(&str, Op); 6] = [
            ("==", Op::Eq),
            ("!=", Op::Ne),
            (">=", Op::Ge),
            ("<=", Op::Le),
            (">", Op::Gt),
            ("<", Op::Lt),
        ];
        let found = OPS
            .iter()
            .filter_map(|(s, op)| text.find(s).map(|i| (i, *s, *op)))
            .min_by_key(|(i, s, _)| (*i, std::cmp::Reverse(s.len())));
        let Some((i, s, op)) = found else {
            return Err(ExpectError::NoOperator {
                text: text.to_string(),
            });
        };
        let path = text[..i].trim();
        let literal = text[i + s.len()..].trim();
        if path.is_empty() {
            return Err(ExpectError::EmptyPath {
                text: text.to_string(),
            });
        }
        let value: serde_json::Value =
            serde_json::from_str(literal).map_err(|_| ExpectError::NotJson {
                text: text.to_string(),
                literal: literal.to_string(),
            })?;
        if matches!(op, Op::Ge | Op::Le | Op::Gt | Op::Lt) && !value.is_number() {
            return Err(ExpectError::NeedsNumber {
                text: text.to_string(),
                op: op.as_str(),
            });
        }
        json_path(path)?;
        Ok(Expect {
            path: path.to_string(),
            op,
            value,
        })
    }

    /// Whether `found` (the value at the path, None when missing) satisfies it.
    pub fn holds(&self, found: Option<&serde_json::Value>) -> bool {
        let Some(v) = found else {
            return false;
        };
        let num = |x: &serde_json::Value| x.as_f64();
        match self.op {
            Op::Eq => v == &self.value || (num(v).is_some() && num(v) == num(&self.value)),
            Op::Ne => !(v == &self.value || (num(v).is_some() && num(v) == num(&self.value))),
            op => match (num(v), num(&self.value)) {
                (Some(a), Some(b)) => match op {
                    Op::Ge => a >= b,
                    Op::Le => a <= b,
                    Op::Gt => a > b,
                    _ => a < b,
                },
                _ => false,
            },
        }
    }
}

/// A JSONPath from a user's path: `$...` as written, `a.b.0` as `$.a.b[0]`-style
/// dotted segments.
pub fn json_path(path: &str) -> Result<serde_json_path::JsonPath, JsonPathError> {
    let full = if path.starts_with('$') {
        path.to_string()
    } else {
        let mut p = String::from("$");
        for seg in path.split('.') {
            if seg.chars().all(|c| c.is_ascii_digit()) && !seg.is_empty() {
                p.push_str(&format!("[{seg}]"));
            } else {
                p.push_str(&format!(
                    "[{}]",
                    serde_json::Value::String(seg.to_string())
                        .to_string()
                        .replace('"', "'")
                ));
            }
        }
        p
    };
    serde_json_path::JsonPath::parse(&full).map_err(|source| JsonPathError {
        path: path.to_string(),
        source,
    })
}

fn valid_regexes(what: &str, patterns: &[String], out: &mut Vec<String>) {
    for p in patterns {
        if let Err(e) = regex::Regex::new(p) {
            out.push(format!("{what} regex {p:?}: {e}"));
        }
    }
}

fn valid_metric_name(m: &str) -> bool {
    !m.is_empty()
        && m.len() <= 200
        && m.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Problems of one check's own fields (pure). Relations with the target (names,
/// intervals) are checked by the caller.
pub fn validate_check(c: &CheckSpec) -> Vec<String> {
    let mut p = Vec::new();
    if let Some(n) = common!(c, name) {
        if n.is_empty()
            || !n
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-'))
        {
            p.push(format!(
                "check name {n:?} must be letters, digits, '.', '_' or '-'"
            ));
        }
    }
    match c {
        CheckSpec::Vitals(v) => {
            if v.disk_interval.is_some_and(|d| d.get().is_zero()) {
                p.push("vitals: disk_interval must be above 0".into());
            }
        }
        CheckSpec::Log(l) => {
            if l.path.trim().is_empty() {
                p.push("log: path is empty".into());
            }
            valid_regexes("include", &l.include, &mut p);
            valid_regexes("exclude", &l.exclude, &mut p);
            if l.max_lines == Some(0) || l.max_bytes == Some(0) {
                p.push("log: max_lines and max_bytes must be above 0".into());
            }
        }
        CheckSpec::Nginx(n) => {
            if n.status_url.is_none() && n.access_log.is_none() {
                p.push("nginx: set status_url, access_log or both".into());
            }
            if let Some(u) = &n.status_url {
                if let Err(e) = check_http_url("url", u) {
                    p.push(format!("nginx: {e}"));
                }
            }
            if n.geoip_db.is_some() && n.access_log.is_none() {
                p.push("nginx: geoip_db counts requests of the access_log: set access_log".into());
            }
            if n.geoip_db.is_some()
                && n.log_format
                    .as_deref()
                    .is_some_and(|f| !f.contains("$remote_addr"))
            {
                p.push("nginx: geoip_db needs $remote_addr in log_format".into());
            }
        }
        CheckSpec::FileFresh(f) => {
            if f.path.trim().is_empty() {
                p.push("file_fresh: path is empty".into());
            }
            if f.max_age.get().is_zero() {
                p.push("file_fresh: max_age must be above 0".into());
            }
        }
        CheckSpec::Port(port) => {
            if port.port == 0 {
                p.push("port: port must be 1-65535".into());
            }
        }
        CheckSpec::Socket(s) => {
            if !s.path.starts_with('/') {
                p.push(format!("socket: path {:?} must be absolute", s.path));
            }
        }
        CheckSpec::Http(h) => {
            if let Err(e) = check_http_url("url", &h.url) {
                p.push(format!("http: {e}"));
            }
            if let Some(m) = &h.method {
                if m.is_empty() || !m.chars().all(|c| c.is_ascii_uppercase()) {
                    p.push(format!(
                        "http: method {m:?} must be an upper-case HTTP method"
                    ));
                }
            }
            for s in &h.expect_status {
                if !(100..=599).contains(s) {
                    p.push(format!("http: expect_status {s} is not an HTTP status"));
                }
            }
            if let Some(r) = &h.body_regex {
                valid_regexes("body", std::slice::from_ref(r), &mut p);
            }
            for e in &h.expect {
                if let Err(why) = Expect::parse(e) {
                    p.push(format!("http: {why}"));
                }
            }
            for j in &h.json {
                if let Err(why) = json_path(&j.path) {
                    p.push(format!("http: json {why}"));
                }
                if !valid_metric_name(&j.metric) {
                    p.push(format!(
                        "http: json metric {:?} must be letters, digits, '.', '_' or '-'",
                        j.metric
                    ));
                }
            }
            for (k, v) in &h.headers {
                if k.is_empty() || k.contains([':', '\r', '\n', ' ']) || v.contains(['\r', '\n']) {
                    p.push(format!("http: header {k:?} is not a valid header"));
                }
            }
        }
        CheckSpec::Command(c) => {
            if c.command.trim().is_empty() {
                p.push("command: command is empty".into());
            }
        }
        CheckSpec::Prometheus(pr) => {
            if let Err(e) = check_http_url("url", &pr.url) {
                p.push(format!("prometheus: {e}"));
            }
            if pr.allow.is_empty() {
                p.push("prometheus: allow must list the metric families to keep".into());
            }
            for a in &pr.allow {
                if a.is_empty()
                    || !a
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '*'))
                {
                    p.push(format!(
                        "prometheus: allow pattern {a:?} must be a family name, '*' for globbing"
                    ));
                }
            }
        }
        CheckSpec::JsonState(j) => {
            match (&j.path, &j.docker_label) {
                (None, None) | (Some(_), Some(_)) => {
                    p.push("json_state: set exactly one of path and docker_label".into())
                }
                _ => {}
            }
            for m in &j.metrics {
                if !valid_metric_name(&m.metric) {
                    p.push(format!(
                        "json_state: metric {:?} must be letters, digits, '.', '_' or '-'",
                        m.metric
                    ));
                }
                if m.path.is_empty() {
                    p.push("json_state: a metric path is empty".into());
                }
            }
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn expect_parses_and_evaluates() {
        let e = Expect::parse(r#"status == "UP""#).unwrap();
        assert!(e.holds(Some(&json!("UP"))));
        assert!(!e.holds(Some(&json!("DOWN"))));
        assert!(!e.holds(None));
        let e = Expect::parse("nodes.up >= 3").unwrap();
        assert_eq!(e.op, Op::Ge);
        assert!(e.holds(Some(&json!(3))));
        assert!(e.holds(Some(&json!(3.5))));
        assert!(!e.holds(Some(&json!(2))));
        assert!(!e.holds(Some(&json!("3"))), "a string is not a number");
        assert!(Expect::parse("x != null").unwrap().holds(Some(&json!(1))));
        assert!(Expect::parse("x > \"a\"").is_err());
        assert!(Expect::parse("x = 3").is_err());
        assert!(Expect::parse("x == UP").is_err(), "strings must be quoted");
        assert!(Expect::parse(" == 3").is_err());
    }

    #[test]
    fn dotted_paths_become_json_paths() {
        let v = json!({"data": {"queue": {"depth": 7}, "items": [{"n": 1}, {"n": 2}]}});
        let q = |p: &str| json_path(p).unwrap().query(&v).exactly_one().ok().cloned();
        assert_eq!(q("data.queue.depth"), Some(json!(7)));
        assert_eq!(q("data.items.1.n"), Some(json!(2)));
        assert_eq!(q("$.data.queue.depth"), Some(json!(7)));
        assert_eq!(q("data.nope"), None);
    }
}
