//! One log line and the metrics for every request, a request id, and the
//! conversion of errors into responses.
//!
//! - `x-request-id`: a client's value is kept when it is short visible ASCII,
//!   otherwise wxgate makes one; it goes upstream and back to the client.
//! - The log line (target `wxgate::access`, level info) has method, path
//!   (never the query, which may carry codes), status, latency, route kind
//!   and request id. `RUST_LOG=wxgate::access=off` silences it.
//! - Errors from the layers below become responses here, through
//!   [`Error::into_response`], the one place that makes error responses; the
//!   service below this layer therefore never fails.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use http::header::Entry;
use http::{HeaderName, HeaderValue, Method, Request, Response};
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::body::Body;
use crate::error::Error;
use crate::metrics::{self, RouteKind};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

#[derive(Clone)]
pub struct AccessLogLayer {
    state: Arc<State>,
}

struct State {
    login_path: Box<str>,
    phone_path: Box<str>,
    /// Random per worker, so ids from several workers and restarts differ.
    id_prefix: u64,
    counter: AtomicU64,
}

impl AccessLogLayer {
    /// One per worker thread: the request-id counter is then never shared.
    pub fn new(login_path: &str, phone_path: &str) -> Self {
        Self {
            state: Arc::new(State {
                login_path: login_path.into(),
                phone_path: phone_path.into(),
                id_prefix: rand::random(),
                counter: AtomicU64::new(0),
            }),
        }
    }
}

impl<S> Layer<S> for AccessLogLayer {
    type Service = AccessLog<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AccessLog {
            inner,
            state: self.state.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AccessLog<S> {
    inner: S,
    state: Arc<State>,
}

/// `prefix` and `n` as 32 hex digits, without a detour through `format!`.
fn request_id(prefix: u64, n: u64) -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 32];
    for (i, byte) in prefix.to_be_bytes().iter().chain(n.to_be_bytes().iter()).enumerate() {
        buf[2 * i] = HEX[usize::from(byte >> 4)];
        buf[2 * i + 1] = HEX[usize::from(byte & 0xf)];
    }
    HeaderValue::from_bytes(&buf).unwrap_or(HeaderValue::from_static("-"))
}

fn valid_request_id(v: &HeaderValue) -> bool {
    !v.is_empty() && v.len() <= 128 && v.as_bytes().iter().all(u8::is_ascii_graphic)
}

impl<S> Service<Request<Body>> for AccessLog<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Error>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The services below are always ready (they hold no capacity).
        match self.inner.poll_ready(cx) {
            Poll::Ready(_) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let start = Instant::now();
        metrics::request_started();
        let path = req.uri().path();
        let route = if path == &*self.state.login_path {
            RouteKind::Login
        } else if path == &*self.state.phone_path {
            RouteKind::Phone
        } else {
            RouteKind::Passthrough
        };
        // One lookup: keep a valid id, replace an invalid one, add a missing one.
        let request_id = match req.headers_mut().entry(X_REQUEST_ID) {
            Entry::Occupied(o) if valid_request_id(o.get()) => o.get().clone(),
            entry => {
                let n = self.state.counter.fetch_add(1, Ordering::Relaxed);
                let v = request_id(self.state.id_prefix, n);
                match entry {
                    Entry::Occupied(mut o) => {
                        o.insert(v.clone());
                    }
                    Entry::Vacant(e) => {
                        e.insert(v.clone());
                    }
                }
                v
            }
        };
        let log = tracing::enabled!(target: "wxgate::access", tracing::Level::INFO)
            .then(|| Box::new((req.method().clone(), req.uri().path().to_owned())));
        ResponseFuture {
            inner: self.inner.call(req),
            start,
            route,
            request_id: Some(request_id),
            log,
        }
    }
}

pin_project_lite::pin_project! {
    /// Records the request when the response head is ready, or, when the
    /// client goes away first and the future is dropped, with status 499
    /// (nginx's "client closed request").
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        start: Instant,
        route: RouteKind,
        request_id: Option<HeaderValue>,
        log: Option<Box<(Method, String)>>,
    }

    impl<F> PinnedDrop for ResponseFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(id) = this.request_id.take() {
                record(*this.start, *this.route, CLIENT_CLOSED, &id, this.log.take());
            }
        }
    }
}

const CLIENT_CLOSED: u16 = 499;

fn record(start: Instant, route: RouteKind, status: u16, id: &HeaderValue, log: Option<Box<(Method, String)>>) {
    let now = Instant::now();
    let elapsed = now - start;
    metrics::request_finished(route, status, elapsed, now.into_std());
    if let Some(log) = log {
        let (method, path) = &*log;
        tracing::info!(
            target: "wxgate::access",
            %method,
            path = %path,
            status,
            latency_us = elapsed.as_micros() as u64,
            route = route.as_str(),
            request_id = %id.to_str().unwrap_or("-"),
        );
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, Error>>,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut res = match ready!(this.inner.poll(cx)) {
            Ok(res) => res,
            Err(e) => e.into_response(),
        };
        if let Some(id) = this.request_id.take() {
            record(*this.start, *this.route, res.status().as_u16(), &id, this.log.take());
            res.headers_mut().insert(X_REQUEST_ID, id);
        }
        Poll::Ready(Ok(res))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_32_hex_digits_and_distinct() {
        let a = request_id(0x0123_4567_89ab_cdef, 1);
        assert_eq!(a, "0123456789abcdef0000000000000001");
        assert_ne!(request_id(7, 1), request_id(7, 2));
        assert!(valid_request_id(&a));
        assert!(!valid_request_id(&HeaderValue::from_static("")));
        assert!(!valid_request_id(&HeaderValue::from_str(&"x".repeat(129)).unwrap()));
    }
}
