//! A live session token becomes identity headers.
//!
//! The session header (`session.header`, default `x-wx-session`) is taken off
//! every request: it is the client's credential and never goes upstream. When
//! it names a live session, the request gets the identity headers (openid,
//! unionid when WeChat gave one, appid) and, with `phone.remember`, the phone
//! headers; the session also travels in the request's extensions
//! ([`CurrentSession`]) for the login and phone layers. An unknown, expired
//! or malformed token, or none, adds nothing: the backend sees an anonymous
//! request and decides what it may do.
//!
//! Runs after `StripIdentityLayer`, so every identity header the backend sees
//! was inserted here (or by the login/phone layers), never kept from the
//! client: "insert or remove", never "keep".

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{BoxFuture, Either};
use http::{HeaderMap, HeaderName, HeaderValue, Request};
use tower::{Layer, Service};

use crate::body::Body;
use crate::config::Config;
use crate::error::Error;
use crate::session::{PhoneNumber, Session, SessionStore, SessionToken};

/// The session a request carried, for the layers below.
#[derive(Clone)]
pub struct CurrentSession {
    pub token: SessionToken,
    pub session: Session,
}

/// The header names wxgate sends upstream, parsed once.
#[derive(Debug)]
pub struct IdentityHeaders {
    pub openid: HeaderName,
    pub unionid: HeaderName,
    pub appid: HeaderName,
    pub appid_value: HeaderValue,
    pub phone_number: HeaderName,
    pub pure_phone_number: HeaderName,
    pub country_code: HeaderName,
    pub session: HeaderName,
}

impl IdentityHeaders {
    /// Config must be validated first (header names and appid are checked there).
    pub fn new(config: &Config) -> Result<Self, String> {
        let name = |key: &str, v: &str| {
            HeaderName::from_bytes(v.as_bytes()).map_err(|_| format!("{key}: {v:?} is not a valid header name"))
        };
        let h = &config.headers;
        Ok(Self {
            openid: name("headers.openid", &h.openid)?,
            unionid: name("headers.unionid", &h.unionid)?,
            appid: name("headers.appid", &h.appid)?,
            appid_value: HeaderValue::from_str(&config.weixin.appid)
                .map_err(|_| "weixin.appid: not a valid header value".to_string())?,
            phone_number: name("headers.phone_number", &h.phone_number)?,
            pure_phone_number: name("headers.pure_phone_number", &h.pure_phone_number)?,
            country_code: name("headers.country_code", &h.country_code)?,
            session: name("session.header", &config.session.header)?,
        })
    }

    /// Sets openid, unionid (or removes it) and appid for `session`.
    pub fn insert_identity(&self, headers: &mut HeaderMap, session: &Session) {
        match HeaderValue::from_str(session.openid()) {
            Ok(v) => {
                headers.insert(&self.openid, v);
            }
            // Login refuses such openids; never forward a half identity.
            Err(_) => return,
        }
        match session.unionid().and_then(|u| HeaderValue::from_str(u).ok()) {
            Some(v) => {
                headers.insert(&self.unionid, v);
            }
            None => {
                headers.remove(&self.unionid);
            }
        }
        headers.insert(&self.appid, self.appid_value.clone());
    }

    /// Sets the three phone headers.
    pub fn insert_phone(&self, headers: &mut HeaderMap, phone: &PhoneNumber) {
        for (name, value) in [
            (&self.phone_number, &phone.phone_number),
            (&self.pure_phone_number, &phone.pure_phone_number),
            (&self.country_code, &phone.country_code),
        ] {
            // Values are checked to be digits (and '+') before they are stored.
            if let Ok(v) = HeaderValue::from_str(value) {
                headers.insert(name, v);
            }
        }
    }

    pub fn remove_phone(&self, headers: &mut HeaderMap) {
        headers.remove(&self.phone_number);
        headers.remove(&self.pure_phone_number);
        headers.remove(&self.country_code);
    }
}

#[derive(Clone)]
pub struct IdentityLayer {
    state: Arc<State>,
}

struct State {
    store: Arc<dyn SessionStore>,
    headers: Arc<IdentityHeaders>,
    remember_phone: bool,
}

impl IdentityLayer {
    pub fn new(store: Arc<dyn SessionStore>, headers: Arc<IdentityHeaders>, remember_phone: bool) -> Self {
        Self {
            state: Arc::new(State {
                store,
                headers,
                remember_phone,
            }),
        }
    }
}

impl<S> Layer<S> for IdentityLayer {
    type Service = Identity<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Identity {
            inner,
            state: self.state.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Identity<S> {
    inner: S,
    state: Arc<State>,
}

impl<S> Service<Request<Body>> for Identity<S>
where
    S: Service<Request<Body>, Error = Error> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = Error;
    type Future = Either<S::Future, BoxFuture<'static, Result<S::Response, Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let Some(value) = req.headers_mut().remove(&self.state.headers.session) else {
            // No token: the common pass-through case costs one lookup.
            return Either::Left(self.inner.call(req));
        };
        let Some(token) = SessionToken::parse(value.as_bytes()) else {
            tracing::debug!("malformed session token ignored");
            return Either::Left(self.inner.call(req));
        };
        let state = self.state.clone();
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Either::Right(Box::pin(async move {
            match state.store.get(token).await {
                Ok(Some(session)) => {
                    let headers = req.headers_mut();
                    state.headers.insert_identity(headers, &session);
                    if state.remember_phone
                        && let Some(phone) = session.phone()
                    {
                        state.headers.insert_phone(headers, phone);
                    }
                    req.extensions_mut().insert(CurrentSession { token, session });
                }
                Ok(None) => tracing::debug!("unknown or expired session token"),
                // A store that cannot answer leaves the request anonymous
                // rather than failing pass-through traffic.
                Err(e) => tracing::warn!(error = %e, "session store lookup failed"),
            }
            inner.call(req).await
        }))
    }
}
