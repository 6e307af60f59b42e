//! The Prometheus HTTP API on `node.http`, so that Grafana, promtool and other
//! Prometheus clients read Herd's series as they are: `/api/v1/query`,
//! `/api/v1/query_range`, `/api/v1/series`, `/api/v1/labels`,
//! `/api/v1/label/{name}/values`, `/api/v1/metadata` and `/federate`, with Prometheus' request
//! parameters (query string or form body), answers and errors.
//!
//! The data comes from the herd's `Select` call (every member's store, merged;
//! a member that does not answer is a `warnings` entry); names follow
//! [`names`]; PromQL is parsed by promql-parser and evaluated by [`eval`].
#[cfg(test)]
mod bench;
pub mod eval;
pub use crate::model::prom_names as names;
pub mod select;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use herd_proto::v1 as pb;
use herd_proto::v1::herd_server::Herd;
use promql_parser::label::MatchOp;
use promql_parser::parser::{parse, Expr, VectorSelector};
use serde_json::{json, Value as Json_};
use tonic::{Code, Request};

use super::http::HttpFace;
use eval::{EvalError, Evaluator, Series, Value};
use names::{PromLabels, NAME_LABEL};

/// Most points one series of a range query may have (Prometheus' limit).
const MAX_POINTS: i64 = 11_000;

/// The routes of the Prometheus API.
pub fn routes() -> Router<Arc<HttpFace>> {
    Router::new()
        .route("/api/v1/query", get(query).post(query))
        .route("/api/v1/query_range", get(query_range).post(query_range))
        .route("/api/v1/series", get(series).post(series))
        .route("/api/v1/labels", get(labels).post(labels))
        .route("/api/v1/label/{name}/values", get(label_values))
        .route("/api/v1/metadata", get(metadata))
        .route("/federate", get(federate))
}

// ---------------------------------------------------------------------------------
// Errors, as Prometheus answers them

#[derive(Debug)]
pub struct PromError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

fn bad_data(message: impl Into<String>) -> PromError {
    PromError {
        status: StatusCode::BAD_REQUEST,
        kind: "bad_data",
        message: message.into(),
    }
}

impl IntoResponse for PromError {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            Json(json!({"status": "error", "errorType": self.kind, "error": self.message})),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        r
    }
}

