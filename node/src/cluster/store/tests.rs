use std::collections::BTreeSet;
use std::io::Cursor;
use std::ops::Bound;
use std::time::Duration;

use redb::ReadableTableMetadata;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{
    CommittedLeaderId, EntryPayload, LogId, Membership, RaftLogReader, RaftSnapshotBuilder,
    StorageError, Vote,
};

use super::*;
use crate::cluster::types::{Command, TypeConfig, MAX_DELIVERED_KEYS};

type Entry = openraft::Entry<TypeConfig>;

/// A fresh store in a fresh temporary directory (removed with the guard).
struct TempStore;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for TempStore {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError<NodeId>> {
        let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(&e))?;
        let (log, sm) = open_async(dir.path().to_path_buf())
            .await
            .map_err(|e| StorageIOError::write(&e))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_conformance_suite_passes() {
    Suite::test_all(TempStore).expect("storage conformance suite");
}

fn log_id(term: u64, index: u64) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn entry(term: u64, index: u64, cmd: Command) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(cmd),
    }
}

fn spec(text: &str) -> Command {
    Command::ApplySpec {
        text: text.into(),
        source: "fleet.toml".into(),
    }
}

fn owners(pairs: &[(&str, u64)]) -> Command {
    Command::SetOwnership {
        owners: pairs.iter().map(|(t, n)| (t.to_string(), *n)).collect(),
        reason: "test".into(),
    }
}

fn membership_entry(term: u64, index: u64, voters: &[u64]) -> Entry {
    let set: BTreeSet<u64> = voters.iter().copied().collect();
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Membership(Membership::new(vec![set], None)),
    }
}

#[tokio::test]
async fn data_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let entries = vec![
        membership_entry(1, 1, &[1, 2, 3]),
        entry(1, 2, spec("[[target]]")),
        entry(1, 3, owners(&[("web-1", 2), ("web-2", 3)])),
        entry(2, 4, spec("second")),
    ];
    let expected_state;
    {
        let (mut log, mut sm) = open(dir.path()).expect("open");
        log.save_vote(&Vote::new(2, 1)).await.expect("vote");
        log.blocking_append(entries.clone()).await.expect("append");
        log.save_committed(Some(log_id(1, 3)))
            .await
            .expect("committed");
        let replies = sm.apply(entries[..3].to_vec()).await.expect("apply");
        assert_eq!(replies[1].version, 1, "first spec version");
        assert_eq!(replies[2].version, 1, "first ownership version");
        expected_state = sm.state();
        assert_eq!(expected_state.owners["web-1"], 2);
    }
    let (mut log, mut sm) = open(dir.path()).expect("reopen");
    assert_eq!(log.read_vote().await.expect("vote"), Some(Vote::new(2, 1)));
    assert_eq!(
        log.read_committed().await.expect("committed"),
        Some(log_id(1, 3))
    );
    let got = log.try_get_log_entries(0..).await.expect("logs");
    assert_eq!(got.len(), 4);
    for (a, b) in got.iter().zip(&entries) {
        assert_eq!(a.log_id, b.log_id);
        assert_eq!(format!("{:?}", a.payload), format!("{:?}", b.payload));
    }
    let state = log.get_log_state().await.expect("state");
    assert_eq!(state.last_log_id, Some(log_id(2, 4)));
    assert_eq!(state.last_purged_log_id, None);
    let (applied, membership) = sm.applied_state().await.expect("applied");
    assert_eq!(applied, Some(log_id(1, 3)));
    assert_eq!(membership.log_id(), &Some(log_id(1, 1)));
    assert_eq!(sm.last_applied(), Some(log_id(1, 3)));
    assert_eq!(*sm.state(), *expected_state);
    assert_eq!(**sm.subscribe().borrow(), *expected_state);

    // Applying continues from the stored state.
    let replies = sm.apply(vec![entries[3].clone()]).await.expect("apply");
    assert_eq!(replies[0].version, 2, "spec version continues");
}

#[tokio::test]
async fn purge_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (mut log, _sm) = open(dir.path()).expect("open");
        let entries: Vec<Entry> = (1..=5).map(|i| entry(1, i, spec("x"))).collect();
        log.blocking_append(entries).await.expect("append");
        log.purge(log_id(1, 3)).await.expect("purge");
        // An older purge point is a no-op, not a regression.
        log.purge(log_id(1, 2)).await.expect("older purge");
    }
    let (mut log, _sm) = open(dir.path()).expect("reopen");
    let state = log.get_log_state().await.expect("state");
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 3)));
    assert_eq!(state.last_log_id, Some(log_id(1, 5)));
    let got = log.try_get_log_entries(0..).await.expect("logs");
    assert_eq!(
        got.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
        vec![4, 5]
    );
}

