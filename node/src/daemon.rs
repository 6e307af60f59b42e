//! The one place that wires a node: store → Raft (cluster node, liveness, the
//! leader's controller) → what this node owns → collectors, rules, notifications
//! → gRPC (client API and Raft on one port), and shuts them down in order
//! (scrapers, then the store flush, then the API and Raft) with a deadline.
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{HerdApi, NodeIdentity};
use crate::cluster::controller::{self, ControllerConfig};
use crate::cluster::node::{ClusterConfig, ClusterNode};
use crate::cluster::types::NodeRecord;
use crate::cluster::FleetState;
use crate::collector::stats::ScrapeStats;
use crate::collector::{CollectorCtx, StateBoard, StatusBoard};
use crate::config::{expand_home, NodeConfig};
use crate::notify::worker::Notifier;
use crate::ownership;
use crate::store::{Store, StoreOptions};
use crate::transport::SshSettings;

/// Longest wait for gRPC clients to finish on shutdown.
const API_STOP_DEADLINE: Duration = Duration::from_secs(3);

/// How often a node waiting for its herd says so, and how long a follower leaves
/// the initial fleet spec to the leader.
const INITIAL_FLEET_PROGRESS: Duration = Duration::from_secs(5);
const INITIAL_FLEET_FOLLOWER_DELAY: Duration = Duration::from_secs(2);

/// How often pauses with an end are checked.
const PAUSE_CHECK: Duration = Duration::from_secs(1);

/// Longest wait for the collectors to stop on shutdown (a command in flight is
/// closed at its own timeout).
const COLLECTOR_STOP_DEADLINE: Duration = Duration::from_secs(8);

/// Longest wait, all together, for the other tasks to stop once cancelled.
const TASKS_STOP_DEADLINE: Duration = Duration::from_secs(3);

/// A running node's handles, for the demo and tests in-process.
pub struct Running {
    pub store: Store,
    pub fleet: Arc<FleetState>,
    pub board: StatusBoard,
}

/// The login name of the user running herd: the default SSH user.
pub fn current_user() -> String {
    if let Ok(u) = std::env::var("USER") {
        if !u.is_empty() {
            return u;
        }
    }
    // SAFETY: getpwuid returns a pointer into static storage or null; we copy the
    // name out at once and run before any other thread could call it concurrently
    // through herd's own code.
    unsafe {
        let pw = libc::getpwuid(libc::getuid());
        if !pw.is_null() && !(*pw).pw_name.is_null() {
            return std::ffi::CStr::from_ptr((*pw).pw_name)
                .to_string_lossy()
                .into_owned();
        }
    }
    "root".into()
}

