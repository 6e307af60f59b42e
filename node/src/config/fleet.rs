//! `fleet.toml`: the targets and their checks. Parsing keeps spans so that every
//! error names the file, the line and the key; validation is pure and reports
//! every problem at once.
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

use super::checks::{validate_check, CheckSpec, VitalsCheck};
use super::duration::HumanDuration;
use super::error::{line_of, ConfigError, ConfigErrors};

/// Scrape interval when a target does not set one.
pub const DEFAULT_INTERVAL: HumanDuration = HumanDuration::from_secs(10);
/// Shortest interval accepted: below this a target costs more than it tells.
pub const MIN_INTERVAL: HumanDuration = HumanDuration::from_secs(1);
/// Longest interval accepted.
pub const MAX_INTERVAL: HumanDuration = HumanDuration::from_secs(24 * 3600);
/// SSH port when an address names none.
pub const DEFAULT_SSH_PORT: u16 = 22;

/// The whole fleet as applied with `herd apply`.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct FleetSpec {
    pub targets: Vec<TargetSpec>,
}

/// How commands reach a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TransportKind {
    /// A persistent SSH session (russh); each scrape is an exec channel on it.
    #[default]
    Ssh,
    /// The node's own host, without SSH.
    Local,
}

impl TransportKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TransportKind::Ssh => "ssh",
            TransportKind::Local => "local",
        }
    }
}

/// One monitored machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    /// Unique name: letters, digits, `.`, `_`, `-`.
    pub name: String,
    /// `host`, `host:port`, `[v6]:port`. Required for ssh.
    #[serde(default)]
    pub address: Option<String>,
    /// Login user; default: the node's `ssh.user`, else the node's own user.
    #[serde(default)]
    pub user: Option<String>,
    /// Private key for this target; default: the node's `ssh.key`, else ssh-agent.
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub transport: TransportKind,
    /// Default interval of the target's checks.
    #[serde(default = "default_interval")]
    pub interval: HumanDuration,
    /// Default per-command timeout; default: the node's `ssh.command_timeout`
    /// capped at the interval.
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
    /// Free labels, shown in status and used by rule selectors.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default = "default_checks")]
    pub checks: Vec<CheckSpec>,
}

fn default_interval() -> HumanDuration {
    DEFAULT_INTERVAL
}

fn default_checks() -> Vec<CheckSpec> {
    vec![CheckSpec::Vitals(VitalsCheck::default())]
}

/// Host and port of an address such as `web-1`, `10.0.0.5:2222` or `[::1]:22`.
pub fn parse_address(address: &str) -> Result<(String, u16), String> {
    let a = address.trim();
    if a.is_empty() {
        return Err("address is empty".into());
    }
    if let Some(rest) = a.strip_prefix('[') {
        let (host, tail) = rest
            .split_once(']')
            .ok_or_else(|| format!("address {a:?}: missing ']'"))?;
        let port = match tail.strip_prefix(':') {
            Some(p) => parse_port(a, p)?,
            None if tail.is_empty() => DEFAULT_SSH_PORT,
            None => return Err(format!("address {a:?}: unexpected text after ']'")),
        };
        return Ok((host.to_string(), port));
    }
    match a.matches(':').count() {
        0 => Ok((a.to_string(), DEFAULT_SSH_PORT)),
        1 => {
            let (host, port) = a.split_once(':').unwrap_or((a, ""));
            if host.is_empty() {
                return Err(format!("address {a:?}: host is empty"));
            }
            Ok((host.to_string(), parse_port(a, port)?))
        }
        // A bare IPv6 address: no port can be given without brackets.
        _ => Ok((a.to_string(), DEFAULT_SSH_PORT)),
    }
}

fn parse_port(address: &str, port: &str) -> Result<u16, String> {
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("address {address:?}: port {port:?} is not 1-65535")),
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// A problem found by validation, before it is given a line.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// Index of the target in the file.
    pub target: usize,
    /// Field of the target at fault, or None for the whole target.
    pub field: Option<&'static str>,
    pub message: String,
}

