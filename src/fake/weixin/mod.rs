//! A fake `api.weixin.qq.com`: the four endpoints wxgate calls, driven by the codes you send.
//!
//! It ships in the product (`wxgate fake-weixin --listen ADDR --appid .. --secret ..`, or
//! `--app wxA:secretA --app wxB:secretB` for several mini programs) so that
//! users can test their backend end to end in CI without WeChat, and wxgate's own integration
//! tests run it in-process ([`FakeWeixin::spawn_local`]). It never panics on any input, answers
//! WeChat's endpoints with JSON labelled `Content-Type: text/plain` (as the real server does),
//! and keeps everything in memory.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use wxgate::fake::FakeWeixin;
//!
//! let fake = FakeWeixin::new("wx0123456789abcdef", "the-app-secret");
//! let addr = fake.spawn_local().await?;
//! // Point wxgate's WeChat base URL at http://{addr}; a mini program "logging in" as alice
//! // sends the code "alice" (or "alice.1", "alice.2" ... for later logins).
//! # Ok(()) }
//! ```
//!
//! # Login codes (`GET /sns/jscode2session`)
//!
//! The query must carry one of the fake's apps' `appid` (else errcode 40013) and that app's
//! `secret` (else 40125),
//! `grant_type=authorization_code` (else 40002) and a non-empty `js_code` (else 40029). The
//! `js_code` is read as follows:
//!
//! | code | answer |
//! |---|---|
//! | `<user>` or `<user>.<nonce>` | success: `{"openid", "session_key"}`, plus `"unionid"` when `<user>` starts with `union` |
//! | `fail:<errcode>[:<anything>]` | `{"errcode": <errcode>, "errmsg": ...}`, HTTP 200 (e.g. `fail:40226`, `fail:45011`, `fail:-1`) |
//! | `busy:<n>:<rest>` | errcode -1 ("system error") the first `n` times this exact code is presented, then as `<rest>` |
//! | `slow:<millis>:<rest>` | waits `<millis>` ms, then as `<rest>` |
//! | `garbage[:<anything>]` | HTTP 200 with the body `<html>not json</html>` |
//! | `http:<status>[:<anything>]` | that HTTP status (200..=599) with an HTML body |
//!
//! - `<user>` is everything before the first `.`; it must not be empty. Its openid is
//!   [`FakeWeixin::openid_for`]`(user)` (`oFAKE<user>`), its unionid `UFAKE<user>`.
//! - Each exact code succeeds once per app; presenting it again answers 40163 ("code been
//!   used").
//!   Failures (`fail:`, `busy:` while busy, `garbage`, `http:`) do not use the code up.
//! - Every successful login issues a new random `session_key` and makes it the user's current
//!   key in that app ([`FakeWeixin::session_key`], [`FakeWeixin::session_key_in`]);
//!   `/__fake/mint` encrypts under it.
//! - With several apps, a user has one openid in all of them (WeChat's differ per app; the same
//!   one is the harder test of wxgate keeping apps apart), and a session key per app.
//! - `slow:` and `busy:` nest and combine: `slow:300:busy:2:alice.7`.
//! - A malformed directive (`busy:x:alice`, `fail:abc`, `http:99`) answers 40029.
//!
//! # Access tokens
//!
//! - `GET /cgi-bin/token?grant_type=client_credential&appid=&secret=` issues a new random token
//!   on every call: `{"access_token", "expires_in": 7200}`. Earlier ones stay valid for their
//!   7200 s.
//! - `POST /cgi-bin/stable_token` with `{"grant_type": "client_credential", "appid", "secret",
//!   "force_refresh": false}` returns the current stable token (created on first use) and the
//!   seconds it has left. `force_refresh: true` replaces it at once: the old one is invalid from
//!   then on. Each app has its own stable token. Bad JSON answers 47001, a wrong `grant_type` 40002, a wrong appid/secret
//!   40013/40125.
//! - [`FakeWeixin::expire_access_tokens`] (or `POST /__fake/expire_tokens`) invalidates every
//!   token issued so far: the next use answers 40001, and the next `stable_token` call issues a
//!   new one.
//!
//! # Phone codes (`POST /wxa/business/getuserphonenumber?access_token=T`, body `{"code": ".."}`)
//!
//! A missing, unknown or expired token answers 40001. A body that is not a JSON object answers
//! 47001; a missing `code` 40029. Then the code is read:
//!
//! | code | answer |
//! |---|---|
//! | `phone:<pure>[:<countryCode>][.<nonce>]` | success; `countryCode` a JSON number (default 86) |
//! | `phonestr:<pure>[:<countryCode>][.<nonce>]` | the same with `countryCode` a JSON string (`"86"`) |
//! | `badphone:<value>` | success shape, `phoneNumber` and `purePhoneNumber` are `<value>` verbatim |
//! | `fail:`, `busy:`, `slow:`, `garbage`, `http:` | as for login codes |
//! | anything else | 40029 |
//!
//! Success is `{"errcode": 0, "errmsg": "ok", "phone_info": {"phoneNumber", "purePhoneNumber",
//! "countryCode", "watermark": {"timestamp": <now>, "appid": <the token's app's appid>}}}` where
//! `phoneNumber` is `<pure>` for country code 86 and `+<countryCode><pure>` otherwise.
//! `<pure>` is 1 to 20 digits, `<countryCode>` 1 to 4 digits. Each exact code succeeds once; a
//! reuse answers 40029.
//!
//! # Control endpoints (not WeChat's; JSON with `Content-Type: application/json`)
//!
//! - `POST /__fake/mint` with a [`MintRequest`] (`{"user", "phoneNumber", "purePhoneNumber",
//!   "countryCode", "appid"?, "watermarkAppid"?, "timestamp"?}`) answers `{"encryptedData",
//!   "iv"}`: the legacy phone payload encrypted under the user's current session key in the app
//!   `appid` (the first app when absent or not one of the fake's), with that `appid` in the
//!   watermark unless `watermarkAppid` says otherwise. 404 if the user never logged in to that
//!   app, 400 for a malformed request.
//! - `POST /__fake/expire_tokens` answers `{"ok": true}`.
//! - `POST /__fake/revoke_tokens` answers `{"ok": true}`: every token issued so far fails at
//!   the APIs (40001), but `stable_token` keeps handing out the current one until it is forced
//!   ([`FakeWeixin::revoke_access_tokens`]).
//! - `GET /__fake/stats` answers `{"jscode2session", "token", "stable_token",
//!   "getuserphonenumber", "stable_token_forced", "connections", "apps"}`: requests received per
//!   endpoint (whatever the answer), forced stable-token refreshes, TCP connections accepted,
//!   and under `"apps"` each app's `{"jscode2session", "stable_token", "getuserphonenumber"}`:
//!   the calls made with its credentials or tokens.
//!
//! Anything else is 404 `{"errcode": -1, "errmsg": "not found"}`. A WeChat endpoint called with
//! the wrong method answers 43001 ("require GET method") or 43002 ("require POST method").

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::session::unix_now;
use crate::weixin::crypto::{self, SessionKey};

