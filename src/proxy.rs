//! Forwarding to the upstream backend: the innermost service of the stack.
//!
//! - The request goes to `upstream.url` + the original path and query, with
//!   the client's method, headers (less hop-by-hop ones) and streamed body.
//!   The client's `Host` is kept, as a sidecar should be transparent; the
//!   `X-Forwarded-*` headers say where the request came from.
//! - Connections to the upstream are pooled and kept alive, one pool per
//!   worker thread (see `server.rs`: the connection and the request stay on
//!   one core).
//! - `upstream.connect_timeout` bounds the TCP connect (502 after),
//!   `upstream.timeout` bounds the wait for the response head once the
//!   request body has been sent (504 after): a long upload is not a slow
//!   upstream, so the clock starts when the last body byte has gone. While
//!   the body streams, an upstream that takes none of it for
//!   `upstream.timeout` is a stalled one (504 too), and a client that sends
//!   none of it for `server.body_read_timeout` a stalled client (408).
//!   Bodies then stream for as long as they take.
//! - A client whose body breaks mid-stream (bad chunk, reset) gets a 400
//!   `client_body`, not a 502: the upstream did nothing wrong.
//! - `CONNECT` is refused (501): wxgate is a reverse proxy, not a tunnel.
//!   So is a transfer coding other than `chunked` (gzip...) either way:
//!   Transfer-Encoding is hop-by-hop, and hyper undoes only the chunking.
//! - HTTP Upgrade (WebSocket) gets a dedicated upstream connection: after
//!   the upstream's `101 Switching Protocols` both sides are spliced together.
//!   Open tunnels count as in flight at shutdown (see [`tunnels`]).
//!
//! Hop-by-hop headers (RFC 9110 §7.6.1) are removed both ways: `Connection`
//! and every header it names, `Keep-Alive`, `Proxy-Connection`, `TE`,
//! `Trailer`, `Transfer-Encoding`, `Upgrade`.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;

use futures_util::future::BoxFuture;
use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Frame, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;
use tokio_util::task::TaskTracker;

use crate::body::{self, Body};
use crate::config::UpstreamConfig;
use crate::error::Error;
use crate::hop::{HopByHop, X_FORWARDED_HOST, X_FORWARDED_PROTO};
use crate::metrics;
use crate::upstream_pool::{SendError, UpstreamPool};

/// Where requests go, parsed once from `upstream.url`.
#[derive(Debug)]
struct Target {
    authority: Authority,
    /// The URL's path without its trailing '/', "" when it is the root.
    base_path: String,
    connect_timeout: Duration,
    timeout: Duration,
    body_read_timeout: Duration,
}

/// The forwarding service. Cheap to clone; each worker thread builds its own
/// (and so its own connection pool).
#[derive(Clone)]
pub struct Proxy {
    pool: Arc<UpstreamPool<Outgoing>>,
    target: Arc<Target>,
}

