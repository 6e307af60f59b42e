//! Who this node has heard from, and when: the failure detector of the herd and
//! the lease that fences a node cut off from the majority.
//!
//! Every node beats every member (voters and learners) each `beat_interval` over
//! the Raft service. A beat answered proves both ends alive and connected, so
//! both record it for failure detection: the sender when the answer comes, the
//! receiver when the beat arrives. The leader declares a member down when it has
//! not heard from it for `failover_after`.
//!
//! The lease is causal: a node holds a valid lease while a majority of the voters
//! (itself included) answered a beat it *sent* within `lease`, counted from the
//! moment it sent the beat, never from when an answer or a beat arrived. A process
//! paused (SIGSTOP, a long stall) finds, when it resumes, only answers to beats it
//! sent before the pause: they credit the time before the pause, so it holds no
//! lease until a beat sent after the pause is answered. With `lease` shorter than
//! `failover_after`, a node that is cut off stops acting for its targets before
//! the leader gives them to others.
//!
//! Beats also carry the ownership version each side has applied. A node that
//! hears of a newer map than the one it applied (it was cut off, and the herd moved
//! on without it) holds no valid lease until it has applied that map: regaining a
//! majority is not enough to act on a stale map.
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::BasicNode;
use tokio_util::sync::CancellationToken;

use super::network::Peers;
use super::types::NodeId;

/// A member counts at the command level its beats say only while heard from
/// within this (or [`LEVEL_HEARD_BEATS`] beats, when they are slower); a member
/// silent longer counts as level 1 (it may come back on an older build, which
/// must be able to read everything committed meanwhile).
pub const LEVEL_HEARD_WITHIN: Duration = Duration::from_secs(5);

/// Beats a member may miss before its level stops counting, when the beat
/// interval is so long that [`LEVEL_HEARD_WITHIN`] would span fewer of them.
pub const LEVEL_HEARD_BEATS: u32 = 25;

/// When this node last heard from each peer.
#[derive(Debug)]
pub struct Liveness {
    id: NodeId,
    started: Instant,
    /// Last sign of life of each peer, the ownership version it had applied and
    /// the one it acted on (`u64::MAX`: none, it was fenced; 0: not said).
    heard: Mutex<HashMap<NodeId, (Instant, u64, u64)>>,
    /// When this node sent the latest beat each peer answered as a member: what
    /// the lease counts.
    acked: Mutex<HashMap<NodeId, Instant>>,
    /// The ownership version this node has applied.
    applied: AtomicU64,
    /// Whether this node is fenced (acts on no map), as its owner view last said.
    fenced: std::sync::atomic::AtomicBool,
    /// The index of the last entry of this node's Raft log (sent in beats).
    log_index: AtomicU64,
    /// The last log index each peer's latest beat said it had.
    peer_logs: Mutex<HashMap<NodeId, u64>>,
    /// The herd command level each peer's last beat said its build applies.
    peer_levels: Mutex<HashMap<NodeId, u32>>,
    /// How long a member's level counts after its last beat (ms).
    level_within_ms: AtomicU64,
    /// When this node last took an AppendEntries call from a leader (openraft's
    /// own clock of the leader's lease starts there too).
    leader_heard: Mutex<Option<Instant>>,
    /// This process's random id and its beats so far (sent in beats).
    boot: u64,
    seq: AtomicU64,
    /// The newest beat taken from each peer: its process and sequence number.
    last_beat: Mutex<HashMap<NodeId, (u64, u64)>>,
    /// The round trip of the newest beat each peer answered (for /metrics).
    rtt: Mutex<HashMap<NodeId, Duration>>,
    /// Whether this node leads (as its Raft state last said; sent in beats).
    leading: std::sync::atomic::AtomicBool,
    /// What each peer's latest beat said of its leader's silence, and when it came
    /// (None: the peer does not say).
    peer_leader_silence: Mutex<HashMap<NodeId, (Instant, Option<Duration>)>>,
}