/// Life of every access token, as WeChat's `expires_in`.
const TOKEN_LIFETIME: Duration = Duration::from_secs(7200);
/// Request bodies larger than this are refused as "data format error".
const MAX_BODY_BYTES: usize = 64 * 1024;
/// How long `serve` lets in-flight requests finish after `shutdown` resolved.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Longest user name that goes into an openid verbatim (`oFAKE` + 59 = 64 characters).
const MAX_VERBATIM_USER: usize = 59;

/// The fake WeChat server. Cheap to clone: clones share one state.
#[derive(Clone)]
pub struct FakeWeixin {
    inner: Arc<Inner>,
}

/// The WeChat endpoints the fake counts requests for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Api {
    /// `GET /sns/jscode2session`
    Jscode2Session,
    /// `GET /cgi-bin/token`
    Token,
    /// `POST /cgi-bin/stable_token`
    StableToken,
    /// `POST /wxa/business/getuserphonenumber`
    GetUserPhoneNumber,
}

impl Api {
    const COUNT: usize = 4;

    fn index(self) -> usize {
        match self {
            Api::Jscode2Session => 0,
            Api::Token => 1,
            Api::StableToken => 2,
            Api::GetUserPhoneNumber => 3,
        }
    }
}

/// What to encrypt for `/__fake/mint`: a legacy phone payload for a user who has logged in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MintRequest {
    /// The user name from the login code (`alice` for `alice.3`).
    pub user: String,
    /// `phoneNumber`: the number, with its country code for numbers outside mainland China.
    pub phone_number: String,
    /// `purePhoneNumber`: the number without its country code.
    pub pure_phone_number: String,
    /// Minted as a JSON string, like WeChat's decrypted payloads.
    pub country_code: String,
    /// The app whose session key encrypts, and the watermark's appid; the fake's first app
    /// when absent. An appid that is none of the fake's apps is only written in the watermark
    /// (the first app's key encrypts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub appid: Option<String>,
    /// The watermark's appid when it must differ from `appid` (data "of another app").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark_appid: Option<String>,
    /// The watermark's Unix timestamp; now when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<u64>,
}

