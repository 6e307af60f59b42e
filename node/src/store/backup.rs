//! Backups of a node's store, and restoring one.
//!
//! A backup is a redb file like the store itself: every table of the store copied
//! from **one read transaction** (a consistent cut: each commit is in it whole or
//! not at all), plus a table `herd_backup` that says what it is (format, node, herd,
//! when, how many rows). The read transaction does not stop the writer: samples
//! keep being committed while the copy runs (redb keeps the pages the copy reads).
//! The copy is committed in batches into the new file, so memory does not grow
//! with the store.
//!
//! Restoring writes the backup's tables (without `herd_backup`) as `herd.redb` into
//! an empty data dir. The herd's Raft state (`raft.redb`: its vote and log) is not
//! in a backup and is not restored on purpose: a node given back an old vote could
//! vote twice in one term. A restored node rejoins its herd as itself (by its
//! `[cluster] peers`, or `herd cluster join`) and gets the herd's state from the
//! leader; having samples of a herd, it never makes a herd of its own.
use std::ops::Bound;
use std::path::Path;

use redb::{
    Database, Durability, Key, ReadOnlyDatabase, ReadTransaction, ReadableDatabase,
    TableDefinition, TableError, Value,
};
use serde::{Deserialize, Serialize};

use super::remote::REMOTE_QUEUE;
use super::tables::{
    ALERTS, CHUNKS, EVENTS, META, OUTBOX, ROLLUPS, SENT, SERIES_INDEX, TRANSITIONS,
};
use super::{Store, FILE_NAME};

/// What a backup file says of itself (one row, key [`META_KEY`], JSON).
pub const BACKUP_TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("herd_backup");
const META_KEY: &str = "backup";

/// The layout of the store's tables this build writes and reads. A store or backup
/// of a newer format is refused whole (see `tables::init`).
pub const STORE_FORMAT: u32 = 1;

/// What adds the herd's tables to a backup: called with the backup file and a
/// progress callback (rows so far); returns the rows it copied.
pub type HerdPart<'a> = dyn FnMut(&Database, &mut dyn FnMut(u64)) -> Result<u64, redb::Error> + 'a;

/// Rows copied per commit into the new file.
const BATCH_ROWS: usize = 20_000;

/// What a backup holds, as written in it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackupMeta {
    /// [`STORE_FORMAT`] of the node that wrote it.
    pub format: u32,
    pub node_id: u64,
    /// The herd the node was in ("" when none).
    pub herd_id: String,
    /// When the read transaction began (Unix ms).
    pub created_ms: i64,
    /// Rows copied, all tables.
    pub rows: u64,
    /// The `herd` version that wrote it.
    pub herd_version: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("{0}")]
    Usage(String),
}

