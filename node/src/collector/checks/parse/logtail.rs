//! Tailing a file on a target by byte offset, one `sh` command per scrape.
//!
//! [`command`] builds the command for the next scrape from the position
//! reached so far; [`parse`] reads its output into the new complete lines and
//! the next position. The position ([`TailPosition`]) is the file's inode and
//! a byte offset; the store keeps it between restarts of the monitor.
//!
//! The command prints, after an optional banner from the target's shell
//! start-up files:
//!
//! ```text
//! @@herd:stat <inode> <size>
//! @@herd:from <offset>
//! <up to max_bytes raw bytes of the file from offset>
//! ```
//!
//! or a single `@@herd:missing|notfile|unreadable <path>` line. Without a
//! position (first scrape ever) only the stat line is printed: tailing starts
//! at the end of the file, old lines are not reported.
//!
//! Decisions worth knowing:
//! - **The shell decides where to read**, because only it knows the file as
//!   it is now: a different inode (rotated by rename + create) or a size
//!   below the offset (truncated in place, `copytruncate`) means reading the
//!   current file from 0; more than `max_bytes` waiting means jumping to the
//!   last `max_bytes` (the backlog is counted in `skipped_bytes`, not read:
//!   metrics of a window should describe that window, and a monitor that fell
//!   hours behind must not take hours to catch up). [`parse`] sees the stat
//!   line too and tells those cases apart.
//! - **Seeking**: `tail -c +N` reads and discards N bytes in busybox (seconds
//!   for a GiB log), so the command lets `dd bs=1 skip=N count=0` move the
//!   shared file offset of the group's stdin with `lseek` and `head -c` reads
//!   on from there. Both GNU and busybox `dd` seek when the input allows it.
//! - **Size and inode** come from `stat -L -c '%i %s'` (GNU, busybox); where
//!   `stat` lacks `-c`, from columns 1 and 6 of POSIX `ls -Lidn`. `-L` follows
//!   a symlinked log path to the file that is actually rotated.
//! - **Partial last lines** (a writer mid-line) are not consumed: the offset
//!   stops after the last newline so the line is read whole next time. A
//!   line longer than `max_bytes` could then never be read, so a chunk with
//!   no newline at all that fills `max_bytes` is consumed as one cut line.
//! - **Lost lines**: lines written to the old file between the last scrape
//!   and a rotation are not read (the old file has another name now), and a
//!   file truncated and then grown past the old offset between two scrapes
//!   looks like growth. Both are inherent to polling by offset.

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::model::text::{prefix_bytes, shell_quote};

/// Lines reported per scrape by [`LineFilter::scan`] unless configured;
/// beyond it matching lines are counted only.
pub const DEFAULT_MAX_LINES: usize = 100;
/// Bytes read per scrape unless configured.
pub const DEFAULT_MAX_BYTES: usize = 1024 * 1024;
/// Room for the marker lines and a login banner on top of the data, for
/// the transport's output limit (see [`max_output`]).
const HEADER_ALLOWANCE: usize = 64 * 1024;
/// Longest line text kept in [`LineMatches::reported`]; reported lines end up
/// in events and notifications, where a megabyte of one line helps no one.
pub const MAX_REPORTED_LINE_BYTES: usize = 4096;

const MARKER_PREFIX: &[u8] = b"@@herd:";

/// Where tailing of one file stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TailPosition {
    pub inode: u64,
    /// Bytes of the file already consumed (always just after a newline,
    /// except after a cut over-long line).
    pub offset: u64,
}

/// What one scrape read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TailRead {
    /// Complete new lines, without `\n` / `\r\n`, decoded lossily.
    pub lines: Vec<String>,
    /// The position to pass to the next [`command`] and [`parse`].
    pub new_position: TailPosition,
    /// The file was replaced (new inode): read from its start.
    pub rotated: bool,
    /// The file shrank below the offset: read from its start.
    pub truncated: bool,
    /// Bytes passed over unread because more than `max_bytes` were waiting
    /// (including the cut line the jump landed in).
    pub skipped_bytes: u64,
}

/// The largest output [`command`] can print for `max_bytes`: what the
/// transport should allow before cutting the channel.
pub fn max_output(max_bytes: usize) -> usize {
    max_bytes.max(1).saturating_add(HEADER_ALLOWANCE)
}

