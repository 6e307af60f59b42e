//! Helpers the benchmarks share (tests/benches/*.rs).
use std::path::{Path, PathBuf};

/// Thousands of sessions, connections and receiver threads need descriptors: raise
/// the soft limit to the hard one; child processes inherit it.
pub fn raise_nofile_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointers to an rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// The harness picks `herd` next to this executable's profile; make sure that is
/// the release build, not a stale debug one. `bench` names the benchmark and the
/// `scripts/bench` argument that builds it in the message.
pub fn use_release_herd(bench: &str) {
    if std::env::var_os("HERD_BIN").is_some() {
        return;
    }
    let release = target_dir().join("release/herd");
    if !release.is_file() {
        eprintln!(
            "{bench} bench: {} is missing: run scripts/bench {bench} (it builds it), or set HERD_BIN",
            release.display()
        );
        std::process::exit(2);
    }
    // Called first thing in main: nothing reads the environment concurrently.
    std::env::set_var("HERD_BIN", release);
}

/// `target/` of the workspace: a bench executable is `target/release/deps/NAME-*`.
pub fn target_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().nth(3).map(Path::to_path_buf))
        .filter(|t| t.join("release").is_dir())
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// Nearest-rank percentile (sorts `v`); NaN when empty.
pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[rank.min(v.len() - 1)]
}

/// A progress line on stderr.
pub fn progress(message: &str) {
    eprintln!("[bench] {message}");
}

/// The arguments of a `harness = false` bench (without the `--bench` cargo adds).
pub fn bench_args() -> Vec<String> {
    std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect()
}

/// Parses a bench's options: a bad one prints the usage and exits 2, `--help`
/// (`help` true) prints it and exits 0. Then readies the process for a bench: the
/// open-files limit raised, `HERD_BIN` set to the release binary.
pub fn bench_setup<O>(
    bench: &str,
    usage: &str,
    args: &[String],
    parse: impl FnOnce(&[String]) -> Result<O, String>,
    help: impl FnOnce(&O) -> bool,
) -> O {
    let opts = match parse(args) {
        Ok(o) => o,
        Err(message) => {
            eprintln!("{bench} bench: {message}\n\n{usage}");
            std::process::exit(2);
        }
    };
    if help(&opts) {
        println!("{usage}");
        std::process::exit(0);
    }
    raise_nofile_limit();
    use_release_herd(bench);
    opts
}

/// The bench's client runtime: one worker that keeps running between calls. A
/// gRPC connection whose client stops being polled never answers the node's HTTP/2
/// shutdown PING, and the node then waits for it on SIGTERM.
pub fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Busy CPU seconds of the whole host (/proc/stat: all but idle and iowait).
pub fn host_busy_s() -> f64 {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return f64::NAN;
    };
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy: f64 =
        v.iter().take(8).sum::<f64>() - v.get(3).unwrap_or(&0.0) - v.get(4).unwrap_or(&0.0);
    // SAFETY: sysconf has no preconditions.
    busy / unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64
}

/// A node's status over gRPC (`local_only`: only what the node itself knows),
/// bounded by `timeout`.
pub async fn node_status(
    addr: &str,
    local_only: bool,
    timeout: std::time::Duration,
) -> Result<herd_proto::v1::StatusReply, String> {
    let call = async {
        herd_proto::v1::herd_client::HerdClient::connect(format!("http://{addr}"))
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?
            .status(herd_proto::v1::StatusRequest { local_only })
            .await
            .map(|r| r.into_inner())
            .map_err(|e| format!("status on {addr}: {}", e.message()))
    };
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| format!("status on {addr}: no answer within {timeout:?}"))?
}
