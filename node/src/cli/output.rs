//! Human tables and the JSON documents scripts rely on (shapes in DESIGN.md).
use std::time::{Duration, UNIX_EPOCH};

use herd_proto::v1 as pb;

pub use crate::api::json::{
    alerts_json, change_json, events_json, query_json, rollup_json, silences_json, status_json,
};

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
    if r.herd_level > 0 && r.herd_level < crate::cluster::types::COMMAND_LEVEL {
        let older: Vec<String> = (r.nodes.iter())
            .filter(|n| n.command_level < crate::cluster::types::COMMAND_LEVEL)
            .map(|n| n.id.to_string())
            .collect();
        // What the herd does without until every member is at this build's level.
        let meanwhile = if r.herd_level < 2 {
            "keeps its resolved alerts"
        } else {
            "keeps every forgotten alert's count"
        };
        out.push_str(&format!(
            "herd command level {1} (this build: {2}): node(s) {0} are not heard at level {2} (an older build, or silent for 5 s); meanwhile the herd {meanwhile}\n",
            older.join(", "),
            r.herd_level,
            crate::cluster::types::COMMAND_LEVEL
        ));
    }
    if r.unknown_commands > 0 {
        out.push_str(&format!(
            "this node applied {} herd command(s) of a later build as nothing: upgrade it\n",
            r.unknown_commands
        ));
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
                if t.exec_mode.is_empty() {
                    t.transport.clone()
                } else {
                    format!("{} ({})", t.transport, t.exec_mode)
                },
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

/// One change of `herd watch` as a line: time, node, kind, then what it says.
pub fn change_line(c: &pb::Change) -> String {
    let what = match c.kind.as_str() {
        "event" => format!("{}  {}  {}", c.target, c.what, c.message),
        "alert" => {
            let mut s = format!("{}  {}  {} -> {}", c.target, c.alert_id, c.from, c.to);
            if !c.message.is_empty() {
                s.push_str(&format!("  (no notification: {})", c.message));
            }
            s
        }
        "owner" => {
            let node = |n: u64| {
                if n == 0 {
                    "nobody".to_string()
                } else {
                    format!("node {n}")
                }
            };
            format!("{}  {} -> {}", c.target, node(c.from_node), node(c.to_node))
        }
        "node" | "gap" => {
            let mut s = format!("node {}  {}", c.subject_node, c.what);
            if !c.message.is_empty() {
                s.push_str("  ");
                s.push_str(&c.message);
            }
            s
        }
        _ => c.message.clone(),
    };
    format!(
        "{}  node {}  {:<6}  {}",
        time(c.ts_ms),
        c.node,
        c.kind,
        what.trim_end()
    )
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
        assert_eq!(v["series"][0]["points"][0], serde_json::json!([5, 1.5]));
        assert_eq!(v["series"][0]["labels"]["mount"], "/");
        assert!(v["gaps"].as_array().unwrap().is_empty());
    }
}
