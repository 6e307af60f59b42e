//! The one place that wires a node. `Node::build` makes every part that can fail
//! to start (the store, the credential and TLS, Raft, the collectors' settings);
//! `Node::run` starts them in the order below, waits for the shutdown signal, and
//! stops them in reverse order, each within its own deadline ([`parts::Parts`]):
//!
//! | start order | part | stops (reverse) within |
//! |---|---|---|
//! | 1 | store: closed last, its final commit | 15 s |
//! | 2 | Raft (its own tasks) | 5 s |
//! | 3 | gRPC: client API and the herd's Raft service, one port | 3 s |
//! | 4 | store flush: samples reach the disk before the API goes | 10 s |
//! | 5 | herd tasks: bootstrap, beats, ownership, controller, alert replication, fencing, silences, quorum watch, pauses, the initial fleet | 3 s |
//! | 6 | notifications (the outbox) | 3 s |
//! | 7 | rules | 2 s |
//! | 8 | collectors (a command in flight ends at its own timeout) | 8 s |
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio_util::sync::CancellationToken;

use crate::api::auth::TokenError;
use crate::api::{HerdApi, NodeIdentity};
use crate::cluster::controller::{self, ControllerConfig};
use crate::cluster::node::ClusterError;
use crate::cluster::node::{ClusterConfig, ClusterNode};
use crate::cluster::types::{Command, NodeRecord, ACTION_ALREADY_RUN};
use crate::cluster::ApplyError;
use crate::cluster::FleetState;
use crate::collector::stats::ScrapeStats;
use crate::collector::{CollectorCtx, StateBoard, StatusBoard};
use crate::config::{expand_home, NodeConfig};
use crate::notify::worker::Notifier;
use crate::ownership::{self, OwnedRx, OwnedTx};
use crate::rules::action::{ActionClaim, Claim};
use crate::rules::runner::{AlertDelta, Input, RulesHandle};
use crate::store::{Store, StoreError, StoreOptions};
use crate::tls::{NodeTls, TlsError};
use crate::transport::{SshSettings, Transports};

mod initial;
mod os;
pub mod parts;
mod sd_notify;

pub use os::{current_user, signals};
use parts::{Parts, StopReport};

/// How often pauses with an end are checked.
const PAUSE_CHECK: Duration = Duration::from_secs(1);

/// Each part's deadline when the node stops (see the table above).
const STORE_CLOSE_DEADLINE: Duration = Duration::from_secs(15);
const RAFT_STOP_DEADLINE: Duration = Duration::from_secs(5);
const API_STOP_DEADLINE: Duration = Duration::from_secs(3);
const STORE_FLUSH_DEADLINE: Duration = Duration::from_secs(10);
const HERD_TASKS_DEADLINE: Duration = Duration::from_secs(3);
const NOTIFY_STOP_DEADLINE: Duration = Duration::from_secs(3);
const RULES_STOP_DEADLINE: Duration = Duration::from_secs(2);
const COLLECTOR_STOP_DEADLINE: Duration = Duration::from_secs(8);

/// Why a node could not start, or did not stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("opening the store in {dir}: {source}")]
    Store {
        dir: String,
        source: Box<StoreError>,
    },
    #[error("the gRPC listener's address: {0}")]
    GrpcAddress(std::io::Error),
    #[error("cannot listen on node.http {addr}: {source}")]
    Http {
        addr: String,
        source: std::io::Error,
    },
    #[error("starting Raft in {dir}: {source}")]
    Raft {
        dir: String,
        source: Box<ClusterError>,
    },
    #[error("TLS settings of the gRPC server: {0}")]
    GrpcTls(tonic::transport::Error),
    #[error("cannot apply the initial fleet spec: {0}")]
    InitialFleet(Box<ApplyError>),
    /// The store's last commit failed while stopping (what it lost is named).
    #[error("{0}")]
    StoreClose(String),
}

/// A running node's handles, for the demo and tests in-process.
pub struct Running {
    pub store: Store,
    pub fleet: Arc<FleetState>,
}

/// Every part of a node, built and not yet running.
pub struct Node {
    wiring: Wiring,
    once: Once,
}

