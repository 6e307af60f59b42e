//! `/metrics`: this node's own health in the Prometheus text format (0.0.4), read
//! at scrape time from what the node already keeps — its own status (the gRPC
//! `Status` with `local_only`, so no fan-out), Raft's metrics, the outbox and the
//! failure detector — and encoded by `prometheus-client`. Nothing here counts on
//! its own: a scrape is a snapshot.
use herd_proto::v1 as pb;
use herd_proto::v1::herd_server::Herd;
use prometheus_client::encoding::prometheus_text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, Ordering};

use super::error::blocking;
use super::grpc::HerdApi;

/// A gauge of floats.
type FGauge = Gauge<f64, AtomicU64>;
/// Label sets as name/value pairs.
type Labels = Vec<(String, String)>;

fn gauge(r: &mut Registry, name: &str, help: &str, v: f64) {
    let g = FGauge::default();
    g.set(v);
    r.register(name, help, g);
}

fn counter(r: &mut Registry, name: &str, help: &str, v: u64) {
    let c: Counter = Counter::default();
    c.inc_by(v);
    r.register(name, help, c);
}

fn labelled(r: &mut Registry, name: &str, help: &str, rows: Vec<(Labels, f64)>) {
    let f = Family::<Labels, FGauge>::default();
    for (labels, v) in rows {
        f.get_or_create(&labels).set(v);
    }
    r.register(name, help, f);
}

fn one(name: &str, value: impl ToString) -> Labels {
    vec![(name.to_string(), value.to_string())]
}

