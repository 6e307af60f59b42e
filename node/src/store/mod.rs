//! The node's redb file: compressed per-series chunks, events and node metadata.
//!
//! Writes go through one writer thread fed by a channel and committed in batches
//! (at most `flush_interval` apart); reads are MVCC snapshots taken by any thread.
//! A `kill -9` loses at most the batch not yet committed.
pub mod alerting;
pub mod backup;
pub use tables::format_in;
pub mod codec;
mod query;
pub mod remote;
pub mod rollup;
mod tables;
mod writer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use redb::Database;

use crate::model::change::Feed;
use crate::model::{Event, Labels, Sample};
pub use query::SeriesPoints;

/// The store's file in a node's data_dir.
pub const FILE_NAME: &str = "herd.redb";

/// Compacts a redb file of a stopped node in place; returns its size before and
/// after. A file a running node holds is refused (redb's lock), with that said.
pub fn compact_file(path: &Path) -> Result<(u64, u64), String> {
    let before = file_size(path);
    let mut db = match Database::open(path) {
        Ok(db) => db,
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
            return Err("in use: a node runs on this data dir (`herd compact` without a directory compacts a running node's store)".into())
        }
        Err(e) => return Err(format!("cannot open: {e}")),
    };
    compact_rounds(&mut db).map_err(|e| format!("cannot compact: {e}"))?;
    drop(db);
    Ok((before, file_size(path)))
}

