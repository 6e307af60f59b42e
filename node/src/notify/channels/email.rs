//! Email through SMTP with lettre: one message per group, multipart/alternative text
//! and HTML.
//!
//! Each send opens its own connection with lettre's `AsyncSmtpConnection` (what
//! `AsyncSmtpTransport` does inside) rather than through the pooled transport: the
//! pool spawns tokio tasks when it is built and dropped (so building a channel would
//! need a runtime), and a send cut by the timeout would hand a half-used connection
//! back to the pool. Here, a timeout drops the connection and that is all.
use std::fmt;
use std::time::Duration;

use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::{Credentials, DEFAULT_MECHANISMS};
use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::Message;
use tokio::time::Instant;

use super::{header_safe, payload, read_secret, remaining, ChannelError, SendError};
use crate::config::channels::{EmailChannel, SmtpTls};
use crate::model::Notification;

const IDEMPOTENCY_HEADER: &str = "X-Herd-Idempotency-Key";

pub(super) struct Email {
    host: String,
    port: u16,
    tls: SmtpTls,
    /// For `tls` and `starttls`.
    tls_params: Option<TlsParameters>,
    username: Option<String>,
    credentials: Option<Credentials>,
    from: Mailbox,
    to: Vec<Mailbox>,
    hello: ClientId,
}

impl Email {
    pub(super) fn build(spec: &EmailChannel) -> Result<Email, ChannelError> {
        let default_port = match spec.tls {
            SmtpTls::Starttls => 587,
            SmtpTls::Tls => 465,
            SmtpTls::None => 25,
        };
        let (host, port) =
            crate::model::net::parse_host_port(&spec.smtp, default_port).map_err(|_| {
                ChannelError::BadSmtp {
                    smtp: spec.smtp.clone(),
                }
            })?;
        let tls_params = match spec.tls {
            SmtpTls::None => None,
            SmtpTls::Starttls | SmtpTls::Tls => Some(TlsParameters::new(host.clone()).map_err(
                |e| ChannelError::SmtpTls {
                    host: host.clone(),
                    reason: e.to_string(),
                },
            )?),
        };
        let from: Mailbox = spec.from.parse().map_err(|e| ChannelError::BadFrom {
            from: spec.from.clone(),
            reason: format!("{e}"),
        })?;
        let to = spec
            .to
            .iter()
            .map(|t| {
                t.parse::<Mailbox>().map_err(|e| ChannelError::BadTo {
                    to: t.clone(),
                    reason: format!("{e}"),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if to.is_empty() {
            return Err(ChannelError::NoRecipient);
        }
        let credentials = match (&spec.username, &spec.password) {
            (Some(user), Some(secret)) => Some(Credentials::new(
                user.clone(),
                read_secret(secret, "password")?,
            )),
            (None, None) => None,
            _ => return Err(ChannelError::UserWithoutPassword),
        };
        Ok(Email {
            host,
            port,
            tls: spec.tls,
            tls_params,
            username: spec.username.clone(),
            credentials,
            from,
            to,
            hello: ClientId::default(),
        })
    }

    pub(super) async fn send(
        &self,
        group: &[Notification],
        deadline: Instant,
    ) -> Result<(), SendError> {
        let message = self.message(group)?;
        let body = message.formatted();
        let mut conn = self.connect(deadline).await.map_err(smtp_error)?;
        if let Some(c) = &self.credentials {
            conn.auth(DEFAULT_MECHANISMS, c).await.map_err(smtp_error)?;
        }
        conn.send(message.envelope(), &body)
            .await
            .map_err(smtp_error)?;
        // Delivered. QUIT politely, but never let it turn a delivery into a timeout.
        let quit_by = deadline
            .checked_sub(Duration::from_millis(100))
            .unwrap_or(deadline);
        let _ = tokio::time::timeout_at(quit_by, conn.quit()).await;
        Ok(())
    }

    async fn connect(
        &self,
        deadline: Instant,
    ) -> Result<AsyncSmtpConnection, lettre::transport::smtp::Error> {
        let wrapper = match self.tls {
            SmtpTls::Tls => self.tls_params.clone(),
            _ => None,
        };
        let mut conn = AsyncSmtpConnection::connect_tokio1(
            (self.host.as_str(), self.port),
            Some(remaining(deadline)),
            &self.hello,
            wrapper,
            None,
        )
        .await?;
        if let (SmtpTls::Starttls, Some(params)) = (self.tls, &self.tls_params) {
            conn.starttls(params.clone(), &self.hello).await?;
        }
        Ok(conn)
    }

    /// The message for a group; a failure here is permanent.
    fn message(&self, group: &[Notification]) -> Result<Message, SendError> {
        let mut builder = Message::builder()
            .from(self.from.clone())
            .subject(payload::subject(group))
            .message_id(Some(message_id(&group[0].idempotency_key)))
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str(IDEMPOTENCY_HEADER),
                header_safe(&payload::joined_keys(group)),
            ))
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("Auto-Submitted"),
                "auto-generated".to_string(),
            ))
            .user_agent(concat!("herd/", env!("CARGO_PKG_VERSION")).to_string());
        for to in &self.to {
            builder = builder.to(to.clone());
        }
        builder
            .multipart(
                MultiPart::alternative()
                    .singlepart(
                        SinglePart::builder()
                            .header(ContentType::TEXT_PLAIN)
                            .body(text_body(group)),
                    )
                    .singlepart(
                        SinglePart::builder()
                            .header(ContentType::TEXT_HTML)
                            .body(html_body(group)),
                    ),
            )
            .map_err(|e| SendError::Permanent(format!("cannot build the message: {e}")))
    }
}

