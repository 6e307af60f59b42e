//! `herd deploy` end to end: three "servers", each in its own network namespace
//! (a bridge the test makes; nothing else is reachable) with a real OpenSSH sshd
//! (its own host key, client key and known_hosts) and its own install directory;
//! the nodes listen on their namespace's address, the same ports on each server,
//! and watch each other's machine over SSH (the ring: node N's machine is a target
//! of the next node). The test writes an inventory and runs the real CLI from this
//! namespace:
//! - `--dry-run` shows the plan and changes nothing;
//! - deploy copies the binary, writes each node's config and credentials (0600),
//!   starts each node under its supervisor, and the herd forms by itself; each
//!   machine is scraped over SSH by the next node in the ring;
//! - a second run changes nothing and says so;
//! - a node killed with `kill -9` is started again by its supervisor;
//! - a node that stays down (its supervisor told to stop, then the node killed) is
//!   notified down once (`node_down` FIRING for its machine); a re-run of deploy
//!   starts it again, and it is notified back once;
//! - an upgrade replaces the binary everywhere and restarts the nodes one at a time,
//!   the herd healthy after each: from the previous release (built from git by
//!   `scripts/test`, `HERD_PREVIOUS_BIN`; every phase before runs it) to this build,
//!   so that between the restarts the herd runs both versions; meanwhile no
//!   target goes unscraped longer than its interval + 3 s, and the alert that
//!   fires on each target (a webhook receiver in the test) is notified once, not
//!   again by a restarted node or by the node that took its targets over;
//! - a server that cannot be reached fails with its name; the others are done.
//!
//! Not here: `--service systemd` (not built). The bounds only catch hangs.
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use herd_tests::netns::NetLab;
use herd_tests::process::run_bounded;
use herd_tests::{
    free_port, generate_key, local_target, node_target, phase, toml_str, wait_for, wait_until,
    Sshd, SSH_USER,
};

const DEPLOY_BOUND: Duration = Duration::from_secs(300);
const BOUND: Duration = Duration::from_secs(60);

/// The ports every node listens on, each on its own server's address.
const GRPC_PORT: u16 = 7401;
const HTTP_PORT: u16 = 7481;

struct Server {
    sshd: Sshd,
    /// The server's address (its namespace's, on the lab's bridge).
    ip: String,
    prefix: PathBuf,
}

/// Stops every node the test started through deploy, even when it fails; the
/// namespaces go last (fields drop in order).
struct Lab {
    dir: tempfile::TempDir,
    servers: Vec<Server>,
    hook: herd_tests::HttpReceiver,
    /// The key the nodes scrape the machines with (the SSH account's own file).
    scrape_key: PathBuf,
    /// Every server's host key: the nodes check the machines they watch against it.
    known_hosts: PathBuf,
    _net: NetLab,
}

/// The scrape interval of the fleet's targets.
const INTERVAL_MS: i64 = 1000;

impl Drop for Lab {
    fn drop(&mut self) {
        for s in &self.servers {
            let run = s.prefix.join("run");
            let _ = std::fs::write(run.join("stop"), "");
            for pid in ["supervisor.pid", "herd.pid"] {
                if let Ok(p) = std::fs::read_to_string(run.join(pid)) {
                    if let Ok(p) = p.trim().parse::<i32>() {
                        // SAFETY: kill(2) on a pid this test's deploy started.
                        unsafe { libc::kill(p, libc::SIGKILL) };
                    }
                }
            }
        }
        if std::thread::panicking() {
            for s in &self.servers {
                let log = std::fs::read_to_string(s.prefix.join("herd.log")).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                eprintln!(
                    "--- {} herd.log (first 15 and last 15 lines):",
                    s.prefix.display()
                );
                for l in lines
                    .iter()
                    .take(15)
                    .chain(lines.iter().rev().take(15).rev())
                {
                    eprintln!("{l}");
                }
            }
        }
    }
}

