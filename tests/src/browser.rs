//! A real headless browser for the dashboard's tests: Debian's chromium driven by
//! its chromedriver over the W3C WebDriver protocol (JSON over HTTP, spoken with the
//! real `curl`). The browser's console is read back through chromedriver's log
//! endpoint, so an error the page logs fails the test.
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::free_port;
use crate::process::{kill_tree, run_bounded, spawn_logged};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// WebDriver's key for an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
/// Longest one WebDriver call may take (a page load included).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A chromedriver and one headless chromium session.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    _profile: tempfile::TempDir,
    log: PathBuf,
}

impl Browser {
    /// Starts chromedriver and a headless chromium (window 1400×1000).
    pub fn start() -> Browser {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(bin).exists(),
                "{bin} is missing: scripts/test installs Debian's chromium and chromium-driver"
            );
        }
        let profile = tempfile::tempdir().expect("a profile dir");
        let log = profile.path().join("chromedriver.log");
        let port = free_port();
        let driver = spawn_logged(
            Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .arg("--allowed-ips=127.0.0.1"),
            &log,
            &profile.path().join("chromedriver.err"),
        );
        let base = format!("http://127.0.0.1:{port}");
        let mut b = Browser {
            driver,
            base,
            session: String::new(),
            log,
            _profile: profile,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while b.raw("GET", "/status", None)["value"]["ready"] != true {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not become ready: {}",
                b.driver_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile_dir = b._profile.path().join("profile");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1400,1000",
                         "--no-first-run", "--disable-extensions",
                         format!("--user-data-dir={}", profile_dir.display())],
            },
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let created = b.raw("POST", "/session", Some(&caps));
        b.session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| {
                panic!(
                    "chromedriver did not start a session: {created}\n{}",
                    b.driver_log()
                )
            })
            .to_string();
        b
    }

    fn driver_log(&self) -> String {
        crate::log_tail(&self.log, 40)
    }

    /// One WebDriver exchange; the answer's JSON (`{"value": ...}`).
    fn raw(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "--max-time", "55", "-X", method])
            .arg(format!("{}{path}", self.base));
        if let Some(b) = body {
            cmd.args(["-H", "Content-Type: application/json", "--data-binary"])
                .arg(b.to_string());
        }
        let out = run_bounded(&mut cmd, CALL_TIMEOUT);
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    /// A call in the session; panics on a WebDriver error, naming it.
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        let answer = self.raw(method, &path, body);
        let value = answer["value"].clone();
        if let Some(err) = value.get("error") {
            panic!(
                "WebDriver {method} {path}: {err}: {}",
                value["message"].as_str().unwrap_or_default()
            );
        }
        value
    }

    /// Opens `url` (returns once the page has loaded).
    pub fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(&json!({ "url": url })));
    }

    /// Runs `script` (a function body: `return ...;`) in the page; its result.
    pub fn eval(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(&json!({ "script": script, "args": [] })),
        )
    }

    /// Polls `script` until it returns something other than null, false or
    /// `{waiting: WHY}` (WHY is shown if it never does).
    pub fn wait_eval(&self, bound: Duration, what: &str, script: &str) -> Value {
        let deadline = Instant::now() + bound;
        loop {
            let v = self.eval(script);
            if !v.is_null() && v != false && v.get("waiting").is_none() {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "the page never showed {what} within {bound:?} (last: {v}; console: {:?})",
                self.console()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Clicks the element `css` selects, as a user would (WebDriver's element click).
    pub fn click(&self, css: &str) {
        let id = self.element(css);
        self.call("POST", &format!("/element/{id}/click"), Some(&json!({})));
    }

    /// Types `text` into the element `css` selects (WebDriver's element send keys).
    pub fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css);
        self.call(
            "POST",
            &format!("/element/{id}/value"),
            Some(&json!({ "text": text })),
        );
    }

    fn element(&self, css: &str) -> String {
        let found = self.call(
            "POST",
            "/element",
            Some(&json!({ "using": "css selector", "value": css })),
        );
        found[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_string()
    }

    /// The browser's console entries since the last call: (level, message).
    pub fn console(&self) -> Vec<(String, String)> {
        let v = self.call("POST", "/se/log", Some(&json!({ "type": "browser" })));
        v.as_array()
            .map(|entries| {
                entries
                    .iter()
                    .map(|e| {
                        (
                            e["level"].as_str().unwrap_or_default().to_string(),
                            e["message"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Saves a PNG of the window to `path`.
    pub fn screenshot(&self, path: &Path) {
        let b64 = self.call("GET", "/screenshot", None);
        let png = crate::smtp::base64_decode(b64.as_str().expect("a base64 screenshot"));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("the artifact dir");
        }
        std::fs::write(path, png).expect("writing the screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.raw("DELETE", &format!("/session/{}", self.session), None);
        }
        kill_tree(&mut self.driver);
    }
}

/// Where tests leave what a person should look at: `target/test-artifacts/`.
pub fn artifact(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("test-artifacts").join(name)
}
