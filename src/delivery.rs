//! How verification messages leave the server. Email goes over SMTP (`lettre`) when
//! `AUTHD_SMTP_URL` is set, otherwise into an outbox directory (one file per
//! message: `To:`, `Subject:`, a blank line, the body), which is what a developer
//! machine and the black-box tests read. Text messages (`phone`) are posted as JSON
//! `{"to", "body"}` to `AUTHD_SMS_WEBHOOK_URL`; without one they cannot be sent.
//! Built once from the configuration at start-up and held by the `App`.

use std::path::PathBuf;
use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

/// How long one delivery may take before it counts as failed.
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("AUTHD_SMTP_URL is not a usable SMTP URL: {0}")]
    SmtpUrl(String),
    #[error("AUTHD_SMTP_FROM {0:?} is not an email address")]
    From(String),
    #[error("AUTHD_SMS_WEBHOOK_URL is not an http(s) URL")]
    WebhookUrl,
    /// Never names the address: errors reach logs and answers.
    #[error("the recipient is not an email address")]
    Address,
    #[error("no email delivery is configured")]
    NoEmail,
    #[error("phone verification is not available: no AUTHD_SMS_WEBHOOK_URL is configured")]
    NoSmsWebhook,
    #[error("the email could not be sent: {0}")]
    Email(String),
    #[error("the text message could not be sent: {0}")]
    Sms(String),
}

enum Email {
    Smtp { transport: AsyncSmtpTransport<Tokio1Executor>, from: Mailbox },
    Outbox { dir: PathBuf, from: Mailbox },
    Disabled,
}

/// Email and text-message delivery, as configured.
pub struct Delivery {
    email: Email,
    sms: Option<(reqwest::Client, reqwest::Url)>,
}

impl Delivery {
    /// `smtp_url` unset: email goes to `outbox`. `sms_webhook` unset: no text messages.
    pub fn new(
        smtp_url: Option<&str>,
        from: &str,
        outbox: PathBuf,
        sms_webhook: Option<&str>,
    ) -> Result<Self, DeliveryError> {
        let from: Mailbox = from.parse().map_err(|_| DeliveryError::From(from.to_string()))?;
        let email = match smtp_url {
            Some(url) => Email::Smtp {
                transport: AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
                    .map_err(|e| DeliveryError::SmtpUrl(e.to_string()))?
                    .timeout(Some(TIMEOUT))
                    .build(),
                from,
            },
            None => Email::Outbox { dir: outbox, from },
        };
        let sms = match sms_webhook {
            Some(url) => {
                let url = reqwest::Url::parse(url).map_err(|_| DeliveryError::WebhookUrl)?;
                if !matches!(url.scheme(), "http" | "https") {
                    return Err(DeliveryError::WebhookUrl);
                }
                let http = reqwest::Client::builder()
                    .timeout(TIMEOUT)
                    .build()
                    .map_err(|e| DeliveryError::Sms(e.to_string()))?;
                Some((http, url))
            }
            None => None,
        };
        Ok(Self { email, sms })
    }

    /// Sends nothing: every delivery fails. The state of an `App` before the
    /// server configures delivery.
    pub fn disabled() -> Self {
        Self { email: Email::Disabled, sms: None }
    }

    /// Where email and text messages go, for the start-up log (no credentials).
    pub fn describe(&self) -> String {
        let email = match &self.email {
            Email::Smtp { .. } => "SMTP".to_string(),
            Email::Outbox { dir, .. } => format!("outbox {}", dir.display()),
            Email::Disabled => "nowhere".to_string(),
        };
        let sms = match &self.sms {
            Some((_, url)) => format!("webhook {}://{}", url.scheme(), url.host_str().unwrap_or("?")),
            None => "not configured".to_string(),
        };
        format!("email: {email}; text messages: {sms}")
    }

    pub fn can_text(&self) -> bool {
        self.sms.is_some()
    }

    /// Sends an email (or files it in the outbox).
    pub async fn email(&self, to: &str, subject: &str, body: &str) -> Result<(), DeliveryError> {
        let mailbox: Mailbox = to.parse().map_err(|_| DeliveryError::Address)?;
        match &self.email {
            Email::Smtp { transport, from } => {
                let message = lettre::Message::builder()
                    .from(from.clone())
                    .to(mailbox)
                    .subject(subject)
                    .header(ContentType::TEXT_PLAIN)
                    .body(body.to_string())
                    .map_err(|_| DeliveryError::Email("the message could not be built".into()))?;
                transport.send(message).await.map_err(|e| DeliveryError::Email(smtp_failure(&e)))?;
                Ok(())
            }
            Email::Outbox { dir, from } => file(dir, &from.to_string(), to, subject, body).await,
            Email::Disabled => Err(DeliveryError::NoEmail),
        }
    }

