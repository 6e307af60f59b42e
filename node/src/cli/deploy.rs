//! `herd deploy INVENTORY`: lays the herd down on the monitoring servers an
//! inventory names, over SSH (the same russh transport and known_hosts rules as
//! scraping: strict host key checking), and converges it on a re-run.
//!
//! For each server, concurrently: log in; read what is there (SHA-256 of the
//! binary and of each file, whether the node runs); copy this `herd` binary when
//! its checksum differs (to a temporary name, then renamed); write the node's
//! `herd.toml`, the herd secret and the API token (0600) where they differ; start
//! the node under a small supervisor (`--service none`: a shell loop that restarts
//! `herd node` one second after it ends, until `PREFIX/run/stop` exists) when it
//! does not run. Every node gets the same `[cluster] peers` (all the servers) and
//! `bootstrap_expect` (their number), so the herd forms by itself (declarative
//! membership), each node watching its own machine as the inventory says.
//!
//! Running nodes whose binary or config changed are restarted afterwards one at a
//! time, the leader last, each only once the herd reports every member alive, a
//! leader and every lease valid — and the run stops, touching nothing more, when a
//! node does not come back healthy. A second run with the same inventory changes
//! nothing and says so. The herd secret and API token are made once and kept beside
//! the inventory (`NAME.secret`, `NAME.token`, 0600).
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herd_proto::v1 as pb;
use serde::Deserialize;

use super::CliError;
use crate::model::digest::sha256_hex;
use crate::transport::{SshAuth, SshSettings, SshTarget, SshTransport};

/// Longest a remote command may take (a copy of the binary over a slow link).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest wait for the herd to form, or a restarted node to come back healthy.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(90);
const MAX_OUTPUT: usize = 1 << 20;

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// SSH login.
    user: Option<String>,
    ssh_port: Option<u16>,
    /// Private key file (relative to the inventory).
    key: Option<PathBuf>,
    /// known_hosts file (relative to the inventory); host keys are checked strictly.
    known_hosts: Option<PathBuf>,
    /// Install directory on the server: bin/, etc/, data/, run/.
    prefix: Option<String>,
    /// Port the node listens on (gRPC), on the server's address.
    grpc_port: Option<u16>,
    /// `[cluster] machine`: how the node watches its own machine.
    machine: Option<String>,
    /// `--service`: "none" (a supervised process) only, for now.
    service: Option<String>,
    /// TOML appended to each node's herd.toml as is: its `[ssh]` section (the key
    /// and known_hosts it scrapes targets with), `[store]`, `[log]`, ...
    node_toml: Option<String>,
}

/// A server's node id as the inventory writes it: a number, or "next".
#[derive(Debug, Default, Deserialize)]
#[serde(untagged)]
enum IdSpec {
    Id(u64),
    Word(String),
    #[default]
    Next,
}