/// What a beat says of its sender.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BeatState {
    pub applied: u64,
    pub acting: u64,
    pub log_index: u64,
    pub boot: u64,
    pub seq: u64,
    /// How long since this node last heard a leader; 0 when it leads.
    pub leader_silent_ms: u64,
}

impl Liveness {
    pub fn new(id: NodeId) -> Arc<Liveness> {
        Arc::new(Liveness {
            id,
            started: Instant::now(),
            heard: Mutex::new(HashMap::new()),
            acked: Mutex::new(HashMap::new()),
            applied: AtomicU64::new(0),
            fenced: std::sync::atomic::AtomicBool::new(true),
            log_index: AtomicU64::new(0),
            peer_logs: Mutex::new(HashMap::new()),
            peer_levels: Mutex::new(HashMap::new()),
            level_within_ms: AtomicU64::new(LEVEL_HEARD_WITHIN.as_millis() as u64),
            leader_heard: Mutex::new(None),
            boot: rand::random::<u64>().max(1),
            seq: AtomicU64::new(0),
            last_beat: Mutex::new(HashMap::new()),
            rtt: Mutex::new(HashMap::new()),
            leading: std::sync::atomic::AtomicBool::new(false),
            peer_leader_silence: Mutex::new(HashMap::new()),
        })
    }

    /// What the next beat says: this node's versions, log and a new sequence number.
    pub fn beat_state(&self) -> BeatState {
        BeatState {
            applied: self.applied(),
            acting: self.acting(),
            log_index: self.log_index(),
            boot: self.boot,
            seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1,
            leader_silent_ms: if self.leading.load(Ordering::Relaxed) {
                0
            } else {
                self.leader_silent_for().as_millis() as u64
            },
        }
    }

    /// Records whether this node leads now (its beats then say it hears a leader).
    pub fn set_leading(&self, leading: bool) {
        self.leading.store(leading, Ordering::Relaxed);
    }

    /// Records what `node`'s beat said of how long it has not heard a leader.
    pub fn heard_leader_silence(&self, node: NodeId, silent: Option<Duration>) {
        let mut m = self
            .peer_leader_silence
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        m.insert(node, (Instant::now(), silent));
    }

    /// Whether `node`, as its latest beat said, has not heard a leader for at least
    /// `at_least` by now (its silence then, plus the time since). A node that never
    /// said (it predates the field, or no beat came yet) counts as having lost it:
    /// what openraft alone would assume.
    pub fn lost_leader(&self, node: NodeId, at_least: Duration) -> bool {
        let m = self
            .peer_leader_silence
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match m.get(&node) {
            Some((at, Some(silent))) => *silent + at.elapsed() >= at_least,
            _ => true,
        }
    }

    /// Whether a beat of `node` (its process `boot`, number `seq`) is newer than
    /// every beat taken from that process so far; if so it is remembered. A beat
    /// that waited in a connection cut by a partition and came through later is
    /// not: what it says (its versions, that it is alive) is old news. A node that
    /// predates the fields (`boot` 0) is always taken.
    pub fn fresh_beat(&self, node: NodeId, boot: u64, seq: u64) -> bool {
        if boot == 0 {
            return true;
        }
        let mut last = self.last_beat.lock().unwrap_or_else(|p| p.into_inner());
        match last.get(&node) {
            Some(&(b, s)) if b == boot && s >= seq => false,
            _ => {
                last.insert(node, (boot, seq));
                true
            }
        }
    }

