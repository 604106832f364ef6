//! The embedded session store: moka caches in this process.
//!
//! - sessions: token → [`Session`] (56 bytes, held by value), bounded by `session.max_entries`
//!   (the least recently used evicted first) and expiring `session.ttl`
//!   after the login. The policy is LRU, not moka's default TinyLFU: TinyLFU
//!   may refuse a new entry when the cache is full and its old entries are
//!   read more often, and a refused session is a user who just logged in
//!   and is told at once to log in again.
//!   Replacing a session (to remember a phone number) keeps its deadline.
//!   The deadline is checked on every read (a session past it is removed and
//!   never served); moka itself drops sessions idle for a whole `ttl`. A
//!   per-entry expiry in moka would do the same at about 42 more bytes per
//!   session (measured with `examples/session_memory.rs`).
//! - recent keys: (app, openid) → the user's last session keys, kept only
//!   `session.previous_key_ttl` after a login. The race it serves (the mini
//!   program called `wx.login` during the phone callback) lasts minutes, so
//!   the index holds recent logins only, not every session.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use moka::future::Cache;
use moka::policy::EvictionPolicy;
use tokio::time::Instant;

use super::{FORCE_REFRESH_EVERY, Issued, Login, Session, SessionStore, SessionToken};
use crate::apps::App;
use crate::config::SessionConfig;
use crate::error::Error;
use crate::weixin::crypto::SessionKey;

/// At most this many keys per openid: the current one and two previous.
const KEYS_KEPT: usize = 3;

/// (appid, openid) or (appid, code): what is kept per app.
type PerApp = (Box<str>, Box<str>);

/// The embedded store (`session.store = "memory"`): one per process, for a
/// single replica; a restart logs everyone out.
pub struct MemoryStore {
    ttl_secs: u64,
    sessions: Cache<[u8; 16], Session>,
    /// (appid, openid) → keys.
    keys: Cache<PerApp, Arc<[SessionKey]>>,
    /// (appid, code) → the code's outcome: a session, or WeChat's final refusal.
    codes: Cache<PerApp, Result<Issued, Error>>,
    /// Each app's last forced token refresh.
    last_forced: Mutex<HashMap<Box<str>, Instant>>,
}

impl MemoryStore {
    /// An empty store sized and timed by `[session]` (`max_entries`, `ttl`,
    /// `code_ttl`, `previous_key_ttl`).
    pub fn new(config: &SessionConfig) -> Self {
        Self {
            ttl_secs: config.ttl.get().as_secs(),
            sessions: Cache::builder()
                .max_capacity(config.max_entries)
                .eviction_policy(EvictionPolicy::lru())
                .time_to_idle(config.ttl.get())
                .build(),
            keys: Cache::builder()
                .max_capacity(config.max_entries)
                .eviction_policy(EvictionPolicy::lru())
                .time_to_live(config.previous_key_ttl.get())
                .build(),
            codes: Cache::builder()
                .max_capacity(config.max_entries)
                .time_to_live(config.code_ttl.get())
                .build(),
            last_forced: Mutex::new(HashMap::new()),
        }
    }
}