/// `encryptedData` and `iv` as the mini program would receive them (standard padded base64).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Minted {
    /// `encryptedData`: the AES-128-CBC ciphertext, base64.
    pub encrypted_data: String,
    /// `iv`: the random initialisation vector, base64.
    pub iv: String,
}

/// Why [`FakeWeixin::mint_phone`] cannot encrypt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MintError {
    /// There is no session key to encrypt under until the user logs in once.
    #[error("user {user:?} never logged in to the fake WeChat")]
    NeverLoggedIn {
        /// The user name, as in [`MintRequest::user`].
        user: String,
    },
}

struct Inner {
    /// (appid, secret) of each app; the first is the default.
    apps: Vec<(String, String)>,
    calls: [AtomicU64; Api::COUNT],
    connections: AtomicU64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// (app, code) of used login codes: each app's codes are its own.
    used_login_codes: HashSet<(usize, String)>,
    used_phone_codes: HashSet<(usize, String)>,
    /// Times each `busy:` directive was reached, keyed by the whole code and the directive's
    /// byte offset in it (so `busy:1:busy:2:x` has two counters).
    busy_seen: HashMap<(String, usize), u64>,
    /// (appid, user) → the current session key.
    session_keys: HashMap<(String, String), SessionKey>,
    /// Tokens from `/cgi-bin/token`: their app and when they expire.
    access_tokens: HashMap<String, (usize, Instant)>,
    /// Each app's current stable token and when it expires.
    stable_tokens: HashMap<usize, (String, Instant)>,
    /// Per app: jscode2session, stable_token and getuserphonenumber calls it made.
    app_calls: HashMap<usize, [u64; 3]>,
    /// Tokens refused by the APIs though `stable_token` still hands them out
    /// until forced ([`FakeWeixin::revoke_access_tokens`]).
    revoked: HashSet<String>,
    /// `stable_token` calls with `force_refresh: true`.
    forced_refreshes: u64,
}

impl State {
    /// The app of a valid token.
    fn token_app(&self, token: &str, now: Instant) -> Option<usize> {
        if self.revoked.contains(token) {
            return None;
        }
        let plain = self
            .access_tokens
            .get(token)
            .filter(|(_, expiry)| *expiry > now)
            .map(|(app, _)| *app);
        plain.or_else(|| {
            self.stable_tokens
                .iter()
                .find(|(_, (current, expiry))| current == token && *expiry > now)
                .map(|(app, _)| *app)
        })
    }

    fn app_call(&mut self, app: usize, which: usize) {
        self.app_calls.entry(app).or_default()[which] += 1;
    }
}

/// Indexes into [`State::app_calls`].
const APP_LOGIN: usize = 0;
const APP_STABLE_TOKEN: usize = 1;
const APP_PHONE: usize = 2;

impl fmt::Debug for FakeWeixin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeWeixin")
            .field("appids", &self.inner.apps.iter().map(|(a, _)| a).collect::<Vec<_>>())
            .field("secret", &"[redacted]")
            .finish_non_exhaustive()
    }
}

impl FakeWeixin {
    /// A fake WeChat with one mini program.
    pub fn new(appid: impl Into<String>, secret: impl Into<String>) -> Self {
        Self::with_apps([(appid.into(), secret.into())])
    }

