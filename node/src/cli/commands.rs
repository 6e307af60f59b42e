//! What each subcommand does.
use std::path::Path;
use std::time::Duration;

use herd_proto::v1 as pb;
use herd_proto::v1::herd_client::HerdClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::api::auth::{read_token, SendToken};

use super::{output, Cli, CliError, Command};
use crate::config::{parse_duration, parse_fleet, NodeConfig};
use crate::model::now_ms;

/// How long the CLI waits to reach a node.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the CLI waits for one answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) type Client = HerdClient<InterceptedService<Channel, SendToken>>;

/// Where the CLI finds its node and credentials.
struct Target {
    node: String,
    token: Option<String>,
    tls: Option<tonic::transport::ClientTlsConfig>,
}

pub async fn run(cli: Cli, node_cfg: Option<NodeConfig>) -> Result<(), CliError> {
    let token = match (&cli.token_file, std::env::var("HERD_TOKEN")) {
        (Some(path), _) => Some(read_token(path).map_err(|e| CliError::Usage(e.to_string()))?),
        (None, Ok(t)) if !t.trim().is_empty() => Some(t.trim().to_string()),
        _ => None,
    };
    let tls = crate::tls::client_tls(cli.ca.as_deref(), cli.cert.as_deref(), cli.key.as_deref())
        .map_err(|e| CliError::Usage(e.to_string()))?;
    let node = &Target {
        node: cli.node.clone(),
        token,
        tls,
    };
    match cli.command {
        Command::Node { fleet, .. } => {
            let cfg = node_cfg.ok_or_else(|| CliError::Usage("no node config".into()))?;
            run_node(cfg, fleet.as_deref()).await
        }
        Command::Demo {
            data_dir,
            grpc,
            http,
            interval,
        } => super::demo::run(&data_dir, &grpc, &http, &interval).await,
        Command::Check { file } => check(&file),
        Command::Compact {
            data_dir: Some(dir),
        } => compact(&dir),
        Command::Compact { data_dir: None } => compact_live(node).await,
        Command::Restore { file, data_dir } => super::backup::restore(&file, &data_dir),
        Command::Deploy {
            inventory,
            binary,
            dry_run,
        } => super::deploy::deploy(&inventory, binary.as_deref(), dry_run).await,
        Command::Backup { out } => {
            // A long stream: no per-call deadline.
            let mut client = connect(node, None).await?;
            super::backup::backup(&mut client, &out).await
        }
        Command::Cluster { action } => cluster(node, action).await,
        Command::Certs(args) => match super::certs::run(&args) {
            Ok(summary) => {
                print!("{summary}");
                Ok(())
            }
            Err(e @ super::certs::CertsError::Usage(_)) => Err(CliError::Usage(e.to_string())),
            Err(e) => Err(CliError::Failure(e.to_string())),
        },
        Command::Apply { file } => apply(node, &file).await,
        Command::Status { json } => status(node, json).await,
        Command::Query {
            target,
            metric,
            since,
            labels,
            rollup,
            json,
        } => {
            let q = QueryArgs {
                target: &target,
                metric: &metric,
                since: &since,
                labels: &labels,
                rollup: rollup.as_deref(),
            };
            query(node, q, json).await
        }
        Command::Export {
            targets,
            metrics,
            since,
            until,
            format,
            out,
        } => {
            let args = super::export::ExportArgs {
                targets: &targets,
                metrics: &metrics,
                from_ms: since_ms(&since)?,
                to_ms: until_ms(&until)?,
                format,
            };
            let mut client = connect(node, None).await?;
            match out {
                Some(path) => {
                    let file = std::fs::File::create(&path).map_err(|e| {
                        CliError::Failure(format!("cannot write {}: {e}", path.display()))
                    })?;
                    let mut w = std::io::BufWriter::new(file);
                    super::export::export(&mut client, args, &mut w).await
                }
                None => {
                    let stdout = std::io::stdout();
                    let mut w = std::io::BufWriter::new(stdout.lock());
                    super::export::export(&mut client, args, &mut w).await
                }
            }
        }
        Command::Import {
            file,
            target,
            partial,
            format,
        } => {
            let mut client = connect(node, None).await?;
            let args = super::import::ImportArgs {
                path: &file,
                target: target.as_deref(),
                partial,
                format,
            };
            super::import::import(&mut client, args).await
        }
        Command::State { target, path } => state(node, &target, path.as_deref()).await,
        Command::Alerts { history, json } => alerts(node, history.as_deref(), json).await,
        Command::Ack { alert, by } => ack(node, &alert, by).await,
        Command::Silence { action } => silence(node, action).await,
        Command::Pause {
            target,
            duration,
            reason,
            by,
        } => pause(node, &target, duration.as_deref(), reason, by).await,
        Command::Resume { target } => {
            client(node)
                .await?
                .resume(pb::ResumeRequest {
                    target: target.clone(),
                })
                .await
                .map_err(|s| call_error(node, s))?;
            println!("{target} resumed");
            Ok(())
        }
        Command::Events {
            target,
            since,
            limit,
            json,
        } => events(node, target.as_deref(), &since, limit, json).await,
        Command::Watch {
            target,
            kinds,
            local,
            count,
            json,
        } => {
            let req = pb::WatchRequest {
                local_only: local,
                target: target.unwrap_or_default(),
                kinds,
            };
            watch(node, req, count, json).await
        }
    }
}

