//! Raft traffic over tonic, server side: the `herd.v1.Raft` service hands each
//! request to this node's `openraft::Raft`.
//!
//! The answer of openraft, success or a Raft error, goes back as JSON in the reply
//! (the client turns an error into `RPCError::RemoteError`); a gRPC status means
//! the request did not reach Raft: `Unauthenticated` without the herd's credential,
//! `PermissionDenied` for a caller of another herd or one speaking as another node,
//! `InvalidArgument` for a payload that does not decode (or a fleet spec that does
//! not validate, or a snapshot chunk out of bounds), `Unavailable` for a forwarded
//! write while this node's Raft is stopped.
//!
//! Every call passes [`RaftService::guard`] first: the credential (`credential.rs`)
//! and, over TLS, the caller's node certificate; a call that names its sender (a
//! beat, a vote, a leader's entries, a join) must name the node its certificate is.
use herd_proto::v1::raft_server::{Raft as RaftRpc, RaftServer};
use herd_proto::v1::{
    forward_reply, BeatReply, BeatRequest, ForwardReply, ForwardRequest, HelloReply, HelloRequest,
    JoinReply, JoinRequest, NotLeader, RaftReply, RaftRequest, SnapshotChunk,
};
use openraft::error::{ClientWriteError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, VoteRequest,
};
use openraft::Raft;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::{Arc, Mutex};
use tonic::{Request, Response, Status};

use super::network::MAX_MESSAGE_BYTES;
use super::node::ClusterNode;
use super::types::{Command, NodeId, TypeConfig};
use crate::tls::PeerCert;

/// Largest snapshot this node takes: a chunk that reaches beyond it is refused
/// (a forged offset must not make the node allocate without bound).
pub const MAX_SNAPSHOT_BYTES: u64 = 1 << 30;

/// The Raft service of one node.
#[derive(Clone)]
pub struct RaftService {
    node: ClusterNode,
    /// With TLS: every call must carry a node certificate signed by the herd's CA.
    require_cert: bool,
    /// The snapshot being received: its id and the end of what arrived so far.
    receiving: Arc<Mutex<Option<(String, u64)>>>,
}

/// Who made a call, as far as its credential tells.
struct Caller {
    cert: Option<PeerCert>,
}

impl Caller {
    /// A call that names its sender must come from that node (with TLS).
    fn must_be(&self, node: NodeId, what: &str) -> Result<(), Status> {
        match &self.cert {
            Some(c) if !c.names_node(node) => Err(Status::permission_denied(format!(
                "{what} names node {node} as its sender, but the caller's certificate is not \
                node {node}'s"
            ))),
            _ => Ok(()),
        }
    }
}

impl RaftService {
    /// The service ready to add to a tonic server, accepting messages up to
    /// [`MAX_MESSAGE_BYTES`] (tonic's default of 4 MiB is too small for a large
    /// AppendEntries batch).
    pub fn server(node: ClusterNode, require_cert: bool) -> RaftServer<RaftService> {
        RaftServer::new(RaftService {
            node,
            require_cert,
            receiving: Arc::default(),
        })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    fn raft(&self) -> &Raft<TypeConfig> {
        self.node.raft()
    }

    /// Checks that a snapshot chunk continues the snapshot being received and stays
    /// within [`MAX_SNAPSHOT_BYTES`]; records how far it reaches.
    fn check_chunk(&self, id: &str, offset: u64, len: usize) -> Result<(), Status> {
        let end = offset.saturating_add(len as u64);
        if end > MAX_SNAPSHOT_BYTES {
            return Err(Status::invalid_argument(format!(
                "snapshot chunk at offset {offset} of {len} bytes reaches beyond the largest \
                snapshot taken ({MAX_SNAPSHOT_BYTES} bytes)"
            )));
        }
        let mut r = self.receiving.lock().unwrap_or_else(|p| p.into_inner());
        if offset == 0 {
            *r = Some((id.to_string(), end));
            return Ok(());
        }
        match r.as_mut() {
            Some((current, received)) if current == id && offset <= *received => {
                *received = (*received).max(end)
            }
            Some((current, received)) if current == id => {
                return Err(Status::invalid_argument(format!(
                    "snapshot chunk at offset {offset} leaves a gap: {received} bytes of \
                    snapshot {id} arrived so far"
                )))
            }
            _ => {
                return Err(Status::invalid_argument(format!(
                    "snapshot chunk at offset {offset} of snapshot {id}, whose first chunk \
                    did not arrive"
                )))
            }
        }
        Ok(())
    }
}

fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, Status> {
    serde_json::from_slice(bytes)
        .map_err(|e| Status::invalid_argument(format!("{what} does not decode: {e}")))
}

fn encode<T: Serialize>(what: &str, v: &T) -> Result<Vec<u8>, Status> {
    serde_json::to_vec(v).map_err(|e| Status::internal(format!("encode {what}: {e}")))
}

fn reply<T: Serialize>(what: &str, v: &T) -> Result<Response<RaftReply>, Status> {
    Ok(Response::new(RaftReply {
        payload: encode(what, v)?,
    }))
}

impl RaftService {
    /// The herd's credential, before anything else looks at the call.
    fn guard<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let cert = if self.require_cert {
            crate::tls::require_peer_cert(request)?
        } else {
            None
        };
        self.node.credential().check(request)?;
        Ok(Caller { cert })
    }
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn beat(&self, request: Request<BeatRequest>) -> Result<Response<BeatReply>, Status> {
        let caller = self.guard(&request)?;
        let beat = request.into_inner();
        let from = beat.from;
        caller.must_be(from, "the beat")?;
        let liveness = self.node.liveness();
        // A node that has applied no membership yet (it is joining: the leader added
        // it, and its beats count for the leader's lease from then on) cannot say
        // who is out; it credits a caller that passed the herd's credential rather
        // than cost the herd its lease until the membership entry reaches it.
        let member = {
            let metrics = self.raft().metrics();
            let m = metrics.borrow();
            let mut nodes = m.membership_config.membership().nodes().peekable();
            nodes.peek().is_none() || nodes.any(|(id, _)| *id == from)
        };
        // A late beat (it waited in a connection a partition cut) is answered, but
        // what it says is old: taken as news it could make a fenced peer look
        // current, or a current one look behind.
        if member && liveness.fresh_beat(from, beat.boot, beat.seq) {
            liveness.heard(from, beat.ownership_version, beat.acting_version);
            liveness.heard_log(from, beat.last_log_index);
            liveness.heard_level(from, beat.command_level);
            liveness.heard_leader_silence(
                from,
                beat.leader_silent_ms.map(std::time::Duration::from_millis),
            );
        }
        Ok(Response::new(BeatReply {
            id: liveness.id(),
            member,
            ownership_version: liveness.applied(),
        }))
    }

