//! Notification channels: where a group of notifications goes out as one message.
//!
//! A [`Channel`] is built once from its spec: secrets are read, addresses parsed and
//! TLS settings prepared, so a broken channel shows up when the configuration loads
//! rather than at the first alert. [`Channel::send`] delivers one message for a group
//! of notifications within a time bound and says whether a failure is worth retrying.
//!
//! Secrets (SMTP passwords, tokens, the Slack URL) never appear in errors, in `Debug`
//! or in `Display`.
use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::channels::{ChannelSpec, SecretError};
use crate::model::text::{body_snippet, redact};
use crate::model::Notification;
use crate::transport::http::{
    self, HeaderError, HttpError, Request, Response, Tls, TlsSetupError, Via,
};

pub mod alertmanager;
mod asana;
mod command;
mod email;
mod nats;
mod payload;
mod slack;
mod telegram;
mod webhook;

/// Why a send failed, and whether trying again may help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Connection refused, a timeout, a 5xx, 408 or 429, a temporary SMTP reply.
    #[error("temporary failure: {0}")]
    Retryable(String),
    /// The receiver refused the message for good (4xx, a 5xx SMTP reply, a bad address).
    #[error("permanent failure: {0}")]
    Permanent(String),
}

impl SendError {
    #[cfg(test)]
    pub fn is_retryable(&self) -> bool {
        matches!(self, SendError::Retryable(_))
    }
}

/// A channel ready to send: built once from its spec.
pub struct Channel {
    name: String,
    kind: Kind,
}

enum Kind {
    Email(email::Email),
    Webhook(webhook::Webhook),
    Slack(slack::Slack),
    Telegram(telegram::Telegram),
    Command(command::Command),
    Asana(asana::Asana),
    Nats(nats::Nats),
    Alertmanager(alertmanager::Alertmanager),
}

/// Why a channel cannot be built: the setting and what is wrong with it, never a
/// secret's value.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// What the spec's validation found, joined.
    #[error("{}", .0.join("; "))]
    Invalid(Vec<String>),
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// `what`: the secret's setting (`token`, `url`, `password`).
    #[error("{what} is empty")]
    EmptySecret { what: String },
    /// `shown`: how the URL may be shown (itself, or a redacted form).
    #[error("{shown} is not a valid http(s) URL")]
    BadUrl { shown: String },
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    #[error("base_url {base_url:?} is not a valid http(s) URL")]
    BadBaseUrl { base_url: String },
    #[error("the token has characters not allowed in a URL")]
    TokenNotUrlSafe,
    #[error("token has characters not allowed in a header")]
    TokenNotHeaderSafe,
    #[error(transparent)]
    Header(#[from] HeaderError),
    #[error("smtp {smtp:?} must be host or host:port")]
    BadSmtp { smtp: String },
    #[error("TLS settings for {host}: {reason}")]
    SmtpTls { host: String, reason: String },
    #[error("from {from:?} is not an address: {reason}")]
    BadFrom { from: String, reason: String },
    #[error("to {to:?} is not an address: {reason}")]
    BadTo { to: String, reason: String },
    #[error("to needs at least one address")]
    NoRecipient,
    #[error("username and password go together")]
    UserWithoutPassword,
    #[error("set project, workspace or both")]
    NoProjectOrWorkspace,
    #[error("url is not a valid NATS server URL: {reason}")]
    BadNatsUrl { reason: String },
    #[error("subject {subject:?} must be a plain subject (no spaces or wildcards)")]
    BadSubject { subject: String },
    #[error(
        "stream {stream:?} is not a valid stream name (no spaces, '.', '*', '>', '/' or '\\')"
    )]
    BadStream { stream: String },
}

/// A channel that cannot be built: its name and why. Shown as "channel NAME:
/// WHY", the text the notifier reports for a broken channel.
#[derive(Debug, thiserror::Error)]
#[error("channel {channel}: {source}")]
pub struct BuildError {
    pub channel: String,
    pub source: ChannelError,
}

