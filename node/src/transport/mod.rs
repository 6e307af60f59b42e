//! How a command reaches a target: `ssh` (one persistent russh session per target,
//! an exec channel per command) or `local` (a `sh -c` on the node's own host).
pub mod http;
mod local;
mod shell;
mod ssh;

use std::time::Duration;

pub use local::LocalTransport;
pub use ssh::{SshAuth, SshSettings, SshTarget, SshTransport, SSH_COUNTERS};

/// A command for the target, with an optional form that runs in the target's
/// long-lived shell itself, without the subshell each command gets there (a fork
/// of the target's shell saved per scrape). The inline form must leave the shell
/// as it found it — no `exit`, `exec`, `cd` or variable it relies on — and send
/// its own stderr where it wants it; only Herd's own fixed commands have one.
/// Where no long-lived shell runs it (an exec channel, the local transport), the
/// standalone form runs.
#[derive(Debug, Clone, Copy)]
pub struct Script<'a> {
    pub standalone: &'a str,
    pub inline: Option<&'a str>,
}

impl<'a> From<&'a str> for Script<'a> {
    fn from(command: &'a str) -> Script<'a> {
        Script {
            standalone: command,
            inline: None,
        }
    }
}

/// What a command printed and how it ended.
#[derive(Debug, Clone, Default)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    /// The first `MAX_STDERR_BYTES` of stderr, for error messages.
    pub stderr: Vec<u8>,
    /// Exit status; None when the command ended by a signal or did not say.
    pub exit_status: Option<u32>,
}

/// Stderr kept per command: enough for a message, never a memory risk.
pub const MAX_STDERR_BYTES: usize = 16 * 1024;

/// Why a command did not run to completion. `reason()` is the stable short word that
/// events and `herd status` show.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    #[error("connection refused by {addr}")]
    Refused { addr: String },
    #[error("no answer from {addr} within {after:?}")]
    ConnectTimeout { addr: String, after: Duration },
    #[error("cannot resolve or reach {addr}: {message}")]
    Unreachable { addr: String, message: String },
    #[error("authentication as {user} failed on {addr}: {message}")]
    AuthFailed {
        addr: String,
        user: String,
        message: String,
    },
    #[error(
        "host key of {addr} changed ({fingerprint}, known_hosts line {line}); refusing to connect"
    )]
    HostKeyChanged {
        addr: String,
        fingerprint: String,
        line: usize,
    },
    #[error("host key of {addr} ({fingerprint}) is not in {known_hosts} and host_key_checking is strict")]
    HostKeyUnknown {
        addr: String,
        fingerprint: String,
        known_hosts: String,
    },
    #[error("ssh session to {addr} broke: {message}")]
    SessionBroken { addr: String, message: String },
    #[error("command did not finish within {after:?}; its channel was closed")]
    CommandTimeout { after: Duration },
    #[error("command printed more than {limit} bytes; its channel was closed")]
    OutputTooLarge { limit: usize },
    #[error("{0}")]
    Setup(String),
}

impl TransportError {
    /// A stable word for the failure: refused, timeout, unreachable, auth_failed,
    /// host_key_changed, host_key_unknown, session_broken, command_timeout,
    /// output_too_large, setup.
    pub fn reason(&self) -> &'static str {
        match self {
            TransportError::Refused { .. } => "refused",
            TransportError::ConnectTimeout { .. } => "timeout",
            TransportError::Unreachable { .. } => "unreachable",
            TransportError::AuthFailed { .. } => "auth_failed",
            TransportError::HostKeyChanged { .. } => "host_key_changed",
            TransportError::HostKeyUnknown { .. } => "host_key_unknown",
            TransportError::SessionBroken { .. } => "session_broken",
            TransportError::CommandTimeout { .. } => "command_timeout",
            TransportError::OutputTooLarge { .. } => "output_too_large",
            TransportError::Setup(_) => "setup",
        }
    }

    /// True when the target itself cannot be reached (the target is down), false
    /// when the session is fine and only this command failed.
    pub fn is_unreachable(&self) -> bool {
        !matches!(
            self,
            TransportError::CommandTimeout { .. } | TransportError::OutputTooLarge { .. }
        )
    }
}

