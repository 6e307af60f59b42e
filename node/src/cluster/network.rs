//! Raft traffic over tonic, client side: openraft's [`RaftNetworkFactory`] and
//! [`RaftNetwork`] on the `herd.v1.Raft` service (`raft.proto`).
//!
//! - One tonic [`Channel`] per peer address, created lazily on first use and
//!   shared by every client openraft makes for that peer and by forwarded writes
//!   ([`Peers`]); tonic reconnects it by itself after a failure.
//! - openraft's messages travel as JSON in `bytes payload`; the reply carries the
//!   remote `Result<Response, RaftError>`, so a remote Raft error comes back as
//!   `RPCError::RemoteError` and a transport failure as a gRPC status.
//! - Errors are mapped so that openraft backs off from a peer that cannot be
//!   reached: a failed connect (tonic `Unavailable`), a broken connection or a
//!   peer that does not serve Raft is `RPCError::Unreachable` (openraft then waits
//!   out [`RaftNetwork::backoff`] before the next RPC to it); an expired deadline
//!   is `RPCError::Timeout`; any other status is `RPCError::Network`.
//! - Each RPC is bounded by the `RPCOption`'s hard TTL, sent along as the gRPC
//!   deadline so the receiver gives up too. In openraft 0.9 that TTL is the
//!   heartbeat interval for AppendEntries (`install_snapshot_timeout` for a
//!   snapshot chunk, the election timeout for Vote).
use std::collections::HashMap;
use std::error::Error as StdError;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herd_proto::v1::forward_reply;
use herd_proto::v1::raft_client::RaftClient;
use herd_proto::v1::{
    BeatRequest, ForwardRequest, HelloReply, HelloRequest, JoinRequest, RaftReply, RaftRequest,
    SnapshotChunk,
};
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Timeout,
    Unreachable,
};
use openraft::network::{Backoff, RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, BasicNode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

use super::credential::Credential;
use super::types::{Command, CommandResponse, NodeId, TypeConfig};

/// Largest gRPC message of the Raft service, either way. An AppendEntries batch
/// that encodes larger is split (openraft retries it with fewer entries).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// The channel cache: one lazily connected tonic [`Channel`] per peer address,
/// with per-peer RPC counters. Cloning is cheap (shared).
#[derive(Clone)]
pub struct Peers {
    inner: Arc<PeersInner>,
}

struct PeersInner {
    connect_timeout: Duration,
    /// Put on every call (see `credential.rs`).
    credential: Arc<Credential>,
    tls: Option<ClientTlsConfig>,
    peers: Mutex<HashMap<String, Peer>>,
}

#[derive(Clone)]
struct Peer {
    /// The channel, or why the address makes none (it stays that way).
    channel: Result<Channel, String>,
    counters: Arc<Counters>,
}

#[derive(Default)]
struct Counters {
    attempts: AtomicU64,
    failures: AtomicU64,
}

/// RPCs sent to one peer address since the node started (Raft and forwarded writes).
#[cfg(test)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStats {
    pub addr: String,
    pub attempts: u64,
    pub failures: u64,
}

/// What a write forwarded to another node came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Forwarded {
    /// The receiver was the leader and applied the command.
    Applied(CommandResponse),
    /// The receiver is not the leader; nothing was proposed.
    NotLeader {
        leader: Option<NodeId>,
        addr: Option<String>,
    },
}

