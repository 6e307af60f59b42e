//! Foundation end to end: the real herd binary scraping a real OpenSSH sshd on
//! loopback (and the local host), driven and observed only through the CLI.
use std::collections::BTreeSet;
use std::time::Duration;

use herd_tests::{
    herd_cli, local_target, now_ms, phase, ssh_target, wait_for, wait_until, Herd, HerdOptions,
    Sshd, SSH_USER,
};

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// Waits until `target` has a `target.up` point of `value` taken at or after `since_ms`.
fn wait_up_value(herd: &Herd, target: &str, value: f64, since_ms: i64, timeout: Duration) {
    wait_until(
        timeout,
        &format!("{target} has a target.up point of {value} since {since_ms}"),
        || {
            herd.points(target, "target.up")
                .iter()
                .any(|&(ts, v)| ts >= since_ms && v == value)
        },
    );
}

/// Waits until `herd events` lists an event of `kind` for `target` at or after
/// `since_ms`; returns its message.
fn wait_event(herd: &Herd, target: &str, kind: &str, since_ms: i64, timeout: Duration) -> String {
    let mut message = String::new();
    wait_until(
        timeout,
        &format!("a {kind} event for {target} since {since_ms}"),
        || match herd
            .events_of(target, kind)
            .into_iter()
            .find(|e| e["ts_ms"].as_i64().unwrap_or(0) >= since_ms)
        {
            Some(e) => {
                message = e["message"].as_str().unwrap_or_default().to_string();
                true
            }
            None => false,
        },
    );
    eprintln!("    {kind}: {message}");
    message
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn vitals_over_ssh_appear_in_query() {
    phase!("start a real sshd and a herd node with one ssh target at 1s");
    let sshd = Sshd::start();
    let herd = Herd::start(HerdOptions::with_sshd(&sshd).fleet(ssh_target(
        "sshd-1",
        &sshd.address(),
        "1s",
    )));

    phase!("target.up of sshd-1 reaches 1");
    wait_up_value(&herd, "sshd-1", 1.0, 0, SECS(20));

    let status = herd.target_status("sshd-1").expect("sshd-1 in status");
    assert_eq!(
        status["exec_mode"], "shell",
        "commands run in one long-lived shell: {status}"
    );

    phase!("the vitals metrics have points");
    for metric in ["cpu.used_pct", "mem.used_pct", "load.1", "disk.used_pct"] {
        wait_until(SECS(15), &format!("{metric} has points"), || {
            !herd.points("sshd-1", metric).is_empty()
        });
    }
    for metric in ["cpu.used_pct", "mem.used_pct"] {
        for (ts, v) in herd.points("sshd-1", metric) {
            assert!((0.0..=100.0).contains(&v), "{metric} at {ts} is {v}");
        }
    }
    let disk = herd.query_json("sshd-1", "disk.used_pct");
    assert_eq!(disk["target"], "sshd-1");
    assert_eq!(disk["metric"], "disk.used_pct");
    let series = disk["series"].as_array().expect("series is an array");
    assert!(
        series.iter().all(|s| s["labels"]["mount"]
            .as_str()
            .is_some_and(|m| m.starts_with('/'))),
        "every disk series names its mount: {disk}"
    );
    assert!(disk["gaps"].is_array(), "query JSON has gaps: {disk}");

    phase!("status --json shows the target up, owned by node 1");
    wait_until(SECS(10), "status shows sshd-1 up=true", || {
        herd.target_status("sshd-1")
            .is_some_and(|t| t["up"] == true)
    });
    let status = herd.status_json();
    let node = &status["nodes"][0];
    assert_eq!(node["id"], 1, "{status}");
    assert_eq!(node["alive"], true, "{status}");
    let t = herd.target_status("sshd-1").unwrap();
    assert_eq!(t["owner"], 1, "{t}");
    assert!(t["last_scrape_age_s"].as_f64().is_some(), "{t}");

    phase!("sshd saw a public key login as {SSH_USER}");
    let log = sshd.log();
    assert!(
        log.contains(&format!("Accepted publickey for {SSH_USER}")),
        "sshd log has no accepted login:\n{log}"
    );
}

#[test]
fn sshd_stop_marks_down_and_restart_recovers() {
    phase!("start sshd and a node scraping it at 1s");
    let mut sshd = Sshd::start();
    let herd = Herd::start(HerdOptions::with_sshd(&sshd).fleet(ssh_target(
        "sshd-1",
        &sshd.address(),
        "1s",
    )));
    wait_up_value(&herd, "sshd-1", 1.0, 0, SECS(20));

    phase!("stop sshd (and its session processes): target.up 0 and a target_down event");
    let stopped = now_ms();
    sshd.stop();
    wait_up_value(&herd, "sshd-1", 0.0, stopped, SECS(20));
    let message = wait_event(&herd, "sshd-1", "target_down", stopped, SECS(10));
    assert!(
        message.contains("refused") || message.contains("broke"),
        "target_down says why (refused or session broken): {message}"
    );
    wait_until(SECS(10), "status shows sshd-1 up=false", || {
        herd.target_status("sshd-1")
            .is_some_and(|t| t["up"] == false)
    });
    assert!(herd.cli(&["status"]).status.success(), "node still answers");

    phase!("restart sshd on the same port: target.up 1 again and a target_up event");
    let restarted = now_ms();
    sshd.restart();
    wait_up_value(&herd, "sshd-1", 1.0, restarted, SECS(20));
    wait_event(&herd, "sshd-1", "target_up", restarted, SECS(10));
    wait_until(SECS(10), "status shows sshd-1 up=true", || {
        herd.target_status("sshd-1")
            .is_some_and(|t| t["up"] == true)
    });
}

#[test]
fn changed_host_key_is_refused_with_event() {
    phase!("known_hosts lists a different key for [127.0.0.1]:PORT");
    let sshd = Sshd::start();
    let foreign = sshd.foreign_known_hosts_line();
    assert_ne!(foreign, sshd.known_hosts_line());
    let fleet = ssh_target("sshd-1", &sshd.address(), "1s");

    for mode in ["strict", "accept-new"] {
        phase!("a node with host_key_checking = {mode} refuses the changed key");
        let known_hosts = sshd.dir().join(format!("known_hosts.{mode}"));
        std::fs::write(&known_hosts, format!("{foreign}\n")).unwrap();
        let herd = Herd::start(
            HerdOptions::with_sshd(&sshd)
                .known_hosts(&known_hosts)
                .host_key_checking(mode)
                .fleet(fleet.clone()),
        );
        let message = wait_event(&herd, "sshd-1", "host_key_changed", 0, SECS(20));
        assert!(message.contains("changed"), "{message}");
        wait_up_value(&herd, "sshd-1", 0.0, 0, SECS(10));
        wait_until(SECS(10), "status shows sshd-1 up=false", || {
            herd.target_status("sshd-1")
                .is_some_and(|t| t["up"] == false && t["last_error"].as_str().is_some())
        });
        assert!(
            herd.points("sshd-1", "target.up")
                .iter()
                .all(|p| p.1 == 0.0),
            "no successful scrape with a changed key"
        );
        assert!(
            herd.points("sshd-1", "cpu.used_pct").is_empty(),
            "no data with a changed key"
        );
        assert_eq!(
            std::fs::read_to_string(&known_hosts).unwrap(),
            format!("{foreign}\n"),
            "known_hosts is left alone"
        );
    }

    phase!("sshd never accepted a login");
    let log = sshd.log();
    assert!(
        !log.contains("Accepted publickey"),
        "sshd accepted a login despite the changed host key:\n{log}"
    );
}

#[test]
fn accept_new_does_not_learn_a_second_key_type_for_a_known_host() {
    phase!("known_hosts lists an ECDSA key for [127.0.0.1]:PORT; sshd presents ed25519");
    let sshd = Sshd::start();
    let ecdsa = sshd.dir().join("other_ecdsa_key");
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ecdsa", "-N", "", "-C", "other", "-f"])
        .arg(&ecdsa)
        .output()
        .expect("ssh-keygen");
    assert!(out.status.success());
    let public = std::fs::read_to_string(ecdsa.with_extension("pub")).unwrap();
    let key: Vec<&str> = public.split_whitespace().take(2).collect();
    assert_eq!(key[0], "ecdsa-sha2-nistp256");
    let line = format!("[127.0.0.1]:{} {}\n", sshd.port(), key.join(" "));
    let known_hosts = sshd.dir().join("known_hosts.ecdsa");
    std::fs::write(&known_hosts, &line).unwrap();

    phase!("an accept-new node refuses the ed25519 key instead of learning it");
    let herd = Herd::start(
        HerdOptions::with_sshd(&sshd)
            .known_hosts(&known_hosts)
            .host_key_checking("accept-new")
            .fleet(ssh_target("sshd-1", &sshd.address(), "1s")),
    );
    let message = wait_event(&herd, "sshd-1", "host_key_changed", 0, SECS(20));
    assert!(message.contains("known_hosts line 1"), "{message}");
    assert!(herd.events_of("sshd-1", "host_key_learned").is_empty());
    assert_eq!(
        std::fs::read_to_string(&known_hosts).unwrap(),
        line,
        "known_hosts is left alone"
    );
    assert!(
        !sshd.log().contains("Accepted publickey"),
        "sshd accepted a login from a node that took an unrecorded key"
    );
}

#[test]
fn unknown_host_key_strict_refused_accept_new_learns() {
    let sshd = Sshd::start();
    let fleet = ssh_target("sshd-1", &sshd.address(), "1s");

    phase!("strict node with an empty known_hosts: host_key_unknown, no data");
    let strict = Herd::start(HerdOptions {
        known_hosts: None, // an empty file in the node's dir
        ..HerdOptions::with_sshd(&sshd).fleet(fleet.clone())
    });
    let message = wait_event(&strict, "sshd-1", "host_key_unknown", 0, SECS(20));
    assert!(message.contains("strict"), "{message}");
    wait_up_value(&strict, "sshd-1", 0.0, 0, SECS(10));
    assert!(strict
        .points("sshd-1", "target.up")
        .iter()
        .all(|p| p.1 == 0.0));
    assert!(
        strict.points("sshd-1", "cpu.used_pct").is_empty(),
        "no data when strict"
    );
    assert_eq!(std::fs::read_to_string(strict.known_hosts()).unwrap(), "");
    assert!(
        !sshd.log().contains("Accepted publickey"),
        "strict logged in"
    );
    drop(strict);

    phase!("accept-new node with an empty known_hosts: learns the key and scrapes");
    let learner = Herd::start(HerdOptions {
        known_hosts: None,
        ..HerdOptions::with_sshd(&sshd)
            .host_key_checking("accept-new")
            .fleet(fleet.clone())
    });
    wait_up_value(&learner, "sshd-1", 1.0, 0, SECS(20));
    wait_event(&learner, "sshd-1", "host_key_learned", 0, SECS(10));
    let learned = std::fs::read_to_string(learner.known_hosts()).unwrap();
    let key_b64 = sshd
        .host_key()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string();
    assert!(
        learned.contains(&key_b64),
        "known_hosts has the host key {key_b64}:\n{learned}"
    );
    assert!(
        learner.events_of("sshd-1", "host_key_unknown").is_empty(),
        "accept-new does not report the key as unknown"
    );

    phase!("OpenSSH's own ssh-keygen finds the learned entry for [127.0.0.1]:PORT");
    let out = std::process::Command::new("ssh-keygen")
        .args(["-F", &format!("[127.0.0.1]:{}", sshd.port()), "-f"])
        .arg(learner.known_hosts())
        .output()
        .expect("ssh-keygen -F");
    assert!(
        out.status.success(),
        "ssh-keygen -F does not find the learned entry in:\n{learned}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&key_b64));

    phase!("a strict node using the learned file connects");
    let strict_again = Herd::start(
        HerdOptions::with_sshd(&sshd)
            .known_hosts(learner.known_hosts())
            .fleet(fleet),
    );
    wait_up_value(&strict_again, "sshd-1", 1.0, 0, SECS(20));
}

#[test]
fn closed_port_is_an_event_not_a_crash() {
    phase!("a node with an ssh target on a port where nothing listens");
    let port = herd_tests::free_port();
    let mut herd = Herd::start(HerdOptions::default().fleet(ssh_target(
        "nobody",
        &format!("127.0.0.1:{port}"),
        "1s",
    )));

    phase!("a target_down event says refused; target.up is 0");
    let message = wait_event(&herd, "nobody", "target_down", 0, SECS(20));
    assert!(message.contains("refused"), "{message}");
    wait_up_value(&herd, "nobody", 0.0, 0, SECS(10));
    let t = herd
        .target_status("nobody")
        .expect("status lists the target");
    assert_eq!(t["up"], false, "{t}");
    assert!(
        t["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("refused")),
        "{t}"
    );

    phase!("the node keeps answering while it retries, and records one down event");
    for _ in 0..5 {
        assert!(herd.cli(&["status", "--json"]).status.success());
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(herd.is_running(), "the node is still running");
    assert_eq!(
        herd.events_of("nobody", "target_down").len(),
        1,
        "one event per transition, not per retry"
    );

    phase!("SIGTERM: the node exits 0");
    let status = herd.sigterm();
    assert_eq!(status.code(), Some(0), "exit status {status}");
}

#[test]
fn apply_adds_and_drops_scrapers_live() {
    phase!("a node with ssh target a");
    let sshd = Sshd::start();
    let a = ssh_target("a", &sshd.address(), "1s");
    let b = local_target("b", "1s");
    let herd = Herd::start(HerdOptions::with_sshd(&sshd).fleet(a.clone()));
    wait_up_value(&herd, "a", 1.0, 0, SECS(20));

    phase!("apply a + b (local): b's samples appear without a restart");
    let out = herd.apply(&format!("{a}{b}"));
    assert!(out.contains("added: b"), "{out}");
    wait_up_value(&herd, "b", 1.0, 0, SECS(15));
    wait_until(SECS(10), "b has cpu.used_pct points", || {
        !herd.points("b", "cpu.used_pct").is_empty()
    });
    let names: BTreeSet<String> = target_names(&herd);
    assert_eq!(
        names,
        ["a", "b"].map(String::from).into(),
        "status lists a and b"
    );

    phase!("apply b alone: a leaves status and gets no new samples");
    let out = herd.apply(&b);
    assert!(out.contains("removed: a"), "{out}");
    wait_until(SECS(10), "status no longer lists a", || {
        !target_names(&herd).contains("a")
    });
    // A scrape in flight at the apply may still land; then nothing more may.
    std::thread::sleep(SECS(1));
    let a_last = last_ts(&herd, "a");
    let b_last = last_ts(&herd, "b");
    std::thread::sleep(SECS(3));
    assert_eq!(
        last_ts(&herd, "a"),
        a_last,
        "a was scraped after it was removed"
    );
    assert!(last_ts(&herd, "b") > b_last, "b is still scraped");

    phase!("each apply is recorded as a spec_applied event");
    let applied = herd.events_json()["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "spec_applied")
        .count();
    assert!(applied >= 2, "spec_applied events: {applied}");
}

fn target_names(herd: &Herd) -> BTreeSet<String> {
    herd.status_json()["targets"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str().map(String::from))
        .collect()
}

fn last_ts(herd: &Herd, target: &str) -> Option<i64> {
    herd.points(target, "target.up").last().map(|p| p.0)
}

#[test]
fn check_reports_every_error_with_lines() {
    let dir = tempfile::tempdir().unwrap();

    phase!("herd check on a fleet with 3 distinct errors: exit 2, one file:line: line each");
    let bad = dir.path().join("bad-fleet.toml");
    std::fs::write(
        &bad,
        r#"[[target]]
name = "a"
address = "h:99999"

[[target]]
name = "b"
transport = "local"
interval = "soon"

[[target]]
name = "c"
transport = "local"
colour = "blue"
"#,
    )
    .unwrap();
    let bad_s = bad.display().to_string();
    let out = herd_cli(&["check", &bad_s], SECS(30));
    let err = stderr(&out);
    eprintln!("{err}");
    assert_eq!(out.status.code(), Some(2), "{err}");
    let located: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with(&format!("{bad_s}:")))
        .collect();
    assert_eq!(located.len(), 3, "three located errors:\n{err}");
    for (line, key) in [(3, "address"), (8, "interval"), (13, "colour")] {
        let prefix = format!("{bad_s}:{line}: ");
        assert!(
            located
                .iter()
                .any(|l| l.starts_with(&prefix) && l.contains(key)),
            "no error at {prefix} naming {key}:\n{err}"
        );
    }

    phase!("herd check on a good fleet: exit 0");
    let good = dir.path().join("good-fleet.toml");
    std::fs::write(
        &good,
        format!(
            "{}{}",
            ssh_target("web-1", "10.0.0.5:22", "10s"),
            local_target("me", "5s")
        ),
    )
    .unwrap();
    let out = herd_cli(&["check", &good.display().to_string()], SECS(30));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    phase!("herd node with an unknown key in herd.toml: exit 2 naming file, line and key");
    let bad_node = dir.path().join("bad-herd.toml");
    std::fs::write(
        &bad_node,
        format!(
            "[node]\nid = 7\ngrpc = \"127.0.0.1:{}\"\ndata_dir = \"{}\"\ncolour = \"blue\"\n",
            herd_tests::free_port(),
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let bad_node_s = bad_node.display().to_string();
    let out = herd_cli(
        &["--log-format", "json", "node", "--config", &bad_node_s],
        SECS(20),
    );
    let err = stderr(&out);
    eprintln!("{err}");
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.lines()
            .any(|l| l.starts_with(&format!("{bad_node_s}:5:")) && l.contains("colour")),
        "the error names {bad_node_s}, line 5 and the key colour:\n{err}"
    );
    assert!(
        !dir.path().join("data").exists(),
        "a refused node creates no store"
    );

    phase!("herd apply of the bad fleet to a running node: exit 2, spec unchanged");
    let herd = Herd::start(HerdOptions::default().fleet(local_target("me", "1s")));
    let before = herd.status_json()["spec_version"].clone();
    let out = herd.cli(&["apply", &bad_s]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("{bad_s}:8:")), "{err}");
    assert_eq!(herd.status_json()["spec_version"], before);
    assert!(target_names(&herd).contains("me"));
}

#[test]
fn kill9_during_writes_keeps_the_store() {
    phase!("a node with 3 local targets at 1s, flush_interval 200ms");
    let targets = ["l-1", "l-2", "l-3"];
    let fleet: String = targets.iter().map(|t| local_target(t, "1s")).collect();
    let mut herd = Herd::start(HerdOptions::default().fleet(fleet));
    for t in targets {
        wait_until(SECS(15), &format!("{t} has 3 target.up points"), || {
            herd.points(t, "target.up").len() >= 3
        });
    }

    for cycle in 1..=3 {
        phase!("cycle {cycle}: let it write, query, kill -9 mid-write");
        std::thread::sleep(Duration::from_millis(1300));
        let before: Vec<Vec<(i64, f64)>> = targets
            .iter()
            .map(|t| herd.points(t, "target.up"))
            .collect();
        let cpu_before = herd.points("l-1", "cpu.used_pct");
        herd.kill9();

        phase!("cycle {cycle}: restart on the same data_dir; every point seen before is there");
        herd.restart();
        for (t, seen) in targets.iter().zip(&before) {
            let after: BTreeSet<(i64, u64)> = herd
                .points(t, "target.up")
                .into_iter()
                .map(|(ts, v)| (ts, v.to_bits()))
                .collect();
            let lost: Vec<&(i64, f64)> = seen
                .iter()
                .filter(|(ts, v)| !after.contains(&(*ts, v.to_bits())))
                .collect();
            assert!(
                lost.is_empty(),
                "cycle {cycle}: {t} lost {} of {} acknowledged points: {lost:?}",
                lost.len(),
                seen.len()
            );
        }
        let cpu_after = herd.points("l-1", "cpu.used_pct");
        for p in &cpu_before {
            assert!(
                cpu_after.contains(p),
                "cycle {cycle}: lost cpu.used_pct point {p:?}"
            );
        }

        phase!("cycle {cycle}: the node keeps adding points after the restart");
        for (t, seen) in targets.iter().zip(&before) {
            let last = seen.last().map(|p| p.0).unwrap_or(0);
            wait_until(
                SECS(15),
                &format!("{t} has a point newer than {last}"),
                || {
                    herd.points(t, "target.up")
                        .last()
                        .is_some_and(|p| p.0 > last)
                },
            );
        }
    }
    let status = herd.status_json();
    assert!(
        status["store"]["samples"].as_u64().unwrap_or(0) > 0,
        "store counts samples: {status}"
    );
}

#[test]
fn sigterm_exits_zero_and_flushes() {
    phase!("a node with a local target at 1s and a 30s flush_interval (only shutdown flushes)");
    let mut herd = Herd::start(HerdOptions {
        flush_interval: "30s".into(),
        ..HerdOptions::default().fleet(local_target("me", "1s"))
    });
    wait_until(SECS(15), "status shows 3 scrapes of me", || {
        herd.target_status("me")
            .and_then(|t| t["scrapes"].as_u64())
            .is_some_and(|n| n >= 3)
    });
    let unflushed = herd.points("me", "target.up").len();
    eprintln!("    {unflushed} points visible before SIGTERM");

    phase!("SIGTERM: exit status 0");
    let stopped = now_ms();
    let status = herd.sigterm();
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert!(
        herd.log().contains("stopped cleanly"),
        "{}",
        herd.log_tail(20)
    );

    phase!("restart: the samples taken before SIGTERM are there");
    herd.restart();
    let points = herd.points("me", "target.up");
    let before_stop = points.iter().filter(|p| p.0 <= stopped).count();
    assert!(
        before_stop >= 3 && before_stop >= unflushed,
        "only {before_stop} points from before SIGTERM survived ({unflushed} were visible): {points:?}"
    );
    assert!(points.iter().all(|p| p.1 == 1.0), "{points:?}");

    phase!("the restarted node scrapes again");
    herd.cli_ok(&["status"]);
    let last = points.last().map(|p| p.0).unwrap_or(0);
    // The new samples are only committed at the next flush (30 s) or shutdown.
    std::thread::sleep(SECS(2));
    let status = herd.sigterm();
    assert_eq!(status.code(), Some(0), "second exit status {status}");
    herd.restart();
    assert!(
        herd.points("me", "target.up")
            .last()
            .is_some_and(|p| p.0 > last),
        "new points after the restart"
    );
}

/// ssh-agent authentication (no key file configured) against a known_hosts file
/// whose entries are hashed (`ssh-keygen -H`), as OpenSSH writes them by default.
#[test]
fn ssh_agent_auth_and_hashed_known_hosts() {
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();

    phase!("a real ssh-agent holding the client key");
    let sock = dir.path().join("agent.sock");
    let mut agent = std::process::Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&sock)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("ssh-agent (openssh-client) is installed");
    wait_until(SECS(10), "the agent's socket", || sock.exists());
    let added = std::process::Command::new("ssh-add")
        .arg(sshd.client_key())
        .env("SSH_AUTH_SOCK", &sock)
        .output()
        .unwrap();
    assert!(
        added.status.success(),
        "ssh-add: {}",
        String::from_utf8_lossy(&added.stderr)
    );

    phase!("known_hosts with hashed entries only");
    let hashed = dir.path().join("known_hosts");
    std::fs::copy(sshd.known_hosts(), &hashed).unwrap();
    let out = std::process::Command::new("ssh-keygen")
        .arg("-H")
        .arg("-f")
        .arg(&hashed)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ssh-keygen -H: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&hashed).unwrap();
    assert!(
        text.starts_with("|1|") && !text.contains("127.0.0.1"),
        "{text}"
    );

    phase!("a node without a key file logs in through the agent");
    let herd = Herd::start(HerdOptions {
        ssh_key: None,
        known_hosts: Some(hashed),
        env: vec![("SSH_AUTH_SOCK".into(), sock.display().to_string())],
        ..HerdOptions::default().fleet(ssh_target("agent-1", &sshd.address(), "1s"))
    });
    wait_until(SECS(20), "target.up = 1 through the agent", || {
        herd.points("agent-1", "target.up")
            .iter()
            .any(|p| p.1 == 1.0)
    });
    assert!(
        herd.points("agent-1", "cpu.used_pct").len() + herd.points("agent-1", "load.1").len() > 0
    );
    let _ = agent.kill();
    let _ = agent.wait();
}

/// A node that cannot start says why and ends: a bad `--fleet` is refused before
/// anything starts, like `herd check` (exit 2, errors by line); a `node.http` port
/// that is taken ends the start with exit 1, naming the address.
#[test]
fn a_node_that_cannot_start_says_why_and_ends() {
    let dir = tempfile::tempdir().unwrap();
    let grpc = format!("127.0.0.1:{}", herd_tests::free_port());
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let http = taken.local_addr().unwrap().to_string();
    let config = dir.path().join("herd.toml");
    let write = |http: &str| {
        std::fs::write(
            &config,
            format!(
                "[node]\nid = 1\ngrpc = \"{grpc}\"\nhttp = \"{http}\"\ndata_dir = \"{}\"\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap()
    };
    write(&http);
    let config_s = config.display().to_string();

    phase!("a bad --fleet: exit 2 with the line, nothing started");
    let bad = dir.path().join("fleet.toml");
    std::fs::write(&bad, local_target("a", "soon")).unwrap();
    let out = herd_cli(
        &[
            "node",
            "--config",
            &config_s,
            "--fleet",
            &bad.display().to_string(),
        ],
        SECS(30),
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("fleet.toml:4: target[0] (a).interval"),
        "{err}"
    );

    phase!("node.http taken: exit 1 naming it");
    let out = herd_cli(&["node", "--config", &config_s], SECS(60));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("cannot listen on node.http {http}")),
        "{err}"
    );
    drop(taken);
}

/// An account whose sshd runs a forced command that refuses a plain shell (and
/// runs anything else): the node uses an exec channel per command there, says so
/// in `herd status`, and the vitals still come.
#[test]
fn a_forced_command_account_gets_exec_channels() {
    let sshd = Sshd::start();
    sshd.force_command(
        "case \"$SSH_ORIGINAL_COMMAND\" in 'exec /bin/sh') echo 'no shell here'; exit 1;; \
         *) exec /bin/sh -c \"$SSH_ORIGINAL_COMMAND\";; esac",
    );
    let herd = Herd::start(HerdOptions::with_sshd(&sshd).fleet(ssh_target(
        "forced",
        &sshd.address(),
        "1s",
    )));
    wait_up_value(&herd, "forced", 1.0, 0, SECS(20));
    let mode = wait_for(SECS(15), "the exec mode in status", || {
        let s = herd.target_status("forced")?;
        s["exec_mode"].as_str().map(str::to_string)
    });
    assert!(mode.starts_with("exec ("), "{mode}");
    assert!(
        mode.contains("ended at once") || mode.contains("closed"),
        "{mode}"
    );
    wait_until(SECS(15), "vitals over exec channels", || {
        herd.points("forced", "cpu.used_pct").len() >= 2
    });
    let out = herd.cli_ok(&["status"]);
    assert!(out.contains("ssh (exec ("), "{out}");
}

/// A command that hangs past its timeout over the long-lived shell: it is
/// reported as timed out each time, the shell is closed and opened again, and the
/// target's other checks go on (they never wait behind the hung one).
#[test]
fn a_hung_command_times_out_and_the_other_checks_go_on() {
    let sshd = Sshd::start();
    let fleet = herd_tests::ssh_target_with(
        "hangs",
        &sshd.address(),
        &[
            "{ kind = \"vitals\" }".to_string(),
            "{ kind = \"command\", name = \"hang\", command = \"sleep 30\", interval = \"2s\", timeout = \"1s\" }"
                .to_string(),
            "{ kind = \"command\", name = \"quick\", command = \"echo OK\" }".to_string(),
        ],
    );
    let herd = Herd::start(HerdOptions::with_sshd(&sshd).fleet(fleet));
    wait_up_value(&herd, "hangs", 1.0, 0, SECS(20));
    let check = |name: &str| -> Option<serde_json::Value> {
        let s = herd.target_status("hangs")?;
        s["checks"]
            .as_array()?
            .iter()
            .find(|c| c["name"] == name)
            .cloned()
    };
    let hang = wait_for(SECS(20), "the hung command reported", || {
        check("hang").filter(|c| c["status"] == "unknown")
    });
    assert!(
        hang["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("did not finish within"),
        "{hang}"
    );
    let before = herd.points("hangs", "cpu.used_pct").len();
    let quick_before = wait_for(SECS(10), "the quick check's first verdict", || {
        check("quick").and_then(|c| c["ts_ms"].as_i64())
    });
    std::thread::sleep(SECS(5));
    assert!(
        herd.points("hangs", "cpu.used_pct").len() >= before + 3,
        "vitals go on beside the hung command"
    );
    let quick = check("quick").expect("the quick check");
    assert_eq!(quick["status"], "ok", "{quick}");
    assert!(
        quick["ts_ms"].as_i64().is_some_and(|t| t > quick_before),
        "the quick check ran again: {quick}"
    );
    assert_eq!(
        herd.target_status("hangs").unwrap()["exec_mode"],
        "shell",
        "a timeout closes the shell, it is not refused"
    );
}
