//! The `ssh` transport: one persistent russh session per target, an exec channel per
//! command, at most `max_channels` at once. Host keys are checked against
//! known_hosts (plain, hashed and `[host]:port` entries); a changed key is refused.
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::{self, Handle};
use russh::keys::agent::client::AgentClient;
use russh::keys::PublicKeyOrCertificate;
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey};
use russh::ChannelMsg;
use tokio::sync::Semaphore;

use super::{Endpoint, ExecOutput, TransportError, TunnelError, MAX_STDERR_BYTES};
use crate::config::HostKeyChecking;

/// Node-wide SSH settings, from `[ssh]` in herd.toml.
#[derive(Debug, Clone)]
pub struct SshSettings {
    pub known_hosts: PathBuf,
    pub host_key_checking: HostKeyChecking,
    pub connect_timeout: Duration,
    pub keepalive_interval: Duration,
    pub keepalive_max: usize,
    pub max_channels: usize,
    /// Run commands in a long-lived shell per target (falling back to an exec
    /// channel per command where the account refuses one).
    pub shell: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SshAuth {
    KeyFile(PathBuf),
    /// Keys held by the ssh-agent at `SSH_AUTH_SOCK`.
    Agent,
}

/// Where and as whom to log in.
#[derive(Debug, Clone)]
pub struct SshTarget {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub auth: SshAuth,
}

impl SshTarget {
    fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// What the host key check concluded; read after a refused handshake.
#[derive(Debug, Clone)]
enum Verdict {
    Known,
    Learned(String),
    Unknown(String),
    Changed { fingerprint: String, line: usize },
    Failed(String),
}

struct Client {
    host: String,
    port: u16,
    known_hosts: PathBuf,
    checking: HostKeyChecking,
    verdict: Arc<Mutex<Option<Verdict>>>,
}

impl Client {
    /// Checks `key` against known_hosts (learning it with accept-new) on a blocking
    /// thread: the file is read (and written) off the async workers.
    async fn check(&self, key: &PublicKey) -> Verdict {
        let me = Client {
            host: self.host.clone(),
            port: self.port,
            known_hosts: self.known_hosts.clone(),
            checking: self.checking,
            verdict: self.verdict.clone(),
        };
        let key = key.clone();
        tokio::task::spawn_blocking(move || me.decide(&key))
            .await
            .unwrap_or_else(|e| Verdict::Failed(format!("host key check failed: {e}")))
    }

    fn decide(&self, key: &PublicKey) -> Verdict {
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        match russh::keys::check_known_hosts_path(&self.host, self.port, key, &self.known_hosts) {
            Ok(true) => Verdict::Known,
            Ok(false) if self.checking == HostKeyChecking::AcceptNew => {
                // A host known by another key (of another type) presenting a key
                // not recorded is what an impostor without the recorded key looks
                // like: accept-new learns keys of unknown hosts only.
                let recorded = russh::keys::known_hosts::known_host_keys_path(
                    &self.host,
                    self.port,
                    &self.known_hosts,
                )
                .unwrap_or_default();
                if let Some((line, _)) = recorded.first() {
                    return Verdict::Changed {
                        fingerprint,
                        line: *line,
                    };
                }
                match russh::keys::known_hosts::learn_known_hosts_path(
                    &self.host,
                    self.port,
                    key,
                    &self.known_hosts,
                ) {
                    Ok(()) => Verdict::Learned(fingerprint),
                    Err(e) => Verdict::Failed(format!(
                        "cannot record host key in {}: {e}",
                        self.known_hosts.display()
                    )),
                }
            }
            Ok(false) => Verdict::Unknown(fingerprint),
            Err(russh::keys::Error::KeyChanged { line }) => Verdict::Changed { fingerprint, line },
            Err(e) => Verdict::Failed(format!("cannot check {}: {e}", self.known_hosts.display())),
        }
    }
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let verdict = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => self.check(key).await,
            PublicKeyOrCertificate::Certificate(_) => {
                Verdict::Failed("host certificates are not supported; list the host key".into())
            }
        };
        let accept = matches!(verdict, Verdict::Known | Verdict::Learned(_));
        if let Ok(mut v) = self.verdict.lock() {
            *v = Some(verdict);
        }
        Ok(accept)
    }
}

/// What every SSH transport of this process has done: for `/metrics`.
#[derive(Debug, Default)]
pub struct SshCounters {
    /// Sessions set up (the first of a target and every one after it).
    pub connects: AtomicU64,
    /// Sessions set up by a transport that had one before (it broke or was closed).
    pub reconnects: AtomicU64,
    /// Connections that failed (refused, timed out, authentication, host key).
    pub connect_failures: AtomicU64,
    /// Sessions held now.
    pub open: AtomicU64,
}

