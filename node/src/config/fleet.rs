//! `fleet.toml`: the targets and their checks. Parsing keeps spans so that every
//! error names the file, the line and the key; validation is pure and reports
//! every problem at once.
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

use super::channels::{ChannelSpec, Routes};
use super::checks::{validate_check, CheckSpec, VitalsCheck};
use super::duration::HumanDuration;
use super::error::{line_of, ConfigError, ConfigErrors};
use super::remote_write::RemoteWriteSpec;
use super::rules::RuleSpec;
use crate::model::net::AddressError;

/// Scrape interval when a target does not set one.
pub const DEFAULT_INTERVAL: HumanDuration = HumanDuration::from_secs(10);
/// Shortest interval accepted: below this a target costs more than it tells.
pub const MIN_INTERVAL: HumanDuration = HumanDuration::from_secs(1);
/// Longest interval accepted.
pub const MAX_INTERVAL: HumanDuration = HumanDuration::from_secs(24 * 3600);
/// SSH port when an address names none.
pub const DEFAULT_SSH_PORT: u16 = 22;

/// The grammar of fleet specs this build reads: a spec that says `version = N`
/// with a larger N was written for a newer Herd and is refused whole (with a
/// clear error), rather than read in part.
pub const GRAMMAR_VERSION: i64 = 1;

/// The whole fleet as applied with `herd apply`.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct FleetSpec {
    pub targets: Vec<TargetSpec>,
    pub rules: Vec<RuleSpec>,
    pub channels: Vec<ChannelSpec>,
    pub routes: Routes,
    /// `[[remote_write]]`: long-term stores each node feeds.
    pub remote_write: Vec<super::remote_write::RemoteWriteSpec>,
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

/// Host and port of an address such as `web-1`, `10.0.0.5:2222` or `[::1]:22`,
/// the SSH port where it gives none.
pub fn parse_address(address: &str) -> Result<(String, u16), AddressError> {
    crate::model::net::parse_host_port(address, DEFAULT_SSH_PORT)
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
    /// For `checks`: which check.
    pub index: Option<usize>,
    pub message: String,
}

/// Pure validation of relations that types cannot express. Every problem is returned.
pub fn validate(targets: &[TargetSpec]) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    for (i, t) in targets.iter().enumerate() {
        let mut bad = |index: Option<usize>, field: Option<&'static str>, message: String| {
            problems.push(Problem {
                target: i,
                field,
                index,
                message,
            })
        };
        if !valid_name(&t.name) {
            bad(
                None,
                Some("name"),
                format!(
                    "target name {:?} must be 1-253 letters, digits, '.', '_' or '-'",
                    t.name
                ),
            );
        } else if !seen.insert(&t.name) {
            bad(
                None,
                Some("name"),
                format!("target name {:?} is used twice", t.name),
            );
        } else if t.name.starts_with(crate::model::MACHINE_PREFIX) {
            bad(
                None,
                Some("name"),
                format!(
                    "target name {:?}: names starting with {:?} are the herd's own machines",
                    t.name,
                    crate::model::MACHINE_PREFIX
                ),
            );
        }
        match (t.transport, &t.address) {
            (TransportKind::Ssh, None) => bad(
                None,
                Some("address"),
                format!("target {:?} uses ssh and needs an address", t.name),
            ),
            (_, Some(a)) => {
                if let Err(e) = parse_address(a) {
                    bad(None, Some("address"), e.to_string());
                }
            }
            (TransportKind::Local, None) => {}
        }
        if t.interval < MIN_INTERVAL || t.interval > MAX_INTERVAL {
            bad(
                None,
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
                    None,
                    Some("timeout"),
                    format!(
                        "timeout {timeout} must be above 0 and at most the interval {}",
                        t.interval
                    ),
                );
            }
        }
        if t.checks.is_empty() {
            bad(
                None,
                Some("checks"),
                "a target needs at least one check".into(),
            );
        }
        let mut names = BTreeSet::new();
        for (ci, c) in t.checks.iter().enumerate() {
            for problem in validate_check(c) {
                bad(
                    Some(ci),
                    Some("checks"),
                    format!("{} check {:?}: {problem}", c.kind(), c.name()),
                );
            }
            if !names.insert(c.name().to_string()) {
                bad(
                    Some(ci),
                    Some("checks"),
                    format!(
                        "two checks are named {:?}; give each its own `name`",
                        c.name()
                    ),
                );
            }
            let interval = c.interval().unwrap_or(t.interval);
            if interval < MIN_INTERVAL || interval > MAX_INTERVAL {
                bad(
                    Some(ci),
                    Some("checks"),
                    format!(
                        "{} check interval {interval} is outside {MIN_INTERVAL}..{MAX_INTERVAL}",
                        c.name()
                    ),
                );
            }
            if let Some(timeout) = c.timeout() {
                if timeout.get().is_zero() || timeout > interval {
                    bad(Some(ci),
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
                    None,
                    Some("labels"),
                    format!("label name {name:?} must be letters, digits, '.', '_' or '-'"),
                );
            }
        }
    }
    problems
}