    /// A fake WeChat with several mini programs, `(appid, secret)` each; the first is the
    /// default of `/__fake/mint`.
    pub fn with_apps(apps: impl IntoIterator<Item = (String, String)>) -> Self {
        FakeWeixin {
            inner: Arc::new(Inner {
                apps: apps.into_iter().collect(),
                calls: Default::default(),
                connections: AtomicU64::new(0),
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// Serves until `shutdown` resolves. Runs on whatever tokio runtime calls it.
    ///
    /// One task per connection, HTTP/1.1 with keep-alive or HTTP/2. After `shutdown`, no new
    /// connection is accepted, in-flight requests get a few seconds to finish, then the
    /// remaining connections are dropped.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let builder = auto::Builder::new(TokioExecutor::new());
        let graceful = GracefulShutdown::new();
        let mut connections = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                // Reap finished connection tasks so the set does not grow forever.
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                (stream, peer) = crate::net::accept(&listener, "fake weixin") => {
                    self.inner.connections.fetch_add(1, Ordering::Relaxed);
                    let fake = self.clone();
                    let service = service_fn(move |request| {
                        let fake = fake.clone();
                        async move { Ok::<_, Infallible>(fake.handle(request).await) }
                    });
                    let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                    let connection = graceful.watch(connection);
                    connections.spawn(async move {
                        if let Err(error) = connection.await {
                            tracing::debug!(%peer, %error, "fake weixin: connection ended with an error");
                        }
                    });
                }
            }
        }
        drop(listener);
        if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await.is_err() {
            tracing::debug!("fake weixin: connections still busy after the grace period, dropping them");
        }
        connections.shutdown().await;
        Ok(())
    }

    /// Binds 127.0.0.1:0, spawns `serve` on the current runtime, returns the address.
    ///
    /// The server runs until the runtime shuts down.
    pub async fn spawn_local(&self) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let fake = self.clone();
        tokio::spawn(async move {
            if let Err(error) = fake.serve(listener, std::future::pending()).await {
                tracing::warn!(%error, "fake weixin: server stopped");
            }
        });
        Ok(addr)
    }

    /// Requests received by `api` so far, whatever the answer.
    pub fn calls(&self, api: Api) -> u64 {
        self.inner.calls[api.index()].load(Ordering::Relaxed)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.inner.connections.load(Ordering::Relaxed)
    }

    /// The openid the fake issues for `user`: `oFAKE<user>`.
    ///
    /// User names that are not 1 to 59 characters of `[A-Za-z0-9_-]` (the characters of real
    /// openids) become `oFAKE~<16 hex digits>` instead (a hash of the name), so an openid is
    /// always visible ASCII and at most 64 characters, and safe to put in a header.
    pub fn openid_for(user: &str) -> String {
        fake_id("oFAKE", user)
    }

    /// The user's current session key in the first app: the one issued by their last
    /// successful login.
    pub fn session_key(&self, user: &str) -> Option<SessionKey> {
        self.session_key_in(self.first_appid(), user)
    }

    /// The user's current session key in the app `appid`.
    pub fn session_key_in(&self, appid: &str, user: &str) -> Option<SessionKey> {
        self.state()
            .session_keys
            .get(&(appid.to_owned(), user.to_owned()))
            .copied()
    }

    /// Calls to `api` made with the credentials (or tokens) of the app `appid`; 0 for
    /// [`Api::Token`], which is not counted per app.
    pub fn app_calls(&self, appid: &str, api: Api) -> u64 {
        let Some(app) = self.app_index(appid) else {
            return 0;
        };
        let which = match api {
            Api::Jscode2Session => APP_LOGIN,
            Api::StableToken => APP_STABLE_TOKEN,
            Api::GetUserPhoneNumber => APP_PHONE,
            Api::Token => return 0,
        };
        self.state().app_calls.get(&app).map_or(0, |c| c[which])
    }

    fn first_appid(&self) -> &str {
        self.inner.apps.first().map_or("", |(a, _)| a)
    }

    fn app_index(&self, appid: &str) -> Option<usize> {
        self.inner.apps.iter().position(|(a, _)| a == appid)
    }

    /// Encrypts a legacy phone payload under the user's current session key in the app
    /// `request.appid`, with a random iv.
    pub fn mint_phone(&self, request: &MintRequest) -> Result<Minted, MintError> {
        let appid = request.appid.as_deref().unwrap_or(self.first_appid());
        let key_app = if self.app_index(appid).is_some() {
            appid
        } else {
            self.first_appid()
        };
        let key = self
            .session_key_in(key_app, &request.user)
            .ok_or_else(|| MintError::NeverLoggedIn {
                user: request.user.clone(),
            })?;
        let plaintext = json!({
            "phoneNumber": request.phone_number,
            "purePhoneNumber": request.pure_phone_number,
            "countryCode": request.country_code,
            "watermark": {
                "appid": request.watermark_appid.as_deref().unwrap_or(appid),
                "timestamp": request.timestamp.unwrap_or_else(unix_now),
            },
        });
        let mut iv = [0u8; 16];
        rand::rng().fill(&mut iv);
        Ok(Minted {
            encrypted_data: crypto::encrypt(&key, &iv, plaintext.to_string().as_bytes()),
            iv: STANDARD.encode(iv),
        })
    }

