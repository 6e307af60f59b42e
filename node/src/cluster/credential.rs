//! The herd's credential: what every call between the nodes of a herd carries, and
//! what a node checks before it lets a call reach Raft, the liveness table or a
//! forwarded write.
//!
//! - With `[tls]`, the caller's node certificate of the herd's CA (checked by the
//!   TLS handshake and [`crate::tls::require_peer_cert`]); it names the caller's node
//!   id, so a node cannot speak as another (see [`crate::tls::PeerCert`]).
//! - A herd secret that every member holds, sent as `x-herd-secret` and compared in
//!   constant time: `cluster.secret_file` (the same file on every node, needed for
//!   declarative membership), or else one that `cluster init` makes and `cluster
//!   join` hands to the new node, kept in `data_dir/herd-secret` (0600). Without TLS
//!   the secret crosses the network in clear: it keeps out whoever does not hold it,
//!   but it does not hide the traffic; beyond a trusted network use `[tls]`.
//! - No credential, no call: a node with neither (in no herd yet) refuses every call
//!   of the Raft service.
//! - The herd id (`x-herd-id`), made once when a herd is initialised: a call from a
//!   node of another herd is refused even when the credential fits (two herds made
//!   from one template share a secret file), and both ends report it.
use std::collections::VecDeque;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tonic::metadata::MetadataValue;
use tonic::{Request, Status};

use super::types::NodeId;

/// gRPC metadata keys of the credential.
pub const SECRET_HEADER: &str = "x-herd-secret";
pub const HERD_ID_HEADER: &str = "x-herd-id";
pub const NODE_HEADER: &str = "x-herd-node";

/// The file in the data dir that keeps a secret made by `cluster init` or received
/// on join.
pub const STORED_SECRET_FILE: &str = "herd-secret";

/// A secret shorter than this is refused (a generated one has 64 characters).
pub const MIN_SECRET_LEN: usize = 16;

/// Random bytes of a generated secret and of a herd id.
const SECRET_BYTES: usize = 32;
const HERD_ID_BYTES: usize = 8;

/// Refusals kept for `herd status`.
const REFUSALS_KEPT: usize = 8;
/// The same refusal is logged at most this often.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// A herd secret that is not fit to be one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretProblem {
    #[error("the herd secret must be one word of printable ASCII")]
    NotPrintable,
    #[error(
        "the herd secret has {len} characters; at least {MIN_SECRET_LEN} are needed \
         (make one with `herd certs` or `openssl rand -hex 32`)"
    )]
    TooShort { len: usize },
}

/// Why the herd's credential cannot be read or taken. `key` names the setting
/// (`cluster.secret_file`) or the file's role (`herd secret`).
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("{key}: cannot read {}: {source}", .path.display())]
    Read {
        key: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{key}: {}: {problem}", .path.display())]
    BadFile {
        key: String,
        path: PathBuf,
        problem: SecretProblem,
    },
    /// The secret a herd gave on join.
    #[error(transparent)]
    BadSecret(#[from] SecretProblem),
    #[error(
        "the herd gave no secret and this node has neither [tls] nor \
         cluster.secret_file: set the herd's cluster.secret_file here"
    )]
    NoneGiven,
    #[error(
        "the herd's secret differs from this node's cluster.secret_file: \
         give every node the same file"
    )]
    Differs,
    #[error("cannot write {}: {source}", .path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Reads a secret file: the whole file, trimmed; printable ASCII of at least
/// [`MIN_SECRET_LEN`] characters. `key` names the setting in errors.
pub fn read_secret(key: &str, path: &Path) -> Result<String, CredentialError> {
    let text = std::fs::read_to_string(path).map_err(|source| CredentialError::Read {
        key: key.to_string(),
        path: path.to_path_buf(),
        source,
    })?;
    check_secret(&text)
        .map(str::to_string)
        .map_err(|problem| CredentialError::BadFile {
            key: key.to_string(),
            path: path.to_path_buf(),
            problem,
        })
}

fn check_secret(text: &str) -> Result<&str, SecretProblem> {
    let s = text.trim();
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(SecretProblem::NotPrintable);
    }
    if s.len() < MIN_SECRET_LEN {
        return Err(SecretProblem::TooShort { len: s.len() });
    }
    Ok(s)
}