impl Proxy {
    pub fn new(config: &UpstreamConfig, body_read_timeout: Duration) -> Result<Self, String> {
        let uri = crate::config::parse_base_url(&config.url, &["http"])?;
        let parts = uri.into_parts();
        let authority = parts.authority.ok_or("upstream.url has no host")?;
        let base_path = parts
            .path_and_query
            .map(|p| p.path().trim_end_matches('/').to_owned())
            .unwrap_or_default();
        let pool = UpstreamPool::new(
            authority.host(),
            authority.port_u16().unwrap_or(80),
            config.connect_timeout.get(),
            config.pool_idle_timeout.get(),
            config.pool_max_idle,
        );
        Ok(Self {
            pool: Arc::new(pool),
            target: Arc::new(Target {
                authority,
                base_path,
                connect_timeout: config.connect_timeout.get(),
                timeout: config.timeout.get(),
                body_read_timeout,
            }),
        })
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
        let upgrade = hop.is_upgrade(req.headers());
        let upgrade_proto = if upgrade {
            req.headers().get(header::UPGRADE).cloned()
        } else {
            None
        };
        self.prepare(&mut req, hop, upgrade_proto.as_ref())?;
        if upgrade {
            return self.forward_upgrade(req).await;
        }
        if http_body::Body::is_end_stream(req.body()) {
            // No body (GET, HEAD...): the common case needs no upload tracking.
            let request = self.pool.send(req.map(Outgoing::plain));
            let outcome = tokio::time::timeout(self.target.timeout, request).await.ok();
            return self.answer(outcome, None);
        }
        let (req, mut sent, progress) = Outgoing::wrap(req);
        let request = self.pool.send(req);
        tokio::pin!(request);
        let timeout = self.target.timeout;
        let body_timeout = self.target.body_read_timeout;
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
        let mut frames = progress.frames();
        let mut still_since = Instant::now();
        let sleep = tokio::time::sleep_until(still_since + period);
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
                    if progress.frames() != frames {
                        frames = progress.frames();
                        still_since = now;
                    } else if progress.waiting_on_client() {
                        if now - still_since >= body_timeout {
                            return Err(Error::ClientTimeout);
                        }
                    } else if now - still_since >= timeout {
                        break (None, None);
                    }
                    sleep.as_mut().reset(now + period);
                }
            }
        };
        self.answer(outcome, body_end)
    }

    /// The upstream's outcome as the client's answer.
    fn answer(
        &self,
        outcome: Option<Result<Response<hyper::body::Incoming>, SendError>>,
        body_end: Option<BodyEnd>,
    ) -> Result<Response<Body>, Error> {
        let res = match outcome {
            Some(Ok(res)) => res,
            Some(Err(_)) if body_end == Some(BodyEnd::ClientError) => {
                tracing::debug!("the client's request body broke while it was forwarded");
                return Err(Error::ClientBody);
            }
            Some(Err(e)) => {
                let kind = if matches!(e, SendError::Connect(_)) {
                    "connect"
                } else {
                    "io"
                };
                metrics::upstream_error(kind);
                let detail = match &e {
                    SendError::Connect(e) => error_chain(e),
                    SendError::Io(e) => error_chain(e),
                };
                tracing::warn!(error = %detail, kind, "upstream request failed");
                return Err(Error::UpstreamUnavailable);
            }
            None => {
                metrics::upstream_error("timeout");
                return Err(Error::UpstreamTimeout);
            }
        };
        passable_response(res)
    }

    /// Rewrites the request for the upstream: URI, version, hop-by-hop
    /// headers, X-Forwarded-*.
    fn prepare(&self, req: &mut Request<Body>, hop: HopByHop, upgrade: Option<&HeaderValue>) -> Result<(), Error> {
        let original = std::mem::take(req.uri_mut());
        // The client's Host, or the authority of an absolute-form target.
        let host_header = req.headers().get(header::HOST).cloned();
        let has_host_header = host_header.is_some();
        let host = host_header.or_else(|| {
            original
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        let path_and_query = original.path_and_query().map_or("/", PathAndQuery::as_str);
        let path_and_query = if self.target.base_path.is_empty() {
            original
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"))
        } else {
            PathAndQuery::try_from(format!("{}{}", self.target.base_path, path_and_query))
                .map_err(|_| Error::InvalidRequest("the request target is not a valid path".into()))?
        };
        // Origin-form: the connection is to the upstream itself.
        *req.uri_mut() = Uri::from(path_and_query);
        *req.version_mut() = Version::HTTP_11;

        let headers = req.headers_mut();
        hop.strip(headers);
        if let Some(proto) = upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, proto.clone());
        }
        match host {
            Some(host) => {
                if !has_host_header {
                    headers.insert(header::HOST, host.clone());
                }
                headers.insert(X_FORWARDED_HOST, host);
            }
            // HTTP/1.0 without Host: name the upstream, as HTTP/1.1 requires one.
            None => {
                if let Ok(v) = HeaderValue::from_str(self.target.authority.as_str()) {
                    headers.insert(header::HOST, v);
                }
            }
        }
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        Ok(())
    }

    /// An Upgrade request (WebSocket) on its own connection: hyper's pooled
    /// client does not hand over upgraded connections, and tunnels are rare
    /// and long-lived, so pooling would buy nothing.
    async fn forward_upgrade(&self, mut req: Request<Body>) -> Result<Response<Body>, Error> {
        let client_upgrade = hyper::upgrade::on(&mut req);
        let host = self
            .target
            .authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = self.target.authority.port_u16().unwrap_or(80);
        let stream = match tokio::time::timeout(
            self.target.connect_timeout,
            tokio::net::TcpStream::connect((host, port)),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                metrics::upstream_error("connect");
                tracing::warn!(error = %e, "upstream connect failed (upgrade)");
                return Err(Error::UpstreamUnavailable);
            }
            Err(_) => {
                metrics::upstream_error("connect");
                return Err(Error::UpstreamUnavailable);
            }
        };
        let _ = stream.set_nodelay(true);
        let handshake = hyper::client::conn::http1::handshake::<_, Body>(TokioIo::new(stream));
        let (mut sender, conn) = handshake.await.map_err(|_| Error::UpstreamUnavailable)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream upgrade connection ended");
            }
        });
        // Origin-form on a direct connection.
        let origin = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::from(origin);
        let mut res = match tokio::time::timeout(self.target.timeout, sender.send_request(req)).await {
            Ok(Ok(res)) => res,
            Ok(Err(e)) => {
                metrics::upstream_error("io");
                tracing::warn!(error = %e, "upstream upgrade request failed");
                return Err(Error::UpstreamUnavailable);
            }
            Err(_) => {
                metrics::upstream_error("timeout");
                return Err(Error::UpstreamTimeout);
            }
        };
        if res.status() != StatusCode::SWITCHING_PROTOCOLS {
            return passable_response(res);
        }
        let upstream_upgrade = hyper::upgrade::on(&mut res);
        tunnels().spawn(async move {
            match tokio::try_join!(client_upgrade, upstream_upgrade) {
                Ok((client, upstream)) => {
                    let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
                    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                        tracing::debug!(error = %e, "upgraded tunnel closed");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "upgrade failed"),
            }
        });
        // Keep Connection/Upgrade on a 101: they are the answer.
        let (parts, _) = res.into_parts();
        let mut out = Response::from_parts(parts, body::empty());
        let hop = HopByHop::scan(out.headers());
        hop.strip_fixed(out.headers_mut());
        Ok(out)
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

