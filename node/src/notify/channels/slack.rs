//! Slack incoming webhook: `{"text": ...}` in mrkdwn, one line per alert. The URL
//! is the secret: errors and `Debug` show only its host.
use std::fmt;

use tokio::time::Instant;

use super::{check_status, payload, read_secret, ChannelError, HttpTarget, SendError};
use crate::config::channels::SlackChannel;
use crate::model::Notification;

/// Slack cuts messages longer than this (it accepts 40,000 characters).
const MAX_TEXT_CHARS: usize = 39_000;

pub(super) struct Slack {
    url: String,
    target: HttpTarget,
}

impl Slack {
    pub(super) fn build(spec: &SlackChannel) -> Result<Slack, ChannelError> {
        let url = read_secret(&spec.url, "url")?;
        let target = HttpTarget::new(&url, "url (from the secret)")?;
        Ok(Slack { url, target })
    }

    pub(super) async fn send(
        &self,
        group: &[Notification],
        deadline: Instant,
    ) -> Result<(), SendError> {
        let body = serde_json::json!({ "text": text(group) }).to_string();
        let path = self
            .target
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("");
        let secrets = [self.url.as_str(), path];
        let resp = self
            .target
            .post_json(Vec::new(), body, deadline, &secrets)
            .await?;
        check_status(&resp, &secrets)
    }
}

/// `*[FIRING]* disk-full on web-1: summary`, one line per alert.
pub(super) fn text(group: &[Notification]) -> String {
    let lines: Vec<String> = group
        .iter()
        .map(|n| {
            let a = &n.alert;
            let mut line = format!(
                "*[{}]* {} on {}",
                payload::kind_tag(n.kind),
                escape(&a.rule),
                escape(&a.target)
            );
            if !a.summary.is_empty() {
                line.push_str(": ");
                line.push_str(&escape(&a.summary));
            }
            line
        })
        .collect();
    crate::model::text::shorten(&lines.join("\n"), MAX_TEXT_CHARS)
}

/// Slack's mrkdwn needs only these three escaped.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

impl fmt::Debug for Slack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slack")
            .field("host", &self.target.uri.host().unwrap_or(""))
            .field("url", &"<secret>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::testkit::{notification, HttpReceiver};
    use super::super::Channel;
    use super::*;
    use crate::config::channels::ChannelSpec;
    use crate::config::channels::Secret;
    use crate::model::NotifyKind;

    fn channel(url: &str, dir: &tempfile::TempDir) -> Channel {
        let path = dir.path().join("slack-url");
        std::fs::write(&path, format!("{url}\n")).unwrap();
        Channel::build(&ChannelSpec::Slack(SlackChannel {
            name: "slack".into(),
            url: Secret {
                env: None,
                file: Some(path.display().to_string()),
            },
            timeout: None,
            max_attempts: None,
            backoff: None,
            backoff_max: None,
            fallback: vec![],
            rate_limit_per_min: None,
            group_window: None,
            max_age: None,
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn slack_posts_text_lines() {
        let mut rx = HttpReceiver::start(200, "ok").await;
        let dir = tempfile::tempdir().unwrap();
        let ch = channel(
            &format!("{}/services/T01/B02/s3cr3tpart", rx.base_url),
            &dir,
        );
        let shown = format!("{ch:?}");
        assert!(
            !shown.contains("s3cr3tpart") && !shown.contains("/services"),
            "{shown}"
        );
        let a = notification("disk-full", "web-1", NotifyKind::Firing, 1);
        let mut b = notification("load<high>", "web-1", NotifyKind::Resolved, 2);
        b.alert.summary = "load & more".into();
        ch.send(&[a, b], Duration::from_secs(5)).await.unwrap();
        let req = rx.next().await;
        assert_eq!(req.method, "POST");
        assert_eq!(req.path, "/services/T01/B02/s3cr3tpart");
        assert_eq!(req.header("content-type"), Some("application/json"));
        let doc = req.json();
        assert_eq!(
            doc["text"],
            "*[FIRING]* disk-full on web-1: disk-full on web-1\n\
             *[RESOLVED]* load&lt;high&gt; on web-1: load &amp; more"
        );
        assert_eq!(doc.as_object().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn slack_errors_are_classified_and_redacted() {
        let mut rx = HttpReceiver::start(500, "").await;
        let dir = tempfile::tempdir().unwrap();
        let ch = channel(
            &format!("{}/services/T01/B02/s3cr3tpart", rx.base_url),
            &dir,
        );
        let n = [notification("disk-full", "web-1", NotifyKind::Firing, 1)];
        assert!(ch
            .send(&n, Duration::from_secs(5))
            .await
            .unwrap_err()
            .is_retryable());
        rx.next().await;
        rx.answer(403, "invalid_token /services/T01/B02/s3cr3tpart");
        let e = ch.send(&n, Duration::from_secs(5)).await.unwrap_err();
        assert!(!e.is_retryable());
        assert!(!e.to_string().contains("s3cr3tpart"), "{e}");
        assert!(e.to_string().contains("invalid_token"), "{e}");
        rx.answer(429, "rate_limited");
        assert!(ch
            .send(&n, Duration::from_secs(5))
            .await
            .unwrap_err()
            .is_retryable());
    }

    #[test]
    fn slack_bad_url_secret_is_not_shown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("slack-url");
        std::fs::write(&path, "ftp://hooks/s3cr3tpart").unwrap();
        let e = Channel::build(&ChannelSpec::Slack(SlackChannel {
            name: "slack".into(),
            url: Secret {
                env: None,
                file: Some(path.display().to_string()),
            },
            timeout: None,
            max_attempts: None,
            backoff: None,
            backoff_max: None,
            fallback: vec![],
            rate_limit_per_min: None,
            group_window: None,
            max_age: None,
        }))
        .unwrap_err()
        .to_string();
        assert!(!e.contains("s3cr3tpart"), "{e}");
        assert!(e.starts_with("channel slack: url"), "{e}");
    }
}
