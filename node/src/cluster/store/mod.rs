//! The Raft storage of a node (openraft storage v2) in one redb file,
//! `DATA_DIR/raft.redb`, apart from the node's samples file so that neither
//! workload waits on the other's commits.
//!
//! - [`LogStore`]: vote, log entries, committed and last purged log ids.
//! - [`StateMachineStore`]: the applied [`ClusterState`], `last_applied`, the last
//!   membership and the current snapshot.
//!
//! Invariants:
//! - every write is one redb transaction; the log's (vote, appends, purges,
//!   committed) and the snapshots' are committed with `Durability::Immediate` (an
//!   fsync): an append is reported durable to openraft only after that commit;
//! - an apply is committed without an fsync (`Durability::None`): what it applies
//!   is durable already, in the log, and the next durable commit of this file
//!   (the next append, at the latest the snapshot built before any purge of the
//!   log) makes the apply durable too. After a crash the state machine may be a
//!   few entries behind the log, never ahead, and openraft applies those entries
//!   again (from the `committed` mark at start, or when the leader says). This
//!   saves the fsync an apply cost (most of its time);
//! - `last_applied` and the membership are written in the same transaction as the
//!   state-machine change they describe, so after a crash the state never runs
//!   ahead of or behind its `last_applied`;
//! - redb calls block (fsync, file reads): they run on `spawn_blocking` threads,
//!   never on the async workers;
//! - failures become `openraft::StorageError` (openraft then stops the node
//!   cleanly); nothing here panics.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageError, StorageIOError};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::keylog::KeyLog;
use super::types::{
    ActionRunRecord, ClusterState, ForgottenAlert, NodeHealth, NodeId, NodeRecord, Part,
};
use crate::store::alerting::OutboxEntry;
use crate::store::SharedDb;

mod log;
mod sm;
#[cfg(test)]
mod tests;

pub use log::LogStore;
pub use sm::StateMachineStore;

/// Name of the Raft file inside the node's data directory.
pub const FILE_NAME: &str = "raft.redb";
/// redb's page cache for raft.redb: the log's tail and the state's rows; its
/// default (1 GiB) let a node's RSS grow with every entry appended.
const RAFT_CACHE_BYTES: usize = 16 << 20;

/// Log index → `openraft::Entry<TypeConfig>` as JSON.
const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_logs");
/// Log metadata (`KEY_VOTE`, `KEY_COMMITTED`, `KEY_LAST_PURGED`) → JSON.
const LOG_META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_log_meta");
/// State machine (`KEY_LAST_APPLIED`, `KEY_MEMBERSHIP`, `KEY_STATE`) and the
/// current snapshot (`KEY_SNAPSHOT_META`, `KEY_SNAPSHOT_DATA`) → JSON.
const SM: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_state_machine");
/// The herd's alerts, one row each (id → JSON of the alert): an applied alert
/// change rewrites its row, not every alert (format 2 on; format 1 kept them whole
/// under `KEY_STATE_ALERTS` in `SM`, moved here when such a file is opened).
const SM_ALERTS: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_state_alerts");
/// Alert notifications not delivered yet, one row each (idempotency key → JSON
/// of the outbox entry; format 3 on).
const SM_NOTICES: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_state_notices");
/// Keys of delivered alert notifications, one row each under their sequence
/// number in the log of keys ([`KeyLog::seqs`]; format 3 on): a delivery adds a
/// row, the oldest beyond the bound are removed.
const SM_DELIVERED: TableDefinition<u64, &str> = TableDefinition::new("raft_state_delivered");
/// Transition counts of alerts their owner forgot, one row each (id → JSON of
/// the [`ForgottenAlert`]). Added beside format 3 without a new format: a build
/// that does not know the table leaves it alone, and such a build never applies
/// the command that fills it (it is of level 2, see [`super::types::COMMAND_LEVEL`]).
const SM_FORGOTTEN: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_state_forgotten");

