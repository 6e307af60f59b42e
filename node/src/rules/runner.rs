//! The rules task: feeds samples and events of owned targets to the engine, ticks
//! its timers, and writes each transition with its notifications (routed, minus
//! silenced ones) in one store transaction, then wakes the outbox worker.
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::action::{self, Actions};
use super::engine::{Engine, Transition};
use crate::config::rules::{effective_rules, Action, RuleSpec};
use crate::config::FleetSpec;
use crate::model::StateBoard;
use crate::model::{now_ms, Alert, Event, EventKind, Notification, NotifyKind, Sample, Severity};
use crate::ownership::OwnedRx;
use crate::store::alerting::{idempotency_key, Outbox};
use crate::store::alerting::{OutboxEntry, Sender, Silence, TransitionRecord};
use crate::store::{AlertingBatch, Store};
use crate::transport::Transports;

/// Inputs queued for the engine; beyond this they are dropped and counted.
const QUEUE_DEPTH: usize = 10_000;
/// A loss of inputs is logged at most this often.
const LOSS_LOG_EVERY_MS: i64 = 10_000;
/// Timers (`for`, dead-man, hysteresis) are checked this often.
const TICK: Duration = Duration::from_secs(1);
/// How stale the alerts readers see (`herd alerts`, the API) may be between two
/// transitions: values move with samples, the copy is not made per sample.
const PUBLISH_EVERY: Duration = Duration::from_millis(250);
/// Most inputs taken in one round of the rules task: the transitions of a round
/// are recorded together (one store commit with its fsync, one herd write).
/// One input alone when nothing else waits; a storm's are taken 512 at a time.
const MAX_INPUTS_PER_ROUND: usize = 512;

pub enum Input {
    /// A scrape's samples, shared with the store (not copied).
    Samples(Arc<[Sample]>),
    Event(Event),
    Ack {
        id: String,
        by: String,
        reply: oneshot::Sender<Option<Alert>>,
    },
}

/// What the rest of the node uses to talk to the rules task.
#[derive(Clone)]
pub struct RulesHandle {
    tx: mpsc::Sender<Input>,
    /// The engine's alerts as last published, shared with it (see [`publish`]).
    alerts: Arc<RwLock<Vec<Arc<Alert>>>>,
    silences: Arc<RwLock<Vec<Silence>>>,
    store: Store,
    pub dropped: Arc<AtomicU64>,
    /// When a loss was last logged (Unix ms).
    loss_logged_ms: Arc<std::sync::atomic::AtomicI64>,
    /// Alert changes go to the herd here (committed through Raft, so that a new
    /// owner continues them).
    replicate: Option<mpsc::UnboundedSender<AlertDelta>>,
    /// How many transitions of an alert the herd has recorded (its applied state):
    /// an action runs only once the herd recorded its transition.
    recorded: Option<Recorded>,
    /// In a herd, the herd grants each action run (once per transition,
    /// max_per_hour herd-wide).
    claim: Option<super::action::ClaimAction>,
    /// How long a resolved alert is kept before it is forgotten (`[store]
    /// resolved_retention`).
    resolved_retention_ms: i64,
}

/// Reads the transition count of an alert (by id) in the herd's applied state.
pub type Recorded = Arc<dyn Fn(&str) -> Option<u64> + Send + Sync>;

/// Longest wait for the herd to record a transition before its action runs; then
/// the action is not run (the node is cut from the leader, and the target's next
/// owner redoes the transition and runs it).
const RECORD_WAIT: Duration = Duration::from_secs(5);
/// How often the herd's record is looked at while waiting.
const RECORD_POLL: Duration = Duration::from_millis(20);

/// Alerts changed (upserts) and ended (deleted) by this node's engine, the
/// notifications it queued for them and the keys of those its outbox finished.
#[derive(Debug, Default)]
pub struct AlertDelta {
    pub upserts: Vec<Alert>,
    pub deleted: Vec<String>,
    pub queued: Vec<OutboxEntry>,
    pub delivered: Vec<String>,
    /// Settled alerts the engine forgot: the herd keeps only their counts.
    pub forgotten: Vec<crate::model::ForgottenAlert>,
    /// The ownership map the upserts and deletions were made under (0: none made).
    pub ownership_version: u64,
}

impl AlertDelta {
    fn is_empty(&self) -> bool {
        self.upserts.is_empty()
            && self.deleted.is_empty()
            && self.queued.is_empty()
            && self.delivered.is_empty()
            && self.forgotten.is_empty()
    }
}

