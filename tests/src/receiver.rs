//! A real HTTP/1.1 receiver on 127.0.0.1 for notification channels (webhook,
//! Alertmanager, Slack, Telegram): it records every request (method, path, headers,
//! body, and what it answered) and answers a configurable status. It can be taken
//! down (the port is closed: connection refused) and brought up again on the same
//! port, or start down. For the notification bench it can also hold every request
//! unanswered for a while ([`HttpReceiver::hold`]) and counts the connections open
//! at once ([`HttpReceiver::reset_peak`]).
//!
//! std only: one blocking accept thread, one thread per connection, `Connection: close`.
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::ports::free_port;

/// Longest wait for a request's head and body.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request accepted (head and body).
const MAX_REQUEST: usize = 4 << 20;
/// Default answer: what Telegram says, and fine for every other kind.
const OK_BODY: &str = r#"{"ok":true,"result":{"message_id":1}}"#;
/// Longest a request is held unanswered (below a channel's 30 s timeout).
const HOLD_LIMIT: Duration = Duration::from_secs(25);
/// The listen backlog. std listens with 128: a drained outbox of hundreds of
/// notifications (one connection each, all at once) would overflow it and the
/// dropped SYNs come back after 1 s. Linux lets listen() raise it (capped by
/// net.core.somaxconn).
const LISTEN_BACKLOG: i32 = 4096;

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    /// Path and query, as sent.
    pub path: String,
    /// Names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The status the receiver answered.
    pub status: u16,
    /// Unix ms when the request was complete.
    pub ts_ms: i64,
    /// The same moment in Unix µs, for latency figures.
    pub ts_us: i64,
    /// Arrived while the receiver held requests ([`HttpReceiver::hold`]).
    pub held: bool,
    /// Who sent it.
    pub peer: std::net::SocketAddr,
}