impl Channel {
    /// Reads the secrets and prepares the transport. The error names the channel and
    /// what is wrong (e.g. "channel ops-mail: environment variable SMTP_PASS is not
    /// set"), never a secret's value. Needs no async runtime.
    pub fn build(spec: &ChannelSpec) -> Result<Channel, BuildError> {
        let name = spec.name().to_string();
        match Self::build_kind(spec) {
            Ok(kind) => Ok(Channel { name, kind }),
            Err(source) => Err(BuildError {
                channel: name,
                source,
            }),
        }
    }

    fn build_kind(spec: &ChannelSpec) -> Result<Kind, ChannelError> {
        let problems = spec.validate();
        if !problems.is_empty() {
            return Err(ChannelError::Invalid(problems));
        }
        match spec {
            ChannelSpec::Email(e) => email::Email::build(e).map(Kind::Email),
            ChannelSpec::Webhook(w) => webhook::Webhook::build(w).map(Kind::Webhook),
            ChannelSpec::Slack(s) => slack::Slack::build(s).map(Kind::Slack),
            ChannelSpec::Telegram(t) => telegram::Telegram::build(t).map(Kind::Telegram),
            ChannelSpec::Command(c) => command::Command::build(c).map(Kind::Command),
            ChannelSpec::Asana(a) => asana::Asana::build(a).map(Kind::Asana),
            ChannelSpec::Nats(n) => nats::Nats::build(n).map(Kind::Nats),
            ChannelSpec::Alertmanager(a) => {
                alertmanager::Alertmanager::build(a).map(Kind::Alertmanager)
            }
        }
    }

    #[cfg(test)]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// "email", "webhook", "slack", "telegram", "command", "asana", "nats" or
    /// "alertmanager".
    pub fn kind(&self) -> &'static str {
        match self.kind {
            Kind::Email(_) => "email",
            Kind::Webhook(_) => "webhook",
            Kind::Slack(_) => "slack",
            Kind::Telegram(_) => "telegram",
            Kind::Command(_) => "command",
            Kind::Asana(_) => "asana",
            Kind::Nats(_) => "nats",
            Kind::Alertmanager(_) => "alertmanager",
        }
    }

    /// How often a firing alert is posted again: Alertmanager channels only.
    pub fn resend(&self) -> Option<Duration> {
        match &self.kind {
            Kind::Alertmanager(a) => Some(a.resend()),
            _ => None,
        }
    }

    /// Sends ONE message for a group of notifications (same channel, usually one
    /// target). The whole send, connection included, is bounded by `timeout`; a
    /// timeout is retryable. An empty group sends nothing.
    pub async fn send(&self, group: &[Notification], timeout: Duration) -> Result<(), SendError> {
        if group.is_empty() {
            return Ok(());
        }
        let deadline = Instant::now() + timeout;
        let work = async {
            match &self.kind {
                Kind::Email(e) => e.send(group, deadline).await,
                Kind::Webhook(w) => w.send(&self.name, group, deadline).await,
                Kind::Slack(s) => s.send(group, deadline).await,
                Kind::Telegram(t) => t.send(group, deadline).await,
                Kind::Command(c) => c.send(group, deadline).await,
                Kind::Asana(a) => a.send(group, deadline).await,
                Kind::Nats(n) => n.send(group, deadline).await,
                Kind::Alertmanager(a) => a.send(group, deadline).await,
            }
        };
        match tokio::time::timeout_at(deadline, work).await {
            Ok(r) => r,
            Err(_) => Err(SendError::Retryable(format!(
                "timed out after {}",
                humantime::format_duration(timeout)
            ))),
        }
    }
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Channel");
        d.field("name", &self.name);
        match &self.kind {
            Kind::Email(e) => d.field("email", e),
            Kind::Webhook(w) => d.field("webhook", w),
            Kind::Slack(s) => d.field("slack", s),
            Kind::Telegram(t) => d.field("telegram", t),
            Kind::Command(c) => d.field("command", c),
            Kind::Asana(a) => d.field("asana", a),
            Kind::Nats(n) => d.field("nats", n),
            Kind::Alertmanager(a) => d.field("alertmanager", a),
        };
        d.finish()
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} channel {}", self.kind(), self.name)
    }
}

