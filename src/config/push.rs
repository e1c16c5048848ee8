//! Push providers (FCM, OneSignal) used by the worker's `send_push` jobs (every role takes
//! them, `all` runs a worker).
//!
//! Env vars: `FCM_BASE_URL`, `FCM_PROJECT_ID`, `FCM_ACCESS_TOKEN`, `ONESIGNAL_BASE_URL`,
//! `ONESIGNAL_APP_ID`, `ONESIGNAL_API_KEY`, `PUSH_TIMEOUT_MS`.

use std::time::Duration;

use clap::Args;

use super::{ConfigError, Secret};

/// Push-provider endpoints and credentials.
#[derive(Clone, Debug)]
pub struct PushConfig {
    /// FCM HTTP v1 base URL (tests point it at a local server).
    pub fcm_base_url: String,
    /// Firebase project id; FCM sends are refused (Permanent) while unset.
    pub fcm_project_id: Option<String>,
    /// OAuth 2 access token for FCM (`Authorization: Bearer …`).
    pub fcm_access_token: Option<Secret<String>>,
    /// OneSignal REST base URL.
    pub onesignal_base_url: String,
    /// OneSignal app id; OneSignal sends are refused (Permanent) while unset.
    pub onesignal_app_id: Option<String>,
    /// OneSignal REST API key (`Authorization: Key …`).
    pub onesignal_api_key: Option<Secret<String>>,
    /// Deadline of one provider call.
    pub timeout: Duration,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            fcm_base_url: DEFAULT_FCM_BASE_URL.to_owned(),
            fcm_project_id: None,
            fcm_access_token: None,
            onesignal_base_url: DEFAULT_ONESIGNAL_BASE_URL.to_owned(),
            onesignal_app_id: None,
            onesignal_api_key: None,
            timeout: Duration::from_secs(5),
        }
    }
}

/// Default FCM endpoint.
pub const DEFAULT_FCM_BASE_URL: &str = "https://fcm.googleapis.com";
/// Default OneSignal endpoint.
pub const DEFAULT_ONESIGNAL_BASE_URL: &str = "https://api.onesignal.com";

/// Push-provider settings (the worker's `send_push` jobs).
#[derive(Args, Clone, Debug)]
pub struct PushArgs {
    /// FCM HTTP v1 base URL.
    #[arg(long, env = "FCM_BASE_URL", default_value = DEFAULT_FCM_BASE_URL)]
    pub fcm_base_url: String,

    /// Firebase project id for FCM sends.
    #[arg(long, env = "FCM_PROJECT_ID")]
    pub fcm_project_id: Option<String>,

    /// OAuth 2 access token for FCM HTTP v1 (Bearer).
    #[arg(long, env = "FCM_ACCESS_TOKEN", hide_env_values = true)]
    pub fcm_access_token: Option<String>,

    /// OneSignal REST base URL.
    #[arg(long, env = "ONESIGNAL_BASE_URL", default_value = DEFAULT_ONESIGNAL_BASE_URL)]
    pub onesignal_base_url: String,

    /// OneSignal app id.
    #[arg(long, env = "ONESIGNAL_APP_ID")]
    pub onesignal_app_id: Option<String>,

    /// OneSignal REST API key (`Authorization: Key …`).
    #[arg(long, env = "ONESIGNAL_API_KEY", hide_env_values = true)]
    pub onesignal_api_key: Option<String>,

    /// Deadline of one push-provider call, in ms.
    #[arg(long, env = "PUSH_TIMEOUT_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..=120_000))]
    pub push_timeout_ms: u64,
}

impl PushArgs {
    /// Validates into a [`PushConfig`].
    pub fn to_config(&self) -> Result<PushConfig, ConfigError> {
        for (var, url) in [
            ("FCM_BASE_URL", &self.fcm_base_url),
            ("ONESIGNAL_BASE_URL", &self.onesignal_base_url),
        ] {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(ConfigError::new(var, "must be an http:// or https:// URL"));
            }
        }
        let nonempty = |v: &Option<String>| v.as_ref().filter(|s| !s.trim().is_empty()).cloned();
        Ok(PushConfig {
            fcm_base_url: self.fcm_base_url.trim_end_matches('/').to_owned(),
            fcm_project_id: nonempty(&self.fcm_project_id),
            fcm_access_token: nonempty(&self.fcm_access_token).map(Secret::new),
            onesignal_base_url: self.onesignal_base_url.trim_end_matches('/').to_owned(),
            onesignal_app_id: nonempty(&self.onesignal_app_id),
            onesignal_api_key: nonempty(&self.onesignal_api_key).map(Secret::new),
            timeout: Duration::from_millis(self.push_timeout_ms),
        })
    }
}
