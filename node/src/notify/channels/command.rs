//! A local program: `sh -c COMMAND` with Herd's JSON document on stdin and the first
//! notification in `HERD_*` environment variables. Exit 0 is success; anything else
//! is retryable. The command runs in its own process group, killed as a whole when
//! the send times out or is cancelled.
use std::fmt;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::{payload, ChannelError, SendError};
use crate::config::channels::CommandChannel;
use crate::model::Notification;

/// Stderr kept for the error message; the rest is read and dropped.
const MAX_STDERR: u64 = 64 * 1024;
/// After the shell exits, how long to wait for stderr to close (a background child
/// may hold it open).
const STDERR_GRACE: Duration = Duration::from_millis(200);

pub(super) struct Command {
    command: String,
}

impl Command {
    pub(super) fn build(spec: &CommandChannel) -> Result<Command, ChannelError> {
        Ok(Command {
            command: spec.command.clone(),
        })
    }

    pub(super) async fn send(
        &self,
        group: &[Notification],
        _deadline: Instant,
    ) -> Result<(), SendError> {
        let first = &group[0];
        let stdin_doc = payload::herd_document(group).to_string();
        let mut cmd = tokio::process::Command::new("sh");
        cmd.arg("-c")
            .arg(&self.command)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env("HERD_ALERT_KIND", first.kind.as_str())
            .env("HERD_ALERT_RULE", &first.alert.rule)
            .env("HERD_ALERT_TARGET", &first.alert.target)
            .env("HERD_ALERT_SEVERITY", first.alert.severity.as_str())
            .env("HERD_ALERT_SUMMARY", &first.alert.summary)
            .env("HERD_ALERT_ID", &first.alert.id)
            .env("HERD_IDEMPOTENCY_KEY", &first.idempotency_key)
            .env("HERD_CHANNEL", &first.channel)
            .env("HERD_NOTIFICATIONS", group.len().to_string())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| SendError::Retryable(format!("cannot start sh: {e}")))?;
        // Kills the whole group if this future is dropped before the shell exits.
        let mut guard = GroupKill(child.id());

        let mut stdin = child.stdin.take();
        let write = async move {
            if let Some(s) = stdin.as_mut() {
                // A command that ignores stdin closes the pipe: not an error.
                let _ = s.write_all(stdin_doc.as_bytes()).await;
                let _ = s.shutdown().await;
            }
            drop(stdin);
        };
        let mut stderr = child.stderr.take();
        let mut err_buf = Vec::new();
        let status = {
            let read_err = async {
                if let Some(s) = stderr.as_mut() {
                    let _ = s.take(MAX_STDERR).read_to_end(&mut err_buf).await;
                    let _ = tokio::io::copy(s, &mut tokio::io::sink()).await;
                }
            };
            tokio::pin!(read_err);
            let wait = async {
                let (_, status) = tokio::join!(write, child.wait());
                status
            };
            tokio::pin!(wait);
            let mut err_done = false;
            let status = loop {
                tokio::select! {
                    s = &mut wait => break s,
                    _ = &mut read_err, if !err_done => err_done = true,
                }
            };
            if !err_done {
                let _ = tokio::time::timeout(STDERR_GRACE, &mut read_err).await;
            }
            status
        };
        // The shell exited: leave what it started in the background alone.
        guard.0 = None;
        let status =
            status.map_err(|e| SendError::Retryable(format!("waiting for the command: {e}")))?;
        if status.success() {
            return Ok(());
        }
        let stderr_text = String::from_utf8_lossy(&err_buf);
        let first_line = stderr_text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("");
        let how = match status.code() {
            Some(code) => format!("command exited with status {code}"),
            None => format!("command ended by {status}"),
        };
        Err(SendError::Retryable(if first_line.is_empty() {
            how
        } else {
            format!("{how}: {}", crate::model::text::shorten(first_line, 300))
        }))
    }
}

/// SIGKILL to a process group on drop, unless disarmed.
struct GroupKill(Option<u32>);

