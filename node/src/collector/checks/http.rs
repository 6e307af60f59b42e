//! http: an endpoint answers with an expected status (and body) in time, from the
//! node (default) or from the target through its SSH session. Each run also feeds
//! the per-minute and per-hour rollups (count, min/max/mean response time, a count
//! per status code).
use regex::Regex;

use super::{CheckError, CheckSetupError, Env, Outcome, Status};
use crate::transport::http::{self, HttpError, Request, Tls, Via};
use crate::transport::TunnelError;
use serde_json::Value;

use crate::collector::StateBoard;
use crate::config::checks::{json_path, Expect, HttpCheck, JsonValue};
use crate::config::Vantage;
use crate::model::EventKind;
use crate::model::Measurement;

/// Statuses that count as up when `expect_status` is empty.
const DEFAULT_UP: std::ops::RangeInclusive<u16> = 200..=399;

pub struct HttpState {
    request: Request,
    tls: Tls,
    body_re: Option<Regex>,
    expects: Vec<(String, Expect)>,
    picks: Vec<(serde_json_path::JsonPath, JsonValue)>,
    /// Where string (and other) picks are published for state rules.
    board: Option<(StateBoard, String, String)>,
    /// Problems of the last answer's JSON, to report each change once.
    last_problems: Vec<String>,
}

impl HttpState {
    pub fn new(
        c: &HttpCheck,
        name: &str,
        target: &str,
        board: &StateBoard,
    ) -> Result<Self, CheckSetupError> {
        let (uri, _, _, _) = http::parse_url(&c.url)?;
        let method = c
            .method
            .as_deref()
            .unwrap_or("GET")
            .parse::<::http::Method>()
            .map_err(CheckSetupError::Method)?;
        let body_re = match &c.body_regex {
            Some(r) => Some(Regex::new(r).map_err(CheckSetupError::BodyRegex)?),
            None => None,
        };
        Ok(HttpState {
            request: Request {
                method,
                uri,
                headers: c
                    .headers
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                body: c.body.clone().map(Into::into),
            },
            tls: Tls::new(c.tls_verify, c.ca_file.as_deref())?,
            body_re,
            expects: c
                .expect
                .iter()
                .map(|e| Expect::parse(e).map(|x| (e.clone(), x)))
                .collect::<Result<_, _>>()?,
            picks: c
                .json
                .iter()
                .map(|j| json_path(&j.path).map(|p| (p, j.clone())))
                .collect::<Result<_, _>>()?,
            board: (!c.json.is_empty())
                .then(|| (board.clone(), target.to_string(), name.to_string())),
            last_problems: Vec::new(),
        })
    }
}

pub async fn run(
    state: &mut HttpState,
    c: &HttpCheck,
    env: &Env<'_>,
) -> Result<Outcome, CheckError> {
    let via = match c.from {
        Vantage::Node => Via::Node,
        Vantage::Target => Via::Target(env.transport),
    };
    let result = http::fetch(&state.request, via, &state.tls, env.timeout).await;
    let mut measurements = Vec::new();
    let mut outcome = Outcome::default();
    let (up, detail) = match result {
        Ok(r) => {
            let ms = super::round_derived(r.elapsed.as_secs_f64() * 1000.0);
            measurements.push(Measurement::new("http.response_ms", ms));
            measurements.push(Measurement::new("http.status", f64::from(r.status)));
            outcome.rollup = Some(Rollup {
                response_ms: Some(ms),
                status: r.status.to_string(),
            });
            let status_ok = if c.expect_status.is_empty() {
                DEFAULT_UP.contains(&r.status)
            } else {
                c.expect_status.contains(&r.status)
            };
            let body_ok = match &state.body_re {
                Some(re) => re.is_match(&String::from_utf8_lossy(&r.body)),
                None => true,
            };
            let (json_ok, json_detail) = if state.expects.is_empty() && state.picks.is_empty() {
                (true, String::new())
            } else {
                state.read_json(&r.body, &mut outcome)
            };
            match (status_ok, body_ok) {
                (true, true) if !json_ok => {
                    (false, format!("{} {}: {json_detail}", c.url, r.status))
                }
                (true, true) => (
                    true,
                    format!("{} {} in {ms} ms{json_detail}", c.url, r.status),
                ),
                (false, _) => (
                    false,
                    format!("{} answered {} (expected {})", c.url, r.status, expected(c)),
                ),
                (true, false) => (
                    false,
                    format!(
                        "{} {}: body does not match {:?}",
                        c.url,
                        r.status,
                        c.body_regex.as_deref().unwrap_or_default()
                    ),
                ),
            }
        }
        Err(HttpError::Connect(TunnelError::Transport(e))) => return Err(CheckError::Transport(e)),
        Err(HttpError::Connect(TunnelError::Prohibited(why))) => {
            return Err(CheckError::Failed(why))
        }
        Err(HttpError::BadUrl(why)) => return Err(CheckError::Failed(why)),
        Err(e) => {
            outcome.rollup = Some(Rollup {
                response_ms: None,
                status: ROLLUP_FAILED.into(),
            });
            (false, format!("{}: {e}", c.url))
        }
    };
    measurements.push(Measurement::new("http.up", if up { 1.0 } else { 0.0 }));
    outcome.measurements.extend(measurements);
    outcome.status = Some(Status::up(up));
    outcome.detail = Some(detail);
    Ok(outcome)
}

