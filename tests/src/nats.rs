//! A real nats-server (Debian package `nats-server`) on 127.0.0.1 with JetStream
//! storing in a temp dir: `nats-server -js -a 127.0.0.1 -p PORT -sd DIR`. It can be
//! stopped (the port is then closed) and started again on the same port and store.
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::ports::free_port;
use crate::process::{kill_tree, log_tail, spawn_logged};

/// Longest wait for nats-server to be ready.
const START_TIMEOUT: Duration = Duration::from_secs(15);

pub struct NatsServer {
    dir: TempDir,
    port: u16,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts nats-server with JetStream on a free port.
    pub fn start() -> NatsServer {
        let dir = tempfile::Builder::new()
            .prefix("herd-nats-")
            .tempdir()
            .expect("cannot create a temp dir");
        std::fs::create_dir_all(dir.path().join("js")).expect("creating the JetStream dir");
        let mut nats = NatsServer {
            dir,
            port: 0,
            child: None,
        };
        // Another process may take the free port before nats-server binds it: retry once.
        for attempt in 0..2 {
            nats.port = free_port();
            match nats.spawn() {
                Ok(()) => return nats,
                Err(e) if attempt == 0 => {
                    eprintln!("    nats-server did not start ({e}); retrying on another port")
                }
                Err(e) => panic!("nats-server did not start: {e}\n{}", nats.log_tail(40)),
            }
        }
        unreachable!()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// nats-server's stderr (its log), across restarts.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats.log")
    }

    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path(), lines)
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kills nats-server (SIGKILL) and waits for it: the port is closed.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_tree(&mut child);
        }
    }

    /// Starts it again on the same port and store directory.
    pub fn restart(&mut self) {
        self.stop();
        let mut last = String::new();
        for _ in 0..3 {
            match self.spawn() {
                Ok(()) => return,
                Err(e) => {
                    last = e;
                    std::thread::sleep(Duration::from_millis(300));
                }
            }
        }
        panic!(
            "nats-server did not restart on port {}: {last}\n{}",
            self.port,
            self.log_tail(40)
        );
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log = self.log_path();
        let offset = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        let mut cmd = Command::new("nats-server");
        cmd.args([
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-sd",
        ])
        .arg(self.dir.path().join("js"));
        let mut child = spawn_logged(&mut cmd, &self.dir.path().join("nats.out"), &log);
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "nats-server exited with {status}: {}",
                    log_tail(&log, 5)
                ));
            }
            let text = std::fs::read(&log)
                .map(|b| String::from_utf8_lossy(&b[offset as usize..]).into_owned())
                .unwrap_or_default();
            if text.contains("Server is ready")
                && TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            {
                self.child = Some(child);
                return Ok(());
            }
            if start.elapsed() > START_TIMEOUT {
                kill_tree(&mut child);
                return Err(format!(
                    "nats-server was not ready within {START_TIMEOUT:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- nats-server on port {} ({}), last lines -----\n{}\n-----",
                self.port,
                self.dir.path().display(),
                self.log_tail(30)
            );
        }
        self.stop();
    }
}
