//! The rules engine: pure evaluation of samples, events and json_state changes into
//! alert transitions. No I/O and no clock: every input carries its time, and the
//! runner calls [`Engine::tick`] every second for timers. The runner persists each
//! [`Transition`] (in a cluster: commits it through Raft) and queues its
//! notification; a new owner rebuilds the engine from the stored [`Alert`]s with
//! [`Engine::new`] and continues them.
//!
//! How each rule is evaluated, by kind and source:
//!
//! | kind | metric / check | event | state path |
//! |---|---|---|---|
//! | range | level: value < min or > max | – | level: numeric value |
//! | presence, present = false | occurrence per sample | occurrence | level: path present |
//! | presence, present = true | dead-man (like absence) | dead-man | level: path missing |
//! | absence | dead-man | – | – |
//! | regex | – | occurrence when the message matches | level: value text matches |
//! | change | occurrence when the value moved (direction) | occurrence when the message differs from the previous one | occurrence when the value changed, appeared or vanished |
//!
//! - *level* conditions hold while the last input says so, and use `for` and
//!   `keep_firing_for` as written.
//! - *occurrences* have no "clear": the condition holds from an occurrence until
//!   `keep_firing_for` (default [`EVENT_RESOLVE_AFTER`]) passes without another
//!   one; that window is the hysteresis, so there is no Resolving phase. `for`
//!   still applies (occurrences must keep coming for `for`).
//! - *dead-man*: per (rule, target, series) the last sample time; the condition
//!   holds once `for` passed without one, and clears at the next sample. Since the
//!   silence already lasted `for`, such alerts fire without a Pending phase. A
//!   target with no sample since the engine started (or since it was added) counts
//!   from that moment, under the rule's matcher labels as its series.
//! - The first change input of a series is a baseline, never an occurrence.
//! - NaN samples are no information: they neither fire nor resolve anything.
//! - A `state` source may be a glob (`containers.*.status`); each matching path
//!   is its own alert, with the path as its series label `path`.
//! - The engine's start is the time of its first input (normally the runner's
//!   first tick): the engine itself never reads a clock.
//!
//! Alert identity is (rule, target, series labels): the sample's labels, none for
//! events, `path` for state; see [`alert_id`]. `{{threshold}}` is the bound that
//! was crossed as a bare number (so "above {{threshold}}%" reads well; both bounds
//! as `min..max` when none is crossed), the pattern of a regex rule, the previous
//! value of a change rule and the silence of a dead-man.
use std::collections::{HashMap, HashSet};

use regex::Regex;

use super::machine::{Machine, Params, Texts};
use super::select::{alert_id, format_value, glob_match, is_glob, labels_match};
use crate::config::fleet::TargetSpec;
use crate::config::rules::{Direction, RuleKind, RuleSpec, EVENT_RESOLVE_AFTER};
use crate::model::text::prefix_chars;
use crate::model::{Alert, AlertState, Event, ForgottenAlert, Labels, NotifyKind, Sample};

/// At most this many alerts (any state) are tracked; beyond, settled ones are
/// evicted first, and new alerts are refused when none is settled.
pub const MAX_ALERTS: usize = 100_000;
/// At most this many series per kind of memory (dead-man clocks, previous values
/// for change rules); new series beyond it are ignored.
pub const MAX_SERIES: usize = 100_000;
/// Resolved alerts are kept for `herd alerts` "recent" this long by default
/// (`[store] resolved_retention`; [`Engine::set_resolved_retention`]) ...
pub const RESOLVED_RETENTION_MS: i64 = 3_600_000;
/// ... and at most this many of them.
pub const MAX_RESOLVED: usize = 1_000;
/// Silence before a `presence = true` rule on a metric or event fires, when the
/// rule sets no `for`.
pub const DEFAULT_MISSING_AFTER_MS: i64 = 60_000;
/// A state path a `present = true` rule names exactly, and that has not been seen
/// since the engine started, counts as missing only after this grace: the runner
/// feeds the current json_state trees right after start.
pub const STATE_MISSING_GRACE_MS: i64 = 60_000;
/// Longest alert value kept (log lines can be long); cut at a char boundary.
pub const MAX_VALUE_CHARS: usize = 512;

/// Fewer flapping transitions than this make no sense (validation refuses them);
/// such a setting is ignored.
const MIN_FLAP_TRANSITIONS: u32 = 2;
/// Metric carrying check verdicts (Nagios codes 0 ok .. 3 unknown), labelled `check`.
const CHECK_METRIC: &str = "check.status";
const CHECK_LABEL: &str = "check";
/// Series label of json_state alerts: the path.
const PATH_LABEL: &str = "path";
/// Alert value of dead-man and missing-path alerts.
const ABSENT_VALUE: &str = "absent";

const DEFAULT_SUMMARY: &str = "{{rule}} on {{target}}: {{metric}} = {{value}}";
const DEFAULT_DESCRIPTION: &str =
    "{{metric}} = {{value}} (threshold {{threshold}}) on {{target}} since {{since}}";

/// A transition to persist (and notify when `notify` is Some). `alert` is the alert
/// AFTER the transition (alert.transitions already incremented; alert.state == to).
///
/// `from == to` marks the end of a flapping period (only `alert.flapping` changed);
/// `to == Inactive` is a pending alert whose condition cleared before `for`: the
/// caller may delete its record.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub alert: Alert,
    pub from: AlertState,
    pub to: AlertState,
    pub notify: Option<NotifyKind>,
    pub ts_ms: i64,
}

/// Counters for `/metrics` and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg(test)]
pub struct EngineStats {
    /// Alerts tracked (every state, including recent resolved ones).
    pub alerts: usize,
    /// Dead-man clocks.
    pub dead_man_series: usize,
    /// NaN samples ignored by range and change rules.
    pub nan_samples: u64,
    /// New alerts refused because [`MAX_ALERTS`] were tracked and none was settled.
    pub refused_alerts: u64,
    /// New series ignored because a series table held [`MAX_SERIES`].
    pub refused_series: u64,
}

#[derive(Debug, Clone, PartialEq)]
enum Source {
    Metric(String),
    Check(String),
    Event(String),
    /// A path or a glob over paths.
    State(String),
}

/// How a rule's condition evolves (see the module table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Level,
    Occurrence,
    DeadMan,
}