impl HttpState {
    /// Picks values out of a JSON answer and evaluates the `expect` conditions.
    /// Returns whether every condition holds, and a note for the detail.
    fn read_json(&mut self, body: &[u8], outcome: &mut Outcome) -> (bool, String) {
        let mut problems = Vec::new();
        let doc: Option<Value> = match serde_json::from_slice(body) {
            Ok(v) => Some(v),
            Err(e) => {
                problems.push(format!("the answer is not JSON: {e}"));
                None
            }
        };
        let at = |p: &serde_json_path::JsonPath| {
            doc.as_ref()
                .and_then(|d| p.query(d).exactly_one().ok().cloned())
        };
        let mut published = serde_json::Map::new();
        for (path, pick) in &self.picks {
            match at(path) {
                Some(Value::Number(n)) => {
                    if let Some(v) = n.as_f64() {
                        outcome.measurements.push(Measurement::new(&pick.metric, v));
                    }
                    insert_dotted(&mut published, &pick.metric, Value::Number(n));
                }
                Some(Value::Bool(b)) => {
                    outcome
                        .measurements
                        .push(Measurement::new(&pick.metric, if b { 1.0 } else { 0.0 }));
                    insert_dotted(&mut published, &pick.metric, Value::Bool(b));
                }
                Some(Value::Null) | None if doc.is_some() => {
                    problems.push(format!("path {} is missing", pick.path))
                }
                Some(other) => insert_dotted(&mut published, &pick.metric, other),
                None => {}
            }
        }
        if let Some((board, target, check)) = &self.board {
            // Replaced only when it changed: the rules task looks again only at
            // trees that are new (by pointer).
            let published = Value::Object(published);
            let same = board
                .read()
                .ok()
                .and_then(|b| b.get(target)?.get(check).map(|(_, v)| **v == published))
                .unwrap_or(false);
            if !same {
                if let Ok(mut b) = board.write() {
                    b.entry(target.clone())
                        .or_default()
                        .insert(check.clone(), (0, std::sync::Arc::new(published)));
                }
            }
        }
        let mut failed = Vec::new();
        for (text, e) in &self.expects {
            let found = json_path(&e.path).ok().and_then(|p| at(&p));
            if found.is_none() && doc.is_some() {
                problems.push(format!("path {} is missing", e.path));
            }
            if !e.holds(found.as_ref()) {
                failed.push(text.clone());
            }
        }
        if problems != self.last_problems {
            for p in &problems {
                outcome
                    .events
                    .push((EventKind::CheckError, format!("{}: {p}", self.request.uri)));
            }
            self.last_problems = problems;
        }
        if failed.is_empty() {
            (true, String::new())
        } else {
            (false, format!("expected {}", failed.join(" and ")))
        }
    }
}

/// Puts `value` at a dotted name (`api.status` → {"api": {"status": value}}).
fn insert_dotted(map: &mut serde_json::Map<String, Value>, name: &str, value: Value) {
    let mut parts = name.split('.').peekable();
    let mut cur = map;
    while let Some(p) = parts.next() {
        if parts.peek().is_none() {
            cur.insert(p.to_string(), value);
            return;
        }
        let entry = cur
            .entry(p.to_string())
            .or_insert_with(|| Value::Object(serde_json::Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(serde_json::Map::new());
        }
        match entry {
            Value::Object(m) => cur = m,
            _ => return,
        }
    }
}

fn expected(c: &HttpCheck) -> String {
    if c.expect_status.is_empty() {
        format!("{}-{}", DEFAULT_UP.start(), DEFAULT_UP.end())
    } else {
        c.expect_status
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The status key of a request that got no answer, in rollups.
pub const ROLLUP_FAILED: &str = "failed";

/// One request's contribution to the rollups.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollup {
    pub response_ms: Option<f64>,
    /// The HTTP status as text, or `failed`.
    pub status: String,
}
