//! One node of the herd's Raft group: the redb store, openraft and the tonic
//! transport put together.
//!
//! The caller serves [`ClusterNode::service`] on the node's gRPC address (next to
//! the client API) and, on a brand-new herd, calls [`ClusterNode::init`] on one
//! node. A node that restarts with its data directory only calls
//! [`ClusterNode::start`]: its vote, log and membership are in the store, and the
//! leader brings it up to date (never `init` or `add_learner` it again).
//!
//! Writes may be proposed on any node: a follower forwards them to the leader
//! (the `Forward` rpc) and, while there is no leader, retries until
//! [`ClusterConfig::write_timeout`]. A write is retried only when it failed before
//! the leader took it or when the connection failed; in the rare case of a
//! connection lost after the leader took it, the command can apply twice. Herd's
//! commands tolerate that (the same spec, ownership map, alerts, sent keys or
//! health again; only a version number moves on).
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herd_proto::v1::raft_server::RaftServer;
use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::{BasicNode, Raft, RaftMetrics, ServerState, SnapshotPolicy};
use tokio::sync::watch;
use tonic::transport::ClientTlsConfig;
use tonic::Code;

use super::credential::Credential;
use super::liveness::Liveness;
#[cfg(test)]
use super::network::PeerStats;
use super::network::{Forwarded, Network, Peers};
use super::service::RaftService;
use super::store::{self, StoreError};
use super::types::{ClusterState, Command, CommandResponse, NodeId, TypeConfig};

/// Raft timing and transport settings of a node.
///
/// The defaults are the validated ones: heartbeat 100 ms, election timeout
/// 500–1000 ms (a new leader about 1.7 s after the old one dies on loopback; 50 /
/// 150–300 ms gives about 0.6 s but leaves less room for a slow fsync). In
/// openraft 0.9 an AppendEntries RPC times out after one heartbeat interval, so
/// the heartbeat must stay above the worst round trip including a follower's fsync.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Nodes of different clusters refuse each other's messages only by node id and
    /// term; the name shows in openraft's logs.
    pub cluster_name: String,
    pub heartbeat: Duration,
    pub election_min: Duration,
    pub election_max: Duration,
    /// Bound on opening a TCP (and TLS) connection to a peer.
    pub connect_timeout: Duration,
    /// How long [`ClusterNode::write`] (and membership changes) may take, waiting
    /// for a leader included.
    pub write_timeout: Duration,
    /// Build a snapshot (and let the log before it be purged) every this many
    /// applied entries.
    pub snapshot_every: u64,
    /// TLS towards the peers (mutual when it carries an identity); plain without.
    pub client_tls: Option<ClientTlsConfig>,
    /// Refuse Raft calls that carry no client certificate (set with mTLS).
    pub require_peer_cert: bool,
    /// `cluster.secret_file`: the herd secret every member holds (see `credential.rs`).
    pub secret_file: Option<std::path::PathBuf>,
    /// `cluster.peers` is set: the herd forms from configuration (`bootstrap.rs`),
    /// and nothing but `cluster init` makes this node a herd of one.
    pub declarative: bool,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            cluster_name: "herd".into(),
            heartbeat: Duration::from_millis(100),
            election_min: Duration::from_millis(500),
            election_max: Duration::from_millis(1000),
            connect_timeout: Duration::from_secs(1),
            write_timeout: Duration::from_secs(5),
            snapshot_every: 5000,
            client_tls: None,
            require_peer_cert: false,
            secret_file: None,
            declarative: false,
        }
    }
}

/// Largest snapshot chunk sent in one InstallSnapshot RPC.
const SNAPSHOT_CHUNK_BYTES: u64 = 1 << 20;

impl ClusterConfig {
    /// Checks the relations openraft needs (it counts whole milliseconds).
    pub fn validate(&self) -> Result<(), ClusterError> {
        let bad = |m: String| Err(ClusterError::Config(m));
        let ms = |d: Duration| d.as_millis();
        if ms(self.heartbeat) == 0 {
            return bad("heartbeat must be at least 1 ms".into());
        }
        if self.election_min <= self.heartbeat {
            return bad(format!(
                "election_min ({:?}) must be longer than heartbeat ({:?})",
                self.election_min, self.heartbeat
            ));
        }
        if ms(self.election_min) >= ms(self.election_max) {
            return bad(format!(
                "election_min ({:?}) must be shorter than election_max ({:?})",
                self.election_min, self.election_max
            ));
        }
        if self.connect_timeout.is_zero() {
            return bad("connect_timeout must be above zero".into());
        }
        if self.write_timeout.is_zero() {
            return bad("write_timeout must be above zero".into());
        }
        if self.snapshot_every == 0 {
            return bad("snapshot_every must be at least 1".into());
        }
        Ok(())
    }

