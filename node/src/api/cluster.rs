//! The herd side of the client API: membership requests, the node list, and the
//! fan-out of `status` and `query` to the other nodes (samples stay on the node
//! that collected them; any node answers for the whole herd).
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use herd_proto::v1 as pb;
use herd_proto::v1::herd_client::HerdClient;
use openraft::{BasicNode, ChangeMembers, ServerState};

use crate::cluster::membership::{membership_result, MEMBERSHIP_TIMEOUT};
use tonic::transport::Channel;
use tonic::{Request, Status};

use super::grpc::HerdApi;
use crate::cluster::types::{ClusterState, NodeId};
use crate::cluster::FleetState;

/// Bound on one call to another node during a fan-out.
const FAN_OUT_TIMEOUT: Duration = Duration::from_millis(1500);
/// The whole of `cluster join` on this node: asking the leader to add it, then
/// seeing itself in the herd's log. Below the CLI's 30 s so that the CLI hears why
/// a join failed rather than its own deadline.
const JOIN_BUDGET: Duration = Duration::from_secs(25);

/// A client of the node at `addr` on the herd's shared peer channels.
pub(super) fn peer_client(fleet: &FleetState, addr: &str) -> Result<HerdClient<Channel>, Status> {
    let ch = fleet.cluster().peers().channel_to(addr)?;
    Ok(HerdClient::new(ch).max_decoding_message_size(crate::cluster::network::MAX_MESSAGE_BYTES))
}

/// A request to another node: this node's token, and a deadline unless it is a
/// stream that lasts as long as its caller.
pub(super) fn outbound<T>(token: Option<&str>, msg: T, timeout: Option<Duration>) -> Request<T> {
    let mut r = Request::new(msg);
    if let Some(timeout) = timeout {
        r.set_timeout(timeout);
    }
    if let Some(t) = token {
        if let Ok(v) = format!("Bearer {t}").parse() {
            r.metadata_mut().insert("authorization", v);
        }
    }
    r
}

impl HerdApi {
    /// A client of the node at `addr` on the shared peer channels.
    fn peer(&self, addr: &str) -> Result<HerdClient<Channel>, Status> {
        peer_client(&self.fleet, addr)
    }

    /// A request to another node: this node's token, a deadline.
    fn outbound<T>(&self, msg: T, timeout: Duration) -> Request<T> {
        outbound(self.token.as_deref(), msg, Some(timeout))
    }

    fn members(&self) -> Vec<(NodeId, BasicNode)> {
        self.fleet.cluster().members()
    }

    /// Sends `req` to every other member that `to` selects, all at once, each call
    /// bounded by [`FAN_OUT_TIMEOUT`]; returns each node's answer.
    async fn fan_out<Req, Resp, F, Fut>(
        &self,
        req: Req,
        to: impl Fn(NodeId) -> bool,
        call: F,
    ) -> Vec<(NodeId, Result<Resp, Status>)>
    where
        Req: Clone + Send + 'static,
        Resp: Send + 'static,
        F: Fn(HerdClient<Channel>, Request<Req>) -> Fut + Clone + Send + 'static,
        Fut: std::future::Future<Output = Result<tonic::Response<Resp>, Status>> + Send + 'static,
    {
        let mut calls = Vec::new();
        for (id, node) in self.members() {
            if id == self.node.id || !to(id) {
                continue;
            }
            let client = self.peer(&node.addr);
            let r = self.outbound(req.clone(), FAN_OUT_TIMEOUT);
            let call = call.clone();
            calls.push(async move {
                let res = match client {
                    Ok(c) => tokio::time::timeout(FAN_OUT_TIMEOUT, call(c, r))
                        .await
                        .unwrap_or_else(|_| Err(Status::deadline_exceeded("no answer")))
                        .map(tonic::Response::into_inner),
                    Err(e) => Err(e),
                };
                (id, res)
            });
        }
        futures_join_all(calls).await
    }