pub(crate) fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Compacts until redb moves nothing more (each call frees what it can; a few
/// rounds reach the smallest file).
pub(crate) fn compact_rounds(db: &mut Database) -> Result<(), redb::CompactionError> {
    for _ in 0..4 {
        if !db.compact()? {
            break;
        }
    }
    Ok(())
}

/// [`compact_rounds`] on the file at `path`, with its sizes before and after and
/// how long it took.
pub(crate) fn compact_measured(
    db: &mut Database,
    path: &Path,
) -> Result<CompactOutcome, redb::CompactionError> {
    let before_bytes = file_size(path);
    let started = std::time::Instant::now();
    compact_rounds(db)?;
    Ok(CompactOutcome {
        before_bytes,
        after_bytes: file_size(path),
        took_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    })
}

/// The file's size and the bytes in use, when the file is at least `min_bytes`
/// and less than 40 % of it is in use (worth compacting); else None. Not half:
/// redb grows a file a region at a time, so right after a compaction the next
/// commits may take the file back up to about twice what is in use; a node must
/// not compact again for that (the retention bench saw 702 MB -> 1.40 GB).
pub(crate) fn sparse(db: &Database, path: &Path, min_bytes: u64) -> Option<(u64, u64)> {
    let file = file_size(path);
    if file < min_bytes {
        return None;
    }
    let stats = db.begin_write().ok().and_then(|w| {
        let stats = w.stats().ok();
        let _ = w.abort();
        stats
    })?;
    let used = stats.allocated_pages() * stats.page_size() as u64;
    if used * 5 >= file * 2 {
        tracing::debug!(
            file_mb = file >> 20,
            used_mb = used >> 20,
            "store file mostly in use: no compaction"
        );
        return None;
    }
    Some((file, used))
}

/// Compacts the store at start (nothing else holds it yet) when less than 40 % of
/// a large file is in use: free pages a long run left (retention deletes,
/// rewritten open chunks) go back to the filesystem. A failure is logged and the
/// node goes on.
fn compact_if_sparse(db: &mut Database, path: &Path, min_bytes: u64) {
    let Some((file, used)) = sparse(db, path, min_bytes) else {
        return;
    };
    let started = std::time::Instant::now();
    tracing::info!(
        file_mb = file >> 20,
        used_mb = used >> 20,
        "compacting the store file at start (less than 40 % of it in use)"
    );
    if let Err(e) = compact_rounds(db) {
        tracing::warn!(error = %e, "cannot compact the store file; going on");
        return;
    }
    tracing::info!(
        before_mb = file >> 20,
        after_mb = file_size(path) >> 20,
        took_ms = started.elapsed().as_millis() as u64,
        "store file compacted"
    );
}

/// A redb file shared by a writer and every reader (the store's; the Raft
/// file's): they take it shared (a read or write transaction is begun and
/// ended under it); only a compaction of the live file takes it alone, as redb
/// compacts through `&mut`. Never take it twice on one thread: a compaction
/// waiting between the two would wait forever.
#[derive(Clone)]
pub(crate) struct SharedDb(Arc<std::sync::RwLock<Database>>);

impl SharedDb {
    pub(crate) fn new(db: Database) -> SharedDb {
        SharedDb(Arc::new(std::sync::RwLock::new(db)))
    }

    /// The file, shared (a compaction in progress is waited for).
    pub(crate) fn get(&self) -> std::sync::RwLockReadGuard<'_, Database> {
        // A panic under the lock leaves the Database as redb left it: usable.
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The file alone at a moment nobody holds it, looked for during `tries_for`
    /// (never queued for: a waiting taker would hold up every reader that comes
    /// after it). `None`: it stayed held.
    pub(crate) fn alone_when_free(
        &self,
        tries_for: Duration,
    ) -> Option<std::sync::RwLockWriteGuard<'_, Database>> {
        let tried = std::time::Instant::now();
        loop {
            match self.0.try_write() {
                Ok(g) => return Some(g),
                Err(std::sync::TryLockError::Poisoned(p)) => return Some(p.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) if tried.elapsed() < tries_for => {
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(std::sync::TryLockError::WouldBlock) => return None,
            }
        }
    }

    /// The file alone: waits for every reader to let go.
    pub(crate) fn alone(&self) -> std::sync::RwLockWriteGuard<'_, Database> {
        self.0.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// What a compaction of the live store did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactOutcome {
    pub before_bytes: u64,
    pub after_bytes: u64,
    /// How long the writer (and readers) waited for it.
    pub took_ms: u64,
}

/// Operations queued between the writer and everyone else. Bounded so that an
/// overloaded disk slows nobody down without limit: samples beyond it are counted
/// as dropped.
const QUEUE_DEPTH: usize = 16_384;

/// Samples waiting in the lane at most (about 12,000 vitals scrapes); beyond it
/// they are counted as dropped, as a full queue's were.
const LANE_SAMPLES: usize = 262_144;

/// Samples on their way to the writer. Appending does not wake it (through the
/// channel, every scrape woke the writer thread: a futex wake and a switch each):
/// it takes them at its next turn — at the latest its next commit — and is
/// woken only when [`writer::MAX_BATCH_SAMPLES`] are waiting.
#[derive(Default)]
pub(crate) struct SampleLane(Mutex<LaneBatches>);

#[derive(Default)]
struct LaneBatches {
    batches: Vec<Arc<[Sample]>>,
    samples: usize,
    /// The writer stopped: nothing more is taken.
    closed: bool,
}

impl SampleLane {
    /// Adds `batch`; `None` when the lane is full, else whether this batch
    /// filled it to a commit's worth.
    fn push(&self, batch: Arc<[Sample]>) -> Option<bool> {
        let mut l = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = batch.len();
        if l.closed || l.samples + n > LANE_SAMPLES {
            return None;
        }
        let before = l.samples;
        l.samples += n;
        l.batches.push(batch);
        Some(before < writer::MAX_BATCH_SAMPLES && l.samples >= writer::MAX_BATCH_SAMPLES)
    }

    /// Takes what waits, leaving `spare` (emptied, its capacity kept) in its place.
    pub(crate) fn take(&self, spare: &mut Vec<Arc<[Sample]>>) -> usize {
        spare.clear();
        let mut l = self.0.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::swap(&mut l.batches, spare);
        std::mem::take(&mut l.samples)
    }

    /// The writer stopped (after taking the lane a last time).
    pub(crate) fn close(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {source}")]
    Db {
        path: PathBuf,
        #[source]
        source: redb::Error,
    },
    #[error("store: {0}")]
    Io(#[from] std::io::Error),
    #[error("store is closed")]
    Closed,
    #[error("store: corrupt record: {0}")]
    Corrupt(String),
    /// The file is of a newer store format than this build reads.
    #[error("store {path}: written in store format {found}; this herd ({ours}) reads format {max} and older: run a newer herd on it (nothing was changed)", ours = env!("CARGO_PKG_VERSION"), max = backup::STORE_FORMAT)]
    NewerFormat { path: PathBuf, found: u32 },
    /// A commit failed; what it held is still in memory (lost if the node stops).
    #[error("store: commit failed: {0}")]
    Commit(String),
    /// A compaction of the live file could not be done (nothing was lost).
    #[error("store: cannot compact: {0}")]
    Compact(String),
}

/// Counters shown in `herd status`.
#[derive(Debug, Default)]
pub struct StoreStats {
    pub samples_written: AtomicU64,
    pub samples_dropped: AtomicU64,
    pub commits: AtomicU64,
    /// Retention passes finished since the store was opened.
    pub retention_passes: AtomicU64,
    /// Compactions of the live file (asked for, or after a retention pass).
    pub compactions: AtomicU64,
}

/// One request's contribution to the rollups of a series.
#[derive(Debug, Clone)]
pub struct RollupPoint {
    pub target: String,
    pub metric: String,
    pub labels: crate::model::Labels,
    pub ts_ms: i64,
    pub response_ms: Option<f64>,
    pub status: String,
}

pub(crate) enum WriteOp {
    /// Samples wait in the lane: take them now (a commit's worth is there).
    Wake,
    Rollup(RollupPoint),
    Event(Event),
    /// Stored durably; the reply comes after the commit.
    #[cfg(test)]
    PutMeta(String, Vec<u8>, std::sync::mpsc::Sender<Result<(), String>>),
    /// Events and metadata that must commit together (log lines and the offset
    /// after them: a crash neither repeats nor skips a line).
    Persist(Vec<Event>, Vec<(String, Vec<u8>)>),
    /// Alert changes and the notifications they cause, in one transaction; the
    /// reply comes after the commit.
    Alerting(AlertingBatch, std::sync::mpsc::Sender<Result<(), String>>),
    /// Outbox changes after delivery attempts; the reply comes after the commit.
    Outbox(OutboxChange, std::sync::mpsc::Sender<Result<(), String>>),
    /// The remote-write queues to fill from now on (queues of others are forgotten).
    RemoteSinks(Vec<Arc<remote::RemoteSink>>),
    /// The receiver took `name`'s entries up to this seq: delete them.
    RemoteAck(String, u64),
    /// History to store as closed chunks (`herd import`); with `check_only` only
    /// what would be refused is said. The reply comes after the commit.
    Import(
        Vec<ImportSeries>,
        bool,
        std::sync::mpsc::Sender<Result<ImportOutcome, String>>,
    ),
    /// Runs a whole retention pass now (tests); the reply comes after it.
    #[cfg(test)]
    RetainNow(std::sync::mpsc::Sender<Result<(), String>>),
    /// Commit now; the reply comes after the commit (an error when it failed).
    Flush(std::sync::mpsc::Sender<Result<(), String>>),
    /// Commit, then compact the live file (the writer and every reader wait for
    /// it); the reply says what it did, or why it could not.
    Compact(std::sync::mpsc::Sender<Result<Result<CompactOutcome, String>, String>>),
    /// Commit and stop; later operations fail with `Closed`.
    Shutdown(std::sync::mpsc::Sender<Result<(), String>>),
}

/// The samples of one series to import, in time order.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportSeries {
    pub target: String,
    pub metric: String,
    pub labels: Labels,
    pub points: Vec<(i64, f64)>,
}

/// What an import stored, and what it refused: each refused series by its index
/// in the request, with why.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImportOutcome {
    pub written: u64,
    pub refused: Vec<(usize, String)>,
}

/// Alert changes written together.
#[derive(Debug, Clone, Default)]
pub struct AlertingBatch {
    /// Alerts to store (insert or replace), by id.
    pub alerts: Vec<crate::model::Alert>,
    /// Alerts to forget.
    pub deleted: Vec<String>,
    pub transitions: Vec<alerting::TransitionRecord>,
    /// New notifications; the store gives them their sequence numbers.
    pub outbox: Vec<alerting::OutboxEntry>,
}

/// What a delivery round did to the outbox.
#[derive(Debug, Clone, Default)]
pub struct OutboxChange {
    /// Delivered: removed, and their idempotency keys recorded as sent.
    pub done: Vec<(u64, String)>,
    /// Tried and to be tried again later.
    pub update: Vec<(u64, alerting::OutboxEntry)>,
    /// Given up on (their fallbacks, if any, are in `add`).
    pub remove: Vec<u64>,
    pub add: Vec<alerting::OutboxEntry>,
    /// Keys to record as done that had no outbox entry (remediation actions).
    pub mark_sent: Vec<String>,
}

/// Settings of the store, from `[store]` in herd.toml.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub retention: Duration,
    pub flush_interval: Duration,
    pub chunk_samples: usize,
    /// A file at least this large is compacted (at start, and after a retention
    /// pass) when less than 40 % of it is in use.
    pub compact_min_bytes: u64,
    /// redb's page cache for the file (its default, 1 GiB, let a node's RSS grow
    /// with what it wrote until the whole GiB was used).
    pub cache_bytes: usize,
}

