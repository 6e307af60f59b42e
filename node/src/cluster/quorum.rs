//! Losing the herd's quorum is said out loud. A node that has not heard from a
//! majority of the voters for `failover_after` (its lease lapsed a while ago) is on
//! the minority side of a partition, or the rest of the herd is gone: it scrapes
//! and notifies nothing, and if the rest is gone, nobody does. So each such node,
//! on its own and once per loss: logs an error, records a `quorum_lost` event,
//! shows it in `herd status`, and sends one notice straight to the channels of
//! `routes.quorum_loss` (not through its outbox, which is fenced). When it hears a
//! majority again it logs and records `quorum_regained`.
//!
//! A herd can lose quorum everywhere at once (two of three nodes die): then only
//! the survivors' notices say so. Watch the herd from outside too (an uptime check
//! on each node's gRPC port, or a dead-man on `herd_*` metrics).
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::FleetState;
use crate::model::{
    now_ms, Alert, AlertState, Event, EventKind, Notification, NotifyKind, Severity, MACHINE_PREFIX,
};
use crate::notify::worker::Notifier;
use crate::store::Store;

/// When a node counts as without quorum, and how often it looks.
#[derive(Debug, Clone, Copy)]
pub struct QuorumConfig {
    pub lease: Duration,
    pub failover_after: Duration,
    pub every: Duration,
}

/// Runs until `cancel`.
pub async fn watch(
    fleet: Arc<FleetState>,
    notifier: Arc<Notifier>,
    store: Store,
    cfg: QuorumConfig,
    cancel: CancellationToken,
) {
    let node = fleet.cluster().clone();
    let me = node.id();
    let mut lost_since: Option<(Instant, i64)> = None;
    let mut reported = false;
    let mut tick = tokio::time::interval(cfg.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let voters = node.voters();
        let valid =
            voters.len() < 2 || !node.in_herd() || node.liveness().lease_valid(&voters, cfg.lease);
        if valid {
            if reported {
                let message = format!("node {me} hears a majority of the herd's voters again");
                tracing::info!(node = me, "{message}");
                record(&store, me, EventKind::QuorumRegained, message).await;
                node.set_quorum_lost(String::new());
            }
            lost_since = None;
            reported = false;
            continue;
        }
        let (since, since_ms) = *lost_since.get_or_insert((Instant::now(), now_ms()));
        if reported || since.elapsed() < cfg.failover_after {
            continue;
        }
        reported = true;
        let heard = node.liveness().heard_voters(&voters, cfg.lease);
        let message = format!(
            "node {me} lost the herd's quorum: it hears {heard} of {} voters (a majority is {}) \
             for {}s; it scrapes and notifies nothing until it hears a majority again",
            voters.len(),
            voters.len() / 2 + 1,
            since.elapsed().as_secs()
        );
        tracing::error!(node = me, heard, voters = voters.len(), "{message}");
        record(&store, me, EventKind::QuorumLost, message.clone()).await;
        node.set_quorum_lost(format!(
            "since {}: {message}",
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + Duration::from_millis(since_ms.max(0) as u64)
            )
        ));
        let (_, spec) = fleet.current();
        for channel in spec.routes.quorum_loss.clone() {
            let n = notice(me, &channel, since_ms, &message);
            let notifier = notifier.clone();
            tokio::spawn(async move {
                match notifier.send_direct(n).await {
                    Ok(()) => tracing::info!(channel = %channel, "quorum loss notice sent"),
                    Err(e) => {
                        tracing::error!(channel = %channel, error = %e, "cannot send the quorum loss notice")
                    }
                }
            });
        }
    }
}

async fn record(store: &Store, me: u64, kind: EventKind, message: String) {
    store
        .event(Event {
            ts_ms: now_ms(),
            target: format!("{MACHINE_PREFIX}{me}"),
            kind,
            message,
        })
        .await;
}

/// The notice of node `me`'s quorum loss that began at `since_ms`, for `channel`.
fn notice(me: u64, channel: &str, since_ms: i64, message: &str) -> Notification {
    let id = format!("quorum-lost-{me}");
    Notification {
        idempotency_key: format!("{id}:{since_ms}:{channel}"),
        channel: channel.to_string(),
        kind: NotifyKind::Firing,
        alert: Alert {
            id,
            rule: "quorum_lost".into(),
            target: format!("{MACHINE_PREFIX}{me}"),
            labels: Default::default(),
            severity: Severity::Critical,
            state: AlertState::Firing,
            since_ms,
            active_since_ms: since_ms,
            value: String::new(),
            summary: format!("herd node {me} lost the herd's quorum"),
            description: message.to_string(),
            transitions: 1,
            acked_by: None,
            flapping: false,
        },
        ts_ms: since_ms,
    }
}
