//! Real networks for herd tests that [`crate::Herd`] cannot build: nodes in their
//! own network namespaces on a bridge the test makes (to cut one off from the
//! others with blackhole routes), and nodes with `[tls]` (whose CLI needs `--ca`).
//!
//! - [`NetLab`]: a bridge in the root namespace with an address, and N namespaces
//!   each with a veth into it, on a private `10.77.S.0/24` picked free per lab.
//!   Nothing in a namespace has a default route: a node can reach the other
//!   namespaces and the bridge address, nothing else. Cut and heal links between
//!   namespaces with blackhole routes. Everything is deleted on drop, even when
//!   the test panics; leftovers of a crashed run (their pid is gone) are deleted
//!   first.
//! - [`NetNode`]: one `herd node`, in a namespace (`ip netns exec`) or not, on an
//!   address the test chooses, with an optional API token and TLS files. The CLI
//!   runs in the root namespace (it reaches `10.77.S.x` over the bridge).
//!
//! Webhooks from nodes in namespaces go to [`crate::HttpReceiver::start_on`] the
//! bridge address (each request records its sender).
//!
//! Needs root and `ip` (iproute2) for the namespaces. There is no fallback: a test
//! that asks for a lab fails loudly when the host cannot make one.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use crate::cluster::Status;
use crate::process::{log_tail, run_bounded, signal, spawn_logged, wait_exit};