/// The sh command (POSIX sh, busybox-compatible) for one scrape of `path`.
///
/// - `exec 2>/dev/null`: error text is not our format; failures show as
///   missing markers instead.
/// - `set -f` before the unquoted `$(...)`: the `ls` fallback prints the file
///   name, which must not be glob-expanded.
/// - `A && B || s=0` sets `s=0` when either test fails (or errors on a
///   non-numeric size).
pub fn command(path: &str, pos: Option<&TailPosition>, max_bytes: usize) -> String {
    let max = max_bytes.max(1);
    // A relative path starting with `-` would read as an option to stat/ls.
    let path = if path.starts_with('-') {
        format!("./{path}")
    } else {
        path.to_string()
    };
    let mut cmd = format!(
        "exec 2>/dev/null;f={};\
if [ ! -e \"$f\" ];then printf '@@herd:missing %s\\n' \"$f\";exit 0;fi;\
if [ ! -f \"$f\" ];then printf '@@herd:notfile %s\\n' \"$f\";exit 0;fi;\
if [ ! -r \"$f\" ];then printf '@@herd:unreadable %s\\n' \"$f\";exit 0;fi;\
set -f;set -- $(stat -L -c '%i %s' \"$f\");\
[ $# = 2 ]||{{ set -- $(ls -Lidn \"$f\");set -- \"$1\" \"$6\";}};\
echo \"@@herd:stat $1 $2\"",
        shell_quote(&path)
    );
    if let Some(p) = pos {
        cmd.push_str(&format!(
            ";s={off};[ \"$1\" = {ino} ]&&[ \"$2\" -ge {off} ]||s=0;\
[ $(($2-s)) -gt {max} ]&&s=$(($2-{max}));\
echo \"@@herd:from $s\";{{ dd bs=1 skip=$s count=0;head -c {max};}}<\"$f\"",
            off = p.offset,
            ino = p.inode,
        ));
    }
    cmd
}

/// Splits off the first line (without its `\n`); None when no newline is
/// left, i.e. the output was cut.
fn split_line(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let nl = bytes.iter().position(|&b| b == b'\n')?;
    let line = bytes.get(..nl)?;
    let rest = bytes.get(nl + 1..)?;
    Some((line, rest))
}

fn parse_u64(field: Option<&str>, what: &str, line: &str) -> Result<u64, String> {
    field
        .and_then(|f| f.parse::<u64>().ok())
        .ok_or_else(|| format!("logtail: bad {what} in {line:?}"))
}

/// Reads the output of [`command`] run with the same `pos` and `max_bytes`.
pub fn parse(
    output: &[u8],
    pos: Option<&TailPosition>,
    max_bytes: usize,
) -> Result<TailRead, String> {
    let max = max_bytes.max(1);
    let mut rest = output;
    let mut stat: Option<(u64, u64)> = None;
    let (from, data) = loop {
        let Some((line, after)) = split_line(rest) else {
            return Err(match stat {
                None => "logtail: output ends before the stat line".to_string(),
                Some(_) => "logtail: output ends before the data marker".to_string(),
            });
        };
        rest = after;
        // Anything before our markers is a banner from the target's shell.
        let Some(marker) = line.strip_prefix(MARKER_PREFIX) else {
            continue;
        };
        let marker = String::from_utf8_lossy(marker);
        let marker = marker.trim_end_matches('\r');
        let (word, arg) = marker.split_once(' ').unwrap_or((marker, ""));
        match word {
            "missing" => return Err(format!("{arg}: no such file")),
            "notfile" => return Err(format!("{arg}: not a regular file")),
            "unreadable" => return Err(format!("{arg}: permission denied")),
            "stat" => {
                let mut f = arg.split(' ');
                let inode = parse_u64(f.next(), "inode", marker)?;
                let size = parse_u64(f.next(), "size", marker)?;
                stat = Some((inode, size));
                if pos.is_none() {
                    // First scrape ever: start at the end, report nothing.
                    return Ok(TailRead {
                        new_position: TailPosition {
                            inode,
                            offset: size,
                        },
                        ..TailRead::default()
                    });
                }
            }
            "from" if stat.is_some() => {
                let from = parse_u64(Some(arg), "offset", marker)?;
                break (from, after);
            }
            _ => {}
        }
    };
    let (Some((inode, size)), Some(pos)) = (stat, pos) else {
        return Err("logtail: data marker without stat line".to_string());
    };

    let rotated = inode != pos.inode;
    let truncated = !rotated && size < pos.offset;
    let expected = if rotated || truncated { 0 } else { pos.offset };
    let mut skipped = from.saturating_sub(expected);
    let data = data.get(..max).unwrap_or(data);

    // After a jump the chunk starts inside a line: its rest is skipped too.
    let mut start = 0usize;
    if skipped > 0 {
        start = match data.iter().position(|&b| b == b'\n') {
            Some(nl) => nl + 1,
            None => data.len(),
        };
        skipped += start as u64;
    }
    let tail = data.get(start..).unwrap_or_default();
    let body_len = match tail.iter().rposition(|&b| b == b'\n') {
        Some(nl) => nl + 1,
        // One line longer than max_bytes: waiting would never complete it.
        None if start == 0 && data.len() >= max => tail.len(),
        None => 0,
    };
    let body = tail.get(..body_len).unwrap_or_default();
    let lines = split_lines(body);
    let consumed = (start + body_len) as u64;

    Ok(TailRead {
        lines,
        new_position: TailPosition {
            inode,
            offset: from.saturating_add(consumed),
        },
        rotated,
        truncated,
        skipped_bytes: skipped,
    })
}

