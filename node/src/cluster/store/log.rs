//! The Raft log and vote.
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    ErrorSubject, ErrorVerb, LogId, LogState, OptionalSend, RaftLogReader, StorageError, Vote,
};
use redb::{ReadableDatabase, ReadableTable};
use serde::Deserialize;

use super::{
    blocking, decode, encode, get_json, put_json, sto, write_txn, KEY_COMMITTED, KEY_LAST_PURGED,
    KEY_VOTE, LOGS, LOG_META,
};
use crate::cluster::types::{NodeId, TypeConfig};
use crate::store::SharedDb;

type Entry = openraft::Entry<TypeConfig>;

/// Most bytes of entries one `limited_get_log_entries` returns (at least one
/// entry is always returned). Replication sends what it reads in one gRPC
/// message, and tonic refuses messages above 4 MiB by default: a batch of large
/// fleet specs must not make replication fail for good.
pub const MAX_READ_BYTES: usize = 2 * 1024 * 1024;

/// Log storage; clones (the log readers) share the same file.
#[derive(Clone)]
pub struct LogStore {
    db: SharedDb,
}

/// Only the log id of a stored entry, decoded without its payload (a fleet spec
/// can be large).
#[derive(Deserialize)]
struct EntryLogId {
    log_id: LogId<NodeId>,
}

impl LogStore {
    pub(super) fn new(db: SharedDb) -> LogStore {
        LogStore { db }
    }

    /// The Raft file (for backups: a read transaction of it).
    pub fn database(&self) -> SharedDb {
        self.db.clone()
    }