    /// Records the ownership version this node has applied (sent in beats).
    pub fn set_applied(&self, version: u64) {
        self.applied.store(version, Ordering::Relaxed);
    }

    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::Relaxed)
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Records a sign of life of `node` now, with the ownership version it applied
    /// and the one it acts on.
    pub fn heard(&self, node: NodeId, version: u64, acting: u64) {
        if node == self.id {
            return;
        }
        let mut h = self.heard.lock().unwrap_or_else(|p| p.into_inner());
        h.insert(node, (Instant::now(), version, acting));
    }

    /// Records the index of the last entry of this node's Raft log.
    pub fn set_log_index(&self, index: u64) {
        self.log_index.store(index, Ordering::Relaxed);
    }

    pub fn log_index(&self) -> u64 {
        self.log_index.load(Ordering::Relaxed)
    }

    /// Records the last log index `node`'s beat said it had (0: not said).
    pub fn heard_log(&self, node: NodeId, index: u64) {
        let mut l = self.peer_logs.lock().unwrap_or_else(|p| p.into_inner());
        l.insert(node, index);
    }

    /// Records the command level `node`'s beat said its build applies.
    pub fn heard_level(&self, node: NodeId, level: u32) {
        let mut l = self.peer_levels.lock().unwrap_or_else(|p| p.into_inner());
        l.insert(node, level);
    }

    /// Sets how long a member's level counts after its last beat from the beat
    /// interval: [`LEVEL_HEARD_WITHIN`], or [`LEVEL_HEARD_BEATS`] beats when longer.
    pub fn set_beat_interval(&self, every: Duration) {
        let within = LEVEL_HEARD_WITHIN.max(every.saturating_mul(LEVEL_HEARD_BEATS));
        self.level_within_ms.store(
            u64::try_from(within.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    fn level_within(&self) -> Duration {
        Duration::from_millis(self.level_within_ms.load(Ordering::Relaxed))
    }

    /// The command level `node` applies, as far as this node can rely on it: what
    /// its beats say while it is heard from (see [`Liveness::set_beat_interval`]);
    /// 1 otherwise (silent, it may come back on an older build), and for a build
    /// from before levels. This node's own: its build's.
    pub fn level_of(&self, node: NodeId) -> u32 {
        if node == self.id {
            return super::types::COMMAND_LEVEL;
        }
        if self.silent_for(node) > self.level_within() {
            return 1;
        }
        let l = self.peer_levels.lock().unwrap_or_else(|p| p.into_inner());
        l.get(&node).copied().unwrap_or(0).max(1)
    }

    /// The last log index `node` said it had, 0 when unknown.
    pub fn log_index_of(&self, node: NodeId) -> u64 {
        let l = self.peer_logs.lock().unwrap_or_else(|p| p.into_inner());
        l.get(&node).copied().unwrap_or(0)
    }

    /// Records that a leader's AppendEntries (entries or a heartbeat) was taken now.
    pub fn leader_heard_now(&self) {
        let mut t = self.leader_heard.lock().unwrap_or_else(|p| p.into_inner());
        *t = Some(Instant::now());
    }

    /// How long since a leader's AppendEntries was last taken (since this node
    /// started when none was).
    pub fn leader_silent_for(&self) -> Duration {
        let t = self.leader_heard.lock().unwrap_or_else(|p| p.into_inner());
        t.unwrap_or(self.started).elapsed()
    }

    /// Records whether this node is fenced (its owner view says so).
    pub fn set_fenced(&self, fenced: bool) {
        self.fenced.store(fenced, Ordering::Relaxed);
    }

    /// Whether this node is fenced (its lease is not valid), as last computed.
    pub fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::Relaxed)
    }

    /// The ownership version this node acts on: the applied one, or `u64::MAX`
    /// while it is fenced (none).
    pub fn acting(&self) -> u64 {
        if self.fenced.load(Ordering::Relaxed) {
            u64::MAX
        } else {
            self.applied()
        }
    }

    /// The ownership version `node` acted on when last heard (`u64::MAX`: none).
    pub fn acting_of(&self, node: NodeId) -> Option<u64> {
        let h = self.heard.lock().unwrap_or_else(|p| p.into_inner());
        h.get(&node).map(|(_, _, a)| *a)
    }

    /// `node` answered, as a member, a beat this node sent at `sent`, with the
    /// ownership version it had applied: a sign of life now, and lease credit as of
    /// `sent`.
    pub fn acked(&self, node: NodeId, sent: Instant, version: u64) {
        if node == self.id {
            return;
        }
        let newest = {
            let mut a = self.acked.lock().unwrap_or_else(|p| p.into_inner());
            let at = a.entry(node).or_insert(sent);
            let newest = sent >= *at;
            *at = (*at).max(sent);
            newest
        };
        // The answer to an older beat than one already answered (it waited in a
        // cut connection) is lease credit as of its send time, but its version is
        // old news.
        if newest {
            let acting = self.acting_of(node).unwrap_or(0);
            self.heard(node, version, acting);
            let mut r = self.rtt.lock().unwrap_or_else(|p| p.into_inner());
            r.insert(node, sent.elapsed());
        }
    }

    /// The round trip of the newest beat `node` answered.
    pub fn beat_rtt(&self, node: NodeId) -> Option<Duration> {
        let r = self.rtt.lock().unwrap_or_else(|p| p.into_inner());
        r.get(&node).copied()
    }

    /// Credits `node` with a sign of life and an answered beat now, keeping the
    /// version last heard (a member that just joined: the membership change needed
    /// its answer a moment ago).
    fn credit(&self, node: NodeId) {
        if node == self.id {
            return;
        }
        {
            let mut h = self.heard.lock().unwrap_or_else(|p| p.into_inner());
            let (version, acting) = h.get(&node).map_or((0, 0), |(_, v, a)| (*v, *a));
            h.insert(node, (Instant::now(), version, acting));
        }
        let mut a = self.acked.lock().unwrap_or_else(|p| p.into_inner());
        a.insert(node, Instant::now());
    }

    /// The ownership version `node` had applied when last heard.
    pub fn version_of(&self, node: NodeId) -> Option<u64> {
        let h = self.heard.lock().unwrap_or_else(|p| p.into_inner());
        h.get(&node).map(|(_, v, _)| *v)
    }

    /// How long `node` has been silent: since its last sign of life, or since this
    /// node started when it never heard from it (a node gives its peers a full
    /// `failover_after` after its own start). Zero for this node itself.
    pub fn silent_for(&self, node: NodeId) -> Duration {
        self.silent_at(node, Instant::now())
    }

    fn silent_at(&self, node: NodeId, now: Instant) -> Duration {
        if node == self.id {
            return Duration::ZERO;
        }
        let h = self.heard.lock().unwrap_or_else(|p| p.into_inner());
        let since = h.get(&node).map_or(self.started, |(t, _, _)| *t);
        now.saturating_duration_since(since)
    }

    /// Whether a majority of `voters` (itself counted when it is one) answered a
    /// beat this node sent within `lease` (counted from the send), and no node heard
    /// within `lease` has applied a newer ownership map than this one. A node in no
    /// membership yet has no lease.
    pub fn lease_valid(&self, voters: &BTreeSet<NodeId>, lease: Duration) -> bool {
        self.lease_valid_at(voters, lease, Instant::now())
    }

    fn lease_valid_at(&self, voters: &BTreeSet<NodeId>, lease: Duration, now: Instant) -> bool {
        if voters.is_empty() {
            return false;
        }
        let h = self.heard.lock().unwrap_or_else(|p| p.into_inner());
        let recent = |t: &Instant| now.saturating_duration_since(*t) < lease;
        let mine = self.applied();
        if h.values().any(|(t, v, _)| recent(t) && *v > mine) {
            return false;
        }
        drop(h);
        let a = self.acked.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = voters
            .iter()
            .filter(|v| **v == self.id || a.get(v).is_some_and(recent))
            .count();
        fresh * 2 > voters.len()
    }

    /// How many of `voters` (this node counted when it is one) were heard within
    /// `within`.
    pub fn heard_voters(&self, voters: &BTreeSet<NodeId>, within: Duration) -> usize {
        let now = Instant::now();
        let a = self.acked.lock().unwrap_or_else(|p| p.into_inner());
        voters
            .iter()
            .filter(|v| {
                **v == self.id
                    || a.get(v)
                        .is_some_and(|t| now.saturating_duration_since(*t) < within)
            })
            .count()
    }
}

