//! Raft traffic over tonic, server side: the `herd.v1.Raft` service hands each
//! request to this node's `openraft::Raft`.
//!
//! The answer of openraft, success or a Raft error, goes back as JSON in the reply
//! (the client turns an error into `RPCError::RemoteError`); a gRPC status means
//! the request did not reach Raft: `InvalidArgument` for a payload that does not
//! decode, `Unavailable` for a forwarded write while this node's Raft is stopped.
use herd_proto::v1::raft_server::{Raft as RaftRpc, RaftServer};
use herd_proto::v1::{
    forward_reply, BeatReply, BeatRequest, ForwardReply, ForwardRequest, NotLeader, RaftReply,
    RaftRequest, SnapshotChunk,
};
use openraft::error::{ClientWriteError, RaftError};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::Raft;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;
use tonic::{Request, Response, Status};

use super::liveness::Liveness;
use super::network::MAX_MESSAGE_BYTES;
use super::types::{Command, NodeId, TypeConfig};

/// The Raft service of one node.
#[derive(Clone)]
pub struct RaftService {
    raft: Raft<TypeConfig>,
    liveness: Arc<Liveness>,
    /// With TLS: every call must carry a client certificate signed by the herd's CA.
    require_cert: bool,
}

impl RaftService {
    pub fn new(raft: Raft<TypeConfig>, liveness: Arc<Liveness>, require_cert: bool) -> RaftService {
        RaftService {
            raft,
            liveness,
            require_cert,
        }
    }

    /// The service ready to add to a tonic server, accepting messages up to
    /// [`MAX_MESSAGE_BYTES`] (tonic's default of 4 MiB is too small for a large
    /// AppendEntries batch).
    pub fn server(
        raft: Raft<TypeConfig>,
        liveness: Arc<Liveness>,
        require_cert: bool,
    ) -> RaftServer<RaftService> {
        RaftServer::new(RaftService::new(raft, liveness, require_cert))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
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
    fn guard<T>(&self, request: &Request<T>) -> Result<(), Status> {
        if self.require_cert {
            crate::tls::require_peer_cert(request)?;
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn beat(&self, request: Request<BeatRequest>) -> Result<Response<BeatReply>, Status> {
        self.guard(&request)?;
        let beat = request.into_inner();
        let from = beat.from;
        let member = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .any(|(id, _)| *id == from);
        if member {
            self.liveness.heard(from, beat.ownership_version);
        }
        Ok(Response::new(BeatReply {
            id: self.liveness.id(),
            member,
            ownership_version: self.liveness.applied(),
        }))
    }

    async fn append_entries(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        self.guard(&request)?;
        let rpc: AppendEntriesRequest<TypeConfig> =
            decode("AppendEntries request", &request.into_inner().payload)?;
        let res = self.raft.append_entries(rpc).await;
        reply("AppendEntries result", &res)
    }

    async fn vote(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        self.guard(&request)?;
        let rpc: VoteRequest<NodeId> = decode("Vote request", &request.into_inner().payload)?;
        let res = self.raft.vote(rpc).await;
        reply("Vote result", &res)
    }

    async fn install_snapshot(
        &self,
        request: Request<SnapshotChunk>,
    ) -> Result<Response<RaftReply>, Status> {
        self.guard(&request)?;
        let chunk = request.into_inner();
        let mut rpc: InstallSnapshotRequest<TypeConfig> =
            decode("InstallSnapshot request", &chunk.payload)?;
        rpc.data = chunk.data;
        let res = self.raft.install_snapshot(rpc).await;
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
        let result = match self.raft.client_write(cmd).await {
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
}
