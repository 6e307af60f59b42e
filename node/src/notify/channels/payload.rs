//! What the channels say: the JSON documents (Herd's own and Alertmanager's webhook
//! format) and the short texts shared by every kind.
use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use crate::model::{Notification, NotifyKind};

/// "FIRING", "RESOLVED" or "FLAPPING".
pub(super) fn kind_tag(kind: NotifyKind) -> &'static str {
    match kind {
        NotifyKind::Firing => "FIRING",
        NotifyKind::Resolved => "RESOLVED",
        NotifyKind::Flapping => "FLAPPING",
    }
}

/// `[FIRING] disk-full on web-1`.
pub(super) fn headline(n: &Notification) -> String {
    format!(
        "[{}] {} on {}",
        kind_tag(n.kind),
        n.alert.rule,
        n.alert.target
    )
}

/// The tag of a group: `[FIRING]` when every notification has one kind, otherwise
/// the counts (`[FIRING 2, RESOLVED 1]`).
pub(super) fn group_tag(group: &[Notification]) -> String {
    let mut counts: Vec<(NotifyKind, usize)> = Vec::new();
    for n in group {
        match counts.iter_mut().find(|(k, _)| *k == n.kind) {
            Some((_, c)) => *c += 1,
            None => counts.push((n.kind, 1)),
        }
    }
    if counts.len() == 1 {
        return format!("[{}]", kind_tag(counts[0].0));
    }
    let parts: Vec<String> = counts
        .iter()
        .map(|(k, c)| format!("{} {c}", kind_tag(*k)))
        .collect();
    format!("[{}]", parts.join(", "))
}

/// `on web-1`, or `on 3 targets` when the group spans several.
fn group_where(group: &[Notification]) -> String {
    let first = &group[0].alert.target;
    if group.iter().all(|n| &n.alert.target == first) {
        format!("on {first}")
    } else {
        let mut targets: Vec<&str> = group.iter().map(|n| n.alert.target.as_str()).collect();
        targets.sort_unstable();
        targets.dedup();
        format!("on {} targets", targets.len())
    }
}

/// `[FIRING] disk-full on web-1` for one notification, `[FIRING] 3 alerts on web-1`
/// for a group.
pub(super) fn subject(group: &[Notification]) -> String {
    match group {
        [one] => headline(one),
        _ => format!(
            "{} {} alerts {}",
            group_tag(group),
            group.len(),
            group_where(group)
        ),
    }
}

