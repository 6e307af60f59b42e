//! Human tables and the JSON documents scripts rely on (shapes in DESIGN.md).
use std::time::{Duration, UNIX_EPOCH};

use herd_proto::v1 as pb;
use serde_json::{json, Value};

/// Characters of a check's detail shown in the status table (JSON has it whole).
const DETAIL_CHARS: usize = 100;

/// Left-aligned columns separated by two spaces.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

pub fn time(ts_ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ts_ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

fn age(seconds: f64) -> String {
    if seconds < 0.0 {
        "never".into()
    } else if seconds < 120.0 {
        format!("{seconds:.1}s ago")
    } else {
        format!(
            "{} ago",
            humantime::format_duration(Duration::from_secs(seconds as u64))
        )
    }
}

fn up_word(up: i32) -> &'static str {
    match up {
        1 => "up",
        0 => "DOWN",
        _ => "pending",
    }
}

pub fn status_json(r: &pb::StatusReply) -> Value {
    json!({
        "node_id": r.node_id,
        "herd_id": r.herd_id,
        "bootstrap": r.bootstrap,
        "refusals": r.refusals,
        "rules_inputs_dropped": r.rules_inputs_dropped,
        "quorum_lost": r.quorum_lost,
        "spec_error": r.spec_error,
        "leader": r.leader,
        "ownership_version": r.ownership_version,
        "unreachable": r.unreachable,
        "nodes": r.nodes.iter().map(|n| json!({
            "id": n.id, "address": n.address, "role": n.role, "alive": n.alive,
            "uptime_s": n.uptime_s, "voter": n.voter, "lease": n.lease,
            "last_seen_ms": n.last_seen_ms, "targets": n.targets,
        })).collect::<Vec<_>>(),
        "targets": r.targets.iter().map(|t| json!({
            "name": t.name,
            "owner": t.owner,
            "up": match t.up { 1 => json!(true), 0 => json!(false), _ => Value::Null },
            "last_scrape_age_s": (t.last_scrape_age_s >= 0.0).then_some(t.last_scrape_age_s),
            "address": t.address,
            "transport": t.transport,
            "interval_s": t.interval_ms as f64 / 1000.0,
            "scrapes": t.scrapes,
            "last_error": (!t.last_error.is_empty()).then_some(&t.last_error),
            "paused": t.paused.as_ref().map(|p| json!({
                "by": p.by, "reason": p.reason, "since_ms": p.since_ms,
                "until_ms": (p.until_ms > 0).then_some(p.until_ms),
            })),
            "checks": t.checks.iter().map(|c| json!({
                "name": c.name, "kind": c.kind, "status": c.status, "detail": c.detail, "ts_ms": c.ts_ms,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "alerts": r.alerts,
        "spec_version": r.spec_version,
        "store": { "bytes": r.store_bytes, "samples": r.store_samples },
    })
}

pub fn status_table(r: &pb::StatusReply) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "herd {} · answered by node {} · leader {} · fleet spec v{} · ownership v{} · store {:.1} MiB, {} samples\n",
        if r.herd_id.is_empty() { "(none yet)" } else { &r.herd_id },
        r.node_id,
        r.leader.map_or("none".to_string(), |l| l.to_string()),
        r.spec_version,
        r.ownership_version,
        r.store_bytes as f64 / (1024.0 * 1024.0),
        r.store_samples
    ));
    let node_rows: Vec<Vec<String>> = r
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.id.to_string(),
                n.address.clone(),
                n.role.clone(),
                if n.voter { "yes" } else { "no" }.into(),
                if n.alive { "yes" } else { "NO" }.into(),
                match n.lease {
                    Some(true) => "valid".into(),
                    Some(false) => "NONE".into(),
                    None => String::new(),
                },
                if n.id == r.node_id {
                    "-".into()
                } else {
                    format!("{:.1}s ago", n.last_seen_ms as f64 / 1000.0)
                },
                n.targets.to_string(),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "NODE", "ADDRESS", "ROLE", "VOTER", "ALIVE", "LEASE", "HEARD", "TARGETS",
        ],
        &node_rows,
    ));
    if !r.spec_error.is_empty() {
        out.push_str(&format!("SPEC NOT READ {}\n", r.spec_error));
    }
    if !r.quorum_lost.is_empty() {
        out.push_str(&format!("QUORUM LOST {}\n", r.quorum_lost));
    }
    if r.rules_inputs_dropped > 0 {
        out.push_str(&format!(
            "rules fell behind: {} samples/events not evaluated since start (queue full)\n",
            r.rules_inputs_dropped
        ));
    }
    if !r.bootstrap.is_empty() {
        out.push_str(&format!("not in a herd yet: {}\n", r.bootstrap));
    }
    for refusal in &r.refusals {
        out.push_str(&format!("refused: {refusal}\n"));
    }
    if !r.unreachable.is_empty() {
        let ids: Vec<String> = r.unreachable.iter().map(|i| i.to_string()).collect();
        out.push_str(&format!(
            "no answer from node(s) {}: their targets show as unknown\n",
            ids.join(", ")
        ));
    }
    out.push('\n');
    if r.targets.is_empty() {
        out.push_str("no targets: apply a fleet spec with `herd apply fleet.toml`\n");
        return out;
    }
    let rows: Vec<Vec<String>> = r
        .targets
        .iter()
        .map(|t| {
            let up = match &t.paused {
                Some(p) if p.until_ms > 0 => format!(
                    "paused until {} by {} ({})",
                    time(p.until_ms),
                    p.by,
                    p.reason
                ),
                Some(p) => format!("paused by {} ({})", p.by, p.reason),
                None => up_word(t.up).into(),
            };
            vec![
                t.name.clone(),
                up,
                age(t.last_scrape_age_s),
                t.transport.clone(),
                t.address.clone(),
                t.owner.to_string(),
                t.last_error.clone(),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "TARGET",
            "UP",
            "LAST SCRAPE",
            "TRANSPORT",
            "ADDRESS",
            "OWNER",
            "ERROR",
        ],
        &rows,
    ));
    let checks: Vec<Vec<String>> = r
        .targets
        .iter()
        .flat_map(|t| {
            t.checks.iter().map(move |c| {
                vec![
                    t.name.clone(),
                    c.name.clone(),
                    c.kind.clone(),
                    c.status.to_uppercase(),
                    crate::model::text::prefix_chars(&c.detail, DETAIL_CHARS).to_string(),
                ]
            })
        })
        .collect();
    if !checks.is_empty() {
        out.push('\n');
        out.push_str(&table(
            &["TARGET", "CHECK", "KIND", "STATUS", "DETAIL"],
            &checks,
        ));
    }
    out
}