/// One item of an array section with the span it came from, for error lines.
struct Item<'r, 'i, T> {
    spec: T,
    raw: &'r Spanned<DeValue<'i>>,
    label: String,
}

/// Deserializes each item of an array section on its own, so that one bad item
/// does not hide the errors of the others.
fn items<'r, 'i, T: serde::de::DeserializeOwned>(
    section: &str,
    raws: &[&'r Spanned<DeValue<'i>>],
    errors: &mut Vec<(usize, String, String)>,
) -> Vec<Item<'r, 'i, T>> {
    let mut out = Vec::new();
    for (i, raw) in raws.iter().enumerate() {
        let label = item_label(section, i, raw);
        match T::deserialize(ValueDeserializer::from((*raw).clone())) {
            Ok(spec) => out.push(Item { spec, raw, label }),
            Err(e) => {
                let offset = e.span().unwrap_or(raw.span()).start;
                let key = match field_at(raw, offset) {
                    Some(f) => format!("{label}.{f}"),
                    None => label,
                };
                errors.push((offset, key, e.message().to_string()));
            }
        }
    }
    out
}

/// Like `items`, for `kind`-tagged tables: each is deserialized straight into its
/// kind's struct, so that errors keep the line and key of the field at fault (serde's
/// tagged enums buffer the table and lose both), and a value is never echoed (an
/// inline secret must not reach a terminal or a CI log).
fn tagged_items<'r, 'i>(
    section: &str,
    raws: &[&'r Spanned<DeValue<'i>>],
    errors: &mut Vec<(usize, String, String)>,
) -> Vec<Item<'r, 'i, ChannelSpec>> {
    use super::channels::{
        AlertmanagerChannel, AsanaChannel, CommandChannel, EmailChannel, NatsChannel, SlackChannel,
        TelegramChannel, WebhookChannel,
    };
    let mut out = Vec::new();
    for (i, raw) in raws.iter().enumerate() {
        let label = item_label(section, i, raw);
        let kind_of = raw.get_ref().get("kind");
        let kind = kind_of
            .and_then(|k| k.get_ref().as_str())
            .unwrap_or_default();
        let table: toml::de::DeTable = match raw.get_ref().as_table() {
            Some(t) => t
                .iter()
                .filter(|(k, _)| k.get_ref().as_ref() != "kind")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            None => {
                errors.push((raw.span().start, label, "must be a table".into()));
                continue;
            }
        };
        let value = Spanned::new(raw.span(), DeValue::Table(table));
        fn de<T: serde::de::DeserializeOwned>(
            v: Spanned<DeValue<'_>>,
        ) -> Result<T, toml::de::Error> {
            T::deserialize(ValueDeserializer::from(v))
        }
        let parsed = match kind {
            "email" => de::<EmailChannel>(value).map(ChannelSpec::Email),
            "webhook" => de::<WebhookChannel>(value).map(ChannelSpec::Webhook),
            "slack" => de::<SlackChannel>(value).map(ChannelSpec::Slack),
            "telegram" => de::<TelegramChannel>(value).map(ChannelSpec::Telegram),
            "command" => de::<CommandChannel>(value).map(ChannelSpec::Command),
            "asana" => de::<AsanaChannel>(value).map(ChannelSpec::Asana),
            "nats" => de::<NatsChannel>(value).map(ChannelSpec::Nats),
            "alertmanager" => de::<AlertmanagerChannel>(value).map(ChannelSpec::Alertmanager),
            other => {
                let offset = kind_of.map(|k| k.span().start).unwrap_or(raw.span().start);
                let why = if other.is_empty() {
                    "missing `kind`: one of email, webhook, slack, telegram, command, asana, nats, alertmanager"
                        .to_string()
                } else {
                    format!("unknown kind {other:?}: one of email, webhook, slack, telegram, command, asana, nats, alertmanager")
                };
                errors.push((offset, format!("{label}.kind"), why));
                continue;
            }
        };
        match parsed {
            Ok(spec) => out.push(Item { spec, raw, label }),
            Err(e) => {
                let offset = e.span().unwrap_or(raw.span()).start;
                let key = match field_at(raw, offset) {
                    Some(f) => format!("{label}.{f}"),
                    None => label,
                };
                let mut message = without_values(e.message());
                if message.contains("struct Secret") {
                    message.push_str(
                        "; secrets come from the environment or a file: { env = \"VAR\" } or { file = \"/path\" }",
                    );
                }
                errors.push((offset, key, message));
            }
        }
    }
    out
}

