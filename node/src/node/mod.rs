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

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use crate::api::{HerdApi, NodeIdentity};
use crate::cluster::controller::{self, ControllerConfig};
use crate::cluster::node::{ClusterConfig, ClusterNode};
use crate::cluster::types::NodeRecord;
use crate::cluster::FleetState;
use crate::collector::stats::ScrapeStats;
use crate::collector::{CollectorCtx, StateBoard, StatusBoard};
use crate::config::{expand_home, NodeConfig};
use crate::notify::worker::Notifier;
use crate::ownership::{self, OwnedRx, OwnedTx};
use crate::rules::runner::{AlertDelta, Input, RulesHandle};
use crate::store::{Store, StoreOptions};
use crate::tls::NodeTls;
use crate::transport::{SshSettings, Transports};

mod initial;
mod os;
pub mod parts;

pub use os::{current_user, signals};
use parts::Parts;

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

/// A running node's handles, for the demo and tests in-process.
pub struct Running {
    pub store: Store,
    pub fleet: Arc<FleetState>,
}

/// Every part of a node, built and not yet running.
pub struct Node {
    cfg: NodeConfig,
    listener: TcpListener,
    /// The HTTP face's port (`node.http`).
    http_listener: TcpListener,
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
    rules_rx: tokio::sync::mpsc::Receiver<Input>,
    replicate: (UnboundedSender<AlertDelta>, UnboundedReceiver<AlertDelta>),
    owned_tx: OwnedTx,
    owned_rx: OwnedRx,
    collectors: Arc<CollectorCtx>,
    notifier: Arc<Notifier>,
}

impl Node {
    /// Builds every part on `listener`; an error names what could not start.
    pub async fn build(cfg: NodeConfig, listener: TcpListener) -> anyhow::Result<Node> {
        os::raise_open_files_limit();
        let data_dir = cfg.node.data_dir.clone();
        let token = match &cfg.node.api_token_file {
            Some(path) => Some(crate::api::auth::read_token(path).map_err(anyhow::Error::msg)?),
            None => None,
        };
        let tls = crate::tls::load(&cfg.tls).map_err(anyhow::Error::msg)?;
        let store = Store::open(
            &data_dir,
            StoreOptions {
                retention: cfg.store.retention.get(),
                flush_interval: cfg.store.flush_interval.get(),
                chunk_samples: cfg.store.chunk_samples,
            },
        )
        .with_context(|| format!("opening the store in {}", data_dir.display()))?;
        let addr = listener.local_addr()?;
        let http_listener = TcpListener::bind(&cfg.node.http)
            .await
            .with_context(|| format!("cannot listen on node.http {}", cfg.node.http))?;
        let c = &cfg.cluster;
        let cluster = ClusterNode::start(
            cfg.node.id,
            addr.to_string(),
            &data_dir,
            ClusterConfig {
                heartbeat: c.heartbeat.get(),
                election_min: c.election_min.get(),
                election_max: c.election_max.get(),
                client_tls: tls.as_ref().map(|t| t.client.clone()),
                require_peer_cert: tls.is_some(),
                secret_file: c.secret_file.clone(),
                declarative: !c.peers.is_empty(),
                ..ClusterConfig::default()
            },
        )
        .await
        .with_context(|| format!("starting Raft in {}", data_dir.display()))?;
        let fleet = FleetState::new(cluster.clone(), store.clone());
        let replicate = tokio::sync::mpsc::unbounded_channel();
        let applied = cluster.state();
        let recorded: crate::rules::runner::Recorded =
            Arc::new(move |id: &str| applied.borrow().alerts.get(id).map(|a| a.transitions));
        let (rules, rules_rx) =
            crate::rules::runner::channel(&store, Some(replicate.0.clone()), Some(recorded));
        let (owned_tx, owned_rx) = ownership::channel();
        // The stored spec, ownership and alerts from the first moment: the rules task
        // and the outbox must not start from an empty spec after a restart.
        let _ = owned_tx.send(Arc::new(fleet.view_now(c.lease.get())));
        let board: StatusBoard = Arc::new(RwLock::new(Default::default()));
        let stats = Arc::new(ScrapeStats::default());
        let states: StateBoard = Arc::new(RwLock::new(Default::default()));
        let transports: Transports = Arc::new(RwLock::new(Default::default()));
        let ssh = &cfg.ssh;
        let collectors = Arc::new(CollectorCtx {
            store: store.clone(),
            ssh: Arc::new(SshSettings {
                known_hosts: expand_home(&ssh.known_hosts),
                host_key_checking: ssh.host_key_checking,
                connect_timeout: ssh.connect_timeout.get(),
                keepalive_interval: ssh.keepalive_interval.get(),
                keepalive_max: ssh.keepalive_max,
                max_channels: ssh.max_channels,
            }),
            default_key: ssh.key.as_deref().map(expand_home),
            default_user: ssh.user.clone().unwrap_or_else(current_user),
            command_timeout: ssh.command_timeout.get(),
            reconnect: ssh.reconnect(),
            board: board.clone(),
            stats: stats.clone(),
            states: states.clone(),
            rules: Some(Arc::new(rules.clone())),
            transports: transports.clone(),
        });
        let notifier = Notifier::new(store.clone());
        Ok(Node {
            cfg,
            listener,
            http_listener,
            addr,
            token,
            tls,
            store,
            cluster,
            fleet,
            board,
            stats,
            states,
            transports,
            rules,
            rules_rx,
            replicate,
            owned_tx,
            owned_rx,
            collectors,
            notifier,
        })
    }

