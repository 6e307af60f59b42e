//! The extras end to end: http checks reading JSON answers of a real nginx, pause
//! and resume, remediation actions over a real sshd, the NATS channel against a
//! real nats-server with JetStream, the Asana channel against a real HTTP receiver,
//! and nginx requests per country with a MaxMind DB built by the test.
//!
//! Everything is observed through the CLI (`herd status/query/events/state/alerts`)
//! and through what the channels delivered: a command channel that writes each
//! document it gets to its own file, a real HTTP receiver, a real NATS stream.
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use herd_tests::mmdb::{country, MmdbWriter};
use herd_tests::{
    now_ms, phase, wait_for, wait_until, Herd, HerdOptions, HttpReceiver, NatsServer, Nginx, Sshd,
    SSH_USER,
};
use serde_json::Value;
use tempfile::TempDir;

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// Longer than a channel's default group window (2 s) plus a worker round (1 s): a
/// notification that was going to go out has gone out by then.
const QUIET: Duration = Duration::from_millis(3500);

// ---------------------------------------------------------------------------------
// Helpers

fn temp_dir(prefix: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("cannot create a temp dir")
}

/// Writes `text` to `path` through a rename, so that a reader (nginx, a check)
/// never sees half a file.
fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("writing {}: {e}", tmp.display()));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("renaming to {}: {e}", path.display()));
}