/// Lowercase hex of `n` random bytes.
pub fn random_hex(n: usize) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(2 * n);
    for _ in 0..n {
        let _ = write!(out, "{:02x}", rand::random::<u8>());
    }
    out
}

/// A new herd secret.
pub fn new_secret() -> String {
    random_hex(SECRET_BYTES)
}

/// A new herd id.
pub fn new_herd_id() -> String {
    random_hex(HERD_ID_BYTES)
}

/// Writes `text` to `path` with mode 0600, atomically (a temporary name, then rename).
pub fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// This node's credential towards the herd, and the herd id it knows.
#[derive(Debug)]
pub struct Credential {
    me: NodeId,
    /// With TLS, a caller's node certificate is a credential.
    tls: bool,
    /// The secret comes from `cluster.secret_file`: never replaced by another.
    configured: bool,
    /// Where a made or received secret is kept.
    stored_at: PathBuf,
    secret: RwLock<Option<Arc<str>>>,
    herd_id: RwLock<Option<String>>,
    refusals: Mutex<VecDeque<Refusal>>,
}

#[derive(Debug, Clone)]
struct Refusal {
    at: Instant,
    text: String,
}

impl Credential {
    /// The credential of node `me`: `secret_file` when set, else a secret kept in
    /// `data_dir` from an earlier init or join. File errors name the key and file
    /// (a [`CredentialError`] as text: the cluster's start reports it as config).
    pub fn load(
        me: NodeId,
        tls: bool,
        secret_file: Option<&Path>,
        data_dir: &Path,
    ) -> Result<Arc<Credential>, String> {
        let stored_at = data_dir.join(STORED_SECRET_FILE);
        let secret = match secret_file {
            Some(path) => {
                Some(read_secret("cluster.secret_file", path).map_err(|e| e.to_string())?)
            }
            None if stored_at.exists() => {
                Some(read_secret("herd secret", &stored_at).map_err(|e| e.to_string())?)
            }
            None => None,
        };
        Ok(Arc::new(Credential {
            me,
            tls,
            configured: secret_file.is_some(),
            stored_at,
            secret: RwLock::new(secret.map(Arc::from)),
            herd_id: RwLock::new(None),
            refusals: Mutex::new(VecDeque::new()),
        }))
    }

    /// A credential held in memory only (tests).
    #[cfg(test)]
    pub fn in_memory(me: NodeId, tls: bool, secret: Option<&str>) -> Arc<Credential> {
        Arc::new(Credential {
            me,
            tls,
            configured: secret.is_some(),
            stored_at: PathBuf::new(),
            secret: RwLock::new(secret.map(Arc::from)),
            herd_id: RwLock::new(None),
            refusals: Mutex::new(VecDeque::new()),
        })
    }

    pub fn secret(&self) -> Option<Arc<str>> {
        self.secret
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether this node can take part in a herd: TLS or a secret.
    pub fn usable(&self) -> bool {
        self.tls || self.secret().is_some()
    }

    /// The secret a joining node is given: the one `cluster init` made (kept in the
    /// data dir); none when the secret is configured on every node or TLS alone
    /// authenticates.
    pub fn shareable(&self) -> Option<Arc<str>> {
        if self.configured {
            None
        } else {
            self.secret()
        }
    }

    /// At `cluster init`: without TLS or a configured secret, makes the herd's
    /// secret and keeps it in the data dir. Blocking file I/O (call off the workers).
    pub fn ensure_secret(&self) -> std::io::Result<()> {
        if self.tls || self.secret().is_some() {
            return Ok(());
        }
        let secret = new_secret();
        write_private(&self.stored_at, &secret)?;
        *self.secret.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::from(secret));
        tracing::info!(file = %self.stored_at.display(), "made the herd secret");
        Ok(())
    }