    /// Deletes every outbox message to `to` (after the account that owned the address
    /// is removed); returns how many. Mail already handed to SMTP is not ours to
    /// recall.
    pub async fn forget_recipient(&self, to: &str) -> Result<usize, DeliveryError> {
        let Email::Outbox { dir, .. } = &self.email else { return Ok(0) };
        let io = |e: std::io::Error| DeliveryError::Email(format!("outbox {}: {}", dir.display(), e.kind()));
        let header = format!("To: {}", to.replace(['\r', '\n'], " "));
        let mut entries = match tokio::fs::read_dir(dir).await {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(error) => return Err(io(error)),
        };
        let mut deleted = 0;
        while let Some(entry) = entries.next_entry().await.map_err(io)? {
            let Ok(text) = tokio::fs::read_to_string(entry.path()).await else { continue };
            if text.lines().take_while(|line| !line.is_empty()).any(|line| line.eq_ignore_ascii_case(&header)) {
                tokio::fs::remove_file(entry.path()).await.map_err(io)?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// Posts a text message to the webhook.
    pub async fn text(&self, to: &str, body: &str) -> Result<(), DeliveryError> {
        let Some((http, url)) = &self.sms else { return Err(DeliveryError::NoSmsWebhook) };
        http.post(url.clone())
            .json(&serde_json::json!({"to": to, "body": body}))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            // Without the URL: it may carry a credential.
            .map_err(|e| DeliveryError::Sms(e.without_url().to_string()))?;
        Ok(())
    }
}

/// What went wrong with SMTP, without the server's words: a reply may quote the
/// recipient's address (`550 <alice@example.com>: no such user`), and this text
/// reaches logs and answers.
fn smtp_failure(error: &lettre::transport::smtp::Error) -> String {
    let kind = if error.is_permanent() {
        "permanent rejection"
    } else if error.is_transient() {
        "transient rejection"
    } else if error.is_timeout() {
        "timeout"
    } else if error.is_tls() {
        "TLS failure"
    } else if error.is_response() || error.is_client() {
        "protocol error"
    } else {
        "connection failure"
    };
    match error.status() {
        Some(code) => format!("SMTP {kind} ({code})"),
        None => format!("SMTP {kind}"),
    }
}

/// Writes one message into the outbox, whole or not at all (written aside, then
/// renamed into place), so a reader never sees half a message. The outbox is
/// readable by this user only: directory 0700, messages 0600.
async fn file(dir: &std::path::Path, from: &str, to: &str, subject: &str, body: &str) -> Result<(), DeliveryError> {
    let io = |e: std::io::Error| DeliveryError::Email(format!("outbox {}: {e}", dir.display()));
    let one_line = |text: &str| text.replace(['\r', '\n'], " ");
    let mut create = tokio::fs::DirBuilder::new();
    create.recursive(true);
    #[cfg(unix)]
    create.mode(0o700);
    create.create(dir).await.map_err(io)?;
    let name = format!("{}-{}", chrono::Utc::now().format("%Y%m%dT%H%M%S%.6fZ"), uuid::Uuid::new_v4().simple());
    let text = format!("From: {}\nTo: {}\nSubject: {}\n\n{body}\n", one_line(from), one_line(to), one_line(subject));
    let partial = dir.join(format!(".{name}.tmp"));
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut written = options.open(&partial).await.map_err(io)?;
    tokio::io::AsyncWriteExt::write_all(&mut written, text.as_bytes()).await.map_err(io)?;
    written.sync_all().await.map_err(io)?;
    drop(written);
    tokio::fs::rename(&partial, dir.join(format!("{name}.eml"))).await.map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_outbox_gets_one_file_per_message() {
        let dir = std::env::temp_dir().join(format!("authd-outbox-{}", uuid::Uuid::new_v4()));
        let delivery = Delivery::new(None, "authd@localhost", dir.clone(), None).expect("delivery");
        delivery.email("alice@example.com", "Your code\r\nBcc: x", "code 123456").await.expect("filed");
        let files: Vec<_> = std::fs::read_dir(&dir).expect("outbox").flatten().collect();
        assert_eq!(files.len(), 1);
        let text = std::fs::read_to_string(files[0].path()).expect("read");
        assert_eq!(text, "From: authd@localhost\nTo: alice@example.com\nSubject: Your code  Bcc: x\n\ncode 123456\n");
        assert!(matches!(delivery.email("not an address", "s", "b").await, Err(DeliveryError::Address)));
        std::fs::remove_dir_all(dir).ok();
    }

    #[tokio::test]
    async fn without_a_webhook_text_messages_fail() {
        let delivery = Delivery::new(None, "authd@localhost", std::env::temp_dir(), None).expect("delivery");
        assert!(!delivery.can_text());
        assert!(matches!(delivery.text("+15550100", "hi").await, Err(DeliveryError::NoSmsWebhook)));
    }

    #[test]
    fn bad_settings_are_refused() {
        let dir = std::env::temp_dir();
        assert!(matches!(Delivery::new(None, "not an address", dir.clone(), None), Err(DeliveryError::From(_))));
        assert!(matches!(Delivery::new(Some("ftp://x"), "a@b", dir.clone(), None), Err(DeliveryError::SmtpUrl(_))));
        assert!(matches!(Delivery::new(None, "a@b", dir, Some("ftp://x")), Err(DeliveryError::WebhookUrl)));
    }
}
