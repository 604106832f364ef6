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
//! token, the rate limits, the connection count) lives in [`Shared`].
//!
//! # Start-up
//!
//! [`start_with`] returns once every worker has built its stack and
//! registered its listener, or fails with the first worker's reason: a
//! wxgate that cannot serve never looks ready. It raises the open-files
//! limit to its hard limit first.
//!
//! # Shutdown
//!
//! [`Running::shutdown`] (SIGTERM) flips `/readyz` to 503 at once, keeps
//! accepting and serving for `server.shutdown_delay` (load balancers are
//! still sending), then stops accepting and lets in-flight requests and open
//! WebSocket tunnels finish within `server.shutdown_grace`, then closes what
//! is left. [`Running::shutdown_now`] (SIGINT) skips the delay. The admin
//! listener stays up until the workers are done, so health checks see the
//! drain.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service;

use crate::admin::{self, Readiness};
use crate::apps::Apps;
use crate::body::Body;
use crate::config::Config;
use crate::config::StoreKind;
use crate::hop::{self, ClientAddr, Upgrade};
use crate::idle::{self, Slot, Slots};
use crate::layers::access_log::{self, AccessRecord, Outcome};
use crate::ratelimit::Limiter;
use crate::routes::Routes;
use crate::session::Stores;
use crate::session::memory::MemoryStore;
use crate::session::redis::RedisShared;
use crate::{BuildError, Stack, metrics};

/// How long a connection closed for idleness may take to say goodbye
/// (an HTTP/2 GOAWAY) before it is dropped.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// What every worker shares.
pub struct Shared {
    pub config: Arc<Config>,
    pub stores: Stores,
    /// The mini programs served, each with its credentials and access token.
    pub apps: Arc<Apps>,
    /// Signs identity assertions (`[assertion]`), when on.
    pub assertion: Option<Arc<crate::assertion::Signer>>,
    pub readiness: Arc<Readiness>,
    pub routes: Arc<Routes>,
    pub slots: Arc<Slots>,
    pub trusted_proxies: Arc<[ipnet::IpNet]>,
    pub login_limit: Arc<Limiter<std::net::IpAddr>>,
    pub phone_limit: Arc<Limiter<crate::session::SessionToken>>,
}

impl Shared {
    pub fn new(config: Config) -> Result<Self, StartError> {
        let apps = Apps::new(&config);
        let assertion =
            crate::assertion::Signer::new(&config.assertion).map_err(|(key, e)| StartError::AssertionKey(key, e))?;
        let stores = match config.session.store {
            StoreKind::Memory => Stores::Memory(Arc::new(MemoryStore::new(&config.session))),
            StoreKind::Redis => Stores::Redis(RedisShared::new(
                &config.redis,
                &config.session,
                config.weixin.timeout.get(),
                &apps,
            )?),
        };
        let trusted_proxies: Arc<[ipnet::IpNet]> = config
            .server
            .trusted_proxies
            .iter()
            .filter_map(|c| crate::config::parse_cidr(c))
            .collect();
        Ok(Self {
            apps,
            assertion,
            readiness: Arc::new(Readiness::default()),
            routes: Arc::new(Routes::new(&config)),
            slots: Slots::new(config.server.max_connections),
            trusted_proxies,
            login_limit: Arc::new(Limiter::per_minute(config.limits.login_per_address)),
            phone_limit: Arc::new(Limiter::per_minute(config.limits.phone_per_session)),
            stores,
            config: Arc::new(config),
        })
    }
}

