//! Check kinds: each turns command output into measurements. One file per kind;
//! `Runner` is the one place that dispatches on the kind.
pub mod vitals;

use crate::config::CheckSpec;
use crate::model::Measurement;

use super::transport::ExecOutput;

/// The per-target state of one check (e.g. previous counters for rates).
pub enum Runner {
    Vitals(vitals::VitalsState),
}

impl Runner {
    pub fn new(spec: &CheckSpec) -> Self {
        match spec {
            CheckSpec::Vitals(_) => Runner::Vitals(vitals::VitalsState::default()),
        }
    }

    /// The command run on the target for one scrape.
    pub fn command(&self) -> &'static str {
        match self {
            Runner::Vitals(_) => vitals::VITALS_COMMAND,
        }
    }

    /// Output beyond this many bytes is refused (the channel is closed).
    pub fn max_output(&self) -> usize {
        match self {
            Runner::Vitals(_) => vitals::MAX_OUTPUT_BYTES,
        }
    }

    /// Turns one scrape's output into measurements, or a message saying what was wrong.
    pub fn ingest(&mut self, out: &ExecOutput, ts_ms: i64) -> Result<Vec<Measurement>, String> {
        match self {
            Runner::Vitals(state) => {
                let snap = vitals::parse(&out.stdout).map_err(|e| {
                    let stderr = String::from_utf8_lossy(&out.stderr);
                    let stderr = stderr.trim();
                    if stderr.is_empty() {
                        format!("vitals: {e}")
                    } else {
                        format!("vitals: {e} (stderr: {})", truncate(stderr, 200))
                    }
                })?;
                Ok(state.observe(snap, ts_ms))
            }
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
