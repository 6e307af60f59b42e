//! A real Prometheus (Debian's `prometheus` package) on a free loopback port, with
//! the scrape configuration a test gives, asked through the real `promtool`.
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use serde_json::Value;

use crate::free_port;
use crate::process::{kill_tree, run_bounded, spawn_logged};

pub struct Prometheus {
    child: Child,
    dir: tempfile::TempDir,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
}

impl Prometheus {
    /// Starts Prometheus with `scrape_configs` (YAML, the list under that key,
    /// indented by two spaces) and a 1 s scrape interval.
    pub fn start(scrape_configs: &str) -> Prometheus {
        Self::start_with(scrape_configs, &[])
    }

    /// A Prometheus that scrapes nothing and takes remote writes at
    /// `/api/v1/write`.
    pub fn receiver() -> Prometheus {
        Self::start_with("  []\n", &["--web.enable-remote-write-receiver"])
    }

    /// Its remote-write URL (with [`Prometheus::receiver`]).
    pub fn write_url(&self) -> String {
        format!("{}/api/v1/write", self.url)
    }

    /// The raw samples (ms, value) of the series `selector` matches in the last
    /// hour, per series (labels with `__name__`), asked with curl.
    pub fn raw_samples(&self, selector: &str) -> Vec<(Value, Vec<(i64, f64)>)> {
        let out = run_bounded(
            Command::new("curl")
                .args(["-s", "--max-time", "20"])
                .arg(format!("{}/api/v1/query", self.url))
                .arg("--data-urlencode")
                .arg(format!("query={selector}[1h]")),
            Duration::from_secs(30),
        );
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        doc["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|s| {
                let points = s["values"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|p| {
                        let t = p.get(0)?.as_f64()?;
                        let v = p.get(1)?.as_str()?.parse().ok()?;
                        Some(((t * 1000.0).round() as i64, v))
                    })
                    .collect();
                (s["metric"].clone(), points)
            })
            .collect()
    }

    fn start_with(scrape_configs: &str, extra: &[&str]) -> Prometheus {
        let dir = tempfile::tempdir().expect("a temp dir");
        let port = free_port();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!("global: {{ scrape_interval: 1s }}\nscrape_configs:\n{scrape_configs}"),
        )
        .expect("writing prometheus.yml");
        let child = spawn_logged(
            Command::new("prometheus")
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .args(extra),
            &dir.path().join("prometheus.out"),
            &dir.path().join("prometheus.err"),
        );
        Prometheus {
            child,
            dir,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// A file beside its configuration (a CA for `tls_config`, say).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `promtool query instant EXPR` against it: each series' labels and value;
    /// `None` while it does not answer.
    pub fn query(&self, expr: &str) -> Option<Vec<(Value, f64)>> {
        let out = run_bounded(
            Command::new("promtool").args(["query", "instant", "-o", "json", &self.url, expr]),
            Duration::from_secs(20),
        );
        let doc: Value = serde_json::from_slice(&out.stdout).ok()?;
        Some(
            doc.as_array()?
                .iter()
                .map(|s| {
                    (
                        s["metric"].clone(),
                        s["value"][1]
                            .as_str()
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(f64::NAN),
                    )
                })
                .collect(),
        )
    }

    /// Its log, for a failure's message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.err")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        kill_tree(&mut self.child);
    }
}
