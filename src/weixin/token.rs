//! The access token for getuserphonenumber: WeChat's *stable* token, so a
//! fleet of replicas shares one token instead of invalidating each other's.
//!
//! - Cached until shortly before `expires_in` ([`REFRESH_MARGIN`]).
//! - Single flight: one task fetches while concurrent requests wait for that
//!   fetch (all workers share one provider).
//! - Refreshed ahead of expiry: inside the margin, the first request to see
//!   it refreshes while the others keep using the still-valid token.
//! - After WeChat rejected a token (40001/40014/42001),
//!   [`AccessTokenProvider::refresh_after_rejection`] returns the cached
//!   token if another request already replaced the rejected one; otherwise
//!   it first asks for the stable token *without* forcing (another replica
//!   may have refreshed it already), and forces a new one only when WeChat
//!   hands back the very token it rejected, and at most once per 30 s over
//!   every worker and replica ([`SessionStore::claim_force_refresh`]). A
//!   forced refresh is limited at WeChat (about 20 a day, 30 s apart) and
//!   invalidates the old token for every replica that holds it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::apps::App;
use crate::error::Error;
use crate::metrics;
use crate::session::SessionStore;
use crate::weixin::client::{AccessToken, WeixinClient};

/// Where tokens come from: WeChat's stable_token in production, a stub in tests.
pub trait TokenSource {
    /// Fetches a token; `force_refresh` invalidates the current one at WeChat.
    fn fetch(&self, force_refresh: bool) -> impl Future<Output = Result<AccessToken, Error>> + Send;
}

/// One app's tokens from WeChat.
pub struct StableToken<'a> {
    /// The worker's WeChat client that calls stable_token.
    pub client: &'a WeixinClient,
    /// The app whose token it fetches.
    pub app: &'a App,
}

impl TokenSource for StableToken<'_> {
    fn fetch(&self, force_refresh: bool) -> impl Future<Output = Result<AccessToken, Error>> + Send {
        self.client.stable_token(self.app, force_refresh)
    }
}

/// Refresh this long before WeChat's expiry (or at half the lifetime, when
/// WeChat gives a short one).
pub const REFRESH_MARGIN: Duration = Duration::from_secs(300);

#[derive(Clone)]
struct Cached {
    token: Arc<str>,
    refresh_at: Instant,
    expires_at: Instant,
}

/// One app's access token, shared by every worker.
pub struct AccessTokenProvider {
    /// The app's name, for the metrics.
    app: &'static str,
    /// The app's AppID: the forced-refresh claim is per app.
    appid: Box<str>,
    cached: Mutex<Option<Cached>>,
    fetch: tokio::sync::Mutex<()>,
}

impl AccessTokenProvider {
    /// An empty provider for the app named `app` (its metrics label) with
    /// AppID `appid`; the first [`get`](Self::get) fetches.
    pub fn new(app: &'static str, appid: &str) -> Self {
        Self {
            app,
            appid: appid.into(),
            cached: Mutex::default(),
            fetch: tokio::sync::Mutex::default(),
        }
    }

