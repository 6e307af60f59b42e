//! The HTTP face, end to end: a real `herd node` with an API token, its `node.http`
//! port asked with the real `curl`. Every answer is compared with what the CLI
//! prints for the same question (one service layer: the same documents), and every
//! refusal is checked for its status code and its JSON error.
use std::process::Command;
use std::time::Duration;

use herd_tests::files::WatchedFiles;
use herd_tests::process::{run_bounded, LineStream};
use herd_tests::prometheus::Prometheus;
use herd_tests::{
    local_target, local_target_with, phase, ssh_target, toml_str, wait_for, wait_until, Cluster,
    Herd, HerdOptions, HttpReceiver, Sshd,
};
use serde_json::Value;

const TOKEN: &str = "faces-test-token-51c9";
const BOUND: Duration = Duration::from_secs(30);

/// One HTTP exchange: status code and body as JSON.
struct Answer {
    code: u16,
    body: Value,
    headers: String,
}

/// `curl -X METHOD [-H auth] [--data-binary BODY] http://ADDR PATH`.
fn curl(herd: &Herd, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> Answer {
    let dir = tempfile::tempdir().expect("a temp dir");
    let headers = dir.path().join("headers");
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-S", "--max-time", "20", "-X", method])
        .arg("-D")
        .arg(&headers)
        .args(["-o", "-", "-w", "\n%{http_code}"]);
    if let Some(t) = token {
        cmd.arg("-H").arg(format!("Authorization: Bearer {t}"));
    }
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/toml", "--data-binary", b]);
    }
    cmd.arg(format!("http://{}{path}", herd.http_addr()));
    let out = run_bounded(&mut cmd, Duration::from_secs(30));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl {method} {path} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, code) = text
        .rsplit_once('\n')
        .expect("curl printed the status code");
    let body: Value = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("{method} {path}: the body is not JSON ({e}): {body}"));
    Answer {
        code: code.trim().parse().expect("a status code"),
        body,
        headers: std::fs::read_to_string(headers).unwrap_or_default(),
    }
}

fn get(herd: &Herd, path: &str) -> Answer {
    curl(herd, "GET", path, Some(TOKEN), None)
}

/// The error document of a refusal: status in it equal to the answer's.
fn error_of(a: &Answer, code: u16, what: &str) -> Value {
    assert_eq!(a.code, code, "{what}: {}", a.body);
    let e = a.body["error"].clone();
    assert_eq!(e["status"], code, "{what}: {}", a.body);
    assert!(
        e["code"].is_string() && e["message"].is_string(),
        "{what}: {}",
        a.body
    );
    e
}

