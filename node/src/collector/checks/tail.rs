//! Tailing a file on the target by byte offset, with the offset kept in the store
//! so that a restart neither repeats old lines nor skips new ones. Used by the log,
//! nginx (access log) and json_state checks.
use super::parse::logtail::{self, TailPosition, TailRead};
use super::{CheckError, Env};

/// The marker the tail command prints for a file that does not exist.
const MISSING: &[u8] = b"@@herd:missing ";

pub struct Tail {
    path: String,
    /// Store metadata key of the offset.
    key: String,
    pos: Option<TailPosition>,
    max_bytes: usize,
}

/// The store (and herd) key prefix of tail positions.
const KEY_PREFIX: &str = "tail\0";

/// Whether a persisted key is a tail position (the herd keeps those too).
pub fn is_tail_key(key: &str) -> bool {
    key.starts_with(KEY_PREFIX)
}

/// The position to continue from: the node's own (committed with the events it
/// read) or the herd's (the last owner's, a batch behind at most), whichever is
/// further into the same file; for another file (rotated since), the herd's.
fn newest(local: Option<TailPosition>, herd: Option<TailPosition>) -> Option<TailPosition> {
    match (local, herd) {
        (Some(l), Some(h)) if l.inode == h.inode => Some(if l.offset >= h.offset { l } else { h }),
        (_, Some(h)) => Some(h),
        (l, None) => l,
    }
}

impl Tail {
    /// Loads the offset of `(target, check)` this node stored, or the herd's when
    /// newer ([`newest`]); none: start at the file's end.
    pub fn load(ctx: &super::RunnerCtx<'_>, check: &str, path: &str, max_bytes: usize) -> Tail {
        let key = format!("{KEY_PREFIX}{}\0{check}\0{path}", ctx.target);
        let parse = |b: Vec<u8>| serde_json::from_slice::<TailPosition>(&b).ok();
        let local = ctx.store.get_meta(&key).ok().flatten().and_then(parse);
        let herd = ctx.marks.and_then(|m| m.get(&key)).and_then(parse);
        let pos = newest(local, herd);
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
        if self.pos.is_none() && memchr::memmem::find(&out.stdout, MISSING).is_some() {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn at(inode: u64, offset: u64) -> Option<TailPosition> {
        Some(TailPosition { inode, offset })
    }

    #[test]
    fn the_position_continued_from_is_the_furthest_into_the_same_file() {
        assert_eq!(newest(None, None), None);
        assert_eq!(newest(at(7, 10), None), at(7, 10), "no herd: this node's");
        assert_eq!(newest(None, at(7, 40)), at(7, 40), "a takeover: the herd's");
        assert_eq!(
            newest(at(7, 10), at(7, 40)),
            at(7, 40),
            "a handback: the herd's, further"
        );
        assert_eq!(
            newest(at(7, 50), at(7, 40)),
            at(7, 50),
            "a restart of the owner: its own, committed with its events"
        );
        assert_eq!(
            newest(at(7, 50), at(9, 3)),
            at(9, 3),
            "rotated since: the herd's file"
        );
    }
}