impl crate::model::InputSink for RulesHandle {
    fn samples(&self, samples: &Arc<[Sample]>) {
        RulesHandle::samples(self, samples)
    }
    fn event(&self, e: &Event) {
        RulesHandle::event(self, e)
    }
}

impl RulesHandle {
    pub fn samples(&self, samples: &Arc<[Sample]>) {
        if self.tx.try_send(Input::Samples(samples.clone())).is_err() {
            self.lost(samples.len() as u64, "samples");
        }
    }

    pub fn event(&self, e: &Event) {
        if self.tx.try_send(Input::Event(e.clone())).is_err() {
            self.lost(1, "an event");
        }
    }

    /// A full queue loses inputs: counted (`herd status` shows the count) and
    /// logged at most every [`LOSS_LOG_EVERY_MS`], never silent.
    fn lost(&self, n: u64, what: &str) {
        let total = self.dropped.fetch_add(n, Ordering::Relaxed) + n;
        let now = crate::model::now_ms();
        let last = self.loss_logged_ms.load(Ordering::Relaxed);
        if now - last >= LOSS_LOG_EVERY_MS
            && self
                .loss_logged_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                lost_total = total,
                queue = QUEUE_DEPTH,
                "the rules queue is full: {what} not evaluated (rules fall behind; see rules_inputs_dropped in herd status)"
            );
        }
    }

    /// Inputs the rules never saw because their queue was full, since start.
    pub fn inputs_dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub async fn ack(&self, id: &str, by: &str) -> Option<Alert> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Input::Ack {
                id: id.to_string(),
                by: by.to_string(),
                reply,
            })
            .await
            .ok()?;
        rx.await.ok().flatten()
    }

    /// Current alerts (pending, firing, recently resolved).
    pub fn alerts(&self) -> Vec<Arc<Alert>> {
        self.alerts.read().map(|a| a.clone()).unwrap_or_default()
    }

    pub fn silences(&self) -> Vec<Silence> {
        self.silences.read().map(|s| s.clone()).unwrap_or_default()
    }

    /// How long resolved alerts are kept before they are forgotten (set before
    /// the task starts).
    pub fn set_resolved_retention(&mut self, retention: Duration) {
        self.resolved_retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    }

    /// The silences in force (the herd's, as applied on this node: they are
    /// committed through Raft, so every node has them, down ones included once back).
    pub fn set_silences(&self, list: Vec<Silence>) {
        if let Ok(mut s) = self.silences.write() {
            *s = list;
        }
    }
}

/// Creates the handle (silences come later, from the herd's state) and the
/// engine's queue.
/// Alert changes are also sent to `replicate`, when given; actions wait for
/// `recorded` to show their transition, when given.
pub fn channel(
    store: &Store,
    replicate: Option<mpsc::UnboundedSender<AlertDelta>>,
    recorded: Option<Recorded>,
    claim: Option<super::action::ClaimAction>,
) -> (RulesHandle, mpsc::Receiver<Input>) {
    let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
    let handle = RulesHandle {
        tx,
        alerts: Arc::new(RwLock::new(Vec::new())),
        silences: Arc::new(RwLock::new(Vec::new())),
        store: store.clone(),
        dropped: Arc::new(AtomicU64::new(0)),
        loss_logged_ms: Arc::default(),
        replicate,
        recorded,
        claim,
        resolved_retention_ms: super::engine::RESOLVED_RETENTION_MS,
    };
    (handle, rx)
}

/// State of the task besides the engine: the spec in force and the last seen
/// json_state values (the engine is told about changes only).
struct Ctx {
    handle: RulesHandle,
    transports: Transports,
    actions: Arc<Actions>,
    notifier: Arc<dyn Outbox>,
    spec: Arc<FleetSpec>,
    rules: HashMap<String, RuleSpec>,
    states: StateBoard,
    seen_state: HashMap<(String, String), Value>,
    /// The json_state trees of each target as of the last tick (by check name's
    /// order), and the paths the rules read then: only trees replaced since are
    /// looked at again.
    seen_trees: HashMap<String, Vec<Arc<Value>>>,
    state_paths: Vec<String>,
    /// What this node owns now, read again right before an action runs.
    owned: OwnedRx,
    /// The version of the ownership map the engine last followed: alert changes
    /// go to the herd fenced by it (the herd refuses those of a tenure that ended).
    followed_version: u64,
}

