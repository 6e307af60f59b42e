//! Child processes: spawning with logs to files, bounded runs, killing whole trees.
use std::fs::{File, OpenOptions};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Opens `path` for appending (created if missing), so that restarts keep one log.
fn append(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()))
}

/// Spawns `cmd` with stdin from /dev/null and stdout/stderr appended to files. The
/// child gets SIGKILL if the spawning thread dies (a test that is itself killed
/// leaves no server behind).
pub fn spawn_logged(cmd: &mut Command, stdout: &Path, stderr: &Path) -> Child {
    cmd.stdin(Stdio::null())
        .stdout(append(stdout))
        .stderr(append(stderr));
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"))
}

/// Runs `cmd` to completion, at most `timeout`; panics (after killing it) beyond.
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let pid = child.id() as i32;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => panic!("waiting for {cmd:?}: {e}"),
        Err(_) => {
            signal(pid, libc::SIGKILL);
            panic!("{cmd:?} did not finish within {timeout:?}");
        }
    }
}

/// Sends `sig` to `pid`, ignoring a process that is already gone.
pub fn signal(pid: i32, sig: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Waits for `child` to exit, at most `timeout`.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Ok(None) => return None,
            Err(e) => panic!("waiting for pid {}: {e}", child.id()),
        }
    }
}

/// Pids of every descendant of `pid`, read from /proc (children first found, then
/// theirs).
pub fn descendants(pid: i32) -> Vec<i32> {
    let mut parents: Vec<(i32, i32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(p) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
            let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
                continue;
            };
            if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|s| s.parse().ok()) {
                parents.push((p, ppid));
            }
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for &(p, pp) in &parents {
            if pp == parent && !out.contains(&p) {
                out.push(p);
                frontier.push(p);
            }
        }
    }
    out
}

/// SIGKILLs `child` and all its descendants (sshd's per-connection processes are
/// its children and outlive it otherwise), then reaps `child`.
pub fn kill_tree(child: &mut Child) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let pid = child.id() as i32;
    signal(pid, libc::SIGSTOP);
    for p in descendants(pid) {
        signal(p, libc::SIGKILL);
    }
    signal(pid, libc::SIGKILL);
    if wait_exit(child, Duration::from_secs(10)).is_none() {
        panic!("pid {pid} did not die after SIGKILL");
    }
}

/// The last `lines` lines of a log file (empty if there is none).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Generates an ed25519 key pair at `path` (and `path.pub`); returns the public
/// key line ("ssh-ed25519 AAAA... comment").
pub fn generate_key(path: &Path, comment: &str) -> String {
    let out = run_bounded(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
            .arg(path),
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "ssh-keygen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = std::path::PathBuf::from(format!("{}.pub", path.display()));
    std::fs::read_to_string(&public)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", public.display()))
        .trim()
        .to_string()
}

/// A child whose standard output is read line by line as it comes (a stream such
/// as `herd watch` or `curl -N`); killed when dropped.
pub struct LineStream {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    what: String,
}

impl LineStream {
    /// Spawns `cmd` with stdout piped and stderr appended to `stderr`.
    pub fn spawn(cmd: &mut Command, stderr: &Path) -> LineStream {
        use std::io::BufRead;
        let what = format!("{cmd:?}");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(append(stderr))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {what}: {e}"));
        let out = child.stdout.take().expect("stdout is piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        LineStream {
            child,
            lines,
            seen: Vec::new(),
            what,
        }
    }

    /// The first line from now on that `pick` accepts, within `timeout`; panics
    /// (showing every line read so far) when none comes.
    pub fn expect<T>(
        &mut self,
        timeout: Duration,
        what: &str,
        mut pick: impl FnMut(&str) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = pick(&line);
                    self.seen.push(line);
                    if let Some(v) = found {
                        return v;
                    }
                }
                Err(_) => panic!(
                    "{what}: not seen within {timeout:?} from {}; it printed:\n{}",
                    self.what,
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Whether the child has ended.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Every line read so far (by [`LineStream::expect`]), plus what is waiting.
    pub fn all(&mut self) -> &[String] {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        &self.seen
    }
}

impl Drop for LineStream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