/// The bound sockets, made before the workers start so that a test (or an
/// operator) knows the ports at once.
pub struct Listeners {
    /// One socket per worker on `server.listen`, all on the same port (SO_REUSEPORT).
    pub public: Vec<std::net::TcpListener>,
    /// The socket on `server.admin_listen`.
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

/// Why wxgate could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be bound or read, or a worker thread not spawned.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// A worker could not build its request stack.
    #[error("cannot build the request stack: {0}")]
    Build(#[from] BuildError),
    /// A worker thread ended before it reported ready.
    #[error("a worker thread stopped before it was ready")]
    WorkerLost,
    /// `[redis]` cannot be used as configured.
    #[error(transparent)]
    Redis(#[from] crate::session::redis::TargetError),
    /// An `[assertion]` key file (the config key named) cannot be used.
    #[error("{0}: {1}")]
    AssertionKey(String, crate::assertion::KeyError),
}

/// A started wxgate.
pub struct Running {
    /// The public listener's address (its real port when `listen` said 0).
    pub addr: SocketAddr,
    /// The admin listener's address.
    pub admin_addr: SocketAddr,
    shared: Arc<Shared>,
    drain: CancellationToken,
    /// Milliseconds to keep serving after [`Running::shutdown`].
    delay_ms: Arc<AtomicU64>,
    workers: Vec<std::thread::JoinHandle<()>>,
    admin: Option<(CancellationToken, std::thread::JoinHandle<()>)>,
    /// The Redis revocation listener, stopped with the admin listener.
    subscriber: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Begins a graceful shutdown after `server.shutdown_delay`; returns at once.
    pub fn shutdown(&self) {
        self.begin_shutdown(self.shared.config.server.shutdown_delay.get());
    }

    /// Begins a graceful shutdown without the delay.
    pub fn shutdown_now(&self) {
        self.begin_shutdown(Duration::ZERO);
    }

    fn begin_shutdown(&self, delay: Duration) {
        self.shared.readiness.set_draining();
        self.delay_ms
            .store(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), Ordering::SeqCst);
        self.drain.cancel();
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
        if let Some(thread) = self.subscriber.take() {
            let _ = thread.join();
        }
    }

    /// [`Running::join`] for async callers.
    pub async fn stopped(self) {
        let _ = tokio::task::spawn_blocking(move || self.join()).await;
    }
}

/// Binds as configured and starts.
pub fn start(config: Config) -> Result<Running, StartError> {
    let listeners = Listeners::bind(config.server.listen, config.server.admin_listen, config.worker_count())?;
    start_with(config, listeners)
}

/// Starts wxgate on listeners bound by the caller.
pub fn start_with(config: Config, listeners: Listeners) -> Result<Running, StartError> {
    metrics::init();
    raise_open_files_limit(&config);
    let addr = listeners.public[0].local_addr()?;
    let admin_addr = listeners.admin.local_addr()?;
    let shared = Arc::new(Shared::new(config)?);
    let drain = CancellationToken::new();
    let delay_ms = Arc::new(AtomicU64::new(0));
    let worker_count = listeners.public.len();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), BuildError>>();
    let mut workers = Vec::with_capacity(worker_count);
    for (id, listener) in listeners.public.into_iter().enumerate() {
        let (shared, drain, delay_ms, ready) = (shared.clone(), drain.clone(), delay_ms.clone(), ready_tx.clone());
        workers.push(
            std::thread::Builder::new()
                .name(format!("wxgate-worker-{id}"))
                .spawn(move || match crate::net::current_thread_runtime() {
                    Ok(rt) => rt.block_on(worker(shared, listener, drain, delay_ms, ready)),
                    Err(e) => {
                        let _ = ready.send(Err(BuildError::Runtime(e)));
                    }
                })?,
        );
    }
    drop(ready_tx);
    for _ in 0..worker_count {
        let failed = match ready_rx.recv() {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(StartError::Build(e)),
            Err(_) => Some(StartError::WorkerLost),
        };
        if let Some(e) = failed {
            drain.cancel();
            for w in workers {
                let _ = w.join();
            }
            return Err(e);
        }
    }
    shared.readiness.set_ready();

    let admin_stop = CancellationToken::new();
    let admin = {
        let (shared, stop) = (shared.clone(), admin_stop.clone());
        let listener = listeners.admin;
        std::thread::Builder::new().name("wxgate-admin".into()).spawn(move || {
            let rt = match crate::net::current_thread_runtime() {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the admin runtime");
                    return;
                }
            };
            rt.block_on(async move {
                match TcpListener::from_std(listener) {
                    Ok(l) => admin::serve(l, shared, stop).await,
                    Err(e) => tracing::error!(error = %e, "admin listener failed"),
                }
            });
        })?
    };
    let subscriber = match &shared.stores {
        Stores::Redis(redis) => {
            let (redis, stop) = (redis.clone(), admin_stop.clone());
            Some(
                std::thread::Builder::new()
                    .name("wxgate-redis-sub".into())
                    .spawn(move || match crate::net::current_thread_runtime() {
                        Ok(rt) => rt.block_on(crate::session::redis::subscriber(redis, stop)),
                        Err(e) => tracing::error!(error = %e, "cannot start the revocation listener"),
                    })?,
            )
        }
        Stores::Memory(_) => None,
    };
    let c = &shared.config;
    let apps: Vec<String> = shared
        .apps
        .all()
        .iter()
        .map(|a| format!("{}={}", a.name, a.appid))
        .collect();
    tracing::info!(
        %addr,
        %admin_addr,
        apps = %apps.join(","),
        upstream = %crate::config::redact_url(&c.upstream.url),
        weixin_api = %c.weixin.api_base,
        session_store = shared.stores.describe(),
        workers = worker_count,
        "wxgate listening"
    );
    Ok(Running {
        addr,
        admin_addr,
        shared,
        drain,
        delay_ms,
        workers,
        admin: Some((admin_stop, admin)),
        subscriber,
    })
}

