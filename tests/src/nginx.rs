//! A real nginx on 127.0.0.1 in a temp dir: one plain HTTP listener and, on
//! request, TLS listeners with given certificates, all serving the same small site:
//!
//! - `/health`: 200, `status: UP` (text/plain)
//! - `/boom`: 500
//! - anything else: 404 (an empty document root)
//!
//! nginx runs in the foreground as one process (`master_process off`), so that it
//! dies with the test even when the test is killed; the HTTP path is the same as
//! with workers.
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::ports::free_port;
use crate::process::{kill_tree, log_tail, spawn_logged};

const NGINX: &str = "/usr/sbin/nginx";
/// Longest wait for nginx to listen.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The body of `/health`.
pub const HEALTH_BODY: &str = "status: UP\n";

/// A certificate and its key for a TLS listener.
#[derive(Debug, Clone)]
pub struct TlsListener {
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub struct Nginx {
    dir: TempDir,
    port: u16,
    tls: Vec<TlsListener>,
    tls_ports: Vec<u16>,
    child: Option<Child>,
}

impl Nginx {
    /// nginx with the plain HTTP listener only.
    pub fn start() -> Nginx {
        Nginx::start_with_tls(Vec::new())
    }

    /// nginx with the plain listener and one TLS listener per entry of `tls`, each
    /// on its own port ([`Nginx::tls_port`]).
    pub fn start_with_tls(tls: Vec<TlsListener>) -> Nginx {
        assert!(
            Path::new(NGINX).is_file(),
            "{NGINX} is missing: install the Debian package nginx (or nginx-light)"
        );
        let dir = tempfile::Builder::new()
            .prefix("herd-nginx-")
            .tempdir()
            .expect("cannot create a temp dir");
        std::fs::create_dir_all(dir.path().join("www")).expect("creating the document root");
        std::fs::create_dir_all(dir.path().join("tmp")).expect("creating the temp dir");
        let mut nginx = Nginx {
            dir,
            port: 0,
            tls,
            tls_ports: Vec::new(),
            child: None,
        };
        // Another process may take a free port before nginx binds it: retry once.
        for attempt in 0..2 {
            nginx.port = free_port();
            nginx.tls_ports = nginx.tls.iter().map(|_| free_port()).collect();
            nginx.write_config();
            match nginx.spawn() {
                Ok(()) => return nginx,
                Err(e) if attempt == 0 => {
                    eprintln!("    nginx did not start ({e}); retrying on other ports")
                }
                Err(e) => panic!("nginx did not start: {e}\n{}", nginx.log_tail(40)),
            }
        }
        unreachable!()
    }

    /// The plain HTTP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port of the `i`-th TLS listener.
    pub fn tls_port(&self, i: usize) -> u16 {
        self.tls_ports[i]
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// `https://127.0.0.1:PORT{path}` on the `i`-th TLS listener.
    pub fn tls_url(&self, i: usize, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.tls_ports[i])
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// nginx's error log (startup problems land here and on its stderr).
    pub fn error_log_path(&self) -> PathBuf {
        self.dir.path().join("error.log")
    }

    /// nginx's access log (`combined` format).
    pub fn access_log_path(&self) -> PathBuf {
        self.dir.path().join("access.log")
    }

    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.access_log_path()).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        format!(
            "{}\n{}",
            log_tail(&self.dir.path().join("nginx.err"), lines),
            log_tail(&self.error_log_path(), lines)
        )
    }

    /// Prints the tail of nginx's logs to stderr.
    pub fn dump_logs(&self) {
        eprintln!(
            "----- nginx on port {} ({}), last lines -----\n{}\naccess log:\n{}\n-----",
            self.port,
            self.dir.path().display(),
            self.log_tail(20),
            log_tail(&self.access_log_path(), 20)
        );
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_tree(&mut child);
        }
    }

    fn write_config(&self) {
        let d = self.dir.path().display();
        let site = "        location = /health {\n\
                    \x20           default_type text/plain;\n\
                    \x20           return 200 \"status: UP\\n\";\n\
                    \x20       }\n\
                    \x20       location = /boom {\n\
                    \x20           return 500;\n\
                    \x20       }\n\
                    \x20       location / {\n\
                    \x20           try_files $uri =404;\n\
                    \x20       }\n";
        let mut servers = format!(
            "    server {{\n        listen 127.0.0.1:{port};\n        root {d}/www;\n{site}    }}\n",
            port = self.port
        );
        for (tls, port) in self.tls.iter().zip(&self.tls_ports) {
            servers.push_str(&format!(
                "    server {{\n        listen 127.0.0.1:{port} ssl;\n        root {d}/www;\n\
                 \x20       ssl_certificate {cert};\n        ssl_certificate_key {key};\n{site}    }}\n",
                cert = tls.cert.display(),
                key = tls.key.display(),
            ));
        }
        let config = format!(
            "master_process off;\n\
             error_log {d}/error.log info;\n\
             events {{\n    worker_connections 256;\n}}\n\
             http {{\n\
             \x20   access_log {d}/access.log combined;\n\
             \x20   client_body_temp_path {d}/tmp/body;\n\
             \x20   proxy_temp_path {d}/tmp/proxy;\n\
             \x20   fastcgi_temp_path {d}/tmp/fastcgi;\n\
             \x20   uwsgi_temp_path {d}/tmp/uwsgi;\n\
             \x20   scgi_temp_path {d}/tmp/scgi;\n\
             {servers}}}\n"
        );
        std::fs::write(self.dir.path().join("nginx.conf"), config).expect("writing nginx.conf");
    }

    /// Starts nginx and waits until every listener accepts connections.
    fn spawn(&mut self) -> Result<(), String> {
        let d = self.dir.path();
        let mut cmd = Command::new(NGINX);
        cmd.arg("-e")
            .arg(d.join("error.log"))
            .arg("-p")
            .arg(format!("{}/", d.display()))
            .arg("-c")
            .arg(d.join("nginx.conf"))
            .arg("-g")
            .arg(format!("daemon off; pid {}/nginx.pid;", d.display()));
        let mut child = spawn_logged(&mut cmd, &d.join("nginx.out"), &d.join("nginx.err"));
        let ports: Vec<u16> = std::iter::once(self.port)
            .chain(self.tls_ports.iter().copied())
            .collect();
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "nginx exited with {status}: {}",
                    log_tail(&d.join("nginx.err"), 5)
                ));
            }
            if ports
                .iter()
                .all(|p| TcpStream::connect(("127.0.0.1", *p)).is_ok())
            {
                self.child = Some(child);
                return Ok(());
            }
            if start.elapsed() > START_TIMEOUT {
                kill_tree(&mut child);
                return Err(format!("nginx did not listen within {START_TIMEOUT:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        self.stop();
    }
}
