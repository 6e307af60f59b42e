//! Check kinds: each turns what it reads from a target into measurements, events
//! and a status. One file per kind; `Runner` is the one place that dispatches.
pub mod command;
pub mod file_fresh;
pub mod http;
pub mod json_state;
pub mod log;
pub mod nginx;
pub mod parse;
pub mod port;
pub mod prometheus;
pub mod socket;
pub mod tail;
pub mod vitals;

use std::time::Duration;

use crate::config::{CheckSpec, TargetSpec};
use crate::model::text::prefix_chars;
use crate::model::{EventKind, Measurement};

use crate::config::checks::{ExpectError, JsonPathError};
use crate::transport::http::{HttpError, TlsSetupError};
use crate::transport::{ExecOutput, Transport, TransportError};
use parse::exposition::AllowError;
use parse::logtail::PatternError;
use parse::nginx::LogFormatError;

/// What a check needs to run once.
pub struct Env<'a> {
    pub target: &'a TargetSpec,
    pub transport: &'a Transport,
    /// The whole run is bounded by this.
    pub timeout: Duration,
    /// Monitor-side time of this scrape.
    pub ts_ms: i64,
}

impl Env<'_> {
    /// Runs a command on the target, bounded by the check's timeout.
    pub async fn exec(&self, command: &str, max_output: usize) -> Result<ExecOutput, CheckError> {
        self.transport
            .exec(command, self.timeout, max_output)
            .await
            .map_err(CheckError::Transport)
    }

    /// Runs a [`Script`](crate::transport::Script) on the target, bounded by the
    /// check's timeout.
    pub async fn run_script(
        &self,
        script: crate::transport::Script<'_>,
        max_output: usize,
    ) -> Result<ExecOutput, CheckError> {
        self.transport
            .run_script(script, self.timeout, max_output)
            .await
            .map_err(CheckError::Transport)
    }

    /// The host part of the target's address (127.0.0.1 for local targets).
    pub fn target_host(&self) -> String {
        self.target
            .address
            .as_deref()
            .and_then(|a| crate::config::fleet::parse_address(a).ok())
            .map(|(h, _)| h)
            .unwrap_or_else(|| "127.0.0.1".into())
    }
}

/// Ok/warning/critical/unknown, with the Nagios codes 0..3 as the sample value of
/// `check.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Warning,
    Critical,
    Unknown,
}

impl Status {
    pub fn code(self) -> f64 {
        match self {
            Status::Ok => 0.0,
            Status::Warning => 1.0,
            Status::Critical => 2.0,
            Status::Unknown => 3.0,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warning => "warning",
            Status::Critical => "critical",
            Status::Unknown => "unknown",
        }
    }
    pub fn up(up: bool) -> Status {
        if up {
            Status::Ok
        } else {
            Status::Critical
        }
    }
}

/// What one run of a check found.
#[derive(Debug, Default)]
pub struct Outcome {
    pub measurements: Vec<Measurement>,
    /// Facts worth an event (a matching log line, a state change).
    pub events: Vec<(EventKind, String)>,
    /// The check's verdict; becomes `check.status{check,kind}`. Vitals has none.
    pub status: Option<Status>,
    /// Text that explains the status (a plugin's first line, why a port is down).
    pub detail: Option<String>,
    /// For checks that keep rollups (http): this run's contribution.
    pub rollup: Option<http::Rollup>,
    /// Metadata to store in the same commit as `events` (tail offsets, trees).
    pub persist: Vec<(String, Vec<u8>)>,
}

/// What building a runner may need besides the check's spec.
pub struct RunnerCtx<'a> {
    pub store: &'a crate::store::Store,
    /// The herd's copy of persisted positions, preferred when newer (a takeover).
    pub marks: Option<&'a dyn crate::model::HerdMarks>,
    pub target: &'a str,
    pub states: &'a crate::collector::StateBoard,
}

#[cfg(test)]
impl<'a> RunnerCtx<'a> {
    /// A context outside any herd, for a check's tests.
    pub fn for_tests(
        store: &'a crate::store::Store,
        target: &'a str,
        states: &'a crate::collector::StateBoard,
    ) -> RunnerCtx<'a> {
        RunnerCtx {
            store,
            marks: None,
            target,
            states,
        }
    }
}

/// Why a check could not reach a verdict.
#[derive(Debug)]
pub enum CheckError {
    /// The transport failed: the target is unreachable, or the command timed out.
    Transport(TransportError),
    /// The check ran but what it read makes no sense.
    Failed(String),
}