    /// The nodes of the herd as this node sees them.
    pub(super) fn nodes(&self, herd: &ClusterState) -> Vec<pb::NodeInfo> {
        let cluster = self.fleet.cluster();
        let me = self.node.id;
        let metrics = cluster.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let members: Vec<(NodeId, BasicNode)> =
            membership.nodes().map(|(i, n)| (*i, n.clone())).collect();
        let owned = |id: NodeId| herd.owners.values().filter(|o| **o == id).count() as u64;
        if members.is_empty() {
            return vec![pb::NodeInfo {
                id: me,
                address: self.node.address.clone(),
                role: "none".into(),
                alive: true,
                uptime_s: self.node.started.elapsed().as_secs(),
                voter: false,
                last_seen_ms: 0,
                lease: Some(false),
                targets: 0,
                command_level: crate::cluster::types::COMMAND_LEVEL,
            }];
        }
        members
            .into_iter()
            .map(|(id, n)| {
                let voter = voters.contains(&id);
                let role = if metrics.current_leader == Some(id) {
                    "leader"
                } else if !voter {
                    "learner"
                } else if id == me && metrics.state == ServerState::Candidate {
                    "candidate"
                } else {
                    "follower"
                };
                let silent = cluster.liveness().silent_for(id);
                pb::NodeInfo {
                    id,
                    address: n.addr,
                    role: role.into(),
                    // From this node's own beats once it has heard the member; a member
                    // it has not heard from yet (it joined a moment ago) is as the
                    // leader recorded it.
                    alive: id == me
                        || match cluster.liveness().version_of(id) {
                            Some(_) => silent < self.failover_after,
                            None => herd.health.get(&id).is_none_or(|h| h.up),
                        },
                    uptime_s: if id == me {
                        self.node.started.elapsed().as_secs()
                    } else {
                        0
                    },
                    voter,
                    last_seen_ms: silent.as_millis() as u64,
                    lease: (id == me).then(|| cluster.liveness().lease_valid(&voters, self.lease)),
                    targets: owned(id),
                    command_level: cluster.liveness().level_of(id),
                }
            })
            .collect()
    }

    /// Asks every other node for its own status: adds the owners' target rows to
    /// `targets` (this node's own rows are in already) and a row for every target
    /// nobody reported, and fills in what each node says of itself (uptime, lease)
    /// in `nodes`. Returns the nodes that did not answer.
    pub(super) async fn herd_targets(
        &self,
        targets: &mut Vec<pb::TargetInfo>,
        nodes: &mut [pb::NodeInfo],
        spec: &crate::config::FleetSpec,
        herd: &ClusterState,
    ) -> Vec<u64> {
        let me = self.node.id;
        let answers = self
            .fan_out(
                pb::StatusRequest { local_only: true },
                |_| true,
                |mut c, r| async move { c.status(r).await },
            )
            .await;
        let mut unreachable = Vec::new();
        for (id, res) in answers {
            match res {
                Ok(r) => {
                    if let (Some(own), Some(row)) = (
                        r.nodes.iter().find(|n| n.id == id),
                        nodes.iter_mut().find(|n| n.id == id),
                    ) {
                        row.uptime_s = own.uptime_s;
                        row.lease = own.lease;
                    }
                    targets.extend(
                        r.targets
                            .into_iter()
                            .filter(|t| herd.owners.get(&t.name) == Some(&id)),
                    )
                }
                Err(_) => unreachable.push(id),
            }
        }
        // Rows of this node for targets it no longer owns are stale.
        targets.retain(|t| {
            t.owner != me || herd.owners.get(&t.name) == Some(&me) || herd.owners.is_empty()
        });
        let mut have: BTreeSet<String> = targets.iter().map(|t| t.name.clone()).collect();
        let mut names: Vec<&String> = spec.targets.iter().map(|t| &t.name).collect();
        names.extend(herd.owners.keys());
        for name in names {
            if !have.insert(name.clone()) {
                continue;
            }
            targets.push(pb::TargetInfo {
                name: name.clone(),
                owner: herd.owners.get(name).copied().unwrap_or(0),
                up: -1,
                last_scrape_age_s: -1.0,
                ..Default::default()
            });
        }
        targets.sort_by(|a, b| a.name.cmp(&b.name));
        unreachable.sort_unstable();
        unreachable
    }

