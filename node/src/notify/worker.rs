//! The outbox worker: drains the durable outbox through the channels. An entry
//! leaves the outbox only once a channel took it (or, given up on, once its
//! fallback is queued in the same commit); each carries an idempotency key.
//!
//! Stages per round (`Notifier::round`): due entries, through the herd's gate
//! and the age limit → grouped by (channel, target) → rate limit → sends started
//! with a timeout, and the round's other changes committed. Each send is recorded
//! when it ends (`Notifier::finish`: sent, or retry with backoff, or fall back → one
//! commit, and the herd told what finished), whatever the others do: a receiver
//! that hangs until its timeout holds its own entries only, never another
//! channel's, and rounds go on meanwhile (an entry in flight is not picked again).
//!
//! The worker keeps a copy of the outbox in memory, read whole when something
//! else may have changed it (a wake: entries queued by the rules, a takeover, an
//! action's release; an entry put off becoming due) and else kept up to date with
//! the worker's own commits (sent, retried, expired entries). A round picks from
//! the copy: a backlog of thousands drains without the outbox being read and
//! decoded again for every send that ends.
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::channels::{Channel, SendError};
use crate::config::channels::{ChannelSpec, Delivery, DEFAULT_MAX_AGE, DEFAULT_TIMEOUT};
use crate::model::{now_ms, Event, EventKind, Notification, NotifyKind, Retry};
use crate::store::alerting::OutboxEntry;
use crate::store::{OutboxChange, Store};

/// The worker looks at the outbox at least this often, woken or not.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// Sends in flight per channel at once: a backlog drains without opening hundreds
/// of connections to one receiver at once.
const MAX_PARALLEL_SENDS: usize = 8;
/// Width of the rate-limit window.
const RATE_WINDOW_MS: i64 = 60_000;
/// How soon an entry the herd has not recorded yet is looked at again at the
/// latest: a change of the herd's applied state wakes the outbox sooner
/// ([`Notifier::herd_changed`]).
const GATE_RETRY_MS: i64 = 200;
/// An entry still waiting for the herd's record this long after it was queued is
/// handed to the herd again (its first commit may have been dropped while the node
/// was fenced for a moment), at most this often.
const REPORT_AGAIN_MS: i64 = 2_000;

/// Why [`Notifier::send_direct`] did not deliver its notification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectSendError {
    /// The channel is not in the fleet spec, or it could not be built.
    #[error("no channel {channel:?} is built here")]
    NotBuilt { channel: String },
    /// The channel's one attempt failed.
    #[error(transparent)]
    Send(#[from] SendError),
}

/// What the herd says of a replicated entry that is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// This node delivers it now.
    Send,
    /// Not yet (its commit through Raft is under way, or the lease is not valid).
    Wait,
    /// Not this node's to send any more: delivered by another node, or its target
    /// is owned by another node (which delivers it). Removed from this outbox.
    Drop,
}

/// Decides on a due replicated entry, given the time now (unix ms).
pub type GateFn = Box<dyn Fn(&OutboxEntry, i64) -> Gate + Send + Sync>;
/// Told, once durable here, the keys of replicated entries finished (delivered, or
/// given up with no fallback left) and the fallback entries queued in their place.
pub type ReportFn = Box<dyn Fn(Vec<String>, Vec<OutboxEntry>) + Send + Sync>;

/// How a node of a herd handles replicated entries (sender `Owner` or `Leader`).
pub struct HerdHooks {
    pub gate: GateFn,
    pub report: ReportFn,
}

/// A built channel and its delivery settings.
struct Built {
    channel: Arc<Channel>,
    delivery: Delivery,
}

/// Entries of one (channel, target), sent together, with their outbox seqs.
type Group = Vec<(u64, OutboxEntry)>;
/// A round's due groups, by (channel, target).
type Groups = BTreeMap<(String, String), Group>;
/// A send that ended: its group, its channel, and how it ended.
type SendDone = (Group, Arc<Built>, Result<(), SendError>);

/// Sends under way: their entries are not picked again until they end.
#[derive(Default)]
struct InFlight {
    seqs: std::collections::HashSet<u64>,
    per_channel: HashMap<String, usize>,
}

/// What one round of the outbox has decided so far; committed at its end.
struct Round {
    /// The round's time (unix ms).
    now: i64,
    /// When the next entry becomes due.
    next: Option<i64>,
    /// The outbox's change, written in one commit.
    change: OutboxChange,
    /// Replicated entries finished in this round, for the herd.
    finished: Vec<String>,
    /// Replicated entries waiting long for the herd's record: reported again.
    unrecorded: Vec<OutboxEntry>,
    /// Some entry waits for the herd to record it.
    waited: bool,
}

impl Round {
    fn new(now: i64) -> Round {
        Round {
            now,
            next: None,
            change: OutboxChange::default(),
            finished: Vec::new(),
            unrecorded: Vec::new(),
            waited: false,
        }
    }

    /// An entry becomes due at `at`: the next round comes no later.
    fn due_at(&mut self, at: i64) {
        self.next = Some(self.next.map_or(at, |n| n.min(at)));
    }

    /// An entry leaves the outbox: the herd hears of it if it is replicated.
    fn finished(&mut self, e: &OutboxEntry) {
        if e.sender.replicated() {
            self.finished.push(e.notification.idempotency_key.clone());
        }
    }