impl From<&crate::config::node::StoreSection> for StoreOptions {
    fn from(s: &crate::config::node::StoreSection) -> Self {
        StoreOptions {
            retention: s.retention.get(),
            flush_interval: s.flush_interval.get(),
            chunk_samples: s.chunk_samples,
            compact_min_bytes: s.compact_min_mb << 20,
            cache_bytes: s.cache_mb << 20,
        }
    }
}

/// `[store]`'s defaults.
impl Default for StoreOptions {
    fn default() -> Self {
        (&crate::config::node::StoreSection::default()).into()
    }
}

/// Handle to the node's store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: SharedDb,
    path: PathBuf,
    tx: SyncSender<WriteOp>,
    lane: Arc<SampleLane>,
    writer: Arc<Mutex<Option<JoinHandle<()>>>>,
    pub stats: Arc<StoreStats>,
    /// Where committed events and alert transitions are published.
    feed: Feed,
    /// What each remote_write queue did (by remote name), for /metrics.
    remote_stats: Arc<Mutex<BTreeMap<String, Arc<remote::RemoteStats>>>>,
}

impl Store {
    /// Opens (or creates) `dir/herd.redb` and starts the writer thread.
    pub fn open(dir: &Path, options: StoreOptions) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(FILE_NAME);
        let db_err = |e: redb::Error| StoreError::Db {
            path: path.clone(),
            source: e,
        };
        // A file of a newer format is refused before anything writes to it. A
        // file that needs repair (the node was killed) cannot be read read-only:
        // it is checked once opened (and repaired) below.
        let newer = |found: Option<u32>| found.filter(|f| *f > backup::STORE_FORMAT);
        if path.exists() {
            if let Ok(ro) = redb::ReadOnlyDatabase::open(&path) {
                if let Some(found) = newer(tables::format_of(&ro).map_err(db_err)?) {
                    return Err(StoreError::NewerFormat { path, found });
                }
            }
        }
        let mut db = redb::Builder::new()
            .set_cache_size(options.cache_bytes)
            .create(&path)
            .map_err(|e| db_err(e.into()))?;
        if let Some(found) = newer(tables::format_of(&db).map_err(db_err)?) {
            return Err(StoreError::NewerFormat { path, found });
        }
        compact_if_sparse(&mut db, &path, options.compact_min_bytes);
        let state = tables::init(&db).map_err(db_err)?;
        let db = SharedDb::new(db);
        let stats = Arc::new(StoreStats::default());
        stats
            .samples_written
            .store(state.samples_written, Ordering::Relaxed);
        let (tx, rx) = sync_channel(QUEUE_DEPTH);
        let feed = Feed::default();
        let lane = Arc::new(SampleLane::default());
        let w = writer::Writer::new(
            db.clone(),
            path.clone(),
            state,
            options,
            stats.clone(),
            feed.clone(),
            lane.clone(),
        );
        let handle = std::thread::Builder::new()
            .name("herd-store".into())
            .spawn(move || w.run(rx))?;
        Ok(Store {
            db,
            path,
            tx,
            lane,
            writer: Arc::new(Mutex::new(Some(handle))),
            stats,
            feed,
            remote_stats: Arc::new(Mutex::new(BTreeMap::new())),
        })
    }

    /// The node's feed of changes: the store publishes what it committed; others
    /// (the cluster) publish to the same feed.
    pub fn feed(&self) -> &Feed {
        &self.feed
    }

    /// Queues samples without waiting (in the lane: see [`SampleLane`]). Returns
    /// false (and counts them dropped) when the writer is behind by a full lane.
    pub fn append(&self, samples: impl Into<Arc<[Sample]>>) -> bool {
        let samples = samples.into();
        let n = samples.len() as u64;
        if n == 0 {
            return true;
        }
        match self.lane.push(samples) {
            Some(wake) => {
                if wake {
                    // Full queue: the writer has plenty to do and takes the lane
                    // at its next turn anyway.
                    let _ = self.tx.try_send(WriteOp::Wake);
                }
                true
            }
            None => {
                self.stats.samples_dropped.fetch_add(n, Ordering::Relaxed);
                false
            }
        }
    }

    /// Sets the remote-write queues the writer fills from the next commit on; the
    /// queues of remotes not among them are deleted.
    pub async fn set_remote_sinks(&self, sinks: Vec<Arc<remote::RemoteSink>>) {
        let tx = self.tx.clone();
        let _ =
            tokio::task::spawn_blocking(move || tx.send(WriteOp::RemoteSinks(sinks)).is_ok()).await;
    }

    /// The counters of remote `name`'s queue (made on first use).
    pub fn remote_stats(&self, name: &str) -> Arc<remote::RemoteStats> {
        let mut all = self.remote_stats.lock().unwrap_or_else(|p| p.into_inner());
        all.entry(name.to_string()).or_default().clone()
    }

    /// Every remote's counters.
    pub fn all_remote_stats(&self) -> Vec<(String, Arc<remote::RemoteStats>)> {
        let all = self.remote_stats.lock().unwrap_or_else(|p| p.into_inner());
        all.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// The oldest entries of a remote's queue after seq `after` (all: `None`), up
    /// to about `max_samples` samples.
    pub async fn remote_oldest(
        &self,
        name: &str,
        after: Option<u64>,
        max_samples: usize,
    ) -> Result<Vec<remote::QueuedBatch>, StoreError> {
        let (db, name) = (self.db.clone(), name.to_string());
        tokio::task::spawn_blocking(move || remote::oldest(&db.get(), &name, after, max_samples))
            .await
            .map_err(|_| StoreError::Closed)?
            .map_err(|e| self.db_err(e))
    }

    /// The receiver took `name`'s entries up to `seq`: they go with the next commit.
    pub async fn remote_ack(&self, name: &str, seq: u64) {
        let tx = self.tx.clone();
        let op = WriteOp::RemoteAck(name.to_string(), seq);
        let _ = tokio::task::spawn_blocking(move || tx.send(op).is_ok()).await;
    }

    /// Queues a rollup point without waiting (dropped and counted when the queue is full).
    pub fn rollup(&self, point: RollupPoint) {
        if self.tx.try_send(WriteOp::Rollup(point)).is_err() {
            self.stats.samples_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Rollup buckets of `metric` of `target` (series whose labels include
    /// `labels`) in `[from_ms, to_ms]`.
    pub fn rollups(
        &self,
        target: &str,
        metric: &str,
        labels: &crate::model::Labels,
        granularity: rollup::Granularity,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<query::RollupSeries>, StoreError> {
        query::rollups(
            &self.db.get(),
            target,
            metric,
            labels,
            granularity,
            from_ms,
            to_ms,
        )
        .map_err(|e| self.db_err(e))
    }

    /// Queues an event; events are never dropped silently: a full queue waits.
    pub async fn event(&self, event: Event) {
        let tx = self.tx.clone();
        let _ = tokio::task::spawn_blocking(move || tx.send(WriteOp::Event(event)).is_ok()).await;
    }

    /// Queues events and metadata that commit in one transaction; does not wait for
    /// the commit. Never dropped: a full queue waits.
    pub async fn persist(&self, events: Vec<Event>, meta: Vec<(String, Vec<u8>)>) {
        if events.is_empty() && meta.is_empty() {
            return;
        }
        let tx = self.tx.clone();
        let _ =
            tokio::task::spawn_blocking(move || tx.send(WriteOp::Persist(events, meta)).is_ok())
                .await;
    }

    /// Stores a metadata value and returns once it is durable.
    #[cfg(test)]
    pub async fn put_meta(&self, key: &str, value: Vec<u8>) -> Result<(), StoreError> {
        let key = key.to_string();
        self.wait_for(move |reply| WriteOp::PutMeta(key, value, reply))
            .await
    }

    /// Writes alert changes and their notifications in one transaction; returns
    /// once durable.
    pub async fn alerting(&self, batch: AlertingBatch) -> Result<(), StoreError> {
        self.wait_for(move |reply| WriteOp::Alerting(batch, reply))
            .await
    }

    /// Stores history (`herd import`): each series' samples become closed chunks,
    /// unless they overlap what the series holds (stored, or in its open chunk),
    /// are older than the retention, lie in the future, or are not in strictly
    /// increasing time order: that series is then refused whole, with why. Returns
    /// once durable. Imported samples do not go to remote_write (they are
    /// history, not what this node collects).
    pub async fn import(
        &self,
        series: Vec<ImportSeries>,
        check_only: bool,
    ) -> Result<ImportOutcome, StoreError> {
        self.wait_for(move |reply| WriteOp::Import(series, check_only, reply))
            .await
    }

    /// Compacts the live file now: the writer commits what it holds, then takes
    /// the file alone (scrapes queue meanwhile, readers wait) and lets redb move
    /// its pages down and truncate the free ones. Refused while a backup holds a
    /// read transaction. Returns once done.
    pub async fn compact(&self) -> Result<CompactOutcome, StoreError> {
        self.wait_for(WriteOp::Compact)
            .await?
            .map_err(StoreError::Compact)
    }

    /// Applies a delivery round to the outbox; returns once durable.
    pub async fn outbox_change(&self, change: OutboxChange) -> Result<(), StoreError> {
        self.wait_for(move |reply| WriteOp::Outbox(change, reply))
            .await
    }

    /// Sends the writer `op` with a reply channel and waits, off the async
    /// workers, for its answer (after the commit it waits for).
    async fn wait_for<T: Send + 'static>(
        &self,
        op: impl FnOnce(std::sync::mpsc::Sender<Result<T, String>>) -> WriteOp + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply_tx, reply_rx) = std::sync::mpsc::channel();
        let tx = self.tx.clone();
        tokio::task::spawn_blocking(move || {
            tx.send(op(reply_tx)).map_err(|_| StoreError::Closed)?;
            reply_rx
                .recv()
                .map_err(|_| StoreError::Closed)?
                .map_err(StoreError::Corrupt)
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }

    /// Every stored alert.
    pub fn alerts(&self) -> Result<Vec<crate::model::Alert>, StoreError> {
        query::alerts(&self.db.get()).map_err(|e| self.db_err(e))
    }

    /// The outbox in order.
    pub fn outbox(&self) -> Result<Vec<(u64, alerting::OutboxEntry)>, StoreError> {
        query::outbox(&self.db.get()).map_err(|e| self.db_err(e))
    }

    /// Whether a notification with this idempotency key was delivered.
    pub fn was_sent(&self, key: &str) -> Result<bool, StoreError> {
        query::was_sent(&self.db.get(), key).map_err(|e| self.db_err(e))
    }

    /// The entries whose idempotency key this outbox neither holds nor delivered:
    /// what may be queued here without a second send from the same node.
    pub async fn not_yet_queued(
        &self,
        entries: Vec<alerting::OutboxEntry>,
    ) -> Result<Vec<alerting::OutboxEntry>, StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            let queued: std::collections::BTreeSet<String> = store
                .outbox()?
                .into_iter()
                .map(|(_, e)| e.notification.idempotency_key)
                .collect();
            let mut fresh = Vec::new();
            for e in entries {
                let key = &e.notification.idempotency_key;
                if !queued.contains(key) && !store.was_sent(key)? {
                    fresh.push(e);
                }
            }
            Ok(fresh)
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }

    /// Transitions newest first since `since_ms`, at most `limit`.
    pub fn transitions(
        &self,
        since_ms: i64,
        limit: usize,
    ) -> Result<Vec<alerting::TransitionRecord>, StoreError> {
        query::transitions(&self.db.get(), since_ms, limit).map_err(|e| self.db_err(e))
    }

    /// Commits everything queued so far; returns once it is durable.
    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        let (reply_tx, reply_rx) = std::sync::mpsc::channel();
        self.tx
            .send(WriteOp::Flush(reply_tx))
            .map_err(|_| StoreError::Closed)?;
        reply_rx
            .recv()
            .map_err(|_| StoreError::Closed)?
            .map_err(StoreError::Commit)
    }

    pub fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        tables::get_meta(&self.db.get(), key).map_err(|e| self.db_err(e))
    }

    /// Series of `metric` of `target` whose labels include `labels`, with their points in
    /// `[from_ms, to_ms]`.
    pub fn query(
        &self,
        target: &str,
        metric: &str,
        labels: &crate::model::Labels,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<SeriesPoints>, StoreError> {
        query::query(&self.db.get(), target, metric, labels, from_ms, to_ms)
            .map_err(|e| self.db_err(e))
    }

    /// Events newest first, optionally of one target, at most `limit`.
    /// Named series across targets and metrics (see [`query::select`]).
    pub fn select(
        &self,
        target: Option<&str>,
        wanted: &dyn Fn(&str, &str, &Labels) -> bool,
        range_ms: (i64, i64),
        points: bool,
    ) -> Result<Vec<query::NamedSeries>, StoreError> {
        query::select(&self.db.get(), target, wanted, range_ms, points).map_err(|e| self.db_err(e))
    }

    pub fn events(
        &self,
        target: Option<&str>,
        since_ms: i64,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        query::events(&self.db.get(), target, since_ms, limit).map_err(|e| self.db_err(e))
    }

    /// Size of the redb file in bytes.
    pub fn file_bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)
    }

    /// Commits everything queued and stops the writer. Idempotent.
    /// Commits what is pending and stops the writer; says whether the last commit
    /// made everything durable.
    pub fn close(&self) -> Result<(), StoreError> {
        let handle = self.writer.lock().ok().and_then(|mut h| h.take());
        let mut result = Ok(());
        if let Some(handle) = handle {
            let (reply_tx, reply_rx) = std::sync::mpsc::channel();
            if self.tx.send(WriteOp::Shutdown(reply_tx)).is_ok() {
                result = match reply_rx.recv() {
                    Ok(r) => r.map_err(StoreError::Commit),
                    Err(_) => Err(StoreError::Closed),
                };
            }
            if handle.join().is_err() {
                result = Err(StoreError::Commit(
                    "the store writer thread panicked".into(),
                ));
            }
        }
        result
    }

    fn db_err(&self, e: redb::Error) -> StoreError {
        StoreError::Db {
            path: self.path.clone(),
            source: e,
        }
    }
}