impl IdSpec {
    fn fixed(&self) -> Option<u64> {
        match self {
            IdSpec::Id(id) => Some(*id),
            _ => None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerSpec {
    /// The server's SSH host (name or address).
    address: String,
    /// Node id, or "next" (the default): the next free one.
    #[serde(default)]
    id: IdSpec,
    /// Where the node listens and the others reach it; default address:grpc_port.
    grpc: Option<String>,
    /// The node's HTTP face (`node.http`); default 127.0.0.1:7481.
    http: Option<String>,
    #[serde(flatten)]
    settings: Settings,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Inventory {
    #[serde(default)]
    defaults: Settings,
    /// A fleet spec (relative to the inventory) given to every node with `--fleet`
    /// (applied once, when the herd has none).
    fleet: Option<PathBuf>,
    #[serde(default)]
    server: Vec<ServerSpec>,
}

/// One server, everything resolved.
#[derive(Debug, Clone)]
struct Server {
    id: u64,
    address: String,
    ssh: SshTarget,
    known_hosts: PathBuf,
    grpc: String,
    http: Option<String>,
    prefix: String,
    machine: String,
    node_toml: String,
}

impl Server {
    fn name(&self) -> String {
        format!("node {} ({})", self.id, self.address)
    }
}

/// What deploy writes on a server: path (relative to the prefix), content, its
/// SHA-256 (hex), mode.
struct FileSet {
    files: Vec<(String, Arc<[u8]>, String, &'static str)>,
}

impl FileSet {
    fn new(files: Vec<(String, Arc<[u8]>, &'static str)>, binary_sum: &str) -> FileSet {
        FileSet {
            files: files
                .into_iter()
                .map(|(rel, content, mode)| {
                    let sum = if rel == "bin/herd" {
                        binary_sum.to_string()
                    } else {
                        sha256_hex(&content)
                    };
                    (rel, content, sum, mode)
                })
                .collect(),
        }
    }
}

fn usage(path: &Path, message: impl std::fmt::Display) -> CliError {
    CliError::Usage(format!("{}: {message}", path.display()))
}

/// A single-quoted shell word.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// Reads and checks the inventory; every error names the file and what is wrong.
fn load(path: &Path) -> Result<(Vec<Server>, Option<PathBuf>), CliError> {
    let text = std::fs::read_to_string(path).map_err(|e| usage(path, e))?;
    let inv: Inventory = toml::from_str(&text).map_err(|e| usage(path, e))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let rel = |p: &PathBuf| {
        if p.is_absolute() {
            p.clone()
        } else {
            base.join(p)
        }
    };
    if inv.server.is_empty() {
        return Err(usage(path, "no [[server]]: name the monitoring servers"));
    }
    let taken: BTreeSet<u64> = inv.server.iter().filter_map(|s| s.id.fixed()).collect();
    if taken.len() != inv.server.iter().filter(|s| s.id.fixed().is_some()).count() {
        return Err(usage(path, "two servers have the same id"));
    }
    let mut next = 1u64;
    let mut out = Vec::new();
    for (i, s) in inv.server.iter().enumerate() {
        let at = |m: &str| usage(path, format!("server[{i}] ({}): {m}", s.address));
        let pick = |f: fn(&Settings) -> Option<String>| f(&s.settings).or_else(|| f(&inv.defaults));
        let id = match &s.id {
            IdSpec::Id(0) => return Err(at("id must be 1 or more")),
            IdSpec::Id(id) => *id,
            IdSpec::Word(w) if w != "next" => {
                return Err(at(&format!("id {w:?}: a number, or \"next\"")))
            }
            IdSpec::Word(_) | IdSpec::Next => {
                while taken.contains(&next) || out.iter().any(|o: &Server| o.id == next) {
                    next += 1;
                }
                next
            }
        };
        let service = pick(|x| x.service.clone()).unwrap_or_else(|| "none".into());
        if service != "none" {
            return Err(at(&format!(
                "service {service:?}: only \"none\" (a supervised process) is built; \
                 for systemd install deploy/herd.service yourself"
            )));
        }
        let key = s
            .settings
            .key
            .clone()
            .or_else(|| inv.defaults.key.clone())
            .ok_or_else(|| at("no key: set key (the SSH private key deploy logs in with)"))?;
        let known_hosts = s
            .settings
            .known_hosts
            .clone()
            .or_else(|| inv.defaults.known_hosts.clone())
            .ok_or_else(|| at("no known_hosts: host keys are checked strictly"))?;
        let (key, known_hosts) = (rel(&key), rel(&known_hosts));
        for f in [&key, &known_hosts] {
            if !f.is_file() {
                return Err(at(&format!("{}: no such file", f.display())));
            }
        }
        let grpc_port = s
            .settings
            .grpc_port
            .or(inv.defaults.grpc_port)
            .unwrap_or(7401);
        let grpc = s.grpc.clone().unwrap_or_else(|| {
            if s.address.contains(':') {
                format!("[{}]:{grpc_port}", s.address)
            } else {
                format!("{}:{grpc_port}", s.address)
            }
        });
        let prefix = pick(|x| x.prefix.clone()).unwrap_or_else(|| "/opt/herd".into());
        if !prefix.starts_with('/') || prefix.contains('\'') {
            return Err(at(&format!("prefix {prefix:?} must be an absolute path")));
        }
        out.push(Server {
            id,
            address: s.address.clone(),
            ssh: SshTarget {
                host: s.address.clone(),
                port: s.settings.ssh_port.or(inv.defaults.ssh_port).unwrap_or(22),
                user: pick(|x| x.user.clone()).unwrap_or_else(|| "root".into()),
                auth: SshAuth::KeyFile(key),
            },
            known_hosts,
            grpc,
            http: s.http.clone(),
            prefix,
            machine: pick(|x| x.machine.clone()).unwrap_or_else(|| "local".into()),
            node_toml: pick(|x| x.node_toml.clone()).unwrap_or_default(),
        });
    }
    let grpcs: BTreeSet<&str> = out.iter().map(|s| s.grpc.as_str()).collect();
    if grpcs.len() != out.len() {
        return Err(usage(path, "two servers have the same grpc address"));
    }
    let fleet = inv.fleet.as_ref().map(rel);
    if let Some(f) = &fleet {
        if !f.is_file() {
            return Err(usage(path, format!("fleet: {}: no such file", f.display())));
        }
    }
    Ok((out, fleet))
}

/// The herd's secret and API token kept beside the inventory, made on first use.
fn credential(inventory: &Path, ext: &str, dry_run: bool) -> Result<String, CliError> {
    let path = inventory.with_extension(ext);
    if let Ok(text) = std::fs::read_to_string(&path) {
        let t = text.trim().to_string();
        if t.len() < 16 {
            return Err(usage(&path, "too short (at least 16 characters)"));
        }
        return Ok(t);
    }
    let value = crate::cluster::credential::random_hex(32);
    if !dry_run {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| CliError::Failure(format!("{}: {e}", path.display())))?;
        writeln!(f, "{value}")
            .map_err(|e| CliError::Failure(format!("{}: {e}", path.display())))?;
        eprintln!(
            "deploy: made {} (keep it: every node of the herd needs it)",
            path.display()
        );
    }
    Ok(value)
}

fn node_toml(s: &Server, all: &[Server], inventory: &Path) -> String {
    let peers: Vec<String> = all.iter().map(|o| toml_str(&o.grpc)).collect();
    let p = &s.prefix;
    format!(
        "# Written by `herd deploy {inv}`: change the inventory and run deploy again.\n\
         [node]\nid = {id}\ngrpc = {grpc}\n{http}data_dir = {data}\napi_token_file = {token}\n\n\
         [cluster]\nsecret_file = {secret}\npeers = [{peers}]\nbootstrap_expect = {n}\nmachine = {machine}\n\n{extra}",
        inv = inventory.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        id = s.id,
        grpc = toml_str(&s.grpc),
        http = s
            .http
            .as_ref()
            .map(|h| format!("http = {}\n", toml_str(h)))
            .unwrap_or_default(),
        data = toml_str(&format!("{p}/data")),
        token = toml_str(&format!("{p}/etc/api-token")),
        secret = toml_str(&format!("{p}/etc/herd-secret")),
        peers = peers.join(", "),
        n = all.len(),
        machine = toml_str(&s.machine),
        extra = s.node_toml,
    )
}

/// The supervisor (`--service none`): restarts `herd node` a second after it ends
/// (a crashing node does not spin), at once when `run/restart` asks for it (a
/// rolling restart: back before the herd gives its targets away), until
/// `run/stop` exists; the pids in `run/`.
fn supervisor(prefix: &str, fleet: bool) -> String {
    let p = sh_quote(prefix);
    let fleet = if fleet {
        format!(" --fleet {p}/etc/fleet.toml")
    } else {
        String::new()
    };
    format!(
        "#!/bin/sh\n# Written by herd deploy: keeps `herd node` running until {prefix}/run/stop exists.\n\
         cd {p} || exit 1\necho $$ > run/supervisor.pid\n\
         while [ ! -e run/stop ]; do\n  \
         {p}/bin/herd node --config {p}/etc/herd.toml{fleet} >> {p}/herd.log 2>&1 &\n  \
         echo $! > run/herd.pid\n  wait $!\n  \
         if [ -e run/restart ]; then rm -f run/restart; else sleep 1; fi\ndone\n"
    )
}

/// What a server has now.
#[derive(Debug, Default)]
struct Probe {
    /// Path (relative to the prefix) → SHA-256.
    sums: BTreeMap<String, String>,
    running: bool,
}

/// What was done on one server.
#[derive(Debug, Default)]
struct Outcome {
    changed: Vec<String>,
    started: bool,
    /// It runs, and what it runs changed: to restart (rolling).
    restart: bool,
}

async fn run_remote(
    t: &SshTransport,
    s: &Server,
    what: &str,
    cmd: &str,
    input: Option<&[u8]>,
) -> Result<String, String> {
    let out = match input {
        Some(data) => {
            t.exec_with_input(cmd, data, COMMAND_TIMEOUT, MAX_OUTPUT)
                .await
        }
        None => t.exec(cmd, COMMAND_TIMEOUT, MAX_OUTPUT).await,
    }
    .map_err(|e| format!("{}: {what}: {e}", s.name()))?;
    if out.exit_status != Some(0) {
        return Err(format!(
            "{}: {what}: exit {:?}: {}",
            s.name(),
            out.exit_status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn step(s: &Server, what: &str, started: Instant) {
    eprintln!(
        "deploy: {:<24} {what} ({:.1}s)",
        s.name(),
        started.elapsed().as_secs_f64()
    );
}

async fn probe(t: &SshTransport, s: &Server, files: &FileSet) -> Result<Probe, String> {
    let p = sh_quote(&s.prefix);
    let mut cmd = format!("cd {p} 2>/dev/null || exit 0; ");
    for (rel, _, _, _) in &files.files {
        cmd.push_str(&format!(
            "[ -f {r} ] && echo \"sum $(sha256sum < {r} | cut -d' ' -f1) {rel}\"; ",
            r = sh_quote(rel)
        ));
    }
    cmd.push_str(
        "if [ -f run/supervisor.pid ] && kill -0 \"$(cat run/supervisor.pid)\" 2>/dev/null; then echo running; fi",
    );
    let out = run_remote(t, s, "reading what is installed", &cmd, None).await?;
    let mut probe = Probe::default();
    for line in out.lines() {
        if line == "running" {
            probe.running = true;
        } else if let Some(rest) = line.strip_prefix("sum ") {
            if let Some((sum, rel)) = rest.split_once(' ') {
                probe.sums.insert(rel.to_string(), sum.to_string());
            }
        }
    }
    Ok(probe)
}

async fn converge(
    s: &Server,
    settings: Arc<SshSettings>,
    files: &FileSet,
    dry_run: bool,
) -> Result<Outcome, String> {
    let started = Instant::now();
    let t = SshTransport::new(s.ssh.clone(), settings);
    let result = async {
        let have = probe(&t, s, files).await?;
        step(s, "logged in, read what is installed", started);
        let mut outcome = Outcome::default();
        let p = sh_quote(&s.prefix);
        if !dry_run {
            run_remote(
                &t,
                s,
                "making the directories",
                &format!("mkdir -p {p}/bin {p}/etc {p}/data {p}/run && chmod 700 {p}/etc {p}/data"),
                None,
            )
            .await?;
        }
        for (rel, content, sum, mode) in &files.files {
            if have.sums.get(rel) == Some(sum) {
                continue;
            }
            outcome.changed.push(rel.clone());
            if dry_run {
                step(s, &format!("would write {rel}"), started);
                continue;
            }
            let path = format!("{}/{rel}", s.prefix);
            let tmp = sh_quote(&format!("{path}.deploy-new"));
            let cmd = format!(
                "umask 077 && cat > {tmp} && chmod {mode} {tmp} && mv -f {tmp} {}",
                sh_quote(&path)
            );
            run_remote(&t, s, &format!("writing {rel}"), &cmd, Some(content)).await?;
            step(s, &format!("wrote {rel} ({} bytes)", content.len()), started);
        }
        if have.running {
            outcome.restart = !outcome.changed.is_empty();
        } else if dry_run {
            step(s, "would start the node", started);
            outcome.started = true;
        } else {
            let cmd = format!(
                "rm -f {p}/run/stop && cd {p} && setsid nohup {p}/bin/herd-supervise </dev/null >/dev/null 2>&1 &"
            );
            run_remote(&t, s, "starting the node", &cmd, None).await?;
            step(s, "started the node (supervised)", started);
            outcome.started = true;
        }
        Ok(outcome)
    }
    .await;
    t.disconnect().await;
    result
}

/// How deploy logs in to a server: strict host keys, exec channels.
fn ssh_settings(s: &Server) -> Arc<SshSettings> {
    Arc::new(SshSettings {
        known_hosts: s.known_hosts.clone(),
        host_key_checking: crate::config::HostKeyChecking::Strict,
        connect_timeout: Duration::from_secs(10),
        keepalive_interval: Duration::from_secs(15),
        keepalive_max: 3,
        max_channels: 4,
        shell: false,
    })
}

/// Problems that keep the herd from being healthy, as node `from` answers.
fn unhealthy(status: &pb::StatusReply, servers: &[Server]) -> Vec<String> {
    let mut why = Vec::new();
    let ids: BTreeSet<u64> = status.nodes.iter().map(|n| n.id).collect();
    for s in servers {
        match status.nodes.iter().find(|n| n.id == s.id) {
            None => why.push(format!("node {} is not a member yet", s.id)),
            Some(n) if !n.alive => why.push(format!("node {} is not alive", s.id)),
            Some(n) if n.lease == Some(false) => why.push(format!("node {} has no lease", s.id)),
            _ => {}
        }
    }
    if status.leader.is_none() {
        why.push("no leader".into());
    }
    if ids.len() < servers.len() {
        why.push(format!("{} of {} members", ids.len(), servers.len()));
    }
    why
}

async fn status_of(addr: &str, token: &str) -> Result<pb::StatusReply, String> {
    let mut client = super::commands::client_for(addr, Some(token.to_string()))
        .await
        .map_err(|e| e.message().to_string())?;
    client
        .status(pb::StatusRequest { local_only: false })
        .await
        .map(|r| r.into_inner())
        .map_err(|s| s.message().to_string())
}

/// Waits until some server answers that the herd is healthy; returns the leader.
async fn wait_healthy(servers: &[Server], token: &str, what: &str) -> Result<u64, CliError> {
    let started = Instant::now();
    let mut last = String::new();
    loop {
        for s in servers {
            match status_of(&s.grpc, token).await {
                Ok(st) => {
                    let why = unhealthy(&st, servers);
                    if why.is_empty() {
                        return Ok(st.leader.unwrap_or_default());
                    }
                    last = format!("node {} says: {}", s.id, why.join("; "));
                }
                Err(e) => last = format!("node {}: {e}", s.id),
            }
        }
        if started.elapsed() > HEALTH_TIMEOUT {
            return Err(CliError::Failure(format!(
                "deploy: {what}: the herd is not healthy after {}s: {last}",
                HEALTH_TIMEOUT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub async fn deploy(
    inventory: &Path,
    binary: Option<&Path>,
    dry_run: bool,
) -> Result<(), CliError> {
    let (servers, fleet) = load(inventory)?;
    let secret = credential(inventory, "secret", dry_run)?;
    let token = credential(inventory, "token", dry_run)?;
    let binary: Arc<[u8]> = match binary {
        Some(b) => std::fs::read(b).map_err(|e| usage(b, e))?,
        None => std::env::current_exe()
            .and_then(std::fs::read)
            .map_err(|e| CliError::Failure(format!("reading this herd binary: {e}")))?,
    }
    .into();
    let binary_sum = sha256_hex(&binary);
    // A fleet spec the nodes would refuse is refused here, as `herd check` would,
    // before any server is touched.
    let fleet_text = match &fleet {
        Some(f) => {
            let (text, source) = super::commands::read_fleet(f)?;
            super::commands::parse_or_usage(&text, &source)?;
            Some(text.into_bytes())
        }
        None => None,
    };
    eprintln!(
        "deploy: {} server(s) from {}{}",
        servers.len(),
        inventory.display(),
        if dry_run {
            " (dry run: nothing is changed)"
        } else {
            ""
        }
    );
    let started = Instant::now();
    let mut tasks = Vec::new();
    for s in &servers {
        let mut files = vec![
            ("bin/herd".to_string(), binary.clone(), "755"),
            (
                "bin/herd-supervise".to_string(),
                supervisor(&s.prefix, fleet_text.is_some())
                    .into_bytes()
                    .into(),
                "755",
            ),
            (
                "etc/herd.toml".to_string(),
                node_toml(s, &servers, inventory).into_bytes().into(),
                "600",
            ),
            (
                "etc/herd-secret".to_string(),
                format!("{secret}\n").into_bytes().into(),
                "600",
            ),
            (
                "etc/api-token".to_string(),
                format!("{token}\n").into_bytes().into(),
                "600",
            ),
        ];
        if let Some(f) = &fleet_text {
            files.push(("etc/fleet.toml".to_string(), f.clone().into(), "600"));
        }
        let settings = ssh_settings(s);
        let s = s.clone();
        let binary_sum = binary_sum.clone();
        tasks.push(tokio::spawn(async move {
            let files = FileSet::new(files, &binary_sum);
            let r = converge(&s, settings, &files, dry_run).await;
            (s, r)
        }));
    }
    let mut failed = Vec::new();
    let mut restart = Vec::new();
    let mut changed_any = false;
    for t in tasks {
        let (s, r) = t
            .await
            .map_err(|e| CliError::Failure(format!("deploy task: {e}")))?;
        match r {
            Ok(o) => {
                let what = match (o.changed.is_empty(), o.started, o.restart) {
                    (true, false, _) => "ok, unchanged".to_string(),
                    (_, true, _) if dry_run => {
                        format!("would start, writing {}", o.changed.join(", "))
                    }
                    (_, true, _) => format!("ok, started (wrote {})", o.changed.join(", ")),
                    (false, false, true) => {
                        format!("ok, wrote {}; restart pending", o.changed.join(", "))
                    }
                    (false, false, false) => format!("ok, wrote {}", o.changed.join(", ")),
                };
                changed_any |= !o.changed.is_empty() || o.started;
                eprintln!("deploy: {:<24} {what}", s.name());
                if o.restart {
                    restart.push(s);
                }
            }
            Err(e) => {
                eprintln!("deploy: {:<24} FAILED: {e}", s.name());
                failed.push(e);
            }
        }
    }
    if dry_run {
        println!(
            "dry run: {}",
            if changed_any || !restart.is_empty() {
                "the plan is above"
            } else {
                "nothing would change"
            }
        );
        return Ok(());
    }
    if !failed.is_empty() {
        return Err(CliError::Failure(format!(
            "deploy: {} of {} server(s) failed (the others are done): {}",
            failed.len(),
            servers.len(),
            failed.join(" | ")
        )));
    }
    let leader = wait_healthy(&servers, &token, "forming").await?;
    if !restart.is_empty() {
        // One at a time, the leader last, each once the herd is healthy again.
        restart.sort_by_key(|s| s.id == leader);
        for s in &restart {
            wait_healthy(&servers, &token, &format!("before restarting {}", s.name())).await?;
            let t = SshTransport::new(s.ssh.clone(), ssh_settings(s));
            let p = sh_quote(&s.prefix);
            let r = run_remote(
                &t,
                s,
                "restarting the node",
                &format!(": > {p}/run/restart && kill -TERM \"$(cat {p}/run/herd.pid)\""),
                None,
            )
            .await;
            t.disconnect().await;
            r.map_err(CliError::Failure)?;
            step(s, "restarted (its supervisor starts the new one)", started);
            tokio::time::sleep(Duration::from_secs(2)).await;
            wait_healthy(&servers, &token, &format!("after restarting {}", s.name()))
                .await
                .map_err(|e| {
                    CliError::Failure(format!(
                        "{} (stopped here: the nodes after it were not restarted)",
                        e.message()
                    ))
                })?;
        }
    }
    println!(
        "herd of {} deployed{}; leader node {leader}; {:.1}s",
        servers.len(),
        if changed_any || !restart.is_empty() {
            ""
        } else {
            ": nothing changed"
        },
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An inventory in a temp dir with the key and known_hosts files it names.
    fn inventory(servers: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("k"), "key").unwrap();
        std::fs::write(dir.path().join("kh"), "").unwrap();
        let path = dir.path().join("inv.toml");
        std::fs::write(
            &path,
            format!("[defaults]\nkey = \"k\"\nknown_hosts = \"kh\"\n{servers}"),
        )
        .unwrap();
        (dir, path)
    }

    fn message(r: Result<(Vec<Server>, Option<PathBuf>), CliError>) -> String {
        match r {
            Err(CliError::Usage(m)) => m,
            Err(e) => panic!("not a usage error: {}", e.message()),
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn ids_are_given_in_order_around_the_fixed_ones() {
        let (_d, p) = inventory(
            "[[server]]\naddress = \"a\"\n[[server]]\naddress = \"b\"\nid = 2\n\
             [[server]]\naddress = \"c\"\nid = \"next\"\n[[server]]\naddress = \"d\"\ngrpc = \"10.0.0.4:7501\"\n",
        );
        let (servers, _) = load(&p).unwrap();
        let got: Vec<(u64, &str, &str)> = servers
            .iter()
            .map(|s| (s.id, s.address.as_str(), s.grpc.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, "a", "a:7401"),
                (2, "b", "b:7401"),
                (3, "c", "c:7401"),
                (4, "d", "10.0.0.4:7501")
            ]
        );
        assert_eq!(servers[0].prefix, "/opt/herd");
        assert_eq!(servers[0].ssh.user, "root");
    }

    #[test]
    fn bad_inventories_say_what_and_where() {
        let cases = [
            ("", "no [[server]]"),
            ("[[server]]\naddress = \"a\"\nid = 1\n[[server]]\naddress = \"b\"\nid = 1\n", "same id"),
            ("[[server]]\naddress = \"a\"\nid = \"first\"\n", "server[0] (a): id \"first\""),
            ("[[server]]\naddress = \"a\"\nprefix = \"opt\"\n", "must be an absolute path"),
            ("[[server]]\naddress = \"a\"\nservice = \"systemd\"\n", "only \"none\""),
            ("[[server]]\naddress = \"a\"\nkye = \"x\"\n", "unknown field"),
            (
                "[[server]]\naddress = \"a\"\ngrpc = \"h:1\"\n[[server]]\naddress = \"b\"\ngrpc = \"h:1\"\n",
                "same grpc address",
            ),
            ("[[server]]\naddress = \"a\"\nkey = \"missing\"\n", "missing: no such file"),
        ];
        for (servers, want) in cases {
            let (_d, p) = inventory(servers);
            let m = message(load(&p));
            assert!(
                m.contains("inv.toml") && m.contains(want),
                "{servers:?}: {m}"
            );
        }
    }

    #[test]
    fn the_node_config_names_every_peer_and_the_herd_size() {
        let (_d, p) = inventory(
            "[[server]]\naddress = \"a\"\nhttp = \"127.0.0.1:9\"\nnode_toml = \"[log]\\nlevel = \\\"debug\\\"\\n\"\n\
             [[server]]\naddress = \"b\"\n",
        );
        let (servers, _) = load(&p).unwrap();
        let text = node_toml(&servers[0], &servers, &p);
        let cfg: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(cfg["node"]["id"].as_integer(), Some(1));
        assert_eq!(cfg["node"]["http"].as_str(), Some("127.0.0.1:9"));
        assert_eq!(cfg["node"]["data_dir"].as_str(), Some("/opt/herd/data"));
        assert_eq!(cfg["cluster"]["bootstrap_expect"].as_integer(), Some(2));
        let peers: Vec<&str> = cfg["cluster"]["peers"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert_eq!(peers, vec!["a:7401", "b:7401"]);
        assert_eq!(cfg["log"]["level"].as_str(), Some("debug"));
        assert_eq!(
            cfg["cluster"]["secret_file"].as_str(),
            Some("/opt/herd/etc/herd-secret")
        );
    }
}
