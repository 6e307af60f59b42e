//! The writer thread: the only place that writes the redb file.
//!
//! Each active series has an open chunk (its "head") in memory. Every commit rewrites
//! the heads that got samples since the last one, so the file always holds every
//! sample up to the last commit; a head that is full is written one last time and a
//! new chunk starts.
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redb::{ReadableDatabase, ReadableTable};

use super::codec::{self, ChunkEncoder};
use super::remote::RemoteSink;
use super::rollup::{Agg, Granularity};
use super::tables::{
    self, ALERTS, CHUNKS, EVENTS, META, OUTBOX, ROLLUPS, SENT, SERIES_INDEX, TRANSITIONS,
};
use super::{
    AlertingBatch, CompactOutcome, ImportOutcome, ImportSeries, OutboxChange, RollupPoint,
    SampleLane, SharedDb, StoreOptions, StoreStats, WriteOp,
};
use crate::model::change::{Change, Feed};
use crate::model::{now_ms, Event, Sample};

/// Commit early when this many samples are waiting, whatever the interval.
pub(super) const MAX_BATCH_SAMPLES: usize = 50_000;
/// A chunk never spans more than this, so a query need only look this far back
/// before its start for chunks that overlap it.
pub const MAX_CHUNK_SPAN_MS: i64 = 4 * 3600 * 1000;
/// How often a retention pass starts.
const RETENTION_EVERY: Duration = Duration::from_secs(600);
/// Series a retention step goes through at most, in one transaction of its own
/// between two commits: the writer is never held longer than that.
const RETENTION_SERIES_PER_STEP: u64 = 256;
/// And the time a step may spend deleting before it commits what it did: a pass
/// that deletes much (the retention was shortened: 540 chunks a series) stops
/// after fewer series (`scripts/bench retention`: commits waited up to 81 ms behind
/// steps of 256 such series).
const RETENTION_STEP_BUDGET: Duration = Duration::from_millis(8);
/// At most one retention step this often (a pass over 10,000 series takes a few
/// seconds and costs little while samples flow).
const RETENTION_STEP_EVERY: Duration = Duration::from_millis(50);

/// A metadata write and who waits for its commit.
type MetaWrite = (String, Vec<u8>, Sender<Result<(), String>>);

/// A rollup bucket still receiving points. `fresh` as in `Head`.
struct OpenBucket {
    agg: Agg,
    fresh: bool,
}

/// Open rollup buckets older than this (by bucket start) leave memory after a commit;
/// a late point re-reads the stored bucket.
const ROLLUP_KEEP_MS: i64 = 2 * 3_600_000;

struct Head {
    start_ts: i64,
    enc: ChunkEncoder,
    /// Not yet reconciled with a chunk that may already be stored under the same
    /// key (a restart after which the first sample has the same timestamp).
    fresh: bool,
}

pub struct Writer {
    db: SharedDb,
    /// The file (its size, for compaction).
    path: PathBuf,
    options: StoreOptions,
    stats: Arc<StoreStats>,
    /// Where samples wait for this writer (see [`SampleLane`]).
    lane: Arc<SampleLane>,
    /// The lane's batches taken at the last turn (its capacity reused).
    lane_taken: Vec<Arc<[Sample]>>,
    series: HashMap<String, u64>,
    /// Where each sample's series key is written to look its id up (reused).
    key_buf: Vec<u8>,
    next_series_id: u64,
    next_event_seq: u64,
    /// Boxed: a head is ~1.2 KB (the encoder's adaptive models), and a map of them
    /// inline kept a third of its buckets empty at that size (a heap profile of
    /// 1,000 targets: 41 MB for 21,000 heads).
    heads: HashMap<u64, Box<Head>>,
    rollups: HashMap<(u64, u8, i64), OpenBucket>,
    dirty_rollups: HashSet<(u64, u8, i64)>,
    new_series: Vec<(String, u64)>,
    dirty: HashSet<u64>,
    /// Full chunks to write once more before they leave memory.
    closing: Vec<(u64, i64, Vec<u8>)>,
    events: Vec<Event>,
    meta: Vec<MetaWrite>,
    alerting: Vec<(AlertingBatch, Sender<Result<(), String>>)>,
    outbox_changes: Vec<(OutboxChange, Sender<Result<(), String>>)>,
    next_outbox_seq: u64,
    next_transition_seq: u64,
    /// Metadata nobody waits for (tail offsets); written with the next commit.
    quiet_meta: Vec<(String, Vec<u8>)>,
    /// Flushes (and the shutdown) waiting for the next commit: told whether it
    /// made everything durable.
    waiting: Vec<Sender<Result<(), String>>>,
    pending_samples: usize,
    samples_written: u64,
    /// Told what each commit made durable (events, alert transitions).
    feed: Feed,
    /// The remote-write queues filled with each commit's samples.
    remote_sinks: Vec<Arc<RemoteSink>>,
    /// Samples accepted since the last commit, while a remote is configured.
    remote_samples: Vec<Sample>,
    /// Entries for the next commit: (remote, seq, stored value).
    remote_new: Vec<(Arc<RemoteSink>, u64, Vec<u8>)>,
    remote_acks: Vec<(String, u64)>,
    remote_forget: Vec<String>,
    /// Bytes in each queue as of the last commit.
    remote_bytes: HashMap<String, u64>,
    /// What the commit being written leaves in each queue.
    remote_bytes_after: Option<HashMap<String, u64>>,
    next_remote_seq: u64,
    /// Imports waiting for the commit that makes them durable.
    imports: Vec<(ImportOutcome, Sender<Result<ImportOutcome, String>>)>,
    /// A retention pass under way: the next series id and the cutoff (Unix ms).
    retention: Option<(u64, i64)>,
    /// The idempotency keys in the outbox (seq → key, and the keys): a
    /// notification is never queued twice by one node, whatever asks for it.
    outbox_keys: HashMap<u64, String>,
    queued_keys: HashSet<String>,
    /// What the commit being written adds to and removes from them.
    staged_keys: Vec<(u64, String)>,
    staged_unqueued: Vec<u64>,
}

