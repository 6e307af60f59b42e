//! Timeline tests of the rules engine: explicit timestamps, one behaviour each,
//! and a randomized run that checks the lifecycle invariants.
use std::collections::{BTreeMap, HashMap};

use serde_json::json;

use super::*;
use crate::config::rules::{builtin_rules, effective_rules};
use crate::model::EventKind;

/// 2023-11-14T22:13:20Z.
const T0: i64 = 1_700_000_000_000;
const SEC: i64 = 1_000;
const MIN: i64 = 60 * SEC;

fn rule(text: &str) -> RuleSpec {
    let r: RuleSpec = toml::from_str(text).expect("test rule parses");
    assert!(
        r.validate().is_empty(),
        "test rule invalid: {:?}",
        r.validate()
    );
    r
}

fn target(name: &str, labels: &[(&str, &str)]) -> TargetSpec {
    let mut t: TargetSpec =
        toml::from_str(&format!("name = {name:?}\ntransport = \"local\"")).expect("target");
    t.labels = labels_of(labels);
    t
}

fn targets(names: &[&str]) -> Vec<TargetSpec> {
    names.iter().map(|n| target(n, &[])).collect()
}

fn labels_of(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn sample(target: &str, metric: &str, ts: i64, value: f64) -> Sample {
    sample_l(target, metric, &[], ts, value)
}

fn sample_l(target: &str, metric: &str, labels: &[(&str, &str)], ts: i64, value: f64) -> Sample {
    Sample {
        target: target.into(),
        metric: metric.into(),
        labels: labels_of(labels),
        ts_ms: ts,
        value,
    }
}

fn event(target: &str, kind: EventKind, message: &str, ts: i64) -> Event {
    Event {
        ts_ms: ts,
        target: target.into(),
        kind,
        message: message.into(),
    }
}

type Step = (AlertState, AlertState, Option<NotifyKind>);

fn steps(ts: &[Transition]) -> Vec<Step> {
    ts.iter().map(|t| (t.from, t.to, t.notify)).collect()
}

use AlertState::{Firing, Inactive, Pending, Resolved, Resolving};
const N_FIRING: Option<NotifyKind> = Some(NotifyKind::Firing);
const N_RESOLVED: Option<NotifyKind> = Some(NotifyKind::Resolved);
const N_FLAPPING: Option<NotifyKind> = Some(NotifyKind::Flapping);

fn cpu_rule(extra: &str) -> RuleSpec {
    rule(&format!(
        "name = \"cpu\"\nmetric = \"cpu.used_pct\"\nkind = \"range\"\nmax = 90\n{extra}"
    ))
}

fn one(rules: Vec<RuleSpec>) -> Engine {
    Engine::new(rules, &targets(&["web-1"]), Vec::new())
}

fn cpu(e: &mut Engine, ts: i64, v: f64) -> Vec<Step> {
    steps(&e.on_sample(&sample("web-1", "cpu.used_pct", ts, v)))
}

// ---- range, for, keep_firing_for ----

#[test]
fn range_pends_for_then_fires_on_tick_and_resolves() {
    let mut e = one(vec![cpu_rule("for = \"30s\"")]);
    assert_eq!(cpu(&mut e, T0, 95.0), vec![(Inactive, Pending, None)]);
    assert_eq!(cpu(&mut e, T0 + 10 * SEC, 96.0), vec![]);
    assert!(e.tick(T0 + 29 * SEC).is_empty());
    let fired = e.tick(T0 + 30 * SEC);
    assert_eq!(steps(&fired), vec![(Pending, Firing, N_FIRING)]);
    let a = &fired[0].alert;
    assert_eq!(a.state, Firing);
    assert_eq!(a.active_since_ms, T0);
    assert_eq!(a.since_ms, T0 + 30 * SEC);
    assert_eq!(fired[0].ts_ms, T0 + 30 * SEC);
    assert_eq!(a.transitions, 2);
    assert_eq!(a.value, "96");
    assert_eq!(a.summary, "cpu on web-1: cpu.used_pct = 96");
    assert_eq!(
        a.description,
        "cpu.used_pct = 96 (threshold 90) on web-1 since 2023-11-14T22:13:20Z"
    );
    assert_eq!(cpu(&mut e, T0 + 40 * SEC, 95.0), vec![]);
    let done = e.on_sample(&sample("web-1", "cpu.used_pct", T0 + 50 * SEC, 50.0));
    assert_eq!(steps(&done), vec![(Firing, Resolved, N_RESOLVED)]);
    assert_eq!(done[0].alert.transitions, 3);
    assert_eq!(done[0].alert.value, "50");
}

#[test]
fn range_fires_on_a_later_sample_once_for_has_passed() {
    let mut e = one(vec![cpu_rule("for = \"30s\"")]);
    assert_eq!(cpu(&mut e, T0, 95.0), vec![(Inactive, Pending, None)]);
    assert_eq!(cpu(&mut e, T0 + 29 * SEC, 95.0), vec![]);
    assert_eq!(
        cpu(&mut e, T0 + 30 * SEC, 95.0),
        vec![(Pending, Firing, N_FIRING)]
    );
}

#[test]
fn range_clearing_while_pending_goes_inactive_silently() {
    let mut e = one(vec![cpu_rule("for = \"30s\"")]);
    cpu(&mut e, T0, 95.0);
    assert_eq!(
        cpu(&mut e, T0 + 10 * SEC, 50.0),
        vec![(Pending, Inactive, None)]
    );
    assert!(e.alerts().is_empty(), "inactive alerts are not listed");
    assert!(e.tick(T0 + 60 * SEC).is_empty());
    // The next breach starts a new pending period from its own time.
    assert_eq!(
        cpu(&mut e, T0 + 61 * SEC, 95.0),
        vec![(Inactive, Pending, None)]
    );
    assert!(e.tick(T0 + 90 * SEC).is_empty());
    assert_eq!(
        steps(&e.tick(T0 + 91 * SEC)),
        vec![(Pending, Firing, N_FIRING)]
    );
}

/// A takeover (or restart) after a firing episode and a pending period that
/// cleared: the new owner continues the count from the herd's record, so the next
/// FIRING gets a key never used before (it would otherwise be dropped as delivered).
#[test]
fn transition_counts_survive_an_inactive_alert_across_a_takeover() {
    let mut old = one(vec![cpu_rule("for = \"10s\"")]);
    let mut record = std::collections::BTreeMap::new();
    let mut keep = |ts: Vec<Transition>| {
        for t in ts {
            record.insert(t.alert.id.clone(), t.alert.clone());
        }
    };
    keep(old.on_sample(&sample("web-1", "cpu.used_pct", T0, 95.0)));
    keep(old.tick(T0 + 10 * SEC));
    keep(old.on_sample(&sample("web-1", "cpu.used_pct", T0 + 20 * SEC, 50.0)));
    keep(old.on_sample(&sample("web-1", "cpu.used_pct", T0 + 30 * SEC, 95.0)));
    keep(old.on_sample(&sample("web-1", "cpu.used_pct", T0 + 35 * SEC, 50.0)));
    let last = record.values().next().unwrap().clone();
    assert_eq!(last.state, Inactive);
    assert_eq!(last.transitions, 5);
    let used: Vec<u64> = vec![2, 3];

    let mut new = one(vec![cpu_rule("for = \"10s\"")]);
    assert_eq!(new.adopt(record.values().cloned().collect()), 0);
    new.on_sample(&sample("web-1", "cpu.used_pct", T0 + 40 * SEC, 95.0));
    let fired = new.tick(T0 + 50 * SEC);
    assert_eq!(steps(&fired), vec![(Pending, Firing, N_FIRING)]);
    assert_eq!(fired[0].alert.transitions, 7);
    assert!(!used.contains(&fired[0].alert.transitions));
}

/// A node resolved an alert, and before the herd applied that write the target
/// was held from it (a lease blip) and handed back with the herd's older copy
/// (still firing): the engine continues its own later copy, so the RESOLVED is
/// not made a second time (same transition count: the same key twice).
#[test]
fn a_target_handed_back_continues_the_engines_later_copy_not_the_herds_older_one() {
    let mut e = one(vec![cpu_rule("")]);
    let fired = e.on_sample(&sample("web-1", "cpu.used_pct", T0, 95.0));
    let herds_copy = fired[0].alert.clone();
    assert_eq!(herds_copy.transitions, 1);
    let resolved = e.on_sample(&sample("web-1", "cpu.used_pct", T0 + 10 * SEC, 50.0));
    assert_eq!(steps(&resolved), vec![(Firing, Resolved, N_RESOLVED)]);
    // Held: the target leaves the engine; back, with the herd's copy.
    let rules = vec![cpu_rule("")];
    e.reconfigure(rules.clone(), &[]);
    e.reconfigure(rules, &targets(&["web-1"]));
    e.adopt(vec![herds_copy.clone()]);
    assert_eq!(
        cpu(&mut e, T0 + 20 * SEC, 50.0),
        vec![],
        "resolved once, not again"
    );
    let again = e.on_sample(&sample("web-1", "cpu.used_pct", T0 + 30 * SEC, 95.0));
    assert_eq!(steps(&again), vec![(Resolved, Firing, N_FIRING)]);
    assert_eq!(again[0].alert.transitions, 3, "the count goes on from ours");

    // The herd's copy is the later one (another node went on with it): it wins.
    let mut e = one(vec![cpu_rule("")]);
    e.on_sample(&sample("web-1", "cpu.used_pct", T0, 95.0));
    let rules = vec![cpu_rule("")];
    e.reconfigure(rules.clone(), &[]);
    e.reconfigure(rules, &targets(&["web-1"]));
    let theirs = Alert {
        state: Resolved,
        transitions: 2,
        ..herds_copy
    };
    e.adopt(vec![theirs]);
    let fired = e.on_sample(&sample("web-1", "cpu.used_pct", T0 + 20 * SEC, 95.0));
    assert_eq!(steps(&fired), vec![(Resolved, Firing, N_FIRING)]);
    assert_eq!(fired[0].alert.transitions, 3);
}

#[test]
fn range_min_and_max_are_strict() {
    let r = rule("name = \"temp\"\nmetric = \"temp_c\"\nkind = \"range\"\nmin = 10\nmax = 80");
    let mut e = one(vec![r]);
    let mut at = |ts: i64, v: f64| steps(&e.on_sample(&sample("web-1", "temp_c", ts, v)));
    assert_eq!(at(T0, 80.0), vec![]);
    assert_eq!(at(T0 + 1, 10.0), vec![]);
    assert_eq!(at(T0 + 2, 9.5), vec![(Inactive, Firing, N_FIRING)]);
    assert_eq!(at(T0 + 3, 50.0), vec![(Firing, Resolved, N_RESOLVED)]);
    let t = e.on_sample(&sample("web-1", "temp_c", T0 + 4, 81.0));
    assert_eq!(steps(&t), vec![(Resolved, Firing, N_FIRING)]);
    assert!(t[0].alert.description.contains("(threshold 80)"));
}

#[test]
fn keep_firing_for_holds_through_short_clears() {
    let mut e = one(vec![cpu_rule("keep_firing_for = \"60s\"")]);
    assert_eq!(cpu(&mut e, T0, 95.0), vec![(Inactive, Firing, N_FIRING)]);
    assert_eq!(
        cpu(&mut e, T0 + 10 * SEC, 50.0),
        vec![(Firing, Resolving, None)]
    );
    assert!(e.alerts()[0].state.is_firing());
    assert_eq!(
        cpu(&mut e, T0 + 20 * SEC, 95.0),
        vec![(Resolving, Firing, None)]
    );
    assert_eq!(
        cpu(&mut e, T0 + 30 * SEC, 50.0),
        vec![(Firing, Resolving, None)]
    );
    assert_eq!(cpu(&mut e, T0 + 60 * SEC, 40.0), vec![]);
    assert!(e.tick(T0 + 89 * SEC).is_empty());
    assert_eq!(
        steps(&e.tick(T0 + 90 * SEC)),
        vec![(Resolving, Resolved, N_RESOLVED)]
    );
}

#[test]
fn keep_firing_for_also_resolves_on_a_sample() {
    let mut e = one(vec![cpu_rule("keep_firing_for = \"60s\"")]);
    cpu(&mut e, T0, 95.0);
    cpu(&mut e, T0 + 10 * SEC, 50.0);
    assert_eq!(
        cpu(&mut e, T0 + 70 * SEC, 50.0),
        vec![(Resolving, Resolved, N_RESOLVED)]
    );
}

#[test]
fn resolved_alert_fires_again_as_a_new_episode() {
    let mut e = one(vec![cpu_rule("for = \"10s\"")]);
    cpu(&mut e, T0, 95.0);
    e.tick(T0 + 10 * SEC);
    cpu(&mut e, T0 + 20 * SEC, 50.0);
    let again = e.on_sample(&sample("web-1", "cpu.used_pct", T0 + 30 * SEC, 97.0));
    assert_eq!(steps(&again), vec![(Resolved, Pending, None)]);
    assert_eq!(again[0].alert.active_since_ms, T0 + 30 * SEC);
    let fired = e.tick(T0 + 40 * SEC);
    assert_eq!(steps(&fired), vec![(Pending, Firing, N_FIRING)]);
    assert_eq!(fired[0].alert.transitions, 5);
}

#[test]
fn nan_neither_fires_nor_resolves() {
    let mut e = one(vec![cpu_rule("")]);
    assert_eq!(cpu(&mut e, T0, f64::NAN), vec![]);
    assert!(e.alerts().is_empty());
    assert_eq!(
        cpu(&mut e, T0 + 1, 95.0),
        vec![(Inactive, Firing, N_FIRING)]
    );
    assert_eq!(cpu(&mut e, T0 + 2, f64::NAN), vec![]);
    assert_eq!(e.alerts()[0].state, Firing);
    assert_eq!(e.stats().nan_samples, 2);
    assert_eq!(cpu(&mut e, T0 + 3, f64::INFINITY), vec![]);
}

#[test]
fn late_samples_never_move_since_backwards() {
    let mut e = one(vec![cpu_rule("")]);
    cpu(&mut e, T0, 95.0);
    let t = e.on_sample(&sample("web-1", "cpu.used_pct", T0 - 5 * SEC, 10.0));
    assert_eq!(steps(&t), vec![(Firing, Resolved, N_RESOLVED)]);
    assert_eq!(t[0].ts_ms, T0);
    assert_eq!(t[0].alert.since_ms, T0);
}

// ---- flapping ----

#[test]
fn flapping_sends_one_notice_then_the_settled_state() {
    let mut e = one(vec![cpu_rule(
        "flapping = { transitions = 3, window = \"10m\" }",
    )]);
    let mut all = Vec::new();
    for (i, v) in [95.0, 50.0, 95.0, 50.0, 95.0, 50.0, 95.0]
        .iter()
        .enumerate()
    {
        all.extend(e.on_sample(&sample(
            "web-1",
            "cpu.used_pct",
            T0 + i as i64 * 10 * SEC,
            *v,
        )));
    }
    let notes: Vec<_> = all.iter().filter_map(|t| t.notify).collect();
    assert_eq!(
        notes,
        vec![
            NotifyKind::Firing,
            NotifyKind::Resolved,
            NotifyKind::Flapping
        ]
    );
    assert_eq!(all[2].notify, N_FLAPPING);
    assert!(all[2].alert.flapping);
    assert_eq!(all.len(), 7, "transitions still happen while flapping");
    assert!(e.alerts()[0].flapping);
    // Quiet until a window passes without a transition; last one at T0+60s.
    assert!(e.tick(T0 + 60 * SEC + 10 * MIN - 1).is_empty());
    let end = e.tick(T0 + 60 * SEC + 10 * MIN);
    // It settled firing, and people last heard "resolved": tell them once.
    assert_eq!(steps(&end), vec![(Firing, Firing, N_FIRING)]);
    assert!(!end[0].alert.flapping);
    assert_eq!(end[0].alert.transitions, 8);
    // Back to normal: the next clear notifies.
    assert_eq!(
        cpu(&mut e, T0 + 20 * MIN, 50.0),
        vec![(Firing, Resolved, N_RESOLVED)]
    );
}

#[test]
fn flapping_end_is_silent_when_the_state_was_already_told() {
    let mut e = one(vec![cpu_rule(
        "flapping = { transitions = 3, window = \"5m\" }",
    )]);
    for (i, v) in [95.0, 50.0, 95.0, 50.0].iter().enumerate() {
        e.on_sample(&sample("web-1", "cpu.used_pct", T0 + i as i64 * SEC, *v));
    }
    // Notified: firing, resolved, flapping. Settled resolved, as last told.
    let end = e.tick(T0 + 3 * SEC + 5 * MIN);
    assert_eq!(steps(&end), vec![(Resolved, Resolved, None)]);
    assert!(!end[0].alert.flapping);
}

#[test]
fn flapping_counts_only_within_the_window() {
    let mut e = one(vec![cpu_rule(
        "flapping = { transitions = 3, window = \"1m\" }",
    )]);
    let mut notes = Vec::new();
    for (i, v) in [95.0, 50.0, 95.0, 50.0, 95.0].iter().enumerate() {
        let t = e.on_sample(&sample("web-1", "cpu.used_pct", T0 + i as i64 * MIN, *v));
        notes.extend(t.iter().filter_map(|t| t.notify));
    }
    assert!(!notes.contains(&NotifyKind::Flapping), "{notes:?}");
    assert_eq!(notes.len(), 5);
}

// ---- dead-man ----

fn heartbeat() -> RuleSpec {
    rule("name = \"heartbeat\"\nmetric = \"target.up\"\nkind = \"absence\"\nfor = \"2m\"")
}

#[test]
fn absence_fires_for_a_never_reporting_target_from_engine_start() {
    let mut e = Engine::new(vec![heartbeat()], &targets(&["web-1", "web-2"]), Vec::new());
    assert!(e.tick(T0).is_empty());
    assert!(e
        .on_sample(&sample("web-1", "target.up", T0 + MIN, 1.0))
        .is_empty());
    assert!(e.tick(T0 + 2 * MIN - 1).is_empty());
    let t = e.tick(T0 + 2 * MIN);
    assert_eq!(steps(&t), vec![(Inactive, Firing, N_FIRING)]);
    assert_eq!(t[0].alert.target, "web-2");
    assert_eq!(
        t[0].alert.active_since_ms, T0,
        "silent since the engine started"
    );
    assert_eq!(t[0].alert.value, "absent");
    // No repeat while it stays silent.
    assert!(e.tick(T0 + 2 * MIN + SEC).is_empty());
    let t = e.tick(T0 + 3 * MIN);
    assert_eq!(steps(&t), vec![(Inactive, Firing, N_FIRING)]);
    assert_eq!(t[0].alert.target, "web-1");
    assert_eq!(t[0].alert.active_since_ms, T0 + MIN);
    // Recovery: a sample resolves it.
    let r = e.on_sample(&sample("web-2", "target.up", T0 + 4 * MIN, 0.0));
    assert_eq!(steps(&r), vec![(Firing, Resolved, N_RESOLVED)]);
    assert_eq!(r[0].alert.target, "web-2");
    let r = e.on_sample(&sample("web-1", "target.up", T0 + 4 * MIN, 1.0));
    assert_eq!(steps(&r), vec![(Firing, Resolved, N_RESOLVED)]);
    // And fires again after another silence.
    assert!(e.tick(T0 + 6 * MIN - 1).is_empty());
    assert_eq!(e.tick(T0 + 6 * MIN).len(), 2);
}

#[test]
fn absence_tracks_each_series_and_retires_the_placeholder() {
    let r =
        rule("name = \"disk-gone\"\nmetric = \"disk.used_pct\"\nkind = \"absence\"\nfor = \"5m\"");
    let mut e = one(vec![r]);
    e.tick(T0);
    // Never reported: the placeholder fires.
    let t = e.tick(T0 + 5 * MIN);
    assert_eq!(steps(&t), vec![(Inactive, Firing, N_FIRING)]);
    let placeholder = t[0].alert.id.clone();
    // The first real series resolves the placeholder.
    let r = e.on_sample(&sample_l(
        "web-1",
        "disk.used_pct",
        &[("mount", "/")],
        T0 + 6 * MIN,
        10.0,
    ));
    assert_eq!(steps(&r), vec![(Firing, Resolved, N_RESOLVED)]);
    assert_eq!(r[0].alert.id, placeholder);
    e.on_sample(&sample_l(
        "web-1",
        "disk.used_pct",
        &[("mount", "/data")],
        T0 + 6 * MIN,
        10.0,
    ));
    e.on_sample(&sample_l(
        "web-1",
        "disk.used_pct",
        &[("mount", "/")],
        T0 + 10 * MIN,
        10.0,
    ));
    assert!(e.tick(T0 + 11 * MIN - 1).is_empty());
    let t = e.tick(T0 + 11 * MIN);
    assert_eq!(steps(&t), vec![(Inactive, Firing, N_FIRING)]);
    assert_eq!(
        t[0].alert.labels.get("mount").map(String::as_str),
        Some("/data")
    );
    assert_ne!(t[0].alert.id, placeholder);
}

#[test]
fn presence_true_on_a_metric_is_a_dead_man_with_default_silence() {
    let r = rule(
        "name = \"must-report\"\nmetric = \"app.requests\"\nkind = \"presence\"\npresent = true",
    );
    let mut e = one(vec![r]);
    e.tick(T0);
    assert!(e.tick(T0 + DEFAULT_MISSING_AFTER_MS - 1).is_empty());
    assert_eq!(
        steps(&e.tick(T0 + DEFAULT_MISSING_AFTER_MS)),
        vec![(Inactive, Firing, N_FIRING)]
    );
    assert_eq!(
        steps(&e.on_sample(&sample("web-1", "app.requests", T0 + 2 * MIN, 3.0))),
        vec![(Firing, Resolved, N_RESOLVED)]
    );
}

// ---- regex ----

#[test]
fn regex_on_log_match_events_fires_and_auto_resolves() {
    let r = rule(
        "name = \"oom\"\nevent = \"log_match\"\nkind = \"regex\"\npattern = \"(?i)out of memory\"\nkeep_firing_for = \"1m\"",
    );
    let mut e = one(vec![r]);
    let miss = event("web-1", EventKind::LogMatch, "disk quota warning", T0);
    assert!(e.on_event(&miss).is_empty());
    let hit = event(
        "web-1",
        EventKind::LogMatch,
        "kernel: Out of memory: Killed process 1",
        T0,
    );
    let t = e.on_event(&hit);
    assert_eq!(steps(&t), vec![(Inactive, Firing, N_FIRING)]);
    assert_eq!(t[0].alert.value, "kernel: Out of memory: Killed process 1");
    assert!(t[0].alert.labels.is_empty());
    // A second occurrence extends the window; a non-matching line does not.
    let again = event(
        "web-1",
        EventKind::LogMatch,
        "out of memory again",
        T0 + 30 * SEC,
    );
    assert!(e.on_event(&again).is_empty());
    assert!(e
        .on_event(&event("web-1", EventKind::LogMatch, "fine", T0 + 80 * SEC))
        .is_empty());
    assert!(e.tick(T0 + 90 * SEC - 1).is_empty());
    let done = e.tick(T0 + 90 * SEC);
    assert_eq!(steps(&done), vec![(Firing, Resolved, N_RESOLVED)]);
    assert_eq!(done[0].alert.value, "out of memory again");
}

#[test]
fn regex_on_state_strings_is_a_level() {
    let r = rule(
        "name = \"container-down\"\nstate = \"containers.*.status\"\nkind = \"regex\"\npattern = \"^(exited|dead)$\"",
    );
    let mut e = one(vec![r]);
    let web = "containers.web.status";
    let db = "containers.db.status";
    assert!(e
        .on_state("web-1", web, Some(&json!("running")), T0)
        .is_empty());
    let t = e.on_state("web-1", web, Some(&json!("exited")), T0 + SEC);
    assert_eq!(steps(&t), vec![(Inactive, Firing, N_FIRING)]);
    assert_eq!(t[0].alert.value, "exited");
    assert_eq!(t[0].alert.labels.get("path").map(String::as_str), Some(web));
    let t2 = e.on_state("web-1", db, Some(&json!("dead")), T0 + SEC);
    assert_ne!(t2[0].alert.id, t[0].alert.id, "one alert per path");
    assert!(e
        .on_state("web-1", "other.status", Some(&json!("dead")), T0)
        .is_empty());
    assert_eq!(
        steps(&e.on_state("web-1", web, Some(&json!("running")), T0 + 2 * SEC)),
        vec![(Firing, Resolved, N_RESOLVED)]
    );
    assert_eq!(
        steps(&e.on_state("web-1", db, None, T0 + 2 * SEC)),
        vec![(Firing, Resolved, N_RESOLVED)]
    );
}

// ---- change ----

fn reboot(direction: &str) -> RuleSpec {
    rule(&format!(
        "name = \"reboot\"\nmetric = \"uptime_s\"\nkind = \"change\"\ndirection = {direction:?}"
    ))
}

#[test]
fn change_sees_a_reboot_as_uptime_dropping() {
    let mut e = one(vec![reboot("decrease")]);
    let mut up = |ts: i64, v: f64| e.on_sample(&sample("web-1", "uptime_s", ts, v));
    assert!(up(T0, 1000.0).is_empty(), "the first sample is a baseline");
    assert!(up(T0 + 10 * SEC, 1010.0).is_empty());
    let t = up(T0 + 20 * SEC, 5.0);
    assert_eq!(steps(&t), vec![(Inactive, Firing, N_FIRING)]);
    assert_eq!(t[0].alert.value, "5");
    assert!(t[0].alert.description.contains("(threshold 1010)"));
    assert!(up(T0 + 30 * SEC, 15.0).is_empty());
    let resolve_at = T0 + 20 * SEC + millis(EVENT_RESOLVE_AFTER.get());
    assert!(e.tick(resolve_at - 1).is_empty());
    assert_eq!(
        steps(&e.tick(resolve_at)),
        vec![(Firing, Resolved, N_RESOLVED)]
    );
}

#[test]
fn change_direction_is_honoured() {
    let mut inc = one(vec![reboot("increase")]);
    inc.on_sample(&sample("web-1", "uptime_s", T0, 1000.0));
    assert!(inc
        .on_sample(&sample("web-1", "uptime_s", T0 + 1, 5.0))
        .is_empty());
    assert_eq!(
        inc.on_sample(&sample("web-1", "uptime_s", T0 + 2, 6.0))
            .len(),
        1
    );
    let mut any = one(vec![reboot("any")]);
    any.on_sample(&sample("web-1", "uptime_s", T0, 1000.0));
    assert!(any
        .on_sample(&sample("web-1", "uptime_s", T0 + 1, 1000.0))
        .is_empty());
    assert_eq!(
        any.on_sample(&sample("web-1", "uptime_s", T0 + 2, 5.0))
            .len(),
        1
    );
}

#[test]
fn change_on_state_and_events() {
    let st = rule("name = \"version\"\nstate = \"app.version\"\nkind = \"change\"");
    let ev = rule("name = \"down-reason\"\nevent = \"target_down\"\nkind = \"change\"");
    let mut e = one(vec![st, ev]);
    assert!(e
        .on_state("web-1", "app.version", Some(&json!("1.0")), T0)
        .is_empty());
    assert!(e
        .on_state("web-1", "app.version", Some(&json!("1.0")), T0 + 1)
        .is_empty());
    let t = e.on_state("web-1", "app.version", Some(&json!("1.1")), T0 + 2);
    assert_eq!(steps(&t), vec![(Inactive, Firing, N_FIRING)]);
    assert!(t[0].alert.description.contains("(threshold 1.0)"));
    assert!(e
        .on_event(&event("web-1", EventKind::TargetDown, "timeout", T0))
        .is_empty());
    assert!(e
        .on_event(&event("web-1", EventKind::TargetDown, "timeout", T0 + 1))
        .is_empty());
    let t = e.on_event(&event("web-1", EventKind::TargetDown, "refused", T0 + 2));
    assert_eq!(steps(&t), vec![(Inactive, Firing, N_FIRING)]);
    assert_eq!(t[0].alert.value, "refused");
}

// ---- presence ----

#[test]
fn builtin_host_key_changed_fires_and_auto_resolves() {
    let mut e = Engine::new(effective_rules(&[]), &targets(&["web-1"]), Vec::new());
    let msg = "host key of web-1 changed: SHA256:abc";
    let t = e.on_event(&event("web-1", EventKind::HostKeyChanged, msg, T0));
    assert_eq!(steps(&t), vec![(Inactive, Firing, N_FIRING)]);
    assert_eq!(t[0].alert.rule, "host-key-changed");
    assert_eq!(t[0].alert.summary, "host key of web-1 changed");
    assert_eq!(t[0].alert.description, msg);
    // A new occurrence extends the 10-minute window.
    assert!(e
        .on_event(&event(
            "web-1",
            EventKind::HostKeyChanged,
            msg,
            T0 + 5 * MIN
        ))
        .is_empty());
    assert!(e.tick(T0 + 10 * MIN).is_empty());
    assert!(e.tick(T0 + 15 * MIN - 1).is_empty());
    assert_eq!(
        steps(&e.tick(T0 + 15 * MIN)),
        vec![(Firing, Resolved, N_RESOLVED)]
    );
    // Other event kinds are not this rule's.
    assert!(e
        .on_event(&event(
            "web-1",
            EventKind::HostKeyLearned,
            "x",
            T0 + 16 * MIN
        ))
        .is_empty());
}

#[test]
fn presence_on_state_paths() {
    let must = rule(
        "name = \"has-version\"\nstate = \"app.version\"\nkind = \"presence\"\npresent = true",
    );
    let must_not =
        rule("name = \"no-alarm\"\nstate = \"alarms.disk\"\nkind = \"presence\"\npresent = false");
    let mut e = Engine::new(
        vec![must, must_not],
        &targets(&["web-1", "web-2"]),
        Vec::new(),
    );
    e.tick(T0);
    // web-2 reports its version before the grace ends; web-1 never does.
    assert!(e
        .on_state("web-2", "app.version", Some(&json!("1.0")), T0 + 5 * SEC)
        .is_empty());
    assert!(e.tick(T0 + STATE_MISSING_GRACE_MS - 1).is_empty());
    let t = e.tick(T0 + STATE_MISSING_GRACE_MS);
    assert_eq!(steps(&t), vec![(Inactive, Firing, N_FIRING)]);
    assert_eq!(t[0].alert.target, "web-1");
    assert_eq!(t[0].alert.active_since_ms, T0);
    assert_eq!(
        steps(&e.on_state("web-1", "app.version", Some(&json!("2.0")), T0 + 2 * MIN)),
        vec![(Firing, Resolved, N_RESOLVED)]
    );
    assert_eq!(
        steps(&e.on_state("web-2", "app.version", None, T0 + 2 * MIN)),
        vec![(Inactive, Firing, N_FIRING)]
    );
    assert!(
        e.tick(T0 + 10 * MIN).is_empty(),
        "a seen path is not missing-at-start"
    );
    // Must not exist.
    assert_eq!(
        steps(&e.on_state("web-1", "alarms.disk", Some(&json!({"level": 3})), T0)),
        vec![(Inactive, Firing, N_FIRING)]
    );
    assert_eq!(
        steps(&e.on_state("web-1", "alarms.disk", None, T0 + SEC)),
        vec![(Firing, Resolved, N_RESOLVED)]
    );
}

#[test]
fn range_on_state_numbers() {
    let r = rule("name = \"queue\"\nstate = \"queue.depth\"\nkind = \"range\"\nmax = 100");
    let mut e = one(vec![r]);
    assert!(e
        .on_state("web-1", "queue.depth", Some(&json!(50)), T0)
        .is_empty());
    assert_eq!(
        e.on_state("web-1", "queue.depth", Some(&json!(150.5)), T0 + 1)
            .len(),
        1
    );
    assert!(e
        .on_state("web-1", "queue.depth", Some(&json!("n/a")), T0 + 2)
        .is_empty());
    assert_eq!(e.alerts()[0].value, "150.5");
    assert_eq!(
        steps(&e.on_state("web-1", "queue.depth", None, T0 + 3)),
        vec![(Firing, Resolved, N_RESOLVED)]
    );
}

// ---- check, selection, matchers ----

#[test]
fn check_rule_fires_on_any_non_ok_status() {
    let r = rule("name = \"nginx-down\"\ncheck = \"nginx\"\nkind = \"range\"");
    let mut e = one(vec![r]);
    let status = |ts: i64, check: &str, v: f64| {
        sample_l(
            "web-1",
            "check.status",
            &[("check", check), ("kind", "http")],
            ts,
            v,
        )
    };
    assert!(e.on_sample(&status(T0, "nginx", 0.0)).is_empty());
    assert!(e.on_sample(&status(T0, "other", 2.0)).is_empty());
    let t = e.on_sample(&status(T0 + 1, "nginx", 1.0));
    assert_eq!(steps(&t), vec![(Inactive, Firing, N_FIRING)]);
    assert_eq!(
        t[0].alert.labels.get("check").map(String::as_str),
        Some("nginx")
    );
    assert!(t[0].alert.summary.contains("check nginx = 1"));
    assert!(e.on_sample(&status(T0 + 2, "nginx", 2.0)).is_empty());
    assert_eq!(
        steps(&e.on_sample(&status(T0 + 3, "nginx", 0.0))),
        vec![(Firing, Resolved, N_RESOLVED)]
    );
    // Explicit bounds replace the default: only critical and worse.
    let r = rule("name = \"nginx-crit\"\ncheck = \"nginx\"\nkind = \"range\"\nmax = 1");
    let mut e = one(vec![r]);
    assert!(e.on_sample(&status(T0, "nginx", 1.0)).is_empty());
    assert_eq!(e.on_sample(&status(T0, "nginx", 2.0)).len(), 1);
}

#[test]
fn selection_by_globs_and_labels() {
    let r = cpu_rule("targets = [\"web-*\", \"db-?\"]\ntarget_labels = { env = \"prod\" }");
    let ts = vec![
        target("web-1", &[("env", "prod")]),
        target("web-2", &[("env", "dev")]),
        target("db-1", &[("env", "prod"), ("role", "db")]),
        target("db-10", &[("env", "prod")]),
        target("cache-1", &[("env", "prod")]),
    ];
    let mut e = Engine::new(vec![r], &ts, Vec::new());
    let mut fired = Vec::new();
    for t in ["web-1", "web-2", "db-1", "db-10", "cache-1", "not-owned"] {
        for tr in e.on_sample(&sample(t, "cpu.used_pct", T0, 99.0)) {
            fired.push(tr.alert.target);
        }
    }
    fired.sort();
    assert_eq!(fired, vec!["db-1", "web-1"]);
}

#[test]
fn matchers_select_series() {
    let r = rule(
        "name = \"root-full\"\nmetric = \"disk.used_pct\"\nmatch = { mount = \"/\" }\nkind = \"range\"\nmax = 90",
    );
    let mut e = one(vec![r]);
    assert!(e
        .on_sample(&sample_l(
            "web-1",
            "disk.used_pct",
            &[("mount", "/data")],
            T0,
            99.0
        ))
        .is_empty());
    assert!(e
        .on_sample(&sample("web-1", "disk.used_pct", T0, 99.0))
        .is_empty());
    let t = e.on_sample(&sample_l(
        "web-1",
        "disk.used_pct",
        &[("mount", "/"), ("fs", "ext4")],
        T0,
        99.0,
    ));
    assert_eq!(steps(&t), vec![(Inactive, Firing, N_FIRING)]);
    assert_eq!(
        t[0].alert.id,
        alert_id(
            "root-full",
            "web-1",
            &labels_of(&[("mount", "/"), ("fs", "ext4")])
        )
    );
}

#[test]
fn rule_labels_and_severity_reach_the_alert() {
    let r = cpu_rule("severity = \"critical\"\nlabels = { team = \"ops\" }\nsummary = \"{{labels.team}}: {{severity}} {{value}}/{{threshold}}\"");
    let mut e = one(vec![r]);
    let t = e.on_sample(&sample("web-1", "cpu.used_pct", T0, 99.5));
    let a = &t[0].alert;
    assert_eq!(a.severity, crate::model::Severity::Critical);
    assert_eq!(a.labels.get("team").map(String::as_str), Some("ops"));
    assert_eq!(a.summary, "ops: critical 99.5/90");
    // The id is over the series only, not the rule's labels.
    assert_eq!(a.id, alert_id("cpu", "web-1", &Labels::new()));
}

// ---- ack, restore, reconfigure, retention ----

#[test]
fn ack_is_kept_through_flips_and_cleared_on_resolve() {
    let mut e = one(vec![cpu_rule("keep_firing_for = \"1m\"")]);
    assert!(e.ack("nope", "alice").is_none());
    let t = e.on_sample(&sample("web-1", "cpu.used_pct", T0, 95.0));
    let id = t[0].alert.id.clone();
    let acked = e.ack(&id, "alice").expect("firing alert can be acked");
    assert_eq!(acked.acked_by.as_deref(), Some("alice"));
    assert_eq!(cpu(&mut e, T0 + SEC, 50.0), vec![(Firing, Resolving, None)]);
    let t = e.on_sample(&sample("web-1", "cpu.used_pct", T0 + 2 * SEC, 95.0));
    assert_eq!(steps(&t), vec![(Resolving, Firing, None)]);
    assert_eq!(t[0].alert.acked_by.as_deref(), Some("alice"));
    cpu(&mut e, T0 + 3 * SEC, 50.0);
    let done = e.tick(T0 + 63 * SEC);
    assert_eq!(steps(&done), vec![(Resolving, Resolved, N_RESOLVED)]);
    assert_eq!(done[0].alert.acked_by, None);
    assert!(e.ack(&id, "bob").is_none(), "resolved alerts are not acked");
}

#[test]
fn restore_continues_a_firing_alert_without_a_second_notification() {
    let rules = vec![cpu_rule("for = \"30s\"")];
    let mut e = one(rules.clone());
    cpu(&mut e, T0, 95.0);
    let fired = e.tick(T0 + 30 * SEC);
    let stored = fired[0].alert.clone();
    // A new owner takes over from the stored record.
    let mut e2 = Engine::new(rules, &targets(&["web-1"]), vec![stored.clone()]);
    assert_eq!(e2.alerts(), vec![std::sync::Arc::new(stored.clone())]);
    assert!(e2.tick(T0 + 40 * SEC).is_empty());
    assert_eq!(cpu(&mut e2, T0 + 41 * SEC, 97.0), vec![]);
    let done = e2.on_sample(&sample("web-1", "cpu.used_pct", T0 + 50 * SEC, 10.0));
    assert_eq!(steps(&done), vec![(Firing, Resolved, N_RESOLVED)]);
    assert_eq!(done[0].alert.transitions, stored.transitions + 1);
    assert_eq!(done[0].alert.active_since_ms, T0);
}

#[test]
fn restore_continues_a_pending_alert_from_its_start() {
    let rules = vec![cpu_rule("for = \"30s\"")];
    let mut e = one(rules.clone());
    let t = e.on_sample(&sample("web-1", "cpu.used_pct", T0, 95.0));
    let mut e2 = Engine::new(rules, &targets(&["web-1"]), vec![t[0].alert.clone()]);
    assert!(e2.tick(T0 + 29 * SEC).is_empty());
    let fired = e2.tick(T0 + 30 * SEC);
    assert_eq!(steps(&fired), vec![(Pending, Firing, N_FIRING)]);
    assert_eq!(fired[0].alert.transitions, 2);
}

#[test]
fn restore_of_an_event_alert_resolves_after_its_window() {
    let rules = effective_rules(&[]);
    let mut e = Engine::new(rules.clone(), &targets(&["web-1"]), Vec::new());
    let t = e.on_event(&event("web-1", EventKind::HostKeyChanged, "changed", T0));
    let mut e2 = Engine::new(rules, &targets(&["web-1"]), vec![t[0].alert.clone()]);
    // The new owner starts a minute later and counts the window from then.
    assert!(e2.tick(T0 + MIN).is_empty());
    assert!(e2.tick(T0 + 11 * MIN - 1).is_empty());
    assert_eq!(
        steps(&e2.tick(T0 + 11 * MIN)),
        vec![(Firing, Resolved, N_RESOLVED)]
    );
}

#[test]
fn restore_of_a_firing_dead_man_stays_until_a_sample() {
    let mut e = one(vec![heartbeat()]);
    e.tick(T0);
    let t = e.tick(T0 + 2 * MIN);
    let mut e2 = Engine::new(
        vec![heartbeat()],
        &targets(&["web-1"]),
        vec![t[0].alert.clone()],
    );
    assert!(e2.tick(T0 + 3 * MIN).is_empty());
    assert!(e2.tick(T0 + 10 * MIN).is_empty(), "still firing, not again");
    assert_eq!(
        steps(&e2.on_sample(&sample("web-1", "target.up", T0 + 11 * MIN, 1.0))),
        vec![(Firing, Resolved, N_RESOLVED)]
    );
}

#[test]
fn restore_leaves_out_alerts_of_unknown_rules_or_targets() {
    let mut e = Engine::new(
        vec![cpu_rule("")],
        &targets(&["web-1", "web-2"]),
        Vec::new(),
    );
    let a1 = e.on_sample(&sample("web-1", "cpu.used_pct", T0, 95.0))[0]
        .alert
        .clone();
    let a2 = e.on_sample(&sample("web-2", "cpu.used_pct", T0, 95.0))[0]
        .alert
        .clone();
    let mut other = a1.clone();
    other.rule = "gone".into();
    other.id = "0000000000000001".into();
    let mut e2 = Engine::new(
        vec![cpu_rule("")],
        &targets(&["web-1"]),
        vec![a1.clone(), a2.clone(), other],
    );
    assert_eq!(e2.alerts(), vec![std::sync::Arc::new(a1)]);
    let mut dropped = e2.take_dropped_at_restore();
    dropped.sort();
    let mut want = vec![a2.id, "0000000000000001".to_string()];
    want.sort();
    assert_eq!(dropped, want);
    assert!(e2.take_dropped_at_restore().is_empty());
}

#[test]
fn reconfigure_drops_alerts_of_removed_rules_and_targets_silently() {
    let mem = rule("name = \"mem\"\nmetric = \"mem.used_pct\"\nkind = \"range\"\nmax = 90");
    let mut e = Engine::new(
        vec![cpu_rule(""), mem.clone()],
        &targets(&["web-1", "web-2"]),
        Vec::new(),
    );
    let c1 = e.on_sample(&sample("web-1", "cpu.used_pct", T0, 95.0))[0]
        .alert
        .id
        .clone();
    let c2 = e.on_sample(&sample("web-2", "cpu.used_pct", T0, 95.0))[0]
        .alert
        .id
        .clone();
    let m1 = e.on_sample(&sample("web-1", "mem.used_pct", T0, 95.0))[0]
        .alert
        .id
        .clone();
    // Thresholds change, mem goes, web-2 leaves.
    let mut dropped = e.reconfigure(
        vec![cpu_rule("keep_firing_for = \"1m\"")],
        &targets(&["web-1"]),
    );
    let mut want = vec![c2, m1];
    want.sort();
    dropped.sort();
    assert_eq!(dropped, want);
    let left = e.alerts();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].id, c1);
    assert_eq!(left[0].state, Firing);
    // The kept alert follows the new rule (keep_firing_for now).
    assert_eq!(cpu(&mut e, T0 + SEC, 10.0), vec![(Firing, Resolving, None)]);
    assert!(e.tick(T0 + 10 * MIN).iter().all(|t| t.alert.id == c1));
    // A rule that now reads another metric is a different rule.
    let moved = rule("name = \"cpu\"\nmetric = \"cpu.steal_pct\"\nkind = \"range\"\nmax = 90");
    cpu(&mut e, T0 + 11 * MIN, 99.0);
    assert_eq!(e.reconfigure(vec![moved], &targets(&["web-1"])), vec![c1]);
    assert!(e.alerts().is_empty());
}