#[test]
fn rest_answers_what_the_cli_answers_and_refuses_clearly() {
    let herd = Herd::start(
        HerdOptions::default()
            .api_token(TOKEN)
            .fleet(local_target("box", "1s")),
    );

    phase!("no token, a wrong token: 401, a JSON error and WWW-Authenticate");
    let a = curl(&herd, "GET", "/herd/v1/status", None, None);
    let e = error_of(&a, 401, "no token");
    assert_eq!(e["code"], "unauthenticated");
    assert!(
        a.headers
            .to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{}",
        a.headers
    );
    let a = curl(&herd, "GET", "/herd/v1/status", Some("wrong"), None);
    error_of(&a, 401, "a wrong token");
    let a = curl(&herd, "GET", "/herd/v1/watch", None, None);
    error_of(&a, 401, "the event stream without a token");
    let a = curl(&herd, "GET", "/api/v1/query?query=1", None, None);
    assert_eq!(
        a.code, 401,
        "the Prometheus API without a token: {}",
        a.body
    );
    assert_eq!(a.body["errorType"], "unauthorized", "{}", a.body);
    let a = curl(&herd, "GET", "/api/v1/query?query=1%2B1", Some(TOKEN), None);
    assert_eq!(
        a.body["data"]["result"][1], "2",
        "with the token: {}",
        a.body
    );

    phase!("status: the document `herd status --json` prints");
    wait_for(BOUND, "box is scraped", || {
        herd.target_status("box")
            .filter(|t| t["up"] == true)
            .map(|_| ())
    });
    let a = get(&herd, "/herd/v1/status");
    assert_eq!(a.code, 200, "{}", a.body);
    let cli = herd.status_json();
    let keys = |v: &Value| {
        v.as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let mut http_keys = keys(&a.body);
    http_keys.retain(|k| k != "page");
    assert_eq!(
        http_keys,
        keys(&cli),
        "the CLI's document, plus the page it lists"
    );
    assert_eq!(a.body["page"]["total"], 1, "{}", a.body["page"]);
    assert_eq!(a.body["page"]["states"]["up"], 1, "{}", a.body["page"]);
    assert_eq!(a.body["node_id"], cli["node_id"]);
    let a2 = get(&herd, "/herd/v1/status?target=nothing-like-it&limit=10");
    assert_eq!(a2.body["targets"], serde_json::json!([]), "{}", a2.body);
    assert_eq!(a2.body["page"]["matched"], 0);
    assert_eq!(a2.body["page"]["total"], 1);
    let a2 = curl(
        &herd,
        "GET",
        "/herd/v1/status?state=asleep",
        Some(TOKEN),
        None,
    );
    let e = error_of(&a2, 400, "a state that does not exist");
    assert!(
        e["message"].as_str().unwrap_or_default().contains("asleep"),
        "{e}"
    );
    let names: Vec<&str> = a.body["targets"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(names.contains(&"box"), "{names:?}");

    phase!("query: the same series and points as `herd query --json`");
    let points = wait_for(BOUND, "cpu.used_pct has two points", || {
        let a = get(
            &herd,
            "/herd/v1/query?target=box&metric=cpu.used_pct&since=10m",
        );
        assert_eq!(a.code, 200, "{}", a.body);
        let n = a.body["series"][0]["points"].as_array().map_or(0, Vec::len);
        (n >= 2).then_some(a.body)
    });
    let first = points["series"][0]["points"][0].clone();
    let cli = herd.query_json("box", "cpu.used_pct");
    assert!(
        cli["series"][0]["points"]
            .as_array()
            .unwrap()
            .contains(&first),
        "the CLI shows the point {first} too"
    );
    let a = get(
        &herd,
        "/herd/v1/query?target=box&metric=disk.used_pct&label=mount%3D%2F&since=10m",
    );
    assert_eq!(a.code, 200, "{}", a.body);
    for s in a.body["series"].as_array().unwrap() {
        assert_eq!(s["labels"]["mount"], "/", "the label matcher applies: {s}");
    }
    let a = get(
        &herd,
        "/herd/v1/query?target=box&metric=cpu.used_pct&rollup=minute&since=10m",
    );
    assert_eq!(a.code, 200, "{}", a.body);
    assert_eq!(a.body["rollup"], "minute", "{}", a.body);

    phase!("bad input: 400 naming the parameter; unknown target and route: 404");
    let e = error_of(&get(&herd, "/herd/v1/query?target=box"), 400, "no metric");
    assert!(e["message"].as_str().unwrap().contains("metric"), "{e}");
    let e = error_of(
        &get(&herd, "/herd/v1/query?target=box&metric=x&since=soon"),
        400,
        "bad since",
    );
    assert!(e["message"].as_str().unwrap().contains("since"), "{e}");
    let e = error_of(
        &get(&herd, "/herd/v1/query?target=nosuch&metric=cpu.used_pct"),
        404,
        "unknown target",
    );
    assert_eq!(e["code"], "not_found");
    error_of(&get(&herd, "/herd/v1/nothing-here"), 404, "unknown route");

    phase!("apply: a bad spec is 400 with one item per problem, file:line: key: message");
    let bad = "[[target]]\nname = \"\"\ntransport = \"local\"\ninterval = \"fast\"\nchecks = [{ kind = \"vitals\" }]\n";
    let a = curl(
        &herd,
        "POST",
        "/herd/v1/apply?source=bad.toml",
        Some(TOKEN),
        Some(bad),
    );
    let e = error_of(&a, 400, "a bad spec");
    let items: Vec<&str> = e["items"]
        .as_array()
        .unwrap_or_else(|| panic!("items in {e}"))
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        !items.is_empty() && items.iter().all(|i| i.starts_with("bad.toml:")),
        "{items:?}"
    );
    phase!("apply: a good spec is applied like `herd apply`");
    let good = format!(
        "{}{}",
        local_target("box", "1s"),
        local_target("box-2", "1s")
    );
    let a = curl(
        &herd,
        "POST",
        "/herd/v1/apply?source=good.toml",
        Some(TOKEN),
        Some(&good),
    );
    assert_eq!(a.code, 200, "{}", a.body);
    assert_eq!(a.body["added"], serde_json::json!(["box-2"]), "{}", a.body);
    wait_for(BOUND, "box-2 is listed", || herd.target_status("box-2"));

    phase!("silences: add, list, remove");
    let a = curl(
        &herd,
        "POST",
        "/herd/v1/silences?selector=target%3Dbox-2&for=1h&reason=maintenance&by=faces-test",
        Some(TOKEN),
        None,
    );
    assert_eq!(a.code, 200, "{}", a.body);
    let id = a.body["silences"][0]["id"]
        .as_str()
        .expect("a silence id")
        .to_string();
    let list = get(&herd, "/herd/v1/silences");
    assert_eq!(list.body["silences"][0]["id"], id.as_str(), "{}", list.body);
    assert_eq!(list.body["silences"][0]["created_by"], "faces-test");
    let cli = herd.cli_ok(&["silence", "ls"]);
    assert!(cli.contains(&id), "the CLI lists it too: {cli}");
    let e = error_of(
        &curl(
            &herd,
            "POST",
            "/herd/v1/silences?selector=bogus&for=1h",
            Some(TOKEN),
            None,
        ),
        400,
        "a bad selector",
    );
    assert!(e["message"].as_str().unwrap().contains("bogus"), "{e}");
    let a = curl(
        &herd,
        "DELETE",
        &format!("/herd/v1/silences/{id}"),
        Some(TOKEN),
        None,
    );
    assert_eq!(a.code, 200, "{}", a.body);
    assert_eq!(
        get(&herd, "/herd/v1/silences").body["silences"],
        serde_json::json!([])
    );

    phase!("pause and resume a target; events and alerts answer");
    let a = curl(
        &herd,
        "POST",
        "/herd/v1/targets/box-2/pause?for=1h&reason=test",
        Some(TOKEN),
        None,
    );
    assert_eq!(a.code, 200, "{}", a.body);
    wait_for(BOUND, "box-2 shows paused", || {
        herd.target_status("box-2")
            .filter(|t| t["paused"].is_object())
            .map(|_| ())
    });
    let a = curl(
        &herd,
        "POST",
        "/herd/v1/targets/box-2/resume",
        Some(TOKEN),
        None,
    );
    assert_eq!(a.code, 200, "{}", a.body);
    let e = error_of(
        &curl(
            &herd,
            "POST",
            "/herd/v1/targets/nosuch/pause",
            Some(TOKEN),
            None,
        ),
        404,
        "pausing an unknown target",
    );
    assert_eq!(e["code"], "not_found");
    let a = get(&herd, "/herd/v1/events?since=1h&limit=50");
    assert_eq!(a.code, 200, "{}", a.body);
    assert!(
        a.body["events"].as_array().is_some_and(|e| !e.is_empty()),
        "{}",
        a.body
    );
    let a = get(&herd, "/herd/v1/alerts?history=1h");
    assert_eq!(a.code, 200, "{}", a.body);
    assert!(
        a.body["alerts"].is_array() && a.body["history"].is_array(),
        "{}",
        a.body
    );
}

/// `curl` of a text route: status code and body.
fn curl_text(herd: &Herd, path: &str, token: Option<&str>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "-S",
        "--max-time",
        "20",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
    ]);
    if let Some(t) = token {
        cmd.arg("-H").arg(format!("Authorization: Bearer {t}"));
    }
    cmd.arg(format!("http://{}{path}", herd.http_addr()));
    let out = run_bounded(&mut cmd, Duration::from_secs(30));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text
        .rsplit_once('\n')
        .expect("curl printed the status code");
    (
        code.trim().parse().expect("a status code"),
        body.to_string(),
    )
}