    /// Runs the node until `shutdown` resolves. `initial` (fleet text and its
    /// source name) is applied when the node has no spec stored yet. `on_ready`
    /// gets the node's handles once everything is up.
    pub async fn run(
        self,
        initial: Option<(String, String)>,
        shutdown: impl Future<Output = ()> + Send + 'static,
        on_ready: impl FnOnce(Running) + Send,
    ) -> anyhow::Result<()> {
        let Node {
            cfg,
            listener,
            http_listener,
            addr,
            token,
            tls,
            store,
            cluster,
            fleet,
            board,
            stats,
            states,
            transports,
            rules,
            rules_rx,
            replicate: (replicate_tx, replicate_rx),
            owned_tx,
            owned_rx,
            collectors,
            notifier,
        } = self;
        let c = &cfg.cluster;
        let mut parts = Parts::default();

        // 1. The store: its last commit when everything else has stopped.
        let closing = store.clone();
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

        // 2. Raft.
        let raft = cluster.clone();
        parts.on_stop("raft", RAFT_STOP_DEADLINE, async move {
            raft.shutdown().await.map_err(|e| e.to_string())
        });

        // 3. gRPC: the client API and the herd's Raft service on one port. A client
        //    that holds its HTTP/2 connection open but stops answering would keep
        //    tonic's graceful shutdown waiting: the part's deadline aborts it.
        let api = HerdApi {
            node: NodeIdentity {
                id: cfg.node.id,
                address: addr.to_string(),
                started: Instant::now(),
            },
            store: store.clone(),
            board: board.clone(),
            fleet: fleet.clone(),
            stats,
            states: states.clone(),
            rules: rules.clone(),
            token: token.clone(),
            failover_after: c.failover_after.get(),
            lease: c.lease.get(),
        };
        let api = Arc::new(api);
        let http_addr = http_listener.local_addr()?;
        let http_stop = parts.start("http", API_STOP_DEADLINE);
        let face = crate::api::http::HttpFace::new(api.clone(), token.as_deref());
        parts.spawn("http server", async move {
            let serving =
                crate::api::http::serve(http_listener, crate::api::http::router(face), http_stop);
            if let Err(e) = serving.await {
                tracing::warn!(error = %e, "the HTTP face ended with an error");
            }
        });
        tracing::info!(http = %http_addr, "HTTP API listening");
        let mut builder = tonic::transport::Server::builder();
        if let Some(t) = &tls {
            builder = builder
                .tls_config(t.server.clone())
                .context("TLS settings of the gRPC server")?;
        }
        let grpc = parts.start("grpc", API_STOP_DEADLINE);
        let serve = builder
            .add_service(tonic::service::interceptor::InterceptedService::new(
                herd_proto::v1::herd_server::HerdServer::from_arc(api),
                crate::api::auth::RequireToken::new(token),
            ))
            .add_service(cluster.service())
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async move { grpc.cancelled().await },
            );
        parts.spawn("server", async move {
            if let Err(e) = serve.await {
                tracing::warn!(error = %e, "gRPC server ended with an error");
            }
        });