#[test]
fn reconfigure_starts_dead_man_clocks_for_new_targets_now() {
    let mut e = one(vec![heartbeat()]);
    e.tick(T0);
    e.on_sample(&sample("web-1", "target.up", T0 + 5 * MIN, 1.0));
    assert!(e
        .reconfigure(vec![heartbeat()], &targets(&["web-1", "web-2"]))
        .is_empty());
    assert!(e.tick(T0 + 7 * MIN - 1).is_empty());
    let t = e.tick(T0 + 7 * MIN);
    assert_eq!(t.len(), 2);
    let web2 = t
        .iter()
        .find(|t| t.alert.target == "web-2")
        .expect("web-2 fires");
    assert_eq!(web2.alert.active_since_ms, T0 + 5 * MIN);
}

#[test]
fn resolved_alerts_are_kept_an_hour() {
    let mut e = one(vec![cpu_rule("")]);
    cpu(&mut e, T0, 95.0);
    cpu(&mut e, T0 + SEC, 50.0);
    e.tick(T0 + SEC + RESOLVED_RETENTION_MS - 1);
    assert_eq!(e.alerts().len(), 1);
    assert_eq!(e.alerts()[0].state, Resolved);
    e.tick(T0 + SEC + RESOLVED_RETENTION_MS);
    assert!(e.alerts().is_empty());
    assert_eq!(e.stats().alerts, 0);
}