/// The rules task: starts from the stored alerts and the spec in force, then
/// follows changes of the spec and ownership, takes samples, events and acks,
/// and ticks the engine's timers; every transition is recorded as it happens.
pub async fn run(
    handle: RulesHandle,
    mut rx: mpsc::Receiver<Input>,
    mut owned: OwnedRx,
    notifier: Arc<dyn Outbox>,
    states: StateBoard,
    transports: Transports,
    cancel: CancellationToken,
) {
    let (mut ctx, mut engine) = start(handle, &mut owned, notifier, states, transports).await;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Alerts change value with nearly every sample: the copy readers see is made
    // at once after a transition, an ack or an ownership change, else at most
    // every PUBLISH_EVERY (not once per input).
    let mut published = std::time::Instant::now();
    let mut dirty = false;
    loop {
        let (transitions, urgent) = tokio::select! {
            _ = cancel.cancelled() => break,
            changed = owned.changed() => {
                if changed.is_err() {
                    break;
                }
                let current = owned.borrow_and_update().clone();
                follow_owned(&mut ctx, &mut engine, &current).await;
                (Vec::new(), true)
            }
            input = rx.recv() => match input {
                None => break,
                Some(input) => {
                    let mut ack = matches!(input, Input::Ack { .. });
                    let mut transitions = take_input(&ctx, &mut engine, input).await;
                    // What queued meanwhile joins this round (a storm: thousands of
                    // targets breach at once), in order: its transitions are recorded
                    // in one store commit and one herd write, not one each.
                    for _ in 1..MAX_INPUTS_PER_ROUND {
                        let Ok(more) = rx.try_recv() else { break };
                        ack |= matches!(more, Input::Ack { .. });
                        transitions.extend(take_input(&ctx, &mut engine, more).await);
                    }
                    (transitions, ack)
                }
            },
            _ = tick.tick() => {
                // Fenced (parked within the grace): the timers wait; nothing here
                // may fire, resolve or notify for targets another node may own.
                if ctx.owned.borrow().fenced {
                    (Vec::new(), false)
                } else {
                    let now = now_ms();
                    let mut t = state_changes(&mut ctx, &mut engine, now);
                    t.extend(engine.tick(now));
                    keep_alive(&ctx, &engine, now);
                    (t, false)
                }
            }
        };
        let urgent = urgent || !transitions.is_empty();
        if !transitions.is_empty() {
            record(&ctx, transitions).await;
        }
        let forgotten = engine.take_forgotten();
        if !forgotten.is_empty() {
            forget_in_herd(&ctx, forgotten);
        }
        dirty = true;
        if urgent || published.elapsed() >= PUBLISH_EVERY {
            publish(&ctx, &engine);
            published = std::time::Instant::now();
            dirty = false;
        }
    }
    if dirty {
        publish(&ctx, &engine);
    }
}

/// The engine, from the stored alerts and the spec in force, and the task's
/// state; the outbox gets the spec's channels and the notices taken over.
async fn start(
    handle: RulesHandle,
    owned: &mut OwnedRx,
    notifier: Arc<dyn Outbox>,
    states: StateBoard,
    transports: Transports,
) -> (Ctx, Engine) {
    let store = handle.store.clone();
    let restored = tokio::task::spawn_blocking(move || store.alerts())
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let current = owned.borrow_and_update().clone();
    let rules = effective_rules(&current.spec.rules);
    let active: Vec<_> = current.active().cloned().collect();
    let mut engine = Engine::new(rules.clone(), &active, restored);
    engine.set_resolved_retention(handle.resolved_retention_ms);
    engine.continue_forgotten(&current.forgotten);
    // Before any spec is applied there is nothing to deliver: the outbox waits for
    // the channels of a real spec (an entry queued before a restart must not meet
    // an empty channel list and be given up).
    if current.spec_version > 0 {
        notifier.configure(&current.spec.channels).await;
    }
    let ctx = Ctx {
        handle,
        transports,
        actions: Arc::new(Actions::default()),
        notifier,
        spec: current.spec.clone(),
        rules: rules.into_iter().map(|r| (r.name.clone(), r)).collect(),
        states,
        seen_state: HashMap::new(),
        seen_trees: HashMap::new(),
        state_paths: Vec::new(),
        owned: owned.clone(),
        followed_version: current.ownership_version,
    };
    take_over_notices(&ctx, &current.notices).await;
    publish(&ctx, &engine);
    (ctx, engine)
}

