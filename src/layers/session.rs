//! A live session token becomes the request's [`Identity`].
//!
//! The session header (`session.header`, default `x-wx-session`, read under
//! its exact configured name) is taken off every request: it is the
//! client's credential and never goes upstream (its other spellings are
//! removed by the render step). When it names a live session, the session
//! goes into the request's extensions as an [`Identity`], for the routes
//! and for [`crate::identity::Render`], which alone writes headers. An
//! unknown, expired or malformed token, or none, adds nothing: the backend
//! sees an anonymous request and decides what it may do. A store that
//! cannot answer fails the request (503 `session_store_unavailable`): a
//! user who is logged in is never silently made anonymous.
//!
//! With several mini programs, a session presented on a request that a
//! host or path selector assigns to another app is not honoured (logged at
//! debug): the shop's token does not open the staff app's paths.
//!
//! ```text
//! ServiceBuilder::new().layer(SessionLayer::new(store, header, apps)).service(inner)
//! ```

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{BoxFuture, Either};
use http::{HeaderName, Request};
use tower::{Layer, Service};

use crate::apps::Apps;
use crate::body::Body;
use crate::error::Error;
use crate::identity::Identity;
use crate::session::{SessionStore, SessionToken};

#[derive(Clone)]
pub struct SessionLayer {
    state: Arc<State>,
}

/// One allocation for what every request's copy of the service needs.
struct State {
    store: Arc<dyn SessionStore>,
    header: HeaderName,
    apps: Arc<Apps>,
}

impl SessionLayer {
    pub fn new(store: Arc<dyn SessionStore>, header: HeaderName, apps: Arc<Apps>) -> Self {
        Self {
            state: Arc::new(State { store, header, apps }),
        }
    }
}

impl<S> Layer<S> for SessionLayer {
    type Service = SessionLookup<S>;
    fn layer(&self, inner: S) -> Self::Service {
        SessionLookup {
            inner,
            state: self.state.clone(),
        }
    }
}

#[derive(Clone)]
pub struct SessionLookup<S> {
    inner: S,
    state: Arc<State>,
}

impl<S> Service<Request<Body>> for SessionLookup<S>
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
        let Some(value) = req.headers_mut().remove(&self.state.header) else {
            // No token: the common pass-through case costs one lookup.
            return Either::Left(self.inner.call(req));
        };
        let Some(token) = SessionToken::parse(value.as_bytes()) else {
            tracing::debug!("malformed session token ignored");
            return Either::Left(self.inner.call(req));
        };
        let state = self.state.clone();
        // The ready service goes into the future; a fresh clone stays here.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Either::Right(Box::pin(async move {
            match state.store.get(&token).await? {
                Some(session)
                    if state
                        .apps
                        .selected(
                            req.headers(),
                            req.uri().authority().map(|a| a.as_str()),
                            req.uri().path(),
                        )
                        .is_some_and(|app| app != session.app()) =>
                {
                    tracing::debug!(
                        session_app = state.apps.get(session.app()).map_or("-", |a| a.name),
                        "a session of another app is not honoured here"
                    );
                }
                Some(session) => {
                    req.extensions_mut().insert(Identity {
                        token: Some(token),
                        session,
                        phone: None,
                    });
                }
                None => tracing::debug!("unknown or expired session token"),
            }
            inner.call(req).await
        }))
    }
}
