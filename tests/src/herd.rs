//! One real `herd node` process in a temp dir, and the CLI pointed at it.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use crate::ports::free_port;
use crate::process::{log_tail, run_bounded, signal, spawn_logged, wait_exit};
use crate::sshd::{Sshd, SSH_USER};

/// Longest wait for a node to answer `herd status` after it was started.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest run of one CLI command (the CLI's own call timeout is 30 s).
const CLI_TIMEOUT: Duration = Duration::from_secs(45);
/// Longest wait for a node to exit after SIGTERM.
const EXIT_TIMEOUT: Duration = Duration::from_secs(15);

/// What goes into herd.toml, and the fleet given with `--fleet` at start.
#[derive(Debug, Clone)]
pub struct HerdOptions {
    pub id: u64,
    /// `[ssh] key`; None: no key line.
    pub ssh_key: Option<PathBuf>,
    /// `[ssh] known_hosts`; None: an empty `known_hosts` in the node's dir.
    pub known_hosts: Option<PathBuf>,
    /// "strict" or "accept-new".
    pub host_key_checking: String,
    pub ssh_user: String,
    pub connect_timeout: String,
    pub reconnect_min: String,
    pub reconnect_max: String,
    pub flush_interval: String,
    /// fleet.toml text passed with `--fleet` (applied when the node has no spec yet).
    pub fleet: Option<String>,
    /// Extra environment of the node process (e.g. SSH_AUTH_SOCK).
    pub env: Vec<(String, String)>,
    /// Appended to herd.toml as is (e.g. a `[cluster]` section).
    pub extra_toml: String,
    /// Lines in herd.toml's `[ssh]` section (e.g. `shell = false`).
    pub ssh_extra: String,
    /// Lines in herd.toml's `[store]` section (e.g. `resolved_retention = "3s"`).
    pub store_extra: String,
    /// The `herd` binary the node runs (another build, e.g. the previous
    /// release); None: this build ([`crate::herd_bin`]). The CLI is always this build.
    pub bin: Option<PathBuf>,
    /// The API token: written to `api-token` in the node's dir, named by
    /// `node.api_token_file`, and passed with `--token-file` by [`Herd::cli`].
    pub api_token: Option<String>,
    /// Listen on this port (a declarative herd names its members' ports in
    /// advance); None: a free one.
    pub port: Option<u16>,
    /// Whether start waits for the `--fleet` spec to be applied (a node with peers
    /// applies it only once the herd formed).
    pub wait_for_fleet: bool,
}

impl Default for HerdOptions {
    fn default() -> Self {
        HerdOptions {
            id: 1,
            ssh_key: None,
            known_hosts: None,
            host_key_checking: "strict".into(),
            ssh_user: SSH_USER.into(),
            connect_timeout: "3s".into(),
            reconnect_min: "500ms".into(),
            reconnect_max: "2s".into(),
            flush_interval: "200ms".into(),
            fleet: None,
            env: Vec::new(),
            extra_toml: String::new(),
            ssh_extra: String::new(),
            store_extra: String::new(),
            bin: None,
            api_token: None,
            port: None,
            wait_for_fleet: true,
        }
    }
}

impl HerdOptions {
    /// Logs in to `sshd` with its client key and trusts its known_hosts file.
    pub fn with_sshd(sshd: &Sshd) -> Self {
        HerdOptions {
            ssh_key: Some(sshd.client_key()),
            known_hosts: Some(sshd.known_hosts()),
            ..Default::default()
        }
    }

    pub fn fleet(mut self, text: impl Into<String>) -> Self {
        self.fleet = Some(text.into());
        self
    }

    pub fn known_hosts(mut self, path: impl Into<PathBuf>) -> Self {
        self.known_hosts = Some(path.into());
        self
    }

    pub fn host_key_checking(mut self, mode: &str) -> Self {
        self.host_key_checking = mode.into();
        self
    }

    pub fn bin(mut self, bin: Option<PathBuf>) -> Self {
        self.bin = bin;
        self
    }

    pub fn store_extra(mut self, lines: impl Into<String>) -> Self {
        self.store_extra = lines.into();
        self
    }

    pub fn id(mut self, id: u64) -> Self {
        self.id = id;
        self
    }

    /// Appends `text` to herd.toml (after the sections the harness writes).
    pub fn extra_toml(mut self, text: impl Into<String>) -> Self {
        self.extra_toml.push_str(&text.into());
        self
    }

    pub fn api_token(mut self, token: impl Into<String>) -> Self {
        self.api_token = Some(token.into());
        self
    }

    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Start returns once the node answers, without waiting for its `--fleet`.
    pub fn no_fleet_wait(mut self) -> Self {
        self.wait_for_fleet = false;
        self
    }
}

