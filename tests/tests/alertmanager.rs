//! Alertmanager as a receiver, end to end: three real `herd node` processes, local
//! targets whose file_fresh check watches a file of the test (a missing file is
//! critical), the `alertmanager` channel posting to the real Alertmanager
//! (Debian's `prometheus-alertmanager`) and to a second URL where nothing listens
//! (an HA pair with one member down), and Alertmanager's own webhook receiver, a
//! real HTTP receiver.
//!
//! What is tried to be broken: the alert appears in Alertmanager with its labels,
//! annotations and link (API v2 and `amtool`), stays active because its owner
//! posts it again, stays ONE alert with the same start across a `kill -9` of its
//! owner (the new owner goes on posting it), and is resolved there when Herd
//! resolves it. The bounds only catch hangs.
use std::time::Duration;

use herd_tests::alertmanager::Alertmanager;
use herd_tests::cluster::Cluster;
use herd_tests::files::WatchedFiles as Files;
use herd_tests::{free_port, now_ms, phase, wait_for, wait_until, HerdOptions, HttpReceiver};
use serde_json::Value;

/// Hang catcher for an alert to reach Alertmanager, a takeover, a resolve.
const BOUND: Duration = Duration::from_secs(40);

const RULE: &str = "backup-stale";
const CHECK: &str = "backup";

/// Herd's re-send interval of the channel; an alert posted ends 4 of them later.
const RESEND_S: i64 = 2;

fn fleet_toml(fleet: &[String], files: &Files, am: &Alertmanager, dead_am: &str) -> String {
    let mut text = String::new();
    for t in fleet {
        text.push_str(&format!(
            "[[target]]\nname = \"{t}\"\ntransport = \"local\"\ninterval = \"1s\"\nchecks = [\n  \
             {{ kind = \"file_fresh\", name = \"{CHECK}\", path = \"{}\", max_age = \"1h\" }},\n]\n\n",
            files.path(t).display()
        ));
    }
    text.push_str(&format!(
        "[[rule]]\nname = \"{RULE}\"\ncheck = \"{CHECK}\"\nkind = \"range\"\nfor = \"0s\"\n\
         severity = \"critical\"\nchannels = [\"am\"]\nsummary = \"backup of {{{{ target }}}} is stale\"\n\n\
         [[channel]]\nname = \"am\"\nkind = \"alertmanager\"\nurls = [\"{}\", \"{dead_am}\"]\n\
         resend = \"{RESEND_S}s\"\ngroup_window = \"0s\"\n\n",
        am.url
    ));
    text
}

/// The one alert Alertmanager lists for `target`; panics naming them when several.
fn am_alert(am: &Alertmanager, target: &str) -> Option<Value> {
    let alerts = am.alerts_with("target", target);
    assert!(
        alerts.len() <= 1,
        "Alertmanager lists ONE alert for {target}, not {}: {alerts:#?}",
        alerts.len()
    );
    alerts.into_iter().next()
}

/// An RFC 3339 time of Alertmanager's as Unix ms.
fn ms(v: &Value) -> i64 {
    let text = v.as_str().unwrap_or_else(|| panic!("a time: {v}"));
    humantime::parse_rfc3339_weak(text)
        .map(|t| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64)
        .unwrap_or_else(|e| panic!("time {text:?}: {e}"))
}

/// Alertmanager's webhook notifications for `target` with `status`.
fn am_notes(hook: &HttpReceiver, target: &str, status: &str) -> usize {
    hook.accepted()
        .iter()
        .map(|r| r.json())
        .filter(|d| {
            d["status"] == status
                && d["alerts"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|a| a["labels"]["target"] == target))
        })
        .count()
}

