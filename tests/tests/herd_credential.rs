//! The herd's own port, tried as an outsider would: a real `herd node` on loopback
//! and a plain gRPC client of the `herd.v1.Raft` service (the one the nodes speak
//! among themselves) that lacks the herd's credential, or holds it and sends what
//! no member would. Every call is refused, nothing it asks for happens, and the
//! node keeps running and says what it refused.
//!
//! The mTLS side (a node certificate names its node: a node cannot beat as another)
//! is tested with real TLS clients in `node/src/tls.rs`.
use std::path::PathBuf;
use std::time::Duration;

use herd_proto::v1::raft_client::RaftClient;
use herd_proto::v1::{
    forward_reply, BeatRequest, ForwardRequest, HelloRequest, JoinRequest, RaftRequest,
    SnapshotChunk,
};
use herd_tests::cluster::Cluster;
use herd_tests::{herd_cli, local_target_with, phase, toml_str, Herd, HerdOptions};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request};

const TOKEN: &str = "api-token-of-this-test";
/// Time for a command the node would run (a 1 s check) to have run.
const SETTLE: Duration = Duration::from_secs(3);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn client(addr: &str) -> RaftClient<Channel> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap();
    RaftClient::new(ch)
}

/// A request with these credential headers (None: left out).
fn with<T>(msg: T, secret: Option<&str>, herd_id: Option<&str>) -> Request<T> {
    let mut r = Request::new(msg);
    if let Some(s) = secret {
        r.metadata_mut()
            .insert("x-herd-secret", MetadataValue::try_from(s).unwrap());
    }
    if let Some(h) = herd_id {
        r.metadata_mut()
            .insert("x-herd-id", MetadataValue::try_from(h).unwrap());
    }
    r
}

/// A forwarded `ApplySpec` (the herd's `Command` as JSON) of `text`.
fn apply_spec(text: &str) -> ForwardRequest {
    let cmd = serde_json::json!({"ApplySpec": {"text": text, "source": "forged.toml"}});
    ForwardRequest {
        command: serde_json::to_vec(&cmd).unwrap(),
    }
}

/// A fleet whose one target runs `touch MARKER` every second.
fn touching_fleet(marker: &std::path::Path) -> String {
    let command = format!("touch {}", marker.display());
    local_target_with(
        "victim",
        &[format!(
            "{{ kind = \"command\", name = \"pwn\", command = {} }}",
            toml_str(&command)
        )],
    )
}

/// An InstallSnapshot chunk (openraft's request as JSON) at `offset`.
fn snapshot_chunk(offset: u64) -> SnapshotChunk {
    let payload = serde_json::json!({
        "vote": {"leader_id": {"term": 99, "node_id": 1}, "committed": true},
        "meta": {
            "last_log_id": null,
            "last_membership": {"log_id": null, "membership": {"configs": [], "nodes": {}}},
            "snapshot_id": "forged"
        },
        "offset": offset,
        "data": [],
        "done": false
    });
    SnapshotChunk {
        payload: serde_json::to_vec(&payload).unwrap(),
        data: vec![0u8; 16],
    }
}