/// Splits complete lines; the final `\n` ends the last line rather than
/// starting an empty one.
fn split_lines(body: &[u8]) -> Vec<String> {
    if body.is_empty() {
        return Vec::new();
    }
    let body = body.strip_suffix(b"\n").unwrap_or(body);
    body.split(|&b| b == b'\n')
        .map(|l| String::from_utf8_lossy(l.strip_suffix(b"\r").unwrap_or(l)).into_owned())
        .collect()
}

/// Which lines of a tailed file matter: those matching any include pattern
/// (all lines when there is none) and no exclude pattern.
#[derive(Debug, Clone)]
pub struct LineFilter {
    include: Vec<Regex>,
    exclude: Vec<Regex>,
}

/// One scrape's lines after filtering.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LineMatches {
    /// Matching lines, reported or not.
    pub matched: u64,
    /// Matching lines per include pattern (by its index; the first include
    /// pattern a line matches counts it). One entry when there is none.
    pub per_include: Vec<u64>,
    /// The first matching lines, at most `max_lines`, each cut to
    /// [`MAX_REPORTED_LINE_BYTES`].
    pub reported: Vec<String>,
    /// Matching lines beyond `max_lines`: counted, not reported.
    pub unreported: u64,
}

/// A log check's include or exclude pattern that is not a regex: which list,
/// its 1-based place in it, the pattern and the regex error.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{what} pattern {number} {pattern:?}: {source}")]
pub struct PatternError {
    pub what: &'static str,
    pub number: usize,
    pub pattern: String,
    pub source: regex::Error,
}

fn compile_all(patterns: &[String], what: &'static str) -> Result<Vec<Regex>, PatternError> {
    patterns
        .iter()
        .enumerate()
        .map(|(i, p)| {
            Regex::new(p).map_err(|source| PatternError {
                what,
                number: i + 1,
                pattern: p.clone(),
                source,
            })
        })
        .collect()
}

impl LineFilter {
    pub fn new(include: &[String], exclude: &[String]) -> Result<Self, PatternError> {
        Ok(LineFilter {
            include: compile_all(include, "include")?,
            exclude: compile_all(exclude, "exclude")?,
        })
    }

    /// Index of the first include pattern `line` matches (0 when there are
    /// none), or None when the line is not wanted.
    pub fn matching(&self, line: &str) -> Option<usize> {
        if self.exclude.iter().any(|r| r.is_match(line)) {
            return None;
        }
        if self.include.is_empty() {
            return Some(0);
        }
        self.include.iter().position(|r| r.is_match(line))
    }

