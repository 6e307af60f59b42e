//! The density bench: `scripts/bench density` stores one synthetic day of
//! vitals-like samples in Herd, in VictoriaMetrics and in Prometheus blocks, and
//! prints the bytes per sample of each side by side; JSON in
//! `target/bench/density.json`.
//!
//! ```text
//! scripts/bench density              20 targets x 27 series at 10 s over 24 h (4.67 M samples)
//! options: --targets N   targets (default 20)
//!          --hours H     hours of data ending a minute ago (default 24, at most 700:
//!                        the store keeps 30 days)
//!          --from FILE   an OpenMetrics file from `herd export` instead of the
//!                        synthetic day
//! ```
//!
//! **The data**: per target the 27 series a vitals check gives a machine with three
//! filesystems and two interfaces, with what a real machine's values look like:
//! shares and load with two decimals and noise around a slow daily wave, byte counts
//! in whole KiB pages, throughput with fractions, slowly filling disks, an uptime
//! that counts, constants (`target.up`, `mem.total_bytes`). Written as the
//! OpenMetrics that `herd export` writes (names `herd_*`, times in seconds with
//! milliseconds) and, for VictoriaMetrics, the same samples as Prometheus text.
//!
//! **Herd**: a release `herd node` takes the file through `herd import` (samples/s
//! printed); its store file (`herd.redb`) is measured live, then after the node is
//! stopped and `herd compact` ran. The **round trip** is checked: `herd export` of
//! every target gives back the file byte for byte (every sample, name, label, value
//! and time). **VictoriaMetrics** (Debian's `victoria-metrics`): the file POSTed to
//! `/api/v1/import/prometheus`, then force_flush and force_merge; its whole data
//! directory is measured (data and index, as it lies on disk). **Prometheus**:
//! `promtool tsdb create-blocks-from openmetrics` with 24 h blocks; the blocks
//! directory is measured (chunks and index).
//!
//! `--from FILE` takes real data instead: an OpenMetrics file that `herd export`
//! wrote (say, a node's vitals of real targets over hours); its targets and span
//! are read from it, and the same three stores get the same samples.
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use herd_tests::bench::{bench_setup, progress, target_dir, BenchArgs};
use herd_tests::process::run_bounded;
use herd_tests::victoria::VictoriaMetrics;
use herd_tests::{herd_cli, local_target, now_ms, Herd, HerdOptions};
use serde_json::json;

const USAGE: &str = "usage: scripts/bench density [--targets N] [--hours H] [--from FILE]";
const STEP_MS: i64 = 10_000;
const LONG: Duration = Duration::from_secs(1800);

/// A small deterministic generator (the same data every run).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Roughly normal noise (sum of uniforms), mean 0, sd about `sd`.
    fn noise(&mut self, sd: f64) -> f64 {
        (self.next() + self.next() + self.next() - 1.5) * 2.0 * sd
    }
}

fn round(v: f64, decimals: i32) -> f64 {
    let s = 10f64.powi(decimals);
    (v * s).round() / s
}

/// One series: its labels (`__name__` and `target` among them) and how its value
/// moves from one sample to the next.
struct Series {
    labels: BTreeMap<String, String>,
    kind: Kind,
    value: f64,
}

#[derive(Clone, Copy)]
enum Kind {
    Const,
    /// A share around `base` with a daily wave, noise and two decimals.
    Pct {
        base: f64,
        wave: f64,
        sd: f64,
    },
    Load,
    /// Bytes in 4 KiB pages drifting around a level.
    Pages {
        sd_pages: f64,
    },
    /// Throughput in bytes/s with fractions (a rate over ~10 s).
    Rate {
        base: f64,
    },
    /// A disk that fills slowly: pct with two decimals, creeping up.
    Filling {
        per_step: f64,
    },
    Uptime,
}

