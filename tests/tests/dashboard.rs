//! The dashboard in a real browser: `herd demo` (three real nodes), Debian's
//! headless chromium driven through chromedriver. The page must load without a
//! console error, show the demo's herd and targets, draw a chart with points, show
//! an alert the test raises without a reload, and ack it with its button; a
//! screenshot is left in target/test-artifacts/dashboard.png.
use std::time::Duration;

use herd_tests::browser::{artifact, Browser};
use herd_tests::demo::Demo;
use herd_tests::{herd_bin, herd_cli, local_target, phase, wait_for, Herd, HerdOptions};
use serde_json::Value;

/// Generous bounds that only catch hangs.
const FORM_TIMEOUT: Duration = Duration::from_secs(60);
const PAGE_TIMEOUT: Duration = Duration::from_secs(30);
const CLI_TIMEOUT: Duration = Duration::from_secs(30);

/// The demo's fleet (as `herd demo` applies it) plus a rule that fires on any CPU
/// reading of this machine: an alert the test raises.
const FLEET_WITH_ALERT: &str = r#"
[[target]]
name = "local"
transport = "local"
interval = "1s"
labels = { role = "demo" }
checks = [{ kind = "vitals" }]

[[rule]]
name = "cpu-seen"
targets = ["local"]
metric = "cpu.used_pct"
kind = "range"
max = -1
severity = "warning"
summary = "{{target}}: CPU at {{value}} %"
"#;

fn alerts(demo: &Demo) -> Option<Value> {
    let out = herd_cli(&["--node", &demo.grpc, "alerts", "--json"], CLI_TIMEOUT);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

#[test]
fn the_dashboard_shows_the_demo_live_in_a_real_browser() {
    herd_bin();
    let demo = Demo::start("1s");

    phase!("the demo prints the dashboard's URL");
    let url = wait_for(FORM_TIMEOUT, "the demo to print its dashboard URL", || {
        let text = std::fs::read_to_string(&demo.out).ok()?;
        let line = text.lines().find(|l| l.starts_with("dashboard: "))?;
        Some(
            line["dashboard: ".len()..]
                .split_whitespace()
                .next()?
                .to_string(),
        )
    });
    assert_eq!(url, format!("http://{}/", demo.http), "{}", demo.show());
    wait_for(
        FORM_TIMEOUT,
        "a herd of 3 with this machine scraped",
        || {
            let s = demo.status()?;
            let nodes = s["nodes"].as_array()?;
            let local_up = s["targets"]
                .as_array()?
                .iter()
                .any(|t| t["name"] == "local" && t["up"] == true);
            (nodes.len() == 3 && nodes.iter().all(|n| n["alive"] == true) && local_up).then_some(())
        },
    );

    phase!("the page loads and shows the herd and its targets");
    let browser = Browser::start();
    browser.goto(&url);
    browser.eval("window.herdTestMarker = 'not reloaded'; return true;");
    let rows = browser.wait_eval(
        PAGE_TIMEOUT,
        "the demo's four targets",
        "const rows = [...document.querySelectorAll('#targets tbody tr')].map(r => r.dataset.target);
         return ['local', 'herd-node-1', 'herd-node-2', 'herd-node-3'].every(n => rows.includes(n)) ? rows : null;",
    );
    assert_eq!(rows.as_array().map(Vec::len), Some(4), "{rows}");
    let nodes = browser.wait_eval(
        PAGE_TIMEOUT,
        "three nodes, all alive",
        "const rows = [...document.querySelectorAll('#nodes tbody tr')];
         return rows.length === 3 && rows.every(r => r.cells[2].textContent === 'yes')
           ? rows.map(r => r.dataset.node) : null;",
    );
    assert_eq!(nodes, serde_json::json!(["1", "2", "3"]));
    // Each node's machine is watched by another node, and the page says by whom.
    let watches = browser.eval(
        "return [...document.querySelectorAll('#nodes tbody tr')].map(r => r.cells[5].textContent);",
    );
    let watched: usize = watches
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap_or("").matches("node ").count())
        .sum();
    assert_eq!(watched, 3, "who watches whom: {watches}");
    browser.wait_eval(
        PAGE_TIMEOUT,
        "the live stream connected",
        "return document.getElementById('live').textContent === 'live';",
    );

    phase!("a target's charts draw points");
    browser.click("#targets tr[data-target='local']");
    let points = browser.wait_eval(
        PAGE_TIMEOUT,
        "a CPU chart with points",
        "const c = document.querySelector(\"canvas[data-metric='herd_cpu_used_pct']\");
         return c && Number(c.dataset.points) > 1 ? Number(c.dataset.points) : { waiting: [S.metrics.length, c && c.dataset.points, document.getElementById('error-bar').textContent] };",
    );
    assert!(points.as_u64().unwrap() > 1, "{points}");
    let charts = browser.eval(
        "return [...document.querySelectorAll('#charts canvas')].map(c => c.dataset.metric);",
    );
    assert!(
        charts.as_array().unwrap().len() >= 3,
        "the vitals charts: {charts}"
    );

    phase!("an alert raised by the test appears without a reload");
    let fleet = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(fleet.path(), FLEET_WITH_ALERT).unwrap();
    let out = herd_cli(
        &[
            "--node",
            &demo.grpc,
            "apply",
            fleet.path().to_str().unwrap(),
        ],
        CLI_TIMEOUT,
    );
    assert!(
        out.status.success(),
        "herd apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = browser.wait_eval(
        PAGE_TIMEOUT,
        "the firing alert",
        "const li = document.querySelector(\"#alerts li[data-rule='cpu-seen'][data-state='firing']\");
         return li ? li.dataset.alertId : null;",
    );
    assert_eq!(
        browser.eval("return window.herdTestMarker || null;"),
        "not reloaded",
        "the page reloaded to show the alert"
    );

    phase!("its ack button acks it in the herd");
    browser.click(&format!(
        "#alerts li[data-alert-id='{}'] button.ack",
        id.as_str().unwrap()
    ));
    wait_for(PAGE_TIMEOUT, "the alert acked by the dashboard", || {
        let a = alerts(&demo)?;
        a["alerts"]
            .as_array()?
            .iter()
            .any(|a| a["id"] == id && a["acked_by"] == "dashboard")
            .then_some(())
    });
    browser.wait_eval(
        PAGE_TIMEOUT,
        "the page showing who acked it",
        "const li = document.querySelector(\"#alerts li[data-rule='cpu-seen']\");
         return li && li.textContent.includes('acked by dashboard');",
    );

    phase!("no console error, and a screenshot for a person to look at");
    let shot = artifact("dashboard.png");
    browser.screenshot(&shot);
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{}",
        shot.display()
    );
    eprintln!("screenshot: {}", shot.display());
    let errors: Vec<_> = browser
        .console()
        .into_iter()
        .filter(|(level, _)| level == "SEVERE")
        .collect();
    assert!(errors.is_empty(), "console errors: {errors:?}");
}

