//! A real VictoriaMetrics (Debian's `victoria-metrics`) on a free loopback port: a
//! remote-write receiver (`/api/v1/write`) whose raw samples a test reads back
//! (`/api/v1/export`). It can be stopped and started again on the same port and
//! data, like a receiver that goes down for a while.
use std::collections::BTreeMap;
use std::process::{Child, Command};
use std::time::Duration;

use serde_json::Value;

use crate::free_port;
use crate::process::{kill_tree, run_bounded, signal, spawn_logged, wait_exit};

pub struct VictoriaMetrics {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
}

/// A series' labels (`__name__` among them) and its samples (ms, value), by time.
pub type Series = (BTreeMap<String, String>, Vec<(i64, f64)>);

impl VictoriaMetrics {
    pub fn start() -> VictoriaMetrics {
        let dir = tempfile::tempdir().expect("a temp dir");
        let port = free_port();
        let mut vm = VictoriaMetrics {
            child: None,
            dir,
            port,
            url: format!("http://127.0.0.1:{port}"),
        };
        vm.up();
        vm
    }

    /// Its remote-write URL.
    pub fn write_url(&self) -> String {
        format!("{}/api/v1/write", self.url)
    }

    /// Starts it (again, on the same port and data) and waits until it answers.
    pub fn up(&mut self) {
        assert!(self.child.is_none(), "VictoriaMetrics already runs");
        let child = spawn_logged(
            Command::new("victoria-metrics")
                .arg(format!(
                    "-storageDataPath={}",
                    self.dir.path().join("data").display()
                ))
                .arg(format!("-httpListenAddr=127.0.0.1:{}", self.port))
                .arg("-search.latencyOffset=0s"),
            &self.dir.path().join("vm.out"),
            &self.dir.path().join("vm.err"),
        );
        self.child = Some(child);
        crate::wait_until(Duration::from_secs(30), "VictoriaMetrics answers", || {
            self.get("/health").is_some_and(|b| b.trim() == "OK")
        });
    }

    /// Stops it with SIGTERM, as a service stop does (it writes what it holds in
    /// memory first: a `kill -9` of VictoriaMetrics loses the last second or so of
    /// what it already acknowledged), then SIGKILL if it hangs. The receiver is
    /// down: connections are refused.
    pub fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(c.id() as i32, libc::SIGTERM);
            if wait_exit(&mut c, Duration::from_secs(20)).is_none() {
                kill_tree(&mut c);
            }
        }
    }

    fn get(&self, path_and_query: &str) -> Option<String> {
        let out = run_bounded(
            Command::new("curl")
                .args(["-s", "-f", "--max-time", "10"])
                .arg(format!("{}{path_and_query}", self.url)),
            Duration::from_secs(20),
        );
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Every raw sample of the series `selector` matches (`{target="x"}`), after
    /// making what it received searchable.
    pub fn export(&self, selector: &str) -> Vec<Series> {
        let _ = self.get("/internal/force_flush");
        let out = run_bounded(
            Command::new("curl")
                .args(["-s", "-f", "--max-time", "20", "-G"])
                .arg(format!("{}/api/v1/export", self.url))
                .arg("--data-urlencode")
                .arg(format!("match[]={selector}")),
            Duration::from_secs(30),
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .map(|doc| {
                let labels = doc["metric"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                            .collect()
                    })
                    .unwrap_or_default();
                let ts = doc["timestamps"].as_array().cloned().unwrap_or_default();
                let vs = doc["values"].as_array().cloned().unwrap_or_default();
                let mut points: Vec<(i64, f64)> = ts
                    .iter()
                    .zip(vs.iter())
                    .filter_map(|(t, v)| Some((t.as_i64()?, v.as_f64()?)))
                    .collect();
                points.sort_by_key(|p| p.0);
                (labels, points)
            })
            .collect()
    }

    /// Where it keeps its data.
    pub fn data_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    /// POSTs a Prometheus text file (times in ms) to `/api/v1/import/prometheus`;
    /// the error is curl's or VictoriaMetrics' answer.
    pub fn import_prometheus(&self, file: &std::path::Path) -> Result<(), String> {
        let out = run_bounded(
            Command::new("curl")
                .args(["-s", "-S", "-f", "--max-time", "600", "--data-binary"])
                .arg(format!("@{}", file.display()))
                .arg(format!("{}/api/v1/import/prometheus", self.url)),
            Duration::from_secs(620),
        );
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Makes what it received searchable and merges its parts as far as it will
    /// (`/internal/force_flush`, `/internal/force_merge` of `partition`, YYYY_MM).
    pub fn flush_and_merge(&self, partition: &str) {
        let _ = self.get("/internal/force_flush");
        let _ = self.get(&format!(
            "/internal/force_merge?partition_prefix={partition}"
        ));
    }

    /// Its log, for a failure's message.
    pub fn log(&self) -> String {
        crate::log_tail(&self.dir.path().join("vm.err"), 30)
    }
}

impl Drop for VictoriaMetrics {
    fn drop(&mut self) {
        self.down();
    }
}
