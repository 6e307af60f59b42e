//! A real OpenSSH sshd on 127.0.0.1, with its own host key, an authorized client key
//! and a known_hosts file that lists it, all generated in a temp dir.
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Once;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::ports::free_port;
use crate::process::{generate_key, kill_tree, log_tail, run_bounded, spawn_logged};

/// The account herd logs in as: `/bin/sh`, no password, never root (root's
/// ~/.bashrc is slow and sshd is told to refuse root anyway).
pub const SSH_USER: &str = "herdtest";

const SSHD: &str = "/usr/sbin/sshd";
/// Longest wait for sshd to listen.
const START_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Sshd {
    dir: TempDir,
    /// The address it listens on (127.0.0.1 unless [`Sshd::start_on`]).
    ip: String,
    /// The network namespace it runs in ([`Sshd::start_in_netns`]); None: this one.
    netns: Option<String>,
    port: u16,
    child: Option<Child>,
    host_key_pub: String,
}

impl Sshd {
    /// Generates keys and config and starts sshd on a free port of 127.0.0.1.
    pub fn start() -> Sshd {
        Sshd::start_on("127.0.0.1")
    }

    /// Like [`Sshd::start`], listening on `ip` (an address of this host, e.g. a
    /// network lab's bridge, so that nodes in namespaces reach it).
    pub fn start_on(ip: &str) -> Sshd {
        Sshd::start_with(ip, None)
    }

    /// Like [`Sshd::start_on`], run in the network namespace `netns` (`ip netns
    /// exec`) and listening on `ip`, an address of that namespace: a "server" of its
    /// own, which this namespace reaches over a [`crate::netns::NetLab`]'s bridge.
    /// The sessions it forks (and what they leave running) live in that namespace.
    pub fn start_in_netns(netns: &str, ip: &str) -> Sshd {
        Sshd::start_with(ip, Some(netns.to_string()))
    }

    fn start_with(ip: &str, netns: Option<String>) -> Sshd {
        crate::require_root();
        ensure_user();
        ensure_privsep_dir();
        let dir = tempfile::Builder::new()
            .prefix("herd-sshd-")
            .tempdir()
            .expect("cannot create a temp dir");
        // sshd reads authorized_keys as the login user: let it through.
        set_mode(dir.path(), 0o755);
        let host_key_pub = generate_key(&dir.path().join("ssh_host_ed25519_key"), "herd-test-host");
        let client_pub = generate_key(&dir.path().join("client_key"), "herd-test-client");
        let authorized = dir.path().join("authorized_keys");
        std::fs::write(&authorized, format!("{client_pub}\n")).expect("writing authorized_keys");
        set_mode(&authorized, 0o644);
        let mut sshd = Sshd {
            dir,
            ip: ip.to_string(),
            netns,
            port: 0,
            child: None,
            host_key_pub,
        };
        // Another process may take the free port before sshd binds it: retry once.
        for attempt in 0..2 {
            sshd.port = free_port();
            sshd.write_files();
            match sshd.spawn() {
                Ok(()) => return sshd,
                Err(e) if attempt == 0 => {
                    eprintln!("    sshd did not start ({e}); retrying on another port")
                }
                Err(e) => panic!("sshd did not start: {e}\n{}", sshd.log_tail(40)),
            }
        }
        unreachable!()
    }