/// serde's "invalid type: string \"...\"" quotes the value; say only its type.
fn without_values(message: &str) -> String {
    match message.split_once(" \"") {
        Some((head, rest)) if head.starts_with("invalid type") => match rest.split_once("\", ") {
            Some((_, tail)) => format!("{head}, {tail}"),
            None => head.to_string(),
        },
        _ => message.to_string(),
    }
}

/// Line offset of `field` of an item (or of the item).
fn at<T>(item: &Item<'_, '_, T>, field: Option<&str>) -> usize {
    field
        .and_then(|f| item.raw.get_ref().get(f))
        .map(|v| v.span().start)
        .unwrap_or(item.raw.span().start)
}

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
    // (byte offset, key, message)
    let mut errors: Vec<(usize, String, String)> = Vec::new();
    let sections = sections(root.get_ref(), &mut errors);
    let targets: Vec<Item<TargetSpec>> = items("target", &sections.targets, &mut errors);
    let rules: Vec<Item<RuleSpec>> = items("rule", &sections.rules, &mut errors);
    let channels: Vec<Item<ChannelSpec>> = tagged_items("channel", &sections.channels, &mut errors);
    let remotes: Vec<Item<RemoteWriteSpec>> =
        items("remote_write", &sections.remote_write, &mut errors);

    let specs: Vec<TargetSpec> = targets.iter().map(|t| t.spec.clone()).collect();
    check_targets(&targets, &specs, &mut errors);
    let channel_names = check_channels(&channels, &mut errors);
    check_routes(
        &sections.routes,
        sections.routes_at,
        &channel_names,
        &mut errors,
    );
    check_rules(&rules, &channel_names, &mut errors);
    check_remotes(&remotes, &mut errors);

    if errors.is_empty() {
        Ok(FleetSpec {
            targets: specs,
            rules: rules.into_iter().map(|r| r.spec).collect(),
            channels: channels.into_iter().map(|c| c.spec).collect(),
            routes: sections.routes,
            remote_write: remotes.into_iter().map(|r| r.spec).collect(),
        })
    } else {
        errors.sort_by_key(|e| e.0);
        Err(ConfigErrors(
            errors
                .into_iter()
                .map(|(offset, key, message)| err(Some(offset), key, message))
                .collect(),
        ))
    }
}

/// The top-level sections of a fleet spec: the items of the array sections, not
/// yet deserialized, and `[routes]`.
struct Sections<'r, 'i> {
    targets: Vec<&'r Spanned<DeValue<'i>>>,
    rules: Vec<&'r Spanned<DeValue<'i>>>,
    channels: Vec<&'r Spanned<DeValue<'i>>>,
    remote_write: Vec<&'r Spanned<DeValue<'i>>>,
    routes: Routes,
    /// Where `[routes]` starts, for the errors of its channel names.
    routes_at: usize,
}