pub struct Herd {
    dir: TempDir,
    opts: HerdOptions,
    port: u16,
    /// The HTTP face's port (`node.http`).
    http_port: u16,
    child: Option<Child>,
    files_written: AtomicUsize,
}

impl Herd {
    /// Writes herd.toml and starts the node; returns once `herd status` answers and
    /// the `--fleet` spec, if any, is applied.
    pub fn start(opts: HerdOptions) -> Herd {
        crate::herd_bin();
        let dir = tempfile::Builder::new()
            .prefix("herd-node-")
            .tempdir()
            .expect("cannot create a temp dir");
        let mut herd = Herd {
            dir,
            opts,
            port: 0,
            http_port: 0,
            child: None,
            files_written: AtomicUsize::new(0),
        };
        if let Some(fleet) = herd.opts.fleet.clone() {
            std::fs::write(herd.fleet_path(), fleet).expect("writing fleet.toml");
        }
        if let Some(token) = &herd.opts.api_token {
            std::fs::write(herd.token_path(), format!("{token}\n")).expect("writing api-token");
        }
        if herd.opts.known_hosts.is_none() {
            std::fs::write(herd.dir.path().join("known_hosts"), "").expect("writing known_hosts");
        }
        // Another process may take the free port before the node binds it: retry once.
        for attempt in 0..2 {
            herd.port = herd.opts.port.unwrap_or_else(free_port);
            herd.http_port = free_port();
            herd.write_config();
            match herd.spawn() {
                Ok(()) => return herd,
                Err(e) if attempt == 0 && herd.log().contains("cannot listen") => {
                    eprintln!("    herd did not start ({e}); retrying on another port")
                }
                Err(e) => panic!("herd node did not start: {e}\n{}", herd.log_tail(40)),
            }
        }
        unreachable!()
    }

    /// `127.0.0.1:PORT`, the node's gRPC address.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:PORT`, the node's HTTP face (`node.http`).
    pub fn http_addr(&self) -> String {
        format!("127.0.0.1:{}", self.http_port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("herd.toml")
    }

    /// The known_hosts file the node uses.
    pub fn known_hosts(&self) -> PathBuf {
        self.opts
            .known_hosts
            .clone()
            .unwrap_or_else(|| self.dir.path().join("known_hosts"))
    }

    /// The node's id (`[node] id`).
    pub fn id(&self) -> u64 {
        self.opts.id
    }

    /// The API token file (written only when the options have a token).
    pub fn token_path(&self) -> PathBuf {
        self.dir.path().join("api-token")
    }

    fn fleet_path(&self) -> PathBuf {
        self.dir.path().join("fleet.toml")
    }

    /// The node's stderr: its JSON log lines, across restarts.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("node.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path(), lines)
    }

    /// With `HERD_KEEP_FAILED` set and the calling test failing: writes where every
    /// thread of the running process stands (gdb) to `threads.txt` in its dir, for
    /// a post-mortem of a hang.
    pub fn dump_threads(&self) {
        if !std::thread::panicking() || std::env::var_os("HERD_KEEP_FAILED").is_none() {
            return;
        }
        if let Some(child) = &self.child {
            let pid = child.id().to_string();
            let args = ["-p", &pid, "-batch", "-ex", "thread apply all bt"];
            if let Ok(out) = Command::new("gdb").args(args).output() {
                let _ = std::fs::write(self.dir.path().join("threads.txt"), out.stdout);
            }
        }
    }

    /// Prints the tail of the node's log to stderr.
    pub fn dump_logs(&self) {
        eprintln!(
            "----- herd node {} at {} ({}), last lines -----\n{}\n-----",
            self.opts.id,
            self.addr(),
            self.log_path().display(),
            self.log_tail(60)
        );
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Runs `herd --node ADDR ARGS...` (bounded) and returns its output.
    pub fn cli(&self, args: &[&str]) -> Output {
        run_bounded(&mut self.cli_command(args), CLI_TIMEOUT)
    }

    /// Like [`Herd::cli`] with another bound (long imports and exports of benches).
    pub fn cli_within(&self, args: &[&str], bound: Duration) -> Output {
        run_bounded(&mut self.cli_command(args), bound)
    }

    /// `herd --node ADDR [--token-file F] ARGS...` in a clean environment.
    fn cli_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(crate::herd_bin());
        cmd.arg("--node").arg(self.addr());
        if self.opts.api_token.is_some() {
            cmd.arg("--token-file").arg(self.token_path());
        }
        cmd.args(args);
        clean_env(&mut cmd);
        cmd
    }

    /// Starts `herd --node ADDR ARGS...` that streams (`herd watch`); its lines
    /// are read as they come, its stderr goes to `cli-stream.err` in the node's dir.
    pub fn cli_stream(&self, args: &[&str]) -> crate::process::LineStream {
        crate::process::LineStream::spawn(
            &mut self.cli_command(args),
            &self.dir().join("cli-stream.err"),
        )
    }

