//! A bounded set of keys that remembers insertion order: the herd's record of the
//! notifications already queued or delivered. Lookups are O(1) (every node checks
//! it for each notification it applies or is about to send); when full, the
//! oldest key is forgotten first. Stored as a plain list of keys, oldest first.
use std::collections::{HashSet, VecDeque};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(from = "VecDeque<String>")]
pub struct KeyLog {
    /// Oldest first; each key once.
    order: VecDeque<String>,
    /// The same keys, for lookups.
    set: HashSet<String>,
}

impl KeyLog {
    pub fn contains(&self, key: &str) -> bool {
        self.set.contains(key)
    }

    /// Adds `key` unless present, then forgets the oldest keys beyond `max`.
    pub fn insert(&mut self, key: &str, max: usize) {
        if self.set.insert(key.to_string()) {
            self.order.push_back(key.to_string());
        }
        while self.order.len() > max {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
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
        self.order.serialize(s)
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
}
