//! Forwarding to the upstream backend: the innermost service of the stack.
//!
//! - The request goes to `upstream.url` + the original path and query
//!   (`OPTIONS *` stays `*`), with the client's method, headers (less
//!   hop-by-hop ones) and streamed body. The client's `Host` is kept (an
//!   HTTP/2 request's `:authority` becomes `Host`), as a sidecar should be
//!   transparent; `X-Forwarded-Host` and `X-Forwarded-Proto` say where the
//!   request came from. HTTP/2 cookie fields are joined into one `Cookie`
//!   line (RFC 9113 §8.2.3).
//! - Right before it leaves, [`Render::apply`] strips every client copy of
//!   a header wxgate owns and writes the identity established (the one
//!   place that does).
//! - Connections are pooled and kept alive, one pool per worker thread
//!   ([`UpstreamPool`]).
//! - `upstream.connect_timeout` bounds the TCP connect (502 after),
//!   `upstream.timeout` bounds the wait for the response head once the
//!   request body has been sent (504 after): a long upload is not a slow
//!   upstream, so the clock starts when the last body byte has gone. While
//!   the body streams, an upstream that takes none of it for
//!   `upstream.timeout` is a stalled one (504 too), and a client that sends
//!   none of it for `server.body_read_timeout` a stalled client (408). A
//!   body wxgate holds whole (the login and phone routes', an upload
//!   buffered for an HTTP/1.0 backend) goes with the head and is not
//!   tracked: its clock starts with the request.
//! - A client whose body breaks mid-stream (bad chunk, reset) gets a 400
//!   `client_body`, not a 502: the upstream did nothing wrong.
//! - `Expect: 100-continue` goes to the backend, and the client's body is
//!   not read (so hyper does not tell the client to send it) until the
//!   backend answers `100`, or for a second if it says nothing: a backend
//!   that refuses early (401, 413) has its answer reach the client whole.
//! - Early answers: once the backend has answered before the request body
//!   was all sent, no more of the body goes to it, and when its answer has
//!   been relayed its connection is closed, never reused: a backend that
//!   answers without reading the body (CL.0) would otherwise parse the rest
//!   as a new request, with whatever headers the client put there.
//! - An HTTP/1.0 backend cannot read a chunked body: a body without
//!   Content-Length going to a backend whose answers say HTTP/1.0 is read
//!   first, up to `upstream.max_buffered_body_bytes`, and sent with a
//!   Content-Length (411 beyond). The version is learnt from the backend's
//!   answers, so only an upload before its very first answer goes chunked
//!   regardless. The client's answer is HTTP/1.1 whatever the backend's
//!   version.
//! - `CONNECT` is refused (501): wxgate is a reverse proxy, not a tunnel.
//!   So is a transfer coding other than `chunked` (gzip...) either way:
//!   Transfer-Encoding is hop-by-hop, and hyper undoes only the chunking.
//! - A WebSocket handshake gets a dedicated upstream connection and becomes
//!   a tunnel only on a well-formed WebSocket `101` ([`crate::tunnel`]).
//!   Open tunnels count as in flight at shutdown (see [`tunnels`]).
//!
//! Failures are returned as [`Error`]s with their cause and the address
//! tried; they are logged once, where they become a response.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::task::AtomicWaker;
use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Frame, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::body::{self, Body};
use crate::config::UpstreamConfig;
use crate::error::Error;
use crate::hop::{HopByHop, X_FORWARDED_HOST, X_FORWARDED_PROTO};
use crate::identity::Render;
use crate::metrics;
use crate::upstream_pool::{BackendVersion, PoolConfig, Replay, SendError, UpstreamPool};

/// How long a request that said `Expect: 100-continue` waits for the
/// backend's `100` before its body is sent anyway (curl waits as long).
const EXPECT_WAIT: Duration = Duration::from_secs(1);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where requests go, parsed once from `upstream.url`.
#[derive(Debug)]
struct Target {
    authority: Authority,
    /// `host:port`, for error messages and logs.
    addr: Arc<str>,
    /// The URL's path without its trailing '/', "" when it is the root.
    base_path: String,
}

/// The forwarding service. Cheap to clone; each worker thread builds its own
/// (and so its own connection pool).
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

struct Inner {
    pool: UpstreamPool<Outgoing>,
    target: Target,
    render: Arc<Render>,
    /// The session header leaves a backend's trailers too.
    trailer_filter: crate::body::TrailerFilter,
    timeout: Duration,
    body_read_timeout: Duration,
    websocket_idle: Duration,
    max_buffered_body: u64,
}