    /// Makes every token issued so far fail at the APIs (40001) while
    /// `stable_token` keeps handing out the current one until a caller
    /// forces a refresh: the case where only `force_refresh` helps.
    pub fn revoke_access_tokens(&self) {
        let mut state = self.state();
        let current: Vec<String> = state
            .access_tokens
            .keys()
            .cloned()
            .chain(state.stable_tokens.values().map(|(t, _)| t.clone()))
            .collect();
        state.revoked.extend(current);
    }

    /// `stable_token` calls that forced a refresh.
    pub fn forced_refreshes(&self) -> u64 {
        self.state().forced_refreshes
    }

    /// Invalidates every access token issued so far (plain and stable): next use answers 40001.
    pub fn expire_access_tokens(&self) {
        let mut state = self.state();
        state.access_tokens.clear();
        state.stable_tokens.clear();
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // No code panics while holding the lock, but a poisoned map is still the right map.
        self.inner.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn count(&self, api: Api) {
        self.inner.calls[api.index()].fetch_add(1, Ordering::Relaxed);
    }

    async fn handle(self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let method = request.method().clone();
        // The path only: the query carries the secret and access tokens.
        let path = request.uri().path().to_owned();
        let query = parse_query(request.uri().query().unwrap_or_default());
        let answer = match path.as_str() {
            "/sns/jscode2session" => {
                self.count(Api::Jscode2Session);
                match method {
                    Method::GET => self.jscode2session(&query).await,
                    _ => Answer::errcode(43001),
                }
            }
            "/cgi-bin/token" => {
                self.count(Api::Token);
                match method {
                    Method::GET => self.token(&query),
                    _ => Answer::errcode(43001),
                }
            }
            "/cgi-bin/stable_token" => {
                self.count(Api::StableToken);
                match method {
                    Method::POST => self.stable_token(read_body(request).await.as_deref()),
                    _ => Answer::errcode(43002),
                }
            }
            "/wxa/business/getuserphonenumber" => {
                self.count(Api::GetUserPhoneNumber);
                match method {
                    Method::POST => {
                        let token = query.get("access_token").cloned().unwrap_or_default();
                        self.get_user_phone_number(&token, read_body(request).await.as_deref())
                            .await
                    }
                    _ => Answer::errcode(43002),
                }
            }
            "/__fake/mint" => match method {
                Method::POST => self.mint_route(read_body(request).await.as_deref()),
                _ => Answer::method_not_allowed(),
            },
            "/__fake/revoke_tokens" => match method {
                Method::POST => {
                    self.revoke_access_tokens();
                    Answer::Control(StatusCode::OK, json!({"ok": true}))
                }
                _ => Answer::method_not_allowed(),
            },
            "/__fake/expire_tokens" => match method {
                Method::POST => {
                    self.expire_access_tokens();
                    Answer::Control(StatusCode::OK, json!({"ok": true}))
                }
                _ => Answer::method_not_allowed(),
            },
            "/__fake/stats" => match method {
                Method::GET => Answer::Control(StatusCode::OK, self.stats()),
                _ => Answer::method_not_allowed(),
            },
            _ => Answer::Control(StatusCode::NOT_FOUND, json!({"errcode": -1, "errmsg": "not found"})),
        };
        let response = answer.into_response();
        tracing::debug!(%method, %path, status = response.status().as_u16(), "fake weixin answered");
        response
    }

    async fn jscode2session(&self, query: &HashMap<String, String>) -> Answer {
        let app = match self.check_app_credentials(query) {
            Ok(app) => app,
            Err(answer) => return answer,
        };
        self.state().app_call(app, APP_LOGIN);
        if query.get("grant_type").map(String::as_str) != Some("authorization_code") {
            return Answer::errcode(40002);
        }
        let code = match query.get("js_code") {
            Some(code) if !code.is_empty() => code,
            _ => return Answer::errcode(40029),
        };
        let login = match self.apply_directives(code).await {
            Ok(rest) => rest,
            Err(answer) => return answer,
        };
        let user = login.split('.').next().unwrap_or_default();
        if user.is_empty() {
            return Answer::errcode(40029);
        }
        let session_key = SessionKey::random();
        {
            let mut state = self.state();
            // Checked at the moment of success, so two concurrent uses cannot both win.
            if !state.used_login_codes.insert((app, code.clone())) {
                return Answer::errcode(40163);
            }
            let appid = self.inner.apps[app].0.clone();
            state.session_keys.insert((appid, user.to_owned()), session_key);
        }
        let mut body = serde_json::Map::new();
        body.insert("openid".to_owned(), json!(FakeWeixin::openid_for(user)));
        body.insert("session_key".to_owned(), json!(session_key.to_base64()));
        if user.starts_with("union") {
            body.insert("unionid".to_owned(), json!(fake_id("UFAKE", user)));
        }
        Answer::WeChat(Value::Object(body))
    }

    fn token(&self, query: &HashMap<String, String>) -> Answer {
        if query.get("grant_type").map(String::as_str) != Some("client_credential") {
            return Answer::errcode(40002);
        }
        let app = match self.check_app_credentials(query) {
            Ok(app) => app,
            Err(answer) => return answer,
        };
        let token = new_access_token();
        self.state()
            .access_tokens
            .insert(token.clone(), (app, Instant::now() + TOKEN_LIFETIME));
        Answer::WeChat(json!({"access_token": token, "expires_in": TOKEN_LIFETIME.as_secs()}))
    }

    fn stable_token(&self, body: Option<&[u8]>) -> Answer {
        #[derive(Deserialize)]
        struct StableTokenRequest {
            grant_type: Option<String>,
            appid: Option<String>,
            secret: Option<String>,
            #[serde(default)]
            force_refresh: bool,
        }
        let Some(request) = body.and_then(|body| serde_json::from_slice::<StableTokenRequest>(body).ok()) else {
            return Answer::errcode(47001);
        };
        if request.grant_type.as_deref() != Some("client_credential") {
            return Answer::errcode(40002);
        }
        let app = match self.credentials(request.appid.as_deref(), request.secret.as_deref()) {
            Ok(app) => app,
            Err(answer) => return answer,
        };
        let now = Instant::now();
        let mut state = self.state();
        state.app_call(app, APP_STABLE_TOKEN);
        if request.force_refresh {
            state.forced_refreshes += 1;
        }
        let (token, expiry) = match state.stable_tokens.get(&app) {
            Some((token, expiry)) if *expiry > now && !request.force_refresh => (token.clone(), *expiry),
            _ => {
                let fresh = (new_access_token(), now + TOKEN_LIFETIME);
                state.stable_tokens.insert(app, fresh.clone());
                fresh
            }
        };
        let left = expiry.saturating_duration_since(now);
        // Rounded up, so a fresh token reports the full 7200 like WeChat does.
        let expires_in = left.as_secs() + u64::from(left.subsec_nanos() > 0);
        Answer::WeChat(json!({"access_token": token, "expires_in": expires_in}))
    }

    async fn get_user_phone_number(&self, token: &str, body: Option<&[u8]>) -> Answer {
        let app = {
            let mut state = self.state();
            let Some(app) = state.token_app(token, Instant::now()) else {
                return Answer::errcode(40001);
            };
            state.app_call(app, APP_PHONE);
            app
        };
        let Some(Value::Object(request)) = body.and_then(|body| serde_json::from_slice::<Value>(body).ok()) else {
            return Answer::errcode(47001);
        };
        let code = match request.get("code") {
            Some(Value::String(code)) if !code.is_empty() => code,
            _ => return Answer::errcode(40029),
        };
        let spec = match self.apply_directives(code).await {
            Ok(rest) => rest,
            Err(answer) => return answer,
        };
        let (phone_number, pure, country_code) = if let Some(spec) = spec.strip_prefix("phone:") {
            match parse_phone_spec(spec) {
                Some((pure, cc)) => (full_phone_number(&pure, cc), pure, json!(cc)),
                None => return Answer::errcode(40029),
            }
        } else if let Some(spec) = spec.strip_prefix("phonestr:") {
            match parse_phone_spec(spec) {
                Some((pure, cc)) => (full_phone_number(&pure, cc), pure, json!(cc.to_string())),
                None => return Answer::errcode(40029),
            }
        } else if let Some(value) = spec.strip_prefix("badphone:") {
            (value.to_owned(), value.to_owned(), json!(86))
        } else {
            return Answer::errcode(40029);
        };
        if !self.state().used_phone_codes.insert((app, code.clone())) {
            return Answer::errcode(40029);
        }
        Answer::WeChat(json!({
            "errcode": 0,
            "errmsg": "ok",
            "phone_info": {
                "phoneNumber": phone_number,
                "purePhoneNumber": pure,
                "countryCode": country_code,
                "watermark": {"timestamp": unix_now(), "appid": self.inner.apps[app].0},
            },
        }))
    }

    fn mint_route(&self, body: Option<&[u8]>) -> Answer {
        let request = match body.map(serde_json::from_slice::<MintRequest>) {
            Some(Ok(request)) => request,
            Some(Err(error)) => return Answer::control_error(StatusCode::BAD_REQUEST, "bad_request", error),
            None => return Answer::control_error(StatusCode::BAD_REQUEST, "bad_request", "unreadable body"),
        };
        match self.mint_phone(&request) {
            Ok(minted) => Answer::Control(StatusCode::OK, json!(minted)),
            Err(error) => Answer::control_error(StatusCode::NOT_FOUND, "unknown_user", error),
        }
    }

    fn stats(&self) -> Value {
        let apps: serde_json::Map<String, Value> = self
            .inner
            .apps
            .iter()
            .map(|(appid, _)| {
                let calls = json!({
                    "jscode2session": self.app_calls(appid, Api::Jscode2Session),
                    "stable_token": self.app_calls(appid, Api::StableToken),
                    "getuserphonenumber": self.app_calls(appid, Api::GetUserPhoneNumber),
                });
                (appid.clone(), calls)
            })
            .collect();
        json!({
            "apps": apps,
            "jscode2session": self.calls(Api::Jscode2Session),
            "token": self.calls(Api::Token),
            "stable_token": self.calls(Api::StableToken),
            "getuserphonenumber": self.calls(Api::GetUserPhoneNumber),
            "stable_token_forced": self.forced_refreshes(),
            "connections": self.connections(),
        })
    }

    /// The app of a query's `appid` and `secret`.
    fn check_app_credentials(&self, query: &HashMap<String, String>) -> Result<usize, Answer> {
        self.credentials(
            query.get("appid").map(String::as_str),
            query.get("secret").map(String::as_str),
        )
    }

    /// The app of an appid and its secret: 40013 for an unknown appid, 40125 for a secret
    /// that is not that app's.
    fn credentials(&self, appid: Option<&str>, secret: Option<&str>) -> Result<usize, Answer> {
        let app = appid
            .and_then(|a| self.app_index(a))
            .ok_or_else(|| Answer::errcode(40013))?;
        if secret != Some(self.inner.apps[app].1.as_str()) {
            return Err(Answer::errcode(40125));
        }
        Ok(app)
    }

    /// Peels `slow:`, `busy:`, `fail:`, `garbage` and `http:` off a code. `Ok` is what is left
    /// for the endpoint to read (the user, the phone spec); `Err` is the answer to send now.
    ///
    /// A loop, not recursion: a code is client input and may nest directives a thousand deep.
    async fn apply_directives<'c>(&self, code: &'c str) -> Result<&'c str, Answer> {
        let mut rest = code;
        loop {
            if let Some(after) = rest.strip_prefix("slow:") {
                let (millis, tail) = leading_number::<u64>(after).ok_or_else(|| Answer::errcode(40029))?;
                tokio::time::sleep(Duration::from_millis(millis)).await;
                rest = tail;
            } else if let Some(after) = rest.strip_prefix("busy:") {
                let (times, tail) = leading_number::<u64>(after).ok_or_else(|| Answer::errcode(40029))?;
                let offset = code.len() - rest.len();
                let seen = {
                    let mut state = self.state();
                    let seen = state.busy_seen.entry((code.to_owned(), offset)).or_insert(0);
                    *seen = seen.saturating_add(1);
                    *seen
                };
                if seen <= times {
                    return Err(Answer::errcode(-1));
                }
                rest = tail;
            } else if let Some(after) = rest.strip_prefix("fail:") {
                let errcode = after.split(':').next().and_then(|n| n.parse::<i64>().ok());
                return Err(errcode.map_or(Answer::errcode(40029), Answer::errcode));
            } else if rest == "garbage" || rest.starts_with("garbage:") {
                return Err(Answer::Garbage);
            } else if let Some(after) = rest.strip_prefix("http:") {
                let status = after
                    .split(':')
                    .next()
                    .and_then(|n| n.parse::<u16>().ok())
                    .filter(|n| (200..=599).contains(n))
                    .and_then(|n| StatusCode::from_u16(n).ok());
                return Err(status.map_or(Answer::errcode(40029), Answer::Http));
            } else {
                return Ok(rest);
            }
        }
    }
}

