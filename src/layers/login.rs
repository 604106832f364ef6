//! The login route (`login.path`): wxgate exchanges the `wx.login` code with
//! WeChat itself and opens a session, so the backend never holds the
//! AppSecret or a session_key.
//!
//! - `POST` with `{"code": "..."}` (or a form body, or a `code` query
//!   parameter; the body's wins). A body that parses as JSON is read as
//!   JSON whatever its Content-Type says (curl's `-d` labels it a form). A
//!   code is 1 to 128 visible ASCII characters.
//! - Retries are safe: WeChat codes are single-use, so the code's outcome is
//!   remembered for `session.code_ttl` and concurrent identical exchanges are
//!   coalesced into one call ([`SessionStore::login`]). A retried login gets
//!   the same session token, with exactly one call to WeChat; it is logged
//!   and counted. A code WeChat refused is remembered as refused; a busy or
//!   unreachable WeChat is not, so a retry may pass.
//! - `code_ttl` is short (60 s by default): a remembered code opens its
//!   session to whoever sends it again, and a retry comes within seconds.
//!   The code never reaches the backend: it is removed from the forwarded
//!   body and query, so neither the backend nor a log behind it can replay it.
//! - The new session key is recorded as the user's newest, after the key of
//!   the session the request carried (when it is the same user), so the phone
//!   route can still decrypt data made under the key the login replaced.
//! - `mode = "forward"`: the request goes upstream with the new session's
//!   identity and the response comes back with the session header added.
//!   `mode = "respond"`: wxgate answers `{"session", "openid", "expires_in"}`
//!   itself (and sets the session header too).
//! - `[limits] login_per_address` bounds logins per client address.
//! - With several mini programs, the login is for the app a host or path
//!   selector, the WeChat Referer or the default names ([`Apps::for_login`]);
//!   none: 400 `unknown_app`. The code is exchanged with that app's
//!   credentials and the session belongs to that app.
//!
//! No WeChat error is ever forwarded upstream: a failed login is answered
//! here, as JSON.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::FutureExt;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, header};
use serde_json::Value;

use crate::apps::{App, Apps};
use crate::body::{self, Body};
use crate::config::{Config, LoginMode};
use crate::error::Error;
use crate::headers::visible_ascii;
use crate::hop::X_REAL_IP;
use crate::identity::Identity;
use crate::metrics;
use crate::proxy::Proxy;
use crate::ratelimit::Limiter;
use crate::session::{Issued, Session, SessionStore, SessionToken, unix_now};
use crate::weixin::client::WeixinClient;

pub struct Login {
    apps: Arc<Apps>,
    mode: LoginMode,
    body_limits: body::Limits,
    ttl_secs: u64,
    store: Arc<dyn SessionStore>,
    weixin: WeixinClient,
    session_header: HeaderName,
    per_address: Arc<Limiter<IpAddr>>,
}

impl Login {
    pub fn new(
        config: &Config,
        apps: Arc<Apps>,
        store: Arc<dyn SessionStore>,
        weixin: WeixinClient,
        session_header: HeaderName,
        per_address: Arc<Limiter<IpAddr>>,
    ) -> Self {
        Self {
            apps,
            mode: config.login.mode,
            body_limits: body::Limits::new(&config.server),
            ttl_secs: config.session.ttl.get().as_secs(),
            store,
            weixin,
            session_header,
            per_address,
        }
    }

    pub async fn handle(&self, req: Request<Body>, proxy: &Proxy) -> Result<Response<Body>, Error> {
        let app = (req.method() == Method::POST)
            .then(|| {
                let authority = req.uri().authority().map(|a| a.as_str());
                self.apps.for_login(req.headers(), authority, req.uri().path())
            })
            .flatten();
        let result = match app {
            Some(app) => self.login(app, req, proxy).await,
            None if req.method() != Method::POST => Err(Error::MethodNotAllowed("POST")),
            None => Err(Error::UnknownApp),
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.code(),
        };
        metrics::login(app.map_or(metrics::NO_APP, |a| a.name), outcome);
        result
    }

