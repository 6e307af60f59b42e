//! Vitals: the basic health of a Linux target (CPU, memory, load, network,
//! uptime, filesystems) from one POSIX `sh` command per scrape.
//!
//! [`VITALS_COMMAND`] prints the /proc files with one `head` (it heads each with
//! `==> /proc/<section> <==`), then each df after a marker line `@@herd:<section>`,
//! and finishes with `@@herd:end`; [`VITALS_COMMAND_NO_DISK`] is the same without
//! the mounts and the dfs, for the scrapes between two disk readings
//! (`disk_interval`). [`parse`] splits on those markers and reads
//! each section into a [`VitalsSnapshot`]; CPU shares and network throughput
//! need two scrapes, so [`VitalsState`] keeps the previous snapshot of its
//! target and turns the deltas into [`Measurement`]s.
//!
//! Decisions worth knowing:
//! - **Truncation** is detected with the end marker: without it the command
//!   did not finish (connection dropped, output cut), and a shortened scrape
//!   would look like a healthy one, so it is an error.
//! - **Text outside the markers** is ignored: shell start-up files on a target
//!   may print a banner before our output, or a logout script after it.
//! - **Non-UTF-8 bytes** are decoded lossily (U+FFFD). Paths are bytes on
//!   Linux, and one oddly named mount point must not cost the whole scrape;
//!   a number with replacement characters in it still fails to parse, so
//!   nothing garbled passes as a value.
//! - **Strictness**: every line of the parts we use must parse, or the scrape
//!   is an error naming the section and line. Dropping a bad df row silently
//!   would make a disk alert go quiet instead of raising a check error.
//! - **Pseudo filesystems** (proc, sysfs, tmpfs, cgroup, ...) are skipped:
//!   their "usage" is memory or nothing, and alerts on them are noise.
//!   squashfs and iso9660 are skipped too: read-only images (snaps, CDs) are
//!   100% full by construction. overlay is kept only when mounted at `/`:
//!   that is a container's root, which people do want to watch, while a
//!   Docker host shows one overlay per running container under
//!   /var/lib/docker that repeats the backing disk's numbers and comes and
//!   goes with the containers.
//! - **Bind mounts** are not merged: busybox df lists each (a container's
//!   /etc/hosts, ...), GNU df hides most. Telling a bind mount from another
//!   filesystem needs /proc/self/mountinfo, and merging rows by equal numbers
//!   would flap on busy filesystems whose numbers change between two statfs.
//! - **Optional sections**: `df` and `dfi` may be empty or absent (no df on
//!   the target, `df -i` unsupported by its busybox, or a scrape between two
//!   disk readings): only their metrics are then omitted. Every /proc section
//!   is required, mounts only with a df section.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use crate::model::text::quote_excerpt;
use crate::model::Measurement;

/// The vitals script with the disk figures: one process reads every /proc file
/// and two run df. POSIX sh only, no bash-isms, must work with busybox.
///
/// - There is no `set -e`: a failing part leaves its section empty and the
///   rest still runs, and the end marker is printed whatever happened before.
/// - `head` given several files heads each with `==> FILE <==` (GNU and
///   busybox alike): the section names are the /proc paths themselves, and one
///   process reads them all where a `cat` per file forked six.
/// - `df -P` keeps one row per line in the POSIX column layout; `-k` fixes
///   the unit at 1024 bytes whatever `BLOCKSIZE`/`DF_BLOCK_SIZE` say.
macro_rules! vitals_body {
    () => {
        "head -n 999999 /proc/stat /proc/meminfo /proc/loadavg /proc/net/dev /proc/uptime /proc/mounts;\
echo @@herd:df;df -Pk;echo @@herd:dfi;df -Pi;echo @@herd:end"
    };
}

/// The same without the disk figures (mounts and df): one `head` in all.
macro_rules! vitals_body_no_disk {
    () => {
        "head -n 999999 /proc/stat /proc/meminfo /proc/loadavg /proc/net/dev /proc/uptime;\
echo @@herd:end"
    };
}

/// The sh command run on the target when disk figures are due (an exec channel,
/// the local transport). `exec 2>/dev/null` silences the whole script once: df
/// complains on stderr about mounts it may not read, and error text is not our
/// format.
pub const VITALS_COMMAND: &str = concat!("exec 2>/dev/null;", vitals_body!());

/// [`VITALS_COMMAND`] without the disk figures.
pub const VITALS_COMMAND_NO_DISK: &str = concat!("exec 2>/dev/null;", vitals_body_no_disk!());

/// The inline forms ([`crate::transport::Script`]) of the two: run by the
/// target's long-lived shell itself, without a subshell, so a scrape forks only
/// `head` (and df when the disk figures are due). A brace group with its stderr
/// sent to /dev/null: nothing in it changes the shell.
pub const VITALS_INLINE: &str = concat!("{ ", vitals_body!(), "\n} 2>/dev/null");
pub const VITALS_INLINE_NO_DISK: &str = concat!("{ ", vitals_body_no_disk!(), "\n} 2>/dev/null");

/// How often disk figures are read when the check does not say
/// (`disk_interval`): they change slowly, and df is most of a scrape's cost.
pub const DEFAULT_DISK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// Hard cap on output size accepted (bytes); larger output is an error.
/// Real output is a few KiB (tens on machines with hundreds of CPUs or
/// mounts); anything near this is not what the command prints.
pub const MAX_OUTPUT_BYTES: usize = 4 * 1024 * 1024;

/// Start of every marker line; the rest of the line names the section.
const MARKER_PREFIX: &str = "@@herd:";
/// How `head` heads a file among several: `==> /proc/<section> <==`.
const HEAD_PREFIX: &str = "==> /proc/";
const HEAD_SUFFIX: &str = " <==";
/// Name of the marker printed last; its absence means the output is cut.
const END_SECTION: &str = "end";

/// /proc/meminfo and `df -k` count in KiB.
const BYTES_PER_KIB: f64 = 1024.0;
const PERCENT: f64 = 100.0;
const MS_PER_S: f64 = 1000.0;

/// Below this much target uptime between two scrapes, deltas are dominated
/// by the 10 ms resolution of /proc/uptime and by jiffy granularity; such a
/// scrape emits no rates and the older baseline is kept.
const MIN_RATE_INTERVAL_S: f64 = 1.0;
/// How far the target's uptime delta may stray from the monitor's own clock
/// delta (SSH latency, scheduling jitter) before the two scrapes are judged
/// not to be of one continuous boot of one machine (the target's address now
/// leads to another host, a VM was paused, the monitor's clock stepped).
/// The allowed stray grows with the interval: it is this or the monitor-side
/// interval itself, whichever is larger.
const CLOCK_SLACK_S: f64 = 60.0;

/// First token of the aggregate line in /proc/stat (per-CPU lines are `cpuN`).
const AGGREGATE_CPU_LABEL: &str = "cpu";
/// user, nice, system, idle: all that 2.4 kernels print.
const MIN_CPU_FIELDS: usize = 4;
/// user nice system idle iowait irq softirq steal; guest and guest_nice come
/// after and are already counted in user and nice, so they are not read.
const CPU_FIELDS_READ: usize = 8;

/// Counter columns after `iface:` in /proc/net/dev (8 receive, 8 transmit).
const NETDEV_FIELDS: usize = 16;
const NETDEV_RX_BYTES: usize = 0;
const NETDEV_TX_BYTES: usize = 8;
/// Loopback traffic never leaves the host and would only add noise.
const LOOPBACK_IFACE: &str = "lo";

/// Fields of /proc/loadavg we read: the 1, 5 and 15 minute averages.
const LOADAVG_FIELDS: usize = 3;

/// A df row is `source total used available capacity mount`; this many
/// tokens from `total` on must exist (the last being the mount's first).
const DF_ROW_TAIL_TOKENS: usize = 5;
/// What GNU df prints for a value it does not know (e.g. inodes on btrfs).
const DF_UNKNOWN: &str = "-";

/// Longest piece of target text quoted in an error message; output can be
/// megabytes of garbage, and an error must stay readable.
const MAX_QUOTED_CHARS: usize = 60;

/// Filesystems that do not hold data on storage: their usage is memory,
/// kernel state or nothing at all.
const PSEUDO_FILESYSTEMS: &[&str] = &[
    "autofs",
    "binfmt_misc",
    "bpf",
    "cgroup",
    "cgroup2",
    "configfs",
    "debugfs",
    "devpts",
    "devtmpfs",
    "efivarfs",
    "fuse.gvfsd-fuse",
    "fuse.lxcfs",
    "fuse.portal",
    "fusectl",
    "hugetlbfs",
    "mqueue",
    "nsfs",
    "proc",
    "pstore",
    "ramfs",
    "rootfs",
    "rpc_pipefs",
    "securityfs",
    "selinuxfs",
    "sysfs",
    "tmpfs",
    "tracefs",
    "usbfs",
];

/// Read-only images: always 100% used by construction, never worth an alert.
const READ_ONLY_IMAGE_FILESYSTEMS: &[&str] = &["squashfs", "iso9660", "fuse.snapfuse"];

/// Kept only at [`ROOT_MOUNT`], where it is a container's root.
const OVERLAY_FILESYSTEM: &str = "overlay";
const ROOT_MOUNT: &str = "/";

/// The metric names: a stable interface, dashboards and alerts use them.
mod metric {
    pub const CPU_USED_PCT: &str = "cpu.used_pct";
    pub const CPU_IOWAIT_PCT: &str = "cpu.iowait_pct";
    pub const CPU_STEAL_PCT: &str = "cpu.steal_pct";
    pub const LOAD_1: &str = "load.1";
    pub const LOAD_5: &str = "load.5";
    pub const LOAD_15: &str = "load.15";
    pub const MEM_TOTAL_BYTES: &str = "mem.total_bytes";
    pub const MEM_AVAILABLE_BYTES: &str = "mem.available_bytes";
    pub const MEM_USED_PCT: &str = "mem.used_pct";
    pub const SWAP_TOTAL_BYTES: &str = "swap.total_bytes";
    pub const SWAP_USED_PCT: &str = "swap.used_pct";
    pub const DISK_USED_PCT: &str = "disk.used_pct";
    pub const DISK_FREE_BYTES: &str = "disk.free_bytes";
    pub const DISK_INODES_USED_PCT: &str = "disk.inodes_used_pct";
    pub const NET_RX_BYTES_PER_S: &str = "net.rx_bytes_per_s";
    pub const NET_TX_BYTES_PER_S: &str = "net.tx_bytes_per_s";
    pub const UPTIME_S: &str = "uptime_s";

    pub const LABEL_MOUNT: &str = "mount";
    pub const LABEL_IFACE: &str = "iface";
}

