//! One target's task: builds its transport, runs each check on its own ticker,
//! tracks reachability and records samples, events and status.
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::checks::{CheckError, Env, Outcome, Runner, RunnerCtx, Status};
use super::link::{Link, Transition};
use super::{CheckState, CollectorCtx, TargetStatus};
use crate::config::fleet::parse_address;
use crate::config::{expand_home, CheckSpec, TargetSpec, TransportKind};
use crate::model::net::AddressError;
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

/// The target's transport; an SSH target's address may be wrong.
fn build_transport(spec: &TargetSpec, ctx: &CollectorCtx) -> Result<Transport, AddressError> {
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
    parked: watch::Receiver<bool>,
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
        Err(e) => {
            tracing::error!(target_name = %name, error = %e, "cannot build transport");
            record_event(&ctx, &name, EventKind::CheckError, e.to_string()).await;
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
    let start = if at_once {
        FirstTick::Now
    } else {
        match last_up_ms(&ctx, &name, spec.interval.get()).await {
            Some(ms) => FirstTick::After(ms),
            None => FirstTick::Spread,
        }
    };
    for (i, check) in spec.checks.clone().into_iter().enumerate() {
        loops.spawn(check_loop(
            spec.clone(),
            check,
            up_check == Some(i),
            start,
            transport.clone(),
            link.clone(),
            ctx.clone(),
            parked.clone(),
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

/// When a check's first scrape starts.
#[derive(Debug, Clone, Copy)]
enum FirstTick {
    /// Now: a target taken over from a dead node.
    Now,
    /// On the phase the target had before (the Unix ms of its last `target.up` in
    /// this node's store): a node restarted (a rolling upgrade) scrapes when the
    /// old process would have, or at once if that moment passed less than an
    /// interval ago — not up to an interval later, and without bunching targets
    /// whose phases were spread.
    After(i64),
    /// At a random point of the first interval: a target new to this node.
    Spread,
}

/// The time of the target's last `target.up` sample in this node's store, if it
/// is recent (within two intervals): the node scraped it before a restart.
async fn last_up_ms(ctx: &CollectorCtx, target: &str, interval: Duration) -> Option<i64> {
    let (store, target) = (ctx.store.clone(), target.to_string());
    let now = now_ms();
    let back = i64::try_from(interval.as_millis())
        .unwrap_or(i64::MAX)
        .saturating_mul(2);
    tokio::task::spawn_blocking(move || {
        store
            .query(
                &target,
                "target.up",
                &Labels::new(),
                now.saturating_sub(back),
                now + 1,
            )
            .ok()?
            .iter()
            .filter_map(|s| s.points.last().map(|p| p.0))
            .max()
    })
    .await
    .ok()
    .flatten()
}

/// How long from `now_ms` until the first scrape of a check last run at `last_ms`
/// every `interval`: its next moment on the old phase when that is ahead; none
/// when it passed less than an interval ago; else the next moment of the old phase.
fn resume_delay(last_ms: i64, interval: Duration, now_ms: i64) -> Duration {
    let every = i64::try_from(interval.as_millis())
        .unwrap_or(i64::MAX)
        .max(1);
    let due = last_ms.saturating_add(every) - now_ms;
    let ms = if due > 0 {
        due.min(every)
    } else if due > -every {
        0
    } else {
        due.rem_euclid(every)
    };
    Duration::from_millis(ms as u64)
}

/// Reachability shared by the checks of one target.
type SharedLink = Arc<Mutex<Link>>;

/// One check's loop on one target: waits for its tick, runs the check, records
/// what it found, and schedules the next tick, until `cancel`.
#[allow(clippy::too_many_arguments)]
async fn check_loop(
    spec: Arc<TargetSpec>,
    check: CheckSpec,
    emits_up: bool,
    start: FirstTick,
    transport: Arc<Transport>,
    link: SharedLink,
    ctx: Arc<CollectorCtx>,
    mut parked: watch::Receiver<bool>,
    cancel: CancellationToken,
) {
    let Some(mut lp) = CheckLoop::new(spec, check, emits_up, transport, link, ctx).await else {
        return;
    };
    let mut next = lp.first_tick(start);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep_until(next) => {}
        }
        if *parked.borrow_and_update() {
            // Fenced: no scrape until the lease is back; then at once (the ticks
            // missed meanwhile are not run twice).
            tokio::select! {
                _ = cancel.cancelled() => return,
                back = parked.wait_for(|p| !*p) => if back.is_err() { return },
            }
            next = next.max(Instant::now());
        }
        if !lp.ctx.may_act() {
            // The lease ran out and the view does not say so yet: look again soon
            // (the view parks the task, or the lease comes back).
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(LEASE_RECHECK) => {}
            }
            next = next.max(Instant::now());
            continue;
        }
        // The lease lost mid-scrape: what it finds is not this node's to record
        // (another node may own the target by now).
        let run = tokio::select! {
            run = lp.run_once(next, &cancel) => run,
            _ = parked.wait_for(|p| *p) => {
                next = next_tick(next, lp.interval);
                continue;
            }
        };
        let Some(mut run) = run else {
            return;
        };
        lp.judge_status(&mut run);
        lp.record(run).await;
        next = next_tick(next, lp.interval);
    }
}

/// How soon a scrape held back by a lease that ran out looks again.
const LEASE_RECHECK: std::time::Duration = std::time::Duration::from_millis(50);

/// One check of one target, and what its loop remembers between runs.
struct CheckLoop {
    spec: Arc<TargetSpec>,
    check: CheckSpec,
    /// This check's runs give the target's `target.up` (one check per target).
    emits_up: bool,
    transport: Arc<Transport>,
    link: SharedLink,
    ctx: Arc<CollectorCtx>,
    runner: Runner,
    interval: Duration,
    timeout: Duration,
    uses_transport: bool,
    /// `check=NAME` on the check's samples; None for vitals.
    check_labels: Option<Labels>,
    /// A down target is not tried again before this (the reconnect backoff).
    retry_at: Option<Instant>,
    /// The last check error recorded, and when: the same one waits to be recorded again.
    last_error: Option<(String, Instant)>,
    /// Command timeouts in a row.
    timeouts: u32,
    /// The check's last verdict.
    last_status: Option<Status>,
}

/// What one run of a check came to.
struct Run {
    started: Instant,
    /// How long after its tick the run started.
    late: Duration,
    ts: i64,
    up: Option<bool>,
    outcome: Outcome,
    error: Option<String>,
}

impl CheckLoop {
    /// The loop's settings and runner; None (and an event) when the check cannot run.
    async fn new(
        spec: Arc<TargetSpec>,
        check: CheckSpec,
        emits_up: bool,
        transport: Arc<Transport>,
        link: SharedLink,
        ctx: Arc<CollectorCtx>,
    ) -> Option<CheckLoop> {
        let interval = check.interval().unwrap_or(spec.interval).get();
        let timeout = check
            .timeout()
            .or(spec.timeout)
            .map(|t| t.get())
            .unwrap_or(ctx.command_timeout)
            .min(interval);
        // A runner may read the store (a tail's offset, a saved tree): off the async
        // workers, as a compaction of the live file makes reads wait.
        let made = {
            let (ctx, spec, check) = (ctx.clone(), spec.clone(), check.clone());
            tokio::task::spawn_blocking(move || {
                let runner_ctx = RunnerCtx {
                    store: &ctx.store,
                    marks: ctx.marks.as_deref(),
                    target: &spec.name,
                    states: &ctx.states,
                };
                Runner::new(&check, &runner_ctx).map_err(|e| e.to_string())
            })
            .await
            .unwrap_or_else(|e| Err(format!("the check's runner could not be made: {e}")))
        };
        let runner = match made {
            Ok(r) => r,
            Err(e) => {
                record_event(&ctx, &spec.name, EventKind::CheckError, e).await;
                return None;
            }
        };
        let check_labels = (check.kind() != "vitals").then(|| {
            let mut l = Labels::new();
            l.insert("check".into(), check.name().to_string());
            l
        });
        Some(CheckLoop {
            uses_transport: check.uses_transport(),
            spec,
            check,
            emits_up,
            transport,
            link,
            ctx,
            runner,
            interval,
            timeout,
            check_labels,
            retry_at: None,
            last_error: None,
            timeouts: 0,
            last_status: None,
        })
    }

    /// The first tick (see [`FirstTick`]).
    fn first_tick(&self, start: FirstTick) -> Instant {
        let wait = match start {
            FirstTick::Now => Duration::ZERO,
            FirstTick::After(last) => resume_delay(last, self.interval, now_ms()),
            FirstTick::Spread => FIRST_SCRAPE_SPREAD
                .min(self.interval)
                .mul_f64(rand::rng().random_range(0.0..1.0)),
        };
        Instant::now() + wait
    }

    /// Runs the check once (or, while the target is down, waits out the reconnect
    /// backoff and says so); None when cancelled mid-run.
    async fn run_once(&mut self, tick: Instant, cancel: &CancellationToken) -> Option<Run> {
        let started = Instant::now();
        let mut run = Run {
            started,
            late: started.saturating_duration_since(tick),
            ts: now_ms(),
            up: None,
            outcome: Outcome::default(),
            error: None,
        };
        let waiting = self.uses_transport && self.retry_at.is_some_and(|at| Instant::now() < at);
        if waiting {
            // Waiting out the reconnect backoff: still a fact worth a sample.
            run.up = Some(false);
            run.error = self
                .link
                .lock()
                .ok()
                .and_then(|l| l.reason().map(String::from));
            return Some(run);
        }
        let env = Env {
            target: &self.spec,
            transport: &self.transport,
            timeout: self.timeout,
            ts_ms: run.ts,
        };
        let result = tokio::select! {
            _ = cancel.cancelled() => return None,
            r = self.runner.run(&self.check, &env) => r,
        };
        self.take_result(result, &mut run).await;
        self.record_check_error(&run).await;
        Some(run)
    }

    /// Reads a run's result: up or down, the outcome, the error; keeps the link,
    /// the backoff and the timeout count.
    async fn take_result(&mut self, result: Result<Outcome, CheckError>, run: &mut Run) {
        match result {
            Ok(o) => {
                run.outcome = o;
                if self.uses_transport {
                    run.up = Some(true);
                    self.retry_at = None;
                    self.timeouts = 0;
                    target_answered(&self.spec, &self.transport, &self.link, &self.ctx).await;
                }
            }
            Err(CheckError::Transport(e)) if e.is_unreachable() => {
                run.up = Some(false);
                self.target_unreachable(&e).await;
                run.error = Some(e.to_string());
            }
            Err(CheckError::Transport(e)) => {
                run.up = Some(true);
                if matches!(e, TransportError::CommandTimeout { .. }) {
                    self.command_timed_out().await;
                }
                run.error = Some(format!(
                    "{} check {:?}: {e}",
                    self.check.kind(),
                    self.check.name()
                ));
                run.outcome.status = Some(Status::Unknown);
            }
            Err(CheckError::Failed(message)) => {
                if self.uses_transport {
                    run.up = Some(true);
                }
                run.error = Some(message);
                run.outcome.status = Some(Status::Unknown);
            }
        }
    }

    /// The target did not answer: back off, and record it going down.
    async fn target_unreachable(&mut self, e: &TransportError) {
        let jitter = crate::model::retry::random_jitter();
        let (t, wait) = self
            .link
            .lock()
            .map(|mut l| l.failure(e.reason(), jitter))
            .unwrap_or((Transition::None, self.ctx.reconnect.max));
        // A changed host key is never retried quickly: it needs a person.
        let wait = if matches!(e, TransportError::HostKeyChanged { .. }) {
            self.ctx.reconnect.max
        } else {
            wait
        };
        self.retry_at = Some(Instant::now() + wait);
        if let Transition::Down { .. } = t {
            tracing::warn!(target_name = %self.spec.name, reason = e.reason(), error = %e, retry_in = ?wait, "target is down");
            record_event(&self.ctx, &self.spec.name, down_kind(e), e.to_string()).await;
        }
    }

    /// A command timed out: after a few in a row the session is presumed hung and reset.
    async fn command_timed_out(&mut self) {
        self.timeouts += 1;
        if self.timeouts >= TIMEOUTS_BEFORE_RESET {
            tracing::warn!(target_name = %self.spec.name, "commands keep timing out; resetting the session");
            self.transport.reset().await;
            self.timeouts = 0;
        }
    }

    /// An error of a reachable target becomes an event, the same one again only
    /// after REPEAT_ERROR_AFTER.
    async fn record_check_error(&mut self, run: &Run) {
        let reachable_error = run.error.as_ref().filter(|_| run.up != Some(false));
        if let Some(message) = reachable_error {
            let repeat = self
                .last_error
                .as_ref()
                .is_some_and(|(m, at)| m == message && at.elapsed() < REPEAT_ERROR_AFTER);
            if !repeat {
                tracing::warn!(target_name = %self.spec.name, check = self.check.name(), error = %message, "check failed");
                record_event(
                    &self.ctx,
                    &self.spec.name,
                    EventKind::CheckError,
                    message.clone(),
                )
                .await;
                self.last_error = Some((message.clone(), Instant::now()));
            }
        } else if run.error.is_none() {
            self.last_error = None;
        }
    }

    /// The run's verdict (unknown when the check could not run), with an event
    /// when it changed.
    fn judge_status(&mut self, run: &mut Run) {
        if run.up == Some(false) && self.check_labels.is_some() {
            // The check could not run: its verdict is unknown, not ok.
            run.outcome.status = Some(Status::Unknown);
        }
        let Some(st) = run.outcome.status else {
            return;
        };
        // One event per change of verdict; a first verdict of ok is not news.
        let changed = match self.last_status {
            None => st != Status::Ok,
            Some(prev) => prev != st,
        };
        if changed {
            let detail = run
                .outcome
                .detail
                .clone()
                .or_else(|| run.error.clone())
                .unwrap_or_default();
            let from = self.last_status.map(Status::as_str).unwrap_or("new");
            run.outcome.events.push((
                EventKind::CheckStatus,
                format!(
                    "check {}: {from} -> {}: {detail}",
                    self.check.name(),
                    st.as_str()
                ),
            ));
        }
        self.last_status = Some(st);
    }

    /// Records a run: its rollup, events and persisted state, its samples (to the
    /// rules and the store), the scrape's timing, and the target's status board.
    async fn record(&self, mut run: Run) {
        let verdict = run.outcome.status.map(|st| CheckState {
            kind: self.check.kind().to_string(),
            status: st.as_str().to_string(),
            detail: run
                .outcome
                .detail
                .clone()
                .or_else(|| run.error.clone())
                .unwrap_or_default(),
            ts_ms: run.ts,
        });
        self.persist_events(&mut run).await;
        let samples: std::sync::Arc<[crate::model::Sample]> = samples_of(
            &self.spec.name,
            &self.check,
            self.check_labels.as_ref(),
            run.outcome,
            self.emits_up.then_some(run.up).flatten(),
            run.ts,
        )
        .into();
        self.ctx.stats.record(run.started.elapsed(), run.late);
        if let Some(rules) = &self.ctx.rules {
            rules.samples(&samples);
        }
        self.ctx.store.append(samples);
        self.update_board(run.up, run.error, run.ts, verdict);
    }

    /// The run's response-time rollup, its events (to the rules too) and the
    /// state the check persists.
    async fn persist_events(&self, run: &mut Run) {
        let ctx = &self.ctx;
        if let Some(r) = run.outcome.rollup.take() {
            ctx.store.rollup(RollupPoint {
                target: self.spec.name.clone(),
                metric: "http.response_ms".into(),
                labels: self.check_labels.clone().unwrap_or_default(),
                ts_ms: run.ts,
                response_ms: r.response_ms,
                status: r.status,
            });
        }
        let events: Vec<Event> = run
            .outcome
            .events
            .drain(..)
            .map(|(kind, message)| Event {
                ts_ms: run.ts,
                target: self.spec.name.clone(),
                kind,
                message,
            })
            .collect();
        if let Some(rules) = &ctx.rules {
            for e in &events {
                rules.event(e);
            }
        }
        if let Some(marks) = &ctx.marks {
            for (key, value) in &run.outcome.persist {
                if super::checks::tail::is_tail_key(key) {
                    marks.put(key, value);
                }
            }
        }
        ctx.store
            .persist(events, std::mem::take(&mut run.outcome.persist))
            .await;
    }

    /// The target's line on the status board: up, last scrape and error, verdict.
    fn update_board(
        &self,
        up: Option<bool>,
        error: Option<String>,
        ts: i64,
        verdict: Option<CheckState>,
    ) {
        let Ok(mut board) = self.ctx.board.write() else {
            return;
        };
        let Some(s) = board.get_mut(&self.spec.name) else {
            return;
        };
        if let Some(u) = up.filter(|_| self.emits_up) {
            s.up = Some(u);
        }
        s.last_scrape_ms = Some(ts);
        if self.emits_up || error.is_some() {
            s.last_error = error;
        }
        s.scrapes += 1;
        if let Some(v) = verdict {
            s.checks.insert(self.check.name().to_string(), v);
        }
    }
}

/// The tick after `next`: one interval on; missed ticks are skipped, not bunched up.
fn next_tick(next: Instant, interval: Duration) -> Instant {
    let mut next = next + interval;
    let now = Instant::now();
    if next <= now {
        let behind = (now - next).as_nanos() / interval.as_nanos().max(1) + 1;
        next += interval * behind as u32;
    }
    next
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
        let mode = ssh.mode();
        if let Ok(mut board) = ctx.board.write() {
            if let Some(s) = board.get_mut(&spec.name) {
                if s.exec_mode != mode {
                    s.exec_mode = mode;
                }
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restarted_node_resumes_each_target_on_its_old_phase() {
        let every = Duration::from_secs(10);
        let s = |ms: u64| Duration::from_millis(ms);
        // Last scraped 4 s ago: next on the old phase, in 6 s.
        assert_eq!(resume_delay(96_000, every, 100_000), s(6_000));
        // Due 2 s ago (the restart crossed it): at once, not 8 s later.
        assert_eq!(resume_delay(88_000, every, 100_000), s(0));
        // Down for a long while: the old phase again, not every target at once.
        assert_eq!(resume_delay(53_000, every, 100_000), s(3_000));
        // A clock stepped back: never more than one interval away.
        assert_eq!(resume_delay(130_000, every, 100_000), s(10_000));
    }
}
