//! `herd.toml`: settings of one node. Layers: defaults < file < `HERD_SECTION__KEY` env.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use toml::de::{DeTable, ValueDeserializer};

use super::duration::HumanDuration;
use super::error::{line_of, ConfigError, ConfigErrors};
use crate::model::net::AddressError;
use crate::model::RetryPolicy;

/// OpenSSH's default `MaxSessions` is 10; stay below it.
pub const MAX_CHANNELS_LIMIT: usize = 9;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    pub node: NodeSection,
    pub ssh: SshSection,
    pub store: StoreSection,
    pub log: LogSection,
    pub cluster: ClusterSection,
    pub tls: TlsSection,
}

/// The herd: Raft timing, liveness, lease and failover.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// Raft heartbeat from the leader (also the AppendEntries RPC timeout).
    pub heartbeat: HumanDuration,
    /// Raft election timeout, drawn between these two.
    pub election_min: HumanDuration,
    pub election_max: HumanDuration,
    /// Every node beats every member this often.
    pub beat_interval: HumanDuration,
    /// A node acts for its targets (scrape, rules, notify) only while it has heard
    /// from a majority of voters within this; must be shorter than failover_after.
    pub lease: HumanDuration,
    /// A member silent this long is down: the leader moves its targets.
    pub failover_after: HumanDuration,
    /// How many nodes watch each node's machine as a target (the next ones in the ring).
    pub watchers: usize,
    /// How the other nodes reach this node's machine for its vitals: "local" (they
    /// run on the same host, as in the demo), "ssh://[user@]host[:port]", or "none".
    pub machine: String,
    /// File holding the herd secret, the same on every node: every call between the
    /// nodes carries it (with `[tls]` the node certificates do; both when both are
    /// set). Absent: `cluster init` makes one and `cluster join` hands it over (kept
    /// in data_dir/herd-secret). Required with `peers` or beyond loopback without TLS.
    pub secret_file: Option<PathBuf>,
    /// Declarative membership: the gRPC addresses of the herd's nodes as the others
    /// reach them (this node's may be listed too). The node forms or joins the herd
    /// by itself and never makes itself a herd of one. Empty: `cluster init`/`join`.
    pub peers: Vec<String>,
    /// How many nodes (this one included) must see each other before the herd
    /// forms; more than half of the nodes listed. 0: all of them.
    pub bootstrap_expect: usize,
}

impl Default for ClusterSection {
    fn default() -> Self {
        ClusterSection {
            heartbeat: HumanDuration::from_millis(100),
            election_min: HumanDuration::from_millis(500),
            election_max: HumanDuration::from_millis(1000),
            beat_interval: HumanDuration::from_millis(200),
            lease: HumanDuration::from_millis(1000),
            failover_after: HumanDuration::from_millis(1500),
            watchers: 1,
            machine: "local".into(),
            secret_file: None,
            peers: Vec::new(),
            bootstrap_expect: 0,
        }
    }
}

/// TLS for the gRPC port: mutual between nodes (Raft traffic needs a client
/// certificate signed by `ca`), server-side for clients. All three or none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    /// PEM CA certificate that signed every node's certificate (`herd certs`).
    pub ca: Option<PathBuf>,
    /// PEM certificate of this node (server and client).
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeSection {
    /// Unique and stable for the node's life.
    pub id: u64,
    /// gRPC address: the client API (and Raft traffic once the herd exists).
    pub grpc: String,
    /// The HTTP face: REST JSON (`/herd/v1/...`), under the API token. Port 0 takes
    /// a free port (the log names it). Beyond loopback it needs `api_token_file`.
    /// With `[tls]` it speaks HTTPS with the node's certificate.
    pub http: String,
    /// Where the node's redb files live.
    pub data_dir: PathBuf,
    /// File holding the API token clients must present (`Authorization: Bearer`).
    /// Required when `grpc` listens beyond loopback.
    pub api_token_file: Option<PathBuf>,
}

