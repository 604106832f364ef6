//! The last layer: admits a request, then dispatches it to one of wxgate's
//! routes (login, phone, logout) or passes it through to the backend.
//!
//! Admission (RFC 9112 §3.2, RFC 9113 §8.3.1): two `Host` headers, an
//! HTTP/1.1 request without one, or an HTTP/2 `host` that differs from
//! `:authority` is 400; a path that spells one of wxgate's routes another
//! way is 400 `non_canonical_path` ([`crate::routes`]); a protected path
//! (`[access]`) without a session is 401 `session_required`, without a
//! remembered phone 403 `phone_required`.
//!
//! Route handlers run inside a `request` span that carries the request id,
//! so every line they and the WeChat client log names its request.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use http::{Request, Response, Version, header};
use tower::Service;
use tracing::Instrument;

use crate::body::Body;
use crate::error::Error;
use crate::identity::Identity;
use crate::layers::login::Login;
use crate::layers::logout::Logout;
use crate::layers::phone::Phone;
use crate::layers::request_id::X_REQUEST_ID;
use crate::proxy::Proxy;
use crate::routes::{Access, Classified, Route, Routes};

/// Dispatches to the routes and the proxy. Cheap to clone.
#[derive(Clone)]
pub struct Router {
    handlers: Arc<Handlers>,
    proxy: Proxy,
}

/// wxgate's own routes.
pub struct Handlers {
    pub routes: Arc<Routes>,
    pub access: Access,
    pub login: Login,
    pub phone: Phone,
    pub logout: Logout,
}

impl Router {
    pub fn new(handlers: Handlers, proxy: Proxy) -> Self {
        Self {
            handlers: Arc::new(handlers),
            proxy,
        }
    }
}

impl Service<Request<Body>> for Router {
    type Response = Response<Body>;
    type Error = Error;
    type Future = BoxFuture<'static, Result<Response<Body>, Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        if let Err(e) = admit(&req) {
            return Box::pin(std::future::ready(Err(e)));
        }
        let route = match self.handlers.routes.classify(req.uri().path()) {
            Classified::PassThrough => {
                let access = &self.handlers.access;
                if !access.is_empty()
                    && let Err(e) = access.check(req.uri().path(), req.extensions().get::<Identity>())
                {
                    return Box::pin(std::future::ready(Err(e)));
                }
                return self.proxy.call(req);
            }
            Classified::Route(route) => route,
            Classified::Spelling(route) => {
                let e = Error::NonCanonicalPath {
                    what: "this path is another spelling of one of wxgate's routes",
                    canonical: self
                        .handlers
                        .routes
                        .canonical(req.uri().path())
                        .unwrap_or(self.handlers.routes.path(route))
                        .into(),
                };
                return Box::pin(std::future::ready(Err(e)));
            }
        };
        let span = tracing::info_span!(
            "request",
            request_id = req
                .headers()
                .get(X_REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-"),
        );
        let (handlers, proxy) = (self.handlers.clone(), self.proxy.clone());
        Box::pin(
            async move {
                match route {
                    Route::Login => handlers.login.handle(req, &proxy).await,
                    Route::Phone => handlers.phone.handle(req, &proxy).await,
                    Route::Logout => handlers.logout.handle(req, &proxy).await,
                }
            }
            .instrument(span),
        )
    }
}

/// The Host rules every request must follow.
fn admit<B>(req: &Request<B>) -> Result<(), Error> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(Error::invalid("the request has two Host headers"));
    }
    if req.uri().authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(Error::invalid("the request target's authority has user information"));
    }
    match (req.version(), host) {
        // RFC 9112 3.2: even with an absolute-form target.
        (Version::HTTP_11, None) => Err(Error::invalid("an HTTP/1.1 request needs a Host header")),
        (Version::HTTP_2, Some(host)) => match req.uri().authority() {
            Some(authority) if !authority.as_str().as_bytes().eq_ignore_ascii_case(host.as_bytes()) => {
                Err(Error::invalid("the Host header differs from :authority"))
            }
            _ => Ok(()),
        },
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: Version, uri: &str, hosts: &[&str]) -> Request<()> {
        let mut b = Request::builder().version(version).uri(uri);
        for h in hosts {
            b = b.header(header::HOST, *h);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn host_rules() {
        assert!(admit(&req(Version::HTTP_11, "/", &["a"])).is_ok());
        assert!(admit(&req(Version::HTTP_11, "/", &["a", "b"])).is_err());
        assert!(admit(&req(Version::HTTP_11, "/", &[])).is_err());
        assert!(admit(&req(Version::HTTP_10, "/", &[])).is_ok());
        assert!(admit(&req(Version::HTTP_2, "http://a/", &["a"])).is_ok());
        assert!(admit(&req(Version::HTTP_2, "http://a/", &["A"])).is_ok());
        assert!(admit(&req(Version::HTTP_2, "http://a/", &["b"])).is_err());
        assert!(admit(&req(Version::HTTP_2, "http://a/", &[])).is_ok());
        assert!(
            admit(&req(Version::HTTP_11, "http://a/", &[])).is_err(),
            "absolute-form needs Host too"
        );
        assert!(admit(&req(Version::HTTP_11, "http://a/", &["b"])).is_ok());
        assert!(admit(&req(Version::HTTP_2, "http://evil@a/", &[])).is_err(), "userinfo");
        assert!(
            admit(&req(Version::HTTP_11, "http://evil@a/", &["a"])).is_err(),
            "userinfo"
        );
    }
}
