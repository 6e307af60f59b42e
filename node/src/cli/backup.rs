//! `herd backup --out FILE` (from a running node, over the API) and
//! `herd restore FILE --data-dir DIR` (offline, into an empty data dir).
//!
//! A backup is written to `FILE.partial`, checked against the SHA-256 the node
//! sent, flushed to disk and only then renamed to FILE; `FILE.sha256` beside it
//! says the checksum in `sha256sum` form, and `restore` checks it when present.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use herd_proto::v1 as pb;
use sha2::{Digest, Sha256};

use super::commands::Client;
use super::CliError;
use crate::cluster::store::HerdRestore;
use crate::store::backup::{self as store_backup, BackupError};

/// How often progress is told on stderr.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Streams the node's backup into `out`.
pub async fn backup(client: &mut Client, out: &Path) -> Result<(), CliError> {
    if out.exists() {
        return Err(CliError::Usage(format!(
            "{}: exists already (a backup never overwrites a file)",
            out.display()
        )));
    }
    let partial = with_suffix(out, ".partial");
    let started = Instant::now();
    let mut stream = client
        .backup(pb::BackupRequest {})
        .await
        .map_err(|s| CliError::Failure(format!("backup: {}", s.message())))?
        .into_inner();
    let mut file: Option<std::fs::File> = None;
    let mut header: Option<pb::BackupHeader> = None;
    let mut hash = Sha256::new();
    let mut got = 0u64;
    let mut sent_sha: Option<String> = None;
    let mut told = Instant::now();
    let fail = |partial: &Path, m: String| {
        let _ = std::fs::remove_file(partial);
        CliError::Failure(m)
    };
    loop {
        let chunk = match stream.message().await {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(s) => return Err(fail(&partial, format!("backup: {}", s.message()))),
        };
        match chunk.part {
            Some(pb::backup_chunk::Part::RowsCopied(rows)) => {
                eprintln!("backup: the node is copying its store: {rows} rows so far");
            }
            Some(pb::backup_chunk::Part::Header(h)) => {
                eprintln!(
                    "backup: node {} copied {} rows ({:.1} MB); receiving",
                    h.node_id,
                    h.rows,
                    h.bytes as f64 / 1e6
                );
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&partial)
                    .map_err(|e| {
                        CliError::Failure(format!("cannot write {}: {e}", partial.display()))
                    })?;
                file = Some(f);
                header = Some(h);
            }
            Some(pb::backup_chunk::Part::Data(bytes)) => {
                let (Some(f), Some(h)) = (file.as_mut(), header.as_ref()) else {
                    return Err(CliError::Failure(
                        "backup: the node sent data before saying what it sends".into(),
                    ));
                };
                hash.update(&bytes);
                got += bytes.len() as u64;
                f.write_all(&bytes).map_err(|e| {
                    fail(&partial, format!("cannot write {}: {e}", partial.display()))
                })?;
                if told.elapsed() >= PROGRESS_EVERY {
                    told = Instant::now();
                    eprintln!(
                        "backup: {:.1} of {:.1} MB received",
                        got as f64 / 1e6,
                        h.bytes as f64 / 1e6
                    );
                }
            }
            Some(pb::backup_chunk::Part::Sha256(sha)) => sent_sha = Some(sha),
            None => {}
        }
    }
    let (Some(f), Some(h)) = (file, header) else {
        return Err(CliError::Failure(
            "backup: the node ended the stream before sending the backup".into(),
        ));
    };
    let sha = crate::model::digest::hex(&hash.finalize());
    let Some(sent_sha) = sent_sha else {
        return Err(fail(
            &partial,
            "backup: the node ended the stream before its checksum: not kept".into(),
        ));
    };
    if got != h.bytes || sha != sent_sha {
        return Err(fail(
            &partial,
            format!(
                "backup: received {got} bytes with SHA-256 {sha}; the node sent {} bytes with {sent_sha}: not kept",
                h.bytes
            ),
        ));
    }
    f.sync_all()
        .map_err(|e| fail(&partial, format!("cannot flush {}: {e}", partial.display())))?;
    drop(f);
    std::fs::rename(&partial, out)
        .map_err(|e| fail(&partial, format!("cannot rename to {}: {e}", out.display())))?;
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    std::fs::write(with_suffix(out, ".sha256"), format!("{sha}  {name}\n"))
        .map_err(|e| CliError::Failure(format!("cannot write the checksum file: {e}")))?;
    println!(
        "backup of node {}{}: {} rows, {:.1} MB, sha256 {} -> {} ({:.1}s)",
        h.node_id,
        if h.herd_id.is_empty() {
            String::new()
        } else {
            format!(" (herd {})", h.herd_id)
        },
        h.rows,
        h.bytes as f64 / 1e6,
        &sha[..16],
        out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Restores `file` as the store of `data_dir` (offline).
pub fn restore(file: &Path, data_dir: &Path) -> Result<(), CliError> {
    if !file.is_file() {
        return Err(CliError::Usage(format!(
            "{}: no such file (give a file `herd backup` wrote)",
            file.display()
        )));
    }
    let sums = with_suffix(file, ".sha256");
    match std::fs::read_to_string(&sums) {
        Ok(text) => {
            let want = text
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
            let have = crate::model::digest::file_sha256_hex(file)
                .map_err(|e| CliError::Failure(format!("{}: {e}", file.display())))?;
            if want != have {
                return Err(CliError::Failure(format!(
                    "{}: SHA-256 {have} does not match {} ({want}): the backup is damaged; nothing restored",
                    file.display(),
                    sums.display()
                )));
            }
            eprintln!("restore: SHA-256 matches {}", sums.display());
        }
        Err(_) => eprintln!(
            "restore: no {} beside the backup: checking the file's own page checksums only",
            sums.display()
        ),
    }
    let mut told = Instant::now();
    let meta = store_backup::restore(
        file,
        data_dir,
        &[crate::cluster::store::FILE_NAME],
        &mut |rows| {
            if told.elapsed() >= PROGRESS_EVERY {
                told = Instant::now();
                eprintln!("restore: {rows} rows copied");
            }
        },
    )
    .map_err(|e| match e {
        BackupError::Usage(m) => CliError::Usage(m),
        e @ BackupError::File { .. } => CliError::Failure(e.to_string()),
    })?;
    println!(
        "restored node {}'s store ({} rows, backed up {}) into {}",
        meta.node_id,
        meta.rows,
        humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + Duration::from_millis(meta.created_ms.max(0) as u64)
        ),
        data_dir.join(crate::store::FILE_NAME).display()
    );
    let backup = store_backup::open_backup(file).map_err(|e| CliError::Failure(e.to_string()))?;
    let read = redb::ReadableDatabase::begin_read(&backup)
        .map_err(|e| CliError::Failure(format!("{}: {e}", file.display())))?;
    let herd = crate::cluster::store::restore_from_backup(&read, data_dir, meta.node_id)
        .map_err(|e| CliError::Failure(format!("restoring the herd's state: {e}")))?;
    let herd_name = if meta.herd_id.is_empty() {
        "its herd".to_string()
    } else {
        format!("herd {}", meta.herd_id)
    };
    match herd {
        HerdRestore::Restored => println!(
            "node {} was the only voter of {herd_name}: its herd state (spec, ownership, alerts, \
             silences) is restored too; start it with its herd.toml (data_dir = {})",
            meta.node_id,
            data_dir.display()
        ),
        HerdRestore::Rejoin { voters } => println!(
            "{herd_name} has other voters ({}): the herd's Raft state is not restored (an old vote \
             could let the node vote twice in a term); start node {} with its herd.toml (data_dir = {}) \
             and it rejoins as itself by its [cluster] peers, or run `herd cluster join ADDR` on it; \
             the herd's state comes from its leader",
            voters
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            meta.node_id,
            data_dir.display()
        ),
        HerdRestore::Nothing => println!(
            "the backup holds no herd state (node {} was in no herd); start it with data_dir = {}",
            meta.node_id,
            data_dir.display()
        ),
    }
    Ok(())
}
