//! wxgate: a reverse-proxy sidecar that does WeChat Mini Program login and
//! phone-number decryption for an existing backend.
//!
//! The request path is one tower stack, read top to bottom in [`stack`].
//! `server` runs it (one stack per worker thread), `admin` serves health
//! and metrics, [`fake`] is the fake WeChat shipped for tests and demos.
//!
//! The public surface is what the binary, the integration tests, the
//! benchmarks and the examples use; everything else is private to the
//! crate, so the compiler reports what nothing uses.

// No unsafe code but the global allocator's glue to mimalloc (`alloc`).
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub(crate) mod admin;
#[allow(unsafe_code)]
pub mod alloc;
pub mod apps;
pub mod assertion;
pub(crate) mod body;
pub mod config;
pub(crate) mod deadlines;
pub mod demo;
pub(crate) mod error;
pub mod fake;
pub mod headers;
pub mod hop;
pub(crate) mod identity;
pub(crate) mod idle;
pub(crate) mod layers;
pub(crate) mod metrics;
pub(crate) mod net;
pub(crate) mod path;
pub(crate) mod proxy;
pub(crate) mod ratelimit;
pub(crate) mod routes;
pub(crate) mod server;
pub mod session;
pub(crate) mod tunnel;
pub(crate) mod upstream_pool;
pub mod weixin;

use std::sync::Arc;

use tower::ServiceBuilder;

use crate::identity::Render;
use crate::layers::access_log::{AccessLog, AccessLogLayer};
use crate::layers::errors::{Errors, ErrorsLayer};
use crate::layers::login::Login;
use crate::layers::logout::Logout;
use crate::layers::phone::Phone;
use crate::layers::request_id::{RequestId, RequestIdLayer};
use crate::layers::router::{Handlers, Router};
use crate::layers::session::{SessionLayer, SessionLookup};
use crate::proxy::Proxy;
use crate::server::Shared;
use crate::weixin::client::WeixinClient;

pub use crate::admin::probe;
pub use crate::config::Config;
pub use crate::server::{Listeners, Running, Signal, StartError, shutdown_signal, start, start_with};

/// wxgate's version and the commit it was built from.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("WXGATE_COMMIT"), ")");

/// A single-threaded runtime with I/O and timers (for the binary's signal
/// handling and tools).
pub fn net_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    net::current_thread_runtime()
}

/// Where the binary's log writer counts the lines it had to drop, for
/// `wxgate_log_lines_dropped_total`.
pub fn set_log_drop_counter(counter: tracing_appender::non_blocking::ErrorCounter) {
    metrics::set_log_drop_counter(counter);
}

/// The request path's concrete type (the order of [`stack`], inside out).
pub(crate) type Stack = RequestId<AccessLog<Errors<SessionLookup<Router>>>>;

/// Why a worker's stack could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// `upstream.url` cannot be used.
    #[error(transparent)]
    Upstream(#[from] proxy::TargetError),
    /// The WeChat client's TLS could not be set up.
    #[error("cannot set up TLS for WeChat: {0}")]
    Tls(#[from] rustls::Error),
    /// The worker's runtime could not be made.
    #[error("cannot start a worker: {0}")]
    Runtime(#[from] std::io::Error),
}

/// The request path, top to bottom. Built once per worker thread, so each
/// worker has its own upstream pool, WeChat client and request-id counter;
/// what must be shared (sessions, codes, tokens, limits) comes from `shared`.
/// Returns the stack and its proxy (the worker's sweep reaps its pool).
pub(crate) fn stack(shared: &Shared) -> Result<(Stack, Proxy), BuildError> {
    let config = &*shared.config;
    // This worker's own handle: a shared store's connection lives here.
    let store = shared.stores.handle();
    let render = Render::new(config, &shared.apps, shared.assertion.clone());
    let weixin = WeixinClient::new(&config.weixin)?;
    let proxy = Proxy::new(&config.upstream, config.server.body_read_timeout.get(), render.clone())?;
    let session_header = render.names().session.clone();
    let handlers = Handlers {
        routes: shared.routes.clone(),
        access: crate::routes::Access::new(config),
        login: Login::new(
            config,
            shared.apps.clone(),
            store.clone(),
            weixin.clone(),
            session_header.clone(),
            shared.login_limit.clone(),
        ),
        phone: Phone::new(
            config,
            shared.apps.clone(),
            store.clone(),
            weixin,
            shared.phone_limit.clone(),
        ),
        logout: Logout::new(config.login.mode, store.clone()),
    };
    let service = ServiceBuilder::new()
        // 1. x-request-id: kept or made; on every log line about the request.
        .layer(RequestIdLayer::new())
        // 2. Metrics and the access log line, of the answer the client gets.
        .layer(AccessLogLayer::new(Arc::clone(&shared.routes)))
        // 3. Errors become JSON answers here, and are logged here, once.
        .layer(ErrorsLayer)
        // 4. A live session token becomes the request's Identity (data).
        .layer(SessionLayer::new(store, session_header, shared.apps.clone()))
        // 5. Host rules and route spellings; then login, phone, logout, or
        //    the backend. Right before a request leaves, the proxy strips
        //    every client copy of wxgate's headers and writes the identity.
        .service(Router::new(handlers, proxy.clone()));
    Ok((service, proxy))
}