    /// Kills sshd and every session process it forked (so open sessions break, as
    /// when a machine goes away), and waits for them.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_tree(&mut child);
        }
    }

    /// Starts sshd again on the same port with the same keys.
    pub fn restart(&mut self) {
        self.stop();
        // The port was ours a moment ago; give it a few tries in case of TIME_WAIT noise.
        let mut last = String::new();
        for _ in 0..3 {
            match self.spawn() {
                Ok(()) => return,
                Err(e) => {
                    last = e;
                    std::thread::sleep(Duration::from_millis(300));
                }
            }
        }
        panic!(
            "sshd did not restart on port {}: {last}\n{}",
            self.port,
            self.log_tail(40)
        );
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `IP:PORT` (127.0.0.1 unless started on another address), as a fleet.toml
    /// `address`.
    pub fn address(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The private key that sshd accepts for [`SSH_USER`].
    pub fn client_key(&self) -> PathBuf {
        self.dir.path().join("client_key")
    }

    /// Lets one more public key (an OpenSSH `.pub` line) log in as [`SSH_USER`].
    pub fn authorize(&self, public_line: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.path().join("authorized_keys"))
            .expect("opening authorized_keys");
        writeln!(f, "{}", public_line.trim()).expect("writing authorized_keys");
    }

    /// A known_hosts file with exactly [`Sshd::known_hosts_line`].
    pub fn known_hosts(&self) -> PathBuf {
        self.dir.path().join("known_hosts")
    }

    /// `[IP]:PORT ssh-ed25519 AAAA...` for this sshd's host key.
    pub fn known_hosts_line(&self) -> String {
        format!(
            "[{}]:{} {}",
            self.ip,
            self.port,
            key_only(&self.host_key_pub)
        )
    }

    /// The host key part of the known_hosts line ("ssh-ed25519 AAAA...").
    pub fn host_key(&self) -> String {
        key_only(&self.host_key_pub)
    }

    /// A known_hosts line for this sshd's address but with a freshly generated key
    /// that is NOT the one sshd presents: what a changed host key looks like.
    pub fn foreign_known_hosts_line(&self) -> String {
        let path = self.dir.path().join(format!("foreign_key_{}", free_port()));
        let public = generate_key(&path, "herd-test-foreign");
        format!("[{}]:{} {}", self.ip, self.port, key_only(&public))
    }

    /// sshd's log (its stderr, `-e`, at LogLevel VERBOSE), across restarts.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("sshd.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path(), lines)
    }

    /// Prints the tail of sshd's log to stderr.
    pub fn dump_logs(&self) {
        eprintln!(
            "----- sshd on port {} ({}), last lines -----\n{}\n-----",
            self.port,
            self.log_path().display(),
            self.log_tail(40)
        );
    }

    /// Puts `command="..."` before the client's key in authorized_keys: sshd runs
    /// `command` instead of what the client asks (in `$SSH_ORIGINAL_COMMAND`), from
    /// the next login on.
    pub fn force_command(&self, command: &str) {
        let path = self.dir.path().join("authorized_keys");
        let key = std::fs::read_to_string(&path).expect("authorized_keys");
        let key = key.lines().last().unwrap_or_default().to_string();
        let escaped = command.replace('\\', "\\\\").replace('"', "\\\"");
        std::fs::write(&path, format!("command=\"{escaped}\" {key}\n"))
            .expect("writing authorized_keys");
    }

    fn write_files(&self) {
        let d = self.dir.path().display();
        let config = format!(
            "Port {port}\n\
             ListenAddress {ip}\n\
             HostKey {d}/ssh_host_ed25519_key\n\
             AuthorizedKeysFile {d}/authorized_keys\n\
             StrictModes no\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             UsePAM no\n\
             PidFile none\n\
             PermitRootLogin no\n\
             AllowUsers {SSH_USER}\n\
             MaxSessions 10\n\
             LogLevel VERBOSE\n",
            port = self.port,
            ip = self.ip
        );
        std::fs::write(self.dir.path().join("sshd_config"), config).expect("writing sshd_config");
        std::fs::write(self.known_hosts(), format!("{}\n", self.known_hosts_line()))
            .expect("writing known_hosts");
    }

    /// Starts sshd and waits until it says it listens and the port answers.
    fn spawn(&mut self) -> Result<(), String> {
        let log = self.log_path();
        let offset = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                // `ip netns exec` execs sshd: the child's pid is sshd's.
                c.args(["netns", "exec", ns, SSHD]);
                c
            }
            None => Command::new(SSHD),
        };
        cmd.args(["-D", "-e", "-f"])
            .arg(self.dir.path().join("sshd_config"));
        let mut child = spawn_logged(&mut cmd, &self.dir.path().join("sshd.out"), &log);
        let listening = format!("Server listening on {} port {}.", self.ip, self.port);
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("sshd exited with {status}"));
            }
            if log_since(&log, offset).contains(&listening)
                && TcpStream::connect((self.ip.as_str(), self.port)).is_ok()
            {
                self.child = Some(child);
                return Ok(());
            }
            if start.elapsed() > START_TIMEOUT {
                kill_tree(&mut child);
                return Err(format!("sshd did not listen within {START_TIMEOUT:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        self.stop();
    }
}

fn key_only(public_line: &str) -> String {
    public_line
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

fn log_since(path: &Path, offset: u64) -> String {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        if f.seek(SeekFrom::Start(offset)).is_ok() {
            let _ = f.read_to_string(&mut text);
        }
    }
    text
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

/// sshd's privilege separation directory.
fn ensure_privsep_dir() {
    let dir = Path::new("/run/sshd");
    if !dir.is_dir() {
        // Another test may create it at the same moment: only the outcome matters.
        let _ = std::fs::create_dir_all(dir);
        set_mode(dir, 0o755);
    }
}

fn user_exists() -> bool {
    run_bounded(
        Command::new("id").args(["-u", SSH_USER]),
        Duration::from_secs(10),
    )
    .status
    .success()
}

/// Creates the login account once. `'*'` (not `!`): with `UsePAM no`, sshd refuses
/// a locked account but lets a key in when there is merely no password. Tests in
/// other processes may race to create it, so a failed `useradd` is checked again.
fn ensure_user() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let mut last = String::new();
        for _ in 0..20 {
            if user_exists() {
                return;
            }
            let out = run_bounded(
                Command::new("useradd").args(["-m", "-s", "/bin/sh", "-p", "*", SSH_USER]),
                Duration::from_secs(30),
            );
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            if user_exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!("cannot create the account {SSH_USER}: {last}");
    });
}