/// Why a scrape's output could not be read; says what and in which section.
#[derive(Debug, thiserror::Error)]
pub enum VitalsError {
    #[error("output is {size} bytes, more than the {max}-byte limit")]
    TooLarge { size: usize, max: usize },
    #[error("output has no `@@herd:end` marker: the command did not finish or its output was cut")]
    Truncated,
    #[error("section `{0}` is missing from the output")]
    MissingSection(&'static str),
    #[error("section `{section}` appears a second time at line {line}")]
    DuplicateSection { section: &'static str, line: usize },
    #[error("section `{section}`, line {line}: {reason}")]
    Malformed {
        section: &'static str,
        /// 1-based line of the whole output.
        line: usize,
        reason: String,
    },
}

/// Parsed counters and gauges of one scrape (pure data).
#[derive(Debug, Clone, PartialEq)]
pub struct VitalsSnapshot {
    /// Aggregate CPU time counters since boot.
    pub cpu: CpuTimes,
    pub load: LoadAverage,
    pub memory: Memory,
    /// `None` when /proc/meminfo has no swap lines at all.
    pub swap: Option<Swap>,
    /// Seconds since boot, from /proc/uptime.
    pub uptime_s: f64,
    /// Byte counters per interface name, loopback included.
    pub interfaces: BTreeMap<String, NetCounters>,
    /// Storage filesystems in df order, pseudo filesystems already left out.
    pub filesystems: Vec<Filesystem>,
}

/// Aggregate CPU time in USER_HZ ticks since boot, as /proc/stat counts it.
/// Fields older kernels do not print are 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTimes {
    pub user: u64,
    pub nice: u64,
    pub system: u64,
    pub idle: u64,
    pub iowait: u64,
    pub irq: u64,
    pub softirq: u64,
    pub steal: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadAverage {
    pub one: f64,
    pub five: f64,
    pub fifteen: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Memory {
    pub total_bytes: f64,
    /// MemAvailable, or MemFree+Buffers+Cached on kernels without it.
    pub available_bytes: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Swap {
    pub total_bytes: f64,
    pub free_bytes: f64,
}

/// Byte counters of one interface since it was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetCounters {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// One mounted storage filesystem as df saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Filesystem {
    /// Mount point, unescaped (spaces are spaces).
    pub mount: String,
    /// Type from /proc/mounts, e.g. `ext4`.
    pub fstype: String,
    pub used_bytes: f64,
    /// Space available to unprivileged users (excludes root's reserve).
    pub available_bytes: f64,
    /// `None` when df -i gave nothing usable or the filesystem has no fixed
    /// inode table (btrfs, vfat report 0 inodes).
    pub inodes: Option<InodeUsage>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InodeUsage {
    pub used: f64,
    pub free: f64,
}

/// Parses the stdout of [`VITALS_COMMAND`].
///
/// # Errors
/// When the output is over [`MAX_OUTPUT_BYTES`], lacks the end marker or a
/// required section, repeats a section, or a line we read does not parse;
/// the error names the section and the output line.
pub fn parse(output: &[u8]) -> Result<VitalsSnapshot, VitalsError> {
    if output.len() > MAX_OUTPUT_BYTES {
        return Err(VitalsError::TooLarge {
            size: output.len(),
            max: MAX_OUTPUT_BYTES,
        });
    }
    let text = String::from_utf8_lossy(output);
    let sections = split_sections(&text)?;

    let cpu = parse_stat(required(&sections, Section::Stat)?)?;
    let (memory, swap) = parse_meminfo(required(&sections, Section::Meminfo)?)?;
    let load = parse_loadavg(required(&sections, Section::Loadavg)?)?;
    let interfaces = parse_net_dev(required(&sections, Section::NetDev)?)?;
    let uptime_s = parse_uptime(required(&sections, Section::Uptime)?)?;
    let df_rows = optional_df(&sections, Section::Df)?;
    let dfi_rows = optional_df(&sections, Section::DfInodes)?;
    // Mounts tell df rows apart; a scrape without disk figures reads neither.
    let disk =
        find(&sections, Section::Df).is_some() || find(&sections, Section::DfInodes).is_some();
    let mount_types = if disk || find(&sections, Section::Mounts).is_some() {
        parse_mounts(required(&sections, Section::Mounts)?)?
    } else {
        BTreeMap::new()
    };

    Ok(VitalsSnapshot {
        cpu,
        load,
        memory,
        swap,
        uptime_s,
        interfaces,
        filesystems: storage_filesystems(&mount_types, &df_rows, &dfi_rows),
    })
}

/// Keeps the previous snapshot per target to compute rates/percentages from
/// deltas. One state per target.
#[derive(Debug, Default)]
pub struct VitalsState {
    baseline: Option<Baseline>,
    /// When disk figures were last read (monitor-side Unix ms).
    disk_read_ms: Option<i64>,
}

/// What a rate needs from an earlier scrape.
#[derive(Debug)]
struct Baseline {
    ts_ms: i64,
    uptime_s: f64,
    cpu: CpuTimes,
    interfaces: BTreeMap<String, NetCounters>,
}

/// Whether two scrapes can be compared.
enum RateWindow {
    /// Too close together for meaningful deltas: keep the older baseline.
    TooShort,
    /// Not one continuous boot (reboot, other host): start over from now.
    Broken,
    /// Seconds of target uptime between the two.
    Usable(f64),
}

impl VitalsState {
    /// The command for a scrape at `ts_ms`: with the disk figures when none were
    /// read yet or `disk_interval` has passed since, else without.
    pub fn command(
        &self,
        ts_ms: i64,
        disk_interval: std::time::Duration,
    ) -> crate::transport::Script<'static> {
        let due = self.disk_read_ms.is_none_or(|last| {
            ts_ms.saturating_sub(last)
                >= i64::try_from(disk_interval.as_millis()).unwrap_or(i64::MAX)
        });
        let (standalone, inline) = if due {
            (VITALS_COMMAND, VITALS_INLINE)
        } else {
            (VITALS_COMMAND_NO_DISK, VITALS_INLINE_NO_DISK)
        };
        crate::transport::Script {
            standalone,
            inline: Some(inline),
        }
    }

    /// Notes that the disk figures were read at `ts_ms`.
    pub fn disk_read(&mut self, ts_ms: i64) {
        self.disk_read_ms = Some(ts_ms);
    }

    /// Returns the measurements for this scrape. `ts_ms` = monitor-side time
    /// of the scrape. Rates are computed over the target's own uptime delta
    /// (immune to SSH latency); `ts_ms` only checks that the two scrapes are
    /// of one continuous boot of one machine.
    pub fn observe(&mut self, snap: VitalsSnapshot, ts_ms: i64) -> Vec<Measurement> {
        let mut out = gauge_measurements(&snap);
        let current = Baseline {
            ts_ms,
            uptime_s: snap.uptime_s,
            cpu: snap.cpu,
            interfaces: snap.interfaces,
        };
        let next = match self.baseline.take() {
            None => current,
            Some(previous) => match rate_window(&previous, &current) {
                RateWindow::TooShort => previous,
                RateWindow::Broken => current,
                RateWindow::Usable(elapsed_s) => {
                    out.extend(cpu_measurements(&previous.cpu, &current.cpu));
                    out.extend(net_measurements(
                        &previous.interfaces,
                        &current.interfaces,
                        elapsed_s,
                    ));
                    current
                }
            },
        };
        self.baseline = Some(next);
        out
    }
}

// ---------------------------------------------------------------------------
// Sections

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    Stat,
    Meminfo,
    Loadavg,
    NetDev,
    Uptime,
    Mounts,
    Df,
    DfInodes,
}

const SECTIONS: [Section; 8] = [
    Section::Stat,
    Section::Meminfo,
    Section::Loadavg,
    Section::NetDev,
    Section::Uptime,
    Section::Mounts,
    Section::Df,
    Section::DfInodes,
];

impl Section {
    /// The name after the marker prefix, as [`VITALS_COMMAND`] prints it.
    fn name(self) -> &'static str {
        match self {
            Section::Stat => "stat",
            Section::Meminfo => "meminfo",
            Section::Loadavg => "loadavg",
            Section::NetDev => "net/dev",
            Section::Uptime => "uptime",
            Section::Mounts => "mounts",
            Section::Df => "df",
            Section::DfInodes => "dfi",
        }
    }

    fn from_name(name: &str) -> Option<Section> {
        SECTIONS.into_iter().find(|section| section.name() == name)
    }
}

/// The lines between one marker and the next.
struct RawSection<'a> {
    section: Section,
    /// 1-based output line of the marker.
    marker_line: usize,
    /// The output from the line after the marker on (lines are read from it
    /// as they are needed: no vector of lines is built per scrape).
    text: &'a str,
    /// How many lines of `text` are the section's.
    lines: usize,
    /// Whether the last of them is empty.
    last_empty: bool,
}

impl<'a> RawSection<'a> {
    /// Lines with their 1-based output line numbers.
    fn numbered(&self) -> impl Iterator<Item = (usize, &'a str)> + '_ {
        let first = self.marker_line.saturating_add(1);
        self.text
            .split('\n')
            .take(self.lines)
            .enumerate()
            .map(move |(index, line)| {
                // A pty on the SSH channel turns newlines into CRLF.
                let line = line.strip_suffix('\r').unwrap_or(line);
                (first.saturating_add(index), line)
            })
    }

    /// The first line with something on it.
    fn first_content_line(&self) -> Option<(usize, &'a str)> {
        self.numbered().find(|(_, line)| !line.trim().is_empty())
    }

    fn error(&self, line: usize, reason: impl Into<String>) -> VitalsError {
        VitalsError::Malformed {
            section: self.section.name(),
            line,
            reason: reason.into(),
        }
    }

    /// An error about the section as a whole, located at its marker.
    fn section_error(&self, reason: impl Into<String>) -> VitalsError {
        self.error(self.marker_line, reason)
    }
}

/// Splits the output at marker lines. Only a whole line equal to a known
/// marker counts: a mount named `@@herd:x` shows up inside a longer line and
/// so cannot start a section.
fn split_sections(text: &str) -> Result<Vec<RawSection<'_>>, VitalsError> {
    let mut sections: Vec<RawSection<'_>> = Vec::with_capacity(SECTIONS.len());
    let mut offset = 0;
    for (index, raw_line) in text.split('\n').enumerate() {
        let line_no = index.saturating_add(1);
        let after = (offset + raw_line.len() + 1).min(text.len());
        offset = after;
        // A pty on the SSH channel turns newlines into CRLF.
        let line = raw_line.strip_suffix('\r').unwrap_or(raw_line);
        let head = line
            .strip_prefix(HEAD_PREFIX)
            .and_then(|l| l.strip_suffix(HEAD_SUFFIX));
        if let Some(name) = head.or_else(|| line.strip_prefix(MARKER_PREFIX)) {
            if name == END_SECTION && head.is_none() {
                return Ok(sections);
            }
            if let Some(section) = Section::from_name(name) {
                // head separates files by an empty line: not the last file's.
                if let Some(current) = sections.last_mut() {
                    if current.lines > 0 && current.last_empty {
                        current.lines -= 1;
                    }
                }
                if sections.iter().any(|raw| raw.section == section) {
                    return Err(VitalsError::DuplicateSection {
                        section: section.name(),
                        line: line_no,
                    });
                }
                sections.push(RawSection {
                    section,
                    marker_line: line_no,
                    text: &text[after..],
                    lines: 0,
                    last_empty: false,
                });
                continue;
            }
        }
        // Before the first marker this is shell start-up noise: dropped.
        if let Some(current) = sections.last_mut() {
            current.lines += 1;
            current.last_empty = line.is_empty();
        }
    }
    Err(VitalsError::Truncated)
}