#[cfg(test)]
mod density {
    use super::*;
    use crate::model::{now_ms, Labels};

    /// Prints the redb file's bytes per sample for vitals-like data written the way
    /// a node writes it (batches every flush). A report, not an assertion beyond a
    /// loose bound: run `cargo test -p herd --release --lib density -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement; run it explicitly"]
    fn bytes_per_sample_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            dir.path(),
            StoreOptions {
                retention: Duration::from_secs(365 * 24 * 3600),
                flush_interval: Duration::from_millis(50),
                chunk_samples: 240,
                ..Default::default()
            },
        )
        .unwrap();
        const TARGETS: usize = 100;
        const SCRAPES: i64 = 1440; // four hours at 10 s
        let start = now_ms() - SCRAPES * 10_000;
        let mut total = 0u64;
        let mut rng_state = 1u64;
        let mut next = || {
            rng_state = rng_state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (rng_state >> 33) as f64 / (1u64 << 31) as f64
        };
        for scrape in 0..SCRAPES {
            let mut batch = Vec::new();
            for t in 0..TARGETS {
                let ts = start + scrape * 10_000 + (next() * 5.0) as i64;
                let target = format!("web-{t}");
                let cpu = (next() * 10_000.0).round() / 100.0;
                let mem = 1_000_000_000.0 + ((scrape / 30) as f64) * 4096.0;
                let load = (next() * 400.0).round() / 100.0;
                let rx = (next() * 1_000_000.0).round() / 100.0;
                for (metric, value) in [
                    ("cpu.used_pct", cpu),
                    ("mem.available_bytes", mem),
                    ("load.1", load),
                    ("net.rx_bytes_per_s", rx),
                    ("uptime_s", (scrape * 10) as f64),
                    ("target.up", 1.0),
                ] {
                    batch.push(crate::model::Sample {
                        target: target.clone(),
                        metric: metric.into(),
                        labels: Labels::new(),
                        ts_ms: ts,
                        value,
                    });
                    total += 1;
                }
            }
            while !store.append(batch.clone()) {
                std::thread::sleep(Duration::from_millis(5));
            }
            if scrape % 100 == 0 {
                store.flush_blocking().unwrap();
            }
        }
        store.close().unwrap();
        drop(store);
        let bytes = std::fs::metadata(dir.path().join("herd.redb"))
            .unwrap()
            .len();
        let per = bytes as f64 / total as f64;
        let mut db = redb::Database::open(dir.path().join("herd.redb")).unwrap();
        let chunk_bytes: u64 = {
            use redb::{ReadableDatabase, ReadableTable};
            let r = db.begin_read().unwrap();
            let t = r.open_table(tables::CHUNKS).unwrap();
            t.iter()
                .unwrap()
                .map(|e| e.unwrap().1.value().len() as u64)
                .sum()
        };
        let _ = db.compact();
        drop(db);
        let compacted = std::fs::metadata(dir.path().join("herd.redb"))
            .unwrap()
            .len();
        println!(
            "density: {total} samples; file {bytes} B = {per:.2} B/sample; after compaction {compacted} B = {:.2} B/sample; chunk payload {chunk_bytes} B = {:.2} B/sample",
            compacted as f64 / total as f64,
            chunk_bytes as f64 / total as f64
        );
        assert!(per < 64.0, "{per}");
    }
}

