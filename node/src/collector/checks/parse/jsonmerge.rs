//! JSON-lines records deep-merged into one state tree per target.
//!
//! A target (or a script on it) prints JSON objects, one per line, each
//! describing part of its state: `{"queue": {"depth": 4}}`, later
//! `{"queue": {"workers": 2}}`. [`StateTree`] merges them into one object
//! and remembers when each leaf was last set, so that parts nobody reports
//! any more can be expired.
//!
//! Decisions worth knowing:
//! - **Merge rules** follow JSON Merge Patch (RFC 7386): objects merge key
//!   by key, arrays and scalars replace, `null` deletes the key. An object
//!   merged onto a scalar replaces it.
//! - **Leaves** are the non-object values (scalars and whole arrays: an
//!   array is replaced as a unit, so it is touched as a unit). Objects are
//!   never stored empty: a key whose object loses its last leaf (by `null`,
//!   expiry, or because a record set it to `{}`) is removed, so expiry
//!   leaves no empty shells behind.
//! - **Caps** are checked before anything changes: a record nested deeper
//!   than [`MAX_DEPTH`] or one that would make the tree hold more than
//!   [`MAX_LEAVES`] leaves is rejected whole, and the tree stays as it was.
//!   A half-applied record would be a state no one reported.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// Deepest nesting of objects and arrays accepted, counting the record
/// itself as depth 1.
pub const MAX_DEPTH: usize = 32;
/// Most leaves one tree may hold.
pub const MAX_LEAVES: usize = 100_000;
/// Longest line [`parse_lines`] parses; longer ones are reported as problems.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;
/// Problems [`parse_lines`] lists one by one; further ones are summed up in
/// a last entry, so garbage output cannot produce an unbounded report.
pub const MAX_PROBLEMS: usize = 100;

/// Why a record was not merged. The tree is unchanged in every case.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    #[error("record is not a JSON object but {0}")]
    NotAnObject(&'static str),
    #[error("record nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("record would make the state hold {0} leaves, more than {MAX_LEAVES}")]
    TooManyLeaves(usize),
}

/// Key path of a leaf, from the root.
type LeafPath = Vec<String>;

/// A merged JSON state with the last-touched time of each leaf.
#[derive(Debug, Clone, PartialEq)]
pub struct StateTree {
    root: Value,
    /// Last time each leaf was set, by path. A BTreeMap keeps the leaves of
    /// one subtree adjacent, so a replaced subtree's entries are one range.
    touched: BTreeMap<LeafPath, i64>,
}