/// The layout of this file's tables and records this build writes and reads
/// (`KEY_FORMAT` in `LOG_META`, u32 little endian; a file without it is format 1).
/// A file of a newer format is refused whole, before anything writes to it.
/// 2: alerts in rows of their own table (`SM_ALERTS`).
/// 3: undelivered notices and delivered keys too (`SM_NOTICES`, `SM_DELIVERED`).
pub const RAFT_FORMAT: u32 = 3;
const KEY_FORMAT: &str = "format";
const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_LAST_PURGED: &str = "last_purged";
const KEY_LAST_APPLIED: &str = "last_applied";
const KEY_MEMBERSHIP: &str = "membership";
/// The whole state in one value (written by earlier versions; still read).
const KEY_STATE: &str = "state";
/// The state in parts (see [`Part`]).
const KEY_STATE_SPEC: &str = "state.spec";
const KEY_STATE_OWNERS: &str = "state.owners";
/// When each target's owner got it (stored beside the map; absent before tenures).
const KEY_STATE_TENURE: &str = "state.tenure";
/// The alerts whole (format 1; read once to move them into `SM_ALERTS`).
const KEY_STATE_ALERTS: &str = "state.alerts";
/// Undelivered and delivered alert notifications whole (format 2; read once to
/// move them into `SM_NOTICES` and `SM_DELIVERED`).
const KEY_STATE_NOTICES: &str = "state.notices";
const KEY_STATE_REST: &str = "state.rest";
const KEY_STATE_TAILS: &str = "state.tails";
const KEY_SNAPSHOT_META: &str = "snapshot_meta";
const KEY_SNAPSHOT_DATA: &str = "snapshot_data";

/// Why the Raft store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("raft store {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("raft store {path}: {source}")]
    Db {
        path: PathBuf,
        #[source]
        source: redb::Error,
    },
    /// A stored record does not decode (a damaged file, or one written by an
    /// incompatible version).
    #[error("raft store {path}: corrupt {what}: {source}")]
    Corrupt {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("raft store {path}: {message}")]
    Other { path: PathBuf, message: String },
    #[error("raft store {path}: written in format {found}; this herd ({ours}) reads format {max} and older: run a newer herd on it (nothing was changed)", ours = env!("CARGO_PKG_VERSION"), max = RAFT_FORMAT)]
    NewerFormat { path: PathBuf, found: u32 },
}

/// The format a Raft file says it is in, if it says.
fn format_of(db: &impl redb::ReadableDatabase) -> Result<Option<u32>, redb::Error> {
    crate::store::format_in(db, LOG_META, KEY_FORMAT)
}

impl StoreError {
    fn from_fault(path: &Path, fault: Fault) -> StoreError {
        let path = path.to_path_buf();
        match fault {
            Fault::Db(source) => StoreError::Db { path, source },
            Fault::Codec { what, source } => StoreError::Corrupt { path, what, source },
            other => StoreError::Other {
                path,
                message: other.to_string(),
            },
        }
    }
}

/// Opens (or creates) `dir/raft.redb` and loads the applied state.
///
/// Blocking (it commits, which fsyncs): call it before serving, or through
/// [`open_async`] from async code.
pub fn open(dir: &Path) -> Result<(LogStore, StateMachineStore), StoreError> {
    std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let path = dir.join(FILE_NAME);
    let db_err = |e: redb::Error| StoreError::Db {
        path: path.clone(),
        source: e,
    };
    let newer = |found: Option<u32>| found.filter(|f| *f > RAFT_FORMAT);
    // Checked read-only first (a newer file is not touched); a file that needs
    // repair after a kill cannot be read so, and is checked once opened.
    if path.exists() {
        if let Ok(ro) = redb::ReadOnlyDatabase::open(&path) {
            if let Some(found) = newer(format_of(&ro).map_err(db_err)?) {
                return Err(StoreError::NewerFormat { path, found });
            }
        }
    }
    let db = redb::Builder::new()
        .set_cache_size(RAFT_CACHE_BYTES)
        .create(&path)
        .map_err(|e| db_err(e.into()))?;
    if let Some(found) = newer(format_of(&db).map_err(db_err)?) {
        return Err(StoreError::NewerFormat { path, found });
    }
    let applied = init(&db).map_err(|f| StoreError::from_fault(&path, f))?;
    let db = SharedDb::new(db);
    Ok((
        LogStore::new(db.clone()),
        StateMachineStore::new(db, applied),
    ))
}