impl From<tonic::Status> for PromError {
    fn from(s: tonic::Status) -> PromError {
        let (status, kind) = match s.code() {
            Code::InvalidArgument => (StatusCode::BAD_REQUEST, "bad_data"),
            Code::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Code::DeadlineExceeded => (StatusCode::SERVICE_UNAVAILABLE, "timeout"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        PromError {
            status,
            kind,
            message: s.message().to_string(),
        }
    }
}

impl From<EvalError> for PromError {
    fn from(e: EvalError) -> PromError {
        match e {
            EvalError::Unsupported(_) => bad_data(e.to_string()),
            EvalError::Execution(m) => PromError {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                kind: "execution",
                message: m,
            },
        }
    }
}

type Answer = Result<Json<Json_>, PromError>;

fn success(data: Json_, warnings: Vec<String>) -> Json<Json_> {
    let mut doc = json!({"status": "success", "data": data});
    if !warnings.is_empty() {
        doc["warnings"] = json!(warnings);
    }
    Json(doc)
}

// ---------------------------------------------------------------------------------
// Parameters: the query string and, for POST, the form body

struct Params(Vec<(String, String)>);

impl Params {
    fn read(
        f: &HttpFace,
        h: &HeaderMap,
        raw: Option<String>,
        body: &Bytes,
    ) -> Result<Params, PromError> {
        if !f.authorized(h) {
            return Err(PromError {
                status: StatusCode::UNAUTHORIZED,
                kind: "unauthorized",
                message: "this node requires its API token: Authorization: Bearer <token>".into(),
            });
        }
        let mut all: Vec<(String, String)> =
            form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
                .into_owned()
                .collect();
        all.extend(form_urlencoded::parse(body).into_owned());
        Ok(Params(all))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    fn required(&self, name: &str) -> Result<&str, PromError> {
        self.get(name)
            .ok_or_else(|| bad_data(format!("invalid parameter {name:?}: missing")))
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// A time: Unix seconds (fractions allowed) or RFC 3339; `None` when absent.
    fn time_ms(&self, name: &str) -> Result<Option<i64>, PromError> {
        self.get(name)
            .map(|v| {
                parse_time_ms(v).map_err(|e| bad_data(format!("invalid parameter {name:?}: {e}")))
            })
            .transpose()
    }
}

/// Unix seconds (`1700000000.123`) or RFC 3339 (`2026-12-06T01:00:00Z`), in ms.
pub fn parse_time_ms(v: &str) -> Result<i64, String> {
    if let Ok(secs) = v.parse::<f64>() {
        if secs.is_finite() {
            return Ok((secs * 1000.0).round() as i64);
        }
    }
    humantime::parse_rfc3339_weak(v)
        .map_err(|_| format!("cannot parse {v:?} to a valid timestamp"))
        .map(|t| {
            t.duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0)
        })
}

/// A step or duration: seconds (`15`, `0.5`) or a PromQL duration (`15s`, `1m`).
pub fn parse_step_ms(v: &str) -> Result<i64, String> {
    let ms = match v.parse::<f64>() {
        Ok(secs) if secs.is_finite() => (secs * 1000.0).round() as i64,
        _ => promql_parser::util::parse_duration(v)
            .map(|d: Duration| d.as_millis() as i64)
            .map_err(|_| format!("cannot parse {v:?} to a valid duration"))?,
    };
    if ms <= 0 {
        return Err("zero or negative query resolution step widths are not accepted. Try a positive integer".into());
    }
    Ok(ms)
}

// ---------------------------------------------------------------------------------
// Fetching and evaluating

fn to_pb(vs: &VectorSelector) -> Vec<pb::MatcherSet> {
    eval::selector_sets(vs)
        .into_iter()
        .map(|set| pb::MatcherSet {
            matchers: set
                .into_iter()
                .map(|m| pb::LabelMatcher {
                    op: match m.op {
                        MatchOp::Equal => "=",
                        MatchOp::NotEqual => "!=",
                        MatchOp::Re(_) => "=~",
                        MatchOp::NotRe(_) => "!~",
                    }
                    .into(),
                    name: m.name,
                    value: m.value,
                })
                .collect(),
        })
        .collect()
}

fn from_pb(s: pb::PromSeries) -> Series {
    Series {
        labels: s.labels.into_iter().collect(),
        points: s.points.into_iter().map(|p| (p.ts_ms, p.value)).collect(),
    }
}

fn gaps(reply: &pb::SelectReply) -> Vec<String> {
    reply.gaps.iter().map(|g| g.reason.clone()).collect()
}

/// Parses a query.
pub fn parse_query(text: &str) -> Result<Expr, PromError> {
    parse(text).map_err(|e| bad_data(format!("invalid parameter \"query\": {e}")))
}

/// What an expression's selectors read to evaluate it over `[start, end]`; none
/// when it reads no series. Refuses what Herd does not evaluate.
pub fn select_request(
    expr: &Expr,
    start: i64,
    end: i64,
) -> Result<Option<pb::SelectRequest>, PromError> {
    let sels = eval::selectors(expr)?;
    if sels.is_empty() {
        return Ok(None);
    }
    let back = sels.iter().map(|s| s.1).max().unwrap_or(0);
    let ahead = sels.iter().map(|s| s.2).max().unwrap_or(0);
    Ok(Some(pb::SelectRequest {
        sets: sels.iter().flat_map(|(vs, _, _)| to_pb(vs)).collect(),
        from_ms: start - back,
        to_ms: end + ahead.max(0),
        local_only: false,
        names_only: false,
    }))
}

/// The evaluator of what a `Select` answered.
pub fn evaluator(reply: pb::SelectReply) -> Evaluator {
    Evaluator::new(reply.series.into_iter().map(from_pb).collect())
}

/// Parses `text`, fetches what its selectors read around `[start, end]` from the
/// herd, and returns an evaluator for it with the warnings of the fetch.
async fn prepare(
    f: &HttpFace,
    text: &str,
    start: i64,
    end: i64,
) -> Result<(Expr, Evaluator, Vec<String>), PromError> {
    let expr = parse_query(text)?;
    let Some(req) = select_request(&expr, start, end)? else {
        return Ok((expr, Evaluator::new(Vec::new()), Vec::new()));
    };
    let reply = f.api.select(Request::new(req)).await?.into_inner();
    let warnings = gaps(&reply);
    Ok((expr, evaluator(reply), warnings))
}

/// The value of `expr` at every step of `[start, end]`, by series.
pub fn eval_range(
    ev: &Evaluator,
    expr: &Expr,
    (start, end, step): (i64, i64, i64),
) -> Result<BTreeMap<PromLabels, Vec<(i64, f64)>>, PromError> {
    let mut out: BTreeMap<PromLabels, Vec<(i64, f64)>> = BTreeMap::new();
    let mut t = start;
    while t <= end {
        match ev.eval(expr, t)? {
            Value::Scalar(x) => out.entry(PromLabels::new()).or_default().push((t, x)),
            Value::Vector(samples) => {
                for (l, x) in samples {
                    out.entry(l).or_default().push((t, x));
                }
            }
            _ => {
                return Err(bad_data(
                    "invalid expression type for range query, must be Scalar or instant Vector",
                ))
            }
        }
        t += step;
    }
    Ok(out)
}

/// A sample value as Prometheus writes it.
pub fn fmt_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

fn secs(t_ms: i64) -> Json_ {
    json!(t_ms as f64 / 1000.0)
}

fn instant_json(v: Value, t: i64) -> Json_ {
    match v {
        Value::Scalar(x) => json!({"resultType": "scalar", "result": [secs(t), fmt_value(x)]}),
        Value::Str(s) => json!({"resultType": "string", "result": [secs(t), s]}),
        Value::Vector(samples) => json!({
            "resultType": "vector",
            "result": samples.into_iter().map(|(l, x)| json!({
                "metric": l, "value": [secs(t), fmt_value(x)],
            })).collect::<Vec<_>>(),
        }),
        Value::Matrix(series) => json!({
            "resultType": "matrix",
            "result": series.into_iter().map(|s| json!({
                "metric": s.labels,
                "values": s.points.into_iter().map(|(ts, x)| json!([secs(ts), fmt_value(x)])).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        }),
    }
}

// ---------------------------------------------------------------------------------
// Routes

async fn query(
    State(f): State<Arc<HttpFace>>,
    h: HeaderMap,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Answer {
    let p = Params::read(&f, &h, q, &body)?;
    let text = p.required("query")?;
    let t = p.time_ms("time")?.unwrap_or_else(crate::model::now_ms);
    let (expr, ev, warnings) = prepare(&f, text, t, t).await?;
    let v = ev.eval(&expr, t)?;
    Ok(success(instant_json(v, t), warnings))
}

async fn query_range(
    State(f): State<Arc<HttpFace>>,
    h: HeaderMap,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Answer {
    let p = Params::read(&f, &h, q, &body)?;
    let text = p.required("query")?;
    let start = p
        .time_ms("start")?
        .ok_or_else(|| bad_data("invalid parameter \"start\": missing"))?;
    let end = p
        .time_ms("end")?
        .ok_or_else(|| bad_data("invalid parameter \"end\": missing"))?;
    let step = parse_step_ms(p.required("step")?)
        .map_err(|e| bad_data(format!("invalid parameter \"step\": {e}")))?;
    if end < start {
        return Err(bad_data(
            "invalid parameter \"end\": end timestamp must not be before start time",
        ));
    }
    if (end - start) / step + 1 > MAX_POINTS {
        return Err(bad_data(
            "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)",
        ));
    }
    let (expr, ev, warnings) = prepare(&f, text, start, end).await?;
    let out = eval_range(&ev, &expr, (start, end, step))?;
    let result: Vec<Json_> = out
        .into_iter()
        .map(|(l, pts)| json!({
            "metric": l,
            "values": pts.into_iter().map(|(ts, x)| json!([secs(ts), fmt_value(x)])).collect::<Vec<_>>(),
        }))
        .collect();
    Ok(success(
        json!({"resultType": "matrix", "result": result}),
        warnings,
    ))
}

/// The selectors of `match[]` as matcher sets; none given: every series.
fn match_sets(p: &Params, required: bool) -> Result<Vec<pb::MatcherSet>, PromError> {
    let given = p.all("match[]");
    if given.is_empty() {
        if required {
            return Err(bad_data("no match[] parameter provided"));
        }
        return Ok(vec![pb::MatcherSet::default()]);
    }
    let mut sets = Vec::new();
    for m in given {
        match parse(m) {
            Ok(Expr::VectorSelector(vs)) => sets.extend(to_pb(&vs)),
            Ok(_) => {
                return Err(bad_data(format!(
                    "invalid parameter \"match[]\": {m:?} is not a series selector"
                )))
            }
            Err(e) => return Err(bad_data(format!("invalid parameter \"match[]\": {e}"))),
        }
    }
    Ok(sets)
}

/// The series the herd knows that `match[]` selects (without their points).
async fn known_series(
    f: &HttpFace,
    p: &Params,
    required: bool,
) -> Result<(Vec<PromLabels>, Vec<String>), PromError> {
    series_of(f, match_sets(p, required)?).await
}

/// The series the herd knows that `sets` select (without their points).
async fn series_of(
    f: &HttpFace,
    sets: Vec<pb::MatcherSet>,
) -> Result<(Vec<PromLabels>, Vec<String>), PromError> {
    let reply = f
        .api
        .select(Request::new(pb::SelectRequest {
            sets,
            from_ms: i64::MIN,
            to_ms: i64::MAX,
            local_only: false,
            names_only: true,
        }))
        .await?
        .into_inner();
    let warnings = gaps(&reply);
    Ok((
        reply
            .series
            .into_iter()
            .map(|s| s.labels.into_iter().collect())
            .collect(),
        warnings,
    ))
}

async fn series(
    State(f): State<Arc<HttpFace>>,
    h: HeaderMap,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Answer {
    let p = Params::read(&f, &h, q, &body)?;
    let (series, warnings) = known_series(&f, &p, true).await?;
    Ok(success(json!(series), warnings))
}

async fn labels(
    State(f): State<Arc<HttpFace>>,
    h: HeaderMap,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Answer {
    let p = Params::read(&f, &h, q, &body)?;
    let (series, warnings) = known_series(&f, &p, false).await?;
    let names: BTreeSet<&String> = series.iter().flat_map(|s| s.keys()).collect();
    Ok(success(json!(names), warnings))
}

async fn label_values(
    State(f): State<Arc<HttpFace>>,
    h: HeaderMap,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> Answer {
    let p = Params::read(&f, &h, q, &Bytes::new())?;
    let (series, warnings) = known_series(&f, &p, false).await?;
    let values: BTreeSet<&String> = series.iter().filter_map(|s| s.get(&name)).collect();
    Ok(success(json!(values), warnings))
}

async fn metadata(State(f): State<Arc<HttpFace>>, h: HeaderMap, RawQuery(q): RawQuery) -> Answer {
    let p = Params::read(&f, &h, q, &Bytes::new())?;
    let mut sets = vec![pb::MatcherSet::default()];
    if let Some(m) = p.get("metric") {
        sets[0].matchers.push(pb::LabelMatcher {
            name: NAME_LABEL.into(),
            op: "=".into(),
            value: m.into(),
        });
    }
    let limit = match p.get("limit") {
        Some(l) => Some(
            l.parse::<usize>()
                .map_err(|_| bad_data(format!("invalid parameter \"limit\": {l:?}")))?,
        ),
        None => None,
    };
    let (series, warnings) = series_of(&f, sets).await?;
    let names: BTreeSet<String> = series
        .into_iter()
        .filter_map(|mut s| s.remove(NAME_LABEL))
        .collect();
    let doc: serde_json::Map<String, Json_> = names
        .into_iter()
        .take(limit.unwrap_or(usize::MAX))
        .map(|n| {
            let kind = if n.ends_with("_total") { "counter" } else { "gauge" };
            (n, json!([{"type": kind, "help": "a Herd series (see the README's Metrics)", "unit": ""}]))
        })
        .collect();
    Ok(success(Json_::Object(doc), warnings))
}

/// How far back `/federate` looks for a series' latest sample (as an instant query).
const FEDERATE_LOOKBACK_MS: i64 = eval::LOOKBACK_MS;

/// The latest sample of every series `match[]` selects, in the Prometheus text
/// format with timestamps, for a Prometheus to scrape (`honor_labels: true`).
async fn federate(
    State(f): State<Arc<HttpFace>>,
    h: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, PromError> {
    let p = Params::read(&f, &h, q, &Bytes::new())?;
    let now = crate::model::now_ms();
    let reply = f
        .api
        .select(Request::new(pb::SelectRequest {
            sets: match_sets(&p, true)?,
            from_ms: now - FEDERATE_LOOKBACK_MS,
            to_ms: now,
            local_only: false,
            names_only: false,
        }))
        .await?
        .into_inner();
    let mut latest: Vec<(PromLabels, (i64, f64))> = reply
        .series
        .into_iter()
        .filter_map(|s| {
            let last = s.points.last().map(|p| (p.ts_ms, p.value))?;
            Some((s.labels.into_iter().collect(), last))
        })
        .collect();
    latest.sort_by(|a, b| (a.0.get(NAME_LABEL), &a.0).cmp(&(b.0.get(NAME_LABEL), &b.0)));
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        exposition(&latest),
    )
        .into_response())
}

/// Series in the Prometheus text format: a `# TYPE` line per name, then one line
/// per series with its value and timestamp (ms). `series` is sorted by name.
pub fn exposition(series: &[(PromLabels, (i64, f64))]) -> String {
    let escape = |v: &str| {
        v.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    };
    let mut out = String::new();
    let mut last_name: Option<&str> = None;
    for (labels, (ts, v)) in series {
        let name = labels.get(NAME_LABEL).map(String::as_str).unwrap_or("");
        if last_name != Some(name) {
            out.push_str(&format!("# TYPE {name} untyped\n"));
            last_name = Some(name);
        }
        let pairs: Vec<String> = labels
            .iter()
            .filter(|(k, _)| *k != NAME_LABEL)
            .map(|(k, val)| format!("{k}=\"{}\"", escape(val)))
            .collect();
        out.push_str(&format!(
            "{name}{{{}}} {} {ts}\n",
            pairs.join(","),
            fmt_value(*v)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn federation_writes_the_text_format() {
        let l = |pairs: &[(&str, &str)]| -> PromLabels {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let text = exposition(&[
            (l(&[("__name__", "herd_a"), ("target", "w\"1")]), (5, 1.5)),
            (
                l(&[("__name__", "herd_a"), ("target", "w2")]),
                (6, f64::NAN),
            ),
            (l(&[("__name__", "herd_b"), ("target", "w1")]), (7, 2.0)),
        ]);
        assert_eq!(
            text,
            "# TYPE herd_a untyped\nherd_a{target=\"w\\\"1\"} 1.5 5\nherd_a{target=\"w2\"} NaN 6\n\
             # TYPE herd_b untyped\nherd_b{target=\"w1\"} 2 7\n"
        );
    }

    #[test]
    fn times_steps_and_values_read_and_write_as_prometheus_does() {
        assert_eq!(parse_time_ms("1700000000.5"), Ok(1_700_000_000_500));
        assert_eq!(parse_time_ms("2026-12-06T00:00:00Z"), Ok(1_796_515_200_000));
        assert!(parse_time_ms("yesterday")
            .unwrap_err()
            .contains("yesterday"));
        assert_eq!(parse_step_ms("15"), Ok(15_000));
        assert_eq!(parse_step_ms("1m"), Ok(60_000));
        assert!(parse_step_ms("0").is_err());
        assert_eq!(fmt_value(1.5), "1.5");
        assert_eq!(fmt_value(100.0), "100");
        assert_eq!(fmt_value(f64::NAN), "NaN");
        assert_eq!(fmt_value(f64::NEG_INFINITY), "-Inf");
    }
}
