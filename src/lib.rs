//! wxgate: a reverse-proxy sidecar that does WeChat Mini Program login and
//! phone-number decryption for a legacy backend.
//!
//! The request path is one tower stack, read top to bottom in [`stack`].
//! [`server`] runs it (one stack per worker thread), [`admin`] serves health
//! and metrics, [`fake`] is the fake WeChat shipped for tests and demos.

// No unsafe code but the global allocator's glue to mimalloc (`alloc`).
#![deny(unsafe_code)]

pub mod admin;
#[allow(unsafe_code)]
pub mod alloc;
pub mod body;
pub mod config;
pub mod demo;
pub mod error;
pub mod fake;
pub mod hop;
pub mod idle;
pub mod layers;
pub mod metrics;
pub mod proxy;
pub mod server;
pub mod session;
pub mod upstream_pool;
pub mod weixin;

use std::sync::Arc;

use tower::ServiceBuilder;

use crate::layers::access_log::{AccessLog, AccessLogLayer};
use crate::layers::identity::{Identity, IdentityHeaders, IdentityLayer};
use crate::layers::login::{Login, LoginLayer};
use crate::layers::phone::{Phone, PhoneLayer};
use crate::layers::strip_identity::{StripIdentity, StripIdentityLayer};
use crate::proxy::Proxy;
use crate::server::Shared;
use crate::weixin::client::WeixinClient;

pub use crate::config::Config;
pub use crate::server::{Listeners, Running, start, start_with};

/// The request path's concrete type (the order of [`stack`], inside out).
pub type Stack = StripIdentity<AccessLog<Identity<Login<Phone<Proxy>>>>>;

/// The request path, top to bottom. Built once per worker thread, so each
/// worker has its own upstream pool, WeChat client and request-id counter;
/// sessions, the login code cache and the access token are shared.
pub fn stack(shared: &Shared) -> Result<Stack, String> {
    let config = &*shared.config;
    let headers = Arc::new(IdentityHeaders::new(config)?);
    let weixin = WeixinClient::new(&config.weixin);
    Ok(ServiceBuilder::new()
        // 1. Anti-spoofing, before anything else: client copies of identity,
        //    phone and session headers go.
        .layer(StripIdentityLayer::new(config))
        // 2. Request id, the access log line, metrics; errors become JSON here.
        .layer(AccessLogLayer::new(&config.login.path, &config.phone.path))
        // 3. A live session token becomes identity headers; the token stays here.
        .layer(IdentityLayer::new(
            shared.store.clone(),
            headers.clone(),
            config.phone.remember,
        ))
        // 4. The login route: code exchange, session, forward or respond.
        .layer(LoginLayer::new(
            config,
            shared.login.clone(),
            shared.store.clone(),
            weixin.clone(),
            headers.clone(),
        ))
        // 5. The phone route: decrypt or exchange, then phone headers.
        .layer(PhoneLayer::new(
            config,
            shared.store.clone(),
            weixin,
            shared.tokens.clone(),
            headers,
        ))
        // 6. Everything goes upstream, streamed.
        .service(Proxy::new(&config.upstream, config.server.body_read_timeout.get())?))
}