#[test]
fn alerts_reach_alertmanager_stay_one_across_a_takeover_and_resolve_there() {
    phase!("Alertmanager with a webhook receiver; three nodes; six watched files");
    let hook = HttpReceiver::start();
    let am = Alertmanager::start(&hook.url("/am"));
    let dead_am = format!("http://127.0.0.1:{}", free_port());
    let files = Files::new("herd-am-");
    let fleet: Vec<String> = (1..=6).map(|i| format!("am-{i}")).collect();
    for t in &fleet {
        files.create(t);
    }
    let mut cluster = Cluster::start(3, HerdOptions::default());
    cluster.apply(1, &fleet_toml(&fleet, &files, &am, &dead_am));
    cluster.wait_until_all_owned_and_scraped(&fleet, 5.0, BOUND);
    let leader = cluster.wait_leader(BOUND);
    let (victim, owned) = cluster.status().busiest_follower(leader, &fleet);
    let target = owned
        .first()
        .unwrap_or_else(|| panic!("follower {victim} owns a target"))
        .clone();

    phase!("{target}'s file vanishes (owner: node {victim}): the alert reaches Alertmanager");
    files.remove(&target);
    let first = wait_for(BOUND, "Alertmanager lists the alert", || {
        am_alert(&am, &target)
    });
    eprintln!("    {first}");
    assert_eq!(first["labels"]["alertname"], RULE, "{first}");
    assert_eq!(first["labels"]["severity"], "critical", "{first}");
    assert_eq!(first["status"]["state"], "active", "{first}");
    assert_eq!(
        first["annotations"]["summary"],
        format!("backup of {target} is stale").as_str(),
        "{first}"
    );
    let link = first["generatorURL"].as_str().unwrap_or_default();
    assert!(
        link.starts_with("http://127.0.0.1:") && link.ends_with(&format!("/#target={target}")),
        "generatorURL links the target on the owner's dashboard: {link}"
    );
    let starts = ms(&first["startsAt"]);
    let fingerprint = first["fingerprint"].clone();
    let query = am.amtool_query(&format!("alertname={RULE}"));
    assert!(
        query.contains(RULE) && query.contains("backup of"),
        "amtool alert query lists it:\n{query}"
    );
    wait_until(
        BOUND,
        "Alertmanager's webhook tells the firing alert",
        || am_notes(&hook, &target, "firing") >= 1,
    );

    phase!("the owner posts it again: its end moves on");
    let ends = ms(&first["endsAt"]);
    wait_until(BOUND, "the alert's end moved past the first one", || {
        am_alert(&am, &target).is_some_and(|a| ms(&a["endsAt"]) > ends)
    });

    phase!("kill -9 node {victim}: the new owner goes on posting the same alert");
    let killed_at = cluster.kill9(victim);
    cluster.wait_owner_moved(&target, victim, BOUND);
    // An end later than the kill + 4 intervals was posted after the kill: by the
    // new owner.
    let posted_after = killed_at + 4 * RESEND_S * 1000;
    let after = wait_for(BOUND, "the alert was posted again after the kill", || {
        am_alert(&am, &target).filter(|a| ms(&a["endsAt"]) > posted_after)
    });
    assert_eq!(after["fingerprint"], fingerprint, "the same alert: {after}");
    assert_eq!(ms(&after["startsAt"]), starts, "its start is kept: {after}");
    assert_eq!(after["status"]["state"], "active", "{after}");

    phase!("the file comes back: the alert is resolved in Alertmanager");
    files.create(&target);
    let resolved_from = now_ms();
    wait_until(
        BOUND,
        "Alertmanager no longer lists the alert as active",
        || am.alerts_with("target", &target).is_empty(),
    );
    wait_until(BOUND, "Alertmanager's webhook tells the resolve", || {
        am_notes(&hook, &target, "resolved") >= 1
    });
    eprintln!(
        "    resolved in Alertmanager {} ms after the file came back",
        now_ms() - resolved_from
    );
    let firing = am_notes(&hook, &target, "firing");
    assert_eq!(
        firing, 1,
        "Alertmanager told the alert once (one alert across the takeover)"
    );
    drop(am);
}
