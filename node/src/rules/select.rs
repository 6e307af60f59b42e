//! Small pure helpers of the rules engine: target globs, label matchers, the
//! stable alert id and compact number text.
use std::collections::BTreeMap;

/// Separators that never occur in UTF-8 text, so ("ab", "c") and ("a", "bc") hash
/// apart: 0xFF ends a field, 0xFE separates a label's name from its value.
const FIELD_END: u8 = 0xFF;
const NAME_END: u8 = 0xFE;

/// Numbers at or above this magnitude are not printed as integers (f64 stops being
/// exact for every integer near 2^53; 1e15 keeps the text honest).
const MAX_INTEGER_TEXT: f64 = 1e15;
/// Below this magnitude a fraction is printed in scientific notation.
const MIN_FIXED_TEXT: f64 = 0.01;

/// The stable id of an alert: FNV-1a 64 over (rule, target, series labels in name
/// order), as 16 lowercase hex digits. Fixed algorithm and encoding: ids must match
/// across processes, nodes and versions, because a new owner continues an alert by
/// its id. Never change this encoding.
pub fn alert_id(rule: &str, target: &str, series: &BTreeMap<String, String>) -> String {
    let mut h = FNV_OFFSET;
    h = fnv1a64(h, rule.as_bytes());
    h = fnv1a64(h, &[FIELD_END]);
    h = fnv1a64(h, target.as_bytes());
    h = fnv1a64(h, &[FIELD_END]);
    for (name, value) in series {
        h = fnv1a64(h, name.as_bytes());
        h = fnv1a64(h, &[NAME_END]);
        h = fnv1a64(h, value.as_bytes());
        h = fnv1a64(h, &[FIELD_END]);
    }
    format!("{h:016x}")
}

pub use crate::model::glob_match;
use crate::model::{fnv1a64, FNV_OFFSET};

/// True when the pattern has glob characters (else it names one thing exactly).
pub fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?'])
}

/// Every matcher's label is present with exactly that value.
pub fn labels_match(
    matchers: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    matchers.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Compact text of a number for alert values: `95`, `0.5`, `99.12`, `1.234e-5`.
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        };
    }
    if v.fract() == 0.0 && v.abs() < MAX_INTEGER_TEXT {
        // Integral and well inside i64: the cast is exact (and turns -0 into 0).
        return format!("{}", v as i64);
    }
    if v.abs() >= MIN_FIXED_TEXT {
        let s = format!("{v:.2}");
        return s.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    format!("{v:.3e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn id_is_fixed_for_a_fixed_tuple() {
        // Cross-checked with an independent FNV-1a 64 (Python) over the same bytes:
        // b"disk-full\xffweb-1\xffmount\xfe/\xff".
        assert_eq!(
            alert_id("disk-full", "web-1", &labels(&[("mount", "/")])),
            "16b2a5f5d8fdee5d"
        );
        assert_eq!(alert_id("", "", &BTreeMap::new()), "0a99c907b6f64763");
    }

    #[test]
    fn id_separates_fields() {
        let none = BTreeMap::new();
        assert_ne!(alert_id("ab", "c", &none), alert_id("a", "bc", &none));
        assert_ne!(
            alert_id("r", "t", &labels(&[("a", "bc")])),
            alert_id("r", "t", &labels(&[("ab", "c")]))
        );
        assert_ne!(
            alert_id("r", "t", &none),
            alert_id("r", "t", &labels(&[("a", "")]))
        );
        assert_eq!(alert_id("r", "t", &none).len(), 16);
    }

    #[test]
    fn globs() {
        assert!(glob_match("web-*", "web-1"));
        assert!(glob_match("web-*", "web-"));
        assert!(!glob_match("web-*", "db-1"));
        assert!(glob_match("web-?", "web-1"));
        assert!(!glob_match("web-?", "web-10"));
        assert!(glob_match("*", ""));
        assert!(glob_match("*-1", "web-db-1"));
        assert!(glob_match("a*b*c", "aXbYbZc"));
        assert!(!glob_match("a*b*c", "aXbYbZ"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
        assert!(glob_match("containers.*.status", "containers.web.status"));
        assert!(glob_match("é?", "éü"));
        assert!(!glob_match("", "x"));
        assert!(is_glob("web-*") && is_glob("a?") && !is_glob("web-1"));
    }

    #[test]
    fn matchers() {
        let l = labels(&[("mount", "/"), ("fs", "ext4")]);
        assert!(labels_match(&BTreeMap::new(), &l));
        assert!(labels_match(&labels(&[("mount", "/")]), &l));
        assert!(!labels_match(&labels(&[("mount", "/var")]), &l));
        assert!(!labels_match(&labels(&[("dev", "sda")]), &l));
    }

    #[test]
    fn values_are_compact() {
        assert_eq!(format_value(95.0), "95");
        assert_eq!(format_value(-0.0), "0");
        assert_eq!(format_value(0.5), "0.5");
        assert_eq!(format_value(99.123), "99.12");
        assert_eq!(format_value(99.999), "100");
        assert_eq!(format_value(0.000_012_34), "1.234e-5");
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(format_value(1e20), "100000000000000000000");
    }
}