#[cfg(test)]
mod import_tests {
    use super::*;
    use crate::model::now_ms;

    fn open(dir: &Path) -> Store {
        Store::open(
            dir,
            StoreOptions {
                retention: Duration::from_secs(30 * 24 * 3600),
                flush_interval: Duration::from_millis(20),
                chunk_samples: 100,
                ..Default::default()
            },
        )
        .unwrap()
    }

    fn series(metric: &str, points: Vec<(i64, f64)>) -> ImportSeries {
        ImportSeries {
            target: "web-1".into(),
            metric: metric.into(),
            labels: Labels::new(),
            points,
        }
    }

    #[tokio::test]
    async fn history_joins_a_live_series_and_what_cannot_is_refused_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let now = now_ms();
        // Live samples: the last 10 s.
        store.append(
            (0..10)
                .map(|i| Sample {
                    target: "web-1".into(),
                    metric: "cpu.used_pct".into(),
                    labels: Labels::new(),
                    ts_ms: now - 10_000 + i * 1000,
                    value: i as f64,
                })
                .collect::<Vec<_>>(),
        );
        store.flush_blocking().unwrap();
        // A day before them, every 10 s: more than one chunk (100 samples each).
        let day: Vec<(i64, f64)> = (0..8640)
            .map(|i| {
                (
                    now - 86_400_000 - 20_000 + i * 10_000,
                    (i % 97) as f64 / 7.0,
                )
            })
            .collect();
        let check = store
            .import(vec![series("herd_cpu_used_pct", day.clone())], true)
            .await
            .unwrap();
        assert_eq!(check, ImportOutcome::default(), "a check stores nothing");
        let got = store
            .import(vec![series("herd_cpu_used_pct", day.clone())], false)
            .await
            .unwrap();
        assert_eq!(got.written, 8640);
        assert!(got.refused.is_empty(), "{:?}", got.refused);
        let all = store
            .query("web-1", "cpu.used_pct", &Labels::new(), 0, now + 1)
            .unwrap();
        assert_eq!(all.len(), 1, "herd_cpu_used_pct is the series cpu.used_pct");
        assert_eq!(all[0].points.len(), 8650);
        assert_eq!(&all[0].points[..8640], &day[..], "lossless, in order");
        // Again: overlaps now. Out of order, too old, in the future: refused.
        let refused = store
            .import(
                vec![
                    series("cpu.used_pct", day[10..20].to_vec()),
                    series("other", vec![(now - 5000, 1.0), (now - 6000, 2.0)]),
                    series("other", vec![(now - 40 * 86_400_000, 1.0)]),
                    series("other", vec![(now + 3_600_000, 1.0)]),
                    series("fresh", vec![(now - 1000, 1.0)]),
                ],
                false,
            )
            .await
            .unwrap();
        assert_eq!(refused.written, 1, "only `fresh`");
        let says = |i: usize, what: &str| {
            let (index, why) = &refused.refused[i];
            assert_eq!(*index, i, "refusals name the series by its index");
            assert!(why.contains(what), "{why}")
        };
        assert_eq!(refused.refused.len(), 4);
        says(0, "overlaps the samples the series holds");
        says(1, "not in increasing time order");
        says(2, "older than the store's retention");
        says(3, "in the future");
        // The open chunk counts too: live samples of `fresh`'s time are refused.
        let live = store
            .import(vec![series("cpu.used_pct", vec![(now - 3000, 9.0)])], true)
            .await
            .unwrap();
        assert_eq!(live.refused.len(), 1, "inside the live head");
        // Compaction of the stopped store keeps every sample.
        store.close().unwrap();
        drop(store);
        let path = dir.path().join(FILE_NAME);
        let (before, after) = compact_file(&path).unwrap();
        assert!(after <= before, "{before} -> {after}");
        let store = open(dir.path());
        let all = store
            .query("web-1", "cpu.used_pct", &Labels::new(), 0, now + 1)
            .unwrap();
        assert_eq!(all[0].points.len(), 8650);
        assert!(
            compact_file(&path).unwrap_err().contains("in use"),
            "an open store is refused"
        );
    }
}