/// Sorts the top-level keys into their sections; a section of the wrong shape or
/// an unknown key is an error.
fn sections<'r, 'i>(
    root: &'r DeTable<'i>,
    errors: &mut Vec<(usize, String, String)>,
) -> Sections<'r, 'i> {
    let mut out = Sections {
        targets: Vec::new(),
        rules: Vec::new(),
        channels: Vec::new(),
        remote_write: Vec::new(),
        routes: Routes::default(),
        routes_at: 0,
    };
    for (key, value) in root {
        let name = key.get_ref().as_ref();
        let into = match name {
            "target" => Some(&mut out.targets),
            "rule" => Some(&mut out.rules),
            "channel" => Some(&mut out.channels),
            "remote_write" => Some(&mut out.remote_write),
            _ => None,
        };
        if let Some(into) = into {
            match value.get_ref() {
                DeValue::Array(items) => into.extend(items.iter()),
                _ => errors.push((
                    key.span().start,
                    name.to_string(),
                    format!("must be an array of tables: write each as [[{name}]]"),
                )),
            }
            continue;
        }
        match name {
            "version" => match value.get_ref() {
                DeValue::Integer(i) => match i.to_string().parse::<i64>() {
                    Ok(v) if (1..=GRAMMAR_VERSION).contains(&v) => {}
                    Ok(v) if v > GRAMMAR_VERSION => errors.push((
                        value.span().start,
                        "version".into(),
                        format!(
                            "this spec is written in fleet grammar version {v}; this herd reads \
                             version {GRAMMAR_VERSION} and older: upgrade every node first"
                        ),
                    )),
                    _ => errors.push((
                        value.span().start,
                        "version".into(),
                        format!("must be a grammar version from 1 to {GRAMMAR_VERSION}"),
                    )),
                },
                _ => errors.push((
                    value.span().start,
                    "version".into(),
                    format!("must be an integer (the fleet grammar version, {GRAMMAR_VERSION})"),
                )),
            },
            "routes" => {
                out.routes_at = key.span().start;
                match Routes::deserialize(ValueDeserializer::from(value.clone())) {
                    Ok(r) => out.routes = r,
                    Err(e) => errors.push((
                        e.span().unwrap_or(value.span()).start,
                        "routes".into(),
                        e.message().to_string(),
                    )),
                }
            }
            _ => errors.push((
                key.span().start,
                name.to_string(),
                "unknown key; expected version, [[target]], [[rule]], [[channel]], [routes] or \
                 [[remote_write]]"
                    .into(),
            )),
        }
    }
    out
}

/// The targets' problems (`validate`), each at the field (or list entry) at fault.
fn check_targets(
    targets: &[Item<TargetSpec>],
    specs: &[TargetSpec],
    errors: &mut Vec<(usize, String, String)>,
) {
    for p in validate(specs) {
        let t = &targets[p.target];
        let key = match (p.field, p.index) {
            (Some(f), Some(i)) => format!("{}.{f}[{i}]", t.label),
            (Some(f), None) => format!("{}.{f}", t.label),
            _ => t.label.clone(),
        };
        let offset = match (p.field, p.index) {
            (Some(f), Some(i)) => t
                .raw
                .get_ref()
                .get(f)
                .and_then(|v| v.get_ref().as_array())
                .and_then(|a| a.get(i))
                .map(|v| v.span().start)
                .unwrap_or_else(|| at(t, p.field)),
            _ => at(t, p.field),
        };
        errors.push((offset, key, p.message));
    }
}

/// The channels' own problems, names used twice, fallbacks to no channel and
/// fallback loops; returns the channel names.
fn check_channels<'a>(
    channels: &'a [Item<ChannelSpec>],
    errors: &mut Vec<(usize, String, String)>,
) -> BTreeSet<&'a str> {
    let mut channel_names: BTreeSet<&str> = BTreeSet::new();
    for c in channels {
        for problem in c.spec.validate() {
            errors.push((at(c, None), c.label.clone(), problem));
        }
        if !channel_names.insert(c.spec.name()) {
            errors.push((
                at(c, Some("name")),
                format!("{}.name", c.label),
                format!("channel name {:?} is used twice", c.spec.name()),
            ));
        }
    }
    for c in channels {
        for f in &c.spec.delivery().fallback {
            if !channel_names.contains(f.as_str()) {
                errors.push((
                    at(c, Some("fallback")),
                    format!("{}.fallback", c.label),
                    format!("no channel named {f:?}"),
                ));
            }
        }
        if let Some(cycle) = fallback_cycle(c.spec.name(), channels) {
            errors.push((
                at(c, Some("fallback")),
                format!("{}.fallback", c.label),
                format!("fallbacks loop: {cycle}"),
            ));
        }
    }
    channel_names
}

