//! A herd with mTLS between its nodes, on loopback: certificates made by `herd
//! certs`, three real `herd node` processes with `[tls]`, the CLI with `--ca`.
//! Raft, beats and the status fan-out all go over TLS, so a herd that forms,
//! applies a fleet, scrapes and fails over after a `kill -9` shows they work.
//! Then what must not work: a node with a certificate of another CA joining, the
//! CLI without the herd's CA, and Raft calls without a node certificate (plain
//! HTTP/2, TLS without a client certificate, TLS with the CLI's certificate).
//!
//! The waits only catch hangs; nothing asserts a timing.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use herd_proto::v1::raft_client::RaftClient;
use herd_proto::v1::RaftRequest;
use herd_tests::cluster::Status;
use herd_tests::netns::{default_timings_toml, NetNode, NodeSpec, TlsFiles};
use herd_tests::{free_port, herd_cli, local_target, now_ms, phase, wait_for};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Hang catcher for a formation, a failover or a scrape.
const BOUND: Duration = Duration::from_secs(30);
/// Longest run of `herd certs`.
const CERTS_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a refused node is watched for sneaking into the herd anyway.
const WATCH: Duration = Duration::from_secs(5);
/// Bound on one hand-made Raft call.
const RPC_TIMEOUT: Duration = Duration::from_secs(10);
/// A fleet target is fresh when scraped within this many seconds (interval 1 s).
const FRESH_S: f64 = 5.0;
/// Fleet targets (the `herd-node-N` ones come on top).
const TARGETS: usize = 6;
/// Tries at starting a node on a free port (another process may take it first).
const START_TRIES: usize = 3;

// ---------------------------------------------------------------------------------
// Certificates and nodes