#[cfg(test)]
mod compact_at_start_tests {
    use super::*;
    use redb::{ReadableDatabase, ReadableTableMetadata};

    const BLOBS: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("blobs");

    fn size(p: &Path) -> u64 {
        std::fs::metadata(p).unwrap().len()
    }

    #[test]
    fn a_sparse_file_is_compacted_and_a_dense_one_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.redb");
        let mut db = Database::create(&path).unwrap();
        let blob = vec![7u8; 4096];
        let w = db.begin_write().unwrap();
        {
            let mut t = w.open_table(BLOBS).unwrap();
            for i in 0..2000u64 {
                t.insert(i, blob.as_slice()).unwrap();
            }
        }
        w.commit().unwrap();
        let dense = size(&path);
        compact_if_sparse(&mut db, &path, 1 << 20);
        assert!(size(&path) >= dense * 9 / 10, "mostly in use: left alone");
        for _ in 0..2 {
            let w = db.begin_write().unwrap();
            {
                let mut t = w.open_table(BLOBS).unwrap();
                for i in 0..1900u64 {
                    t.remove(i).unwrap();
                }
            }
            w.commit().unwrap();
        }
        let sparse = size(&path);
        compact_if_sparse(&mut db, &path, 1 << 20);
        let after = size(&path);
        assert!(after * 2 < sparse, "{sparse} -> {after} bytes");
        let r = db.begin_read().unwrap();
        let t = r.open_table(BLOBS).unwrap();
        assert_eq!(t.len().unwrap(), 100, "what was kept is still there");
        assert_eq!(t.get(1999).unwrap().unwrap().value(), blob.as_slice());
    }
}

