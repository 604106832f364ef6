//! Running wxgate: listeners, worker threads, the admin thread, graceful
//! shutdown.
//!
//! # Runtime model: thread per core
//!
//! Each worker thread runs its own single-threaded tokio runtime with its own
//! listening socket on the same port (SO_REUSEPORT: the kernel spreads new
//! connections over the workers), its own tower stack and its own pool of
//! upstream connections. A request is accepted, handled and forwarded on one
//! core, with no cross-thread hand-off: measured on this project's 2-core
//! machine, the work-stealing runtime costs about 6 µs per request and a
//! quarter of the throughput against this model (see `BENCHMARKS.md`).
//! What all workers must share (sessions, the login code cache, the access
//! token) lives in [`Shared`] and is built for concurrent use.
//!
//! # Shutdown
//!
//! [`Running::shutdown`] (wired to SIGTERM/SIGINT by `main`) flips `/readyz`
//! to 503, stops accepting, lets in-flight requests and open WebSocket
//! tunnels finish within `server.shutdown_grace`, then closes what is left. The admin listener
//! stays up until the workers are done, so health checks see the drain.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::Service;

use crate::admin::{self, Readiness};
use crate::body::Body;
use crate::config::Config;
use crate::idle;
use crate::layers::login::LoginShared;
use crate::session::SessionStore;
use crate::session::memory::MemoryStore;
use crate::weixin::token::AccessTokenProvider;
use crate::{Stack, metrics};

/// What every worker shares.
pub struct Shared {
    pub config: Arc<Config>,
    pub store: Arc<dyn SessionStore>,
    pub login: Arc<LoginShared>,
    pub tokens: Arc<AccessTokenProvider>,
    pub readiness: Arc<Readiness>,
}

impl Shared {
    pub fn new(config: Config) -> Self {
        let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new(&config.session));
        Self {
            login: Arc::new(LoginShared::new(&config)),
            tokens: Arc::new(AccessTokenProvider::new()),
            readiness: Arc::new(Readiness::default()),
            store,
            config: Arc::new(config),
        }
    }
}

/// The bound sockets, made before the workers start so that a test (or an
/// operator) knows the ports at once.
pub struct Listeners {
    pub public: Vec<std::net::TcpListener>,
    pub admin: std::net::TcpListener,
}

impl Listeners {
    /// Binds `workers` sockets on `listen` (SO_REUSEPORT) and one on
    /// `admin_listen`. Port 0 picks a free port shared by all workers.
    /// Errors name the config key and the address, as config errors do.
    pub fn bind(listen: SocketAddr, admin_listen: SocketAddr, workers: usize) -> io::Result<Self> {
        let named = |key: &'static str, addr: SocketAddr| {
            move |e: io::Error| io::Error::new(e.kind(), format!("{key} {addr}: {e}"))
        };
        // SO_REUSEPORT would let a second wxgate (same user) silently share
        // this port with a running one; a plain bind first refuses that.
        if listen.port() != 0 {
            drop(std::net::TcpListener::bind(listen).map_err(named("server.listen", listen))?);
        }
        let first = reuseport_listener(listen).map_err(named("server.listen", listen))?;
        let addr = first.local_addr()?;
        let mut public = vec![first];
        for _ in 1..workers.max(1) {
            public.push(reuseport_listener(addr).map_err(named("server.listen", addr))?);
        }
        let admin = std::net::TcpListener::bind(admin_listen).map_err(named("server.admin_listen", admin_listen))?;
        admin.set_nonblocking(true)?;
        Ok(Self { public, admin })
    }
}

fn reuseport_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    #[cfg(unix)]
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// A started wxgate.
pub struct Running {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    workers: Vec<std::thread::JoinHandle<()>>,
    admin: Option<(CancellationToken, std::thread::JoinHandle<()>)>,
}

