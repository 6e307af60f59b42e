//! A bounded set of keys that remembers insertion order: the herd's record of the
//! notifications already queued or delivered. Lookups are O(1) (every node checks
//! it for each notification it applies or is about to send); when full, the
//! oldest key is forgotten first. Stored as a plain list of keys, oldest first.
//!
//! Both halves are persistent collections: a copy of the log (the herd state is
//! copied per applied batch) shares them and costs O(1), a change O(log n). Each
//! key has a sequence number (its place since the log began, counting forgotten
//! keys): the Raft store keeps one row per key under it, so an applied change
//! writes the keys added and removes those forgotten, never the whole log.
use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(from = "VecDeque<String>")]
pub struct KeyLog {
    /// Oldest first; each key once.
    order: imbl::Vector<String>,
    /// The same keys, for lookups.
    set: imbl::HashSet<String>,
    /// Sequence number of the oldest key (`order[i]` has `first + i`).
    first: u64,
}

impl PartialEq for KeyLog {
    /// The same keys in the same order (where the numbering starts is storage).
    fn eq(&self, other: &KeyLog) -> bool {
        self.order == other.order
    }
}

impl Eq for KeyLog {}

impl KeyLog {
    pub fn contains(&self, key: &str) -> bool {
        self.set.contains(key)
    }

    /// Adds `key` unless present, then forgets the oldest keys beyond `max`.
    pub fn insert(&mut self, key: &str, max: usize) {
        if !self.set.contains(key) {
            self.set.insert(key.to_string());
            self.order.push_back(key.to_string());
        }
        while self.order.len() > max {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
                self.first += 1;
            }
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.order.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Keys, oldest first.
    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.order.iter().map(String::as_str)
    }

    /// Sequence numbers in use: `first..first + len`.
    pub fn seqs(&self) -> std::ops::Range<u64> {
        self.first..self.first + self.order.len() as u64
    }

    /// Keys with their sequence numbers from `from` on (oldest first).
    pub fn since(&self, from: u64) -> impl Iterator<Item = (u64, &str)> {
        let skip = from.saturating_sub(self.first) as usize;
        (self.first + skip as u64..).zip(self.order.iter().skip(skip).map(String::as_str))
    }

    /// A log read back from its rows, `(seq, key)` in ascending `seq` (contiguous
    /// as written; a key listed twice is kept once).
    pub fn from_rows(rows: impl IntoIterator<Item = (u64, String)>) -> KeyLog {
        let mut log = KeyLog::default();
        let mut rows = rows.into_iter().peekable();
        if let Some((seq, _)) = rows.peek() {
            log.first = *seq;
        }
        for (_, k) in rows {
            log.insert(&k, usize::MAX);
        }
        log
    }
}

impl From<VecDeque<String>> for KeyLog {
    /// A stored list; a key listed twice is kept once, at its first place.
    fn from(list: VecDeque<String>) -> KeyLog {
        let mut log = KeyLog::default();
        for k in &list {
            log.insert(k, usize::MAX);
        }
        log
    }
}

impl Serialize for KeyLog {
    /// The keys, oldest first (no copy of the log is made).
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.order.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_each_key_once_and_forgets_the_oldest_first() {
        let mut log = KeyLog::default();
        for k in ["a", "b", "a", "c", "d"] {
            log.insert(k, 3);
        }
        assert_eq!(log.iter().collect::<Vec<_>>(), ["b", "c", "d"]);
        assert!(!log.contains("a") && log.contains("b") && log.contains("d"));
        assert_eq!(log.len(), 3);
    }

    #[test]
    fn stored_as_a_list_and_read_back_with_its_index() {
        let mut log = KeyLog::default();
        log.insert("x", 10);
        log.insert("y", 10);
        let json = serde_json::to_string(&log).expect("serialize");
        assert_eq!(json, r#"["x","y"]"#);
        let back: KeyLog = serde_json::from_str(r#"["x","y","x"]"#).expect("deserialize");
        assert_eq!(back, log);
        assert!(back.contains("y"));
    }

    #[test]
    fn sequence_numbers_count_forgotten_keys_and_come_back_from_rows() {
        let mut log = KeyLog::default();
        for k in ["a", "b", "c", "b", "d"] {
            log.insert(k, 3);
        }
        // a=0 forgotten; b=1, c=2, d=3 (the second "b" is no new key).
        assert_eq!(log.seqs(), 1..4);
        assert_eq!(log.since(2).collect::<Vec<_>>(), [(2, "c"), (3, "d")]);
        assert_eq!(log.since(0).count(), 3);
        let back = KeyLog::from_rows(log.since(0).map(|(s, k)| (s, k.to_string())));
        assert_eq!(back, log);
        assert_eq!(back.seqs(), 1..4);
        assert!(back.contains("c") && !back.contains("a"));
    }
}