fn series_of(target: &str, rng: &mut Rng) -> Vec<Series> {
    let mk = |name: &str, extra: &[(&str, &str)], kind: Kind, value: f64| {
        let mut labels: BTreeMap<String, String> = extra
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        labels.insert("__name__".into(), format!("herd_{name}"));
        labels.insert("target".into(), target.into());
        Series {
            labels,
            kind,
            value,
        }
    };
    let mem_total = (8 + (rng.next() * 8.0) as u64) as f64 * 1024.0 * 1024.0 * 1024.0;
    let mut v = vec![
        mk("target_up", &[], Kind::Const, 1.0),
        mk("uptime_s", &[], Kind::Uptime, (rng.next() * 3e6).round()),
        mk(
            "cpu_used_pct",
            &[],
            Kind::Pct {
                base: 20.0 + rng.next() * 30.0,
                wave: 10.0,
                sd: 4.0,
            },
            25.0,
        ),
        mk(
            "cpu_iowait_pct",
            &[],
            Kind::Pct {
                base: 1.0,
                wave: 0.5,
                sd: 0.6,
            },
            1.0,
        ),
        mk(
            "cpu_steal_pct",
            &[],
            Kind::Pct {
                base: 0.2,
                wave: 0.0,
                sd: 0.15,
            },
            0.2,
        ),
        mk("load_1", &[], Kind::Load, 1.0),
        mk("load_5", &[], Kind::Load, 1.0),
        mk("load_15", &[], Kind::Load, 1.0),
        mk("mem_total_bytes", &[], Kind::Const, mem_total),
        mk(
            "mem_available_bytes",
            &[],
            Kind::Pages { sd_pages: 300.0 },
            (mem_total * 0.6 / 4096.0).round() * 4096.0,
        ),
        mk(
            "mem_used_pct",
            &[],
            Kind::Pct {
                base: 40.0,
                wave: 5.0,
                sd: 0.3,
            },
            40.0,
        ),
        mk(
            "swap_total_bytes",
            &[],
            Kind::Const,
            2.0 * 1024.0 * 1024.0 * 1024.0,
        ),
        mk(
            "swap_used_pct",
            &[],
            Kind::Pct {
                base: 3.0,
                wave: 0.0,
                sd: 0.02,
            },
            3.0,
        ),
        mk(
            "check_status",
            &[("check", "https"), ("kind", "http")],
            Kind::Const,
            0.0,
        ),
    ];
    for mount in ["/", "/var", "/home"] {
        let used = 30.0 + rng.next() * 50.0;
        v.push(mk(
            "disk_used_pct",
            &[("mount", mount)],
            Kind::Filling { per_step: 0.0004 },
            round(used, 2),
        ));
        v.push(mk(
            "disk_free_bytes",
            &[("mount", mount)],
            Kind::Pages { sd_pages: 50.0 },
            (rng.next() * 5e10 / 4096.0).round() * 4096.0,
        ));
        v.push(mk(
            "disk_inodes_used_pct",
            &[("mount", mount)],
            Kind::Filling { per_step: 0.0001 },
            round(used / 3.0, 2),
        ));
    }
    for iface in ["eth0", "eth1"] {
        v.push(mk(
            "net_rx_bytes_per_s",
            &[("iface", iface)],
            Kind::Rate {
                base: 2e5 + rng.next() * 1e6,
            },
            0.0,
        ));
        v.push(mk(
            "net_tx_bytes_per_s",
            &[("iface", iface)],
            Kind::Rate {
                base: 1e5 + rng.next() * 5e5,
            },
            0.0,
        ));
    }
    v
}

impl Series {
    /// The value at step `i` (time `t_ms`), moving on from the last.
    fn step(&mut self, i: i64, t_ms: i64, rng: &mut Rng) -> f64 {
        let day = (t_ms % 86_400_000) as f64 / 86_400_000.0 * std::f64::consts::TAU;
        self.value = match self.kind {
            Kind::Const => self.value,
            Kind::Uptime => self.value + if i == 0 { 0.0 } else { 10.0 },
            Kind::Pct { base, wave, sd } => round(
                (base + wave * day.sin() + rng.noise(sd)).clamp(0.0, 100.0),
                2,
            ),
            Kind::Load => round(
                (self.value * 0.9 + 0.1 * (1.0 + day.sin() + rng.noise(0.8))).max(0.0),
                2,
            ),
            Kind::Pages { sd_pages } => {
                (self.value + (rng.noise(sd_pages)).round() * 4096.0).max(0.0)
            }
            Kind::Rate { base } => {
                let r = base * (1.0 + 0.3 * day.sin()) * (1.0 + rng.noise(0.2));
                round(r.max(0.0), 2)
            }
            Kind::Filling { per_step } => {
                round((self.value + per_step + rng.noise(per_step)).min(99.0), 2)
            }
        };
        self.value
    }
}