/// The remotes' own problems and names used twice.
fn check_remotes(remotes: &[Item<RemoteWriteSpec>], errors: &mut Vec<(usize, String, String)>) {
    let mut names = BTreeSet::new();
    for r in remotes {
        for problem in r.spec.validate() {
            errors.push((at(r, None), r.label.clone(), problem));
        }
        if !names.insert(r.spec.name.as_str()) {
            errors.push((
                at(r, Some("name")),
                format!("{}.name", r.label),
                format!("remote_write name {:?} is used twice", r.spec.name),
            ));
        }
    }
}

/// Routes to no channel (their line is that of `[routes]`).
fn check_routes(
    routes: &Routes,
    routes_at: usize,
    channel_names: &BTreeSet<&str>,
    errors: &mut Vec<(usize, String, String)>,
) {
    for (severity, list) in [
        ("default", &routes.default),
        ("critical", &routes.critical),
        ("warning", &routes.warning),
        ("info", &routes.info),
        ("quorum_loss", &routes.quorum_loss),
    ] {
        for ch in list {
            if !channel_names.contains(ch.as_str()) {
                errors.push((
                    routes_at,
                    format!("routes.{severity}"),
                    format!("no channel named {ch:?}"),
                ));
            }
        }
    }
}

/// The rules' own problems, names used twice, and channels that do not exist.
fn check_rules(
    rules: &[Item<RuleSpec>],
    channel_names: &BTreeSet<&str>,
    errors: &mut Vec<(usize, String, String)>,
) {
    let mut rule_names = BTreeSet::new();
    for r in rules {
        for problem in r.spec.validate() {
            errors.push((at(r, None), r.label.clone(), problem));
        }
        if !rule_names.insert(r.spec.name.as_str()) {
            errors.push((
                at(r, Some("name")),
                format!("{}.name", r.label),
                format!("rule name {:?} is used twice", r.spec.name),
            ));
        }
        for ch in &r.spec.channels {
            if !channel_names.contains(ch.as_str()) {
                errors.push((
                    at(r, Some("channels")),
                    format!("{}.channels", r.label),
                    format!("no channel named {ch:?}"),
                ));
            }
        }
    }
}

/// A loop in the fallback chains starting at `start`, written `a -> b -> a`.
fn fallback_cycle(start: &str, channels: &[Item<'_, '_, ChannelSpec>]) -> Option<String> {
    fn walk<'a>(
        name: &'a str,
        channels: &'a [Item<'_, '_, ChannelSpec>],
        path: &mut Vec<&'a str>,
    ) -> Option<String> {
        if path.contains(&name) {
            path.push(name);
            return Some(path.join(" -> "));
        }
        path.push(name);
        let c = channels.iter().find(|c| c.spec.name() == name)?;
        for f in &c.spec.delivery().fallback {
            let f: &str = channels
                .iter()
                .find(|c| c.spec.name() == f)
                .map(|c| c.spec.name())?;
            if let Some(cycle) = walk(f, channels, path) {
                return Some(cycle);
            }
        }
        path.pop();
        None
    }
    walk(start, channels, &mut Vec::new()).filter(|c| c.starts_with(start))
}

/// The field of a table whose key or value covers `offset`, to name it in an error.
fn field_at(raw: &Spanned<DeValue>, offset: usize) -> Option<String> {
    let table = raw.get_ref().as_table()?;
    table
        .iter()
        .find(|(k, v)| k.span().start <= offset && offset < v.span().end.max(k.span().end))
        .map(|(k, _)| k.get_ref().to_string())
}