    async fn login(&self, app: &App, req: Request<Body>, proxy: &Proxy) -> Result<Response<Body>, Error> {
        if let Some(ip) = client_ip(req.headers()) {
            self.per_address.check(&ip)?;
        }
        let (mut parts, body) = req.into_parts();
        let bytes = body::read_limited(&parts.headers, body, self.body_limits).await?;
        let form = Form::of(&parts.headers, &bytes);
        let code = extract_code(form, &bytes, parts.uri.query())?;
        let previous = parts.extensions.remove::<Identity>();

        let login = self
            .store
            .login(&app.appid, &code, self.exchange(app, &code, previous).boxed())
            .await?;
        if !login.fresh {
            metrics::code_cache_hit(app.name);
            tracing::info!(app = app.name, "retried login answered from the code cache");
        }
        let Issued { token, session } = login.issued;
        let token_value = HeaderValue::from_str(&token.to_text())
            .map_err(|_| Error::Internal("a session token is not a header value".into()))?;
        let age = unix_now().saturating_sub(session.created_at());
        let expires_in = self.ttl_secs.saturating_sub(age);

        let mut res = match self.mode {
            LoginMode::Respond => {
                let body = serde_json::json!({
                    "session": token.to_text(),
                    "openid": session.openid(),
                    "expires_in": expires_in,
                });
                let mut res = Response::new(body::full(body.to_string()));
                *res.status_mut() = StatusCode::OK;
                res.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                res
            }
            LoginMode::Forward => {
                // The code stays here: neither the backend nor its logs see it.
                let body = without_code(form, &bytes);
                if body.len() != bytes.len() {
                    parts.headers.remove(header::CONTENT_LENGTH);
                }
                if let Some(uri) = uri_without_code(&parts.uri) {
                    parts.uri = uri;
                }
                parts.extensions.insert(Identity {
                    token: Some(token),
                    session,
                    phone: None,
                });
                proxy.forward(Request::from_parts(parts, body::full(body))).await?
            }
        };
        let h = res.headers_mut();
        h.insert(&self.session_header, token_value);
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok(res)
    }

    /// The one call to WeChat for a code of `app`, and the session it opens.
    async fn exchange(&self, app: &App, code: &str, previous: Option<Identity>) -> Result<Issued, Error> {
        let login = self.weixin.code2session(app, code).await?;
        let session =
            Session::new(&login.openid, login.unionid.as_deref(), login.session_key, unix_now()).in_app(app.index);
        let (appid, openid) = (&*app.appid, session.openid());
        if let Some(prev) = previous.filter(|p| p.session.app() == app.index && p.session.openid() == openid) {
            self.store
                .record_key(appid, openid, *prev.session.session_key())
                .await?;
        }
        self.store.record_key(appid, openid, *session.session_key()).await?;
        let token = SessionToken::generate();
        self.store.insert(&token, &session).await?;
        tracing::debug!(app = app.name, openid = %openid, unionid = session.unionid().is_some(), "login: new session");
        Ok(Issued { token, session })
    }
}

/// The client's address, as the server put it in `X-Real-IP`.
pub fn client_ip(headers: &HeaderMap) -> Option<IpAddr> {
    headers.get(X_REAL_IP)?.to_str().ok()?.parse().ok()
}

/// How the body is read: JSON (or empty), or a form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    Json,
    UrlEncoded,
}

impl Form {
    /// A body labelled a form that parses as a JSON object is JSON: curl's
    /// `-d '{"code":...}'` labels it `application/x-www-form-urlencoded`.
    fn of(headers: &HeaderMap, body: &[u8]) -> Self {
        let labelled_form = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.trim_start()
                    .to_ascii_lowercase()
                    .starts_with("application/x-www-form-urlencoded")
            });
        if labelled_form && !matches!(serde_json::from_slice::<Value>(body), Ok(Value::Object(_))) {
            Form::UrlEncoded
        } else {
            Form::Json
        }
    }
}

