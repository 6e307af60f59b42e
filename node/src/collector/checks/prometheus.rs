//! prometheus: scrape an exposition-format endpoint (node_exporter, CockroachDB's
//! `/_status/vars`, any exporter) from the node or through the target's SSH
//! session; keep only allow-listed families, as `prom.<name>{labels}`.
use super::parse::exposition::{self, Allow};
use super::{CheckError, CheckSetupError, Env, Outcome, Status};
use crate::config::checks::PrometheusCheck;
use crate::config::Vantage;
use crate::model::Measurement;
use crate::transport::http::{self, HttpError, Request, Tls, Via};
use crate::transport::TunnelError;

/// Samples read per scrape unless `max_samples` says otherwise.
pub const DEFAULT_MAX_SAMPLES: usize = 10_000;

pub struct PromState {
    request: Request,
    tls: Tls,
    allow: Allow,
}

impl PromState {
    pub fn new(c: &PrometheusCheck) -> Result<Self, CheckSetupError> {
        let (uri, _, _, _) = http::parse_url(&c.url)?;
        Ok(PromState {
            request: Request {
                method: ::http::Method::GET,
                uri,
                headers: vec![(
                    "accept".into(),
                    "text/plain;version=0.0.4;q=1,*/*;q=0.1".into(),
                )],
                body: None,
            },
            tls: Tls::new(true, None)?,
            allow: Allow::new(&c.allow)?,
        })
    }
}

pub async fn run(
    state: &PromState,
    c: &PrometheusCheck,
    env: &Env<'_>,
) -> Result<Outcome, CheckError> {
    let via = match c.from {
        Vantage::Node => Via::Node,
        Vantage::Target => Via::Target(env.transport),
    };
    let mut outcome = Outcome::default();
    let answer = http::fetch(&state.request, via, &state.tls, env.timeout).await;
    let (up, detail) = match answer {
        Ok(r) if r.status == 200 => {
            let max = c.max_samples.unwrap_or(DEFAULT_MAX_SAMPLES);
            let parsed = exposition::parse(&r.body, max);
            let kept = exposition::measurements(&parsed, &state.allow);
            let kept_n = kept.len();
            outcome
                .measurements
                .push(Measurement::new("prometheus.samples", kept_n as f64));
            outcome.measurements.push(Measurement::new(
                "prometheus.scrape_ms",
                super::round_derived(r.elapsed.as_secs_f64() * 1000.0),
            ));
            outcome.measurements.extend(kept);
            let mut detail = format!("{}: {} samples, {kept_n} kept", c.url, parsed.samples.len());
            if !parsed.problems.is_empty() {
                detail.push_str(&format!(
                    " ({} problems: {})",
                    parsed.problems.len(),
                    parsed.problems.join("; ")
                ));
            }
            if r.body_cut {
                detail.push_str(" (body cut at the size limit)");
            }
            (true, detail)
        }
        Ok(r) => (false, format!("{} answered {}", c.url, r.status)),
        Err(HttpError::Connect(TunnelError::Transport(e))) => return Err(CheckError::Transport(e)),
        Err(HttpError::Connect(TunnelError::Prohibited(why))) | Err(HttpError::BadUrl(why)) => {
            return Err(CheckError::Failed(why))
        }
        Err(e) => (false, format!("{}: {e}", c.url)),
    };
    outcome.measurements.push(Measurement::new(
        "prometheus.up",
        if up { 1.0 } else { 0.0 },
    ));
    outcome.status = Some(Status::up(up));
    outcome.detail = Some(detail);
    Ok(outcome)
}