    /// Filters one scrape's lines, reporting at most `max_lines` of them.
    pub fn scan<'a>(
        &self,
        lines: impl IntoIterator<Item = &'a str>,
        max_lines: usize,
    ) -> LineMatches {
        let mut out = LineMatches {
            per_include: vec![0; self.include.len().max(1)],
            ..LineMatches::default()
        };
        for line in lines {
            let Some(i) = self.matching(line) else {
                continue;
            };
            out.matched += 1;
            if let Some(n) = out.per_include.get_mut(i) {
                *n += 1;
            }
            if out.reported.len() < max_lines {
                out.reported
                    .push(prefix_bytes(line, MAX_REPORTED_LINE_BYTES).to_string());
            } else {
                out.unreported += 1;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::fs::{self, OpenOptions};
    use std::io::Write;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    const BANNER_OUTPUT: &[u8] = include_bytes!("fixtures/logtail/banner_append.out");
    const BUSYBOX_ROTATED: &[u8] = include_bytes!("fixtures/logtail/busybox_rotated.out");

    /// A temp directory removed on drop; names are unique per test and process
    /// because tests run in parallel.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let dir =
                std::env::temp_dir().join(format!("herd-logtail-{}-{name}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// How the command is run: which sh, and which tools it finds on PATH.
    #[derive(Clone)]
    enum Shell {
        /// The system sh (dash on Debian) with GNU coreutils.
        System,
        /// busybox sh with only busybox applets on PATH, so that `stat`,
        /// `dd`, `head` and `ls` are busybox's own.
        Busybox(PathBuf),
    }

    fn busybox() -> Option<PathBuf> {
        let out = Command::new("sh")
            .args(["-c", "command -v busybox"])
            .output()
            .ok()?;
        let p = String::from_utf8(out.stdout).ok()?.trim().to_string();
        (!p.is_empty()).then(|| PathBuf::from(p))
    }

    /// A PATH directory of busybox applet links; `stat_works = false` puts a
    /// failing `stat` there instead, as on a busybox built without `-c`.
    fn busybox_path(dir: &Path, bb: &Path, stat_works: bool) -> PathBuf {
        let bin = dir.join(if stat_works { "bb" } else { "bb-nostat" });
        fs::create_dir_all(&bin).unwrap();
        for applet in ["stat", "dd", "head", "ls", "cat"] {
            std::os::unix::fs::symlink(bb, bin.join(applet)).unwrap();
        }
        if !stat_works {
            fs::remove_file(bin.join("stat")).unwrap();
            fs::write(
                bin.join("stat"),
                "#!/bin/sh\necho 'stat: unrecognized option: c' >&2\nexit 1\n",
            )
            .unwrap();
            let mut perm = fs::metadata(bin.join("stat")).unwrap().permissions();
            std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
            fs::set_permissions(bin.join("stat"), perm).unwrap();
        }
        bin
    }

    fn shells(dir: &Path) -> Vec<(String, Shell)> {
        let mut v = vec![("sh".to_string(), Shell::System)];
        match busybox() {
            Some(bb) => {
                v.push((
                    "busybox".into(),
                    Shell::Busybox(busybox_path(dir, &bb, true)),
                ));
                v.push((
                    "busybox-nostat".into(),
                    Shell::Busybox(busybox_path(dir, &bb, false)),
                ));
            }
            None => eprintln!("busybox not found: busybox part of the logtail tests skipped"),
        }
        v
    }

    fn run(shell: &Shell, cmd: &str) -> Vec<u8> {
        let out = match shell {
            Shell::System => Command::new("sh").args(["-c", cmd]).output().unwrap(),
            Shell::Busybox(bin) => {
                let bb = busybox().unwrap();
                Command::new(bb)
                    .args(["sh", "-c", cmd])
                    .env("PATH", bin)
                    .output()
                    .unwrap()
            }
        };
        assert!(out.status.success(), "{cmd}: {:?}", out);
        out.stdout
    }

    /// One tail loop over one file, as the collector would run it.
    struct Tailer<'a> {
        shell: &'a Shell,
        path: String,
        pos: Option<TailPosition>,
        max: usize,
    }

    impl Tailer<'_> {
        fn step(&mut self) -> Result<TailRead, String> {
            let out = run(
                self.shell,
                &command(&self.path, self.pos.as_ref(), self.max),
            );
            let read = parse(&out, self.pos.as_ref(), self.max)?;
            self.pos = Some(read.new_position.clone());
            Ok(read)
        }
    }

    fn append(path: &Path, bytes: &[u8]) {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(bytes).unwrap();
    }

    fn lines(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn real_shells_follow_append_rotate_truncate() {
        let dir = TempDir::new("follow");
        for (name, shell) in shells(&dir.0) {
            // A quote and spaces in the name exercise the quoting.
            let path = dir.0.join(format!("it's a {name}.log"));
            fs::write(&path, "old 1\nold 2\n").unwrap();
            let mut t = Tailer {
                shell: &shell,
                path: path.to_str().unwrap().to_string(),
                pos: None,
                max: 1000,
            };

            let first = t.step().unwrap();
            assert_eq!(
                first.lines,
                Vec::<String>::new(),
                "{name}: old lines are not reported"
            );
            assert_eq!(first.new_position.offset, 12, "{name}");

            append(&path, b"new 1\nhalf");
            let r = t.step().unwrap();
            assert_eq!(r.lines, lines(&["new 1"]), "{name}");
            assert_eq!(
                r.new_position.offset, 18,
                "{name}: stops before the partial line"
            );

            append(&path, b" done\r\n\nlast\n");
            let r = t.step().unwrap();
            assert_eq!(r.lines, lines(&["half done", "", "last"]), "{name}");
            assert!(
                !r.rotated && !r.truncated && r.skipped_bytes == 0,
                "{name}: {r:?}"
            );

            let r = t.step().unwrap();
            assert_eq!(r.lines, Vec::<String>::new(), "{name}: nothing new");

            // Rotation by rename + create: the new file is read from 0.
            fs::rename(&path, dir.0.join(format!("{name}.log.1"))).unwrap();
            fs::write(&path, "fresh 1\nfresh 2\n").unwrap();
            let r = t.step().unwrap();
            assert!(r.rotated && !r.truncated, "{name}: {r:?}");
            assert_eq!(r.lines, lines(&["fresh 1", "fresh 2"]), "{name}");

            // Truncation in place (copytruncate), then a shorter write.
            fs::write(&path, "x\n").unwrap();
            let r = t.step().unwrap();
            assert!(r.truncated && !r.rotated, "{name}: {r:?}");
            assert_eq!(r.lines, lines(&["x"]), "{name}");
            assert_eq!(r.new_position.offset, 2, "{name}");
        }
    }

    #[test]
    fn real_shells_skip_backlog_and_cut_long_lines() {
        let dir = TempDir::new("backlog");
        for (name, shell) in shells(&dir.0) {
            let path = dir.0.join(format!("{name}.log"));
            fs::write(&path, "").unwrap();
            let mut t = Tailer {
                shell: &shell,
                path: path.to_str().unwrap().to_string(),
                pos: None,
                max: 64,
            };
            t.step().unwrap();

            // 10 lines of 10 bytes: 100 bytes waiting, 64 readable.
            let backlog: String = (0..10).map(|i| format!("line {i:04}\n")).collect();
            append(&path, backlog.as_bytes());
            let r = t.step().unwrap();
            // The jump lands at byte 36, inside "line 0003": skipped with it.
            assert_eq!(
                r.lines,
                lines(&[
                    "line 0004",
                    "line 0005",
                    "line 0006",
                    "line 0007",
                    "line 0008",
                    "line 0009"
                ]),
                "{name}"
            );
            assert_eq!(r.skipped_bytes, 40, "{name}");
            assert_eq!(r.new_position.offset, 100, "{name}");

            // A partial line of max_bytes is consumed, cut: waiting for its
            // end would stall the tail forever.
            append(&path, &[b'z'; 64]);
            let r = t.step().unwrap();
            assert_eq!(r.lines, vec!["z".repeat(64)], "{name}");
            assert_eq!(r.new_position.offset, 164, "{name}");
            append(&path, b"zz\n");
            let r = t.step().unwrap();
            assert_eq!(r.lines, lines(&["zz"]), "{name}: the rest of the cut line");
            assert_eq!(r.skipped_bytes, 0, "{name}");
        }
    }

    #[test]
    fn real_shells_report_missing_and_odd_files() {
        let dir = TempDir::new("missing");
        for (name, shell) in shells(&dir.0) {
            let path = dir.0.join(format!("{name} gone.log"));
            let p = path.to_str().unwrap();
            for pos in [
                None,
                Some(TailPosition {
                    inode: 1,
                    offset: 5,
                }),
            ] {
                let out = run(&shell, &command(p, pos.as_ref(), 100));
                let e = parse(&out, pos.as_ref(), 100).unwrap_err();
                assert_eq!(e, format!("{p}: no such file"), "{name}");
            }
            let d = dir.0.to_str().unwrap();
            let out = run(&shell, &command(d, None, 100));
            assert_eq!(
                parse(&out, None, 100).unwrap_err(),
                format!("{d}: not a regular file")
            );

            // A glob character in the name, and an empty file.
            let star = dir.0.join(format!("{name}*.log"));
            fs::write(&star, "").unwrap();
            let mut t = Tailer {
                shell: &shell,
                path: star.to_str().unwrap().to_string(),
                pos: None,
                max: 100,
            };
            assert_eq!(t.step().unwrap().new_position.offset, 0, "{name}");
            append(&star, b"a\n");
            assert_eq!(t.step().unwrap().lines, lines(&["a"]), "{name}");

            // A relative name that looks like an option.
            let dash = dir.0.join(format!("-{name}.log"));
            fs::write(&dash, "12345\n").unwrap();
            let cd = format!("cd {} && ", shell_quote(dir.0.to_str().unwrap()));
            let rel = format!("-{name}.log");
            let out = run(&shell, &format!("{cd}{}", command(&rel, None, 100)));
            let r = parse(&out, None, 100).unwrap();
            assert_eq!(r.new_position.offset, 6, "{name}");
        }
    }

    #[test]
    fn the_command_is_what_we_document() {
        let pos = TailPosition {
            inode: 42,
            offset: 1234,
        };
        assert_eq!(
            command("/var/log/it's.log", Some(&pos), 65536),
            "exec 2>/dev/null;f='/var/log/it'\\''s.log';\
if [ ! -e \"$f\" ];then printf '@@herd:missing %s\\n' \"$f\";exit 0;fi;\
if [ ! -f \"$f\" ];then printf '@@herd:notfile %s\\n' \"$f\";exit 0;fi;\
if [ ! -r \"$f\" ];then printf '@@herd:unreadable %s\\n' \"$f\";exit 0;fi;\
set -f;set -- $(stat -L -c '%i %s' \"$f\");\
[ $# = 2 ]||{ set -- $(ls -Lidn \"$f\");set -- \"$1\" \"$6\";};\
echo \"@@herd:stat $1 $2\";\
s=1234;[ \"$1\" = 42 ]&&[ \"$2\" -ge 1234 ]||s=0;\
[ $(($2-s)) -gt 65536 ]&&s=$(($2-65536));\
echo \"@@herd:from $s\";{ dd bs=1 skip=$s count=0;head -c 65536;}<\"$f\""
        );
        assert!(!command("/x", None, 10).contains("@@herd:from"));
        assert!(command("-x.log", None, 10).starts_with("exec 2>/dev/null;f='./-x.log';"));
        assert_eq!(max_output(0), 1 + HEADER_ALLOWANCE);
    }

    #[test]
    fn captured_outputs() {
        // Real output through a shell that printed a banner first (as a
        // chatty .profile does); the file ends with a partial line.
        let pos = TailPosition {
            inode: 10035449,
            offset: 6,
        };
        let r = parse(BANNER_OUTPUT, Some(&pos), 1000).unwrap();
        assert_eq!(r.lines, lines(&["GET /a 200", "GET /b 404"]));
        assert_eq!(
            r.new_position,
            TailPosition {
                inode: 10035449,
                offset: 28
            }
        );
        // Captured with busybox after a rename + create rotation.
        let pos = TailPosition {
            inode: 1,
            offset: 500,
        };
        let r = parse(BUSYBOX_ROTATED, Some(&pos), 1000).unwrap();
        assert!(r.rotated && !r.truncated);
        assert_eq!(r.lines, lines(&["after rotation 1", "after rotation 2"]));
        assert_eq!(r.new_position.offset, 34);
    }

    #[test]
    fn parse_rejects_broken_output() {
        let pos = TailPosition {
            inode: 7,
            offset: 0,
        };
        let cases: &[(&[u8], &str)] = &[
            (b"", "before the stat line"),
            (b"motd\n", "before the stat line"),
            (b"@@herd:stat 7", "before the stat line"),
            (b"@@herd:stat 7 10\n", "before the data marker"),
            (b"@@herd:stat x 10\n@@herd:from 0\n", "bad inode"),
            (b"@@herd:stat 7\n@@herd:from 0\n", "bad size"),
            (b"@@herd:stat 7 10\n@@herd:from -1\n", "bad offset"),
            (
                b"@@herd:unreadable /var/log/secure\n",
                "/var/log/secure: permission denied",
            ),
        ];
        for (out, want) in cases {
            let e = parse(out, Some(&pos), 100).unwrap_err();
            assert!(e.contains(want), "{:?}: {e}", String::from_utf8_lossy(out));
        }
        // A from marker before any stat line is banner text, not ours.
        let e = parse(b"@@herd:from 0\nx\n", Some(&pos), 100).unwrap_err();
        assert!(e.contains("stat line"), "{e}");
        // First scrape: the stat line is enough, the rest is ignored.
        let r = parse(b"@@herd:stat 7 99\n", None, 100).unwrap();
        assert_eq!(
            r.new_position,
            TailPosition {
                inode: 7,
                offset: 99
            }
        );
    }

    #[test]
    fn parse_cases_without_a_shell() {
        let pos = TailPosition {
            inode: 7,
            offset: 10,
        };
        // Invalid UTF-8 is decoded lossily; output beyond max_bytes is not consumed.
        let out = b"@@herd:stat 7 30\n@@herd:from 10\nok \xff\nsecond\nthird\n";
        let r = parse(out, Some(&pos), 13).unwrap();
        assert_eq!(r.lines, lines(&["ok \u{fffd}", "second"]));
        assert_eq!(r.new_position.offset, 22);
        // Nothing new at all.
        let r = parse(b"@@herd:stat 7 10\n@@herd:from 10\n", Some(&pos), 13).unwrap();
        assert_eq!((r.lines.len(), r.new_position.offset), (0, 10));
        // A jump whose chunk holds no newline: all of it is skipped.
        let r = parse(
            b"@@herd:stat 7 100\n@@herd:from 90\n0123456789",
            Some(&pos),
            10,
        )
        .unwrap();
        assert_eq!(
            (r.lines.len(), r.skipped_bytes, r.new_position.offset),
            (0, 90, 100)
        );
    }

    #[test]
    fn filter_matches_and_caps() {
        let inc = vec!["error".to_string(), "warn|WARN".to_string()];
        let exc = vec!["ignore me".to_string()];
        let f = LineFilter::new(&inc, &exc).unwrap();
        assert_eq!(f.matching("an error"), Some(0));
        assert_eq!(f.matching("WARN: error"), Some(0), "first include wins");
        assert_eq!(f.matching("WARN: x"), Some(1));
        assert_eq!(f.matching("error, ignore me"), None);
        assert_eq!(f.matching("info"), None);

        let all = LineFilter::new(&[], &exc).unwrap();
        assert_eq!(all.matching("anything"), Some(0));
        assert_eq!(all.matching("ignore me"), None);

        let e = LineFilter::new(&["ok".into(), "(".into()], &[])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("include pattern 2 \"(\""), "{e}");
        let e = LineFilter::new(&[], &["[z-a]".into()])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("exclude pattern 1"), "{e}");

        let many: Vec<String> = (0..250)
            .map(|i| {
                if i % 2 == 0 {
                    format!("error {i}")
                } else {
                    format!("warn {i}")
                }
            })
            .collect();
        let long = format!("error {}", "é".repeat(MAX_REPORTED_LINE_BYTES));
        let m = f.scan(
            many.iter()
                .map(String::as_str)
                .chain([long.as_str(), "info"]),
            DEFAULT_MAX_LINES,
        );
        assert_eq!(m.matched, 251);
        assert_eq!(m.per_include, vec![126, 125]);
        assert_eq!(m.reported.len(), DEFAULT_MAX_LINES);
        assert_eq!(m.unreported, 151);
        let m = f.scan([long.as_str()], 1);
        assert!(m.reported[0].len() <= MAX_REPORTED_LINE_BYTES && m.reported[0].len() > 4000);
        assert_eq!(all.scan(["a", "b"], 10).per_include, vec![2]);
    }

    #[test]
    fn random_output_never_panics() {
        let mut rng = StdRng::seed_from_u64(11);
        let pieces: &[&[u8]] = &[
            b"@@herd:stat ",
            b"@@herd:from ",
            b"@@herd:missing ",
            b"1",
            b"0",
            b"99999999999999999999",
            b" ",
            b"\n",
            b"\r\n",
            b"x",
            b"\xff",
            b"-",
        ];
        for _ in 0..5000 {
            let mut out = Vec::new();
            for _ in 0..rng.random_range(0..12) {
                out.extend_from_slice(pieces[rng.random_range(0..pieces.len())]);
            }
            let pos = TailPosition {
                inode: rng.random_range(0..3),
                offset: if rng.random_bool(0.1) {
                    u64::MAX
                } else {
                    rng.random_range(0..20)
                },
            };
            let max = rng.random_range(0..30);
            if let Ok(r) = parse(&out, Some(&pos), max) {
                assert!(r.lines.iter().map(|l| l.len()).sum::<usize>() <= max.max(1) * 3);
            }
            let _ = parse(&out, None, max);
        }
    }
}