/// Reads a secret for `build`, refusing an empty one.
fn read_secret(
    secret: &crate::config::channels::Secret,
    what: &str,
) -> Result<String, ChannelError> {
    let value = secret.read()?;
    if value.is_empty() {
        return Err(ChannelError::EmptySecret {
            what: what.to_string(),
        });
    }
    Ok(value)
}

/// Time left until `deadline` (zero when passed).
fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// Keeps visible ASCII only, so data can go in an HTTP or mail header.
fn header_safe(value: &str) -> String {
    value
        .chars()
        .map(|c| if (' '..='~').contains(&c) { c } else { '_' })
        .collect()
}

/// A parsed http(s) URL and the TLS settings to reach it.
struct HttpTarget {
    uri: ::http::Uri,
    tls: Tls,
}

impl HttpTarget {
    /// `shown` is how errors name the URL (the URL itself, or a redacted form).
    fn new(url: &str, shown: &str) -> Result<HttpTarget, ChannelError> {
        let (uri, _, _, _) = http::parse_url(url).map_err(|_| ChannelError::BadUrl {
            shown: shown.to_string(),
        })?;
        let tls = Tls::new(true, None)?;
        Ok(HttpTarget { uri, tls })
    }

    /// The URL without its path and query: safe to show even for a secret URL.
    fn origin(&self) -> String {
        format!(
            "{}://{}",
            self.uri.scheme_str().unwrap_or("http"),
            self.uri.authority().map(|a| a.as_str()).unwrap_or("")
        )
    }

    /// POSTs `body` (JSON) with `headers`; errors are redacted of `secrets`.
    async fn post_json(
        &self,
        headers: Vec<(String, String)>,
        body: String,
        deadline: Instant,
        secrets: &[&str],
    ) -> Result<Response, SendError> {
        let mut all = vec![("content-type".to_string(), "application/json".to_string())];
        for (k, v) in headers {
            all.retain(|(n, _)| !n.eq_ignore_ascii_case(&k));
            all.push((k, v));
        }
        let req = Request {
            method: ::http::Method::POST,
            uri: self.uri.clone(),
            headers: all,
            body: Some(body.into()),
        };
        http::fetch(&req, Via::Node, &self.tls, remaining(deadline))
            .await
            .map_err(|e| http_error(e, secrets))
    }
}

/// Classifies a failed request: only a bad URL is permanent.
fn http_error(e: HttpError, secrets: &[&str]) -> SendError {
    let text = redact(&e.to_string(), secrets);
    match e {
        HttpError::BadUrl(_) => SendError::Permanent(text),
        HttpError::Connect(_)
        | HttpError::Tls(_)
        | HttpError::Timeout(_)
        | HttpError::Protocol(_) => SendError::Retryable(text),
    }
}

/// Classifies an answer: 2xx is success; 408, 429 and 5xx are worth retrying; any
/// other status (4xx, an unfollowed redirect) is permanent.
fn check_status(resp: &Response, secrets: &[&str]) -> Result<(), SendError> {
    let status = resp.status;
    if (200..300).contains(&status) {
        return Ok(());
    }
    let snippet = redact(&body_snippet(&resp.body), secrets);
    let text = if snippet.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {snippet}")
    };
    if status == 408 || status == 429 || status >= 500 {
        Err(SendError::Retryable(text))
    } else {
        Err(SendError::Permanent(text))
    }
}

/// Helpers shared by the tests of every channel kind: real receivers on loopback.
#[cfg(test)]
pub(crate) mod testkit {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::mpsc;

    use crate::model::{Alert, AlertState, Notification, NotifyKind, Severity};

    /// One request as the receiver saw it.
    #[derive(Debug, Clone)]
    pub struct Received {
        pub method: String,
        pub path: String,
        /// Lowercased names.
        pub headers: Vec<(String, String)>,
        pub body: Vec<u8>,
    }

