//! remote_write: each node feeds the `[[remote_write]]` receivers of the fleet spec
//! with the samples it collects, with the Prometheus remote-write 1.0 protocol
//! (a snappy-compressed protobuf `WriteRequest` POSTed to the URL).
//!
//! The samples wait in the node's redb file (`store::remote`: written in the same
//! commit as the samples themselves) until the receiver took them, so neither a
//! receiver down for an hour nor a `kill -9` of the node loses any. One sender per
//! remote reads the oldest entries, posts up to `max_samples_per_send` samples at a
//! time, and acknowledges them when the receiver answered 2xx. A 5xx, a 429, a
//! timeout or a refused connection is retried (1 s doubling up to `backoff_max`, or
//! what `Retry-After` says); any other 4xx refuses the batch for good: it is dropped
//! and counted (the receiver would refuse it again). The queue is bounded
//! (`max_queue_mb`): beyond it the oldest samples are dropped and counted.
//!
//! A takeover leaves no hole: each node sends what it collected, from its own
//! queue; the samples a dead owner collected and had not sent go out when it comes
//! back (its queue is on its disk), and its successor sends what it collects from
//! the takeover on. Series are named as the Prometheus face names them
//! (`model::prom_names`), plus the remote's `labels`.
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herd_proto::prometheus as pb;
use prost::Message;
use tokio_util::sync::CancellationToken;

use crate::config::remote_write::RemoteWriteSpec;
use crate::model::{prom_names, text, Sample};
use crate::ownership::OwnedRx;
use crate::store::remote::{QueuedBatch, RemoteSink, RemoteStats};
use crate::store::Store;
use crate::transport::http::{self, Request, Tls, Via};

/// How often an empty queue is looked at again.
const IDLE_POLL: Duration = Duration::from_millis(500);
/// The first retry wait.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);

/// Encodes `samples` as the `WriteRequest` a remote takes (those it selects, named
/// as the Prometheus face names them, with its extra labels): their count and the
/// protobuf, not compressed; `None` when it takes none.
pub fn encode(spec: &RemoteWriteSpec, samples: &[Sample]) -> Option<(u32, Vec<u8>)> {
    let mut series: BTreeMap<BTreeMap<String, String>, Vec<pb::Sample>> = BTreeMap::new();
    let mut count = 0u32;
    for s in samples {
        if !spec.selects(&s.target, &s.metric) {
            continue;
        }
        let mut labels = prom_names::prom_labels(&s.target, &s.metric, &s.labels);
        for (k, v) in &spec.labels {
            labels.entry(k.clone()).or_insert_with(|| v.clone());
        }
        series.entry(labels).or_default().push(pb::Sample {
            value: s.value,
            timestamp: s.ts_ms,
        });
        count += 1;
    }
    if count == 0 {
        return None;
    }
    let req = pb::WriteRequest {
        timeseries: series
            .into_iter()
            .map(|(labels, mut samples)| {
                samples.sort_by_key(|s| s.timestamp);
                pb::TimeSeries {
                    // A BTreeMap: sorted by name, as the protocol wants.
                    labels: labels
                        .into_iter()
                        .map(|(name, value)| pb::Label { name, value })
                        .collect(),
                    samples,
                }
            })
            .collect(),
    };
    Some((count, req.encode_to_vec()))
}

/// A remote ready to post: URL, TLS and the headers of every request.
struct Endpoint {
    name: String,
    uri: ::http::Uri,
    tls: Tls,
    headers: Vec<(String, String)>,
    /// Secrets, kept out of error messages.
    secrets: Vec<String>,
    timeout: Duration,
    backoff_max: Duration,
    max_samples: usize,
    max_shards: usize,
}

