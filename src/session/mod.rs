//! Sessions: what wxgate remembers about a user after a login.
//!
//! A session is named by a [`SessionToken`], 128 random bits from the OS
//! CSPRNG, written as 22 URL-safe base64 characters. It holds the user's
//! openid, unionid, WeChat `session_key` (which never leaves wxgate) and, with
//! `phone.remember`, the phone headers.
//!
//! Stores sit behind [`SessionStore`] so that a shared store (Redis, for
//! several replicas behind one load balancer) can replace the embedded moka
//! one ([`memory::MemoryStore`]) without touching the layers.

pub mod memory;

use std::fmt;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::future::BoxFuture;

use crate::error::Error;
use crate::weixin::crypto::SessionKey;

/// The name of a session: 16 random bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionToken([u8; 16]);

impl SessionToken {
    /// A new token from the OS-seeded CSPRNG.
    pub fn generate() -> Self {
        Self(rand::random())
    }

    /// Parses a token as a client sends it; `None` for anything malformed.
    pub fn parse(text: &[u8]) -> Option<Self> {
        if text.len() != 22 {
            return None;
        }
        let mut out = [0u8; 16];
        match URL_SAFE_NO_PAD.decode_slice(text, &mut out) {
            Ok(16) => Some(Self(out)),
            _ => None,
        }
    }

    /// The token as the client receives it. Goes to its own client only.
    pub fn to_text(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionToken([redacted])")
    }
}

/// The phone headers established for a session (`phone.remember`).
#[derive(Clone, PartialEq, Eq)]
pub struct PhoneNumber {
    pub phone_number: Box<str>,
    pub pure_phone_number: Box<str>,
    pub country_code: Box<str>,
}

impl fmt::Debug for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PhoneNumber")
            .field("phone_number", &crate::weixin::crypto::mask_phone(&self.phone_number))
            .field("country_code", &self.country_code)
            .finish()
    }
}

/// One logged-in user.
#[derive(Clone)]
pub struct Session {
    pub openid: Box<str>,
    pub unionid: Option<Box<str>>,
    pub session_key: SessionKey,
    /// Unix seconds of the login.
    pub created_at: u64,
    /// Boxed: most sessions never get one, and a million sessions should not
    /// each carry its room.
    pub phone: Option<Box<PhoneNumber>>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("openid", &self.openid)
            .field("unionid", &self.unionid)
            .field("session_key", &self.session_key)
            .field("created_at", &self.created_at)
            .field("phone", &self.phone)
            .finish()
    }
}

/// Where sessions live. Every method may fail (a shared store is a network
/// away); the embedded store never does.
pub trait SessionStore: Send + Sync + 'static {
    /// The live session named by `token`, if any.
    fn get(&self, token: SessionToken) -> BoxFuture<'_, Result<Option<Arc<Session>>, Error>>;

    /// Stores a new session, or replaces one keeping its original expiry.
    fn insert(&self, token: SessionToken, session: Arc<Session>) -> BoxFuture<'_, Result<(), Error>>;

    /// Records a login's session key as `openid`'s newest. Keeps the user's
    /// two previous keys, for `session.previous_key_ttl`.
    fn record_key(&self, openid: &str, key: SessionKey) -> BoxFuture<'_, Result<(), Error>>;

    /// `openid`'s recent session keys, newest first (at most three: the
    /// current one and the two before it).
    fn recent_keys(&self, openid: &str) -> BoxFuture<'_, Result<Vec<SessionKey>, Error>>;

    /// Live sessions, for the metrics (may first settle pending evictions).
    fn count(&self) -> BoxFuture<'_, u64>;
}

/// Unix time in seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_garbage() {
        let t = SessionToken::generate();
        let text = t.to_text();
        assert_eq!(text.len(), 22);
        assert!(
            text.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(SessionToken::parse(text.as_bytes()), Some(t));
        assert_ne!(SessionToken::generate(), t);
        assert_eq!(SessionToken::parse(b""), None);
        assert_eq!(SessionToken::parse(b"!!!!!!!!!!!!!!!!!!!!!!"), None);
        assert_eq!(SessionToken::parse(&text.as_bytes()[..21]), None);
        assert!(!format!("{t:?}").contains(&text));
    }
}