async fn run_node(cfg: NodeConfig, fleet: Option<&Path>) -> Result<(), CliError> {
    // A bad --fleet is refused before anything starts, as `herd check` would.
    let initial = match fleet {
        Some(path) => {
            let (text, source) = read_fleet(path)?;
            parse_or_usage(&text, &source)?;
            Some((text, source))
        }
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(&cfg.node.grpc)
        .await
        .map_err(|e| CliError::Failure(format!("cannot listen on {}: {e}", cfg.node.grpc)))?;
    let node = crate::node::Node::build(cfg, listener)
        .await
        .map_err(|e| CliError::Failure(format!("{e:#}")))?;
    node.run(initial, crate::node::signals(), |_| {})
        .await
        .map_err(|e| CliError::Failure(format!("{e:#}")))
}

pub(super) fn read_fleet(path: &Path) -> Result<(String, String), CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Usage(format!("{}: cannot read: {e}", path.display())))?;
    Ok((text, path.display().to_string()))
}

fn check(path: &Path) -> Result<(), CliError> {
    let (text, source) = read_fleet(path)?;
    let spec = parse_or_usage(&text, &source)?;
    println!(
        "{source}: ok, {} target{}",
        spec.targets.len(),
        if spec.targets.len() == 1 { "" } else { "s" }
    );
    Ok(())
}

/// `herd compact`: the running node's store compacted while it runs.
async fn compact_live(node: &Target) -> Result<(), CliError> {
    // A large file takes a while: no per-call deadline.
    let mut client = connect(node, None).await?;
    eprintln!(
        "compacting the store and the Raft file of the node at {} ...",
        node.node
    );
    let c = client
        .compact(pb::CompactRequest {})
        .await
        .map_err(|s| call_error(node, s))?
        .into_inner();
    println!(
        "store: {:.1} MB -> {:.1} MB in {:.1} s (scrapes queued and reads waited meanwhile)",
        c.before_bytes as f64 / 1e6,
        c.after_bytes as f64 / 1e6,
        c.took_ms as f64 / 1000.0
    );
    if c.raft_compacted {
        println!(
            "raft: {:.1} MB -> {:.1} MB in {:.1} s (the herd's log and state waited meanwhile)",
            c.raft_before_bytes as f64 / 1e6,
            c.raft_after_bytes as f64 / 1e6,
            c.raft_took_ms as f64 / 1000.0
        );
    } else if !c.raft_note.is_empty() {
        println!("raft: not compacted: {}", c.raft_note);
    }
    Ok(())
}

/// `herd compact DATA_DIR`: each redb file of a stopped node compacted in place.
fn compact(dir: &Path) -> Result<(), CliError> {
    if !dir.is_dir() {
        return Err(CliError::Usage(format!(
            "{}: not a directory (give a node's data_dir)",
            dir.display()
        )));
    }
    let mut done = 0;
    for name in [crate::store::FILE_NAME, crate::cluster::store::FILE_NAME] {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let (before, after) = crate::store::compact_file(&path)
            .map_err(|e| CliError::Failure(format!("{}: {e}", path.display())))?;
        println!(
            "{}: {:.1} MB -> {:.1} MB",
            path.display(),
            before as f64 / 1e6,
            after as f64 / 1e6
        );
        done += 1;
    }
    if done == 0 {
        return Err(CliError::Usage(format!(
            "{}: no {} or {} here (give a node's data_dir)",
            dir.display(),
            crate::store::FILE_NAME,
            crate::cluster::store::FILE_NAME
        )));
    }
    Ok(())
}

/// The fleet spec in `text`, or every error in it by line (exit 2).
pub(super) fn parse_or_usage(
    text: &str,
    source: &str,
) -> Result<crate::config::FleetSpec, CliError> {
    parse_fleet(text, source).map_err(|errors| {
        let n = errors.0.len();
        CliError::Usage(format!(
            "{errors}\n{n} error{} in {source}",
            if n == 1 { "" } else { "s" }
        ))
    })
}

