//! Adding a node to the herd, on the leader: asked by the client API (`cluster
//! join`, `ClusterAdd`) or by a node configured with peers (the Raft service's
//! `Join`). The first [`MAX_VOTERS`] nodes vote; later ones join as learners and
//! own targets too.
use std::time::Duration;

use herd_proto::v1::HelloReply;
use openraft::{BasicNode, ChangeMembers};
use tonic::Status;

use super::node::{ClusterError, ClusterNode};
use super::types::NodeId;

/// Most voters; further nodes join as learners (they still own targets).
pub const MAX_VOTERS: usize = 5;
/// Bound on a membership change (a learner catching up included).
pub const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on the leader's check that the new node answers at its address.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// A promise to form a herd with another node lapses after this (that node died
/// or gave up part way).
pub const PROMISE_TTL: Duration = Duration::from_secs(5);

impl ClusterNode {
    /// The leader and its address, as this node knows them.
    pub fn leader_addr(&self) -> Option<(NodeId, String)> {
        let leader = self.leader()?;
        self.members()
            .into_iter()
            .find(|(id, _)| *id == leader)
            .map(|(id, n)| (id, n.addr))
    }

    /// Whether this node is a member of an initialised herd.
    pub fn in_herd(&self) -> bool {
        self.members().iter().any(|(id, _)| *id == self.id())
    }

    /// What this node answers a `Hello`; with `promise_to`, promises (or not) to
    /// take part in the herd that node forms.
    pub fn hello(&self, promise_to: NodeId) -> HelloReply {
        let in_herd = !self.members().is_empty();
        let now = std::time::Instant::now();
        let mut promise = self.promise.lock().unwrap_or_else(|p| p.into_inner());
        if promise.is_some_and(|(_, at)| now.duration_since(at) >= PROMISE_TTL) {
            *promise = None;
        }
        let mut promised = false;
        if promise_to != 0 && !in_herd {
            match *promise {
                None => {
                    *promise = Some((promise_to, now));
                    promised = true;
                }
                Some((to, _)) if to == promise_to => {
                    *promise = Some((to, now));
                    promised = true;
                }
                Some(_) => {}
            }
        }
        let leader = self.leader_addr();
        HelloReply {
            id: self.id(),
            in_herd,
            herd_id: self.credential().herd_id().unwrap_or_default(),
            leader_id: leader.as_ref().map(|(id, _)| *id),
            leader_addr: leader.map(|(_, a)| a).unwrap_or_default(),
            promised,
            promised_to: promise.map_or(0, |(to, _)| to),
        }
    }

    /// A node asks through the Raft service to be added: the leader adds it, a
    /// follower passes the request to the leader.
    pub async fn join_from_peer(&self, id: NodeId, addr: String) -> Result<String, Status> {
        if self.is_leader() {
            return self.add_member(id, addr).await;
        }
        let (leader, leader_addr) = self.leader_addr().ok_or_else(|| {
            Status::unavailable("the herd has no leader right now; retry in a moment")
        })?;
        self.peers()
            .join(&leader_addr, id, &addr, MEMBERSHIP_TIMEOUT)
            .await
            .map_err(|s| {
                Status::new(
                    s.code(),
                    format!("leader {leader} at {leader_addr}: {}", s.message()),
                )
            })
    }

    /// On the leader: adds node `id` reachable at `address`, as a voter while the
    /// herd has fewer than [`MAX_VOTERS`], else as a learner. A node that is a
    /// member at that address already is left as it is (a node restarted with an
    /// empty data dir is brought up to date by replication).
    pub async fn add_member(&self, id: NodeId, address: String) -> Result<String, Status> {
        if id == 0 {
            return Err(Status::invalid_argument("node id 0 is not valid"));
        }
        if address.trim().is_empty() {
            return Err(Status::invalid_argument("the new node's address is empty"));
        }
        if let Some((_, n)) = self.members().into_iter().find(|(i, _)| *i == id) {
            return if n.addr == address {
                Ok(format!("node {id} is already a member at {address}"))
            } else {
                Err(Status::already_exists(format!(
                    "node id {id} is already a member at {}; every node needs its own [node] id",
                    n.addr
                )))
            };
        }
        crate::config::fleet::parse_address(&address).map_err(|e| {
            Status::invalid_argument(format!("the new node's address {address:?}: {e}"))
        })?;
        // Before it is in the membership (where a wrong address would stay until
        // removed), the new node must answer there, as the node it says it is, and
        // take the herd's credential.
        match self
            .peers()
            .beat(
                &address,
                self.id(),
                self.addr(),
                self.liveness().beat_state(),
                PROBE_TIMEOUT,
            )
            .await
        {
            Ok((answered, _, _)) if answered == id => {}
            Ok((answered, _, _)) => {
                return Err(Status::failed_precondition(format!(
                    "node {answered} answers at {address}, not node {id}: check the address and [node] id"
                )))
            }
            Err(e)
                if matches!(
                    e.code(),
                    tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
                ) =>
            {
                return Err(Status::failed_precondition(format!(
                    "the new node at {address} refuses the herd's credential: {} (give every \
                     node the same cluster.secret_file, or certificates of the herd's CA)",
                    e.message()
                )))
            }
            Err(e) => {
                return Err(Status::unavailable(format!(
                    "the leader (node {}) cannot reach the new node at {address}: {} (is that address \
                     reachable from the other nodes? it must be the new node's node.grpc as they see it)",
                    self.id(),
                    e.message()
                )))
            }
        }
        let raft = self.raft();
        let added = tokio::time::timeout(
            MEMBERSHIP_TIMEOUT,
            raft.add_learner(id, BasicNode::new(address.clone()), true),
        )
        .await;
        membership_result(added, "adding the node")?;
        let message = if self.voters().len() < MAX_VOTERS {
            let changed = tokio::time::timeout(
                MEMBERSHIP_TIMEOUT,
                raft.change_membership(ChangeMembers::AddVoterIds([id].into()), true),
            )
            .await;
            membership_result(changed, "making the node a voter")?;
            format!("node {id} at {address} joined as a voter")
        } else {
            format!(
                "node {id} at {address} joined as a learner ({MAX_VOTERS} voters already); it owns targets too"
            )
        };
        tracing::info!(node = id, %address, "{message}");
        Ok(message)
    }
}

pub type MembershipResult<T> = Result<
    Result<
        T,
        openraft::error::RaftError<NodeId, openraft::error::ClientWriteError<NodeId, BasicNode>>,
    >,
    tokio::time::error::Elapsed,
>;

/// What a membership change came to, as a status for the caller.
pub fn membership_result<T>(r: MembershipResult<T>, what: &str) -> Result<(), Status> {
    use openraft::error::{ClientWriteError, RaftError};
    match r {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => Err(
            Status::unavailable(format!("{what}: leadership changed meanwhile; retry")),
        ),
        Ok(Err(RaftError::APIError(e))) => Err(Status::failed_precondition(format!("{what}: {e}"))),
        Ok(Err(RaftError::Fatal(f))) => Err(ClusterError::Stopped(f.to_string()).into()),
        Err(_) => Err(Status::deadline_exceeded(format!(
            "{what} did not complete within {MEMBERSHIP_TIMEOUT:?}"
        ))),
    }
}