impl Running {
    /// Begins a graceful shutdown; returns at once.
    pub fn shutdown(&self) {
        self.shared.readiness.set_draining();
        self.shutdown.cancel();
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Waits for the workers to finish (after [`Running::shutdown`]), then
    /// stops the admin listener. Blocking: call from a plain thread.
    pub fn join(mut self) {
        for w in self.workers.drain(..) {
            if w.join().is_err() {
                tracing::error!("a worker thread panicked");
            }
        }
        if let Some((stop, thread)) = self.admin.take() {
            stop.cancel();
            let _ = thread.join();
        }
    }

    /// [`Running::join`] for async callers.
    pub async fn stopped(self) {
        let _ = tokio::task::spawn_blocking(move || self.join()).await;
    }
}

/// Binds as configured and starts.
pub fn start(config: Config) -> io::Result<Running> {
    let listeners = Listeners::bind(config.server.listen, config.server.admin_listen, config.worker_count())?;
    start_with(config, listeners)
}

/// Starts wxgate on listeners bound by the caller.
pub fn start_with(config: Config, listeners: Listeners) -> io::Result<Running> {
    metrics::init();
    let addr = listeners.public[0].local_addr()?;
    let admin_addr = listeners.admin.local_addr()?;
    let shared = Arc::new(Shared::new(config));
    // Build one stack up front so that a config error surfaces here, not in a thread.
    crate::stack(&shared).map_err(io::Error::other)?;

    let shutdown = CancellationToken::new();
    let started = Arc::new(AtomicUsize::new(0));
    let worker_count = listeners.public.len();
    let mut workers = Vec::with_capacity(worker_count);
    for (id, listener) in listeners.public.into_iter().enumerate() {
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        let started = started.clone();
        workers.push(
            std::thread::Builder::new()
                .name(format!("wxgate-worker-{id}"))
                .spawn(move || {
                    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                        Ok(rt) => rt,
                        Err(e) => {
                            tracing::error!(error = %e, "cannot start a worker runtime");
                            return;
                        }
                    };
                    rt.block_on(worker(shared, listener, shutdown, started, worker_count));
                })?,
        );
    }

    let admin_stop = CancellationToken::new();
    let admin = {
        let (readiness, store, stop) = (shared.readiness.clone(), shared.store.clone(), admin_stop.clone());
        let listener = listeners.admin;
        std::thread::Builder::new().name("wxgate-admin".into()).spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the admin runtime");
                    return;
                }
            };
            rt.block_on(async move {
                match TcpListener::from_std(listener) {
                    Ok(l) => admin::serve(l, readiness, store, stop).await,
                    Err(e) => tracing::error!(error = %e, "admin listener failed"),
                }
            });
        })?
    };
    tracing::info!(%addr, %admin_addr, workers = worker_count, "wxgate listening");
    Ok(Running {
        addr,
        admin_addr,
        shared,
        shutdown,
        workers,
        admin: Some((admin_stop, admin)),
    })
}

async fn worker(
    shared: Arc<Shared>,
    listener: std::net::TcpListener,
    shutdown: CancellationToken,
    started: Arc<AtomicUsize>,
    worker_count: usize,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot register the listener");
            return;
        }
    };
    let stack = match crate::stack(&shared) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the request stack");
            return;
        }
    };
    let config = &shared.config;
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // `server.header_read_timeout` is kept by `idle`'s sweep below, not by a
    // hyper timer armed on every request.
    builder.http1().header_read_timeout(None);
    builder.http2().timer(TokioTimer::new());
    let mut idle = idle::Watch::new(config.server.header_read_timeout.get());
    let mut sweep = tokio::time::interval(idle.period());
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let graceful = GracefulShutdown::new();
    let flusher = tokio::spawn(async {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            metrics::flush_local();
        }
    });
    if started.fetch_add(1, Ordering::SeqCst) + 1 == worker_count {
        shared.readiness.set_ready();
    }

    loop {
        let (stream, remote) = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            now = sweep.tick() => {
                let closed = idle.sweep(now);
                if closed > 0 {
                    tracing::debug!(closed, "closed connections idle for server.header_read_timeout");
                }
                continue;
            }
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let activity = idle::Activity::new();
        let service = ConnService {
            stack: stack.clone(),
            forwarded_for: crate::hop::forwarded_for_value(remote),
            activity: activity.clone(),
        };
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        let task = tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "client connection ended with an error");
            }
        });
        idle.add(activity, task.abort_handle());
    }
    drop(listener);
    let grace = config.server.shutdown_grace.get();
    // Upgraded tunnels (WebSockets) left their HTTP connection behind, so
    // `graceful` does not see them: they are waited for separately.
    let tunnels = crate::proxy::tunnels();
    tunnels.close();
    let drained = async {
        graceful.shutdown().await;
        tunnels.wait().await;
    };
    tokio::select! {
        _ = drained => tracing::debug!("worker drained"),
        _ = tokio::time::sleep(grace) => tracing::warn!(
            ?grace,
            open_tunnels = tunnels.len(),
            "shutdown grace expired; closing remaining connections"
        ),
    }
    flusher.abort();
    metrics::flush_local();
}

