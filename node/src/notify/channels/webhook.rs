//! Generic webhook: POST of Herd's JSON document, or of Alertmanager's webhook
//! payload (version 4) for receivers written for Alertmanager.
use std::fmt;

use tokio::time::Instant;

use super::{check_status, header_safe, payload, read_secret, ChannelError, HttpTarget, SendError};
use crate::config::channels::{Secret, WebhookChannel, WebhookFormat};
use crate::model::Notification;

pub(super) struct Webhook {
    target: HttpTarget,
    format: WebhookFormat,
    headers: Vec<(String, String)>,
    token: Option<String>,
}

impl Webhook {
    pub(super) fn build(spec: &WebhookChannel) -> Result<Webhook, ChannelError> {
        let target = HttpTarget::new(&spec.url, &format!("url {:?}", spec.url))?;
        let (headers, token) = headers_and_token(&spec.headers, &spec.token)?;
        Ok(Webhook {
            target,
            format: spec.format,
            headers,
            token,
        })
    }

    pub(super) async fn send(
        &self,
        channel: &str,
        group: &[Notification],
        deadline: Instant,
    ) -> Result<(), SendError> {
        let doc = match self.format {
            WebhookFormat::Json => payload::herd_document(group),
            WebhookFormat::Alertmanager => payload::alertmanager_document(channel, group),
        };
        let mut headers = vec![(
            "idempotency-key".to_string(),
            header_safe(&payload::joined_keys(group)),
        )];
        if let Some(t) = &self.token {
            headers.push(("authorization".to_string(), format!("Bearer {t}")));
        }
        headers.extend(self.headers.iter().cloned());
        let secrets: Vec<&str> = self.token.as_deref().into_iter().collect();
        let resp = self
            .target
            .post_json(headers, doc.to_string(), deadline, &secrets)
            .await?;
        check_status(&resp, &secrets)
    }
}

/// Header names and values.
pub(super) type Headers = Vec<(String, String)>;

/// Extra headers (checked) and the bearer token (read, checked) of an HTTP channel.
pub(super) fn headers_and_token(
    spec_headers: &std::collections::BTreeMap<String, String>,
    spec_token: &Option<Secret>,
) -> Result<(Headers, Option<String>), ChannelError> {
    let headers = crate::transport::http::checked_headers(spec_headers)?;
    let token = match spec_token {
        Some(s) => {
            let t = read_secret(s, "token")?;
            ::http::HeaderValue::from_str(&format!("Bearer {t}"))
                .map_err(|_| ChannelError::TokenNotHeaderSafe)?;
            Some(t)
        }
        None => None,
    };
    Ok((headers, token))
}

