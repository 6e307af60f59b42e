//! Reads: each call is one short MVCC snapshot.
use redb::{Database, ReadableDatabase, ReadableTable};

use super::alerting::{OutboxEntry, TransitionRecord};
use super::codec;
use super::rollup::{Agg, Granularity};
use super::tables::{
    self, ALERTS, CHUNKS, EVENTS, OUTBOX, ROLLUPS, SENT, SERIES_INDEX, TRANSITIONS,
};
use super::writer::MAX_CHUNK_SPAN_MS;
use crate::model::{Event, Labels};

/// The points of one series.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesPoints {
    pub labels: Labels,
    pub points: Vec<(i64, f64)>,
}

/// The rollup buckets of one series.
#[derive(Debug, Clone, PartialEq)]
pub struct RollupSeries {
    pub labels: Labels,
    pub buckets: Vec<(i64, Agg)>,
}

/// Series ids and labels of `metric` of `target` whose labels include `matchers`.
fn matching_series(
    index: &impl redb::ReadableTable<&'static str, u64>,
    target: &str,
    metric: &str,
    matchers: &Labels,
) -> Result<Vec<(u64, Labels)>, redb::Error> {
    let prefix = tables::series_prefix(target, metric);
    let mut out = Vec::new();
    for entry in index.range(prefix.as_str()..)? {
        let (key, id) = entry?;
        let key = key.value();
        let Some(labels_json) = key.strip_prefix(prefix.as_str()) else {
            break;
        };
        let labels: Labels = serde_json::from_str(labels_json).unwrap_or_default();
        if matchers.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            out.push((id.value(), labels));
        }
    }
    Ok(out)
}