/// A TOML basic string of `s`.
fn toml_str(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

/// A local target scraped every second with one file_fresh check per
/// (check name, path) pair.
fn fresh_local_target(name: &str, checks: &[(&str, &Path)]) -> String {
    format!(
        "[[target]]\nname = \"{name}\"\ntransport = \"local\"\ninterval = \"1s\"\nchecks = [\n{}]\n\n",
        fresh_checks(checks)
    )
}

fn fresh_checks(checks: &[(&str, &Path)]) -> String {
    checks
        .iter()
        .map(|(check, path)| {
            format!(
                "  {{ kind = \"file_fresh\", name = \"{check}\", path = {}, max_age = \"1h\" }},\n",
                toml_str(&path.display().to_string())
            )
        })
        .collect()
}

/// A range rule on a check with no bounds: fires while the check is not ok.
fn check_rule(name: &str, check: &str, channel: &str, extra: &str) -> String {
    format!(
        "[[rule]]\nname = \"{name}\"\ncheck = \"{check}\"\nkind = \"range\"\nchannels = [\"{channel}\"]\n{extra}\n"
    )
}

/// A command channel whose command writes every document it gets on stdin to a
/// file of its own (written aside, then renamed: a reader sees whole documents).
struct CommandSink {
    dir: TempDir,
}

impl CommandSink {
    fn new() -> CommandSink {
        CommandSink {
            dir: temp_dir("herd-extras-sink-"),
        }
    }

    /// The `[[channel]]` table, with `extra` lines (delivery settings).
    fn channel(&self, name: &str, extra: &str) -> String {
        let d = self.dir.path().display();
        let command =
            format!("f=\"{d}/$(date +%s%N)-$$\"; cat > \"$f.part\" && mv \"$f.part\" \"$f.json\"");
        format!(
            "[[channel]]\nname = \"{name}\"\nkind = \"command\"\ncommand = {}\n{extra}\n",
            toml_str(&command)
        )
    }

    /// Every document received so far, in order of arrival.
    fn docs(&self) -> Vec<Value> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.retain(|p| p.extension().is_some_and(|x| x == "json"));
        files.sort();
        files
            .iter()
            .map(|p| {
                let text = std::fs::read_to_string(p).unwrap_or_default();
                serde_json::from_str(&text).unwrap_or_else(|e| {
                    panic!(
                        "the command channel got no JSON in {} ({e}): {text}",
                        p.display()
                    )
                })
            })
            .collect()
    }

    /// Every notification received so far (a document may group several).
    fn notes(&self) -> Vec<Value> {
        self.docs()
            .iter()
            .flat_map(|d| d["notifications"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// The notifications of `rule`.
    fn notes_of(&self, rule: &str) -> Vec<Value> {
        self.notes()
            .into_iter()
            .filter(|n| n["alert"]["rule"] == rule)
            .collect()
    }

    /// The kinds of the notifications of `rule`, in order.
    fn kinds_of(&self, rule: &str) -> Vec<String> {
        self.notes_of(rule)
            .iter()
            .map(|n| n["kind"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// Waits until a notification of `rule` of `kind` arrived (the `nth`, from 1);
    /// returns it.
    fn wait_note(&self, rule: &str, kind: &str, nth: usize, timeout: Duration) -> Value {
        wait_for(
            timeout,
            &format!("notification {nth} of kind {kind} for {rule} arrived"),
            || {
                self.notes_of(rule)
                    .into_iter()
                    .filter(|n| n["kind"] == kind)
                    .nth(nth - 1)
            },
        )
    }
}

/// `herd alerts --history 1h --json`.
fn alerts(herd: &Herd) -> Value {
    let text = herd.cli_ok(&["alerts", "--history", "1h", "--json"]);
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("`herd alerts --json` printed no JSON ({e}): {text}"))
}

/// The alert of `rule` in `herd alerts --json`.
fn alert_of(herd: &Herd, rule: &str) -> Option<Value> {
    alerts(herd)["alerts"]
        .as_array()?
        .iter()
        .find(|a| a["rule"] == rule)
        .cloned()
}

fn state(a: &Value) -> &str {
    a["state"].as_str().unwrap_or_default()
}

/// Waits until the alert of `rule` is in `want`; returns it.
fn wait_alert_state(herd: &Herd, rule: &str, want: &str, timeout: Duration) -> Value {
    wait_for(timeout, &format!("alert {rule} is {want}"), || {
        alert_of(herd, rule).filter(|a| state(a) == want)
    })
}

/// Messages of the events of `kind` for `target` containing `needle`, oldest first.
fn event_messages(herd: &Herd, target: &str, kind: &str, needle: &str) -> Vec<String> {
    let mut v: Vec<(i64, String)> = herd
        .events_of(target, kind)
        .iter()
        .map(|e| {
            (
                e["ts_ms"].as_i64().unwrap_or(0),
                e["message"].as_str().unwrap_or_default().to_string(),
            )
        })
        .filter(|(_, m)| m.contains(needle))
        .collect();
    v.sort_by_key(|(ts, _)| *ts);
    v.into_iter().map(|(_, m)| m).collect()
}

/// Waits until there are at least `n` such events; returns their messages.
fn wait_events(
    herd: &Herd,
    target: &str,
    kind: &str,
    needle: &str,
    n: usize,
    timeout: Duration,
) -> Vec<String> {
    let msgs = wait_for(
        timeout,
        &format!("{n} {kind} event(s) of {target} containing {needle:?}"),
        || {
            let m = event_messages(herd, target, kind, needle);
            (m.len() >= n).then_some(m)
        },
    );
    eprintln!("    {kind}: {}", msgs.last().cloned().unwrap_or_default());
    msgs
}

/// The check entry `check` of `target` in `herd status --json`.
fn check_status(herd: &Herd, target: &str, check: &str) -> Option<Value> {
    herd.target_status(target)?["checks"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == check)
        .cloned()
}

/// Points of `metric` of `target` in series whose labels include `label=value`.
fn points_with(
    herd: &Herd,
    target: &str,
    metric: &str,
    label: &str,
    value: &str,
) -> Vec<(i64, f64)> {
    let v = herd.query_json(target, metric);
    let mut points: Vec<(i64, f64)> = v["series"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["labels"][label] == value)
        .flat_map(|s| s["points"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| Some((p.get(0)?.as_i64()?, p.get(1)?.as_f64()?)))
        .collect();
    points.sort_by_key(|p| p.0);
    points
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

// ---------------------------------------------------------------------------------
// 1. http: JSON picks and expect conditions

fn status_doc(nodes_up: u32) -> String {
    format!(
        r#"{{"status":"UP","nodes":{{"up":{nodes_up}}},"data":{{"queue":{{"depth":12}}}},"version":"1.2.3"}}"#
    )
}

#[test]
fn http_json_picks_and_expect_against_real_nginx() {
    phase!("a real nginx serving /status.json with nodes.up = 2");
    let nginx = Nginx::start();
    let file = nginx.dir().join("www/status.json");
    write_atomic(&file, &status_doc(2));
    let url = nginx.url("/status.json");
    let sink = CommandSink::new();
    let check = format!(
        "{{ kind = \"http\", name = \"api\", url = \"{url}\", json = [\
         {{ path = \"data.queue.depth\", metric = \"queue.depth\" }}, \
         {{ path = \"$.version\", metric = \"api.version\" }}, \
         {{ path = \"missing.x\", metric = \"m\" }}], \
         expect = ['status == \"UP\"', 'nodes.up >= 3'] }}"
    );
    let fleet = format!(
        "[[target]]\nname = \"api-1\"\ntransport = \"local\"\ninterval = \"1s\"\nchecks = [{check}]\n\n\
         [[rule]]\nname = \"api-v1\"\nstate = \"api.version\"\nkind = \"regex\"\npattern = \"^1\\\\.\"\n\
         channels = [\"log\"]\n\n{}",
        sink.channel("log", "")
    );
    eprintln!("{fleet}");
    let mut herd = Herd::start(HerdOptions::default().fleet(fleet));

    phase!("queue.depth (data.queue.depth) has samples of 12");
    wait_until(SECS(15), "queue.depth has points", || {
        !herd.points("api-1", "queue.depth").is_empty()
    });
    let depth = herd.points("api-1", "queue.depth");
    assert!(
        depth.iter().all(|p| p.1 == 12.0),
        "queue.depth points: {depth:?}"
    );
    let q = herd.query_json("api-1", "queue.depth");
    assert_eq!(q["series"][0]["labels"]["check"], "api", "{q}");

    phase!("nodes.up = 2 fails `nodes.up >= 3`: status critical, check.status 2");
    let c = wait_for(SECS(10), "check api is critical", || {
        check_status(&herd, "api-1", "api").filter(|c| c["status"] == "critical")
    });
    let detail = c["detail"].as_str().unwrap_or_default().to_string();
    eprintln!("    detail: {detail}");
    assert!(detail.contains("nodes.up >= 3"), "{c}");
    assert!(
        !detail.contains("status =="),
        "the condition that holds is not named as failed: {detail}"
    );
    let statuses = points_with(&herd, "api-1", "check.status", "check", "api");
    assert!(
        !statuses.is_empty() && statuses.iter().all(|p| p.1 == 2.0),
        "{statuses:?}"
    );

    phase!("the missing path is a check_error event naming missing.x, once");
    let errs = wait_events(&herd, "api-1", "check_error", "missing.x", 1, SECS(10));
    std::thread::sleep(SECS(3));
    let errs_later = event_messages(&herd, "api-1", "check_error", "missing.x");
    assert_eq!(
        errs_later.len(),
        1,
        "a missing path is reported once per change, not per scrape: {errs_later:?}"
    );
    assert_eq!(errs, errs_later);
    // (No check of api-1 uses the target's transport, so `up` stays null.)
    let t = herd.target_status("api-1").unwrap();
    assert!(t["up"] != false, "a missing path is not an outage: {t}");
    assert!(herd.is_running(), "a missing path is not a crash");

    phase!("herd state api-1 shows api.version = \"1.2.3\"");
    let whole: Value = serde_json::from_str(&herd.cli_ok(&["state", "api-1"])).expect("JSON");
    eprintln!("    state: {whole}");
    assert_eq!(whole["api"]["version"], "1.2.3", "{whole}");
    assert_eq!(whole["queue"]["depth"], 12, "{whole}");
    let at: Value =
        serde_json::from_str(&herd.cli_ok(&["state", "api-1", "api.version"])).expect("JSON");
    assert_eq!(at, "1.2.3");

    phase!("the state rule on api.version (regex ^1\\.) fires");
    let a = wait_alert_state(&herd, "api-v1", "firing", SECS(15));
    eprintln!("    alert: {a}");
    assert_eq!(a["target"], "api-1", "{a}");
    let note = sink.wait_note("api-v1", "firing", 1, SECS(15));
    assert_eq!(note["alert"]["target"], "api-1", "{note}");

    phase!("nodes.up becomes 3: the check turns ok (check.status 0)");
    let changed = now_ms();
    write_atomic(&file, &status_doc(3));
    wait_until(SECS(10), "check.status 0 after the change", || {
        points_with(&herd, "api-1", "check.status", "check", "api")
            .iter()
            .any(|&(ts, v)| ts >= changed && v == 0.0)
    });
    let c = wait_for(SECS(10), "check api is ok in status", || {
        check_status(&herd, "api-1", "api").filter(|c| c["status"] == "ok")
    });
    eprintln!("    detail: {}", c["detail"]);
    assert!(
        !c["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("expected"),
        "{c}"
    );
    let changes = event_messages(&herd, "api-1", "check_status", "api");
    eprintln!("    check_status events: {changes:?}");
    assert!(
        changes.iter().any(|m| m.contains("critical -> ok")),
        "a check_status event records the change: {changes:?}"
    );
    assert_eq!(
        state(&alert_of(&herd, "api-v1").expect("still listed")),
        "firing",
        "the version still matches ^1\\."
    );

    phase!("the version becomes 2.0.0: the state rule resolves");
    write_atomic(&file, &status_doc(3).replace("\"1.2.3\"", "\"2.0.0\""));
    sink.wait_note("api-v1", "resolved", 1, SECS(15));
}

// ---------------------------------------------------------------------------------
// 2. pause and resume

/// Points of check.status of `check` on `target` taken at or after `since`.
fn points_since(herd: &Herd, target: &str, check: &str, since: i64) -> usize {
    points_with(herd, target, "check.status", "check", check)
        .iter()
        .filter(|p| p.0 >= since)
        .count()
}

fn paused(herd: &Herd, target: &str) -> Value {
    herd.target_status(target)
        .unwrap_or_else(|| panic!("{target} is not listed in herd status"))["paused"]
        .clone()
}

#[test]
fn pause_and_resume() {
    phase!("a local target at 1s whose job file is missing; a rule fires to a command channel");
    let files = temp_dir("herd-extras-pause-");
    let job = files.path().join("job.done");
    let sink = CommandSink::new();
    let fleet = [
        fresh_local_target("batch-1", &[("job", &job)]),
        check_rule("job-missing", "job", "log", ""),
        // A dead-man rule on the check's samples: a paused target must not trip it.
        "[[rule]]\nname = \"job-silent\"\nmetric = \"check.status\"\nmatch = { check = \"job\" }\n\
         kind = \"absence\"\nfor = \"2s\"\nchannels = [\"log\"]\n\n"
            .to_string(),
        sink.channel("log", ""),
    ]
    .concat();
    let mut herd = Herd::start(HerdOptions::default().fleet(fleet));
    sink.wait_note("job-missing", "firing", 1, SECS(20));
    wait_alert_state(&herd, "job-missing", "firing", SECS(5));

    phase!("herd pause batch-1 --reason maint: status shows who and why");
    let out = herd.cli_ok(&["pause", "batch-1", "--reason", "maint", "--by", "tester"]);
    eprintln!("    {}", out.trim());
    assert!(out.contains("herd resume batch-1"), "{out}");
    let paused_at = now_ms();
    let p = paused(&herd, "batch-1");
    eprintln!("    paused: {p}");
    assert_eq!(p["by"], "tester", "{p}");
    assert_eq!(p["reason"], "maint", "{p}");
    assert!(p["until_ms"].is_null(), "no end without --for: {p}");
    assert!(
        p["since_ms"]
            .as_i64()
            .is_some_and(|s| s > 0 && s <= paused_at),
        "{p}"
    );
    let table = herd.cli_ok(&["status"]);
    assert!(table.contains("paused by tester (maint)"), "{table}");

    phase!("the firing alert ends with a RESOLVED that says the target was paused");
    wait_until(SECS(10), "job-missing is no longer firing", || {
        alert_of(&herd, "job-missing").is_none_or(|a| state(&a) != "firing")
    });
    let note = sink.wait_note("job-missing", "resolved", 1, SECS(15));
    let desc = note["alert"]["description"].as_str().unwrap_or_default();
    assert!(desc.contains("target batch-1 was paused"), "{note}");

    phase!("no new samples for 3 s");
    std::thread::sleep(Duration::from_millis(1500)); // a scrape in flight lands
    let settled = now_ms();
    std::thread::sleep(SECS(3));
    let n = points_since(&herd, "batch-1", "job", settled);
    assert_eq!(n, 0, "check.status points while paused");
    assert!(
        herd.target_status("batch-1").unwrap()["paused"].is_object(),
        "still paused"
    );
    // By now QUIET has passed since the pause: one RESOLVED, nothing more.
    assert_eq!(
        sink.kinds_of("job-missing"),
        vec!["firing", "resolved"],
        "a pause resolves the firing alert once"
    );

    phase!("herd resume batch-1: samples again (and the alert fires anew)");
    let out = herd.cli_ok(&["resume", "batch-1"]);
    eprintln!("    {}", out.trim());
    let resumed = now_ms();
    assert!(paused(&herd, "batch-1").is_null(), "resumed");
    wait_until(SECS(10), "check.status points after resume", || {
        points_since(&herd, "batch-1", "job", resumed) > 0
    });
    sink.wait_note("job-missing", "firing", 2, SECS(15));
    assert_eq!(
        sink.kinds_of("job-missing"),
        vec!["firing", "resolved", "firing"],
        "a new episode after the resume"
    );

    phase!("herd pause batch-1 --for 2s ends by itself");
    let out = herd.cli_ok(&["pause", "batch-1", "--for", "2s", "--reason", "short"]);
    eprintln!("    {}", out.trim());
    let short_at = now_ms();
    assert!(out.contains("paused until"), "{out}");
    let p = paused(&herd, "batch-1");
    let until = p["until_ms"].as_i64().unwrap_or_else(|| panic!("{p}"));
    assert!(
        (short_at..=short_at + 4000).contains(&until),
        "until_ms {until} about 2 s after {short_at}"
    );
    wait_until(SECS(10), "the 2 s pause ended by itself", || {
        paused(&herd, "batch-1").is_null()
    });
    let ended = now_ms();
    eprintln!("    ended {} ms after the pause", ended - short_at);
    wait_until(
        SECS(10),
        "check.status points after the pause ended",
        || points_since(&herd, "batch-1", "job", ended) > 0,
    );

    phase!("a pause survives a node restart (SIGTERM, start again)");
    herd.cli_ok(&[
        "pause",
        "batch-1",
        "--reason",
        "kernel upgrade",
        "--by",
        "ops",
    ]);
    std::thread::sleep(Duration::from_millis(500));
    let status = herd.sigterm();
    assert!(status.success(), "SIGTERM exit status: {status}");
    herd.restart();
    let restarted = now_ms();
    let p = paused(&herd, "batch-1");
    eprintln!("    after restart: {p}");
    assert_eq!(p["reason"], "kernel upgrade", "{p}");
    assert_eq!(p["by"], "ops", "{p}");
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        points_since(&herd, "batch-1", "job", restarted),
        0,
        "no scrape of a paused target after the restart"
    );
    herd.cli_ok(&["resume", "batch-1"]);
    let resumed = now_ms();
    wait_until(SECS(10), "samples after resume", || {
        points_since(&herd, "batch-1", "job", resumed) > 0
    });

    phase!("the dead-man rule never fired: pauses are not silence");
    std::thread::sleep(SECS(3));
    assert!(
        sink.notes_of("job-silent").is_empty(),
        "{:?}",
        sink.notes_of("job-silent")
    );
    assert!(
        alert_of(&herd, "job-silent").is_none_or(|a| state(&a) != "firing"),
        "{:?}",
        alert_of(&herd, "job-silent")
    );

    phase!("pausing an unknown target: exit 1 with a message");
    let out = herd.cli(&["pause", "no-such-target", "--reason", "x"]);
    eprintln!("    exit {:?}: {}", out.status.code(), stderr(&out).trim());
    assert_eq!(out.status.code(), Some(1), "stdout: {}", stdout(&out));
    assert!(stderr(&out).contains("no-such-target"), "{}", stderr(&out));
    let out = herd.cli(&["resume", "batch-1"]);
    eprintln!(
        "    resume of a running target: exit {:?}: {}",
        out.status.code(),
        stderr(&out).trim()
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not paused"), "{}", stderr(&out));
}

// ---------------------------------------------------------------------------------
// 3. remediation actions over SSH

fn id_of(user: &str, flag: &str) -> u32 {
    let out = Command::new("id")
        .args([flag, user])
        .output()
        .expect("running id");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("id {flag} {user}: {}", String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn remediation_action_on_a_real_sshd_target() {
    phase!("a real sshd; a dir owned by {SSH_USER} with a file the action recreates");
    let sshd = Sshd::start();
    let uid = id_of(SSH_USER, "-u");
    let gid = id_of(SSH_USER, "-g");
    let dir = temp_dir("herd-extras-remedy-");
    std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown the dir");
    let heal = dir.path().join("heal.flag");
    let never = dir.path().join("never.flag");
    let sink = CommandSink::new();
    let heal_s = heal.display().to_string();
    let fleet = [
        format!(
            "[[target]]\nname = \"web-1\"\naddress = \"{}\"\ninterval = \"1s\"\nchecks = [\n{}]\n\n",
            sshd.address(),
            fresh_checks(&[("heal", &heal), ("never", &never)])
        ),
        check_rule(
            "self-heal",
            "heal",
            "log",
            &format!(
                "action = {{ run = {}, on = \"firing\", max_per_hour = 2 }}\n",
                toml_str(&format!("touch {heal_s}; echo fixed"))
            ),
        ),
        check_rule(
            "doomed",
            "never",
            "log",
            "action = { run = \"echo cannot fix; exit 3\", on = \"firing\" }\n",
        ),
        sink.channel("log", ""),
    ]
    .concat();
    let herd = Herd::start(HerdOptions::with_sshd(&sshd).fleet(fleet));

    phase!("the file is missing: the alert fires, the action recreates it over SSH");
    let runs = wait_events(&herd, "web-1", "action_run", "self-heal", 1, SECS(20));
    assert!(runs[0].contains("exit 0: fixed"), "{runs:?}");
    wait_until(SECS(5), "the action created the file", || heal.exists());
    let meta = std::fs::metadata(&heal).unwrap();
    assert_eq!(
        meta.uid(),
        uid,
        "the file is owned by {SSH_USER} (the action ran over SSH as {SSH_USER})"
    );
    let note = sink.wait_note("self-heal", "firing", 1, SECS(15));
    let desc = note["alert"]["description"].as_str().unwrap_or_default();
    eprintln!("    firing description: {desc:?}");
    assert!(desc.contains("exit 0: fixed"), "{note}");
    wait_alert_state(&herd, "self-heal", "resolved", SECS(10));
    sink.wait_note("self-heal", "resolved", 1, SECS(15));

    phase!("delete the file: the second firing runs the action again");
    std::fs::remove_file(&heal).unwrap();
    let runs = wait_events(&herd, "web-1", "action_run", "self-heal", 2, SECS(15));
    assert!(runs[1].contains("exit 0: fixed"), "{runs:?}");
    wait_until(SECS(5), "the action created the file again", || {
        heal.exists()
    });
    wait_alert_state(&herd, "self-heal", "resolved", SECS(10));

    phase!("delete it a third time: max_per_hour = 2, the action does not run");
    std::fs::remove_file(&heal).unwrap();
    let runs = wait_events(&herd, "web-1", "action_run", "self-heal", 3, SECS(15));
    assert!(
        runs[2].contains("max_per_hour") && runs[2].contains("not run"),
        "{runs:?}"
    );
    let note = sink.wait_note("self-heal", "firing", 3, SECS(15));
    let desc = note["alert"]["description"].as_str().unwrap_or_default();
    eprintln!("    third firing description: {desc:?}");
    assert!(desc.contains("max_per_hour"), "{note}");
    std::thread::sleep(SECS(3));
    assert!(!heal.exists(), "the rate-limited action did not run");
    assert_eq!(
        state(&alert_of(&herd, "self-heal").unwrap()),
        "firing",
        "the alert stays firing"
    );
    assert_eq!(
        event_messages(&herd, "web-1", "action_run", "self-heal").len(),
        3,
        "one action_run event per firing"
    );

    phase!("a failing action (exit 3) is reported once and not retried");
    let doomed = event_messages(&herd, "web-1", "action_run", "doomed");
    eprintln!("    doomed: {doomed:?}");
    assert_eq!(
        doomed.len(),
        1,
        "exactly one action_run for the transition: {doomed:?}"
    );
    assert!(doomed[0].contains("exit 3: cannot fix"), "{doomed:?}");
    assert_eq!(state(&alert_of(&herd, "doomed").unwrap()), "firing");
    let note = sink.wait_note("doomed", "firing", 1, SECS(5));
    assert!(
        note["alert"]["description"]
            .as_str()
            .unwrap_or_default()
            .contains("exit 3"),
        "{note}"
    );
    assert!(!never.exists());
    assert!(
        sshd.log()
            .contains(&format!("Accepted publickey for {SSH_USER}")),
        "herd logged in over SSH"
    );
}

/// A rule whose only reaction is its action (no `channels`, no `[routes]`) never
/// runs the action: `record` in node/src/rules/runner.rs starts actions only in
/// the branch that queues notifications, after `channels.is_empty()` has set
/// `suppressed = "no channel routes this alert"` (the same holds for a silenced
/// alert). The README describes actions as running per alert transition and their
/// result as *added* to the notification, not as depending on one; `herd check`
/// accepts such a rule without a word. Observed: the alert fires, no
/// `action_run` event, the file is never created.
#[test]
fn remediation_action_runs_without_a_channel() {
    phase!("a local target; a rule with an action and no channel, no routes");
    let files = temp_dir("herd-extras-quiet-");
    let flag = files.path().join("quiet.flag");
    let flag_s = flag.display().to_string();
    let fleet = [
        fresh_local_target("box-1", &[("quiet", &flag)]),
        format!(
            "[[rule]]\nname = \"quiet-heal\"\ncheck = \"quiet\"\nkind = \"range\"\n\
             action = {{ run = {} }}\n\n",
            toml_str(&format!("touch {flag_s}; echo fixed"))
        ),
    ]
    .concat();
    let herd = Herd::start(HerdOptions::default().fleet(fleet));
    wait_alert_state(&herd, "quiet-heal", "firing", SECS(15));

    phase!("the action runs anyway: an action_run event and the file");
    wait_events(&herd, "box-1", "action_run", "quiet-heal", 1, SECS(10));
    wait_until(SECS(5), "the action created the file", || flag.exists());
}

// ---------------------------------------------------------------------------------
// 4. NATS with JetStream, and the fallback when the server is gone

/// What a JetStream stream holds.
struct StreamDump {
    subjects: Vec<String>,
    /// (subject, payload as JSON) per stored message, in sequence order.
    messages: Vec<(String, Value)>,
}

/// Reads every message of `stream` back with async-nats.
fn read_stream(url: &str, stream: &str) -> Result<StreamDump, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let work = async {
            let client = async_nats::connect(url)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let js = async_nats::jetstream::new(client);
            let mut s = js
                .get_stream(stream)
                .await
                .map_err(|e| format!("get_stream: {e}"))?;
            let info = s.info().await.map_err(|e| format!("info: {e}"))?.clone();
            let mut messages = Vec::new();
            if info.state.messages > 0 {
                for seq in info.state.first_sequence..=info.state.last_sequence {
                    let m = s
                        .get_raw_message(seq)
                        .await
                        .map_err(|e| format!("message {seq}: {e}"))?;
                    let doc: Value = serde_json::from_slice(&m.payload)
                        .map_err(|e| format!("message {seq} is not JSON: {e}"))?;
                    messages.push((m.subject.to_string(), doc));
                }
            }
            Ok(StreamDump {
                subjects: info.config.subjects.clone(),
                messages,
            })
        };
        tokio::time::timeout(SECS(10), work)
            .await
            .map_err(|_| "reading the stream timed out".to_string())?
    })
}

#[test]
fn nats_channel_with_jetstream_and_fallback() {
    phase!("a real nats-server with JetStream; rule queue-a fires on a missing file");
    let mut nats = NatsServer::start();
    let files = temp_dir("herd-extras-nats-");
    let a = files.path().join("a.flag");
    let b = files.path().join("b.flag");
    std::fs::write(&b, "present\n").unwrap();
    let sink = CommandSink::new();
    let fleet = [
        fresh_local_target("bus-1", &[("a", &a), ("b", &b)]),
        check_rule("queue-a", "a", "bus", ""),
        check_rule("queue-b", "b", "bus", ""),
        format!(
            "[[channel]]\nname = \"bus\"\nkind = \"nats\"\nurl = \"{}\"\nsubject = \"herd.alerts\"\n\
             stream = \"HERD\"\ntimeout = \"2s\"\nmax_attempts = 3\nbackoff = \"200ms\"\n\
             fallback = [\"file\"]\n\n",
            nats.url()
        ),
        sink.channel("file", ""),
    ]
    .concat();
    let herd = Herd::start(HerdOptions::default().fleet(fleet));

    phase!("the firing notification is stored in stream HERD on subject herd.alerts");
    let dump = wait_for(
        SECS(20),
        "stream HERD holds the queue-a notification",
        || {
            read_stream(&nats.url(), "HERD").ok().filter(|d| {
                d.messages.iter().any(|(_, doc)| {
                    doc["notifications"]
                        .as_array()
                        .is_some_and(|ns| ns.iter().any(|n| n["alert"]["rule"] == "queue-a"))
                })
            })
        },
    );
    assert_eq!(dump.subjects, vec!["herd.alerts".to_string()]);
    let (subject, doc) = dump
        .messages
        .iter()
        .find(|(_, d)| d["notifications"][0]["alert"]["rule"] == "queue-a")
        .unwrap();
    eprintln!("    {subject}: {doc}");
    assert_eq!(subject, "herd.alerts");
    assert_eq!(doc["version"], "1", "{doc}");
    let n = &doc["notifications"][0];
    assert_eq!(n["kind"], "firing", "{n}");
    assert_eq!(n["channel"], "bus", "{n}");
    assert_eq!(n["alert"]["target"], "bus-1", "{n}");
    let alert = alert_of(&herd, "queue-a").expect("queue-a is listed");
    assert_eq!(
        n["idempotency_key"],
        format!(
            "{}:{}:bus",
            alert["id"].as_str().unwrap(),
            alert["transitions"]
        ),
        "{n}"
    );
    assert!(sink.notes().is_empty(), "nothing went to the fallback yet");

    phase!("stop nats-server; queue-b fires: retries, then the fallback command channel");
    nats.stop();
    let stopped = now_ms();
    let log_before = herd.log().len();
    std::fs::remove_file(&b).unwrap();
    let note = sink.wait_note("queue-b", "firing", 1, SECS(30));
    eprintln!(
        "    fallback got it {} ms after the stop: {note}",
        now_ms() - stopped
    );
    assert_eq!(note["channel"], "file", "{note}");
    assert!(
        note["idempotency_key"]
            .as_str()
            .is_some_and(|k| k.ends_with(":file")),
        "{note}"
    );
    let log = herd.log().get(log_before..).unwrap_or_default().to_string();
    let retries = log
        .lines()
        .filter(|l| l.contains("will retry") && l.contains("bus"))
        .count();
    let fell_back = log
        .lines()
        .filter(|l| l.contains("falls back") && l.contains("bus") && l.contains("file"))
        .count();
    eprintln!("    node log: {retries} retries of bus, {fell_back} fallback(s)");
    assert_eq!(
        retries, 2,
        "max_attempts = 3: two retries before the fallback"
    );
    assert_eq!(fell_back, 1, "one fallback");
    std::thread::sleep(QUIET);
    assert_eq!(
        sink.kinds_of("queue-b"),
        vec!["firing"],
        "delivered once by the fallback"
    );
    assert!(
        sink.notes_of("queue-a").is_empty(),
        "queue-a, stored in the stream, never went to the fallback"
    );
    assert_eq!(alerts(&herd)["outbox"], 0, "the outbox is empty");
}

// ---------------------------------------------------------------------------------
// 5. Asana

#[test]
fn asana_channel_against_a_real_http_receiver() {
    const TOKEN: &str = "2/1200/1300:as4n4-t0k3n";
    phase!("a real HTTP receiver answering 201 as Asana does; a token file");
    let rx = HttpReceiver::start();
    rx.answer(201, r#"{"data":{"gid":"1204","resource_type":"task"}}"#);
    let files = temp_dir("herd-extras-asana-");
    let token = files.path().join("asana-token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let report = files.path().join("report.csv");
    let fleet = [
        fresh_local_target("todo-1", &[("report", &report)]),
        check_rule(
            "report-missing",
            "report",
            "asana",
            "summary = \"the report of {{target}} is missing\"\n",
        ),
        format!(
            "[[channel]]\nname = \"asana\"\nkind = \"asana\"\ntoken = {{ file = {} }}\n\
             project = \"1201\"\nworkspace = \"1100\"\nbase_url = \"{}\"\n\n",
            toml_str(&token.display().to_string()),
            rx.url("/api/1.0")
        ),
    ]
    .concat();
    let herd = Herd::start(HerdOptions::default().fleet(fleet));

    phase!("POST /api/1.0/tasks with the bearer token and a FIRING task");
    let reqs = rx.wait_for(SECS(20), "a task was created", |r| !r.is_empty());
    let r = &reqs[0];
    eprintln!(
        "    {} {} {}",
        r.method,
        r.path,
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/api/1.0/tasks");
    assert_eq!(
        r.header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{:?}",
        r.header("content-type")
    );
    let data = r.json()["data"].clone();
    let name = data["name"].as_str().unwrap_or_default();
    assert!(
        name.contains("FIRING") && name.contains("report-missing") && name.contains("todo-1"),
        "{name}"
    );
    assert!(name.contains("the report of todo-1 is missing"), "{name}");
    assert_eq!(data["projects"], serde_json::json!(["1201"]));
    assert_eq!(data["workspace"], "1100");
    let alert = alert_of(&herd, "report-missing").expect("listed");
    let key = format!(
        "{}:{}:asana",
        alert["id"].as_str().unwrap(),
        alert["transitions"]
    );
    let notes = data["notes"].as_str().unwrap_or_default();
    assert!(
        notes.contains(&format!("idempotency key: {key}")),
        "{notes}"
    );

    phase!("the report appears: a RESOLVED task, and nothing else");
    std::fs::write(&report, "a,b\n").unwrap();
    rx.wait_for(SECS(20), "a RESOLVED task", |r| {
        r.iter().any(|x| {
            x.json()["data"]["name"]
                .as_str()
                .unwrap_or_default()
                .contains("RESOLVED")
        })
    });
    std::thread::sleep(QUIET);
    let all = rx.requests();
    assert_eq!(all.len(), 2, "{}", herd_tests::receiver::describe(&all));
    assert!(all.iter().all(|x| x.path == "/api/1.0/tasks"
        && x.header("authorization") == Some(format!("Bearer {TOKEN}").as_str())));
    assert!(
        !herd.log().contains("as4n4-t0k3n"),
        "the token never appears in the node's log"
    );
}

// ---------------------------------------------------------------------------------
// 6. nginx requests per country

/// GET `path` from nginx on 127.0.0.1; returns the status line.
fn http_get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to nginx");
    s.set_read_timeout(Some(SECS(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: herd-extras\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.lines().next().unwrap_or_default().to_string()
}

#[test]
fn nginx_requests_per_country_with_a_built_database() {
    phase!("a MaxMind DB built here: 127.0.0.0/24 -> DE");
    let files = temp_dir("herd-extras-geoip-");
    let db = files.path().join("country.mmdb");
    let mut w = MmdbWriter::new(4);
    w.insert("127.0.0.0", 24, &country("DE", "Germany"));
    std::fs::write(&db, w.build("Herd-Extras-Country")).unwrap();

    phase!("a real nginx logging to its access log; an nginx check with geoip_db");
    let nginx = Nginx::start();
    let check = format!(
        "{{ kind = \"nginx\", name = \"web\", access_log = {}, geoip_db = {} }}",
        toml_str(&nginx.access_log_path().display().to_string()),
        toml_str(&db.display().to_string())
    );
    let fleet = format!(
        "[[target]]\nname = \"edge-1\"\ntransport = \"local\"\ninterval = \"1s\"\nchecks = [{check}]\n"
    );
    let herd = Herd::start(HerdOptions::default().fleet(fleet));
    wait_until(SECS(15), "the first scrape of the nginx check", || {
        !points_with(&herd, "edge-1", "check.status", "check", "web").is_empty()
    });
    let c = check_status(&herd, "edge-1", "web").unwrap();
    eprintln!("    check web: {c}");
    assert_eq!(c["status"], "ok", "{c}");

    phase!("7 requests from 127.0.0.1 after the first scrape");
    const N: usize = 7;
    for i in 0..N {
        let path = if i % 3 == 2 { "/nope" } else { "/health" };
        let line = http_get(nginx.port(), path);
        assert!(line.starts_with("HTTP/1.1 "), "{line}");
    }
    wait_until(SECS(5), "nginx logged the requests", || {
        nginx.access_log().lines().count() >= N
    });

    phase!("nginx.log.requests{{country=\"DE\"}} adds up to 7");
    let de = wait_for(SECS(15), "7 requests counted for DE", || {
        let p = points_with(&herd, "edge-1", "nginx.log.requests", "country", "DE");
        (p.iter().map(|x| x.1).sum::<f64>() >= N as f64).then_some(p)
    });
    eprintln!("    DE points: {de:?}");
    std::thread::sleep(SECS(2));
    let q = herd.query_json("edge-1", "nginx.log.requests");
    let mut countries = BTreeSet::new();
    let mut by_country = 0.0;
    let mut total = 0.0;
    for s in q["series"].as_array().into_iter().flatten() {
        let sum: f64 = s["points"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p.get(1)?.as_f64())
            .sum();
        match (
            s["labels"]["country"].as_str(),
            s["labels"]["class"].as_str(),
        ) {
            (Some(c), _) => {
                countries.insert(c.to_string());
                by_country += sum;
            }
            (None, None) => total += sum,
            _ => {}
        }
    }
    eprintln!("    countries {countries:?}, {by_country} by country, {total} in all");
    assert_eq!(countries, BTreeSet::from(["DE".to_string()]), "{q}");
    assert_eq!(
        by_country, N as f64,
        "each request counted once, for DE: {q}"
    );
    assert_eq!(total, N as f64, "the total without country matches: {q}");
    assert!(
        herd.events_of("edge-1", "check_error").is_empty(),
        "{:?}",
        herd.events_of("edge-1", "check_error")
    );
}