/// Pure validation of relations that types cannot express. Every problem is returned.
pub fn validate(targets: &[TargetSpec]) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    for (i, t) in targets.iter().enumerate() {
        let mut bad = |field: Option<&'static str>, message: String| {
            problems.push(Problem {
                target: i,
                field,
                message,
            })
        };
        if !valid_name(&t.name) {
            bad(
                Some("name"),
                format!(
                    "target name {:?} must be 1-253 letters, digits, '.', '_' or '-'",
                    t.name
                ),
            );
        } else if !seen.insert(&t.name) {
            bad(
                Some("name"),
                format!("target name {:?} is used twice", t.name),
            );
        }
        match (t.transport, &t.address) {
            (TransportKind::Ssh, None) => bad(
                Some("address"),
                format!("target {:?} uses ssh and needs an address", t.name),
            ),
            (_, Some(a)) => {
                if let Err(e) = parse_address(a) {
                    bad(Some("address"), e);
                }
            }
            (TransportKind::Local, None) => {}
        }
        if t.interval < MIN_INTERVAL || t.interval > MAX_INTERVAL {
            bad(
                Some("interval"),
                format!(
                    "interval {} is outside {}..{}",
                    t.interval, MIN_INTERVAL, MAX_INTERVAL
                ),
            );
        }
        if let Some(timeout) = t.timeout {
            if timeout.get().is_zero() || timeout > t.interval {
                bad(
                    Some("timeout"),
                    format!(
                        "timeout {timeout} must be above 0 and at most the interval {}",
                        t.interval
                    ),
                );
            }
        }
        if t.checks.is_empty() {
            bad(Some("checks"), "a target needs at least one check".into());
        }
        let mut names = BTreeSet::new();
        for c in &t.checks {
            for problem in validate_check(c) {
                bad(
                    Some("checks"),
                    format!("{} check {:?}: {problem}", c.kind(), c.name()),
                );
            }
            if !names.insert(c.name().to_string()) {
                bad(
                    Some("checks"),
                    format!("check name {:?} appears twice; give one a `name`", c.name()),
                );
            }
            let interval = c.interval().unwrap_or(t.interval);
            if interval < MIN_INTERVAL || interval > MAX_INTERVAL {
                bad(
                    Some("checks"),
                    format!(
                        "{} check interval {interval} is outside {MIN_INTERVAL}..{MAX_INTERVAL}",
                        c.name()
                    ),
                );
            }
            if let Some(timeout) = c.timeout() {
                if timeout.get().is_zero() || timeout > interval {
                    bad(
                        Some("checks"),
                        format!(
                            "{} check timeout {timeout} must be above 0 and at most its interval {interval}",
                            c.name()
                        ),
                    );
                }
            }
        }
        for name in t.labels.keys() {
            if !valid_name(name) {
                bad(
                    Some("labels"),
                    format!("label name {name:?} must be letters, digits, '.', '_' or '-'"),
                );
            }
        }
    }
    problems
}

/// Top-level sections that later work will add; named so the error says so plainly.
const NOT_YET_BUILT: &[(&str, &str)] = &[
    (
        "rule",
        "rules are not built yet (they come with the reactions work)",
    ),
    (
        "channel",
        "notification channels are not built yet (they come with the reactions work)",
    ),
];

/// Parses and validates a fleet spec. `source` names the file in errors.
pub fn parse_fleet(text: &str, source: &str) -> Result<FleetSpec, ConfigErrors> {
    let err = |offset: Option<usize>, key: String, message: String| ConfigError {
        source: source.to_string(),
        line: offset.map(|o| line_of(text, o)),
        key,
        message,
    };
    let root = DeTable::parse(text).map_err(|e| {
        ConfigErrors(vec![err(
            e.span().map(|s| s.start),
            String::new(),
            e.message().to_string(),
        )])
    })?;
    let mut errors = Vec::new();
    let mut targets: Vec<(TargetSpec, &Spanned<DeValue>)> = Vec::new();
    let mut raw_targets: Vec<&Spanned<DeValue>> = Vec::new();
    for (key, value) in root.get_ref() {
        let name = key.get_ref().as_ref();
        match name {
            "target" => match value.get_ref() {
                DeValue::Array(items) => raw_targets.extend(items.iter()),
                _ => errors.push(err(
                    Some(key.span().start),
                    "target".into(),
                    "must be an array of tables: write each target as [[target]]".into(),
                )),
            },
            _ => {
                let why = NOT_YET_BUILT
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, why)| why.to_string())
                    .unwrap_or_else(|| "unknown key; expected [[target]]".into());
                errors.push(err(Some(key.span().start), name.to_string(), why));
            }
        }
    }
    for (i, raw) in raw_targets.iter().enumerate() {
        let label = target_label(i, raw);
        match TargetSpec::deserialize(ValueDeserializer::from((*raw).clone())) {
            Ok(t) => targets.push((t, raw)),
            Err(e) => {
                let offset = e.span().unwrap_or(raw.span()).start;
                let key = match field_at(raw, offset) {
                    Some(f) => format!("{label}.{f}"),
                    None => label,
                };
                errors.push(err(Some(offset), key, e.message().to_string()))
            }
        }
    }
    let specs: Vec<TargetSpec> = targets.iter().map(|(t, _)| t.clone()).collect();
    for p in validate(&specs) {
        let raw = targets[p.target].1;
        let offset = p
            .field
            .and_then(|f| raw.get_ref().get(f))
            .map(|v| v.span().start)
            .unwrap_or(raw.span().start);
        let mut key = target_label(index_of(&raw_targets, raw), raw);
        if let Some(f) = p.field {
            key = format!("{key}.{f}");
        }
        errors.push(err(Some(offset), key, p.message));
    }
    if errors.is_empty() {
        Ok(FleetSpec { targets: specs })
    } else {
        errors.sort_by_key(|e| e.line);
        Err(ConfigErrors(errors))
    }
}