    /// The openraft configuration these settings make.
    pub fn raft_config(&self) -> Result<openraft::Config, ClusterError> {
        self.validate()?;
        let ms = |d: Duration| d.as_millis().min(u64::MAX as u128) as u64;
        let heartbeat = ms(self.heartbeat);
        openraft::Config {
            cluster_name: self.cluster_name.clone(),
            heartbeat_interval: heartbeat,
            election_timeout_min: ms(self.election_min),
            election_timeout_max: ms(self.election_max),
            // Per snapshot chunk; a chunk is at most SNAPSHOT_CHUNK_BYTES.
            install_snapshot_timeout: heartbeat.max(2000),
            snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_every),
            // Elections are started by cluster::election only, with a pre-vote on
            // beats: openraft's own timer would raise the term of a node cut off
            // alone, which deposes a working leader when it comes back.
            enable_elect: false,
            ..Default::default()
        }
        .validate()
        .map_err(|e| ClusterError::Config(e.to_string()))
    }
}

/// What a cluster operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster config: {0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// This node's Raft stopped (shut down, or a storage failure stopped it).
    #[error("raft stopped: {0}")]
    Stopped(String),
    /// Membership changes are made on the leader.
    #[error("node {node} is not the leader ({})", leader_text(*.leader, .addr.as_deref()))]
    NotLeader {
        node: NodeId,
        leader: Option<NodeId>,
        addr: Option<String>,
    },
    /// Not done within the time allowed; a write may still be applied later.
    #[error("{what} did not complete within {timeout:?}{}", last.as_deref().map(|l| format!(" (last: {l})")).unwrap_or_default())]
    Timeout {
        what: &'static str,
        timeout: Duration,
        last: Option<String>,
    },
    /// The leader answered a forwarded write with an error.
    #[error("leader {leader} at {addr}: {message}")]
    Forward {
        leader: NodeId,
        addr: String,
        message: String,
    },
    /// Raft refused the request (an init naming no voter, a membership change
    /// while another is in progress, ...).
    #[error("{0}")]
    Rejected(String),
}

fn leader_text(leader: Option<NodeId>, addr: Option<&str>) -> String {
    match (leader, addr) {
        (Some(l), Some(a)) => format!("leader is {l} at {a}"),
        (Some(l), None) => format!("leader is {l}"),
        _ => "no leader known".into(),
    }
}

/// One node of the herd's Raft group. Cloning is cheap (all clones drive the same
/// Raft).
#[derive(Clone)]
pub struct ClusterNode {
    id: NodeId,
    addr: String,
    raft: Raft<TypeConfig>,
    state: watch::Receiver<Arc<ClusterState>>,
    peers: Peers,
    liveness: Arc<Liveness>,
    config: ClusterConfig,
    credential: Arc<Credential>,
    /// Declarative membership: the node this one promised to form a herd with (or
    /// itself while it forms one), and when; see `bootstrap.rs`.
    pub(super) promise: Arc<std::sync::Mutex<Option<(NodeId, Instant)>>>,
    /// What declarative membership waits for, for `herd status` (empty: nothing).
    bootstrap: Arc<std::sync::Mutex<String>>,
    /// Set while this node has lost the herd's quorum (see `quorum.rs`).
    quorum_lost: Arc<std::sync::Mutex<String>>,
    /// The Raft file, for backups and compactions, and its directory.
    raft_db: crate::store::SharedDb,
    raft_dir: std::path::PathBuf,
}

/// How long a compaction of the Raft file waits for a moment with no
/// transaction open on it before it gives up until the next time.
pub const RAFT_COMPACT_TRIES_FOR: Duration = Duration::from_secs(5);

/// How often a node looks whether its Raft file is worth compacting.
pub const RAFT_COMPACT_EVERY: Duration = Duration::from_secs(600);

