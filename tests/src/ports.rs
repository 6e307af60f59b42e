//! Free loopback ports for fixtures.
use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::Mutex;

/// Ports already handed out by this process, so that two fixtures of one test
/// binary never get the same one.
static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A port on 127.0.0.1 that was free a moment ago: the kernel picks it, the socket
/// is closed and the port returned. Tests run as separate processes (nextest), and
/// a fixture may listen on its port seconds later (nodes started apart): so each
/// port is also reserved across processes, by an exclusive lock on a file named
/// after it, held until this process ends. Another process's fixtures skip it.
/// Something else may still take it in between; the fixtures retry with a new
/// port when their server cannot listen.
pub fn free_port() -> u16 {
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    for _ in 0..100 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("cannot bind 127.0.0.1:0")
            .port();
        if !given.contains(&port) && reserve(port) {
            given.insert(port);
            return port;
        }
    }
    panic!("no free port found on 127.0.0.1");
}

/// Takes the lock of `port`'s file for the rest of this process; false when
/// another live process holds it.
fn reserve(port: u16) -> bool {
    use std::os::fd::IntoRawFd;
    let dir = std::env::temp_dir().join("herd-test-ports");
    if std::fs::create_dir_all(&dir).is_err() {
        return true;
    }
    let Ok(file) = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(port.to_string()))
    else {
        return true;
    };
    let fd = file.into_raw_fd();
    // SAFETY: flock on a descriptor this function owns; on success the descriptor
    // is kept open (and the lock held) until the process exits.
    let locked = unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } == 0;
    if !locked {
        // SAFETY: the descriptor is ours and used nowhere else.
        unsafe { libc::close(fd) };
    }
    locked
}
