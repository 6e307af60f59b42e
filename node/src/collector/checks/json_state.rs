//! json_state: JSON-lines records from a file on the target (tailed), or from
//! `docker logs` of containers selected by label, deep-merged into a state tree per
//! (target, check): objects merge recursively, later scalars win, `null` deletes a
//! key; keys untouched for `expire_after` are removed. The tree is readable with
//! `herd state TARGET [PATH]`; declared numeric paths become samples.
use std::sync::{Arc, PoisonError};

use serde_json::Value;

use super::parse::jsonmerge::{parse_lines, StateTree};
use super::parse::logtail::DEFAULT_MAX_BYTES;
use super::tail::Tail;
use super::{CheckError, CheckSetupError, Env, Outcome, Status};
use crate::collector::StateBoard;
use crate::config::checks::JsonStateCheck;
use crate::model::text::shell_quote;
use crate::model::{EventKind, Measurement};
use crate::store::Store;

/// Output of one `docker logs` round at most.
const MAX_DOCKER_OUTPUT: usize = 8 * 1024 * 1024;

enum Source {
    File(Tail),
    /// Containers with this label; logs since the target's time of the last read.
    Docker {
        label: String,
        since: Option<i64>,
    },
}

pub struct JsonStateState {
    source: Source,
    tree: StateTree,
    board: StateBoard,
    target: String,
    check: String,
    /// Store key of the persisted tree.
    key: String,
    /// Distinguishes this runner's board entry from its successor's.
    instance: u64,
    /// Why the saved tree could not be restored, told once by the first run.
    load_failure: Option<String>,
}

/// Source of runner instance numbers.
static INSTANCES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl JsonStateState {
    pub fn new(
        c: &JsonStateCheck,
        name: &str,
        ctx: &super::RunnerCtx<'_>,
    ) -> Result<Self, CheckSetupError> {
        let (store, target, board) = (ctx.store, ctx.target, ctx.states.clone());
        let source = match (&c.path, &c.docker_label) {
            (Some(path), None) => Source::File(Tail::load(ctx, name, path, DEFAULT_MAX_BYTES)),
            (None, Some(label)) => Source::Docker {
                label: label.clone(),
                since: None,
            },
            _ => return Err(CheckSetupError::JsonStateSource),
        };
        let key = format!("state\0{target}\0{name}");
        let (tree, load_failure) = match load_tree(store, &key) {
            Ok(tree) => (tree, None),
            Err(why) => {
                let source = match (&c.path, &c.docker_label) {
                    (Some(path), _) => format!("file {path:?}"),
                    (_, label) => format!("docker label {:?}", label.as_deref().unwrap_or("")),
                };
                tracing::error!(
                    target_name = %target,
                    check = %name,
                    %source,
                    error = %why,
                    "json_state could not restore its saved tree; it starts empty"
                );
                let message = format!("json_state {name} ({source}): {why}; the tree starts empty");
                (StateTree::new(), Some(message))
            }
        };
        let s = JsonStateState {
            source,
            tree,
            board,
            target: target.to_string(),
            check: name.to_string(),
            key,
            instance: INSTANCES.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            load_failure,
        };
        s.publish();
        Ok(s)
    }

    // The board's lock is taken poisoned too: every write replaces whole entries,
    // so a writer that panicked left no half-made tree, and a tree must not look
    // absent because some other thread panicked.
    fn publish(&self) {
        let mut b = self.board.write().unwrap_or_else(PoisonError::into_inner);
        b.entry(self.target.clone()).or_default().insert(
            self.check.clone(),
            (self.instance, Arc::new(self.tree.root().clone())),
        );
    }
}

impl Drop for JsonStateState {
    fn drop(&mut self) {
        let mut b = self.board.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(t) = b.get_mut(&self.target) {
            if t.get(&self.check).is_some_and(|(i, _)| *i == self.instance) {
                t.remove(&self.check);
            }
            if t.is_empty() {
                b.remove(&self.target);
            }
        }
    }
}

/// The persisted tree under `key` (empty when none was saved), or why it cannot
/// be restored. Restored leaves count as touched now: expiry restarts after a
/// restart.
fn load_tree(store: &Store, key: &str) -> Result<StateTree, String> {
    let mut tree = StateTree::new();
    let saved = match store.get_meta(key) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return Ok(tree),
        Err(e) => return Err(format!("cannot read the saved tree: {e}")),
    };
    let value = serde_json::from_slice::<Value>(&saved)
        .map_err(|e| format!("the saved tree is not JSON: {e}"))?;
    tree.merge(&value, crate::model::now_ms())
        .map_err(|e| format!("the saved tree cannot be restored: {e}"))?;
    Ok(tree)
}

/// `docker logs` of every container with `label`, since a target-side time; the
/// first line is the target's clock for the next round.
fn docker_command(label: &str, since: Option<i64>) -> String {
    let label = shell_quote(label);
    match since {
        // The first round only learns the clock: old records are not replayed.
        None => "echo \"@@now $(date +%s)\"".into(),
        Some(s) => format!(
            "echo \"@@now $(date +%s)\"; for c in $(docker ps -q --filter label={label}); do docker logs --since {s} \"$c\" 2>&1; done"
        ),
    }
}