impl Default for NodeSection {
    fn default() -> Self {
        NodeSection {
            id: 1,
            grpc: "127.0.0.1:7401".into(),
            http: "127.0.0.1:7481".into(),
            data_dir: PathBuf::from("./data/herd-1"),
            api_token_file: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum HostKeyChecking {
    /// Only hosts already in known_hosts are connected.
    #[default]
    Strict,
    /// Unknown hosts are recorded on first connect; a changed key is still refused.
    AcceptNew,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SshSection {
    /// Private key file; absent: ssh-agent (`SSH_AUTH_SOCK`).
    pub key: Option<String>,
    /// Login user when a target names none; absent: the user running herd.
    pub user: Option<String>,
    pub known_hosts: String,
    pub host_key_checking: HostKeyChecking,
    /// TCP connect + SSH handshake + auth.
    pub connect_timeout: HumanDuration,
    /// Per command unless the target or check sets one; the channel is closed at expiry.
    pub command_timeout: HumanDuration,
    /// SSH keepalive period; `keepalive_max` unanswered ones end the session.
    pub keepalive_interval: HumanDuration,
    pub keepalive_max: usize,
    /// Concurrent exec channels per session (OpenSSH allows 10; the long-lived
    /// shell takes one more).
    pub max_channels: usize,
    /// Commands run in one long-lived `sh` per target (a subshell each), not an
    /// exec channel each: a fraction of the target's CPU per scrape. Accounts that
    /// refuse it (forced command, restricted shell) get exec channels by themselves.
    pub shell: bool,
    /// Reconnect backoff: first wait, doubling up to `reconnect_max`, with jitter.
    pub reconnect_min: HumanDuration,
    pub reconnect_max: HumanDuration,
}

impl Default for SshSection {
    fn default() -> Self {
        SshSection {
            key: None,
            user: None,
            known_hosts: "~/.ssh/known_hosts".into(),
            host_key_checking: HostKeyChecking::Strict,
            connect_timeout: HumanDuration::from_secs(10),
            command_timeout: HumanDuration::from_secs(30),
            keepalive_interval: HumanDuration::from_secs(15),
            keepalive_max: 3,
            max_channels: 8,
            shell: true,
            reconnect_min: HumanDuration::from_secs(1),
            reconnect_max: HumanDuration::from_secs(60),
        }
    }
}

impl SshSection {
    /// How a down target is retried: from `reconnect_min`, doubling up to
    /// `reconnect_max`, with jitter, for as long as it stays in the fleet.
    pub fn reconnect(&self) -> RetryPolicy {
        RetryPolicy::forever(self.reconnect_min.get(), self.reconnect_max.get())
    }
}

/// `[store] cache_mb`'s default.
pub const DEFAULT_CACHE_MB: usize = 64;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    /// Samples and events older than this are deleted.
    pub retention: HumanDuration,
    /// Longest time a sample waits in memory before it is committed (the most a
    /// `kill -9` can lose).
    pub flush_interval: HumanDuration,
    /// Samples per compressed chunk before a new one is started.
    pub chunk_samples: usize,
    /// A store file at least this large (MiB) is compacted, at start and while the
    /// node runs (after a retention pass), when less than 40 % of it is in use:
    /// the free pages deletes leave go back to the filesystem. 0: at any size.
    pub compact_min_mb: u64,
    /// MiB of the store file's pages kept in memory (redb's cache; the kernel's
    /// page cache is below it either way).
    pub cache_mb: usize,
    /// How long a resolved alert stays listed (`herd alerts`, the herd's state)
    /// before it is forgotten; its transition count is kept, so a later episode
    /// notifies under new idempotency keys.
    pub resolved_retention: HumanDuration,
}

/// `[store] compact_min_mb`'s default.
pub const DEFAULT_COMPACT_MIN_MB: u64 = 64;

impl Default for StoreSection {
    fn default() -> Self {
        StoreSection {
            retention: HumanDuration::from_secs(30 * 24 * 3600),
            flush_interval: HumanDuration::from_secs(1),
            chunk_samples: 240,
            compact_min_mb: DEFAULT_COMPACT_MIN_MB,
            cache_mb: DEFAULT_CACHE_MB,
            resolved_retention: HumanDuration::from_secs(3600),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    pub format: LogFormat,
    /// tracing filter, e.g. "info" or "herd=debug,russh=warn".
    pub level: String,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// How the other nodes reach a node's machine to watch its vitals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MachineSpec {
    /// Not watched as a target (liveness over gRPC only).
    None,
    /// The watchers run on the same host (the demo, tests): the local transport.
    Local,
    /// Over SSH like any target.
    Ssh {
        user: Option<String>,
        address: String,
    },
}

/// What is wrong with a `cluster.machine` value (`text` as written, trimmed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MachineSpecError {
    #[error("{text:?}: expected \"local\", \"none\" or \"ssh://[user@]host[:port]\"")]
    Unknown { text: String },
    #[error("{text:?}: empty user before '@'")]
    EmptyUser { text: String },
    #[error("{text:?}: {source}")]
    Address { text: String, source: AddressError },
}

impl MachineSpec {
    pub fn parse(text: &str) -> Result<MachineSpec, MachineSpecError> {
        match text.trim() {
            "none" => Ok(MachineSpec::None),
            "local" => Ok(MachineSpec::Local),
            t => {
                let rest = t
                    .strip_prefix("ssh://")
                    .ok_or_else(|| MachineSpecError::Unknown {
                        text: t.to_string(),
                    })?;
                let (user, address) = match rest.split_once('@') {
                    Some((u, a)) if !u.is_empty() => (Some(u.to_string()), a),
                    Some(_) => {
                        return Err(MachineSpecError::EmptyUser {
                            text: t.to_string(),
                        })
                    }
                    None => (None, rest),
                };
                crate::config::fleet::parse_address(address).map_err(|source| {
                    MachineSpecError::Address {
                        text: t.to_string(),
                        source,
                    }
                })?;
                Ok(MachineSpec::Ssh {
                    user,
                    address: address.to_string(),
                })
            }
        }
    }
}

/// Expands a leading `~/` with `$HOME`.
pub fn expand_home(path: &str) -> PathBuf {
    match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(path),
    }
}

impl NodeConfig {
    /// Loads defaults < `file` < env, reporting every error with file, line and key.
    pub fn load(file: Option<&Path>) -> Result<NodeConfig, ConfigErrors> {
        let mut fig = Figment::from(Serialized::defaults(NodeConfig::default()));
        if let Some(path) = file {
            let source = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigErrors(vec![ConfigError {
                    source: source.clone(),
                    line: None,
                    key: String::new(),
                    message: format!("cannot read: {e}"),
                }])
            })?;
            precheck(&text, &source)?;
            fig = fig.merge(Toml::file_exact(path));
        }
        // Only HERD_SECTION__KEY variables: HERD_NODE alone is the CLI's node address.
        fig = fig.merge(
            Env::prefixed("HERD_")
                .filter(|k| k.as_str().contains("__"))
                .split("__"),
        );
        let cfg: NodeConfig = fig.extract().map_err(|e| {
            ConfigErrors(
                e.into_iter()
                    .map(|e| ConfigError {
                        source: e
                            .metadata
                            .as_ref()
                            .map(|m| m.name.to_string())
                            .unwrap_or_else(|| "config".into()),
                        line: None,
                        key: e.path.join("."),
                        message: e.kind.to_string(),
                    })
                    .collect(),
            )
        })?;
        let source = file
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "defaults".into());
        let problems = cfg.validate();
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigErrors(
                problems
                    .into_iter()
                    .map(|(key, message)| ConfigError {
                        source: source.clone(),
                        line: None,
                        key: key.into(),
                        message,
                    })
                    .collect(),
            ))
        }
    }

    /// Relations between fields that types do not express; every problem is returned.
    pub fn validate(&self) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        if self.node.id == 0 {
            p.push(("node.id", "must be 1 or more".into()));
        }
        match self.node.grpc.parse::<SocketAddr>() {
            Err(_) => p.push((
                "node.grpc",
                format!("{:?} is not an IP:port address", self.node.grpc),
            )),
            Ok(a) => {
                if !a.ip().is_loopback() && self.node.api_token_file.is_none() {
                    p.push((
                        "node.api_token_file",
                        format!(
                            "node.grpc {a} listens beyond loopback: set api_token_file so that \
                             only holders of the token can use the API"
                        ),
                    ))
                }
                if !a.ip().is_loopback() && !self.tls.is_set() && self.cluster.secret_file.is_none()
                {
                    p.push((
                        "cluster.secret_file",
                        format!(
                            "node.grpc {a} listens beyond loopback: set [tls] or \
                             cluster.secret_file so that only members of the herd reach Raft"
                        ),
                    ))
                }
            }
        }
        match self.node.http.parse::<SocketAddr>() {
            Err(_) => p.push((
                "node.http",
                format!("{:?} is not an IP:port address", self.node.http),
            )),
            Ok(a) if !a.ip().is_loopback() && self.node.api_token_file.is_none() => p.push((
                "node.api_token_file",
                format!(
                    "node.http {a} listens beyond loopback: set api_token_file so that only \
                     holders of the token can use the API"
                ),
            )),
            Ok(_) => {}
        }
        if self.node.data_dir.as_os_str().is_empty() {
            p.push(("node.data_dir", "must not be empty".into()));
        }
        let s = &self.ssh;
        for (key, d) in [
            ("ssh.connect_timeout", s.connect_timeout),
            ("ssh.command_timeout", s.command_timeout),
            ("ssh.keepalive_interval", s.keepalive_interval),
            ("ssh.reconnect_min", s.reconnect_min),
            ("ssh.reconnect_max", s.reconnect_max),
            ("store.flush_interval", self.store.flush_interval),
            ("store.retention", self.store.retention),
            ("store.resolved_retention", self.store.resolved_retention),
        ] {
            if d.get().is_zero() {
                p.push((key, "must be above 0".into()));
            }
        }
        if s.reconnect_min > s.reconnect_max {
            p.push((
                "ssh.reconnect_min",
                format!(
                    "{} is above ssh.reconnect_max {}",
                    s.reconnect_min, s.reconnect_max
                ),
            ));
        }
        if s.max_channels == 0 || s.max_channels > MAX_CHANNELS_LIMIT {
            p.push((
                "ssh.max_channels",
                format!(
                    "{} is outside 1..={MAX_CHANNELS_LIMIT} (OpenSSH's MaxSessions is 10)",
                    s.max_channels
                ),
            ));
        }
        if s.keepalive_max == 0 {
            p.push(("ssh.keepalive_max", "must be 1 or more".into()));
        }
        if !(2..=65_535).contains(&self.store.chunk_samples) {
            p.push((
                "store.chunk_samples",
                format!("{} is outside 2..=65535", self.store.chunk_samples),
            ));
        }
        if self.store.compact_min_mb > 1 << 30 {
            p.push((
                "store.compact_min_mb",
                format!("{} MiB is beyond 1 PiB", self.store.compact_min_mb),
            ));
        }
        if !(1..=65_536).contains(&self.store.cache_mb) {
            p.push((
                "store.cache_mb",
                format!("{} is outside 1..=65536 (MiB)", self.store.cache_mb),
            ));
        }
        let c = &self.cluster;
        for (key, d) in [
            ("cluster.heartbeat", c.heartbeat),
            ("cluster.beat_interval", c.beat_interval),
            ("cluster.lease", c.lease),
            ("cluster.failover_after", c.failover_after),
        ] {
            if d.get().as_millis() == 0 {
                p.push((key, "must be at least 1ms".into()));
            }
        }
        if c.election_min <= c.heartbeat {
            p.push((
                "cluster.election_min",
                format!(
                    "{} must be longer than cluster.heartbeat {}",
                    c.election_min, c.heartbeat
                ),
            ));
        }
        if c.election_min.get().as_millis() >= c.election_max.get().as_millis() {
            p.push((
                "cluster.election_min",
                format!(
                    "{} must be shorter than cluster.election_max {}",
                    c.election_min, c.election_max
                ),
            ));
        }
        if c.beat_interval >= c.lease {
            p.push((
                "cluster.beat_interval",
                format!(
                    "{} must be shorter than cluster.lease {}",
                    c.beat_interval, c.lease
                ),
            ));
        }
        if c.lease >= c.failover_after {
            p.push((
                "cluster.lease",
                format!(
                    "{} must be shorter than cluster.failover_after {}: a node cut off must stop \
                     before its targets move",
                    c.lease, c.failover_after
                ),
            ));
        }
        if c.watchers == 0 {
            p.push(("cluster.watchers", "must be 1 or more".into()));
        }
        if let Err(e) = crate::config::MachineSpec::parse(&c.machine) {
            p.push(("cluster.machine", e.to_string()));
        }
        for peer in &c.peers {
            let problem = match crate::model::net::split_host_port(peer) {
                Ok((_, Some(_))) => None,
                Ok((_, None)) => {
                    Some("not HOST:PORT (a node's node.grpc as the others reach it)".to_string())
                }
                Err(e) => Some(e.to_string()),
            };
            if let Some(e) = problem {
                p.push(("cluster.peers", format!("{peer:?}: {e}")));
            }
        }
        if !c.peers.is_empty() {
            if !self.tls.is_set() && c.secret_file.is_none() {
                p.push((
                    "cluster.secret_file",
                    "cluster.peers needs a credential the nodes share before the herd \
                     exists: set cluster.secret_file (the same file on every node) or [tls]"
                        .into(),
                ));
            }
            let n = self.herd_size();
            if c.bootstrap_expect > n {
                p.push((
                    "cluster.bootstrap_expect",
                    format!(
                        "{} is more than the {n} nodes cluster.peers names (this one included)",
                        c.bootstrap_expect
                    ),
                ));
            } else if c.bootstrap_expect != 0 && c.bootstrap_expect * 2 <= n {
                p.push((
                    "cluster.bootstrap_expect",
                    format!(
                        "{} is not more than half of the {n} nodes cluster.peers names: two \
                         herds could form",
                        c.bootstrap_expect
                    ),
                ));
            }
        } else if c.bootstrap_expect != 0 {
            p.push((
                "cluster.bootstrap_expect",
                "is only meaningful with cluster.peers".into(),
            ));
        }
        let t = &self.tls;
        let set = [t.ca.is_some(), t.cert.is_some(), t.key.is_some()];
        if set.iter().any(|x| *x) && !set.iter().all(|x| *x) {
            p.push((
                "tls",
                "set ca, cert and key together (or none of them)".into(),
            ));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            p.push((
                "log.level",
                format!("{:?} is not a tracing filter", self.log.level),
            ));
        }
        p
    }
}