struct Compiled {
    spec: RuleSpec,
    source: Source,
    mode: Mode,
    regex: Option<Regex>,
    /// Owned targets the rule selects.
    selected: HashSet<String>,
    params: Params,
    /// Occurrence rules: how long an occurrence keeps the condition true.
    window_ms: i64,
    /// Dead-man rules: silence that makes the condition true.
    silence_ms: i64,
    metric_text: String,
    summary: String,
    description: String,
}

impl Compiled {
    /// None for rules the engine cannot evaluate (disabled, or a kind/source pair
    /// that validation refuses); they are skipped.
    fn new(spec: RuleSpec, targets: &HashMap<String, Labels>) -> Option<Compiled> {
        if !spec.enabled {
            return None;
        }
        let source = match (&spec.metric, &spec.event, &spec.check, &spec.state) {
            (Some(m), None, None, None) => Source::Metric(m.clone()),
            (None, Some(e), None, None) => Source::Event(e.clone()),
            (None, None, Some(c), None) => Source::Check(c.clone()),
            (None, None, None, Some(s)) => Source::State(s.clone()),
            _ => return None,
        };
        let numeric = matches!(source, Source::Metric(_) | Source::Check(_));
        let mode = match (spec.kind, &source) {
            (RuleKind::Range, Source::Event(_)) => return None,
            (RuleKind::Range, _) => Mode::Level,
            (RuleKind::Presence, Source::State(_)) => Mode::Level,
            (RuleKind::Presence, _) => match spec.present {
                Some(false) => Mode::Occurrence,
                Some(true) => Mode::DeadMan,
                None => return None,
            },
            (RuleKind::Absence, Source::Metric(_)) => Mode::DeadMan,
            (RuleKind::Absence, _) => return None,
            (RuleKind::Regex, _) if numeric => return None,
            (RuleKind::Regex, Source::State(_)) => Mode::Level,
            (RuleKind::Regex, _) => Mode::Occurrence,
            (RuleKind::Change, Source::Check(_)) => return None,
            (RuleKind::Change, _) => Mode::Occurrence,
        };
        if spec.kind == RuleKind::Presence && spec.present.is_none() {
            return None;
        }
        let regex = match (spec.kind, &spec.pattern) {
            // Validation refuses bad patterns; a rule that slips through is skipped.
            (RuleKind::Regex, Some(p)) => Some(Regex::new(p).ok()?),
            (RuleKind::Regex, None) => return None,
            _ => None,
        };
        let for_ms = spec.for_.map_or(0, |d| millis(d.get()));
        let keep_ms = spec.keep_firing_for.map_or(0, |d| millis(d.get()));
        let window_ms = spec
            .keep_firing_for
            .map_or(millis(EVENT_RESOLVE_AFTER.get()), |d| millis(d.get()));
        let silence_ms = spec
            .for_
            .map_or(DEFAULT_MISSING_AFTER_MS, |d| millis(d.get()));
        let params = match mode {
            Mode::Level => Params {
                for_ms,
                keep_ms,
                flap: None,
            },
            // The window is the hysteresis of occurrences.
            Mode::Occurrence => Params {
                for_ms,
                keep_ms: 0,
                flap: None,
            },
            // The silence is the `for` of a dead-man.
            Mode::DeadMan => Params {
                for_ms: 0,
                keep_ms,
                flap: None,
            },
        };
        let flap = spec
            .flapping
            .as_ref()
            .filter(|f| f.transitions >= MIN_FLAP_TRANSITIONS && !f.window.get().is_zero())
            .map(|f| (f.transitions as usize, millis(f.window.get())));
        let selected = targets
            .iter()
            .filter(|(name, labels)| selects(&spec, name, labels))
            .map(|(name, _)| name.clone())
            .collect();
        Some(Compiled {
            metric_text: spec.source(),
            summary: spec
                .summary
                .clone()
                .unwrap_or_else(|| DEFAULT_SUMMARY.into()),
            description: spec
                .description
                .clone()
                .unwrap_or_else(|| DEFAULT_DESCRIPTION.into()),
            source,
            mode,
            regex,
            selected,
            params: Params { flap, ..params },
            window_ms,
            silence_ms,
            spec,
        })
    }

    fn texts(&self) -> Texts<'_> {
        Texts {
            summary: &self.summary,
            description: &self.description,
            metric: &self.metric_text,
        }
    }

    /// Does a sample of this metric and these labels belong to the rule?
    fn takes_sample(&self, s: &Sample) -> bool {
        let source_ok = match &self.source {
            Source::Metric(m) => *m == s.metric,
            Source::Check(c) => s.metric == CHECK_METRIC && s.labels.get(CHECK_LABEL) == Some(c),
            _ => false,
        };
        source_ok && labels_match(&self.spec.matchers, &s.labels)
    }

    /// Is an alert with these series labels still one of this rule's?
    fn takes_series(&self, series: &Labels) -> bool {
        match self.source {
            Source::Metric(_) | Source::Check(_) => labels_match(&self.spec.matchers, series),
            Source::Event(_) => true,
            Source::State(ref pattern) => series
                .get(PATH_LABEL)
                .is_some_and(|p| glob_match(pattern, p)),
        }
    }

    /// Range rules: does the value breach, and which bound does the text show.
    fn range(&self, v: f64) -> (bool, String) {
        let (min, max) = match (self.spec.min, self.spec.max, &self.source) {
            // A check rule without bounds fires on any non-ok status.
            (None, None, Source::Check(_)) => (None, Some(0.0)),
            (min, max, _) => (min, max),
        };
        let above = max.is_some_and(|m| v > m);
        let below = min.is_some_and(|m| v < m);
        let threshold = match (min, max) {
            (_, Some(m)) if above => format_value(m),
            (Some(m), _) if below => format_value(m),
            (Some(a), Some(b)) => format!("{}..{}", format_value(a), format_value(b)),
            (Some(a), None) => format_value(a),
            (None, Some(b)) => format_value(b),
            (None, None) => String::new(),
        };
        (above || below, threshold)
    }

    /// Threshold text before any input says more (restored alerts).
    fn threshold(&self) -> String {
        match self.mode {
            Mode::DeadMan => silence_text(self.silence_ms),
            _ if self.spec.kind == RuleKind::Range => self.range(f64::NAN).1,
            _ => self.spec.pattern.clone().unwrap_or_default(),
        }
    }

    /// Rules where the same kind and source mean the same alerts.
    fn same_meaning(&self, other: &Compiled) -> bool {
        self.source == other.source
            && self.mode == other.mode
            && self.spec.kind == other.spec.kind
            && self.spec.present == other.spec.present
    }
}

fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// rule.targets (names or globs; empty: all) and rule.target_labels (all must match).
fn selects(spec: &RuleSpec, name: &str, labels: &Labels) -> bool {
    (spec.targets.is_empty() || spec.targets.iter().any(|p| glob_match(p, name)))
        && labels_match(&spec.target_labels, labels)
}

fn direction_ok(direction: Direction, prev: f64, now: f64) -> bool {
    match direction {
        Direction::Any => now != prev,
        Direction::Increase => now > prev,
        Direction::Decrease => now < prev,
    }
}

fn state_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => prefix_chars(s, MAX_VALUE_CHARS).to_string(),
        other => prefix_chars(&other.to_string(), MAX_VALUE_CHARS).to_string(),
    }
}

fn state_number(v: &serde_json::Value) -> Option<f64> {
    match v {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn path_series(path: &str) -> Labels {
    let mut l = Labels::new();
    l.insert(PATH_LABEL.into(), path.into());
    l
}

/// A dead-man clock of one (rule, target, series).
#[derive(Debug, Clone)]
struct Watch {
    rule: String,
    target: String,
    series: Labels,
    /// The last sample; None: counting from the engine's start.
    last_ms: Option<i64>,
    /// Stands for a target that has not reported since the clock began; the
    /// target's first sample replaces it with the real series.
    placeholder: bool,
}

/// A `present = true` state path not seen since the engine started or the rule
/// and target met.
#[derive(Debug, Clone)]
struct Unseen {
    rule: String,
    target: String,
    path: String,
    since_ms: Option<i64>,
}

/// What one input says about one alert.
struct Obs<'a> {
    holds: bool,
    /// Since when the condition holds (dead-man: the last sample).
    cond_since: i64,
    ts: i64,
    /// New value and threshold text, when the input carries them.
    value: Option<String>,
    threshold: Option<String>,
    /// An occurrence (event-like rules): extends the window.
    occurrence: bool,
    series: &'a Labels,
}

/// What the engine keeps of a forgotten alert.
#[derive(Debug, Default)]
struct Tombstone {
    transitions: u64,
    /// The alert as it was forgotten (not when the count was raised since).
    last: Option<Box<Alert>>,
}

/// The alert machines, apart from the rules so both can be borrowed at once.
#[derive(Default)]
struct Alerts {
    machines: HashMap<String, Machine>,
    /// Transition counters of forgotten alerts, so an alert that comes back
    /// continues its count: `alert-id:transitions` keys stay unique per alert.
    /// Bounded by [`MAX_ALERTS`]; beyond it a returning alert counts from 0.
    tombstones: HashMap<String, Tombstone>,
    /// Settled alerts forgotten (retention, room) since [`Engine::take_forgotten`]
    /// last took them: the herd forgets its copies too.
    forgotten: Vec<ForgottenAlert>,
    /// How long a settled alert is kept before it is forgotten.
    retention_ms: i64,
    nan_samples: u64,
    refused_alerts: u64,
    refused_series: u64,
}

impl Alerts {
    /// Applies an observation to the alert `id` of `rule` on `target`, creating the
    /// alert when the condition holds and it does not exist yet.
    fn feed(
        &mut self,
        rule: &Compiled,
        target: &str,
        id: String,
        obs: Obs,
        out: &mut Vec<Transition>,
    ) {
        if !self.machines.contains_key(&id) {
            if !obs.holds || !self.make_room() {
                return;
            }
            let mut m = new_machine(rule, target, &id, obs.series, obs.ts);
            m.alert_mut().transitions = self.tombstones.remove(&id).map_or(0, |t| t.transitions);
            self.machines.insert(id.clone(), m);
        }
        let Some(m) = self.machines.get_mut(&id) else {
            return;
        };
        if let Some(v) = obs.value {
            // Written only when it differs: a change copies an alert the
            // published list shares.
            if m.alert.value != v {
                m.alert_mut().value = v;
            }
        }
        if let Some(t) = obs.threshold {
            m.threshold = t;
        }
        if m.alert.severity != rule.spec.severity {
            m.alert_mut().severity = rule.spec.severity;
        }
        if obs.occurrence {
            let last = m.last_occurrence_ms.map_or(obs.ts, |l| l.max(obs.ts));
            m.last_occurrence_ms = Some(last);
        }
        out.extend(m.step(
            &rule.params,
            &rule.texts(),
            obs.holds,
            obs.cond_since,
            obs.ts,
        ));
    }

    /// Frees a slot for a new alert if needed: evicts the oldest settled alert.
    fn make_room(&mut self) -> bool {
        if self.machines.len() < MAX_ALERTS {
            return true;
        }
        let oldest = self
            .machines
            .iter()
            .filter(|(_, m)| m.settled())
            .min_by_key(|(_, m)| m.alert.since_ms)
            .map(|(id, _)| id.clone());
        match oldest {
            Some(id) => {
                self.forget_settled(&id);
                true
            }
            None => {
                self.refused_alerts += 1;
                false
            }
        }
    }

    /// Forgets settled alerts older than the retention, then the oldest beyond
    /// [`MAX_RESOLVED`]. Inactive ones are kept as long so that an alert's
    /// transition counter (part of notification idempotency keys) keeps counting
    /// across quick episodes.
    fn prune(&mut self, now: i64) {
        let expired: Vec<String> = self
            .machines
            .iter()
            .filter(|(_, m)| {
                m.settled() && now.saturating_sub(m.alert.since_ms) >= self.retention_ms
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            self.forget_settled(&id);
        }
        let settled = self.machines.values().filter(|m| m.settled()).count();
        if settled > MAX_RESOLVED {
            let mut old: Vec<(i64, String)> = self
                .machines
                .iter()
                .filter(|(_, m)| m.settled())
                .map(|(id, m)| (m.alert.since_ms, id.clone()))
                .collect();
            old.sort();
            for (_, id) in old.into_iter().take(settled - MAX_RESOLVED) {
                self.forget_settled(&id);
            }
        }
    }

    /// Drops an alert's machine, keeping its transition counter.
    /// A forgotten alert's count is at least `transitions` (its last copy stays
    /// only while it is the latest).
    fn continue_count(&mut self, id: &str, transitions: u64) {
        if self.tombstones.len() >= MAX_ALERTS && !self.tombstones.contains_key(id) {
            // Bounded like the tombstones of forgotten alerts: this one counts
            // from what the herd still keeps of it.
            return;
        }
        let t = self.tombstones.entry(id.to_string()).or_default();
        if transitions > t.transitions {
            t.transitions = transitions;
            t.last = None;
        }
    }

    /// Forgets a settled alert and says so to [`Engine::take_forgotten`].
    fn forget_settled(&mut self, id: &str) {
        if let Some(m) = self.machines.get(id) {
            self.forgotten.push(ForgottenAlert {
                id: id.to_string(),
                target: m.alert.target.clone(),
                transitions: m.alert.transitions,
                settled_ms: m.alert.since_ms,
            });
        }
        self.forget(id);
    }

    fn forget(&mut self, id: &str) {
        if let Some(m) = self.machines.remove(id) {
            if self.tombstones.len() < MAX_ALERTS {
                let tombstone = Tombstone {
                    transitions: m.alert.transitions,
                    last: Some(Box::new(std::sync::Arc::unwrap_or_clone(m.alert))),
                };
                self.tombstones.insert(id.to_string(), tombstone);
            }
        }
    }
}

fn new_machine(rule: &Compiled, target: &str, id: &str, series: &Labels, ts: i64) -> Machine {
    let mut labels = series.clone();
    // The rule's labels win over the series' (routing labels are the rule's word).
    labels.extend(rule.spec.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    let alert = Alert {
        id: id.to_string(),
        rule: rule.spec.name.clone(),
        target: target.to_string(),
        labels,
        severity: rule.spec.severity,
        state: AlertState::Inactive,
        since_ms: ts,
        active_since_ms: ts,
        value: String::new(),
        summary: String::new(),
        description: String::new(),
        transitions: 0,
        acked_by: None,
        flapping: false,
    };
    Machine::new(alert, series.clone())
}

/// Inserts into a bounded series table; counts the refusal when it is full.
fn bounded_insert<K: std::hash::Hash + Eq, V>(
    map: &mut HashMap<K, V>,
    key: K,
    value: V,
    refused: &mut u64,
) {
    if map.len() < MAX_SERIES || map.contains_key(&key) {
        map.insert(key, value);
    } else {
        *refused += 1;
    }
}

/// Evaluates rules for the targets this node owns. See the module docs.
pub struct Engine {
    rules: Vec<Compiled>,
    by_name: HashMap<String, usize>,
    /// Rule indexes by sample metric (`check.status` for check rules).
    by_metric: HashMap<String, Vec<usize>>,
    by_event: HashMap<String, Vec<usize>>,
    state_rules: Vec<usize>,
    /// Owned targets and their labels.
    targets: HashMap<String, Labels>,
    alerts: Alerts,
    /// Dead-man clocks by alert id.
    watches: HashMap<String, Watch>,
    /// Missing-at-start state paths by alert id.
    unseen: HashMap<String, Unseen>,
    /// (target, path) pairs seen, for exact `present = true` paths only.
    state_seen: HashSet<(String, String)>,
    /// Previous values for change rules.
    prev_metric: HashMap<(String, String, Labels), f64>,
    prev_event: HashMap<(String, String), String>,
    /// `None`: seen, then gone.
    prev_state: HashMap<(String, String), Option<serde_json::Value>>,
    /// Time of the first input (the engine's start, for never-reporting targets).
    started_ms: Option<i64>,
    /// Latest input time (when rules or targets arrive by `reconfigure`).
    latest_ms: Option<i64>,
    dropped_at_restore: Vec<String>,
}

impl Engine {
    /// `rules` = effective rules; `targets` = the targets this node owns (for
    /// selection by name/glob/labels); `restored` = alerts from the store (continue
    /// them: a firing alert stays firing, no new "firing" notification). Restored
    /// alerts whose rule or target is not here are left out; see
    /// [`Engine::take_dropped_at_restore`].
    pub fn new(rules: Vec<RuleSpec>, targets: &[TargetSpec], restored: Vec<Alert>) -> Engine {
        let mut e = Engine {
            rules: Vec::new(),
            by_name: HashMap::new(),
            by_metric: HashMap::new(),
            by_event: HashMap::new(),
            state_rules: Vec::new(),
            targets: HashMap::new(),
            alerts: Alerts {
                retention_ms: RESOLVED_RETENTION_MS,
                ..Alerts::default()
            },
            watches: HashMap::new(),
            unseen: HashMap::new(),
            state_seen: HashSet::new(),
            prev_metric: HashMap::new(),
            prev_event: HashMap::new(),
            prev_state: HashMap::new(),
            started_ms: None,
            latest_ms: None,
            dropped_at_restore: Vec::new(),
        };
        e.install(rules, targets);
        for alert in restored {
            e.restore(alert);
        }
        e.add_clocks(None);
        e
    }

    /// Ids of restored alerts that `new` left out (their rule or target is not on
    /// this node, or the engine was full). The caller decides: delete them after a
    /// fleet change, keep them when only ownership moved.
    #[cfg(test)]
    pub fn take_dropped_at_restore(&mut self) -> Vec<String> {
        std::mem::take(&mut self.dropped_at_restore)
    }

    /// Replaces rules and targets (fleet re-applied or ownership changed). Alerts
    /// whose rule or target disappeared — the rule is gone or reads something else
    /// now, the target is not owned or no longer selected, or the series no longer
    /// matches the rule's matchers — are dropped WITHOUT notification; their ids
    /// are returned so the caller deletes them. Every other alert continues with
    /// the new rule's thresholds and timings from the next input on.
    pub fn reconfigure(&mut self, rules: Vec<RuleSpec>, targets: &[TargetSpec]) -> Vec<String> {
        let old_rules = std::mem::take(&mut self.rules);
        let old_by_name = std::mem::take(&mut self.by_name);
        self.install(rules, targets);
        let keep = |rules: &[Compiled],
                    by_name: &HashMap<String, usize>,
                    rule: &str,
                    target: &str,
                    series: &Labels| {
            let Some(new) = by_name.get(rule).map(|i| &rules[*i]) else {
                return false;
            };
            let Some(old) = old_by_name.get(rule).map(|i| &old_rules[*i]) else {
                return false;
            };
            new.same_meaning(old) && new.selected.contains(target) && new.takes_series(series)
        };
        let (rules_ref, by_name_ref) = (&self.rules, &self.by_name);
        let mut dropped: Vec<String> = self
            .alerts
            .machines
            .iter()
            .filter(|(_, m)| {
                !keep(
                    rules_ref,
                    by_name_ref,
                    &m.alert.rule,
                    &m.alert.target,
                    &m.series,
                )
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in &dropped {
            self.alerts.forget(id);
        }
        self.watches
            .retain(|_, w| keep(rules_ref, by_name_ref, &w.rule, &w.target, &w.series));
        self.unseen.retain(|_, u| {
            keep(
                rules_ref,
                by_name_ref,
                &u.rule,
                &u.target,
                &path_series(&u.path),
            )
        });
        for machine in self.alerts.machines.values_mut() {
            if let Some(rule) = by_name_ref.get(&machine.alert.rule).map(|i| &rules_ref[*i]) {
                let mut labels = machine.series.clone();
                labels.extend(rule.spec.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
                if machine.alert.labels != labels || machine.alert.severity != rule.spec.severity {
                    let alert = machine.alert_mut();
                    alert.labels = labels;
                    alert.severity = rule.spec.severity;
                }
            }
        }
        let owned = &self.targets;
        self.prev_metric
            .retain(|(t, _, _), _| owned.contains_key(t));
        self.prev_event.retain(|(t, _), _| owned.contains_key(t));
        self.prev_state.retain(|(t, _), _| owned.contains_key(t));
        self.state_seen.retain(|(t, _)| owned.contains_key(t));
        // New (rule, target) pairs start their clocks now.
        self.add_clocks(self.latest_ms);
        dropped.sort();
        dropped
    }

    /// Continues alerts another node kept (a takeover, or a lease regained): each
    /// one not here already and not inactive is restored like a stored alert, so a
    /// firing alert stays firing without a second notification and its transition
    /// count (part of every idempotency key) goes on. Returns how many were taken.
    ///
    /// An alert this engine forgot when its target left it (held after a fence,
    /// moved away) may have gone on here after the copy the herd holds was made
    /// (a transition whose herd write had not been applied yet): the copy with
    /// more transitions is the later one, and is the one continued — the herd's
    /// older copy would make the same transition again.
    pub fn adopt(&mut self, alerts: Vec<Alert>) -> usize {
        let mut taken = 0;
        for alert in alerts {
            if self.alerts.machines.contains_key(&alert.id) {
                continue;
            }
            let ours = self.alerts.tombstones.get(&alert.id).and_then(|t| {
                (t.last.as_ref()).filter(|last| last.transitions > alert.transitions)
            });
            let alert = match ours {
                Some(later) => (**later).clone(),
                None => alert,
            };
            if alert.state == AlertState::Inactive {
                // Nothing to continue, but its count goes on: a new episode must not
                // reuse an idempotency key the herd recorded as delivered.
                self.alerts.continue_count(&alert.id, alert.transitions);
                continue;
            }
            self.alerts.tombstones.remove(&alert.id);
            let before = self.alerts.machines.len();
            self.restore(alert);
            taken += usize::from(self.alerts.machines.len() > before);
        }
        self.dropped_at_restore.clear();
        self.add_clocks(self.latest_ms);
        taken
    }

    /// How long a settled (resolved) alert is kept before it is forgotten.
    pub fn set_resolved_retention(&mut self, ms: i64) {
        self.alerts.retention_ms = ms.max(1);
    }

    /// The settled alerts forgotten since the last call (past the retention of
    /// resolved alerts, or to make room): the herd forgets its copies, keeping
    /// their counts.
    pub fn take_forgotten(&mut self) -> Vec<ForgottenAlert> {
        std::mem::take(&mut self.alerts.forgotten)
    }

    /// Counts of alerts the herd forgot (their owner let them go when they
    /// settled): a later episode of one continues its count, unless this engine
    /// knows a later one.
    pub fn continue_forgotten(&mut self, forgotten: &[ForgottenAlert]) {
        for f in forgotten {
            if self.targets.contains_key(&f.target) {
                self.continue_count(&f.id, f.transitions);
            }
        }
    }

    /// An alert this engine no longer holds had `transitions` so far (it was ended
    /// outside the engine): a later episode counts on from there.
    pub fn continue_count(&mut self, id: &str, transitions: u64) {
        if let Some(m) = self.alerts.machines.get_mut(id) {
            if transitions > m.alert.transitions {
                m.alert_mut().transitions = transitions;
            }
            return;
        }
        self.alerts.continue_count(id, transitions);
    }

    /// A sample of an owned target.
    pub fn on_sample(&mut self, s: &Sample) -> Vec<Transition> {
        self.observe_time(s.ts_ms);
        let mut out = Vec::new();
        if !self.targets.contains_key(&s.target) {
            return out;
        }
        let Some(idxs) = self.by_metric.get(&s.metric) else {
            return out;
        };
        // Previous values are kept only for series some change rule reads.
        let key = idxs
            .iter()
            .any(|i| self.rules[*i].spec.kind == RuleKind::Change)
            .then(|| (s.target.clone(), s.metric.clone(), s.labels.clone()));
        let prev = key.as_ref().and_then(|k| self.prev_metric.get(k).copied());
        let mut remember = false;
        let value = format_value(s.value);
        for &i in idxs {
            let rule = &self.rules[i];
            if !rule.selected.contains(&s.target) || !rule.takes_sample(s) {
                continue;
            }
            let id = alert_id(&rule.spec.name, &s.target, &s.labels);
            match (rule.mode, rule.spec.kind) {
                (Mode::Level, _) => {
                    if s.value.is_nan() {
                        self.alerts.nan_samples += 1;
                        continue;
                    }
                    let (holds, threshold) = rule.range(s.value);
                    let obs = Obs {
                        holds,
                        cond_since: s.ts_ms,
                        ts: s.ts_ms,
                        value: Some(value.clone()),
                        threshold: Some(threshold),
                        occurrence: false,
                        series: &s.labels,
                    };
                    self.alerts.feed(rule, &s.target, id, obs, &mut out);
                }
                (Mode::Occurrence, RuleKind::Change) => {
                    if s.value.is_nan() {
                        self.alerts.nan_samples += 1;
                        continue;
                    }
                    remember = true;
                    let Some(p) = prev else { continue };
                    if !direction_ok(rule.spec.direction, p, s.value) {
                        continue;
                    }
                    let obs = occurrence(s.ts_ms, value.clone(), format_value(p), &s.labels);
                    self.alerts.feed(rule, &s.target, id, obs, &mut out);
                }
                (Mode::Occurrence, _) => {
                    let obs = occurrence(s.ts_ms, value.clone(), String::new(), &s.labels);
                    self.alerts.feed(rule, &s.target, id, obs, &mut out);
                }
                (Mode::DeadMan, _) => {
                    let placeholder = alert_id(&rule.spec.name, &s.target, &rule.spec.matchers);
                    heard(
                        rule,
                        &mut self.alerts,
                        &mut self.watches,
                        &s.target,
                        id,
                        placeholder,
                        &s.labels,
                        s.ts_ms,
                        Some(value.clone()),
                        &mut out,
                    );
                }
            }
        }
        if let Some(key) = key.filter(|_| remember) {
            bounded_insert(
                &mut self.prev_metric,
                key,
                s.value,
                &mut self.alerts.refused_series,
            );
        }
        out
    }

    /// An event of an owned target.
    pub fn on_event(&mut self, e: &Event) -> Vec<Transition> {
        self.observe_time(e.ts_ms);
        let mut out = Vec::new();
        if !self.targets.contains_key(&e.target) {
            return out;
        }
        let kind = e.kind.as_str();
        let Some(idxs) = self.by_event.get(kind) else {
            return out;
        };
        let key = (e.target.clone(), kind.to_string());
        let prev = self.prev_event.get(&key).cloned();
        let mut remember = false;
        let none = Labels::new();
        let message = prefix_chars(&e.message, MAX_VALUE_CHARS).to_string();
        for &i in idxs {
            let rule = &self.rules[i];
            if !rule.selected.contains(&e.target) {
                continue;
            }
            let id = alert_id(&rule.spec.name, &e.target, &none);
            let obs = match (rule.mode, rule.spec.kind) {
                (Mode::DeadMan, _) => {
                    let placeholder = alert_id(&rule.spec.name, &e.target, &rule.spec.matchers);
                    heard(
                        rule,
                        &mut self.alerts,
                        &mut self.watches,
                        &e.target,
                        id,
                        placeholder,
                        &none,
                        e.ts_ms,
                        Some(message.clone()),
                        &mut out,
                    );
                    continue;
                }
                (_, RuleKind::Regex) => {
                    let matched = rule.regex.as_ref().is_some_and(|r| r.is_match(&e.message));
                    if !matched {
                        continue;
                    }
                    let pattern = rule.spec.pattern.clone().unwrap_or_default();
                    occurrence(e.ts_ms, message.clone(), pattern, &none)
                }
                (_, RuleKind::Change) => {
                    remember = true;
                    match &prev {
                        Some(p) if *p != message => {
                            occurrence(e.ts_ms, message.clone(), p.clone(), &none)
                        }
                        _ => continue,
                    }
                }
                _ => occurrence(e.ts_ms, message.clone(), String::new(), &none),
            };
            self.alerts.feed(rule, &e.target, id, obs, &mut out);
        }
        if remember {
            bounded_insert(
                &mut self.prev_event,
                key,
                message,
                &mut self.alerts.refused_series,
            );
        }
        out
    }

    /// json_state values: a path's value changed or appeared (`Some`) or
    /// disappeared (`None`).
    pub fn on_state(
        &mut self,
        target: &str,
        path: &str,
        value: Option<&serde_json::Value>,
        ts_ms: i64,
    ) -> Vec<Transition> {
        self.observe_time(ts_ms);
        let mut out = Vec::new();
        if !self.targets.contains_key(target) {
            return out;
        }
        let key = (target.to_string(), path.to_string());
        let prev = self.prev_state.get(&key).cloned();
        let mut remember = false;
        let series = path_series(path);
        let text = value.map_or_else(|| ABSENT_VALUE.to_string(), state_text);
        for &i in &self.state_rules {
            let rule = &self.rules[i];
            let Source::State(pattern) = &rule.source else {
                continue;
            };
            if !rule.selected.contains(target) || !glob_match(pattern, path) {
                continue;
            }
            let id = alert_id(&rule.spec.name, target, &series);
            let level = |holds: bool, threshold: String| Obs {
                holds,
                cond_since: ts_ms,
                ts: ts_ms,
                value: Some(text.clone()),
                threshold: Some(threshold),
                occurrence: false,
                series: &series,
            };
            let obs = match rule.spec.kind {
                RuleKind::Range => match value {
                    None => level(false, String::new()),
                    Some(v) => match state_number(v) {
                        Some(n) if !n.is_nan() => {
                            let (holds, threshold) = rule.range(n);
                            level(holds, threshold)
                        }
                        // Not a number: says nothing about the range.
                        _ => continue,
                    },
                },
                RuleKind::Presence => {
                    let must_exist = rule.spec.present == Some(true);
                    if must_exist {
                        self.unseen.remove(&id);
                        if !is_glob(pattern) && self.state_seen.len() < MAX_SERIES {
                            self.state_seen.insert(key.clone());
                        }
                    }
                    level(value.is_some() != must_exist, String::new())
                }
                RuleKind::Regex => {
                    let holds = value.is_some_and(|v| {
                        rule.regex
                            .as_ref()
                            .is_some_and(|r| r.is_match(&state_text(v)))
                    });
                    level(holds, rule.spec.pattern.clone().unwrap_or_default())
                }
                RuleKind::Change => {
                    remember = true;
                    match state_changed(rule.spec.direction, prev.as_ref(), value) {
                        Some(before) => occurrence(ts_ms, text.clone(), before, &series),
                        None => continue,
                    }
                }
                RuleKind::Absence => continue,
            };
            self.alerts.feed(rule, target, id, obs, &mut out);
        }
        if remember {
            bounded_insert(
                &mut self.prev_state,
                key,
                value.cloned(),
                &mut self.alerts.refused_series,
            );
        }
        out
    }

    /// Timers: `for` elapsed, keep_firing_for elapsed, absence (dead-man),
    /// event/change auto-resolve (rule.keep_firing_for or EVENT_RESOLVE_AFTER),
    /// flapping quiet period over. Called every second by the runner.
    /// Transitions come out ordered by alert id.
    pub fn tick(&mut self, now_ms: i64) -> Vec<Transition> {
        self.observe_time(now_ms);
        let started = self.started_ms.unwrap_or(now_ms);
        let mut out = Vec::new();
        for (id, w) in &self.watches {
            let Some(rule) = self.by_name.get(&w.rule).map(|i| &self.rules[*i]) else {
                continue;
            };
            let last = w.last_ms.unwrap_or(started);
            if now_ms.saturating_sub(last) < rule.silence_ms {
                continue;
            }
            if self.alerts.machines.get(id).is_some_and(|m| m.holds) {
                continue;
            }
            let obs = Obs {
                holds: true,
                cond_since: last,
                ts: now_ms,
                value: Some(ABSENT_VALUE.into()),
                threshold: Some(silence_text(rule.silence_ms)),
                occurrence: false,
                series: &w.series,
            };
            self.alerts.feed(rule, &w.target, id.clone(), obs, &mut out);
        }
        for (id, u) in &self.unseen {
            let Some(rule) = self.by_name.get(&u.rule).map(|i| &self.rules[*i]) else {
                continue;
            };
            let since = u.since_ms.unwrap_or(started);
            if now_ms.saturating_sub(since) < STATE_MISSING_GRACE_MS {
                continue;
            }
            if self.alerts.machines.get(id).is_some_and(|m| m.holds) {
                continue;
            }
            let series = path_series(&u.path);
            let obs = Obs {
                holds: true,
                cond_since: since,
                ts: now_ms,
                value: Some(ABSENT_VALUE.into()),
                threshold: Some(String::new()),
                occurrence: false,
                series: &series,
            };
            self.alerts.feed(rule, &u.target, id.clone(), obs, &mut out);
        }
        for m in self.alerts.machines.values_mut() {
            let Some(rule) = self.by_name.get(&m.alert.rule).map(|i| &self.rules[*i]) else {
                continue;
            };
            let texts = rule.texts();
            if rule.mode == Mode::Occurrence && m.holds {
                let last = m
                    .last_occurrence_ms
                    .unwrap_or_else(|| m.alert.since_ms.max(started));
                if now_ms >= last.saturating_add(rule.window_ms) {
                    out.extend(m.step(&rule.params, &texts, false, now_ms, now_ms));
                }
            }
            m.tick(&rule.params, &texts, now_ms, &mut out);
        }
        self.alerts.prune(now_ms);
        out.sort_by(|a, b| {
            a.alert
                .id
                .cmp(&b.alert.id)
                .then(a.alert.transitions.cmp(&b.alert.transitions))
        });
        out
    }

    /// Current alerts (pending, firing, resolving, and resolved ones kept for
    /// `herd alerts` "recent": resolved alerts are kept at most 1 h / at most
    /// 1000), ordered by rule, target and id. Shared with the engine: an alert
    /// that does not change is not copied, neither here nor when it next changes
    /// while the list is gone.
    pub fn alerts(&self) -> Vec<std::sync::Arc<Alert>> {
        let mut v: Vec<std::sync::Arc<Alert>> = self
            .alerts
            .machines
            .values()
            .filter(|m| m.alert.state != AlertState::Inactive)
            .map(|m| m.alert.clone())
            .collect();
        // Ids are unique: an unstable sort gives the same order.
        v.sort_unstable_by(|a, b| {
            (a.rule.cmp(&b.rule))
                .then_with(|| a.target.cmp(&b.target))
                .then_with(|| a.id.cmp(&b.id))
        });
        v
    }

    /// Acknowledges a firing (or resolving) alert; None when there is no such
    /// alert or it is not firing. The ack silences nothing that would otherwise be
    /// sent (flips inside an episode are silent anyway; the Resolved notification
    /// still goes out) and is cleared when the alert resolves. The caller persists
    /// the returned alert.
    pub fn ack(&mut self, alert_id: &str, by: &str) -> Option<Alert> {
        let m = self.alerts.machines.get_mut(alert_id)?;
        if !m.alert.state.is_firing() {
            return None;
        }
        m.alert_mut().acked_by = Some(by.to_string());
        Some(Alert::clone(&m.alert))
    }

    #[cfg(test)]
    pub fn stats(&self) -> EngineStats {
        EngineStats {
            alerts: self.alerts.machines.len(),
            dead_man_series: self.watches.len(),
            nan_samples: self.alerts.nan_samples,
            refused_alerts: self.alerts.refused_alerts,
            refused_series: self.alerts.refused_series,
        }
    }

    fn observe_time(&mut self, ts: i64) {
        self.started_ms.get_or_insert(ts);
        self.latest_ms = Some(self.latest_ms.map_or(ts, |l| l.max(ts)));
    }

    /// Compiles rules and indexes them; keeps the first of duplicate names.
    fn install(&mut self, rules: Vec<RuleSpec>, targets: &[TargetSpec]) {
        self.targets = targets
            .iter()
            .map(|t| (t.name.clone(), t.labels.clone()))
            .collect();
        self.rules.clear();
        self.by_name.clear();
        self.by_metric.clear();
        self.by_event.clear();
        self.state_rules.clear();
        for spec in rules {
            if self.by_name.contains_key(&spec.name) {
                continue;
            }
            let Some(c) = Compiled::new(spec, &self.targets) else {
                continue;
            };
            let i = self.rules.len();
            self.by_name.insert(c.spec.name.clone(), i);
            match &c.source {
                Source::Metric(m) => self.by_metric.entry(m.clone()).or_default().push(i),
                Source::Check(_) => self
                    .by_metric
                    .entry(CHECK_METRIC.into())
                    .or_default()
                    .push(i),
                Source::Event(e) => self.by_event.entry(e.clone()).or_default().push(i),
                Source::State(_) => self.state_rules.push(i),
            }
            self.rules.push(c);
        }
    }

    /// Puts a stored alert back, with its dead-man clock when it has one.
    fn restore(&mut self, alert: Alert) {
        let rule = self.by_name.get(&alert.rule).map(|i| &self.rules[*i]);
        let Some(rule) = rule.filter(|r| r.selected.contains(&alert.target)) else {
            self.dropped_at_restore.push(alert.id);
            return;
        };
        // The series is the alert's labels without the rule's (best effort: a
        // series label the rule's labels overrode is lost).
        let series: Labels = alert
            .labels
            .iter()
            .filter(|(k, _)| !rule.spec.labels.contains_key(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !rule.takes_series(&series) || !self.alerts.make_room() {
            self.dropped_at_restore.push(alert.id);
            return;
        }
        if rule.mode == Mode::DeadMan && alert.state != AlertState::Inactive {
            let placeholder = alert_id(&rule.spec.name, &alert.target, &rule.spec.matchers);
            let watch = Watch {
                rule: alert.rule.clone(),
                target: alert.target.clone(),
                series: series.clone(),
                last_ms: None,
                placeholder: alert.id == placeholder,
            };
            bounded_insert(
                &mut self.watches,
                alert.id.clone(),
                watch,
                &mut self.alerts.refused_series,
            );
        }
        // The stored texts stay as they were; the next transition re-renders.
        let mut m = Machine::restore(alert, series);
        m.threshold = rule.threshold();
        self.alerts.machines.insert(m.alert.id.clone(), m);
    }

    /// Starts dead-man clocks and missing-path clocks for (rule, target) pairs that
    /// have none, counting from `since` (None: the engine's start).
    fn add_clocks(&mut self, since: Option<i64>) {
        let with_watch: HashSet<(String, String)> = self
            .watches
            .values()
            .map(|w| (w.rule.clone(), w.target.clone()))
            .collect();
        for rule in &self.rules {
            let exact_path = match &rule.source {
                Source::State(p)
                    if rule.spec.kind == RuleKind::Presence
                        && rule.spec.present == Some(true)
                        && !is_glob(p) =>
                {
                    Some(p)
                }
                _ => None,
            };
            for target in &rule.selected {
                if rule.mode == Mode::DeadMan
                    && !with_watch.contains(&(rule.spec.name.clone(), target.clone()))
                {
                    let id = alert_id(&rule.spec.name, target, &rule.spec.matchers);
                    let watch = Watch {
                        rule: rule.spec.name.clone(),
                        target: target.clone(),
                        series: rule.spec.matchers.clone(),
                        last_ms: since,
                        placeholder: true,
                    };
                    bounded_insert(
                        &mut self.watches,
                        id,
                        watch,
                        &mut self.alerts.refused_series,
                    );
                }
                if let Some(path) = exact_path {
                    let id = alert_id(&rule.spec.name, target, &path_series(path));
                    let seen = self.state_seen.contains(&(target.clone(), path.clone()));
                    if !seen && !self.unseen.contains_key(&id) {
                        let u = Unseen {
                            rule: rule.spec.name.clone(),
                            target: target.clone(),
                            path: path.clone(),
                            since_ms: since,
                        };
                        bounded_insert(&mut self.unseen, id, u, &mut self.alerts.refused_series);
                    }
                }
            }
        }
    }
}

/// A dead-man's silence as people write it ("2m").
fn silence_text(ms: i64) -> String {
    let d = std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_duration(d).to_string()
}

fn occurrence(ts: i64, value: String, threshold: String, series: &Labels) -> Obs<'_> {
    Obs {
        holds: true,
        cond_since: ts,
        ts,
        value: Some(value),
        threshold: Some(threshold),
        occurrence: true,
        series,
    }
}

/// A dead-man rule heard from a series: restart its clock and clear its alert.
/// The target's placeholder clock (standing for "never reported") gives way to
/// the real series, and its alert clears too.
#[allow(clippy::too_many_arguments)]
fn heard(
    rule: &Compiled,
    alerts: &mut Alerts,
    watches: &mut HashMap<String, Watch>,
    target: &str,
    id: String,
    placeholder: String,
    series: &Labels,
    ts: i64,
    value: Option<String>,
    out: &mut Vec<Transition>,
) {
    if placeholder != id {
        if let Some(w) = watches.get(&placeholder) {
            if w.placeholder {
                let w = watches.remove(&placeholder);
                let ph_series = w.map(|w| w.series).unwrap_or_default();
                let obs = clear(ts, value.clone(), &ph_series);
                alerts.feed(rule, target, placeholder, obs, out);
            }
        }
    }
    let watch = Watch {
        rule: rule.spec.name.clone(),
        target: target.to_string(),
        series: series.clone(),
        last_ms: Some(ts),
        placeholder: false,
    };
    match watches.get_mut(&id) {
        Some(w) => {
            w.last_ms = Some(w.last_ms.map_or(ts, |l| l.max(ts)));
            w.placeholder = false;
        }
        None => bounded_insert(watches, id.clone(), watch, &mut alerts.refused_series),
    }
    let obs = clear(ts, value, series);
    alerts.feed(rule, target, id, obs, out);
}

fn clear(ts: i64, value: Option<String>, series: &Labels) -> Obs<'_> {
    Obs {
        holds: false,
        cond_since: ts,
        ts,
        value,
        threshold: None,
        occurrence: false,
        series,
    }
}

/// Change rules on state: the text of the previous value when this one counts as
/// a change; None for the first sight of a path (a baseline) or no change.
/// Numeric values honour `direction`; appearing, vanishing and non-numeric changes
/// count only for `direction = any`.
fn state_changed(
    direction: Direction,
    prev: Option<&Option<serde_json::Value>>,
    now: Option<&serde_json::Value>,
) -> Option<String> {
    let prev = prev?;
    match (prev, now) {
        (Some(a), Some(b)) if a != b => {
            let moved = match (state_number(a), state_number(b)) {
                (Some(x), Some(y)) => direction_ok(direction, x, y),
                _ => direction == Direction::Any,
            };
            moved.then(|| state_text(a))
        }
        (None, Some(_)) | (Some(_), None) if direction == Direction::Any => Some(
            prev.as_ref()
                .map_or_else(|| ABSENT_VALUE.to_string(), state_text),
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
