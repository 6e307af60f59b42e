//! `herd demo`: a herd of three nodes on 127.0.0.1 on embedded defaults. Node 1
//! runs in this process, nodes 2 and 3 are child `herd node` processes (they die
//! with the demo); node 1 starts the herd, the others join it, and the herd watches
//! this machine as a target (and each node's machine, each by the next node). It
//! prints what it does and how to kill a node and watch the takeover.
use std::path::{Path, PathBuf};
use std::time::Duration;

use herd_proto::v1 as pb;

use super::CliError;
use crate::config::{parse_duration, NodeConfig};
use crate::model::{now_ms, Labels};
use crate::node::{Node, Running};

/// The demo's target name for this machine.
const DEMO_TARGET: &str = "local";

fn demo_fleet(interval: &str) -> String {
    format!(
        "# herd demo: this machine through the local transport\n\
         [[target]]\n\
         name = \"{DEMO_TARGET}\"\n\
         transport = \"local\"\n\
         interval = \"{interval}\"\n\
         labels = {{ role = \"demo\" }}\n\
         checks = [{{ kind = \"vitals\" }}]\n"
    )
}

/// Nodes of the demo herd.
const DEMO_NODES: u64 = 3;

/// A child node of the demo: stopped (SIGTERM, then kill) when the demo ends, and
/// by the kernel if the demo itself is killed.
struct Child {
    id: u64,
    addr: String,
    /// Its HTTP face (the dashboard).
    http: String,
    log: PathBuf,
    child: tokio::process::Child,
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            // SAFETY: kill(2) on a child we spawned and have not reaped yet.
            unsafe {
                libc::kill(pid as i32, libc::SIGTERM);
            }
        }
    }
}

fn spawn_child(id: u64, addr: &str, http: &str, dir: &Path) -> Result<Child, CliError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| CliError::Failure(format!("cannot create {}: {e}", dir.display())))?;
    let config = dir.join("herd.toml");
    let data = dir.join("data");
    let text = format!(
        "# written by `herd demo`\n[node]\nid = {id}\ngrpc = \"{addr}\"\nhttp = \"{http}\"\ndata_dir = {:?}\n\n[log]\nlevel = \"warn,openraft=error\"\n",
        data.display().to_string()
    );
    std::fs::write(&config, text)
        .map_err(|e| CliError::Failure(format!("cannot write {}: {e}", config.display())))?;
    let log = dir.join("node.log");
    let out = std::fs::File::create(&log)
        .map_err(|e| CliError::Failure(format!("cannot create {}: {e}", log.display())))?;
    let err = out
        .try_clone()
        .map_err(|e| CliError::Failure(format!("{}: {e}", log.display())))?;
    let exe = std::env::current_exe()
        .map_err(|e| CliError::Failure(format!("cannot find the herd binary: {e}")))?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("node")
        .arg("--config")
        .arg(&config)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err);
    // SAFETY: prctl only sets this child's parent-death signal, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| CliError::Failure(format!("cannot start node {id}: {e}")))?;
    Ok(Child {
        id,
        addr: addr.to_string(),
        http: http.to_string(),
        log,
        child,
    })
}

/// Asks the node at `addr` to join the herd of `seed`, retrying while it starts.
async fn join(addr: &str, seed: &str, log: &Path) -> Result<String, CliError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        let attempt = async {
            let mut c = pb::herd_client::HerdClient::connect(format!("http://{addr}"))
                .await
                .map_err(|e| e.to_string())?;
            c.cluster_join(pb::ClusterJoinRequest {
                seed: seed.to_string(),
            })
            .await
            .map(|r| r.into_inner().message)
            .map_err(|s| s.message().to_string())
        };
        match attempt.await {
            Ok(m) => return Ok(m),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Err(CliError::Failure(format!(
        "node at {addr} did not join the demo herd: {last} (see {})",
        log.display()
    )))
}

fn port_after(flag: &str, addr: &str, n: u16) -> Result<String, CliError> {
    let sa: std::net::SocketAddr = addr
        .parse()
        .map_err(|_| CliError::Usage(format!("{flag} {addr:?} is not an IP:port address")))?;
    let port = sa.port().checked_add(n).ok_or_else(|| {
        CliError::Usage(format!(
            "{flag} {addr}: no room for the ports of nodes 2 and 3 above it"
        ))
    })?;
    Ok(std::net::SocketAddr::new(sa.ip(), port).to_string())
}