/// A new spec or ownership: the engine follows it, alerts of targets taken over
/// continue, the outbox gets the spec's channels and the notices taken over, and
/// the alerts the engine dropped are forgotten.
async fn follow_owned(ctx: &mut Ctx, engine: &mut Engine, current: &crate::ownership::Owned) {
    // Parked (fenced, within the grace): the engine keeps its alerts as they are;
    // nothing ends, starts or is handed over until the lease is back or the grace
    // is over.
    if current.fenced && !current.targets.is_empty() {
        return;
    }
    ctx.followed_version = current.ownership_version;
    let rules = effective_rules(&current.spec.rules);
    let dropped = reconfigure(ctx, engine, current, &rules).await;
    // Alerts of targets taken over continue where their last owner left them.
    let adopted = engine.adopt(current.alerts.clone());
    engine.continue_forgotten(&current.forgotten);
    if adopted > 0 {
        tracing::info!(adopted, "continuing alerts of targets taken over");
    }
    ctx.rules = rules.into_iter().map(|r| (r.name.clone(), r)).collect();
    ctx.spec = current.spec.clone();
    if current.spec_version > 0 {
        ctx.notifier.configure(&current.spec.channels).await;
    }
    take_over_notices(ctx, &current.notices).await;
    if !dropped.is_empty() {
        let batch = AlertingBatch {
            deleted: dropped,
            ..Default::default()
        };
        if let Err(e) = ctx.handle.store.alerting(batch).await {
            tracing::error!(error = %e, "cannot forget alerts of removed rules or targets");
        }
    }
}

/// Gives the engine the new rules and active targets. Paused targets raise no
/// alert. Firing alerts of targets paused or removed, or of rules removed, end
/// with a RESOLVED that says why; those of targets that moved to another node end
/// here silently (the new owner continues them). Returns the ids of the alerts
/// dropped silently.
async fn reconfigure(
    ctx: &Ctx,
    engine: &mut Engine,
    current: &crate::ownership::Owned,
    rules: &[RuleSpec],
) -> Vec<String> {
    let firing: HashMap<String, Alert> = engine
        .alerts()
        .into_iter()
        .filter(|a| a.state.is_firing())
        .map(|a| (a.id.clone(), Arc::unwrap_or_clone(a)))
        .collect();
    let active: Vec<_> = current.active().cloned().collect();
    let mut dropped = engine.reconfigure(rules.to_vec(), &active);
    let ended = if current.spec_unknown {
        Vec::new()
    } else {
        ended_alerts(&firing, &dropped, current, rules)
    };
    if !ended.is_empty() {
        dropped.retain(|id| !ended.iter().any(|(a, _)| &a.id == id));
        end_visibly(ctx, engine, ended).await;
    }
    dropped
}

/// Feeds one input to the engine; an ack is stored and sent to the herd, and
/// answered.
async fn take_input(ctx: &Ctx, engine: &mut Engine, input: Input) -> Vec<Transition> {
    // Fenced (parked): samples and events of scrapes from before the fence are
    // not evaluated; the node scrapes again when its lease is back.
    if matches!(input, Input::Samples(_) | Input::Event(_)) && ctx.owned.borrow().fenced {
        return Vec::new();
    }
    match input {
        Input::Samples(samples) => samples.iter().flat_map(|s| engine.on_sample(s)).collect(),
        Input::Event(e) => engine.on_event(&e),
        Input::Ack { id, by, reply } => {
            let acked = engine.ack(&id, &by);
            if let Some(a) = &acked {
                let batch = AlertingBatch {
                    alerts: vec![a.clone()],
                    ..Default::default()
                };
                if let Err(e) = ctx.handle.store.alerting(batch).await {
                    tracing::error!(error = %e, "cannot store an ack");
                }
                ctx.handle.replicate(AlertDelta {
                    upserts: vec![a.clone()],
                    ownership_version: ctx.followed_version,
                    ..Default::default()
                });
            }
            let _ = reply.send(acked);
            Vec::new()
        }
    }
}

/// Queues the notifications of owned targets that the herd recorded as queued and
/// not delivered (by the last owner, which died or lost the target) and that this
/// outbox has neither queued nor delivered. The herd's gate keeps them from going
/// out twice.
async fn take_over_notices(ctx: &Ctx, notices: &[OutboxEntry]) {
    if notices.is_empty() || !ctx.handle.in_herd() {
        return;
    }
    match ctx.notifier.queue_new(notices.to_vec()).await {
        Ok(0) => {}
        Ok(count) => tracing::info!(
            count,
            "delivering the notifications the last owner of these targets had not"
        ),
        Err(e) => tracing::error!(error = %e, "cannot queue notifications taken over"),
    }
}

