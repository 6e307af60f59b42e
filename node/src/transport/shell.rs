//! A long-lived shell per SSH target: one session channel runs `exec /bin/sh`
//! once, and each command is written to its stdin and answered with framed
//! output, so a scrape costs the target a subshell fork and the command's own
//! processes, not an sshd session, a login shell and its rc files each time.
//!
//! **Framing.** A command `C` is sent as
//! `( C\n) </dev/null; printf '\n@@herd-end:TAG:%d\n' "$?"; printf '\n@@herd-end:TAG\n' >&2`.
//! The subshell keeps the shell clean (an `exit`, an `exec 2>/dev/null`, a `cd` of
//! the command stay in it) and `</dev/null` keeps the command off the shell's
//! input. A [`Script`](super::Script) with an inline form (Herd's own vitals
//! command, which promises to leave the shell as it found it) is sent as
//! `{ C\n} </dev/null; ...` instead: run by the shell itself, one fork fewer. The command's stdout is everything before `\n@@herd-end:TAG:` (the
//! newline is the marker's), its exit status the number after it; its stderr is
//! everything before the stderr marker. `TAG` is a random session tag and a
//! counter: output cannot fake it.
//!
//! **When it is not used.** The first command opens the shell and sends a probe
//! (`printf '@@herd-ready:TAG\n'`); an account whose sshd runs a forced command,
//! or a restricted login shell that refuses `exec /bin/sh`, never answers it: the
//! transport then uses an exec channel per command for good (the reason is kept
//! for `herd status`). A command that times out, prints too much, or whose shell
//! ends closes the shell; the next command opens a new one. A command that comes
//! while the shell is busy runs on an exec channel of its own.
use std::time::Duration;

use russh::client::{Handle, Msg};
use russh::{Channel, ChannelMsg};

use super::{ExecOutput, TransportError, MAX_STDERR_BYTES};

/// Longest wait for a new shell to answer its probe.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// A shell on a session channel.
pub struct Shell {
    channel: Channel<Msg>,
    tag: String,
    count: u64,
}

/// Why a shell command did not give an answer.
pub enum ShellError {
    /// The account does not give a plain shell (forced command, restricted shell).
    Refused(String),
    /// The command failed in a way the caller reports (timeout, too much output,
    /// the session broke); the shell is closed.
    Failed(TransportError),
}