/// An answer before it becomes a response, so every response is built in one place.
enum Answer {
    /// A WeChat JSON body, HTTP 200, labelled `text/plain` like the real server does.
    WeChat(Value),
    /// HTTP 200 with a body that is not JSON (`garbage`).
    Garbage,
    /// An error page with this status (`http:<status>`).
    Http(StatusCode),
    /// A JSON answer of the control endpoints (and the 404).
    Control(StatusCode, Value),
}

impl Answer {
    fn errcode(errcode: i64) -> Answer {
        Answer::WeChat(json!({"errcode": errcode, "errmsg": errmsg(errcode)}))
    }

    fn control_error(status: StatusCode, error: &str, message: impl fmt::Display) -> Answer {
        Answer::Control(status, json!({"error": error, "message": message.to_string()}))
    }

    fn method_not_allowed() -> Answer {
        Answer::control_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "see the fake WeChat's documentation for the method",
        )
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        let (status, content_type, body) = match self {
            Answer::WeChat(body) => (StatusCode::OK, "text/plain", body.to_string()),
            Answer::Garbage => (StatusCode::OK, "text/plain", "<html>not json</html>".to_owned()),
            Answer::Http(status) => (
                status,
                "text/html; charset=utf-8",
                format!("<html><body><h1>{status}</h1><p>fake WeChat</p></body></html>"),
            ),
            Answer::Control(status, body) => (status, "application/json", body.to_string()),
        };
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        response
    }
}