impl Endpoint {
    fn build(spec: &RemoteWriteSpec) -> Result<Endpoint, String> {
        let (uri, _, _, _) = http::parse_url(&spec.url).map_err(|e| e.to_string())?;
        let tls = Tls::new(true, spec.ca_file.as_deref()).map_err(|e| e.to_string())?;
        let mut headers = vec![
            ("content-type".into(), "application/x-protobuf".into()),
            ("content-encoding".into(), "snappy".into()),
            ("x-prometheus-remote-write-version".into(), "0.1.0".into()),
        ];
        let mut secrets = Vec::new();
        headers.extend(http::checked_headers(&spec.headers).map_err(|e| e.to_string())?);
        if let Some(t) = &spec.token {
            let t = t.read().map_err(|e| format!("token: {e}"))?;
            headers.push(("authorization".into(), format!("Bearer {t}")));
            secrets.push(t);
        }
        if let (Some(user), Some(pass)) = (&spec.username, &spec.password) {
            let pass = pass.read().map_err(|e| format!("password: {e}"))?;
            let basic = base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                format!("{user}:{pass}"),
            );
            headers.push(("authorization".into(), format!("Basic {basic}")));
            secrets.push(pass);
            secrets.push(basic);
        }
        Ok(Endpoint {
            name: spec.name.clone(),
            uri,
            tls,
            headers,
            secrets,
            timeout: spec.timeout(),
            backoff_max: spec.backoff_max(),
            max_samples: spec.max_samples_per_send(),
            max_shards: spec.max_shards(),
        })
    }

    fn redact(&self, what: &str) -> String {
        let secrets: Vec<&str> = self.secrets.iter().map(String::as_str).collect();
        text::redact(what, &secrets)
    }

    /// Posts one request; what became of it.
    async fn post(&self, body: Bytes) -> Outcome {
        let req = Request {
            method: ::http::Method::POST,
            uri: self.uri.clone(),
            headers: self.headers.clone(),
            body: Some(body),
        };
        match http::fetch(&req, Via::Node, &self.tls, self.timeout).await {
            Ok(r) if (200..300).contains(&r.status) => Outcome::Taken,
            Ok(r) if r.status == 429 || r.status >= 500 || r.status == 408 => Outcome::Retry {
                why: format!(
                    "HTTP {}: {}",
                    r.status,
                    self.redact(&text::body_snippet(&r.body))
                ),
                after: r.retry_after,
            },
            Ok(r) => Outcome::Refused(format!(
                "HTTP {}: {}",
                r.status,
                self.redact(&text::body_snippet(&r.body))
            )),
            Err(e) => Outcome::Retry {
                why: self.redact(&e.to_string()),
                after: None,
            },
        }
    }
}

enum Outcome {
    Taken,
    Retry {
        why: String,
        after: Option<Duration>,
    },
    Refused(String),
}

/// One request of a round: the compressed body and the samples it holds.
struct Part {
    body: Bytes,
    samples: u64,
}

/// The requests that carry `batch`: one when it fits in `max_samples` (the
/// entries' protobufs concatenated: they are one request), else the backlog split
/// by series into up to `max_shards` requests that may go in parallel — a series
/// is in exactly one of them, so its samples reach the receiver in order.
fn parts_of(name: &str, batch: &[QueuedBatch], max_samples: usize, max_shards: usize) -> Vec<Part> {
    let total: u64 = batch.iter().map(|b| u64::from(b.samples)).sum();
    let mut raw = Vec::new();
    let mut decoder = snap::raw::Decoder::new();
    for b in batch {
        match decoder.decompress_vec(&b.body) {
            Ok(r) => raw.extend_from_slice(&r),
            Err(e) => {
                tracing::error!(remote = %name, seq = b.seq, error = %e, "a remote_write queue entry does not decompress; skipped")
            }
        }
    }
    let shards = usize::try_from(total.div_ceil(max_samples.max(1) as u64))
        .unwrap_or(usize::MAX)
        .clamp(1, max_shards.max(1));
    let bodies: Vec<(u64, Vec<u8>)> = if shards == 1 {
        vec![(total, raw)]
    } else {
        match pb::WriteRequest::decode(raw.as_slice()) {
            Ok(req) => split_by_series(req, shards),
            Err(e) => {
                tracing::error!(remote = %name, error = %e, "a remote_write batch does not decode; sent as one request");
                vec![(total, raw)]
            }
        }
    };
    let mut encoder = snap::raw::Encoder::new();
    bodies
        .into_iter()
        .filter_map(|(samples, raw)| match encoder.compress_vec(&raw) {
            Ok(b) => Some(Part {
                body: Bytes::from(b),
                samples,
            }),
            Err(e) => {
                tracing::error!(remote = %name, samples, error = %e, "cannot compress a remote_write request; dropped");
                None
            }
        })
        .collect()
}

