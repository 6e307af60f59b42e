//! Reactions end to end: rules, alerts and notifications of real `herd node`
//! processes, delivered to a real SMTP server (aiosmtpd) and a real HTTP receiver,
//! driven through the CLI (`herd alerts`, `ack`, `silence`) and by changing what
//! the checks see (files appear and vanish, sshd stops and starts).
//!
//! Most targets are the node's own host (`transport = "local"`) with file_fresh
//! checks on files in a temp dir of the test: a missing file is critical, a new one
//! is ok, so each test flips conditions at will within a scrape (1 s).
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use herd_tests::files::WatchedFiles as Files;
use herd_tests::{
    free_port, herd_cli, now_ms, phase, wait_for, Herd, HerdOptions, HttpReceiver, Mail, Received,
    SmtpServer, Sshd,
};
use serde_json::Value;

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// Longer than a channel's default group window (2 s) plus a worker round (1 s): a
/// notification that was going to go out has gone out by then.
const QUIET: Duration = Duration::from_millis(3500);

// ---------------------------------------------------------------------------------
// fleet.toml snippets

/// A local target scraped every second with one file_fresh check per
/// (check name, file name) pair; the files live in `files`.
fn fresh_target(name: &str, files: &Files, checks: &[(&str, &str)]) -> String {
    let list: Vec<String> = checks
        .iter()
        .map(|(check, file)| {
            format!(
                "  {{ kind = \"file_fresh\", name = \"{check}\", path = \"{}\", max_age = \"1h\" }},\n",
                files.path(file).display()
            )
        })
        .collect();
    format!(
        "[[target]]\nname = \"{name}\"\ntransport = \"local\"\ninterval = \"1s\"\nchecks = [\n{}]\n\n",
        list.concat()
    )
}

fn quoted(list: &[&str]) -> String {
    list.iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A range rule on a check with no bounds: fires while the check is not ok.
fn check_rule(name: &str, check: &str, channels: &[&str], extra: &str) -> String {
    format!(
        "[[rule]]\nname = \"{name}\"\ncheck = \"{check}\"\nkind = \"range\"\nchannels = [{}]\n{extra}\n",
        quoted(channels)
    )
}

/// A webhook channel (Herd's JSON document unless `extra` says otherwise).
fn webhook(name: &str, url: &str, extra: &str) -> String {
    format!("[[channel]]\nname = \"{name}\"\nkind = \"webhook\"\nurl = \"{url}\"\n{extra}\n")
}

// ---------------------------------------------------------------------------------
// herd alerts

/// `herd alerts --history 1h --json`.
fn alerts(herd: &Herd) -> Value {
    let text = herd.cli_ok(&["alerts", "--history", "1h", "--json"]);
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("`herd alerts --json` printed no JSON ({e}): {text}"))
}

/// The alert of `rule` in a `herd alerts --json` document.
fn alert_in(doc: &Value, rule: &str) -> Option<Value> {
    doc["alerts"]
        .as_array()?
        .iter()
        .find(|a| a["rule"] == rule)
        .cloned()
}

/// The transitions of `rule` in a `herd alerts --json` document, oldest first.
fn history_of(doc: &Value, rule: &str) -> Vec<Value> {
    let mut h: Vec<Value> = doc["history"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["rule"] == rule)
        .cloned()
        .collect();
    h.sort_by_key(|t| t["ts_ms"].as_i64().unwrap_or(0));
    h
}

/// Waits until the alert of `rule` satisfies `cond`; returns it.
fn wait_alert(
    herd: &Herd,
    rule: &str,
    what: &str,
    timeout: Duration,
    cond: impl Fn(&Value) -> bool,
) -> Value {
    wait_for(timeout, &format!("alert {rule}: {what}"), || {
        alert_in(&alerts(herd), rule).filter(|a| cond(a))
    })
}

fn state(a: &Value) -> &str {
    a["state"].as_str().unwrap_or_default()
}

fn transitions(a: &Value) -> u64 {
    a["transitions"].as_u64().unwrap_or(0)
}

fn id_of(a: &Value) -> String {
    a["id"].as_str().expect("an alert has an id").to_string()
}

// ---------------------------------------------------------------------------------
// What the receivers got

/// Every notification in the Herd JSON documents the receiver accepted (2xx), in
/// order of arrival (a document may group several).
fn notes(reqs: &[Received]) -> Vec<Value> {
    herd_tests::receiver::herd_notes(reqs)
}

