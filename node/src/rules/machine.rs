//! One alert's lifecycle, independent of what the rule reads.
//!
//! The engine turns each input into "the condition holds / does not hold at time t"
//! and this machine turns that into transitions:
//!
//! ```text
//! Inactive/Resolved ──holds──▶ Pending ──held `for`──▶ Firing ──clears──▶ Resolving ──clear `keep_firing_for`──▶ Resolved
//!                      (for = 0: straight to Firing)    ▲ └──clears, keep_firing_for = 0──▶ Resolved
//!        Pending ──clears──▶ Inactive                   └──────────holds again (silent)──┘
//! ```
//!
//! Invariants kept here:
//! - `alert.since_ms` never goes backwards: a late input is applied at `since_ms`.
//! - A `Firing` transition out of a non-firing state happens only when the
//!   condition has held for `for` (`ts - active_since_ms >= for`).
//! - Notifications of one alert alternate Firing, Resolved, Firing, ... starting with
//!   Firing (a `Flapping` notice may stand in for one of them). `last_notified`
//!   remembers which was sent last, and the end of a flapping period sends the
//!   current state if it differs, so the alternation survives flapping.
//! - Every transition increments `alert.transitions` exactly once, so
//!   `alert-id:transitions` is unique per alert and usable as an idempotency key.
use std::collections::VecDeque;

use super::engine::Transition;
use super::template::{render, Vars};
use crate::model::{Alert, AlertState, Labels, NotifyKind};

/// A rule's timing, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Params {
    /// How long the condition must hold before firing.
    pub for_ms: i64,
    /// Hysteresis: how long a firing alert stays firing after its condition cleared.
    pub keep_ms: i64,
    /// Flapping: this many firing/resolved transitions within the window.
    pub flap: Option<(usize, i64)>,
}

/// What rendering a transition's texts needs from the rule.
pub(crate) struct Texts<'a> {
    pub summary: &'a str,
    pub description: &'a str,
    pub metric: &'a str,
}

#[derive(Debug, Clone)]
pub(crate) struct Machine {
    /// Shared with the list the rules task publishes: a change copies the alert
    /// only when that list still holds it ([`Machine::alert_mut`]), so a publish
    /// copies the alerts that changed since the last one, not every alert.
    pub alert: std::sync::Arc<Alert>,
    /// The series part of the alert's identity (without the rule's labels).
    pub series: Labels,
    /// Whether the condition held at the last input.
    pub holds: bool,
    /// Event-like rules: the latest occurrence. `None` after a restore: the engine
    /// then counts from the later of `since_ms` and its own start.
    pub last_occurrence_ms: Option<i64>,
    /// Threshold text for templates.
    pub threshold: String,
    /// The last Firing or Resolved notification sent (Flapping notices excluded).
    last_notified: Option<NotifyKind>,
    /// Times of the recent counted transitions, at most `flap.0` of them.
    flaps: VecDeque<i64>,
    /// Time of the latest counted transition, to tell when flapping is over.
    last_counted_ms: Option<i64>,
}

impl Machine {
    pub fn new(alert: Alert, series: Labels) -> Machine {
        Machine {
            alert: std::sync::Arc::new(alert),
            series,
            holds: false,
            last_occurrence_ms: None,
            threshold: String::new(),
            last_notified: None,
            flaps: VecDeque::new(),
            last_counted_ms: None,
        }
    }

    /// The alert, to change (copied first when the published list shares it).
    pub fn alert_mut(&mut self) -> &mut Alert {
        std::sync::Arc::make_mut(&mut self.alert)
    }

    /// Continues an alert read back from the store (after a restart or a takeover):
    /// same state, since, counter and flags. What was notified is inferred from the
    /// state — a firing alert has sent its Firing notification, a resolved one its
    /// Resolved — so the continuation sends no duplicate. During flapping the
    /// notified state is unknown; it is assumed to match the current state, which
    /// may skip one end-of-flapping notice but never repeats one.
    pub fn restore(alert: Alert, series: Labels) -> Machine {
        let holds = matches!(alert.state, AlertState::Pending | AlertState::Firing);
        let last_notified = match alert.state {
            AlertState::Firing | AlertState::Resolving => Some(NotifyKind::Firing),
            AlertState::Resolved => Some(NotifyKind::Resolved),
            AlertState::Pending | AlertState::Inactive => None,
        };
        let last_counted_ms = alert.flapping.then_some(alert.since_ms);
        Machine {
            holds,
            last_notified,
            last_counted_ms,
            ..Machine::new(alert, series)
        }
    }

    /// Settled alerts (inactive or resolved, not flapping) may be forgotten.
    pub fn settled(&self) -> bool {
        matches!(
            self.alert.state,
            AlertState::Inactive | AlertState::Resolved
        ) && !self.alert.flapping
    }

