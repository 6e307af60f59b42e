//! Telegram bot API `sendMessage`, plain text. The token is part of the URL path:
//! errors and `Debug` never show it.
use std::fmt;

use tokio::time::Instant;

use super::{
    body_snippet, check_status, payload, read_secret, redact, ChannelError, HttpTarget, SendError,
};
use crate::config::channels::TelegramChannel;
use crate::model::Notification;
use crate::transport::http::parse_url;

const DEFAULT_BASE_URL: &str = "https://api.telegram.org";
/// Telegram refuses longer messages.
const MAX_TEXT_CHARS: usize = 4096;

pub(super) struct Telegram {
    token: String,
    chat_id: serde_json::Value,
    base_url: String,
    target: HttpTarget,
}

impl Telegram {
    pub(super) fn build(spec: &TelegramChannel) -> Result<Telegram, ChannelError> {
        let token = read_secret(&spec.token, "token")?;
        let base_url = spec
            .base_url
            .as_deref()
            .unwrap_or(DEFAULT_BASE_URL)
            .trim_end_matches('/')
            .to_string();
        parse_url(&base_url).map_err(|_| ChannelError::BadBaseUrl {
            base_url: base_url.clone(),
        })?;
        let url = format!("{base_url}/bot{token}/sendMessage");
        parse_url(&url).map_err(|_| ChannelError::TokenNotUrlSafe)?;
        let target = HttpTarget::new(&url, "the sendMessage URL")?;
        // A numeric id goes as a number, a "@channel" name as a string.
        let chat_id = match spec.chat_id.trim().parse::<i64>() {
            Ok(n) => serde_json::Value::from(n),
            Err(_) => serde_json::Value::from(spec.chat_id.trim()),
        };
        Ok(Telegram {
            token,
            chat_id,
            base_url,
            target,
        })
    }

    pub(super) async fn send(
        &self,
        group: &[Notification],
        deadline: Instant,
    ) -> Result<(), SendError> {
        let body = serde_json::json!({
            "chat_id": self.chat_id,
            "text": text(group),
            "disable_web_page_preview": true,
        })
        .to_string();
        let secrets = [self.token.as_str()];
        let resp = self
            .target
            .post_json(Vec::new(), body, deadline, &secrets)
            .await?;
        check_status(&resp, &secrets)?;
        if resp.status != 200 {
            return Err(SendError::Permanent(format!(
                "HTTP {} instead of 200",
                resp.status
            )));
        }
        let ok = serde_json::from_slice::<serde_json::Value>(&resp.body)
            .ok()
            .and_then(|v| v.get("ok").and_then(|o| o.as_bool()));
        if ok == Some(true) {
            Ok(())
        } else {
            Err(SendError::Retryable(format!(
                "answer without \"ok\": true: {}",
                redact(&body_snippet(&resp.body), &secrets)
            )))
        }
    }
}

/// Plain text: per alert a headline, severity and value, the summary.
pub(super) fn text(group: &[Notification]) -> String {
    let blocks: Vec<String> = group
        .iter()
        .map(|n| {
            let a = &n.alert;
            let mut b = payload::headline(n);
            b.push_str(&format!("\n{} · value {}", a.severity.as_str(), a.value));
            if !a.summary.is_empty() {
                b.push('\n');
                b.push_str(&a.summary);
            }
            b
        })
        .collect();
    crate::model::text::shorten(&blocks.join("\n\n"), MAX_TEXT_CHARS)
}