/// `herd certs --out DIR ID=127.0.0.1 ...` into a new dir under `parent`;
/// panics unless it exits 0 and wrote the CA, the node and the client files.
fn herd_certs(parent: &Path, name: &str, ids: &[u64]) -> PathBuf {
    let out = parent.join(name);
    let mut args: Vec<String> = vec!["certs".into(), "--out".into(), out.display().to_string()];
    for id in ids {
        args.push(format!("{id}=127.0.0.1"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = herd_cli(&args, CERTS_TIMEOUT);
    assert!(
        run.status.success(),
        "`herd {}` failed with {}:\nstdout: {}\nstderr: {}",
        args.join(" "),
        run.status,
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let mut files = vec![
        "ca.pem".to_string(),
        "client.pem".into(),
        "client.key".into(),
    ];
    for id in ids {
        files.push(format!("node-{id}.pem"));
        files.push(format!("node-{id}.key"));
    }
    for f in &files {
        assert!(
            out.join(f).is_file(),
            "`herd certs` wrote {f} in {}",
            out.display()
        );
    }
    eprintln!("    herd certs wrote {files:?} in {}", out.display());
    out
}

/// Node `id` on 127.0.0.1 with `[tls]` from `pki` (`node-ID.pem`, signed by `pki`'s CA).
fn tls_node(id: u64, pki: &Path) -> NetNode {
    let mut last = String::new();
    for _ in 0..START_TRIES {
        let spec = NodeSpec {
            id,
            addr: format!("127.0.0.1:{}", free_port()),
            netns: None,
            token: None,
            tls: Some(TlsFiles::of_node(pki, id)),
            extra_toml: default_timings_toml("local"),
            ..Default::default()
        };
        match NetNode::try_start(spec) {
            Ok(n) => {
                eprintln!("    node {id} at {} (TLS, CA {})", n.addr(), pki.display());
                return n;
            }
            Err(e) => {
                eprintln!("    node {id} did not start, trying another port: {e}");
                last = e;
            }
        }
    }
    panic!("node {id} did not start with TLS: {last}");
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}

/// Several TLS nodes; they die before their certificates' dir goes.
struct TlsHerd {
    nodes: BTreeMap<u64, NetNode>,
    down: BTreeSet<u64>,
    dir: tempfile::TempDir,
}

impl TlsHerd {
    fn node(&self, id: u64) -> &NetNode {
        &self.nodes[&id]
    }

    fn live(&self) -> Vec<u64> {
        self.nodes
            .keys()
            .copied()
            .filter(|id| !self.down.contains(id))
            .collect()
    }

    /// `herd --ca CA --node N cluster init`, then `cluster join` of every other node
    /// through node `first`; waits until every node sees all members alive and one
    /// leader.
    fn form(&self, first: u64) {
        let out = self.node(first).cli_ok(&["cluster", "init"]);
        eprintln!("    node {first}: cluster init: {}", out.trim());
        let seed = self.node(first).addr().to_string();
        for (&id, node) in &self.nodes {
            if id != first {
                let out = node.cli_ok(&["cluster", "join", &seed]);
                eprintln!("    node {id}: cluster join {seed}: {}", out.trim());
            }
        }
        self.wait_agreed("the herd formed over mTLS");
    }

    /// Waits until every live node lists the started nodes, the live ones alive,
    /// and names the same live leader.
    fn wait_agreed(&self, what: &str) -> u64 {
        let members: BTreeSet<u64> = self.nodes.keys().copied().collect();
        let live: BTreeSet<u64> = self.live().into_iter().collect();
        wait_for(
            BOUND,
            &format!("{what}: every live node sees {members:?}, {live:?} alive, one leader"),
            || {
                let mut leaders = BTreeSet::new();
                for &id in &live {
                    let s = self.node(id).try_status()?;
                    if s.node_ids() != members || !live.is_subset(&s.alive_ids()) {
                        eprintln!("    not yet: {}", s.summary());
                        return None;
                    }
                    leaders.insert(s.leader?);
                }
                match leaders.into_iter().collect::<Vec<_>>()[..] {
                    [l] if live.contains(&l) => Some(l),
                    _ => None,
                }
            },
        )
    }

    /// Waits until node `via` shows every one of `names` owned by a live node it
    /// shows alive, up, and scraped within [`FRESH_S`]; returns that status.
    fn wait_owned_and_scraped(&self, via: u64, names: &[String]) -> Status {
        let live = self.live();
        let mut last = String::new();
        wait_for(
            BOUND,
            &format!(
                "node {via} shows {} targets owned by {live:?}, up and fresh",
                names.len()
            ),
            || {
                let s = self.node(via).try_status()?;
                let mut p = s.ownership_problems(names, true);
                for name in names {
                    match s.target(name) {
                        Some(t) if !t.owner.is_some_and(|o| live.contains(&o)) => {
                            p.push(format!("{name} owned by {:?}", t.owner))
                        }
                        Some(t) if t.up != Some(true) => p.push(format!("{name} up={:?}", t.up)),
                        Some(t) if !t.last_scrape_age_s.is_some_and(|a| a <= FRESH_S) => {
                            p.push(format!("{name} scraped {:?}s ago", t.last_scrape_age_s))
                        }
                        _ => {}
                    }
                }
                if p.is_empty() {
                    return Some(s);
                }
                p.truncate(6);
                let line = format!("{} · {}", s.summary(), p.join("; "));
                if line != last {
                    eprintln!("    not yet: {line}");
                    last = line;
                }
                None
            },
        )
    }

    /// `target.up` points of `target` that node `via` returns for the last 5 min.
    fn up_points(&self, via: u64, target: &str) -> Vec<(i64, f64)> {
        let out = self
            .node(via)
            .cli_ok(&["query", target, "target.up", "--since", "5m", "--json"]);
        let doc: serde_json::Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("`herd query --json` printed no JSON ({e}): {out}"));
        doc["series"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["points"].as_array().cloned().unwrap_or_default())
            .filter_map(|p| Some((p.get(0)?.as_i64()?, p.get(1)?.as_f64()?)))
            .collect()
    }
}

/// Starts TLS nodes `ids` with certificates from one `herd certs` run.
fn tls_herd(ids: &[u64]) -> (TlsHerd, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("herd-tls-")
        .tempdir()
        .expect("a temp dir");
    phase!("herd certs for nodes {ids:?} on 127.0.0.1");
    let pki = herd_certs(dir.path(), "pki", ids);
    phase!("nodes {ids:?} with [tls]");
    let nodes = ids.iter().map(|&id| (id, tls_node(id, &pki))).collect();
    (
        TlsHerd {
            nodes,
            down: BTreeSet::new(),
            dir,
        },
        pki,
    )
}

/// A node 4 with a certificate from another `herd certs` run (another CA) tries
/// to join through each of `seeds`: every join fails with a message, and for
/// [`WATCH`] no node of the herd lists node 4, nor does node 4 find itself in a herd.
fn intruder_cannot_join(herd: &TlsHerd, seeds: &[u64]) {
    let other = herd_certs(herd.dir.path(), "other", &[4]);
    let intruder = tls_node(4, &other);
    for &seed in seeds {
        let addr = herd.node(seed).addr().to_string();
        let out = intruder.cli(&["cluster", "join", &addr]);
        eprintln!(
            "    join through node {seed} exited with {}: {}",
            out.status,
            stderr(&out)
        );
        assert!(
            !out.status.success(),
            "the join of a node whose certificate another CA signed fails; stdout: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            !stderr(&out).is_empty(),
            "the failed join says why on stderr"
        );
    }
    let members: BTreeSet<u64> = herd.nodes.keys().copied().collect();
    let deadline = std::time::Instant::now() + WATCH;
    while std::time::Instant::now() < deadline {
        for &id in &herd.live() {
            let s = herd.node(id).status();
            assert_eq!(
                s.node_ids(),
                members,
                "node {id} lists the herd's members only: {}",
                s.summary()
            );
        }
        let s4 = intruder.status();
        assert!(
            s4.leader.is_none() && s4.node_ids() == BTreeSet::from([4]),
            "node 4 is in no herd: {}",
            s4.summary()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

// ---------------------------------------------------------------------------------
// Hand-made Raft calls

/// One `Raft/AppendEntries` with an empty payload to `addr`: over plain HTTP/2 when
/// `tls` is None. A node that let the call through would answer InvalidArgument
/// (the payload is not openraft's JSON); Err carries the gRPC status or the
/// transport error.
fn raft_call(addr: &str, tls: Option<ClientTlsConfig>) -> Result<(), tonic::Status> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    rt.block_on(async move {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut ep = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .expect("an endpoint")
            .connect_timeout(RPC_TIMEOUT)
            .timeout(RPC_TIMEOUT);
        if let Some(tls) = tls {
            ep = ep.tls_config(tls).expect("TLS settings");
        }
        let channel: Channel = ep
            .connect()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("connect: {e:?}")))?;
        RaftClient::new(channel)
            .append_entries(RaftRequest {
                payload: Vec::new(),
            })
            .await
            .map(|_| ())
    })
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------

#[test]
fn mtls_herd_forms_applies_refuses_a_foreign_node_and_fails_over() {
    let (mut herd, _pki) = tls_herd(&[1, 2, 3]);

    phase!("node 1 inits the herd, 2 and 3 join it (every CLI call with --ca)");
    herd.form(1);

    phase!("apply {TARGETS} local targets at 1s");
    let names: Vec<String> = (1..=TARGETS).map(|i| format!("t-{i}")).collect();
    let fleet: String = names.iter().map(|n| local_target(n, "1s")).collect();
    let out = herd.node(1).apply(&fleet);
    eprintln!("    {}", out.trim());

    phase!("every target is owned, up and scraped; its samples answer a query");
    let s = herd.wait_owned_and_scraped(1, &names);
    eprintln!("    {}", s.summary());
    let owners: BTreeSet<u64> = names.iter().filter_map(|n| s.target(n)?.owner).collect();
    assert!(
        owners.len() > 1,
        "the targets are spread over the herd (their scrapes come back over TLS): {}",
        s.summary()
    );
    // Status shows a scrape as it happens; its samples reach the owner's store with
    // the next batch commit (at most the flush interval later), so the query waits.
    for name in &names {
        let owner = s.target(name).and_then(|t| t.owner);
        wait_for(
            BOUND,
            &format!("node 2 returns target.up = 1 points of {name} (owner {owner:?}) over TLS"),
            || {
                herd.up_points(2, name)
                    .iter()
                    .any(|&(_, v)| v == 1.0)
                    .then_some(())
            },
        );
    }

    phase!("node 4, with certificates of another CA, cannot join through node 1 or 2");
    intruder_cannot_join(&herd, &[1, 2]);

    let leader = herd.wait_agreed("before the kill");
    let s = herd.node(leader).status();
    let victim = herd
        .live()
        .into_iter()
        .filter(|&id| id != leader)
        .max_by_key(|&id| {
            names
                .iter()
                .filter(|n| s.target(n).and_then(|t| t.owner) == Some(id))
                .count()
        })
        .expect("two followers");
    let orphans: Vec<String> = names
        .iter()
        .filter(|n| s.target(n).and_then(|t| t.owner) == Some(victim))
        .cloned()
        .collect();
    assert!(
        !orphans.is_empty(),
        "follower {victim} owns targets: {}",
        s.summary()
    );

    phase!("kill -9 node {victim} (owns {orphans:?}; leader {leader})");
    let killed_at = now_ms();
    herd.nodes.get_mut(&victim).expect("the victim").kill9();
    herd.down.insert(victim);

    phase!("the survivors show node {victim} down and own and scrape its targets");
    let survivors = herd.live();
    wait_for(
        BOUND,
        &format!("node {leader} shows node {victim} down and no target owned by it"),
        || {
            let s = herd.node(leader).try_status()?;
            let moved = s
                .targets
                .iter()
                .all(|t| t.owner.is_some_and(|o| survivors.contains(&o)));
            (!s.alive_ids().contains(&victim) && moved).then_some(())
        },
    );
    herd.wait_owned_and_scraped(leader, &names);
    for t in &orphans {
        wait_for(
            BOUND,
            &format!("a survivor scraped {t} after the kill"),
            || {
                herd.up_points(leader, t)
                    .iter()
                    .any(|&(ts, v)| ts > killed_at && v == 1.0)
                    .then_some(())
            },
        );
    }
    let s = herd.node(leader).status();
    eprintln!("    {}", s.summary());
}

#[test]
fn cli_without_the_herds_ca_fails_with_exit_1_and_says_why() {
    let (herd, _pki) = tls_herd(&[1]);
    let node = herd.node(1);
    let addr = node.addr().to_string();

    phase!("the CLI with --ca works");
    assert_eq!(node.status().node_id, 1);

    phase!("the CLI with the CA of another herd fails with exit 1");
    let other = herd_certs(herd.dir.path(), "other", &[1]);
    let out = node.cli_with(Some(&other.join("ca.pem")), &["status"]);
    let msg = stderr(&out);
    eprintln!("    exited with {}: {msg}", out.status);
    assert_eq!(out.status.code(), Some(1), "exit 1 with another CA: {msg}");
    assert!(
        msg.contains(&addr),
        "the message names the node {addr}: {msg}"
    );

    phase!("the CLI without --ca fails with exit 1 and says the node speaks TLS");
    let out = node.cli_with(None, &["status"]);
    let msg = stderr(&out);
    eprintln!("    exited with {}: {msg}", out.status);
    assert_eq!(out.status.code(), Some(1), "exit 1 without --ca: {msg}");
    assert!(
        msg.contains(&addr),
        "the message names the node {addr}: {msg}"
    );
    let lower = msg.to_ascii_lowercase();
    assert!(
        lower.contains("tls") || lower.contains("--ca") || lower.contains("certificate"),
        "a user who forgot --ca learns from the message that the node speaks TLS (or to \
         pass --ca); it says: {msg}"
    );
}

/// `curl ARGS URL`: exit code, and what it printed (body then `\n` and the status).
fn curl(args: &[&str], url: &str) -> (i32, String) {
    let out = herd_tests::process::run_bounded(
        std::process::Command::new("curl")
            .args(["-s", "-S", "--max-time", "20", "-w", "\n%{http_code}"])
            .args(args)
            .arg(url),
        Duration::from_secs(30),
    );
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn the_http_face_speaks_https_with_the_node_certificate() {
    let (herd, pki) = tls_herd(&[1]);
    herd.form(1);
    let node = herd.node(1);
    let http = wait_for(BOUND, "the log naming the HTTP port", || node.http_addr());
    let ca = pki.join("ca.pem");
    let ca = ca.to_str().unwrap();

    phase!("curl trusting the herd's CA: the status and the dashboard over HTTPS");
    let (code, text) = curl(&["--cacert", ca], &format!("https://{http}/herd/v1/status"));
    assert_eq!(code, 0, "{text}");
    let (body, status) = text.rsplit_once('\n').unwrap();
    assert_eq!(status.trim(), "200", "{text}");
    let doc: serde_json::Value = serde_json::from_str(body).expect("JSON");
    assert_eq!(doc["node_id"], 1, "{doc}");
    let (code, text) = curl(&["--cacert", ca], &format!("https://{http}/"));
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("<title>Herd</title>"), "{text}");

    phase!("without the CA the certificate is refused; plain HTTP gets no answer");
    let (code, text) = curl(&[], &format!("https://{http}/herd/v1/status"));
    assert_eq!(
        code, 60,
        "curl's 'peer certificate cannot be authenticated': {text}"
    );
    let (code, text) = curl(&[], &format!("http://{http}/herd/v1/status"));
    assert_ne!(code, 0, "plain HTTP to the HTTPS port: {text}");
    assert!(!text.contains("node_id"), "{text}");

    phase!("a real Prometheus scrapes /metrics over HTTPS, trusting the herd's CA");
    let prometheus = herd_tests::prometheus::Prometheus::start(&format!(
        "  - job_name: herd\n    scheme: https\n    tls_config: {{ ca_file: '{ca}' }}\n    \
         static_configs: [{{ targets: ['{http}'] }}]\n"
    ));
    let up = wait_for(
        Duration::from_secs(60),
        "Prometheus scraping node 1",
        || {
            let v = prometheus.query("herd_up")?;
            (v.len() == 1 && v[0].1 == 1.0).then_some(v)
        },
    );
    assert_eq!(up[0].0["instance"], http.as_str(), "{up:?}");
}

#[test]
fn raft_calls_without_a_node_certificate_are_refused() {
    let (herd, pki) = tls_herd(&[1]);
    phase!("node 1 inits the herd (Raft runs)");
    herd.form(1);
    let node = herd.node(1);
    let addr = node.addr().to_string();
    let other = herd_certs(herd.dir.path(), "other", &[1]);

    phase!("Raft over plain HTTP/2 is refused");
    let plain = raft_call(&addr, None);
    eprintln!("    plain: {plain:?}");
    let err = plain.expect_err("a plain-HTTP Raft call to a TLS node fails");
    assert_ne!(
        err.code(),
        tonic::Code::InvalidArgument,
        "the node did not read the plain call: {err:?}"
    );

    let ca = Certificate::from_pem(read(&pki.join("ca.pem")));
    phase!("Raft over TLS without a client certificate is refused: Unauthenticated");
    let no_cert = raft_call(
        &addr,
        Some(ClientTlsConfig::new().ca_certificate(ca.clone())),
    );
    eprintln!("    without a certificate: {no_cert:?}");
    assert_eq!(
        no_cert.expect_err("refused").code(),
        tonic::Code::Unauthenticated,
        "a Raft call without a node certificate"
    );

    phase!("Raft over TLS with the CLI's certificate (same CA, not a node's) is refused");
    let client = Identity::from_pem(read(&pki.join("client.pem")), read(&pki.join("client.key")));
    let cli_cert = raft_call(
        &addr,
        Some(ClientTlsConfig::new().ca_certificate(ca).identity(client)),
    );
    eprintln!("    with the CLI's certificate: {cli_cert:?}");
    assert_eq!(
        cli_cert.expect_err("refused").code(),
        tonic::Code::Unauthenticated,
        "a Raft call with a client (not node) certificate"
    );

    phase!("Raft over TLS with a node certificate of another CA is refused");
    let foreign = Identity::from_pem(
        read(&other.join("node-1.pem")),
        read(&other.join("node-1.key")),
    );
    let foreign_call = raft_call(
        &addr,
        Some(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(read(&pki.join("ca.pem"))))
                .identity(foreign),
        ),
    );
    eprintln!("    with another CA's node certificate: {foreign_call:?}");
    let err = foreign_call.expect_err("refused");
    assert_ne!(
        err.code(),
        tonic::Code::InvalidArgument,
        "the node did not read a call with a foreign certificate: {err:?}"
    );
    assert!(node.status().node_ids() == BTreeSet::from([1]));
}
