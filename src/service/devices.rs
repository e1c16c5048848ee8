//! Push devices: a user registers the tokens their phones got from FCM/APNs/OneSignal/Web
//! Push, for the push notifications sent when an order is ready.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::Result;
use crate::app::Ctx;
use crate::domain::{Actor, DomainError};
use crate::store::devices;

/// Platforms a push token can come from.
pub const PLATFORMS: [&str; 4] = ["fcm", "apns", "onesignal", "webpush"];

/// A registered device.
#[derive(Debug, Clone)]
pub struct Device {
    /// Device id.
    pub id: Uuid,
    /// Push platform.
    pub platform: String,
    /// When first registered.
    pub created_at: DateTime<Utc>,
}

/// Registers (or refreshes) a push token for the caller; the same token twice is one device.
pub async fn register_device(
    ctx: &Ctx,
    actor: &Actor,
    platform: &str,
    token: &str,
) -> Result<Device> {
    let mut errors = Vec::new();
    if !PLATFORMS.contains(&platform) {
        errors.push((
            "platform".to_owned(),
            format!("must be one of {}", PLATFORMS.join(", ")),
        ));
    }
    if token.trim().is_empty() || token.len() > 4096 {
        errors.push((
            "token".to_owned(),
            "must be 1 to 4096 characters".to_owned(),
        ));
    }
    if !errors.is_empty() {
        return Err(DomainError::Invalid {
            field_errors: errors,
        }
        .into());
    }
    let mut conn = ctx.db.conn().await?;
    let row = devices::upsert(
        &mut conn,
        &devices::NewDeviceRow {
            id: Uuid::now_v7(),
            user_id: actor.user_id.into_inner(),
            platform: platform.to_owned(),
            token: token.to_owned(),
        },
    )
    .await?;
    Ok(Device {
        id: row.id,
        platform: row.platform,
        created_at: row.created_at,
    })
}

/// Forgets one of the caller's devices (someone else's answers 404).
pub async fn delete_device(ctx: &Ctx, actor: &Actor, device_id: Uuid) -> Result<()> {
    let mut conn = ctx.db.conn().await?;
    if devices::delete_for_user(&mut conn, actor.user_id.into_inner(), device_id).await? {
        Ok(())
    } else {
        Err(DomainError::NotFound { what: "device" }.into())
    }
}