use herd_tests::metric_sample as sample;

#[test]
fn metrics_pass_promtool_and_say_what_the_node_does() {
    // A target over a real sshd, a rule that fires on box at once, and two webhook
    // channels: one to a real receiver, one to a closed port with one attempt.
    let mut sshd = Sshd::start();
    let hook = HttpReceiver::start();
    let down = HttpReceiver::start_down();
    let fleet = format!(
        "{}{}[[rule]]\nname = \"cpu-seen\"\ntargets = [\"box\"]\nmetric = \"cpu.used_pct\"\n\
         kind = \"range\"\nmax = -1\nchannels = [\"hook\", \"dead\"]\n\n\
         [[channel]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\ngroup_window = \"0s\"\n\n\
         [[channel]]\nname = \"dead\"\nkind = \"webhook\"\nurl = \"{}\"\ngroup_window = \"0s\"\n\
         max_attempts = 1\ntimeout = \"2s\"\n\n",
        local_target("box", "1s"),
        ssh_target("remote", &sshd.address(), "1s"),
        hook.url("/hook"),
        down.url("/hook"),
    );
    let herd = Herd::start(HerdOptions::with_sshd(&sshd).api_token(TOKEN).fleet(fleet));
    phase!("/metrics needs the token like every route");
    let (code, _) = curl_text(&herd, "/metrics", None);
    assert_eq!(code, 401);

    phase!("/metrics: the node's own health");
    let text = wait_for(
        BOUND,
        "/metrics shows box and remote up, a notification delivered and one given up",
        || {
            let (code, text) = curl_text(&herd, "/metrics", Some(TOKEN));
            assert_eq!(code, 200, "{text}");
            (sample(&text, "herd_target_up{target=\"box\"}") == Some(1.0)
                && sample(&text, "herd_target_up{target=\"remote\"}") == Some(1.0)
                && sample(
                    &text,
                    "herd_notifications_delivered_total{channel=\"hook\"}",
                ) == Some(1.0)
                && sample(&text, "herd_notifications_given_up_total{channel=\"dead\"}")
                    == Some(1.0))
            .then_some(text)
        },
    );
    eprintln!("{text}");
    assert_eq!(sample(&text, "herd_up"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "herd_targets_owned"), Some(2.0), "{text}");
    assert_eq!(
        hook.accepted().len(),
        1,
        "the receiver got the one notification"
    );
    assert_eq!(
        sample(
            &text,
            "herd_notification_attempts_failed_total{channel=\"dead\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "herd_notification_attempts_failed_total{channel=\"hook\"}"
        ),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "herd_ssh_sessions_open"),
        Some(1.0),
        "one session to remote: {text}"
    );
    assert_eq!(
        sample(&text, "herd_ssh_connects_total"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "herd_ssh_reconnects_total"),
        Some(0.0),
        "{text}"
    );

    phase!("sshd killed and back: a connect failure, then a reconnect, one session again");
    sshd.stop();
    wait_for(BOUND, "a failed SSH connect counted", || {
        let (_, text) = curl_text(&herd, "/metrics", Some(TOKEN));
        sample(&text, "herd_ssh_connect_failures_total")
            .filter(|n| *n >= 1.0)
            .map(|_| ())
    });
    sshd.restart();
    let text = wait_for(BOUND, "a reconnect counted", || {
        let (_, text) = curl_text(&herd, "/metrics", Some(TOKEN));
        (sample(&text, "herd_ssh_reconnects_total") == Some(1.0)
            && sample(&text, "herd_ssh_sessions_open") == Some(1.0))
        .then_some(text)
    });
    assert_eq!(
        sample(&text, "herd_raft_is_leader"),
        Some(1.0),
        "a herd of one leads: {text}"
    );
    assert_eq!(sample(&text, "herd_lease_valid"), Some(1.0), "{text}");
    assert_eq!(
        sample(&text, "herd_command_level"),
        Some(3.0),
        "a herd of one of this build applies command level 3: {text}"
    );
    assert_eq!(
        sample(&text, "herd_raft_unknown_commands_total"),
        Some(0.0),
        "{text}"
    );
    assert!(
        sample(&text, "herd_scrapes_total").is_some_and(|n| n >= 1.0),
        "{text}"
    );
    let status = herd.status_json();
    assert_eq!(
        sample(&text, "herd_ownership_version"),
        status["ownership_version"].as_f64(),
        "the same version as herd status"
    );

    phase!("promtool check metrics (Prometheus' own linter) accepts it");
    let dir = tempfile::tempdir().expect("a temp dir");
    let file = dir.path().join("metrics.txt");
    std::fs::write(&file, &text).expect("writing the metrics");
    let out = run_bounded(
        Command::new("sh")
            .arg("-c")
            .arg(format!("promtool check metrics < {}", file.display())),
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "promtool check metrics (Debian's prometheus package; scripts/test installs it) failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The JSON document of a `herd watch --json` line or an SSE `data:` line that
/// `pick` accepts.
fn change_where(line: &str, pick: impl Fn(&Value) -> bool) -> Option<Value> {
    let doc: Value =
        serde_json::from_str(line.strip_prefix("data:").unwrap_or(line).trim()).ok()?;
    pick(&doc).then_some(doc)
}

/// Waits until the `nth` `herd watch` started on `herd` says it is watching,
/// then one more second for its streams from the other members to open.
fn wait_watching(herd: &Herd, nth: usize) {
    let err = herd.dir().join("cli-stream.err");
    wait_until(BOUND, "herd watch is connected", || {
        std::fs::read_to_string(&err).is_ok_and(|t| t.matches("watching").count() >= nth)
    });
    std::thread::sleep(Duration::from_secs(1));
}

#[test]
fn watch_streams_the_herds_changes_to_the_cli_and_as_server_sent_events() {
    let files = WatchedFiles::new("watch");
    let fleet_names: Vec<String> = (0..4).map(|i| format!("w-{i}")).collect();
    phase!("three nodes, four local targets with a file_fresh check and a rule on it");
    let mut cluster = Cluster::start(3, HerdOptions::default());
    let mut text = String::new();
    for name in &fleet_names {
        files.create(name);
        let check = format!(
            "{{ kind = \"file_fresh\", path = {}, max_age = \"1h\" }}",
            toml_str(&files.path(name).display().to_string())
        );
        text.push_str(&local_target_with(name, &[check]));
    }
    text.push_str(
        "[[rule]]\nname = \"stale\"\ncheck = \"file_fresh\"\nkind = \"range\"\nfor = \"0s\"\n\
         severity = \"critical\"\n",
    );
    cluster.apply(1, &text);
    cluster.wait_until_all_owned_and_scraped(&fleet_names, 5.0, BOUND);

    phase!("`herd watch --json` and an SSE stream of alerts on node 1");
    let watcher = cluster.node(1);
    let mut cli = watcher.cli_stream(&["watch", "--json"]);
    let mut sse = LineStream::spawn(
        Command::new("curl").args([
            "-s",
            "-N",
            "--max-time",
            "120",
            &format!("http://{}/herd/v1/watch?kind=alert", watcher.http_addr()),
        ]),
        &watcher.dir().join("curl-sse.err"),
    );
    wait_watching(watcher, 1);

    phase!("a target another node owns goes stale: its event and alert reach node 1's streams");
    let s = cluster.status();
    let (owner, target) = fleet_names
        .iter()
        .find_map(|t| match s.target(t).and_then(|v| v.owner) {
            Some(o) if o != 1 => Some((o, t.clone())),
            _ => None,
        })
        .expect("nodes 2 and 3 own some of the four targets");
    files.remove(&target);
    let is = |kind: &'static str, target: String| {
        move |d: &Value| d["kind"] == kind && d["target"] == target.as_str()
    };
    let event = cli.expect(BOUND, "the check_status event", |l| {
        change_where(l, |d| {
            is("event", target.clone())(d) && d["what"] == "check_status"
        })
    });
    assert_eq!(event["node"], owner, "seen by the owner: {event}");
    let alert = cli.expect(BOUND, "the alert firing", |l| {
        change_where(l, |d| is("alert", target.clone())(d) && d["to"] == "firing")
    });
    assert_eq!(alert["node"], owner, "{alert}");
    assert_eq!(alert["rule"], "stale", "{alert}");
    sse.expect(BOUND, "the SSE event line", |l| {
        (l == "event: alert").then_some(())
    });
    let over_sse = sse.expect(BOUND, "the SSE data of the alert", |l| {
        change_where(l, |d| is("alert", target.clone())(d) && d["to"] == "firing")
    });
    assert_eq!(over_sse["alert_id"], alert["alert_id"]);

    phase!(
        "the owner is killed: a gap, then node down and its targets moving, in the CLI's stream"
    );
    let moved = cluster.status().owned_by(owner);
    cluster.kill9(owner);
    // In any order: the gap, node down (the leader's record), each target moving.
    let mut missing: Vec<String> = vec!["gap".into(), "node down".into()];
    missing.extend(moved.iter().map(|t| format!("move of {t}")));
    cli.expect(BOUND, "the gap, node down and every move", |l| {
        let d: Value = serde_json::from_str(l).ok()?;
        let seen = match d["kind"].as_str()? {
            "gap" if d["subject_node"] == owner && d["what"] == "missing" => "gap".to_string(),
            "node" if d["subject_node"] == owner && d["what"] == "down" => "node down".to_string(),
            "owner" if d["from_node"] == owner => {
                assert!(d["to_node"].as_u64().is_some_and(|n| n != owner), "{d}");
                format!("move of {}", d["target"].as_str()?)
            }
            _ => return None,
        };
        missing.retain(|m| *m != seen);
        missing.is_empty().then_some(())
    });

    phase!("filters: a bad kind is refused by name (exit 2); --count ends the watch");
    let watcher = cluster.node(1);
    let out = watcher.cli(&["watch", "--kind", "alerts"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let a = get(watcher, "/herd/v1/watch?kind=alerts");
    let e = error_of(&a, 400, "an unknown kind of change");
    assert!(
        e["message"].as_str().unwrap_or_default().contains("alerts"),
        "{e}"
    );
    let mut once = watcher.cli_stream(&[
        "watch", "--local", "--kind", "event", "--count", "1", "--json",
    ]);
    wait_watching(watcher, 2);
    let mine = cluster
        .status()
        .owned_among(1, &fleet_names)
        .into_iter()
        .next()
        .expect("node 1 owns a fleet target");
    files.remove(&mine);
    let first = once.expect(BOUND, "one event", |l| {
        change_where(l, |d| d["kind"] == "event")
    });
    assert_eq!(
        first["node"], 1,
        "--local: node 1's own changes only: {first}"
    );
    eprintln!("    --count 1 printed {first}");
    wait_until(BOUND, "herd watch --count 1 ends", || {
        once.all();
        once.exited()
    });
}

/// `promtool query SUBCOMMAND ARGS...` against `herd`'s HTTP face; its stdout.
fn promtool(herd: &Herd, sub: &str, args: &[&str]) -> String {
    let mut cmd = Command::new("promtool");
    cmd.args(["query", sub]);
    cmd.args(args.iter().filter(|a| a.starts_with("--")));
    cmd.arg(format!("http://{}", herd.http_addr()));
    cmd.args(args.iter().filter(|a| !a.starts_with("--")));
    let out = run_bounded(&mut cmd, Duration::from_secs(30));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "promtool query {sub} {args:?} failed ({}): {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `promtool query instant -o json`: (the value of label `by`, value) per sample.
fn instant(herd: &Herd, expr: &str, by: &str) -> Vec<(String, f64)> {
    let text = promtool(herd, "instant", &["-o", "json", expr]);
    let doc: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("promtool printed no JSON for {expr} ({e}): {text}"));
    let mut out: Vec<(String, f64)> = doc
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            (
                s["metric"][by].as_str().unwrap_or_default().to_string(),
                s["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(f64::NAN),
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn the_prometheus_api_answers_promtool_from_every_node_of_a_herd() {
    let files = WatchedFiles::new("prom");
    let names: Vec<String> = (0..3).map(|i| format!("p-{i}")).collect();
    phase!("three nodes; three local targets whose command check prints a value the test set");
    let cluster = Cluster::start(3, HerdOptions::default());
    let mut text = String::new();
    for (i, name) in names.iter().enumerate() {
        let path = files.secret(name, &format!("OK | v={}", (i + 1) * 10));
        let check = format!(
            "{{ kind = \"command\", name = \"val\", command = {} }}",
            toml_str(&format!("cat {path}"))
        );
        text.push_str(&local_target_with(name, &[check]));
    }
    cluster.apply(1, &text);
    cluster.wait_until_all_owned_and_scraped(&names, 5.0, BOUND);
    let owners = cluster.status().owners();
    eprintln!("    owners: {owners:?}");

    phase!("instant queries on each node see every target's value, whoever owns it");
    let selector = r#"herd_command_perf{check="val",label="v"}"#;
    for id in cluster.ids() {
        let node = cluster.node(id);
        let got = wait_for(BOUND, "three values", || {
            let v = instant(node, selector, "target");
            (v.len() == 3).then_some(v)
        });
        assert_eq!(
            got,
            vec![
                ("p-0".into(), 10.0),
                ("p-1".into(), 20.0),
                ("p-2".into(), 30.0)
            ],
            "node {id}"
        );
    }
    let node = cluster.node(1);
    assert_eq!(
        instant(node, &format!("sum({selector})"), "x"),
        vec![(String::new(), 60.0)]
    );
    assert_eq!(
        instant(
            node,
            &format!("max by (target) ({selector}) > 15"),
            "target"
        ),
        vec![("p-1".into(), 20.0), ("p-2".into(), 30.0)]
    );
    assert_eq!(
        instant(
            node,
            &format!(r#"{selector} / on(target) herd_command_perf{{label="v",target="p-2"}}"#),
            "target"
        ),
        vec![("p-2".into(), 1.0)]
    );
    assert_eq!(
        instant(
            node,
            &format!("avg_over_time({selector}[1m]) * 2"),
            "target"
        ),
        vec![
            ("p-0".into(), 20.0),
            ("p-1".into(), 40.0),
            ("p-2".into(), 60.0)
        ]
    );

    phase!("a range query: a point every 2 s, each the value the test set");
    // The target has been scraped for a few seconds only: wait for 10 s of history.
    let (text, values) = wait_for(BOUND, "a 10 s range with a point every 2 s", || {
        let now = herd_tests::now_ms() / 1000;
        let text = promtool(
            node,
            "range",
            &[
                "-o",
                "json",
                &format!("--start={}", now - 10),
                &format!("--end={now}"),
                "--step=2s",
                r#"herd_command_perf{target="p-1",label="v"}"#,
            ],
        );
        let doc: Value = serde_json::from_str(&text).expect("JSON");
        let values = doc[0]["values"].as_array().cloned().unwrap_or_default();
        (values.len() == 6).then_some((text, values))
    });
    assert!(values.iter().all(|v| v[1] == "20"), "{text}");

    phase!("series, labels and label values");
    let series = promtool(node, "series", &[r#"--match=herd_command_perf{label="v"}"#]);
    for name in &names {
        assert!(series.contains(&format!("target=\"{name}\"")), "{series}");
    }
    let targets = promtool(node, "labels", &["target"]);
    for name in &names {
        assert!(targets.lines().any(|l| l.trim() == name), "{targets}");
    }

    phase!("a real Prometheus scrapes node 1's /federate and holds every target's value");
    let nodes = cluster
        .ids()
        .iter()
        .map(|id| format!("'{}'", cluster.node(*id).http_addr()))
        .collect::<Vec<_>>()
        .join(", ");
    let prometheus = Prometheus::start(&format!(
        "  - job_name: herd\n    honor_labels: true\n    metrics_path: /federate\n    \
         params: {{ 'match[]': ['{{__name__=\"herd_command_perf\"}}'] }}\n    \
         static_configs: [{{ targets: ['{}'] }}]\n  \
         - job_name: herd-nodes\n    static_configs: [{{ targets: [{nodes}] }}]\n",
        node.http_addr(),
    ));
    let by = |v: Vec<(Value, f64)>, label: &str| -> Vec<(String, f64)> {
        let mut got: Vec<(String, f64)> = v
            .into_iter()
            .map(|(m, x)| (m[label].as_str().unwrap_or_default().to_string(), x))
            .collect();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        got
    };
    let federated = wait_for(
        Duration::from_secs(60),
        "Prometheus holds the federated values",
        || {
            let got = by(
                prometheus.query(r#"herd_command_perf{label="v"}"#)?,
                "target",
            );
            (got.len() == 3).then_some(got)
        },
    );
    assert_eq!(
        federated,
        vec![
            ("p-0".to_string(), 10.0),
            ("p-1".to_string(), 20.0),
            ("p-2".to_string(), 30.0)
        ],
        "{}",
        prometheus.log()
    );

    phase!("the same Prometheus scrapes every node's /metrics: one leader, beat round trips");
    let ups = wait_for(
        Duration::from_secs(60),
        "three nodes scraped by Prometheus",
        || {
            let v = by(prometheus.query(r#"up{job="herd-nodes"}"#)?, "instance");
            (v.len() == 3 && v.iter().all(|(_, x)| *x == 1.0)).then_some(v)
        },
    );
    eprintln!("    up: {ups:?}");
    let leaders = prometheus
        .query(r#"sum(herd_raft_is_leader{job="herd-nodes"})"#)
        .unwrap_or_default();
    assert_eq!(
        leaders.first().map(|l| l.1),
        Some(1.0),
        "one leader: {leaders:?}"
    );
    let rtts = wait_for(BOUND, "beat round trips of every pair", || {
        let v = by(
            prometheus.query(r#"herd_peer_beat_rtt_seconds{job="herd-nodes"}"#)?,
            "instance",
        );
        (v.len() == 6).then_some(v)
    });
    assert!(
        rtts.iter().all(|(_, s)| *s >= 0.0 && *s < 5.0),
        "round trips in seconds: {rtts:?}"
    );
    drop(prometheus);
    let a = curl(node, "GET", "/federate", None, None);
    assert_eq!(a.code, 400, "no match[]: {}", a.body);

    phase!("bad queries: Prometheus' errors");
    let a = curl(node, "GET", "/api/v1/query?query=sum(", None, None);
    assert_eq!(a.code, 400, "{}", a.body);
    assert_eq!(a.body["status"], "error");
    assert_eq!(a.body["errorType"], "bad_data");
    let q = "/api/v1/query?query=histogram_quantile(0.9,herd_command_perf)";
    let a = curl(node, "GET", q, None, None);
    assert_eq!(a.body["errorType"], "bad_data", "{}", a.body);
    assert!(
        a.body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("histogram_quantile"),
        "{}",
        a.body
    );
    let a = curl(node, "GET", "/api/v1/series", None, None);
    assert_eq!(a.code, 400, "no match[]: {}", a.body);
}