/// `upstream.url` had no host (validation refuses that).
#[derive(Debug, thiserror::Error)]
#[error("upstream.url: {0}")]
pub struct TargetError(String);

impl Proxy {
    pub fn new(config: &UpstreamConfig, body_read_timeout: Duration, render: Arc<Render>) -> Result<Self, TargetError> {
        let uri = crate::config::parse_base_url(&config.url, &["http"]).map_err(TargetError)?;
        let parts = uri.into_parts();
        let authority = parts.authority.ok_or_else(|| TargetError("no host".into()))?;
        let base_path = parts
            .path_and_query
            .map(|p| p.path().trim_end_matches('/').to_owned())
            .unwrap_or_default();
        let port = authority.port_u16().unwrap_or(80);
        let pool = UpstreamPool::new(PoolConfig {
            host: authority.host().to_owned(),
            port,
            connect_timeout: config.connect_timeout.get(),
            idle_timeout: config.pool_idle_timeout.get(),
            max_idle: config.pool_max_idle,
            max_connections: config.max_connections,
            queue_timeout: config.queue_timeout.get(),
            max_headers: config.max_response_headers,
            max_header_bytes: config.max_response_header_bytes,
        });
        let trailer_filter: crate::body::TrailerFilter = {
            let render = render.clone();
            Arc::new(move |trailers: &mut http::HeaderMap| render.strip_session_from_response(trailers))
        };
        Ok(Self {
            inner: Arc::new(Inner {
                trailer_filter,
                pool,
                target: Target {
                    addr: format!("{}:{port}", authority.host()).into(),
                    authority,
                    base_path,
                },
                render,
                timeout: config.timeout.get(),
                body_read_timeout,
                websocket_idle: config.websocket_idle_timeout.get(),
                max_buffered_body: config.max_buffered_body_bytes,
            }),
        })
    }

    /// Closes idle upstream connections past their time (the worker's sweep).
    pub fn reap_idle(&self) -> usize {
        self.inner.pool.reap()
    }

    /// Sends `req` upstream and returns the upstream's response, streaming.
    pub async fn forward(&self, mut req: Request<Body>) -> Result<Response<Body>, Error> {
        if req.method() == Method::CONNECT {
            return Err(Error::ConnectNotSupported);
        }
        // One pass over the names finds the hop-by-hop headers; most
        // requests have none, and then nothing is looked up.
        let hop = HopByHop::scan(req.headers());
        if hop.has_transfer_coding_besides_chunked(req.headers()) {
            return Err(Error::TransferCodingNotSupported);
        }
        // `hop::client_request` left an upgrade only on a WebSocket handshake.
        let websocket = hop.is_upgrade(req.headers());
        self.prepare(&mut req, hop)?;
        // The other paths are boxed: their states are large, and this
        // future, moved at each level that wraps it, is every GET's.
        if websocket {
            return Box::pin(self.forward_websocket(req)).await;
        }
        let this = &self.inner;
        let bodyless = http_body::Body::is_end_stream(req.body());
        if !bodyless {
            if !req.headers().contains_key(header::CONTENT_LENGTH)
                && this.pool.backend_version() == BackendVersion::Http10
            {
                req = Box::pin(self.with_length(req)).await?;
            }
            if !is_held_whole(&req, this.pool.config().max_header_bytes) {
                return Box::pin(self.forward_with_body(req)).await;
            }
        }
        // No body (GET, HEAD...), the common case, or one held whole: no
        // upload to track, and the response timeout starts now.
        let replay = Replay::of(req.method(), !bodyless);
        let request = this.pool.send(req.map(Outgoing::plain), replay);
        let outcome = crate::deadlines::within(this.timeout, request).await;
        self.answer(outcome, None, None)
    }