/// Runs a node on `listener` until `shutdown` resolves. `initial` (fleet text and
/// its source name) is applied before the API answers, when the node has no spec
/// stored yet. `on_ready` gets the node's handles once everything is up.
pub async fn run_node(
    cfg: NodeConfig,
    listener: TcpListener,
    initial: Option<(String, String)>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(Running) + Send,
) -> anyhow::Result<()> {
    raise_open_files_limit();
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
    let board: StatusBoard = Arc::new(RwLock::new(Default::default()));
    let stats = Arc::new(ScrapeStats::default());
    let states: StateBoard = Arc::new(RwLock::new(Default::default()));
    let (replicate_tx, replicate_rx) = tokio::sync::mpsc::unbounded_channel();
    let (rules, rules_rx) = crate::rules::runner::channel(&store, Some(replicate_tx.clone()));
    let transports: crate::transport::Transports = Arc::new(RwLock::new(Default::default()));
    let (owned_tx, owned_rx) = ownership::channel();
    let addr = listener.local_addr()?;
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
    // The stored spec, ownership and alerts from the first moment: the rules task
    // and the outbox must not start from an empty spec after a restart.
    let _ = owned_tx.send(Arc::new(fleet.view_now(cfg.cluster.lease.get())));
    let ssh = &cfg.ssh;
    let ctx = Arc::new(CollectorCtx {
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
        reconnect_min: ssh.reconnect_min.get(),
        reconnect_max: ssh.reconnect_max.get(),
        board: board.clone(),
        stats: stats.clone(),
        states: states.clone(),
        rules: Some(Arc::new(rules.clone())),
        transports: transports.clone(),
    });

    let cancel = CancellationToken::new();
    let bootstrap = (!c.peers.is_empty()).then(|| {
        tokio::spawn(crate::cluster::bootstrap::run(
            cluster.clone(),
            crate::cluster::bootstrap::Bootstrap {
                peers: c.peers.clone(),
                expect: cfg.bootstrap_expect(),
            },
            cancel.clone(),
        ))
    });
    let notifier = Notifier::new(store.clone());
    let beats = cluster.spawn_beats(c.beat_interval.get(), cancel.clone());
    let publisher = tokio::spawn(fleet.clone().publish_owned(
        owned_tx,
        c.lease.get(),
        c.beat_interval.get().min(Duration::from_millis(100)),
        cancel.clone(),
    ));
    let controller = tokio::spawn(controller::run(
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
        cancel.clone(),
    ));
    notifier.join_herd(crate::cluster::replication::herd_hooks(
        &cluster,
        owned_rx.clone(),
        replicate_tx,
    ));
    let replicator = tokio::spawn(crate::cluster::replication::replicate_alerts(
        cluster.clone(),
        replicate_rx,
        owned_rx.clone(),
        notifier.clone(),
        cancel.clone(),
    ));
    // The rules task reads the silences in force from here; the outbox looks again
    // at notifications that waited for the herd to record them.
    let silences = {
        let (rules, notifier, cancel) = (rules.clone(), notifier.clone(), cancel.clone());
        let mut state = cluster.state();
        tokio::spawn(async move {
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
        })
    };
    let fence = {
        let (notifier, mut owned, cancel) = (notifier.clone(), owned_rx.clone(), cancel.clone());
        tokio::spawn(async move {
            loop {
                notifier.set_fenced(owned.borrow_and_update().fenced);
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    r = owned.changed() => if r.is_err() { return },
                }
            }
        })
    };
    let notify_task = tokio::spawn(notifier.clone().run(cancel.clone()));
    let quorum = tokio::spawn(crate::cluster::quorum::watch(
        fleet.clone(),
        notifier.clone(),
        store.clone(),
        crate::cluster::quorum::QuorumConfig {
            lease: c.lease.get(),
            failover_after: c.failover_after.get(),
            every: c.beat_interval.get(),
        },
        cancel.clone(),
    ));
    let rules_task = tokio::spawn(crate::rules::runner::run(
        rules.clone(),
        rules_rx,
        owned_rx.clone(),
        notifier,
        states.clone(),
        transports.clone(),
        cancel.clone(),
    ));
    let collector = tokio::spawn(crate::collector::run(ctx, owned_rx, cancel.clone()));
    let pause_clock = {
        let fleet = fleet.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(PAUSE_CHECK);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = every.tick() => fleet.expire_pauses(crate::model::now_ms()).await,
                }
            }
        })
    };

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
        states,
        rules,
        token: token.clone(),
        failover_after: c.failover_after.get(),
        lease: c.lease.get(),
    };
    let api_cancel = cancel.clone();
    let mut builder = tonic::transport::Server::builder();
    if let Some(t) = &tls {
        builder = builder
            .tls_config(t.server.clone())
            .context("TLS settings of the gRPC server")?;
    }
    let server = tokio::spawn(
        builder
            .add_service(herd_proto::v1::herd_server::HerdServer::with_interceptor(
                api,
                crate::api::auth::RequireToken::new(token),
            ))
            .add_service(cluster.service())
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async move { api_cancel.cancelled().await },
            ),
    );
    tracing::info!(node = cfg.node.id, grpc = %addr, data_dir = %data_dir.display(), "node is up");
    let initial_apply = match initial {
        Some((text, source)) if cfg.cluster.peers.is_empty() => {
            if fleet.current().0 == 0 {
                fleet
                    .apply(&text, &source)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot apply the initial fleet spec: {e}"))?;
            }
            None
        }
        // With peers, the herd forms a moment later: apply once it has.
        Some((text, source)) => Some(tokio::spawn(apply_when_in_herd(
            fleet.clone(),
            text,
            source,
            cancel.clone(),
        ))),
        None => None,
    };
    on_ready(Running {
        store: store.clone(),
        fleet,
        board,
    });

    shutdown.await;
    tracing::info!("shutting down: stopping scrapers");
    cancel.cancel();
    if tokio::time::timeout(COLLECTOR_STOP_DEADLINE, collector)
        .await
        .is_err()
    {
        tracing::warn!("collectors did not stop in time");
    }
    // The other tasks end at the cancel; together they get one deadline, and the
    // ones that did not stop are named and aborted.
    let mut tasks: Vec<(&str, tokio::task::JoinHandle<()>)> = vec![
        ("rules", rules_task),
        ("notifications", notify_task),
        ("pauses", pause_clock),
        ("beats", beats),
        ("ownership", publisher),
        ("controller", controller),
        ("alert replication", replicator),
        ("fencing", fence),
        ("silences", silences),
        ("quorum watch", quorum),
    ];
    tasks.extend(bootstrap.map(|t| ("herd bootstrap", t)));
    tasks.extend(initial_apply.map(|t| ("initial fleet", t)));
    let deadline = tokio::time::Instant::now() + TASKS_STOP_DEADLINE;
    let mut stuck = Vec::new();
    for (what, mut task) in tasks {
        if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
            task.abort();
            stuck.push(what);
        }
    }
    if !stuck.is_empty() {
        tracing::warn!(tasks = ?stuck, "did not stop within {TASKS_STOP_DEADLINE:?}; aborted");
    }
    // Samples first: nothing a client does can hold them back from the disk.
    let flushing = store.clone();
    match tokio::task::spawn_blocking(move || flushing.flush_blocking()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::error!(error = %e, "the store could not flush at shutdown; retrying once more as it closes")
        }
        Err(e) => tracing::error!(error = %e, "the store flush task failed"),
    }
    // A client that holds its HTTP/2 connection open but stops answering would keep
    // tonic's graceful shutdown waiting forever.
    match tokio::time::timeout(API_STOP_DEADLINE, server).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "gRPC server ended with an error"),
        Ok(Err(e)) => tracing::warn!(error = %e, "gRPC server task failed"),
        Ok(Ok(Ok(()))) => {}
        Err(_) => tracing::warn!("gRPC clients did not let go in time; closing anyway"),
    }
    if let Err(e) = cluster.shutdown().await {
        tracing::warn!(error = %e, "raft did not stop cleanly");
    }
    tracing::info!("flushing the store");
    let closing = store.clone();
    match tokio::task::spawn_blocking(move || closing.close()).await? {
        Ok(()) if stuck.is_empty() => tracing::info!("stopped cleanly"),
        Ok(()) => tracing::warn!(tasks = ?stuck, "stopped; these tasks had to be aborted"),
        Err(e) => {
            tracing::error!(error = %e, "stopped, but the store's last commit failed: samples and events since the previous commit are lost");
            return Err(anyhow::anyhow!("the store's last commit failed: {e}"));
        }
    }
    Ok(())
}

