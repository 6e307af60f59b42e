//! Tailing a file on the target by byte offset, with the offset kept in the store
//! so that a restart neither repeats old lines nor skips new ones. Used by the log,
//! nginx (access log) and json_state checks.
use super::parse::logtail::{self, TailPosition, TailRead};
use super::{CheckError, Env};
use crate::store::Store;

/// The marker the tail command prints for a file that does not exist.
const MISSING: &[u8] = b"@@herd:missing ";

pub struct Tail {
    path: String,
    /// Store metadata key of the offset.
    key: String,
    pos: Option<TailPosition>,
    max_bytes: usize,
}

impl Tail {
    /// Loads the stored offset of `(target, check)`; none: start at the file's end.
    pub fn load(store: &Store, target: &str, check: &str, path: &str, max_bytes: usize) -> Tail {
        let key = format!("tail\0{target}\0{check}\0{path}");
        let pos = store
            .get_meta(&key)
            .ok()
            .flatten()
            .and_then(|b| serde_json::from_slice::<TailPosition>(&b).ok());
        Tail {
            path: path.to_string(),
            key,
            pos,
            max_bytes,
        }
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// Reads what was appended since the last read. The new offset is kept in
    /// memory; `persist` gives the store write that must commit with the events.
    pub async fn read(&mut self, env: &Env<'_>) -> Result<TailRead, CheckError> {
        let cmd = logtail::command(&self.path, self.pos.as_ref(), self.max_bytes);
        let out = env.exec(&cmd, logtail::max_output(self.max_bytes)).await?;
        if self.pos.is_none() && out.stdout.windows(MISSING.len()).any(|w| w == MISSING) {
            // The file does not exist yet: when it appears, everything in it is
            // new, so read it from its start (inode 0 never matches a real file).
            self.pos = Some(TailPosition {
                inode: 0,
                offset: 0,
            });
        }
        let read = logtail::parse(&out.stdout, self.pos.as_ref(), self.max_bytes)
            .map_err(|e| CheckError::Failed(super::with_stderr(e, &out)))?;
        Ok(read)
    }

    /// Adopts the position after `read` and returns the metadata write to store
    /// with this scrape's events (None when unchanged).
    pub fn advance(&mut self, read: &TailRead) -> Option<(String, Vec<u8>)> {
        if self.pos.as_ref() == Some(&read.new_position) {
            return None;
        }
        self.pos = Some(read.new_position.clone());
        serde_json::to_vec(&read.new_position)
            .ok()
            .map(|v| (self.key.clone(), v))
    }
}