async fn client(target: &Target) -> Result<Client, CliError> {
    connect(target, Some(CALL_TIMEOUT)).await
}

/// A client of the node; `call_timeout`: the bound on each call (none for a
/// stream that lasts until the user stops it).
/// A client of the node at `addr` (plain gRPC) with `token`, calls bounded as
/// the CLI's are.
pub(super) async fn client_for(addr: &str, token: Option<String>) -> Result<Client, CliError> {
    let target = Target {
        node: addr.to_string(),
        token,
        tls: None,
    };
    connect(&target, Some(CALL_TIMEOUT)).await
}

async fn connect(target: &Target, call_timeout: Option<Duration>) -> Result<Client, CliError> {
    let node = target.node.as_str();
    let scheme = if target.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let url = if node.contains("://") {
        node.to_string()
    } else {
        format!("{scheme}://{node}")
    };
    let mut endpoint = Channel::from_shared(url)
        .map_err(|e| CliError::Usage(format!("--node {node:?} is not an address: {e}")))?
        .connect_timeout(CONNECT_TIMEOUT);
    if let Some(t) = call_timeout {
        endpoint = endpoint.timeout(t);
    }
    if let Some(tls) = &target.tls {
        endpoint = endpoint
            .tls_config(tls.clone())
            .map_err(|e| CliError::Usage(format!("TLS settings: {e}")))?;
    }
    let channel = endpoint.connect().await.map_err(|e| {
        let cause = error_chain(&e);
        let hint = if cause.contains("certificate") || cause.contains("Certificate") {
            "the node's TLS certificate is not trusted: is --ca the CA of this herd (`herd certs`)?"
        } else if target.tls.is_some() {
            "is the node running, and does it speak TLS ([tls] in its herd.toml)?"
        } else {
            "is `herd node` or `herd demo` running? set --node or HERD_NODE"
        };
        CliError::Failure(format!(
            "cannot reach a herd node at {node}: {cause} ({hint})"
        ))
    })?;
    let auth =
        SendToken::new(target.token.as_deref()).map_err(|e| CliError::Usage(e.to_string()))?;
    Ok(HerdClient::with_interceptor(channel, auth))
}

/// An error and its causes, "outer: inner: innermost" (tonic's own text is often
/// just "transport error").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = c.source();
    }
    out
}

fn call_error(target: &Target, s: tonic::Status) -> CliError {
    let node = &target.node;
    // A plain HTTP/2 client talking to a TLS port sees the connection fail after
    // it was made (a protocol error, a reset, a cancelled call).
    if target.tls.is_none()
        && matches!(
            s.code(),
            tonic::Code::Unavailable
                | tonic::Code::Internal
                | tonic::Code::Unknown
                | tonic::Code::Cancelled
        )
        && [
            "h2 protocol error",
            "http2 error",
            "operation was canceled",
            "connection reset",
            "transport error",
        ]
        .iter()
        .any(|m| s.message().contains(m))
    {
        return CliError::Failure(format!(
            "node {node}: {} (the node may speak TLS: pass its herd's CA with --ca, env HERD_CA)",
            s.message()
        ));
    }
    match s.code() {
        tonic::Code::Unauthenticated => CliError::Usage(format!("node {node}: {}", s.message())),
        tonic::Code::InvalidArgument => CliError::Usage(s.message().to_string()),
        tonic::Code::NotFound => CliError::Failure(s.message().to_string()),
        _ => CliError::Failure(format!("node {node}: {}", s.message())),
    }
}

async fn apply(node: &Target, path: &Path) -> Result<(), CliError> {
    let (text, source) = read_fleet(path)?;
    // Checked here first so that errors show even when no node is running.
    parse_fleet(&text, &source).map_err(|e| CliError::Usage(e.to_string()))?;
    let reply = client(node)
        .await?
        .apply(pb::ApplyRequest {
            fleet_toml: text,
            source_name: source.clone(),
        })
        .await
        .map_err(|s| call_error(node, s))?
        .into_inner();
    println!(
        "applied {source} as fleet spec v{}: {} added, {} changed, {} removed, {} unchanged",
        reply.spec_version,
        reply.added.len(),
        reply.changed.len(),
        reply.removed.len(),
        reply.unchanged.len()
    );
    for (what, names) in [
        ("added", &reply.added),
        ("changed", &reply.changed),
        ("removed", &reply.removed),
    ] {
        if !names.is_empty() {
            println!("  {what}: {}", names.join(", "));
        }
    }
    Ok(())
}

