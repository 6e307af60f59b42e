//! Reconciles running target tasks with what this node owns: targets added,
//! changed (restarted with the new spec) and removed, without a restart.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{target, CollectorCtx};
use crate::config::TargetSpec;
use crate::ownership::{Owned, OwnedRx};

/// How long shutdown waits for target tasks to close their sessions.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(5);

struct Running {
    spec: TargetSpec,
    cancel: CancellationToken,
}

/// Names of the targets a reconcile touched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconciled {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    pub unchanged: Vec<String>,
}

pub struct Scheduler {
    ctx: Arc<CollectorCtx>,
    tasks: HashMap<String, Running>,
    tracker: TaskTracker,
    /// True while this node is fenced: every task keeps its session and skips its
    /// ticks (parked) until the lease is back or the task is stopped.
    parked: watch::Sender<bool>,
}

impl Scheduler {
    pub fn new(ctx: Arc<CollectorCtx>) -> Self {
        Scheduler {
            ctx,
            tasks: HashMap::new(),
            tracker: TaskTracker::new(),
            parked: watch::channel(false).0,
        }
    }

    pub fn reconcile(&mut self, owned: &Owned) -> Reconciled {
        // Parked first: no task scrapes from the moment the lease is lost.
        self.parked
            .send_if_modified(|p| std::mem::replace(p, owned.fenced) != owned.fenced);
        let mut report = Reconciled::default();
        let wanted: HashMap<&str, &TargetSpec> =
            owned.active().map(|t| (t.name.as_str(), t)).collect();
        let gone: Vec<String> = self
            .tasks
            .keys()
            .filter(|name| !wanted.contains_key(name.as_str()))
            .cloned()
            .collect();
        for name in gone {
            self.stop(&name);
            if let Ok(mut board) = self.ctx.board.write() {
                board.remove(&name);
            }
            report.removed.push(name);
        }
        // Paused targets run no task but stay visible, with who paused them and why.
        if let Ok(mut board) = self.ctx.board.write() {
            board.retain(|name, s| s.paused.is_none() || owned.paused.contains_key(name));
            for t in owned.targets.iter() {
                if let Some(p) = owned.paused.get(&t.name) {
                    board.insert(
                        t.name.clone(),
                        super::TargetStatus {
                            address: t.address.clone().unwrap_or_else(|| "local".into()),
                            transport: t.transport.as_str().into(),
                            interval: t.interval.get(),
                            paused: Some(p.clone()),
                            ..Default::default()
                        },
                    );
                }
            }
        }
        for (name, spec) in wanted {
            match self.tasks.get(name) {
                Some(r) if r.spec == *spec => report.unchanged.push(name.to_string()),
                Some(_) => {
                    self.stop(name);
                    self.start(spec, false);
                    report.changed.push(name.to_string());
                }
                None => {
                    self.start(spec, owned.gained.contains(name));
                    report.added.push(name.to_string());
                }
            }
        }
        for list in [
            &mut report.added,
            &mut report.changed,
            &mut report.removed,
            &mut report.unchanged,
        ] {
            list.sort();
        }
        report
    }

    fn start(&mut self, spec: &TargetSpec, at_once: bool) {
        let cancel = CancellationToken::new();
        self.tracker.spawn(target::run_target(
            spec.clone(),
            self.ctx.clone(),
            at_once,
            self.parked.subscribe(),
            cancel.clone(),
        ));
        self.tasks.insert(
            spec.name.clone(),
            Running {
                spec: spec.clone(),
                cancel,
            },
        );
    }

    fn stop(&mut self, name: &str) {
        if let Some(r) = self.tasks.remove(name) {
            r.cancel.cancel();
        }
    }

    /// Stops every target task and waits (bounded) for their sessions to close.
    pub async fn shutdown(&mut self) {
        let names: Vec<String> = self.tasks.keys().cloned().collect();
        for name in names {
            self.stop(&name);
        }
        self.tracker.close();
        if tokio::time::timeout(SHUTDOWN_DEADLINE, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("some target tasks did not stop within the shutdown deadline");
        }
    }
}

/// Runs the scheduler until `cancel`: reconciles on every change of what this node owns.
pub async fn run(ctx: Arc<CollectorCtx>, mut owned: OwnedRx, cancel: CancellationToken) {
    let mut scheduler = Scheduler::new(ctx);
    loop {
        let current = owned.borrow_and_update().clone();
        let r = scheduler.reconcile(&current);
        if !(r.added.is_empty() && r.changed.is_empty() && r.removed.is_empty()) {
            tracing::info!(
                spec_version = current.spec_version,
                added = ?r.added,
                changed = ?r.changed,
                removed = ?r.removed,
                "collectors reconciled"
            );
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            changed = owned.changed() => if changed.is_err() { break },
        }
    }
    scheduler.shutdown().await;
}
