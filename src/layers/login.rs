//! The login route (`login.path`): wxgate exchanges the `wx.login` code with
//! WeChat itself and opens a session, so the backend never holds the
//! AppSecret or a session_key.
//!
//! - `POST` with `{"code": "..."}` (or a form body, or a `code` query
//!   parameter; the body's wins). A code is 1 to 128 visible ASCII characters.
//! - Retries are safe: WeChat codes are single-use, so the code's outcome is
//!   remembered for `session.code_ttl` and concurrent identical exchanges are
//!   coalesced into one call (moka's `entry().or_try_insert_with`). A retried
//!   login gets the same session token, with exactly one call to WeChat.
//!   Failures are not remembered: a busy answer must stay retryable.
//! - The new session key is recorded as the user's newest, after the key of
//!   the session the request carried (when it is the same user), so the phone
//!   route can still decrypt data made under the key the login replaced.
//! - `mode = "forward"`: the request goes upstream with the identity headers
//!   and the response comes back with the session header added.
//!   `mode = "respond"`: wxgate answers `{"session", "openid", "expires_in"}`
//!   itself (and sets the session header too).
//!
//! No WeChat error is ever forwarded upstream: a failed login is answered
//! here, as JSON, through [`Error::into_response`].

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use moka::future::Cache;
use serde_json::Value;
use tower::Service;

use crate::layers::route::{Route, RouteHandler, RouteLayer};

use crate::body::{self, Body};
use crate::config::{Config, LoginMode};
use crate::error::Error;
use crate::layers::identity::{CurrentSession, IdentityHeaders};
use crate::metrics;
use crate::session::{Session, SessionStore, SessionToken, unix_now};
use crate::weixin::client::WeixinClient;

/// A code's outcome: the session it opened.
#[derive(Clone)]
struct Issued {
    token: SessionToken,
    session: Session,
}

/// State shared by every worker: the code cache must be one, or a retry
/// landing on another worker would call WeChat again.
pub struct LoginShared {
    codes: Cache<String, Issued>,
}

impl LoginShared {
    pub fn new(config: &Config) -> Self {
        Self {
            codes: Cache::builder()
                .max_capacity(config.session.max_entries)
                .time_to_live(config.session.code_ttl.get())
                .build(),
        }
    }
}

/// The login route as a layer.
pub type LoginLayer = RouteLayer<LoginRoute>;
/// The login route's service.
pub type Login<S> = Route<S, LoginRoute>;

pub struct LoginRoute {
    path: Box<str>,
    mode: LoginMode,
    body_limits: body::Limits,
    ttl_secs: u64,
    shared: Arc<LoginShared>,
    store: Arc<dyn SessionStore>,
    weixin: WeixinClient,
    headers: Arc<IdentityHeaders>,
}

impl RouteLayer<LoginRoute> {
    pub fn new(
        config: &Config,
        shared: Arc<LoginShared>,
        store: Arc<dyn SessionStore>,
        weixin: WeixinClient,
        headers: Arc<IdentityHeaders>,
    ) -> Self {
        Self::from_handler(LoginRoute {
            path: config.login.path.as_str().into(),
            mode: config.login.mode,
            body_limits: body::Limits::new(&config.server),
            ttl_secs: config.session.ttl.get().as_secs(),
            shared,
            store,
            weixin,
            headers,
        })
    }
}

impl RouteHandler for LoginRoute {
    fn path(&self) -> &str {
        &self.path
    }

    async fn handle<S>(self: Arc<Self>, inner: S, req: Request<Body>) -> Result<Response<Body>, Error>
    where
        S: Service<Request<Body>, Response = Response<Body>, Error = Error> + Send + 'static,
        S::Future: Send,
    {
        let result = self.login(inner, req).await;
        metrics::login(match &result {
            Ok(_) => "ok",
            Err(e) => e.code(),
        });
        result
    }
}

