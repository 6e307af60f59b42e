//! Subcommands. All but `node`, `demo` and `check` talk to a node over gRPC.
mod backup;
pub mod certs;
mod commands;
mod demo;
mod deploy;
mod export;
mod import;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

pub use commands::run;

/// Default address of the node the CLI talks to (`herd demo` starts one there).
pub const DEFAULT_NODE: &str = "127.0.0.1:7401";

#[derive(Debug, Parser)]
#[command(
    name = "herd",
    version,
    about = "Agentless fleet monitor: a herd of peer nodes scraping targets over SSH"
)]
pub struct Cli {
    /// gRPC address of the node to talk to.
    #[arg(long, global = true, env = "HERD_NODE", default_value = DEFAULT_NODE)]
    pub node: String,
    /// File holding the node's API token (see node.api_token_file). The token itself
    /// can also come from env HERD_TOKEN.
    #[arg(long, global = true, env = "HERD_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// CA certificate to verify the node's TLS certificate with (herd with [tls]);
    /// the node address is then reached over https.
    #[arg(long, global = true, env = "HERD_CA")]
    pub ca: Option<PathBuf>,
    /// Client certificate and key (`herd certs` makes client.pem/client.key).
    #[arg(long, global = true, env = "HERD_CERT", requires = "key")]
    pub cert: Option<PathBuf>,
    #[arg(long, global = true, env = "HERD_KEY", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Log format on stderr (overrides [log] format).
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormatArg>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormatArg {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one node.
    Node {
        /// herd.toml; absent: defaults and HERD_* env only.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// A fleet.toml to apply at start when the node has none stored yet.
        #[arg(long)]
        fleet: Option<PathBuf>,
    },
    /// A herd of three nodes on 127.0.0.1 (this process and two children) that
    /// watches this machine.
    Demo {
        /// Where the demo keeps its nodes' configs, logs and redb files.
        #[arg(long, default_value = "./herd-demo")]
        data_dir: PathBuf,
        /// gRPC address of node 1; nodes 2 and 3 take the next two ports.
        #[arg(long, default_value = DEFAULT_NODE)]
        grpc: String,
        /// HTTP API address of node 1; nodes 2 and 3 take the next two ports.
        #[arg(long, default_value = "127.0.0.1:7481")]
        http: String,
        /// Scrape interval of the local target.
        #[arg(long, default_value = "5s")]
        interval: String,
    },
    /// Validate a fleet spec offline; every error with file, line and key.
    Check { file: PathBuf },
    /// Compact a node's store file: the free pages deletes leave go back to the
    /// filesystem. Without DATA_DIR: the running node's (`--node`) store, while it
    /// runs (its writer and readers wait for it). With DATA_DIR: a stopped node's
    /// files (herd.redb and raft.redb), refused while a node runs on them.
    Compact { data_dir: Option<PathBuf> },
    /// Lay the herd down on the servers of an inventory over SSH (copy this
    /// binary, write each node's config and credentials, start the nodes, form the
    /// herd), or converge it on a re-run: what is already there is left alone,
    /// running nodes that changed are restarted one at a time, the leader last.
    Deploy {
        inventory: PathBuf,
        /// The herd binary to install (default: this one), e.g. a new release to
        /// roll out.
        #[arg(long)]
        binary: Option<PathBuf>,
        /// Show what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// A consistent copy of the node's store (samples, events, alerts, outbox,
    /// remote_write queues), made while it runs: written to FILE (never over an
    /// existing one) with FILE.sha256 beside it.
    Backup {
        #[arg(long)]
        out: PathBuf,
    },
    /// Rebuild a node's store from a backup, offline, into an empty data dir (never
    /// over a node's files). The node then rejoins its herd as itself.
    Restore {
        file: PathBuf,
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Send a fleet spec to the node; it reconciles its collectors without a restart.
    Apply { file: PathBuf },
    /// Nodes, targets and alerts.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Samples of one metric of one target.
    Query {
        target: String,
        metric: String,
        /// How far back, e.g. 15m, 1h, 2d.
        #[arg(long, default_value = "1h")]
        since: String,
        /// Only series with this label, e.g. --label mount=/ (repeatable).
        #[arg(long = "label", value_name = "NAME=VALUE")]
        labels: Vec<String>,
        /// Rollup buckets instead of points: minute or hour (http checks keep them).
        #[arg(long, value_parser = ["minute", "hour"])]
        rollup: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Samples of targets out of the herd, streamed: OpenMetrics text (what
    /// `promtool tsdb create-blocks-from openmetrics` reads) or JSON lines.
    Export {
        /// Targets whose series to export.
        #[arg(required = true)]
        targets: Vec<String>,
        /// Only this metric (repeatable): cpu.used_pct or herd_cpu_used_pct.
        #[arg(long = "metric")]
        metrics: Vec<String>,
        /// From this long ago, e.g. 1h, 30d.
        #[arg(long, default_value = "1h")]
        since: String,
        /// To this long ago (0s: now).
        #[arg(long, default_value = "0s")]
        until: String,
        #[arg(long, value_enum, default_value = "openmetrics")]
        format: export::ExportFormat,
        /// Write here instead of stdout.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// History from an OpenMetrics or Prometheus text file (with timestamps) into
    /// the store of the node it talks to; checked whole first, nothing stored
    /// when a line is bad or a series overlaps what the node holds.
    Import {
        file: std::path::PathBuf,
        /// The target of series without a `target` label.
        #[arg(long)]
        target: Option<String>,
        /// Skip bad lines and refused series, import the rest.
        #[arg(long)]
        partial: bool,
        /// auto: OpenMetrics (seconds) when the file ends with `# EOF`, else
        /// Prometheus text (milliseconds).
        #[arg(long, value_enum, default_value = "auto")]
        format: import::ImportFormat,
    },
    /// The json_state tree of a target (JSON), whole or at a dotted path.
    State {
        target: String,
        /// e.g. services.api.healthy
        path: Option<String>,
    },
    /// Alerts: pending, firing and recently resolved (with --history: transitions).
    Alerts {
        /// Also list transitions this far back, e.g. 1h.
        #[arg(long)]
        history: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Acknowledge a firing alert: someone is on it.
    Ack {
        /// The alert's id (see `herd alerts`).
        alert: String,
        /// Who acknowledges; default: $USER.
        #[arg(long)]
        by: Option<String>,
    },
    /// Silences: matching alerts notify nobody until the silence ends.
    Silence {
        #[command(subcommand)]
        action: SilenceAction,
    },
    /// Pause a target: not scraped, no alert, until resumed or --for is over.
    Pause {
        target: String,
        /// e.g. 2h; absent: until `herd resume`.
        #[arg(long = "for")]
        duration: Option<String>,
        #[arg(long, default_value = "")]
        reason: String,
        #[arg(long)]
        by: Option<String>,
    },
    /// Resume a paused target.
    Resume { target: String },
    /// Membership of the herd: init, join, leave, remove.
    Cluster {
        #[command(subcommand)]
        action: ClusterAction,
    },
    /// Make a CA and node certificates for mTLS between the nodes of a new herd.
    Certs(certs::CertsArgs),
    /// What changes, as it happens, one line per change until interrupted: events,
    /// alert transitions, ownership moves, nodes down and up, from the whole herd.
    Watch {
        /// Only this target's changes.
        target: Option<String>,
        /// Only this kind: event, alert, owner or node (repeatable).
        #[arg(long = "kind", value_parser = crate::model::change::CHANGE_KINDS)]
        kinds: Vec<String>,
        /// Only the changes this node sees itself (no fan-out to the other members).
        #[arg(long)]
        local: bool,
        /// End after this many changes (gaps and lags count too).
        #[arg(long)]
        count: Option<u64>,
        /// One JSON document per line.
        #[arg(long)]
        json: bool,
    },
    /// Recent events: targets down and up, host key problems, check errors.
    Events {
        /// Only this target.
        target: Option<String>,
        #[arg(long, default_value = "24h")]
        since: String,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClusterAction {
    /// Make the node (--node) a herd of one: run it on the first node of a new herd.
    Init,
    /// Make the node (--node) join the herd that the member at SEED belongs to.
    /// The first five nodes vote; later ones join as learners and own targets too.
    Join {
        /// gRPC address of any member, e.g. 10.0.0.1:7401.
        seed: String,
    },
    /// Take the node (--node) out of its herd; its targets move to the others.
    Leave,
    /// Take node ID out of the herd (a node that is gone for good).
    Remove { id: u64 },
}

#[derive(Debug, Subcommand)]
pub enum SilenceAction {
    /// Silence alerts matching SELECTOR: `target=GLOB`, `rule=NAME`, `severity=S`,
    /// `LABEL=VALUE`, comma-separated (all must match).
    Add {
        selector: String,
        /// How long, e.g. 2h.
        #[arg(long = "for")]
        duration: String,
        #[arg(long, default_value = "")]
        reason: String,
        #[arg(long)]
        by: Option<String>,
    },
    /// Active silences.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// End a silence now.
    Rm { id: String },
}

/// Exit codes that scripts rely on.
pub mod exit {
    pub const OK: u8 = 0;
    pub const FAILURE: u8 = 1;
    pub const USAGE: u8 = 2;
}

/// An error with the exit code it maps to.
#[derive(Debug)]
pub enum CliError {
    /// Bad usage or bad config: exit 2.
    Usage(String),
    /// Runtime failure: exit 1.
    Failure(String),
}

impl CliError {
    pub fn code(&self) -> ExitCode {
        match self {
            CliError::Usage(_) => ExitCode::from(exit::USAGE),
            CliError::Failure(_) => ExitCode::from(exit::FAILURE),
        }
    }
    pub fn message(&self) -> &str {
        match self {
            CliError::Usage(m) | CliError::Failure(m) => m,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap checks its own definitions (names used twice, ...) only here.
    #[test]
    fn the_command_line_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }

    #[test]
    fn certs_takes_nodes_as_arguments_next_to_the_global_node_flag() {
        use clap::Parser;
        let cli = super::Cli::try_parse_from([
            "herd",
            "--node",
            "10.0.0.1:7401",
            "certs",
            "--out",
            "d",
            "1=10.0.0.1",
            "2=10.0.0.2",
        ])
        .unwrap();
        match cli.command {
            super::Command::Certs(a) => assert_eq!(a.nodes, ["1=10.0.0.1", "2=10.0.0.2"]),
            other => panic!("{other:?}"),
        }
    }
}
