//! `{{name}}` templates of rule summaries and descriptions.
//!
//! Deliberately tiny: no conditionals, no escapes. A placeholder the renderer does
//! not know is copied through as written, so a typo shows up in the notification
//! instead of vanishing. Rendering never fails and never panics: whatever a fleet
//! file holds, the alert still goes out with some text.
use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

/// Latest instant humantime can print as RFC 3339 (9999-12-31T23:59:59Z); beyond
/// it the formatter returns an error, which `to_string` would turn into a panic.
const MAX_RFC3339_MS: i64 = 253_402_300_799_000;

const OPEN: &str = "{{";
const CLOSE: &str = "}}";
const LABEL_PREFIX: &str = "labels.";

/// What a template can refer to.
#[derive(Debug, Clone, Copy)]
pub struct Vars<'a> {
    pub target: &'a str,
    pub rule: &'a str,
    pub metric: &'a str,
    pub value: &'a str,
    pub threshold: &'a str,
    /// Unix ms; rendered as RFC 3339 (seconds, UTC).
    pub since_ms: i64,
    pub severity: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

/// Renders {{target}} {{rule}} {{metric}} {{value}} {{threshold}} {{since}}
/// (RFC 3339, via humantime::format_rfc3339_seconds) {{severity}} {{labels.NAME}};
/// unknown placeholders are left as written; never panics.
///
/// Spaces inside the braces are allowed (`{{ target }}`). A label the alert does
/// not carry renders as the empty string: the name is known, the value is absent.
pub fn render(template: &str, vars: &Vars) -> String {
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(open) = rest.find(OPEN) {
        let after_open = &rest[open + OPEN.len()..];
        let Some(close) = after_open.find(CLOSE) else {
            break;
        };
        out.push_str(&rest[..open]);
        let name = after_open[..close].trim();
        match lookup(name, vars) {
            Some(value) => out.push_str(&value),
            None => {
                out.push_str(OPEN);
                out.push_str(&after_open[..close]);
                out.push_str(CLOSE);
            }
        }
        rest = &after_open[close + CLOSE.len()..];
    }
    out.push_str(rest);
    out
}

fn lookup(name: &str, vars: &Vars) -> Option<String> {
    let v = match name {
        "target" => vars.target.to_string(),
        "rule" => vars.rule.to_string(),
        "metric" => vars.metric.to_string(),
        "value" => vars.value.to_string(),
        "threshold" => vars.threshold.to_string(),
        "since" => format_since(vars.since_ms),
        "severity" => vars.severity.to_string(),
        _ => {
            let label = name.strip_prefix(LABEL_PREFIX)?;
            if label.is_empty() {
                return None;
            }
            vars.labels.get(label).cloned().unwrap_or_default()
        }
    };
    Some(v)
}

/// RFC 3339 in seconds, clamped to what the formatter accepts (1970..=9999), so a
/// garbled timestamp prints as a wrong date rather than panicking.
pub fn format_since(since_ms: i64) -> String {
    let ms = since_ms.clamp(0, MAX_RFC3339_MS);
    // `ms` is within 0..=MAX_RFC3339_MS, so the cast cannot wrap.
    let t = UNIX_EPOCH + Duration::from_millis(ms as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> BTreeMap<String, String> {
        let mut l = BTreeMap::new();
        l.insert("mount".to_string(), "/".to_string());
        l
    }

    fn vars(labels: &BTreeMap<String, String>) -> Vars<'_> {
        Vars {
            target: "web-1",
            rule: "disk-full",
            metric: "disk.used_pct",
            value: "95",
            threshold: "90",
            since_ms: 1_700_000_000_000,
            severity: "warning",
            labels,
        }
    }

    #[test]
    fn renders_every_placeholder() {
        let l = labels();
        let out = render(
            "{{target}}|{{rule}}|{{metric}}|{{value}}|{{threshold}}|{{since}}|{{severity}}|{{labels.mount}}",
            &vars(&l),
        );
        assert_eq!(
            out,
            "web-1|disk-full|disk.used_pct|95|90|2023-11-14T22:13:20Z|warning|/"
        );
    }

    #[test]
    fn builtin_disk_full_templates_read_well() {
        let l = labels();
        assert_eq!(
            render(
                "{{target}} disk {{labels.mount}} is {{value}}% full",
                &vars(&l)
            ),
            "web-1 disk / is 95% full"
        );
        assert_eq!(
            render("above {{threshold}}% since {{since}}", &vars(&l)),
            "above 90% since 2023-11-14T22:13:20Z"
        );
    }

    #[test]
    fn spaces_inside_braces_are_allowed() {
        let l = labels();
        assert_eq!(render("{{ target }}/{{  value}}", &vars(&l)), "web-1/95");
    }

    #[test]
    fn unknown_placeholders_stay_as_written() {
        let l = labels();
        assert_eq!(
            render("{{nope}} {{ labels. }} {{labels}} x", &vars(&l)),
            "{{nope}} {{ labels. }} {{labels}} x"
        );
    }

    #[test]
    fn missing_label_renders_empty() {
        let l = labels();
        assert_eq!(render("[{{labels.team}}]", &vars(&l)), "[]");
    }

    #[test]
    fn unclosed_and_odd_braces_are_copied() {
        let l = labels();
        assert_eq!(render("a {{target", &vars(&l)), "a {{target");
        assert_eq!(render("}}{{target}}{{", &vars(&l)), "}}web-1{{");
        assert_eq!(render("{{{target}}}", &vars(&l)), "{{{target}}}");
        assert_eq!(render("", &vars(&l)), "");
        assert_eq!(render("plain", &vars(&l)), "plain");
    }

    #[test]
    fn multibyte_text_is_safe() {
        let l = labels();
        assert_eq!(
            render("é{{target}}ü{{ümlaut}}{{", &vars(&l)),
            "éweb-1ü{{ümlaut}}{{"
        );
    }

    #[test]
    fn since_is_clamped_not_panicking() {
        assert_eq!(format_since(-5), "1970-01-01T00:00:00Z");
        assert_eq!(format_since(i64::MAX), "9999-12-31T23:59:59Z");
        assert_eq!(format_since(1_500), "1970-01-01T00:00:01Z");
    }

    #[test]
    fn random_templates_never_panic() {
        use rand::{Rng, SeedableRng};
        let l = labels();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let alphabet: Vec<char> = "{}ab. tlé".chars().collect();
        for _ in 0..2000 {
            let len = rng.random_range(0..24);
            let t: String = (0..len)
                .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                .collect();
            let mut v = vars(&l);
            v.since_ms = rng.random();
            let _ = render(&t, &v);
        }
    }
}