    /// The herd's gate on a due replicated entry: true when this node sends it now;
    /// otherwise it waits for the herd's record (handed to it again if that takes
    /// long) or leaves this outbox.
    fn passes_gate(
        &mut self,
        h: &HerdHooks,
        seq: u64,
        e: &OutboxEntry,
        report_again: bool,
    ) -> bool {
        match (h.gate)(e, self.now) {
            Gate::Send => true,
            Gate::Wait => {
                if report_again && self.now - e.created_ms >= REPORT_AGAIN_MS {
                    self.unrecorded.push(e.clone());
                }
                self.waited = true;
                self.due_at(self.now + GATE_RETRY_MS);
                false
            }
            Gate::Drop => {
                tracing::info!(key = %e.notification.idempotency_key, target_name = %e.notification.alert.target, "notification left to the target's owner (delivered, or the target moved)");
                self.change.remove.push(seq);
                false
            }
        }
    }

    /// A group its channel took: each entry is done, its key recorded as sent.
    fn delivered(&mut self, group: Group) {
        for (seq, e) in group {
            tracing::info!(channel = %e.notification.channel, key = %e.notification.idempotency_key, "notification delivered");
            self.finished(&e);
            self.change.done.push((seq, e.notification.idempotency_key));
        }
    }
}

pub struct Notifier {
    store: Store,
    channels: RwLock<HashMap<String, Arc<Built>>>,
    /// Channels whose build failed, with why (shown in events).
    broken: RwLock<HashMap<String, String>>,
    wake: Notify,
    /// Send times per channel in the last rate window.
    sent_at: Mutex<HashMap<String, VecDeque<i64>>>,
    /// Set once the channels of the spec in force were built: before that, no entry
    /// is looked at (it would find no channel and be given up).
    configured: tokio::sync::watch::Sender<bool>,
    /// Set while this node's lease is not valid: nothing is sent (a node cut off
    /// from the herd must not notify for targets another node has taken over).
    fenced: std::sync::atomic::AtomicBool,
    /// Set when the node is part of a herd.
    herd: std::sync::OnceLock<HerdHooks>,
    /// Set while a round runs and, after it, while an entry waits for the herd to
    /// record it: a change of the herd's state then wakes the outbox.
    waiting_on_herd: std::sync::atomic::AtomicBool,
    /// When waiting entries were last handed to the herd again (Unix ms).
    reported_again_ms: std::sync::atomic::AtomicI64,
    /// What each channel did since the node started (for /metrics).
    counts: Mutex<BTreeMap<String, ChannelCounts>>,
    /// When each keep-alive channel (Alertmanager) was last told the firing
    /// alerts (first seen: counted from then).
    kept_alive: Mutex<HashMap<String, std::time::Instant>>,
    in_flight: Mutex<InFlight>,
    /// The channel specs last built.
    configured_specs: Mutex<Option<Vec<ChannelSpec>>>,
    /// Where each send tells that it ended; the worker records it.
    done_tx: tokio::sync::mpsc::UnboundedSender<SendDone>,
    done_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<SendDone>>>,
    /// The outbox as last read, with this worker's own changes since (see the
    /// module's docs).
    copy: Mutex<BTreeMap<u64, OutboxEntry>>,
    /// Set when something else may have changed the outbox: the next round reads
    /// it whole.
    stale: std::sync::atomic::AtomicBool,
    /// Whole reads of the outbox so far.
    reads: std::sync::atomic::AtomicU64,
}

/// Notifications of one channel since the node started.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct ChannelCounts {
    /// Delivered (the channel accepted them).
    pub delivered: u64,
    /// Attempts that failed (each retried or given up).
    pub failed_attempts: u64,
    /// Given up after the channel's last attempt (its fallback, if any, queued).
    pub given_up: u64,
}

impl ChannelCounts {
    /// One send of one notification: delivered, or a failed attempt.
    fn attempt(&mut self, delivered: bool) {
        if delivered {
            self.delivered += 1;
        } else {
            self.failed_attempts += 1;
        }
    }
}

pub use crate::store::alerting::idempotency_key;

impl Notifier {
    pub fn new(store: Store) -> Arc<Notifier> {
        let (done_tx, done_rx) = tokio::sync::mpsc::unbounded_channel();
        Arc::new(Notifier {
            in_flight: Mutex::new(InFlight::default()),
            configured_specs: Mutex::new(None),
            done_tx,
            done_rx: Mutex::new(Some(done_rx)),
            copy: Mutex::new(BTreeMap::new()),
            stale: std::sync::atomic::AtomicBool::new(true),
            reads: std::sync::atomic::AtomicU64::new(0),
            store,
            channels: RwLock::new(HashMap::new()),
            broken: RwLock::new(HashMap::new()),
            wake: Notify::new(),
            sent_at: Mutex::new(HashMap::new()),
            configured: tokio::sync::watch::channel(false).0,
            fenced: std::sync::atomic::AtomicBool::new(false),
            herd: std::sync::OnceLock::new(),
            waiting_on_herd: std::sync::atomic::AtomicBool::new(false),
            reported_again_ms: std::sync::atomic::AtomicI64::new(0),
            counts: Mutex::new(BTreeMap::new()),
            kept_alive: Mutex::new(HashMap::new()),
        })
    }