#[cfg(test)]
mod retention_bench;

#[cfg(test)]
mod retention_tests {
    use super::*;
    use crate::model::now_ms;

    #[test]
    fn retention_deletes_by_series_in_steps_and_keeps_what_reaches_past_the_cutoff() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            dir.path(),
            StoreOptions {
                retention: Duration::from_secs(2 * 86_400),
                flush_interval: Duration::from_millis(20),
                chunk_samples: 100,
                ..Default::default()
            },
        )
        .unwrap();
        let now = now_ms();
        let cutoff = now - 2 * 86_400_000;
        let sample = |metric: String, ts_ms: i64| Sample {
            target: "t".into(),
            metric,
            labels: Labels::new(),
            ts_ms,
            value: 1.0,
        };
        // 600 series (more than one step): three samples four days ago, one now.
        for i in 0..600 {
            let m = format!("m{i}");
            store.append(
                (0..3)
                    .map(|k| sample(m.clone(), now - 4 * 86_400_000 + k * 1000))
                    .collect::<Vec<_>>(),
            );
            store.flush_blocking().unwrap();
            store.append(vec![sample(m, now - 60_000)]);
        }
        // One chunk across the cutoff: kept whole.
        store.append(vec![
            sample("across".into(), cutoff - 3_600_000),
            sample("across".into(), cutoff + 3_600_000),
        ]);
        store.flush_blocking().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        store.tx.send(WriteOp::RetainNow(tx)).unwrap();
        rx.recv().unwrap().unwrap();
        for i in [0, 255, 256, 599] {
            let got = store
                .query("t", &format!("m{i}"), &Labels::new(), 0, now)
                .unwrap();
            let points: Vec<i64> = got
                .iter()
                .flat_map(|s| s.points.iter().map(|p| p.0))
                .collect();
            assert_eq!(points, [now - 60_000], "m{i}: only the recent sample");
        }
        let across = store.query("t", "across", &Labels::new(), 0, now).unwrap();
        assert_eq!(
            across[0].points.len(),
            2,
            "a chunk reaching past the cutoff stays"
        );
    }
}

#[cfg(test)]
mod outbox_key_tests {
    use super::*;
    use crate::store::alerting::fixtures::notice;

    fn open(dir: &Path) -> Store {
        Store::open(
            dir,
            StoreOptions {
                retention: Duration::from_secs(86_400),
                flush_interval: Duration::from_millis(20),
                chunk_samples: 100,
                ..Default::default()
            },
        )
        .unwrap()
    }

    fn keys(store: &Store) -> Vec<String> {
        let mut keys: Vec<String> = (store.outbox().unwrap().into_iter())
            .map(|(_, e)| e.notification.idempotency_key)
            .collect();
        keys.sort();
        keys
    }

    fn queue(keys: &[&str]) -> AlertingBatch {
        AlertingBatch {
            outbox: keys.iter().map(|k| notice(k, "t", 1)).collect(),
            ..Default::default()
        }
    }

    /// An engine that continued an alert from an older copy makes a transition it
    /// made before again, with the same key: the node queues it once, sends it once.
    #[tokio::test]
    async fn a_key_is_queued_once_while_queued_and_never_after_delivery() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store.alerting(queue(&["a:2:c", "b:2:c"])).await.unwrap();
        // Again, and twice in one batch: nothing new.
        store
            .alerting(queue(&["a:2:c", "c:1:c", "c:1:c"]))
            .await
            .unwrap();
        assert_eq!(keys(&store), ["a:2:c", "b:2:c", "c:1:c"]);
        // a is delivered: its key is recorded, its entry goes; queued again later,
        // it is not taken (nor by a fallback of another entry).
        let seq_a = (store.outbox().unwrap().into_iter())
            .find(|(_, e)| e.notification.idempotency_key == "a:2:c")
            .unwrap()
            .0;
        store
            .outbox_change(OutboxChange {
                done: vec![(seq_a, "a:2:c".into())],
                add: vec![notice("a:2:c", "t", 2)],
                ..Default::default()
            })
            .await
            .unwrap();
        store.alerting(queue(&["a:2:c"])).await.unwrap();
        assert_eq!(keys(&store), ["b:2:c", "c:1:c"]);
        // Given up (removed without delivery): the key may be queued again.
        let seq_b = (store.outbox().unwrap().into_iter())
            .find(|(_, e)| e.notification.idempotency_key == "b:2:c")
            .unwrap()
            .0;
        store
            .outbox_change(OutboxChange {
                remove: vec![seq_b],
                ..Default::default()
            })
            .await
            .unwrap();
        store.alerting(queue(&["b:2:c"])).await.unwrap();
        assert_eq!(keys(&store), ["b:2:c", "c:1:c"]);
        // After a restart the keys queued are known from the file.
        store.close().unwrap();
        drop(store);
        let store = open(dir.path());
        store
            .alerting(queue(&["b:2:c", "c:1:c", "a:2:c", "d:1:c"]))
            .await
            .unwrap();
        assert_eq!(keys(&store), ["b:2:c", "c:1:c", "d:1:c"]);
    }
}

