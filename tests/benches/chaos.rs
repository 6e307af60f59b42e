//! The chaos bench: `scripts/bench chaos` runs rounds of real faults against a herd
//! of three real `herd node` processes in network namespaces (see
//! `herd_tests::chaos` for the rig, the faults and the invariants), prints a table
//! per fault kind and per invariant, and writes `target/bench/chaos.json`.
//!
//! ```text
//! scripts/bench chaos                          200 rounds, a random seed (printed)
//! options: --rounds N    rounds (default 200)
//!          --seed S      the seed (default: random); round R's fault comes from (S, R)
//!          --first R     the first round's number: `--seed S --first R --rounds 1`
//!                        replays the fault of round R
//!          --targets N   SSH targets (default 9)
//!          --hole-limit-ms MS   an orphaned target without a sample for longer is a
//!                        violation (default 4000: 3 s after the fault, plus one interval)
//! ```
//! `HERD_CHAOS_FAULTS=cut-owner,restart` runs only those kinds, in turn.
//!
//! Exits 1 when a round broke an invariant or the run ended early.
use herd_tests::bench::{bench_setup, progress, target_dir, BenchArgs};
use herd_tests::chaos::{run, Fault, Options};

const USAGE: &str = "usage: scripts/bench chaos [--rounds N] [--seed S] [--first R] [--targets N] [--hole-limit-ms MS]";

fn main() {
    bench_setup("chaos");
    let mut args = BenchArgs::from_env("chaos", USAGE);
    let rounds = args.number("--rounds", 200, 1..=100_000) as usize;
    let seed = args.number("--seed", rand::random::<u32>() as u64, 0..=u64::MAX);
    let first = args.number("--first", 0, 0..=1_000_000) as usize;
    let targets = args.number("--targets", 9, 1..=200) as usize;
    let hole_limit_ms = args.number("--hole-limit-ms", 4000, 1..=600_000) as i64;
    let faults = std::env::var("HERD_CHAOS_FAULTS").ok().map(|list| {
        list.split(',')
            .map(|name| {
                Fault::parse(name.trim()).unwrap_or_else(|| {
                    args.fail(&format!(
                        "HERD_CHAOS_FAULTS: unknown fault {name:?}; known: {}",
                        Fault::all()
                            .iter()
                            .map(|f| f.name())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })
            })
            .collect::<Vec<_>>()
    });
    args.finish();
    progress(&format!(
        "chaos: seed {seed}, rounds {first}..{}",
        first + rounds
    ));
    let report = run(&Options {
        rounds,
        seed,
        first,
        targets,
        faults,
        hole_limit_ms,
    });
    let table = report.table();
    println!("{table}");
    let dir = target_dir().join("bench");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("chaos.json");
    match std::fs::write(&path, format!("{:#}\n", report.json())) {
        Ok(()) => progress(&format!("wrote {}", path.display())),
        Err(e) => progress(&format!("cannot write {}: {e}", path.display())),
    }
    if !report.violations.is_empty() || report.aborted.is_some() {
        std::process::exit(1);
    }
}