/// Beats every member but this node each `interval` until `cancel`; one task
/// per member so a slow or dead one delays nobody else. `members` is read anew
/// each round (joins and leaves take effect at once).
pub async fn beat_members(
    liveness: Arc<Liveness>,
    peers: Peers,
    self_addr: String,
    members: impl Fn() -> Vec<(NodeId, BasicNode)> + Send + 'static,
    interval: Duration,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // A beat may take at most two intervals; a slower answer says little anyway.
    let timeout = interval * 2;
    let mut in_flight: HashMap<NodeId, tokio::task::JoinHandle<()>> = HashMap::new();
    // Members known so far. One that joins while this node runs was just heard
    // from (the membership change needed its answer), so it counts as heard now:
    // adding a voter does not cost the others their lease until its first beat.
    // The members found at start get no such credit.
    let mut known: Option<BTreeSet<NodeId>> = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        in_flight.retain(|_, h| !h.is_finished());
        let now_members = members();
        let ids: BTreeSet<NodeId> = now_members.iter().map(|(id, _)| *id).collect();
        if let Some(k) = &known {
            for id in ids.difference(k) {
                liveness.credit(*id);
            }
        }
        if !ids.is_empty() {
            known = Some(ids);
        }
        for (id, node) in now_members {
            if id == liveness.id() || in_flight.contains_key(&id) {
                continue;
            }
            let (liveness, peers, from_addr) = (liveness.clone(), peers.clone(), self_addr.clone());
            in_flight.insert(
                id,
                tokio::spawn(async move {
                    let sent = Instant::now();
                    match peers
                        .beat(
                            &node.addr,
                            liveness.id(),
                            &from_addr,
                            liveness.beat_state(),
                            timeout,
                        )
                        .await
                    {
                        Ok((answered, true, version)) if answered == id => {
                            liveness.acked(id, sent, version)
                        }
                        Ok((answered, false, _)) if answered == id => tracing::debug!(
                            peer = id,
                            "the peer does not count this node as a member (removed, or not caught up yet)"
                        ),
                        Ok((other, _, _)) => tracing::warn!(
                            peer = id, addr = %node.addr, answered = other,
                            "a different node answers at this member's address"
                        ),
                        Err(e) => tracing::trace!(peer = id, error = %e, "beat failed"),
                    }
                }),
            );
        }
    }
    for (_, h) in in_flight {
        h.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_counts_at_the_level_its_beats_say_while_it_is_heard() {
        let l = Liveness::new(1);
        assert_eq!(
            l.level_of(1),
            crate::cluster::types::COMMAND_LEVEL,
            "its own build's"
        );
        assert_eq!(l.level_of(2), 1, "never heard: level 1");
        l.heard(2, 0, 0);
        assert_eq!(
            l.level_of(2),
            1,
            "heard, with no level (a build before levels)"
        );
        l.heard_level(2, 0);
        assert_eq!(l.level_of(2), 1);
        l.heard_level(2, 2);
        assert_eq!(l.level_of(2), 2);
        // Silent past the bound: it may come back on an older build.
        assert!(l.silent_at(2, Instant::now() + LEVEL_HEARD_WITHIN * 2) > LEVEL_HEARD_WITHIN);
        // The window spans enough beats however slow they are.
        assert_eq!(l.level_within(), LEVEL_HEARD_WITHIN);
        l.set_beat_interval(Duration::from_millis(200));
        assert_eq!(l.level_within(), LEVEL_HEARD_WITHIN);
        l.set_beat_interval(Duration::from_secs(2));
        assert_eq!(l.level_within(), Duration::from_secs(50));
        assert_eq!(l.level_of(2), 2);
    }

    #[test]
    fn a_late_beat_of_the_same_process_is_not_news() {
        let l = Liveness::new(1);
        assert!(l.fresh_beat(2, 77, 5));
        assert!(!l.fresh_beat(2, 77, 5), "the same beat twice");
        assert!(
            !l.fresh_beat(2, 77, 3),
            "an older beat that waited in a cut connection"
        );
        assert!(l.fresh_beat(2, 77, 6));
        assert!(
            l.fresh_beat(2, 88, 1),
            "a restarted process starts its count again"
        );
        assert!(
            l.fresh_beat(3, 0, 0) && l.fresh_beat(3, 0, 0),
            "a node without the fields"
        );
        let a = l.beat_state();
        let b = l.beat_state();
        assert_eq!((a.boot, a.seq + 1), (b.boot, b.seq));
        assert_ne!(a.boot, 0);
    }

    #[test]
    fn the_answer_to_an_older_beat_credits_the_lease_but_says_no_version() {
        let l = Liveness::new(1);
        let old = Instant::now();
        let new = old + Duration::from_millis(500);
        l.acked(2, new, 21);
        l.acked(2, old, 20);
        assert_eq!(
            l.heard.lock().unwrap()[&2].1,
            21,
            "the newer answer's version stays"
        );
        assert_eq!(l.acked.lock().unwrap()[&2], new);
    }

    #[test]
    fn lease_needs_a_majority_of_voters() {
        let l = Liveness::new(1);
        let voters: BTreeSet<NodeId> = [1, 2, 3].into();
        let lease = Duration::from_millis(500);
        assert!(!l.lease_valid(&voters, lease), "alone among three");
        l.heard(2, 0, 0);
        assert!(
            !l.lease_valid(&voters, lease),
            "a beat received is no credit: only an answer to one sent"
        );
        l.acked(2, Instant::now(), 0);
        assert!(l.lease_valid(&voters, lease), "two of three");
        let later = Instant::now() + Duration::from_millis(600);
        assert!(
            !l.lease_valid_at(&voters, lease, later),
            "the beat is too old"
        );
        // A learner counts the voters only.
        let l = Liveness::new(9);
        l.acked(1, Instant::now(), 0);
        assert!(!l.lease_valid(&voters, lease));
        l.acked(2, Instant::now(), 0);
        assert!(l.lease_valid(&voters, lease));
        assert!(!l.lease_valid(&BTreeSet::new(), lease), "no herd, no lease");
        assert!(
            Liveness::new(1).lease_valid(&[1].into(), lease),
            "a herd of one"
        );
    }

    #[test]
    fn a_node_behind_the_herds_map_has_no_lease_until_it_caught_up() {
        let l = Liveness::new(3);
        let voters: BTreeSet<NodeId> = [1, 2, 3].into();
        let lease = Duration::from_millis(500);
        l.set_applied(4);
        l.acked(1, Instant::now(), 5);
        l.acked(2, Instant::now(), 5);
        assert!(
            !l.lease_valid(&voters, lease),
            "a majority, but on a newer map"
        );
        l.set_applied(5);
        assert!(l.lease_valid(&voters, lease));
    }

    /// A process paused past its lease finds answers to beats it sent before the
    /// pause: they credit the time they were sent, not the time they arrived.
    #[test]
    fn an_answer_credits_the_lease_from_when_its_beat_was_sent() {
        let l = Liveness::new(1);
        let voters: BTreeSet<NodeId> = [1, 2, 3].into();
        let lease = Duration::from_millis(500);
        let sent = Instant::now();
        let resumed = sent + Duration::from_secs(5);
        l.acked(2, sent, 0);
        assert!(
            !l.lease_valid_at(&voters, lease, resumed),
            "an answer to a beat sent 5 s ago gives no lease now"
        );
        // An older answer arriving late never moves the credit back.
        l.acked(2, sent - Duration::from_secs(1), 0);
        assert!(l.lease_valid_at(&voters, lease, sent + Duration::from_millis(100)));
    }

    #[test]
    fn silence_counts_from_start_until_first_heard() {
        let l = Liveness::new(1);
        let t = Instant::now() + Duration::from_secs(3);
        assert!(l.silent_at(2, t) >= Duration::from_secs(3));
        l.heard(2, 0, 0);
        assert!(l.silent_at(2, Instant::now()) < Duration::from_secs(1));
        assert_eq!(l.silent_for(1), Duration::ZERO);
    }
}