/// The handles several parts share: each part gets its own clones.
struct Wiring {
    cfg: NodeConfig,
    addr: SocketAddr,
    token: Option<String>,
    tls: Option<NodeTls>,
    store: Store,
    cluster: ClusterNode,
    fleet: Arc<FleetState>,
    board: StatusBoard,
    stats: Arc<ScrapeStats>,
    states: StateBoard,
    transports: Transports,
    rules: RulesHandle,
    owned_rx: OwnedRx,
    notifier: Arc<Notifier>,
}

/// What one part takes for itself when it starts: listeners, receivers, senders.
struct Once {
    listener: TcpListener,
    /// The HTTP face's port (`node.http`).
    http_listener: TcpListener,
    rules_rx: tokio::sync::mpsc::Receiver<Input>,
    replicate: (UnboundedSender<AlertDelta>, UnboundedReceiver<AlertDelta>),
    /// The collectors' new tail positions, for the herd.
    tails_rx: UnboundedReceiver<(String, Vec<u8>)>,
    owned_tx: OwnedTx,
    collectors: Arc<CollectorCtx>,
}

impl Node {
    /// Builds every part on `listener`; an error names what could not start.
    pub async fn build(cfg: NodeConfig, listener: TcpListener) -> Result<Node, NodeError> {
        os::raise_open_files_limit();
        let token = match &cfg.node.api_token_file {
            Some(path) => Some(crate::api::auth::read_token(path)?),
            None => None,
        };
        let tls = crate::tls::load(&cfg.tls)?;
        let store = open_store(&cfg)?;
        let addr = listener.local_addr().map_err(NodeError::GrpcAddress)?;
        let http_listener =
            TcpListener::bind(&cfg.node.http)
                .await
                .map_err(|source| NodeError::Http {
                    addr: cfg.node.http.clone(),
                    source,
                })?;
        let cluster = start_raft(&cfg, addr, tls.as_ref()).await?;
        let fleet = FleetState::new(cluster.clone(), store.clone());
        let replicate = tokio::sync::mpsc::unbounded_channel();
        let (mut rules, rules_rx) = rules_channel(&store, &cluster, &replicate.0);
        rules.set_resolved_retention(cfg.store.resolved_retention.get());
        let (owned_tx, owned_rx) = ownership::channel();
        // The stored spec, ownership and alerts from the first moment: the rules task
        // and the outbox must not start from an empty spec after a restart.
        let _ = owned_tx.send(Arc::new(fleet.view_now(cfg.cluster.lease.get())));
        let (tails, tails_rx) = crate::cluster::replication::HerdTails::new(&cluster);
        let may_act: Arc<dyn Fn() -> bool + Send + Sync> = {
            let (node, lease) = (cluster.clone(), cfg.cluster.lease.get());
            Arc::new(move || node.liveness().lease_valid(&node.voters(), lease))
        };
        let collectors = Arc::new(collector_ctx(&cfg, &store, &rules, tails, may_act));
        let notifier = Notifier::new(store.clone());
        Ok(Node {
            wiring: Wiring {
                board: collectors.board.clone(),
                stats: collectors.stats.clone(),
                states: collectors.states.clone(),
                transports: collectors.transports.clone(),
                cfg,
                addr,
                token,
                tls,
                store,
                cluster,
                fleet,
                rules,
                owned_rx,
                notifier,
            },
            once: Once {
                listener,
                http_listener,
                rules_rx,
                replicate,
                tails_rx,
                owned_tx,
                collectors,
            },
        })
    }

    /// Runs the node until `shutdown` resolves. `initial` (fleet text and its
    /// source name) is applied when the node has no spec stored yet. `on_ready`
    /// gets the node's handles once everything is up. A part that cannot start
    /// stops the ones already started, in reverse order, before the error returns.
    pub async fn run(
        self,
        initial: Option<(String, String)>,
        shutdown: impl Future<Output = ()> + Send + 'static,
        on_ready: impl FnOnce(Running) + Send,
    ) -> Result<(), NodeError> {
        let Node { wiring: w, once } = self;
        let mut parts = Parts::default();
        if let Err(e) = w.start(&mut parts, once, initial).await {
            let report = parts.stop().await;
            let _ = stopped(report);
            return Err(e);
        }
        tracing::info!(
            node = w.cfg.node.id,
            grpc = %w.addr,
            data_dir = %w.cfg.node.data_dir.display(),
            "node is up"
        );
        on_ready(Running {
            store: w.store.clone(),
            fleet: w.fleet.clone(),
        });
        let systemd = sd_notify::SdNotify::from_env().map(std::sync::Arc::new);
        let told = systemd.as_ref().map(|n| tell_systemd(n.clone(), &w));

        shutdown.await;
        tracing::info!("shutting down");
        if let Some(n) = &systemd {
            n.send("STOPPING=1");
        }
        if let Some(t) = told {
            t.abort();
        }
        stopped(parts.stop().await)
    }
}

