//! A small HTTP/1.1 client for checks, over any stream: a direct TCP connection
//! from the node, or a tunnel on the target's SSH session (so "from the target"
//! needs nothing installed there). TLS with rustls (ring); certificates are
//! verified against the system roots plus an optional CA file unless turned off.
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};

use super::{connect_direct, Endpoint, Transport, TunnelError};

/// Bodies longer than this are cut (the check sees the start).
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Upper bound of a tunnel's opening; `fetch`'s own timeout is usually shorter.
const TUNNEL_CONNECT_BOUND: Duration = Duration::from_secs(60);

/// A request as a check makes it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: http::Method,
    pub uri: http::Uri,
    pub headers: Vec<(String, String)>,
    pub body: Option<Bytes>,
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub body: Bytes,
    /// True when the body was longer than the limit and was cut.
    pub body_cut: bool,
    /// From the start of the connection to the end of the body.
    pub elapsed: Duration,
    /// A `Retry-After` in seconds (the date form is not read).
    pub retry_after: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("bad url {0}")]
    BadUrl(String),
    #[error("cannot connect: {0}")]
    Connect(TunnelError),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("HTTP: {0}")]
    Protocol(String),
}

/// A header of a fleet spec that HTTP cannot carry.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HeaderError {
    #[error("header name {name:?} is not valid")]
    Name { name: String },
    #[error("the value of header {name:?} is not valid")]
    Value { name: String },
}

/// The headers a spec names, each checked as HTTP would take it.
pub fn checked_headers(
    spec: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<(String, String)>, HeaderError> {
    let mut out = Vec::with_capacity(spec.len());
    for (name, value) in spec {
        http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| HeaderError::Name { name: name.clone() })?;
        http::HeaderValue::from_str(value)
            .map_err(|_| HeaderError::Value { name: name.clone() })?;
        out.push((name.clone(), value.clone()));
    }
    Ok(out)
}

/// TLS settings of a check or channel that cannot be built: the `ca_file` and
/// what is wrong with it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TlsSetupError {
    #[error("{reason}")]
    Protocols { reason: String },
    #[error("ca_file {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("ca_file {path}: no certificate in it")]
    NoCertificate { path: String },
}

/// Where the connection starts.
pub enum Via<'a> {
    Node,
    Target(&'a Transport),
}

/// TLS settings of one check, built once.
#[derive(Clone)]
pub struct Tls(Arc<rustls::ClientConfig>);

impl Tls {
    /// `verify` false accepts any certificate (an explicit choice in the config).
    pub fn new(verify: bool, ca_file: Option<&str>) -> Result<Tls, TlsSetupError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsSetupError::Protocols {
                reason: e.to_string(),
            })?;
        let config = if verify {
            let mut roots = system_roots().clone();
            if let Some(path) = ca_file {
                use rustls::pki_types::pem::PemObject;
                let bad = |e: &dyn std::fmt::Display| TlsSetupError::CaFile {
                    path: path.to_string(),
                    reason: e.to_string(),
                };
                let certs = CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))?;
                let mut n = 0;
                for cert in certs {
                    let cert = cert.map_err(|e| bad(&e))?;
                    roots.add(cert).map_err(|e| bad(&e))?;
                    n += 1;
                }
                if n == 0 {
                    return Err(TlsSetupError::NoCertificate {
                        path: path.to_string(),
                    });
                }
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
                .with_no_client_auth()
        };
        Ok(Tls(Arc::new(config)))
    }
}

/// The system's trusted roots, loaded once per process.
fn system_roots() -> &'static rustls::RootCertStore {
    static ROOTS: OnceLock<rustls::RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let mut store = rustls::RootCertStore::empty();
        let loaded = rustls_native_certs::load_native_certs();
        for cert in loaded.certs {
            let _ = store.add(cert);
        }
        if store.is_empty() {
            tracing::warn!("no system CA certificates found; https checks will fail verification");
        }
        store
    })
}

/// Turns "https://host:port/path" into the parts a request needs.
pub fn parse_url(url: &str) -> Result<(http::Uri, bool, String, u16), HttpError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| HttpError::BadUrl(format!("{url:?}: {e}")))?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => {
            return Err(HttpError::BadUrl(format!(
                "{url:?}: scheme must be http or https"
            )))
        }
    };
    let host = uri
        .host()
        .ok_or_else(|| HttpError::BadUrl(format!("{url:?}: no host")))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    Ok((uri, tls, host, port))
}

/// Sends one request and reads the answer, all within `timeout`.
pub async fn fetch(
    req: &Request,
    via: Via<'_>,
    tls: &Tls,
    timeout: Duration,
) -> Result<Response, HttpError> {
    match tokio::time::timeout(timeout, fetch_inner(req, via, tls)).await {
        Ok(r) => r,
        Err(_) => Err(HttpError::Timeout(timeout)),
    }
}

async fn fetch_inner(req: &Request, via: Via<'_>, tls: &Tls) -> Result<Response, HttpError> {
    let mut started = Instant::now();
    let url = req.uri.to_string();
    let (uri, is_tls, host, port) = parse_url(&url)?;
    let to = Endpoint::Tcp(host.clone(), port);
    let stream = match via {
        Via::Node => connect_direct(&to).await,
        // `connect` wants its own bound; the caller's timeout bounds everything.
        Via::Target(t) => t.connect(&to, TUNNEL_CONNECT_BOUND).await,
    }
    .map_err(HttpError::Connect)?;
    if matches!(via, Via::Target(_)) {
        // Opening the tunnel may include (re)connecting the SSH session: that is
        // the transport's cost, not the endpoint's response time.
        started = Instant::now();
    }
    let stream: super::Stream = if is_tls {
        let name = ServerName::try_from(host.clone())
            .map_err(|e| HttpError::Tls(format!("{host}: {e}")))?;
        let connector = tokio_rustls::TlsConnector::from(tls.0.clone());
        let s = connector
            .connect(name, stream)
            .await
            .map_err(|e| HttpError::Tls(e.to_string()))?;
        Box::new(s)
    } else {
        stream
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| HttpError::Protocol(e.to_string()))?;
    // The connection task ends with the request: one connection per check run.
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let authority = match uri.port_u16() {
        Some(p) => format!("{}:{p}", uri.host().unwrap_or_default()),
        None => uri.host().unwrap_or_default().to_string(),
    };
    let mut builder = hyper::Request::builder()
        .method(req.method.clone())
        .uri(path)
        .header(http::header::HOST, authority)
        .header(
            http::header::USER_AGENT,
            concat!("herd/", env!("CARGO_PKG_VERSION")),
        );
    for (k, v) in &req.headers {
        builder = builder.header(k.as_str(), v.as_str());
    }
    let body = Full::new(req.body.clone().unwrap_or_default());
    let request = builder
        .body(body)
        .map_err(|e| HttpError::Protocol(format!("building the request: {e}")))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| HttpError::Protocol(e.to_string()))?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let mut body = response.into_body();
    let mut buf: Vec<u8> = Vec::new();
    let mut cut = false;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| HttpError::Protocol(format!("reading the body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            let room = MAX_BODY_BYTES.saturating_sub(buf.len());
            if data.len() > room {
                buf.extend_from_slice(&data[..room]);
                cut = true;
                break;
            }
            buf.extend_from_slice(&data);
        }
    }
    driver.abort();
    Ok(Response {
        status,
        body: Bytes::from(buf),
        body_cut: cut,
        elapsed: started.elapsed(),
        retry_after,
    })
}

/// Accepts every server certificate: only with `tls_verify = false`.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
