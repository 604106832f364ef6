//! The metrics of every request, and its access log line.
//!
//! - Metrics are recorded when the response head is ready (status, route
//!   kind, time to the head), or with status 499 when the client went away
//!   before it (nginx's "client closed request").
//! - The log line (target `wxgate::access`, level info) is written when the
//!   response has been sent, so that it can say how it ended and how many
//!   body bytes went out: method, path (never the query, which may carry
//!   codes), status, route kind, request id, client address (`X-Real-IP`, as
//!   wxgate set it), user agent, the request's declared body length, the
//!   response body bytes sent, the time to the head and in all, and the
//!   outcome: `ok`, `client_closed` (the client went away) or `shutdown`
//!   (cut when `server.shutdown_grace` ran out). The layer builds the
//!   [`AccessRecord`] and hands it on in the response's extensions; the
//!   server's response body writes it ([`AccessRecord::finish`]).
//!   `RUST_LOG=wxgate::access=off` silences it, and then no record is made.
//!
//! It sits above the errors layer: a failure is logged once there, as the
//! failure it is, and here as the answer the client got.
//!
//! ```text
//! ServiceBuilder::new().layer(AccessLogLayer::new(routes)).layer(ErrorsLayer).service(inner)
//! ```

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{HeaderValue, Method, Request, Response, header};
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::hop::X_REAL_IP;
use crate::layers::request_id::X_REQUEST_ID;
use crate::metrics::{self, RouteKind};
use crate::routes::Routes;

#[derive(Clone)]
pub struct AccessLogLayer {
    routes: Arc<Routes>,
}

impl AccessLogLayer {
    pub fn new(routes: Arc<Routes>) -> Self {
        Self { routes }
    }
}

impl<S> Layer<S> for AccessLogLayer {
    type Service = AccessLog<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AccessLog {
            inner,
            routes: self.routes.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AccessLog<S> {
    inner: S,
    routes: Arc<Routes>,
}

/// One request's access log line, waiting for its response to be sent.
#[derive(Debug)]
pub struct AccessRecord {
    method: Method,
    path: Box<str>,
    route: RouteKind,
    status: u16,
    request_id: Option<HeaderValue>,
    client: Option<HeaderValue>,
    user_agent: Option<HeaderValue>,
    request_bytes: Option<u64>,
    start: Instant,
    to_head: Duration,
}

/// How a response ended, for its log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    ClientClosed,
    Shutdown,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::ClientClosed => "client_closed",
            Outcome::Shutdown => "shutdown",
        }
    }

    /// A response that did not finish: cut by the shutdown grace when the
    /// worker says so, else abandoned by its client.
    pub fn cut() -> Self {
        if CUT_BY_SHUTDOWN.with(Cell::get) {
            Outcome::Shutdown
        } else {
            Outcome::ClientClosed
        }
    }
}

thread_local! {
    /// Set by a worker when `server.shutdown_grace` ran out and it drops
    /// what is left, so those requests are not logged as clients leaving.
    static CUT_BY_SHUTDOWN: Cell<bool> = const { Cell::new(false) };
}

/// The calling worker is about to drop its remaining connections.
pub fn mark_shutdown_cut() {
    CUT_BY_SHUTDOWN.with(|c| c.set(true));
}

impl AccessRecord {
    /// Writes the line: the response is done (`outcome`), `bytes` of its
    /// body went out.
    pub fn finish(&self, bytes: u64, outcome: Outcome) {
        fn s(v: &Option<HeaderValue>) -> Field<'_> {
            Field(v.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("-"))
        }
        tracing::info!(
            target: "wxgate::access",
            method = %self.method,
            path = %self.path,
            status = self.status,
            route = self.route.as_str(),
            request_id = %s(&self.request_id),
            client = %s(&self.client),
            user_agent = %s(&self.user_agent),
            request_bytes = self.request_bytes,
            response_bytes = bytes,
            head_us = self.to_head.as_micros() as u64,
            total_us = self.start.elapsed().as_micros() as u64,
            outcome = outcome.as_str(),
        );
    }
}

/// A header's text in a log field, `-` when absent or not text: written as
/// the line is formatted, with no copy of its own.
struct Field<'a>(&'a str);

impl std::fmt::Display for Field<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl<S, B, R> Service<Request<B>> for AccessLog<S>
where
    S: Service<Request<B>, Response = Response<R>>,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let start = Instant::now();
        metrics::request_started();
        let route = self.routes.kind(req.uri().path());
        let record = tracing::enabled!(target: "wxgate::access", tracing::Level::INFO).then(|| {
            let h = req.headers();
            Box::new(AccessRecord {
                method: req.method().clone(),
                path: req.uri().path().into(),
                route,
                status: 0,
                request_id: h.get(X_REQUEST_ID).cloned(),
                client: h.get(X_REAL_IP).cloned(),
                user_agent: h.get(header::USER_AGENT).cloned(),
                request_bytes: declared_length(&req),
                start,
                to_head: Duration::ZERO,
            })
        });
        ResponseFuture {
            inner: self.inner.call(req),
            start,
            route,
            record,
            done: false,
        }
    }
}

/// The request body's length as declared (0 without a body; `None` when
/// it streams without one).
fn declared_length<B>(req: &Request<B>) -> Option<u64> {
    match req.headers().get(header::CONTENT_LENGTH) {
        Some(v) => v.to_str().ok().and_then(|s| s.parse().ok()),
        None if req.method() == Method::GET || req.method() == Method::HEAD => Some(0),
        None => None,
    }
}

pin_project_lite::pin_project! {
    /// Records the request when the response head is ready, or, when the
    /// client goes away first and the future is dropped, with status 499.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        start: Instant,
        route: RouteKind,
        record: Option<Box<AccessRecord>>,
        done: bool,
    }

    impl<F> PinnedDrop for ResponseFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if !*this.done {
                let now = Instant::now();
                let outcome = Outcome::cut();
                // Not both 499: a client that went away, or wxgate's own
                // shutdown grace that ran out before an answer.
                let status = if outcome == Outcome::Shutdown { CUT_BY_SHUTDOWN_STATUS } else { CLIENT_CLOSED };
                metrics::request_finished(*this.route, status, now - *this.start, now.into_std());
                if let Some(mut record) = this.record.take() {
                    record.status = status;
                    record.to_head = now - *this.start;
                    record.finish(0, outcome);
                }
            }
        }
    }
}

const CLIENT_CLOSED: u16 = 499;
/// A request cut by `server.shutdown_grace` before its answer: the server
/// could not serve it (nothing was sent).
const CUT_BY_SHUTDOWN_STATUS: u16 = 503;

impl<F, R, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<R>, E>>,
{
    type Output = Result<Response<R>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        *this.done = true;
        // Errors are answers by now (the errors layer is below this one).
        let status = match &result {
            Ok(res) => res.status().as_u16(),
            Err(_) => 500,
        };
        let now = Instant::now();
        let elapsed = now - *this.start;
        metrics::request_finished(*this.route, status, elapsed, now.into_std());
        let Some(mut record) = this.record.take() else {
            return Poll::Ready(result);
        };
        record.status = status;
        record.to_head = elapsed;
        Poll::Ready(result.map(|mut res| {
            res.extensions_mut().insert(Arc::<AccessRecord>::from(record));
            res
        }))
    }
}
