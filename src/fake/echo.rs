//! An echo backend: answers every request with what it received, as JSON
//! `{"method", "uri", "headers", "body"}`. `wxgate demo` runs one to show
//! what the backend sees; the integration tests build their mock backend on
//! [`echo`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, Version, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

/// What the backend received.
#[derive(Debug, Clone)]
pub struct Received {
    /// The request's method.
    pub method: Method,
    /// The request target as received (a path and query, from wxgate).
    pub uri: String,
    /// The HTTP version of the request.
    pub version: Version,
    /// The request's header fields.
    pub headers: HeaderMap,
    /// The whole body (empty if reading it failed).
    pub body: Bytes,
    /// Trailer fields of a chunked body.
    pub trailers: HeaderMap,
}

/// Reads a whole request and answers it with what it was.
pub async fn echo(req: Request<Incoming>) -> (Received, Response<Full<Bytes>>) {
    let (parts, body) = req.into_parts();
    let (body, trailers) = match body.collect().await {
        Ok(c) => {
            let trailers = c.trailers().cloned().unwrap_or_default();
            (c.to_bytes(), trailers)
        }
        Err(_) => Default::default(),
    };
    let headers: serde_json::Map<String, Value> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                Value::String(String::from_utf8_lossy(v.as_bytes()).into()),
            )
        })
        .collect();
    let out = json!({
        "method": parts.method.as_str(),
        "uri": parts.uri.to_string(),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    });
    let mut res = Response::new(Full::new(Bytes::from(out.to_string())));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    let received = Received {
        method: parts.method,
        uri: parts.uri.to_string(),
        version: parts.version,
        headers: parts.headers,
        body,
        trailers,
    };
    (received, res)
}

/// An echo backend on a local port, keeping what it received.
#[derive(Clone)]
pub struct EchoBackend {
    /// The address it listens on (127.0.0.1 and a free port).
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
}

impl EchoBackend {
    /// Binds 127.0.0.1:0 and serves on the current runtime until it shuts down.
    pub async fn spawn_local() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let backend = Self {
            addr: listener.local_addr()?,
            received: Arc::default(),
        };
        let kept = backend.received.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = crate::net::accept(&listener, "echo backend").await;
                let kept = kept.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let kept = kept.clone();
                        async move {
                            let (received, res) = echo(req).await;
                            kept.lock().unwrap_or_else(|p| p.into_inner()).push(received);
                            Ok::<_, Infallible>(res)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(backend)
    }

    /// Every request received so far, in order.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