    /// The request, body and all, waiting on whichever side stalls.
    async fn forward_with_body(&self, mut req: Request<Body>) -> Result<Response<Body>, Error> {
        let this = &self.inner;
        let expect = expects_continue(req.headers());
        let upload = Arc::new(Upload::new(expect));
        if expect {
            let gate = upload.clone();
            hyper::ext::on_informational(&mut req, move |res| {
                if res.status() == StatusCode::CONTINUE {
                    gate.open();
                }
            });
        }
        let (tx, mut sent) = oneshot::channel();
        let req = req.map(|inner| Outgoing::tracked(inner, tx, upload.clone()));
        let request = this.pool.send(req, Replay::Never);
        tokio::pin!(request);
        let (timeout, body_timeout) = (this.timeout, this.body_read_timeout);
        // The response timeout runs from the end of the request body: until
        // then, a slow answer may just be a long upload. While the body
        // streams, nothing moving is somebody's stall, told by who was last
        // waited on: the upstream taking nothing the client had ready for
        // `upstream.timeout` (504), or the client sending nothing for
        // `server.body_read_timeout` (408; the upstream request is dropped,
        // so the backend sees a cut connection, never a complete request).
        // Checked every half of the shorter one: a stall is caught between
        // its timeout and one and a half times it. One timer serves the
        // whole request: moved later, a tokio timer is not re-registered.
        let period = timeout.min(body_timeout) / 2;
        let start = Instant::now();
        let mut stall = Stall::new(timeout, body_timeout, start);
        let first = if expect { EXPECT_WAIT.min(period) } else { period };
        let sleep = tokio::time::sleep_until(start + first);
        tokio::pin!(sleep);
        let (outcome, body_end) = loop {
            tokio::select! {
                biased;
                res = &mut request => break (Some(res), sent.try_recv().ok()),
                end = &mut sent => {
                    sleep.as_mut().reset(Instant::now() + timeout);
                    let outcome = tokio::select! {
                        biased;
                        res = &mut request => Some(res),
                        () = &mut sleep => None,
                    };
                    break (outcome, end.ok());
                }
                () = &mut sleep => {
                    let now = Instant::now();
                    match stall.check(now, &upload) {
                        Verdict::Wait => {}
                        Verdict::ClientTimeout => return Err(Error::ClientTimeout),
                        Verdict::UpstreamTimeout => break (None, None),
                    }
                    sleep.as_mut().reset(now + period);
                }
            }
        };
        self.answer(outcome, body_end, Some(upload))
    }

    /// A body without Content-Length, read whole for a backend that may
    /// speak HTTP/1.0, and given its length.
    async fn with_length(&self, req: Request<Body>) -> Result<Request<Body>, Error> {
        let limit = self.inner.max_buffered_body;
        let limits = body::Limits {
            max_bytes: limit,
            timeout: self.inner.body_read_timeout,
        };
        let (mut parts, body) = req.into_parts();
        let bytes = match body::read_limited(&parts.headers, body, limits).await {
            Err(Error::BodyTooLarge { .. }) => return Err(Error::LengthRequired { limit }),
            other => other?,
        };
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
        parts.headers.remove(header::TRANSFER_ENCODING);
        Ok(Request::from_parts(parts, body::full(bytes)))
    }

    /// The upstream's outcome as the client's answer.
    fn answer(
        &self,
        outcome: Option<Result<Response<hyper::body::Incoming>, SendError>>,
        body_end: Option<BodyEnd>,
        upload: Option<Arc<Upload>>,
    ) -> Result<Response<Body>, Error> {
        let addr = &self.inner.target.addr;
        let res = match outcome {
            Some(Ok(res)) => res,
            Some(Err(_)) if body_end == Some(BodyEnd::ClientError) => return Err(Error::ClientBody),
            Some(Err(SendError::Busy)) => {
                metrics::upstream_error("busy");
                return Err(Error::UpstreamBusy);
            }
            Some(Err(SendError::UnaskedUpgrade)) => {
                metrics::upstream_error("protocol");
                return Err(Error::UpstreamProtocol(
                    "it switched protocols on a request that asked for no upgrade",
                ));
            }
            Some(Err(e)) => {
                metrics::upstream_error(if matches!(e, SendError::Connect(_)) {
                    "connect"
                } else {
                    "io"
                });
                return Err(Error::upstream_unavailable(addr, e));
            }
            None => {
                metrics::upstream_error("timeout");
                return Err(Error::UpstreamTimeout { addr: addr.clone() });
            }
        };
        let (mut parts, incoming) = res.into_parts();
        if let Err(what) = crate::hop::upstream_response(&mut parts.headers, false) {
            metrics::upstream_error("protocol");
            return Err(Error::UpstreamProtocol(what));
        }
        self.inner.render.strip_session_from_response(&mut parts.headers);
        // wxgate speaks for itself: HTTP/1.1, whatever the backend spoke.
        parts.version = Version::HTTP_11;
        let body = match upload {
            Some(upload) if body_end != Some(BodyEnd::Complete) => {
                // Answered before the request body was all sent.
                upload.answered_early();
                Body::Watched(incoming, Arc::new(move || upload.answer_relayed()))
            }
            // Only a body without a length (chunked) can end in trailers.
            _ if !parts.headers.contains_key(header::CONTENT_LENGTH) => {
                Body::Trailered(incoming, self.inner.trailer_filter.clone())
            }
            _ => Body::Incoming(incoming),
        };
        Ok(Response::from_parts(parts, body))
    }