/// WeChat's message for an errcode (close enough: clients must not parse `errmsg`).
fn errmsg(errcode: i64) -> &'static str {
    match errcode {
        0 => "ok",
        -1 => "system error",
        40001 => "invalid credential, access_token is invalid or not latest",
        40002 => "invalid grant_type",
        40013 => "invalid appid",
        40029 => "invalid code",
        40125 => "invalid appsecret",
        40163 => "code been used",
        40226 => "invalid risky user",
        43001 => "require GET method",
        43002 => "require POST method",
        45011 => "api minute-quota reach limit  mustslower  retry next minute",
        47001 => "data format error",
        _ => "fake error",
    }
}

/// `<n>:<tail>` -> `(n, tail)`.
fn leading_number<N: std::str::FromStr>(input: &str) -> Option<(N, &str)> {
    let (number, tail) = input.split_once(':')?;
    Some((number.parse().ok()?, tail))
}

/// `<pure>[:<countryCode>][.<nonce>]` -> `(pure, country code)`.
fn parse_phone_spec(spec: &str) -> Option<(String, u16)> {
    fn digits(s: &str, max: usize) -> bool {
        !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_digit())
    }
    let main = spec.split('.').next().unwrap_or_default();
    let (pure, country_code) = main.split_once(':').unwrap_or((main, "86"));
    if !digits(pure, 20) || !digits(country_code, 4) {
        return None;
    }
    Some((pure.to_owned(), country_code.parse().ok()?))
}