/// [`open`] on a blocking thread.
pub async fn open_async(dir: PathBuf) -> Result<(LogStore, StateMachineStore), StoreError> {
    let path = dir.join(FILE_NAME);
    tokio::task::spawn_blocking(move || open(&dir))
        .await
        .map_err(|e| StoreError::Other {
            path,
            message: format!("open task failed: {e}"),
        })?
}

/// Creates the tables if missing and reads what the state machine had applied.
fn init(db: &Database) -> Result<sm::Applied, Fault> {
    let w = write_txn(db)?;
    {
        w.open_table(LOGS)?;
        let mut meta = w.open_table(LOG_META)?;
        // This build's layout from here on (an older file is moved below, in the
        // same transaction; a newer one was refused before).
        meta.insert(KEY_FORMAT, RAFT_FORMAT.to_le_bytes().as_slice())?;
        drop(meta);
        let mut t = Tables::open(&w)?;
        // A state stored whole by an earlier version is stored in parts from now on.
        let whole = get_json::<ClusterState, _>(&t.sm, KEY_STATE, "cluster state")?;
        if let Some(state) = whole {
            t.put_state(&state, None, &Part::ALL.into_iter().collect())?;
            t.sm.remove(KEY_STATE)?;
        }
        // Alerts stored whole (format 1) go to their rows.
        let alerts = get_json::<imbl::OrdMap<String, Arc<crate::model::Alert>>, _>(
            &t.sm,
            KEY_STATE_ALERTS,
            "alerts",
        )?;
        if let Some(alerts) = alerts {
            put_rows(&mut t.alerts, "alert", &alerts, None)?;
            t.sm.remove(KEY_STATE_ALERTS)?;
        }
        // Notices and delivered keys stored whole (format 2) go to their rows.
        let notices = get_json::<(imbl::OrdMap<String, OutboxEntry>, KeyLog), _>(
            &t.sm,
            KEY_STATE_NOTICES,
            "alert notifications",
        )?;
        if let Some((notices, delivered)) = notices {
            put_rows(&mut t.notices, "notice", &notices, None)?;
            put_delivered_rows(&mut t.delivered, &delivered, None)?;
            t.sm.remove(KEY_STATE_NOTICES)?;
        }
    }
    w.commit()?;
    let r = db.begin_read()?;
    let t = r.open_table(SM)?;
    let last_applied = get_json(&t, KEY_LAST_APPLIED, "last applied log id")?.flatten();
    let membership = get_json(&t, KEY_MEMBERSHIP, "membership")?.unwrap_or_default();
    let state = get_state(&r)?;
    Ok(sm::Applied {
        last_applied,
        membership,
        state: Arc::new(state),
    })
}