fn find<'s, 'a>(sections: &'s [RawSection<'a>], section: Section) -> Option<&'s RawSection<'a>> {
    sections.iter().find(|raw| raw.section == section)
}

fn required<'s, 'a>(
    sections: &'s [RawSection<'a>],
    section: Section,
) -> Result<&'s RawSection<'a>, VitalsError> {
    find(sections, section).ok_or(VitalsError::MissingSection(section.name()))
}

/// A df section that is absent or empty gives no rows: df may be missing on
/// the target, and busybox builds without `-i` print only an error.
fn optional_df(sections: &[RawSection<'_>], section: Section) -> Result<Vec<DfRow>, VitalsError> {
    match find(sections, section) {
        Some(raw) => parse_df(raw),
        None => Ok(Vec::new()),
    }
}

// ---------------------------------------------------------------------------
// Values

fn parse_counter(raw: &RawSection<'_>, line: usize, token: &str) -> Result<u64, VitalsError> {
    token.parse::<u64>().map_err(|_| {
        raw.error(
            line,
            format!(
                "{} is not a counter",
                quote_excerpt(token, MAX_QUOTED_CHARS)
            ),
        )
    })
}

/// A finite, non-negative decimal such as a load average or uptime.
fn parse_gauge(raw: &RawSection<'_>, line: usize, token: &str) -> Result<f64, VitalsError> {
    match token.parse::<f64>() {
        Ok(value) if value.is_finite() && value >= 0.0 => Ok(value),
        _ => Err(raw.error(
            line,
            format!(
                "{} is not a non-negative number",
                quote_excerpt(token, MAX_QUOTED_CHARS)
            ),
        )),
    }
}

fn kib_to_bytes(kib: u64) -> f64 {
    kib as f64 * BYTES_PER_KIB
}

/// `part` as a percentage of `whole`; `None` when there is no whole to
/// divide by. Clamped because float rounding may step just past the bounds.
fn percent(part: f64, whole: f64) -> Option<f64> {
    if whole > 0.0 && whole.is_finite() && part.is_finite() {
        Some((part / whole * PERCENT).clamp(0.0, PERCENT))
    } else {
        None
    }
}

// ---------------------------------------------------------------------------
// /proc/stat

fn parse_stat(raw: &RawSection<'_>) -> Result<CpuTimes, VitalsError> {
    let mut found = None;
    for (line_no, line) in raw.numbered() {
        let mut tokens = line.split_ascii_whitespace();
        if tokens.next() != Some(AGGREGATE_CPU_LABEL) {
            continue;
        }
        if found.is_some() {
            return Err(raw.error(line_no, "second aggregate `cpu` line"));
        }
        found = Some(parse_cpu_fields(raw, line_no, tokens)?);
    }
    found.ok_or_else(|| raw.section_error("no aggregate `cpu` line"))
}

fn parse_cpu_fields<'a>(
    raw: &RawSection<'_>,
    line_no: usize,
    tokens: impl Iterator<Item = &'a str>,
) -> Result<CpuTimes, VitalsError> {
    let mut values = [0u64; CPU_FIELDS_READ];
    let mut count = 0usize;
    for (slot, token) in values.iter_mut().zip(tokens) {
        *slot = parse_counter(raw, line_no, token)?;
        count += 1;
    }
    if count < MIN_CPU_FIELDS {
        return Err(raw.error(
            line_no,
            format!("`cpu` line has {count} fields, at least {MIN_CPU_FIELDS} expected"),
        ));
    }
    let [user, nice, system, idle, iowait, irq, softirq, steal] = values;
    Ok(CpuTimes {
        user,
        nice,
        system,
        idle,
        iowait,
        irq,
        softirq,
        steal,
    })
}

// ---------------------------------------------------------------------------
// /proc/meminfo

const MEM_TOTAL: &str = "MemTotal";
const MEM_AVAILABLE: &str = "MemAvailable";
const MEM_FREE: &str = "MemFree";
const MEM_BUFFERS: &str = "Buffers";
const MEM_CACHED: &str = "Cached";
const SWAP_TOTAL: &str = "SwapTotal";
const SWAP_FREE: &str = "SwapFree";
const MEMINFO_KEYS: [&str; 7] = [
    MEM_TOTAL,
    MEM_AVAILABLE,
    MEM_FREE,
    MEM_BUFFERS,
    MEM_CACHED,
    SWAP_TOTAL,
    SWAP_FREE,
];
const MEMINFO_UNIT: &str = "kB";

/// Only the keys we use are read (strictly); the rest of the file changes
/// with every kernel and is none of our business.
fn parse_meminfo(raw: &RawSection<'_>) -> Result<(Memory, Option<Swap>), VitalsError> {
    let mut kib: BTreeMap<&str, u64> = BTreeMap::new();
    for (line_no, line) in raw.numbered() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let key = key.trim();
        let Some(known) = MEMINFO_KEYS.into_iter().find(|k| *k == key) else {
            continue;
        };
        let value = parse_meminfo_value(raw, line_no, rest)?;
        if kib.insert(known, value).is_some() {
            return Err(raw.error(line_no, format!("second `{known}` line")));
        }
    }
    let memory = memory_from(raw, &kib)?;
    let swap = swap_from(raw, &kib)?;
    Ok((memory, swap))
}

/// `   12345 kB` → 12345.
fn parse_meminfo_value(
    raw: &RawSection<'_>,
    line_no: usize,
    rest: &str,
) -> Result<u64, VitalsError> {
    let mut tokens = rest.split_ascii_whitespace();
    match (tokens.next(), tokens.next(), tokens.next()) {
        (Some(value), Some(MEMINFO_UNIT), None) => parse_counter(raw, line_no, value),
        _ => Err(raw.error(
            line_no,
            format!(
                "expected `<number> kB`, got {}",
                quote_excerpt(rest.trim(), MAX_QUOTED_CHARS)
            ),
        )),
    }
}

fn memory_from(raw: &RawSection<'_>, kib: &BTreeMap<&str, u64>) -> Result<Memory, VitalsError> {
    let get = |key: &str| kib.get(key).copied();
    let total = get(MEM_TOTAL).ok_or_else(|| raw.section_error("no MemTotal"))?;
    if total == 0 {
        return Err(raw.section_error("MemTotal is 0"));
    }
    let available = match get(MEM_AVAILABLE) {
        Some(available) if available > total => {
            return Err(raw.section_error("MemAvailable exceeds MemTotal"));
        }
        Some(available) => available,
        // Kernels before 3.14 have no MemAvailable; free + buffers + page
        // cache is the classic estimate. It can exceed MemTotal (Cached
        // counts shmem, which is not reclaimable), hence the cap.
        None => match (get(MEM_FREE), get(MEM_BUFFERS), get(MEM_CACHED)) {
            (Some(free), Some(buffers), Some(cached)) => free
                .saturating_add(buffers)
                .saturating_add(cached)
                .min(total),
            _ => {
                return Err(
                    raw.section_error("neither MemAvailable nor MemFree, Buffers and Cached")
                )
            }
        },
    };
    Ok(Memory {
        total_bytes: kib_to_bytes(total),
        available_bytes: kib_to_bytes(available),
    })
}

fn swap_from(raw: &RawSection<'_>, kib: &BTreeMap<&str, u64>) -> Result<Option<Swap>, VitalsError> {
    match (kib.get(SWAP_TOTAL).copied(), kib.get(SWAP_FREE).copied()) {
        (Some(total), Some(free)) if free > total => {
            Err(raw.section_error("SwapFree exceeds SwapTotal"))
        }
        (Some(total), Some(free)) => Ok(Some(Swap {
            total_bytes: kib_to_bytes(total),
            free_bytes: kib_to_bytes(free),
        })),
        _ => Ok(None),
    }
}

// ---------------------------------------------------------------------------
// /proc/loadavg, /proc/uptime

fn parse_loadavg(raw: &RawSection<'_>) -> Result<LoadAverage, VitalsError> {
    let (line_no, line) = raw
        .first_content_line()
        .ok_or_else(|| raw.section_error("empty"))?;
    let tokens: Vec<&str> = line.split_ascii_whitespace().take(LOADAVG_FIELDS).collect();
    let [one, five, fifteen] = tokens.as_slice() else {
        return Err(raw.error(line_no, format!("expected {LOADAVG_FIELDS} load averages")));
    };
    Ok(LoadAverage {
        one: parse_gauge(raw, line_no, one)?,
        five: parse_gauge(raw, line_no, five)?,
        fifteen: parse_gauge(raw, line_no, fifteen)?,
    })
}

fn parse_uptime(raw: &RawSection<'_>) -> Result<f64, VitalsError> {
    let (line_no, line) = raw
        .first_content_line()
        .ok_or_else(|| raw.section_error("empty"))?;
    let seconds = line
        .split_ascii_whitespace()
        .next()
        .ok_or_else(|| raw.error(line_no, "no uptime"))?;
    parse_gauge(raw, line_no, seconds)
}

// ---------------------------------------------------------------------------
// /proc/net/dev

fn parse_net_dev(raw: &RawSection<'_>) -> Result<BTreeMap<String, NetCounters>, VitalsError> {
    let mut interfaces = BTreeMap::new();
    for (line_no, line) in raw.numbered() {
        // The two header lines are the only ones with `|` column groups.
        if line.trim().is_empty() || line.contains('|') {
            continue;
        }
        let (name, counters) = parse_net_dev_line(raw, line_no, line)?;
        if interfaces.insert(name.to_string(), counters).is_some() {
            return Err(raw.error(
                line_no,
                format!(
                    "interface {} listed twice",
                    quote_excerpt(name, MAX_QUOTED_CHARS)
                ),
            ));
        }
    }
    // Every network namespace has at least `lo`: none means cat failed.
    if interfaces.is_empty() {
        return Err(raw.section_error("no interfaces"));
    }
    Ok(interfaces)
}