#[tokio::test]
async fn subscribers_see_each_state_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_log, mut sm) = open(dir.path()).expect("open");
    let mut rx = sm.subscribe();
    assert!(!rx.has_changed().expect("open channel"));

    // Blank and membership entries do not change the cluster state.
    let blank = Entry {
        log_id: log_id(1, 1),
        payload: EntryPayload::Blank,
    };
    sm.apply(vec![blank, membership_entry(1, 2, &[1])])
        .await
        .expect("apply");
    assert!(!rx.has_changed().expect("open channel"));
    assert_eq!(sm.last_applied(), Some(log_id(1, 2)));

    sm.apply(vec![entry(1, 3, owners(&[("db", 1)]))])
        .await
        .expect("apply");
    assert!(rx.has_changed().expect("open channel"));
    assert_eq!(rx.borrow_and_update().owners["db"], 1);
}

#[tokio::test]
async fn snapshot_replaces_state_and_survives_reopen() {
    let leader_dir = tempfile::tempdir().expect("tempdir");
    let follower_dir = tempfile::tempdir().expect("tempdir");
    let (_l_log, mut leader) = open(leader_dir.path()).expect("open");
    leader
        .apply(vec![
            membership_entry(1, 1, &[1, 2]),
            entry(1, 2, spec("spec")),
            entry(1, 3, owners(&[("a", 1), ("b", 2)])),
        ])
        .await
        .expect("apply");
    let snap = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build");
    assert_eq!(snap.meta.last_log_id, Some(log_id(1, 3)));

    {
        let (_f_log, mut follower) = open(follower_dir.path()).expect("open");
        // Something the snapshot must replace.
        follower
            .apply(vec![entry(1, 1, owners(&[("stale", 9)]))])
            .await
            .expect("apply");
        let rx = follower.subscribe();
        let mut incoming = follower.begin_receiving_snapshot().await.expect("receive");
        *incoming = Cursor::new(snap.snapshot.get_ref().clone());
        follower
            .install_snapshot(&snap.meta, incoming)
            .await
            .expect("install");
        assert!(rx.has_changed().expect("open channel"));
        assert_eq!(*follower.state(), *leader.state());
    }
    let (_f_log, mut follower) = open(follower_dir.path()).expect("reopen");
    assert_eq!(*follower.state(), *leader.state());
    assert_eq!(follower.last_applied(), Some(log_id(1, 3)));
    let cur = follower
        .get_current_snapshot()
        .await
        .expect("read")
        .expect("a snapshot");
    assert_eq!(cur.meta, snap.meta);
}

#[tokio::test]
async fn an_older_build_does_not_replace_a_newer_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_log, mut sm) = open(dir.path()).expect("open");
    sm.apply(vec![entry(1, 1, spec("old"))])
        .await
        .expect("apply");
    let mut old_builder = sm.get_snapshot_builder().await;
    sm.apply(vec![entry(1, 2, spec("new"))])
        .await
        .expect("apply");
    let newer = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build");
    old_builder.build_snapshot().await.expect("old build");
    let cur = sm
        .get_current_snapshot()
        .await
        .expect("read")
        .expect("a snapshot");
    assert_eq!(cur.meta, newer.meta);
}

#[tokio::test]
async fn a_mismatched_snapshot_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_log, mut sm) = open(dir.path()).expect("open");
    sm.apply(vec![entry(1, 1, spec("x"))]).await.expect("apply");
    let mut snap = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build");
    snap.meta.last_log_id = Some(log_id(1, 7));
    let before = sm.state();
    assert!(sm
        .install_snapshot(&snap.meta, snap.snapshot)
        .await
        .is_err());
    assert_eq!(*sm.state(), *before);
    let garbage = Box::new(Cursor::new(b"not json".to_vec()));
    assert!(sm.install_snapshot(&snap.meta, garbage).await.is_err());
}

#[tokio::test]
async fn limited_reads_stay_under_the_message_budget() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _sm) = open(dir.path()).expect("open");
    let big = "x".repeat(log::MAX_READ_BYTES / 3);
    let entries: Vec<Entry> = (1..=6).map(|i| entry(1, i, spec(&big))).collect();
    log.blocking_append(entries).await.expect("append");
    let got = log.limited_get_log_entries(1, 7).await.expect("read");
    assert!(!got.is_empty() && got.len() < 6, "got {}", got.len());
    assert_eq!(got[0].log_id.index, 1);
    // A single entry above the budget is still returned.
    let huge = "y".repeat(log::MAX_READ_BYTES + 1);
    log.blocking_append(vec![entry(1, 7, spec(&huge))])
        .await
        .expect("append");
    assert_eq!(
        log.limited_get_log_entries(7, 8).await.expect("read").len(),
        1
    );
    // Unlimited reads return everything; inverted ranges nothing.
    assert_eq!(log.try_get_log_entries(1..8).await.expect("read").len(), 7);
    assert!(log
        .try_get_log_entries((Bound::Included(5), Bound::Excluded(3)))
        .await
        .expect("read")
        .is_empty());
}

