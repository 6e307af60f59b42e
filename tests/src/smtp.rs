//! A real SMTP server on 127.0.0.1: aiosmtpd (Debian package python3-aiosmtpd) with
//! its `Mailbox` handler, which writes every message it accepts into a Maildir,
//! with the envelope in `X-MailFrom` / `X-RcptTo` headers. The tests read the
//! Maildir and parse the messages (headers, multipart parts, transfer encodings).
use std::io::Read;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::ports::free_port;
use crate::process::{kill_tree, log_tail, spawn_logged};

/// Longest wait for the server to greet.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// A python3 that can import aiosmtpd: Debian's (`/usr/bin/python3`) first, since a
/// python3 earlier on PATH (pyenv, a venv) may not see the Debian package.
fn python() -> &'static str {
    static PYTHON: OnceLock<String> = OnceLock::new();
    PYTHON.get_or_init(|| {
        for candidate in ["/usr/bin/python3", "python3"] {
            let ok = Command::new(candidate)
                .args(["-c", "import aiosmtpd"])
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                return candidate.to_string();
            }
        }
        panic!(
            "no python3 can import aiosmtpd: install the Debian package python3-aiosmtpd \
             (apt-get install -y python3-aiosmtpd)"
        )
    })
}

pub struct SmtpServer {
    dir: TempDir,
    port: u16,
    child: Option<Child>,
}