    /// Samples of a target from every node, merged by time; a node that does not
    /// answer is a gap.
    pub(super) async fn herd_query(&self, q: pb::QueryRequest) -> Result<pb::QueryReply, Status> {
        let local = pb::QueryRequest {
            local_only: true,
            ..q.clone()
        };
        let others = self.fan_out(
            local.clone(),
            |_| true,
            |mut c, r| async move { c.query(r).await },
        );
        let mine = pb::herd_server::Herd::query(self, Request::new(local));
        let (mine, others) = tokio::join!(mine, others);
        let mut replies = Vec::new();
        let mut gaps = Vec::new();
        let mut not_found = None;
        match mine {
            Ok(r) => replies.push(r.into_inner()),
            Err(s) if s.code() == tonic::Code::NotFound => not_found = Some(s),
            Err(s) => return Err(s),
        }
        for (id, res) in others {
            match res {
                Ok(r) => replies.push(r),
                // The target is unknown there too: nothing to add.
                Err(s) if s.code() == tonic::Code::NotFound => {}
                Err(s) if s.code() == tonic::Code::InvalidArgument => return Err(s),
                Err(s) => gaps.push(unanswered(id, &s, (q.from_ms, q.to_ms))),
            }
        }
        if replies.is_empty() && gaps.is_empty() {
            return Err(not_found.unwrap_or_else(|| Status::not_found("no data")));
        }
        Ok(merge_replies(q, replies, gaps))
    }

    /// Series by label matchers from every node, merged; a node that does not
    /// answer is a gap.
    pub(super) async fn herd_select(
        &self,
        q: pb::SelectRequest,
    ) -> Result<pb::SelectReply, Status> {
        let local = pb::SelectRequest {
            local_only: true,
            ..q.clone()
        };
        let others = self.fan_out(
            local.clone(),
            |_| true,
            |mut c, r| async move { c.select(r).await },
        );
        let mine = super::prom::select::local(self, &local);
        let (mine, others) = tokio::join!(mine, others);
        let mut replies = vec![mine?];
        let mut gaps = Vec::new();
        for (id, res) in others {
            match res {
                Ok(r) => replies.push(r),
                Err(s) if s.code() == tonic::Code::InvalidArgument => return Err(s),
                Err(s) => gaps.push(unanswered(id, &s, (q.from_ms, q.to_ms))),
            }
        }
        Ok(super::prom::select::merge(replies, gaps))
    }

    /// Adds the alerts this node does not hold: those of targets other nodes own
    /// (as the herd last recorded them) and the peers that are down.
    pub(super) fn herd_alerts(&self, alerts: &mut Vec<pb::AlertInfo>) {
        let herd = self.fleet.state();
        let me = self.node.id;
        let have: BTreeSet<String> = alerts.iter().map(|a| a.id.clone()).collect();
        for a in herd.alerts.values() {
            // Alerts of targets this node owns are in `alerts` already (its engine's),
            // and those of targets that left the fleet are nobody's.
            match herd.owners.get(&a.target) {
                Some(owner) if *owner != me && !have.contains(&a.id) => {}
                _ => continue,
            }
            if matches!(a.state, crate::model::AlertState::Inactive) {
                continue;
            }
            alerts.push(super::grpc::alert_info(a));
        }
        for (id, h) in &herd.health {
            if !h.up {
                let addr = herd.nodes.get(id).map(|r| r.addr.as_str()).unwrap_or("?");
                alerts.push(super::grpc::alert_info(
                    &crate::cluster::controller::peer_alert(*id, h, addr),
                ));
            }
        }
    }

