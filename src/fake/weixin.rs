//! A fake `api.weixin.qq.com`: the four endpoints wxgate calls, driven by the codes you send.
//!
//! It ships in the product (`wxgate fake-weixin --listen ADDR --appid .. --secret ..`) so that
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
//! The query must carry the fake's `appid` (else errcode 40013) and `secret` (else 40125),
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
//! - Each exact code succeeds once; presenting it again answers 40163 ("code been used").
//!   Failures (`fail:`, `busy:` while busy, `garbage`, `http:`) do not use the code up.
//! - Every successful login issues a new random `session_key` and makes it the user's current
//!   key ([`FakeWeixin::session_key`]); `/__fake/mint` encrypts under it.
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
//!   then on. Bad JSON answers 47001, a wrong `grant_type` 40002, a wrong appid/secret
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
//! "countryCode", "watermark": {"timestamp": <now>, "appid": <the fake's appid>}}}` where
//! `phoneNumber` is `<pure>` for country code 86 and `+<countryCode><pure>` otherwise.
//! `<pure>` is 1 to 20 digits, `<countryCode>` 1 to 4 digits. Each exact code succeeds once; a
//! reuse answers 40029.
//!
//! # Control endpoints (not WeChat's; JSON with `Content-Type: application/json`)
//!
//! - `POST /__fake/mint` with a [`MintRequest`] (`{"user", "phoneNumber", "purePhoneNumber",
//!   "countryCode", "appid"?, "timestamp"?}`) answers `{"encryptedData", "iv"}`: the legacy
//!   phone payload encrypted under the user's current session key. 404 if the user never
//!   logged in, 400 for a malformed request.
//! - `POST /__fake/expire_tokens` answers `{"ok": true}`.
//! - `GET /__fake/stats` answers `{"jscode2session", "token", "stable_token",
//!   "getuserphonenumber", "connections"}`: requests received per endpoint (whatever the
//!   answer) and TCP connections accepted.
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
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

use crate::weixin::crypto::{self, SessionKey};

/// Life of every access token, as WeChat's `expires_in`.
const TOKEN_LIFETIME: Duration = Duration::from_secs(7200);
/// Request bodies larger than this are refused as "data format error".
const MAX_BODY_BYTES: usize = 64 * 1024;
/// How long `serve` lets in-flight requests finish after `shutdown` resolved.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MintRequest {
    /// The user name from the login code (`alice` for `alice.3`).
    pub user: String,
    pub phone_number: String,
    pub pure_phone_number: String,
    /// Minted as a JSON string, like WeChat's decrypted payloads.
    pub country_code: String,
    /// The watermark's appid; the fake's own appid when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub appid: Option<String>,
    /// The watermark's Unix timestamp; now when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<u64>,
}

/// `encryptedData` and `iv` as the mini program would receive them (standard padded base64).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Minted {
    pub encrypted_data: String,
    pub iv: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MintError {
    /// There is no session key to encrypt under until the user logs in once.
    #[error("user {user:?} never logged in to the fake WeChat")]
    NeverLoggedIn { user: String },
}

struct Inner {
    appid: String,
    secret: String,
    calls: [AtomicU64; Api::COUNT],
    connections: AtomicU64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    used_login_codes: HashSet<String>,
    used_phone_codes: HashSet<String>,
    /// Times each `busy:` directive was reached, keyed by the whole code and the directive's
    /// byte offset in it (so `busy:1:busy:2:x` has two counters).
    busy_seen: HashMap<(String, usize), u64>,
    session_keys: HashMap<String, SessionKey>,
    /// Tokens from `/cgi-bin/token` and when they expire.
    access_tokens: HashMap<String, Instant>,
    /// The current stable token and when it expires.
    stable_token: Option<(String, Instant)>,
}

impl State {
    fn token_is_valid(&self, token: &str, now: Instant) -> bool {
        let plain = self.access_tokens.get(token).is_some_and(|expiry| *expiry > now);
        let stable = self
            .stable_token
            .as_ref()
            .is_some_and(|(current, expiry)| current == token && *expiry > now);
        plain || stable
    }
}

impl fmt::Debug for FakeWeixin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeWeixin")
            .field("appid", &self.inner.appid)
            .field("secret", &"[redacted]")
            .finish_non_exhaustive()
    }
}

