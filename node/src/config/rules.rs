//! `[[rule]]` in fleet.toml: reactions to what checks see. A rule selects targets,
//! reads one source (a metric, an event kind, a check's status or a json_state
//! path) and fires by one of five kinds.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::duration::HumanDuration;
use crate::model::Severity;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    /// A number outside [min, max].
    Range,
    /// `present = false`: fires while the source shows up (an event, a state path);
    /// `present = true`: fires while it is missing.
    Presence,
    /// Dead-man: no sample of the metric for `for`.
    Absence,
    /// A text (event message, state value) matches `pattern`.
    Regex,
    /// A value changed (`direction`: any, increase, decrease) — e.g. a reboot seen
    /// as uptime dropping.
    Change,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    #[default]
    Any,
    Increase,
    Decrease,
}

/// N transitions within a window make an alert flapping: one notice, then quiet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flapping {
    pub transitions: u32,
    pub window: HumanDuration,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Unique; a rule named like a built-in replaces it (`enabled = false` removes it).
    pub name: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Target names or globs (`web-*`); empty: every target.
    #[serde(default)]
    pub targets: Vec<String>,
    /// Only targets with these labels.
    #[serde(default)]
    pub target_labels: BTreeMap<String, String>,
    /// Source, exactly one of: a metric, an event kind, a check name, a state path.
    #[serde(default)]
    pub metric: Option<String>,
    #[serde(default)]
    pub event: Option<String>,
    #[serde(default)]
    pub check: Option<String>,
    #[serde(default)]
    pub state: Option<String>,
    /// Series label matchers (e.g. `{ mount = "/" }`).
    #[serde(default, rename = "match")]
    pub matchers: BTreeMap<String, String>,
    pub kind: RuleKind,
    #[serde(default)]
    pub min: Option<f64>,
    #[serde(default)]
    pub max: Option<f64>,
    #[serde(default)]
    pub present: Option<bool>,
    #[serde(default)]
    pub pattern: Option<String>,
    #[serde(default)]
    pub direction: Direction,
    /// How long the condition must hold before firing (absence: how long without samples).
    #[serde(default, rename = "for")]
    pub for_: Option<HumanDuration>,
    /// How long a firing alert stays firing after its condition cleared. Event and
    /// change rules resolve after it (default 10m), since an event has no "clear".
    #[serde(default)]
    pub keep_firing_for: Option<HumanDuration>,
    #[serde(default)]
    pub severity: Severity,
    /// Added to the alert's labels (routing, receivers).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Templates: {{target}} {{rule}} {{metric}} {{value}} {{threshold}} {{since}}
    /// {{severity}} {{labels.NAME}}.
    #[serde(default)]
    pub summary: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// Channels of this rule; default: the route of its severity, else the default route.
    #[serde(default)]
    pub channels: Vec<String>,
    #[serde(default)]
    pub flapping: Option<Flapping>,
    /// A remediation run when the alert fires (and optionally when it resolves).
    #[serde(default)]
    pub action: Option<Action>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ActionOn {
    #[default]
    Firing,
    Resolved,
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ActionWhere {
    /// On the alert's target, over its SSH session (or locally for local targets).
    #[default]
    Target,
    /// On the node that owns the alert (e.g. "restart the broken server" from a peer).
    Node,
}

/// `action = { run = "systemctl restart nginx", on = "firing", timeout = "30s", max_per_hour = 3 }`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Action {
    pub run: String,
    #[serde(default)]
    pub on: ActionOn,
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
    #[serde(default)]
    pub max_per_hour: Option<u32>,
    #[serde(default, rename = "where")]
    pub location: ActionWhere,
}

/// Default resolution delay of event and change rules.
pub const EVENT_RESOLVE_AFTER: HumanDuration = HumanDuration::from_secs(600);

impl RuleSpec {
    /// What the rule reads, for messages and templates.
    pub fn source(&self) -> String {
        match (&self.metric, &self.event, &self.check, &self.state) {
            (Some(m), _, _, _) => m.clone(),
            (_, Some(e), _, _) => format!("event {e}"),
            (_, _, Some(c), _) => format!("check {c}"),
            (_, _, _, Some(s)) => format!("state {s}"),
            _ => String::new(),
        }
    }