    /// Rewrites the request for the upstream: URI, version, hop-by-hop
    /// headers, Host and X-Forwarded-*, cookies; then the identity.
    fn prepare(&self, req: &mut Request<Body>, hop: HopByHop) -> Result<(), Error> {
        let target = &self.inner.target;
        let original = std::mem::take(req.uri_mut());
        let h2 = req.version() == Version::HTTP_2;
        // The client's Host (already in place), or the authority of an
        // HTTP/2 target without one, or of an absolute-form target, which
        // wins over a Host header (RFC 9112 3.2.2) (to be written).
        let authority = || {
            original
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        };
        let (host, host_in_place) = match req.headers().get(header::HOST) {
            Some(_) if !h2 && original.authority().is_some() => (authority(), false),
            Some(h) => (Some(h.clone()), true),
            None => (authority(), false),
        };
        let asterisk = req.method() == Method::OPTIONS && original.path() == "*";
        let path_and_query = if asterisk {
            PathAndQuery::from_static("*")
        } else if target.base_path.is_empty() {
            original
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"))
        } else {
            let pq = original.path_and_query().map_or("/", PathAndQuery::as_str);
            PathAndQuery::try_from(format!("{}{pq}", target.base_path))
                .map_err(|_| Error::invalid("the request target is not a valid path"))?
        };
        // Origin-form: the connection is to the upstream itself.
        *req.uri_mut() = Uri::from(path_and_query);
        *req.version_mut() = Version::HTTP_11;

        let websocket = hop.is_upgrade(req.headers());
        let headers = req.headers_mut();
        hop.strip_request(headers);
        if websocket {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        }
        match host {
            Some(host) => {
                if host_in_place {
                    headers.entry(X_FORWARDED_HOST).or_insert(host);
                } else {
                    headers.entry(X_FORWARDED_HOST).or_insert_with(|| host.clone());
                    headers.insert(header::HOST, host);
                }
            }
            // HTTP/1.0 without Host: name the upstream, as HTTP/1.1 requires one.
            None => {
                headers.remove(X_FORWARDED_HOST);
                if let Ok(v) = HeaderValue::from_str(target.authority.as_str()) {
                    headers.insert(header::HOST, v);
                }
            }
        }
        headers
            .entry(X_FORWARDED_PROTO)
            .or_insert_with(|| HeaderValue::from_static("http"));
        if h2 {
            join_cookies(headers);
        }
        self.inner.render.apply(req);
        Ok(())
    }

    /// A WebSocket handshake on its own connection: upgraded connections
    /// leave hyper's pool, and tunnels are rare and long-lived, so pooling
    /// would buy nothing. The connection counts against
    /// `upstream.max_connections` for as long as the tunnel lives.
    async fn forward_websocket(&self, mut req: Request<Body>) -> Result<Response<Body>, Error> {
        let this = &self.inner;
        let addr = &this.target.addr;
        let key = req
            .headers()
            .get("sec-websocket-key")
            .cloned()
            .ok_or_else(|| Error::invalid("a WebSocket handshake needs Sec-WebSocket-Key"))?;
        let client_slot = req.extensions_mut().remove::<crate::idle::Slot>();
        let client_upgrade = hyper::upgrade::on(&mut req);
        let place = this.pool.reserve().await.map_err(|_| {
            metrics::upstream_error("busy");
            Error::UpstreamBusy
        })?;
        let c = this.pool.config();
        let stream = crate::net::connect(&c.host, c.port, c.connect_timeout)
            .await
            .map_err(|e| {
                metrics::upstream_error("connect");
                Error::upstream_unavailable(addr, e)
            })?;
        let (mut sender, conn) = c
            .http1()
            .handshake::<_, Body>(TokioIo::new(stream))
            .await
            .map_err(|e| Error::upstream_unavailable(addr, e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream WebSocket connection ended");
            }
        });
        let mut res = match tokio::time::timeout(this.timeout, sender.send_request(req)).await {
            Ok(Ok(res)) => res,
            Ok(Err(e)) => {
                metrics::upstream_error("io");
                return Err(Error::upstream_unavailable(addr, e));
            }
            Err(_) => {
                metrics::upstream_error("timeout");
                return Err(Error::UpstreamTimeout { addr: addr.clone() });
            }
        };
        if res.status() != StatusCode::SWITCHING_PROTOCOLS {
            return self.answer(Some(Ok(res)), None, None);
        }
        if !crate::tunnel::accepts(res.headers(), &key) {
            // Dropped without upgrading: the backend connection closes.
            metrics::upstream_error("protocol");
            return Err(Error::UpstreamProtocol(
                "it switched protocols without accepting the client's WebSocket handshake",
            ));
        }
        let upstream_upgrade = hyper::upgrade::on(&mut res);
        let idle = this.websocket_idle;
        tunnels().spawn(async move {
            // Both places are held for as long as the tunnel is open.
            let _places = (place, client_slot);
            match tokio::try_join!(client_upgrade, upstream_upgrade) {
                Ok((client, upstream)) => {
                    if let Err(e) = crate::tunnel::splice(TokioIo::new(client), TokioIo::new(upstream), idle).await {
                        tracing::debug!(error = %e, "WebSocket tunnel closed");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "WebSocket upgrade failed"),
            }
        });
        let (mut parts, _) = res.into_parts();
        // Keep Connection/Upgrade on a 101: they are the answer.
        let _ = crate::hop::upstream_response(&mut parts.headers, true);
        self.inner.render.strip_session_from_response(&mut parts.headers);
        Ok(Response::from_parts(parts, body::empty()))
    }
}