    /// Like [`Herd::cli`], but panics unless it exits 0; returns stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        if !out.status.success() {
            panic!(
                "`herd {}` failed with {}:\nstdout: {}\nstderr: {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn cli_json(&self, args: &[&str]) -> Value {
        let text = self.cli_ok(args);
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("`herd {}` printed no JSON ({e}): {text}", args.join(" ")))
    }

    /// `herd status --json`.
    pub fn status_json(&self) -> Value {
        self.cli_json(&["status", "--json"])
    }

    /// The `targets[]` entry of `name` in `herd status --json`, if listed.
    pub fn target_status(&self, name: &str) -> Option<Value> {
        self.status_json()["targets"]
            .as_array()
            .and_then(|ts| ts.iter().find(|t| t["name"] == name).cloned())
    }

    /// `herd query TARGET METRIC --json` over the last hour.
    pub fn query_json(&self, target: &str, metric: &str) -> Value {
        self.cli_json(&["query", target, metric, "--since", "1h", "--json"])
    }

    /// Every point of every series of `metric`, sorted by time.
    pub fn points(&self, target: &str, metric: &str) -> Vec<(i64, f64)> {
        let v = self.query_json(target, metric);
        let mut points: Vec<(i64, f64)> = v["series"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["points"].as_array().cloned().unwrap_or_default())
            .filter_map(|p| Some((p.get(0)?.as_i64()?, p.get(1)?.as_f64()?)))
            .collect();
        points.sort_by_key(|p| p.0);
        points
    }

    /// `herd events --json` (all targets, last 24 h, up to 1000).
    pub fn events_json(&self) -> Value {
        self.cli_json(&["events", "--limit", "1000", "--json"])
    }

    /// Events of `target` of `kind`, newest first.
    pub fn events_of(&self, target: &str, kind: &str) -> Vec<Value> {
        self.events_json()["events"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["target"] == target && e["kind"] == kind)
            .cloned()
            .collect()
    }

    /// Writes `fleet` to a new file in the node's dir and runs `herd apply` on it;
    /// panics unless it exits 0. Returns the CLI's stdout.
    pub fn apply(&self, fleet: &str) -> String {
        let path = self.write_file("fleet", fleet);
        self.cli_ok(&["apply", &path.display().to_string()])
    }

    /// Writes `text` to a new numbered `.toml` file in the node's dir.
    pub fn write_file(&self, stem: &str, text: &str) -> PathBuf {
        let n = self.files_written.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.path().join(format!("{stem}-{n}.toml"));
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path
    }

    /// The node's process id while it runs.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// The node's `/metrics` text (asked with the real curl, with its token).
    pub fn metrics_text(&self) -> String {
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "--max-time", "10"]);
        if let Some(t) = &self.opts.api_token {
            cmd.arg("-H").arg(format!("Authorization: Bearer {t}"));
        }
        cmd.arg(format!("http://{}/metrics", self.http_addr()));
        let out = crate::process::run_bounded(&mut cmd, Duration::from_secs(20));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The value of the sample `name` (labels as written) in `/metrics`.
    pub fn metric(&self, name: &str) -> Option<f64> {
        metric_sample(&self.metrics_text(), name)
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id() as i32, libc::SIGKILL);
            if wait_exit(&mut child, EXIT_TIMEOUT).is_none() {
                panic!("herd node did not die after SIGKILL");
            }
        }
    }

    /// SIGTERM, and the exit status (bounded wait; panics if the node hangs).
    pub fn sigterm(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("the node is not running");
        signal(child.id() as i32, libc::SIGTERM);
        match wait_exit(&mut child, EXIT_TIMEOUT) {
            Some(status) => status,
            None => {
                self.dump_logs();
                signal(child.id() as i32, libc::SIGKILL);
                let _ = child.wait();
                panic!("herd node did not exit within {EXIT_TIMEOUT:?} of SIGTERM");
            }
        }
    }

    /// Replaces what is appended to herd.toml (its `[cluster]` section, say) and
    /// rewrites the file; the node reads it at its next (re)start.
    pub fn reconfigure(&mut self, extra_toml: impl Into<String>) {
        self.opts.extra_toml = extra_toml.into();
        self.write_config();
    }

    /// Runs `bin` (None: this build) from the next (re)start on, with `store_extra`
    /// as its `[store]` lines (herd.toml is written again): an upgrade or a downgrade
    /// in place, same data dir and port.
    pub fn switch_build(&mut self, bin: Option<PathBuf>, store_extra: impl Into<String>) {
        self.opts.bin = bin;
        self.opts.store_extra = store_extra.into();
        self.write_config();
    }

    /// Starts the node again: same config, port and data dir. A running node is
    /// killed first (SIGKILL).
    pub fn restart(&mut self) {
        self.kill9();
        if let Err(e) = self.spawn() {
            panic!("herd node did not restart: {e}\n{}", self.log_tail(40));
        }
    }

    fn write_config(&self) {
        let o = &self.opts;
        let mut ssh = String::new();
        if let Some(key) = &o.ssh_key {
            ssh.push_str(&format!("key = \"{}\"\n", key.display()));
        }
        let token = match &o.api_token {
            Some(_) => format!("api_token_file = \"{}\"\n", self.token_path().display()),
            None => String::new(),
        };
        let mut text = format!(
            "[node]\n\
             id = {id}\n\
             grpc = \"{addr}\"\n\
             http = \"{http}\"\n\
             data_dir = \"{data}\"\n\
             {token}\
             \n\
             [ssh]\n\
             {ssh}\
             {ssh_extra}\
             known_hosts = \"{known_hosts}\"\n\
             host_key_checking = \"{checking}\"\n\
             user = \"{user}\"\n\
             connect_timeout = \"{ct}\"\n\
             reconnect_min = \"{rmin}\"\n\
             reconnect_max = \"{rmax}\"\n\
             \n\
             [store]\n\
             flush_interval = \"{flush}\"\n\
             {store_extra}",
            id = o.id,
            addr = self.addr(),
            http = self.http_addr(),
            data = self.data_dir().display(),
            known_hosts = self.known_hosts().display(),
            checking = o.host_key_checking,
            ssh_extra = o.ssh_extra,
            user = o.ssh_user,
            ct = o.connect_timeout,
            rmin = o.reconnect_min,
            rmax = o.reconnect_max,
            flush = o.flush_interval,
            store_extra = o.store_extra,
        );
        if !o.extra_toml.is_empty() {
            text.push('\n');
            text.push_str(&o.extra_toml);
            if !o.extra_toml.ends_with('\n') {
                text.push('\n');
            }
        }
        std::fs::write(self.config_path(), text).expect("writing herd.toml");
    }

    /// `herd status` answers and, when the node was given a fleet with `--fleet`, a
    /// fleet spec is applied (the node applies it only after it is up).
    fn ready(&self) -> bool {
        let out = self.cli(&["status", "--json"]);
        if !out.status.success() {
            return false;
        }
        if self.opts.fleet.is_none() || !self.opts.wait_for_fleet {
            return true;
        }
        serde_json::from_slice::<Value>(&out.stdout)
            .ok()
            .and_then(|v| v["spec_version"].as_u64())
            .is_some_and(|v| v > 0)
    }

    /// Starts the process and waits until it is [ready](Herd::ready).
    fn spawn(&mut self) -> Result<(), String> {
        let bin = self.opts.bin.clone().unwrap_or_else(crate::herd_bin);
        let mut cmd = Command::new(bin);
        cmd.args(["--log-format", "json", "node", "--config"])
            .arg(self.config_path());
        if self.opts.fleet.is_some() {
            cmd.arg("--fleet").arg(self.fleet_path());
        }
        clean_env(&mut cmd);
        cmd.envs(self.opts.env.iter().map(|(k, v)| (k, v)));
        let stdout = self.dir.path().join("node.out");
        let mut child = spawn_logged(&mut cmd, &stdout, &self.log_path());
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("herd node exited with {status} while starting"));
            }
            if self.ready() {
                self.child = Some(child);
                return Ok(());
            }
            if start.elapsed() > READY_TIMEOUT {
                signal(child.id() as i32, libc::SIGKILL);
                let _ = child.wait();
                return Err(format!("herd node did not answer within {READY_TIMEOUT:?}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Runs `herd ARGS...` with no `--node` (for `check`, or a `node` that must refuse
/// to start), at most `timeout`.
pub fn herd_cli(args: &[&str], timeout: Duration) -> Output {
    let mut cmd = Command::new(crate::herd_bin());
    cmd.args(args);
    clean_env(&mut cmd);
    run_bounded(&mut cmd, timeout)
}

impl Drop for Herd {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        let keep = failed && std::env::var_os("HERD_KEEP_FAILED").is_some();
        if failed {
            self.dump_logs();
        }
        if keep {
            self.dump_threads();
        }
        self.kill9();
        if keep {
            // The whole log, config and data stay for a post-mortem.
            self.dir.disable_cleanup(true);
            eprintln!("    kept the node's dir {}", self.dir.path().display());
        }
    }
}

/// Keeps the caller's HERD_* variables (HERD_NODE, HERD_SSH__KEY, ...) away from the
/// processes under test: they would override the fixture's settings.
fn clean_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("HERD_") {
            cmd.env_remove(key);
        }
    }
}

/// The value of the sample `name` (with its labels as written) in exposition text.
pub fn metric_sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}
