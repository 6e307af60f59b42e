//! Table layout. Keys are chosen so that the common reads are range scans:
//! a series' chunks by `(series_id, first_ts)`, events by `(ts_ms, seq)`.
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

/// `target \0 metric \0 labels-json` → series id. Prefix scans find a metric's series.
pub const SERIES_INDEX: TableDefinition<&str, u64> = TableDefinition::new("series_index");
/// `(series id, first ts of the chunk)` → compressed chunk (see `codec`).
pub const CHUNKS: TableDefinition<(u64, i64), &[u8]> = TableDefinition::new("chunks");
/// `(series id, granularity code, bucket start)` → rollup bucket as JSON.
pub const ROLLUPS: TableDefinition<(u64, u8, i64), &[u8]> = TableDefinition::new("rollups");
/// `(ts_ms, seq)` → event as JSON.
pub const EVENTS: TableDefinition<(i64, u64), &str> = TableDefinition::new("events");
/// alert id → Alert as JSON (current state of every known alert).
pub const ALERTS: TableDefinition<&str, &[u8]> = TableDefinition::new("alerts");
/// `(ts_ms, seq)` → TransitionRecord as JSON.
pub const TRANSITIONS: TableDefinition<(i64, u64), &[u8]> = TableDefinition::new("transitions");
/// seq → OutboxEntry as JSON: notifications not yet delivered.
pub const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");
/// idempotency key → unix ms it was delivered: what has gone out.
pub const SENT: TableDefinition<&str, i64> = TableDefinition::new("sent");
/// Node metadata: the applied fleet spec, counters.
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

pub const META_SAMPLES_WRITTEN: &str = "samples_written";
/// The store format the file is written in (u32, little endian; see
/// `backup::STORE_FORMAT`). A file without it is of format 1.
pub const META_FORMAT: &str = "format";

/// The store format of `db`, if it says (a new or a format-1 file does not).
pub fn format_of(db: &impl ReadableDatabase) -> Result<Option<u32>, redb::Error> {
    format_in(db, META, META_FORMAT)
}

/// A format number (u32, little endian) stored under `key` of `table`, if any: how
/// a redb file of Herd (the store, the Raft file) says its format.
pub fn format_in(
    db: &impl ReadableDatabase,
    table: TableDefinition<&str, &[u8]>,
    key: &str,
) -> Result<Option<u32>, redb::Error> {
    let r = db.begin_read()?;
    let t = match r.open_table(table) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let v = t.get(key)?;
    Ok(v.and_then(|v| <[u8; 4]>::try_from(v.value()).ok().map(u32::from_le_bytes)))
}

/// Key of a series in `SERIES_INDEX`. Target names and metric names never hold NUL
/// (validated / fixed in code), so the prefix `target\0metric\0` is unambiguous.
pub fn series_key(target: &str, metric: &str, labels: &crate::model::Labels) -> String {
    let mut buf = Vec::new();
    write_series_key(&mut buf, target, metric, labels);
    // Valid UTF-8: two strs, NULs and JSON.
    String::from_utf8_lossy(&buf).into_owned()
}

/// [`series_key`]'s bytes into `buf` (cleared first): the writer reuses one
/// buffer for every sample instead of two allocations each.
pub fn write_series_key(
    buf: &mut Vec<u8>,
    target: &str,
    metric: &str,
    labels: &crate::model::Labels,
) {
    buf.clear();
    buf.extend_from_slice(target.as_bytes());
    buf.push(0);
    buf.extend_from_slice(metric.as_bytes());
    buf.push(0);
    let json_start = buf.len();
    if serde_json::to_writer(&mut *buf, labels).is_err() {
        buf.truncate(json_start);
        buf.extend_from_slice(b"{}");
    }
}

pub fn series_prefix(target: &str, metric: &str) -> String {
    format!("{target}\0{metric}\0")
}

/// What the writer needs to continue after a restart.
pub struct LoadedState {
    pub series: std::collections::HashMap<String, u64>,
    pub next_series_id: u64,
    pub next_event_seq: u64,
    pub samples_written: u64,
    pub next_outbox_seq: u64,
    /// The idempotency key of each queued notification, by seq.
    pub outbox_keys: std::collections::HashMap<u64, String>,
    pub next_transition_seq: u64,
    /// Bytes in each remote-write queue, and the next seq of an entry.
    pub remote_bytes: std::collections::HashMap<String, u64>,
    pub next_remote_seq: u64,
}