impl tower::Service<Request<Body>> for Proxy {
    type Response = Response<Body>;
    type Error = Error;
    type Future = BoxFuture<'static, Result<Response<Body>, Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.forward(req).await })
    }
}

/// A body wxgate holds whole, in memory (the login and phone routes' after
/// they read it, an upload buffered for an HTTP/1.0 backend), that no
/// `Expect` holds back, under a head that hyper buffers without flushing it
/// first (shorter than `max_buf`, the upstream connection's buffer limit).
/// hyper then takes the body right after the head, before it reads any
/// answer, and the client cannot stall it: there is nothing to track
/// ([`Outgoing::tracked`] would report it complete at its first poll), and
/// the response timeout starts with the request. A longer head is flushed
/// before the body is taken, and a backend could answer in between: that
/// request keeps the tracked path and its early-answer guard.
fn is_held_whole(req: &Request<Body>, max_buf: usize) -> bool {
    matches!(req.body(), Body::Full(_)) && !expects_continue(req.headers()) && head_len_bound(req) < max_buf
}

/// What [`head_len_bound`] allows beyond the method, the target and the
/// fields: the request line's spaces, version and CRLF and the blank line
/// (14 bytes); a `content-length` field hyper adds when the request has none
/// (at most 38: twenty digits); and `connection: keep-alive` (24), which it
/// adds on a connection whose backend answered HTTP/1.0.
const HEAD_MARGIN: usize = 14 + 38 + 24;

/// More than the bytes of `req`'s head as hyper writes it: the request
/// line, each field as `name: value` and CRLF, the blank line, and the
/// fields hyper may add ([`HEAD_MARGIN`]).
fn head_len_bound<B>(req: &Request<B>) -> usize {
    let fields: usize = req.headers().iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum();
    let target = req.uri().path_and_query().map_or(1, |pq| pq.as_str().len());
    req.method().as_str().len() + target + fields + HEAD_MARGIN
}

/// `Expect: 100-continue` (the only expectation there is).
fn expects_continue(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// RFC 9113 §8.2.3: HTTP/2 may split `cookie` into several fields; an
/// HTTP/1.1 backend must get one line, joined with "; ".
fn join_cookies(headers: &mut http::HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    let (Some(first), Some(_)) = (values.next(), values.next()) else {
        return;
    };
    let _ = first;
    let joined: Vec<u8> = headers
        .get_all(header::COOKIE)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect::<Vec<_>>()
        .join(&b"; "[..]);
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

thread_local! {
    /// This worker thread's WebSocket tunnels. A tunnel outlives the HTTP
    /// connection it came from, so the server's graceful shutdown cannot
    /// see it; the worker waits for these too, within
    /// `server.shutdown_grace`. Thread-local because a worker is one thread
    /// with one runtime: its tunnels are exactly the tasks spawned here.
    static TUNNELS: TaskTracker = TaskTracker::new();
}

/// The open tunnels of the calling worker thread, for its shutdown.
pub fn tunnels() -> TaskTracker {
    TUNNELS.with(TaskTracker::clone)
}

/// How a request body forwarded upstream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyEnd {
    /// Every byte went upstream.
    Complete,
    /// The client's body failed (a broken chunk, a reset connection).
    ClientError,
}

/// What an upload's periodic check decides ([`Stall::check`]).
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Wait,
    /// The client sent nothing of its body for `server.body_read_timeout`.
    ClientTimeout,
    /// The backend took nothing the client had ready for `upstream.timeout`.
    UpstreamTimeout,
}

/// Who a streaming upload waits on, and since when. Checked periodically:
/// progress restarts the clock; otherwise the side last waited on is
/// timed by its own timeout. An `Expect` still unanswered at a check is
/// given up on: the body goes.
struct Stall {
    timeout: Duration,
    body_timeout: Duration,
    frames: u64,
    still_since: Instant,
}