#[test]
fn a_corrupt_state_names_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(open(dir.path()).expect("open"));
    {
        let db = redb::Database::create(dir.path().join(FILE_NAME)).expect("db");
        let w = db.begin_write().expect("txn");
        {
            let mut t = w.open_table(SM).expect("table");
            t.insert(KEY_STATE, b"{broken".as_slice()).expect("insert");
        }
        w.commit().expect("commit");
    }
    let err = open(dir.path()).err().expect("refused");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("raft.redb") && msg.contains("cluster state"),
        "{msg}"
    );
}

#[test]
fn a_raft_file_of_a_newer_format_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(open(dir.path()).expect("open"));
    let path = dir.path().join(FILE_NAME);
    {
        let db = redb::Database::create(&path).expect("db");
        let r = db.begin_read().expect("read");
        let t = r.open_table(LOG_META).expect("table");
        let format = t
            .get(KEY_FORMAT)
            .expect("get")
            .expect("a new file says its format");
        assert_eq!(format.value(), RAFT_FORMAT.to_le_bytes().as_slice());
        drop((format, t, r));
        let w = db.begin_write().expect("txn");
        {
            let mut t = w.open_table(LOG_META).expect("table");
            t.insert(KEY_FORMAT, (RAFT_FORMAT + 1).to_le_bytes().as_slice())
                .expect("insert");
        }
        w.commit().expect("commit");
    }
    let before = std::fs::read(&path).expect("read");
    let err = open(dir.path()).err().expect("refused");
    assert!(
        matches!(err, StoreError::NewerFormat { found, .. } if found == RAFT_FORMAT + 1),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains(&format!("reads format {RAFT_FORMAT} and older")),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&path).expect("read"),
        before,
        "nothing was changed"
    );
}

#[test]
fn a_second_open_of_the_same_file_fails_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _first = open(dir.path()).expect("open");
    let err = open(dir.path()).err().expect("already open");
    assert!(err.to_string().contains("raft.redb"), "{err}");
}

/// The state is stored in parts, each batch rewriting only what it changed: after
/// batches of every kind of command, a reopened store has the whole state.
#[tokio::test]
async fn every_part_of_the_state_survives_reopen() {
    use crate::cluster::types::Part;
    let dir = tempfile::tempdir().expect("tempdir");
    let alert = crate::model::Alert {
        id: "a1".into(),
        rule: "r".into(),
        target: "web-1".into(),
        labels: Default::default(),
        severity: crate::model::Severity::Critical,
        state: crate::model::AlertState::Firing,
        since_ms: 5,
        active_since_ms: 5,
        value: "1".into(),
        summary: "s".into(),
        description: String::new(),
        transitions: 1,
        acked_by: None,
        flapping: false,
    };
    let silence = crate::store::alerting::Silence {
        id: "s1".into(),
        selector: "target=web-*".into(),
        until_ms: i64::MAX,
        reason: "r".into(),
        created_ms: 1,
        created_by: "me".into(),
    };
    let pause = crate::ownership::Pause {
        by: "me".into(),
        reason: "r".into(),
        since_ms: 1,
        until_ms: None,
    };
    let commands = vec![
        spec("[[target]]"),
        owners(&[("web-1", 2)]),
        Command::Alerts {
            upserts: vec![
                alert.clone(),
                crate::model::Alert {
                    id: "a2".into(),
                    state: crate::model::AlertState::Resolved,
                    transitions: 2,
                    ..alert
                },
            ],
            deleted: vec![],
            queued: vec![crate::store::alerting::fixtures::notice(
                "a:1:c", "web-1", 3,
            )],
            delivered: vec!["b:1:c".into()],
            fence: None,
        },
        // a2 is forgotten (its count kept), a3 was never here (a count only).
        Command::ForgetAlerts {
            alerts: ["a2", "a3"]
                .map(|id| crate::cluster::types::ForgottenAlert {
                    id: id.into(),
                    target: "web-1".into(),
                    transitions: 2,
                    settled_ms: 0,
                })
                .to_vec(),
            fence: None,
        },
        Command::Sent {
            keys: vec!["k".into()],
        },
        Command::NodeHealth {
            node: 3,
            up: false,
            since_ms: 7,
            seen_by: 1,
            moved: vec!["x → 1".into()],
        },
        Command::NodeInfo {
            node: 2,
            addr: "127.0.0.1:2".into(),
            machine: "local".into(),
        },
        Command::Drain { node: 3 },
        Command::Pause {
            target: "web-1".into(),
            pause,
        },
        Command::SilenceAdd { silence },
        Command::Tails {
            marks: vec![(
                "tail\0web-1\0app\0/var/log/app.log".into(),
                crate::cluster::types::TailMark {
                    value: r#"{"inode":7,"offset":120}"#.into(),
                    at_ms: 5,
                },
            )],
        },
    ];
    // Every part is covered by some command above.
    let covered: BTreeSet<Part> = commands.iter().flat_map(|c| c.parts().to_vec()).collect();
    assert_eq!(covered, Part::ALL.into_iter().collect());
    let expected;
    {
        let (_log, mut sm) = open(dir.path()).expect("open");
        for (i, c) in commands.into_iter().enumerate() {
            sm.apply(vec![entry(1, i as u64 + 1, c)])
                .await
                .expect("apply");
        }
        expected = sm.state();
    }
    let (_log, sm) = open(dir.path()).expect("reopen");
    assert_eq!(*sm.state(), *expected);
    assert!(!sm.state().silences.is_empty() && !sm.state().alerts.is_empty());
    assert_eq!(sm.state().alerts.keys().collect::<Vec<_>>(), ["a1"]);
    assert_eq!(
        sm.state().forgotten.keys().collect::<Vec<_>>(),
        ["a2", "a3"]
    );
    assert!(!sm.state().notices.is_empty() && !sm.state().delivered.is_empty());
}

