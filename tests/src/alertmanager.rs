//! A real Alertmanager (Debian's `prometheus-alertmanager`) on a free loopback port,
//! clustering off, routing every alert to one webhook receiver with short group
//! timings; asked through its API v2 and the real `amtool`.
use std::process::{Child, Command};
use std::time::Duration;

use serde_json::Value;

use crate::free_port;
use crate::process::{kill_tree, run_bounded, spawn_logged};

pub struct Alertmanager {
    child: Child,
    dir: tempfile::TempDir,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
}

impl Alertmanager {
    /// Starts Alertmanager routing every alert (grouped by alert name and target,
    /// group wait and interval 1 s) to the webhook at `webhook_url`, resolved ones
    /// too.
    pub fn start(webhook_url: &str) -> Alertmanager {
        let dir = tempfile::tempdir().expect("a temp dir");
        let port = free_port();
        let config = dir.path().join("alertmanager.yml");
        std::fs::write(
            &config,
            format!(
                "route:\n  receiver: hook\n  group_by: [alertname, target]\n  group_wait: 1s\n  \
                 group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: hook\n    \
                 webhook_configs:\n      - url: {webhook_url}\n        send_resolved: true\n"
            ),
        )
        .expect("writing alertmanager.yml");
        let child = spawn_logged(
            Command::new("prometheus-alertmanager")
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                // No gossip: a single instance, no port beyond the web one.
                .arg("--cluster.listen-address="),
            &dir.path().join("alertmanager.out"),
            &dir.path().join("alertmanager.err"),
        );
        let am = Alertmanager {
            child,
            dir,
            url: format!("http://127.0.0.1:{port}"),
        };
        crate::wait_until(Duration::from_secs(30), "Alertmanager answers", || {
            am.alerts().is_some()
        });
        am
    }

    /// `GET /api/v2/alerts` (the active ones, as Alertmanager lists them); `None`
    /// while it does not answer.
    pub fn alerts(&self) -> Option<Vec<Value>> {
        let out = run_bounded(
            Command::new("curl")
                .args(["-s", "--max-time", "10"])
                .arg(format!("{}/api/v2/alerts", self.url)),
            Duration::from_secs(20),
        );
        let doc: Value = serde_json::from_slice(&out.stdout).ok()?;
        doc.as_array().cloned()
    }

    /// The active alerts with `label=value`.
    pub fn alerts_with(&self, label: &str, value: &str) -> Vec<Value> {
        self.alerts()
            .unwrap_or_default()
            .into_iter()
            .filter(|a| a["labels"][label] == value)
            .collect()
    }

    /// `amtool alert query MATCHER` (its simple output: one line per alert).
    pub fn amtool_query(&self, matcher: &str) -> String {
        let out = run_bounded(
            Command::new("amtool").args([
                "alert",
                "query",
                &format!("--alertmanager.url={}", self.url),
                matcher,
            ]),
            Duration::from_secs(20),
        );
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// Its log, for a failure's message.
    pub fn log(&self) -> String {
        crate::log_tail(&self.dir.path().join("alertmanager.err"), 40)
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        kill_tree(&mut self.child);
    }
}