/// What went wrong inside a store operation, before it is given the subject and
/// verb openraft wants.
#[derive(Debug, thiserror::Error)]
enum Fault {
    #[error(transparent)]
    Db(#[from] redb::Error),
    #[error("{what}: {source}")]
    Codec {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("store task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// redb has one error type per step; all of them fold into `redb::Error`.
macro_rules! redb_fault {
    ($($t:ty),*) => {$(
        impl From<$t> for Fault {
            fn from(e: $t) -> Fault {
                Fault::Db(e.into())
            }
        }
    )*};
}
redb_fault!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// Maps a fault to the `StorageError` openraft expects for `subject`/`verb`.
fn sto(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
) -> impl FnOnce(Fault) -> StorageError<NodeId> {
    move |fault| StorageIOError::new(subject, verb, AnyError::new(&fault)).into()
}

/// Runs store work on a blocking thread: redb commits fsync and reads may hit
/// the disk, neither belongs on an async worker.
async fn blocking<T, F>(f: F) -> Result<T, Fault>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, Fault> + Send + 'static,
{
    tokio::task::spawn_blocking(f).await?
}

/// A write transaction that is durable once `commit` returns.
fn write_txn(db: &Database) -> Result<WriteTransaction, Fault> {
    let mut w = db.begin_write()?;
    w.set_durability(Durability::Immediate)?;
    Ok(w)
}

/// A write transaction for an apply: atomic, made durable by the next durable
/// commit of the file (see the module's invariants).
fn apply_txn(db: &Database) -> Result<WriteTransaction, Fault> {
    let mut w = db.begin_write()?;
    w.set_durability(Durability::None)?;
    Ok(w)
}

fn encode<T: Serialize + ?Sized>(what: &'static str, value: &T) -> Result<Vec<u8>, Fault> {
    serde_json::to_vec(value).map_err(|source| Fault::Codec { what, source })
}

fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, Fault> {
    serde_json::from_slice(bytes).map_err(|source| Fault::Codec { what, source })
}

/// The state's fields that are not stored in a part of their own.
#[derive(Serialize)]
struct RestRef<'a> {
    sent: &'a crate::cluster::keylog::KeyLog,
    health: &'a std::collections::BTreeMap<NodeId, NodeHealth>,
    nodes: &'a std::collections::BTreeMap<NodeId, NodeRecord>,
    pauses: &'a std::collections::BTreeMap<String, crate::ownership::Pause>,
    draining: &'a std::collections::BTreeSet<NodeId>,
    silences: &'a std::collections::BTreeMap<String, crate::store::alerting::Silence>,
    herd_id: &'a Option<String>,
    action_runs: &'a std::collections::BTreeMap<String, ActionRunRecord>,
}

#[derive(Deserialize)]
struct Rest {
    sent: crate::cluster::keylog::KeyLog,
    health: std::collections::BTreeMap<NodeId, NodeHealth>,
    nodes: std::collections::BTreeMap<NodeId, NodeRecord>,
    pauses: std::collections::BTreeMap<String, crate::ownership::Pause>,
    draining: std::collections::BTreeSet<NodeId>,
    silences: std::collections::BTreeMap<String, crate::store::alerting::Silence>,
    #[serde(default)]
    herd_id: Option<String>,
    #[serde(default)]
    action_runs: std::collections::BTreeMap<String, ActionRunRecord>,
}

/// Rows of a map of the state (`new`): those that differ from `prev` written,
/// those `prev` had and `new` has not removed. `new` being `prev` changed by a
/// batch, the two maps share every node of their trees but the changed paths, and
/// the diff visits only those: O(change · log n). Without `prev`: every row
/// rewritten.
fn put_rows<V: Clone + PartialEq + Serialize>(
    rows: &mut redb::Table<&'static str, &'static [u8]>,
    what: &'static str,
    new: &imbl::OrdMap<String, V>,
    prev: Option<&imbl::OrdMap<String, V>>,
) -> Result<(), Fault> {
    let put = |rows: &mut redb::Table<&'static str, &'static [u8]>, id: &str, v: &V| {
        rows.insert(id, encode(what, v)?.as_slice())?;
        Ok::<(), Fault>(())
    };
    let Some(prev) = prev else {
        rows.retain(|_, _| false)?;
        for (id, v) in new {
            put(rows, id, v)?;
        }
        return Ok(());
    };
    for change in prev.diff(new) {
        match change {
            imbl::ordmap::DiffItem::Add(id, v) => put(rows, id, v)?,
            imbl::ordmap::DiffItem::Update { new: (id, v), .. } => put(rows, id, v)?,
            imbl::ordmap::DiffItem::Remove(id, _) => {
                rows.remove(id.as_str())?;
            }
        }
    }
    Ok(())
}

/// The delivered keys' rows: the keys `new` added since `prev` written under
/// their sequence numbers, those it forgot removed — O(change), `new` being
/// `prev` with keys inserted (what an applied batch does). Without `prev`, or
/// when `new` is not such a continuation: every row rewritten.
fn put_delivered_rows(
    rows: &mut redb::Table<u64, &'static str>,
    new: &KeyLog,
    prev: Option<&KeyLog>,
) -> Result<(), Fault> {
    let (from, to) = (new.seqs(), prev.map(KeyLog::seqs));
    match to {
        Some(old) if old.start <= from.start && old.end <= from.end => {
            for seq in old.start..from.start.min(old.end) {
                rows.remove(seq)?;
            }
            for (seq, key) in new.since(old.end) {
                rows.insert(seq, key)?;
            }
        }
        _ => {
            rows.retain(|_, _| false)?;
            for (seq, key) in new.since(0) {
                rows.insert(seq, key)?;
            }
        }
    }
    Ok(())
}

/// The state machine's tables, open in one write transaction.
struct Tables<'t> {
    sm: redb::Table<'t, &'static str, &'static [u8]>,
    alerts: redb::Table<'t, &'static str, &'static [u8]>,
    notices: redb::Table<'t, &'static str, &'static [u8]>,
    delivered: redb::Table<'t, u64, &'static str>,
    forgotten: redb::Table<'t, &'static str, &'static [u8]>,
}

impl<'t> Tables<'t> {
    fn open(w: &'t WriteTransaction) -> Result<Tables<'t>, Fault> {
        Ok(Tables {
            sm: w.open_table(SM)?,
            alerts: w.open_table(SM_ALERTS)?,
            notices: w.open_table(SM_NOTICES)?,
            delivered: w.open_table(SM_DELIVERED)?,
            forgotten: w.open_table(SM_FORGOTTEN)?,
        })
    }

    /// Stores `parts` of `state`; `prev`, the state stored before, lets the rows
    /// (alerts, notices, delivered keys) be written by difference (`None`: all).
    fn put_state(
        &mut self,
        state: &ClusterState,
        prev: Option<&ClusterState>,
        parts: &std::collections::BTreeSet<Part>,
    ) -> Result<(), Fault> {
        let table = &mut self.sm;
        // Every field named: a field added to the state must be given a part here.
        let ClusterState {
            spec_version,
            spec_text,
            spec_source,
            ownership_version,
            owners,
            tenure,
            alerts: _,
            notices,
            delivered,
            sent,
            health,
            nodes,
            pauses,
            draining,
            silences,
            herd_id,
            action_runs,
            tails,
            forgotten,
        } = state;
        for part in parts {
            match part {
                Part::Spec => put_json(
                    table,
                    KEY_STATE_SPEC,
                    "fleet spec",
                    &(spec_version, spec_text, spec_source),
                )?,
                Part::Owners => {
                    put_json(
                        table,
                        KEY_STATE_OWNERS,
                        "ownership map",
                        &(ownership_version, owners),
                    )?;
                    put_json(table, KEY_STATE_TENURE, "ownership tenures", tenure)?;
                }
                Part::Alerts => {
                    put_rows(
                        &mut self.alerts,
                        "alert",
                        &state.alerts,
                        prev.map(|p| &p.alerts),
                    )?;
                    put_rows(
                        &mut self.notices,
                        "notice",
                        notices,
                        prev.map(|p| &p.notices),
                    )?;
                    put_delivered_rows(&mut self.delivered, delivered, prev.map(|p| &p.delivered))?;
                    put_rows(
                        &mut self.forgotten,
                        "forgotten alert",
                        forgotten,
                        prev.map(|p| &p.forgotten),
                    )?;
                }
                Part::Rest => put_json(
                    table,
                    KEY_STATE_REST,
                    "cluster state",
                    &RestRef {
                        sent,
                        health,
                        nodes,
                        pauses,
                        draining,
                        silences,
                        herd_id,
                        action_runs,
                    },
                )?,
                Part::Tails => put_json(table, KEY_STATE_TAILS, "tail marks", tails)?,
            }
        }
        Ok(())
    }
}

/// Reads the state: from its parts and its rows (alerts, notices, delivered
/// keys), or whole as an earlier version stored it.
fn get_state(r: &redb::ReadTransaction) -> Result<ClusterState, Fault> {
    let table = &r.open_table(SM)?;
    if let Some(whole) = get_json::<ClusterState, _>(table, KEY_STATE, "cluster state")? {
        return Ok(whole);
    }
    let mut s = ClusterState::default();
    if let Some((v, text, source)) = get_json(table, KEY_STATE_SPEC, "fleet spec")? {
        (s.spec_version, s.spec_text, s.spec_source) = (v, text, source);
    }
    if let Some((v, owners)) = get_json(table, KEY_STATE_OWNERS, "ownership map")? {
        (s.ownership_version, s.owners) = (v, owners);
    }
    if let Some(tenure) = get_json(table, KEY_STATE_TENURE, "ownership tenures")? {
        s.tenure = tenure;
    }
    for row in r.open_table(SM_ALERTS)?.iter()? {
        let (id, bytes) = row?;
        let a: crate::model::Alert = decode("alert", bytes.value())?;
        s.alerts.insert(id.value().to_string(), Arc::new(a));
    }
    for row in r.open_table(SM_NOTICES)?.iter()? {
        let (key, bytes) = row?;
        let e: OutboxEntry = decode("notice", bytes.value())?;
        s.notices.insert(key.value().to_string(), e);
    }
    for row in r.open_table(SM_FORGOTTEN)?.iter()? {
        let (id, bytes) = row?;
        let f: ForgottenAlert = decode("forgotten alert", bytes.value())?;
        s.forgotten.insert(id.value().to_string(), f);
    }
    let mut keys = Vec::new();
    for row in r.open_table(SM_DELIVERED)?.iter()? {
        let (seq, key) = row?;
        keys.push((seq.value(), key.value().to_string()));
    }
    s.delivered = KeyLog::from_rows(keys);
    if let Some(r) = get_json::<Rest, _>(table, KEY_STATE_REST, "cluster state")? {
        s.sent = r.sent;
        s.health = r.health;
        s.nodes = r.nodes;
        s.pauses = r.pauses;
        s.draining = r.draining;
        s.silences = r.silences;
        s.herd_id = r.herd_id;
        s.action_runs = r.action_runs;
    }
    if let Some(tails) = get_json(table, KEY_STATE_TAILS, "tail marks")? {
        s.tails = tails;
    }
    Ok(s)
}

/// Reads and decodes `key` of a `&str → JSON` table; `None` when absent.
fn get_json<T, R>(table: &R, key: &str, what: &'static str) -> Result<Option<T>, Fault>
where
    T: DeserializeOwned,
    R: ReadableTable<&'static str, &'static [u8]>,
{
    match table.get(key)? {
        Some(v) => decode(what, v.value()).map(Some),
        None => Ok(None),
    }
}

/// Encodes `value` and stores it under `key`.
fn put_json<T: Serialize + ?Sized>(
    table: &mut redb::Table<&'static str, &'static [u8]>,
    key: &str,
    what: &'static str,
    value: &T,
) -> Result<(), Fault> {
    table.insert(key, encode(what, value)?.as_slice())?;
    Ok(())
}

/// Compacts the live Raft file at `path` (see `ClusterNode::compact_raft`):
/// always, or with `min_bytes` only when sparse; taken alone only at a moment
/// no transaction is open on it, looked for during `tries_for`. `None`: nothing
/// to do, or it stayed busy.
pub fn compact_live(
    db: &SharedDb,
    path: &Path,
    min_bytes: Option<u64>,
    tries_for: std::time::Duration,
) -> Result<Option<crate::store::CompactOutcome>, String> {
    if let Some(min_bytes) = min_bytes {
        // The shared hold ends here, before the file is taken alone.
        let sparse = crate::store::sparse(&db.get(), path, min_bytes);
        if sparse.is_none() {
            return Ok(None);
        }
    }
    let Some(mut alone) = db.alone_when_free(tries_for) else {
        tracing::info!("raft.redb stayed busy: not compacted this time");
        return Ok(None);
    };
    let outcome = crate::store::compact_measured(&mut alone, path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    drop(alone);
    tracing::info!(
        before_mb = outcome.before_bytes >> 20,
        after_mb = outcome.after_bytes >> 20,
        took_ms = outcome.took_ms,
        "raft.redb compacted"
    );
    Ok(Some(outcome))
}

/// The herd's side of a backup (`herd backup`): the Raft file's tables, copied from
/// one read transaction of `raft` into `dst` (the backup file the store's tables go
/// into too; the names do not collide). Returns the rows copied.
pub fn backup_into(
    raft: &Database,
    dst: &Database,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, redb::Error> {
    let src = raft.begin_read()?;
    let mut rows = 0;
    copy_tables(&src, dst, &mut rows, progress)?;
    Ok(rows)
}

/// Copies every table of a Raft file from `src` into `dst`.
fn copy_tables(
    src: &redb::ReadTransaction,
    dst: &Database,
    rows: &mut u64,
    progress: &mut dyn FnMut(u64),
) -> Result<(), redb::Error> {
    use crate::store::backup::copy_table;
    copy_table(src, dst, LOGS, rows, progress)?;
    copy_table(src, dst, LOG_META, rows, progress)?;
    copy_table(src, dst, SM, rows, progress)?;
    copy_table(src, dst, SM_ALERTS, rows, progress)?;
    copy_table(src, dst, SM_NOTICES, rows, progress)?;
    copy_table(src, dst, SM_FORGOTTEN, rows, progress)?;
    copy_table(src, dst, SM_DELIVERED, rows, progress)
}

/// What restoring the herd's side of a backup did.
#[derive(Debug, Clone, PartialEq)]
pub enum HerdRestore {
    /// The backup has no herd state (the node was in no herd, or an older backup).
    Nothing,
    /// The node was the herd's only voter: its Raft file is restored whole (no
    /// other voter exists that a restored vote could contradict).
    Restored,
    /// The herd has other voters: the Raft file is not restored (an old vote could
    /// let the node vote twice in one term); the node rejoins as itself and gets
    /// the herd's state from its leader.
    Rejoin { voters: BTreeSet<NodeId> },
}

/// Restores the herd's side of a backup (`src`: a read transaction of it) into
/// `data_dir` (see [`HerdRestore`]) for node `node_id`. `data_dir` must not hold a
/// Raft file.
pub fn restore_from_backup(
    src: &redb::ReadTransaction,
    data_dir: &Path,
    node_id: NodeId,
) -> Result<HerdRestore, String> {
    let sm = match src.open_table(SM) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(HerdRestore::Nothing),
        Err(e) => return Err(e.to_string()),
    };
    let membership: Option<openraft::StoredMembership<NodeId, openraft::BasicNode>> =
        get_json(&sm, KEY_MEMBERSHIP, "membership").map_err(|e| e.to_string())?;
    let voters: BTreeSet<NodeId> = membership
        .map(|m| m.membership().voter_ids().collect())
        .unwrap_or_default();
    if voters.is_empty() {
        return Ok(HerdRestore::Nothing);
    }
    if voters != BTreeSet::from([node_id]) {
        return Ok(HerdRestore::Rejoin { voters });
    }
    let path = data_dir.join(FILE_NAME);
    if path.exists() {
        return Err(format!("{}: exists", path.display()));
    }
    let partial = data_dir.join(format!("{FILE_NAME}.restoring"));
    let _ = std::fs::remove_file(&partial);
    let dst = Database::create(&partial).map_err(|e| format!("{}: {e}", partial.display()))?;
    let mut rows = 0;
    let mut quiet = |_| {};
    let copy = |rows: &mut u64, quiet: &mut dyn FnMut(u64)| -> Result<(), redb::Error> {
        copy_tables(src, &dst, rows, quiet)?;
        crate::store::backup::seal(&dst)
    };
    copy(&mut rows, &mut quiet).map_err(|e| format!("{}: {e}", partial.display()))?;
    drop(dst);
    std::fs::rename(&partial, &path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(HerdRestore::Restored)
}