/// `req`'s series dealt into `shards` requests by a hash of their labels (the
/// same series always to the same one); empty ones left out. Each with its count.
fn split_by_series(req: pb::WriteRequest, shards: usize) -> Vec<(u64, Vec<u8>)> {
    use std::hash::{Hash, Hasher};
    let mut out: Vec<(u64, pb::WriteRequest)> = (0..shards)
        .map(|_| (0, pb::WriteRequest::default()))
        .collect();
    for ts in req.timeseries {
        // SipHash with fixed keys: the same shard for the same labels, every run.
        let mut h = std::hash::DefaultHasher::new();
        for l in &ts.labels {
            (l.name.as_str(), l.value.as_str()).hash(&mut h);
        }
        let (count, shard) = &mut out[(h.finish() % shards as u64) as usize];
        *count += ts.samples.len() as u64;
        shard.timeseries.push(ts);
    }
    out.into_iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, r)| (n, r.encode_to_vec()))
        .collect()
}

/// Sends `name`'s queue until `cancel`.
async fn send_loop(
    store: Store,
    ep: Arc<Endpoint>,
    stats: Arc<RemoteStats>,
    cancel: CancellationToken,
) {
    let mut backoff = BACKOFF_FIRST;
    let mut failing_since: Option<std::time::Instant> = None;
    // Acknowledged entries leave the file with the store's next commit; until
    // then they are skipped.
    let mut acked: Option<u64> = None;
    loop {
        let read = ep.max_samples.saturating_mul(ep.max_shards);
        let batch = match store.remote_oldest(&ep.name, acked, read).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(remote = %ep.name, error = %e, "cannot read the remote_write queue");
                Vec::new()
            }
        };
        let Some(last) = batch.last().map(|b| b.seq) else {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(IDLE_POLL) => continue,
            }
        };
        let mut pending = parts_of(&ep.name, &batch, ep.max_samples, ep.max_shards);
        // Until every part of the round was taken or refused for good: only then
        // may the next round carry newer samples of the same series.
        while !pending.is_empty() {
            stats.shards.store(pending.len() as u64, Ordering::Relaxed);
            let mut posts = tokio::task::JoinSet::new();
            for (i, part) in pending.iter().enumerate() {
                let (ep, body) = (ep.clone(), part.body.clone());
                posts.spawn(async move { (i, ep.post(body).await) });
            }
            let mut outcomes = Vec::with_capacity(pending.len());
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    done = posts.join_next() => match done {
                        Some(Ok(o)) => outcomes.push(o),
                        Some(Err(e)) => tracing::error!(remote = %ep.name, error = %e, "a remote_write post ended abnormally"),
                        None => break,
                    },
                }
            }
            let mut slots: Vec<Option<Part>> = pending.into_iter().map(Some).collect();
            let mut retry_after: Option<Duration> = None;
            let mut why_retry = None;
            for (i, outcome) in outcomes {
                let Some(part) = slots.get_mut(i).and_then(Option::take) else {
                    continue;
                };
                match outcome {
                    Outcome::Taken => {
                        stats
                            .sent_samples
                            .fetch_add(part.samples, Ordering::Relaxed);
                    }
                    Outcome::Refused(why) => {
                        tracing::error!(remote = %ep.name, samples = part.samples, error = %why, "remote_write receiver refused a batch for good; dropped");
                        stats
                            .dropped_refused
                            .fetch_add(part.samples, Ordering::Relaxed);
                    }
                    Outcome::Retry { why, after } => {
                        stats.failed_requests.fetch_add(1, Ordering::Relaxed);
                        retry_after = retry_after.max(after);
                        why_retry = Some(why);
                        slots[i] = Some(part);
                    }
                }
            }
            // A part whose post ended abnormally is posted again, as a retry.
            pending = slots.into_iter().flatten().collect();
            let Some(why) =
                why_retry.or_else(|| (!pending.is_empty()).then(|| "post aborted".to_string()))
            else {
                if let Some(t) = failing_since.take() {
                    tracing::info!(remote = %ep.name, after = ?t.elapsed(), "remote_write receiver takes samples again");
                }
                backoff = BACKOFF_FIRST;
                continue;
            };
            if failing_since.is_none() {
                failing_since = Some(std::time::Instant::now());
                tracing::warn!(remote = %ep.name, error = %why, "remote_write receiver does not take samples; they wait on disk and are retried");
            } else {
                tracing::debug!(remote = %ep.name, error = %why, "remote_write retry failed");
            }
            let wait = retry_after
                .unwrap_or(backoff)
                .min(ep.backoff_max.max(BACKOFF_FIRST));
            backoff = (backoff * 2).min(ep.backoff_max);
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        store.remote_ack(&ep.name, last).await;
        acked = Some(last);
    }
}

