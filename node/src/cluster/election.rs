//! Elections: started by this module alone, only when they can succeed, by the one
//! voter that will win.
//!
//! openraft 0.9 has no pre-vote: a follower that stops hearing its leader raises
//! its term and stands, whether or not the others lost the leader too. A node cut
//! off alone (or from the leader only, or one way) keeps raising its term, and
//! when the network heals its higher term deposes a leader that was fine: an
//! election in a healthy herd, and writes stalled meanwhile. So openraft's own
//! election timer is off (`enable_elect = false`, see `ClusterConfig`) and each
//! node checks every heartbeat whether to stand:
//! - it is a voter, following or a candidate whose election failed, and no
//!   AppendEntries came for `election_max + 2 × heartbeat` (openraft's leader
//!   lease, `election_max`, has run out everywhere: the others grant a vote now);
//! - **pre-vote**: the voters it hears (beats within that wait) that *also* say,
//!   in their beats, that they have not heard a leader for `election_min` make,
//!   with itself, a majority of the voters. A voter still hearing the leader keeps
//!   it from standing, so nobody raises a term while a working leader exists;
//! - of those, it has the longest log (beats carry each node's last log index),
//!   then the lowest id: a vote for a shorter log is refused, and two candidates
//!   in one term split the vote.
//!
//! After a start that did not make it leader it tries again after the same wait
//! plus a random part of `election_max - election_min` (two nodes that both
//! believed themselves first do not collide forever).
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
/// the module's text), until `cancel`. Also tells `liveness` whether this node
/// leads (its beats say so).
pub async fn run(
    raft: Raft<TypeConfig>,
    liveness: Arc<Liveness>,
    heartbeat: Duration,
    election_min: Duration,
    election_max: Duration,
    cancel: CancellationToken,
) {
    let me = liveness.id();
    let wait = election_max + heartbeat * 2;
    let spread = election_max.saturating_sub(election_min);
    let mut tick = tokio::time::interval(heartbeat.max(MIN_TICK));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_tick = Instant::now();
    let mut observing_since = Instant::now();
    // The last start, and how long after it the next may come.
    let mut last_start: Option<(Instant, Duration)> = None;
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
        liveness.set_leading(state == ServerState::Leader);
        if state == ServerState::Leader {
            // A leader hears itself: one that steps down (another stood) measures
            // the silence from then, not from the last beat of a leader before it
            // (it stood at once, 55 s "silent", in the storm bench: two elections).
            liveness.leader_heard_now();
        }
        if !matches!(state, ServerState::Follower | ServerState::Candidate) || !voters.contains(&me)
        {
            continue;
        }
        let due = liveness.leader_silent_for() >= wait
            && now.saturating_duration_since(observing_since) >= wait
            && last_start.is_none_or(|(t, pause)| now.saturating_duration_since(t) >= pause);
        if !due {
            continue;
        }
        let heard: Vec<(NodeId, u64)> = voters
            .iter()
            .filter(|v| {
                **v != me
                    && Some(**v) != leader
                    && liveness.silent_for(**v) < wait
                    && liveness.lost_leader(**v, election_min)
            })
            .map(|v| (*v, liveness.log_index_of(*v)))
            .collect();
        if !first_to_stand(me, log, &heard, voters.len()) {
            continue;
        }
        tracing::info!(
            leader = ?leader,
            silent_ms = liveness.leader_silent_for().as_millis() as u64,
            last_log_index = log,
            "the leader is silent past its lease for a majority of the voters; this node stands for election"
        );
        let jitter = spread.mul_f64(rand::random::<f64>());
        last_start = Some((now, wait + jitter));
        if let Err(e) = raft.trigger().elect().await {
            tracing::warn!(error = %e, "cannot start an election");
        }
    }
}

/// Whether this node (`me`, with last log index `log`) should stand: with the
/// voters it hears that lost the leader too (`heard`: id and last log index,
/// without itself and the silent leader) it makes a majority of `voters` voters, and none of them has a longer
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
    fn a_voter_that_hears_no_majority_does_not_stand() {
        assert!(!first_to_stand(2, 10, &[], 3));
        assert!(!first_to_stand(2, 10, &[(3, 1)], 5));
        // Two voters, the other one the silent leader: nobody can win.
        assert!(!first_to_stand(2, 10, &[], 2));
    }
}