impl Lab {
    fn inventory(&self, extra: &str) -> PathBuf {
        let fleet = self.dir.path().join("fleet.toml");
        // Each fleet target's cpu is above -1 %: an alert fires on each and stays
        // (not on the machines, `herd-node-N`, whose vitals the ring scrapes). The
        // herd's own critical notices (node_down) go to the same receiver.
        let mut text: String = (1..=3)
            .map(|i| local_target(&format!("t-{i}"), "1s"))
            .collect();
        text.push_str(&format!(
            "[[rule]]\nname = \"always\"\ntargets = [\"t-*\"]\nmetric = \"cpu.used_pct\"\nkind = \"range\"\nmax = -1\n\
             channels = [\"hook\"]\n\n[[channel]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\n\
             group_window = \"0s\"\n\n[routes]\ncritical = [\"hook\"]\n",
            self.hook.url("/hook")
        ));
        std::fs::write(&fleet, text).unwrap();
        let mut text = format!(
            "fleet = \"fleet.toml\"\n\n[defaults]\nuser = \"{SSH_USER}\"\ngrpc_port = {GRPC_PORT}\n\
             node_toml = \"\"\"\n[ssh]\nkey = {}\nknown_hosts = {}\n\"\"\"\n",
            toml_str(&self.scrape_key.display().to_string()),
            toml_str(&self.known_hosts.display().to_string()),
        );
        for (i, s) in self.servers.iter().enumerate() {
            text.push_str(&format!(
                "\n[[server]]\naddress = \"{ip}\"\nssh_port = {port}\nid = {id}\n\
                 http = \"{ip}:{HTTP_PORT}\"\nprefix = \"{}\"\nkey = \"{}\"\nknown_hosts = \"{}\"\n\
                 machine = \"ssh://{SSH_USER}@{ip}:{port}\"\n",
                s.prefix.display(),
                s.sshd.client_key().display(),
                s.sshd.known_hosts().display(),
                ip = s.ip,
                port = s.sshd.port(),
                id = i + 1,
            ));
        }
        text.push_str(extra);
        let path = self.dir.path().join("herd-inventory.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    fn pid(&self, i: usize) -> Option<i32> {
        std::fs::read_to_string(self.servers[i].prefix.join("run/herd.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The CLI against node 1, with the API token deploy made.
    fn herd(&self, inventory: &Path, args: &[&str]) -> Output {
        let node = format!("{}:{GRPC_PORT}", self.servers[0].ip);
        let token = inventory.with_extension("token");
        let mut all = vec!["--node", &node, "--token-file", token.to_str().unwrap()];
        all.extend_from_slice(args);
        cli(&all)
    }

    fn status(&self, inventory: &Path) -> Option<serde_json::Value> {
        let out = self.herd(inventory, &["status", "--json"]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    /// The times of `t-N`'s cpu samples the herd holds from `from_ms` on.
    fn sample_times(&self, inventory: &Path, target: &str, from_ms: i64) -> Vec<i64> {
        let since = format!("{}s", (herd_tests::now_ms() - from_ms) / 1000 + 2);
        let out = self.herd(
            inventory,
            &[
                "export",
                target,
                "--metric",
                "cpu.used_pct",
                "--since",
                &since,
                "--format",
                "json",
            ],
        );
        assert!(out.status.success(), "{}", text(&out));
        let mut times: Vec<i64> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["ts_ms"].as_i64())
            .filter(|t| *t >= from_ms)
            .collect();
        times.sort_unstable();
        times
    }

    /// The notifications the hook accepted of `rule` on `target` (any, when None)
    /// of `kind` ("firing", "resolved").
    fn notes(&self, rule: &str, target: Option<&str>, kind: &str) -> Vec<serde_json::Value> {
        herd_tests::receiver::herd_notes(&self.hook.requests())
            .into_iter()
            .filter(|n| {
                n["alert"]["rule"] == rule
                    && target.is_none_or(|t| n["alert"]["target"] == t)
                    && n["kind"] == kind
            })
            .collect()
    }

    /// The idempotency keys of every firing notification of the `always` rule.
    fn firing_keys(&self) -> Vec<String> {
        self.notes("always", None, "firing")
            .iter()
            .map(|n| {
                n["idempotency_key"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect()
    }

    /// Every node's machine (`herd-node-N`) owned by the next node in the ring
    /// (`N % 3 + 1`) and up: scraped over SSH from one namespace into another.
    fn ring_watched(&self, inventory: &Path) -> Option<serde_json::Value> {
        let s = self.status(inventory)?;
        let targets = s["targets"].as_array()?;
        (1..=3u64)
            .all(|n| {
                targets.iter().any(|t| {
                    t["name"] == node_target(n).as_str()
                        && t["owner"].as_u64() == Some(n % 3 + 1)
                        && t["up"] == true
                })
            })
            .then_some(s)
    }

    /// Three members alive, a leader, every target owned (the fleet's three and
    /// the three machines).
    fn healthy(&self, inventory: &Path) -> Option<serde_json::Value> {
        let s = self.status(inventory)?;
        let nodes = s["nodes"].as_array()?;
        let alive = nodes.iter().filter(|n| n["alive"] == true).count();
        let targets = s["targets"].as_array()?;
        let owned = targets
            .iter()
            .filter(|t| t["owner"].as_u64().is_some_and(|o| o > 0))
            .count();
        (alive == 3 && s["leader"].as_u64().is_some() && owned == 6 && targets.len() == 6)
            .then_some(s)
    }
}

fn cli(args: &[&str]) -> Output {
    let mut cmd = std::process::Command::new(herd_tests::herd_bin());
    cmd.args(args);
    run_bounded(&mut cmd, DEPLOY_BOUND)
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `ms` (Unix) as the UTC time of day, HH:MM:SS.mmm, as the nodes' logs print it.
fn clock(ms: i64) -> String {
    let d = ms.rem_euclid(86_400_000);
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        d / 3_600_000,
        d / 60_000 % 60,
        d / 1000 % 60,
        d % 1000
    )
}

fn sha256(path: &Path) -> String {
    let out = run_bounded(
        std::process::Command::new("sha256sum").arg(path),
        Duration::from_secs(60),
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The binary the herd is laid down with, the one rolled out over it, and what the
/// upgrade is: the previous release (`HERD_PREVIOUS_BIN`, built from git by
/// `scripts/test`), then this build — so that between the restarts the herd runs
/// both versions; without it, this build and a copy of it that differs (trailing
/// bytes after the ELF image change nothing it runs).
fn binaries(dir: &Path) -> (PathBuf, PathBuf, &'static str) {
    let this = herd_tests::herd_bin();
    if let Some(previous) = std::env::var_os("HERD_PREVIOUS_BIN").map(PathBuf::from) {
        assert!(
            previous.is_file(),
            "HERD_PREVIOUS_BIN={} is not a file",
            previous.display()
        );
        assert_ne!(
            sha256(&previous),
            sha256(&this),
            "the previous release is another build"
        );
        return (previous, this, "the previous release to this build");
    }
    let next = dir.join("herd-next");
    let mut bytes = std::fs::read(&this).unwrap();
    bytes.extend_from_slice(b"\nherd-next\n");
    std::fs::write(&next, &bytes).unwrap();
    std::fs::set_permissions(&next, std::fs::Permissions::from_mode(0o755)).unwrap();
    (
        this,
        next,
        "this build to a copy that differs (HERD_PREVIOUS_BIN unset: no previous release)",
    )
}

#[test]
fn deploy_lays_down_a_herd_converges_and_rolls_an_upgrade() {
    herd_tests::require_root();
    let dir = tempfile::tempdir().unwrap();
    // The servers' install dirs belong to the SSH account deploy logs in as.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let installs = dir.path().join("servers");
    std::fs::create_dir(&installs).unwrap();
    std::fs::set_permissions(&installs, std::fs::Permissions::from_mode(0o777)).unwrap();
    let net = NetLab::new(3);
    let servers: Vec<Server> = (1..=3)
        .map(|i| Server {
            sshd: Sshd::start_in_netns(net.ns(i), &net.ip(i)),
            ip: net.ip(i),
            prefix: installs.join(format!("server-{i}")),
        })
        .collect();
    // The nodes run as the SSH account: the key they scrape the machines with is
    // that account's, each sshd lets it in, and they know every server's host key.
    let scrape_key = dir.path().join("scrape_key");
    let public = generate_key(&scrape_key, "herd-deploy-scrape");
    let chown = run_bounded(
        std::process::Command::new("chown")
            .arg(SSH_USER)
            .arg(&scrape_key),
        Duration::from_secs(10),
    );
    assert!(chown.status.success(), "{}", text(&chown));
    let known_hosts = dir.path().join("known_hosts");
    let mut lines = String::new();
    for s in &servers {
        s.sshd.authorize(&public);
        lines.push_str(&format!("{}\n", s.sshd.known_hosts_line()));
    }
    std::fs::write(&known_hosts, lines).unwrap();
    let hook = herd_tests::HttpReceiver::start_on(&net.bridge_ip());
    let lab = Lab {
        dir,
        servers,
        hook,
        scrape_key,
        known_hosts,
        _net: net,
    };
    let inventory = lab.inventory("");
    let inv = inventory.to_str().unwrap();
    let (first, new_binary, upgrade) = binaries(lab.dir.path());
    let first = first.to_str().unwrap();
    eprintln!("    the herd is laid down with {first}; the upgrade: {upgrade}");

    phase!("a fleet spec the nodes would refuse: exit 2, file and line, nothing touched");
    let fleet = lab.dir.path().join("fleet.toml");
    let good = std::fs::read_to_string(&fleet).unwrap();
    std::fs::write(&fleet, good.replace("kind = \"range\"", "kind = \"rnage\"")).unwrap();
    let out = cli(&["deploy", inv, "--binary", first]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("fleet.toml:"),
        "{}",
        text(&out)
    );
    assert!(
        lab.servers.iter().all(|s| !s.prefix.exists()),
        "nothing written on a server"
    );
    std::fs::write(&fleet, good).unwrap();

    phase!("herd deploy --dry-run: the plan, nothing changed");
    let out = cli(&["deploy", inv, "--binary", first, "--dry-run"]);
    assert!(out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.matches("would write bin/herd (").count() == 3 && err.contains("would start the node"),
        "{}",
        text(&out)
    );
    assert!(
        lab.servers.iter().all(|s| !s.prefix.exists()),
        "a dry run creates nothing"
    );

    phase!("herd deploy: copies, configures, starts; the herd forms by itself");
    let out = cli(&["deploy", inv, "--binary", first]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("herd of 3 deployed; leader node"),
        "{}",
        text(&out)
    );
    let s = wait_for(
        BOUND,
        "three members alive, a leader, every target owned",
        || lab.healthy(&inventory),
    );
    let herd_id = s["herd_id"].as_str().unwrap().to_string();
    wait_for(
        BOUND,
        "each machine watched over SSH by the next node in the ring",
        || lab.ring_watched(&inventory),
    );
    for srv in &lab.servers {
        let mode = |p: &str| {
            std::fs::metadata(srv.prefix.join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("etc/herd.toml"), 0o600);
        assert_eq!(mode("etc/herd-secret"), 0o600);
        assert_eq!(mode("etc/api-token"), 0o600);
        assert_eq!(
            sha256(&srv.prefix.join("bin/herd")),
            sha256(Path::new(first))
        );
    }
    let secret = std::fs::metadata(inventory.with_extension("secret")).unwrap();
    assert_eq!(
        secret.permissions().mode() & 0o777,
        0o600,
        "the herd secret is kept 0600"
    );

    phase!("a second run changes nothing and says so");
    let pids: Vec<Option<i32>> = (0..3).map(|i| lab.pid(i)).collect();
    let out = cli(&["deploy", inv, "--binary", first]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("nothing changed")
            && String::from_utf8_lossy(&out.stderr)
                .matches("ok, unchanged")
                .count()
                == 3,
        "{}",
        text(&out)
    );
    assert_eq!(
        pids,
        (0..3).map(|i| lab.pid(i)).collect::<Vec<_>>(),
        "no node restarted"
    );

    phase!("node 2 is killed (-9): its supervisor starts it again");
    let killed = lab.pid(1).expect("node 2's pid");
    // SAFETY: kill(2) on the node deploy started.
    unsafe { libc::kill(killed, libc::SIGKILL) };
    wait_for(BOUND, "node 2 runs again, a new process", || {
        lab.pid(1).filter(|p| *p != killed)
    });
    wait_for(BOUND, "the herd healthy again", || lab.healthy(&inventory));

    phase!("node 3 stays down: notified down once; deploy starts it again; back once");
    let prefix3 = lab.servers[2].prefix.clone();
    std::fs::write(prefix3.join("run/stop"), "").unwrap();
    let supervisor: i32 = std::fs::read_to_string(prefix3.join("run/supervisor.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let victim = lab.pid(2).expect("node 3's pid");
    // SAFETY: kill(2) on the node deploy started.
    unsafe { libc::kill(victim, libc::SIGKILL) };
    wait_until(BOUND, "node 3's supervisor ends (run/stop)", || {
        // SAFETY: signal 0 only asks whether the pid is there.
        unsafe { libc::kill(supervisor, 0) != 0 }
    });
    let machine3 = node_target(3);
    wait_until(BOUND, "node_down FIRING for node 3's machine", || {
        !lab.notes("node_down", Some(&machine3), "firing").is_empty()
    });
    // Its machine is still up: the ring goes on watching it while the node is down.
    wait_for(
        BOUND,
        "node 3's targets taken over, its machine watched",
        || {
            let s = lab.status(&inventory)?;
            let targets = s["targets"].as_array()?;
            let moved = targets
                .iter()
                .all(|t| t["owner"].as_u64().is_some_and(|o| o == 1 || o == 2));
            let watched = targets
                .iter()
                .any(|t| t["name"] == machine3.as_str() && t["up"] == true);
            (moved && watched).then_some(())
        },
    );
    let out = cli(&["deploy", inv, "--binary", first]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("started the node (supervised)"),
        "deploy starts the node that does not run: {}",
        text(&out)
    );
    wait_for(BOUND, "the herd healthy with node 3 back", || {
        lab.healthy(&inventory)
    });
    wait_until(BOUND, "node_down RESOLVED for node 3's machine", || {
        !lab.notes("node_down", Some(&machine3), "resolved")
            .is_empty()
    });
    wait_for(BOUND, "the ring as before", || lab.ring_watched(&inventory));
    // Late copies would come within the outbox's retries: give them time to show.
    std::thread::sleep(Duration::from_secs(3));
    for kind in ["firing", "resolved"] {
        let n = lab.notes("node_down", Some(&machine3), kind);
        assert_eq!(
            n.len(),
            1,
            "one node_down {kind} for node 3's machine, not {}: {n:?}",
            n.len()
        );
    }

    phase!("upgrade: {upgrade}, one node at a time");
    let before: Vec<Option<i32>> = (0..3).map(|i| lab.pid(i)).collect();
    wait_until(BOUND, "the alert of each target notified", || {
        lab.firing_keys().len() >= 3
    });
    let upgrade_from = herd_tests::now_ms();
    let out = cli(&["deploy", inv, "--binary", new_binary.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.matches("restarted (its supervisor starts the new one)")
            .count(),
        3,
        "{}",
        text(&out)
    );
    let want = sha256(&new_binary);
    for (i, srv) in lab.servers.iter().enumerate() {
        assert_eq!(
            sha256(&srv.prefix.join("bin/herd")),
            want,
            "server {} runs the new binary",
            i + 1
        );
        assert_ne!(lab.pid(i), before[i], "node {} was restarted", i + 1);
    }
    let s = wait_for(BOUND, "the herd healthy after the upgrade", || {
        lab.healthy(&inventory)
    });
    assert_eq!(
        s["herd_id"],
        herd_id.as_str(),
        "the same herd, not a new one"
    );
    // Samples reach the store with its flush: look a few seconds later.
    std::thread::sleep(Duration::from_secs(4));
    let upgrade_to = herd_tests::now_ms() - 2000;
    for t in ["t-1", "t-2", "t-3"] {
        let times = lab.sample_times(&inventory, t, upgrade_from - INTERVAL_MS);
        let mut edges = vec![upgrade_from];
        edges.extend(times.iter().copied().filter(|x| *x <= upgrade_to));
        edges.push(upgrade_to);
        let (longest, after) = edges
            .windows(2)
            .map(|w| (w[1] - w[0], w[0]))
            .max()
            .unwrap_or((0, 0));
        eprintln!(
            "    {t}: {} samples over the upgrade's {:.1} s, longest gap {:.2} s (after the sample at {})",
            times.len(),
            (upgrade_to - upgrade_from) as f64 / 1000.0,
            longest as f64 / 1000.0,
            clock(after)
        );
        assert!(
            longest <= INTERVAL_MS + 3000,
            "{t} went {longest} ms without a scrape during the upgrade (interval {INTERVAL_MS} ms + 3 s at most)"
        );
    }
    let keys = lab.firing_keys();
    let distinct: std::collections::BTreeSet<&String> = keys.iter().collect();
    assert_eq!(
        (keys.len(), distinct.len()),
        (3, 3),
        "one firing notification per target's alert, none again through the kill and the upgrade: {keys:?}"
    );

    phase!("a server that cannot be reached: named, exit 1, the others done");
    let closed = free_port();
    let inventory4 = lab.inventory(&format!(
        "\n[[server]]\naddress = \"127.0.0.1\"\nssh_port = {closed}\nid = 4\ngrpc = \"127.0.0.1:{}\"\n\
         prefix = \"{}\"\nkey = \"{}\"\nknown_hosts = \"{}\"\n",
        free_port(),
        installs.join("server-4").display(),
        lab.servers[0].sshd.client_key().display(),
        lab.servers[0].sshd.known_hosts().display(),
    ));
    let out = cli(&[
        "deploy",
        inventory4.to_str().unwrap(),
        "--binary",
        new_binary.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("node 4 (127.0.0.1)")
            && err.contains("FAILED")
            && err.contains("1 of 4 server(s) failed"),
        "{}",
        text(&out)
    );
    assert_eq!(
        err.matches("restart pending").count(),
        3,
        "the reachable servers got their new config: {}",
        text(&out)
    );
}