/// Follows the fleet spec in force: one sender per `[[remote_write]]`, restarted
/// when its settings change; the store fills their queues. Until `cancel`.
pub async fn run(store: Store, mut owned: OwnedRx, cancel: CancellationToken) {
    let mut running: BTreeMap<String, (RemoteWriteSpec, CancellationToken)> = BTreeMap::new();
    let mut applied_version = None;
    loop {
        let (version, specs) = {
            let o = owned.borrow_and_update();
            (o.spec_version, o.spec.remote_write.clone())
        };
        // Before a spec is applied the queues stay as they are (a restart must not
        // forget them before it knows the spec).
        if version > 0 && applied_version != Some(version) {
            applied_version = Some(version);
            configure(&store, &specs, &mut running, &cancel).await;
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            changed = owned.changed() => if changed.is_err() { break },
        }
    }
    for (_, (_, c)) in running {
        c.cancel();
    }
}

async fn configure(
    store: &Store,
    specs: &[RemoteWriteSpec],
    running: &mut BTreeMap<String, (RemoteWriteSpec, CancellationToken)>,
    cancel: &CancellationToken,
) {
    running.retain(|name, (spec, c)| {
        let keep = specs.iter().any(|s| s == spec && &s.name == name);
        if !keep {
            c.cancel();
        }
        keep
    });
    let mut sinks = Vec::new();
    for spec in specs {
        let stats = store.remote_stats(&spec.name);
        let for_encode = spec.clone();
        sinks.push(Arc::new(RemoteSink {
            name: spec.name.clone(),
            max_bytes: spec.max_queue_bytes(),
            encode: Box::new(move |samples| {
                let (count, raw) = encode(&for_encode, samples)?;
                let body = snap::raw::Encoder::new().compress_vec(&raw).ok()?;
                Some((count, body))
            }),
            stats: stats.clone(),
        }));
        if running.contains_key(&spec.name) {
            continue;
        }
        match Endpoint::build(spec) {
            Ok(ep) => {
                let c = cancel.child_token();
                tracing::info!(remote = %spec.name, url = %ep.uri, "remote_write sender started");
                tokio::spawn(send_loop(store.clone(), Arc::new(ep), stats, c.clone()));
                running.insert(spec.name.clone(), (spec.clone(), c));
            }
            Err(why) => {
                tracing::error!(remote = %spec.name, error = %why, "remote_write cannot start; its samples wait on disk until it is fixed");
            }
        }
    }
    store.set_remote_sinks(sinks).await;
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::model::{now_ms, Labels};
    use crate::store::StoreOptions;

    fn spec(toml_extra: &str) -> RemoteWriteSpec {
        let text = format!(
            "[[remote_write]]\nname = \"lts\"\nurl = \"http://127.0.0.1:1/api/v1/write\"\n{toml_extra}"
        );
        crate::config::parse_fleet(&text, "f.toml")
            .unwrap()
            .remote_write
            .remove(0)
    }

    fn sample(
        target: &str,
        metric: &str,
        labels: &[(&str, &str)],
        ts_ms: i64,
        value: f64,
    ) -> Sample {
        let mut l = Labels::new();
        for (k, v) in labels {
            l.insert((*k).into(), (*v).into());
        }
        Sample {
            target: target.into(),
            metric: metric.into(),
            labels: l,
            ts_ms,
            value,
        }
    }

    #[test]
    fn encode_selects_names_and_labels_as_the_prometheus_face() {
        let s = spec("targets = [\"web-*\"]\nmetrics = [\"disk.*\"]\nlabels = { herd = \"eu\", mount = \"ignored\" }\n");
        let samples = vec![
            sample("web-1", "disk.used_pct", &[("mount", "/")], 2000, 51.5),
            sample("web-1", "disk.used_pct", &[("mount", "/")], 1000, 50.0),
            sample("web-1", "cpu.used_pct", &[], 1000, 3.0),
            sample("db-1", "disk.used_pct", &[("mount", "/")], 1000, 9.0),
        ];
        let (count, raw) = encode(&s, &samples).unwrap();
        assert_eq!(count, 2, "only web-* and disk.*");
        let req = pb::WriteRequest::decode(raw.as_slice()).unwrap();
        assert_eq!(req.timeseries.len(), 1);
        let ts = &req.timeseries[0];
        let labels: Vec<(&str, &str)> = ts
            .labels
            .iter()
            .map(|l| (l.name.as_str(), l.value.as_str()))
            .collect();
        // Sorted by name; the series' own label wins over an extra one.
        assert_eq!(
            labels,
            vec![
                ("__name__", "herd_disk_used_pct"),
                ("herd", "eu"),
                ("mount", "/"),
                ("target", "web-1")
            ]
        );
        let points: Vec<(i64, f64)> = ts.samples.iter().map(|p| (p.timestamp, p.value)).collect();
        assert_eq!(points, vec![(1000, 50.0), (2000, 51.5)], "oldest first");
        assert!(encode(&s, &samples[2..3]).is_none(), "nothing selected");
        // Requests concatenate: two entries' bytes are one request of both.
        let (_, a) = encode(&s, &samples[..1]).unwrap();
        let (_, b) = encode(&s, &samples[1..2]).unwrap();
        let both = pb::WriteRequest::decode([a, b].concat().as_slice()).unwrap();
        assert_eq!(both.timeseries.len(), 2);
    }

    fn open(dir: &std::path::Path) -> Store {
        Store::open(
            dir,
            StoreOptions {
                retention: Duration::from_secs(24 * 3600),
                flush_interval: Duration::from_millis(20),
                chunk_samples: 120,
                ..Default::default()
            },
        )
        .unwrap()
    }

    fn sink(store: &Store, spec: &RemoteWriteSpec, max_bytes: u64) -> Arc<RemoteSink> {
        let for_encode = spec.clone();
        Arc::new(RemoteSink {
            name: spec.name.clone(),
            max_bytes,
            encode: Box::new(move |s| {
                let (n, raw) = encode(&for_encode, s)?;
                Some((n, snap::raw::Encoder::new().compress_vec(&raw).ok()?))
            }),
            stats: store.remote_stats(&spec.name),
        })
    }

    #[tokio::test]
    async fn the_queue_is_durable_acknowledged_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let s = spec("");
        let t0 = now_ms() - 60_000;
        {
            let store = open(dir.path());
            store
                .set_remote_sinks(vec![sink(&store, &s, 1 << 20)])
                .await;
            for i in 0..3 {
                store.append(vec![sample(
                    "web-1",
                    "cpu.used_pct",
                    &[],
                    t0 + i * 1000,
                    i as f64,
                )]);
                store.flush_blocking().unwrap();
            }
            let q = store.remote_oldest("lts", None, 100).await.unwrap();
            assert_eq!(q.iter().map(|b| b.samples).sum::<u32>(), 3, "{q:?}");
            // Acknowledged up to the second entry: one left after the commit.
            store.remote_ack("lts", q[1].seq).await;
            store.flush_blocking().unwrap();
            let left = store.remote_oldest("lts", None, 100).await.unwrap();
            assert_eq!(left.len(), 1);
            assert_eq!(left[0].seq, q[2].seq);
            // Read after a seq: the sender skips what it acknowledged.
            assert!(store
                .remote_oldest("lts", Some(q[2].seq), 100)
                .await
                .unwrap()
                .is_empty());
            store.close().unwrap();
        }
        // A restart keeps what was not acknowledged.
        let store = open(dir.path());
        let left = store.remote_oldest("lts", None, 100).await.unwrap();
        assert_eq!(left.len(), 1, "kept across a restart");
        // A tiny bound drops the oldest, counted.
        let small = sink(&store, &s, 1);
        let stats = small.stats.clone();
        store.set_remote_sinks(vec![small]).await;
        store.append(vec![sample("web-1", "cpu.used_pct", &[], t0 + 5000, 5.0)]);
        store.flush_blocking().unwrap();
        assert!(stats.dropped_full.load(Ordering::Relaxed) >= 1);
        assert_eq!(stats.queued_bytes.load(Ordering::Relaxed), 0);
        // A remote no longer configured: its queue is forgotten.
        store.append(vec![sample("web-1", "cpu.used_pct", &[], t0 + 6000, 6.0)]);
        store.set_remote_sinks(Vec::new()).await;
        store.flush_blocking().unwrap();
        assert!(store
            .remote_oldest("lts", None, 100)
            .await
            .unwrap()
            .is_empty());
        store.close().unwrap();
    }

    /// What the test receiver saw.
    #[derive(Default)]
    struct Seen {
        in_flight: usize,
        max_in_flight: usize,
        requests: usize,
        /// Per series (its labels), the times received, in arrival order.
        series: BTreeMap<Vec<(String, String)>, Vec<i64>>,
    }

    /// A real HTTP receiver on loopback (axum): decodes each request as a
    /// remote-write receiver does, takes 30 ms, refuses every third request with
    /// a 503 (so some parts of a round are retried and others not).
    async fn receiver(seen: Arc<std::sync::Mutex<Seen>>) -> String {
        use axum::body::Bytes as Body;
        let app = axum::Router::new().route(
            "/api/v1/write",
            axum::routing::post(move |body: Body| {
                let seen = seen.clone();
                async move {
                    let n = {
                        let mut s = seen.lock().unwrap();
                        s.in_flight += 1;
                        s.max_in_flight = s.max_in_flight.max(s.in_flight);
                        s.requests += 1;
                        s.requests
                    };
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    let mut s = seen.lock().unwrap();
                    s.in_flight -= 1;
                    if n % 3 == 0 {
                        return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                    }
                    let raw = snap::raw::Decoder::new().decompress_vec(&body).unwrap();
                    let req = pb::WriteRequest::decode(raw.as_slice()).unwrap();
                    for ts in req.timeseries {
                        let key = ts.labels.into_iter().map(|l| (l.name, l.value)).collect();
                        let times = s.series.entry(key).or_default();
                        times.extend(ts.samples.iter().map(|p| p.timestamp));
                    }
                    axum::http::StatusCode::NO_CONTENT
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}/api/v1/write")
    }

    #[tokio::test]
    async fn a_backlog_goes_in_parallel_shards_each_series_in_order_exactly_once() {
        let seen = Arc::new(std::sync::Mutex::new(Seen::default()));
        let url = receiver(seen.clone()).await;
        let text = format!(
            "[[remote_write]]\nname = \"lts\"\nurl = \"{url}\"\nmax_samples_per_send = 100\nmax_shards = 4\nbackoff_max = \"1s\"\n"
        );
        let s = crate::config::parse_fleet(&text, "f.toml")
            .unwrap()
            .remote_write
            .remove(0);
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store
            .set_remote_sinks(vec![sink(&store, &s, 64 << 20)])
            .await;
        // A backlog: 40 series x 50 samples, in 10 commits of 5 samples per series.
        let t0 = now_ms() - 3_600_000;
        for commit in 0..10i64 {
            let mut batch = Vec::new();
            for series in 0..40 {
                for k in 0..5i64 {
                    let i = commit * 5 + k;
                    let target = format!("web-{series}");
                    batch.push(sample(
                        &target,
                        "cpu.used_pct",
                        &[],
                        t0 + i * 1000,
                        i as f64,
                    ));
                }
            }
            store.append(batch);
            store.flush_blocking().unwrap();
        }
        let ep = Arc::new(Endpoint::build(&s).unwrap());
        let stats = store.remote_stats("lts");
        let cancel = CancellationToken::new();
        let sender = tokio::spawn(send_loop(store.clone(), ep, stats.clone(), cancel.clone()));
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while stats.sent_samples.load(Ordering::Relaxed) < 2000 {
            assert!(std::time::Instant::now() < deadline, "not all sent in 60 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        cancel.cancel();
        sender.await.unwrap();
        {
            let s = seen.lock().unwrap();
            assert!(
                s.max_in_flight >= 2,
                "the backlog went in parallel: {}",
                s.max_in_flight
            );
            assert!(
                s.max_in_flight <= 4,
                "at most max_shards: {}",
                s.max_in_flight
            );
            assert_eq!(s.series.len(), 40);
            for (labels, times) in &s.series {
                let want: Vec<i64> = (0..50).map(|i| t0 + i * 1000).collect();
                assert_eq!(times, &want, "{labels:?}: every sample once, in order");
            }
            assert_eq!(stats.sent_samples.load(Ordering::Relaxed), 2000);
            assert!(
                stats.failed_requests.load(Ordering::Relaxed) >= 1,
                "the 503s were retried"
            );
        }
        store.flush_blocking().unwrap();
        assert!(
            store
                .remote_oldest("lts", None, 10)
                .await
                .unwrap()
                .is_empty(),
            "all acknowledged"
        );
        store.close().unwrap();
    }
}