/// Tells the engine about json_state values that changed since the last tick:
/// only the trees replaced since then are read (a tree is published whole when it
/// changes), and none is copied.
fn state_changes(ctx: &mut Ctx, engine: &mut Engine, now: i64) -> Vec<Transition> {
    let paths: Vec<String> = ctx.rules.values().filter_map(|r| r.state.clone()).collect();
    if paths.is_empty() {
        return Vec::new();
    }
    if paths != ctx.state_paths {
        // Other paths: every tree is read again for them.
        ctx.seen_trees.clear();
        ctx.state_paths = paths.clone();
    }
    let changed: Vec<(String, Vec<Arc<Value>>)> = {
        let board = ctx.states.read().unwrap_or_else(|p| p.into_inner());
        ctx.seen_trees
            .retain(|target, _| board.contains_key(target));
        board
            .iter()
            .filter_map(|(target, by_check)| {
                let trees: Vec<Arc<Value>> = by_check.values().map(|(_, t)| t.clone()).collect();
                let same = ctx.seen_trees.get(target).is_some_and(|old| {
                    old.len() == trees.len()
                        && old.iter().zip(&trees).all(|(a, b)| Arc::ptr_eq(a, b))
                });
                (!same).then(|| (target.clone(), trees))
            })
            .collect()
    };
    let mut out = Vec::new();
    for (target, trees) in changed {
        for path in &paths {
            let value = trees.iter().find_map(|tree| lookup(tree, path));
            let key = (target.clone(), path.clone());
            let before = ctx.seen_state.get(&key);
            if before == value.as_ref() {
                continue;
            }
            out.extend(engine.on_state(&target, path, value.as_ref(), now));
            match value {
                Some(v) => ctx.seen_state.insert(key, v),
                None => ctx.seen_state.remove(&key),
            };
        }
        ctx.seen_trees.insert(target, trees);
    }
    out
}

