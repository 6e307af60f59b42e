//! Free loopback ports for fixtures.
use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::Mutex;

/// Ports already handed out by this process, so that two fixtures of one test
/// binary never get the same one.
static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A port on 127.0.0.1 that was free a moment ago: the kernel picks it, the socket
/// is closed and the port returned. Another process may take it in between; the
/// fixtures retry with a new port when their server cannot listen.
pub fn free_port() -> u16 {
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    for _ in 0..100 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("cannot bind 127.0.0.1:0")
            .port();
        if given.insert(port) {
            return port;
        }
    }
    panic!("no free port found on 127.0.0.1");
}