impl Drop for GroupKill {
    fn drop(&mut self) {
        if let Some(pid) = self.0.take() {
            if let Ok(pid) = i32::try_from(pid) {
                // SAFETY: kill(2) with a negative pid signals that process group; the
                // group was created for this child (process_group(0)).
                unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                }
            }
        }
    }
}

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Command")
            .field("command", &self.command)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant as StdInstant;

    use super::super::testkit::notification;
    use super::super::Channel;
    use super::*;
    use crate::config::channels::ChannelSpec;
    use crate::model::NotifyKind;

    fn channel(command: &str) -> Channel {
        Channel::build(&ChannelSpec::Command(CommandChannel {
            name: "cmd".into(),
            command: command.into(),
            timeout: None,
            max_attempts: None,
            backoff: None,
            backoff_max: None,
            fallback: vec![],
            rate_limit_per_min: None,
            group_window: None,
            max_age: None,
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn command_gets_json_on_stdin_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("notify.sh");
        std::fs::write(
            &script,
            "#!/bin/sh\ncat > \"$OUT/stdin.json\"\nenv | grep '^HERD_' | sort > \"$OUT/env.txt\"\n",
        )
        .unwrap();
        let command = format!("OUT='{}' sh '{}'", dir.path().display(), script.display());
        let ch = channel(&command);
        let a = notification("disk-full", "web-1", NotifyKind::Firing, 1);
        let b = notification("inode-full", "web-1", NotifyKind::Firing, 2);
        ch.send(&[a.clone(), b.clone()], Duration::from_secs(5))
            .await
            .unwrap();
        let stdin: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("stdin.json")).unwrap()).unwrap();
        assert_eq!(stdin, payload::herd_document(&[a.clone(), b]));
        assert_eq!(stdin["notifications"][0]["alert"]["rule"], "disk-full");
        let env = std::fs::read_to_string(dir.path().join("env.txt")).unwrap();
        for line in [
            "HERD_ALERT_KIND=firing".to_string(),
            "HERD_ALERT_RULE=disk-full".to_string(),
            "HERD_ALERT_TARGET=web-1".to_string(),
            "HERD_ALERT_SEVERITY=critical".to_string(),
            "HERD_ALERT_SUMMARY=disk-full on web-1".to_string(),
            format!("HERD_IDEMPOTENCY_KEY={}", a.idempotency_key),
            "HERD_NOTIFICATIONS=2".to_string(),
        ] {
            assert!(env.lines().any(|l| l == line), "{line} not in {env}");
        }
    }

    #[tokio::test]
    async fn command_failure_is_retryable_with_stderr() {
        let ch = channel("cat >/dev/null; echo 'mail relay down' >&2; echo more >&2; exit 3");
        let n = [notification("disk-full", "web-1", NotifyKind::Firing, 1)];
        let e = ch.send(&n, Duration::from_secs(5)).await.unwrap_err();
        assert_eq!(
            e,
            SendError::Retryable("command exited with status 3: mail relay down".into())
        );
        // A command that ignores its stdin still succeeds.
        channel("true")
            .send(&n, Duration::from_secs(5))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn command_hanging_is_killed_at_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let ch = channel(&format!(
            "sleep 30 & echo $! > '{}'; wait",
            pidfile.display()
        ));
        let n = [notification("disk-full", "web-1", NotifyKind::Firing, 1)];
        let started = StdInstant::now();
        let e = ch.send(&n, Duration::from_millis(500)).await.unwrap_err();
        assert!(e.is_retryable(), "{e}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The background sleep, in the command's process group, is gone too (or a
        // zombie waiting for its reaper).
        let gone = || match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        };
        let until = StdInstant::now() + Duration::from_secs(3);
        while !gone() && StdInstant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(gone(), "sleep {pid} still runs");
    }

    #[tokio::test]
    async fn command_background_child_does_not_hold_the_send() {
        let ch = channel("sleep 5 & exit 0");
        let n = [notification("disk-full", "web-1", NotifyKind::Firing, 1)];
        let started = StdInstant::now();
        ch.send(&n, Duration::from_secs(3)).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