/// Creates the tables if missing and loads the series index.
pub fn init(db: &Database) -> Result<LoadedState, redb::Error> {
    let w = db.begin_write()?;
    {
        w.open_table(SERIES_INDEX)?;
        w.open_table(CHUNKS)?;
        w.open_table(EVENTS)?;
        w.open_table(ROLLUPS)?;
        w.open_table(ALERTS)?;
        w.open_table(TRANSITIONS)?;
        w.open_table(OUTBOX)?;
        w.open_table(SENT)?;
        let mut meta = w.open_table(META)?;
        let has_format = meta.get(META_FORMAT)?.is_some();
        if !has_format {
            let format = super::backup::STORE_FORMAT.to_le_bytes();
            meta.insert(META_FORMAT, format.as_slice())?;
        }
        w.open_table(super::remote::REMOTE_QUEUE)?;
    }
    w.commit()?;
    let r = db.begin_read()?;
    let index = r.open_table(SERIES_INDEX)?;
    let mut series = std::collections::HashMap::new();
    let mut max_id = 0;
    for entry in index.iter()? {
        let (k, v) = entry?;
        max_id = max_id.max(v.value());
        series.insert(k.value().to_string(), v.value());
    }
    let events = r.open_table(EVENTS)?;
    let next_event_seq = match events.last()? {
        Some((k, _)) => k.value().1 + 1,
        None => 0,
    };
    let meta = r.open_table(META)?;
    let samples_written = meta
        .get(META_SAMPLES_WRITTEN)?
        .and_then(|v| v.value().try_into().ok().map(u64::from_le_bytes))
        .unwrap_or(0);
    let outbox = r.open_table(OUTBOX)?;
    let next_outbox_seq = match outbox.last()? {
        Some((k, _)) => k.value() + 1,
        None => 0,
    };
    let mut outbox_keys = std::collections::HashMap::new();
    for entry in outbox.iter()? {
        let (k, v) = entry?;
        // An unreadable entry is the notify worker's to report; it has no key here.
        if let Ok(e) = serde_json::from_slice::<super::alerting::OutboxEntry>(v.value()) {
            outbox_keys.insert(k.value(), e.notification.idempotency_key);
        }
    }
    let transitions = r.open_table(TRANSITIONS)?;
    let next_transition_seq = match transitions.last()? {
        Some((k, _)) => k.value().1 + 1,
        None => 0,
    };
    drop(r);
    let (remote_bytes, next_remote_seq) = super::remote::load(db)?;
    Ok(LoadedState {
        remote_bytes,
        next_remote_seq,
        next_outbox_seq,
        outbox_keys,
        next_transition_seq,
        series,
        next_series_id: max_id + 1,
        next_event_seq,
        samples_written,
    })
}

pub fn get_meta(db: &Database, key: &str) -> Result<Option<Vec<u8>>, redb::Error> {
    let r = db.begin_read()?;
    let t = r.open_table(META)?;
    Ok(t.get(key)?.map(|v| v.value().to_vec()))
}

#[cfg(test)]
mod key_tests {
    use super::*;

    /// The key written into the writer's reused buffer is the key stored before:
    /// `target NUL metric NUL labels-as-JSON`, escapes included (a different byte
    /// would give a stored series a second id after an upgrade).
    #[test]
    fn the_reused_buffer_writes_the_same_key_as_before() {
        let labels: crate::model::Labels = [
            ("mount".to_string(), "/srv/\"data\"\\x".to_string()),
            ("note".to_string(), "tab\there\u{1}é✓".to_string()),
        ]
        .into();
        let before = format!(
            "web-1\0disk.used_pct\0{}",
            serde_json::to_string(&labels).expect("json")
        );
        let mut buf = b"left over".to_vec();
        write_series_key(&mut buf, "web-1", "disk.used_pct", &labels);
        assert_eq!(std::str::from_utf8(&buf).expect("utf-8"), before);
        assert_eq!(series_key("web-1", "disk.used_pct", &labels), before);
        write_series_key(&mut buf, "t", "m", &Default::default());
        assert_eq!(buf, b"t\0m\0{}");
    }
}