thread_local! {
    /// This worker thread's upgraded tunnels (WebSockets). A tunnel outlives
    /// the HTTP connection it came from, so the server's graceful shutdown
    /// cannot see it; the worker waits for these too, within
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

/// How far the request body has gone, for [`Proxy::forward`]'s timeout.
#[derive(Debug, Default)]
struct UploadProgress {
    /// Frames handed to the upstream connection so far.
    frames: AtomicU64,
    /// The last poll found the client's body not ready: the upload is
    /// waiting on the client, not on the upstream.
    waiting_on_client: AtomicBool,
}

impl UploadProgress {
    fn frames(&self) -> u64 {
        self.frames.load(Ordering::Relaxed)
    }
    fn waiting_on_client(&self) -> bool {
        self.waiting_on_client.load(Ordering::Relaxed)
    }
}

/// The request body on its way upstream. It reports, once, how it ended, so
/// that [`Proxy::forward`] starts the response timeout when the upload is
/// done and can tell a client's broken body from an upstream failure; and it
/// counts its progress, so a stalled upstream is told from a slow client.
/// Frames pass through untouched: the body stays streamed.
struct Outgoing {
    inner: Body,
    ended: Option<oneshot::Sender<BodyEnd>>,
    progress: Option<Arc<UploadProgress>>,
}

impl Outgoing {
    /// A body that needs no tracking (already at its end).
    fn plain(inner: Body) -> Self {
        Self {
            inner,
            ended: None,
            progress: None,
        }
    }

    fn wrap(req: Request<Body>) -> (Request<Outgoing>, oneshot::Receiver<BodyEnd>, Arc<UploadProgress>) {
        let (tx, rx) = oneshot::channel();
        let progress = Arc::new(UploadProgress::default());
        let req = req.map(|inner| {
            let mut body = Outgoing {
                inner,
                ended: Some(tx),
                progress: Some(progress.clone()),
            };
            // hyper never polls a body that is already at its end.
            if http_body::Body::is_end_stream(&body.inner) {
                body.report(BodyEnd::Complete);
            }
            body
        });
        (req, rx, progress)
    }

    fn report(&mut self, end: BodyEnd) {
        if let Some(tx) = self.ended.take() {
            let _ = tx.send(end);
        }
    }
}

impl http_body::Body for Outgoing {
    type Data = Bytes;
    type Error = <Body as http_body::Body>::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Some(p) = &self.progress {
            p.waiting_on_client.store(polled.is_pending(), Ordering::Relaxed);
        }
        let frame = ready!(polled);
        match &frame {
            None => self.report(BodyEnd::Complete),
            Some(Err(_)) => self.report(BodyEnd::ClientError),
            Some(Ok(_)) => {
                if let Some(p) = &self.progress {
                    p.frames.fetch_add(1, Ordering::Relaxed);
                }
                // With a Content-Length, hyper stops polling after the last
                // byte instead of waiting for `None`.
                if self.inner.is_end_stream() {
                    self.report(BodyEnd::Complete);
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn passable_response(res: Response<hyper::body::Incoming>) -> Result<Response<Body>, Error> {
    let hop = HopByHop::scan(res.headers());
    if hop.has_transfer_coding_besides_chunked(res.headers()) {
        metrics::upstream_error("protocol");
        return Err(Error::UpstreamProtocol("a transfer coding other than chunked"));
    }
    let (mut parts, incoming) = res.into_parts();
    hop.strip(&mut parts.headers);
    Ok(Response::from_parts(parts, http_body_util::Either::Left(incoming)))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