    fn current(&self) -> Option<Cached> {
        self.cached
            .lock()
            .map(|c| c.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    fn store(&self, c: Cached) {
        match self.cached.lock() {
            Ok(mut g) => *g = Some(c),
            Err(p) => *p.into_inner() = Some(c),
        }
    }

    /// A valid token, fetching one if needed.
    pub async fn get(&self, client: &impl TokenSource) -> Result<Arc<str>, Error> {
        let now = Instant::now();
        if let Some(c) = self.current() {
            if now < c.refresh_at {
                return Ok(c.token);
            }
            if now < c.expires_at {
                // Inside the margin: one request refreshes, the rest go on.
                let Ok(_guard) = self.fetch.try_lock() else {
                    return Ok(c.token);
                };
                if self.current().is_some_and(|n| n.token != c.token) {
                    return Ok(self.current().map_or(c.token, |n| n.token));
                }
                return match self.fetch_and_store(client, false, "refresh").await {
                    Ok(t) => Ok(t),
                    Err(e) => {
                        tracing::warn!(app = self.app, error = %e, "access token refresh failed; the current one is still valid");
                        Ok(c.token)
                    }
                };
            }
        }
        let _guard = self.fetch.lock().await;
        if let Some(c) = self.current()
            && Instant::now() < c.refresh_at
        {
            return Ok(c.token);
        }
        self.fetch_and_store(client, false, "initial").await
    }

    /// WeChat rejected `rejected`: returns a token to retry with.
    pub async fn refresh_after_rejection(
        &self,
        client: &impl TokenSource,
        rejected: &str,
        store: &dyn SessionStore,
    ) -> Result<Arc<str>, Error> {
        let _guard = self.fetch.lock().await;
        if let Some(c) = self.current()
            && &*c.token != rejected
            && Instant::now() < c.expires_at
        {
            return Ok(c.token);
        }
        let stable = self.fetch_and_store(client, false, "rejected").await?;
        if &*stable != rejected {
            return Ok(stable);
        }
        if !store.claim_force_refresh(&self.appid).await? {
            return Err(Error::Weixin(
                "WeChat rejected its current access token, and a forced refresh was made less than 30 s ago".into(),
            ));
        }
        tracing::info!(
            app = self.app,
            "WeChat hands back the access token it rejected; forcing a refresh"
        );
        self.fetch_and_store(client, true, "forced").await
    }

    async fn fetch_and_store(
        &self,
        client: &impl TokenSource,
        force: bool,
        reason: &'static str,
    ) -> Result<Arc<str>, Error> {
        let fetched = client.fetch(force).await?;
        metrics::access_token_fetch(self.app, reason);
        let now = Instant::now();
        let life = Duration::from_secs(fetched.expires_in.max(1));
        let margin = REFRESH_MARGIN.min(life / 2);
        self.store(Cached {
            token: fetched.token.clone(),
            refresh_at: now + (life - margin),
            expires_at: now + life,
        });
        Ok(fetched.token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Hands out "t1", "t2"... with the given lifetime, counting fetches.
    #[derive(Default)]
    struct Stub {
        fetches: AtomicU64,
        forced: AtomicU64,
        expires_in: u64,
    }

    impl TokenSource for Stub {
        fn fetch(&self, force: bool) -> impl Future<Output = Result<AccessToken, Error>> + Send {
            let n = self.fetches.fetch_add(1, Ordering::SeqCst) + 1;
            if force {
                self.forced.fetch_add(1, Ordering::SeqCst);
            }
            let expires_in = self.expires_in;
            async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                Ok(AccessToken {
                    token: format!("t{n}").into(),
                    expires_in,
                })
            }
        }
    }

    fn stub(expires_in: u64) -> Stub {
        Stub {
            expires_in,
            ..Stub::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_one_fetch_and_the_token_is_cached() {
        let (p, s) = (AccessTokenProvider::new("default", "wxtest"), stub(7200));
        let all = futures_util::future::join_all((0..50).map(|_| p.get(&s))).await;
        assert!(all.iter().all(|t| t.as_ref().is_ok_and(|t| &**t == "t1")));
        tokio::time::advance(Duration::from_secs(7200 - 301)).await;
        assert_eq!(&*p.get(&s).await.unwrap(), "t1");
        assert_eq!(s.fetches.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_token_is_refreshed_ahead_of_expiry() {
        let (p, s) = (AccessTokenProvider::new("default", "wxtest"), stub(7200));
        assert_eq!(&*p.get(&s).await.unwrap(), "t1");
        // Inside the margin, before expiry: refreshed, without waiting for expiry.
        tokio::time::advance(Duration::from_secs(7200 - 200)).await;
        assert_eq!(&*p.get(&s).await.unwrap(), "t2");
        assert_eq!(s.forced.load(Ordering::SeqCst), 0);
        // Past expiry with no refresh, a caller waits for a new one.
        tokio::time::advance(Duration::from_secs(7201)).await;
        assert_eq!(&*p.get(&s).await.unwrap(), "t3");
    }

    /// Hands out `t1` until told to force, as WeChat's stable token does.
    #[derive(Default)]
    struct StableStub {
        fetches: AtomicU64,
        forced: AtomicU64,
    }

    impl TokenSource for StableStub {
        fn fetch(&self, force: bool) -> impl Future<Output = Result<AccessToken, Error>> + Send {
            self.fetches.fetch_add(1, Ordering::SeqCst);
            let generation = if force {
                self.forced.fetch_add(1, Ordering::SeqCst) + 1
            } else {
                self.forced.load(Ordering::SeqCst)
            };
            async move {
                Ok(AccessToken {
                    token: format!("t{}", generation + 1).into(),
                    expires_in: 7200,
                })
            }
        }
    }

    fn store() -> crate::session::memory::MemoryStore {
        crate::session::memory::MemoryStore::new(&crate::config::SessionConfig::default())
    }

    #[tokio::test(start_paused = true)]
    async fn a_rejection_first_asks_without_forcing() {
        let (p, s, store) = (AccessTokenProvider::new("default", "wxtest"), stub(7200), store());
        let t1 = p.get(&s).await.unwrap();
        // The stub hands a new token on every fetch: another replica had
        // refreshed already, so no force is needed.
        let all = futures_util::future::join_all((0..9).map(|_| p.refresh_after_rejection(&s, &t1, &store))).await;
        assert!(all.iter().all(|t| t.as_ref().is_ok_and(|t| &**t == "t2")));
        assert_eq!(s.forced.load(Ordering::SeqCst), 0, "nine rejections, no force");
        assert_eq!(s.fetches.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_force_only_when_wechat_hands_back_the_rejected_token_and_once_per_30_s() {
        let (p, s, store) = (
            AccessTokenProvider::new("default", "wxtest"),
            StableStub::default(),
            store(),
        );
        let t1 = p.get(&s).await.unwrap();
        assert_eq!(&*t1, "t1");
        let all = futures_util::future::join_all((0..9).map(|_| p.refresh_after_rejection(&s, &t1, &store))).await;
        assert!(all.iter().all(|t| t.as_ref().is_ok_and(|t| &**t == "t2")));
        assert_eq!(s.forced.load(Ordering::SeqCst), 1, "one force for nine rejections");
        // t2 rejected within 30 s: the stable token is t2 again, and no second force.
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(matches!(
            p.refresh_after_rejection(&s, "t2", &store).await,
            Err(Error::Weixin(_))
        ));
        assert_eq!(s.forced.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_secs(21)).await;
        assert_eq!(&*p.refresh_after_rejection(&s, "t2", &store).await.unwrap(), "t3");
        assert_eq!(s.forced.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_lifetime_refreshes_at_half_life() {
        let (p, s) = (AccessTokenProvider::new("default", "wxtest"), stub(60));
        assert_eq!(&*p.get(&s).await.unwrap(), "t1");
        tokio::time::advance(Duration::from_secs(29)).await;
        assert_eq!(&*p.get(&s).await.unwrap(), "t1");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(&*p.get(&s).await.unwrap(), "t2");
    }
}
