//! gRPC service `herd.v1.Herd`.
use std::sync::Arc;
use std::time::Instant;

use herd_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::error::blocking;
use crate::cluster::FleetState;
use crate::collector::stats::ScrapeStats;
use crate::collector::{StateBoard, StatusBoard};
use crate::model::Alert;
use crate::model::{now_ms, Labels};
use crate::rules::runner::RulesHandle;
use crate::store::alerting::Silence;
use crate::store::rollup::Granularity;
use crate::store::Store;

/// Default and largest number of events one call returns.
const DEFAULT_EVENTS: u32 = 100;
const MAX_EVENTS: u32 = 10_000;
/// Largest fleet spec accepted over the API.
const MAX_SPEC_BYTES: usize = 8 * 1024 * 1024;

/// Points as the API sends them.
pub(super) fn points_pb(points: impl IntoIterator<Item = (i64, f64)>) -> Vec<pb::Point> {
    points
        .into_iter()
        .map(|(ts_ms, value)| pb::Point { ts_ms, value })
        .collect()
}

/// Who this node is, for `herd status`.
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    pub id: u64,
    pub address: String,
    pub started: Instant,
}

pub struct HerdApi {
    pub node: NodeIdentity,
    pub store: Store,
    pub board: StatusBoard,
    pub fleet: Arc<FleetState>,
    pub stats: Arc<ScrapeStats>,
    pub states: StateBoard,
    pub rules: RulesHandle,
    /// The outbox's sender (its per-channel counts, for /metrics).
    pub notifier: Arc<crate::notify::worker::Notifier>,
    /// This node's API token, presented when it calls the other nodes' API.
    pub token: Option<String>,
    pub failover_after: std::time::Duration,
    pub lease: std::time::Duration,
}

