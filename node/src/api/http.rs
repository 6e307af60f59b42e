//! The HTTP face on `node.http`: REST JSON for what the CLI does, over the same
//! service as gRPC. Each route calls the `herd.v1.Herd` method the CLI calls (the
//! same fan-out across the herd, the same validation and errors) and answers with
//! the document `herd ... --json` prints ([`super::json`]), so no status, query or
//! alert logic lives here.
//!
//! Routes (all under the API token when the node has one):
//!
//! | route | gRPC method |
//! |---|---|
//! | `GET /herd/v1/status[?local=true][&target=PART][&state=up\|down\|unscraped\|paused\|failing][&owner=N][&offset=N][&limit=N]` | Status (targets filtered and paged on the node; `page` says how many) |
//! | `GET /herd/v1/query?target=T&metric=M[&since=1h][&from=MS&to=MS][&label=K=V]...[&rollup=minute\|hour][&local=true]` | Query |
//! | `GET /herd/v1/alerts[?history=24h][&limit=N]` | Alerts |
//! | `POST /herd/v1/alerts/{id}/ack[?by=NAME]` | Ack |
//! | `GET /herd/v1/events[?target=T][&since=24h][&limit=N]` | Events |
//! | `GET /herd/v1/silences` | SilenceList |
//! | `POST /herd/v1/silences?selector=S&for=2h[&reason=R][&by=NAME]` | SilenceAdd |
//! | `DELETE /herd/v1/silences/{id}` | SilenceRemove |
//! | `POST /herd/v1/targets/{name}/pause[?for=1h][&reason=R][&by=NAME]` | Pause |
//! | `POST /herd/v1/targets/{name}/resume` | Resume |
//! | `POST /herd/v1/apply[?source=NAME]` with the fleet TOML as the body | Apply |
//! | `GET /herd/v1/watch[?target=T][&kind=event\|alert\|owner\|node]...[&local=true]` | Watch, as server-sent events |
//! | `GET/POST /api/v1/query`, `query_range`, `series`, `labels`, `GET /api/v1/label/{name}/values`, `metadata`, `GET /federate` | the Prometheus HTTP API ([`super::prom`]) over Select |
//! | `GET /metrics` | this node's health, Prometheus text format ([`super::metrics`]) |
//! | `GET /`, `/ui/*` | the dashboard ([`super::dashboard`]; no data, no token needed) |
//!
//! Errors are `{"error": {"status", "code", "message", "items"?}}`: 400 bad input
//! (`items`: one line per problem the node found, `file:line: key: message` for a
//! spec; absent for a bad parameter of the route itself), 401 without the
//! token, 404 unknown target or alert, 409 a precondition (not in a herd), 503 no
//! leader or quorum, 500 otherwise.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use herd_proto::v1 as pb;
use herd_proto::v1::herd_server::Herd;
use serde_json::{json, Value};
use tonic::{Code, Request};

use super::grpc::HerdApi;
use super::json;
use crate::cluster::credential::constant_time_eq;
use crate::model::now_ms;

/// Largest request body (a fleet spec; the gRPC API takes 8 MiB too).
const MAX_BODY: usize = 8 * 1024 * 1024;
/// `since` when a query names none.
const DEFAULT_SINCE: Duration = Duration::from_secs(3600);

/// What the routes share.
pub struct HttpFace {
    pub api: Arc<HerdApi>,
    /// `Bearer <token>`, when the node has a token.
    expected: Option<Vec<u8>>,
}

impl HttpFace {
    pub fn new(api: Arc<HerdApi>, token: Option<&str>) -> Arc<HttpFace> {
        Arc::new(HttpFace {
            api,
            expected: token.map(|t| format!("Bearer {t}").into_bytes()),
        })
    }

    pub(super) fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(expected) = &self.expected else {
            return true;
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        constant_time_eq(given, expected)
    }
}