    /// Told when the herd's applied state changed: an entry that waited for the
    /// herd to record it may go now (the outbox itself did not change).
    pub fn herd_changed(&self) {
        if self
            .waiting_on_herd
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            self.wake.notify_one();
        }
    }

    /// Queues the entries this outbox neither holds nor delivered (a notification
    /// taken over, or queued again by a node that may have queued it before) and
    /// wakes the worker; returns how many were queued.
    pub async fn queue_new(
        &self,
        entries: Vec<OutboxEntry>,
    ) -> Result<usize, crate::store::StoreError> {
        let fresh = self.store.not_yet_queued(entries).await?;
        let n = fresh.len();
        if n > 0 {
            self.store
                .alerting(crate::store::AlertingBatch {
                    outbox: fresh,
                    ..Default::default()
                })
                .await?;
            self.wake();
        }
        Ok(n)
    }

    /// Makes replicated entries go through the herd's gate and reports what was
    /// finished (once; later calls are ignored).
    pub fn join_herd(&self, hooks: HerdHooks) {
        let _ = self.herd.set(hooks);
    }

    /// Stops (true) or resumes (false) delivery; queued entries wait meanwhile.
    pub fn set_fenced(&self, fenced: bool) {
        let was = self
            .fenced
            .swap(fenced, std::sync::atomic::Ordering::SeqCst);
        if was && !fenced {
            self.wake();
        }
    }

    fn is_fenced(&self) -> bool {
        self.fenced.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Builds the channels of a (new) fleet spec. A channel that cannot be built
    /// (a secret missing) is reported and its notifications fall back. The same
    /// channels as last time (the node's targets changed, not its spec) are kept as
    /// they are, with their connections; secrets are read again when the channels
    /// of the spec change (or the node starts).
    pub async fn configure(&self, specs: &[ChannelSpec]) {
        {
            let mut last = self
                .configured_specs
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if last.as_deref() == Some(specs) {
                drop(last);
                self.configured.send_replace(true);
                return;
            }
            *last = Some(specs.to_vec());
        }
        let mut built = HashMap::new();
        let mut broken = HashMap::new();
        for spec in specs {
            match Channel::build(spec) {
                Ok(c) => {
                    built.insert(
                        spec.name().to_string(),
                        Arc::new(Built {
                            channel: Arc::new(c),
                            delivery: spec.delivery(),
                        }),
                    );
                }
                Err(why) => {
                    tracing::error!(channel = spec.name(), error = %why, "channel cannot be built");
                    broken.insert(spec.name().to_string(), why.to_string());
                }
            }
        }
        for (name, why) in &broken {
            self.store
                .event(Event {
                    ts_ms: now_ms(),
                    target: String::new(),
                    kind: EventKind::NotificationFailed,
                    message: format!("channel {name} cannot be used: {why}"),
                })
                .await;
        }
        if let Ok(mut c) = self.channels.write() {
            *c = built;
        }
        if let Ok(mut b) = self.broken.write() {
            *b = broken;
        }
        self.configured.send_replace(true);
        self.wake();
    }

    /// Something may have changed the outbox (entries queued or updated by
    /// another task) or what may be sent: the next round reads it whole.
    pub fn wake(&self) {
        self.stale.store(true, std::sync::atomic::Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// The keep-alive channels (Alertmanager) with their re-send interval.
    fn keep_alive_channels(&self) -> Vec<(String, Arc<Built>, Duration)> {
        let Ok(channels) = self.channels.read() else {
            return Vec::new();
        };
        channels
            .iter()
            .filter_map(|(name, b)| Some((name.clone(), b.clone(), b.channel.resend()?)))
            .collect()
    }

    /// Whether a keep-alive channel is due (see [`Notifier::keep_alive`]).
    pub fn keep_alive_due(&self) -> bool {
        if self.is_fenced() {
            return false;
        }
        let now = std::time::Instant::now();
        let mut last = self.kept_alive.lock().unwrap_or_else(|p| p.into_inner());
        self.keep_alive_channels().iter().any(|(name, _, every)| {
            now.saturating_duration_since(*last.entry(name.clone()).or_insert(now)) >= *every
        })
    }

    /// Posts again, to each keep-alive channel that is due, the alerts of `firing`
    /// routed to it that have fired for one interval at least (a new one went out
    /// as its FIRING, through the outbox); the post says they end a few intervals
    /// later unless posted again, so the receiver keeps them active as long as an
    /// owner is alive to post. Not through the outbox: a post that fails is
    /// covered by the next one. Nothing while fenced (another node may own the
    /// targets now and posts them itself).
    pub fn keep_alive(&self, firing: Vec<(crate::model::Alert, Vec<String>)>) {
        if self.is_fenced() {
            return;
        }
        let now = std::time::Instant::now();
        let now_ms = now_ms();
        for (name, built, every) in self.keep_alive_channels() {
            {
                let mut last = self.kept_alive.lock().unwrap_or_else(|p| p.into_inner());
                let at = last.entry(name.clone()).or_insert(now);
                if now.saturating_duration_since(*at) < every {
                    continue;
                }
                *at = now;
            }
            let old_enough = now_ms - every.as_millis() as i64;
            let group: Vec<Notification> = firing
                .iter()
                .filter(|(a, routes)| {
                    routes.contains(&name) && a.active_since_ms.max(a.since_ms) <= old_enough
                })
                .map(|(a, _)| Notification {
                    idempotency_key: String::new(),
                    channel: name.clone(),
                    kind: if a.flapping {
                        NotifyKind::Flapping
                    } else {
                        NotifyKind::Firing
                    },
                    alert: a.clone(),
                    ts_ms: now_ms,
                })
                .collect();
            if group.is_empty() {
                continue;
            }
            let timeout = built.delivery.timeout.unwrap_or(DEFAULT_TIMEOUT).get();
            tokio::spawn(async move {
                match built.channel.send(&group, timeout).await {
                    Ok(()) => {
                        tracing::debug!(channel = %name, alerts = group.len(), "firing alerts posted again")
                    }
                    Err(e) => {
                        tracing::warn!(channel = %name, alerts = group.len(), error = %e, "could not post the firing alerts again; the next interval tries again")
                    }
                }
            });
        }
    }

    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let Some(mut done) = self
            .done_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            tracing::error!("the outbox worker runs once per node");
            return;
        };
        let mut configured = self.configured.subscribe();
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = configured.wait_for(|c| *c) => if r.is_err() { return },
        }
        loop {
            let next = if self.is_fenced() {
                None
            } else {
                match self.round().await {
                    Ok(next) => next,
                    Err(e) => {
                        tracing::error!(error = %e, "outbox round failed");
                        None
                    }
                }
            };
            let wait = next
                .map(|at| {
                    Duration::from_millis(
                        (at - now_ms()).clamp(0, IDLE_POLL.as_millis() as i64) as u64
                    )
                })
                .unwrap_or(IDLE_POLL);
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.wake.notified() => {}
                // An entry put off is due, or a second passed: read the outbox again.
                _ = tokio::time::sleep(wait) => {
                    self.stale.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                Some(first) = done.recv() => {
                    let mut ended = vec![first];
                    while let Ok(d) = done.try_recv() {
                        ended.push(d);
                    }
                    if let Err(e) = self.finish(ended).await {
                        tracing::error!(error = %e, "recording ended sends failed; they are tried again");
                    }
                }
            }
        }
    }

    /// One pass over the outbox, in stages: load it, pick the due entries (the
    /// herd's gate, the age limit; not those in flight) grouped by (channel,
    /// target), start their sends (parallel cap, rate limit), and commit what the
    /// round decided without sending (given up, expired, put off), telling the
    /// herd. Each send is recorded when it ends ([`Notifier::finish`]). Returns when
    /// the next entry becomes due.
    async fn round(&self) -> Result<Option<i64>, crate::store::StoreError> {
        use std::sync::atomic::Ordering::SeqCst;
        // Before the gate reads the herd's state: a change from now on wakes a
        // next round.
        self.waiting_on_herd.store(true, SeqCst);
        if self.stale.swap(false, SeqCst) {
            self.reads.fetch_add(1, SeqCst);
            match self.load_outbox().await {
                Ok(read) => {
                    *self.copy.lock().unwrap_or_else(|p| p.into_inner()) =
                        read.into_iter().collect()
                }
                Err(e) => {
                    self.stale.store(true, SeqCst);
                    return Err(e);
                }
            }
        }
        let entries: Vec<(u64, OutboxEntry)> = {
            let copy = self.copy.lock().unwrap_or_else(|p| p.into_inner());
            let f = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            (copy.iter())
                .filter(|(seq, _)| !f.seqs.contains(seq))
                .map(|(seq, e)| (*seq, e.clone()))
                .collect()
        };
        if entries.is_empty() {
            self.waiting_on_herd.store(false, SeqCst);
            return Ok(None);
        }
        let herd = self.herd.get();
        let mut round = Round::new(now_ms());
        let groups = self.pick_due(entries, herd, &mut round).await;
        self.waiting_on_herd.store(round.waited, SeqCst);
        self.start_sends(groups, &mut round).await;
        self.commit(round, herd).await
    }

    /// Records sends that ended: each entry is done, or tried again after a
    /// backoff, or given up (its fallback queued); one commit, the herd told. Their
    /// entries may be picked again once this is durable.
    async fn finish(&self, ended: Vec<SendDone>) -> Result<(), crate::store::StoreError> {
        let herd = self.herd.get();
        let mut round = Round::new(now_ms());
        let mut seqs = Vec::new();
        let mut channels = Vec::new();
        for (group, built, result) in ended {
            for (seq, e) in &group {
                self.tally(&e.notification.channel, |c| c.attempt(result.is_ok()));
                seqs.push(*seq);
            }
            if let Some((_, e)) = group.first() {
                channels.push(e.notification.channel.clone());
            }
            match result {
                Ok(()) => round.delivered(group),
                Err(err) => self.retry_or_give_up(group, &built, &err, &mut round).await,
            }
        }
        let committed = self.commit(round, herd).await;
        let mut f = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        for seq in seqs {
            f.seqs.remove(&seq);
        }
        for c in channels {
            if let Some(n) = f.per_channel.get_mut(&c) {
                *n = n.saturating_sub(1);
            }
        }
        committed.map(|_| ())
    }

    /// The outbox's entries, read off the async runtime.
    async fn load_outbox(&self) -> Result<Vec<(u64, OutboxEntry)>, crate::store::StoreError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.outbox())
            .await
            .map_err(|_| crate::store::StoreError::Closed)?
    }

    /// Stage 1: the entries due now that pass the herd's gate and are not too old
    /// (those are dropped with an event), grouped by (channel, target).
    async fn pick_due(
        &self,
        entries: Vec<(u64, OutboxEntry)>,
        herd: Option<&HerdHooks>,
        round: &mut Round,
    ) -> Groups {
        let report_again = round.now
            - self
                .reported_again_ms
                .load(std::sync::atomic::Ordering::Relaxed)
            >= REPORT_AGAIN_MS;
        let mut groups = Groups::new();
        let in_flight: std::collections::HashSet<u64> = self
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .seqs
            .clone();
        for (seq, e) in entries {
            if in_flight.contains(&seq) {
                continue;
            }
            if e.not_before_ms > round.now {
                round.due_at(e.not_before_ms);
                continue;
            }
            if let Some(h) = herd.filter(|_| e.sender.replicated()) {
                if !round.passes_gate(h, seq, &e, report_again) {
                    continue;
                }
            }
            let max_age = self.max_age(&e.notification.channel);
            let age = round.now.saturating_sub(e.notification.ts_ms);
            if age > max_age {
                round.finished(&e);
                self.expire(seq, e, age, max_age, &mut round.change).await;
                continue;
            }
            let key = (
                e.notification.channel.clone(),
                e.notification.alert.target.clone(),
            );
            groups.entry(key).or_default().push((seq, e));
        }
        groups
    }

    /// Stage 2: each group is sent in a task of its own (at most
    /// MAX_PARALLEL_SENDS of a channel in flight at once; the rest wait for one of
    /// them to end), unless its channel is missing (given up: it falls back) or at
    /// its rate limit (put off until the limit allows). A send that ends tells the
    /// worker ([`Notifier::finish`]).
    async fn start_sends(&self, groups: Groups, round: &mut Round) {
        for ((channel, _target), group) in groups {
            let busy = self
                .in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .per_channel
                .get(&channel)
                .copied()
                .unwrap_or(0);
            if busy >= MAX_PARALLEL_SENDS {
                // The end of one of this channel's sends starts the next round.
                continue;
            }
            let built = self
                .channels
                .read()
                .ok()
                .and_then(|c| c.get(&channel).cloned());
            let Some(built) = built else {
                let why = self
                    .broken
                    .read()
                    .ok()
                    .and_then(|b| b.get(&channel).cloned())
                    .unwrap_or_else(|| "no such channel in the fleet spec".into());
                for (seq, e) in group {
                    round.finished(&e);
                    self.give_up(seq, e, &why, &mut round.change).await;
                }
                continue;
            };
            if let Some(at) = self.rate_limited(&channel, &built.delivery, round.now) {
                for (seq, mut e) in group {
                    e.not_before_ms = at;
                    round.change.update.push((seq, e));
                }
                round.due_at(at);
                continue;
            }
            {
                let mut f = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
                f.seqs.extend(group.iter().map(|(seq, _)| *seq));
                *f.per_channel.entry(channel.clone()).or_default() += 1;
            }
            let timeout = built.delivery.timeout.unwrap_or(DEFAULT_TIMEOUT).get();
            let channel_obj = built.channel.clone();
            let done = self.done_tx.clone();
            tokio::spawn(async move {
                let notes: Vec<Notification> =
                    group.iter().map(|(_, e)| e.notification.clone()).collect();
                let result = channel_obj.send(&notes, timeout).await;
                let _ = done.send((group, built, result));
            });
        }
    }

    /// Counts something of `channel` (for /metrics).
    fn tally(&self, channel: &str, f: impl FnOnce(&mut ChannelCounts)) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        f(counts.entry(channel.to_string()).or_default());
    }

    /// What each channel did since the node started, by channel name.
    pub fn channel_counts(&self) -> BTreeMap<String, ChannelCounts> {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A failed send: each entry of its group waits for its next attempt, or, once
    /// the channel's retry policy gives up (or the failure is permanent), falls back.
    async fn retry_or_give_up(
        &self,
        group: Group,
        built: &Built,
        err: &SendError,
        round: &mut Round,
    ) {
        let retryable = !matches!(err, SendError::Permanent(_));
        let policy = built.delivery.retry();
        for (seq, mut e) in group {
            e.attempts += 1;
            e.last_error = Some(err.to_string());
            let wait = match policy.after_failure(e.attempts, retryable) {
                Retry::After(wait) => wait,
                Retry::GiveUp => {
                    let why = format!(
                        "{} after {} attempts: {err}",
                        e.notification.channel, e.attempts
                    );
                    round.finished(&e);
                    self.give_up(seq, e, &why, &mut round.change).await;
                    continue;
                }
            };
            tracing::warn!(channel = %e.notification.channel, attempt = e.attempts, retry_in = ?wait, error = %err, "notification not delivered; will retry");
            e.not_before_ms = now_ms() + wait.as_millis() as i64;
            round.due_at(e.not_before_ms);
            round.change.update.push((seq, e));
        }
    }

    /// Stage 4: the round's changes in one commit; then the herd hears which
    /// replicated entries finished, which fallbacks were queued, and which entries
    /// it has still not recorded. Returns when the next entry becomes due.
    async fn commit(
        &self,
        round: Round,
        herd: Option<&HerdHooks>,
    ) -> Result<Option<i64>, crate::store::StoreError> {
        let Round {
            now,
            mut next,
            change,
            finished,
            unrecorded,
            ..
        } = round;
        let has_new = !change.add.is_empty();
        let mut requeued: Vec<OutboxEntry> = change
            .add
            .iter()
            .filter(|e| e.sender.replicated())
            .cloned()
            .collect();
        if !unrecorded.is_empty() {
            tracing::info!(
                entries = unrecorded.len(),
                "notifications still not recorded by the herd: handing them to it again"
            );
            self.reported_again_ms
                .store(now, std::sync::atomic::Ordering::Relaxed);
            requeued.extend(unrecorded);
        }
        if !(change.done.is_empty()
            && change.update.is_empty()
            && change.remove.is_empty()
            && change.add.is_empty())
        {
            let applied = self.copy_after(&change);
            if let Err(e) = self.store.outbox_change(change).await {
                self.stale.store(true, std::sync::atomic::Ordering::SeqCst);
                return Err(e);
            }
            applied();
        }
        if let Some(h) = herd {
            if !finished.is_empty() || !requeued.is_empty() {
                (h.report)(finished, requeued);
            }
        }
        if has_new {
            next = Some(now_ms());
        }
        Ok(next)
    }

    /// What `change`, once committed, makes of the in-memory copy: entries sent,
    /// removed or updated there too; entries added (fallbacks: their sequence
    /// numbers are the store's) make the next round read the outbox whole.
    fn copy_after(&self, change: &OutboxChange) -> impl FnOnce() + '_ {
        let gone: Vec<u64> = (change.done.iter().map(|(seq, _)| *seq))
            .chain(change.remove.iter().copied())
            .collect();
        let update = change.update.clone();
        let added = !change.add.is_empty();
        move || {
            if added {
                self.stale.store(true, std::sync::atomic::Ordering::SeqCst);
                return;
            }
            let mut copy = self.copy.lock().unwrap_or_else(|p| p.into_inner());
            for seq in gone {
                copy.remove(&seq);
            }
            for (seq, e) in update {
                copy.insert(seq, e);
            }
        }
    }

    /// Sends `n` through its channel at once, bypassing the outbox (and the fence):
    /// for the one notice a node without quorum sends on its own. One attempt,
    /// bounded by the channel's timeout.
    pub async fn send_direct(&self, n: Notification) -> Result<(), DirectSendError> {
        let built = self
            .channels
            .read()
            .ok()
            .and_then(|c| c.get(&n.channel).cloned())
            .ok_or_else(|| DirectSendError::NotBuilt {
                channel: n.channel.clone(),
            })?;
        let timeout = built
            .delivery
            .timeout
            .unwrap_or(crate::config::channels::DEFAULT_TIMEOUT)
            .get();
        let result = built.channel.send(std::slice::from_ref(&n), timeout).await;
        self.tally(&n.channel, |c| c.attempt(result.is_ok()));
        Ok(result?)
    }

    /// The age limit of a channel's notifications, in ms.
    fn max_age(&self, channel: &str) -> i64 {
        let limit = self
            .channels
            .read()
            .ok()
            .and_then(|c| c.get(channel).and_then(|b| b.delivery.max_age))
            .unwrap_or(DEFAULT_MAX_AGE);
        limit.get().as_millis().min(i64::MAX as u128) as i64
    }

    /// Drops a notification too old to be news: logged and recorded as an event,
    /// never sent, no fallback.
    async fn expire(
        &self,
        seq: u64,
        e: OutboxEntry,
        age: i64,
        max_age: i64,
        change: &mut OutboxChange,
    ) {
        change.remove.push(seq);
        let age_text = humantime::format_duration(Duration::from_secs((age / 1000).max(0) as u64));
        let limit = humantime::format_duration(Duration::from_secs((max_age / 1000).max(0) as u64));
        tracing::warn!(channel = %e.notification.channel, key = %e.notification.idempotency_key, age = %age_text, max_age = %limit, "notification too old to send; dropped");
        let why = format!(
            "not sent: {age_text} old, beyond max_age {limit} of channel {}",
            e.notification.channel
        );
        self.failed(&e, &why).await;
    }

    /// Records a `notification_failed` event: "KIND of RULE WHY".
    async fn failed(&self, e: &OutboxEntry, why: &str) {
        self.store
            .event(Event {
                ts_ms: now_ms(),
                target: e.notification.alert.target.clone(),
                kind: EventKind::NotificationFailed,
                message: format!(
                    "{} of {} {why}",
                    e.notification.kind.as_str(),
                    e.notification.alert.rule
                ),
            })
            .await;
    }

    /// Replaces an entry by one for its next fallback channel, or drops it with an
    /// event when none is left.
    async fn give_up(&self, seq: u64, e: OutboxEntry, why: &str, change: &mut OutboxChange) {
        change.remove.push(seq);
        self.tally(&e.notification.channel, |c| c.given_up += 1);
        let mut fallbacks = e.fallbacks.clone();
        if fallbacks.is_empty() {
            tracing::error!(channel = %e.notification.channel, key = %e.notification.idempotency_key, reason = why, "notification given up");
            self.failed(&e, &format!("not delivered: {why}")).await;
            return;
        }
        let next_channel = fallbacks.remove(0);
        tracing::warn!(from = %e.notification.channel, to = %next_channel, reason = why, "notification falls back");
        let mut n = e.notification.clone();
        n.idempotency_key = idempotency_key(&n.alert.id, n.alert.transitions, &next_channel);
        n.channel = next_channel;
        change.add.push(OutboxEntry {
            notification: n,
            attempts: 0,
            not_before_ms: now_ms(),
            created_ms: now_ms(),
            fallbacks,
            last_error: Some(why.to_string()),
            sender: e.sender,
            tenure: e.tenure,
        });
    }

    /// When the channel may send again, if its rate limit is reached now.
    fn rate_limited(&self, channel: &str, d: &Delivery, now: i64) -> Option<i64> {
        let limit = d.rate_limit_per_min? as usize;
        let mut sent = self.sent_at.lock().ok()?;
        let times = sent.entry(channel.to_string()).or_default();
        while times.front().is_some_and(|t| *t <= now - RATE_WINDOW_MS) {
            times.pop_front();
        }
        if times.len() >= limit {
            return times.front().map(|t| t + RATE_WINDOW_MS);
        }
        times.push_back(now);
        None
    }
}

