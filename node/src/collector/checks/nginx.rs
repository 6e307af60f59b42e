//! nginx: stub_status (connections, request rates) fetched on the target (default)
//! or from the node, and access-log statistics (requests per status class, bytes,
//! request time percentiles) from a log tailed on the target.
use super::parse::logtail::DEFAULT_MAX_BYTES;
use super::parse::nginx::{parse_stub_status, AccessStats, LogFormat, StubState};
use super::tail::Tail;
use super::{CheckError, Env, Outcome, Status};
use crate::collector::http::{self, HttpError, Request, Tls, Via};
use crate::collector::transport::TunnelError;
use crate::config::checks::NginxCheck;
use crate::config::Vantage;
use crate::store::Store;

pub struct NginxState {
    stub: Option<(Request, Tls)>,
    stub_state: StubState,
    access: Option<(Tail, LogFormat)>,
}

impl NginxState {
    pub fn new(c: &NginxCheck, name: &str, store: &Store, target: &str) -> Result<Self, String> {
        let stub = match &c.status_url {
            Some(url) => {
                let (uri, _, _, _) = http::parse_url(url).map_err(|e| e.to_string())?;
                let req = Request {
                    method: ::http::Method::GET,
                    uri,
                    headers: Vec::new(),
                    body: None,
                };
                Some((req, Tls::new(true, None)?))
            }
            None => None,
        };
        let access = match &c.access_log {
            Some(path) => {
                let format = match &c.log_format {
                    Some(f) => LogFormat::compile(f).map_err(|e| format!("log_format: {e}"))?,
                    None => LogFormat::default(),
                };
                Some((
                    Tail::load(store, target, name, path, DEFAULT_MAX_BYTES),
                    format,
                ))
            }
            None => None,
        };
        Ok(NginxState {
            stub,
            stub_state: StubState::default(),
            access,
        })
    }
}

pub async fn run(
    state: &mut NginxState,
    c: &NginxCheck,
    env: &Env<'_>,
    window_s: f64,
) -> Result<Outcome, CheckError> {
    let mut outcome = Outcome::default();
    let mut status = Status::Ok;
    let mut details = Vec::new();
    if let Some((req, tls)) = &state.stub {
        let via = match c.from {
            Vantage::Node => Via::Node,
            Vantage::Target => Via::Target(env.transport),
        };
        match http::fetch(req, via, tls, env.timeout).await {
            Ok(r) if r.status == 200 => match parse_stub_status(&r.body) {
                Ok(s) => {
                    details.push(format!("{} active connections", s.active));
                    outcome
                        .measurements
                        .extend(state.stub_state.observe(s, env.ts_ms));
                }
                Err(e) => {
                    return Err(CheckError::Failed(format!(
                        "nginx stub_status {}: {e}",
                        req.uri
                    )))
                }
            },
            Ok(r) => {
                status = Status::Critical;
                details.push(format!("stub_status {} answered {}", req.uri, r.status));
            }
            Err(HttpError::Connect(TunnelError::Transport(e))) => {
                return Err(CheckError::Transport(e))
            }
            Err(HttpError::Connect(TunnelError::Prohibited(why))) => {
                return Err(CheckError::Failed(why))
            }
            Err(e) => {
                status = Status::Critical;
                details.push(format!("stub_status {}: {e}", req.uri));
            }
        }
        outcome.measurements.push(crate::model::Measurement::new(
            "nginx.up",
            if status == Status::Ok { 1.0 } else { 0.0 },
        ));
    }
    if let Some((tail, format)) = &mut state.access {
        let read = tail.read(env).await?;
        let mut stats = AccessStats::default();
        for line in read.lines.iter().filter(|l| !l.trim().is_empty()) {
            match format.parse_line(line) {
                Some(r) => stats.add(&r),
                None => stats.add_unparsed(),
            }
        }
        details.push(format!(
            "{} requests logged, {} unparsed",
            stats.requests(),
            stats.unparsed()
        ));
        outcome.measurements.extend(stats.measurements(window_s));
        outcome.persist.extend(tail.advance(&read));
    }
    outcome.status = Some(status);
    outcome.detail = Some(details.join("; "));
    Ok(outcome)
}
