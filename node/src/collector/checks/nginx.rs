//! nginx: stub_status (connections, request rates) fetched on the target (default)
//! or from the node, and access-log statistics (requests per status class, bytes,
//! request time percentiles) from a log tailed on the target.
//!
//! With `geoip_db` (a MaxMind-format database on the node), the access log's
//! requests are also counted per client country: `nginx.log.requests{country="DE"}`
//! per scrape window (`unknown` for addresses the database cannot place). The
//! database is read into memory at the first scrape and kept; while it cannot be
//! read, the scrape fails with an error naming the path (and the log is not
//! consumed, so its lines are counted once the database is readable).
use super::parse::geoip::GeoDb;
use super::parse::logtail::DEFAULT_MAX_BYTES;
use super::parse::nginx::{parse_stub_status, AccessStats, LogFormat, StubState};
use super::tail::Tail;
use super::{CheckError, CheckSetupError, Env, Outcome, Status};
use crate::config::checks::NginxCheck;
use crate::config::Vantage;
use crate::transport::http::{self, HttpError, Request, Tls, Via};
use crate::transport::TunnelError;

pub struct NginxState {
    stub: Option<(Request, Tls)>,
    stub_state: StubState,
    access: Option<(Tail, LogFormat)>,
    geoip: Option<GeoSource>,
}

/// The country database of the check: its path, and the database once read.
struct GeoSource {
    path: String,
    db: Option<GeoDb>,
}

impl GeoSource {
    /// The database, read at the first call (off the async workers: a country
    /// database is several MB). An unreadable or invalid file is a check error
    /// naming the path; the next scrape tries again.
    async fn get(&mut self) -> Result<&GeoDb, CheckError> {
        if self.db.is_none() {
            let path = crate::config::expand_home(&self.path);
            let opened =
                tokio::task::spawn_blocking(move || maxminddb::Reader::open_readfile(path))
                    .await
                    .map_err(|e| CheckError::Failed(format!("geoip_db {}: {e}", self.path)))?
                    .map_err(|e| CheckError::Failed(format!("geoip_db {}: {e}", self.path)))?;
            self.db = Some(GeoDb::new(opened));
        }
        self.db
            .as_ref()
            .ok_or_else(|| CheckError::Failed(format!("geoip_db {}: not loaded", self.path)))
    }
}

impl NginxState {
    pub fn new(
        c: &NginxCheck,
        name: &str,
        ctx: &super::RunnerCtx<'_>,
    ) -> Result<Self, CheckSetupError> {
        let stub = match &c.status_url {
            Some(url) => {
                let (uri, _, _, _) = http::parse_url(url)?;
                let req = Request {
                    method: ::http::Method::GET,
                    uri,
                    headers: Vec::new(),
                    body: None,
                };
                Some((req, Tls::new(true, None)?))
            }
            None => None,
        };
        let access = match &c.access_log {
            Some(path) => {
                let format = match &c.log_format {
                    Some(f) => LogFormat::compile(f).map_err(CheckSetupError::LogFormat)?,
                    None => LogFormat::default(),
                };
                Some((Tail::load(ctx, name, path, DEFAULT_MAX_BYTES), format))
            }
            None => None,
        };
        let geoip = match &c.geoip_db {
            Some(path) => {
                let Some((_, format)) = &access else {
                    return Err(CheckSetupError::GeoipWithoutAccessLog);
                };
                if !format.has_remote_addr() {
                    return Err(CheckSetupError::GeoipWithoutRemoteAddr);
                }
                Some(GeoSource {
                    path: path.clone(),
                    db: None,
                })
            }
            None => None,
        };
        Ok(NginxState {
            stub,
            stub_state: StubState::default(),
            access,
            geoip,
        })
    }
}

