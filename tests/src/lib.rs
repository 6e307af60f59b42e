//! Harness for Herd's end-to-end tests: the real `herd` binary, a real OpenSSH `sshd`
//! on loopback with keys generated per test, and bounded waits. For the check kinds:
//! a real nginx (plain and TLS), a real node_exporter, certificates made with the
//! openssl CLI and a unix socket listener. For reactions: a real SMTP server
//! (aiosmtpd) and a real HTTP receiver for webhooks. For the extras: a real
//! nats-server with JetStream and a writer of small MaxMind DB files. For the
//! herd: several nodes formed with `herd cluster`, killed and restarted
//! ([`cluster::Cluster`]).
//!
//! Every fixture lives in its own temp dir on its own ports, so tests run in
//! parallel. Every wait has a deadline. When a test fails, the fixtures print the
//! tail of their logs as they are dropped.
mod fleet;
mod herd;
mod ports;
pub mod process;
pub mod prometheus;
mod sshd;
mod wait;

pub mod alertmanager;
pub mod bench;
pub mod browser;
pub mod certs;
pub mod chaos;
pub mod cluster;
pub mod demo;
pub mod files;
pub mod mmdb;
pub mod nats;
pub mod netns;
pub mod nginx;
pub mod node_exporter;
pub mod receiver;
pub mod smtp;
pub mod unix_socket;
pub mod victoria;

use std::path::PathBuf;

pub use fleet::{local_target, local_target_with, ssh_target, ssh_target_with, toml_str};
pub use herd::{herd_cli, metric_sample, Herd, HerdOptions};
pub use ports::free_port;
pub use process::{generate_key, log_tail};
pub use sshd::{Sshd, SSH_USER};
pub use wait::{wait_for, wait_until};

pub use certs::TestPki;
pub use cluster::{node_target, Cluster, Status};
pub use mmdb::MmdbWriter;
pub use nats::NatsServer;
pub use nginx::{Nginx, TlsListener};
pub use node_exporter::NodeExporter;
pub use receiver::{HttpReceiver, Received};
pub use smtp::{Mail, SmtpServer};
pub use unix_socket::UnixSocketServer;

/// Prints the start of a test phase, so that a test's output reads as its story.
#[macro_export]
macro_rules! phase {
    ($($arg:tt)*) => {
        eprintln!("\n=== {}", format!($($arg)*))
    };
}

/// The `herd` binary under test: `$HERD_BIN` if set, else `herd` in the same
/// target profile directory as this test executable (`target/debug/herd` for a
/// plain `cargo test`), else `<workspace>/target/debug/herd`.
pub fn herd_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("HERD_BIN") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "HERD_BIN={} is not a file", p.display());
        return p;
    }
    let mut candidates = Vec::new();
    // <target>/<profile>/deps/<test executable>
    if let Ok(exe) = std::env::current_exe() {
        if let Some(profile_dir) = exe.parent().and_then(|deps| deps.parent()) {
            candidates.push(profile_dir.join("herd"));
        }
    }
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    candidates.push(workspace.join("target/debug/herd"));
    for c in &candidates {
        if c.is_file() {
            return c.clone();
        }
    }
    panic!(
        "the herd binary is missing (looked at {candidates:?}): run `cargo build -p herd` first, \
         or set HERD_BIN"
    );
}

/// Milliseconds since the Unix epoch, as herd's sample timestamps.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// These tests start sshd and create a login account: they need root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the end-to-end tests run sshd and create the `{SSH_USER}` account: run them as root"
    );
}