pub fn rollups(
    db: &Database,
    target: &str,
    metric: &str,
    matchers: &Labels,
    granularity: Granularity,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<RollupSeries>, redb::Error> {
    let r = db.begin_read()?;
    let index = r.open_table(SERIES_INDEX)?;
    let table = r.open_table(ROLLUPS)?;
    let g = granularity.code();
    let mut out = Vec::new();
    for (id, labels) in matching_series(&index, target, metric, matchers)? {
        let mut buckets = Vec::new();
        let start = granularity.bucket(from_ms);
        for entry in table.range((id, g, start)..=(id, g, to_ms))? {
            let (k, v) = entry?;
            if let Ok(agg) = serde_json::from_slice::<Agg>(v.value()) {
                buckets.push((k.value().2, agg));
            }
        }
        if !buckets.is_empty() {
            out.push(RollupSeries { labels, buckets });
        }
    }
    Ok(out)
}

pub fn query(
    db: &Database,
    target: &str,
    metric: &str,
    matchers: &Labels,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<SeriesPoints>, redb::Error> {
    let r = db.begin_read()?;
    let index = r.open_table(SERIES_INDEX)?;
    let chunks = r.open_table(CHUNKS)?;
    let mut out = Vec::new();
    for (id, labels) in matching_series(&index, target, metric, matchers)? {
        let points = read_points(&chunks, id, from_ms, to_ms, (target, metric))?;
        if !points.is_empty() {
            out.push(SeriesPoints { labels, points });
        }
    }
    Ok(out)
}

/// The points of series `id` in `[from_ms, to_ms]`, sorted by time; an unreadable
/// chunk is skipped with a warning naming the series (`what`: target, metric).
fn read_points(
    chunks: &impl ReadableTable<(u64, i64), &'static [u8]>,
    id: u64,
    from_ms: i64,
    to_ms: i64,
    (target, metric): (&str, &str),
) -> Result<Vec<(i64, f64)>, redb::Error> {
    let mut points = Vec::new();
    let start = from_ms.saturating_sub(MAX_CHUNK_SPAN_MS);
    for chunk in chunks.range((id, start)..=(id, to_ms))? {
        let (_, bytes) = chunk?;
        let bytes = bytes.value();
        match codec::header(bytes) {
            Ok(h) if h.last_ts < from_ms => continue,
            _ => {}
        }
        match codec::decode(bytes) {
            Ok(decoded) => points.extend(
                decoded
                    .into_iter()
                    .filter(|(ts, _)| *ts >= from_ms && *ts <= to_ms),
            ),
            Err(e) => {
                tracing::warn!(target_name = target, metric, series = id, error = %e, "skipping unreadable chunk")
            }
        }
    }
    points.sort_by_key(|p| p.0);
    Ok(points)
}

/// A series with its names: what [`select`] returns.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedSeries {
    pub target: String,
    pub metric: String,
    pub labels: Labels,
    pub points: Vec<(i64, f64)>,
}

/// Every series `wanted` accepts (by target, metric and labels), only `target`'s
/// when given (a prefix scan of the index, not a walk of all of it). With
/// `points`, each with its points in `[from_ms, to_ms]` and only those that have
/// some; without, every series the store knows, with no points.
pub fn select(
    db: &Database,
    target: Option<&str>,
    wanted: &dyn Fn(&str, &str, &Labels) -> bool,
    (from_ms, to_ms): (i64, i64),
    points: bool,
) -> Result<Vec<NamedSeries>, redb::Error> {
    let r = db.begin_read()?;
    let index = r.open_table(SERIES_INDEX)?;
    let chunks = r.open_table(CHUNKS)?;
    let prefix = target.map(|t| format!("{t}\0")).unwrap_or_default();
    let mut out = Vec::new();
    for entry in index.range(prefix.as_str()..)? {
        let (key, id) = entry?;
        let key = key.value();
        if !key.starts_with(prefix.as_str()) {
            break;
        }
        let mut parts = key.splitn(3, '\0');
        let (Some(t), Some(m), Some(l)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let labels: Labels = serde_json::from_str(l).unwrap_or_default();
        if !wanted(t, m, &labels) {
            continue;
        }
        let pts = if points {
            let pts = read_points(&chunks, id.value(), from_ms, to_ms, (t, m))?;
            if pts.is_empty() {
                continue;
            }
            pts
        } else {
            Vec::new()
        };
        out.push(NamedSeries {
            target: t.to_string(),
            metric: m.to_string(),
            labels,
            points: pts,
        });
    }
    Ok(out)
}

pub fn events(
    db: &Database,
    target: Option<&str>,
    since_ms: i64,
    limit: usize,
) -> Result<Vec<Event>, redb::Error> {
    let r = db.begin_read()?;
    let table = r.open_table(EVENTS)?;
    let mut out = Vec::new();
    for entry in table.range((since_ms, 0)..)?.rev() {
        if out.len() >= limit {
            break;
        }
        let (_, json) = entry?;
        let Ok(event) = serde_json::from_str::<Event>(json.value()) else {
            continue;
        };
        if target.is_none_or(|t| t == event.target) {
            out.push(event);
        }
    }
    Ok(out)
}

pub fn alerts(db: &Database) -> Result<Vec<crate::model::Alert>, redb::Error> {
    let r = db.begin_read()?;
    let t = r.open_table(ALERTS)?;
    let mut out = Vec::new();
    for entry in t.iter()? {
        let (_, v) = entry?;
        if let Ok(a) = serde_json::from_slice(v.value()) {
            out.push(a);
        }
    }
    Ok(out)
}

pub fn outbox(db: &Database) -> Result<Vec<(u64, OutboxEntry)>, redb::Error> {
    let r = db.begin_read()?;
    let t = r.open_table(OUTBOX)?;
    let mut out = Vec::new();
    for entry in t.iter()? {
        let (k, v) = entry?;
        match serde_json::from_slice(v.value()) {
            Ok(e) => out.push((k.value(), e)),
            Err(e) => tracing::error!(seq = k.value(), error = %e, "unreadable outbox entry"),
        }
    }
    Ok(out)
}

pub fn was_sent(db: &Database, key: &str) -> Result<bool, redb::Error> {
    let r = db.begin_read()?;
    let t = r.open_table(SENT)?;
    Ok(t.get(key)?.is_some())
}

pub fn transitions(
    db: &Database,
    since_ms: i64,
    limit: usize,
) -> Result<Vec<TransitionRecord>, redb::Error> {
    let r = db.begin_read()?;
    let t = r.open_table(TRANSITIONS)?;
    let mut out = Vec::new();
    for entry in t.range((since_ms, 0)..)?.rev() {
        if out.len() >= limit {
            break;
        }
        let (_, v) = entry?;
        if let Ok(rec) = serde_json::from_slice(v.value()) {
            out.push(rec);
        }
    }
    Ok(out)
}