/// The counters of this process's SSH transports.
pub static SSH_COUNTERS: SshCounters = SshCounters {
    connects: AtomicU64::new(0),
    reconnects: AtomicU64::new(0),
    connect_failures: AtomicU64::new(0),
    open: AtomicU64::new(0),
};

/// The transport of one target.
pub struct SshTransport {
    target: SshTarget,
    settings: Arc<SshSettings>,
    /// The session held (counted in [`SSH_COUNTERS`]`.open` while it is here).
    session: tokio::sync::Mutex<Option<Arc<Handle<Client>>>>,
    /// Whether this transport ever had a session (its next one is a reconnect).
    connected_before: AtomicBool,
    channels: Semaphore,
    /// A host key recorded by accept-new during the last connect, to report once.
    learned: Mutex<Option<String>>,
    /// The long-lived shell, when open (see `transport::shell`).
    shell: tokio::sync::Mutex<Option<super::shell::Shell>>,
    /// Why this target's account gives no plain shell: exec channels for good.
    shell_refused: Mutex<Option<String>>,
}

impl Drop for SshTransport {
    fn drop(&mut self) {
        if self.session.get_mut().take().is_some() {
            SSH_COUNTERS.open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl SshTransport {
    pub fn new(target: SshTarget, settings: Arc<SshSettings>) -> Self {
        let channels = Semaphore::new(settings.max_channels);
        SshTransport {
            target,
            settings,
            session: tokio::sync::Mutex::new(None),
            connected_before: AtomicBool::new(false),
            channels,
            learned: Mutex::new(None),
            shell: tokio::sync::Mutex::new(None),
            shell_refused: Mutex::new(None),
        }
    }

    /// How this target's commands run: `shell`, or `exec` with why.
    pub fn mode(&self) -> String {
        if !self.settings.shell {
            return "exec".into();
        }
        match self.shell_refused.lock().ok().and_then(|r| r.clone()) {
            Some(why) => format!("exec ({why})"),
            None => "shell".into(),
        }
    }

    /// Runs `command` in the long-lived shell; None when it is busy or refused
    /// (then an exec channel runs it).
    async fn exec_in_shell(
        &self,
        handle: &Handle<Client>,
        script: super::Script<'_>,
        timeout: Duration,
        max_output: usize,
    ) -> Option<Result<ExecOutput, TransportError>> {
        if !self.settings.shell || self.shell_refused.lock().ok()?.is_some() {
            return None;
        }
        let mut slot = self.shell.try_lock().ok()?;
        if slot.is_none() {
            match super::shell::Shell::open(handle, &self.target.addr()).await {
                Ok(s) => *slot = Some(s),
                Err(super::shell::ShellError::Refused(why)) => {
                    tracing::warn!(target_addr = %self.target.addr(), reason = %why, "no long-lived shell on this target: an exec channel per command");
                    if let Ok(mut r) = self.shell_refused.lock() {
                        *r = Some(why);
                    }
                    return None;
                }
                Err(super::shell::ShellError::Failed(e)) => return Some(Err(e)),
            }
        }
        let shell = slot.as_mut()?;
        let result = shell.run(script, timeout, max_output).await;
        if result.is_err() {
            // Closed by `run`: the next command opens a new one.
            *slot = None;
        }
        Some(result)
    }

    /// The fingerprint of a host key learned (accept-new) since the last call.
    pub fn take_learned_key(&self) -> Option<String> {
        self.learned.lock().ok().and_then(|mut l| l.take())
    }

    pub async fn exec(
        &self,
        command: &str,
        timeout: Duration,
        max_output: usize,
    ) -> Result<ExecOutput, TransportError> {
        self.run_script(command.into(), timeout, max_output).await
    }

    /// Runs `script`: in the long-lived shell (its inline form there, when it has
    /// one), else its standalone form on an exec channel.
    pub async fn run_script(
        &self,
        script: super::Script<'_>,
        timeout: Duration,
        max_output: usize,
    ) -> Result<ExecOutput, TransportError> {
        let command = script.standalone;
        let handle = self.session().await?;
        if let Some(result) = self
            .exec_in_shell(&handle, script, timeout, max_output)
            .await
        {
            if let Err(TransportError::SessionBroken { .. }) = &result {
                self.disconnect().await;
            }
            return result;
        }
        let _permit = self
            .channels
            .acquire()
            .await
            .map_err(|_| TransportError::Setup("transport closed".into()))?;
        let result = run_channel(&handle, command, timeout, max_output, &self.target).await;
        if let Err(TransportError::SessionBroken { .. }) = &result {
            self.disconnect().await;
        }
        result
    }

    /// Runs `command` in an exec channel of its own (never the long-lived shell),
    /// with `input` on its stdin: how `herd deploy` copies files.
    pub async fn exec_with_input(
        &self,
        command: &str,
        input: &[u8],
        timeout: Duration,
        max_output: usize,
    ) -> Result<ExecOutput, TransportError> {
        let handle = self.session().await?;
        let _permit = self
            .channels
            .acquire()
            .await
            .map_err(|_| TransportError::Setup("transport closed".into()))?;
        let result = run_channel_with(
            &handle,
            command,
            Some(input),
            timeout,
            max_output,
            &self.target,
        )
        .await;
        if let Err(TransportError::SessionBroken { .. }) = &result {
            self.disconnect().await;
        }
        result
    }

    /// Opens a TCP or unix-socket tunnel from the target (direct-tcpip or
    /// direct-streamlocal on the session: nothing runs on the target). sshd allows
    /// both by default (AllowTcpForwarding, AllowStreamLocalForwarding).
    pub async fn tunnel(&self, to: &Endpoint) -> Result<super::Stream, TunnelError> {
        let handle = self.session().await.map_err(TunnelError::Transport)?;
        let opened = match to {
            Endpoint::Tcp(host, port) => {
                handle
                    .channel_open_direct_tcpip(host.as_str(), u32::from(*port), "127.0.0.1", 0)
                    .await
            }
            Endpoint::Unix(path) => handle.channel_open_direct_streamlocal(path.as_str()).await,
        };
        match opened {
            Ok(channel) => Ok(Box::new(channel.into_stream())),
            Err(russh::Error::ChannelOpenFailure(f)) => Err(match f {
                russh::ChannelOpenFailure::AdministrativelyProhibited => TunnelError::Prohibited(
                    format!("the target's sshd does not allow forwarding to {to}"),
                ),
                russh::ChannelOpenFailure::ConnectFailed => TunnelError::Refused(format!(
                    "{to}: refused or unreachable as seen from the target"
                )),
                russh::ChannelOpenFailure::Other { reason, .. } if !reason.is_empty() => {
                    TunnelError::Refused(format!("{to}: {reason} (from the target)"))
                }
                other => TunnelError::Refused(format!("{to}: {other:?} (from the target)")),
            }),
            Err(e) => {
                self.disconnect().await;
                Err(TunnelError::Transport(TransportError::SessionBroken {
                    addr: self.target.addr(),
                    message: e.to_string(),
                }))
            }
        }
    }

    pub async fn disconnect(&self) {
        if let Ok(mut slot) = self.shell.try_lock() {
            if let Some(mut s) = slot.take() {
                s.close().await;
            }
        }
        let old = self.session.lock().await.take();
        if let Some(handle) = old {
            SSH_COUNTERS.open.fetch_sub(1, Ordering::Relaxed);
            let _ = handle
                .disconnect(russh::Disconnect::ByApplication, "herd closing", "en")
                .await;
        }
    }

    async fn session(&self) -> Result<Arc<Handle<Client>>, TransportError> {
        let mut guard = self.session.lock().await;
        if let Some(h) = guard.as_ref() {
            if !h.is_closed() {
                return Ok(h.clone());
            }
        }
        if guard.take().is_some() {
            SSH_COUNTERS.open.fetch_sub(1, Ordering::Relaxed);
        }
        let handle = match self.connect().await {
            Ok(h) => Arc::new(h),
            Err(e) => {
                SSH_COUNTERS
                    .connect_failures
                    .fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        };
        // A shell of the session before is gone with it.
        if let Ok(mut shell) = self.shell.try_lock() {
            *shell = None;
        }
        SSH_COUNTERS.connects.fetch_add(1, Ordering::Relaxed);
        SSH_COUNTERS.open.fetch_add(1, Ordering::Relaxed);
        if self.connected_before.swap(true, Ordering::Relaxed) {
            SSH_COUNTERS.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        *guard = Some(handle.clone());
        Ok(handle)
    }

    async fn connect(&self) -> Result<Handle<Client>, TransportError> {
        let t = &self.target;
        let addr = t.addr();
        let verdict = Arc::new(Mutex::new(None));
        let client = Client {
            host: t.host.clone(),
            port: t.port,
            known_hosts: self.settings.known_hosts.clone(),
            checking: self.settings.host_key_checking,
            verdict: verdict.clone(),
        };
        let preferred = {
            let (host, port, known_hosts) =
                (t.host.clone(), t.port, self.settings.known_hosts.clone());
            tokio::task::spawn_blocking(move || preferred_for(&host, port, &known_hosts))
                .await
                .unwrap_or_default()
        };
        let config = Arc::new(client::Config {
            preferred,
            keepalive_interval: Some(self.settings.keepalive_interval),
            keepalive_max: self.settings.keepalive_max,
            // Quiet sessions are normal between scrapes; keepalives find dead ones.
            inactivity_timeout: None,
            nodelay: true,
            ..Default::default()
        });
        let after = self.settings.connect_timeout;
        let connecting = async {
            let mut handle = client::connect(config, (t.host.as_str(), t.port), client)
                .await
                .map_err(|e| connect_error(&addr, e, &verdict, &self.settings))?;
            self.authenticate(&mut handle, &addr).await?;
            Ok::<_, TransportError>(handle)
        };
        let handle = match tokio::time::timeout(after, connecting).await {
            Ok(r) => r?,
            Err(_) => return Err(TransportError::ConnectTimeout { addr, after }),
        };
        if let Some(Verdict::Learned(fp)) = verdict.lock().ok().and_then(|v| v.clone()) {
            if let Ok(mut l) = self.learned.lock() {
                *l = Some(fp);
            }
        }
        Ok(handle)
    }

    async fn authenticate(
        &self,
        handle: &mut Handle<Client>,
        addr: &str,
    ) -> Result<(), TransportError> {
        let user = self.target.user.clone();
        let failed = |message: String| TransportError::AuthFailed {
            addr: addr.to_string(),
            user: user.clone(),
            message,
        };
        let rsa_hash = handle
            .best_supported_rsa_hash()
            .await
            .ok()
            .flatten()
            .flatten();
        match &self.target.auth {
            SshAuth::KeyFile(path) => {
                let file = path.clone();
                let key: PrivateKey =
                    tokio::task::spawn_blocking(move || russh::keys::load_secret_key(file, None))
                        .await
                        .map_err(|e| failed(format!("cannot load key {}: {e}", path.display())))?
                        .map_err(|e| failed(format!("cannot load key {}: {e}", path.display())))?;
                let key = PrivateKeyWithHashAlg::new(Arc::new(key), rsa_hash);
                let result = handle
                    .authenticate_publickey(user.clone(), key)
                    .await
                    .map_err(|e| failed(e.to_string()))?;
                if result.success() {
                    Ok(())
                } else {
                    Err(failed(format!("key {} was not accepted", path.display())))
                }
            }
            SshAuth::Agent => {
                let mut agent = AgentClient::connect_env()
                    .await
                    .map_err(|e| failed(format!("no ssh-agent (SSH_AUTH_SOCK): {e}")))?;
                let identities = agent
                    .request_identities()
                    .await
                    .map_err(|e| failed(format!("ssh-agent: {e}")))?;
                for id in identities {
                    let russh::keys::agent::AgentIdentity::PublicKey { key, .. } = id else {
                        continue;
                    };
                    let hash = if key.algorithm().is_rsa() {
                        rsa_hash
                    } else {
                        None
                    };
                    match handle
                        .authenticate_publickey_with(user.clone(), key, hash, &mut agent)
                        .await
                    {
                        Ok(r) if r.success() => return Ok(()),
                        Ok(_) => continue,
                        Err(e) => return Err(failed(format!("ssh-agent: {e}"))),
                    }
                }
                Err(failed("no key of the ssh-agent was accepted".into()))
            }
        }
    }
}

/// Host key algorithms to ask for, the ones recorded in known_hosts for this host
/// first (as OpenSSH does): a host recorded with only its ECDSA key must be offered
/// ECDSA, or its ed25519 key would look unknown and strict checking would refuse it.
fn preferred_for(host: &str, port: u16, known_hosts: &std::path::Path) -> russh::Preferred {
    use russh::keys::Algorithm;
    let default = russh::Preferred::default();
    let recorded =
        russh::keys::known_hosts::known_host_keys_path(host, port, known_hosts).unwrap_or_default();
    if recorded.is_empty() {
        return default;
    }
    let mut first: Vec<Algorithm> = Vec::new();
    for (_, key) in &recorded {
        let alg = key.algorithm();
        let variants = if key.algorithm().is_rsa() {
            vec![
                Algorithm::Rsa {
                    hash: Some(HashAlg::Sha512),
                },
                Algorithm::Rsa {
                    hash: Some(HashAlg::Sha256),
                },
            ]
        } else {
            vec![alg]
        };
        for v in variants {
            if !first.contains(&v) {
                first.push(v);
            }
        }
    }
    let rest = default.key.iter().filter(|a| !first.contains(a)).cloned();
    let key: Vec<Algorithm> = first.iter().cloned().chain(rest).collect();
    russh::Preferred {
        key: key.into(),
        ..default
    }
}

fn connect_error(
    addr: &str,
    e: russh::Error,
    verdict: &Mutex<Option<Verdict>>,
    settings: &SshSettings,
) -> TransportError {
    let verdict = verdict.lock().ok().and_then(|v| v.clone());
    match (verdict, e) {
        (Some(Verdict::Changed { fingerprint, line }), _) => TransportError::HostKeyChanged {
            addr: addr.into(),
            fingerprint,
            line,
        },
        (Some(Verdict::Unknown(fingerprint)), _) => TransportError::HostKeyUnknown {
            addr: addr.into(),
            fingerprint,
            known_hosts: settings.known_hosts.display().to_string(),
        },
        (Some(Verdict::Failed(message)), _) => TransportError::Setup(message),
        (_, russh::Error::IO(io)) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            TransportError::Refused { addr: addr.into() }
        }
        (_, russh::Error::IO(io)) => TransportError::Unreachable {
            addr: addr.into(),
            message: io.to_string(),
        },
        (_, other) => TransportError::SessionBroken {
            addr: addr.into(),
            message: other.to_string(),
        },
    }
}

/// Opens a channel, runs the command and reads it to its end. The channel is closed
/// on every way out (dropping it does not send CHANNEL_CLOSE and would leak one of
/// sshd's MaxSessions slots).
async fn run_channel(
    handle: &Handle<Client>,
    command: &str,
    timeout: Duration,
    max_output: usize,
    target: &SshTarget,
) -> Result<ExecOutput, TransportError> {
    run_channel_with(handle, command, None, timeout, max_output, target).await
}

/// [`run_channel`], with `input` written to the command's stdin (then EOF).
async fn run_channel_with(
    handle: &Handle<Client>,
    command: &str,
    input: Option<&[u8]>,
    timeout: Duration,
    max_output: usize,
    target: &SshTarget,
) -> Result<ExecOutput, TransportError> {
    let broken = |message: String| TransportError::SessionBroken {
        addr: target.addr(),
        message,
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let mut channel = match tokio::time::timeout_at(deadline, handle.channel_open_session()).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(broken(format!("cannot open a channel: {e}"))),
        Err(_) => return Err(TransportError::CommandTimeout { after: timeout }),
    };
    if let Err(e) = channel.exec(true, command).await {
        let _ = channel.close().await;
        return Err(broken(format!("exec refused: {e}")));
    }
    if let Some(input) = input {
        let sent = async {
            channel.data(input).await?;
            channel.eof().await
        };
        match tokio::time::timeout_at(deadline, sent).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = channel.close().await;
                return Err(broken(format!("cannot write the command's input: {e}")));
            }
            Err(_) => {
                let _ = channel.close().await;
                return Err(TransportError::CommandTimeout { after: timeout });
            }
        }
    }
    let mut out = ExecOutput::default();
    loop {
        let msg = match tokio::time::timeout_at(deadline, channel.wait()).await {
            Ok(m) => m,
            Err(_) => {
                let _ = channel.close().await;
                return Err(TransportError::CommandTimeout { after: timeout });
            }
        };
        match msg {
            Some(ChannelMsg::Data { data }) => {
                if out.stdout.len() + data.len() > max_output {
                    let _ = channel.close().await;
                    return Err(TransportError::OutputTooLarge { limit: max_output });
                }
                out.stdout.extend_from_slice(&data);
            }
            Some(ChannelMsg::ExtendedData { data, .. }) => {
                let room = MAX_STDERR_BYTES.saturating_sub(out.stderr.len());
                out.stderr.extend_from_slice(&data[..data.len().min(room)]);
            }
            Some(ChannelMsg::ExitStatus { exit_status }) => out.exit_status = Some(exit_status),
            Some(ChannelMsg::Failure) => {
                let _ = channel.close().await;
                return Err(broken("the server refused to run the command".into()));
            }
            Some(ChannelMsg::Close) | None => break,
            Some(_) => {}
        }
    }
    Ok(out)
}
