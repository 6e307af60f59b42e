//! How Herd's series are named in the Prometheus API, in remote_write and in
//! `herd export`: the one mapping.
//!
//! A metric `cpu.used_pct` is `herd_cpu_used_pct`: `herd_` and the name with every
//! character outside `[a-zA-Z0-9_]` made `_`. A series has the label `target` (the
//! target's name) and its own labels, named the same way; a label of its own that
//! would clash (`target`, or one starting with `__`) is `exported_` + its name.
//! The mapping is not reversed: a selector's name is compared with the mapped
//! names of the series the store holds.
use std::collections::BTreeMap;

use super::Labels;

/// Labels of a series as the Prometheus API shows them.
pub type PromLabels = BTreeMap<String, String>;

pub const NAME_LABEL: &str = "__name__";
pub const TARGET_LABEL: &str = "target";

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `cpu.used_pct` → `herd_cpu_used_pct`.
pub fn metric_name(metric: &str) -> String {
    format!("herd_{}", sanitize(metric))
}

/// A series label's name in the Prometheus API.
pub fn label_name(name: &str) -> String {
    let mut s = sanitize(name);
    if s.is_empty() || s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert(0, '_');
    }
    if s == TARGET_LABEL || s.starts_with("__") {
        s.insert_str(0, "exported_");
    }
    s
}

/// Whether `name` is a valid Prometheus label name (`[a-zA-Z_][a-zA-Z0-9_]*`).
pub fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The labels of a series of `metric` of `target`, `__name__` among them.
pub fn prom_labels(target: &str, metric: &str, labels: &Labels) -> PromLabels {
    let mut out: PromLabels = labels
        .iter()
        .map(|(k, v)| (label_name(k), v.clone()))
        .collect();
    out.insert(NAME_LABEL.into(), metric_name(metric));
    out.insert(TARGET_LABEL.into(), target.into());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_prometheus_names() {
        assert_eq!(metric_name("cpu.used_pct"), "herd_cpu_used_pct");
        assert_eq!(metric_name("http.response-ms"), "herd_http_response_ms");
        assert_eq!(label_name("mount"), "mount");
        assert_eq!(label_name("le.x"), "le_x");
        assert_eq!(label_name("9p"), "_9p");
        assert_eq!(label_name("target"), "exported_target");
        assert_eq!(label_name("__name__"), "exported___name__");
        let mut labels = Labels::new();
        labels.insert("mount".into(), "/".into());
        labels.insert("target".into(), "inner".into());
        let p = prom_labels("web1", "disk.used_pct", &labels);
        assert_eq!(p["__name__"], "herd_disk_used_pct");
        assert_eq!(p["target"], "web1");
        assert_eq!(p["mount"], "/");
        assert_eq!(p["exported_target"], "inner");
    }
}
