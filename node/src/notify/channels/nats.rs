//! NATS: Herd's JSON document ([`payload::herd_document`]) published to a subject,
//! with async-nats.
//!
//! - **Without `stream`** (core NATS, at most once): publish, then `flush` within the
//!   timeout. The flush confirms that the message was written to the server's
//!   connection, not that anyone subscribed: core NATS keeps nothing.
//! - **With `stream`**: the JetStream stream (`subjects = [subject]`) is created if
//!   missing, once per connection, then every publish waits for the server's
//!   acknowledgement: the message is stored for consumers when the send succeeds.
//!
//! One client per channel, connected at the first send (building a channel needs
//! no runtime and no server). async-nats reconnects by itself when the connection
//! drops, and while it is disconnected it would buffer publishes and flush them
//! later; a send to a server that is down must fail within its timeout instead, so a
//! send while the client is not connected fails at once as retryable (nothing is
//! buffered), and a client that gave up reconnecting ([`MAX_RECONNECTS`]) is
//! replaced by a fresh connection at the next send.
//!
//! Failures: a refused or timed-out connection, a lost connection, a missing ack are
//! retryable; a refused token, a message over the server's `max_payload`, a stream
//! the server refuses to create (e.g. subjects overlapping another stream) are
//! permanent. The token never appears in errors or in `Debug`.
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream;
use async_nats::{ClientError, ConnectErrorKind, ConnectOptions, Event, ServerAddr};
use bytes::Bytes;
use tokio::time::Instant;

use super::{payload, read_secret, redact, remaining, ChannelError, SendError};
use crate::config::channels::NatsChannel;
use crate::model::Notification;

/// Reconnect attempts of one client before it gives up (about four minutes with
/// async-nats's backoff, capped at 4 s); the next send then connects anew. Bounds
/// the background reconnecting of a client whose channel was dropped.
pub(super) const MAX_RECONNECTS: usize = 60;
/// Bounds of the TCP + NATS handshake of one connection attempt (reconnects too).
const MIN_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A dead peer on a silent connection is noticed after two missed pings.
const PING_INTERVAL: Duration = Duration::from_secs(20);

pub(super) struct Nats {
    url: String,
    /// `nats://host:port`: without user or password, safe to show.
    shown: String,
    subject: String,
    stream: Option<String>,
    token: Option<String>,
    /// Token and a password in the URL: never shown.
    secrets: Vec<String>,
    conn: tokio::sync::Mutex<Option<Conn>>,
}

struct Conn {
    client: async_nats::Client,
    /// Set by the client's event callback when it stopped for good.
    dead: Arc<AtomicBool>,
    /// `get_or_create_stream` succeeded on this client; cleared by a failed publish
    /// so that a stream deleted meanwhile is created again.
    stream_ready: bool,
}

impl Nats {
    pub(super) fn build(spec: &NatsChannel) -> Result<Nats, ChannelError> {
        let addr = spec
            .url
            .parse::<ServerAddr>()
            .map_err(|e| ChannelError::BadNatsUrl {
                reason: e.to_string(),
            })?;
        let host = addr.host();
        let shown = if host.contains(':') {
            format!("{}://[{host}]:{}", addr.scheme(), addr.port())
        } else {
            format!("{}://{host}:{}", addr.scheme(), addr.port())
        };
        let subject = spec.subject.trim().to_string();
        if subject.is_empty()
            || subject.contains(|c: char| c.is_whitespace() || c == '*' || c == '>')
            || subject.starts_with('.')
            || subject.ends_with('.')
            || subject.contains("..")
        {
            return Err(ChannelError::BadSubject {
                subject: spec.subject.clone(),
            });
        }
        let stream = match &spec.stream {
            Some(s) => {
                if s.is_empty()
                    || s.contains(|c: char| {
                        c.is_whitespace()
                            || c.is_control()
                            || matches!(c, '.' | '*' | '>' | '/' | '\\')
                    })
                {
                    return Err(ChannelError::BadStream { stream: s.clone() });
                }
                Some(s.clone())
            }
            None => None,
        };
        let token = match &spec.token {
            Some(s) => Some(read_secret(s, "token")?),
            None => None,
        };
        let secrets = token
            .iter()
            .cloned()
            .chain(addr.password().map(str::to_string))
            .filter(|s| !s.is_empty())
            .collect();
        Ok(Nats {
            url: spec.url.clone(),
            shown,
            subject,
            stream,
            token,
            secrets,
            conn: tokio::sync::Mutex::new(None),
        })
    }