#[test]
fn forgotten_alerts_are_reported_and_a_count_from_the_herd_goes_on() {
    let mut e = one(vec![cpu_rule("")]);
    e.set_resolved_retention(10 * SEC);
    cpu(&mut e, T0, 95.0);
    cpu(&mut e, T0 + SEC, 50.0);
    assert!(e.take_forgotten().is_empty(), "resolved, kept");
    e.tick(T0 + 11 * SEC);
    let gone = e.take_forgotten();
    assert_eq!(gone.len(), 1);
    assert_eq!((gone[0].target.as_str(), gone[0].transitions), ("web-1", 2));
    assert!(e.take_forgotten().is_empty(), "reported once");
    // Another engine (a new owner) that never saw the alert: the herd's count.
    let mut other = one(vec![cpu_rule("")]);
    other.continue_forgotten(&gone);
    let t = other.on_sample(&sample("web-1", "cpu.used_pct", T0 + MIN, 95.0));
    assert_eq!(t[0].alert.id, gone[0].id);
    assert_eq!(t[0].alert.transitions, 3, "the next episode counts on");
    // A count for a target the engine does not own is not taken.
    let mut third = one(vec![cpu_rule("")]);
    let elsewhere = crate::model::ForgottenAlert {
        target: "web-9".into(),
        ..gone[0].clone()
    };
    third.continue_forgotten(&[elsewhere]);
    let t = third.on_sample(&sample("web-1", "cpu.used_pct", T0 + MIN, 95.0));
    assert_eq!(t[0].alert.transitions, 1);
}

