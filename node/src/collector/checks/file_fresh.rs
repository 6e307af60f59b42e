//! file_fresh: a file's modification time must be newer than `max_age`. The age is
//! computed with the target's own clock, so clock skew between node and target
//! does not matter.
use super::{CheckError, Env, Outcome, Status};
use crate::config::checks::FileFreshCheck;
use crate::model::text::shell_quote;
use crate::model::Measurement;

/// The output is two short lines.
const MAX_OUTPUT: usize = 4096;

/// POSIX sh, busybox-compatible: mtime (following symlinks) and the target's now.
pub fn command(path: &str) -> String {
    let p = shell_quote(path);
    // stat's own answer decides: a file deleted between a test and stat is missing,
    // not an unreadable answer.
    format!(
        "m=$(stat -L -c %Y {p} 2>/dev/null); if [ -n \"$m\" ]; then echo \"mtime $m\"; else echo missing; fi; echo \"now $(date +%s)\""
    )
}

/// What the command printed: the file's age in seconds, or None when missing.
pub fn parse(out: &[u8]) -> Result<Option<i64>, String> {
    let text = String::from_utf8_lossy(out);
    let mut mtime = None;
    let mut missing = false;
    let mut now = None;
    for line in text.lines() {
        let line = line.trim();
        if line == "missing" {
            missing = true;
        } else if let Some(v) = line.strip_prefix("mtime ") {
            mtime = Some(
                v.trim()
                    .parse::<i64>()
                    .map_err(|_| format!("unreadable mtime {v:?}"))?,
            );
        } else if let Some(v) = line.strip_prefix("now ") {
            now = Some(
                v.trim()
                    .parse::<i64>()
                    .map_err(|_| format!("unreadable time {v:?}"))?,
            );
        }
    }
    let now = now.ok_or("the target did not print its time")?;
    match (missing, mtime) {
        (true, _) => Ok(None),
        (false, Some(m)) => Ok(Some(now.saturating_sub(m).max(0))),
        (false, None) => Err("stat printed no mtime (is stat available?)".into()),
    }
}

pub async fn run(c: &FileFreshCheck, env: &Env<'_>) -> Result<Outcome, CheckError> {
    let out = env.exec(&command(&c.path), MAX_OUTPUT).await?;
    let age = parse(&out.stdout)
        .map_err(|e| CheckError::Failed(format!("file_fresh {}: {e}", c.path)))?;
    let max = c.max_age.get().as_secs() as i64;
    let mut measurements = Vec::new();
    let (fresh, detail) = match age {
        None => (
            false,
            format!("{} is missing (or not reachable by the login user)", c.path),
        ),
        Some(a) => {
            measurements.push(Measurement::new("file.age_s", a as f64));
            if a <= max {
                (true, format!("{} is {a}s old", c.path))
            } else {
                (
                    false,
                    format!("{} is {a}s old, older than {}", c.path, c.max_age),
                )
            }
        }
    };
    measurements.push(Measurement::new(
        "file.fresh",
        if fresh { 1.0 } else { 0.0 },
    ));
    Ok(Outcome {
        measurements,
        status: Some(Status::up(fresh)),
        detail: Some(detail),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_sh(cmd: &str) -> Vec<u8> {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .output()
            .unwrap()
            .stdout
    }

    #[test]
    fn real_command_reads_age_and_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("it's here");
        std::fs::write(&f, "x").unwrap();
        let age = parse(&run_sh(&command(f.to_str().unwrap()))).unwrap();
        assert!(matches!(age, Some(a) if (0..5).contains(&a)), "{age:?}");
        let gone = dir.path().join("gone");
        assert_eq!(
            parse(&run_sh(&command(gone.to_str().unwrap()))).unwrap(),
            None
        );
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse(b"").is_err());
        assert!(parse(b"mtime x\nnow 5\n").is_err());
        assert!(parse(b"now 5\n").is_err());
        assert_eq!(
            parse(b"mtime 10\nnow 4\n").unwrap(),
            Some(0),
            "future mtime is age 0"
        );
    }
}
