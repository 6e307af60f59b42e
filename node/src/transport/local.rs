//! The `local` transport: the node's own host, through `sh -c`, no SSH.
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::Command;

use super::{ExecOutput, TransportError, MAX_STDERR_BYTES};

#[derive(Debug, Default)]
pub struct LocalTransport;

impl LocalTransport {
    pub async fn exec(
        &self,
        command: &str,
        timeout: Duration,
        max_output: usize,
    ) -> Result<ExecOutput, TransportError> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(command)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // A timed-out command must not outlive its scrape.
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| TransportError::Setup(format!("cannot start sh: {e}")))?;
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(TransportError::Setup("sh started without pipes".into()));
        };
        let run = async {
            let mut out = Vec::new();
            let mut err = Vec::new();
            // One byte more than allowed tells "too large" from "exactly the limit".
            let mut stdout = stdout.take(max_output as u64 + 1);
            let mut stderr = stderr.take(MAX_STDERR_BYTES as u64);
            let (a, b) = tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
            a.and(b)
                .map_err(|e| TransportError::Setup(format!("reading output: {e}")))?;
            if out.len() > max_output {
                return Err(TransportError::OutputTooLarge { limit: max_output });
            }
            let status = child
                .wait()
                .await
                .map_err(|e| TransportError::Setup(format!("waiting for sh: {e}")))?;
            Ok(ExecOutput {
                stdout: out,
                stderr: err,
                exit_status: status.code().map(|c| c as u32),
            })
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(result) => result,
            Err(_) => Err(TransportError::CommandTimeout { after: timeout }),
        }
    }
}