    /// Applies one observation: the condition holds or not at `ts`, and if it holds,
    /// it has held since `cond_since` (the input time for most rules; the last
    /// sample for a dead-man, so its `for` is already inside the condition).
    pub fn step(
        &mut self,
        p: &Params,
        t: &Texts,
        holds: bool,
        cond_since: i64,
        ts: i64,
    ) -> Option<Transition> {
        use AlertState::*;
        let ts = ts.max(self.alert.since_ms);
        self.holds = holds;
        let to = match (self.alert.state, holds) {
            (Inactive | Resolved, true) => {
                // A new episode.
                self.alert_mut().active_since_ms = cond_since.min(ts);
                if ts.saturating_sub(self.alert.active_since_ms) >= p.for_ms {
                    Firing
                } else {
                    Pending
                }
            }
            (Pending, true) if ts.saturating_sub(self.alert.active_since_ms) >= p.for_ms => Firing,
            (Pending, false) => Inactive,
            (Firing, false) if p.keep_ms > 0 => Resolving,
            (Firing, false) => Resolved,
            (Resolving, true) => Firing,
            (Resolving, false) if ts.saturating_sub(self.alert.since_ms) >= p.keep_ms => Resolved,
            _ => return None,
        };
        Some(self.go(p, t, to, ts))
    }

    /// Timer work that needs no input: `for` elapsed while pending, keep_firing_for
    /// elapsed while resolving, the flapping window passed. Event-like resolution
    /// is driven by the engine (it knows the window).
    pub fn tick(&mut self, p: &Params, t: &Texts, now: i64, out: &mut Vec<Transition>) {
        let timed = match self.alert.state {
            AlertState::Pending if self.holds => self.step(p, t, true, now, now),
            AlertState::Resolving if !self.holds => self.step(p, t, false, now, now),
            _ => None,
        };
        out.extend(timed);
        out.extend(self.end_flapping(p, t, now));
    }

    fn go(&mut self, p: &Params, t: &Texts, to: AlertState, ts: i64) -> Transition {
        let from = self.alert.state;
        let episode_start = to == AlertState::Firing && !from.is_firing();
        let counted = episode_start || to == AlertState::Resolved;
        let mut notify = if episode_start && self.last_notified != Some(NotifyKind::Firing) {
            Some(NotifyKind::Firing)
        } else if to == AlertState::Resolved && self.last_notified == Some(NotifyKind::Firing) {
            Some(NotifyKind::Resolved)
        } else {
            None
        };
        if counted {
            if let Some((n, window)) = p.flap {
                self.flaps.push_back(ts);
                while self.flaps.len() > n
                    || self
                        .flaps
                        .front()
                        .is_some_and(|f| ts.saturating_sub(*f) >= window)
                {
                    self.flaps.pop_front();
                }
                self.last_counted_ms = Some(ts);
                if self.alert.flapping {
                    notify = None;
                } else if self.flaps.len() >= n {
                    self.alert_mut().flapping = true;
                    notify = Some(NotifyKind::Flapping);
                }
            }
        }
        if matches!(notify, Some(NotifyKind::Firing | NotifyKind::Resolved)) {
            self.last_notified = notify;
        }
        self.alert_mut().state = to;
        self.alert_mut().since_ms = ts;
        if to == AlertState::Resolved {
            self.alert_mut().acked_by = None;
        }
        self.finish(t, from, notify, ts)
    }

    /// Flapping ends after a window without counted transitions (or when the rule
    /// no longer asks for flapping detection). The flag change is a transition of
    /// its own (`from == to`), so the store sees it; if the alert's firing-ness
    /// differs from the last notification, that notification goes out now so
    /// people learn how it settled.
    fn end_flapping(&mut self, p: &Params, t: &Texts, now: i64) -> Option<Transition> {
        if !self.alert.flapping {
            return None;
        }
        let last = self.last_counted_ms.unwrap_or(self.alert.since_ms);
        let over = match p.flap {
            None => true,
            Some((_, window)) => now.saturating_sub(last) >= window,
        };
        if !over {
            return None;
        }
        self.alert_mut().flapping = false;
        self.flaps.clear();
        self.last_counted_ms = None;
        let firing = self.alert.state.is_firing();
        let notify = match (self.last_notified, firing) {
            (Some(NotifyKind::Firing), false) => Some(NotifyKind::Resolved),
            (last, true) if last != Some(NotifyKind::Firing) => Some(NotifyKind::Firing),
            _ => None,
        };
        if notify.is_some() {
            self.last_notified = notify;
        }
        let from = self.alert.state;
        Some(self.finish(t, from, notify, now.max(self.alert.since_ms)))
    }

    fn finish(
        &mut self,
        t: &Texts,
        from: AlertState,
        notify: Option<NotifyKind>,
        ts: i64,
    ) -> Transition {
        self.alert_mut().transitions = self.alert.transitions.saturating_add(1);
        self.render(t);
        Transition {
            alert: Alert::clone(&self.alert),
            from,
            to: self.alert.state,
            notify,
            ts_ms: ts,
        }
    }

    /// Renders summary and description from the alert's current values.
    fn render(&mut self, t: &Texts) {
        let a = &self.alert;
        let vars = Vars {
            target: &a.target,
            rule: &a.rule,
            metric: t.metric,
            value: &a.value,
            threshold: &self.threshold,
            since_ms: a.active_since_ms,
            severity: a.severity.as_str(),
            labels: &a.labels,
        };
        let summary = render(t.summary, &vars);
        let description = render(t.description, &vars);
        self.alert_mut().summary = summary;
        self.alert_mut().description = description;
    }
}