/// Raises the soft open-files limit to the hard one (each client connection
/// may hold a backend connection too), and warns when even that is short of
/// `server.max_connections`.
fn raise_open_files_limit(config: &Config) {
    #[cfg(unix)]
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            let needed = 2 * config.server.max_connections as u64 + 256;
            if limit < needed {
                tracing::warn!(
                    open_files = limit,
                    needed,
                    "the open-files limit is below what server.max_connections may need (raise `ulimit -n`)"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-files limit"),
    }
}

async fn worker(
    shared: Arc<Shared>,
    listener: std::net::TcpListener,
    drain: CancellationToken,
    delay_ms: Arc<AtomicU64>,
    ready: std::sync::mpsc::Sender<Result<(), BuildError>>,
) {
    let built = crate::stack(&shared);
    let (stack, proxy) = match built {
        Ok(s) => s,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(BuildError::Runtime(e)));
            return;
        }
    };
    let config = &shared.config;
    let s = &config.server;
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // `server.header_read_timeout` is kept by `idle`'s sweep below, not by a
    // hyper timer armed on every request.
    builder
        .http1()
        .header_read_timeout(None)
        .max_headers(s.max_request_headers)
        .max_buf_size(s.max_request_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(s.http2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(s.max_request_header_bytes).unwrap_or(u32::MAX));
    let mut watch = idle::Watch::new(s.header_read_timeout.get(), s.send_timeout.get());
    // Idle connections and upstream deadlines ([`crate::deadlines`]) are
    // kept by one sweep, as often as the shortest of their timeouts needs.
    crate::deadlines::enable();
    let period = watch.period().min(idle::sweep_period(config.upstream.timeout.get()));
    let mut sweep = tokio::time::interval(period);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let connections = TaskTracker::new();
    let flusher = tokio::spawn(async {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            metrics::flush_local();
        }
    });
    let _ = ready.send(Ok(()));

    let mut stop_at: Option<tokio::time::Instant> = None;
    loop {
        let (stream, remote) = tokio::select! {
            biased;
            () = drain.cancelled(), if stop_at.is_none() => {
                let delay = Duration::from_millis(delay_ms.load(Ordering::SeqCst));
                stop_at = Some(tokio::time::Instant::now() + delay);
                continue;
            }
            () = sleep_until(stop_at) => break,
            now = sweep.tick() => {
                crate::deadlines::sweep(now);
                let (closed, cut) = watch.sweep(now);
                if closed + cut > 0 {
                    tracing::debug!(closed, cut, "closed idle connections and cut stalled ones");
                }
                proxy.reap_idle();
                shared.login_limit.retain_recent();
                shared.phone_limit.retain_recent();
                continue;
            }
            accepted = crate::net::accept(&listener, "server.listen") => accepted,
        };
        let slot = match shared.slots.take() {
            Some(slot) => slot,
            None if watch.close_idle() > 0 => shared.slots.force(),
            None => {
                metrics::connection_refused();
                tracing::debug!(%remote, "server.max_connections reached and no connection is idle: refused");
                continue;
            }
        };
        let activity = idle::Activity::new();
        let service = ConnService {
            stack: stack.clone(),
            client: ClientAddr::new(remote, &shared.trusted_proxies),
            trusted: shared.trusted_proxies.clone(),
            activity: activity.clone(),
            slot: slot.clone(),
        };
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let close = idle::Close::new();
        let closing = close.clone();
        let task = connections.spawn(async move {
            let _slot = slot;
            tokio::pin!(conn);
            let result = tokio::select! {
                biased;
                r = conn.as_mut() => r,
                why = closing.signalled() => {
                    conn.as_mut().graceful_shutdown();
                    match why {
                        idle::Closing::Idle => {
                            tokio::time::timeout(IDLE_CLOSE_GRACE, conn.as_mut()).await.unwrap_or(Ok(()))
                        }
                        idle::Closing::Stop => conn.await,
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "client connection ended with an error");
            }
        });
        watch.add(activity, close, task.abort_handle());
    }
    drop(listener);
    watch.stop_all();
    connections.close();
    let grace = config.server.shutdown_grace.get();
    // WebSocket tunnels left their HTTP connection behind, so the
    // connections do not wait for them: they are waited for separately.
    let tunnels = crate::proxy::tunnels();
    tunnels.close();
    let drained = async {
        connections.wait().await;
        tunnels.wait().await;
    };
    // Requests still waiting on the backend keep their upstream.timeout.
    let deadlines = async {
        loop {
            crate::deadlines::sweep(sweep.tick().await);
        }
    };
    tokio::select! {
        () = drained => tracing::debug!("worker drained"),
        // The sweep never ends: it is only there to be polled.
        () = deadlines => {}
        () = tokio::time::sleep(grace) => {
            tracing::warn!(
                ?grace,
                open_connections = connections.len(),
                open_tunnels = tunnels.len(),
                "shutdown grace expired; closing remaining connections"
            );
            access_log::mark_shutdown_cut();
        }
    }
    flusher.abort();
    metrics::flush_local();
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The per-connection hyper service: prepares each request's per-hop
/// headers ([`hop::client_request`]: the client's `Connection`, upgrades,
/// where it came from) before any layer runs, and hands it to the worker's
/// stack.
#[derive(Clone)]
struct ConnService {
    stack: Stack,
    client: ClientAddr,
    trusted: Arc<[ipnet::IpNet]>,
    /// Requests in flight on this connection, for its timeouts.
    activity: Arc<idle::Activity>,
    /// This connection's place, lent to a WebSocket tunnel it becomes.
    slot: Slot,
}

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<SentBody>;
    type Error = Infallible;
    type Future = Served<<Stack as Service<Request<Body>>>::Future>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        let in_flight = self.activity.begin();
        let (method, version) = (req.method().clone(), req.version());
        let upgrade = hop::client_request(req.headers_mut(), &method, version, &self.client, &self.trusted);
        if upgrade == Upgrade::WebSocket {
            req.extensions_mut().insert(self.slot.clone());
        }
        Served {
            inner: self.stack.clone().call(req.map(Body::Incoming)),
            in_flight: Some(in_flight),
        }
    }
}