    pub(super) async fn send(
        &self,
        group: &[Notification],
        deadline: Instant,
    ) -> Result<(), SendError> {
        let body = Bytes::from(payload::herd_document(group).to_string());
        let mut slot = self.conn.lock().await;
        let result = self.send_locked(&mut slot, body, deadline).await;
        if result.is_err() {
            if let Some(c) = slot.as_mut() {
                c.stream_ready = false;
            }
        }
        result.map_err(|e| self.redacted(e))
    }

    async fn send_locked(
        &self,
        slot: &mut Option<Conn>,
        body: Bytes,
        deadline: Instant,
    ) -> Result<(), SendError> {
        if slot
            .as_ref()
            .is_some_and(|c| c.dead.load(Ordering::Relaxed))
        {
            *slot = None;
        }
        if let Some(c) = slot.as_ref() {
            if c.client.connection_state() != State::Connected {
                return Err(SendError::Retryable(format!(
                    "not connected to {} (reconnecting)",
                    self.shown
                )));
            }
        } else {
            *slot = Some(self.connect(deadline).await?);
        }
        let Some(conn) = slot.as_mut() else {
            return Err(SendError::Retryable("no connection".into()));
        };
        match &self.stream {
            Some(stream) => self.publish_stored(conn, stream, body, deadline).await,
            None => self.publish_core(&conn.client, body).await,
        }
    }

    async fn connect(&self, deadline: Instant) -> Result<Conn, SendError> {
        let dead = Arc::new(AtomicBool::new(false));
        let flag = dead.clone();
        let mut options = ConnectOptions::new()
            .name("herd")
            .connection_timeout(remaining(deadline).clamp(MIN_CONNECT_TIMEOUT, MAX_CONNECT_TIMEOUT))
            .ping_interval(PING_INTERVAL)
            .max_reconnects(MAX_RECONNECTS)
            .event_callback(move |event| {
                let flag = flag.clone();
                async move {
                    if matches!(
                        event,
                        Event::Closed | Event::ClientError(ClientError::MaxReconnects)
                    ) {
                        flag.store(true, Ordering::Relaxed);
                    }
                }
            });
        if let Some(t) = &self.token {
            options = options.token(t.clone());
        }
        let client = options.connect(self.url.as_str()).await.map_err(|e| {
            let text = format!("connecting to {}: {e}", self.shown);
            match e.kind() {
                ConnectErrorKind::AuthorizationViolation
                | ConnectErrorKind::Authentication
                | ConnectErrorKind::ServerParse
                | ConnectErrorKind::Tls => SendError::Permanent(text),
                ConnectErrorKind::Dns
                | ConnectErrorKind::TimedOut
                | ConnectErrorKind::Io
                | ConnectErrorKind::MaxReconnects => SendError::Retryable(text),
            }
        })?;
        Ok(Conn {
            client,
            dead,
            stream_ready: false,
        })
    }

    /// Core NATS: publish, then flush so that a send reports a write that did not
    /// reach the server's connection.
    async fn publish_core(
        &self,
        client: &async_nats::Client,
        body: Bytes,
    ) -> Result<(), SendError> {
        client
            .publish(self.subject.clone(), body)
            .await
            .map_err(|e| {
                let text = format!("publishing to {}: {e}", self.subject);
                match e.kind() {
                    async_nats::PublishErrorKind::MaxPayloadExceeded
                    | async_nats::PublishErrorKind::InvalidSubject => SendError::Permanent(text),
                    async_nats::PublishErrorKind::Send => SendError::Retryable(text),
                }
            })?;
        client
            .flush()
            .await
            .map_err(|e| SendError::Retryable(format!("flushing to {}: {e}", self.shown)))
    }