    /// An ack for an alert another node owns goes to that node.
    pub(super) async fn ack_on_owner(&self, id: &str, by: &str) -> Result<pb::AckReply, Status> {
        let herd = self.fleet.state();
        let owner = herd
            .alerts
            .get(id)
            .and_then(|a| herd.owners.get(&a.target).copied())
            .filter(|o| *o != self.node.id)
            .ok_or_else(|| Status::not_found(format!("no alert with id {id:?} in the herd")))?;
        let addr = self
            .members()
            .into_iter()
            .find(|(i, _)| *i == owner)
            .map(|(_, n)| n.addr)
            .ok_or_else(|| {
                Status::unavailable(format!("owner node {owner} has no known address"))
            })?;
        let mut c = self.peer(&addr)?;
        let req = self.outbound(
            pb::AckRequest {
                id: id.to_string(),
                by: by.to_string(),
                forwarded: true,
            },
            FAN_OUT_TIMEOUT,
        );
        c.ack(req)
            .await
            .map(|r| r.into_inner())
            .map_err(|s| Status::new(s.code(), format!("node {owner} at {addr}: {}", s.message())))
    }

    fn leader_addr(&self) -> Result<(NodeId, String), Status> {
        self.fleet.cluster().leader_addr().ok_or_else(|| {
            Status::unavailable(
                "the herd has no leader (with a known address) right now; retry in a moment",
            )
        })
    }

    fn cluster_reply(&self, message: String) -> pb::ClusterReply {
        let cluster = self.fleet.cluster();
        let voters = cluster.voters();
        pb::ClusterReply {
            message,
            learners: self
                .members()
                .into_iter()
                .map(|(id, _)| id)
                .filter(|id| !voters.contains(id))
                .collect(),
            voters: voters.into_iter().collect(),
            leader: cluster.leader(),
        }
    }

    pub(super) async fn do_init(&self) -> Result<pb::ClusterReply, Status> {
        let made = self.fleet.init_herd().await?;
        let cluster = self.fleet.cluster();
        cluster.wait_for_leader(Duration::from_secs(10)).await?;
        // Recorded before the answer: an id that a restart could lose is not told.
        cluster.wait_herd_id(Duration::from_secs(10)).await;
        let me = self.node.id;
        let herd = self.herd_id_text();
        Ok(self.cluster_reply(if made {
            format!(
                "node {me} is now a herd of one (herd {herd}); add nodes with `herd --node NEW_NODE cluster join {}`",
                self.node.address
            )
        } else {
            format!("node {me} is already in herd {herd}; nothing changed")
        }))
    }

    /// The herd id this node knows, for messages.
    fn herd_id_text(&self) -> String {
        self.fleet
            .cluster()
            .credential()
            .herd_id()
            .unwrap_or_else(|| "(id not recorded yet)".into())
    }

    /// What a joining node needs from this herd (see `ClusterCredential`).
    pub(super) fn credential_reply(&self) -> pb::ClusterCredentialReply {
        let cluster = self.fleet.cluster();
        let in_herd = cluster.in_herd();
        pb::ClusterCredentialReply {
            herd_id: cluster.credential().herd_id().unwrap_or_default(),
            secret: if in_herd {
                cluster
                    .credential()
                    .shareable()
                    .map(|s| s.to_string())
                    .unwrap_or_default()
            } else {
                String::new()
            },
            leader: cluster.leader(),
            members: self.members().into_iter().map(|(id, _)| id).collect(),
            spec_version: self.fleet.state().spec_version,
        }
    }

