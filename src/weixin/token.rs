//! The access token for getuserphonenumber: WeChat's *stable* token, so a
//! fleet of replicas shares one token instead of invalidating each other's.
//!
//! - Cached until shortly before `expires_in` ([`REFRESH_MARGIN`]).
//! - Single flight: one task fetches while concurrent requests wait for that
//!   fetch (all workers share one provider).
//! - Refreshed ahead of expiry: inside the margin, the first request to see
//!   it refreshes while the others keep using the still-valid token.
//! - After WeChat rejected a token (40001/40014/42001), [`AccessTokenProvider::refresh_after_rejection`]
//!   forces a new one only if the rejected token is still the cached one; if
//!   another request already replaced it, the replacement is returned. A
//!   force refresh is limited at WeChat (about 20 a day, 30 s apart).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::error::Error;
use crate::metrics;
use crate::weixin::client::WeixinClient;

/// Refresh this long before WeChat's expiry (or at half the lifetime, when
/// WeChat gives a short one).
pub const REFRESH_MARGIN: Duration = Duration::from_secs(300);

#[derive(Clone)]
struct Cached {
    token: Arc<str>,
    refresh_at: Instant,
    expires_at: Instant,
}

#[derive(Default)]
pub struct AccessTokenProvider {
    cached: Mutex<Option<Cached>>,
    fetch: tokio::sync::Mutex<()>,
}

impl AccessTokenProvider {
    pub fn new() -> Self {
        Self::default()
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
    pub async fn get(&self, client: &WeixinClient) -> Result<Arc<str>, Error> {
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
                        tracing::warn!(error = %e, "access token refresh failed; the current one is still valid");
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
    pub async fn refresh_after_rejection(&self, client: &WeixinClient, rejected: &str) -> Result<Arc<str>, Error> {
        let _guard = self.fetch.lock().await;
        match self.current() {
            Some(c) if &*c.token != rejected && Instant::now() < c.expires_at => Ok(c.token),
            Some(c) if &*c.token == rejected => self.fetch_and_store(client, true, "rejected").await,
            _ => self.fetch_and_store(client, false, "initial").await,
        }
    }

    async fn fetch_and_store(
        &self,
        client: &WeixinClient,
        force: bool,
        reason: &'static str,
    ) -> Result<Arc<str>, Error> {
        let fetched = client.stable_token(force).await?;
        metrics::access_token_fetch(reason);
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
