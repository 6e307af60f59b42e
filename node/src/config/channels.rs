//! `[[channel]]` and `[routes]` in fleet.toml: where notifications go. Secrets come
//! from environment variables or files, never from the fleet file itself.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::duration::HumanDuration;
use crate::model::net::check_http_url;
use crate::model::RetryPolicy;

/// A secret: the name of an environment variable or a file holding it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Secret {
    #[serde(default)]
    pub env: Option<String>,
    #[serde(default)]
    pub file: Option<String>,
}

/// A secret that cannot be read: where it was looked for, never the value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("environment variable {var} is not set")]
    EnvNotSet { var: String },
    #[error("cannot read secret file {path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error("set exactly one of env and file")]
    NotOneSource,
}

impl Secret {
    /// Reads the secret; the error names where it looked, never the value.
    pub fn read(&self) -> Result<String, SecretError> {
        match (&self.env, &self.file) {
            (Some(var), None) => std::env::var(var)
                .map(|v| v.trim().to_string())
                .map_err(|_| SecretError::EnvNotSet { var: var.clone() }),
            (None, Some(path)) => std::fs::read_to_string(super::expand_home(path))
                .map(|v| v.trim().to_string())
                .map_err(|source| SecretError::File {
                    path: path.clone(),
                    source,
                }),
            _ => Err(SecretError::NotOneSource),
        }
    }