#[test]
fn resolved_alerts_are_capped() {
    let ts: Vec<TargetSpec> = (0..MAX_RESOLVED + 5)
        .map(|i| target(&format!("t-{i}"), &[]))
        .collect();
    let mut e = Engine::new(vec![cpu_rule("")], &ts, Vec::new());
    for (i, t) in ts.iter().enumerate() {
        let at = T0 + i as i64;
        e.on_sample(&sample(&t.name, "cpu.used_pct", at, 95.0));
        e.on_sample(&sample(&t.name, "cpu.used_pct", at, 50.0));
    }
    e.tick(T0 + 10 * SEC);
    let left = e.alerts();
    assert_eq!(left.len(), MAX_RESOLVED);
    assert!(
        left.iter().all(|a| a.target != "t-0"),
        "the oldest go first"
    );
}

#[test]
fn unowned_targets_are_ignored() {
    let mut e = Engine::new(effective_rules(&[]), &targets(&["web-1"]), Vec::new());
    assert!(e
        .on_sample(&sample("web-9", "target.up", T0, 0.0))
        .is_empty());
    assert!(e
        .on_event(&event("web-9", EventKind::HostKeyChanged, "x", T0))
        .is_empty());
    assert!(e.on_state("web-9", "a", Some(&json!(1)), T0).is_empty());
    assert!(e.tick(T0 + 10 * MIN).is_empty());
}