#[cfg(test)]
mod compact_live_tests {
    use super::*;
    use crate::model::now_ms;
    use redb::ReadableDatabase;

    fn open(dir: &Path, compact_min_bytes: u64) -> Store {
        Store::open(
            dir,
            StoreOptions {
                retention: Duration::from_secs(2 * 86_400),
                flush_interval: Duration::from_millis(20),
                chunk_samples: 240,
                compact_min_bytes,
                ..Default::default()
            },
        )
        .unwrap()
    }

    fn sample(metric: &str, ts_ms: i64, value: f64) -> Sample {
        Sample {
            target: "t".into(),
            metric: metric.into(),
            labels: Labels::new(),
            ts_ms,
            value,
        }
    }

    /// 200 series of 4,800 samples four days old (deleted by the retention pass
    /// [`expire`] runs: free pages) and one recent sample each (kept).
    fn fill(store: &Store) -> i64 {
        let now = now_ms();
        let old = now - 4 * 86_400_000;
        for i in 0..200 {
            let m = format!("m{i}");
            for block in 0..4 {
                let samples = (0..1200)
                    .map(|k| {
                        let n = block * 1200 + k;
                        sample(&m, old + n * 10_000, ((n * 7919 + i) % 1000) as f64 / 7.0)
                    })
                    .collect::<Vec<_>>();
                assert!(store.append(samples));
            }
            assert!(store.append(vec![sample(&m, now - 60_000, i as f64)]));
            store.flush_blocking().unwrap();
        }
        now
    }

    /// A whole retention pass, now.
    fn expire(store: &Store) {
        let (tx, rx) = std::sync::mpsc::channel();
        store.tx.send(WriteOp::RetainNow(tx)).unwrap();
        rx.recv().unwrap().unwrap();
    }

    fn fill_and_expire(store: &Store) -> i64 {
        let now = fill(store);
        expire(store);
        now
    }

    fn size(store: &Store) -> u64 {
        std::fs::metadata(&store.path).unwrap().len()
    }

    fn points(store: &Store, metric: &str, now: i64) -> Vec<(i64, f64)> {
        store
            .query("t", metric, &Labels::new(), 0, now + 3_600_000)
            .unwrap()
            .iter()
            .flat_map(|s| s.points.clone())
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_live_file_shrinks_while_samples_keep_coming_and_nothing_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        // Never by itself: this test asks for it.
        let store = open(dir.path(), u64::MAX);
        let now = fill_and_expire(&store);
        assert_eq!(store.stats.compactions.load(Ordering::Relaxed), 0);
        // Samples keep coming, one scrape each millisecond, through the compaction.
        let writer = {
            let store = store.clone();
            std::thread::spawn(move || {
                for n in 0..3000 {
                    assert!(store.append(vec![sample("live", now + n, n as f64)]));
                    std::thread::sleep(Duration::from_micros(300));
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let c = store.compact().await.unwrap();
        writer.join().unwrap();
        store.flush_blocking().unwrap();
        assert!(
            c.after_bytes < c.before_bytes / 2,
            "the free pages went back: {c:?}"
        );
        assert_eq!(store.stats.compactions.load(Ordering::Relaxed), 1);
        let live = points(&store, "live", now);
        assert_eq!(live.len(), 3000, "every sample taken during the compaction");
        assert!(live.iter().enumerate().all(|(n, p)| p.1 == n as f64));
        for i in [0, 99, 199] {
            assert_eq!(
                points(&store, &format!("m{i}"), now),
                [(now - 60_000, i as f64)],
                "m{i}: the recent sample, after the compaction"
            );
        }
        // And it reopens as it was.
        store.close().unwrap();
        drop(store);
        let store = open(dir.path(), u64::MAX);
        assert_eq!(points(&store, "live", now).len(), 3000);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_transaction_left_open_refuses_the_compaction_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), u64::MAX);
        let now = fill_and_expire(&store);
        // As a backup holds one while it copies.
        let txn = store.db.get().begin_read().unwrap();
        let err = store.compact().await.unwrap_err();
        assert!(
            matches!(&err, StoreError::Compact(why) if why.contains("read transaction")),
            "{err}"
        );
        assert!(store.append(vec![sample("after", now, 1.0)]));
        store.flush_blocking().unwrap();
        drop(txn);
        assert_eq!(points(&store, "after", now), [(now, 1.0)]);
        store.compact().await.unwrap();
        assert_eq!(points(&store, "after", now), [(now, 1.0)]);
    }

    #[test]
    fn a_sparse_file_is_compacted_after_a_retention_pass() {
        let dir = tempfile::tempdir().unwrap();
        // At any size (the default is 64 MiB).
        let store = open(dir.path(), 0);
        let now = fill(&store);
        let before = size(&store);
        let compactions = || store.stats.compactions.load(Ordering::Relaxed);
        let done = compactions();
        expire(&store);
        assert_eq!(
            compactions(),
            done + 1,
            "the pass left less than 40 % of the file in use"
        );
        let after = size(&store);
        assert!(after < before / 2, "{before} -> {after}");
        assert_eq!(points(&store, "m7", now), [(now - 60_000, 7.0)]);
    }
}