#[tonic::async_trait]
impl pb::herd_server::Herd for HerdApi {
    async fn status(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        let local_only = req.into_inner().local_only;
        let now = now_ms();
        // A fenced node scrapes nothing: its parked targets are not listed as its own.
        let fenced = self.fleet.cluster().liveness().is_fenced();
        let mut targets: Vec<pb::TargetInfo> = match self.board.read() {
            Ok(board) if fenced => {
                drop(board);
                Vec::new()
            }
            Ok(board) => board
                .iter()
                .map(|(name, s)| pb::TargetInfo {
                    name: name.clone(),
                    owner: self.node.id,
                    up: match s.up {
                        Some(true) => 1,
                        Some(false) => 0,
                        None => -1,
                    },
                    last_scrape_age_s: s
                        .last_scrape_ms
                        .map(|t| (now - t) as f64 / 1000.0)
                        .unwrap_or(-1.0),
                    address: s.address.clone(),
                    transport: s.transport.clone(),
                    exec_mode: s.exec_mode.clone(),
                    interval_ms: s.interval.as_millis() as u64,
                    last_error: s.last_error.clone().unwrap_or_default(),
                    scrapes: s.scrapes,
                    paused: s.paused.as_ref().map(|p| pb::PauseInfo {
                        by: p.by.clone(),
                        reason: p.reason.clone(),
                        since_ms: p.since_ms,
                        until_ms: p.until_ms.unwrap_or(0),
                    }),
                    checks: s
                        .checks
                        .iter()
                        .map(|(name, c)| pb::CheckInfo {
                            name: name.clone(),
                            kind: c.kind.clone(),
                            status: c.status.clone(),
                            detail: c.detail.clone(),
                            ts_ms: c.ts_ms,
                        })
                        .collect(),
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        let (spec_version, spec) = self.fleet.current();
        let herd = self.fleet.state();
        let mut nodes = self.nodes(&herd);
        let unreachable = if local_only {
            Vec::new()
        } else {
            self.herd_targets(&mut targets, &mut nodes, &spec, &herd)
                .await
        };
        let took = self.stats.duration();
        let late = self.stats.lateness();
        let stats = &self.store.stats;
        Ok(Response::new(pb::StatusReply {
            scrapes: Some(pb::ScrapeSummary {
                count: took.count,
                duration_p50_ms: took.p50.as_secs_f64() * 1000.0,
                duration_p99_ms: took.p99.as_secs_f64() * 1000.0,
                duration_max_ms: took.max.as_secs_f64() * 1000.0,
                lateness_p50_ms: late.p50.as_secs_f64() * 1000.0,
                lateness_p99_ms: late.p99.as_secs_f64() * 1000.0,
                lateness_max_ms: late.max.as_secs_f64() * 1000.0,
            }),
            store_samples_dropped: stats
                .samples_dropped
                .load(std::sync::atomic::Ordering::Relaxed),
            store_commits: stats.commits.load(std::sync::atomic::Ordering::Relaxed),
            nodes,
            targets,
            alerts: Vec::new(),
            spec_version,
            ownership_version: herd.ownership_version,
            leader: self.fleet.cluster().leader(),
            term: self.fleet.cluster().term(),
            herd_alerts: herd.alerts.len() as u64,
            herd_forgotten_alerts: herd.forgotten.len() as u64,
            herd_level: self.fleet.cluster().herd_level(),
            unknown_commands: crate::cluster::types::unknown_commands_applied(),
            node_id: self.node.id,
            unreachable,
            herd_id: self
                .fleet
                .cluster()
                .credential()
                .herd_id()
                .unwrap_or_default(),
            refusals: self.fleet.cluster().credential().refusals(),
            bootstrap: self.fleet.cluster().bootstrap_status(),
            rules_inputs_dropped: self.rules.inputs_dropped(),
            quorum_lost: self.fleet.cluster().quorum_lost(),
            spec_error: self.fleet.spec_error().unwrap_or_default(),
            store_bytes: self.store.file_bytes(),
            store_samples: self
                .store
                .stats
                .samples_written
                .load(std::sync::atomic::Ordering::Relaxed),
        }))
    }

    async fn query(
        &self,
        req: Request<pb::QueryRequest>,
    ) -> Result<Response<pb::QueryReply>, Status> {
        let q = req.into_inner();
        if !q.local_only {
            return self.herd_query(q).await.map(Response::new);
        }
        if q.target.is_empty() || q.metric.is_empty() {
            return Err(Status::invalid_argument("target and metric are required"));
        }
        if q.from_ms > q.to_ms {
            return Err(Status::invalid_argument("from_ms is after to_ms"));
        }
        let store = self.store.clone();
        let (target, metric) = (q.target.clone(), q.metric.clone());
        let labels: Labels = q.labels.into_iter().collect();
        let (from, to) = (q.from_ms, q.to_ms);
        if !q.rollup.is_empty() {
            let g = Granularity::parse(&q.rollup).ok_or_else(|| {
                Status::invalid_argument(format!("rollup {:?}: use minute or hour", q.rollup))
            })?;
            let rollups =
                blocking(move || store.rollups(&target, &metric, &labels, g, from, to)).await?;
            return Ok(Response::new(pb::QueryReply {
                target: q.target,
                metric: q.metric,
                rollup: q.rollup,
                rollups: rollups
                    .into_iter()
                    .map(|s| pb::RollupSeries {
                        labels: s.labels.into_iter().collect(),
                        buckets: s
                            .buckets
                            .into_iter()
                            .map(|(bucket_ms, a)| pb::RollupBucket {
                                bucket_ms,
                                count: a.count,
                                min: (a.timed > 0).then_some(a.min),
                                max: (a.timed > 0).then_some(a.max),
                                mean: a.mean(),
                                statuses: a.statuses.into_iter().collect(),
                            })
                            .collect(),
                    })
                    .collect(),
                ..Default::default()
            }));
        }
        let series = blocking(move || store.query(&target, &metric, &labels, from, to)).await?;
        let (_, spec) = self.fleet.current();
        let known = spec.targets.iter().any(|t| t.name == q.target)
            || self.fleet.state().owners.contains_key(&q.target);
        if series.is_empty() && !known {
            return Err(Status::not_found(format!(
                "no target named {:?} in the applied fleet spec, and no data for it",
                q.target
            )));
        }
        Ok(Response::new(pb::QueryReply {
            target: q.target,
            metric: q.metric,
            series: series
                .into_iter()
                .map(|s| pb::Series {
                    labels: s.labels.into_iter().collect(),
                    points: points_pb(s.points),
                })
                .collect(),
            gaps: Vec::new(),
            ..Default::default()
        }))
    }

    async fn events(
        &self,
        req: Request<pb::EventsRequest>,
    ) -> Result<Response<pb::EventsReply>, Status> {
        let q = req.into_inner();
        let limit = match q.limit {
            0 => DEFAULT_EVENTS,
            n => n.min(MAX_EVENTS),
        } as usize;
        let store = self.store.clone();
        let target = (!q.target.is_empty()).then_some(q.target);
        let events = blocking(move || store.events(target.as_deref(), q.since_ms, limit)).await?;
        Ok(Response::new(pb::EventsReply {
            events: events
                .into_iter()
                .map(|e| pb::Event {
                    ts_ms: e.ts_ms,
                    target: e.target,
                    kind: e.kind.as_str().into(),
                    message: e.message,
                })
                .collect(),
        }))
    }

    async fn state(
        &self,
        req: Request<pb::StateRequest>,
    ) -> Result<Response<pb::StateReply>, Status> {
        let q = req.into_inner();
        match crate::collector::checks::json_state::lookup(&self.states, &q.target, &q.path) {
            Some(v) => Ok(Response::new(pb::StateReply {
                json: v.to_string(),
            })),
            None if q.path.is_empty() => Err(Status::not_found(format!(
                "target {:?} has no json_state check on this node",
                q.target
            ))),
            None => Err(Status::not_found(format!(
                "no value at {:?} in the state of {:?}",
                q.path, q.target
            ))),
        }
    }

    async fn alerts(
        &self,
        req: Request<pb::AlertsRequest>,
    ) -> Result<Response<pb::AlertsReply>, Status> {
        let q = req.into_inner();
        let mut alerts: Vec<pb::AlertInfo> =
            self.rules.alerts().iter().map(|a| alert_info(a)).collect();
        self.herd_alerts(&mut alerts);
        alerts.sort_by(|a, b| a.state.cmp(&b.state).then(b.since_ms.cmp(&a.since_ms)));
        let store = self.store.clone();
        let limit = match q.history_limit {
            0 => DEFAULT_EVENTS,
            n => n.min(MAX_EVENTS),
        } as usize;
        let since = q.history_since_ms;
        let (history, outbox) = blocking(move || {
            let h = if since > 0 {
                store.transitions(since, limit)?
            } else {
                Vec::new()
            };
            Ok((h, store.outbox()?.len() as u64))
        })
        .await?;
        Ok(Response::new(pb::AlertsReply {
            alerts,
            history: history
                .into_iter()
                .map(|t| pb::TransitionInfo {
                    alert_id: t.alert_id,
                    rule: t.rule,
                    target: t.target,
                    from: t.from.as_str().into(),
                    to: t.to.as_str().into(),
                    notify: t.notify.map(|k| k.as_str().to_string()).unwrap_or_default(),
                    ts_ms: t.ts_ms,
                    suppressed: t.suppressed.unwrap_or_default(),
                })
                .collect(),
            outbox,
        }))
    }

    async fn ack(&self, req: Request<pb::AckRequest>) -> Result<Response<pb::AckReply>, Status> {
        let q = req.into_inner();
        let by = if q.by.is_empty() {
            "someone".to_string()
        } else {
            q.by
        };
        match self.rules.ack(&q.id, &by).await {
            Some(a) => Ok(Response::new(pb::AckReply {
                alert: Some(alert_info(&a)),
            })),
            None if !q.forwarded => self.ack_on_owner(&q.id, &by).await.map(Response::new),
            None => Err(Status::not_found(format!(
                "no alert with id {:?} on this node",
                q.id
            ))),
        }
    }

    async fn silence_add(
        &self,
        req: Request<pb::SilenceAddRequest>,
    ) -> Result<Response<pb::SilenceInfo>, Status> {
        let q = req.into_inner();
        Silence::check_selector(&q.selector)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if q.duration_ms == 0 {
            return Err(Status::invalid_argument(
                "a silence needs a duration (--for 2h)",
            ));
        }
        let now = now_ms();
        let s = Silence {
            id: format!("s{:x}", (now as u64) ^ (rand_bits() & 0xffff)),
            selector: q.selector,
            until_ms: now.saturating_add(q.duration_ms.min(i64::MAX as u64) as i64),
            reason: q.reason,
            created_ms: now,
            created_by: q.created_by,
        };
        // Committed through Raft: every node has it (an alert silenced here stays
        // silenced after its target moves, and a node down now gets it when back).
        self.fleet.silence(s.clone()).await?;
        Ok(Response::new(silence_info(&s)))
    }

    async fn silence_list(
        &self,
        _req: Request<pb::SilenceListRequest>,
    ) -> Result<Response<pb::SilenceListReply>, Status> {
        let now = now_ms();
        Ok(Response::new(pb::SilenceListReply {
            silences: self
                .fleet
                .state()
                .silences
                .values()
                .filter(|s| s.until_ms > now)
                .map(silence_info)
                .collect(),
        }))
    }

    async fn silence_remove(
        &self,
        req: Request<pb::SilenceRemoveRequest>,
    ) -> Result<Response<pb::SilenceRemoveReply>, Status> {
        let id = req.into_inner().id;
        if self.fleet.unsilence(&id).await? {
            Ok(Response::new(pb::SilenceRemoveReply {}))
        } else {
            Err(Status::not_found(format!("no silence with id {id:?}")))
        }
    }

    async fn pause(
        &self,
        req: Request<pb::PauseRequest>,
    ) -> Result<Response<pb::PauseReply>, Status> {
        let q = req.into_inner();
        let now = now_ms();
        let until_ms = (q.duration_ms > 0)
            .then(|| now.saturating_add(q.duration_ms.min(i64::MAX as u64) as i64));
        let pause = crate::ownership::Pause {
            by: if q.by.is_empty() {
                "someone".into()
            } else {
                q.by
            },
            reason: q.reason,
            since_ms: now,
            until_ms,
        };
        self.fleet.pause(&q.target, pause).await?;
        Ok(Response::new(pb::PauseReply {
            until_ms: until_ms.unwrap_or(0),
        }))
    }

    async fn select(
        &self,
        req: Request<pb::SelectRequest>,
    ) -> Result<Response<pb::SelectReply>, Status> {
        let q = req.into_inner();
        let reply = if q.local_only {
            super::prom::select::local(self, &q).await?
        } else {
            self.herd_select(q).await?
        };
        Ok(Response::new(reply))
    }

    async fn import(
        &self,
        req: Request<pb::ImportRequest>,
    ) -> Result<Response<pb::ImportReply>, Status> {
        let q = req.into_inner();
        let mut series = Vec::with_capacity(q.series.len());
        for s in q.series {
            if s.target.is_empty() || s.metric.is_empty() {
                return Err(Status::invalid_argument(
                    "every imported series needs a target and a metric",
                ));
            }
            series.push(crate::store::ImportSeries {
                target: s.target,
                metric: s.metric,
                labels: s.labels.into_iter().collect(),
                points: s.points.into_iter().map(|p| (p.ts_ms, p.value)).collect(),
            });
        }
        let outcome = self
            .store
            .import(series, q.check_only)
            .await
            .map_err(|e| Status::unavailable(format!("storing the import: {e}")))?;
        Ok(Response::new(pb::ImportReply {
            written: outcome.written,
            refused: outcome
                .refused
                .into_iter()
                .map(|(i, why)| pb::ImportRefusal {
                    series: i as u32,
                    why,
                })
                .collect(),
        }))
    }

    type WatchStream = super::watch::ChangeStream;
    type BackupStream = super::backup::BackupStream;

    async fn backup(
        &self,
        _req: Request<pb::BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        let herd_id = self
            .fleet
            .cluster()
            .credential()
            .herd_id()
            .unwrap_or_default();
        Ok(Response::new(super::backup::start(
            self.store.clone(),
            self.fleet.cluster().clone(),
            self.node.id,
            herd_id,
        )))
    }

    async fn compact(
        &self,
        _req: Request<pb::CompactRequest>,
    ) -> Result<Response<pb::CompactReply>, Status> {
        match self.store.compact().await {
            Ok(c) => {
                // The store's compaction stands whatever becomes of the Raft file's.
                let cluster = self.fleet.cluster().clone();
                let (raft, raft_note) =
                    match tokio::task::spawn_blocking(move || cluster.compact_raft(None)).await {
                        Ok(Ok(Some(r))) => (Some(r), String::new()),
                        Ok(Ok(None)) => (
                            None,
                            "busy (transactions open on it for 5 s); try again".to_string(),
                        ),
                        Ok(Err(e)) => (None, e),
                        Err(e) => (None, format!("compaction task: {e}")),
                    };
                Ok(Response::new(pb::CompactReply {
                    before_bytes: c.before_bytes,
                    after_bytes: c.after_bytes,
                    took_ms: c.took_ms,
                    raft_compacted: raft.is_some(),
                    raft_before_bytes: raft.map_or(0, |r| r.before_bytes),
                    raft_after_bytes: raft.map_or(0, |r| r.after_bytes),
                    raft_took_ms: raft.map_or(0, |r| r.took_ms),
                    raft_note,
                }))
            }
            Err(e @ crate::store::StoreError::Compact(_)) => {
                Err(Status::failed_precondition(e.to_string()))
            }
            Err(e) => Err(Status::internal(e.to_string())),
        }
    }

    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let stream = super::watch::start(
            self.node.id,
            self.store.feed(),
            self.fleet.clone(),
            self.token.clone(),
            req.into_inner(),
        )?;
        Ok(Response::new(stream))
    }

    async fn resume(
        &self,
        req: Request<pb::ResumeRequest>,
    ) -> Result<Response<pb::ResumeReply>, Status> {
        let target = req.into_inner().target;
        match self.fleet.resume(&target).await {
            Ok(true) => Ok(Response::new(pb::ResumeReply {})),
            Ok(false) => Err(Status::not_found(format!(
                "target {target:?} is not paused"
            ))),
            Err(e) => Err(e.into()),
        }
    }

    async fn cluster_init(
        &self,
        _req: Request<pb::ClusterInitRequest>,
    ) -> Result<Response<pb::ClusterReply>, Status> {
        self.do_init().await.map(Response::new)
    }

    async fn cluster_join(
        &self,
        req: Request<pb::ClusterJoinRequest>,
    ) -> Result<Response<pb::ClusterReply>, Status> {
        let seed = req.into_inner().seed;
        if seed.trim().is_empty() {
            return Err(Status::invalid_argument(
                "the address of a member to join is empty",
            ));
        }
        self.do_join(&seed).await.map(Response::new)
    }

    async fn cluster_credential(
        &self,
        _req: Request<pb::ClusterCredentialRequest>,
    ) -> Result<Response<pb::ClusterCredentialReply>, Status> {
        Ok(Response::new(self.credential_reply()))
    }

    async fn cluster_add(
        &self,
        req: Request<pb::ClusterAddRequest>,
    ) -> Result<Response<pb::ClusterReply>, Status> {
        let q = req.into_inner();
        self.do_add(q.id, q.address).await.map(Response::new)
    }

    async fn cluster_leave(
        &self,
        _req: Request<pb::ClusterLeaveRequest>,
    ) -> Result<Response<pb::ClusterReply>, Status> {
        self.do_remove(self.node.id).await.map(Response::new)
    }

    async fn cluster_remove(
        &self,
        req: Request<pb::ClusterRemoveRequest>,
    ) -> Result<Response<pb::ClusterReply>, Status> {
        self.do_remove(req.into_inner().id).await.map(Response::new)
    }

    async fn apply(
        &self,
        req: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::ApplyReply>, Status> {
        let q = req.into_inner();
        if q.fleet_toml.len() > MAX_SPEC_BYTES {
            return Err(Status::invalid_argument(format!(
                "fleet spec is {} bytes; the limit is {MAX_SPEC_BYTES}",
                q.fleet_toml.len()
            )));
        }
        let source = if q.source_name.is_empty() {
            "fleet.toml".to_string()
        } else {
            q.source_name
        };
        let (version, d) = self.fleet.apply(&q.fleet_toml, &source).await?;
        Ok(Response::new(pb::ApplyReply {
            spec_version: version,
            added: d.added,
            changed: d.changed,
            removed: d.removed,
            unchanged: d.unchanged,
        }))
    }
}

pub(super) fn alert_info(a: &Alert) -> pb::AlertInfo {
    pb::AlertInfo {
        id: a.id.clone(),
        rule: a.rule.clone(),
        target: a.target.clone(),
        labels: a.labels.clone().into_iter().collect(),
        severity: a.severity.as_str().into(),
        state: a.state.as_str().into(),
        since_ms: a.since_ms,
        active_since_ms: a.active_since_ms,
        value: a.value.clone(),
        summary: a.summary.clone(),
        description: a.description.clone(),
        acked_by: a.acked_by.clone().unwrap_or_default(),
        flapping: a.flapping,
        transitions: a.transitions,
    }
}

fn silence_info(s: &Silence) -> pb::SilenceInfo {
    pb::SilenceInfo {
        id: s.id.clone(),
        selector: s.selector.clone(),
        until_ms: s.until_ms,
        reason: s.reason.clone(),
        created_ms: s.created_ms,
        created_by: s.created_by.clone(),
    }
}

/// A few random bits for ids.
fn rand_bits() -> u64 {
    use rand::Rng;
    rand::rng().random()
}