/// Every notification in the Herd JSON documents of `reqs` answered with 2xx, in
/// order of arrival (a document may group several).
pub fn herd_notes(reqs: &[Received]) -> Vec<Value> {
    reqs.iter()
        .filter(|r| r.accepted())
        .flat_map(|r| {
            r.json()["notifications"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .collect()
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON; panics with the body when it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "the body of {} {} is not JSON ({e}): {}",
                self.method,
                self.path,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Answered with a 2xx status: the sender counts it as delivered.
    pub fn accepted(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

#[derive(Default)]
struct Shared {
    requests: Mutex<Vec<Received>>,
    answer: Mutex<(u16, String)>,
    hold: Mutex<bool>,
    released: Condvar,
    /// Connections being served, and the most at once since the last reset.
    open: AtomicUsize,
    peak: AtomicUsize,
}

struct Running {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

pub struct HttpReceiver {
    ip: String,
    port: u16,
    shared: Arc<Shared>,
    running: Mutex<Option<Running>>,
}

impl HttpReceiver {
    /// Listening on a free port, answering 200 with `{"ok":true,...}`.
    pub fn start() -> HttpReceiver {
        let r = HttpReceiver::start_down();
        r.up();
        r
    }

    /// A receiver whose port is reserved but closed (connection refused) until
    /// [`HttpReceiver::up`].
    pub fn start_down() -> HttpReceiver {
        HttpReceiver::down_at("127.0.0.1", free_port())
    }

    fn down_at(ip: &str, port: u16) -> HttpReceiver {
        HttpReceiver {
            ip: ip.to_string(),
            port,
            shared: Arc::new(Shared {
                answer: Mutex::new((200, OK_BODY.to_string())),
                ..Shared::default()
            }),
            running: Mutex::new(None),
        }
    }

    /// Listening on `ip` (e.g. a bridge address a network-namespace test made) at a
    /// port the kernel picks; every request records its sender ([`Received::peer`]).
    pub fn start_on(ip: &str) -> HttpReceiver {
        let port = TcpListener::bind((ip, 0))
            .and_then(|l| l.local_addr())
            .unwrap_or_else(|e| panic!("the receiver cannot listen on {ip}: {e}"))
            .port();
        let r = HttpReceiver::down_at(ip, port);
        r.up();
        r
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://IP:PORT{path}` (IP is 127.0.0.1 unless started with `start_on`).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}:{}{path}", self.ip, self.port)
    }

    /// Answer `status` with `body` from now on.
    pub fn answer(&self, status: u16, body: &str) {
        *self.shared.answer.lock().unwrap() = (status, body.to_string());
    }

    /// Answer 200 with `{"ok":true,...}` from now on.
    pub fn answer_ok(&self) {
        self.answer(200, OK_BODY);
    }

    /// Opens the port (again) and serves; waits up to 10 s for the port to be free.
    pub fn up(&self) {
        let mut running = self.running.lock().unwrap();
        if running.is_some() {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind((self.ip.as_str(), self.port)) {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("    receiver cannot bind port {} yet: {e}", self.port);
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("the receiver cannot listen on port {}: {e}", self.port),
            }
        };
        // SAFETY: listen on a socket we own, no memory involved.
        unsafe { libc::listen(listener.as_raw_fd(), LISTEN_BACKLOG) };
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            let shared = self.shared.clone();
            std::thread::Builder::new()
                .name("receiver".into())
                .spawn(move || accept_loop(listener, stop, shared))
                .expect("start the receiver's accept thread")
        };
        *running = Some(Running { stop, thread });
    }

    /// Closes the port: later connections are refused. Requests being served finish
    /// (held ones are let go).
    pub fn down(&self) {
        if let Some(r) = self.running.lock().unwrap().take() {
            r.stop.store(true, Ordering::SeqCst);
            self.hold(false);
            // Wake the blocking accept; it sees `stop` and drops the listener.
            let _ = TcpStream::connect((self.ip.as_str(), self.port));
            let _ = r.thread.join();
        }
    }

    /// While on, every request is recorded (as [`Received::held`]) and then held
    /// unanswered until off, or for 25 s at most.
    pub fn hold(&self, on: bool) {
        *self.shared.hold.lock().unwrap() = on;
        self.shared.released.notify_all();
    }

    /// The most connections open at once since the last reset; restarts counting.
    pub fn reset_peak(&self) -> usize {
        let open = self.shared.open.load(Ordering::SeqCst);
        self.shared.peak.swap(open, Ordering::SeqCst)
    }

    /// How many requests arrived so far.
    pub fn count(&self) -> usize {
        self.shared.requests.lock().unwrap().len()
    }

    /// The requests from index `from` on, in arrival order (cheaper than
    /// [`HttpReceiver::requests`] when polled often).
    pub fn requests_since(&self, from: usize) -> Vec<Received> {
        let reqs = self.shared.requests.lock().unwrap();
        reqs.get(from..)
            .map(<[Received]>::to_vec)
            .unwrap_or_default()
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Received> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// The requests answered with 2xx (what the sender counts as delivered).
    pub fn accepted(&self) -> Vec<Received> {
        self.requests()
            .into_iter()
            .filter(|r| r.accepted())
            .collect()
    }

    /// Polls until `cond` holds on the requests so far; panics naming `what` after
    /// `timeout`, listing what arrived.
    pub fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        mut cond: impl FnMut(&[Received]) -> bool,
    ) -> Vec<Received> {
        let start = Instant::now();
        loop {
            let reqs = self.requests();
            if cond(&reqs) {
                eprintln!("    ok after {:.1}s: {what}", start.elapsed().as_secs_f64());
                return reqs;
            }
            if start.elapsed() >= timeout {
                panic!(
                    "timed out after {timeout:?} waiting until {what}; the receiver on port {} got:\n{}",
                    self.port,
                    describe(&reqs)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// One line per request, for failure messages.
pub fn describe(reqs: &[Received]) -> String {
    if reqs.is_empty() {
        return "  (nothing)".into();
    }
    reqs.iter()
        .map(|r| {
            format!(
                "  {} {} -> {} {}",
                r.method,
                r.path,
                r.status,
                String::from_utf8_lossy(&r.body)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

impl Drop for HttpReceiver {
    fn drop(&mut self) {
        self.down();
    }
}

/// Blocking accept (no polling delay before a request is seen), until `stop` is set
/// and a connection wakes it.
fn accept_loop(listener: TcpListener, stop: Arc<AtomicBool>, shared: Arc<Shared>) {
    loop {
        let accepted = listener.accept();
        if stop.load(Ordering::SeqCst) {
            return;
        }
        match accepted {
            Ok((stream, peer)) => {
                let shared = shared.clone();
                let spawned = std::thread::Builder::new()
                    .name("receiver-conn".into())
                    .spawn(move || serve(stream, peer, &shared));
                if let Err(e) = spawned {
                    eprintln!("    receiver cannot start a thread: {e}");
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                eprintln!("    receiver accept failed: {e}");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

/// Counts a connection as open while it lives.
struct OpenGuard<'a>(&'a Shared);

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Reads one request, records it, holds it while the receiver holds, answers and
/// closes.
fn serve(mut stream: TcpStream, peer: std::net::SocketAddr, shared: &Shared) {
    let open = shared.open.fetch_add(1, Ordering::SeqCst) + 1;
    let _guard = OpenGuard(shared);
    shared.peak.fetch_max(open, Ordering::SeqCst);
    let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
    let _ = stream.set_nodelay(true);
    let Some((method, path, headers, body)) = read_request(&mut stream) else {
        return;
    };
    let ts_us = now_us();
    let (status, answer) = shared.answer.lock().unwrap().clone();
    let held = *shared.hold.lock().unwrap();
    shared.requests.lock().unwrap().push(Received {
        method,
        path,
        headers,
        body,
        status,
        ts_ms: ts_us / 1000,
        ts_us,
        held,
        peer,
    });
    if held {
        let hold = shared.hold.lock().unwrap();
        let _ = shared
            .released
            .wait_timeout_while(hold, HOLD_LIMIT, |h| *h)
            .unwrap();
    }
    let reply = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{answer}",
        reason(status),
        answer.len()
    );
    let _ = stream.write_all(reply.as_bytes());
    let _ = stream.flush();
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

type Request = (String, String, Vec<(String, String)>, Vec<u8>);

/// Microseconds since the Unix epoch.
fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn read_request(stream: &mut TcpStream) -> Option<Request> {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if !read_more(stream, &mut buf) {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let path = first.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let mut rest = buf[head_end + 4..].to_vec();
    let chunked = header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        loop {
            if let Some(body) = dechunk(&rest) {
                break body;
            }
            if !read_more(stream, &mut rest) {
                return None;
            }
        }
    } else {
        let length: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while rest.len() < length {
            if !read_more(stream, &mut rest) {
                return None;
            }
        }
        rest.truncate(length);
        rest
    };
    Some((method, path, headers, body))
}

/// Reads what is there into `buf`; false at EOF, on error or when too large.
fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 16 * 1024];
    match stream.read(&mut chunk) {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            buf.len() <= MAX_REQUEST
        }
    }
}

/// A complete chunked body, or None when more is needed.
fn dechunk(data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        let line_end = data[i..].windows(2).position(|w| w == b"\r\n")? + i;
        let size_text = String::from_utf8_lossy(&data[i..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        i = line_end + 2;
        if size == 0 {
            return Some(out);
        }
        if data.len() < i + size + 2 {
            return None;
        }
        out.extend_from_slice(&data[i..i + size]);
        i += size + 2;
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}