pub async fn run(
    state: &mut JsonStateState,
    c: &JsonStateCheck,
    env: &Env<'_>,
) -> Result<Outcome, CheckError> {
    let mut outcome = Outcome::default();
    if let Some(why) = state.load_failure.take() {
        outcome.events.push((EventKind::CheckError, why));
    }
    let bytes = match &mut state.source {
        Source::File(tail) => {
            let read = tail.read(env).await?;
            outcome.persist.extend(tail.advance(&read));
            read.lines.join("\n").into_bytes()
        }
        Source::Docker { label, since } => {
            let out = env
                .exec(&docker_command(label, *since), MAX_DOCKER_OUTPUT)
                .await?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let (first, rest) = text.split_once('\n').unwrap_or((text.as_str(), ""));
            let now = first
                .strip_prefix("@@now ")
                .and_then(|n| n.trim().parse::<i64>().ok())
                .ok_or_else(|| {
                    CheckError::Failed(super::with_stderr(
                        "json_state: the target did not print its time".into(),
                        &out,
                    ))
                })?;
            *since = Some(now);
            rest.as_bytes().to_vec()
        }
    };
    let (records, mut problems) = parse_lines(&bytes);
    let mut merged = 0usize;
    for r in &records {
        match state.tree.merge(r, env.ts_ms) {
            Ok(()) => merged += 1,
            Err(e) => problems.push(format!("record rejected: {e}")),
        }
    }
    let expired = match c.expire_after {
        Some(d) => state
            .tree
            .expire(env.ts_ms.saturating_sub(d.get().as_millis() as i64)),
        None => 0,
    };
    if merged > 0 || expired > 0 {
        state.publish();
        if let Ok(v) = serde_json::to_vec(state.tree.root()) {
            outcome.persist.push((state.key.clone(), v));
        }
    }
    for m in &c.metrics {
        let value = match state.tree.get(&m.path) {
            Some(Value::Number(n)) => n.as_f64(),
            Some(Value::Bool(b)) => Some(if *b { 1.0 } else { 0.0 }),
            _ => None,
        };
        if let Some(v) = value {
            outcome.measurements.push(Measurement::new(&m.metric, v));
        }
    }
    outcome
        .measurements
        .push(Measurement::new("state.records", merged as f64));
    outcome.measurements.push(Measurement::new(
        "state.leaves",
        state.tree.leaf_count() as f64,
    ));
    outcome.status = Some(if problems.is_empty() {
        Status::Ok
    } else {
        Status::Warning
    });
    let mut detail = format!("{merged} records merged, {} keys", state.tree.leaf_count());
    if !problems.is_empty() {
        detail.push_str(&format!(
            "; {} problems: {}",
            problems.len(),
            problems
                .iter()
                .take(3)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    outcome.detail = Some(detail);
    Ok(outcome)
}

/// The tree of a target (one check: its tree; several: keyed by check name), at
/// an optional dotted path.
pub fn lookup(board: &StateBoard, target: &str, path: &str) -> Option<Value> {
    let b = board.read().unwrap_or_else(PoisonError::into_inner);
    let trees = b.get(target)?;
    let root = if trees.len() == 1 {
        Value::clone(&trees.values().next()?.1)
    } else {
        Value::Object(
            trees
                .iter()
                .map(|(k, (_, v))| (k.clone(), Value::clone(v)))
                .collect(),
        )
    };
    if path.is_empty() {
        return Some(root);
    }
    let mut tree = StateTree::new();
    tree.merge(&root, 0).ok()?;
    tree.get(path).cloned()
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, RwLock};
    use std::time::Duration;

    use super::super::RunnerCtx;
    use super::*;
    use crate::store::StoreOptions;

    fn store(dir: &std::path::Path) -> Store {
        Store::open(
            &dir.join("store"),
            StoreOptions {
                retention: Duration::from_secs(3600),
                flush_interval: Duration::from_millis(100),
                chunk_samples: 120,
                ..Default::default()
            },
        )
        .unwrap()
    }

    fn check(path: &str) -> JsonStateCheck {
        toml::from_str(&format!("path = {path:?}")).unwrap()
    }

    #[tokio::test]
    async fn a_saved_tree_that_does_not_load_is_reported_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let board: StateBoard = Arc::new(RwLock::new(Default::default()));
        let c = check("/var/log/app.jsonl");
        store
            .put_meta("state\0web-1\0app", b"{not json".to_vec())
            .await
            .unwrap();
        let mut s =
            JsonStateState::new(&c, "app", &RunnerCtx::for_tests(&store, "web-1", &board)).unwrap();
        let why = s
            .load_failure
            .take()
            .expect("the failure is kept for the first run");
        assert!(why.contains("\"/var/log/app.jsonl\""), "{why}");
        assert!(why.contains("not JSON"), "{why}");
        assert_eq!(s.tree.leaf_count(), 0);
        assert_eq!(
            lookup(&board, "web-1", ""),
            Some(serde_json::json!({})),
            "the empty tree is still published"
        );

        // A tree saved as it should be loads without a word.
        store
            .put_meta("state\0web-1\0good", br#"{"a":{"b":1}}"#.to_vec())
            .await
            .unwrap();
        let good = JsonStateState::new(&c, "good", &RunnerCtx::for_tests(&store, "web-1", &board))
            .unwrap();
        assert!(good.load_failure.is_none());
        assert_eq!(good.tree.leaf_count(), 1);
    }

    #[tokio::test]
    async fn a_poisoned_board_still_shows_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let board: StateBoard = Arc::new(RwLock::new(Default::default()));
        store
            .put_meta("state\0web-1\0app", br#"{"up":true}"#.to_vec())
            .await
            .unwrap();
        let s = JsonStateState::new(
            &check("/x"),
            "app",
            &RunnerCtx::for_tests(&store, "web-1", &board),
        )
        .unwrap();
        let poisoner = board.clone();
        let _ = std::thread::spawn(move || {
            let _guard = poisoner.write().unwrap();
            panic!("poison the board");
        })
        .join();
        assert!(board.is_poisoned());
        assert_eq!(lookup(&board, "web-1", "up"), Some(serde_json::json!(true)));
        drop(s);
        assert_eq!(lookup(&board, "web-1", ""), None, "dropped runner leaves");
    }
}
