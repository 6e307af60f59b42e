//! One target's task: builds its transport, runs each check on its own ticker,
//! tracks reachability and records samples, events and status.
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::checks::Runner;
use super::link::{Link, Transition};
use super::transport::{
    LocalTransport, SshAuth, SshTarget, SshTransport, Transport, TransportError,
};
use super::{CollectorCtx, TargetStatus};
use crate::config::fleet::parse_address;
use crate::config::{expand_home, CheckSpec, TargetSpec, TransportKind};
use crate::model::{now_ms, Event, EventKind, Labels, Sample};

/// The first scrape of a new target starts within this, spread at random so that
/// many targets added at once do not connect at once.
const FIRST_SCRAPE_SPREAD: Duration = Duration::from_secs(1);
/// A repeated check error is recorded again only after this long.
const REPEAT_ERROR_AFTER: Duration = Duration::from_secs(600);
/// Consecutive command timeouts after which the session is presumed hung and reset.
const TIMEOUTS_BEFORE_RESET: u32 = 2;

fn build_transport(spec: &TargetSpec, ctx: &CollectorCtx) -> Result<Transport, String> {
    match spec.transport {
        TransportKind::Local => Ok(Transport::Local(LocalTransport)),
        TransportKind::Ssh => {
            let address = spec.address.as_deref().unwrap_or_default();
            let (host, port) = parse_address(address)?;
            let auth = match spec.key.as_deref() {
                Some(k) => SshAuth::KeyFile(expand_home(k)),
                None => match &ctx.default_key {
                    Some(k) => SshAuth::KeyFile(k.clone()),
                    None => SshAuth::Agent,
                },
            };
            let user = spec
                .user
                .clone()
                .unwrap_or_else(|| ctx.default_user.clone());
            Ok(Transport::Ssh(Box::new(SshTransport::new(
                SshTarget {
                    host,
                    port,
                    user,
                    auth,
                },
                ctx.ssh.clone(),
            ))))
        }
    }
}

pub async fn run_target(spec: TargetSpec, ctx: Arc<CollectorCtx>, cancel: CancellationToken) {
    let name = spec.name.clone();
    if let Ok(mut board) = ctx.board.write() {
        board.insert(
            name.clone(),
            TargetStatus {
                address: spec.address.clone().unwrap_or_else(|| "local".into()),
                transport: spec.transport.as_str().into(),
                interval: spec.interval.get(),
                ..Default::default()
            },
        );
    }
    let transport = match build_transport(&spec, &ctx) {
        Ok(t) => Arc::new(t),
        Err(message) => {
            tracing::error!(target_name = %name, error = %message, "cannot build transport");
            record_event(&ctx, &name, EventKind::CheckError, message).await;
            cancel.cancelled().await;
            return;
        }
    };
    tracing::info!(target_name = %name, transport = spec.transport.as_str(), "target started");
    let link = Arc::new(Mutex::new(Link::new(ctx.reconnect_min, ctx.reconnect_max)));
    let spec = Arc::new(spec);
    let mut loops = tokio::task::JoinSet::new();
    for check in spec.checks.clone() {
        loops.spawn(check_loop(
            spec.clone(),
            check,
            transport.clone(),
            link.clone(),
            ctx.clone(),
            cancel.clone(),
        ));
    }
    while loops.join_next().await.is_some() {}
    transport.close().await;
    tracing::info!(target_name = %name, "target stopped");
}

/// Reachability shared by the checks of one target.
type SharedLink = Arc<Mutex<Link>>;

