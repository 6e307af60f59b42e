//! Asana: one task per message through `POST {base_url}/tasks` (REST API 1.0,
//! `Authorization: Bearer <personal access token>`).
//!
//! ```json
//! {"data": {"name": "[FIRING] disk-full on web-1: Disk / is full",
//!           "notes": "<per alert: headline, severity, value, summary, description,
//!                     labels, times, alert id, idempotency key>",
//!           "projects": ["1201"], "workspace": "1100"}}
//! ```
//!
//! `projects` and `workspace` are sent only when set. Asana answers 201 Created;
//! 200 is taken as success too, any other 2xx is refused. Failures are classified
//! like the webhook's: 408, 429 and 5xx are retryable, other 4xx permanent. The token
//! never appears in errors or in `Debug`.
use std::fmt;

use serde_json::{json, Map, Value};
use tokio::time::Instant;

use super::{check_status, payload, read_secret, ChannelError, HttpTarget, SendError};
use crate::config::channels::AsanaChannel;
use crate::model::Notification;
use crate::transport::http::parse_url;

const DEFAULT_BASE_URL: &str = "https://app.asana.com/api/1.0";
/// Task names are one line; longer ones are cut.
const MAX_NAME_CHARS: usize = 1_000;
/// Asana's notes hold 65,535 characters; stay below.
const MAX_NOTES_CHARS: usize = 60_000;

pub(super) struct Asana {
    token: String,
    project: Option<String>,
    workspace: Option<String>,
    base_url: String,
    target: HttpTarget,
}

impl Asana {
    pub(super) fn build(spec: &AsanaChannel) -> Result<Asana, ChannelError> {
        let token = read_secret(&spec.token, "token")?;
        ::http::HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| ChannelError::TokenNotHeaderSafe)?;
        let base_url = spec
            .base_url
            .as_deref()
            .unwrap_or(DEFAULT_BASE_URL)
            .trim_end_matches('/')
            .to_string();
        parse_url(&base_url).map_err(|_| ChannelError::BadBaseUrl {
            base_url: base_url.clone(),
        })?;
        let url = format!("{base_url}/tasks");
        let target = HttpTarget::new(&url, &format!("url {url:?}"))?;
        let project = spec.project.clone().filter(|p| !p.trim().is_empty());
        let workspace = spec.workspace.clone().filter(|w| !w.trim().is_empty());
        if project.is_none() && workspace.is_none() {
            return Err(ChannelError::NoProjectOrWorkspace);
        }
        Ok(Asana {
            token,
            project,
            workspace,
            base_url,
            target,
        })
    }

    pub(super) async fn send(
        &self,
        group: &[Notification],
        deadline: Instant,
    ) -> Result<(), SendError> {
        let body = document(group, self.project.as_deref(), self.workspace.as_deref());
        let headers = vec![
            ("accept".to_string(), "application/json".to_string()),
            (
                "authorization".to_string(),
                format!("Bearer {}", self.token),
            ),
        ];
        let secrets = [self.token.as_str()];
        let resp = self
            .target
            .post_json(headers, body.to_string(), deadline, &secrets)
            .await?;
        check_status(&resp, &secrets)?;
        match resp.status {
            200 | 201 => Ok(()),
            other => Err(SendError::Permanent(format!(
                "HTTP {other} instead of 201 Created"
            ))),
        }
    }
}

/// The request body: `{"data": {"name", "notes", "projects"?, "workspace"?}}`.
pub(super) fn document(
    group: &[Notification],
    project: Option<&str>,
    workspace: Option<&str>,
) -> Value {
    let mut data = Map::new();
    data.insert("name".into(), Value::from(name(group)));
    data.insert("notes".into(), Value::from(notes(group)));
    if let Some(p) = project {
        data.insert("projects".into(), json!([p]));
    }
    if let Some(w) = workspace {
        data.insert("workspace".into(), Value::from(w));
    }
    json!({ "data": data })
}

/// `[FIRING] disk-full on web-1: summary` for one notification; the group subject
/// (`[FIRING] 3 alerts on web-1`) for several.
pub(super) fn name(group: &[Notification]) -> String {
    let line = match group {
        [one] if !one.alert.summary.trim().is_empty() => {
            format!("{}: {}", payload::headline(one), one.alert.summary.trim())
        }
        _ => payload::subject(group),
    };
    let line: String = line
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    crate::model::text::shorten(&line, MAX_NAME_CHARS)
}

