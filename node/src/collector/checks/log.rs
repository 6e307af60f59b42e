//! log: lines appended to a file on the target that match patterns become events
//! (`log_match`: target, file, line) and per-pattern counts. Rotation (a new inode)
//! and truncation (a smaller size) restart from the file's beginning.
use super::parse::logtail::{LineFilter, DEFAULT_MAX_BYTES, DEFAULT_MAX_LINES};
use super::tail::Tail;
use super::{CheckError, CheckSetupError, Env, Outcome, Status};
use crate::config::checks::LogCheck;
use crate::model::{EventKind, Measurement};

pub struct LogState {
    tail: Tail,
    filter: LineFilter,
    max_lines: usize,
}

impl LogState {
    pub fn new(
        c: &LogCheck,
        name: &str,
        ctx: &super::RunnerCtx<'_>,
    ) -> Result<Self, CheckSetupError> {
        Ok(LogState {
            tail: Tail::load(ctx, name, &c.path, c.max_bytes.unwrap_or(DEFAULT_MAX_BYTES)),
            filter: LineFilter::new(&c.include, &c.exclude)?,
            max_lines: c.max_lines.unwrap_or(DEFAULT_MAX_LINES),
        })
    }
}

pub async fn run(state: &mut LogState, c: &LogCheck, env: &Env<'_>) -> Result<Outcome, CheckError> {
    let read = state.tail.read(env).await?;
    let found = state
        .filter
        .scan(read.lines.iter().map(String::as_str), state.max_lines);
    let mut outcome = Outcome::default();
    let patterns: Vec<String> = if c.include.is_empty() {
        vec![".*".into()]
    } else {
        c.include.clone()
    };
    for (pattern, n) in patterns.iter().zip(&found.per_include) {
        outcome
            .measurements
            .push(Measurement::new("log.matches", *n as f64).with_label("pattern", pattern));
    }
    outcome
        .measurements
        .push(Measurement::new("log.lines", read.lines.len() as f64));
    outcome.measurements.push(Measurement::new(
        "log.skipped_bytes",
        read.skipped_bytes as f64,
    ));
    for line in &found.reported {
        outcome
            .events
            .push((EventKind::LogMatch, format!("{}: {line}", c.path)));
    }
    if found.unreported > 0 {
        outcome.events.push((
            EventKind::LogMatch,
            format!(
                "{}: {} more matching lines in this scrape (max_lines is {})",
                c.path, found.unreported, state.max_lines
            ),
        ));
    }
    if read.rotated || read.truncated {
        tracing::info!(path = %c.path, rotated = read.rotated, truncated = read.truncated, "log file restarted from its beginning");
    }
    outcome.persist.extend(state.tail.advance(&read));
    outcome.status = Some(Status::Ok);
    outcome.detail = Some(format!(
        "{}: {} new lines, {} matching",
        state.tail.path(),
        read.lines.len(),
        found.matched
    ));
    Ok(outcome)
}
