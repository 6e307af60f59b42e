//! `Select`: series by Prometheus label matchers, from this node's store and,
//! merged, from every member's (the Prometheus API's only way to the data).
use std::collections::BTreeMap;

use herd_proto::v1 as pb;
use regex::Regex;
use tonic::Status;

use super::names::{metric_name, prom_labels, PromLabels, NAME_LABEL, TARGET_LABEL};
use crate::api::error::blocking;
use crate::api::grpc::points_pb;
use crate::api::HerdApi;
use crate::model::Labels;
use crate::store::{Store, StoreError};

/// One compiled label matcher.
#[derive(Debug, Clone)]
pub struct Matcher {
    pub name: String,
    op: Op,
}

#[derive(Debug, Clone)]
enum Op {
    Eq(String),
    Ne(String),
    Re(Regex),
    NotRe(Regex),
}

impl Matcher {
    /// From the API's form; a bad operator or regex is refused, named.
    pub fn of(m: &pb::LabelMatcher) -> Result<Matcher, String> {
        let re = |v: &str| {
            Regex::new(&format!("^(?:{v})$"))
                .map_err(|e| format!("label matcher {}{}{:?}: bad regex: {e}", m.name, m.op, v))
        };
        let op = match m.op.as_str() {
            "=" => Op::Eq(m.value.clone()),
            "!=" => Op::Ne(m.value.clone()),
            "=~" => Op::Re(re(&m.value)?),
            "!~" => Op::NotRe(re(&m.value)?),
            other => {
                return Err(format!(
                    "label matcher {}: unknown operator {other:?}",
                    m.name
                ))
            }
        };
        Ok(Matcher {
            name: m.name.clone(),
            op,
        })
    }

    /// Whether the label's value (empty when the series has no such label)
    /// passes, as in PromQL.
    pub fn matches(&self, value: Option<&str>) -> bool {
        let v = value.unwrap_or("");
        match &self.op {
            Op::Eq(want) => v == want,
            Op::Ne(want) => v != want,
            Op::Re(r) => r.is_match(v),
            Op::NotRe(r) => !r.is_match(v),
        }
    }

    /// The value this matcher pins the label to, if it is an equality.
    fn equals(&self) -> Option<&str> {
        match &self.op {
            Op::Eq(v) => Some(v),
            _ => None,
        }
    }
}

/// Whether every matcher of a set passes for `labels`.
pub fn set_matches(set: &[Matcher], labels: &PromLabels) -> bool {
    set.iter()
        .all(|m| m.matches(labels.get(&m.name).map(String::as_str)))
}

pub fn compile(sets: &[pb::MatcherSet]) -> Result<Vec<Vec<Matcher>>, Status> {
    sets.iter()
        .map(|s| s.matchers.iter().map(Matcher::of).collect())
        .collect::<Result<_, _>>()
        .map_err(Status::invalid_argument)
}

/// This node's series for the request.
pub async fn local(api: &HerdApi, req: &pb::SelectRequest) -> Result<pb::SelectReply, Status> {
    let (store, req) = (api.store.clone(), req.clone());
    let sets = compile(&req.sets)?;
    blocking(move || from_store(&store, &sets, &req)).await
}

/// The series of `store` that any of `sets` selects (blocking: run it off the
/// async workers).
pub fn from_store(
    store: &Store,
    sets: &[Vec<Matcher>],
    req: &pb::SelectRequest,
) -> Result<pb::SelectReply, StoreError> {
    if sets.is_empty() {
        return Ok(pb::SelectReply::default());
    }
    // One target named by every set: a scan of that target's series only.
    let targets: Vec<Option<&str>> = sets
        .iter()
        .map(|s| {
            s.iter()
                .find(|m| m.name == TARGET_LABEL)
                .and_then(Matcher::equals)
        })
        .collect();
    let only = match targets.first() {
        Some(Some(t)) if targets.iter().all(|x| x == &Some(*t)) => Some(*t),
        _ => None,
    };
    let wanted = |t: &str, m: &str, l: &Labels| {
        // The name first: most series fail there, before their labels are mapped.
        let name = metric_name(m);
        let names_ok = sets.iter().any(|set| {
            set.iter()
                .filter(|x| x.name == NAME_LABEL)
                .all(|x| x.matches(Some(&name)))
        });
        if !names_ok {
            return false;
        }
        let labels = prom_labels(t, m, l);
        sets.iter().any(|set| set_matches(set, &labels))
    };
    let found = store.select(only, &wanted, (req.from_ms, req.to_ms), !req.names_only)?;
    Ok(pb::SelectReply {
        series: found
            .into_iter()
            .map(|s| pb::PromSeries {
                labels: prom_labels(&s.target, &s.metric, &s.labels)
                    .into_iter()
                    .collect(),
                points: points_pb(s.points),
            })
            .collect(),
        gaps: Vec::new(),
    })
}

/// Every member's answers merged: one series per label set, its points from all
/// nodes in time order (a time two nodes both hold counts once).
pub fn merge(replies: Vec<pb::SelectReply>, gaps: Vec<pb::Gap>) -> pb::SelectReply {
    let mut by_labels: BTreeMap<PromLabels, Vec<(i64, f64)>> = BTreeMap::new();
    for r in replies {
        for s in r.series {
            let labels: PromLabels = s.labels.into_iter().collect();
            by_labels
                .entry(labels)
                .or_default()
                .extend(s.points.into_iter().map(|p| (p.ts_ms, p.value)));
        }
    }
    pb::SelectReply {
        series: by_labels
            .into_iter()
            .map(|(labels, mut points)| {
                points.sort_by_key(|p| p.0);
                points.dedup_by_key(|p| p.0);
                pb::PromSeries {
                    labels: labels.into_iter().collect(),
                    points: points_pb(points),
                }
            })
            .collect(),
        gaps,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, op: &str, value: &str) -> Matcher {
        Matcher::of(&pb::LabelMatcher {
            name: name.into(),
            op: op.into(),
            value: value.into(),
        })
        .unwrap()
    }

    #[test]
    fn matchers_follow_promql() {
        assert!(m("a", "=", "x").matches(Some("x")));
        assert!(m("a", "=", "").matches(None), "empty equals missing");
        assert!(m("a", "!=", "x").matches(None));
        assert!(m("a", "=~", "we.*").matches(Some("web1")));
        assert!(!m("a", "=~", "web").matches(Some("web1")), "anchored");
        assert!(m("a", "!~", "db.*").matches(Some("web1")));
        let bad = Matcher::of(&pb::LabelMatcher {
            name: "a".into(),
            op: "=~".into(),
            value: "(".into(),
        })
        .unwrap_err();
        assert!(bad.contains("bad regex"), "{bad}");
    }

    #[test]
    fn merged_series_hold_each_time_once() {
        let series = |pts: &[(i64, f64)]| pb::SelectReply {
            series: vec![pb::PromSeries {
                labels: [("target".to_string(), "a".to_string())].into(),
                points: pts
                    .iter()
                    .map(|&(ts_ms, value)| pb::Point { ts_ms, value })
                    .collect(),
            }],
            gaps: vec![],
        };
        let r = merge(
            vec![series(&[(1, 1.0), (3, 3.0)]), series(&[(2, 2.0), (3, 3.0)])],
            vec![],
        );
        assert_eq!(r.series.len(), 1);
        let ts: Vec<i64> = r.series[0].points.iter().map(|p| p.ts_ms).collect();
        assert_eq!(ts, vec![1, 2, 3]);
    }
}
