//! Elections started as soon as they can succeed, by the one voter that will win.
//!
//! openraft 0.9 lets a follower stand for election only after the leader's lease
//! (`election_max` since the leader's last AppendEntries) *plus* a random
//! election timeout (`election_min`..`election_max`), plus `2 × election_max` more
//! when it has seen a longer log than its own: with the defaults a dead leader is
//! replaced after 1.5–4 s. The other voters refuse a vote only while that lease
//! runs, so an election started just after it is won at once — if one voter
//! starts it, and that voter has the longest log (a vote for a shorter log is
//! refused, and two candidates in one term split the vote).
//!
//! So each node checks every heartbeat: when it is a voter following, no
//! AppendEntries came for `election_max + 2 × heartbeat`, it hears a majority of
//! the voters (without the silent leader) and it is the first of the voters it
//! hears by longest log (beats carry each node's last log index), then lowest id,
//! it starts the election itself. Nothing else changes: this is the election
//! openraft would start a moment later, and openraft's own timer stays as it is
//! for every case this does not cover (a voter that hears no majority, a wrong
//! guess of the longest log).
//!
//! A process that was not running (paused) for longer than that wait observes
//! afresh before it starts anything: the silence it finds on resuming is its own.
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::{Raft, ServerState};
use tokio_util::sync::CancellationToken;

use super::liveness::Liveness;
use super::types::{NodeId, TypeConfig};

/// Shortest time between two checks.
const MIN_TICK: Duration = Duration::from_millis(20);

/// Checks every `heartbeat` whether this node should start an election now (see
/// the module's text), until `cancel`.
pub async fn run(
    raft: Raft<TypeConfig>,
    liveness: Arc<Liveness>,
    heartbeat: Duration,
    election_max: Duration,
    cancel: CancellationToken,
) {
    let me = liveness.id();
    let wait = election_max + heartbeat * 2;
    let mut tick = tokio::time::interval(heartbeat.max(MIN_TICK));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_tick = Instant::now();
    let mut observing_since = Instant::now();
    let mut last_start: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        if now.saturating_duration_since(last_tick) > wait {
            observing_since = now;
        }
        last_tick = now;
        // Copied out at once: no watch borrow is held across anything else.
        let (state, leader, voters, log) = {
            let m = raft.metrics();
            let m = m.borrow();
            let voters: BTreeSet<NodeId> = m.membership_config.membership().voter_ids().collect();
            (
                m.state,
                m.current_leader,
                voters,
                m.last_log_index.unwrap_or(0),
            )
        };
        liveness.set_log_index(log);
        if state != ServerState::Follower || !voters.contains(&me) {
            continue;
        }
        let due = liveness.leader_silent_for() >= wait
            && now.saturating_duration_since(observing_since) >= wait
            && last_start.is_none_or(|t| now.saturating_duration_since(t) >= wait);
        if !due {
            continue;
        }
        let heard: Vec<(NodeId, u64)> = voters
            .iter()
            .filter(|v| **v != me && Some(**v) != leader && liveness.silent_for(**v) < wait)
            .map(|v| (*v, liveness.log_index_of(*v)))
            .collect();
        if !first_to_stand(me, log, &heard, voters.len()) {
            continue;
        }
        tracing::info!(
            leader = ?leader,
            silent_ms = liveness.leader_silent_for().as_millis() as u64,
            last_log_index = log,
            "the leader is silent past its lease; this node stands for election"
        );
        last_start = Some(now);
        if let Err(e) = raft.trigger().elect().await {
            tracing::warn!(error = %e, "cannot start an election");
        }
    }
}

/// Whether this node (`me`, with last log index `log`) should stand: with the
/// voters it hears (`heard`: id and last log index, without itself and the silent
/// leader) it makes a majority of `voters` voters, and none of them has a longer
/// log, or as long a log and a lower id.
fn first_to_stand(me: NodeId, log: u64, heard: &[(NodeId, u64)], voters: usize) -> bool {
    if (heard.len() + 1) * 2 <= voters {
        return false;
    }
    heard
        .iter()
        .all(|(id, their)| *their < log || (*their == log && *id > me))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_voter_with_the_longest_log_then_the_lowest_id_stands() {
        // Three voters, the leader (1) silent: 2 and 3 remain.
        assert!(first_to_stand(2, 10, &[(3, 10)], 3));
        assert!(!first_to_stand(3, 10, &[(2, 10)], 3));
        assert!(first_to_stand(3, 11, &[(2, 10)], 3));
        assert!(!first_to_stand(2, 10, &[(3, 11)], 3));
        // Five voters, the leader silent: 2 of the other 3 heard makes a majority.
        assert!(first_to_stand(4, 7, &[(2, 6), (5, 7)], 5));
        assert!(!first_to_stand(4, 7, &[(2, 8), (5, 7)], 5));
    }

    #[test]
    fn a_voter_that_hears_no_majority_leaves_it_to_openraft() {
        assert!(!first_to_stand(2, 10, &[], 3));
        assert!(!first_to_stand(2, 10, &[(3, 1)], 5));
        // Two voters, the other one the silent leader: nobody can win.
        assert!(!first_to_stand(2, 10, &[], 2));
    }
}
