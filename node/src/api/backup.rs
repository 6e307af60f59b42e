//! `Backup`: a consistent copy of this node's store, made beside it from one read
//! transaction (see `store::backup`), then streamed to the client with its SHA-256
//! and removed. The copy runs on a blocking thread; scraping and commits go on.
use std::io::Read;
use std::time::{Duration, Instant};

use herd_proto::v1 as pb;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tonic::Status;

use crate::cluster::node::ClusterNode;
use crate::store::Store;

/// Bytes per data message.
const CHUNK_BYTES: usize = 256 * 1024;
/// How often progress is sent while the node copies.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

pub type BackupStream = tokio_stream::wrappers::ReceiverStream<Result<pb::BackupChunk, Status>>;

fn part(p: pb::backup_chunk::Part) -> Result<pb::BackupChunk, Status> {
    Ok(pb::BackupChunk { part: Some(p) })
}

/// Starts the copy and returns the stream the client reads. A client that goes
/// away ends the work, and the scratch file is removed either way.
pub fn start(store: Store, herd: ClusterNode, node_id: u64, herd_id: String) -> BackupStream {
    let (tx, rx) = mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        let scratch = store.backup_scratch();
        let result = run(&store, &herd, &scratch, node_id, &herd_id, &tx);
        let _ = std::fs::remove_file(&scratch);
        if let Err(status) = result {
            tracing::warn!(error = %status.message(), "backup not completed");
            let _ = tx.blocking_send(Err(status));
        }
    });
    BackupStream::new(rx)
}

type Tx = mpsc::Sender<Result<pb::BackupChunk, Status>>;

fn run(
    store: &Store,
    herd: &ClusterNode,
    scratch: &std::path::Path,
    node_id: u64,
    herd_id: &str,
    tx: &Tx,
) -> Result<(), Status> {
    let started = Instant::now();
    let mut told = Instant::now();
    let mut gone = false;
    let meta = store
        .backup_into(
            scratch,
            node_id,
            herd_id,
            &mut |dst, p| herd.backup_into(dst, p),
            &mut |rows| {
                if told.elapsed() >= PROGRESS_EVERY && !gone {
                    told = Instant::now();
                    gone = tx
                        .blocking_send(part(pb::backup_chunk::Part::RowsCopied(rows)))
                        .is_err();
                }
            },
        )
        .map_err(|e| Status::internal(format!("backup: {e}")))?;
    if gone || tx.is_closed() {
        return Ok(());
    }
    // One pass over the copy: its data, hashed as it goes, then the checksum.
    let mut file = std::fs::File::open(scratch)
        .map_err(|e| Status::internal(format!("backup: reading {}: {e}", scratch.display())))?;
    let bytes = file
        .metadata()
        .map_err(|e| Status::internal(format!("backup: reading the copy: {e}")))?
        .len();
    tracing::info!(
        rows = meta.rows,
        bytes,
        copy_ms = started.elapsed().as_millis() as u64,
        "backup copied; sending it"
    );
    let header = pb::BackupHeader {
        bytes,
        node_id,
        herd_id: herd_id.to_string(),
        rows: meta.rows,
        created_ms: meta.created_ms,
        format: meta.format,
    };
    if tx
        .blocking_send(part(pb::backup_chunk::Part::Header(header)))
        .is_err()
    {
        return Ok(());
    }
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; CHUNK_BYTES];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| Status::internal(format!("backup: reading the copy: {e}")))?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        if tx
            .blocking_send(part(pb::backup_chunk::Part::Data(buf[..n].to_vec())))
            .is_err()
        {
            return Ok(());
        }
    }
    let sha256 = crate::model::digest::hex(&hash.finalize());
    let _ = tx.blocking_send(part(pb::backup_chunk::Part::Sha256(sha256)));
    Ok(())
}
