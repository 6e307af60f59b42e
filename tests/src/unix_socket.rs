//! A real unix stream socket listening in a temp dir, open to every local user (the
//! SSH login user reaches it through sshd's streamlocal forwarding, which connects
//! as that user). Each accepted connection is answered with a line and closed.
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use tempfile::TempDir;

pub struct UnixSocketServer {
    dir: TempDir,
    path: PathBuf,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl UnixSocketServer {
    /// Listens on `<new temp dir>/<name>`; the dir is 0755 and the socket 0777.
    pub fn start(name: &str) -> UnixSocketServer {
        let dir = tempfile::Builder::new()
            .prefix("herd-sock-")
            .tempdir()
            .expect("cannot create a temp dir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod the socket dir");
        let path = dir.path().join(name);
        let listener =
            UnixListener::bind(&path).unwrap_or_else(|e| panic!("bind {}: {e}", path.display()));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777))
            .expect("chmod the socket");
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let thread = {
            let stop = stop.clone();
            let accepted = accepted.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    if let Ok(mut c) = conn {
                        accepted.fetch_add(1, Ordering::SeqCst);
                        let _ = c.write_all(b"hello from the test socket\n");
                    }
                }
            })
        };
        UnixSocketServer {
            dir,
            path,
            stop,
            accepted,
            thread: Some(thread),
        }
    }

    /// The socket's absolute path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The socket's directory (0755): a place for other paths the test needs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for UnixSocketServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