    pub(crate) fn problems(&self, what: &str) -> Option<String> {
        match (&self.env, &self.file) {
            (Some(_), None) | (None, Some(_)) => None,
            _ => Some(format!("{what}: set exactly one of env and file")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS (port 587).
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No TLS at all: only for a relay on the same host or a test server.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// Herd's own JSON document.
    #[default]
    Json,
    /// The payload Alertmanager sends to webhook receivers (version 4).
    Alertmanager,
}

/// Delivery settings every channel kind takes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Delivery {
    /// Around the whole send.
    pub timeout: Option<HumanDuration>,
    /// Attempts before giving up and trying the fallbacks.
    pub max_attempts: Option<u32>,
    /// First retry wait; doubles per attempt (with jitter) up to `backoff_max`.
    pub backoff: Option<HumanDuration>,
    pub backoff_max: Option<HumanDuration>,
    /// Channels tried in order when this one gives up.
    pub fallback: Vec<String>,
    /// Messages per minute at most; more wait.
    pub rate_limit_per_min: Option<u32>,
    /// Notifications of one target within this window go out as one message.
    pub group_window: Option<HumanDuration>,
    /// A notification whose transition is older than this is dropped, not sent
    /// (a node back after days does not send days-old news).
    pub max_age: Option<HumanDuration>,
}

impl Delivery {
    /// The retry policy of these settings, defaults filled in: `backoff` doubling
    /// up to `backoff_max`, with jitter, giving up after `max_attempts`.
    pub fn retry(&self) -> RetryPolicy {
        RetryPolicy {
            first: self.backoff.unwrap_or(DEFAULT_BACKOFF).get(),
            max: self.backoff_max.unwrap_or(DEFAULT_BACKOFF_MAX).get(),
            max_attempts: Some(self.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS)),
        }
    }
}

/// Defaults of `Delivery`.
pub const DEFAULT_TIMEOUT: HumanDuration = HumanDuration::from_secs(10);
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
pub const DEFAULT_BACKOFF: HumanDuration = HumanDuration::from_secs(1);
pub const DEFAULT_BACKOFF_MAX: HumanDuration = HumanDuration::from_secs(300);
pub const DEFAULT_GROUP_WINDOW: HumanDuration = HumanDuration::from_secs(2);
pub const DEFAULT_MAX_AGE: HumanDuration = HumanDuration::from_secs(12 * 3600);

/// Defines a channel struct with its own fields plus the delivery fields every kind
/// takes (written out, not flattened, so that unknown keys stay errors).
macro_rules! channel_struct {
    ($(#[$m:meta])* $name:ident { $($(#[$fm:meta])* $field:ident : $ty:ty,)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            pub name: String,
            $($(#[$fm])* pub $field: $ty,)*
            /// Around the whole send.
            #[serde(default)]
            pub timeout: Option<HumanDuration>,
            /// Attempts before giving up and trying the fallbacks.
            #[serde(default)]
            pub max_attempts: Option<u32>,
            /// First retry wait; doubles per attempt (with jitter) up to `backoff_max`.
            #[serde(default)]
            pub backoff: Option<HumanDuration>,
            #[serde(default)]
            pub backoff_max: Option<HumanDuration>,
            /// Channels tried in order when this one gives up.
            #[serde(default)]
            pub fallback: Vec<String>,
            /// Messages per minute at most; more wait.
            #[serde(default)]
            pub rate_limit_per_min: Option<u32>,
            /// Notifications of one target within this window go out as one message.
            #[serde(default)]
            pub group_window: Option<HumanDuration>,
            /// Older notifications are dropped, not sent (default 12h).
            #[serde(default)]
            pub max_age: Option<HumanDuration>,
        }

        impl $name {
            pub fn delivery(&self) -> Delivery {
                Delivery {
                    timeout: self.timeout,
                    max_attempts: self.max_attempts,
                    backoff: self.backoff,
                    backoff_max: self.backoff_max,
                    fallback: self.fallback.clone(),
                    rate_limit_per_min: self.rate_limit_per_min,
                    group_window: self.group_window,
                    max_age: self.max_age,
                }
            }
        }
    };
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ChannelSpec {
    Email(EmailChannel),
    Webhook(WebhookChannel),
    Slack(SlackChannel),
    Telegram(TelegramChannel),
    Command(CommandChannel),
    Asana(AsanaChannel),
    Nats(NatsChannel),
    Alertmanager(AlertmanagerChannel),
}

macro_rules! each {
    ($self:ident, $c:ident => $e:expr) => {
        match $self {
            ChannelSpec::Email($c) => $e,
            ChannelSpec::Webhook($c) => $e,
            ChannelSpec::Slack($c) => $e,
            ChannelSpec::Telegram($c) => $e,
            ChannelSpec::Command($c) => $e,
            ChannelSpec::Asana($c) => $e,
            ChannelSpec::Nats($c) => $e,
            ChannelSpec::Alertmanager($c) => $e,
        }
    };
}

impl ChannelSpec {
    pub fn name(&self) -> &str {
        each!(self, c => &c.name)
    }
    pub fn delivery(&self) -> Delivery {
        each!(self, c => c.delivery())
    }

    /// Problems of the channel alone (pure); fallback names are checked by the caller.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        let d = self.delivery();
        if d.max_attempts == Some(0) {
            p.push("max_attempts must be 1 or more".into());
        }
        if d.rate_limit_per_min == Some(0) {
            p.push("rate_limit_per_min must be 1 or more".into());
        }
        if d.timeout.is_some_and(|t| t.get().is_zero()) {
            p.push("timeout must be above 0".into());
        }
        if d.max_age.is_some_and(|t| t.get().is_zero()) {
            p.push("max_age must be above 0 (it drops notifications older than it)".into());
        }
        if d.fallback.iter().any(|f| f == self.name()) {
            p.push("a channel cannot be its own fallback".into());
        }
        match self {
            ChannelSpec::Email(e) => {
                if super::fleet::parse_address(&e.smtp).is_err() {
                    p.push(format!("smtp {:?} must be host or host:port", e.smtp));
                }
                if !e.from.contains('@') {
                    p.push(format!("from {:?} is not an address", e.from));
                }
                if e.to.is_empty() {
                    p.push("to needs at least one address".into());
                }
                for t in &e.to {
                    if !t.contains('@') {
                        p.push(format!("to {t:?} is not an address"));
                    }
                }
                if e.username.is_some() != e.password.is_some() {
                    p.push("username and password go together".into());
                }
                if let Some(s) = &e.password {
                    p.extend(s.problems("password"));
                }
            }
            ChannelSpec::Webhook(w) => {
                p.extend(check_http_url("url", &w.url).err().map(|e| e.to_string()));
                if let Some(s) = &w.token {
                    p.extend(s.problems("token"));
                }
            }
            ChannelSpec::Slack(s) => p.extend(s.url.problems("url")),
            ChannelSpec::Telegram(t) => {
                p.extend(t.token.problems("token"));
                if t.chat_id.is_empty() {
                    p.push("chat_id is empty".into());
                }
                if let Some(b) = &t.base_url {
                    p.extend(check_http_url("base_url", b).err().map(|e| e.to_string()));
                }
            }
            ChannelSpec::Command(c) => {
                if c.command.trim().is_empty() {
                    p.push("command is empty".into());
                }
            }
            ChannelSpec::Asana(a) => {
                p.extend(a.token.problems("token"));
                if a.project.is_none() && a.workspace.is_none() {
                    p.push("set project, workspace or both".into());
                }
                if let Some(b) = &a.base_url {
                    p.extend(check_http_url("base_url", b).err().map(|e| e.to_string()));
                }
            }
            ChannelSpec::Alertmanager(a) => {
                if a.urls.is_empty() {
                    p.push("urls needs at least one Alertmanager URL".into());
                }
                for u in &a.urls {
                    p.extend(check_http_url("urls", u).err().map(|e| e.to_string()));
                }
                if a.resend
                    .is_some_and(|r| r.get() < std::time::Duration::from_secs(1))
                {
                    p.push("resend must be 1s or more".into());
                }
                if let Some(u) = &a.external_url {
                    p.extend(
                        check_http_url("external_url", u)
                            .err()
                            .map(|e| e.to_string()),
                    );
                }
                if let Some(s) = &a.token {
                    p.extend(s.problems("token"));
                }
            }
            ChannelSpec::Nats(n) => {
                if !(n.url.starts_with("nats://") || n.url.starts_with("tls://")) {
                    p.push(format!("url {:?} must start with nats:// or tls://", n.url));
                }
                if n.subject.is_empty() || n.subject.contains([' ', '*', '>']) {
                    p.push(format!(
                        "subject {:?} must be a plain subject (no spaces or wildcards)",
                        n.subject
                    ));
                }
                if let Some(s) = &n.token {
                    p.extend(s.problems("token"));
                }
            }
        }
        p
    }
}

channel_struct! {
    /// Email through SMTP (lettre): text and HTML body.
    EmailChannel {
        /// SMTP server, host or host:port (default port: 587 starttls, 465 tls, 25 none).
        smtp: String,
        #[serde(default)]
        tls: SmtpTls,
        #[serde(default)]
        username: Option<String>,
        #[serde(default)]
        password: Option<Secret>,
        from: String,
        to: Vec<String>,
    }
}

channel_struct! {
    /// A generic JSON webhook (or an Alertmanager-compatible one).
    WebhookChannel {
        url: String,
        #[serde(default)]
        format: WebhookFormat,
        #[serde(default)]
        headers: BTreeMap<String, String>,
        /// Sent as `Authorization: Bearer ...`.
        #[serde(default)]
        token: Option<Secret>,
    }
}

channel_struct! {
    /// A Slack incoming webhook; its URL is a secret.
    SlackChannel {
        url: Secret,
    }
}

channel_struct! {
    /// Telegram bot API `sendMessage`.
    TelegramChannel {
        token: Secret,
        chat_id: String,
        /// Default: https://api.telegram.org
        #[serde(default)]
        base_url: Option<String>,
    }
}

channel_struct! {
    /// A local program that gets the notification as JSON on stdin and in env.
    CommandChannel {
        /// Run with `sh -c` on the node.
        command: String,
    }
}

/// `[routes]`: channels by severity, and the default.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Routes {
    #[serde(default)]
    pub default: Vec<String>,
    #[serde(default)]
    pub critical: Vec<String>,
    #[serde(default)]
    pub warning: Vec<String>,
    #[serde(default)]
    pub info: Vec<String>,
    /// Channels told, by each node on its own, when that node loses the herd's
    /// quorum (sent directly, once per loss: a node without quorum sends nothing
    /// through its outbox).
    #[serde(default)]
    pub quorum_loss: Vec<String>,
}

channel_struct! {
    /// Asana: creates a task per message (name: the alert line; notes: the details).
    AsanaChannel {
        token: Secret,
        /// Project gid the task goes into.
        #[serde(default)]
        project: Option<String>,
        /// Workspace gid (needed when no project is given).
        #[serde(default)]
        workspace: Option<String>,
        /// Default: https://app.asana.com/api/1.0
        #[serde(default)]
        base_url: Option<String>,
    }
}

channel_struct! {
    /// NATS: publishes the notifications as JSON to a subject; with `stream`, waits
    /// for the JetStream acknowledgement (the message is kept for consumers).
    NatsChannel {
        /// nats://host:port (or tls://).
        url: String,
        subject: String,
        /// A JetStream stream covering `subject`; created if missing.
        #[serde(default)]
        stream: Option<String>,
        #[serde(default)]
        token: Option<Secret>,
    }
}

channel_struct! {
    /// Alertmanager as a receiver: alerts posted to `/api/v2/alerts` of every URL
    /// (an HA pair gossips; one that takes them is enough), re-sent while firing
    /// every `resend` so that Alertmanager keeps them active.
    AlertmanagerChannel {
        /// Alertmanager base URLs (`http://am-1:9093`); `/api/v2/alerts` is added.
        urls: Vec<String>,
        /// How often a firing alert is posted again (default 1m); each post says it
        /// ends 4 × `resend` later unless posted again, as Prometheus does.
        #[serde(default)]
        resend: Option<HumanDuration>,
        /// Base of each alert's `generatorURL` (default: the node's own HTTP face).
        #[serde(default)]
        external_url: Option<String>,
        #[serde(default)]
        headers: BTreeMap<String, String>,
        /// Sent as `Authorization: Bearer ...`.
        #[serde(default)]
        token: Option<Secret>,
    }
}

/// Default of `AlertmanagerChannel::resend`.
pub const DEFAULT_AM_RESEND: HumanDuration = HumanDuration::from_secs(60);

impl AlertmanagerChannel {
    /// The re-send interval, default filled in.
    pub fn resend(&self) -> std::time::Duration {
        self.resend.unwrap_or(DEFAULT_AM_RESEND).get()
    }
}