impl crate::store::alerting::Outbox for Notifier {
    fn configure<'a>(
        &'a self,
        channels: &'a [ChannelSpec],
    ) -> crate::store::alerting::BoxFuture<'a, ()> {
        Box::pin(Notifier::configure(self, channels))
    }

    fn queue_new(
        &self,
        entries: Vec<OutboxEntry>,
    ) -> crate::store::alerting::BoxFuture<'_, Result<usize, crate::store::StoreError>> {
        Box::pin(Notifier::queue_new(self, entries))
    }

    fn wake(&self) {
        Notifier::wake(self)
    }

    fn keep_alive_due(&self) -> bool {
        Notifier::keep_alive_due(self)
    }

    fn keep_alive(&self, firing: Vec<(crate::model::Alert, Vec<String>)>) {
        Notifier::keep_alive(self, firing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::channels::{DEFAULT_BACKOFF, DEFAULT_BACKOFF_MAX, DEFAULT_MAX_ATTEMPTS};
    use crate::store::StoreOptions;

    fn notifier() -> (tempfile::TempDir, Arc<Notifier>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            dir.path(),
            StoreOptions {
                retention: Duration::from_secs(3600),
                flush_interval: Duration::from_millis(50),
                chunk_samples: 240,
                ..Default::default()
            },
        )
        .unwrap();
        (dir, Notifier::new(store))
    }

    /// Puts `entry` in the outbox as the rules would.
    async fn queue(n: &Notifier, entry: OutboxEntry) {
        n.store
            .alerting(crate::store::AlertingBatch {
                outbox: vec![entry],
                ..Default::default()
            })
            .await
            .unwrap();
    }

    #[test]
    fn rate_limit_holds_sends_until_the_window_frees_a_slot() {
        let (_dir, n) = notifier();
        let d = Delivery {
            rate_limit_per_min: Some(2),
            ..Default::default()
        };
        assert_eq!(n.rate_limited("c", &d, 1_000), None);
        assert_eq!(n.rate_limited("c", &d, 2_000), None);
        // The third within a minute waits until the first leaves the window.
        assert_eq!(n.rate_limited("c", &d, 3_000), Some(61_000));
        assert_eq!(n.rate_limited("other", &d, 3_000), None, "per channel");
        assert_eq!(n.rate_limited("c", &d, 61_001), None);
        let unlimited = Delivery::default();
        for t in 0..100 {
            assert_eq!(n.rate_limited("c", &unlimited, t), None);
        }
    }

    #[tokio::test]
    async fn queue_new_never_queues_a_key_twice() {
        let (_dir, n) = notifier();
        let notice = crate::store::alerting::fixtures::notice;
        let now = now_ms();
        let first = vec![notice("a:1:c", "t", now), notice("b:1:c", "t", now)];
        assert_eq!(n.queue_new(first).await.unwrap(), 2);
        let again = vec![notice("b:1:c", "t", now), notice("c:1:c", "t", now)];
        assert_eq!(n.queue_new(again).await.unwrap(), 1, "only c is new");
        let keys: Vec<String> = n
            .store
            .outbox()
            .unwrap()
            .into_iter()
            .map(|(_, e)| e.notification.idempotency_key)
            .collect();
        assert_eq!(keys, ["a:1:c", "b:1:c", "c:1:c"]);
    }

    /// An entry the herd has not recorded waits, and the herd's next change wakes
    /// the outbox at once (not at the retry timer).
    #[tokio::test]
    async fn an_entry_waiting_for_the_herd_is_woken_by_its_next_change() {
        let (_dir, n) = notifier();
        n.join_herd(HerdHooks {
            gate: Box::new(|_, _| Gate::Wait),
            report: Box::new(|_, _| {}),
        });
        let woken = |n: &Arc<Notifier>| {
            let n = n.clone();
            async move {
                tokio::time::timeout(Duration::from_millis(50), n.wake.notified())
                    .await
                    .is_ok()
            }
        };
        n.herd_changed();
        assert!(
            !woken(&n).await,
            "nothing waits: a herd change is no reason to look"
        );
        let entry = crate::store::alerting::fixtures::notice("a:1:c", "t", now_ms());
        queue(&n, entry).await;
        let next = n.round().await.unwrap().expect("a retry is planned");
        assert!(
            next <= now_ms() + GATE_RETRY_MS,
            "retried by the timer at the latest"
        );
        n.herd_changed();
        assert!(woken(&n).await, "the herd's change wakes the outbox");
    }

    /// A notification whose transition is older than the channel's max_age (12 h by
    /// default) is dropped with an event, never handed to a channel.
    #[tokio::test]
    async fn notifications_older_than_max_age_are_dropped_not_sent() {
        let (_dir, n) = notifier();
        n.configure(&[]).await;
        let day_old = now_ms() - 24 * 3600 * 1000;
        let mut old = crate::store::alerting::fixtures::notice("a:1:c", "t", day_old);
        old.notification.ts_ms = day_old;
        queue(&n, old).await;
        n.round().await.unwrap();
        assert!(
            n.store.outbox().unwrap().is_empty(),
            "dropped from the outbox"
        );
        let events = n.store.events(None, 0, 10).unwrap();
        assert!(
            events
                .iter()
                .any(|e| e.kind == EventKind::NotificationFailed
                    && e.message.contains("beyond max_age 12h")),
            "{events:?}"
        );
    }

    /// One receiver that takes the connection and never answers holds only its
    /// own channel's entry: the other channel's is delivered and leaves the outbox
    /// long before the hung send's timeout (a round used to wait for its slowest
    /// send before recording any).
    #[tokio::test]
    async fn a_hung_receiver_holds_only_its_own_channel() {
        let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ok = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (hung_addr, ok_addr) = (hung.local_addr().unwrap(), ok.local_addr().unwrap());
        let held = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((c, _)) = hung.accept().await {
                conns.push(c);
            }
        });
        let answered = tokio::spawn(answer_ok(ok, None));
        let fleet = format!(
            "[[channel]]\nname = \"hung\"\nkind = \"webhook\"\nurl = \"http://{hung_addr}/\"\ntimeout = \"6s\"\n\n\
             [[channel]]\nname = \"ok\"\nkind = \"webhook\"\nurl = \"http://{ok_addr}/\"\n"
        );
        let spec = crate::config::parse_fleet(&fleet, "test").unwrap();
        let (_dir, n) = notifier();
        n.configure(&spec.channels).await;
        let mut to_hung = crate::store::alerting::fixtures::notice("h:1:hung", "a", now_ms());
        to_hung.notification.channel = "hung".into();
        to_hung.sender = Default::default();
        let mut to_ok = crate::store::alerting::fixtures::notice("o:1:ok", "b", now_ms());
        to_ok.notification.channel = "ok".into();
        to_ok.sender = Default::default();
        queue(&n, to_hung).await;
        let cancel = CancellationToken::new();
        let worker = tokio::spawn(n.clone().run(cancel.clone()));
        // The hung send starts first; then the healthy channel's entry comes.
        tokio::time::sleep(Duration::from_millis(300)).await;
        queue(&n, to_ok).await;
        n.wake();
        let started = std::time::Instant::now();
        let keys = |n: &Notifier| -> Vec<String> {
            n.store
                .outbox()
                .unwrap()
                .into_iter()
                .map(|(_, e)| e.notification.idempotency_key)
                .collect()
        };
        while keys(&n).contains(&"o:1:ok".to_string()) {
            assert!(
                started.elapsed() < Duration::from_secs(4),
                "the healthy channel waited for the hung one: {:?}",
                keys(&n)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(keys(&n), ["h:1:hung"], "the hung send is still under way");
        assert_eq!(n.channel_counts()["ok"].delivered, 1);
        cancel.cancel();
        let _ = worker.await;
        held.abort();
        answered.abort();
    }

    /// Answers 200 to every HTTP request on `listener` once it has read it whole;
    /// counts the requests in `count` when given.
    async fn answer_ok(
        listener: tokio::net::TcpListener,
        count: Option<Arc<std::sync::atomic::AtomicUsize>>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut c, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut got = Vec::new();
                // The request's head and its body (Content-Length).
                loop {
                    let Ok(n) = c.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&got);
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .and_then(|v| v.trim().parse::<usize>().ok())
                            })
                            .unwrap_or(0);
                        if got.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                if let Some(c) = &count {
                    c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                let _ = c
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            });
        }
    }

    /// A backlog of hundreds of notifications (one target each, so one send each,
    /// at most MAX_PARALLEL_SENDS at once) drains from the in-memory copy: each is
    /// delivered once, and the outbox is read whole a few times, not once per send.
    #[tokio::test]
    async fn a_backlog_drains_from_the_copy_not_a_read_per_send() {
        const N: usize = 200;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let server = tokio::spawn(answer_ok(listener, Some(requests.clone())));
        let fleet =
            format!("[[channel]]\nname = \"ok\"\nkind = \"webhook\"\nurl = \"http://{addr}/\"\n");
        let spec = crate::config::parse_fleet(&fleet, "test").unwrap();
        let (_dir, n) = notifier();
        n.configure(&spec.channels).await;
        let entries: Vec<OutboxEntry> = (0..N)
            .map(|i| {
                let mut e = crate::store::alerting::fixtures::notice(
                    &format!("k{i}:1:ok"),
                    &format!("t{i}"),
                    now_ms(),
                );
                e.notification.channel = "ok".into();
                e.sender = Default::default();
                e
            })
            .collect();
        n.store
            .alerting(crate::store::AlertingBatch {
                outbox: entries,
                ..Default::default()
            })
            .await
            .unwrap();
        let cancel = CancellationToken::new();
        let worker = tokio::spawn(n.clone().run(cancel.clone()));
        let started = std::time::Instant::now();
        while !n.store.outbox().unwrap().is_empty() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the backlog did not drain"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        cancel.cancel();
        let _ = worker.await;
        server.abort();
        assert_eq!(n.channel_counts()["ok"].delivered, N as u64);
        assert_eq!(
            requests.load(std::sync::atomic::Ordering::SeqCst),
            N,
            "each once"
        );
        let reads = n.reads.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            reads <= (N / MAX_PARALLEL_SENDS / 2) as u64,
            "{reads} reads of the outbox for {N} sends"
        );
        eprintln!("{N} sends, {reads} reads of the outbox");
    }

    /// The node's targets changing calls `configure` with the same channels: they
    /// are kept (with their connections), rebuilt only when the spec changes.
    #[tokio::test]
    async fn the_same_channels_are_kept_not_rebuilt() {
        let spec = |url: &str| {
            crate::config::parse_fleet(
                &format!("[[channel]]\nname = \"c\"\nkind = \"webhook\"\nurl = \"{url}\"\n"),
                "test",
            )
            .unwrap()
            .channels
        };
        let (_dir, n) = notifier();
        let built = |n: &Notifier| n.channels.read().unwrap()["c"].channel.clone();
        n.configure(&spec("http://127.0.0.1:9/a")).await;
        let first = built(&n);
        n.configure(&spec("http://127.0.0.1:9/a")).await;
        assert!(Arc::ptr_eq(&first, &built(&n)), "kept");
        n.configure(&spec("http://127.0.0.1:9/b")).await;
        assert!(
            !Arc::ptr_eq(&first, &built(&n)),
            "a changed channel is built again"
        );
    }

    #[test]
    fn delivery_settings_make_the_retry_policy() {
        let d = Delivery {
            backoff: Some(crate::config::HumanDuration::from_secs(2)),
            backoff_max: Some(crate::config::HumanDuration::from_secs(5)),
            max_attempts: Some(3),
            ..Default::default()
        };
        let p = d.retry();
        assert_eq!(p.base(1), Duration::from_secs(2));
        assert_eq!(p.base(3), Duration::from_secs(5));
        assert!(p.gives_up(3) && !p.gives_up(2));
        let defaults = Delivery::default().retry();
        assert_eq!(defaults.first, DEFAULT_BACKOFF.get());
        assert_eq!(defaults.max, DEFAULT_BACKOFF_MAX.get());
        assert_eq!(defaults.max_attempts, Some(DEFAULT_MAX_ATTEMPTS));
    }
}