/// A state stored whole (by an earlier version) is read and then kept in parts.
#[tokio::test]
async fn a_state_stored_whole_is_read_and_kept_in_parts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut old = ClusterState::default();
    old.apply(&spec("[[target]]"));
    old.apply(&owners(&[("web-1", 2)]));
    {
        let (_log, _sm) = open(dir.path()).expect("create");
    }
    {
        let db = redb::Database::open(dir.path().join(FILE_NAME)).expect("db");
        let w = db.begin_write().expect("write");
        {
            let mut t = w.open_table(SM).expect("table");
            put_json(&mut t, KEY_STATE, "cluster state", &old).expect("put");
        }
        w.commit().expect("commit");
    }
    {
        let (_log, sm) = open(dir.path()).expect("reopen");
        assert_eq!(*sm.state(), old);
    }
    {
        let (_log, sm) = open(dir.path()).expect("reopen again");
        assert_eq!(*sm.state(), old, "kept in parts");
    }
    let db = redb::Database::open(dir.path().join(FILE_NAME)).expect("db");
    let r = db.begin_read().expect("read");
    let t = r.open_table(SM).expect("table");
    assert!(
        t.get(KEY_STATE).expect("get").is_none(),
        "the whole value is gone"
    );
    assert!(t.get(KEY_STATE_SPEC).expect("get").is_some());
}

