//! `herd demo`: a node on embedded defaults that watches this machine, printing what
//! it does and how to look at it. (The herd work turns it into three nodes.)
use std::path::Path;
use std::time::Duration;

use super::CliError;
use crate::config::{parse_duration, NodeConfig};
use crate::daemon::Running;
use crate::model::{now_ms, Labels};

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

pub async fn run(data_dir: &Path, grpc: &str, interval: &str) -> Result<(), CliError> {
    let every =
        parse_duration(interval).map_err(|e| CliError::Usage(format!("--interval: {e}")))?;
    let mut cfg = NodeConfig::default();
    cfg.node.data_dir = data_dir.to_path_buf();
    cfg.node.grpc = grpc.to_string();
    let problems = cfg.validate();
    if let Some((key, message)) = problems.first() {
        return Err(CliError::Usage(format!("{key}: {message}")));
    }
    let listener = tokio::net::TcpListener::bind(grpc).await.map_err(|e| {
        CliError::Failure(format!(
            "cannot listen on {grpc}: {e} (is another herd running? try --grpc 127.0.0.1:7411)"
        ))
    })?;
    let fleet_text = demo_fleet(interval);
    let grpc_owned = grpc.to_string();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Running>();
    let initial = Some((fleet_text.clone(), "demo fleet".to_string()));
    let node =
        crate::daemon::run_node(cfg, listener, initial, crate::daemon::signals(), move |r| {
            let _ = ready_tx.send(r);
        });
    let show = async move {
        let Ok(running) = ready_rx.await else {
            return std::future::pending().await;
        };
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
            "herd demo: node 1 on {grpc_owned}, data in {}",
            running.store.path().display()
        );
        println!("watching this machine as target \"{DEMO_TARGET}\" (local transport) every {interval}\n");
        println!("in another terminal:");
        println!("  herd{node_flag} status");
        println!("  herd{node_flag} query {DEMO_TARGET} cpu.used_pct --since 10m");
        println!("  herd{node_flag} query {DEMO_TARGET} disk.used_pct --label mount=/ --json");
        println!("  herd{node_flag} events");
        println!("(from a checkout: cargo run --release --{node_flag} status)\n");
        println!("Ctrl-C stops it.\n");
        loop {
            tokio::time::sleep(every).await;
            println!("{}", live_line(&running).await);
        }
    };
    tokio::select! {
        r = node => r.map_err(|e| CliError::Failure(format!("{e:#}"))),
        _ = show => Ok(()),
    }
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