    /// On join: takes the herd's secret (`secret`, empty when the herd has none to
    /// give). A configured secret must be the same. Blocking file I/O.
    pub fn adopt(&self, secret: &str) -> Result<(), CredentialError> {
        if secret.is_empty() {
            return if self.usable() {
                Ok(())
            } else {
                Err(CredentialError::NoneGiven)
            };
        }
        let secret = check_secret(secret)?;
        if let Some(mine) = self.secret() {
            if constant_time_eq(mine.as_bytes(), secret.as_bytes()) {
                return Ok(());
            }
            if self.configured {
                return Err(CredentialError::Differs);
            }
        }
        write_private(&self.stored_at, secret).map_err(|source| CredentialError::Write {
            path: self.stored_at.clone(),
            source,
        })?;
        *self.secret.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::from(secret));
        Ok(())
    }

    pub fn herd_id(&self) -> Option<String> {
        self.herd_id
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records the herd's id (from the applied state, or from init before it applies).
    pub fn set_herd_id(&self, id: &str) {
        let mut h = self.herd_id.write().unwrap_or_else(|p| p.into_inner());
        if h.as_deref() != Some(id) {
            *h = Some(id.to_string());
        }
    }

    /// Forgets a herd id set for an init that did not happen.
    pub fn clear_herd_id(&self) {
        *self.herd_id.write().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Puts the credential on an outgoing call.
    pub fn stamp<T>(&self, req: &mut Request<T>) {
        let md = req.metadata_mut();
        if let Some(s) = self.secret() {
            if let Ok(v) = MetadataValue::try_from(&*s) {
                md.insert(SECRET_HEADER, v);
            }
        }
        if let Some(id) = self.herd_id() {
            if let Ok(v) = MetadataValue::try_from(id.as_str()) {
                md.insert(HERD_ID_HEADER, v);
            }
        }
        if let Ok(v) = MetadataValue::try_from(self.me.to_string().as_str()) {
            md.insert(NODE_HEADER, v);
        }
    }

    /// Checks the credential of an incoming call (the certificate, when TLS is on,
    /// is checked by the caller of this): the secret where this node has one, and
    /// the herd id where both ends know one. A refusal is recorded and logged.
    pub fn check<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let md = req.metadata();
        let header = |k: &str| md.get(k).and_then(|v| v.to_str().ok());
        let from = header(NODE_HEADER).unwrap_or("?");
        let peer = req
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|| "?".into());
        match self.secret() {
            Some(mine) => {
                let given = md
                    .get(SECRET_HEADER)
                    .map(|v| v.as_bytes())
                    .unwrap_or_default();
                if !constant_time_eq(given, mine.as_bytes()) {
                    let what = if given.is_empty() { "no" } else { "a wrong" };
                    return Err(self.refuse(
                        Status::unauthenticated(format!(
                            "node {} refuses the call: it carries {what} herd secret \
                             (every node of a herd needs the same cluster.secret_file, or \
                             the secret `cluster join` hands out)",
                            self.me
                        )),
                        format!("refused a call from {peer} (node {from}): {what} herd secret"),
                    ));
                }
            }
            None if !self.tls => {
                return Err(self.refuse(
                    Status::unauthenticated(format!(
                        "node {} holds no credential of a herd yet (no [tls], no \
                         cluster.secret_file, not initialised or joined): it takes no calls \
                         from other nodes",
                        self.me
                    )),
                    format!(
                        "refused a call from {peer} (node {from}): this node has no herd \
                         credential yet"
                    ),
                ));
            }
            None => {}
        }
        if let (Some(theirs), Some(mine)) = (header(HERD_ID_HEADER), self.herd_id()) {
            if theirs != mine {
                return Err(self.refuse(
                    Status::permission_denied(format!(
                        "node {} is in herd {mine}; the caller (node {from}) is in herd \
                         {theirs}: calls between herds are refused",
                        self.me
                    )),
                    format!(
                        "refused a call from {peer} (node {from}) of another herd: theirs \
                         {theirs}, ours {mine}"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Records that a call to `addr` was refused for its credential or herd.
    pub fn refused_by(&self, addr: &str, status: &Status) {
        self.note(format!(
            "node at {addr} refused this node's call: {}",
            status.message()
        ));
    }

    fn refuse(&self, status: Status, text: String) -> Status {
        self.note(text);
        status
    }

    /// Records and logs a problem of the herd's membership (shown with refusals).
    pub fn report(&self, text: String) {
        self.note(text);
    }

    fn note(&self, text: String) {
        let now = Instant::now();
        let mut r = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        let recent = r
            .iter()
            .any(|x| x.text == text && now.duration_since(x.at) < REFUSAL_LOG_EVERY);
        if recent {
            return;
        }
        tracing::warn!(node = self.me, "{text}");
        r.retain(|x| x.text != text);
        r.push_back(Refusal { at: now, text });
        while r.len() > REFUSALS_KEPT {
            r.pop_front();
        }
    }

    /// Recent refusals, oldest first, with their age.
    pub fn refusals(&self) -> Vec<String> {
        let now = Instant::now();
        let r = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        r.iter()
            .map(|x| format!("{} ({}s ago)", x.text, now.duration_since(x.at).as_secs()))
            .collect()
    }
}

/// Compares without an early exit, so timing does not reveal the secret.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123";

    fn call(from: &Credential) -> Request<()> {
        let mut r = Request::new(());
        from.stamp(&mut r);
        r
    }

    #[test]
    fn the_secret_is_required_and_compared() {
        let a = Credential::in_memory(1, false, Some(SECRET));
        let b = Credential::in_memory(2, false, Some(SECRET));
        let other = Credential::in_memory(3, false, Some("another-secret-of-20"));
        let none = Credential::in_memory(4, false, None);
        assert!(a.check(&call(&b)).is_ok());
        let e = a.check(&call(&other)).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert!(e.message().contains("a wrong herd secret"), "{e}");
        let e = a.check(&call(&none)).unwrap_err();
        assert!(e.message().contains("no herd secret"), "{e}");
        // A node without any credential takes no call at all.
        let e = none.check(&call(&a)).unwrap_err();
        assert!(e.message().contains("no credential"), "{e}");
        assert_eq!(a.refusals().len(), 2);
    }

    #[test]
    fn tls_alone_is_a_credential_and_a_secret_adds_to_it() {
        let tls = Credential::in_memory(1, true, None);
        assert!(tls
            .check(&call(&Credential::in_memory(2, true, None)))
            .is_ok());
        let both = Credential::in_memory(1, true, Some(SECRET));
        assert!(both
            .check(&call(&Credential::in_memory(2, true, None)))
            .is_err());
    }

    #[test]
    fn calls_from_another_herd_are_refused_naming_both() {
        let a = Credential::in_memory(1, false, Some(SECRET));
        let b = Credential::in_memory(2, false, Some(SECRET));
        // Unknown on either side: nothing to compare.
        assert!(a.check(&call(&b)).is_ok());
        a.set_herd_id("aaaa");
        assert!(a.check(&call(&b)).is_ok());
        b.set_herd_id("bbbb");
        let e = a.check(&call(&b)).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(
            e.message().contains("aaaa") && e.message().contains("bbbb"),
            "{e}"
        );
        b.set_herd_id("aaaa");
        assert!(a.check(&call(&b)).is_ok());
    }

    #[test]
    fn secrets_are_made_kept_and_adopted() {
        let dir = tempfile::tempdir().unwrap();
        let a = Credential::load(1, false, None, dir.path()).unwrap();
        assert!(!a.usable());
        a.ensure_secret().unwrap();
        let made = a.shareable().unwrap();
        assert_eq!(made.len(), 2 * SECRET_BYTES);
        let path = dir.path().join(STORED_SECRET_FILE);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // Kept across a restart.
        let again = Credential::load(1, false, None, dir.path()).unwrap();
        assert_eq!(again.secret().as_deref(), Some(&*made));

        let dir2 = tempfile::tempdir().unwrap();
        let b = Credential::load(2, false, None, dir2.path()).unwrap();
        b.adopt(&made).unwrap();
        assert!(b.check(&call(&a)).is_ok());
        assert!(b.adopt("short").is_err());

        // A configured secret is never replaced.
        let file = dir2.path().join("configured");
        std::fs::write(&file, format!("{SECRET}\n")).unwrap();
        let c = Credential::load(3, false, Some(&file), dir2.path()).unwrap();
        assert!(c.shareable().is_none());
        assert!(c.adopt(SECRET).is_ok());
        assert!(c.adopt(&made).unwrap_err().to_string().contains("differs"));
    }

    #[test]
    fn bad_secret_files_name_the_key_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s");
        std::fs::write(&file, "short\n").unwrap();
        let e = Credential::load(1, false, Some(&file), dir.path()).unwrap_err();
        assert!(
            e.starts_with("cluster.secret_file: ") && e.contains("at least"),
            "{e}"
        );
        let e =
            Credential::load(1, false, Some(&dir.path().join("missing")), dir.path()).unwrap_err();
        assert!(e.contains("cannot read"), "{e}");
    }
}
