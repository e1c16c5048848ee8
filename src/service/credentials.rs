//! Credentials: argon2id password hashes (computed on the blocking pool by the bounded
//! [`PasswordHasher`], which lives in `app::hasher` and is re-exported here: each hash costs
//! tens of milliseconds of CPU and 19 MiB by design), HS256 access tokens carrying the
//! session id, and opaque rotating refresh tokens (`<session id>.<random secret>`, stored as
//! a SHA-256 hash).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

pub use crate::app::hasher::{HashError, HasherSettings, PasswordHasher, hash_password};
use crate::config::Secret;

/// Lifetime of an access token.
pub const ACCESS_TOKEN_TTL: Duration = Duration::from_secs(15 * 60);
/// Lifetime of a session (and of its refresh tokens) without use.
pub const SESSION_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Claims of an access token.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: Uuid,
    /// Session id: checked against the session store on every request.
    pub sid: Uuid,
    /// Issued at (seconds since the epoch).
    pub iat: u64,
    /// Expiry (seconds since the epoch).
    pub exp: u64,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Signs an access token for a session.
pub fn issue_access_token(
    secret: &Secret<String>,
    user_id: Uuid,
    session_id: Uuid,
) -> anyhow::Result<(String, u64)> {
    let iat = now_secs();
    let claims = Claims {
        sub: user_id,
        sid: session_id,
        iat,
        exp: iat + ACCESS_TOKEN_TTL.as_secs(),
    };
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.expose().as_bytes()),
    )?;
    Ok((token, ACCESS_TOKEN_TTL.as_secs()))
}

/// Verifies signature, algorithm (HS256 only: `alg: none` and others are refused) and expiry.
pub fn verify_access_token(secret: &Secret<String>, token: &str) -> Option<Claims> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 5;
    validation.set_required_spec_claims(&["exp", "sub"]);
    jsonwebtoken::decode::<Claims>(
        token,
        &DecodingKey::from_secret(secret.expose().as_bytes()),
        &validation,
    )
    .ok()
    .map(|data| data.claims)
}

/// A new refresh secret: 32 random bytes, hex.
pub fn new_refresh_secret() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// The stored form of a refresh secret.
pub fn hash_refresh_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// The refresh token handed to clients.
pub fn refresh_token(session_id: Uuid, secret: &str) -> String {
    format!("{session_id}.{secret}")
}

/// Splits a refresh token into session id and secret.
pub fn parse_refresh_token(token: &str) -> Option<(Uuid, &str)> {
    let (sid, secret) = token.split_once('.')?;
    let sid = Uuid::parse_str(sid).ok()?;
    (secret.len() == 64 && secret.bytes().all(|b| b.is_ascii_hexdigit())).then_some((sid, secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> Secret<String> {
        Secret::new("k".repeat(40))
    }

    #[test]
    fn access_tokens_round_trip_and_reject_tampering() {
        let (user, sid) = (Uuid::now_v7(), Uuid::now_v7());
        let (token, ttl) = issue_access_token(&secret(), user, sid).unwrap();
        assert_eq!(ttl, ACCESS_TOKEN_TTL.as_secs());
        let claims = verify_access_token(&secret(), &token).unwrap();
        assert_eq!((claims.sub, claims.sid), (user, sid));

        assert!(verify_access_token(&Secret::new("x".repeat(40)), &token).is_none());
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        parts[1] = parts[1].chars().rev().collect();
        assert!(verify_access_token(&secret(), &parts.join(".")).is_none());
    }

    #[test]
    fn alg_none_and_expired_tokens_are_refused() {
        use base64_url as b64;
        let header = b64::encode(br#"{"alg":"none","typ":"JWT"}"#);
        let body = format!(
            r#"{{"sub":"{}","sid":"{}","iat":1,"exp":{}}}"#,
            Uuid::now_v7(),
            Uuid::now_v7(),
            now_secs() + 600
        );
        let unsigned = format!("{header}.{}.", b64::encode(body.as_bytes()));
        assert!(verify_access_token(&secret(), &unsigned).is_none());

        let claims = Claims {
            sub: Uuid::now_v7(),
            sid: Uuid::now_v7(),
            iat: 1,
            exp: 2,
        };
        let expired = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret().expose().as_bytes()),
        )
        .unwrap();
        assert!(verify_access_token(&secret(), &expired).is_none());
    }

    /// Minimal unpadded base64url for building hostile tokens by hand.
    mod base64_url {
        pub fn encode(bytes: &[u8]) -> String {
            const A: &[u8; 64] =
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            let mut out = String::new();
            for chunk in bytes.chunks(3) {
                let b = [
                    chunk[0],
                    *chunk.get(1).unwrap_or(&0),
                    *chunk.get(2).unwrap_or(&0),
                ];
                let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
                let chars = chunk.len() + 1;
                for i in 0..chars {
                    let idx = usize::try_from((n >> (18 - 6 * i)) & 63).unwrap();
                    out.push(char::from(A[idx]));
                }
            }
            out
        }
    }

    #[test]
    fn refresh_tokens_parse() {
        let sid = Uuid::now_v7();
        let secret = new_refresh_secret();
        let token = refresh_token(sid, &secret);
        assert_eq!(parse_refresh_token(&token), Some((sid, secret.as_str())));
        assert_eq!(parse_refresh_token("nope"), None);
        assert_eq!(parse_refresh_token(&format!("{sid}.short")), None);
        assert_ne!(hash_refresh_secret(&secret), secret);
    }
}
