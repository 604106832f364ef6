//! Keep-alive HTTP/1.1 connections to the upstream, one pool per worker.
//!
//! Hand-written rather than hyper-util's general client, because it is
//! measured to matter: each worker thread owns its pool, so a checkout is a
//! pop from a short list behind an uncontended lock: no hashing of pool
//! keys, no connector or executor to clone, no hand-off between threads.
//! (hyper-util's client does all three per request; profiled, that was about
//! 2 µs of the 5 µs wxgate spent in user space per pass-through request:
//! BENCHMARKS.md.)
//!
//! - A connection goes back to the pool as soon as its response head has
//!   arrived; it is handed out again only once hyper says it is ready (its
//!   response body finished), so HTTP/1.1 is never pipelined. A response
//!   with `Connection: close`, or a `101` nobody asked for, never goes back.
//! - Idle connections are closed after `upstream.pool_idle_timeout`, or
//!   sooner when the backend's `Keep-Alive: timeout=N` says it will close
//!   them itself (one second before it does), and reaped by the worker's
//!   sweep ([`UpstreamPool::reap`]); at most `upstream.pool_max_idle` are kept.
//! - A backend may still close an idle connection just as a request goes out
//!   on it (Node, uvicorn and gunicorn close idle keep-alive connections
//!   after 2 to 5 s; some close after every response without saying so).
//!   A request that hyper had not yet written comes back and goes out on
//!   another connection. One that was written but got no answer head is
//!   sent once more, on a fresh connection, when it is safe to replay: an
//!   idempotent method and no body ([`Replay`]); a POST is never replayed.
//! - At most `upstream.max_connections` connections per worker, idle ones
//!   included; a request that finds them all busy waits for one to come back
//!   or close, for `upstream.queue_timeout` at most ([`SendError::Busy`]).
//! - `upstream.connect_timeout` bounds each new connection.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;

use http::{HeaderMap, Method, Request, Response, StatusCode, Version, header};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Why a request could not be sent upstream.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be opened (refused, unreachable, timed out).
    Connect(io::Error),
    /// The connection failed while the request or its answer was under way.
    Io(hyper::Error),
    /// `upstream.max_connections` were busy for all of `upstream.queue_timeout`.
    Busy,
    /// The backend switched protocols on a request that asked for no upgrade.
    UnaskedUpgrade,
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Connect(e) => write!(f, "connect: {e}"),
            SendError::Io(e) => write!(f, "{e}"),
            SendError::Busy => f.write_str("every connection is busy"),
            SendError::UnaskedUpgrade => f.write_str("101 Switching Protocols to a request without Upgrade"),
        }
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SendError::Connect(e) => Some(e),
            SendError::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// Whether a request may be sent a second time when a reused connection
/// failed under it (RFC 9110 §9.2.2: idempotent methods; and no body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    Safe,
    Never,
}

impl Replay {
    pub fn of(method: &Method, has_body: bool) -> Self {
        let idempotent = matches!(
            *method,
            Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
        );
        if idempotent && !has_body {
            Replay::Safe
        } else {
            Replay::Never
        }
    }
}

/// The pool's settings (from `[upstream]`).
#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub host: String,
    pub port: u16,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle: usize,
    pub max_connections: usize,
    pub queue_timeout: Duration,
    pub max_headers: usize,
    pub max_header_bytes: usize,
}

impl PoolConfig {
    /// The HTTP/1.1 client settings of every backend connection, pooled or
    /// dedicated (a WebSocket's).
    pub fn http1(&self) -> http1::Builder {
        let mut b = http1::Builder::new();
        b.max_headers(self.max_headers).max_buf_size(self.max_header_bytes);
        b
    }
}

struct Idle<B> {
    sender: SendRequest<B>,
    /// Past this, the connection is not handed out again.
    deadline: Instant,
}

pub struct UpstreamPool<B> {
    config: PoolConfig,
    /// Oldest at the front, warmest at the back.
    idle: Mutex<VecDeque<Idle<B>>>,
    /// One per open connection; a connection's task holds its permit.
    permits: Arc<Semaphore>,
    /// Requests waiting for a connection, and their wake-up call.
    waiting: AtomicUsize,
    returned: Notify,
    /// The HTTP version of the backend's last answer ([`BackendVersion`]).
    version: AtomicU8,
}