impl Default for StateTree {
    fn default() -> Self {
        StateTree {
            root: Value::Object(Map::new()),
            touched: BTreeMap::new(),
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Nesting depth of a value: 0 for a scalar, 1 + the deepest child for an
/// array or object. Stops counting once past `MAX_DEPTH`, so the walk is
/// bounded whatever serde_json let through.
fn depth(v: &Value, limit: usize) -> usize {
    if !matches!(v, Value::Array(_) | Value::Object(_)) {
        return 0;
    }
    if limit == 0 {
        // A container beyond the limit: deeper than allowed, stop here.
        return 1;
    }
    let below = match v {
        Value::Array(a) => a.iter().map(|c| depth(c, limit - 1)).max(),
        Value::Object(o) => o.values().map(|c| depth(c, limit - 1)).max(),
        _ => None,
    };
    1 + below.unwrap_or(0)
}

/// Leaves a stored value accounts for: 1 for a scalar or array, the sum of
/// its children for an object, 0 when absent.
fn leaves(v: Option<&Value>) -> usize {
    match v {
        None => 0,
        Some(Value::Object(o)) => o.values().map(|c| leaves(Some(c))).sum(),
        Some(_) => 1,
    }
}

/// How many leaves the tree would gain (or, negative, lose) by merging
/// `patch` onto `target`, without changing anything.
fn leaf_delta(target: Option<&Value>, patch: &Value) -> i64 {
    match patch {
        Value::Null => -(leaves(target) as i64),
        Value::Object(p) => {
            let t = match target {
                Some(Value::Object(t)) => Some(t),
                _ => None,
            };
            // An object replacing a leaf removes that leaf first.
            let replaced = if t.is_none() {
                leaves(target) as i64
            } else {
                0
            };
            let merged: i64 = p
                .iter()
                .map(|(k, pv)| leaf_delta(t.and_then(|t| t.get(k)), pv))
                .sum();
            merged - replaced
        }
        _ => 1 - leaves(target) as i64,
    }
}

impl StateTree {
    pub fn new() -> Self {
        StateTree::default()
    }

    /// The merged state: always an object.
    pub fn root(&self) -> &Value {
        &self.root
    }

    /// Leaves held.
    pub fn leaf_count(&self) -> usize {
        self.touched.len()
    }

    /// Merges one record (a JSON object) at `now_ms`; every leaf it sets is
    /// touched, even when its value did not change.
    pub fn merge(&mut self, record: &Value, now_ms: i64) -> Result<(), MergeError> {
        let Value::Object(patch) = record else {
            return Err(MergeError::NotAnObject(kind(record)));
        };
        if depth(record, MAX_DEPTH) > MAX_DEPTH {
            return Err(MergeError::TooDeep);
        }
        let after = self.touched.len() as i64 + leaf_delta(Some(&self.root), record);
        if after > MAX_LEAVES as i64 {
            return Err(MergeError::TooManyLeaves(after.max(0) as usize));
        }
        if let Value::Object(root) = &mut self.root {
            let mut path = Vec::new();
            merge_object(root, patch, &mut path, &mut self.touched, now_ms);
        }
        Ok(())
    }

    /// Removes the leaves last touched before `older_than_ms`, and the
    /// objects that empties. Returns how many leaves were removed.
    pub fn expire(&mut self, older_than_ms: i64) -> usize {
        let old: Vec<LeafPath> = self
            .touched
            .iter()
            .filter(|(_, &t)| t < older_than_ms)
            .map(|(p, _)| p.clone())
            .collect();
        for path in &old {
            self.touched.remove(path);
            if let Value::Object(root) = &mut self.root {
                remove_path(root, path);
            }
        }
        old.len()
    }

    /// The value at a dotted path: `a.b.c` walks object keys, a numeric
    /// segment indexes an array (`list.0.name`). The empty path is the root.
    /// Keys containing dots cannot be addressed this way; read `root()`.
    pub fn get(&self, path: &str) -> Option<&Value> {
        if path.is_empty() {
            return Some(&self.root);
        }
        path.split('.').try_fold(&self.root, |v, seg| match v {
            Value::Object(o) => o.get(seg),
            Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get(i)),
            _ => None,
        })
    }

    /// When the leaf at a dotted path (object keys only) was last set.
    #[cfg(test)]
    pub fn touched_at(&self, path: &str) -> Option<i64> {
        let key: LeafPath = path.split('.').map(str::to_string).collect();
        self.touched.get(&key).copied()
    }
}

/// Drops the touched entries of `path` and everything under it.
fn forget_subtree(touched: &mut BTreeMap<LeafPath, i64>, path: &LeafPath) {
    let under: Vec<LeafPath> = touched
        .range(path.clone()..)
        .take_while(|(p, _)| p.starts_with(path))
        .map(|(p, _)| p.clone())
        .collect();
    for p in under {
        touched.remove(&p);
    }
}

fn merge_object(
    target: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    path: &mut LeafPath,
    touched: &mut BTreeMap<LeafPath, i64>,
    now_ms: i64,
) {
    for (key, pv) in patch {
        path.push(key.clone());
        match pv {
            Value::Null => {
                if target.remove(key).is_some() {
                    forget_subtree(touched, path);
                }
            }
            Value::Object(p) => {
                if !matches!(target.get(key), Some(Value::Object(_))) {
                    // A leaf (or nothing) becomes an object.
                    if target.remove(key).is_some() {
                        forget_subtree(touched, path);
                    }
                    target.insert(key.clone(), Value::Object(Map::new()));
                }
                let now_empty = match target.get_mut(key) {
                    Some(Value::Object(child)) => {
                        merge_object(child, p, path, touched, now_ms);
                        child.is_empty()
                    }
                    _ => false,
                };
                if now_empty {
                    target.remove(key);
                }
            }
            leaf => {
                if let Some(Value::Object(_)) = target.insert(key.clone(), leaf.clone()) {
                    forget_subtree(touched, path);
                }
                touched.insert(path.clone(), now_ms);
            }
        }
        path.pop();
    }
}

/// Removes the leaf at `path` and every object that leaves empty.
fn remove_path(map: &mut Map<String, Value>, path: &[String]) {
    let Some((key, rest)) = path.split_first() else {
        return;
    };
    if rest.is_empty() {
        map.remove(key);
        return;
    }
    let now_empty = match map.get_mut(key) {
        Some(Value::Object(child)) => {
            remove_path(child, rest);
            child.is_empty()
        }
        _ => false,
    };
    if now_empty {
        map.remove(key);
    }
}

/// Parses JSON lines: one object per line, blank lines skipped, bytes
/// decoded lossily. Returns the records and the problems, each
/// `line N: why` (N from 1).
pub fn parse_lines(bytes: &[u8]) -> (Vec<Value>, Vec<String>) {
    let mut records = Vec::new();
    let mut problems = Vec::new();
    let mut more_problems = 0usize;
    let mut problem = |p: String| {
        if problems.len() < MAX_PROBLEMS {
            problems.push(p);
        } else {
            more_problems += 1;
        }
    };
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let n = i + 1;
        if raw.len() > MAX_LINE_BYTES {
            problem(format!("line {n}: longer than {MAX_LINE_BYTES} bytes"));
            continue;
        }
        let text = String::from_utf8_lossy(raw);
        // A byte order mark is what some Windows tools start a file with.
        let line = text.trim_start_matches('\u{feff}').trim();
        if line.is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(line) {
            Ok(v @ Value::Object(_)) => records.push(v),
            Ok(v) => problem(format!(
                "line {n}: expected a JSON object, found {}",
                kind(&v)
            )),
            Err(e) => problem(format!("line {n}: {e}")),
        }
    }
    if more_problems > 0 {
        problems.push(format!("... and {more_problems} more problems"));
    }
    (records, problems)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use serde_json::json;

    const RECORDS: &[u8] = include_bytes!("fixtures/jsonmerge/records.jsonl");
    const BROKEN: &[u8] = include_bytes!("fixtures/jsonmerge/broken.jsonl");

    /// Checks the bookkeeping against the tree itself: every leaf has a
    /// time, every time has a leaf, and no object is empty.
    fn assert_consistent(t: &StateTree) {
        fn walk(v: &Value, path: &mut LeafPath, out: &mut Vec<LeafPath>, top: bool) {
            match v {
                Value::Object(o) => {
                    assert!(top || !o.is_empty(), "empty object at {path:?}");
                    for (k, c) in o {
                        path.push(k.clone());
                        walk(c, path, out, false);
                        path.pop();
                    }
                }
                _ => out.push(path.clone()),
            }
        }
        let mut leaves = Vec::new();
        walk(&t.root, &mut Vec::new(), &mut leaves, true);
        let known: Vec<LeafPath> = t.touched.keys().cloned().collect();
        assert_eq!(leaves, known);
    }

    #[test]
    fn merge_rules() {
        let mut t = StateTree::new();
        t.merge(
            &json!({"queue": {"depth": 4, "name": "jobs"}, "tags": [1, 2]}),
            1,
        )
        .unwrap();
        t.merge(&json!({"queue": {"workers": 2}, "tags": [3]}), 2)
            .unwrap();
        assert_eq!(
            t.root(),
            &json!({"queue": {"depth": 4, "name": "jobs", "workers": 2}, "tags": [3]})
        );
        assert_eq!(t.touched_at("queue.depth"), Some(1));
        assert_eq!(t.touched_at("tags"), Some(2));
        assert_eq!(t.leaf_count(), 4);

        // null deletes, and an emptied object goes with its last key.
        t.merge(
            &json!({"queue": {"depth": null, "name": null, "workers": null}}),
            3,
        )
        .unwrap();
        assert_eq!(t.root(), &json!({"tags": [3]}));
        // Deleting what is not there is fine.
        t.merge(&json!({"nope": null, "x": {"y": null}}), 3)
            .unwrap();
        assert_eq!(t.root(), &json!({"tags": [3]}));

        // An object replaces a scalar, a scalar replaces an object.
        t.merge(&json!({"tags": {"a": true}}), 4).unwrap();
        assert_eq!(t.get("tags.a"), Some(&json!(true)));
        assert_eq!(t.touched_at("tags"), None);
        t.merge(&json!({"tags": "flat"}), 5).unwrap();
        assert_eq!(t.root(), &json!({"tags": "flat"}));
        assert_eq!(t.touched_at("tags.a"), None);
        // `{}` adds nothing, and replacing a scalar with it leaves nothing.
        t.merge(&json!({"e": {}}), 6).unwrap();
        assert_eq!(t.get("e"), None);
        t.merge(&json!({"tags": {}}), 6).unwrap();
        assert_eq!(t.root(), &json!({}));
        // Nulls inside arrays are values.
        t.merge(&json!({"arr": [null, {"k": null}]}), 7).unwrap();
        assert_eq!(t.get("arr.1"), Some(&json!({"k": null})));
        assert_consistent(&t);

        for bad in [json!([1]), json!("s"), json!(null), json!(3)] {
            let e = t.merge(&bad, 8).unwrap_err();
            assert!(matches!(e, MergeError::NotAnObject(_)), "{e}");
        }
        assert_eq!(
            t.merge(&json!(1.5), 8).unwrap_err().to_string(),
            "record is not a JSON object but a number"
        );
    }

    #[test]
    fn get_paths() {
        let mut t = StateTree::new();
        t.merge(
            &json!({"a": {"b": {"c": 1}}, "list": [{"name": "x"}, [5, 6]], "d.e": 2}),
            0,
        )
        .unwrap();
        assert_eq!(t.get("a.b.c"), Some(&json!(1)));
        assert_eq!(t.get("a.b"), Some(&json!({"c": 1})));
        assert_eq!(t.get("list.0.name"), Some(&json!("x")));
        assert_eq!(t.get("list.1.1"), Some(&json!(6)));
        assert_eq!(t.get("list.2"), None);
        assert_eq!(t.get("list.x"), None);
        assert_eq!(t.get("a.b.c.d"), None);
        assert_eq!(t.get("a..b"), None);
        assert_eq!(t.get("d.e"), None, "keys with dots are not addressable");
        assert_eq!(t.get(""), Some(t.root()));
    }

    #[test]
    fn expire_removes_old_leaves_and_empty_objects() {
        let mut t = StateTree::new();
        t.merge(
            &json!({"svc": {"a": {"up": 1}, "b": {"up": 1}}, "host": "h1"}),
            1_000,
        )
        .unwrap();
        t.merge(&json!({"svc": {"b": {"up": 0}}}), 5_000).unwrap();
        assert_eq!(t.expire(1_000), 0, "touched at the threshold is kept");
        assert_eq!(t.expire(2_000), 2);
        assert_eq!(t.root(), &json!({"svc": {"b": {"up": 0}}}));
        assert_consistent(&t);
        assert_eq!(t.expire(i64::MAX), 1);
        assert_eq!(t.root(), &json!({}));
        assert_eq!(t.leaf_count(), 0);
    }

    #[test]
    fn caps_reject_whole_records() {
        let mut t = StateTree::new();
        let mut deep = json!(1);
        for _ in 0..MAX_DEPTH {
            deep = json!({ "k": deep });
        }
        t.merge(&deep, 0).unwrap();
        let too_deep = json!({ "k": deep });
        assert_eq!(t.merge(&too_deep, 0), Err(MergeError::TooDeep));
        let mut arrays = json!(1);
        for _ in 0..MAX_DEPTH {
            arrays = json!([arrays]);
        }
        assert_eq!(
            t.merge(&json!({ "a": arrays }), 0),
            Err(MergeError::TooDeep)
        );

        let mut t = StateTree::new();
        let many: Map<String, Value> = (0..MAX_LEAVES - 1)
            .map(|i| (format!("k{i}"), json!(i)))
            .collect();
        t.merge(&Value::Object(many), 1).unwrap();
        let before = t.clone();
        let e = t
            .merge(&json!({"x": 1, "y": 2, "k0": {"a": 1, "b": 2}}), 2)
            .unwrap_err();
        assert_eq!(e, MergeError::TooManyLeaves(MAX_LEAVES + 2));
        assert_eq!(t, before, "a rejected record changes nothing");
        // Replacing leaves does not grow the tree; deleting makes room.
        t.merge(&json!({"k1": "replaced", "z": 1}), 3).unwrap();
        assert_eq!(t.leaf_count(), MAX_LEAVES);
        t.merge(&json!({"k2": null, "k3": null, "new": {"a": 1, "b": 2}}), 4)
            .unwrap();
        assert_eq!(t.leaf_count(), MAX_LEAVES);
    }

    #[test]
    fn parse_lines_fixture() {
        let (records, problems) = parse_lines(RECORDS);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(records.len(), 5);
        let mut t = StateTree::new();
        for (i, r) in records.iter().enumerate() {
            t.merge(r, i as i64).unwrap();
        }
        assert_eq!(t.get("disk.sda.busy_pct"), Some(&json!(12.5)));
        assert_eq!(t.get("service.nginx"), None, "deleted by a later record");
        assert_eq!(t.get("service.redis.up"), Some(&json!(true)));
        assert_eq!(t.get("version"), Some(&json!("1.4.2")));
        assert_eq!(t.get("ports.1"), Some(&json!(443)));
        assert_consistent(&t);
    }

    #[test]
    fn parse_lines_problems() {
        let (records, problems) = parse_lines(BROKEN);
        assert_eq!(records.len(), 3, "{records:?}");
        assert_eq!(
            problems
                .iter()
                .map(|p| p.split(':').next().unwrap())
                .collect::<Vec<_>>(),
            vec!["line 2", "line 3", "line 5", "line 6", "line 8", "line 9"],
            "{problems:?}"
        );
        assert!(problems[0].contains("EOF"), "{}", problems[0]);
        assert!(problems[2].contains("found an array"), "{}", problems[2]);
        assert!(problems[3].contains("found a string"), "{}", problems[3]);
        // The invalid UTF-8 inside a string survives as U+FFFD.
        assert!(records
            .iter()
            .any(|r| r.get("name") == Some(&json!("bad \u{fffd} byte"))));

        let mut long = b"{\"k\": \"".to_vec();
        long.extend(std::iter::repeat_n(b'x', MAX_LINE_BYTES));
        long.extend_from_slice(b"\"}\n{\"ok\": 1}\n");
        let (records, problems) = parse_lines(&long);
        assert_eq!(records, vec![json!({"ok": 1})]);
        assert_eq!(
            problems,
            vec![format!("line 1: longer than {MAX_LINE_BYTES} bytes")]
        );

        let garbage = "x\n".repeat(MAX_PROBLEMS + 5);
        let (_, problems) = parse_lines(garbage.as_bytes());
        assert_eq!(problems.len(), MAX_PROBLEMS + 1);
        assert_eq!(problems.last().unwrap(), "... and 5 more problems");
    }

    #[test]
    fn random_records_never_panic_and_stay_consistent() {
        let mut rng = StdRng::seed_from_u64(3);
        let keys = ["a", "b", "c", "0", "1"];
        fn random_value(rng: &mut StdRng, keys: &[&str], depth: usize) -> Value {
            match rng.random_range(0..if depth > 4 { 4 } else { 6 }) {
                0 => Value::Null,
                1 => json!(rng.random_range(-5..5)),
                2 => json!(rng.random_bool(0.5)),
                3 => json!("s"),
                4 => Value::Array(
                    (0..rng.random_range(0..3))
                        .map(|_| random_value(rng, keys, depth + 1))
                        .collect(),
                ),
                _ => Value::Object(
                    (0..rng.random_range(0..4))
                        .map(|_| {
                            (
                                keys[rng.random_range(0..keys.len())].to_string(),
                                random_value(rng, keys, depth + 1),
                            )
                        })
                        .collect(),
                ),
            }
        }
        let mut t = StateTree::new();
        for now in 0..3000 {
            let v = random_value(&mut rng, &keys, 0);
            let _ = t.merge(&v, now);
            if now % 50 == 0 {
                t.expire(now - 100);
            }
            for p in ["a", "a.b", "a.0", "b.1.c", "c.c.c"] {
                let _ = t.get(p);
            }
        }
        assert_consistent(&t);

        let alphabet: &[u8] = b"{}[]\":,0123 nulltruefalse\\\n\xff\xef\xbb\xbf";
        for _ in 0..3000 {
            let bytes: Vec<u8> = (0..rng.random_range(0..60))
                .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                .collect();
            let (records, problems) = parse_lines(&bytes);
            assert!(problems.len() <= MAX_PROBLEMS + 1);
            for r in &records {
                t.merge(r, 0).unwrap();
            }
        }
        assert_consistent(&t);
    }
}