/// The idempotency keys of the group joined by ",".
pub(super) fn joined_keys(group: &[Notification]) -> String {
    group
        .iter()
        .map(|n| n.idempotency_key.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// Unix ms as RFC 3339 UTC with milliseconds (negative times clamp to the epoch).
pub(super) fn rfc3339_ms(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// Labels as `a=b, c=d` (empty when none).
pub(super) fn labels_line(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Herd's own document (webhook format "json", and stdin of command channels):
///
/// ```json
/// {"version":"1","idempotency_key":"k1,k2","notifications":[
///   {"idempotency_key":"k1","channel":"ops","kind":"firing","alert":{...},"ts_ms":1700000000000}]}
/// ```
pub fn herd_document(group: &[Notification]) -> Value {
    json!({
        "version": "1",
        "idempotency_key": joined_keys(group),
        "notifications": group,
    })
}

/// The payload Alertmanager sends to webhook receivers (version 4). A flapping
/// notification is a firing alert with the annotation `flapping="true"`.
pub fn alertmanager_document(receiver: &str, group: &[Notification]) -> Value {
    let alerts: Vec<Value> = group.iter().map(am_alert).collect();
    let any_firing = group.iter().any(|n| n.kind != NotifyKind::Resolved);

    let common = |field: &str| -> Map<String, Value> {
        let mut iter = alerts.iter().map(|a| a[field].as_object());
        let Some(Some(first)) = iter.next() else {
            return Map::new();
        };
        let mut out = first.clone();
        for other in iter {
            let other = other.cloned().unwrap_or_default();
            out.retain(|k, v| other.get(k) == Some(v));
        }
        out
    };
    let common_labels = common("labels");
    let mut group_labels = Map::new();
    for key in ["alertname", "target"] {
        if let Some(v) = common_labels.get(key) {
            group_labels.insert(key.to_string(), v.clone());
        }
    }
    let group_key = format!(
        "{{}}:{{{}}}",
        group_labels
            .iter()
            .map(|(k, v)| format!("{k}={}", v))
            .collect::<Vec<_>>()
            .join(",")
    );
    json!({
        "version": "4",
        "groupKey": group_key,
        "truncatedAlerts": 0,
        "status": if any_firing { "firing" } else { "resolved" },
        "receiver": receiver,
        "groupLabels": group_labels,
        "commonLabels": common_labels,
        "commonAnnotations": common("annotations"),
        "externalURL": "",
        "alerts": alerts,
    })
}

fn am_alert(n: &Notification) -> Value {
    let resolved = n.kind == NotifyKind::Resolved;
    let (labels, annotations, starts) = am_labels(n);
    json!({
        "status": if resolved { "resolved" } else { "firing" },
        "labels": labels,
        "annotations": annotations,
        "startsAt": rfc3339_ms(starts),
        "endsAt": if resolved { rfc3339_ms(n.ts_ms) } else { "0001-01-01T00:00:00Z".to_string() },
        "generatorURL": "",
        "fingerprint": n.alert.id,
    })
}

/// An alert's labels (its rule's, `alertname`, `target`, `severity`), annotations
/// (`summary`, `description`, `value`, and `flapping` on a FLAPPING) and start
/// (Unix ms), as Alertmanager names them: one mapping for the webhook payload and
/// for the alerts posted to Alertmanager. The labels are the alert's identity
/// there (its fingerprint): nothing that differs between nodes is among them.
fn am_labels(n: &Notification) -> (Map<String, Value>, Map<String, Value>, i64) {
    let a = &n.alert;
    let mut labels = Map::new();
    for (k, v) in &a.labels {
        labels.insert(k.clone(), Value::from(v.as_str()));
    }
    labels.insert("alertname".into(), Value::from(a.rule.as_str()));
    labels.insert("target".into(), Value::from(a.target.as_str()));
    labels.insert("severity".into(), Value::from(a.severity.as_str()));
    let mut annotations = Map::new();
    annotations.insert("summary".into(), Value::from(a.summary.as_str()));
    annotations.insert("description".into(), Value::from(a.description.as_str()));
    annotations.insert("value".into(), Value::from(a.value.as_str()));
    if n.kind == NotifyKind::Flapping {
        annotations.insert("flapping".into(), Value::from("true"));
    }
    let starts = if a.active_since_ms > 0 {
        a.active_since_ms
    } else {
        a.since_ms
    };
    (labels, annotations, starts)
}

/// The body of a POST to Alertmanager's `/api/v2/alerts`: one postable alert per
/// notification. A firing (or flapping) alert ends at `now_ms + hold_ms` unless
/// posted again by then; a resolved one ended when it resolved. `generator` is
/// the base URL of the page that shows the target.
pub fn alertmanager_api_alerts(
    group: &[Notification],
    now_ms: i64,
    hold_ms: i64,
    generator: &str,
) -> Value {
    let alerts: Vec<Value> = group
        .iter()
        .map(|n| {
            let (labels, annotations, starts) = am_labels(n);
            let ends = if n.kind == NotifyKind::Resolved {
                n.ts_ms.max(starts)
            } else {
                now_ms + hold_ms
            };
            let mut alert = json!({
                "labels": labels,
                "annotations": annotations,
                "startsAt": rfc3339_ms(starts),
                "endsAt": rfc3339_ms(ends),
            });
            if !generator.is_empty() {
                alert["generatorURL"] = Value::from(format!(
                    "{}/#target={}",
                    generator.trim_end_matches('/'),
                    form_urlencoded::byte_serialize(n.alert.target.as_bytes()).collect::<String>()
                ));
            }
            alert
        })
        .collect();
    Value::Array(alerts)
}

#[cfg(test)]
mod tests {
    use super::super::testkit::notification;
    use super::*;

    #[test]
    fn subjects() {
        let f = notification("disk-full", "web-1", NotifyKind::Firing, 1);
        let r = notification("disk-full", "web-1", NotifyKind::Resolved, 2);
        let fl = notification("disk-full", "web-1", NotifyKind::Flapping, 3);
        assert_eq!(
            subject(std::slice::from_ref(&f)),
            "[FIRING] disk-full on web-1"
        );
        assert_eq!(
            subject(std::slice::from_ref(&r)),
            "[RESOLVED] disk-full on web-1"
        );
        assert_eq!(
            subject(std::slice::from_ref(&fl)),
            "[FLAPPING] disk-full on web-1"
        );
        let g = vec![f.clone(), f.clone(), f.clone()];
        assert_eq!(subject(&g), "[FIRING] 3 alerts on web-1");
        let g = vec![f.clone(), r.clone(), f.clone()];
        assert_eq!(subject(&g), "[FIRING 2, RESOLVED 1] 3 alerts on web-1");
        let other = notification("load", "web-2", NotifyKind::Firing, 1);
        assert_eq!(subject(&[f, other]), "[FIRING] 2 alerts on 2 targets");
    }

    #[test]
    fn times() {
        assert_eq!(rfc3339_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339_ms(-5), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn herd_document_shape() {
        let a = notification("disk-full", "web-1", NotifyKind::Firing, 1);
        let b = notification("inode-full", "web-1", NotifyKind::Resolved, 2);
        let doc = herd_document(&[a.clone(), b.clone()]);
        assert_eq!(doc["version"], "1");
        assert_eq!(
            doc["idempotency_key"],
            format!("{},{}", a.idempotency_key, b.idempotency_key)
        );
        let n = &doc["notifications"][0];
        assert_eq!(n["idempotency_key"], a.idempotency_key.as_str());
        assert_eq!(n["kind"], "firing");
        assert_eq!(n["channel"], "test");
        assert_eq!(n["ts_ms"], a.ts_ms);
        let back: Notification = serde_json::from_value(n.clone()).unwrap();
        assert_eq!(back, a);
        assert_eq!(doc["notifications"][1]["kind"], "resolved");
    }

    #[test]
    fn alertmanager_api_alerts_shape() {
        let f = notification("disk-full", "web 1", NotifyKind::Firing, 1);
        let r = notification("disk-full", "web-2", NotifyKind::Resolved, 2);
        let fl = notification("load", "web-3", NotifyKind::Flapping, 3);
        let now = 1_700_000_100_000;
        let doc = alertmanager_api_alerts(&[f, r, fl], now, 240_000, "http://n1:9090/");
        let a = doc.as_array().unwrap();
        assert_eq!(a.len(), 3);
        // Labels: the rule's, then alertname, target, severity; no node in them.
        assert_eq!(a[0]["labels"]["alertname"], "disk-full");
        assert_eq!(a[0]["labels"]["target"], "web 1");
        assert_eq!(a[0]["labels"]["severity"], "critical");
        assert_eq!(a[0]["labels"]["mount"], "/");
        assert_eq!(a[0]["annotations"]["value"], "93.5");
        // Started when the alert became active; ends 4 intervals ahead unless posted again.
        assert_eq!(a[0]["startsAt"], rfc3339_ms(1_700_000_000_000));
        assert_eq!(a[0]["endsAt"], rfc3339_ms(now + 240_000));
        assert_eq!(a[0]["generatorURL"], "http://n1:9090/#target=web+1");
        assert!(
            a[0].get("status").is_none(),
            "postable alerts have no status"
        );
        // A resolved alert ends when it resolved.
        assert_eq!(a[1]["endsAt"], rfc3339_ms(1_700_000_060_000));
        assert_eq!(a[2]["annotations"]["flapping"], "true");
        assert_eq!(a[2]["endsAt"], rfc3339_ms(now + 240_000));
        // No base URL known: no generatorURL.
        let doc =
            alertmanager_api_alerts(&[notification("x", "y", NotifyKind::Firing, 1)], now, 1, "");
        assert!(doc[0].get("generatorURL").is_none());
    }

    #[test]
    fn alertmanager_document_shape() {
        let f = notification("disk-full", "web-1", NotifyKind::Firing, 1);
        let doc = alertmanager_document("ops-hook", std::slice::from_ref(&f));
        assert_eq!(doc["version"], "4");
        assert_eq!(doc["status"], "firing");
        assert_eq!(doc["receiver"], "ops-hook");
        assert_eq!(doc["truncatedAlerts"], 0);
        assert_eq!(doc["externalURL"], "");
        assert_eq!(doc["groupLabels"]["alertname"], "disk-full");
        assert_eq!(doc["groupLabels"]["target"], "web-1");
        assert_eq!(
            doc["groupKey"],
            "{}:{alertname=\"disk-full\",target=\"web-1\"}"
        );
        assert_eq!(doc["commonLabels"]["severity"], "critical");
        assert_eq!(doc["commonLabels"]["team"], "ops");
        assert_eq!(doc["commonAnnotations"]["summary"], "disk-full on web-1");
        let a = &doc["alerts"][0];
        assert_eq!(a["status"], "firing");
        assert_eq!(a["labels"]["alertname"], "disk-full");
        assert_eq!(a["labels"]["target"], "web-1");
        assert_eq!(a["labels"]["severity"], "critical");
        assert_eq!(a["labels"]["mount"], "/");
        assert_eq!(
            a["annotations"]["description"],
            f.alert.description.as_str()
        );
        assert_eq!(a["startsAt"], "2023-11-14T22:13:20.000Z");
        assert_eq!(a["endsAt"], "0001-01-01T00:00:00Z");
        assert_eq!(a["generatorURL"], "");
        assert_eq!(a["fingerprint"], f.alert.id.as_str());
        assert!(a["annotations"].get("flapping").is_none());

        let r = notification("disk-full", "web-1", NotifyKind::Resolved, 2);
        let doc = alertmanager_document("ops-hook", std::slice::from_ref(&r));
        assert_eq!(doc["status"], "resolved");
        assert_eq!(doc["alerts"][0]["status"], "resolved");
        assert_eq!(doc["alerts"][0]["endsAt"], "2023-11-14T22:14:20.000Z");

        let fl = notification("disk-full", "web-1", NotifyKind::Flapping, 3);
        let other = notification("load-high", "web-1", NotifyKind::Resolved, 4);
        let doc = alertmanager_document("ops-hook", &[fl, other]);
        assert_eq!(doc["status"], "firing");
        assert_eq!(doc["alerts"][0]["status"], "firing");
        assert_eq!(doc["alerts"][0]["annotations"]["flapping"], "true");
        assert!(doc["groupLabels"].get("alertname").is_none());
        assert_eq!(doc["groupLabels"]["target"], "web-1");
        assert!(doc["commonLabels"].get("alertname").is_none());
        assert!(doc["commonAnnotations"].get("summary").is_none());
    }
}
