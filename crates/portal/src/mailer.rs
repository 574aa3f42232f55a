//! Email from the portal (verification, password reset): written as `.eml` files to an
//! outbox directory that a mail relay (or a developer) picks up, or written to the log for
//! development.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use gatehouse_config::{Config, MailerConfig, MailerKind};

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

pub struct Mailer {
    kind: MailerKind,
    outbox: PathBuf,
    from: String,
    sequence: AtomicU64,
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
        Ok(Self {
            kind: config.kind,
            outbox,
            from: config.from.clone(),
            sequence: AtomicU64::new(0),
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