/// Plain text, one block per notification.
pub(super) fn notes(group: &[Notification]) -> String {
    let blocks: Vec<String> = group
        .iter()
        .map(|n| {
            let a = &n.alert;
            let mut b = payload::headline(n);
            b.push_str(&format!("\nseverity: {}", a.severity.as_str()));
            b.push_str(&format!("\nvalue: {}", a.value));
            if !a.summary.is_empty() {
                b.push_str(&format!("\nsummary: {}", a.summary));
            }
            if !a.description.is_empty() {
                b.push_str(&format!("\ndescription: {}", a.description));
            }
            if !a.labels.is_empty() {
                b.push_str(&format!("\nlabels: {}", payload::labels_line(&a.labels)));
            }
            let since = if a.active_since_ms > 0 {
                a.active_since_ms
            } else {
                a.since_ms
            };
            b.push_str(&format!("\nactive since: {}", payload::rfc3339_ms(since)));
            b.push_str(&format!("\nat: {}", payload::rfc3339_ms(n.ts_ms)));
            if let Some(who) = &a.acked_by {
                b.push_str(&format!("\nacknowledged by: {who}"));
            }
            b.push_str(&format!("\nalert id: {}", a.id));
            b.push_str(&format!("\nidempotency key: {}", n.idempotency_key));
            b
        })
        .collect();
    crate::model::text::shorten(&blocks.join("\n\n"), MAX_NOTES_CHARS)
}

impl fmt::Debug for Asana {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Asana")
            .field("base_url", &self.base_url)
            .field("project", &self.project)
            .field("workspace", &self.workspace)
            .field("token", &"<secret>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant as StdInstant};

    use super::super::testkit::{closed_port, notification, stalled, HttpReceiver};
    use super::super::Channel;
    use super::*;
    use crate::config::channels::{ChannelSpec, Secret};
    use crate::model::NotifyKind;

    const TOKEN: &str = "2/1200/1300:as4n4-t0k3n";

    fn spec(
        base_url: Option<&str>,
        project: Option<&str>,
        workspace: Option<&str>,
        dir: &tempfile::TempDir,
    ) -> ChannelSpec {
        let path = dir.path().join("asana-token");
        std::fs::write(&path, format!("{TOKEN}\n")).unwrap();
        ChannelSpec::Asana(AsanaChannel {
            name: "asana".into(),
            token: Secret {
                env: None,
                file: Some(path.display().to_string()),
            },
            project: project.map(str::to_string),
            workspace: workspace.map(str::to_string),
            base_url: base_url.map(str::to_string),
            timeout: None,
            max_attempts: None,
            backoff: None,
            backoff_max: None,
            fallback: vec![],
            rate_limit_per_min: None,
            group_window: None,
            max_age: None,
        })
    }

    const CREATED: &str = r#"{"data":{"gid":"1204","resource_type":"task","name":"x"}}"#;

    #[tokio::test]
    async fn asana_creates_a_task_in_the_project() {
        let mut rx = HttpReceiver::start(201, CREATED).await;
        let dir = tempfile::tempdir().unwrap();
        let base = format!("{}/api/1.0/", rx.base_url);
        let ch = Channel::build(&spec(Some(&base), Some("1201"), Some("1100"), &dir)).unwrap();
        assert_eq!(ch.kind(), "asana");
        let n = notification("disk-full", "web-1", NotifyKind::Firing, 1);
        ch.send(std::slice::from_ref(&n), Duration::from_secs(5))
            .await
            .unwrap();
        let req = rx.next().await;
        assert_eq!(req.method, "POST");
        assert_eq!(req.path, "/api/1.0/tasks");
        assert_eq!(
            req.header("authorization"),
            Some(format!("Bearer {TOKEN}").as_str())
        );
        assert_eq!(req.header("content-type"), Some("application/json"));
        assert_eq!(req.header("accept"), Some("application/json"));
        let doc = req.json();
        let data = doc["data"].as_object().unwrap();
        let mut keys: Vec<&str> = data.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["name", "notes", "projects", "workspace"]);
        assert_eq!(
            data["name"],
            "[FIRING] disk-full on web-1: disk-full on web-1"
        );
        assert_eq!(data["projects"], json!(["1201"]));
        assert_eq!(data["workspace"], "1100");
        let notes = data["notes"].as_str().unwrap();
        assert!(
            notes.starts_with("[FIRING] disk-full on web-1\n"),
            "{notes}"
        );
        for part in [
            "severity: critical",
            "value: 93.5",
            "description: Disk / is <93%> full & growing",
            "labels: mount=/, team=ops",
            "active since: 2023-11-14T22:13:20.000Z",
            &format!("alert id: {}", n.alert.id),
            &format!("idempotency key: {}", n.idempotency_key),
        ] {
            assert!(notes.contains(part), "{part:?} missing in {notes}");
        }
    }

    #[tokio::test]
    async fn asana_group_and_optional_fields() {
        let mut rx = HttpReceiver::start(200, CREATED).await;
        let dir = tempfile::tempdir().unwrap();
        // Workspace only: no "projects" key at all.
        let ch = Channel::build(&spec(Some(&rx.base_url), None, Some("1100"), &dir)).unwrap();
        let a = notification("disk-full", "web-1", NotifyKind::Firing, 1);
        let b = notification("inode-full", "web-1", NotifyKind::Resolved, 2);
        ch.send(&[a.clone(), b.clone()], Duration::from_secs(5))
            .await
            .unwrap();
        let req = rx.next().await;
        assert_eq!(req.path, "/tasks");
        let data = req.json()["data"].clone();
        assert!(data.get("projects").is_none(), "{data}");
        assert_eq!(data["workspace"], "1100");
        assert_eq!(data["name"], "[FIRING 1, RESOLVED 1] 2 alerts on web-1");
        let notes = data["notes"].as_str().unwrap();
        let blocks: Vec<&str> = notes.split("\n\n").collect();
        assert_eq!(blocks.len(), 2, "{notes}");
        assert!(blocks[0].contains(&a.idempotency_key));
        assert!(blocks[1].starts_with("[RESOLVED] inode-full on web-1"));
        assert!(blocks[1].contains(&b.idempotency_key));

        // Project only: no "workspace" key.
        let ch = Channel::build(&spec(Some(&rx.base_url), Some("1201"), None, &dir)).unwrap();
        ch.send(&[a], Duration::from_secs(5)).await.unwrap();
        let data = rx.next().await.json()["data"].clone();
        assert!(data.get("workspace").is_none(), "{data}");
        assert_eq!(data["projects"], json!(["1201"]));
    }