#[test]
fn ids_are_stable() {
    let mut e = one(vec![cpu_rule("")]);
    let t = e.on_sample(&sample_l(
        "web-1",
        "cpu.used_pct",
        &[("cpu", "all")],
        T0,
        95.0,
    ));
    // A fixed tuple has a fixed id, whatever process computes it.
    assert_eq!(t[0].alert.id, "2be3d6c92632338b");
    assert_eq!(
        t[0].alert.id,
        alert_id("cpu", "web-1", &labels_of(&[("cpu", "all")]))
    );
}

// ---- built-in rules ----

#[test]
fn builtin_target_unreachable_fires_after_a_minute_down() {
    let mut e = Engine::new(builtin_rules(), &targets(&["web-1"]), Vec::new());
    assert!(e
        .on_sample(&sample("web-1", "target.up", T0 - 10 * SEC, 1.0))
        .is_empty());
    let t = e.on_sample(&sample("web-1", "target.up", T0, 0.0));
    assert_eq!(steps(&t), vec![(Inactive, Pending, None)]);
    assert!(e
        .on_sample(&sample("web-1", "target.up", T0 + 30 * SEC, 0.0))
        .is_empty());
    assert!(e.tick(T0 + 59 * SEC).is_empty());
    let t = e.tick(T0 + 60 * SEC);
    assert_eq!(steps(&t), vec![(Pending, Firing, N_FIRING)]);
    let a = &t[0].alert;
    assert_eq!(a.rule, "target-unreachable");
    assert_eq!(a.severity, crate::model::Severity::Critical);
    assert_eq!(a.summary, "web-1 is unreachable");
    assert_eq!(
        a.description,
        "web-1 has not answered since 2023-11-14T22:13:20Z"
    );
    assert_eq!(
        steps(&e.on_sample(&sample("web-1", "target.up", T0 + 70 * SEC, 1.0))),
        vec![(Firing, Resolved, N_RESOLVED)]
    );
}

