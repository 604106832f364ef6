//! Anti-spoofing, first on every request: client-sent copies of the headers
//! that wxgate itself establishes are removed before anything else runs.
//!
//! The backend trusts `x-wx-openid` and friends because only wxgate can have
//! set them. So every request header whose name matches a configured
//! identity or phone header is dropped, comparing case-insensitively and
//! reading `_` as `-`: some servers and frameworks (CGI-style environments,
//! several Python and PHP stacks) map `X_WX_OPENID` and `X-Wx-Openid` to the
//! same variable, which is how oauth2-proxy's CVE-2025-64484 happened.
//!
//! The session header is a credential, read by the identity layer under its
//! exact configured name; its `_` variants are removed here, so no spelling
//! of it can reach the backend.
//!
//! A removed header is logged at debug and counted in
//! `wxgate_spoofed_headers_removed_total`.
//!
//! ```text
//! ServiceBuilder::new().layer(StripIdentityLayer::new(&config)).service(inner)
//! ```

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderMap, HeaderName, Request};
use tower::{Layer, Service};

use crate::config::{Config, normalize_header_name};
use crate::metrics;

/// Names to strip, normalised (lower case, `-` for `_`).
#[derive(Debug)]
struct Names {
    /// Identity and phone headers: every spelling goes.
    strip: Vec<Box<[u8]>>,
    /// The session header: every spelling but the exact one goes.
    session: Box<[u8]>,
    /// The exact one, as hyper presents it (lower case, `_` kept), so that a
    /// configured `x_token` is read by the identity layer, not stripped.
    session_exact: Box<[u8]>,
}

#[derive(Debug, Clone)]
pub struct StripIdentityLayer {
    names: Arc<Names>,
}

impl StripIdentityLayer {
    pub fn new(config: &Config) -> Self {
        let strip = config
            .headers
            .all()
            .iter()
            .map(|(_, n)| normalize_header_name(n).into_bytes().into())
            .collect();
        let session = normalize_header_name(&config.session.header).into_bytes().into();
        let session_exact = config.session.header.to_ascii_lowercase().into_bytes().into();
        Self {
            names: Arc::new(Names {
                strip,
                session,
                session_exact,
            }),
        }
    }
}

impl<S> Layer<S> for StripIdentityLayer {
    type Service = StripIdentity<S>;
    fn layer(&self, inner: S) -> Self::Service {
        StripIdentity {
            inner,
            names: self.names.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct StripIdentity<S> {
    inner: S,
    names: Arc<Names>,
}

impl<S, B> Service<Request<B>> for StripIdentity<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        strip(req.headers_mut(), &self.names);
        self.inner.call(req)
    }
}

/// Equal after lower-casing and reading `_` as `-`. `normalized` is already so.
fn matches(name: &[u8], normalized: &[u8]) -> bool {
    name.len() == normalized.len()
        && name
            .iter()
            .zip(normalized)
            .all(|(&a, &b)| (if a == b'_' { b'-' } else { a.to_ascii_lowercase() }) == b)
}

fn strip(headers: &mut HeaderMap, names: &Names) {
    let mut doomed: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        let n = name.as_str().as_bytes();
        let spoofed =
            names.strip.iter().any(|s| matches(n, s)) || (n != &*names.session_exact && matches(n, &names.session));
        if spoofed {
            doomed.push(name.clone());
        }
    }
    for name in doomed {
        headers.remove(&name);
        metrics::spoofed_header_removed();
        tracing::debug!(header = %name, "removed a client-sent copy of an identity header");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::{ServiceBuilder, ServiceExt};

    #[tokio::test]
    async fn every_spelling_of_an_identity_header_is_removed() {
        let mut config = Config::default();
        config.headers.phone_number = "X-WX-Phone-Number".into();
        let svc = ServiceBuilder::new()
            .layer(StripIdentityLayer::new(&config))
            .service_fn(|req: Request<()>| async move { Ok::<_, Infallible>(req.headers().clone()) });
        let req = Request::builder()
            .header("x-wx-openid", "spoof")
            .header("X-Wx-OpenID", "spoof")
            .header("x_wx_openid", "spoof")
            .header("X_WX_UNIONID", "spoof")
            .header("x-wx-appid", "spoof")
            .header("x-wx-phone_number", "spoof")
            .header("x_wx_pure_phone_number", "spoof")
            .header("x-wx-country-code", "spoof")
            .header("x_wx_session", "spoofed-session-spelling")
            .header("x-wx-session", "kept for the identity layer")
            .header("x-wx-openidx", "not ours")
            .header("authorization", "kept")
            .body(())
            .unwrap();
        let headers = svc.oneshot(req).await.unwrap();
        let names: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(headers.contains_key("x-wx-session"));
        assert!(headers.contains_key("x-wx-openidx"));
        assert!(headers.contains_key("authorization"));
    }

    #[tokio::test]
    async fn a_session_header_configured_with_underscores_is_kept_for_the_identity_layer() {
        let mut config = Config::default();
        config.session.header = "X_Token".into();
        let svc = ServiceBuilder::new()
            .layer(StripIdentityLayer::new(&config))
            .service_fn(|req: Request<()>| async move { Ok::<_, Infallible>(req.headers().clone()) });
        let req = Request::builder()
            .header("x_token", "the credential")
            .header("x-token", "another spelling")
            .body(())
            .unwrap();
        let headers = svc.oneshot(req).await.unwrap();
        assert_eq!(headers.len(), 1, "{headers:?}");
        assert_eq!(headers["x_token"], "the credential");
    }
}
