//! `herd demo` as a test starts it: the real binary on free ports of 127.0.0.1, its
//! output kept, killed with its children if the test fails half-way.
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use serde_json::Value;

use crate::process::{kill_tree, spawn_logged};
use crate::{free_port, herd_bin, herd_cli};

/// Longest a CLI call against the demo may take.
const CLI_TIMEOUT: Duration = Duration::from_secs(30);

/// Three consecutive free ports on 127.0.0.1 (the demo takes P, P+1, P+2).
fn three_free_ports() -> u16 {
    for _ in 0..200 {
        let first = free_port();
        if first > 65_000 {
            continue;
        }
        if (1..3).all(|i| TcpListener::bind(("127.0.0.1", first + i)).is_ok()) {
            return first;
        }
    }
    panic!("no three consecutive free ports on 127.0.0.1");
}

/// A running `herd demo`.
pub struct Demo {
    pub child: Child,
    /// Node 1's gRPC address (nodes 2 and 3 take the next ports).
    pub grpc: String,
    /// Node 1's HTTP address.
    pub http: String,
    pub out: PathBuf,
    pub err: PathBuf,
    _dir: tempfile::TempDir,
}

impl Demo {
    /// `herd demo --interval INTERVAL` in a fresh directory.
    pub fn start(interval: &str) -> Demo {
        let dir = tempfile::tempdir().expect("a temp dir");
        let grpc = format!("127.0.0.1:{}", three_free_ports());
        let http = format!("127.0.0.1:{}", three_free_ports());
        let (out, err) = (dir.path().join("demo.out"), dir.path().join("demo.err"));
        let child = spawn_logged(
            Command::new(herd_bin())
                .arg("demo")
                .arg("--grpc")
                .arg(&grpc)
                .arg("--http")
                .arg(&http)
                .arg("--data-dir")
                .arg(dir.path().join("herd-demo"))
                .arg("--interval")
                .arg(interval)
                .current_dir(dir.path()),
            &out,
            &err,
        );
        Demo {
            child,
            grpc,
            http,
            out,
            err,
            _dir: dir,
        }
    }

    /// What the demo printed, for a failure's message.
    pub fn show(&self) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            std::fs::read_to_string(&self.out).unwrap_or_default(),
            std::fs::read_to_string(&self.err).unwrap_or_default()
        )
    }

    /// `herd status --json` from node 1, when it answers.
    pub fn status(&self) -> Option<Value> {
        let out = herd_cli(&["--node", &self.grpc, "status", "--json"], CLI_TIMEOUT);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            kill_tree(&mut self.child);
        }
    }
}
