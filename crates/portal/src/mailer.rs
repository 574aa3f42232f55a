//! Email from the portal (verification, password reset): written as `.eml` files to an
//! outbox directory that a mail relay (or a developer) picks up, sent through an SMTP
//! server (lettre, rustls), or written to the log for development.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use gatehouse_config::{Config, MailerConfig, MailerKind, SmtpSecurity};
use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{address}` is not an email address: {message}")]
    Address { address: String, message: String },
    #[error("cannot build the message: {0}")]
    Message(String),
    #[error("the SMTP server did not take the message: {0}")]
    Smtp(String),
}

pub struct Mailer {
    kind: MailerKind,
    outbox: PathBuf,
    from: String,
    sequence: AtomicU64,
    smtp: Option<AsyncSmtpTransport<Tokio1Executor>>,
}

/// One message.
pub struct Message<'a> {
    pub to: &'a str,
    pub subject: &'a str,
    pub body: &'a str,
}

/// Header values may not carry line breaks (header injection).
fn header_value(text: &str) -> String {
    text.chars().filter(|c| *c != '\r' && *c != '\n').collect()
}

impl Mailer {
    pub fn new(config: &MailerConfig, whole: &Config) -> Result<Self, String> {
        let outbox = whole.resolve_path(&config.outbox_dir);
        if config.kind == MailerKind::Outbox {
            std::fs::create_dir_all(&outbox)
                .map_err(|e| format!("cannot create the mail outbox {}: {e}", outbox.display()))?;
        }
        config
            .from
            .parse::<Mailbox>()
            .map_err(|e| format!("`portal.mailer.from` `{}`: {e}", config.from))?;
        let smtp = match (&config.kind, &config.smtp) {
            (MailerKind::Smtp, Some(smtp)) => {
                let builder = match smtp.security {
                    SmtpSecurity::Starttls => {
                        AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&smtp.host)
                    }
                    SmtpSecurity::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&smtp.host),
                    SmtpSecurity::None => Ok(
                        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.host),
                    ),
                }
                .map_err(|e| format!("SMTP server `{}`: {e}", smtp.host))?;
                let mut builder = builder.timeout(Some(smtp.timeout.0));
                if let Some(port) = smtp.port {
                    builder = builder.port(port);
                }
                if let (Some(username), Some(password)) = (&smtp.username, &smtp.password) {
                    builder =
                        builder.credentials(Credentials::new(username.clone(), password.0.clone()));
                }
                Some(builder.build())
            }
            (MailerKind::Smtp, None) => return Err("`portal.mailer.smtp` is missing".to_owned()),
            _ => None,
        };
        Ok(Self {
            kind: config.kind,
            outbox,
            from: config.from.clone(),
            sequence: AtomicU64::new(0),
            smtp,
        })
    }

    pub fn outbox(&self) -> &std::path::Path {
        &self.outbox
    }

    pub async fn send(&self, message: Message<'_>) -> Result<(), MailError> {
        let date = crate::html::when(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0),
        );
        match self.kind {
            MailerKind::Smtp => {
                let Some(transport) = &self.smtp else {
                    return Err(MailError::Smtp("no SMTP server configured".to_owned()));
                };
                let address = |text: &str| {
                    text.parse::<Mailbox>().map_err(|e| MailError::Address {
                        address: text.to_owned(),
                        message: e.to_string(),
                    })
                };
                // Plain ASCII within RFC 5322's 998-character lines goes as 7bit, so links
                // stay whole (lettre would quoted-printable lines of 76 or more); anything
                // else gets lettre's own encoding.
                let plain = message.body.is_ascii()
                    && !message.body.contains('\0')
                    && message.body.lines().all(|line| line.len() < 998);
                let body = if plain {
                    lettre::message::Body::dangerous_pre_encoded(
                        message
                            .body
                            .replace("\r\n", "\n")
                            .replace('\n', "\r\n")
                            .into_bytes(),
                        lettre::message::header::ContentTransferEncoding::SevenBit,
                    )
                } else {
                    lettre::message::Body::new(message.body.to_owned())
                };
                let email = lettre::Message::builder()
                    .from(address(&self.from)?)
                    .to(address(message.to)?)
                    .subject(message.subject)
                    .header(ContentType::TEXT_PLAIN)
                    .body(body)
                    .map_err(|e| MailError::Message(e.to_string()))?;
                transport
                    .send(email)
                    .await
                    .map(|_| ())
                    .map_err(|e| MailError::Smtp(e.to_string()))
            }
            MailerKind::Log => {
                tracing::info!(to = %message.to, subject = %message.subject, body = %message.body, "portal email (mailer: log)");
                Ok(())
            }
            MailerKind::Outbox => {
                let text = format!(
                    "From: {}\r\nTo: {}\r\nSubject: {}\r\nX-Gatehouse-Date: {date}\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{}\r\n",
                    header_value(&self.from),
                    header_value(message.to),
                    header_value(message.subject),
                    message.body.replace('\n', "\r\n"),
                );
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0);
                let sequence = self.sequence.fetch_add(1, Ordering::Relaxed);
                let name = format!("{now:020}-{}-{sequence}.eml", std::process::id());
                let path = self.outbox.join(name);
                // Written under a temporary name and renamed: a relay never sees half a file.
                let partial = path.with_extension("tmp");
                let written = tokio::fs::write(&partial, text).await;
                let renamed = match written {
                    Ok(()) => tokio::fs::rename(&partial, &path).await,
                    Err(err) => Err(err),
                };
                renamed.map_err(|source| MailError::Write {
                    path: path.display().to_string(),
                    source,
                })
            }
        }
    }
}
