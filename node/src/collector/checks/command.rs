//! command: any command on the target under the Nagios plugin convention: exit
//! 0/1/2/3 = ok/warning/critical/unknown, the first line is the status text, and
//! perfdata after `|` becomes metrics (`command.perf{label,uom}`).
use super::parse::nagios::{self, PluginStatus};
use super::{CheckError, Env, Outcome, Status};
use crate::config::checks::CommandCheck;

/// Plugins print a few lines; more than this is not a plugin's output.
const MAX_OUTPUT: usize = 1024 * 1024;

pub async fn run(c: &CommandCheck, env: &Env<'_>) -> Result<Outcome, CheckError> {
    let out = env.exec(&c.command, MAX_OUTPUT).await?;
    let parsed = nagios::parse(&out.stdout, out.exit_status);
    let status = match parsed.status {
        PluginStatus::Ok => Status::Ok,
        PluginStatus::Warning => Status::Warning,
        PluginStatus::Critical => Status::Critical,
        PluginStatus::Unknown => Status::Unknown,
    };
    // check.status carries the verdict for every kind; the parser's own
    // command.status would repeat it.
    let measurements = nagios::measurements(&parsed)
        .into_iter()
        .filter(|m| m.metric != "command.status")
        .collect();
    let mut detail = parsed.text.clone();
    if detail.is_empty() {
        detail = super::with_stderr(format!("exit {:?}, no output", out.exit_status), &out);
    }
    if !parsed.problems.is_empty() {
        // Shown with the status text rather than as an event per scrape.
        detail = format!(
            "{detail} (perfdata problems: {})",
            parsed.problems.join("; ")
        );
    }
    Ok(Outcome {
        measurements,
        status: Some(status),
        detail: Some(detail),
        ..Default::default()
    })
}
