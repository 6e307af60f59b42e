//! The chaos harness's short run in the suite: every fault kind once (kill -9,
//! SIGSTOP for 0.5 / 1.6 / 5 s, symmetric, partial and one-way partitions, an
//! ordered restart, an apply during a cut, a wall-clock step back and forward; of
//! an owner and of the leader), against
//! three real `herd node` processes in network namespaces scraping a real sshd, in
//! an order drawn from a seed it prints. Fails on any double scrape, duplicate
//! idempotency key, lost transition, action run twice or target moved by a clock
//! step (see `herd_tests::chaos`).
//! The hole limit here only catches hangs (20 s); `scripts/bench chaos` holds the
//! 3 s goal and runs hundreds of rounds.
use herd_tests::chaos::{run, Fault, Options};
use herd_tests::require_root;
use rand::seq::SliceRandom;
use rand::SeedableRng;

#[test]
fn every_fault_kind_once_breaks_nothing() {
    require_root();
    let seed: u64 = std::env::var("HERD_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::random::<u32>() as u64);
    let mut faults = Fault::all();
    faults.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    eprintln!(
        "chaos: seed {seed} (HERD_CHAOS_SEED={seed} replays this order): {}",
        faults
            .iter()
            .map(|f| f.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let report = run(&Options {
        rounds: faults.len(),
        seed,
        first: 0,
        targets: 6,
        faults: Some(faults),
        hole_limit_ms: 20_000,
    });
    let table = report.table();
    eprintln!("{table}");
    assert!(
        report.aborted.is_none() && report.violations.is_empty(),
        "the chaos run broke invariants (seed {seed}):\n{table}\n{:#?}",
        report.violations
    );
}
