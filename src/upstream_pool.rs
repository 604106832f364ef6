//! Keep-alive HTTP/1.1 connections to the upstream, one pool per worker.
//!
//! Each worker thread owns its pool, so a checkout is a pop from a short list
//! behind an uncontended lock: no hashing of pool keys, no connector or
//! executor to clone, no hand-off between threads. (hyper-util's general
//! client does all three per request; profiled, that was about 2 µs of the
//! 5 µs wxgate spends in user space per pass-through request: BENCHMARKS.md.)
//!
//! - A connection goes back to the pool as soon as its response head has
//!   arrived; it is handed out again only once hyper says it is ready (its
//!   response body finished), so HTTP/1.1 is never pipelined.
//! - A pooled connection found closed when the request is sent (the upstream
//!   dropped it while idle) does not fail the request: the request was not
//!   written, so it goes out again on another connection.
//! - At most `upstream.pool_max_idle` idle connections are kept; one idle
//!   longer than `upstream.pool_idle_timeout` is closed when next seen.
//! - `upstream.connect_timeout` bounds each new connection.

use std::collections::VecDeque;
use std::io;
use std::sync::Mutex;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

/// Why a request could not be sent upstream.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be opened (refused, unreachable, timed out).
    Connect(io::Error),
    /// The connection failed while the request or its answer was under way.
    Io(hyper::Error),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Connect(e) => write!(f, "connect: {e}"),
            SendError::Io(e) => write!(f, "{e}"),
        }
    }
}

struct Idle<B> {
    sender: SendRequest<B>,
    since: Instant,
}

pub struct UpstreamPool<B> {
    host: String,
    port: u16,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    /// Oldest at the front, warmest at the back.
    idle: Mutex<VecDeque<Idle<B>>>,
}

impl<B> UpstreamPool<B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    pub fn new(host: &str, port: u16, connect_timeout: Duration, idle_timeout: Duration, max_idle: usize) -> Self {
        Self {
            host: host.trim_start_matches('[').trim_end_matches(']').to_owned(),
            port,
            connect_timeout,
            idle_timeout,
            max_idle,
            idle: Mutex::new(VecDeque::new()),
        }
    }

    /// Sends `req` (origin-form URI, Host set) and returns the response head.
    pub async fn send(&self, mut req: Request<B>) -> Result<Response<Incoming>, SendError> {
        loop {
            let (mut sender, reused) = match self.checkout() {
                Some(s) => (s, true),
                None => (self.connect().await?, false),
            };
            match sender.try_send_request(req).await {
                Ok(res) => {
                    self.checkin(sender);
                    return Ok(res);
                }
                Err(mut e) => match e.take_message() {
                    // A pooled connection closed before the request went out:
                    // nothing was sent, so another connection may carry it.
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(SendError::Io(e.into_error())),
                },
            }
        }
    }

    /// A ready idle connection, newest first (the warmest); closed and stale
    /// ones met on the way are dropped. Older ones wait for a later scan, so
    /// a checkout stays short.
    fn checkout(&self) -> Option<SendRequest<B>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let mut i = idle.len();
        while i > 0 {
            i -= 1;
            let c = &idle[i];
            if c.sender.is_closed() || now.duration_since(c.since) >= self.idle_timeout {
                idle.remove(i);
            } else if c.sender.is_ready() {
                return idle.remove(i).map(|c| c.sender);
            }
        }
        None
    }

    /// Back into the pool; the oldest connections, if closed or idle too
    /// long, leave at the same time, so none lingers unseen at the bottom.
    fn checkin(&self, sender: SendRequest<B>) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        while idle
            .front()
            .is_some_and(|c| c.sender.is_closed() || now.duration_since(c.since) >= self.idle_timeout)
        {
            idle.pop_front();
        }
        if idle.len() < self.max_idle {
            idle.push_back(Idle { sender, since: now });
        }
    }

    async fn connect(&self) -> Result<SendRequest<B>, SendError> {
        let connect = tokio::net::TcpStream::connect((self.host.as_str(), self.port));
        let stream = match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(SendError::Connect(e)),
            Err(_) => {
                return Err(SendError::Connect(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connect timed out",
                )));
            }
        };
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.map_err(SendError::Io)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        Ok(sender)
    }

    /// Idle connections now (for tests).
    pub fn idle_len(&self) -> usize {
        self.idle.lock().map_or(0, |i| i.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// An upstream that counts connections and answers "ok"; it closes each
    /// connection after `per_conn` requests.
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
                            // "/slow": the body's end comes 100 ms after its head.
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
                                res.headers_mut()
                                    .insert(http::header::CONNECTION, "close".parse().unwrap());
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

    fn pool(port: u16) -> UpstreamPool<Empty<Bytes>> {
        UpstreamPool::new("127.0.0.1", port, Duration::from_secs(1), Duration::from_secs(60), 8)
    }

    fn get() -> Request<Empty<Bytes>> {
        Request::get("/").header("host", "x").body(Empty::new()).unwrap()
    }

    fn get_slow() -> Request<Empty<Bytes>> {
        Request::get("/slow").header("host", "x").body(Empty::new()).unwrap()
    }

    async fn body(res: Response<Incoming>) -> Bytes {
        res.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn sequential_requests_reuse_one_connection() {
        let (port, conns) = upstream(usize::MAX).await;
        let p = pool(port);
        for _ in 0..20 {
            assert_eq!(body(p.send(get()).await.unwrap()).await, "ok");
        }
        assert_eq!(conns.load(Ordering::SeqCst), 1);
        assert_eq!(p.idle_len(), 1);
    }

    #[tokio::test]
    async fn a_connection_with_an_unread_body_is_not_handed_out() {
        let (port, conns) = upstream(usize::MAX).await;
        let p = pool(port);
        let first = p.send(get_slow()).await.unwrap();
        let second = p.send(get()).await.unwrap();
        assert_eq!(conns.load(Ordering::SeqCst), 2, "no pipelining behind an unread body");
        assert_eq!(body(first).await, "ok");
        assert_eq!(body(second).await, "ok");
    }

    #[tokio::test]
    async fn connections_the_upstream_closes_are_replaced() {
        let (port, conns) = upstream(3).await;
        let p = pool(port);
        for _ in 0..10 {
            assert_eq!(body(p.send(get()).await.unwrap()).await, "ok");
            tokio::task::yield_now().await;
        }
        assert_eq!(conns.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn connections_idle_too_long_are_not_reused() {
        let (port, conns) = upstream(usize::MAX).await;
        let p = UpstreamPool::new("127.0.0.1", port, Duration::from_secs(1), Duration::ZERO, 8);
        for _ in 0..3 {
            assert_eq!(body(p.send(get()).await.unwrap()).await, "ok");
        }
        assert_eq!(conns.load(Ordering::SeqCst), 3);
        assert!(p.idle_len() <= 1, "stale connections leave the pool");
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        assert!(matches!(pool(port).send(get()).await, Err(SendError::Connect(_))));
    }
}