/// Namespaces are named `herdnet-PID-LAB-I`; links `hrdPIDbLAB` (the bridge),
/// `hrdPIDvLABI` (a veth's root end) and `hrdPIDpLABI` (its end in namespace I).
/// Interface names must stay within 15 bytes: 3 + 7 (pid) + 1 + 1 + 1 = 13.
const NS_PREFIX: &str = "herdnet-";
const LINK_PREFIX: &str = "hrd";
/// First two octets of every lab's subnet (private, RFC 1918).
const NET: &str = "10.77";
/// The bridge is `.1`, namespace I is `.(10 + I)`.
const HOST_BASE: u8 = 10;
/// Longest run of one `ip` command.
const IP_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest wait for a node to answer `herd status` after it was started.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest run of one CLI command (the CLI's own call timeout is 30 s).
const CLI_TIMEOUT: Duration = Duration::from_secs(45);
/// Longest wait for a node to exit after SIGKILL.
const EXIT_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest wait for a node's ordered stop after SIGTERM (its own deadlines add up
/// to less).
const STOP_TIMEOUT: Duration = Duration::from_secs(40);

/// Labs made by this process so far: each gets its own names.
static LABS: AtomicUsize = AtomicUsize::new(0);
/// Picking a free subnet and creating the bridge is one step per process.
static CREATE: Mutex<()> = Mutex::new(());

// ---------------------------------------------------------------------------------
// ip

/// Runs `ip ARGS...` (bounded); Err with its stderr when it fails.
fn ip(args: &[&str]) -> Result<String, String> {
    let out = run_bounded(Command::new("ip").args(args), IP_TIMEOUT);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`ip {}` failed with {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs `ip ARGS...`; panics when it fails (the lab cannot be built).
fn ip_ok(args: &[&str]) -> String {
    ip(args).unwrap_or_else(|e| panic!("cannot build the network namespaces: {e}"))
}

/// The pid in a name made by [`NetLab`] (`herdnet-PID-...` or `hrdPID<letter>...`).
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name
        .strip_prefix(NS_PREFIX)
        .or_else(|| name.strip_prefix(LINK_PREFIX))?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let after = rest[digits.len()..].chars().next()?;
    if !matches!(after, '-' | 'b' | 'v' | 'p') {
        return None;
    }
    digits.parse().ok()
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Deletes namespaces and links left by labs whose process is gone.
fn delete_stale() {
    let namespaces = ip(&["netns", "list"]).unwrap_or_default();
    for name in namespaces
        .lines()
        .filter_map(|l| l.split_whitespace().next())
    {
        if owner_pid(name).is_some_and(|p| !pid_alive(p)) {
            eprintln!("    deleting the stale namespace {name}");
            let _ = ip(&["netns", "del", name]);
        }
    }
    let links = ip(&["-o", "link", "show"]).unwrap_or_default();
    for line in links.lines() {
        // "12: hrd123b0: <...>" or "13: hrd123v01@if2: <...>"
        let Some(name) = line.split(':').nth(1).map(str::trim) else {
            continue;
        };
        let name = name.split('@').next().unwrap_or(name);
        if owner_pid(name).is_some_and(|p| !pid_alive(p)) {
            eprintln!("    deleting the stale link {name}");
            let _ = ip(&["link", "del", name]);
        }
    }
}

/// A third octet whose `10.77.S.0/24` no address of the root namespace uses.
fn free_subnet() -> u8 {
    let addrs = ip_ok(&["-o", "-4", "addr", "show"]);
    let routes = ip_ok(&["-4", "route", "show"]);
    let used = |s: u8| {
        let net = format!("{NET}.{s}.");
        addrs.contains(&net) || routes.contains(&net)
    };
    let start = (std::process::id() % 200) as u8 + 20;
    (0..=u8::MAX)
        .map(|i| start.wrapping_add(i))
        .find(|&s| (1..=254).contains(&s) && !used(s))
        .expect("every 10.77.S.0/24 is in use")
}

// ---------------------------------------------------------------------------------
// NetLab

/// A bridge with an address in the root namespace and `n` namespaces on it.
pub struct NetLab {
    subnet: u8,
    bridge: String,
    /// Index i-1: namespace i and the root end of its veth.
    namespaces: Vec<String>,
    veths: Vec<String>,
    /// Blackhole routes in place: (namespace, address).
    cuts: Mutex<BTreeSet<(String, String)>>,
}

impl NetLab {
    /// Deletes stale labs, then makes the bridge and namespaces 1..=n. Panics (with
    /// what `ip` said) when the host cannot: the tests that need a lab must not
    /// pass without one.
    pub fn new(n: usize) -> NetLab {
        assert!((1..=9).contains(&n), "a lab has 1 to 9 namespaces");
        let _guard = CREATE.lock().unwrap_or_else(|e| e.into_inner());
        ip(&["-V"]).unwrap_or_else(|e| panic!("iproute2's `ip` is needed: {e}"));
        delete_stale();
        let pid = std::process::id();
        let k = LABS.fetch_add(1, Ordering::SeqCst) % 10;
        let subnet = free_subnet();
        let mut lab = NetLab {
            subnet,
            bridge: format!("{LINK_PREFIX}{pid}b{k}"),
            namespaces: (1..=n)
                .map(|i| format!("{NS_PREFIX}{pid}-{k}-{i}"))
                .collect(),
            veths: (1..=n)
                .map(|i| format!("{LINK_PREFIX}{pid}v{k}{i}"))
                .collect(),
            cuts: Mutex::new(BTreeSet::new()),
        };
        // A name of ours may be left by an earlier process with the same pid.
        lab.delete_all();
        // From here on, Drop cleans up whatever was made when a step panics.
        lab.build(pid, k);
        eprintln!(
            "    network lab: bridge {} at {}, namespaces {}",
            lab.bridge,
            lab.bridge_ip(),
            (1..=n)
                .map(|i| format!("{} at {}", lab.ns(i), lab.ip(i)))
                .collect::<Vec<_>>()
                .join(", ")
        );
        lab
    }

    fn build(&mut self, pid: u32, k: usize) {
        let prefix = format!("{}/24", self.bridge_ip());
        ip_ok(&["link", "add", &self.bridge, "type", "bridge"]);
        ip_ok(&["addr", "add", &prefix, "dev", &self.bridge]);
        ip_ok(&["link", "set", &self.bridge, "up"]);
        for i in 1..=self.namespaces.len() {
            let ns = self.ns(i).to_string();
            let veth = self.veths[i - 1].clone();
            let peer = format!("{LINK_PREFIX}{pid}p{k}{i}");
            let addr = format!("{}/24", self.ip(i));
            ip_ok(&["netns", "add", &ns]);
            ip_ok(&["link", "add", &veth, "type", "veth", "peer", "name", &peer]);
            ip_ok(&["link", "set", &peer, "netns", &ns]);
            ip_ok(&["link", "set", &veth, "master", &self.bridge]);
            ip_ok(&["link", "set", &veth, "up"]);
            ip_ok(&["-n", &ns, "addr", "add", &addr, "dev", &peer]);
            ip_ok(&["-n", &ns, "link", "set", &peer, "up"]);
            ip_ok(&["-n", &ns, "link", "set", "lo", "up"]);
        }
    }

    /// Namespace `i` (1-based).
    pub fn ns(&self, i: usize) -> &str {
        &self.namespaces[i - 1]
    }

    /// The address of namespace `i` on the bridge: `10.77.S.(10+i)`.
    pub fn ip(&self, i: usize) -> String {
        format!("{NET}.{}.{}", self.subnet, HOST_BASE as usize + i)
    }

    /// The bridge's address in the root namespace: `10.77.S.1`.
    pub fn bridge_ip(&self) -> String {
        format!("{NET}.{}.1", self.subnet)
    }

    /// Cuts namespaces `a` and `b` apart, both ways: a blackhole route to the
    /// other's address in each. Traffic to the bridge address and the root
    /// namespace is untouched.
    pub fn cut(&self, a: usize, b: usize) {
        for (from, to) in [(a, b), (b, a)] {
            self.blackhole(from, to);
        }
        eprintln!("    cut {} <-> {}", self.ip(a), self.ip(b));
    }

    /// Cuts one direction: nothing namespace `from` sends to `to` arrives (a
    /// blackhole route in `from` only); what `to` sends still reaches `from`. Over
    /// TCP the answers of `from` are lost too, so connections from either side
    /// stall half-open rather than being refused.
    pub fn cut_one_way(&self, from: usize, to: usize) {
        self.blackhole(from, to);
        eprintln!("    cut {} -> {} (one way)", self.ip(from), self.ip(to));
    }

    fn blackhole(&self, from: usize, to: usize) {
        let (ns, dst) = (self.ns(from).to_string(), self.ip(to));
        let mut cuts = self.cuts.lock().unwrap_or_else(|e| e.into_inner());
        if cuts.contains(&(ns.clone(), dst.clone())) {
            return;
        }
        ip_ok(&["-n", &ns, "route", "add", "blackhole", &format!("{dst}/32")]);
        cuts.insert((ns, dst));
    }

    /// Removes every cut.
    pub fn heal(&self) {
        let cuts = std::mem::take(&mut *self.cuts.lock().unwrap_or_else(|e| e.into_inner()));
        for (ns, dst) in &cuts {
            ip_ok(&["-n", ns, "route", "del", "blackhole", &format!("{dst}/32")]);
        }
        eprintln!("    healed {} cut routes", cuts.len());
    }

    /// Deletes the namespaces, the veths and the bridge, ignoring what is gone.
    fn delete_all(&self) {
        for ns in &self.namespaces {
            let _ = ip(&["netns", "del", ns]);
        }
        // A namespace still held by a process keeps its veth; deleting the root
        // end deletes the pair.
        for veth in &self.veths {
            let _ = ip(&["link", "del", veth]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        self.delete_all();
        let left: Vec<String> = ip(&["netns", "list"])
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| self.namespaces.iter().any(|m| m == n))
            .map(str::to_string)
            .collect();
        if !left.is_empty() {
            eprintln!("    WARNING: namespaces left behind: {left:?}");
        }
    }
}

// ---------------------------------------------------------------------------------
// NetNode

/// A `[cluster]` section with the herd's default timings written out (heartbeat
/// 100 ms, election 0.5–1 s, beats 200 ms, lease 1 s, failover after 1.5 s) and
/// `machine` (how each node's own machine is watched: "local", "none", ...).
pub fn default_timings_toml(machine: &str) -> String {
    format!(
        "[cluster]\nheartbeat = \"100ms\"\nelection_min = \"500ms\"\nelection_max = \"1s\"\n\
         beat_interval = \"200ms\"\nlease = \"1s\"\nfailover_after = \"1500ms\"\n\
         machine = \"{machine}\"\n"
    )
}

/// How to run one node.
#[derive(Debug, Clone, Default)]
pub struct NodeSpec {
    pub id: u64,
    /// `ip:port` it listens on and the others reach it at (`node.grpc`).
    pub addr: String,
    /// Run inside this namespace (`ip netns exec`); None: the root namespace.
    pub netns: Option<String>,
    /// The API token (written to a file, `node.api_token_file`, and given to the CLI).
    pub token: Option<String>,
    /// `[tls]`: the CA, the node's certificate and key. The CLI gets `--ca`.
    pub tls: Option<TlsFiles>,
    /// Appended to herd.toml as is (a `[cluster]` section).
    pub extra_toml: String,
    /// Lines added to herd.toml's `[ssh]` section (`user`, `key`), for nodes that
    /// scrape SSH targets; known_hosts is the node dir's (see [`NetNode::trust`]).
    pub ssh_toml: String,
    /// Run the process under libfaketime (Debian's `faketime`) with its wall clock
    /// offset by what [`NetNode::set_clock_offset`] writes (0 at start); the
    /// monotonic clock is left alone, as an NTP step or a VM resume leaves it.
    pub faketime: bool,
}

/// Where Debian's libfaketime is, if installed.
pub fn libfaketime() -> Option<PathBuf> {
    [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib",
    ]
    .iter()
    .map(|d| Path::new(d).join("faketime/libfaketime.so.1"))
    .find(|p| p.exists())
}

/// The PEM files of one node (`herd certs` writes them).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// `DIR/ca.pem`, `DIR/node-ID.pem`, `DIR/node-ID.key`, as `herd certs` names them.
    pub fn of_node(dir: &Path, id: u64) -> TlsFiles {
        TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("node-{id}.pem")),
            key: dir.join(format!("node-{id}.key")),
        }
    }
}

/// The herd secret of the nodes of a lab without TLS.
pub const LAB_SECRET: &str = "netns-lab-herd-secret-0123456789abcdef";

/// One `herd node` process in a temp dir; killed on drop.
pub struct NetNode {
    dir: TempDir,
    spec: NodeSpec,
    child: Option<Child>,
    files_written: AtomicUsize,
}

impl NetNode {
    /// Writes herd.toml and starts the node; returns once `herd status` answers.
    /// Panics with the node's log when it does not.
    pub fn start(spec: NodeSpec) -> NetNode {
        let id = spec.id;
        NetNode::try_start(spec).unwrap_or_else(|e| panic!("herd node {id} did not start: {e}"))
    }

    /// Like [`NetNode::start`], but says why (with the tail of the node's log) when
    /// it does not answer, for a caller that retries on another port.
    pub fn try_start(spec: NodeSpec) -> Result<NetNode, String> {
        crate::herd_bin();
        let dir = tempfile::Builder::new()
            .prefix(&format!("herd-net-{}-", spec.id))
            .tempdir()
            .expect("cannot create a temp dir");
        let mut node = NetNode {
            dir,
            spec,
            child: None,
            files_written: AtomicUsize::new(0),
        };
        if let Some(token) = &node.spec.token {
            std::fs::write(node.token_path(), format!("{token}\n")).expect("writing api-token");
        }
        node.write_config();
        match node.spawn() {
            Ok(()) => Ok(node),
            Err(e) => Err(format!("{e}\n{}", node.log_tail(40))),
        }
    }

    pub fn id(&self) -> u64 {
        self.spec.id
    }

    /// `ip:port` of its gRPC port.
    pub fn addr(&self) -> &str {
        &self.spec.addr
    }

    /// The host part of [`NetNode::addr`].
    pub fn host(&self) -> &str {
        self.spec
            .addr
            .rsplit_once(':')
            .map_or(self.spec.addr.as_str(), |(h, _)| h)
    }

    /// The file libfaketime reads the wall-clock offset from.
    fn clock_file(&self) -> PathBuf {
        self.dir.path().join("faketime.rc")
    }

    /// Steps the wall clock of a node started with `faketime` to `offset_s` seconds
    /// from the real time (0: the real time again); libfaketime takes it up within
    /// a second. The monotonic clock does not move.
    pub fn set_clock_offset(&self, offset_s: i64) {
        assert!(
            self.spec.faketime,
            "node {} does not run under faketime",
            self.spec.id
        );
        let tmp = self.dir.path().join("faketime.rc.new");
        std::fs::write(&tmp, format!("{offset_s:+}\n")).expect("writing the clock offset");
        std::fs::rename(&tmp, self.clock_file()).expect("installing the clock offset");
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `ip:port` of its HTTP face (`node.http` is port 0: the log names the port).
    pub fn http_addr(&self) -> Option<String> {
        self.log()
            .lines()
            .filter(|l| l.contains("HTTP API listening"))
            .find_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                Some(v["fields"]["http"].as_str()?.to_string())
            })
    }

    fn token_path(&self) -> PathBuf {
        self.dir.path().join("api-token")
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("herd.toml")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("node.log")
    }

    /// The node's stderr (JSON log lines).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path(), lines)
    }

    /// Writes the stacks of every thread of the running node (gdb) to `threads.txt`
    /// in its dir, which a failed test keeps: a node that hangs can be read later.
    fn dump_threads(&self) {
        let Some(pid) = self.pid() else { return };
        let pid = pid.to_string();
        // Bounded by coreutils' timeout: this runs while a test unwinds, where a
        // panic (or a hang) would lose the report.
        let args = [
            "30",
            "gdb",
            "-p",
            &pid,
            "-batch",
            "-ex",
            "thread apply all bt",
        ];
        if let Ok(out) = Command::new("timeout").args(args).output() {
            let _ = std::fs::write(self.dir.path().join("threads.txt"), out.stdout);
        }
    }

    pub fn dump_logs(&self) {
        eprintln!(
            "----- herd node {} at {}{} ({}), last lines -----\n{}\n-----",
            self.spec.id,
            self.spec.addr,
            self.spec
                .netns
                .as_deref()
                .map(|n| format!(" in {n}"))
                .unwrap_or_default(),
            self.log_path().display(),
            self.log_tail(80)
        );
    }

    /// `herd --node ADDR [--token-file F] [--ca CA] ARGS...` from the root
    /// namespace, bounded.
    pub fn cli(&self, args: &[&str]) -> Output {
        let ca = self.spec.tls.as_ref().map(|t| t.ca.clone());
        self.cli_with(ca.as_deref(), args)
    }

    /// Like [`NetNode::cli`] with `--ca ca` instead of the node's CA (None: no `--ca`).
    pub fn cli_with(&self, ca: Option<&Path>, args: &[&str]) -> Output {
        let mut cmd = Command::new(crate::herd_bin());
        cmd.arg("--node").arg(&self.spec.addr);
        if self.spec.token.is_some() {
            cmd.arg("--token-file").arg(self.token_path());
        }
        if let Some(ca) = ca {
            cmd.arg("--ca").arg(ca);
        }
        cmd.args(args);
        clean_env(&mut cmd);
        run_bounded(&mut cmd, CLI_TIMEOUT)
    }

    /// Like [`NetNode::cli`], but panics unless it exits 0; returns stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        if !out.status.success() {
            panic!(
                "`herd {}` on node {} failed with {}:\nstdout: {}\nstderr: {}",
                args.join(" "),
                self.spec.id,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `herd status --json`, parsed; None when the CLI fails (printed).
    pub fn try_status(&self) -> Option<Status> {
        let out = self.cli(&["status", "--json"]);
        if !out.status.success() {
            eprintln!(
                "    herd status on node {} failed ({}): {}",
                self.spec.id,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        let raw: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "`herd status --json` on node {} printed no JSON ({e}): {}",
                self.spec.id,
                String::from_utf8_lossy(&out.stdout)
            )
        });
        let status = Status::parse(raw.clone()).unwrap_or_else(|e| {
            panic!(
                "`herd status --json` on node {} does not have the documented shape: {e}\n{raw:#}",
                self.spec.id
            )
        });
        assert_eq!(
            status.node_id, self.spec.id,
            "node_id of node {}'s status",
            self.spec.id
        );
        Some(status)
    }

    /// `herd status --json`; panics when the CLI fails.
    pub fn status(&self) -> Status {
        self.try_status()
            .unwrap_or_else(|| panic!("`herd status --json` on node {} failed", self.spec.id))
    }

    /// Writes `fleet` to a new file and runs `herd apply` on it; panics unless it
    /// exits 0. Returns stdout.
    pub fn apply(&self, fleet: &str) -> String {
        let n = self.files_written.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.path().join(format!("fleet-{n}.toml"));
        std::fs::write(&path, fleet).expect("writing fleet.toml");
        self.cli_ok(&["apply", &path.display().to_string()])
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Keeps the node's dir (config, data, log) when it is dropped; returns its path.
    pub fn keep(&mut self) -> PathBuf {
        self.dir.disable_cleanup(true);
        self.dir.path().to_path_buf()
    }

    /// The API token, when the node has one.
    pub fn token(&self) -> Option<&str> {
        self.spec.token.as_deref()
    }

    /// Appends `line` to the node's known_hosts file.
    pub fn trust(&self, line: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.path().join("known_hosts"))
            .expect("opening known_hosts");
        writeln!(f, "{line}").expect("writing known_hosts");
    }

    /// The node's pid while it runs.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// SIGSTOP: the process is frozen (as by a long stall) until [`NetNode::resume`].
    pub fn pause(&self) {
        if let Some(pid) = self.pid() {
            signal(pid, libc::SIGSTOP);
        }
    }

    /// SIGCONT after [`NetNode::pause`].
    pub fn resume(&self) {
        if let Some(pid) = self.pid() {
            signal(pid, libc::SIGCONT);
        }
    }

    /// SIGTERM (the node's ordered stop), and wait for it to exit; SIGKILL when it
    /// does not within the wait. Returns its exit status (None: it had to be killed).
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        signal(child.id() as i32, libc::SIGTERM);
        let status = wait_exit(&mut child, STOP_TIMEOUT);
        if status.is_none() {
            signal(child.id() as i32, libc::SIGKILL);
            let _ = wait_exit(&mut child, EXIT_TIMEOUT);
        }
        status
    }

    /// Starts the node again with the same config, data dir and address (after
    /// [`NetNode::kill9`] or [`NetNode::stop`]); Err with the log's tail when it
    /// does not answer.
    pub fn restart(&mut self) -> Result<(), String> {
        if self.is_running() {
            return Err(format!("node {} is still running", self.spec.id));
        }
        self.spawn()
            .map_err(|e| format!("{e}\n{}", self.log_tail(40)))
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id() as i32, libc::SIGKILL);
            if wait_exit(&mut child, EXIT_TIMEOUT).is_none() {
                panic!("herd node {} did not die after SIGKILL", self.spec.id);
            }
        }
    }

    fn write_config(&self) {
        let s = &self.spec;
        let mut text = format!(
            "[node]\nid = {}\ngrpc = \"{}\"\nhttp = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n",
            s.id,
            s.addr,
            self.dir.path().join("data").display()
        );
        if s.token.is_some() {
            text.push_str(&format!(
                "api_token_file = \"{}\"\n",
                self.token_path().display()
            ));
        }
        // The nodes' own machines are watched with the local transport; no SSH.
        text.push_str(&format!(
            "\n[ssh]\nknown_hosts = \"{}\"\n{}\n[store]\nflush_interval = \"200ms\"\n",
            self.dir.path().join("known_hosts").display(),
            s.ssh_toml
        ));
        if let Some(t) = &s.tls {
            text.push_str(&format!(
                "\n[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
                t.ca.display(),
                t.cert.display(),
                t.key.display()
            ));
        }
        if !s.extra_toml.is_empty() {
            text.push('\n');
            text.push_str(&s.extra_toml);
            if !s.extra_toml.ends_with('\n') {
                text.push('\n');
            }
        }
        let known_hosts = self.dir.path().join("known_hosts");
        if !known_hosts.exists() {
            std::fs::write(known_hosts, "").expect("writing known_hosts");
        }
        std::fs::write(self.config_path(), text).expect("writing herd.toml");
    }

    /// Starts the process (in its namespace) and waits until `herd status` answers.
    fn spawn(&mut self) -> Result<(), String> {
        let mut cmd = match &self.spec.netns {
            Some(ns) => {
                // `ip netns exec` enters the namespace and execs herd (same pid).
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(crate::herd_bin());
                c
            }
            None => Command::new(crate::herd_bin()),
        };
        cmd.args(["--log-format", "json", "node", "--config"])
            .arg(self.config_path());
        clean_env(&mut cmd);
        if self.spec.faketime {
            let lib =
                libfaketime().ok_or("faketime asked for, but libfaketime is not installed")?;
            let file = self.clock_file();
            if !file.exists() {
                std::fs::write(&file, "+0\n")
                    .map_err(|e| format!("writing {}: {e}", file.display()))?;
            }
            // Re-read the offset file at most once a second; only CLOCK_REALTIME moves.
            cmd.env("LD_PRELOAD", lib)
                .env("FAKETIME_TIMESTAMP_FILE", &file)
                .env("FAKETIME_CACHE_DURATION", "1")
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
        if self.spec.tls.is_none() {
            // Beyond loopback without TLS a node needs the herd secret; the lab's
            // nodes share one (set through the environment, beside extra_toml's
            // [cluster] section).
            let secret = self.dir.path().join("herd-secret");
            std::fs::write(&secret, LAB_SECRET).expect("writing the herd secret");
            cmd.env("HERD_CLUSTER__SECRET_FILE", &secret);
        }
        let stdout = self.dir.path().join("node.out");
        let mut child = spawn_logged(&mut cmd, &stdout, &self.log_path());
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("exited with {status} while starting"));
            }
            if self.cli(&["status", "--json"]).status.success() {
                self.child = Some(child);
                return Ok(());
            }
            if start.elapsed() > READY_TIMEOUT {
                signal(child.id() as i32, libc::SIGKILL);
                let _ = child.wait();
                return Err(format!("did not answer within {READY_TIMEOUT:?}"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for NetNode {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_threads();
        }
        self.kill9();
        if std::thread::panicking() {
            self.dump_logs();
            // The whole log, config and data stay for a post-mortem.
            self.dir.disable_cleanup(true);
            eprintln!(
                "    kept node {}'s dir {}",
                self.spec.id,
                self.dir.path().display()
            );
        }
    }
}

/// Keeps the caller's HERD_* variables (they would override the fixture's settings)
/// and proxy settings (a node must not send anything anywhere else) away from the
/// processes under test.
fn clean_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy().to_ascii_lowercase();
        if k.starts_with("herd_") || k.ends_with("_proxy") {
            cmd.env_remove(key);
        }
    }
}
