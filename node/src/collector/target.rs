//! One target's task: builds its transport, runs each check on its own ticker,
//! tracks reachability and records samples, events and status.
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::checks::{CheckError, Env, Outcome, Runner, RunnerCtx, Status};
use super::link::{Link, Transition};
use super::{CheckState, CollectorCtx, TargetStatus};
use crate::config::fleet::parse_address;
use crate::config::{expand_home, CheckSpec, TargetSpec, TransportKind};
use crate::model::{now_ms, Event, EventKind, Labels, Sample};
use crate::store::RollupPoint;
use crate::transport::{
    LocalTransport, SshAuth, SshTarget, SshTransport, Transport, TransportError,
};

/// The first scrape of a new target starts at a random point of its first interval
/// (at most this long), which also sets its phase for life: targets applied together
/// spread over the interval instead of all scraping in the same second.
const FIRST_SCRAPE_SPREAD: Duration = Duration::from_secs(60);
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

/// `at_once`: the first scrape starts now (a target taken over from a dead node)
/// instead of at a random point of the first interval.
pub async fn run_target(
    spec: TargetSpec,
    ctx: Arc<CollectorCtx>,
    at_once: bool,
    cancel: CancellationToken,
) {
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
    if let Ok(mut t) = ctx.transports.write() {
        t.insert(name.clone(), transport.clone());
    }
    let link = Arc::new(Mutex::new(Link::new(ctx.reconnect)));
    let spec = Arc::new(spec);
    let mut loops = tokio::task::JoinSet::new();
    // target.up comes from one check only (the first that uses the transport), so
    // that it is one sample per interval however many checks a target has.
    let up_check = spec.checks.iter().position(|c| c.uses_transport());
    for (i, check) in spec.checks.clone().into_iter().enumerate() {
        loops.spawn(check_loop(
            spec.clone(),
            check,
            up_check == Some(i),
            at_once,
            transport.clone(),
            link.clone(),
            ctx.clone(),
            cancel.clone(),
        ));
    }
    while loops.join_next().await.is_some() {}
    if let Ok(mut t) = ctx.transports.write() {
        // Only our own entry: a successor task may already have put its own.
        if t.get(&name).is_some_and(|x| Arc::ptr_eq(x, &transport)) {
            t.remove(&name);
        }
    }
    transport.close().await;
    tracing::info!(target_name = %name, "target stopped");
}

/// Reachability shared by the checks of one target.
type SharedLink = Arc<Mutex<Link>>;