    /// Entries with index in `(lo, hi)`, stopping once `max_bytes` of encoded
    /// entries have been read (but never before the first).
    async fn read(
        &self,
        lo: Bound<u64>,
        hi: Bound<u64>,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, StorageError<NodeId>> {
        if range_is_empty(lo, hi) {
            return Ok(Vec::new());
        }
        let db = self.db.clone();
        blocking(move || {
            // Shared for the whole transaction (see `SharedDb`).
            let db = db.get();
            let r = db.begin_read()?;
            let t = r.open_table(LOGS)?;
            let mut out = Vec::new();
            let mut bytes = 0usize;
            for item in t.range::<u64>((lo, hi))? {
                let (_, v) = item?;
                let v = v.value();
                if !out.is_empty() && bytes.saturating_add(v.len()) > max_bytes {
                    break;
                }
                bytes = bytes.saturating_add(v.len());
                out.push(decode::<Entry>("log entry", v)?);
            }
            Ok(out)
        })
        .await
        .map_err(sto(ErrorSubject::Logs, ErrorVerb::Read))
    }

    /// Stores one log-metadata value durably.
    async fn put_meta<T>(
        &self,
        key: &'static str,
        value: T,
        subject: ErrorSubject<NodeId>,
    ) -> Result<(), StorageError<NodeId>>
    where
        T: serde::Serialize + Send + 'static,
    {
        let db = self.db.clone();
        blocking(move || {
            // Shared for the whole transaction (see `SharedDb`).
            let db = db.get();
            let w = write_txn(&db)?;
            {
                let mut t = w.open_table(LOG_META)?;
                put_json(&mut t, key, key, &value)?;
            }
            w.commit()?;
            Ok(())
        })
        .await
        .map_err(sto(subject, ErrorVerb::Write))
    }

    /// Reads one log-metadata value.
    async fn get_meta<T>(
        &self,
        key: &'static str,
        subject: ErrorSubject<NodeId>,
    ) -> Result<Option<T>, StorageError<NodeId>>
    where
        T: serde::de::DeserializeOwned + Send + 'static,
    {
        let db = self.db.clone();
        blocking(move || {
            // Shared for the whole transaction (see `SharedDb`).
            let db = db.get();
            let r = db.begin_read()?;
            let t = r.open_table(LOG_META)?;
            get_json(&t, key, key)
        })
        .await
        .map_err(sto(subject, ErrorVerb::Read))
    }
}

/// True when no index lies in `(lo, hi)`; redb, like `BTreeMap`, must not be
/// asked for an inverted range.
fn range_is_empty(lo: Bound<u64>, hi: Bound<u64>) -> bool {
    let first = match lo {
        Bound::Included(x) => Some(x),
        Bound::Excluded(x) => x.checked_add(1),
        Bound::Unbounded => Some(0),
    };
    let Some(first) = first else { return true };
    match hi {
        Bound::Included(y) => first > y,
        Bound::Excluded(y) => first >= y,
        Bound::Unbounded => false,
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<NodeId>> {
        self.read(
            range.start_bound().cloned(),
            range.end_bound().cloned(),
            usize::MAX,
        )
        .await
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StorageError<NodeId>> {
        self.read(Bound::Included(start), Bound::Excluded(end), MAX_READ_BYTES)
            .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let db = self.db.clone();
        blocking(move || {
            // Shared for the whole transaction (see `SharedDb`).
            let db = db.get();
            let r = db.begin_read()?;
            let meta = r.open_table(LOG_META)?;
            let last_purged: Option<LogId<NodeId>> =
                get_json(&meta, KEY_LAST_PURGED, "last purged log id")?.flatten();
            let logs = r.open_table(LOGS)?;
            let last = match logs.last()? {
                Some((_, v)) => Some(decode::<EntryLogId>("log entry", v.value())?.log_id),
                // Everything purged: the last log id is the last purged one.
                None => last_purged,
            };
            Ok(LogState {
                last_purged_log_id: last_purged,
                last_log_id: last,
            })
        })
        .await
        .map_err(sto(ErrorSubject::Logs, ErrorVerb::Read))
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.put_meta(KEY_VOTE, *vote, ErrorSubject::Vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.get_meta(KEY_VOTE, ErrorSubject::Vote).await
    }

    /// Stored so that a restarted node re-applies what was committed before it
    /// serves reads (openraft does it at start-up).
    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        self.put_meta(KEY_COMMITTED, committed, ErrorSubject::Store)
            .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        let c: Option<Option<LogId<NodeId>>> =
            self.get_meta(KEY_COMMITTED, ErrorSubject::Store).await?;
        Ok(c.flatten())
    }

    /// Durable before the callback: the entries are written and committed (fsync)
    /// before `log_io_completed(Ok)`, and since this awaits the commit, later log
    /// IO (append, truncate, vote) can never overtake it.
    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let db = self.db.clone();
        let res = blocking(move || {
            // Shared for the whole transaction (see `SharedDb`).
            let db = db.get();
            let w = write_txn(&db)?;
            {
                let mut t = w.open_table(LOGS)?;
                for e in &entries {
                    t.insert(e.log_id.index, encode("log entry", e)?.as_slice())?;
                }
            }
            w.commit()?;
            Ok(())
        })
        .await;
        match res {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(fault) => {
                callback.log_io_completed(Err(std::io::Error::other(fault.to_string())));
                Err(sto(ErrorSubject::Logs, ErrorVerb::Write)(fault))
            }
        }
    }

    /// Deletes entries from `log_id.index` on (a conflicting suffix).
    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let db = self.db.clone();
        blocking(move || {
            // Shared for the whole transaction (see `SharedDb`).
            let db = db.get();
            let w = write_txn(&db)?;
            {
                let mut t = w.open_table(LOGS)?;
                t.retain_in(log_id.index.., |_, _| false)?;
            }
            w.commit()?;
            Ok(())
        })
        .await
        .map_err(sto(ErrorSubject::Log(log_id), ErrorVerb::Delete))
    }

    /// Deletes entries up to `log_id.index` and records `log_id` as purged, in
    /// one transaction, so the log state never shows a hole.
    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let db = self.db.clone();
        blocking(move || {
            // Shared for the whole transaction (see `SharedDb`).
            let db = db.get();
            let w = write_txn(&db)?;
            {
                let mut meta = w.open_table(LOG_META)?;
                let prev: Option<LogId<NodeId>> =
                    get_json(&meta, KEY_LAST_PURGED, "last purged log id")?.flatten();
                // The purge point only moves forward; an older one has nothing
                // left to delete.
                if prev.is_some_and(|p| p >= log_id) {
                    return Ok(());
                }
                put_json(
                    &mut meta,
                    KEY_LAST_PURGED,
                    "last purged log id",
                    &Some(log_id),
                )?;
                let mut t = w.open_table(LOGS)?;
                t.retain_in(..=log_id.index, |_, _| false)?;
            }
            w.commit()?;
            Ok(())
        })
        .await
        .map_err(sto(ErrorSubject::Log(log_id), ErrorVerb::Delete))
    }
}