pub async fn run(
    state: &mut NginxState,
    c: &NginxCheck,
    env: &Env<'_>,
    window_s: f64,
) -> Result<Outcome, CheckError> {
    let mut outcome = Outcome::default();
    let mut status = Status::Ok;
    let mut details = Vec::new();
    // Before anything is read: an unreadable database fails this scrape whole.
    let geo = match &mut state.geoip {
        Some(g) => Some(g.get().await?),
        None => None,
    };
    if let Some((req, tls)) = &state.stub {
        let via = match c.from {
            Vantage::Node => Via::Node,
            Vantage::Target => Via::Target(env.transport),
        };
        match http::fetch(req, via, tls, env.timeout).await {
            Ok(r) if r.status == 200 => match parse_stub_status(&r.body) {
                Ok(s) => {
                    details.push(format!("{} active connections", s.active));
                    outcome
                        .measurements
                        .extend(state.stub_state.observe(s, env.ts_ms));
                }
                Err(e) => {
                    return Err(CheckError::Failed(format!(
                        "nginx stub_status {}: {e}",
                        req.uri
                    )))
                }
            },
            Ok(r) => {
                status = Status::Critical;
                details.push(format!("stub_status {} answered {}", req.uri, r.status));
            }
            Err(HttpError::Connect(TunnelError::Transport(e))) => {
                return Err(CheckError::Transport(e))
            }
            Err(HttpError::Connect(TunnelError::Prohibited(why))) => {
                return Err(CheckError::Failed(why))
            }
            Err(e) => {
                status = Status::Critical;
                details.push(format!("stub_status {}: {e}", req.uri));
            }
        }
        outcome.measurements.push(crate::model::Measurement::new(
            "nginx.up",
            if status == Status::Ok { 1.0 } else { 0.0 },
        ));
    }
    if let Some((tail, format)) = &mut state.access {
        let read = tail.read(env).await?;
        let mut stats = AccessStats::default();
        for line in read.lines.iter().filter(|l| !l.trim().is_empty()) {
            match format.parse_line(line) {
                Some(r) => stats.add(&r),
                None => stats.add_unparsed(),
            }
        }
        details.push(format!(
            "{} requests logged, {} unparsed",
            stats.requests(),
            stats.unparsed()
        ));
        outcome.measurements.extend(stats.measurements(window_s));
        if let Some(db) = geo {
            outcome.measurements.extend(stats.country_measurements(db));
        }
        outcome.persist.extend(tail.advance(&read));
    }
    outcome.status = Some(status);
    outcome.detail = Some(details.join("; "));
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::io::Write;
    use std::path::Path;
    use std::time::Duration;

    use super::super::parse::geoip::testdb;
    use super::super::RunnerCtx;
    use super::*;
    use crate::config::TargetSpec;
    use crate::model::Measurement;
    use crate::store::Store;
    use crate::store::StoreOptions;
    use crate::transport::{LocalTransport, Transport};

    /// A hand-written access log in the `combined` format. The addresses are only
    /// text here: nothing is sent to them.
    const LOG: &str = r#"127.0.0.1 - - [14/Nov/2023:22:13:20 +0000] "GET / HTTP/1.1" 200 612 "-" "curl/7.88.1"
127.0.0.1 - - [14/Nov/2023:22:13:21 +0000] "GET /a HTTP/1.1" 404 153 "-" "curl/7.88.1"
127.0.0.77 - alice [14/Nov/2023:22:13:21 +0000] "POST /login HTTP/1.1" 302 0 "-" "Mozilla/5.0"
127.0.0.1 - - [14/Nov/2023:22:13:22 +0000] "GET /b HTTP/1.1" 200 10 "https://example.test/" "curl/7.88.1"
10.1.2.3 - - [14/Nov/2023:22:13:22 +0000] "GET /api HTTP/1.1" 500 20 "-" "Go-http-client/1.1"
10.1.2.3 - - [14/Nov/2023:22:13:23 +0000] "GET /api HTTP/1.1" 200 20 "-" "Go-http-client/1.1"
::ffff:10.0.0.9 - - [14/Nov/2023:22:13:23 +0000] "GET / HTTP/1.1" 200 612 "-" "curl/7.88.1"
2001:db8::1 - - [14/Nov/2023:22:13:24 +0000] "GET / HTTP/2.0" 200 612 "-" "curl/7.88.1"
203.0.113.5 - - [14/Nov/2023:22:13:24 +0000] "\x16\x03\x01" 400 157 "-" "-"
this line is not in the combined format
"#;

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Store,
        states: crate::collector::StateBoard,
        target: TargetSpec,
        transport: Transport,
        log: std::path::PathBuf,
        db: std::path::PathBuf,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            &dir.path().join("store"),
            StoreOptions {
                retention: Duration::from_secs(3600),
                flush_interval: Duration::from_millis(100),
                chunk_samples: 120,
                ..Default::default()
            },
        )
        .unwrap();
        let target: TargetSpec = toml::from_str("name = \"web-1\"\ntransport = \"local\"").unwrap();
        let log = dir.path().join("access.log");
        std::fs::write(&log, "").unwrap();
        let db = dir.path().join("country.mmdb");
        Fixture {
            store,
            states: Default::default(),
            target,
            transport: Transport::Local(LocalTransport),
            log,
            db,
            _dir: dir,
        }
    }

    fn check(log: &Path, db: Option<&Path>) -> NginxCheck {
        let mut text = format!("access_log = {:?}\n", log.display().to_string());
        if let Some(db) = db {
            text.push_str(&format!("geoip_db = {:?}\n", db.display().to_string()));
        }
        toml::from_str(&text).unwrap()
    }

    async fn scrape(
        f: &Fixture,
        state: &mut NginxState,
        c: &NginxCheck,
    ) -> Result<Outcome, CheckError> {
        let env = Env {
            target: &f.target,
            transport: &f.transport,
            timeout: Duration::from_secs(10),
            ts_ms: 1_700_000_000_000,
        };
        run(state, c, &env, 60.0).await
    }

    fn per_country(ms: &[Measurement]) -> BTreeMap<String, f64> {
        ms.iter()
            .filter(|m| m.metric == "nginx.log.requests")
            .filter_map(|m| m.labels.get("country").map(|c| (c.clone(), m.value)))
            .collect()
    }

    fn append(path: &Path, text: &str) {
        let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    #[tokio::test]
    async fn access_log_requests_per_country() {
        let f = fixture();
        std::fs::write(&f.db, testdb::sample(6)).unwrap();
        let c = check(&f.log, Some(&f.db));
        let mut state = NginxState::new(
            &c,
            "nginx",
            &RunnerCtx::for_tests(&f.store, &f.target.name, &f.states),
        )
        .unwrap();
        // The first scrape starts at the log's end.
        let first = scrape(&f, &mut state, &c).await.unwrap();
        assert!(per_country(&first.measurements).is_empty());

        append(&f.log, LOG);
        let out = scrape(&f, &mut state, &c).await.unwrap();
        assert_eq!(out.status, Some(Status::Ok));
        let total = out
            .measurements
            .iter()
            .find(|m| m.metric == "nginx.log.requests" && m.labels.is_empty())
            .unwrap();
        assert_eq!(total.value, 9.0);
        let want: BTreeMap<String, f64> = [("DE", 4.0), ("US", 3.0), ("FR", 1.0), ("unknown", 1.0)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert_eq!(per_country(&out.measurements), want);
        // Country series carry only the country label.
        for m in out
            .measurements
            .iter()
            .filter(|m| m.labels.contains_key("country"))
        {
            assert_eq!(m.labels.len(), 1, "{m:?}");
        }

        // Per scrape window: nothing new, no country series.
        let quiet = scrape(&f, &mut state, &c).await.unwrap();
        assert!(per_country(&quiet.measurements).is_empty());
        append(
            &f.log,
            "10.200.0.1 - - [14/Nov/2023:22:14:00 +0000] \"GET / HTTP/1.1\" 200 1 \"-\" \"-\"\n",
        );
        let next = scrape(&f, &mut state, &c).await.unwrap();
        let want: BTreeMap<String, f64> = [("US".to_string(), 1.0)].into_iter().collect();
        assert_eq!(per_country(&next.measurements), want);

        // Without geoip_db: the same statistics, no country labels, no error.
        let plain = check(&f.log, None);
        let mut state = NginxState::new(
            &plain,
            "plain",
            &RunnerCtx::for_tests(&f.store, &f.target.name, &f.states),
        )
        .unwrap();
        scrape(&f, &mut state, &plain).await.unwrap();
        append(&f.log, LOG);
        let out = scrape(&f, &mut state, &plain).await.unwrap();
        assert!(out
            .measurements
            .iter()
            .any(|m| m.metric == "nginx.log.requests"));
        assert!(out
            .measurements
            .iter()
            .all(|m| !m.labels.contains_key("country")));
    }

    #[tokio::test]
    async fn unreadable_geoip_db_is_a_check_error_naming_the_path() {
        let f = fixture();
        let c = check(&f.log, Some(&f.db));
        let mut state = NginxState::new(
            &c,
            "nginx",
            &RunnerCtx::for_tests(&f.store, &f.target.name, &f.states),
        )
        .unwrap();
        let shown = f.db.display().to_string();

        // Missing.
        match scrape(&f, &mut state, &c).await {
            Err(CheckError::Failed(m)) => {
                assert!(m.starts_with("geoip_db "), "{m}");
                assert!(m.contains(&shown), "{m}");
            }
            other => panic!("expected a check error, got {other:?}"),
        }
        // Not a database.
        std::fs::write(&f.db, "GeoIP legacy .dat, not MMDB").unwrap();
        match scrape(&f, &mut state, &c).await {
            Err(CheckError::Failed(m)) => assert!(m.contains(&shown), "{m}"),
            other => panic!("expected a check error, got {other:?}"),
        }

        // Once readable, it is used; the lines logged meanwhile were not lost.
        std::fs::write(&f.db, testdb::sample(4)).unwrap();
        scrape(&f, &mut state, &c).await.unwrap();
        append(&f.log, LOG);
        // Replacing the file later does not matter: the database was read once.
        std::fs::remove_file(&f.db).unwrap();
        let out = scrape(&f, &mut state, &c).await.unwrap();
        let counts = per_country(&out.measurements);
        assert_eq!(counts.get("DE"), Some(&4.0));
        assert_eq!(counts.get("US"), Some(&3.0));
        // An IPv4-only database cannot place 2001:db8::1.
        assert_eq!(counts.get("unknown"), Some(&2.0));
    }

    #[test]
    fn geoip_db_needs_an_access_log_with_remote_addr() {
        let f = fixture();
        let mut c = check(&f.log, Some(&f.db));
        c.log_format = Some("$status $body_bytes_sent".into());
        let ctx = RunnerCtx::for_tests(&f.store, "web-1", &f.states);
        let refused = |c: &NginxCheck| NginxState::new(c, "nginx", &ctx).err().unwrap().to_string();
        let e = refused(&c);
        assert!(e.contains("$remote_addr"), "{e}");
        c.log_format = None;
        c.access_log = None;
        c.status_url = Some("http://127.0.0.1/nginx_status".into());
        let e = refused(&c);
        assert!(e.contains("access_log"), "{e}");
    }
}