/// The herd-state apply benchmark (issue 17's figure; prints, asserts nothing):
/// a state with 10,000 targets, 10,000 alerts firing and 10,000 delivered keys,
/// then one alert change per entry, each appended to the log (a durable commit,
/// as a node does before it applies) and then applied alone as a node applies a
/// commit: p50/p99 of the apply (copy of the state, the command, the rows that
/// changed, the redb commit without fsync) and of the append beside it, and the
/// file's size after. Run with
/// `cargo test -p herd --release --lib herd_state_apply_bench -- --ignored --nocapture`.
#[tokio::test]
#[ignore = "a benchmark: run it by name with --ignored"]
async fn herd_state_apply_bench() {
    const TARGETS: usize = 10_000;
    const CHANGES: u64 = 300;
    let alert = |i: usize, transitions: u64| crate::model::Alert {
        id: format!("cpu-high:web-{i:05}"),
        rule: "cpu-high".into(),
        target: format!("web-{i:05}"),
        labels: [("team".to_string(), "ops".to_string())].into(),
        severity: crate::model::Severity::Critical,
        state: if transitions % 2 == 1 {
            crate::model::AlertState::Firing
        } else {
            crate::model::AlertState::Resolved
        },
        since_ms: 1_796_000_000_000 + transitions as i64,
        active_since_ms: 1_796_000_000_000,
        value: "97.5".into(),
        summary: format!("web-{i:05}: cpu above 90%"),
        description: "cpu.used_pct above 90 for 5m".into(),
        transitions,
        acked_by: None,
        flapping: false,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, mut sm) = open_async(dir.path().to_path_buf()).await.expect("open");
    let pairs: Vec<(String, u64)> = (0..TARGETS)
        .map(|i| (format!("web-{i:05}"), 1 + (i % 3) as u64))
        .collect();
    let mut index = 1;
    let mut next = |cmd: Command| {
        index += 1;
        entry(1, index, cmd)
    };
    let setup = vec![
        next(Command::SetOwnership {
            owners: pairs.into_iter().collect(),
            reason: "bench".into(),
        }),
        next(Command::Alerts {
            upserts: (0..TARGETS).map(|i| alert(i, 1)).collect(),
            deleted: vec![],
            queued: vec![],
            delivered: (0..TARGETS)
                .map(|i| format!("cpu-high:web-{i:05}:1:c"))
                .collect(),
            fence: None,
        }),
    ];
    log.blocking_append(setup.clone()).await.expect("append");
    sm.apply(setup).await.expect("setup");
    let file = dir.path().join("raft.redb");
    let before = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    let mut took = Vec::new();
    let mut appends = Vec::new();
    for c in 0..CHANGES {
        let i = (c as usize * 37) % TARGETS;
        let e = next(Command::Alerts {
            upserts: vec![alert(i, 2 + c)],
            deleted: vec![],
            queued: vec![],
            delivered: vec![format!("cpu-high:web-{i:05}:{}:c", 2 + c)],
            fence: None,
        });
        let t = std::time::Instant::now();
        log.blocking_append(vec![e.clone()]).await.expect("append");
        appends.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = std::time::Instant::now();
        sm.apply(vec![e]).await.expect("apply");
        took.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let after = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    // Where an apply's time goes: the copy of the state, the command on it, and
    // the diff that finds the rows to write (the rest is redb).
    let state = sm.state();
    let t = std::time::Instant::now();
    let mut copy = (*state).clone();
    let clone_ms = t.elapsed().as_secs_f64() * 1000.0;
    let t = std::time::Instant::now();
    copy.apply(&Command::Alerts {
        upserts: vec![alert(1, 1_000)],
        deleted: vec![],
        queued: vec![],
        delivered: vec!["cpu-high:web-00001:1000:c".into()],
        fence: None,
    });
    let command_ms = t.elapsed().as_secs_f64() * 1000.0;
    let t = std::time::Instant::now();
    let changed = state.alerts.diff(&copy.alerts).count();
    let diff_ms = t.elapsed().as_secs_f64() * 1000.0;
    println!(
        "herd state apply breakdown: state copy {clone_ms:.3} ms; the command on the copy \
         {command_ms:.3} ms; the diff of 10,000 alerts ({changed} changed) {diff_ms:.3} ms; \
         the rest is the rows written and the redb commit (no fsync)"
    );
    took.sort_by(f64::total_cmp);
    appends.sort_by(f64::total_cmp);
    let q = |p: f64| took[((took.len() - 1) as f64 * p).round() as usize];
    let qa = |p: f64| appends[((appends.len() - 1) as f64 * p).round() as usize];
    println!(
        "herd state apply: {TARGETS} targets, {TARGETS} alerts, {TARGETS} delivered keys; \
         {CHANGES} single alert changes: apply p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms \
         (the log append before each, with its fsync: p50 {:.2} ms, p99 {:.2} ms); \
         raft.redb {:.1} MB after the setup, {:.1} MB after the changes",
        q(0.5),
        q(0.99),
        took[took.len() - 1],
        qa(0.5),
        qa(0.99),
        before as f64 / 1e6,
        after as f64 / 1e6
    );
    // A snapshot of that state (built every `snapshot_every` entries, 5,000 by
    // default, off the apply path): how long and how large.
    let mut builds = Vec::new();
    let mut bytes = 0;
    for _ in 0..5 {
        let mut b = sm.get_snapshot_builder().await;
        let t = std::time::Instant::now();
        let snap = b.build_snapshot().await.expect("snapshot");
        builds.push(t.elapsed().as_secs_f64() * 1000.0);
        bytes = snap.snapshot.get_ref().len();
    }
    builds.sort_by(f64::total_cmp);
    println!(
        "herd state snapshot: {:.1} MB, built and stored in p50 {:.1} ms, max {:.1} ms (5 builds)",
        bytes as f64 / 1e6,
        builds[2],
        builds[4]
    );
}

/// A format-1 file kept the alerts whole in one value: opened by this build, they
/// move to their rows (format 2), nothing lost.
#[test]
fn alerts_stored_whole_by_format_1_move_to_their_rows() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(open(dir.path()).expect("open"));
    let path = dir.path().join(FILE_NAME);
    let alert = crate::model::Alert {
        id: "cpu:web-1".into(),
        rule: "cpu".into(),
        target: "web-1".into(),
        labels: Default::default(),
        severity: crate::model::Severity::Warning,
        state: crate::model::AlertState::Firing,
        since_ms: 5,
        active_since_ms: 5,
        value: "97".into(),
        summary: "hot".into(),
        description: String::new(),
        transitions: 3,
        acked_by: None,
        flapping: false,
    };
    {
        let db = redb::Database::create(&path).expect("db");
        let w = db.begin_write().expect("txn");
        {
            let mut meta = w.open_table(LOG_META).expect("table");
            meta.insert(KEY_FORMAT, 1u32.to_le_bytes().as_slice())
                .expect("insert");
            let mut sm = w.open_table(SM).expect("table");
            let whole: std::collections::BTreeMap<&str, &crate::model::Alert> =
                [(alert.id.as_str(), &alert)].into();
            sm.insert(
                KEY_STATE_ALERTS,
                serde_json::to_vec(&whole).expect("json").as_slice(),
            )
            .expect("insert");
        }
        w.delete_table(SM_ALERTS).expect("delete");
        w.commit().expect("commit");
    }
    let (_log, sm) = open(dir.path()).expect("a format-1 file opens");
    assert_eq!(
        sm.state().alerts.get("cpu:web-1").map(|a| (**a).clone()),
        Some(alert.clone())
    );
    drop((_log, sm));
    let db = redb::Database::create(&path).expect("db");
    let r = db.begin_read().expect("read");
    assert!(
        r.open_table(SM)
            .expect("sm")
            .get(KEY_STATE_ALERTS)
            .expect("get")
            .is_none(),
        "the whole value is gone"
    );
    assert_eq!(
        r.open_table(SM_ALERTS)
            .expect("rows")
            .iter()
            .expect("iter")
            .count(),
        1
    );
    let format = r.open_table(LOG_META).expect("meta");
    assert_eq!(
        format
            .get(KEY_FORMAT)
            .expect("get")
            .expect("format")
            .value(),
        RAFT_FORMAT.to_le_bytes().as_slice()
    );
}