    async fn append_entries(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let caller = self.guard(&request)?;
        let rpc: AppendEntriesRequest<TypeConfig> =
            decode("AppendEntries request", &request.into_inner().payload)?;
        if let Some(leader) = rpc.vote.leader_id().voted_for() {
            caller.must_be(leader, "AppendEntries")?;
        }
        let res = self.raft().append_entries(rpc).await;
        if matches!(&res, Ok(r) if !matches!(r, AppendEntriesResponse::HigherVote(_))) {
            self.node.liveness().leader_heard_now();
        }
        reply("AppendEntries result", &res)
    }

    async fn vote(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let caller = self.guard(&request)?;
        let rpc: VoteRequest<NodeId> = decode("Vote request", &request.into_inner().payload)?;
        if let Some(candidate) = rpc.vote.leader_id().voted_for() {
            caller.must_be(candidate, "the vote request")?;
        }
        let res = self.raft().vote(rpc).await;
        reply("Vote result", &res)
    }

    async fn install_snapshot(
        &self,
        request: Request<SnapshotChunk>,
    ) -> Result<Response<RaftReply>, Status> {
        let caller = self.guard(&request)?;
        let chunk = request.into_inner();
        let mut rpc: InstallSnapshotRequest<TypeConfig> =
            decode("InstallSnapshot request", &chunk.payload)?;
        if let Some(leader) = rpc.vote.leader_id().voted_for() {
            caller.must_be(leader, "InstallSnapshot")?;
        }
        self.check_chunk(&rpc.meta.snapshot_id, rpc.offset, chunk.data.len())?;
        rpc.data = chunk.data;
        let res = self.raft().install_snapshot(rpc).await;
        reply("InstallSnapshot result", &res)
    }

    /// Proposes a write if this node leads; otherwise says who does (it does not
    /// forward again, so a write never travels in circles).
    async fn forward(
        &self,
        request: Request<ForwardRequest>,
    ) -> Result<Response<ForwardReply>, Status> {
        self.guard(&request)?;
        let cmd: Command = decode("forwarded command", &request.into_inner().command)?;
        // As if it came from `herd apply` here: a spec that does not validate is
        // refused with the same errors, never proposed.
        if let Command::ApplySpec { text, source } = &cmd {
            crate::config::parse_fleet(text, source)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
        }
        let result = match self.raft().client_write(cmd).await {
            Ok(r) => forward_reply::Result::Response(encode("command response", &r.data)?),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                forward_reply::Result::NotLeader(NotLeader {
                    leader_id: f.leader_id,
                    leader_addr: f.leader_node.map(|n| n.addr).unwrap_or_default(),
                })
            }
            Err(RaftError::APIError(e)) => return Err(Status::failed_precondition(e.to_string())),
            Err(RaftError::Fatal(f)) => {
                return Err(Status::unavailable(format!(
                    "raft is not running here: {f}"
                )))
            }
        };
        Ok(Response::new(ForwardReply {
            result: Some(result),
        }))
    }

    async fn hello(&self, request: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        let caller = self.guard(&request)?;
        let hello = request.into_inner();
        caller.must_be(hello.from, "the hello")?;
        Ok(Response::new(self.node.hello(hello.promise_to)))
    }

    /// Adds the caller (on the leader; a follower passes it on).
    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinReply>, Status> {
        let caller = self.guard(&request)?;
        let join = request.into_inner();
        caller.must_be(join.id, "the join request")?;
        let message = self.node.join_from_peer(join.id, join.addr).await?;
        Ok(Response::new(JoinReply { message }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn snapshot_chunks_must_continue_within_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let node = ClusterNode::start(1, "127.0.0.1:1", dir.path(), Default::default())
            .await
            .unwrap();
        let svc = RaftService {
            node: node.clone(),
            require_cert: false,
            receiving: Arc::default(),
        };
        // No first chunk yet.
        assert!(svc.check_chunk("s1", 10, 5).is_err());
        svc.check_chunk("s1", 0, 100).unwrap();
        // A chunk sent again, then the next one.
        svc.check_chunk("s1", 0, 100).unwrap();
        svc.check_chunk("s1", 100, 100).unwrap();
        // A gap, another snapshot's middle, a forged huge offset.
        let e = svc.check_chunk("s1", 5000, 1).unwrap_err();
        assert!(e.message().contains("gap"), "{e}");
        assert!(svc.check_chunk("s2", 100, 1).is_err());
        let e = svc.check_chunk("s1", u64::MAX - 3, 10).unwrap_err();
        assert!(e.message().contains("beyond"), "{e}");
        assert!(svc.check_chunk("s3", 0, 10).is_ok());
        node.shutdown().await.unwrap();
    }
}
