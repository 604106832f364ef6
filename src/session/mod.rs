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
pub mod redis;

use std::fmt;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::future::BoxFuture;

use crate::apps::App;
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

    /// The token's 16 random bytes, what stores key (and seal) sessions by.
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
    /// The number, with its country code for numbers outside mainland China
    /// (`headers.phone_number`).
    pub phone_number: Box<str>,
    /// The number without its country code (`headers.pure_phone_number`).
    pub pure_phone_number: Box<str>,
    /// The country code (`headers.country_code`).
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

/// The longest openid a session holds inline. WeChat's openids are 28
/// characters; a longer one goes to the session's [`Extra`].
const INLINE_OPENID: usize = 28;

/// One logged-in user.
///
/// 56 bytes, cloned by copying: a session is read on every request that
/// carries a token, and a million of them sit in the store. The openid is
/// held inline; what most sessions never have (a unionid, a remembered phone
/// number, an openid longer than WeChat's) is in one shared allocation.
#[derive(Clone)]
pub struct Session {
    session_key: SessionKey,
    /// The openid, padded with NULs, when it fits (openids are visible ASCII,
    /// so never contain one); all zero when it is in `extra`.
    openid: [u8; INLINE_OPENID],
    /// Unix seconds of the login (a `u32` lasts until 2106).
    created_at: u32,
    extra: Option<Arc<Extra>>,
}

#[derive(Default, Clone)]
struct Extra {
    /// The app's index among the configured mini programs; 0, the first,
    /// needs no allocation.
    app: u16,
    openid: Option<Box<str>>,
    unionid: Option<Box<str>>,
    phone: Option<PhoneNumber>,
}

impl Session {
    /// A session of the first app (see [`in_app`](Self::in_app)) for a login
    /// at `created_at` (Unix seconds), with no phone number.
    pub fn new(openid: &str, unionid: Option<&str>, session_key: SessionKey, created_at: u64) -> Self {
        let mut inline = [0u8; INLINE_OPENID];
        let mut extra = Extra {
            unionid: unionid.map(Into::into),
            ..Extra::default()
        };
        if openid.len() <= INLINE_OPENID && !openid.as_bytes().contains(&0) {
            inline[..openid.len()].copy_from_slice(openid.as_bytes());
        } else {
            extra.openid = Some(openid.into());
        }
        Self {
            session_key,
            openid: inline,
            created_at: u32::try_from(created_at).unwrap_or(u32::MAX),
            extra: (extra.openid.is_some() || extra.unionid.is_some()).then(|| Arc::new(extra)),
        }
    }

    /// The same session with `phone` remembered.
    pub fn with_phone(&self, phone: PhoneNumber) -> Self {
        let mut extra = self.extra.as_deref().cloned().unwrap_or_default();
        extra.phone = Some(phone);
        Self {
            extra: Some(Arc::new(extra)),
            ..self.clone()
        }
    }

    /// The same session, of the app with index `app` (several mini programs).
    pub fn in_app(self, app: u16) -> Self {
        if app == self.app() {
            return self;
        }
        let mut extra = self.extra.as_deref().cloned().unwrap_or_default();
        extra.app = app;
        Self {
            extra: Some(Arc::new(extra)),
            ..self
        }
    }

    /// The index of the app this session logged in to.
    pub fn app(&self) -> u16 {
        self.extra.as_deref().map_or(0, |e| e.app)
    }

    /// The user's openid in the session's app.
    pub fn openid(&self) -> &str {
        match self.extra.as_deref().and_then(|e| e.openid.as_deref()) {
            Some(long) => long,
            None => {
                let len = self.openid.iter().position(|&b| b == 0).unwrap_or(INLINE_OPENID);
                // Copied from a `&str` up to its end: always valid.
                std::str::from_utf8(&self.openid[..len]).unwrap_or_default()
            }
        }
    }

    /// The user's unionid, when WeChat gave one at the login.
    pub fn unionid(&self) -> Option<&str> {
        self.extra.as_deref()?.unionid.as_deref()
    }

