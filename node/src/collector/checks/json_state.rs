//! json_state: JSON-lines records from a file on the target (tailed), or from
//! `docker logs` of containers selected by label, deep-merged into a state tree per
//! (target, check): objects merge recursively, later scalars win, `null` deletes a
//! key; keys untouched for `expire_after` are removed. The tree is readable with
//! `herd state TARGET [PATH]`; declared numeric paths become samples.
use serde_json::Value;

use super::parse::jsonmerge::{parse_lines, StateTree};
use super::parse::logtail::DEFAULT_MAX_BYTES;
use super::tail::Tail;
use super::{CheckError, Env, Outcome, Status};
use crate::collector::StateBoard;
use crate::config::checks::JsonStateCheck;
use crate::model::text::shell_quote;
use crate::model::Measurement;
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
}

/// Source of runner instance numbers.
static INSTANCES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl JsonStateState {
    pub fn new(
        c: &JsonStateCheck,
        name: &str,
        store: &Store,
        target: &str,
        board: StateBoard,
    ) -> Result<Self, String> {
        let source = match (&c.path, &c.docker_label) {
            (Some(path), None) => {
                Source::File(Tail::load(store, target, name, path, DEFAULT_MAX_BYTES))
            }
            (None, Some(label)) => Source::Docker {
                label: label.clone(),
                since: None,
            },
            _ => return Err("json_state: set exactly one of path and docker_label".into()),
        };
        let key = format!("state\0{target}\0{name}");
        let mut tree = StateTree::new();
        if let Some(saved) = store
            .get_meta(&key)
            .ok()
            .flatten()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        {
            // Restored leaves count as touched now: expiry restarts after a restart.
            let _ = tree.merge(&saved, crate::model::now_ms());
        }
        let s = JsonStateState {
            source,
            tree,
            board,
            target: target.to_string(),
            check: name.to_string(),
            key,
            instance: INSTANCES.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        };
        s.publish();
        Ok(s)
    }

    fn publish(&self) {
        if let Ok(mut b) = self.board.write() {
            b.entry(self.target.clone()).or_default().insert(
                self.check.clone(),
                (self.instance, self.tree.root().clone()),
            );
        }
    }
}

impl Drop for JsonStateState {
    fn drop(&mut self) {
        if let Ok(mut b) = self.board.write() {
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
    let b = board.read().ok()?;
    let trees = b.get(target)?;
    let root = if trees.len() == 1 {
        trees.values().next()?.1.clone()
    } else {
        Value::Object(
            trees
                .iter()
                .map(|(k, (_, v))| (k.clone(), v.clone()))
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
