//! TLS on the gRPC port (mutual between nodes, server-side for clients) and on the
//! HTTP face (server-side; callers present the API token).
//!
//! Every node holds a certificate signed by the herd's CA (`herd certs`), used both as
//! the server certificate of its gRPC port and as the client certificate it presents
//! when it calls another node. The server asks every client for a certificate but does
//! not insist: the CLI may connect with the CA alone and authenticate with the API
//! token. Raft traffic insists, through [`require_peer_cert`].
//!
//! Names: a node certificate carries the IPs and host names the other nodes use to
//! reach the node, and tonic checks the host of the URL it connects to against them.
//! Every node certificate also carries [`NODE_NAME`], which tells a node's certificate
//! from the CLI's client certificate signed by the same CA.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::RootCertStore;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::config::TlsSection;

/// The DNS name every node certificate carries besides its own names: the mark of a
/// node certificate, required of Raft callers. `herd certs` adds it; certificates
/// from another PKI need it as a subjectAltName too.
pub const NODE_NAME: &str = "herd-node";

/// A client that opens a connection and sends nothing is dropped after this, rather
/// than holding a task for ever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What `Status::unauthenticated` says to a Raft caller without a node certificate.
const NEED_NODE_CERT: &str = "raft traffic needs a node certificate signed by the herd's CA";

/// What is wrong with the TLS settings of a node (`[tls]`) or of the CLI (`--ca`,
/// `--cert`, `--key`). `key` is the setting or flag that named the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls: set ca, cert and key together (or none of them)")]
    Incomplete,
    #[error("--cert needs --key (the certificate's private key)")]
    CertWithoutKey,
    #[error("--key needs --cert (the key's certificate)")]
    KeyWithoutCert,
    #[error("--cert and --key need --ca (the herd's CA certificate)")]
    NoCa,
    #[error("{key}: cannot read {}: {source}", .path.display())]
    Read {
        key: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{key}: {} is not valid PEM: {source}", .path.display())]
    NotPem {
        key: String,
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{key}: {} holds no PEM certificate", .path.display())]
    NoCertificate { key: String, path: PathBuf },
    #[error("{key}: {} is not a PEM private key", .path.display())]
    NotAKey { key: String, path: PathBuf },
    #[error(
        "{key}: {} does not go with the certificate {}: {reason}",
        .key_path.display(),
        .cert_path.display()
    )]
    KeyMismatch {
        key: String,
        key_path: PathBuf,
        cert_path: PathBuf,
        reason: String,
    },
    #[error("tls.ca: {} is not a usable CA certificate: {reason}", .path.display())]
    BadCa { path: PathBuf, reason: String },
    #[error(
        "tls.cert: {} is not valid under the CA {}: {reason}",
        .cert_path.display(),
        .ca_path.display()
    )]
    NotUnderCa {
        cert_path: PathBuf,
        ca_path: PathBuf,
        reason: String,
    },
    #[error(
        "tls.cert: {} is not a node certificate: it lacks the name {NODE_NAME} \
         (make node certificates with `herd certs`)",
        .path.display()
    )]
    NotANodeCert { path: PathBuf },
}

/// This node's TLS settings, for its gRPC server and for its calls to other nodes.
#[derive(Debug, Clone)]
pub struct NodeTls {
    /// Serves the node's certificate and verifies client certificates against the
    /// CA, accepting clients without one (see [`require_peer_cert`]).
    pub server: ServerTlsConfig,
    /// Trusts the CA only and presents the node's certificate.
    pub client: ClientTlsConfig,
    /// The HTTP face's HTTPS: the node's certificate, no client certificate asked
    /// (callers present the API token), HTTP/1.1.
    pub http: Arc<rustls::ServerConfig>,
}