/// How often readiness is looked at until the node is ready.
const READY_POLL: Duration = Duration::from_millis(200);

/// Tells systemd the node is ready — at once for a node alone (it must be reachable
/// to be joined), else once it is in its herd and holds its lease (it has heard a
/// majority and applied the herd's map) — then pings the watchdog while it runs.
fn tell_systemd(n: Arc<sd_notify::SdNotify>, w: &Wiring) -> tokio::task::JoinHandle<()> {
    let cluster = w.cluster.clone();
    let needs_herd = !w.cfg.cluster.peers.is_empty() || cluster.in_herd();
    let addr = w.addr;
    tokio::spawn(async move {
        let watchdog = sd_notify::watchdog_every();
        loop {
            let joined =
                cluster.in_herd() && cluster.leader().is_some() && !cluster.liveness().is_fenced();
            if !needs_herd || joined {
                let how = if joined {
                    "in its herd, lease held"
                } else {
                    "alone, waiting to be joined"
                };
                n.send(&format!("READY=1\nSTATUS=serving on {addr}, {how}"));
                tracing::info!(how, "told systemd the node is ready");
                break;
            }
            if watchdog.is_some() {
                n.send("WATCHDOG=1");
            }
            tokio::time::sleep(READY_POLL).await;
        }
        let Some(every) = watchdog else {
            return;
        };
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            n.send("WATCHDOG=1");
        }
    })
}

/// Opens the node's store in its data directory.
fn open_store(cfg: &NodeConfig) -> Result<Store, NodeError> {
    let data_dir = &cfg.node.data_dir;
    Store::open(data_dir, StoreOptions::from(&cfg.store)).map_err(|source| NodeError::Store {
        dir: data_dir.display().to_string(),
        source: Box::new(source),
    })
}

/// Starts Raft with the `[cluster]` timings, reachable at `addr`.
async fn start_raft(
    cfg: &NodeConfig,
    addr: SocketAddr,
    tls: Option<&NodeTls>,
) -> Result<ClusterNode, NodeError> {
    let c = &cfg.cluster;
    let data_dir = &cfg.node.data_dir;
    ClusterNode::start(
        cfg.node.id,
        addr.to_string(),
        data_dir,
        ClusterConfig {
            heartbeat: c.heartbeat.get(),
            election_min: c.election_min.get(),
            election_max: c.election_max.get(),
            client_tls: tls.map(|t| t.client.clone()),
            require_peer_cert: tls.is_some(),
            secret_file: c.secret_file.clone(),
            declarative: !c.peers.is_empty(),
            ..ClusterConfig::default()
        },
    )
    .await
    .map_err(|source| NodeError::Raft {
        dir: data_dir.display().to_string(),
        source: Box::new(source),
    })
}

/// The rules' input channel; alert changes go to the herd's replication, and the
/// rules read how far the herd has recorded an alert from Raft's applied state.
fn rules_channel(
    store: &Store,
    cluster: &ClusterNode,
    replicate: &UnboundedSender<AlertDelta>,
) -> (RulesHandle, tokio::sync::mpsc::Receiver<Input>) {
    let applied = cluster.state();
    let recorded: crate::rules::runner::Recorded =
        Arc::new(move |id: &str| applied.borrow().alerts.get(id).map(|a| a.transitions));
    let node = cluster.clone();
    let claim: crate::rules::action::ClaimAction = Arc::new(move |c: ActionClaim| {
        let node = node.clone();
        Box::pin(async move {
            if !node.in_herd() {
                return None;
            }
            let asked = Command::ActionRun {
                key: c.key,
                rule: c.rule,
                target: c.target,
                at_ms: c.at_ms,
                max_per_hour: c.max_per_hour,
                nonce: rand::random(),
                node: node.id(),
            };
            Some(match node.write(asked).await {
                Ok(r) => match r.refused {
                    None => Claim::Granted,
                    Some(why) if why == ACTION_ALREADY_RUN => Claim::AlreadyRun,
                    Some(why) => Claim::Refused(why),
                },
                Err(e) => Claim::Refused(format!("the herd did not record the run ({e})")),
            })
        })
    });
    crate::rules::runner::channel(store, Some(replicate.clone()), Some(recorded), Some(claim))
}