const TOKEN: &str = "dashboard-test-token-7f3e";

#[test]
fn the_dashboard_asks_for_the_token_and_the_page_alone_gives_nothing_away() {
    let herd = Herd::start(
        HerdOptions::default()
            .api_token(TOKEN)
            .fleet(local_target("box", "1s")),
    );
    let url = format!("http://{}/", herd.http_addr());

    phase!("the page itself needs no token, carries a strict policy and no data");
    let out = herd_tests::process::run_bounded(
        std::process::Command::new("curl").args(["-s", "-S", "-i", "--max-time", "20", &url]),
        CLI_TIMEOUT,
    );
    let page = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(page.starts_with("http/1.1 200"), "{page}");
    assert!(
        page.contains("content-security-policy: default-src 'none'; script-src 'self'"),
        "{page}"
    );
    assert!(!page.contains("box"), "the page holds no data: {page}");

    phase!("without a token the page asks for one; with it, it shows the herd");
    let browser = Browser::start();
    browser.goto(&url);
    browser.wait_eval(
        PAGE_TIMEOUT,
        "the token form",
        "return !document.getElementById('token-form').hidden;",
    );
    browser.type_into("#token-input", TOKEN);
    browser.click("#token-form button[type='submit']");
    browser.wait_eval(
        PAGE_TIMEOUT,
        "target box, after the token was given",
        "return document.querySelector(\"#targets tr[data-target='box']\") !== null
           && document.getElementById('token-form').hidden;",
    );

    phase!("a link with #token= works in a new tab, and the token leaves the address bar");
    browser.eval("sessionStorage.clear(); return true;");
    browser.goto("about:blank");
    browser.goto(&format!("{url}#token={TOKEN}"));
    browser.wait_eval(
        PAGE_TIMEOUT,
        "target box, from the link's token",
        "return document.querySelector(\"#targets tr[data-target='box']\") !== null;",
    );
    assert_eq!(browser.eval("return location.hash;"), "");
    assert_eq!(
        browser.eval("return document.getElementById('token-form').hidden;"),
        true
    );

    phase!("a link to one target (an alert's generatorURL) filters by it and opens it");
    browser.eval("sessionStorage.clear(); return true;");
    browser.goto("about:blank");
    browser.goto(&format!("{url}#target=box&token={TOKEN}"));
    browser.wait_eval(
        PAGE_TIMEOUT,
        "target box selected, its panel open, the filter set",
        "const tr = document.querySelector('#targets tr.selected');
         return tr && tr.dataset.target === 'box'
           && !document.getElementById('target-panel').hidden
           && document.getElementById('filter').value === 'box';",
    );
}