/// What the backend's answers say it speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendVersion {
    /// No answer yet.
    Unknown,
    /// HTTP/1.0: it cannot read a chunked request body.
    Http10,
    Http11,
}

impl<B> UpstreamPool<B>
where
    B: http_body::Body + Default + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    pub fn new(config: PoolConfig) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(config.max_connections.max(1))),
            config,
            idle: Mutex::new(VecDeque::new()),
            waiting: AtomicUsize::new(0),
            returned: Notify::new(),
            version: AtomicU8::new(0),
        }
    }

    /// The version the backend answered with last time.
    pub fn backend_version(&self) -> BackendVersion {
        match self.version.load(Ordering::Relaxed) {
            0 => BackendVersion::Unknown,
            1 => BackendVersion::Http10,
            _ => BackendVersion::Http11,
        }
    }

    /// Sends `req` (origin-form URI, Host set) and returns the response head.
    pub async fn send(&self, mut req: Request<B>, replay: Replay) -> Result<Response<Incoming>, SendError> {
        let mut replayed = false;
        loop {
            // An idle connection (unless this is a replay) is taken without
            // an await, the usual case; a new one, or a wait for one, is
            // boxed: those are large states, and this future, which every
            // request moves around, stays small without them.
            let idle = if replayed { None } else { self.checkout() };
            let (mut sender, reused) = match idle {
                Some(s) => (s, true),
                None => Box::pin(self.connection(replayed)).await?,
            };
            // Only a reused connection may have been closed under us, and
            // only a replayable request is worth keeping a copy of.
            let copy = (reused && !replayed && replay == Replay::Safe).then(|| HeadCopy::of(&req));
            match sender.try_send_request(req).await {
                Ok(res) => return self.answered(sender, res),
                Err(mut e) => match e.take_message() {
                    // Closed before the request went out: nothing was sent,
                    // so another connection may carry it.
                    Some(unsent) if reused => req = unsent,
                    _ => match copy {
                        Some(copy) if closed_before_answer(e.error()) => {
                            tracing::debug!(error = %e.error(), "a reused upstream connection closed before answering; sending once more on a fresh one");
                            req = copy.into_request();
                            replayed = true;
                        }
                        _ => return Err(SendError::Io(e.into_error())),
                    },
                },
            }
        }
    }

    /// What the response head tells about the connection: it goes back to
    /// the pool unless the backend said it will close it.
    fn answered(&self, sender: SendRequest<B>, res: Response<Incoming>) -> Result<Response<Incoming>, SendError> {
        if res.status() == StatusCode::SWITCHING_PROTOCOLS {
            return Err(SendError::UnaskedUpgrade);
        }
        let version = if res.version() == Version::HTTP_10 { 1 } else { 2 };
        if self.version.load(Ordering::Relaxed) != version {
            self.version.store(version, Ordering::Relaxed);
        }
        // Dropping the sender of a connection not for reuse is safe while
        // its body streams: hyper's client closes it only once the response
        // is read.
        if let Some(keep) = keep_alive(res.version(), res.headers(), self.config.idle_timeout) {
            self.checkin(sender, keep);
        }
        Ok(res)
    }

    /// A connection for one request when no idle one was at hand: a new
    /// one, or, at `max_connections`, the first to come back (unless
    /// `fresh`) or free a place.
    async fn connection(&self, fresh: bool) -> Result<(SendRequest<B>, bool), SendError> {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Ok((self.connect(permit).await?, false));
        }
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let waited = self.wait_for_connection(fresh).await;
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        waited
    }

    /// A place for a dedicated connection (a WebSocket tunnel): it counts
    /// against `max_connections` like a pooled one, and waits like one.
    pub async fn reserve(&self) -> Result<OwnedSemaphorePermit, SendError> {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let deadline = Instant::now() + self.config.queue_timeout;
        loop {
            // Idle connections hold places a tunnel could use.
            self.drop_oldest_idle();
            tokio::select! {
                permit = self.permits.clone().acquire_owned() => return permit.map_err(|_| SendError::Busy),
                () = tokio::time::sleep(Duration::from_millis(10)) => {}
                () = tokio::time::sleep_until(deadline) => return Err(SendError::Busy),
            }
        }
    }

    /// The settings the pool was made with.
    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    async fn wait_for_connection(&self, fresh: bool) -> Result<(SendRequest<B>, bool), SendError> {
        let deadline = Instant::now() + self.config.queue_timeout;
        loop {
            let returned = self.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            if !fresh && let Some(s) = self.checkout() {
                return Ok((s, true));
            }
            if fresh {
                // A replay needs a new connection: make room by closing the
                // oldest idle one, if there is one.
                self.drop_oldest_idle();
            }
            // A connection still busy with a response body becomes ready
            // without coming back to the pool: wait on one of those too.
            let mut busy = if fresh { None } else { self.take_busy() };
            let ready = std::future::poll_fn(|cx| match busy.as_mut() {
                Some(b) => b.sender.poll_ready(cx),
                None => std::task::Poll::Pending,
            });
            tokio::select! {
                permit = self.permits.clone().acquire_owned() => {
                    self.put_back(busy);
                    let permit = permit.map_err(|_| SendError::Busy)?;
                    return Ok((self.connect(permit).await?, false));
                }
                r = ready => {
                    // Closed while busy: gone, and its place with it.
                    if let (Ok(()), Some(b)) = (r, busy.take()) {
                        return Ok((b.sender, true));
                    }
                }
                () = &mut returned => self.put_back(busy),
                () = tokio::time::sleep_until(deadline) => {
                    self.put_back(busy);
                    return Err(SendError::Busy);
                }
            }
        }
    }

    /// The newest pooled connection that is still busy (not ready, not
    /// closed), taken out of the pool for one waiter.
    fn take_busy(&self) -> Option<Idle<B>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let i = idle
            .iter()
            .rposition(|c| !c.sender.is_closed() && !c.sender.is_ready())?;
        idle.remove(i)
    }

    fn put_back(&self, busy: Option<Idle<B>>) {
        if let Some(b) = busy {
            self.idle.lock().unwrap_or_else(|p| p.into_inner()).push_back(b);
        }
    }

    /// A ready idle connection, newest first (the warmest); closed and stale
    /// ones met on the way are dropped. Older ones wait for a later scan or
    /// the sweep, so a checkout stays short.
    fn checkout(&self) -> Option<SendRequest<B>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let mut i = idle.len();
        while i > 0 {
            i -= 1;
            let c = &idle[i];
            if c.sender.is_closed() || now >= c.deadline {
                idle.remove(i);
            } else if c.sender.is_ready() {
                return idle.remove(i).map(|c| c.sender);
            }
        }
        None
    }

    /// Back into the pool, usable until `keep` from now; the oldest
    /// connections, if closed or stale, leave at the same time.
    fn checkin(&self, sender: SendRequest<B>, keep: Duration) {
        let now = Instant::now();
        {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            while idle.front().is_some_and(|c| c.sender.is_closed() || now >= c.deadline) {
                idle.pop_front();
            }
            if idle.len() < self.config.max_idle {
                idle.push_back(Idle {
                    sender,
                    deadline: now + keep,
                });
            }
        }
        if self.waiting.load(Ordering::Relaxed) > 0 {
            self.returned.notify_one();
        }
    }

    fn drop_oldest_idle(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.pop_front();
    }

    /// Closes the idle connections that are closed or past their deadline
    /// (called by the worker's sweep, so none lingers unseen).
    pub fn reap(&self) -> usize {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let before = idle.len();
        idle.retain(|c| !c.sender.is_closed() && now < c.deadline);
        before - idle.len()
    }

    async fn connect(&self, permit: OwnedSemaphorePermit) -> Result<SendRequest<B>, SendError> {
        let c = &self.config;
        let stream = crate::net::connect(&c.host, c.port, c.connect_timeout)
            .await
            .map_err(SendError::Connect)?;
        let (sender, conn) = c.http1().handshake(TokioIo::new(stream)).await.map_err(SendError::Io)?;
        tokio::spawn(async move {
            // The connection counts against `max_connections` while it lives.
            let _permit = permit;
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        Ok(sender)
    }

    /// Idle connections now (for tests).
    #[cfg(test)]
    fn idle_len(&self) -> usize {
        self.idle.lock().map_or(0, |i| i.len())
    }

    /// Connections open now, idle or busy (for tests).
    #[cfg(test)]
    fn open(&self) -> usize {
        self.config.max_connections.max(1) - self.permits.available_permits()
    }
}

/// What it takes to send a bodiless request again: its head, kept as a
/// flat list (one allocation; a `HeaderMap` clone is two and a hash table).
struct HeadCopy {
    method: Method,
    uri: http::Uri,
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

impl HeadCopy {
    fn of<B>(req: &Request<B>) -> Self {
        Self {
            method: req.method().clone(),
            uri: req.uri().clone(),
            headers: req.headers().iter().map(|(n, v)| (n.clone(), v.clone())).collect(),
        }
    }

    fn into_request<B: Default>(self) -> Request<B> {
        let mut req = Request::new(B::default());
        *req.method_mut() = self.method;
        *req.uri_mut() = self.uri;
        let headers = req.headers_mut();
        headers.reserve(self.headers.len());
        for (name, value) in self.headers {
            headers.append(name, value);
        }
        req
    }
}

/// The connection failed before any answer: closed, reset, or cut while
/// the request was being written.
fn closed_before_answer(e: &hyper::Error) -> bool {
    if e.is_incomplete_message() || e.is_canceled() || e.is_closed() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<io::Error>() {
            return matches!(
                io.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionAborted
            );
        }
        source = s.source();
    }
    false
}

/// How long the connection may be reused, from the response's head:
/// `None` when the backend closes it (`Connection: close`, or HTTP/1.0
/// without `Connection: keep-alive`), else the pool's idle timeout,
/// shortened by `Keep-Alive: timeout=N` to a second before the backend's
/// own deadline.
fn keep_alive(version: Version, headers: &HeaderMap, idle_timeout: Duration) -> Option<Duration> {
    let mut keep = idle_timeout;
    let mut keep_alive_token = false;
    for v in headers.get_all(header::CONNECTION) {
        // The common answer, told without splitting it.
        if v.as_bytes().eq_ignore_ascii_case(b"keep-alive") {
            keep_alive_token = true;
            continue;
        }
        for token in v.to_str().unwrap_or("close").split(',').map(str::trim) {
            if token.eq_ignore_ascii_case("close") {
                return None;
            }
            keep_alive_token |= token.eq_ignore_ascii_case("keep-alive");
        }
    }
    if version == Version::HTTP_10 && !keep_alive_token {
        return None;
    }
    if let Some(v) = headers.get(crate::hop::KEEP_ALIVE).and_then(|v| v.to_str().ok()) {
        for param in v.split(',') {
            let Some((k, n)) = param.split_once('=') else { continue };
            if k.trim().eq_ignore_ascii_case("timeout")
                && let Ok(secs) = n.trim().parse::<u64>()
            {
                keep = keep.min(Duration::from_secs(secs.saturating_sub(1)));
            }
        }
    }
    (!keep.is_zero()).then_some(keep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};

    #[test]
    fn a_head_copy_gives_back_the_same_request() {
        let req = Request::builder()
            .method(Method::DELETE)
            .uri("/a/b?c=d")
            .header(header::HOST, "example.com")
            .header("x-many", "one")
            .header("x-many", "two")
            .header("x-empty", "")
            .header("x-bytes", http::HeaderValue::from_bytes(b"caf\xc3\xa9 \xff").unwrap())
            .body(Empty::<Bytes>::new())
            .unwrap();
        let back: Request<Empty<Bytes>> = HeadCopy::of(&req).into_request();
        assert_eq!(back.method(), req.method());
        assert_eq!(back.uri(), req.uri());
        assert_eq!(back.headers(), req.headers());
        let many: Vec<_> = back.headers().get_all("x-many").iter().collect();
        assert_eq!(many, ["one", "two"], "order of repeated fields kept");
    }

    /// An upstream that counts connections and answers "ok"; it closes each
    /// connection after `per_conn` requests, with `Connection: close`;
    /// `/slow` sends its body's end 100 ms after its head.
    async fn upstream(per_conn: usize) -> (u16, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let conns = Arc::new(AtomicUsize::new(0));
        let counter = conns.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let served = Arc::new(AtomicUsize::new(0));
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let n = served.fetch_add(1, Ordering::SeqCst) + 1;
                        async move {
                            let slow = req.uri().path() == "/slow";
                            let chunks = futures_util::stream::unfold(0u8, move |i| async move {
                                match i {
                                    0 => Some((Ok(http_body::Frame::data(Bytes::from_static(b"o"))), 1)),
                                    1 => {
                                        if slow {
                                            tokio::time::sleep(Duration::from_millis(100)).await;
                                        }
                                        Some((
                                            Ok::<_, std::convert::Infallible>(http_body::Frame::data(
                                                Bytes::from_static(b"k"),
                                            )),
                                            2,
                                        ))
                                    }
                                    _ => None,
                                }
                            });
                            let mut res = Response::new(http_body_util::StreamBody::new(chunks));
                            if n >= per_conn {
                                res.headers_mut().insert(header::CONNECTION, "close".parse().unwrap());
                            }
                            Ok::<_, std::convert::Infallible>(res)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        (port, conns)
    }

    /// A backend that loses the keep-alive race on every connection: it
    /// answers the first request (keep-alive implied), then reads the next
    /// one and closes without answering. Returns its port, the connections
    /// accepted and the request lines it read.
    async fn racing_upstream() -> (u16, Arc<AtomicUsize>, Arc<Mutex<Vec<String>>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let conns = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (counter, lines) = (conns.clone(), seen.clone());
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                let lines = lines.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    for answer in [true, false] {
                        let n = stream.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                        lines
                            .lock()
                            .unwrap()
                            .push(text.lines().next().unwrap_or_default().to_owned());
                        if answer {
                            let _ = stream
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                                .await;
                        }
                    }
                });
            }
        });
        (port, conns, seen)
    }

    fn config(port: u16) -> PoolConfig {
        PoolConfig {
            host: "127.0.0.1".into(),
            port,
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(60),
            max_idle: 8,
            max_connections: 64,
            queue_timeout: Duration::from_secs(2),
            max_headers: 100,
            max_header_bytes: 16 * 1024,
        }
    }

    fn pool(port: u16) -> UpstreamPool<Empty<Bytes>> {
        UpstreamPool::new(config(port))
    }

    fn get(path: &str) -> Request<Empty<Bytes>> {
        Request::get(path).header("host", "x").body(Empty::new()).unwrap()
    }

    async fn body(res: Response<Incoming>) -> Bytes {
        res.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn sequential_requests_reuse_one_connection() {
        let (port, conns) = upstream(usize::MAX).await;
        let p = pool(port);
        for _ in 0..20 {
            assert_eq!(body(p.send(get("/"), Replay::Safe).await.unwrap()).await, "ok");
        }
        assert_eq!(conns.load(Ordering::SeqCst), 1);
        assert_eq!(p.idle_len(), 1);
    }

    #[tokio::test]
    async fn a_connection_with_an_unread_body_is_not_handed_out() {
        let (port, conns) = upstream(usize::MAX).await;
        let p = pool(port);
        let first = p.send(get("/slow"), Replay::Safe).await.unwrap();
        let second = p.send(get("/"), Replay::Safe).await.unwrap();
        assert_eq!(conns.load(Ordering::SeqCst), 2, "no pipelining behind an unread body");
        assert_eq!(body(first).await, "ok");
        assert_eq!(body(second).await, "ok");
    }

    #[tokio::test]
    async fn a_connection_the_upstream_announces_closing_is_not_pooled() {
        let (port, conns) = upstream(3).await;
        let p = pool(port);
        for _ in 0..10 {
            assert_eq!(body(p.send(get("/"), Replay::Safe).await.unwrap()).await, "ok");
        }
        assert_eq!(conns.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_reused_connection_closed_under_a_get_is_retried_once_but_a_post_never() {
        let (port, conns, seen) = racing_upstream().await;
        let p = pool(port);
        for i in 0..5 {
            let res = p.send(get(&format!("/get{i}")), Replay::Safe).await.unwrap();
            assert_eq!(body(res).await, "ok", "GET {i}");
        }
        // Each GET after the first lost the race once and was sent again on
        // a fresh connection.
        assert_eq!(conns.load(Ordering::SeqCst), 5);
        let post = Request::post("/post").header("host", "x").body(Empty::new()).unwrap();
        assert!(matches!(p.send(post, Replay::Never).await, Err(SendError::Io(_))));
        let posts = seen.lock().unwrap().iter().filter(|l| l.starts_with("POST")).count();
        assert_eq!(posts, 1, "a POST is never sent twice");
    }

    #[tokio::test]
    async fn connections_idle_too_long_are_not_reused_and_are_reaped() {
        let (port, conns) = upstream(usize::MAX).await;
        let p = UpstreamPool::<Empty<Bytes>>::new(PoolConfig {
            idle_timeout: Duration::from_millis(1),
            ..config(port)
        });
        for _ in 0..3 {
            assert_eq!(body(p.send(get("/"), Replay::Safe).await.unwrap()).await, "ok");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(conns.load(Ordering::SeqCst), 3);
        tokio::time::sleep(Duration::from_millis(5)).await;
        p.reap();
        assert_eq!(p.idle_len(), 0, "stale connections leave the pool");
    }

    #[test]
    fn keep_alive_headers_bound_the_reuse() {
        let ka = |pairs: &[(&'static str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.append(*k, v.parse().unwrap());
            }
            keep_alive(Version::HTTP_11, &h, Duration::from_secs(60))
        };
        assert_eq!(ka(&[]), Some(Duration::from_secs(60)));
        assert_eq!(ka(&[("connection", "close")]), None);
        assert_eq!(ka(&[("connection", "keep-alive, Close")]), None);
        assert_eq!(
            ka(&[("keep-alive", "timeout=5, max=100")]),
            Some(Duration::from_secs(4))
        );
        assert_eq!(ka(&[("keep-alive", "timeout=1")]), None);
        assert_eq!(ka(&[("keep-alive", "max=3")]), Some(Duration::from_secs(60)));
        // HTTP/1.0 closes unless it says keep-alive.
        let mut h = HeaderMap::new();
        assert_eq!(keep_alive(Version::HTTP_10, &h, Duration::from_secs(60)), None);
        h.insert(header::CONNECTION, "Keep-Alive".parse().unwrap());
        assert_eq!(
            keep_alive(Version::HTTP_10, &h, Duration::from_secs(60)),
            Some(Duration::from_secs(60))
        );
    }

    #[test]
    fn only_idempotent_bodiless_requests_are_replayed() {
        assert_eq!(Replay::of(&Method::GET, false), Replay::Safe);
        assert_eq!(Replay::of(&Method::DELETE, false), Replay::Safe);
        assert_eq!(Replay::of(&Method::GET, true), Replay::Never);
        assert_eq!(Replay::of(&Method::POST, false), Replay::Never);
        assert_eq!(Replay::of(&Method::PATCH, false), Replay::Never);
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        assert!(matches!(
            pool(port).send(get("/"), Replay::Safe).await,
            Err(SendError::Connect(_))
        ));
    }

    #[tokio::test]
    async fn at_the_limit_requests_wait_for_a_connection_then_give_up() {
        let (port, conns) = upstream(usize::MAX).await;
        let p = Arc::new(UpstreamPool::<Empty<Bytes>>::new(PoolConfig {
            max_connections: 1,
            queue_timeout: Duration::from_millis(300),
            ..config(port)
        }));
        // The one connection is busy with a slow body; a second request
        // waits for it and is served on it once the body is read.
        let first = p.send(get("/slow"), Replay::Safe).await.unwrap();
        let waiter = tokio::spawn({
            let p = p.clone();
            async move { body(p.send(get("/"), Replay::Safe).await.unwrap()).await }
        });
        assert_eq!(body(first).await, "ok");
        assert_eq!(waiter.await.unwrap(), "ok");
        assert_eq!(conns.load(Ordering::SeqCst), 1, "never more than max_connections");
        // Held and never read: the next request gives up after queue_timeout.
        let held = p.send(get("/slow"), Replay::Safe).await.unwrap();
        assert!(matches!(p.send(get("/"), Replay::Safe).await, Err(SendError::Busy)));
        drop(held);
        assert_eq!(p.open(), 1);
    }
}