    /// JetStream: the stream once per connection, then publish and wait for the ack.
    async fn publish_stored(
        &self,
        conn: &mut Conn,
        stream: &str,
        body: Bytes,
        deadline: Instant,
    ) -> Result<(), SendError> {
        let mut js = jetstream::new(conn.client.clone());
        js.set_timeout(remaining(deadline).max(Duration::from_millis(1)));
        if !conn.stream_ready {
            js.get_or_create_stream(jetstream::stream::Config {
                name: stream.to_string(),
                subjects: vec![self.subject.clone()],
                ..Default::default()
            })
            .await
            .map_err(|e| stream_error(stream, e))?;
            conn.stream_ready = true;
        }
        let ack = js
            .publish(self.subject.clone(), body)
            .await
            .map_err(|e| publish_error(&self.subject, e))?
            .await
            .map_err(|e| publish_error(&self.subject, e))?;
        if ack.stream != stream {
            // Another stream covers the subject: the message is stored, but not
            // where the configuration says.
            tracing::warn!(
                subject = %self.subject,
                expected = stream,
                stored_in = %ack.stream,
                "NATS message stored in another stream"
            );
        }
        Ok(())
    }

    fn redacted(&self, e: SendError) -> SendError {
        let secrets: Vec<&str> = self.secrets.iter().map(String::as_str).collect();
        match e {
            SendError::Retryable(m) => SendError::Retryable(redact(&m, &secrets)),
            SendError::Permanent(m) => SendError::Permanent(redact(&m, &secrets)),
        }
    }
}

fn stream_error(stream: &str, e: jetstream::context::CreateStreamError) -> SendError {
    use jetstream::context::CreateStreamErrorKind as K;
    let text = format!("creating stream {stream}: {e}");
    match e.kind() {
        K::EmptyStreamName | K::InvalidStreamName | K::DomainAndExternalSet => {
            SendError::Permanent(text)
        }
        // The server looked at the request and said no (overlapping subjects, a
        // stream of that name with another configuration): a retry will not help.
        K::JetStream(api) if (400..500).contains(&api.code()) => SendError::Permanent(text),
        _ => SendError::Retryable(text),
    }
}

fn publish_error(subject: &str, e: jetstream::context::PublishError) -> SendError {
    use jetstream::context::PublishErrorKind as K;
    let text = format!("publishing to {subject}: {e}");
    match e.kind() {
        K::MaxPayloadExceeded | K::WrongLastMessageId | K::WrongLastSequence => {
            SendError::Permanent(text)
        }
        _ => SendError::Retryable(text),
    }
}