async fn cluster(node: &Target, action: super::ClusterAction) -> Result<(), CliError> {
    use super::ClusterAction as A;
    let mut c = client(node).await?;
    let reply = match action {
        A::Init => c.cluster_init(pb::ClusterInitRequest {}).await,
        A::Join { seed } => c.cluster_join(pb::ClusterJoinRequest { seed }).await,
        A::Leave => c.cluster_leave(pb::ClusterLeaveRequest {}).await,
        A::Remove { id } => c.cluster_remove(pb::ClusterRemoveRequest { id }).await,
    }
    .map_err(|s| call_error(node, s))?
    .into_inner();
    println!("{}", reply.message);
    let list = |ids: &[u64]| {
        ids.iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "voters: {} · learners: {} · leader: {}",
        if reply.voters.is_empty() {
            "-".into()
        } else {
            list(&reply.voters)
        },
        if reply.learners.is_empty() {
            "-".into()
        } else {
            list(&reply.learners)
        },
        reply
            .leader
            .map_or("none yet".to_string(), |l| l.to_string())
    );
    Ok(())
}

async fn status(node: &Target, json: bool) -> Result<(), CliError> {
    let reply = client(node)
        .await?
        .status(pb::StatusRequest { local_only: false })
        .await
        .map_err(|s| call_error(node, s))?
        .into_inner();
    if json {
        println!("{}", output::status_json(&reply));
    } else {
        print!("{}", output::status_table(&reply));
    }
    Ok(())
}

fn since_ms(since: &str) -> Result<i64, CliError> {
    let d = parse_duration(since).map_err(|e| CliError::Usage(format!("--since: {e}")))?;
    Ok(now_ms().saturating_sub(d.as_millis() as i64))
}

/// `--until`: a duration ago (`0s`: now).
fn until_ms(until: &str) -> Result<i64, CliError> {
    let d = parse_duration(until).map_err(|e| CliError::Usage(format!("--until: {e}")))?;
    Ok(now_ms().saturating_sub(d.as_millis() as i64))
}

struct QueryArgs<'a> {
    target: &'a str,
    metric: &'a str,
    since: &'a str,
    labels: &'a [String],
    rollup: Option<&'a str>,
}

async fn query(node: &Target, q: QueryArgs<'_>, json: bool) -> Result<(), CliError> {
    let QueryArgs {
        target,
        metric,
        since,
        labels,
        rollup,
    } = q;
    let from_ms = since_ms(since)?;
    let mut matchers = std::collections::HashMap::new();
    for l in labels {
        let (k, v) = l
            .split_once('=')
            .ok_or_else(|| CliError::Usage(format!("--label {l:?}: write it as NAME=VALUE")))?;
        matchers.insert(k.to_string(), v.to_string());
    }
    let reply = client(node)
        .await?
        .query(pb::QueryRequest {
            target: target.into(),
            metric: metric.into(),
            from_ms,
            to_ms: now_ms(),
            labels: matchers,
            rollup: rollup.unwrap_or_default().to_string(),
            local_only: false,
        })
        .await
        .map_err(|s| call_error(node, s))?
        .into_inner();
    match (json, rollup.is_some()) {
        (true, false) => println!("{}", output::query_json(&reply)),
        (false, false) => print!("{}", output::query_table(&reply)),
        (true, true) => println!("{}", output::rollup_json(&reply)),
        (false, true) => print!("{}", output::rollup_table(&reply)),
    }
    Ok(())
}

async fn state(node: &Target, target: &str, path: Option<&str>) -> Result<(), CliError> {
    let reply = client(node)
        .await?
        .state(pb::StateRequest {
            target: target.into(),
            path: path.unwrap_or_default().into(),
        })
        .await
        .map_err(|s| call_error(node, s))?
        .into_inner();
    let value: serde_json::Value = serde_json::from_str(&reply.json)
        .map_err(|e| CliError::Failure(format!("the node sent unreadable JSON: {e}")))?;
    println!(
        "{}",
        serde_json::to_string_pretty(&value).unwrap_or(reply.json)
    );
    Ok(())
}

fn whoami(by: Option<String>) -> String {
    by.unwrap_or_else(crate::node::current_user)
}

async fn alerts(node: &Target, history: Option<&str>, json: bool) -> Result<(), CliError> {
    let history_since_ms = match history {
        Some(h) => since_ms(h)?,
        None => 0,
    };
    let reply = client(node)
        .await?
        .alerts(pb::AlertsRequest {
            history_since_ms,
            history_limit: 0,
        })
        .await
        .map_err(|s| call_error(node, s))?
        .into_inner();
    if json {
        println!("{}", output::alerts_json(&reply));
    } else {
        print!("{}", output::alerts_table(&reply));
    }
    Ok(())
}