fn lookup(tree: &Value, path: &str) -> Option<Value> {
    let mut v = tree;
    for seg in path.split('.') {
        v = match v {
            Value::Object(m) => m.get(seg)?,
            Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(v.clone())
}

/// The engine's alerts for the API: the list shares each alert with the engine,
/// so a publish copies pointers (and sorts them); an alert is copied only when it
/// changes while a published list still holds it.
fn publish(ctx: &Ctx, engine: &Engine) {
    if let Ok(mut a) = ctx.handle.alerts.write() {
        *a = engine.alerts();
    }
}

/// Hands the outbox the firing alerts (not silenced) with their routes when a
/// keep-alive channel (Alertmanager) is due to be told them again.
fn keep_alive(ctx: &Ctx, engine: &Engine, now: i64) {
    if !ctx.notifier.keep_alive_due() {
        return;
    }
    let silences = ctx.handle.silences();
    let firing = engine
        .alerts()
        .into_iter()
        .filter(|a| a.state.is_firing() && !silences.iter().any(|s| s.covers(a, now)))
        .map(Arc::unwrap_or_clone)
        .map(|a| {
            let routes = route(&ctx.spec, ctx.rules.get(&a.rule), a.severity);
            (a, routes)
        })
        .collect();
    ctx.notifier.keep_alive(firing);
}

/// Channels an alert goes to: its rule's, else its severity's route, else the default.
pub fn route(spec: &FleetSpec, rule: Option<&RuleSpec>, severity: Severity) -> Vec<String> {
    if let Some(r) = rule.filter(|r| !r.channels.is_empty()) {
        return r.channels.clone();
    }
    let by_severity = match severity {
        Severity::Critical => &spec.routes.critical,
        Severity::Warning => &spec.routes.warning,
        Severity::Info => &spec.routes.info,
    };
    if !by_severity.is_empty() {
        return by_severity.clone();
    }
    spec.routes.default.clone()
}

/// The outbox entries of one notification: one per channel, due after the
/// channel's grouping window, with the channel's fallbacks.
pub fn outbox_entries(
    spec: &FleetSpec,
    channels: Vec<String>,
    alert: &Alert,
    kind: NotifyKind,
    ts_ms: i64,
    now: i64,
) -> Vec<OutboxEntry> {
    channels
        .into_iter()
        .map(|ch| {
            let delivery = spec
                .channels
                .iter()
                .find(|c| c.name() == ch)
                .map(|c| c.delivery())
                .unwrap_or_default();
            let window = delivery
                .group_window
                .unwrap_or(crate::config::channels::DEFAULT_GROUP_WINDOW)
                .get()
                .as_millis() as i64;
            OutboxEntry {
                notification: Notification {
                    idempotency_key: idempotency_key(&alert.id, alert.transitions, &ch),
                    channel: ch,
                    kind,
                    alert: alert.clone(),
                    ts_ms,
                },
                attempts: 0,
                not_before_ms: now + window,
                created_ms: now,
                fallbacks: delivery.fallback.clone(),
                last_error: None,
                sender: Default::default(),
                tenure: 0,
            }
        })
        .collect()
}

impl RulesHandle {
    fn replicate(&self, delta: AlertDelta) {
        if let Some(tx) = &self.replicate {
            if !delta.is_empty() {
                let _ = tx.send(delta);
            }
        }
    }

    /// Whether alert changes go to a herd (their notifications are then delivered
    /// by the target's owner only, and handed over with the target).
    fn in_herd(&self) -> bool {
        self.replicate.is_some()
    }
}

/// The firing alerts among `dropped` that ended because their target was paused
/// or removed from the fleet, or their rule removed, with why.
fn ended_alerts(
    firing: &HashMap<String, Alert>,
    dropped: &[String],
    current: &crate::ownership::Owned,
    rules: &[RuleSpec],
) -> Vec<(Alert, String)> {
    dropped
        .iter()
        .filter_map(|id| firing.get(id))
        .filter_map(|a| {
            let why = if current.paused.contains_key(&a.target) {
                format!("target {} was paused", a.target)
            } else if left_the_fleet(&current.spec, &a.target) {
                format!("target {} was removed from the fleet", a.target)
            } else if !rules.iter().any(|r| r.name == a.rule) {
                format!("rule {} was removed", a.rule)
            } else {
                return None;
            };
            Some((a.clone(), why))
        })
        .collect()
}

/// Whether `target` is gone from the fleet (the herd's machines are not in the
/// spec's targets and never leave it this way).
fn left_the_fleet(spec: &FleetSpec, target: &str) -> bool {
    !target.starts_with(crate::model::MACHINE_PREFIX)
        && !spec.targets.iter().any(|t| t.name == target)
}

/// Ends `ended` firing alerts with a RESOLVED transition that says why (the rule no
/// longer runs for them, so it never would), recorded like any transition. The
/// next episode, should the alert come back, counts on from it.
async fn end_visibly(ctx: &Ctx, engine: &mut Engine, ended: Vec<(Alert, String)>) {
    let now = now_ms();
    let transitions = ended
        .into_iter()
        .map(|(mut alert, why)| {
            let from = alert.state;
            alert.state = crate::model::AlertState::Resolved;
            alert.since_ms = now;
            alert.transitions = alert.transitions.saturating_add(1);
            alert.acked_by = None;
            if !alert.description.is_empty() {
                alert.description.push('\n');
            }
            alert.description.push_str(&format!("resolved: {why}"));
            engine.continue_count(&alert.id, alert.transitions);
            tracing::info!(alert = %alert.id, reason = %why, "alert resolved: its rule no longer runs for it");
            Transition {
                alert,
                from,
                to: crate::model::AlertState::Resolved,
                notify: Some(NotifyKind::Resolved),
                ts_ms: now,
            }
        })
        .collect();
    record(ctx, transitions).await;
}

/// Settled alerts the engine forgot: in a herd, the herd forgets its copies too
/// and keeps their counts (the node's own store keeps its copy: a node that
/// restarts alone continues the count from it).
fn forget_in_herd(ctx: &Ctx, forgotten: Vec<crate::model::ForgottenAlert>) {
    tracing::debug!(n = forgotten.len(), "forgetting resolved alerts");
    if let Some(tx) = &ctx.handle.replicate {
        let _ = tx.send(AlertDelta {
            forgotten,
            ownership_version: ctx.followed_version,
            ..Default::default()
        });
    }
}

/// An action to run after its transition is stored: the action, its alert, and
/// the keys of the notifications held until it ends.
type Deferred = (Action, Alert, Vec<String>);

/// Records transitions in one store transaction with their notifications, sends
/// the alert changes to the herd, wakes the outbox, and starts the actions.
async fn record(ctx: &Ctx, transitions: Vec<Transition>) {
    let now = now_ms();
    let (mut batch, deferred) = transition_batch(ctx, transitions, now);
    mark_owner_sent(ctx, &mut batch);
    let wake = !batch.outbox.is_empty();
    let delta = herd_delta(&batch, ctx.followed_version);
    if let Err(e) = ctx.handle.store.alerting(batch).await {
        tracing::error!(error = %e, "cannot store alert transitions");
        return;
    }
    ctx.handle.replicate(delta);
    if wake {
        ctx.notifier.wake();
    }
    for (a, alert, keys) in deferred {
        spawn_action(ctx, a, alert, keys);
    }
}

/// The store batch of `transitions`: each one's record, its alert and its
/// notifications (unless silenced or routed nowhere); with the actions they start.
fn transition_batch(
    ctx: &Ctx,
    transitions: Vec<Transition>,
    now: i64,
) -> (AlertingBatch, Vec<Deferred>) {
    let silences = ctx.handle.silences();
    let mut batch = AlertingBatch::default();
    let mut deferred = Vec::new();
    for t in transitions {
        let suppressed = t.notify.and_then(|kind| {
            queue_notifications(ctx, &t, kind, &silences, now, &mut batch, &mut deferred)
        });
        batch.transitions.push(TransitionRecord {
            alert_id: t.alert.id.clone(),
            rule: t.alert.rule.clone(),
            target: t.alert.target.clone(),
            from: t.from,
            to: t.to,
            notify: t.notify,
            ts_ms: t.ts_ms,
            suppressed,
        });
        // A pending alert that cleared before `for` (now inactive) is kept too: its
        // transition count is part of every idempotency key, and a new owner or a
        // restart must continue it, or a later FIRING would reuse a key the herd
        // recorded as delivered and be dropped.
        batch.alerts.push(t.alert);
    }
    (batch, deferred)
}

/// Queues a transition's notifications in `batch` (held until its action ends,
/// if it has one, which goes to `deferred`); returns why none were queued, if so.
fn queue_notifications(
    ctx: &Ctx,
    t: &Transition,
    kind: NotifyKind,
    silences: &[Silence],
    now: i64,
    batch: &mut AlertingBatch,
    deferred: &mut Vec<Deferred>,
) -> Option<String> {
    let mut suppressed = None;
    let rule = ctx.rules.get(&t.alert.rule);
    let channels = route(&ctx.spec, rule, t.alert.severity);
    let mut entries = Vec::new();
    if let Some(s) = silences.iter().find(|s| s.covers(&t.alert, now)) {
        suppressed = Some(format!("silenced by {} ({})", s.id, s.reason));
    } else if channels.is_empty() {
        suppressed = Some("no channel routes this alert".into());
    } else {
        entries = outbox_entries(&ctx.spec, channels, &t.alert, kind, t.ts_ms, now);
    }
    // Actions are remediation, not notification: like event handlers, they run
    // whether or not a channel routes or a silence mutes the alert.
    match rule
        .and_then(|r| r.action.clone())
        .filter(|a| action::applies(a, kind))
    {
        // The notifications are queued at once, held until the action
        // ended (at most its timeout and a margin), so that its result is
        // in them; a node that dies or is fenced meanwhile loses none (the
        // herd has them, and they go out when the hold ends).
        Some(a) => {
            let hold_until = now + action::hold_ms(&a);
            for e in &mut entries {
                e.not_before_ms = e.not_before_ms.max(hold_until);
            }
            let keys = entries
                .iter()
                .map(|e| e.notification.idempotency_key.clone())
                .collect::<Vec<_>>();
            batch.outbox.extend(entries);
            deferred.push((a, t.alert.clone(), keys));
        }
        None => batch.outbox.extend(entries),
    }
    tracing::info!(alert = %t.alert.id, rule = %t.alert.rule, target_name = %t.alert.target, kind = kind.as_str(), suppressed = ?suppressed, "alert transition");
    suppressed
}

/// In a herd the owner of the target sends; a RESOLVED for a target that left
/// the fleet has no owner: the node that held the alert sends it as its own.
fn mark_owner_sent(ctx: &Ctx, batch: &mut AlertingBatch) {
    let herd = ctx.handle.in_herd();
    let (spec, version) = (ctx.owned.borrow().spec.clone(), ctx.followed_version);
    for e in batch.outbox.iter_mut() {
        if herd && !left_the_fleet(&spec, &e.notification.alert.target) {
            e.sender = Sender::Owner;
            e.tenure = version;
        }
    }
}

/// The alert changes of `batch` for the herd, with the entries an owner sends
/// (what the herd hands over to a new owner).
fn herd_delta(batch: &AlertingBatch, ownership_version: u64) -> AlertDelta {
    AlertDelta {
        ownership_version,
        upserts: batch.alerts.clone(),
        deleted: batch.deleted.clone(),
        queued: batch
            .outbox
            .iter()
            .filter(|e| e.sender.replicated())
            .cloned()
            .collect(),
        delivered: Vec::new(),
        forgotten: Vec::new(),
    }
}

/// Runs an action in a task of its own, once the herd recorded its transition
/// and only while this node still owns the target; then its result goes into an
/// event and the notifications held for it.
fn spawn_action(ctx: &Ctx, a: Action, alert: Alert, keys: Vec<String>) {
    let (actions, transports, store, notifier) = (
        ctx.actions.clone(),
        ctx.transports.clone(),
        ctx.handle.store.clone(),
        ctx.notifier.clone(),
    );
    let rules = ctx.handle.clone();
    let owned = ctx.owned.clone();
    tokio::spawn(async move {
        // Checked against the live state right before it runs: a node fenced
        // or no longer the owner since the transition runs nothing.
        let mine = || {
            let now = owned.borrow();
            !now.fenced && now.active().any(|t| t.name == alert.target)
        };
        let recorded = wait_until_recorded(&rules, &alert, &mine).await;
        let still_mine = mine();
        let result = if still_mine && recorded {
            actions
                .run(&a, &alert, &transports, &store, rules.claim.as_ref())
                .await
        } else if !still_mine {
            tracing::warn!(alert = %alert.id, target_name = %alert.target, "action not run: this node is fenced or no longer owns the target");
            None
        } else {
            tracing::warn!(alert = %alert.id, target_name = %alert.target, "action not run: the herd did not record its transition within {RECORD_WAIT:?} (this node cannot reach the leader; the target's next owner redoes it)");
            Some(format!(
                "action of {} on {} not run: the herd did not record the transition",
                alert.rule, alert.target
            ))
        };
        if let Some(line) = &result {
            tracing::info!(alert = %alert.id, result = %line, "remediation action");
            let e = Event {
                ts_ms: now_ms(),
                target: alert.target.clone(),
                kind: EventKind::ActionRun,
                message: line.clone(),
            };
            rules.event(&e);
            store.event(e).await;
        }
        release_held(&store, &keys, result.as_deref()).await;
        notifier.wake();
    });
}

/// In a herd, the transition is recorded first: a node cut from the leader that
/// ran it unrecorded would see the target's next owner redo the transition and
/// run it again. Waits up to RECORD_WAIT, while `mine` holds; true once recorded
/// (at once outside a herd).
async fn wait_until_recorded(rules: &RulesHandle, alert: &Alert, mine: &impl Fn() -> bool) -> bool {
    let Some(read) = &rules.recorded else {
        return true;
    };
    let deadline = tokio::time::Instant::now() + RECORD_WAIT;
    loop {
        if read(&alert.id).is_some_and(|n| n >= alert.transitions) {
            return true;
        }
        if !mine() || tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(RECORD_POLL).await;
    }
}

/// Ends the hold of the notifications queued with an action (`keys`), adding the
/// action's result to them. Those already gone (the hold ran out and they were
/// delivered, or another node took them) are left alone.
async fn release_held(store: &Store, keys: &[String], result: Option<&str>) {
    let outbox = {
        let store = store.clone();
        match tokio::task::spawn_blocking(move || store.outbox()).await {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot read the outbox after an action");
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot read the outbox after an action");
                return;
            }
        }
    };
    let now = now_ms();
    let update: Vec<(u64, OutboxEntry)> = outbox
        .into_iter()
        .filter(|(_, e)| keys.contains(&e.notification.idempotency_key))
        .map(|(seq, mut e)| {
            if let Some(line) = result {
                let d = &mut e.notification.alert.description;
                if !d.is_empty() {
                    d.push('\n');
                }
                d.push_str(line);
            }
            e.not_before_ms = e.not_before_ms.min(now);
            (seq, e)
        })
        .collect();
    if update.is_empty() {
        return;
    }
    let change = crate::store::OutboxChange {
        update,
        ..Default::default()
    };
    if let Err(e) = store.outbox_change(change).await {
        tracing::error!(error = %e, "cannot release the notifications held for an action");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_counts_what_it_loses() {
        let dir = tempfile::tempdir().unwrap();
        let options = crate::store::StoreOptions {
            retention: Duration::from_secs(3600),
            flush_interval: Duration::from_millis(100),
            chunk_samples: 240,
            ..Default::default()
        };
        let store = Store::open(dir.path(), options).unwrap();
        let (handle, _rx) = channel(&store, None, None, None);
        let e = Event {
            ts_ms: 1,
            target: "t".into(),
            kind: crate::model::EventKind::LogMatch,
            message: "m".into(),
        };
        for _ in 0..QUEUE_DEPTH {
            handle.event(&e);
        }
        assert_eq!(handle.inputs_dropped(), 0);
        handle.event(&e);
        handle.samples(&Arc::from([]));
        assert_eq!(handle.inputs_dropped(), 1);
        store.close().unwrap();
    }
}
