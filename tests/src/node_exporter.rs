//! A real Prometheus node_exporter (the Debian `prometheus-node-exporter` binary)
//! on 127.0.0.1, with only the loadavg, meminfo and cpu collectors (quick scrapes,
//! and families both inside and outside a test's allow-list).
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::ports::free_port;
use crate::process::{kill_tree, log_tail, spawn_logged};

const NODE_EXPORTER: &str = "/usr/bin/prometheus-node-exporter";
/// Longest wait for node_exporter to serve /metrics.
const START_TIMEOUT: Duration = Duration::from_secs(15);

pub struct NodeExporter {
    dir: TempDir,
    port: u16,
    child: Option<Child>,
}

impl NodeExporter {
    /// Starts node_exporter on a free port; returns once /metrics answers 200.
    pub fn start() -> NodeExporter {
        assert!(
            Path::new(NODE_EXPORTER).is_file(),
            "{NODE_EXPORTER} is missing: install the Debian package prometheus-node-exporter"
        );
        let dir = tempfile::Builder::new()
            .prefix("herd-node-exporter-")
            .tempdir()
            .expect("cannot create a temp dir");
        let mut ne = NodeExporter {
            dir,
            port: 0,
            child: None,
        };
        // Another process may take the free port before it is bound: retry once.
        for attempt in 0..2 {
            ne.port = free_port();
            match ne.spawn() {
                Ok(()) => return ne,
                Err(e) if attempt == 0 => {
                    eprintln!("    node_exporter did not start ({e}); retrying on another port")
                }
                Err(e) => panic!("node_exporter did not start: {e}\n{}", ne.log_tail(30)),
            }
        }
        unreachable!()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT/metrics`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/metrics", self.port)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("node_exporter.log")
    }

    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path(), lines)
    }

    /// GET /metrics with a plain HTTP/1.0 request; the body, if the answer was 200.
    pub fn scrape(&self) -> Option<String> {
        http_get(self.port, "/metrics")
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_tree(&mut child);
        }
    }

    fn spawn(&mut self) -> Result<(), String> {
        let mut cmd = Command::new(NODE_EXPORTER);
        cmd.arg(format!("--web.listen-address=127.0.0.1:{}", self.port))
            .args([
                "--collector.disable-defaults",
                "--collector.loadavg",
                "--collector.meminfo",
                "--collector.cpu",
            ]);
        let mut child = spawn_logged(
            &mut cmd,
            &self.dir.path().join("node_exporter.out"),
            &self.log_path(),
        );
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("node_exporter exited with {status}"));
            }
            if self.scrape().is_some() {
                self.child = Some(child);
                return Ok(());
            }
            if start.elapsed() > START_TIMEOUT {
                kill_tree(&mut child);
                return Err(format!(
                    "node_exporter did not answer within {START_TIMEOUT:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for NodeExporter {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- node_exporter on port {}, last lines -----\n{}\n-----",
                self.port,
                self.log_tail(20)
            );
        }
        self.stop();
    }
}

/// A bounded HTTP/1.0 GET on 127.0.0.1; the body when the status is 200.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(2),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.")
        .then_some(())
        .filter(|_| head.split_whitespace().nth(1) == Some("200"))?;
    Some(body.to_string())
}