fn alert_of(target: &str, transitions: u64) -> crate::model::Alert {
    crate::model::Alert {
        id: format!("cpu:{target}"),
        rule: "cpu".into(),
        target: target.into(),
        labels: Default::default(),
        severity: crate::model::Severity::Warning,
        state: crate::model::AlertState::Firing,
        since_ms: transitions as i64,
        active_since_ms: 1,
        value: "97".into(),
        summary: String::new(),
        description: String::new(),
        transitions,
        acked_by: None,
        flapping: false,
    }
}

/// The alerts' rows follow the applied state through upserts, changes and
/// deletions (each batch writes only what it changed): a reopened store has
/// exactly the alerts the state had.
#[tokio::test]
async fn alert_rows_follow_upserts_changes_and_deletions_across_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let alerts = |upserts: Vec<crate::model::Alert>, deleted: Vec<&str>| Command::Alerts {
        upserts,
        deleted: deleted.into_iter().map(String::from).collect(),
        queued: vec![],
        delivered: vec![],
        fence: None,
    };
    let want;
    {
        let (_log, mut sm) = open_async(dir.path().to_path_buf()).await.expect("open");
        sm.apply(vec![
            entry(1, 1, owners(&[("a", 1), ("b", 1), ("c", 1), ("d", 1)])),
            entry(
                1,
                2,
                alerts(
                    vec![alert_of("a", 1), alert_of("b", 1), alert_of("c", 1)],
                    vec![],
                ),
            ),
        ])
        .await
        .expect("apply");
        sm.apply(vec![entry(
            1,
            3,
            alerts(vec![alert_of("c", 2), alert_of("d", 1)], vec!["cpu:b"]),
        )])
        .await
        .expect("apply");
        sm.apply(vec![entry(1, 4, alerts(vec![], vec!["cpu:a"]))])
            .await
            .expect("apply");
        want = sm.state().alerts.clone();
        assert_eq!(
            want.keys().map(String::as_str).collect::<Vec<_>>(),
            ["cpu:c", "cpu:d"]
        );
        assert_eq!(want["cpu:c"].transitions, 2);
    }
    let (_log, sm) = open_async(dir.path().to_path_buf()).await.expect("reopen");
    assert_eq!(sm.state().alerts, want, "the rows hold the applied alerts");
}

