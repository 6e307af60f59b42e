//! The dashboard: one page, its script and its style sheet, built into the binary
//! (`include_str!`; no CDN, no build step). They hold no data and are served
//! without the token; everything the page shows comes from the routes of the HTTP
//! face ([`super::http`]) and the Prometheus API, asked with the token the page is
//! given (`http://NODE/#token=...`, kept in the tab's session storage).
//!
//! The answers carry a strict content security policy: the page runs only its own
//! script and talks only to the node that served it.
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

const INDEX: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("app.js");
const CHART: &str = include_str!("chart.js");
const STYLE: &str = include_str!("style.css");

/// What the browser may do with the page: its own script, style and fetches only.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                      connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                      form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

/// The dashboard's routes: `/`, `/ui/app.js`, `/ui/chart.js`, `/ui/style.css`.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/ui/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/ui/chart.js",
            get(|| async { asset("text/javascript; charset=utf-8", CHART) }),
        )
        .route(
            "/ui/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
}