/// `name{a="b",...}` as `herd export` writes it.
fn series_text(labels: &BTreeMap<String, String>) -> String {
    let name = &labels["__name__"];
    let rest: Vec<String> = labels
        .iter()
        .filter(|(k, _)| k.as_str() != "__name__")
        .map(|(k, v)| format!("{k}=\"{v}\""))
        .collect();
    format!("{name}{{{}}}", rest.join(","))
}

/// What the stores are given: the OpenMetrics file, the same as Prometheus text,
/// the targets, the sample count, the time of the oldest sample (ms) and how the
/// data is described in the table.
struct Data {
    targets: Vec<String>,
    samples: u64,
    oldest_ms: i64,
    what: String,
}

/// Reads `from` (OpenMetrics as `herd export` writes it), copies it to `om` and
/// writes the same samples as Prometheus text (ms) to `prom`.
fn from_export(from: &Path, om: &Path, prom: &Path) -> Result<Data, String> {
    use std::io::BufRead;
    let input = std::fs::File::open(from).map_err(|e| format!("{}: {e}", from.display()))?;
    std::fs::copy(from, om).map_err(|e| format!("{}: {e}", from.display()))?;
    let mut prom_out = std::io::BufWriter::new(std::fs::File::create(prom).expect("prom file"));
    let mut targets = std::collections::BTreeSet::new();
    let (mut samples, mut oldest_ms, mut series) =
        (0u64, i64::MAX, std::collections::BTreeSet::new());
    for (i, line) in std::io::BufReader::new(input).lines().enumerate() {
        let line = line.map_err(|e| format!("{}: {e}", from.display()))?;
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let bad = || {
            format!(
                "{}:{}: not a sample line of `herd export`",
                from.display(),
                i + 1
            )
        };
        let (head, rest) = line.rsplit_once('}').ok_or_else(bad)?;
        let mut words = rest.split_whitespace();
        let (value, secs) = (words.next().ok_or_else(bad)?, words.next().ok_or_else(bad)?);
        let ms = (secs.parse::<f64>().map_err(|_| bad())? * 1000.0).round() as i64;
        if let Some(t) = head
            .split("target=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
        {
            targets.insert(t.to_string());
        }
        series.insert(head.to_string());
        writeln!(prom_out, "{head}}} {value} {ms}").unwrap();
        samples += 1;
        oldest_ms = oldest_ms.min(ms);
    }
    prom_out.flush().unwrap();
    if samples == 0 {
        return Err(format!("{}: no samples", from.display()));
    }
    let hours = (now_ms() - oldest_ms) as f64 / 3_600_000.0;
    Ok(Data {
        what: format!(
            "{} targets, {} series, {hours:.1} h, from {}",
            targets.len(),
            series.len(),
            from.file_name()
                .map_or(String::new(), |n| n.to_string_lossy().into_owned())
        ),
        targets: targets.into_iter().collect(),
        samples,
        oldest_ms,
    })
}

/// Writes the day as OpenMetrics (the export's order and format) and as
/// Prometheus text (ms); returns the sample count.
fn generate(targets: usize, hours: i64, om: &Path, prom: &Path) -> u64 {
    let steps = hours * 3600 * 1000 / STEP_MS;
    let end = now_ms() / 1000 * 1000 - 60_000;
    let start = end - steps * STEP_MS;
    let mut rng = Rng(0x005e_ed0f_4e4d);
    let mut all: Vec<Series> = (0..targets)
        .flat_map(|t| series_of(&format!("host-{t:02}"), &mut rng))
        .collect();
    // The export's order: by name, then by the whole label map.
    all.sort_by(|a, b| {
        (a.labels.get("__name__"), &a.labels).cmp(&(b.labels.get("__name__"), &b.labels))
    });
    let mut om_out = std::io::BufWriter::new(std::fs::File::create(om).expect("om file"));
    let mut prom_out = std::io::BufWriter::new(std::fs::File::create(prom).expect("prom file"));
    let mut family = String::new();
    let mut n = 0u64;
    for s in &mut all {
        let name = s.labels["__name__"].clone();
        if name != family {
            writeln!(om_out, "# TYPE {name} gauge").unwrap();
            family = name;
        }
        let head = series_text(&s.labels);
        for i in 0..steps {
            let t = start + i * STEP_MS;
            let v = s.step(i, t, &mut rng);
            writeln!(
                om_out,
                "{head} {v} {}.{:03}",
                t.div_euclid(1000),
                t.rem_euclid(1000)
            )
            .unwrap();
            writeln!(prom_out, "{head} {v} {t}").unwrap();
            n += 1;
        }
    }
    writeln!(om_out, "# EOF").unwrap();
    om_out.flush().unwrap();
    prom_out.flush().unwrap();
    n
}

fn dir_bytes(p: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(p) else {
        return 0;
    };
    if meta.is_file() {
        return meta.len();
    }
    std::fs::read_dir(p)
        .map(|rd| rd.flatten().map(|e| dir_bytes(&e.path())).sum())
        .unwrap_or(0)
}

fn file_bytes(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// A row of the table.
struct Row {
    store: &'static str,
    bytes: u64,
    note: String,
}

fn main() {
    bench_setup("density");
    let mut args = BenchArgs::from_env("density", USAGE);
    let targets = args.number("--targets", 20, 1..=1000) as usize;
    let hours = args.number("--hours", 24, 1..=700) as i64;
    let from = args.text("--from");
    args.finish();
    let work = tempfile::Builder::new()
        .prefix("herd-density-")
        .tempdir()
        .expect("temp dir");
    let om = work.path().join("day.om");
    let prom = work.path().join("day.prom");
    let t0 = Instant::now();
    let data = match from {
        Some(from) => {
            progress(&format!("density: reading {from}"));
            from_export(Path::new(&from), &om, &prom).unwrap_or_else(|e| {
                eprintln!("density bench: {e}");
                std::process::exit(2)
            })
        }
        None => {
            progress(&format!(
                "density: writing {targets} targets x 27 series, {hours} h at 10 s"
            ));
            let samples = generate(targets, hours, &om, &prom);
            Data {
                targets: (0..targets).map(|t| format!("host-{t:02}")).collect(),
                samples,
                oldest_ms: now_ms() - hours * 3_600_000,
                what: format!("{targets} targets x 27 series, {hours} h at 10 s, synthetic"),
            }
        }
    };
    let samples = data.samples;
    let hours = (now_ms() - data.oldest_ms).div_euclid(3_600_000) + 1;
    progress(&format!(
        "density: {samples} samples, {:.0} MB of OpenMetrics in {:.1} s",
        file_bytes(&om) as f64 / 1e6,
        t0.elapsed().as_secs_f64()
    ));
    let mut rows = Vec::new();
    let mut errors = Vec::new();

    // Herd: import, measure, export back, stop, compact, measure.
    let mut herd = Herd::start(HerdOptions::default().fleet(local_target("self", "1h")));
    progress("density: herd import");
    let t0 = Instant::now();
    let out = herd.cli_within(&["import", om.to_str().unwrap()], LONG);
    let import_s = t0.elapsed().as_secs_f64();
    if !out.status.success() {
        errors.push(format!(
            "herd import: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    progress(&format!(
        "density: imported in {import_s:.1} s ({:.0} samples/s)",
        samples as f64 / import_s
    ));
    let store = herd.data_dir().join("herd.redb");
    // The node commits on its flush interval: wait for the file to stop growing.
    let mut last = 0;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_secs(1));
        let now = file_bytes(&store);
        if now == last {
            break;
        }
        last = now;
    }
    rows.push(Row {
        store: "Herd, live file",
        bytes: file_bytes(&store),
        note: "herd.redb as the node left it after the import".into(),
    });
    progress("density: herd export of every target (the round trip)");
    let back = work.path().join("back.om");
    let mut cmd = vec!["export".to_string()];
    cmd.extend(data.targets.iter().cloned());
    cmd.extend([
        "--since".into(),
        format!("{}h", hours + 1),
        "--out".into(),
        back.to_str().unwrap().into(),
    ]);
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let t0 = Instant::now();
    let out = herd.cli_within(&cmd, LONG);
    let export_s = t0.elapsed().as_secs_f64();
    progress(&format!(
        "density: exported in {export_s:.1} s ({:.0} samples/s)",
        samples as f64 / export_s
    ));
    let lossless = out.status.success()
        && std::fs::read(&om).ok() == std::fs::read(&back).ok()
        && file_bytes(&om) > 0;
    if !lossless {
        errors.push(format!(
            "round trip: the export differs from what was imported ({} vs {} bytes){}",
            file_bytes(&back),
            file_bytes(&om),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let _ = herd.sigterm();
    let out = herd_cli(&["compact", herd.data_dir().to_str().unwrap()], LONG);
    if !out.status.success() {
        errors.push(format!(
            "herd compact: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    rows.push(Row {
        store: "Herd, after herd compact",
        bytes: file_bytes(&store),
        note: "herd.redb compacted (the node stopped)".into(),
    });

    // VictoriaMetrics.
    progress("density: VictoriaMetrics import");
    let vm = VictoriaMetrics::start();
    match vm.import_prometheus(&prom) {
        Ok(()) => {
            let month = |ms: i64| {
                let out = run_bounded(
                    Command::new("date")
                        .args(["-u", "-d"])
                        .arg(format!("@{}", ms / 1000))
                        .arg("+%Y_%m"),
                    Duration::from_secs(5),
                );
                String::from_utf8_lossy(&out.stdout).trim().to_string()
            };
            let end = now_ms();
            let mut months = vec![month(data.oldest_ms), month(end)];
            months.dedup();
            let mut last = 0;
            for round in 0..60 {
                if round % 10 == 0 {
                    for m in &months {
                        vm.flush_and_merge(m);
                    }
                }
                std::thread::sleep(Duration::from_secs(2));
                let now = dir_bytes(&vm.data_dir());
                if now == last && round >= 5 {
                    break;
                }
                last = now;
            }
            rows.push(Row {
                store: "VictoriaMetrics",
                bytes: dir_bytes(&vm.data_dir()),
                note: "its data directory after force_flush and force_merge".into(),
            });
        }
        Err(e) => errors.push(format!("VictoriaMetrics import: {e}")),
    }
    drop(vm);

    // Prometheus blocks.
    progress("density: promtool tsdb create-blocks-from openmetrics");
    let blocks = work.path().join("blocks");
    let out = run_bounded(
        Command::new("promtool")
            .args([
                "tsdb",
                "create-blocks-from",
                "openmetrics",
                "--max-block-duration=24h",
            ])
            .arg(&om)
            .arg(&blocks),
        LONG,
    );
    if out.status.success() {
        rows.push(Row {
            store: "Prometheus blocks",
            bytes: dir_bytes(&blocks),
            note: "promtool's blocks (chunks, index), 24 h blocks".into(),
        });
    } else {
        errors.push(format!(
            "promtool: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }

    let vm_bytes = rows
        .iter()
        .find(|r| r.store == "VictoriaMetrics")
        .map(|r| r.bytes);
    let mut table = format!(
        "density: {samples} samples ({}), round trip through Herd {}\n\n\
         | store | bytes | bytes per sample | vs VictoriaMetrics | what |\n|---|---:|---:|---:|---|\n",
        data.what,
        if lossless { "lossless (export == import, byte for byte)" } else { "NOT lossless" }
    );
    for r in &rows {
        table.push_str(&format!(
            "| {} | {} | {:.3} | {} | {} |\n",
            r.store,
            r.bytes,
            r.bytes as f64 / samples as f64,
            vm_bytes.map_or("-".into(), |v| format!("{:.2}x", r.bytes as f64 / v as f64)),
            r.note
        ));
    }
    println!("{table}");
    for e in &errors {
        println!("error: {e}");
    }
    let doc = json!({
        "samples": samples,
        "data": data.what,
        "targets": data.targets.len(),
        "hours": hours,
        "lossless": lossless,
        "import_samples_per_s": samples as f64 / import_s,
        "export_samples_per_s": samples as f64 / export_s,
        "stores": rows.iter().map(|r| json!({
            "store": r.store, "bytes": r.bytes,
            "bytes_per_sample": r.bytes as f64 / samples as f64, "what": r.note,
        })).collect::<Vec<_>>(),
        "errors": errors,
    });
    let dir: PathBuf = target_dir().join("bench");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("density.json");
    match std::fs::write(&path, format!("{doc:#}\n")) {
        Ok(()) => progress(&format!("wrote {}", path.display())),
        Err(e) => progress(&format!("cannot write {}: {e}", path.display())),
    }
    if !errors.is_empty() {
        std::process::exit(1);
    }
}