impl SessionStore for MemoryStore {
    fn get(&self, token: &SessionToken) -> BoxFuture<'_, Result<Option<Session>, Error>> {
        let token = *token.as_bytes();
        async move {
            match self.sessions.get(&token).await {
                Some(s) if super::unix_now().saturating_sub(s.created_at()) >= self.ttl_secs => {
                    self.sessions.invalidate(&token).await;
                    Ok(None)
                }
                found => Ok(found),
            }
        }
        .boxed()
    }

    fn insert(&self, token: &SessionToken, session: &Session) -> BoxFuture<'_, Result<(), Error>> {
        let (token, session) = (*token.as_bytes(), session.clone());
        async move {
            self.sessions.insert(token, session).await;
            Ok(())
        }
        .boxed()
    }

    fn revoke(&self, token: &SessionToken) -> BoxFuture<'_, Result<(), Error>> {
        let token = *token.as_bytes();
        async move {
            self.sessions.invalidate(&token).await;
            Ok(())
        }
        .boxed()
    }

    fn revoke_user<'a>(&'a self, app: &'a App, openid: &'a str) -> BoxFuture<'a, Result<u64, Error>> {
        async move {
            // A scan: an operator's rare action, not a request's.
            let doomed: Vec<Arc<[u8; 16]>> = self
                .sessions
                .iter()
                .filter(|(_, s)| s.app() == app.index && s.openid() == openid)
                .map(|(k, _)| k)
                .collect();
            for token in &doomed {
                self.sessions.invalidate(&**token).await;
            }
            Ok(doomed.len() as u64)
        }
        .boxed()
    }

    fn record_key<'a>(&'a self, appid: &'a str, openid: &'a str, key: SessionKey) -> BoxFuture<'a, Result<(), Error>> {
        let user: PerApp = (appid.into(), openid.into());
        async move {
            // The update is not atomic across two concurrent logins of one
            // user; losing one of two simultaneous keys only narrows the
            // fallback, it never serves a wrong one.
            let mut keys = vec![key];
            if let Some(prev) = self.keys.get(&user).await {
                keys.extend(prev.iter().filter(|k| **k != key).take(KEYS_KEPT - 1));
            }
            self.keys.insert(user, keys.into()).await;
            Ok(())
        }
        .boxed()
    }

    fn recent_keys<'a>(&'a self, appid: &'a str, openid: &'a str) -> BoxFuture<'a, Result<Vec<SessionKey>, Error>> {
        let user: PerApp = (appid.into(), openid.into());
        async move { Ok(self.keys.get(&user).await.map(|k| k.to_vec()).unwrap_or_default()) }.boxed()
    }

    fn login<'a>(
        &'a self,
        appid: &'a str,
        code: &'a str,
        exchange: BoxFuture<'a, Result<Issued, Error>>,
    ) -> BoxFuture<'a, Result<Login, Error>> {
        async move {
            let key: PerApp = (appid.into(), code.into());
            // Concurrent callers share one exchange (moka runs one init per key).
            let entry = self.codes.entry(key.clone()).or_insert_with(exchange).await;
            let fresh = entry.is_fresh();
            match entry.into_value() {
                Ok(issued) => Ok(Login { issued, fresh }),
                Err(e) => {
                    if !e.is_final() {
                        // Busy, unreachable...: the next try must call WeChat again.
                        self.codes.invalidate(&key).await;
                    }
                    Err(e)
                }
            }
        }
        .boxed()
    }

    fn claim_force_refresh<'a>(&'a self, appid: &'a str) -> BoxFuture<'a, Result<bool, Error>> {
        async move {
            let mut last = self.last_forced.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            if last
                .get(appid)
                .is_some_and(|t| now.duration_since(*t) < FORCE_REFRESH_EVERY)
            {
                return Ok(false);
            }
            last.insert(appid.into(), now);
            Ok(true)
        }
        .boxed()
    }

    fn count(&self) -> BoxFuture<'_, Option<u64>> {
        async move {
            // moka counts lazily: settle pending inserts and expiries first.
            self.sessions.run_pending_tasks().await;
            Some(self.sessions.entry_count())
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HumanDuration;

    fn session(openid: &str, key: SessionKey, created_at: u64) -> Session {
        Session::new(openid, None, key, created_at)
    }

    #[tokio::test]
    async fn sessions_are_found_by_token_only() {
        let store = MemoryStore::new(&SessionConfig::default());
        let t = SessionToken::generate();
        store
            .insert(&t, &session("o1", SessionKey::random(), super::super::unix_now()))
            .await
            .unwrap();
        assert_eq!(store.get(&t).await.unwrap().unwrap().openid(), "o1");
        assert!(store.get(&SessionToken::generate()).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_full_store_keeps_new_logins_and_evicts_the_least_recently_used() {
        let config = SessionConfig {
            max_entries: 50,
            ..SessionConfig::default()
        };
        let store = MemoryStore::new(&config);
        let now = super::super::unix_now();
        let old: Vec<SessionToken> = (0..50).map(|_| SessionToken::generate()).collect();
        for t in &old {
            store
                .insert(t, &session("old", SessionKey::random(), now))
                .await
                .unwrap();
        }
        // The old users are busy: each session is read many times.
        for _ in 0..20 {
            for t in &old {
                store.get(t).await.unwrap();
            }
        }
        // New users log in while the store is full: each must keep its session.
        for i in 0..10 {
            let t = SessionToken::generate();
            store
                .insert(&t, &session("new", SessionKey::random(), now))
                .await
                .unwrap();
            store.sessions.run_pending_tasks().await;
            assert!(store.get(&t).await.unwrap().is_some(), "new login {i} was refused");
        }
        assert!(store.count().await.unwrap() <= 50);
    }

    #[tokio::test]
    async fn sessions_expire_ttl_after_their_creation() {
        let config = SessionConfig {
            ttl: HumanDuration::secs(3600),
            ..SessionConfig::default()
        };
        let store = MemoryStore::new(&config);
        let t = SessionToken::generate();
        // Created more than a ttl ago: already expired when stored.
        store
            .insert(
                &t,
                &session("o1", SessionKey::random(), super::super::unix_now() - 7200),
            )
            .await
            .unwrap();
        assert!(store.get(&t).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn recent_keys_keep_the_last_three_newest_first() {
        let store = MemoryStore::new(&SessionConfig::default());
        let keys: Vec<SessionKey> = (0..4).map(|_| SessionKey::random()).collect();
        for k in &keys {
            store.record_key("wxa", "o1", *k).await.unwrap();
        }
        store.record_key("wxa", "o1", keys[3]).await.unwrap();
        assert_eq!(
            store.recent_keys("wxa", "o1").await.unwrap(),
            vec![keys[3], keys[2], keys[1]]
        );
        assert!(store.recent_keys("wxa", "o2").await.unwrap().is_empty());
        // Another app's user of the same openid has a history of their own.
        assert!(store.recent_keys("wxb", "o1").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn codes_force_claims_and_revocations_are_per_app() {
        use futures_util::FutureExt;
        let store = MemoryStore::new(&SessionConfig::default());
        let now = super::super::unix_now();
        let issued = |app: u16| Issued {
            token: SessionToken::generate(),
            session: session("o1", SessionKey::random(), now).in_app(app),
        };
        let a = store.login("wxa", "c1", async { Ok(issued(0)) }.boxed()).await.unwrap();
        let b = store.login("wxb", "c1", async { Ok(issued(1)) }.boxed()).await.unwrap();
        assert!(a.fresh && b.fresh, "one code string, two apps: two exchanges");
        assert_ne!(a.issued.token, b.issued.token);
        assert!(store.claim_force_refresh("wxa").await.unwrap());
        assert!(store.claim_force_refresh("wxb").await.unwrap());
        assert!(!store.claim_force_refresh("wxa").await.unwrap());
        for i in [&a, &b] {
            store.insert(&i.issued.token, &i.issued.session).await.unwrap();
        }
        let app_b = App::new(1, "b", "wxb", crate::config::Secret::new("s"));
        assert_eq!(store.revoke_user(&app_b, "o1").await.unwrap(), 1);
        assert!(
            store.get(&a.issued.token).await.unwrap().is_some(),
            "app A's session stays"
        );
        assert!(store.get(&b.issued.token).await.unwrap().is_none());
    }
}