impl Stall {
    fn new(timeout: Duration, body_timeout: Duration, now: Instant) -> Self {
        Self {
            timeout,
            body_timeout,
            frames: 0,
            still_since: now,
        }
    }

    fn check(&mut self, now: Instant, upload: &Upload) -> Verdict {
        if upload.gated() {
            upload.open();
            self.still_since = now;
        } else if upload.frames() != self.frames {
            self.frames = upload.frames();
            self.still_since = now;
        } else if upload.waiting_on_client() {
            if now - self.still_since >= self.body_timeout {
                return Verdict::ClientTimeout;
            }
        } else if now - self.still_since >= self.timeout {
            return Verdict::UpstreamTimeout;
        }
        Verdict::Wait
    }
}

/// The state of one upload, shared between [`Proxy::forward_with_body`],
/// the body hyper sends ([`Outgoing`]) and the answer's body.
#[derive(Default)]
struct Upload {
    /// Frames handed to the upstream connection so far.
    frames: AtomicU64,
    /// The last poll found the client's body not ready: the upload is
    /// waiting on the client, not on the upstream.
    waiting_on_client: AtomicBool,
    /// `Expect: 100-continue` not yet answered: the body is held back.
    gated: AtomicBool,
    /// The backend answered before the body was all sent.
    early: AtomicBool,
    /// That early answer has been relayed (or dropped).
    relayed: AtomicBool,
    waker: AtomicWaker,
}

impl Upload {
    fn new(expect: bool) -> Self {
        Self {
            gated: AtomicBool::new(expect),
            ..Self::default()
        }
    }
    fn frames(&self) -> u64 {
        self.frames.load(Ordering::Relaxed)
    }
    fn waiting_on_client(&self) -> bool {
        self.waiting_on_client.load(Ordering::Relaxed)
    }
    fn gated(&self) -> bool {
        self.gated.load(Ordering::Acquire)
    }
    /// The body may go (the backend said `100`, or nothing for a while).
    fn open(&self) {
        self.gated.store(false, Ordering::Release);
        self.waker.wake();
    }
    fn answered_early(&self) {
        self.early.store(true, Ordering::Release);
        self.waker.wake();
    }
    fn answer_relayed(&self) {
        self.relayed.store(true, Ordering::Release);
        self.waker.wake();
    }
}

/// The request body on its way upstream. It reports, once, how it ended, so
/// that [`Proxy::forward_with_body`] starts the response timeout when the
/// upload is done and can tell a client's broken body from an upstream
/// failure; it counts its progress, so a stalled upstream is told from a
/// slow client; it holds back while an `Expect` waits; and after an early
/// answer it sends nothing more, then fails once the answer is relayed,
/// which closes the backend connection. Frames otherwise pass through
/// untouched: the body stays streamed.
pub struct Outgoing {
    inner: Body,
    ended: Option<oneshot::Sender<BodyEnd>>,
    upload: Option<Arc<Upload>>,
}

impl Default for Outgoing {
    fn default() -> Self {
        Self::plain(body::empty())
    }
}

/// Why an upload stopped short on purpose.
#[derive(Debug, thiserror::Error)]
#[error("the backend answered before the request body was sent; its connection is closed")]
struct AnsweredEarly;

impl Outgoing {
    /// A body that needs no tracking: none, or one held whole
    /// ([`is_held_whole`]).
    fn plain(inner: Body) -> Self {
        Self {
            inner,
            ended: None,
            upload: None,
        }
    }

    fn tracked(inner: Body, ended: oneshot::Sender<BodyEnd>, upload: Arc<Upload>) -> Self {
        let mut body = Self {
            inner,
            ended: Some(ended),
            upload: Some(upload),
        };
        // hyper never polls a body that is already at its end.
        if http_body::Body::is_end_stream(&body.inner) {
            body.report(BodyEnd::Complete);
        }
        body
    }

    fn report(&mut self, end: BodyEnd) {
        if let Some(tx) = self.ended.take() {
            let _ = tx.send(end);
        }
    }
}