async fn ack(node: &Target, alert: &str, by: Option<String>) -> Result<(), CliError> {
    let reply = client(node)
        .await?
        .ack(pb::AckRequest {
            id: alert.into(),
            by: whoami(by),
            forwarded: false,
        })
        .await
        .map_err(|s| call_error(node, s))?
        .into_inner();
    if let Some(a) = reply.alert {
        println!(
            "acknowledged {} ({} on {}) by {}",
            a.id, a.rule, a.target, a.acked_by
        );
    }
    Ok(())
}

async fn silence(node: &Target, action: super::SilenceAction) -> Result<(), CliError> {
    use super::SilenceAction;
    let mut c = client(node).await?;
    match action {
        SilenceAction::Add {
            selector,
            duration,
            reason,
            by,
        } => {
            let d =
                parse_duration(&duration).map_err(|e| CliError::Usage(format!("--for: {e}")))?;
            // The node checks the selector (InvalidArgument: exit 2 with its message).
            let s = c
                .silence_add(pb::SilenceAddRequest {
                    selector,
                    duration_ms: d.as_millis() as u64,
                    reason,
                    created_by: whoami(by),
                })
                .await
                .map_err(|s| call_error(node, s))?
                .into_inner();
            println!(
                "silence {} on {} until {}",
                s.id,
                s.selector,
                output::time(s.until_ms)
            );
        }
        SilenceAction::Ls { json } => {
            let r = c
                .silence_list(pb::SilenceListRequest {})
                .await
                .map_err(|s| call_error(node, s))?
                .into_inner();
            if json {
                println!("{}", output::silences_json(&r));
            } else {
                print!("{}", output::silences_table(&r));
            }
        }
        SilenceAction::Rm { id } => {
            c.silence_remove(pb::SilenceRemoveRequest { id: id.clone() })
                .await
                .map_err(|s| call_error(node, s))?;
            println!("silence {id} removed");
        }
    }
    Ok(())
}

async fn pause(
    node: &Target,
    target: &str,
    duration: Option<&str>,
    reason: String,
    by: Option<String>,
) -> Result<(), CliError> {
    let duration_ms = match duration {
        Some(d) => parse_duration(d)
            .map_err(|e| CliError::Usage(format!("--for: {e}")))?
            .as_millis() as u64,
        None => 0,
    };
    let reply = client(node)
        .await?
        .pause(pb::PauseRequest {
            target: target.into(),
            duration_ms,
            reason,
            by: whoami(by),
        })
        .await
        .map_err(|s| call_error(node, s))?
        .into_inner();
    if reply.until_ms > 0 {
        println!("{target} paused until {}", output::time(reply.until_ms));
    } else {
        println!("{target} paused until `herd resume {target}`");
    }
    Ok(())
}

async fn events(
    node: &Target,
    target: Option<&str>,
    since: &str,
    limit: u32,
    json: bool,
) -> Result<(), CliError> {
    let reply = client(node)
        .await?
        .events(pb::EventsRequest {
            target: target.unwrap_or_default().into(),
            since_ms: since_ms(since)?,
            limit,
        })
        .await
        .map_err(|s| call_error(node, s))?
        .into_inner();
    if json {
        println!("{}", output::events_json(&reply));
    } else {
        print!("{}", output::events_table(&reply));
    }
    Ok(())
}

/// Prints each change as it comes, until `count` of them or the stream ends
/// (the node stopped: an error, exit 1).
async fn watch(
    node: &Target,
    req: pb::WatchRequest,
    count: Option<u64>,
    json: bool,
) -> Result<(), CliError> {
    use std::io::Write;
    let mut stream = connect(node, None)
        .await?
        .watch(req)
        .await
        .map_err(|s| call_error(node, s))?
        .into_inner();
    eprintln!("watching the changes {} sees (Ctrl-C to stop)", node.node);
    let mut seen = 0u64;
    let stdout = std::io::stdout();
    while count.is_none_or(|c| seen < c) {
        let change = match stream.message().await {
            Ok(Some(c)) => c,
            Ok(None) => {
                return Err(CliError::Failure(format!(
                    "{}: the node ended the stream (is it stopping?)",
                    node.node
                )))
            }
            Err(s) => return Err(call_error(node, s)),
        };
        let line = if json {
            output::change_json(&change).to_string()
        } else {
            output::change_line(&change)
        };
        let mut out = stdout.lock();
        // A closed pipe (`herd watch | head`) ends the watch quietly.
        if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
            return Ok(());
        }
        seen += 1;
    }
    Ok(())
}
