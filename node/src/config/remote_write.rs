//! `[[remote_write]]` in fleet.toml: a long-term store (VictoriaMetrics, Prometheus,
//! Mimir, Thanos receive, ...) that each node feeds with what it collects, with the
//! Prometheus remote-write 1.0 protocol.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::channels::Secret;
use super::duration::HumanDuration;
use crate::model::net::check_http_url;
use crate::model::prom_names;

/// Default bound of a remote's queue on disk, in MiB.
pub const DEFAULT_MAX_QUEUE_MB: u64 = 256;
/// Default number of samples in one request at most.
pub const DEFAULT_MAX_SAMPLES_PER_SEND: usize = 2000;
/// Default number of requests in flight at most when a queue is behind.
pub const DEFAULT_MAX_SHARDS: usize = 4;
/// The most `max_shards` may say.
pub const MAX_SHARDS_LIMIT: usize = 64;
/// Default bound of one request.
pub const DEFAULT_TIMEOUT: HumanDuration = HumanDuration::from_secs(30);
/// Default longest wait between retries.
pub const DEFAULT_BACKOFF_MAX: HumanDuration = HumanDuration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteWriteSpec {
    /// Names the remote in logs, /metrics and the node's queue.
    pub name: String,
    /// The receiver's write URL (`http://vm:8428/api/v1/write`).
    pub url: String,
    /// Target names or globs (`web-*`) whose samples go; empty: every target.
    #[serde(default)]
    pub targets: Vec<String>,
    /// Herd metric names or globs (`cpu.*`, `disk.used_pct`); empty: every metric.
    #[serde(default)]
    pub metrics: Vec<String>,
    /// Labels added to every series sent (`herd = "eu-1"`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Sent as `Authorization: Bearer ...`.
    #[serde(default)]
    pub token: Option<Secret>,
    /// Basic auth (with `password`).
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    /// A PEM file of the CA that signed the receiver's certificate (https).
    #[serde(default)]
    pub ca_file: Option<String>,
    /// What waits on disk for the receiver at most (MiB); beyond it the oldest
    /// samples are dropped and counted (scraping never waits for a receiver).
    #[serde(default)]
    pub max_queue_mb: Option<u64>,
    #[serde(default)]
    pub max_samples_per_send: Option<usize>,
    /// Requests in flight at most when the queue holds more than one request's
    /// worth: the backlog is split by series into up to this many requests, sent
    /// in parallel (a series is in one of them, so its samples stay in order).
    #[serde(default)]
    pub max_shards: Option<usize>,
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
    /// Retries wait 1 s doubling up to this (or what a 429/503's Retry-After says).
    #[serde(default)]
    pub backoff_max: Option<HumanDuration>,
}

impl RemoteWriteSpec {
    pub fn max_queue_bytes(&self) -> u64 {
        self.max_queue_mb.unwrap_or(DEFAULT_MAX_QUEUE_MB) * 1024 * 1024
    }

    pub fn max_samples_per_send(&self) -> usize {
        self.max_samples_per_send
            .unwrap_or(DEFAULT_MAX_SAMPLES_PER_SEND)
    }

    pub fn max_shards(&self) -> usize {
        self.max_shards.unwrap_or(DEFAULT_MAX_SHARDS)
    }

    pub fn timeout(&self) -> std::time::Duration {
        self.timeout.unwrap_or(DEFAULT_TIMEOUT).get()
    }

    pub fn backoff_max(&self) -> std::time::Duration {
        self.backoff_max.unwrap_or(DEFAULT_BACKOFF_MAX).get()
    }

    /// Whether the samples of `target`'s metric `metric` go to this remote.
    pub fn selects(&self, target: &str, metric: &str) -> bool {
        let any = |patterns: &[String], name: &str| {
            patterns.is_empty() || patterns.iter().any(|p| crate::model::glob_match(p, name))
        };
        any(&self.targets, target) && any(&self.metrics, metric)
    }

    /// Problems of the remote alone (pure).
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.name.trim().is_empty() || self.name.contains('\0') {
            p.push("name must not be empty".into());
        }
        p.extend(
            check_http_url("url", &self.url)
                .err()
                .map(|e| e.to_string()),
        );
        for name in self.labels.keys() {
            if !prom_names::is_label_name(name) || name.starts_with("__") {
                p.push(format!(
                    "labels: {name:?} is not a label name ([a-zA-Z_][a-zA-Z0-9_]*, not starting with __)"
                ));
            }
            if matches!(name.as_str(), "target") {
                p.push("labels: \"target\" is set by Herd on every series".into());
            }
        }
        if self.username.is_some() != self.password.is_some() {
            p.push("username and password go together".into());
        }
        if self.token.is_some() && self.username.is_some() {
            p.push("set token or username/password, not both".into());
        }
        for (what, s) in [("token", &self.token), ("password", &self.password)] {
            if let Some(s) = s {
                p.extend(s.problems(what));
            }
        }
        if self.max_queue_mb == Some(0) {
            p.push("max_queue_mb must be 1 or more".into());
        }
        if self.max_samples_per_send == Some(0) {
            p.push("max_samples_per_send must be 1 or more".into());
        }
        if self
            .max_shards
            .is_some_and(|n| n == 0 || n > MAX_SHARDS_LIMIT)
        {
            p.push(format!("max_shards must be 1 to {MAX_SHARDS_LIMIT}"));
        }
        if self.timeout.is_some_and(|t| t.get().is_zero()) {
            p.push("timeout must be above 0".into());
        }
        p
    }
}