fn file_err(path: &Path, message: impl std::fmt::Display) -> BackupError {
    BackupError::File {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// Copies `def` from `src` into the database `dst`, in commits of [`BATCH_ROWS`]
/// rows; calls `progress` with the rows copied so far (all tables) after each.
pub fn copy_table<K: Key + 'static, V: Value + 'static>(
    src: &ReadTransaction,
    dst: &Database,
    def: TableDefinition<K, V>,
    rows: &mut u64,
    progress: &mut dyn FnMut(u64),
) -> Result<(), redb::Error> {
    let table = match src.open_table(def) {
        Ok(t) => t,
        Err(TableError::TableDoesNotExist(_)) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    // The last key copied, as bytes: the next batch starts after it.
    let mut last: Option<Vec<u8>> = None;
    loop {
        let mut w = dst.begin_write()?;
        w.set_durability(Durability::None)?;
        let mut n = 0usize;
        {
            let mut out = w.open_table(def)?;
            let range = match &last {
                None => table.range::<K::SelfType<'_>>(..)?,
                Some(b) => table.range((Bound::Excluded(K::from_bytes(b)), Bound::Unbounded))?,
            };
            for entry in range {
                let (k, v) = entry?;
                out.insert(k.value(), v.value())?;
                n += 1;
                if n == BATCH_ROWS {
                    last = Some(K::as_bytes(&k.value()).as_ref().to_vec());
                    break;
                }
            }
        }
        w.commit()?;
        *rows += n as u64;
        progress(*rows);
        if n < BATCH_ROWS {
            return Ok(());
        }
    }
}

/// Every table of the store, copied from `src` into `dst`.
fn copy_all(
    src: &ReadTransaction,
    dst: &Database,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, redb::Error> {
    let mut rows = 0;
    copy_table(src, dst, META, &mut rows, progress)?;
    copy_table(src, dst, SERIES_INDEX, &mut rows, progress)?;
    copy_table(src, dst, CHUNKS, &mut rows, progress)?;
    copy_table(src, dst, ROLLUPS, &mut rows, progress)?;
    copy_table(src, dst, EVENTS, &mut rows, progress)?;
    copy_table(src, dst, ALERTS, &mut rows, progress)?;
    copy_table(src, dst, TRANSITIONS, &mut rows, progress)?;
    copy_table(src, dst, OUTBOX, &mut rows, progress)?;
    copy_table(src, dst, SENT, &mut rows, progress)?;
    copy_table(src, dst, REMOTE_QUEUE, &mut rows, progress)?;
    Ok(rows)
}

/// Makes the last commit of `db` durable (the batches were not).
pub fn seal(db: &Database) -> Result<(), redb::Error> {
    let mut w = db.begin_write()?;
    w.set_durability(Durability::Immediate)?;
    w.commit()?;
    Ok(())
}

impl Store {
    /// Writes a consistent copy of the store into the new file `out` (which must
    /// not exist), from one read transaction, then lets `herd_part` add the herd's
    /// tables (the node's Raft file) to it; calls `progress` with the rows copied
    /// so far. Blocking: run it off the async workers.
    pub fn backup_into(
        &self,
        out: &Path,
        node_id: u64,
        herd_id: &str,
        herd_part: &mut HerdPart<'_>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<BackupMeta, BackupError> {
        if out.exists() {
            return Err(file_err(out, "exists already"));
        }
        let src = self
            .db
            .get()
            .begin_read()
            .map_err(|e| file_err(&self.path, e))?;
        let created_ms = crate::model::now_ms();
        let dst = Database::create(out).map_err(|e| file_err(out, e))?;
        let store_rows = copy_all(&src, &dst, progress).map_err(|e| file_err(out, e))?;
        drop(src);
        let herd_rows =
            herd_part(&dst, &mut |n| progress(store_rows + n)).map_err(|e| file_err(out, e))?;
        let rows = store_rows + herd_rows;
        let meta = BackupMeta {
            format: STORE_FORMAT,
            node_id,
            herd_id: herd_id.to_string(),
            created_ms,
            rows,
            herd_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        let json = serde_json::to_vec(&meta).map_err(|e| file_err(out, e))?;
        let w = dst.begin_write().map_err(|e| file_err(out, e))?;
        {
            let mut t = w.open_table(BACKUP_TABLE).map_err(|e| file_err(out, e))?;
            t.insert(META_KEY, json.as_slice())
                .map_err(|e| file_err(out, e))?;
        }
        w.commit().map_err(|e| file_err(out, e))?;
        seal(&dst).map_err(|e| file_err(out, e))?;
        Ok(meta)
    }
}

/// Opens a backup file read-only (a backup is never written to once made).
pub fn open_backup(path: &Path) -> Result<ReadOnlyDatabase, BackupError> {
    ReadOnlyDatabase::open(path).map_err(|e| file_err(path, format!("not a Herd backup: {e}")))
}

/// Reads what a backup file says of itself; refuses a file that is no backup, or
/// one of a newer format.
pub fn read_backup(path: &Path) -> Result<BackupMeta, BackupError> {
    let db = open_backup(path)?;
    let r = db.begin_read().map_err(|e| file_err(path, e))?;
    let t = r.open_table(BACKUP_TABLE).map_err(|_| {
        file_err(
            path,
            "not a Herd backup (no herd_backup table; is it a store file?)",
        )
    })?;
    let raw = t
        .get(META_KEY)
        .map_err(|e| file_err(path, e))?
        .ok_or_else(|| file_err(path, "not a Herd backup (herd_backup holds no description)"))?;
    let meta: BackupMeta = serde_json::from_slice(raw.value())
        .map_err(|e| file_err(path, format!("not a Herd backup: {e}")))?;
    if meta.format > STORE_FORMAT {
        return Err(file_err(
            path,
            format!(
                "written by herd {} in store format {}; this herd ({}) reads format {} and older: restore it with a newer herd",
                meta.herd_version,
                meta.format,
                env!("CARGO_PKG_VERSION"),
                STORE_FORMAT
            ),
        ));
    }
    Ok(meta)
}

/// Restores the backup `path` as the store of the data dir `data_dir`, which must
/// hold no store and none of the files `node_files` names (the herd's state: a
/// node's files are never overwritten); calls `progress` with rows copied.
/// Returns what the backup said of itself.
pub fn restore(
    path: &Path,
    data_dir: &Path,
    node_files: &[&str],
    progress: &mut dyn FnMut(u64),
) -> Result<BackupMeta, BackupError> {
    let meta = read_backup(path)?;
    for name in std::iter::once(&FILE_NAME).chain(node_files) {
        let p = data_dir.join(name);
        if p.exists() {
            return Err(BackupError::Usage(format!(
                "{}: exists: {} holds a node's data already; restore into an empty data dir (move it away first)",
                p.display(),
                data_dir.display()
            )));
        }
    }
    std::fs::create_dir_all(data_dir).map_err(|e| file_err(data_dir, e))?;
    let target = data_dir.join(FILE_NAME);
    let partial = data_dir.join(format!("{FILE_NAME}.restoring"));
    let _ = std::fs::remove_file(&partial);
    {
        let src_db = open_backup(path)?;
        let src = src_db.begin_read().map_err(|e| file_err(path, e))?;
        let dst = Database::create(&partial).map_err(|e| file_err(&partial, e))?;
        copy_all(&src, &dst, progress).map_err(|e| file_err(&partial, e))?;
        seal(&dst).map_err(|e| file_err(&partial, e))?;
    }
    std::fs::rename(&partial, &target).map_err(|e| file_err(&target, e))?;
    Ok(meta)
}

impl Store {
    /// Where a backup being made for a client is written: beside the store (same
    /// filesystem, same permissions), a name no node file has.
    pub fn backup_scratch(&self) -> std::path::PathBuf {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        dir.join(format!(".backup-{:016x}.redb", rand::random::<u64>()))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::{StoreError, StoreOptions};

    fn options() -> StoreOptions {
        StoreOptions {
            retention: Duration::from_secs(3600),
            flush_interval: Duration::from_millis(20),
            chunk_samples: 100,
            ..Default::default()
        }
    }

    /// Writes `format` into the store file's META as a newer build would.
    fn stamp_format(path: &Path, format: u32) {
        let db = Database::create(path).unwrap();
        let w = db.begin_write().unwrap();
        {
            let mut t = w.open_table(META).unwrap();
            t.insert(
                super::super::tables::META_FORMAT,
                format.to_le_bytes().as_slice(),
            )
            .unwrap();
        }
        w.commit().unwrap();
    }

    #[test]
    fn a_store_of_a_newer_format_is_refused_whole_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), options()).unwrap();
        store.close().unwrap();
        drop(store);
        let path = dir.path().join(FILE_NAME);
        stamp_format(&path, STORE_FORMAT + 1);
        let before = std::fs::read(&path).unwrap();
        match Store::open(dir.path(), options()) {
            Err(e @ StoreError::NewerFormat { .. }) => {
                let m = e.to_string();
                assert!(
                    m.contains("store format 2") && m.contains("reads format 1"),
                    "{m}"
                );
            }
            Err(e) => panic!("refused for the wrong reason: {e}"),
            Ok(_) => panic!("a newer store format was opened"),
        }
        assert_eq!(std::fs::read(&path).unwrap(), before, "nothing was changed");
    }

    #[test]
    fn a_new_store_says_its_format() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), options()).unwrap();
        assert_eq!(
            super::super::tables::format_of(&*store.db.get()).unwrap(),
            Some(STORE_FORMAT)
        );
    }

    #[test]
    fn a_backup_of_a_newer_format_is_refused_with_both_versions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.backup");
        let db = Database::create(&path).unwrap();
        let meta = BackupMeta {
            format: STORE_FORMAT + 1,
            node_id: 3,
            herd_id: "h".into(),
            created_ms: 1,
            rows: 0,
            herd_version: "9.0.0".into(),
        };
        let w = db.begin_write().unwrap();
        {
            let mut t = w.open_table(BACKUP_TABLE).unwrap();
            t.insert(META_KEY, serde_json::to_vec(&meta).unwrap().as_slice())
                .unwrap();
        }
        w.commit().unwrap();
        drop(db);
        let e = read_backup(&path).unwrap_err().to_string();
        assert!(
            e.contains("herd 9.0.0")
                && e.contains("store format 2")
                && e.contains("format 1 and older"),
            "{e}"
        );
        let dst = dir.path().join("data");
        assert!(restore(&path, &dst, &[], &mut |_| {}).is_err());
        assert!(!dst.join(FILE_NAME).exists(), "nothing restored");
    }
}