/// Why a check's runner cannot be made from its spec: the setting and what is
/// wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum CheckSetupError {
    /// The check's URL.
    #[error(transparent)]
    Url(#[from] HttpError),
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    #[error("method: {0}")]
    Method(::http::method::InvalidMethod),
    #[error("body_regex: {0}")]
    BodyRegex(regex::Error),
    #[error(transparent)]
    Expect(#[from] ExpectError),
    #[error(transparent)]
    JsonPath(#[from] JsonPathError),
    /// A log check's include or exclude pattern.
    #[error(transparent)]
    Pattern(#[from] PatternError),
    /// A prometheus check's allow pattern.
    #[error(transparent)]
    Allow(#[from] AllowError),
    #[error("log_format: {0}")]
    LogFormat(LogFormatError),
    #[error("geoip_db needs access_log (requests are counted from it)")]
    GeoipWithoutAccessLog,
    #[error("geoip_db needs $remote_addr in log_format")]
    GeoipWithoutRemoteAddr,
    #[error("json_state: set exactly one of path and docker_label")]
    JsonStateSource,
}

/// The per-target state of one check (previous counters, tail offsets, ...).
pub enum Runner {
    Vitals(vitals::VitalsState),
    FileFresh,
    Port,
    Socket,
    Command,
    Http(Box<http::HttpState>),
    Prometheus(Box<prometheus::PromState>),
    Log(Box<log::LogState>),
    Nginx(Box<nginx::NginxState>),
    JsonState(Box<json_state::JsonStateState>),
}

impl Runner {
    /// The runner of a check, or why it cannot be made (its text is what the
    /// target's loop records as a check error event).
    pub fn new(spec: &CheckSpec, ctx: &RunnerCtx<'_>) -> Result<Self, CheckSetupError> {
        let name = spec.name();
        Ok(match spec {
            CheckSpec::Vitals(_) => Runner::Vitals(vitals::VitalsState::default()),
            CheckSpec::FileFresh(_) => Runner::FileFresh,
            CheckSpec::Port(_) => Runner::Port,
            CheckSpec::Socket(_) => Runner::Socket,
            CheckSpec::Command(_) => Runner::Command,
            CheckSpec::Http(c) => Runner::Http(Box::new(http::HttpState::new(
                c, name, ctx.target, ctx.states,
            )?)),
            CheckSpec::Prometheus(c) => {
                Runner::Prometheus(Box::new(prometheus::PromState::new(c)?))
            }
            CheckSpec::Log(c) => Runner::Log(Box::new(log::LogState::new(c, name, ctx)?)),
            CheckSpec::Nginx(c) => Runner::Nginx(Box::new(nginx::NginxState::new(c, name, ctx)?)),
            CheckSpec::JsonState(c) => {
                Runner::JsonState(Box::new(json_state::JsonStateState::new(c, name, ctx)?))
            }
        })
    }

    pub async fn run(&mut self, spec: &CheckSpec, env: &Env<'_>) -> Result<Outcome, CheckError> {
        match (self, spec) {
            (Runner::Vitals(state), CheckSpec::Vitals(spec)) => run_vitals(state, spec, env).await,
            (Runner::FileFresh, CheckSpec::FileFresh(c)) => file_fresh::run(c, env).await,
            (Runner::Port, CheckSpec::Port(c)) => port::run(c, env).await,
            (Runner::Socket, CheckSpec::Socket(c)) => socket::run(c, env).await,
            (Runner::Command, CheckSpec::Command(c)) => command::run(c, env).await,
            (Runner::Http(state), CheckSpec::Http(c)) => http::run(state, c, env).await,
            (Runner::Prometheus(state), CheckSpec::Prometheus(c)) => {
                prometheus::run(state, c, env).await
            }
            (Runner::Log(state), CheckSpec::Log(c)) => log::run(state, c, env).await,
            (Runner::Nginx(state), CheckSpec::Nginx(c)) => {
                let window = spec
                    .interval()
                    .unwrap_or(env.target.interval)
                    .get()
                    .as_secs_f64();
                nginx::run(state, c, env, window).await
            }
            (Runner::JsonState(state), CheckSpec::JsonState(c)) => {
                json_state::run(state, c, env).await
            }
            (_, spec) => Err(CheckError::Failed(format!(
                "internal: runner does not match the {} check",
                spec.kind()
            ))),
        }
    }
}

async fn run_vitals(
    state: &mut vitals::VitalsState,
    spec: &crate::config::checks::VitalsCheck,
    env: &Env<'_>,
) -> Result<Outcome, CheckError> {
    let disk_interval = spec
        .disk_interval
        .map_or(vitals::DEFAULT_DISK_INTERVAL, |d| d.get());
    let command = state.command(env.ts_ms, disk_interval);
    let out = env.run_script(command, vitals::MAX_OUTPUT_BYTES).await?;
    let snap = vitals::parse(&out.stdout)
        .map_err(|e| CheckError::Failed(with_stderr(format!("vitals: {e}"), &out)))?;
    if command.standalone == vitals::VITALS_COMMAND {
        state.disk_read(env.ts_ms);
    }
    let mut measurements = state.observe(snap, env.ts_ms);
    for m in &mut measurements {
        m.value = round_derived(m.value);
    }
    Ok(Outcome {
        measurements,
        ..Default::default()
    })
}

/// How much of a command's stderr a message quotes.
const STDERR_EXCERPT_CHARS: usize = 200;

/// Appends the start of stderr to a message, when there is any.
pub fn with_stderr(message: String, out: &ExecOutput) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stderr = stderr.trim();
    if stderr.is_empty() {
        message
    } else {
        format!(
            "{message} (stderr: {})",
            prefix_chars(stderr, STDERR_EXCERPT_CHARS)
        )
    }
}

/// Decimal places kept of derived values (percentages, rates).
const DERIVED_DECIMALS: i32 = 2;

/// Rounds a derived, fractional value (a percentage, a rate) to
/// `DERIVED_DECIMALS`: the digits beyond carry no information, and a value with
/// few decimals compresses to about a byte in the store, where an arbitrary float
/// costs seven. Whole numbers (byte counts) are left exactly as they are.
pub fn round_derived(v: f64) -> f64 {
    if !v.is_finite() || v.fract() == 0.0 {
        return v;
    }
    let scale = 10f64.powi(DERIVED_DECIMALS);
    let r = (v * scale).round() / scale;
    if r.is_finite() {
        r
    } else {
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_values_keep_two_decimals_and_whole_numbers_stay_exact() {
        assert_eq!(round_derived(81.723_423_4), 81.72);
        assert_eq!(round_derived(0.005_1), 0.01);
        let huge = 9_007_199_254_740_993_f64; // beyond 2^53: must not be touched
        assert_eq!(round_derived(huge).to_bits(), huge.to_bits());
        assert!(round_derived(f64::NAN).is_nan());
    }
}