/// How far in the future an imported sample may lie (clocks differ a little).
const IMPORT_FUTURE_SLACK_MS: i64 = 60_000;

impl Writer {
    pub fn new(
        db: SharedDb,
        path: PathBuf,
        state: tables::LoadedState,
        options: StoreOptions,
        stats: Arc<StoreStats>,
        feed: Feed,
        lane: Arc<SampleLane>,
    ) -> Self {
        Writer {
            db,
            path,
            options,
            stats,
            lane,
            lane_taken: Vec::new(),
            series: state.series,
            key_buf: Vec::new(),
            next_series_id: state.next_series_id,
            next_event_seq: state.next_event_seq,
            heads: HashMap::new(),
            rollups: HashMap::new(),
            dirty_rollups: HashSet::new(),
            new_series: Vec::new(),
            dirty: HashSet::new(),
            closing: Vec::new(),
            events: Vec::new(),
            meta: Vec::new(),
            quiet_meta: Vec::new(),
            alerting: Vec::new(),
            outbox_changes: Vec::new(),
            next_outbox_seq: state.next_outbox_seq,
            next_transition_seq: state.next_transition_seq,
            waiting: Vec::new(),
            pending_samples: 0,
            samples_written: state.samples_written,
            feed,
            remote_sinks: Vec::new(),
            remote_samples: Vec::new(),
            remote_new: Vec::new(),
            remote_acks: Vec::new(),
            remote_forget: Vec::new(),
            remote_bytes: state.remote_bytes,
            remote_bytes_after: None,
            next_remote_seq: state.next_remote_seq,
            imports: Vec::new(),
            retention: None,
            queued_keys: state.outbox_keys.values().cloned().collect(),
            outbox_keys: state.outbox_keys,
            staged_keys: Vec::new(),
            staged_unqueued: Vec::new(),
        }
    }