    /// The phone headers remembered for this session (`phone.remember`).
    pub fn phone(&self) -> Option<&PhoneNumber> {
        self.extra.as_deref()?.phone.as_ref()
    }

    /// The WeChat `session_key` of the login, which decrypts the user's
    /// `encryptedData`; never leaves wxgate.
    pub fn session_key(&self) -> &SessionKey {
        &self.session_key
    }

    /// Unix seconds of the login.
    pub fn created_at(&self) -> u64 {
        self.created_at.into()
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("openid", &self.openid())
            .field("unionid", &self.unionid())
            .field("session_key", &self.session_key)
            .field("created_at", &self.created_at)
            .field("phone", &self.phone())
            .finish()
    }
}

/// A login code's outcome: the session it opened, under its token.
#[derive(Clone, Debug)]
pub struct Issued {
    /// The token handed to the client.
    pub token: SessionToken,
    /// The session it names.
    pub session: Session,
}

/// What [`SessionStore::login`] hands back: the code's session, and whether
/// this call was the one that exchanged the code (`false`: a retry, served
/// from the code cache).
#[derive(Clone, Debug)]
pub struct Login {
    /// The code's session and its token.
    pub issued: Issued,
    /// This call exchanged the code with WeChat (`false`: a retry, served
    /// from the code cache).
    pub fresh: bool,
}

/// Everything wxgate shares between requests, workers and (with a shared
/// store) replicas: sessions, the login-code cache, each user's recent
/// session keys, and who may force an access-token refresh.
///
/// Every method may fail with [`Error::StoreUnavailable`] (a shared store is
/// a network away); the embedded store never does. A failure is never
/// turned into "no session": a user who is logged in is never silently made
/// anonymous.
pub trait SessionStore: Send + Sync + 'static {
    /// The live session named by `token`, if any.
    fn get(&self, token: &SessionToken) -> BoxFuture<'_, Result<Option<Session>, Error>>;

    /// Stores a new session, or replaces one keeping its expiry (which is
    /// always `created_at + session.ttl`).
    fn insert(&self, token: &SessionToken, session: &Session) -> BoxFuture<'_, Result<(), Error>>;

    /// Ends the session named by `token`, everywhere.
    fn revoke(&self, token: &SessionToken) -> BoxFuture<'_, Result<(), Error>>;

    /// Ends every session of `openid` in `app`; returns how many there were.
    fn revoke_user<'a>(&'a self, app: &'a App, openid: &'a str) -> BoxFuture<'a, Result<u64, Error>>;

    /// Records a login's session key as the newest of `openid` in the app
    /// `appid`. Keeps the user's two previous keys, for
    /// `session.previous_key_ttl`.
    fn record_key<'a>(&'a self, appid: &'a str, openid: &'a str, key: SessionKey) -> BoxFuture<'a, Result<(), Error>>;

    /// The recent session keys of `openid` in the app `appid`, newest first
    /// (at most three: the current one and the two before it).
    fn recent_keys<'a>(&'a self, appid: &'a str, openid: &'a str) -> BoxFuture<'a, Result<Vec<SessionKey>, Error>>;

    /// The outcome of the login code `code` of the app `appid`:
    /// `exchange`'s, run once for all concurrent and later callers within
    /// `session.code_ttl`. A final failure (WeChat refused the code) is
    /// remembered like a success, so a repeated bad code costs no WeChat
    /// call; any other failure is not, so a retry may pass. Codes are kept
    /// per app: a code sent for another app never meets this one's outcome.
    fn login<'a>(
        &'a self,
        appid: &'a str,
        code: &'a str,
        exchange: BoxFuture<'a, Result<Issued, Error>>,
    ) -> BoxFuture<'a, Result<Login, Error>>;

    /// Whether this caller may force the access-token refresh of the app
    /// `appid` now: at most one every [`FORCE_REFRESH_EVERY`] per app, over
    /// every worker (and replica).
    fn claim_force_refresh<'a>(&'a self, appid: &'a str) -> BoxFuture<'a, Result<bool, Error>>;

    /// Live sessions, for the metrics (may first settle pending evictions);
    /// `None` when the store cannot tell cheaply.
    fn count(&self) -> BoxFuture<'_, Option<u64>>;
}