impl NodeConfig {
    /// The nodes of a declarative herd: the peers listed, this node's node.grpc
    /// counted once.
    pub fn herd_size(&self) -> usize {
        let mut all: std::collections::BTreeSet<&str> =
            self.cluster.peers.iter().map(|p| p.trim()).collect();
        all.insert(self.node.grpc.as_str());
        all.len()
    }

    /// How many nodes a declarative herd waits for (`bootstrap_expect`, 0: all).
    pub fn bootstrap_expect(&self) -> usize {
        match self.cluster.bootstrap_expect {
            0 => self.herd_size(),
            n => n,
        }
    }
}

impl TlsSection {
    pub fn is_set(&self) -> bool {
        self.ca.is_some() || self.cert.is_some() || self.key.is_some()
    }
}

/// Checks the file alone, section by section, so that errors carry lines and
/// every section's first error is reported.
fn precheck(text: &str, source: &str) -> Result<(), ConfigErrors> {
    let err = |offset: Option<usize>, key: &str, message: &str| ConfigError {
        source: source.to_string(),
        line: offset.map(|o| line_of(text, o)),
        key: key.to_string(),
        message: message.to_string(),
    };
    let root = DeTable::parse(text)
        .map_err(|e| ConfigErrors(vec![err(e.span().map(|s| s.start), "", e.message())]))?;
    let mut errors = Vec::new();
    for (key, value) in root.get_ref() {
        let name: &str = key.get_ref().as_ref();
        let de = || ValueDeserializer::from(value.clone());
        let result = match name {
            "node" => NodeSection::deserialize(de()).map(drop),
            "ssh" => SshSection::deserialize(de()).map(drop),
            "store" => StoreSection::deserialize(de()).map(drop),
            "log" => LogSection::deserialize(de()).map(drop),
            "cluster" => ClusterSection::deserialize(de()).map(drop),
            "tls" => TlsSection::deserialize(de()).map(drop),
            _ => {
                errors.push(err(
                    Some(key.span().start),
                    name,
                    "unknown section; expected [node], [ssh], [store], [log], [cluster] or [tls]",
                ));
                continue;
            }
        };
        if let Err(e) = result {
            errors.push(err(
                Some(e.span().unwrap_or(value.span()).start),
                name,
                e.message(),
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn defaults_are_valid() {
        assert!(NodeConfig::default().validate().is_empty());
    }

    #[test]
    fn bad_file_names_every_section_with_lines() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        write!(
            f,
            "[node]\nid = 1\ngprc = \"x\"\n\n[ssh]\nconnect_timeout = \"soon\"\n[storage]\n"
        )
        .unwrap();
        let errs = NodeConfig::load(Some(f.path())).unwrap_err().to_string();
        assert!(errs.contains(":3: node: unknown field `gprc`"), "{errs}");
        assert!(errs.contains(":6: ssh:") && errs.contains("soon"), "{errs}");
        assert!(errs.contains(":7: storage: unknown section"), "{errs}");
    }

    #[test]
    fn relations_are_checked() {
        let mut c = NodeConfig::default();
        c.ssh.max_channels = 12;
        c.ssh.reconnect_min = HumanDuration::from_secs(100);
        c.node.grpc = "nowhere".into();
        c.store.cache_mb = 0;
        let keys: Vec<_> = c.validate().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "node.grpc",
                "ssh.reconnect_min",
                "ssh.max_channels",
                "store.cache_mb"
            ]
        );
    }

    #[test]
    fn api_beyond_loopback_needs_a_token_and_a_herd_credential() {
        let mut c = NodeConfig::default();
        c.node.grpc = "0.0.0.0:7401".into();
        let keys: Vec<_> = c.validate().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["node.api_token_file", "cluster.secret_file"]);
        c.node.api_token_file = Some("/etc/herd/token".into());
        c.cluster.secret_file = Some("/etc/herd/herd-secret".into());
        assert!(c.validate().is_empty());
        c.cluster.secret_file = None;
        c.tls.ca = Some("ca.pem".into());
        c.tls.cert = Some("node.pem".into());
        c.tls.key = Some("node.key".into());
        assert!(c.validate().is_empty());
    }

    #[test]
    fn http_beyond_loopback_needs_a_token() {
        let mut c = NodeConfig::default();
        c.node.http = "0.0.0.0:7481".into();
        let keys: Vec<_> = c.validate().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["node.api_token_file"]);
        c.node.api_token_file = Some("/etc/herd/token".into());
        assert!(c.validate().is_empty());
        // With [tls] the HTTP face speaks HTTPS: beyond loopback too.
        c.tls.ca = Some("ca.pem".into());
        c.tls.cert = Some("node.pem".into());
        c.tls.key = Some("node.key".into());
        assert!(c.validate().is_empty());
        c.node.api_token_file = None;
        let keys: Vec<_> = c.validate().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            ["node.api_token_file"],
            "TLS is no substitute for the token"
        );
    }

    #[test]
    fn declarative_membership_is_checked() {
        let mut c = NodeConfig::default();
        c.cluster.peers = vec![
            "127.0.0.1:7401".into(),
            "127.0.0.1:7402".into(),
            "nowhere".into(),
        ];
        c.cluster.bootstrap_expect = 1;
        let p = c.validate();
        let keys: Vec<_> = p.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            keys,
            [
                "cluster.peers",
                "cluster.secret_file",
                "cluster.bootstrap_expect"
            ],
            "{p:?}"
        );
        assert!(p[2].1.contains("half"), "{p:?}");
        c.cluster.peers.pop();
        c.cluster.secret_file = Some("s".into());
        c.cluster.bootstrap_expect = 0;
        assert!(c.validate().is_empty());
        // node.grpc is among the peers: two nodes, both awaited.
        assert_eq!(c.bootstrap_expect(), 2);
        c.cluster.peers.push("127.0.0.1:7403".into());
        c.cluster.bootstrap_expect = 2;
        assert!(c.validate().is_empty());
        assert_eq!(c.herd_size(), 3);
        c.cluster.bootstrap_expect = 4;
        assert!(c.validate()[0].1.contains("more than the 3"));
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    /// The shipped example must stay loadable: every key it documents is real.
    #[test]
    fn shipped_example_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/herd.toml.example");
        let cfg = NodeConfig::load(Some(&path)).unwrap();
        assert_eq!(
            cfg,
            NodeConfig::default(),
            "the example documents the defaults"
        );
    }
}