/// The login code from the body (JSON or form) or else the query.
fn extract_code(form: Form, body: &[u8], query: Option<&str>) -> Result<String, Error> {
    let from_body = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else if form == Form::UrlEncoded {
        form_urlencoded::parse(body)
            .find(|(k, _)| k == "code")
            .map(|(_, v)| v.into_owned())
    } else {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(map)) => match map.get("code") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(_) => return Err(Error::invalid("\"code\" must be a string")),
            },
            _ => {
                return Err(Error::invalid(
                    "the body must be a JSON object like {\"code\": \"...\"}",
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
        .ok_or_else(|| Error::invalid("missing \"code\" (from wx.login)"))?;
    if !visible_ascii(&code, 128) {
        return Err(Error::invalid("\"code\" must be 1 to 128 visible ASCII characters"));
    }
    Ok(code)
}

/// The body the backend gets: the client's, without `code`.
fn without_code(form: Form, body: &Bytes) -> Bytes {
    if body.iter().all(u8::is_ascii_whitespace) {
        return body.clone();
    }
    match form {
        Form::UrlEncoded => {
            if !form_urlencoded::parse(body).any(|(k, _)| k == "code") {
                return body.clone();
            }
            let kept = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(form_urlencoded::parse(body).filter(|(k, _)| k != "code"))
                .finish();
            Bytes::from(kept)
        }
        Form::Json => match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(mut map)) if map.contains_key("code") => {
                map.remove("code");
                Bytes::from(Value::Object(map).to_string())
            }
            _ => body.clone(),
        },
    }
}

/// The URI without a `code` query parameter; `None` when it has none.
fn uri_without_code(uri: &Uri) -> Option<Uri> {
    let query = uri.query()?;
    if !form_urlencoded::parse(query.as_bytes()).any(|(k, _)| k == "code") {
        return None;
    }
    let kept = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form_urlencoded::parse(query.as_bytes()).filter(|(k, _)| k != "code"))
        .finish();
    let path_and_query = if kept.is_empty() {
        uri.path().to_owned()
    } else {
        format!("{}?{kept}", uri.path())
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = path_and_query.parse().ok();
    Uri::from_parts(parts).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn code(body: &str, query: Option<&str>) -> Result<String, Error> {
        extract_code(Form::Json, body.as_bytes(), query)
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
    fn form_bodies_work_and_json_labelled_a_form_is_json() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            "application/x-www-form-urlencoded".parse().unwrap(),
        );
        let form = Form::of(&h, b"a=1&code=xyz");
        assert_eq!(form, Form::UrlEncoded);
        assert_eq!(extract_code(form, b"a=1&code=xyz", None).unwrap(), "xyz");
        let json = br#"{"code":"abc"}"#;
        let form = Form::of(&h, json);
        assert_eq!(form, Form::Json, "curl -d labels JSON a form");
        assert_eq!(extract_code(form, json, None).unwrap(), "abc");
    }

    #[test]
    fn the_code_is_removed_from_what_the_backend_gets() {
        let b = |s: &'static str| Bytes::from_static(s.as_bytes());
        assert_eq!(
            without_code(Form::Json, &b(r#"{"code":"c","nick":"n"}"#)),
            r#"{"nick":"n"}"#
        );
        assert_eq!(without_code(Form::Json, &b(r#"{"code":"c"}"#)), "{}");
        assert_eq!(without_code(Form::Json, &b(r#"{"nick":"n"}"#)), r#"{"nick":"n"}"#);
        assert_eq!(without_code(Form::UrlEncoded, &b("a=1&code=c&b=2")), "a=1&b=2");
        assert_eq!(without_code(Form::Json, &b("")), "");
        let uri: Uri = "/api/login?code=c&x=1".parse().unwrap();
        assert_eq!(uri_without_code(&uri).unwrap(), "/api/login?x=1");
        let uri: Uri = "/api/login?code=c".parse().unwrap();
        assert_eq!(uri_without_code(&uri).unwrap(), "/api/login");
        assert!(uri_without_code(&"/api/login?x=1".parse().unwrap()).is_none());
    }

    proptest! {
        #[test]
        fn the_body_parser_never_panics(body in proptest::collection::vec(any::<u8>(), 0..512), query in ".{0,64}") {
            let _ = extract_code(Form::Json, &body, Some(&query));
            let _ = extract_code(Form::UrlEncoded, &body, Some(&query));
            let _ = without_code(Form::Json, &Bytes::from(body.clone()));
            let _ = without_code(Form::UrlEncoded, &Bytes::from(body));
        }
    }
}