impl SmtpServer {
    /// Starts aiosmtpd on a free port with a Maildir in a temp dir.
    pub fn start() -> SmtpServer {
        let dir = tempfile::Builder::new()
            .prefix("herd-smtp-")
            .tempdir()
            .expect("cannot create a temp dir");
        let mut smtp = SmtpServer {
            dir,
            port: 0,
            child: None,
        };
        // Another process may take the free port before aiosmtpd binds it: retry once.
        for attempt in 0..2 {
            smtp.port = free_port();
            match smtp.spawn() {
                Ok(()) => return smtp,
                Err(e) if attempt == 0 => {
                    eprintln!("    aiosmtpd did not start ({e}); retrying on another port")
                }
                Err(e) => panic!("aiosmtpd did not start: {e}\n{}", smtp.log_tail(40)),
            }
        }
        unreachable!()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`, as an email channel's `smtp`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// An `[[channel]]` table: an email channel `name` to this server without TLS,
    /// from `herd@example.test` to `to`. More keys of the table may follow it.
    pub fn email_channel(&self, name: &str, to: &[&str]) -> String {
        let to: Vec<String> = to.iter().map(|a| format!("{a:?}")).collect();
        format!(
            "[[channel]]\nname = \"{name}\"\nkind = \"email\"\nsmtp = \"{}\"\ntls = \"none\"\n\
             from = \"herd@example.test\"\nto = [{}]\n",
            self.address(),
            to.join(", ")
        )
    }

    pub fn maildir(&self) -> PathBuf {
        self.dir.path().join("Maildir")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("aiosmtpd.log")
    }

    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path(), lines)
    }

    /// Every message delivered so far, oldest first.
    pub fn messages(&self) -> Vec<Mail> {
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = Vec::new();
        for sub in ["new", "cur"] {
            let Ok(dir) = std::fs::read_dir(self.maildir().join(sub)) else {
                continue;
            };
            for entry in dir.flatten() {
                let modified = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::UNIX_EPOCH);
                files.push((modified, entry.path()));
            }
        }
        files.sort();
        files
            .into_iter()
            .filter_map(|(_, p)| std::fs::read(&p).ok())
            .map(|raw| Mail::parse(&String::from_utf8_lossy(&raw)))
            .collect()
    }

    /// Polls until `cond` holds on the messages so far; panics naming `what` after
    /// `timeout`, listing the subjects that arrived.
    pub fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        mut cond: impl FnMut(&[Mail]) -> bool,
    ) -> Vec<Mail> {
        let start = Instant::now();
        loop {
            let mails = self.messages();
            if cond(&mails) {
                eprintln!("    ok after {:.1}s: {what}", start.elapsed().as_secs_f64());
                return mails;
            }
            if start.elapsed() >= timeout {
                let subjects: Vec<String> = mails.iter().map(|m| m.subject()).collect();
                panic!(
                    "timed out after {timeout:?} waiting until {what}; mails so far: {subjects:?}\n{}",
                    self.log_tail(20)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn spawn(&mut self) -> Result<(), String> {
        let mut cmd = Command::new(python());
        cmd.args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(self.address())
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(self.maildir());
        let log = self.log_path();
        let mut child = spawn_logged(&mut cmd, &self.dir.path().join("aiosmtpd.out"), &log);
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("aiosmtpd exited with {status}"));
            }
            if greets(self.port) {
                self.child = Some(child);
                return Ok(());
            }
            if start.elapsed() > START_TIMEOUT {
                kill_tree(&mut child);
                return Err(format!("aiosmtpd did not greet within {START_TIMEOUT:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- aiosmtpd on port {} ({}), last lines -----\n{}\n-----",
                self.port,
                self.log_path().display(),
                self.log_tail(30)
            );
        }
        if let Some(mut child) = self.child.take() {
            kill_tree(&mut child);
        }
    }
}

/// The server accepts a connection and says `220`.
fn greets(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 3];
    s.read_exact(&mut buf).is_ok() && &buf == b"220"
}

/// A parsed message: unfolded headers, the body, and its MIME parts decoded.
#[derive(Debug, Clone)]
pub struct Mail {
    pub raw: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// One leaf part of a message: its content type (lowercased, without parameters)
/// and its decoded text.
#[derive(Debug, Clone)]
pub struct Part {
    pub content_type: String,
    pub text: String,
}

impl Mail {
    pub fn parse(raw: &str) -> Mail {
        let raw = raw.replace("\r\n", "\n");
        let (headers, body) = split_head(&raw);
        Mail {
            raw: raw.clone(),
            headers,
            body,
        }
    }

    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn subject(&self) -> String {
        self.header("subject").unwrap_or_default().to_string()
    }

    /// The envelope recipients, as the server saw them (`X-RcptTo`).
    pub fn envelope_to(&self) -> Vec<String> {
        self.header("x-rcptto")
            .unwrap_or_default()
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    }

    /// The leaf parts, decoded (one part for a non-multipart message).
    pub fn parts(&self) -> Vec<Part> {
        let mut out = Vec::new();
        collect_parts(&self.headers, &self.body, &mut out);
        out
    }

    /// The decoded text of the first part of this content type.
    pub fn part(&self, content_type: &str) -> Option<String> {
        self.parts()
            .into_iter()
            .find(|p| p.content_type == content_type)
            .map(|p| p.text)
    }
}

/// Headers (continuation lines unfolded) and the rest.
fn split_head(text: &str) -> (Vec<(String, String)>, String) {
    let (head, body) = match text.find("\n\n") {
        Some(i) => (&text[..i], text[i + 2..].to_string()),
        None => (text, String::new()),
    };
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in head.lines() {
        if line.starts_with(' ') || line.starts_with('\t') {
            if let Some(last) = headers.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
        } else if let Some((n, v)) = line.split_once(':') {
            headers.push((n.trim().to_string(), v.trim().to_string()));
        }
    }
    (headers, body)
}

fn header_of<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// `boundary=...` of a Content-Type value.
fn boundary(content_type: &str) -> Option<String> {
    content_type.split(';').find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| v.trim().trim_matches('"').to_string())
    })
}

fn collect_parts(headers: &[(String, String)], body: &str, out: &mut Vec<Part>) {
    let ct = header_of(headers, "content-type").unwrap_or("text/plain");
    let kind = ct
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if kind.starts_with("multipart/") {
        let Some(b) = boundary(ct) else {
            return;
        };
        let delimiter = format!("--{b}");
        for (i, section) in body.split(&delimiter).enumerate() {
            // Before the first delimiter: the preamble; "--" after the last one.
            if i == 0 || section.starts_with("--") {
                continue;
            }
            let section = section.strip_prefix('\n').unwrap_or(section);
            let (h, b) = split_head(section);
            collect_parts(&h, &b, out);
        }
        return;
    }
    let encoding = header_of(headers, "content-transfer-encoding")
        .unwrap_or("7bit")
        .to_ascii_lowercase();
    let text = match encoding.as_str() {
        "base64" => String::from_utf8_lossy(&base64_decode(body)).into_owned(),
        "quoted-printable" => String::from_utf8_lossy(&qp_decode(body)).into_owned(),
        _ => body.to_string(),
    };
    out.push(Part {
        content_type: kind,
        text,
    });
}

/// Standard base64, as mail bodies and WebDriver screenshots carry it.
pub fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        })
    };
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.bytes() {
        if c == b'=' {
            break;
        }
        let Some(v) = value(c) else {
            continue;
        };
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

fn qp_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'=' if bytes.get(i + 1) == Some(&b'\n') => i += 2,
            b'=' if bytes.len() >= i + 3 => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'=');
                        i += 1;
                    }
                }
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_multipart_message() {
        let raw = "Subject: [FIRING] a rule\r\n on t\r\nX-RcptTo: a@x, b@x\r\n\
                   Content-Type: multipart/alternative;\r\n boundary=\"XYZ\"\r\n\r\n\
                   --XYZ\r\nContent-Type: text/plain; charset=utf-8\r\n\
                   Content-Transfer-Encoding: quoted-printable\r\n\r\nvalue =C2=B7 ok=\r\n!\r\n\
                   --XYZ\r\nContent-Type: text/html\r\nContent-Transfer-Encoding: base64\r\n\r\n\
                   PGI+aGk8L2I+\r\n--XYZ--\r\n";
        let m = Mail::parse(raw);
        assert_eq!(m.subject(), "[FIRING] a rule on t");
        assert_eq!(m.envelope_to(), vec!["a@x", "b@x"]);
        assert_eq!(m.part("text/plain").unwrap().trim(), "value · ok!");
        assert_eq!(m.part("text/html").unwrap(), "<b>hi</b>");
    }
}