#[test]
fn builtin_disk_full_fires_after_five_minutes_above_90() {
    let mut e = Engine::new(builtin_rules(), &targets(&["web-1"]), Vec::new());
    let root = |ts: i64, v: f64| sample_l("web-1", "disk.used_pct", &[("mount", "/")], ts, v);
    assert_eq!(
        steps(&e.on_sample(&root(T0, 95.0))),
        vec![(Inactive, Pending, None)]
    );
    assert!(e.on_sample(&root(T0 + 4 * MIN, 95.0)).is_empty());
    assert!(e.tick(T0 + 5 * MIN - 1).is_empty());
    let t = e.tick(T0 + 5 * MIN);
    assert_eq!(steps(&t), vec![(Pending, Firing, N_FIRING)]);
    let a = &t[0].alert;
    assert_eq!(a.rule, "disk-full");
    assert_eq!(a.severity, crate::model::Severity::Warning);
    assert_eq!(a.summary, "web-1 disk / is 95% full");
    assert_eq!(a.description, "above 90% since 2023-11-14T22:13:20Z");
}

// ---- randomized invariants ----

/// What the randomized run knows of one alert, from the transitions it saw.
#[derive(Default)]
struct Seen {
    last_transitions: u64,
    last_since: i64,
    /// The last Firing/Resolved notification; None: not known (never, or reset).
    last_notified: Option<NotifyKind>,
    flapping: bool,
}