    #[tokio::test]
    async fn asana_errors_are_classified_and_never_show_the_token() {
        let mut rx = HttpReceiver::start(
            429,
            r#"{"errors":[{"message":"You have made too many requests recently."}]}"#,
        )
        .await;
        let dir = tempfile::tempdir().unwrap();
        let ch = Channel::build(&spec(Some(&rx.base_url), Some("1201"), None, &dir)).unwrap();
        for shown in [format!("{ch:?}"), format!("{ch:#?}"), ch.to_string()] {
            assert!(!shown.contains("t0k3n"), "{shown}");
        }
        let n = [notification("disk-full", "web-1", NotifyKind::Firing, 1)];
        let e = ch.send(&n, Duration::from_secs(5)).await.unwrap_err();
        assert!(e.is_retryable(), "{e}");
        assert!(e.to_string().contains("too many requests"), "{e}");
        rx.next().await;

        for (status, retryable) in [
            (500, true),
            (503, true),
            (408, true),
            (400, false),
            (403, false),
            (404, false),
        ] {
            rx.answer(status, &format!("no: Bearer {TOKEN}"));
            let e = ch.send(&n, Duration::from_secs(5)).await.unwrap_err();
            assert_eq!(e.is_retryable(), retryable, "{status}: {e}");
            assert!(!e.to_string().contains("t0k3n"), "{e}");
            assert!(e.to_string().contains(&format!("HTTP {status}")), "{e}");
        }
        rx.answer(204, "");
        let e = ch.send(&n, Duration::from_secs(5)).await.unwrap_err();
        assert!(!e.is_retryable(), "{e}");
        rx.answer(201, CREATED);
        ch.send(&n, Duration::from_secs(5)).await.unwrap();

        let down = format!("http://127.0.0.1:{}", closed_port());
        let ch = Channel::build(&spec(Some(&down), Some("1201"), None, &dir)).unwrap();
        let e = ch.send(&n, Duration::from_secs(5)).await.unwrap_err();
        assert!(e.is_retryable(), "{e}");
        assert!(!e.to_string().contains("t0k3n"), "{e}");

        let st = stalled().await;
        let url = format!("http://127.0.0.1:{}", st.port);
        let ch = Channel::build(&spec(Some(&url), Some("1201"), None, &dir)).unwrap();
        let started = StdInstant::now();
        let e = ch.send(&n, Duration::from_millis(400)).await.unwrap_err();
        assert!(e.is_retryable(), "{e}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn asana_build_checks() {
        let dir = tempfile::tempdir().unwrap();
        let ch = Channel::build(&spec(None, Some("1201"), None, &dir)).unwrap();
        let shown = format!("{ch:?}");
        assert!(shown.contains("https://app.asana.com/api/1.0"), "{shown}");
        assert!(!shown.contains("t0k3n"), "{shown}");

        let e = Channel::build(&spec(None, None, None, &dir))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("channel asana: "), "{e}");
        assert!(e.contains("project"), "{e}");
        let e = Channel::build(&spec(Some("ftp://x"), Some("1"), None, &dir))
            .unwrap_err()
            .to_string();
        assert!(e.contains("base_url"), "{e}");

        let path = dir.path().join("bad-token");
        std::fs::write(&path, "abc\u{7f}def").unwrap();
        let mut s = spec(None, Some("1"), None, &dir);
        if let ChannelSpec::Asana(a) = &mut s {
            a.token.file = Some(path.display().to_string());
        }
        let e = Channel::build(&s).unwrap_err().to_string();
        assert!(e.contains("token"), "{e}");
        assert!(!e.contains("abc"), "{e}");
    }

    #[test]
    fn asana_name_is_one_line_and_bounded() {
        let mut n = notification("disk-full", "web-1", NotifyKind::Flapping, 1);
        n.alert.summary = format!("line one\nline two {}", "x".repeat(2000));
        let name = name(std::slice::from_ref(&n));
        assert!(name.starts_with("[FLAPPING] disk-full on web-1: line one line two"));
        assert!(!name.contains('\n'));
        assert_eq!(name.chars().count(), MAX_NAME_CHARS);
        n.alert.summary.clear();
        assert_eq!(name_of(&n), "[FLAPPING] disk-full on web-1");
    }

    fn name_of(n: &Notification) -> String {
        name(std::slice::from_ref(n))
    }
}