pub fn query_json(r: &pb::QueryReply) -> Value {
    json!({
        "target": r.target,
        "metric": r.metric,
        "series": r.series.iter().map(|s| json!({
            "labels": s.labels.iter().collect::<std::collections::BTreeMap<_, _>>(),
            "points": s.points.iter().map(|p| json!([p.ts_ms, p.value])).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "gaps": r.gaps.iter().map(|g| json!({"from_ms": g.from_ms, "to_ms": g.to_ms, "reason": g.reason, "node": (g.node > 0).then_some(g.node)})).collect::<Vec<_>>(),
    })
}

fn series_name(metric: &str, labels: &std::collections::HashMap<String, String>) -> String {
    if labels.is_empty() {
        return metric.to_string();
    }
    let mut l: Vec<_> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    l.sort();
    format!("{metric}{{{}}}", l.join(","))
}

pub fn query_table(r: &pb::QueryReply) -> String {
    if r.series.is_empty() {
        return format!(
            "no samples of {} for {} in that range\n",
            r.metric, r.target
        );
    }
    let mut out = String::new();
    for s in &r.series {
        out.push_str(&format!(
            "{} {} — {} points\n",
            r.target,
            series_name(&r.metric, &s.labels),
            s.points.len()
        ));
        let rows: Vec<Vec<String>> = s
            .points
            .iter()
            .map(|p| vec![time(p.ts_ms), format_value(p.value)])
            .collect();
        out.push_str(&table(&["TIME", "VALUE"], &rows));
        out.push('\n');
    }
    out
}

pub fn rollup_json(r: &pb::QueryReply) -> Value {
    json!({
        "target": r.target,
        "metric": r.metric,
        "rollup": r.rollup,
        "series": r.rollups.iter().map(|s| json!({
            "labels": s.labels.iter().collect::<std::collections::BTreeMap<_, _>>(),
            "buckets": s.buckets.iter().map(|b| json!({
                "bucket_ms": b.bucket_ms,
                "count": b.count,
                "min": b.min, "max": b.max, "mean": b.mean,
                "statuses": b.statuses.iter().collect::<std::collections::BTreeMap<_, _>>(),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

pub fn rollup_table(r: &pb::QueryReply) -> String {
    if r.rollups.is_empty() {
        return format!(
            "no {} rollups of {} for {} in that range\n",
            r.rollup, r.metric, r.target
        );
    }
    let ms = |v: Option<f64>| v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into());
    let mut out = String::new();
    for s in &r.rollups {
        out.push_str(&format!(
            "{} {} per {}\n",
            r.target,
            series_name(&r.metric, &s.labels),
            r.rollup
        ));
        let rows: Vec<Vec<String>> = s
            .buckets
            .iter()
            .map(|b| {
                let mut statuses: Vec<_> = b.statuses.iter().collect();
                statuses.sort();
                vec![
                    time(b.bucket_ms),
                    b.count.to_string(),
                    ms(b.min),
                    ms(b.mean),
                    ms(b.max),
                    statuses
                        .iter()
                        .map(|(k, v)| format!("{k}:{v}"))
                        .collect::<Vec<_>>()
                        .join(" "),
                ]
            })
            .collect();
        out.push_str(&table(
            &["BUCKET", "COUNT", "MIN_MS", "MEAN_MS", "MAX_MS", "STATUSES"],
            &rows,
        ));
        out.push('\n');
    }
    out
}

fn alert_json(a: &pb::AlertInfo) -> Value {
    json!({
        "id": a.id, "rule": a.rule, "target": a.target,
        "labels": a.labels.iter().collect::<std::collections::BTreeMap<_, _>>(),
        "severity": a.severity, "state": a.state, "since_ms": a.since_ms,
        "active_since_ms": a.active_since_ms, "value": a.value, "summary": a.summary,
        "description": a.description,
        "acked_by": (!a.acked_by.is_empty()).then_some(&a.acked_by),
        "flapping": a.flapping, "transitions": a.transitions,
    })
}

pub fn alerts_json(r: &pb::AlertsReply) -> Value {
    json!({
        "alerts": r.alerts.iter().map(alert_json).collect::<Vec<_>>(),
        "history": r.history.iter().map(|t| json!({
            "alert_id": t.alert_id, "rule": t.rule, "target": t.target, "from": t.from,
            "to": t.to, "notify": (!t.notify.is_empty()).then_some(&t.notify), "ts_ms": t.ts_ms,
            "suppressed": (!t.suppressed.is_empty()).then_some(&t.suppressed),
        })).collect::<Vec<_>>(),
        "outbox": r.outbox,
    })
}

pub fn alerts_table(r: &pb::AlertsReply) -> String {
    let mut out = String::new();
    if r.alerts.is_empty() {
        out.push_str("no alerts\n");
    } else {
        let rows: Vec<Vec<String>> = r
            .alerts
            .iter()
            .map(|a| {
                let mut state = a.state.to_uppercase();
                if a.flapping {
                    state.push_str(" (flapping)");
                }
                if !a.acked_by.is_empty() {
                    state.push_str(&format!(" (acked by {})", a.acked_by));
                }
                vec![
                    a.id.clone(),
                    state,
                    a.severity.clone(),
                    a.rule.clone(),
                    a.target.clone(),
                    time(a.since_ms),
                    a.value.clone(),
                    a.summary.clone(),
                ]
            })
            .collect();
        out.push_str(&table(
            &[
                "ID", "STATE", "SEVERITY", "RULE", "TARGET", "SINCE", "VALUE", "SUMMARY",
            ],
            &rows,
        ));
    }
    if r.outbox > 0 {
        out.push_str(&format!(
            "\n{} notification(s) waiting for delivery\n",
            r.outbox
        ));
    }
    if !r.history.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = r
            .history
            .iter()
            .map(|t| {
                vec![
                    time(t.ts_ms),
                    t.alert_id.clone(),
                    t.rule.clone(),
                    t.target.clone(),
                    format!("{} -> {}", t.from, t.to),
                    if t.suppressed.is_empty() {
                        t.notify.clone()
                    } else {
                        format!("{} ({})", t.notify, t.suppressed)
                    },
                ]
            })
            .collect();
        out.push_str(&table(
            &["TIME", "ID", "RULE", "TARGET", "TRANSITION", "NOTIFIED"],
            &rows,
        ));
    }
    out
}

pub fn silences_json(r: &pb::SilenceListReply) -> Value {
    json!({
        "silences": r.silences.iter().map(|s| json!({
            "id": s.id, "selector": s.selector, "until_ms": s.until_ms, "reason": s.reason,
            "created_ms": s.created_ms, "created_by": s.created_by,
        })).collect::<Vec<_>>(),
    })
}

pub fn silences_table(r: &pb::SilenceListReply) -> String {
    if r.silences.is_empty() {
        return "no active silences\n".into();
    }
    let rows: Vec<Vec<String>> = r
        .silences
        .iter()
        .map(|s| {
            vec![
                s.id.clone(),
                s.selector.clone(),
                time(s.until_ms),
                s.created_by.clone(),
                s.reason.clone(),
            ]
        })
        .collect();
    table(&["ID", "SELECTOR", "UNTIL", "BY", "REASON"], &rows)
}

pub fn format_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

pub fn events_json(r: &pb::EventsReply) -> Value {
    json!({
        "events": r.events.iter().map(|e| json!({
            "ts_ms": e.ts_ms, "target": e.target, "kind": e.kind, "message": e.message,
        })).collect::<Vec<_>>(),
    })
}

pub fn events_table(r: &pb::EventsReply) -> String {
    if r.events.is_empty() {
        return "no events in that range\n".into();
    }
    let rows: Vec<Vec<String>> = r
        .events
        .iter()
        .map(|e| {
            vec![
                time(e.ts_ms),
                e.target.clone(),
                e.kind.clone(),
                e.message.clone(),
            ]
        })
        .collect();
    table(&["TIME", "TARGET", "KIND", "MESSAGE"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let t = table(&["A", "LONGER"], &[vec!["xxxx".into(), "y".into()]]);
        assert_eq!(t, "A     LONGER\nxxxx  y\n");
    }

    #[test]
    fn query_json_has_the_documented_shape() {
        let r = pb::QueryReply {
            target: "t".into(),
            metric: "m".into(),
            series: vec![pb::Series {
                labels: [("mount".to_string(), "/".to_string())].into(),
                points: vec![pb::Point {
                    ts_ms: 5,
                    value: 1.5,
                }],
            }],
            gaps: vec![],
            ..Default::default()
        };
        let v = query_json(&r);
        assert_eq!(v["series"][0]["points"][0], json!([5, 1.5]));
        assert_eq!(v["series"][0]["labels"]["mount"], "/");
        assert!(v["gaps"].as_array().unwrap().is_empty());
    }
}