impl Shell {
    /// Opens a channel, starts `exec /bin/sh` in it and waits for its probe.
    pub async fn open<H: russh::client::Handler>(
        handle: &Handle<H>,
        addr: &str,
    ) -> Result<Shell, ShellError> {
        let broken = |message: String| {
            ShellError::Failed(TransportError::SessionBroken {
                addr: addr.to_string(),
                message,
            })
        };
        let mut channel =
            match tokio::time::timeout(PROBE_TIMEOUT, handle.channel_open_session()).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => return Err(broken(format!("cannot open a channel: {e}"))),
                Err(_) => return Err(broken("no channel within the probe's time".into())),
            };
        let tag = format!("{:016x}", rand::random::<u64>());
        if let Err(e) = channel.exec(true, "exec /bin/sh").await {
            let _ = channel.close().await;
            return Err(broken(format!("exec refused: {e}")));
        }
        let probe = format!("printf '@@herd-ready:{tag}\\n'\n");
        if let Err(e) = channel.data(probe.as_bytes()).await {
            let _ = channel.close().await;
            return Err(broken(format!("cannot write to the shell: {e}")));
        }
        let ready = format!("@@herd-ready:{tag}\n");
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + PROBE_TIMEOUT;
        loop {
            let msg = match tokio::time::timeout_at(deadline, channel.wait()).await {
                Ok(m) => m,
                Err(_) => {
                    let _ = channel.close().await;
                    return Err(ShellError::Refused(format!(
                        "`exec /bin/sh` did not answer within {PROBE_TIMEOUT:?} (a forced command or a restricted shell?)"
                    )));
                }
            };
            match msg {
                Some(ChannelMsg::Data { data }) => {
                    if seen.len() < 64 * 1024 {
                        seen.extend_from_slice(&data);
                    }
                    if let Some(pos) = find(&seen, ready.as_bytes()) {
                        if seen[pos + ready.len()..].is_empty() {
                            return Ok(Shell {
                                channel,
                                tag,
                                count: 0,
                            });
                        }
                    }
                }
                Some(ChannelMsg::Failure) => {
                    let _ = channel.close().await;
                    return Err(ShellError::Refused(
                        "the server refused `exec /bin/sh`".into(),
                    ));
                }
                Some(ChannelMsg::ExitStatus { exit_status }) => {
                    let _ = channel.close().await;
                    return Err(ShellError::Refused(format!(
                        "`exec /bin/sh` ended at once (exit {exit_status}): a forced command or a restricted shell"
                    )));
                }
                Some(ChannelMsg::Close) | Some(ChannelMsg::Eof) | None => {
                    let _ = channel.close().await;
                    return Err(ShellError::Refused(
                        "the channel of `exec /bin/sh` closed before it answered".into(),
                    ));
                }
                Some(_) => {}
            }
        }
    }

    /// Runs `script` (in a subshell, or its inline form in the shell itself) and
    /// reads its framed answer. On an error the shell is closed (the caller drops
    /// it).
    pub async fn run(
        &mut self,
        script: super::Script<'_>,
        timeout: Duration,
        max_output: usize,
    ) -> Result<ExecOutput, TransportError> {
        self.count += 1;
        let tag = format!("{}-{}", self.tag, self.count);
        let body = match script.inline {
            Some(inline) => format!("{{ {inline}\n}}"),
            None => format!("( {}\n)", script.standalone),
        };
        let script = format!(
            "{body} </dev/null; printf '\\n@@herd-end:{tag}:%d\\n' \"$?\"; printf '\\n@@herd-end:{tag}\\n' >&2\n"
        );
        let deadline = tokio::time::Instant::now() + timeout;
        if let Err(e) = self.channel.data(script.as_bytes()).await {
            return Err(TransportError::Setup(format!(
                "cannot write to the shell: {e}"
            )));
        }
        let out_mark = format!("\n@@herd-end:{tag}:");
        let err_mark = format!("\n@@herd-end:{tag}\n");
        let mut stdout: Vec<u8> = Vec::new();
        let mut stderr: Vec<u8> = Vec::new();
        let mut status: Option<(usize, u32)> = None;
        let mut err_done: Option<usize> = None;
        // The marker may come in pieces: keep a little beyond the limit.
        let cap = max_output + out_mark.len() + 16;
        loop {
            if let (Some((end, code)), Some(err_end)) = (status, err_done) {
                stdout.truncate(end);
                stderr.truncate(err_end.min(MAX_STDERR_BYTES));
                return Ok(ExecOutput {
                    stdout,
                    stderr,
                    exit_status: Some(code),
                });
            }
            let msg = match tokio::time::timeout_at(deadline, self.channel.wait()).await {
                Ok(m) => m,
                Err(_) => {
                    self.close().await;
                    return Err(TransportError::CommandTimeout { after: timeout });
                }
            };
            match msg {
                Some(ChannelMsg::Data { data }) => {
                    if status.is_some() {
                        continue;
                    }
                    let from = stdout.len().saturating_sub(out_mark.len() + 24);
                    stdout.extend_from_slice(&data);
                    if let Some(pos) = find(&stdout[from..], out_mark.as_bytes()).map(|p| p + from)
                    {
                        let rest = &stdout[pos + out_mark.len()..];
                        if let Some(nl) = rest.iter().position(|&b| b == b'\n') {
                            let code = std::str::from_utf8(&rest[..nl])
                                .ok()
                                .and_then(|s| s.parse::<u32>().ok())
                                .unwrap_or(255);
                            status = Some((pos, code));
                        }
                    } else if stdout.len() > cap {
                        self.close().await;
                        return Err(TransportError::OutputTooLarge { limit: max_output });
                    }
                }
                Some(ChannelMsg::ExtendedData { data, .. }) => {
                    if err_done.is_some() {
                        continue;
                    }
                    let from = stderr.len().saturating_sub(err_mark.len());
                    stderr.extend_from_slice(&data);
                    if let Some(pos) = find(&stderr[from..], err_mark.as_bytes()).map(|p| p + from)
                    {
                        err_done = Some(pos);
                    } else if stderr.len() > MAX_STDERR_BYTES + err_mark.len() {
                        // Keep the head for the message and the tail for the marker.
                        let tail = stderr.split_off(stderr.len() - err_mark.len());
                        stderr.truncate(MAX_STDERR_BYTES);
                        stderr.extend_from_slice(&tail);
                    }
                }
                Some(ChannelMsg::Close) | Some(ChannelMsg::Eof) | None => {
                    self.close().await;
                    return Err(TransportError::Setup(
                        "the target's shell ended while running the command".into(),
                    ));
                }
                Some(_) => {}
            }
        }
    }

    pub async fn close(&mut self) {
        let _ = self.channel.close().await;
    }
}

/// Where `needle` first occurs in `hay` (a vectorised search: a vitals answer is
/// a few KiB, and a naive window compare cost a memcmp call per byte of it).
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

#[cfg(test)]
mod tests {
    use super::find;

    #[test]
    fn markers_are_found_anywhere() {
        assert_eq!(find(b"abc\n@@herd-end:t:0\n", b"\n@@herd-end:t:"), Some(3));
        assert_eq!(find(b"", b"x"), None);
    }
}