/// `--fleet` on a node configured with peers: waits for the herd to form (with a
/// progress line), then applies the spec when the herd has none yet. The leader
/// applies at once; the others give it a moment first, so that nodes started
/// together with the same `--fleet` apply it once.
async fn apply_when_in_herd(
    fleet: Arc<FleetState>,
    text: String,
    source: String,
    cancel: CancellationToken,
) {
    let cluster = fleet.cluster().clone();
    let started = Instant::now();
    let mut said = Instant::now();
    loop {
        if cluster.in_herd() && cluster.leader().is_some() {
            break;
        }
        if said.elapsed() >= INITIAL_FLEET_PROGRESS {
            said = Instant::now();
            tracing::info!(
                source = %source,
                waited_s = started.elapsed().as_secs(),
                waiting_for = %cluster.bootstrap_status(),
                "the fleet spec waits for the herd to form"
            );
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    if !cluster.is_leader() {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(INITIAL_FLEET_FOLLOWER_DELAY) => {}
        }
    }
    loop {
        if fleet.current().0 != 0 {
            return;
        }
        match fleet.apply(&text, &source).await {
            Ok((version, _)) => {
                tracing::info!(source = %source, version, "applied the initial fleet spec");
                return;
            }
            // A spec that does not validate was refused at start already; anything
            // else (no leader for a moment) is worth another try.
            Err(e) => {
                tracing::warn!(error = %e, "cannot apply the initial fleet spec yet; retrying")
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Each SSH target holds a socket: raise the soft open-files limit to the hard one
/// (often 1024 soft, far more hard), or a node with a thousand targets runs out.
fn raise_open_files_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let wanted = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) != 0 {
                tracing::warn!(soft = lim.rlim_cur, "cannot raise the open-files limit");
            }
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn signals() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