/// Loads the `[tls]` section: `None` when it is empty (plain gRPC).
///
/// Besides reading the files, it checks what would otherwise fail only at the first
/// handshake, with a vaguer error: the key belongs to the certificate, the
/// certificate is valid now under the CA for both server and client use, and it is a
/// node certificate ([`NODE_NAME`]). Errors name the key and the file.
pub fn load(tls: &TlsSection) -> Result<Option<NodeTls>, TlsError> {
    let (ca_path, cert_path, key_path) = match (&tls.ca, &tls.cert, &tls.key) {
        (None, None, None) => return Ok(None),
        (Some(ca), Some(cert), Some(key)) => (ca, cert, key),
        _ => return Err(TlsError::Incomplete),
    };
    install_provider();
    let ca = read_certs("tls.ca", ca_path)?;
    let cert = read_certs("tls.cert", cert_path)?;
    let key = read_key("tls.key", key_path)?;
    check_key(
        &cert.ders,
        key.der.clone_key(),
        cert_path,
        key_path,
        "tls.key",
    )?;
    check_node_cert(&ca.ders, &cert.ders, ca_path, cert_path)?;
    let mut http = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .and_then(|b| {
            b.with_no_client_auth()
                .with_single_cert(cert.ders.clone(), key.der)
        })
        .map_err(|e| TlsError::KeyMismatch {
            key: "tls.key".into(),
            key_path: key_path.clone(),
            cert_path: cert_path.clone(),
            reason: e.to_string(),
        })?;
    http.alpn_protocols = vec![b"http/1.1".to_vec()];

    let identity = Identity::from_pem(&cert.pem, &key.pem);
    let ca = Certificate::from_pem(&ca.pem);
    Ok(Some(NodeTls {
        server: ServerTlsConfig::new()
            .identity(identity.clone())
            .client_ca_root(ca.clone())
            .client_auth_optional(true)
            .timeout(HANDSHAKE_TIMEOUT),
        client: ClientTlsConfig::new().ca_certificate(ca).identity(identity),
        http: Arc::new(http),
    }))
}

/// The guard of the Raft service: on a TLS connection the caller must have presented
/// a node certificate of the herd. On a plain connection (no TLS configured) it lets
/// every call through.
///
/// Meant for the Raft service only: the client API accepts callers without a
/// certificate (they present the API token). The TLS handshake has already verified
/// any certificate presented against the CA; this checks that one was presented and
/// that it is a node's ([`NODE_NAME`]), not the CLI's.
///
/// It recognises a TLS connection by tonic's `TlsConnectInfo<TcpConnectInfo>`, which
/// tonic attaches when it serves TLS over TCP streams (`serve`, `serve_with_incoming`
/// of a `TcpListenerStream`). Works in a service method and in an interceptor.
pub fn require_peer_cert<T>(req: &tonic::Request<T>) -> Result<Option<PeerCert>, tonic::Status> {
    let Some(conn) = req.extensions().get::<TlsConnectInfo<TcpConnectInfo>>() else {
        return Ok(None);
    };
    let cert = conn
        .peer_certs()
        .and_then(|chain| chain.first().cloned())
        .filter(is_node_cert);
    match cert {
        Some(der) => Ok(Some(PeerCert(der))),
        None => Err(tonic::Status::unauthenticated(NEED_NODE_CERT)),
    }
}

/// The node certificate a Raft caller presented (verified against the CA).
#[derive(Debug, Clone)]
pub struct PeerCert(CertificateDer<'static>);

impl PeerCert {
    /// Whether the certificate is node `id`'s: it carries the name `herd-node-ID`
    /// that `herd certs` gives each node, so a node cannot speak as another.
    pub fn names_node(&self, id: u64) -> bool {
        let Ok(name) = ServerName::try_from(node_cn(id)) else {
            return false;
        };
        ParsedCertificate::try_from(&self.0)
            .and_then(|cert| rustls::client::verify_server_name(&cert, &name))
            .is_ok()
    }
}

/// A node's common name in its certificate, also one of its DNS names.
pub fn node_cn(id: u64) -> String {
    format!("herd-node-{id}")
}

/// TLS for the CLI: `--ca` alone trusts the herd's CA; `--cert` and `--key` add a
/// client certificate. `None` without any of them (plain gRPC).
pub fn client_tls(
    ca: Option<&Path>,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<Option<ClientTlsConfig>, TlsError> {
    let identity = match (cert, key) {
        (None, None) => None,
        (Some(cert), Some(key)) => Some((cert, key)),
        (Some(_), None) => return Err(TlsError::CertWithoutKey),
        (None, Some(_)) => return Err(TlsError::KeyWithoutCert),
    };
    let Some(ca_path) = ca else {
        return match identity {
            None => Ok(None),
            Some(_) => Err(TlsError::NoCa),
        };
    };
    install_provider();
    let ca = read_certs("--ca", ca_path)?;
    let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca.pem));
    if let Some((cert_path, key_path)) = identity {
        let cert = read_certs("--cert", cert_path)?;
        let key = read_key("--key", key_path)?;
        check_key(&cert.ders, key.der, cert_path, key_path, "--key")?;
        config = config.identity(Identity::from_pem(&cert.pem, &key.pem));
    }
    Ok(Some(config))
}