/// `target[3]` or `target[3] (web-1)` when the name is readable.
fn item_label(section: &str, i: usize, raw: &Spanned<DeValue>) -> String {
    match raw.get_ref().get("name").and_then(|n| n.get_ref().as_str()) {
        Some(name) => format!("{section}[{i}] ({name})"),
        None => format!("{section}[{i}]"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alertmanager_channel_parses_and_its_errors_name_the_key() {
        let ok = "[[channel]]\nname = \"am\"\nkind = \"alertmanager\"\n\
                  urls = [\"http://am-1:9093\", \"http://am-2:9093/\"]\n";
        let spec = parse_fleet(ok, "f.toml").unwrap();
        let ChannelSpec::Alertmanager(a) = &spec.channels[0] else {
            panic!("{:?}", spec.channels[0]);
        };
        assert_eq!(a.urls.len(), 2);
        assert_eq!(a.resend(), std::time::Duration::from_secs(60));
        let bad = "[[channel]]\nname = \"am\"\nkind = \"alertmanager\"\nurls = []\n\
                   resend = \"100ms\"\nexternal_url = \"ftp://x\"\n";
        let all = parse_fleet(bad, "f.toml").unwrap_err().to_string();
        assert!(all.contains("f.toml:1: channel[0] (am)"), "{all}");
        assert!(
            all.contains("urls needs at least one Alertmanager URL"),
            "{all}"
        );
        assert!(all.contains("resend must be 1s or more"), "{all}");
        assert!(all.contains("external_url"), "{all}");
        let unknown = "[[channel]]\nname = \"x\"\nkind = \"pager\"\n";
        let all = parse_fleet(unknown, "f.toml").unwrap_err().to_string();
        assert!(all.contains("nats, alertmanager"), "{all}");
    }

    #[test]
    fn remote_write_parses_and_its_errors_name_the_item() {
        let ok = "[[remote_write]]\nname = \"vm\"\nurl = \"http://vm:8428/api/v1/write\"\n\
                  metrics = [\"cpu.*\"]\nlabels = { herd = \"eu-1\" }\n";
        let spec = parse_fleet(ok, "f.toml").unwrap();
        let r = &spec.remote_write[0];
        assert!(r.selects("web-1", "cpu.used_pct"));
        assert!(!r.selects("web-1", "disk.used_pct"));
        assert_eq!(r.max_queue_bytes(), 256 * 1024 * 1024);
        let bad = "[[remote_write]]\nname = \"vm\"\nurl = \"vm:8428\"\n\
                   labels = { \"bad-name\" = \"x\", target = \"y\" }\nusername = \"u\"\n\
                   max_samples_per_send = 0\nmax_shards = 65\n\n\
                   [[remote_write]]\nname = \"vm\"\nurl = \"http://x\"\nqueue = 1\n";
        let all = parse_fleet(bad, "f.toml").unwrap_err().to_string();
        for want in [
            "f.toml:1: remote_write[0] (vm)",
            "url",
            "\"bad-name\" is not a label name",
            "\"target\" is set by Herd",
            "username and password go together",
            "max_samples_per_send must be 1 or more",
            "max_shards must be 1 to 64",
            "remote_write[1] (vm).queue: unknown field",
        ] {
            assert!(all.contains(want), "{want:?} in:\n{all}");
        }
    }

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
        assert!(all.contains("f.toml:20: rule[0]"), "{all}");
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
        assert!(parse_address("[]:22").is_err(), "now an error: no host");
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

#[cfg(test)]
mod grammar_tests {
    use super::*;

    const TARGET: &str = "[[target]]\nname = \"a\"\ntransport = \"local\"\n";

    #[test]
    fn a_spec_may_say_its_grammar_version_and_a_newer_one_is_refused_whole() {
        assert!(parse_fleet(&format!("version = 1\n{TARGET}"), "f.toml").is_ok());
        assert!(parse_fleet(TARGET, "f.toml").is_ok(), "version is optional");
        let e = parse_fleet(&format!("# fleet\nversion = 2\n{TARGET}"), "f.toml").unwrap_err();
        assert_eq!(e.0.len(), 1, "{e:?}");
        assert_eq!(e.0[0].key, "version");
        assert_eq!(e.0[0].line, Some(2));
        assert!(e.0[0].message.contains("version 2"), "{}", e.0[0].message);
        assert!(
            e.0[0].message.contains("upgrade every node"),
            "{}",
            e.0[0].message
        );
        for bad in ["version = 0", "version = \"1\""] {
            let e = parse_fleet(&format!("{bad}\n{TARGET}"), "f.toml").unwrap_err();
            assert_eq!(e.0[0].key, "version", "{bad}: {e:?}");
        }
    }
}