/// The collectors' settings (`[ssh]`) and fresh boards, which the API and the
/// rules share with them.
fn collector_ctx(
    cfg: &NodeConfig,
    store: &Store,
    rules: &RulesHandle,
    marks: Arc<dyn crate::model::HerdMarks>,
    may_act: Arc<dyn Fn() -> bool + Send + Sync>,
) -> CollectorCtx {
    let ssh = &cfg.ssh;
    CollectorCtx {
        store: store.clone(),
        ssh: Arc::new(SshSettings {
            known_hosts: expand_home(&ssh.known_hosts),
            host_key_checking: ssh.host_key_checking,
            connect_timeout: ssh.connect_timeout.get(),
            keepalive_interval: ssh.keepalive_interval.get(),
            keepalive_max: ssh.keepalive_max,
            max_channels: ssh.max_channels,
            shell: ssh.shell,
        }),
        default_key: ssh.key.as_deref().map(expand_home),
        default_user: ssh.user.clone().unwrap_or_else(current_user),
        command_timeout: ssh.command_timeout.get(),
        reconnect: ssh.reconnect(),
        board: Arc::new(RwLock::new(Default::default())),
        stats: Arc::new(ScrapeStats::default()),
        states: Arc::new(RwLock::new(Default::default())),
        rules: Some(Arc::new(rules.clone())),
        transports: Arc::new(RwLock::new(Default::default())),
        marks: Some(marks),
        may_act: Some(may_act),
    }
}

/// `scheme://addr` as others reach it: a wildcard address (0.0.0.0, [::]) is
/// replaced by the host's name.
fn reachable_url(scheme: &str, addr: &str) -> String {
    match addr.parse::<std::net::SocketAddr>() {
        Ok(a) if a.ip().is_unspecified() => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_default();
            if host.is_empty() {
                format!("{scheme}://{addr}")
            } else {
                format!("{scheme}://{host}:{}", a.port())
            }
        }
        _ => format!("{scheme}://{addr}"),
    }
}

/// What the node returns once its parts have stopped: an error only when the
/// store's last commit failed; everything else that went wrong is logged.
fn stopped(report: StopReport) -> Result<(), NodeError> {
    if !report.aborted.is_empty() {
        tracing::warn!(tasks = ?report.aborted, "did not stop within their part's deadline; aborted");
    }
    for failure in &report.failed {
        tracing::error!("stopping: {failure}");
    }
    if report.clean() {
        tracing::info!("stopped cleanly");
        return Ok(());
    }
    match report.failed.iter().find(|f| f.starts_with("store close")) {
        Some(f) => Err(NodeError::StoreClose(f.clone())),
        None => {
            tracing::warn!("stopped; see above for what did not stop cleanly");
            Ok(())
        }
    }
}

impl Wiring {
    /// Starts the parts in order; they stop in reverse (see the table above).
    async fn start(
        &self,
        parts: &mut Parts,
        once: Once,
        initial: Option<(String, String)>,
    ) -> Result<(), NodeError> {
        self.close_store_last(parts); // 1
        self.stop_raft(parts); // 2
        let api = Arc::new(self.herd_api());
        self.serve_http(parts, api.clone(), once.http_listener); // 3
        self.serve_grpc(parts, api, once.listener)?; // 3
        self.flush_store_before_the_api_goes(parts); // 4
        let herd = self.start_herd_tasks(parts, once.owned_tx, once.replicate, once.tails_rx); // 5
        self.apply_initial_fleet(parts, initial, herd).await?;
        self.start_outbox(parts); // 6
        self.start_rules(parts, once.rules_rx); // 7
        self.start_collectors(parts, once.collectors); // 8
        Ok(())
    }