/// 5xx replies and client-side refusals (no usable AUTH mechanism, no STARTTLS) are
/// permanent; 4xx replies, network, TLS and protocol trouble are retryable.
fn smtp_error(e: lettre::transport::smtp::Error) -> SendError {
    let text = format!("SMTP: {e}");
    if e.is_permanent() || e.is_client() {
        SendError::Permanent(text)
    } else {
        SendError::Retryable(text)
    }
}

/// `<KEY@herd>` with the key reduced to characters a Message-ID allows.
pub(super) fn message_id(key: &str) -> String {
    let mut local = String::new();
    for c in key.chars() {
        if c.is_ascii_alphanumeric() || "-_+=".contains(c) {
            local.push(c);
        } else if !local.is_empty() && !local.ends_with('.') {
            local.push('.');
        }
    }
    let local = local.trim_end_matches('.');
    let local = if local.is_empty() { "herd" } else { local };
    format!("<{local}@herd>")
}

/// One block per alert, in plain text.
pub(super) fn text_body(group: &[Notification]) -> String {
    let mut out = String::new();
    if group.len() > 1 {
        out.push_str(&format!("{}\n\n", payload::subject(group)));
    }
    for n in group {
        let a = &n.alert;
        out.push_str(&payload::headline(n));
        out.push('\n');
        for (k, v) in fields(n) {
            if !v.is_empty() {
                out.push_str(&format!("  {k:<12} {v}\n"));
            }
        }
        if !a.description.is_empty() {
            out.push('\n');
            for line in a.description.lines() {
                out.push_str("  ");
                out.push_str(line);
                out.push('\n');
            }
        }
        out.push('\n');
    }
    out.push_str("-- \nSent by herd.\n");
    out
}

/// The same as HTML: a heading and a table per alert.
pub(super) fn html_body(group: &[Notification]) -> String {
    let mut out = String::from(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"></head>\
         <body style=\"font-family:sans-serif\">\n",
    );
    if group.len() > 1 {
        out.push_str(&format!("<h2>{}</h2>\n", esc(&payload::subject(group))));
    }
    for n in group {
        let a = &n.alert;
        let color = match n.kind {
            crate::model::NotifyKind::Firing => "#c0392b",
            crate::model::NotifyKind::Resolved => "#27ae60",
            crate::model::NotifyKind::Flapping => "#d68910",
        };
        out.push_str(&format!(
            "<h3 style=\"color:{color}\">{}</h3>\n<table cellpadding=\"3\">\n",
            esc(&payload::headline(n))
        ));
        for (k, v) in fields(n) {
            if !v.is_empty() {
                out.push_str(&format!(
                    "<tr><th align=\"left\">{}</th><td>{}</td></tr>\n",
                    esc(k),
                    esc(&v)
                ));
            }
        }
        if !a.description.is_empty() {
            out.push_str(&format!(
                "<tr><th align=\"left\">description</th><td>{}</td></tr>\n",
                esc(&a.description).replace('\n', "<br>")
            ));
        }
        out.push_str("</table>\n");
    }
    out.push_str("<p style=\"color:#888\">Sent by herd.</p>\n</body></html>\n");
    out
}

