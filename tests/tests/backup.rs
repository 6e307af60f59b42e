//! `herd backup` and `herd restore` against a real node: a backup taken while the
//! node scrapes holds every sample the node had acknowledged before it began; a
//! node whose data dir was lost comes back from it with its history and its herd
//! state (a herd of one: it was its only voter); nothing is ever overwritten (an
//! existing backup file, a data dir holding a node's files: exit 2); a damaged
//! backup is refused whole (exit 1) and leaves no file behind. `herd compact` of a
//! running node's store loses nothing and the node scrapes on.
//!
//! The restore of a member of a larger herd is in `herd_bootstrap.rs` (it needs
//! the declarative herd's template). The bounds only catch hangs.
use std::time::Duration;

use herd_tests::{local_target, phase, wait_for, Herd, HerdOptions};

const BOUND: Duration = Duration::from_secs(30);

fn text(out: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_backup_taken_while_scraping_restores_a_lost_node_with_its_history() {
    let mut herd = Herd::start(HerdOptions::default().fleet(local_target("box", "1s")));
    wait_for(BOUND, "a few cpu samples", || {
        (herd.points("box", "cpu.used_pct").len() >= 4).then_some(())
    });
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node-1.backup");
    let file_arg = file.to_str().unwrap();

    phase!("herd backup --out node-1.backup, while the node scrapes every second");
    // Every sample the node answers with is committed: the backup must hold them.
    let acknowledged = herd.points("box", "cpu.used_pct");
    let out = herd.cli(&["backup", "--out", file_arg]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("backup of node 1") && stdout.contains("rows"),
        "{}",
        text(&out)
    );
    assert!(file.is_file(), "the backup file is there");
    let sums = std::fs::read_to_string(dir.path().join("node-1.backup.sha256")).unwrap();
    assert!(
        sums.ends_with("  node-1.backup\n") && sums.split_whitespace().next().unwrap().len() == 64,
        "FILE.sha256 in sha256sum form: {sums:?}"
    );
    let leftovers: Vec<String> = std::fs::read_dir(herd.data_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".backup-"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "the node removed its scratch copy: {leftovers:?}"
    );

    phase!("a second backup to the same file: refused (exit 2), the first kept");
    let again = herd.cli(&["backup", "--out", file_arg]);
    assert_eq!(again.status.code(), Some(2), "{}", text(&again));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("exists already"),
        "{}",
        text(&again)
    );

    phase!("the node dies and loses its data dir");
    herd.kill9();
    let data = herd.data_dir();
    std::fs::rename(&data, dir.path().join("lost-data")).unwrap();

    phase!("herd restore node-1.backup --data-dir DATA");
    let data_arg = data.to_str().unwrap().to_string();
    let out = herd.cli(&["restore", file_arg, "--data-dir", &data_arg]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("only voter"),
        "a herd of one gets its herd state back: {}",
        text(&out)
    );
    assert!(data.join("herd.redb").is_file() && data.join("raft.redb").is_file());

    phase!("restoring over it again: refused (exit 2), nothing touched");
    let before = std::fs::metadata(data.join("herd.redb")).unwrap().len();
    let twice = herd.cli(&["restore", file_arg, "--data-dir", &data_arg]);
    assert_eq!(twice.status.code(), Some(2), "{}", text(&twice));
    assert_eq!(
        std::fs::metadata(data.join("herd.redb")).unwrap().len(),
        before
    );

    phase!("the node starts on the restored dir: every acknowledged sample is there, and it scrapes on");
    herd.restart();
    let after = wait_for(BOUND, "the restored node answers with new samples", || {
        let p = herd.points("box", "cpu.used_pct");
        let newest = acknowledged.last().map_or(0, |l| l.0);
        p.iter().any(|(t, _)| *t > newest + 3000).then_some(p)
    });
    let missing: Vec<&(i64, f64)> = acknowledged.iter().filter(|p| !after.contains(p)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged samples are missing after the restore: {missing:?}",
        missing.len(),
        acknowledged.len()
    );
    let status = herd.status_json();
    assert_ne!(
        status["spec_version"], 0,
        "the herd state (its spec) came back: {status:#}"
    );

    phase!("a damaged backup: refused whole (exit 1), no file left in the data dir");
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    let bad = dir.path().join("bad.backup");
    std::fs::write(&bad, &bytes).unwrap();
    std::fs::write(dir.path().join("bad.backup.sha256"), &sums).unwrap();
    let empty = dir.path().join("empty-data");
    let out = herd.cli(&[
        "restore",
        bad.to_str().unwrap(),
        "--data-dir",
        empty.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("damaged"),
        "{}",
        text(&out)
    );
    assert!(
        !empty.join("herd.redb").exists() && !empty.join("raft.redb").exists(),
        "nothing restored from a damaged backup"
    );

    phase!("a file that is no backup: refused (exit 1) with why");
    let not = dir.path().join("not.backup");
    std::fs::write(&not, b"hello").unwrap();
    let out = herd.cli(&[
        "restore",
        not.to_str().unwrap(),
        "--data-dir",
        empty.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a Herd backup"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_running_node_compacts_its_store_and_scrapes_on() {
    let herd = Herd::start(HerdOptions::default().fleet(local_target("box", "1s")));
    wait_for(BOUND, "a few cpu samples", || {
        (herd.points("box", "cpu.used_pct").len() >= 3).then_some(())
    });

    phase!("herd compact: the running node's store, while it scrapes");
    let acknowledged = herd.points("box", "cpu.used_pct");
    let out = herd.cli(&["compact"]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("store: ") && stdout.contains(" MB -> "),
        "{}",
        text(&out)
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("raft: ") && l.contains(" MB -> ")),
        "the Raft file is compacted too: {}",
        text(&out)
    );
    // The herd's log and state go on after it: a write through Raft, applied.
    let paused = herd.cli_ok(&["pause", "box", "--for", "1h", "--reason", "after compact"]);
    assert!(paused.contains("box"), "{paused}");
    let listed = herd.cli_ok(&["status"]);
    assert!(listed.contains("(after compact)"), "{listed}");
    herd.cli_ok(&["resume", "box"]);
    let after = wait_for(BOUND, "new samples after the compaction", || {
        let p = herd.points("box", "cpu.used_pct");
        let newest = acknowledged.last().map_or(0, |l| l.0);
        p.iter().any(|(t, _)| *t > newest + 2000).then_some(p)
    });
    let missing: Vec<&(i64, f64)> = acknowledged.iter().filter(|p| !after.contains(p)).collect();
    assert!(missing.is_empty(), "lost by the compaction: {missing:?}");

    phase!("herd compact DATA_DIR of the running node: refused (its files are in use)");
    let dir = herd.data_dir();
    let out = herd.cli(&["compact", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("in use"),
        "{}",
        text(&out)
    );
}