impl Peers {
    /// `tls`: connect with TLS (mutual when it holds an identity); plain HTTP/2 without.
    pub fn new(
        connect_timeout: Duration,
        tls: Option<ClientTlsConfig>,
        credential: Arc<Credential>,
    ) -> Peers {
        Peers {
            inner: Arc::new(PeersInner {
                connect_timeout,
                credential,
                tls,
                peers: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The peer at `addr` ("host:port"), its channel created on first use.
    fn peer(&self, addr: &str) -> Peer {
        let mut peers = self
            .inner
            .peers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        peers
            .entry(addr.to_string())
            .or_insert_with(|| Peer {
                channel: self.channel(addr),
                counters: Arc::default(),
            })
            .clone()
    }

    fn channel(&self, addr: &str) -> Result<Channel, String> {
        let scheme = if self.inner.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let uri = if addr.contains("://") {
            addr.to_string()
        } else {
            format!("{scheme}://{addr}")
        };
        let mut endpoint = Endpoint::from_shared(uri)
            .map_err(|e| format!("bad peer address {addr:?}: {e}"))?
            .connect_timeout(self.inner.connect_timeout)
            .tcp_nodelay(true)
            // A peer that vanished without closing its connections (power loss,
            // partition) is noticed by the pings, and the channel reconnects.
            .http2_keep_alive_interval(Duration::from_secs(1))
            .keep_alive_timeout(self.inner.connect_timeout.max(Duration::from_secs(1)))
            .keep_alive_while_idle(true);
        if let Some(tls) = &self.inner.tls {
            endpoint = endpoint
                .tls_config(tls.clone())
                .map_err(|e| format!("peer {addr}: TLS: {e}"))?;
        }
        Ok(endpoint.connect_lazy())
    }

    /// RPC counters per peer address, sorted by address.
    #[cfg(test)]
    pub fn stats(&self) -> Vec<PeerStats> {
        let peers = self
            .inner
            .peers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut out: Vec<PeerStats> = peers
            .iter()
            .map(|(addr, p)| PeerStats {
                addr: addr.clone(),
                attempts: p.counters.attempts.load(Ordering::Relaxed),
                failures: p.counters.failures.load(Ordering::Relaxed),
            })
            .collect();
        out.sort_by(|a, b| a.addr.cmp(&b.addr));
        out
    }

    /// The cached channel to the node at `addr` (also used for calls to its client
    /// API: status and query fan-out, membership requests).
    pub fn channel_to(&self, addr: &str) -> Result<Channel, Status> {
        self.peer(addr).channel.map_err(Status::unavailable)
    }

    /// One beat to the node at `addr`; returns the id of the node that answered
    /// and whether it counts the sender as a member.
    pub async fn beat(
        &self,
        addr: &str,
        from: NodeId,
        from_addr: &str,
        state: super::liveness::BeatState,
        timeout: Duration,
    ) -> Result<(NodeId, bool, u64), Status> {
        let beat = BeatRequest {
            from,
            from_addr: from_addr.to_string(),
            ownership_version: state.applied,
            acting_version: state.acting,
            last_log_index: state.log_index,
            boot: state.boot,
            seq: state.seq,
            leader_silent_ms: Some(state.leader_silent_ms),
            command_level: super::types::COMMAND_LEVEL,
        };
        let r = self
            .unary(
                addr,
                beat,
                timeout,
                |mut c, r| async move { c.beat(r).await },
            )
            .await?;
        Ok((r.id, r.member, r.ownership_version))
    }

    /// One call of the Raft service to the node at `addr`: the credential on it,
    /// bounded by `timeout`; a refusal for the credential or the herd is recorded.
    async fn unary<M, R, F, Fut>(
        &self,
        addr: &str,
        msg: M,
        timeout: Duration,
        call: F,
    ) -> Result<R, Status>
    where
        F: FnOnce(RaftClient<Channel>, tonic::Request<M>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, Status>>,
    {
        let channel = self.channel_to(addr)?;
        let mut req = tonic::Request::new(msg);
        req.set_timeout(timeout);
        self.inner.credential.stamp(&mut req);
        let res = match tokio::time::timeout(timeout, call(RaftClient::new(channel), req)).await {
            Ok(res) => res.map(tonic::Response::into_inner),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "no answer from {addr} within {timeout:?}"
            ))),
        };
        self.note_refusal(addr, res.as_ref().err());
        res
    }

    /// A refusal for the credential or the herd is worth telling people about.
    fn note_refusal(&self, addr: &str, err: Option<&Status>) {
        if let Some(s) = err {
            if matches!(s.code(), Code::Unauthenticated | Code::PermissionDenied) {
                self.inner.credential.refused_by(addr, s);
            }
        }
    }

    /// Asks the node at `addr` who it is and whether it is in a herd; with
    /// `promise_to`, asks it to take part in the herd that node forms.
    pub async fn hello(
        &self,
        addr: &str,
        from: NodeId,
        promise_to: NodeId,
        timeout: Duration,
    ) -> Result<HelloReply, Status> {
        let hello = HelloRequest {
            from,
            to_addr: addr.to_string(),
            promise_to,
        };
        self.unary(
            addr,
            hello,
            timeout,
            |mut c, r| async move { c.hello(r).await },
        )
        .await
    }

    /// Asks the member at `addr` to add node `id`, reachable at `my_addr`.
    pub async fn join(
        &self,
        addr: &str,
        id: NodeId,
        my_addr: &str,
        timeout: Duration,
    ) -> Result<String, Status> {
        let join = JoinRequest {
            id,
            addr: my_addr.to_string(),
        };
        self.unary(
            addr,
            join,
            timeout,
            |mut c, r| async move { c.join(r).await },
        )
        .await
        .map(|r| r.message)
    }

    /// Sends a client write to the node at `addr` (the leader, as far as this node
    /// knows). A status of code `Unavailable` means the command did not reach a
    /// running Raft there.
    pub async fn forward(
        &self,
        addr: &str,
        cmd: &Command,
        timeout: Duration,
    ) -> Result<Forwarded, Status> {
        let peer = self.peer(addr);
        let channel = peer.channel.clone().map_err(Status::unavailable)?;
        let command = serde_json::to_vec(cmd)
            .map_err(|e| Status::invalid_argument(format!("encode command: {e}")))?;
        let mut req = tonic::Request::new(ForwardRequest { command });
        req.set_timeout(timeout);
        self.inner.credential.stamp(&mut req);
        peer.counters.attempts.fetch_add(1, Ordering::Relaxed);
        let mut client = RaftClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
        let res = match tokio::time::timeout(timeout, client.forward(req)).await {
            Ok(res) => res,
            Err(_) => Err(Status::deadline_exceeded(format!(
                "no answer from {addr} within {timeout:?}"
            ))),
        };
        self.note_refusal(addr, res.as_ref().err());
        let reply = res
            .inspect_err(|_| {
                peer.counters.failures.fetch_add(1, Ordering::Relaxed);
            })?
            .into_inner();
        match reply.result {
            Some(forward_reply::Result::Response(bytes)) => serde_json::from_slice(&bytes)
                .map(Forwarded::Applied)
                .map_err(|e| Status::internal(format!("{addr}: bad response: {e}"))),
            Some(forward_reply::Result::NotLeader(n)) => Ok(Forwarded::NotLeader {
                leader: n.leader_id,
                addr: Some(n.leader_addr).filter(|a| !a.is_empty()),
            }),
            None => Err(Status::internal(format!("{addr}: empty forward reply"))),
        }
    }
}

/// openraft's network factory: hands out a [`PeerClient`] per target on the
/// shared channels.
pub struct Network {
    id: NodeId,
    peers: Peers,
    backoff_start: Duration,
    backoff_max: Duration,
}

impl Network {
    /// `backoff_start`..`backoff_max`: the wait before the next RPC to an
    /// unreachable peer doubles from the first to the second.
    pub fn new(id: NodeId, peers: Peers, backoff_start: Duration, backoff_max: Duration) -> Self {
        Network {
            id,
            peers,
            backoff_start,
            backoff_max: backoff_max.max(backoff_start),
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient {
            id: self.id,
            target,
            node: node.clone(),
            peer: self.peers.peer(&node.addr),
            peers: self.peers.clone(),
            backoff_start: self.backoff_start,
            backoff_max: self.backoff_max,
        }
    }
}

/// The connection of this node to one peer, as openraft uses it.
pub struct PeerClient {
    id: NodeId,
    target: NodeId,
    node: BasicNode,
    peer: Peer,
    /// For the credential and refusals.
    peers: Peers,
    backoff_start: Duration,
    backoff_max: Duration,
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

impl PeerClient {
    /// One RPC: counts it, bounds it by the option's TTL, decodes the remote result.
    async fn call<M, F, Fut, T, E>(
        &self,
        action: RPCTypes,
        option: &RPCOption,
        msg: M,
        send: F,
    ) -> RpcResult<T, E>
    where
        F: FnOnce(RaftClient<Channel>, tonic::Request<M>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<RaftReply>, Status>>,
        T: DeserializeOwned,
        E: StdError + DeserializeOwned,
    {
        self.peer.counters.attempts.fetch_add(1, Ordering::Relaxed);
        let res = self.call_inner(action, option, msg, send).await;
        if res.is_err() {
            self.peer.counters.failures.fetch_add(1, Ordering::Relaxed);
        }
        res
    }

    async fn call_inner<M, F, Fut, T, E>(
        &self,
        action: RPCTypes,
        option: &RPCOption,
        msg: M,
        send: F,
    ) -> RpcResult<T, E>
    where
        F: FnOnce(RaftClient<Channel>, tonic::Request<M>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<RaftReply>, Status>>,
        T: DeserializeOwned,
        E: StdError + DeserializeOwned,
    {
        let channel = match &self.peer.channel {
            Ok(c) => c.clone(),
            Err(e) => return Err(Unreachable::new(&AnyError::error(e)).into()),
        };
        let ttl = option.hard_ttl();
        let client = RaftClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let mut req = tonic::Request::new(msg);
        req.set_timeout(ttl);
        self.peers.inner.credential.stamp(&mut req);
        let reply = match tokio::time::timeout(ttl, send(client, req)).await {
            Ok(Ok(reply)) => reply.into_inner(),
            Ok(Err(status)) => {
                self.peers.note_refusal(&self.node.addr, Some(&status));
                return Err(self.status_error(action, ttl, status));
            }
            Err(_) => return Err(self.timeout(action, ttl)),
        };
        let remote: Result<T, RaftError<NodeId, E>> = serde_json::from_slice(&reply.payload)
            .map_err(|e| {
                // A peer whose answers this node cannot read runs an incompatible
                // version: retrying at once would not help, so back off.
                let e = AnyError::error(format!(
                    "{action} reply from node {} ({}) does not decode: {e}",
                    self.target, self.node.addr
                ));
                RPCError::Unreachable(Unreachable::new(&e))
            })?;
        remote.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))
        })
    }

    fn timeout<E: StdError>(
        &self,
        action: RPCTypes,
        ttl: Duration,
    ) -> RPCError<NodeId, BasicNode, E> {
        RPCError::Timeout(Timeout {
            action,
            id: self.id,
            target: self.target,
            timeout: ttl,
        })
    }

    /// Maps a failed call: unreachable (back off), timeout, or another network error.
    fn status_error<E: StdError>(
        &self,
        action: RPCTypes,
        ttl: Duration,
        status: Status,
    ) -> RPCError<NodeId, BasicNode, E> {
        match status.code() {
            Code::DeadlineExceeded | Code::Cancelled => self.timeout(action, ttl),
            // No connection (refused, timed out, reset), a peer that is going away
            // or overloaded, one without the Raft service or refusing this node.
            Code::Unavailable
            | Code::Unimplemented
            | Code::ResourceExhausted
            | Code::Unauthenticated
            | Code::PermissionDenied => self.unreachable(status),
            // A status with a source was made here from a transport error (a
            // connection that broke mid-call); one sent by the peer has none.
            _ if status.source().is_some() => self.unreachable(status),
            _ => RPCError::Network(NetworkError::new(&AnyError::error(format!(
                "node {} ({}): {status}",
                self.target, self.node.addr
            )))),
        }
    }

    fn unreachable<E: StdError>(&self, status: Status) -> RPCError<NodeId, BasicNode, E> {
        RPCError::Unreachable(Unreachable::new(&AnyError::error(format!(
            "node {} ({}): {}: {}",
            self.target,
            self.node.addr,
            status.code(),
            status.message()
        ))))
    }
}

fn encode<T: Serialize>(what: RPCTypes, v: &T) -> Result<Vec<u8>, NetworkError> {
    serde_json::to_vec(v)
        .map_err(|e| NetworkError::new(&AnyError::error(format!("encode {what}: {e}"))))
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        let entries = rpc.entries.len();
        let payload = encode(RPCTypes::AppendEntries, &rpc)?;
        if payload.len() > MAX_MESSAGE_BYTES && entries > 1 {
            return Err(PayloadTooLarge::new_entries_hint((entries / 2) as u64).into());
        }
        self.call(
            RPCTypes::AppendEntries,
            &option,
            RaftRequest { payload },
            |mut c, r| async move { c.append_entries(r).await },
        )
        .await
    }

    async fn install_snapshot(
        &mut self,
        mut rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        let data = std::mem::take(&mut rpc.data);
        let payload = encode(RPCTypes::InstallSnapshot, &rpc)?;
        self.call(
            RPCTypes::InstallSnapshot,
            &option,
            SnapshotChunk { payload, data },
            |mut c, r| async move { c.install_snapshot(r).await },
        )
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, openraft::error::Infallible> {
        let payload = encode(RPCTypes::Vote, &rpc)?;
        self.call(
            RPCTypes::Vote,
            &option,
            RaftRequest { payload },
            |mut c, r| async move { c.vote(r).await },
        )
        .await
    }

    /// Waits doubling from `backoff_start` up to `backoff_max` between RPCs to an
    /// unreachable peer; openraft starts over after the first success.
    fn backoff(&self) -> Backoff {
        let max = self.backoff_max;
        Backoff::new(std::iter::successors(Some(self.backoff_start), move |d| {
            Some((*d * 2).min(max))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn backoff_doubles_up_to_the_cap() {
        let peers = Peers::new(
            Duration::from_secs(1),
            None,
            Credential::in_memory(1, false, None),
        );
        let c = PeerClient {
            id: 1,
            target: 2,
            node: BasicNode::new("127.0.0.1:1"),
            peer: peers.peer("127.0.0.1:1"),
            peers: peers.clone(),
            backoff_start: Duration::from_millis(100),
            backoff_max: Duration::from_millis(500),
        };
        let waits: Vec<u128> = c.backoff().take(5).map(|d| d.as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 500, 500]);
    }

    #[tokio::test]
    async fn statuses_map_to_backoff_or_retry() {
        let peers = Peers::new(
            Duration::from_secs(1),
            None,
            Credential::in_memory(1, false, None),
        );
        let c = PeerClient {
            id: 1,
            target: 2,
            node: BasicNode::new("127.0.0.1:1"),
            peer: peers.peer("127.0.0.1:1"),
            peers: peers.clone(),
            backoff_start: Duration::from_millis(100),
            backoff_max: Duration::from_millis(500),
        };
        let ttl = Duration::from_millis(100);
        let map = |s| c.status_error::<openraft::error::Infallible>(RPCTypes::Vote, ttl, s);
        assert!(matches!(
            map(Status::unavailable("tcp connect error")),
            RPCError::Unreachable(_)
        ));
        assert!(matches!(
            map(Status::unimplemented("no Raft here")),
            RPCError::Unreachable(_)
        ));
        assert!(matches!(
            map(Status::deadline_exceeded("late")),
            RPCError::Timeout(_)
        ));
        assert!(matches!(
            map(Status::internal("oops")),
            RPCError::Network(_)
        ));
    }

    #[tokio::test]
    async fn one_channel_per_address() {
        let peers = Peers::new(
            Duration::from_secs(1),
            None,
            Credential::in_memory(1, false, None),
        );
        let a = peers.peer("127.0.0.1:7401");
        let b = peers.peer("127.0.0.1:7401");
        assert!(Arc::ptr_eq(&a.counters, &b.counters));
        assert!(peers.peer("not an address").channel.is_err());
        assert_eq!(peers.stats().len(), 2);
    }
}