    /// 1. The store: its last commit when everything else has stopped.
    fn close_store_last(&self, parts: &mut Parts) {
        let closing = self.store.clone();
        parts.on_stop("store close", STORE_CLOSE_DEADLINE, async move {
            match tokio::task::spawn_blocking(move || closing.close()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(format!(
                    "the last commit failed: samples and events since the previous commit \
                     are lost: {e}"
                )),
                Err(e) => Err(format!("the close task failed: {e}")),
            }
        });
    }

    /// 2. Raft.
    fn stop_raft(&self, parts: &mut Parts) {
        let raft = self.cluster.clone();
        parts.on_stop("raft", RAFT_STOP_DEADLINE, async move {
            raft.shutdown().await.map_err(|e| e.to_string())
        });
    }

    /// The client API's service, which the HTTP face and gRPC both serve.
    fn herd_api(&self) -> HerdApi {
        let c = &self.cfg.cluster;
        HerdApi {
            node: NodeIdentity {
                id: self.cfg.node.id,
                address: self.addr.to_string(),
                started: Instant::now(),
            },
            store: self.store.clone(),
            board: self.board.clone(),
            fleet: self.fleet.clone(),
            stats: self.stats.clone(),
            states: self.states.clone(),
            rules: self.rules.clone(),
            notifier: self.notifier.clone(),
            token: self.token.clone(),
            failover_after: c.failover_after.get(),
            lease: c.lease.get(),
        }
    }