impl LoginRoute {
    async fn login<S>(&self, mut inner: S, req: Request<Body>) -> Result<Response<Body>, Error>
    where
        S: Service<Request<Body>, Response = Response<Body>, Error = Error>,
    {
        if req.method() != Method::POST {
            return Err(Error::MethodNotAllowed("POST"));
        }
        let (mut parts, body) = req.into_parts();
        let bytes = body::read_limited(&parts.headers, body, self.body_limits).await?;
        let code = extract_code(&parts.headers, &bytes, parts.uri.query())?;
        let previous = parts.extensions.get::<CurrentSession>().cloned();

        let entry = self
            .shared
            .codes
            .entry(code.clone())
            .or_try_insert_with(self.exchange(&code, previous))
            .await
            .map_err(|e| Error::clone(&e))?;
        if !entry.is_fresh() {
            metrics::code_cache_hit();
            tracing::debug!("retried login answered from the code cache");
        }
        let issued = entry.into_value();
        let token = HeaderValue::from_str(&issued.token.to_text())
            .map_err(|_| Error::Internal("session token is not a header value".into()))?;
        let age = unix_now().saturating_sub(issued.session.created_at());
        let expires_in = self.ttl_secs.saturating_sub(age);

        let mut res = match self.mode {
            LoginMode::Respond => {
                let body = serde_json::json!({
                    "session": issued.token.to_text(),
                    "openid": issued.session.openid(),
                    "expires_in": expires_in,
                });
                let mut res = Response::new(body::full(body.to_string()));
                *res.status_mut() = StatusCode::OK;
                res.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                res
            }
            LoginMode::Forward => {
                self.headers.insert_identity(&mut parts.headers, &issued.session);
                // A phone remembered for the previous session is not this one's.
                self.headers.remove_phone(&mut parts.headers);
                parts.extensions.insert(CurrentSession {
                    token: issued.token,
                    session: issued.session.clone(),
                });
                inner.call(Request::from_parts(parts, body::full(bytes))).await?
            }
        };
        let h = res.headers_mut();
        h.insert(&self.headers.session, token);
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok(res)
    }

    /// The one call to WeChat for a code, and the session it opens.
    async fn exchange(&self, code: &str, previous: Option<CurrentSession>) -> Result<Issued, Error> {
        {
            let login = self.weixin.code2session(code).await?;
            let session = Session::new(&login.openid, login.unionid.as_deref(), login.session_key, unix_now());
            if let Some(prev) = previous.filter(|p| p.session.openid() == session.openid()) {
                self.store
                    .record_key(session.openid(), *prev.session.session_key())
                    .await?;
            }
            self.store.record_key(session.openid(), *session.session_key()).await?;
            let token = SessionToken::generate();
            self.store.insert(token, session.clone()).await?;
            tracing::debug!(openid = %session.openid(), unionid = session.unionid().is_some(), "login: new session");
            Ok(Issued { token, session })
        }
    }
}

/// The login code from the body (JSON or form) or else the query.
fn extract_code(headers: &http::HeaderMap, body: &Bytes, query: Option<&str>) -> Result<String, Error> {
    let from_body = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else if is_form(headers) {
        form_urlencoded::parse(body)
            .find(|(k, _)| k == "code")
            .map(|(_, v)| v.into_owned())
    } else {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(map)) => match map.get("code") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(_) => return Err(Error::InvalidRequest("\"code\" must be a string".into())),
            },
            _ => {
                return Err(Error::InvalidRequest(
                    "the body must be a JSON object like {\"code\": \"...\"}".into(),
                ));
            }
        }
    };
    let code = from_body
        .or_else(|| {
            query
                .and_then(|q| form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "code"))
                .map(|(_, v)| v.into_owned())
        })
        .ok_or_else(|| Error::InvalidRequest("missing \"code\" (from wx.login)".into()))?;
    if code.is_empty() || code.len() > 128 || !code.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::InvalidRequest(
            "\"code\" must be 1 to 128 visible ASCII characters".into(),
        ));
    }
    Ok(code)
}

fn is_form(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;
    use proptest::prelude::*;

    fn code(body: &str, query: Option<&str>) -> Result<String, Error> {
        extract_code(&HeaderMap::new(), &Bytes::from(body.to_owned()), query)
    }

    #[test]
    fn the_body_code_wins_over_the_query() {
        assert_eq!(code(r#"{"code":"abc"}"#, Some("code=zzz")).unwrap(), "abc");
        assert_eq!(code("", Some("x=1&code=q%2Bq")).unwrap(), "q+q");
        assert_eq!(code(r#"{"other":1}"#, Some("code=zzz")).unwrap(), "zzz");
    }

    #[test]
    fn bad_codes_and_bodies_are_refused() {
        assert!(code("", None).is_err());
        assert!(code(r#"{"code":""}"#, None).is_err());
        assert!(code(r#"{"code":"a b"}"#, None).is_err());
        assert!(code(r#"{"code":"é"}"#, None).is_err());
        assert!(code(&format!(r#"{{"code":"{}"}}"#, "a".repeat(129)), None).is_err());
        assert!(code(&format!(r#"{{"code":"{}"}}"#, "a".repeat(128)), None).is_ok());
        assert!(code(r#"{"code":12}"#, None).is_err());
        assert!(code("[1]", None).is_err());
        assert!(code("not json", Some("code=x")).is_err());
    }

    #[test]
    fn form_bodies_work() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            "application/x-www-form-urlencoded".parse().unwrap(),
        );
        assert_eq!(
            extract_code(&h, &Bytes::from_static(b"a=1&code=xyz"), None).unwrap(),
            "xyz"
        );
    }

    proptest! {
        #[test]
        fn the_body_parser_never_panics(body in proptest::collection::vec(any::<u8>(), 0..512), query in ".{0,64}") {
            let _ = extract_code(&HeaderMap::new(), &Bytes::from(body), Some(&query));
        }
    }
}