/// Notices and delivered keys are rows of their own (format 3): they follow the
/// applied state through queueing, delivery and the forgetting of the oldest
/// delivered keys past the bound, and a reopened store has exactly what the
/// state had — in order, the oldest forgotten.
#[tokio::test]
async fn notice_and_delivered_rows_follow_the_state_across_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cmd = |queued: Vec<crate::store::alerting::OutboxEntry>, delivered: Vec<String>| {
        Command::Alerts {
            upserts: vec![],
            deleted: vec![],
            queued,
            delivered,
            fence: None,
        }
    };
    let over = 5;
    let want;
    {
        let (_log, mut sm) = open_async(dir.path().to_path_buf()).await.expect("open");
        sm.apply(vec![
            entry(1, 1, owners(&[("a", 1), ("b", 1)])),
            entry(
                1,
                2,
                cmd(
                    vec![
                        crate::store::alerting::fixtures::notice("k1", "a", 1),
                        crate::store::alerting::fixtures::notice("k2", "b", 2),
                    ],
                    vec![],
                ),
            ),
        ])
        .await
        .expect("apply");
        // One delivered, one queued, in one batch; then past the bound.
        sm.apply(vec![entry(
            1,
            3,
            cmd(
                vec![crate::store::alerting::fixtures::notice("k3", "a", 3)],
                vec!["k1".into()],
            ),
        )])
        .await
        .expect("apply");
        let many: Vec<String> = (0..MAX_DELIVERED_KEYS + over)
            .map(|i| format!("old-{i:05}"))
            .collect();
        sm.apply(vec![entry(1, 4, cmd(vec![], many))])
            .await
            .expect("apply");
        sm.apply(vec![entry(1, 5, cmd(vec![], vec!["k2".into()]))])
            .await
            .expect("apply");
        want = sm.state();
        assert_eq!(
            want.notices.keys().map(String::as_str).collect::<Vec<_>>(),
            ["k3"]
        );
        assert_eq!(want.delivered.len(), MAX_DELIVERED_KEYS);
        assert!(!want.delivered.contains("k1") && !want.delivered.contains("old-00000"));
        assert!(want.delivered.contains("k2") && want.delivered.contains("old-00006"));
    }
    let (_log, sm) = open_async(dir.path().to_path_buf()).await.expect("reopen");
    assert_eq!(sm.state().notices, want.notices, "the notice rows");
    assert_eq!(
        sm.state().delivered.iter().collect::<Vec<_>>(),
        want.delivered.iter().collect::<Vec<_>>(),
        "the delivered rows, oldest first"
    );
    drop((_log, sm));
    let db = redb::Database::create(dir.path().join(FILE_NAME)).expect("db");
    let r = db.begin_read().expect("read");
    let rows = r.open_table(SM_DELIVERED).expect("rows");
    assert_eq!(
        rows.len().expect("len"),
        MAX_DELIVERED_KEYS as u64,
        "forgotten rows removed"
    );
    // k1 (seq 0), MAX + over old keys (1..), k2: k1 and old-0..=over forgotten.
    let (seq, key) = rows.first().expect("first").expect("a row");
    assert_eq!(
        (seq.value(), key.value()),
        (2 + over as u64, format!("old-{:05}", over + 1).as_str()),
        "numbered since the log began"
    );
}

/// A format-2 file kept notices and delivered keys as one value: opened by this
/// build they move to their rows, and the value is gone.
#[test]
fn notices_stored_whole_by_format_2_move_to_their_rows() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(open(dir.path()).expect("open"));
    let path = dir.path().join(FILE_NAME);
    let notices: std::collections::BTreeMap<String, crate::store::alerting::OutboxEntry> = [(
        "k9".to_string(),
        crate::store::alerting::fixtures::notice("k9", "a", 9),
    )]
    .into();
    let delivered = vec!["k1", "k2"];
    {
        let db = redb::Database::create(&path).expect("db");
        let w = db.begin_write().expect("txn");
        {
            let mut meta = w.open_table(LOG_META).expect("table");
            meta.insert(KEY_FORMAT, 2u32.to_le_bytes().as_slice())
                .expect("insert");
            let mut sm = w.open_table(SM).expect("table");
            sm.insert(
                KEY_STATE_NOTICES,
                serde_json::to_vec(&(&notices, &delivered))
                    .expect("json")
                    .as_slice(),
            )
            .expect("insert");
        }
        w.delete_table(SM_NOTICES).expect("delete");
        w.delete_table(SM_DELIVERED).expect("delete");
        w.commit().expect("commit");
    }
    let (log, sm) = open(dir.path()).expect("a format-2 file opens");
    let state = sm.state();
    assert_eq!(
        state.notices.get("k9"),
        Some(&crate::store::alerting::fixtures::notice("k9", "a", 9)),
        "the notice"
    );
    assert_eq!(state.delivered.iter().collect::<Vec<_>>(), delivered);
    drop((log, sm));
    let db = redb::Database::create(&path).expect("db");
    let r = db.begin_read().expect("read");
    let sm = r.open_table(SM).expect("sm");
    assert!(sm.get(KEY_STATE_NOTICES).expect("get").is_none());
    assert_eq!(r.open_table(SM_NOTICES).expect("t").len().expect("len"), 1);
    assert_eq!(
        r.open_table(SM_DELIVERED).expect("t").len().expect("len"),
        2
    );
}