    /// 3. The HTTP face, on `node.http`.
    fn serve_http(&self, parts: &mut Parts, api: Arc<HerdApi>, http_listener: TcpListener) {
        let http_addr = http_listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| self.cfg.node.http.clone());
        let http_stop = parts.start("http", API_STOP_DEADLINE);
        let face = crate::api::http::HttpFace::new(api, self.token.as_deref());
        let router = crate::api::http::router(face);
        let https = self.tls.as_ref().map(|t| t.http.clone());
        let scheme = if https.is_some() { "https" } else { "http" };
        parts.spawn("http server", async move {
            let served = match https {
                Some(tls) => {
                    crate::api::http::serve_tls(http_listener, router, tls, http_stop).await
                }
                None => crate::api::http::serve(http_listener, router, http_stop).await,
            };
            if let Err(e) = served {
                tracing::warn!(error = %e, "the HTTP face ended with an error");
            }
        });
        crate::notify::channels::alertmanager::set_node_url(&reachable_url(scheme, &http_addr));
        tracing::info!(http = %http_addr, url = %format!("{scheme}://{http_addr}/"), "HTTP API listening");
    }

    /// 3. gRPC: the client API and the herd's Raft service on one port. A client
    ///    that holds its HTTP/2 connection open but stops answering would keep
    ///    tonic's graceful shutdown waiting: the part's deadline aborts it.
    fn serve_grpc(
        &self,
        parts: &mut Parts,
        api: Arc<HerdApi>,
        listener: TcpListener,
    ) -> Result<(), NodeError> {
        let mut builder = tonic::transport::Server::builder();
        if let Some(t) = &self.tls {
            builder = builder
                .tls_config(t.server.clone())
                .map_err(NodeError::GrpcTls)?;
        }
        let grpc = parts.start("grpc", API_STOP_DEADLINE);
        let serve = builder
            .add_service(tonic::service::interceptor::InterceptedService::new(
                herd_proto::v1::herd_server::HerdServer::from_arc(api),
                crate::api::auth::RequireToken::new(self.token.clone()),
            ))
            .add_service(self.cluster.service())
            .serve_with_incoming_shutdown(
                // Without TCP_NODELAY an HTTP/2 reply written in more than one
                // segment (headers, data, trailers) waits for the client's
                // delayed ACK: 40 ms on every small call, Raft's and beats' too.
                // tonic sets it only on the listeners it binds itself.
                tokio_stream::StreamExt::map(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    |accepted| {
                        if let Ok(s) = &accepted {
                            let _ = s.set_nodelay(true);
                        }
                        accepted
                    },
                ),
                async move { grpc.cancelled().await },
            );
        parts.spawn("server", async move {
            if let Err(e) = serve.await {
                tracing::warn!(error = %e, "gRPC server ended with an error");
            }
        });
        Ok(())
    }

    /// 4. The store flush: samples reach the disk before the API goes, so that
    ///    nothing a client does can hold them back.
    fn flush_store_before_the_api_goes(&self, parts: &mut Parts) {
        let flushing = self.store.clone();
        parts.on_stop("store flush", STORE_FLUSH_DEADLINE, async move {
            match tokio::task::spawn_blocking(move || flushing.flush_blocking()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(format!("{e}; the close tries once more")),
                Err(e) => Err(format!("the flush task failed: {e}")),
            }
        });
    }

    /// 5. The herd's tasks; returns the part's token, for the initial fleet.
    fn start_herd_tasks(
        &self,
        parts: &mut Parts,
        owned_tx: OwnedTx,
        replicate: (UnboundedSender<AlertDelta>, UnboundedReceiver<AlertDelta>),
        tails_rx: UnboundedReceiver<(String, Vec<u8>)>,
    ) -> CancellationToken {
        let herd = parts.start("herd tasks", HERD_TASKS_DEADLINE);
        self.spawn_membership(parts, owned_tx, &herd);
        self.spawn_alert_followers(parts, replicate, &herd);
        parts.spawn(
            "tail replication",
            crate::cluster::replication::replicate_tails(
                self.cluster.clone(),
                tails_rx,
                self.owned_rx.clone(),
                herd.clone(),
            ),
        );
        self.spawn_watches(parts, &herd);
        herd
    }

    /// 5. Bootstrap (with `[cluster] peers`), beats, ownership and the controller.
    fn spawn_membership(&self, parts: &mut Parts, owned_tx: OwnedTx, herd: &CancellationToken) {
        let c = &self.cfg.cluster;
        if !c.peers.is_empty() {
            parts.spawn(
                "bootstrap",
                crate::cluster::bootstrap::run(
                    self.cluster.clone(),
                    crate::cluster::bootstrap::Bootstrap {
                        peers: c.peers.clone(),
                        expect: self.cfg.bootstrap_expect(),
                    },
                    herd.clone(),
                ),
            );
        }
        parts.spawn(
            "beats",
            self.cluster.beats(c.beat_interval.get(), herd.clone()),
        );
        parts.spawn(
            "raft compaction",
            self.cluster
                .clone()
                .compact_raft_when_sparse(self.cfg.store.compact_min_mb << 20, herd.clone()),
        );
        parts.spawn(
            "ownership",
            self.fleet.clone().publish_owned(
                owned_tx,
                c.lease.get(),
                c.beat_interval.get().min(Duration::from_millis(100)),
                herd.clone(),
            ),
        );
        parts.spawn(
            "controller",
            controller::run(
                self.fleet.clone(),
                self.notifier.clone(),
                ControllerConfig {
                    lease: c.lease.get(),
                    failover_after: c.failover_after.get(),
                    every: c.beat_interval.get(),
                    watchers: c.watchers,
                    me: NodeRecord {
                        addr: self.addr.to_string(),
                        machine: c.machine.clone(),
                    },
                },
                herd.clone(),
            ),
        );
    }

    /// 5. The outbox joins the herd; alert replication, fencing and silences follow
    ///    the herd's state into the outbox and the rules.
    fn spawn_alert_followers(
        &self,
        parts: &mut Parts,
        (replicate_tx, replicate_rx): (UnboundedSender<AlertDelta>, UnboundedReceiver<AlertDelta>),
        herd: &CancellationToken,
    ) {
        self.notifier
            .join_herd(crate::cluster::replication::herd_hooks(
                &self.cluster,
                self.owned_rx.clone(),
                replicate_tx,
            ));
        parts.spawn(
            "alert replication",
            crate::cluster::replication::replicate_alerts(
                self.cluster.clone(),
                replicate_rx,
                self.owned_rx.clone(),
                self.notifier.clone(),
                herd.clone(),
            ),
        );
        parts.spawn(
            "fencing",
            follow_fence(self.notifier.clone(), self.owned_rx.clone(), herd.clone()),
        );
        parts.spawn(
            "silences",
            follow_silences(
                self.cluster.clone(),
                self.rules.clone(),
                self.notifier.clone(),
                herd.clone(),
            ),
        );
    }

    /// 5. The quorum watch, the end of timed pauses, and the herd's changes on the
    ///    node's feed (for `herd watch`).
    fn spawn_watches(&self, parts: &mut Parts, herd: &CancellationToken) {
        let c = &self.cfg.cluster;
        parts.spawn(
            "quorum watch",
            crate::cluster::quorum::watch(
                self.fleet.clone(),
                self.notifier.clone(),
                self.store.clone(),
                crate::cluster::quorum::QuorumConfig {
                    lease: c.lease.get(),
                    failover_after: c.failover_after.get(),
                    every: c.beat_interval.get(),
                },
                herd.clone(),
            ),
        );
        parts.spawn("pauses", expire_pauses(self.fleet.clone(), herd.clone()));
        parts.spawn(
            "herd changes",
            crate::cluster::changes::follow(
                self.cluster.state(),
                self.store.feed().clone(),
                herd.clone(),
            ),
        );
    }

    /// 5. The initial fleet spec, when the node has none stored: at once alone,
    ///    or (with peers) by a task of the herd's part once the herd has formed.
    async fn apply_initial_fleet(
        &self,
        parts: &mut Parts,
        initial: Option<(String, String)>,
        herd: CancellationToken,
    ) -> Result<(), NodeError> {
        let alone = self.cfg.cluster.peers.is_empty();
        match initial {
            Some((text, source)) if alone && self.fleet.current().0 == 0 => {
                if let Err(e) = self.fleet.apply(&text, &source).await {
                    return Err(NodeError::InitialFleet(Box::new(e)));
                }
            }
            Some(_) if alone => {}
            // With peers, the herd forms a moment later: apply once it has.
            Some((text, source)) => parts.spawn(
                "initial fleet",
                initial::apply_when_in_herd(self.fleet.clone(), text, source, herd),
            ),
            None => {}
        }
        Ok(())
    }

    /// 6. Notifications: the outbox.
    fn start_outbox(&self, parts: &mut Parts) {
        let notify = parts.start("notifications", NOTIFY_STOP_DEADLINE);
        parts.spawn("outbox", self.notifier.clone().run(notify.clone()));
        // remote_write stops with the notifications: what it had not sent waits
        // in the store for the next start.
        parts.spawn(
            "remote write",
            crate::remote_write::run(self.store.clone(), self.owned_rx.clone(), notify),
        );
    }

    /// 7. Rules.
    fn start_rules(&self, parts: &mut Parts, rules_rx: tokio::sync::mpsc::Receiver<Input>) {
        let rules_stop = parts.start("rules", RULES_STOP_DEADLINE);
        parts.spawn(
            "rules",
            crate::rules::runner::run(
                self.rules.clone(),
                rules_rx,
                self.owned_rx.clone(),
                self.notifier.clone(),
                self.states.clone(),
                self.transports.clone(),
                rules_stop,
            ),
        );
    }

    /// 8. Collectors.
    fn start_collectors(&self, parts: &mut Parts, collectors: Arc<CollectorCtx>) {
        let scrape = parts.start("collectors", COLLECTOR_STOP_DEADLINE);
        parts.spawn(
            "collectors",
            crate::collector::run(collectors, self.owned_rx.clone(), scrape),
        );
    }
}

/// Tells the outbox whether this node is fenced, as ownership changes.
async fn follow_fence(
    notifier: Arc<Notifier>,
    mut owned: OwnedRx,
    cancel: tokio_util::sync::CancellationToken,
) {
    loop {
        notifier.set_fenced(owned.borrow_and_update().fenced);
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = owned.changed() => if r.is_err() { return },
        }
    }
}

/// The rules read the silences in force from here; the outbox looks again at
/// notifications that waited for the herd to record them.
async fn follow_silences(
    cluster: ClusterNode,
    rules: RulesHandle,
    notifier: Arc<Notifier>,
    cancel: tokio_util::sync::CancellationToken,
) {
    let mut state = cluster.state();
    loop {
        let list = state
            .borrow_and_update()
            .silences
            .values()
            .cloned()
            .collect();
        rules.set_silences(list);
        notifier.herd_changed();
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = state.changed() => if r.is_err() { return },
        }
    }
}

/// Ends pauses whose time is up.
async fn expire_pauses(fleet: Arc<FleetState>, cancel: tokio_util::sync::CancellationToken) {
    let mut every = tokio::time::interval(PAUSE_CHECK);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = every.tick() => fleet.expire_pauses(crate::model::now_ms()).await,
        }
    }
}