/// The per-connection hyper service: tags requests with the client address,
/// applies the client's `Connection` header (it describes this hop only, so
/// it is consumed here, before any layer adds headers) and hands them to the
/// worker's stack.
#[derive(Clone)]
struct ConnService {
    stack: Stack,
    /// The client's address as an X-Forwarded-For entry, made once per connection.
    forwarded_for: http::HeaderValue,
    /// Requests in flight on this connection, for its idle timeout.
    activity: Arc<idle::Activity>,
}

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<SentBody>;
    type Error = Infallible;
    type Future = Served<<Stack as Service<Request<Body>>>::Future>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        let in_flight = self.activity.begin();
        crate::hop::apply_client_connection_header(req.headers_mut());
        crate::hop::append_forwarded_for(req.headers_mut(), &self.forwarded_for);
        Served {
            inner: self.stack.clone().call(req.map(http_body_util::Either::Left)),
            in_flight: Some(in_flight),
        }
    }
}

pin_project_lite::pin_project! {
    /// A request being served: in flight for its connection's idle timeout
    /// until its response body has been sent (see [`SentBody`]).
    pub struct Served<F> {
        #[pin]
        inner: F,
        in_flight: Option<idle::InFlight>,
    }
}

impl<F> Future for Served<F>
where
    F: Future<Output = Result<Response<Body>, Infallible>>,
{
    type Output = Result<Response<SentBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = ready!(this.inner.poll(cx));
        let in_flight = this.in_flight.take();
        Poll::Ready(res.map(|res| {
            res.map(|body| SentBody {
                body,
                _in_flight: in_flight,
            })
        }))
    }
}

/// A response body on its way to the client; the request stays in flight
/// until hyper has sent it all (or given up) and drops it.
pub struct SentBody {
    body: Body,
    _in_flight: Option<idle::InFlight>,
}

impl http_body::Body for SentBody {
    type Data = bytes::Bytes;
    type Error = <Body as http_body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Listens for SIGTERM and SIGINT from now on; the future resolves when one
/// arrives.
///
/// The handlers are installed by this call, not when the future is first
/// polled: until then SIGTERM's default action kills the process, so a
/// SIGTERM sent as soon as `/readyz` answers 200 would skip the drain and
/// exit by signal. Call it before starting wxgate, within a tokio runtime
/// context (`Runtime::enter`).
pub fn shutdown_signal() -> io::Result<Pin<Box<dyn Future<Output = ()> + Send>>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        Ok(Box::pin(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                _ = interrupt.recv() => tracing::info!("SIGINT: shutting down"),
            }
        }))
    }
    #[cfg(not(unix))]
    {
        Ok(Box::pin(async {
            let _ = tokio::signal::ctrl_c().await;
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_wxgate_cannot_share_a_running_ones_port() {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let first = Listeners::bind(any, any, 2).unwrap();
        let addr = first.public[0].local_addr().unwrap();
        assert_eq!(first.public[1].local_addr().unwrap(), addr, "workers share one port");
        let err = Listeners::bind(addr, any, 2).err().expect("the port is taken");
        assert!(err.to_string().contains("server.listen"), "{err}");
        drop(first);
        assert!(
            Listeners::bind(addr, any, 2).is_ok(),
            "free again once the first is gone"
        );
    }
}