/// `  eth0: 1234 ...`; old kernels print `eth0:1234` once a counter fills
/// its column, so the split is at the colon (Linux forbids `:` in names).
fn parse_net_dev_line<'a>(
    raw: &RawSection<'_>,
    line_no: usize,
    line: &'a str,
) -> Result<(&'a str, NetCounters), VitalsError> {
    let (name, rest) = line.split_once(':').ok_or_else(|| {
        raw.error(
            line_no,
            format!(
                "expected `<iface>: <counters>`, got {}",
                quote_excerpt(line, MAX_QUOTED_CHARS)
            ),
        )
    })?;
    let name = name.trim();
    if name.is_empty() || name.contains(char::is_whitespace) {
        return Err(raw.error(
            line_no,
            format!(
                "bad interface name {}",
                quote_excerpt(name, MAX_QUOTED_CHARS)
            ),
        ));
    }
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    if fields.len() < NETDEV_FIELDS {
        return Err(raw.error(
            line_no,
            format!("{} counters, {NETDEV_FIELDS} expected", fields.len()),
        ));
    }
    let field = |index: usize| -> Result<u64, VitalsError> {
        let token = fields
            .get(index)
            .ok_or_else(|| raw.error(line_no, "missing counter"))?;
        parse_counter(raw, line_no, token)
    };
    let counters = NetCounters {
        rx_bytes: field(NETDEV_RX_BYTES)?,
        tx_bytes: field(NETDEV_TX_BYTES)?,
    };
    Ok((name, counters))
}

// ---------------------------------------------------------------------------
// /proc/mounts

/// Mount point → filesystem type. A later line for the same mount point
/// wins: it is mounted over the earlier one, and it is what df measures.
fn parse_mounts(raw: &RawSection<'_>) -> Result<BTreeMap<String, String>, VitalsError> {
    let mut types = BTreeMap::new();
    for (line_no, line) in raw.numbered() {
        if line.trim().is_empty() {
            continue;
        }
        // Fields never contain blanks: the kernel escapes them as \040 etc.
        let mut fields = line.split_ascii_whitespace();
        let (Some(_source), Some(mount), Some(fstype)) =
            (fields.next(), fields.next(), fields.next())
        else {
            return Err(raw.error(
                line_no,
                format!(
                    "expected `<source> <mount> <type> ...`, got {}",
                    quote_excerpt(line, MAX_QUOTED_CHARS)
                ),
            ));
        };
        types.insert(unescape_octal(mount), fstype.to_string());
    }
    // / is always mounted: an empty list means cat failed, and without
    // types no df row could be told apart from a pseudo filesystem.
    if types.is_empty() {
        return Err(raw.section_error("no mounts"));
    }
    Ok(types)
}

/// Undoes the kernel's `\ooo` escapes (`\040` space, `\011` tab, `\012`
/// newline, `\134` backslash). Anything else is kept as it is.
fn unescape_octal(text: &str) -> String {
    const ESCAPE_LEN: usize = 4;
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while let Some(&byte) = bytes.get(index) {
        if byte == b'\\' {
            let escaped = bytes
                .get(index.saturating_add(1)..index.saturating_add(ESCAPE_LEN))
                .and_then(octal_byte);
            if let Some(value) = escaped {
                out.push(value);
                index = index.saturating_add(ESCAPE_LEN);
                continue;
            }
        }
        out.push(byte);
        index = index.saturating_add(1);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Three octal digits → the byte they spell, if it fits in one.
fn octal_byte(digits: &[u8]) -> Option<u8> {
    const OCTAL_BASE: u16 = 8;
    let value = digits.iter().try_fold(0u16, |acc, &digit| {
        (b'0'..=b'7')
            .contains(&digit)
            .then(|| acc * OCTAL_BASE + u16::from(digit - b'0'))
    })?;
    u8::try_from(value).ok()
}

// ---------------------------------------------------------------------------
// df -P

/// One df row; for `df -Pi` the three numbers count inodes instead of KiB.
/// `None` where df printed `-` (unknown).
#[derive(Debug, Clone, PartialEq)]
struct DfRow {
    mount: String,
    total: Option<u64>,
    used: Option<u64>,
    available: Option<u64>,
}

/// Reads df rows. The first line is the header unless it already is a row
/// (its words depend on the implementation and the locale). A line holding
/// only a filesystem name is a wrapped row whose numbers follow on the next
/// line, as some dfs print long device names even though -P should not.
fn parse_df(raw: &RawSection<'_>) -> Result<Vec<DfRow>, VitalsError> {
    let mut rows = Vec::new();
    let mut pending_name: Option<(usize, &str)> = None;
    let mut seen_header = false;
    for (line_no, line) in raw.numbered() {
        if line.trim().is_empty() {
            continue;
        }
        let is_first_line = !seen_header;
        seen_header = true;
        let had_pending = pending_name.is_some();
        let candidate: Cow<'_, str> = match pending_name.take() {
            Some((_, name)) => Cow::Owned(format!("{name} {line}")),
            None => Cow::Borrowed(line),
        };
        if let Some(row) = parse_df_row(raw, line_no, &candidate)? {
            rows.push(row);
        } else if is_first_line {
            // The header.
        } else if !had_pending && line.split_ascii_whitespace().nth(1).is_none() {
            pending_name = Some((line_no, line.trim()));
        } else {
            return Err(raw.error(
                line_no,
                format!("not a df row: {}", quote_excerpt(line, MAX_QUOTED_CHARS)),
            ));
        }
    }
    if let Some((line_no, name)) = pending_name {
        return Err(raw.error(
            line_no,
            format!(
                "filesystem {} has no numbers",
                quote_excerpt(name, MAX_QUOTED_CHARS)
            ),
        ));
    }
    Ok(rows)
}

/// Finds `total used available capacity` in a row and takes the rest of the
/// line as the mount point, spaces and all. The first place the pattern
/// fits wins: a mount point is user-chosen (a USB stick's label) far more
/// often than a device name holds blanks, so the name is assumed blank-free
/// where the two conflict.
fn parse_df_row(
    raw: &RawSection<'_>,
    line_no: usize,
    line: &str,
) -> Result<Option<DfRow>, VitalsError> {
    let tokens = token_spans(line);
    // Token 0 is (the start of) the filesystem name.
    for start in 1..tokens.len() {
        let Some(window) = tokens.get(start..start.saturating_add(DF_ROW_TAIL_TOKENS)) else {
            break;
        };
        let [(_, total), (_, used), (_, available), (_, capacity), (mount_start, _)] = window
        else {
            break;
        };
        if !(is_df_count(total)
            && is_df_count(used)
            && is_df_count(available)
            && is_df_capacity(capacity))
        {
            continue;
        }
        let Some(mount) = line.get(*mount_start..) else {
            break;
        };
        return Ok(Some(DfRow {
            mount: mount.to_string(),
            total: parse_df_count(raw, line_no, total)?,
            used: parse_df_count(raw, line_no, used)?,
            available: parse_df_count(raw, line_no, available)?,
        }));
    }
    Ok(None)
}

/// Blank-separated tokens with their byte offsets, so that the mount point
/// can be cut from the line with its inner spacing intact.
fn token_spans(line: &str) -> Vec<(usize, &str)> {
    let is_blank = |c: char| c == ' ' || c == '\t';
    let mut spans = Vec::new();
    let mut start = None;
    for (index, c) in line.char_indices() {
        match (is_blank(c), start) {
            (true, Some(from)) => {
                if let Some(token) = line.get(from..index) {
                    spans.push((from, token));
                }
                start = None;
            }
            (false, None) => start = Some(index),
            _ => {}
        }
    }
    if let Some(token) = start.and_then(|from| line.get(from..).map(|token| (from, token))) {
        spans.push(token);
    }
    spans
}

fn is_digits(token: &str) -> bool {
    !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit())
}

fn is_df_count(token: &str) -> bool {
    token == DF_UNKNOWN || is_digits(token)
}

/// `14%`, or `-` where GNU df cannot tell (no inodes).
fn is_df_capacity(token: &str) -> bool {
    token == DF_UNKNOWN || token.strip_suffix('%').is_some_and(is_digits)
}

fn parse_df_count(
    raw: &RawSection<'_>,
    line_no: usize,
    token: &str,
) -> Result<Option<u64>, VitalsError> {
    if token == DF_UNKNOWN {
        Ok(None)
    } else {
        parse_counter(raw, line_no, token).map(Some)
    }
}

/// Joins df rows with their types and inode counts, keeping what is worth
/// watching. A mount point listed twice is kept once; a row whose mount
/// point is not in /proc/mounts (mounted between the two reads, or a name df
/// printed differently) is skipped because its type is unknown.
fn storage_filesystems(
    mount_types: &BTreeMap<String, String>,
    df_rows: &[DfRow],
    dfi_rows: &[DfRow],
) -> Vec<Filesystem> {
    let mut inode_rows: BTreeMap<&str, &DfRow> = BTreeMap::new();
    for row in dfi_rows {
        inode_rows.entry(row.mount.as_str()).or_insert(row);
    }
    let mut filesystems: Vec<Filesystem> = Vec::new();
    let mut seen_mounts: BTreeSet<&str> = BTreeSet::new();
    for row in df_rows {
        let Some(fstype) = mount_types.get(&row.mount) else {
            continue;
        };
        if !is_storage(fstype, &row.mount) || !seen_mounts.insert(row.mount.as_str()) {
            continue;
        }
        let (Some(used), Some(available)) = (row.used, row.available) else {
            continue;
        };
        let (used_bytes, available_bytes) = (kib_to_bytes(used), kib_to_bytes(available));
        // A filesystem of no size has no usage to speak of.
        if used_bytes + available_bytes <= 0.0 {
            continue;
        }
        filesystems.push(Filesystem {
            mount: row.mount.clone(),
            fstype: fstype.clone(),
            used_bytes,
            available_bytes,
            inodes: inode_rows
                .get(row.mount.as_str())
                .and_then(|row| inode_usage(row)),
        });
    }
    filesystems
}

fn is_storage(fstype: &str, mount: &str) -> bool {
    if fstype == OVERLAY_FILESYSTEM {
        return mount == ROOT_MOUNT;
    }
    !PSEUDO_FILESYSTEMS.contains(&fstype) && !READ_ONLY_IMAGE_FILESYSTEMS.contains(&fstype)
}

/// btrfs, vfat and friends allocate inodes on demand and report 0: there is
/// no inode limit to run into, so no percentage.
fn inode_usage(row: &DfRow) -> Option<InodeUsage> {
    if row.total == Some(0) {
        return None;
    }
    let (used, free) = (row.used? as f64, row.available? as f64);
    (used + free > 0.0).then_some(InodeUsage { used, free })
}

// ---------------------------------------------------------------------------
// Measurements

