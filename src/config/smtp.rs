//! SMTP settings of the `send_email` flow node: `SMTP_URL`, `SMTP_FROM`, `SMTP_TIMEOUT_MS`.

use std::time::Duration;

use clap::Args;

use super::{ConfigError, Secret};

/// SMTP settings of the `send_email` node.
#[derive(Clone, Debug)]
pub struct SmtpConfig {
    /// `smtp://host:port` (plain, or `?tls=required` for STARTTLS), `smtps://host:port`
    /// (implicit TLS); user and password may be in the URL. None: e-mails fail permanently.
    pub url: Option<Secret<String>>,
    /// The `From:` address.
    pub from: String,
    /// Deadline of one SMTP conversation.
    pub timeout: Duration,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        Self {
            url: None,
            from: DEFAULT_SMTP_FROM.to_owned(),
            timeout: Duration::from_secs(10),
        }
    }
}

/// Default sender.
pub const DEFAULT_SMTP_FROM: &str = "ITSUR Eats <no-reply@itsur.invalid>";

/// SMTP settings (the worker's `send_email` jobs).
#[derive(Args, Clone, Debug)]
pub struct SmtpArgs {
    /// SMTP server: `smtp://host:587?tls=required` (STARTTLS), `smtps://host:465` (TLS),
    /// `smtp://host:25` (plain, for a local relay); credentials in the URL.
    #[arg(long, env = "SMTP_URL", hide_env_values = true)]
    pub smtp_url: Option<String>,

    /// The `From:` address of e-mails.
    #[arg(long, env = "SMTP_FROM", default_value = DEFAULT_SMTP_FROM)]
    pub smtp_from: String,

    /// Deadline of one SMTP conversation, in ms.
    #[arg(long, env = "SMTP_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=120_000))]
    pub smtp_timeout_ms: u64,
}

impl SmtpArgs {
    /// Validates into an [`SmtpConfig`] (the URL's scheme and the sender's address).
    pub fn to_config(&self) -> Result<SmtpConfig, ConfigError> {
        let url = self.smtp_url.as_ref().filter(|u| !u.trim().is_empty());
        if let Some(u) = url
            && !(u.starts_with("smtp://") || u.starts_with("smtps://"))
        {
            return Err(ConfigError::new(
                "SMTP_URL",
                "must be an smtp:// or smtps:// URL",
            ));
        }
        if self.smtp_from.parse::<lettre::message::Mailbox>().is_err() {
            return Err(ConfigError::new(
                "SMTP_FROM",
                "must be an address, optionally with a name: Name <user@host>",
            ));
        }
        Ok(SmtpConfig {
            url: url.cloned().map(Secret::new),
            from: self.smtp_from.clone(),
            timeout: Duration::from_millis(self.smtp_timeout_ms),
        })
    }
}