/// tonic's TLS server builds its rustls config with the process-wide crypto provider.
/// ring is the one provider of this build; installing it explicitly keeps that
/// working even if a dependency ever enables a second one. Installing twice, or
/// after someone else did, is harmless.
fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates of a PEM file: the text for tonic, the DER for the checks.
struct PemCerts {
    pem: Vec<u8>,
    ders: Vec<CertificateDer<'static>>,
}

struct PemKey {
    pem: Vec<u8>,
    der: PrivateKeyDer<'static>,
}

fn read(what: &str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        key: what.to_string(),
        path: path.to_path_buf(),
        source,
    })
}

fn read_certs(what: &str, path: &Path) -> Result<PemCerts, TlsError> {
    let pem = read(what, path)?;
    let ders = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::NotPem {
            key: what.to_string(),
            path: path.to_path_buf(),
            source,
        })?;
    if ders.is_empty() {
        return Err(TlsError::NoCertificate {
            key: what.to_string(),
            path: path.to_path_buf(),
        });
    }
    Ok(PemCerts { pem, ders })
}

fn read_key(what: &str, path: &Path) -> Result<PemKey, TlsError> {
    let pem = read(what, path)?;
    let der = PrivateKeyDer::from_pem_slice(&pem).map_err(|_| TlsError::NotAKey {
        key: what.to_string(),
        path: path.to_path_buf(),
    })?;
    Ok(PemKey { pem, der })
}