pub async fn run(data_dir: &Path, grpc: &str, http: &str, interval: &str) -> Result<(), CliError> {
    let every =
        parse_duration(interval).map_err(|e| CliError::Usage(format!("--interval: {e}")))?;
    let mut cfg = NodeConfig::default();
    cfg.node.data_dir = data_dir.join("node-1").join("data");
    cfg.node.grpc = grpc.to_string();
    cfg.node.http = http.to_string();
    let peers: Vec<(u64, String, String)> = (2..=DEMO_NODES)
        .map(|id| {
            Ok((
                id,
                port_after("--grpc", grpc, (id - 1) as u16)?,
                port_after("--http", http, (id - 1) as u16)?,
            ))
        })
        .collect::<Result<_, CliError>>()?;
    let problems = cfg.validate();
    if let Some((key, message)) = problems.first() {
        return Err(CliError::Usage(format!("{key}: {message}")));
    }
    let listener = tokio::net::TcpListener::bind(grpc).await.map_err(|e| {
        CliError::Failure(format!(
            "cannot listen on {grpc}: {e} (is another herd running? try --grpc 127.0.0.1:7411)"
        ))
    })?;
    let mut children = Vec::new();
    for (id, addr, http) in &peers {
        children.push(spawn_child(
            *id,
            addr,
            http,
            &data_dir.join(format!("node-{id}")),
        )?);
    }
    let fleet_text = demo_fleet(interval);
    let grpc_owned = grpc.to_string();
    let http_owned = http.to_string();
    let children_ref = &children;
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Running>();
    let initial = Some((fleet_text.clone(), "demo fleet".to_string()));
    let node = async move {
        Node::build(cfg, listener)
            .await?
            .run(initial, crate::node::signals(), move |r| {
                let _ = ready_tx.send(r);
            })
            .await
    };
    let show = async move {
        let Ok(running) = ready_rx.await else {
            return std::future::pending().await;
        };
        if let Err(e) = running.fleet.ensure_herd().await {
            eprintln!("herd demo: cannot start the herd on node 1: {e}");
        }
        for c in children_ref {
            match join(&c.addr, &grpc_owned, &c.log).await {
                Ok(m) => println!("herd demo: {m}"),
                Err(e) => eprintln!("herd demo: {}", e.message()),
            }
        }
        // A demo dir kept from an earlier run may hold another spec (other interval).
        let wanted = crate::config::parse_fleet(&fleet_text, "demo fleet").ok();
        if wanted.as_ref() != Some(&*running.fleet.current().1) {
            if let Err(e) = running.fleet.apply(&fleet_text, "demo fleet").await {
                eprintln!("herd demo: cannot apply the demo fleet: {e}");
            }
        }
        let node_flag = if grpc_owned == super::DEFAULT_NODE {
            String::new()
        } else {
            format!(" --node {grpc_owned}")
        };
        println!(
            "herd demo: a herd of {DEMO_NODES} on 127.0.0.1 — node 1 on {grpc_owned} (this process), {}; data under {}",
            children_ref
                .iter()
                .map(|c| format!("node {} on {} (pid {})", c.id, c.addr, c.child.id().unwrap_or(0)))
                .collect::<Vec<_>>()
                .join(", "),
            data_dir.display()
        );
        println!("watching this machine as target \"{DEMO_TARGET}\" (local transport) every {interval}, and each node's machine (herd-node-N) from the next node\n");
        println!(
            "dashboard: http://{http_owned}/   (every node serves it: {})\n",
            children_ref
                .iter()
                .map(|c| format!("http://{}/", c.http))
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!("in another terminal:");
        println!("  herd{node_flag} status");
        if let Some(c) = children_ref.first() {
            println!(
                "  kill -9 {}        # node {}: within about 2 s its targets move to the others (herd{node_flag} status)",
                c.child.id().unwrap_or(0),
                c.id
            );
        }
        println!("  herd{node_flag} query {DEMO_TARGET} cpu.used_pct --since 10m");
        println!("  herd{node_flag} query {DEMO_TARGET} disk.used_pct --label mount=/ --json");
        println!("  herd{node_flag} events");
        println!("  curl -s http://{http_owned}/herd/v1/status     # the same over HTTP (JSON)");
        println!("(from a checkout: cargo run --release --{node_flag} status)\n");
        println!("Ctrl-C stops the demo and its nodes.\n");
        loop {
            tokio::time::sleep(every).await;
            println!("{}", live_line(&running).await);
        }
    };
    let result = tokio::select! {
        r = node => r.map_err(|e| CliError::Failure(format!("{e:#}"))),
        _ = show => Ok(()),
    };
    for mut c in children {
        if let Some(pid) = c.child.id() {
            // SAFETY: kill(2) on our own child, not reaped yet.
            unsafe {
                libc::kill(pid as i32, libc::SIGTERM);
            }
        }
        if tokio::time::timeout(Duration::from_secs(10), c.child.wait())
            .await
            .is_err()
        {
            let _ = c.child.kill().await;
        }
    }
    result
}

/// One line of live vitals read back from the store, as a user would query them.
async fn live_line(running: &Running) -> String {
    let store = running.store.clone();
    let latest = move |metric: &'static str, labels: Labels| {
        let to = now_ms();
        store
            .query(DEMO_TARGET, metric, &labels, to - 60_000, to)
            .ok()
            .and_then(|s| s.into_iter().next())
            .and_then(|s| s.points.last().map(|p| p.1))
    };
    let root: Labels = [("mount".to_string(), "/".to_string())].into();
    let line = tokio::task::spawn_blocking(move || {
        let show = |v: Option<f64>, unit: &str| match v {
            Some(v) => format!("{v:.1}{unit}"),
            None => "…".into(),
        };
        format!(
            "{DEMO_TARGET}: {}  cpu {}  mem {}  load {}  disk / {}  uptime {}",
            match latest("target.up", Labels::new()) {
                Some(1.0) => "up",
                Some(_) => "DOWN",
                None => "…",
            },
            show(latest("cpu.used_pct", Labels::new()), "%"),
            show(latest("mem.used_pct", Labels::new()), "%"),
            show(latest("load.1", Labels::new()), ""),
            show(latest("disk.used_pct", root), "%"),
            latest("uptime_s", Labels::new())
                .map(|s| humantime::format_duration(Duration::from_secs(s as u64)).to_string())
                .unwrap_or_else(|| "…".into()),
        )
    })
    .await;
    line.unwrap_or_else(|e| format!("cannot read the store: {e}"))
}
