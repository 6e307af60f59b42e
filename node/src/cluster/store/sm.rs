//! The state machine: the applied [`ClusterState`] and its snapshots.
use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{
    BasicNode, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftSnapshotBuilder,
    Snapshot, SnapshotMeta, StorageError, StoredMembership,
};
use redb::ReadableDatabase;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{
    apply_txn, blocking, decode, encode, get_json, put_json, sto, write_txn, Fault, Tables,
    KEY_LAST_APPLIED, KEY_MEMBERSHIP, KEY_SNAPSHOT_DATA, KEY_SNAPSHOT_META, SM,
};
use crate::cluster::types::{ClusterState, CommandResponse, NodeId, Part, TypeConfig};
use crate::store::SharedDb;
use std::collections::BTreeSet;

type Entry = openraft::Entry<TypeConfig>;
type Membership = StoredMembership<NodeId, BasicNode>;
type Meta = SnapshotMeta<NodeId, BasicNode>;

/// Version of the snapshot data layout; a node refuses a snapshot of another
/// layout rather than installing a state it misreads.
const SNAPSHOT_FORMAT: u32 = 1;

/// What has been applied. Cloning is cheap (the state is shared).
#[derive(Debug, Clone, Default)]
pub(super) struct Applied {
    pub last_applied: Option<LogId<NodeId>>,
    pub membership: Membership,
    pub state: Arc<ClusterState>,
}

/// Snapshot data as built: the applied state with the log position it reflects.
#[derive(Serialize)]
struct SnapshotOut<'a> {
    format: u32,
    last_applied: Option<LogId<NodeId>>,
    membership: &'a Membership,
    state: &'a ClusterState,
}

/// Snapshot data as received.
#[derive(Deserialize)]
struct SnapshotIn {
    format: u32,
    last_applied: Option<LogId<NodeId>>,
    membership: Membership,
    state: ClusterState,
}

/// The state machine. Hand it to `openraft::Raft::new`; take a [`subscribe`]
/// receiver first to follow the applied state.
///
/// [`subscribe`]: StateMachineStore::subscribe
pub struct StateMachineStore {
    db: SharedDb,
    applied: Applied,
    /// The applied state, published after every apply that changed it and after
    /// a snapshot install; what it holds is always committed by the herd (durable
    /// in the logs of a majority; this file's copy is made durable by its next
    /// durable commit, see the store's invariants).
    tx: watch::Sender<Arc<ClusterState>>,
    /// Distinguishes snapshots built at the same log position.
    snapshot_seq: u64,
}

impl StateMachineStore {
    pub(super) fn new(db: SharedDb, applied: Applied) -> StateMachineStore {
        let (tx, _) = watch::channel(applied.state.clone());
        StateMachineStore {
            db,
            applied,
            tx,
            snapshot_seq: 0,
        }
    }

    /// The applied state now.
    #[cfg(test)]
    pub fn state(&self) -> Arc<ClusterState> {
        self.applied.state.clone()
    }

    /// A receiver of the applied state: it sees each committed change (a node
    /// reconciles what it owns against it). Valid after the store moves into Raft.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.tx.subscribe()
    }

    /// Log id of the last applied entry.
    #[cfg(test)]
    pub fn last_applied(&self) -> Option<LogId<NodeId>> {
        self.applied.last_applied
    }

    /// Makes `applied` current (after its commit) and tells the subscribers.
    fn publish(&mut self, applied: Applied, changed: bool) {
        self.applied = applied;
        if changed {
            self.tx.send_replace(self.applied.state.clone());
        }
    }
}