    pub fn run(mut self, rx: Receiver<WriteOp>) {
        let mut last_commit = Instant::now();
        self.start_retention();
        let mut last_retention = Instant::now();
        let mut last_step = Instant::now();
        loop {
            let wait = self
                .options
                .flush_interval
                .saturating_sub(last_commit.elapsed());
            let mut stop = false;
            match rx.recv_timeout(wait) {
                Ok(WriteOp::Wake) => {}
                Ok(WriteOp::Rollup(p)) => self.accept_rollup(p),
                Ok(WriteOp::Event(e)) => self.events.push(e),
                Ok(WriteOp::Persist(events, meta)) => {
                    self.events.extend(events);
                    self.quiet_meta.extend(meta);
                }
                #[cfg(test)]
                Ok(WriteOp::PutMeta(k, v, reply)) => self.meta.push((k, v, reply)),
                Ok(WriteOp::Import(series, check_only, reply)) => {
                    // The heads as appended so far: an import checks against them.
                    self.take_lane();
                    let outcome = self.import(series, check_only);
                    if check_only {
                        let _ = reply.send(Ok(outcome));
                    } else {
                        self.imports.push((outcome, reply));
                    }
                }
                #[cfg(test)]
                Ok(WriteOp::RetainNow(reply)) => {
                    self.take_lane();
                    self.commit();
                    self.retention = None;
                    self.start_retention();
                    while self.retention.is_some() {
                        self.retention_step();
                    }
                    let _ = reply.send(Ok(()));
                }
                Ok(WriteOp::Flush(reply)) => self.waiting.push(reply),
                Ok(WriteOp::Compact(reply)) => {
                    // It commits what is held first.
                    self.take_lane();
                    let _ = reply.send(Ok(self.compact()));
                    last_commit = Instant::now();
                }
                Ok(WriteOp::RemoteSinks(sinks)) => self.set_remote_sinks(sinks),
                Ok(WriteOp::RemoteAck(name, seq)) => self.remote_acks.push((name, seq)),
                Ok(WriteOp::Alerting(batch, reply)) => self.alerting.push((batch, reply)),
                Ok(WriteOp::Outbox(change, reply)) => self.outbox_changes.push((change, reply)),
                Ok(WriteOp::Shutdown(reply)) => {
                    self.waiting.push(reply);
                    stop = true;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => stop = true,
            }
            self.take_lane();
            if stop {
                self.lane.close();
                // What came in between the last take and the close.
                self.take_lane();
            }
            let due = last_commit.elapsed() >= self.options.flush_interval;
            if stop
                || due
                || self.pending_samples >= MAX_BATCH_SAMPLES
                || !self.waiting.is_empty()
                || !self.meta.is_empty()
                || !self.alerting.is_empty()
                || !self.outbox_changes.is_empty()
                || !self.imports.is_empty()
            {
                self.commit();
                last_commit = Instant::now();
            }
            if stop {
                tracing::debug!("store writer stopped");
                return;
            }
            if last_retention.elapsed() >= RETENTION_EVERY {
                self.start_retention();
                last_retention = Instant::now();
            }
            if self.retention.is_some() && last_step.elapsed() >= RETENTION_STEP_EVERY {
                self.retention_step();
                last_step = Instant::now();
            }
        }
    }

    /// Compacts the live file: commits what is held, then takes the file alone.
    fn compact(&mut self) -> Result<CompactOutcome, String> {
        self.commit();
        match super::compact_measured(&mut self.db.alone(), &self.path) {
            Ok(outcome) => {
                self.stats.compactions.fetch_add(1, Ordering::Relaxed);
                Ok(outcome)
            }
            // A backup's read transaction still open: redb refuses; try later.
            Err(redb::CompactionError::TransactionInProgress) => Err(
                "a read transaction is open (a backup under way?): try again when it is done"
                    .into(),
            ),
            Err(e) => Err(e.to_string()),
        }
    }

    /// After a retention pass: compacts the live file when less than 40 % of a
    /// large one is in use (`[store] compact_min_mb`), so a long run does not keep
    /// the free pages its deletes left.
    fn compact_if_sparse(&mut self) {
        let sparse = super::sparse(&self.db.get(), &self.path, self.options.compact_min_bytes);
        let Some((file, used)) = sparse else {
            return;
        };
        tracing::info!(
            file_mb = file >> 20,
            used_mb = used >> 20,
            "compacting the store file (less than 40 % of it in use after retention)"
        );
        match self.compact() {
            Ok(c) => tracing::info!(
                before_mb = c.before_bytes >> 20,
                after_mb = c.after_bytes >> 20,
                took_ms = c.took_ms,
                "store file compacted"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot compact the store file; going on"),
        }
    }

    /// The id of a series, allocated (and queued for the index) on first sight.
    fn series_id(&mut self, target: &str, metric: &str, labels: &crate::model::Labels) -> u64 {
        tables::write_series_key(&mut self.key_buf, target, metric, labels);
        // Valid UTF-8 (two strs, NULs and JSON); a lossy copy would never match.
        let key = String::from_utf8_lossy(&self.key_buf);
        if let Some(id) = self.series.get(key.as_ref()) {
            return *id;
        }
        let key = key.into_owned();
        let id = self.next_series_id;
        self.next_series_id += 1;
        self.series.insert(key.clone(), id);
        self.new_series.push((key, id));
        id
    }

    fn accept_rollup(&mut self, p: RollupPoint) {
        let id = self.series_id(&p.target, &p.metric, &p.labels);
        for g in Granularity::ALL {
            let key = (id, g.code(), g.bucket(p.ts_ms));
            let open = self.rollups.entry(key).or_insert_with(|| OpenBucket {
                agg: Agg::default(),
                fresh: true,
            });
            open.agg.add(p.response_ms, &p.status);
            self.dirty_rollups.insert(key);
        }
    }

    /// Takes in the samples waiting in the lane.
    fn take_lane(&mut self) {
        let mut taken = std::mem::take(&mut self.lane_taken);
        if self.lane.take(&mut taken) > 0 {
            for batch in &taken {
                self.accept(batch);
            }
        }
        taken.clear();
        self.lane_taken = taken;
    }

    fn accept(&mut self, samples: &[Sample]) {
        for s in samples {
            let id = self.series_id(&s.target, &s.metric, &s.labels);
            if let Some(head) = self.heads.get(&id) {
                // Out-of-order samples are dropped, as Prometheus does: a scraper
                // stamps in order unless the clock steps back.
                if head.enc.last_ts().is_some_and(|last| s.ts_ms < last) {
                    self.stats.samples_dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let full = head.enc.len() >= self.options.chunk_samples
                    || s.ts_ms.saturating_sub(head.start_ts) > MAX_CHUNK_SPAN_MS;
                if full {
                    if let Some(old) = self.heads.remove(&id) {
                        self.closing.push((id, old.start_ts, old.enc.bytes()));
                    }
                }
            }
            let head = self.heads.entry(id).or_insert_with(|| {
                Box::new(Head {
                    start_ts: s.ts_ms,
                    enc: ChunkEncoder::new(),
                    fresh: true,
                })
            });
            head.enc.push(s.ts_ms, s.value);
            self.dirty.insert(id);
            self.pending_samples += 1;
            if !self.remote_sinks.is_empty() {
                self.remote_samples.push(s.clone());
            }
        }
    }

    /// Takes imported series in (see `Store::import`): each becomes closed chunks
    /// written with the next commit, or is refused whole with why.
    fn import(&mut self, series: Vec<ImportSeries>, check_only: bool) -> ImportOutcome {
        let now = now_ms();
        let retention = i64::try_from(self.options.retention.as_millis()).unwrap_or(i64::MAX);
        let horizon = now.saturating_sub(retention);
        let mut outcome = ImportOutcome::default();
        // `herd_X` is the Herd metric whose Prometheus name it is, among the
        // series of its target the store holds; else X.
        let targets: HashSet<&str> = series.iter().map(|s| s.target.as_str()).collect();
        let mut known: HashMap<(String, String), String> = HashMap::new();
        for key in self.series.keys() {
            let mut parts = key.splitn(3, '\0');
            if let (Some(t), Some(m)) = (parts.next(), parts.next()) {
                if targets.contains(t) {
                    known.insert(
                        (t.to_string(), crate::model::prom_names::metric_name(m)),
                        m.to_string(),
                    );
                }
            }
        }
        let series: Vec<ImportSeries> = series
            .into_iter()
            .map(|mut s| {
                if let Some(rest) = s.metric.strip_prefix("herd_") {
                    s.metric = known
                        .get(&(s.target.clone(), s.metric.clone()))
                        .cloned()
                        .unwrap_or_else(|| rest.to_string());
                }
                s
            })
            .collect();
        for (index, s) in series.into_iter().enumerate() {
            let key = tables::series_key(&s.target, &s.metric, &s.labels);
            let refuse = match self.import_conflict(&key, &s.points, horizon, now) {
                Ok(None) => None,
                Ok(Some(why)) => Some(why),
                Err(e) => Some(format!("cannot read the series' chunks: {e}")),
            };
            if let Some(why) = refuse {
                outcome.refused.push((index, why));
                continue;
            }
            if check_only {
                continue;
            }
            let id = self.series_id(&s.target, &s.metric, &s.labels);
            let mut enc = ChunkEncoder::new();
            let mut start = 0;
            for &(ts, v) in &s.points {
                let full = enc.len() >= self.options.chunk_samples
                    || (!enc.is_empty() && ts.saturating_sub(start) > MAX_CHUNK_SPAN_MS);
                if full {
                    self.closing.push((id, start, enc.bytes()));
                    enc = ChunkEncoder::new();
                }
                if enc.is_empty() {
                    start = ts;
                }
                enc.push(ts, v);
            }
            if !enc.is_empty() {
                self.closing.push((id, start, enc.bytes()));
            }
            let n = s.points.len();
            self.pending_samples += n;
            outcome.written += n as u64;
        }
        outcome
    }

    /// Why `points` cannot join the series `key`, if they cannot.
    fn import_conflict(
        &self,
        key: &str,
        points: &[(i64, f64)],
        horizon: i64,
        now: i64,
    ) -> Result<Option<String>, redb::Error> {
        let (Some(&(first, _)), Some(&(last, _))) = (points.first(), points.last()) else {
            return Ok(Some("no samples".into()));
        };
        if let Some(w) = points.windows(2).find(|w| w[1].0 <= w[0].0) {
            return Ok(Some(format!(
                "samples not in increasing time order ({} ms after {} ms)",
                w[1].0, w[0].0
            )));
        }
        if first < horizon {
            return Ok(Some(format!(
                "samples from {first} ms are older than the store's retention (from {horizon} ms on)"
            )));
        }
        if last > now + IMPORT_FUTURE_SLACK_MS {
            return Ok(Some(format!("samples at {last} ms lie in the future")));
        }
        let Some(&id) = self.series.get(key) else {
            return Ok(None);
        };
        let overlaps = |from: i64, to: i64| from <= last && to >= first;
        let said = |from: i64, to: i64| {
            Some(format!(
                "overlaps the samples the series holds from {from} to {to} ms (import history before or after them)"
            ))
        };
        if let Some(head) = self.heads.get(&id) {
            let to = head.enc.last_ts().unwrap_or(head.start_ts);
            if overlaps(head.start_ts, to) {
                return Ok(said(head.start_ts, to));
            }
        }
        for (cid, start, bytes) in &self.closing {
            if *cid != id {
                continue;
            }
            let to = codec::header(bytes).map_or(*start, |h| h.last_ts);
            if overlaps(*start, to) {
                return Ok(said(*start, to));
            }
        }
        let txn = self.db.get().begin_read()?;
        let chunks = match txn.open_table(CHUNKS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        for chunk in chunks.range((id, first.saturating_sub(MAX_CHUNK_SPAN_MS))..=(id, last))? {
            let (k, v) = chunk?;
            let start = k.value().1;
            let to = codec::header(v.value()).map_or(start, |h| h.last_ts);
            if overlaps(start, to) {
                return Ok(said(start, to));
            }
        }
        Ok(None)
    }

    /// The remotes to fill from now on; queues of remotes no longer among them
    /// are deleted with the next commit.
    fn set_remote_sinks(&mut self, sinks: Vec<Arc<RemoteSink>>) {
        let keep: HashSet<&str> = sinks.iter().map(|s| s.name.as_str()).collect();
        self.remote_forget.extend(
            self.remote_bytes
                .keys()
                .filter(|n| !keep.contains(n.as_str()))
                .cloned(),
        );
        for s in &sinks {
            let held = self.remote_bytes.get(&s.name).copied().unwrap_or(0);
            s.stats.queued_bytes.store(held, Ordering::Relaxed);
        }
        self.remote_sinks = sinks;
    }

    /// Encodes the samples since the last commit into each remote's next entry.
    fn encode_remote(&mut self) {
        if self.remote_samples.is_empty() {
            return;
        }
        for sink in &self.remote_sinks {
            if let Some((count, body)) = (sink.encode)(&self.remote_samples) {
                let value = super::remote::entry_value(count, &body);
                self.remote_new
                    .push((sink.clone(), self.next_remote_seq, value));
                self.next_remote_seq += 1;
            }
        }
        self.remote_samples.clear();
    }

    fn commit(&mut self) {
        self.encode_remote();
        let nothing = self.dirty.is_empty()
            && self.remote_new.is_empty()
            && self.remote_acks.is_empty()
            && self.remote_forget.is_empty()
            && self.dirty_rollups.is_empty()
            && self.closing.is_empty()
            && self.events.is_empty()
            && self.meta.is_empty()
            && self.quiet_meta.is_empty()
            && self.alerting.is_empty()
            && self.outbox_changes.is_empty()
            && self.new_series.is_empty();
        let mut failed = None;
        if !nothing {
            match self.write_txn() {
                Ok(()) => {
                    self.samples_written += self.pending_samples as u64;
                    self.stats
                        .samples_written
                        .fetch_add(self.pending_samples as u64, Ordering::Relaxed);
                    self.stats.commits.fetch_add(1, Ordering::Relaxed);
                    self.pending_samples = 0;
                    self.remote_committed();
                    self.outbox_keys_committed();
                    self.dirty.clear();
                    self.dirty_rollups.clear();
                    let horizon = now_ms().saturating_sub(ROLLUP_KEEP_MS);
                    self.rollups.retain(|k, _| k.2 >= horizon);
                    self.closing.clear();
                    self.publish_committed();
                    self.events.clear();
                    self.quiet_meta.clear();
                    self.new_series.clear();
                    for (_, _, reply) in self.meta.drain(..) {
                        let _ = reply.send(Ok(()));
                    }
                    for (_, reply) in self.alerting.drain(..) {
                        let _ = reply.send(Ok(()));
                    }
                    for (_, reply) in self.outbox_changes.drain(..) {
                        let _ = reply.send(Ok(()));
                    }
                    for (outcome, reply) in self.imports.drain(..) {
                        let _ = reply.send(Ok(outcome));
                    }
                }
                Err(e) => {
                    // Kept in memory: the next commit tries again.
                    tracing::error!(error = %e, "store commit failed; will retry");
                    self.staged_keys.clear();
                    self.staged_unqueued.clear();
                    failed = Some(e.to_string());
                    for (_, _, reply) in self.meta.drain(..) {
                        let _ = reply.send(Err(e.to_string()));
                    }
                    for (_, reply) in self.alerting.drain(..) {
                        let _ = reply.send(Err(e.to_string()));
                    }
                    for (_, reply) in self.outbox_changes.drain(..) {
                        let _ = reply.send(Err(e.to_string()));
                    }
                    for (_, reply) in self.imports.drain(..) {
                        let _ = reply.send(Err(format!(
                            "{e} (what was accepted stays queued: the next commit writes it)"
                        )));
                    }
                }
            }
        }
        for w in self.waiting.drain(..) {
            let _ = w.send(match &failed {
                None => Ok(()),
                Some(e) => Err(e.clone()),
            });
        }
    }

    /// The queues as the last commit left them.
    fn remote_committed(&mut self) {
        if let Some(after) = self.remote_bytes_after.take() {
            for s in &self.remote_sinks {
                let held = after.get(&s.name).copied().unwrap_or(0);
                s.stats.queued_bytes.store(held, Ordering::Relaxed);
            }
            self.remote_bytes = after;
        }
        self.remote_new.clear();
        self.remote_acks.clear();
        self.remote_forget.clear();
    }

    /// Publishes the events and alert transitions the last commit made durable.
    fn publish_committed(&self) {
        for e in &self.events {
            self.feed.publish(Change::Event(e.clone()));
        }
        for (batch, _) in &self.alerting {
            for t in &batch.transitions {
                self.feed.publish(Change::Alert {
                    ts_ms: t.ts_ms,
                    target: t.target.clone(),
                    alert_id: t.alert_id.clone(),
                    rule: t.rule.clone(),
                    from: t.from,
                    to: t.to,
                    suppressed: t.suppressed.clone(),
                });
            }
        }
    }

    fn write_txn(&mut self) -> Result<(), redb::Error> {
        let txn = self.db.get().begin_write()?;
        {
            let mut index = txn.open_table(SERIES_INDEX)?;
            for (key, id) in &self.new_series {
                index.insert(key.as_str(), *id)?;
            }
            let mut chunks = txn.open_table(CHUNKS)?;
            for (id, start, bytes) in &self.closing {
                chunks.insert((*id, *start), bytes.as_slice())?;
            }
            for id in &self.dirty {
                let Some(head) = self.heads.get_mut(id) else {
                    continue;
                };
                if head.fresh {
                    let existing = chunks
                        .get((*id, head.start_ts))?
                        .map(|v| v.value().to_vec());
                    if let Some(existing) = existing {
                        merge_into(head, &existing);
                    }
                    head.fresh = false;
                }
                chunks.insert((*id, head.start_ts), head.enc.bytes().as_slice())?;
            }
            let mut rollups = txn.open_table(ROLLUPS)?;
            for key in &self.dirty_rollups {
                let Some(open) = self.rollups.get_mut(key) else {
                    continue;
                };
                if open.fresh {
                    let stored = rollups.get(*key)?.map(|v| v.value().to_vec());
                    if let Some(agg) = stored.and_then(|b| serde_json::from_slice::<Agg>(&b).ok()) {
                        open.agg.merge(&agg);
                    }
                    open.fresh = false;
                }
                let json = serde_json::to_vec(&open.agg).unwrap_or_default();
                rollups.insert(*key, json.as_slice())?;
            }
            let mut events = txn.open_table(EVENTS)?;
            for e in &self.events {
                let json = serde_json::to_string(e).unwrap_or_default();
                events.insert((e.ts_ms, self.next_event_seq), json.as_str())?;
                self.next_event_seq += 1;
            }
            self.write_alerting(&txn)?;
            if !(self.remote_new.is_empty()
                && self.remote_acks.is_empty()
                && self.remote_forget.is_empty())
            {
                self.remote_bytes_after = Some(super::remote::write(
                    &txn,
                    self.remote_bytes.clone(),
                    &self.remote_acks,
                    &self.remote_forget,
                    &self.remote_new,
                )?);
            }
            let mut meta = txn.open_table(META)?;
            for (k, v) in &self.quiet_meta {
                meta.insert(k.as_str(), v.as_slice())?;
            }
            for (k, v, _) in &self.meta {
                meta.insert(k.as_str(), v.as_slice())?;
            }
            let written = self.samples_written + self.pending_samples as u64;
            meta.insert(
                tables::META_SAMPLES_WRITTEN,
                written.to_le_bytes().as_slice(),
            )?;
        }
        txn.commit()?;
        Ok(())
    }

    /// The outbox keys as the last commit left them.
    fn outbox_keys_committed(&mut self) {
        for seq in self.staged_unqueued.drain(..) {
            if let Some(key) = self.outbox_keys.remove(&seq) {
                self.queued_keys.remove(&key);
            }
        }
        for (seq, key) in self.staged_keys.drain(..) {
            self.queued_keys.insert(key.clone());
            self.outbox_keys.insert(seq, key);
        }
    }

    /// Whether a notification with this key may be queued in this commit: not when
    /// the outbox holds it, this commit queues it already, or it was delivered. The
    /// key names the alert, its transition and the channel, so the same key is the
    /// same notification (an engine that continued an alert from an older copy
    /// makes a transition it made before again: its notification goes out once).
    fn may_queue(
        &self,
        key: &str,
        staged: &HashSet<&str>,
        sent: &redb::Table<&str, i64>,
    ) -> Result<bool, redb::Error> {
        let again = self.queued_keys.contains(key) || staged.contains(key);
        let again = again || sent.get(key)?.is_some();
        if again {
            tracing::info!(
                key,
                "notification already queued or delivered by this node: not queued again"
            );
        }
        Ok(!again)
    }

    /// Alert changes and outbox changes of this commit. Sequence numbers advance
    /// only in memory here; a failed commit retries with new numbers, which is fine
    /// since nothing refers to them before the commit.
    fn write_alerting(&mut self, txn: &redb::WriteTransaction) -> Result<(), redb::Error> {
        let mut alerts = txn.open_table(ALERTS)?;
        let mut transitions = txn.open_table(TRANSITIONS)?;
        let mut outbox = txn.open_table(OUTBOX)?;
        let mut sent = txn.open_table(SENT)?;
        let mut staged_keys = Vec::new();
        let mut staged_unqueued = Vec::new();
        let mut staged: HashSet<&str> = HashSet::new();
        for (batch, _) in &self.alerting {
            for a in &batch.alerts {
                let json = serde_json::to_vec(a).unwrap_or_default();
                alerts.insert(a.id.as_str(), json.as_slice())?;
            }
            for id in &batch.deleted {
                alerts.remove(id.as_str())?;
            }
            for t in &batch.transitions {
                let json = serde_json::to_vec(t).unwrap_or_default();
                transitions.insert((t.ts_ms, self.next_transition_seq), json.as_slice())?;
                self.next_transition_seq += 1;
            }
            for e in &batch.outbox {
                let key = e.notification.idempotency_key.as_str();
                if !self.may_queue(key, &staged, &sent)? {
                    continue;
                }
                let json = serde_json::to_vec(e).unwrap_or_default();
                outbox.insert(self.next_outbox_seq, json.as_slice())?;
                staged.insert(key);
                staged_keys.push((self.next_outbox_seq, key.to_string()));
                self.next_outbox_seq += 1;
            }
        }
        let now = now_ms();
        for (change, _) in &self.outbox_changes {
            for (seq, key) in &change.done {
                outbox.remove(*seq)?;
                sent.insert(key.as_str(), now)?;
                staged_unqueued.push(*seq);
            }
            for key in &change.mark_sent {
                sent.insert(key.as_str(), now)?;
            }
            for (seq, e) in &change.update {
                let json = serde_json::to_vec(e).unwrap_or_default();
                outbox.insert(*seq, json.as_slice())?;
            }
            for seq in &change.remove {
                outbox.remove(*seq)?;
                staged_unqueued.push(*seq);
            }
            for e in &change.add {
                let key = e.notification.idempotency_key.as_str();
                if !self.may_queue(key, &staged, &sent)? {
                    continue;
                }
                let json = serde_json::to_vec(e).unwrap_or_default();
                outbox.insert(self.next_outbox_seq, json.as_slice())?;
                staged.insert(key);
                staged_keys.push((self.next_outbox_seq, key.to_string()));
                self.next_outbox_seq += 1;
            }
        }
        drop(staged);
        self.staged_keys = staged_keys;
        self.staged_unqueued = staged_unqueued;
        Ok(())
    }

    /// Deletes chunks and events older than the retention period.
    /// Starts a retention pass (unless one is under way): series by series, in
    /// steps of their own ([`Writer::retention_step`]).
    fn start_retention(&mut self) {
        if self.retention.is_none() {
            let cutoff = now_ms().saturating_sub(self.options.retention.as_millis() as i64);
            self.retention = Some((0, cutoff));
        }
    }

    /// One step of a retention pass: the chunks and rollup buckets older than the
    /// cutoff of the next [`RETENTION_SERIES_PER_STEP`] series, deleted by key
    /// range (a chunk that starts more than a chunk span before the cutoff ends
    /// before it: no need to read it; the few that start within a span of it are
    /// read for their last time); after the last series, old events, transitions
    /// and sent keys.
    fn retention_step(&mut self) {
        let Some((first, cutoff)) = self.retention else {
            return;
        };
        let end = first
            .saturating_add(RETENTION_SERIES_PER_STEP)
            .min(self.next_series_id);
        let started = Instant::now();
        let mut last = end;
        let mut finishing = last >= self.next_series_id;
        let result = (|| -> Result<(), redb::Error> {
            let txn = self.db.get().begin_write()?;
            {
                let mut chunks = txn.open_table(CHUNKS)?;
                let mut rollups = txn.open_table(ROLLUPS)?;
                let sure = cutoff.saturating_sub(MAX_CHUNK_SPAN_MS);
                for id in first..end {
                    if id > first && started.elapsed() >= RETENTION_STEP_BUDGET {
                        // The rest of this step's series are the next step's.
                        last = id;
                        finishing = false;
                        break;
                    }
                    chunks.retain_in((id, i64::MIN)..(id, sure), |_, _| false)?;
                    chunks.retain_in((id, sure)..(id, cutoff), |_, bytes| {
                        match codec::header(bytes) {
                            Ok(h) => h.last_ts >= cutoff,
                            // An unreadable chunk is kept: deleting data is never a guess.
                            Err(_) => true,
                        }
                    })?;
                    for g in Granularity::ALL {
                        rollups.retain_in(
                            (id, g.code(), i64::MIN)..(id, g.code(), cutoff),
                            |_, _| false,
                        )?;
                    }
                }
                if finishing {
                    let mut events = txn.open_table(EVENTS)?;
                    events.retain_in(..(cutoff, 0), |_, _| false)?;
                    let mut transitions = txn.open_table(TRANSITIONS)?;
                    transitions.retain_in(..(cutoff, 0), |_, _| false)?;
                    let mut sent = txn.open_table(SENT)?;
                    sent.retain(|_, ts| ts >= cutoff)?;
                }
            }
            txn.commit()?;
            Ok(())
        })();
        match result {
            Ok(()) if finishing => {
                self.retention = None;
                self.stats.retention_passes.fetch_add(1, Ordering::Relaxed);
                self.compact_if_sparse();
            }
            Ok(()) => self.retention = Some((last, cutoff)),
            Err(e) => {
                // Tried again at the next pass.
                tracing::error!(error = %e, "store retention failed");
                self.retention = None;
            }
        }
    }
}

/// Puts the points of a chunk already stored under the head's key in front of the
/// head's own points, so that restarting never overwrites stored samples.
fn merge_into(head: &mut Head, existing: &[u8]) {
    let Ok(mut points) = codec::decode(existing) else {
        return;
    };
    if let Ok(mine) = codec::decode(&head.enc.bytes()) {
        points.extend(mine);
    }
    points.sort_by_key(|p| p.0);
    let mut enc = ChunkEncoder::new();
    for (ts, v) in points {
        enc.push(ts, v);
    }
    head.enc = enc;
}