impl fmt::Debug for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &self.target.origin())
            .field("format", &self.format)
            .field(
                "headers",
                &self.headers.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("token", &self.token.as_ref().map(|_| "<secret>"))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::{Duration, Instant as StdInstant};

    use super::super::testkit::{closed_port, notification, stalled, HttpReceiver};
    use super::super::Channel;
    use super::*;
    use crate::config::channels::ChannelSpec;
    use crate::config::channels::{Secret, WebhookChannel};
    use crate::model::NotifyKind;

    fn spec(url: &str, format: WebhookFormat, token_file: Option<&str>) -> ChannelSpec {
        let mut headers = BTreeMap::new();
        headers.insert("X-Team".to_string(), "ops".to_string());
        ChannelSpec::Webhook(WebhookChannel {
            name: "hook".into(),
            url: url.into(),
            format,
            headers,
            token: token_file.map(|f| Secret {
                env: None,
                file: Some(f.into()),
            }),
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

    #[tokio::test]
    async fn webhook_json_posts_the_document_with_headers() {
        let mut rx = HttpReceiver::start(200, "thanks").await;
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "w3bh00k-t0ken\n").unwrap();
        let url = format!("{}/hooks/herd?x=1", rx.base_url);
        let ch = Channel::build(&spec(
            &url,
            WebhookFormat::Json,
            Some(token.to_str().unwrap()),
        ))
        .unwrap();
        assert!(!format!("{ch:?}").contains("w3bh00k"));
        let a = notification("disk-full", "web-1", NotifyKind::Firing, 1);
        let b = notification("inode-full", "web-1", NotifyKind::Firing, 2);
        ch.send(&[a.clone(), b.clone()], Duration::from_secs(5))
            .await
            .unwrap();
        let req = rx.next().await;
        assert_eq!(req.method, "POST");
        assert_eq!(req.path, "/hooks/herd?x=1");
        assert_eq!(req.header("content-type"), Some("application/json"));
        assert_eq!(req.header("authorization"), Some("Bearer w3bh00k-t0ken"));
        assert_eq!(req.header("x-team"), Some("ops"));
        let keys = format!("{},{}", a.idempotency_key, b.idempotency_key);
        assert_eq!(req.header("idempotency-key"), Some(keys.as_str()));
        let doc = req.json();
        assert_eq!(doc["version"], "1");
        assert_eq!(doc["idempotency_key"], keys.as_str());
        let ns = doc["notifications"].as_array().unwrap();
        assert_eq!(ns.len(), 2);
        assert_eq!(ns[0]["idempotency_key"], a.idempotency_key.as_str());
        assert_eq!(ns[0]["kind"], "firing");
        assert_eq!(ns[0]["channel"], "test");
        assert_eq!(ns[0]["ts_ms"], a.ts_ms);
        let alert = &ns[0]["alert"];
        for field in [
            "id",
            "rule",
            "target",
            "labels",
            "severity",
            "state",
            "since_ms",
            "active_since_ms",
            "value",
            "summary",
            "description",
            "transitions",
            "acked_by",
            "flapping",
        ] {
            assert!(alert.get(field).is_some(), "alert.{field} missing");
        }
        assert_eq!(alert["rule"], "disk-full");
        assert_eq!(alert["severity"], "critical");
        assert_eq!(alert["labels"]["mount"], "/");
        assert_eq!(ns[1]["alert"]["rule"], "inode-full");
    }

    #[tokio::test]
    async fn webhook_alertmanager_posts_version_4() {
        let mut rx = HttpReceiver::start(200, "").await;
        let ch = Channel::build(&spec(
            &format!("{}/am", rx.base_url),
            WebhookFormat::Alertmanager,
            None,
        ))
        .unwrap();
        let f = notification("disk-full", "web-1", NotifyKind::Firing, 1);
        ch.send(std::slice::from_ref(&f), Duration::from_secs(5))
            .await
            .unwrap();
        let req = rx.next().await;
        assert_eq!(req.method, "POST");
        assert_eq!(req.path, "/am");
        assert_eq!(req.header("authorization"), None);
        assert_eq!(
            req.header("idempotency-key"),
            Some(f.idempotency_key.as_str())
        );
        let doc = req.json();
        assert_eq!(doc["version"], "4");
        assert_eq!(doc["receiver"], "hook");
        assert_eq!(doc["status"], "firing");
        assert_eq!(doc["truncatedAlerts"], 0);
        assert!(doc["groupKey"].is_string());
        assert_eq!(doc["groupLabels"]["alertname"], "disk-full");
        assert_eq!(doc["commonLabels"]["target"], "web-1");
        assert_eq!(doc["commonAnnotations"]["summary"], "disk-full on web-1");
        assert_eq!(doc["externalURL"], "");
        let a = &doc["alerts"][0];
        assert_eq!(a["status"], "firing");
        assert_eq!(a["labels"]["alertname"], "disk-full");
        assert_eq!(a["labels"]["severity"], "critical");
        assert_eq!(a["labels"]["team"], "ops");
        assert_eq!(a["annotations"]["summary"], "disk-full on web-1");
        assert_eq!(a["startsAt"], "2023-11-14T22:13:20.000Z");
        assert_eq!(a["endsAt"], "0001-01-01T00:00:00Z");
        assert_eq!(a["fingerprint"], f.alert.id.as_str());

        let r = notification("disk-full", "web-1", NotifyKind::Resolved, 2);
        ch.send(&[r], Duration::from_secs(5)).await.unwrap();
        let doc = rx.next().await.json();
        assert_eq!(doc["status"], "resolved");
        assert_eq!(doc["alerts"][0]["status"], "resolved");
        assert_ne!(doc["alerts"][0]["endsAt"], "0001-01-01T00:00:00Z");
    }

    #[tokio::test]
    async fn webhook_status_codes_are_classified() {
        let mut rx = HttpReceiver::start(500, "oops").await;
        let ch = Channel::build(&spec(&rx.base_url, WebhookFormat::Json, None)).unwrap();
        let n = [notification("disk-full", "web-1", NotifyKind::Firing, 1)];
        let e = ch.send(&n, Duration::from_secs(5)).await.unwrap_err();
        assert_eq!(e, SendError::Retryable("HTTP 500: oops".into()));
        rx.next().await;
        rx.answer(400, "bad payload");
        let e = ch.send(&n, Duration::from_secs(5)).await.unwrap_err();
        assert_eq!(e, SendError::Permanent("HTTP 400: bad payload".into()));
        rx.answer(429, "slow down");
        let e = ch.send(&n, Duration::from_secs(5)).await.unwrap_err();
        assert!(e.is_retryable(), "{e}");
        rx.answer(408, "");
        assert!(ch
            .send(&n, Duration::from_secs(5))
            .await
            .unwrap_err()
            .is_retryable());
        rx.answer(404, "");
        assert!(!ch
            .send(&n, Duration::from_secs(5))
            .await
            .unwrap_err()
            .is_retryable());
        rx.answer(202, "");
        ch.send(&n, Duration::from_secs(5)).await.unwrap();
    }

    #[tokio::test]
    async fn webhook_down_or_stalled_is_retryable_within_the_timeout() {
        let n = [notification("disk-full", "web-1", NotifyKind::Firing, 1)];
        let url = format!("http://127.0.0.1:{}/", closed_port());
        let ch = Channel::build(&spec(&url, WebhookFormat::Json, None)).unwrap();
        let e = ch.send(&n, Duration::from_secs(5)).await.unwrap_err();
        assert!(e.is_retryable(), "{e}");

        let st = stalled().await;
        let url = format!("http://127.0.0.1:{}/", st.port);
        let ch = Channel::build(&spec(&url, WebhookFormat::Json, None)).unwrap();
        let started = StdInstant::now();
        let e = ch.send(&n, Duration::from_millis(400)).await.unwrap_err();
        assert!(e.is_retryable(), "{e}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn webhook_bad_header_is_refused() {
        let mut s = spec("http://127.0.0.1:9/", WebhookFormat::Json, None);
        if let ChannelSpec::Webhook(w) = &mut s {
            w.headers.insert("bad header".into(), "x".into());
        }
        let e = Channel::build(&s).unwrap_err().to_string();
        assert!(e.contains("bad header"), "{e}");
    }
}