    /// One line naming a herd for people: id, leader, members, spec version.
    fn herd_line(c: &pb::ClusterCredentialReply) -> String {
        let members: Vec<String> = c.members.iter().map(u64::to_string).collect();
        format!(
            "herd {} (leader {}, members {}, spec v{})",
            if c.herd_id.is_empty() {
                "(id not recorded yet)"
            } else {
                &c.herd_id
            },
            c.leader.map_or("none".into(), |l| l.to_string()),
            if members.is_empty() {
                "none".into()
            } else {
                members.join(", ")
            },
            c.spec_version
        )
    }

    /// Joins this node to the herd of the member at `seed`. Succeeds only when this
    /// node ends up a member of that herd; a node already in another herd is
    /// refused, naming both.
    pub(super) async fn do_join(&self, seed: &str) -> Result<pb::ClusterReply, Status> {
        let deadline = tokio::time::Instant::now() + JOIN_BUDGET;
        let me = self.node.id;
        let cluster = self.fleet.cluster();
        let mut client = self
            .peer(seed)
            .map_err(|s| Status::unavailable(format!("cannot reach {seed}: {}", s.message())))?;
        let theirs = client
            .cluster_credential(self.outbound(pb::ClusterCredentialRequest {}, FAN_OUT_TIMEOUT))
            .await
            .map_err(|s| {
                Status::new(
                    s.code(),
                    format!("{seed} refused or did not answer: {}", s.message()),
                )
            })?
            .into_inner();
        if theirs.members.is_empty() {
            return Err(Status::failed_precondition(format!(
                "the node at {seed} is in no herd yet: run `herd --node {seed} cluster init` \
                first, or join another member"
            )));
        }
        let initialized = cluster
            .raft()
            .is_initialized()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        if initialized || cluster.in_herd() {
            let mine = self.credential_reply();
            let same = !mine.herd_id.is_empty() && mine.herd_id == theirs.herd_id;
            if same && cluster.in_herd() {
                return Ok(self.cluster_reply(format!(
                    "node {me} is already a member of {}; nothing changed",
                    Self::herd_line(&theirs)
                )));
            }
            return Err(Status::failed_precondition(format!(
                "node {me} is already in {}, not in the {} that {seed} belongs to. To move it: \
                take it out of its herd (`herd --node {} cluster leave`), stop it, remove \
                raft.redb and herd-secret from its data_dir, start it and join again",
                Self::herd_line(&mine),
                Self::herd_line(&theirs),
                self.node.address
            )));
        }
        // The herd's credential first: the leader checks that this node answers
        // before it adds it.
        let secret = theirs.secret.clone();
        let credential = cluster.credential().clone();
        tokio::task::spawn_blocking(move || credential.adopt(&secret))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::failed_precondition(format!("joining {seed}: {e}")))?;
        if !theirs.herd_id.is_empty() {
            cluster.credential().set_herd_id(&theirs.herd_id);
        }
        let req = self.outbound(
            pb::ClusterAddRequest {
                id: me,
                address: self.node.address.clone(),
            },
            deadline
                .saturating_duration_since(tokio::time::Instant::now())
                .min(MEMBERSHIP_TIMEOUT),
        );
        let reply = client.cluster_add(req).await.map_err(|s| {
            // Not in that herd after all: its id must not turn away another herd.
            if !cluster.in_herd() {
                cluster.credential().clear_herd_id();
            }
            Status::new(
                s.code(),
                format!("{seed} refused or did not answer: {}", s.message()),
            )
        })?;
        // The leader's log reaches this node a moment later.
        // `wait_for` answers with a borrow of openraft's metrics: it is let go at
        // once (`matches!`), since a borrow held while the reply below borrows them
        // again deadlocks as soon as openraft waits to publish new metrics.
        let mut m = cluster.metrics();
        let member = matches!(
            tokio::time::timeout_at(
                deadline,
                m.wait_for(|m| {
                    m.membership_config
                        .membership()
                        .nodes()
                        .any(|(id, _)| *id == me)
                }),
            )
            .await,
            Ok(Ok(_))
        );
        if !member {
            return Err(Status::deadline_exceeded(format!(
                "the herd added node {me}, but the herd's log did not reach it within \
                {JOIN_BUDGET:?} of the join: check that the other nodes reach {} (its node.grpc)",
                self.node.address
            )));
        }
        let r = reply.into_inner();
        Ok(pb::ClusterReply {
            message: format!("{} (herd {})", r.message, theirs.herd_id),
            ..self.cluster_reply(String::new())
        })
    }

    pub(super) async fn do_add(
        &self,
        id: NodeId,
        address: String,
    ) -> Result<pb::ClusterReply, Status> {
        let cluster = self.fleet.cluster();
        if !cluster.is_leader() {
            let (leader, addr) = self.leader_addr()?;
            let mut client = self.peer(&addr)?;
            let req = self.outbound(pb::ClusterAddRequest { id, address }, MEMBERSHIP_TIMEOUT);
            return client
                .cluster_add(req)
                .await
                .map(|r| r.into_inner())
                .map_err(|s| {
                    Status::new(
                        s.code(),
                        format!("leader {leader} at {addr}: {}", s.message()),
                    )
                });
        }
        let message = cluster.add_member(id, address).await?;
        Ok(self.cluster_reply(message))
    }

    pub(super) async fn do_remove(&self, id: NodeId) -> Result<pb::ClusterReply, Status> {
        let cluster = self.fleet.cluster();
        if !self.members().iter().any(|(i, _)| *i == id) {
            let ids: Vec<String> = self.members().iter().map(|(i, _)| i.to_string()).collect();
            return Err(Status::not_found(format!(
                "no node {id} in the herd (members: {})",
                ids.join(", ")
            )));
        }
        if !cluster.is_leader() {
            let (leader, addr) = self.leader_addr()?;
            let mut client = self.peer(&addr)?;
            let req = self.outbound(pb::ClusterRemoveRequest { id }, MEMBERSHIP_TIMEOUT);
            return client
                .cluster_remove(req)
                .await
                .map(|r| r.into_inner())
                .map_err(|s| {
                    Status::new(
                        s.code(),
                        format!("leader {leader} at {addr}: {}", s.message()),
                    )
                });
        }
        let voters = cluster.voters();
        if voters.len() == 1 && voters.contains(&id) {
            return Err(Status::failed_precondition(format!(
                "node {id} is the herd's only voter; a herd cannot remove its last voter"
            )));
        }
        // Its targets move first, while it is still a member and hears the new map
        // (the leader's controller reassigns them as soon as it is draining); a
        // node that is taken out of the membership first may never hear the map
        // that takes its targets away.
        cluster
            .write(crate::cluster::types::Command::Drain { node: id })
            .await?;
        let mut state = cluster.state();
        let drained = tokio::time::timeout(MEMBERSHIP_TIMEOUT, async {
            loop {
                if !state.borrow_and_update().owners.values().any(|o| *o == id) {
                    return true;
                }
                if state.changed().await.is_err() {
                    return false;
                }
            }
        })
        .await;
        if !matches!(drained, Ok(true)) {
            return Err(Status::deadline_exceeded(format!(
                "node {id}'s targets did not move within {MEMBERSHIP_TIMEOUT:?}; it owns nothing new \
                 meanwhile (draining); run the command again"
            )));
        }
        // Give the node a moment to apply that map and stop its scrapers; should it
        // miss it, its lease lapses once the others stop counting it as a member.
        tokio::time::sleep(self.lease / 2).await;
        let raft = cluster.raft();
        // A learner steps up first, so the herd keeps as many voters as it can.
        if voters.contains(&id) {
            if let Some(learner) = self
                .members()
                .into_iter()
                .map(|(i, _)| i)
                .find(|i| *i != id && !voters.contains(i))
            {
                let r = tokio::time::timeout(
                    MEMBERSHIP_TIMEOUT,
                    raft.change_membership(ChangeMembers::AddVoterIds([learner].into()), true),
                )
                .await;
                membership_result(r, "promoting a learner")?;
            }
            let r = tokio::time::timeout(
                MEMBERSHIP_TIMEOUT,
                raft.change_membership(ChangeMembers::RemoveVoters([id].into()), false),
            )
            .await;
            membership_result(r, "removing the voter")?;
        }
        if self.members().iter().any(|(i, _)| *i == id) {
            let r = tokio::time::timeout(
                MEMBERSHIP_TIMEOUT,
                raft.change_membership(ChangeMembers::RemoveNodes([id].into()), false),
            )
            .await;
            membership_result(r, "removing the node")?;
        }
        tracing::info!(node = id, "node removed from the herd");
        Ok(self.cluster_reply(format!(
            "node {id} removed from the herd; its targets move to the others"
        )))
    }
}