/// The kinds of the notifications of `rule`, in order.
fn kinds_of(notes: &[Value], rule: &str) -> Vec<String> {
    notes
        .iter()
        .filter(|n| n["alert"]["rule"] == rule)
        .map(|n| n["kind"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Idempotency keys delivered, with how often each was delivered.
fn key_counts(notes: &[Value]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for n in notes {
        let k = n["idempotency_key"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        *m.entry(k).or_insert(0) += 1;
    }
    m
}

fn mails_with(mails: &[Mail], tag: &str) -> Vec<Mail> {
    mails
        .iter()
        .filter(|m| m.subject().contains(tag))
        .cloned()
        .collect()
}

// ---------------------------------------------------------------------------------
// 1. email

#[test]
fn email_arrives_with_recipients_subject_and_body() {
    phase!("a real SMTP server (aiosmtpd) and a node whose target misses its backup");
    let smtp = SmtpServer::start();
    let files = Files::new("herd-reactions-");
    let fleet = [
        fresh_target("db-1", &files, &[("backup", "db.dump")]),
        check_rule("backup-stale", "backup", &["mail"], ""),
        smtp.email_channel("mail", &["ops@example.test", "oncall@example.test"]),
    ]
    .concat();
    let herd = Herd::start(HerdOptions::default().fleet(fleet));

    phase!("one FIRING mail reaches both recipients");
    let mails = smtp.wait_for(SECS(20), "a FIRING mail arrived", |m| {
        !mails_with(m, "FIRING").is_empty()
    });
    let alert = alert_in(&alerts(&herd), "backup-stale").expect("herd alerts lists the alert");
    assert_eq!(state(&alert), "firing", "{alert}");
    let firing = mails_with(&mails, "FIRING");
    assert_eq!(firing.len(), 1, "one mail for both recipients");
    let m = &firing[0];
    let subject = m.subject();
    eprintln!("    subject: {subject}");
    assert!(
        subject.contains("backup-stale") && subject.contains("db-1"),
        "the subject names rule and target: {subject}"
    );
    let rcpt: BTreeSet<String> = m.envelope_to().into_iter().collect();
    assert_eq!(
        rcpt,
        BTreeSet::from(["oncall@example.test".to_string(), "ops@example.test".into()]),
        "envelope recipients"
    );
    let to = m.header("to").unwrap_or_default();
    assert!(
        to.contains("ops@example.test") && to.contains("oncall@example.test"),
        "To: {to}"
    );
    assert!(
        m.header("from")
            .unwrap_or_default()
            .contains("herd@example.test"),
        "From: {:?}",
        m.header("from")
    );
    let key = format!("{}:{}:mail", id_of(&alert), transitions(&alert));
    assert_eq!(
        m.header("x-herd-idempotency-key"),
        Some(key.as_str()),
        "idempotency key header"
    );
    assert!(
        m.header("content-type")
            .unwrap_or_default()
            .starts_with("multipart/alternative"),
        "Content-Type: {:?}",
        m.header("content-type")
    );
    let text = m.part("text/plain").expect("a text/plain part");
    assert!(
        text.contains("[FIRING] backup-stale on db-1"),
        "text part:\n{text}"
    );
    let html = m.part("text/html").expect("a text/html part");
    assert!(
        html.contains("<html") && html.contains("backup-stale") && html.contains("db-1"),
        "html part:\n{html}"
    );

    phase!("the backup appears: one RESOLVED mail");
    files.create("db.dump");
    smtp.wait_for(SECS(20), "a RESOLVED mail arrived", |m| {
        !mails_with(m, "RESOLVED").is_empty()
    });
    std::thread::sleep(QUIET);
    let mails = smtp.messages();
    assert_eq!(
        mails_with(&mails, "FIRING").len(),
        1,
        "still one FIRING mail"
    );
    let resolved = mails_with(&mails, "RESOLVED");
    assert_eq!(resolved.len(), 1, "one RESOLVED mail");
    assert_eq!(mails.len(), 2, "nothing else was sent");
    let r = &resolved[0];
    assert!(
        r.subject().contains("backup-stale") && r.subject().contains("db-1"),
        "{}",
        r.subject()
    );
    let key = format!("{}:{}:mail", id_of(&alert), transitions(&alert) + 1);
    assert_eq!(r.header("x-herd-idempotency-key"), Some(key.as_str()));
    assert_eq!(r.envelope_to().len(), 2, "to both recipients again");
    assert!(r
        .part("text/plain")
        .is_some_and(|t| t.contains("[RESOLVED] backup-stale on db-1")));
    assert!(r.part("text/html").is_some());
}

// ---------------------------------------------------------------------------------
// 2. webhook, Alertmanager, Slack, Telegram

#[test]
fn webhook_slack_telegram_and_alertmanager_shapes() {
    phase!("four receivers and a node with four channels on one rule");
    let hook = HttpReceiver::start();
    let am = HttpReceiver::start();
    let slack = HttpReceiver::start();
    let tg = HttpReceiver::start();
    let files = Files::new("herd-reactions-");
    // The harness passes no environment of its own to the node (HerdOptions has no
    // env), so the Slack URL and the bot token come from `{ file = ... }` secrets. An
    // `{ env = ... }` secret is still exercised: the node inherits the test's
    // environment, where cargo and nextest set CARGO_PKG_NAME (= "herd-tests"); the
    // json webhook sends it as its bearer token.
    let env_token = std::env::var("CARGO_PKG_NAME").ok();
    let hook_extra = match &env_token {
        Some(_) => "token = { env = \"CARGO_PKG_NAME\" }\n",
        None => "",
    };
    let slack_path = "/services/T0001/B0002/s3cr3tSlackPart";
    let slack_url = files.secret("slack-url", &slack.url(slack_path));
    let token = "123456:AAH-t0k3n_s3cr3t";
    let token_file = files.secret("tg-token", token);
    let fleet = [
        fresh_target("db-1", &files, &[("backup", "db.dump")]),
        check_rule(
            "backup-stale",
            "backup",
            &["hook", "am", "chat", "phone"],
            "severity = \"critical\"\nsummary = \"backup of {{target}} is stale\"\n",
        ),
        webhook("hook", &hook.url("/herd?src=test"), hook_extra),
        webhook("am", &am.url("/alertmanager"), "format = \"alertmanager\"\n"),
        format!("[[channel]]\nname = \"chat\"\nkind = \"slack\"\nurl = {{ file = \"{slack_url}\" }}\n\n"),
        format!(
            "[[channel]]\nname = \"phone\"\nkind = \"telegram\"\ntoken = {{ file = \"{token_file}\" }}\n\
             chat_id = \"-100123456\"\nbase_url = \"{}\"\n\n",
            tg.url("")
        ),
    ]
    .concat();
    let herd = Herd::start(HerdOptions::default().fleet(fleet));

    phase!("each receiver gets the firing notification once");
    for (name, rx) in [
        ("hook", &hook),
        ("am", &am),
        ("chat", &slack),
        ("phone", &tg),
    ] {
        rx.wait_for(SECS(20), &format!("{name} got a request"), |r| {
            !r.is_empty()
        });
    }
    let alert = alert_in(&alerts(&herd), "backup-stale").expect("the alert is listed");
    let id = id_of(&alert);
    let tr = transitions(&alert);

    phase!("webhook json: the idempotency key and notifications[].alert");
    let reqs = hook.requests();
    assert_eq!(reqs.len(), 1, "{}", herd_tests::receiver::describe(&reqs));
    let r = &reqs[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/herd?src=test");
    assert_eq!(r.header("content-type"), Some("application/json"));
    match &env_token {
        Some(t) => assert_eq!(
            r.header("authorization"),
            Some(format!("Bearer {t}").as_str()),
            "the token from the environment"
        ),
        None => eprintln!("    CARGO_PKG_NAME is not set: no env secret tested"),
    }
    let doc = r.json();
    let key = format!("{id}:{tr}:hook");
    assert_eq!(doc["version"], "1", "{doc}");
    assert_eq!(doc["idempotency_key"], key.as_str(), "{doc}");
    assert_eq!(r.header("idempotency-key"), Some(key.as_str()));
    let ns = doc["notifications"].as_array().expect("notifications[]");
    assert_eq!(ns.len(), 1, "{doc}");
    let n = &ns[0];
    assert_eq!(n["kind"], "firing");
    assert_eq!(n["channel"], "hook");
    assert_eq!(n["idempotency_key"], key.as_str());
    assert!(n["ts_ms"].as_i64().is_some_and(|t| t > 0), "{n}");
    let a = &n["alert"];
    for field in [
        "id",
        "rule",
        "target",
        "labels",
        "severity",
        "state",
        "since_ms",
        "active_since_ms",
        "value",
        "summary",
        "description",
        "transitions",
        "acked_by",
        "flapping",
    ] {
        assert!(a.get(field).is_some(), "alert.{field} is missing: {a}");
    }
    assert_eq!(a["id"], id.as_str());
    assert_eq!(a["rule"], "backup-stale");
    assert_eq!(a["target"], "db-1");
    assert_eq!(a["state"], "firing");
    assert_eq!(a["severity"], "critical");
    assert_eq!(a["summary"], "backup of db-1 is stale");
    assert_eq!(a["labels"]["check"], "backup", "{a}");
    assert_eq!(a["transitions"], tr);

    phase!("webhook alertmanager: version 4, labels, fingerprint");
    let reqs = am.requests();
    assert_eq!(reqs.len(), 1, "{}", herd_tests::receiver::describe(&reqs));
    assert_eq!(reqs[0].path, "/alertmanager");
    let doc = reqs[0].json();
    assert_eq!(doc["version"], "4", "{doc}");
    assert_eq!(doc["status"], "firing", "{doc}");
    assert_eq!(doc["receiver"], "am", "{doc}");
    assert_eq!(doc["groupLabels"]["alertname"], "backup-stale", "{doc}");
    assert!(doc["groupKey"].is_string(), "{doc}");
    let a0 = &doc["alerts"][0];
    assert_eq!(a0["status"], "firing", "{doc}");
    assert_eq!(a0["labels"]["alertname"], "backup-stale", "{doc}");
    assert_eq!(a0["labels"]["target"], "db-1", "{doc}");
    assert_eq!(a0["labels"]["severity"], "critical", "{doc}");
    assert_eq!(a0["fingerprint"], id.as_str(), "{doc}");
    assert_eq!(a0["annotations"]["summary"], "backup of db-1 is stale");
    assert_eq!(a0["endsAt"], "0001-01-01T00:00:00Z");
    assert!(a0["startsAt"].as_str().is_some_and(|s| s.ends_with('Z')));

    phase!("slack: {{\"text\": ...}} posted to the secret URL");
    let reqs = slack.requests();
    assert_eq!(reqs.len(), 1, "{}", herd_tests::receiver::describe(&reqs));
    assert_eq!(reqs[0].method, "POST");
    assert_eq!(reqs[0].path, slack_path);
    let doc = reqs[0].json();
    assert_eq!(
        doc.as_object().map(|o| o.len()),
        Some(1),
        "only text: {doc}"
    );
    assert_eq!(
        doc["text"], "*[FIRING]* backup-stale on db-1: backup of db-1 is stale",
        "{doc}"
    );

    phase!("telegram: POST /bot<token>/sendMessage with chat_id and text");
    let reqs = tg.requests();
    assert_eq!(reqs.len(), 1, "{}", herd_tests::receiver::describe(&reqs));
    assert_eq!(reqs[0].method, "POST");
    assert_eq!(reqs[0].path, format!("/bot{token}/sendMessage"));
    let doc = reqs[0].json();
    assert_eq!(doc["chat_id"], -100123456_i64, "{doc}");
    let text = doc["text"].as_str().unwrap_or_default();
    assert!(
        text.starts_with("[FIRING] backup-stale on db-1")
            && text.contains("backup of db-1 is stale"),
        "{text}"
    );

    phase!("the backup appears: each receiver gets the resolved notification");
    files.create("db.dump");
    for (name, rx) in [
        ("hook", &hook),
        ("am", &am),
        ("chat", &slack),
        ("phone", &tg),
    ] {
        rx.wait_for(SECS(20), &format!("{name} got a second request"), |r| {
            r.len() >= 2
        });
    }
    std::thread::sleep(QUIET);
    for (name, rx) in [
        ("hook", &hook),
        ("am", &am),
        ("chat", &slack),
        ("phone", &tg),
    ] {
        let reqs = rx.requests();
        assert_eq!(
            reqs.len(),
            2,
            "{name}: firing and resolved, nothing more:\n{}",
            herd_tests::receiver::describe(&reqs)
        );
    }
    let doc = hook.requests()[1].json();
    let n = &doc["notifications"][0];
    assert_eq!(n["kind"], "resolved", "{doc}");
    assert_eq!(n["alert"]["state"], "resolved", "{doc}");
    assert_eq!(n["idempotency_key"], format!("{id}:{}:hook", tr + 1));
    let doc = am.requests()[1].json();
    assert_eq!(doc["status"], "resolved", "{doc}");
    assert_eq!(doc["alerts"][0]["status"], "resolved", "{doc}");
    assert_eq!(doc["alerts"][0]["fingerprint"], id.as_str());
    assert_ne!(doc["alerts"][0]["endsAt"], "0001-01-01T00:00:00Z", "{doc}");
    let doc = slack.requests()[1].json();
    assert!(
        doc["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("*[RESOLVED]* backup-stale on db-1")),
        "{doc}"
    );
    let doc = tg.requests()[1].json();
    assert!(
        doc["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("[RESOLVED] backup-stale on db-1")),
        "{doc}"
    );

    phase!("the secrets never reach the node's log");
    let log = herd.log();
    assert!(!log.contains("s3cr3tSlackPart"), "the Slack URL is logged");
    assert!(!log.contains("t0k3n_s3cr3t"), "the bot token is logged");
}

// ---------------------------------------------------------------------------------
// 3. retries and fallbacks

#[test]
fn receiver_down_retries_then_fallback_delivers() {
    phase!("a receiver answering 500, one answering 400, a closed port, and a working fallback");
    let flaky = HttpReceiver::start();
    flaky.answer(500, "oops");
    let strict = HttpReceiver::start();
    strict.answer(400, "bad payload");
    let backup = HttpReceiver::start();
    let closed = free_port();
    let files = Files::new("herd-reactions-");
    let delivery = "max_attempts = 3\nbackoff = \"200ms\"\nfallback = [\"backup\"]\n";
    let fleet = [
        fresh_target(
            "app-1",
            &files,
            &[("a", "a.flag"), ("b", "b.flag"), ("c", "c.flag")],
        ),
        check_rule("retry-then-fallback", "a", &["flaky"], ""),
        check_rule("permanent-to-fallback", "b", &["strict"], ""),
        check_rule("refused-then-fallback", "c", &["gone"], ""),
        webhook("flaky", &flaky.url("/hook"), delivery),
        webhook("strict", &strict.url("/hook"), delivery),
        webhook(
            "gone",
            &format!("http://127.0.0.1:{closed}/hook"),
            "max_attempts = 2\nbackoff = \"200ms\"\nfallback = [\"backup\"]\n",
        ),
        webhook("backup", &backup.url("/backup"), ""),
    ]
    .concat();
    let herd = Herd::start(HerdOptions::default().fleet(fleet));

    phase!("the fallback gets each firing notification");
    let rules = [
        "retry-then-fallback",
        "permanent-to-fallback",
        "refused-then-fallback",
    ];
    backup.wait_for(SECS(25), "the fallback got all three", |r| {
        let n = notes(r);
        rules.iter().all(|rule| !kinds_of(&n, rule).is_empty())
    });
    std::thread::sleep(QUIET);

    phase!("exactly once each, with keys of the fallback channel");
    let doc = alerts(&herd);
    let n = notes(&backup.requests());
    for rule in rules {
        assert_eq!(
            kinds_of(&n, rule),
            vec!["firing"],
            "{rule} at the fallback:\n{}",
            herd_tests::receiver::describe(&backup.requests())
        );
        let a = alert_in(&doc, rule).expect("the alert is listed");
        let note = n.iter().find(|x| x["alert"]["rule"] == rule).unwrap();
        assert_eq!(note["channel"], "backup", "{note}");
        assert_eq!(
            note["idempotency_key"],
            format!("{}:{}:backup", id_of(&a), transitions(&a)),
            "{note}"
        );
    }
    let keys = key_counts(&n);
    assert!(keys.values().all(|c| *c == 1), "a duplicate: {keys:?}");

    phase!("500 was retried max_attempts = 3 times, 400 was tried once");
    let f = flaky.requests();
    assert_eq!(
        f.len(),
        3,
        "attempts at the 500 receiver:\n{}",
        herd_tests::receiver::describe(&f)
    );
    assert!(f.iter().all(|r| r.status == 500));
    let gaps: Vec<i64> = f.windows(2).map(|w| w[1].ts_ms - w[0].ts_ms).collect();
    eprintln!("    gaps between attempts: {gaps:?} ms (backoff 200ms doubling, 50-100% jitter)");
    assert!(
        gaps.iter().all(|g| *g >= 80),
        "retries wait for the backoff: {gaps:?}"
    );
    let s = strict.requests();
    assert_eq!(
        s.len(),
        1,
        "a permanent 400 is not retried:\n{}",
        herd_tests::receiver::describe(&s)
    );

    phase!("herd alerts shows an empty outbox");
    assert_eq!(doc["outbox"], 0, "{doc}");
    let table = herd.cli_ok(&["alerts"]);
    assert!(
        !table.contains("waiting for delivery"),
        "the table shows no waiting notifications:\n{table}"
    );
}

// ---------------------------------------------------------------------------------
// 4. kill -9 with a full outbox

/// Three alerts fire while the receiver answers 500; once each notification has
/// been tried and refused, the node is killed with `kill -9`, the receiver
/// recovers and the node restarts. Each queued notification must then arrive
/// exactly once, and the restored alerts must not fire again. `backoff` decides
/// whether the entries are due again right at the restart (short) or only a few
/// seconds after it (long).
fn kill9_scenario(backoff: &str) {
    phase!("the receiver answers 500; three alerts fire and queue (backoff {backoff})");
    let hook = HttpReceiver::start();
    hook.answer(500, "down for maintenance");
    let files = Files::new("herd-reactions-");
    let fleet = [
        fresh_target(
            "batch-1",
            &files,
            &[("job-1", "j1"), ("job-2", "j2"), ("job-3", "j3")],
        ),
        check_rule("job-1-stale", "job-1", &["hook"], ""),
        check_rule("job-2-stale", "job-2", &["hook"], ""),
        check_rule("job-3-stale", "job-3", &["hook"], ""),
        webhook(
            "hook",
            &hook.url("/hook"),
            &format!("max_attempts = 1000\nbackoff = \"{backoff}\"\nbackoff_max = \"{backoff}\"\n"),
        ),
    ]
    .concat();
    let rules = ["job-1-stale", "job-2-stale", "job-3-stale"];
    let mut herd = Herd::start(HerdOptions::default().fleet(fleet));
    let before = wait_for(
        SECS(20),
        "3 alerts firing and 3 notifications queued",
        || {
            let doc = alerts(&herd);
            let firing = rules
                .iter()
                .filter(|r| alert_in(&doc, r).is_some_and(|a| state(&a) == "firing"))
                .count();
            (firing == 3 && doc["outbox"].as_u64().unwrap_or(0) >= 3).then_some(doc)
        },
    );
    let expected: BTreeSet<String> = rules
        .iter()
        .map(|r| {
            let a = alert_in(&before, r).unwrap();
            format!("{}:{}:hook", id_of(&a), transitions(&a))
        })
        .collect();
    eprintln!("    queued: {expected:?}");
    hook.wait_for(
        SECS(15),
        "each queued notification was tried and refused (500)",
        |r| {
            let tried: BTreeSet<String> = r
                .iter()
                .flat_map(|x| {
                    x.json()["notifications"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                })
                .filter_map(|n| n["idempotency_key"].as_str().map(String::from))
                .collect();
            expected.is_subset(&tried)
        },
    );

    phase!("kill -9 the node; the receiver recovers; restart the node");
    herd.kill9();
    let refused = hook.requests().len();
    assert!(hook.accepted().is_empty(), "nothing was accepted yet");
    hook.answer_ok();
    let restarted = now_ms();
    herd.restart();

    phase!("each queued notification is delivered exactly once");
    hook.wait_for(SECS(25), "the 3 queued notifications arrived", |r| {
        let log = herd.log();
        if let Some(line) = log.lines().find(|l| l.contains("notification given up")) {
            panic!(
                "the restarted node dropped a queued notification (see \
                 kill9_with_notifications_due_at_restart_loses_none):\n{line}"
            );
        }
        let got: BTreeSet<String> = key_counts(&notes(r)).into_keys().collect();
        expected.is_subset(&got)
    });
    std::thread::sleep(QUIET);
    let reqs = hook.requests();
    let n = notes(&reqs);
    let counts = key_counts(&n);
    assert_eq!(
        counts.keys().cloned().collect::<BTreeSet<_>>(),
        expected,
        "exactly the queued notifications, nothing new:\n{}",
        herd_tests::receiver::describe(&reqs[refused..])
    );
    assert!(
        counts.values().all(|c| *c == 1),
        "each exactly once: {counts:?}"
    );
    assert!(n.iter().all(|x| x["kind"] == "firing"));
    assert!(
        !herd.log().contains("notification given up"),
        "the node gave a notification up"
    );

    phase!("the restored alerts continue: no new firing transition, the outbox is empty");
    let after = wait_for(SECS(10), "the outbox is empty", || {
        let doc = alerts(&herd);
        (doc["outbox"] == 0).then_some(doc)
    });
    for rule in rules {
        let a0 = alert_in(&before, rule).unwrap();
        let a1 = alert_in(&after, rule).expect("the alert survives the restart");
        assert_eq!(state(&a1), "firing", "{a1}");
        assert_eq!(
            transitions(&a1),
            transitions(&a0),
            "no new transition: {a1}"
        );
        assert_eq!(a1["since_ms"], a0["since_ms"], "{a1}");
        let firings: Vec<Value> = history_of(&after, rule)
            .into_iter()
            .filter(|t| t["to"] == "firing")
            .collect();
        assert_eq!(
            firings.len(),
            1,
            "{rule}: one firing transition: {firings:?}"
        );
        assert!(
            firings[0]["ts_ms"].as_i64().unwrap_or(0) < restarted,
            "{firings:?}"
        );
    }
}

/// The queued entries wait out a backoff of 6-12 s after their refused attempt, so
/// they become due only well after the restarted node is up (entries due at the
/// restart hit a Herd bug: see the next test).
#[test]
fn kill9_with_queued_notifications_delivers_each_exactly_once() {
    kill9_scenario("12s");
}

/// Herd bug (reported, not fixed here): with entries already due when the node
/// restarts, the outbox worker's first round can run before the rules task has
/// configured the channels (the node starts `Notifier::run` before
/// `rules::runner::run` calls `notifier.configure(...)`), so `Notifier::round` finds
/// no channel "hook", gives the entry up as "no such channel in the fleet spec" and
/// drops it: a queued notification is lost across kill -9 (invariant 5). Seen in
/// about 1 of 4 runs:
/// `"notification given up","channel":"hook","key":"40b3…:1:hook","reason":"no such channel in the fleet spec"`
/// 70 ms after the restart.
#[test]
fn kill9_with_notifications_due_at_restart_loses_none() {
    kill9_scenario("200ms");
}

// ---------------------------------------------------------------------------------
// 5. for, keep_firing_for, flapping

#[test]
fn for_hysteresis_and_flapping_on_real_samples() {
    phase!("rule `held`: for = 3s, keep_firing_for = 3s; rule `flappy`: flapping 3 in 30s");
    let hook = HttpReceiver::start();
    let files = Files::new("herd-reactions-");
    files.create("flap.flag");
    let fleet = [
        fresh_target(
            "web-1",
            &files,
            &[("slow", "slow.flag"), ("flap", "flap.flag")],
        ),
        check_rule(
            "held",
            "slow",
            &["hook"],
            "for = \"3s\"\nkeep_firing_for = \"3s\"\n",
        ),
        check_rule(
            "flappy",
            "flap",
            &["hook"],
            "flapping = { transitions = 3, window = \"30s\" }\n",
        ),
        webhook("hook", &hook.url("/hook"), ""),
    ]
    .concat();
    let herd = Herd::start(HerdOptions::default().fleet(fleet));

    phase!("`held` is pending first, and nothing is sent while it is");
    let pending = wait_alert(&herd, "held", "pending", SECS(15), |a| {
        state(a) == "pending"
    });
    assert!(
        kinds_of(&notes(&hook.requests()), "held").is_empty(),
        "no notification while pending"
    );

    phase!("`held` fires after 3 s of the condition, with one notification");
    let firing = wait_alert(&herd, "held", "firing", SECS(15), |a| state(a) == "firing");
    let active = firing["active_since_ms"].as_i64().unwrap();
    let fired = firing["since_ms"].as_i64().unwrap();
    eprintln!(
        "    pending at {}, condition since {active}, firing at {fired} (+{} ms)",
        pending["since_ms"],
        fired - active
    );
    assert!(fired - active >= 3000, "fired before `for`: {firing}");
    hook.wait_for(SECS(10), "the firing notification of held", |r| {
        kinds_of(&notes(r), "held") == ["firing"]
    });
    let n = notes(&hook.requests());
    let note = n.iter().find(|x| x["alert"]["rule"] == "held").unwrap();
    assert!(
        note["ts_ms"].as_i64().unwrap() - active >= 3000,
        "the notification is of the transition after `for`: {note}"
    );

    phase!("the condition clears for less than keep_firing_for: still firing, silent");
    files.create("slow.flag");
    let resolving = wait_alert(&herd, "held", "resolving", SECS(10), |a| {
        state(a) == "resolving"
    });
    files.remove("slow.flag");
    let back = wait_alert(&herd, "held", "firing again", SECS(10), |a| {
        state(a) == "firing" && transitions(a) > transitions(&resolving)
    });
    let gap = back["since_ms"].as_i64().unwrap() - resolving["since_ms"].as_i64().unwrap();
    eprintln!("    resolving for {gap} ms, then firing again");
    assert!(
        gap < 3000,
        "the blip was shorter than keep_firing_for: {gap} ms"
    );
    std::thread::sleep(QUIET);
    assert_eq!(
        kinds_of(&notes(&hook.requests()), "held"),
        vec!["firing"],
        "a blip under keep_firing_for notifies nobody"
    );

    phase!("the condition clears for good: resolved after keep_firing_for, one notification");
    files.create("slow.flag");
    let resolved = wait_alert(&herd, "held", "resolved", SECS(15), |a| {
        state(a) == "resolved"
    });
    let h = history_of(&alerts(&herd), "held");
    let last_resolving = h
        .iter()
        .rev()
        .find(|t| t["to"] == "resolving")
        .expect("a resolving transition");
    let held_for =
        resolved["since_ms"].as_i64().unwrap() - last_resolving["ts_ms"].as_i64().unwrap();
    eprintln!("    resolving lasted {held_for} ms");
    assert!(held_for >= 3000, "resolved before keep_firing_for: {h:?}");
    hook.wait_for(SECS(10), "the resolved notification of held", |r| {
        kinds_of(&notes(r), "held") == ["firing", "resolved"]
    });

    phase!("`flappy` toggles quickly: firing, resolved, then one flapping notice");
    // Each step waits until a scrape has seen the change (the alert's transition
    // counter moved), so every toggle is a real transition.
    let mut seen = 0u64;
    for (i, (missing, want)) in [
        (true, "firing"),
        (false, "resolved"),
        (true, "firing"),
        (false, "resolved"),
        (true, "firing"),
        (false, "resolved"),
    ]
    .into_iter()
    .enumerate()
    {
        if missing {
            files.remove("flap.flag");
        } else {
            files.create("flap.flag");
        }
        let a = wait_alert(
            &herd,
            "flappy",
            &format!("toggle {} -> {want}", i + 1),
            SECS(10),
            |a| state(a) == want && transitions(a) > seen,
        );
        seen = transitions(&a);
        eprintln!("    toggle {}: {want}, flapping = {}", i + 1, a["flapping"]);
        if i >= 2 {
            assert_eq!(a["flapping"], true, "flapping from the 3rd transition: {a}");
        }
    }
    std::thread::sleep(QUIET);
    let kinds = kinds_of(&notes(&hook.requests()), "flappy");
    eprintln!("    flappy notifications: {kinds:?}");
    assert_eq!(
        kinds,
        vec!["firing", "resolved", "flapping"],
        "one flapping notice, then quiet"
    );
    let table = herd.cli_ok(&["alerts"]);
    assert!(table.contains("(flapping)"), "the table marks it:\n{table}");
    // Observed: after the notice the alert stays marked flapping; it settles only
    // after a whole window (30 s) without a transition, which this test does not wait for.
}

// ---------------------------------------------------------------------------------
// 6. silences and acknowledgements

#[test]
fn silences_and_ack() {
    phase!("a node whose backup exists; the rule `guarded` is silenced before the condition");
    let hook = HttpReceiver::start();
    let files = Files::new("herd-reactions-");
    files.create("db.dump");
    let fleet = [
        fresh_target("db-1", &files, &[("backup", "db.dump")]),
        check_rule("guarded", "backup", &["hook"], ""),
        webhook("hook", &hook.url("/hook"), ""),
    ]
    .concat();
    let herd = Herd::start(HerdOptions::default().fleet(fleet));
    let out = herd.cli_ok(&[
        "silence",
        "add",
        "rule=guarded",
        "--for",
        "1h",
        "--reason",
        "test",
        "--by",
        "tester",
    ]);
    eprintln!("    {}", out.trim());
    let silence_id = out
        .split_whitespace()
        .nth(1)
        .expect("`silence ID on ...`")
        .to_string();
    // A selector that is not NAME=VALUE is refused by the node: exit 2, named.
    let bad = herd.cli(&["silence", "add", "web", "--for", "1h"]);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    let said = String::from_utf8_lossy(&bad.stderr);
    assert!(said.contains("\"web\" is not NAME=VALUE"), "{said}");
    let ls: Value = serde_json::from_str(&herd.cli_ok(&["silence", "ls", "--json"])).unwrap();
    let listed = ls["silences"].as_array().expect("silences[]");
    assert_eq!(listed.len(), 1, "{ls}");
    assert_eq!(listed[0]["id"], silence_id.as_str(), "{ls}");
    assert_eq!(listed[0]["selector"], "rule=guarded", "{ls}");
    assert_eq!(listed[0]["reason"], "test", "{ls}");
    assert!(
        listed[0]["until_ms"].as_i64().unwrap() > now_ms() + 3_500_000,
        "an hour: {ls}"
    );

    phase!("the backup vanishes: the alert fires, nobody is told, history says why");
    files.remove("db.dump");
    let alert = wait_alert(&herd, "guarded", "firing", SECS(15), |a| {
        state(a) == "firing"
    });
    std::thread::sleep(QUIET);
    assert!(
        hook.requests().is_empty(),
        "a silenced alert notified:\n{}",
        herd_tests::receiver::describe(&hook.requests())
    );
    let doc = alerts(&herd);
    let t = history_of(&doc, "guarded")
        .into_iter()
        .find(|t| t["to"] == "firing")
        .expect("a firing transition in the history");
    let suppressed = t["suppressed"].as_str().unwrap_or_default();
    assert!(
        suppressed.contains(&silence_id) && suppressed.contains("test"),
        "the history names the silence: {t}"
    );
    assert_eq!(doc["outbox"], 0, "nothing queued: {doc}");
    let table = herd.cli_ok(&["alerts", "--history", "1h"]);
    assert!(table.contains("silenced by"), "{table}");

    phase!("herd ack marks the alert acked");
    let id = id_of(&alert);
    let out = herd.cli_ok(&["ack", &id, "--by", "alice"]);
    assert!(
        out.contains("acknowledged") && out.contains("alice"),
        "{out}"
    );
    let acked = alert_in(&alerts(&herd), "guarded").unwrap();
    assert_eq!(acked["acked_by"], "alice", "{acked}");
    let table = herd.cli_ok(&["alerts"]);
    assert!(table.contains("acked by alice"), "{table}");
    let unknown = herd.cli(&["ack", "no-such-alert"]);
    assert!(!unknown.status.success(), "acking an unknown id fails");

    phase!("silence rm: later transitions notify again");
    let out = herd.cli_ok(&["silence", "rm", &silence_id]);
    assert!(out.contains("removed"), "{out}");
    let ls: Value = serde_json::from_str(&herd.cli_ok(&["silence", "ls", "--json"])).unwrap();
    assert_eq!(ls["silences"].as_array().map(Vec::len), Some(0), "{ls}");
    files.create("db.dump");
    hook.wait_for(SECS(15), "the resolved notification", |r| {
        kinds_of(&notes(r), "guarded") == ["resolved"]
    });
    let resolved = alert_in(&alerts(&herd), "guarded").unwrap();
    assert_eq!(state(&resolved), "resolved");
    assert!(
        resolved["acked_by"].is_null(),
        "resolving clears the ack: {resolved}"
    );
    files.remove("db.dump");
    hook.wait_for(SECS(15), "the next firing notification", |r| {
        kinds_of(&notes(r), "guarded") == ["resolved", "firing"]
    });
}

// ---------------------------------------------------------------------------------
// 7. dead-man and target-unreachable on a real SSH target

#[test]
fn dead_man_absence_on_a_real_target() {
    phase!("sshd, and a node scraping vitals at 1s with a dead-man on cpu.used_pct");
    let mut sshd = Sshd::start();
    let hook = HttpReceiver::start();
    let fleet = format!(
        "{}{}{}{}",
        herd_tests::ssh_target("box-1", &sshd.address(), "1s"),
        "[[rule]]\nname = \"cpu-silent\"\nmetric = \"cpu.used_pct\"\nkind = \"absence\"\n\
         for = \"4s\"\nchannels = [\"hook\"]\n\n",
        // Replaces the built-in (for = 60s) by name.
        "[[rule]]\nname = \"target-unreachable\"\nmetric = \"target.up\"\nkind = \"range\"\n\
         min = 1\nfor = \"2s\"\nseverity = \"critical\"\nchannels = [\"hook\"]\n\n",
        webhook("hook", &hook.url("/hook"), ""),
    );
    let mut herd = Herd::start(HerdOptions::with_sshd(&sshd).fleet(fleet));
    wait_for(SECS(20), "cpu.used_pct has points", || {
        (!herd.points("box-1", "cpu.used_pct").is_empty()).then_some(())
    });
    // The dead-man counts from the engine's start: on a very slow start (first cpu
    // sample more than 4 s later) it may rightly fire and resolve once. Only what
    // happens from the stop on is asserted; a start-up episode is reported.
    wait_for(SECS(15), "nothing fires while the target answers", || {
        let doc = alerts(&herd);
        ["cpu-silent", "target-unreachable"]
            .iter()
            .all(|r| alert_in(&doc, r).is_none_or(|a| state(&a) == "resolved"))
            .then_some(())
    });
    std::thread::sleep(QUIET);
    let baseline = hook.requests().len();
    if baseline > 0 {
        eprintln!(
            "    NOTE: notifications during start-up:\n{}",
            herd_tests::receiver::describe(&hook.requests())
        );
    }
    let since_stop = |r: &[Received]| notes(&r[baseline.min(r.len())..]);

    phase!("stop sshd: target-unreachable fires after 2 s, the dead-man after 4 s of silence");
    let stopped = now_ms();
    sshd.stop();
    hook.wait_for(SECS(20), "both firing notifications", |r| {
        let n = since_stop(r);
        kinds_of(&n, "cpu-silent") == ["firing"] && kinds_of(&n, "target-unreachable") == ["firing"]
    });
    let doc = alerts(&herd);
    let dead = alert_in(&doc, "cpu-silent").unwrap();
    let unreachable = alert_in(&doc, "target-unreachable").unwrap();
    assert_eq!(state(&dead), "firing", "{dead}");
    assert_eq!(dead["value"], "absent", "{dead}");
    assert_eq!(state(&unreachable), "firing", "{unreachable}");
    let last_cpu = herd
        .points("box-1", "cpu.used_pct")
        .last()
        .map(|p| p.0)
        .unwrap();
    let dead_at = dead["since_ms"].as_i64().unwrap();
    eprintln!(
        "    stopped at {stopped}, last cpu sample {last_cpu}, dead-man fired at {dead_at} (+{} ms after the last sample)",
        dead_at - last_cpu
    );
    assert!(
        dead_at - last_cpu >= 4000,
        "the dead-man waited `for` after the last sample"
    );
    let un_at = unreachable["since_ms"].as_i64().unwrap();
    let un_active = unreachable["active_since_ms"].as_i64().unwrap();
    assert!(
        un_at - un_active >= 2000,
        "target-unreachable waited its replaced `for` of 2s: {unreachable}"
    );
    assert!(
        un_at - stopped < 20_000,
        "the built-in's 60 s was replaced: {unreachable}"
    );

    phase!("restart sshd: both resolve");
    sshd.restart();
    hook.wait_for(SECS(25), "both resolved notifications", |r| {
        let n = since_stop(r);
        kinds_of(&n, "cpu-silent") == ["firing", "resolved"]
            && kinds_of(&n, "target-unreachable") == ["firing", "resolved"]
    });
    std::thread::sleep(QUIET);
    let n = since_stop(&hook.requests());
    assert_eq!(kinds_of(&n, "cpu-silent"), vec!["firing", "resolved"]);
    assert_eq!(
        kinds_of(&n, "target-unreachable"),
        vec!["firing", "resolved"]
    );
    assert!(herd.is_running());
}

// ---------------------------------------------------------------------------------
// 8. configuration errors

/// 1-based line of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} is not in the fleet"))
        + 1
}

#[test]
fn rule_and_channel_config_errors() {
    phase!("a fleet with four mistakes in its rules and channels");
    let dir = tempfile::tempdir().unwrap();
    let fleet = "\
[[target]]
name = \"db-1\"
transport = \"local\"
interval = \"1s\"
checks = [{ kind = \"file_fresh\", name = \"backup\", path = \"/nonexistent/db.dump\", max_age = \"1h\" }]

[[rule]]
name = \"to-nowhere\"
check = \"backup\"
kind = \"range\"
channels = [\"pager-that-does-not-exist\"]

[[rule]]
name = \"two-sources\"
metric = \"cpu.used_pct\"
event = \"log_match\"
kind = \"range\"
max = 90
channels = [\"a\"]

[[channel]]
name = \"a\"
kind = \"webhook\"
url = \"http://127.0.0.1:9/a\"
fallback = [\"b\"]

[[channel]]
name = \"b\"
kind = \"webhook\"
url = \"http://127.0.0.1:9/b\"
fallback = [\"a\"]

[[channel]]
name = \"mail\"
kind = \"email\"
smtp = \"127.0.0.1:25\"
tls = \"none\"
username = \"herd\"
password = \"hunter2\"
from = \"herd@example.test\"
to = [\"ops@example.test\"]
";
    let path = dir.path().join("fleet.toml");
    std::fs::write(&path, fleet).unwrap();
    let out = herd_cli(&["check", &path.display().to_string()], SECS(30));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("    stdout:\n{stdout}    stderr:\n{stderr}");
    assert_eq!(out.status.code(), Some(2), "herd check exits 2");
    let all = format!("{stdout}{stderr}");
    let file = path.display().to_string();
    let lines: Vec<&str> = all
        .lines()
        .filter(|l| l.starts_with(&format!("{file}:")))
        .collect();

    let at = |line: usize, needles: &[&str]| -> bool {
        let prefix = format!("{file}:{line}: ");
        lines
            .iter()
            .any(|l| l.starts_with(&prefix) && needles.iter().all(|n| l.contains(n)))
    };

    phase!("a rule naming an unknown channel: at its channels line");
    let l = line_of(fleet, "pager-that-does-not-exist");
    assert!(
        at(l, &["to-nowhere", "channels", "pager-that-does-not-exist"]),
        "expected {file}:{l}: ... in:\n{all}"
    );

    phase!("a rule with both metric and event: at the rule");
    let first = line_of(fleet, "name = \"two-sources\"") - 1;
    let last = line_of(fleet, "channels = [\"a\"]");
    assert!(
        (first..=last).any(|l| at(l, &["two-sources", "exactly one of metric, event"])),
        "expected a line between {first} and {last} in:\n{all}"
    );

    phase!("a fallback loop a -> b -> a: at the fallback line");
    let l = line_of(fleet, "fallback = [\"b\"]");
    assert!(
        at(l, &["(a).fallback", "loop", "a -> b -> a"]),
        "expected {file}:{l}: ... in:\n{all}"
    );

    phase!("an inline SMTP password is refused: secrets come from env or file only");
    let first = line_of(fleet, "name = \"mail\"") - 1;
    let last = line_of(fleet, "to = [\"ops@example.test\"]");
    let password_error = lines
        .iter()
        .find(|l| {
            (first..=last).any(|n| l.starts_with(&format!("{file}:{n}: "))) && l.contains("(mail)")
        })
        .unwrap_or_else(|| panic!("no error for the channel mail in:\n{all}"));
    eprintln!("    password error: {password_error}");
    assert!(
        password_error.contains("Secret")
            || password_error.contains("password")
            || password_error.contains("unknown field"),
        "{password_error}"
    );

    phase!("every error is one `file:line:` line, and the summary counts them");
    for l in &lines {
        let rest = &l[file.len() + 1..];
        let (n, _) = rest.split_once(':').expect("file:line:");
        assert!(n.parse::<usize>().is_ok(), "no line number: {l}");
    }
    // Today the loop is reported on both of its channels (5 lines); once is fine too.
    assert!((4..=5).contains(&lines.len()), "one line per error:\n{all}");
    assert!(
        all.contains(&format!("{} errors in", lines.len())),
        "the summary counts the lines: {all}"
    );
    assert!(
        !out.status.success() && stdout.trim().is_empty(),
        "errors go to stderr, nothing to stdout: {stdout}"
    );
}

/// Herd bug (reported, not fixed here): an inline `password = "..."` in an email
/// channel is refused, but the error (1) points at the channel's first line instead
/// of the password's, (2) names no key (`channel[2] (mail): invalid type: ...`, not
/// `channel[2] (mail).password: ...`), and (3) prints the secret itself
/// (`invalid type: string "hunter2", expected struct Secret`) to the terminal and
/// CI logs. Every error inside a `[[channel]]` table loses its key and line the
/// same way (the table is an internally tagged enum, so serde's error has no
/// span), e.g. `max_attempts = "x"` or an unknown key.
#[test]
fn inline_password_error_names_the_key_and_hides_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = "\
[[channel]]
name = \"mail\"
kind = \"email\"
smtp = \"127.0.0.1:25\"
tls = \"none\"
username = \"herd\"
password = \"hunter2-s3cr3t\"
from = \"herd@example.test\"
to = [\"ops@example.test\"]
";
    let path = dir.path().join("fleet.toml");
    std::fs::write(&path, fleet).unwrap();
    let out = herd_cli(&["check", &path.display().to_string()], SECS(30));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(
        !all.contains("hunter2-s3cr3t"),
        "the secret is printed:\n{all}"
    );
    let file = path.display().to_string();
    let l = line_of(fleet, "password =");
    assert!(
        all.lines()
            .any(|x| x.starts_with(&format!("{file}:{l}: channel[0] (mail).password: "))),
        "expected {file}:{l}: channel[0] (mail).password: ... in:\n{all}"
    );
}

#[test]
fn pausing_or_removing_a_target_resolves_its_firing_alert_visibly() {
    phase!("a backup that is missing: the alert fires");
    let hook = HttpReceiver::start();
    let files = Files::new("herd-reactions-");
    let rules_and_hook = [
        check_rule("backup-missing", "backup", &["hook"], ""),
        webhook("hook", &hook.url("/hook"), "group_window = \"0s\""),
    ]
    .concat();
    let with_target = [
        fresh_target("db-1", &files, &[("backup", "db.dump")]),
        rules_and_hook.clone(),
    ]
    .concat();
    let herd = Herd::start(HerdOptions::default().fleet(with_target));
    let kinds = |what: &str, want: &[&str]| {
        hook.wait_for(SECS(20), what, |r| {
            kinds_of(&notes(r), "backup-missing") == want
        })
    };
    kinds("FIRING", &["firing"]);

    phase!("pausing the target resolves the alert, saying why");
    herd.cli_ok(&["pause", "db-1", "--reason", "maintenance"]);
    let reqs = kinds("RESOLVED after the pause", &["firing", "resolved"]);
    let resolved = notes(&reqs)[1].clone();
    let text = resolved["alert"]["description"]
        .as_str()
        .unwrap_or_default();
    assert!(text.contains("target db-1 was paused"), "{resolved}");

    phase!("resumed, still missing: a new episode fires with a key never used");
    herd.cli_ok(&["resume", "db-1"]);
    kinds("FIRING again", &["firing", "resolved", "firing"]);

    phase!("the target leaves the fleet: its alert resolves, saying why");
    let path = herd.write_file("fleet", &rules_and_hook);
    herd.cli_ok(&["apply", &path.display().to_string()]);
    let reqs = kinds(
        "RESOLVED after the removal",
        &["firing", "resolved", "firing", "resolved"],
    );
    let last = notes(&reqs)[3].clone();
    let text = last["alert"]["description"].as_str().unwrap_or_default();
    assert!(
        text.contains("target db-1 was removed from the fleet"),
        "{last}"
    );
    std::thread::sleep(QUIET);
    let all = notes(&hook.requests());
    assert_eq!(all.len(), 4, "nothing more: {all:?}");
    assert!(
        key_counts(&all).values().all(|n| *n == 1),
        "every key once: {:?}",
        key_counts(&all)
    );
    let history = history_of(&alerts(&herd), "backup-missing");
    assert!(
        history.iter().filter(|t| t["to"] == "resolved").count() >= 2,
        "{history:?}"
    );
}

/// A rule with a slow action: its FIRING is queued with the transition and held
/// while the action runs. A node killed meanwhile loses nothing: started again, it
/// sends the FIRING once the hold ends (action timeout + 5 s), exactly once.
#[test]
fn a_node_killed_while_an_action_runs_still_sends_the_firing() {
    phase!("a missing backup fires a rule whose action runs for longer than its timeout");
    let hook = HttpReceiver::start();
    let files = Files::new("herd-reactions-");
    let fleet = [
        fresh_target("db-2", &files, &[("backup", "db.dump")]),
        check_rule(
            "slow-fix",
            "backup",
            &["hook"],
            "action = { run = \"sleep 30\", on = \"firing\", timeout = \"3s\", where = \"node\" }",
        ),
        webhook("hook", &hook.url("/hook"), "group_window = \"0s\""),
    ]
    .concat();
    let mut herd = Herd::start(HerdOptions::default().fleet(fleet));
    wait_alert(&herd, "slow-fix", "firing", SECS(20), |a| {
        state(a) == "firing"
    });

    phase!("kill -9 while the action runs; nothing was sent yet");
    herd.kill9();
    assert!(
        kinds_of(&notes(&hook.requests()), "slow-fix").is_empty(),
        "the FIRING waits for the action"
    );

    phase!("started again: the held FIRING goes out, once");
    herd.restart();
    hook.wait_for(SECS(30), "the FIRING of slow-fix", |r| {
        kinds_of(&notes(r), "slow-fix") == ["firing"]
    });
    std::thread::sleep(QUIET);
    let all = notes(&hook.requests());
    assert_eq!(kinds_of(&all, "slow-fix"), ["firing"], "exactly once");
}