/// The key must be usable (ring) and belong to the first certificate.
fn check_key(
    chain: &[CertificateDer<'static>],
    key: PrivateKeyDer<'static>,
    cert_path: &Path,
    key_path: &Path,
    what: &str,
) -> Result<(), TlsError> {
    rustls::sign::CertifiedKey::from_der(chain.to_vec(), key, &provider())
        .map(drop)
        .map_err(|e| TlsError::KeyMismatch {
            key: what.to_string(),
            key_path: key_path.to_path_buf(),
            cert_path: cert_path.to_path_buf(),
            reason: e.to_string(),
        })
}

/// The node's certificate must be valid now under the CA, as a server and as a
/// client, and carry [`NODE_NAME`].
fn check_node_cert(
    ca: &[CertificateDer<'static>],
    chain: &[CertificateDer<'static>],
    ca_path: &Path,
    cert_path: &Path,
) -> Result<(), TlsError> {
    let mut roots = RootCertStore::empty();
    for der in ca {
        roots.add(der.clone()).map_err(|e| TlsError::BadCa {
            path: ca_path.to_path_buf(),
            reason: e.to_string(),
        })?;
    }
    let invalid = |e: &dyn std::fmt::Display| TlsError::NotUnderCa {
        cert_path: cert_path.to_path_buf(),
        ca_path: ca_path.to_path_buf(),
        reason: e.to_string(),
    };
    // check_key has parsed the chain: it has a first certificate.
    let (end, intermediates) = chain.split_first().ok_or_else(|| invalid(&"empty"))?;
    let parsed = ParsedCertificate::try_from(end).map_err(|e| invalid(&e))?;
    let provider = provider();
    let now = UnixTime::now();
    verify_server_cert_signed_by_trust_anchor(
        &parsed,
        &roots,
        intermediates,
        now,
        provider.signature_verification_algorithms.all,
    )
    .map_err(|e| invalid(&format!("as a server certificate: {e}")))?;
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| invalid(&e))?
        .verify_client_cert(end, intermediates, now)
        .map_err(|e| invalid(&format!("as a client certificate: {e}")))?;
    if !is_node_cert(end) {
        return Err(TlsError::NotANodeCert {
            path: cert_path.to_path_buf(),
        });
    }
    Ok(())
}

/// Whether a certificate (already verified against the CA) names [`NODE_NAME`].
fn is_node_cert(der: &CertificateDer<'_>) -> bool {
    let Ok(name) = ServerName::try_from(NODE_NAME) else {
        return false;
    };
    ParsedCertificate::try_from(der)
        .and_then(|cert| rustls::client::verify_server_name(&cert, &name))
        .is_ok()
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::path::PathBuf;

    use herd_proto::v1::raft_client::RaftClient;
    use herd_proto::v1::raft_server::{Raft, RaftServer};
    use herd_proto::v1::{
        BeatReply, BeatRequest, ForwardReply, ForwardRequest, HelloReply, HelloRequest, JoinReply,
        JoinRequest, RaftReply, RaftRequest, SnapshotChunk,
    };
    use tokio::net::TcpListener;
    use tokio_stream::wrappers::TcpListenerStream;
    use tonic::transport::{Endpoint, Server};
    use tonic::{Code, Request, Response, Status};

    use super::*;
    use crate::cli::certs::{self, CertsArgs};

    /// Bounds every network step so that a broken handshake fails the test instead
    /// of hanging it.
    const STEP: Duration = Duration::from_secs(10);

    /// A Raft service whose only working call is `beat`, behind the guard.
    struct GuardedRaft;

    #[tonic::async_trait]
    impl Raft for GuardedRaft {
        async fn append_entries(
            &self,
            _: Request<RaftRequest>,
        ) -> Result<Response<RaftReply>, Status> {
            Err(Status::unimplemented("test"))
        }
        async fn vote(&self, _: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
            Err(Status::unimplemented("test"))
        }
        async fn install_snapshot(
            &self,
            _: Request<SnapshotChunk>,
        ) -> Result<Response<RaftReply>, Status> {
            Err(Status::unimplemented("test"))
        }
        async fn forward(
            &self,
            _: Request<ForwardRequest>,
        ) -> Result<Response<ForwardReply>, Status> {
            Err(Status::unimplemented("test"))
        }
        async fn hello(&self, _: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
            Err(Status::unimplemented("test"))
        }
        async fn join(&self, _: Request<JoinRequest>) -> Result<Response<JoinReply>, Status> {
            Err(Status::unimplemented("test"))
        }
        async fn beat(&self, req: Request<BeatRequest>) -> Result<Response<BeatReply>, Status> {
            let cert = require_peer_cert(&req)?;
            if let Some(c) = cert {
                if !c.names_node(req.get_ref().from) {
                    return Err(Status::permission_denied("not this node's certificate"));
                }
            }
            Ok(Response::new(BeatReply {
                id: 7,
                ..Default::default()
            }))
        }
    }

    /// A herd made by `herd certs` with one node on 127.0.0.1.
    struct Herd {
        _dir: tempfile::TempDir,
        out: PathBuf,
    }

    impl Herd {
        fn new() -> Herd {
            let dir = tempfile::tempdir().unwrap();
            let out = dir.path().join("tls");
            certs::run(&CertsArgs {
                out: out.clone(),
                nodes: vec!["1=127.0.0.1,localhost".into()],
                days: 1,
                force: false,
            })
            .unwrap();
            Herd { _dir: dir, out }
        }
        fn file(&self, name: &str) -> PathBuf {
            self.out.join(name)
        }
        fn section(&self) -> TlsSection {
            TlsSection {
                ca: Some(self.file("ca.pem")),
                cert: Some(self.file("node-1.pem")),
                key: Some(self.file("node-1.key")),
            }
        }
        fn client(&self, cert: Option<&str>) -> ClientTlsConfig {
            let cert = cert.map(|stem| {
                (
                    self.file(&format!("{stem}.pem")),
                    self.file(&format!("{stem}.key")),
                )
            });
            client_tls(
                Some(&self.file("ca.pem")),
                cert.as_ref().map(|c| c.0.as_path()),
                cert.as_ref().map(|c| c.1.as_path()),
            )
            .unwrap()
            .unwrap()
        }
    }

    /// Serves the guarded Raft service on 127.0.0.1:0 until the test ends.
    async fn serve(tls: Option<ServerTlsConfig>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut builder = Server::builder();
        if let Some(tls) = tls {
            builder = builder.tls_config(tls).unwrap();
        }
        let router = builder.add_service(RaftServer::new(GuardedRaft));
        tokio::spawn(router.serve_with_incoming(TcpListenerStream::new(listener)));
        addr
    }

    #[derive(Debug, PartialEq)]
    enum Outcome {
        Id(u64),
        Unauthenticated,
        /// The certificate is not the node the call names.
        NotThisNode,
        /// The connection failed (handshake refused by either side).
        Refused,
    }

    async fn beat(url: String, tls: Option<ClientTlsConfig>) -> Outcome {
        beat_as(url, tls, 1).await
    }

    async fn beat_as(url: String, tls: Option<ClientTlsConfig>, from: u64) -> Outcome {
        let mut endpoint = Endpoint::from_shared(url)
            .unwrap()
            .connect_timeout(STEP)
            .timeout(STEP);
        if let Some(tls) = tls {
            endpoint = endpoint.tls_config(tls).unwrap();
        }
        let channel = match tokio::time::timeout(STEP, endpoint.connect())
            .await
            .unwrap()
        {
            Ok(channel) => channel,
            Err(e) => {
                eprintln!("connect refused: {e:?}");
                return Outcome::Refused;
            }
        };
        let req = BeatRequest {
            from,
            ..Default::default()
        };
        match RaftClient::new(channel).beat(req).await {
            Ok(reply) => Outcome::Id(reply.into_inner().id),
            Err(s) if s.code() == Code::Unauthenticated => {
                assert_eq!(s.message(), NEED_NODE_CERT);
                Outcome::Unauthenticated
            }
            Err(s) if s.code() == Code::PermissionDenied => Outcome::NotThisNode,
            Err(s) => {
                assert_ne!(s.code(), Code::Unimplemented, "{s:?}");
                eprintln!("call refused: {s:?}");
                Outcome::Refused
            }
        }
    }

    #[tokio::test]
    async fn raft_over_mutual_tls_needs_a_node_certificate_of_the_herd() {
        let herd = Herd::new();
        let other = Herd::new();
        let tls = load(&herd.section()).unwrap().unwrap();
        let addr = serve(Some(tls.server.clone())).await;
        let url = format!("https://127.0.0.1:{}", addr.port());

        // A node of the herd: its own client config.
        assert_eq!(
            beat(url.clone(), Some(tls.client.clone())).await,
            Outcome::Id(7)
        );
        // ... which names node 1: it cannot beat as node 2.
        assert_eq!(
            beat_as(url.clone(), Some(tls.client.clone()), 2).await,
            Outcome::NotThisNode
        );
        // Trusting the CA without a certificate: connects, but Raft refuses.
        assert_eq!(
            beat(url.clone(), Some(herd.client(None))).await,
            Outcome::Unauthenticated
        );
        // The CLI's certificate of the same CA is not a node's.
        assert_eq!(
            beat(url.clone(), Some(herd.client(Some("client")))).await,
            Outcome::Unauthenticated
        );
        // A client that trusts another CA refuses the server.
        let stranger = load(&other.section()).unwrap().unwrap();
        assert_eq!(
            beat(url.clone(), Some(stranger.client)).await,
            Outcome::Refused
        );
        assert_eq!(
            beat(url.clone(), Some(other.client(None))).await,
            Outcome::Refused
        );
        // A node certificate of another CA, presented to this herd: the server refuses it.
        let forged = client_tls(
            Some(&herd.file("ca.pem")),
            Some(&other.file("node-1.pem")),
            Some(&other.file("node-1.key")),
        )
        .unwrap()
        .unwrap();
        assert_eq!(beat(url.clone(), Some(forged)).await, Outcome::Refused);
        // Plain gRPC to a TLS port goes nowhere.
        assert_eq!(
            beat(format!("http://127.0.0.1:{}", addr.port()), None).await,
            Outcome::Refused
        );
    }

    #[tokio::test]
    async fn plain_connections_pass_the_guard() {
        let addr = serve(None).await;
        let url = format!("http://127.0.0.1:{}", addr.port());
        assert_eq!(beat(url, None).await, Outcome::Id(7));
    }

    #[test]
    fn an_empty_section_is_plain() {
        assert!(load(&TlsSection::default()).unwrap().is_none());
        assert!(client_tls(None, None, None).unwrap().is_none());
    }

    #[test]
    fn load_errors_name_the_key_and_the_file() {
        let herd = Herd::new();
        let other = Herd::new();
        let err = |section: TlsSection| load(&section).err().unwrap().to_string();

        let missing = herd.file("nope.pem");
        let e = err(TlsSection {
            cert: Some(missing.clone()),
            ..herd.section()
        });
        assert!(
            e.starts_with(&format!("tls.cert: cannot read {}: ", missing.display())),
            "{e}"
        );

        let e = err(TlsSection {
            key: Some(herd.file("node-1.pem")),
            ..herd.section()
        });
        assert_eq!(
            e,
            format!(
                "tls.key: {} is not a PEM private key",
                herd.file("node-1.pem").display()
            )
        );

        let e = err(TlsSection {
            ca: Some(herd.file("ca.key")),
            ..herd.section()
        });
        assert!(
            e.starts_with("tls.ca: ") && e.contains("holds no PEM certificate"),
            "{e}"
        );

        let e = err(TlsSection {
            key: Some(other.file("node-1.key")),
            ..herd.section()
        });
        assert!(
            e.starts_with("tls.key: ") && e.contains("does not go with"),
            "{e}"
        );

        let e = err(TlsSection {
            ca: Some(other.file("ca.pem")),
            ..herd.section()
        });
        assert!(
            e.starts_with("tls.cert: ") && e.contains("not valid under the CA"),
            "{e}"
        );

        // The CLI's certificate is valid under the CA but is not a node's.
        let e = err(TlsSection {
            cert: Some(herd.file("client.pem")),
            key: Some(herd.file("client.key")),
            ..herd.section()
        });
        assert!(e.starts_with("tls.cert: "), "{e}");

        let e = err(TlsSection {
            ca: None,
            ..herd.section()
        });
        assert!(e.starts_with("tls: "), "{e}");
    }

    #[test]
    fn client_tls_flags_go_in_pairs() {
        let herd = Herd::new();
        let ca = herd.file("ca.pem");
        let cert = herd.file("client.pem");
        let key = herd.file("client.key");
        assert!(client_tls(Some(&ca), Some(&cert), None)
            .unwrap_err()
            .to_string()
            .contains("--cert needs --key"));
        assert!(client_tls(Some(&ca), None, Some(&key))
            .unwrap_err()
            .to_string()
            .contains("--key needs --cert"));
        assert!(client_tls(None, Some(&cert), Some(&key))
            .unwrap_err()
            .to_string()
            .contains("need --ca"));
        let e = client_tls(Some(&ca), Some(&cert), Some(&herd.file("node-1.key")))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--key: ") && e.contains("does not go with"),
            "{e}"
        );
        let e = client_tls(Some(&herd.file("none.pem")), None, None)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--ca: cannot read "), "{e}");
        assert!(client_tls(Some(&ca), Some(&cert), Some(&key))
            .unwrap()
            .is_some());
    }
}