fn gauge_measurements(snap: &VitalsSnapshot) -> Vec<Measurement> {
    let mut out = vec![
        Measurement::new(metric::LOAD_1, snap.load.one),
        Measurement::new(metric::LOAD_5, snap.load.five),
        Measurement::new(metric::LOAD_15, snap.load.fifteen),
        Measurement::new(metric::MEM_TOTAL_BYTES, snap.memory.total_bytes),
        Measurement::new(metric::MEM_AVAILABLE_BYTES, snap.memory.available_bytes),
    ];
    let memory = &snap.memory;
    if let Some(used) = percent(
        memory.total_bytes - memory.available_bytes,
        memory.total_bytes,
    ) {
        out.push(Measurement::new(metric::MEM_USED_PCT, used));
    }
    if let Some(swap) = &snap.swap {
        out.push(Measurement::new(metric::SWAP_TOTAL_BYTES, swap.total_bytes));
        // No swap at all is a normal setup, and none of it is used.
        let used = percent(swap.total_bytes - swap.free_bytes, swap.total_bytes).unwrap_or(0.0);
        out.push(Measurement::new(metric::SWAP_USED_PCT, used));
    }
    out.push(Measurement::new(metric::UPTIME_S, snap.uptime_s));
    for fs in &snap.filesystems {
        out.extend(filesystem_measurements(fs));
    }
    out
}

fn filesystem_measurements(fs: &Filesystem) -> Vec<Measurement> {
    let labelled = |name: &str, value: f64| {
        Measurement::new(name, value).with_label(metric::LABEL_MOUNT, &fs.mount)
    };
    let mut out = Vec::new();
    // Like df's Capacity column: root's reserve counts as neither, so a
    // full disk reads 100% when unprivileged users can no longer write.
    if let Some(used) = percent(fs.used_bytes, fs.used_bytes + fs.available_bytes) {
        out.push(labelled(metric::DISK_USED_PCT, used));
    }
    out.push(labelled(metric::DISK_FREE_BYTES, fs.available_bytes));
    if let Some(inodes) = &fs.inodes {
        if let Some(used) = percent(inodes.used, inodes.used + inodes.free) {
            out.push(labelled(metric::DISK_INODES_USED_PCT, used));
        }
    }
    out
}

fn rate_window(previous: &Baseline, current: &Baseline) -> RateWindow {
    let elapsed_s = current.uptime_s - previous.uptime_s;
    // Uptime going backwards means a reboot: every counter restarted.
    if !elapsed_s.is_finite() || elapsed_s < 0.0 {
        return RateWindow::Broken;
    }
    if elapsed_s < MIN_RATE_INTERVAL_S {
        return RateWindow::TooShort;
    }
    let wall_s = current.ts_ms.saturating_sub(previous.ts_ms) as f64 / MS_PER_S;
    if (elapsed_s - wall_s).abs() > CLOCK_SLACK_S.max(wall_s.abs()) {
        return RateWindow::Broken;
    }
    RateWindow::Usable(elapsed_s)
}

/// Tick deltas of one interval, grouped the way the shares need them.
struct CpuDeltas {
    busy: f64,
    idle: f64,
    iowait: f64,
    steal: f64,
}

/// Every field is a monotonic counter except iowait, which proc(5) documents
/// can decrease: a dip there is read as no iowait, a dip anywhere else as a
/// counter reset, which gives no deltas. guest and guest_nice are not read
/// at all: they are already part of user and nice.
fn cpu_deltas(previous: &CpuTimes, current: &CpuTimes) -> Option<CpuDeltas> {
    let delta = |before: u64, now: u64| now.checked_sub(before).map(|ticks| ticks as f64);
    let busy = [
        (previous.user, current.user),
        (previous.nice, current.nice),
        (previous.system, current.system),
        (previous.irq, current.irq),
        (previous.softirq, current.softirq),
    ]
    .into_iter()
    .map(|(before, now)| delta(before, now))
    .sum::<Option<f64>>()?;
    Some(CpuDeltas {
        busy,
        idle: delta(previous.idle, current.idle)?,
        iowait: current.iowait.saturating_sub(previous.iowait) as f64,
        steal: delta(previous.steal, current.steal)?,
    })
}

/// CPU shares over the interval: used is everything but idle and iowait
/// (steal included: the guest wanted the CPU and did not get it).
fn cpu_measurements(previous: &CpuTimes, current: &CpuTimes) -> Vec<Measurement> {
    let Some(deltas) = cpu_deltas(previous, current) else {
        return Vec::new();
    };
    let total = deltas.busy + deltas.idle + deltas.iowait + deltas.steal;
    let shares = [
        (
            metric::CPU_USED_PCT,
            percent(deltas.busy + deltas.steal, total),
        ),
        (metric::CPU_IOWAIT_PCT, percent(deltas.iowait, total)),
        (metric::CPU_STEAL_PCT, percent(deltas.steal, total)),
    ];
    shares
        .into_iter()
        .filter_map(|(name, value)| value.map(|value| Measurement::new(name, value)))
        .collect()
}