/// What WeChat puts in `phoneNumber`: the bare number in China, `+<cc><pure>` elsewhere.
fn full_phone_number(pure: &str, country_code: u16) -> String {
    if country_code == 86 {
        pure.to_owned()
    } else {
        format!("+{country_code}{pure}")
    }
}

/// `prefix` + `user` when `user` looks like a real id, else `prefix~` + a hash of it.
fn fake_id(prefix: &str, user: &str) -> String {
    let verbatim = !user.is_empty()
        && user.len() <= MAX_VERBATIM_USER
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if verbatim {
        format!("{prefix}{user}")
    } else {
        format!("{prefix}~{:016x}", fnv1a(user.as_bytes()))
    }
}

/// FNV-1a: stable across runs and Rust versions, unlike `DefaultHasher`. Not for security.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A random, URL-safe access token.
fn new_access_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill(&mut bytes);
    format!("FAKE_{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// The request body, or `None` if it could not be read or exceeds [`MAX_BODY_BYTES`].
async fn read_body(request: Request<Incoming>) -> Option<Bytes> {
    let body = Limited::new(request.into_body(), MAX_BODY_BYTES);
    body.collect().await.ok().map(|collected| collected.to_bytes())
}

/// `application/x-www-form-urlencoded` query parsing; the first occurrence of a key wins.
fn parse_query(query: &str) -> HashMap<String, String> {
    let mut params = HashMap::new();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        params.entry(key.into_owned()).or_insert_with(|| value.into_owned());
    }
    params
}

#[cfg(test)]
mod tests;
