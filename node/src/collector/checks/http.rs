//! http: an endpoint answers with an expected status (and body) in time, from the
//! node (default) or from the target through its SSH session. Each run also feeds
//! the per-minute and per-hour rollups (count, min/max/mean response time, a count
//! per status code).
use regex::Regex;

use super::{CheckError, Env, Outcome, Status};
use crate::collector::http::{self, HttpError, Request, Tls, Via};
use crate::collector::transport::TunnelError;
use crate::config::checks::HttpCheck;
use crate::config::Vantage;
use crate::model::Measurement;

/// Statuses that count as up when `expect_status` is empty.
const DEFAULT_UP: std::ops::RangeInclusive<u16> = 200..=399;

pub struct HttpState {
    request: Request,
    tls: Tls,
    body_re: Option<Regex>,
}

impl HttpState {
    pub fn new(c: &HttpCheck) -> Result<Self, String> {
        let (uri, _, _, _) = http::parse_url(&c.url).map_err(|e| e.to_string())?;
        let method = c
            .method
            .as_deref()
            .unwrap_or("GET")
            .parse::<::http::Method>()
            .map_err(|e| format!("method: {e}"))?;
        let body_re = match &c.body_regex {
            Some(r) => Some(Regex::new(r).map_err(|e| format!("body_regex: {e}"))?),
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
                body: c.body.clone(),
            },
            tls: Tls::new(c.tls_verify, c.ca_file.as_deref())?,
            body_re,
        })
    }
}

pub async fn run(state: &HttpState, c: &HttpCheck, env: &Env<'_>) -> Result<Outcome, CheckError> {
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
            match (status_ok, body_ok) {
                (true, true) => (true, format!("{} {} in {ms} ms", c.url, r.status)),
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
    outcome.measurements = measurements;
    outcome.status = Some(Status::up(up));
    outcome.detail = Some(detail);
    Ok(outcome)
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