impl fmt::Debug for Telegram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Telegram")
            .field("base_url", &self.base_url)
            .field("chat_id", &self.chat_id)
            .field("token", &"<secret>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::testkit::{closed_port, notification, HttpReceiver};
    use super::super::Channel;
    use super::*;
    use crate::config::channels::ChannelSpec;
    use crate::config::channels::Secret;
    use crate::model::NotifyKind;

    const TOKEN: &str = "123456:AAH-t0k3n_s3cr3t";

    fn channel(base_url: &str, chat_id: &str, dir: &tempfile::TempDir) -> Channel {
        let path = dir.path().join("tg-token");
        std::fs::write(&path, TOKEN).unwrap();
        Channel::build(&ChannelSpec::Telegram(TelegramChannel {
            name: "tg".into(),
            token: Secret {
                env: None,
                file: Some(path.display().to_string()),
            },
            chat_id: chat_id.into(),
            base_url: Some(format!("{base_url}/")),
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
    async fn telegram_posts_send_message() {
        let mut rx = HttpReceiver::start(200, r#"{"ok":true,"result":{"message_id":7}}"#).await;
        let dir = tempfile::tempdir().unwrap();
        let ch = channel(&rx.base_url, "-100200300", &dir);
        assert!(!format!("{ch:?}").contains("t0k3n"));
        let n = notification("disk-full", "web-1", NotifyKind::Firing, 1);
        ch.send(&[n], Duration::from_secs(5)).await.unwrap();
        let req = rx.next().await;
        assert_eq!(req.method, "POST");
        assert_eq!(req.path, format!("/bot{TOKEN}/sendMessage"));
        assert_eq!(req.header("content-type"), Some("application/json"));
        let doc = req.json();
        assert_eq!(doc["chat_id"], -100200300);
        assert_eq!(doc["disable_web_page_preview"], true);
        assert_eq!(
            doc["text"],
            "[FIRING] disk-full on web-1\ncritical · value 93.5\ndisk-full on web-1"
        );

        let ch = channel(&rx.base_url, "@ops_alerts", &dir);
        let r = notification("disk-full", "web-1", NotifyKind::Resolved, 2);
        ch.send(&[r], Duration::from_secs(5)).await.unwrap();
        let doc = rx.next().await.json();
        assert_eq!(doc["chat_id"], "@ops_alerts");
        assert!(doc["text"].as_str().unwrap().starts_with("[RESOLVED] "));
    }

    #[tokio::test]
    async fn telegram_errors_are_classified_and_never_show_the_token() {
        let mut rx = HttpReceiver::start(
            429,
            r#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 3"}"#,
        )
        .await;
        let dir = tempfile::tempdir().unwrap();
        let ch = channel(&rx.base_url, "42", &dir);
        let n = [notification("disk-full", "web-1", NotifyKind::Firing, 1)];
        let e = ch.send(&n, Duration::from_secs(5)).await.unwrap_err();
        assert!(e.is_retryable(), "{e}");
        assert!(e.to_string().contains("retry after 3"), "{e}");
        rx.next().await;

        rx.answer(
            400,
            r#"{"ok":false,"error_code":400,"description":"Bad Request: chat not found"}"#,
        );
        let e = ch.send(&n, Duration::from_secs(5)).await.unwrap_err();
        assert!(!e.is_retryable(), "{e}");
        assert!(e.to_string().contains("chat not found"), "{e}");

        rx.answer(502, "bad gateway");
        assert!(ch
            .send(&n, Duration::from_secs(5))
            .await
            .unwrap_err()
            .is_retryable());

        rx.answer(200, r#"{"ok":false}"#);
        assert!(ch
            .send(&n, Duration::from_secs(5))
            .await
            .unwrap_err()
            .is_retryable());

        rx.answer(401, &format!("unauthorized bot{TOKEN}"));
        let e = ch.send(&n, Duration::from_secs(5)).await.unwrap_err();
        assert!(!e.to_string().contains("t0k3n"), "{e}");

        let ch = channel(&format!("http://127.0.0.1:{}", closed_port()), "42", &dir);
        let e = ch.send(&n, Duration::from_secs(5)).await.unwrap_err();
        assert!(e.is_retryable(), "{e}");
        assert!(!e.to_string().contains("t0k3n"), "{e}");
    }
}