/// A byte stream to a service: a TCP or unix connection, or an SSH tunnel.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}
pub type Stream = Box<dyn Io>;

/// Where a tunnel leads, as seen from the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Tcp(String, u16),
    Unix(String),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp(h, p) if h.contains(':') => write!(f, "[{h}]:{p}"),
            Endpoint::Tcp(h, p) => write!(f, "{h}:{p}"),
            Endpoint::Unix(path) => write!(f, "unix:{path}"),
        }
    }
}

/// Why a tunnel could not be opened.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TunnelError {
    /// The target itself could not be reached.
    #[error(transparent)]
    Transport(TransportError),
    /// The target's sshd refused to forward (configuration).
    #[error("{0}")]
    Prohibited(String),
    /// Nothing accepted the connection at the far end.
    #[error("connection refused: {0}")]
    Refused(String),
}

/// A target's transport.
pub enum Transport {
    Ssh(Box<SshTransport>),
    Local(LocalTransport),
}

impl Transport {
    /// Runs `command` under `sh` on the target; the whole run is bounded by `timeout`
    /// and the output by `max_output` bytes.
    pub async fn exec(
        &self,
        command: &str,
        timeout: Duration,
        max_output: usize,
    ) -> Result<ExecOutput, TransportError> {
        self.run_script(command.into(), timeout, max_output).await
    }

    /// [`Transport::exec`] of a [`Script`]: its inline form in a long-lived shell.
    pub async fn run_script(
        &self,
        script: Script<'_>,
        timeout: Duration,
        max_output: usize,
    ) -> Result<ExecOutput, TransportError> {
        match self {
            Transport::Ssh(t) => t.run_script(script, timeout, max_output).await,
            Transport::Local(t) => t.exec(script.standalone, timeout, max_output).await,
        }
    }

    /// Opens a connection to `to` as seen from the target: a tunnel on the SSH
    /// session, or a direct connection for the local transport.
    pub async fn connect(&self, to: &Endpoint, timeout: Duration) -> Result<Stream, TunnelError> {
        let connecting = async {
            match self {
                Transport::Ssh(t) => t.tunnel(to).await,
                Transport::Local(_) => connect_direct(to).await,
            }
        };
        match tokio::time::timeout(timeout, connecting).await {
            Ok(r) => r,
            Err(_) => Err(TunnelError::Refused(format!(
                "{to}: no answer within {timeout:?}"
            ))),
        }
    }

    /// Drops the session (if any) so that the next command reconnects.
    pub async fn reset(&self) {
        if let Transport::Ssh(t) = self {
            t.disconnect().await;
        }
    }

    /// Ends the session politely.
    pub async fn close(&self) {
        self.reset().await;
    }
}

/// A direct connection from this host.
pub async fn connect_direct(to: &Endpoint) -> Result<Stream, TunnelError> {
    match to {
        Endpoint::Tcp(host, port) => tokio::net::TcpStream::connect((host.as_str(), *port))
            .await
            .map(|s| {
                let _ = s.set_nodelay(true);
                Box::new(s) as Stream
            })
            .map_err(|e| TunnelError::Refused(format!("{to}: {e}"))),
        Endpoint::Unix(path) => tokio::net::UnixStream::connect(path)
            .await
            .map(|s| Box::new(s) as Stream)
            .map_err(|e| TunnelError::Refused(format!("{to}: {e}"))),
    }
}

/// The transport of each running target, so that remediation actions run over the
/// target's own SSH session.
pub type Transports = std::sync::Arc<
    std::sync::RwLock<std::collections::BTreeMap<String, std::sync::Arc<Transport>>>,
>;
