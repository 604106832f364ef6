//! The admin listener (`server.admin_listen`), never on the public port:
//!
//! - `GET /healthz`: 200 while the process runs;
//! - `GET /readyz`: 200 once every worker serves, 503 while starting and
//!   from the moment shutdown begins (so a load balancer stops sending);
//! - `GET /metrics`: Prometheus text format, every name prefixed `wxgate_`.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics;
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
pub async fn serve(
    listener: TcpListener,
    readiness: Arc<Readiness>,
    store: Arc<dyn SessionStore>,
    stop: CancellationToken,
) {
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let readiness = readiness.clone();
        let store = store.clone();
        let svc = hyper::service::service_fn(move |req| {
            let (readiness, store) = (readiness.clone(), store.clone());
            async move { Ok::<_, Infallible>(answer(&req, &readiness, store.as_ref()).await) }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), svc).into_owned();
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                r = conn => if let Err(e) = r { tracing::debug!(error = %e, "admin connection ended") },
                _ = stop.cancelled() => {}
            }
        });
    }
}

async fn answer(req: &Request<Incoming>, readiness: &Readiness, store: &dyn SessionStore) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, ctype: &'static str, body: String| {
        let mut res = Response::new(Full::new(Bytes::from(body)));
        *res.status_mut() = status;
        res.headers_mut()
            .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(ctype));
        res
    };
    let json = |status: StatusCode, body: serde_json::Value| text(status, "application/json", body.to_string());
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return json(
            StatusCode::METHOD_NOT_ALLOWED,
            serde_json::json!({"error": "method_not_allowed", "message": "the admin endpoints accept GET only"}),
        );
    }
    match req.uri().path() {
        "/healthz" => json(StatusCode::OK, serde_json::json!({"status": "ok"})),
        "/readyz" => {
            let status = if readiness.is_ready() {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json(status, serde_json::json!({"status": readiness.state()}))
        }
        "/metrics" => {
            metrics::set_sessions(store.count().await);
            text(StatusCode::OK, "text/plain; version=0.0.4", metrics::render())
        }
        _ => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "not_found", "message": "admin endpoints: /healthz, /readyz, /metrics"}),
        ),
    }
}

/// GETs `url` (plain HTTP) and succeeds on a 200: `wxgate healthcheck`, for
/// images without a shell or curl.
pub async fn probe(url: &str, timeout: std::time::Duration) -> Result<(), String> {
    use http_body_util::Empty;
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let uri: http::Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
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
