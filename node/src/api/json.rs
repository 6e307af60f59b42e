//! The JSON documents of the client API's replies: what `herd ... --json` prints
//! and what the HTTP face answers, one shape for both.
use herd_proto::v1 as pb;
use serde_json::{json, Value};

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
        "term": r.term,
        "herd_state": {
            "alerts": r.herd_alerts,
            "forgotten_alerts": r.herd_forgotten_alerts,
            "command_level": r.herd_level,
            "unknown_commands": r.unknown_commands,
        },
        "ownership_version": r.ownership_version,
        "unreachable": r.unreachable,
        "nodes": r.nodes.iter().map(|n| json!({
            "id": n.id, "address": n.address, "role": n.role, "alive": n.alive,
            "uptime_s": n.uptime_s, "voter": n.voter, "lease": n.lease,
            "last_seen_ms": n.last_seen_ms, "targets": n.targets,
            "command_level": n.command_level,
        })).collect::<Vec<_>>(),
        "targets": r.targets.iter().map(|t| json!({
            "name": t.name,
            "owner": t.owner,
            "up": match t.up { 1 => json!(true), 0 => json!(false), _ => Value::Null },
            "last_scrape_age_s": (t.last_scrape_age_s >= 0.0).then_some(t.last_scrape_age_s),
            "address": t.address,
            "transport": t.transport,
            "exec_mode": (!t.exec_mode.is_empty()).then_some(&t.exec_mode),
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
        "machines": machines_json(&r.targets),
        "alerts": r.alerts,
        "spec_version": r.spec_version,
        "store": { "bytes": r.store_bytes, "samples": r.store_samples },
    })
}

/// Who watches whose machine: each machine target (`herd-node-N`) of `targets`,
/// the node it watches and the node that owns (scrapes) it.
pub fn machines_json(targets: &[pb::TargetInfo]) -> Value {
    targets
        .iter()
        .filter_map(|t| {
            crate::ownership::machines::watched_node(&t.name).map(|node| {
                json!({
                    "target": t.name, "node": node,
                    "watched_by": (t.owner != 0).then_some(t.owner),
                    "up": match t.up { 1 => json!(true), 0 => json!(false), _ => Value::Null },
                })
            })
        })
        .collect()
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

pub fn alert_json(a: &pb::AlertInfo) -> Value {
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

pub fn silences_json(r: &pb::SilenceListReply) -> Value {
    json!({
        "silences": r.silences.iter().map(|s| json!({
            "id": s.id, "selector": s.selector, "until_ms": s.until_ms, "reason": s.reason,
            "created_ms": s.created_ms, "created_by": s.created_by,
        })).collect::<Vec<_>>(),
    })
}

pub fn events_json(r: &pb::EventsReply) -> Value {
    json!({
        "events": r.events.iter().map(|e| json!({
            "ts_ms": e.ts_ms, "target": e.target, "kind": e.kind, "message": e.message,
        })).collect::<Vec<_>>(),
    })
}

/// One change of `Watch`: what `herd watch --json` prints per line and what the
/// HTTP event stream sends as an event's data. Only the fields of its kind appear.
pub fn change_json(c: &pb::Change) -> Value {
    let mut v = json!({ "ts_ms": c.ts_ms, "kind": c.kind, "node": c.node });
    let o = v.as_object_mut().expect("an object");
    let mut put = |k: &str, val: Value| {
        o.insert(k.to_string(), val);
    };
    match c.kind.as_str() {
        "event" => {
            put("target", json!(c.target));
            put("what", json!(c.what));
            put("message", json!(c.message));
        }
        "alert" => {
            put("target", json!(c.target));
            put("alert_id", json!(c.alert_id));
            put("rule", json!(c.rule));
            put("from", json!(c.from));
            put("to", json!(c.to));
            if !c.message.is_empty() {
                put("suppressed", json!(c.message));
            }
        }
        "owner" => {
            put("target", json!(c.target));
            put(
                "from_node",
                (c.from_node != 0).then_some(c.from_node).into(),
            );
            put("to_node", (c.to_node != 0).then_some(c.to_node).into());
        }
        "node" | "gap" => {
            put("subject_node", json!(c.subject_node));
            put("what", json!(c.what));
            put("message", json!(c.message));
        }
        _ => {
            put("count", json!(c.count));
            put("message", json!(c.message));
        }
    }
    v
}