/// Runs the calls concurrently; returns their outputs in order (a call whose task
/// failed is left out).
async fn futures_join_all<F>(futs: Vec<F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}

/// Merges the answers of several nodes: series by labels with points in time
/// order (one point per timestamp), rollup buckets by time.
/// The gap a node that did not answer leaves in a range.
fn unanswered(id: NodeId, s: &Status, (from_ms, to_ms): (i64, i64)) -> pb::Gap {
    pb::Gap {
        from_ms,
        to_ms,
        reason: format!("node {id} did not answer: {}", s.message()),
        node: id,
    }
}

fn merge_replies(
    q: pb::QueryRequest,
    replies: Vec<pb::QueryReply>,
    gaps: Vec<pb::Gap>,
) -> pb::QueryReply {
    let mut series: BTreeMap<Vec<(String, String)>, BTreeMap<i64, f64>> = BTreeMap::new();
    let mut rollups: BTreeMap<Vec<(String, String)>, BTreeMap<i64, pb::RollupBucket>> =
        BTreeMap::new();
    for r in replies {
        for s in r.series {
            let key: Vec<(String, String)> = s
                .labels
                .into_iter()
                .collect::<BTreeMap<_, _>>()
                .into_iter()
                .collect();
            let pts = series.entry(key).or_default();
            for p in s.points {
                pts.insert(p.ts_ms, p.value);
            }
        }
        for s in r.rollups {
            let key: Vec<(String, String)> = s
                .labels
                .into_iter()
                .collect::<BTreeMap<_, _>>()
                .into_iter()
                .collect();
            let buckets = rollups.entry(key).or_default();
            for b in s.buckets {
                match buckets.get_mut(&b.bucket_ms) {
                    None => {
                        buckets.insert(b.bucket_ms, b);
                    }
                    Some(a) => combine(a, b),
                }
            }
        }
    }
    pb::QueryReply {
        target: q.target,
        metric: q.metric,
        series: series
            .into_iter()
            .map(|(labels, pts)| pb::Series {
                labels: labels.into_iter().collect(),
                points: super::grpc::points_pb(pts),
            })
            .collect(),
        gaps,
        rollup: q.rollup,
        rollups: rollups
            .into_iter()
            .map(|(labels, b)| pb::RollupSeries {
                labels: labels.into_iter().collect(),
                buckets: b.into_values().collect(),
            })
            .collect(),
    }
}

/// One minute's (or hour's) bucket seen by two nodes (a takeover inside it).
fn combine(a: &mut pb::RollupBucket, b: pb::RollupBucket) {
    let (na, nb) = (a.count as f64, b.count as f64);
    a.mean = match (a.mean, b.mean) {
        (Some(x), Some(y)) if na + nb > 0.0 => Some((x * na + y * nb) / (na + nb)),
        (x, y) => x.or(y),
    };
    a.min = match (a.min, b.min) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    };
    a.max = match (a.max, b.max) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, y) => x.or(y),
    };
    a.count += b.count;
    for (k, v) in b.statuses {
        *a.statuses.entry(k).or_default() += v;
    }
}