/// An apply is committed without an fsync. What a crash can leave on the disk —
/// a copy of the file taken right after the apply — is a state machine that is
/// never ahead of the log and consistent with its `last_applied` (applying the
/// log's entries after it gives the state the node had); and once the next entry
/// is appended (a durable commit), the apply is on the disk too.
#[tokio::test]
async fn an_apply_is_made_durable_by_the_next_append_and_never_runs_ahead() {
    let dir = tempfile::tempdir().expect("tempdir");
    let crash = tempfile::tempdir().expect("tempdir");
    let (mut log, mut sm) = open_async(dir.path().to_path_buf()).await.expect("open");
    let entries = vec![
        membership_entry(1, 1, &[1]),
        entry(1, 2, owners(&[("a", 1)])),
        entry(1, 3, spec("[[target]]")),
    ];
    log.blocking_append(entries.clone()).await.expect("append");
    sm.apply(entries.clone()).await.expect("apply");
    let copy_of_disk = |name: &str| {
        let to = crash.path().join(name);
        std::fs::create_dir_all(&to).expect("dir");
        std::fs::copy(dir.path().join(FILE_NAME), to.join(FILE_NAME)).expect("copy");
        to
    };
    let after_apply = copy_of_disk("after-apply");
    let next = entry(1, 4, spec("second"));
    log.blocking_append(vec![next.clone()])
        .await
        .expect("append");
    let after_append = copy_of_disk("after-append");
    let want = sm.state();

    // Right after the apply: at most what the log holds, and consistent.
    let (mut clog, mut csm) = open_async(after_apply).await.expect("open the copy");
    let (applied, _) = csm.applied_state().await.expect("applied");
    let logged = clog.try_get_log_entries(0..).await.expect("logs");
    assert!(logged.len() >= 3, "the appended entries were durable");
    let from = applied.map_or(0, |l| l.index + 1) as usize;
    let rest: Vec<Entry> = logged
        .into_iter()
        .filter(|e| e.log_id.index as usize >= from && e.log_id.index <= 3)
        .collect();
    csm.apply(rest).await.expect("re-apply");
    assert_eq!(
        *csm.state(),
        *want,
        "re-applying the log gives the same state"
    );

    // After the next durable commit: the apply itself is there.
    let (_l, mut dsm) = open_async(after_append).await.expect("open the copy");
    let (applied, _) = dsm.applied_state().await.expect("applied");
    assert_eq!(applied, Some(log_id(1, 3)));
    assert_eq!(*dsm.state(), *want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_raft_file_shrinks_while_the_log_grows_and_nothing_is_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(FILE_NAME);
    let (mut log, sm) = open(dir.path()).expect("open");
    // A storm's worth of log (large specs), then purged: free pages.
    let big = "x".repeat(64 * 1024);
    for chunk in 0..10u64 {
        let entries: Vec<Entry> = (1..=50)
            .map(|i| entry(1, chunk * 50 + i, spec(&big)))
            .collect();
        log.blocking_append(entries).await.expect("append");
    }
    log.purge(log_id(1, 490)).await.expect("purge");
    let db = log.database();
    let before = crate::store::file_size(&path);
    assert!(
        compact_live(&db, &path, Some(u64::MAX), Duration::from_secs(5))
            .expect("looked")
            .is_none(),
        "below the size bound: left alone"
    );
    // Entries keep coming through the compaction.
    let appender = {
        let mut log = log.clone();
        tokio::spawn(async move {
            for i in 501..=700 {
                log.blocking_append(vec![entry(1, i, spec("y"))])
                    .await
                    .expect("append during the compaction");
            }
        })
    };
    let compacted = {
        let (db, path) = (db.clone(), path.clone());
        tokio::task::spawn_blocking(move || {
            compact_live(&db, &path, Some(0), Duration::from_secs(30))
        })
        .await
        .expect("task")
        .expect("compacted")
        .expect("sparse: compacted")
    };
    appender.await.expect("appender");
    assert_eq!(compacted.before_bytes, before);
    assert!(
        compacted.after_bytes * 2 < before,
        "{} -> {} bytes",
        before,
        compacted.after_bytes
    );
    let got = log.try_get_log_entries(0..).await.expect("logs");
    assert_eq!(
        got.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
        (491..=700).collect::<Vec<_>>(),
        "every entry not purged is there, in order"
    );
    drop((log, sm, db));
    let (mut log, _sm) = open(dir.path()).expect("reopen");
    let state = log.get_log_state().await.expect("state");
    assert_eq!(state.last_log_id, Some(log_id(1, 700)));
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 490)));
}
