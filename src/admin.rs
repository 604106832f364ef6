//! The admin listener (`server.admin_listen`), never on the public port:
//!
//! - `GET /healthz`: 200 while the process runs;
//! - `GET /readyz`: 200 once every worker serves, 503 while starting and
//!   from the moment shutdown begins (so a load balancer stops sending);
//! - `GET /metrics`: Prometheus text format, every name prefixed `wxgate_`;
//! - `GET /.well-known/jwks.json`: the keys that verify wxgate's identity
//!   assertions (`[assertion]`), 404 when assertions are off;
//! - `DELETE /sessions?openid=...[&app=<name>]`: ends every session of a
//!   user (of one app, or of every app), on every worker (and replica, with
//!   a shared store): for account bans and leaked keys. Answers
//!   `{"revoked": n}`.
//!
//! Errors are wxgate's JSON errors, made by [`Error::into_response`].

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::body::{self, Body};
use crate::error::Error;
use crate::metrics;
use crate::server::Shared;
use crate::session::SessionStore;

/// Readiness, a latch: starting → ready → draining, never back.
#[derive(Debug, Default)]
pub struct Readiness(AtomicU8);

const STARTING: u8 = 0;
const READY: u8 = 1;
const DRAINING: u8 = 2;

impl Readiness {
    pub fn set_ready(&self) {
        let _ = self
            .0
            .compare_exchange(STARTING, READY, Ordering::SeqCst, Ordering::SeqCst);
    }
    pub fn set_draining(&self) {
        self.0.store(DRAINING, Ordering::SeqCst);
    }
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::SeqCst) == READY
    }
    fn state(&self) -> &'static str {
        match self.0.load(Ordering::SeqCst) {
            STARTING => "starting",
            READY => "ready",
            _ => "draining",
        }
    }
}

/// Serves the admin endpoints until `stop` is cancelled.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // The admin thread's own handle on the store.
    let store = shared.stores.handle();
    loop {
        let (stream, _) = tokio::select! {
            () = stop.cancelled() => return,
            accepted = crate::net::accept(&listener, "server.admin_listen") => accepted,
        };
        let (shared, store) = (shared.clone(), store.clone());
        let svc = hyper::service::service_fn(move |req| {
            let (shared, store) = (shared.clone(), store.clone());
            async move { Ok::<_, Infallible>(answer(req, &shared, &*store).await.unwrap_or_else(Error::into_response)) }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), svc).into_owned();
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                r = conn => if let Err(e) = r { tracing::debug!(error = %e, "admin connection ended") },
                () = stop.cancelled() => {}
            }
        });
    }
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<Body> {
    text(status, "application/json", body.to_string())
}

fn text(status: StatusCode, ctype: &'static str, body: String) -> Response<Body> {
    let mut res = Response::new(body::full(Bytes::from(body)));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(ctype));
    res
}

async fn answer(req: Request<Incoming>, shared: &Shared, store: &dyn SessionStore) -> Result<Response<Body>, Error> {
    let get = req.method() == Method::GET || req.method() == Method::HEAD;
    match req.uri().path() {
        "/healthz" if get => Ok(json(StatusCode::OK, serde_json::json!({"status": "ok"}))),
        "/readyz" if get => {
            let readiness = &shared.readiness;
            let status = if readiness.is_ready() {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            // The store's health is reported, not made a reason to leave the
            // load balancer: pass-through traffic needs no store.
            let store = if shared.stores.is_up() { "ok" } else { "unavailable" };
            Ok(json(
                status,
                serde_json::json!({"status": readiness.state(), "session_store": store}),
            ))
        }
        "/.well-known/jwks.json" if get => match &shared.assertion {
            Some(signer) => {
                let mut res = text(StatusCode::OK, "application/jwk-set+json", signer.jwks().to_owned());
                res.headers_mut()
                    .insert(header::CACHE_CONTROL, http::HeaderValue::from_static("max-age=300"));
                Ok(res)
            }
            None => Err(Error::NotFound("assertions are off ([assertion].enabled)")),
        },
        "/metrics" if get => {
            if let Some(n) = store.count().await {
                metrics::set_sessions(n);
            }
            metrics::set_client_connections(shared.slots.open());
            metrics::session_store_up(shared.stores.is_up());
            Ok(text(StatusCode::OK, "text/plain; version=0.0.4", metrics::render()))
        }
        "/sessions" if req.method() == Method::DELETE => {
            let param = |name: &str| {
                req.uri()
                    .query()
                    .and_then(|q| form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == name))
                    .map(|(_, v)| v.into_owned())
            };
            let openid = param("openid")
                .filter(|o| crate::headers::visible_ascii(o, 128))
                .ok_or_else(|| Error::invalid("DELETE /sessions?openid=<the user's openid>[&app=<name>]"))?;
            let all = shared.apps.all();
            let apps: Vec<_> = match param("app") {
                None => all.iter().collect(),
                Some(name) => match all.iter().find(|a| a.name == name) {
                    Some(app) => vec![app],
                    None => return Err(Error::invalid(format!("app={name:?} names no configured app"))),
                },
            };
            let mut revoked = 0;
            for app in apps {
                revoked += store.revoke_user(app, &openid).await?;
            }
            tracing::info!(revoked, "admin: revoked a user's sessions");
            Ok(json(StatusCode::OK, serde_json::json!({"revoked": revoked})))
        }
        "/healthz" | "/readyz" | "/metrics" | "/.well-known/jwks.json" => Err(Error::MethodNotAllowed("GET")),
        "/sessions" => Err(Error::MethodNotAllowed("DELETE")),
        _ => Err(Error::NotFound(
            "admin endpoints: /healthz, /readyz, /metrics, /.well-known/jwks.json, DELETE /sessions?openid=",
        )),
    }
}

/// GETs `url` (plain HTTP) and succeeds on a 200: `wxgate healthcheck`, for
/// images without a shell or curl.
pub async fn probe(url: &str, timeout: std::time::Duration) -> Result<(), String> {
    use http_body_util::Empty;
    let uri: http::Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err("only http:// URLs: the admin listener speaks plain HTTP".into());
    }
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let req = Request::get(uri)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(timeout, client.request(req)).await {
        Ok(Ok(res)) if res.status() == StatusCode::OK => Ok(()),
        Ok(Ok(res)) => Err(format!("answered {}", res.status())),
        Ok(Err(e)) => Err(format!("unreachable: {e}")),
        Err(_) => Err("no answer in time".into()),
    }
}
