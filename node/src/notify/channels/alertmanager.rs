//! Alertmanager as a receiver: alerts posted to `/api/v2/alerts` of each configured
//! Alertmanager, as a Prometheus server does. A FIRING (or FLAPPING) is posted with
//! an end 4 × `resend` ahead; the owner of the target posts its firing alerts again
//! every `resend` (see `Notifier::keep_alive`), so Alertmanager keeps them active for
//! as long as they fire and lets them lapse if the herd falls silent; a RESOLVED is
//! posted with the time it resolved as the end.
//!
//! Several URLs are an HA pair (or more): every one is posted to, at once; the
//! message is delivered when at least one took it (the pair gossips), and a failure
//! of the others is logged.
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use super::{check_status, payload, ChannelError, HttpTarget, SendError};
use crate::config::channels::AlertmanagerChannel;
use crate::model::now_ms;
use crate::model::Notification;

/// An alert posted is active for this many `resend` intervals unless posted again.
const HOLD_RESENDS: u32 = 4;

/// The node's own HTTP face (`http://host:port`), the default base of each alert's
/// `generatorURL`; set once the face listens.
static NODE_URL: RwLock<Option<String>> = RwLock::new(None);

/// Records the node's HTTP face as the default `generatorURL` base.
pub fn set_node_url(url: &str) {
    if let Ok(mut u) = NODE_URL.write() {
        *u = Some(url.trim_end_matches('/').to_string());
    }
}

pub(super) struct Alertmanager {
    targets: Vec<Arc<HttpTarget>>,
    headers: Vec<(String, String)>,
    token: Option<String>,
    resend: Duration,
    external_url: Option<String>,
}

impl Alertmanager {
    pub(super) fn build(spec: &AlertmanagerChannel) -> Result<Alertmanager, ChannelError> {
        let mut targets = Vec::new();
        for url in &spec.urls {
            let api = format!("{}/api/v2/alerts", url.trim_end_matches('/'));
            targets.push(Arc::new(HttpTarget::new(&api, &format!("url {url:?}"))?));
        }
        let (headers, token) = super::webhook::headers_and_token(&spec.headers, &spec.token)?;
        Ok(Alertmanager {
            targets,
            headers,
            token,
            resend: spec.resend(),
            external_url: spec.external_url.clone(),
        })
    }

    /// How often the owner posts a firing alert again.
    pub(super) fn resend(&self) -> Duration {
        self.resend
    }

    pub(super) async fn send(
        &self,
        group: &[Notification],
        deadline: Instant,
    ) -> Result<(), SendError> {
        let generator = match &self.external_url {
            Some(u) => u.clone(),
            None => NODE_URL
                .read()
                .ok()
                .and_then(|u| u.clone())
                .unwrap_or_default(),
        };
        let hold_ms = (self.resend * HOLD_RESENDS).as_millis() as i64;
        let body = payload::alertmanager_api_alerts(group, now_ms(), hold_ms, &generator);
        let body = body.to_string();
        let mut headers = Vec::new();
        if let Some(t) = &self.token {
            headers.push(("authorization".to_string(), format!("Bearer {t}")));
        }
        headers.extend(self.headers.iter().cloned());
        // Posted to every Alertmanager at once: one that is down costs the others
        // nothing.
        let mut posts = tokio::task::JoinSet::new();
        for t in &self.targets {
            let (t, headers, body) = (t.clone(), headers.clone(), body.clone());
            let token = self.token.clone();
            posts.spawn(async move {
                let secrets: Vec<&str> = token.as_deref().into_iter().collect();
                let r = t.post_json(headers, body, deadline, &secrets).await;
                (t.origin(), r.and_then(|resp| check_status(&resp, &secrets)))
            });
        }
        let mut results = Vec::new();
        while let Some(done) = posts.join_next().await {
            if let Ok(r) = done {
                results.push(r);
            }
        }
        if results.iter().any(|(_, r)| r.is_ok()) {
            for (origin, r) in &results {
                if let Err(e) = r {
                    tracing::warn!(alertmanager = %origin, error = %e, "one Alertmanager did not take the alerts (another did)");
                }
            }
            return Ok(());
        }
        let retry = results
            .iter()
            .any(|(_, r)| matches!(r, Err(SendError::Retryable(_))));
        let why = results
            .iter()
            .map(|(origin, r)| match r {
                Err(SendError::Retryable(e) | SendError::Permanent(e)) => format!("{origin}: {e}"),
                Ok(()) => String::new(),
            })
            .collect::<Vec<_>>()
            .join("; ");
        Err(if retry {
            SendError::Retryable(why)
        } else {
            SendError::Permanent(why)
        })
    }
}

impl fmt::Debug for Alertmanager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Alertmanager")
            .field(
                "urls",
                &self.targets.iter().map(|t| t.origin()).collect::<Vec<_>>(),
            )
            .field("resend", &self.resend)
            .field(
                "headers",
                &self.headers.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("token", &self.token.as_ref().map(|_| "<secret>"))
            .finish()
    }
}