/// Where sessions live, process-wide: each worker (and the admin listener)
/// takes its own handle ([`Stores::handle`]), so that a shared store's
/// connection lives on the runtime that uses it.
#[derive(Clone)]
pub enum Stores {
    /// `session.store = "memory"`: one store in this process, shared by every worker.
    Memory(Arc<memory::MemoryStore>),
    /// `session.store = "redis"`: what the workers' Redis handles share.
    Redis(Arc<redis::RedisShared>),
}

impl Stores {
    /// A handle for the calling thread's runtime.
    pub fn handle(&self) -> Arc<dyn SessionStore> {
        match self {
            Stores::Memory(m) => m.clone(),
            Stores::Redis(r) => r.handle(),
        }
    }

    /// What the store is, for the start-up line.
    pub fn describe(&self) -> &'static str {
        match self {
            Stores::Memory(_) => "memory",
            Stores::Redis(_) => "redis",
        }
    }

    /// Whether the store answers (the memory store always does).
    pub fn is_up(&self) -> bool {
        match self {
            Stores::Memory(_) => true,
            Stores::Redis(r) => r.health().is_up(),
        }
    }
}

/// WeChat allows a forced access-token refresh about 20 times a day, 30 s apart.
pub const FORCE_REFRESH_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

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

    fn phone() -> PhoneNumber {
        PhoneNumber {
            phone_number: "13800006666".into(),
            pure_phone_number: "13800006666".into(),
            country_code: "86".into(),
        }
    }

    #[test]
    fn a_session_stays_small() {
        // What a million cached sessions cost (BENCHMARKS.md, "Memory").
        assert!(std::mem::size_of::<Session>() <= 56);
    }

    #[test]
    fn openids_of_any_length_round_trip() {
        let key = SessionKey::random();
        for openid in [
            "o",
            "oABCDEFGHIJKLMNOPQRSTUVWXYZ0",
            "oABCDEFGHIJKLMNOPQRSTUVWXYZ01",
            &"x".repeat(128),
        ] {
            let s = Session::new(openid, None, key, 1_700_000_000);
            assert_eq!(s.openid(), openid);
            assert_eq!(s.unionid(), None);
            assert_eq!(s.created_at(), 1_700_000_000);
            assert_eq!(*s.session_key(), key);
            let remembered = s.with_phone(phone());
            assert_eq!(remembered.openid(), openid);
            assert_eq!(remembered.phone(), Some(&phone()));
        }
    }

    #[test]
    fn a_remembered_phone_keeps_the_rest() {
        let key = SessionKey::random();
        let s = Session::new("o_long_enough_to_be_real_123", Some("union1"), key, 42);
        assert_eq!(s.phone(), None);
        let remembered = s.with_phone(phone());
        assert_eq!(remembered.openid(), "o_long_enough_to_be_real_123");
        assert_eq!(remembered.unionid(), Some("union1"));
        assert_eq!(*remembered.session_key(), key);
        assert_eq!(remembered.created_at(), 42);
        assert_eq!(remembered.phone(), Some(&phone()));
        assert_eq!(remembered.app(), 0);
        let other_app = remembered.clone().in_app(3);
        assert_eq!(
            (other_app.app(), other_app.unionid(), other_app.phone()),
            (3, Some("union1"), Some(&phone()))
        );
        assert_eq!(
            other_app.with_phone(phone()).app(),
            3,
            "the app survives a remembered phone"
        );
        // The original is untouched.
        assert_eq!(s.phone(), None);
        assert!(!format!("{remembered:?}").contains("13800006666"));
    }
}