#[allow(clippy::too_many_arguments)]
async fn check_loop(
    spec: Arc<TargetSpec>,
    check: CheckSpec,
    emits_up: bool,
    at_once: bool,
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
    let uses_transport = check.uses_transport();
    let runner_ctx = RunnerCtx {
        store: &ctx.store,
        target: &spec.name,
        states: &ctx.states,
    };
    let mut runner = match Runner::new(&check, &runner_ctx) {
        Ok(r) => r,
        Err(message) => {
            record_event(&ctx, &spec.name, EventKind::CheckError, message).await;
            return;
        }
    };
    let check_labels = (check.kind() != "vitals").then(|| {
        let mut l = Labels::new();
        l.insert("check".into(), check.name().to_string());
        l
    });
    let spread = if at_once {
        0.0
    } else {
        rand::rng().random_range(0.0..1.0)
    };
    let mut next = Instant::now() + FIRST_SCRAPE_SPREAD.min(interval).mul_f64(spread);
    let mut retry_at: Option<Instant> = None;
    let mut last_error: Option<(String, Instant)> = None;
    let mut timeouts = 0u32;
    let mut last_status: Option<Status> = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep_until(next) => {}
        }
        let started = Instant::now();
        let late = started.saturating_duration_since(next);
        let ts = now_ms();
        let mut up: Option<bool> = None;
        let mut outcome = Outcome::default();
        let mut error: Option<String> = None;
        let waiting = uses_transport && retry_at.is_some_and(|at| Instant::now() < at);
        if waiting {
            // Waiting out the reconnect backoff: still a fact worth a sample.
            up = Some(false);
            error = link.lock().ok().and_then(|l| l.reason().map(String::from));
        } else {
            let env = Env {
                target: &spec,
                transport: &transport,
                timeout,
                ts_ms: ts,
            };
            let result = tokio::select! {
                _ = cancel.cancelled() => return,
                r = runner.run(&check, &env) => r,
            };
            match result {
                Ok(o) => {
                    outcome = o;
                    if uses_transport {
                        up = Some(true);
                        retry_at = None;
                        timeouts = 0;
                        target_answered(&spec, &transport, &link, &ctx).await;
                    }
                }
                Err(CheckError::Transport(e)) if e.is_unreachable() => {
                    up = Some(false);
                    let jitter = crate::model::retry::random_jitter();
                    let (t, wait) = link
                        .lock()
                        .map(|mut l| l.failure(e.reason(), jitter))
                        .unwrap_or((Transition::None, ctx.reconnect.max));
                    // A changed host key is never retried quickly: it needs a person.
                    let wait = if matches!(e, TransportError::HostKeyChanged { .. }) {
                        ctx.reconnect.max
                    } else {
                        wait
                    };
                    retry_at = Some(Instant::now() + wait);
                    if let Transition::Down { .. } = t {
                        tracing::warn!(target_name = %spec.name, reason = e.reason(), error = %e, retry_in = ?wait, "target is down");
                        record_event(&ctx, &spec.name, down_kind(&e), e.to_string()).await;
                    }
                    error = Some(e.to_string());
                }
                Err(CheckError::Transport(e)) => {
                    up = Some(true);
                    if matches!(e, TransportError::CommandTimeout { .. }) {
                        timeouts += 1;
                        if timeouts >= TIMEOUTS_BEFORE_RESET {
                            tracing::warn!(target_name = %spec.name, "commands keep timing out; resetting the session");
                            transport.reset().await;
                            timeouts = 0;
                        }
                    }
                    error = Some(format!("{} check {:?}: {e}", check.kind(), check.name()));
                    outcome.status = Some(Status::Unknown);
                }
                Err(CheckError::Failed(message)) => {
                    if uses_transport {
                        up = Some(true);
                    }
                    error = Some(message);
                    outcome.status = Some(Status::Unknown);
                }
            }
            let reachable_error = error.as_ref().filter(|_| up != Some(false));
            if let Some(message) = reachable_error {
                let repeat = last_error
                    .as_ref()
                    .is_some_and(|(m, at)| m == message && at.elapsed() < REPEAT_ERROR_AFTER);
                if !repeat {
                    tracing::warn!(target_name = %spec.name, check = check.name(), error = %message, "check failed");
                    record_event(&ctx, &spec.name, EventKind::CheckError, message.clone()).await;
                    last_error = Some((message.clone(), Instant::now()));
                }
            } else if error.is_none() {
                last_error = None;
            }
        }
        if up == Some(false) && check_labels.is_some() {
            // The check could not run: its verdict is unknown, not ok.
            outcome.status = Some(Status::Unknown);
        }
        if let Some(st) = outcome.status {
            // One event per change of verdict; a first verdict of ok is not news.
            let changed = match last_status {
                None => st != Status::Ok,
                Some(prev) => prev != st,
            };
            if changed {
                let detail = outcome
                    .detail
                    .clone()
                    .or_else(|| error.clone())
                    .unwrap_or_default();
                let from = last_status.map(Status::as_str).unwrap_or("new");
                outcome.events.push((
                    EventKind::CheckStatus,
                    format!(
                        "check {}: {from} -> {}: {detail}",
                        check.name(),
                        st.as_str()
                    ),
                ));
            }
            last_status = Some(st);
        }
        let verdict = outcome.status.map(|st| CheckState {
            kind: check.kind().to_string(),
            status: st.as_str().to_string(),
            detail: outcome
                .detail
                .clone()
                .or_else(|| error.clone())
                .unwrap_or_default(),
            ts_ms: ts,
        });
        if let Some(r) = outcome.rollup.take() {
            ctx.store.rollup(RollupPoint {
                target: spec.name.clone(),
                metric: "http.response_ms".into(),
                labels: check_labels.clone().unwrap_or_default(),
                ts_ms: ts,
                response_ms: r.response_ms,
                status: r.status,
            });
        }
        let events: Vec<Event> = outcome
            .events
            .drain(..)
            .map(|(kind, message)| Event {
                ts_ms: ts,
                target: spec.name.clone(),
                kind,
                message,
            })
            .collect();
        if let Some(rules) = &ctx.rules {
            for e in &events {
                rules.event(e);
            }
        }
        ctx.store
            .persist(events, std::mem::take(&mut outcome.persist))
            .await;
        let samples = samples_of(
            &spec.name,
            &check,
            check_labels.as_ref(),
            outcome,
            emits_up.then_some(up).flatten(),
            ts,
        );
        ctx.stats.record(started.elapsed(), late);
        if let Some(rules) = &ctx.rules {
            rules.samples(&samples);
        }
        ctx.store.append(samples);
        if let Ok(mut board) = ctx.board.write() {
            if let Some(s) = board.get_mut(&spec.name) {
                if let Some(u) = up.filter(|_| emits_up) {
                    s.up = Some(u);
                }
                s.last_scrape_ms = Some(ts);
                if emits_up || error.is_some() {
                    s.last_error = error;
                }
                s.scrapes += 1;
                if let Some(v) = verdict {
                    s.checks.insert(check.name().to_string(), v);
                }
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

/// The target answered: record the way back up and a newly learned host key.
async fn target_answered(
    spec: &TargetSpec,
    transport: &Transport,
    link: &SharedLink,
    ctx: &CollectorCtx,
) {
    let t = link
        .lock()
        .map(|mut l| l.success())
        .unwrap_or(Transition::None);
    if t == Transition::Up {
        tracing::info!(target_name = %spec.name, "target is up again");
        record_event(
            ctx,
            &spec.name,
            EventKind::TargetUp,
            "target answers again".into(),
        )
        .await;
    }
    if let Transport::Ssh(ssh) = transport {
        if let Some(fp) = ssh.take_learned_key() {
            record_event(
                ctx,
                &spec.name,
                EventKind::HostKeyLearned,
                format!("recorded new host key {fp} (accept-new)"),
            )
            .await;
        }
    }
}

/// Stamps a check's outcome into samples: its measurements (labelled with the
/// check's name, except vitals), `check.status{check,kind}` and `target.up`.
fn samples_of(
    target: &str,
    check: &CheckSpec,
    check_labels: Option<&Labels>,
    outcome: Outcome,
    up: Option<bool>,
    ts: i64,
) -> Vec<Sample> {
    let mut samples: Vec<Sample> = outcome
        .measurements
        .into_iter()
        .map(|m| {
            let mut labels = m.labels;
            if let Some(extra) = check_labels {
                labels.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
            Sample {
                target: target.to_string(),
                metric: m.metric,
                labels,
                ts_ms: ts,
                value: m.value,
            }
        })
        .collect();
    if let (Some(status), Some(labels)) = (outcome.status, check_labels) {
        let mut labels = labels.clone();
        labels.insert("kind".into(), check.kind().into());
        samples.push(Sample {
            target: target.to_string(),
            metric: "check.status".into(),
            labels,
            ts_ms: ts,
            value: status.code(),
        });
    }
    if let Some(up) = up {
        samples.push(Sample {
            target: target.to_string(),
            metric: "target.up".into(),
            labels: Labels::new(),
            ts_ms: ts,
            value: if up { 1.0 } else { 0.0 },
        });
    }
    samples
}

fn down_kind(e: &TransportError) -> EventKind {
    match e {
        TransportError::HostKeyChanged { .. } => EventKind::HostKeyChanged,
        TransportError::HostKeyUnknown { .. } => EventKind::HostKeyUnknown,
        _ => EventKind::TargetDown,
    }
}

async fn record_event(ctx: &CollectorCtx, target: &str, kind: EventKind, message: String) {
    let e = Event {
        ts_ms: now_ms(),
        target: target.to_string(),
        kind,
        message,
    };
    if let Some(rules) = &ctx.rules {
        rules.event(&e);
    }
    ctx.store.event(e).await;
}