impl fmt::Debug for Nats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Nats")
            .field("server", &self.shown)
            .field("subject", &self.subject)
            .field("stream", &self.stream)
            .field("token", &self.token.as_ref().map(|_| "<secret>"))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::process::{Child, Command, Stdio};
    use std::time::Instant as StdInstant;

    use tokio_stream::StreamExt;

    use super::super::testkit::{closed_port, notification, stalled};
    use super::super::Channel;
    use super::*;
    use crate::config::channels::{ChannelSpec, Secret};
    use crate::model::NotifyKind;

    /// A real nats-server (Debian package `nats-server`) on a free loopback port,
    /// with JetStream storing in `dir`; killed when dropped.
    struct NatsServer {
        port: u16,
        child: Child,
    }

    impl NatsServer {
        fn start(dir: &Path, token: Option<&str>) -> NatsServer {
            Self::start_on(closed_port(), dir, token)
        }

        fn start_on(port: u16, dir: &Path, token: Option<&str>) -> NatsServer {
            let mut cmd = Command::new("nats-server");
            cmd.args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
                .arg(dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if let Some(t) = token {
                cmd.args(["--auth", t]);
            }
            let child = cmd.spawn().unwrap_or_else(|e| {
                panic!("cannot run nats-server ({e}): apt-get install -y nats-server")
            });
            let server = NatsServer { port, child };
            let until = StdInstant::now() + Duration::from_secs(10);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    StdInstant::now() < until,
                    "nats-server did not listen on {port}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            server
        }

        fn url(&self) -> String {
            format!("nats://127.0.0.1:{}", self.port)
        }

        fn stop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    impl Drop for NatsServer {
        fn drop(&mut self) {
            self.stop();
        }
    }

    fn spec(
        url: &str,
        subject: &str,
        stream: Option<&str>,
        token_file: Option<&Path>,
    ) -> ChannelSpec {
        ChannelSpec::Nats(NatsChannel {
            name: "bus".into(),
            url: url.into(),
            subject: subject.into(),
            stream: stream.map(str::to_string),
            token: token_file.map(|p| Secret {
                env: None,
                file: Some(p.display().to_string()),
            }),
            timeout: None,
            max_attempts: None,
            backoff: None,
            backoff_max: None,
            fallback: vec![],
            rate_limit_per_min: None,
            group_window: None,
            max_age: None,
        })
    }

    async fn stored(server: &NatsServer, stream: &str, seq: u64) -> serde_json::Value {
        let client = async_nats::connect(server.url()).await.unwrap();
        let js = jetstream::new(client);
        let s = js.get_stream(stream).await.unwrap();
        let msg = s.get_raw_message(seq).await.unwrap();
        serde_json::from_slice(&msg.payload).unwrap()
    }

    #[tokio::test]
    async fn nats_stream_keeps_the_message() {
        let dir = tempfile::tempdir().unwrap();
        let server = NatsServer::start(dir.path(), None);
        let ch = Channel::build(&spec(
            &server.url(),
            "herd.alerts",
            Some("HERD_ALERTS"),
            None,
        ))
        .unwrap();
        assert_eq!(ch.kind(), "nats");
        let a = notification("disk-full", "web-1", NotifyKind::Firing, 1);
        let b = notification("inode-full", "web-1", NotifyKind::Resolved, 2);
        ch.send(&[a.clone(), b.clone()], Duration::from_secs(5))
            .await
            .unwrap();

        let client = async_nats::connect(server.url()).await.unwrap();
        let js = jetstream::new(client);
        let mut s = js.get_stream("HERD_ALERTS").await.unwrap();
        let info = s.info().await.unwrap();
        assert_eq!(info.config.subjects, vec!["herd.alerts".to_string()]);
        assert_eq!(info.state.messages, 1);
        let msg = s.get_raw_message(1).await.unwrap();
        assert_eq!(msg.subject.as_str(), "herd.alerts");
        let doc: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
        assert_eq!(doc, payload::herd_document(&[a.clone(), b]));
        assert_eq!(doc["version"], "1");
        assert_eq!(doc["notifications"][0]["alert"]["rule"], "disk-full");

        // The same client and stream again: the second message is sequence 2.
        let c = notification("load-high", "web-2", NotifyKind::Firing, 3);
        ch.send(std::slice::from_ref(&c), Duration::from_secs(5))
            .await
            .unwrap();
        let doc = stored(&server, "HERD_ALERTS", 2).await;
        assert_eq!(doc["idempotency_key"], c.idempotency_key.as_str());

        // A stream deleted meanwhile: the failed publish makes the next send create
        // it again.
        js.delete_stream("HERD_ALERTS").await.unwrap();
        let first = ch
            .send(std::slice::from_ref(&a), Duration::from_secs(2))
            .await;
        if let Err(e) = &first {
            assert!(e.is_retryable(), "{e}");
            ch.send(std::slice::from_ref(&a), Duration::from_secs(5))
                .await
                .unwrap();
        }
        let doc = stored(&server, "HERD_ALERTS", 1).await;
        assert_eq!(doc["idempotency_key"], a.idempotency_key.as_str());
    }

    #[tokio::test]
    async fn nats_core_publish_reaches_a_subscriber() {
        let dir = tempfile::tempdir().unwrap();
        let server = NatsServer::start(dir.path(), None);
        let client = async_nats::connect(server.url()).await.unwrap();
        let mut sub = client.subscribe("herd.core").await.unwrap();
        client.flush().await.unwrap();

        let ch = Channel::build(&spec(&server.url(), "herd.core", None, None)).unwrap();
        let a = notification("disk-full", "web-1", NotifyKind::Firing, 1);
        ch.send(std::slice::from_ref(&a), Duration::from_secs(5))
            .await
            .unwrap();
        let msg = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .expect("a message within 5 s")
            .expect("the subscription is open");
        assert_eq!(msg.subject.as_str(), "herd.core");
        let doc: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
        assert_eq!(doc, payload::herd_document(std::slice::from_ref(&a)));

        // No stream was made for a channel without one.
        let js = jetstream::new(client);
        assert!(js.get_stream("herd").await.is_err());
    }

    #[tokio::test]
    async fn nats_down_is_retryable_within_the_timeout() {
        let n = [notification("disk-full", "web-1", NotifyKind::Firing, 1)];
        // Nothing listens: the first connection is refused at once.
        let url = format!("nats://127.0.0.1:{}", closed_port());
        let ch = Channel::build(&spec(&url, "herd.alerts", Some("HERD"), None)).unwrap();
        let started = StdInstant::now();
        let e = ch.send(&n, Duration::from_secs(3)).await.unwrap_err();
        assert!(e.is_retryable(), "{e}");
        assert!(e.to_string().contains(&url), "{e}");
        assert!(started.elapsed() < Duration::from_secs(3));

        // A listener that never says INFO: bounded by the send's timeout.
        let st = stalled().await;
        let url = format!("nats://127.0.0.1:{}", st.port);
        let ch = Channel::build(&spec(&url, "herd.alerts", None, None)).unwrap();
        let started = StdInstant::now();
        let e = ch.send(&n, Duration::from_millis(500)).await.unwrap_err();
        assert!(e.is_retryable(), "{e}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    /// Connected, then the server goes away: sends fail within their timeout (with and
    /// without a stream) instead of buffering, and work again once it is back.
    #[tokio::test]
    async fn nats_server_restart_fails_fast_then_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let mut server = NatsServer::start(dir.path(), None);
        let port = server.port;
        let stored_ch = Channel::build(&spec(
            &server.url(),
            "herd.stored",
            Some("HERD_STORED"),
            None,
        ))
        .unwrap();
        let core_ch = Channel::build(&spec(&server.url(), "herd.plain", None, None)).unwrap();
        let n = [notification("disk-full", "web-1", NotifyKind::Firing, 1)];
        stored_ch.send(&n, Duration::from_secs(5)).await.unwrap();
        core_ch.send(&n, Duration::from_secs(5)).await.unwrap();

        server.stop();
        for ch in [&stored_ch, &core_ch] {
            for _ in 0..3 {
                let started = StdInstant::now();
                let e = ch.send(&n, Duration::from_millis(800)).await.unwrap_err();
                assert!(e.is_retryable(), "{ch}: {e}");
                assert!(
                    started.elapsed() < Duration::from_millis(1500),
                    "{ch}: {:?}",
                    started.elapsed()
                );
            }
        }

        let server = NatsServer::start_on(port, dir.path(), None);
        for ch in [&stored_ch, &core_ch] {
            let until = StdInstant::now() + Duration::from_secs(20);
            loop {
                match ch.send(&n, Duration::from_secs(2)).await {
                    Ok(()) => break,
                    Err(e) => {
                        assert!(e.is_retryable(), "{ch}: {e}");
                        assert!(StdInstant::now() < until, "{ch} did not recover: {e}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }
        // The stream survived the restart (same store directory) and has the
        // message sent after it.
        let client = async_nats::connect(server.url()).await.unwrap();
        let js = jetstream::new(client);
        let mut s = js.get_stream("HERD_STORED").await.unwrap();
        let last = s.info().await.unwrap().state.last_sequence;
        assert!(last >= 2, "{last}");
        let doc = stored(&server, "HERD_STORED", last).await;
        assert_eq!(doc["idempotency_key"], n[0].idempotency_key.as_str());
    }

    #[tokio::test]
    async fn nats_token_auth_and_no_token_shown() {
        const TOKEN: &str = "n4ts-s3cr3t-t0k3n";
        let dir = tempfile::tempdir().unwrap();
        let server = NatsServer::start(&dir.path().join("js"), Some(TOKEN));
        let good = dir.path().join("good");
        std::fs::write(&good, format!("{TOKEN}\n")).unwrap();
        let bad = dir.path().join("bad");
        std::fs::write(&bad, "wr0ng-t0k3n").unwrap();

        let ch =
            Channel::build(&spec(&server.url(), "herd.auth", Some("AUTH"), Some(&good))).unwrap();
        for shown in [format!("{ch:?}"), format!("{ch:#?}"), ch.to_string()] {
            assert!(!shown.contains("s3cr3t"), "{shown}");
        }
        assert!(format!("{ch:?}").contains(&server.url()));
        let n = [notification("disk-full", "web-1", NotifyKind::Firing, 1)];
        ch.send(&n, Duration::from_secs(5)).await.unwrap();

        let ch =
            Channel::build(&spec(&server.url(), "herd.auth", Some("AUTH"), Some(&bad))).unwrap();
        let e = ch.send(&n, Duration::from_secs(5)).await.unwrap_err();
        assert!(!e.is_retryable(), "{e}");
        assert!(e.to_string().contains("authorization"), "{e}");
        assert!(!e.to_string().contains("t0k3n"), "{e}");

        let ch = Channel::build(&spec(&server.url(), "herd.auth", None, None)).unwrap();
        let e = ch.send(&n, Duration::from_secs(5)).await.unwrap_err();
        assert!(!e.is_retryable(), "{e}");
    }

    #[tokio::test]
    async fn nats_refused_stream_is_permanent() {
        let dir = tempfile::tempdir().unwrap();
        let server = NatsServer::start(dir.path(), None);
        // Another stream already takes the subject: the server refuses ours.
        let client = async_nats::connect(server.url()).await.unwrap();
        jetstream::new(client)
            .create_stream(jetstream::stream::Config {
                name: "OTHER".into(),
                subjects: vec!["herd.>".into()],
                ..Default::default()
            })
            .await
            .unwrap();
        let ch = Channel::build(&spec(&server.url(), "herd.alerts", Some("MINE"), None)).unwrap();
        let n = [notification("disk-full", "web-1", NotifyKind::Firing, 1)];
        let e = ch.send(&n, Duration::from_secs(5)).await.unwrap_err();
        assert!(!e.is_retryable(), "{e}");
        assert!(e.to_string().contains("MINE"), "{e}");
    }

    #[test]
    fn nats_build_checks() {
        let ch = Channel::build(&spec(
            "nats://user:pa55w0rd@127.0.0.1:4222",
            "herd.alerts",
            None,
            None,
        ))
        .unwrap();
        let shown = format!("{ch:?}");
        assert!(shown.contains("nats://127.0.0.1:4222"), "{shown}");
        assert!(!shown.contains("pa55w0rd"), "{shown}");
        let ch = Channel::build(&spec("nats://[::1]:4333", "herd.alerts", None, None)).unwrap();
        assert!(format!("{ch:?}").contains("nats://[::1]:4333"));

        for stream in ["a.b", "has space", "x*", ""] {
            let e = Channel::build(&spec("nats://127.0.0.1:4222", "s", Some(stream), None))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("channel bus: "), "{e}");
            assert!(e.contains("stream"), "{e}");
        }
        for subject in ["a..b", ".a", "a."] {
            let e = Channel::build(&spec("nats://127.0.0.1:4222", subject, None, None))
                .unwrap_err()
                .to_string();
            assert!(e.contains("subject"), "{e}");
        }
        let e = Channel::build(&spec("http://127.0.0.1:4222", "s", None, None))
            .unwrap_err()
            .to_string();
        assert!(e.contains("url"), "{e}");
        let e = Channel::build(&spec(
            "nats://127.0.0.1:4222",
            "s",
            None,
            Some(Path::new("/nonexistent/herd/nats-token")),
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("/nonexistent/herd/nats-token"), "{e}");
    }
}