/// The router of the HTTP face.
pub fn router(face: Arc<HttpFace>) -> Router {
    Router::new()
        .route("/herd/v1/status", get(status))
        .route("/herd/v1/query", get(query))
        .route("/herd/v1/alerts", get(alerts))
        .route("/herd/v1/alerts/{id}/ack", post(ack))
        .route("/herd/v1/events", get(events))
        .route("/herd/v1/silences", get(silences).post(silence_add))
        .route("/herd/v1/silences/{id}", delete(silence_remove))
        .route("/herd/v1/targets/{name}/pause", post(pause))
        .route("/herd/v1/targets/{name}/resume", post(resume))
        .route("/herd/v1/apply", post(apply))
        .route("/herd/v1/watch", get(watch))
        .route("/metrics", get(metrics))
        .merge(super::prom::routes())
        .merge(super::dashboard::routes())
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(face)
}

// ---------------------------------------------------------------------------------
// Errors

/// An error answer: status, a stable code, a message, and items for a spec's
/// problems.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    items: Vec<String>,
}

impl ApiError {
    fn bad(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "bad_request",
            message: message.into(),
            items: Vec::new(),
        }
    }

    fn unauthorized() -> ApiError {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            code: "unauthenticated",
            message: "this node requires its API token: Authorization: Bearer <token>".into(),
            items: Vec::new(),
        }
    }
}

