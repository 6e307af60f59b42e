//! `herd`: parse the command line, set up logging, run the subcommand, map the
//! outcome to an exit code (0 ok, 1 runtime failure, 2 bad usage or config).
use std::process::ExitCode;

use clap::Parser;
use herd::{Cli, Command, LogFormatArg};
use herd::{LogFormat, NodeConfig};

/// jemalloc rather than glibc's malloc: a node allocates and frees small buffers
/// per scrape on many threads, and glibc's malloc was a fifth of its CPU
/// (`scripts/bench fleet`; figures in the README).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings (read at its start; `_RJEM_MALLOC_CONF` overrides):
/// pages freed go back to the system within a second rather than ten.
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8] =
    b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0,narenas:4\0";

fn init_logging(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Node { .. } | Command::Demo { .. }) {
        // A CLI whose output is piped into `head` should end quietly, as other
        // tools do, instead of panicking on a broken pipe. SIGPIPE itself stays
        // ignored: a node that closes the connection (a TLS port spoken to in plain
        // HTTP/2) must give an error message, not kill the CLI.
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let text = info
                .payload()
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| info.payload().downcast_ref::<&str>().copied())
                .unwrap_or("");
            if text.contains("failed printing to stdout") && text.contains("Broken pipe") {
                std::process::exit(0);
            }
            default_hook(info);
        }));
    }
    let flag_format = cli.log_format.map(|f| match f {
        LogFormatArg::Text => LogFormat::Text,
        LogFormatArg::Json => LogFormat::Json,
    });
    // The node's config is loaded before anything runs, so that a bad herd.toml is
    // refused with every error and exit code 2.
    let node_cfg = match &cli.command {
        Command::Node { config, .. } => match NodeConfig::load(config.as_deref()) {
            Ok(c) => Some(c),
            Err(errors) => {
                eprintln!("{errors}");
                eprintln!("herd node: refusing to start with a bad config");
                return ExitCode::from(herd::exit::USAGE);
            }
        },
        _ => None,
    };
    let (format, level) = match (&node_cfg, &cli.command) {
        (Some(c), _) => (flag_format.unwrap_or(c.log.format), c.log.level.clone()),
        (None, Command::Demo { .. }) => (
            flag_format.unwrap_or_default(),
            "warn,openraft=error".to_string(),
        ),
        (None, _) => (flag_format.unwrap_or_default(), "warn".to_string()),
    };
    init_logging(format, &level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("herd: cannot start the async runtime: {e}");
            return ExitCode::from(herd::exit::FAILURE);
        }
    };
    match runtime.block_on(herd::run(cli, node_cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", e.message());
            e.code()
        }
    }
}