fn random_rules(rng: &mut impl rand::Rng) -> Vec<RuleSpec> {
    let pick = |rng: &mut dyn rand::RngCore, xs: &[&'static str]| -> &'static str {
        xs[(rng.next_u32() as usize) % xs.len()]
    };
    let mut out = Vec::new();
    for i in 0..rng.random_range(1..6) {
        let timing = format!(
            "{}{}{}",
            pick(rng, &["", "for = \"5s\"\n", "for = \"20s\"\n"]),
            pick(rng, &["", "keep_firing_for = \"10s\"\n"]),
            pick(
                rng,
                &["", "flapping = { transitions = 3, window = \"30s\" }\n"]
            ),
        );
        let body = pick(
            rng,
            &[
                "metric = \"m\"\nkind = \"range\"\nmax = 5",
                "metric = \"m\"\nkind = \"range\"\nmin = 2\nmax = 8",
                "metric = \"m\"\nmatch = { s = \"a\" }\nkind = \"range\"\nmin = 3",
                "check = \"c\"\nkind = \"range\"",
                "metric = \"u\"\nkind = \"change\"\ndirection = \"decrease\"",
                "metric = \"u\"\nkind = \"change\"",
                "event = \"log_match\"\nkind = \"regex\"\npattern = \"err\"",
                "event = \"host_key_changed\"\nkind = \"presence\"\npresent = false",
                "event = \"target_down\"\nkind = \"change\"",
                "state = \"p.*\"\nkind = \"range\"\nmax = 5",
                "state = \"p.a\"\nkind = \"presence\"\npresent = true",
                "state = \"p.?\"\nkind = \"regex\"\npattern = \"^x\"",
                "state = \"p.b\"\nkind = \"change\"",
            ],
        );
        let absence = "metric = \"m\"\nkind = \"absence\"\nfor = \"15s\"";
        let text = if rng.random_range(0..8) == 0 {
            format!(
                "name = \"r{i}\"\n{absence}\n{}",
                timing
                    .replace("for = \"5s\"\n", "")
                    .replace("for = \"20s\"\n", "")
            )
        } else {
            format!("name = \"r{i}\"\n{body}\n{timing}")
        };
        out.push(rule(&text));
    }
    out
}

fn for_of(rules: &[RuleSpec], name: &str) -> i64 {
    rules
        .iter()
        .find(|r| r.name == name)
        .and_then(|r| r.for_)
        .map_or(0, |d| millis(d.get()))
}

fn check_transition(rules: &[RuleSpec], seen: &mut HashMap<String, Seen>, t: &Transition) {
    let a = &t.alert;
    assert_eq!(a.state, t.to, "{t:?}");
    let s = seen.entry(a.id.clone()).or_default();
    assert!(
        a.transitions > s.last_transitions,
        "counter moves on: {t:?}"
    );
    assert!(a.since_ms >= s.last_since, "since never goes back: {t:?}");
    assert!(t.ts_ms >= a.since_ms, "{t:?}");
    s.last_transitions = a.transitions;
    s.last_since = a.since_ms;
    if t.to == Firing && !t.from.is_firing() {
        let for_ms = for_of(rules, &a.rule);
        assert!(
            t.ts_ms - a.active_since_ms >= for_ms,
            "fired before `for` ({for_ms} ms): {t:?}"
        );
    }
    match t.to {
        Pending | Resolving | Inactive => {
            assert!(t.notify.is_none() || t.from == t.to, "{t:?}")
        }
        _ => {}
    }
    match t.notify {
        Some(NotifyKind::Flapping) => {
            assert!(!s.flapping, "one flapping notice per period: {t:?}");
            assert!(a.flapping);
        }
        Some(k) => {
            assert!(!a.flapping, "quiet while flapping: {t:?}");
            match k {
                NotifyKind::Firing => assert_ne!(
                    s.last_notified,
                    Some(NotifyKind::Firing),
                    "firing twice: {t:?}"
                ),
                _ => assert_eq!(
                    s.last_notified,
                    Some(NotifyKind::Firing),
                    "resolved without firing: {t:?}"
                ),
            }
            if k == NotifyKind::Firing {
                assert!(a.state.is_firing(), "{t:?}");
            } else {
                assert!(!a.state.is_firing(), "{t:?}");
            }
            s.last_notified = Some(k);
        }
        None => {}
    }
    if t.from == t.to {
        assert!(
            !a.flapping && s.flapping,
            "same-state transitions end flapping: {t:?}"
        );
    }
    s.flapping = a.flapping;
}

#[test]
fn random_inputs_keep_the_invariants() {
    use rand::{Rng, SeedableRng};
    for seed in 0..40u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let rules = random_rules(&mut rng);
        let ts = targets(&["t1", "t2", "t3"]);
        let mut e = Engine::new(rules.clone(), &ts, Vec::new());
        let mut seen: HashMap<String, Seen> = HashMap::new();
        // The store: each alert as of its last transition (or ack).
        let mut store: BTreeMap<String, Alert> = BTreeMap::new();
        let mut now = T0;
        for _ in 0..1500 {
            now += rng.random_range(0..4_000);
            let tgt = ["t1", "t2", "t3", "t4"][rng.random_range(0..4)];
            let out = match rng.random_range(0..100) {
                0..=34 => {
                    let metric = ["m", "u", "check.status", "other"][rng.random_range(0..4)];
                    let mut labels = Labels::new();
                    if rng.random_bool(0.5) {
                        labels.insert("s".into(), ["a", "b"][rng.random_range(0..2)].into());
                    }
                    if metric == "check.status" {
                        labels.insert("check".into(), ["c", "d"][rng.random_range(0..2)].into());
                    }
                    let value = match rng.random_range(0..12) {
                        0 => f64::NAN,
                        1 => f64::INFINITY,
                        n => f64::from(n - 2),
                    };
                    let s = Sample {
                        target: tgt.into(),
                        metric: metric.into(),
                        labels,
                        ts_ms: now - rng.random_range(0..3_000),
                        value,
                    };
                    e.on_sample(&s)
                }
                35..=49 => {
                    let kind = [
                        EventKind::LogMatch,
                        EventKind::HostKeyChanged,
                        EventKind::TargetDown,
                    ][rng.random_range(0..3)];
                    let msg = ["err 1", "ok", "error", "x"][rng.random_range(0..4)];
                    e.on_event(&event(tgt, kind, msg, now))
                }
                50..=64 => {
                    let path = ["p.a", "p.b", "p.c", "q"][rng.random_range(0..4)];
                    let v = match rng.random_range(0..5) {
                        0 => None,
                        1 => Some(json!("xyz")),
                        2 => Some(json!("abc")),
                        _ => Some(json!(rng.random_range(0..10))),
                    };
                    e.on_state(tgt, path, v.as_ref(), now)
                }
                65..=66 => {
                    // A takeover: a new engine from the store.
                    let restored: Vec<Alert> = store.values().cloned().collect();
                    for a in &restored {
                        if a.flapping {
                            // What was last told during flapping is not stored.
                            // The engine assumes it matched the state.
                            if let Some(s) = seen.get_mut(&a.id) {
                                s.last_notified = a.state.is_firing().then_some(NotifyKind::Firing);
                            }
                        }
                    }
                    e = Engine::new(rules.clone(), &ts, restored);
                    Vec::new()
                }
                67..=69 => {
                    if let Some(a) = e.alerts().first() {
                        if let Some(acked) = e.ack(&a.id.clone(), "op") {
                            store.insert(acked.id.clone(), acked);
                        }
                    }
                    Vec::new()
                }
                _ => e.tick(now),
            };
            for t in &out {
                check_transition(&rules, &mut seen, t);
                store.insert(t.alert.id.clone(), t.alert.clone());
            }
            let alerts = e.alerts();
            assert!(alerts.len() <= MAX_ALERTS);
            assert!(alerts.iter().all(|a| a.state != Inactive));
            assert!(alerts
                .iter()
                .all(|a| a.acked_by.is_none() || a.state.is_firing()));
        }
    }
}

