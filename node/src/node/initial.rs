//! The fleet spec given with `--fleet`: applied when the node starts.
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::cluster::FleetState;

/// How often a node waiting for its herd says so, and how long a follower leaves
/// the initial fleet spec to the leader.
const INITIAL_FLEET_PROGRESS: Duration = Duration::from_secs(5);
const INITIAL_FLEET_FOLLOWER_DELAY: Duration = Duration::from_secs(2);

/// `--fleet` on a node configured with peers: waits for the herd to form (with a
/// progress line), then applies the spec when the herd has none yet. The leader
/// applies at once; the others give it a moment first, so that nodes started
/// together with the same `--fleet` apply it once.
pub(super) async fn apply_when_in_herd(
    fleet: Arc<FleetState>,
    text: String,
    source: String,
    cancel: CancellationToken,
) {
    let cluster = fleet.cluster().clone();
    let started = Instant::now();
    let mut said = Instant::now();
    loop {
        if cluster.in_herd() && cluster.leader().is_some() {
            break;
        }
        if said.elapsed() >= INITIAL_FLEET_PROGRESS {
            said = Instant::now();
            tracing::info!(
                source = %source,
                waited_s = started.elapsed().as_secs(),
                waiting_for = %cluster.bootstrap_status(),
                "the fleet spec waits for the herd to form"
            );
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    if !cluster.is_leader() {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(INITIAL_FLEET_FOLLOWER_DELAY) => {}
        }
    }
    loop {
        if fleet.current().0 != 0 {
            return;
        }
        match fleet.apply(&text, &source).await {
            Ok((version, _)) => {
                tracing::info!(source = %source, version, "applied the initial fleet spec");
                return;
            }
            // A spec that does not validate was refused at start already; anything
            // else (no leader for a moment) is worth another try.
            Err(e) => {
                tracing::warn!(error = %e, "cannot apply the initial fleet spec yet; retrying")
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