#[test]
fn the_herd_port_refuses_every_call_without_the_herd_credential() {
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let marker: PathBuf = tmp.path().join("the-outsider-ran-this");
    let node = Herd::start(HerdOptions::default().api_token(TOKEN));
    node.cli_ok(&["cluster", "init"]);
    let secret_path = node.data_dir().join("herd-secret");
    let secret = std::fs::read_to_string(&secret_path)
        .expect("cluster init keeps the herd secret in the data dir");
    let secret = secret.trim().to_string();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&secret_path)
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let herd_id = herd_tests::wait_for(Duration::from_secs(10), "a herd id", || {
        let v = node.status_json();
        let id = v["herd_id"].as_str()?.to_string();
        (!id.is_empty()).then_some(id)
    });
    let mut c = rt.block_on(client(&node.addr()));

    phase!("Forward of a spec whose check runs a command: refused, never run");
    let forged = touching_fleet(&marker);
    for (secret, why) in [
        (None, "no herd secret"),
        (
            Some("a-wrong-secret-of-the-right-size"),
            "a wrong herd secret",
        ),
    ] {
        let e = rt
            .block_on(c.forward(with(apply_spec(&forged), secret, None)))
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
        assert!(e.message().contains(why), "{e:?}");
    }
    std::thread::sleep(SETTLE);
    assert!(!marker.exists(), "the node ran the outsider's command");
    assert_eq!(node.status_json()["spec_version"], 0);

    phase!("a forged beat: refused");
    let beat = BeatRequest {
        from: 2,
        from_addr: "127.0.0.1:1".into(),
        ownership_version: u64::MAX,
        acting_version: u64::MAX,
        last_log_index: u64::MAX,
        boot: 1,
        seq: u64::MAX,
        leader_silent_ms: Some(u64::MAX),
        command_level: u32::MAX,
    };
    let e = rt.block_on(c.beat(with(beat, None, None))).unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");

    phase!("votes, entries, hello and join without the credential: refused before decoding");
    let raft_req = || RaftRequest {
        payload: b"{}".to_vec(),
    };
    let refusals = [
        rt.block_on(c.vote(with(raft_req(), None, None))).err(),
        rt.block_on(c.append_entries(with(raft_req(), None, None)))
            .err(),
        rt.block_on(c.hello(with(HelloRequest::default(), None, None)))
            .err(),
        rt.block_on(c.join(with(JoinRequest::default(), None, None)))
            .err(),
    ];
    for e in refusals {
        let e = e.expect("a call without the credential was answered");
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    }

    phase!("a forged snapshot chunk: refused without the credential, bounded with it");
    let e = rt
        .block_on(c.install_snapshot(with(snapshot_chunk(1 << 40), None, None)))
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    // Even a member cannot make the node allocate without bound.
    let e = rt
        .block_on(c.install_snapshot(with(snapshot_chunk(u64::MAX - 8), Some(&secret), None)))
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("beyond"), "{e:?}");

    phase!("a member's forward of a bad spec: refused as `herd apply` refuses it");
    let bad = "[[target]]\nname = \"x\"\ninterval = \"soon\"\n";
    let e = rt
        .block_on(c.forward(with(apply_spec(bad), Some(&secret), None)))
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let bad_file = node.write_file("bad", bad);
    let check = herd_cli(&["check", &bad_file.display().to_string()], SETTLE);
    assert_eq!(check.status.code(), Some(2));
    let checked = String::from_utf8_lossy(&check.stderr);
    let key_line = checked
        .lines()
        .find(|l| l.contains("interval"))
        .expect("herd check names the key");
    let what = key_line.split(": ").skip(1).collect::<Vec<_>>().join(": ");
    assert!(
        e.message().contains(&what),
        "forward: {}\nherd check: {checked}",
        e.message()
    );

    phase!("a caller of another herd, with the right secret: refused, naming both herds");
    let e = rt
        .block_on(c.forward(with(
            apply_spec(&forged),
            Some(&secret),
            Some("0123456789abcdef"),
        )))
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(
        e.message().contains(&herd_id) && e.message().contains("0123456789abcdef"),
        "{e:?}"
    );

    phase!("the credential opens the door: the same member forwards a good spec");
    let good = local_target_with("fine", &["{ kind = \"vitals\" }".to_string()]);
    let r = rt
        .block_on(c.forward(with(apply_spec(&good), Some(&secret), Some(&herd_id))))
        .unwrap()
        .into_inner();
    assert!(
        matches!(r.result, Some(forward_reply::Result::Response(_))),
        "{r:?}"
    );

    phase!("the node still runs, says what it refused, and never logs the secret");
    std::thread::sleep(SETTLE);
    assert!(!marker.exists(), "the node ran the outsider's command");
    let status = node.status_json();
    let refusals: Vec<String> = status["refusals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    assert!(
        refusals.iter().any(|r| r.contains("no herd secret"))
            && refusals.iter().any(|r| r.contains("another herd")),
        "{refusals:?}"
    );
    assert!(
        !node.log().contains(&secret),
        "the herd secret is in the log"
    );
}

#[test]
fn a_node_refuses_to_listen_beyond_loopback_without_tls_or_a_herd_secret() {
    let tmp = tempfile::tempdir().unwrap();
    let token = tmp.path().join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let config = tmp.path().join("herd.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\ngrpc = \"0.0.0.0:{}\"\nhttp = \"127.0.0.1:0\"\napi_token_file = \"{}\"\ndata_dir = \"{}\"\n",
            herd_tests::free_port(),
            token.display(),
            tmp.path().join("data").display()
        ),
    )
    .unwrap();
    let out = herd_cli(
        &["node", "--config", &config.display().to_string()],
        Duration::from_secs(20),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("cluster.secret_file") && stderr.contains("beyond loopback"),
        "{stderr}"
    );
}

#[test]
fn join_tells_the_truth_about_the_herd_a_node_is_in() {
    let tmp = tempfile::tempdir().unwrap();
    let secret = tmp.path().join("herd-secret");
    std::fs::write(&secret, "one-secret-file-for-both-herds-0123\n").unwrap();
    let base = HerdOptions::default().extra_toml(format!(
        "[cluster]\nsecret_file = \"{}\"\n",
        secret.display()
    ));
    phase!("herd A: nodes 1 and 2; herd B: node 3, from the same secret file");
    let a = Cluster::start(2, base.clone());
    let b = Herd::start(base.clone().id(3));
    b.cli_ok(&["cluster", "init"]);
    let herd_of = |h: &Herd| {
        herd_tests::wait_for(Duration::from_secs(10), "a herd id", || {
            let id = h.status_json()["herd_id"].as_str()?.to_string();
            (!id.is_empty()).then_some(id)
        })
    };
    let (herd_a, herd_b) = (herd_of(a.node(1)), herd_of(&b));
    assert_ne!(herd_a, herd_b);
    assert_eq!(herd_of(a.node(2)), herd_a);

    phase!("joining a member of one's own herd: exit 0, nothing changed");
    let out = a.node(2).cli_ok(&["cluster", "join", &a.node(1).addr()]);
    assert!(
        out.contains("already a member") && out.contains(&herd_a),
        "{out}"
    );

    phase!("a node of herd B asked to join herd A: exit 1, both herds named");
    let out = b.cli(&["cluster", "join", &a.node(1).addr()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for part in [
        &herd_a,
        &herd_b,
        "leader",
        "members",
        "spec v",
        "cluster leave",
    ] {
        assert!(stderr.contains(part), "{part:?} missing: {stderr}");
    }
    // Neither herd changed.
    let s = a.status();
    assert_eq!(s.node_ids(), [1, 2].into(), "{}", s.summary());
    assert_eq!(b.status_json()["herd_id"], herd_b.as_str());
}