pin_project_lite::pin_project! {
    /// A request being served: in flight for its connection's timeouts
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
        Poll::Ready(res.map(|mut res| {
            let record = res.extensions_mut().remove::<Arc<AccessRecord>>();
            res.map(|body| SentBody {
                body,
                in_flight,
                record,
                bytes: 0,
                ended: false,
            })
        }))
    }
}

/// A response body on its way to the client. The request stays in flight
/// until hyper has sent it all (or given up) and drops it; it tells the
/// send timeout when hyper holds a frame; it counts the bytes and writes
/// the access log line at its end.
pub struct SentBody {
    body: Body,
    in_flight: Option<idle::InFlight>,
    record: Option<Arc<AccessRecord>>,
    bytes: u64,
    /// The body said it had no more (a body with neither length nor
    /// `is_end_stream`, chunked or ending with its connection, says so only
    /// this way).
    ended: bool,
}

impl http_body::Body for SentBody {
    type Data = bytes::Bytes;
    type Error = <Body as http_body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if let Some(f) = &self.in_flight {
            f.polled();
        }
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                    if let Some(f) = &self.in_flight {
                        f.got_frame();
                    }
                }
            }
            Poll::Ready(None) => self.ended = true,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for SentBody {
    fn drop(&mut self) {
        if let Some(record) = self.record.take() {
            let outcome = if self.ended || http_body::Body::is_end_stream(&self.body) {
                Outcome::Ok
            } else {
                Outcome::cut()
            };
            record.finish(self.bytes, outcome);
        }
    }
}

/// A shutdown signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM: drain after `server.shutdown_delay` (an orchestrator's stop).
    Terminate,
    /// SIGINT: drain now (Ctrl-C at a terminal).
    Interrupt,
}

/// Listens for SIGTERM and SIGINT from now on; the future resolves with the
/// first that arrives.
///
/// The handlers are installed by this call, not when the future is first
/// polled: until then SIGTERM's default action kills the process, so a
/// SIGTERM sent as soon as `/readyz` answers 200 would skip the drain and
/// exit by signal. Call it before starting wxgate, within a tokio runtime
/// context (`Runtime::enter`).
pub fn shutdown_signal() -> io::Result<Pin<Box<dyn Future<Output = Signal> + Send>>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        Ok(Box::pin(async move {
            tokio::select! {
                _ = term.recv() => {
                    tracing::info!("SIGTERM: shutting down");
                    Signal::Terminate
                }
                _ = interrupt.recv() => {
                    tracing::info!("SIGINT: shutting down");
                    Signal::Interrupt
                }
            }
        }))
    }
    #[cfg(not(unix))]
    {
        Ok(Box::pin(async {
            let _ = tokio::signal::ctrl_c().await;
            Signal::Interrupt
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
