//! The parts of a running node, in the order they started, and how each stops.
//! A part is either tasks that end when the part's token is cancelled, or a step
//! (flush the store, stop Raft, close the store). `stop` takes them in reverse
//! order, each within its own deadline: a task still running at its deadline is
//! named and aborted, a step that fails or overruns is named, and the caller gets
//! the whole list.
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

type Step = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

enum Stop {
    Tasks(CancellationToken, Vec<(&'static str, JoinHandle<()>)>),
    Step(Step),
}

struct Part {
    name: &'static str,
    deadline: Duration,
    stop: Stop,
}

/// What did not go as planned while stopping.
#[derive(Debug, Default)]
pub struct StopReport {
    /// Tasks aborted at their part's deadline, as "part/task".
    pub aborted: Vec<String>,
    /// Steps that failed or overran, with why.
    pub failed: Vec<String>,
}

impl StopReport {
    pub fn clean(&self) -> bool {
        self.aborted.is_empty() && self.failed.is_empty()
    }
}

/// The node's task tracker: parts in start order.
#[derive(Default)]
pub struct Parts {
    list: Vec<Part>,
}

impl Parts {
    /// Starts a part made of tasks; returns the token they end on. Spawn its tasks
    /// with [`Parts::spawn`] before starting the next part.
    pub fn start(&mut self, name: &'static str, deadline: Duration) -> CancellationToken {
        let token = CancellationToken::new();
        self.list.push(Part {
            name,
            deadline,
            stop: Stop::Tasks(token.clone(), Vec::new()),
        });
        token
    }

    /// Spawns a task of the part started last.
    pub fn spawn(&mut self, task: &'static str, fut: impl Future<Output = ()> + Send + 'static) {
        let handle = tokio::spawn(fut);
        match self.list.last_mut() {
            Some(Part {
                stop: Stop::Tasks(_, tasks),
                ..
            }) => tasks.push((task, handle)),
            // A task needs a part of tasks to stop with: the wiring is wrong, and
            // the task must not run unowned.
            _ => {
                handle.abort();
                tracing::error!(task, "a task was spawned outside a part; aborted");
            }
        }
    }

    /// A part that is one step when the node stops (it has nothing running).
    pub fn on_stop(
        &mut self,
        name: &'static str,
        deadline: Duration,
        step: impl Future<Output = Result<(), String>> + Send + 'static,
    ) {
        self.list.push(Part {
            name,
            deadline,
            stop: Stop::Step(Box::pin(step)),
        });
    }

    /// Stops every part, last started first.
    pub async fn stop(mut self) -> StopReport {
        let mut report = StopReport::default();
        while let Some(part) = self.list.pop() {
            let until = tokio::time::Instant::now() + part.deadline;
            tracing::info!(part = part.name, "stopping");
            match part.stop {
                Stop::Tasks(token, tasks) => {
                    token.cancel();
                    for (task, mut handle) in tasks {
                        match tokio::time::timeout_at(until, &mut handle).await {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) if e.is_panic() => report
                                .failed
                                .push(format!("{}/{task}: panicked", part.name)),
                            Ok(Err(_)) => {}
                            Err(_) => {
                                handle.abort();
                                report.aborted.push(format!("{}/{task}", part.name));
                            }
                        }
                    }
                }
                Stop::Step(step) => match tokio::time::timeout_at(until, step).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => report.failed.push(format!("{}: {e}", part.name)),
                    Err(_) => report.failed.push(format!(
                        "{}: did not finish within {:?}",
                        part.name, part.deadline
                    )),
                },
            }
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[tokio::test]
    async fn stops_in_reverse_order_and_names_what_did_not_stop() {
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut parts = Parts::default();
        let o = order.clone();
        parts.on_stop("first", Duration::from_secs(1), async move {
            o.lock().unwrap().push("first");
            Ok(())
        });
        let token = parts.start("second", Duration::from_secs(1));
        let o = order.clone();
        parts.spawn("polite", async move {
            token.cancelled().await;
            o.lock().unwrap().push("second");
        });
        parts.start("third", Duration::from_millis(50));
        parts.spawn("stuck", std::future::pending());
        parts.on_stop("fourth", Duration::from_secs(1), async {
            Err("disk full".to_string())
        });
        let report = parts.stop().await;
        assert_eq!(*order.lock().unwrap(), ["second", "first"]);
        assert_eq!(report.aborted, ["third/stuck"]);
        assert_eq!(report.failed, ["fourth: disk full"]);
        assert!(!report.clean());
    }

    #[tokio::test]
    async fn a_step_that_overruns_is_named() {
        let mut parts = Parts::default();
        parts.on_stop("slow", Duration::from_millis(20), std::future::pending());
        let report = parts.stop().await;
        assert_eq!(report.failed.len(), 1);
        assert!(
            report.failed[0].starts_with("slow: did not finish"),
            "{report:?}"
        );
    }
}