/// The one mapping from gRPC statuses to HTTP answers.
impl From<tonic::Status> for ApiError {
    fn from(s: tonic::Status) -> ApiError {
        let (status, code) = match s.code() {
            Code::InvalidArgument | Code::OutOfRange => (StatusCode::BAD_REQUEST, "bad_request"),
            Code::Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            Code::PermissionDenied => (StatusCode::FORBIDDEN, "forbidden"),
            Code::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            Code::AlreadyExists => (StatusCode::CONFLICT, "conflict"),
            Code::FailedPrecondition => (StatusCode::CONFLICT, "failed_precondition"),
            Code::Unavailable | Code::DeadlineExceeded => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        let message = s.message().to_string();
        // A spec's problems come one per line (`file:line: key: message`).
        let items = if status == StatusCode::BAD_REQUEST {
            message
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect()
        } else {
            Vec::new()
        };
        ApiError {
            status,
            code,
            message,
            items,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({
            "status": self.status.as_u16(),
            "code": self.code,
            "message": self.message,
        });
        if !self.items.is_empty() {
            body["items"] = json!(self.items);
        }
        let mut resp = (self.status, Json(json!({ "error": body }))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

type Answer = Result<Json<Value>, ApiError>;

async fn not_found() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        code: "not_found",
        message: "no such route; see the README's HTTP API section".into(),
        items: Vec::new(),
    }
}

// ---------------------------------------------------------------------------------
// Query strings

/// A query string's parameters (a name may repeat: `label`).
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(raw: Option<String>) -> Params {
        Params(
            form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn required(&self, name: &str) -> Result<&str, ApiError> {
        self.get(name)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| ApiError::bad(format!("parameter {name} is required")))
    }

    fn duration(&self, name: &str) -> Result<Option<Duration>, ApiError> {
        self.get(name)
            .map(|v| {
                humantime::parse_duration(v).map_err(|e| {
                    ApiError::bad(format!(
                        "parameter {name}: {v:?} is not a duration like 90s, 15m, 2h ({e})"
                    ))
                })
            })
            .transpose()
    }

    fn number<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, ApiError> {
        self.get(name)
            .map(|v| {
                v.parse::<T>()
                    .map_err(|_| ApiError::bad(format!("parameter {name}: {v:?} is not a number")))
            })
            .transpose()
    }

    fn flag(&self, name: &str) -> Result<bool, ApiError> {
        match self.get(name) {
            None | Some("false") | Some("0") => Ok(false),
            Some("") | Some("true") | Some("1") => Ok(true),
            Some(v) => Err(ApiError::bad(format!(
                "parameter {name}: {v:?} is not true or false"
            ))),
        }
    }

    /// Who did it: `by`, else "http".
    fn by(&self) -> String {
        self.get("by")
            .filter(|v| !v.is_empty())
            .unwrap_or("http")
            .to_string()
    }
}

fn ms(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

// ---------------------------------------------------------------------------------
// Routes

/// Checks the token and parses the query string.
fn check(face: &HttpFace, headers: &HeaderMap, raw: Option<String>) -> Result<Params, ApiError> {
    if !face.authorized(headers) {
        return Err(ApiError::unauthorized());
    }
    Ok(Params::parse(raw))
}

async fn status(State(f): State<Arc<HttpFace>>, h: HeaderMap, RawQuery(q): RawQuery) -> Answer {
    {
        let p = check(&f, &h, q)?;
        let local_only = p.flag("local")?;
        let page = TargetPage::parse(&p)?;
        let mut r = f
            .api
            .status(Request::new(pb::StatusRequest { local_only }))
            .await?
            .into_inner();
        let machines = json::machines_json(&r.targets);
        let summary = page.apply(&mut r.targets);
        let mut doc = json::status_json(&r);
        doc["page"] = summary;
        doc["machines"] = machines;
        Ok(Json(doc))
    }
}

/// Which of the herd's targets a status answer lists: the dashboard's filter and
/// pager (`target=` a case-insensitive part of the name, `state=`, `owner=`,
/// `offset=`, `limit=`), applied on the node so a page of a 10,000-target herd
/// stays small. Without them, every target.
struct TargetPage {
    name: Option<String>,
    state: Option<TargetState>,
    owner: Option<u64>,
    offset: usize,
    limit: Option<usize>,
}

#[derive(Clone, Copy, PartialEq)]
enum TargetState {
    Up,
    Down,
    Unscraped,
    Paused,
    Failing,
}

impl TargetState {
    const NAMES: [(&'static str, TargetState); 5] = [
        ("up", TargetState::Up),
        ("down", TargetState::Down),
        ("unscraped", TargetState::Unscraped),
        ("paused", TargetState::Paused),
        ("failing", TargetState::Failing),
    ];

    fn of(self, t: &pb::TargetInfo) -> bool {
        match self {
            TargetState::Up => t.up == 1,
            TargetState::Down => t.up == 0,
            TargetState::Unscraped => t.up < 0,
            TargetState::Paused => t.paused.is_some(),
            TargetState::Failing => t.checks.iter().any(|c| c.status != "ok"),
        }
    }
}

impl TargetPage {
    fn parse(p: &Params) -> Result<TargetPage, ApiError> {
        let state = match p.get("state").filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => Some(
                TargetState::NAMES
                    .iter()
                    .find(|(n, _)| *n == s)
                    .map(|(_, st)| *st)
                    .ok_or_else(|| {
                        ApiError::bad(format!(
                            "parameter state: {s:?} is not one of up, down, unscraped, paused, failing"
                        ))
                    })?,
            ),
        };
        Ok(TargetPage {
            name: p
                .get("target")
                .filter(|s| !s.is_empty())
                .map(str::to_lowercase),
            state,
            owner: p.number("owner")?,
            offset: p.number("offset")?.unwrap_or(0),
            limit: p.number("limit")?,
        })
    }

    /// Keeps the page's targets (sorted by name) and says how many there were of
    /// each state in the whole herd and how many matched.
    fn apply(&self, targets: &mut Vec<pb::TargetInfo>) -> Value {
        let mut counts = serde_json::Map::new();
        for (name, st) in TargetState::NAMES {
            counts.insert(
                name.into(),
                json!(targets.iter().filter(|t| st.of(t)).count()),
            );
        }
        let total = targets.len();
        targets.retain(|t| {
            self.name
                .as_ref()
                .is_none_or(|n| t.name.to_lowercase().contains(n.as_str()))
                && self.state.is_none_or(|s| s.of(t))
                && self.owner.is_none_or(|o| t.owner == o)
        });
        targets.sort_by(|a, b| a.name.cmp(&b.name));
        let matched = targets.len();
        let end = self
            .limit
            .map_or(matched, |l| self.offset.saturating_add(l).min(matched));
        let start = self.offset.min(end);
        targets.truncate(end);
        targets.drain(..start);
        json!({
            "total": total, "matched": matched, "offset": start, "count": targets.len(),
            "states": counts,
        })
    }
}

async fn query(State(f): State<Arc<HttpFace>>, h: HeaderMap, RawQuery(q): RawQuery) -> Answer {
    {
        let p = check(&f, &h, q)?;
        let target = p.required("target")?.to_string();
        let metric = p.required("metric")?.to_string();
        let now = now_ms();
        let to_ms = p.number::<i64>("to")?.unwrap_or(now);
        let from_ms = match p.number::<i64>("from")? {
            Some(from) => from,
            None => to_ms - ms(p.duration("since")?.unwrap_or(DEFAULT_SINCE)),
        };
        if from_ms > to_ms {
            return Err(ApiError::bad(format!(
                "from ({from_ms}) is after to ({to_ms})"
            )));
        }
        let mut labels = HashMap::new();
        for l in p.all("label") {
            let (k, v) = l.split_once('=').ok_or_else(|| {
                ApiError::bad(format!("parameter label: {l:?} is not NAME=VALUE"))
            })?;
            labels.insert(k.to_string(), v.to_string());
        }
        let rollup = p.get("rollup").unwrap_or_default().to_string();
        if !rollup.is_empty() && rollup != "minute" && rollup != "hour" {
            return Err(ApiError::bad(format!(
                "parameter rollup: {rollup:?} is not minute or hour"
            )));
        }
        let r = f
            .api
            .query(Request::new(pb::QueryRequest {
                target,
                metric,
                from_ms,
                to_ms,
                labels,
                rollup: rollup.clone(),
                local_only: p.flag("local")?,
            }))
            .await?
            .into_inner();
        Ok(Json(if rollup.is_empty() {
            json::query_json(&r)
        } else {
            json::rollup_json(&r)
        }))
    }
}

async fn alerts(State(f): State<Arc<HttpFace>>, h: HeaderMap, RawQuery(q): RawQuery) -> Answer {
    {
        let p = check(&f, &h, q)?;
        let history_since_ms = p.duration("history")?.map_or(0, |d| now_ms() - ms(d));
        let r = f
            .api
            .alerts(Request::new(pb::AlertsRequest {
                history_since_ms,
                history_limit: p.number::<u32>("limit")?.unwrap_or(0),
            }))
            .await?
            .into_inner();
        Ok(Json(json::alerts_json(&r)))
    }
}

async fn ack(
    State(f): State<Arc<HttpFace>>,
    h: HeaderMap,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Answer {
    {
        let p = check(&f, &h, q)?;
        let r = f
            .api
            .ack(Request::new(pb::AckRequest {
                id,
                by: p.by(),
                forwarded: false,
            }))
            .await?
            .into_inner();
        let alerts = pb::AlertsReply {
            alerts: r.alert.into_iter().collect(),
            ..Default::default()
        };
        Ok(Json(json::alerts_json(&alerts)))
    }
}

async fn events(State(f): State<Arc<HttpFace>>, h: HeaderMap, RawQuery(q): RawQuery) -> Answer {
    {
        let p = check(&f, &h, q)?;
        let since = p
            .duration("since")?
            .unwrap_or(Duration::from_secs(24 * 3600));
        let r = f
            .api
            .events(Request::new(pb::EventsRequest {
                target: p.get("target").unwrap_or_default().to_string(),
                since_ms: now_ms() - ms(since),
                limit: p.number::<u32>("limit")?.unwrap_or(0),
            }))
            .await?
            .into_inner();
        Ok(Json(json::events_json(&r)))
    }
}

/// Seconds between the comments that keep an idle event stream (and the proxies
/// on its way) open.
const SSE_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The changes as server-sent events: `event:` the kind, `data:` the document
/// `herd watch --json` prints, until the client hangs up.
async fn watch(
    State(f): State<Arc<HttpFace>>,
    h: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let p = check(&f, &h, q)?;
    let req = pb::WatchRequest {
        local_only: p.flag("local")?,
        target: p.get("target").unwrap_or_default().to_string(),
        kinds: p
            .all("kind")
            .flat_map(|k| k.split(','))
            .filter(|k| !k.is_empty())
            .map(str::to_string)
            .collect(),
    };
    let stream = f.api.watch(Request::new(req)).await?.into_inner();
    let events = tokio_stream::StreamExt::map(stream, |c| {
        c.map(|c| {
            axum::response::sse::Event::default()
                .event(c.kind.clone())
                .data(json::change_json(&c).to_string())
        })
    });
    Ok(axum::response::sse::Sse::new(events)
        .keep_alive(axum::response::sse::KeepAlive::new().interval(SSE_KEEP_ALIVE))
        .into_response())
}

async fn silences(State(f): State<Arc<HttpFace>>, h: HeaderMap, RawQuery(q): RawQuery) -> Answer {
    {
        check(&f, &h, q)?;
        let r = f
            .api
            .silence_list(Request::new(pb::SilenceListRequest {}))
            .await?
            .into_inner();
        Ok(Json(json::silences_json(&r)))
    }
}

async fn silence_add(
    State(f): State<Arc<HttpFace>>,
    h: HeaderMap,
    RawQuery(q): RawQuery,
) -> Answer {
    {
        let p = check(&f, &h, q)?;
        let selector = p.required("selector")?.to_string();
        let duration = p
            .duration("for")?
            .ok_or_else(|| ApiError::bad("parameter for is required (e.g. for=2h)"))?;
        let r = f
            .api
            .silence_add(Request::new(pb::SilenceAddRequest {
                selector,
                duration_ms: ms(duration) as u64,
                reason: p.get("reason").unwrap_or_default().to_string(),
                created_by: p.by(),
            }))
            .await?
            .into_inner();
        let list = pb::SilenceListReply { silences: vec![r] };
        Ok(Json(json::silences_json(&list)))
    }
}

async fn silence_remove(
    State(f): State<Arc<HttpFace>>,
    h: HeaderMap,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Answer {
    {
        check(&f, &h, q)?;
        f.api
            .silence_remove(Request::new(pb::SilenceRemoveRequest { id: id.clone() }))
            .await?;
        Ok(Json(json!({ "removed": id })))
    }
}

async fn pause(
    State(f): State<Arc<HttpFace>>,
    h: HeaderMap,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> Answer {
    {
        let p = check(&f, &h, q)?;
        let duration_ms = p.duration("for")?.map_or(0, |d| ms(d) as u64);
        let r = f
            .api
            .pause(Request::new(pb::PauseRequest {
                target: name.clone(),
                duration_ms,
                reason: p.get("reason").unwrap_or_default().to_string(),
                by: p.by(),
            }))
            .await?
            .into_inner();
        Ok(Json(json!({
            "paused": name,
            "until_ms": (r.until_ms > 0).then_some(r.until_ms),
        })))
    }
}

async fn resume(
    State(f): State<Arc<HttpFace>>,
    h: HeaderMap,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> Answer {
    {
        check(&f, &h, q)?;
        f.api
            .resume(Request::new(pb::ResumeRequest {
                target: name.clone(),
            }))
            .await?;
        Ok(Json(json!({ "resumed": name })))
    }
}

async fn apply(
    State(f): State<Arc<HttpFace>>,
    h: HeaderMap,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Answer {
    {
        let p = check(&f, &h, q)?;
        let text = String::from_utf8(body.to_vec())
            .map_err(|_| ApiError::bad("the body is not UTF-8 text (a fleet TOML)"))?;
        let r = f
            .api
            .apply(Request::new(pb::ApplyRequest {
                fleet_toml: text,
                source_name: p.get("source").unwrap_or("fleet.toml").to_string(),
            }))
            .await?
            .into_inner();
        Ok(Json(json!({
            "spec_version": r.spec_version,
            "added": r.added,
            "changed": r.changed,
            "removed": r.removed,
            "unchanged": r.unchanged,
        })))
    }
}

/// `/metrics`: this node's own health in the Prometheus text format.
async fn metrics(State(f): State<Arc<HttpFace>>, h: HeaderMap) -> Result<Response, ApiError> {
    check(&f, &h, None)?;
    let text = super::metrics::render(&f.api).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

// ---------------------------------------------------------------------------------
// Serving

/// Serves `router` on `listener` until `stop` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    stop: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}

/// A client that opens a connection and finishes no TLS handshake is dropped
/// after this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection may finish its answer once the node stops.
const DRAIN: Duration = Duration::from_secs(1);

/// Serves `router` over TLS (HTTP/1.1, the node's certificate; with `[tls]`) on
/// `listener` until `stop` is cancelled.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    router: Router,
    tls: Arc<rustls::ServerConfig>,
    stop: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(error = %e, "HTTPS accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (acceptor, router, stop) = (acceptor.clone(), router.clone(), stop.clone());
        conns.spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "HTTPS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let service = hyper_util::service::TowerToHyperService::new(router);
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                done = conn.as_mut() => {
                    if let Err(e) = done {
                        tracing::debug!(%peer, error = %e, "HTTPS connection ended");
                    }
                }
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(DRAIN, conn).await;
                }
            }
        });
    }
    conns.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_http_with_items_for_a_spec() {
        let e = ApiError::from(tonic::Status::invalid_argument(
            "fleet.toml:3: targets[0].name: is empty\nfleet.toml:9: rule.for: bad duration",
        ));
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.items.len(), 2);
        assert_eq!(
            ApiError::from(tonic::Status::not_found("no target x")).status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            ApiError::from(tonic::Status::unavailable("no leader")).status,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    fn target(name: &str, up: i32, owner: u64, failing: bool) -> pb::TargetInfo {
        pb::TargetInfo {
            name: name.into(),
            up,
            owner,
            checks: vec![pb::CheckInfo {
                name: "c".into(),
                status: if failing { "critical" } else { "ok" }.into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn page(q: &str, targets: &mut Vec<pb::TargetInfo>) -> Result<Value, ApiError> {
        Ok(TargetPage::parse(&Params::parse(Some(q.into())))?.apply(targets))
    }

    #[test]
    fn a_status_page_filters_sorts_and_counts_the_whole_herd() {
        let all = || {
            let mut v: Vec<_> = (0..120)
                .map(|i| {
                    target(
                        &format!("web-{i:03}"),
                        i32::from(i % 10 != 0),
                        1 + i % 3,
                        i % 7 == 0,
                    )
                })
                .collect();
            v.push(target("DB-1", -1, 2, false));
            v.reverse();
            v
        };
        let mut t = all();
        let p = page("target=WEB-1&limit=5&offset=3", &mut t).unwrap();
        assert_eq!(p["total"], 121);
        assert_eq!(p["matched"], 20, "web-100..119 match, case-insensitively");
        assert_eq!(p["states"]["down"], 12);
        assert_eq!(p["states"]["unscraped"], 1);
        let names: Vec<_> = t.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            ["web-103", "web-104", "web-105", "web-106", "web-107"]
        );

        let mut t = all();
        let p = page("state=down&owner=1", &mut t).unwrap();
        assert!(t.iter().all(|t| t.up == 0 && t.owner == 1));
        assert_eq!(p["matched"], t.len());
        assert_eq!(p["count"], t.len());

        let mut t = all();
        let p = page("state=failing&offset=500&limit=10", &mut t).unwrap();
        assert!(t.is_empty());
        assert_eq!(p["matched"], 18);
        assert_eq!(p["count"], 0);

        let mut t = all();
        assert_eq!(
            page("", &mut t).unwrap()["count"],
            121,
            "no parameter: every target"
        );
        let e = page("state=sleepy", &mut all()).unwrap_err();
        assert!(e.message.contains("sleepy"), "{}", e.message);
        assert!(page("limit=-1", &mut all()).is_err());
    }

    #[test]
    fn query_strings_repeat_and_decode() {
        let p = Params::parse(Some("label=mount%3D%2F&label=a=b&since=2h&local".into()));
        assert_eq!(p.all("label").collect::<Vec<_>>(), ["mount=/", "a=b"]);
        assert_eq!(
            p.duration("since").unwrap(),
            Some(Duration::from_secs(7200))
        );
        assert!(p.flag("local").unwrap());
        assert!(p.duration("nope").unwrap().is_none());
        assert!(Params::parse(Some("since=soon".into()))
            .duration("since")
            .is_err());
        assert!(Params::parse(Some("local=maybe".into()))
            .flag("local")
            .is_err());
    }
}