fn fields(n: &Notification) -> Vec<(&'static str, String)> {
    let a = &n.alert;
    vec![
        ("rule", a.rule.clone()),
        ("target", a.target.clone()),
        ("severity", a.severity.as_str().to_string()),
        ("state", a.state.as_str().to_string()),
        ("since", payload::rfc3339_ms(a.since_ms)),
        ("value", a.value.clone()),
        ("summary", a.summary.clone()),
        ("labels", payload::labels_line(&a.labels)),
        ("acked by", a.acked_by.clone().unwrap_or_default()),
        ("key", n.idempotency_key.clone()),
    ]
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Email")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("password", &self.credentials.as_ref().map(|_| "<secret>"))
            .field("from", &self.from.to_string())
            .field(
                "to",
                &self.to.iter().map(|t| t.to_string()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Stdio};
    use std::time::Instant as StdInstant;

    use super::super::testkit::{closed_port, notification, stalled};
    use super::super::Channel;
    use super::*;
    use crate::config::channels::ChannelSpec;
    use crate::config::channels::Secret;
    use crate::model::NotifyKind;

    /// A real SMTP server (aiosmtpd) writing each message it accepts as a JSON line.
    /// Recipients starting with `nobody@` get 550, `later@` get 451. With `auth`, it
    /// wants AUTH as herd / pa55 (over plain text, for the test).
    const SERVER: &str = r#"
import json, sys, time
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

port, out, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]

class Handler:
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith('nobody@'):
            return '550 5.1.1 no such user'
        if address.startswith('later@'):
            return '451 4.3.0 try again later'
        envelope.rcpt_tos.append(address)
        return '250 OK'

    async def handle_DATA(self, server, session, envelope):
        with open(out, 'a') as f:
            f.write(json.dumps({
                'from': envelope.mail_from,
                'to': envelope.rcpt_tos,
                'data': envelope.content.decode('utf-8', 'replace'),
                'authenticated': bool(getattr(session, 'authenticated', False)),
            }) + '\n')
        return '250 Message accepted'

def check(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and auth_data.login == b'herd' \
        and auth_data.password == b'pa55'
    return AuthResult(success=ok, handled=False)

kwargs = {}
if mode == 'auth':
    kwargs = dict(authenticator=check, auth_require_tls=False, auth_required=True)
c = Controller(Handler(), hostname='127.0.0.1', port=port, **kwargs)
c.start()
print('READY', flush=True)
while True:
    time.sleep(3600)
"#;

    struct SmtpServer {
        child: Child,
        port: u16,
        out: PathBuf,
        _dir: tempfile::TempDir,
    }

    impl Drop for SmtpServer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn python() -> &'static str {
        for p in ["/usr/bin/python3", "python3"] {
            let ok = std::process::Command::new(p)
                .args(["-c", "import aiosmtpd"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return p;
            }
        }
        panic!("no python3 with aiosmtpd: apt-get install -y python3-aiosmtpd");
    }

    impl SmtpServer {
        fn start(mode: &str) -> SmtpServer {
            let dir = tempfile::tempdir().unwrap();
            let out = dir.path().join("messages.jsonl");
            let port = closed_port();
            let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
            let mut child = std::process::Command::new(python())
                .arg("-c")
                .arg(SERVER)
                .arg(port.to_string())
                .arg(&out)
                .arg(mode)
                .stdout(Stdio::piped())
                .stderr(log)
                .spawn()
                .unwrap();
            let mut line = String::new();
            BufReader::new(child.stdout.take().unwrap())
                .read_line(&mut line)
                .unwrap();
            if line.trim() != "READY" {
                let log = std::fs::read_to_string(dir.path().join("server.log"));
                panic!("the SMTP server did not start: {log:?}");
            }
            SmtpServer {
                child,
                port,
                out,
                _dir: dir,
            }
        }

        fn messages(&self) -> Vec<serde_json::Value> {
            read_lines(&self.out)
        }
    }

    fn read_lines(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn spec(port: u16, to: &[&str], auth: Option<(&str, Secret)>) -> ChannelSpec {
        ChannelSpec::Email(EmailChannel {
            name: "ops-mail".into(),
            smtp: format!("127.0.0.1:{port}"),
            tls: SmtpTls::None,
            username: auth.as_ref().map(|(u, _)| u.to_string()),
            password: auth.map(|(_, s)| s),
            from: "Herd <herd@example.test>".into(),
            to: to.iter().map(|s| s.to_string()).collect(),
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

    /// The decoded body of the MIME part with this content type.
    fn part(data: &str, content_type: &str) -> String {
        let start = data
            .find(&format!("Content-Type: {content_type}"))
            .unwrap_or_else(|| panic!("no {content_type} part in {data}"));
        let rest = &data[start..];
        let head_end = rest
            .find("\r\n\r\n")
            .map(|i| i + 4)
            .or_else(|| rest.find("\n\n").map(|i| i + 2))
            .unwrap();
        let head = &rest[..head_end];
        let body = &rest[head_end..];
        let body = &body[..body.find("\n--").unwrap_or(body.len())];
        if head.contains("quoted-printable") {
            let joined = body.replace("=\r\n", "").replace("=\n", "");
            let mut out = Vec::new();
            let bytes = joined.as_bytes();
            let mut i = 0;
            while i < bytes.len() {
                if bytes[i] == b'=' && i + 2 < bytes.len() {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                    if let Ok(b) = u8::from_str_radix(hex, 16) {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                }
                out.push(bytes[i]);
                i += 1;
            }
            String::from_utf8_lossy(&out).replace("\r\n", "\n")
        } else {
            body.replace("\r\n", "\n")
        }
    }

    #[tokio::test]
    async fn email_is_delivered_with_text_html_and_headers() {
        let server = SmtpServer::start("plain");
        let ch = Channel::build(&spec(
            server.port,
            &["ops@example.test", "oncall@example.test"],
            None,
        ))
        .unwrap();
        let n = notification("disk-full", "web-1", NotifyKind::Firing, 1);
        ch.send(std::slice::from_ref(&n), Duration::from_secs(10))
            .await
            .unwrap();
        let msgs = server.messages();
        assert_eq!(msgs.len(), 1);
        let m = &msgs[0];
        assert_eq!(m["from"], "herd@example.test");
        assert_eq!(
            m["to"],
            serde_json::json!(["ops@example.test", "oncall@example.test"])
        );
        let data = m["data"].as_str().unwrap();
        assert!(
            data.contains("Subject: [FIRING] disk-full on web-1\r\n"),
            "{data}"
        );
        assert!(
            data.contains("To: ops@example.test, oncall@example.test\r\n"),
            "{data}"
        );
        assert!(
            data.contains("Message-ID: <a1b2c301.1.test@herd>\r\n"),
            "{data}"
        );
        assert!(
            data.contains(&format!(
                "X-Herd-Idempotency-Key: {}\r\n",
                n.idempotency_key
            )),
            "{data}"
        );
        assert!(
            data.contains("Content-Type: multipart/alternative"),
            "{data}"
        );
        let text = part(data, "text/plain");
        assert!(text.contains("[FIRING] disk-full on web-1"), "{text}");
        assert!(text.contains("severity     critical"), "{text}");
        assert!(text.contains("value        93.5"), "{text}");
        assert!(text.contains("labels       mount=/, team=ops"), "{text}");
        assert!(text.contains("Disk / is <93%> full & growing"), "{text}");
        let html = part(data, "text/html");
        assert!(html.contains("<h3"), "{html}");
        assert!(
            html.contains("Disk / is &lt;93%&gt; full &amp; growing"),
            "{html}"
        );
        assert!(
            html.contains("<th align=\"left\">since</th><td>2023-11-14T22:14:20.000Z</td>"),
            "{html}"
        );
    }

    #[tokio::test]
    async fn email_group_is_one_message() {
        let server = SmtpServer::start("plain");
        let ch = Channel::build(&spec(server.port, &["ops@example.test"], None)).unwrap();
        let g: Vec<_> = (1..=3)
            .map(|i| notification(&format!("rule-{i}"), "web-1", NotifyKind::Firing, i))
            .collect();
        ch.send(&g, Duration::from_secs(10)).await.unwrap();
        let msgs = server.messages();
        assert_eq!(msgs.len(), 1);
        let data = msgs[0]["data"].as_str().unwrap();
        assert!(
            data.contains("Subject: [FIRING] 3 alerts on web-1\r\n"),
            "{data}"
        );
        let keys = payload::joined_keys(&g);
        assert!(
            data.contains(&format!("X-Herd-Idempotency-Key: {keys}\r\n")),
            "{data}"
        );
        let text = part(data, "text/plain");
        for i in 1..=3 {
            assert!(
                text.contains(&format!("[FIRING] rule-{i} on web-1")),
                "{text}"
            );
        }
    }

    #[tokio::test]
    async fn email_auth_reads_the_password_secret() {
        let server = SmtpServer::start("auth");
        std::env::set_var("HERD_TEST_SMTP_PASS_OK", "pa55");
        let ch = Channel::build(&spec(
            server.port,
            &["ops@example.test"],
            Some((
                "herd",
                Secret {
                    env: Some("HERD_TEST_SMTP_PASS_OK".into()),
                    file: None,
                },
            )),
        ))
        .unwrap();
        let shown = format!("{ch:?} {ch}");
        assert!(!shown.contains("pa55"), "{shown}");
        let n = [notification("disk-full", "web-1", NotifyKind::Resolved, 2)];
        ch.send(&n, Duration::from_secs(10)).await.unwrap();
        let msgs = server.messages();
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0]["authenticated"], true);
        assert!(msgs[0]["data"]
            .as_str()
            .unwrap()
            .contains("Subject: [RESOLVED] disk-full on web-1"));

        // A wrong password is refused for good (535).
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "wrong\n").unwrap();
        let ch = Channel::build(&spec(
            server.port,
            &["ops@example.test"],
            Some((
                "herd",
                Secret {
                    env: None,
                    file: Some(pw.display().to_string()),
                },
            )),
        ))
        .unwrap();
        let e = ch.send(&n, Duration::from_secs(10)).await.unwrap_err();
        assert!(!e.is_retryable(), "{e}");
        assert!(!e.to_string().contains("wrong"), "{e}");
    }

    #[test]
    fn email_missing_password_names_the_variable() {
        let e = Channel::build(&spec(
            25,
            &["ops@example.test"],
            Some((
                "herd",
                Secret {
                    env: Some("HERD_TEST_SMTP_PASS_UNSET_93".into()),
                    file: None,
                },
            )),
        ))
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "channel ops-mail: environment variable HERD_TEST_SMTP_PASS_UNSET_93 is not set"
        );
    }

    #[tokio::test]
    async fn email_refused_recipients_are_classified() {
        let server = SmtpServer::start("plain");
        let n = [notification("disk-full", "web-1", NotifyKind::Firing, 1)];
        let ch = Channel::build(&spec(server.port, &["nobody@example.test"], None)).unwrap();
        let e = ch.send(&n, Duration::from_secs(10)).await.unwrap_err();
        assert!(!e.is_retryable(), "{e}");
        assert!(e.to_string().contains("550"), "{e}");
        let ch = Channel::build(&spec(server.port, &["later@example.test"], None)).unwrap();
        let e = ch.send(&n, Duration::from_secs(10)).await.unwrap_err();
        assert!(e.is_retryable(), "{e}");
        assert!(server.messages().is_empty());
    }

    #[tokio::test]
    async fn email_server_down_is_retryable() {
        let ch = Channel::build(&spec(closed_port(), &["ops@example.test"], None)).unwrap();
        let n = [notification("disk-full", "web-1", NotifyKind::Firing, 1)];
        let e = ch.send(&n, Duration::from_secs(5)).await.unwrap_err();
        assert!(e.is_retryable(), "{e}");
    }

    #[tokio::test]
    async fn email_stalled_server_times_out() {
        let st = stalled().await;
        let ch = Channel::build(&spec(st.port, &["ops@example.test"], None)).unwrap();
        let n = [notification("disk-full", "web-1", NotifyKind::Firing, 1)];
        let started = StdInstant::now();
        let e = ch.send(&n, Duration::from_millis(500)).await.unwrap_err();
        assert!(e.is_retryable(), "{e}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn email_build_checks_addresses_and_ports() {
        assert_eq!(message_id("ab12:3:ops mail"), "<ab12.3.ops.mail@herd>");
        assert_eq!(message_id("::"), "<herd@herd>");

        let mut s = spec(25, &["ops@example.test"], None);
        if let ChannelSpec::Email(e) = &mut s {
            e.to.push("not an <address@".into());
        }
        assert!(Channel::build(&s)
            .unwrap_err()
            .to_string()
            .starts_with("channel ops-mail: "));

        // starttls and tls build their TLS settings without a runtime.
        for tls in [SmtpTls::Starttls, SmtpTls::Tls] {
            let mut s = spec(25, &["ops@example.test"], None);
            if let ChannelSpec::Email(e) = &mut s {
                e.smtp = "smtp.example.test".into();
                e.tls = tls;
            }
            let ch = Channel::build(&s).unwrap();
            let port = if tls == SmtpTls::Tls { 465 } else { 587 };
            assert!(
                format!("{ch:?}").contains(&format!("port: {port}")),
                "{ch:?}"
            );
        }
    }
}
