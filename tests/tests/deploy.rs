//! `herd deploy` end to end: three "servers", each a real OpenSSH sshd (its own
//! host key, client key and known_hosts) with its own install directory, all on
//! loopback (the nodes listen on 127.0.0.1, one port each). The test writes an
//! inventory and runs the real CLI:
//! - `--dry-run` shows the plan and changes nothing;
//! - deploy copies the binary, writes each node's config and credentials (0600),
//!   starts each node under its supervisor, and the herd forms by itself;
//! - a second run changes nothing and says so;
//! - a node killed with `kill -9` is started again by its supervisor;
//! - an upgrade (`--binary` a different build) replaces the binary everywhere and
//!   restarts the nodes one at a time, the herd healthy after each; meanwhile no
//!   target goes unscraped longer than its interval + 3 s, and the alert that
//!   fires on each target (a webhook receiver in the test) is notified once, not
//!   again by a restarted node or by the node that took its targets over;
//! - a server that cannot be reached fails with its name; the others are done.
//!
//! Not here: servers in separate network namespaces (loopback stands in for the
//! network), `--service systemd` (not built). The bounds only catch hangs.
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use herd_tests::process::run_bounded;
use herd_tests::{free_port, local_target, phase, wait_for, wait_until, Sshd, SSH_USER};

const DEPLOY_BOUND: Duration = Duration::from_secs(300);
const BOUND: Duration = Duration::from_secs(60);

struct Server {
    sshd: Sshd,
    prefix: PathBuf,
    grpc_port: u16,
    http_port: u16,
}

/// Stops every node the test started through deploy, even when it fails.
struct Lab {
    dir: tempfile::TempDir,
    servers: Vec<Server>,
    hook: herd_tests::HttpReceiver,
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
        // Each target's cpu is above -1 %: an alert fires on each and stays.
        let mut text: String = (1..=3)
            .map(|i| local_target(&format!("t-{i}"), "1s"))
            .collect();
        text.push_str(&format!(
            "[[rule]]\nname = \"always\"\nmetric = \"cpu.used_pct\"\nkind = \"range\"\nmax = -1\n\
             channels = [\"hook\"]\n\n[[channel]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\n\
             group_window = \"0s\"\n",
            self.hook.url("/hook")
        ));
        std::fs::write(&fleet, text).unwrap();
        let mut text = format!(
            "fleet = \"fleet.toml\"\n\n[defaults]\nuser = \"{SSH_USER}\"\nmachine = \"none\"\n"
        );
        for (i, s) in self.servers.iter().enumerate() {
            text.push_str(&format!(
                "\n[[server]]\naddress = \"127.0.0.1\"\nssh_port = {}\nid = {}\ngrpc = \"127.0.0.1:{}\"\n\
                 http = \"127.0.0.1:{}\"\nprefix = \"{}\"\nkey = \"{}\"\nknown_hosts = \"{}\"\n",
                s.sshd.port(),
                i + 1,
                s.grpc_port,
                s.http_port,
                s.prefix.display(),
                s.sshd.client_key().display(),
                s.sshd.known_hosts().display(),
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
        let node = format!("127.0.0.1:{}", self.servers[0].grpc_port);
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

    /// The idempotency keys of every firing notification the hook accepted.
    fn firing_keys(&self) -> Vec<String> {
        self.hook
            .accepted()
            .iter()
            .flat_map(|r| {
                r.json()["notifications"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter(|n| n["kind"] == "firing")
            .map(|n| {
                n["idempotency_key"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect()
    }

    /// Three members alive, a leader, every fleet target owned.
    fn healthy(&self, inventory: &Path) -> Option<serde_json::Value> {
        let s = self.status(inventory)?;
        let nodes = s["nodes"].as_array()?;
        let alive = nodes.iter().filter(|n| n["alive"] == true).count();
        let owned = s["targets"]
            .as_array()?
            .iter()
            .filter(|t| t["owner"].as_u64().is_some_and(|o| o > 0))
            .count();
        (alive == 3 && s["leader"].as_u64().is_some() && owned == 3).then_some(s)
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

#[test]
fn deploy_lays_down_a_herd_converges_and_rolls_an_upgrade() {
    herd_tests::require_root();
    let dir = tempfile::tempdir().unwrap();
    // The servers' install dirs belong to the SSH account deploy logs in as.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let installs = dir.path().join("servers");
    std::fs::create_dir(&installs).unwrap();
    std::fs::set_permissions(&installs, std::fs::Permissions::from_mode(0o777)).unwrap();
    let servers = (1..=3)
        .map(|i| Server {
            sshd: Sshd::start(),
            prefix: installs.join(format!("server-{i}")),
            grpc_port: free_port(),
            http_port: free_port(),
        })
        .collect();
    let lab = Lab {
        dir,
        servers,
        hook: herd_tests::HttpReceiver::start(),
    };
    let inventory = lab.inventory("");
    let inv = inventory.to_str().unwrap();

    phase!("herd deploy --dry-run: the plan, nothing changed");
    let out = cli(&["deploy", inv, "--dry-run"]);
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
    let out = cli(&["deploy", inv]);
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
            sha256(Path::new(&herd_tests::herd_bin()))
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
    let out = cli(&["deploy", inv]);
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

    phase!("upgrade: a different binary rolls out, one node at a time");
    let new_binary = lab.dir.path().join("herd-next");
    let mut bytes = std::fs::read(herd_tests::herd_bin()).unwrap();
    // A build that differs (trailing bytes after the ELF image change nothing it runs).
    bytes.extend_from_slice(b"\nherd-next\n");
    std::fs::write(&new_binary, &bytes).unwrap();
    std::fs::set_permissions(&new_binary, std::fs::Permissions::from_mode(0o755)).unwrap();
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