/// The exposition text of this node's metrics.
pub async fn render(api: &HerdApi) -> Result<String, tonic::Status> {
    let s = api
        .status(tonic::Request::new(pb::StatusRequest { local_only: true }))
        .await?
        .into_inner();
    let store = api.store.clone();
    let outbox = blocking(move || store.outbox()).await?.len();
    let cluster = api.fleet.cluster();
    let raft = cluster.metrics().borrow().clone();
    let me = api.node.id;

    let mut r = Registry::with_prefix("herd");
    gauge(&mut r, "up", "1 while the node answers", 1.0);
    labelled(
        &mut r,
        "node_info",
        "This node: its id and the herd it is in (value 1)",
        vec![(
            vec![
                ("node_id".into(), me.to_string()),
                ("herd_id".into(), s.herd_id.clone()),
            ],
            1.0,
        )],
    );
    gauge(
        &mut r,
        "uptime_seconds",
        "Seconds since this node started",
        api.node.started.elapsed().as_secs_f64(),
    );

    // Targets this node scrapes.
    let owned = s.targets.len();
    let up = s.targets.iter().filter(|t| t.up == 1).count();
    let down = s.targets.iter().filter(|t| t.up == 0).count();
    gauge(
        &mut r,
        "targets_owned",
        "Targets this node scrapes",
        owned as f64,
    );
    gauge(
        &mut r,
        "targets_up",
        "Targets this node scrapes that are up",
        up as f64,
    );
    gauge(
        &mut r,
        "targets_down",
        "Targets this node scrapes that are down",
        down as f64,
    );
    labelled(
        &mut r,
        "target_up",
        "Per target this node scrapes: 1 up, 0 down (absent before its first scrape)",
        s.targets
            .iter()
            .filter(|t| t.up >= 0)
            .map(|t| (one("target", &t.name), t.up as f64))
            .collect(),
    );
    labelled(
        &mut r,
        "target_last_scrape_age_seconds",
        "Per target this node scrapes: seconds since its last scrape",
        s.targets
            .iter()
            .filter(|t| t.last_scrape_age_s >= 0.0)
            .map(|t| (one("target", &t.name), t.last_scrape_age_s))
            .collect(),
    );
    let scrapes = s.scrapes.unwrap_or_default();
    counter(
        &mut r,
        "scrapes",
        "Scrapes this node has run since it started",
        scrapes.count,
    );
    // Percentiles of recent scrapes as plain gauges (the `quantile` label belongs
    // to summaries, which these are not: the window is the last 20,000 scrapes).
    for (name, help, v) in [
        (
            "scrape_duration_p50_seconds",
            "Median duration of recent scrapes",
            scrapes.duration_p50_ms,
        ),
        (
            "scrape_duration_p99_seconds",
            "99th percentile duration of recent scrapes",
            scrapes.duration_p99_ms,
        ),
        (
            "scrape_lateness_p50_seconds",
            "Median lateness of recent scrapes after their scheduled time",
            scrapes.lateness_p50_ms,
        ),
        (
            "scrape_lateness_p99_seconds",
            "99th percentile lateness of recent scrapes after their scheduled time",
            scrapes.lateness_p99_ms,
        ),
    ] {
        gauge(&mut r, name, help, v / 1000.0);
    }

    // Store, rules, outbox.
    gauge(
        &mut r,
        "store_bytes",
        "Size of the node's store file",
        s.store_bytes as f64,
    );
    counter(
        &mut r,
        "store_samples_written",
        "Samples written to the store since start",
        s.store_samples,
    );
    counter(
        &mut r,
        "store_samples_dropped",
        "Samples dropped (the store's queue was full) since start",
        s.store_samples_dropped,
    );
    counter(
        &mut r,
        "store_commits",
        "Store commits since start",
        s.store_commits,
    );
    counter(
        &mut r,
        "rules_inputs_dropped",
        "Samples and events the rules never saw (their queue was full) since start",
        s.rules_inputs_dropped,
    );
    gauge(
        &mut r,
        "outbox_entries",
        "Notifications waiting in this node's outbox",
        outbox as f64,
    );

    // The herd.
    gauge(
        &mut r,
        "raft_term",
        "Raft's current term",
        raft.current_term as f64,
    );
    gauge(
        &mut r,
        "raft_leader",
        "The leader's node id (0: none known)",
        raft.current_leader.unwrap_or(0) as f64,
    );
    gauge(
        &mut r,
        "raft_is_leader",
        "1 while this node leads the herd",
        f64::from(raft.current_leader == Some(me)),
    );
    gauge(
        &mut r,
        "raft_last_applied_index",
        "Index of the last log entry this node applied",
        raft.last_applied.map_or(0, |l| l.index) as f64,
    );
    gauge(
        &mut r,
        "state_alerts",
        "Alerts in the herd's replicated state as this node applied it (every state)",
        s.herd_alerts as f64,
    );
    gauge(
        &mut r,
        "state_forgotten_alerts",
        "Alerts the herd forgot once settled, their transition counts kept",
        s.herd_forgotten_alerts as f64,
    );
    gauge(
        &mut r,
        "command_level",
        "The herd command level every member applies (below this build's: a rolling upgrade)",
        f64::from(s.herd_level),
    );
    counter(
        &mut r,
        "raft_unknown_commands",
        "Herd commands of a later build this node applied as nothing",
        s.unknown_commands,
    );
    let lease = s
        .nodes
        .iter()
        .find(|n| n.id == me)
        .is_some_and(|n| n.lease == Some(true));
    gauge(
        &mut r,
        "lease_valid",
        "1 while this node holds its lease (it scrapes and notifies only then)",
        f64::from(lease),
    );
    gauge(
        &mut r,
        "quorum_lost",
        "1 while this node has not heard from a majority for failover_after",
        f64::from(!s.quorum_lost.is_empty()),
    );
    gauge(
        &mut r,
        "ownership_version",
        "Version of the ownership map this node applied",
        s.ownership_version as f64,
    );
    gauge(
        &mut r,
        "spec_version",
        "Version of the fleet spec this node applied",
        s.spec_version as f64,
    );
    let liveness = cluster.liveness();
    let peers: Vec<&pb::NodeInfo> = s.nodes.iter().filter(|n| n.id != me).collect();
    labelled(
        &mut r,
        "peer_alive",
        "Per other member: 1 while the herd counts it alive",
        peers
            .iter()
            .map(|n| (one("peer", n.id), f64::from(n.alive)))
            .collect(),
    );
    labelled(
        &mut r,
        "peer_last_heard_seconds",
        "Per other member: seconds since this node last heard from it (a beat or an answer)",
        peers
            .iter()
            .map(|n| (one("peer", n.id), liveness.silent_for(n.id).as_secs_f64()))
            .collect(),
    );

    labelled(
        &mut r,
        "peer_beat_rtt_seconds",
        "Per other member: round trip of the newest beat it answered",
        peers
            .iter()
            .filter_map(|n| {
                liveness
                    .beat_rtt(n.id)
                    .map(|d| (one("peer", n.id), d.as_secs_f64()))
            })
            .collect(),
    );

    // SSH sessions of the targets this node scrapes.
    let ssh = &crate::transport::SSH_COUNTERS;
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    gauge(
        &mut r,
        "ssh_sessions_open",
        "SSH sessions this node holds to its targets",
        load(&ssh.open) as f64,
    );
    counter(
        &mut r,
        "ssh_connects",
        "SSH sessions set up since start",
        load(&ssh.connects),
    );
    counter(
        &mut r,
        "ssh_reconnects",
        "SSH sessions set up again for a target that had one (it broke or was closed) since start",
        load(&ssh.reconnects),
    );
    counter(
        &mut r,
        "ssh_connect_failures",
        "SSH connections that failed (refused, timeout, authentication, host key) since start",
        load(&ssh.connect_failures),
    );

    // Notifications per channel.
    let sends = api.notifier.channel_counts();
    let per_channel = |f: fn(&crate::notify::worker::ChannelCounts) -> u64| {
        let family = Family::<Labels, Counter>::default();
        for (channel, c) in &sends {
            family.get_or_create(&one("channel", channel)).inc_by(f(c));
        }
        family
    };
    r.register(
        "notifications_delivered",
        "Notifications a channel accepted since start",
        per_channel(|c| c.delivered),
    );
    r.register(
        "notification_attempts_failed",
        "Send attempts that failed (retried or given up) since start",
        per_channel(|c| c.failed_attempts),
    );
    r.register(
        "notifications_given_up",
        "Notifications given up after their channel's last attempt since start",
        per_channel(|c| c.given_up),
    );

    // remote_write queues.
    let remotes = api.store.all_remote_stats();
    let per_remote = |f: fn(&crate::store::remote::RemoteStats) -> u64| {
        let family = Family::<Labels, Counter>::default();
        for (remote, st) in &remotes {
            family.get_or_create(&one("remote", remote)).inc_by(f(st));
        }
        family
    };
    r.register(
        "remote_write_sent_samples",
        "Samples a remote_write receiver took since start",
        per_remote(|s| s.sent_samples.load(Ordering::Relaxed)),
    );
    r.register(
        "remote_write_dropped_full_samples",
        "Samples dropped because the remote_write queue was full (the oldest) since start",
        per_remote(|s| s.dropped_full.load(Ordering::Relaxed)),
    );
    r.register(
        "remote_write_dropped_refused_samples",
        "Samples a remote_write receiver refused for good (4xx) since start",
        per_remote(|s| s.dropped_refused.load(Ordering::Relaxed)),
    );
    r.register(
        "remote_write_failed_requests",
        "remote_write requests that failed and were retried since start",
        per_remote(|s| s.failed_requests.load(Ordering::Relaxed)),
    );
    let per_remote_gauge = |f: fn(&crate::store::remote::RemoteStats) -> u64| {
        remotes
            .iter()
            .map(|(remote, st)| (one("remote", remote), f(st) as f64))
            .collect()
    };
    labelled(
        &mut r,
        "remote_write_queue_bytes",
        "Bytes waiting on disk for a remote_write receiver",
        per_remote_gauge(|s| s.queued_bytes.load(Ordering::Relaxed)),
    );
    labelled(
        &mut r,
        "remote_write_shards",
        "Requests a remote_write sender had in flight in its last round (more than 1 while behind)",
        per_remote_gauge(|s| s.shards.load(Ordering::Relaxed)),
    );

    let mut out = String::new();
    encode(&mut out, &r).map_err(|e| tonic::Status::internal(format!("encoding metrics: {e}")))?;
    Ok(out)
}