impl std::fmt::Debug for ClusterNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterNode")
            .field("id", &self.id)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl ClusterNode {
    /// Opens `dir/raft.redb` (created when missing) and starts Raft as node `id`,
    /// reachable by its peers at `addr` ("host:port" of the gRPC server that will
    /// serve [`service`](Self::service)).
    pub async fn start(
        id: NodeId,
        addr: impl Into<String>,
        dir: impl AsRef<Path>,
        config: ClusterConfig,
    ) -> Result<ClusterNode, ClusterError> {
        let raft_config = config.raft_config()?;
        let credential = Credential::load(
            id,
            config.require_peer_cert,
            config.secret_file.as_deref(),
            dir.as_ref(),
        )
        .map_err(ClusterError::Config)?;
        let (log, sm) = store::open_async(dir.as_ref().to_path_buf()).await?;
        let raft_db = log.database();
        let state = sm.subscribe();
        let peers = Peers::new(
            config.connect_timeout,
            config.client_tls.clone(),
            credential.clone(),
        );
        // Back off from an unreachable peer starting at one heartbeat, at most
        // election_min between attempts: a peer coming back hears from the leader
        // well before its own election timer (lease + election timeout) runs out.
        let network = Network::new(id, peers.clone(), config.heartbeat, config.election_min);
        let raft = Raft::new(id, Arc::new(raft_config), network, log, sm)
            .await
            .map_err(|e| ClusterError::Stopped(e.to_string()))?;
        let node = ClusterNode {
            id,
            addr: addr.into(),
            raft,
            state,
            peers,
            liveness: Liveness::new(id),
            config,
            credential,
            promise: Arc::default(),
            bootstrap: Arc::default(),
            quorum_lost: Arc::default(),
            raft_db,
            raft_dir: dir.as_ref().to_path_buf(),
        };
        node.follow_herd_id();
        Ok(node)
    }

    /// What declarative membership waits for; empty once this node is a member.
    pub fn bootstrap_status(&self) -> String {
        if self.in_herd() {
            return String::new();
        }
        self.bootstrap
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(super) fn set_bootstrap_status(&self, text: String) {
        *self.bootstrap.lock().unwrap_or_else(|p| p.into_inner()) = text;
    }

    /// Why this node has no quorum, since when; empty while it has one.
    pub fn quorum_lost(&self) -> String {
        self.quorum_lost
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(super) fn set_quorum_lost(&self, text: String) {
        *self.quorum_lost.lock().unwrap_or_else(|p| p.into_inner()) = text;
    }

    /// The credential this node presents and checks (see `credential.rs`).
    pub fn credential(&self) -> &Arc<Credential> {
        &self.credential
    }

    /// Keeps the credential's herd id in step with the applied state; a herd made
    /// before herd ids gets one from whichever node proposes it first.
    fn follow_herd_id(&self) {
        let (mut state, credential, node) =
            (self.state.clone(), self.credential.clone(), self.clone());
        tokio::spawn(async move {
            let mut proposed = false;
            loop {
                // One watch borrow at a time: holding the state's while taking the
                // metrics' can deadlock against Raft's writers of both.
                let id = state.borrow_and_update().herd_id.clone();
                let in_herd = !node.members().is_empty();
                match id {
                    Some(id) => credential.set_herd_id(&id),
                    None if in_herd && !proposed => {
                        proposed = true;
                        node.spawn_herd_id_writer();
                    }
                    None => {}
                }
                if state.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    /// Waits until the herd id is recorded in the applied state (a herd just
    /// initialised records it with its first write); returns it.
    pub async fn wait_herd_id(&self, timeout: Duration) -> Option<String> {
        let mut state = self.state.clone();
        let res = tokio::time::timeout(timeout, state.wait_for(|s| s.herd_id.is_some())).await;
        match res {
            Ok(Ok(s)) => s.herd_id.clone(),
            _ => None,
        }
    }

    /// Proposes the herd id this node knows (or a new one) until the herd has one.
    fn spawn_herd_id_writer(&self) {
        let node = self.clone();
        tokio::spawn(async move {
            let id = node
                .credential
                .herd_id()
                .unwrap_or_else(super::credential::new_herd_id);
            loop {
                if node.state.borrow().herd_id.is_some() {
                    return;
                }
                match node.write(Command::HerdId { id: id.clone() }).await {
                    Ok(_) => return,
                    Err(ClusterError::Stopped(_)) => return,
                    Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
                }
            }
        });
    }

    /// Who this node heard from and when (fed by beats; see [`Liveness`]).
    pub fn liveness(&self) -> &Arc<Liveness> {
        &self.liveness
    }

    /// The shared channels to the peers.
    pub fn peers(&self) -> &Peers {
        &self.peers
    }

    /// The settings this node runs with.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// Members of the applied membership (voters and learners) with their addresses.
    pub fn members(&self) -> Vec<(NodeId, BasicNode)> {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.membership_config
            .membership()
            .nodes()
            .map(|(id, n)| (*id, n.clone()))
            .collect()
    }

    /// Voters of the applied membership.
    /// The command level every member of the herd applies: the lowest of the
    /// members' ([`Liveness::level_of`]: from their beats), this node's own when
    /// it is in no herd.
    pub fn herd_level(&self) -> u32 {
        let liveness = self.liveness();
        (self.members().into_iter())
            .map(|(id, _)| liveness.level_of(id))
            .min()
            .unwrap_or(super::types::COMMAND_LEVEL)
    }

    /// Refuses a command of a level some member cannot apply: a node of an older
    /// build would stop at it (see [`super::types::COMMAND_LEVEL`]).
    fn check_level(&self, cmd: &Command) -> Result<(), ClusterError> {
        if cmd.level() <= 1 {
            return Ok(());
        }
        let herd = self.herd_level();
        if cmd.level() > herd {
            return Err(ClusterError::Rejected(format!(
                "a member of the herd applies herd commands up to level {herd} only, and this one is of level {} (upgrade every node first)",
                cmd.level()
            )));
        }
        Ok(())
    }

    pub fn voters(&self) -> BTreeSet<NodeId> {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.membership_config.membership().voter_ids().collect()
    }

    /// This node's beats to the other members each `interval` (see
    /// [`Liveness`]), and the election it starts when the leader falls silent (see
    /// `election.rs`), until `cancel`.
    pub fn beats(
        &self,
        interval: Duration,
        cancel: tokio_util::sync::CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let me = self.clone();
        self.liveness.set_beat_interval(interval);
        let beats = super::liveness::beat_members(
            self.liveness.clone(),
            self.peers.clone(),
            self.addr.clone(),
            move || me.members(),
            interval,
            cancel.clone(),
        );
        let elections = super::election::run(
            self.raft.clone(),
            self.liveness.clone(),
            self.config.heartbeat,
            self.config.election_min,
            self.config.election_max,
            cancel,
        );
        async move {
            tokio::join!(beats, elections);
        }
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The address peers reach this node at.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The openraft handle, for what this type does not wrap.
    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    /// The Raft gRPC service of this node, to add to its tonic server.
    pub fn service(&self) -> RaftServer<RaftService> {
        RaftService::server(self.clone(), self.config.require_peer_cert)
    }

    /// Makes a brand-new herd of `members` (all voters; include this node).
    /// Returns `false`, changing nothing, when this node already belongs to a
    /// cluster (it was initialised before or has received a leader's log).
    pub async fn init(&self, members: BTreeMap<NodeId, BasicNode>) -> Result<bool, ClusterError> {
        let initialized = self
            .raft
            .is_initialized()
            .await
            .map_err(|f| ClusterError::Stopped(f.to_string()))?;
        if initialized {
            return Ok(false);
        }
        // The herd's credential first: its secret (without TLS or a configured one),
        // and its id, recorded through Raft as soon as there is a leader.
        let credential = self.credential.clone();
        tokio::task::spawn_blocking(move || credential.ensure_secret())
            .await
            .map_err(|e| ClusterError::Stopped(e.to_string()))?
            .map_err(|e| ClusterError::Config(format!("cannot keep the herd secret: {e}")))?;
        // The id first, so that whatever proposes it once Raft runs proposes this one.
        let made_id = self.credential.herd_id().is_none().then(|| {
            let id = super::credential::new_herd_id();
            self.credential.set_herd_id(&id);
            id
        });
        let res = self.raft.initialize(members).await;
        if res.is_err() && made_id.is_some() {
            self.credential.clear_herd_id();
        }
        match res {
            Ok(()) => {
                if let Some(id) = made_id {
                    tracing::info!(herd = %id, "initialised a new herd");
                }
                self.spawn_herd_id_writer();
                Ok(true)
            }
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(false),
            Err(RaftError::APIError(e)) => Err(ClusterError::Rejected(e.to_string())),
            Err(RaftError::Fatal(f)) => Err(ClusterError::Stopped(f.to_string())),
        }
    }

    /// Proposes `cmd` and waits until it is applied (committed by a majority);
    /// on a follower the write goes to the leader. Returns what applying it gave.
    pub async fn write(&self, cmd: Command) -> Result<CommandResponse, ClusterError> {
        self.check_level(&cmd)?;
        let timeout = self.config.write_timeout;
        let deadline = Instant::now() + timeout;
        let timed_out = |last: Option<String>| ClusterError::Timeout {
            what: "write",
            timeout,
            last,
        };
        let mut metrics = self.raft.metrics();
        // The leader to try next, when a node named it.
        let mut hint: Option<(NodeId, String)> = None;
        let mut last: Option<String> = None;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(timed_out(last));
            }
            let (leader, addr) = match hint.take() {
                Some(h) => h,
                None => {
                    let res = tokio::time::timeout(remaining, self.raft.client_write(cmd.clone()))
                        .await
                        .map_err(|_| timed_out(last.clone()))?;
                    match res {
                        Ok(r) => return Ok(r.data),
                        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                            match (f.leader_id, f.leader_node) {
                                (Some(l), Some(n)) if l != self.id => (l, n.addr),
                                _ => {
                                    // No leader yet (an election is on): wait for news.
                                    last = Some("no leader".into());
                                    self.wait_leader_news(&mut metrics, None, deadline).await;
                                    continue;
                                }
                            }
                        }
                        Err(RaftError::APIError(e)) => {
                            return Err(ClusterError::Rejected(e.to_string()))
                        }
                        Err(RaftError::Fatal(f)) => {
                            return Err(ClusterError::Stopped(f.to_string()))
                        }
                    }
                }
            };
            match self.peers.forward(&addr, &cmd, remaining).await {
                Ok(Forwarded::Applied(r)) => return Ok(r),
                Ok(Forwarded::NotLeader {
                    leader: Some(l),
                    addr: Some(a),
                }) if l != self.id && l != leader => {
                    last = Some(format!("node {leader} at {addr}: not the leader"));
                    hint = Some((l, a));
                }
                Ok(Forwarded::NotLeader { .. }) => {
                    last = Some(format!("node {leader} at {addr}: not the leader"));
                    self.wait_leader_news(&mut metrics, Some(leader), deadline)
                        .await;
                }
                Err(s) if s.code() == Code::Unavailable => {
                    // Not reached, or its Raft is stopped: the command was not
                    // proposed there. Wait for the herd to settle on a leader.
                    last = Some(format!("node {leader} at {addr}: {}", s.message()));
                    self.wait_leader_news(&mut metrics, Some(leader), deadline)
                        .await;
                }
                Err(s) if s.code() == Code::DeadlineExceeded || s.code() == Code::Cancelled => {
                    return Err(timed_out(Some(format!(
                        "node {leader} at {addr}: {}",
                        s.message()
                    ))))
                }
                Err(s) => {
                    return Err(ClusterError::Forward {
                        leader,
                        addr,
                        message: format!("{}: {}", s.code(), s.message()),
                    })
                }
            }
        }
    }

    /// Proposes a decision of this node as leader, and waits until it is applied:
    /// never forwarded. A node that was leader and is not any more (paused past its
    /// term, cut off, outvoted) must not have what it decided then committed by
    /// the next leader: the error says it is not the leader, and the decision is
    /// the next leader's to make again. An entry it appended in its own term is
    /// committed in that term or not at all.
    pub async fn write_as_leader(&self, cmd: Command) -> Result<CommandResponse, ClusterError> {
        self.check_level(&cmd)?;
        let timeout = self.config.write_timeout;
        let res = tokio::time::timeout(timeout, self.raft.client_write(cmd))
            .await
            .map_err(|_| ClusterError::Timeout {
                what: "leader's write",
                timeout,
                last: None,
            })?;
        match res {
            Ok(r) => Ok(r.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(ClusterError::NotLeader {
                    node: self.id,
                    leader: f.leader_id,
                    addr: f.leader_node.map(|n| n.addr),
                })
            }
            Err(RaftError::APIError(e)) => Err(ClusterError::Rejected(e.to_string())),
            Err(RaftError::Fatal(f)) => Err(ClusterError::Stopped(f.to_string())),
        }
    }

    /// Waits for news of a leader other than `tried` (whom this node knows as
    /// leader), at most one heartbeat and never past `deadline`.
    async fn wait_leader_news(
        &self,
        metrics: &mut watch::Receiver<RaftMetrics<NodeId, BasicNode>>,
        tried: Option<NodeId>,
        deadline: Instant,
    ) {
        let until = deadline.min(Instant::now() + self.config.heartbeat);
        loop {
            let leader = metrics.borrow_and_update().current_leader;
            if leader.is_some() && leader != tried {
                return;
            }
            match tokio::time::timeout_at(until.into(), metrics.changed()).await {
                Ok(Ok(())) => continue,
                _ => return,
            }
        }
    }

    /// openraft's metrics of this node (role, term, leader, log positions, membership).
    pub fn metrics(&self) -> watch::Receiver<RaftMetrics<NodeId, BasicNode>> {
        self.raft.metrics()
    }

    /// The leader this node knows of.
    pub fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// Copies the herd's state as this node holds it (its Raft file, from one read
    /// transaction) into `dst`, a backup being written. Blocking.
    pub fn backup_into(
        &self,
        dst: &redb::Database,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64, redb::Error> {
        store::backup_into(&self.raft_db.get(), dst, progress)
    }

    /// Compacts this node's Raft file while the node runs: always, or with
    /// `min_bytes` only when it is that big or more and less than 40 % in use. The file is
    /// taken alone only once no transaction is open on it — a compaction never
    /// queues ahead of the log and the state machine (their next transactions
    /// would wait behind it for as long as a backup reads) — tried for
    /// [`RAFT_COMPACT_TRIES_FOR`]; the Raft storage then waits for the
    /// compaction itself. `None`: nothing to do, or the file stayed busy. Blocking.
    pub fn compact_raft(
        &self,
        min_bytes: Option<u64>,
    ) -> Result<Option<crate::store::CompactOutcome>, String> {
        store::compact_live(
            &self.raft_db,
            &self.raft_dir.join(store::FILE_NAME),
            min_bytes,
            RAFT_COMPACT_TRIES_FOR,
        )
    }

    /// Every [`RAFT_COMPACT_EVERY`], compacts the Raft file when it is sparse (see
    /// [`ClusterNode::compact_raft`]): a storm's log and alerts leave free pages
    /// behind once purged and forgotten.
    pub async fn compact_raft_when_sparse(
        self,
        min_bytes: u64,
        cancel: tokio_util::sync::CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(RAFT_COMPACT_EVERY) => {}
            }
            // A leader of others does not hold its log for a compaction: its
            // followers would hear no heartbeat meanwhile.
            if self.is_leader() && self.voters().len() > 1 {
                continue;
            }
            let node = self.clone();
            let done =
                tokio::task::spawn_blocking(move || node.compact_raft(Some(min_bytes))).await;
            if let Ok(Err(e)) = done {
                tracing::warn!(error = %e, "cannot compact raft.redb; going on");
            }
        }
    }

    /// The Raft term this node is in.
    pub fn term(&self) -> u64 {
        self.raft.metrics().borrow().current_term
    }

    /// Whether this node is the leader now (as far as it knows).
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// Waits until this node knows a leader; returns it.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<NodeId, ClusterError> {
        let mut m = self.raft.metrics();
        let res = tokio::time::timeout(timeout, async {
            loop {
                if let Some(l) = m.borrow_and_update().current_leader {
                    return Ok(l);
                }
                if m.changed().await.is_err() {
                    return Err(ClusterError::Stopped("raft metrics closed".into()));
                }
            }
        })
        .await;
        res.unwrap_or(Err(ClusterError::Timeout {
            what: "leader election",
            timeout,
            last: None,
        }))
    }

    /// The applied cluster state; it changes as entries are applied.
    pub fn state(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.state.clone()
    }

    /// RPC counters per peer address.
    #[cfg(test)]
    pub fn peer_stats(&self) -> Vec<PeerStats> {
        self.peers.stats()
    }

    /// Stops Raft (its timers, replication and the state machine); everything
    /// accepted is already durable. The caller stops the gRPC server.
    pub async fn shutdown(&self) -> Result<(), ClusterError> {
        self.raft
            .shutdown()
            .await
            .map_err(|e| ClusterError::Stopped(format!("raft task failed: {e}")))
    }
}

#[cfg(test)]
mod tests;