/// Applies `entries` to a copy of `applied`. Returns the new position, the
/// responses and the parts of the cluster state the commands changed (blank and
/// membership entries leave it as is, and then it is neither copied nor rewritten).
fn apply_entries(
    mut applied: Applied,
    entries: Vec<Entry>,
) -> (Applied, Vec<CommandResponse>, BTreeSet<Part>) {
    let mut state: Option<ClusterState> = None;
    let mut parts = BTreeSet::new();
    let mut responses = Vec::with_capacity(entries.len());
    for e in entries {
        applied.last_applied = Some(e.log_id);
        match e.payload {
            EntryPayload::Blank => responses.push(CommandResponse::default()),
            EntryPayload::Normal(cmd) => {
                let s = state.get_or_insert_with(|| (*applied.state).clone());
                parts.extend(cmd.parts().iter().copied());
                responses.push(s.apply(&cmd));
            }
            EntryPayload::Membership(m) => {
                applied.membership = StoredMembership::new(Some(e.log_id), m);
                responses.push(CommandResponse::default());
            }
        }
    }
    if let Some(s) = state {
        applied.state = Arc::new(s);
    }
    (applied, responses, parts)
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, Membership), StorageError<NodeId>> {
        Ok((self.applied.last_applied, self.applied.membership.clone()))
    }

    /// The new state, `last_applied` and membership are committed in one redb
    /// transaction before anything (openraft, subscribers) sees them.
    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResponse>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let Some(last) = entries.last().map(|e| e.log_id) else {
            return Ok(Vec::new());
        };
        let db = self.db.clone();
        let current = self.applied.clone();
        let before = current.state.clone();
        let (applied, responses, changed) = blocking(move || {
            let (applied, responses, parts) = apply_entries(current, entries);
            // Shared for the whole transaction (see `SharedDb`), not the work before.
            let db = db.get();
            let w = apply_txn(&db)?;
            {
                let mut t = Tables::open(&w)?;
                put_json(
                    &mut t.sm,
                    KEY_LAST_APPLIED,
                    "last applied log id",
                    &applied.last_applied,
                )?;
                put_json(&mut t.sm, KEY_MEMBERSHIP, "membership", &applied.membership)?;
                t.put_state(&applied.state, Some(&before), &parts)?;
            }
            w.commit()?;
            Ok((applied, responses, !parts.is_empty()))
        })
        .await
        .map_err(sto(ErrorSubject::Apply(last), ErrorVerb::Write))?;
        self.publish(applied, changed);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshot_seq += 1;
        SnapshotBuilder {
            db: self.db.clone(),
            applied: self.applied.clone(),
            seq: self.snapshot_seq,
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    /// Replaces the state with the snapshot's and keeps the snapshot as the
    /// current one, in one transaction.
    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let db = self.db.clone();
        let data = snapshot.into_inner();
        let meta_owned = meta.clone();
        let applied = blocking(move || {
            let body: SnapshotIn = decode("snapshot", &data)?;
            if body.format != SNAPSHOT_FORMAT {
                return Err(Fault::Invalid(format!(
                    "snapshot format {} (this node reads {SNAPSHOT_FORMAT})",
                    body.format
                )));
            }
            if body.last_applied != meta_owned.last_log_id
                || body.membership != meta_owned.last_membership
            {
                return Err(Fault::Invalid(
                    "snapshot data does not match its metadata".into(),
                ));
            }
            let applied = Applied {
                last_applied: meta_owned.last_log_id,
                membership: meta_owned.last_membership.clone(),
                state: Arc::new(body.state),
            };
            // Shared for the whole transaction (see `SharedDb`), not the decoding.
            let db = db.get();
            let w = write_txn(&db)?;
            {
                let mut t = Tables::open(&w)?;
                put_json(
                    &mut t.sm,
                    KEY_LAST_APPLIED,
                    "last applied log id",
                    &applied.last_applied,
                )?;
                put_json(&mut t.sm, KEY_MEMBERSHIP, "membership", &applied.membership)?;
                t.put_state(&applied.state, None, &Part::ALL.into_iter().collect())?;
                put_json(&mut t.sm, KEY_SNAPSHOT_META, "snapshot meta", &meta_owned)?;
                t.sm.insert(KEY_SNAPSHOT_DATA, data.as_slice())?;
            }
            w.commit()?;
            Ok(applied)
        })
        .await
        .map_err(sto(
            ErrorSubject::Snapshot(Some(meta.signature())),
            ErrorVerb::Write,
        ))?;
        self.publish(applied, true);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let db = self.db.clone();
        blocking(move || {
            // Shared for the whole transaction (see `SharedDb`).
            let db = db.get();
            let r = db.begin_read()?;
            let t = r.open_table(SM)?;
            let Some(meta) = get_json::<Meta, _>(&t, KEY_SNAPSHOT_META, "snapshot meta")? else {
                return Ok(None);
            };
            let Some(data) = t.get(KEY_SNAPSHOT_DATA)? else {
                return Err(Fault::Invalid("snapshot meta without data".into()));
            };
            Ok(Some(Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(data.value().to_vec())),
            }))
        })
        .await
        .map_err(sto(ErrorSubject::Snapshot(None), ErrorVerb::Read))
    }
}

/// Builds a snapshot of the state as it was when the builder was made, while
/// the state machine goes on applying.
pub struct SnapshotBuilder {
    db: SharedDb,
    applied: Applied,
    seq: u64,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    /// Serialises the state and stores it as the current snapshot, unless a
    /// newer one (installed meanwhile) is already there.
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let applied = self.applied.clone();
        let snapshot_id = match applied.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, self.seq),
            None => format!("none-{}", self.seq),
        };
        let meta = Meta {
            last_log_id: applied.last_applied,
            last_membership: applied.membership.clone(),
            snapshot_id,
        };
        let db = self.db.clone();
        let meta_owned = meta.clone();
        let data = blocking(move || {
            let data = encode(
                "snapshot",
                &SnapshotOut {
                    format: SNAPSHOT_FORMAT,
                    last_applied: applied.last_applied,
                    membership: &applied.membership,
                    state: &applied.state,
                },
            )?;
            // Shared for the whole transaction (see `SharedDb`), not the encoding.
            let db = db.get();
            let w = write_txn(&db)?;
            {
                let mut t = w.open_table(SM)?;
                let current: Option<Meta> = get_json(&t, KEY_SNAPSHOT_META, "snapshot meta")?;
                if current.is_none_or(|c| c.last_log_id <= meta_owned.last_log_id) {
                    put_json(&mut t, KEY_SNAPSHOT_META, "snapshot meta", &meta_owned)?;
                    t.insert(KEY_SNAPSHOT_DATA, data.as_slice())?;
                }
            }
            w.commit()?;
            Ok(data)
        })
        .await
        .map_err(sto(
            ErrorSubject::Snapshot(Some(meta.signature())),
            ErrorVerb::Write,
        ))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}