impl FakeWeixin {
    pub fn new(appid: impl Into<String>, secret: impl Into<String>) -> Self {
        FakeWeixin {
            inner: Arc::new(Inner {
                appid: appid.into(),
                secret: secret.into(),
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
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
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
                    Err(error) => {
                        tracing::warn!(%error, "fake weixin: accept failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                },
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

    /// The user's current session key: the one issued by their last successful login.
    pub fn session_key(&self, user: &str) -> Option<SessionKey> {
        self.state().session_keys.get(user).copied()
    }

    /// Encrypts a legacy phone payload under the user's current session key, with a random iv.
    pub fn mint_phone(&self, request: &MintRequest) -> Result<Minted, MintError> {
        let key = self
            .session_key(&request.user)
            .ok_or_else(|| MintError::NeverLoggedIn {
                user: request.user.clone(),
            })?;
        let plaintext = json!({
            "phoneNumber": request.phone_number,
            "purePhoneNumber": request.pure_phone_number,
            "countryCode": request.country_code,
            "watermark": {
                "appid": request.appid.as_deref().unwrap_or(&self.inner.appid),
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

    /// Invalidates every access token issued so far (plain and stable): next use answers 40001.
    pub fn expire_access_tokens(&self) {
        let mut state = self.state();
        state.access_tokens.clear();
        state.stable_token = None;
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
        if let Err(answer) = self.check_app_credentials(query) {
            return answer;
        }
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
            if !state.used_login_codes.insert(code.clone()) {
                return Answer::errcode(40163);
            }
            state.session_keys.insert(user.to_owned(), session_key);
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
        if let Err(answer) = self.check_app_credentials(query) {
            return answer;
        }
        let token = new_access_token();
        self.state()
            .access_tokens
            .insert(token.clone(), Instant::now() + TOKEN_LIFETIME);
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
        if request.appid.as_deref() != Some(self.inner.appid.as_str()) {
            return Answer::errcode(40013);
        }
        if request.secret.as_deref() != Some(self.inner.secret.as_str()) {
            return Answer::errcode(40125);
        }
        let now = Instant::now();
        let mut state = self.state();
        let (token, expiry) = match &state.stable_token {
            Some((token, expiry)) if *expiry > now && !request.force_refresh => (token.clone(), *expiry),
            _ => {
                let fresh = (new_access_token(), now + TOKEN_LIFETIME);
                state.stable_token = Some(fresh.clone());
                fresh
            }
        };
        let left = expiry.saturating_duration_since(now);
        // Rounded up, so a fresh token reports the full 7200 like WeChat does.
        let expires_in = left.as_secs() + u64::from(left.subsec_nanos() > 0);
        Answer::WeChat(json!({"access_token": token, "expires_in": expires_in}))
    }

    async fn get_user_phone_number(&self, token: &str, body: Option<&[u8]>) -> Answer {
        if !self.state().token_is_valid(token, Instant::now()) {
            return Answer::errcode(40001);
        }
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
        if !self.state().used_phone_codes.insert(code.clone()) {
            return Answer::errcode(40029);
        }
        Answer::WeChat(json!({
            "errcode": 0,
            "errmsg": "ok",
            "phone_info": {
                "phoneNumber": phone_number,
                "purePhoneNumber": pure,
                "countryCode": country_code,
                "watermark": {"timestamp": unix_now(), "appid": self.inner.appid},
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
        json!({
            "jscode2session": self.calls(Api::Jscode2Session),
            "token": self.calls(Api::Token),
            "stable_token": self.calls(Api::StableToken),
            "getuserphonenumber": self.calls(Api::GetUserPhoneNumber),
            "connections": self.connections(),
        })
    }

    fn check_app_credentials(&self, query: &HashMap<String, String>) -> Result<(), Answer> {
        if query.get("appid") != Some(&self.inner.appid) {
            return Err(Answer::errcode(40013));
        }
        if query.get("secret") != Some(&self.inner.secret) {
            return Err(Answer::errcode(40125));
        }
        Ok(())
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

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// The request body, or `None` if it could not be read or exceeds [`MAX_BODY_BYTES`].
async fn read_body(request: Request<Incoming>) -> Option<Bytes> {
    let body = Limited::new(request.into_body(), MAX_BODY_BYTES);
    body.collect().await.ok().map(|collected| collected.to_bytes())
}

/// `application/x-www-form-urlencoded` query parsing; the first occurrence of a key wins.
fn parse_query(query: &str) -> HashMap<String, String> {
    let mut params = HashMap::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        params
            .entry(percent_decode(key))
            .or_insert_with(|| percent_decode(value));
    }
    params
}

/// `+` is a space, `%XX` a byte; a `%` not followed by two hex digits stays as it is. Invalid
/// UTF-8 becomes U+FFFD.
fn percent_decode(input: &str) -> String {
    fn hex(digit: u8) -> Option<u8> {
        char::from(digit).to_digit(16).and_then(|d| u8::try_from(d).ok())
    }
    let bytes = input.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        let escaped = match (byte, bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&hi), Some(&lo)) => hex(hi).zip(hex(lo)).map(|(hi, lo)| hi << 4 | lo),
            _ => None,
        };
        match escaped {
            Some(value) => {
                decoded.push(value);
                i += 3;
            }
            None => {
                decoded.push(if byte == b'+' { b' ' } else { byte });
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_util::client::legacy::Client;
    use hyper_util::client::legacy::connect::HttpConnector;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const APPID: &str = "wxfa4e000000000001";
    const SECRET: &str = "s3cret";

    struct Harness {
        fake: FakeWeixin,
        addr: SocketAddr,
        client: Client<HttpConnector, Full<Bytes>>,
    }

    /// What the fake answered: status, Content-Type, raw body, and the body as JSON if it is.
    struct Reply {
        status: StatusCode,
        content_type: String,
        body: String,
        json: Value,
    }

    impl Reply {
        fn errcode(&self) -> i64 {
            self.json.get("errcode").and_then(Value::as_i64).unwrap_or(0)
        }
    }

    impl Harness {
        async fn start() -> Harness {
            let fake = FakeWeixin::new(APPID, SECRET);
            let addr = fake.spawn_local().await.unwrap();
            let client = Client::builder(TokioExecutor::new()).build_http();
            Harness { fake, addr, client }
        }

        async fn send(&self, method: Method, path_and_query: &str, body: &str) -> Reply {
            let request = Request::builder()
                .method(method)
                .uri(format!("http://{}{}", self.addr, path_and_query))
                .body(Full::new(Bytes::from(body.to_owned())))
                .unwrap();
            let response = self.client.request(request).await.unwrap();
            let status = response.status();
            let content_type = response
                .headers()
                .get(CONTENT_TYPE)
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            let body = String::from_utf8(body.to_vec()).unwrap();
            let json = serde_json::from_str(&body).unwrap_or(Value::Null);
            Reply {
                status,
                content_type,
                body,
                json,
            }
        }

        async fn get(&self, path_and_query: &str) -> Reply {
            self.send(Method::GET, path_and_query, "").await
        }

        async fn post(&self, path_and_query: &str, body: &str) -> Reply {
            self.send(Method::POST, path_and_query, body).await
        }

        fn login_uri(code: &str) -> String {
            let code = code
                .replace('%', "%25")
                .replace('+', "%2B")
                .replace(':', "%3A")
                .replace(' ', "+");
            format!("/sns/jscode2session?appid={APPID}&secret={SECRET}&js_code={code}&grant_type=authorization_code")
        }

        async fn login(&self, code: &str) -> Reply {
            self.get(&Harness::login_uri(code)).await
        }

        async fn stable_token(&self, force_refresh: bool) -> Reply {
            let body = json!({"grant_type": "client_credential", "appid": APPID, "secret": SECRET, "force_refresh": force_refresh});
            self.post("/cgi-bin/stable_token", &body.to_string()).await
        }

        async fn access_token(&self) -> String {
            let reply = self.stable_token(false).await;
            reply.json["access_token"].as_str().unwrap().to_owned()
        }

        async fn phone(&self, token: &str, code: &str) -> Reply {
            let body = json!({ "code": code }).to_string();
            self.post(&format!("/wxa/business/getuserphonenumber?access_token={token}"), &body)
                .await
        }
    }

    #[tokio::test]
    async fn login_succeeds_once_per_code_with_a_new_key_each_time() {
        let h = Harness::start().await;
        let first = h.login("alice").await;
        assert_eq!(first.status, StatusCode::OK);
        assert_eq!(first.content_type, "text/plain");
        assert_eq!(first.json["openid"], "oFAKEalice");
        assert_eq!(first.json.get("unionid"), None);
        let key1 = SessionKey::from_base64(first.json["session_key"].as_str().unwrap()).unwrap();
        assert_eq!(h.fake.session_key("alice"), Some(key1));

        let again = h.login("alice").await;
        assert_eq!(again.errcode(), 40163);
        assert_eq!(again.json["errmsg"], "code been used");
        assert_eq!(h.fake.session_key("alice"), Some(key1));

        let second = h.login("alice.2").await;
        assert_eq!(second.json["openid"], "oFAKEalice");
        let key2 = SessionKey::from_base64(second.json["session_key"].as_str().unwrap()).unwrap();
        assert_ne!(key1, key2);
        assert_eq!(h.fake.session_key("alice"), Some(key2));
        assert_eq!(h.fake.session_key("bob"), None);
    }

    #[tokio::test]
    async fn union_users_get_a_unionid() {
        let h = Harness::start().await;
        let reply = h.login("unionjoe.1").await;
        assert_eq!(reply.json["openid"], "oFAKEunionjoe");
        assert_eq!(reply.json["unionid"], "UFAKEunionjoe");
    }

    #[tokio::test]
    async fn bad_app_credentials_and_missing_code() {
        let h = Harness::start().await;
        let path = "/sns/jscode2session";
        let cases = [
            (
                format!("{path}?appid=wxother&secret={SECRET}&js_code=a&grant_type=authorization_code"),
                40013,
            ),
            (
                format!("{path}?appid={APPID}&secret=nope&js_code=a&grant_type=authorization_code"),
                40125,
            ),
            (
                format!("{path}?appid={APPID}&js_code=a&grant_type=authorization_code"),
                40125,
            ),
            (
                format!("{path}?appid={APPID}&secret={SECRET}&grant_type=authorization_code"),
                40029,
            ),
            (
                format!("{path}?appid={APPID}&secret={SECRET}&js_code=&grant_type=authorization_code"),
                40029,
            ),
            (format!("{path}?appid={APPID}&secret={SECRET}&js_code=a"), 40002),
            (path.to_owned(), 40013),
        ];
        for (uri, errcode) in cases {
            let reply = h.get(&uri).await;
            assert_eq!((reply.status, reply.errcode()), (StatusCode::OK, errcode), "{uri}");
        }
        let reply = h.post(&Harness::login_uri("a"), "").await;
        assert_eq!(reply.errcode(), 43001);
        // None of these used the code up.
        assert!(h.login("a").await.json["openid"].is_string());
        assert_eq!(h.fake.calls(Api::Jscode2Session), 9);
    }

    #[tokio::test]
    async fn fail_codes_answer_their_errcode_and_are_not_used_up() {
        let h = Harness::start().await;
        for (code, errcode) in [
            ("fail:40226", 40226),
            ("fail:45011", 45011),
            ("fail:-1", -1),
            ("fail:40029:whatever.else", 40029),
            ("fail:40226", 40226),
        ] {
            let reply = h.login(code).await;
            assert_eq!(reply.status, StatusCode::OK);
            assert_eq!(reply.errcode(), errcode, "{code}");
            assert!(reply.json["errmsg"].is_string());
            assert_eq!(reply.json.get("openid"), None);
        }
    }

    #[tokio::test]
    async fn busy_answers_system_error_n_times_then_succeeds_once() {
        let h = Harness::start().await;
        assert_eq!(h.login("busy:2:bob.1").await.errcode(), -1);
        assert_eq!(h.login("busy:2:bob.1").await.errcode(), -1);
        let ok = h.login("busy:2:bob.1").await;
        assert_eq!(ok.json["openid"], "oFAKEbob");
        assert_eq!(h.login("busy:2:bob.1").await.errcode(), 40163);
        // A different exact code has its own counter.
        assert_eq!(h.login("busy:1:bob.2").await.errcode(), -1);
        assert_eq!(h.login("busy:0:bob.3").await.json["openid"], "oFAKEbob");
        // Nested: each busy has its own count.
        assert_eq!(h.login("busy:1:busy:1:bob.4").await.errcode(), -1);
        assert_eq!(h.login("busy:1:busy:1:bob.4").await.errcode(), -1);
        assert_eq!(h.login("busy:1:busy:1:bob.4").await.json["openid"], "oFAKEbob");
        assert_eq!(h.login("busy:1:fail:45011").await.errcode(), -1);
        assert_eq!(h.login("busy:1:fail:45011").await.errcode(), 45011);
    }

    #[tokio::test]
    async fn slow_waits_then_behaves_as_the_rest() {
        let h = Harness::start().await;
        let started = Instant::now();
        let reply = h.login("slow:150:carol").await;
        assert!(started.elapsed() >= Duration::from_millis(150));
        assert_eq!(reply.json["openid"], "oFAKEcarol");
        assert_eq!(h.login("slow:1:fail:40226").await.errcode(), 40226);
        assert_eq!(h.login("slow:1:busy:1:carol.2").await.errcode(), -1);
        assert_eq!(h.login("slow:1:busy:1:carol.2").await.json["openid"], "oFAKEcarol");
    }

    #[tokio::test]
    async fn concurrent_uses_of_one_code_succeed_once() {
        let h = Harness::start().await;
        let (a, b) = tokio::join!(h.login("slow:100:dave"), h.login("slow:100:dave"));
        let mut errcodes = [a.errcode(), b.errcode()];
        errcodes.sort_unstable();
        assert_eq!(errcodes, [0, 40163]);
    }

    #[tokio::test]
    async fn garbage_and_http_codes() {
        let h = Harness::start().await;
        for code in ["garbage", "garbage:1", "slow:1:garbage"] {
            let reply = h.login(code).await;
            assert_eq!(reply.status, StatusCode::OK);
            assert_eq!(reply.body, "<html>not json</html>");
        }
        for (code, status) in [
            ("http:503", 503),
            ("http:500:x", 500),
            ("http:404", 404),
            ("http:200", 200),
        ] {
            let reply = h.login(code).await;
            assert_eq!(reply.status.as_u16(), status, "{code}");
            assert!(reply.body.starts_with("<html>"), "{code}");
            assert!(reply.content_type.starts_with("text/html"));
        }
    }

    #[tokio::test]
    async fn malformed_codes_are_invalid() {
        let h = Harness::start().await;
        for code in [
            "busy:x:alice",
            "busy:1",
            "slow::alice",
            "slow:-5:alice",
            "fail:abc",
            "fail:",
            "http:99",
            "http:600",
            "http:abc",
            ".nonce",
            "slow:1:",
        ] {
            assert_eq!(h.login(code).await.errcode(), 40029, "{code}");
        }
    }

    #[tokio::test]
    async fn deeply_nested_directives_do_not_overflow() {
        let h = Harness::start().await;
        let code = format!("{}erin", "slow:0:".repeat(1000));
        assert_eq!(h.login(&code).await.json["openid"], "oFAKEerin");
    }

    #[test]
    fn openids_are_visible_ascii_and_short() {
        assert_eq!(FakeWeixin::openid_for("alice"), "oFAKEalice");
        assert_eq!(FakeWeixin::openid_for("a-b_C9"), "oFAKEa-b_C9");
        let long = "x".repeat(200);
        for user in ["", "with space", "é", "x\r\nSet-Cookie: a", long.as_str(), "busy:1:x"] {
            let openid = FakeWeixin::openid_for(user);
            assert!(openid.len() <= 64, "{openid}");
            assert!(openid.bytes().all(|b| b.is_ascii_graphic()), "{openid}");
            assert_eq!(openid, FakeWeixin::openid_for(user));
        }
        assert_ne!(FakeWeixin::openid_for("é"), FakeWeixin::openid_for("è"));
        assert_eq!(FakeWeixin::openid_for(&"y".repeat(59)).len(), 64);
    }

    #[tokio::test]
    async fn odd_users_get_safe_openids() {
        let h = Harness::start().await;
        let reply = h.login("white space.1").await;
        assert_eq!(reply.json["openid"], FakeWeixin::openid_for("white space"));
        assert!(h.fake.session_key("white space").is_some());
    }

    #[tokio::test]
    async fn legacy_token_is_new_every_call() {
        let h = Harness::start().await;
        let uri = format!("/cgi-bin/token?grant_type=client_credential&appid={APPID}&secret={SECRET}");
        let first = h.get(&uri).await;
        let second = h.get(&uri).await;
        assert_eq!(first.json["expires_in"], 7200);
        let (t1, t2) = (
            first.json["access_token"].as_str().unwrap(),
            second.json["access_token"].as_str().unwrap(),
        );
        assert_ne!(t1, t2);
        // Both stay valid.
        assert_eq!(h.phone(t1, "phone:13580006666.1").await.errcode(), 0);
        assert_eq!(h.phone(t2, "phone:13580006666.2").await.errcode(), 0);

        let bad_secret = format!("/cgi-bin/token?grant_type=client_credential&appid={APPID}&secret=x");
        assert_eq!(h.get(&bad_secret).await.errcode(), 40125);
        let bad_appid = format!("/cgi-bin/token?grant_type=client_credential&appid=wx1&secret={SECRET}");
        assert_eq!(h.get(&bad_appid).await.errcode(), 40013);
        let bad_grant = format!("/cgi-bin/token?appid={APPID}&secret={SECRET}");
        assert_eq!(h.get(&bad_grant).await.errcode(), 40002);
        assert_eq!(h.fake.calls(Api::Token), 5);
    }

    #[tokio::test]
    async fn stable_token_is_reused_until_force_refresh() {
        let h = Harness::start().await;
        let first = h.stable_token(false).await;
        let token = first.json["access_token"].as_str().unwrap().to_owned();
        let expires_in = first.json["expires_in"].as_u64().unwrap();
        assert!((7199..=7200).contains(&expires_in), "{expires_in}");
        let again = h.stable_token(false).await;
        assert_eq!(again.json["access_token"], token.as_str());
        assert!(again.json["expires_in"].as_u64().unwrap() <= expires_in);

        let refreshed = h.stable_token(true).await;
        let new_token = refreshed.json["access_token"].as_str().unwrap().to_owned();
        assert_ne!(new_token, token);
        assert_eq!(refreshed.json["expires_in"], 7200);
        assert_eq!(h.phone(&token, "phone:13580006666.1").await.errcode(), 40001);
        assert_eq!(h.phone(&new_token, "phone:13580006666.2").await.errcode(), 0);
        assert_eq!(h.stable_token(false).await.json["access_token"], new_token.as_str());
    }

    #[tokio::test]
    async fn stable_token_rejects_bad_requests() {
        let h = Harness::start().await;
        let body = |grant: &str, appid: &str, secret: &str| {
            json!({"grant_type": grant, "appid": appid, "secret": secret}).to_string()
        };
        for (body, errcode) in [
            ("not json".to_owned(), 47001),
            (String::new(), 47001),
            (r#"{"grant_type":"client_credential","appid":1}"#.to_owned(), 47001),
            (
                r#"{"grant_type":"client_credential","force_refresh":"yes"}"#.to_owned(),
                47001,
            ),
            (body("password", APPID, SECRET), 40002),
            (body("client_credential", "wx1", SECRET), 40013),
            (body("client_credential", APPID, "nope"), 40125),
        ] {
            let reply = h.post("/cgi-bin/stable_token", &body).await;
            assert_eq!(reply.errcode(), errcode, "{body}");
        }
        assert_eq!(h.get("/cgi-bin/stable_token").await.errcode(), 43002);
        assert_eq!(h.fake.calls(Api::StableToken), 8);
    }

    #[tokio::test]
    async fn expired_tokens_answer_40001_and_stable_token_renews() {
        let h = Harness::start().await;
        let stable = h.access_token().await;
        let uri = format!("/cgi-bin/token?grant_type=client_credential&appid={APPID}&secret={SECRET}");
        let legacy = h.get(&uri).await.json["access_token"].as_str().unwrap().to_owned();
        h.fake.expire_access_tokens();
        for token in [&stable, &legacy] {
            let reply = h.phone(token, "phone:13580006666").await;
            assert_eq!(reply.errcode(), 40001);
            assert_eq!(
                reply.json["errmsg"],
                "invalid credential, access_token is invalid or not latest"
            );
        }
        let renewed = h.access_token().await;
        assert_ne!(renewed, stable);
        assert_eq!(h.phone(&renewed, "phone:13580006666").await.errcode(), 0);

        // The same over HTTP.
        let reply = h.post("/__fake/expire_tokens", "").await;
        assert_eq!(reply.json, json!({"ok": true}));
        assert_eq!(h.phone(&renewed, "phone:13580006666.2").await.errcode(), 40001);
    }

    #[tokio::test]
    async fn phone_codes_give_numbers_and_strings() {
        let h = Harness::start().await;
        let token = h.access_token().await;

        let reply = h.phone(&token, "phone:13580006666").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.content_type, "text/plain");
        assert_eq!(reply.json["errcode"], 0);
        assert_eq!(reply.json["errmsg"], "ok");
        let info = &reply.json["phone_info"];
        assert_eq!(info["phoneNumber"], "13580006666");
        assert_eq!(info["purePhoneNumber"], "13580006666");
        assert_eq!(info["countryCode"], json!(86));
        assert_eq!(info["watermark"]["appid"], APPID);
        assert!(info["watermark"]["timestamp"].as_u64().unwrap() > 1_600_000_000);

        let reply = h.phone(&token, "phone:2025550123:1.x").await;
        let info = &reply.json["phone_info"];
        assert_eq!(info["phoneNumber"], "+12025550123");
        assert_eq!(info["purePhoneNumber"], "2025550123");
        assert_eq!(info["countryCode"], json!(1));

        let reply = h.phone(&token, "phonestr:13580006666").await;
        assert_eq!(reply.json["phone_info"]["countryCode"], json!("86"));
        assert_eq!(reply.json["phone_info"]["phoneNumber"], "13580006666");
        let reply = h.phone(&token, "phonestr:61234567:852.n").await;
        assert_eq!(reply.json["phone_info"]["countryCode"], json!("852"));
        assert_eq!(reply.json["phone_info"]["phoneNumber"], "+85261234567");

        let reply = h.phone(&token, "badphone:13580006666\r\nX-Evil: 1").await;
        assert_eq!(reply.json["phone_info"]["phoneNumber"], "13580006666\r\nX-Evil: 1");
        assert_eq!(reply.json["phone_info"]["purePhoneNumber"], "13580006666\r\nX-Evil: 1");
    }

    #[tokio::test]
    async fn phone_codes_are_single_use_and_validated() {
        let h = Harness::start().await;
        let token = h.access_token().await;
        assert_eq!(h.phone(&token, "phone:13580006666.a").await.errcode(), 0);
        assert_eq!(h.phone(&token, "phone:13580006666.a").await.errcode(), 40029);
        for code in [
            "hello",
            "phone:",
            "phone:abc",
            "phone:123:",
            "phone:123:12345",
            "phone:123456789012345678901",
            "phonestr:12a",
        ] {
            assert_eq!(h.phone(&token, code).await.errcode(), 40029, "{code}");
        }
        assert_eq!(h.phone(&token, "fail:45011").await.errcode(), 45011);
        assert_eq!(h.phone(&token, "fail:-1:x").await.errcode(), -1);
        assert_eq!(h.phone(&token, "busy:1:phone:1.b").await.errcode(), -1);
        assert_eq!(h.phone(&token, "busy:1:phone:1.b").await.errcode(), 0);
        assert_eq!(h.phone(&token, "slow:20:phone:1").await.errcode(), 0);
        assert_eq!(h.phone(&token, "garbage").await.body, "<html>not json</html>");
        assert_eq!(h.phone(&token, "http:502").await.status, StatusCode::BAD_GATEWAY);

        let uri = format!("/wxa/business/getuserphonenumber?access_token={token}");
        for (body, errcode) in [
            ("not json", 47001),
            ("[1]", 47001),
            ("", 47001),
            ("{}", 40029),
            (r#"{"code":5}"#, 40029),
            (r#"{"code":""}"#, 40029),
        ] {
            assert_eq!(h.post(&uri, body).await.errcode(), errcode, "{body}");
        }
        // The openid in the body is accepted and ignored.
        let body = json!({"code": "phone:13580006666.c", "openid": "oFAKEalice"}).to_string();
        assert_eq!(h.post(&uri, &body).await.errcode(), 0);
        // Tokens are checked first.
        let no_token = h
            .post("/wxa/business/getuserphonenumber", r#"{"code":"phone:1"}"#)
            .await;
        assert_eq!(no_token.errcode(), 40001);
        assert_eq!(h.phone("FAKE_unknown", "phone:1.z").await.errcode(), 40001);
        assert_eq!(h.get(&uri).await.errcode(), 43002);
    }

    #[tokio::test]
    async fn minted_data_decrypts_under_the_current_session_key() {
        let h = Harness::start().await;
        let request = MintRequest {
            user: "frank".to_owned(),
            phone_number: "+12025550123".to_owned(),
            pure_phone_number: "2025550123".to_owned(),
            country_code: "1".to_owned(),
            appid: None,
            timestamp: None,
        };
        assert_eq!(
            h.fake.mint_phone(&request),
            Err(MintError::NeverLoggedIn {
                user: "frank".to_owned()
            })
        );
        h.login("frank").await;
        let key = h.fake.session_key("frank").unwrap();
        let minted = h.fake.mint_phone(&request).unwrap();
        let data = crypto::decrypt(&key, &minted.iv, &minted.encrypted_data).unwrap();
        assert_eq!(data.phone_number.as_deref(), Some("+12025550123"));
        assert_eq!(data.pure_phone_number.as_deref(), Some("2025550123"));
        assert_eq!(data.country_code.as_deref(), Some("1"));
        let watermark = data.watermark.unwrap();
        assert_eq!(watermark.appid, APPID);
        assert!(watermark.timestamp.abs_diff(unix_now()) < 5);

        // Over HTTP, with an explicit watermark.
        let body = json!({
            "user": "frank", "phoneNumber": "13580006666", "purePhoneNumber": "13580006666",
            "countryCode": "86", "appid": "wxsomeoneelse", "timestamp": 1_477_314_187u64,
        });
        let reply = h.post("/__fake/mint", &body.to_string()).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.content_type, "application/json");
        let minted: Minted = serde_json::from_value(reply.json).unwrap();
        let data = crypto::decrypt(&key, &minted.iv, &minted.encrypted_data).unwrap();
        assert_eq!(data.pure_phone_number.as_deref(), Some("13580006666"));
        let watermark = data.watermark.unwrap();
        assert_eq!(
            (watermark.appid.as_str(), watermark.timestamp),
            ("wxsomeoneelse", 1_477_314_187)
        );

        // A new login changes the key: data minted before no longer decrypts under the new one.
        h.login("frank.2").await;
        let new_key = h.fake.session_key("frank").unwrap();
        assert_ne!(new_key, key);
        assert!(crypto::decrypt(&new_key, &minted.iv, &minted.encrypted_data).is_err());
    }

    #[tokio::test]
    async fn mint_route_errors() {
        let h = Harness::start().await;
        let body = json!({"user": "nobody", "phoneNumber": "1", "purePhoneNumber": "1", "countryCode": "86"});
        let reply = h.post("/__fake/mint", &body.to_string()).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND);
        assert_eq!(reply.json["error"], "unknown_user");
        for bad in [
            "not json",
            "{}",
            r#"{"user":"a","phoneNumber":"1","purePhoneNumber":"1","countryCode":86}"#,
        ] {
            let reply = h.post("/__fake/mint", bad).await;
            assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
            assert_eq!(reply.json["error"], "bad_request");
        }
        assert_eq!(h.get("/__fake/mint").await.status, StatusCode::METHOD_NOT_ALLOWED);
    }

    #[test]
    fn mint_request_uses_camel_case_names() {
        let request = MintRequest {
            user: "u".to_owned(),
            phone_number: "1".to_owned(),
            pure_phone_number: "2".to_owned(),
            country_code: "86".to_owned(),
            appid: Some("wx".to_owned()),
            timestamp: Some(7),
        };
        let value = serde_json::to_value(&request).unwrap();
        assert_eq!(
            value,
            json!({"user": "u", "phoneNumber": "1", "purePhoneNumber": "2", "countryCode": "86", "appid": "wx", "timestamp": 7})
        );
        assert_eq!(serde_json::from_value::<MintRequest>(value).unwrap(), request);
        let minted = Minted {
            encrypted_data: "d".to_owned(),
            iv: "i".to_owned(),
        };
        assert_eq!(
            serde_json::to_value(&minted).unwrap(),
            json!({"encryptedData": "d", "iv": "i"})
        );
    }

    #[tokio::test]
    async fn stats_count_requests_and_pooled_connections() {
        let h = Harness::start().await;
        h.login("gina").await;
        h.login("gina").await;
        h.login("fail:-1").await;
        let token = h.access_token().await;
        h.phone(&token, "phone:1").await;
        h.get("/cgi-bin/token").await;
        h.get("/nowhere").await;
        let reply = h.get("/__fake/stats").await;
        assert_eq!(
            reply.json,
            json!({"jscode2session": 3, "token": 1, "stable_token": 1, "getuserphonenumber": 1, "connections": 1})
        );
        assert_eq!(h.fake.calls(Api::Jscode2Session), 3);
        assert_eq!(h.fake.calls(Api::GetUserPhoneNumber), 1);
        // Keep-alive: the pooled client used one connection for all of the above.
        assert_eq!(h.fake.connections(), 1);
    }

    #[tokio::test]
    async fn unknown_paths_and_odd_input_never_break_the_server() {
        let h = Harness::start().await;
        for path in ["/", "/nowhere", "/sns/jscode2session/extra", "/__fake/", "/%ff%fe"] {
            let reply = h.get(path).await;
            assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
            assert_eq!(reply.json, json!({"errcode": -1, "errmsg": "not found"}));
        }
        for query in ["%", "%zz=%1", "js_code=%ff%fe&&&==&appid", "a=b=c"] {
            let reply = h.get(&format!("/sns/jscode2session?{query}")).await;
            assert_eq!(reply.status, StatusCode::OK, "{query}");
        }
        let big = "x".repeat(MAX_BODY_BYTES + 1);
        assert_eq!(h.post("/cgi-bin/stable_token", &big).await.errcode(), 47001);
        assert_eq!(h.post("/__fake/mint", &big).await.status, StatusCode::BAD_REQUEST);
        let token = h.access_token().await;
        let reply = h
            .post(
                &format!("/wxa/business/getuserphonenumber?access_token={token}"),
                "\u{0}\u{ff}{",
            )
            .await;
        assert_eq!(reply.errcode(), 47001);

        // Bytes that are not HTTP at all.
        let mut raw = tokio::net::TcpStream::connect(h.addr).await.unwrap();
        raw.write_all(b"\x00\xff\xfe garbage \r\n\r\n\r\n").await.unwrap();
        let mut sink = Vec::new();
        let _ = raw.read_to_end(&mut sink).await;

        // Still serving.
        assert_eq!(h.login("helen").await.json["openid"], "oFAKEhelen");
    }

    #[tokio::test]
    async fn percent_encoded_query_values_are_decoded() {
        let h = Harness::start().await;
        let uri = format!(
            "/sns/jscode2session?appid={APPID}&secret={SECRET}&js_code=fail%3A45011&grant_type=authorization_code"
        );
        assert_eq!(h.get(&uri).await.errcode(), 45011);
        let uri = format!(
            "/sns/jscode2session?appid={APPID}&secret={SECRET}&js_code=fail:40226&grant_type=authorization_code"
        );
        assert_eq!(h.get(&uri).await.errcode(), 40226);
    }

    #[test]
    fn query_parsing() {
        let query = parse_query("a=1&b=x+y&c=%41%3a&d&a=2&e=%&f=%4&g=%zz&h=%e4%bd%a0");
        assert_eq!(query["a"], "1");
        assert_eq!(query["b"], "x y");
        assert_eq!(query["c"], "A:");
        assert_eq!(query["d"], "");
        assert_eq!(query["e"], "%");
        assert_eq!(query["f"], "%4");
        assert_eq!(query["g"], "%zz");
        assert_eq!(query["h"], "你");
        assert_eq!(percent_decode("%ff"), "\u{fffd}");
    }

    #[tokio::test]
    async fn serve_stops_when_shutdown_resolves() {
        let fake = FakeWeixin::new(APPID, SECRET);
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(fake.clone().serve(listener, async move {
            let _ = stopped.await;
        }));
        let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let response = client
            .get(format!("http://{addr}/__fake/stats").parse().unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }

    #[test]
    fn debug_hides_the_secret() {
        let debug = format!("{:?}", FakeWeixin::new(APPID, SECRET));
        assert!(!debug.contains(SECRET), "{debug}");
        assert!(debug.contains(APPID));
    }
}