impl http_body::Body for Outgoing {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(u) = self.upload.clone() {
            if u.early.load(Ordering::Acquire) || u.gated() {
                u.waker.register(cx.waker());
                if u.early.load(Ordering::Acquire) {
                    if u.relayed.load(Ordering::Acquire) {
                        return Poll::Ready(Some(Err(Box::new(AnsweredEarly))));
                    }
                    return Poll::Pending;
                }
                if u.gated() {
                    return Poll::Pending;
                }
            }
        }
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Some(u) = &self.upload {
            u.waiting_on_client.store(polled.is_pending(), Ordering::Relaxed);
        }
        let frame = ready!(polled);
        match &frame {
            None => self.report(BodyEnd::Complete),
            Some(Err(_)) => self.report(BodyEnd::ClientError),
            Some(Ok(_)) => {
                if let Some(u) = &self.upload {
                    u.frames.fetch_add(1, Ordering::Relaxed);
                }
                // With a Content-Length, hyper stops polling after the last
                // byte instead of waiting for `None`.
                if self.inner.is_end_stream() {
                    self.report(BodyEnd::Complete);
                }
            }
        }
        Poll::Ready(frame.map(|f| f.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;
    use http_body_util::BodyExt;

    #[test]
    fn a_held_body_needs_no_expect_and_a_head_hyper_buffers_whole() {
        let req = |field: &str| {
            Request::post("/api/phone?x=1")
                .header(header::HOST, "mp.example")
                .header("x-long", field)
                .body(body::full("{}"))
                .unwrap()
        };
        assert!(is_held_whole(&req("v"), 32 * 1024));
        assert!(
            !is_held_whole(&req(&"v".repeat(32 * 1024)), 32 * 1024),
            "flushed before the body"
        );
        let mut expecting = req("v");
        expecting
            .headers_mut()
            .insert(header::EXPECT, HeaderValue::from_static("100-continue"));
        assert!(!is_held_whole(&expecting, 32 * 1024), "held back for the Expect");
    }

    /// What hyper writes as the head of each of `reqs`, sent one after the
    /// other on one connection to a backend that answers each with `answer`
    /// (within 15 s).
    async fn heads_hyper_writes(reqs: Vec<Request<Body>>, answer: &'static [u8]) -> Vec<String> {
        tokio::time::timeout(Duration::from_secs(15), heads_written(reqs, answer))
            .await
            .expect("the requests are written within 15 s")
    }

    async fn heads_written(reqs: Vec<Request<Body>>, answer: &'static [u8]) -> Vec<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        async fn read_more(s: &mut tokio::net::TcpStream, got: &mut Vec<u8>) {
            let mut buf = [0u8; 64 * 1024];
            let read = s.read(&mut buf).await.unwrap();
            assert!(read > 0, "the connection closed before the request ended");
            got.extend_from_slice(&buf[..read]);
        }
        let n = reqs.len();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(conn);
            for req in reqs {
                sender.ready().await.unwrap();
                sender.send_request(req).await.unwrap();
            }
        });
        let (mut s, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        let mut heads = Vec::new();
        while heads.len() < n {
            let end = loop {
                if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                read_more(&mut s, &mut got).await;
            };
            let head = String::from_utf8(got[..end].to_vec()).unwrap();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |v| v.parse().unwrap());
            while got.len() < end + length {
                read_more(&mut s, &mut got).await;
            }
            got.drain(..end + length);
            heads.push(head);
            s.write_all(answer).await.unwrap();
        }
        client.await.unwrap();
        heads
    }

    /// The bound is above what hyper really writes, by the margin it keeps
    /// for what hyper adds: a Content-Length (when the request has none),
    /// and `connection: keep-alive` to a backend that answered HTTP/1.0.
    #[tokio::test]
    async fn head_len_bound_is_above_the_head_hyper_writes() {
        let req = |with_length: bool, body: Bytes| {
            let mut b = Request::put("/a/b?c=d&e=%20f")
                .header(header::HOST, "backend.example:8080")
                .header("x-forwarded-for", "203.0.113.7, 198.51.100.1")
                .header(header::COOKIE, "a=1; b=2")
                .header("x-empty", "");
            if with_length {
                b = b.header(header::CONTENT_LENGTH, body.len());
            }
            b.body(body::full(body)).unwrap()
        };
        // The exact length of the head hyper writes: what the bound counts
        // but its margin, the request line's and the blank line's 14 bytes,
        // and the fields hyper adds.
        let exact = |r: &Request<Body>, added: &str| head_len_bound(r) - HEAD_MARGIN + 14 + added.len();
        let cases = [
            (req(false, Bytes::from_static(b"hello world")), "content-length: 11\r\n"),
            (req(true, Bytes::from_static(b"hello world")), ""),
        ];
        let expected: Vec<usize> = cases.iter().map(|(r, added)| exact(r, added)).collect();
        let heads = heads_hyper_writes(
            cases.into_iter().map(|(r, _)| r).collect(),
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
        )
        .await;
        assert!(heads[0].contains("content-length: 11\r\n"), "{}", heads[0]);
        for (head, expected) in heads.iter().zip(expected) {
            assert_eq!(head.len(), expected, "{head}");
        }
        // After an HTTP/1.0 answer that keeps the connection, hyper asks to
        // keep it again; with a long body's length, that is the most it adds.
        let long = Bytes::from(vec![b'x'; 1_000_000]);
        let cases = [
            (req(true, Bytes::from_static(b"first")), ""),
            (
                req(false, long),
                "content-length: 1000000\r\nconnection: keep-alive\r\n",
            ),
        ];
        let expected: Vec<usize> = cases.iter().map(|(r, added)| exact(r, added)).collect();
        let bounds: Vec<usize> = cases.iter().map(|(r, _)| head_len_bound(r)).collect();
        let heads = heads_hyper_writes(
            cases.into_iter().map(|(r, _)| r).collect(),
            b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n",
        )
        .await;
        assert!(heads[1].contains("connection: keep-alive\r\n"), "{}", heads[1]);
        for ((head, expected), bound) in heads.iter().zip(expected).zip(bounds) {
            assert_eq!(head.len(), expected, "{head}");
            assert!(head.len() < bound);
        }
    }

    #[test]
    fn http2_cookies_are_joined_for_http11() {
        let mut h = http::HeaderMap::new();
        h.append(header::COOKIE, "a=1".parse().unwrap());
        h.append(header::COOKIE, "b=2".parse().unwrap());
        h.append(header::COOKIE, "c=3".parse().unwrap());
        join_cookies(&mut h);
        assert_eq!(h.get_all(header::COOKIE).iter().count(), 1);
        assert_eq!(h[header::COOKIE], "a=1; b=2; c=3");
        let mut one = http::HeaderMap::new();
        one.insert(header::COOKIE, "a=1".parse().unwrap());
        join_cookies(&mut one);
        assert_eq!(one[header::COOKIE], "a=1");
    }

    /// The body hyper would send: frames pass, the end is reported, an
    /// Expect holds it back until opened, and after an early answer it
    /// sends nothing and fails once the answer is relayed.
    #[tokio::test]
    async fn the_upload_is_held_and_cut_as_the_backend_decides() {
        let (tx, mut rx) = oneshot::channel();
        let upload = Arc::new(Upload::new(true));
        let mut body = Outgoing::tracked(body::full("data"), tx, upload.clone());
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        assert!(
            Pin::new(&mut body).poll_frame(&mut cx).is_pending(),
            "held for the Expect"
        );
        upload.open();
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "data");
        assert_eq!(rx.try_recv().unwrap(), BodyEnd::Complete);
        assert_eq!(upload.frames(), 1);

        let (tx, _rx) = oneshot::channel();
        let upload = Arc::new(Upload::new(false));
        let mut body = Outgoing::tracked(body::full("rest"), tx, upload.clone());
        upload.answered_early();
        assert!(
            Pin::new(&mut body).poll_frame(&mut cx).is_pending(),
            "nothing more after an early answer"
        );
        upload.answer_relayed();
        assert!(
            matches!(body.frame().await, Some(Err(_))),
            "then the connection is failed"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stall_is_blamed_on_the_side_last_waited_on() {
        let (timeout, body_timeout) = (Duration::from_secs(60), Duration::from_secs(30));
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);

        // The client pauses: waited for up to body_timeout, from its last frame.
        let upload = Upload::new(false);
        let mut stall = Stall::new(timeout, body_timeout, start);
        upload.waiting_on_client.store(true, Ordering::Relaxed);
        assert_eq!(stall.check(at(29), &upload), Verdict::Wait);
        upload.frames.fetch_add(1, Ordering::Relaxed);
        assert_eq!(
            stall.check(at(40), &upload),
            Verdict::Wait,
            "progress restarts the clock"
        );
        assert_eq!(stall.check(at(69), &upload), Verdict::Wait);
        assert_eq!(stall.check(at(70), &upload), Verdict::ClientTimeout);

        // The backend stops reading: waited for up to upstream.timeout.
        let upload = Upload::new(false);
        let mut stall = Stall::new(timeout, body_timeout, start);
        assert_eq!(stall.check(at(59), &upload), Verdict::Wait);
        assert_eq!(stall.check(at(60), &upload), Verdict::UpstreamTimeout);

        // An Expect the backend never answers is given up on at the first check.
        let upload = Upload::new(true);
        let mut stall = Stall::new(timeout, body_timeout, start);
        assert_eq!(stall.check(at(1), &upload), Verdict::Wait);
        assert!(!upload.gated(), "the body goes");
        assert_eq!(
            stall.check(at(60), &upload),
            Verdict::Wait,
            "the clock started at the opening"
        );
        assert_eq!(stall.check(at(61), &upload), Verdict::UpstreamTimeout);
    }
}