/// What a publish of the alert list costs with 10,000 firing alerts, one of which
/// changed since the last publish: the list shares the alerts (this build) against
/// a deep copy of each (what a publish did before; emulated here by cloning every
/// alert of the list). Run: `cargo test -p herd --release --lib
/// publish_cost_bench -- --ignored --nocapture`.
#[test]
#[ignore]
fn publish_cost_bench() {
    let ts: Vec<TargetSpec> = (0..10_000)
        .map(|i| target(&format!("t-{i:05}"), &[]))
        .collect();
    let mut e = Engine::new(vec![cpu_rule("")], &ts, Vec::new());
    for (i, t) in ts.iter().enumerate() {
        e.on_sample(&sample(&t.name, "cpu.used_pct", T0 + i as i64, 95.0));
    }
    let mut held = e.alerts();
    assert_eq!(held.len(), 10_000);
    let rounds = 200;
    let (mut shared, mut deep) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        // One alert's value changes between publishes, as a sample does.
        let t = &ts[r % ts.len()].name;
        e.on_sample(&sample(
            t,
            "cpu.used_pct",
            T0 + MIN + r as i64,
            96.0 + r as f64,
        ));
        let t0 = std::time::Instant::now();
        held = e.alerts();
        shared.push(t0.elapsed().as_secs_f64() * 1e3);
        let t0 = std::time::Instant::now();
        let copies: Vec<Alert> = held.iter().map(|a| Alert::clone(a)).collect();
        deep.push(t0.elapsed().as_secs_f64() * 1e3 + shared.last().copied().unwrap_or(0.0));
        std::hint::black_box(copies);
    }
    let p = |v: &mut Vec<f64>, q: f64| {
        v.sort_by(f64::total_cmp);
        v[((v.len() - 1) as f64 * q) as usize]
    };
    println!(
        "publish of 10,000 alerts, {rounds} rounds: shared p50/p99 {:.3}/{:.3} ms; deep copy (before) p50/p99 {:.3}/{:.3} ms",
        p(&mut shared, 0.5),
        p(&mut shared, 0.99),
        p(&mut deep, 0.5),
        p(&mut deep, 0.99)
    );
}