async fn check_loop(
    spec: Arc<TargetSpec>,
    check: CheckSpec,
    transport: Arc<Transport>,
    link: SharedLink,
    ctx: Arc<CollectorCtx>,
    cancel: CancellationToken,
) {
    let interval = check.interval().unwrap_or(spec.interval).get();
    let timeout = check
        .timeout()
        .or(spec.timeout)
        .map(|t| t.get())
        .unwrap_or(ctx.command_timeout)
        .min(interval);
    let mut runner = Runner::new(&check);
    let spread = rand::rng().random_range(0.0..1.0);
    let mut next = Instant::now() + FIRST_SCRAPE_SPREAD.min(interval).mul_f64(spread);
    let mut retry_at: Option<Instant> = None;
    let mut last_error: Option<(String, Instant)> = None;
    let mut timeouts = 0u32;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep_until(next) => {}
        }
        let started = Instant::now();
        let late = started.saturating_duration_since(next);
        let ts = now_ms();
        let mut up = 1.0;
        let mut measurements = Vec::new();
        let mut error: Option<String> = None;
        if retry_at.is_some_and(|at| Instant::now() < at) {
            // Waiting out the reconnect backoff: still a fact worth a sample.
            up = 0.0;
            error = link.lock().ok().and_then(|l| l.reason().map(String::from));
        } else {
            let outcome = tokio::select! {
                _ = cancel.cancelled() => return,
                r = transport.exec(runner.command(), timeout, runner.max_output()) => r,
            };
            match outcome {
                Ok(out) => {
                    retry_at = None;
                    timeouts = 0;
                    let t = link
                        .lock()
                        .map(|mut l| l.success())
                        .unwrap_or(Transition::None);
                    if t == Transition::Up {
                        tracing::info!(target_name = %spec.name, "target is up again");
                        record_event(
                            &ctx,
                            &spec.name,
                            EventKind::TargetUp,
                            "target answers again".into(),
                        )
                        .await;
                    }
                    if let Transport::Ssh(ssh) = transport.as_ref() {
                        if let Some(fp) = ssh.take_learned_key() {
                            record_event(
                                &ctx,
                                &spec.name,
                                EventKind::HostKeyLearned,
                                format!("recorded new host key {fp} (accept-new)"),
                            )
                            .await;
                        }
                    }
                    match runner.ingest(&out, ts) {
                        Ok(m) => measurements = m,
                        Err(message) => error = Some(message),
                    }
                }
                Err(e) if e.is_unreachable() => {
                    up = 0.0;
                    let jitter = rand::rng().random_range(0.5..=1.0);
                    let (t, wait) = link
                        .lock()
                        .map(|mut l| l.failure(e.reason(), jitter))
                        .unwrap_or((Transition::None, ctx.reconnect_max));
                    retry_at = Some(Instant::now() + wait);
                    if let Transition::Down { .. } = t {
                        tracing::warn!(target_name = %spec.name, reason = e.reason(), error = %e, retry_in = ?wait, "target is down");
                        record_event(&ctx, &spec.name, down_kind(&e), e.to_string()).await;
                    }
                    error = Some(e.to_string());
                    // A changed host key is never retried quickly: it needs a person.
                    if matches!(e, TransportError::HostKeyChanged { .. }) {
                        retry_at = Some(Instant::now() + ctx.reconnect_max);
                    }
                }
                Err(e) => {
                    if matches!(e, TransportError::CommandTimeout { .. }) {
                        timeouts += 1;
                        if timeouts >= TIMEOUTS_BEFORE_RESET {
                            tracing::warn!(target_name = %spec.name, "commands keep timing out; resetting the session");
                            transport.reset().await;
                            timeouts = 0;
                        }
                    }
                    error = Some(format!("{}: {e}", check.kind()));
                }
            }
            if let Some(message) = error.as_ref().filter(|_| up == 1.0) {
                let repeat = last_error
                    .as_ref()
                    .is_some_and(|(m, at)| m == message && at.elapsed() < REPEAT_ERROR_AFTER);
                if !repeat {
                    tracing::warn!(target_name = %spec.name, check = check.kind(), error = %message, "check failed");
                    record_event(&ctx, &spec.name, EventKind::CheckError, message.clone()).await;
                    last_error = Some((message.clone(), Instant::now()));
                }
            } else if error.is_none() {
                last_error = None;
            }
        }
        let mut samples: Vec<Sample> = measurements
            .into_iter()
            .map(|m| Sample {
                target: spec.name.clone(),
                metric: m.metric,
                labels: m.labels,
                ts_ms: ts,
                value: m.value,
            })
            .collect();
        samples.push(Sample {
            target: spec.name.clone(),
            metric: "target.up".into(),
            labels: Labels::new(),
            ts_ms: ts,
            value: up,
        });
        ctx.stats.record(started.elapsed(), late);
        ctx.store.append(samples);
        if let Ok(mut board) = ctx.board.write() {
            if let Some(s) = board.get_mut(&spec.name) {
                s.up = Some(up == 1.0);
                s.last_scrape_ms = Some(ts);
                s.last_error = error;
                s.scrapes += 1;
            }
        }
        next += interval;
        let now = Instant::now();
        if next <= now {
            // Missed ticks are skipped, not bunched up.
            let behind = (now - next).as_nanos() / interval.as_nanos().max(1) + 1;
            next += interval * behind as u32;
        }
    }
}

fn down_kind(e: &TransportError) -> EventKind {
    match e {
        TransportError::HostKeyChanged { .. } => EventKind::HostKeyChanged,
        TransportError::HostKeyUnknown { .. } => EventKind::HostKeyUnknown,
        _ => EventKind::TargetDown,
    }
}

async fn record_event(ctx: &CollectorCtx, target: &str, kind: EventKind, message: String) {
    ctx.store
        .event(Event {
            ts_ms: now_ms(),
            target: target.to_string(),
            kind,
            message,
        })
        .await;
}
