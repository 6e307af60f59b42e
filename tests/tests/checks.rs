//! The check kinds end to end: the real herd binary checking real servers — nginx
//! (plain and TLS, with certificates made by openssl), node_exporter, the
//! Monitoring Plugins, unix sockets and files — from the node and through a real
//! OpenSSH sshd, observed only through the CLI (`query`, `query --rollup`,
//! `status --json`, `check`).
//!
//! Verdicts are `check.status{check,kind}`: 0 ok, 1 warning, 2 critical, 3 unknown.
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use herd_tests::{
    free_port, herd_cli, local_target_with, now_ms, phase, ssh_target_with, toml_str, wait_for,
    wait_until, Herd, HerdOptions, Nginx, NodeExporter, Sshd, TestPki, TlsListener,
    UnixSocketServer, SSH_USER,
};

const SECS: fn(u64) -> Duration = Duration::from_secs;
/// Longest wait for a check to reach a verdict (1 s interval: a handful of scrapes).
const VERDICT: Duration = Duration::from_secs(20);

const OK: f64 = 0.0;
const WARNING: f64 = 1.0;
const CRITICAL: f64 = 2.0;
const UNKNOWN: f64 = 3.0;

const PLUGINS: &str = "/usr/lib/nagios/plugins";

// ---------------------------------------------------------------- fleet snippets

// ---------------------------------------------------------------- observations