/// Byte rates per interface present in both scrapes. A counter that went
/// backwards means the interface was recreated (or a 32-bit counter
/// wrapped on an old kernel): that interface is skipped this once.
fn net_measurements(
    previous: &BTreeMap<String, NetCounters>,
    current: &BTreeMap<String, NetCounters>,
    elapsed_s: f64,
) -> Vec<Measurement> {
    let mut out = Vec::new();
    for (name, now) in current {
        if name == LOOPBACK_IFACE {
            continue;
        }
        let Some(before) = previous.get(name) else {
            continue;
        };
        let (Some(rx), Some(tx)) = (
            now.rx_bytes.checked_sub(before.rx_bytes),
            now.tx_bytes.checked_sub(before.tx_bytes),
        ) else {
            continue;
        };
        for (metric_name, bytes) in [
            (metric::NET_RX_BYTES_PER_S, rx),
            (metric::NET_TX_BYTES_PER_S, tx),
        ] {
            out.push(
                Measurement::new(metric_name, bytes as f64 / elapsed_s)
                    .with_label(metric::LABEL_IFACE, name),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// `sh -c "$VITALS_COMMAND"` on a real Linux machine (GNU coreutils df).
    const LINUX_REAL: &str = include_str!("fixtures/vitals/linux_real.txt");
    /// The same command under `busybox sh` with busybox's cat and df.
    const BUSYBOX_REAL: &str = include_str!("fixtures/vitals/busybox_real.txt");
    const RATES_T0: &str = include_str!("fixtures/vitals/rates_t0.txt");
    const RATES_T1: &str = include_str!("fixtures/vitals/rates_t1.txt");
    const REBOOT_BEFORE: &str = include_str!("fixtures/vitals/reboot_before.txt");
    const REBOOT_AFTER: &str = include_str!("fixtures/vitals/reboot_after.txt");
    const REBOOT_LATER: &str = include_str!("fixtures/vitals/reboot_later.txt");
    const MOUNT_SPACES: &str = include_str!("fixtures/vitals/mount_spaces.txt");
    const NO_SWAP_BTRFS: &str = include_str!("fixtures/vitals/no_swap_btrfs.txt");
    const OLD_KERNEL: &str = include_str!("fixtures/vitals/old_kernel_no_memavailable.txt");
    const BUSYBOX_WRAPPED_NO_DFI: &str = include_str!("fixtures/vitals/busybox_wrapped_no_dfi.txt");
    const CONTAINER_OVERLAY: &str = include_str!("fixtures/vitals/container_overlay.txt");
    const LINUX_REAL_BYTES: &[u8] = include_bytes!("fixtures/vitals/linux_real.txt");

    const KIB: f64 = 1024.0;
    const TEN_S_MS: i64 = 10_000;

    fn parsed(output: &str) -> VitalsSnapshot {
        match parse(output.as_bytes()) {
            Ok(snap) => snap,
            Err(err) => panic!("fixture does not parse: {err}"),
        }
    }

    /// The value of an unlabelled metric, if emitted.
    fn find(out: &[Measurement], metric: &str) -> Option<f64> {
        out.iter()
            .find(|m| m.metric == metric && m.labels.is_empty())
            .map(|m| m.value)
    }

    /// The value of a metric with one label, if emitted.
    fn find_labelled(out: &[Measurement], metric: &str, label: &str, value: &str) -> Option<f64> {
        out.iter()
            .find(|m| m.metric == metric && m.labels.get(label).map(String::as_str) == Some(value))
            .map(|m| m.value)
    }

    fn assert_close(actual: Option<f64>, expected: f64) {
        let actual = actual.unwrap_or_else(|| panic!("no value, expected {expected}"));
        let tolerance = 1e-9 * expected.abs().max(1.0);
        assert!(
            (actual - expected).abs() <= tolerance,
            "{actual} != {expected}"
        );
    }

    fn emits(out: &[Measurement], prefix: &str) -> bool {
        out.iter().any(|m| m.metric.starts_with(prefix))
    }

    fn mounts(snap: &VitalsSnapshot) -> Vec<&str> {
        snap.filesystems
            .iter()
            .map(|fs| fs.mount.as_str())
            .collect()
    }

    fn filesystem<'a>(snap: &'a VitalsSnapshot, mount: &str) -> &'a Filesystem {
        snap.filesystems
            .iter()
            .find(|fs| fs.mount == mount)
            .unwrap_or_else(|| panic!("no filesystem at {mount}"))
    }

    /// The output without one section (marker and body).
    fn without_section(output: &str, name: &str) -> String {
        let marker = format!("{MARKER_PREFIX}{name}\n");
        let start = output.find(&marker).expect("section present");
        let body = start + marker.len();
        let end = output[body..]
            .find(MARKER_PREFIX)
            .map_or(output.len(), |offset| body + offset);
        format!("{}{}", &output[..start], &output[end..])
    }

    fn replaced(output: &str, from: &str, to: &str) -> String {
        assert!(output.contains(from), "fixture lacks {from:?}");
        output.replacen(from, to, 1)
    }

    /// Values any scrape may produce: finite, shares within 0..=100 and
    /// rates and sizes never negative.
    fn assert_sane(out: &[Measurement]) {
        for m in out {
            assert!(m.value.is_finite(), "{m:?}");
            assert!(m.value >= 0.0, "{m:?}");
            if m.metric.ends_with("_pct") {
                assert!(m.value <= PERCENT, "{m:?}");
            }
        }
    }

    #[test]
    fn parses_real_linux_fixture() {
        let snap = parsed(LINUX_REAL);
        assert_eq!(
            snap.cpu,
            CpuTimes {
                user: 15553,
                nice: 0,
                system: 4887,
                idle: 51798,
                iowait: 490,
                irq: 0,
                softirq: 34,
                steal: 10,
            }
        );
        assert_eq!(
            snap.load,
            LoadAverage {
                one: 0.48,
                five: 0.43,
                fifteen: 0.21
            }
        );
        assert_eq!(snap.memory.total_bytes, 24_684_092.0 * KIB);
        assert_eq!(snap.memory.available_bytes, 24_174_984.0 * KIB);
        assert_eq!(
            snap.swap,
            Some(Swap {
                total_bytes: 0.0,
                free_bytes: 0.0
            })
        );
        assert_eq!(snap.uptime_s, 366.32);
        assert_eq!(
            snap.interfaces.get("eth0"),
            Some(&NetCounters {
                rx_bytes: 90_346_281,
                tx_bytes: 190_723
            })
        );
        assert!(snap.interfaces.contains_key("lo"));
        // devtmpfs, tmpfs and the cgroup tmpfs are pseudo filesystems.
        assert_eq!(mounts(&snap), ["/"]);
        let root = filesystem(&snap, "/");
        assert_eq!(root.fstype, "ext4");
        assert_eq!(root.used_bytes, 13_130_076.0 * KIB);
        assert_eq!(root.available_bytes, 82_155_812.0 * KIB);
        assert_eq!(
            root.inodes,
            Some(InodeUsage {
                used: 406_926.0,
                free: 16_370_290.0
            })
        );
    }

    #[test]
    fn parses_real_busybox_fixture() {
        let snap = parsed(BUSYBOX_REAL);
        assert_eq!(mounts(&snap), ["/"]);
        let root = filesystem(&snap, "/");
        assert_eq!(root.used_bytes, 13_130_088.0 * KIB);
        // busybox df -Pi heads its columns `Used Available Capacity`.
        assert_eq!(
            root.inodes,
            Some(InodeUsage {
                used: 406_932.0,
                free: 16_370_284.0
            })
        );
    }

    #[test]
    fn first_scrape_emits_gauges_but_no_rates() {
        let out = VitalsState::default().observe(parsed(LINUX_REAL), 0);
        assert!(!emits(&out, "cpu."));
        assert!(!emits(&out, "net."));
        assert_close(find(&out, "load.1"), 0.48);
        assert_close(find(&out, "load.5"), 0.43);
        assert_close(find(&out, "load.15"), 0.21);
        assert_close(find(&out, "mem.total_bytes"), 24_684_092.0 * KIB);
        assert_close(find(&out, "mem.available_bytes"), 24_174_984.0 * KIB);
        assert_close(
            find(&out, "mem.used_pct"),
            (24_684_092.0 - 24_174_984.0) / 24_684_092.0 * 100.0,
        );
        assert_close(find(&out, "swap.total_bytes"), 0.0);
        assert_close(find(&out, "swap.used_pct"), 0.0);
        assert_close(find(&out, "uptime_s"), 366.32);
        assert_close(
            find_labelled(&out, "disk.used_pct", "mount", "/"),
            13_130_076.0 / (13_130_076.0 + 82_155_812.0) * 100.0,
        );
        assert_close(
            find_labelled(&out, "disk.free_bytes", "mount", "/"),
            82_155_812.0 * KIB,
        );
        assert_close(
            find_labelled(&out, "disk.inodes_used_pct", "mount", "/"),
            406_926.0 / (406_926.0 + 16_370_290.0) * 100.0,
        );
        assert_sane(&out);
    }

    #[test]
    fn cpu_and_net_rates_from_two_snapshots() {
        let mut state = VitalsState::default();
        state.observe(parsed(RATES_T0), 0);
        let out = state.observe(parsed(RATES_T1), TEN_S_MS);
        // Deltas: user 600, system 200, idle 100, iowait 50, steal 50 → 1000
        // ticks; guest +100 is inside user already and must not count twice.
        assert_close(find(&out, "cpu.used_pct"), 85.0);
        assert_close(find(&out, "cpu.iowait_pct"), 5.0);
        assert_close(find(&out, "cpu.steal_pct"), 5.0);
        // 10 s of uptime: eth0 +250000 rx, +100000 tx bytes.
        assert_close(
            find_labelled(&out, "net.rx_bytes_per_s", "iface", "eth0"),
            25_000.0,
        );
        assert_close(
            find_labelled(&out, "net.tx_bytes_per_s", "iface", "eth0"),
            10_000.0,
        );
        // lo is skipped; wlan0 appeared and docker0 vanished: no rate yet.
        for iface in ["lo", "wlan0", "docker0"] {
            assert!(find_labelled(&out, "net.rx_bytes_per_s", "iface", iface).is_none());
        }
        assert_close(find(&out, "mem.used_pct"), 25.0);
        assert_close(find(&out, "swap.used_pct"), 25.0);
        assert_close(find_labelled(&out, "disk.used_pct", "mount", "/"), 75.0);
        assert_close(
            find_labelled(&out, "disk.free_bytes", "mount", "/"),
            2_000_000.0 * KIB,
        );
        assert_close(
            find_labelled(&out, "disk.inodes_used_pct", "mount", "/"),
            25.0,
        );
        assert_sane(&out);
    }

    #[test]
    fn counters_reset_after_reboot_emit_no_rates_then_resume() {
        let mut state = VitalsState::default();
        state.observe(parsed(REBOOT_BEFORE), 0);
        let after = state.observe(parsed(REBOOT_AFTER), 60_000);
        assert!(!emits(&after, "cpu."));
        assert!(!emits(&after, "net."));
        assert_close(find(&after, "uptime_s"), 42.5);
        assert!(find(&after, "mem.used_pct").is_some());

        let later = state.observe(parsed(REBOOT_LATER), 70_000);
        // user +300, system +100, idle +1800, iowait +100 → 2300 ticks.
        assert_close(find(&later, "cpu.used_pct"), 400.0 / 2300.0 * 100.0);
        assert_close(find(&later, "cpu.iowait_pct"), 100.0 / 2300.0 * 100.0);
        assert_close(find(&later, "cpu.steal_pct"), 0.0);
        assert_close(
            find_labelled(&later, "net.rx_bytes_per_s", "iface", "ens3"),
            100_000.0,
        );
        assert_close(
            find_labelled(&later, "net.tx_bytes_per_s", "iface", "ens3"),
            50_000.0,
        );
    }

    #[test]
    fn interface_counter_going_backwards_skips_only_that_interface() {
        let recreated = replaced(RATES_T1, "  eth0: 1250000", "  eth0:     500");
        let mut state = VitalsState::default();
        state.observe(parsed(RATES_T0), 0);
        let out = state.observe(parsed(&recreated), TEN_S_MS);
        assert!(!emits(&out, "net."));
        assert_close(find(&out, "cpu.used_pct"), 85.0);
    }

    #[test]
    fn cpu_counter_going_backwards_emits_no_cpu_shares() {
        let reset = replaced(RATES_T1, "cpu  1600", "cpu  900");
        let mut state = VitalsState::default();
        state.observe(parsed(RATES_T0), 0);
        let out = state.observe(parsed(&reset), TEN_S_MS);
        assert!(!emits(&out, "cpu."));
        assert!(find_labelled(&out, "net.rx_bytes_per_s", "iface", "eth0").is_some());
    }

    #[test]
    fn iowait_dip_reads_as_no_iowait() {
        // proc(5): the iowait counter may decrease. 1000 ticks minus the
        // 50 of iowait that are now read as 0 leaves 950.
        let dip = replaced(
            RATES_T1,
            "cpu  1600 0 700 8100 150",
            "cpu  1600 0 700 8100 90",
        );
        let mut state = VitalsState::default();
        state.observe(parsed(RATES_T0), 0);
        let out = state.observe(parsed(&dip), TEN_S_MS);
        assert_close(find(&out, "cpu.iowait_pct"), 0.0);
        assert_close(find(&out, "cpu.used_pct"), 850.0 / 950.0 * 100.0);
    }

    #[test]
    fn scrape_too_soon_keeps_the_older_baseline() {
        let soon = replaced(RATES_T0, "100.00 180.00", "100.50 180.90");
        let mut state = VitalsState::default();
        state.observe(parsed(RATES_T0), 0);
        assert!(!emits(&state.observe(parsed(&soon), 500), "cpu."));
        let out = state.observe(parsed(RATES_T1), TEN_S_MS);
        assert_close(find(&out, "cpu.used_pct"), 85.0);
        assert_close(
            find_labelled(&out, "net.rx_bytes_per_s", "iface", "eth0"),
            25_000.0,
        );
    }

    #[test]
    fn uptime_jump_unlike_the_monitor_clock_resets_the_baseline() {
        // Ten seconds apart for the monitor, a day apart for the target: the
        // address now leads to another machine, whose counters are unrelated.
        let other_host = replaced(RATES_T1, "110.00 199.00", "86500.00 199.00");
        let mut state = VitalsState::default();
        state.observe(parsed(RATES_T0), 0);
        let out = state.observe(parsed(&other_host), TEN_S_MS);
        assert!(!emits(&out, "cpu."));
        assert!(!emits(&out, "net."));
    }

    #[test]
    fn mount_points_with_spaces_are_kept_whole() {
        let snap = parsed(MOUNT_SPACES);
        // squashfs (a snap), tmpfs, devtmpfs and a Docker container's
        // overlay are left out; exfat and vfat stay.
        assert_eq!(
            mounts(&snap),
            [
                "/",
                "/boot/efi",
                "/media/alice/My Backup",
                "/media/alice/Photos 2 3 4% old",
                "/mnt/back\\slash\ttab",
            ]
        );
        let backup = filesystem(&snap, "/media/alice/My Backup");
        assert_eq!(backup.fstype, "ext4");
        assert_eq!(backup.used_bytes, 480_151_402.0 * KIB);
        assert_eq!(backup.available_bytes, 431_297_774.0 * KIB);
        assert!(backup.inodes.is_some());
        let photos = filesystem(&snap, "/media/alice/Photos 2 3 4% old");
        assert_eq!(photos.fstype, "exfat");
        assert_eq!(photos.used_bytes, 31_252_480.0 * KIB);
        // exfat and vfat report no inodes.
        assert_eq!(photos.inodes, None);
        assert_eq!(filesystem(&snap, "/boot/efi").inodes, None);

        let out = VitalsState::default().observe(snap, 0);
        assert_close(
            find_labelled(
                &out,
                "disk.used_pct",
                "mount",
                "/media/alice/Photos 2 3 4% old",
            ),
            50.0,
        );
        assert_close(
            find_labelled(
                &out,
                "disk.inodes_used_pct",
                "mount",
                "/mnt/back\\slash\ttab",
            ),
            25.0,
        );
        assert!(find_labelled(&out, "disk.inodes_used_pct", "mount", "/boot/efi").is_none());
    }

    #[test]
    fn no_swap_reports_zero_swap_used() {
        let snap = parsed(NO_SWAP_BTRFS);
        let out = VitalsState::default().observe(snap.clone(), 0);
        assert_close(find(&out, "swap.total_bytes"), 0.0);
        assert_close(find(&out, "swap.used_pct"), 0.0);
        assert_close(find(&out, "mem.used_pct"), 75.0);
        // btrfs subvolumes are separate mounts; btrfs and vfat have no
        // inode counts (df prints `0 0 0 -`).
        assert_eq!(mounts(&snap), ["/", "/home", "/boot", "/boot/efi"]);
        assert!(find_labelled(&out, "disk.inodes_used_pct", "mount", "/").is_none());
        assert!(find_labelled(&out, "disk.inodes_used_pct", "mount", "/boot/efi").is_none());
        assert_close(
            find_labelled(&out, "disk.inodes_used_pct", "mount", "/boot"),
            412.0 / 65_536.0 * 100.0,
        );
    }

    #[test]
    fn meminfo_without_swap_lines_omits_swap_metrics() {
        let no_swap_lines = replaced(
            &replaced(RATES_T0, "SwapTotal:       2000000 kB\n", ""),
            "SwapFree:        1500000 kB\n",
            "",
        );
        let out = VitalsState::default().observe(parsed(&no_swap_lines), 0);
        assert!(!emits(&out, "swap."));
    }

    #[test]
    fn kernel_without_memavailable_falls_back_to_free_buffers_cached() {
        let snap = parsed(OLD_KERNEL);
        // MemFree 1000000 + Buffers 500000 + Cached 2500000 of 8000000 kB.
        assert_eq!(snap.memory.available_bytes, 4_000_000.0 * KIB);
        // Nine cpu fields, and a counter glued to `eth0:`.
        assert_eq!(snap.cpu.idle, 22_625_563);
        assert_eq!(
            snap.interfaces.get("eth0"),
            Some(&NetCounters {
                rx_bytes: 3_456_789_012,
                tx_bytes: 1_234_567_890
            })
        );
        // `rootfs /` is mounted over by the real root.
        assert_eq!(mounts(&snap), ["/", "/boot"]);
        assert_eq!(filesystem(&snap, "/").fstype, "ext4");
        let out = VitalsState::default().observe(snap, 0);
        assert_close(find(&out, "mem.used_pct"), 50.0);
        assert_close(find(&out, "swap.used_pct"), 25.0);
        assert_close(find(&out, "swap.total_bytes"), 4_194_304.0 * KIB);
    }

    #[test]
    fn busybox_wrapped_rows_are_joined_and_missing_inodes_omitted() {
        let snap = parsed(BUSYBOX_WRAPPED_NO_DFI);
        assert_eq!(mounts(&snap), ["/", "/boot"]);
        let root = filesystem(&snap, "/");
        assert_eq!(root.used_bytes, 12_345_678.0 * KIB);
        assert_eq!(root.available_bytes, 16_904_270.0 * KIB);
        let out = VitalsState::default().observe(snap, 0);
        assert!(!emits(&out, "disk.inodes_used_pct"));
        assert!(find_labelled(&out, "disk.used_pct", "mount", "/boot").is_some());
    }

    #[test]
    fn missing_df_sections_omit_only_disk_metrics() {
        let no_dfi = without_section(LINUX_REAL, "dfi");
        let snap = parsed(&no_dfi);
        assert_eq!(mounts(&snap), ["/"]);
        assert_eq!(filesystem(&snap, "/").inodes, None);

        let no_df = without_section(&no_dfi, "df");
        let out = VitalsState::default().observe(parsed(&no_df), 0);
        assert!(!emits(&out, "disk."));
        assert!(find(&out, "mem.used_pct").is_some());
    }

    #[test]
    fn container_overlay_root_is_kept() {
        let snap = parsed(CONTAINER_OVERLAY);
        // busybox df lists the bind-mounted files too; they are kept as is.
        assert_eq!(
            mounts(&snap),
            ["/", "/etc/resolv.conf", "/etc/hostname", "/etc/hosts"]
        );
        assert_eq!(filesystem(&snap, "/").fstype, "overlay");
        assert!(filesystem(&snap, "/").inodes.is_some());
    }

    #[test]
    fn missing_required_section_is_an_error() {
        for name in ["stat", "meminfo", "loadavg", "net/dev", "uptime", "mounts"] {
            let output = without_section(LINUX_REAL, name);
            match parse(output.as_bytes()) {
                Err(VitalsError::MissingSection(missing)) => assert_eq!(missing, name),
                other => panic!("without {name}: {other:?}"),
            }
        }
    }

    #[test]
    fn empty_required_section_is_an_error() {
        for (name, body) in [
            ("stat", "cpu  15553 0 4887 51798 490 0 34 10 0 0\n"),
            ("loadavg", "0.48 0.43 0.21 2/85 9453\n"),
            ("uptime", "366.32 517.98\n"),
        ] {
            let output = replaced(LINUX_REAL, body, "");
            match parse(output.as_bytes()) {
                Err(VitalsError::Malformed { section, .. }) => assert_eq!(section, name),
                other => panic!("empty {name}: {other:?}"),
            }
        }
    }

    #[test]
    fn truncated_output_is_an_error() {
        let cut = &LINUX_REAL_BYTES[..LINUX_REAL_BYTES.len() / 2];
        assert!(matches!(parse(cut), Err(VitalsError::Truncated)));
        assert!(matches!(parse(b""), Err(VitalsError::Truncated)));
    }

    #[test]
    fn oversized_output_is_an_error() {
        let mut huge = LINUX_REAL_BYTES.to_vec();
        huge.resize(MAX_OUTPUT_BYTES + 1, b' ');
        assert!(matches!(
            parse(&huge),
            Err(VitalsError::TooLarge { size, max }) if size == MAX_OUTPUT_BYTES + 1 && max == MAX_OUTPUT_BYTES
        ));
    }

    #[test]
    fn duplicate_section_is_an_error() {
        let doubled = replaced(
            LINUX_REAL,
            "@@herd:end",
            "@@herd:uptime\n1.00 2.00\n@@herd:end",
        );
        assert!(matches!(
            parse(doubled.as_bytes()),
            Err(VitalsError::DuplicateSection {
                section: "uptime",
                line: 110
            })
        ));
    }

    #[test]
    fn malformed_value_names_section_and_line() {
        let bad = replaced(LINUX_REAL, "0.48 0.43 0.21", "0.48 NaN 0.21");
        let err = parse(bad.as_bytes()).expect_err("NaN load");
        assert_eq!(
            err.to_string(),
            "section `loadavg`, line 68: \"NaN\" is not a non-negative number"
        );
        let bad_df = replaced(LINUX_REAL, "13130076  82155812", "13130076  82155812x");
        assert!(matches!(
            parse(bad_df.as_bytes()),
            Err(VitalsError::Malformed {
                section: "df",
                line: 102,
                ..
            })
        ));
    }

    #[test]
    fn noise_around_markers_and_crlf_are_tolerated() {
        let noisy =
            format!("Welcome to Ubuntu 24.04 LTS\r\n{LINUX_REAL}logout\n").replace('\n', "\r\n");
        assert_eq!(parsed(&noisy), parsed(LINUX_REAL));
    }

    #[test]
    fn marker_lookalikes_inside_lines_are_content() {
        let spoofed = replaced(
            LINUX_REAL,
            "proc /proc proc rw,relatime 0 0\n",
            "proc /proc proc rw,relatime 0 0\n@@herd:end /mnt/x fuse.sshfs rw 0 0\n",
        );
        assert_eq!(parsed(&spoofed).filesystems, parsed(LINUX_REAL).filesystems);
    }

    #[test]
    fn non_utf8_mount_point_is_decoded_lossily() {
        let mut output = Vec::new();
        for line in LINUX_REAL.split_inclusive('\n') {
            output.extend_from_slice(line.as_bytes());
            if line.starts_with("/dev/vda / ext4") {
                output.extend_from_slice(b"/dev/vdb /mnt/caf\xe9 ext4 rw,relatime 0 0\n");
            }
            if line.starts_with("/dev/vda                  264212084") {
                output.extend_from_slice(b"/dev/vdb 1000 250 750 25% /mnt/caf\xe9\n");
            }
        }
        let snap = parse(&output).expect("lossy decoding");
        let cafe = filesystem(&snap, "/mnt/caf\u{FFFD}");
        assert_eq!(cafe.used_bytes, 250.0 * KIB);

        // In a number the replacement character is still garbage.
        let garbled = LINUX_REAL.replacen("366.32", "366.\u{FFFD}", 1);
        assert!(parse(garbled.as_bytes()).is_err());
        let mut binary = LINUX_REAL_BYTES.to_vec();
        let at = LINUX_REAL.find("24684092").expect("MemTotal");
        binary[at] = 0xff;
        assert!(matches!(
            parse(&binary),
            Err(VitalsError::Malformed {
                section: "meminfo",
                ..
            })
        ));
    }

    #[test]
    fn unescape_octal_handles_kernel_escapes_only() {
        assert_eq!(unescape_octal(r"/a\040b\011c\012d\134e"), "/a b\tc\nd\\e");
        // Not three octal digits, or more than a byte: kept literally.
        assert_eq!(unescape_octal(r"\9\04\777\"), r"\9\04\777\");
    }

    #[test]
    fn df_row_finds_the_first_column_pattern() {
        let raw = RawSection {
            section: Section::Df,
            marker_line: 1,
            text: "",
            lines: 0,
            last_empty: false,
        };
        let row = parse_df_row(&raw, 2, "/dev/sdb1 100 60 40 60% /media/x 1 2 3 4% y")
            .expect("numbers fit")
            .expect("a row");
        assert_eq!(row.mount, "/media/x 1 2 3 4% y");
        assert_eq!(
            (row.total, row.used, row.available),
            (Some(100), Some(60), Some(40))
        );
        assert!(parse_df_row(
            &raw,
            2,
            "Filesystem 1024-blocks Used Available Capacity Mounted on"
        )
        .expect("no numbers to overflow")
        .is_none());
        assert!(parse_df_row(&raw, 2, "/dev/x 99999999999999999999999 1 1 1% /").is_err());
    }

    /// Runs `command` with `shell` (`sh -c`, or `busybox sh -c` with busybox's
    /// head and df first in PATH) on this machine.
    #[cfg(target_os = "linux")]
    fn run_here(shell: &[&str], command: &str) -> Vec<u8> {
        let output = std::process::Command::new(shell[0])
            .args(&shell[1..])
            .arg("-c")
            .arg(command)
            .output()
            .expect("the shell runs");
        output.stdout
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn live_command_output_parses() {
        let snap = match parse(&run_here(&["sh"], VITALS_COMMAND)) {
            Ok(snap) => snap,
            Err(err) => panic!("{err}"),
        };
        assert!(snap.memory.total_bytes > 0.0);
        assert!(snap.uptime_s > 0.0);
        assert!(!snap.filesystems.is_empty(), "df read / at least");
        let out = VitalsState::default().observe(snap, 0);
        assert_sane(&out);
        assert!(find_labelled(&out, "disk.used_pct", "mount", "/").is_some());
        // Between two disk readings: everything but the disk, from one process.
        let snap = match parse(&run_here(&["sh"], VITALS_COMMAND_NO_DISK)) {
            Ok(snap) => snap,
            Err(err) => panic!("{err}"),
        };
        assert!(snap.memory.total_bytes > 0.0 && snap.uptime_s > 0.0);
        assert!(!snap.interfaces.is_empty(), "lo at least");
        let out = VitalsState::default().observe(snap, 0);
        assert_sane(&out);
        assert!(!emits(&out, "disk."), "no disk figures asked");
    }

    /// The inline forms run in the shell itself (as the long-lived shell frames
    /// them) print what the standalone ones do, and leave the shell as it was:
    /// its stderr still goes where it went, the next command runs.
    #[test]
    #[cfg(target_os = "linux")]
    fn inline_forms_print_the_same_and_leave_the_shell_as_it_was() {
        for (inline, disk) in [(VITALS_INLINE, true), (VITALS_INLINE_NO_DISK, false)] {
            let framed = format!("{{ {inline}\n}} </dev/null; echo @@after; echo still-stderr >&2");
            let output = std::process::Command::new("sh")
                .args(["-c", &framed])
                .output()
                .expect("sh runs");
            let stdout = String::from_utf8_lossy(&output.stdout);
            let (answer, after) = stdout.split_once("@@after").expect("the shell went on");
            assert_eq!(after.trim(), "", "{inline}");
            assert_eq!(
                String::from_utf8_lossy(&output.stderr).trim(),
                "still-stderr",
                "the shell's stderr is its own again"
            );
            let snap = parse(answer.as_bytes()).unwrap_or_else(|e| panic!("{inline}: {e}"));
            assert!(snap.memory.total_bytes > 0.0 && snap.uptime_s > 0.0);
            assert_eq!(!snap.filesystems.is_empty(), disk, "{inline}");
        }
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn live_command_output_parses_under_busybox() {
        if std::process::Command::new("busybox")
            .arg("true")
            .status()
            .is_err()
        {
            eprintln!("busybox not installed: skipped");
            return;
        }
        // busybox's own head and df, as on a small target.
        let dir = tempfile::tempdir().expect("temp dir");
        for tool in ["head", "df"] {
            std::os::unix::fs::symlink("/bin/busybox", dir.path().join(tool))
                .or_else(|_| std::os::unix::fs::symlink("/usr/bin/busybox", dir.path().join(tool)))
                .expect("symlink");
        }
        let path = format!("{}:/usr/bin:/bin", dir.path().display());
        let framed = |inline: &str| format!("{{ {inline}\n}} </dev/null");
        for command in [
            VITALS_COMMAND.to_string(),
            VITALS_COMMAND_NO_DISK.to_string(),
            framed(VITALS_INLINE),
            framed(VITALS_INLINE_NO_DISK),
        ] {
            let output = std::process::Command::new("busybox")
                .args(["sh", "-c", &command])
                .env("PATH", &path)
                .output()
                .expect("busybox sh runs");
            match parse(&output.stdout) {
                Ok(snap) => assert!(snap.memory.total_bytes > 0.0, "{command}"),
                Err(err) => panic!("{command}: {err}"),
            }
        }
    }

    #[test]
    fn disk_figures_are_read_every_disk_interval() {
        let every = std::time::Duration::from_secs(60);
        let mut state = VitalsState::default();
        let at = |state: &VitalsState, ts, every| {
            let script = state.command(ts, every);
            (script.standalone, script.inline.expect("an inline form"))
        };
        let disk = (VITALS_COMMAND, VITALS_INLINE);
        let no_disk = (VITALS_COMMAND_NO_DISK, VITALS_INLINE_NO_DISK);
        assert_eq!(at(&state, 0, every), disk, "the first scrape");
        state.disk_read(0);
        assert_eq!(at(&state, 10_000, every), no_disk);
        assert_eq!(at(&state, 59_999, every), no_disk);
        assert_eq!(at(&state, 60_000, every), disk);
        // disk_interval at or below the interval: every scrape reads them.
        let short = std::time::Duration::from_secs(1);
        state.disk_read(60_000);
        assert_eq!(at(&state, 61_000, short), disk);
    }

    #[test]
    fn head_sections_and_markers_read_alike() {
        // head's way (an empty line between files) and the marker way are the
        // same snapshot.
        let heads = "==> /proc/stat <==\ncpu  1 2 3 4 5 6 7 8 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n\n\
==> /proc/meminfo <==\nMemTotal: 1000 kB\nMemFree: 500 kB\nMemAvailable: 600 kB\n\n\
==> /proc/loadavg <==\n0.5 0.4 0.3 1/100 42\n\n\
==> /proc/net/dev <==\nInter-|Receive\n face |bytes\n    lo: 1 2 0 0 0 0 0 0 3 4 0 0 0 0 0 0\n\n\
==> /proc/uptime <==\n100.5 200.0\n@@herd:end\n";
        let markers = heads
            .replace("\n\n==> /proc/", "\n@@herd:")
            .replace("==> /proc/", "@@herd:")
            .replace(" <==", "");
        let (a, b) = (parsed(heads), parsed(&markers));
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        assert!(a.filesystems.is_empty());
        // A df section needs the mounts to tell its rows apart.
        let with_df = heads.replace("@@herd:end", "@@herd:df\nFilesystem 1024-blocks Used Available Capacity Mounted on\n/dev/sda1 100 50 50 50% /\n@@herd:end");
        assert!(matches!(
            parse(with_df.as_bytes()),
            Err(VitalsError::MissingSection("mounts"))
        ));
    }

    /// One random edit of the kind a broken transport or a hostile target
    /// could produce.
    fn mutate(rng: &mut StdRng, data: &mut Vec<u8>) {
        const MAX_BINARY_INSERT: usize = 64;
        const MAX_HUGE_LINE: usize = 100_000;
        let len = data.len();
        match rng.random_range(0..7) {
            0 => data.truncate(rng.random_range(0..=len)),
            1 => {
                for _ in 0..rng.random_range(1..8) {
                    if !data.is_empty() {
                        let at = rng.random_range(0..data.len());
                        data[at] ^= rng.random_range(1..=u8::MAX);
                    }
                }
            }
            2 => {
                let at = rng.random_range(0..=len);
                let junk: Vec<u8> = (0..rng.random_range(1..MAX_BINARY_INSERT))
                    .map(|_| rng.random())
                    .collect();
                data.splice(at..at, junk);
            }
            3 => {
                // Duplicate a stretch, often whole sections.
                let from = rng.random_range(0..=len);
                let to = rng.random_range(from..=len);
                let at = rng.random_range(0..=len);
                let copy = data[from..to].to_vec();
                data.splice(at..at, copy);
            }
            4 => {
                let at = rng.random_range(0..=len);
                let fill = [b'9', b'a', b' ', b'%', b':'][rng.random_range(0..5)];
                let line = vec![fill; rng.random_range(1..MAX_HUGE_LINE)];
                data.splice(at..at, line);
            }
            5 => {
                // Keep the shape but change numbers, so parsing often
                // succeeds and the delta arithmetic sees odd values.
                let digits: Vec<usize> = (0..len).filter(|&i| data[i].is_ascii_digit()).collect();
                for _ in 0..rng.random_range(1..6) {
                    if let Some(&at) = digits.get(rng.random_range(0..digits.len().max(1))) {
                        let replacement: &[u8] = match rng.random_range(0..4) {
                            0 => b"18446744073709551615",
                            1 => b"0",
                            2 => b"99999999999999999999999",
                            _ => &[b'0' + rng.random_range(0..10u8)],
                        };
                        data.splice(at..=at, replacement.iter().copied());
                    }
                }
            }
            _ => {
                let from = rng.random_range(0..=len);
                let to = rng.random_range(from..=len.min(from + 200));
                data.drain(from..to);
            }
        }
    }

    /// Feeds an output through parse and, when it parses, through observe
    /// after a valid baseline, checking the invariants of the result.
    fn exercise(state: &mut VitalsState, output: &[u8], ts_ms: i64) -> bool {
        match parse(output) {
            Ok(snap) => {
                assert_sane(&state.observe(snap, ts_ms));
                true
            }
            Err(err) => {
                assert!(!err.to_string().is_empty());
                false
            }
        }
    }

    #[test]
    fn randomized_mutations_never_panic() {
        const ITERATIONS: usize = 2_000;
        let seed: u64 = rand::rng().random();
        eprintln!("randomized_mutations_never_panic seed {seed}");
        let mut rng = StdRng::seed_from_u64(seed);
        let bases = [LINUX_REAL, BUSYBOX_REAL, MOUNT_SPACES, OLD_KERNEL, RATES_T1];
        let mut parsed_ok = 0usize;
        for iteration in 0..ITERATIONS {
            let base = bases[iteration % bases.len()];
            let mut data = base.as_bytes().to_vec();
            for _ in 0..rng.random_range(1..=3) {
                mutate(&mut rng, &mut data);
            }
            let mut state = VitalsState::default();
            state.observe(parsed(base), 0);
            let ts_ms = rng.random_range(-TEN_S_MS..=10 * TEN_S_MS);
            if exercise(&mut state, &data, ts_ms) {
                parsed_ok += 1;
                // And once more as a baseline for the untouched output.
                exercise(&mut state, base.as_bytes(), ts_ms + TEN_S_MS);
            }
        }
        assert!(parsed_ok > 0, "no mutation kept the output readable");
    }

    #[test]
    fn random_bytes_never_panic() {
        const ITERATIONS: usize = 1_000;
        const MAX_LEN: usize = 2_000;
        // Pieces that reach past the section splitter into the parsers.
        const VOCABULARY: &[&str] = &[
            "@@herd:stat\n",
            "@@herd:meminfo\n",
            "@@herd:loadavg\n",
            "@@herd:net/dev\n",
            "@@herd:uptime\n",
            "@@herd:mounts\n",
            "@@herd:df\n",
            "@@herd:dfi\n",
            "@@herd:end\n",
            "cpu ",
            "MemTotal:",
            "MemAvailable:",
            "SwapTotal:",
            "SwapFree:",
            " kB",
            "eth0:",
            "lo:",
            "|",
            " ",
            "\t",
            "\n",
            "\r\n",
            "-",
            "%",
            "0",
            "1",
            "18446744073709551615",
            "1e308",
            "inf",
            "NaN",
            "-1",
            "0.5",
            "\\040",
            "\\",
            "/",
            "overlay",
            "ext4",
            "tmpfs",
        ];
        let seed: u64 = rand::rng().random();
        eprintln!("random_bytes_never_panic seed {seed}");
        let mut rng = StdRng::seed_from_u64(seed);
        for iteration in 0..ITERATIONS {
            let data: Vec<u8> = if iteration % 2 == 0 {
                (0..rng.random_range(0..MAX_LEN))
                    .map(|_| rng.random())
                    .collect()
            } else {
                (0..rng.random_range(0..MAX_LEN / 4))
                    .flat_map(|_| VOCABULARY[rng.random_range(0..VOCABULARY.len())].bytes())
                    .collect()
            };
            let mut state = VitalsState::default();
            exercise(&mut state, &data, 0);
            exercise(&mut state, &data, TEN_S_MS);
        }
    }
}
