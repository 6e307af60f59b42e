//! The remote-write queue: what the node collected for each `[[remote_write]]`,
//! kept in the node's redb file until the receiver took it.
//!
//! Each commit of samples adds, in the same transaction, one entry per remote that
//! selects any of them: `(remote name, seq)` → the sample count (u32, little
//! endian) and the snappy-compressed protobuf `WriteRequest` of those samples
//! (already named as the Prometheus face names them). A sender reads the oldest
//! entries, posts them (protobuf messages concatenate: several entries are one
//! request) and acknowledges the last one; the writer deletes what was
//! acknowledged with its next commit. So a sample is in the queue if and only if
//! it is in the store, a restart loses nothing, and a node that dies between a
//! post and its acknowledgement sends that batch once more (receivers drop a
//! sample they already hold). A queue over its bound loses its oldest entries,
//! counted; scraping never waits for a receiver.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use crate::model::Sample;

/// `(remote name, seq)` → sample count (u32 LE) + snappy protobuf.
pub const REMOTE_QUEUE: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("remote_queue");

/// What a remote's queue did since the node started (and its size now).
#[derive(Debug, Default)]
pub struct RemoteStats {
    /// Bytes waiting on disk.
    pub queued_bytes: AtomicU64,
    /// Samples the receiver took.
    pub sent_samples: AtomicU64,
    /// Samples dropped because the queue was full (the oldest).
    pub dropped_full: AtomicU64,
    /// Samples dropped because the receiver refused them for good (a 4xx).
    pub dropped_refused: AtomicU64,
    /// Requests that failed and were retried.
    pub failed_requests: AtomicU64,
    /// Requests of the last round (more than 1 when the queue was behind).
    pub shards: AtomicU64,
}

/// Encodes the samples of one commit that a remote takes: their count and the
/// compressed request; `None` when it takes none of them.
pub type Encode = Box<dyn Fn(&[Sample]) -> Option<(u32, Vec<u8>)> + Send + Sync>;

/// A remote as the writer knows it.
pub struct RemoteSink {
    pub name: String,
    pub max_bytes: u64,
    pub encode: Encode,
    pub stats: Arc<RemoteStats>,
}

/// One queued entry: its seq, sample count and compressed request.
#[derive(Debug, Clone)]
pub struct QueuedBatch {
    pub seq: u64,
    pub samples: u32,
    pub body: Vec<u8>,
}

/// The value stored for an entry.
pub(super) fn entry_value(samples: u32, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + body.len());
    v.extend_from_slice(&samples.to_le_bytes());
    v.extend_from_slice(body);
    v
}

fn parse_value(seq: u64, v: &[u8]) -> Option<QueuedBatch> {
    let (count, body) = v.split_at_checked(4)?;
    Some(QueuedBatch {
        seq,
        samples: u32::from_le_bytes(count.try_into().ok()?),
        body: body.to_vec(),
    })
}

/// The oldest entries of `name`'s queue after seq `after` (all when `None`), up to
/// about `max_samples` samples (one entry at least).
pub(super) fn oldest(
    db: &redb::Database,
    name: &str,
    after: Option<u64>,
    max_samples: usize,
) -> Result<Vec<QueuedBatch>, redb::Error> {
    let r = db.begin_read()?;
    let t = match r.open_table(REMOTE_QUEUE) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    let mut samples = 0usize;
    let from = after.map_or(0, |a| a.saturating_add(1));
    for entry in t.range((name, from)..=(name, u64::MAX))? {
        let (k, v) = entry?;
        let Some(b) = parse_value(k.value().1, v.value()) else {
            continue;
        };
        if !out.is_empty() && samples + b.samples as usize > max_samples {
            break;
        }
        samples += b.samples as usize;
        out.push(b);
    }
    Ok(out)
}

/// Per remote: the bytes its queue holds, and the next seq to use.
pub(super) fn load(
    db: &redb::Database,
) -> Result<(std::collections::HashMap<String, u64>, u64), redb::Error> {
    let r = db.begin_read()?;
    let t = r.open_table(REMOTE_QUEUE)?;
    let mut bytes = std::collections::HashMap::new();
    let mut next = 0u64;
    for entry in t.iter()? {
        let (k, v) = entry?;
        let (name, seq) = k.value();
        *bytes.entry(name.to_string()).or_insert(0) += v.value().len() as u64;
        next = next.max(seq + 1);
    }
    Ok((bytes, next))
}

/// The queue's part of a commit, in the writer's transaction: acknowledged entries
/// deleted, queues of remotes no longer configured forgotten, new entries added,
/// and the oldest dropped while a queue is over its bound. Returns the bytes each
/// queue holds afterwards.
pub(super) fn write(
    txn: &redb::WriteTransaction,
    mut bytes: std::collections::HashMap<String, u64>,
    acks: &[(String, u64)],
    forget: &[String],
    new: &[(Arc<RemoteSink>, u64, Vec<u8>)],
) -> Result<std::collections::HashMap<String, u64>, redb::Error> {
    let mut t = txn.open_table(REMOTE_QUEUE)?;
    let delete = |t: &mut redb::Table<(&str, u64), &[u8]>,
                  name: &str,
                  upto: u64,
                  limit: Option<u64>|
     -> Result<(u64, u64), redb::Error> {
        // (bytes freed, samples dropped), oldest first, up to `upto` or until
        // `limit` bytes were freed.
        let mut keys = Vec::new();
        let (mut freed, mut samples) = (0u64, 0u64);
        for entry in t.range((name, 0)..=(name, upto))? {
            let (k, v) = entry?;
            freed += v.value().len() as u64;
            samples += parse_value(0, v.value()).map_or(0, |b| b.samples as u64);
            keys.push(k.value().1);
            if limit.is_some_and(|l| freed >= l) {
                break;
            }
        }
        for seq in keys {
            t.remove((name, seq))?;
        }
        Ok((freed, samples))
    };
    for (name, upto) in acks {
        let (freed, _) = delete(&mut t, name, *upto, None)?;
        let b = bytes.entry(name.clone()).or_insert(0);
        *b = b.saturating_sub(freed);
    }
    for name in forget {
        delete(&mut t, name, u64::MAX, None)?;
        bytes.remove(name);
    }
    for (sink, seq, value) in new {
        t.insert((sink.name.as_str(), *seq), value.as_slice())?;
        let held = bytes.entry(sink.name.clone()).or_insert(0);
        *held += value.len() as u64;
        if *held > sink.max_bytes {
            let over = *held - sink.max_bytes;
            let (freed, samples) = delete(&mut t, &sink.name, u64::MAX, Some(over))?;
            *held = held.saturating_sub(freed);
            sink.stats
                .dropped_full
                .fetch_add(samples, Ordering::Relaxed);
            tracing::warn!(remote = %sink.name, dropped_samples = samples, max_bytes = sink.max_bytes, "remote_write queue full: its oldest samples were dropped");
        }
    }
    Ok(bytes)
}