/// The field of a table whose key or value covers `offset`, to name it in an error.
fn field_at(raw: &Spanned<DeValue>, offset: usize) -> Option<String> {
    let table = raw.get_ref().as_table()?;
    table
        .iter()
        .find(|(k, v)| k.span().start <= offset && offset < v.span().end.max(k.span().end))
        .map(|(k, _)| k.get_ref().to_string())
}

fn index_of(all: &[&Spanned<DeValue>], one: &Spanned<DeValue>) -> usize {
    all.iter()
        .position(|r| std::ptr::eq(*r, one))
        .unwrap_or_default()
}

/// `target[3]` or `target[3] "web-1"` when the name is readable.
fn target_label(i: usize, raw: &Spanned<DeValue>) -> String {
    match raw.get_ref().get("name").and_then(|n| n.get_ref().as_str()) {
        Some(name) => format!("target[{i}] ({name})"),
        None => format!("target[{i}]"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_target_gets_defaults() {
        let spec = parse_fleet(
            "[[target]]\nname = \"web-1\"\naddress = \"10.0.0.5\"\n",
            "fleet.toml",
        )
        .unwrap();
        let t = &spec.targets[0];
        assert_eq!(t.interval, DEFAULT_INTERVAL);
        assert_eq!(t.transport, TransportKind::Ssh);
        assert_eq!(t.checks, default_checks());
    }

    #[test]
    fn every_error_is_reported_with_line_and_key() {
        let text = r#"
[[target]]
name = "a"
address = "h:99999"

[[target]]
name = "a"
transport = "local"
bogus = 1

[[target]]
name = "c"
transport = "local"
interval = "10x"

[[target]]
name = "d"
checks = [{ kind = "nope" }]

[[rule]]
"#;
        let errs = parse_fleet(text, "f.toml").unwrap_err().0;
        let shown: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        let all = shown.join("\n");
        assert!(all.contains("f.toml:4: target[0] (a).address"), "{all}");
        assert!(
            all.contains("f.toml:9: target[1] (a).bogus: unknown field"),
            "{all}"
        );
        assert!(
            all.contains("f.toml:14: target[2] (c).interval: invalid duration \"10x\""),
            "{all}"
        );
        assert!(
            all.contains("f.toml:18: target[3] (d).checks: unknown variant `nope`"),
            "{all}"
        );
        assert!(all.contains("f.toml:20: rule"), "{all}");
        assert_eq!(errs.len(), 5, "{all}");
    }

    #[test]
    fn duplicate_names_and_missing_address_are_found() {
        let text = "[[target]]\nname = \"x\"\n[[target]]\nname = \"x\"\ntransport = \"local\"\n";
        let all = parse_fleet(text, "f").unwrap_err().to_string();
        assert!(
            all.contains("f:1: target[0] (x).address: target \"x\" uses ssh and needs an address"),
            "{all}"
        );
        assert!(
            all.contains("f:4: target[1] (x).name") && all.contains("used twice"),
            "{all}"
        );
    }

    #[test]
    fn syntax_error_has_a_line() {
        let err = parse_fleet("[[target]]\nname = \n", "f").unwrap_err();
        assert_eq!(err.0[0].line, Some(2), "{err}");
    }

    #[test]
    fn addresses_parse() {
        assert_eq!(parse_address("h").unwrap(), ("h".into(), 22));
        assert_eq!(parse_address("h:2222").unwrap(), ("h".into(), 2222));
        assert_eq!(parse_address("[::1]:2200").unwrap(), ("::1".into(), 2200));
        assert_eq!(parse_address("::1").unwrap(), ("::1".into(), 22));
        assert!(parse_address("h:0").is_err());
        assert!(parse_address("[::1").is_err());
        assert!(parse_address(":22").is_err());
    }
}

#[cfg(test)]
mod example_tests {
    /// The shipped example must stay valid.
    #[test]
    fn shipped_example_is_valid() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/fleet.toml.example");
        let text = std::fs::read_to_string(&path).unwrap();
        let spec = super::parse_fleet(&text, "fleet.toml.example").unwrap();
        assert_eq!(spec.targets.len(), 2);
    }
}