    impl Received {
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n == &name.to_ascii_lowercase())
                .map(|(_, v)| v.as_str())
        }
        pub fn json(&self) -> serde_json::Value {
            serde_json::from_slice(&self.body).expect("the body is JSON")
        }
    }

    /// A minimal HTTP/1.1 receiver: reads the head and a content-length body, answers
    /// the configured status and body (the answers in order; the last one repeats),
    /// and closes the connection.
    pub struct HttpReceiver {
        pub base_url: String,
        pub requests: mpsc::UnboundedReceiver<Received>,
        answers: Arc<Mutex<Vec<(u16, String)>>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for HttpReceiver {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl HttpReceiver {
        pub async fn start(status: u16, body: &str) -> HttpReceiver {
            Self::start_with(vec![(status, body.to_string())]).await
        }

        pub async fn start_with(answers: Vec<(u16, String)>) -> HttpReceiver {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (tx, requests) = mpsc::unbounded_channel();
            let answers = Arc::new(Mutex::new(answers));
            let shared = answers.clone();
            let task = tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let (status, body) = {
                        let mut a = shared.lock().unwrap();
                        if a.len() > 1 {
                            a.remove(0)
                        } else {
                            a[0].clone()
                        }
                    };
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        if let Some(r) = serve_one(stream, status, &body).await {
                            let _ = tx.send(r);
                        }
                    });
                }
            });
            HttpReceiver {
                base_url: format!("http://{addr}"),
                requests,
                answers,
                task,
            }
        }

        /// Changes the answer from now on.
        pub fn answer(&self, status: u16, body: &str) {
            *self.answers.lock().unwrap() = vec![(status, body.to_string())];
        }

        pub async fn next(&mut self) -> Received {
            tokio::time::timeout(std::time::Duration::from_secs(5), self.requests.recv())
                .await
                .expect("a request within 5 s")
                .expect("the receiver runs")
        }
    }

    async fn serve_one(mut stream: TcpStream, status: u16, body: &str) -> Option<Received> {
        let mut buf = Vec::new();
        let head_end = loop {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let mut lines = head.split("\r\n");
        let mut first = lines.next()?.split(' ');
        let method = first.next()?.to_string();
        let path = first.next()?.to_string();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut content = buf[head_end + 4..].to_vec();
        while content.len() < length {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                break;
            }
            content.extend_from_slice(&chunk[..n]);
        }
        let answer = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.shutdown().await;
        Some(Received {
            method,
            path,
            headers,
            body: content,
        })
    }

    /// A listener that accepts connections and never says a word.
    pub struct Stalled {
        pub port: u16,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Stalled {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    pub async fn stalled() -> Stalled {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        Stalled { port, task }
    }

    /// A port where nothing listens.
    pub fn closed_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    pub fn notification(
        rule: &str,
        target: &str,
        kind: NotifyKind,
        transition: u64,
    ) -> Notification {
        let id = format!("a1b2c3{transition:02}");
        let mut labels = BTreeMap::new();
        labels.insert("mount".to_string(), "/".to_string());
        labels.insert("team".to_string(), "ops".to_string());
        let state = match kind {
            NotifyKind::Resolved => AlertState::Resolved,
            _ => AlertState::Firing,
        };
        Notification {
            idempotency_key: format!("{id}:{transition}:test"),
            channel: "test".into(),
            kind,
            alert: Alert {
                id,
                rule: rule.into(),
                target: target.into(),
                labels,
                severity: Severity::Critical,
                state,
                since_ms: 1_700_000_060_000,
                active_since_ms: 1_700_000_000_000,
                value: "93.5".into(),
                summary: format!("{rule} on {target}"),
                description: "Disk / is <93%> full & growing".into(),
                transitions: transition,
                acked_by: None,
                flapping: kind == NotifyKind::Flapping,
            },
            ts_ms: 1_700_000_060_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testkit::notification;
    use super::*;
    use crate::config::channels::ChannelSpec;
    use crate::config::channels::{CommandChannel, Secret, SlackChannel, TelegramChannel};
    use crate::model::NotifyKind;

    fn slack_spec(name: &str, secret: Secret) -> ChannelSpec {
        ChannelSpec::Slack(SlackChannel {
            name: name.into(),
            url: secret,
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

    #[test]
    fn missing_env_secret_names_the_variable() {
        let spec = slack_spec(
            "ops-slack",
            Secret {
                env: Some("HERD_TEST_SURELY_UNSET_VAR_71".into()),
                file: None,
            },
        );
        let err = Channel::build(&spec).unwrap_err().to_string();
        assert_eq!(
            err,
            "channel ops-slack: environment variable HERD_TEST_SURELY_UNSET_VAR_71 is not set"
        );
    }

    #[test]
    fn env_and_file_secrets_are_read_and_never_shown() {
        let value = "https://hooks.example.test/services/T0/B0/sup3rs3cr3t";
        std::env::set_var("HERD_TEST_SLACK_URL_CHANNELS", value);
        let spec = slack_spec(
            "from-env",
            Secret {
                env: Some("HERD_TEST_SLACK_URL_CHANNELS".into()),
                file: None,
            },
        );
        let ch = Channel::build(&spec).unwrap();
        assert_eq!(ch.name(), "from-env");
        assert_eq!(ch.kind(), "slack");
        for shown in [format!("{ch:?}"), format!("{ch:#?}"), ch.to_string()] {
            assert!(!shown.contains("sup3rs3cr3t"), "{shown}");
            assert!(!shown.contains("/services/"), "{shown}");
        }

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "123456:t0k3n-from-file\n").unwrap();
        let spec = ChannelSpec::Telegram(TelegramChannel {
            name: "tg".into(),
            token: Secret {
                env: None,
                file: Some(path.display().to_string()),
            },
            chat_id: "-100200300".into(),
            base_url: None,
            timeout: None,
            max_attempts: None,
            backoff: None,
            backoff_max: None,
            fallback: vec![],
            rate_limit_per_min: None,
            group_window: None,
            max_age: None,
        });
        let ch = Channel::build(&spec).unwrap();
        for shown in [format!("{ch:?}"), format!("{ch:#?}"), ch.to_string()] {
            assert!(!shown.contains("t0k3n"), "{shown}");
        }
        assert!(format!("{ch:?}").contains("-100200300"));
    }

    #[test]
    fn missing_file_secret_names_the_file() {
        let spec = slack_spec(
            "s",
            Secret {
                env: None,
                file: Some("/nonexistent/herd/slack-url".into()),
            },
        );
        let err = Channel::build(&spec).unwrap_err().to_string();
        assert!(err.starts_with("channel s: "), "{err}");
        assert!(err.contains("/nonexistent/herd/slack-url"), "{err}");
    }

    #[test]
    fn invalid_spec_is_refused_with_the_channel_name() {
        let spec = slack_spec("bad", Secret::default());
        let err = Channel::build(&spec).unwrap_err().to_string();
        assert!(err.starts_with("channel bad: "), "{err}");
    }

    #[test]
    fn status_classification() {
        let resp = |status: u16, body: &str| Response {
            status,
            body: bytes::Bytes::from(body.to_string()),
            body_cut: false,
            elapsed: Duration::ZERO,
            retry_after: None,
        };
        assert!(check_status(&resp(200, ""), &[]).is_ok());
        assert!(check_status(&resp(204, ""), &[]).is_ok());
        for s in [408, 429, 500, 502, 503] {
            assert!(check_status(&resp(s, ""), &[]).unwrap_err().is_retryable());
        }
        for s in [301, 400, 401, 403, 404, 410] {
            assert!(!check_status(&resp(s, ""), &[]).unwrap_err().is_retryable());
        }
        let e = check_status(&resp(401, "bad token abc123\nmore"), &["abc123"]).unwrap_err();
        assert_eq!(
            e,
            SendError::Permanent("HTTP 401: bad token *** more".into())
        );
    }

    #[tokio::test]
    async fn empty_group_sends_nothing() {
        let spec = ChannelSpec::Command(CommandChannel {
            name: "c".into(),
            command: "exit 1".into(),
            timeout: None,
            max_attempts: None,
            backoff: None,
            backoff_max: None,
            fallback: vec![],
            rate_limit_per_min: None,
            group_window: None,
            max_age: None,
        });
        let ch = Channel::build(&spec).unwrap();
        assert!(ch.send(&[], Duration::from_secs(1)).await.is_ok());
        let n = notification("disk-full", "web-1", NotifyKind::Firing, 1);
        assert!(ch.send(&[n], Duration::from_secs(5)).await.is_err());
    }
}