    /// Problems of the rule alone (pure); channel names are checked by the caller.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        let sources = [&self.metric, &self.event, &self.check, &self.state]
            .iter()
            .filter(|s| s.is_some())
            .count();
        if sources != 1 {
            p.push("set exactly one of metric, event, check and state".into());
        }
        let numeric = self.metric.is_some() || self.check.is_some() || self.state.is_some();
        match self.kind {
            RuleKind::Range => {
                if !numeric {
                    p.push("range needs a metric, check or state source".into());
                }
                if self.min.is_none() && self.max.is_none() && self.check.is_none() {
                    p.push("range needs min, max or both".into());
                }
                if let (Some(a), Some(b)) = (self.min, self.max) {
                    if a > b {
                        p.push(format!("min {a} is above max {b}"));
                    }
                }
            }
            RuleKind::Presence => {
                if self.present.is_none() {
                    p.push("presence needs present = true (must exist) or false (must not)".into());
                }
            }
            RuleKind::Absence => {
                if self.metric.is_none() {
                    p.push("absence needs a metric".into());
                }
                if self.for_.is_none() {
                    p.push("absence needs `for`: how long without samples".into());
                }
            }
            RuleKind::Regex => {
                if self.metric.is_some() || self.check.is_some() {
                    p.push("regex needs an event or state source".into());
                }
                match &self.pattern {
                    None => p.push("regex needs a pattern".into()),
                    Some(r) => {
                        if let Err(e) = regex::Regex::new(r) {
                            p.push(format!("pattern {r:?}: {e}"));
                        }
                    }
                }
            }
            RuleKind::Change => {
                if self.check.is_some() {
                    p.push("change needs a metric, event or state source".into());
                }
            }
        }
        if self.kind != RuleKind::Regex && self.pattern.is_some() {
            p.push("pattern is only for regex rules".into());
        }
        if self.kind != RuleKind::Range && (self.min.is_some() || self.max.is_some()) {
            p.push("min and max are only for range rules".into());
        }
        if let Some(a) = &self.action {
            if a.run.trim().is_empty() {
                p.push("action.run is empty".into());
            }
            if a.max_per_hour == Some(0) {
                p.push("action.max_per_hour must be 1 or more".into());
            }
            if a.timeout.is_some_and(|t| t.get().is_zero()) {
                p.push("action.timeout must be above 0".into());
            }
        }
        if let Some(f) = &self.flapping {
            if f.transitions < 2 || f.window.get().is_zero() {
                p.push("flapping needs transitions >= 2 and a window above 0".into());
            }
        }
        for t in &self.targets {
            if t.is_empty() {
                p.push("an empty target pattern".into());
            }
        }
        p
    }
}

/// Rules that every fleet has unless a rule of the same name replaces them.
pub fn builtin_rules() -> Vec<RuleSpec> {
    let base = |name: &str, kind: RuleKind| RuleSpec {
        name: name.into(),
        enabled: true,
        targets: Vec::new(),
        target_labels: BTreeMap::new(),
        metric: None,
        event: None,
        check: None,
        state: None,
        matchers: BTreeMap::new(),
        kind,
        min: None,
        max: None,
        present: None,
        pattern: None,
        direction: Direction::Any,
        for_: None,
        keep_firing_for: None,
        severity: Severity::Critical,
        labels: BTreeMap::new(),
        summary: None,
        description: None,
        channels: Vec::new(),
        flapping: None,
        action: None,
    };
    vec![
        RuleSpec {
            metric: Some("target.up".into()),
            min: Some(1.0),
            for_: Some(HumanDuration::from_secs(60)),
            summary: Some("{{target}} is unreachable".into()),
            description: Some("{{target}} has not answered since {{since}}".into()),
            ..base("target-unreachable", RuleKind::Range)
        },
        RuleSpec {
            event: Some("host_key_changed".into()),
            present: Some(false),
            summary: Some("host key of {{target}} changed".into()),
            description: Some("{{value}}".into()),
            ..base("host-key-changed", RuleKind::Presence)
        },
        RuleSpec {
            metric: Some("disk.used_pct".into()),
            max: Some(90.0),
            for_: Some(HumanDuration::from_secs(300)),
            severity: Severity::Warning,
            summary: Some("{{target}} disk {{labels.mount}} is {{value}}% full".into()),
            description: Some("above {{threshold}}% since {{since}}".into()),
            ..base("disk-full", RuleKind::Range)
        },
    ]
}

/// The rules in force: built-ins (unless replaced or disabled) plus the fleet's own.
pub fn effective_rules(rules: &[RuleSpec]) -> Vec<RuleSpec> {
    let mut out: Vec<RuleSpec> = builtin_rules()
        .into_iter()
        .filter(|b| !rules.iter().any(|r| r.name == b.name))
        .collect();
    out.extend(rules.iter().filter(|r| r.enabled).cloned());
    out
}
