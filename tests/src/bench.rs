//! Helpers the benchmarks share (tests/benches/*.rs).
use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use herd_proto::v1::herd_client::HerdClient;

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

/// Writes a bench's JSON report to `target/bench/NAME.json` and says where (or
/// why not) on stderr.
pub fn write_report(name: &str, report: &serde_json::Value) {
    let path = target_dir().join(format!("bench/{name}.json"));
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let text = serde_json::to_string_pretty(report).unwrap_or_default() + "\n";
    match std::fs::write(&path, text) {
        Ok(()) => eprintln!("\nwrote {}", path.display()),
        Err(e) => eprintln!("\ncannot write {}: {e}", path.display()),
    }
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

/// Readies the process for a bench: the open-files limit raised, `HERD_BIN` set to
/// the release binary. Call it first thing in `main`, after [`BenchArgs::finish`].
pub fn bench_setup(bench: &str) {
    raise_nofile_limit();
    use_release_herd(bench);
}

/// Any whole number from 1 up: what `--window S` and the like take.
pub const POSITIVE: RangeInclusive<u64> = 1..=u64::MAX;

/// A bench's command line, read one option at a time: flags with a number
/// (`--targets 20`), switches (`--stagger`) and words (`latency`, a fleet size).
/// Each option gives its default when absent; the last use of a flag wins. A bad
/// value, or anything left over at [`BenchArgs::finish`], ends the process with
/// status 2 and a message naming the flag, then the usage; else `-h` / `--help`
/// prints the usage and exits 0.
///
/// Take every flag before the words: a flag's value looks like a word.
pub struct BenchArgs {
    bench: &'static str,
    usage: &'static str,
    /// The arguments; `None` once taken.
    args: Vec<Option<String>>,
    /// Set once a word was taken (flags must come first).
    words_taken: bool,
}

impl BenchArgs {
    /// This process's arguments ([`bench_args`]).
    pub fn from_env(bench: &'static str, usage: &'static str) -> BenchArgs {
        BenchArgs::new(bench, usage, bench_args())
    }

    pub fn new(bench: &'static str, usage: &'static str, args: Vec<String>) -> BenchArgs {
        BenchArgs {
            bench,
            usage,
            args: args.into_iter().map(Some).collect(),
            words_taken: false,
        }
    }

    /// The number after `flag` within `range`, else `default`.
    pub fn number(&mut self, flag: &str, default: u64, range: RangeInclusive<u64>) -> u64 {
        let taken = self.try_number(flag, default, range);
        self.or_exit(taken)
    }

    /// `flag`'s number of seconds within `range`, else `default_s`.
    pub fn seconds(&mut self, flag: &str, default_s: u64, range: RangeInclusive<u64>) -> Duration {
        Duration::from_secs(self.number(flag, default_s, range))
    }

    /// The word after `flag`, if `flag` was given (exit 2 when nothing follows it).
    pub fn text(&mut self, flag: &str) -> Option<String> {
        let i = self.args.iter().position(|a| a.as_deref() == Some(flag))?;
        self.args[i] = None;
        match self.args.get_mut(i + 1).and_then(Option::take) {
            Some(v) => Some(v),
            None => self.fail(&format!("{flag} wants a value")),
        }
    }

    /// Whether the switch `flag` was given.
    pub fn switch(&mut self, flag: &str) -> bool {
        let mut found = false;
        for slot in &mut self.args {
            if slot.as_deref() == Some(flag) {
                *slot = None;
                found = true;
            }
        }
        found
    }

    /// Whether the word `word` was given.
    pub fn word(&mut self, word: &str) -> bool {
        self.words_taken = true;
        self.switch(word)
    }

    /// Every word that is a whole number, in order, each within `range`; `what`
    /// names them in the message when one is not.
    pub fn numbers(&mut self, what: &str, range: RangeInclusive<u64>) -> Vec<u64> {
        let taken = self.try_numbers(what, range);
        self.or_exit(taken)
    }

    /// Ends the process with status 2: `message`, then the usage.
    pub fn fail(&self, message: &str) -> ! {
        eprintln!("{} bench: {message}\n\n{}", self.bench, self.usage);
        std::process::exit(2);
    }

    /// `-h` / `--help`: the usage, exit 0; anything else left over: exit 2 naming it.
    pub fn finish(&self) {
        match self.leftover() {
            Ok(()) => {}
            Err(None) => {
                println!("{}", self.usage);
                std::process::exit(0);
            }
            Err(Some(message)) => self.fail(&message),
        }
    }

    fn or_exit<T>(&self, taken: Result<T, String>) -> T {
        taken.unwrap_or_else(|message| self.fail(&message))
    }

    fn try_number(
        &mut self,
        flag: &str,
        default: u64,
        range: RangeInclusive<u64>,
    ) -> Result<u64, String> {
        assert!(
            !self.words_taken,
            "{} bench: take the flag {flag} before the words",
            self.bench
        );
        let mut value = default;
        let mut i = 0;
        while i < self.args.len() {
            if self.args[i].as_deref() != Some(flag) {
                i += 1;
                continue;
            }
            self.args[i] = None;
            let given = self.args.get_mut(i + 1).and_then(Option::take);
            value = given
                .as_deref()
                .and_then(|v| v.parse::<u64>().ok())
                .filter(|v| range.contains(v))
                .ok_or_else(|| match &given {
                    Some(v) => format!("{flag} needs {}, not {v:?}", describe(&range)),
                    None => format!("{flag} needs {}", describe(&range)),
                })?;
            i += 2;
        }
        Ok(value)
    }

    fn try_numbers(&mut self, what: &str, range: RangeInclusive<u64>) -> Result<Vec<u64>, String> {
        self.words_taken = true;
        let mut out = Vec::new();
        for slot in &mut self.args {
            let Some(n) = slot.as_deref().and_then(|a| a.parse::<u64>().ok()) else {
                continue;
            };
            if !range.contains(&n) {
                return Err(format!("{what} {n} is not {}", describe(&range)));
            }
            *slot = None;
            out.push(n);
        }
        Ok(out)
    }

    /// `Err(Some(message))`: an unknown argument; `Err(None)`: help was asked for.
    fn leftover(&self) -> Result<(), Option<String>> {
        let help = |a: &&str| *a == "-h" || *a == "--help";
        let left: Vec<&str> = self
            .args
            .iter()
            .flatten()
            .map(String::as_str)
            .filter(|a| !help(a))
            .collect();
        // An unknown flag first: the word after it may be its value.
        if let Some(flag) = left.iter().find(|a| a.starts_with('-')) {
            return Err(Some(format!("unknown flag {flag:?}")));
        }
        if let Some(word) = left.first() {
            return Err(Some(format!("unknown argument {word:?}")));
        }
        if self.args.iter().flatten().any(|a| help(&a.as_str())) {
            return Err(None);
        }
        Ok(())
    }
}

/// "a positive number", "a number from 3 to 3000", for messages.
fn describe(range: &RangeInclusive<u64>) -> String {
    match (*range.start(), *range.end()) {
        (1, u64::MAX) => "a positive number".into(),
        (min, u64::MAX) => format!("a number of at least {min}"),
        (min, max) => format!("a number from {min} to {max}"),
    }
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

/// The `Query` for the `target.up` samples of `target` in [from, to] in the
/// answering node's own store (`local_only`): when that node scraped it.
pub fn up_query(target: &str, from_ms: i64, to_ms: i64) -> herd_proto::v1::QueryRequest {
    herd_proto::v1::QueryRequest {
        target: target.to_string(),
        metric: "target.up".into(),
        from_ms,
        to_ms,
        labels: Default::default(),
        rollup: String::new(),
        local_only: true,
    }
}

/// The sample times of every series of a `Query` answer, sorted, each once.
pub fn point_times(reply: herd_proto::v1::QueryReply) -> Vec<i64> {
    let mut ts: Vec<i64> = reply
        .series
        .into_iter()
        .flat_map(|s| s.points)
        .map(|p| p.ts_ms)
        .collect();
    ts.sort_unstable();
    ts.dedup();
    ts
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

/// `target.up` sample times of each of `targets` in [from, to] in the own store of
/// the node at `addr`.
pub async fn local_samples(
    addr: &str,
    token: Option<&str>,
    targets: &[String],
    from_ms: i64,
    to_ms: i64,
) -> Result<BTreeMap<String, Vec<i64>>, String> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let bearer: Option<tonic::metadata::MetadataValue<_>> = match token {
        Some(t) => Some(
            format!("Bearer {t}")
                .parse()
                .map_err(|_| "the token is not a header value".to_string())?,
        ),
        None => None,
    };
    let mut client = HerdClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
        if let Some(b) = &bearer {
            req.metadata_mut().insert("authorization", b.clone());
        }
        Ok(req)
    });
    let mut out = BTreeMap::new();
    for t in targets {
        let ts = match client.query(up_query(t, from_ms, to_ms)).await {
            Ok(r) => point_times(r.into_inner()),
            // Never held by this node: no data, which is an answer.
            Err(s) if s.code() == tonic::Code::NotFound => Vec::new(),
            Err(s) => return Err(format!("query {t} on {addr}: {}", s.message())),
        };
        out.insert(t.clone(), ts);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> BenchArgs {
        BenchArgs::new(
            "test",
            "usage",
            list.iter().map(|a| a.to_string()).collect(),
        )
    }

    #[test]
    fn flags_give_their_value_or_default() {
        let mut a = args(&[
            "fleet",
            "--window",
            "20",
            "100",
            "--stagger",
            "--window",
            "30",
        ]);
        assert_eq!(a.try_number("--window", 60, POSITIVE), Ok(30));
        assert_eq!(a.try_number("--interval", 10, POSITIVE), Ok(10));
        assert!(a.switch("--stagger"));
        assert!(!a.switch("--other"));
        assert_eq!(a.try_numbers("fleet size", 1..=20_000), Ok(vec![100]));
        assert!(a.word("fleet"));
        assert_eq!(a.leftover(), Ok(()));
    }

    #[test]
    fn bad_values_name_the_flag() {
        let mut a = args(&["--targets", "2"]);
        assert_eq!(
            a.try_number("--targets", 300, 3..=3000),
            Err("--targets needs a number from 3 to 3000, not \"2\"".into())
        );
        let mut a = args(&["--window"]);
        assert_eq!(
            a.try_number("--window", 60, POSITIVE),
            Err("--window needs a positive number".into())
        );
        let mut a = args(&["0"]);
        assert_eq!(
            a.try_numbers("fleet size", 1..=20_000),
            Err("fleet size 0 is not a number from 1 to 20000".into())
        );
    }

    #[test]
    fn leftovers_are_errors_before_help() {
        let mut a = args(&["latency", "--bogus", "3"]);
        assert!(a.word("latency"));
        assert_eq!(a.leftover(), Err(Some("unknown flag \"--bogus\"".into())));
        assert_eq!(
            args(&["throughput"]).leftover(),
            Err(Some("unknown argument \"throughput\"".into()))
        );
        assert_eq!(
            args(&["--help", "--bogus"]).leftover(),
            Err(Some("unknown flag \"--bogus\"".into()))
        );
        assert_eq!(args(&["-h"]).leftover(), Err(None));
    }
}
