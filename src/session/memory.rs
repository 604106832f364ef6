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
//! - recent keys: openid → the user's last session keys, kept only
//!   `session.previous_key_ttl` after a login. The race it serves (the mini
//!   program called `wx.login` during the phone callback) lasts minutes, so
//!   the index holds recent logins only, not every session.

use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use moka::future::Cache;
use moka::policy::EvictionPolicy;
use tokio::time::Instant;

use super::{FORCE_REFRESH_EVERY, Issued, Login, Session, SessionStore, SessionToken};
use crate::config::SessionConfig;
use crate::error::Error;
use crate::weixin::crypto::SessionKey;

/// At most this many keys per openid: the current one and two previous.
const KEYS_KEPT: usize = 3;

pub struct MemoryStore {
    ttl_secs: u64,
    sessions: Cache<[u8; 16], Session>,
    keys: Cache<Box<str>, Arc<[SessionKey]>>,
    /// Login codes' outcomes: a session, or WeChat's final refusal.
    codes: Cache<Box<str>, Result<Issued, Error>>,
    last_forced: Mutex<Option<Instant>>,
}

impl MemoryStore {
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
            last_forced: Mutex::new(None),
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

    fn revoke_user(&self, openid: &str) -> BoxFuture<'_, Result<u64, Error>> {
        let openid = openid.to_owned();
        async move {
            // A scan: an operator's rare action, not a request's.
            let doomed: Vec<Arc<[u8; 16]>> = self
                .sessions
                .iter()
                .filter(|(_, s)| s.openid() == openid)
                .map(|(k, _)| k)
                .collect();
            for token in &doomed {
                self.sessions.invalidate(&**token).await;
            }
            Ok(doomed.len() as u64)
        }
        .boxed()
    }

    fn record_key(&self, openid: &str, key: SessionKey) -> BoxFuture<'_, Result<(), Error>> {
        let openid: Box<str> = openid.into();
        async move {
            // The update is not atomic across two concurrent logins of one
            // user; losing one of two simultaneous keys only narrows the
            // fallback, it never serves a wrong one.
            let mut keys = vec![key];
            if let Some(prev) = self.keys.get(&openid).await {
                keys.extend(prev.iter().filter(|k| **k != key).take(KEYS_KEPT - 1));
            }
            self.keys.insert(openid, keys.into()).await;
            Ok(())
        }
        .boxed()
    }

    fn recent_keys(&self, openid: &str) -> BoxFuture<'_, Result<Vec<SessionKey>, Error>> {
        let openid: Box<str> = openid.into();
        async move { Ok(self.keys.get(&openid).await.map(|k| k.to_vec()).unwrap_or_default()) }.boxed()
    }

    fn login<'a>(
        &'a self,
        code: &'a str,
        exchange: BoxFuture<'a, Result<Issued, Error>>,
    ) -> BoxFuture<'a, Result<Login, Error>> {
        async move {
            // Concurrent callers share one exchange (moka runs one init per key).
            let entry = self.codes.entry(code.into()).or_insert_with(exchange).await;
            let fresh = entry.is_fresh();
            match entry.into_value() {
                Ok(issued) => Ok(Login { issued, fresh }),
                Err(e) => {
                    if !e.is_final() {
                        // Busy, unreachable...: the next try must call WeChat again.
                        self.codes.invalidate(code).await;
                    }
                    Err(e)
                }
            }
        }
        .boxed()
    }

    fn claim_force_refresh(&self) -> BoxFuture<'_, Result<bool, Error>> {
        async move {
            let mut last = self.last_forced.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            if last.is_some_and(|t| now.duration_since(t) < FORCE_REFRESH_EVERY) {
                return Ok(false);
            }
            *last = Some(now);
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
            store.record_key("o1", *k).await.unwrap();
        }
        store.record_key("o1", keys[3]).await.unwrap();
        assert_eq!(store.recent_keys("o1").await.unwrap(), vec![keys[3], keys[2], keys[1]]);
        assert!(store.recent_keys("o2").await.unwrap().is_empty());
    }
}