/// Every series of `metric` of `target`, keyed by their `check` label.
fn by_check(herd: &Herd, target: &str, metric: &str) -> BTreeMap<String, Vec<Value>> {
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let v = herd.query_json(target, metric);
    for s in v["series"].as_array().into_iter().flatten() {
        let check = s["labels"]["check"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        out.entry(check).or_default().push(s.clone());
    }
    out
}

/// The points of every series of `metric` of `check`, sorted by time.
fn points(herd: &Herd, target: &str, metric: &str, check: &str) -> Vec<(i64, f64)> {
    let mut pts: Vec<(i64, f64)> = by_check(herd, target, metric)
        .remove(check)
        .unwrap_or_default()
        .iter()
        .flat_map(|s| s["points"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| Some((p.get(0)?.as_i64()?, p.get(1)?.as_f64()?)))
        .collect();
    pts.sort_by_key(|p| p.0);
    pts
}

/// The newest value of `metric` of `check`.
fn last(herd: &Herd, target: &str, metric: &str, check: &str) -> Option<f64> {
    points(herd, target, metric, check).last().map(|p| p.1)
}

/// Waits until the newest `check.status` of every listed check is the wanted
/// value; prints the verdicts and details as seen by `herd status --json`.
fn wait_statuses(herd: &Herd, target: &str, want: &[(&str, f64)]) {
    let newest = |series: &BTreeMap<String, Vec<Value>>, check: &str| -> Option<f64> {
        series
            .get(check)?
            .iter()
            .flat_map(|s| s["points"].as_array().cloned().unwrap_or_default())
            .filter_map(|p| Some((p.get(0)?.as_i64()?, p.get(1)?.as_f64()?)))
            .max_by_key(|p| p.0)
            .map(|p| p.1)
    };
    let start = std::time::Instant::now();
    let seen = loop {
        let series = by_check(herd, target, "check.status");
        let seen: BTreeMap<&str, Option<f64>> =
            want.iter().map(|(c, _)| (*c, newest(&series, c))).collect();
        if want.iter().all(|(c, v)| seen[c] == Some(*v)) || start.elapsed() > VERDICT {
            break seen;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    for (c, _) in want {
        let detail = check_state(herd, target, c)
            .map(|s| format!("{} — {}", s["status"], s["detail"]))
            .unwrap_or_default();
        eprintln!("    {target}/{c}: check.status {:?}  {detail}", seen[c]);
    }
    assert!(
        want.iter().all(|(c, v)| seen[c] == Some(*v)),
        "timed out after {VERDICT:?} waiting until {target}: check.status of {want:?}; saw {seen:?}"
    );
    eprintln!(
        "    ok after {:.1}s: {target} verdicts",
        start.elapsed().as_secs_f64()
    );
}

/// The `targets[].checks[]` entry of `check` in `herd status --json`.
fn check_state(herd: &Herd, target: &str, check: &str) -> Option<Value> {
    herd.target_status(target)?["checks"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == check)
        .cloned()
}

/// The detail text `herd status --json` shows for `check`.
fn detail(herd: &Herd, target: &str, check: &str) -> String {
    check_state(herd, target, check)
        .and_then(|c| c["detail"].as_str().map(String::from))
        .unwrap_or_default()
}

/// `herd query TARGET http.response_ms --rollup GRAN --json`: the buckets of `check`.
fn rollup_buckets(herd: &Herd, target: &str, check: &str, granularity: &str) -> Vec<Value> {
    let text = herd.cli_ok(&[
        "query",
        target,
        "http.response_ms",
        "--rollup",
        granularity,
        "--json",
    ]);
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("no JSON ({e}): {text}"));
    assert_eq!(v["rollup"], granularity, "{v}");
    v["series"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["labels"]["check"] == check)
        .flat_map(|s| s["buckets"].as_array().cloned().unwrap_or_default())
        .collect()
}

fn count(b: &Value) -> u64 {
    b["count"].as_u64().unwrap_or(0)
}

/// The statuses map of a bucket as (status, count) pairs.
fn statuses(b: &Value) -> BTreeMap<String, u64> {
    b["statuses"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
        .collect()
}

/// Asserts that every bucket of a rollup counts only `status`, and that the
/// response times are ordered (or absent for requests that got no answer).
fn assert_buckets_only(buckets: &[Value], status: &str, width_ms: i64) {
    assert!(!buckets.is_empty(), "no buckets");
    for b in buckets {
        let st = statuses(b);
        assert_eq!(
            st,
            BTreeMap::from([(status.to_string(), count(b))]),
            "bucket counts only {status}: {b}"
        );
        assert_eq!(
            b["bucket_ms"].as_i64().unwrap_or(1) % width_ms,
            0,
            "bucket aligned to {width_ms} ms: {b}"
        );
        if status == "failed" {
            assert!(b["min"].is_null() && b["mean"].is_null(), "no times: {b}");
        } else {
            let (min, mean, max) = (
                b["min"].as_f64().expect("min"),
                b["mean"].as_f64().expect("mean"),
                b["max"].as_f64().expect("max"),
            );
            assert!(
                0.0 <= min && min <= mean && mean <= max && max < 10_000.0,
                "min <= mean <= max: {b}"
            );
        }
    }
}

// ---------------------------------------------------------------- local helpers

/// A temp dir that the SSH login user can read and traverse (0755).
fn shared_dir(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// A temp dir only root may enter (0700; tempfile's default is 0777 less the umask).
fn private_dir(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

fn touch(path: &Path, date: &str) {
    let out = Command::new("touch")
        .arg("-d")
        .arg(date)
        .arg(path)
        .output()
        .expect("touch");
    assert!(out.status.success(), "touch -d {date:?}: {out:?}");
}

/// Runs `command` with `sh -c` in the test itself (not through herd): its exit code.
fn exit_code_of(command: &str) -> i32 {
    let out = Command::new("sh")
        .arg("-c")
        .arg(command)
        .output()
        .expect("sh -c");
    let code = out.status.code().unwrap_or(-1);
    eprintln!(
        "    `{command}` → exit {code}: {}",
        String::from_utf8_lossy(&out.stdout).trim()
    );
    code
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

// ================================================================= the tests

#[test]
fn http_check_statuses_body_and_rollups() {
    phase!("start a real nginx: /health says UP, /boom answers 500, anything else 404");
    let nginx = Nginx::start();
    let closed = free_port();

    phase!("a node with a local target and five http checks at 1s");
    let fleet = local_target_with(
        "web",
        &[
            format!(
                "{{ kind = \"http\", name = \"health\", url = \"{}\", body_regex = \"UP\" }}",
                nginx.url("/health")
            ),
            format!(
                "{{ kind = \"http\", name = \"missing\", url = \"{}\" }}",
                nginx.url("/no/such/page")
            ),
            format!(
                "{{ kind = \"http\", name = \"boom\", url = \"{}\", expect_status = [500] }}",
                nginx.url("/boom")
            ),
            format!(
                "{{ kind = \"http\", name = \"closed\", url = \"http://127.0.0.1:{closed}/health\" }}"
            ),
            format!(
                "{{ kind = \"http\", name = \"wrong-body\", url = \"{}\", body_regex = \"^DOWN\" }}",
                nginx.url("/health")
            ),
        ],
    );
    let herd = Herd::start(HerdOptions::default().fleet(fleet));

    phase!("verdicts: health 0, missing (404) 2, boom (500 expected) 0, closed 2, wrong body 2");
    wait_statuses(
        &herd,
        "web",
        &[
            ("health", OK),
            ("missing", CRITICAL),
            ("boom", OK),
            ("closed", CRITICAL),
            ("wrong-body", CRITICAL),
        ],
    );

    phase!("http.status, http.up and http.response_ms per check");
    assert_eq!(last(&herd, "web", "http.status", "health"), Some(200.0));
    assert_eq!(last(&herd, "web", "http.up", "health"), Some(1.0));
    let times = points(&herd, "web", "http.response_ms", "health");
    assert!(!times.is_empty(), "health has http.response_ms points");
    assert!(
        times.iter().all(|p| (0.0..10_000.0).contains(&p.1)),
        "{times:?}"
    );
    assert_eq!(last(&herd, "web", "http.status", "missing"), Some(404.0));
    assert_eq!(last(&herd, "web", "http.up", "missing"), Some(0.0));
    assert_eq!(last(&herd, "web", "http.status", "boom"), Some(500.0));
    assert_eq!(last(&herd, "web", "http.up", "boom"), Some(1.0));
    assert_eq!(last(&herd, "web", "http.status", "wrong-body"), Some(200.0));
    assert_eq!(last(&herd, "web", "http.up", "wrong-body"), Some(0.0));
    assert_eq!(last(&herd, "web", "http.up", "closed"), Some(0.0));
    assert!(
        points(&herd, "web", "http.status", "closed").is_empty(),
        "a request that got no answer has no http.status"
    );
    assert!(
        points(&herd, "web", "http.response_ms", "closed").is_empty(),
        "a request that got no answer has no response time"
    );

    phase!("herd status --json explains each verdict");
    let d = detail(&herd, "web", "missing");
    assert!(d.contains("404"), "missing: {d}");
    let d = detail(&herd, "web", "wrong-body");
    assert!(d.contains("body does not match"), "wrong-body: {d}");
    let d = detail(&herd, "web", "closed");
    assert!(
        d.contains(&closed.to_string()) && d.to_lowercase().contains("refused"),
        "closed names the port and says refused: {d}"
    );
    let state = check_state(&herd, "web", "health").expect("status lists the health check");
    assert_eq!(state["kind"], "http", "{state}");
    assert_eq!(state["status"], "ok", "{state}");
    let table = herd.cli_ok(&["status"]);
    assert!(
        table
            .lines()
            .any(|l| l.contains("missing") && l.contains("CRITICAL") && l.contains("404")),
        "the `herd status` table shows the critical check and why:\n{table}"
    );

    phase!("nginx really served the checks (its access log)");
    let log = nginx.access_log();
    for (path, code) in [("/health", 200), ("/no/such/page", 404), ("/boom", 500)] {
        assert!(
            log.lines()
                .any(|l| l.contains(&format!("\"GET {path} HTTP/1.1\" {code} "))),
            "no `GET {path}` answered {code} in nginx's access log:\n{log}"
        );
    }

    phase!("--rollup minute: buckets with count >= 2, statuses {{\"200\": n}} for health");
    let minute = wait_for(SECS(15), "a health minute bucket counts >= 2", || {
        let b = rollup_buckets(&herd, "web", "health", "minute");
        b.iter().any(|b| count(b) >= 2).then_some(b)
    });
    eprintln!("    health per minute: {minute:?}");
    assert_buckets_only(&minute, "200", 60_000);
    assert_buckets_only(
        &rollup_buckets(&herd, "web", "boom", "minute"),
        "500",
        60_000,
    );
    assert_buckets_only(
        &rollup_buckets(&herd, "web", "missing", "minute"),
        "404",
        60_000,
    );
    let failed = rollup_buckets(&herd, "web", "closed", "minute");
    eprintln!("    closed per minute: {failed:?}");
    assert_buckets_only(&failed, "failed", 60_000);
    let minute_total: u64 = minute.iter().map(count).sum();

    phase!("--rollup hour: the same requests, in hour buckets");
    let hour = rollup_buckets(&herd, "web", "health", "hour");
    eprintln!("    health per hour: {hour:?}");
    assert_buckets_only(&hour, "200", 3_600_000);
    let hour_total: u64 = hour.iter().map(count).sum();
    assert!(
        hour_total >= minute_total && hour_total >= 2,
        "hour buckets count {hour_total}, minute buckets counted {minute_total} before"
    );
    assert_buckets_only(
        &rollup_buckets(&herd, "web", "closed", "hour"),
        "failed",
        3_600_000,
    );

    phase!("the human rollup table names the statuses");
    let table = herd.cli_ok(&["query", "web", "http.response_ms", "--rollup", "minute"]);
    assert!(
        table.contains("200:") && table.contains("failed:"),
        "{table}"
    );
}

#[test]
fn http_tls_verification_on_by_default() {
    phase!("make a CA, a server certificate for IP 127.0.0.1 and a self-signed one with openssl");
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(pki_dir.path());

    phase!("nginx with two TLS listeners: [0] the CA-signed certificate, [1] the self-signed one");
    let nginx = Nginx::start_with_tls(vec![
        TlsListener {
            cert: pki.server_cert.clone(),
            key: pki.server_key.clone(),
        },
        TlsListener {
            cert: pki.self_signed_cert.clone(),
            key: pki.self_signed_key.clone(),
        },
    ]);
    let ca = toml_str(&pki.ca_cert.display().to_string());
    let signed = nginx.tls_url(0, "/health");
    let selfs = nginx.tls_url(1, "/health");

    phase!("a node with https checks: default verification, ca_file, tls_verify = false");
    let fleet = local_target_with(
        "tls",
        &[
            format!("{{ kind = \"http\", name = \"signed-no-ca\", url = \"{signed}\" }}"),
            format!(
                "{{ kind = \"http\", name = \"signed-with-ca\", url = \"{signed}\", ca_file = {ca}, body_regex = \"UP\" }}"
            ),
            format!("{{ kind = \"http\", name = \"self-default\", url = \"{selfs}\" }}"),
            format!(
                "{{ kind = \"http\", name = \"self-with-other-ca\", url = \"{selfs}\", ca_file = {ca} }}"
            ),
            format!(
                "{{ kind = \"http\", name = \"self-no-verify\", url = \"{selfs}\", tls_verify = false }}"
            ),
        ],
    );
    let herd = Herd::start(HerdOptions::default().fleet(fleet));

    phase!("unknown issuers are critical; the trusted CA and tls_verify = false are ok");
    wait_statuses(
        &herd,
        "tls",
        &[
            ("signed-no-ca", CRITICAL),
            ("signed-with-ca", OK),
            ("self-default", CRITICAL),
            ("self-with-other-ca", CRITICAL),
            ("self-no-verify", OK),
        ],
    );
    for check in ["signed-no-ca", "self-default", "self-with-other-ca"] {
        assert_eq!(last(&herd, "tls", "http.up", check), Some(0.0), "{check}");
        assert!(
            points(&herd, "tls", "http.status", check).is_empty(),
            "{check}: a refused certificate means no HTTP answer"
        );
        let d = detail(&herd, "tls", check);
        assert!(
            d.contains("TLS") && d.to_lowercase().contains("certificate"),
            "{check}: the detail says the certificate was refused: {d}"
        );
    }
    for check in ["signed-with-ca", "self-no-verify"] {
        assert_eq!(last(&herd, "tls", "http.up", check), Some(1.0), "{check}");
        assert_eq!(
            last(&herd, "tls", "http.status", check),
            Some(200.0),
            "{check}"
        );
    }

    phase!("refused handshakes count as failed in the rollups, verified ones as 200");
    wait_until(
        SECS(10),
        "rollups of signed-no-ca and signed-with-ca",
        || {
            !rollup_buckets(&herd, "tls", "signed-no-ca", "minute").is_empty()
                && !rollup_buckets(&herd, "tls", "signed-with-ca", "minute").is_empty()
        },
    );
    assert_buckets_only(
        &rollup_buckets(&herd, "tls", "signed-no-ca", "minute"),
        "failed",
        60_000,
    );
    assert_buckets_only(
        &rollup_buckets(&herd, "tls", "signed-with-ca", "minute"),
        "200",
        60_000,
    );
}

#[test]
fn http_and_port_through_the_target() {
    phase!("a real sshd and a real nginx, both on 127.0.0.1");
    let mut sshd = Sshd::start();
    let nginx = Nginx::start();
    let closed = free_port();

    phase!("an ssh target with http and port checks from = \"target\" (SSH tunnels)");
    let fleet = ssh_target_with(
        "tunnel",
        &sshd.address(),
        &[
            format!(
                "{{ kind = \"http\", name = \"health\", url = \"{}\", from = \"target\", body_regex = \"UP\" }}",
                nginx.url("/health")
            ),
            format!(
                "{{ kind = \"port\", name = \"nginx-port\", port = {}, from = \"target\" }}",
                nginx.port()
            ),
            format!("{{ kind = \"port\", name = \"closed-port\", port = {closed}, from = \"target\" }}"),
            // The contrast: nginx's port from the node (the target's host, 127.0.0.1).
            format!("{{ kind = \"port\", name = \"from-node\", port = {} }}", nginx.port()),
        ],
    );
    let herd = Herd::start(HerdOptions::with_sshd(&sshd).fleet(fleet));

    phase!("verdicts: health 0, nginx-port 0, closed-port 2 (and from-node 0)");
    wait_statuses(
        &herd,
        "tunnel",
        &[
            ("health", OK),
            ("nginx-port", OK),
            ("closed-port", CRITICAL),
            ("from-node", OK),
        ],
    );
    assert_eq!(last(&herd, "tunnel", "http.status", "health"), Some(200.0));
    assert!(!points(&herd, "tunnel", "http.response_ms", "health").is_empty());
    assert_eq!(last(&herd, "tunnel", "port.up", "nginx-port"), Some(1.0));
    assert!(
        !points(&herd, "tunnel", "port.connect_ms", "nginx-port").is_empty(),
        "an open port has a connect time"
    );
    assert_eq!(last(&herd, "tunnel", "port.up", "closed-port"), Some(0.0));
    let d = detail(&herd, "tunnel", "closed-port");
    assert!(d.contains(&closed.to_string()), "closed-port: {d}");
    assert!(
        sshd.log()
            .contains(&format!("Accepted publickey for {SSH_USER}")),
        "herd logged in to sshd"
    );
    wait_until(SECS(10), "status shows tunnel up", || {
        herd.target_status("tunnel")
            .is_some_and(|t| t["up"] == true)
    });

    phase!("stop sshd: nginx still answers, but the checks through the target are unknown (3)");
    let stopped = now_ms();
    sshd.stop();
    wait_until(
        VERDICT,
        "every tunnel check reports 3 after sshd stopped",
        || {
            let series = by_check(&herd, "tunnel", "check.status");
            ["health", "nginx-port", "closed-port"].iter().all(|c| {
                series
                    .get(*c)
                    .into_iter()
                    .flatten()
                    .flat_map(|s| s["points"].as_array().cloned().unwrap_or_default())
                    .filter(|p| p[0].as_i64().unwrap_or(0) > stopped)
                    .any(|p| p[1].as_f64() == Some(UNKNOWN))
            })
        },
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", nginx.port())).is_ok(),
        "nginx itself is still up: the checks really went through sshd"
    );
    // A scrape of the node-side check after sshd stopped may still be due: wait for it.
    wait_until(
        Duration::from_secs(15),
        "a port check from the node after sshd stopped",
        || {
            points(&herd, "tunnel", "check.status", "from-node")
                .iter()
                .any(|p| p.0 > stopped)
        },
    );
    let from_node = points(&herd, "tunnel", "check.status", "from-node");
    assert!(
        from_node.iter().any(|p| p.0 > stopped)
            && from_node
                .iter()
                .filter(|p| p.0 > stopped)
                .all(|p| p.1 == OK),
        "the port check from the node does not need sshd: {from_node:?}"
    );

    phase!("restart sshd: the verdicts come back");
    sshd.restart();
    wait_statuses(
        &herd,
        "tunnel",
        &[
            ("health", OK),
            ("nginx-port", OK),
            ("closed-port", CRITICAL),
        ],
    );
}

#[test]
fn socket_check_through_the_target() {
    phase!("a unix socket listening in a 0755 dir (socket 0777), and a path with no listener");
    let server = UnixSocketServer::start("app.sock");
    let listening = server.path().display().to_string();
    let nothing = server.dir().join("nothing.sock").display().to_string();
    // A socket in a root-only dir: the SSH login user may not reach it.
    let private_dir = private_dir("herd-private-");
    let private_sock = private_dir.path().join("private.sock");
    let _private = std::os::unix::net::UnixListener::bind(&private_sock).unwrap();
    let private = private_sock.display().to_string();

    phase!("real sshd; an ssh target and a local target, each with three socket checks");
    let sshd = Sshd::start();
    let checks = [
        format!(
            "{{ kind = \"socket\", name = \"app\", path = {} }}",
            toml_str(&listening)
        ),
        format!(
            "{{ kind = \"socket\", name = \"nothing\", path = {} }}",
            toml_str(&nothing)
        ),
        format!(
            "{{ kind = \"socket\", name = \"private\", path = {} }}",
            toml_str(&private)
        ),
    ];
    let fleet = format!(
        "{}{}",
        ssh_target_with("remote", &sshd.address(), &checks),
        local_target_with("local", &checks)
    );
    let herd = Herd::start(HerdOptions::with_sshd(&sshd).fleet(fleet));

    phase!("over ssh (as {SSH_USER}): app 0, nothing 2, the root-only socket 2");
    wait_statuses(
        &herd,
        "remote",
        &[("app", OK), ("nothing", CRITICAL), ("private", CRITICAL)],
    );
    assert_eq!(last(&herd, "remote", "socket.up", "app"), Some(1.0));
    assert_eq!(last(&herd, "remote", "socket.up", "nothing"), Some(0.0));
    assert_eq!(last(&herd, "remote", "socket.up", "private"), Some(0.0));

    phase!("local transport (the node's own user, root): app 0, nothing 2, private 0");
    wait_statuses(
        &herd,
        "local",
        &[("app", OK), ("nothing", CRITICAL), ("private", OK)],
    );
    assert_eq!(last(&herd, "local", "socket.up", "app"), Some(1.0));
    let d = detail(&herd, "local", "nothing");
    assert!(d.contains("nothing.sock"), "the detail names the path: {d}");

    phase!("the listener really accepted the checks' connections");
    let before = server.accepted();
    wait_until(SECS(10), "the socket accepts more connections", || {
        server.accepted() >= before + 2
    });
    eprintln!("    {} connections accepted", server.accepted());
}

#[test]
fn file_fresh_ages_and_missing() {
    phase!("a fresh file, a file touched 2 hours ago, and a missing path, in a 0755 dir");
    let dir = shared_dir("herd-files-");
    let fresh = dir.path().join("fresh.stamp");
    let old = dir.path().join("old stamp"); // a space: the path is quoted on the target
    std::fs::write(&fresh, "now").unwrap();
    std::fs::write(&old, "then").unwrap();
    touch(&old, "2 hours ago");
    for f in [&fresh, &old] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let missing = dir.path().join("missing.stamp");
    let private_dir = private_dir("herd-private-");
    let hidden = private_dir.path().join("hidden.stamp");
    std::fs::write(&hidden, "secret").unwrap();
    let q = |p: &Path| toml_str(&p.display().to_string());
    let checks = [
        format!(
            "{{ kind = \"file_fresh\", name = \"fresh\", path = {}, max_age = \"1h\" }}",
            q(&fresh)
        ),
        format!(
            "{{ kind = \"file_fresh\", name = \"old\", path = {}, max_age = \"1h\" }}",
            q(&old)
        ),
        format!(
            "{{ kind = \"file_fresh\", name = \"old-3h\", path = {}, max_age = \"3h\" }}",
            q(&old)
        ),
        format!(
            "{{ kind = \"file_fresh\", name = \"missing\", path = {}, max_age = \"1h\" }}",
            q(&missing)
        ),
        format!(
            "{{ kind = \"file_fresh\", name = \"hidden\", path = {}, max_age = \"1h\" }}",
            q(&hidden)
        ),
    ];

    phase!("real sshd; a local target and an ssh target with the same five checks");
    let sshd = Sshd::start();
    let fleet = format!(
        "{}{}",
        local_target_with("local", &checks),
        ssh_target_with("remote", &sshd.address(), &checks)
    );
    let herd = Herd::start(HerdOptions::with_sshd(&sshd).fleet(fleet));

    for target in ["local", "remote"] {
        phase!("{target}: fresh 0, old (1h) 2, old (3h) 0, missing 2");
        wait_statuses(
            &herd,
            target,
            &[
                ("fresh", OK),
                ("old", CRITICAL),
                ("old-3h", OK),
                ("missing", CRITICAL),
            ],
        );
        let fresh_age = last(&herd, target, "file.age_s", "fresh").expect("fresh has file.age_s");
        assert!((0.0..60.0).contains(&fresh_age), "fresh age {fresh_age}");
        let old_age = last(&herd, target, "file.age_s", "old").expect("old has file.age_s");
        assert!(
            (7200.0..7260.0).contains(&old_age),
            "old age {old_age} ≈ 7200 s"
        );
        assert_eq!(last(&herd, target, "file.fresh", "fresh"), Some(1.0));
        assert_eq!(last(&herd, target, "file.fresh", "old"), Some(0.0));
        assert_eq!(last(&herd, target, "file.fresh", "missing"), Some(0.0));
        assert!(
            points(&herd, target, "file.age_s", "missing").is_empty(),
            "a missing file has no age"
        );
        let d = detail(&herd, target, "missing");
        assert!(d.contains("missing"), "{target}/missing: {d}");
        let d = detail(&herd, target, "old");
        assert!(d.contains("older than"), "{target}/old: {d}");
    }

    phase!("a file in a root-only dir: fresh locally (root), not fresh over ssh ({SSH_USER})");
    wait_statuses(&herd, "local", &[("hidden", OK)]);
    wait_statuses(&herd, "remote", &[("hidden", CRITICAL)]);
    assert!(
        points(&herd, "remote", "file.age_s", "hidden").is_empty(),
        "no age for a file the login user cannot stat"
    );

    phase!("touch the old file: it turns fresh on the next scrapes");
    touch(&old, "now");
    wait_statuses(&herd, "local", &[("old", OK)]);
    wait_statuses(&herd, "remote", &[("old", OK)]);
}

#[test]
fn command_check_with_real_monitoring_plugins() {
    assert!(
        Path::new(PLUGINS).join("check_disk").is_file(),
        "{PLUGINS}/check_disk is missing: install monitoring-plugins-basic"
    );
    // (name, command, status we expect whatever the machine)
    let plugins: Vec<(&str, String, Option<f64>)> = vec![
        (
            "disk-root",
            format!("{PLUGINS}/check_disk -w 1% -c 1% -p /"),
            None, // ok unless / is over 99 % full: compared with a run by the test
        ),
        (
            "disk-crit",
            format!("{PLUGINS}/check_disk -w 100% -c 100% -p /"),
            Some(CRITICAL),
        ),
        (
            "disk-warn",
            format!("{PLUGINS}/check_disk -w 100% -c 0% -p /"),
            Some(WARNING),
        ),
        (
            "load-ok",
            format!("{PLUGINS}/check_load -w 1000,1000,1000 -c 2000,2000,2000"),
            Some(OK),
        ),
        (
            "procs-warn",
            format!("{PLUGINS}/check_procs -w 1 -c 1000000"),
            Some(WARNING),
        ),
        (
            "garbage",
            "printf 'garbage ~~ | =;;; \\n'; exit 3".to_string(),
            Some(UNKNOWN),
        ),
        (
            "exit-7",
            "echo 'WEIRD - not a plugin exit code'; exit 7".to_string(),
            Some(UNKNOWN),
        ),
    ];

    phase!("run each command once as the test: the exit codes herd must report");
    let mut want = Vec::new();
    for (name, command, expected) in &plugins {
        let code = exit_code_of(command);
        let status = if (0..=3).contains(&code) {
            f64::from(code)
        } else {
            UNKNOWN
        };
        if let Some(e) = expected {
            assert_eq!(status, *e, "{name}: `{command}` exits {code} here");
        }
        want.push((*name, status));
    }

    phase!("real sshd; a local target with all commands, an ssh target with two plugins");
    let sshd = Sshd::start();
    let checks: Vec<String> = plugins
        .iter()
        .map(|(name, command, _)| {
            format!(
                "{{ kind = \"command\", name = \"{name}\", command = {} }}",
                toml_str(command)
            )
        })
        .collect();
    let remote_checks: Vec<String> = checks
        .iter()
        .filter(|c| c.contains("\"procs-warn\"") || c.contains("\"load-ok\""))
        .cloned()
        .collect();
    let fleet = format!(
        "{}{}",
        local_target_with("local", &checks),
        ssh_target_with("remote", &sshd.address(), &remote_checks)
    );
    let herd = Herd::start(HerdOptions::with_sshd(&sshd).fleet(fleet));

    phase!("local: check.status equals each command's own exit code");
    wait_statuses(&herd, "local", &want);

    phase!("the plugin's first line is the detail");
    for (name, prefix) in [
        ("disk-crit", "DISK CRITICAL"),
        ("disk-warn", "DISK WARNING"),
        ("load-ok", "LOAD OK"),
        ("procs-warn", "PROCS WARNING"),
    ] {
        let d = detail(&herd, "local", name);
        assert!(d.starts_with(prefix), "{name}: {d}");
        assert!(
            !d.contains('|'),
            "{name}: perfdata is not in the detail: {d}"
        );
    }
    let state = check_state(&herd, "local", "garbage").expect("garbage in status");
    assert_eq!(state["status"], "unknown", "{state}");

    phase!("perfdata: command.perf{{label=/}} of check_disk, load1/5/15, procs");
    let perf = by_check(&herd, "local", "command.perf");
    let labels_of = |check: &str| -> Vec<(String, String)> {
        perf.get(check)
            .into_iter()
            .flatten()
            .map(|s| {
                (
                    s["labels"]["label"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    s["labels"]["uom"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    };
    let disk = labels_of("disk-root");
    assert!(
        disk.contains(&("/".to_string(), "B".to_string())),
        "check_disk perfdata /=...B: {disk:?}"
    );
    let used = perf["disk-root"]
        .iter()
        .find(|s| s["labels"]["label"] == "/")
        .and_then(|s| s["points"].as_array()?.last()?.get(1)?.as_f64())
        .expect("a value of /");
    assert!(used > 0.0, "used bytes of /: {used}");
    let load = labels_of("load-ok");
    for l in ["load1", "load5", "load15"] {
        assert!(
            load.iter().any(|(label, _)| label == l),
            "check_load perfdata {l}: {load:?}"
        );
    }
    let load_crit = points(&herd, "local", "command.perf_crit", "load-ok");
    assert!(
        load_crit.iter().any(|p| p.1 == 2000.0),
        "critical thresholds of check_load are kept: {load_crit:?}"
    );
    let procs = last(&herd, "local", "command.perf", "procs-warn").expect("procs perfdata");
    assert!(procs >= 2.0, "procs = {procs}");
    assert!(
        labels_of("exit-7").is_empty(),
        "no perfdata from a command that printed none"
    );

    phase!("over ssh as {SSH_USER}: procs-warn 1, load-ok 0, perfdata too");
    wait_statuses(&herd, "remote", &[("procs-warn", WARNING), ("load-ok", OK)]);
    assert!(last(&herd, "remote", "command.perf", "procs-warn").is_some());
    assert!(
        by_check(&herd, "remote", "command.perf")
            .get("load-ok")
            .into_iter()
            .flatten()
            .any(|s| s["labels"]["label"] == "load1"),
        "remote check_load perfdata load1"
    );
}

#[test]
fn prometheus_check_against_real_node_exporter() {
    phase!("start a real node_exporter on 127.0.0.1 (loadavg, meminfo, cpu collectors)");
    let exporter = NodeExporter::start();
    let body = exporter.scrape().expect("node_exporter answers");
    assert!(body.contains("node_cpu_seconds_total"), "cpu family exists");
    let closed = free_port();
    let allow = "allow = [\"node_load1\", \"node_memory_*\"]";

    phase!("real sshd; a local target (from the node) and an ssh target (from = \"target\")");
    let sshd = Sshd::start();
    let fleet = format!(
        "{}{}",
        local_target_with(
            "local",
            &[
                format!(
                    "{{ kind = \"prometheus\", name = \"node\", url = \"{}\", {allow} }}",
                    exporter.url()
                ),
                format!(
                    "{{ kind = \"prometheus\", name = \"closed\", url = \"http://127.0.0.1:{closed}/metrics\", {allow} }}"
                ),
            ]
        ),
        ssh_target_with(
            "remote",
            &sshd.address(),
            &[format!(
                "{{ kind = \"prometheus\", name = \"node\", url = \"{}\", from = \"target\", {allow} }}",
                exporter.url()
            )]
        )
    );
    let herd = Herd::start(HerdOptions::with_sshd(&sshd).fleet(fleet));

    for target in ["local", "remote"] {
        phase!("{target}: status 0, prometheus.up 1, allowed families kept, others dropped");
        wait_statuses(&herd, target, &[("node", OK)]);
        assert_eq!(last(&herd, target, "prometheus.up", "node"), Some(1.0));
        let kept = last(&herd, target, "prometheus.samples", "node").expect("prometheus.samples");
        assert!(kept >= 2.0, "{target}: kept {kept} samples");
        let load = last(&herd, target, "prom.node_load1", "node").expect("prom.node_load1");
        assert!(load >= 0.0, "{load}");
        let avail = last(&herd, target, "prom.node_memory_MemAvailable_bytes", "node")
            .expect("prom.node_memory_MemAvailable_bytes");
        assert!(avail > 0.0, "{avail}");
        let total = last(&herd, target, "prom.node_memory_MemTotal_bytes", "node")
            .expect("prom.node_memory_MemTotal_bytes");
        assert_eq!(total, mem_total_bytes(), "MemTotal as /proc/meminfo says");
        for absent in [
            "prom.node_cpu_seconds_total",
            "prom.node_load5",
            "prom.node_exporter_build_info",
            "prom.go_goroutines",
        ] {
            assert!(
                herd.query_json(target, absent)["series"]
                    .as_array()
                    .is_none_or(|s| s.is_empty()),
                "{target}: {absent} is not allowed, yet stored"
            );
        }
    }

    phase!("a prometheus check on a closed port: status 2, prometheus.up 0");
    wait_statuses(&herd, "local", &[("closed", CRITICAL)]);
    assert_eq!(last(&herd, "local", "prometheus.up", "closed"), Some(0.0));
    let d = detail(&herd, "local", "closed");
    assert!(d.contains(&closed.to_string()), "{d}");
}

/// MemTotal of /proc/meminfo in bytes.
fn mem_total_bytes() -> f64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kb: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("MemTotal in /proc/meminfo");
    kb * 1024.0
}

/// The fleet of `config_errors_for_checks`: one target, five bad checks, each on
/// its own line (lines 6-11).
const BAD_CHECKS: &str = r#"[[target]]
name = "t"
transport = "local"
interval = "1s"
checks = [
  { kind = "http", name = "bad-regex", url = "http://127.0.0.1/", body_regex = "(unclosed" },
  { kind = "port", name = "port-zero", port = 0 },
  { kind = "http", name = "no-scheme", url = "127.0.0.1:8080/health" },
  { kind = "port", name = "twice", port = 22 },
  { kind = "port", name = "twice", port = 23 },
  { kind = "prometheus", name = "allow-nothing", url = "http://127.0.0.1:9100/metrics", allow = [] },
]
"#;

#[test]
fn config_errors_for_checks() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("checks-fleet.toml");
    std::fs::write(&bad, BAD_CHECKS).unwrap();
    let bad_s = bad.display().to_string();

    phase!("herd check on a fleet with five bad checks: exit 2");
    let out = herd_cli(&["check", &bad_s], SECS(30));
    let err = stderr(&out);
    eprintln!("{err}");
    assert_eq!(out.status.code(), Some(2), "{err}");

    phase!("one file:line: error per bad check, naming the check and the problem");
    let located: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with(&format!("{bad_s}:")))
        .collect();
    assert_eq!(located.len(), 5, "five located errors:\n{err}");
    // (check name, its own line, words of the problem)
    let expected = [
        ("bad-regex", 6, "regex"),
        ("port-zero", 7, "1-65535"),
        ("no-scheme", 8, "http://"),
        ("twice", 10, "twice"),
        ("allow-nothing", 11, "allow"),
    ];
    for (name, own_line, problem) in expected {
        let line = located
            .iter()
            .find(|l| l.contains(&format!("\"{name}\"")) && l.contains(problem))
            .unwrap_or_else(|| panic!("no error naming {name:?} and {problem:?}:\n{err}"));
        // Where: the check's own line, or (today) the line of `checks =` (5).
        let at: usize = line[bad_s.len() + 1..]
            .split(':')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no line number: {line}"));
        assert!(
            at == own_line || at == 5,
            "{name}: error at line {at}, expected {own_line} (or 5): {line}"
        );
        assert!(line.contains("checks"), "the key is named: {line}");
    }
    assert!(
        err.contains("5 errors"),
        "a summary counts the errors:\n{err}"
    );

    phase!("the same checks, fixed, pass");
    let good = dir.path().join("good-fleet.toml");
    std::fs::write(
        &good,
        BAD_CHECKS
            .replace("(unclosed", "(closed)")
            .replace("port = 0", "port = 1")
            .replace(
                "\"127.0.0.1:8080/health\"",
                "\"http://127.0.0.1:8080/health\"",
            )
            .replace("name = \"twice\", port = 23", "name = \"once\", port = 23")
            .replace("allow = []", "allow = [\"up\"]"),
    )
    .unwrap();
    let out = herd_cli(&["check", &good.display().to_string()], SECS(30));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    phase!("herd apply of the bad fleet to a running node: exit 2, nothing applied");
    let herd = Herd::start(HerdOptions::default());
    let before = herd.status_json()["spec_version"].clone();
    let out = herd.cli(&["apply", &bad_s]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("allow-nothing"), "{}", stderr(&out));
    assert_eq!(herd.status_json()["spec_version"], before);
}

#[test]
fn config_error_messages_are_one_line_each() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("checks-fleet.toml");
    std::fs::write(&bad, BAD_CHECKS).unwrap();
    let bad_s = bad.display().to_string();

    phase!("herd check: every stderr line is a located error or the summary");
    let out = herd_cli(&["check", &bad_s], SECS(30));
    let err = stderr(&out);
    eprintln!("{err}");
    assert_eq!(out.status.code(), Some(2), "{err}");
    let stray: Vec<&str> = err
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| !l.starts_with(&format!("{bad_s}:")) && !l.contains("errors in"))
        .collect();
    assert!(
        stray.is_empty(),
        "lines that are neither `file:line:` errors nor the summary: {stray:?}\n{err}"
    );
}