        // 4. The store flush: samples reach the disk before the API goes, so that
        //    nothing a client does can hold them back.
        let flushing = store.clone();
        parts.on_stop("store flush", STORE_FLUSH_DEADLINE, async move {
            match tokio::task::spawn_blocking(move || flushing.flush_blocking()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(format!("{e}; the close tries once more")),
                Err(e) => Err(format!("the flush task failed: {e}")),
            }
        });

        // 5. The herd's tasks.
        let herd = parts.start("herd tasks", HERD_TASKS_DEADLINE);
        if !c.peers.is_empty() {
            parts.spawn(
                "bootstrap",
                crate::cluster::bootstrap::run(
                    cluster.clone(),
                    crate::cluster::bootstrap::Bootstrap {
                        peers: c.peers.clone(),
                        expect: cfg.bootstrap_expect(),
                    },
                    herd.clone(),
                ),
            );
        }
        parts.spawn("beats", cluster.beats(c.beat_interval.get(), herd.clone()));
        parts.spawn(
            "ownership",
            fleet.clone().publish_owned(
                owned_tx,
                c.lease.get(),
                c.beat_interval.get().min(Duration::from_millis(100)),
                herd.clone(),
            ),
        );
        parts.spawn(
            "controller",
            controller::run(
                fleet.clone(),
                notifier.clone(),
                ControllerConfig {
                    lease: c.lease.get(),
                    failover_after: c.failover_after.get(),
                    every: c.beat_interval.get(),
                    watchers: c.watchers,
                    me: NodeRecord {
                        addr: addr.to_string(),
                        machine: c.machine.clone(),
                    },
                },
                herd.clone(),
            ),
        );
        notifier.join_herd(crate::cluster::replication::herd_hooks(
            &cluster,
            owned_rx.clone(),
            replicate_tx,
        ));
        parts.spawn(
            "alert replication",
            crate::cluster::replication::replicate_alerts(
                cluster.clone(),
                replicate_rx,
                owned_rx.clone(),
                notifier.clone(),
                herd.clone(),
            ),
        );
        parts.spawn(
            "fencing",
            follow_fence(notifier.clone(), owned_rx.clone(), herd.clone()),
        );
        parts.spawn(
            "silences",
            follow_silences(
                cluster.clone(),
                rules.clone(),
                notifier.clone(),
                herd.clone(),
            ),
        );
        parts.spawn(
            "quorum watch",
            crate::cluster::quorum::watch(
                fleet.clone(),
                notifier.clone(),
                store.clone(),
                crate::cluster::quorum::QuorumConfig {
                    lease: c.lease.get(),
                    failover_after: c.failover_after.get(),
                    every: c.beat_interval.get(),
                },
                herd.clone(),
            ),
        );
        parts.spawn("pauses", expire_pauses(fleet.clone(), herd.clone()));
        match initial {
            Some((text, source)) if c.peers.is_empty() && fleet.current().0 == 0 => {
                if let Err(e) = fleet.apply(&text, &source).await {
                    parts.stop().await;
                    return Err(anyhow::anyhow!("cannot apply the initial fleet spec: {e}"));
                }
            }
            Some(_) if c.peers.is_empty() => {}
            // With peers, the herd forms a moment later: apply once it has.
            Some((text, source)) => parts.spawn(
                "initial fleet",
                initial::apply_when_in_herd(fleet.clone(), text, source, herd.clone()),
            ),
            None => {}
        }

        // 6. Notifications.
        let notify = parts.start("notifications", NOTIFY_STOP_DEADLINE);
        parts.spawn("outbox", notifier.clone().run(notify));

        // 7. Rules.
        let rules_stop = parts.start("rules", RULES_STOP_DEADLINE);
        parts.spawn(
            "rules",
            crate::rules::runner::run(
                rules,
                rules_rx,
                owned_rx.clone(),
                notifier,
                states,
                transports,
                rules_stop,
            ),
        );

        // 8. Collectors.
        let scrape = parts.start("collectors", COLLECTOR_STOP_DEADLINE);
        parts.spawn(
            "collectors",
            crate::collector::run(collectors, owned_rx, scrape),
        );

        tracing::info!(
            node = cfg.node.id,
            grpc = %addr,
            data_dir = %cfg.node.data_dir.display(),
            "node is up"
        );
        on_ready(Running { store, fleet });

        shutdown.await;
        tracing::info!("shutting down");
        let report = parts.stop().await;
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
            Some(f) => Err(anyhow::anyhow!("{f}")),
            None => {
                tracing::warn!("stopped; see above for what did not stop cleanly");
                Ok(())
            }
        }
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
